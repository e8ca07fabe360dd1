"""The CusEmo CRNN (Feng & Devillers): raw 8 kHz waveform -> 3 conv blocks -> 2-layer LSTM -> MLP.

Design choice that the paper leaves open: *where the zero padding goes*. Every convolution and
pooling here is "valid" (no padding inside the network); instead the raw waveform is padded once at
the input by ``pad_left``/``pad_right`` samples so that

* the output has exactly ``floor(samples / hop)`` frames (32 frames/s at 8 kHz, hop 250), frame ``i``
  centred on samples ``[i*hop, (i+1)*hop)``;
* a zero-padded batch of calls of different lengths gives, for every call, the same frames as that
  call alone (the LSTM runs forward, so the padded tail cannot leak backwards);
* a long call can be fed in chunks: chunk frames ``[a, b)`` need the padded samples
  ``[a*hop, b*hop + receptive_field - hop)`` and the LSTM state of the previous chunk, and give the
  same numbers as one pass (see :meth:`CRNN.forward_padded`).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import torch
from torch import nn


@dataclass(frozen=True)
class ModelConfig:
    """Sizes of the CRNN; defaults are the paper's."""

    sample_rate: int = 8000
    conv_channels: tuple[int, ...] = (50, 125, 125)
    conv_kernels: tuple[int, ...] = (8, 6, 6)
    pool_sizes: tuple[int, ...] = (10, 5, 5)
    lstm_hidden: int = 256
    lstm_layers: int = 2
    lstm_dropout: float = 0.5
    mlp_sizes: tuple[int, ...] = (512, 256)
    mlp_dropout: float = 0.0
    # Output heads, in this order: always valence and arousal; optional interval context task
    # (the paper's empathy, "alpha" task) and binary context task (gender, "beta" task).
    outputs: tuple[str, ...] = ("valence", "arousal")

    def __post_init__(self) -> None:
        n = len(self.conv_channels)
        if not (len(self.conv_kernels) == n == len(self.pool_sizes)):
            raise ValueError("conv_channels, conv_kernels and pool_sizes must have the same length")
        if self.outputs[:2] != ("valence", "arousal"):
            raise ValueError("the first two outputs must be valence and arousal")

    @property
    def hop(self) -> int:
        """Input samples per output frame (product of the pool sizes: 250 -> 32 frames/s)."""
        return math.prod(self.pool_sizes)

    @property
    def frame_rate(self) -> float:
        return self.sample_rate / self.hop

    @property
    def receptive_field(self) -> int:
        """Input samples that one output frame sees (557 for the paper's sizes)."""
        r = 1
        for k, p in zip(reversed(self.conv_kernels), reversed(self.pool_sizes)):
            r = r * p + k - 1
        return r

    @property
    def pad_left(self) -> int:
        return (self.receptive_field - self.hop + 1) // 2

    @property
    def pad_right(self) -> int:
        return self.receptive_field - self.hop - self.pad_left

    def n_frames(self, n_samples: int) -> int:
        return n_samples // self.hop

    def to_dict(self) -> dict:
        return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items()}

    @classmethod
    def from_dict(cls, d: dict) -> "ModelConfig":
        known = {f for f in cls.__dataclass_fields__}
        unknown = set(d) - known
        if unknown:
            raise ValueError(f"unknown model config keys: {sorted(unknown)}")
        return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in d.items()})


class CRNN(nn.Module):
    """Frame-level regressor: ``[batch, samples] -> [batch, frames, n_outputs]``."""

    def __init__(self, config: ModelConfig = ModelConfig()) -> None:
        super().__init__()
        self.config = config
        blocks: list[nn.Module] = []
        in_ch = 1
        for ch, k, p in zip(config.conv_channels, config.conv_kernels, config.pool_sizes):
            blocks += [nn.Conv1d(in_ch, ch, k), nn.ReLU(), nn.MaxPool1d(p, stride=p)]
            in_ch = ch
        self.cnn = nn.Sequential(*blocks)
        self.lstm = nn.LSTM(
            in_ch,
            config.lstm_hidden,
            num_layers=config.lstm_layers,
            batch_first=True,
            dropout=config.lstm_dropout if config.lstm_layers > 1 else 0.0,
        )
        mlp: list[nn.Module] = []
        prev = config.lstm_hidden
        for size in config.mlp_sizes:
            mlp += [nn.Linear(prev, size), nn.ReLU(), nn.Dropout(config.mlp_dropout)]
            prev = size
        mlp.append(nn.Linear(prev, len(config.outputs)))
        self.mlp = nn.Sequential(*mlp)

    def forward(self, audio: torch.Tensor) -> torch.Tensor:
        """Whole-call pass on an unpadded waveform ``[batch, samples]``."""
        c = self.config
        padded = nn.functional.pad(audio, (c.pad_left, c.pad_right))
        out, _ = self.forward_padded(padded)
        return out

    def forward_padded(
        self,
        padded: torch.Tensor,
        state: tuple[torch.Tensor, torch.Tensor] | None = None,
    ) -> tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor]]:
        """Streaming step: input already carries its context (``receptive_field - hop`` extra samples).

        Returns per-frame outputs and the LSTM state ``(h, c)``, each ``[layers, batch, hidden]``.
        """
        feats = self.cnn(padded.unsqueeze(1)).transpose(1, 2)  # [B, frames, channels]
        seq, new_state = self.lstm(feats, state)
        return self.mlp(seq), new_state

    def n_params(self) -> int:
        return sum(p.numel() for p in self.parameters())


def macs_per_second(config: ModelConfig = ModelConfig()) -> float:
    """Multiply-accumulates per second of audio (conv + LSTM + MLP), for FLOP-bound estimates."""
    rate = float(config.sample_rate)
    macs = 0.0
    in_ch = 1
    for ch, k, p in zip(config.conv_channels, config.conv_kernels, config.pool_sizes):
        macs += rate * in_ch * ch * k  # conv runs at the input rate of its block
        rate /= p
        in_ch = ch
    h = config.lstm_hidden
    prev = in_ch
    for _ in range(config.lstm_layers):
        macs += rate * 4 * h * (prev + h)
        prev = h
    for size in config.mlp_sizes:
        macs += rate * prev * size
        prev = size
    macs += rate * prev * len(config.outputs)
    return macs
