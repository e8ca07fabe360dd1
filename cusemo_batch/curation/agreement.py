"""Inter-annotator agreement: ICC, Pearson and Krippendorff's alpha, per call and for the context.

The paper measures agreement per call and dimension with **ICC(3,1)** (Shrout & Fleiss 1979: two-way
mixed model, consistency, single measures): the time bins of a call are the *targets*, the
annotators the *judges*. A rater's constant offset (one who always rates a bit more positively) does
not lower ICC(3,1), a different shape of the trajectory does. Alongside we give ICC(3,k) (the
reliability of the *mean* of the k annotators, i.e. of the gold standard), Pearson's r (mean over
annotator pairs) and Krippendorff's alpha at the interval level.

* :func:`icc` computes all six Shrout & Fleiss forms from the two-way ANOVA mean squares
  (a formula; tested against the paper's Table 2 example).
* :func:`pearson` is :func:`scipy.stats.pearsonr`.
* :func:`krippendorff_alpha` uses the ``krippendorff`` package, except at the interval level where
  it uses the closed form of the same coefficient (:func:`interval_alpha`): the package builds a
  units x values x values coincidence array, and continuous tracks have as many distinct values
  as samples (a 5-minute call, 600 bins x 2 raters, would need ~7 GB). The closed form is exact
  and O(n); tests check it against the package and against Krippendorff's published example.

Context variables (empathy, satisfaction, ... one row per annotator in ``context.csv``) get Pearson
with its p-value between the first and the second annotator of each call (rows ordered by
annotator name) and Krippendorff's alpha (interval for numbers, nominal for categories).

Per-call p-values are deliberately *not* reported for the continuous tracks: successive bins are
strongly autocorrelated, so the independence assumption behind them does not hold.
"""

from __future__ import annotations

import csv
import math
import warnings
from dataclasses import asdict, dataclass
from itertools import combinations
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np
import polars as pl

from cusemo_batch.text import is_number

DIMENSIONS = ("valence", "arousal")
TRACK_STATISTICS = ("icc_3_1", "icc_3_k", "pearson_r", "alpha")


# ------------------------------------------------------------------------------------------ ICC
@dataclass(frozen=True)
class ICC:
    """The six intraclass correlations of Shrout & Fleiss (1979) and the ANOVA behind them.

    ``bms``: between-targets mean square, ``jms``: between-judges, ``ems``: residual (two-way),
    ``wms``: within-target (one-way). ``icc_3_1`` is the paper's statistic.
    """

    n_targets: int
    n_judges: int
    bms: float
    jms: float
    ems: float
    wms: float
    icc_1_1: float
    icc_2_1: float
    icc_3_1: float
    icc_1_k: float
    icc_2_k: float
    icc_3_k: float

    def as_dict(self) -> dict[str, float]:
        return asdict(self)


def icc(ratings: np.ndarray) -> ICC:
    """All Shrout & Fleiss ICCs of a complete ``ratings[n_targets, k_judges]`` matrix.

    ICC(3,1) = (BMS - EMS) / (BMS + (k-1) EMS)  and  ICC(3,k) = (BMS - EMS) / BMS, with
    BMS = k * sum_i (mean_i - mean)^2 / (n-1) and EMS = (SS_total - SS_targets - SS_judges) / ((n-1)(k-1)).
    NaN when undefined (no variance at all, fewer than 2 targets or judges).
    """
    x = np.asarray(ratings, dtype=np.float64)
    if x.ndim != 2:
        raise ValueError(f"ratings must be a 2-D array [targets, judges], got shape {x.shape}")
    if not np.all(np.isfinite(x)):
        raise ValueError("ratings must be complete and finite (ICC needs every judge on every target)")
    n, k = x.shape
    if n < 2 or k < 2:
        nan = math.nan
        return ICC(n, k, nan, nan, nan, nan, nan, nan, nan, nan, nan, nan)
    grand = x.mean()
    ss_total = float(((x - grand) ** 2).sum())
    if ss_total <= (1e-9 * max(float(np.abs(x).max()), 1e-300)) ** 2 * x.size:  # flat up to rounding
        nan = math.nan
        return ICC(n, k, 0.0, 0.0, 0.0, 0.0, nan, nan, nan, nan, nan, nan)
    ss_rows = float(k * ((x.mean(axis=1) - grand) ** 2).sum())
    ss_cols = float(n * ((x.mean(axis=0) - grand) ** 2).sum())
    ss_err = max(ss_total - ss_rows - ss_cols, 0.0)
    bms = ss_rows / (n - 1)
    jms = ss_cols / (k - 1)
    ems = ss_err / ((n - 1) * (k - 1))
    wms = (ss_cols + ss_err) / (n * (k - 1))
    return ICC(
        n, k, bms, jms, ems, wms,
        icc_1_1=_ratio(bms - wms, bms + (k - 1) * wms),
        icc_2_1=_ratio(bms - ems, bms + (k - 1) * ems + k * (jms - ems) / n),
        icc_3_1=_ratio(bms - ems, bms + (k - 1) * ems),
        icc_1_k=_ratio(bms - wms, bms),
        icc_2_k=_ratio(bms - ems, bms + (jms - ems) / n),
        icc_3_k=_ratio(bms - ems, bms),
    )


def icc_3_1(ratings: np.ndarray) -> float:
    """ICC(3,1): two-way mixed, consistency, single measures (the paper's agreement statistic)."""
    return icc(ratings).icc_3_1


def _ratio(num: float, den: float) -> float:
    return float(num / den) if den != 0 else math.nan


# -------------------------------------------------------------------------------------- Pearson
def pearson(x: Sequence[float], y: Sequence[float]) -> tuple[float, float]:
    """Pearson's r and its two-sided p-value (:func:`scipy.stats.pearsonr`); NaNs when undefined."""
    from scipy import stats

    x, y = np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)
    ok = np.isfinite(x) & np.isfinite(y)
    x, y = x[ok], y[ok]
    if x.size < 3 or np.ptp(x) == 0 or np.ptp(y) == 0:
        return math.nan, math.nan
    res = stats.pearsonr(x, y)
    return float(res.statistic), float(res.pvalue)


# -------------------------------------------------------------------------------- Krippendorff
def krippendorff_alpha(data: np.ndarray, level: str = "interval") -> float:
    """Krippendorff's alpha of ``data[coders, units]`` (NaN = missing) at ``level``.

    ``interval`` uses :func:`interval_alpha` (exact closed form, O(n)); ``nominal``, ``ordinal`` and
    ``ratio`` use the ``krippendorff`` package. NaN when undefined (fewer than two pairable values,
    or a single value in the whole domain).
    """
    x = np.asarray(data, dtype=object if level == "nominal" else np.float64)
    if level == "interval":
        return interval_alpha(x)
    import krippendorff

    if level == "nominal":
        # Categories -> integer codes; None / NaN / "" stay missing.
        codes: dict[object, int] = {}
        num = np.full(x.shape, np.nan)
        for idx, v in np.ndenumerate(x):
            if v is None or v == "" or (isinstance(v, float) and math.isnan(v)):
                continue
            num[idx] = codes.setdefault(v, len(codes))
        x = num
    pairable = np.isfinite(x).sum(axis=0) >= 2
    if pairable.sum() == 0 or len(np.unique(x[:, pairable][np.isfinite(x[:, pairable])])) < 2:
        return math.nan
    try:
        return float(krippendorff.alpha(reliability_data=x, level_of_measurement=level))
    except (ValueError, ZeroDivisionError):
        return math.nan


def interval_alpha(data: np.ndarray) -> float:
    """Krippendorff's alpha, interval metric, of ``data[coders, units]`` (NaN = missing).

    With squared differences the coincidence-matrix definition collapses to sums of squares:
    alpha = 1 - (n - 1)/n * sum_u [m_u * SS_u / (m_u - 1)] / SS, where only units with m_u >= 2
    values count, n is the number of their values, SS_u the sum of squares around the unit mean and
    SS around the mean of all n values (Krippendorff 2011, "Computing Krippendorff's
    alpha-reliability", with delta^2 = (c - k)^2).
    """
    x = np.asarray(data, dtype=np.float64)
    if x.ndim != 2:
        raise ValueError(f"reliability data must be 2-D [coders, units], got shape {x.shape}")
    ok = np.isfinite(x)
    m = ok.sum(axis=0)
    keep = m >= 2
    if not keep.any():
        return math.nan
    x, ok, m = x[:, keep], ok[:, keep], m[keep]
    vals = np.where(ok, x, 0.0)
    unit_mean = vals.sum(axis=0) / m
    ss_u = (np.where(ok, x - unit_mean, 0.0) ** 2).sum(axis=0)
    n = int(m.sum())
    grand = vals.sum() / n
    ss = float((np.where(ok, x - grand, 0.0) ** 2).sum())
    if n < 2 or ss <= (1e-9 * max(float(np.abs(vals).max()), 1e-300)) ** 2 * n:  # no variance (up to rounding)
        return math.nan
    return float(1.0 - (n - 1) / n * float((m * ss_u / (m - 1)).sum()) / ss)


# ------------------------------------------------------------------------- per-call agreement
def track_matrix(call, dimension: str) -> np.ndarray:
    """``[n_bins, n_annotators]`` ratings of one call in [-1, 1], over the bins all annotators rated."""
    if dimension not in DIMENSIONS:
        raise ValueError(f"unknown dimension {dimension!r}; expected one of {DIMENSIONS}")
    n = min(len(t) for t in call.tracks)
    return np.stack([getattr(t, dimension)[:n] / t.magnitude for t in call.tracks], axis=1)


def call_role(call) -> str | None:
    role = (call.context or {}).get("role")
    return str(role) if role not in (None, "") else None


def call_agreement(call, dimensions: Iterable[str] = DIMENSIONS) -> list[dict[str, object]]:
    """One row per dimension: ICC(3,1), ICC(3,k), mean pairwise Pearson r, interval alpha."""
    rows = []
    for dim in dimensions:
        x = track_matrix(call, dim)
        res = icc(x)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            rs = [pearson(x[:, i], x[:, j])[0] for i, j in combinations(range(x.shape[1]), 2)]
        rows.append({
            "call_id": call.call_id,
            "role": call_role(call),
            "dimension": dim,
            "n_annotators": x.shape[1],
            "n_bins": x.shape[0],
            "bin_s": float(call.tracks[0].bin_s),
            "duration_s": float(call.duration_s),
            "icc_3_1": res.icc_3_1,
            "icc_3_k": res.icc_3_k,
            "pearson_r": float(np.mean(rs)) if rs and np.all(np.isfinite(rs)) else math.nan,
            "alpha": interval_alpha(x.T),
        })
    return rows


CALL_SCHEMA = {
    "call_id": pl.Utf8, "role": pl.Utf8, "dimension": pl.Utf8, "n_annotators": pl.Int32,
    "n_bins": pl.Int32, "bin_s": pl.Float64, "duration_s": pl.Float64, "icc_3_1": pl.Float64,
    "icc_3_k": pl.Float64, "pearson_r": pl.Float64, "alpha": pl.Float64,
}


def corpus_agreement(corpus, dimensions: Iterable[str] = DIMENSIONS) -> pl.DataFrame:
    """Per call and dimension agreement of a :class:`~cusemo_batch.training.corpus.Corpus`."""
    dims = tuple(dimensions)
    rows = [r for c in corpus.calls for r in call_agreement(c, dims)]
    return pl.DataFrame(rows, schema=CALL_SCHEMA, orient="row") if rows else pl.DataFrame(schema=CALL_SCHEMA)


def summarise(per_call: pl.DataFrame, statistics: Sequence[str] = TRACK_STATISTICS) -> pl.DataFrame:
    """Mean, sd (n-1), min, max of each statistic per role and dimension (the paper's summary).

    Calls without a role are grouped as ``all``; with several roles an ``all`` group is added.
    NaN values (undefined agreement, e.g. a flat track) are counted in ``n_undefined`` and left out.
    """
    df = per_call.with_columns(pl.col("role").fill_null("all"))
    roles = sorted(df["role"].unique().to_list())
    if len(roles) > 1:
        df = pl.concat([df, df.with_columns(pl.lit("all").alias("role"))])
        roles = roles + ["all"]
    out = []
    for role in roles:
        for dim in DIMENSIONS:
            sub = df.filter((pl.col("role") == role) & (pl.col("dimension") == dim))
            if sub.height == 0:
                continue
            for stat in statistics:
                v = sub[stat].to_numpy().astype(np.float64)
                fin = v[np.isfinite(v)]
                out.append({
                    "role": role, "dimension": dim, "statistic": stat, "n_calls": int(v.size),
                    "n_undefined": int(v.size - fin.size),
                    "mean": float(fin.mean()) if fin.size else math.nan,
                    "sd": float(fin.std(ddof=1)) if fin.size > 1 else math.nan,
                    "min": float(fin.min()) if fin.size else math.nan,
                    "max": float(fin.max()) if fin.size else math.nan,
                })
    schema = {"role": pl.Utf8, "dimension": pl.Utf8, "statistic": pl.Utf8, "n_calls": pl.Int32,
              "n_undefined": pl.Int32, "mean": pl.Float64, "sd": pl.Float64, "min": pl.Float64,
              "max": pl.Float64}
    return pl.DataFrame(out, schema=schema, orient="row") if out else pl.DataFrame(schema=schema)


# ---------------------------------------------------------------------------- context agreement
CONTEXT_SKIP = ("call_id", "annotator")


def read_context_ratings(path: str | Path) -> dict[str, dict[str, list[str]]]:
    """``{column: {call_id: [value of annotator 1, value of annotator 2, ...]}}`` from context.csv.

    Rows of a call are ordered by annotator name; empty cells are kept as ``""`` (missing), so the
    k-th value of every call belongs to the same rater slot.
    """
    with open(path, newline="", encoding="utf-8-sig") as f:
        reader = csv.DictReader(f)
        columns = [c.strip() for c in (reader.fieldnames or []) if c is not None]
        if "call_id" not in columns:
            raise ValueError(f"{path}: missing column call_id")
        rows = [{(k or "").strip(): (v or "").strip() for k, v in r.items() if k is not None} for r in reader]
    per_call: dict[str, list[dict[str, str]]] = {}
    for r in rows:
        per_call.setdefault(r.get("call_id", ""), []).append(r)
    out: dict[str, dict[str, list[str]]] = {}
    for col in columns:
        if col in CONTEXT_SKIP:
            continue
        out[col] = {cid: [r.get(col, "") for r in sorted(rs, key=lambda r: r.get("annotator", ""))]
                    for cid, rs in per_call.items()}
    return out


CONTEXT_SCHEMA = {
    "variable": pl.Utf8, "level": pl.Utf8, "n_calls": pl.Int32, "n_values": pl.Int32,
    "pearson_r": pl.Float64, "pearson_p": pl.Float64, "alpha": pl.Float64, "percent_agreement": pl.Float64,
}


def context_agreement(path: str | Path) -> pl.DataFrame:
    """Agreement of each context variable between annotators (calls with >= 2 values only).

    Numeric variables: Pearson r and p between the first two rater slots, interval alpha over all
    raters. Categorical ones: nominal alpha and the share of calls where the first two agree.
    Columns with no call rated twice are left out (e.g. a consolidated context.csv).
    """
    ratings = read_context_ratings(path)
    out = []
    for col, by_call in ratings.items():
        multi = {cid: vs for cid, vs in by_call.items() if sum(1 for v in vs if v) >= 2}
        if not multi:
            continue
        width = max(len(vs) for vs in multi.values())
        values = [v for vs in multi.values() for v in vs if v]
        numeric = all(is_number(v) for v in values)
        if numeric:
            mat = np.full((width, len(multi)), np.nan)
            for j, vs in enumerate(multi.values()):
                for i, v in enumerate(vs):
                    if v:
                        mat[i, j] = float(v)
            both = np.isfinite(mat[0]) & np.isfinite(mat[1])
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                r, p = pearson(mat[0, both], mat[1, both])
            alpha = krippendorff_alpha(mat, "interval")
            agree = float(np.mean(mat[0, both] == mat[1, both])) if both.any() else math.nan
            level = "interval"
        else:
            mat = np.full((width, len(multi)), None, dtype=object)
            for j, vs in enumerate(multi.values()):
                for i, v in enumerate(vs):
                    mat[i, j] = v or None
            both = np.array([a is not None and b is not None for a, b in zip(mat[0], mat[1])])
            r = p = math.nan
            alpha = krippendorff_alpha(mat, "nominal")
            agree = float(np.mean([a == b for a, b in zip(mat[0, both], mat[1, both])])) if both.any() else math.nan
            level = "nominal"
        out.append({"variable": col, "level": level, "n_calls": len(multi), "n_values": len(values),
                    "pearson_r": r, "pearson_p": p, "alpha": alpha, "percent_agreement": agree})
    return pl.DataFrame(out, schema=CONTEXT_SCHEMA, orient="row") if out else pl.DataFrame(schema=CONTEXT_SCHEMA)


def context_pairs(path: str | Path) -> dict[str, np.ndarray]:
    """Numeric context variables as ``[n_calls, 2]`` (first and second rater) for scatter plots."""
    out = {}
    for col, by_call in read_context_ratings(path).items():
        pairs = [(vs[0], vs[1]) for vs in by_call.values() if len(vs) >= 2 and vs[0] and vs[1]]
        if len(pairs) >= 2 and all(is_number(a) and is_number(b) for a, b in pairs):
            out[col] = np.array([[float(a), float(b)] for a, b in pairs])
    return out



# ----------------------------------------------------------------------------------------- plots
def plot_icc(per_call: pl.DataFrame, out_dir: str | Path, statistic: str = "icc_3_1",
             threshold: float | None = 0.7) -> Path:
    """Histogram of per-call ``statistic`` per dimension (columns) and role (rows), as PNG.

    Dashed black line: the mean; dotted red line: ``threshold`` (the paper's selection rule, 0.7).
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from cusemo_batch.files import atomic_path

    df = per_call.with_columns(pl.col("role").fill_null("all"))
    roles = sorted(df["role"].unique().to_list()) or ["all"]
    dims = [d for d in DIMENSIONS if d in set(df["dimension"].to_list())] or list(DIMENSIONS)
    vals = df[statistic].to_numpy().astype(float)
    lo = min(-0.2, float(np.nanmin(vals)) if np.isfinite(vals).any() else 0.0)
    bins = np.linspace(np.floor(lo * 10) / 10, 1.0, int(round((1.0 - np.floor(lo * 10) / 10) / 0.05)) + 1)
    label = {"icc_3_1": "ICC(3,1)", "icc_3_k": "ICC(3,k)", "pearson_r": "Pearson r", "alpha": "Krippendorff alpha"}
    fig, axes = plt.subplots(len(roles), len(dims), figsize=(4.2 * len(dims), 2.8 * len(roles)),
                             squeeze=False, sharex=True)
    for i, role in enumerate(roles):
        for j, dim in enumerate(dims):
            ax = axes[i][j]
            v = df.filter((pl.col("role") == role) & (pl.col("dimension") == dim))[statistic].to_numpy().astype(float)
            v = v[np.isfinite(v)]
            ax.hist(v, bins=bins, color="#4C72B0" if dim == "valence" else "#DD8452", edgecolor="white")
            if threshold is not None:
                ax.axvline(threshold, color="#C44E52", ls=":", lw=1.2)
            if v.size:
                ax.axvline(v.mean(), color="k", ls="--", lw=1)
                sd = f", sd {v.std(ddof=1):.2f}" if v.size > 1 else ""
                ax.set_title(f"{role} {dim}: mean {v.mean():.2f}{sd} (n={v.size})", fontsize=9)
            else:
                ax.set_title(f"{role} {dim}: no defined values", fontsize=9)
            ax.set_xlabel(f"{label.get(statistic, statistic)} per call")
            ax.set_ylabel("calls")
    fig.tight_layout()
    out = Path(out_dir) / f"{statistic}_distribution.png"
    with atomic_path(out) as tmp:
        fig.savefig(tmp, dpi=120, format="png")
    plt.close(fig)
    return out


def plot_context(pairs: dict[str, np.ndarray], out_dir: str | Path) -> Path | None:
    """Scatter of first vs second annotator for each numeric context variable (PNG), if any."""
    if not pairs:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from cusemo_batch.files import atomic_path

    names = sorted(pairs)
    fig, axes = plt.subplots(1, len(names), figsize=(3.2 * len(names), 3.2), squeeze=False)
    rng = np.random.default_rng(0)
    for ax, name in zip(axes[0], names):
        xy = pairs[name]
        integer = np.all(xy == np.round(xy))
        jitter = rng.uniform(-0.15, 0.15, xy.shape) if integer else np.zeros(xy.shape)  # integer scales: show stacked points
        ax.scatter(xy[:, 0] + jitter[:, 0], xy[:, 1] + jitter[:, 1], s=10, alpha=0.6)
        lo, hi = float(xy.min()), float(xy.max())
        ax.plot([lo, hi], [lo, hi], color="k", lw=0.8, ls="--")
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            r, _ = pearson(xy[:, 0], xy[:, 1])
        ax.set_title(f"{name}: r = {r:.2f} (n={len(xy)})", fontsize=9)
        ax.set_xlabel("annotator 1")
        ax.set_ylabel("annotator 2")
    fig.tight_layout()
    out = Path(out_dir) / "context_agreement.png"
    with atomic_path(out) as tmp:
        fig.savefig(tmp, dpi=120, format="png")
    plt.close(fig)
    return out
