# %%
#| default_exp optimization.quantization

# %% [markdown]
# # Quantization
#
# > Integer inference: affine int8 quantization, integer matrix kernels with int32 accumulation, requantization in fixed point, post-training static and dynamic quantization, 4-bit weights and quantization-aware training.

# %% [markdown]
# A trained network stores every weight as a 32-bit float, yet its accuracy survives when each weight is rounded
# to one of 256 levels. Quantization exploits this: weights and activations become 8-bit integers, the matrix
# products run on integers with 32-bit accumulators, and only a per-layer rescaling touches real numbers. The
# model is four times smaller, and on hardware with integer vector units (x86 VNNI, ARM dot-product
# instructions, mobile NPUs) it is faster, because four times more operands fit through the same memory bus.
#
# This module builds the scheme of Jacob et al. (2018), the one in gemmlowp, TensorFlow Lite and PyTorch's fbgemm
# backend, and does the real thing: the int8 tensors are `np.int8` (one byte per element), the kernels add
# integer products, and every size, accuracy and time in the text is printed by a cell.
#
# - the arithmetic: $r = S\,(q - Z)$, `choose_qparams`, `QuantizedTensor`, `quantize_per_tensor`,
#   `quantize_per_channel`;
# - integer kernels: `QuantizedLinear` and `QuantizedConv2d` with int32 accumulation, requantization in float
#   and in fixed point as hardware does it, BatchNorm folded and ReLU fused;
# - workflows: observers and calibration, `quantize_model` (static post-training quantization),
#   `quantize_dynamic` (for the `GPT` of the transformers module), 4-bit weights, and `FakeQuantize` with
#   `prepare_qat` (quantization-aware training).
#
# Every exercise sits between `### BEGIN SOLUTION` and `### END SOLUTION`; the cells under it test it at once.

# %%
#| export
import copy
import math

import numpy as np
from fastcore.basics import patch

from tinytorch.core.tensor import Tensor
from tinytorch.core.autograd import grad_rule, no_grad
from tinytorch.core.activations import ReLU
from tinytorch.core.layers import Module, Linear, Sequential, Parameter
from tinytorch.core.normalization import BatchNorm1d, BatchNorm2d, Dropout
from tinytorch.core.spatial import Conv2d, MaxPool2d, Flatten, im2col, conv_output_size, max_pool2d

# %%
#| hide
import time

from fastcore.test import test_eq, test_fail, test_close

from tinytorch.core.tensor import manual_seed
from tinytorch.utils.timing import compare, blas_threads, fmt_seconds

# %% [markdown]
# ## Affine quantization
#
# An integer $q$ stands for the real number
#
# $$r = S\,(q - Z),$$
#
# with a positive **scale** $S$ (the step between neighbouring levels) and an integer **zero point** $Z$ (the
# integer that stands for $0.0$). To cover a range $[r_{min}, r_{max}]$ with the integers
# $[q_{min}, q_{max}]$, take $S = (r_{max} - r_{min}) / (q_{max} - q_{min})$ and
# $Z = q_{min} - \mathrm{round}(r_{min} / S)$. The range is first widened to contain 0, so that $0.0$ is exactly
# the integer $Z$: zero padding and ReLU's zeros must come out exactly zero.
#
# Two flavours are used:
#
# - **asymmetric** int8, $[-128, 127]$, for activations: after a ReLU everything is $\ge 0$, and an asymmetric
#   range spends all 256 levels on it;
# - **symmetric** int8, $[-127, 127]$ with $Z = 0$, for weights: $S = \max|r| / 127$. Dropping $-128$ keeps the
#   range symmetric, and $Z = 0$ makes the kernel cheaper (no correction term for the weight's zero point).
#
# A constant tensor ($r_{min} = r_{max} = c$) gets $S = |c|$ and $Z = 0$ (or 1 for `uint8`), so that $c$ is the
# integer $\pm 1$ and comes back exactly. Scales are stored as float32, as TensorFlow Lite stores them.

# %%
#| export
def dtype_range(dtype, symmetric: bool = False) -> tuple:
    "The integers `(qmin, qmax)` of `dtype` (int8 or uint8); symmetric int8 leaves out -128."
    dtype = np.dtype(dtype)
    if dtype not in (np.dtype(np.int8), np.dtype(np.uint8)):
        raise TypeError(f"dtype_range: only int8 and uint8 are supported, got {dtype}")
    info = np.iinfo(dtype)
    if symmetric and dtype == np.int8: return -127, 127
    if symmetric: raise ValueError(f"dtype_range: symmetric quantization needs a signed dtype, got {dtype}")
    return int(info.min), int(info.max)

# %%
test_eq(dtype_range(np.int8), (-128, 127))
test_eq(dtype_range(np.int8, symmetric=True), (-127, 127))
test_eq(dtype_range(np.uint8), (0, 255))
test_fail(lambda: dtype_range(np.int16), contains="int16")

# %% [markdown]
# `choose_qparams` works on arrays of minima and maxima too, one per channel, so the per-channel case below is
# the same code. `qmin`/`qmax` override the dtype's range: 4-bit weights use $[-7, 7]$ stored in int8.

# %%
#| export
def _check_range(op: str, min_val, max_val) -> tuple:
    "`min_val`, `max_val` as float64 arrays, checked finite and ordered."
    lo, hi = np.asarray(min_val, np.float64), np.asarray(max_val, np.float64)
    if not (np.isfinite(lo).all() and np.isfinite(hi).all()):
        raise ValueError(f"{op}: min and max must be finite, got min={min_val}, max={max_val}")
    if (lo > hi).any(): raise ValueError(f"{op}: min must not exceed max, got min={min_val}, max={max_val}")
    return lo, hi

def choose_qparams(min_val,                # smallest real value to cover: a float or an array (one per channel)
                   max_val,                # largest real value to cover, same shape
                   dtype=np.int8,          # int8 or uint8
                   symmetric: bool = False, # zero point 0 and range [-127, 127]?
                   qmin: int | None = None, # override the smallest integer (e.g. -7 for 4-bit weights)
                   qmax: int | None = None, # override the largest integer
                  ) -> tuple:
    "`(scale, zero_point)` mapping [min_val, max_val] (widened to hold 0) onto the integers: float32 and int64."
    lo, hi = _check_range('choose_qparams', min_val, max_val)
    dmin, dmax = dtype_range(dtype, symmetric)
    qmin, qmax = dmin if qmin is None else qmin, dmax if qmax is None else qmax
    if not dmin <= qmin < qmax <= dmax:
        raise ValueError(f"choose_qparams: need {dmin} <= qmin < qmax <= {dmax}, got {qmin=}, {qmax=}")
    ### BEGIN SOLUTION
    const = lo == hi                                       # a constant: S = |c|, so c is the integer +-1
    lo, hi = np.minimum(lo, 0.), np.maximum(hi, 0.)        # the range must hold 0
    if symmetric:
        scale = np.maximum(-lo, hi) / ((qmax - qmin) / 2)
        zp = np.zeros(scale.shape, np.int64)
    else:
        scale = (hi - lo) / (qmax - qmin)
        safe = np.where(scale > 0, scale, 1.)
        zp = np.clip(qmin - np.rint(lo / safe), qmin, qmax).astype(np.int64)
    scale = np.where(const, np.abs(np.where(const, min_val, 1.)), scale)
    zp = np.where(const, np.clip(0, qmin + 1, qmax - 1), zp)
    scale = np.where(scale > 0, scale, 1.).astype(np.float32)  # all zeros: any scale works, take 1
    ### END SOLUTION
    return (scale[()], zp[()]) if scale.ndim == 0 else (scale, zp)

# %% [markdown]
# A worked example: the range $[-1, 2]$ in int8 has $S = 3/255$ and $Z = -128 - \mathrm{round}(-85) = -43$.

# %%
s, z = choose_qparams(-1., 2.)
test_close(s, 3 / 255, eps=1e-8)
test_eq(z, -43)
s, z = choose_qparams(-0.5, 2., symmetric=True)                 # weights: max |r| / 127
test_close(s, 2 / 127, eps=1e-8); test_eq(z, 0)
s, z = choose_qparams(0.5, 2.)                                  # widened to [0, 2]: 0 is the integer -128
test_eq(z, -128)
test_eq(choose_qparams(3.25, 3.25), (np.float32(3.25), 0))      # a constant
test_eq(choose_qparams(0., 0.), (np.float32(1.), 0))
s, z = choose_qparams(np.array([-1., 0.]), np.array([1., 4.]), symmetric=True)   # one pair per channel
test_close(s, [1 / 127, 4 / 127], eps=1e-8)
test_fail(lambda: choose_qparams(1., 0.), contains="min must not exceed max")
test_fail(lambda: choose_qparams(np.nan, 1.), contains="finite")

# %% [markdown]
# ## A quantized tensor
#
# `QuantizedTensor` holds the integers in a real `np.int8` array (`int_repr()` returns it), with its scale and
# zero point: one of each (*per tensor*), or one per slice along `axis` (*per channel*). Its `dequantize()` gives
# $S\,(q - Z)$ back as float32. Names follow PyTorch (`torch.quantize_per_tensor`, `q_scale`,
# `q_per_channel_scales`, `int_repr`); `nbytes` counts the integers, the scales and the zero points.

# %%
#| export
class QuantizedTensor:
    "Integers `q` (int8 or uint8) that stand for the reals `scale * (q - zero_point)`, per tensor or per channel."
    def __init__(self,
                 data: np.ndarray,  # the integers, int8 or uint8
                 scale,             # a positive float, or float32 array (C,) for per-channel
                 zero_point,        # an int, or an int array (C,)
                 axis: int | None = None,  # the channel axis of a per-channel tensor, None per tensor
                ):
        data = np.asarray(data)
        dtype_range(data.dtype)                                  # int8 or uint8 only
        scale, zero_point = _check_qparams('QuantizedTensor', scale, zero_point, data.dtype, axis, data.shape)
        self._data, self.scale, self.zero_point, self.axis = data, scale, zero_point, axis

    shape = property(lambda self: self._data.shape)
    ndim = property(lambda self: self._data.ndim)
    dtype = property(lambda self: self._data.dtype)
    per_channel = property(lambda self: self.axis is not None)
    def int_repr(self) -> np.ndarray: return self._data
    def q_scale(self) -> float: return float(self.scale)
    def q_zero_point(self) -> int: return int(self.zero_point)
    def q_per_channel_scales(self) -> np.ndarray: return self.scale
    def q_per_channel_zero_points(self) -> np.ndarray: return self.zero_point
    def q_per_channel_axis(self) -> int: return self.axis

    @property
    def nbytes(self) -> int:
        "Bytes of the integers plus the scales (float32) and zero points (one byte each)."
        return self._data.nbytes + 5 * np.size(self.scale)

    def __repr__(self) -> str:
        kind = f"per channel, axis={self.axis}" if self.per_channel else f"scale={self.q_scale():.6g}, " \
               f"zero_point={self.q_zero_point()}"
        return f"QuantizedTensor(shape={self.shape}, dtype={self.dtype}, {kind})"

# %% [markdown]
# The checks live in one helper, so that every operation reports a bad scale or zero point the same way: the op's
# name and the value.

# %%
#| export
def _check_qparams(op: str, scale, zero_point, dtype, axis=None, shape=None) -> tuple:
    "Checked `(scale float32, zero_point int64)`: scales positive and finite, zero points integers within `dtype`."
    qmin, qmax = dtype_range(dtype)
    s, z = np.asarray(scale, np.float64), np.asarray(zero_point)
    if not (np.isfinite(s).all() and (s > 0).all()):
        raise ValueError(f"{op}: scale must be positive and finite, got {scale}")
    if z.dtype.kind not in 'iu' and not (z.dtype.kind == 'f' and (z == np.round(z)).all()):
        raise ValueError(f"{op}: zero_point must be an integer, got {zero_point}")
    if ((z < qmin) | (z > qmax)).any():
        raise ValueError(f"{op}: zero_point must lie in [{qmin}, {qmax}] for {np.dtype(dtype)}, got {zero_point}")
    if axis is None and (s.ndim or z.ndim):
        raise ValueError(f"{op}: a per-tensor scale and zero point must be scalars, got shapes {s.shape}, {z.shape}")
    if axis is not None:
        if shape is not None and not -len(shape) <= axis < len(shape):
            raise ValueError(f"{op}: axis {axis} out of range for shape {shape}")
        C = shape[axis] if shape is not None else s.size
        if s.shape != (C,) or z.shape != (C,):
            raise ValueError(f"{op}: need one scale and zero point per channel ({C}) along axis {axis}, "
                             f"got shapes {s.shape}, {z.shape}")
    return s.astype(np.float32)[()], z.astype(np.int64)[()]

def _check_finite(op: str, x: np.ndarray):
    "Raise unless every element of `x` is finite, naming the op and the first bad value."
    if not np.isfinite(x).all():
        bad = x[~np.isfinite(x)].flat[0]
        raise ValueError(f"{op}: input must be finite, found {bad} ({int((~np.isfinite(x)).sum())} such elements)")

def _array(x) -> np.ndarray:
    "The ndarray of a Tensor or array-like, as float32 unless it already is a float array."
    a = x.data if isinstance(x, Tensor) else np.asarray(x)
    return a if a.dtype.kind == 'f' else a.astype(np.float32)

# %%
test_fail(lambda: QuantizedTensor(np.zeros(3, np.int8), 0., 0), contains="scale must be positive and finite, got 0.0")
test_fail(lambda: QuantizedTensor(np.zeros(3, np.int8), np.inf, 0), contains="got inf")
test_fail(lambda: QuantizedTensor(np.zeros(3, np.int8), 1., 200), contains="[-128, 127]")
test_fail(lambda: QuantizedTensor(np.zeros(3, np.float32), 1., 0), contains="float32")
test_fail(lambda: QuantizedTensor(np.zeros((2, 3), np.int8), np.ones(3), np.zeros(3), axis=0), contains="(2)")

# %% [markdown]
# ## Quantize and dequantize
#
# $q = \mathrm{clamp}(\mathrm{round}(r / S) + Z,\ q_{min},\ q_{max})$, rounding half to even (`np.rint`, as
# PyTorch and IEEE arithmetic do) and saturating at the ends: a value beyond the range becomes the nearest end,
# never a wrapped-around integer. Dequantizing inverts it up to the rounding error, at most $S/2$ inside the range.

# %%
#| export
def quantize_per_tensor(x,                 # a float Tensor or array
                        scale: float,      # S > 0
                        zero_point: int,   # Z within the dtype's range
                        dtype=np.int8,     # int8 or uint8
                       ) -> QuantizedTensor:
    "`clamp(rint(x / scale) + zero_point)` as a `QuantizedTensor` of `dtype`, one scale for the whole tensor."
    scale, zero_point = _check_qparams('quantize_per_tensor', scale, zero_point, dtype)
    x = _array(x)
    _check_finite('quantize_per_tensor', x)
    qmin, qmax = dtype_range(dtype)
    ### BEGIN SOLUTION
    q = np.rint(x / scale)                                 # float; round half to even
    q += zero_point
    np.clip(q, qmin, qmax, out=q)                          # saturate
    return QuantizedTensor(q.astype(dtype), scale, zero_point)
    ### END SOLUTION

# %%
x = np.array([-1., 0., 0.5, 1.5, 2.5, 1000.], np.float32)
q = quantize_per_tensor(x, 1., 0)
test_eq(q.int_repr().dtype, np.int8)
test_eq(q.int_repr(), [-1, 0, 0, 2, 2, 127])            # half to even: 0.5 -> 0, 1.5 -> 2, 2.5 -> 2; saturates
test_eq(quantize_per_tensor(x, 0.5, 10, np.uint8).int_repr(), [8, 10, 11, 13, 15, 255])
test_fail(lambda: quantize_per_tensor(x, 0.5, -128, np.uint8), contains="zero_point must lie in [0, 255]")
test_fail(lambda: quantize_per_tensor(np.array([1., np.nan]), 0.1, 0), contains="quantize_per_tensor: input must be finite")
test_fail(lambda: quantize_per_tensor(x, -1., 0), contains="quantize_per_tensor: scale must be positive")

# %% [markdown]
# Dequantization applies $r = S\,(q - Z)$, broadcasting per-channel parameters along the channel axis:

# %%
#| export
@patch
def dequantize(self: QuantizedTensor) -> np.ndarray:
    "The reals `scale * (q - zero_point)` as float32, broadcasting per-channel parameters along `axis`."
    ### BEGIN SOLUTION
    s, z = self.scale, self.zero_point
    if self.per_channel:
        shape = [1] * self.ndim
        shape[self.axis] = -1
        s, z = s.reshape(shape), z.reshape(shape)
    return ((self._data.astype(np.float64) - z) * s).astype(np.float32)   # float64 inside: exact for small ints
    ### END SOLUTION

# %%
rng = np.random.default_rng(0)
x = rng.standard_normal(1000).astype(np.float32)
s, z = choose_qparams(x.min(), x.max())
q = quantize_per_tensor(x, s, z)
test_close(q.dequantize(), x, eps=s / 2 * (1 + 1e-6))   # rounding error <= S/2 inside the range
test_eq(quantize_per_tensor(np.zeros(3), s, z).dequantize(), np.zeros(3))   # 0.0 is exactly representable
c = np.full(5, -0.3, np.float32)                                             # a constant tensor comes back exactly
test_eq(quantize_per_tensor(c, *choose_qparams(c.min(), c.max())).dequantize(), c)
print(f"{x.size} normal samples, S = {s:.5f}, Z = {z}: largest error {np.abs(q.dequantize() - x).max():.5f} "
      f"<= S/2 = {s / 2:.5f}; {x.nbytes} bytes as float32, {q.int_repr().nbytes} as int8")

# %% [markdown]
# ## Per-channel quantization
#
# One scale for a whole weight matrix is set by its largest element. If one output channel has weights ten
# times larger than another, the small channel is left with a handful of levels. Per-channel quantization gives
# each output channel (axis 0 of a `Linear` or `Conv2d` weight) its own scale; the kernel applies it after the
# sum, where it costs one multiply per output.

# %%
#| export
def quantize_per_channel(x,               # a float Tensor or array
                         scales,          # (C,) positive scales, C = x.shape[axis]
                         zero_points,     # (C,) integer zero points
                         axis: int,       # the channel axis
                         dtype=np.int8,   # int8 or uint8
                        ) -> QuantizedTensor:
    "Quantize each slice `x[..., c, ...]` along `axis` with its own `scales[c]`, `zero_points[c]`."
    x = _array(x)
    _check_finite('quantize_per_channel', x)
    scales, zero_points = _check_qparams('quantize_per_channel', scales, zero_points, dtype, axis, x.shape)
    qmin, qmax = dtype_range(dtype)
    ### BEGIN SOLUTION
    shape = [1] * x.ndim
    shape[axis] = -1
    q = np.rint(x / scales.reshape(shape)) + zero_points.reshape(shape)
    np.clip(q, qmin, qmax, out=q)
    return QuantizedTensor(q.astype(dtype), scales, zero_points, axis=axis % x.ndim)
    ### END SOLUTION

# %% [markdown]
# A weight with one channel 10 times larger than the others: per tensor, the small channels lose most of their
# precision; per channel they keep it.

# %%
w = rng.standard_normal((4, 64)).astype(np.float32) * np.array([[10.], [1.], [1.], [1.]], np.float32)
s_t, _ = choose_qparams(w.min(), w.max(), symmetric=True)
s_c, z_c = choose_qparams(w.min(axis=1), w.max(axis=1), symmetric=True)
qt, qc = quantize_per_tensor(w, s_t, 0), quantize_per_channel(w, s_c, z_c, axis=0)
test_eq(qc.int_repr().min() >= -127, True)
test_close(qc.dequantize(), w, eps=float(s_c.max()) / 2 * (1 + 1e-6))
test_fail(lambda: quantize_per_channel(w, s_c[:3], z_c[:3], axis=0), contains="one scale and zero point per channel (4)")
err_t, err_c = [np.abs(q.dequantize() - w)[1:].mean() for q in (qt, qc)]
print(f"mean error on the three small channels: per tensor {err_t:.4f}, per channel {err_c:.4f} "
      f"({err_t / err_c:.1f}x smaller); bytes: per tensor {qt.nbytes}, per channel {qc.nbytes} (float32: {w.nbytes})")
