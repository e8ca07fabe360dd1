"""Training-set selection and gold standard (the paper's rule, configurable).

The paper trains on "the 215 client recordings with valence ICC > 0.7", with the **mean of the two
annotators** as gold standard. :class:`SelectionRule` reproduces that by default:

* role filter: calls whose ``context.csv`` role is ``client`` (``role=None`` keeps every role; a
  corpus without any role information is not filtered, and the summary says so);
* agreement: ICC(3,1) of the chosen dimension **strictly greater** than ``min_icc`` (the paper's
  "> 0.7"); ``dimension="both"`` needs both valence and arousal above it. A call whose ICC is
  undefined (a flat track: no variance to agree on) is not selected;
* gold standard: mean (or median) of the annotators over the bins they all rated, in [-1, 1], at
  the tracks' bin width (:func:`cusemo_batch.training.labels.gold_standard`).
"""

from __future__ import annotations

import csv
import io
import json
import math
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import polars as pl

from .agreement import corpus_agreement

SELECT_DIMENSIONS = ("valence", "arousal", "both")
# Gold standards that combine every annotator: what curation selects on and exports (training adds
# `single`, one named annotator: cusemo_batch.training.labels.GOLD_METHODS).
CONSENSUS_METHODS = ("mean", "median")


@dataclass(frozen=True)
class SelectionRule:
    min_icc: float = 0.7
    dimension: str = "valence"
    role: str | None = "client"
    gold: str = "mean"

    def __post_init__(self) -> None:
        if self.dimension not in SELECT_DIMENSIONS:
            raise ValueError(f"unknown dimension {self.dimension!r}; expected one of {SELECT_DIMENSIONS}")
        if self.gold not in CONSENSUS_METHODS:
            raise ValueError(f"unknown gold method {self.gold!r}; expected one of {CONSENSUS_METHODS}")
        if not -1.0 <= self.min_icc <= 1.0:
            raise ValueError(f"min_icc must lie in [-1, 1], got {self.min_icc}")

    @property
    def dimensions(self) -> tuple[str, ...]:
        return ("valence", "arousal") if self.dimension == "both" else (self.dimension,)


SELECTION_SCHEMA = {
    "call_id": pl.Utf8, "role": pl.Utf8, "gender": pl.Utf8, "duration_s": pl.Float64,
    "icc_valence": pl.Float64, "icc_arousal": pl.Float64, "selected": pl.Boolean, "reason": pl.Utf8,
}


def select_calls(corpus, rule: SelectionRule = SelectionRule(), per_call: pl.DataFrame | None = None) -> pl.DataFrame:
    """One row per call of ``corpus`` with its ICC(3,1) per dimension, ``selected`` and the reason.

    ``per_call`` is :func:`~cusemo_batch.curation.agreement.corpus_agreement`'s output (computed when
    not given).
    """
    if per_call is None:
        per_call = corpus_agreement(corpus)
    icc = {(r["call_id"], r["dimension"]): r["icc_3_1"] for r in per_call.iter_rows(named=True)}
    has_roles = any((c.context or {}).get("role") not in (None, "") for c in corpus.calls)
    rows = []
    for c in corpus.calls:
        ctx = c.context or {}
        role = ctx.get("role") if ctx.get("role") not in (None, "") else None
        values = {d: icc.get((c.call_id, d), math.nan) for d in ("valence", "arousal")}
        reason = "selected"
        if rule.role is not None and has_roles and role != rule.role:
            reason = f"role {role or 'missing'} is not {rule.role}"
        else:
            for d in rule.dimensions:
                v = values[d]
                if v is None or not math.isfinite(v):
                    reason = f"{d} ICC(3,1) undefined (flat tracks)"
                    break
                if not v > rule.min_icc:
                    reason = f"{d} ICC(3,1) {v:.3f} <= {rule.min_icc:g}"
                    break
        gender = ctx.get("gender")
        rows.append({
            "call_id": c.call_id, "role": role, "gender": str(gender) if gender not in (None, "") else None,
            "duration_s": float(c.duration_s), "icc_valence": _f(values["valence"]),
            "icc_arousal": _f(values["arousal"]), "selected": reason == "selected", "reason": reason,
        })
    return pl.DataFrame(rows, schema=SELECTION_SCHEMA, orient="row") if rows else pl.DataFrame(schema=SELECTION_SCHEMA)


def _f(v) -> float:
    return float(v) if v is not None else math.nan


def gold_csv(call, method: str = "mean") -> str:
    """The gold standard of one call as ``time_s,valence,arousal`` CSV text (bin ends, [-1, 1])."""
    from cusemo_batch.training.labels import gold_standard

    g = gold_standard(call, method)
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(["time_s", "valence", "arousal"])
    ends = (np.arange(len(g)) + 1) * g.bin_s
    for t, v, a in zip(ends, g.valence, g.arousal):
        w.writerow([f"{t:.6g}", f"{v:.6f}", f"{a:.6f}"])
    return buf.getvalue()


def summarise_selection(selection: pl.DataFrame, rule: SelectionRule, has_roles: bool) -> dict:
    """Counts as the paper reports them: calls, hours, duration range, female:male, reasons."""
    sel = selection.filter(pl.col("selected"))
    role_pool = selection if (rule.role is None or not has_roles) else selection.filter(pl.col("role") == rule.role)
    dur = sel["duration_s"].to_numpy()
    genders = sel["gender"].fill_null("U").value_counts()
    by_gender = {g: int(n) for g, n in genders.iter_rows()}
    return {
        "rule": asdict(rule),
        "role_filter_applied": bool(rule.role is not None and has_roles),
        "calls": selection.height,
        "calls_of_role": role_pool.height,
        "selected": sel.height,
        "selected_share_of_role": round(sel.height / role_pool.height, 4) if role_pool.height else None,
        "selected_hours": round(float(dur.sum()) / 3600, 4) if dur.size else 0.0,
        "duration_min_s": round(float(dur.min()), 2) if dur.size else None,
        "duration_max_s": round(float(dur.max()), 2) if dur.size else None,
        "gender": by_gender,
        "rejected_by_reason": _reason_counts(selection.filter(~pl.col("selected"))),
    }


def _reason_counts(df: pl.DataFrame) -> dict[str, int]:
    out: dict[str, int] = {}
    for reason in df["reason"].to_list():
        key = reason.split(" ICC")[0] + " ICC <= min" if " <= " in reason else reason
        out[key] = out.get(key, 0) + 1
    return out


def write_selection(corpus, rule: SelectionRule, out_dir: str | Path,
                    per_call: pl.DataFrame | None = None) -> tuple[pl.DataFrame, dict]:
    """Select, then write ``selected.csv``, ``selection.parquet``, ``selection.json`` and ``gold/<call_id>.csv``.

    Gold files of calls that an earlier run into the same folder selected but this one does not are
    removed, so ``gold/`` always matches ``selected.csv``.
    """
    from cusemo_batch.files import atomic_path, atomic_write_text

    out = Path(out_dir)
    gold_dir = out / "gold"
    gold_dir.mkdir(parents=True, exist_ok=True)
    selection = select_calls(corpus, rule, per_call)
    by_id = corpus.by_id()
    chosen = selection.filter(pl.col("selected"))["call_id"].to_list()
    for cid in chosen:
        atomic_write_text(gold_dir / f"{cid}.csv", gold_csv(by_id[cid], rule.gold))
    for stale in gold_dir.glob("*.csv"):
        if stale.stem not in set(chosen):
            stale.unlink()
    selected = (selection.filter(pl.col("selected"))
                .select("call_id", "role", "gender", "duration_s", "icc_valence", "icc_arousal")
                .with_columns((pl.lit("gold/") + pl.col("call_id") + pl.lit(".csv")).alias("gold_file")))
    with atomic_path(out / "selected.csv") as tmp:
        selected.write_csv(tmp, float_precision=4)
    with atomic_path(out / "selection.parquet") as tmp:
        selection.write_parquet(tmp)
    has_roles = any((c.context or {}).get("role") not in (None, "") for c in corpus.calls)
    summary = summarise_selection(selection, rule, has_roles)
    atomic_write_text(out / "selection.json", json.dumps(summary, indent=2) + "\n")
    return selection, summary
