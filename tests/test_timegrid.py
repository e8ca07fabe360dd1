import numpy as np
import pytest
from scipy.interpolate import CubicSpline

from cusemo_batch.timegrid import bin_coverage, pool_frames, pooling_matrix, resample_track


def test_spline_resampling_keeps_values_at_original_points():
    rng = np.random.default_rng(1)
    v = rng.uniform(-1, 1, 40)  # 40 bins of 500 ms
    # 500 ms -> 100 ms: every 5th new bin centre (0.25 s + k*0.5 s) is an original centre.
    up = resample_track(v, 0.5, 0.1)
    assert len(up) == 200
    np.testing.assert_allclose(up[2::5], v, atol=1e-9)
    np.testing.assert_allclose(resample_track(v, 0.5, 0.5), v)
    # matches scipy's cubic spline directly inside the knot range
    ref = CubicSpline((np.arange(40) + 0.5) * 0.5, v)((np.arange(200)[3:-3] + 0.5) * 0.1)
    np.testing.assert_allclose(up[3:-3], ref, atol=1e-12)


def test_pooling_32fps_to_500ms_is_mean_of_16_frames():
    frames = np.arange(64, dtype=float)  # 2 s at 32 frames/s
    pooled = pool_frames(frames, 1 / 32, 0.5)
    np.testing.assert_allclose(pooled, [frames[i:i + 16].mean() for i in range(0, 64, 16)])


def test_pooling_fractional_overlap_40ms():
    # 1/32 s frames (31.25 ms) into 40 ms bins: bin 0 = frame0 (31.25 ms) + 8.75 ms of frame1.
    frames = np.array([1.0, 2.0, 3.0, 4.0])
    m = pooling_matrix(4, 1 / 32, 0.04)
    np.testing.assert_allclose(m.sum(axis=1).A1, 1.0)
    assert (m @ frames)[0] == pytest.approx((31.25 * 1 + 8.75 * 2) / 40)
    np.testing.assert_allclose(bin_coverage(4, 1 / 32, 0.04, m.shape[0]), [1.0, 1.0, 1.0, 0.125])


def test_centre_and_overlap_pooling_agree_when_windows_hold_whole_frames():
    """timegrid's note: 500 ms windows of 31.25 ms frames -- the scorer's centre assignment and the
    training's overlap weights give the same window means (away from silence cuts)."""
    import numpy as np

    from cusemo_batch.timegrid import pooling_matrix

    rng = np.random.default_rng(0)
    frames = rng.normal(size=320)  # 10 s at 32 frames/s
    frame_s, bin_s = 1 / 32, 0.5
    overlap = pooling_matrix(len(frames), frame_s, bin_s) @ frames
    win = ((np.arange(len(frames)) + 0.5) * frame_s / bin_s).astype(int)
    centre = np.bincount(win, weights=frames) / np.bincount(win)
    np.testing.assert_allclose(overlap, centre, atol=1e-12)
    # a window that splits frames (0.3 s = 9.6 frames): the two differ
    overlap3 = pooling_matrix(len(frames), frame_s, 0.3) @ frames
    win3 = ((np.arange(len(frames)) + 0.5) * frame_s / 0.3).astype(int)
    centre3 = np.bincount(win3, weights=frames) / np.bincount(win3)
    assert np.abs(overlap3[: len(centre3)] - centre3).max() > 1e-3
