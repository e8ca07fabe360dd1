"""Level contract (cusemo_batch.level) and the level-free VAD, on synthetic and real speech."""

from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from cusemo_batch.audio import NORMALISATIONS, load_audio, normalise
from cusemo_batch.level import (MAX_GAIN_DB, TARGET_DBFS, active_level_db, clipped_fraction, level_gain_db,
                                normalise_level)
from cusemo_batch.silence import compress_silence, detect_speech

SR = 8000
EXAMPLES = Path(__file__).resolve().parents[1] / "examples" / "calls"
UTTERANCES = ("03-01-01-01-01-01-01.flac", "03-01-05-02-02-01-08.flac", "03-01-04-01-01-02-05.flac")


def _db(x: float) -> float:
    return 10.0 ** (x / 20.0)


def test_active_level_of_bursts_in_silence_is_the_burst_rms():
    """Hand-computed: 1 s of a -20 dBFS-RMS sine and 3 s of digital silence -> -20 dBFS, not the
    whole-file RMS (-26 dBFS); a hiss 40 dB below the tone is left out of the active frames."""
    t = np.arange(SR) / SR
    tone = (np.sqrt(2) * _db(-20.0) * np.sin(2 * np.pi * 400 * t)).astype(np.float32)
    x = np.concatenate([np.zeros(SR, np.float32), tone, np.zeros(2 * SR, np.float32)])
    assert active_level_db(x, SR) == pytest.approx(-20.0, abs=0.01)
    rms_all = 20 * np.log10(np.sqrt(np.mean(x.astype(np.float64) ** 2)))
    assert rms_all == pytest.approx(-26.02, abs=0.01)
    hiss = np.random.default_rng(0).normal(0, _db(-60.0), x.size).astype(np.float32)
    assert active_level_db(x + hiss, SR) == pytest.approx(-20.0, abs=0.05)


def test_normalise_level_hits_the_target_and_is_scale_invariant(ravdess_dir):
    x = load_audio(ravdess_dir / "audio" / UTTERANCES[1], SR)
    ref = normalise_level(x, SR)
    assert active_level_db(ref, SR) == pytest.approx(TARGET_DBFS, abs=1e-3)
    for gain_db in (-40.0, -20.0, -3.0, 15.0):
        y = normalise_level((x * np.float32(_db(gain_db))).astype(np.float32), SR)
        np.testing.assert_allclose(y, ref, rtol=0, atol=1e-5 * float(np.abs(ref).max()))
    assert normalise(x, "speech_rms", SR).tobytes() == ref.tobytes()  # the one entry point
    assert "speech_rms" in NORMALISATIONS


def test_digital_silence_and_gain_limit():
    z = np.zeros(SR, np.float32)
    assert active_level_db(z, SR) == float("-inf") and level_gain_db(z, SR) == 0.0
    np.testing.assert_array_equal(normalise_level(z, SR), z)
    assert active_level_db(np.zeros(0, np.float32), SR) == float("-inf")
    faint = np.random.default_rng(1).normal(0, _db(-100.0), SR).astype(np.float32)
    assert level_gain_db(faint, SR) == MAX_GAIN_DB  # near-silence is not blown up to full scale


def test_vad_and_silence_compression_do_not_depend_on_the_level(ravdess_dir):
    """Three real utterances with a 5 s pause: the same speech frames and the same compressed
    audio (up to the gain) from -45 to -5 dBFS -- the -60 dBFS absolute floor used to cut quiet
    speech."""
    utts = [load_audio(ravdess_dir / "audio" / u, SR) for u in UTTERANCES]
    x = np.concatenate([utts[0], np.zeros(5 * SR, np.float32), utts[1], utts[2]])
    x = x + np.random.default_rng(2).normal(0, 1e-4, x.size).astype(np.float32)  # a faint line floor
    base = active_level_db(x, SR)
    ref_speech = None
    for target in (-45.0, -35.0, -25.0, -15.0, -5.0):
        g = np.float32(_db(target - base))
        y = x * g
        speech = detect_speech(y, SR, 0.02)
        if ref_speech is None:
            ref_speech = speech
            assert speech.mean() > 0.3
        np.testing.assert_array_equal(speech, ref_speech)
        comp, tmap = compress_silence(y, SR, speech=np.repeat(speech, 160)[: y.size])
        assert tmap.removed_s > 3.0
        np.testing.assert_allclose(normalise(comp, "speech_rms", SR),
                                   normalise(compress_silence(x, SR, speech=np.repeat(ref_speech, 160)[: x.size])[0],
                                             "speech_rms", SR), atol=1e-4)


def test_sparse_speech_in_digital_silence_still_gets_its_level():
    """A 1 s tone in 21 s of digital silence (an RTTM-masked speaker, no silence compression): the
    p95 frame is digital silence, so the reference comes from the frames with signal."""
    t = np.arange(SR) / SR
    tone = (np.sqrt(2) * _db(-30.0) * np.sin(2 * np.pi * 300 * t)).astype(np.float32)
    x = np.concatenate([np.zeros(10 * SR, np.float32), tone, np.zeros(11 * SR, np.float32)])
    assert active_level_db(x, SR) == pytest.approx(-30.0, abs=0.05)
    assert active_level_db(normalise_level(x, SR), SR) == pytest.approx(TARGET_DBFS, abs=0.05)


def test_clipped_fraction_counts_samples_at_full_scale():
    x = np.array([0.0, 0.5, -0.98, 0.99, -1.0, 1.0, 1.7, -0.2], np.float32)
    assert clipped_fraction(x) == 4 / 8  # 0.99, -1.0, 1.0, 1.7 (float input beyond full scale too)
    assert clipped_fraction(x, threshold=1.0) == 3 / 8
    assert clipped_fraction(np.zeros(0, np.float32)) == 0.0
    long = np.random.default_rng(1).normal(0, 0.4, 3 * (1 << 20) + 5).astype(np.float32)  # counted in blocks
    assert clipped_fraction(long) == np.count_nonzero(np.abs(long) >= 0.99) / long.size


def test_the_calls_table_reports_each_line_level_and_clipping(plumbing_onnx, tmp_path):
    """input_level_dbfs follows the gain of the file (the model never sees it); clipped_fraction is
    0 for the demo speech and grows when the same speech is driven into full scale."""
    from cusemo_batch.scorer import Scorer

    x, sr = sf.read(EXAMPLES / "negative_end.flac", dtype="float32")
    calls = tmp_path / "calls"
    calls.mkdir()
    for name, gain_db, clip in (("as_recorded", 0.0, False), ("quiet", -20.0, False), ("hot", 40.0, True)):
        y = x * np.float32(10 ** (gain_db / 20))
        sf.write(calls / f"{name}.wav", np.clip(y, -1.0, 1.0) if clip else y, sr, subtype="FLOAT")
    res = Scorer(plumbing_onnx, device="cpu").score_folder(calls)
    assert res.errors.height == 0
    c = {r["call_id"]: r for r in res.calls.iter_rows(named=True)}
    # the level of the audio as the scorer got it (long pauses and the hold compressed): near the file's own
    # (the demo's calm-to-sad client sits near -46 dBFS, like RAVDESS's calm speech)
    assert abs(c["as_recorded"]["input_level_dbfs"] - active_level_db(load_audio(calls / "as_recorded.wav", SR), SR)) < 1.5
    assert abs(c["quiet"]["input_level_dbfs"] - (c["as_recorded"]["input_level_dbfs"] - 20.0)) < 0.05
    assert c["as_recorded"]["clipped_fraction"] == c["quiet"]["clipped_fraction"] == 0.0
    assert c["hot"]["clipped_fraction"] > 0.01


def test_a_level_measured_before_gives_the_same_normalisation(ravdess_dir):
    """The scorer measures each track's level once (for the calls table) and hands it to normalise:
    bit-identical to normalise measuring it itself."""
    x = load_audio(ravdess_dir / "audio" / UTTERANCES[1], SR)
    assert np.array_equal(normalise(x, "speech_rms", SR, level_db=active_level_db(x, SR)), normalise(x, "speech_rms", SR))
