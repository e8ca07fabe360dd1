"""Command-line options shared by the accuracy benchmarks (bench_accuracy.py, bench_transfer.py).

A module of its own, importing nothing heavy: both scripts parse their arguments *before* numpy and
onnxruntime are imported, so that ``--threads`` can set the thread-pool variables first.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

DEFAULT_CACHE = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "cusemo-batch" / "bench_accuracy"


def new_parser(doc: str, group_title: str) -> tuple[argparse.ArgumentParser, argparse._ArgumentGroup]:
    """A parser with the split options (``--run``, ``--corpus``, ``--split-seed``) in ``group_title``;
    the caller adds its model options to the returned group."""
    p = argparse.ArgumentParser(description=doc.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    src = p.add_argument_group(group_title)
    src.add_argument("--run", type=Path, help="training run directory (split.json, config.json)")
    src.add_argument("--corpus", type=Path, help="corpus dir (default: the corpus recorded in RUN/config.json)")
    src.add_argument("--split-seed", type=int, help="without --run: recompute the split with this seed")
    return p, src


def add_method_args(p: argparse.ArgumentParser, title: str = "method") -> None:
    """How the CCC, the eGEMAPS + ridge baseline and the change events are computed."""
    m = p.add_argument_group(title)
    m.add_argument("--rate-ms", type=float, default=500.0, help="label rate of the CCC and the timeseries")
    m.add_argument("--window-s", type=float, default=4.0, help="eGEMAPS functional window")
    m.add_argument("--max-delay-s", type=float, default=2.0, help="largest feature delay tried on dev (eGEMAPS)")
    m.add_argument("--alphas", default="0.01,0.1,1,10,100,1000,10000,100000", help="ridge alphas tried on dev")
    m.add_argument("--tolerance-s", type=float, default=2.0, help="event matching tolerance")
    m.add_argument("--change-config", type=Path, help="changes TOML (default: the shipped one)")


def add_resource_args(p: argparse.ArgumentParser, out_md: Path, out_json: Path) -> None:
    """Threads, openSMILE processes, the feature cache (shared by both scripts) and the outputs."""
    r = p.add_argument_group("resources and output")
    r.add_argument("--threads", type=int, default=2, help="onnxruntime threads")
    r.add_argument("--jobs", type=int, default=1, help="openSMILE processes (uncached clean calls)")
    r.add_argument("--cache", default=str(DEFAULT_CACHE),
                   help="eGEMAPS feature cache directory, shared by the accuracy benchmarks ('' = no cache)")
    r.add_argument("--out-md", type=Path, default=out_md)
    r.add_argument("--out-json", type=Path, default=out_json)


def parse_with_split(p: argparse.ArgumentParser, argv=None) -> argparse.Namespace:
    """Parse, insisting on a split: a training run (its split.json) or a seed to recompute it."""
    a = p.parse_args(argv)
    if a.run is None and a.split_seed is None:
        p.error("give --run RUN_DIR (its split.json) or --split-seed N")
    if a.run is None and a.corpus is None:
        p.error("--corpus is required without --run")
    return a


def set_thread_env(threads: int) -> None:
    """Thread pools (OpenMP, OpenBLAS, MKL) read these at import time: call before numpy."""
    for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ.setdefault(var, str(threads))
