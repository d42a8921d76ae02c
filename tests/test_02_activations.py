"""Properties of the activations, against float64 NumPy and math references."""
import math
import warnings

import numpy as np
from hypothesis import given, settings, strategies as st
from hypothesis.extra import numpy as hnp

from tinytorch.core.activations import erf, gelu, log_softmax, relu, sigmoid, softmax, tanh
from tinytorch.core.tensor import Tensor

HYPOTHESIS = settings(max_examples=60)  # applied to this file's property tests by conftest.py

shapes = hnp.array_shapes(min_dims=1, max_dims=3, max_side=5)
wide = st.floats(-1e4, 1e4, width=32, allow_nan=False)
F32_EPS = float(np.finfo(np.float32).eps)


@given(hnp.arrays(np.float32, shapes, elements=wide))
def test_no_warnings_and_finite_for_large_inputs(a):
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        acts = {"relu": relu, "sigmoid": sigmoid, "tanh": tanh, "gelu": gelu,
                "gelu tanh": lambda t: gelu(t, "tanh"), "softmax": lambda t: softmax(t, -1),
                "log_softmax": lambda t: log_softmax(t, 0)}
        for name, act in acts.items():
            out = act(Tensor(a)).numpy()
            assert out.dtype == np.float32 and out.shape == a.shape
            assert np.isfinite(out).all(), name


@given(hnp.arrays(np.float64, shapes, elements=st.floats(-30, 30)))
def test_sigmoid_matches_float64_formula_and_symmetry(a):
    got = sigmoid(Tensor(a, dtype=np.float64)).numpy()
    want = 1 / (1 + np.exp(-a))
    np.testing.assert_allclose(got, want, rtol=1e-12, atol=0)       # relative, so tiny values must be right too
    np.testing.assert_allclose(got + sigmoid(Tensor(-a, dtype=np.float64)).numpy(), 1.0, rtol=1e-12)


@given(hnp.arrays(np.float32, shapes, elements=wide), st.data())
def test_softmax_is_a_distribution_and_shift_invariant(a, data):
    dim = data.draw(st.integers(-a.ndim, a.ndim - 1))
    p = softmax(Tensor(a), dim).numpy()
    assert (p >= 0).all()
    # n terms each rounded with relative error eps: the sum is within n * eps of 1
    np.testing.assert_allclose(p.sum(axis=dim), 1.0, atol=a.shape[dim] * F32_EPS * 2)
    shifted = softmax(Tensor(a.astype(np.float64) + 7.0, dtype=np.float64), dim).numpy()
    np.testing.assert_allclose(softmax(Tensor(a, dtype=np.float64), dim).numpy(), shifted, atol=1e-12)


@given(hnp.arrays(np.float64, shapes, elements=st.floats(-20, 20)), st.data())
def test_log_softmax_is_log_of_softmax(a, data):
    dim = data.draw(st.integers(-a.ndim, a.ndim - 1))
    t = Tensor(a, dtype=np.float64)
    np.testing.assert_allclose(log_softmax(t, dim).numpy(), np.log(softmax(t, dim).numpy()), atol=1e-12)


@given(hnp.arrays(np.float64, shapes, elements=st.floats(-8, 8)))
def test_gelu_exact_against_math_erf(a):
    want = np.array([0.5 * v * (1 + math.erf(v / math.sqrt(2))) for v in a.ravel()]).reshape(a.shape)
    # erf's approximation error is below 1.5e-7, scaled by |x|/2 in GELU
    np.testing.assert_allclose(gelu(Tensor(a, dtype=np.float64)).numpy(), want, atol=1.5e-7 * 4 + 1e-12)


def test_erf_bound_over_a_fine_grid():
    x = np.linspace(-10, 10, 200_001)
    assert np.abs(erf(x) - np.array([math.erf(v) for v in x])).max() < 1.5e-7
