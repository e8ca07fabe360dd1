import numpy as np
import pytest
from scipy.interpolate import CubicSpline

from cusemo_batch.silence import TimeMap
from cusemo_batch.timegrid import (bin_coverage, interval_overlaps, pool_frames, pool_intervals, pooling_matrix,
                                     resample_track)


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


def test_interval_overlaps_against_brute_force():
    rng = np.random.default_rng(3)
    starts = np.sort(rng.uniform(0, 9, 200))
    ends = starts + rng.uniform(0, 0.7, 200)
    bin_s, n_bins = 0.3, 30
    piece, k, w = interval_overlaps(starts, ends, bin_s, n_bins)
    got = np.zeros((len(starts), n_bins))
    np.add.at(got, (piece, k), w)
    ref = np.zeros_like(got)
    for i, (a, b) in enumerate(zip(starts, ends)):
        for kk in range(n_bins):
            ref[i, kk] = max(0.0, min(b, (kk + 1) * bin_s) - max(a, kk * bin_s))
    np.testing.assert_allclose(got, ref, atol=1e-12)


def test_scorer_pooling_is_training_pooling_for_uncut_frames():
    """One pooling: frames laid end to end, pooled as pieces, equal the training matrix -- also for
    windows that split frames (0.3 s = 9.6 frames)."""
    rng = np.random.default_rng(0)
    frames = rng.normal(size=(320, 2))
    frame_s = 1 / 32
    starts, ends, owner = TimeMap.identity(10.0).frame_pieces(len(frames), frame_s)
    assert len(starts) == 320 and (owner == np.arange(320)).all()
    for bin_s in (0.5, 0.3, 0.04):
        n_bins = int(np.ceil(10.0 / bin_s - 1e-9))
        np.testing.assert_allclose(pool_intervals(frames, starts, ends, owner, bin_s, n_bins),
                                   pooling_matrix(len(frames), frame_s, bin_s, n_bins) @ frames, atol=1e-12)


def test_a_frame_straddling_a_silence_cut_counts_on_both_sides():
    """Compressed audio = original [0, 1.01) + [3, 4): the cut falls 10 ms into frame 32 (1.0..1.03125
    compressed). Its first 10 ms belong to original 1.00..1.01, the rest to 3.00..3.02125; a 0.5 s
    window holds exactly the audio it covers (hand-computed weights)."""
    tm = TimeMap(np.array([0.0, 1.01]), np.array([0.0, 3.0]), np.array([1.01, 1.0]))
    starts, ends, owner = tm.frame_pieces(64, 1 / 32)
    cut = np.flatnonzero(owner == 32)
    np.testing.assert_allclose(starts[cut], [1.0, 3.0])
    np.testing.assert_allclose(ends[cut], [1.01, 3.0 + 1 / 32 - 0.01])
    values = np.zeros(64)
    values[32] = 1.0
    pooled = pool_intervals(values, starts, ends, owner, 0.5, 8)
    # window [1.0, 1.5): 10 ms of frame 32 out of 10 ms covered -> 1; window [3.0, 3.5) is fully
    # covered, 21.25 ms of it by frame 32 (the rest by frames 33.. that hold 0)
    assert pooled[2] == pytest.approx(1.0)
    assert pooled[6] == pytest.approx(0.02125 / 0.5)
    assert np.isnan(pooled[3]) and np.isnan(pooled[4]) and np.isnan(pooled[5])  # removed silence
