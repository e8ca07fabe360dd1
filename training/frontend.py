"""A fixed log-mel filterbank built from two convolutions, so that it exports to plain ONNX.

Why not ``torch.stft``: its ONNX export (the STFT op, opset 17) is not supported by the legacy
exporter for every option and onnxruntime's STFT kernel is slower than a strided Conv on CPU; a
windowed DFT is a linear map of each window, i.e. a Conv1d with ``2 * (n_fft // 2 + 1)`` fixed
kernels (cosine and sine rows) and stride ``hop``. The power of each bin is the sum of the squares
of its two rows, and summing squares then weighting by mel triangles is one more linear map (a
1x1 Conv with each triangle repeated for the cosine and sine rows). The graph is then Conv -> Mul
-> Conv -> Log: ops every runtime has, no complex numbers, and the convolutions stay "valid" so
the model's streaming contract (frames = samples // hop, chunked = whole) holds unchanged.

The log is ``log(1 + power / floor)``: the usual ``log(power + floor)`` less the constant
``log(floor)`` (which the first conv block's batch norm absorbs), so digital silence gives exactly
0 -- the int8 conv rewrite's silence offsets (``export/quantize.py``) stay those of a zero input.
The floor, -80 dB re a full-scale sine per bin, sits well under the quietest speech after the
level contract's -26 dBFS normalisation and under the 10-30 dB SNR noise of the channel
augmentation.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

POWER_FLOOR = 1e-8  # -80 dB re the power of a full-scale sine in its bin (see the module doc)
# Vocal-tract-length perturbation: warp factors are drawn from this many values evenly spaced over
# [1 - w, 1 + w] (a 0.01 step for w = 0.1), one precomputed filterbank each.
VTLP_STEPS = 21
# Above this share of the Nyquist frequency the warp bends back so that the band edge stays put
# (0.85 x 4 kHz = 3.4 kHz at 8 kHz, the telephone band's top).
VTLP_BOUNDARY = 0.85


def hz_to_mel(f: np.ndarray | float) -> np.ndarray:
    """HTK mel scale: ``2595 log10(1 + f / 700)``."""
    return 2595.0 * np.log10(1.0 + np.asarray(f, dtype=np.float64) / 700.0)


def mel_to_hz(m: np.ndarray | float) -> np.ndarray:
    return 700.0 * (10.0 ** (np.asarray(m, dtype=np.float64) / 2595.0) - 1.0)


def vtlp_frequencies(freqs: np.ndarray, alpha: float, nyquist: float, boundary: float = VTLP_BOUNDARY) -> np.ndarray:
    """Vocal-tract-length warp of frequencies (Jaitly & Hinton 2013, eq. 1; Kaldi's VTLN warp).

    ``f -> alpha * f`` up to ``f_b = boundary * nyquist * min(alpha, 1) / alpha``, then the straight
    line from ``(f_b, alpha * f_b)`` to ``(nyquist, nyquist)``: continuous, increasing, 0 and the
    Nyquist frequency fixed. ``alpha > 1`` reads a component at ``f`` where a shorter vocal tract
    would put it (formants up by ``alpha``), ``alpha < 1`` a longer one.
    """
    f = np.asarray(freqs, dtype=np.float64)
    f_b = boundary * nyquist * min(alpha, 1.0) / alpha
    upper = nyquist - (nyquist - alpha * f_b) / (nyquist - f_b) * (nyquist - f)
    return np.where(f <= f_b, alpha * f, upper)


def mel_filterbank(sample_rate: int, n_fft: int, n_mels: int, warp: float = 1.0) -> np.ndarray:
    """Triangular mel filters ``[n_mels, n_fft // 2 + 1]`` over 0..sample_rate/2 (HTK, peak 1).

    Band ``m`` rises from edge ``m`` to edge ``m + 1`` and falls to edge ``m + 2`` of ``n_mels + 2``
    edges equally spaced in mel; each DFT bin is weighted at its centre frequency. Unnormalised
    (peak 1), as HTK and Kaldi: the log and the batch norm after the first conv make a per-band
    scale irrelevant, and peak 1 keeps a pure tone's band value equal to its bin power.
    ``warp`` != 1 evaluates the triangles at the bins' :func:`vtlp_frequencies` (training-time
    speaker augmentation, :class:`LogMelFrontend`).
    """
    if n_mels < 1 or n_fft < 2:
        raise ValueError("need n_mels >= 1 and n_fft >= 2")
    freqs = np.arange(n_fft // 2 + 1) * sample_rate / n_fft
    if warp != 1.0:
        freqs = vtlp_frequencies(freqs, warp, sample_rate / 2)
    edges = mel_to_hz(np.linspace(0.0, hz_to_mel(sample_rate / 2), n_mels + 2))
    lo, mid, hi = edges[:-2, None], edges[1:-1, None], edges[2:, None]
    rise = (freqs[None, :] - lo) / (mid - lo)
    fall = (hi - freqs[None, :]) / (hi - mid)
    fb = np.clip(np.minimum(rise, fall), 0.0, None)
    if (fb.max(axis=1) == 0).any():
        raise ValueError(f"{n_mels} mel bands are too narrow for {n_fft}-point DFT bins at {sample_rate} Hz")
    return fb


def dft_kernels(n_fft: int) -> np.ndarray:
    """Periodic-Hann-windowed DFT as conv kernels ``[2 * (n_fft // 2 + 1), n_fft]``: cosines, then sines.

    Scaled by ``2 / sum(window)`` so that a full-scale sine centred on a bin has power 1 there.
    """
    n = np.arange(n_fft)
    window = 0.5 - 0.5 * np.cos(2 * np.pi * n / n_fft)  # periodic Hann (scipy.signal.get_window("hann"))
    k = np.arange(n_fft // 2 + 1)[:, None]
    phase = 2 * np.pi * k * n[None, :] / n_fft
    scale = 2.0 / window.sum()
    return np.concatenate([np.cos(phase) * window, -np.sin(phase) * window]) * scale


class LogMelFrontend(nn.Module):
    """``[B, 1, samples] -> [B, n_mels, frames]``, frames = ``(samples - n_fft) // stride + 1``.

    The weights are buffers: fixed, saved with the checkpoint (so a loaded model needs no
    recomputation to be exact) and never trained.

    ``vtlp_warp`` = w > 0, in training mode only: each row of a batch is read through the mel
    filterbank of a warp factor drawn uniformly from :data:`VTLP_STEPS` values over [1 - w, 1 + w]
    (torch's generator, seeded per training seed) -- vocal-tract-length perturbation, the formants
    of a shorter or longer vocal tract with the pitch and the tempo unchanged (unlike speed
    perturbation, which moves all three). The warped filterbanks are a non-persistent buffer: the
    checkpoint, eval mode and every export are those of the plain front end.
    """

    def __init__(self, sample_rate: int, n_fft: int, stride: int, n_mels: int, vtlp_warp: float = 0.0) -> None:
        super().__init__()
        self.stride = stride
        self.n_fft = n_fft
        self.vtlp_warp = vtlp_warp
        dft = dft_kernels(n_fft)
        fb = mel_filterbank(sample_rate, n_fft, n_mels)
        self.register_buffer("dft", torch.tensor(dft[:, None, :], dtype=torch.float32))
        # power = re^2 + im^2 and mel = fb @ power in one map over the squared cos and sin rows
        self.register_buffer("mel", torch.tensor(np.concatenate([fb, fb], axis=1)[:, :, None], dtype=torch.float32))
        if vtlp_warp > 0:
            alphas = np.linspace(1.0 - vtlp_warp, 1.0 + vtlp_warp, VTLP_STEPS)
            warped = np.stack([mel_filterbank(sample_rate, n_fft, n_mels, warp=a) for a in alphas])
            self.register_buffer("mel_warped", torch.tensor(warped, dtype=torch.float32), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        spec = nn.functional.conv1d(x, self.dft, stride=self.stride)
        if self.training and self.vtlp_warp > 0:
            bins = spec.shape[1] // 2
            power = spec[:, :bins] ** 2 + spec[:, bins:] ** 2  # [B, bins, frames]
            pick = torch.randint(self.mel_warped.shape[0], (x.shape[0],), device=x.device)
            mel = torch.bmm(self.mel_warped[pick], power)
        else:
            mel = nn.functional.conv1d(spec * spec, self.mel)
        return torch.log(mel * (1.0 / POWER_FLOOR) + 1.0)

    def frames(self, samples: torch.Tensor) -> torch.Tensor:
        """Frames out for ``samples`` in (elementwise; negative when shorter than one window)."""
        return torch.div(samples - self.n_fft, self.stride, rounding_mode="floor") + 1
