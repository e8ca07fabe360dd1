"""Concordance correlation coefficient (Lin, 1989), the paper's metric and loss.

CCC = 2 * cov(x, y) / (var(x) + var(y) + (mean(x) - mean(y))^2), with population (1/n) moments.
It rewards both correlation and agreement in level and scale, so a model that tracks the shape of
a trajectory but sits at the wrong level scores low -- which is what analysts care about.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np


def ccc(x: np.ndarray, y: np.ndarray, mask: np.ndarray | None = None) -> float:
    """CCC of two sequences over the positions where ``mask`` is true (NaNs are always ignored).

    Returns ``nan`` for fewer than two valid points; 0 when both are constant but different.
    """
    x = np.asarray(x, dtype=np.float64).ravel()
    y = np.asarray(y, dtype=np.float64).ravel()
    if x.shape != y.shape:
        raise ValueError(f"shape mismatch: {x.shape} vs {y.shape}")
    valid = np.isfinite(x) & np.isfinite(y)
    if mask is not None:
        valid &= np.asarray(mask, dtype=bool).ravel()
    x, y = x[valid], y[valid]
    if x.size < 2:
        return float("nan")
    mx, my = x.mean(), y.mean()
    vx, vy = x.var(), y.var()
    cov = ((x - mx) * (y - my)).mean()
    denom = vx + vy + (mx - my) ** 2
    if denom == 0.0:
        return 1.0  # identical constants
    return float(2.0 * cov / denom)


def ccc_concat_and_mean(preds: Sequence[np.ndarray], golds: Sequence[np.ndarray]) -> tuple[float, float]:
    """CCC over the concatenation of all sequences, and the mean of per-sequence CCCs.

    Both are reported because they answer different questions: the concatenated CCC (the paper's
    choice for test sets) also rewards getting *between-call* level differences right; the
    per-call mean measures tracking *within* a call. Calls shorter than 2 points are skipped.
    """
    if len(preds) != len(golds):
        raise ValueError("preds and golds differ in length")
    if not preds:
        return float("nan"), float("nan")
    concat = ccc(np.concatenate([np.ravel(p) for p in preds]), np.concatenate([np.ravel(g) for g in golds]))
    per_call = [ccc(p, g) for p, g in zip(preds, golds)]
    per_call = [c for c in per_call if np.isfinite(c)]
    return concat, float(np.mean(per_call)) if per_call else float("nan")
