"""Paired significance for the experiment reports: Wilcoxon signed-rank against the baseline row."""

from __future__ import annotations

from typing import Iterable

import numpy as np


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
