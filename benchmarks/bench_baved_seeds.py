"""BAVED arousal transfer of every seed of one or more training runs (fp32, native level).

    python benchmarks/bench_baved_seeds.py --run v4=build/default/run --run v5=build/v5c/run \\
        --baved ../shared/data/baved --out benchmarks/results/baved_per_seed.json

Why: the shipped seed is chosen on RAVDESS dev; BAVED (Arabic, never trained on) is read to
*report* how arousal transfers, never to choose. One seed's BAVED number mixes the recipe with the
luck of the seed; this prints every seed's AUC (level2 vs level0) and Spearman (score vs level
0/1/2) with the mean and sd per run, so two recipes are compared on their seed distributions, and
the *seed ensemble* of each run (per file, the mean of its seeds' scores): how much of the seed
spread averaging would remove -- an upper view of what distilling or ensembling the seeds could
give, not a shipped model (six models cost six times the inference). ``--dev`` adds what the
protocol may choose with: each seed's and the ensemble's dev CCC, (V + A) / 2 over the concatenated
dev calls of the run's own split (same exports, same scoring path as ``bench_accuracy.py``). Whether
averaging seeds beats the dev-chosen seed *on dev* is what decides if distilling them is worth a run.
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
import bench_accuracy as acc  # noqa: E402
import bench_transfer as bt  # noqa: E402

from cusemo_batch.audio import load_audio  # noqa: E402
from cusemo_batch.files import atomic_write_text  # noqa: E402
from cusemo_batch.metrics import ccc_concat_and_mean  # noqa: E402
from cusemo_batch.model import Model  # noqa: E402
from cusemo_batch.training.corpus import read_corpus  # noqa: E402  (torch-free)


def dev_scores(run: Path, models: dict[str, Model], ensemble_key: str) -> dict[str, dict[str, float]]:
    """Dev CCC (valence, arousal, their mean; concatenated calls) per seed model and, under
    ``ensemble_key``, of their per-bin mean, on the run's dev split with the run's gold and label rate."""
    run_cfg = json.loads((run / "config.json").read_text())
    data = run_cfg["config"]["data"]
    bin_s = data["label_rate_ms"] / 1000
    corpus = read_corpus(run_cfg["corpus"], min_annotators=int(data.get("min_annotators", 2)))
    split = {k: v for k, v in json.loads((run / "split.json").read_text()).items() if v == "dev"}
    first = next(iter(models.values()))
    calls = acc.build_calls(None, first, corpus, split, data.get("gold", "mean"), bin_s)
    preds = {k: acc.crnn_predict(m, calls, bin_s) for k, m in models.items()}
    preds[ensemble_key] = {c.call_id: {d: np.mean([p[c.call_id][d] for p in preds.values()], axis=0)
                                       for d in ("valence", "arousal")} for c in calls}
    out = {}
    for k, p in preds.items():
        ccc = {d: ccc_concat_and_mean([p[c.call_id][d] for c in calls], [c.gold[d] for c in calls])[0]
               for d in ("valence", "arousal")}
        out[k] = {**ccc, "mean": (ccc["valence"] + ccc["arousal"]) / 2}
    return out


def export_seeds(tag: str, run: Path, work: Path) -> dict[str, Model]:
    """fp32 ONNX of every seed's ``best.pt`` as ``work/TAG_seed_N.onnx`` (exported once, reused), by seed."""
    models = {}
    for ckpt in sorted(run.glob("seed_*/best.pt")):
        onnx = work / f"{tag}_{ckpt.parent.name}.onnx"
        if not onnx.exists():
            work.mkdir(parents=True, exist_ok=True)
            subprocess.run([sys.executable, "-m", "cusemo_batch", "export", str(ckpt), "-o", str(onnx), "--no-check"],
                           check=True, capture_output=True)
        models[ckpt.parent.name] = Model(onnx, device="cpu", threads=2)
    if not models:
        raise SystemExit(f"no seed_*/best.pt under {run}")
    return models


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--run", action="append", required=True, help="TAG=RUN_DIR (repeat)")
    ap.add_argument("--baved", type=Path, required=True, help="BAVED root with manifest.csv")
    ap.add_argument("--work", type=Path, default=Path("build/baved_seeds"), help="exported seed models")
    ap.add_argument("--out", type=Path, default=HERE / "results" / "baved_per_seed.json")
    ap.add_argument("--dev", action="store_true", help="also each seed's and the ensemble's dev CCC")
    args = ap.parse_args()
    runs = dict(r.split("=", 1) for r in args.run)
    models: dict[str, Model] = {}
    for tag, run in runs.items():
        models.update({f"{tag} {seed}": m for seed, m in export_seeds(tag, Path(run), args.work).items()})
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
    dev: dict[str, dict] = {}
    if args.dev:
        for tag, run in runs.items():
            dev.update(dev_scores(Path(run), {k: m for k, m in models.items() if k.startswith(f"{tag} ")},
                                  f"{tag} ensemble"))

    def dev_cell(key: str) -> str:
        return f" {dev[key]['mean']:.3f} |" if key in dev else ""

    head = "| run | seed | AUC level2 vs level0 | Spearman rho |" + (" dev CCC (V+A)/2 |" if dev else "")
    lines = [head, "|---|---|---:|---:|" + ("---:|" if dev else "")]
    summary = {}
    for tag in runs:
        keys = [k for k in per_seed if k.startswith(f"{tag} ")]
        for k in keys:
            lines.append(f"| {tag} | {k.split(' ', 1)[1]} | {per_seed[k]['auc_2v0']:.3f} | "
                         f"{per_seed[k]['spearman_rho']:.3f} |" + dev_cell(k))
        auc = [per_seed[k]["auc_2v0"] for k in keys]
        rho = [per_seed[k]["spearman_rho"] for k in keys]
        ensemble = bt.baved_metrics(np.mean([np.asarray(scores[k]) for k in keys], axis=0), levels)
        summary[tag] = {"auc_mean": statistics.mean(auc), "auc_sd": statistics.stdev(auc) if len(auc) > 1 else 0.0,
                        "rho_mean": statistics.mean(rho), "n_seeds": len(auc), "ensemble": ensemble}
        mean_dev = ""
        if dev:
            seed_dev = [dev[k]["mean"] for k in keys]
            summary[tag].update(dev_mean=statistics.mean(seed_dev), dev_best_seed=max(seed_dev),
                                dev_ensemble=dev[f"{tag} ensemble"]["mean"])
            mean_dev = f" {summary[tag]['dev_mean']:.3f} |"
        lines.append(f"| **{tag}** | mean (sd) | **{summary[tag]['auc_mean']:.3f} ({summary[tag]['auc_sd']:.3f})** | "
                     f"{summary[tag]['rho_mean']:.3f} |" + mean_dev)
        lines.append(f"| {tag} | ensemble of the {len(keys)} seeds | {ensemble['auc_2v0']:.3f} | "
                     f"{ensemble['spearman_rho']:.3f} |" + dev_cell(f"{tag} ensemble"))
    print("\n".join(lines))
    atomic_write_text(args.out, json.dumps({"command": " ".join(sys.argv), "baved": str(args.baved.resolve()),
                                            "n_files": len(files), "per_seed": per_seed, "summary": summary,
                                            "dev": dev or None},
                                           indent=2))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
