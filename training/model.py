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


import torch
from torch import nn

from .frontend import LogMelFrontend
from .model_config import CONV_NORMS, FRONTENDS, LSTM_INITS, ModelConfig  # noqa: F401  (re-exported: the model's config)


class CRNN(nn.Module):
    """Frame-level regressor: ``[batch, samples] -> [batch, frames, n_outputs]``."""

    def __init__(self, config: ModelConfig = ModelConfig()) -> None:
        super().__init__()
        self.config = config
        self.frontend = (LogMelFrontend(config.sample_rate, config.n_fft, config.frontend_stride, config.n_mels,
                                        vtlp_warp=config.vtlp_warp)
                         if config.frontend == "logmel" else None)
        blocks: list[nn.Module] = []
        in_ch = config.in_channels
        for ch, k, p in zip(config.conv_channels, config.conv_kernels, config.pool_sizes):
            norm = [MaskedBatchNorm1d(ch)] if config.conv_norm == "batch" else []
            blocks += [nn.Conv1d(in_ch, ch, k), *norm, nn.ReLU(), nn.MaxPool1d(p, stride=p)]
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
        if config.lstm_init == "orthogonal":
            _orthogonal_lstm_init(self.lstm)

    def forward(self, audio: torch.Tensor, lengths: torch.Tensor | None = None,
                return_hidden: bool = False) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        """Whole-call pass on an unpadded waveform ``[batch, samples]``.

        ``lengths`` (samples of real audio per row of a zero-padded training batch) keeps the
        padding out of the batch-norm statistics; it changes nothing else and nothing in eval mode.
        ``return_hidden``: also return the LSTM output ``[batch, frames, hidden]`` the MLP reads
        (for training-only heads such as the speaker adversary, :mod:`.adversary`).
        """
        c = self.config
        padded = nn.functional.pad(audio, (c.pad_left, c.pad_right))
        # the positions a lone pass over each row would see: its samples plus the model's own padding
        valid = None if lengths is None else lengths + c.pad_left + c.pad_right
        seq, _ = self._encode(padded, None, valid)
        out = self.mlp(seq)
        return (out, seq) if return_hidden else out

    def forward_padded(
        self,
        padded: torch.Tensor,
        state: tuple[torch.Tensor, torch.Tensor] | None = None,
        valid: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor]]:
        """Streaming step: input already carries its context (``receptive_field - hop`` extra samples).

        Returns per-frame outputs and the LSTM state ``(h, c)``, each ``[layers, batch, hidden]``.
        ``valid``: leading input samples of each row that are not batch padding (see :meth:`forward`).
        """
        seq, new_state = self._encode(padded, state, valid)
        return self.mlp(seq), new_state

    def _encode(
        self,
        padded: torch.Tensor,
        state: tuple[torch.Tensor, torch.Tensor] | None,
        valid: torch.Tensor | None,
    ) -> tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor]]:
        """Front end, conv blocks and LSTM: the LSTM output ``[B, frames, hidden]`` and its state."""
        feats = padded.unsqueeze(1)
        if self.frontend is not None:
            feats = self.frontend(feats)
            valid = None if valid is None else self.frontend.frames(valid)
            c = self.config
            if self.training and c.spec_freq_masks and c.spec_freq_width:
                feats = freq_mask(feats, c.spec_freq_masks, c.spec_freq_width, fill=c.spec_freq_fill, valid=valid)
        if valid is None or not self.training or self.config.conv_norm == "none":
            feats = self.cnn(feats)
        else:
            for layer in self.cnn:
                if isinstance(layer, nn.Conv1d):
                    valid = valid - (layer.kernel_size[0] - 1)
                elif isinstance(layer, nn.MaxPool1d):
                    valid = torch.div(valid, layer.kernel_size, rounding_mode="floor")
                if isinstance(layer, MaskedBatchNorm1d):
                    feats = layer(feats, valid)
                else:
                    feats = layer(feats)
        feats = feats.transpose(1, 2)  # [B, frames, channels]
        return self.lstm(feats, state)

    def n_params(self) -> int:
        return sum(p.numel() for p in self.parameters())


def freq_mask(feats: torch.Tensor, n_masks: int, max_width: int, *, fill: str = "mean",
              valid: torch.Tensor | None = None, generator: torch.Generator | None = None) -> torch.Tensor:
    """SpecAugment frequency masking of ``[B, bands, frames]``: per row, ``n_masks`` runs of
    ``w ~ U{0..max_width}`` adjacent bands starting at ``f0 ~ U{0..bands - w}`` replaced.

    ``fill="mean"``: a masked band holds its mean over the row's frames (the first ``valid[b]``
    of row ``b`` when given: batch padding is not speech) -- the band loses its detail, not its
    level, so the batch norm after the first conv sees the statistics it sees at inference
    (SpecAugment masks mean-normalised features with 0, i.e. with their mean). ``fill="silence"``:
    0, digital silence in the log-mel front end. Draws come from torch's generator (seeded per
    training seed), so a run is reproducible.
    """
    b, bands, t = feats.shape
    width = torch.randint(0, max_width + 1, (b, n_masks), generator=generator, device=feats.device)
    start = (torch.rand((b, n_masks), generator=generator, device=feats.device) * (bands - width + 1)).floor()
    idx = torch.arange(bands, device=feats.device)[None, None, :]
    hit = (idx >= start[..., None]) & (idx < (start + width)[..., None])  # [B, masks, bands]
    masked = hit.any(dim=1)[:, :, None]  # [B, bands, 1]
    if fill == "silence":
        return feats.masked_fill(masked, 0.0)
    if valid is None:
        mean = feats.mean(dim=2, keepdim=True)
    else:
        n = valid.clamp(min=1, max=t).to(feats.dtype)
        inside = (torch.arange(t, device=feats.device)[None, :] < n[:, None]).to(feats.dtype)  # [B, T]
        mean = (feats * inside[:, None, :]).sum(dim=2, keepdim=True) / n[:, None, None]
    return torch.where(masked, mean.expand_as(feats), feats)


class MaskedBatchNorm1d(nn.BatchNorm1d):
    """Batch norm whose training statistics skip the zero padding of a batch.

    Training batches pad shorter segments with zeros; counted in, that padding drags the batch mean
    and variance towards the silence response and makes train-mode and eval-mode activations
    differ (seen as negative dev CCC in early epochs). Without a mask, or in eval mode, this is
    ``nn.BatchNorm1d`` exactly -- what the ONNX export sees and folds into the convolution.
    """

    def forward(self, x: torch.Tensor, valid: torch.Tensor | None = None) -> torch.Tensor:
        """``valid`` [B]: leading positions of each row that are real (the rest is padding)."""
        if valid is None or not self.training or bool((valid >= x.shape[-1]).all()):
            return super().forward(x)
        # Per-row mean/variance over the row's valid part, pooled over rows (parallel-axis rule):
        # no [B, C, T] mask or temporaries -- the first block's activations are ~400 MB a batch.
        counts, means, vars_ = [], [], []
        for b in range(x.shape[0]):
            v = int(valid[b].clamp(min=0, max=x.shape[-1]))
            if v > 0:
                var_b, mean_b = torch.var_mean(x[b, :, :v], dim=-1, unbiased=False)
                counts.append(float(v)), means.append(mean_b), vars_.append(var_b)
        if not counts:
            return super().forward(x)
        w = torch.tensor(counts, dtype=x.dtype, device=x.device)[:, None]
        n = w.sum()
        m_rows, v_rows = torch.stack(means), torch.stack(vars_)
        mean = (w * m_rows).sum(0) / n
        var = (w * (v_rows + (m_rows - mean) ** 2)).sum(0) / n
        with torch.no_grad():
            self.num_batches_tracked += 1
            mom = self.momentum if self.momentum is not None else 1.0 / float(self.num_batches_tracked)
            self.running_mean.mul_(1 - mom).add_(mom * mean.detach())
            self.running_var.mul_(1 - mom).add_(mom * var.detach() * n / max(float(n) - 1, 1.0))
        scale = self.weight * torch.rsqrt(var + self.eps)
        shift = self.bias - mean * scale
        return torch.addcmul(shift[None, :, None], x, scale[None, :, None])


def _orthogonal_lstm_init(lstm: nn.LSTM) -> None:
    """Orthogonal recurrent weights per gate, Xavier input weights, forget-gate bias 1 (b_ih only)."""
    h = lstm.hidden_size
    for name, p in lstm.named_parameters():
        with torch.no_grad():
            if name.startswith("weight_hh"):
                for g in range(4):
                    nn.init.orthogonal_(p[g * h:(g + 1) * h])
            elif name.startswith("weight_ih"):
                nn.init.xavier_uniform_(p)
            elif name.startswith("bias"):
                p.zero_()
                if name.startswith("bias_ih"):
                    p[h:2 * h] = 1.0  # gate order i, f, g, o


def macs_per_second(config: ModelConfig = ModelConfig()) -> float:
    """Multiply-accumulates per second of audio (front end + conv + LSTM + MLP), for FLOP-bound estimates."""
    rate = float(config.sample_rate)
    macs = 0.0
    if config.frontend == "logmel":
        rate /= config.stride
        n_bins = 2 * (config.n_fft // 2 + 1)
        macs += rate * n_bins * (config.n_fft + 1 + config.n_mels)  # DFT, squares, mel weights
    in_ch = config.in_channels
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
