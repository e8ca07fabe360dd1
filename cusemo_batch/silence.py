"""Silence compression (the paper's preprocessing) and the time map back to the original call.

The CusEmo corpus was curated by replacing **every silence longer than 3 s by 1 s of silence** before
annotation, so the model was trained on audio without long holds. The scorer therefore compresses
silences the same way before inference -- but analysts read times in the *original* call (they
play the recording), so every compressed timestamp goes back through a :class:`TimeMap`.

Voice activity detection (:func:`detect_speech`) is deliberately simple and explainable, because
telephone audio varies a lot in level and background noise from call to call:

1. Short-time energy in dB of non-overlapping frames (default 20 ms), after removing each frame's
   mean (a DC offset must not look like speech).
2. An **adaptive threshold** per recording: the noise floor is a low percentile of the frame energies
   (default p10: any call has some pauses), the speech level a high percentile (p95). The threshold
   sits ``threshold_ratio`` (30 %) of the way from floor to speech level, but at least ``margin_db``
   (6 dB) above the floor -- so stationary noise, whatever its level, is never speech (20 ms frames
   of steady noise spread by about +-0.5 dB) -- and never more than ``range_db`` (30 dB) below the
   speech level: in a quiet studio or a track whose pauses are digital silence (an RTTM-masked
   speaker, a gated channel) the floor is far down and the threshold would otherwise sink into
   breaths, room tails and hiss (at 50 dB the VAD heard speech in 82 % of the RAVDESS test
   pseudo-calls' time instead of 53 %). Every rule
   so far is *relative*, so the decision does not depend on the input level (a track played 30 dB
   quieter gets the same speech frames; the level contract in :mod:`cusemo_batch.level` needs
   that). The absolute ``floor_db`` (-90 dBFS, about the noise of 16-bit audio) only keeps near
   digital silence from ever counting as speech; the earlier -60 dBFS floor -- at ordinary levels
   (speech around -30 dBFS) it acted like ``range_db`` -- cut the quiet syllables
   of a call recorded 20 dB below normal (speech 17.0 -> 11.6 s on a demo call).
3. Smoothing: speech frames are dilated by ``hangover_s`` (200 ms) on both sides. This keeps the
   weak onsets and decays of words (consonants, breathy ends fall under any energy threshold) and
   closes pauses shorter than ``2 * hangover_s`` inside speech. A dilated region that contains less
   than ``min_speech_s`` (100 ms) of above-threshold frames is dropped: clicks and line pops are
   shorter than a syllable.

Compression (:func:`compress_silence`) keeps the audio samples of the kept second (half from the
start of the pause, half from its end), never zeros: the model sees a continuous noise floor and
the natural decay and onset around the speech, and the only cut lies in the middle of the pause.
Speech samples are never touched; the output is a subsequence of the input.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import polars as pl

ENERGY_FLOOR_DB = -120.0  # energy of digital silence (avoids log(0))
# Version of detect_speech's decisions; part of the scorer's result hash, so stored results made
# with other decisions are rescored. 2: the threshold's floor became relative (range_db).
VAD_VERSION = 2
# The scorer's VAD frame: a speech/non-speech decision every 20 ms (silence compression and the
# timeseries speech_ratio).
VAD_FRAME_S = 0.02
# The paper's silence rule, the one default for training, scoring and curation: a silence longer
# than MIN_SILENCE_S becomes KEEP_SILENCE_S of it (what the model saw in training, so scoring too).
MIN_SILENCE_S = 3.0
KEEP_SILENCE_S = 1.0
_BLOCK = 8192  # frames per block in frame_energy_db


# --------------------------------------------------------------------------------------------------
# Voice activity detection
# --------------------------------------------------------------------------------------------------

def frame_hop(sample_rate: int, frame_s: float) -> int:
    """Frame length in samples (frames do not overlap, so it is also the hop)."""
    if sample_rate <= 0 or frame_s <= 0:
        raise ValueError(f"sample_rate and frame_s must be positive, got {sample_rate} and {frame_s}")
    return max(1, int(round(frame_s * sample_rate)))


def frame_energy_db(x: np.ndarray, sample_rate: int, frame_s: float = 0.02) -> np.ndarray:
    """Energy (dBFS, mean removed) of consecutive frames; the last partial frame uses its samples."""
    x = _mono(x)
    hop = frame_hop(sample_rate, frame_s)
    n = x.size
    n_full = n // hop
    var = np.empty(-(-n // hop))
    frames = x[: n_full * hop].reshape(n_full, hop)
    for i in range(0, n_full, _BLOCK):  # blocks: float64 work memory stays small on long calls
        f = frames[i: i + _BLOCK]
        # E[x^2] - E[x]^2 with float64 sums: one pass over the float32 samples instead of a float64
        # copy, a centred copy and a square (4x faster on a nightly run's VAD); the cancellation
        # error is ~1e-16 of the frame's power, far below the -100 dB floor.
        mean = f.sum(axis=1, dtype=np.float64) / hop
        power = np.einsum("ij,ij->i", f, f, dtype=np.float64) / hop
        var[i: i + f.shape[0]] = np.maximum(power - mean * mean, 0.0)
    if var.size > n_full:  # last partial frame: its own samples only
        last = x[n_full * hop:].astype(np.float64)
        var[-1] = np.mean(np.square(last - last.mean()))
    return np.maximum(10.0 * np.log10(var + 1e-30), ENERGY_FLOOR_DB)


def detect_speech(
    x: np.ndarray,
    sample_rate: int,
    frame_s: float = 0.02,
    *,
    noise_percentile: float = 10.0,
    speech_percentile: float = 95.0,
    threshold_ratio: float = 0.3,
    margin_db: float = 6.0,
    range_db: float = 30.0,
    floor_db: float = -90.0,
    hangover_s: float = 0.2,
    min_speech_s: float = 0.1,
) -> np.ndarray:
    """Speech / non-speech decision per frame of ``frame_s`` seconds (``bool[n_frames]``).

    Frame ``i`` covers samples ``[i*hop, (i+1)*hop)`` with ``hop = round(frame_s * sample_rate)``.
    Parameters (see the module docstring for why each exists):

    - ``noise_percentile`` / ``speech_percentile``: percentiles of frame energies taken as the
      noise floor and the speech level of this recording.
    - ``threshold_ratio``: threshold position between floor (0) and speech level (1), in dB.
    - ``margin_db``: minimum distance of the threshold above the noise floor.
    - ``range_db``: the threshold is never more than this below the speech level.
    - ``floor_db``: absolute minimum threshold (dBFS); quieter frames are always silence.
    - ``hangover_s``: dilation of speech on both sides (also bridges pauses < 2 * hangover_s).
    - ``min_speech_s``: dilated regions with less above-threshold time than this are dropped.
    """
    energy = frame_energy_db(x, sample_rate, frame_s)
    if energy.size == 0:
        return np.zeros(0, dtype=bool)
    noise_db = float(np.percentile(energy, noise_percentile))
    speech_db = float(np.percentile(energy, speech_percentile))
    threshold = noise_db + max(margin_db, threshold_ratio * (speech_db - noise_db))
    threshold = max(threshold, speech_db - range_db, floor_db)
    raw = energy > threshold
    if not raw.any():
        return raw

    hop_s = frame_hop(sample_rate, frame_s) / sample_rate
    k = int(round(hangover_s / hop_s))
    if k > 0:
        dilated = np.convolve(raw.astype(np.int32), np.ones(2 * k + 1, dtype=np.int32), mode="same") > 0
    else:
        dilated = raw.copy()
    starts, ends = _runs(dilated)
    raw_count = np.add.reduceat(raw.astype(np.int64), starts) if starts.size else np.zeros(0)
    min_frames = min_speech_s / hop_s - 1e-9
    for s, e, c in zip(starts, ends, raw_count):
        if c < min_frames:
            dilated[s:e] = False
    return dilated


def speech_intervals(x: np.ndarray, sample_rate: int, frame_s: float = 0.02, **vad: Any) -> np.ndarray:
    """Speech as ``float[n, 2]`` (start_s, end_s) intervals; ``vad`` = :func:`detect_speech` options."""
    frames = detect_speech(x, sample_rate, frame_s, **vad)
    return frames_to_intervals(frames, frame_hop(sample_rate, frame_s), _mono(x).size, sample_rate)


def speech_mask(x: np.ndarray, sample_rate: int, frame_s: float = 0.02, **vad: Any) -> np.ndarray:
    """Speech decision per *sample* (``bool[len(x)]``); ``vad`` = :func:`detect_speech` options."""
    frames = detect_speech(x, sample_rate, frame_s, **vad)
    return np.repeat(frames, frame_hop(sample_rate, frame_s))[: _mono(x).size]


def frames_to_intervals(frames: np.ndarray, hop: int, n_samples: int, sample_rate: int) -> np.ndarray:
    """Runs of ``True`` frames as (start_s, end_s) intervals, clipped to the signal's end."""
    starts, ends = _runs(np.asarray(frames, dtype=bool))
    out = np.stack([starts * hop, np.minimum(ends * hop, n_samples)], axis=1).astype(np.float64)
    return out / sample_rate


def intervals_to_mask(intervals: np.ndarray, n_samples: int, sample_rate: int) -> np.ndarray:
    """Per-sample mask of (start_s, end_s) intervals (sample ``i`` is in if ``start <= i/sr < end``)."""
    iv = np.asarray(intervals, dtype=np.float64).reshape(-1, 2)
    mask = np.zeros(n_samples, dtype=bool)
    for a, b in iv:
        i0 = max(int(np.ceil(a * sample_rate - 1e-9)), 0)
        i1 = min(int(np.ceil(b * sample_rate - 1e-9)), n_samples)
        mask[i0:i1] = True
    return mask


# --------------------------------------------------------------------------------------------------
# Time map
# --------------------------------------------------------------------------------------------------

@dataclass(frozen=True, eq=False)
class TimeMap:
    """Piecewise-linear monotone map between compressed and original time (seconds).

    Kept segment ``j`` starts at ``compressed_start[j]`` in the compressed audio and at
    ``original_start[j]`` in the original, and lasts ``duration[j]`` in both (slope 1). Segments are
    contiguous in compressed time; the gaps between them in original time are the removed parts.
    A zero-duration segment marks removal at the very start or end of the original, so that
    ``original_duration`` is always the end of the last segment.

    Conventions: a time exactly on a cut belongs to the segment *after* it (half-open segments
    ``[start, end)``, like samples); pass ``end=True`` to map interval *ends*, which belong to the
    segment before. Outside ``[0, duration]`` both maps extrapolate with slope 1.
    """

    compressed_start: np.ndarray
    original_start: np.ndarray
    duration: np.ndarray

    def __post_init__(self) -> None:
        cs, os_, d = (np.atleast_1d(np.asarray(a, dtype=np.float64)).copy()
                      for a in (self.compressed_start, self.original_start, self.duration))
        for a in (cs, os_, d):
            a.setflags(write=False)
        object.__setattr__(self, "compressed_start", cs)
        object.__setattr__(self, "original_start", os_)
        object.__setattr__(self, "duration", d)
        if not (cs.ndim == os_.ndim == d.ndim == 1 and cs.size == os_.size == d.size and cs.size >= 1):
            raise ValueError("TimeMap needs three 1-D arrays of the same non-zero length")
        if not (np.all(np.isfinite(cs)) and np.all(np.isfinite(os_)) and np.all(np.isfinite(d))):
            raise ValueError("TimeMap values must be finite")
        tol = 1e-9
        if np.any(d < 0) or abs(cs[0]) > tol or os_[0] < -tol:
            raise ValueError("TimeMap: durations must be >= 0 and the first segment start at compressed 0")
        if np.any(np.abs(cs[1:] - (cs[:-1] + d[:-1])) > tol):
            raise ValueError("TimeMap: segments must be contiguous in compressed time")
        if np.any(os_[1:] < os_[:-1] + d[:-1] - tol):
            raise ValueError("TimeMap: segments must be increasing and non-overlapping in original time")

    # --- constructors ---------------------------------------------------------------------------
    @classmethod
    def identity(cls, duration: float) -> "TimeMap":
        """The map of audio that was not compressed."""
        return cls(np.zeros(1), np.zeros(1), np.array([float(duration)]))

    @classmethod
    def from_keep_mask(cls, keep: np.ndarray, sample_rate: int) -> "TimeMap":
        """Map of ``x[keep]`` back to ``x`` (sample-exact: boundaries are integer samples / rate)."""
        keep = np.asarray(keep, dtype=bool)
        n = keep.size
        starts, ends = _runs(keep)
        lengths = ends - starts
        c_starts = np.concatenate([[0], np.cumsum(lengths)[:-1]]) if lengths.size else np.zeros(0, int)
        cs, os_, d = list(c_starts), list(starts), list(lengths)
        if not d or os_[0] > 0:  # removal at the start: zero-length marker at original 0
            cs.insert(0, 0)
            os_.insert(0, 0)
            d.insert(0, 0)
        end_c, end_o = cs[-1] + d[-1], os_[-1] + d[-1]
        if end_o < n:  # removal at the end: zero-length marker at the original end
            cs.append(end_c)
            os_.append(n)
            d.append(0)
        sr = float(sample_rate)
        return cls(np.array(cs) / sr, np.array(os_) / sr, np.array(d) / sr)

    # --- properties -----------------------------------------------------------------------------
    @property
    def compressed_duration(self) -> float:
        return float(self.compressed_start[-1] + self.duration[-1])

    @property
    def original_duration(self) -> float:
        return float(self.original_start[-1] + self.duration[-1])

    @property
    def removed_s(self) -> float:
        """Seconds of original audio that the compressed audio does not contain."""
        return self.original_duration - self.compressed_duration

    def removed_intervals(self) -> np.ndarray:
        """Removed parts of the original as ``float[n, 2]`` (start_s, end_s)."""
        ends = self.original_start[:-1] + self.duration[:-1]
        starts = self.original_start[1:]
        gap = starts - ends > 1e-12
        return np.stack([ends[gap], starts[gap]], axis=1)

    # --- mapping --------------------------------------------------------------------------------
    def to_original(self, t: Any, end: bool = False) -> np.ndarray:
        """Compressed time(s) -> original time(s), vectorised.

        ``end=True`` maps interval ends: a time exactly on a cut goes to the end of the kept segment
        before the cut (the start of the removed part) instead of the start of the next segment.
        """
        t = np.asarray(t, dtype=np.float64)
        i = np.searchsorted(self.compressed_start, t, side="left" if end else "right") - 1
        i = np.clip(i, 0, self.compressed_start.size - 1)
        return self.original_start[i] + (t - self.compressed_start[i])

    def to_compressed(self, t: Any) -> np.ndarray:
        """Original time(s) -> compressed time(s); a time inside a removed part maps to the cut."""
        t = np.asarray(t, dtype=np.float64)
        last = self.original_start.size - 1
        i = np.clip(np.searchsorted(self.original_start, t, side="right") - 1, 0, last)
        offset = t - self.original_start[i]
        offset = np.where(i < last, np.minimum(offset, self.duration[i]), offset)
        return self.compressed_start[i] + offset

    def interval_to_original(self, start: Any, end: Any) -> tuple[np.ndarray, np.ndarray]:
        """Compressed intervals ``[start, end)`` -> original ``[start, end)``.

        An interval that spans a cut spans the removed part too in original time; an interval that
        ends exactly on a cut ends where the removed part begins.
        """
        return self.to_original(start), self.to_original(end, end=True)

    def frame_pieces(self, n_frames: int, frame_s: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Frames ``[i*frame_s, (i+1)*frame_s)`` of the compressed audio, cut at every silence cut,
        in original time: ``(starts, ends, frame_of_piece)``.

        A frame that straddles a cut heard audio from both sides of it; each piece keeps its own
        place in call time, so pooling the pieces by overlap (``timegrid.pool_intervals``) gives
        every window exactly the audio it holds -- the same overlap rule training uses.
        """
        total = n_frames * frame_s
        cuts = self.compressed_start[(self.compressed_start > 0) & (self.compressed_start < total)]
        edges = np.unique(np.concatenate([np.arange(n_frames + 1) * frame_s, cuts]))
        a, b = edges[:-1], edges[1:]
        keep = b - a > 1e-12
        a, b = a[keep], b[keep]
        mid = (a + b) / 2
        owner = np.minimum((mid / frame_s).astype(np.int64), max(n_frames - 1, 0))
        seg = np.clip(np.searchsorted(self.compressed_start, mid, side="right") - 1, 0, self.compressed_start.size - 1)
        shift = self.original_start[seg] - self.compressed_start[seg]
        return a + shift, b + shift, owner

    # --- serialisation --------------------------------------------------------------------------
    def to_polars(self) -> pl.DataFrame:
        """One row per kept segment (save it next to the compressed audio, e.g. as Parquet)."""
        return pl.DataFrame({
            "compressed_start_s": self.compressed_start,
            "original_start_s": self.original_start,
            "duration_s": self.duration,
        })

    @classmethod
    def from_polars(cls, df: pl.DataFrame) -> "TimeMap":
        missing = {"compressed_start_s", "original_start_s", "duration_s"} - set(df.columns)
        if missing:
            raise ValueError(f"TimeMap frame lacks column(s) {sorted(missing)}")
        return cls(df["compressed_start_s"].to_numpy(), df["original_start_s"].to_numpy(),
                   df["duration_s"].to_numpy())

    def to_dict(self) -> dict[str, list[float]]:
        """JSON-ready form (floats round-trip exactly through ``json``)."""
        return {"compressed_start_s": self.compressed_start.tolist(),
                "original_start_s": self.original_start.tolist(),
                "duration_s": self.duration.tolist()}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "TimeMap":
        try:
            return cls(d["compressed_start_s"], d["original_start_s"], d["duration_s"])
        except KeyError as e:
            raise ValueError(f"TimeMap dict lacks key {e}") from None

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, TimeMap):
            return NotImplemented
        return all(np.array_equal(a, b) for a, b in ((self.compressed_start, other.compressed_start),
                                                      (self.original_start, other.original_start),
                                                      (self.duration, other.duration)))

    __hash__ = None  # type: ignore[assignment]


# --------------------------------------------------------------------------------------------------
# Compression
# --------------------------------------------------------------------------------------------------

def compress_silence(
    x: np.ndarray,
    sample_rate: int,
    min_silence_s: float = MIN_SILENCE_S,
    keep_s: float = KEEP_SILENCE_S,
    speech: np.ndarray | None = None,
) -> tuple[np.ndarray, TimeMap]:
    """Replace every silence longer than ``min_silence_s`` by ``keep_s`` of it (the paper: 3 s -> 1 s).

    ``speech`` is either a per-sample boolean mask (``len(x)``) or ``float[n, 2]`` speech intervals
    in seconds; ``None`` runs :func:`detect_speech` with its defaults. Of a long silence, the first
    ``keep_s/2`` and the last ``keep_s/2`` are kept (real samples, so the noise floor and the natural
    decay/onset around speech stay; one cut in the middle of the pause). Silences of at most
    ``min_silence_s`` (including ones at the start or end) are kept whole. Returns the compressed
    audio (same dtype, a subsequence of ``x``) and its :class:`TimeMap`.
    """
    x = _mono(x)
    if not 0 <= keep_s <= min_silence_s:
        raise ValueError(f"need 0 <= keep_s <= min_silence_s, got keep_s={keep_s}, min_silence_s={min_silence_s}")
    n = x.size
    if speech is None:
        is_speech = speech_mask(x, sample_rate)
    else:
        sp = np.asarray(speech)
        if sp.dtype == bool:
            if sp.shape != (n,):
                raise ValueError(f"speech mask has shape {sp.shape}; expected one value per sample ({n})")
            is_speech = sp
        elif sp.size == 0 or (sp.ndim == 2 and sp.shape[1] == 2):
            is_speech = intervals_to_mask(sp, n, sample_rate)
        else:
            raise ValueError("speech must be a boolean mask per sample or (start_s, end_s) pairs, "
                             f"got shape {sp.shape}")
    keep = np.ones(n, dtype=bool)
    starts, ends = _runs(~is_speech)
    n_keep = int(round(keep_s * sample_rate))
    head = n_keep - n_keep // 2
    tail = n_keep // 2
    long = (ends - starts) > min_silence_s * sample_rate + 1e-9
    for s, e in zip(starts[long], ends[long]):
        keep[s + head: e - tail] = False
    return x[keep], TimeMap.from_keep_mask(keep, sample_rate)


# --------------------------------------------------------------------------------------------------

def _mono(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x)
    if x.ndim != 1:
        raise ValueError(f"expected mono audio (1-D), got shape {x.shape}")
    return x


def _runs(mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Start (inclusive) and end (exclusive) indices of the runs of ``True``."""
    m = np.concatenate([[False], np.asarray(mask, dtype=bool), [False]]).astype(np.int8)
    d = np.diff(m)
    return np.flatnonzero(d == 1), np.flatnonzero(d == -1)
