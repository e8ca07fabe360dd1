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
