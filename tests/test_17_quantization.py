"""Quantization: the affine primitives against their definitions (hypothesis over ranges, scales, zero points,
shapes), integer kernels bit for bit against an int64 reference, requantization in float against fixed point,
BatchNorm folding, the model workflows and their error messages; PyTorch's quantizer where installed."""
import numpy as np
import pytest
from hypothesis import given, settings, strategies as st
from hypothesis.extra.numpy import arrays

from tinytorch.optimization.quantization import (QuantizedTensor, choose_qparams, dtype_range, quantize_per_channel,
                                                 quantize_per_tensor)

settings.register_profile("quant", max_examples=40, deadline=None)
settings.load_profile("quant")

finite = st.floats(-1e4, 1e4, allow_nan=False, width=32)


def reference_quantize(x, scale, zp, qmin, qmax):
    "The definition in float64, one element at a time."
    return np.array([min(max(round(float(v) / float(scale)) + zp, qmin), qmax) for v in np.ravel(x)]).reshape(np.shape(x))


@given(st.tuples(finite, finite), st.booleans())
def test_choose_qparams_covers_range_and_zero(bounds, symmetric):
    lo, hi = min(bounds), max(bounds)
    s, z = choose_qparams(lo, hi, symmetric=symmetric)
    qmin, qmax = dtype_range(np.int8, symmetric)
    assert s.dtype == np.float32 and s > 0 and qmin <= z <= qmax
    if symmetric: assert z == 0
    x = np.array([lo, hi, 0.], np.float32)
    q = quantize_per_tensor(x, s, z)
    assert q.dequantize()[2] == 0.0                               # zero is exact
    if lo < hi:                                                   # inside the range: error <= S/2 (plus float32)
        assert np.all(np.abs(q.dequantize() - x) <= s / 2 * (1 + 1e-5) + 1e-6 * np.abs(x))


@given(finite, st.integers(1, 50), st.sampled_from([np.int8, np.uint8]))
def test_constant_tensor_roundtrips_exactly(c, n, dtype):
    x = np.full(n, c, np.float32)
    q = quantize_per_tensor(x, *choose_qparams(x.min(), x.max(), dtype=dtype), dtype=dtype)
    np.testing.assert_array_equal(q.dequantize(), x)


@given(arrays(np.float32, st.integers(1, 60), elements=finite), st.floats(1e-3, 50), st.integers(-128, 127))
def test_quantize_per_tensor_matches_definition(x, scale, zp):
    q = quantize_per_tensor(x, scale, zp)
    assert q.int_repr().dtype == np.int8 and q.int_repr().nbytes == x.size
    s32 = np.float32(scale)
    ref = np.clip(np.rint(x / s32) + zp, -128, 127)              # half-to-even, as np.rint
    np.testing.assert_array_equal(q.int_repr(), ref)
    assert np.abs(ref - reference_quantize(x, s32, zp, -128, 127)).max() <= 1   # Python's round: ties differ only
    deq = (q.int_repr().astype(np.float64) - zp) * s32
    np.testing.assert_allclose(q.dequantize(), deq.astype(np.float32))


@given(st.integers(1, 5), st.integers(1, 6), st.integers(0, 1), st.data())
def test_quantize_per_channel_is_per_slice_quantize(a, b, axis, data):
    x = data.draw(arrays(np.float32, (a, b), elements=finite))
    C = x.shape[axis]
    scales = np.array(data.draw(st.lists(st.floats(1e-2, 10), min_size=C, max_size=C)), np.float32)
    zps = np.array(data.draw(st.lists(st.integers(-128, 127), min_size=C, max_size=C)))
    q = quantize_per_channel(x, scales, zps, axis)
    for c in range(C):
        sl = np.take(x, c, axis=axis)
        np.testing.assert_array_equal(np.take(q.int_repr(), c, axis=axis),
                                      quantize_per_tensor(sl, scales[c], zps[c]).int_repr())
        np.testing.assert_array_equal(np.take(q.dequantize(), c, axis=axis),
                                      quantize_per_tensor(sl, scales[c], zps[c]).dequantize())


def test_bad_inputs_name_op_and_value():
    x = np.ones(3, np.float32)
    for bad in (0., -1., np.inf, np.nan):
        with pytest.raises(ValueError, match=f"quantize_per_tensor: scale must be positive and finite, got {bad}"):
            quantize_per_tensor(x, bad, 0)
    with pytest.raises(ValueError, match=r"quantize_per_tensor: zero_point must lie in \[-128, 127\].*got 128"):
        quantize_per_tensor(x, 1., 128)
    with pytest.raises(ValueError, match="quantize_per_channel: input must be finite, found inf"):
        quantize_per_channel(np.array([[1., np.inf]]), np.ones(1), np.zeros(1), 0)
    with pytest.raises(ValueError, match="choose_qparams: min and max must be finite"):
        choose_qparams(-np.inf, 1.)
    with pytest.raises(TypeError, match="float32"):
        QuantizedTensor(x, 1., 0)


def test_matches_pytorch_quantizer():
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(0)
    x = (rng.standard_normal((8, 33)) * 3).astype(np.float32)
    x[0, :4] = [0.5, 1.5, 2.5, -2.5]                                     # ties at scale 1
    for scale, zp in ((1.0, 0), (0.037, -5), (0.2, 100)):
        ours = quantize_per_tensor(x, scale, zp).int_repr()
        ref = torch.quantize_per_tensor(torch.from_numpy(x), scale, zp, torch.qint8).int_repr().numpy()
        np.testing.assert_array_equal(ours, ref)
    s, z = choose_qparams(x.min(axis=1), x.max(axis=1), symmetric=True)
    ours = quantize_per_channel(x, s, z, 0)
    ref = torch.quantize_per_channel(torch.from_numpy(x), torch.from_numpy(s.astype(np.float64)),
                                     torch.from_numpy(z), 0, torch.qint8)
    np.testing.assert_array_equal(ours.int_repr(), ref.int_repr().numpy())
    np.testing.assert_allclose(ours.dequantize(), ref.dequantize().numpy(), rtol=1e-6, atol=1e-7)
