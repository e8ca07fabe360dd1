import numpy as np
import pytest
import torch

from cusemo_batch.metrics import ccc as ccc_np
from cusemo_batch.training.losses import bce_loss, ccc, ccc_loss, total_loss


def test_torch_ccc_equals_numpy_reference():
    rng = np.random.default_rng(2)
    x, y = rng.normal(size=(3, 50)), rng.normal(size=(3, 50))
    got = ccc(torch.tensor(x), torch.tensor(y))
    assert float(got) == pytest.approx(ccc_np(x, y), abs=1e-7)


def test_masked_ccc_ignores_padding():
    gold = torch.tensor([[0.1, 0.5, -0.2, 0.0, 0.0], [0.3, -0.4, 0.9, 0.2, 0.0]])
    pred = torch.tensor([[0.2, 0.4, -0.1, 9.0, -7.0], [0.1, -0.2, 0.7, 0.1, 5.0]])
    mask = torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 0]], dtype=torch.bool)
    expected = ccc_np(pred[mask].numpy(), gold[mask].numpy())
    assert float(ccc(pred, gold, mask)) == pytest.approx(expected, abs=1e-6)
    # changing padded positions changes nothing
    pred2 = pred.clone()
    pred2[~mask] = -123.0
    assert float(ccc_loss(pred2, gold, mask)) == pytest.approx(float(ccc_loss(pred, gold, mask)))


def test_eq3_arithmetic():
    lv, la, le, lg = (torch.tensor(v) for v in (0.4, 0.6, 0.2, 0.7))
    assert float(total_loss(lv, la)) == pytest.approx(0.5)
    assert float(total_loss(lv, la, le, lg, alpha=0.1, beta=0.01)) == pytest.approx(
        (0.4 + 0.6 + 0.1 * 0.2 + 0.01 * 0.7) / 2.11)


def test_bce_masks_unknown_gender():
    logits = torch.tensor([2.0, -1.0, 5.0])
    target = torch.tensor([1.0, 0.0, float("nan")])
    expected = -(np.log(1 / (1 + np.exp(-2.0))) + np.log(1 - 1 / (1 + np.exp(1.0)))) / 2
    assert float(bce_loss(logits, target)) == pytest.approx(expected, rel=1e-6)


def test_ccc_loss_with_mse_term_matches_hand_computation():
    pred = torch.tensor([[0.1, 0.4, -0.2, 9.0]])
    gold = torch.tensor([[0.0, 0.5, -0.5, 0.0]])
    mask = torch.tensor([[True, True, True, False]])
    p, g = pred[0, :3].double().numpy(), gold[0, :3].double().numpy()
    ccc_ref = 2 * np.cov(p, g, bias=True)[0, 1] / (p.var() + g.var() + (p.mean() - g.mean()) ** 2)
    mse = np.mean((p - g) ** 2)
    assert float(ccc_loss(pred, gold, mask, mse_weight=0.1)) == pytest.approx(1 - ccc_ref + 0.1 * mse, rel=1e-5)
    assert float(ccc_loss(pred, gold, mask)) == pytest.approx(1 - ccc_ref, rel=1e-5)
