# %%
#| default_exp core.activations

# %% [markdown]
# # Activations
#
# > The nonlinear functions between layers, computed so that large inputs give no overflow or NaN.

# %% [markdown]
# A stack of linear layers is still linear: $W_2(W_1 x) = (W_2 W_1) x$. An elementwise nonlinearity
# between them is what lets a network represent anything else. This module builds the common ones as
# functions with PyTorch's names (`relu(x)`, like `torch.nn.functional.relu`). The classes that put
# them in a model (`ReLU()`, like `torch.nn.ReLU`) are `Module`s, so they come with `Module` in the
# layers module; they are exported into this package module as well, so
# `from tinytorch.core.activations import ReLU` works.
#
# Each is one named op (`'relu'`, or `'softmax'` with its `dim`), so the autograd module can attach
# one gradient rule to each. Two of them need care with floating point: `sigmoid` and `softmax`
# exponentiate, and $e^{89}$ already exceeds float32's largest value, about $3.4 \cdot 10^{38}$. The
# fixes are stated and tested below.

# %%
#| export
import math

import numpy as np

from tinytorch.core.tensor import Tensor

# %%
#| hide
import warnings

from fastcore.test import test_eq, test_fail, test_close

from tinytorch.core.tensor import trace_ops
from tinytorch.utils.timing import measure

# %% [markdown]
# ## ReLU
#
# $\mathrm{ReLU}(x) = \max(x, 0)$. It is cheap, its gradient is 0 or 1, and it does not saturate for
# positive inputs, which is why it replaced sigmoid and tanh in hidden layers.

# %%
#| export
def relu(x: Tensor) -> Tensor:
    "$\\max(x, 0)$ elementwise."
    # Set `out` to the result array (same shape and dtype as `x.data`).
    ### BEGIN SOLUTION
    out = np.maximum(x.data, 0)
    ### END SOLUTION
    return Tensor._from_op(out, 'relu', (x,))

# %%
x = Tensor([-2., 0., 3.])
test_eq(relu(x).numpy(), [0., 0., 3.])
test_eq(relu(x).dtype, np.float32)
with trace_ops() as ops: relu(Tensor([1.]))
test_eq(ops, [('relu', ())])

# %% [markdown]
# ## Sigmoid
#
# $\sigma(x) = 1 / (1 + e^{-x})$ maps any real number into $(0, 1)$. Written that way it computes
# $e^{1000}$ for $x = -1000$: an overflow, a warning, and a result that is right only by luck. The
# fix is to exponentiate only non-positive numbers. With $e = e^{-|x|} \le 1$,
# $\sigma(x) = 1 / (1 + e)$ for $x \ge 0$ and $\sigma(x) = e / (1 + e)$ for $x < 0$ (multiply the
# top and bottom of the definition by $e^x$). No overflow, no warning, and small results such as
# $\sigma(-20) \approx 2 \cdot 10^{-9}$ keep their relative accuracy.

# %%
#| export
def sigmoid(x: Tensor) -> Tensor:
    "$1 / (1 + e^{-x})$ elementwise, exponentiating only $-|x|$ so it never overflows."
    # Set `out` to the result array (same shape and dtype as `x.data`).
    ### BEGIN SOLUTION
    e = np.exp(-np.abs(x.data))
    out = np.where(x.data >= 0, 1 / (1 + e), e / (1 + e))
    ### END SOLUTION
    return Tensor._from_op(out, 'sigmoid', (x,))

# %%
test_close(sigmoid(Tensor([0., 2.])).numpy(), [0.5, 1 / (1 + math.exp(-2))], eps=1e-7)
with warnings.catch_warnings():
    warnings.simplefilter('error')                          # any overflow warning fails this cell
    s = sigmoid(Tensor([-1000., -20., 1000.])).numpy()
test_eq(s[0], 0.)
test_eq(s[2], 1.)
# relative error of float32, not absolute
test_close(s[1] / (1 / (1 + math.exp(20))), 1., eps=1e-6)
test_eq(s.dtype, np.float32)
with trace_ops() as ops: sigmoid(Tensor([1.]))
test_eq(ops, [('sigmoid', ())])

# %% [markdown]
# ## Tanh
#
# $\tanh(x) = (e^x - e^{-x}) / (e^x + e^{-x}) = 2\sigma(2x) - 1$, zero-centred with range $(-1, 1)$.
# NumPy's `tanh` is already stable for large inputs.

# %%
#| export
def tanh(x: Tensor) -> Tensor:
    "Hyperbolic tangent elementwise."
    return Tensor._from_op(np.tanh(x.data), 'tanh', (x,))

# %%
x = Tensor([-1000., -1., 0., 1.])
test_close(tanh(x).numpy(), [-1., math.tanh(-1.), 0., math.tanh(1.)], eps=1e-7)
test_close(tanh(x).numpy(), 2 * sigmoid(2 * x).numpy() - 1, eps=1e-6)

# %% [markdown]
# ## GELU
#
# GELU weights its input by the probability that a standard normal variable is below it:
# $\mathrm{GELU}(x) = x\,\Phi(x) = \tfrac{x}{2}\left(1 + \mathrm{erf}(x/\sqrt{2})\right)$. It is the
# activation of GPT and BERT. PyTorch offers the exact form (`approximate='none'`) and the tanh
# approximation of Hendrycks and Gimpel (`approximate='tanh'`),
# $\tfrac{x}{2}\left(1 + \tanh\left(\sqrt{2/\pi}\,(x + 0.044715\,x^3)\right)\right)$, which GPT-2
# used.
#
# NumPy has no `erf`. We use Abramowitz and Stegun's formula 7.1.26, a rational approximation whose
# absolute error is below $1.5 \cdot 10^{-7}$ for every $x$: about one float32 rounding step near 1.
# The cell under it checks that bound against Python's `math.erf`.

# %%
#| export
_AS_P, _AS_A = 0.3275911, (0.254829592, -0.284496736, 1.421413741, -1.453152027, 1.061405429)

def erf(x: np.ndarray) -> np.ndarray:
    "Error function, elementwise (Abramowitz and Stegun 7.1.26; absolute error < 1.5e-7)."
    a = np.abs(x)
    t = 1 / (1 + _AS_P * a)
    poly = t * (_AS_A[0] + t * (_AS_A[1] + t * (_AS_A[2] + t * (_AS_A[3] + t * _AS_A[4]))))
    return np.sign(x) * (1 - poly * np.exp(-a * a))

# %%
grid = np.linspace(-6, 6, 100_001)
err = np.abs(erf(grid) - np.array([math.erf(v) for v in grid])).max()
print(f"max |erf - math.erf| on [-6, 6]: {err:.2e}")
assert err < 1.5e-7

# %%
#| export
_SQRT_2_OVER_PI = math.sqrt(2 / math.pi)

def gelu(x: Tensor, approximate: str = 'none') -> Tensor:
    "$x\\,\\Phi(x)$; `approximate='tanh'` uses the tanh approximation."
    d = x.data
    # Set `out` to the result array in `d`'s dtype; any other `approximate` is a ValueError naming
    # it.
    ### BEGIN SOLUTION
    if approximate == 'none': out = 0.5 * d * (1 + erf(d * (1 / math.sqrt(2))))
    elif approximate == 'tanh':   # d*d*d: NumPy computes float32 d**3 with the slow general power
        out = 0.5 * d * (1 + np.tanh(_SQRT_2_OVER_PI * (d + 0.044715 * (d * d * d))))
    else: raise ValueError(f"gelu: approximate must be 'none' or 'tanh', got {approximate!r}")
    ### END SOLUTION
    out = out.astype(d.dtype, copy=False)
    return Tensor._from_op(out, 'gelu', (x,), approximate=approximate)

# %% [markdown]
# Worked values: $\mathrm{GELU}(1) = \Phi(1)$, and how far the tanh form is from the exact one,
# printed below.

# %%
x = Tensor(np.linspace(-5, 5, 1001))
exact, approx = gelu(x).numpy(), gelu(x, 'tanh').numpy()
test_close(gelu(Tensor([1.])).item(), 0.5 * (1 + math.erf(1 / math.sqrt(2))), eps=3e-7)
test_eq(gelu(Tensor([0.])).item(), 0.)
print(f"GELU(1) = {gelu(Tensor([1.])).item():.6f}, Phi(1) = "
      f"{0.5 * (1 + math.erf(1 / math.sqrt(2))):.6f}")
print(f"max |GELU_tanh - GELU_exact| on [-5, 5]: {np.abs(exact - approx).max():.1e}")
test_fail(lambda: gelu(x, 'fast'),
          contains="gelu: approximate must be 'none' or 'tanh', got 'fast'")
test_eq(gelu(Tensor([1.], dtype=np.float64)).dtype, np.float64)
with trace_ops() as ops: gelu(Tensor([1.]), 'tanh')
test_eq(ops, [('gelu', ('approximate',))])

# %% [markdown]
# ## Softmax
#
# $\mathrm{softmax}(x)_i = e^{x_i} / \sum_j e^{x_j}$ along one axis `dim` turns scores into
# probabilities. For logits near 1000, $e^{1000}$ overflows. Softmax does not change when a constant
# is subtracted from every input, so we subtract the maximum along `dim` first: the largest exponent
# is then $e^0 = 1$ and the sum is at least 1, so neither overflow nor division by zero can happen.

# %%
#| export
def _check_dim(op: str, dim: int, x: Tensor):
    if not -x.ndim <= dim < x.ndim:
        raise IndexError(f"{op}: dim {dim} out of range for tensor of shape {x.shape}")

def softmax(x: Tensor, dim: int = -1) -> Tensor:
    "$e^{x_i} / \\sum_j e^{x_j}$ along `dim`, with the maximum subtracted first."
    _check_dim('softmax', dim, x)
    # Set `out` to the result array (same shape as `x.data`).
    ### BEGIN SOLUTION
    e = np.exp(x.data - x.data.max(axis=dim, keepdims=True))
    out = e / e.sum(axis=dim, keepdims=True)
    ### END SOLUTION
    return Tensor._from_op(out, 'softmax', (x,), dim=dim)

# %%
p = softmax(Tensor([[1., 2., 3.], [1000., 1000., 1000.]]))
test_close(p.numpy()[0], np.exp([1., 2., 3.]) / np.exp([1., 2., 3.]).sum(), eps=1e-7)
test_close(p.numpy()[1], [1/3, 1/3, 1/3], eps=1e-7)
test_close(p.numpy().sum(axis=-1), [1., 1.], eps=1e-6)
test_eq(np.isfinite(softmax(Tensor([1000., -1000.])).numpy()).all(), True)
test_eq(softmax(Tensor(np.ones((2, 3))), dim=0).numpy(), np.full((2, 3), 0.5, np.float32))
test_fail(lambda: softmax(Tensor([1., 2.]), dim=1),
          contains="dim 1 out of range for tensor of shape (2,)")
with trace_ops() as ops: softmax(Tensor([1., 2.]))
test_eq(ops, [('softmax', ('dim',))])

# %% [markdown]
# ## Log-softmax
#
# Losses need $\log \mathrm{softmax}(x)$. Taking the log of a softmax that underflowed to 0 gives
# $-\infty$. The log-sum-exp form avoids ever forming the small probability:
# $\log \mathrm{softmax}(x)_i = x_i - m - \log \sum_j e^{x_j - m}$ with $m = \max_j x_j$.

# %%
#| export
def log_softmax(x: Tensor, dim: int = -1) -> Tensor:
    "$x_i - \\log \\sum_j e^{x_j}$ along `dim`, by log-sum-exp."
    _check_dim('log_softmax', dim, x)
    # Set `out` to the result array (same shape as `x.data`).
    ### BEGIN SOLUTION
    shifted = x.data - x.data.max(axis=dim, keepdims=True)
    out = shifted - np.log(np.exp(shifted).sum(axis=dim, keepdims=True))
    ### END SOLUTION
    return Tensor._from_op(out, 'log_softmax', (x,), dim=dim)

# %%
x = Tensor([[0., 1000.], [1., 2.]])
with warnings.catch_warnings():
    warnings.simplefilter('error')
    ls = log_softmax(x).numpy()
test_eq(ls[0], [-1000., 0.])                                   # naive log(softmax) gives -inf here
test_close(ls[1], np.log(softmax(Tensor([1., 2.])).numpy()), eps=1e-6)
with trace_ops() as ops: log_softmax(Tensor([1., 2.]))
test_eq(ops, [('log_softmax', ('dim',))])

# %% [markdown]
# How much the stable forms matter, measured: the naive formulas on inputs where they break. In
# float32, $e^{-x}$ overflows for $x < -88.7$, so the naive sigmoid returns 0 there, although
# $\sigma(-95)$ and $\sigma(-90)$ are representable (as subnormal numbers); the stable form computes
# them. The naive log-softmax divides infinity by infinity.

# %%
neg = np.array([-95., -90., 0.], np.float32)
big = np.array([-1000., 0., 1000.], np.float32)
with np.errstate(all='ignore'):
    naive_sig = 1 / (1 + np.exp(-neg))
    naive_ls = np.log(np.exp(big) / np.exp(big).sum())
stable_sig = sigmoid(Tensor(neg)).numpy()
print(f"sigmoid of {neg}: naive {naive_sig}, stable {stable_sig}")
print(f"log-softmax of {big}: naive {naive_ls}, stable {log_softmax(Tensor(big)).numpy()}")
test_eq(naive_sig[:2], [0., 0.])
assert (stable_sig[:2] > 0).all()

# %% [markdown]
# ## Cost
#
# Relative cost of each activation on a (256, 1024) float32 batch: `measure`, the median of 5
# samples of 10 calls each after a warm-up call.

# %%
xb = Tensor(np.random.default_rng(0).standard_normal((256, 1024), dtype=np.float32))
for name, fn in [('relu', relu), ('sigmoid', sigmoid), ('tanh', tanh), ('gelu', gelu),
                 ('gelu tanh', lambda t: gelu(t, 'tanh')), ('softmax', softmax)]:
    t = measure(lambda: fn(xb), number=10, repeats=5).median
    print(f"{name:>10}: {t*1e3:6.2f} ms")
