"""Experiments: the paper's ablation grids, their report (mean (sd) over seeds, Wilcoxon signed-rank
tests against the baseline row, plots) and Optuna TPE tuning of the auxiliary-task weights.

Grid file (``training/configs/grid_*.toml``)::

    name = "label_rate"                  # optional; default: the file name without grid_
    title = "Table II: label rate"       # optional
    seeds = [42, 24, 12, 10, 100, 125]   # optional; default: the base config's [train] seeds
    baseline = 0                         # optional; row index or cell name; default: the first row
    notes = "..."                        # optional; printed under the table

    [base]
    config = "default"                   # a config in training/configs or a path (relative to this file)
    [base.data]                          # optional inline sections override the base config
    segment_s = 50

    [axes]                               # every axis is a list; several axes -> Cartesian product
    label_rate_ms = [500, 200, 100, 40]  # a key of any section ("data.label_rate_ms" also accepted)
    "segment_s,batch_size" = [[300, 5], [150, 10]]      # values that vary together: array of arrays
    [[axes.weights]]                                    # ... or an array of tables (the axis "weights")
    alpha = 0.1
    beta = 0

    [reference]                          # optional: published numbers, one per row, in row order
    source = "Feng & Devillers, Table II"
    valence = [0.667, 0.516, 0.208, 0.078]
    arousal = [0.499, 0.427, 0.212, 0.093]
    valence_sd = [...]                   # optional
    arousal_sd = [...]                   # optional

How a cell's config is built, later steps winning: base config -> ``[base.*]`` inline sections ->
the quick profile (``--quick``) -> command-line overrides -> the axis values of the cell. Seeds:
``--seeds`` > quick profile > grid ``seeds`` > base config. An override of a key that an axis varies
is an error; ``train.seeds`` cannot be an axis (rows are paired by seed).

Run directory::

    OUT/<grid>/grid.json                 the expanded grid (cells, configs, settings)
    OUT/<grid>/<cell>/                   an ordinary training run (config.json, split.json,
                                         seed_N/{metrics.jsonl,best.pt,result.json}, summary.json)
    OUT/<grid>/<cell>/test_per_call.json per-call test CCC of every seed's best checkpoint

A finished cell (summary.json for every seed + test_per_call.json) is never rerun; an interrupted
cell resumes at its first unfinished seed (``run_training`` skips finished seeds).
"""

from __future__ import annotations

import csv
import itertools
import json
import math
import time
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable

import numpy as np

from cusemo_batch.files import atomic_path, atomic_write_text
from cusemo_batch.text import is_number

from .config import CONFIG_DIR, Config, ConfigError, from_dict, load_config

Log = Callable[[str], None]

# The quick profile: all three paper grids in ~10-20 min on a 2-core CPU -- a smoke test of the
# whole path, NOT the paper's protocol. Keys an axis varies keep the axis value (e.g. segment_s on
# the segment/batch grid). Measured on 30 RAVDESS pseudo-calls (18 train): the paper-size CRNN takes
# ~26 s per epoch on one core, so 18 cells x 2 seeds would need an hour even at 2 epochs; this
# narrower CRNN (same kernels, pools and layers) takes ~5 s. At lr 1e-3 it learns nothing in 4
# epochs (dev CCC < .05); at 3e-3 arousal reaches ~.3 by epoch 3-4. One torch thread: on a shared
# 2-core machine, 2 threads next to another busy process made epochs 5-50x slower (spinning
# threads); 1 thread is steady (~5 s/epoch). Use --threads 2 on an otherwise idle machine.
QUICK_PROFILE: dict[str, dict[str, Any]] = {
    "model": {"conv_channels": [16, 32, 32], "lstm_hidden": 64, "mlp_sizes": [64, 32]},
    "data": {"segment_s": 50, "max_calls": 30},
    "train": {"epochs": 4, "lr": 3e-3, "grad_clip": 1.0, "threads": 1, "patience": 0},
}
QUICK_SEEDS = (42, 24)
SECTIONS = ("model", "data", "train", "loss")
PAIRINGS = ("seeds", "calls")


class GridError(ConfigError):
    """An invalid grid file or grid option (one-line message)."""


# ------------------------------------------------------------------------------------------ keys
def _section_fields() -> dict[str, set[str]]:
    from dataclasses import fields as dc_fields

    from .config import DataConfig, LossConfig, TrainConfig
    from .model_config import ModelConfig

    return {s: {f.name for f in dc_fields(c)} for s, c in
            zip(SECTIONS, (ModelConfig, DataConfig, TrainConfig, LossConfig))}


def resolve_key(key: str) -> str:
    """``label_rate_ms`` -> ``data.label_rate_ms`` (dotted keys are checked and kept)."""
    known = _section_fields()
    key = key.strip()
    if "." in key:
        section, _, name = key.partition(".")
        if section not in known or name not in known[section]:
            raise GridError(f"unknown config key {key!r}")
        return key
    owners = [s for s in SECTIONS if key in known[s]]
    if not owners:
        raise GridError(f"unknown config key {key!r} (not in the model, data, train or loss sections)")
    if len(owners) > 1:
        raise GridError(f"config key {key!r} is ambiguous; write one of {[f'{s}.{key}' for s in owners]}")
    return f"{owners[0]}.{key}"


def _flatten(d: dict, prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in d.items():
        name = f"{prefix}.{k}" if prefix else k
        if isinstance(v, dict):
            out.update(_flatten(v, name))
        else:
            out[name] = v
    return out


def nest(flat: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """``{"data.segment_s": 50}`` -> ``{"data": {"segment_s": 50}}``."""
    out: dict[str, dict[str, Any]] = {}
    for k, v in flat.items():
        section, _, name = resolve_key(k).partition(".")
        out.setdefault(section, {})[name] = v
    return out


def fmt_value(v: Any) -> str:
    if isinstance(v, bool):
        return str(v).lower()
    if isinstance(v, float):
        return f"{v:g}"
    if isinstance(v, (list, tuple)):
        return "-".join(fmt_value(x) for x in v)
    return str(v)


# ------------------------------------------------------------------------------------------ grid
@dataclass(frozen=True)
class Axis:
    name: str
    keys: tuple[str, ...]  # dotted config keys that vary together
    values: tuple[tuple[Any, ...], ...]  # one tuple per point, aligned with keys


@dataclass
class Cell:
    index: int
    name: str  # directory name, e.g. "label_rate_ms=500" or "alpha=0.1,beta=0"
    values: dict[str, Any]  # dotted key -> value of this cell
    cfg: Config


@dataclass
class Grid:
    name: str
    title: str
    path: str
    axes: list[Axis]
    cells: list[Cell]
    seeds: tuple[int, ...]
    baseline: int
    reference: dict | None = None
    notes: str = ""
    settings: dict = field(default_factory=dict)  # quick profile, overrides (recorded in grid.json)

    def cell(self, name: str) -> Cell:
        for c in self.cells:
            if c.name == name:
                return c
        raise KeyError(name)


def find_grid(path: str | Path) -> Path:
    """A grid file by path, or by name in training/configs (``label_rate`` or ``grid_label_rate``)."""
    p = Path(path)
    if p.is_file():
        return p
    stem = p.stem if p.suffix == ".toml" else p.name
    for cand in (CONFIG_DIR / f"{stem}.toml", CONFIG_DIR / f"grid_{stem}.toml"):
        if cand.is_file():
            return cand
    shipped = sorted(x.stem for x in CONFIG_DIR.glob("grid_*.toml"))
    raise GridError(f"{path}: grid file not found (shipped grids: {', '.join(shipped)})")


def parse_axes(axes: dict) -> list[Axis]:
    """The ``[axes]`` table -> axes (see the module docstring for the three spellings)."""
    out: list[Axis] = []

    def visit(d: dict, prefix: str) -> None:
        for k, v in d.items():
            name = f"{prefix}.{k}" if prefix else k
            if isinstance(v, dict):  # data.label_rate_ms = [...] written without quotes
                visit(v, name)
                continue
            if not isinstance(v, list) or not v:
                raise GridError(f"axes.{name}: expected a non-empty list of values")
            if all(isinstance(x, dict) for x in v):  # array of tables
                points = [_flatten(x) for x in v]
                keys = list(dict.fromkeys(k2 for p in points for k2 in p))
                if any(set(p) != set(keys) for p in points):
                    raise GridError(f"axes.{name}: every table must set the same keys {keys}")
                rkeys = tuple(resolve_key(k2) for k2 in keys)
                vals = tuple(tuple(p[k2] for k2 in keys) for p in points)
            elif "," in name:  # "segment_s,batch_size" = [[300, 5], ...]
                rkeys = tuple(resolve_key(k2) for k2 in name.split(","))
                vals = []
                for x in v:
                    if not isinstance(x, list) or len(x) != len(rkeys):
                        raise GridError(f"axes {name!r}: every value must be a list of {len(rkeys)} items, got {x!r}")
                    vals.append(tuple(x))
                vals = tuple(vals)
            else:
                rkeys = (resolve_key(name),)
                vals = tuple((x,) for x in v)
            if len(set(map(repr, vals))) != len(vals):
                raise GridError(f"axes.{name}: repeated values")
            out.append(Axis(name, rkeys, vals))

    visit(axes, "")
    if not out:
        raise GridError("the axes table is empty: a grid needs at least one axis")
    seen: set[str] = set()
    for a in out:
        for k in a.keys:
            if k in seen:
                raise GridError(f"axes: {k} is varied by two axes")
            if k == "train.seeds":
                raise GridError("axes: train.seeds cannot be an axis (rows are compared seed by seed); "
                                "set the grid's `seeds` instead")
            seen.add(k)
    return out


def _base_config(spec: dict, grid_path: Path) -> Config:
    spec = dict(spec)
    ref = spec.pop("config", None)
    unknown = set(spec) - set(SECTIONS)
    if unknown:
        raise GridError(f"base: unknown key(s) {sorted(unknown)}; "
                        f"expected config and base.model/data/train/loss tables")
    if ref is None:
        cfg = Config()
    else:
        local = (grid_path.parent / ref)
        cfg = load_config(local if local.is_file() else ref)
    return cfg.with_overrides(**spec) if spec else cfg


def load_grid(path: str | Path, *, quick: bool = False, overrides: dict[str, Any] | None = None,
              seeds: Iterable[int] | None = None) -> Grid:
    """Read a grid file and expand it into cells (one config per cell).

    ``overrides``: dotted keys -> values applied to every cell (command line); ``seeds`` replaces
    the grid's seeds; ``quick`` applies :data:`QUICK_PROFILE` where no axis sets the key.
    """
    gpath = find_grid(path)
    try:
        with open(gpath, "rb") as f:
            raw = tomllib.load(f)
    except tomllib.TOMLDecodeError as e:
        raise GridError(f"{gpath}: invalid TOML ({e})") from None
    try:
        return _build_grid(raw, gpath, quick, dict(overrides or {}), seeds)
    except GridError as e:
        raise GridError(f"{gpath.name}: {e}") from None
    except ConfigError as e:
        raise GridError(f"{gpath.name}: {e}") from None


def _build_grid(raw: dict, gpath: Path, quick: bool, overrides: dict[str, Any], seeds) -> Grid:
    if "axes" not in raw:
        shipped = ", ".join(sorted(x.stem for x in CONFIG_DIR.glob("grid_*.toml")))
        raise GridError(f"not a grid file (no axes table); shipped grids: {shipped}")
    unknown = set(raw) - {"name", "title", "seeds", "baseline", "notes", "base", "axes", "reference"}
    if unknown:
        raise GridError(f"unknown top-level key(s) {sorted(unknown)}")
    name = str(raw.get("name") or gpath.stem.removeprefix("grid_"))
    base = _base_config(raw.get("base", {}), gpath)
    axes = parse_axes(raw.get("axes", {}))
    axis_keys = {k for a in axes for k in a.keys}
    over = {resolve_key(k): v for k, v in overrides.items()}
    clash = sorted(set(over) & axis_keys)
    if clash:
        raise GridError(f"cannot override {', '.join(clash)}: the grid varies it")
    if "train.seeds" in over:
        raise GridError("set seeds with the seeds option, not as an override")
    if quick:
        q = {k: v for k, v in _flatten(QUICK_PROFILE).items() if k not in axis_keys}
        base = base.with_overrides(**nest(q))
    if over:
        base = base.with_overrides(**nest(over))
    if seeds:
        chosen = tuple(int(s) for s in seeds)
    elif quick:
        chosen = QUICK_SEEDS
    elif "seeds" in raw:
        chosen = tuple(int(s) for s in raw["seeds"])
    else:
        chosen = tuple(base.train.seeds)
    if not chosen or len(set(chosen)) != len(chosen):
        raise GridError("seeds must be a non-empty list of distinct integers")
    base = base.with_overrides(train={"seeds": list(chosen)})
    cells: list[Cell] = []
    for i, combo in enumerate(itertools.product(*[a.values for a in axes])):
        values: dict[str, Any] = {}
        for axis, point in zip(axes, combo):
            values.update(dict(zip(axis.keys, point)))
        cname = ",".join(f"{k.partition('.')[2]}={fmt_value(v)}" for k, v in values.items())
        d = base.with_overrides(**nest(values)).to_dict()
        d["name"] = f"{name}:{cname}"
        try:
            cfg = from_dict(d)
        except ConfigError as e:
            raise GridError(f"cell {cname}: {e}") from None
        cells.append(Cell(i, cname, values, cfg))
    if len({c.name for c in cells}) != len(cells):
        raise GridError("two cells have the same name (values that print alike)")
    baseline = raw.get("baseline", 0)
    if isinstance(baseline, str):
        names = [c.name for c in cells]
        if baseline not in names:
            raise GridError(f"baseline {baseline!r} is not a cell; cells: {names}")
        baseline = names.index(baseline)
    if not isinstance(baseline, int) or not 0 <= baseline < len(cells):
        raise GridError(f"baseline must be a row index in 0..{len(cells) - 1} or a cell name")
    reference = raw.get("reference")
    if reference is not None:
        for key in ("valence", "arousal", "valence_sd", "arousal_sd"):
            if key in reference and len(reference[key]) != len(cells):
                raise GridError(f"reference: {key} has {len(reference[key])} values for {len(cells)} rows")
    settings = {"quick": quick, "quick_profile": QUICK_PROFILE if quick else None,
                "overrides": over, "seeds": list(chosen)}
    return Grid(name, str(raw.get("title") or name), str(gpath), axes, cells, chosen, baseline,
                reference, str(raw.get("notes", "")).strip(), settings)


def grid_record(grid: Grid) -> dict:
    return {
        "name": grid.name, "title": grid.title, "grid_file": grid.path,
        "axes": [{"name": a.name, "keys": list(a.keys), "values": [list(v) for v in a.values]} for a in grid.axes],
        "cells": [{"name": c.name, "values": c.values, "config": c.cfg.to_dict()} for c in grid.cells],
        "baseline": grid.baseline, "seeds": list(grid.seeds), "reference": grid.reference,
        "notes": grid.notes, "settings": grid.settings,
    }


# --------------------------------------------------------------------------------- context tasks
def _context_rows(corpus_dir: Path) -> tuple[list[str], list[dict[str, str]]]:
    path = Path(corpus_dir) / "context.csv"
    if not path.is_file():
        return [], []
    with open(path, newline="", encoding="utf-8-sig") as f:
        reader = csv.DictReader(f)
        rows = [{(k or "").strip(): (v or "").strip() for k, v in r.items()} for r in reader]
        return [c.strip() for c in (reader.fieldnames or [])], rows


def bootstrap_source(corpus_dir: str | Path) -> dict | None:
    """The ``source.json`` of a corpus built by ``corpus from-categorical`` (None otherwise)."""
    p = Path(corpus_dir) / "source.json"
    if not p.is_file():
        return None
    try:
        d = json.loads(p.read_text())
    except (OSError, ValueError):
        return None
    return d if "emotion_map" in d else None


def context_tasks(corpus_dir: str | Path, cfgs: Iterable[Config]) -> dict:
    """Check that the alpha/beta context columns exist where used; describe them for reports."""
    cfgs = list(cfgs)
    columns, rows = _context_rows(Path(corpus_dir))
    alpha_cols = sorted({c.data.alpha_target for c in cfgs if c.loss.alpha > 0})
    beta_cols = sorted({c.data.beta_target for c in cfgs if c.loss.beta > 0})
    numeric = [c for c in columns if c not in ("call_id", "annotator")
               and any(r.get(c) for r in rows) and all(is_number(r[c]) for r in rows if r.get(c))]
    for col in alpha_cols:
        if col not in numeric:
            hint = (" (a corpus bootstrapped from categorical speech: use --alpha-target intensity)"
                    if "intensity" in numeric and bootstrap_source(corpus_dir) else "")
            raise ValueError(f"alpha task: context column {col!r} has no numeric values in {corpus_dir}/context.csv; "
                             f"choose an interval column with --alpha-target (numeric columns: {numeric or 'none'})"
                             f"{hint}")
    for col in beta_cols:
        vals = {r.get(col, "").upper() for r in rows if r.get(col)}
        if col == "gender":
            ok = bool(vals & {"F", "M"})
        else:
            ok = len(vals) == 2 or vals <= {"0", "1"}
        if not ok:
            raise ValueError(f"beta task: context column {col!r} has no binary values in {corpus_dir}/context.csv; "
                             f"choose a binary column with --beta-target (columns: {columns})")
    src = bootstrap_source(corpus_dir)
    ctx = {"alpha_target": ", ".join(alpha_cols) or None, "beta_target": ", ".join(beta_cols) or None,
           "bootstrapped": src is not None, "source": src.get("source_manifest") if src else None}
    ctx["text"] = context_text(ctx)
    return ctx


def context_text(ctx: dict) -> str:
    """One sentence on what the alpha/beta tasks are (and on acted speech), for every report."""
    a, b = ctx.get("alpha_target"), ctx.get("beta_target")
    if ctx.get("bootstrapped"):
        origin = Path(ctx.get("source") or "").parent.name or "acted"
        text = (f"Results on a corpus bootstrapped from categorical (acted) speech ({origin} pseudo-calls, "
                f"not call-center data): there the binary β task is `gender` and the interval α task is "
                f"the acted emotion `intensity` (0-10), not the paper's empathy.")
        if (a and a != "intensity") or (b and b != "gender"):
            text += f" Used here: α task `{a or '-'}`, β task `{b or '-'}`."
        return text
    parts = []
    if a:
        parts.append(f"α task = interval context column `{a}` (CCC loss; the paper: empathy)")
    if b:
        parts.append(f"β task = binary context column `{b}` (BCE loss; the paper: gender)")
    return "; ".join(parts) + ("." if parts else "")



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
    from .loop import predict_bins

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


# --------------------------------------------------------------------------------------- wilcoxon
def wilcoxon_test(x: Iterable[float], y: Iterable[float]) -> dict:
    """Two-sided Wilcoxon signed-rank test of paired samples (``scipy.stats.wilcoxon``, zeros dropped).

    Returns ``p`` (None when there is nothing to test), ``n`` pairs, ``n_nonzero``, the statistic,
    the method and ``min_p``: the smallest two-sided p-value the exact test can give with that many
    non-zero pairs (2 / 2**n; 0.5 for 2 pairs, 0.03125 for the paper's 6 seeds).
    """
    from scipy.stats import wilcoxon

    x = np.asarray(list(x), float)
    y = np.asarray(list(y), float)
    if x.shape != y.shape:
        raise ValueError("paired samples must have the same length")
    ok = np.isfinite(x) & np.isfinite(y)
    x, y = x[ok], y[ok]
    d = x - y
    nz = int(np.count_nonzero(d))
    out = {"n": int(len(d)), "n_nonzero": nz, "statistic": None, "p": None, "method": None,
           "min_p": min(1.0, 2.0 / 2 ** nz) if nz else None, "median_diff": float(np.median(d)) if len(d) else None}
    if len(d) == 0:
        out["note"] = "no pairs"
        return out
    if nz == 0:
        out["note"] = "all pairs equal: nothing to test"
        return out
    res = wilcoxon(x, y, zero_method="wilcox", alternative="two-sided", method="auto")
    absd = np.abs(d[d != 0])
    ties = len(np.unique(absd)) < len(absd) or nz < len(d)
    out["statistic"] = float(res.statistic)
    out["p"] = float(res.pvalue)
    out["method"] = ("exact" if not ties and len(d) <= 50 else
                     "exact (permutation; ties or zeros present)" if len(d) <= 13 else "normal approximation")
    if nz < 6:
        out["note"] = f"only {nz} non-zero pairs: the smallest possible p is {out['min_p']:.3g}"
    return out


# ----------------------------------------------------------------------------------------- report
def _seed_results(cell_dir: Path, seeds: Iterable[int]) -> dict[int, dict]:
    out = {}
    for s in seeds:
        f = cell_dir / f"seed_{s}" / "result.json"
        if f.is_file():
            out[int(s)] = json.loads(f.read_text())
    return out


def _msd(vals: list[float]) -> dict | None:
    vals = [v for v in vals if v is not None and np.isfinite(v)]
    if not vals:
        return None
    return {"mean": float(np.mean(vals)), "sd": float(np.std(vals, ddof=1)) if len(vals) > 1 else 0.0,
            "n": len(vals), "values": vals}


def _per_call_means(cell_dir: Path) -> dict[str, dict[str, float]]:
    """call -> mean over seeds of that call's test CCC, per dimension."""
    f = cell_dir / "test_per_call.json"
    if not f.is_file():
        return {}
    d = json.loads(f.read_text())
    out: dict[str, dict[str, float]] = {}
    for dim in ("valence", "arousal"):
        acc: dict[str, list[float]] = {}
        for per in d["seeds"].values():
            for cid, v in per[dim].items():
                if v is not None:
                    acc.setdefault(cid, []).append(v)
        out[dim] = {cid: float(np.mean(v)) for cid, v in acc.items()}
    return out


def grid_report(gdir: Path, pairing: str = "seeds") -> dict:
    """The report of one grid run directory (reads only JSON; no training, no torch)."""
    if pairing not in PAIRINGS:
        raise ValueError(f"pairing must be one of {PAIRINGS}")
    rec = json.loads((gdir / "grid.json").read_text())
    seeds = rec["seeds"]
    rows = []
    for i, c in enumerate(rec["cells"]):
        cdir = gdir / c["name"]
        res = _seed_results(cdir, seeds)
        row = {"cell": c["name"], "values": c["values"], "seeds_done": sorted(res), "n_seeds": len(res),
               "baseline": i == rec["baseline"], "wall_s": rec.get("wall_s", {}).get(c["name"])}
        for part in ("test", "dev"):
            for dim in ("valence", "arousal", "valence_per_call", "arousal_per_call"):
                row[f"{part}_{dim}"] = _msd([r[part].get(dim) for r in res.values() if r.get(part)])
        row["_seed_values"] = {dim: {s: r["test"].get(dim) for s, r in res.items() if r.get("test")}
                               for dim in ("valence", "arousal")}
        row["_call_values"] = _per_call_means(cdir)
        ref = rec.get("reference") or {}
        row["paper"] = {k: ref[k][i] for k in ("valence", "arousal", "valence_sd", "arousal_sd") if k in ref} or None
        rows.append(row)
    base = rows[rec["baseline"]]
    for row in rows:
        row["wilcoxon"] = {}
        for dim in ("valence", "arousal"):
            if row is base:
                row["wilcoxon"][dim] = None
                continue
            if pairing == "seeds":
                a, b = row["_seed_values"][dim], base["_seed_values"][dim]
            else:
                a, b = row["_call_values"].get(dim, {}), base["_call_values"].get(dim, {})
            keys = sorted(set(a) & set(b), key=str)
            row["wilcoxon"][dim] = wilcoxon_test([a[k] for k in keys], [b[k] for k in keys])
    best = {}
    for dim in ("valence", "arousal"):
        scored = [(r[f"test_{dim}"]["mean"], r["cell"]) for r in rows if r[f"test_{dim}"]]
        best[dim] = max(scored)[1] if scored else None
    for row in rows:
        row["best"] = {dim: row["cell"] == best[dim] for dim in ("valence", "arousal")}
        row.pop("_seed_values")
        row.pop("_call_values")
    n_pairs = [w["n"] for r in rows for w in r["wilcoxon"].values() if w]
    context = dict(rec.get("context") or {})
    if "bootstrapped" in context:
        context["text"] = context_text(context)
    return {
        "name": rec["name"], "title": rec["title"], "grid_file": rec.get("grid_file"),
        "axes": rec["axes"], "seeds": seeds, "baseline": base["cell"], "pairing": pairing,
        "pairs": (min(n_pairs) if n_pairs else 0, max(n_pairs) if n_pairs else 0),
        "corpus": rec.get("corpus"), "context": context, "settings": rec.get("settings", {}),
        "reference_source": (rec.get("reference") or {}).get("source"), "notes": rec.get("notes", ""),
        "best": best, "rows": rows, "wall_s_total": round(sum(v for v in rec.get("wall_s", {}).values()), 1),
        "config_example": rec["cells"][rec["baseline"]]["config"],
    }


def find_grid_dirs(out_dir: Path) -> list[Path]:
    out_dir = Path(out_dir)
    if (out_dir / "grid.json").is_file():
        return [out_dir]
    dirs = sorted(p.parent for p in out_dir.glob("*/grid.json"))
    if not dirs:
        raise ValueError(f"{out_dir}: no grid.json (not an experiment run directory?)")
    return dirs


def _f(stat: dict | None, bold: bool = False) -> str:
    if not stat:
        return "–"
    s = f"{stat['mean']:.3f} ({stat['sd']:.3f})"
    return f"**{s}**" if bold else s


def _p(w: dict | None) -> str:
    if w is None:
        return "baseline"
    if w["p"] is None:
        return f"n/a ({w.get('note', '')})"
    return _pval(w["p"])


def _pval(p: float) -> str:
    return f"{p:.3f}" if p >= 0.001 else f"{p:.1e}"


def pairing_text(g: dict) -> str:
    lo, hi = g["pairs"]
    n = f"n = {lo}" if lo == hi else f"n = {lo}–{hi}"
    if g["pairing"] == "seeds":
        what = (f"paired by **seed** (the test CCC of the same seed in both rows, the paper's pairing; "
                f"seeds {', '.join(map(str, g['seeds']))}; {n} pairs)")
    else:
        what = (f"paired by **test call** (each call's CCC of the best checkpoints, averaged over the "
                f"{len(g['seeds'])} seeds; {n} calls; this asks whether the rows differ on these test calls, "
                f"not across training runs, and calls of one speaker are not independent)")
    text = (f"p: two-sided Wilcoxon signed-rank test (`scipy.stats.wilcoxon`, zero differences dropped) "
            f"of each row against the baseline row `{g['baseline']}`, {what}.")
    if lo and lo < 6:
        text += (f" With {lo} pairs the smallest two-sided p the exact test can give is {min(1.0, 2 / 2 ** lo):.3g}"
                 f" (2/2^{lo}), so no difference can reach p < 0.05 here: these p-values say nothing"
                 f" about significance. The paper used 6 seeds (smallest p = 0.031).")
    return text


def format_markdown(report: dict) -> str:
    """The Markdown report of several grids (``report = {"grids": [...], ...}``)."""
    lines = ["# Experiment report", ""]
    if report.get("header"):
        lines += [report["header"], ""]
    for g in report["grids"]:
        lines += _grid_markdown(g)
    return "\n".join(lines).rstrip() + "\n"


def _grid_markdown(g: dict) -> list[str]:
    keys = [k for a in g["axes"] for k in a["keys"]]
    short = [k.partition(".")[2] for k in keys]
    has_ref = any(r["paper"] for r in g["rows"])
    s = g["settings"] or {}
    cfg = g["config_example"]
    lines = [f"## {g['title']} (grid `{g['name']}`)", ""]
    if g["context"].get("text"):
        lines += [f"*{g['context']['text']}*", ""]
    lines.append(f"Test CCC (over the concatenated test calls), mean (sd) over {len(g['seeds'])} seeds"
                 f" ({', '.join(map(str, g['seeds']))}); the best mean per column in **bold**. Protocol: "
                 + protocol_text(cfg, keys)
                 + (" — **quick profile, not the paper's protocol**" if s.get("quick") else "") + ".")
    lines.append("")
    head = short + ["valence", "arousal", "p valence", "p arousal", "seeds"]
    if has_ref:
        head += ["paper valence", "paper arousal"]
    lines.append("| " + " | ".join(head) + " |")
    lines.append("|" + "|".join("---" if i < len(short) else "---:" for i in range(len(head))) + "|")
    for r in g["rows"]:
        cells = [fmt_value(r["values"][k]) for k in keys]
        if r["baseline"]:
            cells[0] += " (baseline)"
        cells += [_f(r["test_valence"], r["best"]["valence"]), _f(r["test_arousal"], r["best"]["arousal"]),
                  _p(r["wilcoxon"]["valence"]), _p(r["wilcoxon"]["arousal"]),
                  f"{r['n_seeds']}/{len(g['seeds'])}"]
        if has_ref:
            p = r["paper"] or {}
            for dim in ("valence", "arousal"):
                v = p.get(dim)
                sd = p.get(f"{dim}_sd")
                cells.append("–" if v is None else f"{v:.3f}" + (f" ({sd:.3f})" if sd is not None else ""))
        lines.append("| " + " | ".join(cells) + " |")
    lines += ["", pairing_text(g)]
    if has_ref and g.get("reference_source"):
        lines += ["", f"Paper columns: {g['reference_source']}; CusEmo call-center data, the paper's protocol."]
    if g.get("notes"):
        lines += ["", g["notes"]]
    missing = [r["cell"] for r in g["rows"] if r["n_seeds"] < len(g["seeds"])]
    if missing:
        lines += ["", f"Unfinished cells (fewer seeds than planned): {', '.join(missing)}."]
    lines += ["", f"![{g['name']}]({g['name']}.png)", ""]
    return lines


def protocol_text(cfg: dict, varied: list[str]) -> str:
    """The settings shared by every row (the varied keys left out), from a cell's config dict."""
    m = cfg.get("model", {})
    parts = []
    if m.get("conv_channels"):
        parts.append(f"CRNN conv {'/'.join(map(str, m['conv_channels']))}, LSTM {m.get('lstm_hidden')}, "
                     f"MLP {'/'.join(map(str, m.get('mlp_sizes', [])))}")
    for key, text in (("train.epochs", "{} epochs"), ("train.lr", "lr {:g}"), ("data.label_rate_ms", "{:g} ms labels"),
                      ("data.segment_s", "{:g} s segments"), ("train.batch_size", "batch {}"),
                      ("data.max_calls", "a subset of {} calls")):
        section, _, name = key.partition(".")
        value = cfg.get(section, {}).get(name)
        if key not in varied and value not in (None, 0):
            parts.append(text.format(value))
    return ", ".join(parts)


def plot_grid(g: dict, path: Path) -> None:
    """CCC vs the varied axis (one point per cell), error bars = sd over seeds; paper values hollow."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    rows = g["rows"]
    keys = [k for a in g["axes"] for k in a["keys"]]
    labels = ["\n".join(f"{k.partition('.')[2]}={fmt_value(r['values'][k])}" for k in keys) if len(keys) > 1
              else fmt_value(r["values"][keys[0]]) for r in rows]
    x = np.arange(len(rows))
    fig = Figure(figsize=(max(6.5, 0.9 * len(rows) + 3.5), 4.2), dpi=110)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(1, 1, 1)
    for dim, colour, dx in (("valence", "tab:blue", -0.08), ("arousal", "tab:red", 0.08)):
        m = np.array([r[f"test_{dim}"]["mean"] if r[f"test_{dim}"] else np.nan for r in rows])
        sd = np.array([r[f"test_{dim}"]["sd"] if r[f"test_{dim}"] else np.nan for r in rows])
        ax.errorbar(x + dx, m, yerr=sd, fmt="o-", color=colour, capsize=4, label=f"{dim} (ours)")
        ref = [r["paper"].get(dim) if r["paper"] else None for r in rows]
        if any(v is not None for v in ref):
            ax.plot(x + dx, [np.nan if v is None else v for v in ref], "o--", color=colour, mfc="none",
                    alpha=0.6, label=f"{dim} (paper)")
    ax.set_xticks(x, labels, fontsize=8)
    ax.set_xlabel(", ".join(a["name"] for a in g["axes"]))
    ax.set_ylabel("test CCC, mean ± sd over seeds")
    title = g["title"] + (" — quick profile" if (g["settings"] or {}).get("quick") else "")
    if g["context"].get("bootstrapped"):
        title += "\n(acted-speech pseudo-calls, not call-center data)"
    ax.set_title(title, fontsize=9)
    ax.axhline(0, color="grey", lw=0.5)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png")


def make_report(out_dir: str | Path, dest: str | Path | None = None, pairing: str = "seeds",
                header: str = "", plots: bool = True) -> dict:
    """Report every grid under ``out_dir``: ``report.md``, ``report.json`` and ``<grid>.png`` in ``dest``."""
    out_dir = Path(out_dir)
    dest = Path(dest) if dest else out_dir
    grids = sorted((grid_report(d, pairing) for d in find_grid_dirs(out_dir)), key=lambda g: (g["title"], g["name"]))
    report = {"pairing": pairing, "header": header, "grids": grids,
              "generated_by": f"cusemo-batch experiment report {out_dir}"
                              + (f" --pairing {pairing}" if pairing != "seeds" else "")}
    dest.mkdir(parents=True, exist_ok=True)
    atomic_write_text(dest / "report.md", format_markdown(report))
    atomic_write_text(dest / "report.json", json.dumps(report, indent=2))
    if plots:
        for g in grids:
            plot_grid(g, dest / f"{g['name']}.png")
    return report


# ------------------------------------------------------------------------------------------- tune
TUNABLE = {"alpha": "loss.alpha", "beta": "loss.beta"}
OBJECTIVES = ("valence", "arousal", "mean")


def _trial_slug(params: dict[str, float]) -> str:
    return ",".join(f"{k}={v:.6g}" for k, v in params.items())


def tune(corpus_dir: str | Path, out_dir: str | Path, base: Config, params: Iterable[str] = ("alpha",),
         trials: int = 10, seed: int = 12, objective: str = "mean", low: float = 0.0, high: float = 1.0,
         log_scale: bool = False, startup_trials: int | None = None, log: Log = print) -> dict:
    """Optuna TPE over the auxiliary weight(s); objective = dev CCC of the best checkpoint (mean over
    the training seeds of ``base``). Study in ``out_dir/study.db`` (SQLite; resumed when present)."""
    import optuna

    from .loop import run_training

    params = list(dict.fromkeys(params))
    bad = [p for p in params if p not in TUNABLE]
    if not params or bad:
        raise ValueError(f"--param must be one of {sorted(TUNABLE)}, not {bad or params}")
    if objective not in OBJECTIVES:
        raise ValueError(f"objective must be one of {OBJECTIVES}")
    if not low < high or low < 0 or (log_scale and low <= 0):
        raise ValueError("the search range needs 0 <= low < high (low > 0 on a log scale)")
    if trials < 1:
        raise ValueError("trials must be >= 1")
    corpus_dir = Path(corpus_dir)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    probe = [base.with_overrides(loss={p: high for p in params})]
    context = context_tasks(corpus_dir, probe)
    settings = {"params": params, "objective": objective, "low": low, "high": high, "log": log_scale,
                "sampler_seed": seed, "base_config": base.to_dict(), "corpus": str(corpus_dir.resolve())}
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    storage = f"sqlite:///{(out_dir / 'study.db').resolve()}"
    name = f"tune_{'_'.join(params)}_{objective}"
    sampler = optuna.samplers.TPESampler(seed=seed, **({"n_startup_trials": startup_trials}
                                                       if startup_trials is not None else {}))
    study = optuna.create_study(study_name=name, storage=storage, direction="maximize", sampler=sampler,
                                load_if_exists=True)
    prev = study.user_attrs.get("settings")
    if prev is None:
        study.set_user_attr("settings", settings)
    elif prev != json.loads(json.dumps(settings)):
        raise ValueError(f"{out_dir} holds a study with other settings (params, range, objective, config "
                         f"or corpus); use a new --out")
    from optuna.trial import TrialState

    waiting = [t.params for t in study.get_trials(deepcopy=False, states=(TrialState.WAITING,))]
    for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):  # interrupted trials
        study.tell(t.number, state=TrialState.FAIL)
        if t.params and t.params not in waiting:
            study.enqueue_trial(t.params)
            waiting.append(t.params)
            log(f"trial {t.number} was interrupted: re-queued {t.params} (its finished seeds are kept)")
    done = len(study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)))

    def objective_fn(trial) -> float:
        values = {p: trial.suggest_float(p, low, high, log=log_scale) for p in params}
        cfg = base.with_overrides(loss=values)
        d = cfg.to_dict()
        d["name"] = f"{name}:{_trial_slug(values)}"
        cfg = from_dict(d)
        run_dir = out_dir / "trials" / _trial_slug(values)
        log(f"trial {trial.number}: {_trial_slug(values)}")
        summary = run_training(corpus_dir, cfg, run_dir, log=log)
        got = {}
        for part in ("dev", "test"):
            for dim in ("valence", "arousal"):
                s = summary.get(f"{part}_{dim}")
                got[f"{part}_{dim}"] = s["mean"] if s else None
                trial.set_user_attr(f"{part}_{dim}", got[f"{part}_{dim}"])
        trial.set_user_attr("run_dir", str(run_dir))
        dv, da = got["dev_valence"], got["dev_arousal"]
        score = {"valence": dv, "arousal": da,
                 "mean": None if dv is None or da is None else (dv + da) / 2}[objective]
        score = score if score is not None and math.isfinite(score) else -1.0
        log(f"trial {trial.number}: dev CCC {objective} {score:.3f}; test valence "
            f"{_n(got['test_valence'])} arousal {_n(got['test_arousal'])}")
        return score

    remaining = max(0, trials - done)
    if done:
        log(f"study {name}: {done} trial(s) already complete, running {remaining} more")
    t0 = time.perf_counter()
    if remaining:
        study.optimize(objective_fn, n_trials=remaining, catch=())
    result = tune_summary(study, storage, settings, context)
    result["wall_s"] = round(time.perf_counter() - t0, 1)
    atomic_write_text(out_dir / "tune.json", json.dumps(result, indent=2))
    return result


def _n(v: float | None) -> str:
    return "-" if v is None else f"{v:.3f}"


def tune_summary(study, storage: str, settings: dict, context: dict) -> dict:
    from optuna.trial import TrialState

    rows = [{"number": t.number, "params": t.params, "value": t.value, **t.user_attrs}
            for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))]
    best = study.best_trial if rows else None
    return {
        "study": study.study_name, "storage": storage, "settings": settings, "context": context,
        "n_complete": len(rows), "trials": rows,
        "best": None if best is None else {"number": best.number, "params": best.params, "dev_objective": best.value,
                                           **best.user_attrs},
        "paper": "Optuna TPE, 10 trials (seed 12, 60 epochs): best alpha = 0.88 -> test valence .67, arousal .43",
    }
