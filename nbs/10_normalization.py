# %%
#| default_exp core.normalization

# %% [markdown]
# # Normalization
#
# > Batch normalization, layer normalization and dropout, each one op with a hand-derived gradient.

# %% [markdown]
# A layer's input distribution moves while the layers before it learn. Normalization layers pin it
# down: they subtract a mean and divide by a standard deviation, then let the network rescale and
# shift the result with two learnable vectors, $\gamma$ (`weight`) and $\beta$ (`bias`). They differ
# in what they average over:
#
# - `BatchNorm1d` and `BatchNorm2d` (Ioffe and Szegedy, 2015) normalise each channel over the batch
#   (and the spatial positions), and keep running averages of those statistics for evaluation, when
#   there may be no batch to average;
# - `LayerNorm` (Ba, Kiros and Hinton, 2016) normalises each example over its own trailing
#   dimensions, so it behaves the same in training and evaluation and for a batch of one;
#   transformers use it.
#
# `Dropout` (Srivastava et al., 2014) sits here too: like batch normalization it computes
# differently in training and evaluation, and it is the other common tool that changes how a network
# trains rather than what it computes.
#
# Each layer calls one op (`batch_norm`, `layer_norm`, `dropout`) with a gradient rule of its own,
# not a chain of the tensor module's small ops: these layers run on every step of training, and the
# fused rule is shorter, faster and uses less memory than the chain. The batch-norm gradient is
# derived below and every rule is checked against finite differences. The module ends by training a
# small network on handwritten digits with and without batch normalization and dropout.
#
# Every exercise sits between `### BEGIN SOLUTION` and `### END SOLUTION`; the cells under it test
# it at once.

# %%
#| export
import math
import numbers

import numpy as np
from fastcore.basics import patch

from tinytorch.core.tensor import Tensor, rand, ones, zeros
from tinytorch.core.autograd import grad_rule
from tinytorch.core.layers import Module, Parameter

# %%
#| hide
import tracemalloc

import matplotlib.pyplot as plt
from fastcore.test import test_eq, test_fail, test_close

from tinytorch.core.tensor import manual_seed, randn, trace_ops
from tinytorch.data.loader import load_digits
from tinytorch.core.autograd import gradcheck, no_grad
from tinytorch.utils.timing import Timer, blas_threads, compare
from tinytorch.core.activations import ReLU
from tinytorch.core.layers import Linear, Sequential
from tinytorch.core.losses import CrossEntropyLoss
from tinytorch.core.optimizers import SGD
from tinytorch.core.training import Batches, Trainer
from tinytorch.core.spatial import Conv2d, MaxPool2d, Flatten

# %% [markdown]
# ## Batch normalization: the forward pass
#
# The input has shape $(N, C, \ldots)$: a batch of $N$ examples with $C$ channels, and possibly a
# length $L$ or a height and width $H, W$ after them. Batch normalization treats each channel $c$
# separately. It collects the channel's $m$ values over the batch and the positions ($m = N$, $NL$
# or $NHW$) and computes
#
# $$\mu = \frac1m\sum_i x_i, \qquad \sigma^2 = \frac1m\sum_i (x_i - \mu)^2, \qquad
# \hat x_i = \frac{x_i - \mu}{\sqrt{\sigma^2 + \varepsilon}}, \qquad y_i = \gamma_c\,\hat x_i +
# \beta_c .$$
#
# $\varepsilon$ (`eps`) keeps the division finite for a channel that is constant in the batch.
# Normalisation uses the biased variance (divide by $m$), because that is the variance of the
# numbers at hand.
#
# In evaluation there may be a single example, so the layer uses running estimates instead of batch
# statistics. After each training batch, as in PyTorch,
#
# $$\text{running} \leftarrow (1 - \text{momentum}) \cdot \text{running}
#   + \text{momentum} \cdot \text{batch},$$
#
# where the batch variance in this average is the unbiased one, $\frac{m}{m-1}\sigma^2$: the running
# variance estimates the variance of the whole population of activations, not of one batch.

# %% [markdown]
# ### A layout for per-channel work
#
# The forward and backward passes need per-channel sums: of $x$, of $(x-\mu)^2$, of $g$ and of
# $g\hat x$. The obvious NumPy call, `x.sum(axis=(0, 2, 3))` on an `(N, C, H, W)` array, is correct,
# but NumPy runs it as many short loops over the few positions of one channel of one example.
# Row-major order puts each example's channels one after another, so the same memory viewed as `(N,
# C·P)`, with $P$ positions per channel, holds one long row per example. Summing over the rows is
# one pass that adds whole rows together; what is left is a vector of length $C \cdot P$, and
# summing each channel's $P$ entries of it is cheap. A per-channel vector that has to broadcast
# against the rows is repeated $P$ times (`np.repeat`). `(N, C)` inputs are the case $P = 1$.

# %%
#| export
def _as_rows(x: np.ndarray) -> np.ndarray:
    "View `x` (N, C, ...) as (N, C*P): a row per example, each channel's P positions side by side."
    return x.reshape(x.shape[0], math.prod(x.shape[1:]))

def _channel_sum(a2: np.ndarray, C: int) -> np.ndarray:
    "Per-channel sums (C,) of `a2` (N, C*P): over the rows, then over each channel's P entries."
    return a2.sum(axis=0).reshape(C, -1).sum(axis=1)

# %%
x = np.arange(12.).reshape(2, 3, 2)                               # (N=2, C=3, P=2)
test_eq(_as_rows(x).shape, (2, 6))
test_eq(_channel_sum(_as_rows(x), 3), x.sum(axis=(0, 2)))           # (0+1+6+7, 2+3+8+9, 4+5+10+11)
test_eq(_as_rows(x) * np.repeat([1., 0., 2.], 2), x.reshape(2, 6) * [1, 1, 0, 0, 2, 2])

# %% [markdown]
# The two ways to take per-channel sums, timed on a batch of the size a small convolutional network
# sees. Timing protocol: `compare` from the timing notebook, which after one warm-up call each runs
# 7 rounds in which every candidate takes a sample of calls in turn (alternating, so all see the
# same load on a shared machine); the figure is the median over the rounds of the time per call. The
# values are whole numbers, so both orders of summation give exactly the same float32 sums.

# %%
# (64, 16, 8, 8)
xa = np.round(np.random.default_rng(0).standard_normal((64, 16, 8, 8)) * 4).astype(np.float32)
test_eq(_channel_sum(_as_rows(xa), 16), xa.sum(axis=(0, 2, 3)))
t = compare({'axes': lambda: xa.sum(axis=(0, 2, 3)),
             'rows': lambda: _channel_sum(_as_rows(xa), 16)}, number=50)
print(f"per-channel sums of {xa.shape} float32: sum(axis=(0, 2, 3)) {t['axes'].median*1e6:.0f} us, "
      f"rows then channels {t['rows'].median*1e6:.0f} us, ratio {t.ratio('axes', 'rows'):.1f}x")

# %% [markdown]
# Now the checks. A channel with a single value in the batch has variance 0 and normalises to 0
# whatever the input, so training on it is an error, as in PyTorch; in evaluation the running
# statistics make it fine.

# %%
#| export
def _check_batch_norm(input: Tensor, running_mean, running_var, weight, bias, training: bool):
    "Raise a clear error if `batch_norm` cannot run on these arguments."
    if input.ndim < 2: raise ValueError(f"batch_norm: expected input of shape (N, C, ...), got "
                                        f"shape {input.shape}")
    C = input.shape[1]
    for name, t in (('running_mean', running_mean), ('running_var', running_var),
                    ('weight', weight), ('bias', bias)):
        if t is not None and t.shape != (C,):
            raise ValueError(f"batch_norm: {name} has shape {t.shape}, expected ({C},) for input "
                             f"of shape {input.shape}")
    if training and input.size <= C:
        raise ValueError(f"batch_norm: expected more than 1 value per channel when training, "
                         f"got input of shape {input.shape}; use a larger batch or eval()")
    if not training and (running_mean is None or running_var is None):
        raise ValueError("batch_norm: running_mean and running_var are needed when not training")

# %% [markdown]
# The op itself. In training it normalises with the batch's statistics and, when running statistics
# are given, updates them in place; in evaluation it normalises with the running statistics. The
# result records what the gradient rule will need: $\hat x$, the per-channel
# $1/\sqrt{\sigma^2+\varepsilon}$, and the mode. `weight` and `bias` are optional, so they enter the
# op's inputs only when present, and `has` says which are there.

# %%
#| export
def batch_norm(input: Tensor,           # (N, C, ...)
               running_mean,            # (C,) Tensor or None; updated in place when training
               running_var,             # (C,) Tensor or None; updated in place when training
               weight=None,             # gamma, (C,) Tensor or None
               bias=None,               # beta, (C,) Tensor or None
               # normalise with batch statistics (and update the running ones)?
               training: bool = False,
               momentum: float = 0.1,   # weight of the batch in the running averages
               eps: float = 1e-5,       # added to the variance
              ) -> Tensor:
    "Normalise each channel (axis 1) by batch (training) or running statistics; scale and shift."
    _check_batch_norm(input, running_mean, running_var, weight, bias, training)
    x2 = _as_rows(input.data)                                          # (N, C*P)
    N, C = input.shape[:2]
    P = x2.shape[1] // C                                               # positions per channel
    # Set `inv_std` (C,) to 1/sqrt(var + eps) and `xhat` (N, C*P) to the normalised rows: with the
    # batch's mean and biased variance when training (and then, if running_mean is given, update
    # running_mean and running_var in place with the batch mean and the unbiased variance), else
    # with the running ones.
    ### BEGIN SOLUTION
    if training:
        m = N * P                                                      # values per channel
        mean = _channel_sum(x2, C) / m                                 # (C,)
        xc = x2 - np.repeat(mean, P)                                   # (N, C*P)
        var = _channel_sum(xc * xc, C) / m                             # (C,), biased
        if running_mean is not None:
            running_mean.data[...] = (1 - momentum) * running_mean.data + momentum * mean
            running_var.data[...] = ((1 - momentum) * running_var.data
                                     + momentum * var * (m / (m - 1)))
    else:
        var = running_var.data.astype(x2.dtype, copy=False)            # (C,)
        xc = x2 - np.repeat(running_mean.data.astype(x2.dtype, copy=False), P)
    inv_std = 1 / np.sqrt(var + eps)                                   # (C,)
    xhat = xc * np.repeat(inv_std, P)                                  # (N, C*P)
    ### END SOLUTION
    out = xhat if weight is None else xhat * np.repeat(weight.data, P)  # scale and shift
    if bias is not None:               # in place, unless out is xhat, which the rule reads
        b = np.repeat(bias.data, P)
        out = out + b if out is xhat else np.add(out, b, out=out)
    params = tuple(p for p in (weight, bias) if p is not None)
    # the gradient rule reads xhat (N, C*P), inv_std (C,), the mode, and which parameters are there
    return Tensor._from_op(out.reshape(input.shape), 'batch_norm', (input, *params),
                           xhat=xhat, inv_std=inv_std, training=training,
                           has=(weight is not None, bias is not None))

# %% [markdown]
# A worked example. Two channels of two values each, with $\varepsilon = 0$ so the numbers are
# exact: channel 0 holds 1 and 3 (mean 2, variance 1), channel 1 holds 10 and 30 (mean 20, variance
# 100). Both normalise to $-1, 1$. The running averages start at mean 0 and variance 1; with
# momentum 0.1 the mean becomes $0.1 \cdot (2, 20)$ and the variance $0.9 + 0.1 \cdot (2, 200)$,
# because the unbiased variance of two values is twice the biased one.

# %%
x = Tensor([[1., 10.], [3., 30.]])                                # (N=2, C=2)
rm, rv = zeros(2), ones(2)
test_eq(batch_norm(x, rm, rv, training=True, eps=0.).numpy(), [[-1., -1.], [1., 1.]])
test_close(rm.numpy(), [0.2, 2.], eps=1e-6)
test_close(rv.numpy(), [0.9 + 0.2, 0.9 + 20.], eps=1e-5)  # float32 rounding of values near 21
w, b = Tensor([2., 1.]), Tensor([0., 5.])
test_eq(batch_norm(x, None, None, w, b, training=True, eps=0.).numpy(), [[-2., 4.], [2., 6.]])

# %% [markdown]
# In evaluation the same input is normalised with the running statistics, and nothing is updated. A
# batch of one example is fine there; in training it is an error unless there are positions to
# average over.

# %%
y = batch_norm(x, rm, rv, training=False, eps=0.)
test_close(y.numpy(), (x.numpy() - rm.numpy()) / np.sqrt(rv.numpy()), eps=1e-6)
test_close(rm.numpy(), [0.2, 2.], eps=1e-6)                       # unchanged
test_eq(batch_norm(Tensor([[1., 2.]]), rm, rv).shape, (1, 2))     # (1, C) in evaluation
# 9 values per channel
test_eq(batch_norm(randn(1, 2, 3, 3), None, None, training=True).shape, (1, 2, 3, 3))
test_fail(lambda: batch_norm(Tensor([[1., 2.]]), rm, rv, training=True),
          contains="expected more than 1 value per channel when training, "
                   "got input of shape (1, 2)")
test_fail(lambda: batch_norm(randn(4, 3), rm, rv, training=True),
          contains="running_mean has shape (2,), expected (3,)")
test_fail(lambda: batch_norm(randn(4, 2), None, None), contains="needed when not training")
test_fail(lambda: batch_norm(randn(4), None, None, training=True),
          contains="expected input of shape (N, C, ...), got shape (4,)")
with trace_ops() as ops: batch_norm(randn(4, 2), zeros(2), ones(2), ones(2), training=True)
test_eq(ops, [('batch_norm', ('has', 'inv_std', 'training', 'xhat'))])

# %% [markdown]
# ## BatchNorm1d and BatchNorm2d
#
# The layers hold the state and pick the mode. As in PyTorch:
#
# - `weight` ($\gamma$) starts at ones and `bias` ($\beta$) at zeros, so a new layer only
#   normalises; `affine=False` leaves them out.
# - `running_mean` (zeros), `running_var` (ones) and `num_batches_tracked` (an int64 count) are
#   buffers: saved in the `state_dict`, not trained. `track_running_stats=False` leaves them out,
#   and the layer then uses batch statistics in evaluation too.
# - `momentum=None` replaces the exponential average by the plain average of all batches so far, by
#   using $1/\text{num\_batches\_tracked}$ as the momentum.
#
# `BatchNorm1d` takes `(N, C)` or `(N, C, L)`; `BatchNorm2d` takes `(N, C, H, W)`. They share
# everything but that check, in the base class `_BatchNorm`.

# %%
#| export
class _BatchNorm(Module):
    "What `BatchNorm1d` and `BatchNorm2d` share: parameters, running statistics, the forward pass."
    def __init__(self,
                 num_features: int,                # C, the size of axis 1
                 eps: float = 1e-5,                # added to the variance
                 # weight of each batch in the running averages; None: plain average
                 momentum: float | None = 0.1,
                 affine: bool = True,  # learn a scale (weight) and a shift (bias) per channel?
                 track_running_stats: bool = True, # keep running statistics for evaluation?
                ):
        super().__init__()
        name = type(self).__name__
        if not isinstance(num_features, numbers.Integral) or num_features < 1:
            raise ValueError(f"{name}: num_features must be a positive integer, got "
                             f"{num_features!r}")
        if momentum is not None and not 0 <= momentum <= 1:
            raise ValueError(f"{name}: momentum must be in [0, 1] or None, got {momentum}")
        if eps < 0: raise ValueError(f"{name}: eps must be >= 0, got {eps}")
        self.num_features, self.eps, self.momentum = num_features, eps, momentum
        self.affine, self.track_running_stats = affine, track_running_stats
        self.weight = Parameter(ones(num_features)) if affine else None    # gamma, (C,)
        self.bias = Parameter(zeros(num_features)) if affine else None     # beta, (C,)
        stats = ((zeros(num_features), ones(num_features), Tensor(0)) if track_running_stats
                 else (None,) * 3)
        for buf, t in zip(('running_mean', 'running_var', 'num_batches_tracked'), stats):
            self.register_buffer(buf, t)

    def extra_repr(self) -> str:
        return (f"{self.num_features}, eps={self.eps}, momentum={self.momentum}, "
                f"affine={self.affine}, track_running_stats={self.track_running_stats}")

# %% [markdown]
# `forward` checks the input and calls `batch_norm`. Batch statistics are used in training, and
# always when there are no running statistics; the running statistics are updated only in training.

# %%
#| export
def _check_features(bn: _BatchNorm, x: Tensor):
    "Raise if `x` does not have `bn.num_features` channels in axis 1."
    if x.shape[1] != bn.num_features:
        raise ValueError(f"{type(bn).__name__}: expected {bn.num_features} channels (num_features) "
                         f"in axis 1, got input of shape {x.shape}")

@patch
def forward(self: _BatchNorm, x: Tensor) -> Tensor:
    "Normalise `x` by batch statistics in training (updating the running ones), else running ones."
    self._check_input_dim(x)
    _check_features(self, x)
    update = self.training and self.track_running_stats
    n = int(self.num_batches_tracked.data) + 1 if update else 0
    momentum = (1 / n if self.momentum is None else self.momentum) if update else 0.
    out = batch_norm(x, self.running_mean, self.running_var, self.weight, self.bias,
                     self.training or self.running_mean is None, momentum, self.eps)
    if update: self.num_batches_tracked.data[...] = n
    return out

# %%
#| export
class BatchNorm1d(_BatchNorm):
    "Batch normalization of `(N, C)` or `(N, C, L)` inputs over the batch (and length) per channel."
    def _check_input_dim(self, x: Tensor):
        if x.ndim not in (2, 3):
            raise ValueError(f"BatchNorm1d: expected 2-D or 3-D input, (N, C) or (N, C, L), got "
                             f"shape {x.shape}")

class BatchNorm2d(_BatchNorm):
    "Batch normalization of `(N, C, H, W)` inputs over the batch and the positions, per channel."
    def _check_input_dim(self, x: Tensor):
        if x.ndim != 4: raise ValueError(f"BatchNorm2d: expected 4-D input (N, C, H, W), got shape "
                                         f"{x.shape}")

# %% [markdown]
# The names, shapes and order of the state follow PyTorch, so a `state_dict` lines up entry by entry
# with one from `torch.nn.BatchNorm2d`.

# %%
bn = BatchNorm2d(3)
test_eq(list(bn.state_dict()),
        ['weight', 'bias', 'running_mean', 'running_var', 'num_batches_tracked'])
test_eq([p.shape for p in bn.parameters()], [(3,), (3,)])
test_eq((bn.weight.numpy(), bn.bias.numpy()), (np.ones(3), np.zeros(3)))
test_eq((bn.num_batches_tracked.dtype, bn.num_batches_tracked.item()), (np.int64, 0))
test_eq(repr(bn), "BatchNorm2d(3, eps=1e-05, momentum=0.1, affine=True, track_running_stats=True)")
test_eq(list(BatchNorm1d(4, affine=False, track_running_stats=False).state_dict()), [])
test_fail(lambda: BatchNorm1d(0),
          contains="BatchNorm1d: num_features must be a positive integer, got 0")
test_fail(lambda: BatchNorm1d(3, momentum=2.),
          contains="momentum must be in [0, 1] or None, got 2.0")

# %% [markdown]
# Training mode: the output of every channel has mean 0 and variance close to 1 (variance
# $\sigma^2/(\sigma^2+\varepsilon)$ exactly), the running statistics move towards the batch's, and
# the count goes up. Evaluation mode: the output uses the running statistics and nothing changes.

# %%
manual_seed(0)
x = randn(8, 3, 4, 4) * 5 + 2                                      # (8, 3, 4, 4), mean 2, std 5
y = bn(x)
test_close(y.numpy().mean(axis=(0, 2, 3)), np.zeros(3), eps=1e-5)
test_close(y.numpy().var(axis=(0, 2, 3)), np.ones(3), eps=1e-4)    # 1 - eps/var, var about 25
test_close(bn.running_mean.numpy(), 0.1 * x.numpy().mean(axis=(0, 2, 3)), eps=1e-5)
test_close(bn.running_var.numpy(), 0.9 + 0.1 * x.numpy().var(axis=(0, 2, 3), ddof=1), eps=1e-4)
test_eq(bn.num_batches_tracked.item(), 1)
state = bn.state_dict()
ye = bn.eval()(x)
rm3, rv3 = state['running_mean'][:, None, None], state['running_var'][:, None, None]  # (3, 1, 1)
test_close(ye.numpy(), (x.numpy() - rm3) / np.sqrt(rv3 + 1e-5), eps=1e-4)
for k, v in bn.state_dict().items(): test_eq(v, state[k])          # evaluation changes nothing
test_eq(bn(randn(1, 3, 2, 2)).shape, (1, 3, 2, 2))

# %% [markdown]
# `momentum=None` averages all batches equally; without running statistics the layer normalises
# every batch with its own statistics, also in evaluation; `affine=False` leaves the normalised
# values as they are.

# %%
bn1 = BatchNorm1d(2, momentum=None)
# batch means (1, 2) and (5, 4)
batches = [Tensor([[0., 0.], [2., 4.]]), Tensor([[4., 0.], [6., 8.]])]
for xb in batches: bn1(xb)
test_close(bn1.running_mean.numpy(), [3., 3.], eps=1e-6)  # the plain average of the two batch means
test_eq(bn1.num_batches_tracked.item(), 2)
bn_nt = BatchNorm1d(2, track_running_stats=False).eval()
test_close(bn_nt(batches[0]).numpy(), [[-1., -1.], [1., 1.]], eps=1e-5)
test_eq(BatchNorm1d(2, affine=False).weight, None)
test_eq(BatchNorm1d(3)(randn(4, 3, 5)).shape, (4, 3, 5))           # (N, C, L)

# %% [markdown]
# The failure paths name the layer and the shape. A batch of one in training fails before the count
# is touched.

# %%
bn1 = BatchNorm1d(3)
test_fail(lambda: bn1(randn(1, 3)), contains="expected more than 1 value per channel when "
                                             "training, got input of shape (1, 3)")
test_eq(bn1.num_batches_tracked.item(), 0)
test_fail(lambda: bn1(randn(4, 3, 2, 2)),
          contains="BatchNorm1d: expected 2-D or 3-D input, (N, C) or (N, C, L), "
                   "got shape (4, 3, 2, 2)")
test_fail(lambda: BatchNorm2d(3)(randn(4, 3, 2)),
          contains="BatchNorm2d: expected 4-D input (N, C, H, W), got shape (4, 3, 2)")
test_fail(lambda: bn1(randn(4, 2)),
          contains="BatchNorm1d: expected 3 channels (num_features) in axis 1, "
                   "got input of shape (4, 2)")
test_eq(bn1.eval()(randn(1, 3)).shape, (1, 3))

# %% [markdown]
# ## The gradient of batch normalization
#
# Fix one channel, write its $m$ values as $x_1, \ldots, x_m$, and let $s = (\sigma^2 +
# \varepsilon)^{-1/2}$, so $\hat x_i = (x_i - \mu)s$ and $y_i = \gamma\hat x_i + \beta$. The rule
# receives $g_i = \partial L/\partial y_i$. The parameters are easy, since each $y_i$ depends on
# them directly:
#
# $$\frac{\partial L}{\partial \beta} = \sum_i g_i, \qquad
#   \frac{\partial L}{\partial \gamma} = \sum_i g_i\hat x_i .$$
#
# The input is harder: every $\hat x_i$ depends on every $x_j$, through $\mu$ and $s$. The pieces:
# $\partial\mu/\partial x_j = 1/m$; $\partial\sigma^2/\partial x_j = 2(x_j - \mu)/m$ (the path
# through $\mu$ contributes $-\frac2m\sum_i(x_i-\mu)\cdot\frac1m = 0$); and so $\partial s/\partial
# x_j = -\frac12 s^3\,\partial\sigma^2/\partial x_j = -s^2\hat x_j/m$. Then, with $\delta_{ij}$
# being 1 when $i = j$ and 0 otherwise,
#
# $$\frac{\partial\hat x_i}{\partial x_j}
#   = s\Big(\delta_{ij} - \frac1m\Big) + (x_i - \mu)\frac{\partial s}{\partial x_j}
# = s\Big(\delta_{ij} - \frac1m - \frac{\hat x_i\hat x_j}{m}\Big).$$
#
# By the chain rule, with $\partial L/\partial\hat x_i = \gamma g_i$,
#
# $$\frac{\partial L}{\partial x_j} = \sum_i \gamma g_i\frac{\partial\hat x_i}{\partial x_j}
# = \gamma s\Big(g_j - \frac1m\sum_i g_i - \frac{\hat x_j}{m}\sum_i g_i\hat x_i\Big) = \frac{\gamma
# s}{m}\Big(m\,g_j - \frac{\partial L}{\partial\beta} - \hat x_j\,\frac{\partial
# L}{\partial\gamma}\Big).$$
#
# The two sums are the parameter gradients, so the rule computes those first and reuses them. The
# formula reads: take the upstream gradient, remove its mean and its component along $\hat x$, and
# scale by $\gamma s$. Shifting a channel by a constant does not change $\hat x$, so the gradient
# sums to 0 over each channel; with $\varepsilon = 0$, scaling a channel does not change $\hat x$
# either, and the gradient is orthogonal to $\hat x$.
#
# In evaluation $\mu$ and $s$ are the running statistics, constants: $y = \gamma s(x - \mu) + \beta$
# is affine in $x$, and $\partial L/\partial x = \gamma s\, g$.

# %%
#| export
def _split_params(params: tuple, has: tuple) -> tuple:
    "(weight or None, bias or None) from the op's optional inputs `params` and the flags `has`."
    it = iter(params)
    return tuple(next(it) if present else None for present in has)

@grad_rule('batch_norm')
def _batch_norm_grad(g, out, x, *params, xhat, inv_std, training, has):
    "Gradients of `batch_norm` for x, and for weight and bias when present; `xhat` is (N, C*P)."
    weight, bias = _split_params(params, has)
    g2, C = _as_rows(g), g.shape[1]                                    # (N, C*P)
    P = g2.shape[1] // C
    # Set dbeta and dgamma (C,) to the per-channel sums of g and g * xhat, and dx (x's shape) to the
    # input gradient derived above if x requires a gradient (else None).
    ### BEGIN SOLUTION
    dbeta = _channel_sum(g2, C)                                        # (C,)
    dgamma = _channel_sum(g2 * xhat, C)                                # (C,)
    dx = None
    if x.requires_grad:
        scale = np.repeat(inv_std if weight is None else weight.data * inv_std, P)  # gamma s
        if training:
            m = g2.shape[0] * P
            dx = scale * (g2 - (np.repeat(dbeta, P) + xhat * np.repeat(dgamma, P)) / m)  # (N, C*P)
        else: dx = g2 * scale
        dx = dx.reshape(g.shape)
    ### END SOLUTION
    grads = (dx,)
    if weight is not None: grads += (dgamma if weight.requires_grad else None,)
    if bias is not None: grads += (dbeta if bias.requires_grad else None,)
    return grads

# %% [markdown]
# A worked example: one channel holding $-1, -1, 1, 1$ (mean 0, variance 1, so with $\varepsilon =
# 0$, $\hat x = x$ and $s = 1$), $\gamma = 1$, and an upstream gradient of 1 on the first value
# only. Then $\partial L/\partial\beta = 1$, $\partial L/\partial\gamma = -1$, and $\partial
# L/\partial x = \frac14\big(4\,(1,0,0,0) - 1 - (-1)(-1,-1,1,1)\big) = (0.5, -0.5, 0, 0)$: raising
# $x_1$ moves $\hat x_1$ up, but raising $x_2$, its equal, moves $\hat x_1$ down by the same amount
# through the mean and the variance.

# %%
x = Tensor([[-1.], [-1.], [1.], [1.]], requires_grad=True)        # (N=4, C=1)
w, b = Tensor([1.], requires_grad=True), Tensor([0.], requires_grad=True)
g = np.array([[1.], [0.], [0.], [0.]], np.float32)
batch_norm(x, None, None, w, b, training=True, eps=0.).backward(g)
test_eq(x.grad, [[0.5], [-0.5], [0.], [0.]])
test_eq((w.grad, b.grad), ([-1.], [1.]))

# %% [markdown]
# The rule against finite differences, in float64: 2-D, 3-D and 4-D inputs, training and evaluation,
# with and without the parameters. The sum and orthogonality properties are checked too. Wider
# random coverage, with shapes drawn by hypothesis, is in `tests/test_10_normalization.py`.

# %%
gamma, beta = (randn(3, seed=1, dtype=np.float64).requires_grad_(),
               randn(3, seed=2, dtype=np.float64).requires_grad_())
rm64 = Tensor(np.random.default_rng(3).standard_normal(3), dtype=np.float64)
rv64 = Tensor(np.random.default_rng(4).uniform(0.5, 2, 3), dtype=np.float64)
train_bn = lambda x, w=None, b=None, eps=1e-5: batch_norm(x, None, None, w, b, training=True,
                                                          eps=eps)
bn_checks = {
    '(N, C) training':
        lambda: gradcheck(train_bn, randn(5, 3, seed=5, dtype=np.float64).requires_grad_(),
                          gamma, beta),
    '(N, C, L) training':
        lambda: gradcheck(lambda x, w: train_bn(x, w, eps=1e-3),
                          randn(2, 3, 4, seed=6, dtype=np.float64).requires_grad_(), gamma),
    '(N, C, H, W) training':
        lambda: gradcheck(lambda x, b: train_bn(x, None, b),
                          randn(2, 3, 2, 3, seed=7, dtype=np.float64).requires_grad_(), beta),
    '(N, C, H, W) no affine':
        lambda: gradcheck(train_bn, randn(3, 3, 2, 2, seed=8, dtype=np.float64).requires_grad_()),
    '(N, C, H, W) evaluation':
        lambda: gradcheck(lambda x, w, b: batch_norm(x, rm64, rv64, w, b),
                          randn(2, 3, 2, 2, seed=9, dtype=np.float64).requires_grad_(),
                          gamma, beta),
}
for name, check in bn_checks.items(): test_eq(check(), True)
print(f"batch_norm passes gradcheck in {len(bn_checks)} settings: {', '.join(bn_checks)}")

# %%
x = randn(6, 2, 3, seed=10, dtype=np.float64).requires_grad_()
xhat = batch_norm(x, None, None, training=True, eps=0.)
xhat.backward(np.random.default_rng(11).standard_normal(x.shape))
test_close(x.grad.sum(axis=(0, 2)), np.zeros(2), eps=1e-12)  # zero mean per channel
test_close((x.grad * xhat.numpy()).sum(axis=(0, 2)), np.zeros(2), eps=1e-12)  # orthogonal to xhat

# %% [markdown]
# ### One fused op against a chain of small ops
#
# The same layer can be written with the tensor module's ops, and autograd then differentiates it
# with no new rule. The cell below does that, checks that both give the same output and gradients,
# counts the ops each records, and times a forward and backward pass of both on the batch used
# above, with this module's timing protocol.

# %%
def batch_norm_composed(x, weight, bias, eps=1e-5):
    "Training-mode batch normalization of (N, C, H, W) built from small tensor ops."
    mean = x.mean(axis=(0, 2, 3), keepdims=True)                       # (1, C, 1, 1)
    xc = x - mean                                                      # (N, C, H, W)
    var = (xc * xc).mean(axis=(0, 2, 3), keepdims=True)                # (1, C, 1, 1)
    return xc / (var + eps).sqrt() * weight.reshape(1, -1, 1, 1) + bias.reshape(1, -1, 1, 1)

def graph_ops(t: Tensor) -> list:
    "Names of the ops recorded in the graph that ends at `t`."
    ops, stack, seen = [], [t], set()
    while stack:
        u = stack.pop()
        if u._ctx is None or id(u) in seen: continue
        seen.add(id(u)); ops.append(u._ctx[0]); stack.extend(u._ctx[1])
    return ops

# %%
xs = randn(4, 3, 5, 5, seed=12, dtype=np.float64).requires_grad_()
fused, composed = (batch_norm(xs, None, None, gamma, beta, training=True),
                   batch_norm_composed(xs, gamma, beta))
test_close(fused.numpy(), composed.numpy(), eps=1e-12)
ops_fused, ops_composed = graph_ops(fused), graph_ops(composed)
gout = np.random.default_rng(13).standard_normal(xs.shape)
grads = []
for y in (fused, composed):
    for t in (xs, gamma, beta): t.grad = None
    y.backward(gout)
    grads.append([t.grad.copy() for t in (xs, gamma, beta)])
for a, b in zip(*grads): test_close(a, b, eps=1e-10)
print(f"ops recorded: fused {len(ops_fused)} ({ops_fused[0]}), composed {len(ops_composed)} "
      f"({', '.join(sorted(set(ops_composed)))})")

# %%
def fwd_bwd(fn, x, w, b):
    "One forward and backward pass; the gradients are cleared first."
    x.grad = w.grad = b.grad = None
    fn(x, w, b).sum().backward()

manual_seed(0)
xb = Tensor(randn(64, 16, 8, 8).numpy(), requires_grad=True)             # (64, 16, 8, 8) float32
wb, bb = Tensor(ones(16).numpy(), requires_grad=True), Tensor(zeros(16).numpy(), requires_grad=True)
fused_bn = lambda x, w, b: batch_norm(x, None, None, w, b, training=True)
timings = compare({'fused': lambda: fwd_bwd(fused_bn, xb, wb, bb),
                   'composed': lambda: fwd_bwd(batch_norm_composed, xb, wb, bb)}, number=20)
print(f"forward + backward on {xb.shape} float32: fused {timings['fused'].median*1e3:.2f} ms, "
      f"composed {timings['composed'].median*1e3:.2f} ms, "
      f"composed/fused {timings.ratio('composed', 'fused'):.2f}x")

# %% [markdown]
# Memory: between the forward and the backward pass the graph keeps whatever the gradient rules will
# need. The cell counts, with `tracemalloc`, the bytes that a forward pass allocated and that are
# still held while its output is alive: the output itself plus what its graph keeps.

# %%
def held_by_forward(fn) -> int:
    "Bytes allocated by `fn(xb, wb, bb)` and still held while its output is alive."
    tracemalloc.start()
    y = fn(xb, wb, bb)
    held = tracemalloc.get_traced_memory()[0]
    tracemalloc.stop()
    return held

held = {name: held_by_forward(fn) for name, fn in (('fused', fused_bn),
                                                   ('composed', batch_norm_composed))}
print(f"held after the forward pass: fused {held['fused'] / 2**10:,.0f} KiB, "
      f"composed {held['composed'] / 2**10:,.0f} KiB; "
      f"one array of the batch's shape is {xb.nbytes / 2**10:,.0f} KiB")

# %% [markdown]
# The fused op holds the output and $\hat x$; the composition holds the result of every step, each
# the size of the batch, until the backward pass has run.

# %% [markdown]
# ## Layer normalization
#
# Layer normalization computes the same $\hat x$, but over the trailing dimensions of each example
# instead of over the batch: for `normalized_shape=(D,)` and an input of shape $(B, T, D)$, each of
# the $BT$ vectors of length $D$ gets its own mean and variance. `weight` and `bias` have shape
# `normalized_shape`, one value per normalised element. No statistic crosses examples, so there are
# no running statistics, training and evaluation compute the same thing, and a batch of one is fine.
#
# The input is viewed as $(R, D)$: $R$ rows, each one normalised group of $D$ elements, contiguous
# in memory.

# %%
#| export
def _check_layer_norm(input: Tensor, normalized_shape, weight, bias) -> tuple:
    "`normalized_shape` as a tuple, checked against `input`'s last dims, `weight` and `bias`."
    shape = ((normalized_shape,) if isinstance(normalized_shape, numbers.Integral)
             else tuple(normalized_shape))
    if not shape: raise ValueError("layer_norm: normalized_shape must have at least one dimension, "
                                   "got ()")
    if input.ndim < len(shape) or input.shape[input.ndim - len(shape):] != shape:
        raise ValueError(f"layer_norm: expected input with trailing shape {shape}, got shape "
                         f"{input.shape}")
    for name, t in (('weight', weight), ('bias', bias)):
        if t is not None and t.shape != shape:
            raise ValueError(f"layer_norm: {name} has shape {t.shape}, expected normalized_shape "
                             f"{shape}")
    return shape

# %%
#| export
def layer_norm(input: Tensor,       # (..., *normalized_shape)
               normalized_shape,    # an int or a tuple: the trailing dims to normalise over
               weight=None,         # gamma, Tensor of shape normalized_shape, or None
               bias=None,           # beta, Tensor of shape normalized_shape, or None
               eps: float = 1e-5,   # added to the variance
              ) -> Tensor:
    "Normalise `input` over its trailing dims `normalized_shape`, then scale and shift each element"
    shape = _check_layer_norm(input, normalized_shape, weight, bias)
    D = math.prod(shape)
    x2 = input.data.reshape(-1, D)  # (R, D), one row per normalised group
    # Set `inv_std` (R, 1) to 1/sqrt(var + eps) of each row and `xhat` (R, D) to the normalised
    # rows, with each row's mean and biased variance.
    ### BEGIN SOLUTION
    mean = x2.mean(axis=1, keepdims=True)                              # (R, 1)
    xc = x2 - mean                                                     # (R, D)
    var = (xc * xc).mean(axis=1, keepdims=True)                        # (R, 1), biased
    inv_std = 1 / np.sqrt(var + eps)                                   # (R, 1)
    xhat = xc * inv_std                                                # (R, D)
    ### END SOLUTION
    out = xhat if weight is None else xhat * weight.data.reshape(D)    # scale and shift
    if bias is not None:               # in place, unless out is xhat, which the rule reads
        b = bias.data.reshape(D)
        out = out + b if out is xhat else np.add(out, b, out=out)
    params = tuple(p for p in (weight, bias) if p is not None)
    # the gradient rule reads xhat (R, D), inv_std (R, 1) and which parameters are present
    return Tensor._from_op(out.reshape(input.shape), 'layer_norm', (input, *params),
                           xhat=xhat, inv_std=inv_std, has=(weight is not None, bias is not None))

# %% [markdown]
# A worked example with $\varepsilon = 0$: the row $(1, 3)$ has mean 2 and variance 1, the row $(2,
# 6)$ mean 4 and variance 4, and both normalise to $(-1, 1)$. A group of one element normalises to
# 0, so the output is the bias.

# %%
x = Tensor([[1., 3.], [2., 6.]])
test_eq(layer_norm(x, 2, eps=0.).numpy(), [[-1., 1.], [-1., 1.]])
test_eq(layer_norm(x, (2,), Tensor([2., 1.]), Tensor([0., 5.]), eps=0.).numpy(),
        [[-2., 6.], [-2., 6.]])
test_eq(layer_norm(x.reshape(2, 2, 1), 1, None, Tensor([7.])).numpy(), np.full((2, 2, 1), 7.))
x3 = randn(2, 3, 4, seed=0)
# over the last two dims
test_close(layer_norm(x3, (3, 4)).numpy().reshape(2, -1).mean(axis=1), [0., 0.], eps=1e-6)
test_fail(lambda: layer_norm(x3, 3),
          contains="layer_norm: expected input with trailing shape (3,), got shape (2, 3, 4)")
test_fail(lambda: layer_norm(x3, 4, ones(3)),
          contains="weight has shape (3,), expected normalized_shape (4,)")
test_fail(lambda: layer_norm(x3, ()), contains="at least one dimension")
with trace_ops() as ops: layer_norm(x3, 4, ones(4), zeros(4))
test_eq(ops, [('layer_norm', ('has', 'inv_std', 'xhat'))])

# %% [markdown]
# ### The gradient of layer normalization
#
# Within one group the algebra is the batch-norm derivation with $m = D$, so with $\hat g = \partial
# L/\partial\hat x = \gamma \odot g$ (now $\gamma$ varies within the group, so it multiplies before
# the sums):
#
# $$\frac{\partial L}{\partial x}
#   = s\Big(\hat g - \operatorname{mean}(\hat g)
#   - \hat x \operatorname{mean}(\hat g\,\hat x)\Big),$$
#
# the means taken over each group. The parameter gradients sum over the other axis, the rows:
# $\partial L/\partial\gamma = \sum_{\text{rows}} g\,\hat x$ and $\partial L/\partial\beta =
# \sum_{\text{rows}} g$. Unlike batch normalization, the sums in $\partial L/\partial x$ are not the
# parameter gradients, so nothing is shared.

# %%
#| export
@grad_rule('layer_norm')
def _layer_norm_grad(g, out, x, *params, xhat, inv_std, has):
    "Gradients of `layer_norm` for x, and for weight and bias when present; `xhat` is (R, D)."
    weight, bias = _split_params(params, has)
    D = xhat.shape[1]
    g2 = g.reshape(-1, D)                                              # (R, D)
    dx = None
    if x.requires_grad:
        gh = g2 if weight is None else g2 * weight.data.reshape(D)     # dL/dxhat, (R, D)
        # inv_std (gh - mean(gh) - xhat mean(gh xhat)), in one array: einsum sums gh xhat unstored
        dx = xhat * (np.einsum('ij,ij->i', gh, xhat)[:, None] / D)     # (R, D)
        dx += gh.mean(axis=1, keepdims=True)
        np.subtract(gh, dx, out=dx); dx *= inv_std
        dx = dx.reshape(g.shape)
    grads = (dx,)
    if weight is not None:
        dw = np.einsum('ij,ij->j', g2, xhat).reshape(weight.shape)     # sum of g xhat over the rows
        grads += (dw if weight.requires_grad else None,)
    if bias is not None:
        grads += (g2.sum(axis=0).reshape(bias.shape) if bias.requires_grad else None,)
    return grads

# %%
ln_checks = {
    '(B, D)': lambda: gradcheck(lambda x, w, b: layer_norm(x, 4, w, b),
                                randn(3, 4, seed=20, dtype=np.float64).requires_grad_(),
                                randn(4, seed=21, dtype=np.float64).requires_grad_(),
                                randn(4, seed=22, dtype=np.float64).requires_grad_()),
    '(B, T, D)': lambda: gradcheck(lambda x, w: layer_norm(x, 3, w, eps=1e-3),
                                   randn(2, 2, 3, seed=23, dtype=np.float64).requires_grad_(),
                                   randn(3, seed=24, dtype=np.float64).requires_grad_()),
    'two trailing dims':
        lambda: gradcheck(lambda x, b: layer_norm(x, (2, 3), None, b),
                          randn(2, 2, 3, seed=25, dtype=np.float64).requires_grad_(),
                          randn(2, 3, seed=26, dtype=np.float64).requires_grad_()),
    'no affine': lambda: gradcheck(lambda x: layer_norm(x, 5),
                                   randn(4, 5, seed=27, dtype=np.float64).requires_grad_()),
}
for name, check in ln_checks.items(): test_eq(check(), True)
print(f"layer_norm passes gradcheck in {len(ln_checks)} settings: {', '.join(ln_checks)}")

# %% [markdown]
# The layer: `LayerNorm(normalized_shape, eps=1e-5, elementwise_affine=True, bias=True)`, with
# `weight` at ones and `bias` at zeros, as in PyTorch.

# %%
#| export
class LayerNorm(Module):
    "Layer normalization over the trailing dims `normalized_shape` of each example."
    def __init__(self,
                 normalized_shape,  # an int or a tuple: the trailing dims to normalise over
                 eps: float = 1e-5,               # added to the variance
                 # learn a scale (weight) and a shift (bias) per element?
                 elementwise_affine: bool = True,
                 bias: bool = True,               # learn the shift too (if elementwise_affine)?
                ):
        super().__init__()
        shape = ((normalized_shape,) if isinstance(normalized_shape, numbers.Integral)
                 else tuple(normalized_shape))
        if not shape or not all(isinstance(n, numbers.Integral) and n >= 1 for n in shape):
            raise ValueError(f"LayerNorm: normalized_shape must be positive integers, got "
                             f"{normalized_shape!r}")
        if eps < 0: raise ValueError(f"LayerNorm: eps must be >= 0, got {eps}")
        self.normalized_shape, self.eps, self.elementwise_affine = shape, eps, elementwise_affine
        # gamma, normalized_shape
        self.weight = Parameter(ones(shape)) if elementwise_affine else None
        # beta, normalized_shape
        self.bias = Parameter(zeros(shape)) if elementwise_affine and bias else None

    def forward(self, x: Tensor) -> Tensor:
        "Normalise each example's trailing dims."
        return layer_norm(x, self.normalized_shape, self.weight, self.bias, self.eps)

    def extra_repr(self) -> str:
        return (f"{self.normalized_shape}, eps={self.eps}, "
                f"elementwise_affine={self.elementwise_affine}")

# %% [markdown]
# An example's output does not depend on the rest of the batch, unlike batch normalization in
# training.

# %%
ln = LayerNorm(4)
test_eq(repr(ln), "LayerNorm((4,), eps=1e-05, elementwise_affine=True)")
test_eq(list(ln.state_dict()), ['weight', 'bias'])
test_eq(LayerNorm((2, 3), bias=False).weight.shape, (2, 3))
test_eq(LayerNorm((2, 3), bias=False).bias, None)
test_eq(list(LayerNorm(4, elementwise_affine=False).state_dict()), [])
xb = randn(5, 4, seed=1)
test_eq(ln(xb).numpy()[:1], ln(xb[:1]).numpy())  # one example alone: the same numbers
# batch norm: not
test_eq(np.array_equal(BatchNorm1d(4)(xb).numpy()[:2], BatchNorm1d(4)(xb[:2]).numpy()), False)
test_eq(ln.eval()(xb).numpy(), ln.train()(xb).numpy())
test_fail(lambda: ln(randn(5, 3)),
          contains="expected input with trailing shape (4,), got shape (5, 3)")
test_fail(lambda: LayerNorm(0),
          contains="LayerNorm: normalized_shape must be positive integers, got 0")

# %% [markdown]
# ## Dropout
#
# Dropout zeroes each element independently with probability $p$ during training, so that no unit
# can rely on any particular other unit being present. A unit that is kept is scaled by $1/(1-p)$
# ("inverted dropout"), so that the expected value of every element is unchanged: $E[y] =
# (1-p)\cdot\frac{x}{1-p} + p \cdot 0 = x$. Evaluation then needs no correction at all: dropout is
# the identity there. $p = 1$ drops everything and gives zeros; $p$ outside $[0, 1]$ is an error.
#
# The mask comes from the tensor module's generator through `rand`, so `manual_seed` makes it
# repeat. The op keeps the mask (one byte per element) for its gradient, which is the same mask and
# scale applied to the upstream gradient.

# %%
#| export
def dropout(input: Tensor,          # any shape, floating point
            p: float = 0.5,         # probability of zeroing an element
            training: bool = True,  # drop (True) or pass `input` through unchanged (False)?
           ) -> Tensor:
    "Zero each element with probability `p`, scale the rest by 1/(1-p) if training; else identity."
    if isinstance(p, bool) or not isinstance(p, numbers.Real) or not 0 <= p <= 1:
        raise ValueError(f"dropout: p must be a probability between 0 and 1, got {p!r}")
    if not training or p == 0: return input
    if input.dtype.kind != 'f': raise TypeError(f"dropout: expected a floating-point tensor, got "
                                                f"dtype {input.dtype}")
    # Set `keep` (bool, input's shape, True with probability 1 - p, drawn with `rand`), `scale`
    # (1/(1-p), or 0 when p = 1) and `out` (the kept elements scaled, the others 0).
    ### BEGIN SOLUTION
    keep = rand(*input.shape).data >= p                                # True with probability 1 - p
    scale = 0. if p == 1 else 1 / (1 - p)
    out = input.data * scale * keep  # same shape and dtype as the input
    ### END SOLUTION
    # the gradient rule reads the mask and the scale
    return Tensor._from_op(out, 'dropout', (input,), keep=keep, scale=scale)

@grad_rule('dropout')
def _dropout_grad(g, out, x, keep, scale):
    "The upstream gradient through the same mask and scale."
    return (g * scale * keep,)

# %% [markdown]
# A worked example: the mask is `rand(...) >= p` from the seeded generator, so a reader can draw it
# again and compare. With $p = 0.5$ a kept one becomes 2, and the gradient is 2 where the element
# was kept and 0 elsewhere.

# %%
manual_seed(0); keep = rand(10).numpy() >= 0.5
manual_seed(0); x = Tensor(np.ones(10, np.float32), requires_grad=True)
y = dropout(x, 0.5)
test_eq(y.numpy(), np.where(keep, 2., 0.))
y.sum().backward()
test_eq(x.grad, np.where(keep, 2., 0.))
test_eq(dropout(x, 0.5, training=False) is x, True)                      # evaluation: the identity
test_eq(dropout(x, 0.) is x, True)
test_eq(dropout(x, 1.).numpy(), np.zeros(10))                            # p = 1: all dropped
test_fail(lambda: dropout(x, 1.5),
          contains="dropout: p must be a probability between 0 and 1, got 1.5")
test_fail(lambda: dropout(x, -0.1), contains="got -0.1")
test_fail(lambda: dropout(Tensor([1, 2]), 0.5), contains="floating-point tensor, got dtype int64")
with trace_ops() as ops: dropout(x, 0.5)
test_eq(ops, [('dropout', ('keep', 'scale'))])

# %% [markdown]
# Over many elements the kept fraction is close to $1 - p$ and the mean is preserved. Each element
# is kept or not independently, so the kept count is binomial, with standard deviation $\sqrt{n p
# (1-p)}$; the tests allow five of them.

# %%
n, p = 1_000_000, 0.3
manual_seed(1)
y = dropout(ones(n), p).numpy()
kept = float((y != 0).mean())
sd = (p * (1 - p) / n) ** 0.5
print(f"p = {p}: kept fraction {kept:.4f} (expected {1 - p:.4f}, standard deviation {sd:.5f}), "
      f"mean {y.mean():.4f}")
test_close(kept, 1 - p, eps=5 * sd)
test_close(y.mean(), 1., eps=5 * sd / (1 - p))  # the mean is the kept fraction / (1 - p)
test_eq(set(np.unique(y)), {0., np.float32(1 / (1 - p))})

# %%
def dropout_seeded(x):
    "Dropout with the generator reset first, so every call of gradcheck draws the same mask."
    manual_seed(2)
    return dropout(x, 0.3)

test_eq(gradcheck(dropout_seeded, randn(4, 5, seed=30, dtype=np.float64).requires_grad_()), True)

# %% [markdown]
# The layer holds only `p` and follows the module's `training` flag.

# %%
#| export
class Dropout(Module):
    "Inverted dropout: in training zero with probability `p` and scale the rest by 1/(1-p)."
    def __init__(self, p: float = 0.5):
        super().__init__()
        if isinstance(p, bool) or not isinstance(p, numbers.Real) or not 0 <= p <= 1:
            raise ValueError(f"Dropout: p must be a probability between 0 and 1, got {p!r}")
        self.p = p

    def forward(self, x: Tensor) -> Tensor:
        "Drop elements in training mode; pass `x` through in evaluation mode."
        return dropout(x, self.p, self.training)

    def extra_repr(self) -> str: return f"p={self.p}"

# %%
drop = Dropout(0.25)
test_eq(repr(drop), "Dropout(p=0.25)")
test_eq(list(drop.state_dict()), [])
manual_seed(3); a = drop(ones(6, 6)).numpy()
manual_seed(3); test_eq(drop(ones(6, 6)).numpy(), a)                  # same seed, same mask
xe = ones(6, 6)
test_eq(drop.eval()(xe) is xe, True)
test_fail(lambda: Dropout(2), contains="Dropout: p must be a probability between 0 and 1, got 2")

# %% [markdown]
# ## What batch normalization and dropout do to training
#
# The measurement: the same small convolutional network trained four times on the handwritten
# digits, with and without `BatchNorm2d` after each convolution and with and without `Dropout`
# before the classifier. The data and the split are those of the training module's digits milestone
# (8x8 images, 20% held out for testing), here kept as images of shape `(N, 1, 8, 8)` for `Conv2d`.

# %%
X_train, y_train, X_test, y_test = load_digits()  # images (N, 1, 8, 8) in [0, 1]
print(f"digits: {len(X_train)} training and {len(X_test)} test images of shape {X_train.shape[1:]}")

# %% [markdown]
# The network: two blocks of a 3x3 convolution (16, then 32 channels), an optional `BatchNorm2d`,
# `ReLU` and 2x2 max pooling, which take an 8x8 image to 32 channels of 2x2; then `Flatten`, an
# optional `Dropout(0.5)`, and a `Linear` layer to the 10 classes. The convolution has a bias of its
# own; before batch normalization it is redundant (the mean subtraction removes it) but harmless,
# and keeping it makes the four networks start from the same weights: `manual_seed(0)` comes first
# in each, and neither `BatchNorm2d` nor `Dropout` draws random numbers when built.
#
# All four train with SGD (momentum 0.9, learning rate 0.02) on batches of 64 for the same number of
# epochs. After each epoch the cell measures the loss and accuracy on the test images and also on
# the training images in evaluation mode: with dropout, the loss the trainer records during an epoch
# is the loss of a network with half its features switched off, not of the network that is
# evaluated. The matrices here are small, so BLAS runs with one thread, which is faster for them
# than several.

# %%
def digits_cnn(bn: bool, drop: bool) -> Sequential:
    "Conv-[BN]-ReLU-pool twice, then Flatten-[Dropout]-Linear; the same initial weights for each."
    manual_seed(0)
    norm = lambda c: [BatchNorm2d(c)] if bn else []
    drop_ = [Dropout(0.5)] if drop else []
    return Sequential(Conv2d(1, 16, 3, padding=1), *norm(16), ReLU(), MaxPool2d(2),  # (N,16,4,4)
                      Conv2d(16, 32, 3, padding=1), *norm(32), ReLU(), MaxPool2d(2), # (N,32,2,2)
                      Flatten(), *drop_, Linear(32 * 2 * 2, 10))                     # (N, 10)

def train_digits(model: Sequential, epochs: int) -> dict:
    "Train `model` on the digits; per epoch, test and training loss and accuracy (in eval mode)."
    trainer = Trainer(model, CrossEntropyLoss(), SGD(model.parameters(), lr=0.02, momentum=0.9),
                      progress=False)
    train = Batches(X_train, y_train, 64, shuffle=True, seed=0)
    train_eval, test = Batches(X_train, y_train, 512), Batches(X_test, y_test, 512)
    hist = {'train_loss': [], 'train_acc': [], 'test_loss': [], 'test_acc': []}
    for _ in range(epochs):
        trainer.fit(train, 1)
        for split, data in (('train', train_eval), ('test', test)):
            loss, acc = trainer.evaluate(data)
            hist[f'{split}_loss'].append(loss); hist[f'{split}_acc'].append(acc)
    return hist

# %%
first = [digits_cnn(bn, drop).state_dict() for bn, drop in ((False, False), (True, True))]
test_eq([k for k in first[0]], ['0.weight', '0.bias', '3.weight', '3.bias', '7.weight', '7.bias'])
for k, k2 in zip(first[0], ['0.weight', '0.bias', '4.weight', '4.bias', '10.weight', '10.bias']):
    test_eq(first[0][k], first[1][k2])  # same weights under the shifted names

# %% [markdown]
# First a look at the networks before any training: the standard deviation of the activations after
# each block (convolution, optional batch normalization, ReLU, pooling) on a batch of 256 training
# images, and of the logits.

# %%
xs0 = Tensor(X_train[:256])                                           # (256, 1, 8, 8)
for bn in (False, True):
    stds, h = [], xs0
    with no_grad():
        for layer in digits_cnn(bn, False):
            h = layer(h)
            if isinstance(layer, (MaxPool2d, Linear)): stds.append(float(h.numpy().std()))
    print(f"{'with' if bn else 'without'} BatchNorm2d, at initialisation: std after block 1 "
          f"{stds[0]:.3f}, block 2 {stds[1]:.3f}, logits {stds[2]:.3f} "
          f"(input std {float(xs0.numpy().std()):.3f})")

# %%
epochs = 15
variants = {'plain': (False, False), 'BatchNorm': (True, False), 'Dropout': (False, True),
            'BatchNorm + Dropout': (True, True)}
runs, seconds = {}, {}
with blas_threads(1):
    for name, (bn, drop) in variants.items():
        with Timer() as t: runs[name] = train_digits(digits_cnn(bn, drop), epochs)
        seconds[name] = t.elapsed
print(f"{epochs} epochs each; loss and accuracy after the last epoch (training images measured in "
      f"eval mode); a uniform guess over 10 classes has loss ln 10 = {math.log(10):.3f}")
print(f"{'':>20} {'test loss':>10} {'test acc':>9} {'train loss':>11} {'train acc':>10} "
      f"{'test-train loss':>16} {'test loss, epoch 1':>19} {'seconds':>8}")
for name, h in runs.items():
    gap = h['test_loss'][-1] - h['train_loss'][-1]
    print(f"{name:>20} {h['test_loss'][-1]:>10.4f} {h['test_acc'][-1]:>9.2%} "
          f"{h['train_loss'][-1]:>11.4f} {h['train_acc'][-1]:>10.2%} {gap:>16.4f} "
          f"{h['test_loss'][0]:>19.3f} {seconds[name]:>8.1f}")
for name in ('BatchNorm', 'BatchNorm + Dropout'):
    assert runs[name]['test_loss'][0] < runs['plain']['test_loss'][0]
assert all(h['test_acc'][-1] > 0.9 for h in runs.values())

# %%
fig, axes = plt.subplots(1, 2, figsize=(11, 3.8))
ep = np.arange(1, epochs + 1)
for (name, h), color in zip(runs.items(), ['C0', 'C1', 'C2', 'C3']):
    for ax, key in zip(axes, ('loss', 'acc')):
        ax.plot(ep, h[f'test_{key}'], color=color, label=name)
        ax.plot(ep, h[f'train_{key}'], color=color, ls='--')
axes[0].set_yscale('log'); axes[0].set_ylabel('cross-entropy loss')
axes[1].set_ylim(0.6, 1.0); axes[1].set_ylabel('accuracy'); axes[1].legend(loc='lower right')
for ax in axes: ax.set_xlabel('epoch')
fig.suptitle('solid: test images; dashed: training images, evaluated in eval mode', fontsize=10)
plt.tight_layout(); plt.show()

# %% [markdown]
# What the table and the curves show. With batch normalization the network learns from the first
# epoch on: its test loss after one epoch is a fraction of the plain network's, which is still close
# to the loss of a uniform guess. The cell before the training showed why: at initialisation the
# plain network's activations shrink block by block, so the classifier sees small, nearly constant
# features and the gradients that reach the convolutions are small. Batch normalization rescales
# each channel to unit variance whatever the weights do, so every layer receives inputs of a useful
# size from the start.
#
# Dropout works on the other end. It makes training harder on purpose, so the network without it
# fits the training images more closely (lower training loss in evaluation mode); the column
# "test-train loss" is the gap between test and training loss that dropout is meant to narrow. With
# 1438 training images and this few epochs the networks have only begun to overfit, so any effect of
# dropout on the test figures is small here: compare the rows.

# %% [markdown]
# ## Summary
#
# `batch_norm`, `layer_norm` and `dropout` are each one op with one gradient rule. Batch
# normalization normalises each channel over the batch and the positions, keeps running statistics
# (the unbiased variance, PyTorch's momentum) for evaluation, and its gradient removes the mean and
# the $\hat x$ component of the upstream gradient. Layer normalization does the same over each
# example's trailing dimensions, with no running statistics. Dropout zeroes elements with
# probability $p$ and scales the rest by $1/(1-p)$, so evaluation needs no correction.
# `BatchNorm1d`, `BatchNorm2d`, `LayerNorm` and `Dropout` carry PyTorch's names, parameters, buffers
# and defaults, so their state dicts line up with PyTorch's.
