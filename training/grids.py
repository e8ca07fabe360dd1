"""Experiment grids: the file format, key resolution, expansion into cells, context tasks.

Part of the experiments (:mod:`.experiments` runs grids, :mod:`.grid_report` reports them,
:mod:`.significance` holds the paired test, :mod:`.tuning` the Optuna search).

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
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable

from cusemo_batch.text import is_number
from cusemo_batch.tomlconfig import TomlConfigError, read_toml

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
        raw = read_toml(gpath, "grid")
    except TomlConfigError as e:
        raise GridError(str(e)) from None
    try:
        return _build_grid(raw, gpath, quick, dict(overrides or {}), seeds)
    except GridError as e:
        raise GridError(f"{gpath.name}: {e}") from None
    except ConfigError as e:
        raise GridError(f"{gpath.name}: {e}") from None


def _cells(name: str, base: Config, axes: list) -> list[Cell]:
    """Every combination of the axes' values, as a named, validated config."""
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
    return cells


def _baseline_row(baseline: Any, cells: list[Cell]) -> int:
    """The grid's ``baseline`` (a row index or a cell name) as a row index."""
    if isinstance(baseline, str):
        names = [c.name for c in cells]
        if baseline not in names:
            raise GridError(f"baseline {baseline!r} is not a cell; cells: {names}")
        baseline = names.index(baseline)
    if not isinstance(baseline, int) or not 0 <= baseline < len(cells):
        raise GridError(f"baseline must be a row index in 0..{len(cells) - 1} or a cell name")
    return baseline


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
    cells = _cells(name, base, axes)
    baseline = _baseline_row(raw.get("baseline", 0), cells)
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
