"""BAVED arousal transfer of every seed of one or more training runs (fp32, native level).

    python benchmarks/bench_baved_seeds.py --run v4=build/default/run --run v5=build/v5c/run \\
        --baved ../shared/data/baved --out benchmarks/results/baved_per_seed.json

Why: the shipped seed is chosen on RAVDESS dev; BAVED (Arabic, never trained on) is read to
*report* how arousal transfers, never to choose. One seed's BAVED number mixes the recipe with the
luck of the seed; this prints every seed's AUC (level2 vs level0) and Spearman (score vs level
0/1/2) with the mean and sd per run, so two recipes are compared on their seed distributions, and
the *seed ensemble* of each run (per file, the mean of its seeds' scores): how much of the seed
spread averaging would remove -- an upper view of what distilling or ensembling the seeds could
give, not a shipped model (six models cost six times the inference).
Scoring per file as in ``bench_transfer.py`` (mean arousal over the VAD speech frames, the model's
level normalisation applied). Each seed's ``best.pt`` is exported to fp32 ONNX under ``--work``.
Prints a Markdown table and writes JSON.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import accuracy_lib as lib  # noqa: E402
import bench_transfer as bt  # noqa: E402

from cusemo_batch.audio import load_audio  # noqa: E402
from cusemo_batch.files import atomic_write_text  # noqa: E402
from cusemo_batch.model import Model  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--run", action="append", required=True, help="TAG=RUN_DIR (repeat)")
    ap.add_argument("--baved", type=Path, required=True, help="BAVED root with manifest.csv")
    ap.add_argument("--work", type=Path, default=Path("build/baved_seeds"), help="exported seed models")
    ap.add_argument("--out", type=Path, default=HERE / "results" / "baved_per_seed.json")
    args = ap.parse_args()
    runs = dict(r.split("=", 1) for r in args.run)
    models: dict[str, Model] = {}
    for tag, run in runs.items():
        for ckpt in sorted(Path(run).glob("seed_*/best.pt")):
            onnx = args.work / f"{tag}_{ckpt.parent.name}.onnx"
            if not onnx.exists():
                args.work.mkdir(parents=True, exist_ok=True)
                subprocess.run([sys.executable, "-m", "cusemo_batch", "export", str(ckpt), "-o", str(onnx),
                                "--no-check"], check=True, capture_output=True)
            models[f"{tag} {ckpt.parent.name}"] = Model(onnx, device="cpu", threads=2)
    files = bt.read_baved(args.baved)
    levels = np.array([f["level"] for f in files])
    first = next(iter(models.values()))
    sr, hop = first.sample_rate, first.hop
    scores: dict[str, list[float]] = {k: [] for k in models}
    for f in files:
        x = load_audio(args.baved / f["file"], sr)
        speech = lib.speech_frames(x, sr, len(x) // hop, hop / sr, bt.VAD_FRAME_S)
        for k, m in models.items():
            scores[k].append(bt.crnn_file_score(m, x, speech))
    per_seed = {k: bt.baved_metrics(np.asarray(v), levels) for k, v in scores.items()}
    lines = ["| run | seed | AUC level2 vs level0 | Spearman rho |", "|---|---|---:|---:|"]
    summary = {}
    for tag in runs:
        keys = [k for k in per_seed if k.startswith(f"{tag} ")]
        for k in keys:
            lines.append(f"| {tag} | {k.split(' ', 1)[1]} | {per_seed[k]['auc_2v0']:.3f} | "
                         f"{per_seed[k]['spearman_rho']:.3f} |")
        auc = [per_seed[k]["auc_2v0"] for k in keys]
        rho = [per_seed[k]["spearman_rho"] for k in keys]
        ensemble = bt.baved_metrics(np.mean([np.asarray(scores[k]) for k in keys], axis=0), levels)
        summary[tag] = {"auc_mean": statistics.mean(auc), "auc_sd": statistics.stdev(auc) if len(auc) > 1 else 0.0,
                        "rho_mean": statistics.mean(rho), "n_seeds": len(auc), "ensemble": ensemble}
        lines.append(f"| **{tag}** | mean (sd) | **{summary[tag]['auc_mean']:.3f} ({summary[tag]['auc_sd']:.3f})** | "
                     f"{summary[tag]['rho_mean']:.3f} |")
        lines.append(f"| {tag} | ensemble of the {len(keys)} seeds | {ensemble['auc_2v0']:.3f} | "
                     f"{ensemble['spearman_rho']:.3f} |")
    print("\n".join(lines))
    atomic_write_text(args.out, json.dumps({"command": " ".join(sys.argv), "baved": str(args.baved.resolve()),
                                            "n_files": len(files), "per_seed": per_seed, "summary": summary},
                                           indent=2))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
