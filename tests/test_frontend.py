"""The log-mel front end (training/frontend.py) against numpy / scipy references, and the CRNN with it."""

import numpy as np
import pytest
import torch
from scipy.signal import get_window

from cusemo_batch.training.frontend import (
    POWER_FLOOR, LogMelFrontend, dft_kernels, hz_to_mel, mel_filterbank, mel_to_hz)
from cusemo_batch.training.model import CRNN, ModelConfig, macs_per_second

SR = 8000
LOGMEL = dict(frontend="logmel", conv_channels=(16, 16, 16), conv_kernels=(5, 3, 3), pool_sizes=(1, 5, 1),
              lstm_hidden=32, mlp_sizes=(32,))


def test_htk_mel_scale_hand_values():
    # 2595 log10(1 + 700/700) = 2595 log10 2; 1000 Hz is ~1000 mel by construction of the HTK scale
    assert hz_to_mel(700.0) == pytest.approx(2595 * np.log10(2))
    assert hz_to_mel(1000.0) == pytest.approx(999.9855, abs=1e-3)
    assert mel_to_hz(hz_to_mel(np.array([0.0, 123.0, 4000.0]))) == pytest.approx([0.0, 123.0, 4000.0])


def test_mel_filterbank_triangles_partition_unity():
    fb = mel_filterbank(SR, 256, 40)
    assert fb.shape == (40, 129) and fb.min() >= 0 and fb.max() <= 1
    freqs = np.arange(129) * SR / 256
    edges = mel_to_hz(np.linspace(0, hz_to_mel(SR / 2), 42))
    # every bin between the first and the last band centre is shared by two neighbouring triangles
    inner = (freqs >= edges[1]) & (freqs <= edges[-2])
    np.testing.assert_allclose(fb[:, inner].sum(axis=0), 1.0, atol=1e-12)
    # each band peaks at the bin nearest its centre frequency, and is zero outside its two edges
    for m in range(40):
        assert abs(freqs[fb[m].argmax()] - edges[m + 1]) <= SR / 256 / 2 + 1e-9
        outside = (freqs <= edges[m]) | (freqs >= edges[m + 2])
        assert not fb[m, outside].any()
    with pytest.raises(ValueError, match="too narrow"):
        mel_filterbank(SR, 64, 80)


def test_dft_kernels_are_the_hann_windowed_rfft():
    n_fft = 256
    k = dft_kernels(n_fft)
    x = np.random.default_rng(0).standard_normal(n_fft)
    w = get_window("hann", n_fft)  # scipy's periodic Hann
    ref = np.fft.rfft(x * w) * 2 / w.sum()
    np.testing.assert_allclose(k[:129] @ x, ref.real, atol=1e-10)
    np.testing.assert_allclose(k[129:] @ x, ref.imag, atol=1e-10)
    # a full-scale sine centred on bin 32 (1000 Hz) has power 1 there
    t = np.arange(n_fft)
    s = np.sin(2 * np.pi * 32 * t / n_fft + 0.3)
    assert (k[32] @ s) ** 2 + (k[129 + 32] @ s) ** 2 == pytest.approx(1.0)


def test_log_mel_frontend_matches_numpy_reference_and_silence_is_zero():
    fe = LogMelFrontend(SR, 256, 50, 40)
    x = 0.05 * np.random.default_rng(1).standard_normal(4000).astype(np.float32)
    with torch.no_grad():
        out = fe(torch.from_numpy(x)[None, None]).numpy()[0]
    n = (4000 - 256) // 50 + 1
    assert out.shape == (40, n) and int(fe.frames(torch.tensor(4000))) == n
    w = get_window("hann", 256)
    frames = np.stack([x[i * 50: i * 50 + 256] for i in range(n)]).astype(np.float64)
    power = np.abs(np.fft.rfft(frames * w, axis=1) * 2 / w.sum()) ** 2
    ref = np.log1p(power @ mel_filterbank(SR, 256, 40).T / POWER_FLOOR).T
    np.testing.assert_allclose(out, ref, rtol=1e-4, atol=1e-4)
    with torch.no_grad():
        assert torch.equal(fe(torch.zeros(1, 1, 1000)), torch.zeros(1, 40, (1000 - 256) // 50 + 1))
    assert "dft" in dict(fe.named_buffers()) and not list(fe.parameters())  # fixed, not trained


def test_logmel_crnn_keeps_the_frame_and_streaming_contract():
    c = ModelConfig(**LOGMEL, conv_norm="batch")
    assert (c.hop, c.frame_rate, c.receptive_field, c.in_channels) == (250, 32.0, 1256, 40)
    assert c.pad_left + c.pad_right == c.receptive_field - c.hop
    assert ModelConfig().receptive_field == 557 and ModelConfig().in_channels == 1  # paper unchanged
    torch.manual_seed(0)
    model = CRNN(c)
    model.train()
    model(0.05 * torch.randn(3, 16000))  # running statistics move
    model.eval()
    x = 0.05 * torch.randn(2, 8000 * 5 + 123)
    with torch.no_grad():
        whole = model(x)
        padded = torch.nn.functional.pad(x, (c.pad_left, c.pad_right))
        ctx = c.receptive_field - c.hop
        a, state = model.forward_padded(padded[:, : 61 * c.hop + ctx])
        b, _ = model.forward_padded(padded[:, 61 * c.hop:], state)
        alone = model(x[:1, : 8000 * 2])
        both = model(torch.cat([x[:1, : 8000 * 2], torch.zeros(1, 8000 * 3 + 123)], 1))
    assert whole.shape == (2, (8000 * 5 + 123) // 250, 2)
    torch.testing.assert_close(torch.cat([a, b], 1), whole, atol=1e-5, rtol=0)
    torch.testing.assert_close(both[:, :64], alone, atol=1e-5, rtol=0)  # the padded tail does not leak back


def test_logmel_masked_batch_norm_skips_padding():
    """Train mode with lengths: a row padded with zeros gives the batch statistics of the unpadded rows."""
    torch.manual_seed(2)
    model = CRNN(ModelConfig(**LOGMEL, conv_norm="batch")).train()
    x = 0.05 * torch.randn(2, 12000)
    short = torch.cat([x[:, :8000], torch.zeros(2, 4000)], 1)
    bns = [m for m in model.modules() if isinstance(m, torch.nn.BatchNorm1d)]
    model(short, torch.tensor([8000, 8000]))
    masked = [bn.running_mean.clone() for bn in bns]
    for bn in bns:
        bn.reset_running_stats()
    model(x[:, :8000])
    for m, bn in zip(masked, bns):
        torch.testing.assert_close(m, bn.running_mean, atol=1e-5, rtol=1e-4)


def test_logmel_config_validation_and_cost():
    with pytest.raises(ValueError, match="frontend"):
        ModelConfig(frontend="mfcc")
    with pytest.raises(ValueError, match="n_fft"):
        ModelConfig(frontend="logmel", n_fft=1)
    c = ModelConfig(frontend="logmel", conv_channels=(128, 128, 128), conv_kernels=(5, 3, 3), pool_sizes=(1, 5, 1))
    assert ModelConfig.from_dict(c.to_dict()) == c
    assert ModelConfig.from_dict({"conv_norm": "batch"}).frontend == "waveform"  # older checkpoints
    # front end at 160 frames/s: 258 DFT rows x (256 taps + 1 square + 40 mel weights)
    fe = 160 * 258 * 297
    convs = 160 * 40 * 128 * 5 + 160 * 128 * 128 * 3 + 32 * 128 * 128 * 3
    rest = macs_per_second(ModelConfig(conv_channels=(128,), conv_kernels=(1,), pool_sizes=(250,))) - 8000 * 128  # its LSTM + MLP
    assert macs_per_second(c) == pytest.approx(fe + convs + rest)


def test_freq_mask_masks_whole_bands_within_bounds_and_is_seeded():
    from cusemo_batch.training.model import freq_mask

    feats = torch.rand(64, 40, 30) + 1.0  # no zeros of its own
    out = freq_mask(feats, 2, 8, fill="silence", generator=torch.Generator().manual_seed(0))
    zero_band = (out == 0).all(dim=2)  # [B, bands]: a masked band is masked over every frame
    assert ((out == 0) == zero_band[:, :, None]).all()  # ... and nothing else is touched
    torch.testing.assert_close(out[~zero_band], feats[~zero_band])
    per_row = zero_band.sum(1)
    assert per_row.max() <= 16 and per_row.float().mean() > 2  # two masks of 0..8 bands (mean 8 if disjoint)
    assert zero_band[:, 0].any() and zero_band[:, -1].any()  # both edges reachable
    again = freq_mask(feats, 2, 8, fill="silence", generator=torch.Generator().manual_seed(0))
    assert torch.equal(out, again)
    assert torch.equal(freq_mask(feats, 2, 0), feats)  # width 0: no mask
    # fill "mean": the same bands (same draws) hold their mean over the row's frames
    mean_out = freq_mask(feats, 2, 8, generator=torch.Generator().manual_seed(0))
    expected = torch.where(zero_band[:, :, None], feats.mean(dim=2, keepdim=True).expand_as(feats), feats)
    torch.testing.assert_close(mean_out, expected)


def test_freq_mask_mean_skips_batch_padding():
    from cusemo_batch.training.model import freq_mask

    feats = torch.rand(2, 10, 20) + 1.0
    feats[1, :, 12:] = 0.0  # row 1: 12 real frames, then zero padding
    out = freq_mask(feats, 1, 10, valid=torch.tensor([20, 12]), generator=torch.Generator().manual_seed(3))
    changed = (out != feats).any(dim=2)
    b, f = next((b, f) for b in (1, 0) for f in range(10) if changed[b, f])
    n = 12 if b == 1 else 20
    torch.testing.assert_close(out[b, f, 0], feats[b, f, :n].mean())


def test_freq_masks_only_in_training_mode():
    cfg = ModelConfig(**LOGMEL, conv_norm="batch", spec_freq_masks=2, spec_freq_width=8)
    plain = ModelConfig(**LOGMEL, conv_norm="batch")
    torch.manual_seed(0)
    model = CRNN(cfg)
    ref = CRNN(plain)
    ref.load_state_dict(model.state_dict())
    x = 0.05 * torch.randn(2, 8000)
    model.eval(), ref.eval()
    torch.testing.assert_close(model(x), ref(x), rtol=0, atol=0)  # eval (and so every export): no masks
    model.train(), ref.train()
    assert not torch.allclose(model(x), ref(x))
    with pytest.raises(ValueError, match="logmel"):
        ModelConfig(spec_freq_masks=2, spec_freq_width=8)
    with pytest.raises(ValueError, match="n_mels"):
        ModelConfig(**LOGMEL, spec_freq_masks=2, spec_freq_width=99)
    with pytest.raises(ValueError, match="spec_freq_fill"):
        ModelConfig(**LOGMEL, spec_freq_masks=2, spec_freq_width=4, spec_freq_fill="noise")
    assert ModelConfig.from_dict(cfg.to_dict()) == cfg


def test_vtlp_warp_hand_values():
    from cusemo_batch.training.frontend import vtlp_frequencies

    f = np.array([0.0, 1000.0, 3000.0, 3400.0, 4000.0])
    np.testing.assert_allclose(vtlp_frequencies(f, 1.0, 4000.0), f)  # alpha 1: identity
    # alpha 1.1: boundary 0.85 * 4000 / 1.1 = 3090.9 Hz; below it f * 1.1, above it the line to (4000, 4000)
    up = vtlp_frequencies(f, 1.1, 4000.0)
    f_b = 3400.0 / 1.1
    assert up[:3] == pytest.approx([0.0, 1100.0, 3300.0])
    assert up[3] == pytest.approx(4000.0 - (4000.0 - 1.1 * f_b) / (4000.0 - f_b) * (4000.0 - 3400.0))
    assert up[4] == pytest.approx(4000.0)
    # alpha 0.9: boundary 0.85 * 4000 * 0.9 / 0.9 = 3400 Hz, so 3400 -> 3060, Nyquist fixed
    down = vtlp_frequencies(f, 0.9, 4000.0)
    assert down == pytest.approx([0.0, 900.0, 2700.0, 3060.0, 4000.0])
    grid = np.linspace(0, 4000, 401)
    for a in (0.9, 0.95, 1.05, 1.1):  # increasing, and continuous: no step wider than the upper slope
        w = vtlp_frequencies(grid, a, 4000.0)
        f_b = 3400.0 * min(a, 1.0) / a
        slope = (4000.0 - a * f_b) / (4000.0 - f_b)  # 1.57 for 0.9, below 1 for alpha > 1
        assert (np.diff(w) > 0).all() and np.diff(w).max() <= 10 * max(a, slope) + 1e-9


def test_warped_filterbank_moves_a_formant_by_alpha():
    fb = mel_filterbank(SR, 256, 40)
    np.testing.assert_array_equal(mel_filterbank(SR, 256, 40, warp=1.0), fb)
    tone = np.zeros(129)
    tone[32] = 1.0  # 1000 Hz
    # alpha 1.1 reads 1000 Hz where the plain filterbank reads 1100 Hz (bin 35.2)
    warped = mel_filterbank(SR, 256, 40, warp=1.1) @ tone
    plain_1100 = np.array([np.interp(1100.0, np.arange(129) * SR / 256, fb[m]) for m in range(40)])
    np.testing.assert_allclose(warped, plain_1100, atol=1e-12)


def test_vtlp_only_in_training_mode_and_not_in_the_checkpoint():
    cfg = ModelConfig(**LOGMEL, conv_norm="batch", vtlp_warp=0.1)
    plain = ModelConfig(**LOGMEL, conv_norm="batch")
    torch.manual_seed(0)
    model, ref = CRNN(cfg), CRNN(plain)
    assert model.state_dict().keys() == ref.state_dict().keys()  # the warped banks are not saved
    ref.load_state_dict(model.state_dict())
    x = 0.05 * torch.randn(3, 8000)
    model.eval(), ref.eval()
    torch.testing.assert_close(model(x), ref(x), rtol=0, atol=0)  # eval (and every export): plain front end
    fe = model.frontend
    fe.train()
    torch.manual_seed(1)
    a = fe(x[:, None])
    torch.manual_seed(1)
    b = fe(x[:, None])
    torch.testing.assert_close(a, b, rtol=0, atol=0)  # seeded: a run is reproducible
    with torch.no_grad():
        plain_out = ref.frontend(x[:, None])
        # each row went through one of the 21 filterbanks; the middle one (alpha = 1) is the plain one
        power = _power(fe, x[:, None])
        banks = [torch.log(torch.einsum("mk,bkt->bmt", fe.mel_warped[i], power) / POWER_FLOOR + 1.0)
                 for i in range(fe.mel_warped.shape[0])]
    torch.testing.assert_close(banks[len(banks) // 2], plain_out, rtol=1e-5, atol=1e-5)
    for r in range(3):
        assert any(torch.allclose(a[r], bank[r], rtol=1e-5, atol=1e-5) for bank in banks)
    with pytest.raises(ValueError, match="logmel"):
        ModelConfig(vtlp_warp=0.1)
    with pytest.raises(ValueError, match="vtlp_warp"):
        ModelConfig(**LOGMEL, vtlp_warp=0.6)


def _power(fe: LogMelFrontend, x: torch.Tensor) -> torch.Tensor:
    """Power per DFT bin, the reference the warped banks are applied to."""
    spec = torch.nn.functional.conv1d(x, fe.dft, stride=fe.stride)
    bins = spec.shape[1] // 2
    return spec[:, :bins] ** 2 + spec[:, bins:] ** 2
