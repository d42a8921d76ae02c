"""Gradient checks for every differentiable op, over random shapes with broadcasting drawn by hypothesis."""
import gc

import numpy as np
import pytest
from hypothesis import assume, given, settings, strategies as st
from hypothesis.extra import numpy as hnp

from tinytorch.core.activations import gelu, log_softmax, relu, sigmoid, softmax, tanh
from tinytorch.core.autograd import GradcheckError, gradcheck, no_grad
from tinytorch.core.losses import (binary_cross_entropy, binary_cross_entropy_with_logits, cross_entropy,
                                   mse_loss)
from tinytorch.core.tensor import Tensor, cat, stack

HYPOTHESIS = settings(max_examples=25)  # applied to this file's property tests by conftest.py

shapes = hnp.array_shapes(min_dims=1, max_dims=3, min_side=1, max_side=3)


def leaf(data, draw_positive=False):
    return Tensor(np.asarray(data, np.float64), dtype=np.float64, requires_grad=True)


def arr(draw, shape, lo=-2.0, hi=2.0, away_from_zero=0.0):
    "A float64 array whose entries stay at least `away_from_zero` from 0 (away from kinks)."
    a = draw(hnp.arrays(np.float64, shape, elements=st.floats(lo, hi, allow_nan=False)))
    if away_from_zero:
        a = np.where(np.abs(a) < away_from_zero, np.where(a < 0, -away_from_zero, away_from_zero), a)
    return a


@given(st.data(), hnp.mutually_broadcastable_shapes(num_shapes=2, min_dims=0, max_dims=3, max_side=3),
       st.sampled_from(["add", "sub", "mul", "div", "pow"]))
def test_binary_ops_with_broadcasting(data, shapes2, op):
    sa, sb = shapes2.input_shapes
    a = arr(data.draw, sa, 0.5, 2.0) if op == "pow" else arr(data.draw, sa)
    b = arr(data.draw, sb, -2.0, 2.0, away_from_zero=0.5) if op == "div" else arr(data.draw, sb)
    fn = {"add": lambda x, y: x + y, "sub": lambda x, y: x - y, "mul": lambda x, y: x * y,
          "div": lambda x, y: x / y, "pow": lambda x, y: x ** y}[op]
    assert gradcheck(fn, leaf(a), leaf(b))


@given(st.data(), st.sampled_from(["add", "mul", "sub", "div", "pow"]), st.floats(0.5, 2.0))
def test_ops_with_python_scalars(data, op, s):
    a = leaf(arr(data.draw, data.draw(shapes), 0.5, 2.0))
    fn = {"add": lambda x: (x + s) + (s + x), "mul": lambda x: s * x * s, "sub": lambda x: (s - x) - (x - s),
          "div": lambda x: s / x + x / s, "pow": lambda x: x ** s + s ** x}[op]
    assert gradcheck(fn, a)


@given(st.data(), st.integers(1, 3), st.integers(1, 3), st.integers(1, 3),
       st.sampled_from(["2d", "batched_left", "batched_both", "broadcast_batch", "vec_left", "vec_right", "vec_vec"]))
def test_matmul(data, n, k, m, case):
    shape_a, shape_b = {"2d": ((n, k), (k, m)), "batched_left": ((2, n, k), (k, m)),
                        "batched_both": ((2, n, k), (2, k, m)), "broadcast_batch": ((2, 1, n, k), (3, k, m)),
                        "vec_left": ((k,), (2, k, m)), "vec_right": ((2, n, k), (k,)), "vec_vec": ((k,), (k,))}[case]
    assert gradcheck(lambda a, b: a @ b, leaf(arr(data.draw, shape_a)), leaf(arr(data.draw, shape_b)))


@st.composite
def array_axis(draw):
    shape = draw(shapes)
    # distinct values at least 0.25 apart: a finite-difference step cannot change which element is the max or min
    perm = draw(st.permutations(range(int(np.prod(shape)))))
    a = (np.array(perm, np.float64) * 0.25 - 1.0).reshape(shape)
    axis = draw(st.none() | st.integers(-len(shape), len(shape) - 1)
                | st.lists(st.integers(0, len(shape) - 1), min_size=1, max_size=len(shape), unique=True).map(tuple))
    return a, axis


@given(array_axis(), st.booleans(), st.sampled_from(["sum", "mean", "max", "min"]))
def test_reductions(a_axis, keepdims, op):
    a, axis = a_axis
    assert gradcheck(lambda x: getattr(x, op)(axis=axis, keepdims=keepdims), leaf(a))


@given(st.data(), shapes)
def test_shape_ops(data, shape):
    a = leaf(arr(data.draw, shape))
    perm = tuple(data.draw(st.permutations(range(len(shape)))))
    i, j = data.draw(st.integers(0, len(shape) - 1)), data.draw(st.integers(0, len(shape) - 1))
    assert gradcheck(lambda x: x.reshape(-1), a)
    assert gradcheck(lambda x: x.permute(*perm) * Tensor(np.arange(a.size, dtype=np.float64).reshape(
        tuple(shape[p] for p in perm))), a)
    assert gradcheck(lambda x: x.transpose(i, j).unsqueeze(0).squeeze(0).T.flatten(), a)
    assert gradcheck(lambda x: x.view(*shape[::-1]) if len(shape) == 1 else x.reshape(shape[::-1]), a)


@given(st.data(), shapes)
def test_indexing_with_repeats_and_masks(data, shape):
    a = arr(data.draw, shape)
    idx = data.draw(hnp.basic_indices(shape, allow_ellipsis=True))
    assume(a[idx].size > 0)
    assert gradcheck(lambda x: x[idx], leaf(a))
    rows = data.draw(st.lists(st.integers(0, shape[0] - 1), min_size=1, max_size=5))  # repeats allowed
    assert gradcheck(lambda x: x[np.array(rows)], leaf(a))
    mask = a > 0
    assume(mask.any())
    assert gradcheck(lambda x: x[Tensor(mask)], leaf(a))


def test_repeated_index_accumulates():
    a = Tensor(np.zeros(3), dtype=np.float64, requires_grad=True)
    a[[0, 0, 2, 0]].sum().backward()
    np.testing.assert_array_equal(a.grad, [3.0, 0.0, 1.0])


@given(st.data(), shapes, st.integers(1, 3))
def test_cat_and_stack(data, shape, k):
    dim = data.draw(st.integers(-len(shape), len(shape) - 1))
    parts = [leaf(arr(data.draw, shape)) for _ in range(k)]
    w = np.arange(1, k * np.prod(shape) + 1, dtype=np.float64)
    assert gradcheck(lambda *xs: cat(list(xs), dim).reshape(-1) * Tensor(w), *parts)
    sdim = data.draw(st.integers(-len(shape) - 1, len(shape)))
    assert gradcheck(lambda *xs: stack(list(xs), sdim), *parts)


@given(st.data(), shapes)
def test_unary_math(data, shape):
    pos = leaf(arr(data.draw, shape, 0.5, 3.0))
    assert gradcheck(lambda x: x.exp() + x.log() + x.sqrt() - (-x), pos)
    a = arr(data.draw, shape, -2, 2, away_from_zero=0.1)
    assert gradcheck(lambda x: abs(x), leaf(a))
    lo, hi = -0.5, 0.5
    b = np.where(np.abs(np.abs(a) - 0.5) < 0.05, a * 1.3, a)  # keep away from the bounds
    assert gradcheck(lambda x: x.clip(lo, hi) + x.clip(min=lo) + x.clip(max=hi), leaf(b))


@given(st.data(), shapes)
def test_activations(data, shape):
    a = arr(data.draw, shape, -3, 3, away_from_zero=0.05)
    assert gradcheck(lambda x: relu(x) + sigmoid(x) + tanh(x), leaf(a))
    assert gradcheck(lambda x: gelu(x) * 2 + gelu(x, "tanh"), leaf(a))
    dim = data.draw(st.integers(-len(shape), len(shape) - 1))
    assert gradcheck(lambda x: softmax(x, dim), leaf(a))
    assert gradcheck(lambda x: log_softmax(x, dim), leaf(a))


@given(st.data(), st.integers(1, 4), st.integers(2, 5), st.sampled_from(["mean", "sum", "none"]),
       st.sampled_from([0.0, 0.1, 0.5]))
def test_cross_entropy(data, n, c, reduction, smoothing):
    z = leaf(arr(data.draw, (n, c), -5, 5))
    t = Tensor(np.array(data.draw(st.lists(st.integers(0, c - 1), min_size=n, max_size=n))))
    assert gradcheck(lambda x: cross_entropy(x, t, reduction=reduction, label_smoothing=smoothing), z)


@given(st.data(), shapes, st.sampled_from(["mean", "sum", "none"]))
def test_binary_losses_and_mse(data, shape, reduction):
    x = leaf(arr(data.draw, shape, -4, 4))
    y = leaf(arr(data.draw, shape, 0.05, 0.95))
    assert gradcheck(lambda a, b: binary_cross_entropy_with_logits(a, b, reduction), x, y)
    p = leaf(arr(data.draw, shape, 0.05, 0.95))
    assert gradcheck(lambda a, b: binary_cross_entropy(a, b, reduction), p, y)
    assert gradcheck(lambda a, b: mse_loss(a, b, reduction), x, y)


def test_gradcheck_catches_a_wrong_rule():
    from tinytorch.core import autograd
    saved = autograd._grad_rules["tanh"]
    autograd._grad_rules["tanh"] = lambda g, out, a: (g * (1 - out),)  # wrong: should be 1 - out**2
    try:
        with pytest.raises(GradcheckError, match="analytic"):
            gradcheck(lambda x: tanh(x), leaf([0.3, -0.7]))
    finally:
        autograd._grad_rules["tanh"] = saved


def test_no_grad_and_released_graph():
    a = Tensor([1.0, 2.0], requires_grad=True)
    with no_grad():
        assert not (a * 2).requires_grad
    y = (a * a).sum()
    y.backward()
    with pytest.raises(RuntimeError, match="already released"):
        y.backward()
    with pytest.raises(RuntimeError, match="single-element"):
        (a * 2).backward()


def test_training_steps_create_no_reference_cycles():
    rng = np.random.default_rng(0)
    w = Tensor(rng.standard_normal((8, 4)), requires_grad=True)
    x = Tensor(rng.standard_normal((16, 8)))
    gc.collect()
    gc.disable()
    try:
        for _ in range(20):
            w.grad = None
            cross_entropy(relu(x @ w), Tensor(rng.integers(0, 4, 16))).backward()
        assert gc.collect() == 0
    finally:
        gc.enable()


def test_leaf_gradients_do_not_alias():
    a = Tensor([1.0, 2.0], requires_grad=True)
    b = Tensor([3.0, 4.0], requires_grad=True)
    (a + b).sum().backward()           # the add rule hands the same upstream array to both inputs
    a.grad *= 10                        # an in-place change (as gradient clipping makes) must not reach b
    np.testing.assert_array_equal(b.grad, [1.0, 1.0])
