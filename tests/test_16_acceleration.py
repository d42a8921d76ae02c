"""Property tests for `tinytorch.optimization.acceleration`: the matmul ladder against `@`,
`conv2d_loops` against `conv2d` (im2col + GEMM) in float64, the fused functions against their
composed forms and the framework's ops over random shapes, the Amdahl formula, and `peak_alloc` on
arrays of known size."""
import math

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from tinytorch.core.activations import gelu
from tinytorch.core.normalization import layer_norm
from tinytorch.core.losses import cross_entropy
from tinytorch.core.spatial import conv2d
from tinytorch.core.tensor import Tensor
from tinytorch.optimization.acceleration import (amdahl_speedup, bias_gelu_, conv2d_loops,
                                                 fused_layer_norm, gelu_tanh_, linear_relu,
                                                 matmul_broadcast, matmul_dot, matmul_loops,
                                                 peak_alloc, softmax_cross_entropy)

prop = settings(max_examples=25, deadline=None)
seeds = st.integers(0, 2**32 - 1)
U64 = np.finfo(np.float64).eps


def f64(*shape, seed=0):
    return np.random.default_rng(seed).standard_normal(shape)


# the ladder

@prop
@given(st.integers(1, 6), st.integers(1, 6), st.integers(1, 6), seeds)
def test_ladder_steps_equal_matmul(n, k, m, seed):
    a, b = f64(n, k, seed=seed), f64(k, m, seed=seed + 1)
    want = a @ b
    # k float64 products summed in different orders: error at most k * eps * sum |a_ip b_pj|
    tol = k * U64 * (np.abs(a) @ np.abs(b)).max() + 1e-300
    for f in (matmul_loops, matmul_dot, matmul_broadcast):
        got = f(a, b)
        assert got.shape == (n, m) and got.dtype == np.float64
        np.testing.assert_allclose(got, want, rtol=0, atol=tol)


def test_ladder_keeps_float32_and_checks_shapes():
    a, b = np.ones((2, 3), np.float32), np.ones((3, 4), np.float32)
    for f in (matmul_loops, matmul_dot, matmul_broadcast):
        assert f(a, b).dtype == np.float32
        np.testing.assert_array_equal(f(a, b), np.full((2, 4), 3, np.float32))
        with pytest.raises(ValueError, match=r"\(n, k\) @ \(k, m\), got \(2, 3\) @ \(2, 3\)"):
            f(a, a)


# convolution

@st.composite
def conv_cases(draw):
    N, C, O = draw(st.integers(1, 2)), draw(st.integers(1, 3)), draw(st.integers(1, 3))
    KH, KW = draw(st.integers(1, 3)), draw(st.integers(1, 3))
    stride = (draw(st.integers(1, 2)), draw(st.integers(1, 2)))
    padding = (draw(st.integers(0, 2)), draw(st.integers(0, 2)))
    H = draw(st.integers(max(1, KH - 2 * padding[0]), 6))
    W = draw(st.integers(max(1, KW - 2 * padding[1]), 6))
    seed = draw(seeds)
    bias = f64(O, seed=seed + 2) if draw(st.booleans()) else None
    return f64(N, C, H, W, seed=seed), f64(O, C, KH, KW, seed=seed + 1), bias, stride, padding


@prop
@given(conv_cases())
def test_conv2d_loops_equals_conv2d(case):
    x, w, b, stride, padding = case
    want = conv2d(Tensor(x, dtype=np.float64), Tensor(w, dtype=np.float64),
                  None if b is None else Tensor(b, dtype=np.float64), stride, padding).numpy()
    got = conv2d_loops(x, w, b, stride, padding)
    assert got.shape == want.shape
    terms = w[0].size + 1                      # C*KH*KW products and the bias, in other orders
    bound = terms * U64 * (np.abs(x).max() * np.abs(w).sum() + 1)
    np.testing.assert_allclose(got, want, rtol=0, atol=bound)


def test_conv2d_loops_hand_case_and_errors():
    got = conv2d_loops(np.arange(9.).reshape(1, 1, 3, 3), np.ones((1, 1, 2, 2)), stride=1)
    np.testing.assert_array_equal(got, [[[[8., 12.], [20., 24.]]]])      # 0+1+3+4, 1+2+4+5, ...
    with pytest.raises(ValueError, match="conv2d_loops: expected x"):
        conv2d_loops(np.ones((1, 2, 3, 3)), np.ones((1, 1, 2, 2)))


# fused against composed

def gelu_tanh_composed(x):
    return 0.5 * x * (1 + np.tanh(math.sqrt(2 / math.pi) * (x + 0.044715 * x * x * x)))


shapes = st.tuples(st.integers(1, 40), st.integers(1, 40))


@prop
@given(shapes, seeds)
def test_gelu_tanh_inplace_equals_composed_and_tensor_gelu(shape, seed):
    x = f64(*shape, seed=seed) * 3
    want = gelu_tanh_composed(x)
    y = x.copy()
    out = gelu_tanh_(y)
    assert out is y                                                      # in place
    np.testing.assert_allclose(out, want, rtol=1e-14, atol=1e-14)
    ours = gelu(Tensor(x, dtype=np.float64), 'tanh').numpy()
    np.testing.assert_allclose(out, ours, rtol=1e-14, atol=1e-14)


@prop
@given(st.integers(1, 30), st.integers(1, 20), st.integers(1, 20), st.booleans(), seeds)
def test_linear_relu_equals_composed(n, i, o, with_bias, seed):
    x, w = f64(n, i, seed=seed), f64(o, i, seed=seed + 1)
    b = f64(o, seed=seed + 2) if with_bias else None
    want = np.maximum(x @ w.T + (0 if b is None else b), 0)
    np.testing.assert_allclose(linear_relu(x, w, b), want, rtol=1e-12, atol=1e-12)
    buf = np.empty((n, o))
    assert linear_relu(x, w, b, out=buf) is buf


@prop
@given(shapes, seeds)
def test_bias_gelu_equals_composed(shape, seed):
    y, b = f64(*shape, seed=seed), f64(shape[1], seed=seed + 1)
    want = gelu_tanh_composed(y + b)
    np.testing.assert_allclose(bias_gelu_(y.copy(), b), want, rtol=1e-14, atol=1e-14)


@prop
@given(shapes, st.booleans(), st.booleans(), st.floats(1e-6, 1e-2), seeds)
def test_fused_layer_norm_equals_layer_norm(shape, with_w, with_b, eps, seed):
    x = f64(*shape, seed=seed) * 2 + 1
    w = f64(shape[1], seed=seed + 1) if with_w else None
    b = f64(shape[1], seed=seed + 2) if with_b else None
    T = lambda a: None if a is None else Tensor(a, dtype=np.float64)
    want = layer_norm(T(x), shape[1], T(w), T(b), eps).numpy()
    np.testing.assert_allclose(fused_layer_norm(x, w, b, eps), want, rtol=1e-10, atol=1e-10)


@prop
@given(st.integers(1, 40), st.integers(1, 30), seeds)
def test_softmax_cross_entropy_equals_cross_entropy(n, c, seed):
    z = f64(n, c, seed=seed) * 4
    t = np.random.default_rng(seed).integers(0, c, n)
    want = cross_entropy(Tensor(z, dtype=np.float64), t).item()
    assert math.isclose(softmax_cross_entropy(z, t), want, rel_tol=1e-12, abs_tol=1e-12)


def test_softmax_cross_entropy_is_stable_and_checks_shapes():
    assert softmax_cross_entropy(np.array([[0., 1000.]]), np.array([0])) == pytest.approx(1000.)
    with pytest.raises(ValueError, match="expected logits"):
        softmax_cross_entropy(np.zeros((2, 3)), np.zeros(3, int))


# Amdahl and peak_alloc

@given(st.floats(0, 1), st.floats(0.01, 1e6))
def test_amdahl_speedup_formula_and_bounds(p, s):
    got = amdahl_speedup(p, s)
    assert math.isclose(got, 1 / ((1 - p) + p / s), rel_tol=1e-12)
    assert got <= max(1.0, s) * (1 + 1e-12)           # never more than the part's own speedup
    if p < 1: assert got <= 1 / (1 - p) * (1 + 1e-12)  # never more than 1 / (1 - p)


def test_amdahl_speedup_errors():
    with pytest.raises(ValueError, match="p must be a fraction"): amdahl_speedup(-0.1, 2)
    with pytest.raises(ValueError, match="s must be positive"): amdahl_speedup(0.5, -1)


def test_peak_alloc_counts_temporaries():
    x = np.ones(100_000)                                                 # 800 kB
    one, two = peak_alloc(lambda: x * 2), peak_alloc(lambda: (x * 2, x * 3))   # two alive at once
    assert x.nbytes <= one < 1.5 * x.nbytes
    assert 2 * x.nbytes <= two < 2.5 * x.nbytes
    assert peak_alloc(np.multiply, x, 2, out=x) < 0.01 * x.nbytes
