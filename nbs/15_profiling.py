# %%
#| default_exp optimization.profiling

# %% [markdown]
# # Profiling
#
# > Count the FLOPs a model really executes, measure the memory a training step needs, find where the
# > time goes op by op, and place every op on the machine's roofline.

# %% [markdown]
# Before making anything faster, measure what is slow. This module builds four instruments on the
# framework of the earlier modules, each by watching the ops a model runs rather than by reading its
# architecture:
#
# - `FLOPCounter` counts floating-point operations as the ops execute, forward and backward, so the
#   count includes the batch size, the padding, the stride, and every op the model really calls;
# - `MemoryProfiler` measures the bytes NumPy allocates during a call, and splits a training step into
#   parameters, gradients, optimizer state and activations;
# - `Profiler` records every op of a training step with its wall time, FLOPs and bytes, prints a table
#   of where the time goes and writes a trace that Perfetto opens;
# - `gemm_gflops`, `memory_bandwidth` and `roofline_bound` measure this machine's two limits and say, for
#   each op, which one it meets.
#
# All four work by temporarily replacing two hooks that every op passes through: `Tensor._from_op`,
# which the autograd module replaced with its recorder, and the table of gradient rules `_grad_rules`.
# The hooking machinery is given; the exercises are the FLOP rules, the roofline classification, the
# memory arithmetic and the aggregation behind the profiler's table. Every body between
# `### BEGIN SOLUTION` and `### END SOLUTION` is an exercise; the cells under it test it.

# %%
#| export
import json
import math
import time
import tracemalloc
from dataclasses import dataclass

import numpy as np
from fastcore.basics import patch

from tinytorch.core.tensor import Tensor
from tinytorch.core.autograd import _grad_rules
from tinytorch.core.layers import Module
from tinytorch.core.training import atomic_write
from tinytorch.utils.timing import (Measurement, Comparison, Timer, measure, compare, blas_threads,
                                    machine_info, fmt_seconds)

# %%
#| hide
import os
import tempfile

import matplotlib.pyplot as plt
from fastcore.test import test_eq, test_fail, test_close

import tinytorch.core.autograd as autograd
from tinytorch.core.tensor import manual_seed, randn
from tinytorch.core.layers import Linear, Sequential
from tinytorch.core.activations import ReLU
from tinytorch.core.losses import cross_entropy, CrossEntropyLoss
from tinytorch.core.optimizers import SGD, Adam
from tinytorch.core.spatial import Conv2d, MaxPool2d, Flatten, conv2d
from tinytorch.core.normalization import BatchNorm2d
from tinytorch.core.attention import scaled_dot_product_attention
from tinytorch.models.transformer import GPT
from tinytorch.data.loader import load_digits

# %% [markdown]
# ## Timing, briefly
#
# Every time in this module is measured with the project's one timing protocol, `tinytorch.utils.timing`,
# re-exported here so that `from tinytorch.optimization.profiling import measure, compare, Timer,
# blas_threads` works. Its rules, each for a reason:
#
# - **warm up**: the first calls allocate buffers, fault in memory pages and start BLAS threads; they are
#   run and discarded;
# - **the median of several samples**: load from other programs only ever adds time, so the median
#   ignores a few slow samples; the IQR says how far the samples spread;
# - **alternate candidates**: `compare` runs the candidates in turns, round by round, and forms each ratio
#   within a round, so a burst of load hits both sides;
# - **pin the BLAS threads**: `blas_threads(1)` fixes NumPy's BLAS to one thread; on this shared 2-core
#   machine spinning BLAS threads can make small products many times slower. Every measurement below
#   runs with one BLAS thread, and other programs run on the machine at the same time, so every time
#   printed here is noisy: read the medians and IQRs, not the last digit.
#
# One demonstration: the first call of a fresh matrix product, on arrays just allocated, against the
# same product once warmed up.

# %%
def first_call(n=384):
    "Seconds of the first product of two freshly allocated n x n float32 arrays."
    a, b = (np.ones((n, n), np.float32) for _ in range(2))
    with Timer() as t: a @ b
    return t.elapsed

with blas_threads(1):
    cold = [first_call() for _ in range(5)]
    a = b = np.ones((384, 384), np.float32)
    warm = measure(lambda: a @ b, warmup=2, repeats=5)
print(f"first call, fresh arrays: median {fmt_seconds(float(np.median(cold)))} over 5 tries")
print(f"warmed up:                {warm}")

# %% [markdown]
# The protocol is not an exercise, and its settings are checked: a request for zero samples or a
# negative warm-up is refused with an error naming the setting.

# %%
test_fail(lambda: measure(lambda: None, repeats=0), contains="repeats must be an int >= 1, got 0")
test_fail(lambda: Timer(warmup=-1), contains="warmup must be an int >= 0, got -1")

# %% [markdown]
# ## Counting FLOPs by running the model
#
# A FLOP (floating-point operation) count says how much arithmetic a model needs, independent of how
# fast a machine does it. Counting from a formula per layer type misses what the formula forgets: the
# batch, the padded border a convolution also multiplies, the bias add, the softmax inside attention,
# and the whole backward pass. So `FLOPCounter` counts what runs: every op calls `Tensor._from_op` with
# its result, its inputs and its saved context, and every backward step calls one gradient rule. Each
# op name gets a FLOP rule computed from those.
#
# The convention, kept throughout the course:
#
# - one multiply-add is **2 FLOPs** for matmul, convolution and attention, as in PyTorch's
#   `FlopCounterMode`; their count divided by 2 is reported as **MACs** (multiply-accumulates);
# - **element-wise** work (adds, activations, normalization, softmax, losses, reductions) is counted
#   separately, with a stated cost per element for each op, since a library may fuse it or not;
# - data movement (reshape, permute, indexing, concatenation, embedding lookup) costs 0 FLOPs.

# %% [markdown]
# ### The FLOPs of a matrix product
#
# `a @ b` with `a` of shape (..., n, k) and `b` of shape (..., k, m) computes, for each of the broadcast
# batch of matrices, n m dot products of length k: $2\,\mathrm{batch}\cdot n\,k\,m$ FLOPs. NumPy's
# rules for a 1-D operand apply: a 1-D `a` is a row (1, k), a 1-D `b` a column (k, 1).

# %%
#| export
def matmul_flops(a_shape: tuple,  # shape of the left operand, at least 1-D
                 b_shape: tuple,  # shape of the right operand, at least 1-D
                ) -> int:
    "FLOPs of `a @ b` (NumPy's rules): 2 * batch * n * k * m, batch the broadcast of the leading dims."
    ### BEGIN SOLUTION
    a = (1,) + tuple(a_shape) if len(a_shape) == 1 else tuple(a_shape)     # (..., n, k)
    b = tuple(b_shape) + (1,) if len(b_shape) == 1 else tuple(b_shape)     # (..., k, m)
    batch = np.broadcast_shapes(a[:-2], b[:-2])
    return 2 * math.prod(batch) * a[-2] * a[-1] * b[-1]
    ### END SOLUTION

# %%
test_eq(matmul_flops((3, 4), (4, 5)), 2 * 3 * 4 * 5)
test_eq(matmul_flops((7, 3, 4), (4, 5)), 2 * 7 * 3 * 4 * 5)     # a Linear on a (7, 3, 4) input
test_eq(matmul_flops((2, 1, 3, 4), (6, 4, 5)), 2 * 12 * 3 * 4 * 5)  # batch (2, 1) and (6,) -> (2, 6)
test_eq(matmul_flops((4,), (4,)), 8)                               # a dot product
test_eq(matmul_flops((4,), (4, 5)), 2 * 4 * 5)
test_eq(type(matmul_flops((10**5, 10**5), (10**5, 10**5))), int)   # Python ints never overflow

# %% [markdown]
# ### The FLOPs of a convolution
#
# Every output element of `conv2d` is a dot product of length $C K_H K_W$ between one filter and one
# window of the (zero-padded) input, so the count is $2 N O\,O_H O_W\,C K_H K_W$. Stride and padding
# enter through the output size $O_H \times O_W$; the padded zeros are multiplied like any other value.
# The bias add is element-wise work, counted apart.

# %%
#| export
def conv2d_flops(input_shape: tuple,   # (N, C, H, W)
                 weight_shape: tuple,  # (O, C, KH, KW)
                 output_shape: tuple,  # (N, O, OH, OW)
                ) -> int:
    "FLOPs of conv2d without its bias: 2 * N * O * OH * OW * C * KH * KW."
    ### BEGIN SOLUTION
    (N, C, _, _), (O, _, KH, KW), (_, _, OH, OW) = input_shape, weight_shape, output_shape
    return 2 * N * O * OH * OW * C * KH * KW
    ### END SOLUTION

# %%
test_eq(conv2d_flops((1, 1, 5, 5), (1, 1, 3, 3), (1, 1, 3, 3)), 2 * 9 * 9)
test_eq(conv2d_flops((8, 3, 32, 32), (16, 3, 3, 3), (8, 16, 16, 16)), 2 * 8 * 16 * 256 * 27)

# %% [markdown]
# ### A FLOP rule for every op
#
# A forward rule receives what the op passed to `Tensor._from_op`: its result array, its input tensors
# and its context, and returns `(mac_flops, elementwise_flops)`. A backward rule receives the
# gradient arriving at the op as well, and counts only the input gradients the rule computes (those of
# inputs that require one). The element-wise costs per element are stated in `_PER_ELEMENT`; they
# follow the NumPy code of each op (softmax: max, subtract, exp, sum, divide is 5 per element).
# `register_flop_rule` lets a later module add an op; an op without a rule is counted as 0 FLOPs and
# listed in the counter's `uncounted`, never silently.

# %%
#| export
_PER_ELEMENT = {  # op -> (forward, backward) FLOPs per element of the result
    'add': (1, 0), 'sub': (1, 1), 'mul': (1, 1), 'div': (1, 2), 'pow': (1, 4), 'neg': (1, 1),
    'exp': (1, 1), 'log': (1, 1), 'sqrt': (1, 2), 'abs': (1, 2), 'clip': (2, 3), 'relu': (1, 2),
    'sigmoid': (4, 3), 'tanh': (1, 3), 'gelu': (8, 15), 'softmax': (5, 4), 'log_softmax': (5, 4),
    'dropout': (2, 2), 'bce_with_logits': (7, 5), 'binary_cross_entropy': (7, 5)}
_MOVEMENT = ('reshape', 'permute', 'getitem', 'cat', 'embedding')   # data movement: 0 FLOPs forward
_MAC_OPS = ('matmul', 'conv2d', 'scaled_dot_product_attention')     # counted as 2 FLOPs per MAC

def _size(t) -> int: return int(np.size(t.data if isinstance(t, Tensor) else t))

# %% [markdown]
# The forward rules. Attention's inputs are the per-head tensors (..., T, E): the two products
# $QK^\top$ and $PV$ give $2\,B T_q T_k (E + E_v)$ FLOPs, and the scaling, the softmax and dropout are
# element-wise. The normalizations cost 5 per element to normalize plus one per element for each
# affine parameter present.

# %%
#| export
def _attn_dims(q, k, v) -> tuple:
    "Batch (product of the broadcast leading dims), Tq, Tk, E, Ev of an attention call."
    batch = math.prod(np.broadcast_shapes(q.shape[:-2], k.shape[:-2], v.shape[:-2]))
    return batch, q.shape[-2], k.shape[-2], q.shape[-1], v.shape[-1]

def _fwd_attention(out, parents, ctx):
    B, Tq, Tk, E, Ev = _attn_dims(*parents[:3])
    elem = B * Tq * E + 5 * B * Tq * Tk + (len(parents) > 3) * B * Tq * Tk   # scale, softmax, float mask
    if ctx.get('keep') is not None: elem += 2 * B * Tq * Tk                     # dropout
    return 2 * B * Tq * Tk * (E + Ev), elem

def _fwd_norm(out, parents, ctx): return 0, out.size * (5 + sum(ctx['has']))

_FORWARD_RULES = {
    'matmul': lambda out, p, ctx: (matmul_flops(p[0].shape, p[1].shape), 0),
    'conv2d': lambda out, p, ctx: (conv2d_flops(p[0].shape, p[1].shape, out.shape),
                                   out.size if len(p) > 2 else 0),
    'scaled_dot_product_attention': _fwd_attention,
    'batch_norm': _fwd_norm, 'layer_norm': _fwd_norm,
    'cross_entropy': lambda out, p, ctx: (0, 5 * p[0].data.size + 2 * p[0].shape[0]),
    'max_pool2d': lambda out, p, ctx: (0, out.size * math.prod(ctx['kernel'])),
    'avg_pool2d': lambda out, p, ctx: (0, out.size * math.prod(ctx['kernel'])),
    **{op: (lambda out, p, ctx: (0, _size(p[0]))) for op in ('sum', 'mean', 'max', 'min')},
    **{op: (lambda out, p, ctx: (0, 0)) for op in _MOVEMENT},
    **{op: (lambda out, p, ctx, c=c: (0, c * out.size)) for op, (c, _) in _PER_ELEMENT.items()}}

# %% [markdown]
# The backward rules mirror the gradient rules of the earlier modules: a matmul computes one product of
# the same size per input that needs a gradient, conv2d one GEMM for the weight and one for the input
# (plus the scatter-adds of `col2im`), attention four products ($dV$, $dP$, $dQ$, $dK$). Gradients summed
# over broadcast axes (`unbroadcast`) cost one add per element of the gradient.

# %%
#| export
def _bcast_sum(g, p) -> int:
    "Adds of summing a gradient of `g`'s size back to input `p` (0 when no axis was broadcast)."
    return g.size if p.requires_grad and _size(p) != g.size else 0

def _bwd_matmul(g, out, p, ctx):
    a, b = p[0], p[1]
    A = (1,) + a.shape if a.ndim == 1 else a.shape                          # (..., n, k)
    B = b.shape + (1,) if b.ndim == 1 else b.shape                          # (..., k, m)
    batch = math.prod(np.broadcast_shapes(A[:-2], B[:-2]))
    mac = elem = 0
    for x, full in ((a, batch * A[-2] * A[-1]), (b, batch * B[-2] * B[-1])):
        if x.requires_grad: mac += matmul_flops(a.shape, b.shape); elem += full - _size(x)
    return mac, elem

def _bwd_conv2d(g, out, p, ctx):
    x, w = p[0], p[1]
    f = conv2d_flops(x.shape, w.shape, out.shape)
    cols = x.requires_grad * f // (2 * w.shape[0])                           # col2im's scatter-adds
    bias = out.size if len(p) > 2 and p[2].requires_grad else 0
    return (x.requires_grad + w.requires_grad) * f, cols + bias

def _bwd_attention(g, out, p, ctx):
    B, Tq, Tk, E, Ev = _attn_dims(*p[:3])
    q, k, v = p[:3]
    mac = 2 * B * Tq * Tk * (Ev + v.requires_grad * Ev + (q.requires_grad + k.requires_grad) * E)
    elem = 2 * B * Tq * Ev + 3 * B * Tq * Tk + q.requires_grad * B * Tq * E + k.requires_grad * B * Tk * E
    return mac, elem

def _bwd_elementwise(op):
    c = _PER_ELEMENT[op][1]
    return lambda g, out, p, ctx: (0, sum(c * g.size + _bcast_sum(g, x) for x in p if x.requires_grad))

def _bwd_norm(g, out, p, ctx): return 0, 8 * g.size + 2 * g.size * sum(x.requires_grad for x in p[1:])

_BACKWARD_RULES = {
    'matmul': _bwd_matmul, 'conv2d': _bwd_conv2d, 'scaled_dot_product_attention': _bwd_attention,
    'batch_norm': _bwd_norm, 'layer_norm': _bwd_norm,
    'cross_entropy': lambda g, out, p, ctx: (0, 5 * p[0].data.size),
    'max_pool2d': lambda g, out, p, ctx: (0, 3 * out.size * math.prod(ctx['kernel'])),
    'avg_pool2d': lambda g, out, p, ctx: (0, out.size * math.prod(ctx['kernel'])),
    'sum': lambda g, out, p, ctx: (0, 0), 'mean': lambda g, out, p, ctx: (0, _size(p[0])),
    'max': lambda g, out, p, ctx: (0, 4 * _size(p[0])), 'min': lambda g, out, p, ctx: (0, 4 * _size(p[0])),
    'getitem': lambda g, out, p, ctx: (0, g.size), 'embedding': lambda g, out, p, ctx: (0, g.size),
    **{op: (lambda g, out, p, ctx: (0, 0)) for op in ('reshape', 'permute', 'cat')},
    **{op: _bwd_elementwise(op) for op in _PER_ELEMENT}}

# %%
#| export
def register_flop_rule(op: str,         # the op name as it records itself with `Tensor._from_op`
                       forward=None,    # fn(out, parents, ctx) -> (mac_flops, elementwise_flops)
                       backward=None,   # fn(g, out, parents, ctx) -> (mac_flops, elementwise_flops)
                      ):
    "Give the FLOP counter a rule for an op that a later module adds."
    if forward is not None: _FORWARD_RULES[op] = forward
    if backward is not None: _BACKWARD_RULES[op] = backward

# %% [markdown]
# Every op that records itself anywhere in the package has both rules: the test takes the op names
# from the gradient rule table, which holds one entry per differentiable op.

# %%
test_eq(sorted(set(_grad_rules) - set(_FORWARD_RULES)), [])
test_eq(sorted(set(_grad_rules) - set(_BACKWARD_RULES)), [])

# %% [markdown]
# ## Hooking the op layer
#
# `_OpHooks` is the given machinery every instrument of this module is built on. Inside its `with`
# block, `Tensor._from_op` and every entry of `_grad_rules` are replaced by wrappers that call the
# original and then report to the instrument (`_on_forward`, `_on_backward`), and `Module.__call__` is
# wrapped to keep a stack of the modules running, named by their dotted path from the outermost one
# (`'0'`, `'3'` inside a `Sequential`, `'transformer.h.0.attn'` in a GPT). On leaving the block, by a
# normal exit or an exception, the three originals are put back exactly. Instruments nest: an inner one
# wraps the outer one's wrappers and restores them, so it must be left first.

# %%
#| export
class _OpHooks:
    "Base of the instruments: while active, every op record and every gradient rule passes through it."
    _active = []   # instruments currently entered, innermost last

    def _on_forward(self, op, out, parents, ctx, modules): pass
    def _on_backward(self, op, g, out, parents, ctx, grads, modules, start, end): pass
    def _on_module(self, name, entering): pass

    def __enter__(self):
        if self in _OpHooks._active: raise RuntimeError(f"{type(self).__name__}: already active")
        self._saved = (Tensor.__dict__['_from_op'], dict(_grad_rules), Module.__dict__['__call__'])
        self._stack, self._names, self._owner = [], {}, {}   # modules running; name cache; array -> modules
        record, rules, call = self._saved[0].__func__, self._saved[1], self._saved[2]
        Tensor._from_op = staticmethod(self._hook_record(record))
        for op, rule in rules.items(): _grad_rules[op] = self._hook_rule(op, rule)
        Module.__call__ = self._hook_call(call)
        _OpHooks._active.append(self)
        return self

    def __exit__(self, *exc):
        if _OpHooks._active[-1] is not self:
            raise RuntimeError(f"{type(self).__name__}: left while {type(_OpHooks._active[-1]).__name__}, "
                               "entered inside it, is still active")
        _OpHooks._active.pop()
        Tensor._from_op, Module.__call__ = self._saved[0], self._saved[2]
        _grad_rules.clear(); _grad_rules.update(self._saved[1])
        self._owner = {}
        return False                                    # an exception in the block propagates

# %% [markdown]
# The three wrappers. The forward wrapper remembers, for each result array, the modules that produced it
# (by the array's `id`, valid while the graph holds the array), so that the backward step of that op is
# charged to the same modules.

# %%
#| export
@patch
def _hook_record(self: _OpHooks, record):
    def hooked(data, op, parents, **ctx):
        out = record(data, op, parents, **ctx)
        names = tuple(n for _, n in self._stack)
        self._owner[id(out.data)] = names
        self._on_forward(op, out.data, parents, ctx, names)
        return out
    return hooked

@patch
def _hook_rule(self: _OpHooks, op, rule):
    def hooked(g, out, *parents, **ctx):
        start = time.perf_counter()
        grads = rule(g, out, *parents, **ctx)
        end = time.perf_counter()
        self._on_backward(op, g, out, parents, ctx, grads, self._owner.get(id(out), ()), start, end)
        return grads
    return hooked

# %%
#| export
def _child_name(self: _OpHooks, parent, child) -> str:
    "Dotted name of `child` inside `parent`, cached; its class name if it is not a descendant."
    key = (id(parent), id(child))
    if key not in self._names:
        self._names[key] = next((n for n, m in parent.named_modules() if m is child), type(child).__name__)
    return self._names[key]

@patch
def _hook_call(self: _OpHooks, call):
    def hooked(module, *args, **kwargs):
        if self._stack:
            parent, pname = self._stack[-1]
            child = _child_name(self, parent, module)
            name = f"{pname}.{child}" if pname else child
        else: name = ''                                   # the outermost module
        self._stack.append((module, name)); self._on_module(name, True)
        try: return call(module, *args, **kwargs)
        finally: self._stack.pop(); self._on_module(name, False)
    return hooked

# %% [markdown]
# ## The FLOP counter
#
# `FLOPCounter` adds up the rules' results: `total_flops`, `macs` (the MAC-op FLOPs divided by 2),
# `elementwise_flops`, `forward_flops` and `backward_flops`, and two breakdowns, `by_op` (op name ->
# FLOPs, forward and backward together) and `by_module` (dotted module name -> FLOPs of everything that
# ran inside it, its submodules included; the outermost module is the total and is left out).

# %%
#| export
class FLOPCounter(_OpHooks):
    "Context manager: count the FLOPs of every op run inside it, forward and backward."
    def __init__(self):
        self.mac_flops = self.elementwise_flops = self.forward_flops = self.backward_flops = 0
        self.by_op, self.by_module, self.uncounted = {}, {}, {}

    @property
    def total_flops(self) -> int: return self.mac_flops + self.elementwise_flops
    @property
    def macs(self) -> int: return self.mac_flops // 2

    def _add(self, op, rule, args, modules, phase):
        if rule is None:
            self.uncounted[op] = self.uncounted.get(op, 0) + 1
            return
        mac, elem = rule(*args)
        self.mac_flops += mac; self.elementwise_flops += elem
        if phase == 'forward': self.forward_flops += mac + elem
        else: self.backward_flops += mac + elem
        self.by_op[op] = self.by_op.get(op, 0) + mac + elem
        for m in modules[1:]: self.by_module[m] = self.by_module.get(m, 0) + mac + elem

    def _on_forward(self, op, out, parents, ctx, modules):
        self._add(op, _FORWARD_RULES.get(op), (out, parents, ctx), modules, 'forward')

    def _on_backward(self, op, g, out, parents, ctx, grads, modules, start, end):
        self._add(op, _BACKWARD_RULES.get(op), (g, out, parents, ctx), modules, 'backward')

# %% [markdown]
# A summary for printing, largest first.

# %%
#| export
def _fmt_count(n: float) -> str:
    "A count with an SI prefix: `1.5e9` -> `'1.50 G'`."
    for unit, scale in (('T', 1e12), ('G', 1e9), ('M', 1e6), ('k', 1e3)):
        if abs(n) >= scale: return f"{n / scale:.2f} {unit}"
    return f"{n:.0f} "

@patch
def table(self: FLOPCounter, top: int = 10) -> str:
    "Totals, then the `top` ops and modules by FLOPs."
    lines = [f"total {_fmt_count(self.total_flops)}FLOPs (forward {_fmt_count(self.forward_flops)}, "
             f"backward {_fmt_count(self.backward_flops)}); {_fmt_count(self.macs)}MACs, "
             f"element-wise {_fmt_count(self.elementwise_flops)}FLOPs"]
    for title, d in (('op', self.by_op), ('module', self.by_module)):
        for k, v in sorted(d.items(), key=lambda kv: -kv[1])[:top]:
            lines.append(f"  {title} {k:<32} {_fmt_count(v):>10}FLOPs  {v / max(self.total_flops, 1):6.1%}")
    if self.uncounted: lines.append(f"  ops without a FLOP rule (counted as 0): {self.uncounted}")
    return "\n".join(lines)

@patch
def __repr__(self: FLOPCounter): return self.table()

# %% [markdown]
# `count_flops(model, *inputs)` runs the model once inside a counter and returns the counter. With
# `backward=True` it also runs the backward pass, from `loss_fn(output)` when a loss function is given,
# else from the output itself with a gradient of ones (so no extra op is counted).

# %%
#| export
def count_flops(model,                 # a Module or any function of the inputs
                *inputs,               # its arguments
                backward: bool = False,  # also count the backward pass?
                loss_fn=None,          # output -> the Tensor to differentiate; None: the output itself
               ) -> FLOPCounter:
    "Run `model(*inputs)` (and its backward pass) inside a `FLOPCounter`; return the counter."
    with FLOPCounter() as fc:
        out = model(*inputs)
        if backward:
            out = out if loss_fn is None else loss_fn(out)
            if not isinstance(out, Tensor):
                raise TypeError(f"count_flops: backward needs a Tensor to differentiate, got "
                                f"{type(out).__name__}; pass loss_fn=")
            out.backward(np.ones(out.shape, out.dtype))
    return fc

# %% [markdown]
# A `Linear(in, out)` on a batch of N rows runs one matmul of $2 N\,\mathrm{in}\,\mathrm{out}$ FLOPs
# and one bias add of $N\,\mathrm{out}$. Its backward pass computes the input's gradient and the
# weight's, each a product of the same size, and sums the bias gradient over the batch.

# %%
manual_seed(0)
lin = Linear(20, 30)
x = randn(8, 20)
fc = count_flops(lin, x)
test_eq(fc.macs, 8 * 20 * 30)
test_eq(fc.by_op, {'matmul': 2 * 8 * 20 * 30, 'add': 8 * 30, 'permute': 0})
test_eq(fc.total_flops, 2 * 8 * 20 * 30 + 8 * 30)
x.requires_grad_()
fc = count_flops(lin, x, backward=True)
test_eq(fc.by_op['matmul'], 3 * 2 * 8 * 20 * 30)               # forward, dL/dx, dL/dW
test_eq(fc.backward_flops, 2 * 2 * 8 * 20 * 30 + 8 * 30)        # plus the bias gradient's sum
print(fc)

# %% [markdown]
# A batched matmul broadcasts its batch axes; a strided, padded convolution runs fewer, larger windows.
# The counter sees the shapes the ops really ran with, and the counts match the formulas.

# %%
a, b = randn(4, 1, 6, 5), randn(3, 5, 7)
test_eq(count_flops(lambda u, v: u @ v, a, b).macs, 4 * 3 * 6 * 5 * 7)
x = randn(2, 3, 11, 9)
conv = Conv2d(3, 8, 3, stride=2, padding=1)
OH, OW = (11 + 2 - 3) // 2 + 1, (9 + 2 - 3) // 2 + 1                   # 6, 5
fc = count_flops(conv, x)
test_eq(fc.macs, 2 * 8 * OH * OW * 3 * 3 * 3)
test_eq(fc.elementwise_flops, 2 * 8 * OH * OW)                          # the bias add
fc = count_flops(conv, x.requires_grad_(), backward=True)
test_eq(fc.by_op['conv2d'] - fc.forward_flops, 2 * conv2d_flops(x.shape, conv.weight.shape, (2, 8, OH, OW))
        + 3 * 9 * 2 * OH * OW + 2 * 8 * OH * OW)                        # two GEMMs, col2im adds, bias sum

# %% [markdown]
# Attention over B = 2 sequences with 3 heads of size E = 4 and T = 5 positions: the two products give
# $2 \cdot 6 \cdot 5 \cdot 5 \cdot (4 + 4)$ FLOPs, the backward pass's four products twice that.

# %%
q, k, v = (randn(2, 3, 5, 4).requires_grad_() for _ in range(3))
fc = count_flops(lambda q, k, v: scaled_dot_product_attention(q, k, v, is_causal=True), q, k, v,
                 backward=True)
test_eq(fc.mac_flops, 3 * 2 * 6 * 5 * 5 * (4 + 4))

# %% [markdown]
# ### Checking the count against $6N + 12LHQT$
#
# `GPT.flops_per_token` uses the estimate of Kaplan et al. and nanoGPT: a training step costs
# $6N$ FLOPs per token for the weights (2 forward, 4 backward per parameter) plus $12 L H Q T$ for the
# attention products, with N the parameters without the position table. Counting one training step of
# a small GPT on a batch gives the exact figure. Its MAC-op FLOPs equal the estimate with N restricted to
# the matrices of the matmuls; the rest of the estimate's N (biases, LayerNorm weights) is element-wise
# work, which the estimate charges at 6 FLOPs per parameter per token.

# %%
manual_seed(0)
gpt = GPT(vocab_size=17, block_size=16, n_layer=2, n_head=2, n_embd=16)
B, T = 3, 16
idx = np.random.default_rng(0).integers(0, 17, (B, T))
fc = count_flops(gpt, idx, idx, backward=True, loss_fn=lambda out: out[1])
matrices = sum(m.weight.size for n, m in gpt.named_modules() if isinstance(m, Linear))
cfg = gpt.config
attention = 12 * cfg.n_layer * cfg.n_head * (cfg.n_embd // cfg.n_head) * T
test_eq(fc.mac_flops, (6 * matrices + attention) * B * T)
estimate = gpt.flops_per_token(T) * B * T
print(f"counted: {fc.mac_flops:,} MAC-op FLOPs + {fc.elementwise_flops:,} element-wise FLOPs")
print(f"6N + 12LHQT estimate: {estimate:,} FLOPs; counted MAC-op FLOPs are "
      f"{fc.mac_flops / estimate:.3f} of it, all counted FLOPs {fc.total_flops / estimate:.3f}")
print(fc.table(top=6))
