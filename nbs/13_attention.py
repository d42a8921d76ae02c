# %%
#| default_exp core.attention

# %% [markdown]
# # Attention
#
# > Scaled dot-product attention as one op with a hand-derived gradient, and multi-head attention.

# %% [markdown]
# In attention every position of a sequence asks a question (a *query* vector), every position
# offers a *key* vector to be matched against, and a *value* vector to be passed on. Position $i$'s
# output is an average of the values, weighted by how well its query matches each key:
#
# $$\mathrm{Attention}(Q, K, V) = \mathrm{softmax}\!\left(\frac{Q K^T}{\sqrt{d_h}} + M\right) V ,$$
#
# with $Q$ of shape $(T_q, d_h)$, $K$ of shape $(T_k, d_h)$, $V$ of shape $(T_k, d_v)$, and a mask
# $M$ that is $0$ where a query may look at a key and $-\infty$ where it may not. This module builds
#
# - `scaled_dot_product_attention`, with PyTorch's signature and masks, as *one* op: the forward
#   pass in NumPy and a gradient rule derived by hand, instead of a chain of ops each keeping its
#   own $(T_q, T_k)$ array;
# - `MultiHeadAttention`, nanoGPT's causal self-attention layer: one `Linear` computes queries, keys
#   and values for all heads, the heads attend in parallel, and a second `Linear` mixes their
#   outputs. It accepts the keys and values of earlier positions and returns the new ones, so
#   generation can feed one token at a time and get exactly what a full pass over the prefix gives.
#
# The module ends by measuring what attention costs as the sequence grows: the score matrix has
# $T^2$ entries. Every exercise sits between `### BEGIN SOLUTION` and `### END SOLUTION`; the cells
# under it test it at once.

# %%
#| export
import functools
import math

import numpy as np
from fastcore.basics import patch

from tinytorch.core.tensor import Tensor, rand, cat
from tinytorch.core.autograd import grad_rule, unbroadcast
from tinytorch.core.layers import Module, Linear

# %%
#| hide
import tracemalloc

import matplotlib.pyplot as plt
from fastcore.test import test_eq, test_fail, test_close

from tinytorch.core.tensor import manual_seed, randn, zeros, trace_ops
from tinytorch.core.autograd import gradcheck, no_grad
from tinytorch.core.activations import softmax
from tinytorch.core.layers import Parameter
from tinytorch.utils.timing import blas_threads, compare, measure

# %% [markdown]
# ## Why the scores are scaled
#
# If the entries of $q$ and $k$ are independent with mean 0 and variance 1, their dot product is a
# sum of $d_h$ terms of variance 1, so it has variance $d_h$. With $d_h = 64$ the scores spread over
# tens of units, and softmax of such scores puts nearly all the weight on one key: the output copies
# one value, and the gradient through the other weights all but vanishes. Dividing by $\sqrt{d_h}$
# brings the variance back to 1. The cell measures both.

# %%
hs, Tk = 64, 256
q_, k_ = randn(1000, hs, seed=0).numpy(), randn(Tk, hs, seed=1).numpy()
raw = q_ @ k_.T                                                      # (1000, 256) unscaled scores
def top_weight(s): e = np.exp(s - s.max(1, keepdims=True)); return (e.max(1) / e.sum(1)).mean()
scaled = raw / math.sqrt(hs)
print(f"head size {hs}: score std {raw.std():.2f} unscaled, {scaled.std():.2f} scaled; "
      f"mean largest softmax weight over {Tk} keys: {top_weight(raw):.2f} unscaled, "
      f"{top_weight(scaled):.3f} scaled")
test_close(raw.std(), math.sqrt(hs), eps=0.2)  # sampling error of 256,000 products
test_close((raw / math.sqrt(hs)).std(), 1., eps=0.03)

# %% [markdown]
# ## Masks: which keys a query may see
#
# PyTorch's `scaled_dot_product_attention` takes the mask in two forms, and so does ours:
#
# - a boolean `attn_mask`, `True` where the query **may** attend to the key;
# - a float `attn_mask`, added to the scores ($-\infty$ forbids, other values bias, as in ALiBi or
#   T5's relative position bias).
#
# Either broadcasts against the scores' shape `(..., Tq, Tk)`. `is_causal=True` adds the causal
# mask: no position sees a later one. When there are fewer queries than keys, the queries are the
# *last* $T_q$ positions of the sequence (the others are keys and values cached from earlier steps),
# so query $i$ stands at position $T_k - T_q + i$ and may see keys $0 .. T_k - T_q + i$. This
# bottom-right alignment is what generation with a KV cache needs. **PyTorch's `is_causal` differs
# here**: it aligns the mask top-left (query $i$ sees keys $0..i$) whatever $T_k$ is; for $T_q =
# T_k$ the two agree. PyTorch also refuses `attn_mask` together with `is_causal`; here the two masks
# combine: a key must be allowed by both.
#
# All forms become one additive array of zeros and $-\infty$ (or the float mask's values). The
# causal part depends only on $(T_q, T_k)$, so it is built once per pair and cached, read-only.

# %%
#| export
@functools.lru_cache(maxsize=64)
def _causal_bias(Tq: int, Tk: int, dtype: np.dtype) -> np.ndarray:
    "(Tq, Tk) additive mask, bottom-right aligned: 0 where key j <= i + Tk - Tq, else -inf. Cached."
    bias = np.triu(np.full((Tq, Tk), -np.inf, dtype), k=Tk - Tq + 1)
    bias.setflags(write=False)
    return bias

def _attention_bias(attn_mask,          # None, bool (True: may attend) or float (added to scores)
                    is_causal: bool,
                    att_shape: tuple,   # shape of the attention weights, (..., Tq, Tk)
                    dtype) -> np.ndarray | None:
    "The additive mask for `attn_mask` and `is_causal`, broadcastable to `att_shape`, or None."
    bias = _causal_bias(*att_shape[-2:], np.dtype(dtype)) if is_causal else None
    if attn_mask is None: return bias
    m = attn_mask.data if isinstance(attn_mask, Tensor) else np.asarray(attn_mask)
    if m.dtype == np.bool_: m = np.where(m, np.dtype(dtype).type(0), np.dtype(dtype).type(-np.inf))
    elif m.dtype.kind == 'f': m = m.astype(dtype, copy=False)
    else: raise TypeError(f"scaled_dot_product_attention: attn_mask must be bool or float, got "
                          f"dtype {m.dtype}")
    try: fits = np.broadcast_shapes(m.shape, att_shape) == tuple(att_shape)
    except ValueError: fits = False
    if not fits: raise ValueError(f"scaled_dot_product_attention: attn_mask of shape {m.shape} "
                                  f"does not broadcast to the weights' shape {tuple(att_shape)}")
    return m if bias is None else m + bias

# %%
test_eq(_causal_bias(3, 3, np.dtype(np.float32)),
        [[0, -np.inf, -np.inf], [0, 0, -np.inf], [0, 0, 0]])
# 2 new queries, 2 cached keys
test_eq(_causal_bias(2, 4, np.dtype(np.float32)), [[0, 0, 0, -np.inf], [0, 0, 0, 0]])
test_eq(_causal_bias(1, 5, np.dtype(np.float32)), np.zeros((1, 5)))  # one new token sees everything
# more queries than keys: row 0 sees nothing
test_eq(_causal_bias(3, 2, np.dtype(np.float32))[0], [-np.inf, -np.inf])
test_eq(_causal_bias(3, 3, np.dtype(np.float32)).flags.writeable, False)
test_eq(_attention_bias(None, False, (2, 2), np.float32), None)
test_eq(_attention_bias(np.array([True, False]), False, (2, 2), np.float32), [0, -np.inf])
test_eq(_attention_bias(np.array([[0.5, 0.], [0., 0.]]), True, (2, 2), np.float32),
        [[0.5, -np.inf], [0, 0]])
test_eq(_attention_bias(Tensor([1., 2.]), False, (3, 1, 2), np.float64).dtype, np.float64)
test_fail(lambda: _attention_bias(np.array([1, 0]), False, (1, 2), np.float32),
          contains="must be bool or float, got dtype int64")
test_fail(lambda: _attention_bias(np.ones((2, 2, 3)), False, (4, 2, 3), np.float32),
          contains="attn_mask of shape (2, 2, 3) does not broadcast to the weights' shape "
                   "(4, 2, 3)")
# would grow the shape
test_fail(lambda: _attention_bias(np.ones((2, 1, 3)), False, (2, 3), np.float32),
          contains="of shape (2, 1, 3) does not broadcast")

# %% [markdown]
# The inputs are checked before any arithmetic, and the errors name the shapes. Batch dimensions
# (such as batch and head) may differ between query, key and value as long as they broadcast;
# multi-query attention, in which all query heads share one key head and one value head, is that
# broadcast with a size-1 head axis.

# %%
#| export
def _check_attention(query, key, value, dropout_p) -> tuple:
    "Check `scaled_dot_product_attention`'s arguments; return the weights' shape (..., Tq, Tk)."
    op = 'scaled_dot_product_attention'
    for name, t in (('query', query), ('key', key), ('value', value)):
        if not isinstance(t, Tensor): raise TypeError(f"{op}: {name} must be a Tensor, got "
                                                      f"{type(t).__name__}")
        if t.ndim < 2: raise ValueError(f"{op}: {name} must have shape (..., T, E), got {t.shape}")
    if query.dtype.kind != 'f' or not query.dtype == key.dtype == value.dtype:
        raise TypeError(f"{op}: query, key and value must share one float dtype, got "
                        f"{query.dtype}, {key.dtype}, {value.dtype}")
    if query.shape[-1] != key.shape[-1]:
        raise ValueError(f"{op}: query {query.shape} and key {key.shape} must end in the same head "
                         f"size")
    if key.shape[-2] != value.shape[-2] or key.shape[-2] == 0:
        raise ValueError(f"{op}: key {key.shape} and value {value.shape} must have the same number "
                         f"of positions, at least 1")
    try: batch = np.broadcast_shapes(query.shape[:-2], key.shape[:-2], value.shape[:-2])
    except ValueError:
        raise ValueError(f"{op}: batch dims of query {query.shape}, key {key.shape}, "
                         f"value {value.shape} do not broadcast") from None
    if not 0 <= dropout_p < 1: raise ValueError(f"{op}: dropout_p must be in [0, 1), got "
                                                f"{dropout_p}")
    return batch + (query.shape[-2], key.shape[-2])

# %%
q, k = zeros(2, 4, 3, 8), zeros(2, 1, 5, 8)
# key/value shared across heads and batch
test_eq(_check_attention(q, k, zeros(5, 6), 0.), (2, 4, 3, 5))
test_fail(lambda: _check_attention(q, zeros(2, 4, 5, 7), zeros(2, 4, 5, 7), 0.),
          contains="query (2, 4, 3, 8) and key (2, 4, 5, 7) must end in the same head size")
test_fail(lambda: _check_attention(q, k, zeros(2, 1, 4, 8), 0.),
          contains="key (2, 1, 5, 8) and value (2, 1, 4, 8) must have the same number of positions")
test_fail(lambda: _check_attention(q, zeros(3, 4, 5, 8), zeros(3, 4, 5, 8), 0.),
          contains="batch dims of query (2, 4, 3, 8)")
test_fail(lambda: _check_attention(q, k, zeros(5, 8, dtype=np.float64), 0.),
          contains="share one float dtype, got float32, float32, float64")
test_fail(lambda: _check_attention(zeros(8), k, k, 0.),
          contains="query must have shape (..., T, E), got (8,)")
test_fail(lambda: _check_attention(q, k, k, 1.), contains="dropout_p must be in [0, 1), got 1.0")

# %% [markdown]
# ## Softmax over the keys
#
# The weights are a softmax along the last axis of the scores, the mask added first, all computed in
# place in the scores' array (a helper, not an exercise: it only saves memory) to avoid another
# $(T_q, T_k)$ array. As in the activations module, the row maximum is subtracted first. A row in
# which every key is masked has maximum $-\infty$, and $-\infty - (-\infty)$ is NaN; such a row gets
# all-zero weights instead, so its output is zero and no gradient flows through it. PyTorch's
# `scaled_dot_product_attention` does the same (a test compares them), and it happens in practice
# for a query that is itself padding.

# %%
#| export
def _softmax_(s: np.ndarray,   # scores (..., Tq, Tk); overwritten
              bias=None,       # None, or an additive mask that broadcasts to s's shape
             ) -> np.ndarray:
    "Softmax of `s + bias` along the last axis, in `s`'s memory; an all -inf row becomes zeros."
    if bias is not None:
        if np.broadcast_shapes(s.shape, bias.shape) != s.shape: s = s + bias   # bias has more axes
        else: np.add(s, bias, out=s)
    m = s.max(axis=-1, keepdims=True)                                 # (..., Tq, 1)
    m[m == -np.inf] = 0  # a fully masked row: exp(-inf - 0) = 0
    np.exp(np.subtract(s, m, out=s), out=s)
    l = s.sum(axis=-1, keepdims=True)                                 # (..., Tq, 1)
    l[l == 0] = 1                                                     # and 0 / 1 = 0, not NaN
    s /= l
    return s

# %%
s = np.array([[0., np.log(3)], [-np.inf, -np.inf], [1000., 1000.]], np.float32)
test_close(_softmax_(s), [[0.25, 0.75], [0., 0.], [0.5, 0.5]], eps=1e-7)
s = np.zeros((2, 3), np.float32); test_eq(_softmax_(s) is s, True)   # in place
test_eq(_softmax_(np.zeros((0, 4), np.float32)).shape, (0, 4))
test_eq(_softmax_(np.zeros((1, 2), np.float32), np.array([0., -np.inf])), [[1., 0.]])
# a bias with more axes
test_eq(_softmax_(np.zeros((2,), np.float32), np.zeros((3, 2))).shape, (3, 2))

# %% [markdown]
# ## The fused forward pass
#
# One function computes the whole formula on ndarrays and records *one* op. The query is scaled
# before the product ($T_q \cdot d_h$ multiplications instead of $T_q \cdot T_k$), the mask is added
# in place, and the weights are kept for the backward pass: they are the one $(T_q, T_k)$ array the
# gradient needs.
#
# With `dropout_p > 0` each weight is kept with probability $1 - p$ and scaled by $1/(1-p)$, as in
# PyTorch; the keep-mask is drawn from the tensor module's generator, so `manual_seed` makes it
# reproducible, and it is saved for the backward pass. PyTorch's function applies dropout whenever
# `dropout_p > 0`; a layer passes 0 in evaluation. A float `attn_mask` given as a `Tensor` becomes
# an input of the op, so a learned bias receives a gradient.

# %%
#| export
def scaled_dot_product_attention(query: Tensor,    # (..., Tq, E)
                                 key: Tensor,      # (..., Tk, E)
                                 value: Tensor,    # (..., Tk, Ev)
                                 # bool (True: may attend) or float (added), broadcast
                                 attn_mask=None,
                                 dropout_p: float = 0.0,  # probability of dropping each weight
                                 is_causal: bool = False, # causal mask, aligned bottom-right
                                 scale=None,       # factor on the scores; None: 1/sqrt(E)
                                ) -> Tensor:
    "softmax(query key^T * scale + mask) value: (..., Tq, Ev), one op with a hand-derived gradient."
    att_shape = _check_attention(query, key, value, dropout_p)
    scale = query.shape[-1] ** -0.5 if scale is None else float(scale)
    bias = _attention_bias(attn_mask, is_causal, att_shape, query.dtype)   # None, or broadcastable
    # Set `p` (..., Tq, Tk) to the weights, `_softmax_(scores, bias)`; `keep` to the dropout
    # keep-mask `rand(...) >= dropout_p` (None if dropout_p is 0); `out` (..., Tq, Ev) to the
    # kept weights, scaled by 1/(1 - dropout_p), times value.
    ### BEGIN SOLUTION
    s = (query.data * scale) @ np.swapaxes(key.data, -1, -2)          # (..., Tq, Tk) scores
    p = _softmax_(s, bias)                                            # (..., Tq, Tk) weights
    keep = rand(*p.shape, dtype=p.dtype).data >= dropout_p if dropout_p > 0 else None   # bool
    out = (p if keep is None else p * keep / (1 - dropout_p)) @ value.data   # (..., Tq, Ev)
    ### END SOLUTION
    learned = isinstance(attn_mask, Tensor) and attn_mask.dtype.kind == 'f'   # a float mask Tensor
    mask_input = (attn_mask,) if learned else ()
    # the gradient rule reads the weights, the keep-mask, the scale and dropout_p
    return Tensor._from_op(out, 'scaled_dot_product_attention', (query, key, value) + mask_input,
                           probs=p, keep=keep, scale=scale, dropout_p=dropout_p)

# %% [markdown]
# A worked example with head size 1, so the scale is 1: the query $1$ meets the keys $0$ and $\ln
# 3$, the weights are $e^0 : e^{\ln 3} = 1 : 3$, that is $(1/4, 3/4)$, and the output is $4/4 + 3
# \cdot 8/4 = 7$.

# %%
out = scaled_dot_product_attention(Tensor([[1.]]), Tensor([[0.], [math.log(3)]]),
                                   Tensor([[4.], [8.]]))
test_close(out.numpy(), [[7.]], eps=1e-6)
test_eq(out.dtype, np.float32)

# %% [markdown]
# With the identity matrix as `value`, the output *is* the matrix of weights, which makes the masks
# visible. Three queries attending causally to five keys, two of them cached from before: query 0 is
# position 2 of the sequence and sees keys 0 to 2.

# %%
q, k = randn(3, 4, seed=0), randn(5, 4, seed=1)
w = scaled_dot_product_attention(q, k, Tensor(np.eye(5)), is_causal=True).numpy()  # (3, 5) weights
print(np.array2string(w, precision=2, suppress_small=True))
test_eq(w != 0, [[1, 1, 1, 0, 0], [1, 1, 1, 1, 0], [1, 1, 1, 1, 1]])
test_close(w.sum(1), np.ones(3), eps=1e-6)
allow = np.array([[True, False, True, True, False]])  # (1, 5): broadcast over the queries
w2 = scaled_dot_product_attention(q, k, Tensor(np.eye(5)), attn_mask=allow, is_causal=True).numpy()
test_eq(w2 != 0, [[1, 0, 1, 0, 0], [1, 0, 1, 1, 0], [1, 0, 1, 1, 0]])   # both masks apply
w3 = scaled_dot_product_attention(randn(3, 4), randn(2, 4), Tensor(np.eye(2)),
                                  is_causal=True).numpy()
test_eq(w3[:2], [[0, 0], [1, 0]])  # query 0 (position -1) sees no key: zeros
test_close(w3[2].sum(), 1., eps=1e-6)
test_fail(lambda: scaled_dot_product_attention(q, k, k, attn_mask=np.ones((2, 5), bool)),
          contains="attn_mask of shape (2, 5) does not broadcast to the weights' shape (3, 5)")
with trace_ops() as ops: scaled_dot_product_attention(q, k, k, is_causal=True)
test_eq(ops, [('scaled_dot_product_attention', ('dropout_p', 'keep', 'probs', 'scale'))])

# %% [markdown]
# ## The gradient, by hand
#
# Write $S = \alpha Q K^T + M$ (scores, with $\alpha$ the scale), $P = \mathrm{softmax}(S)$ row by
# row, and $O = P V$. Given $G = \partial L / \partial O$, the chain rule backwards through the
# three steps gives
#
# - $\partial L / \partial V = P^T G$ and $\partial L / \partial P = G V^T$ (the matrix-product
#   rule);
# - through the softmax of each row, the Jacobian-vector product $\partial L / \partial S_{ij} =
#   P_{ij} \left( \partial L / \partial P_{ij} - \sum_{j'} P_{ij'}\, \partial L / \partial P_{ij'}
#   \right)$;
# - $\partial L / \partial Q = \alpha\, (\partial L / \partial S) K$ and $\partial L / \partial K =
#   \alpha\, (\partial L / \partial S)^T Q$; a float mask gets $\partial L / \partial S$ itself,
#   summed over the axes it was broadcast along.
#
# The row sum needs no $(T_q, T_k)$ product: $\sum_{j} P_{ij} (G V^T)_{ij} = G_i \cdot (P V)_i = G_i
# \cdot O_i$, a dot product of two vectors of size $d_v$ (FlashAttention uses the same identity).
# With dropout the weights that multiplied $V$ are $\tilde P = P \odot D / (1-p)$ for the keep-mask
# $D$; then $\partial L / \partial V = \tilde P^T G$, $\partial L / \partial P = (G V^T) \odot D /
# (1-p)$, and the identity still holds because $O = \tilde P V$. Masked entries have $P_{ij} = 0$
# and so get no gradient. Batch dimensions that were broadcast are summed back with `unbroadcast`.

# %%
#| export
@grad_rule('scaled_dot_product_attention')
def _sdpa_grad(g, out, query, key, value, *mask, probs, keep, scale, dropout_p):
    "From g (..., Tq, Ev) and the saved weights: dq, dk, dv (the inputs' shapes), a float mask's."
    # Set dv, dq, dk (None for an input that needs no gradient) and ds = dL/dS (..., Tq, Tk) as
    # derived above; `unbroadcast(a, shape)` sums a gradient back to an input's shape.
    ### BEGIN SOLUTION
    dq = dk = dv = None
    p = probs                                                         # (..., Tq, Tk)
    kept = p if keep is None else p * keep / (1 - dropout_p)          # the weights that met value
    if value.requires_grad:
        dv = unbroadcast(np.swapaxes(kept, -1, -2) @ g, value.shape)  # (..., Tk, Ev)
    ds = g @ np.swapaxes(value.data, -1, -2)                          # (..., Tq, Tk) dL/dP
    if keep is not None: ds *= keep; ds /= 1 - dropout_p
    ds -= (g * out).sum(axis=-1, keepdims=True)                       # minus G_i . O_i
    ds *= p                                                           # (..., Tq, Tk) dL/dS
    if query.requires_grad:
        dq = unbroadcast((ds @ key.data) * scale, query.shape)        # (..., Tq, E)
    if key.requires_grad:
        dk = unbroadcast((np.swapaxes(ds, -1, -2) @ query.data) * scale, key.shape)   # (..., Tk, E)
    ### END SOLUTION
    return (dq, dk, dv) + tuple(unbroadcast(ds, m.shape) if m.requires_grad else None for m in mask)

# %% [markdown]
# ## Checking the op
#
# Two oracles. First, the same formula composed from the separate ops of earlier modules (matmul,
# multiply, add, `softmax`, matmul), whose gradients autograd already checks: the fused op must
# agree with it in value and gradient. In float64 the two differ only by rounding, at most a few
# units of $2^{-53}$ times the sizes involved.

# %%
def attention_reference(q, k, v, bias=None, scale=None):
    "The formula from separate Tensor ops: an oracle for the fused op (no row fully masked)."
    # (..., Tq, Tk)
    s = (q @ k.transpose(-1, -2)) * (q.shape[-1] ** -0.5 if scale is None else scale)
    if bias is not None: s = s + bias
    return softmax(s, -1) @ v                                         # (..., Tq, Ev)


# %%
q, k, v = (randn(*shape, seed=s, dtype=np.float64).requires_grad_()    # (B, nh, T, hs)
           for s, shape in enumerate([(2, 3, 4, 5), (2, 3, 6, 5), (2, 3, 6, 7)]))
fmask = Tensor(np.random.default_rng(3).standard_normal((4, 6)), dtype=np.float64)
cases = {'no mask': dict(), 'causal, Tq < Tk': dict(is_causal=True),
         'float mask': dict(attn_mask=fmask), 'scale 0.5': dict(scale=0.5)}
G = np.random.default_rng(4).standard_normal((2, 3, 4, 7))
for name, kw in cases.items():
    grads = []
    for fn in (scaled_dot_product_attention, None):
        for t in (q, k, v): t.grad = None
        if fn is None:
            bias = _attention_bias(kw.get('attn_mask'), kw.get('is_causal', False), (4, 6),
                                   np.float64)
            o = attention_reference(q, k, v,
                                    None if bias is None else Tensor(bias, dtype=np.float64),
                                    kw.get('scale'))
        else: o = fn(q, k, v, **kw)
        o.backward(G)
        grads.append([o.numpy()] + [t.grad for t in (q, k, v)])
    err = max(np.abs(a - b).max() for a, b in zip(*grads))
    print(f"{name:16} largest difference from the composed ops, value and gradients: {err:.1e}")
    test_eq(bool(err < 1e-12), True)  # float64: sums of <= 7 terms of size ~10

# %% [markdown]
# Second, `gradcheck` against finite differences, for every form of mask, for fewer and for more
# queries than keys, for batch and head dimensions with a key and value shared across heads, for a
# float mask that is learned, and for dropout (each call re-seeds the generator, so every evaluation
# drops the same weights).

# %%
def sdpa(**kw): return lambda q, k, v: scaled_dot_product_attention(q, k, v, **kw)
q, k, v = (randn(*shape, seed=s, dtype=np.float64).requires_grad_()
           for s, shape in enumerate([(2, 2, 3, 4), (2, 2, 5, 4), (2, 2, 5, 3)], start=5))
bmask = np.random.default_rng(8).random((2, 1, 3, 5)) > 0.3  # some rows fully masked
learned = Tensor(np.random.default_rng(9).standard_normal((3, 5)), dtype=np.float64,
                 requires_grad=True)
checks = {
    'plain': lambda: gradcheck(sdpa(), q, k, v),
    'bool mask': lambda: gradcheck(sdpa(attn_mask=bmask), q, k, v),
    'causal, Tq < Tk': lambda: gradcheck(sdpa(is_causal=True), q, k, v),
    'causal, Tq > Tk':
        lambda: gradcheck(sdpa(is_causal=True),
                          *(randn(*shape, seed=s, dtype=np.float64).requires_grad_()
                            for s, shape in [(10, (2, 5, 4)), (11, (2, 3, 4)), (12, (2, 3, 2))])),
    'causal, square, 2-D':
        lambda: gradcheck(sdpa(is_causal=True),
                          *(randn(4, 3, seed=s, dtype=np.float64).requires_grad_()
                            for s in (13, 14, 15))),
    'shared key, value':
        lambda: gradcheck(sdpa(), q, randn(2, 1, 5, 4, seed=16, dtype=np.float64).requires_grad_(),
                          randn(5, 3, seed=17, dtype=np.float64).requires_grad_()),
    'learned float mask':
        lambda: gradcheck(lambda q, k, v, m: scaled_dot_product_attention(q, k, v, attn_mask=m,
                                                                          is_causal=True),
                          q, k, v, learned),
    'dropout 0.4':
        lambda: gradcheck(lambda q, k, v: (manual_seed(0),
                                           scaled_dot_product_attention(q, k, v, dropout_p=0.4))[1],
                          q, k, v),
}
for name, check in checks.items(): test_eq(check(), True)
print(f"{len(checks)} cases pass gradcheck")

# %% [markdown]
# Dropout keeps about $1 - p$ of the weights, and the scaling keeps the expected output unchanged.

# %%
manual_seed(0)
qd, kd, vd = randn(64, 16, seed=1), randn(64, 16, seed=2), Tensor(np.eye(64))
drop = scaled_dot_product_attention(qd, kd, vd, dropout_p=0.25).numpy()  # the weights after dropout
full = scaled_dot_product_attention(qd, kd, vd).numpy()
print(f"dropout_p=0.25: {np.mean(drop > 0):.3f} of the weights kept; row sums average "
      f"{drop.sum(1).mean():.3f}")
test_close(np.mean(drop > 0), 0.75, eps=0.02)  # 4096 Bernoulli draws: standard error 0.007
test_close(drop[drop > 0], full[drop > 0] / 0.75, eps=1e-6)

# %% [markdown]
# ## Why one op: a measurement
#
# The composed version records six ops (transpose, matmul, scale, mask, softmax, matmul), and each
# keeps what its own gradient needs: the product keeps both inputs, the scale and the mask each
# produce a new $(T_q, T_k)$ array, softmax keeps its output, and the backward pass allocates a
# gradient of that size at every step. The fused op keeps one $(T_q, T_k)$ array, the weights. The
# cell compares time (`compare`: the two alternate over 5 rounds after a warm-up, one BLAS thread as
# in the benchmarks) and peak traced memory of a forward and backward pass, causal, at batch 4, 4
# heads, 256 positions, head size 64.

# %%
def peak_bytes(fn) -> int:
    "Peak memory traced by tracemalloc while `fn()` runs, above what was allocated before."
    tracemalloc.start(); base = tracemalloc.get_traced_memory()[0]
    fn(); peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    return peak - base

# %%
B, nh, T, hs = 4, 4, 256, 64
qa, ka, va = [Tensor(randn(B, nh, T, hs, seed=i).numpy(), requires_grad=True) for i in range(3)]
Ga = randn(B, nh, T, hs, seed=3).numpy()
causal = Tensor(_causal_bias(T, T, np.dtype(np.float32)).copy())
def fused_step(): scaled_dot_product_attention(qa, ka, va, is_causal=True).backward(Ga)
def composed_step(): attention_reference(qa, ka, va, causal).backward(Ga)
with blas_threads(1): c = compare({'fused': fused_step, 'composed': composed_step}, rounds=5,
                                  number=1)
t_fused, t_comp = c['fused'].median, c['composed'].median
m_fused, m_comp = peak_bytes(fused_step), peak_bytes(composed_step)
score_mb = B * nh * T * T * 4 / 2**20
print(f"forward + backward, (B, nh, T, hs) = {(B, nh, T, hs)}: fused {t_fused*1e3:.1f} ms, "
      f"composed {t_comp*1e3:.1f} ms ({c.ratio('composed', 'fused'):.2f}x); peak memory fused "
      f"{m_fused / 2**20:.1f} MiB, composed {m_comp / 2**20:.1f} MiB; "
      f"one (B, nh, T, T) float32 array is {score_mb:.1f} MiB")

# %% [markdown]
# `benchmarks/bench_attention.py` compares the fused op with PyTorch on the CPU, both with one
# thread: against the same formula written from PyTorch's basic ops (matmul, `masked_fill`, softmax,
# matmul), and, for information, against PyTorch's own fused kernel.
#
# ## Multi-head attention
#
# One attention over vectors of size $C$ compares positions in one way. Multi-head attention splits
# the $C$ numbers into `num_heads` groups of `head_dim` $= C / n_h$ and runs an attention per group,
# each with its own projections, so different heads can track different relations (the previous
# token, a matching bracket, the subject of the verb). The matrix products cost what one attention
# of size $C$ would; the softmax runs once per head.
#
# `MultiHeadAttention(embed_dim, num_heads)` follows nanoGPT's `CausalSelfAttention`: one `Linear(C,
# 3C)` named `qkv` computes queries, keys and values for every head in one matrix product; the first
# $C$ output columns are the queries, the next $C$ the keys, the last $C$ the values, and within
# each block head $h$ owns columns $h \cdot d_h .. (h+1) d_h - 1$. A `Linear(C, C)` named `proj`
# mixes the heads' outputs. `qkv.weight` has the layout of PyTorch's
# `nn.MultiheadAttention.in_proj_weight`, `(3C, C)`. The weights start with `Linear`'s
# initialisation; a model built on the layer may re-initialise them, as nanoGPT does. `dropout` is
# the probability of dropping an attention weight in training.

# %%
#| export
class MultiHeadAttention(Module):
    "Multi-head self-attention: one `qkv` projection, `num_heads` attentions, and `proj`."
    def __init__(self,
                 embed_dim: int,       # C, the size of each position's vector
                 num_heads: int,       # heads; each attends over head_dim = C // num_heads numbers
                 bias: bool = True,    # biases in the qkv and proj layers?
                 dropout: float = 0.0, # probability of dropping an attention weight in training
                ):
        super().__init__()
        if not all(isinstance(n, (int, np.integer)) and n > 0 for n in (embed_dim, num_heads)):
            raise ValueError(f"MultiHeadAttention: embed_dim and num_heads must be positive "
                             f"integers, got {embed_dim=}, {num_heads=}")
        if embed_dim % num_heads:
            raise ValueError(f"MultiHeadAttention: embed_dim={embed_dim} is not divisible by "
                             f"num_heads={num_heads}")
        if not 0 <= dropout < 1: raise ValueError(f"MultiHeadAttention: dropout must be in [0, 1), "
                                                  f"got {dropout}")
        self.embed_dim, self.num_heads, self.head_dim, self.dropout = (embed_dim, num_heads,
                                                                       embed_dim // num_heads,
                                                                       dropout)
        # (3C, C): queries, keys, values of all heads
        self.qkv = Linear(embed_dim, 3 * embed_dim, bias=bias)
        self.proj = Linear(embed_dim, embed_dim, bias=bias)           # (C, C): mixes the heads

    def extra_repr(self) -> str:
        return f"embed_dim={self.embed_dim}, num_heads={self.num_heads}, dropout={self.dropout}"

# %%
manual_seed(0)
mha = MultiHeadAttention(8, 2)
test_eq([(n, p.shape) for n, p in mha.named_parameters()],
        [('qkv.weight', (24, 8)), ('qkv.bias', (24,)),
         ('proj.weight', (8, 8)), ('proj.bias', (8,))])
test_eq(mha.head_dim, 4)
test_eq(len(list(MultiHeadAttention(8, 2, bias=False).parameters())), 2)
test_fail(lambda: MultiHeadAttention(10, 3),
          contains="MultiHeadAttention: embed_dim=10 is not divisible by num_heads=3")
test_fail(lambda: MultiHeadAttention(8, 0), contains="got embed_dim=8, num_heads=0")
test_fail(lambda: MultiHeadAttention(8, 2, dropout=1.),
          contains="dropout must be in [0, 1), got 1.0")

# %% [markdown]
# ### Splitting and merging heads
#
# `split_heads` turns `(B, T, C)` into `(B, nh, T, hs)`: a reshape to `(B, T, nh, hs)` cuts each
# vector into the heads' groups, and swapping axes 1 and 2 puts the head axis where attention treats
# it as a batch axis. `merge_heads` undoes it, so the output of head $h$ lands in columns $h \cdot
# d_h .. (h+1) d_h - 1$ again. Both are views or one copy, and differentiable through the reshape
# and permute ops.

# %%
#| export
@patch
def split_heads(self: MultiHeadAttention, x: Tensor) -> Tensor:
    "(B, T, C) -> (B, num_heads, T, head_dim)."
    ### BEGIN SOLUTION
    B, T, C = x.shape
    return x.reshape(B, T, self.num_heads, self.head_dim).transpose(1, 2)   # (B, nh, T, hs)
    ### END SOLUTION

@patch
def merge_heads(self: MultiHeadAttention, y: Tensor) -> Tensor:
    "(B, num_heads, T, head_dim) -> (B, T, C): the inverse of `split_heads`."
    ### BEGIN SOLUTION
    B, nh, T, hs = y.shape
    return y.transpose(1, 2).reshape(B, T, nh * hs)                   # (B, T, C)
    ### END SOLUTION

# %%
x = Tensor(np.arange(2 * 3 * 8, dtype=np.float32).reshape(2, 3, 8))  # (B, T, C)
h = mha.split_heads(x)
test_eq(h.shape, (2, 2, 3, 4))
# batch 0, head 1, position 2: columns 4..7 of row 2
test_eq(h.numpy()[0, 1, 2], [20., 21., 22., 23.])
test_eq(mha.merge_heads(h).numpy(), x.numpy())                        # the round trip
test_eq(gradcheck(lambda t: mha.merge_heads(mha.split_heads(t) * 2.),
                  randn(2, 3, 8, seed=0, dtype=np.float64).requires_grad_()), True)

# %% [markdown]
# ### The forward pass, and the cache of keys and values
#
# `forward(x, past_kv=None, use_cache=False, is_causal=True, attn_mask=None)` takes `x` of shape
# `(B, T, C)` and returns `y` of the same shape, or `(y, (k, v))` when `use_cache` is True, where
# `k` and `v` are the keys and values of all positions so far, `(B, nh, T_past + T, hs)` each. Given
# `past_kv`, the keys and values of the `T_past` earlier positions, it computes keys and values only
# for the `T` new positions, appends them, and lets the new queries attend over all `T_past + T`
# keys; `is_causal` then means the bottom-right aligned mask above. Generation feeds the prompt once
# with `use_cache=True`, then each new token alone with the returned `past_kv`. (Positions are not
# this layer's business: the embeddings module's `start` argument gives the new token its position.)
# Appending with `cat` copies the cache at every step; the caching module replaces this with a
# preallocated buffer.

# %%
#| export
def _check_past(past_kv, B: int, nh: int, hs: int) -> tuple:
    "Check `past_kv` = (k, v), each (B, nh, T_past, hs) with the same T_past; return it as Tensors."
    if not (isinstance(past_kv, (tuple, list)) and len(past_kv) == 2):
        raise TypeError(f"MultiHeadAttention: past_kv must be a pair (k, v), got "
                        f"{type(past_kv).__name__}")
    k, v = (t if isinstance(t, Tensor) else Tensor(t) for t in past_kv)
    for name, t in (('key', k), ('value', v)):
        if t.ndim != 4 or t.shape[:2] != (B, nh) or t.shape[3] != hs or t.shape[2] != k.shape[2]:
            raise ValueError(f"MultiHeadAttention: cached {name} must have shape (B={B}, "
                             f"num_heads={nh}, T_past, head_dim={hs}) like the other, "
                             f"got key {k.shape}, value {v.shape}")
    return k, v

# %%
#| export
@patch
def forward(self: MultiHeadAttention,
            x: Tensor,              # (B, T, C) the new positions
            past_kv=None,  # (k, v), each (B, nh, T_past, hs): keys and values of earlier positions
            use_cache: bool = False,# also return (k, v) of all T_past + T positions?
            is_causal: bool = True, # may a position attend only to itself and earlier ones?
            # extra mask for scaled_dot_product_attention, broadcast to (B, nh, T, T_past + T)
            attn_mask=None,
           ):
    "Self-attention over `x` (B, T, C) -> (B, T, C), or `(y, (k, v))` with `use_cache`."
    if x.ndim != 3 or x.shape[-1] != self.embed_dim:
        raise ValueError(f"MultiHeadAttention: expected input (B, T, {self.embed_dim}), got shape "
                         f"{x.shape}")
    B, T, C = x.shape
    qkv = self.qkv(x)                                                 # (B, T, 3C)
    # (B, nh, T, hs) each
    q, k, v = (self.split_heads(qkv[..., i * C:(i + 1) * C]) for i in range(3))
    if past_kv is not None:
        pk, pv = _check_past(past_kv, B, self.num_heads, self.head_dim)
        k, v = cat([pk, k], dim=2), cat([pv, v], dim=2)               # (B, nh, T_past + T, hs)
    # (B, nh, T, hs)
    y = scaled_dot_product_attention(q, k, v, attn_mask, self.dropout if self.training else 0.0,
                                     is_causal)
    y = self.proj(self.merge_heads(y))                                # (B, T, C)
    return (y, (k, v)) if use_cache else y

# %% [markdown]
# An oracle for the whole layer: the same computation written head by head in NumPy, slicing the
# weight rows of each head out of `qkv.weight` by the layout described above. In float64 the two
# agree to rounding.

# %%
def mha_by_hand(m: MultiHeadAttention, x: np.ndarray) -> np.ndarray:
    "Causal multi-head attention of x (B, T, C), one head at a time, from m's weights."
    C, hs = m.embed_dim, m.head_dim
    W, b = m.qkv.weight.numpy(), m.qkv.bias.numpy()
    T = x.shape[1]
    heads = []
    for h in range(m.num_heads):
        rows = [slice(part * C + h * hs, part * C + (h + 1) * hs) for part in range(3)]
        q, k, v = (x @ W[r].T + b[r] for r in rows)                   # (B, T, hs) each
        s = q @ k.transpose(0, 2, 1) / math.sqrt(hs) + np.triu(np.full((T, T), -np.inf), 1)
        p = np.exp(s - s.max(-1, keepdims=True)); p /= p.sum(-1, keepdims=True)
        heads.append(p @ v)                                           # (B, T, hs)
    return np.concatenate(heads, -1) @ m.proj.weight.numpy().T + m.proj.bias.numpy()

# %%
manual_seed(0)
mha64 = MultiHeadAttention(12, 3).double()
x = randn(2, 5, 12, seed=1, dtype=np.float64)
y = mha64(x)
test_eq(y.shape, (2, 5, 12))
err = np.abs(y.numpy() - mha_by_hand(mha64, x.numpy())).max()
print(f"largest difference from the head-by-head computation: {err:.1e}")
test_eq(bool(err < 1e-12), True)  # float64 sums of <= 13 terms of size ~1
test_fail(lambda: mha64(randn(2, 5, 10)),
          contains="expected input (B, T, 12), got shape (2, 5, 10)")
test_fail(lambda: mha64(x, past_kv=(zeros(2, 3, 4, 4), zeros(2, 3, 3, 4))),
          contains="got key (2, 3, 4, 4), value (2, 3, 3, 4)")
test_fail(lambda: mha64(x, past_kv=zeros(2, 3, 4, 4)),
          contains="past_kv must be a pair (k, v), got Tensor")

# %% [markdown]
# Causality, tested directly: changing the tokens after position $t$ changes nothing at positions
# $0..t$. Not even the rounding changes, because a masked weight is exactly 0 and adding $0 \cdot v$
# to a sum leaves it as it was.

# %%
x2 = Tensor(x.numpy().copy(), dtype=np.float64); x2.data[:, 3:] += 1.0
test_eq(mha64(x2).numpy()[:, :3], y.numpy()[:, :3])
test_eq(np.abs(mha64(x2).numpy()[:, 3:] - y.numpy()[:, 3:]).min() > 0, True)
# without the mask, position 0 sees the future
test_eq(np.abs(mha64(x, is_causal=False).numpy()[:, 0] - y.numpy()[:, 0]).max() > 0, True)

# %% [markdown]
# `gradcheck` of the layer, in float64, through the input and every parameter, causal and not, with
# a cache of earlier keys and values (whose gradient is checked too) and with a padding mask.

# %%
manual_seed(1)
small = MultiHeadAttention(4, 2).double()
params = list(small.parameters())
xs = randn(2, 3, 4, seed=2, dtype=np.float64).requires_grad_()
pk, pv = (randn(2, 2, 2, 2, seed=s, dtype=np.float64).requires_grad_() for s in (3, 4))
pad = np.array([True, True, True, True, False])                     # the last key is padding
test_eq(gradcheck(lambda x, *ps: small(x), xs, *params), True)
test_eq(gradcheck(lambda x, *ps: small(x, is_causal=False), xs, *params), True)
test_eq(gradcheck(lambda x, k, v, *ps: small(x, past_kv=(k, v)), xs, pk, pv, *params), True)
test_eq(gradcheck(lambda x: small(x, past_kv=(pk, pv), attn_mask=pad), xs), True)

# %% [markdown]
# ### Incremental decoding gives the full pass's outputs
#
# Feed a sequence one token at a time, each step passing the previous step's `(k, v)`, and the
# outputs must be those of one causal pass over the whole sequence. They are equal up to rounding,
# not bit for bit: the projections multiply a `(1, C)` row instead of a `(T, C)` block, and BLAS may
# add the products in another order.
#
# How far apart may they be? The standard bound for a sum of $n$ products in floating point is
# $|\mathrm{fl}(\sum a_i b_i) - \sum a_i b_i| \le n u \sum |a_i b_i|$, with $u = 2^{-24}$ for
# float32 and $2^{-53}$ for float64. Applied stage by stage to first order in $u$: the projection
# (sums of $C + 1$ terms), the scores ($d_h$ terms plus the scaling), the softmax (an error $\delta
# s$ in the scores changes $p_j$ by at most $p_j (|\delta s_j| + \sum_i p_i |\delta s_i|)$, and its
# own rounding adds about $(T + 4 + |s_j - m|) u\, p_j$ with $m$ the row maximum), the weighted sum
# of values ($T$ terms), and the output projection. Each path is within that bound of the exact
# result, so the two are within twice of it. `tests/test_13_attention.py` computes the bound element
# by element and checks float32 layers of random shapes against it. Here the layer runs in float64,
# where with 33-term sums of terms of size about 1 the bound is below $10^{-12}$; the float32
# difference is printed next to it.

# %%
def full_and_incremental(m: MultiHeadAttention, x: Tensor, prompt: int = 0) -> tuple:
    "A causal pass over x (B, T, C), and the same from a cache: `prompt` at once, then one by one."
    with no_grad():
        full, past, steps = m(x).numpy(), None, []
        if prompt:
            y, past = m(x[:, :prompt], use_cache=True)                # the prompt in one pass
            steps.append(y.numpy())
        for t in range(prompt, x.shape[1]):
            # (B, 1, C), cache (B, nh, t + 1, hs)
            y_t, past = m(x[:, t:t + 1], past_kv=past, use_cache=True)
            steps.append(y_t.numpy())
    return full, np.concatenate(steps, axis=1), past

# %%
manual_seed(0); m32 = MultiHeadAttention(32, 4)
manual_seed(0); m64 = MultiHeadAttention(32, 4).double()              # the same weights, in float64
x = randn(2, 12, 32, seed=5)                                          # (B, T, C)
x64 = Tensor(x.numpy(), dtype=np.float64)
full, inc, past = full_and_incremental(m64, x64)
full32, inc32, _ = full_and_incremental(m32, x)
print(f"cache after 12 steps: keys {past[0].shape}, values {past[1].shape}")
print(f"incremental vs full pass, largest difference: {np.abs(inc - full).max():.1e} in float64, "
      f"{np.abs(inc32 - full32).max():.1e} in float32")
test_eq(past[0].shape, (2, 4, 12, 8))
test_eq(bool(np.abs(inc - full).max() < 1e-12), True)

# %% [markdown]
# That is far tighter than the mistake it guards against. With PyTorch's top-left causal alignment a
# single new query would see only key 0 instead of every cached key; emulated here with an explicit
# mask:

# %%
with no_grad():
    past, steps = None, []
    for t in range(12):
        top_left = np.arange(t + 1) == 0  # (t + 1,) the one query sees key 0 only
        y_t, past = m64(x64[:, t:t + 1], past_kv=past, use_cache=True, is_causal=False,
                        attn_mask=top_left)
        steps.append(y_t.numpy())
wrong = np.abs(np.concatenate(steps, axis=1) - full)
print(f"top-left alignment: largest difference {wrong.max():.2f}")
test_eq(bool(wrong.max() > 1e-3), True)

# %% [markdown]
# The same holds for a prompt processed in one piece followed by single tokens, which is how
# generation runs:

# %%
full, inc, _ = full_and_incremental(m64, x64, prompt=7)
test_eq(bool(np.abs(inc - full).max() < 1e-12), True)

# %% [markdown]
# ## What attention costs as the sequence grows
#
# The scores and weights are $(B, n_h, T, T)$ arrays: doubling $T$ multiplies their memory by four,
# and the two matrix products in the forward pass and four in the backward pass, $T^2 d_h$
# multiply-adds each per head, by four too. The projections cost $O(T C^2)$, which dominates for
# short sequences. The cell runs a forward and backward pass of a `MultiHeadAttention(256, 4)` (head
# size 64) on one sequence of each length, and prints the time (median of 7 runs after a warm-up,
# one BLAS thread), the bytes of one score array, and the peak memory traced during the pass. The
# plot adds a line growing as $T^2$ through the longest run's time.

# %%
manual_seed(0)
layer = MultiHeadAttention(256, 4)
rows = []
for T in (64, 128, 256, 512, 1024):
    xT = Tensor(randn(1, T, 256, seed=T).numpy(), requires_grad=True)
    step = lambda: layer(xT).sum().backward()
    with blas_threads(1): t_step = measure(step, repeats=7, number=1).median
    rows.append((T, t_step, 1 * layer.num_heads * T * T * 4, peak_bytes(step)))
for i, (T, t_step, score_b, peak) in enumerate(rows):
    growth = f"{t_step / rows[i - 1][1]:.2f}x the time of T={rows[i - 1][0]}" if i else ""
    print(f"T={T:>5}: forward+backward {t_step*1e3:7.2f} ms, score array "
          f"{score_b / 2**20:6.2f} MiB, peak traced memory {peak / 2**20:7.2f} MiB  {growth}")

# %%
Ts = [r[0] for r in rows]
fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(9, 3.2))
ax1.loglog(Ts, [r[1] * 1e3 for r in rows], 'o-', base=2, label='measured')
ax1.loglog(Ts, [rows[-1][1] * 1e3 * (T / Ts[-1])**2 for T in Ts], ':', base=2, label='grows as T^2')
ax1.set(xlabel='sequence length T', ylabel='ms', title='forward + backward time'); ax1.legend()
ax2.loglog(Ts, [r[2] / 2**20 for r in rows], 'o-', base=2, label='one (B, nh, T, T) array')
ax2.loglog(Ts, [r[3] / 2**20 for r in rows], 's--', base=2, label='peak traced')
ax2.set(xlabel='sequence length T', ylabel='MiB', title='memory'); ax2.legend()
plt.tight_layout(); plt.show()

# %% [markdown]
# The score array grows exactly fourfold per doubling; the time approaches that ratio once the $T^2$
# terms outweigh the projections. FlashAttention avoids storing the weights by computing them block
# by block and recomputing them in the backward pass; the caching module attacks the other side, the
# repeated work of generation.
#
# ## Summary
#
# `scaled_dot_product_attention` computes $\mathrm{softmax}(QK^T/\sqrt{d_h} + M)V$ as one op: masks
# as booleans (True may attend) or additive floats, a causal mask aligned bottom-right for cached
# keys, dropout with a saved keep-mask, and a hand-derived backward pass that keeps only the weights
# and uses $\sum_j P_{ij} \partial L/\partial P_{ij} = G_i \cdot O_i$. `MultiHeadAttention` wraps it
# with nanoGPT's fused `qkv` and `proj` layers, splits and merges heads with a reshape and a
# transpose, and continues a sequence from cached keys and values with the same outputs as a full
# pass.
