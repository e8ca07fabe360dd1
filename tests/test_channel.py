"""Telephone-channel effects (cusemo_batch.channel) and training augmentation, against references."""

import numpy as np
import pytest
from scipy.signal import welch

from cusemo_batch import channel
from cusemo_batch.audio import load_audio
from cusemo_batch.level import active_level_db
from cusemo_batch.training.augment import AugmentConfig, augment

SR = 8000


def _tone(hz: float, seconds: float = 2.0, amp: float = 0.3) -> np.ndarray:
    t = np.arange(int(seconds * SR)) / SR
    return (amp * np.sin(2 * np.pi * hz * t)).astype(np.float32)


def _gain_db(x: np.ndarray, y: np.ndarray) -> float:
    s = slice(SR // 2, None)  # skip the filter's start-up
    return 10 * np.log10(np.mean(y[s].astype(np.float64) ** 2) / np.mean(x[s].astype(np.float64) ** 2))


def test_bandpass_passes_the_telephone_band_only():
    assert abs(_gain_db(_tone(1000), channel.bandpass(_tone(1000), SR))) < 0.5
    assert _gain_db(_tone(100), channel.bandpass(_tone(100), SR)) < -20  # mains hum, low rumble
    assert _gain_db(_tone(3900), channel.bandpass(_tone(3900), SR)) < -10
    assert channel.bandpass(_tone(1000), 16000).dtype == np.float32


@pytest.mark.parametrize("name,min_snr", [("ulaw", 30.0), ("alaw", 30.0), ("gsm", 3.0)])
def test_codecs_round_trip_real_speech(ravdess_dir, name, min_snr):
    x = load_audio(ravdess_dir / "audio" / "03-01-05-02-01-01-12.flac", SR)
    x = x * np.float32(10 ** ((-20 - active_level_db(x, SR)) / 20))
    y = channel.codec(x, SR, name)
    assert y.shape == x.shape and y.dtype == np.float32
    snr = 10 * np.log10(np.sum(x.astype(np.float64) ** 2) / np.sum((x - y).astype(np.float64) ** 2))
    assert snr > min_snr  # G.711: ~38 dB on speech; GSM (a vocoder) keeps the envelope, not the waveform
    assert not np.array_equal(x, y)
    # a codec has no headroom: full scale clips
    assert np.abs(channel.codec(x * 100, SR, name)).max() <= 1.0 + 1e-6
    with pytest.raises(ValueError, match="unknown codec"):
        channel.codec(x, SR, "mp3")
    with pytest.raises(ValueError, match="8000"):
        channel.codec(x, 16000, "gsm")


def test_noise_is_added_at_the_requested_snr_against_active_speech():
    burst = np.concatenate([np.zeros(SR, np.float32), _tone(500, 1.0), np.zeros(SR, np.float32)])
    rng = np.random.default_rng(0)
    for snr in (10.0, 30.0):
        y = channel.add_noise(burst, snr, rng, sample_rate=SR, colour="white")
        noise = y - burst
        measured = active_level_db(burst, SR) - 10 * np.log10(np.mean(noise.astype(np.float64) ** 2))
        assert measured == pytest.approx(snr, abs=0.01)
    # pink noise: more power at low than at high frequencies (1/f: about 10 dB per decade)
    y = channel.add_noise(burst, 0.0, np.random.default_rng(1), sample_rate=SR, colour="pink") - burst
    f, p = welch(y, SR, nperseg=1024)
    low, high = p[(f > 100) & (f < 200)].mean(), p[(f > 1000) & (f < 2000)].mean()
    assert 10 * np.log10(low / high) == pytest.approx(10.0, abs=2.0)


def test_room_impulse_decays_at_rt60_and_reverb_keeps_length():
    rng = np.random.default_rng(3)
    h = channel.room_impulse(SR, 0.3, rng, direct_ratio_db=6.0)
    assert h[0] == 1.0 and h.size == int(0.3 * SR)
    tail = h[1:] ** 2
    assert 10 * np.log10(tail.sum()) == pytest.approx(-6.0, abs=1e-6)  # direct-to-tail energy
    early, late = tail[:200].mean(), tail[-200:].mean()
    assert 10 * np.log10(early / late) == pytest.approx(60 * (h.size - 200) / h.size, abs=4.0)
    x = _tone(700)
    assert channel.reverb(x, SR, 0.3, rng).shape == x.shape


def test_telephone_condition_is_deterministic():
    x = _tone(800) + np.random.default_rng(4).normal(0, 0.01, 2 * SR).astype(np.float32)
    a = channel.telephone(x, SR, seed=5)
    assert np.array_equal(a, channel.telephone(x, SR, seed=5))
    assert not np.array_equal(a, channel.telephone(x, SR, seed=6))


def test_augment_draws_a_random_line_reproducibly(ravdess_dir):
    x = load_audio(ravdess_dir / "audio" / "03-01-01-01-01-01-01.flac", SR)
    cfg = AugmentConfig(enabled=True)
    a = augment(x, SR, cfg, np.random.default_rng(7))
    assert np.array_equal(a, augment(x, SR, cfg, np.random.default_rng(7)))
    assert a.shape == x.shape and a.dtype == np.float32
    # level only: the active level lands in the configured range, nothing else is applied
    only_level = AugmentConfig(enabled=True, p_bandpass=0, p_codec=0, p_noise=0, p_reverb=0, level_dbfs=(-40, -30))
    levels = [active_level_db(augment(x, SR, only_level, np.random.default_rng(s)), SR) for s in range(8)]
    assert all(-40 - 1e-3 <= v <= -30 + 1e-3 for v in levels) and np.ptp(levels) > 2
    y = augment(x, SR, only_level, np.random.default_rng(0)).astype(np.float64)
    g = float(np.dot(y, x) / np.dot(x, x))
    np.testing.assert_allclose(y, g * x, atol=1e-6)  # one gain: loudness changes inside survive


def test_augment_noise_colours_are_drawn_per_segment_and_one_colour_draws_as_before(ravdess_dir):
    """White and pink both occur with two colours; a one-colour list keeps the old random stream."""
    x = load_audio(ravdess_dir / "audio" / "03-01-02-01-01-01-01.flac", SR)
    only_noise = dict(enabled=True, p_bandpass=0, p_codec=0, p_noise=1, p_reverb=0, level_dbfs=(-26, -26), snr_db=(0, 0))
    pink = augment(x, SR, AugmentConfig(**only_noise), np.random.default_rng(3))
    assert np.array_equal(pink, augment(x, SR, AugmentConfig(**only_noise, noise_colours=("pink",)), np.random.default_rng(3)))
    tilts = []
    for seed in range(12):
        y = augment(x, SR, AugmentConfig(**only_noise, noise_colours=("white", "pink")), np.random.default_rng(seed))
        f, p = welch(y.astype(np.float64), SR, nperseg=1024)
        tilts.append(10 * np.log10(p[(f > 2500) & (f < 3500)].mean() / p[(f > 100) & (f < 300)].mean()))
    # noise as loud as the speech shows its spectrum: 2.5-3.5 kHz vs 100-300 Hz is ~-7 dB with a
    # white floor, ~-16 dB with a pink one (1/f); both colours occur in 12 segments
    assert min(tilts) < -12 and max(tilts) > -10


@pytest.mark.parametrize("bad,msg", [({"p_noise": 1.5}, "probability"), ({"snr_db": (30, 10)}, "low <= high"),
                                     ({"codecs": ("opus",)}, "codecs"), ({"level_dbfs": (-20, 3)}, "0 dBFS"),
                                     ({"speeds": (0.9, 3.0)}, "speeds"), ({"noise_colours": ("blue",)}, "noise_colours"),
                                     ({"noise_colours": ()}, "noise_colours"), ({"p_eq": -0.1}, "probability"),
                                     ({"eq_tilt_db": -1}, "eq_tilt_db"), ({"eq_peaks": 9}, "eq_peaks")])
def test_augment_config_is_validated(bad, msg):
    with pytest.raises(ValueError, match=msg):
        AugmentConfig(enabled=True, **bad).validate()


@pytest.mark.parametrize("factor", [0.9, 1.1])
def test_speed_perturbation_moves_tempo_and_pitch_by_the_factor(factor):
    from cusemo_batch.training.augment import speed_perturb

    t = np.arange(SR * 2) / SR
    x = (0.3 * np.sin(2 * np.pi * 200.0 * t)).astype(np.float32)
    y = speed_perturb(x, factor)
    assert y.dtype == np.float32 and len(y) == int(np.ceil(len(x) / factor))
    spectrum = np.abs(np.fft.rfft(y[400:-400] * np.hanning(len(y) - 800)))
    peak_hz = np.argmax(spectrum) * SR / (len(y) - 800)
    assert peak_hz == pytest.approx(200.0 * factor, abs=2.0)  # 180 / 220 Hz: pitch moves with tempo
    np.testing.assert_allclose(np.sqrt(np.mean(y[400:-400] ** 2)), 0.3 / np.sqrt(2), rtol=0.02)  # level kept
    assert speed_perturb(x, 1.0) is x


def test_microphone_response_is_the_tilt_plus_the_bumps_hand_computed():
    f = np.array([500.0, 1000.0, 2000.0, 4000.0, 20.0])
    np.testing.assert_allclose(channel.microphone_response_db(f, 2.0), [-2.0, 0.0, 2.0, 4.0, 2.0 * np.log2(0.05)])
    # a +6 dB bump at 2 kHz, 1 octave wide: +6 at its centre, 6 * exp(-1/2) one octave away
    db = channel.microphone_response_db(f[:4], 0.0, [(2000.0, 6.0, 1.0)])
    np.testing.assert_allclose(db, [6 * np.exp(-2.0), 6 * np.exp(-0.5), 6.0, 6 * np.exp(-0.5)])


@pytest.mark.parametrize("tilt,peaks", [(2.0, []), (-2.0, [(700.0, -6.0, 0.5)]), (1.0, [(2500.0, 6.0, 0.8)])])
def test_microphone_filter_follows_its_response_and_keeps_timing(tilt, peaks):
    for hz in (300.0, 800.0, 1500.0, 3000.0):
        x = _tone(hz)
        want = float(channel.microphone_response_db(np.array([hz]), tilt, peaks)[0])
        assert abs(_gain_db(x, channel.microphone(x, SR, tilt, peaks)) - want) < 0.6, hz
    # linear phase with its delay removed: a click stays where it was (labels stay aligned)
    click = np.zeros(4000, dtype=np.float32)
    click[2000] = 1.0
    y = channel.microphone(click, SR, tilt, peaks)
    assert y.shape == click.shape and y.dtype == np.float32 and int(np.argmax(np.abs(y))) == 2000
    assert channel.microphone(np.zeros(0, np.float32), SR, tilt, peaks).size == 0


def test_augment_microphone_colours_some_segments_and_off_draws_as_before(ravdess_dir):
    """p_eq = 0 leaves the random stream as it was; p_eq = 1 tilts the spectrum both ways over seeds."""
    x = load_audio(ravdess_dir / "audio" / "03-01-02-01-01-01-01.flac", SR)
    base = dict(enabled=True, p_bandpass=0, p_codec=0, p_noise=0, p_reverb=0, level_dbfs=(-26, -26))
    assert np.array_equal(augment(x, SR, AugmentConfig(**base), np.random.default_rng(5)),
                          augment(x, SR, AugmentConfig(**base, p_eq=0.0, eq_tilt_db=5.0), np.random.default_rng(5)))

    def tilt(y):
        f, p = welch(y.astype(np.float64), SR, nperseg=1024)
        return 10 * np.log10(p[(f > 2000) & (f < 3500)].mean() / p[(f > 200) & (f < 500)].mean())

    ref = tilt(x)
    coloured = [tilt(augment(x, SR, AugmentConfig(**base, p_eq=1.0, eq_peaks=0, eq_tilt_db=3.0), np.random.default_rng(s)))
                for s in range(10)]
    # +-3 dB/octave over the ~2.6 octaves between the two bands moves their ratio by up to ~8 dB
    assert min(coloured) < ref - 2 and max(coloured) > ref + 2 and max(abs(c - ref) for c in coloured) < 9
