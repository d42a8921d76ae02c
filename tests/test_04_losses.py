"""Losses against direct float64 formulas, and their input checks."""
import math

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st
from hypothesis.extra import numpy as hnp

from tinytorch.core.losses import BCELoss, BCEWithLogitsLoss, CrossEntropyLoss, MSELoss
from tinytorch.core.tensor import Tensor

HYPOTHESIS = settings(max_examples=60)  # applied to this file's property tests by conftest.py


def reduce(x, reduction):
    return x.mean() if reduction == "mean" else x.sum() if reduction == "sum" else x


@given(st.data(), st.integers(1, 6), st.integers(2, 7), st.sampled_from(["mean", "sum", "none"]), st.floats(0, 1))
def test_cross_entropy_matches_float64_formula(data, n, c, reduction, eps):
    z = data.draw(hnp.arrays(np.float64, (n, c), elements=st.floats(-50, 50)))
    t = np.array(data.draw(st.lists(st.integers(0, c - 1), min_size=n, max_size=n)))
    logp = z - z.max(1, keepdims=True) - np.log(np.exp(z - z.max(1, keepdims=True)).sum(1, keepdims=True))
    q = np.full((n, c), eps / c); q[np.arange(n), t] += 1 - eps
    want = reduce(-(q * logp).sum(1), reduction)
    got = CrossEntropyLoss(reduction, label_smoothing=eps)(Tensor(z, dtype=np.float64), Tensor(t)).numpy()
    np.testing.assert_allclose(got, want, rtol=1e-9, atol=1e-9)


@given(st.data(), hnp.array_shapes(max_dims=3, max_side=4), st.sampled_from(["mean", "sum", "none"]))
def test_binary_losses_match_formulas(data, shape, reduction):
    x = data.draw(hnp.arrays(np.float64, shape, elements=st.floats(-30, 30)))
    y = data.draw(hnp.arrays(np.float64, shape, elements=st.floats(0, 1)))
    p = 1 / (1 + np.exp(-x))
    with np.errstate(divide="ignore"):
        want = reduce(-(y * np.maximum(np.log(p), -100) + (1 - y) * np.maximum(np.log1p(-p), -100)), reduction)
        exact = reduce(np.logaddexp(0, x) - x * y, reduction)                 # log(1 + e^x) - x y
    np.testing.assert_allclose(BCELoss(reduction)(Tensor(p, dtype=np.float64), Tensor(y, dtype=np.float64)).numpy(),
                               want, rtol=1e-9, atol=1e-9)
    np.testing.assert_allclose(BCEWithLogitsLoss(reduction)(Tensor(x, dtype=np.float64), Tensor(y, dtype=np.float64)).numpy(),
                               exact, rtol=1e-9, atol=1e-9)


@given(hnp.arrays(np.float32, hnp.array_shapes(max_dims=3, max_side=4), elements=st.floats(-100, 100, width=32)))
def test_mse_matches_numpy(a):
    b = a[::-1].copy() if a.ndim else a
    want = ((a.astype(np.float64) - b) ** 2).mean()
    np.testing.assert_allclose(MSELoss()(Tensor(a), Tensor(b)).item(), want, rtol=1e-5, atol=1e-3)


def test_bad_targets_are_named():
    z = Tensor(np.zeros((2, 3)))
    with pytest.raises(TypeError, match="integer dtype, got float32"):
        CrossEntropyLoss()(z, np.array([0.0, 1.0]))
    with pytest.raises(IndexError, match=r"class index 5 outside \[0, 3\)"):
        CrossEntropyLoss()(z, Tensor([0, 5]))
    with pytest.raises(ValueError, match=r"target shape \(3,\) does not match logits shape \(2, 3\)"):
        CrossEntropyLoss()(z, Tensor([0, 1, 2]))
    with pytest.raises(TypeError, match="floating point"):
        BCEWithLogitsLoss()(Tensor([0.0]), Tensor([1]))
    with pytest.raises(ValueError, match="reduction must be one of"):
        MSELoss(reduction="avg")
    assert math.isfinite(CrossEntropyLoss()(Tensor([[1e4, -1e4]]), Tensor([1])).item())
