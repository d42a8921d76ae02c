# %%
#| default_exp optimization.quantization

# %% [markdown]
# # Quantization
#
# > Integer inference: int8 kernels with int32 sums, fixed-point requantization, PTQ, 4-bit, QAT.

# %% [markdown]
# A trained network stores every weight as a 32-bit float, yet its accuracy survives when each
# weight is rounded to one of 256 levels. Quantization exploits this: weights and activations become
# 8-bit integers, the matrix products run on integers with 32-bit accumulators, and only a per-layer
# rescaling touches real numbers. The model is four times smaller, and on hardware with integer
# vector units (x86 VNNI, ARM dot-product instructions, mobile NPUs) it is faster, because four
# times more operands fit through the same memory bus.
#
# This module builds the scheme of Jacob et al. (2018), the one in gemmlowp, TensorFlow Lite and
# PyTorch's fbgemm backend, and does the real thing: the int8 tensors are `np.int8` (one byte per
# element), the kernels add integer products, and every size, accuracy and time in the text is
# printed by a cell.
#
# - the arithmetic: $r = S\,(q - Z)$, `choose_qparams`, `QuantizedTensor`, `quantize_per_tensor`,
#   `quantize_per_channel`;
# - integer kernels: `QuantizedLinear` and `QuantizedConv2d` with int32 accumulation, requantization
#   in float and in fixed point as hardware does it, BatchNorm folded and ReLU fused;
# - workflows: observers and calibration, `quantize_model` (static post-training quantization),
#   `quantize_dynamic` (for the `GPT` of the transformers module), 4-bit weights, and `FakeQuantize`
#   with `prepare_qat` (quantization-aware training).
#
# Every exercise sits between `### BEGIN SOLUTION` and `### END SOLUTION`; the cells under it test
# it at once. The notebook runs with one BLAS thread, as the benchmarks and milestones do: its
# matrices are small, and on a machine shared with other work, idle BLAS threads that spin cost
# more than a second thread gains.

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
from tinytorch.core.spatial import (Conv2d, MaxPool2d, Flatten, conv2d, im2col, conv_output_size,
                                    max_pool2d)

# %%
#| hide
import os
import tempfile
import zipfile
from pathlib import Path

import matplotlib.pyplot as plt
from fastcore.test import test_eq, test_fail, test_close
from threadpoolctl import threadpool_limits

from tinytorch.core.tensor import manual_seed
from tinytorch.core.training import Batches, Trainer, save_checkpoint, load_checkpoint
from tinytorch.core.losses import CrossEntropyLoss
from tinytorch.core.optimizers import Adam, AdamW
from tinytorch.data.loader import load_digits
from tinytorch.models.transformer import GPT
from tinytorch.text.tokenization import CharTokenizer, load_shakespeare
from tinytorch.utils.timing import Timer, compare, blas_threads, fmt_seconds

# %%
#| hide
blas_limit = threadpool_limits(1, 'blas')   # one BLAS thread throughout: see the note above

# %% [markdown]
# ## Affine quantization
#
# An integer $q$ stands for the real number
#
# $$r = S\,(q - Z),$$
#
# with a positive **scale** $S$ (the step between neighbouring levels) and an integer **zero point**
# $Z$ (the integer that stands for $0.0$). To cover a range $[r_{min}, r_{max}]$ with the integers
# $[q_{min}, q_{max}]$, take $S = (r_{max} - r_{min}) / (q_{max} - q_{min})$ and $Z = q_{min} -
# \mathrm{round}(r_{min} / S)$. The range is first widened to contain 0, so that $0.0$ is exactly
# the integer $Z$: zero padding and ReLU's zeros must come out exactly zero.
#
# Two flavours are used:
#
# - **asymmetric** int8, $[-128, 127]$, for activations: after a ReLU everything is $\ge 0$, and an
#   asymmetric range spends all 256 levels on it;
# - **symmetric** int8, $[-127, 127]$ with $Z = 0$, for weights: $S = \max|r| / 127$. Dropping
#   $-128$ keeps the range symmetric, and $Z = 0$ makes the kernel cheaper (no correction term for
#   the weight's zero point).
#
# A constant tensor ($r_{min} = r_{max} = c$) gets $S = |c|$ and $Z = 0$ (or 1 for `uint8`), so that
# $c$ is the integer $\pm 1$ and comes back exactly. Scales are stored as float32, as TensorFlow
# Lite stores them.

# %%
#| export
def dtype_range(dtype, symmetric: bool = False) -> tuple:
    "The integers `(qmin, qmax)` of `dtype` (int8 or uint8); symmetric int8 leaves out -128."
    dtype = np.dtype(dtype)
    if dtype not in (np.dtype(np.int8), np.dtype(np.uint8)):
        raise TypeError(f"dtype_range: only int8 and uint8 are supported, got {dtype}")
    info = np.iinfo(dtype)
    if symmetric and dtype == np.int8: return -127, 127
    if symmetric: raise ValueError("dtype_range: symmetric quantization needs a signed dtype, got "
                                   f"{dtype}")
    return int(info.min), int(info.max)

# %%
test_eq(dtype_range(np.int8), (-128, 127))
test_eq(dtype_range(np.int8, symmetric=True), (-127, 127))
test_eq(dtype_range(np.uint8), (0, 255))
test_fail(lambda: dtype_range(np.int16), contains="int16")

# %% [markdown]
# `choose_qparams` works on arrays of minima and maxima too, one per channel, so the per-channel
# case below is the same code. `qmin`/`qmax` override the dtype's range: 4-bit weights use $[-7, 7]$
# stored in int8.

# %%
#| export
def _check_range(op: str, min_val, max_val) -> tuple:
    "`min_val`, `max_val` as float64 arrays, checked finite and ordered."
    lo, hi = np.asarray(min_val, np.float64), np.asarray(max_val, np.float64)
    if not (np.isfinite(lo).all() and np.isfinite(hi).all()):
        raise ValueError(f"{op}: min and max must be finite, got min={min_val}, max={max_val}")
    if (lo > hi).any(): raise ValueError(f"{op}: min must not exceed max, got min={min_val}, "
                                         f"max={max_val}")
    return lo, hi

def choose_qparams(min_val,                # smallest real to cover: a float, or one per channel
                   max_val,                # largest real value to cover, same shape
                   dtype=np.int8,          # int8 or uint8
                   symmetric: bool = False, # zero point 0 and range [-127, 127]?
                   qmin: int | None = None, # override the smallest integer (-7 for 4-bit weights)
                   qmax: int | None = None, # override the largest integer
                  ) -> tuple:
    "`(scale, zero_point)` mapping [min_val, max_val], widened to hold 0, onto the integers."
    lo, hi = _check_range('choose_qparams', min_val, max_val)
    dmin, dmax = dtype_range(dtype, symmetric)
    qmin, qmax = dmin if qmin is None else qmin, dmax if qmax is None else qmax
    if not dmin <= qmin < qmax <= dmax:
        raise ValueError(f"choose_qparams: need {dmin} <= qmin < qmax <= {dmax}, got {qmin=}, "
                         f"{qmax=}")
    ### BEGIN SOLUTION
    # a constant: S = |c|, so c is the integer +-1
    const = lo == hi
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
# A worked example: the range $[-1, 2]$ in int8 has $S = 3/255$ and $Z = -128 - \mathrm{round}(-85)
# = -43$.

# %%
s, z = choose_qparams(-1., 2.)
test_close(s, 3 / 255, eps=1e-8)
test_eq(z, -43)
s, z = choose_qparams(-0.5, 2., symmetric=True)                 # weights: max |r| / 127
test_close(s, 2 / 127, eps=1e-8); test_eq(z, 0)
# widened to [0, 2]: 0 is the integer -128
s, z = choose_qparams(0.5, 2.)
test_eq(z, -128)
test_eq(choose_qparams(3.25, 3.25), (np.float32(3.25), 0))      # a constant
test_eq(choose_qparams(0., 0.), (np.float32(1.), 0))
# one pair per channel
s, z = choose_qparams(np.array([-1., 0.]), np.array([1., 4.]), symmetric=True)
test_close(s, [1 / 127, 4 / 127], eps=1e-8)
test_fail(lambda: choose_qparams(1., 0.), contains="min must not exceed max")
test_fail(lambda: choose_qparams(np.nan, 1.), contains="finite")

# %% [markdown]
# ## A quantized tensor
#
# `QuantizedTensor` holds the integers in a real `np.int8` array (`int_repr()` returns it), with its
# scale and zero point: one of each (*per tensor*), or one per slice along `axis` (*per channel*).
# Its `dequantize()` gives $S\,(q - Z)$ back as float32. Names follow PyTorch
# (`torch.quantize_per_tensor`, `q_scale`, `q_per_channel_scales`, `int_repr`); `nbytes` counts the
# integers, the scales and the zero points.

# %%
#| export
class QuantizedTensor:
    "Integers `q` (int8 or uint8) standing for the reals `scale * (q - zero_point)`."
    def __init__(self,
                 data: np.ndarray,  # the integers, int8 or uint8
                 scale,             # a positive float, or float32 array (C,) for per-channel
                 zero_point,        # an int, or an int array (C,)
                 axis: int | None = None,  # the channel axis if per channel, None per tensor
                ):
        data = np.asarray(data)
        dtype_range(data.dtype)                                  # int8 or uint8 only
        scale, zero_point = _check_qparams('QuantizedTensor', scale, zero_point, data.dtype, axis,
                                           data.shape)
        self._data, self.scale, self.axis = data, scale, axis
        self.zero_point = zero_point.astype(data.dtype)[()]   # stored in the integers' own dtype

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
        "Bytes of the integers, the scales (float32) and the zero points (in the integers' dtype)."
        return sum(np.asarray(a).nbytes for a in (self._data, self.scale, self.zero_point))

    def __repr__(self) -> str:
        kind = f"per channel, axis={self.axis}" if self.per_channel else \
            f"scale={self.q_scale():.6g}, " \
               f"zero_point={self.q_zero_point()}"
        return f"QuantizedTensor(shape={self.shape}, dtype={self.dtype}, {kind})"

# %% [markdown]
# The checks live in one helper, so that every operation reports a bad scale or zero point the same
# way: the op's name and the value.

# %%
#| export
def _check_qparams(op: str, scale, zero_point, dtype, axis=None, shape=None) -> tuple:
    "Checked `(scale float32, zero_point int64)`: scales positive and finite, zero points in range."
    qmin, qmax = dtype_range(dtype)
    s, z = np.asarray(scale, np.float64), np.asarray(zero_point)
    if not (np.isfinite(s).all() and (s > 0).all()):
        raise ValueError(f"{op}: scale must be positive and finite, got {scale}")
    if z.dtype.kind not in 'iu' and not (z.dtype.kind == 'f' and (z == np.round(z)).all()):
        raise ValueError(f"{op}: zero_point must be an integer, got {zero_point}")
    if ((z < qmin) | (z > qmax)).any():
        raise ValueError(f"{op}: zero_point must lie in [{qmin}, {qmax}] for {np.dtype(dtype)}, "
                         f"got {zero_point}")
    if axis is None and (s.ndim or z.ndim):
        raise ValueError(f"{op}: a per-tensor scale and zero point must be scalars, got shapes "
                         f"{s.shape}, {z.shape}")
    if axis is not None:
        if shape is not None and not -len(shape) <= axis < len(shape):
            raise ValueError(f"{op}: axis {axis} out of range for shape {shape}")
        C = shape[axis] if shape is not None else s.size
        if s.shape != (C,) or z.shape != (C,):
            raise ValueError(f"{op}: need one scale and zero point per channel ({C}) along axis "
                             f"{axis}, "
                             f"got shapes {s.shape}, {z.shape}")
    return s.astype(np.float32)[()], z.astype(np.int64)[()]

def _check_finite(op: str, x: np.ndarray):
    "Raise unless every element of `x` is finite, naming the op and the first bad value."
    if not np.isfinite(x).all():
        bad = x[~np.isfinite(x)].flat[0]
        raise ValueError(f"{op}: input must be finite, found {bad} ({int((~np.isfinite(x)).sum())} "
                         "such elements)")

def _array(x) -> np.ndarray:
    "The ndarray of a Tensor or array-like, as float32 unless it already is a float array."
    a = x.data if isinstance(x, Tensor) else np.asarray(x)
    return a if a.dtype.kind == 'f' else a.astype(np.float32)

# %%
test_fail(lambda: QuantizedTensor(np.zeros(3, np.int8), 0., 0), contains="scale must be positive "
                                                                         "and finite, got 0.0")
test_fail(lambda: QuantizedTensor(np.zeros(3, np.int8), np.inf, 0), contains="got inf")
test_fail(lambda: QuantizedTensor(np.zeros(3, np.int8), 1., 200), contains="[-128, 127]")
test_fail(lambda: QuantizedTensor(np.zeros(3, np.float32), 1., 0), contains="float32")
test_fail(lambda: QuantizedTensor(np.zeros((2, 3), np.int8), np.ones(3), np.zeros(3), axis=0),
          contains="(2)")

# %% [markdown]
# ## Quantize and dequantize
#
# $q = \mathrm{clamp}(\mathrm{round}(r / S) + Z,\ q_{min},\ q_{max})$, rounding half to even
# (`np.rint`, as PyTorch and IEEE arithmetic do) and saturating at the ends: a value beyond the
# range becomes the nearest end, never a wrapped-around integer. Dequantizing inverts it up to the
# rounding error, at most $S/2$ inside the range.

# %%
#| export
def quantize_per_tensor(x,                 # a float Tensor or array
                        scale: float,      # S > 0
                        zero_point: int,   # Z within the dtype's range
                        dtype=np.int8,     # int8 or uint8
                       ) -> QuantizedTensor:
    "`clamp(rint(x / scale) + zero_point)` as a `QuantizedTensor` of `dtype`, one scale in all."
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
# half to even: 0.5 -> 0, 1.5 -> 2, 2.5 -> 2; saturates
test_eq(q.int_repr(), [-1, 0, 0, 2, 2, 127])
test_eq(quantize_per_tensor(x, 0.5, 10, np.uint8).int_repr(), [8, 10, 11, 13, 15, 255])
test_fail(lambda: quantize_per_tensor(x, 0.5, -128, np.uint8), contains="zero_point must lie in "
                                                                        "[0, 255]")
test_fail(lambda: quantize_per_tensor(np.array([1., np.nan]), 0.1, 0),
          contains="quantize_per_tensor: input must be finite")
test_fail(lambda: quantize_per_tensor(x, -1., 0), contains="quantize_per_tensor: scale must be "
                                                           "positive")

# %% [markdown]
# Dequantization applies $r = S\,(q - Z)$, broadcasting per-channel parameters along the channel
# axis:

# %%
#| export
@patch
def dequantize(self: QuantizedTensor) -> np.ndarray:
    "The reals `scale * (q - zero_point)` as float32, per-channel parameters along `axis`."
    s, z = self.scale, self.zero_point
    if self.per_channel:
        shape = [1] * self.ndim
        shape[self.axis] = -1
        s, z = s.reshape(shape), z.reshape(shape)
    # float64 inside: exact for small ints
    return ((self._data.astype(np.float64) - z) * s).astype(np.float32)

# %%
rng = np.random.default_rng(0)
x = rng.standard_normal(1000).astype(np.float32)
s, z = choose_qparams(x.min(), x.max())
q = quantize_per_tensor(x, s, z)
test_close(q.dequantize(), x, eps=s / 2 * (1 + 1e-6))   # rounding error <= S/2 inside the range
# 0.0 is exactly representable
test_eq(quantize_per_tensor(np.zeros(3), s, z).dequantize(), np.zeros(3))
# a constant tensor comes back exactly
c = np.full(5, -0.3, np.float32)
test_eq(quantize_per_tensor(c, *choose_qparams(c.min(), c.max())).dequantize(), c)
print(f"{x.size} normal samples, S = {s:.5f}, Z = {z}: largest error "
      f"{np.abs(q.dequantize() - x).max():.5f} "
      f"<= S/2 = {s / 2:.5f}; {x.nbytes} bytes as float32, {q.int_repr().nbytes} as int8")

# %% [markdown]
# ## Per-channel quantization
#
# One scale for a whole weight matrix is set by its largest element. If one output channel has
# weights ten times larger than another, the small channel is left with a handful of levels.
# Per-channel quantization gives each output channel (axis 0 of a `Linear` or `Conv2d` weight) its
# own scale; the kernel applies it after the sum, where it costs one multiply per output.

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
    scales, zero_points = _check_qparams('quantize_per_channel', scales, zero_points, dtype, axis,
                                         x.shape)
    qmin, qmax = dtype_range(dtype)
    ### BEGIN SOLUTION
    shape = [1] * x.ndim
    shape[axis] = -1
    q = np.rint(x / scales.reshape(shape)) + zero_points.reshape(shape)
    np.clip(q, qmin, qmax, out=q)
    return QuantizedTensor(q.astype(dtype), scales, zero_points, axis=axis % x.ndim)
    ### END SOLUTION

# %% [markdown]
# A weight with one channel 10 times larger than the others: per tensor, the small channels lose
# most of their precision; per channel they keep it.

# %%
w = rng.standard_normal((4, 64)).astype(np.float32)
w[0] *= 10                                                   # one channel 10 times larger
s_t, _ = choose_qparams(w.min(), w.max(), symmetric=True)
s_c, z_c = choose_qparams(w.min(axis=1), w.max(axis=1), symmetric=True)
qt, qc = quantize_per_tensor(w, s_t, 0), quantize_per_channel(w, s_c, z_c, axis=0)
test_eq(qc.int_repr().min() >= -127, True)
test_close(qc.dequantize(), w, eps=float(s_c.max()) / 2 * (1 + 1e-6))
test_fail(lambda: quantize_per_channel(w, s_c[:3], z_c[:3], axis=0),
          contains="one scale and zero point per channel (4)")
err_t, err_c = [np.abs(q.dequantize() - w)[1:].mean() for q in (qt, qc)]
print(f"mean error on the three small channels: per tensor {err_t:.4f}, per channel {err_c:.4f} "
      f"({err_t / err_c:.1f}x smaller); bytes: per tensor {qt.nbytes}, per channel {qc.nbytes} "
      f"(float32: {w.nbytes})")

# %% [markdown]
# ## Integer matrix products
#
# A `Linear` layer computes $y_{no} = b_o + \sum_k x_{nk} W_{ok}$. Substitute $x = S_x (q_x - Z_x)$
# and $W_{o\cdot} = S_w[o]\, q_w$ (symmetric, $Z_w = 0$):
#
# $$y_{no} = S_x S_w[o] \Big(
# \underbrace{\textstyle\sum_k (q_{x,nk} - Z_x)\, q_{w,ok}}_{\text{int32 accumulator}}
# + \underbrace{b_o / (S_x S_w[o])}_{\text{int32 bias}} \Big).$$
#
# All the work is in the sum, and it is integer arithmetic: int8 operands (the difference $q_x -
# Z_x$ needs 9 bits, which is why gemmlowp stores activations as uint8 and why fbgemm widens to 16
# bits), products summed in int32. Quantizing the output is one multiply per element by $M = S_x
# S_w[o] / S_{out}$, a rounding, adding $Z_{out}$ and a clamp. A ReLU that follows is that clamp
# with the lower bound raised to $Z_{out}$.
#
# **NumPy has no int8 matrix product.** `np.matmul` on integer arrays runs NumPy's own loop instead
# of BLAS (timed below). But float32 represents every integer up to $2^{24}$ exactly, so a float32
# BLAS product of integer operands is exact while every partial sum stays below $2^{24}$, whatever
# order BLAS adds in. With $|q_x - Z_x| \le 255$ and $|q_w| \le 127$ each product is at most $255
# \cdot 127 = 32385$, so $K$ terms are safe while $K \cdot 32385 < 2^{24}$:

# %%
a8 = rng.integers(-128, 128, (256, 800)).astype(np.int8)
b8 = rng.integers(-127, 128, (800, 120)).astype(np.int8)
a32, b32 = a8.astype(np.float32), b8.astype(np.float32)
with blas_threads(1):
    c = compare({'int8 @ int8 (NumPy loop)': lambda: a8 @ b8,
                 'int32 @ int32': lambda: a8.astype(np.int32) @ b8,
                 'float32 @ float32 (BLAS)': lambda: a32 @ b32}, rounds=3)
print(c.table('float32 @ float32 (BLAS)'))

# %% [markdown]
# The int8 product is not even correct: NumPy accumulates in int8 and wraps around. The bound for
# exact float32 sums:

# %%
test_eq(np.array_equal(a8 @ b8, a8.astype(np.int64) @ b8), False)      # int8 accumulation overflows

# %%
#| export
# longest sum of (q_x - Z_x) * q_w that float32 adds exactly
ACC_K_MAX = (2**24 - 1) // (255 * 127)

# %%
print(f"K <= {ACC_K_MAX}: {ACC_K_MAX} * 255 * 127 = {ACC_K_MAX * 255 * 127:,} < 2^24 = {2**24:,} "
      f"< {(ACC_K_MAX + 1) * 255 * 127:,}")
test_eq(ACC_K_MAX, 518)

# %% [markdown]
# Longer sums are split into chunks of at most 518 terms; each chunk's exact result is converted to
# int32 and the int32 partials are added, which is what an int32 accumulator does. The operands are
# held as float32 only for BLAS: the layer stores int8 and widens a copy for each product.

# %%
#| export
def int32_matmul(a: np.ndarray,  # (M, K) integers with |a| <= 255, any dtype
                 b: np.ndarray,  # (K, N) integers with |b| <= 127, any dtype
                ) -> np.ndarray:
    "The exact integer product `a @ b` as int32 (M, N), by float32 BLAS on chunks of K."
    K = a.shape[1]
    if K > (2**31 - 1) // (255 * 127):                   # the int32 accumulator could overflow
        raise ValueError(f"int32_matmul: K={K} terms could overflow an int32 accumulator")
    ### BEGIN SOLUTION
    a, b = a.astype(np.float32, copy=False), b.astype(np.float32, copy=False)
    acc = (a[:, :ACC_K_MAX] @ b[:ACC_K_MAX]).astype(np.int32)            # (M, N), exact
    for k in range(ACC_K_MAX, K, ACC_K_MAX):
        acc += (a[:, k:k + ACC_K_MAX] @ b[k:k + ACC_K_MAX]).astype(np.int32)
    return acc
    ### END SOLUTION

# %% [markdown]
# The test uses operands near the ends of their ranges, where one float32 product over $K = 1000$
# terms has partial sums beyond $2^{24}$ and may round, while the chunked one is exact; then random
# operands, checked against NumPy's int64 product.

# %%
K = 1000
a, b = rng.integers(250, 256, (20, K)), rng.integers(120, 128, (K, 20))
exact, one = a @ b, (a.astype(np.float32) @ b.astype(np.float32)).astype(np.int64)
test_eq(int32_matmul(a, b), exact)
print(f"K = {K}, sums near {int(exact.mean()):,} > 2^24: one float32 product gets "
      f"{(one != exact).sum()} of "
      f"{exact.size} entries wrong (largest error {np.abs(one - exact).max()}); chunked: "
      f"{(int32_matmul(a, b) != exact).sum()} wrong")
a = rng.integers(-255, 256, (7, 1200)); b = rng.integers(-127, 128, (1200, 5))
test_eq(int32_matmul(a, b), a @ b)
test_eq(int32_matmul(a, b).dtype, np.int32)
test_fail(lambda: int32_matmul(np.zeros((1, 70_000)), np.zeros((70_000, 1))), contains="K=70000")

# %% [markdown]
# ## Requantization
#
# The int32 accumulator must become an int8 at the output's scale: $q_{out} = Z_{out} +
# \mathrm{round}(M \cdot acc)$ with $M = S_x S_w / S_{out}$, a real number, in practice in $(0, 1)$.
# In float it is one multiply. Hardware without floating point (and gemmlowp and TensorFlow Lite,
# for bit-exact results on every device) writes $M = 2^{-n} M_0$ with $M_0 \in [1/2, 1)$ held as a
# 31-bit fixed-point integer $m_0 = \mathrm{round}(2^{31} M_0)$, then computes
#
# - `SaturatingRoundingDoublingHighMul(acc, m0)`: the high 32 bits of the 64-bit product
#   $2\,acc\,m_0$, rounded, which is $acc \cdot M_0$ rounded;
# - `RoundingDivideByPOT(., n)`: a right shift by $n$ that rounds half away from zero.
#
# `quantize_multiplier` finds $(m_0, n)$; all the arithmetic is int64 NumPy, vectorised over the
# channels.

# %%
#| export
def quantize_multiplier(M) -> tuple:
    "`(m0, shift)` with `M = m0 * 2**(shift - 31)`, m0 in [2**30, 2**31): `QuantizeMultiplier`."
    M = np.asarray(M, np.float64)
    if not (np.isfinite(M).all() and (M > 0).all()):
        raise ValueError(f"quantize_multiplier: M must be positive and finite, got {M}")
    frac, shift = np.frexp(M)                                # M = frac * 2**shift, frac in [1/2, 1)
    m0 = np.rint(frac * 2.**31).astype(np.int64)
    # frac rounded up to 1: halve it, one more shift
    carry = m0 == 2**31
    return np.where(carry, 2**30, m0), (shift + carry).astype(np.int64)

# %%
m0, sh = quantize_multiplier(0.0123)
test_eq((2**30 <= m0 < 2**31), True)
test_close(m0 * 2.**(sh - 31), 0.0123, eps=0.0123 * 2.**-30)   # m0 has 31 bits
test_fail(lambda: quantize_multiplier(0.), contains="quantize_multiplier: M must be positive and "
                                                    "finite, got 0.0")

# %% [markdown]
# The two primitives, as gemmlowp defines them on int32, here on int64 arrays holding int32 values.
# `SaturatingRoundingDoublingHighMul` adds a nudge ($2^{30}$, or $1 - 2^{30}$ for a negative
# product), then divides by $2^{31}$ truncating toward zero, as C's division does, so halves round
# up; the one overflowing input, $(-2^{31})(-2^{31})$, saturates. `RoundingDivideByPOT` adds 1 when
# the bits shifted out exceed half (or reach half, for negative values).

# %%
#| export
_INT32_MIN, _INT32_MAX = -2**31, 2**31 - 1

def saturating_rounding_doubling_high_mul(a, b) -> np.ndarray:
    "`round(a * b / 2**31)` for int32 values held as int64, saturating: gemmlowp's SRDHM."
    ### BEGIN SOLUTION
    a, b = np.asarray(a, np.int64), np.asarray(b, np.int64)
    ab = a * b                                               # fits int64: |a b| <= 2**62
    nudge = np.where(ab >= 0, 1 << 30, 1 - (1 << 30))
    s = ab + nudge
    # divide by 2**31, truncating toward zero
    high = np.where(s >= 0, s >> 31, -((-s) >> 31))
    return np.where((a == _INT32_MIN) & (b == _INT32_MIN), _INT32_MAX, high)
    ### END SOLUTION

def rounding_divide_by_pot(x, exponent) -> np.ndarray:
    "`x / 2**exponent` rounded half away from zero: gemmlowp's RoundingDivideByPOT."
    x, exponent = np.asarray(x, np.int64), np.asarray(exponent, np.int64)
    mask = (np.int64(1) << exponent) - 1
    remainder = x & mask
    threshold = (mask >> 1) + (x < 0)
    return (x >> exponent) + (remainder > threshold)

# %%
test_eq(saturating_rounding_doubling_high_mul(_INT32_MIN, _INT32_MIN), _INT32_MAX)
test_eq(saturating_rounding_doubling_high_mul(3, 2**30), 2)         # 3 * 2**30 / 2**31 = 1.5 -> 2
test_eq(saturating_rounding_doubling_high_mul(-3, 2**30), -1)       # -1.5 -> -1: halves round up
# 2.5 -> 3, -2.5 -> -3
test_eq(rounding_divide_by_pot(np.array([5, -5, 6, -6, 7]), 1), [3, -3, 3, -3, 4])

# %% [markdown]
# `multiply_by_quantized_multiplier` chains them as TensorFlow Lite does (a left shift for $M \ge
# 1$, a rounding right shift for $M < 1$). `requantize` applies either path and the rest of the
# output stage: add $Z_{out}$, clamp, store int8.

# %%
#| export
def multiply_by_quantized_multiplier(acc, m0, shift) -> np.ndarray:
    "`round(acc * m0 * 2**(shift - 31))` in integers: TFLite's `MultiplyByQuantizedMultiplier`."
    acc, shift = np.asarray(acc, np.int64), np.asarray(shift, np.int64)
    left, right = np.maximum(shift, 0), np.maximum(-shift, 0)
    # int32 as the hardware holds it
    x = np.clip(acc << left, _INT32_MIN, _INT32_MAX)
    return rounding_divide_by_pot(saturating_rounding_doubling_high_mul(x, m0), right)

def requantize(acc: np.ndarray,     # int32 accumulators
               multiplier,          # M: a float, or an array broadcasting against acc
               zero_point: int,     # Z_out
               qmin: int = -128,    # clamp: the dtype's smallest value, or Z_out for a fused ReLU
               qmax: int = 127,
               integer: bool = False, # fixed point (m0, shift) instead of a float multiply?
              ) -> np.ndarray:
    "int8 `clamp(Z_out + round(M * acc), qmin, qmax)`, with M applied in float32 or in fixed point."
    if integer:
        m0, shift = quantize_multiplier(multiplier)
        y = multiply_by_quantized_multiplier(acc, m0, shift) + zero_point
        return np.clip(y, qmin, qmax).astype(np.int8)
    y = np.multiply(acc, np.asarray(multiplier, np.float32), dtype=np.float32)
    np.rint(y, out=y)
    y += zero_point
    np.clip(y, qmin, qmax, out=y)
    return y.astype(np.int8)

# %% [markdown]
# On a million random accumulators the two paths differ by at most one level, and only rarely: at
# the half-way points (half to even against half away from zero) and where $M$ in float32 and $m_0$
# round differently.

# %%
acc = rng.integers(-2**22, 2**22, (1000, 1000), dtype=np.int32)
# one multiplier per channel (last axis)
M = rng.uniform(1e-6, 1e-4, 1000)
yf, yi = requantize(acc, M, -3), requantize(acc, M, -3, integer=True)
diff = np.abs(yf.astype(int) - yi)
test_eq(diff.max() <= 1, True)
print(f"float against fixed-point requantization on {acc.size:,} accumulators: max difference "
      f"{diff.max()} level, "
      f"{(diff > 0).mean():.4%} of outputs differ")

# %% [markdown]
# ## Quantized layers
#
# `QuantizedLinear` and `QuantizedConv2d` hold everything as buffers, so `state_dict` and the
# checkpoint see it: the int8 weight, its per-channel float32 scales and int8 zero points, the float
# bias, and the scales and zero points of the input they expect and the output they produce.
# `.weight` is the `QuantizedTensor` (per channel, axis 0), `.scale` and `.zero_point` the output's,
# as in `torch.ao.nn.quantized`. A layer takes a `QuantizedTensor` and returns one; an input at
# another scale than the one it was built for is an error, not a silent rescaling. `from_float`
# builds one from a float layer and the calibrated input and output parameters.

# %%
#| export
def _scalar(value, dtype) -> Tensor:
    "A 0-d buffer."
    return Tensor(np.array(value, dtype))

class _QuantizedLayer(Module):
    "What `QuantizedLinear` and `QuantizedConv2d` share: buffers, `from_float`, the output stage."
    def _init_buffers(self, qweight: QuantizedTensor, bias, in_qparams: tuple, out_qparams: tuple,
                      relu: bool, integer_requant: bool):
        self.per_channel, self.relu = qweight.per_channel, relu
        self.integer_requant = integer_requant
        O = qweight.shape[0]
        self.register_buffer('weight_int8', Tensor(qweight.int_repr()))
        scale = np.broadcast_to(qweight.scale, (O,)).astype(np.float32)
        self.register_buffer('weight_scale', Tensor(scale))
        zp = np.broadcast_to(qweight.zero_point, (O,)).astype(np.int8)
        self.register_buffer('weight_zero_point', Tensor(zp))
        self.register_buffer('bias', None if bias is None else Tensor(np.array(bias, np.float32)))
        for name, (s, z) in (('input', in_qparams), ('output', out_qparams)):
            s, z = _check_qparams(f"{type(self).__name__}.from_float", s, z, np.int8)
            self.register_buffer(f'{name}_scale', _scalar(s, np.float32))
            self.register_buffer(f'{name}_zero_point', _scalar(z, np.int8))

    @property
    def weight(self) -> QuantizedTensor:
        "The int8 weight with its scales, per channel (axis 0) or per tensor."
        q, s = self.weight_int8.data, self.weight_scale.data
        z = self.weight_zero_point.data.astype(np.int64)
        if self.per_channel: return QuantizedTensor(q, s, z, axis=0)
        return QuantizedTensor(q, s[0], z[0])
    scale = property(lambda self: float(self.output_scale.data), doc="The output's scale.")
    zero_point = property(lambda self: int(self.output_zero_point.data), doc="The output's zero "
                                                                             "point.")

# %% [markdown]
# `_quantize_weight` is the weight half of `from_float`: symmetric, per output channel or per
# tensor, with an optional narrower range (`bits=4` keeps the integers in $[-7, 7]$, still stored in
# int8).

# %%
#| export
def _quantize_weight(w: np.ndarray, per_channel: bool = True, bits: int = 8) -> QuantizedTensor:
    "Symmetric quantization of a weight (O, ...) to `bits`, per output channel or per tensor."
    if not 2 <= bits <= 8: raise ValueError(f"quantize weight: bits must be in 2..8, got {bits}")
    _check_finite('quantize weight', w)
    qmax = 2**(bits - 1) - 1
    if per_channel:
        flat = w.reshape(w.shape[0], -1)
        s, z = choose_qparams(flat.min(axis=1), flat.max(axis=1), symmetric=True,
                              qmin=-qmax, qmax=qmax)
        return quantize_per_channel(w, s, z, axis=0)
    s, z = choose_qparams(w.min(), w.max(), symmetric=True, qmin=-qmax, qmax=qmax)
    return quantize_per_tensor(w, s, z)

@patch(cls_method=True)
def from_float(cls: _QuantizedLayer,
               mod: Module,                 # a float Linear or Conv2d (BatchNorm already folded)
               input_scale: float, input_zero_point: int,    # the input's, from calibration
               output_scale: float, output_zero_point: int,  # the output's
               per_channel: bool = True,    # a weight scale per output channel, or one per tensor
               relu: bool = False,          # fuse a following ReLU into the output clamp?
               weight_bits: int = 8,        # 8, or fewer for narrower weights stored in int8
               integer_requant: bool = False, # requantize in fixed point instead of float32
              ):
    "A quantized copy of `mod` for the given input and output scales and zero points."
    if not isinstance(mod, cls._float_type):
        raise TypeError(f"{cls.__name__}.from_float: expected a {cls._float_type.__name__}, got "
                        f"{type(mod).__name__}")
    q = cls.__new__(cls)
    Module.__init__(q)
    q._copy_config(mod)
    bias = None if mod.bias is None else mod.bias.data
    q._init_buffers(_quantize_weight(mod.weight.data, per_channel, weight_bits), bias,
                    (input_scale, input_zero_point), (output_scale, output_zero_point), relu,
                    integer_requant)
    return q

# %% [markdown]
# The shared output stage: check the input's parameters, compute $M$ per channel and the int32 bias
# $\mathrm{round}(b / (S_x S_w))$, add it to the accumulator, requantize with the ReLU's raised
# lower bound.

# %%
#| export
@patch
def _check_input(self: _QuantizedLayer, x) -> np.ndarray:
    "`x`'s int8 data, once checked to be a `QuantizedTensor` at the expected scale and zero point."
    name = type(self).__name__
    if not isinstance(x, QuantizedTensor):
        raise TypeError(f"{name}: expected a QuantizedTensor, got {type(x).__name__}; quantize the "
                        "input first")
    s, z = float(self.input_scale.data), int(self.input_zero_point.data)
    same = np.float32(x.scale) == np.float32(s) and x.zero_point == z
    if x.per_channel or x.dtype != np.int8 or not same:
        raise ValueError(f"{name}: input quantized with scale={np.float32(x.scale)}, "
                         f"zero_point={x.zero_point} "
                         f"({x.dtype}), but this layer expects int8 with scale={s}, zero_point={z}")
    return x.int_repr()

@patch
def _output_stage(self: _QuantizedLayer, acc: np.ndarray, axis: int) -> np.ndarray:
    "int32 accumulators (channels on `axis`) -> int8: bias added, requantized, ReLU clamped."
    shape = [1] * acc.ndim
    shape[axis] = -1
    # (O,) S_x S_w[o]
    sxsw = float(self.input_scale.data) * self.weight_scale.data.astype(np.float64)
    if self.bias is not None:
        # bias at scale S_x S_w
        acc += np.rint(self.bias.data / sxsw).astype(np.int32).reshape(shape)
    M = (sxsw / float(self.output_scale.data)).reshape(shape)
    z = self.zero_point
    lo = max(z, -128) if self.relu else -128                  # a fused ReLU clamps at the real 0
    return requantize(acc, M, z, lo, 127, integer=self.integer_requant)

# %% [markdown]
# `QuantizedLinear`: the activations' zero point is subtracted while widening to float32, the
# product is `int32_matmul`, and the output stage does the rest.

# %%
#| export
class QuantizedLinear(_QuantizedLayer):
    "`Linear` on int8: int8 weight, per-channel scales, int32 accumulation, int8 output."
    _float_type = Linear
    def _copy_config(self, mod):
        self.in_features, self.out_features = mod.in_features, mod.out_features

    def forward(self, x: QuantizedTensor) -> QuantizedTensor:
        "(..., in_features) int8 -> (..., out_features) int8 at this layer's output scale."
        q = self._check_input(x)
        if q.shape[-1] != self.in_features:
            raise ValueError(f"QuantizedLinear: input of shape {q.shape} does not end in "
                             f"in_features={self.in_features}")
        ### BEGIN SOLUTION
        zx = self.input_zero_point.data
        xs = np.subtract(q.reshape(-1, self.in_features), zx, dtype=np.float32)  # (N, K)
        acc = int32_matmul(xs, self.weight_int8.data.T)                        # (N, O) int32
        y = self._output_stage(acc, axis=1)                                    # (N, O) int8
        ### END SOLUTION
        y = y.reshape(*q.shape[:-1], self.out_features)                       # (..., O)
        return QuantizedTensor(y, self.scale, self.zero_point)

    def extra_repr(self) -> str:
        return (f"in_features={self.in_features}, out_features={self.out_features}, "
                f"scale={self.scale:.4g}, "
                f"zero_point={self.zero_point}, per_channel={self.per_channel}, relu={self.relu}")

# %% [markdown]
# A check by hand on a 1-by-2 example, then against the float layer: each output is off by at most
# its own rounding ($S_{out}/2$) plus what the rounding of the inputs and weights contributes.

# %%
lin = Linear(2, 1)
lin.weight.data[...] = [[0.5, -1.0]]; lin.bias.data[...] = [0.25]
ql = QuantizedLinear.from_float(lin, 0.1, 0, 0.05, -10)                 # S_w = 1/127
x = quantize_per_tensor(np.array([[1.0, 0.3]], np.float32), 0.1, 0)     # q_x = [10, 3]
# acc = 10 * 64 + 3 * -127 = 259 (0.5 -> 63.5 -> 64 by half to even)
# bias 0.25 / (0.1/127) = 317.5 -> 318
# y = -10 + rint((259 + 318) * (0.1 / 127) / 0.05) = -10 + rint(9.087) = -1
test_eq(ql.weight.int_repr(), [[64, -127]])
test_eq(ql(x).int_repr(), [[-1]])
test_close(ql(x).dequantize(), lin(Tensor([[1.0, 0.3]])).data, eps=0.05)
test_fail(lambda: ql(quantize_per_tensor(np.ones((1, 2)), 0.2, 0)), contains="expects int8 with "
                                                                             "scale=0.1")
test_fail(lambda: ql(np.ones((1, 2))), contains="expected a QuantizedTensor, got ndarray")

# %% [markdown]
# `QuantizedConv2d` reuses `im2col` from the spatial module. The columns are built from $q_x - Z_x$,
# not $q_x$: im2col pads with zeros, and padding must be the real $0.0$, which is the integer $Z_x$.

# %%
#| export
class QuantizedConv2d(_QuantizedLayer):
    "`Conv2d` on int8 through im2col and `int32_matmul`, with per-channel weight scales."
    _float_type = Conv2d
    def _copy_config(self, mod):
        self.in_channels, self.out_channels = mod.in_channels, mod.out_channels
        self.kernel_size, self.stride, self.padding = mod.kernel_size, mod.stride, mod.padding

    def forward(self, x: QuantizedTensor) -> QuantizedTensor:
        "(N, C, H, W) int8 -> (N, out_channels, OH, OW) int8."
        q = self._check_input(x)
        if q.ndim != 4 or q.shape[1] != self.in_channels:
            raise ValueError(f"QuantizedConv2d: expected input (N, {self.in_channels}, H, W), got "
                             f"shape {q.shape}")
        N, O = q.shape[0], self.out_channels
        OH, OW = conv_output_size('QuantizedConv2d', q.shape[2:], self.kernel_size, self.stride,
                                  self.padding)
        # (N, C, H, W), real 0 -> 0
        xs = np.subtract(q, self.input_zero_point.data, dtype=np.float32)
        # (C*KH*KW, N*OH*OW)
        cols = im2col(xs, self.kernel_size, self.stride, self.padding)
        # (O, N*OH*OW) int32
        acc = int32_matmul(self.weight_int8.data.reshape(O, -1), cols)
        # (O, N*OH*OW) int8
        y = self._output_stage(acc, axis=0)
        y = np.ascontiguousarray(y.reshape(O, N, OH, OW).transpose(1, 0, 2, 3))  # (N, O, OH, OW)
        return QuantizedTensor(y, self.scale, self.zero_point)

    def extra_repr(self) -> str:
        return (f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, "
                f"stride={self.stride}, "
                f"padding={self.padding}, scale={self.scale:.4g}, zero_point={self.zero_point}, "
                f"per_channel={self.per_channel}, relu={self.relu}")

# %% [markdown]
# Against the float convolution, with padding, so that the border checks the zero point: the
# difference is within the output's rounding plus the propagated input and weight rounding, bounded
# here as $S_{out}/2 + \sum |W| S_x/2 + \sum |x| S_w/2$ (the last two over one receptive field).

# %%
manual_seed(0)
conv = Conv2d(3, 4, 3, padding=1)
xf = rng.uniform(-1, 3, (2, 3, 6, 6)).astype(np.float32)
yf = conv(Tensor(xf)).data
sx, zx = choose_qparams(xf.min(), xf.max()); so, zo = choose_qparams(yf.min(), yf.max())
qc = QuantizedConv2d.from_float(conv, sx, zx, so, zo)
yq = qc(quantize_per_tensor(xf, sx, zx)).dequantize()
bound = so / 2 + np.abs(conv.weight.data).sum((1, 2, 3)).max() * sx / 2 \
    + 27 * np.abs(xf).max() * qc.weight.q_per_channel_scales().max() / 2
test_eq(np.abs(yq - yf).max() <= bound, True)
print(f"QuantizedConv2d against Conv2d: largest difference {np.abs(yq - yf).max():.4f}, output "
      f"step S_out = {so:.4f}, "
      f"bound {bound:.4f}")

# %% [markdown]
# ## The layers between
#
# Between the integer layers the activations stay int8. `QuantizedMaxPool2d` runs `max_pool2d`
# directly on the integers: with $S > 0$ the map $q \mapsto S(q - Z)$ is increasing, so the largest
# integer is the largest real, and the output keeps the input's scale and zero point.
# `QuantizedFlatten` reshapes. `Quantize` and `DeQuantize` (PyTorch's names) convert at the model's
# two ends.

# %%
#| export
class Quantize(Module):
    "float -> int8 `QuantizedTensor` at a fixed scale and zero point: a quantized model's entry."
    def __init__(self, scale: float, zero_point: int, dtype=np.int8):
        super().__init__()
        scale, zero_point = _check_qparams('Quantize', scale, zero_point, dtype)
        self.register_buffer('scale', _scalar(scale, np.float32))
        self.register_buffer('zero_point', _scalar(zero_point, np.int8))
    def forward(self, x) -> QuantizedTensor:
        return quantize_per_tensor(x, float(self.scale.data), int(self.zero_point.data))
    def extra_repr(self) -> str:
        return f"scale={float(self.scale.data):.4g}, zero_point={int(self.zero_point.data)}"

class DeQuantize(Module):
    "`QuantizedTensor` -> float32 `Tensor`: the exit of a quantized model."
    def forward(self, x: QuantizedTensor) -> Tensor: return Tensor(x.dequantize())

class QuantizedMaxPool2d(Module):
    "`MaxPool2d` on the integers of a per-tensor `QuantizedTensor`; its qparams pass through."
    def __init__(self, kernel_size, stride=None):
        super().__init__()
        self.kernel_size, self.stride = kernel_size, stride
    def forward(self, x: QuantizedTensor) -> QuantizedTensor:
        with no_grad(): y = max_pool2d(Tensor(x.int_repr()), self.kernel_size, self.stride).data
        return QuantizedTensor(y, x.scale, x.zero_point)
    def extra_repr(self) -> str: return f"kernel_size={self.kernel_size}, stride={self.stride}"

class QuantizedFlatten(Module):
    "`Flatten` on a per-tensor `QuantizedTensor`."
    def __init__(self, start_dim: int = 1, end_dim: int = -1):
        super().__init__()
        self.start_dim, self.end_dim = start_dim, end_dim
    def forward(self, x: QuantizedTensor) -> QuantizedTensor:
        y = Tensor(x.int_repr()).flatten(self.start_dim, self.end_dim).data
        return QuantizedTensor(y, x.scale, x.zero_point)

# %%
qx = quantize_per_tensor(xf, sx, zx)
pooled = QuantizedMaxPool2d(2)(qx)
test_eq(pooled.int_repr().dtype, np.int8)
# pooling commutes with dequantizing
test_eq(pooled.dequantize(), max_pool2d(Tensor(qx.dequantize()), 2).data)
test_eq(QuantizedFlatten()(qx).shape, (2, 108))

# %% [markdown]
# ## Folding BatchNorm
#
# In evaluation a `BatchNorm2d` after a convolution is a fixed affine map per channel, $\gamma (y -
# \mu)/\sqrt{\sigma^2 + \epsilon} + \beta$, so it merges into the convolution before quantizing:
# with $a = \gamma / \sqrt{\sigma^2 + \epsilon}$, $W'_o = a_o W_o$ and $b'_o = a_o (b_o - \mu_o) +
# \beta_o$. The folded layer is one integer convolution instead of a convolution and a float
# normalisation, and its weight scales see the weights the model really applies.

# %%
#| export
def fold_batchnorm(layer: Module,  # a Conv2d (or Linear) in evaluation mode
                   bn: Module,     # the BatchNorm2d (or 1d) after it, with running statistics
                  ) -> Module:
    "A new `Conv2d`/`Linear` computing `bn(layer(x))` as in evaluation mode; inputs untouched."
    if not (isinstance(layer, (Conv2d, Linear)) and isinstance(bn, (BatchNorm1d, BatchNorm2d))):
        raise TypeError(f"fold_batchnorm: expected a Conv2d or Linear and a BatchNorm, got "
                        f"{type(layer).__name__} and {type(bn).__name__}")
    C = layer.weight.shape[0]
    if bn.num_features != C or bn.running_mean is None:
        raise ValueError(f"fold_batchnorm: {type(bn).__name__}({bn.num_features}) with running "
                         "statistics "
                         f"must follow a layer of {C} output channels")
    ### BEGIN SOLUTION
    a = 1 / np.sqrt(bn.running_var.data.astype(np.float64) + bn.eps)            # (C,)
    if bn.weight is not None: a = a * bn.weight.data
    b = np.zeros(C) if layer.bias is None else layer.bias.data.astype(np.float64)
    new_b = a * (b - bn.running_mean.data) + (0 if bn.bias is None else bn.bias.data)
    # scale each output channel
    new_w = layer.weight.data * a.reshape(-1, *[1] * (layer.weight.ndim - 1))
    ### END SOLUTION
    folded = copy.deepcopy(layer)
    dt = layer.weight.dtype
    folded.weight = Parameter(Tensor(new_w, dtype=dt))
    folded.bias = Parameter(Tensor(new_b, dtype=dt))
    return folded

# %%
manual_seed(1)
conv, bn = Conv2d(3, 4, 3, padding=1, bias=False), BatchNorm2d(4)
bn.train()
# running statistics
for _ in range(3): bn(conv(Tensor(rng.standard_normal((8, 3, 6, 6)).astype(np.float32))))
bn.weight.data[...] = rng.uniform(0.5, 2, 4); bn.bias.data[...] = rng.uniform(-1, 1, 4)
bn.eval()
folded = fold_batchnorm(conv, bn)
ref = bn(conv(Tensor(xf))).data
test_close(folded(Tensor(xf)).data, ref, eps=1e-5 * np.abs(ref).max())
test_eq(conv.bias is None, True)                                       # the original is untouched
test_fail(lambda: fold_batchnorm(conv, BatchNorm2d(5)), contains="BatchNorm2d(5)")

# %% [markdown]
# ## Observers and calibration
#
# An activation's range is not in the model: it has to be measured on data. An **observer** watches
# the values flowing through one point of the network during **calibration** (a few batches of
# training data run through the float model) and then proposes a scale and zero point. PyTorch's
# names:
#
# - `MinMaxObserver`: the smallest and largest value seen; one outlier stretches the range for
#   everyone;
# - `MovingAverageMinMaxObserver`: an exponential average of each batch's min and max, less hostage
#   to one batch;
# - `PerChannelMinMaxObserver`: one min and max per channel, for weights;
# - `PercentileObserver`: clip at the 0.01st and 99.99th percentiles of a seeded sample of the
#   values;
# - `MSEObserver`: search the clipping range that minimises the mean squared error of
#   quantize-then-dequantize on that sample, trading clipping error on the few large values against
#   rounding error on all the others.

# %%
#| export
class MinMaxObserver(Module):
    "Track the smallest and largest value seen; propose the qparams covering exactly that range."
    def __init__(self, dtype=np.int8, symmetric: bool = False):
        super().__init__()
        self.dtype, self.symmetric = np.dtype(dtype), symmetric
        self.min_val, self.max_val, self.batches = math.inf, -math.inf, 0

    def forward(self, x):
        "Record `x` (a Tensor or array); return it unchanged."
        a = _array(x)
        _check_finite(type(self).__name__, a)
        if a.size: self._update(a)
        self.batches += 1
        return x

    def _update(self, a: np.ndarray):
        self.min_val = min(self.min_val, float(a.min()))
        self.max_val = max(self.max_val, float(a.max()))

    def _range(self) -> tuple: return self.min_val, self.max_val

    def calculate_qparams(self) -> tuple:
        "`(scale, zero_point)` for the range observed so far."
        if self.batches == 0 or self.min_val > self.max_val:
            raise ValueError(f"{type(self).__name__}.calculate_qparams: no values observed yet")
        return choose_qparams(*self._range(), dtype=self.dtype, symmetric=self.symmetric)

class MovingAverageMinMaxObserver(MinMaxObserver):
    "Exponential moving average of each batch's min and max, weight `averaging_constant`."
    def __init__(self, averaging_constant: float = 0.01, dtype=np.int8, symmetric: bool = False):
        super().__init__(dtype, symmetric)
        self.averaging_constant = averaging_constant
    def _update(self, a: np.ndarray):
        lo, hi, c = float(a.min()), float(a.max()), self.averaging_constant
        if self.batches == 0: self.min_val, self.max_val = lo, hi
        else:
            self.min_val += c * (lo - self.min_val)
            self.max_val += c * (hi - self.max_val)

# %%
#| export
class PerChannelMinMaxObserver(MinMaxObserver):
    "Min and max of each slice along `ch_axis`; qparams are arrays, one per channel."
    def __init__(self, ch_axis: int = 0, dtype=np.int8, symmetric: bool = True):
        super().__init__(dtype, symmetric)
        self.ch_axis = ch_axis
    def _update(self, a: np.ndarray):
        flat = np.moveaxis(a, self.ch_axis, 0).reshape(a.shape[self.ch_axis], -1)
        lo, hi = flat.min(axis=1), flat.max(axis=1)
        self.min_val = lo if self.batches == 0 else np.minimum(self.min_val, lo)
        self.max_val = hi if self.batches == 0 else np.maximum(self.max_val, hi)
    def calculate_qparams(self) -> tuple:
        if self.batches == 0: raise ValueError("PerChannelMinMaxObserver.calculate_qparams: no "
                                               "values observed yet")
        return choose_qparams(self.min_val, self.max_val, self.dtype, self.symmetric)

# %% [markdown]
# The percentile and MSE observers need the distribution, not just its ends. They keep a uniform
# random sample of at most `max_samples` values (a seeded draw from every batch, so the same data
# give the same result), and the exact min and max beside it.

# %%
#| export
class _SampleObserver(MinMaxObserver):
    "Keeps a seeded uniform sample of at most `max_samples` values, besides the exact min and max."
    def __init__(self, max_samples: int = 2**16, seed: int = 0, dtype=np.int8,
                 symmetric: bool = False):
        super().__init__(dtype, symmetric)
        self.max_samples, self._rng, self._samples = max_samples, np.random.default_rng(seed), []
    def _update(self, a: np.ndarray):
        super()._update(a)
        flat = a.ravel()
        take = min(flat.size, self.max_samples)
        pick = self._rng.choice(flat.size, take, replace=False) if take < flat.size else slice(None)
        self._samples.append(flat[pick].copy())
        allv = np.concatenate(self._samples)
        if allv.size > self.max_samples:
            allv = self._rng.choice(allv, self.max_samples, replace=False)
        self._samples = [allv]
    @property
    def samples(self) -> np.ndarray: return np.concatenate(self._samples)

class PercentileObserver(_SampleObserver):
    "Clip to the [100 - percentile, percentile] percentiles of the sampled values."
    def __init__(self, percentile: float = 99.99, **kwargs):
        super().__init__(**kwargs)
        if not 50 < percentile <= 100: raise ValueError("PercentileObserver: percentile must be "
                                                        f"in (50, 100], got {percentile}")
        self.percentile = percentile
    def _range(self) -> tuple:
        lo, hi = np.percentile(self.samples, [100 - self.percentile, self.percentile])
        return float(lo), float(hi)

# %% [markdown]
# The MSE search shrinks the observed range by factors $\alpha \in (0, 1]$ (both ends together) and
# keeps the $\alpha$ whose quantize-dequantize error on the sample is smallest; an exercise.

# %%
#| export
def fake_quantize_array(x: np.ndarray, scale, zero_point, qmin: int, qmax: int) -> np.ndarray:
    "`S * (clamp(rint(x / S) + Z, qmin, qmax) - Z)`: quantize then dequantize, in float."
    return (np.clip(np.rint(x / scale) + zero_point, qmin, qmax) - zero_point) * scale

class MSEObserver(_SampleObserver):
    "The clipping range, a shrunk [min, max], minimising the quantization MSE on the sample."
    def __init__(self, grid: int = 100, **kwargs):
        super().__init__(**kwargs)
        self.grid = grid
    def _range(self) -> tuple:
        "`(lo, hi) = alpha * (min, max)` for the alpha in (0, 1] (of `grid`) with the least MSE."
        x, best, best_err = self.samples, (self.min_val, self.max_val), math.inf
        qmin, qmax = dtype_range(self.dtype, self.symmetric)
        for alpha in np.linspace(1, 1 / self.grid, self.grid):
            lo, hi = alpha * self.min_val, alpha * self.max_val
            s, z = choose_qparams(lo, hi, self.dtype, self.symmetric)
            err = np.mean((fake_quantize_array(x, s, z, qmin, qmax) - x) ** 2)
            if err < best_err: best, best_err = (lo, hi), err
        return best

# %% [markdown]
# A layer's activations with outliers: half-normal values (post-ReLU), of which one in ten thousand
# is 40 times larger. Min/max spends its 256 levels on a range set by the outliers, and the bulk of
# the values gets a coarse step; the percentile and MSE observers clip the outliers and resolve the
# bulk finely. The table gives the quantize-dequantize error on the bulk and on all values, outliers
# included.

# %%
acts = np.abs(rng.standard_normal(200_000)).astype(np.float32)
outlier = np.zeros(acts.size, bool); outlier[rng.choice(acts.size, 20, replace=False)] = True
acts[outlier] *= 40
rows = []
print(f"{'observer':<20} {'range':>18}  {'scale':>8}  {'MSE bulk':>9}  {'MSE all':>9}")
for name, obs in (('MinMax', MinMaxObserver()),
                  ('MovingAverageMinMax', MovingAverageMinMaxObserver()),
                  ('Percentile 99.99', PercentileObserver()), ('MSE', MSEObserver())):
    for batch in acts.reshape(10, -1): obs(batch)
    s, z = obs.calculate_qparams()
    sq = (quantize_per_tensor(acts, s, z).dequantize() - acts) ** 2
    rows.append((name, *obs._range(), s, sq[~outlier].mean(), sq.mean()))
    print(f"{name:<20} [{rows[-1][1]:6.3f}, {rows[-1][2]:7.3f}]  {s:8.5f}  {rows[-1][4]:9.2e}  "
          f"{rows[-1][5]:9.2e}")
# %% [markdown]
# Min/max gives the bulk a coarse step (the scale column); the percentile observer a much finer one,
# and the bulk's error falls accordingly, but it saturates every outlier, which then dominates its
# total error. The MSE search lands between. On its own sample the MSE observer can never do worse
# than min/max, since $\alpha = 1$ is one of its candidates (checked below); on all the values it
# can, by the sampling noise in the rare outliers. Which error matters is the model's to say: the
# observer table on the CNN below measures accuracy.

# %%
obs = MSEObserver()
for batch in acts.reshape(10, -1): obs(batch)
x_s, qmin_, qmax_ = obs.samples, -128, 127
err_mse = np.mean((fake_quantize_array(x_s, *obs.calculate_qparams(), qmin_, qmax_) - x_s) ** 2)
s_mm, z_mm = choose_qparams(obs.min_val, obs.max_val)
err_mm = np.mean((fake_quantize_array(x_s, s_mm, z_mm, qmin_, qmax_) - x_s) ** 2)
test_eq(err_mse <= err_mm, True)
test_fail(lambda: MinMaxObserver().calculate_qparams(), contains="no values observed")

# %% [markdown]
# ## Static post-training quantization
#
# `quantize_model` turns a trained float `Sequential` into an integer one, leaving the original
# untouched:
#
# 1. copy the model, fold each BatchNorm into the convolution (or linear layer) before it, drop
#    `Dropout` (the identity at inference);
# 2. group each `Conv2d`/`Linear` with the `ReLU` that follows it (fused: the ReLU becomes the
#    output clamp);
# 3. **calibrate**: run the calibration batches through the folded float model, with an observer on
#    the model's input and on the output of every group;
# 4. build `Quantize`, then `QuantizedConv2d`/`QuantizedLinear` from each group with the observed
#    input and output parameters, `QuantizedMaxPool2d` and `QuantizedFlatten` (which keep their
#    input's parameters), then `DeQuantize`. The result takes and returns float tensors.
#
# The first step is a list of `(name, layer)` with nested `Sequential`s flattened and every layer
# type checked.

# %%
#| export
_SUPPORTED = (Linear, Conv2d, BatchNorm1d, BatchNorm2d, ReLU, MaxPool2d, Flatten, Dropout)

def _layers(model: Module, prefix: str = '') -> list:
    "`(dotted name, layer)` of a Sequential, nested ones flattened; unsupported layers an error."
    if not isinstance(model, Sequential):
        raise TypeError(f"quantize_model: expected a Sequential model, got {type(model).__name__}")
    out = []
    for name, m in model._modules.items():
        full = f"{prefix}{name}"
        if isinstance(m, Sequential): out += _layers(m, full + '.')
        elif type(m) in _SUPPORTED: out.append((full, m))
        else: raise TypeError(f"quantize_model: layer {full!r} is a {type(m).__name__}, which is "
                              "not supported "
                              f"(supported: {', '.join(t.__name__ for t in _SUPPORTED)})")
    return out

def _fold_and_group(layers: list) -> list:
    "Fold BatchNorms, drop Dropouts, fuse ReLUs: `(kind, module, relu)`, kind 'compute'/'pass'."
    groups = []
    for name, m in layers:
        if isinstance(m, Dropout): continue
        prev = groups[-1] if groups else None
        if isinstance(m, (BatchNorm1d, BatchNorm2d)):
            if prev is None or prev[0] != 'compute' or prev[2]:
                raise TypeError(f"quantize_model: BatchNorm {name!r} must directly follow a Conv2d "
                                "or Linear to fold")
            groups[-1] = ('compute', fold_batchnorm(prev[1], m), False)
        elif isinstance(m, ReLU) and prev is not None and prev[0] == 'compute' and not prev[2]:
            groups[-1] = ('compute', prev[1], True)
        else: groups.append(('compute' if isinstance(m, (Conv2d, Linear)) else 'pass', m, False))
    return groups

# %% [markdown]
# Calibration runs the float groups with an observer after each, and collects the observed
# parameters. A batch can be a `Tensor`, an array, or an `(inputs, targets)` pair from a
# `DataLoader`.

# %%
#| export
def _batch_input(batch):
    "A calibration batch's input: the batch, or the first element of an (inputs, targets) pair."
    return batch[0] if isinstance(batch, (tuple, list)) else batch

def _calibrate(groups: list, calibration_data, observer) -> tuple:
    "Run the batches through the float groups; `(input qparams, [output qparams of each group])`."
    obs_in, obs_out = observer(), [observer() for _ in groups]
    n = 0
    with no_grad():
        for batch in calibration_data:
            x = _batch_input(batch)
            x = obs_in(x if isinstance(x, Tensor) else Tensor(_array(x)))
            for (kind, m, relu), obs in zip(groups, obs_out):
                x = m(x)
                if relu: x = x.clip(min=0)
                obs(x)
            n += 1
    if n == 0: raise ValueError("quantize_model: calibration_data is empty; pass at least one "
                                "batch of inputs")
    return obs_in.calculate_qparams(), [o.calculate_qparams() for o in obs_out]

# %% [markdown]
# The assembly. `ReLU` on its own (not after a compute layer) would need a quantized ReLU; it is
# rare enough in a `Sequential` that it is left as an error naming the layer.

# %%
#| export
def quantize_model(model: Sequential,        # a trained float Sequential; left untouched
                   calibration_data,         # input batches: Tensors, arrays or (x, y) pairs
                   per_channel: bool = True, # a weight scale per output channel, or per tensor
                   observer=MinMaxObserver,  # a class or function making activation observers
                   weight_bits: int = 8,     # weights in +-(2**(bits-1) - 1), stored in int8
                   integer_requant: bool = False, # fixed-point requantization instead of float32
                  ) -> Sequential:
    "A new integer model: BatchNorm folded, ReLU fused, int8 activations; float in, float out."
    groups = _fold_and_group(_layers(copy.deepcopy(model).eval()))
    for kind, m, relu in groups:
        if isinstance(m, ReLU): raise TypeError("quantize_model: a ReLU must follow a Conv2d or "
                                                "Linear to be fused")
    (s, z), outs = _calibrate(groups, calibration_data, observer)
    layers = [Quantize(s, z)]
    for (kind, m, relu), (so, zo) in zip(groups, outs):
        args = (m, s, z, so, zo, per_channel, relu, weight_bits, integer_requant)
        if isinstance(m, Conv2d): layers.append(QuantizedConv2d.from_float(*args))
        elif isinstance(m, Linear): layers.append(QuantizedLinear.from_float(*args))
        elif isinstance(m, MaxPool2d): layers.append(QuantizedMaxPool2d(m.kernel_size, m.stride))
        else: layers.append(QuantizedFlatten(m.start_dim, m.end_dim))
        if kind == 'compute': s, z = so, zo                  # the next layer's input
    return Sequential(*layers, DeQuantize())

# %% [markdown]
# ## A CNN on the digits, quantized
#
# `BaselineCNN` is a small network of the framework's own layers, two convolution blocks
# (convolution, BatchNorm, ReLU, max-pooling) and two linear layers, sized for square images of any
# side divisible by 4: the 8x8 digits here, 28x28 Fashion-MNIST and 32x32 CIFAR-10 elsewhere.

# %%
#| export
class BaselineCNN(Sequential):
    "Conv-BN-ReLU-MaxPool twice, then Linear-ReLU-Dropout-Linear, for square images."
    def __init__(self,
                 input_channels: int = 3,  # 1 for grey images, 3 for colour
                 num_classes: int = 10,
                 image_size: int = 32,     # the side of the square input; must be divisible by 4
                 channels: tuple = (16, 32), # output channels of the two convolutions
                 hidden: int = 64,         # width of the first linear layer
                 dropout: float = 0.25,
                ):
        if image_size % 4: raise ValueError("BaselineCNN: image_size must be divisible by 4, got "
                                            f"{image_size}")
        c1, c2 = channels
        side = image_size // 4
        super().__init__(Conv2d(input_channels, c1, 3, padding=1), BatchNorm2d(c1), ReLU(),
                         MaxPool2d(2),
                         Conv2d(c1, c2, 3, padding=1), BatchNorm2d(c2), ReLU(), MaxPool2d(2),
                         Flatten(), Linear(c2 * side * side, hidden), ReLU(), Dropout(dropout),
                         # (N, num_classes)
                         Linear(hidden, num_classes))

# %% [markdown]
# Trained for a few epochs on the 1,437 training digits (a few seconds), in float32. `_accuracy`
# evaluates a float or quantized model alike.

# %%
#| export
def _accuracy(model, X: np.ndarray, y: np.ndarray, batch: int = 1000) -> float:
    "Classification accuracy of `model` on (X, y), in evaluation mode and batches."
    model.eval()
    with no_grad():
        pred = np.concatenate([model(Tensor(X[i:i + batch])).data.argmax(axis=-1)
                               for i in range(0, len(X), batch)])
    return float((pred == np.asarray(y)).mean())

# %%
X_train, y_train, X_test, y_test = load_digits()                          # (N, 1, 8, 8) in [0, 1]

accuracy = _accuracy
manual_seed(0)
cnn = BaselineCNN(1, 10, image_size=8)
with Timer() as t_train:
    Trainer(cnn, CrossEntropyLoss(), Adam(cnn.parameters(), lr=3e-3), progress=False).fit(
        Batches(X_train, y_train, 32, shuffle=True, seed=0), epochs=8)
fp32_acc = accuracy(cnn, X_test, y_test)
print(f"BaselineCNN on digits: {sum(p.size for p in cnn.parameters()):,} parameters, test accuracy "
      f"{fp32_acc:.2%} "
      f"after {t_train.elapsed:.1f} s of training")

# %% [markdown]
# Calibration uses 512 images of the training set, never the test set. The quantized model is a new
# `Sequential`; the original keeps its weights and its BatchNorm layers.

# %%
calib = [X_train[i:i + 128] for i in range(0, 512, 128)]
before = {k: v.copy() for k, v in cnn.state_dict().items()}
qcnn = quantize_model(cnn, calib)
# original untouched
test_eq(all(np.array_equal(before[k], v) for k, v in cnn.state_dict().items()), True)
test_eq(len(cnn), 13)
int8_acc = accuracy(qcnn, X_test, y_test)
print(qcnn)
print(f"test accuracy: float32 {fp32_acc:.2%}, int8 {int8_acc:.2%} "
      f"({(int8_acc - fp32_acc) * 100:+.2f} points, "
      f"{len(y_test)} test images: one image is {100 / len(y_test):.2f} points)")
test_eq(int8_acc >= fp32_acc - 0.015, True)

# %% [markdown]
# Inside, everything between `Quantize` and `DeQuantize` is int8: each layer's output is a
# `QuantizedTensor` of `np.int8`, and the weights are int8 buffers.

# %%
h = qcnn[0](Tensor(X_test[:4]))
for i, m in enumerate(list(qcnn)[1:-1], 1):
    h = m(h)
    test_eq(h.int_repr().dtype, np.int8)
print(f"the last integer layer's output: {h}; its first row {h.int_repr()[0]}")
test_eq([b.dtype for n, b in qcnn.named_buffers() if n.endswith('weight_int8')],
        [np.dtype(np.int8)] * 4)

# %% [markdown]
# ### Per-tensor against per-channel weights, and the observers
#
# One table, each row a fresh `quantize_model` on the same calibration batches:

# %%
observers = {'MinMax': MinMaxObserver,
             'MovingAverageMinMax': lambda: MovingAverageMinMaxObserver(0.1),
             'Percentile 99.99': PercentileObserver, 'MSE': MSEObserver}
with no_grad(): ref_logits = cnn.eval()(Tensor(X_test)).data
print(f"float32: {fp32_acc:.2%}; the error is the RMS difference of the logits from the float "
      "model's")
print(f"{'observer':<20} {'per tensor':>11} {'error':>7} {'per channel':>12} {'error':>7}")
table = {}
for name, obs in observers.items():
    row = []
    for pc in (False, True):
        qm = quantize_model(cnn, calib, per_channel=pc, observer=obs)
        err = np.sqrt(np.mean((qm(Tensor(X_test)).data - ref_logits) ** 2))
        row += [accuracy(qm, X_test, y_test), err]
    table[name] = row
    print(f"{name:<20} {row[0]:>11.2%} {row[1]:>7.4f} {row[2]:>12.2%} {row[3]:>7.4f}")

# %% [markdown]
# ### Bytes, in memory and on disk
#
# `QuantizationMemoryProfiler` counts, per layer, the bytes of the weights (for the quantized model:
# the int8 integers plus one float32 scale and one int8 zero point per channel), the other state
# (biases, BatchNorm statistics, the activations' scales and zero points), and the totals.

# %%
#| export
def _state_bytes(m: Module) -> int:
    "Bytes of a module's own parameters and buffers (not its children's)."
    state = [*m._parameters.values(), *m._buffers.values()]
    return sum(t.data.nbytes for t in state if t is not None)

class QuantizationMemoryProfiler:
    "Measured bytes per layer of a float model and its quantized version, scales included."
    def profile_memory_usage(self, baseline: Module, quantized: Module) -> dict:
        "Rows `(model, layer, type, weight bytes, other bytes)`, with the weight and total ratios."
        rows = []
        for tag, model in (('baseline', baseline), ('quantized', quantized)):
            for name, m in model.named_modules():
                total = _state_bytes(m)
                if not total: continue
                if isinstance(m, _QuantizedLayer):
                    parts = (m.weight_int8, m.weight_scale, m.weight_zero_point)
                    w = sum(t.data.nbytes for t in parts)
                else: w = m.weight.data.nbytes if isinstance(m, (Linear, Conv2d)) else 0
                rows.append((tag, name, type(m).__name__, w, total - w))
        sums = {tag: (sum(r[3] for r in rows if r[0] == tag),
                      sum(r[3] + r[4] for r in rows if r[0] == tag))
                for tag in ('baseline', 'quantized')}
        return {'rows': rows, 'weight_bytes': {t: s[0] for t, s in sums.items()},
                'total_bytes': {t: s[1] for t, s in sums.items()},
                'weight_ratio': sums['baseline'][0] / sums['quantized'][0],
                'total_ratio': sums['baseline'][1] / sums['quantized'][1]}

# %%
prof = QuantizationMemoryProfiler().profile_memory_usage(cnn, qcnn)
for tag, name, kind, w, other in prof['rows']: print(f"{tag:<9} {name:>3} {kind:<16} weights "
                                                     f"{w:>7,} B  other {other:>5,} B")
print(f"weights: {prof['weight_bytes']['baseline']:,} B float32 -> "
      f"{prof['weight_bytes']['quantized']:,} B int8 with "
      f"scales and zero points: {prof['weight_ratio']:.2f}x smaller; all state "
      f"{prof['total_ratio']:.2f}x")
test_eq(prof['weight_ratio'] > 3.8, True)

# %% [markdown]
# The checkpoint is the framework's pickle-free `.npz` (`save_checkpoint`). `np.savez` writes each
# array in its own dtype, so the int8 weights take one byte each on disk; each array also carries a
# header of about a hundred bytes, which matters for this tiny model. Loading into a freshly built
# quantized model of the same layout (here one quantized from an untrained `BaselineCNN`) gives
# bit-identical outputs.

# %%
tmp = Path(tempfile.mkdtemp())
f_path, q_path = save_checkpoint(tmp / "fp32.npz", cnn), save_checkpoint(tmp / "int8.npz", qcnn)
with zipfile.ZipFile(q_path) as z:
    int8_members = {i.filename: i.file_size for i in z.infolist() if 'weight_int8' in i.filename}
f_size, q_size = os.path.getsize(f_path), os.path.getsize(q_path)
print(f"checkpoint on disk: float32 {f_size:,} B, int8 {q_size:,} B: {f_size / q_size:.2f}x "
      "smaller")
print(f"int8 weight arrays in the file: {sum(int8_members.values()):,} B for "
      f"{sum(b.data.size for n, b in qcnn.named_buffers() if n.endswith('weight_int8')):,} weights "
      "(with .npy headers)")
fresh = quantize_model(BaselineCNN(1, 10, image_size=8), calib[:1])
load_checkpoint(q_path, fresh)
test_eq(fresh(Tensor(X_test)).data, qcnn(Tensor(X_test)).data)             # bit-identical

# %% [markdown]
# ## Dynamic quantization
#
# Static quantization needs calibration and a fixed activation range per layer. A language model's
# activations vary much more from input to input, and its cost is in the linear layers. **Dynamic**
# quantization (`torch.ao.quantization.quantize_dynamic`) quantizes the weights ahead of time (int8,
# per channel) and each batch of activations when it arrives, from that batch's own min and max; the
# int32 accumulator is turned back into float with $S_x S_w[o]$, the bias added in float. Nothing to
# calibrate, and every `Linear` in any model can be swapped, here inside `GPT`.

# %%
#| export
class DynamicQuantizedLinear(Module):
    "`Linear` with int8 weights; each input batch quantized at run time. Float in, float out."
    def __init__(self, linear: Linear, per_channel: bool = True):
        super().__init__()
        self.in_features, self.out_features = linear.in_features, linear.out_features
        self.per_channel = per_channel
        qw = _quantize_weight(linear.weight.data, per_channel)
        self.register_buffer('weight_int8', Tensor(qw.int_repr()))
        scale = np.broadcast_to(qw.scale, (self.out_features,)).astype(np.float32)
        self.register_buffer('weight_scale', Tensor(scale))
        bias = None if linear.bias is None else Tensor(linear.bias.data.copy())
        self.register_buffer('bias', bias)

    def forward(self, x: Tensor) -> Tensor:
        "(..., in_features) float -> (..., out_features) float32, via int8 operands and int32 sums."
        a = _array(x).reshape(-1, self.in_features)                              # (N, K)
        _check_finite('DynamicQuantizedLinear', a)
        s, z = choose_qparams(a.min(), a.max()) if a.size else (np.float32(1), 0)
        q = quantize_per_tensor(a, s, z).int_repr()              # (N, K) int8, this batch's range
        # (N, O) int32
        acc = int32_matmul(np.subtract(q, z, dtype=np.float32), self.weight_int8.data.T)
        y = np.multiply(acc, s * self.weight_scale.data, dtype=np.float32)       # back to reals
        if self.bias is not None: y += self.bias.data
        return Tensor(y.reshape(*x.shape[:-1], self.out_features))

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}"

# %% [markdown]
# `_swap_linears` replaces every `Linear` in a module tree (a copy) by what `make` builds from it.

# %%
#| export
def _swap_linears(model: Module, make) -> Module:
    "A deep copy of `model` with every `Linear` (exactly that type) replaced by `make(linear)`."
    model = copy.deepcopy(model)
    for _, m in list(model.named_modules()):
        for name, child in list(m._modules.items()):
            if type(child) is Linear: setattr(m, name, make(child))
    return model.eval()

def quantize_dynamic(model: Module, per_channel: bool = True) -> Module:
    "A copy of `model` with every `Linear` a `DynamicQuantizedLinear`."
    return _swap_linears(model, lambda lin: DynamicQuantizedLinear(lin, per_channel))

# %% [markdown]
# ## Weight-only 4-bit
#
# For a language model generating one token at a time, every weight is read once per token: the step
# is bound by memory, and fewer bits per weight is fewer bytes to read. The Q4_0 layout of
# llama.cpp's GGML format keeps blocks of 32 weights along the input dimension, each as 4-bit
# integers (two to a byte) with one float16 scale: $32 \cdot 4 + 16 = 144$ bits per 32 weights, 4.5
# bits per weight. This is *weight-only* quantization: the weights are unpacked to float for the
# product; nothing else is quantized. The integers are $[-7, 7]$ with $S = \max|w| / 7$ per block (a
# symmetric variant of Q4_0, which uses $[-8, 7]$).

# %%
#| export
def pack_int4(q: np.ndarray) -> np.ndarray:
    "Integers in [-8, 7] (last axis even) -> uint8, two per byte: 2i in the low nibble, 2i+1 high."
    if q.shape[-1] % 2: raise ValueError("pack_int4: the last axis must be even, got shape "
                                         f"{q.shape}")
    if q.size and (q.min() < -8 or q.max() > 7):
        raise ValueError(f"pack_int4: values must lie in [-8, 7], got [{q.min()}, {q.max()}]")
    u = (q.astype(np.int16) + 8).astype(np.uint8)                     # 0..15
    return u[..., 0::2] | (u[..., 1::2] << 4)

def unpack_int4(packed: np.ndarray) -> np.ndarray:
    "The inverse of `pack_int4`: uint8 (..., n) -> int8 (..., 2n) in [-8, 7]."
    out = np.empty((*packed.shape[:-1], 2 * packed.shape[-1]), np.int8)
    out[..., 0::2] = (packed & 0xF).astype(np.int8) - 8
    out[..., 1::2] = (packed >> 4).astype(np.int8) - 8
    return out

# %%
q4 = rng.integers(-8, 8, (3, 10)).astype(np.int8)
test_eq(unpack_int4(pack_int4(q4)), q4)
# low nibble 0 (-8), high nibble 15 (7)
test_eq(pack_int4(np.array([[-8, 7]])), [[0xF0]])
test_eq(pack_int4(q4).nbytes, q4.size // 2)
test_fail(lambda: pack_int4(np.array([[9, 0]])), contains="[-8, 7], got [0, 9]")

# %%
#| export
class Int4WeightOnlyLinear(Module):
    "`Linear` with packed 4-bit weights and a float16 scale per block of `group_size` inputs."
    def __init__(self, linear: Linear, group_size: int = 32):
        super().__init__()
        if group_size < 2 or group_size % 2: raise ValueError("Int4WeightOnlyLinear: group_size "
                                                              f"must be even, got {group_size}")
        self.in_features, self.out_features = linear.in_features, linear.out_features
        self.group_size = group_size
        w = linear.weight.data.astype(np.float32)
        _check_finite('Int4WeightOnlyLinear', w)
        # the last block padded with zeros
        pad = -self.in_features % group_size
        # (O, G, g)
        blocks = np.pad(w, ((0, 0), (0, pad))).reshape(self.out_features, -1, group_size)
        scale = (np.abs(blocks).max(axis=2) / 7).astype(np.float16)                         # (O, G)
        scale[scale == 0] = 1
        q = np.clip(np.rint(blocks / scale[..., None].astype(np.float32)), -7, 7).astype(np.int8)
        # (O, Kp/2)
        self.register_buffer('weight_packed', Tensor(pack_int4(q.reshape(self.out_features, -1))))
        self.register_buffer('weight_scale', Tensor(scale, dtype=np.float16))
        bias = None if linear.bias is None else Tensor(linear.bias.data.copy())
        self.register_buffer('bias', bias)

    def dequantized_weight(self) -> np.ndarray:
        "The float32 weight (out_features, in_features) the packed integers and scales stand for."
        q = unpack_int4(self.weight_packed.data).reshape(self.out_features, -1, self.group_size)
        w = q * self.weight_scale.data[..., None].astype(np.float32)               # (O, G, g)
        return w.reshape(self.out_features, -1)[:, :self.in_features]

    def forward(self, x: Tensor) -> Tensor:
        "(..., in_features) -> (..., out_features), the weight unpacked to float32 for the product."
        y = _array(x) @ self.dequantized_weight().T
        return Tensor(y if self.bias is None else y + self.bias.data)

    @property
    def weight_nbytes(self) -> int:
        return self.weight_packed.data.nbytes + self.weight_scale.data.nbytes

def quantize_weight_only_int4(model: Module, group_size: int = 32) -> Module:
    "A copy of `model` with every `Linear` an `Int4WeightOnlyLinear`."
    return _swap_linears(model, lambda lin: Int4WeightOnlyLinear(lin, group_size))

# %%
lin = Linear(128, 64)
q4l = Int4WeightOnlyLinear(lin)
err = np.abs(q4l.dequantized_weight() - lin.weight.data)
step = np.repeat(q4l.weight_scale.data.astype(np.float32), 32, axis=1)
# rounding error <= half a step per block
test_eq((err <= step / 2 * (1 + 1e-3)).all(), True)
print(f"Linear(128, 64): float32 weight {lin.weight.data.nbytes:,} B, 4-bit {q4l.weight_nbytes:,} "
      "B "
      f"({8 * q4l.weight_nbytes / lin.weight.data.size:.2f} bits per weight, "
      f"{lin.weight.data.nbytes / q4l.weight_nbytes:.2f}x smaller)")

# %% [markdown]
# ### On a small GPT
#
# A two-layer character GPT trained for 60 steps (a few seconds), then its validation loss on 64
# fixed windows of held-out Shakespeare in float32, with dynamic int8 linear layers, and with 4-bit
# weights. The figures for the 15-minute TinyGPT come from `milestones/quantize_fashion.py --gpt`.

# %%
text, val_text = load_shakespeare('train'), load_shakespeare('val')
tok = CharTokenizer(text + val_text)
ids, val_ids = np.array(tok.encode(text)), np.array(tok.encode(val_text))
g = np.random.default_rng(0)
def gpt_windows(data, n, T=32):
    "n random windows of T + 1 ids: inputs (n, T) and next-id targets (n, T)."
    rows = data[g.integers(0, len(data) - T - 1, n)[:, None] + np.arange(T + 1)]
    return rows[:, :-1], rows[:, 1:]
manual_seed(0)
gpt = GPT(tok.vocab_size, block_size=32, n_layer=2, n_head=2, n_embd=64)
opt = AdamW(gpt.parameters(), lr=3e-3)
with Timer() as t_gpt:
    for step in range(60):
        _, loss = gpt(*gpt_windows(ids, 16)); opt.zero_grad(); loss.backward(); opt.step()
Xv, Yv = gpt_windows(val_ids, 64)
def val_loss(model) -> float:
    model.eval()
    with no_grad(): return model(Xv, Yv)[1].item()
gpt_dyn, gpt_q4 = quantize_dynamic(gpt), quantize_weight_only_int4(gpt)
variants = (('float32', gpt), ('dynamic int8', gpt_dyn), ('4-bit weights', gpt_q4))
losses = {name: val_loss(m) for name, m in variants}
print(f"GPT trained 60 steps in {t_gpt.elapsed:.1f} s; validation loss (nats per "
      "character):")
for name, v in losses.items(): print(f"  {name:<14} {v:.4f} ({v - losses['float32']:+.4f})")
# qkv, proj, fc, proj; head
test_eq(sum(isinstance(m, DynamicQuantizedLinear) for m in gpt_dyn.modules()), 2 * 4 + 1)
test_eq(abs(losses['dynamic int8'] - losses['float32']) < 0.02, True)

# %% [markdown]
# ## Quantization-aware training
#
# When post-training quantization loses too much (few bits, or a model whose weights sit badly on
# the grid), train with the rounding in the loop: **fake quantization** rounds values to the grid in
# the forward pass but keeps them float, $\hat x = S\,(\mathrm{clamp}(\mathrm{round}(x/S) + Z) -
# Z)$. Rounding has zero derivative almost everywhere, so the backward pass uses the
# **straight-through estimator**: the gradient passes unchanged where $x$ is inside the
# representable range and is zero where it was clamped (Bengio et al. 2013; Jacob et al. 2018). The
# op is registered with autograd's `grad_rule` like every other.

# %%
#| export
def fake_quantize(x: Tensor,      # float input
                  scale,          # S: a float, or an array broadcasting against x (per channel)
                  zero_point,     # Z, same shape as scale
                  qmin: int, qmax: int,  # the integer range
                 ) -> Tensor:
    "Quantize-dequantize `x` in float; the gradient passes straight through where not clamped."
    ### BEGIN SOLUTION
    q = np.rint(x.data / scale) + zero_point
    inside = (q >= qmin) & (q <= qmax)                                   # where the gradient passes
    out = ((np.clip(q, qmin, qmax) - zero_point) * scale).astype(x.dtype)
    ### END SOLUTION
    return Tensor._from_op(out, 'fake_quantize', (x,), mask=inside)

@grad_rule('fake_quantize')
def _fake_quantize_grad(g, out, x, mask):
    "Straight-through estimator: the gradient where the input was in range, zero where clamped."
    return (g * mask,)

# %%
x = Tensor([-3., -0.26, 0.1, 0.74, 5.], requires_grad=True)
y = fake_quantize(x, 0.5, 0, -4, 4)                                  # grid step 0.5, range [-2, 2]
test_eq(y.data, [-2., -0.5, 0., 0.5, 2.])
y.sum().backward()
test_eq(x.grad, [0., 1., 1., 1., 0.])                                # clamped ends get no gradient

# %% [markdown]
# `FakeQuantize` is the module for activations: in training it observes its input (a moving average
# of min and max, as PyTorch's default) and fake-quantizes with the current parameters; in
# evaluation it only fake-quantizes. `QATLinear` and `QATConv2d` fake-quantize their own weight on
# every forward pass, symmetric and per channel, with the scale from the weight's current range, so
# the gradient reaches the float weight.

# %%
#| export
class FakeQuantize(Module):
    "Observe (in training) and fake-quantize activations to int8 (asymmetric, per tensor)."
    def __init__(self, observer=lambda: MovingAverageMinMaxObserver(0.01)):
        super().__init__()
        self.observer = observer()
    def forward(self, x: Tensor) -> Tensor:
        if self.training: self.observer(x)
        s, z = self.observer.calculate_qparams()
        return fake_quantize(x, s, z, *dtype_range(np.int8))

def _fake_quantize_weight(w: Tensor, bits: int) -> Tensor:
    "Symmetric per-output-channel fake quantization of a weight (O, ...) to `bits`."
    qmax = 2**(bits - 1) - 1
    flat = w.data.reshape(w.shape[0], -1)
    s, _ = choose_qparams(flat.min(axis=1), flat.max(axis=1), symmetric=True, qmin=-qmax, qmax=qmax)
    return fake_quantize(w, s.reshape(-1, *[1] * (w.ndim - 1)), 0, -qmax, qmax)

class QATLinear(Linear):
    "`Linear` that fake-quantizes its weight to `bits` (per channel) in every forward pass."
    def forward(self, x: Tensor) -> Tensor:
        y = x @ _fake_quantize_weight(self.weight, self.bits).T
        return y if self.bias is None else y + self.bias

class QATConv2d(Conv2d):
    "`Conv2d` that fake-quantizes its weight to `bits` (per channel) in every forward pass."
    def forward(self, x: Tensor) -> Tensor:
        w = _fake_quantize_weight(self.weight, self.bits)
        return conv2d(x, w, self.bias, self.stride, self.padding)

# %% [markdown]
# `prepare_qat` folds the BatchNorms (with their running statistics, so training continues without
# them: fine for the short fine-tuning QAT is), swaps in the QAT layers and puts a `FakeQuantize` at
# the input and after every compute group. `convert` turns the trained QAT model back into plain
# float layers and quantizes it for real with `quantize_model`, using the same weight bit width.

# %%
#| export
def _as_qat(m: Module, bits: int) -> Module:
    "A QAT copy of a (folded) Conv2d or Linear sharing nothing with it."
    q = copy.deepcopy(m)
    q.__class__ = QATConv2d if isinstance(m, Conv2d) else QATLinear
    q.bits = bits
    return q

def prepare_qat(model: Sequential, weight_bits: int = 8) -> Sequential:
    "A new trainable Sequential: BatchNorm folded, weights and activations fake-quantized."
    if not 2 <= weight_bits <= 8: raise ValueError("prepare_qat: weight_bits must be in 2..8, got "
                                                   f"{weight_bits}")
    layers = [FakeQuantize()]
    for kind, m, relu in _fold_and_group(_layers(copy.deepcopy(model).eval())):
        if kind == 'pass': layers.append(m); continue
        layers += [_as_qat(m, weight_bits)] + ([ReLU()] if relu else []) + [FakeQuantize()]
    return Sequential(*layers).train()

def convert(qat_model: Sequential, calibration_data, weight_bits: int = 8, **kwargs) -> Sequential:
    "The integer model of a trained QAT model: plain float layers again, then `quantize_model`."
    plain = []
    for m in qat_model:
        if isinstance(m, FakeQuantize): continue
        if isinstance(m, (QATLinear, QATConv2d)):
            m = copy.deepcopy(m)
            m.__class__ = Conv2d if isinstance(m, QATConv2d) else Linear
            del m.bits
        plain.append(m)
    return quantize_model(Sequential(*plain), calibration_data, weight_bits=weight_bits, **kwargs)

# %% [markdown]
# On the digits CNN, weights survive post-training quantization down to a few bits; at 2 bits (the
# integers $-1, 0, 1$) they do not. Two epochs of QAT from the trained float model, then `convert`
# to the integer model:

# %%
rows = []
for bits in (4, 2):
    ptq = accuracy(quantize_model(cnn, calib, weight_bits=bits), X_test, y_test)
    manual_seed(1)
    qat = prepare_qat(cnn, weight_bits=bits)
    Trainer(qat, CrossEntropyLoss(), Adam(qat.parameters(), lr=1e-3), progress=False).fit(
        Batches(X_train, y_train, 32, shuffle=True, seed=1), epochs=2)
    rows.append((bits, ptq, accuracy(convert(qat, calib, weight_bits=bits), X_test, y_test)))
    print(f"{bits}-bit weights, int8 activations: float32 {fp32_acc:.2%}, PTQ {ptq:.2%}, QAT then "
          f"convert {rows[-1][2]:.2%}")
# QAT recovers most of the 2-bit loss
test_eq(rows[1][2] > rows[1][1] + 0.2, True)

# %% [markdown]
# ## Per-layer sensitivity
#
# Which layer loses the accuracy? `layer_sensitivity` quantizes one compute layer at a time (the
# rest stay float, with BatchNorm folded), using the activation ranges of one calibration, and
# scores each variant with the caller's `evaluate(model) -> float`. The table below uses 2-bit
# weights, where the digits CNN's layers differ; the milestone prints 8 and 4 bits on Fashion-MNIST.

# %%
#| export
def layer_sensitivity(model: Sequential, calibration_data, evaluate, per_channel: bool = True,
                      weight_bits: int = 8, observer=MinMaxObserver) -> list:
    "`(name, type, evaluate(model with only that layer quantized))` for each Conv2d and Linear."
    layers = _layers(copy.deepcopy(model).eval())
    names = iter([n for n, m in layers if isinstance(m, (Conv2d, Linear))])
    groups = _fold_and_group(layers)
    (s0, z0), outs = _calibrate(groups, calibration_data, observer)
    ins = [(s0, z0)]
    for (kind, _, _), o in zip(groups, outs): ins.append(o if kind == 'compute' else ins[-1])
    result = []
    for i, (kind, m, relu) in enumerate(groups):
        if kind != 'compute': continue
        layers = []
        for j, (_, mj, rj) in enumerate(groups):
            if j == i:
                q = (QuantizedConv2d if isinstance(m, Conv2d) else QuantizedLinear).from_float(
                    m, *ins[i], *outs[i], per_channel, relu, weight_bits)
                layers += [Quantize(*ins[i]), q, DeQuantize()]
            else: layers += [mj] + ([ReLU()] if rj else [])
        result.append((next(names), type(m).__name__, evaluate(Sequential(*layers).eval())))
    return result


# %%
sens = layer_sensitivity(cnn, calib, lambda m: accuracy(m, X_test, y_test), weight_bits=2)
for name, kind, a in sens: print(f"only layer {name:>2} ({kind}) with 2-bit weights: test accuracy "
                                 f"{a:.2%}")
test_eq(len(sens), 4)

# %% [markdown]
# ## The original course's interface
#
# The course this module replaces had classes with the names below, whose numbers were typed in.
# Here they are thin layers over the code above, and everything they report is measured when they
# are called.

# %%
#| export
class INT8Quantizer:
    "Per-tensor int8 quantization of tensors and per-channel quantization of a model's weights."
    def compute_quantization_params(self, tensor, symmetric: bool = True) -> tuple:
        "`(scale, zero_point)` covering the tensor's min and max (symmetric: zero point 0)."
        a = _array(tensor)
        _check_finite('INT8Quantizer.compute_quantization_params', a)
        return choose_qparams(a.min(), a.max(), symmetric=symmetric)
    def quantize_tensor(self, tensor, scale: float, zero_point: int) -> QuantizedTensor:
        return quantize_per_tensor(tensor, scale, zero_point)
    def dequantize_tensor(self, qtensor: QuantizedTensor) -> Tensor:
        return Tensor(qtensor.dequantize())
    def quantize_weights(self, model: Module, per_channel: bool = True) -> dict:
        "Name -> `QuantizedTensor` of every Conv2d and Linear weight of `model`, symmetric."
        return {f"{n}.weight" if n else 'weight': _quantize_weight(m.weight.data, per_channel)
                for n, m in model.named_modules() if isinstance(m, (Conv2d, Linear))}

class QuantizedCNN:
    "A float CNN and, after `calibrate_and_quantize`, its integer version made by `quantize_model`."
    def __init__(self, base_model: Sequential):
        self.base_model, self.model = base_model, None
    def calibrate_and_quantize(self, calibration_data, **kwargs) -> 'QuantizedCNN':
        "Calibrate on `calibration_data` (training batches), build the integer model; return self."
        self.model = quantize_model(self.base_model, calibration_data, **kwargs)
        return self
    def forward(self, x) -> Tensor:
        if self.model is None: raise RuntimeError("QuantizedCNN.forward: call "
                                                  "calibrate_and_quantize first")
        return self.model(x if isinstance(x, Tensor) else Tensor(_array(x)))
    __call__ = forward
    def predict(self, x) -> np.ndarray:
        "Predicted class of each input."
        return self.forward(x).data.argmax(axis=-1)

# %%
#| export
class QuantizationPerformanceAnalyzer:
    "Measured accuracy, weight bytes and inference time of a float model and its quantized version."
    def benchmark_models(self, baseline, quantized, test_data: tuple, num_runs: int = 5,
                         timing_batch: int = 256) -> dict:
        "Accuracy on `test_data` (X, y), weight bytes, and median times over `num_runs` rounds."
        from tinytorch.utils.timing import compare
        X, y = test_data
        xb = Tensor(np.asarray(X[:timing_batch], np.float32))
        with no_grad():
            c = compare({'baseline': lambda: baseline(xb), 'quantized': lambda: quantized(xb)},
                        rounds=num_runs)
        mem = QuantizationMemoryProfiler().profile_memory_usage(baseline, quantized)
        acc = {'baseline': _accuracy(baseline, X, y), 'quantized': _accuracy(quantized, X, y)}
        return {'accuracy': acc,
                'weight_bytes': mem['weight_bytes'], 'weight_ratio': mem['weight_ratio'],
                'seconds': {'baseline': c['baseline'].median, 'quantized': c['quantized'].median},
                'time_ratio': c.ratio('quantized', 'baseline'), 'timing_batch': len(xb)}

class QuantizationSystemsAnalyzer:
    "Weight error and accuracy of a model at several weight bit widths, each measured."
    def __init__(self, model: Sequential, calibration_data, test_data: tuple):
        self.model, self.calibration_data, self.test_data = model, list(calibration_data), test_data

    def analyze_precision_tradeoffs(self, bit_widths=(32, 16, 8, 4)) -> list:
        "Per width: relative RMS error of the folded weights, test accuracy. 16: float16 weights."
        groups = _fold_and_group(_layers(copy.deepcopy(self.model).eval()))
        folded = [m for k, m, _ in groups if k == 'compute']
        ref = np.concatenate([m.weight.data.ravel() for m in folded])
        rows = []
        for bits in bit_widths:
            if bits == 32: model, w = self.model, ref
            elif bits == 16:
                model = copy.deepcopy(self.model)
                for p in model.parameters(): p.data[...] = p.data.astype(np.float16)
                w = ref.astype(np.float16).astype(np.float32)
            elif 2 <= bits <= 8:
                model = quantize_model(self.model, self.calibration_data, weight_bits=bits)
                w = np.concatenate([m.weight.dequantize().ravel() for m in model
                                    if isinstance(m, _QuantizedLayer)])
            else: raise ValueError("analyze_precision_tradeoffs: bit widths must be 32, 16 or "
                                   f"2..8, got {bits}")
            err = float(np.sqrt(np.mean((w - ref) ** 2) / np.mean(ref ** 2)))
            rows.append({'bits': bits, 'weight_error': err,
                         'accuracy': _accuracy(model, *self.test_data)})
        return rows

# %% [markdown]
# Used on the digits CNN: the quantizer on one weight, the wrapper, and the analyzers. The timing
# runs with one BLAS thread on a machine shared with other work, so it is noisy;
# `benchmarks/bench_quant.py` measures properly.

# %%
qz = INT8Quantizer()
w0 = cnn[0].weight
s0, z0 = qz.compute_quantization_params(w0)
roundtrip = qz.dequantize_tensor(qz.quantize_tensor(w0, s0, z0)).data
test_close(roundtrip, w0.data, eps=s0 / 2 * (1 + 1e-6))
test_eq(sorted(qz.quantize_weights(cnn)), ['0.weight', '12.weight', '4.weight', '9.weight'])
wrapped = QuantizedCNN(cnn).calibrate_and_quantize(calib)
test_eq(wrapped.predict(X_test[:50]), qcnn(Tensor(X_test[:50])).data.argmax(1))
with blas_threads(1):
    bench = QuantizationPerformanceAnalyzer().benchmark_models(cnn, qcnn, (X_test, y_test))
print(f"accuracy {bench['accuracy']}; weight bytes {bench['weight_bytes']} "
      f"({bench['weight_ratio']:.2f}x); "
      f"time per batch of {bench['timing_batch']}: float32 "
      f"{fmt_seconds(bench['seconds']['baseline'])}, "
      f"int8 {fmt_seconds(bench['seconds']['quantized'])} ({bench['time_ratio']:.2f}x the float "
      "time)")

# %% [markdown]
# ### Accuracy against bit width
#
# `analyze_precision_tradeoffs` quantizes the weights to each width (activations stay int8 for the
# integer widths; 16 means float16 weights) and measures the weights' relative RMS error and the
# test accuracy.

# %%
analyzer = QuantizationSystemsAnalyzer(cnn, calib, (X_test, y_test))
tradeoffs = analyzer.analyze_precision_tradeoffs([32, 16, 8, 6, 4, 3, 2])
for r in tradeoffs: print(f"{r['bits']:>2} bits: weight error {r['weight_error']:.2e}, test "
                          f"accuracy {r['accuracy']:.2%}")
test_eq([r['bits'] for r in tradeoffs], [32, 16, 8, 6, 4, 3, 2])
test_eq(tradeoffs[0]['accuracy'], fp32_acc)

# %%
fig, (ax1, ax2, ax3) = plt.subplots(1, 3, figsize=(13, 3.2))
bits = [r['bits'] for r in tradeoffs][1:]
ax1.plot(bits, [r['accuracy'] for r in tradeoffs][1:], 'o-', label='PTQ')
ax1.axhline(fp32_acc, color='gray', ls=':', label='float32')
ax1.plot([b for b, _, _ in rows], [q for _, _, q in rows], 's', label='QAT')
ax1.set(xlabel='weight bits (16: float16)', ylabel='test accuracy', xscale='log',
        title='digits CNN')
ax1.set_xticks(bits, [str(b) for b in bits]); ax1.legend()
folded_w = fold_batchnorm(cnn[4], cnn[5]).weight.data
sw = qcnn[3].weight.q_per_channel_scales()
ax2.hist(folded_w.ravel(), bins=100)
for c in (0, int(np.argmax(sw))):
    for sign in (-1, 1): ax2.axvline(sign * 127 * sw[c], color='C1' if c == 0 else 'C3', ls='--')
ax2.set(title='second conv weights (folded); channel clip ranges', xlabel='weight', yscale='log')
obs_h = MinMaxObserver(); obs_p = PercentileObserver(); obs_m = MSEObserver()
with no_grad(): act = Sequential(*[m for m in cnn][:10])(Tensor(X_train[:512])).data   # Linear 9
act = np.maximum(act, 0)
for o in (obs_h, obs_p, obs_m): o(act)
ax3.hist(act.ravel(), bins=100)
for o, c in ((obs_h, 'C1'), (obs_p, 'C2'), (obs_m, 'C3')):
    lo, hi = o._range(); ax3.axvline(hi, color=c, ls='--', label=type(o).__name__)
ax3.set(title='first Linear + ReLU outputs; clip ranges', xlabel='activation', yscale='log')
ax3.legend(fontsize=7)
fig.tight_layout()
plt.show()

# %% [markdown]
# ## Optional: why int8 is not faster here, and when it is
#
# The int8 model above runs at about the float model's speed (its time ratio is printed above), not
# faster. NumPy has no int8 matrix product, so the integer kernels widen their operands to float32
# and call the same float32 BLAS the float model uses, to get sums that are exact; they then spend
# extra passes on the output stage. Where they keep up, it is because the quantized model has less
# to do around the products (BatchNorm folded away, ReLU fused into the clamp, max-pooling on one
# byte per value). They do not even save memory traffic: every product first widens the int8 weight
# into a float32 copy, which is why a memory-bound Linear at batch 1 is several times slower in
# int8 than in float32 in `benchmarks/bench_quant.py`.
#
# Where int8 wins on real hardware is visible in the arithmetic intensity, FLOPs per byte moved. A
# layer whose intensity is below the machine's balance point (peak FLOP/s over memory bandwidth,
# measured below for this machine, one thread) is memory-bound, and moving four times fewer bytes
# makes it up to four times faster; above it, the gain comes only from integer instructions that do
# more multiply-adds per cycle (VNNI: four int8 products into an int32 per lane per instruction).
# The count for the layers of the digits CNN, at batch 1 and batch 256, counting weights and
# input/output activations once each (2 FLOPs per multiply-add):

# %%
def layer_cost(m, x_shape, batch, elem_bytes):
    "FLOPs, bytes moved (weights + input + output, each once) for one Conv2d/Linear at `batch`."
    if isinstance(m, Conv2d):
        C, H, W = x_shape
        OH, OW = conv_output_size('cost', (H, W), m.kernel_size, m.stride, m.padding)
        macs, out = m.weight.size * OH * OW, (m.out_channels, OH, OW)
    else: macs, out = m.weight.size, (m.out_features,)
    moved = elem_bytes * (m.weight.size + batch * (np.prod(x_shape) + np.prod(out)))
    return 2 * macs * batch, moved, out

big_a = rng.standard_normal((512, 512), dtype=np.float32)
big_b = rng.standard_normal((512, 512), dtype=np.float32)
# 64 MiB, far beyond the caches
src, dst = np.ones(2**24, np.float32), np.empty(2**24, np.float32)
with blas_threads(1):
    c = compare({'gemm': lambda: big_a @ big_b, 'copy': lambda: np.copyto(dst, src)}, rounds=3)
# (a copy reads and writes every byte)
flops_rate, bandwidth = 2 * 512**3 / c['gemm'].median, 2 * src.nbytes / c['copy'].median
print(f"this machine, 1 thread: float32 GEMM {flops_rate / 1e9:.1f} GFLOP/s, memory "
      f"{bandwidth / 1e9:.1f} GB/s: "
      f"balance point {flops_rate / bandwidth:.1f} FLOP/B")

for batch in (1, 256):
    shape = (1, 8, 8)
    for i, m in enumerate(cnn):
        if isinstance(m, MaxPool2d): shape = (shape[0], shape[1] // 2, shape[2] // 2)
        if isinstance(m, Flatten): shape = (int(np.prod(shape)),)
        if not isinstance(m, (Conv2d, Linear)): continue
        f, b32, out = layer_cost(m, shape, batch, 4)
        _, b8, _ = layer_cost(m, shape, batch, 1)
        bound = 'memory-bound' if f / b32 < flops_rate / bandwidth else 'compute-bound'
        print(f"batch {batch:>3}, layer {i:>2} {type(m).__name__:<7} {f:>12,} FLOPs, float32 "
              f"{f / b32:6.1f} FLOP/B ({bound} in float32 here), int8 {f / b8:6.1f} FLOP/B")
        shape = out

# %% [markdown]
# The labels come from this machine's measured balance point. The linear layers at batch 1, under
# one FLOP per byte, are memory-bound on any CPU: the case where int8 storage and int8 arithmetic
# pay in full, and the case of a language model generating one token at a time, whose weights are
# read once per token. Batching raises the intensity (the weights are read once for the whole batch)
# until a layer is compute-bound, where int8 helps only through instructions that multiply more per
# cycle, which NumPy cannot reach. `benchmarks/bench_quant.py` measures this module's kernels
# against float32 and, where installed, against PyTorch's fbgemm int8 kernels, which do use such
# instructions.
