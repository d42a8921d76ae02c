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


# ---- integer kernels, bit for bit

from tinytorch.core.layers import Linear
from tinytorch.core.spatial import Conv2d
from tinytorch.core.tensor import Tensor, manual_seed
from tinytorch.optimization.quantization import (ACC_K_MAX, QuantizedConv2d, QuantizedLinear, int32_matmul,
                                                 multiply_by_quantized_multiplier, quantize_multiplier, requantize)


def int8_with_ends(rng, shape):
    "Random int8 with the extremes -128 and 127 present."
    q = rng.integers(-128, 128, shape).astype(np.int8)
    q.flat[0], q.flat[-1] = -128, 127
    return q


@given(st.integers(1, 6), st.integers(1, 1600), st.integers(1, 5), st.integers(0, 2**32 - 1))
def test_int32_matmul_is_exact(m, k, n, seed):
    rng = np.random.default_rng(seed)
    a = rng.integers(-255, 256, (m, k)); b = rng.integers(-127, 128, (k, n))
    a.flat[0], b.flat[0] = 255, 127                                       # the extreme product
    out = int32_matmul(a, b)
    assert out.dtype == np.int32
    np.testing.assert_array_equal(out, a.astype(np.int64) @ b.astype(np.int64))


def reference_requant(acc, M, zo, lo, hi):
    "The float output stage, written out: the int64 accumulator cast to float32, times M in float32."
    y = np.rint(acc.astype(np.float32) * np.asarray(M, np.float32)) + zo
    return np.clip(y, lo, hi).astype(np.int8)


@given(st.integers(1, 5), st.integers(1, 700), st.integers(1, 6), st.floats(1e-3, 1), st.integers(-128, 127),
       st.floats(1e-3, 2), st.integers(-128, 127), st.booleans(), st.booleans(), st.integers(0, 2**32 - 1))
def test_quantized_linear_bit_exact(n, k, o, sx, zx, so, zo, relu, per_channel, seed):
    rng = np.random.default_rng(seed)
    lin = Linear(k, o)
    lin.weight.data[...] = rng.standard_normal((o, k)) * rng.uniform(0.01, 1, (o, 1))
    ql = QuantizedLinear.from_float(lin, sx, zx, so, zo, per_channel=per_channel, relu=relu)
    qx = int8_with_ends(rng, (n, k))
    y = ql(QuantizedTensor(qx, sx, zx)).int_repr()
    qw = ql.weight.int_repr().astype(np.int64)
    assert ql.weight.int_repr().dtype == np.int8 and np.abs(qw).max() <= 127
    acc = (qx.astype(np.int64) - zx) @ qw.T                                # the int64 reference
    sw = ql.weight_scale.data.astype(np.float64)
    s_x = float(np.float32(sx))
    acc += np.rint(lin.bias.data / (s_x * sw)).astype(np.int64)
    M = s_x * sw / float(np.float32(so))
    zo_ = ql.zero_point
    np.testing.assert_array_equal(y, reference_requant(acc, M, zo_, max(zo_, -128) if relu else -128, 127))


def reference_conv_int(q, zx, w, stride, padding):
    "Integer convolution by its definition in int64, the input padded with its zero point."
    (sh, sw), (ph, pw) = stride, padding
    x = np.pad(q.astype(np.int64) - zx, ((0, 0), (0, 0), (ph, ph), (pw, pw)))    # pad with real zero
    O, C, KH, KW = w.shape
    OH, OW = (x.shape[2] - KH) // sh + 1, (x.shape[3] - KW) // sw + 1
    out = np.zeros((q.shape[0], O, OH, OW), np.int64)
    for i in range(OH):
        for j in range(OW):
            patch = x[:, :, i * sh:i * sh + KH, j * sw:j * sw + KW]
            out[:, :, i, j] = np.einsum('nckl,ockl->no', patch, w.astype(np.int64))
    return out


@given(st.integers(1, 3), st.integers(1, 4), st.integers(1, 5), st.integers(4, 8), st.integers(1, 3),
       st.integers(1, 2), st.integers(0, 2), st.integers(-128, 127), st.integers(0, 2**32 - 1))
def test_quantized_conv2d_bit_exact(n, c, o, hw, k, stride, padding, zx, seed):
    rng = np.random.default_rng(seed)
    manual_seed(seed % 1000)
    conv = Conv2d(c, o, k, stride=stride, padding=padding)
    qc = QuantizedConv2d.from_float(conv, 0.05, zx, 0.1, 3)
    q = int8_with_ends(rng, (n, c, hw, hw))
    y = qc(QuantizedTensor(q, 0.05, zx)).int_repr()
    acc = reference_conv_int(q, zx, qc.weight.int_repr(), (stride, stride), (padding, padding))
    sw = qc.weight_scale.data.astype(np.float64)
    s_x = float(np.float32(0.05))
    acc += np.rint(conv.bias.data / (s_x * sw)).astype(np.int64)[:, None, None]
    M = (s_x * sw / float(np.float32(0.1)))[:, None, None]
    np.testing.assert_array_equal(y, reference_requant(acc, M, 3, -128, 127))


@given(st.integers(0, 2**32 - 1))
def test_fixed_point_requant_within_one_level_of_float(seed):
    rng = np.random.default_rng(seed)
    acc = rng.integers(-2**31, 2**31, 2000).astype(np.int64)
    M = rng.uniform(1e-9, 0.99, 2000)
    yi = multiply_by_quantized_multiplier(acc, *quantize_multiplier(M))
    exact = acc * M                                                     # float64: |error| << 1
    assert np.abs(yi - exact).max() <= 0.5 + 1e-6 + np.abs(exact).max() * 2.**-30
    a32 = rng.integers(-2**24, 2**24, 2000).astype(np.int32)
    M2 = rng.uniform(1e-6, 1e-2, 2000)
    d = requantize(a32, M2, 0, integer=True).astype(int) - requantize(a32, M2, 0)
    assert np.abs(d).max() <= 1


def test_quantized_linear_matches_pytorch_fbgemm():
    torch = pytest.importorskip("torch")
    import torch.ao.nn.quantized as nnq
    engines = torch.backends.quantized.supported_engines
    torch.backends.quantized.engine = "fbgemm" if "fbgemm" in engines else "x86"
    rng = np.random.default_rng(0)
    lin = Linear(40, 12)
    sx, zx, so, zo = 0.02, -3, 0.05, 4
    qx = rng.integers(-64, 64, (9, 40)).astype(np.int8)            # 7-bit inputs: fbgemm's 16-bit pair sums fit
    # PyTorch's activations are quint8: the same reals with every integer and zero point shifted by 128
    tx = torch.quantize_per_tensor(torch.from_numpy((qx.astype(np.float32) - zx) * np.float32(sx)), sx, zx + 128,
                                   torch.quint8)
    assert np.array_equal(tx.int_repr().numpy().astype(np.int16) - 128, qx)
    for per_channel in (False, True):
        ql = QuantizedLinear.from_float(lin, sx, zx, so, zo, per_channel=per_channel)
        w = torch.from_numpy(lin.weight.data)
        wq = (torch.quantize_per_channel(w, torch.from_numpy(ql.weight_scale.data.astype(np.float64)),
                                         torch.zeros(12, dtype=torch.int64), 0, torch.qint8) if per_channel else
              torch.quantize_per_tensor(w, float(ql.weight.q_scale()), 0, torch.qint8))
        np.testing.assert_array_equal(wq.int_repr().numpy(), ql.weight.int_repr())
        ref = nnq.Linear(40, 12, dtype=torch.qint8)
        ref.set_weight_bias(wq, torch.from_numpy(lin.bias.data))
        ref.scale, ref.zero_point = so, zo + 128
        theirs = ref(tx).int_repr().numpy().astype(np.int16) - 128
        ours = ql(QuantizedTensor(qx, sx, zx)).int_repr()
        assert np.abs(ours - theirs).max() <= 1                       # bias and rounding details may differ by 1


# ---- BatchNorm folding and quantize_model

from tinytorch.core.activations import ReLU, Tanh
from tinytorch.core.layers import Sequential
from tinytorch.core.normalization import BatchNorm1d, BatchNorm2d, Dropout
from tinytorch.core.spatial import Flatten, MaxPool2d
from tinytorch.core.training import load_checkpoint, save_checkpoint
from tinytorch.optimization.quantization import (BaselineCNN, MinMaxObserver, MSEObserver, PercentileObserver,
                                                 fold_batchnorm, quantize_model)


def trained_bn(bn, C, rng):
    "Give a BatchNorm non-trivial running statistics and affine parameters."
    bn.running_mean.data[...] = rng.standard_normal(C)
    bn.running_var.data[...] = rng.uniform(0.2, 3, C)
    bn.weight.data[...] = rng.uniform(0.5, 2, C); bn.bias.data[...] = rng.standard_normal(C)
    return bn.eval()


@given(st.integers(1, 4), st.integers(1, 5), st.booleans(), st.integers(0, 2**32 - 1))
def test_fold_batchnorm_matches_unfolded(c, o, bias, seed):
    rng = np.random.default_rng(seed)
    manual_seed(seed % 1000)
    conv, bn = Conv2d(c, o, 3, padding=1, bias=bias).double(), trained_bn(BatchNorm2d(o).double(), o, rng)
    x = Tensor(rng.standard_normal((2, c, 5, 5)), dtype=np.float64)
    np.testing.assert_allclose(fold_batchnorm(conv, bn)(x).data, bn(conv(x)).data, rtol=1e-10, atol=1e-10)
    lin, bn1 = Linear(c, o).double(), trained_bn(BatchNorm1d(o).double(), o, rng)
    x = Tensor(rng.standard_normal((3, c)), dtype=np.float64)
    np.testing.assert_allclose(fold_batchnorm(lin, bn1)(x).data, bn1(lin(x)).data, rtol=1e-10, atol=1e-10)


def small_cnn(seed=0):
    manual_seed(seed)
    rng = np.random.default_rng(seed)
    m = BaselineCNN(1, 10, image_size=8, channels=(4, 8), hidden=16)
    for bn in (m[1], m[5]): trained_bn(bn, bn.num_features, rng)
    return m.eval(), rng


def test_quantize_model_structure_and_accuracy_to_float():
    model, rng = small_cnn()
    X = rng.uniform(0, 1, (64, 1, 8, 8)).astype(np.float32)
    before = {k: v.copy() for k, v in model.state_dict().items()}
    q = quantize_model(model, [X[:32], Tensor(X[32:])])
    assert all(np.array_equal(before[k], v) for k, v in model.state_dict().items())   # untouched
    assert len(model) == 13 and isinstance(model[1], BatchNorm2d)
    names = [type(m).__name__ for m in q]
    assert names == ['Quantize', 'QuantizedConv2d', 'QuantizedMaxPool2d', 'QuantizedConv2d', 'QuantizedMaxPool2d',
                     'QuantizedFlatten', 'QuantizedLinear', 'QuantizedLinear', 'DeQuantize']
    assert [m.relu for m in q if hasattr(m, 'relu')] == [True, True, True, False]
    out, ref = q(Tensor(X)).data, model(Tensor(X)).data
    assert out.dtype == np.float32 and out.shape == (64, 10)
    assert np.abs(out - ref).max() <= 0.1 * np.abs(ref).max()                # a loose sanity bound: 8 bits
    for mod in ('weight_int8',):
        assert all(b.dtype == np.int8 for n, b in q.named_buffers() if n.endswith(mod))


def test_quantize_model_checkpoint_keeps_int8_and_reloads_bit_identical(tmp_path):
    model, rng = small_cnn()
    X = rng.uniform(0, 1, (32, 1, 8, 8)).astype(np.float32)
    q = quantize_model(model, [X])
    path = save_checkpoint(tmp_path / "q.npz", q)
    with np.load(path) as z:
        assert all(z[k].dtype == np.int8 for k in z.files if k.endswith('weight_int8'))
    fresh = quantize_model(small_cnn(seed=1)[0], [X[:4] * 2])            # other weights and scales
    assert not np.array_equal(fresh(Tensor(X)).data, q(Tensor(X)).data)
    load_checkpoint(path, fresh)
    np.testing.assert_array_equal(fresh(Tensor(X)).data, q(Tensor(X)).data)


def test_quantize_model_errors_name_the_problem():
    model, rng = small_cnn()
    with pytest.raises(ValueError, match="quantize_model: calibration_data is empty"):
        quantize_model(model, [])
    bad = Sequential(Linear(4, 4), Tanh())
    with pytest.raises(TypeError, match="layer '1' is a Tanh, which is not supported"):
        quantize_model(bad, [np.ones((2, 4), np.float32)])
    nested = Sequential(Sequential(Linear(4, 4), ReLU()), Sequential(Linear(4, 2), Tanh()))
    with pytest.raises(TypeError, match="layer '1.1' is a Tanh"):
        quantize_model(nested, [np.ones((2, 4), np.float32)])
    with pytest.raises(ValueError, match="MinMaxObserver: input must be finite, found nan"):
        quantize_model(Sequential(Linear(2, 2)), [np.array([[np.nan, 1.]], np.float32)])
    q = quantize_model(Sequential(Linear(2, 2)), [np.ones((2, 2), np.float32)])
    with pytest.raises(ValueError, match="QuantizedLinear: input quantized with scale="):
        q[1](quantize_per_tensor(np.ones((1, 2)), 0.5, 0))


def test_constant_input_and_observers_run():
    model, rng = small_cnn()
    X = rng.uniform(0, 1, (16, 1, 8, 8)).astype(np.float32)
    for obs in (MinMaxObserver, PercentileObserver, MSEObserver):
        out = quantize_model(model, [X], observer=obs)(Tensor(X)).data
        assert np.isfinite(out).all()
    zero = quantize_model(Sequential(Linear(3, 2)), [np.zeros((4, 3), np.float32)])   # min = max = 0
    assert np.isfinite(zero(Tensor(np.zeros((1, 3), np.float32))).data).all()
