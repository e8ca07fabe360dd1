"""The morning report's data: which night, its tables read lazily, calls ranked by severity (pure shaping).

See :mod:`cusemo_batch.report` for what a night is and how severity is ranked.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np
import polars as pl

from .metadata import expand_metadata
from .schema import TABLES

PROBLEM_FLAGS = ("valence_drop", "arousal_spike", "negative_end", "sustained_negative")
GOOD_FLAGS = ("recovery",)
PROBLEM_EVENTS = ("valence_drop", "arousal_spike")
STAGES = ("discover", "read", "decode", "infer", "analyse")
DEFAULT_TOP = 50
# Plot points per series: the plot area is ~580 pt (~850 px on a laptop screen) wide, so 2 x 150
# min/max points keep every visible wiggle of the raw windows while bounding the SVG of a long call.
MAX_BUCKETS = 150
MAX_EVENT_ROWS = 12  # per call section; a long call can have dozens of small changes
COLORS = {"client": "#c0392b", "agent": "#1f5fa8"}
EXTRA_COLORS = ("#2e7d32", "#8e44ad", "#d35400", "#16a085", "#7f8c8d")
CALL_KEY = ["date", "call_id"]


class ReportError(ValueError):
    """The store or the dates asked for cannot give a report (the CLI prints it as a user error)."""


# ----------------------------------------------------------------------------------- data loading
def partition_dates(out: Path, table: str, rows_only: bool = False) -> list[dt.date]:
    """Dates of ``OUT/<table>/date=*`` folders holding Parquet files, oldest first.

    ``rows_only`` skips folders whose only file is the zero-row ``_empty.parquet`` placeholder:
    the folder listing answers "which nights have calls" without opening a file.
    """
    found = []
    for d in (out / table).glob("date=*"):
        try:
            day = dt.date.fromisoformat(d.name.removeprefix("date="))
        except ValueError:
            continue
        files = [f for f in d.glob("*.parquet") if not (rows_only and f.stem == "_empty")]
        if files:
            found.append(day)
    return sorted(found)


def scan(out: Path, table: str, dates: Iterable[dt.date]) -> pl.LazyFrame:
    """Lazy frame of ``table`` over the given date partitions only, with the ``date`` column.

    One scan per date folder, concatenated diagonally: only the partitions asked for are touched,
    and a night written by an older version (schema < 3, before the next ``score`` upgrades it)
    cannot impose its columns on the others.
    """
    parts = []
    for day in sorted(set(dates)):
        files = sorted((out / table / f"date={day.isoformat()}").glob("*.parquet"))
        # a zero-row placeholder beside real files (a run that died before tidying up) adds nothing
        files = [f for f in files if f.stem != "_empty"] or files
        if files:
            parts.append(pl.scan_parquet([str(f) for f in files], hive_partitioning=False,
                                         missing_columns="insert", extra_columns="ignore")
                         .with_columns(pl.lit(day, pl.Date).alias("date")))
    if not parts:
        schema = {c.name: c.dtype for c in TABLES[table]}
        return pl.LazyFrame(schema={**schema, "date": pl.Date})
    return pl.concat(parts, how="diagonal_relaxed")


def default_night(out: Path) -> dt.date:
    """The latest date with scored calls, else the latest run's date (see the module docstring)."""
    days = partition_dates(out, "calls", rows_only=True) or partition_dates(out, "runs", rows_only=True)
    if not days:
        raise ReportError(f"{out}: no scored calls and no runs yet (is it the --out of cusemo-batch score?)")
    return days[-1]


@dataclass
class Night:
    """Every row a report needs, for the dates asked for (timeseries is read later, per plotted call)."""

    out: Path
    first: dt.date
    last: dt.date
    calls: pl.DataFrame
    events: pl.DataFrame
    errors: pl.DataFrame
    runs: pl.DataFrame
    meta_cols: list[str]

    @property
    def dates(self) -> list[dt.date]:
        return [self.first + dt.timedelta(days=i) for i in range((self.last - self.first).days + 1)]

    @property
    def label(self) -> str:
        return self.first.isoformat() if self.first == self.last else f"{self.first} to {self.last}"


def load_night(out: Path, first: dt.date, last: dt.date) -> Night:
    """Read calls, events, errors and runs of ``first`` .. ``last`` (inclusive)."""
    days = [first + dt.timedelta(days=i) for i in range((last - first).days + 1)]
    calls, meta_cols = expand_metadata(scan(out, "calls", days).collect(), reserved=("date",))
    events = scan(out, "events", days).collect()
    in_range = scan(out, "errors", days).collect()
    run_ids = set(calls["run_id"].drop_nulls()) | set(in_range["run_id"].drop_nulls())
    # the runs table is one small file per run, partitioned by run date: filter on run_id
    run_days = partition_dates(out, "runs")
    # (no rows at all: the runs of those dates, e.g. one that found no calls, exit 4)
    which = pl.col("run_id").is_in(sorted(run_ids)) if run_ids else pl.col("date").is_between(first, last)
    runs = scan(out, "runs", run_days).filter(which).sort("started_at").collect()
    # errors of the night's runs filed under a later date (discovery errors use the run date)
    later = [d for d in partition_dates(out, "errors") if d > last and runs.height and d <= runs["date"].max()]
    errors = pl.concat([in_range, scan(out, "errors", later).filter(pl.col("run_id").is_in(sorted(run_ids)))
                        .collect()], how="diagonal_relaxed") if later else in_range
    return Night(out, first, last, calls, events, errors, runs, meta_cols)


def load_timeseries(out: Path, keys: pl.DataFrame) -> pl.DataFrame:
    """Timeseries rows of the (date, call_id) pairs in ``keys`` only: the big table is read per call."""
    cols = ["call_id", "speaker", "t_start_s", "t_end_s", "valence", "arousal", "valence_smooth",
            "arousal_smooth", "speech_ratio"]
    frames = []
    for (day,), part in keys.group_by("date", maintain_order=True):
        ids = part["call_id"].to_list()
        frames.append(scan(out, "timeseries", [day]).filter(pl.col("call_id").is_in(ids)).select(*cols, "date"))
    if not frames:
        return pl.DataFrame(schema={c: pl.Utf8 if c in ("call_id", "speaker") else pl.Float64 for c in cols}
                            | {"date": pl.Date})
    return pl.concat(frames).collect()


# ------------------------------------------------------------------------------ data shaping (pure)
def speaker_order(speakers: Iterable[str]) -> list[str]:
    """client first, agent second, other labels alphabetically: the same order in every figure."""
    rank = {"client": 0, "agent": 1}
    return sorted(set(speakers), key=lambda s: (rank.get(s, 2), s))


def rank_calls(calls: pl.DataFrame, events: pl.DataFrame, speaker: str | None = None,
               meta_cols: Sequence[str] = ()) -> pl.DataFrame:
    """Flagged calls, most severe first: one row per (date, call_id).

    Columns: date, call_id, n_flags, problems (list of "speaker:flag"), recoveries (speakers with
    ``recovery``), duration_s, longest_negative_s, the largest drop/spike (ev_speaker, ev_kind,
    ev_magnitude, ev_before, ev_after, ev_t) and the metadata columns. ``speaker`` restricts which
    speakers' flags and events count.
    """
    considered = calls if speaker is None else calls.filter(pl.col("speaker") == speaker)
    order = {s: i for i, s in enumerate(speaker_order(calls["speaker"].to_list()))}
    flag_rank = {f: i for i, f in enumerate(PROBLEM_FLAGS + GOOD_FLAGS)}
    on = (considered.select(*CALL_KEY, "speaker", *PROBLEM_FLAGS, *GOOD_FLAGS)
          .unpivot(index=[*CALL_KEY, "speaker"], variable_name="flag", value_name="on")
          .filter(pl.col("on").fill_null(False))
          .with_columns(pl.col("speaker").replace_strict(order, default=99).alias("_s"),
                        pl.col("flag").replace_strict(flag_rank, default=99).alias("_f"))
          .sort(*CALL_KEY, "_s", "_f"))
    problems = (on.filter(pl.col("flag").is_in(PROBLEM_FLAGS))
                .group_by(CALL_KEY, maintain_order=True)
                .agg(pl.len().alias("n_flags"), pl.concat_str("speaker", pl.lit(":"), "flag").alias("problems")))
    recoveries = (on.filter(pl.col("flag").is_in(GOOD_FLAGS)).group_by(CALL_KEY, maintain_order=True)
                  .agg(pl.col("speaker").alias("recoveries")))
    ev = events.filter(pl.col("kind").is_in(PROBLEM_EVENTS))
    if speaker is not None:
        ev = ev.filter(pl.col("speaker") == speaker)
    top_event = (ev.sort(pl.col("magnitude").abs(), descending=True).group_by(CALL_KEY, maintain_order=True).first()
                 .select(*CALL_KEY, pl.col("speaker").alias("ev_speaker"), pl.col("kind").alias("ev_kind"),
                         pl.col("magnitude").alias("ev_magnitude"), pl.col("level_before").alias("ev_before"),
                         pl.col("level_after").alias("ev_after"), pl.col("t_change_s").alias("ev_t")))
    base = calls.group_by(CALL_KEY).agg(
        pl.col("duration_s").max(),
        pl.col("longest_negative_s").filter(pl.col("speaker") == speaker if speaker else pl.lit(True)).max(),
        *[pl.col(c).drop_nulls().first() for c in meta_cols])
    return (base.join(problems, on=CALL_KEY, how="inner")
            .join(recoveries, on=CALL_KEY, how="left").join(top_event, on=CALL_KEY, how="left")
            .with_columns(pl.col("recoveries").fill_null(pl.lit([], pl.List(pl.Utf8))))
            .sort([pl.col("n_flags"), pl.col("ev_magnitude").abs().fill_null(0.0),
                   pl.col("longest_negative_s").fill_null(0.0), pl.col("date"), pl.col("call_id")],
                  descending=[True, True, True, False, False])
            .select(*CALL_KEY, "n_flags", "problems", "recoveries", "duration_s", "longest_negative_s",
                    "ev_speaker", "ev_kind", "ev_magnitude", "ev_before", "ev_after", "ev_t", *meta_cols))


def flag_rates(calls: pl.DataFrame, speaker: str | None = None) -> pl.DataFrame:
    """Per date: calls, and the share of calls with each flag (any considered speaker) and with any problem."""
    c = calls if speaker is None else calls.filter(pl.col("speaker") == speaker)
    flags = [*PROBLEM_FLAGS, *GOOD_FLAGS]
    per_call = c.group_by(CALL_KEY).agg(*[pl.col(f).fill_null(False).any() for f in flags])
    per_call = per_call.with_columns(pl.any_horizontal(*PROBLEM_FLAGS).alias("any_problem"))
    return (per_call.group_by("date").agg(pl.len().alias("calls"),
                                          *[pl.col(f).mean() for f in (*flags, "any_problem")])
            .sort("date"))


def silence_runs(t_start: Sequence[float], t_end: Sequence[float],
                 value: Sequence[float | None]) -> list[tuple[float, float]]:
    """(start, end) of each run of consecutive windows whose value is null: the compressed silences.

    The scorer leaves valence null exactly where the audio was cut as long silence, so these runs
    are what the model never heard. Windows must be sorted by time.
    """
    runs: list[tuple[float, float]] = []
    start = None
    for a, b, v in zip(t_start, t_end, value):
        missing = v is None or (isinstance(v, float) and np.isnan(v))
        if missing and start is None:
            start = a
        if missing:
            end = b
        elif start is not None:
            runs.append((start, end))
            start = None
    if start is not None:
        runs.append((start, end))
    return runs


def decimate(t: np.ndarray, y: np.ndarray, buckets: int = MAX_BUCKETS) -> tuple[np.ndarray, np.ndarray]:
    """At most ``2 * buckets`` points that draw like the series: each bucket's min and max, in time order.

    Keeps spikes (a mean would flatten them) and gaps (an all-NaN bucket stays one NaN point, so the
    line breaks there). Series that are short enough come back unchanged.
    """
    t, y = np.asarray(t, float), np.asarray(y, float)
    if len(t) <= 2 * buckets:
        return t, y
    edges = np.linspace(0, len(t), buckets + 1).astype(int)
    tt, yy = [], []
    for a, b in zip(edges[:-1], edges[1:]):
        seg = y[a:b]
        ok = ~np.isnan(seg)
        if not ok.any():
            tt.append(t[a]), yy.append(np.nan)
            continue
        idx = np.flatnonzero(ok)
        lo, hi = idx[np.argmin(seg[ok])], idx[np.argmax(seg[ok])]
        for i in sorted({lo, hi}):
            tt.append(t[a + i]), yy.append(seg[i])
        if not ok.all():  # a gap inside the bucket: keep the break
            tt.append(t[a + int(np.flatnonzero(~ok)[0])]), yy.append(np.nan)
    return np.array(tt), np.array(yy)


def error_groups(errors: pl.DataFrame) -> pl.DataFrame:
    """Errors grouped by stage and error class: rows, calls (ids), one example message; pipeline order."""
    if errors.is_empty():
        return pl.DataFrame(schema={"stage": pl.Utf8, "error": pl.Utf8, "rows": pl.UInt32,
                                    "calls": pl.List(pl.Utf8), "message": pl.Utf8})
    rank = {s: i for i, s in enumerate(STAGES)}
    return (errors.sort("call_id").group_by("stage", "error", maintain_order=True)
            .agg(pl.len().alias("rows"), pl.col("call_id").unique(maintain_order=True).alias("calls"),
                 pl.col("message").first())
            .with_columns(pl.col("stage").replace_strict(rank, default=len(rank)).alias("_r"))
            .sort(["_r", "rows", "error"], descending=[False, True, False]).drop("_r"))


def summary(night: Night) -> dict:
    """Header numbers: calls in the tables, failing calls, calls skipped by the night's runs, audio hours, models."""
    calls, errors = night.calls, night.errors
    per_call = calls.group_by(CALL_KEY).agg(pl.col("duration_s").max(), pl.col("last_error_at").is_not_null().any())
    return {
        "scored": per_call.height,
        "failed": errors.select(pl.col("call_id").n_unique()).item() if errors.height else 0,
        "kept": int(per_call["last_error_at"].sum()) if per_call.height else 0,
        "skipped": int(night.runs["skipped"].sum()) if night.runs.height else 0,
        "audio_h": float(per_call["duration_s"].sum() or 0.0) / 3600,
        "models": sorted(set(calls["model_id"].drop_nulls()) | set(night.runs["model_id"].drop_nulls())),
        "speakers": speaker_order(calls["speaker"].to_list()),
    }
