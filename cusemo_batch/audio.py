"""Audio decoding and conditioning shared by training and scoring (numpy + soundfile + scipy only).

One code path for both sides matters: the model only sees in production what it saw in training
if decoding, resampling and normalisation are the same functions.
"""

from __future__ import annotations

from fractions import Fraction
from pathlib import Path

import numpy as np
import soundfile as sf

from .text import first_line

# Input normalisations a model can name in its metadata. "none": the paper's raw waveform (the
# model then reads the input level; kept so that models exported before the level contract score as
# they always did). "rms": the whole track to -20 dBFS RMS (pauses count, so the gain depends on how
# much the speaker is silent). "speech_rms": the level contract of current models -- the track's
# active-speech RMS to -26 dBFS by one gain (cusemo_batch.level).
NORMALISATIONS = ("none", "rms", "speech_rms")
# File suffixes read as audio everywhere (call discovery, corpora, curation, export checks): what
# libsndfile decodes. One home, so a `.caf` call is never scored by one command and ignored by another.
AUDIO_SUFFIXES = frozenset({".wav", ".flac", ".ogg", ".mp3", ".aiff", ".aif", ".au", ".caf", ".w64", ".rf64"})
RMS_TARGET = 0.1  # -20 dBFS, a typical speech level


# Largest sample magnitude accepted, in full scale. Float files may legitimately exceed 1.0 (a mix
# bus, a gain before export; speech at -5 dBFS active level peaks around +10..+15 dBFS); integer PCM
# values stored as floats (a mis-scaled export: speech peaks in the thousands) are not a recording
# anyone meant: the call becomes an error row, not numbers.
MAX_PEAK = 100.0  # +40 dBFS


class AudioError(ValueError):
    """Audio cannot be used (unreadable, empty, non-finite...). Message is one line."""


def riff_truncation(path: str | Path) -> str | None:
    """For a RIFF/WAVE file: a message when its ``data`` chunk declares more bytes than the file holds.

    libsndfile then reports only the frames present (a file cut in half at upload reads as a
    complete call of half the length); the header says what was meant. Streaming writers that
    leave the size at 0 or 0xFFFFFFFF ("unknown") are not truncated.
    """
    import struct

    try:
        size = Path(path).stat().st_size
        with open(path, "rb") as f:
            head = f.read(12)
            if len(head) < 12 or head[:4] not in (b"RIFF", b"RIFX") or head[8:12] != b"WAVE":
                return None
            fmt = "<I" if head[:4] == b"RIFF" else ">I"
            pos = 12
            while pos + 8 <= size:
                f.seek(pos)
                chunk = f.read(8)
                cid, n = chunk[:4], struct.unpack(fmt, chunk[4:])[0]
                if cid == b"data":
                    have = size - pos - 8
                    if n not in (0, 0xFFFFFFFF) and n > have:
                        return f"truncated: the header declares {n} bytes of audio, the file holds {have}"
                    return None
                pos += 8 + n + (n & 1)
    except OSError:
        return None
    return None


def audio_info(path: str | Path) -> sf._SoundFileInfo:
    try:
        return sf.info(str(path))
    except Exception as e:
        raise AudioError(f"{path}: not readable as audio ({first_line(e)})") from None


BLOCK_SECONDS = 60.0  # decode + resample this much at a time: bounded memory on 2 h / 48 kHz calls


def load_audio(path: str | Path, sample_rate: int, channel: int | None = None) -> np.ndarray:
    """Decode ``path`` to float32 mono at ``sample_rate``.

    ``channel`` selects one channel of a multi-channel file; ``None`` mixes all channels down.
    """
    def pick(data: np.ndarray, ch: int) -> np.ndarray:
        if channel is None:
            return data.mean(axis=1, keepdims=True) if ch > 1 else data
        if not 0 <= channel < ch:
            raise AudioError(f"{path}: has {ch} channel(s), channel {channel} requested")
        return data[:, channel:channel + 1]

    return _decode(path, sample_rate, pick)[:, 0]


def load_channels(path: str | Path, sample_rate: int) -> np.ndarray:
    """Decode every channel of ``path`` at once: float32 ``[channels, samples]`` at ``sample_rate``.

    For calls whose speakers share a file (stereo, or a mono mix split by RTTM), so the file is
    decoded once rather than once per speaker.
    """
    return np.ascontiguousarray(_decode(path, sample_rate, lambda data, ch: data).T)


def _decode(path: str | Path, sample_rate: int, pick) -> np.ndarray:
    """Read, select/mix channels with ``pick(block[n, ch], ch) -> [n, k]`` and resample, block by block.

    The overlap between blocks is enough for the polyphase filter to see the same neighbourhood as
    a one-shot resample (the result is identical), so peak memory is the output plus one block,
    whatever the source rate and length.
    """
    try:
        f = sf.SoundFile(str(path))
    except Exception as e:
        raise AudioError(f"{path}: not readable as audio ({first_line(e)})") from None
    with f:
        sr, n, ch = f.samplerate, f.frames, f.channels
        if n <= 0:
            raise AudioError(f"{path}: no audio samples")
        if f.format in ("WAV", "WAVEX"):
            cut = riff_truncation(path)
            if cut:
                raise AudioError(f"{path}: {cut}")
        ratio = Fraction(sample_rate, sr)
        up, down = ratio.numerator, ratio.denominator
        # resample_poly's filter reaches 10*max(up, down) samples at the upsampled rate each side.
        halo = -(-(10 * max(up, down) // up + 2) // down) * down  # input samples, a multiple of down
        block = max(int(BLOCK_SECONDS * sr) // down * down, down)
        out: list[np.ndarray] = []
        start = 0
        try:
            while start < n:
                lo, hi = max(start - halo, 0), min(start + block + halo, n)
                f.seek(lo)
                data = f.read(hi - lo, dtype="float32", always_2d=True)
                if data.shape[0] != hi - lo:
                    raise AudioError(f"{path}: truncated: expected {n} samples, got {lo + data.shape[0]}")
                x = pick(data, ch)
                if not np.all(np.isfinite(x)):
                    raise AudioError(f"{path}: contains NaN or infinite samples")
                peak = float(np.max(np.abs(x))) if x.size else 0.0
                if peak > MAX_PEAK:
                    raise AudioError(f"{path}: samples reach {peak:.4g} x full scale (a float export of "
                                     f"integer PCM?); at most {MAX_PEAK:g} is accepted")
                y = resample(np.ascontiguousarray(x), sr, sample_rate)
                skip = (start - lo) * up // down
                keep = (min(start + block, n) - start) * up // down if start + block < n else None
                out.append(y[skip: None if keep is None else skip + keep])
                start += block
        except AudioError:
            raise
        except Exception as e:
            raise AudioError(f"{path}: decoding failed ({first_line(e)})") from None
    y = np.concatenate(out) if len(out) > 1 else out[0]
    if y.size == 0:
        raise AudioError(f"{path}: no audio samples after resampling")
    return y


def resample(x: np.ndarray, sr_in: int, sr_out: int) -> np.ndarray:
    """Polyphase resampling (Kaiser-windowed FIR, anti-aliased) with an exact rational ratio.

    ``x`` is ``[samples]`` or ``[samples, channels]`` (time on axis 0).
    """
    if sr_in == sr_out:
        return x.astype(np.float32, copy=False)
    ratio = Fraction(sr_out, sr_in)
    # Imported here: scipy.signal takes ~1 s to import on a 2-core machine, and telephone audio is
    # already at the model's 8 kHz, so most nightly runs never resample.
    from scipy.signal import resample_poly

    y = resample_poly(x, ratio.numerator, ratio.denominator, axis=0)
    return y.astype(np.float32, copy=False)


def normalise(x: np.ndarray, method: str, sample_rate: int = 8000, *, level_db: float | None = None) -> np.ndarray:
    """Input normalisation recorded in the model's metadata (``none`` = the paper's raw waveform).

    The one function training, export checks and scoring all call, so the model sees in production
    what it saw in training. ``sample_rate`` is that of ``x`` (``speech_rms`` works on 20 ms frames);
    ``level_db`` is ``x``'s active-speech level when the caller measured it already (the scorer).
    """
    if method == "none":
        return x
    if method == "speech_rms":
        from .level import normalise_level

        return normalise_level(x, sample_rate, level_db=level_db)
    if method == "rms":
        rms = float(np.sqrt(np.mean(np.square(x, dtype=np.float64)))) if x.size else 0.0
        return (x * (RMS_TARGET / max(rms, 1e-5))).astype(np.float32)
    raise ValueError(f"unknown normalisation {method!r}; expected one of {NORMALISATIONS}")


def describe_normalisation(method: str) -> str:
    """One line for ``info`` and the ONNX metadata: what the scorer does to a track before the model."""
    if method == "speech_rms":
        from .level import DESCRIPTION

        return DESCRIPTION
    return {
        "none": "none: raw waveform, the model reads the input level (models exported before the level contract)",
        "rms": f"rms: whole track scaled to {20 * np.log10(RMS_TARGET):g} dBFS RMS, pauses included",
    }.get(method, f"{method}: unknown to this version of cusemo-batch")
