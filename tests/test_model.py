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


def test_chunked_equals_whole_and_padding_does_not_leak(paper_model):
    c = paper_model.config
    x = torch.randn(1, 8000 * 5 + 123)
    with torch.no_grad():
        whole = paper_model(x)
        padded = torch.nn.functional.pad(x, (c.pad_left, c.pad_right))
        ctx = c.receptive_field - c.hop
        a, state = paper_model.forward_padded(padded[:, : 37 * c.hop + ctx])
        b, _ = paper_model.forward_padded(padded[:, 37 * c.hop:], state)
        assert torch.allclose(torch.cat([a, b], 1), whole, atol=1e-5)
        # zero-padded batch with a longer item: the short item's frames are unchanged
        batch = torch.zeros(2, x.shape[1] + 4000)
        batch[0, : x.shape[1]] = x[0]
        batch[1] = torch.randn(batch.shape[1])
        out = paper_model(batch)
        np.testing.assert_allclose(out[0, : whole.shape[1]].numpy(), whole[0].numpy(), atol=1e-5)
