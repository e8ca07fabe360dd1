import json

import numpy as np
import pytest

from cusemo_batch.audio import load_audio
from cusemo_batch.silence import (
    TimeMap,
    compress_silence,
    detect_speech,
    frame_energy_db,
    intervals_to_mask,
    speech_intervals,
    speech_mask,
)

SR = 8000


def _db(level_db: float) -> float:
    return 10 ** (level_db / 20)


def _noise(rng, seconds: float, level_db: float) -> np.ndarray:
    return rng.normal(0.0, _db(level_db), int(round(seconds * SR))).astype(np.float32)


def _layout(rng, parts):
    """``parts`` = [(kind, seconds)]: 'sil' = -60 dBFS noise, 'sp' = -20 dBFS noise bursts."""
    chunks, speech = [], []
    for kind, sec in parts:
        chunks.append(_noise(rng, sec, -20 if kind == "sp" else -60))
        speech.append(np.full(chunks[-1].size, kind == "sp"))
    return np.concatenate(chunks), np.concatenate(speech)


def _kept_indices(y: np.ndarray, tm: TimeMap) -> np.ndarray:
    """Original sample index of each compressed sample, through the time map."""
    return np.rint(tm.to_original(np.arange(y.size) / SR) * SR).astype(np.int64)


# --- compression and time map with a known speech mask ---------------------------------------------

def test_compression_keeps_speech_bit_exact_and_shortens_only_long_pauses():
    rng = np.random.default_rng(0)
    parts = [("sil", 0.5), ("sp", 1.0), ("sil", 2.0), ("sp", 1.0), ("sil", 5.0), ("sp", 1.0),
             ("sil", 3.0), ("sp", 1.0), ("sil", 0.5)]
    x, is_speech = _layout(rng, parts)
    y, tm = compress_silence(x, SR, speech=is_speech)

    assert y.dtype == x.dtype
    assert y.size == x.size - 4 * SR  # only the 5 s pause shrinks (to 1 s); exactly 3 s is kept
    assert tm.removed_s == pytest.approx(4.0) and tm.original_duration == pytest.approx(x.size / SR)
    idx = _kept_indices(y, tm)
    assert np.all(np.diff(idx) > 0)  # a subsequence, in order
    np.testing.assert_array_equal(y, x[idx])  # every kept sample is the original sample at that index
    assert np.isin(np.flatnonzero(is_speech), idx).all()  # every speech sample survives
    np.testing.assert_array_equal(y[is_speech[idx]], x[is_speech])  # ... bit-exactly, in order
    # the removed part is the middle of the 5 s pause: 0.5 s kept on each side of the cut
    np.testing.assert_allclose(tm.removed_intervals(), [[4.5 + 0.5, 4.5 + 4.5]])
    # pauses in the output: 2 s and exactly 3 s kept whole, 5 s -> 1 s
    out_speech = is_speech[idx]
    starts = np.flatnonzero(np.diff(out_speech.astype(int)) == 1) + 1
    ends = np.flatnonzero(np.diff(out_speech.astype(int)) == -1) + 1
    np.testing.assert_array_equal((starts[1:] - ends[:3]) / SR, [2.0, 1.0, 3.0])


def test_speech_as_intervals_equals_speech_as_mask():
    rng = np.random.default_rng(1)
    x, is_speech = _layout(rng, [("sp", 1.0), ("sil", 4.0), ("sp", 0.5)])
    y1, tm1 = compress_silence(x, SR, speech=is_speech)
    y2, tm2 = compress_silence(x, SR, speech=np.array([[0.0, 1.0], [5.0, 5.5]]))
    np.testing.assert_array_equal(y1, y2)
    assert tm1 == tm2
    with pytest.raises(ValueError, match="one value per sample"):
        compress_silence(x, SR, speech=np.ones(10, dtype=bool))
    with pytest.raises(ValueError, match="keep_s"):
        compress_silence(x, SR, min_silence_s=1.0, keep_s=2.0, speech=is_speech)


def test_time_map_inverts_exactly_and_maps_removed_time_to_the_cut():
    rng = np.random.default_rng(2)
    # long silences at both ends too: the start and end are compressed like any pause
    x, is_speech = _layout(rng, [("sil", 4.0), ("sp", 1.0), ("sil", 10.0), ("sp", 1.0), ("sil", 6.0)])
    y, tm = compress_silence(x, SR, speech=is_speech)
    assert tm.original_duration == pytest.approx(22.0) and tm.compressed_duration == pytest.approx(5.0)
    assert y.size == 5 * SR
    t = np.arange(y.size + 1) / SR
    np.testing.assert_allclose(tm.to_compressed(tm.to_original(t)), t, rtol=0, atol=1e-9)
    np.testing.assert_array_equal(y, x[_kept_indices(y, tm)])
    # removed parts: 0.5..3.5, 5.5..14.5, 16.5..21.5
    np.testing.assert_allclose(tm.removed_intervals(), [[0.5, 3.5], [5.5, 14.5], [16.5, 21.5]])
    np.testing.assert_allclose(tm.to_compressed([0.4, 2.0, 3.5, 10.0, 14.5, 15.0, 30.0]),
                               [0.4, 0.5, 0.5, 2.5, 2.5, 3.0, 13.0])
    # a cut point: as a start it is after the removed part, as an end it is before it
    assert tm.to_original(0.5) == pytest.approx(3.5)
    assert tm.to_original(0.5, end=True) == pytest.approx(0.5)
    a, b = tm.interval_to_original([0.0, 1.5, 1.75], [0.5, 2.75, 2.5])
    np.testing.assert_allclose(a, [0.0, 4.5, 4.75])
    np.testing.assert_allclose(b, [0.5, 14.75, 5.5])  # [1.5, 2.75) spans the cut at 2.5
    # monotone
    grid = np.linspace(-1, 25, 2001)
    assert np.all(np.diff(tm.to_compressed(grid)) >= 0)
    assert np.all(np.diff(tm.to_original(np.linspace(-1, 6, 2001))) > 0)


def test_time_map_serialisation_identity_and_validation():
    keep = np.ones(SR * 10, dtype=bool)
    keep[SR * 2: SR * 6] = False
    keep[-SR:] = False  # removal at the end is representable (zero-length end marker)
    tm = TimeMap.from_keep_mask(keep, SR)
    assert tm.original_duration == 10.0 and tm.compressed_duration == 5.0 and tm.removed_s == 5.0
    assert TimeMap.from_polars(tm.to_polars()) == tm
    assert TimeMap.from_dict(json.loads(json.dumps(tm.to_dict()))) == tm
    assert tm.to_polars().columns == ["compressed_start_s", "original_start_s", "duration_s"]
    assert float(tm.to_compressed(9.5)) == 5.0

    ident = TimeMap.identity(12.5)
    t = np.array([0.0, 3.3, 12.5])
    np.testing.assert_array_equal(ident.to_original(t), t)
    np.testing.assert_array_equal(ident.to_compressed(t), t)
    assert ident.removed_s == 0.0 and ident.removed_intervals().shape == (0, 2)

    with pytest.raises(ValueError, match="contiguous"):
        TimeMap([0.0, 2.0], [0.0, 5.0], [1.0, 1.0])
    with pytest.raises(ValueError, match="non-overlapping"):
        TimeMap([0.0, 1.0], [0.0, 0.5], [1.0, 1.0])
    with pytest.raises(ValueError, match="lacks"):
        TimeMap.from_dict({"duration_s": [1.0]})


# --- voice activity detection --------------------------------------------------------------------

def test_vad_on_bursts_and_compression_with_detected_speech():
    rng = np.random.default_rng(3)
    x, is_speech = _layout(rng, [("sil", 1.0), ("sp", 1.0), ("sil", 2.0), ("sp", 1.0), ("sil", 5.0),
                                 ("sp", 1.0), ("sil", 1.0)])
    iv = speech_intervals(x, SR)
    # three regions, each the burst plus the 200 ms hangover on both sides
    np.testing.assert_allclose(iv, [[0.8, 2.2], [3.8, 5.2], [9.8, 11.2]], atol=0.021)
    assert detect_speech(x, SR).shape == (-(-x.size // 160),)
    np.testing.assert_array_equal(speech_mask(x, SR), intervals_to_mask(iv, x.size, SR))
    y, tm = compress_silence(x, SR)
    # the 5 s pause minus hangover (4.6 s detected) becomes 1 s; the 2 s pause is kept
    assert tm.removed_s == pytest.approx(3.6, abs=0.05)
    assert np.isin(np.flatnonzero(is_speech), _kept_indices(y, tm)).all()


def test_no_speech_inputs():
    rng = np.random.default_rng(4)
    for x in (np.zeros(10 * SR, dtype=np.float32),          # digital silence
              _noise(rng, 10.0, -70),                      # faint line noise
              _noise(rng, 10.0, -30)):                     # loud but stationary noise
        assert not detect_speech(x, SR).any()
        assert speech_intervals(x, SR).shape == (0, 2)
        y, tm = compress_silence(x, SR)
        assert y.size == SR  # one silence of 10 s -> 1 s, real samples kept
        np.testing.assert_array_equal(y, np.concatenate([x[: SR // 2], x[-SR // 2:]]))
        assert tm.removed_s == pytest.approx(9.0)
    assert detect_speech(np.zeros(0, dtype=np.float32), SR).shape == (0,)
    y, tm = compress_silence(np.zeros(0, dtype=np.float32), SR)
    assert y.size == 0 and tm.original_duration == 0.0


def test_frame_energy_ignores_dc_offset_and_matches_direct_variance():
    x = np.full(SR, 0.5, dtype=np.float32)
    assert np.all(frame_energy_db(x, SR) <= -100)
    # long enough for several internal blocks, with a partial last frame
    x = np.random.default_rng(8).normal(0.01, 0.1, 170 * SR + 77).astype(np.float32)
    e = frame_energy_db(x, SR)
    ref = [10 * np.log10(np.var(x[i: i + 160].astype(np.float64))) for i in range(0, x.size, 160)]
    np.testing.assert_allclose(e, ref, atol=1e-9)


# --- real speech ---------------------------------------------------------------------------------

def _utterance(ravdess_dir, name: str, active_db: float = -20.0) -> np.ndarray:
    """A RAVDESS utterance trimmed to its speech (frames within 40 dB of its loudest), scaled so its
    active speech level is ``active_db`` dBFS (telephone speech sits around -26 to -16 dBFS)."""
    x = load_audio(ravdess_dir / "audio" / name, SR).astype(np.float64)
    e = frame_energy_db(x, SR)
    loud = np.flatnonzero(e > e.max() - 40)
    x = x[loud[0] * 160: (loud[-1] + 1) * 160]
    active = np.repeat(frame_energy_db(x, SR) > e.max() - 40, 160)[: x.size]
    return x * (_db(active_db) / np.sqrt(np.mean(x[active] ** 2)))


UTTERANCES = ("03-01-01-01-01-01-01.flac", "03-01-05-01-02-01-08.flac", "03-01-03-02-01-02-05.flac")


def _real_call(ravdess_dir, rng, gap_s: float, noise_db: float):
    utts = [_utterance(ravdess_dir, u) for u in UTTERANCES]
    pieces, truth, t = [], [], 0.0
    gaps = [0.5, 1.0, gap_s, 0.5]  # before, between 1-2 (short pause), between 2-3, after
    for i, u in enumerate(utts):
        pieces.append(np.zeros(int(gaps[i] * SR)))
        t += gaps[i]
        truth.append((t, t + u.size / SR))
        pieces.append(u)
        t += u.size / SR
    pieces.append(np.zeros(int(gaps[-1] * SR)))
    x = np.concatenate(pieces)
    x = (x + rng.normal(0, _db(noise_db), x.size)).astype(np.float32)
    return x, np.array(truth)


def _check_detection(x, truth):
    iv = speech_intervals(x, SR)
    det = intervals_to_mask(iv, x.size, SR)
    for a, b in truth:  # each utterance is found, almost entirely
        assert det[int(a * SR): int(b * SR)].mean() > 0.9
    ref = intervals_to_mask(truth, x.size, SR)
    # outside the utterances, only the hangover spills over
    assert (det & ~ref).sum() / SR <= 2 * 0.2 * len(truth) + 0.1
    return det


def test_real_speech_separated_by_low_noise(ravdess_dir):
    rng = np.random.default_rng(5)
    x, truth = _real_call(ravdess_dir, rng, gap_s=6.0, noise_db=-60)
    det = _check_detection(x, truth)
    y, tm = compress_silence(x, SR)
    # the 6 s gap less the hangovers (~5.6 s) becomes 1 s; the 1 s pause stays
    assert 4.3 <= tm.removed_s <= 5.3
    (a, b), = tm.removed_intervals()
    assert truth[1][1] < a < b < truth[2][0]
    idx = _kept_indices(y, tm)
    np.testing.assert_array_equal(y, x[idx])
    assert np.isin(np.flatnonzero(det), idx).all()


def test_real_speech_in_phone_noise(ravdess_dir):
    """Background noise at -35 dBFS: a fixed threshold would call everything speech or cut words."""
    rng = np.random.default_rng(6)
    x, truth = _real_call(ravdess_dir, rng, gap_s=6.0, noise_db=-35)
    _check_detection(x, truth)
    _, tm = compress_silence(x, SR)
    assert 4.3 <= tm.removed_s <= 5.3


def test_all_speech_is_left_untouched(ravdess_dir):
    x = np.concatenate([_utterance(ravdess_dir, u) for u in UTTERANCES * 2]).astype(np.float32)
    assert x.size > 6 * SR
    frac = speech_mask(x, SR).mean()
    assert frac > 0.9
    y, tm = compress_silence(x, SR)
    np.testing.assert_array_equal(y, x)
    assert tm == TimeMap.identity(x.size / SR)
