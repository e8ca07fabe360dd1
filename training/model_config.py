"""The CRNN's sizes and options (``[model]`` in a training TOML): torch-free.

Kept apart from :mod:`.model` so that reading or validating a training config, a checkpoint's
metadata or an experiment grid never imports torch (a scoring machine, a benchmark summarising
results); the network itself is built from it in :mod:`.model`.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

CONV_NORMS = ("none", "batch")
LSTM_INITS = ("default", "orthogonal")
FRONTENDS = ("waveform", "logmel")
SPEC_FILLS = ("mean", "silence")


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
    # Normalisation inside each conv block, between the convolution and its ReLU: "none" (the
    # paper) or "batch" (batch norm, as End2You's Emo18). Batch norm is what stopped the epoch-3
    # unlearning of the default recipe (MODEL_CARD.md); in eval mode it is an affine map per channel,
    # which the ONNX export folds into the convolution, so exported graphs keep the paper's shape.
    conv_norm: str = "none"
    # LSTM initialisation: "default" (torch's uniform) or "orthogonal" (orthogonal recurrent
    # weights, Xavier input weights, forget-gate bias 1: the usual remedy for a saturating LSTM).
    lstm_init: str = "default"
    # What the conv blocks read: "waveform" (the paper: the raw samples, one channel) or "logmel"
    # (a fixed, untrained log-mel filterbank computed inside the network by two convolutions --
    # windowed DFT with stride ``frontend_stride``, then mel weights on the power -- so the graph,
    # the streaming contract and the level contract stay as they are; the conv blocks then run over
    # mel frames, and ``hop = frontend_stride * prod(pool_sizes)``). Why offer it: the raw-waveform
    # CRNN trails eGEMAPS + ridge trained on the same data (MODEL_CARD.md); a spectral front end gives
    # the conv blocks the spectral envelope and harmonics that the 1 ms first kernels must otherwise learn.
    frontend: str = "waveform"
    n_fft: int = 256  # logmel: DFT window (Hann), samples: 32 ms at 8 kHz, 31 Hz bins
    frontend_stride: int = 50  # logmel: samples between DFT frames (6.25 ms at 8 kHz)
    n_mels: int = 40  # logmel: mel bands over 0..sample_rate/2 (HTK scale)
    # logmel, training only (like dropout: nothing changes in eval mode or in an export): SpecAugment's
    # frequency masking (Park et al., 2019) -- per training row, ``spec_freq_masks`` bands of a width
    # drawn uniformly from 0..``spec_freq_width`` mel bands set to digital silence (0 after the log).
    # Why: 15 training voices are few for a network, and a band the model must do without teaches it
    # not to lean on any one part of the spectrum -- the part a hiss, a codec or a headset changes.
    spec_freq_masks: int = 0
    spec_freq_width: int = 0
    # What a masked band holds: "mean" (the band's mean over the row's frames -- SpecAugment's zero
    # on mean-normalised features) or "silence" (0, digital silence; the v13 candidate's, which put
    # values far below any speech into the first batch norm's training statistics: dev fell from
    # ~0.33 to ~0.25, MODEL_CARD.md).
    spec_freq_fill: str = "mean"
    # logmel, training only (as the masks): vocal-tract-length perturbation (Jaitly & Hinton, 2013),
    # each training row read through a mel filterbank whose frequency axis is scaled by a factor
    # drawn from [1 - vtlp_warp, 1 + vtlp_warp] (training/frontend.py). Why: 15 training voices,
    # and a network that ties arousal or valence to one voice's formant scale misreads the next
    # voice; unlike speed perturbation (v8: valence fell) it leaves pitch and tempo alone. 0 = off,
    # the default recipe's too: the v25 candidate (0.1) lost on dev and on BAVED (MODEL_CARD.md).
    vtlp_warp: float = 0.0

    def __post_init__(self) -> None:
        n = len(self.conv_channels)
        if not (len(self.conv_kernels) == n == len(self.pool_sizes)):
            raise ValueError("conv_channels, conv_kernels and pool_sizes must have the same length")
        if self.conv_norm not in CONV_NORMS:
            raise ValueError(f"conv_norm must be one of {', '.join(CONV_NORMS)}, not {self.conv_norm!r}")
        if self.lstm_init not in LSTM_INITS:
            raise ValueError(f"lstm_init must be one of {', '.join(LSTM_INITS)}, not {self.lstm_init!r}")
        if self.frontend not in FRONTENDS:
            raise ValueError(f"frontend must be one of {', '.join(FRONTENDS)}, not {self.frontend!r}")
        if self.frontend == "logmel" and not (self.n_fft >= 2 and self.frontend_stride >= 1 and self.n_mels >= 1):
            raise ValueError("logmel front end needs n_fft >= 2, frontend_stride >= 1 and n_mels >= 1")
        if self.spec_freq_masks < 0 or self.spec_freq_width < 0:
            raise ValueError("spec_freq_masks and spec_freq_width must be >= 0")
        if self.spec_freq_fill not in SPEC_FILLS:
            raise ValueError(f"spec_freq_fill must be one of {', '.join(SPEC_FILLS)}, not {self.spec_freq_fill!r}")
        if self.spec_freq_masks and self.spec_freq_width:
            if self.frontend != "logmel":
                raise ValueError("spec_freq_masks needs the logmel front end (it masks mel bands)")
            if self.spec_freq_width > self.n_mels:
                raise ValueError(f"spec_freq_width {self.spec_freq_width} exceeds n_mels {self.n_mels}")
        if not 0.0 <= self.vtlp_warp < 0.5:
            raise ValueError(f"vtlp_warp must be in [0, 0.5), not {self.vtlp_warp}")
        if self.vtlp_warp and self.frontend != "logmel":
            raise ValueError("vtlp_warp needs the logmel front end (it warps the mel filterbank)")
        if self.outputs[:2] != ("valence", "arousal"):
            raise ValueError("the first two outputs must be valence and arousal")

    @property
    def stride(self) -> int:
        """Input samples per front-end frame: 1 for the waveform, ``frontend_stride`` for log-mel."""
        return self.frontend_stride if self.frontend == "logmel" else 1

    @property
    def window(self) -> int:
        """Input samples that one front-end frame reads: 1 for the waveform, ``n_fft`` for log-mel."""
        return self.n_fft if self.frontend == "logmel" else 1

    @property
    def in_channels(self) -> int:
        """Channels the first conv block reads."""
        return self.n_mels if self.frontend == "logmel" else 1

    @property
    def hop(self) -> int:
        """Input samples per output frame (front-end stride x pool sizes: 250 -> 32 frames/s)."""
        return self.stride * math.prod(self.pool_sizes)

    @property
    def frame_rate(self) -> float:
        return self.sample_rate / self.hop

    @property
    def receptive_field(self) -> int:
        """Input samples that one output frame sees (557 for the paper's sizes)."""
        r = 1
        for k, p in zip(reversed(self.conv_kernels), reversed(self.pool_sizes)):
            r = r * p + k - 1
        return (r - 1) * self.stride + self.window

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
