"""Gold standard and label grids (pure numpy; no torch).

* Gold standard: mean of the annotators (the paper), or median, or one named annotator, taken over
  the bins all annotators rated, scaled from ±magnitude to [-1, 1].
* Label rate: tracks come at their own bin width (500 ms for Darma); :func:`gold_at_rate` resamples
  them with a cubic spline through the bin centres (the paper's label-rate study).
* Context targets: the interval task (empathy 0..10 -> [0, 1]) and the binary task (gender
  F -> 1, M -> 0, U / missing -> masked out of the BCE).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from cusemo_batch.curation.select import CONSENSUS_METHODS
from cusemo_batch.timegrid import resample_track

from .corpus import CorpusCall

# The consensus gold standards (curation's) + ``single``, one named annotator's trace (the training
# experiments on rater choice).
GOLD_METHODS = (*CONSENSUS_METHODS, "single")


@dataclass
class Gold:
    bin_s: float
    valence: np.ndarray  # [-1, 1]
    arousal: np.ndarray

    def __len__(self) -> int:
        return len(self.valence)

    @property
    def duration_s(self) -> float:
        return len(self) * self.bin_s


def gold_standard(call: CorpusCall, method: str = "mean", annotator: str | None = None) -> Gold:
    """Combine a call's tracks into one gold-standard trajectory in [-1, 1]."""
    tracks = call.tracks
    n = min(len(t) for t in tracks)
    if method == "single":
        if annotator is None:
            raise ValueError("gold method 'single' needs an annotator name")
        chosen = [t for t in tracks if t.annotator == annotator]
        if not chosen:
            raise ValueError(f"call {call.call_id}: no track from annotator {annotator!r}")
        v, a = chosen[0].valence[:n], chosen[0].arousal[:n]
        scale = chosen[0].magnitude
    elif method in ("mean", "median"):
        reduce = np.mean if method == "mean" else np.median
        v = reduce(np.stack([t.valence[:n] / t.magnitude for t in tracks]), axis=0)
        a = reduce(np.stack([t.arousal[:n] / t.magnitude for t in tracks]), axis=0)
        scale = 1.0
    else:
        raise ValueError(f"unknown gold method {method!r}; expected one of {GOLD_METHODS}")
    return Gold(tracks[0].bin_s, np.clip(v / scale, -1, 1), np.clip(a / scale, -1, 1))


def gold_at_rate(gold: Gold, label_rate_ms: float) -> Gold:
    """Resample the gold standard to bins of ``label_rate_ms`` with cubic splines."""
    new_bin = label_rate_ms / 1000.0
    if np.isclose(new_bin, gold.bin_s):
        return gold
    n_new = int(np.floor(gold.duration_s / new_bin + 1e-9))
    v = resample_track(gold.valence, gold.bin_s, new_bin, n_new)
    a = resample_track(gold.arousal, gold.bin_s, new_bin, n_new)
    return Gold(new_bin, np.clip(v, -1, 1), np.clip(a, -1, 1))


def interval_target(call: CorpusCall, column: str, scale_max: float = 10.0) -> float:
    """Interval context variable (e.g. empathy 0..10) scaled to [0, 1]; NaN when missing."""
    value = call.context.get(column)
    if value is None or isinstance(value, str):
        return float("nan")
    return float(value) / scale_max


def binary_target(call: CorpusCall, column: str = "gender", positive: str = "F") -> float:
    """Binary context variable as 1/0 (gender: F=1, M=0); NaN (masked) for U or missing."""
    value = call.context.get(column)
    if value is None:
        return float("nan")
    if column == "gender":
        return {"F": 1.0, "M": 0.0}.get(str(value).upper(), float("nan"))
    if isinstance(value, (int, float)):
        return float(value) if value in (0, 1) else float("nan")
    return 1.0 if str(value) == positive else 0.0
