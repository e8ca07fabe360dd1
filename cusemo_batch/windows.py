"""A speaker's model frames -> the ``--rate`` windows of the timeseries table, in original call time.

The model sees compressed audio (long silences cut, ``silence.TimeMap``) at 32 frames/s; the table
holds windows of the *call's* clock, each with the share of it the speaker spends talking. The
frames are pooled by overlap, cut at the silence cuts (``timegrid``: the pooling training uses), so
a window holds exactly the audio it covers.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import numpy as np
import polars as pl

from . import silence, timegrid


@dataclass
class SpeakerAudio:
    """One speaker of a decoded call, ready for the model: what the scorer infers on and pools back."""

    speaker: str
    audio: np.ndarray  # compressed, normalised, at the model rate
    time_map: silence.TimeMap
    speech: np.ndarray  # VAD frames (bool) in original time
    duration_s: float  # original
    # the line as it arrived, for the calls table; None (null there, as in rows scored before schema
    # 4) when the track was not measured
    input_level_dbfs: float | None = None  # active-speech level of `audio` before the normalisation
    clipped_fraction: float | None = None  # share of `audio`'s samples at full scale before it


def speaker_windows(call_id: str, item: SpeakerAudio, frames: dict[str, np.ndarray], outputs: Sequence[str],
                    frame_rate: float, sample_rate: int, rate: float) -> pl.DataFrame:
    """One speaker's timeseries rows: every output pooled into ``rate``-second windows, and the speech ratio."""
    n_win = max(1, math.ceil(item.duration_s / rate - 1e-9))
    p_start, p_end, owner = item.time_map.frame_pieces(len(frames["valence"]), 1 / frame_rate)
    pooled = timegrid.pool_intervals(np.stack([frames[k] for k in outputs], axis=1), p_start, p_end, owner, rate, n_win)
    cols = dict(zip(outputs, pooled.T))
    vad_s = silence.frame_hop(sample_rate, silence.VAD_FRAME_S) / sample_rate
    vad_win = np.clip(((np.arange(len(item.speech)) + 0.5) * vad_s / rate).astype(np.int64), 0, n_win - 1)
    speech_ratio = np.bincount(vad_win, weights=item.speech.astype(np.float64), minlength=n_win) * vad_s / rate
    starts = np.arange(n_win) * rate
    df = pl.DataFrame({
        "call_id": [call_id] * n_win,
        "speaker": [item.speaker] * n_win,
        "t_start_s": starts,
        "t_end_s": np.minimum(starts + rate, item.duration_s),
        # the linear heads can overshoot the annotation scale the model was trained on
        "valence": np.clip(cols["valence"], -1.0, 1.0),
        "arousal": np.clip(cols["arousal"], -1.0, 1.0),
        **{name: cols[name] for name in outputs[2:]},
        "speech_ratio": np.clip(speech_ratio, 0.0, 1.0),
    })
    return df.with_columns(pl.col("valence", "arousal").fill_nan(None))
