"""Convolution and pooling: gradchecks over random shapes, kernels, strides and padding drawn by hypothesis; forward
values against a direct loop and (when installed) against PyTorch; layers, errors and memory."""
import gc
import math
import weakref

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from tinytorch.core.autograd import gradcheck
from tinytorch.core.layers import Parameter
from tinytorch.core.spatial import (AvgPool2d, Conv2d, Flatten, MaxPool2d, avg_pool2d, col2im, conv2d, im2col,
                                    max_pool2d)
from tinytorch.core.tensor import Tensor, manual_seed, randn

HYPOTHESIS = settings(max_examples=25)  # applied to this file's property tests by conftest.py


def leaf(a) -> Tensor:
    return Tensor(np.asarray(a, np.float64), dtype=np.float64, requires_grad=True)


def direct_conv(x, w, b, stride, padding):
    "The definition, one output element at a time."
    (sh, sw), (ph, pw) = stride, padding
    xp = np.pad(x, ((0, 0), (0, 0), (ph, ph), (pw, pw)))
    O, _, KH, KW = w.shape
    OH, OW = (xp.shape[2] - KH) // sh + 1, (xp.shape[3] - KW) // sw + 1
    y = np.zeros((x.shape[0], O, OH, OW), x.dtype)
    for n, o, i, j in np.ndindex(y.shape):
        y[n, o, i, j] = (xp[n, :, i * sh:i * sh + KH, j * sw:j * sw + KW] * w[o]).sum()
    return y if b is None else y + b[:, None, None]


def direct_pool(x, kernel, stride, reduce):
    "Pooling by its definition, one window at a time."
    (KH, KW), (sh, sw) = kernel, stride
    OH, OW = (x.shape[2] - KH) // sh + 1, (x.shape[3] - KW) // sw + 1
    y = np.zeros(x.shape[:2] + (OH, OW), x.dtype)
    for i, j in np.ndindex(OH, OW):
        y[:, :, i, j] = reduce(x[:, :, i * sh:i * sh + KH, j * sw:j * sw + KW], axis=(2, 3))
    return y


@st.composite
def conv_case(draw):
    "Shapes, a kernel (often non-square), stride and padding that fit together."
    kh, kw = draw(st.integers(1, 3)), draw(st.integers(1, 3))
    sh, sw = draw(st.integers(1, 3)), draw(st.integers(1, 3))
    ph, pw = draw(st.integers(0, 2)), draw(st.integers(0, 2))
    h, w = draw(st.integers(max(1, kh - 2 * ph), 6)), draw(st.integers(max(1, kw - 2 * pw), 6))
    n, c, o = draw(st.integers(1, 2)), draw(st.integers(1, 3)), draw(st.integers(1, 3))
    return (n, c, h, w), (o, c, kh, kw), (sh, sw), (ph, pw), draw(st.booleans())


@st.composite
def pool_case(draw):
    kh, kw = draw(st.integers(1, 3)), draw(st.integers(1, 3))
    stride = draw(st.none() | st.tuples(st.integers(1, 3), st.integers(1, 3)))
    h, w = draw(st.integers(kh, 7)), draw(st.integers(kw, 7))
    return (draw(st.integers(1, 2)), draw(st.integers(1, 3)), h, w), (kh, kw), stride


# Gradients against finite differences

@given(conv_case(), st.integers(0, 2**32 - 1))
def test_conv2d_gradcheck(case, seed):
    xs, ws, stride, padding, with_bias = case
    rng = np.random.default_rng(seed)
    x, w, b = leaf(rng.standard_normal(xs)), leaf(rng.standard_normal(ws)), leaf(rng.standard_normal(ws[0]))
    if with_bias: assert gradcheck(lambda x, w, b: conv2d(x, w, b, stride, padding), x, w, b)
    else: assert gradcheck(lambda x, w: conv2d(x, w, None, stride, padding), x, w)


@given(pool_case(), st.integers(0, 2**32 - 1))
def test_max_pool2d_gradcheck(case, seed):
    shape, kernel, stride = case
    # distinct values 0.1 apart: a finite-difference step cannot change which element wins a window
    x = leaf(np.random.default_rng(seed).permutation(int(np.prod(shape))).reshape(shape) * 0.1)
    assert gradcheck(lambda x: max_pool2d(x, kernel, stride), x)


@given(pool_case(), st.integers(0, 2**32 - 1))
def test_avg_pool2d_gradcheck(case, seed):
    shape, kernel, stride = case
    assert gradcheck(lambda x: avg_pool2d(x, kernel, stride), leaf(np.random.default_rng(seed).standard_normal(shape)))


# Forward values against the definitions

@given(conv_case(), st.integers(0, 2**32 - 1))
def test_conv2d_matches_direct_loop(case, seed):
    xs, ws, stride, padding, with_bias = case
    rng = np.random.default_rng(seed)
    x, w, b = rng.standard_normal(xs), rng.standard_normal(ws), rng.standard_normal(ws[0]) if with_bias else None
    got = conv2d(Tensor(x, dtype=np.float64), Tensor(w, dtype=np.float64),
                 None if b is None else Tensor(b, dtype=np.float64), stride, padding).numpy()
    # float64 sums of at most 3*3*3 products of standard normals, in two different orders
    np.testing.assert_allclose(got, direct_conv(x, w, b, stride, padding), rtol=1e-12, atol=1e-12)


@given(pool_case(), st.integers(0, 2**32 - 1))
def test_pooling_matches_direct_loop(case, seed):
    shape, kernel, stride = case
    x = np.random.default_rng(seed).standard_normal(shape)
    s = kernel if stride is None else stride
    np.testing.assert_array_equal(max_pool2d(Tensor(x, dtype=np.float64), kernel, stride).numpy(),
                                  direct_pool(x, kernel, s, np.max))          # a max is exact
    np.testing.assert_allclose(avg_pool2d(Tensor(x, dtype=np.float64), kernel, stride).numpy(),
                               direct_pool(x, kernel, s, np.mean), rtol=1e-12, atol=1e-14)


@given(conv_case(), st.integers(0, 2**32 - 1))
def test_col2im_is_the_adjoint_of_im2col(case, seed):
    xs, ws, stride, padding, _ = case
    rng = np.random.default_rng(seed)
    x = rng.standard_normal(xs)
    cols = im2col(x, ws[2:], stride, padding)
    c = rng.standard_normal(cols.shape)
    # <A x, c> = <x, A^T c>: two float64 sums of a few hundred products
    assert math.isclose((cols * c).sum(), (x * col2im(c, xs, ws[2:], stride, padding)).sum(), rel_tol=1e-10, abs_tol=1e-10)


def test_max_pool_ties_route_the_gradient_to_one_element():
    x = Tensor(np.zeros((2, 3, 4, 4)), requires_grad=True)               # every window is one big tie
    max_pool2d(x, 2).sum().backward()
    np.testing.assert_array_equal(x.grad[:, :, ::2, ::2], 1.0)            # the first element of each window
    assert x.grad.sum() == 2 * 3 * 2 * 2


def test_float32_stays_float32():
    x = Tensor(np.ones((2, 3, 6, 6), np.float32), requires_grad=True)
    conv = Conv2d(3, 4, 3, padding=1)
    y = avg_pool2d(max_pool2d(conv(x), 2), 1)
    assert y.dtype == np.float32
    y.sum().backward()
    assert {x.grad.dtype, conv.weight.grad.dtype, conv.bias.grad.dtype} == {np.dtype(np.float32)}


def test_cached_columns_are_released_after_backward():
    conv = Conv2d(2, 3, 3)
    y = conv(randn(2, 2, 5, 5))
    cols = weakref.ref(y._ctx[2]['cols'])
    gc.disable()                                                          # reference counting alone must free it
    try:
        y.sum().backward()
        del y
        assert cols() is None
    finally:
        gc.enable()


# Against PyTorch, when it is installed

@pytest.fixture(scope="module")
def torch():
    return pytest.importorskip("torch")


@given(case=conv_case(), seed=st.integers(0, 2**32 - 1))
@settings(max_examples=15)
def test_conv2d_matches_torch(torch, case, seed):
    xs, ws, stride, padding, with_bias = case
    rng = np.random.default_rng(seed)
    x, w, b = (rng.standard_normal(s) for s in (xs, ws, ws[:1]))
    g = rng.standard_normal(direct_conv(x, w, None, stride, padding).shape)
    ours = [leaf(a) for a in (x, w, b)]
    y = conv2d(ours[0], ours[1], ours[2] if with_bias else None, stride, padding)
    y.backward(g)
    theirs = [torch.tensor(a, requires_grad=True) for a in (x, w, b)]
    yt = torch.nn.functional.conv2d(theirs[0], theirs[1], theirs[2] if with_bias else None, stride, padding)
    yt.backward(torch.tensor(g))
    np.testing.assert_allclose(y.numpy(), yt.detach().numpy(), rtol=1e-10, atol=1e-10)
    for o, t in zip(ours[:3 if with_bias else 2], theirs):               # float64 on both sides
        np.testing.assert_allclose(o.grad, t.grad.numpy(), rtol=1e-10, atol=1e-10)


@given(case=pool_case(), seed=st.integers(0, 2**32 - 1), ties=st.booleans())
@settings(max_examples=15)
def test_pooling_matches_torch(torch, case, seed, ties):
    shape, kernel, stride = case
    rng = np.random.default_rng(seed)
    x = rng.integers(0, 3, shape).astype(np.float32) if ties else rng.standard_normal(shape, dtype=np.float32)
    for ours_fn, torch_fn in ((max_pool2d, torch.nn.functional.max_pool2d), (avg_pool2d, torch.nn.functional.avg_pool2d)):
        xo, xt = Tensor(x, requires_grad=True), torch.tensor(x, requires_grad=True)
        y, yt = ours_fn(xo, kernel, stride), torch_fn(xt, kernel, stride)
        g = rng.standard_normal(y.shape, dtype=np.float32)
        y.backward(g)
        yt.backward(torch.tensor(g))
        # max: exact values, and with ties the gradient goes to the same element as in PyTorch;
        # avg: float32 sums of at most 9 terms in another order
        np.testing.assert_allclose(y.numpy(), yt.detach().numpy(), rtol=1e-6, atol=1e-6)
        np.testing.assert_allclose(xo.grad, xt.grad.numpy(), rtol=1e-6, atol=1e-6)


def test_conv2d_layer_loads_torch_weights(torch):
    manual_seed(0)
    ours = Conv2d(3, 5, (3, 2), stride=(2, 1), padding=(1, 0))
    theirs = torch.nn.Conv2d(3, 5, (3, 2), stride=(2, 1), padding=(1, 0))
    ours.load_state_dict({k: v.detach().numpy() for k, v in theirs.state_dict().items()})
    x = np.random.default_rng(0).standard_normal((2, 3, 9, 7), dtype=np.float32)
    # float32 sums of 18 products in two different orders
    np.testing.assert_allclose(ours(Tensor(x)).numpy(), theirs(torch.tensor(x)).detach().numpy(), rtol=1e-5, atol=1e-5)


# Layers

def test_conv2d_initialisation_is_pytorchs_and_reproducible():
    manual_seed(0)
    conv = Conv2d(16, 32, (3, 5))
    bound = 1 / math.sqrt(16 * 3 * 5)
    w, b = conv.weight.numpy(), conv.bias.numpy()
    assert w.shape == (32, 16, 3, 5) and b.shape == (32,)
    assert np.abs(w).max() <= bound and np.abs(b).max() <= bound
    assert abs(w.std() / (bound / math.sqrt(3)) - 1) < 0.03              # std of n = 7,680 draws: error ~ sqrt(0.2/n) = 0.5%
    assert list(conv.state_dict()) == ["weight", "bias"]
    manual_seed(0)
    np.testing.assert_array_equal(Conv2d(16, 32, (3, 5)).weight.numpy(), w)
    assert Conv2d(1, 2, 3, bias=False).bias is None


def test_layers_and_flatten():
    x = randn(2, 3, 6, 6)
    np.testing.assert_array_equal(MaxPool2d(2)(x).numpy(), max_pool2d(x, 2).numpy())
    np.testing.assert_array_equal(AvgPool2d(3, stride=1)(x).numpy(), avg_pool2d(x, 3, 1).numpy())
    assert Flatten()(x).shape == (2, 108) and Flatten(1, 2)(x).shape == (2, 18, 6)
    assert list(MaxPool2d(2).parameters()) == [] and list(Flatten().parameters()) == []


# Errors

@pytest.mark.parametrize("fn, message", [
    (lambda: conv2d(randn(3, 8, 8), randn(4, 3, 3, 3)), "conv2d: expected 4-D input (N, C, H, W), got shape (3, 8, 8)"),
    (lambda: conv2d(randn(1, 2, 8, 8), randn(4, 3, 3, 3)),
     "conv2d: input of shape (1, 2, 8, 8) has 2 channels, but weight of shape (4, 3, 3, 3) expects 3"),
    (lambda: conv2d(randn(1, 3, 8, 2), randn(4, 3, 3, 3)), "conv2d: input 8x2 with padding (0, 0) is smaller than the kernel 3x3"),
    (lambda: Conv2d(3, 4, 3)(randn(1, 4, 8, 8)), "has 4 channels, but weight of shape (4, 3, 3, 3) expects 3"),
    (lambda: conv2d(randn(1, 3, 8, 8), randn(4, 3, 3, 3), randn(5)), "bias of shape (5,) does not match 4 output channels"),
    (lambda: conv2d(randn(1, 3, 8, 8), randn(4, 3, 3, 3), padding=-1), "padding must be an int >= 0 or a pair of them, got -1"),
    (lambda: max_pool2d(randn(1, 1, 3, 3), 4), "max_pool2d: input 3x3 with padding (0, 0) is smaller than the kernel 4x4"),
    (lambda: avg_pool2d(randn(8, 8), 2), "avg_pool2d: expected 4-D input (N, C, H, W), got shape (8, 8)"),
    (lambda: Conv2d(3, 4, (3, 3, 3)), "Conv2d: kernel_size must be an int >= 1 or a pair of them, got (3, 3, 3)"),
])
def test_errors_name_the_op_and_the_values(fn, message):
    with pytest.raises((ValueError, TypeError)) as e:
        fn()
    assert message in str(e.value)


def test_mixed_dtypes_are_refused():
    with pytest.raises(TypeError, match="got float64, float32"):
        conv2d(Tensor(np.ones((1, 1, 3, 3)), dtype=np.float64), Parameter(np.ones((1, 1, 2, 2))))
