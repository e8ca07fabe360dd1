"""Emotional changes in a call: smoothing, change events, per-speaker summaries and flags (polars).

The paper names "detecting significant emotional changes during conversations" as future work;
this module is the product's explainable take on it, computed from the scorer's timeseries
(``call_id, speaker, t_start_s, t_end_s, valence, arousal, speech_ratio``; regular windows of
original call time, several calls and speakers per frame). Every threshold lives in
:class:`ChangeConfig` (defaults and their reasons: ``config/changes.toml``).

**Speech time.** A speaker's emotion is only observed while they speak. Windows with
``speech_ratio < speech_floor`` get weight 0 and never drive anything; every other window weighs
its seconds of speech (``speech_ratio x window length``). All windows below are measured on the
speaker's *speech-time* axis (cumulative seconds of speech): in a dialogue the client's "last 5 s"
are the last 5 s *they* spoke, so a change across the agent's turn or a hold is compared between
the client's turns instead of against silence.

**Smoothing** (:func:`smooth`): speech-weighted mean of all windows whose speech-time centre lies
within ``smooth_s / 2`` of the window's own. Windows below the speech floor get ``null`` (no evidence
of this speaker there; plots show a gap rather than an invented value).

**Events** (:func:`detect_events`), per call, speaker and dimension -- a two-window mean-shift test:

1. At every speech window ``i``, ``before`` = weighted mean over the ``context_s`` seconds of speech
   up to and including ``i``, ``after`` = over the ``context_s`` seconds after it; ``difference =
   after - before`` (only where both sides hold ``min_context_speech_s`` of speech). For a step of
   size ``m`` the difference is a triangle peaking at exactly ``m`` on the step.
2. Candidate regions = maximal runs of consecutive speech windows with ``|difference| >=
   min_change`` and the same sign; each region's extremum is its candidate change.
3. The span ``[t_start_s, t_end_s]`` = the window boundaries around the extremum where
   ``|difference|`` stays at least half of its peak (full width at half maximum): about
   ``+- context_s/2`` around an abrupt change, the length of the slide for a gradual one.
   ``level_before`` / ``level_after`` = the two means at the extremum, or the "before" mean at the
   span start and the "after" mean at the span end when those differ more (a slide longer than
   ``context_s`` is then measured whole); ``magnitude = level_after - level_before``.
4. ``t_change_s`` = the first window boundary in the span where the smoothed trajectory passes the
   midpoint of the two levels (for a step: the step; across a pause: the middle of the pause).
   Stability: from there it must stay past the midpoint for ``min_duration_s`` seconds of speech
   (``held_s`` = how long it did, up to the next crossing or the end of the speaker's speech);
   shorter blips are dropped.
5. Events of the same kind whose spans overlap are merged (first ``level_before``, last
   ``level_after``).

Kinds: ``valence_drop`` / ``valence_rise``; ``arousal_spike`` (a rise) / ``arousal_drop``.

**Summary** (:func:`call_summary`), one row per call and speaker. Distribution statistics use the raw
model values of speech windows (``speech_ratio >= speech_floor``), unweighted, so an analyst can
reproduce them in SQL from the timeseries table; ``*_std`` is the sample std (ddof 1);
``*_start`` / ``*_end`` = mean over the windows in the first / last ``edge_s`` seconds of speech;
``*_slope_per_min`` = least-squares slope of the smoothed values against call time in minutes.
``speech_s`` = total talk time (sum of ``speech_ratio x window length`` over all windows),
``duration_s`` = last window end - first window start. Flags:

- ``valence_drop`` / ``arousal_spike``: at least one event of that kind.
- ``negative_end``: ``valence_end < negative_level``.
- ``sustained_negative``: ``longest_negative_s >= sustained_s``, where ``longest_negative_s`` is the
  longest run of consecutive speech windows (pauses do not break it) with smoothed valence below
  ``negative_level``, in seconds of speech.
- ``recovery``: (a) a ``valence_drop`` followed by a later ``valence_rise`` whose ``level_after``
  is at least the drop's ``level_before - recovery_margin`` (back near the pre-drop level, in one
  or several rises); or (b) ``sustained_negative`` and a non-negative end
  (``valence_end >= negative_level``).

A speaker without any speech window gets null statistics, zero counts and false flags.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl

from .tomlconfig import dataclass_from, read_toml

DEFAULT_CONFIG = Path(__file__).parent / "config" / "changes.toml"
KEYS = ["call_id", "speaker"]
DIMENSIONS = ("valence", "arousal")
KINDS = ("valence_drop", "valence_rise", "arousal_spike", "arousal_drop")
_KIND = {("valence", -1): "valence_drop", ("valence", 1): "valence_rise",
         ("arousal", 1): "arousal_spike", ("arousal", -1): "arousal_drop"}
TIMESERIES_COLUMNS = ("call_id", "speaker", "t_start_s", "t_end_s", "valence", "arousal", "speech_ratio")
EVENT_SCHEMA = {
    "call_id": pl.String, "speaker": pl.String, "dimension": pl.String, "kind": pl.String,
    "t_start_s": pl.Float64, "t_end_s": pl.Float64, "t_change_s": pl.Float64,
    "level_before": pl.Float64, "level_after": pl.Float64, "magnitude": pl.Float64,
    "held_s": pl.Float64,
}


# --------------------------------------------------------------------------------------------------
# Configuration
# --------------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class ChangeConfig:
    """Thresholds of the change analysis (meaning and default reasons: ``config/changes.toml``).

    Examples
    --------
    >>> import cusemo_batch as cb
    >>> cfg = cb.ChangeConfig(min_change=0.5)  # only larger changes become events
    >>> opts = cb.ScoreOptions.make(change_config=cfg)
    >>> opts.change_config.min_change, opts.result_hash() != cb.ScoreOptions().result_hash()
    (0.5, True)
    """

    speech_floor: float = 0.2  # min speech_ratio for a window to count
    smooth_s: float = 3.0  # centred smoothing window, seconds of speech
    context_s: float = 5.0  # before/after windows of the change test, seconds of speech
    min_context_speech_s: float = 2.5  # min speech on each side for a difference to exist
    min_change: float = 0.3  # min |level_after - level_before| of an event
    min_duration_s: float = 2.0  # the new level must hold this long (seconds of speech)
    negative_level: float = -0.2  # valence below this is negative
    sustained_s: float = 10.0  # seconds of speech below negative_level for sustained_negative
    edge_s: float = 10.0  # seconds of speech that define start and end levels
    recovery_margin: float = 0.15  # "back near the pre-drop level" tolerance

    def __post_init__(self) -> None:
        for f in fields(self):
            v = getattr(self, f.name)
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
                raise ValueError(f"change config: {f.name} must be a finite number, got {v!r}")
            object.__setattr__(self, f.name, float(v))
        if not 0.0 <= self.speech_floor <= 1.0:
            raise ValueError(f"change config: speech_floor must be in [0, 1], got {self.speech_floor}")
        for name in ("smooth_s", "context_s", "min_change", "sustained_s", "edge_s"):
            if getattr(self, name) <= 0:
                raise ValueError(f"change config: {name} must be > 0, got {getattr(self, name)}")
        if not 0 < self.min_context_speech_s <= self.context_s:
            raise ValueError("change config: min_context_speech_s must be in (0, context_s]")
        if self.min_duration_s < 0 or self.recovery_margin < 0:
            raise ValueError("change config: min_duration_s and recovery_margin must be >= 0")
        if not -1.0 <= self.negative_level <= 1.0:
            raise ValueError(f"change config: negative_level must be in [-1, 1], got {self.negative_level}")

    def to_toml(self) -> str:
        """The config as TOML text (``load_change_config`` reads it back to an equal config)."""
        return "".join(f"{k} = {v!r}\n" for k, v in asdict(self).items())


def load_change_config(path: str | Path | None = None) -> ChangeConfig:
    """Read a TOML file of :class:`ChangeConfig` keys; ``None`` = the shipped defaults.

    Keys left out take the defaults; unknown keys raise ``ValueError`` (a typo must not silently
    fall back to a default threshold).
    """
    path = Path(path) if path is not None else DEFAULT_CONFIG
    return dataclass_from(ChangeConfig, read_toml(path, "change config"), str(path))


# --------------------------------------------------------------------------------------------------
# Public functions
# --------------------------------------------------------------------------------------------------

def smooth(ts: pl.DataFrame, cfg: ChangeConfig | None = None) -> pl.DataFrame:
    """``ts`` with ``valence_smooth`` and ``arousal_smooth`` added (rows and order unchanged).

    Speech-weighted centred mean over ``smooth_s`` seconds of speech; ``null`` for windows below
    the speech floor (see the module docstring).
    """
    cfg = cfg or load_change_config()
    return _smoothed(_prepare(ts, cfg), ts.columns)


def analyse(ts: pl.DataFrame, cfg: ChangeConfig | None = None) -> tuple[pl.DataFrame, pl.DataFrame, pl.DataFrame]:
    """:func:`smooth`, :func:`detect_events` and :func:`call_summary` in one go (one preparation
    pass instead of three: the scorer's path)."""
    cfg = cfg or load_change_config()
    p = _prepare(ts, cfg)
    events = _detect(p, cfg)
    return _smoothed(p, ts.columns), events, _summarise(p, events, cfg)


def _smoothed(p: pl.DataFrame, columns: list[str]) -> pl.DataFrame:
    return p.sort("_row").select([c for c in columns if c not in ("valence_smooth", "arousal_smooth")]
                                 + ["valence_smooth", "arousal_smooth"])


def detect_events(ts: pl.DataFrame, cfg: ChangeConfig | None = None) -> pl.DataFrame:
    """One row per change event (columns: :data:`EVENT_SCHEMA`), sorted by call, speaker, time."""
    cfg = cfg or load_change_config()
    return _detect(_prepare(ts, cfg), cfg)


def _detect(p: pl.DataFrame, cfg: ChangeConfig) -> pl.DataFrame:
    rows: list[dict[str, Any]] = []
    for g in p.partition_by(KEYS, maintain_order=True):
        speech = g["_speech"].to_numpy()
        if not speech.any():
            continue
        call_id, speaker = g["call_id"][0], g["speaker"][0]
        for dim in DIMENSIONS:
            ok = g[f"_ok_{dim}"].to_numpy()
            sub = g.filter(pl.Series(ok))
            if sub.height == 0:
                continue
            for ev in _events_1d(sub, dim, cfg):
                rows.append({"call_id": call_id, "speaker": speaker, "dimension": dim,
                             "kind": _KIND[(dim, ev.pop("sign"))], **ev})
    events = pl.DataFrame(rows, schema=EVENT_SCHEMA) if rows else pl.DataFrame(schema=EVENT_SCHEMA)
    return events.sort(["call_id", "speaker", "t_change_s", "dimension"])


def call_summary(ts: pl.DataFrame, events: pl.DataFrame | None = None,
                 cfg: ChangeConfig | None = None) -> pl.DataFrame:
    """One row per call and speaker (sorted by both): statistics per dimension, event counts, flags.

    ``events`` defaults to :func:`detect_events` on ``ts`` with the same config.
    """
    cfg = cfg or load_change_config()
    p = _prepare(ts, cfg)
    return _summarise(p, _detect(p, cfg) if events is None else events, cfg)


# Long because it is one polars aggregation: each `calls` column is one expression, listed in the
# table's column order so the code reads like docs/schema.md.
def _summarise(p: pl.DataFrame, events: pl.DataFrame, cfg: ChangeConfig) -> pl.DataFrame:
    edge_ms = int(round(cfg.edge_s * 1000))

    aggs: list[pl.Expr] = [
        (pl.col("t_end_s").max() - pl.col("t_start_s").min()).alias("duration_s"),
        (pl.col("speech_ratio").fill_null(0.0).fill_nan(0.0) * pl.col("_dur")).sum().alias("speech_s"),
    ]
    for dim in DIMENSIONS:
        ok = pl.col(f"_ok_{dim}")
        v = pl.col(dim).filter(ok)
        x = (((pl.col("t_start_s") + pl.col("t_end_s")) / 2) / 60.0).filter(ok)
        y = pl.col(f"{dim}_smooth").filter(ok)
        xc = x - x.mean()
        sxx = (xc * xc).sum()
        aggs += [
            v.mean().alias(f"{dim}_mean"),
            v.std().alias(f"{dim}_std"),
            v.min().alias(f"{dim}_min"),
            v.max().alias(f"{dim}_max"),
            v.quantile(0.1, interpolation="linear").alias(f"{dim}_p10"),
            v.quantile(0.9, interpolation="linear").alias(f"{dim}_p90"),
            pl.col(dim).filter(ok & (pl.col("_tau_ms") <= edge_ms)).mean().alias(f"{dim}_start"),
            pl.col(dim).filter(ok & (pl.col("_tau_left_ms") <= edge_ms)).mean().alias(f"{dim}_end"),
            pl.when(sxx > 0).then((xc * (y - y.mean())).sum() / sxx).otherwise(None)
            .alias(f"{dim}_slope_per_min"),
        ]
    summary = p.group_by(KEYS, maintain_order=True).agg(aggs).sort(KEYS)

    # longest run of consecutive speech windows with negative smoothed valence (seconds of speech)
    speech_v = p.filter(pl.col("_ok_valence")).with_columns(
        _neg=pl.col("valence_smooth") < cfg.negative_level)
    speech_v = speech_v.with_columns(_run=pl.col("_neg").rle_id().over(KEYS))
    longest = (speech_v.filter("_neg").group_by(KEYS + ["_run"]).agg(pl.col("_wv_valence").sum().alias("s"))
               .group_by(KEYS).agg(pl.col("s").max().alias("longest_negative_s")))

    ev = events.select(KEYS + ["kind", "t_change_s", "level_before", "level_after"])
    counts = ev.group_by(KEYS).agg([(pl.col("kind") == k).sum().cast(pl.Int64).alias(f"n_{k}") for k in KINDS])
    drops = ev.filter(pl.col("kind") == "valence_drop")
    rises = ev.filter(pl.col("kind") == "valence_rise")
    recovered = (drops.join(rises, on=KEYS, suffix="_rise")
                 .filter((pl.col("t_change_s_rise") > pl.col("t_change_s"))
                         & (pl.col("level_after_rise") >= pl.col("level_before") - cfg.recovery_margin))
                 .select(KEYS).unique().with_columns(_recovered_by_rise=pl.lit(True)))

    summary = (summary.join(longest, on=KEYS, how="left")
               .join(counts, on=KEYS, how="left")
               .join(recovered, on=KEYS, how="left"))
    sustained = pl.col("longest_negative_s") >= cfg.sustained_s
    negative_end = (pl.col("valence_end") < cfg.negative_level).fill_null(False)
    summary = summary.with_columns(
        pl.col("longest_negative_s").fill_null(0.0),
        *[pl.col(f"n_{k}").fill_null(0) for k in KINDS],
    ).with_columns(
        valence_drop=pl.col("n_valence_drop") > 0,
        arousal_spike=pl.col("n_arousal_spike") > 0,
        negative_end=negative_end,
        sustained_negative=sustained,
        recovery=pl.col("_recovered_by_rise").fill_null(False)
        | (sustained & (pl.col("valence_end") >= cfg.negative_level).fill_null(False)),
    ).drop("_recovered_by_rise")
    return summary


def summary_columns() -> list[str]:
    """Column names of :func:`call_summary`, in order (for schema documentation and checks)."""
    stats = ("mean", "std", "min", "max", "p10", "p90", "start", "end", "slope_per_min")
    return (KEYS + ["duration_s", "speech_s"] + [f"{d}_{s}" for d in DIMENSIONS for s in stats]
            + ["longest_negative_s"] + [f"n_{k}" for k in KINDS]
            + ["valence_drop", "arousal_spike", "negative_end", "sustained_negative", "recovery"])


# --------------------------------------------------------------------------------------------------
# Internals
# --------------------------------------------------------------------------------------------------

def _prepare(ts: pl.DataFrame, cfg: ChangeConfig) -> pl.DataFrame:
    """Sorted copy with speech weights, speech-time axis, smoothed values and change statistics.

    Helper columns (underscore): ``_row`` input order; ``_dur`` window length; ``_speech`` window
    counts; ``_ok_<dim>`` counts and has a finite value; ``_wv_<dim>`` its weight (seconds of
    speech, else 0); ``_tau_ms`` speech-time centre (ms); ``_tau_left_ms`` speech still to come
    after that centre; ``_before_<dim>``, ``_after_<dim>``, ``_diff_<dim>`` the change test.
    """
    missing = [c for c in TIMESERIES_COLUMNS if c not in ts.columns]
    if missing:
        raise ValueError(f"timeseries lacks column(s) {missing}")
    speech_ratio = pl.col("speech_ratio").cast(pl.Float64).fill_nan(None).clip(0.0, 1.0)
    p = (ts.drop([c for c in ("valence_smooth", "arousal_smooth") if c in ts.columns])
         .with_row_index("_row")
         .with_columns(pl.col("call_id").cast(pl.String), pl.col("speaker").cast(pl.String),
                       *[pl.col(c).cast(pl.Float64) for c in ("t_start_s", "t_end_s", *DIMENSIONS)])
         .sort(KEYS + ["t_start_s", "_row"])
         .with_columns(_dur=(pl.col("t_end_s") - pl.col("t_start_s")).clip(lower_bound=0.0),
                       _speech=(speech_ratio >= cfg.speech_floor).fill_null(False)))
    w = pl.when(pl.col("_speech")).then(speech_ratio * pl.col("_dur")).otherwise(0.0)
    p = p.with_columns(_w=w)
    p = p.with_columns(
        _tau_ms=((pl.col("_w").cum_sum() - pl.col("_w") / 2) * 1000).round().cast(pl.Int64).over(KEYS),
        _total_ms=(pl.col("_w").sum() * 1000).round().cast(pl.Int64).over(KEYS),
        *[(pl.col("_speech") & pl.col(d).is_finite().fill_null(False)).alias(f"_ok_{d}") for d in DIMENSIONS],
    ).with_columns(
        _tau_left_ms=pl.col("_total_ms") - pl.col("_tau_ms"),
        *[pl.when(pl.col(f"_ok_{d}")).then(pl.col("_w")).otherwise(0.0).alias(f"_wv_{d}") for d in DIMENSIONS],
    )
    half = f"{max(int(round(cfg.smooth_s * 500)), 0)}i"
    ctx = f"{max(int(round(cfg.context_s * 1000)), 1)}i"
    cols: list[pl.Expr] = []
    for d in DIMENSIONS:
        wv = pl.col(f"_wv_{d}")
        wx = wv * pl.col(d).fill_nan(0.0).fill_null(0.0)
        num = _back(wx, half, "both") + _ahead(wx, half)
        den = _back(wv, half, "both") + _ahead(wv, half)
        cols += [
            pl.when(pl.col(f"_ok_{d}")).then(num / den).otherwise(None).alias(f"{d}_smooth"),
            _back(wx, ctx, "right").alias(f"_bnum_{d}"), _back(wv, ctx, "right").alias(f"_bden_{d}"),
            _ahead(wx, ctx).alias(f"_anum_{d}"), _ahead(wv, ctx).alias(f"_aden_{d}"),
        ]
    p = p.with_columns(cols)
    min_side = cfg.min_context_speech_s - 1e-9
    stats: list[pl.Expr] = []
    for d in DIMENSIONS:
        valid = (pl.col(f"_ok_{d}") & (pl.col(f"_bden_{d}") >= min_side) & (pl.col(f"_aden_{d}") >= min_side))
        before = pl.col(f"_bnum_{d}") / pl.col(f"_bden_{d}")
        after = pl.col(f"_anum_{d}") / pl.col(f"_aden_{d}")
        stats += [pl.when(valid).then(before).otherwise(None).alias(f"_before_{d}"),
                  pl.when(valid).then(after).otherwise(None).alias(f"_after_{d}")]
    p = p.with_columns(stats).with_columns(
        [(pl.col(f"_after_{d}") - pl.col(f"_before_{d}")).alias(f"_diff_{d}") for d in DIMENSIONS])
    return p.drop([f"_{k}_{d}" for k in ("bnum", "bden", "anum", "aden") for d in DIMENSIONS])


def _back(expr: pl.Expr, window: str, closed: str) -> pl.Expr:
    """Sum over the windows in ``(tau - w, tau]`` (``closed='right'``) or ``[tau - w, tau]`` (both)."""
    return expr.rolling_sum_by("_tau_ms", window, closed=closed).fill_null(0.0).over(KEYS)


def _ahead(expr: pl.Expr, window: str) -> pl.Expr:
    """Sum over the windows in ``(tau, tau + w]``: a backward window on the reversed axis."""
    rev_tau = (-pl.col("_tau_ms")).reverse()
    return expr.reverse().rolling_sum_by(rev_tau, window, closed="left").fill_null(0.0).reverse().over(KEYS)


# ~70 lines on purpose: one pass of the event rule over numpy arrays, read top to bottom (candidate
# windows, runs, peak, half-maximum span, hold); split, each step would pass the same eight arrays on.
def _events_1d(g: pl.DataFrame, dim: str, cfg: ChangeConfig) -> list[dict[str, Any]]:
    """Change events of one dimension of one speaker; ``g`` = their usable speech windows in order."""
    diff = g[f"_diff_{dim}"].fill_null(np.nan).to_numpy()
    before = g[f"_before_{dim}"].fill_null(np.nan).to_numpy()
    after = g[f"_after_{dim}"].fill_null(np.nan).to_numpy()
    smoothed = g[f"{dim}_smooth"].to_numpy()
    w = g[f"_wv_{dim}"].to_numpy()
    t0, t1 = g["t_start_s"].to_numpy(), g["t_end_s"].to_numpy()
    n = diff.size
    # boundary after window k: its end, or the middle of the pause before the next speech window
    split = np.where(np.arange(n) + 1 < n, (t1 + np.append(t0[1:], t1[-1:])) / 2, t1)
    valid = np.isfinite(diff)
    sign = np.where(valid & (np.abs(np.nan_to_num(diff)) >= cfg.min_change - 1e-12),
                    np.sign(np.nan_to_num(diff)), 0).astype(int)

    found: list[dict[str, Any]] = []
    k = 0
    while k < n:
        if sign[k] == 0:
            k += 1
            continue
        s = sign[k]
        r1 = k
        while r1 < n and sign[r1] == s:
            r1 += 1
        region = np.arange(k, r1)
        peak_i = int(region[np.argmax(np.abs(diff[region]))])
        peak = abs(diff[peak_i])
        half = peak / 2
        a = peak_i
        while a - 1 >= 0 and valid[a - 1] and np.sign(diff[a - 1]) == s and abs(diff[a - 1]) >= half:
            a -= 1
        b = peak_i
        while b + 1 < n and valid[b + 1] and np.sign(diff[b + 1]) == s and abs(diff[b + 1]) >= half:
            b += 1
        lb, la = float(before[peak_i]), float(after[peak_i])
        if abs(after[b] - before[a]) > abs(la - lb):  # a gradual change: the span edges see all of it
            lb, la = float(before[a]), float(after[b])
        mid = (lb + la) / 2
        beyond = (smoothed < mid) if s < 0 else (smoothed > mid)
        # the change happens where the smoothed trajectory first passes the midpoint within the span
        inside = np.flatnonzero(beyond[a + 1: b + 2]) + a + 1
        held, first = 0.0, peak_i + 1
        if inside.size:
            first = int(inside[0])
            run = beyond[first:]
            stop = first + (int(np.argmin(run)) if not run.all() else run.size)
            held = float(w[first:stop].sum())
        if held >= cfg.min_duration_s - 1e-9:
            found.append({"sign": int(s), "t_start_s": float(split[a]), "t_end_s": float(split[b]),
                          "t_change_s": float(split[first - 1]), "level_before": lb, "level_after": la,
                          "magnitude": la - lb, "held_s": held, "_peak": peak})
        k = max(r1, b + 1)

    merged: list[dict[str, Any]] = []
    for ev in found:
        prev = merged[-1] if merged else None
        if prev is not None and prev["sign"] == ev["sign"] and ev["t_start_s"] <= prev["t_end_s"]:
            prev["t_end_s"] = max(prev["t_end_s"], ev["t_end_s"])
            prev["level_after"] = ev["level_after"]
            prev["magnitude"] = prev["level_after"] - prev["level_before"]
            prev["held_s"] = ev["held_s"]
            if ev["_peak"] > prev["_peak"]:
                prev["t_change_s"], prev["_peak"] = ev["t_change_s"], ev["_peak"]
        else:
            merged.append(dict(ev))
    for ev in merged:
        ev.pop("_peak")
    return merged
