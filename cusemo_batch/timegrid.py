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

The scorer's ``--rate`` windows are in *original* call time, after undoing silence compression: a
frame next to a cut covers audio from both sides of it, so an overlap is not defined there, and the
scorer assigns each frame to the window that holds its centre (``Scorer.timeseries``). Away from
cuts the two poolings are identical whenever the window is a whole number of frames (500 ms = 16
frames of 31.25 ms: every frame lies inside one window); they differ only for the frames at a cut
and for window lengths that split frames.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:  # scipy is imported where it is used: the CLI and the label modules load this one
    from scipy import sparse


def pooling_matrix(n_frames: int, frame_s: float, bin_s: float, n_bins: int | None = None) -> sparse.csr_matrix:
    """Sparse ``[n_bins, n_frames]`` matrix whose row ``k`` averages frames over bin ``k``.

    Weights are the overlap (seconds) of each frame with the bin divided by the covered part of the
    bin, so rows sum to 1 wherever a bin touches at least one frame. ``n_bins`` defaults to the bins
    that start before the end of the last frame (a partly covered final bin averages what exists;
    use :func:`bin_coverage` to mask it).
    """
    total = n_frames * frame_s
    if n_bins is None:
        n_bins = int(np.ceil(total / bin_s - 1e-9)) if n_frames else 0
    rows, cols, vals = [], [], []
    f_edges = np.arange(n_frames + 1) * frame_s
    for k in range(n_bins):
        b0, b1 = k * bin_s, (k + 1) * bin_s
        i0 = max(int(np.floor(b0 / frame_s + 1e-9)), 0)
        i1 = min(int(np.ceil(b1 / frame_s - 1e-9)), n_frames)
        if i1 <= i0:
            continue
        idx = np.arange(i0, i1)
        overlap = np.minimum(f_edges[idx + 1], b1) - np.maximum(f_edges[idx], b0)
        keep = overlap > 1e-12
        idx, overlap = idx[keep], overlap[keep]
        if overlap.sum() <= 0:
            continue
        rows.append(np.full(idx.size, k))
        cols.append(idx)
        vals.append(overlap / overlap.sum())
    if rows:
        r, c, v = np.concatenate(rows), np.concatenate(cols), np.concatenate(vals)
    else:
        r = c = np.zeros(0, dtype=int)
        v = np.zeros(0)
    from scipy import sparse

    return sparse.csr_matrix((v, (r, c)), shape=(n_bins, n_frames))


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
