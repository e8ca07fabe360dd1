"""Speaker-adversarial training: a speaker classifier the network learns to defeat.

Why: the default recipe learns from ~15 voices, and on dev its arousal carries per-speaker offsets
(up to -0.37 for one held-out actor, v21 seed 42): part of what the network uses for "aroused" is
*who* is speaking. A classifier that tries to name the training speaker from the LSTM's output,
with its gradient reversed (times ``weight``) on the way into the network (Ganin & Lempitsky 2015;
for emotion, e.g. Li et al., ICASSP 2019), pushes the network towards features that do not name
the speaker. The classifier learns at its own, higher rate (``speaker_adversary_lr_factor``, 100:
at the network's rate it stayed at chance and pushed nothing), so the pressure follows what
speaker information is actually left. The default recipe uses it since v28, in ``confusion`` mode.

Two ways to push (``[loss] speaker_adversary_mode``):

* ``reverse`` -- the gradient-reversal layer above: the network *maximises* the head's
  cross-entropy. Once the head is at chance that keeps pushing: the network makes the head
  confidently *wrong* (v27's first seeds: cross-entropy 3.0-3.2 against chance 2.71, dev arousal
  falling with it).
* ``confusion`` -- the network minimises the cross-entropy of the head's prediction against the
  *uniform* distribution (Tzeng et al., ICCV 2015; Alvi et al., 2018), the head's weights held
  fixed for that term; the head learns on the network's output with the gradient stopped. The
  network's optimum is "the head cannot tell", not "the head is wrong"; the term is 0 there.

The head lives beside the network, not in it: the checkpoint, the weight average, the export and
the scorer never see it (``[loss] speaker_adversary = 0`` -- the default -- builds nothing).
Speakers are the training calls' groups (``[data] group_by``: the ``speaker`` context column).
"""

from __future__ import annotations

import math
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .config import ADVERSARY_MODES as MODES

#: Width of the classifier's hidden layer (one ReLU layer: enough to read identity from a pooled
#: LSTM state, small beside the 1.3 M-parameter network).
HIDDEN = 128


class _Reverse(torch.autograd.Function):
    """Identity forward; the gradient times ``-weight`` backward."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, weight: float) -> torch.Tensor:  # type: ignore[override]
        ctx.weight = weight
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> tuple[torch.Tensor, None]:  # type: ignore[override]
        return -ctx.weight * grad, None


def reverse_gradient(x: torch.Tensor, weight: float) -> torch.Tensor:
    """``x`` unchanged; gradients flowing back through it are multiplied by ``-weight``."""
    return _Reverse.apply(x, weight)


def masked_time_mean(seq: torch.Tensor, frames: torch.Tensor) -> torch.Tensor:
    """Mean of ``seq`` [B, T, H] over each row's first ``frames[b]`` steps (batch padding excluded)."""
    t = seq.shape[1]
    n = frames.clamp(min=1, max=t).to(seq.dtype)
    inside = (torch.arange(t, device=seq.device)[None, :] < n[:, None]).to(seq.dtype)
    return (seq * inside[..., None]).sum(1) / n[:, None]


def require_speakers(n_speakers: int) -> None:
    """Raise ValueError unless there are at least 2 training speakers: with one there is nothing to
    tell apart. The one check, for the head and for `train` before any seed starts."""
    if n_speakers < 2:
        raise ValueError(f"[loss] speaker_adversary needs at least 2 training speakers, these calls have "
                         f"{n_speakers}: set speaker_adversary = 0 in the config (the default recipe has 0.3)")


class SpeakerAdversary(nn.Module):
    """Names the training speaker of each segment from the time-mean of the network's LSTM output."""

    def __init__(self, hidden_size: int, n_speakers: int, weight: float, mode: str = "confusion") -> None:
        super().__init__()
        require_speakers(n_speakers)
        if mode not in MODES:
            raise ValueError(f"speaker adversary mode must be one of {', '.join(MODES)}, not {mode!r}")
        self.weight = float(weight)
        self.mode = mode
        self.head = nn.Sequential(nn.Linear(hidden_size, HIDDEN), nn.ReLU(), nn.Linear(HIDDEN, n_speakers))

    def loss(self, seq: torch.Tensor, frames: torch.Tensor, speaker: torch.Tensor) -> torch.Tensor:
        """What to add to the training loss: the head's cross-entropy (its gradient reaching ``seq``
        reversed), or with ``confusion`` the head's cross-entropy on stopped features plus
        ``weight`` times the network's confusion term. See :meth:`parts` for the two separately."""
        head_ce, push = self.parts(seq, frames, speaker)
        return head_ce if push is None else head_ce + self.weight * push

    def parts(self, seq: torch.Tensor, frames: torch.Tensor,
              speaker: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(the head's speaker cross-entropy, the network's confusion term or None with ``reverse``)."""
        if self.mode == "reverse":
            pooled = masked_time_mean(reverse_gradient(seq, self.weight), frames)
            return F.cross_entropy(self.head(pooled), speaker), None
        pooled = masked_time_mean(seq, frames)
        head_ce = F.cross_entropy(self.head(pooled.detach()), speaker)
        return head_ce, confusion(self._frozen_head(pooled))

    def _frozen_head(self, x: torch.Tensor) -> torch.Tensor:
        """The head applied with its weights detached: gradients reach ``x`` only."""
        for layer in self.head:
            x = F.linear(x, layer.weight.detach(), layer.bias.detach()) if isinstance(layer, nn.Linear) else layer(x)
        return x


def confusion(logits: torch.Tensor) -> torch.Tensor:
    """Cross-entropy of ``softmax(logits)`` against the uniform distribution, minus its minimum
    ``ln(classes)``: 0 when every row's prediction is uniform, larger the surer the head is."""
    n = logits.shape[-1]
    return -(F.log_softmax(logits, dim=-1).mean(dim=-1)).mean() - math.log(n)


def speaker_ids(groups: Sequence[str], train_indices: Sequence[int]) -> dict[int, int]:
    """Call index -> class index of its speaker, over the training calls (classes in sorted order)."""
    names = sorted({groups[i] for i in train_indices})
    index = {g: k for k, g in enumerate(names)}
    return {i: index[groups[i]] for i in train_indices}


def segment_speakers(call_indices: Sequence[int], ids: dict[int, int]) -> np.ndarray:
    """The speaker class of each segment's call, as the int64 targets cross-entropy wants."""
    return np.array([ids[i] for i in call_indices], np.int64)
