"""Time grids: model frames (32/s) <-> label bins (e.g. 500 ms), and cubic-spline label resampling.

Convention used everywhere in the product: a *bin* ``k`` of width ``w`` covers ``[k*w, (k+1)*w)``
seconds; its value is the mean of the signal over that interval (this is what a Darma track stores:
the mean joystick position over the bin, stamped with the bin's *end* time). Model frame ``i``
covers ``[i*hop, (i+1)*hop)`` samples.

Alignment between the model's 32 frames/s and labels (the paper leaves it open): frame outputs are
**averaged over each label bin, weighted by overlap** (the exact integral of the piecewise-constant
frame signal). The loss and the metrics are computed at the label rate, like the annotation, so a
coarser label rate asks the model for smoother trajectories -- consistent with the paper's finding
that 500 ms labels give the best CCC.

One pooling for training and scoring: both go through :func:`interval_overlaps`. Training pools
frames laid end to end (:func:`pooling_matrix`); the scorer's ``--rate`` windows are in *original*
call time, after undoing silence compression, so it first cuts each frame at the silence cuts
(``TimeMap.frame_pieces``: a frame next to a cut covers audio from both sides of it, and each piece
keeps its own place in call time) and pools the pieces with :func:`pool_intervals`. Away from cuts
the two are the same computation.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:  # scipy is imported where it is used: the CLI and the label modules load this one
    from scipy import sparse


# Version of the scorer's window pooling; part of its result hash, so results stored under another
# rule are rescored. 2: overlap-weighted frame pieces (before: each frame to the window holding its
# centre, which differed from training at silence cuts and for windows that split frames).
POOLING_VERSION = 2


def interval_overlaps(starts: np.ndarray, ends: np.ndarray, bin_s: float,
                      n_bins: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Every (interval, bin) pair that overlaps, as ``(interval_index, bin_index, overlap_s)``.

    Intervals ``[starts[i], ends[i])`` (seconds) against bins ``[k*bin_s, (k+1)*bin_s)`` for
    ``k < n_bins``; vectorised (an interval covers few bins), so a 2 h call's 230 k frames cost
    milliseconds. Empty intervals and parts outside the bins are dropped.
    """
    starts = np.asarray(starts, dtype=np.float64)
    ends = np.asarray(ends, dtype=np.float64)
    k0 = np.clip(np.floor(starts / bin_s + 1e-9).astype(np.int64), 0, max(n_bins - 1, 0))
    k1 = np.clip(np.ceil(ends / bin_s - 1e-9).astype(np.int64), 0, n_bins)  # exclusive
    span = np.maximum(k1 - k0, 0)
    idx = np.repeat(np.arange(starts.size), span)
    k = np.repeat(k0, span) + (np.arange(idx.size) - np.repeat(np.cumsum(span) - span, span))
    overlap = np.minimum(ends[idx], (k + 1) * bin_s) - np.maximum(starts[idx], k * bin_s)
    keep = overlap > 1e-12
    return idx[keep], k[keep], overlap[keep]


def pooling_matrix(n_frames: int, frame_s: float, bin_s: float, n_bins: int | None = None) -> sparse.csr_matrix:
    """Sparse ``[n_bins, n_frames]`` matrix whose row ``k`` averages frames over bin ``k``.

    Weights are the overlap (seconds) of each frame with the bin divided by the covered part of the
    bin, so rows sum to 1 wherever a bin touches at least one frame. ``n_bins`` defaults to the bins
    that start before the end of the last frame (a partly covered final bin averages what exists;
    use :func:`bin_coverage` to mask it).
    """
    if n_bins is None:
        n_bins = int(np.ceil(n_frames * frame_s / bin_s - 1e-9)) if n_frames else 0
    edges = np.arange(n_frames + 1) * frame_s
    col, row, w = interval_overlaps(edges[:-1], edges[1:], bin_s, n_bins)
    covered = np.bincount(row, weights=w, minlength=n_bins)
    from scipy import sparse

    return sparse.csr_matrix((w / covered[row], (row, col)), shape=(n_bins, n_frames))


def pool_intervals(values: np.ndarray, starts: np.ndarray, ends: np.ndarray, owner: np.ndarray,
                   bin_s: float, n_bins: int) -> np.ndarray:
    """Overlap-weighted mean per bin of ``values[owner[i]]`` held over ``[starts[i], ends[i])``.

    The scorer's pooling: the intervals are the pieces of each frame in original call time (a
    frame is cut in two where silence was removed), ``owner`` the frame of each piece. ``values``
    is ``[n_frames]`` or ``[n_frames, d]``; the result ``[n_bins]`` or ``[n_bins, d]``, NaN where
    no piece touches a bin. For frames laid end to end this equals ``pooling_matrix(...) @ values``.
    """
    piece, k, w = interval_overlaps(starts, ends, bin_s, n_bins)
    v = np.asarray(values, dtype=np.float64)[np.asarray(owner, dtype=np.int64)[piece]]
    v2 = v.reshape(len(v), -1)
    total = np.bincount(k, weights=w, minlength=n_bins)
    sums = np.stack([np.bincount(k, weights=w * v2[:, j], minlength=n_bins) for j in range(v2.shape[1])], axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        out = np.where(total[:, None] > 0, sums / total[:, None], np.nan)
    return out[:, 0] if np.ndim(values) == 1 else out


def bin_coverage(n_frames: int, frame_s: float, bin_s: float, n_bins: int) -> np.ndarray:
    """Fraction (0..1) of each bin covered by frames; 1 for complete bins."""
    starts = np.arange(n_bins) * bin_s
    covered = np.clip(n_frames * frame_s - starts, 0.0, bin_s)
    return covered / bin_s


def pool_frames(frames: np.ndarray, frame_s: float, bin_s: float) -> np.ndarray:
    """Average ``frames`` (``[n_frames]`` or ``[n_frames, d]``) into bins of ``bin_s`` seconds."""
    return pooling_matrix(len(frames), frame_s, bin_s) @ frames


def resample_track(values: np.ndarray, bin_s: float, new_bin_s: float, n_new: int | None = None) -> np.ndarray:
    """Resample a binned track to another bin width with a cubic spline through the bin centres.

    The spline passes exactly through the original values at the original centres (so resampling
    to the same grid is the identity); outside the first/last centre it is held constant rather
    than extrapolated, because a cubic runs away quickly past its knots. NaNs must be filled first.
    """
    values = np.asarray(values, dtype=np.float64)
    n = len(values)
    if n_new is None:
        n_new = int(round(n * bin_s / new_bin_s))
    new_centres = (np.arange(n_new) + 0.5) * new_bin_s
    if n == 0:
        return np.full(n_new, np.nan)
    if n == 1:
        return np.full(n_new, values[0])
    if np.isclose(bin_s, new_bin_s) and n_new == n:
        return values.copy()
    centres = (np.arange(n) + 0.5) * bin_s
    from scipy.interpolate import CubicSpline

    spline = CubicSpline(centres, values, bc_type="not-a-knot" if n > 3 else "natural")
    t = np.clip(new_centres, centres[0], centres[-1])
    return spline(t)
