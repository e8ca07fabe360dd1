"""Evaluation: frame outputs pooled to the label grid, CCC per split, the collapse test, seed summaries.

Shared by the training loop (dev CCC every epoch, the test read of the best checkpoint),
``cusemo-batch evaluate`` and the experiment grids; the pooling is ``cusemo_batch.timegrid``'s, the
one the scorer uses.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from cusemo_batch.metrics import ccc_concat_and_mean
from cusemo_batch.timegrid import pooling_matrix

from .checkpoint import load_checkpoint
from .config import Config
from .corpus import read_corpus
from .data import CallData, load_calls, valid_bins
from .model import CRNN


class Pooler:
    """Frame outputs -> label bins (overlap-weighted mean, see cusemo_batch.timegrid), cached per shape."""

    def __init__(self, frame_s: float, bin_s: float) -> None:
        self.frame_s, self.bin_s = frame_s, bin_s
        self._cache: dict[tuple[int, int], torch.Tensor] = {}

    def __call__(self, frames: torch.Tensor, n_bins: int) -> torch.Tensor:
        """``[B, F, H] -> [B, n_bins, H]``."""
        key = (frames.shape[1], n_bins)
        if key not in self._cache:
            m = pooling_matrix(frames.shape[1], self.frame_s, self.bin_s, n_bins).toarray()
            self._cache[key] = torch.from_numpy(m.astype(np.float32))
        return torch.einsum("kf,bfh->bkh", self._cache[key], frames)

@torch.no_grad()
def predict_bins(model: CRNN, call: CallData, cfg: Config) -> np.ndarray:
    """Whole-call prediction pooled to the label grid: ``[n_valid_bins, n_outputs]``."""
    model.eval()
    bin_s = cfg.data.label_rate_ms / 1000
    n = valid_bins(call, cfg.model.hop, cfg.model.sample_rate, bin_s)
    frames = model(torch.from_numpy(call.audio)[None])[0].numpy()
    return pooling_matrix(len(frames), 1 / cfg.model.frame_rate, bin_s, n) @ frames

def evaluate_calls(model: CRNN, calls: list[CallData], cfg: Config) -> dict:
    """Test/dev CCC per dimension: over concatenated calls (the paper's) and mean per call."""
    preds_v, preds_a, gold_v, gold_a = [], [], [], []
    for c in calls:
        p = predict_bins(model, c, cfg)
        n = len(p)
        preds_v.append(p[:, 0]), preds_a.append(p[:, 1])
        gold_v.append(c.valence[:n]), gold_a.append(c.arousal[:n])
    out = {"n_calls": len(calls)}
    for dim, p, g in (("valence", preds_v, gold_v), ("arousal", preds_a, gold_a)):
        concat, per_call = ccc_concat_and_mean(p, g)
        out[dim] = concat
        out[f"{dim}_per_call"] = per_call
        out[f"{dim}_pred_sd"] = float(np.std(np.concatenate(p))) if p else 0.0
    return out

COLLAPSE_SD = 1e-6  # dev prediction sd below this = constant output

COLLAPSE_CCC = 1e-3  # |dev CCC| below this on both dimensions = no information about the labels

def collapsed(metrics: dict) -> bool:
    """True when the dev predictions say nothing about the labels on either dimension.

    Two failure modes seen at lr 1e-3 and above: every MLP ReLU dies (one constant output, the CCC
    loss has no gradient left) or the weights blow up (huge outputs, dev CCC ~1e-6). A model that is
    merely early in training still has |CCC| of a few hundredths on at least one dimension.
    """
    def dead(d: str) -> bool:
        sd, ccc = metrics.get(f"{d}_pred_sd", 1.0), metrics.get(d, 1.0)
        return not (sd >= COLLAPSE_SD) or not (abs(ccc) >= COLLAPSE_CCC)  # NaN counts as dead

    return dead("valence") and dead("arousal")

def summarise(results: list[dict]) -> dict:
    """Mean and sample sd of test (and dev) CCC over seeds, the paper's reporting."""
    out: dict = {"seeds": [r["seed"] for r in results]}
    for part in ("test", "dev"):
        for key in ("valence", "arousal", "valence_per_call", "arousal_per_call"):
            vals = [r[part][key] for r in results if r.get(part) and key in r[part]]
            if vals:
                out[f"{part}_{key}"] = {"mean": float(np.mean(vals)),
                                        "sd": float(np.std(vals, ddof=1)) if len(vals) > 1 else 0.0,
                                        "values": vals}
    return out

def evaluate_checkpoint(checkpoint: str | Path, corpus_dir: str | Path, split_name: str = "test",
                        split: dict[str, str] | None = None) -> dict:
    """Evaluate a checkpoint on a corpus (one split when a split map is known, else all calls)."""
    model, meta = load_checkpoint(checkpoint)
    from .config import from_dict

    cfg = from_dict(meta["config"])
    corpus = read_corpus(corpus_dir, min_annotators=cfg.data.min_annotators)
    if split is not None and split_name != "all":
        corpus.calls = [c for c in corpus.calls if split.get(c.call_id) == split_name]
        if not corpus.calls:
            raise ValueError(f"no call of the corpus is in split {split_name!r}")
    calls = load_calls(corpus, cfg)
    return evaluate_calls(model, calls, cfg)
