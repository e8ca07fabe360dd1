"""Experiments: run the paper's ablation grids (one training run per cell, resumable).

The grid file format and how cells are built: :mod:`.grids`; reports: :mod:`.grid_report`;
the paired test: :mod:`.significance`; Optuna tuning: :mod:`.tuning`. The names of those
modules are re-exported here, so ``from cusemo_batch.training.experiments import ...`` keeps working.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Callable, Iterable

import numpy as np

from cusemo_batch.files import atomic_write_text

from .config import from_dict
from .grid_report import (find_grid_dirs, format_markdown, grid_report, make_report, pairing_text, plot_grid,
                          protocol_text)  # noqa: F401 (re-exported)
from .grids import (Axis, Cell, Grid, GridError, PAIRINGS, QUICK_PROFILE, QUICK_SEEDS, SECTIONS,
                    bootstrap_source, context_tasks, context_text, find_grid, fmt_value, grid_record,
                    load_grid, nest, parse_axes, resolve_key)  # noqa: F401 (re-exported)
from .significance import wilcoxon_test  # noqa: F401 (re-exported)
from .tuning import OBJECTIVES, TUNABLE, tune, tune_summary  # noqa: F401 (re-exported)

Log = Callable[[str], None]


# -------------------------------------------------------------------------------------------- run
def cell_finished(cell_dir: Path, seeds: Iterable[int]) -> bool:
    return ((cell_dir / "summary.json").is_file() and (cell_dir / "test_per_call.json").is_file()
            and all((cell_dir / f"seed_{s}" / "result.json").is_file() for s in seeds))


def run_grid(grid: Grid, corpus_dir: str | Path, out_dir: str | Path, log: Log = print,
             progress_factory=None) -> dict:
    """Train every cell x seed of ``grid`` under ``out_dir/<grid.name>`` (resumable)."""
    from .loop import run_training

    corpus_dir = Path(corpus_dir)
    gdir = Path(out_dir) / grid.name
    gdir.mkdir(parents=True, exist_ok=True)
    context = context_tasks(corpus_dir, [c.cfg for c in grid.cells])
    record = grid_record(grid)
    record["corpus"] = str(corpus_dir.resolve())
    record["context"] = context
    gfile = gdir / "grid.json"
    if gfile.is_file():
        prev = json.loads(gfile.read_text())
        if [c["config"] for c in prev.get("cells", [])] != [c["config"] for c in record["cells"]] \
                or prev.get("corpus") != record["corpus"]:
            raise ValueError(f"{gdir} holds grid {prev.get('name')!r} with other cells, settings or corpus; "
                             f"use a new --out")
        record["wall_s"] = prev.get("wall_s", {})
    else:
        record["wall_s"] = {}
    atomic_write_text(gfile, json.dumps(record, indent=2))
    log(f"grid {grid.name}: {len(grid.cells)} cells x {len(grid.seeds)} seeds {list(grid.seeds)}"
        + (" (quick profile)" if grid.settings.get("quick") else ""))
    if context["text"]:
        log(f"  {context['text']}")
    summaries = {}
    for cell in grid.cells:
        cdir = gdir / cell.name
        tag = f"{grid.name} cell {cell.index + 1}/{len(grid.cells)} {cell.name}"
        if cell_finished(cdir, grid.seeds):
            log(f"{tag}: already finished, skipped")
            summaries[cell.name] = json.loads((cdir / "summary.json").read_text())
            continue
        t0 = time.perf_counter()
        log(f"{tag}: training")
        summary = run_training(corpus_dir, cell.cfg, cdir, log=log, progress_factory=progress_factory)
        write_test_per_call(cdir, corpus_dir)
        dt = round(time.perf_counter() - t0, 1)
        record["wall_s"][cell.name] = round(record["wall_s"].get(cell.name, 0) + dt, 1)
        atomic_write_text(gfile, json.dumps(record, indent=2))
        summaries[cell.name] = summary
        log(f"{tag}: test CCC valence {_stat(summary, 'test_valence')} "
            f"arousal {_stat(summary, 'test_arousal')} ({dt:.0f} s)")
    return summaries


def _stat(summary: dict, key: str) -> str:
    s = summary.get(key)
    return f"{s['mean']:.3f} ({s['sd']:.3f})" if s else "-"


def write_test_per_call(cell_dir: Path, corpus_dir: str | Path) -> dict:
    """Per-call test CCC of every seed's best checkpoint (for the Wilcoxon test paired by call)."""
    import torch

    from cusemo_batch.metrics import ccc

    from .checkpoint import load_checkpoint
    from .corpus import read_corpus
    from .data import load_calls
    from .evaluation import predict_bins

    cfg = from_dict(json.loads((cell_dir / "config.json").read_text())["config"])
    split = json.loads((cell_dir / "split.json").read_text())
    test_ids = sorted(k for k, v in split.items() if v == "test")
    corpus = read_corpus(corpus_dir, min_annotators=cfg.data.min_annotators)
    corpus.calls = [c for c in corpus.calls if c.call_id in set(test_ids)]
    calls = load_calls(corpus, cfg)
    if cfg.train.threads:
        torch.set_num_threads(cfg.train.threads)
    out: dict = {"calls": [c.call_id for c in calls], "seeds": {}}
    for seed in cfg.train.seeds:
        ck = cell_dir / f"seed_{seed}" / "best.pt"
        if not ck.is_file():
            continue
        model, _ = load_checkpoint(ck)
        per = {"valence": {}, "arousal": {}}
        for c in calls:
            p = predict_bins(model, c, cfg)
            n = len(p)
            for j, dim in enumerate(("valence", "arousal")):
                v = ccc(p[:, j], getattr(c, dim)[:n])
                per[dim][c.call_id] = float(v) if np.isfinite(v) else None
        out["seeds"][str(seed)] = per
    atomic_write_text(cell_dir / "test_per_call.json", json.dumps(out, indent=2))
    return out
