"""Inference speed of the CusEmo CRNN: torch eager vs onnxruntime fp32 / int8, and the FLOP bound.

    python benchmarks/bench_inference.py [--checkpoint CKPT | --config RECIPE] [--seconds 300]
                                         [--threads 2] [--batch 1] [--repeats 3]
                                         [--out benchmarks/results/inference.json]

Real-time factor (RTF) = seconds of audio / seconds of wall time (higher is faster), best of
``--repeats`` after one warm-up run. The *FLOP bound* is what this machine could do at best for
this model: measured single-precision GEMM GFLOP/s (numpy matmul, same thread count) divided by
the model's GFLOP per audio second (2 x ``macs_per_second``). The LSTM is a chain of small
matrix-vector products, so real runs sit far below that bound; the table shows how far.

Without ``--checkpoint`` a randomly initialised model is used (speed does not depend on the
weights): the paper's sizes, or those of a training recipe's ``[model]`` with ``--config`` -- what a
size change costs or saves, measured before anything is trained. Timings on a shared machine vary: the JSON records the load average.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path


def _args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    src = p.add_mutually_exclusive_group()
    src.add_argument("--checkpoint", type=Path, help="cusemo checkpoint (default: random paper-size model)")
    src.add_argument("--config", help="training recipe (TOML path or name): its [model] sizes, random weights")
    p.add_argument("--seconds", type=float, default=300.0, help="audio length per call")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--batch", type=int, default=1, help="calls per run")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--chunk-s", type=float, default=60.0, help="chunk length of the streaming row")
    p.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "inference.json")
    return p.parse_args()


ARGS = _args()
# Thread pools read these at import time: set them before numpy/torch/onnxruntime load.
for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ[var] = str(ARGS.threads)

import numpy as np  # noqa: E402
import torch  # noqa: E402

from cusemo_batch.export.onnx import export_model  # noqa: E402
from cusemo_batch.files import atomic_write_text  # noqa: E402
from cusemo_batch.model import Model  # noqa: E402
from cusemo_batch.training.checkpoint import load_checkpoint  # noqa: E402
from cusemo_batch.training.config import load_config  # noqa: E402
from cusemo_batch.training.model import CRNN, ModelConfig, macs_per_second  # noqa: E402

DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "ravdess"


def best_of(fn, repeats: int) -> float:
    fn()  # warm-up: allocations, ORT kernel selection
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return min(times)


def gemm_gflops(n: int = 2048, repeats: int = 5) -> float:
    a = np.random.default_rng(0).standard_normal((n, n), dtype=np.float32)
    b = np.random.default_rng(1).standard_normal((n, n), dtype=np.float32)
    return 2 * n**3 / best_of(lambda: a @ b, repeats) / 1e9


# Long on purpose: a script's main, read top to bottom (arguments, the runs, the table, the JSON).
def main() -> None:
    torch.set_num_threads(ARGS.threads)
    if ARGS.checkpoint:
        model, meta = load_checkpoint(ARGS.checkpoint)
        desc = "checkpoint"
    else:
        torch.manual_seed(0)
        recipe = load_config(ARGS.config).resolved() if ARGS.config else None
        model = CRNN(recipe.model if recipe else ModelConfig()).eval()
        meta = {"normalisation": recipe.data.normalisation if recipe else "none",
                "name": f"{recipe.name}-random" if recipe else "paper-random"}
        desc = f"{recipe.name} sizes, random init" if recipe else "paper sizes, random init"
    cfg = model.config
    n = int(round(ARGS.seconds * cfg.sample_rate))
    x = (0.1 * np.random.default_rng(0).standard_normal((ARGS.batch, n))).astype(np.float32)
    audio_s = ARGS.batch * n / cfg.sample_rate
    rows: list[dict] = []

    def add(engine: str, wall: float) -> None:
        rows.append({"engine": engine, "wall_s": wall, "rtf": audio_s / wall})
        print(f"  {engine:<32} {wall:7.3f} s", file=sys.stderr)

    xt = torch.from_numpy(x)
    with torch.no_grad():
        add("torch eager", best_of(lambda: model(xt), ARGS.repeats))
    with tempfile.TemporaryDirectory() as tmp:
        fp32 = export_model(model, meta, Path(tmp) / "m.onnx", check=False).path
        int8 = export_model(model, meta, Path(tmp) / "q" / "m.onnx", check=False, quantize="int8").path
        m32 = Model(fp32, device="cpu", threads=ARGS.threads)
        m8 = Model(int8, device="cpu", threads=ARGS.threads)
        chunk = max(1, int(ARGS.chunk_s * m32.frame_rate))
        add("onnxruntime fp32", best_of(lambda: m32.infer(x), ARGS.repeats))
        add(f"onnxruntime fp32, {ARGS.chunk_s:g} s chunks", best_of(lambda: m32.infer_stream(x, chunk), ARGS.repeats))
        add("onnxruntime int8", best_of(lambda: m8.infer(x), ARGS.repeats))
        # The scorer's path: 3 s streaming chunks; with real speech to calibrate, int8 convs too.
        add("onnxruntime int8, 3 s chunks", best_of(lambda: m8.infer_stream(x), ARGS.repeats))
        calib = sorted((DATA / "audio").glob("*.flac"))[::40][:30]
        if calib:
            conv8 = export_model(model, meta, Path(tmp) / "c" / "m.onnx", check=False, quantize="int8",
                                 calibration=calib).path
            mc8 = Model(conv8, device="cpu", threads=ARGS.threads)
            add("onnxruntime int8 + int8 convs, 3 s chunks", best_of(lambda: mc8.infer_stream(x), ARGS.repeats))
        else:
            print(f"  no speech in {DATA} to calibrate int8 convolutions: row skipped", file=sys.stderr)
        with torch.no_grad():
            ref = model(xt).numpy()
        diffs = {name: float(np.max(np.abs(np.stack([m.infer(x)[h] for h in m.outputs], -1) - ref)))
                 for name, m in (("fp32", m32), ("int8", m8))}
        sizes = {"fp32": fp32.stat().st_size, "int8": int8.stat().st_size}

    gflops = gemm_gflops()
    gflop_per_audio_s = 2 * macs_per_second(cfg) / 1e9
    bound = gflops / gflop_per_audio_s
    torch_wall = rows[0]["wall_s"]
    for r in rows:
        r["speedup_vs_torch"] = torch_wall / r["wall_s"]
        r["fraction_of_flop_bound"] = r["rtf"] / bound
    result = {
        "benchmark": "inference", "date": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "audio_s_per_call": ARGS.seconds, "batch": ARGS.batch, "threads": ARGS.threads,
        "repeats": ARGS.repeats, "model": desc,
        "model_config": cfg.to_dict(), "gflop_per_audio_s": gflop_per_audio_s,
        "gemm_gflops_fp32": gflops, "flop_bound_rtf": bound, "rows": rows,
        "max_abs_diff_vs_torch": diffs, "onnx_bytes": sizes,
        "machine": {"cpu": _cpu_name(), "cores": os.cpu_count(), "loadavg_1m": os.getloadavg()[0],
                    "python": platform.python_version(), "torch": torch.__version__,
                    "onnxruntime": __import__("onnxruntime").__version__, "numpy": np.__version__},
    }
    _print_table(result)
    atomic_write_text(ARGS.out, json.dumps(result, indent=2) + "\n")
    print(f"wrote {ARGS.out}")


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _print_table(r: dict) -> None:
    from rich.console import Console
    from rich.table import Table

    t = Table(title=f"CRNN inference ({r['model']}), {r['batch']} x {r['audio_s_per_call']:g} s audio, "
                    f"{r['threads']} threads")
    for col in ("engine", "wall s", "RTF (x real time)", "vs torch", "of FLOP bound"):
        t.add_column(col, justify="left" if col == "engine" else "right")
    for row in r["rows"]:
        t.add_row(row["engine"], f"{row['wall_s']:.3f}", f"{row['rtf']:.0f}",
                  f"{row['speedup_vs_torch']:.2f}x", f"{100 * row['fraction_of_flop_bound']:.1f}%")
    c = Console(width=120)
    c.print(t)
    c.print(f"GEMM fp32 {r['gemm_gflops_fp32']:.1f} GFLOP/s / model {r['gflop_per_audio_s']:.3f} GFLOP per audio s "
            f"= FLOP bound {r['flop_bound_rtf']:.0f}x real time")
    c.print(f"max |ORT - torch|: fp32 {r['max_abs_diff_vs_torch']['fp32']:.2e}, "
            f"int8 {r['max_abs_diff_vs_torch']['int8']:.2e}; load average {r['machine']['loadavg_1m']:.2f}")


if __name__ == "__main__":
    main()
