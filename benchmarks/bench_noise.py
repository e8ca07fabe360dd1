"""Noise colour: every seed of one or more training runs, dev (or test) calls clean and under a
white or pink noise floor.

    python benchmarks/bench_noise.py --run v10=build/v10/run --run v11=build/v11/run \\
        [--split dev] [--snr 20] [--work build/seed_exports] [--out benchmarks/results/noise_dev.json]

Why: v4-v10 trained with pink noise only, and v10 read a white floor 16-26 dB below calm speech as
agitation (MODEL_CARD.md, known limits). ``bench_transfer.py``'s telephone row uses pink noise, as
training does, so it cannot see that. This scores each seed's fp32 export (``best.pt`` exported
under ``--work`` as ``TAG_seed_N.onnx``, the names ``bench_baved_seeds.py`` uses) on the run's own
split, (1) as recorded, (2) plus white noise and (3) plus pink noise at ``--snr`` dB below each
call's active-speech level (``channel.add_noise``, seed fixed per call), through the model's level
normalisation as in production. CCC over the concatenated calls, (V + A) / 2 as the selection
metric; per run the mean and sd over seeds. ``--split dev`` is what a recipe may be chosen with;
``--split test`` is for reporting. Prints a Markdown table and writes JSON.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path
from typing import Callable

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import bench_accuracy as acc  # noqa: E402
from bench_baved_seeds import export_seeds  # noqa: E402
import bench_transfer as bt  # noqa: E402

from cusemo_batch import channel  # noqa: E402
from cusemo_batch.files import atomic_write_text  # noqa: E402
from cusemo_batch.metrics import ccc_concat_and_mean  # noqa: E402
from cusemo_batch.model import Model  # noqa: E402
from cusemo_batch.training.corpus import read_corpus  # noqa: E402  (torch-free)

NOISE_SEED = 11  # base of the per-call noise seeds (bench_transfer's telephone row uses 0)


def conditions(snr_db: float) -> dict[str, Callable[[np.ndarray, int, str], np.ndarray]]:
    """Condition name -> ``apply(x, sample_rate, call_id)``; the same noise for every model."""
    def noisy(colour: str):
        def apply(x: np.ndarray, sr: int, call_id: str) -> np.ndarray:
            rng = np.random.default_rng(bt.call_seed(call_id, NOISE_SEED))
            return channel.add_noise(x, snr_db, rng, sample_rate=sr, colour=colour)
        return apply
    return {"clean": lambda x, sr, call_id: x, f"white {snr_db:g} dB": noisy("white"),
            f"pink {snr_db:g} dB": noisy("pink")}


def score_run(run: Path, models: dict[str, Model], split_name: str, conds: dict) -> dict[str, dict[str, dict]]:
    """seed -> condition -> {valence, arousal, mean} CCC on the run's ``split_name`` calls."""
    run_cfg = json.loads((run / "config.json").read_text())
    data = run_cfg["config"]["data"]
    bin_s = data["label_rate_ms"] / 1000
    corpus = read_corpus(run_cfg["corpus"], min_annotators=int(data.get("min_annotators", 2)))
    split = {k: v for k, v in json.loads((run / "split.json").read_text()).items() if v == split_name}
    first = next(iter(models.values()))
    calls = acc.build_calls(None, first, corpus, split, data.get("gold", "mean"), bin_s)
    out: dict[str, dict[str, dict]] = {seed: {} for seed in models}
    for cond, apply in conds.items():
        audio = {c.call_id: apply(c.x, first.sample_rate, c.call_id) for c in calls}
        for seed, m in models.items():
            pred = {c.call_id: acc.crnn_bins(m, audio[c.call_id], c.n, bin_s) for c in calls}
            ccc = {d: ccc_concat_and_mean([pred[c.call_id][d] for c in calls], [c.gold[d] for c in calls])[0]
                   for d in ("valence", "arousal")}
            out[seed][cond] = {**ccc, "mean": (ccc["valence"] + ccc["arousal"]) / 2}
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--run", action="append", required=True, help="TAG=RUN_DIR (repeat)")
    ap.add_argument("--split", choices=("dev", "test"), default="dev")
    ap.add_argument("--snr", type=float, default=20.0, help="noise level, dB below the active speech")
    ap.add_argument("--work", type=Path, default=Path("build/seed_exports"), help="exported seed models")
    ap.add_argument("--out", type=Path, help="JSON (default benchmarks/results/noise_SPLIT.json)")
    args = ap.parse_args()
    out_path = args.out or HERE / "results" / f"noise_{args.split}.json"
    conds = conditions(args.snr)
    results: dict[str, dict] = {}
    for tag, run in (r.split("=", 1) for r in args.run):
        models = export_seeds(tag, Path(run), args.work)
        per_seed = score_run(Path(run), models, args.split, conds)
        summary = {}
        for cond in conds:
            vals = [per_seed[s][cond]["mean"] for s in per_seed]
            summary[cond] = {"mean": statistics.mean(vals), "sd": statistics.stdev(vals) if len(vals) > 1 else 0.0,
                             "valence": statistics.mean(per_seed[s][cond]["valence"] for s in per_seed),
                             "arousal": statistics.mean(per_seed[s][cond]["arousal"] for s in per_seed)}
        results[tag] = {"run": str(run), "per_seed": per_seed, "summary": summary}
    names = list(conds)
    lines = [f"CCC (V+A)/2 on the {args.split} calls, concatenated; noise {args.snr:g} dB below the active speech",
             "", "| run | seed | " + " | ".join(names) + " |", "|---|---|" + "---:|" * len(names)]
    for tag, r in results.items():
        for seed, by_cond in r["per_seed"].items():
            lines.append(f"| {tag} | {seed} | " + " | ".join(f"{by_cond[c]['mean']:.3f}" for c in names) + " |")
        lines.append(f"| **{tag}** | mean (sd); V / A | " + " | ".join(
            f"**{r['summary'][c]['mean']:.3f}** ({r['summary'][c]['sd']:.3f}); {r['summary'][c]['valence']:.3f} / "
            f"{r['summary'][c]['arousal']:.3f}" for c in names) + " |")
    print("\n".join(lines))
    atomic_write_text(out_path, json.dumps({"command": " ".join(sys.argv), "split": args.split, "snr_db": args.snr,
                                            "noise_seed_base": NOISE_SEED, "results": results}, indent=2))
    print(f"wrote {out_path}")


if __name__ == "__main__":
    main()
