import numpy as np
import pytest

from cusemo_batch.metrics import ccc, ccc_concat_and_mean


def ccc_reference(x, y):
    """Lin (1989) written out directly."""
    x, y = np.asarray(x, float), np.asarray(y, float)
    sxy = np.sum((x - x.mean()) * (y - y.mean())) / len(x)
    return 2 * sxy / (x.var() + y.var() + (x.mean() - y.mean()) ** 2)


def test_ccc_matches_formula_and_hand_value():
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=200), rng.normal(size=200)
    y = 0.6 * x + 0.3 + 0.5 * y
    assert ccc(x, y) == pytest.approx(ccc_reference(x, y), abs=1e-12)
    # hand computed: x=[1,2,3], y=[2,3,4]: cov=2/3, var=2/3 each, mean diff 1 -> 2*(2/3)/(4/3+1)=4/7
    assert ccc([1, 2, 3], [2, 3, 4]) == pytest.approx(4 / 7)
    assert ccc(x, x) == pytest.approx(1.0)
    xc = x - x.mean()
    assert ccc(xc, -xc) == pytest.approx(-1.0)


def test_ccc_mask_and_nan_ignored():
    x = np.array([1.0, 2.0, 3.0, 100.0, np.nan])
    y = np.array([2.0, 3.0, 4.0, -50.0, 1.0])
    mask = np.array([1, 1, 1, 0, 1], bool)
    assert ccc(x, y, mask) == pytest.approx(4 / 7)
    assert np.isnan(ccc([1.0], [1.0]))


def test_concat_vs_per_call():
    a = (np.array([0.0, 1.0, 2.0]), np.array([0.0, 1.0, 2.0]))
    b = (np.array([5.0, 6.0, 7.0]), np.array([0.0, 1.0, 2.0]))  # right shape, wrong level
    concat, per_call = ccc_concat_and_mean([a[0], b[0]], [a[1], b[1]])
    assert per_call == pytest.approx((1.0 + ccc_reference(b[0], b[1])) / 2)
    assert concat == pytest.approx(ccc_reference(np.r_[a[0], b[0]], np.r_[a[1], b[1]]))
