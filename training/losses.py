"""Losses of the paper: CCC loss per variable, BCE for the binary context task, eq. 3 combination.

CCC is computed over *all valid positions of the batch at once* (padding masked out), the usual
practice in continuous emotion recognition: per-sequence CCC on 150 s segments would be noisy and
undefined for constant segments.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def ccc(pred: torch.Tensor, gold: torch.Tensor, mask: torch.Tensor | None = None, eps: float = 1e-8) -> torch.Tensor:
    """Concordance correlation coefficient over the positions where ``mask`` is true."""
    if mask is None:
        mask = torch.ones_like(pred, dtype=torch.bool)
    mask = mask & torch.isfinite(gold)
    p, g = pred[mask], gold[mask]
    if p.numel() < 2:
        return pred.sum() * 0.0  # keeps the graph; contributes nothing
    mp, mg = p.mean(), g.mean()
    vp, vg = ((p - mp) ** 2).mean(), ((g - mg) ** 2).mean()
    cov = ((p - mp) * (g - mg)).mean()
    return 2.0 * cov / (vp + vg + (mp - mg) ** 2 + eps)


def ccc_loss(pred: torch.Tensor, gold: torch.Tensor, mask: torch.Tensor | None = None,
             mse_weight: float = 0.0) -> torch.Tensor:
    """``1 - CCC``, plus ``mse_weight`` times the mean squared error over the same positions."""
    loss = 1.0 - ccc(pred, gold, mask)
    if mse_weight:
        m = (mask if mask is not None else torch.ones_like(pred, dtype=torch.bool)) & torch.isfinite(gold)
        if m.any():
            loss = loss + mse_weight * ((pred[m] - gold[m]) ** 2).mean()
    return loss


def bce_loss(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Binary cross-entropy with logits over the items whose target is known (NaN = unknown)."""
    known = torch.isfinite(target)
    if not known.any():
        return logits.sum() * 0.0
    return F.binary_cross_entropy_with_logits(logits[known], target[known])


def total_loss(l_valence: torch.Tensor, l_arousal: torch.Tensor, l_alpha: torch.Tensor | None = None,
               l_beta: torch.Tensor | None = None, alpha: float = 0.0, beta: float = 0.0) -> torch.Tensor:
    """Eq. 3: ``[L_V + L_A + alpha*L_E + beta*L_G] / (2 + alpha + beta)``."""
    total = l_valence + l_arousal
    if alpha:
        total = total + alpha * l_alpha
    if beta:
        total = total + beta * l_beta
    return total / (2.0 + alpha + beta)
