"""Property tests for `tinytorch.core.normalization`: gradchecks over random shapes, forward passes and running
statistics against NumPy formulas in float64, module state, dropout statistics, and PyTorch when it is installed."""
import math
import re

import numpy as np
import pytest
from hypothesis import assume, given, settings, strategies as st

from tinytorch.core.autograd import gradcheck
from tinytorch.core.layers import Parameter
from tinytorch.core.normalization import (BatchNorm1d, BatchNorm2d, Dropout, LayerNorm, batch_norm, dropout,
                                          layer_norm)
from tinytorch.core.tensor import Tensor, manual_seed, ones, randn

prop = settings(max_examples=30, deadline=None)
seeds = st.integers(0, 2**32 - 1)
U64 = np.finfo(np.float64).eps
U32 = np.finfo(np.float32).eps


def leaf(a) -> Tensor:
    return Tensor(np.asarray(a, np.float64), dtype=np.float64, requires_grad=True)


def const(a) -> Tensor:
    return Tensor(np.asarray(a, np.float64), dtype=np.float64)


@st.composite
def bn_inputs(draw):
    "A float64 (N, C, ...) array with N >= 2, 0-2 spatial dims, channels of various means and scales."
    ndim = draw(st.integers(2, 4))
    shape = (draw(st.integers(2, 3)), draw(st.integers(1, 3))) + tuple(draw(st.integers(1, 3)) for _ in range(ndim - 2))
    rng = np.random.default_rng(draw(seeds))
    C = shape[1]
    cs = (1, C) + (1,) * (ndim - 2)
    x = rng.standard_normal(shape) * rng.uniform(0.5, 3, C).reshape(cs) + rng.uniform(-3, 3, C).reshape(cs)
    return x, rng


def channel_var(x: np.ndarray) -> np.ndarray:
    return x.var(axis=(0,) + tuple(range(2, x.ndim)))


# batch_norm: gradients

@prop
@given(bn_inputs(), st.floats(1e-5, 0.5), st.booleans(), st.booleans())
def test_batch_norm_training_gradcheck(inp, eps, with_weight, with_bias):
    x, rng = inp
    assume(channel_var(x).min() > 1e-2)   # a near-constant channel makes s huge and finite differences useless
    C = x.shape[1]
    w = leaf(rng.standard_normal(C)) if with_weight else None
    b = leaf(rng.standard_normal(C)) if with_bias else None
    params = [p for p in (w, b) if p is not None]

    def fn(x, *ps):
        it = iter(ps)
        return batch_norm(x, None, None, next(it) if with_weight else None, next(it) if with_bias else None,
                          training=True, eps=eps)
    assert gradcheck(fn, leaf(x), *params)


@prop
@given(bn_inputs())
def test_batch_norm_gradient_has_zero_mean_and_is_orthogonal_to_xhat(inp):
    x, rng = inp
    assume(channel_var(x).min() > 1e-2)
    axes = (0,) + tuple(range(2, x.ndim))
    xt = leaf(x)
    y = batch_norm(xt, None, None, training=True, eps=0.)
    y.backward(rng.standard_normal(x.shape))
    # each sum has at most 3*3*3 = 27 terms of size |g| s |xhat|, below ~5 * 10 * 5; float64 rounding is ~1e-12
    np.testing.assert_allclose(xt.grad.sum(axis=axes), 0, atol=1e-9)
    np.testing.assert_allclose((xt.grad * y.numpy()).sum(axis=axes), 0, atol=1e-9)


@prop
@given(bn_inputs(), st.floats(1e-5, 0.5), st.floats(0, 1))
def test_batch_norm_eval_is_affine_in_x_and_gradchecks(inp, eps, a):
    x, rng = inp
    C = x.shape[1]
    rm, rv = const(rng.standard_normal(C)), const(rng.uniform(0.1, 3, C))
    w, b = leaf(rng.standard_normal(C)), leaf(rng.standard_normal(C))
    f = lambda x, w, b: batch_norm(x, rm, rv, w, b, training=False, eps=eps)
    x2 = rng.standard_normal(x.shape)
    mixed = f(const(a * x + (1 - a) * x2), w, b).numpy()
    # an affine map commutes with affine combinations; rounding of a few float64 ops on values below ~1e3
    np.testing.assert_allclose(mixed, a * f(const(x), w, b).numpy() + (1 - a) * f(const(x2), w, b).numpy(),
                               rtol=1e-12, atol=1e-10)
    assert gradcheck(f, leaf(x), w, b)


# batch_norm: forward and running statistics against the formulas

def bn_reference(x, rm, rv, w, b, training, momentum, eps):
    "The textbook formulas in float64; returns (y, new running mean, new running var)."
    axes = (0,) + tuple(range(2, x.ndim))
    cs = (1, x.shape[1]) + (1,) * (x.ndim - 2)
    if training:
        mean, var = x.mean(axis=axes), x.var(axis=axes)
        m = x.size // x.shape[1]
        rm, rv = (1 - momentum) * rm + momentum * mean, (1 - momentum) * rv + momentum * var * m / (m - 1)
    else: mean, var = rm, rv
    y = (x - mean.reshape(cs)) / np.sqrt(var.reshape(cs) + eps) * w.reshape(cs) + b.reshape(cs)
    return y, rm, rv


@prop
@given(bn_inputs(), st.floats(1e-5, 0.5), st.floats(0, 1), st.integers(1, 3))
def test_batch_norm_forward_and_running_stats_match_formulas(inp, eps, momentum, steps):
    x, rng = inp
    C = x.shape[1]
    w, b = rng.standard_normal(C), rng.standard_normal(C)
    rm, rv = const(np.zeros(C)), const(np.ones(C))
    ref_m, ref_v = np.zeros(C), np.ones(C)
    for step in range(steps):
        xs = x + step                                    # a different batch each step
        y = batch_norm(const(xs), rm, rv, const(w), const(b), training=True, momentum=momentum, eps=eps)
        ref_y, ref_m, ref_v = bn_reference(xs, ref_m, ref_v, w, b, True, momentum, eps)
        # float64, values below ~10 and at most 27 per channel: summation-order differences are ~1e-14
        np.testing.assert_allclose(y.numpy(), ref_y, rtol=1e-10, atol=1e-10)
        np.testing.assert_allclose(rm.numpy(), ref_m, rtol=1e-10, atol=1e-12)
        np.testing.assert_allclose(rv.numpy(), ref_v, rtol=1e-10, atol=1e-12)
    y = batch_norm(const(x), rm, rv, const(w), const(b), training=False, eps=eps)
    np.testing.assert_allclose(y.numpy(), bn_reference(x, ref_m, ref_v, w, b, False, 0, eps)[0], rtol=1e-10, atol=1e-10)


@prop
@given(bn_inputs())
def test_batch_norm_float32_stays_float32_and_close_to_float64(inp):
    x, _ = inp
    x32 = x.astype(np.float32)
    y = batch_norm(Tensor(x32), None, None, training=True).numpy()
    ref = bn_reference(x32.astype(np.float64), np.zeros(x.shape[1]), np.ones(x.shape[1]), np.ones(x.shape[1]),
                       np.zeros(x.shape[1]), True, 0.1, 1e-5)[0]
    assert y.dtype == np.float32
    # float32 rounding: the mean of m <= 27 values errs by at most m u max|x|; xhat's error is that over sigma,
    # plus a few roundings of each op (the 8), times 4 for the mean, the centring and the variance
    m = x.size // x.shape[1]
    sigma = np.sqrt(channel_var(x).min() + 1e-5)
    np.testing.assert_allclose(y, ref, atol=4 * (m + 8) * U32 * np.abs(x).max() / sigma)


# layer_norm

@st.composite
def ln_inputs(draw):
    "A float64 array of 1-3 leading dims and 1-2 normalised dims, each normalised group of at least 2 elements."
    lead = tuple(draw(st.integers(1, 3)) for _ in range(draw(st.integers(1, 2))))
    norm = tuple(draw(st.integers(1, 4)) for _ in range(draw(st.integers(1, 2))))
    assume(math.prod(norm) >= 2)
    rng = np.random.default_rng(draw(seeds))
    x = rng.standard_normal(lead + norm) * rng.uniform(0.5, 3) + rng.uniform(-3, 3)
    return x, norm, rng


def ln_reference(x, norm, w, b, eps):
    axes = tuple(range(x.ndim - len(norm), x.ndim))
    mean, var = x.mean(axis=axes, keepdims=True), x.var(axis=axes, keepdims=True)
    y = (x - mean) / np.sqrt(var + eps)
    return (y if w is None else y * w) + (0 if b is None else b)


@prop
@given(ln_inputs(), st.floats(1e-5, 0.5), st.booleans(), st.booleans())
def test_layer_norm_gradcheck_and_forward(inp, eps, with_weight, with_bias):
    x, norm, rng = inp
    axes = tuple(range(x.ndim - len(norm), x.ndim))
    assume(x.var(axis=axes).min() > 1e-2)
    w = leaf(rng.standard_normal(norm)) if with_weight else None
    b = leaf(rng.standard_normal(norm)) if with_bias else None
    params = [p for p in (w, b) if p is not None]

    def fn(x, *ps):
        it = iter(ps)
        return layer_norm(x, norm, next(it) if with_weight else None, next(it) if with_bias else None, eps=eps)
    y = fn(const(x), *params)
    # float64, at most 16 values per group: summation-order differences stay below 1e-10
    np.testing.assert_allclose(y.numpy(), ln_reference(x, norm, None if w is None else w.numpy(),
                                                       None if b is None else b.numpy(), eps), rtol=1e-10, atol=1e-10)
    assert gradcheck(fn, leaf(x), *params)


@prop
@given(ln_inputs())
def test_layer_norm_of_an_example_ignores_the_rest_of_the_batch(inp):
    x, norm, _ = inp
    full = layer_norm(Tensor(x), norm).numpy()
    np.testing.assert_array_equal(layer_norm(Tensor(x[:1]), norm).numpy(), full[:1])


# dropout

@prop
@given(st.floats(0, 1), st.lists(st.integers(1, 5), min_size=1, max_size=3), seeds)
def test_dropout_values_gradient_and_repeatability(p, shape, seed):
    rng = np.random.default_rng(seed)
    x = rng.uniform(0.5, 2, shape) * rng.choice([-1, 1], shape)   # away from 0, so the kept ones are visible
    xt = leaf(x)
    manual_seed(seed)
    y = dropout(xt, p)
    kept = y.numpy() != 0
    scale = 0. if p == 1 else 1 / (1 - p)
    np.testing.assert_allclose(y.numpy()[kept], x[kept] * scale, rtol=4 * U64)   # two roundings
    if p == 1: assert not kept.any()
    if p == 0: assert y is xt
    else:
        y.backward(np.ones(shape))
        np.testing.assert_allclose(xt.grad, kept * scale, rtol=4 * U64)
    manual_seed(seed)
    np.testing.assert_array_equal(dropout(const(x), p).numpy(), y.numpy())
    assert dropout(xt, p, training=False) is xt


@prop
@given(st.floats(0.05, 0.95), seeds)
def test_dropout_kept_fraction_is_binomial(p, seed):
    n = 100_000
    manual_seed(seed)
    y = dropout(ones(n), p).numpy()
    sd = math.sqrt(p * (1 - p) / n)
    assert abs((y != 0).mean() - (1 - p)) < 6 * sd            # 6 standard deviations: a false alarm every ~5e8 runs
    assert abs(y.mean() - 1) < 6 * sd / (1 - p) + 1e-6         # mean preserved; 1e-6 for float32 summation


def test_dropout_gradcheck_with_a_fixed_mask():
    def fn(x):
        manual_seed(7)
        return dropout(x, 0.4)
    assert gradcheck(fn, leaf(np.random.default_rng(0).standard_normal((3, 4))))


@pytest.mark.parametrize("p", [-0.1, 1.01, float('nan'), True, '0.5'])
def test_dropout_rejects_bad_p(p):
    with pytest.raises(ValueError, match="p must be a probability between 0 and 1"): dropout(ones(2), p)
    with pytest.raises(ValueError, match="Dropout: p must be a probability between 0 and 1"): Dropout(p)


def test_dropout_module_follows_training_flag():
    d = Dropout(0.5)
    x = ones(50)
    manual_seed(0)
    assert (d(x).numpy() == 0).any()
    assert d.eval()(x) is x
    assert list(d.state_dict()) == [] and list(d.parameters()) == []


# modules

def test_batchnorm_state_dict_round_trip_gives_the_same_eval_outputs():
    manual_seed(0)
    a = BatchNorm2d(3)
    for _ in range(3): a(randn(4, 3, 2, 2) * 3 + 1)
    a.weight.data[...] = [1., 2., 3.]
    b = BatchNorm2d(3)
    b.load_state_dict(a.state_dict())
    assert b.num_batches_tracked.item() == 3 and b.num_batches_tracked.dtype == np.int64
    x = randn(2, 3, 2, 2)
    np.testing.assert_array_equal(a.eval()(x).numpy(), b.eval()(x).numpy())


def test_batchnorm_momentum_none_is_the_cumulative_average():
    rng = np.random.default_rng(0)
    batches = [rng.standard_normal((5, 2)).astype(np.float32) * (i + 1) for i in range(4)]
    bn = BatchNorm1d(2, momentum=None)
    for xb in batches: bn(Tensor(xb))
    # float32 means of 5 values and running sums of 4: a few ulps of the largest value (about 10)
    np.testing.assert_allclose(bn.running_mean.numpy(), np.mean([xb.mean(0) for xb in batches], axis=0), atol=1e-5)
    np.testing.assert_allclose(bn.running_var.numpy(), np.mean([xb.var(0, ddof=1) for xb in batches], axis=0), rtol=1e-5)


def test_batchnorm_without_running_stats_uses_batch_stats_in_eval():
    bn = BatchNorm2d(2, track_running_stats=False).eval()
    x = randn(3, 2, 2, 2, seed=0)
    np.testing.assert_array_equal(bn(x).numpy(), batch_norm(x, None, None, bn.weight, bn.bias, training=True).numpy())
    assert bn.running_mean is None and list(bn.buffers()) == []


def test_batchnorm_errors_name_the_layer_and_shape():
    with pytest.raises(ValueError, match=re.escape("BatchNorm2d: expected 4-D input (N, C, H, W), got shape (2, 3)")):
        BatchNorm2d(3)(randn(2, 3))
    with pytest.raises(ValueError, match=re.escape("BatchNorm1d: expected 4 channels (num_features) in axis 1, got input of shape (2, 3)")):
        BatchNorm1d(4)(randn(2, 3))
    bn = BatchNorm1d(3)
    with pytest.raises(ValueError, match=re.escape("more than 1 value per channel when training, got input of shape (1, 3)")):
        bn(randn(1, 3))
    assert bn.num_batches_tracked.item() == 0 and (bn.running_mean.numpy() == 0).all()
    assert bn(randn(1, 3, 2)).shape == (1, 3, 2)             # a batch of one with a length: two values per channel


def test_reprs_match_pytorch():
    assert repr(BatchNorm1d(4, momentum=None, affine=False)) == \
        "BatchNorm1d(4, eps=1e-05, momentum=None, affine=False, track_running_stats=True)"
    assert repr(LayerNorm((2, 3), eps=1e-6)) == "LayerNorm((2, 3), eps=1e-06, elementwise_affine=True)"
    assert repr(Dropout(0.1)) == "Dropout(p=0.1)"


# PyTorch, when installed

@pytest.mark.parametrize("ours_cls, torch_name, shape", [(BatchNorm2d, "BatchNorm2d", (4, 3, 5, 5)),
                                                         (BatchNorm1d, "BatchNorm1d", (6, 3)),
                                                         (BatchNorm1d, "BatchNorm1d", (4, 3, 7))])
def test_batchnorm_matches_torch(ours_cls, torch_name, shape):
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(0)
    ours = ours_cls(3, momentum=0.3).double()
    theirs = getattr(torch.nn, torch_name)(3, momentum=0.3, dtype=torch.float64)
    w, b = rng.standard_normal(3), rng.standard_normal(3)
    ours.weight.data[...], ours.bias.data[...] = w, b
    with torch.no_grad(): theirs.weight.copy_(torch.tensor(w)); theirs.bias.copy_(torch.tensor(b))
    for step in range(3):
        x, g = rng.standard_normal(shape) * 2 + step, rng.standard_normal(shape)
        xo, xt = leaf(x), torch.tensor(x, requires_grad=True)
        for p in ours.parameters(): p.grad = None
        theirs.zero_grad()
        yo, yt = ours(xo), theirs(xt)
        yo.backward(g); yt.backward(torch.tensor(g))
        # float64 on both sides; different summation orders over at most 100 values per channel
        np.testing.assert_allclose(yo.numpy(), yt.detach().numpy(), rtol=1e-10, atol=1e-10)
        np.testing.assert_allclose(xo.grad, xt.grad.numpy(), rtol=1e-9, atol=1e-10)
        np.testing.assert_allclose(ours.weight.grad, theirs.weight.grad.numpy(), rtol=1e-9, atol=1e-10)
        np.testing.assert_allclose(ours.bias.grad, theirs.bias.grad.numpy(), rtol=1e-9, atol=1e-10)
        for name in ('running_mean', 'running_var'):
            np.testing.assert_allclose(getattr(ours, name).numpy(), getattr(theirs, name).numpy(), rtol=1e-12, atol=1e-12)
    assert ours.num_batches_tracked.item() == theirs.num_batches_tracked.item() == 3
    x = rng.standard_normal(shape)
    np.testing.assert_allclose(ours.eval()(const(x)).numpy(), theirs.eval()(torch.tensor(x)).detach().numpy(),
                               rtol=1e-10, atol=1e-10)
    assert list(ours.state_dict()) == list(theirs.state_dict())


def test_layernorm_matches_torch():
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(1)
    ours = LayerNorm((3, 4)).double()
    theirs = torch.nn.LayerNorm((3, 4), dtype=torch.float64)
    w, b = rng.standard_normal((3, 4)), rng.standard_normal((3, 4))
    ours.weight.data[...], ours.bias.data[...] = w, b
    with torch.no_grad(): theirs.weight.copy_(torch.tensor(w)); theirs.bias.copy_(torch.tensor(b))
    x, g = rng.standard_normal((2, 5, 3, 4)) * 3 + 1, rng.standard_normal((2, 5, 3, 4))
    xo, xt = leaf(x), torch.tensor(x, requires_grad=True)
    yo, yt = ours(xo), theirs(xt)
    yo.backward(g); yt.backward(torch.tensor(g))
    # float64 on both sides; groups of 12 values
    np.testing.assert_allclose(yo.numpy(), yt.detach().numpy(), rtol=1e-10, atol=1e-10)
    np.testing.assert_allclose(xo.grad, xt.grad.numpy(), rtol=1e-9, atol=1e-10)
    np.testing.assert_allclose(ours.weight.grad, theirs.weight.grad.numpy(), rtol=1e-9, atol=1e-10)
    np.testing.assert_allclose(ours.bias.grad, theirs.bias.grad.numpy(), rtol=1e-9, atol=1e-10)
    assert list(ours.state_dict()) == list(theirs.state_dict())
