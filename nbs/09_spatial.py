# %%
#| default_exp core.spatial

# %% [markdown]
# # Spatial
#
# > Convolution as im2col and one matrix product, its gradient through col2im, and pooling.

# %% [markdown]
# An image is a grid, and what a pixel means depends on its neighbours. A `Linear` layer on a
# flattened image ignores that: it learns a separate weight for every pixel, and an edge learned at
# one place means nothing at another. A convolution slides one small filter over every position, so
# the same few weights detect the same pattern anywhere, and the parameter count no longer grows
# with the image.
#
# This module builds, with PyTorch's names, signatures and NCHW layout (batch, channels, height,
# width):
#
# - `conv2d`, first as the direct nested loop that defines it, then as **im2col** (copy every
#   receptive field into a column of a matrix) followed by **one matrix product**, where the
#   arithmetic runs at the speed of BLAS;
# - its gradient rule: two more matrix products and **col2im**, the adjoint of im2col;
# - the `Conv2d` layer with PyTorch's initialisation;
# - `max_pool2d` and `avg_pool2d` with their gradient rules, the `MaxPool2d` and `AvgPool2d` layers,
#   and `Flatten`.
#
# Speed matters here more than anywhere so far: a small convolutional network spends nearly all of
# its time in these ops. The notebook measures the im2col version against the direct loop, and
# `benchmarks/bench_conv.py` measures it against PyTorch.
#
# Every exercise sits between `### BEGIN SOLUTION` and `### END SOLUTION`; the cells under it test
# it at once.

# %%
#| export
import math

import numpy as np
from fastcore.basics import patch
from numpy.lib.stride_tricks import sliding_window_view

from tinytorch.core.tensor import Tensor, zeros
from tinytorch.core.autograd import grad_rule
from tinytorch.core.layers import Module, Parameter, uniform_

# %%
#| hide
from fastcore.test import test_eq, test_fail, test_close
from threadpoolctl import threadpool_limits

from tinytorch.core.tensor import manual_seed, randn, trace_ops
from tinytorch.data.loader import load_digits
from tinytorch.utils.timing import blas_threads, measure
from tinytorch.core.autograd import gradcheck, no_grad
from tinytorch.core.activations import ReLU
from tinytorch.core.layers import Linear, Sequential
from tinytorch.core.losses import CrossEntropyLoss, cross_entropy
from tinytorch.core.optimizers import Adam
from tinytorch.core.training import Batches, Trainer

# %% [markdown]
# ## Convolution, directly
#
# A 2-D convolution layer with weight $W$ of shape $(O, C, K_H, K_W)$ and bias $b$ of shape $(O,)$
# maps an input $x$ of shape $(N, C, H, W)$ to
#
# $$y_{n,o,i,j} = b_o + \sum_{c=0}^{C-1} \sum_{p=0}^{K_H-1} \sum_{q=0}^{K_W-1}
#   W_{o,c,p,q}\; x_{n,c,\,s_H i + p,\; s_W j + q}$$
#
# where $s_H, s_W$ are the strides and $x$ has first been padded with zeros on every side (`padding`
# rows and columns). Strictly this is a cross-correlation: the kernel is not flipped. Every
# framework calls it convolution, and a learned kernel does not care. The output size along one
# axis, for input size $n$, padding $p$, kernel $k$ and stride $s$, is
#
# $$\left\lfloor \frac{n + 2p - k}{s} \right\rfloor + 1.$$
#
# The definition as code: one loop per output element, vectorised only over the $C \cdot K_H \cdot
# K_W$ products of one receptive field. It is the reference every faster version below is checked
# against, and it is slow.

# %%
def conv2d_direct(x: np.ndarray, w: np.ndarray, b=None, stride=(1, 1),
                  padding=(0, 0)) -> np.ndarray:
    "The definition of conv2d, one output element at a time: the reference, for small sizes only."
    (sh, sw), (ph, pw) = stride, padding
    xp = np.pad(x, ((0, 0), (0, 0), (ph, ph), (pw, pw)))                  # (N, C, H+2ph, W+2pw)
    N, O, (KH, KW) = x.shape[0], w.shape[0], w.shape[2:]
    OH, OW = (xp.shape[2] - KH) // sh + 1, (xp.shape[3] - KW) // sw + 1
    y = np.zeros((N, O, OH, OW), x.dtype)
    for n in range(N):
        for o in range(O):
            for i in range(OH):
                for j in range(OW):
                    y[n, o, i, j] = (xp[n, :, i*sh:i*sh + KH, j*sw:j*sw + KW] * w[o]).sum()
    return y if b is None else y + b[:, None, None]

# %% [markdown]
# A worked example to check by hand: the 3x3 image $0, 1, \dots, 8$ and the 2x2 kernel of ones sum
# each 2x2 block, $0+1+3+4 = 8$ at the top left. The kernel $\begin{pmatrix}1 & 0\\ 0 &
# -1\end{pmatrix}$ subtracts the pixel diagonally below-right, which is always 4 more, so with a
# bias of 1 every output is $-3$.

# %%
img = np.arange(9, dtype=np.float32).reshape(1, 1, 3, 3)
test_eq(conv2d_direct(img, np.ones((1, 1, 2, 2), np.float32)), [[[[8., 12.], [20., 24.]]]])
test_eq(conv2d_direct(img, np.array([[[[1., 0.], [0., -1.]]]], np.float32),
                      b=np.array([1.], np.float32)),
        np.full((1, 1, 2, 2), -3.))
test_eq(conv2d_direct(img, np.ones((1, 1, 2, 2), np.float32), padding=(1, 1)).shape, (1, 1, 4, 4))
test_eq(conv2d_direct(img, np.ones((1, 1, 2, 2), np.float32), stride=(2, 2)), [[[[8.]]]])

# %% [markdown]
# ## Arguments and output size
#
# As in PyTorch, `kernel_size`, `stride` and `padding` are each an int (the same for height and
# width) or a pair `(height, width)`. A small helper normalises them and refuses anything else with
# a message that names the op, the argument and the value. `conv_output_size` applies the formula
# above, and refuses an input that is smaller than the kernel even after padding, naming both sizes.

# %%
#| export
def _pair(op: str,          # the op or layer, for error messages
          name: str,        # the argument's name, for error messages
          value,            # an int or a pair of ints
          minimum: int = 1, # smallest allowed value
         ) -> tuple:
    "`value` as a pair of ints `(height, width)`; an int stands for both."
    pair = (value, value) if isinstance(value, (int, np.integer)) else value
    if (not isinstance(pair, (tuple, list)) or len(pair) != 2
            or not all(isinstance(v, (int, np.integer)) and not isinstance(v, bool) and v >= minimum
                       for v in pair)):
        raise ValueError(f"{op}: {name} must be an int >= {minimum} or a pair of them, got "
                         f"{value!r}")
    return int(pair[0]), int(pair[1])

def conv_output_size(op: str, size: tuple, kernel: tuple, stride: tuple, padding: tuple) -> tuple:
    "Output (height, width) of a `kernel` window moving by `stride` over `size` plus `padding`."
    (H, W), (KH, KW), (sh, sw), (ph, pw) = size, kernel, stride, padding
    if H + 2 * ph < KH or W + 2 * pw < KW:
        raise ValueError(f"{op}: input {H}x{W} with padding {(ph, pw)} is smaller than the kernel "
                         f"{KH}x{KW}")
    return (H + 2 * ph - KH) // sh + 1, (W + 2 * pw - KW) // sw + 1

# %%
test_eq(_pair('conv2d', 'stride', 2), (2, 2))
test_eq(_pair('conv2d', 'kernel_size', (3, 5)), (3, 5))
test_eq(_pair('conv2d', 'padding', 0, minimum=0), (0, 0))
test_fail(lambda: _pair('conv2d', 'stride', 0),
          contains="conv2d: stride must be an int >= 1 or a pair of them, got 0")
test_fail(lambda: _pair('conv2d', 'kernel_size', (3, 3, 3)), contains="got (3, 3, 3)")
test_fail(lambda: _pair('conv2d', 'kernel_size', 2.5), contains="got 2.5")
# LeNet's first layer
test_eq(conv_output_size('conv2d', (28, 28), (5, 5), (1, 1), (0, 0)), (24, 24))
# padding 1 keeps the size
test_eq(conv_output_size('conv2d', (32, 32), (3, 3), (1, 1), (1, 1)), (32, 32))
# (7+2-3)//2+1, (8-2)//3+1
test_eq(conv_output_size('conv2d', (7, 8), (3, 2), (2, 3), (1, 0)), (4, 3))
test_fail(lambda: conv_output_size('conv2d', (2, 2), (3, 3), (1, 1), (0, 0)),
          contains="conv2d: input 2x2 with padding (0, 0) is smaller than the kernel 3x3")

# %% [markdown]
# ## im2col: every receptive field as a column
#
# The sum in the definition is a dot product between the weights of one output channel, flattened to
# $C K_H K_W$ numbers, and the receptive field of one output position, flattened the same way. Lay
# out all receptive fields as the columns of one matrix $X_{col}$ of shape $(C K_H K_W,\ N\, O_H
# O_W)$, reshape the weight to $W_{row}$ of shape $(O,\ C K_H K_W)$, and the whole layer is one
# matrix product:
#
# $$Y = W_{row}\, X_{col} \qquad (O,\ N\, O_H O_W).$$
#
# That product is where all the arithmetic is, and BLAS does it many times faster than any loop we
# could write. The price is memory: every input pixel is copied into up to $K_H K_W$ columns.
#
# Building $X_{col}$ needs no loop over pixels. `sliding_window_view` gives every window of the
# padded input as a *view*: an array of shape $(\dots, O_H, O_W, K_H, K_W)$ whose strides step
# through the same memory, so nothing is copied. Taking every `stride`-th window is slicing that
# view. A transpose (another view) puts the axes in the order of the matrix, and the final `reshape`
# makes the one copy.
#
# The layout is chosen for the matrix product. The rows are ordered $(c, p, q)$ to match
# `weight.reshape(O, -1)`, and the columns $(n, i, j)$, so that both operands of the product are
# C-contiguous and the result splits into $(O, N, O_H, O_W)$. To make that cheap, the padded input
# is stored channel-first, $(C, N, H_p, W_p)$, which is one small copy of the input.

# %%
#| export
def _pad_channels_first(x: np.ndarray,  # (N, C, H, W)
                        padding: tuple, # (ph, pw) zeros added on each side
                       ) -> np.ndarray:
    "`x` zero-padded and transposed to (C, N, H + 2ph, W + 2pw), one copy."
    (N, C, H, W), (ph, pw) = x.shape, padding
    xp = np.zeros((C, N, H + 2 * ph, W + 2 * pw), x.dtype)               # (C, N, Hp, Wp)
    xp[:, :, ph:ph + H, pw:pw + W] = x.transpose(1, 0, 2, 3)
    return xp

# %%
xp = _pad_channels_first(np.ones((2, 3, 4, 5), np.float32), (1, 2))
test_eq(xp.shape, (3, 2, 6, 9))
test_eq(xp.sum(), 2 * 3 * 4 * 5)
test_eq(xp[:, :, 0].sum() + xp[:, :, :, :2].sum(), 0)                  # the border is zero

# %%
#| export
def im2col(x: np.ndarray,   # input images (N, C, H, W)
           kernel_size,     # (KH, KW) or an int
           stride=1,        # (sh, sw) or an int
           padding=0,       # (ph, pw) or an int
          ) -> np.ndarray:
    "Each receptive field of `x` as a column: (C*KH*KW, N*OH*OW), rows (c, kh, kw), cols (n, i, j)."
    (KH, KW), (sh, sw) = (_pair('im2col', 'kernel_size', kernel_size),
                          _pair('im2col', 'stride', stride))
    padding = _pair('im2col', 'padding', padding, minimum=0)
    if x.ndim != 4: raise ValueError(f"im2col: expected 4-D input (N, C, H, W), got shape "
                                     f"{x.shape}")
    N, C, H, W = x.shape
    OH, OW = conv_output_size('im2col', (H, W), (KH, KW), (sh, sw), padding)
    ### BEGIN SOLUTION
    xp = _pad_channels_first(x, padding)                                       # (C, N, Hp, Wp)
    # (C, N, OH, OW, KH, KW), a view
    win = sliding_window_view(xp, (KH, KW), axis=(2, 3))[:, :, ::sh, ::sw]
    # (C*KH*KW, N*OH*OW), one copy
    return win.transpose(0, 4, 5, 1, 2, 3).reshape(C * KH * KW, N * OH * OW)
    ### END SOLUTION

# %% [markdown]
# The 3x3 image $0, \dots, 8$ with a 2x2 kernel has four windows, and each row of $X_{col}$ holds
# one kernel position across them: row $(p, q) = (0, 0)$ is the top-left pixel of every window, $0,
# 1, 3, 4$.

# %%
cols = im2col(img, 2)
test_eq(cols, [[0., 1., 3., 4.], [1., 2., 4., 5.], [3., 4., 6., 7.], [4., 5., 7., 8.]])
test_eq(cols.dtype, np.float32)
test_eq(im2col(img, 2, stride=2), [[0.], [1.], [3.], [4.]])
test_eq(im2col(img, 2, padding=1)[:, 0], [0., 0., 0., 0.])  # the first window is all padding
test_eq(im2col(np.zeros((2, 3, 7, 8)), (3, 2), stride=(2, 3), padding=(1, 0)).shape,
        (3 * 3 * 2, 2 * 4 * 3))
test_fail(lambda: im2col(img, 4),
          contains="im2col: input 3x3 with padding (0, 0) is smaller than the kernel 4x4")
test_fail(lambda: im2col(img[0], 2),
          contains="im2col: expected 4-D input (N, C, H, W), got shape (1, 3, 3)")

# %% [markdown]
# The window view really is a view: it shares memory with the padded input and reports more elements
# than that memory holds. The copy happens once, in `reshape`.

# %%
xp = _pad_channels_first(np.random.default_rng(0).standard_normal((4, 3, 16, 16), dtype=np.float32),
                         (1, 1))
win = sliding_window_view(xp, (3, 3), axis=(2, 3))
print(f"padded input {xp.shape}: {xp.nbytes:,} bytes; window view {win.shape} shares its memory "
      f"({np.shares_memory(win, xp)}) and would need {win.size * 4:,} bytes as a copy")
test_eq(np.shares_memory(win, xp), True)

# %% [markdown]
# ## The forward pass as one matrix product
#
# With $X_{col}$ built, the layer is `weight.reshape(O, -1) @ cols`, of shape $(O, N O_H O_W)$.
# Splitting the columns gives $(O, N, O_H, O_W)$; the output must be $(N, O, O_H, O_W)$, so one
# transposing copy remains, and the bias is added in that same pass (`np.add(..., out=)`), not in a
# second one.
#
# The column matrix is kept in the op's `ctx` when the weight needs a gradient: the weight gradient
# needs exactly this matrix, and keeping it saves building it again in the backward pass. The graph
# is released after `backward`, and with it the matrix.
#
# The checks come first: a 4-D input and weight, matching channel counts, a bias with one entry per
# output channel, and one floating-point dtype for all three (PyTorch refuses mixed dtypes too; here
# a float64 input would otherwise silently turn the whole network into float64).

# %%
#| export
def _check_conv2d(x: Tensor, weight: Tensor, bias):
    "Raise a clear error unless `x` (N, C, H, W), `weight` (O, C, KH, KW) and `bias` (O,) fit."
    if x.ndim != 4: raise ValueError(f"conv2d: expected 4-D input (N, C, H, W), got shape "
                                     f"{x.shape}")
    if weight.ndim != 4:
        raise ValueError(f"conv2d: expected 4-D weight (out_channels, in_channels, KH, KW), got "
                         f"shape {weight.shape}")
    if x.shape[1] != weight.shape[1]:
        raise ValueError(f"conv2d: input of shape {x.shape} has {x.shape[1]} channels, "
                         f"but weight of shape {weight.shape} expects {weight.shape[1]}")
    if bias is not None and bias.shape != weight.shape[:1]:
        raise ValueError(f"conv2d: bias of shape {bias.shape} does not match {weight.shape[0]} "
                         f"output channels")
    dtypes = {x.dtype, weight.dtype} | ({bias.dtype} if bias is not None else set())
    if len(dtypes) > 1 or x.dtype.kind != 'f':
        raise TypeError(f"conv2d: input, weight and bias must share one floating-point dtype, got "
                        f"{x.dtype}, {weight.dtype}"
                        + (f", {bias.dtype}" if bias is not None else ""))

# %%
#| export
def conv2d(x: Tensor,       # input (N, C, H, W)
           weight: Tensor,  # (out_channels, C, KH, KW)
           bias=None,       # (out_channels,) or None
           stride=1,        # int or (sh, sw)
           padding=0,       # int or (ph, pw): zeros added on each side
          ) -> Tensor:
    "Convolve `x` (N, C, H, W) with `weight` (O, C, KH, KW) by im2col and one GEMM: (N, O, OH, OW)."
    _check_conv2d(x, weight, bias)
    stride = _pair('conv2d', 'stride', stride)
    padding = _pair('conv2d', 'padding', padding, minimum=0)
    (N, C, H, W), (O, _, KH, KW) = x.shape, weight.shape
    OH, OW = conv_output_size('conv2d', (H, W), (KH, KW), stride, padding)
    # Set `cols` to x's column matrix (C*KH*KW, N*OH*OW) and `y` to the weight rows times it
    # (O, N*OH*OW).
    ### BEGIN SOLUTION
    cols = im2col(x.data, (KH, KW), stride, padding)                         # (C*KH*KW, N*OH*OW)
    y = weight.data.reshape(O, -1) @ cols  # (O, N*OH*OW), the one GEMM
    ### END SOLUTION
    y = y.reshape(O, N, OH, OW).transpose(1, 0, 2, 3)  # (N, O, OH, OW), a view
    out = np.empty((N, O, OH, OW), y.dtype)
    if bias is None: np.copyto(out, y)
    else: np.add(y, bias.data[:, None, None], out=out)  # transpose and bias in one pass
    parents = (x, weight) if bias is None else (x, weight, bias)
    # the gradient rule reads stride, padding and, if the weight needs a gradient, the column matrix
    return Tensor._from_op(out, 'conv2d', parents, stride=stride, padding=padding,
                           cols=cols if weight.requires_grad else None)

# %% [markdown]
# The worked examples from above, and then random shapes, non-square kernels, strides and padding,
# all against the direct definition. The tolerance: each output is a sum of $C K_H K_W$ (here at
# most a few dozen) float32 products of numbers of order 1, computed in a different order by the two
# versions, so they may differ by about that many units of float32 rounding, $2^{-24}$, times the
# size of the terms; $10^{-4}$ leaves room for that and catches any wrong index.

# %%
test_eq(conv2d(Tensor(img), Tensor(np.ones((1, 1, 2, 2)))).numpy(), [[[[8., 12.], [20., 24.]]]])
test_eq(conv2d(Tensor(img), Tensor([[[[1., 0.], [0., -1.]]]]), Tensor([1.])).numpy(),
        np.full((1, 1, 2, 2), -3.))
rng = np.random.default_rng(0)
for (N, C, O, H, W), k, s, p in [((2, 3, 4, 7, 6), (3, 3), (1, 1), (1, 1)),
                                  ((1, 5, 2, 9, 8), (3, 2), (2, 3), (1, 0)),
                                  ((3, 1, 2, 5, 5), (5, 5), (1, 1), (2, 2)),
                                  ((2, 2, 3, 6, 7), (1, 4), (3, 1), (0, 2))]:
    x, w, b = (rng.standard_normal(sh, dtype=np.float32) for sh in ((N, C, H, W), (O, C) + k, (O,)))
    test_close(conv2d(Tensor(x), Tensor(w), Tensor(b), s, p).numpy(), conv2d_direct(x, w, b, s, p),
               eps=1e-4)
test_eq(conv2d(Tensor(x), Tensor(w)).dtype, np.float32)

# %% [markdown]
# The failure paths: each error names the op and the shapes or dtypes involved.

# %%
x, w = randn(2, 3, 8, 8), randn(4, 3, 3, 3)
test_fail(lambda: conv2d(randn(3, 8, 8), w),
          contains="conv2d: expected 4-D input (N, C, H, W), got shape (3, 8, 8)")
test_fail(lambda: conv2d(randn(2, 5, 8, 8), w),
          contains="conv2d: input of shape (2, 5, 8, 8) has 5 channels, "
                   "but weight of shape (4, 3, 3, 3) expects 3")
test_fail(lambda: conv2d(randn(2, 3, 2, 8), w),
          contains="conv2d: input 2x8 with padding (0, 0) is smaller than the kernel 3x3")
test_eq(conv2d(randn(2, 3, 2, 8), w, padding=1).shape, (2, 4, 2, 8))     # padding makes it fit
test_fail(lambda: conv2d(x, w, randn(3)),
          contains="bias of shape (3,) does not match 4 output channels")
test_fail(lambda: conv2d(x, randn(4, 3, 3)), contains="expected 4-D weight")
test_fail(lambda: conv2d(Tensor(x.numpy(), dtype=np.float64), w), contains="got float64, float32")
test_fail(lambda: conv2d(x, w, stride=0), contains="conv2d: stride must be an int >= 1")
with trace_ops() as ops: conv2d(x, w, randn(4), stride=2, padding=1)
test_eq(ops, [('conv2d', ('cols', 'padding', 'stride'))])

# %% [markdown]
# ## col2im: the adjoint of im2col
#
# The backward pass needs to send a gradient with respect to the columns, $\partial L/\partial
# X_{col}$, back to the image. im2col copied each pixel into every column whose window covers it; by
# the chain rule, a value used several times receives the sum of the gradients of its uses. So
# col2im *adds* each column entry back to the pixel it came from. In linear-algebra terms, im2col is
# a linear map $A$ and col2im is its transpose $A^T$.
#
# No loop over pixels is needed: for each of the $K_H K_W$ kernel positions $(p, q)$, the row block
# of the columns for that position is one strided slice of the padded image, and all of them are
# added in one vectorised `+=`. Overlapping windows (stride smaller than the kernel) make the slices
# overlap, which is exactly where the sums come from. Finally the padding is cut off; gradient that
# landed on padding belongs to no input.

# %%
#| export
def col2im(cols: np.ndarray,  # (C*KH*KW, N*OH*OW), laid out as `im2col` returns
           input_shape: tuple, # (N, C, H, W) of the image the columns came from
           kernel_size,        # (KH, KW) or an int
           stride=1,           # (sh, sw) or an int
           padding=0,          # (ph, pw) or an int
          ) -> np.ndarray:
    "Add each column entry back to the pixel it was copied from (adjoint of im2col): (N, C, H, W)."
    (KH, KW), (sh, sw) = (_pair('col2im', 'kernel_size', kernel_size),
                          _pair('col2im', 'stride', stride))
    (ph, pw), (N, C, H, W) = _pair('col2im', 'padding', padding, minimum=0), input_shape
    OH, OW = conv_output_size('col2im', (H, W), (KH, KW), (sh, sw), (ph, pw))
    ### BEGIN SOLUTION
    c6 = cols.reshape(C, KH, KW, N, OH, OW)                                   # a view
    xp = np.zeros((C, N, H + 2 * ph, W + 2 * pw), cols.dtype)                # (C, N, Hp, Wp)
    for p in range(KH):
        for q in range(KW):  # one slice per kernel position
            xp[:, :, p:p + sh * (OH - 1) + 1:sh, q:q + sw * (OW - 1) + 1:sw] += c6[:, p, q]
    # (N, C, H, W)
    return np.ascontiguousarray(xp[:, :, ph:ph + H, pw:pw + W].transpose(1, 0, 2, 3))
    ### END SOLUTION

# %% [markdown]
# On the 3x3 example, col2im of all-ones columns counts how many windows cover each pixel: the
# centre is in all four 2x2 windows, a corner in one. And the defining property of an adjoint,
# $\langle A x, c\rangle = \langle x, A^T c\rangle$ for every $x$ and $c$, holds on random data with
# strides and padding, in float64 to rounding error.

# %%
test_eq(col2im(np.ones((4, 4), np.float32), (1, 1, 3, 3), 2),
        [[[[1., 2., 1.], [2., 4., 2.], [1., 2., 1.]]]])
test_eq(col2im(np.ones((4, 1)), (1, 1, 3, 3), 2, stride=2),
        [[[[1., 1., 0.], [1., 1., 0.], [0., 0., 0.]]]])
for shape, k, s, p in [((2, 3, 7, 6), (3, 3), (1, 1), (1, 1)),
                       ((2, 2, 9, 8), (3, 2), (2, 3), (2, 1))]:
    xr = rng.standard_normal(shape)
    cr = rng.standard_normal(im2col(xr, k, s, p).shape)
    test_close((im2col(xr, k, s, p) * cr).sum(), (xr * col2im(cr, shape, k, s, p)).sum(), eps=1e-10)

# %% [markdown]
# ## The gradient rule
#
# In matrix form the forward pass is $Y = W_{row} X_{col} + b$, with $Y$ of shape $(O, N O_H O_W)$.
# Write $G$ for $\partial L / \partial Y$ in the same layout (the upstream gradient, transposed from
# $(N, O, O_H, O_W)$ by one copy). The rules of the matrix product give all three gradients:
#
# - weight: $\partial L/\partial W_{row} = G\, X_{col}^T$, shape $(O, C K_H K_W)$, one GEMM with the
#   cached columns;
# - bias: $\partial L/\partial b_o = \sum_{n,i,j} G_{o,(n,i,j)}$, a sum over every axis except the
#   channel;
# - input: $\partial L/\partial X_{col} = W_{row}^T G$, shape $(C K_H K_W,\ N O_H O_W)$, one GEMM,
#   then col2im.
#
# Each piece is computed only for an input that requires a gradient: the first layer of a network
# has an image as input, and its costliest piece, the input gradient, is skipped entirely.
#
# Two layout details are worth a measurement (below). $W_{row}^T$ is a transposed view. BLAS accepts
# it without a copy, but whether the product then runs at full speed depends on the BLAS and the
# shapes. Copying the small weight matrix to C order costs next to nothing and gives BLAS its
# fastest layout, so the rule prepares `w_t` that way before the exercise uses it. And the weight
# gradient $G X_{col}^T$ sums over the long axis $N O_H O_W$ and has two short ones, $O$ and $C K_H
# K_W$. It can be computed as written or as $(X_{col} G^T)^T$, the same numbers. On one thread the
# two run alike. On two threads, while the other core was busy with other work, OpenBLAS ran this
# kind of product slower whenever its first operand had fewer rows than the result
# has columns (the cell under "Where the time goes" prints both orientations on one and two
# threads; what it shows depends on the load at the time). So a small helper, `_gemm_nt` below,
# puts the operand with more rows first, and the exercise uses it for $G X_{col}^T$.
#
# $\partial L/\partial X_{col}$ is as large as the column matrix, tens of megabytes for a typical
# layer, and is allocated afresh in every backward pass. That is cheap because `keep_freed_memory`
# (called when the autograd module is imported) makes the C library keep freed memory for reuse
# instead of returning it to the operating system; the acceleration module measures the difference.

# %%
#| export
def _gemm_nt(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    "`a @ b.T` for 2-D arrays, as `(b @ a.T).T` when `b` has more rows: the faster order for BLAS."
    return a @ b.T if a.shape[0] >= b.shape[0] else (b @ a.T).T

# %%
a, b = np.arange(6.).reshape(2, 3), np.arange(12.).reshape(4, 3)
test_eq(_gemm_nt(a, b), a @ b.T)
test_eq(_gemm_nt(b, a), b @ a.T)

# %%
#| export
@grad_rule('conv2d')
def _conv2d_grad(g, out, x, weight, bias=None, *, stride, padding, cols):
    "From g (N, O, OH, OW): gx (N, C, H, W), gw (O, C, KH, KW), gb (O,); None where not required."
    O, C, KH, KW = weight.shape
    G = g.transpose(1, 0, 2, 3).reshape(O, -1)                               # (O, N*OH*OW), a copy
    w_t = np.ascontiguousarray(weight.data.reshape(O, -1).T)                 # (C*KH*KW, O), C order
    # Set gw (G cols^T, by `_gemm_nt(G, cols)`), gx (col2im of `w_t` G) and gb (G summed per
    # channel), each None unless that input requires a gradient (`cols` is None if gw is not).
    ### BEGIN SOLUTION
    gw = gx = gb = None
    if weight.requires_grad: gw = _gemm_nt(G, cols).reshape(weight.shape)           # (O, C, KH, KW)
    if x.requires_grad: gx = col2im(w_t @ G, x.shape, (KH, KW), stride, padding)  # (N, C, H, W)
    if bias is not None and bias.requires_grad: gb = G.sum(axis=1)                  # (O,)
    ### END SOLUTION
    return (gx, gw) if bias is None else (gx, gw, gb)

# %% [markdown]
# `gradcheck` compares the three gradients with finite differences, in float64, on square and
# non-square kernels, with strides and padding. `tests/test_09_spatial.py` repeats this over shapes
# drawn at random by hypothesis.

# %%
x, w, b = (randn(*sh, seed=s, dtype=np.float64).requires_grad_()
           for s, sh in enumerate([(2, 3, 5, 5), (4, 3, 3, 3), (4,)]))
test_eq(gradcheck(lambda x, w, b: conv2d(x, w, b), x, w, b), True)
x, w, b = (randn(*sh, seed=s, dtype=np.float64).requires_grad_()
           for s, sh in enumerate([(2, 2, 6, 5), (3, 2, 3, 2), (3,)], start=3))
test_eq(gradcheck(lambda x, w, b: conv2d(x, w, b, stride=(2, 1), padding=(1, 2)), x, w, b), True)
x, w = (randn(*sh, seed=s, dtype=np.float64).requires_grad_()
        for s, sh in [(6, (1, 2, 7, 8)), (7, (2, 2, 2, 4))])
test_eq(gradcheck(lambda x, w: conv2d(x, w, stride=3, padding=1), x, w), True)

# %% [markdown]
# Only the inputs that require a gradient get one, and with a frozen weight the column matrix is not
# kept.

# %%
xi, wf = Tensor(rng.standard_normal((2, 3, 5, 5))), Parameter(rng.standard_normal((4, 3, 3, 3)))
y = conv2d(xi, wf)
y.sum().backward()
test_eq((xi.grad, wf.grad.shape, wf.grad.dtype), (None, (4, 3, 3, 3), np.float32))
wf.requires_grad = False
y = conv2d(Tensor(rng.standard_normal((2, 3, 5, 5)), requires_grad=True), wf)
test_eq(y._ctx[2]['cols'], None)

# %% [markdown]
# ## How much faster
#
# The direct loop against im2col on a stated layer: a batch of 8 images with 4 channels of 16x16
# pixels, to 8 channels, kernel 3, padding 1. The two agree to float32 rounding. Timing protocol, as
# in the earlier modules: `measure` (one warm-up call, then the median of 5 samples of `number`
# calls). From here on the notebook runs with one BLAS thread (`threadpool_limits(1)`), as
# `benchmarks/bench_conv.py` does, so the figures do not depend on how many cores happen to be free.

# %%
blas_limit = threadpool_limits(1)   # one BLAS thread for the rest of the notebook

# %%
x, w, b = (rng.standard_normal(sh, dtype=np.float32) for sh in ((8, 4, 16, 16), (8, 4, 3, 3), (8,)))
xt, wt, bt = Tensor(x), Tensor(w), Tensor(b)
test_close(conv2d(xt, wt, bt, 1, 1).numpy(), conv2d_direct(x, w, b, (1, 1), (1, 1)), eps=1e-4)
t_direct = measure(lambda: conv2d_direct(x, w, b, (1, 1), (1, 1)), number=1, repeats=3).median
t_im2col = measure(lambda: conv2d(xt, wt, bt, 1, 1), number=20, repeats=5).median
print(f"conv 4->8 channels, k=3, padding 1, input {x.shape}: direct loop {t_direct*1e3:.1f} ms, "
      f"im2col + GEMM {t_im2col*1e3:.3f} ms, {t_direct / t_im2col:.0f}x faster")

# %% [markdown]
# ## Where the time goes
#
# The same pieces on the layer of the speed benchmark: a batch of 64 images with 32 channels of
# 16x16 pixels to 64 channels, kernel 3, padding 1. Each line times one piece of the forward or
# backward pass on its own, the GEMMs next to the copies that feed them, and includes the product
# with the transposed weight view for comparison. The full comparison with PyTorch is
# `benchmarks/bench_conv.py`.

# %%
x = rng.standard_normal((64, 32, 16, 16), dtype=np.float32)
w2 = rng.standard_normal((64, 32 * 9), dtype=np.float32)                       # (O, C*KH*KW)
cols = im2col(x, 3, 1, 1)                                                      # (288, 16384)
G = rng.standard_normal((64, cols.shape[1]), dtype=np.float32)                 # (O, N*OH*OW)
w2_t = np.ascontiguousarray(w2.T)                                               # (C*KH*KW, O)
dcols = w2_t @ G                                                               # (288, 16384)
pieces = {'im2col': lambda: im2col(x, 3, 1, 1), 'forward GEMM': lambda: w2 @ cols,
          'weight GEMM': lambda: (cols @ G.T).T, 'input GEMM, C-order weight': lambda: w2_t @ G,
          'input GEMM, transposed view': lambda: w2.T @ G,
          'col2im': lambda: col2im(dcols, x.shape, 3, 1, 1)}
times = {k: measure(f, number=1, repeats=5).median for k, f in pieces.items()}
for k, t in times.items(): print(f"{k:30} {t*1e3:6.2f} ms")
flops = 2 * w2.shape[0] * w2.shape[1] * cols.shape[1]
print(f"each GEMM: {flops/1e6:.0f} MFLOP, forward GEMM at "
      f"{flops / times['forward GEMM'] / 1e9:.1f} GFLOP/s")

# %% [markdown]
# The weight gradient of this layer in both orientations, on one and on two BLAS threads; here $O =
# 64$ rows against $C K_H K_W = 288$, so the rule uses the second. What the two-thread line shows
# depends on how busy the machine's other cores are at the time.

# %%
for n_threads in (1, 2):
    with blas_threads(n_threads):
        t_a, t_b = (measure(f, number=1, repeats=1).median
                    for f in (lambda: G @ cols.T, lambda: (cols @ G.T).T))
    print(f"{n_threads} thread(s): G {G.shape} @ cols.T {cols.T.shape} {t_a*1e3:7.2f} ms, "
          f"(cols {cols.shape} @ G.T {G.T.shape}).T {t_b*1e3:7.2f} ms")

# %% [markdown]
# ## The Conv2d layer
#
# `Conv2d(in_channels, out_channels, kernel_size, stride=1, padding=0, bias=True)` holds `weight` of
# shape $(O, C, K_H, K_W)$ and `bias` of shape $(O,)$, PyTorch's names and layout, so a PyTorch
# state dict loads.
#
# Initialisation follows PyTorch: `kaiming_uniform_(weight, a=sqrt(5))`, which (as the layers module
# showed for `Linear`) is $U(-1/\sqrt{\text{fan\_in}},\ 1/\sqrt{\text{fan\_in}})$, and the bias from
# the same range. For a convolution, $\text{fan\_in} = C K_H K_W$: the number of inputs one output
# sums over. Draws come from the tensor module's generator, so `manual_seed` makes a model
# reproducible.

# %%
#| export
class Conv2d(Module):
    "2-D convolution layer over (N, C, H, W) input, with PyTorch's parameters and initialisation."
    def __init__(self,
                 in_channels: int,   # C of the input
                 out_channels: int,  # O, the number of filters
                 kernel_size,        # int or (KH, KW)
                 stride=1,           # int or (sh, sw)
                 padding=0,          # int or (ph, pw): zeros added on each side
                 bias: bool = True,  # add a learnable bias per output channel?
                ):
        super().__init__()
        if not all(isinstance(n, (int, np.integer)) and n > 0 for n in (in_channels, out_channels)):
            raise ValueError(f"Conv2d: in_channels and out_channels must be positive integers, "
                             f"got {in_channels=}, {out_channels=}")
        self.in_channels, self.out_channels = in_channels, out_channels
        self.kernel_size, self.stride = _pair('Conv2d', 'kernel_size',
                                              kernel_size), _pair('Conv2d', 'stride', stride)
        self.padding = _pair('Conv2d', 'padding', padding, minimum=0)
        # 1/sqrt(fan_in)
        bound = 1 / math.sqrt(in_channels * self.kernel_size[0] * self.kernel_size[1])
        self.weight = uniform_(Parameter(zeros(out_channels, in_channels, *self.kernel_size)),
                               -bound, bound)
        self.bias = uniform_(Parameter(zeros(out_channels)), -bound, bound) if bias else None

# %%
#| export
@patch
def forward(self: Conv2d, x: Tensor) -> Tensor:
    "(N, in_channels, H, W) -> (N, out_channels, OH, OW)."
    return conv2d(x, self.weight, self.bias, self.stride, self.padding)

@patch
def extra_repr(self: Conv2d) -> str:
    "The settings as PyTorch prints them: padding and bias only if not the default."
    s = f"{self.in_channels}, {self.out_channels}, "
    s += f"kernel_size={self.kernel_size}, stride={self.stride}"
    if self.padding != (0, 0): s += f", padding={self.padding}"
    return s + (", bias=False" if self.bias is None else "")

# %%
manual_seed(0)
conv = Conv2d(3, 8, 3, padding=1)
test_eq([(n, p.shape) for n, p in conv.named_parameters()],
        [('weight', (8, 3, 3, 3)), ('bias', (8,))])
test_eq(repr(conv), "Conv2d(3, 8, kernel_size=(3, 3), stride=(1, 1), padding=(1, 1))")
test_eq(repr(Conv2d(1, 2, (3, 5), stride=2, bias=False)),
        "Conv2d(1, 2, kernel_size=(3, 5), stride=(2, 2), bias=False)")
test_eq(conv(randn(2, 3, 10, 10)).shape, (2, 8, 10, 10))
test_eq(Conv2d(3, 8, (5, 3), stride=(2, 1))(randn(2, 3, 11, 7)).shape, (2, 8, 4, 5))
test_eq(conv.weight.dtype, np.float32)
# reproducible
manual_seed(0); test_eq(Conv2d(3, 8, 3, padding=1).weight.numpy(), conv.weight.numpy())
test_fail(lambda: conv(randn(2, 4, 10, 10)),
          contains="has 4 channels, but weight of shape (8, 3, 3, 3) expects 3")
test_fail(lambda: Conv2d(0, 8, 3), contains="Conv2d: in_channels and out_channels must be positive "
                                            "integers, got in_channels=0")
test_fail(lambda: Conv2d(3, 8, 0), contains="Conv2d: kernel_size must be an int >= 1")

# %% [markdown]
# The weights fill the range $\pm 1/\sqrt{\text{fan\_in}}$ and no more, with the standard deviation
# of a uniform distribution, $\text{bound}/\sqrt 3$.

# %%
big = Conv2d(64, 128, 3)
bound = 1 / math.sqrt(64 * 9)
wv = big.weight.numpy()
print(f"fan_in {64 * 9}: bound {bound:.5f}, largest |w| {np.abs(wv).max():.5f}, "
      f"std {wv.std():.5f} (uniform: {bound / math.sqrt(3):.5f})")
test_eq(bool(np.abs(wv).max() <= bound and np.abs(big.bias.numpy()).max() <= bound), True)
# std of n = 73,728 draws: error ~ sqrt(0.2/n) = 0.2%
test_close(wv.std() / (bound / math.sqrt(3)), 1., eps=0.01)

# %% [markdown]
# ## Max pooling
#
# `max_pool2d` keeps the largest value of each `kernel_size` window, moving by `stride` (by default
# the kernel size, so windows do not overlap). It halves the resolution with a 2x2 kernel, and makes
# a detected feature insensitive to a shift of a pixel or so.
#
# Vectorised, the forward pass visits the $K_H K_W$ positions of the window, not the pixels: for
# each position $(p, q)$ the strided slice `x[:, :, p::sh, q::sw]` holds that position of every
# window at once, and a running `np.maximum` over those slices is the result.

# %%
#| export
def _pool_args(op: str, x: Tensor, kernel_size, stride) -> tuple:
    "Checked `(kernel, stride, (OH, OW))` for pooling `x`; `stride` None means the kernel size."
    if x.ndim != 4: raise ValueError(f"{op}: expected 4-D input (N, C, H, W), got shape {x.shape}")
    kernel = _pair(op, 'kernel_size', kernel_size)
    stride = kernel if stride is None else _pair(op, 'stride', stride)
    return kernel, stride, conv_output_size(op, x.shape[2:], kernel, stride, (0, 0))

def _window(p: int, q: int, stride: tuple, out_size: tuple) -> tuple:
    "Index of kernel position (p, q) in every window: a strided slice of shape (N, C, OH, OW)."
    (sh, sw), (OH, OW) = stride, out_size
    return (slice(None), slice(None), slice(p, p + sh * (OH - 1) + 1, sh),
            slice(q, q + sw * (OW - 1) + 1, sw))

# %%
#| export
def max_pool2d(x: Tensor,       # input (N, C, H, W)
               kernel_size,     # int or (KH, KW)
               stride=None,     # int or (sh, sw); None: the kernel size
              ) -> Tensor:
    "Largest value of each window of `x` (N, C, H, W): shape (N, C, OH, OW)."
    (KH, KW), stride, out_size = _pool_args('max_pool2d', x, kernel_size, stride)
    # Set `out` (N, C, OH, OW) to the running maximum over the slices `x.data[_window(p, q, ...)]`.
    ### BEGIN SOLUTION
    # (N, C, OH, OW), a view
    out = x.data[_window(0, 0, stride, out_size)]
    for k in range(1, KH * KW):
        out = np.maximum(out, x.data[_window(k // KW, k % KW, stride, out_size)])
    ### END SOLUTION
    # a 1x1 kernel leaves a view of x
    if out.base is not None: out = out.copy()
    # the gradient rule reads the kernel and stride
    return Tensor._from_op(out, 'max_pool2d', (x,), kernel=(KH, KW), stride=stride)

# %% [markdown]
# A 4x4 example to check by hand, the output shape for an uneven kernel and stride, the failure
# paths, and what the op records for its gradient rule.

# %%
x = Tensor([[[[1., 2., 5., 0.], [3., 4., 1., 1.], [0., 0., 7., 7.], [0., 0., 7., 7.]]]])
test_eq(max_pool2d(x, 2).numpy(), [[[[4., 5.], [0., 7.]]]])
test_eq(max_pool2d(randn(2, 3, 7, 5), (3, 2), stride=(2, 1)).shape, (2, 3, 3, 4))
test_fail(lambda: max_pool2d(randn(2, 3, 1, 5), 2),
          contains="max_pool2d: input 1x5 with padding (0, 0) is smaller than the kernel 2x2")
test_fail(lambda: max_pool2d(randn(3, 4, 4), 2),
          contains="max_pool2d: expected 4-D input (N, C, H, W), got shape (3, 4, 4)")
with trace_ops() as ops: max_pool2d(randn(1, 1, 4, 4), 2)
test_eq(ops, [('max_pool2d', ('kernel', 'stride'))])

# %% [markdown]
# The gradient of a maximum goes only to the element that attained it. The rule finds that element
# by visiting the kernel positions in order again: where a position's slice equals the output, that
# position won, unless an earlier position already did. So when several elements of a window tie,
# the gradient goes to one of them, the first in the window, which is what PyTorch does. A boolean
# `free` marks the outputs whose gradient is still to be placed. With overlapping windows an input
# can win several windows, and `+=` adds up all of its gradients.
#
# Recomputing the comparison here is cheaper than recording the winner in the forward pass:
# comparing and multiplying by a mask are fast, streaming operations in NumPy, while writing through
# a mask (`np.copyto(..., where=)` or `a[mask] = k`), the direct way to record the winner, is slow.
# A measurement after the tests shows the difference on this machine.

# %%
#| export
@grad_rule('max_pool2d')
def _max_pool2d_grad(g, out, x, kernel, stride):
    "From g (N, C, OH, OW): gx (N, C, H, W), each g at the first element of its window equal to out"
    gx = np.zeros(x.shape, g.dtype)
    free = np.ones(out.shape, bool)  # (N, C, OH, OW): outputs whose gradient is not yet placed
    overlap = any(s < k for s, k in zip(stride, kernel))
    for k in range(kernel[0] * kernel[1]):
        win = _window(k // kernel[1], k % kernel[1], stride, out.shape[2:])
        # Set `hit` (N, C, OH, OW, bool) to where this kernel position is the first in its window
        # to equal out, and remove those outputs from `free`.
        ### BEGIN SOLUTION
        hit = (x.data[win] == out) & free
        free &= ~hit
        ### END SOLUTION
        if overlap: gx[win] += g * hit           # an input in several windows adds up their parts
        else: np.multiply(g, hit, out=gx[win])   # each input is in one window: write, do not add
    return (gx,)

# %% [markdown]
# A 4x4 example to check by hand for the gradient: a window of four equal values, whose gradient
# goes to its first element only, as in PyTorch; and overlapping windows.

# %%
x = Tensor([[[[1., 2., 5., 0.], [3., 4., 1., 1.], [0., 0., 7., 7.], [0., 0., 7., 7.]]]],
           requires_grad=True)
max_pool2d(x, 2).backward(np.array([[[[1., 2.], [3., 4.]]]]))
# ties: first element
test_eq(x.grad, [[[[0., 0., 2., 0.], [0., 1., 0., 0.], [3., 0., 4., 0.], [0., 0., 0., 0.]]]])
xo = Tensor(np.array([[[[1., 3., 2.], [0., 9., 0.], [4., 0., 5.]]]]), requires_grad=True)
max_pool2d(xo, 2, stride=1).sum().backward()  # the 9 wins all four windows
test_eq(xo.grad, [[[[0., 0., 0.], [0., 4., 0.], [0., 0., 0.]]]])

# %% [markdown]
# Finite differences agree away from ties (a step of $10^{-6}$ must not change which element wins,
# so the values are distinct and spaced out).

# %%
# distinct values 0.1 apart in random order (randn could put two within a finite-difference step)
perm = lambda *shape: Tensor(rng.permutation(math.prod(shape)).reshape(shape) * 0.1,
                             dtype=np.float64, requires_grad=True)
test_eq(gradcheck(lambda x: max_pool2d(x, 2), perm(2, 3, 4, 6)), True)
test_eq(gradcheck(lambda x: max_pool2d(x, (3, 2), stride=(1, 2)), perm(1, 2, 5, 6)), True)

# %% [markdown]
# The measurement promised above, on arrays the size of a max pool's output in the speed benchmark:
# selecting values by multiplying with a mask, against writing them through the mask.

# %%
v, dst = rng.standard_normal((2, 64, 64, 8, 8), dtype=np.float32)
mask = v > dst
t_mul = measure(lambda: v * mask, number=20, repeats=5).median
t_masked = measure(lambda: np.copyto(dst, v, where=mask), number=20, repeats=5).median
print(f"{v.size:,} float32: v * mask {t_mul*1e3:.3f} ms, "
      f"np.copyto(dst, v, where=mask) {t_masked*1e3:.3f} ms "
      f"({t_masked / t_mul:.1f}x)")

# %% [markdown]
# ## Average pooling
#
# `avg_pool2d` takes the mean of each window: the same slices, added up and divided by $K_H K_W$.
# Its gradient spreads each output's gradient evenly over the window, $1/(K_H K_W)$ to each element.

# %%
#| export
def avg_pool2d(x: Tensor,       # input (N, C, H, W)
               kernel_size,     # int or (KH, KW)
               stride=None,     # int or (sh, sw); None: the kernel size
              ) -> Tensor:
    "Mean of each window."
    (KH, KW), stride, out_size = _pool_args('avg_pool2d', x, kernel_size, stride)
    if x.dtype.kind != 'f': raise TypeError(f"avg_pool2d: expected a floating-point input, got "
                                            f"dtype {x.dtype}")
    out = x.data[_window(0, 0, stride, out_size)].copy()                     # (N, C, OH, OW)
    for k in range(1, KH * KW): out += x.data[_window(k // KW, k % KW, stride, out_size)]
    out /= KH * KW
    return Tensor._from_op(out, 'avg_pool2d', (x,), kernel=(KH, KW), stride=stride)

@grad_rule('avg_pool2d')
def _avg_pool2d_grad(g, out, x, kernel, stride):
    "Each output's gradient, divided by the window size, to every element of its window."
    gx, share = np.zeros(x.shape, g.dtype), g / (kernel[0] * kernel[1])
    for k in range(kernel[0] * kernel[1]): gx[_window(k // kernel[1], k % kernel[1], stride,
                                                      out.shape[2:])] += share
    return (gx,)

# %%
x = Tensor(np.arange(16, dtype=np.float32).reshape(1, 1, 4, 4))
test_eq(avg_pool2d(x, 2).numpy(), [[[[2.5, 4.5], [10.5, 12.5]]]])  # (0+1+4+5)/4 at the top left
test_eq(avg_pool2d(x, 3, stride=1).numpy(), [[[[5., 6.], [9., 10.]]]])
test_fail(lambda: avg_pool2d(Tensor(np.ones((1, 1, 2, 2), np.int64)), 2),
          contains="avg_pool2d: expected a floating-point input, got dtype int64")
test_eq(gradcheck(lambda x: avg_pool2d(x, 2),
                  randn(2, 3, 4, 6, seed=7, dtype=np.float64).requires_grad_()), True)
test_eq(gradcheck(lambda x: avg_pool2d(x, (2, 3), stride=(1, 2)),
                  randn(1, 2, 5, 7, seed=8, dtype=np.float64).requires_grad_()), True)
with trace_ops() as ops: avg_pool2d(randn(1, 1, 4, 4), 2)
test_eq(ops, [('avg_pool2d', ('kernel', 'stride'))])

# %% [markdown]
# ## The pooling layers and Flatten
#
# `MaxPool2d` and `AvgPool2d` are the functions as layers. `Flatten(start_dim=1)` reshapes $(N, C,
# H, W)$ to $(N, C H W)$, the step between the convolutional part of a network and its `Linear`
# classifier; it keeps the batch axis, as in PyTorch. It is a reshape, so its gradient is the
# reshape rule of the autograd module and it copies nothing when the input is contiguous.

# %%
#| export
class MaxPool2d(Module):
    "Largest value of each `kernel_size` window, moving by `stride` (default: the kernel size)."
    def __init__(self, kernel_size, stride=None):
        super().__init__()
        self.kernel_size = _pair('MaxPool2d', 'kernel_size', kernel_size)
        self.stride = self.kernel_size if stride is None else _pair('MaxPool2d', 'stride', stride)
    def forward(self, x: Tensor) -> Tensor: return max_pool2d(x, self.kernel_size, self.stride)
    def extra_repr(self) -> str: return f"kernel_size={self.kernel_size}, stride={self.stride}"

class AvgPool2d(Module):
    "Mean of each `kernel_size` window, moving by `stride` (default: the kernel size)."
    def __init__(self, kernel_size, stride=None):
        super().__init__()
        self.kernel_size = _pair('AvgPool2d', 'kernel_size', kernel_size)
        self.stride = self.kernel_size if stride is None else _pair('AvgPool2d', 'stride', stride)
    def forward(self, x: Tensor) -> Tensor: return avg_pool2d(x, self.kernel_size, self.stride)
    def extra_repr(self) -> str: return f"kernel_size={self.kernel_size}, stride={self.stride}"

# %%
#| export
class Flatten(Module):
    "Merge axes `start_dim`..`end_dim` into one; by default everything but the batch axis."
    def __init__(self, start_dim: int = 1, end_dim: int = -1):
        super().__init__()
        self.start_dim, self.end_dim = start_dim, end_dim
    def forward(self, x: Tensor) -> Tensor: return x.flatten(self.start_dim, self.end_dim)
    def extra_repr(self) -> str: return f"start_dim={self.start_dim}, end_dim={self.end_dim}"

# %%
x = randn(2, 3, 4, 4)
test_eq(MaxPool2d(2)(x).numpy(), max_pool2d(x, 2).numpy())
test_eq(AvgPool2d(2, stride=1)(x).shape, (2, 3, 3, 3))
test_eq(repr(MaxPool2d(2)), "MaxPool2d(kernel_size=(2, 2), stride=(2, 2))")
test_eq(Flatten()(x).shape, (2, 48))
test_eq(Flatten(0)(x).shape, (96,))
test_eq(np.shares_memory(Flatten()(x).data, x.data), True)
test_eq(repr(Flatten()), "Flatten(start_dim=1, end_dim=-1)")
test_eq(list(MaxPool2d(2).parameters()), [])
test_fail(lambda: MaxPool2d(0),
          contains="MaxPool2d: kernel_size must be an int >= 1 or a pair of them, got 0")

# %% [markdown]
# Pooling is cheap next to convolution: on the benchmark layer's output, a batch of 64 with 64
# channels of 16x16, forward and backward of a 2x2 max pool against forward and backward of the
# convolution that produced it.

# %%
xc = Tensor(rng.standard_normal((64, 32, 16, 16), dtype=np.float32), requires_grad=True)
conv_b = Conv2d(32, 64, 3, padding=1)
xm = Tensor(rng.standard_normal((64, 64, 16, 16), dtype=np.float32), requires_grad=True)
g_conv, g_pool = np.ones((64, 64, 16, 16), np.float32), np.ones((64, 64, 8, 8), np.float32)
t_conv = measure(lambda: conv_b(xc).backward(g_conv), number=1, repeats=5).median
t_pool = measure(lambda: max_pool2d(xm, 2).backward(g_pool), number=1, repeats=5).median
print(f"forward+backward: Conv2d(32, 64, 3, padding=1) {t_conv*1e3:.1f} ms, "
      f"MaxPool2d(2) {t_pool*1e3:.2f} ms "
      f"({t_pool / t_conv:.1%} of the convolution)")

# %% [markdown]
# ## A small convolutional network
#
# The pieces in a LeNet-style classifier for the 8x8 handwritten digits that the training module
# used for its multilayer perceptron: two convolutions with ReLU and max pooling, then `Flatten` and
# a `Linear` layer. The shapes through the network:

# %%
manual_seed(0)
cnn = Sequential(Conv2d(1, 16, 3, padding=1), ReLU(), MaxPool2d(2),       # (N, 16, 4, 4)
                 Conv2d(16, 32, 3, padding=1), ReLU(), MaxPool2d(2),      # (N, 32, 2, 2)
                 Flatten(), Linear(32 * 2 * 2, 10))                       # (N, 10)
h = randn(5, 1, 8, 8)
for m in cnn:
    h = m(h)
    print(f"{type(m).__name__:9} -> {h.shape}")
print(f"parameters: {sum(p.size for p in cnn.parameters()):,}")

# %% [markdown]
# Trained with the `Trainer` on the same fixed split as the multilayer perceptron, with 20% of the
# images held out:

# %%
# images (N, 1, 8, 8) in [0, 1]
X_train, y_train, X_test, y_test = load_digits()
trainer = Trainer(cnn, CrossEntropyLoss(), Adam(cnn.parameters(), lr=5e-3), progress=False)
hist = trainer.fit(Batches(X_train, y_train, 64, shuffle=True, seed=0), epochs=10,
                   val_data=Batches(X_test, y_test, 256))
print(f"CNN, 10 epochs in {sum(hist['seconds']):.1f} s: test accuracy {hist['val_acc'][-1]:.2%}, "
      f"train accuracy {hist['train_acc'][-1]:.2%}")
assert hist['val_acc'][-1] >= 0.95

# %% [markdown]
# ## Summary
#
# `conv2d` computes a convolution as im2col, a copy of every receptive field into one matrix built
# from a strided window view, and one matrix product. Its gradient is two more matrix products, one
# of them followed by col2im, the adjoint of im2col, which adds each gradient back to the pixel it
# came from. `Conv2d` wraps it with PyTorch's parameters and initialisation. `max_pool2d` and
# `avg_pool2d` are vectorised over the window positions, and the max-pool gradient goes to the
# recorded winner of each window. `Flatten` joins the convolutional part to a classifier.
