"""Property tests for `tinytorch.core.tensor`: Tensor semantics against NumPy as the oracle."""
import re

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st
from hypothesis.extra import numpy as hnp

from tinytorch.core.tensor import Tensor, cat, stack

HYPOTHESIS = settings(max_examples=60)  # applied to this file's property tests by conftest.py

finite32 = st.floats(-100, 100, width=32, allow_nan=False)
float_arrays = lambda shape: hnp.arrays(np.float32, shape, elements=finite32)
int_dtypes = st.sampled_from([np.int8, np.int16, np.int32, np.int64, np.uint8])


@given(st.data(), hnp.mutually_broadcastable_shapes(num_shapes=2, min_dims=0, max_dims=4, max_side=4))
def test_binary_ops_broadcast_like_numpy(data, shapes):
    (sa, sb), out_shape = shapes.input_shapes, shapes.result_shape
    a, b = data.draw(float_arrays(sa)), data.draw(float_arrays(sb))
    b = np.where(np.abs(b) < 1e-3, np.float32(1), b)  # keep division finite
    for op in ("__add__", "__sub__", "__mul__", "__truediv__"):
        got = getattr(Tensor(a), op)(Tensor(b))
        want = getattr(a, op)(b)
        assert got.shape == out_shape, (op, sa, sb)
        assert got.dtype == np.float32, (op, got.dtype)
        np.testing.assert_array_equal(got.numpy(), want, err_msg=f"{op} {sa} {sb}")


@given(hnp.arrays(np.float32, hnp.array_shapes(max_dims=3, max_side=4), elements=finite32), finite32)
def test_scalar_ops_keep_float32(a, s):
    t = Tensor(a)
    for got, want in ((t + s, a + s), (s - t, s - a), (t * s, a * s)):
        assert got.dtype == np.float32
        np.testing.assert_array_equal(got.numpy(), want)


@given(st.data(), int_dtypes)
def test_integer_dtypes_are_preserved(data, dtype):
    info = np.iinfo(dtype)
    a = data.draw(hnp.arrays(dtype, hnp.array_shapes(max_dims=3, max_side=4),
                             elements=st.integers(max(info.min, -10), min(info.max, 10))))
    t = Tensor(a)
    assert t.dtype == dtype and t.nbytes == a.nbytes
    assert (t + 1).dtype == dtype and (t * t).dtype == dtype
    assert t.reshape(-1).dtype == dtype and t[..., :1].dtype == dtype
    assert (t / 2).dtype == np.float32  # true division gives the default float type, as in PyTorch


@st.composite
def array_and_axis(draw):
    a = draw(float_arrays(hnp.array_shapes(min_dims=1, max_dims=4, max_side=4)))
    axes = draw(st.none() | st.integers(-a.ndim, a.ndim - 1)
                | st.lists(st.integers(0, a.ndim - 1), min_size=1, max_size=a.ndim, unique=True).map(tuple))
    return a, axes


@given(array_and_axis(), st.booleans())
def test_reductions_match_numpy(a_axis, keepdims):
    a, axis = a_axis
    t = Tensor(a)
    for name in ("sum", "mean", "max", "min"):
        got = getattr(t, name)(axis=axis, keepdims=keepdims)
        want = getattr(np, name)(a, axis=axis, keepdims=keepdims)
        assert got.shape == np.shape(want), (name, a.shape, axis, keepdims)
        assert got.dtype == np.float32
        # float32 sums depend on summation order; bound the error by n * eps * sum|a|
        n = a.size // max(np.asarray(want).size, 1)
        tol = n * np.finfo(np.float32).eps * np.abs(a).sum(axis=axis, keepdims=keepdims) + 1e-6
        np.testing.assert_array_less(np.abs(got.numpy() - want), tol + 1e-30)
    if not isinstance(axis, tuple):
        np.testing.assert_array_equal(t.argmax(axis=axis, keepdims=keepdims).numpy(),
                                      np.argmax(a, axis=axis, keepdims=keepdims))


@given(array_and_axis())
def test_bad_axis_names_axis_and_shape(a_axis):
    a, _ = a_axis
    with pytest.raises(IndexError, match=re.escape(f"sum: axis {a.ndim} out of range for tensor of shape {a.shape}")):
        Tensor(a).sum(axis=a.ndim)


@given(float_arrays(hnp.array_shapes(min_dims=1, max_dims=4, max_side=4)), st.data())
def test_reshape_and_permute_match_numpy(a, data):
    t = Tensor(a)
    np.testing.assert_array_equal(t.reshape(-1).numpy(), a.reshape(-1))
    np.testing.assert_array_equal(t.reshape(a.size, 1).numpy(), a.reshape(a.size, 1))
    perm = tuple(data.draw(st.permutations(range(a.ndim))))
    np.testing.assert_array_equal(t.permute(*perm).numpy(), a.transpose(perm))
    np.testing.assert_array_equal(t.T.numpy(), a.T)
    i, j = data.draw(st.integers(0, a.ndim - 1)), data.draw(st.integers(0, a.ndim - 1))
    np.testing.assert_array_equal(t.transpose(i, j).numpy(), np.swapaxes(a, i, j))
    assert np.shares_memory(t.permute(*perm).numpy(), a)  # permutation is a view


@given(float_arrays(hnp.array_shapes(min_dims=1, max_dims=3, max_side=5)), st.data())
def test_indexing_matches_numpy(a, data):
    idx = data.draw(hnp.basic_indices(a.shape, allow_ellipsis=True))
    np.testing.assert_array_equal(Tensor(a)[idx].numpy(), a[idx])
    rows = data.draw(st.lists(st.integers(0, a.shape[0] - 1), max_size=6))
    np.testing.assert_array_equal(Tensor(a)[Tensor(np.array(rows, np.int64))].numpy(), a[np.array(rows, np.int64)])


@given(st.data(), hnp.array_shapes(min_dims=1, max_dims=3, max_side=4), st.integers(1, 3))
def test_cat_and_stack_match_numpy(data, shape, k):
    arrays = [data.draw(float_arrays(shape)) for _ in range(k)]
    dim = data.draw(st.integers(-len(shape), len(shape) - 1))
    np.testing.assert_array_equal(cat([Tensor(a) for a in arrays], dim).numpy(), np.concatenate(arrays, dim))
    sdim = data.draw(st.integers(-len(shape) - 1, len(shape)))
    np.testing.assert_array_equal(stack([Tensor(a) for a in arrays], sdim).numpy(), np.stack(arrays, sdim))


@given(hnp.arrays(np.float32, hnp.array_shapes(min_dims=2, max_dims=4, max_side=4), elements=finite32), st.data())
def test_matmul_matches_numpy(a, data):
    m = data.draw(st.integers(1, 4))
    b = data.draw(float_arrays((a.shape[-1], m)))
    got = (Tensor(a) @ Tensor(b)).numpy()
    want = a.astype(np.float64) @ b.astype(np.float64)
    # float32 dot product of length k: error <= k * eps * sum |a_i b_i|
    tol = a.shape[-1] * np.finfo(np.float32).eps * (np.abs(a).astype(np.float64) @ np.abs(b)) + 1e-30
    assert got.shape == want.shape and got.dtype == np.float32
    np.testing.assert_array_less(np.abs(got - want), tol + 1e-6)


def test_construction_defaults_and_errors():
    assert Tensor([1.0, 2.0]).dtype == np.float32
    assert Tensor(np.arange(3, dtype=np.float64)).dtype == np.float32
    assert Tensor([1.0], dtype=np.float64).dtype == np.float64
    assert Tensor([1, 2]).dtype == np.int64
    assert Tensor(np.array([1], np.int8)).nbytes == 1
    with pytest.raises(ValueError, match="ragged"):
        Tensor([[1, 2], [3]])
    with pytest.raises(TypeError, match="strings"):
        Tensor(["a"])
    with pytest.raises(ValueError, match=r"inner dims differ, \(2, 3\) @ \(2, 3\)"):
        Tensor(np.ones((2, 3))) @ Tensor(np.ones((2, 3)))
    with pytest.raises(ValueError, match=r"cannot reshape tensor of shape \(2, 3\)"):
        Tensor(np.ones((2, 3))).reshape(4)
