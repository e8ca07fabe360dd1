"""Audio decoding and conditioning shared by training and scoring (numpy + soundfile + scipy only).

One code path for both sides matters: the model only sees in production what it saw in training
if decoding, resampling and normalisation are the same functions.
"""

from __future__ import annotations

from fractions import Fraction
from pathlib import Path

import numpy as np
import soundfile as sf
from scipy.signal import resample_poly

NORMALISATIONS = ("none", "rms")
RMS_TARGET = 0.1  # -20 dBFS, a typical speech level


class AudioError(ValueError):
    """Audio cannot be used (unreadable, empty, non-finite...). Message is one line."""


def audio_info(path: str | Path) -> sf._SoundFileInfo:
    try:
        return sf.info(str(path))
    except Exception as e:
        raise AudioError(f"{path}: not readable as audio ({_first_line(e)})") from None


def load_audio(path: str | Path, sample_rate: int, channel: int | None = None) -> np.ndarray:
    """Decode ``path`` to float32 mono at ``sample_rate``.

    ``channel`` selects one channel of a multi-channel file; ``None`` requires mono or mixes down.
    """
    try:
        data, sr = sf.read(str(path), dtype="float32", always_2d=True)
    except Exception as e:
        raise AudioError(f"{path}: not readable as audio ({_first_line(e)})") from None
    if data.shape[0] == 0:
        raise AudioError(f"{path}: no audio samples")
    if channel is None:
        x = data.mean(axis=1) if data.shape[1] > 1 else data[:, 0]
    else:
        if not 0 <= channel < data.shape[1]:
            raise AudioError(f"{path}: has {data.shape[1]} channel(s), channel {channel} requested")
        x = data[:, channel]
    if not np.all(np.isfinite(x)):
        raise AudioError(f"{path}: contains NaN or infinite samples")
    return resample(np.ascontiguousarray(x), sr, sample_rate)


def resample(x: np.ndarray, sr_in: int, sr_out: int) -> np.ndarray:
    """Polyphase resampling (Kaiser-windowed FIR, anti-aliased) with an exact rational ratio."""
    if sr_in == sr_out:
        return x.astype(np.float32, copy=False)
    ratio = Fraction(sr_out, sr_in)
    y = resample_poly(x, ratio.numerator, ratio.denominator)
    return y.astype(np.float32, copy=False)


def normalise(x: np.ndarray, method: str) -> np.ndarray:
    """Input normalisation recorded in the model's metadata (``none`` = the paper's raw waveform)."""
    if method == "none":
        return x
    if method == "rms":
        rms = float(np.sqrt(np.mean(np.square(x, dtype=np.float64)))) if x.size else 0.0
        return (x * (RMS_TARGET / max(rms, 1e-5))).astype(np.float32)
    raise ValueError(f"unknown normalisation {method!r}; expected one of {NORMALISATIONS}")


def _first_line(e: BaseException) -> str:
    s = str(e).strip()
    return (s.splitlines()[0] if s else type(e).__name__)[:200]
