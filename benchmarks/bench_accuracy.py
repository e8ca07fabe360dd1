"""Accuracy benchmark (issue 7): the CRNN vs eGEMAPS + ridge vs the train mean, on the test split.

    python benchmarks/bench_accuracy.py --run RUN_DIR --corpus CORPUS [--model M.onnx]
    python benchmarks/bench_accuracy.py --corpus CORPUS --split-seed 1 [--model M.onnx]

Test calls = the speaker-disjoint TEST split training used: ``RUN_DIR/split.json`` (written by
``cusemo-batch train``; the run's ``config.json`` also gives the gold standard and is checked
against the corpus hash), or, without a run, the split recomputed from ``--split-seed`` with the
training code's ``split_groups`` and default fractions (needs torch, because the training config
module imports it).

**CCC** (valence, arousal) at the 500 ms label rate against the gold standard (mean of the
annotators, as in training), over the concatenated test calls (the paper's metric) and as the mean
of per-call CCCs. Every system is scored on exactly the same bins: per call the leading bins with a
gold value and complete CRNN frames (training's ``valid_bins``).

1. **CRNN**: the ONNX model's whole-call streaming pass (``Model.infer_stream``) on the call audio
   normalised as its metadata says, frames averaged into bins with ``timegrid.pooling_matrix``
   (the training/evaluation alignment). No silence compression: pauses in pseudo-calls are < 3 s.
2. **eGEMAPS + ridge** (the classic AVEC-style baseline): the 88 eGeMAPS v02 functionals
   (openSMILE) over ``--window-s`` windows centred on each bin centre (hop = the bin), features
   standardised on TRAIN, ``sklearn.linear_model.Ridge`` trained on TRAIN; the ridge ``alpha`` and
   an annotation-delay shift of the features (0..``--max-delay-s``, the usual compensation for rater
   lag) are chosen per dimension by the concatenated CCC on DEV, then evaluated on TEST.
3. **Train mean**: the mean gold value over the TRAIN bins (CCC 0 by construction: the floor).

**Change events** on the test pseudo-calls, whose true emotion switches are known from
``segments.csv``: reference event = a switch between consecutive utterances whose target differs
by >= ``min_change`` (the change config's threshold) in that dimension, at the later utterance's
start (where the corpus' piecewise-constant reference trajectory switches), kind by sign.
Detected events = ``cusemo_batch.changes.detect_events`` (default change config) on each track's
0.5 s timeseries, scored twice: with the scorer's VAD ``speech_ratio`` (what the product does: the
detector then works on the speaker's speech-time axis) and with ``speech_ratio`` = 1.0 (wall-clock
axis; pseudo-calls switch emotion every few seconds and RAVDESS files carry ~1 s of silence around
each sentence, so the speech-time context of 5 s spans 2-3 utterances). Matching: same call and
kind (dimension and direction), one-to-one, closest pairs first, within +-``--tolerance-s`` of the
event's ``t_change_s``. Tracks: CRNN, eGEMAPS baseline, the gold-standard rater track (an upper
reference: raters lag and smooth) and the reference trajectory itself (the detector's ceiling on a
perfect signal). The train-mean predictor is constant, so it detects nothing.

Outputs: a Markdown table (printed and written to ``--out-md``) and JSON (``--out-json``) with the
command line, date, model sha256, corpus hash, split sizes and every number. openSMILE features are
cached per call (``--cache``), so a re-run with another model costs only the CRNN pass.

``bench_transfer.py`` (channel, level and cross-corpus rows, issue 14) reuses this module's loading
(:func:`prepare`), CRNN pass (:func:`crnn_bins`) and baseline (:func:`fit_egemaps_ridge`).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import platform
import shlex
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
import bench_args  # noqa: E402  (no heavy imports: parsed before numpy)
RESULTS = HERE / "results"


def _args(argv=None) -> argparse.Namespace:
    p, src = bench_args.new_parser(__doc__, "data and split")
    src.add_argument("--model", type=Path, help="ONNX model (default: the embedded cusemo_batch/models/cusemo-default.onnx)")
    src.add_argument("--gold", choices=("mean", "median"), help="gold standard (default: the run's, else mean)")
    bench_args.add_method_args(p, "method")
    bench_args.add_resource_args(p, RESULTS / "accuracy.md", RESULTS / "accuracy.json")
    return bench_args.parse_with_split(p, argv)


ARGS = _args() if __name__ == "__main__" else None
if ARGS is not None:
    bench_args.set_thread_env(ARGS.threads)

import numpy as np  # noqa: E402
import polars as pl  # noqa: E402

import accuracy_lib as lib  # noqa: E402

from cusemo_batch import changes  # noqa: E402
from cusemo_batch.audio import load_audio, normalise  # noqa: E402
from cusemo_batch.files import atomic_write_text  # noqa: E402
from cusemo_batch.metrics import ccc_concat_and_mean  # noqa: E402
from cusemo_batch.model import Model  # noqa: E402
from cusemo_batch.scorer import DEFAULT_MODEL, VAD_FRAME_S  # noqa: E402
from cusemo_batch.timegrid import pooling_matrix  # noqa: E402
from cusemo_batch.training.corpus import read_corpus  # noqa: E402  (torch-free)
from cusemo_batch.training.labels import gold_at_rate, gold_standard  # noqa: E402  (torch-free)

DIMS = ("valence", "arousal")
SPEECH_MODES = {"vad": "the scorer's VAD (silence.detect_speech, 20 ms frames): speech-time axis, as in production",
                "one": "1.0 in every window: wall-clock axis"}
SPLITS = ("train", "dev", "test")


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


# ------------------------------------------------------------------------------------------- data
class CallRec:
    """One corpus call: audio, gold at the label rate, evaluated bins, speech ratio."""

    def __init__(self, call, split: str, x: np.ndarray, gold_v, gold_a, n_bins: int, speech: np.ndarray):
        self.call, self.call_id, self.split = call, call.call_id, split
        self.x, self.n = x, n_bins
        self.gold = {"valence": gold_v[:n_bins], "arousal": gold_a[:n_bins]}
        self.speech = speech
        self.speaker = str(call.context.get("speaker") or call.call_id)


def load_split(args, corpus) -> tuple[dict[str, str], dict]:
    """call_id -> split, and a description of where it came from."""
    if args.run is not None:
        split = json.loads((args.run / "split.json").read_text())
        return split, {"source": str((args.run / "split.json").resolve())}
    from cusemo_batch.training.config import Config  # torch-free (training/model_config.py)
    from cusemo_batch.training.data import group_column, split_groups

    d = Config().data
    col = group_column(corpus, d.group_by)
    groups = [str(c.context.get(col) or c.call_id) if col else c.call_id for c in corpus.calls]
    names = split_groups(groups, d.split, args.split_seed)
    return ({c.call_id: n for c, n in zip(corpus.calls, names)},
            {"source": f"split_groups(seed={args.split_seed}, fractions={list(d.split)}, group_by={col or 'call'})"})


def build_calls(args, model: Model, corpus, split: dict[str, str], gold_method: str, bin_s: float) -> list[CallRec]:
    sr, hop = model.sample_rate, model.hop
    out = []
    for c in corpus.calls:
        name = split.get(c.call_id)
        if name not in SPLITS:
            continue
        x = load_audio(c.audio_path, sr)
        g = gold_at_rate(gold_standard(c, gold_method), bin_s * 1000)
        covered = int(math.floor((len(x) // hop) * hop / sr / bin_s + 1e-9))
        n = min(len(g), covered)  # training's valid_bins
        # events are only scored on test calls: the VAD runs there only
        sp = lib.speech_ratio(x, sr, n, bin_s, VAD_FRAME_S) if name == "test" else np.ones(n)
        out.append(CallRec(c, name, x, g.valence, g.arousal, n, sp))
    return out


# ------------------------------------------------------------------------------------------ systems
def crnn_bins(model: Model, x: np.ndarray, n_bins: int, bin_s: float) -> dict[str, np.ndarray]:
    """The CRNN's label bins of one call's audio ``x`` as it reaches the scorer: normalised as the
    model's metadata says (after any simulated channel or level change, as in production), one
    streaming pass, frames averaged into the first ``n_bins`` bins."""
    y = model.infer_stream(normalise(x, model.normalisation, model.sample_rate))
    frames = np.stack([y["valence"], y["arousal"]], axis=1).astype(np.float64)
    bins = pooling_matrix(len(frames), 1.0 / model.frame_rate, bin_s, n_bins) @ frames
    return {"valence": bins[:, 0], "arousal": bins[:, 1]}


def crnn_predict(model: Model, calls: list[CallRec], bin_s: float) -> dict[str, dict[str, np.ndarray]]:
    return {c.call_id: crnn_bins(model, c.x, c.n, bin_s) for c in calls}


def _extract_one(job):
    path, sr, window_s, bin_s, cache = job
    x = load_audio(path, sr)
    return lib.cached_windows(path, x, sr, window_s, bin_s, cache)


def egemaps_windows(args, calls: list[CallRec], sr: int, bin_s: float) -> dict[str, lib.WindowFeatures]:
    cache = Path(args.cache) if args.cache else None
    jobs = [(c.call.audio_path, sr, args.window_s, bin_s, cache) for c in calls]
    out: dict[str, lib.WindowFeatures] = {}
    t0 = time.perf_counter()
    if args.jobs > 1:
        from concurrent.futures import ProcessPoolExecutor

        with ProcessPoolExecutor(args.jobs) as ex:
            for i, (c, w) in enumerate(zip(calls, ex.map(_extract_one, jobs)), 1):
                out[c.call_id] = w
                if i % 10 == 0 or i == len(calls):
                    log(f"  eGEMAPS {i}/{len(calls)} calls ({time.perf_counter() - t0:.0f} s)")
    else:
        for i, (c, job) in enumerate(zip(calls, jobs), 1):
            out[c.call_id] = lib.cached_windows(job[0], c.x, sr, args.window_s, bin_s, cache)
            if i % 10 == 0 or i == len(calls):
                log(f"  eGEMAPS {i}/{len(calls)} calls ({time.perf_counter() - t0:.0f} s)")
    return out


@dataclasses.dataclass
class FittedRidge:
    """The eGEMAPS baseline of one dimension: TRAIN scaler + ridge, and the feature delay (bins)."""

    scaler: object
    reg: object
    delay: int

    def predict_windows(self, w: lib.WindowFeatures, n_bins: int, bin_s: float) -> np.ndarray:
        """Predictions for the ``n_bins`` label bins of one call (its window features, delayed)."""
        return self.reg.predict(self.scaler.transform(lib.features_for_bins(w, n_bins, bin_s, self.delay)))

    def predict_vectors(self, X: np.ndarray) -> np.ndarray:
        """Predictions for feature rows as they are (one vector per file: no delay applies)."""
        return self.reg.predict(self.scaler.transform(X))


def fit_egemaps_ridge(args, calls: list[CallRec], windows, bin_s: float,
                      fit_on: list[CallRec] | None = None) -> tuple[dict[str, FittedRidge], dict]:
    """Fit scaler + ridge on train, pick (delay, alpha) per dimension on dev (never on test).

    ``fit_on``: the records the chosen (delay, alpha) is finally fitted on (default: train) -- the
    train + dev of a *final fit*, when the CRNN it is compared with was refitted on them
    (``train --refit-from``); the choice itself is still made on train -> dev.
    """
    from sklearn.linear_model import Ridge
    from sklearn.preprocessing import StandardScaler

    alphas = [float(a) for a in args.alphas.split(",")]
    delays = list(range(0, int(round(args.max_delay_s / bin_s)) + 1))
    by = {s: [c for c in calls if c.split == s] for s in SPLITS}

    final_fit, fit_on = fit_on is not None, by["train"] if fit_on is None else fit_on

    def xy(recs: list[CallRec], delay: int):
        X = np.concatenate([lib.features_for_bins(windows[c.call_id], c.n, bin_s, delay) for c in recs])
        Y = np.stack([np.concatenate([c.gold[d] for c in recs]) for d in DIMS], axis=1)
        return X, Y

    import warnings

    from scipy.linalg import LinAlgWarning

    warnings.filterwarnings("ignore", category=LinAlgWarning)  # tiny alphas on 88 correlated features: expected
    grid = []
    best = {d: (-math.inf, None, None) for d in DIMS}
    for delay in delays:
        Xtr, Ytr = xy(by["train"], delay)
        Xdv, _ = xy(by["dev"], delay)
        sc = StandardScaler().fit(Xtr)
        Xtr, Xdv = sc.transform(Xtr), sc.transform(Xdv)
        for alpha in alphas:
            P = Ridge(alpha=alpha).fit(Xtr, Ytr).predict(Xdv)
            row = {"delay_s": delay * bin_s, "alpha": alpha}
            for k, d in enumerate(DIMS):
                ofs = np.cumsum([0] + [c.n for c in by["dev"]])
                pc = [P[ofs[i]:ofs[i + 1], k] for i in range(len(by["dev"]))]
                cc, _ = ccc_concat_and_mean(pc, [c.gold[d] for c in by["dev"]])
                row[f"dev_ccc_{d}"] = cc
                if cc > best[d][0]:
                    best[d] = (cc, delay, alpha)
            grid.append(row)
    fitted, chosen = {}, {}
    for k, d in enumerate(DIMS):
        cc, delay, alpha = best[d]
        Xtr, Ytr = xy(fit_on, delay)
        sc = StandardScaler().fit(Xtr)
        fitted[d] = FittedRidge(sc, Ridge(alpha=alpha).fit(sc.transform(Xtr), Ytr[:, k]), delay)
        chosen[d] = {"alpha": alpha, "delay_s": delay * bin_s, "dev_ccc": cc}
    n_feat = next(iter(windows.values())).features.shape[1]
    info = {"features": f"eGeMAPSv02 functionals ({n_feat}), openSMILE, {args.window_s:g} s windows centred on "
                        f"each {bin_s:g} s bin, fixed frame mode, one pass per call",
            "n_features": n_feat, "chosen": chosen, "grid": grid,
            "train_bins": int(sum(c.n for c in fit_on)),
            "final_fit": final_fit}
    return fitted, info


def predict_egemaps(fitted: dict[str, FittedRidge], calls: list[CallRec], windows, bin_s: float) -> dict:
    """call_id -> dimension -> the baseline's bins, from each call's ``windows`` (any condition)."""
    return {c.call_id: {d: fitted[d].predict_windows(windows[c.call_id], c.n, bin_s) for d in DIMS} for c in calls}


def egemaps_ridge(args, calls: list[CallRec], windows, bin_s: float) -> tuple[dict, dict]:
    """Fit on train, choose on dev (:func:`fit_egemaps_ridge`), predict the test calls."""
    fitted, info = fit_egemaps_ridge(args, calls, windows, bin_s)
    return predict_egemaps(fitted, [c for c in calls if c.split == "test"], windows, bin_s), info


def ccc_table(preds: dict, test: list[CallRec]) -> dict:
    out = {}
    for d in DIMS:
        concat, per_call = ccc_concat_and_mean([preds[c.call_id][d] for c in test], [c.gold[d] for c in test])
        out[d] = {"ccc": concat, "ccc_per_call": per_call}
    return out


# ------------------------------------------------------------------------------------------ events
def detect(track: dict[str, dict[str, np.ndarray]], test: list[CallRec], bin_s: float, cfg,
           vad: bool = True) -> dict[str, list[dict]]:
    frames = []
    for c in test:
        k = np.arange(c.n)
        frames.append(pl.DataFrame({
            "call_id": [c.call_id] * c.n, "speaker": ["client"] * c.n,
            "t_start_s": k * bin_s, "t_end_s": (k + 1) * bin_s,
            "valence": np.asarray(track[c.call_id]["valence"], dtype=np.float64),
            "arousal": np.asarray(track[c.call_id]["arousal"], dtype=np.float64),
            "speech_ratio": c.speech.astype(np.float64) if vad else np.ones(c.n)}))
    ev = changes.detect_events(pl.concat(frames), cfg)
    out: dict[str, list[dict]] = {c.call_id: [] for c in test}
    for row in ev.iter_rows(named=True):
        out[row["call_id"]].append(row)
    return out


# ------------------------------------------------------------------------------------------ report
def fmt(x: float, nd: int = 3) -> str:
    if x is None or (isinstance(x, float) and not math.isfinite(x)):
        return "n/a"
    return f"{x + 0.0 if abs(x) >= 0.5 * 10 ** -nd else 0.0:.{nd}f}"  # no "-0.000"


def run_seeds(run: Path | None) -> dict | None:
    """Per-seed results of the training run (``seed_*/result.json``) and its mean (sd) summary."""
    if run is None:
        return None
    per_seed = []
    for f in sorted(run.glob("seed_*/result.json"), key=lambda p: int(p.parent.name.split("_")[1])):
        r = json.loads(f.read_text())
        per_seed.append({k: r.get(k) for k in ("seed", "best_epoch", "epochs_run", "collapse_restarts", "dev", "test")})
    summary = json.loads((run / "summary.json").read_text()) if (run / "summary.json").is_file() else {}
    return {"per_seed": per_seed, "summary": summary}


# Long on purpose: the report's sections in the order they print; each is a few table rows.
def markdown(res: dict) -> str:
    s = res["split"]
    m = res["model"]
    lines = [
        "# Accuracy benchmark",
        "",
        f"- command: `{res['command']}`",
        f"- date: {res['date']}; wall time {res['timings_s']['total']:.0f} s",
        f"- model: `{m['path']}` ({m['name']} {m['version']}), sha256 `{m['sha256']}`",
        f"- corpus: `{res['corpus']['path']}` ({res['corpus']['calls']} calls), data sha256 "
        f"`{res['corpus']['data_sha256'][:16]}…`{'' if res['corpus']['matches_model'] else ' — **not the corpus the model was trained on**'}",
        f"- split ({s['source']}): " + ", ".join(
            f"{n} {s[n]['calls']} calls / {s[n]['speakers']} speakers / {s[n]['hours']:.2f} h / {s[n]['bins']} bins"
            for n in SPLITS),
        f"- label rate {res['rate_s'] * 1000:g} ms; gold = {res['gold']} of the annotators",
        "",
        f"## CCC on the test split ({s['test']['calls']} calls, speaker-disjoint)",
        "",
        "| system | valence CCC | valence CCC, mean per call | arousal CCC | arousal CCC, mean per call |",
        "|---|---:|---:|---:|---:|",
    ]
    for key, label in (("crnn", "CRNN (ONNX, whole call)"), ("egemaps_ridge", "eGEMAPS functionals + ridge"),
                       ("train_mean", "train-mean predictor")):
        r = res["ccc"][key]
        lines.append(f"| {label} | {fmt(r['valence']['ccc'])} | {fmt(r['valence']['ccc_per_call'])} | "
                     f"{fmt(r['arousal']['ccc'])} | {fmt(r['arousal']['ccc_per_call'])} |")
    r = res["ccc"].get("reference_targets")
    if r:
        lines.append(f"| *ceiling: the true category targets (not a system)* | {fmt(r['valence']['ccc'])} | "
                     f"{fmt(r['valence']['ccc_per_call'])} | {fmt(r['arousal']['ccc'])} | "
                     f"{fmt(r['arousal']['ccc_per_call'])} |")
    eg = res["egemaps"]["chosen"]
    lines += ["", "CCC = concatenated test calls (the paper's metric); \"mean per call\" = mean of per-call CCCs "
              "(within-call tracking). eGEMAPS ridge chosen on dev: " + "; ".join(
                  f"{d} alpha {eg[d]['alpha']:g}, delay {eg[d]['delay_s']:g} s (dev CCC {eg[d]['dev_ccc']:.3f})"
                  for d in DIMS) + "."]
    rec = res["crnn_recorded_test_ccc"]
    if rec:
        lines.append(f"Test CCC recorded by training in the model's metadata: valence {fmt(rec.get('valence'))}, "
                     f"arousal {fmt(rec.get('arousal'))}.")
    seeds = res.get("seeds")
    if seeds and seeds.get("per_seed"):
        lines += ["", f"### The CRNN over training seeds (torch fp32, best dev epoch of each seed; run `{res['run']}`)",
                  "", "| seed | best epoch | epochs run | collapse restarts | dev V | dev A | test V | test A | "
                  "test V per call | test A per call |", "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
        for r in seeds["per_seed"]:
            d, t = r.get("dev", {}), r.get("test", {})
            lines.append(f"| {r['seed']} | {r.get('best_epoch', '-')} | {r.get('epochs_run', '-')} | "
                         f"{r.get('collapse_restarts', 0)} | {fmt(d.get('valence'))} | {fmt(d.get('arousal'))} | "
                         f"{fmt(t.get('valence'))} | {fmt(t.get('arousal'))} | {fmt(t.get('valence_per_call'))} | "
                         f"{fmt(t.get('arousal_per_call'))} |")
        sm = seeds.get("summary", {})
        ms = [f"{k.replace('test_', '').replace('_', ' ')} {v['mean']:.3f} ({v['sd']:.3f})"
              for k, v in sm.items() if k.startswith("test_") and isinstance(v, dict)]
        if ms:
            lines.append("")
            lines.append(f"Test CCC mean (sd) over {len(seeds['per_seed'])} seeds: " + "; ".join(ms) + ". "
                         f"The embedded model is the best seed on dev (seed {sm.get('best_seed', '?')}).")
    ev = res["events"]
    if not ev["modes"]:
        return "\n".join(lines + ["", "Change events: skipped (the corpus has no segments.csv).", ""])
    lines += ["", f"## Change events on the test pseudo-calls (±{ev['tolerance_s']:g} s)", "",
              f"Reference: {ev['reference']['valence']} valence and {ev['reference']['arousal']} arousal switches "
              f"of >= {ev['min_change']:g} between consecutive utterances (segments.csv), at the later utterance's "
              f"start. Detector: `changes.detect_events`, default change config. The VAD hears speech in "
              f"{100 * ev['test_speech_fraction']:.0f} % of the test bins."]
    labels = {"crnn": "CRNN", "egemaps_ridge": "eGEMAPS + ridge", "train_mean": "train-mean predictor",
              "gold": "gold standard (rater mean; upper reference)",
              "reference_targets": "reference trajectory (detector ceiling)"}
    for mode, title in (("vad", "speech_ratio from the VAD (production setting)"),
                        ("one", "speech_ratio = 1.0 (wall-clock axis)")):
        lines += ["", f"### {title}", "",
                  "| track | valence P | valence R | valence F1 | arousal P | arousal R | arousal F1 | "
                  "detected V / A | mean lag V / A (s) |",
                  "|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
        for key, label in labels.items():
            e = ev["modes"][mode]["systems"][key]
            v, a = e["valence"], e["arousal"]
            lines.append(f"| {label} | {fmt(v['precision'], 2)} | {fmt(v['recall'], 2)} | {fmt(v['f1'], 2)} | "
                         f"{fmt(a['precision'], 2)} | {fmt(a['recall'], 2)} | {fmt(a['f1'], 2)} | "
                         f"{v['n_detected']} / {a['n_detected']} | {fmt(v['mean_lag_s'], 2)} / "
                         f"{fmt(a['mean_lag_s'], 2)} |")
    lines += ["", "Matching: same call, same kind (valence_drop/rise, arousal_spike/drop), one-to-one, closest "
              "pairs first, |t_change_s - t_ref| <= tolerance; lag = detected - reference, mean over matches. "
              "P is n/a when nothing is detected. The reference trajectory row runs the detector on the true "
              "piecewise-constant targets: its recall is the most any track can reach with this detector.", ""]
    return "\n".join(lines)


# ------------------------------------------------------------------------------------------ main
@dataclasses.dataclass
class Setup:
    """Everything a benchmark run reads before it scores: corpus, split, gold, calls."""

    corpus_dir: Path
    run_cfg: dict
    corpus: object
    data_sha: str
    split_info: dict
    gold_method: str
    change_cfg: object
    calls: list[CallRec]
    by: dict[str, list[CallRec]]
    segs: dict
    model_train_sha: str | None

    def part(self, name: str, sample_rate: int) -> dict:
        """Size of one split (calls, speakers, hours, bins) for the report."""
        cs = self.by[name]
        return {"calls": len(cs), "speakers": len({c.speaker for c in cs}),
                "hours": sum(len(c.x) for c in cs) / sample_rate / 3600, "bins": int(sum(c.n for c in cs))}


def prepare(args: argparse.Namespace, model: Model, bin_s: float) -> Setup:
    """Read the run, corpus and split; check they belong together; load every split call."""
    run_cfg = {}
    if args.run is not None:
        if not (args.run / "split.json").is_file():
            sys.exit(f"{args.run}: no split.json (not a `cusemo-batch train` run directory?)")
        if (args.run / "config.json").is_file():
            run_cfg = json.loads((args.run / "config.json").read_text())
    corpus_dir = args.corpus or (Path(run_cfg["corpus"]) if run_cfg.get("corpus") else None)
    if corpus_dir is None:
        sys.exit("--corpus is required (the run's config.json names none)")
    cfg_data = run_cfg.get("config", {}).get("data", {})
    gold_method = args.gold or cfg_data.get("gold", "mean")
    if gold_method not in ("mean", "median"):
        sys.exit(f"gold method {gold_method!r} of the run is not supported here (use --gold)")
    change_cfg = changes.load_change_config(args.change_config)

    corpus = read_corpus(corpus_dir, min_annotators=int(cfg_data.get("min_annotators", 2)))
    data_sha = lib.data_hash(corpus.calls)
    if run_cfg.get("data_sha256") and run_cfg["data_sha256"] != data_sha:
        sys.exit(f"{corpus_dir} is not the corpus of run {args.run} (data sha256 differs from its config.json)")
    split, split_info = load_split(args, corpus)
    missing = [cid for cid, s in split.items() if s in SPLITS and cid not in {c.call_id for c in corpus.calls}]
    if missing:
        sys.exit(f"{len(missing)} call(s) of the split are not in {corpus_dir} (e.g. {missing[0]})")
    model_train_sha = (model.metadata.get("train_data") or {}).get("sha256") if isinstance(
        model.metadata.get("train_data"), dict) else None
    if model_train_sha and model_train_sha != data_sha:
        log(f"WARNING: {model.path} was trained on other data (train_data sha256 {model_train_sha[:12]}… != "
            f"corpus {data_sha[:12]}…): its 'test' calls may not be held out")
    calls = build_calls(args, model, corpus, split, gold_method, bin_s)
    segs = lib.read_segments(Path(corpus_dir) / "segments.csv") if (Path(corpus_dir) / "segments.csv").is_file() else {}
    by = {s: [c for c in calls if c.split == s] for s in SPLITS}
    if not by["test"] or not by["train"] or not by["dev"]:
        sys.exit(f"empty split: train/dev/test = {len(by['train'])}/{len(by['dev'])}/{len(by['test'])} calls")
    return Setup(Path(corpus_dir), run_cfg, corpus, data_sha, split_info, gold_method, change_cfg, calls, by, segs,
                 model_train_sha)


# Long on purpose: a script's main, read top to bottom (arguments, the runs, the table, the JSON).
def main(args: argparse.Namespace) -> dict:
    t_start = time.perf_counter()
    timings: dict[str, float] = {}
    bin_s = args.rate_ms / 1000.0

    model_path = args.model or DEFAULT_MODEL
    if not Path(model_path).is_file():
        sys.exit(f"{model_path}: no such model (pass --model M.onnx)")
    model = Model(model_path, device="cpu", threads=args.threads)

    t = time.perf_counter()
    st = prepare(args, model, bin_s)
    corpus_dir, corpus, data_sha, calls, by, segs = st.corpus_dir, st.corpus, st.data_sha, st.calls, st.by, st.segs
    change_cfg, gold_method, model_train_sha = st.change_cfg, st.gold_method, st.model_train_sha
    test = by["test"]
    timings["load"] = time.perf_counter() - t
    log(f"{len(calls)} calls, train/dev/test = {len(by['train'])}/{len(by['dev'])}/{len(by['test'])}; "
        f"model {model.name} {model.version} ({model.sha256[:12]}…)")

    t = time.perf_counter()
    log("CRNN on the test calls …")
    crnn = crnn_predict(model, test, bin_s)
    timings["crnn"] = time.perf_counter() - t

    t = time.perf_counter()
    log(f"eGEMAPS features ({args.window_s:g} s windows) for {len(calls)} calls …")
    windows = egemaps_windows(args, calls, model.sample_rate, bin_s)
    timings["egemaps_features"] = time.perf_counter() - t
    t = time.perf_counter()
    eg_preds, eg_info = egemaps_ridge(args, calls, windows, bin_s)
    timings["egemaps_ridge"] = time.perf_counter() - t

    train_mean = {d: float(np.mean(np.concatenate([c.gold[d] for c in by["train"]]))) for d in DIMS}
    mean_preds = {c.call_id: {d: np.full(c.n, train_mean[d]) for d in DIMS} for c in test}
    gold_track = {c.call_id: c.gold for c in test}
    ref_tracks, ref_events = {}, {}
    for c in test:
        utts = segs.get(c.call_id)
        if utts:
            v, a = lib.reference_track(utts, c.n, bin_s)
            ref_tracks[c.call_id] = {"valence": v, "arousal": a}
            ref_events[c.call_id] = lib.reference_events(utts, change_cfg.min_change, c.n * bin_s)

    ccc = {"crnn": ccc_table(crnn, test), "egemaps_ridge": ccc_table(eg_preds, test),
           "train_mean": ccc_table(mean_preds, test)}
    if len(ref_tracks) == len(test):
        ccc["reference_targets"] = ccc_table(ref_tracks, test)

    t = time.perf_counter()
    events: dict = {"tolerance_s": args.tolerance_s, "min_change": change_cfg.min_change,
                    "change_config": dataclasses.asdict(change_cfg),
                    "test_speech_fraction": float(np.sum([c.speech.sum() for c in test]) / sum(c.n for c in test)),
                    "modes": {}}
    if len(ref_events) == len(test):
        events["reference"] = {d: sum(1 for evs in ref_events.values() for e in evs if e["dimension"] == d) for d in DIMS}
        tracks = {"crnn": crnn, "egemaps_ridge": eg_preds, "train_mean": mean_preds, "gold": gold_track,
                  "reference_targets": ref_tracks}
        for mode, vad in (("vad", True), ("one", False)):
            events["modes"][mode] = {
                "speech_ratio": SPEECH_MODES[mode],
                "systems": {key: lib.score_events(ref_events, detect(tr, test, bin_s, change_cfg, vad), args.tolerance_s)
                            for key, tr in tracks.items()}}
    else:
        log(f"{corpus_dir}: no segments.csv for the test calls: change events skipped")
    timings["events"] = time.perf_counter() - t
    timings["total"] = time.perf_counter() - t_start

    rec = model.metadata.get("test_ccc")
    import onnxruntime
    import opensmile
    import sklearn

    res = {
        "benchmark": "accuracy",
        "command": "python " + " ".join(shlex.quote(a) for a in sys.argv) if sys.argv and sys.argv[0] else "",
        "date": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "model": {"path": str(model_path), "sha256": model.sha256, "name": model.name, "version": model.version,
                  "normalisation": model.normalisation, "label_rate_ms": model.label_rate_ms,
                  "train_data": model.metadata.get("train_data"), "quantized": model.quantized},
        "crnn_recorded_test_ccc": rec if isinstance(rec, dict) else None,
        "seeds": run_seeds(args.run),
        "corpus": {"path": str(Path(corpus_dir).resolve()), "calls": len(corpus.calls), "data_sha256": data_sha,
                   "matches_model": model_train_sha in (None, data_sha)},
        "run": str(args.run.resolve()) if args.run else None,
        "split": {**st.split_info, **{n: st.part(n, model.sample_rate) for n in SPLITS},
                  "test_calls": [c.call_id for c in test]},
        "rate_s": bin_s, "gold": gold_method,
        "ccc": ccc,
        "train_mean": train_mean,
        "egemaps": eg_info,
        "events": events,
        "timings_s": {k: round(v, 1) for k, v in timings.items()},
        "machine": {"cores": os.cpu_count(), "loadavg_1m": os.getloadavg()[0], "python": platform.python_version(),
                    "onnxruntime": onnxruntime.__version__, "opensmile": opensmile.__version__,
                    "sklearn": sklearn.__version__, "numpy": np.__version__},
    }
    md = markdown(res)
    print(md)
    args.out_md.parent.mkdir(parents=True, exist_ok=True)
    args.out_json.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(args.out_md, md)
    atomic_write_text(args.out_json, json.dumps(_finite(res), indent=2, default=_json_default, allow_nan=False) + "\n")
    log(f"wrote {args.out_md} and {args.out_json} ({timings['total']:.0f} s)")
    return res


def _finite(o):
    """NaN/inf -> null, so the JSON is standard (undefined precision, a CCC of < 2 points)."""
    if isinstance(o, dict):
        return {k: _finite(v) for k, v in o.items()}
    if isinstance(o, (list, tuple)):
        return [_finite(v) for v in o]
    if isinstance(o, (float, np.floating)):
        return float(o) if math.isfinite(o) else None
    return o


def _json_default(o):
    if isinstance(o, (np.floating, np.integer)):
        return o.item()
    if isinstance(o, Path):
        return str(o)
    raise TypeError(type(o).__name__)


if __name__ == "__main__":
    main(ARGS)
