"""F0 variability per call and speaker (eGEMAPS via openSMILE), ranked to pick varied calls.

The paper ranks candidate calls "by the standard deviation of F0 (eGEMAPS, openSMILE)" before
annotation, to favour emotionally varied calls. Which measure, exactly:

* **Ranking key: ``f0_sd_st``, the standard deviation of F0 in semitones** (the issue's "semitone
  standard deviation"), over the voiced frames of the eGEMAPSv02 low-level descriptor
  ``F0semitoneFrom27.5Hz_sma3nz`` (openSMILE: semitones above 27.5 Hz, smoothed, 0 = unvoiced;
  population sd, ddof = 0, as openSMILE's functionals). Semitones are a log scale, so one
  semitone is the same *relative* pitch movement for a low and a high voice: the sd is comparable
  across speakers and genders.
* ``f0_cv`` is eGEMAPS' own functional ``F0semitoneFrom27.5Hz_sma3nz_stddevNorm`` = sd / mean of
  the same voiced frames (a coefficient of variation). It is reported, not ranked on: dividing by
  the mean semitone value (about 35 st for a male voice, 45 st for a female one) makes the same
  pitch movement score ~25 % lower for a higher voice. We compute it from the LLDs (one openSMILE
  pass instead of two); the tests check it equals openSMILE's functional.

Audio is decoded at 16 kHz whatever the source rate (openSMILE's eGEMAPS pitch tracker gives
somewhat different values at 8 kHz, so a fixed rate keeps calls of different rates comparable).
For a mono file with RTTM diarization, openSMILE runs once on the whole file and each speaker
keeps the frames whose centre lies in one of its RTTM segments.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import polars as pl

from cusemo_batch.schema import CALL_ERROR_SCHEMA

F0_LLD = "F0semitoneFrom27.5Hz_sma3nz"
F0_FUNCTIONAL_CV = "F0semitoneFrom27.5Hz_sma3nz_stddevNorm"
SAMPLE_RATE = 16000
MIN_VOICED_S = 1.0


@dataclass(frozen=True)
class F0Stats:
    voiced_frames: int
    voiced_s: float
    mean_st: float
    sd_st: float  # ranking key
    cv: float  # eGEMAPS stddevNorm

    @classmethod
    def from_frames(cls, f0_st: np.ndarray, hop_s: float) -> "F0Stats":
        v = np.asarray(f0_st, dtype=np.float64)
        v = v[np.isfinite(v) & (v > 0)]
        if v.size == 0:
            return cls(0, 0.0, math.nan, math.nan, math.nan)
        mean, sd = float(v.mean()), float(v.std())
        return cls(int(v.size), v.size * hop_s, mean, sd, sd / mean if mean else math.nan)


def make_smile(level: str = "lld"):
    """An openSMILE eGEMAPSv02 extractor (``lld`` or ``functionals``); reuse it across files."""
    try:
        import opensmile
    except ImportError as e:  # pragma: no cover - depends on the install
        raise ImportError("rank-f0 needs openSMILE: pip install 'cusemo-batch[prepare]'") from e
    feature_level = (opensmile.FeatureLevel.LowLevelDescriptors if level == "lld"
                     else opensmile.FeatureLevel.Functionals)
    return opensmile.Smile(feature_set=opensmile.FeatureSet.eGeMAPSv02, feature_level=feature_level)


def f0_frames(x: np.ndarray, sample_rate: int, smile=None) -> tuple[np.ndarray, np.ndarray, float]:
    """Per-frame F0 in semitones (0 = unvoiced), frame centres in seconds, and the hop in seconds."""
    smile = smile or make_smile("lld")
    lld = smile.process_signal(np.asarray(x, dtype=np.float32), sample_rate)
    f0 = lld[F0_LLD].to_numpy(dtype=np.float64)
    start = lld.index.get_level_values("start").total_seconds().to_numpy()
    end = lld.index.get_level_values("end").total_seconds().to_numpy()
    hop = float(np.median(np.diff(start))) if start.size > 1 else 0.01
    return f0, (start + end) / 2, hop


def f0_stats(x: np.ndarray, sample_rate: int, smile=None) -> F0Stats:
    f0, _, hop = f0_frames(x, sample_rate, smile)
    return F0Stats.from_frames(f0, hop)


F0_SCHEMA = {
    "rank": pl.Int32, "call_id": pl.Utf8, "speaker": pl.Utf8, "f0_sd_st": pl.Float64,
    "f0_cv": pl.Float64, "f0_mean_st": pl.Float64, "voiced_s": pl.Float64, "duration_s": pl.Float64,
    "layout": pl.Utf8, "path": pl.Utf8, "channel": pl.Int32,
}
ERROR_SCHEMA = CALL_ERROR_SCHEMA  # one error-row layout for scoring and curation


def rank_f0(root: str | Path, opts=None, min_voiced_s: float = MIN_VOICED_S,
            progress: Callable[[int], None] = lambda n=1: None) -> tuple[pl.DataFrame, pl.DataFrame]:
    """F0 variability of every speaker of every call under ``root``, ranked by ``f0_sd_st``.

    Calls are found with :func:`cusemo_batch.calls.discover` (stereo, per-speaker, mono + RTTM, mono).
    Returns ``(ranking, errors)``. ``rank`` is 1 for the most varied speaker-track; tracks with less
    than ``min_voiced_s`` of voiced speech get no rank (a sd over a few frames means nothing) and
    sort last. Calls that cannot be read are rows of ``errors``, never exceptions.
    """
    from cusemo_batch.audio import AudioError, load_audio
    from cusemo_batch.calls import DiscoveryOptions, RTTMError, discover, read_rttm

    calls, disc_errors = discover(root, opts or DiscoveryOptions())
    errors = [{"call_id": e.call_id, "file": e.file, "stage": e.stage, "error": e.error, "message": e.message}
              for e in disc_errors]
    smile = make_smile("lld")
    rows = []
    for call in calls:
        cache: dict[tuple[str, int | None], tuple[np.ndarray, np.ndarray, float, float]] = {}
        for role, src in sorted(call.speakers.items()):
            try:
                key = (str(src.path), src.channel)
                if key not in cache:
                    x = load_audio(src.path, SAMPLE_RATE, src.channel)
                    f0, centres, hop = f0_frames(x, SAMPLE_RATE, smile)
                    cache[key] = (f0, centres, hop, len(x) / SAMPLE_RATE)
                f0, centres, hop, duration = cache[key]
                if src.rttm is not None:
                    keep = np.zeros(f0.size, dtype=bool)
                    for seg in read_rttm(src.rttm):
                        if seg.label in src.rttm_labels:
                            keep |= (centres >= seg.onset_s) & (centres < seg.end_s)
                    f0 = np.where(keep, f0, 0.0)
                st = F0Stats.from_frames(f0, hop)
            except (AudioError, RTTMError, ValueError, RuntimeError) as e:
                errors.append({"call_id": call.call_id, "file": str(src.path), "stage": "f0",
                               "error": type(e).__name__, "message": str(e).splitlines()[0][:300]})
                continue
            rows.append({"rank": None, "call_id": call.call_id, "speaker": role, "f0_sd_st": st.sd_st,
                         "f0_cv": st.cv, "f0_mean_st": st.mean_st, "voiced_s": round(st.voiced_s, 3),
                         "duration_s": round(duration, 3), "layout": call.layout, "path": str(src.path),
                         "channel": src.channel})
        progress(1)
    df = pl.DataFrame(rows, schema=F0_SCHEMA, orient="row") if rows else pl.DataFrame(schema=F0_SCHEMA)
    rankable = (pl.col("voiced_s") >= min_voiced_s) & pl.col("f0_sd_st").is_not_nan()
    df = (df.with_columns(rankable.alias("_ok"))
          .sort(["_ok", "f0_sd_st", "call_id", "speaker"], descending=[True, True, False, False], nulls_last=True))
    n_ok = int(df["_ok"].sum())
    ranks = [i + 1 if i < n_ok else None for i in range(df.height)]
    df = df.with_columns(pl.Series("rank", ranks, dtype=pl.Int32)).drop("_ok")
    err = pl.DataFrame(errors, schema=ERROR_SCHEMA, orient="row") if errors else pl.DataFrame(schema=ERROR_SCHEMA)
    return df, err
