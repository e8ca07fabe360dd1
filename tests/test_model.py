import numpy as np
import pytest
import torch

from cusemo_batch.training.model import CRNN, ModelConfig, macs_per_second


@pytest.fixture(scope="module")
def paper_model():
    torch.manual_seed(0)
    return CRNN(ModelConfig()).eval()


def test_paper_sizes(paper_model):
    c = paper_model.config
    assert (c.hop, c.frame_rate, c.receptive_field) == (250, 32.0, 557)
    assert paper_model.n_params() == 1_313_904
    assert macs_per_second(c) == pytest.approx(85.87e6, rel=1e-3)


@pytest.mark.parametrize("seconds", [0.03125, 0.3, 1.0, 7.3, 12.34567])
def test_32_frames_per_second_for_arbitrary_lengths(paper_model, seconds):
    n = int(round(seconds * 8000))
    with torch.no_grad():
        out = paper_model(torch.randn(2, n))
    assert out.shape == (2, n // 250, 2)
    assert out.shape[1] == int(seconds * 32)


def _two_chunks_and_whole(model: CRNN, x: torch.Tensor, cut_frame: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Frames of ``x`` from two streaming steps (LSTM state carried) and from one whole pass."""
    c = model.config
    with torch.no_grad():
        whole = model(x)
        padded = torch.nn.functional.pad(x, (c.pad_left, c.pad_right))
        ctx = c.receptive_field - c.hop
        a, state = model.forward_padded(padded[:, : cut_frame * c.hop + ctx])
        b, _ = model.forward_padded(padded[:, cut_frame * c.hop:], state)
    return torch.cat([a, b], 1), whole


def test_chunked_equals_whole_and_padding_does_not_leak(paper_model):
    x = torch.randn(1, 8000 * 5 + 123)
    chunked, whole = _two_chunks_and_whole(paper_model, x, 37)
    assert torch.allclose(chunked, whole, atol=1e-5)
    with torch.no_grad():
        # zero-padded batch with a longer item: the short item's frames are unchanged
        batch = torch.zeros(2, x.shape[1] + 4000)
        batch[0, : x.shape[1]] = x[0]
        batch[1] = torch.randn(batch.shape[1])
        out = paper_model(batch)
        np.testing.assert_allclose(out[0, : whole.shape[1]].numpy(), whole[0].numpy(), atol=1e-5)


def test_masked_batch_norm_ignores_padding_and_equals_batch_norm_without_it():
    from cusemo_batch.training.model import MaskedBatchNorm1d

    torch.manual_seed(1)
    a, b = torch.randn(3, 50), torch.randn(3, 30) * 2 + 1
    padded = torch.zeros(2, 3, 50)
    padded[0], padded[1, :, :30] = a, b
    masked, plain = MaskedBatchNorm1d(3).train(), torch.nn.BatchNorm1d(3).train()
    y = masked(padded, torch.tensor([50, 30]))
    # reference: statistics over the real positions only (the padding would pull the mean to 0)
    real = torch.cat([a, b], dim=1)
    mean, var = real.mean(1), real.var(1, unbiased=False)
    ref = (padded - mean[None, :, None]) / torch.sqrt(var[None, :, None] + 1e-5)
    torch.testing.assert_close(y[0], ref[0], atol=1e-5, rtol=0)
    torch.testing.assert_close(y[1, :, :30], ref[1, :, :30], atol=1e-5, rtol=0)
    torch.testing.assert_close(masked.running_mean, 0.1 * mean, atol=1e-6, rtol=0)
    torch.testing.assert_close(masked.running_var, 0.9 + 0.1 * real.var(1, unbiased=True), atol=1e-6, rtol=0)
    # no padding: exactly nn.BatchNorm1d (same kernel), in train and eval mode
    full = torch.randn(2, 3, 40)
    torch.testing.assert_close(MaskedBatchNorm1d(3).train()(full, torch.tensor([40, 40])), plain(full))
    torch.testing.assert_close(masked.eval()(full, torch.tensor([10, 40])),
                               torch.nn.functional.batch_norm(full, masked.running_mean, masked.running_var, eps=1e-5))


def test_batch_norm_crnn_streams_like_the_paper_model_in_eval_mode():
    torch.manual_seed(2)
    model = CRNN(ModelConfig(conv_norm="batch", conv_channels=(8, 16, 16), lstm_hidden=32, mlp_sizes=(32, 16)))
    model.train()
    model(torch.randn(4, 16000), torch.tensor([16000, 12000, 9000, 16000]))  # running statistics move
    model.eval()
    chunked, whole = _two_chunks_and_whole(model, torch.randn(1, 8000 * 3 + 77), 41)
    torch.testing.assert_close(chunked, whole, atol=1e-5, rtol=0)
    assert sum(isinstance(m, torch.nn.BatchNorm1d) for m in model.modules()) == 3


def test_orthogonal_lstm_init_and_config_validation():
    torch.manual_seed(3)
    lstm = CRNN(ModelConfig(lstm_init="orthogonal", lstm_hidden=16, conv_channels=(4, 8, 8), mlp_sizes=(8,))).lstm
    w = lstm.weight_hh_l0.detach()
    for g in range(4):
        block = w[g * 16:(g + 1) * 16]
        torch.testing.assert_close(block @ block.T, torch.eye(16), atol=1e-5, rtol=0)
    assert torch.all(lstm.bias_ih_l0[16:32] == 1) and torch.all(lstm.bias_hh_l0 == 0)
    with pytest.raises(ValueError, match="conv_norm"):
        ModelConfig(conv_norm="layer")
    with pytest.raises(ValueError, match="lstm_init"):
        ModelConfig(lstm_init="zeros")
