"""Transfer benchmark (issue 14, deliverable 4): channel, level and cross-corpus robustness of the
CRNN (fp32 and int8 ONNX) against eGEMAPS + ridge (fitted on clean audio, and on the CRNN's own
augmented, normalised training audio), every row computed for every system.

    python benchmarks/bench_transfer.py --run build/default/run --corpus build/default/corpus \\
        --model build/default/int8/cusemo-default.onnx --fp32 build/default/cusemo-default.onnx \\
        --baved ../shared/data/baved

``--model`` is the shipped int8 model (default: the embedded ``cusemo_batch/models/cusemo-default.onnx``),
``--fp32`` its fp32 export (``cusemo-batch export CKPT -o DIR/NAME.onnx`` without ``--quantize``);
both must come from the same checkpoint (checked on ``checkpoint_sha256``, warned otherwise).
Without ``--fp32`` the fp32 column is left out; without ``--baved`` the BAVED rows are. The "before"
picture of the level contract (the v3 model, normalisation ``none``) was made with
``--model cusemo_batch/models/cusemo-default.onnx --fp32 build/v3/fp32/cusemo-default.onnx
--out-md benchmarks/results/transfer_v3.md --out-json benchmarks/results/transfer_v3.json``.

Systems
-------
* **CRNN fp32 / CRNN int8**: whole-call streaming pass (``bench_accuracy.crnn_bins``) on the audio
  *as the condition delivers it*, then the model's own input normalisation
  (``audio.normalise(x, model.normalisation)``), exactly as the scorer: a level-normalised model
  undoes the level change, a raw-waveform model (``none``) sees it.
* **eGEMAPS + ridge**: ``bench_accuracy``'s baseline, fitted once on the *clean* TRAIN calls, ridge
  alpha and feature delay chosen per dimension on clean DEV (never on test or BAVED); for every
  condition the 88 functionals are **re-extracted from the conditioned audio** (openSMILE sees the
  level and the channel) and fed to that same fitted model. Features are cached per (call,
  condition), keyed by the samples (``accuracy_lib.cached_windows_of_array``), so re-runs are cheap.
* **eGEMAPS + ridge, same data** (``--same-data-lines``, 3; 0 leaves it out): the same features and
  ridge, fitted on what the CRNN was trained on -- every TRAIN call through ``--same-data-lines``
  random lines of the run's own ``[augment]`` and then the model's input normalisation -- and fed
  every condition's audio after that normalisation, as the scorer feeds the CRNN
  (``same_data_baseline.py`` says why). The summary compares the CRNN with both baselines.

Rows (the benchmark only reports; nothing here selects a model)
------------------------------------------------------------------
1. **RAVDESS test, clean**: CCC valence / arousal on the speaker-disjoint TEST split of the
   pseudo-calls (``RUN/split.json``), over the concatenated calls and as the mean per call -- the
   numbers of ``bench_accuracy.py``.
2. **Channel and level** (same test calls, CCC concatenated; per-call CCCs in the detail table):
   * ``telephone``: ``channel.telephone`` at the call's native level -- pink noise at
     ``--telephone-snr-db`` (20 dB) below the active-speech level, 300-3400 Hz band-pass, G.711
     ``--telephone-codec`` (u-law) -- with a fixed seed per call, ``crc32("SEED:call_id")``
     (``--channel-seed``, 0), so every run and every system hears the same noise;
   * ``white noise``: white noise at ``--white-snr-db`` (20 dB) below the active-speech level, native
     level, no band-pass or codec (seed ``crc32("SEED:call_id")`` as above): a hissing line. Added
     after v10 read a white floor as agitation while the (pink-noise) telephone row looked fine;
   * ``level -45 ... -5 dBFS`` (``--levels``): each call scaled by one gain to that active-speech
     RMS (``level.normalise_level``: gain = target - ``active_level_db(x)``). Samples stay float:
     **no clipping** at any level (at -5 dBFS the peaks exceed full scale; the detail table gives
     the share of samples beyond +-1), so the rows measure the level alone, not saturation.
3. **BAVED** (Arabic, never trained on; ``--baved`` root with ``manifest.csv``): one arousal score
   per file; **AUC** of level2 vs level0 (``sklearn.metrics.roc_auc_score``) and **Spearman** rho of
   the score against the level 0/1/2 over all files (``scipy.stats.spearmanr``), at the native
   recording level and with every file scaled to ``--baved-level-dbfs`` (-26) dBFS active-speech
   RMS (``level.normalise_level``), where loudness no longer tells the levels apart.
   Per-file score -- CRNN: mean arousal over the model frames the scorer's VAD
   (``silence.detect_speech``, 20 ms) hears as speech (all frames if it hears none; the files are
   ~90 % speech); eGEMAPS: the clean-trained arousal ridge on the eGeMAPS functionals of the whole
   file (``accuracy_lib.file_functionals``: same 88 features as the training windows; files are
   1-3 s, shorter than a 4 s training window; no delay applies to a single vector).
4. **Change events** (+-``--tolerance-s``, 2 s) on the clean test pseudo-calls: F1 per dimension,
   as in ``bench_accuracy.py``, with the VAD's speech ratio (production) and with 1.0 (wall clock).

Summary: per row, whether CRNN int8 >= each eGEMAPS baseline, and |int8 - fp32| (issue 14 asks for int8
within 0.01 CCC of fp32 on every row).

Outputs: Markdown (printed and ``--out-md``) and JSON (``--out-json``, every number, the command,
both models' sha256, the corpus hash and the split sizes). BAVED audio is read in place, never
copied (evaluation only: the corpus has no licence).
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import functools
import json
import math
import os
import platform
import shlex
import sys
import time
import zlib
from pathlib import Path
from typing import Callable

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
import bench_args  # noqa: E402  (no heavy imports: parsed before numpy)
RESULTS = HERE / "results"


def _args(argv=None) -> argparse.Namespace:
    p, src = bench_args.new_parser(__doc__, "data, split and models")
    src.add_argument("--model", type=Path, help="int8 ONNX model, the shipped one (default: the embedded "
                                                "cusemo_batch/models/cusemo-default.onnx)")
    src.add_argument("--fp32", type=Path, help="fp32 ONNX export of the same checkpoint (omitted: no fp32 column)")
    src.add_argument("--baved", type=Path, help="BAVED root with manifest.csv (omitted: no BAVED rows)")
    src.add_argument("--gold", choices=("mean", "median"), help="gold standard (default: the run's, else mean)")
    c = p.add_argument_group("conditions")
    c.add_argument("--levels", default="-45,-35,-25,-15,-5", help="active-speech levels (dBFS) of the level rows")
    c.add_argument("--telephone-codec", default="ulaw", help="codec of the telephone row (ulaw, alaw, gsm)")
    c.add_argument("--telephone-snr-db", type=float, default=20.0, help="noise of the telephone row")
    c.add_argument("--white-snr-db", type=float, default=20.0,
                   help="white noise of the 'white noise' row, dB below the active speech")
    c.add_argument("--channel-seed", type=int, default=0, help="base of the per-call noise seeds")
    c.add_argument("--baved-level-dbfs", type=float, default=-26.0, help="BAVED fixed-level row")
    c.add_argument("--same-data-lines", type=int, default=3,
                   help="random lines per TRAIN call for the same-data eGEMAPS baseline (0 = leave it out)")
    c.add_argument("--final-fit", action="store_true",
                   help="the CRNN is a final fit on train + dev (train --refit-from; --run = its source run): "
                        "fit both eGEMAPS baselines on train + dev too, once dev has chosen their settings")
    bench_args.add_method_args(p, "method (as bench_accuracy.py)")
    bench_args.add_resource_args(p, RESULTS / "transfer.md", RESULTS / "transfer.json")
    return bench_args.parse_with_split(p, argv)


ARGS = _args() if __name__ == "__main__" else None
if ARGS is not None:
    bench_args.set_thread_env(ARGS.threads)

import numpy as np  # noqa: E402

import accuracy_lib as lib  # noqa: E402
import bench_accuracy as acc  # noqa: E402
import same_data_baseline as sdb  # noqa: E402

from cusemo_batch import channel, level  # noqa: E402
from cusemo_batch.audio import load_audio, normalise  # noqa: E402
from cusemo_batch.files import atomic_write_text  # noqa: E402
from cusemo_batch.model import Model  # noqa: E402
from cusemo_batch.scorer import DEFAULT_MODEL, VAD_FRAME_S  # noqa: E402

DIMS = acc.DIMS
SYSTEMS = {"crnn_fp32": "CRNN fp32", "crnn_int8": "CRNN int8", "egemaps_ridge": "eGEMAPS + ridge",
           "egemaps_same": "eGEMAPS + ridge, same data"}
BASELINES = {"egemaps_ridge": "egemaps", "egemaps_same": "egemaps_same"}  # system -> verdict key
INT8_TOLERANCE = 0.01  # issue 14: int8 within 0.01 CCC of fp32 on every row
log = acc.log
fmt = acc.fmt


# ------------------------------------------------------------------------------------- conditions
@dataclasses.dataclass(frozen=True)
class Condition:
    """A way the test calls reach the systems: ``apply(x, sample_rate, call_id) -> audio``."""

    key: str
    label: str
    description: str
    apply: Callable[[np.ndarray, int, str], np.ndarray]


def call_seed(call_id: str, base: int) -> int:
    """Noise seed of one call: fixed per call, independent of the order calls are processed in."""
    return zlib.crc32(f"{base}:{call_id}".encode())


def _as_recorded(x: np.ndarray, sample_rate: int, call_id: str) -> np.ndarray:
    return x


def _telephone(x: np.ndarray, sample_rate: int, call_id: str, *, codec_name: str, snr_db: float,
               base_seed: int) -> np.ndarray:
    return channel.telephone(x, sample_rate, seed=call_seed(call_id, base_seed), codec_name=codec_name,
                             snr_db=snr_db)


def _white_noise(x: np.ndarray, sample_rate: int, call_id: str, *, snr_db: float, base_seed: int) -> np.ndarray:
    rng = np.random.default_rng(call_seed(call_id, base_seed))
    return channel.add_noise(x, snr_db, rng, sample_rate=sample_rate, colour="white")


def _at_level(x: np.ndarray, sample_rate: int, call_id: str, *, target_dbfs: float) -> np.ndarray:
    return level.normalise_level(x, sample_rate, target_dbfs)  # one float32 gain, no clipping


def make_conditions(args) -> list[Condition]:
    """clean, telephone, white noise, then one row per level (see the module docstring for why each)."""
    out = [Condition("clean", "clean", "as recorded", _as_recorded),
           Condition("telephone", "telephone",
                     f"channel.telephone: pink noise {args.telephone_snr_db:g} dB below the active-speech level "
                     f"(seed crc32('{args.channel_seed}:call_id')), 300-3400 Hz band-pass, {args.telephone_codec}; "
                     "native level",
                     functools.partial(_telephone, codec_name=args.telephone_codec, snr_db=args.telephone_snr_db,
                                       base_seed=args.channel_seed)),
           Condition("white_noise", "white noise",
                     f"channel.add_noise: white noise {args.white_snr_db:g} dB below the active-speech level "
                     f"(seed crc32('{args.channel_seed}:call_id')); native level, no band-pass or codec",
                     functools.partial(_white_noise, snr_db=args.white_snr_db, base_seed=args.channel_seed))]
    for lv in parse_levels(args.levels):
        out.append(Condition(f"level_{lv:g}", f"{lv:g} dBFS",
                             f"level.normalise_level to {lv:g} dBFS active-speech RMS, float, no clipping",
                             functools.partial(_at_level, target_dbfs=lv)))
    return out


def parse_levels(text: str) -> list[float]:
    return [float(v) for v in text.split(",") if v.strip()]


def audio_stats(xs: list[np.ndarray], sample_rate: int) -> dict:
    """What a condition did to the level: median active-speech level, largest peak, share of samples
    beyond full scale (kept as floats: a level row never clips)."""
    levels = [level.active_level_db(x, sample_rate) for x in xs]
    over = sum(int(np.count_nonzero(np.abs(x) > 1.0)) for x in xs)
    return {"median_active_level_dbfs": float(np.median(levels)),
            "max_abs": float(max(np.max(np.abs(x)) for x in xs)),
            "share_beyond_full_scale": over / sum(x.size for x in xs)}


# ----------------------------------------------------------------------------------- RAVDESS rows
def score_condition(cond: Condition, test: list, crnns: dict[str, Model], fitted: dict, clean_windows: dict,
                    args, sample_rate: int, bin_s: float,
                    same: sdb.SameDataBaseline | None = None) -> tuple[dict, dict]:
    """Predictions of every system on the test calls through ``cond``, and the audio statistics."""
    xs = {c.call_id: cond.apply(c.x, sample_rate, c.call_id) for c in test}
    preds = {key: {c.call_id: acc.crnn_bins(m, xs[c.call_id], c.n, bin_s) for c in test} for key, m in crnns.items()}
    cache = Path(args.cache) if args.cache else None
    if cond.key == "clean":
        windows = clean_windows
    else:
        windows = {c.call_id: lib.cached_windows_of_array(f"{c.call_id}-{cond.key}", xs[c.call_id], sample_rate,
                                                          args.window_s, bin_s, cache) for c in test}
    preds["egemaps_ridge"] = acc.predict_egemaps(fitted, test, windows, bin_s)
    if same is not None:  # the condition's audio, then the model's normalisation (as the scorer)
        norm = {c.call_id: lib.cached_windows_of_array(f"{c.call_id}-{cond.key}-norm", same.prepare(xs[c.call_id]),
                                                       sample_rate, args.window_s, bin_s, cache) for c in test}
        preds["egemaps_same"] = acc.predict_egemaps(same.fitted, test, norm, bin_s)
    return preds, audio_stats(list(xs.values()), sample_rate)


def clean_events(preds: dict, setup, bin_s: float, tolerance_s: float) -> dict:
    """Change-event P/R/F1 of every system on the clean test calls (bench_accuracy's method), with
    the rater mean and the reference trajectory as upper references."""
    test, cfg = setup.by["test"], setup.change_cfg
    refs, tracks = {}, {}
    for c in test:
        utts = setup.segs.get(c.call_id)
        if not utts:
            return {}
        v, a = lib.reference_track(utts, c.n, bin_s)
        tracks[c.call_id] = {"valence": v, "arousal": a}
        refs[c.call_id] = lib.reference_events(utts, cfg.min_change, c.n * bin_s)
    systems = {**preds, "gold": {c.call_id: c.gold for c in test}, "reference_targets": tracks}
    out = {"tolerance_s": tolerance_s, "min_change": cfg.min_change,
           "reference": {d: sum(1 for evs in refs.values() for e in evs if e["dimension"] == d) for d in DIMS},
           "modes": {}}
    for mode, vad in (("vad", True), ("one", False)):
        out["modes"][mode] = {"speech_ratio": acc.SPEECH_MODES[mode],
                              "systems": {k: lib.score_events(refs, acc.detect(tr, test, bin_s, cfg, vad), tolerance_s)
                                          for k, tr in systems.items()}}
    return out


# -------------------------------------------------------------------------------------- BAVED rows
def read_baved(root: Path) -> list[dict]:
    """BAVED files with their expressed-emotion level (0, 1, 2) from ``manifest.csv``."""
    with open(root / "manifest.csv", newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    out = [{"file": r["file"], "speaker": r["speaker"], "level": int(r["emotion"].removeprefix("level"))}
           for r in rows if r["emotion"] in ("level0", "level1", "level2")]
    if not out:
        sys.exit(f"{root}/manifest.csv: no level0/1/2 rows")
    return out


def crnn_file_score(model: Model, x: np.ndarray, speech: np.ndarray) -> float:
    """Mean arousal over the speech frames of one file (all frames when the VAD hears none)."""
    a = model.infer_stream(normalise(x, model.normalisation, model.sample_rate))["arousal"].astype(np.float64)
    keep = speech[: len(a)]
    a = a[: len(keep)]
    return float(a[keep].mean() if keep.any() else a.mean())


def baved_scores(root: Path, files: list[dict], conds: dict[str, Callable], crnns: dict[str, Model],
                 arousal_ridge, columns: list[str], cache: Path | None, sample_rate: int,
                 same: sdb.SameDataBaseline | None = None) -> dict:
    """condition -> system -> one arousal score per file (float64, manifest order)."""
    hop = next(iter(crnns.values())).hop
    # eGEMAPS system -> (its input path, cache-name suffix, arousal ridge)
    eg = {"egemaps_ridge": (lambda x: x, "", arousal_ridge),
          **({"egemaps_same": (same.prepare, "-norm", same.fitted["arousal"])} if same is not None else {})}
    scores = {k: {s: [] for s in [*crnns, *eg]} for k in conds}
    feats: dict[tuple[str, str], list[np.ndarray]] = {(k, s): [] for k in conds for s in eg}
    t0 = time.perf_counter()
    for i, f in enumerate(files, 1):
        x = load_audio(root / f["file"], sample_rate)
        for key, apply in conds.items():
            xc = apply(x, sample_rate)
            speech = lib.speech_frames(xc, sample_rate, len(xc) // hop, hop / sample_rate, VAD_FRAME_S)
            for s, m in crnns.items():
                scores[key][s].append(crnn_file_score(m, xc, speech))
            for s, (prep, suffix, _) in eg.items():
                v, cols = lib.cached_file_functionals(f"baved-{Path(f['file']).stem}-{key}{suffix}", prep(xc),
                                                      sample_rate, cache)
                if cols != columns:
                    sys.exit("eGEMAPS: whole-file functionals differ in columns from the training windows")
                feats[key, s].append(v)
        if i % 250 == 0 or i == len(files):
            log(f"  BAVED {i}/{len(files)} files ({time.perf_counter() - t0:.0f} s)")
    for (key, s), rows in feats.items():
        X = np.nan_to_num(np.stack(rows), nan=0.0, posinf=0.0, neginf=0.0)
        scores[key][s] = eg[s][2].predict_vectors(X)
    return {k: {s: np.asarray(v, dtype=np.float64) for s, v in d.items()} for k, d in scores.items()}


def baved_metrics(score: np.ndarray, levels: np.ndarray) -> dict:
    """AUC level2 vs level0 and Spearman of the score against the level, with per-level means."""
    from scipy.stats import spearmanr
    from sklearn.metrics import roc_auc_score

    sel = levels != 1
    rho, p = spearmanr(score, levels)
    return {"auc_2v0": float(roc_auc_score(levels[sel] == 2, score[sel])),
            "spearman_rho": float(rho), "spearman_p": float(p),
            "mean_by_level": {str(k): float(score[levels == k].mean()) for k in (0, 1, 2)}}


# ------------------------------------------------------------------------------------------- rows
@dataclasses.dataclass
class Row:
    """One line of the report: a metric under a condition, one value per system."""

    group: str
    condition: str
    metric: str
    values: dict[str, float]

    def verdict(self) -> dict:
        """int8 vs each eGEMAPS baseline and |int8 - fp32| (NaN / None where a system is missing)."""
        i8 = self.values.get("crnn_int8", math.nan)
        fp = self.values.get("crnn_fp32", math.nan)
        d_fp = abs(i8 - fp)
        out = {}
        for system, key in BASELINES.items():
            diff = i8 - self.values.get(system, math.nan)
            out[f"int8_minus_{key}"] = diff
            out[f"int8_ge_{key}"] = bool(diff >= 0) if math.isfinite(diff) else None
        return {**out, "abs_int8_minus_fp32": d_fp,
                "int8_within_tolerance": bool(d_fp <= INT8_TOLERANCE) if math.isfinite(d_fp) else None}


def build_rows(ccc: dict, conds: list[Condition], baved: dict | None, events: dict, baved_label: str) -> list[Row]:
    """The report's rows, in the issue's order (module docstring)."""
    rows = []
    for d in DIMS:
        for kind, suffix in (("ccc", ""), ("ccc_per_call", ", mean per call")):
            rows.append(Row("RAVDESS test", "clean", f"CCC {d}{suffix}",
                            {s: r[d][kind] for s, r in ccc["clean"].items()}))
    for cond in conds[1:]:
        for d in DIMS:
            rows.append(Row("RAVDESS test", cond.label, f"CCC {d}", {s: r[d]["ccc"] for s, r in ccc[cond.key].items()}))
    baved_metrics_named = (("auc_2v0", "arousal AUC level2 vs level0"),
                           ("spearman_rho", "arousal Spearman rho vs level 0/1/2"))
    for key, label in (("native", "native level"), ("fixed", baved_label)):
        if baved:
            for metric, name in baved_metrics_named:
                rows.append(Row("BAVED", label, name, {s: r[metric] for s, r in baved["metrics"][key].items()}))
    for mode, label in (("vad", "clean, VAD speech axis"), ("one", "clean, wall-clock axis")):
        if events:
            for d in DIMS:
                rows.append(Row("change events", label, f"F1 {d} (±{events['tolerance_s']:g} s)",
                                {s: events["modes"][mode]["systems"][s][d]["f1"] for s in ccc["clean"]}))
    return rows


# ----------------------------------------------------------------------------------------- report
def markdown(res: dict) -> str:
    systems = res["systems"]
    rows = res["rows"]
    s = res["split"]
    lines = ["# Transfer benchmark: channel, level and cross-corpus (issue 14)", "",
             f"- command: `{res['command']}`",
             f"- date: {res['date']}; wall time {res['timings_s']['total']:.0f} s"]
    for key, m in res["models"].items():
        lines.append(f"- {SYSTEMS[key]}: `{m['path']}` ({m['name']} {m['version']}, quantized {m['quantized']}, "
                     f"normalisation `{m['normalisation']}`), sha256 `{m['sha256'][:16]}…`, checkpoint "
                     f"`{(m['checkpoint_sha256'] or '?')[:12]}…`")
    eg = res["egemaps"]["chosen"]
    lines += [f"- corpus `{res['corpus']['path']}`, data sha256 `{res['corpus']['data_sha256'][:16]}…`; split "
              f"({s['source']}): " + ", ".join(f"{n} {s[n]['calls']} calls / {s[n]['speakers']} speakers"
                                                for n in acc.SPLITS),
              "- eGEMAPS + ridge: fitted on clean " + ("TRAIN + DEV (final fit)" if res["egemaps"].get("final_fit")
                                                       else "TRAIN") + ", chosen on clean DEV: " + "; ".join(
                  f"{d} alpha {eg[d]['alpha']:g}, delay {eg[d]['delay_s']:g} s" for d in DIMS)
              + "; features re-extracted per condition"]
    if res.get("egemaps_same"):
        es = res["egemaps_same"]
        lines.append(f"- eGEMAPS + ridge, same data: TRAIN = {es['training_audio']}; chosen on DEV: " + "; ".join(
            f"{d} alpha {es['chosen'][d]['alpha']:g}, delay {es['chosen'][d]['delay_s']:g} s" for d in DIMS)
            + "; every condition's audio normalised as the model's input")
    lines += [
              "- conditions: " + "; ".join(f"**{c['label']}** = {c['description']}" for c in res["conditions"])]
    if res.get("baved"):
        b = res["baved"]
        lines.append(f"- BAVED `{b['root']}`: {b['n_by_level']['0']} / {b['n_by_level']['1']} / "
                     f"{b['n_by_level']['2']} files at level 0 / 1 / 2; score per file: {b['score']}")
    head = " | ".join(SYSTEMS[k] for k in systems)
    lines += ["", "## Results", "", f"| # | data | condition | metric | {head} |",
              "|---:|---|---|---|" + "---:|" * len(systems)]
    for i, r in enumerate(rows, 1):
        lines.append(f"| {i} | {r['group']} | {r['condition']} | {r['metric']} | "
                     + " | ".join(fmt(r["values"].get(k)) for k in systems) + " |")
    lines += ["", "CCC at the 500 ms label rate against the rater mean, concatenated test calls unless \"mean per "
              "call\". AUC: level2 vs level0 files, 0.5 = chance. Spearman: per-file score vs level 0/1/2.", ""]
    lines += summary_md(res)
    lines += details_md(res)
    return "\n".join(lines)


def fmt_p(p) -> str:
    return "n/a" if p is None else f"{p:.1g}"


def yes_no(v) -> str:
    return "n/a" if v is None else ("yes" if v else "**no**")


def summary_md(res: dict) -> list[str]:
    rows, sm = res["rows"], res["summary"]
    out = sm["int8_outside_tolerance_rows"]
    baselines = [(s, k) for s, k in BASELINES.items() if s in res["systems"]]
    lines = ["## Summary", ""]
    for system, key in baselines:
        ge = sm[f"int8_ge_{key}_rows"]
        lines.append(f"- CRNN int8 >= {SYSTEMS[system]} on {len(ge)} of {sm['rows']} rows"
                     + (f" (rows {', '.join(map(str, ge))})" if ge else "") + ".")
    lines += [f"- |int8 - fp32|: largest {fmt(sm['max_abs_int8_minus_fp32'])} "
              f"(row {sm['max_abs_int8_minus_fp32_row']}); "
              f"within {INT8_TOLERANCE:g} on {sm['int8_within_tolerance']} of {sm['rows_with_fp32']} rows"
              + (f" (not on rows {', '.join(map(str, out))})" if out else "") + ".", "",
              "| # | condition | metric | " + " | ".join(f"int8 - {SYSTEMS[s]} | >= " for s, _ in baselines)
              + f" | abs(int8 - fp32) | within {INT8_TOLERANCE:g} |",
              "|---:|---|---|" + "---:|:---:|" * len(baselines) + "---:|:---:|"]
    for i, r in enumerate(rows, 1):
        v = r["verdict"]
        cells = [f"{fmt(v[f'int8_minus_{k}'])} | {yes_no(v[f'int8_ge_{k}'])}" for _, k in baselines]
        lines.append(f"| {i} | {r['group']}, {r['condition']} | {r['metric']} | " + " | ".join(cells)
                     + f" | {fmt(v['abs_int8_minus_fp32'])} | {yes_no(v['int8_within_tolerance'])} |")
    return lines + [""]


def details_md(res: dict) -> list[str]:
    systems = res["systems"]
    lines = ["## Details", "", "### CCC per condition: concatenated / mean per call", "",
             "| condition | median level (dBFS) | beyond full scale | "
             + " | ".join(f"{SYSTEMS[k]} V | {SYSTEMS[k]} A" for k in systems) + " |",
             "|---|---:|---:|" + "---:|" * (2 * len(systems))]
    for c in res["conditions"]:
        st, r = c["audio"], res["ccc"][c["key"]]
        cells = [f"{fmt(r[k][d]['ccc'])} / {fmt(r[k][d]['ccc_per_call'])}" for k in systems for d in DIMS]
        lines.append(f"| {c['label']} | {st['median_active_level_dbfs']:.1f} | "
                     f"{100 * st['share_beyond_full_scale']:.2f} % | " + " | ".join(cells) + " |")
    b = res.get("baved")
    if b:
        lines += ["", "### BAVED: mean per-file arousal score by level; AUC; Spearman rho (p)", "",
                  "| level | system | level 0 | level 1 | level 2 | AUC 2 vs 0 | Spearman rho (p) |",
                  "|---|---|---:|---:|---:|---:|---:|"]
        for key, label in (("native", "native"), ("fixed", f"{b['fixed_level_dbfs']:g} dBFS")):
            for k in systems:
                m = b["metrics"][key][k]
                mb = m["mean_by_level"]
                lines.append(f"| {label} | {SYSTEMS[k]} | {fmt(mb['0'])} | {fmt(mb['1'])} | {fmt(mb['2'])} | "
                             f"{fmt(m['auc_2v0'])} | {fmt(m['spearman_rho'])} ({fmt_p(m['spearman_p'])}) |")
    ev = res.get("events")
    if ev:
        labels = {**SYSTEMS, "gold": "gold standard (rater mean; upper reference)",
                  "reference_targets": "reference trajectory (detector ceiling)"}
        lines += ["", f"### Change events, clean test calls (±{ev['tolerance_s']:g} s; {ev['reference']['valence']} "
                  f"valence / {ev['reference']['arousal']} arousal reference switches of >= {ev['min_change']:g})"]
        for mode, title in (("vad", "speech_ratio from the VAD (production)"), ("one", "speech_ratio = 1.0")):
            lines += ["", f"{title}:", "", "| track | V P | V R | V F1 | A P | A R | A F1 | detected V / A |",
                      "|---|---:|---:|---:|---:|---:|---:|---:|"]
            for k, e in ev["modes"][mode]["systems"].items():
                v, a = e["valence"], e["arousal"]
                lines.append(f"| {labels[k]} | {fmt(v['precision'], 2)} | {fmt(v['recall'], 2)} | {fmt(v['f1'], 2)} | "
                             f"{fmt(a['precision'], 2)} | {fmt(a['recall'], 2)} | {fmt(a['f1'], 2)} | "
                             f"{v['n_detected']} / {a['n_detected']} |")
    return lines + [""]


def summarise(rows: list[dict]) -> dict:
    """Counts behind the summary section (row numbers are 1-based, as printed)."""
    versus = {}
    for key in BASELINES.values():
        versus[f"int8_ge_{key}_rows"] = [i for i, r in enumerate(rows, 1) if r["verdict"][f"int8_ge_{key}"] is True]
        versus[f"int8_below_{key}_rows"] = [i for i, r in enumerate(rows, 1) if r["verdict"][f"int8_ge_{key}"] is False]
    with_fp = [(i, r["verdict"]["abs_int8_minus_fp32"]) for i, r in enumerate(rows, 1)
               if r["verdict"]["int8_within_tolerance"] is not None]
    worst = max(with_fp, key=lambda t: t[1]) if with_fp else (None, math.nan)
    return {"rows": len(rows), **versus,
            "rows_with_fp32": len(with_fp),
            "int8_within_tolerance": sum(1 for _, d in with_fp if d <= INT8_TOLERANCE),
            "int8_outside_tolerance_rows": [i for i, d in with_fp if d > INT8_TOLERANCE],
            "max_abs_int8_minus_fp32": worst[1], "max_abs_int8_minus_fp32_row": worst[0],
            "int8_tolerance": INT8_TOLERANCE}


# ------------------------------------------------------------------------------------------- main
def load_models(args) -> dict[str, Model]:
    """``crnn_fp32`` (if given) and ``crnn_int8``; warn when they are not one checkpoint's pair."""
    int8_path = args.model or DEFAULT_MODEL
    out = {}
    for key, path in (("crnn_fp32", args.fp32), ("crnn_int8", int8_path)):
        if path is None:
            continue
        if not Path(path).is_file():
            sys.exit(f"{path}: no such model")
        out[key] = Model(path, device="cpu", threads=args.threads)
    if out["crnn_int8"].quantized != "int8":
        log(f"WARNING: --model {int8_path} is not int8 (quantized = {out['crnn_int8'].quantized})")
    if "crnn_fp32" in out:
        fp, i8 = out["crnn_fp32"], out["crnn_int8"]
        if fp.quantized != "none":
            log(f"WARNING: --fp32 {args.fp32} is quantized ({fp.quantized})")
        if fp.metadata.get("checkpoint_sha256") != i8.metadata.get("checkpoint_sha256"):
            log("WARNING: --fp32 and --model come from different checkpoints: |int8 - fp32| is not quantization error")
        if (fp.sample_rate, fp.hop, fp.normalisation) != (i8.sample_rate, i8.hop, i8.normalisation):
            sys.exit("--fp32 and --model differ in sample rate, hop or normalisation")
    return out


def model_info(m: Model) -> dict:
    return {"path": str(m.path), "sha256": m.sha256, "name": m.name, "version": m.version,
            "normalisation": m.normalisation, "quantized": m.quantized,
            "checkpoint_sha256": m.metadata.get("checkpoint_sha256"), "train_data": m.metadata.get("train_data"),
            "recorded_test_ccc": m.metadata.get("test_ccc")}


# Long on purpose: a script's main, read top to bottom (arguments, the runs, the table, the JSON).
def main(args: argparse.Namespace) -> dict:
    t_start = time.perf_counter()
    timings: dict[str, float] = {}
    bin_s = args.rate_ms / 1000.0
    crnns = load_models(args)
    ref = crnns["crnn_int8"]
    sr = ref.sample_rate

    t = time.perf_counter()
    setup = acc.prepare(args, ref, bin_s)
    test = setup.by["test"]
    timings["load"] = time.perf_counter() - t
    log(f"{len(setup.calls)} calls, train/dev/test = " + "/".join(str(len(setup.by[s])) for s in acc.SPLITS)
        + "; models " + ", ".join(f"{k} {m.version} ({m.sha256[:12]}…)" for k, m in crnns.items()))

    t = time.perf_counter()
    log(f"eGEMAPS features ({args.window_s:g} s windows) for {len(setup.calls)} clean calls …")
    clean_windows = acc.egemaps_windows(args, setup.calls, sr, bin_s)
    final = setup.by["train"] + setup.by["dev"] if args.final_fit else None
    fitted, eg_info = acc.fit_egemaps_ridge(args, setup.calls, clean_windows, bin_s, final)
    same = (sdb.fit(args, setup, ref.normalisation, sr, bin_s, log, args.final_fit)
            if args.same_data_lines > 0 else None)
    timings["egemaps_fit"] = time.perf_counter() - t

    conds = make_conditions(args)
    ccc, cond_info, clean_preds = {}, [], None
    t = time.perf_counter()
    for cond in conds:
        tc = time.perf_counter()
        preds, stats = score_condition(cond, test, crnns, fitted, clean_windows, args, sr, bin_s, same)
        ccc[cond.key] = {k: acc.ccc_table(p, test) for k, p in preds.items()}
        cond_info.append({"key": cond.key, "label": cond.label, "description": cond.description, "audio": stats})
        clean_preds = preds if cond.key == "clean" else clean_preds
        log(f"  {cond.label}: " + ", ".join(f"{k} A {ccc[cond.key][k]['arousal']['ccc']:.3f}" for k in preds)
            + f" ({time.perf_counter() - tc:.0f} s)")
    timings["ravdess_conditions"] = time.perf_counter() - t

    t = time.perf_counter()
    events = clean_events(clean_preds, setup, bin_s, args.tolerance_s)
    timings["events"] = time.perf_counter() - t

    baved = None
    baved_label = f"{args.baved_level_dbfs:g} dBFS"
    if args.baved is not None:
        t = time.perf_counter()
        files = read_baved(args.baved)
        log(f"BAVED: {len(files)} files …")
        levels = np.array([f["level"] for f in files])
        bconds = {"native": lambda x, sr: x,
                  "fixed": lambda x, sr: level.normalise_level(x, sr, args.baved_level_dbfs)}
        cache = Path(args.cache) / "baved" if args.cache else None
        scores = baved_scores(args.baved, files, bconds, crnns, fitted["arousal"],
                              next(iter(clean_windows.values())).columns, cache, sr, same)
        baved = {"root": str(args.baved.resolve()), "fixed_level_dbfs": args.baved_level_dbfs,
                 "n_files": len(files), "n_speakers": len({f["speaker"] for f in files}),
                 "n_by_level": {str(k): int(np.sum(levels == k)) for k in (0, 1, 2)},
                 "score": "CRNN: mean arousal over the VAD speech frames of the file (all frames if none); "
                          "eGEMAPS: the arousal ridge on the whole-file eGeMAPS functionals (same data: "
                          "of the normalised file)",
                 "metrics": {k: {s: baved_metrics(v, levels) for s, v in d.items()} for k, d in scores.items()}}
        timings["baved"] = time.perf_counter() - t

    rows = [dataclasses.asdict(r) | {"verdict": r.verdict()}
            for r in build_rows(ccc, conds, baved, events, baved_label)]
    timings["total"] = time.perf_counter() - t_start
    res = {
        "benchmark": "transfer",
        "command": "python " + " ".join(shlex.quote(a) for a in sys.argv) if sys.argv and sys.argv[0] else "",
        "date": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "systems": [k for k in SYSTEMS if k in crnns or k == "egemaps_ridge" or (k == "egemaps_same" and same)],
        "models": {k: model_info(m) for k, m in crnns.items()},
        "corpus": {"path": str(setup.corpus_dir.resolve()), "calls": len(setup.corpus.calls),
                   "data_sha256": setup.data_sha, "matches_model": setup.model_train_sha in (None, setup.data_sha)},
        "run": str(args.run.resolve()) if args.run else None,
        "split": {**setup.split_info, **{n: setup.part(n, sr) for n in acc.SPLITS},
                  "test_calls": [c.call_id for c in test]},
        "rate_s": bin_s, "gold": setup.gold_method,
        "conditions": cond_info,
        "egemaps": {k: v for k, v in eg_info.items() if k != "grid"},
        "egemaps_same": same.info if same is not None else None,
        "ccc": ccc,
        "baved": baved,
        "events": events,
        "rows": rows,
        "summary": summarise(rows),
        "timings_s": {k: round(v, 1) for k, v in timings.items()},
        "machine": machine(),
    }
    res = acc._finite(res)
    md = markdown(res)
    print(md)
    for path in (args.out_md, args.out_json):
        path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(args.out_md, md)
    atomic_write_text(args.out_json, json.dumps(res, indent=2, default=acc._json_default, allow_nan=False) + "\n")
    log(f"wrote {args.out_md} and {args.out_json} ({timings['total']:.0f} s)")
    return res


def machine() -> dict:
    import onnxruntime
    import opensmile
    import scipy
    import sklearn

    return {"cores": os.cpu_count(), "loadavg_1m": os.getloadavg()[0], "python": platform.python_version(),
            "onnxruntime": onnxruntime.__version__, "opensmile": opensmile.__version__, "sklearn": sklearn.__version__,
            "scipy": scipy.__version__, "numpy": np.__version__}


if __name__ == "__main__":
    main(ARGS)
