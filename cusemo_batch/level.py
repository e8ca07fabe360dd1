"""Input level: the active-speech level of a track and the normalisation that removes it.

Why this exists: a raw-waveform CRNN sees the input *level*, and in acted corpora the level is a
label proxy (RAVDESS: angry utterances around -26 dBFS active-speech RMS, calm around -46), so a
model trained on raw audio learns loudness. A call center's lines, headsets and codecs put clients
anywhere from -40 to -6 dBFS, so every loud line would read as an angry client. The model contract
``speech_rms`` therefore scales each speaker track, as a whole, to a fixed active-speech level
before inference -- in training (:mod:`cusemo_batch.training.data`), export checks and scoring
(:mod:`cusemo_batch.scorer`), all through :func:`cusemo_batch.audio.normalise`, which calls
:func:`normalise_level` here. One gain per track: loudness changes *within* a call (a client raising
their voice) still reach the model; only the track's overall level is removed.

Active-speech level (:func:`active_level_db`): energies of 20 ms frames (mean removed, as the VAD
computes them); the *reference* is a high percentile (p95) of those energies, and the active frames
are the ones within ``window_db`` (30 dB) of it -- the syllables, not the pauses, hum or line noise
between them (a fixed ``-x dBFS`` gate would not scale with the level and would break invariance).
The level is the RMS over the active frames, in dBFS. Every step is scale-equivariant: multiplying
the track by ``g`` adds ``20 log10 g`` dB to every frame energy, to the reference and to the level,
and selects the same frames, so the normalised output is the same (to float rounding) whatever the
input gain. This is close to ITU-T P.56's active speech level, without its envelope detector.

Sparse speech: when over 95 % of the frames are digital silence (an RTTM-masked speaker scored
without silence compression), the reference is taken among the frames with any signal instead.
Known limit: a track that is mostly *non-silent* pauses (hiss) with under ~5 % speech gets a
reference in the hiss and a level a few dB low; the scorer's silence compression (on by default)
keeps pauses short, so scored tracks are mostly speech.

Gain limit: at most ``MAX_GAIN_DB`` (60 dB) up or down; a track quieter than that (below about
-86 dBFS) is not speech the product can score, and the limit keeps digital near-silence from being
blown up to full scale.
"""

from __future__ import annotations

import numpy as np

from .silence import frame_energy_db

LEVEL_METHOD = "speech_rms"  # the name recorded in ONNX metadata and checkpoints
TARGET_DBFS = -26.0  # target active-speech RMS (ITU-T P.56's nominal speech level)
WINDOW_DB = 30.0  # frames within this of the reference energy are active speech
REFERENCE_PERCENTILE = 95.0  # robust "loudest" energy: a click or a pop is not the reference
FRAME_S = 0.02
MAX_GAIN_DB = 60.0
CLIP_LEVEL = 0.99  # |sample| at or above this share of full scale counts as clipped
_CLIP_BLOCK = 1 << 20  # samples per block when counting them (bounded temporary memory)
_SILENT_DB = -119.0  # frame_energy_db's floor is -120: such frames are digital silence
DESCRIPTION = (f"{LEVEL_METHOD}: each speaker track scaled by one gain to {TARGET_DBFS:g} dBFS active-speech "
               f"RMS (20 ms frames within {WINDOW_DB:g} dB of the track's p{REFERENCE_PERCENTILE:g} energy)")


def active_level_db(x: np.ndarray, sample_rate: int, *, window_db: float = WINDOW_DB,
                    percentile: float = REFERENCE_PERCENTILE, frame_s: float = FRAME_S) -> float:
    """Active-speech RMS level of ``x`` in dBFS (``-inf`` for digital silence or empty input).

    The RMS is taken over the frames whose energy is within ``window_db`` of the ``percentile``-th
    percentile of all frame energies (module docstring: why each choice).
    """
    energy = frame_energy_db(np.asarray(x, dtype=np.float32), sample_rate, frame_s)
    if energy.size == 0:
        return float("-inf")
    ref = float(np.percentile(energy, percentile))
    if ref <= _SILENT_DB:  # over 95 % digital silence: take the reference among the frames with signal
        sounding = energy[energy > _SILENT_DB]
        if sounding.size == 0:
            return float("-inf")
        ref = float(np.percentile(sounding, percentile))
    active = energy[energy >= ref - window_db]
    power = np.mean(np.power(10.0, active / 10.0))
    return float(10.0 * np.log10(power))


def clipped_fraction(x: np.ndarray, threshold: float = CLIP_LEVEL) -> float:
    """Fraction of the samples of ``x`` at or beyond ``threshold`` of full scale (0 for empty input).

    Why it is reported: the level contract removes a track's level, not saturation, and a line that
    clips sounds harsher -- the default model reads it as more agitated (MODEL_CARD.md, *Clipping*:
    about +0.06 mean arousal with 1.8 % of the samples clipped). Clean speech has none at full scale;
    the threshold sits a little below it because resampling to the model rate smooths the flat tops
    of clipped waveforms (they overshoot and ripple around full scale instead of sitting on it).
    """
    x = np.asarray(x).ravel()
    if x.size == 0:
        return 0.0
    # in blocks: a 2 h track is 230 MB of float32, and np.abs would copy all of it at once
    n = sum(int(np.count_nonzero(np.abs(x[i:i + _CLIP_BLOCK]) >= threshold)) for i in range(0, x.size, _CLIP_BLOCK))
    return n / x.size


def level_gain_db(x: np.ndarray, sample_rate: int, target_dbfs: float = TARGET_DBFS) -> float:
    """Gain in dB that brings ``x`` to ``target_dbfs`` active-speech RMS (0 for digital silence)."""
    return _gain_db(active_level_db(x, sample_rate), target_dbfs)


def _gain_db(level_db: float, target_dbfs: float) -> float:
    if not np.isfinite(level_db):
        return 0.0
    return float(np.clip(target_dbfs - level_db, -MAX_GAIN_DB, MAX_GAIN_DB))


def normalise_level(x: np.ndarray, sample_rate: int, target_dbfs: float = TARGET_DBFS, *,
                    level_db: float | None = None) -> np.ndarray:
    """``x`` scaled by one gain to ``target_dbfs`` active-speech RMS (float32, a new array).

    ``level_db``: ``x``'s :func:`active_level_db` when the caller measured it already (the scorer
    reports it), so a long track is not measured twice.
    """
    level = active_level_db(x, sample_rate) if level_db is None else level_db
    gain = np.float32(10.0 ** (_gain_db(level, target_dbfs) / 20.0))
    return (np.asarray(x, dtype=np.float32) * gain).astype(np.float32, copy=False)
