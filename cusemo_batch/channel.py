"""Telephone-channel effects on 8 kHz speech: band-pass, codecs, noise, reverberation, microphone
colouring, gain.

Why: a model trained on studio speech meets call-center lines -- narrow-band handsets, G.711
companding, GSM on mobile legs, room echo, background noise, any level from -40 to -6 dBFS. The same
functions serve two sides, so what training simulates is exactly what the benchmark measures:

* training augmentation (:mod:`cusemo_batch.training.augment` draws random parameters per segment);
* the accuracy benchmark's fixed "telephone" condition (:func:`telephone`, seeded).

Only numpy, scipy.signal and libsndfile (through soundfile): the codecs are libsndfile's own G.711
(u-law, A-law) and GSM 06.10 encoders, run through an in-memory WAV -- no hand-written codec.
Every function is pure: input array in, new float32 array out, randomness only from the
``numpy.random.Generator`` passed in.
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from functools import lru_cache

import numpy as np
import soundfile as sf

CODECS = ("ulaw", "alaw", "gsm")
_SUBTYPES = {"ulaw": "ULAW", "alaw": "ALAW", "gsm": "GSM610"}
GSM_RATE = 8000  # GSM 06.10 is defined at 8 kHz only


def apply_gain(x: np.ndarray, gain_db: float) -> np.ndarray:
    """``x`` times ``10**(gain_db/20)`` (no clipping: the codecs clip, as a real line would)."""
    return (np.asarray(x, dtype=np.float32) * np.float32(10.0 ** (gain_db / 20.0))).astype(np.float32, copy=False)


@lru_cache(maxsize=16)
def _bandpass_sos(sample_rate: int, low_hz: float, high_hz: float, order: int) -> np.ndarray:
    from scipy.signal import butter

    high = min(high_hz, 0.45 * sample_rate)  # keep the upper edge below Nyquist at any rate
    return butter(order, [low_hz, high], btype="bandpass", fs=sample_rate, output="sos")


def bandpass(x: np.ndarray, sample_rate: int, low_hz: float = 300.0, high_hz: float = 3400.0,
             order: int = 4) -> np.ndarray:
    """Telephone band (ITU-T G.712: 300-3400 Hz), Butterworth, causal (like a real line)."""
    from scipy.signal import sosfilt

    sos = _bandpass_sos(int(sample_rate), float(low_hz), float(high_hz), int(order))
    return sosfilt(sos, np.asarray(x, dtype=np.float64)).astype(np.float32)


def codec(x: np.ndarray, sample_rate: int, name: str) -> np.ndarray:
    """Encode and decode with libsndfile's G.711 u-law / A-law or GSM 06.10 (``name`` in CODECS).

    Input beyond full scale is clipped first (a codec has no headroom). GSM needs 8 kHz audio.
    """
    if name not in CODECS:
        raise ValueError(f"unknown codec {name!r}; expected one of {', '.join(CODECS)}")
    if name == "gsm" and sample_rate != GSM_RATE:
        raise ValueError(f"GSM 06.10 needs {GSM_RATE} Hz audio, got {sample_rate} Hz")
    x = np.clip(np.asarray(x, dtype=np.float32), -1.0, 1.0)
    if x.size == 0:
        return x.copy()
    buf = io.BytesIO()
    sf.write(buf, x, sample_rate, format="WAV", subtype=_SUBTYPES[name])
    buf.seek(0)
    y, _ = sf.read(buf, dtype="float32")
    out = np.zeros_like(x)
    out[: min(x.size, y.size)] = y[: x.size]  # GSM works in 160-sample frames; keep the length
    return out


NOISE_COLOURS = ("white", "pink")


def add_noise(x: np.ndarray, snr_db: float, rng: np.random.Generator, *, sample_rate: int = 8000,
              colour: str = "pink") -> np.ndarray:
    """Add stationary ``white`` or ``pink`` noise at ``snr_db`` below the active-speech level of ``x``.

    The SNR is relative to the *active* speech level (:func:`cusemo_batch.level.active_level_db`),
    not the whole-signal RMS, so pauses do not change how loud the noise is against the voice.
    """
    from .level import active_level_db

    x = np.asarray(x, dtype=np.float32)
    level = active_level_db(x, sample_rate)
    if not np.isfinite(level) or x.size == 0:
        return x.copy()
    n = rng.standard_normal(x.size)
    if colour == "pink":
        n = _pink(n)
    elif colour not in NOISE_COLOURS:
        raise ValueError(f"unknown noise colour {colour!r}; expected {' or '.join(NOISE_COLOURS)}")
    n *= 10.0 ** ((level - snr_db) / 20.0) / max(float(np.sqrt(np.mean(n * n))), 1e-12)
    return (x + n).astype(np.float32)


def _pink(white: np.ndarray) -> np.ndarray:
    """1/f noise by shaping the spectrum of white noise (amplitude ~ f^-1/2)."""
    spec = np.fft.rfft(white)
    f = np.arange(spec.size, dtype=np.float64)
    f[0] = 1.0
    return np.fft.irfft(spec / np.sqrt(f), n=white.size)


def room_impulse(sample_rate: int, rt60_s: float, rng: np.random.Generator, direct_ratio_db: float = 6.0) -> np.ndarray:
    """A synthetic room impulse response: a direct path plus exponentially decaying noise.

    ``rt60_s`` is the time for the tail to decay by 60 dB; ``direct_ratio_db`` the energy of the
    direct path over the tail's (light reverberation: a small office or a car, heard close up).
    """
    n = max(int(rt60_s * sample_rate), 1)
    t = np.arange(n) / sample_rate
    tail = rng.standard_normal(n) * np.exp(-6.9078 * t / max(rt60_s, 1e-6))  # 60 dB = ln(1000)
    tail[0] = 0.0
    energy = float(np.sum(tail ** 2))
    if energy > 0:
        tail *= np.sqrt(10.0 ** (-direct_ratio_db / 10.0) / energy)
    tail[0] = 1.0
    return tail.astype(np.float64)


def reverb(x: np.ndarray, sample_rate: int, rt60_s: float, rng: np.random.Generator,
           direct_ratio_db: float = 6.0) -> np.ndarray:
    """Convolve ``x`` with :func:`room_impulse` (same length out, causal: the tail is cut)."""
    from scipy.signal import fftconvolve

    h = room_impulse(sample_rate, rt60_s, rng, direct_ratio_db)
    return fftconvolve(np.asarray(x, dtype=np.float64), h)[: len(x)].astype(np.float32)


def microphone_response_db(freqs_hz: np.ndarray, tilt_db_per_octave: float,
                           peaks: Sequence[tuple[float, float, float]] = ()) -> np.ndarray:
    """Gain in dB at ``freqs_hz`` of a microphone / handset: a spectral tilt around 1 kHz plus
    peaking bumps ``(centre_hz, gain_db, width_octaves)``, Gaussian on a log-frequency axis.

    Why this shape: handsets, headsets and room microphones differ mostly by a slope (a brighter or
    duller capsule, proximity effect) and a few broad resonances of +-several dB -- the colouring a
    model must not read as vocal effort, which also tilts the spectrum. Below 50 Hz the response is
    held at its 50 Hz value (nothing of the voice lives there at 8 kHz sampling).
    """
    f = np.maximum(np.asarray(freqs_hz, dtype=np.float64), 50.0)
    octaves = np.log2(f / 1000.0)
    db = tilt_db_per_octave * octaves
    for centre, gain, width in peaks:
        db = db + gain * np.exp(-0.5 * (np.log2(f / centre) / width) ** 2)
    return db


def microphone(x: np.ndarray, sample_rate: int, tilt_db_per_octave: float,
               peaks: Sequence[tuple[float, float, float]] = (), numtaps: int = 129) -> np.ndarray:
    """Colour ``x`` with :func:`microphone_response_db`: a linear-phase FIR (scipy's ``firwin2``,
    ``numtaps`` taps, 16 ms at 8 kHz) applied with its delay removed, so the output stays aligned
    with ``x`` (and with the labels of a training segment). Same length out; the level is left to
    the caller (augmentation sets it afterwards).
    """
    from scipy.signal import firwin2, oaconvolve

    x = np.asarray(x, dtype=np.float32)
    if x.size == 0:
        return x.copy()
    grid = np.linspace(0.0, sample_rate / 2.0, 65)
    h = firwin2(numtaps, grid, 10.0 ** (microphone_response_db(grid, tilt_db_per_octave, peaks) / 20.0),
                fs=sample_rate)
    return oaconvolve(x.astype(np.float64), h, mode="same").astype(np.float32)


def random_microphone(rng: np.random.Generator, sample_rate: int, tilt_db_per_octave: float,
                      peak_db: float, n_peaks: int) -> tuple[float, list[tuple[float, float, float]]]:
    """Draw a :func:`microphone`: tilt uniform in +-``tilt_db_per_octave``; ``n_peaks`` bumps with
    gains uniform in +-``peak_db``, centres log-uniform over 150 Hz ... 0.45 ``sample_rate`` and
    widths uniform in 0.3-1.0 octave. Always draws ``1 + 3 * n_peaks`` numbers (fixed stream)."""
    tilt = float(rng.uniform(-tilt_db_per_octave, tilt_db_per_octave))
    lo, hi = np.log2(150.0), np.log2(0.45 * sample_rate)
    peaks = [(float(2.0 ** rng.uniform(lo, hi)), float(rng.uniform(-peak_db, peak_db)), float(rng.uniform(0.3, 1.0)))
             for _ in range(n_peaks)]
    return tilt, peaks


def telephone(x: np.ndarray, sample_rate: int, *, seed: int = 0, codec_name: str = "ulaw",
              snr_db: float = 20.0) -> np.ndarray:
    """The benchmark's fixed telephone channel: background noise at ``snr_db``, band-pass
    300-3400 Hz, then a codec (the order of a real line: the room, the handset, the network).

    Deterministic for a given ``seed`` (the noise); the level is left as it was, so the caller
    decides at which level the line runs (a codec clips above full scale).
    """
    rng = np.random.default_rng(seed)
    y = add_noise(x, snr_db, rng, sample_rate=sample_rate, colour="pink")
    return codec(bandpass(y, sample_rate), sample_rate, codec_name)
