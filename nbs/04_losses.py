# %%
#| default_exp core.losses

# %% [markdown]
# # Losses
#
# > One number that says how wrong a model's outputs are: MSE, cross-entropy, binary cross-entropy.

# %% [markdown]
# Training lowers a loss. Each loss here takes the model's output (`input`) and the desired answer
# (`target`) and returns one value per example, reduced as PyTorch does with `reduction='mean'` (the
# default), `'sum'`, or `'none'` (no reduction).
#
# Classification losses work from logits, the unnormalised scores, rather than probabilities: the
# softmax or sigmoid and the logarithm are computed together, which is both stable and, as the
# autograd module shows, gives a simple gradient (probabilities minus targets). Wrong targets are
# the most common bug in a training script, so every loss checks them and says what it found.

# %%
#| export
import numpy as np

from tinytorch.core.tensor import Tensor

# %%
#| hide
import math
import warnings

from fastcore.test import test_eq, test_fail, test_close

from tinytorch.core.tensor import trace_ops

# %% [markdown]
# ## Reduction
#
# All losses share the reduction step and its check.

# %%
#| export
_REDUCTIONS = ('mean', 'sum', 'none')

def _check_reduction(op: str, reduction: str):
    if reduction not in _REDUCTIONS:
        raise ValueError(f"{op}: reduction must be one of {_REDUCTIONS}, got {reduction!r}")

def _reduce(x: Tensor, reduction: str) -> Tensor:
    "Apply `reduction` to per-element losses `x`."
    return x.mean() if reduction == 'mean' else x.sum() if reduction == 'sum' else x

class _Loss:
    "Base for loss classes: holds `reduction`, `__call__` runs `forward`."
    def __init__(self, reduction: str = 'mean'):
        _check_reduction(type(self).__name__, reduction)
        self.reduction = reduction
    def __call__(self, input: Tensor, target) -> Tensor: return self.forward(input, target)
    def __repr__(self) -> str: return f"{type(self).__name__}(reduction={self.reduction!r})"

# %%
test_fail(lambda: _Loss('avg'),
          contains="_Loss: reduction must be one of ('mean', 'sum', 'none'), got 'avg'")

# %% [markdown]
# ## Mean squared error
#
# $\ell(x, y) = \frac{1}{n}\sum_i (x_i - y_i)^2$, the loss for regression. It is built from tensor
# ops, so its gradient comes from theirs. PyTorch only warns when the shapes differ and then
# broadcasts, which silently turns an `(N, 1)` prediction and an `(N,)` target into an `(N, N)`
# matrix of differences; we refuse.

# %%
#| export
def _as_target(op: str, target) -> Tensor:
    if isinstance(target, Tensor): return target
    try: return Tensor(target)
    except (TypeError, ValueError) as e:
        raise TypeError(f"{op}: cannot use {type(target).__name__} as a target: {e}") from None

def mse_loss(input: Tensor, target, reduction: str = 'mean') -> Tensor:
    "Mean (or sum) of squared differences."
    _check_reduction('mse_loss', reduction)
    target = _as_target('mse_loss', target)
    if input.shape != target.shape:
        raise ValueError(f"mse_loss: input shape {input.shape} and target shape "
                         f"{target.shape} differ")
    ### BEGIN SOLUTION
    diff = input - target
    return _reduce(diff * diff, reduction)
    ### END SOLUTION

class MSELoss(_Loss):
    "Mean squared error."
    def forward(self, input: Tensor, target) -> Tensor:
        return mse_loss(input, target, self.reduction)

# %%
x, y = Tensor([1., 2., 4.]), Tensor([1., 0., 1.])
test_close(MSELoss()(x, y).item(), 13 / 3, eps=1e-6)   # float32 rounding of 13/3
test_eq(MSELoss('sum')(x, y).item(), 13.)
test_eq(MSELoss('none')(x, y).numpy(), [0., 4., 9.])
test_fail(lambda: mse_loss(Tensor(np.ones((3, 1))), y),
          contains="input shape (3, 1) and target shape (3,) differ")
test_eq(repr(MSELoss('sum')), "MSELoss(reduction='sum')")

# %% [markdown]
# ## Cross-entropy from logits
#
# For logits $z \in \mathbb{R}^C$ and a class index $y$, cross-entropy is the negative
# log-probability of the right class:
# $\ell = -\log \mathrm{softmax}(z)_y = \log\sum_j e^{z_j} - z_y$. We compute the log-sum-exp with
# the maximum subtracted (as `log_softmax` does), so logits of any size give a finite loss.
#
# With label smoothing $\varepsilon$ the target is a mix of the one-hot vector and the uniform
# distribution:
# $\ell = (1-\varepsilon)(-\log p_y) + \varepsilon \cdot \frac{1}{C}\sum_j (-\log p_j)$, as in
# PyTorch.
#
# It is one op, `cross_entropy`, rather than a chain of `log_softmax` and indexing: its gradient
# $\mathrm{softmax}(z) - \text{target distribution}$ is simpler and cheaper than the chain's. Inputs
# are `(N, C)` logits and `(N,)` integer class indices.

# %%
#| export
def _check_class_targets(op: str, logits: Tensor, target: Tensor) -> np.ndarray:
    "Check `target` holds one valid class index per row of `logits`; return it as an int64 array."
    if logits.ndim != 2:
        raise ValueError(f"{op}: expected logits of shape (N, C), got {logits.shape}")
    t = target.data
    if t.dtype.kind not in 'iu':
        raise TypeError(f"{op}: target must hold class indices of an integer dtype, got {t.dtype}")
    if t.shape != logits.shape[:1]:
        raise ValueError(f"{op}: target shape {t.shape} does not match logits shape "
                         f"{logits.shape}; expected ({logits.shape[0]},)")
    C = logits.shape[1]
    bad = (t < 0) | (t >= C)
    if bad.any():
        raise IndexError(f"{op}: target holds class index {t[bad][0]} outside [0, {C}) at position "
                         f"{np.flatnonzero(bad)[0]}")
    return t.astype(np.int64, copy=False)

# %%
#| export
def cross_entropy(input: Tensor, target, reduction: str = 'mean',
                  label_smoothing: float = 0.0) -> Tensor:
    """Cross-entropy between `(N, C)` logits and `(N,)` class indices, optionally with label
    smoothing."""
    _check_reduction('cross_entropy', reduction)
    if not 0.0 <= label_smoothing <= 1.0:
        raise ValueError(f"cross_entropy: label_smoothing must be in [0, 1], got {label_smoothing}")
    # (N,) int64
    t = _check_class_targets('cross_entropy', input, _as_target('cross_entropy', target))
    z = input.data
    # Set `loss` to the array of per-example losses (N,), already reduced when `reduction` is 'mean'
    # or
    # 'sum' (a 0-d array). The op records `t` as `target=`, with `reduction` and `label_smoothing`.
    ### BEGIN SOLUTION
    shifted = z - z.max(axis=1, keepdims=True)                                  # (N, C)
    logp = shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))       # (N, C)
    loss = -logp[np.arange(len(t)), t]                                         # (N,)
    if label_smoothing: loss = (1 - label_smoothing) * loss - label_smoothing * logp.mean(axis=1)
    if reduction != 'none': loss = np.asarray(loss.mean() if reduction == 'mean' else loss.sum())
    ### END SOLUTION
    loss = loss.astype(z.dtype, copy=False)  # in z's dtype, whatever NumPy's reductions returned
    return Tensor._from_op(loss, 'cross_entropy', (input,),
                           target=t, reduction=reduction, label_smoothing=label_smoothing)

class CrossEntropyLoss(_Loss):
    "Cross-entropy from logits and class indices."
    def __init__(self, reduction: str = 'mean', label_smoothing: float = 0.0):
        super().__init__(reduction)
        self.label_smoothing = label_smoothing
    def forward(self, input: Tensor, target) -> Tensor:
        return cross_entropy(input, target, self.reduction, self.label_smoothing)

# %% [markdown]
# A worked example: with logits $(0, 0, \ln 2)$ the probabilities are $(1/4, 1/4, 1/2)$, so the loss
# for class 2 is $\ln 2$ and for class 0 is $\ln 4$.

# %%
z = Tensor([[0., 0., math.log(2)], [0., 0., math.log(2)]])
test_close(cross_entropy(z, Tensor([2, 0]), reduction='none').numpy(), [math.log(2), math.log(4)],
           eps=1e-6)
test_close(CrossEntropyLoss()(z, Tensor([2, 0])).item(), (math.log(2) + math.log(4)) / 2, eps=1e-6)
test_close(CrossEntropyLoss('sum')(z, np.array([2, 0])).item(), math.log(2) + math.log(4), eps=1e-6)
# label smoothing 0.3: 0.7 * (-log p_y) + 0.3 * mean_j(-log p_j)
mean_nll = (math.log(4) * 2 + math.log(2)) / 3
test_close(cross_entropy(z[:1], Tensor([2]), label_smoothing=0.3).item(),
           0.7 * math.log(2) + 0.3 * mean_nll, eps=1e-6)
with trace_ops() as ops: cross_entropy(Tensor([[1., 2.]]), [1])
test_eq(ops, [('cross_entropy', ('label_smoothing', 'reduction', 'target'))])

# %% [markdown]
# Logits of size 1000 give a finite loss, and the target checks name what is wrong.

# %%
with warnings.catch_warnings():
    warnings.simplefilter('error')
    test_close(cross_entropy(Tensor([[1000., 0.]]), Tensor([1])).item(), 1000., eps=1e-3)
test_fail(lambda: cross_entropy(z, Tensor([2., 0.])), contains="integer dtype, got float32")
test_fail(lambda: cross_entropy(z, Tensor([2, 3])),
          contains="class index 3 outside [0, 3) at position 1")
test_fail(lambda: cross_entropy(z, Tensor([-1, 0])), contains="class index -1")
test_fail(lambda: cross_entropy(z, Tensor([[2], [0]])),
          contains="target shape (2, 1) does not match logits shape (2, 3)")
test_fail(lambda: cross_entropy(Tensor([1., 2.]), Tensor([0])),
          contains="expected logits of shape (N, C), got (2,)")
test_fail(lambda: cross_entropy(z, Tensor([2, 0]), label_smoothing=1.5), contains="label_smoothing")

# %% [markdown]
# ## Binary cross-entropy
#
# For one probability $p$ of the positive class and a label $y \in [0, 1]$:
# $\ell = -\left(y \log p + (1-y)\log(1-p)\right)$.
#
# `BCEWithLogitsLoss` takes the logit $x$ with $p = \sigma(x)$. Substituting and simplifying gives
# $\ell = \max(x, 0) - x y + \log(1 + e^{-|x|})$, where no exponent is ever positive: stable for any
# $x$. `BCELoss` takes probabilities. Like PyTorch it clamps each log term at $-100$, so $p = 0$
# with $y = 1$ costs 100 instead of infinity. Both are single ops (`bce_with_logits`,
# `binary_cross_entropy`). Targets must be floating point and of the input's shape.

# %%
#| export
def _binary_target(op: str, input: Tensor, target, reduction: str) -> Tensor:
    """Check `reduction` and that `target` is a float tensor of `input`'s shape; return it as a
    Tensor."""
    _check_reduction(op, reduction)
    target = _as_target(op, target)
    if target.data.dtype.kind != 'f':
        raise TypeError(f"{op}: target must be floating point (labels such as 0.0 and 1.0), got "
                        f"{target.dtype}")
    if target.shape != input.shape:
        raise ValueError(f"{op}: input shape {input.shape} and target shape {target.shape} differ")
    return target

def binary_cross_entropy_with_logits(input: Tensor, target, reduction: str = 'mean') -> Tensor:
    """Binary cross-entropy of logits `input` against labels `target`, by $\\max(x,0) - xy +
    \\log(1+e^{-|x|})$."""
    target = _binary_target('binary_cross_entropy_with_logits', input, target, reduction)
    x, y = input.data, target.data
    # Set `loss` to the elementwise losses (same shape as `x`); `_reduce` below applies `reduction`.
    ### BEGIN SOLUTION
    loss = np.maximum(x, 0) - x * y + np.log1p(np.exp(-np.abs(x)))
    ### END SOLUTION
    return _reduce(Tensor._from_op(loss, 'bce_with_logits', (input, target)), reduction)

class BCEWithLogitsLoss(_Loss):
    "Binary cross-entropy from logits."
    def forward(self, input: Tensor, target) -> Tensor:
        return binary_cross_entropy_with_logits(input, target, self.reduction)

# %%
x = Tensor([0., math.log(3), -1000., 1000.])   # sigmoid: 1/2, 3/4, 0, 1
y = Tensor([1., 1., 0., 0.])
with warnings.catch_warnings():
    warnings.simplefilter('error')
    l = BCEWithLogitsLoss('none')(x, y).numpy()
test_close(l, [math.log(2), -math.log(0.75), 0., 1000.], eps=1e-5)
test_close(BCEWithLogitsLoss()(x, y).item(), l.mean(), eps=1e-5)
test_fail(lambda: BCEWithLogitsLoss()(x, Tensor([1, 1, 0, 0])),
          contains="floating point (labels such as 0.0 and 1.0), got int64")
test_fail(lambda: BCEWithLogitsLoss()(x, Tensor([1., 0.])),
          contains="input shape (4,) and target shape (2,) differ")
with trace_ops() as ops: binary_cross_entropy_with_logits(Tensor([1.]), Tensor([0.]))
test_eq(ops, [('bce_with_logits', ()), ('mean', ('axis', 'keepdims'))])

# %%
#| export
def binary_cross_entropy(input: Tensor, target, reduction: str = 'mean') -> Tensor:
    """Binary cross-entropy of probabilities `input` against labels `target`; log terms clamped at
    -100."""
    target = _binary_target('binary_cross_entropy', input, target, reduction)
    p, y = input.data, target.data
    if ((p < 0) | (p > 1)).any() or np.isnan(p).any():
        raise ValueError(f"binary_cross_entropy: input must hold probabilities in [0, 1], got "
                         f"values from {np.nanmin(p)} to {np.nanmax(p)}")
    with np.errstate(divide='ignore'):  # log(0) = -inf, clamped to -100 on the next line
        loss = -(y * np.maximum(np.log(p), -100) + (1 - y) * np.maximum(np.log1p(-p), -100))
    return _reduce(Tensor._from_op(loss, 'binary_cross_entropy', (input, target)), reduction)

class BCELoss(_Loss):
    "Binary cross-entropy from probabilities."
    def forward(self, input: Tensor, target) -> Tensor:
        return binary_cross_entropy(input, target, self.reduction)

# %%
p = Tensor([0.5, 0.75, 0., 1.])
test_close(BCELoss('none')(p, Tensor([1., 1., 0., 1.])).numpy(),
           [math.log(2), -math.log(0.75), 0., 0.], eps=1e-6)
test_eq(BCELoss('none')(Tensor([0.]), Tensor([1.])).item(), 100.)     # clamped, not infinite
test_fail(lambda: BCELoss()(Tensor([1.5]), Tensor([1.])),
          contains="probabilities in [0, 1], got values from 1.5 to 1.5")
test_close(BCELoss()(Tensor([0.25]), Tensor([0.])).item(),
           # sigmoid(log(1/3)) = 1/4
           BCEWithLogitsLoss()(Tensor([math.log(1/3)]), Tensor([0.])).item(), eps=1e-6)

# %% [markdown]
# ## Why logits: a measurement
#
# Computing cross-entropy as `-log(softmax(z))[y]` in float32 goes wrong once the right class's
# probability underflows to 0. The cell below widens the gap between the right logit and the others
# and compares the naive result with `cross_entropy`, against the exact value in float64.

# %%
for gap in (10., 50., 100., 200.):
    # the right class is 0, the other logit is `gap` higher
    zz = np.array([[0., gap]], np.float32)
    with np.errstate(all='ignore'):
        e = np.exp(zz); naive = float(-np.log(e / e.sum())[0, 0])
    exact = float(np.logaddexp(0., gap))      # log(e^0 + e^gap) - 0
    print(f"gap {gap:5.0f}: naive {naive:10.4f}, cross_entropy "
          f"{cross_entropy(Tensor(zz), Tensor([0])).item():10.4f}, exact {exact:10.4f}")
