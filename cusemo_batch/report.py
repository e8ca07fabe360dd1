"""The morning report: one self-contained HTML page of a scored night, for the people who act on it.

Analysts query the Parquet; team leads and quality managers want to *look*: which calls went wrong,
where in the call, and how the client's emotion moved against the agent's. :func:`build` reads the
store written by ``cusemo-batch score`` and writes one HTML file that opens from an e-mail attachment:
no server, no script, no network (every figure is inline SVG, every style inline), and every string
from the data (call ids, ``calls.csv`` metadata, error messages) goes through :func:`html.escape`.

What a night is. Rows live in ``OUT/<table>/date=YYYY-MM-DD`` partitions, ``date`` being the call's
date from ``calls.csv`` (else the run date). A report covers one date (``date``) or an inclusive range
(``date_from`` .. ``date_to``, which adds the per-day trend). Without dates it covers the **latest
partition of the calls table that holds scored calls** -- the newest night the team can act on --
and, when no call was ever scored, the latest run's date (so a night where everything failed still
gets a page with its errors). The runs of a night are the runs that wrote its rows (``run_id`` of its
calls and errors rows, found in the runs table, which is partitioned by *run* date); its errors are
the errors rows of its dates plus those of its runs (discovery errors are filed under the run date).

Severity. Problem flags are ``valence_drop, arousal_spike, negative_end, sustained_negative``;
``recovery`` is good news: listed, never counted. A call is flagged when one of the considered
speakers (all, or only ``speaker``) has a problem flag; flagged calls are ranked by the number of
(speaker, problem flag) pairs, then by the largest drop/spike (|magnitude|), then by the longest
negative stretch. Only the first ``top`` get a figure (a huge night stays small); the table lists all.

Reading is lazy and touches only the partitions asked for: each date folder is scanned on its own
(``calls.csv`` columns may differ from one night to the next, so one glob over every night would
impose the first file's metadata columns on all), and the timeseries of only the plotted calls is
read. matplotlib draws without pyplot (no global backend state; PNG would go through Agg).
"""

from __future__ import annotations

import datetime as dt
import html
import io
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np
import polars as pl

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
_KEY = ["date", "call_id"]


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

    One scan per date folder, concatenated diagonally: nights may carry different ``calls.csv``
    columns, and a single glob would take its schema from whichever file comes first.
    """
    parts = []
    for day in sorted(set(dates)):
        files = sorted((out / table / f"date={day.isoformat()}").glob("*.parquet"))
        # the zero-row placeholder lacks the metadata columns; beside real files (a run that died
        # before tidying up) it would set the schema of the scan
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


def metadata_columns(columns: Sequence[str]) -> list[str]:
    """``calls.csv`` columns of the calls table: those after ``call_date`` that the schema does not declare."""
    declared = {c.name for c in TABLES["calls"]} | {"date"}
    names = list(columns)
    start = names.index("call_date") + 1 if "call_date" in names else 0
    return [c for c in names[start:] if c not in declared]


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
    calls = scan(out, "calls", days).collect()
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
    return Night(out, first, last, calls, events, errors, runs, metadata_columns(calls.columns))


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
    on = (considered.select(*_KEY, "speaker", *PROBLEM_FLAGS, *GOOD_FLAGS)
          .unpivot(index=[*_KEY, "speaker"], variable_name="flag", value_name="on")
          .filter(pl.col("on").fill_null(False))
          .with_columns(pl.col("speaker").replace_strict(order, default=99).alias("_s"),
                        pl.col("flag").replace_strict(flag_rank, default=99).alias("_f"))
          .sort(*_KEY, "_s", "_f"))
    problems = (on.filter(pl.col("flag").is_in(PROBLEM_FLAGS))
                .group_by(_KEY, maintain_order=True)
                .agg(pl.len().alias("n_flags"), pl.concat_str("speaker", pl.lit(":"), "flag").alias("problems")))
    recoveries = (on.filter(pl.col("flag").is_in(GOOD_FLAGS)).group_by(_KEY, maintain_order=True)
                  .agg(pl.col("speaker").alias("recoveries")))
    ev = events.filter(pl.col("kind").is_in(PROBLEM_EVENTS))
    if speaker is not None:
        ev = ev.filter(pl.col("speaker") == speaker)
    top_event = (ev.sort(pl.col("magnitude").abs(), descending=True).group_by(_KEY, maintain_order=True).first()
                 .select(*_KEY, pl.col("speaker").alias("ev_speaker"), pl.col("kind").alias("ev_kind"),
                         pl.col("magnitude").alias("ev_magnitude"), pl.col("level_before").alias("ev_before"),
                         pl.col("level_after").alias("ev_after"), pl.col("t_change_s").alias("ev_t")))
    base = calls.group_by(_KEY).agg(
        pl.col("duration_s").max(),
        pl.col("longest_negative_s").filter(pl.col("speaker") == speaker if speaker else pl.lit(True)).max(),
        *[pl.col(c).drop_nulls().first() for c in meta_cols])
    return (base.join(problems, on=_KEY, how="inner")
            .join(recoveries, on=_KEY, how="left").join(top_event, on=_KEY, how="left")
            .with_columns(pl.col("recoveries").fill_null(pl.lit([], pl.List(pl.Utf8))))
            .sort([pl.col("n_flags"), pl.col("ev_magnitude").abs().fill_null(0.0),
                   pl.col("longest_negative_s").fill_null(0.0), pl.col("date"), pl.col("call_id")],
                  descending=[True, True, True, False, False])
            .select(*_KEY, "n_flags", "problems", "recoveries", "duration_s", "longest_negative_s",
                    "ev_speaker", "ev_kind", "ev_magnitude", "ev_before", "ev_after", "ev_t", *meta_cols))


def flag_rates(calls: pl.DataFrame, speaker: str | None = None) -> pl.DataFrame:
    """Per date: calls, and the share of calls with each flag (any considered speaker) and with any problem."""
    c = calls if speaker is None else calls.filter(pl.col("speaker") == speaker)
    flags = [*PROBLEM_FLAGS, *GOOD_FLAGS]
    per_call = c.group_by(_KEY).agg(*[pl.col(f).fill_null(False).any() for f in flags])
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
    per_call = calls.group_by(_KEY).agg(pl.col("duration_s").max(), pl.col("last_error_at").is_not_null().any())
    return {
        "scored": per_call.height,
        "failed": errors.select(pl.col("call_id").n_unique()).item() if errors.height else 0,
        "kept": int(per_call["last_error_at"].sum()) if per_call.height else 0,
        "skipped": int(night.runs["skipped"].sum()) if night.runs.height else 0,
        "audio_h": float(per_call["duration_s"].sum() or 0.0) / 3600,
        "models": sorted(set(calls["model_id"].drop_nulls()) | set(night.runs["model_id"].drop_nulls())),
        "speakers": speaker_order(calls["speaker"].to_list()),
    }


# ------------------------------------------------------------------------------------------ figures
def _color(speaker: str, speakers: list[str]) -> str:
    if speaker in COLORS:
        return COLORS[speaker]
    others = [s for s in speakers if s not in COLORS]
    return EXTRA_COLORS[others.index(speaker) % len(EXTRA_COLORS)]


def _mmss(seconds: float | None) -> str:
    if seconds is None or not np.isfinite(seconds):
        return "–"
    s = int(round(seconds))
    return f"{s // 3600}:{s % 3600 // 60:02d}:{s % 60:02d}" if s >= 3600 else f"{s // 60}:{s % 60:02d}"


_RC = {"svg.fonttype": "none", "text.parse_math": False, "font.size": 8, "font.family": "sans-serif",
       "font.sans-serif": ["DejaVu Sans", "Arial", "Helvetica"], "axes.spines.top": False,
       "axes.spines.right": False, "axes.titlesize": 8, "legend.fontsize": 7.5, "legend.frameon": False}


def _svg(fig, salt: str) -> str:
    """The figure as compact inline SVG for an HTML page.

    Measured on a night of 50 flagged 5-6 minute calls (the demo calls repeated 6x, as in
    tests/test_report.py), whole page: inline SVG as written here (text as text, relative path data
    on a 0.1 pt grid, min/max decimation) 1.59 MB, crisp at any zoom; base64 PNG at 90 dpi 6.12 MB
    (RGBA) or 1.94 MB (64-colour palette, visibly soft), at 120 dpi 2.37 MB (palette). Hence SVG,
    the only one under the 2 MB e-mail budget without losing legibility. ``salt`` makes matplotlib's clip/
    marker ids unique per figure (they share one HTML document); group ids and the XML prolog,
    metadata and namespace URLs are dropped (HTML parses inline SVG without them).
    """
    import matplotlib

    buf = io.StringIO()
    with matplotlib.rc_context({**_RC, "svg.hashsalt": salt}):
        fig.savefig(buf, format="svg")
    s = buf.getvalue()
    s = s[s.index("<svg"):]
    s = re.sub(r"<metadata>.*?</metadata>\s*", "", s, flags=re.S)
    s = re.sub(r'\s+xmlns(:\w+)?="[^"]*"', "", s)
    s = s.replace("xlink:href=", "href=")
    s = re.sub(r'<g id="[^"]*"', "<g", s)
    s = re.sub(r"\s*\n\s*", "\n", s)
    s = re.sub(r' d="([^"]*)"', lambda m: f' d="{_path_data(m.group(1))}"', s)
    # geometry to 0.1 pt (below a pixel); text, styles and opacities keep every digit
    s = re.sub(r' (x|y|transform)="[^"]*"', lambda m: re.sub(r"(\d\.\d)\d+", r"\1", m.group(0)), s)
    s = re.sub(r' transform="rotate\(-0 [^)]*\)"', "", s)  # unrotated text
    s = re.sub(r"font-family: [^;\"]*;? ?", "", s)  # the page's CSS sets it once for every figure
    return s.strip()


def _path_data(d: str) -> str:
    """SVG path data of straight segments as relative moves on a 0.1 pt grid (about half the bytes).

    Rounding the absolute positions first and writing their differences keeps the error at 0.05 pt
    however long the path. Paths with curves (markers) are returned unchanged.
    """
    tokens = d.replace(",", " ").split()
    if not tokens or any(t[0].isalpha() and t not in ("M", "L", "z", "Z") for t in tokens):
        return " ".join(tokens)
    out, cmd, x0, y0, last = [], "", 0, 0, ""
    start = (0, 0)  # "z" returns the pen to the start of the subpath
    i = 0
    while i < len(tokens):
        t = tokens[i]
        if t in ("z", "Z"):
            out.append("z")
            last, (x0, y0) = "z", start
            i += 1
            continue
        if t in ("M", "L"):
            cmd = t
            i += 1
        x, y = round(float(tokens[i]) * 10), round(float(tokens[i + 1]) * 10)
        i += 2
        c = "m" if cmd == "M" else "l"
        if not out:  # the first move is absolute
            c, dx, dy = "M", x, y
        else:
            dx, dy = x - x0, y - y0
        num = f"{_dec(dx)}{'' if dy < 0 else ' '}{_dec(dy)}"
        out.append(num if c == last == "l" else c + num)
        last, x0, y0 = c, x, y
        if c in ("M", "m"):
            start = (x, y)
    joined = ""
    for part in out:  # a separator only where two numbers would run together
        joined += part if not joined or part[0] in "-Mmlz" or joined[-1] == "z" else " " + part
    return joined


def _dec(tenths: int) -> str:
    """An integer count of 0.1 pt as the shortest decimal: 12 -> 1.2, -5 -> -.5, 30 -> 3."""
    sign, v = ("-" if tenths < 0 else ""), abs(tenths)
    whole, frac = divmod(v, 10)
    return f"{sign}{whole or ''}.{frac}" if frac else f"{sign}{whole}"


def _label_rows(spans: Sequence[tuple[float, float]], rows: int = 4) -> list[int | None]:
    """Greedy placement of labels that occupy ``(lo, hi)`` of call time, in time order: the first of
    ``rows`` rows free at ``lo``; None when every row is taken (the event is drawn, not labelled)."""
    free_from: list[float] = []
    out: list[int | None] = []
    for lo, hi in spans:
        k = next((i for i, f in enumerate(free_from) if f < lo), len(free_from))
        if k >= rows:
            out.append(None)
            continue
        free_from[k:k + 1] = [hi]
        out.append(k)
    return out


def _bands(spans: list[tuple[float, float]]):
    """One compound path of full-height rectangles (x in data, y in axes coordinates)."""
    from matplotlib.path import Path as MplPath

    verts, codes = [], []
    for a, b in spans:
        verts += [(a, 0), (b, 0), (b, 1), (a, 1), (a, 0)]
        codes += [MplPath.MOVETO, MplPath.LINETO, MplPath.LINETO, MplPath.LINETO, MplPath.CLOSEPOLY]
    return MplPath(verts, codes)


_EVENT_LABEL = {"valence_drop": "drop", "valence_rise": "rise", "arousal_spike": "spike", "arousal_drop": "drop"}


def call_figure(ts: pl.DataFrame, events: pl.DataFrame, salt: str) -> str:
    """Valence and arousal of one call over call time, every speaker: raw windows (thin), smoothed
    (thick), compressed silences shaded in the speaker's colour, change events marked and labelled."""
    import matplotlib
    from matplotlib.figure import Figure
    from matplotlib.lines import Line2D
    from matplotlib.patches import Patch, PathPatch
    from matplotlib.ticker import FuncFormatter, MaxNLocator

    speakers = speaker_order(ts["speaker"].to_list())
    with matplotlib.rc_context(_RC):
        # fixed margins, not a layout engine: ~2x faster per figure, and the texts are short and known
        fig = Figure(figsize=(9, 3.9))
        fig.subplots_adjust(left=0.075, right=0.985, top=0.9, bottom=0.12, hspace=0.1)
        axes = dict(zip(("valence", "arousal"), fig.subplots(2, 1, sharex=True)))
        handles = []
        for sp in speakers:
            d = ts.filter(pl.col("speaker") == sp).sort("t_start_s")
            color = _color(sp, speakers)
            mid = ((d["t_start_s"] + d["t_end_s"]) / 2).to_numpy()
            gaps = silence_runs(d["t_start_s"].to_list(), d["t_end_s"].to_list(), d["valence"].to_list())
            for dim, ax in axes.items():
                ax.plot(*decimate(mid, d[dim].fill_null(np.nan).to_numpy()), color=color, lw=0.6, alpha=0.45)
                ax.plot(*decimate(mid, d[f"{dim}_smooth"].fill_null(np.nan).to_numpy()), color=color, lw=1.8)
                if gaps:  # one compound path per speaker, not one element per silence
                    ax.add_patch(PathPatch(_bands(gaps), transform=ax.get_xaxis_transform(), color=color,
                                           alpha=0.09, lw=0))
            handles.append(Line2D([], [], color=color, lw=1.8, label=f" {sp}"))
        span = max(float(ts["t_end_s"].max() or 1.0), 1.0)
        for dim, ax in axes.items():
            ev = events.filter(pl.col("dimension") == dim).sort("t_change_s")
            if ev.is_empty():
                continue
            colors = [_color(sp, speakers) for sp in ev["speaker"]]
            tx = ax.get_xaxis_transform()  # x in call time, y in axes fraction
            ax.vlines(ev["t_change_s"].to_list(), 0, 1, colors=colors, linestyles="--", lw=0.9, transform=tx)
            # label extent: ~3.9 pt per 7 pt character over a ~580 pt wide plot; right of the line, or
            # left of it in the last fifth of the call; the change span bar shares the row
            right = [t > 0.8 * span for t in ev["t_change_s"]]
            width = [(len(sp) + 14) * 0.0068 * span for sp in ev["speaker"]]
            levels = _label_rows([(min(a, t - w) if r else a, max(b, t) if r else max(b, t + w)) for a, t, b, w, r
                                  in zip(ev["t_start_s"], ev["t_change_s"], ev["t_end_s"], width, right)])
            ys = [0.93 - 0.13 * (k if k is not None else 0) for k in levels]
            ax.hlines(ys, ev["t_start_s"].to_list(), ev["t_end_s"].to_list(), colors=colors, lw=2.5, alpha=0.5,
                      transform=tx)
            for row, k, y, color, r in zip(ev.iter_rows(named=True), levels, ys, colors, right):
                if k is None:  # no free row: marked, not labelled (the events table lists it)
                    continue
                mark = "▼" if row["magnitude"] < 0 else "▲"
                ax.text(row["t_change_s"], y, f" {mark} {row['speaker']} {_EVENT_LABEL.get(row['kind'], row['kind'])} "
                        f"{row['magnitude']:+.2f} ", color=color, fontsize=7, va="center",
                        ha="right" if r else "left", transform=tx)
        for dim, ax in axes.items():
            ax.set_ylim(-1.05, 1.05)
            ax.set_ylabel(dim)
            ax.axhline(0, color="#999999", lw=0.6)
            ax.yaxis.set_major_locator(MaxNLocator(5))
            ax.grid(axis="y", color="#eeeeee", lw=0.5)
        axes["arousal"].xaxis.set_major_formatter(FuncFormatter(lambda v, _: _mmss(v)))
        axes["arousal"].set_xlabel("call time (m:ss)")
        handles += [Line2D([], [], color="#777777", lw=0.6, label=" raw 0.5 s windows"),
                    Line2D([], [], color="#777777", lw=1.8, label=" smoothed"),
                    Patch(color="#777777", alpha=0.2, lw=0, label=" compressed silence"),
                    Line2D([], [], color="#777777", ls="--", lw=0.9, label=" change event")]
        fig.legend(handles=handles, loc="upper center", ncol=len(handles), bbox_to_anchor=(0.53, 1.0))
    return _svg(fig, salt)


def trend_figure(rates: pl.DataFrame, salt: str) -> str:
    """Share of calls with each flag, per day."""
    import matplotlib
    from matplotlib.figure import Figure
    from matplotlib.ticker import PercentFormatter

    with matplotlib.rc_context(_RC):
        fig = Figure(figsize=(9, 2.6))
        fig.subplots_adjust(left=0.075, right=0.8, top=0.95, bottom=0.24)
        ax = fig.subplots()
        x = rates["date"].to_list()
        styles = {"any_problem": ("#222222", "-", 2.0), "valence_drop": ("#c0392b", "-", 1.2),
                  "arousal_spike": ("#d35400", "-", 1.2), "negative_end": ("#8e44ad", "-", 1.2),
                  "sustained_negative": ("#1f5fa8", "-", 1.2), "recovery": ("#2e7d32", "--", 1.2)}
        for col, (color, ls, lw) in styles.items():
            ax.plot(x, (rates[col] * 100).to_list(), color=color, ls=ls, lw=lw, marker="o", ms=3,
                    label=col.replace("_", " "))
        ax.set_ylim(0, 105)
        ax.yaxis.set_major_formatter(PercentFormatter())
        ax.set_ylabel("calls with the flag")
        ax.grid(axis="y", color="#eeeeee", lw=0.5)
        if len(x) <= 14:
            ax.set_xticks(x, [d.isoformat() for d in x])
        else:
            import matplotlib.dates as mdates

            ax.xaxis.set_major_locator(mdates.DayLocator(interval=-(-len(x) // 10)))
            ax.xaxis.set_major_formatter(mdates.DateFormatter("%Y-%m-%d"))
        fig.autofmt_xdate()
        fig.legend(loc="center right")
    return _svg(fig, salt)


# --------------------------------------------------------------------------------------------- HTML
def _e(value: object) -> str:
    return html.escape("" if value is None else str(value), quote=True)


def _flag_text(flag: str) -> str:
    return flag.replace("_", " ")


def _badges(problems: Sequence[str], recoveries: Sequence[str]) -> str:
    parts = []
    for item in problems:
        sp, flag = item.rsplit(":", 1)
        parts.append(f'<span class="b bad">{_e(sp)}: {_e(_flag_text(flag))}</span>')
    parts += [f'<span class="b good">{_e(sp)}: recovery</span>' for sp in recoveries]
    return " ".join(parts)


def _event_text(row: dict) -> str:
    if row.get("ev_kind") is None:
        return "–"
    return (f"{_e(row['ev_speaker'])} {_e(_flag_text(row['ev_kind']))} {row['ev_magnitude']:+.2f} "
            f"<small>({row['ev_before']:+.2f} → {row['ev_after']:+.2f})</small>")


_CSS = """
body{font:14px/1.45 system-ui,-apple-system,"Segoe UI",Roboto,Arial,sans-serif;color:#1d1d1f;margin:0 auto;
max-width:1040px;padding:18px 22px;background:#fff}
h1{font-size:22px;margin:0 0 2px}h2{font-size:17px;margin:26px 0 8px;border-bottom:1px solid #ddd;padding-bottom:3px}
h3{font-size:15px;margin:0 0 4px}.sub{color:#666;margin:0 0 12px}
.kpi{display:flex;flex-wrap:wrap;gap:10px;margin:10px 0}.kpi div{border:1px solid #ddd;border-radius:6px;
padding:6px 12px;min-width:92px}.kpi b{display:block;font-size:20px}.kpi span{color:#666;font-size:12px}
table{border-collapse:collapse;width:100%;font-size:13px;margin:6px 0}th,td{text-align:left;padding:4px 6px;
border-bottom:1px solid #eee;vertical-align:top}th{background:#f6f6f6;font-weight:600}td.n{text-align:right}
.b{display:inline-block;border-radius:9px;padding:0 7px;margin:1px 0;font-size:12px;white-space:nowrap}
.bad{background:#fde8e6;color:#922}.good{background:#e3f4e4;color:#1e6b23}
.call{border:1px solid #e3e3e3;border-radius:8px;padding:10px 12px;margin:14px 0}
figure{margin:6px 0}figure svg{width:100%;height:auto;display:block}
figure svg text{font-family:"DejaVu Sans",Arial,Helvetica,sans-serif}small,.muted{color:#777}
.note{background:#fff8e1;border:1px solid #f0dc9b;border-radius:6px;padding:6px 10px}
.ok{background:#eef8ee;border:1px solid #b9dfb9;border-radius:6px;padding:10px 12px}
a{color:#1f5fa8}code{font-size:12px}td a,.nw{white-space:nowrap}
"""


def _table(header: Sequence[str], rows: Iterable[Sequence[str]], numeric: Iterable[int] = ()) -> str:
    """An HTML table; cells are already-escaped HTML."""
    numeric = set(numeric)
    head = "".join(f"<th>{h}</th>" for h in header)
    body = "".join("<tr>" + "".join(f'<td class="n">{c}</td>' if i in numeric else f"<td>{c}</td>"
                                    for i, c in enumerate(r)) + "</tr>" for r in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _arrow(a: float | None, b: float | None) -> str:
    return f"{a:+.2f} → {b:+.2f}" if a is not None and b is not None else "–"


def _header(night: Night, s: dict, n_flagged: int, who: str, generated: dt.datetime) -> list[str]:
    """Title, key numbers, warnings (mixed models, kept rows) and the runs behind the rows."""
    plural = "night" if night.first == night.last else "nights"
    out = [f"<h1 id=\"top\">Emotion report: {plural} {_e(night.label)}</h1>",
           f"<p class=\"sub\">{_e(night.out)} · generated {generated:%Y-%m-%d %H:%M} UTC · "
           f"model {_e(', '.join(s['models']) or '–')}</p>", "<div class=\"kpi\">"]
    for value, what in ((s["scored"], "calls scored"), (n_flagged, "flagged" + who), (s["failed"], "failed"),
                        (s["skipped"], "skipped by its runs"), (f"{s['audio_h']:.2f}", "audio hours"),
                        (night.runs.height, "runs")):
        out.append(f"<div><b>{_e(value)}</b><span>{what}</span></div>")
    out.append("</div>")
    if len(s["models"]) > 1:
        out.append(f"<p class=\"note\">Rows of these dates come from {len(s['models'])} models: "
                   "scores are comparable only within one model.</p>")
    if s["kept"]:
        out.append(f"<p class=\"note\">{s['kept']} call(s) failed in a later run; their rows below are the "
                   "last good result (see Errors).</p>")
    if night.runs.height:
        rows = []
        for r in night.runs.iter_rows(named=True):
            unmapped = r["unmapped_rttm_labels"]
            notes = [r["device_note"], unmapped and f"unmapped RTTM labels {unmapped}"]
            started = f"{r['started_at']:%Y-%m-%d %H:%M:%S}" if r["started_at"] else ""
            rows.append([_e(r["run_id"]), _e(started), *[_e(r[c]) for c in ("calls_found", "scored", "skipped",
                                                                           "failed", "exit_code")],
                         f"{(r['audio_s'] or 0) / 3600:.2f}", f"{r['x_real_time'] or 0:.0f}", _e(r["providers"]),
                         _e("; ".join(n for n in notes if n))])
        out += ["<details><summary>Runs that wrote these rows (their counts cover every date they touched)</summary>",
                _table(["run", "started (UTC)", "found", "scored", "skipped", "failed", "exit", "audio h",
                        "× real time", "providers", "notes"], rows, numeric=range(2, 9)), "</details>"]
    return out


def _flagged_table(night: Night, s: dict, ranked: pl.DataFrame, plotted: set, who: str, top: int) -> list[str]:
    """The ranked list (every flagged call; the plotted ones link to their section)."""
    out = ["<h2 id=\"flagged\">Flagged calls</h2>"]
    if s["scored"] == 0:
        return out + ["<p class=\"note\"><b>No call was scored</b> for these dates: see the errors and runs.</p>"]
    if ranked.is_empty():
        return out + [f"<p class=\"ok\"><b>Nothing flagged.</b> {s['scored']} call(s) scored, none with a problem "
                      f"flag{who} (valence drop, arousal spike, negative end, sustained negative).</p>"]
    several_days = night.first != night.last
    header = ["#", "call", *(["date"] if several_days else []), "flags", "largest drop / spike", "at",
              *[_e(c) for c in night.meta_cols]]
    rows = []
    for i, r in enumerate(ranked.iter_rows(named=True), 1):
        name = _e(r["call_id"])
        if (r["date"], r["call_id"]) in plotted:
            name = f'<a href="#call-{i}">{name}</a>'
        rows.append([str(i), name, *([_e(r["date"])] if several_days else []),
                     _badges(r["problems"], r["recoveries"]), _event_text(r),
                     f"<span class=\"nw\">{_mmss(r['ev_t'])} <small>of {_mmss(r['duration_s'])}</small></span>",
                     *[_e(r[c]) for c in night.meta_cols]])
    out += [f"<p class=\"muted\">Ranked by the number of problem flags{who}, then the largest drop or spike, then "
            "the longest negative stretch. Recovery (green) is listed, never counted.</p>",
            _table(header, rows, numeric=(0,))]
    if ranked.height > len(plotted):
        out.append(f"<p class=\"note\">Figures for the first {len(plotted)} of {ranked.height} flagged calls "
                   f"(--top {top}).</p>")
    return out


def _trend(rates: pl.DataFrame) -> list[str]:
    cols = ["any_problem", *PROBLEM_FLAGS, *GOOD_FLAGS]
    out = ["<h2 id=\"trend\">Flag rates per day</h2>"]
    if rates.height >= 2:
        out.append(f"<figure class=\"trend-plot\">{trend_figure(rates, 'trend')}</figure>")
    out.append(_table(["date", "calls", *[_flag_text(c) for c in cols]],
                      ([_e(r["date"]), str(r["calls"]), *[f"{100 * r[c]:.0f} %" for c in cols]]
                       for r in rates.iter_rows(named=True)), numeric=range(1, len(cols) + 2)))
    return out


def _call_section(i: int, r: dict, night: Night, figure: str) -> str:
    """One flagged call: metadata, flags and levels per speaker, the figure, its change events."""
    here = (pl.col("date") == r["date"]) & (pl.col("call_id") == r["call_id"])
    rows = night.calls.filter(here)
    meta = " · ".join(f"{_e(c)} <b>{_e(r[c])}</b>" for c in night.meta_cols if r[c] is not None)
    layout = rows["layout"].drop_nulls()
    out = [f"<section class=\"call\" id=\"call-{i}\"><h3>#{i} {_e(r['call_id'])}</h3>"
           f"<p class=\"muted\">{_e(r['date'])} · {_mmss(r['duration_s'])}"
           f"{' · ' + _e(layout[0]) if len(layout) else ''}{' · ' + meta if meta else ''}</p>"]
    flag_rows = []
    for sp in speaker_order(rows["speaker"].to_list()):
        t = rows.filter(pl.col("speaker") == sp).row(0, named=True)
        badges = _badges([f"{sp}:{f}" for f in PROBLEM_FLAGS if t[f]], [sp] if t["recovery"] else [])
        flag_rows.append([_e(sp), badges or "<span class=\"muted\">none</span>",
                          _arrow(t["valence_start"], t["valence_end"]), _arrow(t["arousal_start"], t["arousal_end"]),
                          f"{t['longest_negative_s'] or 0:.0f} s"])
    out.append(_table(["speaker", "flags", "valence start → end", "arousal start → end", "longest negative"],
                      flag_rows))
    out.append(f"<figure class=\"call-plot\">{figure}</figure>")
    ev = night.events.filter(here)
    total = ev.height
    ev = ev.sort(pl.col("magnitude").abs(), descending=True).head(MAX_EVENT_ROWS).sort("t_change_s")
    if total > ev.height:
        out.append(f"<p class=\"muted\">The {ev.height} largest of {total} change events:</p>")
    if ev.height:
        out.append(_table(["at", "speaker", "change", "before → after", "span"],
                          ([_mmss(e["t_change_s"]), _e(e["speaker"]), _e(_flag_text(e["kind"])),
                            _arrow(e["level_before"], e["level_after"]),
                            f"{_mmss(e['t_start_s'])}–{_mmss(e['t_end_s'])}"] for e in ev.iter_rows(named=True))))
    out.append("<p><a href=\"#top\">back to top</a></p></section>")
    return "".join(out)


def _errors(errors: pl.DataFrame) -> list[str]:
    groups = error_groups(errors)
    if groups.is_empty():
        return ["<h2 id=\"errors\">Errors</h2>", "<p class=\"muted\">No errors.</p>"]

    def ids(calls: list[str]) -> str:
        more = f" <small>+{len(calls) - 10} more</small>" if len(calls) > 10 else ""
        return ", ".join(_e(c) for c in calls[:10]) + more

    return ["<h2 id=\"errors\">Errors</h2>",
            _table(["stage", "error", "rows", "calls", "example message"],
                   ([_e(g["stage"]), _e(g["error"]), str(g["rows"]), ids(g["calls"]), _e(g["message"])]
                    for g in groups.iter_rows(named=True)), numeric=(2,))]


def render(night: Night, ranked: pl.DataFrame, figures: dict[tuple, str], rates: pl.DataFrame | None,
           speaker: str | None, top: int, generated: dt.datetime) -> str:
    """The whole page. ``figures`` maps (date, call_id) of the plotted calls to inline SVG."""
    s = summary(night)
    who = f" (flags of the {_e(speaker)} only)" if speaker else ""
    out = ["<!DOCTYPE html><html lang=\"en\"><head><meta charset=\"utf-8\">"
           "<meta name=\"viewport\" content=\"width=device-width,initial-scale=1\">"
           f"<title>Emotion report {_e(night.label)}</title><style>{_CSS}</style></head><body>",
           *_header(night, s, ranked.height, who, generated),
           *_flagged_table(night, s, ranked, set(figures), who, top),
           *(_trend(rates) if rates is not None else [])]
    if figures:
        out.append("<h2 id=\"calls\">Flagged calls, one by one</h2>")
        for i, r in enumerate(ranked.iter_rows(named=True), 1):
            figure = figures.get((r["date"], r["call_id"]))
            if figure is None:
                break
            out.append(_call_section(i, r, night, figure))
    out += [*_errors(night.errors),
            "<p class=\"muted\">Valence (negative ↔ positive) and arousal (calm ↔ agitated) on [-1, 1], times in "
            "original call time. Column meanings: docs/schema.md of cusemo-batch.</p></body></html>"]
    return "\n".join(out)


# ---------------------------------------------------------------------------------------------- API
def build(out: str | Path, date: dt.date | str | None = None, date_from: dt.date | str | None = None,
          date_to: dt.date | str | None = None, speaker: str | None = None, output: str | Path | None = None,
          top: int = DEFAULT_TOP) -> Path:
    """Write the report of a scored store ``out`` and return its path.

    ``date`` (one night) or ``date_from`` + ``date_to`` (inclusive; adds the per-day trend); neither:
    the latest night with scored calls (module docstring). ``speaker`` (e.g. ``client``): only that
    speaker's flags and events flag and rank a call -- figures still show every speaker, the agent
    being the context. ``top``: figures for the first ``top`` flagged calls only. ``output`` defaults
    to ``report-<date>.html`` (or ``report-<from>_<to>.html``) in the current directory.
    Raises :class:`ReportError` for a missing store, bad dates, no data, or an unknown speaker.
    """
    out = Path(out)
    if not (out / "calls").is_dir() and not (out / "runs").is_dir():
        raise ReportError(f"{out}: not a cusemo-batch store (no calls/ or runs/ folder)")
    if top < 0:
        raise ReportError("top must be >= 0")
    as_date = lambda d: d if isinstance(d, dt.date) or d is None else dt.date.fromisoformat(str(d))  # noqa: E731
    try:
        date, date_from, date_to = as_date(date), as_date(date_from), as_date(date_to)
    except ValueError as e:
        raise ReportError(f"bad date: {e}") from None
    if date is not None and (date_from or date_to):
        raise ReportError("give either a date or a range (from, to), not both")
    if (date_from is None) != (date_to is None):
        raise ReportError("a range needs both ends (from and to)")
    if date_from and date_from > date_to:
        raise ReportError(f"the range is empty: {date_from} is after {date_to}")
    first, last = (date_from, date_to) if date_from else (date or default_night(out),) * 2
    night = load_night(out, first, last)
    if night.calls.is_empty() and night.errors.is_empty() and night.runs.is_empty():
        have = partition_dates(out, "calls", rows_only=True)
        hint = f" (dates with calls: {have[0]} .. {have[-1]})" if have else ""
        raise ReportError(f"no calls, errors or runs for {night.label} in {out}{hint}")
    if speaker is not None and speaker not in set(night.calls["speaker"]):
        raise ReportError(f"no speaker {speaker!r} in the calls of {night.label} "
                          f"(speakers: {', '.join(speaker_order(night.calls['speaker'].to_list())) or 'none'})")

    ranked = rank_calls(night.calls, night.events, speaker, night.meta_cols)
    plotted = ranked.head(top).select(_KEY)
    ts = load_timeseries(out, plotted)
    figures = {}
    for i, (day, cid) in enumerate(plotted.iter_rows(), 1):
        key = (pl.col("date") == day) & (pl.col("call_id") == cid)
        figures[(day, cid)] = call_figure(ts.filter(key), night.events.filter(key), salt=f"c{i}")
    rates = flag_rates(night.calls, speaker) if date_from else None
    page = render(night, ranked, figures, rates, speaker, top, dt.datetime.now(dt.timezone.utc))

    if output is None:
        output = f"report-{first}.html" if first == last else f"report-{first}_{last}.html"
    output = Path(output)
    output.parent.mkdir(parents=True, exist_ok=True)
    tmp = output.with_name(f".{output.name}.tmp-{os.getpid()}")
    tmp.write_text(page, encoding="utf-8")
    os.replace(tmp, output)  # a mailer picking the file up never sees half a page
    return output
