# %%
#| default_exp core.autograd

# %% [markdown]
# # Autograd
#
# > Reverse-mode autodiff on the same `Tensor`: record each op, then apply one gradient rule per op.

# %% [markdown]
# Training needs the gradient of a scalar loss with respect to every parameter. Reverse-mode
# automatic differentiation gets all of them for about the cost of one more forward pass, by the
# chain rule: if $y = f(x)$ and the loss $L$ depends on $y$, then
# $\partial L / \partial x = (\partial L / \partial y)\,(\partial y / \partial x)$. The factor
# $\partial L / \partial y$ arrives from later in the computation; each op only needs to know how to
# multiply it by its own local derivative. That is the op's *gradient rule*.
#
# The tensor module prepared for this: every op builds its result in one function, which is given
# the result's data, the op's name, its input tensors (`parents`) and the settings its gradient
# needs (`ctx`). This module
#
# 1. replaces that function with a version that records `(op, parents, ctx)` on the result when an
#    input requires a gradient;
# 2. registers a gradient rule for each op name of the tensor, activation and loss modules;
# 3. adds `Tensor.backward`, which orders the recorded graph and applies the rules from the output
#    back to the leaves;
# 4. adds `no_grad`, `detach`, `requires_grad_`, and `gradcheck`, which compares every rule with
#    finite differences.
#
# No op is rewritten and there is no second Tensor class.
#
# Because of step 2 it needs the ops of `Tensor`, the activations (`relu`, `softmax`, ...) and the
# losses (`cross_entropy`, ...) to work: finish those modules before this one.

# %%
#| export
import contextlib
import ctypes
import ctypes.util
import functools
import math

import numpy as np
from fastcore.basics import patch

from tinytorch.core.tensor import Tensor, _wrap
from tinytorch.core.activations import erf

# %%
#| hide
import gc
import resource
import tracemalloc
import weakref

from fastcore.test import test_eq, test_fail, test_close, test_is

from tinytorch.utils.timing import compare

from tinytorch.core.tensor import randn, zeros, cat, stack
from tinytorch.core.activations import relu, sigmoid, tanh, gelu, softmax, log_softmax
from tinytorch.core.losses import mse_loss, cross_entropy
from tinytorch.core.losses import binary_cross_entropy_with_logits, binary_cross_entropy

# %% [markdown]
# ## Recording the graph
#
# A result records where it came from only when it will need a gradient: when some input has
# `requires_grad=True` and recording is switched on. Leaves (tensors the user created) record
# nothing.
#
# The record is a tuple of the op's name, its input tensors and its settings. It holds no function
# that refers back to the result. A closure such as `out._backward = lambda: ... out.grad ...` would
# make each result refer to itself, a reference cycle that Python's reference counting cannot free;
# the arrays would stay in memory until the cycle collector runs. The gradient rules below get the
# upstream gradient and the result's data as arguments instead, so the graph has no cycles and is
# freed the moment it is no longer referenced.

# %%
#| export
_grad_enabled = True  # switched off inside `no_grad()`

def _record(data: np.ndarray, op: str, parents: tuple, **ctx) -> Tensor:
    "Build an op's result; if an input requires a gradient, record `(op, parents, ctx)` on it."
    out = _wrap(data)
    if _grad_enabled:
        for p in parents:
            if p.requires_grad:
                out.requires_grad = True
                out._ctx = (op, parents, ctx)
                break
    return out

Tensor._from_op = staticmethod(_record)

# %%
a = Tensor([1., 2.], requires_grad=True)
b = Tensor([3., 4.])
c = a * b + 1
test_eq(c.requires_grad, True)
test_eq(c._ctx[0], 'add')
test_is(c._ctx[1][0]._ctx[1][0], a)         # c = add(mul(a, b), 1): the graph leads back to `a`
test_eq((b * 2)._ctx, None)                  # nothing requires a gradient: nothing recorded

# %% [markdown]
# `no_grad()` switches recording off, for evaluation and for the optimizer's own updates. `detach()`
# gives a tensor that shares the data but has no history; `requires_grad_()` marks a leaf.

# %%
#| export
@contextlib.contextmanager
def no_grad():
    "Context manager (or decorator) in which ops record no graph."
    global _grad_enabled
    prev, _grad_enabled = _grad_enabled, False
    try: yield
    finally: _grad_enabled = prev

def is_grad_enabled() -> bool:
    "Whether ops currently record the graph."
    return _grad_enabled

# %%
#| export
@patch
def detach(self: Tensor) -> Tensor:
    "A tensor sharing this one's data, with no history and no gradient."
    return _wrap(self.data)

@patch
def requires_grad_(self: Tensor, requires_grad: bool = True) -> Tensor:
    "Set `requires_grad` in place on a leaf tensor; returns self."
    if self._ctx is not None:
        raise RuntimeError("requires_grad_: only leaf tensors can change requires_grad; use "
                           "detach() first")
    if requires_grad and self.data.dtype.kind != 'f':
        raise TypeError(f"requires_grad_: only floating-point tensors can require gradients, got "
                        f"dtype {self.dtype}")
    self.requires_grad = requires_grad
    return self

# %%
with no_grad():
    test_eq((a * 2).requires_grad, False)
    test_eq(is_grad_enabled(), False)
test_eq(is_grad_enabled(), True)
e = a * 2
d = e.detach()
test_eq((d.requires_grad, d._ctx), (False, None))
test_is(d.data, e.data)                                     # the same data, without the history
test_eq(Tensor([1.]).requires_grad_().requires_grad, True)
test_fail(lambda: Tensor([1]).requires_grad_(), contains="floating-point")
test_fail(lambda: (a * 2).requires_grad_(False), contains="only leaf tensors")

# %% [markdown]
# ## Gradient rules
#
# A gradient rule takes the gradient of the loss with respect to the op's result, `g`, the result's
# data `out`, the input tensors, and the op's settings, and returns one gradient per input (or None
# for an input that does not require one, to skip work). Rules live in a table keyed by op name.

# %%
#| export
_grad_rules = {}

def grad_rule(op: str):
    """Decorator: register `fn(g, out, *parents, **ctx) -> tuple of input gradients` as the rule for
    `op`."""
    def register(fn):
        _grad_rules[op] = fn
        return fn
    return register

# %% [markdown]
# ### Broadcasting, backwards
#
# When `a` of shape `(3, 1)` is added to `b` of shape `(4,)`, each element of `a` is used 4 times
# and each element of `b` 3 times. By the chain rule the gradient of a value used several times is
# the sum of the gradients of its uses, so the upstream gradient of shape `(3, 4)` is summed back to
# each input's shape: over the leading axes that broadcasting added, and over the axes where the
# input had size 1.

# %%
#| export
def unbroadcast(g: np.ndarray, shape: tuple) -> np.ndarray:
    "Sum `g` over the axes that broadcasting added to or stretched in an array of `shape`."
    ### BEGIN SOLUTION
    if g.shape == shape: return g
    if g.ndim > len(shape): g = g.sum(axis=tuple(range(g.ndim - len(shape))))
    stretched = tuple(i for i, n in enumerate(shape) if n == 1 and g.shape[i] != 1)
    return g.sum(axis=stretched, keepdims=True) if stretched else g
    ### END SOLUTION

# %%
test_eq(unbroadcast(np.ones((3, 4)), (3, 1)), np.full((3, 1), 4.))
test_eq(unbroadcast(np.ones((3, 4)), (4,)), np.full(4, 3.))
test_eq(unbroadcast(np.ones((2, 3, 4)), (1, 4)), np.full((1, 4), 6.))
test_eq(unbroadcast(np.ones((2, 3)), ()), np.array(6.))
g = np.ones((2, 2)); test_is(unbroadcast(g, (2, 2)), g)   # same shape: no work

# %% [markdown]
# ### Elementwise arithmetic
#
# The local derivatives: $\partial(a+b) = (1, 1)$, $\partial(a-b) = (1, -1)$,
# $\partial(ab) = (b, a)$, $\partial(a/b) = (1/b, -a/b^2)$,
# $\partial(a^b) = (b a^{b-1}, a^b \ln a)$. Each is multiplied by `g` and unbroadcast to its input's
# shape.

# %%
#| export
@grad_rule('add')
def _add_grad(g, out, a, b):
    """Rule for `a + b`: (dL/da, dL/db), each `g` unbroadcast to that input's shape; None if not
    needed."""
    ### BEGIN SOLUTION
    return (unbroadcast(g, a.shape) if a.requires_grad else None,
            unbroadcast(g, b.shape) if b.requires_grad else None)
    ### END SOLUTION

@grad_rule('sub')
def _sub_grad(g, out, a, b):
    return (unbroadcast(g, a.shape) if a.requires_grad else None,
            unbroadcast(-g, b.shape) if b.requires_grad else None)

@grad_rule('mul')
def _mul_grad(g, out, a, b):
    "Rule for `a * b`: (g*b, g*a), each unbroadcast to its input's shape; None where not needed."
    ### BEGIN SOLUTION
    return (unbroadcast(g * b.data, a.shape) if a.requires_grad else None,
            unbroadcast(g * a.data, b.shape) if b.requires_grad else None)
    ### END SOLUTION


# %%
a, b = Tensor([[1., 2.], [3., 4.]], requires_grad=True), Tensor([10., 20.], requires_grad=True)
g = np.ones((2, 2), np.float32)
ga, gb = _add_grad(g, None, a, b)
# b was broadcast over 2 rows: its gradient sums them
test_eq(ga, g); test_eq(gb, [2., 2.])
ga, gb = _mul_grad(g, None, a, b)
test_eq(ga, [[10., 20.], [10., 20.]]); test_eq(gb, [4., 6.])
# no gradient for an input that does not need one
test_eq(_add_grad(g, None, a, Tensor([1., 1.]))[1], None)

# %%
#| export
@grad_rule('div')
def _div_grad(g, out, a, b):
    return (unbroadcast(g / b.data, a.shape) if a.requires_grad else None,
            # -a/b^2 = -out/b
            unbroadcast(-g * out / b.data, b.shape) if b.requires_grad else None)

@grad_rule('pow')
def _pow_grad(g, out, a, b):
    ga = unbroadcast(g * b.data * a.data ** (b.data - 1), a.shape) if a.requires_grad else None
    # log of a negative base is NaN, as in PyTorch
    with np.errstate(divide='ignore', invalid='ignore'):
        gb = unbroadcast(g * out * np.log(a.data), b.shape) if b.requires_grad else None
    return ga, gb

# %% [markdown]
# ### Unary math
#
# Several rules reuse the result instead of recomputing: $\partial e^x = e^x$ is `out` itself, and
# $\partial \sqrt{x} = 1 / (2\sqrt{x})$ is `1 / (2 * out)`. `abs` has no derivative at 0; like
# PyTorch we use 0 there (`np.sign(0) = 0`). `clip` passes the gradient where the input is inside
# the bounds, ends included.

# %%
#| export
@grad_rule('neg')
def _neg_grad(g, out, a): return (-g,)

@grad_rule('exp')
def _exp_grad(g, out, a): return (g * out,)

@grad_rule('log')
def _log_grad(g, out, a): return (g / a.data,)

@grad_rule('sqrt')
def _sqrt_grad(g, out, a): return (g / (2 * out),)

@grad_rule('abs')
def _abs_grad(g, out, a): return (g * np.sign(a.data),)

@grad_rule('clip')
def _clip_grad(g, out, a, min, max):
    inside = np.ones(a.shape, bool)
    if min is not None: inside &= a.data >= min
    if max is not None: inside &= a.data <= max
    return (g * inside,)

# %% [markdown]
# ### Matrix multiplication
#
# For $C = AB$ with $A$ of shape $(n, k)$ and $B$ of shape $(k, m)$: $\partial L/\partial A = G B^T$
# (shape $(n, k)$) and $\partial L/\partial B = A^T G$ (shape $(k, m)$). Check the shapes and the
# formula follows. In the 2-D case the rule computes $\partial L/\partial B$ as $(G^T A)^T$: the
# same product, but when $B$ is a transposed weight (`x @ W.T` in `Linear`) the transpose of the
# result is what reaches `W`, and it is then C-contiguous, so the optimizer's update runs over
# contiguous memory. Batched products apply the same formula to the last two axes and unbroadcast
# the batch axes. A 1-D operand is treated as a row (left) or a column (right), as the forward pass
# did.

# %%
#| export
@grad_rule('matmul')
def _matmul_grad(g, out, a, b):
    """Rule for `a @ b`: (g @ B.T, A.T @ g) for 2-D A, B (None where not needed); other ranks are
    given."""
    A, B = a.data, b.data
    if A.ndim == 2 and B.ndim == 2:                                  # the common case, no reshaping
        ### BEGIN SOLUTION
        return (g @ B.T if a.requires_grad else None, (g.T @ A).T if b.requires_grad else None)
        ### END SOLUTION
    # (..., n, k) @ (k, m), as in Linear
    if A.ndim > 2 and B.ndim == 2 and b.requires_grad:
        # one GEMM (k, m), no (..., k, m) temporary
        gb = A.reshape(-1, A.shape[-1]).T @ g.reshape(-1, g.shape[-1])
        # one GEMM too
        ga = (g.reshape(-1, g.shape[-1]) @ B.T).reshape(A.shape) if a.requires_grad else None
        return ga, gb
    A2 = A[None, :] if A.ndim == 1 else A                            # (..., n, k)
    B2 = B[:, None] if B.ndim == 1 else B                            # (..., k, m)
    # put back the m axis of a column
    g2 = g[..., None] if B.ndim == 1 else g
    # and the n axis of a row: (..., n, m)
    g2 = np.expand_dims(g2, -2) if A.ndim == 1 else g2
    ga = unbroadcast(g2 @ np.swapaxes(B2, -1, -2),
                     A2.shape).reshape(A.shape) if a.requires_grad else None
    gb = unbroadcast(np.swapaxes(A2, -1, -2) @ g2,
                     B2.shape).reshape(B.shape) if b.requires_grad else None
    return ga, gb


# %%
# (1, 2) @ (2, 1)
A, B = Tensor([[1., 2.]], requires_grad=True), Tensor([[3.], [4.]], requires_grad=True)
ga, gb = _matmul_grad(np.array([[2.]], np.float32), None, A, B)
test_eq(ga, [[6., 8.]]); test_eq(gb, [[2.], [4.]])

# %% [markdown]
# ### Reductions
#
# A sum copies each input's gradient from the one output it contributed to, so the rule broadcasts
# `g` back to the input's shape (after putting back any axes removed by `keepdims=False`). A mean
# does the same divided by the count. For `max` and `min` the gradient goes to the elements that
# attained the extreme; when several tie, it is shared equally among them, which is what PyTorch
# does for a full reduction.

# %%
#| export
def _expand(g: np.ndarray, shape: tuple, axis, keepdims: bool) -> np.ndarray:
    """Give a reduced gradient `g` back the axes the reduction removed, ready to broadcast to
    `shape`."""
    if axis is None or keepdims:
        return g.reshape([1] * len(shape)) if axis is None and not keepdims else g
    axes = (axis,) if isinstance(axis, (int, np.integer)) else axis
    return np.expand_dims(g, tuple(ax % len(shape) for ax in axes))

def _count(shape: tuple, axis) -> int:
    if axis is None: return int(np.prod(shape))
    axes = (axis,) if isinstance(axis, (int, np.integer)) else axis
    return int(np.prod([shape[ax] for ax in axes]))

# %%
#| export
@grad_rule('sum')
def _sum_grad(g, out, a, axis, keepdims):
    """Rule for a sum: a 1-tuple, `g` given back the reduced axes (`_expand`) and broadcast to
    `a.shape`."""
    ### BEGIN SOLUTION
    return (np.broadcast_to(_expand(g, a.shape, axis, keepdims), a.shape),)
    ### END SOLUTION

@grad_rule('mean')
def _mean_grad(g, out, a, axis, keepdims):
    return (np.broadcast_to(_expand(g, a.shape, axis, keepdims) / _count(a.shape, axis), a.shape),)

def _extreme_grad(g, out, a, axis, keepdims):
    # where the max (or min) was attained
    hit = a.data == _expand(out, a.shape, axis, keepdims)
    share = hit / hit.sum(axis=axis, keepdims=True)
    return ((_expand(g, a.shape, axis, keepdims) * share).astype(a.dtype, copy=False),)

grad_rule('max')(_extreme_grad)
grad_rule('min')(_extreme_grad)


# %%
x = Tensor(np.ones((2, 3)), requires_grad=True)
test_eq(_sum_grad(np.array([1., 2.], np.float32), None, x, 1, False)[0],
        [[1., 1., 1.], [2., 2., 2.]])
test_eq(_sum_grad(np.array(5., np.float32), None, x, None, False)[0], np.full((2, 3), 5.))

# %% [markdown]
# ### Shape ops, indexing and joining
#
# Reshaping and permuting move no values, so their rules move the gradient back: reshape it to the
# input's shape, or apply the inverse permutation (`np.argsort(dims)`). Indexing picks elements; its
# rule scatters `g` back into a zero array of the input's shape. Fancy indexing can pick an element
# more than once (`x[[0, 0]]`), and then its gradients must add up: `np.add.at` does that, where
# `grad[idx] += g` would keep only one of them. `cat` splits the gradient at the joins; `stack`
# needs no rule of its own (it is `unsqueeze` and `cat`).

# %%
#| export
@grad_rule('reshape')
def _reshape_grad(g, out, a): return (g.reshape(a.shape),)

@grad_rule('permute')
def _permute_grad(g, out, a, dims): return (g.transpose(np.argsort(dims)),)

def _is_basic(key) -> bool:
    "Is `key` basic indexing (ints, slices, None, ...), which never picks an element twice?"
    return all(k is None or k is Ellipsis or isinstance(k, (int, np.integer, slice))
               for k in (key if isinstance(key, tuple) else (key,)))

@grad_rule('getitem')
def _getitem_grad(g, out, a, key):
    "Rule for `a[key]`: a 1-tuple, zeros of `a.shape` with `g` added at `key` (repeats accumulate)."
    ### BEGIN SOLUTION
    ga = np.zeros(a.shape, a.dtype)
    if _is_basic(key): ga[key] = g
    else: np.add.at(ga, key, g)                                      # repeated indices accumulate
    return (ga,)
    ### END SOLUTION

@grad_rule('cat')
def _cat_grad(g, out, *tensors, dim):
    cuts = np.cumsum([t.shape[dim] for t in tensors])[:-1]
    return tuple(np.split(g, cuts, axis=dim))


# %%
x = Tensor(np.zeros(4), requires_grad=True)
test_eq(_getitem_grad(np.array([1., 2.], np.float32), None, x, slice(1, 3))[0], [0., 1., 2., 0.])
test_eq(_getitem_grad(np.array([1., 2.], np.float32), None, x, np.array([3, 3]))[0],
        [0., 0., 0., 3.])

# %% [markdown]
# ### Activations
#
# $\mathrm{ReLU}' = [x > 0]$ (0 at 0, as in PyTorch); $\sigma' = \sigma(1-\sigma)$;
# $\tanh' = 1 - \tanh^2$; both from `out`. For exact GELU,
# $\frac{d}{dx} x\Phi(x) = \Phi(x) + x\varphi(x)$ with $\varphi$ the normal density. For softmax
# $s$, the Jacobian-vector product is $s \odot (g - \langle g, s \rangle)$ along `dim`; for
# log-softmax it is $g - \mathrm{softmax}(x) \sum g$, with $\mathrm{softmax}(x) = e^{\text{out}}$.

# %%
#| export
@grad_rule('relu')
def _relu_grad(g, out, a): return (g * (a.data > 0),)

@grad_rule('sigmoid')
def _sigmoid_grad(g, out, a): return (g * out * (1 - out),)

@grad_rule('tanh')
def _tanh_grad(g, out, a): return (g * (1 - out * out),)

@grad_rule('gelu')
def _gelu_grad(g, out, a, approximate):
    x = a.data
    if approximate == 'tanh':
        k = math.sqrt(2 / math.pi)
        # d = (1 + t)/2 + k x (1 - t^2)(1 + 3c x^2)/2 with t = tanh(k x (1 + c x^2)), c = 0.044715,
        # in three
        # arrays updated in place: each temporary of an expression costs a pass over memory and
        # fresh pages
        # x*x: float32 x**3 is far slower
        x2 = x * x
        t = x2 * 0.044715; t += 1; t *= x; t *= k; np.tanh(t, out=t)
        x2 *= 3 * 0.044715; x2 += 1; x2 *= x; x2 *= 0.5 * k          # k x (1 + 3c x^2) / 2
        d = t * t; np.subtract(1, d, out=d); d *= x2                 # k x (1 - t^2)(1 + 3c x^2) / 2
        t += 1; t *= 0.5; d += t
        d *= g
        return (d.astype(x.dtype, copy=False),)
    else: d = 0.5 * (1 + erf(x / math.sqrt(2))) + x * np.exp(-0.5 * x * x) / math.sqrt(2 * math.pi)
    return ((g * d).astype(x.dtype, copy=False),)

@grad_rule('softmax')
def _softmax_grad(g, out, a, dim): return (out * (g - (g * out).sum(axis=dim, keepdims=True)),)

@grad_rule('log_softmax')
def _log_softmax_grad(g, out, a, dim): return (g - np.exp(out) * g.sum(axis=dim, keepdims=True),)

# %% [markdown]
# ### Losses
#
# Cross-entropy from logits has the gradient that makes it the standard classification loss:
# $\partial \ell / \partial z = \mathrm{softmax}(z) - q$, where $q$ is the target distribution
# (one-hot, or $(1-\varepsilon)$ one-hot $+ \varepsilon / C$ with label smoothing), divided by $N$
# for the mean. Binary cross-entropy from logits likewise gives $\sigma(x) - y$. For `BCELoss` on
# probabilities, $\partial \ell/\partial p = (p - y) / (p(1-p))$, with the denominator kept at least
# $10^{-12}$ as in PyTorch.

# %%
#| export
@grad_rule('cross_entropy')
def _cross_entropy_grad(g, out, z, target, reduction, label_smoothing):
    """Rule for cross-entropy: (dL/dz,), softmax(z) minus the smoothed one-hot `target`, times `g`
    (/N for mean)."""
    ### BEGIN SOLUTION
    N, C = z.shape
    e = np.exp(z.data - z.data.max(axis=1, keepdims=True))
    d = e / e.sum(axis=1, keepdims=True)                            # softmax, (N, C)
    d[np.arange(N), target] -= 1 - label_smoothing
    if label_smoothing: d -= label_smoothing / C
    scale = g / N if reduction == 'mean' else g if reduction == 'sum' else g[:, None]
    return (d * scale,)
    ### END SOLUTION

@grad_rule('bce_with_logits')
def _bce_with_logits_grad(g, out, x, y):
    s = np.exp(-np.logaddexp(0, -x.data))                            # sigmoid(x)
    return (g * (s - y.data) if x.requires_grad else None, g * -x.data if y.requires_grad else None)

@grad_rule('binary_cross_entropy')
def _bce_grad(g, out, p, y):
    P, Y = p.data, y.data
    gp = g * (P - Y) / np.maximum(P * (1 - P), 1e-12) if p.requires_grad else None
    with np.errstate(divide='ignore'):
        gy = None
        if y.requires_grad: gy = g * (np.maximum(np.log1p(-P), -100) - np.maximum(np.log(P), -100))
    return gp, gy


# %%
z = Tensor(np.zeros((2, 2)), requires_grad=True)                # softmax of zeros: (1/2, 1/2)
dz, = _cross_entropy_grad(np.array(1., np.float32), None, z, np.array([0, 1]), 'mean', 0.0)
test_close(dz, [[-0.25, 0.25], [0.25, -0.25]])                 # (softmax - onehot) / N

# %% [markdown]
# ## The backward pass
#
# `backward()` first puts the graph in topological order: every tensor after all the tensors
# computed from it, when read from the output. A depth-first walk does it without recursion (a deep
# network would otherwise exceed Python's recursion limit). Then it walks that order once, applying
# each op's rule and adding up the gradients that reach each tensor from its different uses. Leaves
# receive their gradient in `.grad`, added to any gradient already there, as in PyTorch: call
# `zero_grad()` between steps.
#
# Afterwards the graph is released: each result drops its record, so the intermediate arrays can be
# freed at once. A second `backward()` through a released graph is an error, not a silent zero.
#
# One detail guards the leaves. Some rules pass the upstream gradient on unchanged (`add` hands the
# same array to both inputs) or as a view (`reshape`, `permute`), so two leaves could receive the
# same memory; an in-place change to one leaf's `.grad`, as gradient clipping makes, would then
# change the other's. The accumulation gives a leaf the array it received only when no other leaf
# holds any of that memory, and a copy otherwise.

# %%
#| export
_RELEASED = ('released', (), {})  # stands in for the record of a result whose graph was released

def _topo_order(root: Tensor) -> list:
    "Tensors of the graph ending at `root`, each after all its inputs."
    order, seen, stack = [], set(), [(root, False)]
    while stack:
        t, inputs_done = stack.pop()
        if inputs_done: order.append(t); continue
        if id(t) in seen: continue
        seen.add(id(t))
        stack.append((t, True))
        for p in (t._ctx[1] if t._ctx is not None else ()):
            if p.requires_grad and id(p) not in seen: stack.append((p, False))
    return order

# %%
#| export
@patch
def backward(self: Tensor,
             gradient=None,       # dL/dself; may be omitted for a single-element tensor (then 1)
             retain_graph=False,  # keep the graph for another backward pass?
            ) -> None:
    """Accumulate the gradient of `self` with respect to every leaf that requires one into the
    leaves' `.grad`."""
    if not self.requires_grad:
        raise RuntimeError("backward: tensor does not require grad and has no graph")
    if gradient is None:
        if self.data.size != 1:
            raise RuntimeError(f"backward: the gradient can be implied only for a single-element "
                               f"tensor, got shape {self.shape}; pass gradient=")
        gradient = np.ones_like(self.data)
    gradient = np.asarray(gradient.data if isinstance(gradient, Tensor) else gradient,
                          dtype=self.dtype)
    if gradient.shape != self.shape:
        raise ValueError(f"backward: gradient shape {gradient.shape} != tensor shape {self.shape}")
    _backward(self, gradient, retain_graph)

# %%
#| export
def _root_base(a: np.ndarray):
    "The object that owns the memory `a` views."
    while isinstance(a, np.ndarray) and a.base is not None: a = a.base
    return a

def _own(g: np.ndarray, dtype, claimed: set) -> np.ndarray:
    """`g` itself if it is a writeable, contiguous view of a whole buffer no other leaf holds, else
    a copy."""
    root = _root_base(g)
    if (id(root) in claimed or g.dtype != dtype or not g.flags.c_contiguous or not g.flags.writeable
            or g.size != getattr(root, 'size', -1)):
        return np.array(g, dtype=dtype, order='C')
    claimed.add(id(root))
    return g

# %%
#| export
def _backward(root: Tensor, gradient: np.ndarray, retain_graph: bool):
    "Apply the gradient rules over the graph ending at `root`, output first."
    grads = {id(root): gradient}
    # memory handed out already; the caller's gradient is never handed out
    claimed = {id(_root_base(gradient))}
    for t in reversed(_topo_order(root)):
        g = grads.pop(id(t), None)
        if g is None: continue
        # a leaf: give it an array of its own
        if t._ctx is None:
            t.grad = _own(g, t.dtype, claimed) if t.grad is None else t.grad + g
            continue
        if t._ctx is _RELEASED:
            raise RuntimeError("backward: trying to backward through a graph that was already "
                               "released; call backward(retain_graph=True) the first time if you "
                               "need two passes")
        # Look up the rule of `t`'s op (`t._ctx` is (op, parents, ctx)), call it with g, t.data, the
        # parents and
        # ctx, and add each parent's gradient (skip None and parents that need none) into `grads`; a
        # gradient
        # whose shape differs from its parent's is a RuntimeError naming the op and both shapes.
        ### BEGIN SOLUTION
        op, parents, ctx = t._ctx
        for p, pg in zip(parents, _grad_rules[op](g, t.data, *parents, **ctx)):
            if pg is None or not p.requires_grad: continue
            if pg.shape != p.shape:
                raise RuntimeError(f"backward: the rule for '{op}' gave a gradient of shape "
                                   f"{pg.shape} for an input of shape {p.shape}")
            grads[id(p)] = grads[id(p)] + pg if id(p) in grads else pg
        ### END SOLUTION
        if not retain_graph: t._ctx = _RELEASED

# %% [markdown]
# A worked example a reader can check by hand: $L = \sum (a \cdot b + a)$ with $a = (1, 2)$,
# $b = (3, 4)$ gives $\partial L/\partial a = b + 1 = (4, 5)$ and
# $\partial L/\partial b = a = (1, 2)$. `a` is used twice, and the two contributions add up.

# %%
a = Tensor([1., 2.], requires_grad=True)
b = Tensor([3., 4.], requires_grad=True)
(a * b + a).sum().backward()
test_eq(a.grad, [4., 5.])
test_eq(b.grad, [1., 2.])
test_eq(a.grad.dtype, np.float32)

# %% [markdown]
# Gradients accumulate across calls, broadcast operands get gradients of their own shape, and the
# errors name what went wrong.

# %%
(a * 2).sum().backward()
test_eq(a.grad, [6., 7.])                                           # 4 + 2, 5 + 2
w = Tensor(np.ones((3, 1)), requires_grad=True)
(w + Tensor(np.ones(4))).sum().backward()
test_eq(w.grad, np.full((3, 1), 4.))
y = a * 2
test_fail(lambda: y.backward(), contains="single-element tensor, got shape (2,)")
y.backward(np.ones(2))
test_fail(lambda: y.backward(np.ones(2)), contains="already released")
test_fail(lambda: Tensor([1.]).backward(), contains="does not require grad")
z = (a * 3).sum()
z.backward(retain_graph=True); z.backward()                          # two passes when asked for
test_fail(lambda: (a * 2).backward(np.ones(3)), contains="gradient shape (3,) != tensor shape (2,)")

# %% [markdown]
# A deep chain does not hit the recursion limit:

# %%
x = Tensor([1.], requires_grad=True)
y = x
for _ in range(5000): y = y * 1.0001
y.backward()
test_close(x.grad[0], 1.0001 ** 5000, eps=1e-2)

# %% [markdown]
# ## Checking gradients against finite differences
#
# A wrong gradient rule does not crash; it makes training slower or useless. The check is the
# central difference
# $$\frac{\partial f}{\partial x_i}
#   \approx \frac{f(x + \epsilon e_i) - f(x - \epsilon e_i)}{2\epsilon},$$
# whose error is $O(\epsilon^2)$ from truncation plus about $\delta / \epsilon$ from rounding, with
# $\delta \approx 10^{-16}$ in float64. With $\epsilon = 10^{-6}$ both are below $10^{-9}$, far
# below any mistake in a rule; in float32 the rounding term would be $10^{-7}/10^{-6}$, too large,
# so `gradcheck` requires float64 inputs.
#
# For an output with many elements, `gradcheck` checks the gradient of $\sum_j w_j f_j$ with fixed
# random weights $w$: one backward pass covers every output element, and an error in any of them
# shows.

# %%
#| export
class GradcheckError(AssertionError):
    "An analytic gradient disagreed with finite differences."

def _weighted(fn, inputs, w) -> float:
    with no_grad(): return float((fn(*inputs).data * w).sum())

# %%
#| export
def gradcheck(fn,              # function of Tensors returning a Tensor
              *inputs: Tensor, # float64 Tensors; those with requires_grad=True are checked
              eps=1e-6,        # finite-difference step
              atol=1e-5,       # absolute tolerance
              rtol=1e-3,       # relative tolerance
              seed=0,          # for the random output weights
             ) -> bool:
    """Check the gradients `backward` computes for `fn` against central differences; raise
    `GradcheckError` if they differ."""
    checked = [i for i, x in enumerate(inputs) if isinstance(x, Tensor) and x.requires_grad]
    for i in checked:
        if inputs[i].dtype != np.float64:
            raise TypeError(f"gradcheck: input {i} has dtype {inputs[i].dtype}; use float64")
        inputs[i].grad = None
    out = fn(*inputs)
    w = np.random.default_rng(seed).standard_normal(out.shape)
    (out * Tensor(w, dtype=np.float64)).sum().backward()
    ### BEGIN SOLUTION
    for i in checked:
        x, analytic = inputs[i], inputs[i].grad
        if analytic is None: raise GradcheckError(f"gradcheck: input {i} received no gradient")
        for idx in np.ndindex(x.shape):
            orig = x.data[idx]
            x.data[idx] = orig + eps; plus = _weighted(fn, inputs, w)
            x.data[idx] = orig - eps; minus = _weighted(fn, inputs, w)
            x.data[idx] = orig
            numeric = (plus - minus) / (2 * eps)
            if abs(analytic[idx] - numeric) > atol + rtol * abs(numeric):
                raise GradcheckError(f"gradcheck: input {i} {x.shape} at index {idx}: analytic "
                                     f"{analytic[idx]:.6g}, numeric {numeric:.6g}")
    ### END SOLUTION
    return True

# %%
x = randn(3, 1, seed=0, dtype=np.float64).requires_grad_()                    # (3, 1)
y = randn(4, seed=1, dtype=np.float64).requires_grad_()                       # (4,)
test_eq(gradcheck(lambda a, b: a * b + a / (b * b + 1), x, y), True)
# a deliberately wrong rule is caught
_grad_rules['exp'], saved = (lambda g, out, a: (g * 2 * out,)), _grad_rules['exp']
z = randn(3, seed=2, dtype=np.float64).requires_grad_()
try: test_fail(lambda: gradcheck(lambda a: a.exp(), z), contains="analytic")
finally: _grad_rules['exp'] = saved                          # restored even if the check fails
test_fail(lambda: gradcheck(lambda a: a * 2, Tensor([1.], requires_grad=True)),
          contains="use float64")

# %% [markdown]
# ## Every rule, checked
#
# Each op of the tensor, activation and loss modules, on small float64 inputs. Inputs are kept away
# from the points where an op has no derivative (0 for `abs` and `relu`, the bounds of `clip`, ties
# for `max`), since there the finite difference straddles a kink. Wider random coverage, with shapes
# drawn by hypothesis, is in `tests/test_05_autograd.py`.

# %%
A = randn(2, 3, seed=3, dtype=np.float64).requires_grad_()                    # (2, 3)
B = randn(3, 4, seed=4, dtype=np.float64).requires_grad_()                    # (3, 4)
P = (randn(2, 3, seed=5, dtype=np.float64).abs() + 0.5).requires_grad_()      # (2, 3), positive
P1 = Tensor(P.data + 1, dtype=np.float64, requires_grad=True)                 # (2, 3), above 1
v = randn(3, seed=6, dtype=np.float64).requires_grad_()                       # (3,)
S = randn(2, 2, 3, seed=7, dtype=np.float64).requires_grad_()                 # (2, 2, 3)
M = randn(2, 2, seed=10, dtype=np.float64).requires_grad_()                   # (2, 2)
checks = {
    'add, sub': lambda: gradcheck(lambda a, b: a + b - b * 2, A, v),
    'div, pow': lambda: gradcheck(lambda a, b: a / b + a ** 3 + b ** a, P, P1),
    'matmul 2-D': lambda: gradcheck(lambda a, b: a @ b, A, B),
    'matmul batched': lambda: gradcheck(lambda a, b: a @ b, S, B),
    'matmul 1-D': lambda: gradcheck(lambda a, b: (a @ b) + (b.T @ a.T)[0], v, B),
    'sum, mean': lambda: gradcheck(lambda a: a.sum(axis=0) * a.mean(axis=1, keepdims=True), A),
    'max, min': lambda: gradcheck(lambda a: a.max(axis=1) + a.min(), A),
    'exp, log, sqrt': lambda: gradcheck(lambda p: p.exp() + p.log() + p.sqrt(), P),
    'abs, neg, clip': lambda: gradcheck(lambda p: (-p).abs() + p.clip(0.9, 1.1), P),
    'reshape, permute': lambda: gradcheck(lambda a: a.reshape(3, 2).T.transpose(0, 1).flatten(), A),
    'getitem': lambda: gradcheck(lambda a: a[[0, 0, 1], 1:] * a[1, :2] + a[a > 0].sum(), A),
    'cat, stack': lambda: gradcheck(lambda a, b: cat([a, b], 1).sum(0)
                                                 + stack([a, a]).sum((0, 1)).sum(), A, M),
    'relu, sigmoid, tanh': lambda: gradcheck(lambda p, a: relu(p) + sigmoid(a) + tanh(a), P, A),
    'gelu exact, tanh': lambda: gradcheck(lambda a: gelu(a) + gelu(a, 'tanh'), A),
    'softmax, log_softmax': lambda: gradcheck(lambda a: softmax(a, 0) + log_softmax(a, 1), A),
    'cross_entropy': lambda: gradcheck(
        lambda a: cross_entropy(a, Tensor([2, 0]), label_smoothing=0.1), A),
    'bce (logits, probs)': lambda: gradcheck(
        lambda a, p: binary_cross_entropy_with_logits(a, Tensor(np.ones((2, 3))))
                     + binary_cross_entropy(sigmoid(p), Tensor(np.zeros((2, 3)))), A, P),
    'mse': lambda: gradcheck(lambda a: mse_loss(a, Tensor(np.zeros((2, 3)))), A),
}
for name, check in checks.items(): test_eq(check(), True)
print(f"{len(checks)} groups of ops pass gradcheck")

# %% [markdown]
# Every op name used by the tensor, activation and loss modules has a rule:

# %%
ops_used = {'add', 'sub', 'mul', 'div', 'pow', 'neg', 'exp', 'log', 'sqrt', 'abs', 'clip', 'matmul',
            'sum', 'mean', 'max', 'min', 'reshape', 'permute', 'getitem', 'cat', 'relu', 'sigmoid',
            'tanh', 'gelu', 'softmax', 'log_softmax', 'cross_entropy', 'bce_with_logits',
            'binary_cross_entropy'}
test_eq(ops_used - set(_grad_rules), set())

# %% [markdown]
# ## Memory: the graph is released
#
# After `backward()` each result has dropped its record of its inputs, so nothing keeps the
# intermediate arrays alive once the loss goes out of scope. A weak reference to an intermediate
# shows it is gone right after backward and deletion of the loss, without any help from the cycle
# collector (switched off here).

# %%
gc.disable()
W = Tensor(np.random.default_rng(0).standard_normal((256, 256)), requires_grad=True)
h = relu(Tensor(np.ones((64, 256))) @ W)
h_ref = weakref.ref(h)
loss = h.sum(); del h
loss.backward(); del loss
test_is(h_ref(), None)
gc.enable()

# %% [markdown]
# Over many steps, memory stays flat. The cell measures the memory NumPy allocations hold after 10
# and after 100 steps of a small model, with `tracemalloc`, and the number of objects the cycle
# collector would have to free (0: there are no cycles).

# %%
def step():
    W.grad = None
    loss = (relu(x_batch @ W) * 0.5).mean()
    loss.backward()

x_batch = Tensor(np.random.default_rng(1).standard_normal((64, 256)))
gc.collect(); gc.disable()
tracemalloc.start()
for _ in range(10): step()
after10 = tracemalloc.get_traced_memory()[0]
for _ in range(90): step()
after100 = tracemalloc.get_traced_memory()[0]
tracemalloc.stop()
cyclic = gc.collect(); gc.enable()
print(f"traced memory after 10 steps {after10/1e6:.2f} MB, after 100 steps {after100/1e6:.2f} MB; "
      f"objects in reference cycles: {cyclic}")
assert after100 <= after10 * 1.05 and cyclic == 0

# %% [markdown]
# For contrast, the closure design: each result stores `out._backward = lambda: ... out ...`, a
# function that refers to the result itself. The loop below builds 100 such results and drops them;
# none can be freed by reference counting, and the cycle collector finds them all.

# %%
class ClosureNode:
    def __init__(self, data, parents=()):
        self.data, self.grad, self._prev = data, None, parents
        self._backward = lambda: None
def closure_add(a, b):
    out = ClosureNode(a.data + b.data, (a, b))
    def _backward(): a.grad = out.grad; b.grad = out.grad     # refers to `out`: a reference cycle
    out._backward = _backward
    return out

gc.collect(); gc.disable()
u = ClosureNode(np.ones(1000))
for _ in range(100): closure_add(u, u)
leaked = gc.collect(); gc.enable()
print(f"closure design: the cycle collector freed {leaked} objects after 100 dropped results")
assert leaked >= 100

# %% [markdown]
# ## Memory: freed arrays are kept for reuse
#
# A training step allocates and frees the same large arrays every time: activations, gradients,
# temporaries. With its default settings glibc's `malloc` serves blocks above 128 KiB (a threshold
# it raises as it goes) straight from the operating system and hands freed memory at the top of the
# heap back to it, so the next step gets fresh pages, and the first write to each 4 KiB page is a
# page fault the kernel must serve and zero (the acceleration module measures what that costs a
# training step). `keep_freed_memory` sets two `mallopt` parameters so that freed memory up to
# `nbytes` stays in the process for reuse, and blocks up to 32 MiB are served from it; importing
# this module calls it. The price is memory: up to `nbytes` of freed memory is kept rather than
# returned.

# %%
#| export
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3   # mallopt parameter numbers, from glibc's malloc.h

@functools.lru_cache(maxsize=None)
def _libc():
    "The C library, or None where ctypes cannot find one."
    name = ctypes.util.find_library('c')
    return ctypes.CDLL(name) if name else None

def keep_freed_memory(nbytes: int = 256 * 2**20,  # freed memory to keep for reuse
                     ) -> bool:
    "Ask glibc's malloc to keep freed memory for reuse, not return it; False without glibc."
    libc = _libc()
    if libc is None or not hasattr(libc, 'mallopt'): return False
    ok_mmap = libc.mallopt(_M_MMAP_THRESHOLD, min(nbytes, 32 * 2**20))   # 32 MiB: glibc's largest
    return bool(ok_mmap) and bool(libc.mallopt(_M_TRIM_THRESHOLD, nbytes))

keep_freed_memory()

# %% [markdown]
# Three 4 MiB arrays alive at once, made and dropped ten times: the page faults per round with
# glibc's initial thresholds (128 KiB) and with the memory kept.

# %%
def three_arrays():
    a, b, c = np.ones(2**20, np.float32), np.ones(2**20, np.float32), np.ones(2**20, np.float32)

def faults_per_round(fn, rounds=10) -> float:
    f0 = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    for _ in range(rounds): fn()
    return (resource.getrusage(resource.RUSAGE_SELF).ru_minflt - f0) / rounds

if keep_freed_memory(128 * 2**10):
    returned = faults_per_round(three_arrays)
    test_eq(keep_freed_memory(), True)
    three_arrays(); kept = faults_per_round(three_arrays)
    print(f"page faults per round: {returned:,.0f} with memory returned, {kept:,.0f} with it kept")
    assert kept < returned / 10
else: print("no glibc malloc here: keep_freed_memory does nothing")

# %% [markdown]
# ## What recording costs
#
# The recording adds one check per input to every op. The benchmark in `benchmarks/` measures the
# per-op overhead and a whole training step against raw NumPy; here, a quick look with `compare`
# (the two alternate over 5 rounds of 20,000 calls).

# %%
xs, ys = Tensor(np.ones(100, np.float32), requires_grad=True), Tensor(np.ones(100, np.float32))
xa, ya = xs.data, ys.data
c = compare({'NumPy add': lambda: xa + ya, 'Tensor add, recording': lambda: xs + ys}, rounds=5,
            number=20_000)
for name, m in c.results.items(): print(f"{name:>22}: {m.median * 1e6:.2f} us")
