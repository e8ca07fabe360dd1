"""Channel augmentation for training: each segment, each epoch, through a random telephone line.

Why: the default model is trained on studio speech (RAVDESS) whose *level* tracks the label, and is
used on call-center lines. Drawing a random line per segment -- level, band, codec, noise, room --
teaches the network that none of these carry emotion. The effects are the functions of
:mod:`cusemo_batch.channel` (also used by the benchmark's telephone condition); this module only
draws their parameters from ``[augment]`` in the training TOML (:class:`AugmentConfig`).

Order of the chain, as on a real line: room (reverberation) -> background noise -> line level
(random active-speech level, so the codec's clipping and quantisation noise differ too) ->
handset band-pass -> codec. Each epoch a whole call goes through one line, and the model's input
normalisation runs afterwards over the whole augmented call
(:func:`cusemo_batch.training.data.augment_calls`), exactly as the scorer normalises a track.
"""

from __future__ import annotations

from dataclasses import dataclass
from fractions import Fraction

import numpy as np
from scipy.signal import resample_poly

from cusemo_batch import channel
from cusemo_batch.level import active_level_db


@dataclass(frozen=True)
class AugmentConfig:
    """``[augment]``: probabilities and parameter ranges of each effect (off unless ``enabled``)."""

    enabled: bool = False
    # Line level: the segment is scaled to an active-speech level drawn uniformly from this range
    # (dBFS), whatever its level in the corpus, so level carries no label information.
    level_dbfs: tuple[float, float] = (-45.0, -6.0)
    p_bandpass: float = 0.5  # telephone band 300-3400 Hz
    p_codec: float = 0.5  # one of ``codecs``, uniformly
    codecs: tuple[str, ...] = channel.CODECS
    p_noise: float = 0.5
    snr_db: tuple[float, float] = (10.0, 30.0)  # against the active-speech level
    # Spectrum of the added noise, one drawn uniformly per segment (channel.NOISE_COLOURS). Pink
    # alone was v4-v10's; a model that never heard a flat (white) floor reads its high-frequency
    # energy as agitation (MODEL_CARD.md, known limits). One colour = no extra random draw, so a
    # recipe without a list draws its batches exactly as before.
    noise_colours: tuple[str, ...] = ("pink",)
    p_reverb: float = 0.3
    rt60_s: tuple[float, float] = (0.1, 0.4)
    # Speed perturbation (Ko et al. 2015, Kaldi's 0.9 / 1.0 / 1.1): each training segment is played
    # at one of these speeds, drawn uniformly -- tempo, pitch and formants move together by the
    # factor, as between two speakers, and the labels are stretched with the audio
    # (:func:`cusemo_batch.training.data.batch_arrays`). Empty = off.
    speeds: tuple[float, ...] = ()
    # Microphone / handset colouring (channel.microphone): with probability p_eq a segment gets a
    # random spectral tilt (+-eq_tilt_db per octave around 1 kHz) and eq_peaks broad bumps of
    # +-eq_peak_db, so the capsule's colour carries no emotion. 0 = off, and then no extra random
    # draw: a recipe without it draws its batches exactly as before.
    p_eq: float = 0.0
    eq_tilt_db: float = 2.0
    eq_peak_db: float = 6.0
    eq_peaks: int = 2

    def validate(self) -> None:
        """Raise ValueError with a one-line reason on an unusable setting."""
        for name in ("p_bandpass", "p_codec", "p_noise", "p_reverb", "p_eq"):
            p = getattr(self, name)
            if not 0.0 <= p <= 1.0:
                raise ValueError(f"{name} must be a probability in [0, 1], got {p}")
        for name in ("level_dbfs", "snr_db", "rt60_s"):
            lo_hi = getattr(self, name)
            if len(lo_hi) != 2 or lo_hi[0] > lo_hi[1]:
                raise ValueError(f"{name} must be [low, high] with low <= high, got {list(lo_hi)}")
        if self.eq_tilt_db < 0 or self.eq_peak_db < 0 or not 0 <= self.eq_peaks <= 8:
            raise ValueError(f"eq_tilt_db and eq_peak_db must be >= 0 and eq_peaks in 0..8, got "
                             f"{self.eq_tilt_db}, {self.eq_peak_db}, {self.eq_peaks}")
        if self.rt60_s[0] <= 0:
            raise ValueError("rt60_s must be positive")
        if self.level_dbfs[1] > 0:
            raise ValueError("level_dbfs must be at most 0 dBFS")
        if any(not 0.5 <= f <= 2.0 for f in self.speeds):
            raise ValueError(f"speeds must be factors in [0.5, 2], got {list(self.speeds)}")
        bad_colours = [c for c in self.noise_colours if c not in channel.NOISE_COLOURS]
        if bad_colours or (self.p_noise > 0 and not self.noise_colours):
            raise ValueError(f"noise_colours must be a non-empty list of {', '.join(channel.NOISE_COLOURS)}, "
                             f"got {list(self.noise_colours)}")
        unknown = [c for c in self.codecs if c not in channel.CODECS]
        if unknown or (self.p_codec > 0 and not self.codecs):
            raise ValueError(f"codecs must be a non-empty list of {', '.join(channel.CODECS)}, got {list(self.codecs)}")


def augment(x: np.ndarray, sample_rate: int, cfg: AugmentConfig, rng: np.random.Generator) -> np.ndarray:
    """One random line applied to ``x`` (float32 out; ``x`` itself is never modified).

    Draws happen in a fixed order whatever is applied, so a seed gives the same line for the same
    segment even when a probability changes elsewhere in the chain.
    """
    draws = rng.random(4)
    rt60 = rng.uniform(*cfg.rt60_s)
    snr = rng.uniform(*cfg.snr_db)
    level = rng.uniform(*cfg.level_dbfs)
    codec_name = cfg.codecs[int(rng.integers(len(cfg.codecs)))] if cfg.codecs else None
    y = np.asarray(x, dtype=np.float32)
    if draws[0] < cfg.p_reverb:
        y = channel.reverb(y, sample_rate, rt60, rng)
    if cfg.p_eq > 0:  # the room, then the microphone, then the line
        use_eq = rng.random() < cfg.p_eq
        tilt, peaks = channel.random_microphone(rng, sample_rate, cfg.eq_tilt_db, cfg.eq_peak_db, cfg.eq_peaks)
        if use_eq:
            y = channel.microphone(y, sample_rate, tilt, peaks)
    if draws[1] < cfg.p_noise:
        colours = cfg.noise_colours
        colour = colours[int(rng.integers(len(colours)))] if len(colours) > 1 else colours[0]
        y = channel.add_noise(y, snr, rng, sample_rate=sample_rate, colour=colour)
    current = active_level_db(y, sample_rate)
    if np.isfinite(current):
        y = channel.apply_gain(y, level - current)
    if draws[2] < cfg.p_bandpass:
        y = channel.bandpass(y, sample_rate)
    if draws[3] < cfg.p_codec and codec_name is not None:
        y = channel.codec(y, sample_rate, codec_name)
    return y.astype(np.float32, copy=False)


def speed_ratio(factor: float) -> tuple[int, int]:
    """``factor`` as ``(up, down)`` for :func:`scipy.signal.resample_poly` (denominator <= 100)."""
    frac = Fraction(factor).limit_denominator(100)
    return frac.denominator, frac.numerator


def speed_perturb(x: np.ndarray, factor: float) -> np.ndarray:
    """``x`` played ``factor`` times faster: ``ceil(len(x) / factor)`` samples, pitch times ``factor``.

    Resampling (polyphase, scipy's anti-aliasing filter) rather than a time-stretch: the output is
    what a speaker with a proportionally shorter vocal tract and faster tempo would give, with no
    phase-vocoder artefacts for the network to learn. ``factor`` 1 returns ``x`` as float32.
    """
    x = np.asarray(x, dtype=np.float32)
    if factor == 1.0:
        return x
    up, down = speed_ratio(factor)
    return resample_poly(x, up, down).astype(np.float32)
