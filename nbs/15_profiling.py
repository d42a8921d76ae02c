# %%
#| default_exp optimization.profiling

# %% [markdown]
# # Profiling
#
# > Count FLOPs by running the model, measure memory and time op by op, and draw the roofline.

# %% [markdown]
# Before making anything faster, measure what is slow. This module builds four instruments on the
# framework of the earlier modules, each by watching the ops a model runs rather than by reading its
# architecture:
#
# - `FLOPCounter` counts floating-point operations as the ops execute, forward and backward, so the
#   count includes the batch size, the padding, the stride, and every op the model really calls;
# - `MemoryProfiler` measures the bytes NumPy allocates during a call, and splits a training step
#   into parameters, gradients, optimizer state and activations;
# - `Profiler` records every op of a training step with its wall time, FLOPs and bytes, prints a
#   table of where the time goes and writes a trace that Perfetto opens;
# - `gemm_gflops`, `memory_bandwidth` and `roofline_bound` measure this machine's two limits and
#   say, for each op, which one it meets.
#
# All four work by temporarily replacing two hooks that every op passes through: `Tensor._from_op`,
# which the autograd module replaced with its recorder, and the table of gradient rules
# `_grad_rules`. The hooking machinery is given; the exercises are the FLOP rules, the roofline
# classification, the memory arithmetic and the aggregation behind the profiler's table. Every body
# between `### BEGIN SOLUTION` and `### END SOLUTION` is an exercise; the cells under it test it.

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

_all_ = ['Measurement', 'Comparison', 'Timer', 'measure', 'compare', 'blas_threads', 'machine_info',
         'fmt_seconds']

# %%
#| hide
import os
import tempfile

import matplotlib.pyplot as plt
from fastcore.test import test_eq, test_fail, test_close
from threadpoolctl import threadpool_limits

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
# Every time in this module is measured with the project's one timing protocol,
# `tinytorch.utils.timing`, re-exported here so that `from tinytorch.optimization.profiling import
# measure, compare, Timer, blas_threads` works. Its rules, each for a reason:
#
# - **warm up**: the first calls allocate buffers, fault in memory pages and start BLAS threads;
#   they are run and discarded;
# - **the median of several samples**: load from other programs only ever adds time, so the median
#   ignores a few slow samples; the IQR says how far the samples spread;
# - **alternate candidates**: `compare` runs the candidates in turns, round by round, and forms each
#   ratio within a round, so a burst of load hits both sides;
# - **pin the BLAS threads**: `blas_threads(1)` fixes NumPy's BLAS to one thread; on this shared
#   2-core machine spinning BLAS threads can make small products many times slower. Every
#   measurement below runs with one BLAS thread, and other programs run on the machine at the same
#   time, so every time printed here is noisy: read the medians and IQRs, not the last digit.
#
# This notebook pins NumPy's BLAS to one thread from here on (`threadpool_limits`, which
# `blas_threads` wraps for a `with` block), and prints the machine it runs on.

# %%
threadpool_limits(1, 'blas')
print(machine_info())

# %% [markdown]
# One demonstration of why the warm-up exists. A function that allocates its output buffer on the
# first call and reuses it afterwards, as the convolution module's scratch buffer does, pays on its
# first call for the operating system mapping fresh memory pages; the later calls do not. Ten fresh
# copies of the function are timed without warm-up, one sample per call, and the first call of each
# is compared with the median of its next four calls (each ratio formed within one copy, close in
# time).

# %%
big = np.ones(8 * 2**20, np.float32)                                    # 32 MB

def scaler():
    "`big * 2` into a buffer allocated on the first call and kept."
    buf = {}
    def scale():
        if 'out' not in buf: buf['out'] = np.empty_like(big)
        np.multiply(big, 2, out=buf['out'])
    return scale

cold, warm = [], []
for _ in range(10):
    m = measure(scaler(), warmup=0, repeats=5, number=1, max_spread=float('inf'))
    cold.append(m.samples[0]); warm.append(float(np.median(m.samples[1:])))
print(f"first call: median {fmt_seconds(float(np.median(cold)))}; warmed up: median "
      f"{fmt_seconds(float(np.median(warm)))}; first / warm within a copy: median "
      f"{np.median(np.array(cold) / np.array(warm)):.2f}x over 10 copies")

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
# fast a machine does it. Counting from a formula per layer type misses what the formula forgets:
# the batch, the padded border a convolution also multiplies, the bias add, the softmax inside
# attention, and the whole backward pass. So `FLOPCounter` counts what runs: every op calls
# `Tensor._from_op` with its result, its inputs and its saved context, and every backward step calls
# one gradient rule. Each op name gets a FLOP rule computed from those.
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
# `a @ b` with `a` of shape (..., n, k) and `b` of shape (..., k, m) computes, for each of the
# broadcast batch of matrices, n m dot products of length k: $2\,\mathrm{batch}\cdot n\,k\,m$ FLOPs.
# NumPy's rules for a 1-D operand apply: a 1-D `a` is a row (1, k), a 1-D `b` a column (k, 1).

# %%
#| export
def matmul_flops(a_shape: tuple,  # shape of the left operand, at least 1-D
                 b_shape: tuple,  # shape of the right operand, at least 1-D
                ) -> int:
    "FLOPs of `a @ b` (NumPy's rules): 2 * batch * n * k * m; batch: the broadcast leading dims."
    ### BEGIN SOLUTION
    a = (1,) + tuple(a_shape) if len(a_shape) == 1 else tuple(a_shape)     # (..., n, k)
    b = tuple(b_shape) + (1,) if len(b_shape) == 1 else tuple(b_shape)     # (..., k, m)
    batch = np.broadcast_shapes(a[:-2], b[:-2])
    return 2 * math.prod(batch) * a[-2] * a[-1] * b[-1]
    ### END SOLUTION

# %%
test_eq(matmul_flops((3, 4), (4, 5)), 2 * 3 * 4 * 5)
test_eq(matmul_flops((7, 3, 4), (4, 5)), 2 * 7 * 3 * 4 * 5)     # a Linear on a (7, 3, 4) input
test_eq(matmul_flops((2, 1, 3, 4), (6, 4, 5)), 2 * 12 * 3 * 4 * 5)  # batch (2, 1), (6,) -> (2, 6)
test_eq(matmul_flops((4,), (4,)), 8)                               # a dot product
test_eq(matmul_flops((4,), (4, 5)), 2 * 4 * 5)
test_eq(type(matmul_flops((10**5, 10**5), (10**5, 10**5))), int)   # Python ints never overflow

# %% [markdown]
# ### The FLOPs of a convolution
#
# Every output element of `conv2d` is a dot product of length $C K_H K_W$ between one filter and one
# window of the (zero-padded) input, so the count is $2 N O\,O_H O_W\,C K_H K_W$. Stride and padding
# enter through the output size $O_H \times O_W$; the padded zeros are multiplied like any other
# value. The bias add is element-wise work, counted apart.

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
# A forward rule receives what the op passed to `Tensor._from_op`: its result array, its input
# tensors and its context, and returns `(mac_flops, elementwise_flops)`. A backward rule receives
# the gradient arriving at the op as well, and counts only the input gradients the rule computes
# (those of inputs that require one). The element-wise costs per element are stated in
# `_PER_ELEMENT`; they follow the NumPy code of each op (softmax: max, subtract, exp, sum, divide is
# 5 per element). `register_flop_rule` lets a later module add an op; an op without a rule is
# counted as 0 FLOPs and listed in the counter's `uncounted`, never silently.

# %%
#| export
_PER_ELEMENT = {  # op -> (forward, backward) FLOPs per element of the result
    'add': (1, 0), 'sub': (1, 1), 'mul': (1, 1), 'div': (1, 2), 'pow': (1, 4), 'neg': (1, 1),
    'exp': (1, 1), 'log': (1, 1), 'sqrt': (1, 2), 'abs': (1, 2), 'clip': (2, 3), 'relu': (1, 2),
    'sigmoid': (4, 3), 'tanh': (1, 3), 'gelu': (8, 15), 'softmax': (5, 4), 'log_softmax': (5, 4),
    'dropout': (2, 2), 'bce_with_logits': (7, 5), 'binary_cross_entropy': (7, 5)}
_MOVEMENT = ('reshape', 'permute', 'getitem', 'cat', 'embedding')   # data movement: 0 FLOPs forward
_MAC_OPS = ('matmul', 'conv2d', 'scaled_dot_product_attention')     # counted as 2 FLOPs per MAC

def _size(t) -> int: return t.data.size if isinstance(t, Tensor) else int(np.size(t))

# %% [markdown]
# The forward rules. Attention's inputs are the per-head tensors (..., T, E): the two products
# $QK^\top$ and $PV$ give $2\,B T_q T_k (E + E_v)$ FLOPs, and the scaling, the softmax and dropout
# are element-wise. The normalizations cost 5 per element to normalize plus one per element for each
# affine parameter present.

# %%
#| export
def _attn_dims(q, k, v) -> tuple:
    "Batch (product of the broadcast leading dims), Tq, Tk, E, Ev of an attention call."
    batch = math.prod(np.broadcast_shapes(q.shape[:-2], k.shape[:-2], v.shape[:-2]))
    return batch, q.shape[-2], k.shape[-2], q.shape[-1], v.shape[-1]

def _fwd_attention(out, parents, ctx):
    B, Tq, Tk, E, Ev = _attn_dims(*parents[:3])
    elem = B * Tq * E + 5 * B * Tq * Tk                                      # scale, softmax
    elem += (len(parents) > 3) * B * Tq * Tk                                 # a float mask
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
# The backward rules mirror the gradient rules of the earlier modules: a matmul computes one product
# of the same size per input that needs a gradient, conv2d one GEMM for the weight and one for the
# input (plus the scatter-adds of `col2im`), attention four products ($dV$, $dP$, $dQ$, $dK$).
# Gradients summed over broadcast axes (`unbroadcast`) cost one add per element of the gradient.

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
    elem = 2 * B * Tq * Ev + 3 * B * Tq * Tk                                 # g . out, dP -> dS
    elem += q.requires_grad * B * Tq * E + k.requires_grad * B * Tk * E      # the scale
    return mac, elem

def _bwd_elementwise(op):
    c = _PER_ELEMENT[op][1]
    def rule(g, out, p, ctx):
        return 0, sum(c * g.size + _bcast_sum(g, x) for x in p if x.requires_grad)
    return rule

def _bwd_norm(g, out, p, ctx): return 0, g.size * (8 + 2 * sum(x.requires_grad for x in p[1:]))

_BACKWARD_RULES = {
    'matmul': _bwd_matmul, 'conv2d': _bwd_conv2d, 'scaled_dot_product_attention': _bwd_attention,
    'batch_norm': _bwd_norm, 'layer_norm': _bwd_norm,
    'cross_entropy': lambda g, out, p, ctx: (0, 5 * p[0].data.size),
    'max_pool2d': lambda g, out, p, ctx: (0, 3 * out.size * math.prod(ctx['kernel'])),
    'avg_pool2d': lambda g, out, p, ctx: (0, out.size * math.prod(ctx['kernel'])),
    'sum': lambda g, out, p, ctx: (0, 0), 'mean': lambda g, out, p, ctx: (0, _size(p[0])),
    'max': lambda g, out, p, ctx: (0, 4 * _size(p[0])),
    'min': lambda g, out, p, ctx: (0, 4 * _size(p[0])),
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
# original and then report to the instrument (`_on_forward`, `_on_backward`), and `Module.__call__`
# is wrapped to keep a stack of the modules running, named by their dotted path from the outermost
# one (`'0'`, `'3'` inside a `Sequential`, `'transformer.h.0.attn'` in a GPT). On leaving the block,
# by a normal exit or an exception, the three originals are put back exactly. Instruments nest: an
# inner one wraps the outer one's wrappers and restores them, so it must be left first.

# %%
#| export
class _OpHooks:
    "Base of the instruments: while active, every op record and gradient rule passes through it."
    _active = []   # instruments currently entered, innermost last

    def _on_forward(self, op, out, parents, ctx, modules): pass
    def _on_backward(self, op, g, out, parents, ctx, grads, modules, start, end): pass
    def _on_module(self, module, name, entering): pass

    def __enter__(self):
        if self in _OpHooks._active: raise RuntimeError(f"{type(self).__name__}: already active")
        self._saved = (Tensor.__dict__['_from_op'], dict(_grad_rules), Module.__dict__['__call__'])
        self._stack, self._names = [], {}    # (module, name) running; (parent, child) -> name
        self._owner = {}                     # id of a result array -> names of the modules running
        record, rules, call = self._saved[0].__func__, self._saved[1], self._saved[2]
        Tensor._from_op = staticmethod(self._hook_record(record))
        for op, rule in rules.items(): _grad_rules[op] = self._hook_rule(op, rule)
        Module.__call__ = self._hook_call(call)
        _OpHooks._active.append(self)
        return self

    def __exit__(self, *exc):
        if _OpHooks._active[-1] is not self:
            inner = type(_OpHooks._active[-1]).__name__
            raise RuntimeError(f"{type(self).__name__}: left while {inner}, entered inside it, "
                               "is still active")
        _OpHooks._active.pop()
        Tensor._from_op, Module.__call__ = self._saved[0], self._saved[2]
        _grad_rules.clear(); _grad_rules.update(self._saved[1])
        self._owner = {}
        return False                                    # an exception in the block propagates

# %% [markdown]
# The three wrappers. The forward wrapper remembers, for each result array, the modules that
# produced it (by the array's `id`, valid while the graph holds the array), so that the backward
# step of that op is charged to the same modules.

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
        found = (n for n, m in parent.named_modules() if m is child)
        self._names[key] = next(found, type(child).__name__)
    return self._names[key]

@patch
def _hook_call(self: _OpHooks, call):
    def hooked(module, *args, **kwargs):
        if self._stack:
            parent, pname = self._stack[-1]
            child = _child_name(self, parent, module)
            name = f"{pname}.{child}" if pname else child
        else: name = ''                                   # the outermost module
        self._stack.append((module, name)); self._on_module(module, name, True)
        try: return call(module, *args, **kwargs)
        finally: self._stack.pop(); self._on_module(module, name, False)
    return hooked

# %% [markdown]
# ## The FLOP counter
#
# `FLOPCounter` adds up the rules' results: `total_flops`, `macs` (the MAC-op FLOPs divided by 2),
# `elementwise_flops`, `forward_flops` and `backward_flops`, and two breakdowns, `by_op` (op name ->
# FLOPs, forward and backward together) and `by_module` (dotted module name -> FLOPs of everything
# that ran inside it, its submodules included; the outermost module is the total and is left out).

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
    lines = [f"total {_fmt_count(self.total_flops)}FLOPs "
             f"(forward {_fmt_count(self.forward_flops)}, "
             f"backward {_fmt_count(self.backward_flops)}); "
             f"{_fmt_count(self.macs)}MACs, "
             f"element-wise {_fmt_count(self.elementwise_flops)}FLOPs"]
    for title, d in (('op', self.by_op), ('module', self.by_module)):
        for k, v in sorted(d.items(), key=lambda kv: -kv[1])[:top]:
            share = v / max(self.total_flops, 1)
            lines.append(f"  {title} {k:<32} {_fmt_count(v):>10}FLOPs  {share:6.1%}")
    if self.uncounted: lines.append(f"  ops without a FLOP rule (counted as 0): {self.uncounted}")
    return "\n".join(lines)

@patch
def __repr__(self: FLOPCounter): return self.table()

# %% [markdown]
# `count_flops(model, *inputs)` runs the model once inside a counter and returns the counter. With
# `backward=True` it also runs the backward pass, from `loss_fn(output)` when a loss function is
# given, else from the output itself with a gradient of ones (so no extra op is counted).

# %%
#| export
def count_flops(model,                 # a Module or any function of the inputs
                *inputs,               # its arguments
                backward: bool = False,  # also count the backward pass?
                loss_fn=None,          # output -> Tensor to differentiate; None: the output itself
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
# A batched matmul broadcasts its batch axes; a strided, padded convolution runs fewer, larger
# windows. The counter sees the shapes the ops really ran with, and the counts match the formulas.

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
gemm = conv2d_flops(x.shape, conv.weight.shape, (2, 8, OH, OW))
test_eq(fc.by_op['conv2d'] - fc.forward_flops,
        2 * gemm + 3 * 9 * 2 * OH * OW + 2 * 8 * OH * OW)              # two GEMMs, col2im, bias sum

# %% [markdown]
# Attention over B = 2 sequences with 3 heads of size E = 4 and T = 5 positions: the two products
# give $2 \cdot 6 \cdot 5 \cdot 5 \cdot (4 + 4)$ FLOPs, the backward pass's four products twice
# that.

# %%
q, k, v = (randn(2, 3, 5, 4).requires_grad_() for _ in range(3))
fc = count_flops(lambda q, k, v: scaled_dot_product_attention(q, k, v, is_causal=True), q, k, v,
                 backward=True)
test_eq(fc.mac_flops, 3 * 2 * 6 * 5 * 5 * (4 + 4))

# %% [markdown]
# ### Checking the count against $6N + 12LHQT$
#
# `GPT.flops_per_token` uses the estimate of Kaplan et al. and nanoGPT: a training step costs $6N$
# FLOPs per token for the weights (2 forward, 4 backward per parameter) plus $12 L H Q T$ for the
# attention products, with N the parameters without the position table. Counting one training step
# of a small GPT on a batch gives the exact figure. Its MAC-op FLOPs equal the estimate with N
# restricted to the matrices of the matmuls; the rest of the estimate's N (biases, LayerNorm
# weights) is element-wise work, which the estimate charges at 6 FLOPs per parameter per token.

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

# %% [markdown]
# ## Where the time goes
#
# `Profiler` records one `OpEvent` per op: its name, whether it ran forward or backward, its
# interval on the `perf_counter` clock, its FLOPs (the counter's rules) and the bytes of the arrays
# it read and wrote. The two phases are timed differently, and the difference matters when reading
# the table:
#
# - **backward**: each gradient rule is wrapped, so its time is exact: from the call to the return;
# - **forward**: an op computes its array *before* it calls `Tensor._from_op`, so the hook learns of
#   the op only when the work is done. The profiler charges the op with the time since the previous
#   event ended (the previous op's record, or a module's entry or exit). That interval holds the
#   op's NumPy work and also the Python between the two ops: argument checks, the `forward` method's
#   own lines. A forward time is therefore an upper bound on the op's own work, and the time of
#   Python code that is not followed by an op (an optimizer step, the backward engine's bookkeeping)
#   appears as *untracked*.
#
# `region(name)` marks a block of code that runs no ops, such as the optimizer's step, so that it
# gets a row of its own.

# %%
#| export
@dataclass
class OpEvent:
    "One op of a profiled run: name, phase, interval on the `perf_counter` clock, FLOPs and bytes."
    name: str        # the op name, as recorded with `Tensor._from_op`, or a region's name
    phase: str       # 'forward', 'backward' or 'region'
    start: float     # seconds, `time.perf_counter()`
    end: float
    flops: int = 0
    nbytes: int = 0  # bytes of the arrays read and written
    module: str = ''  # dotted name of the innermost module running ('' outside any)

    @property
    def seconds(self) -> float: return self.end - self.start

# %% [markdown]
# The bytes of an op are those of its inputs and its result (forward), or of the incoming gradient,
# the result, the inputs and the input gradients (backward): for an op that computes, the least
# memory traffic it can cause. (A view such as `reshape` moves nothing; it has no FLOPs either, and
# the roofline below leaves it out.)

# %%
#| export
def _nbytes(*arrays) -> int:
    return sum(a.nbytes for a in arrays if isinstance(a, np.ndarray))

def _flops(rule, args) -> int:
    return 0 if rule is None else sum(rule(*args))

class Profiler(_OpHooks):
    "Context manager: record every op run inside it, forward and backward, with time, FLOPs, bytes."
    def __enter__(self):
        self.events, self.spans, self._open = [], [], []  # ops and regions; module calls; open ones
        self._steps = []                 # (events so far, clock, overhead so far) at each `step()`
        self._overhead = 0.0             # seconds spent in the profiler's own bookkeeping
        super().__enter__()
        self.start = self._mark = time.perf_counter()
        return self

    def __exit__(self, *exc):
        self.end = time.perf_counter()
        return super().__exit__(*exc)

    @property
    def seconds(self) -> float:
        "Seconds inside the block, less the profiler's own bookkeeping."
        return self.end - self.start - self._overhead

    def _done(self, since: float):
        "End of a callback that began at `since`: count its time as overhead, restart the clock."
        self._mark = time.perf_counter()
        self._overhead += self._mark - since

# %% [markdown]
# The three callbacks. Each ends by reading the clock again (`_done`): the profiler's own
# bookkeeping is charged to no op, and it is subtracted from the profiled time, so that the shares
# in the table are shares of the model's time.

# %%
#| export
@patch
def _on_forward(self: Profiler, op, out, parents, ctx, modules):
    now = time.perf_counter()
    flops = _flops(_FORWARD_RULES.get(op), (out, parents, ctx))
    nbytes = _nbytes(out, *(p.data for p in parents))
    module = modules[-1] if modules else ''
    self.events.append(OpEvent(op, 'forward', self._mark, now, flops, nbytes, module))
    self._done(now)

@patch
def _on_backward(self: Profiler, op, g, out, parents, ctx, grads, modules, start, end):
    flops = _flops(_BACKWARD_RULES.get(op), (g, out, parents, ctx))
    nbytes = _nbytes(g, out, *(p.data for p in parents), *grads)
    module = modules[-1] if modules else ''
    self.events.append(OpEvent(op, 'backward', start, end, flops, nbytes, module))
    self._done(end)

@patch
def _on_module(self: Profiler, module, name, entering):
    now = time.perf_counter()
    if entering: self._open.append((name or type(module).__name__, now))
    else:
        label, start = self._open.pop()
        self.spans.append((label, start, now))
    self._done(now)

# %%
#| export
class _Region:
    "Context manager behind `Profiler.region`: one event of phase 'region' around a block."
    def __init__(self, prof, name): self.prof, self.name = prof, name
    def __enter__(self): self.t = time.perf_counter()
    def __exit__(self, *exc):
        now = time.perf_counter()
        self.prof.events.append(OpEvent(self.name, 'region', self.t, now))
        self.prof._done(now)
        return False

@patch
def region(self: Profiler, name: str):
    "Context manager: time the block as one row `name`: `with prof.region('optimizer.step'): ...`."
    return _Region(self, name)

# %% [markdown]
# ### Aggregating events per op
#
# The table is built from one aggregate per key: the op name for a forward op, the name followed by
# `' (backward)'` for a gradient rule, the region's name in brackets for a region. Write the
# aggregation: calls, seconds, FLOPs and bytes summed per key.

# %%
#| export
@dataclass
class OpStats:
    "The events of one key added up."
    calls: int = 0
    seconds: float = 0.0
    flops: int = 0
    nbytes: int = 0

    @property
    def gflops(self) -> float: return self.flops / self.seconds / 1e9 if self.seconds > 0 else 0.0
    @property
    def intensity(self) -> float: return self.flops / self.nbytes if self.nbytes else 0.0

def event_key(e: OpEvent) -> str:
    "Row name of an event: `'matmul'`, `'matmul (backward)'` or `'[optimizer.step]'`."
    if e.phase == 'forward': return e.name
    return f"{e.name} (backward)" if e.phase == 'backward' else f"[{e.name}]"

# %%
#| export
def aggregate(events: list,     # OpEvent objects
              key=event_key,    # event -> row name
             ) -> dict:
    "Dict row name -> OpStats (calls, seconds, flops, nbytes summed), in order of first appearance."
    ### BEGIN SOLUTION
    rows = {}
    for e in events:
        s = rows.setdefault(key(e), OpStats())
        s.calls += 1; s.seconds += e.seconds; s.flops += e.flops; s.nbytes += e.nbytes
    return rows
    ### END SOLUTION

# %%
evs = [OpEvent('matmul', 'forward', 0.0, 2.0, 100, 10), OpEvent('add', 'forward', 2.0, 2.5, 5, 30),
       OpEvent('matmul', 'forward', 3.0, 4.0, 100, 10),
       OpEvent('matmul', 'backward', 5.0, 9.0, 400, 40)]
rows = aggregate(evs)
test_eq(list(rows), ['matmul', 'add', 'matmul (backward)'])
test_eq(rows['matmul'], OpStats(2, 3.0, 200, 20))
test_close(rows['matmul'].gflops, 200 / 3.0 / 1e9)
test_eq(rows['matmul (backward)'].intensity, 10.0)
test_eq(aggregate([]), {})
test_eq(list(aggregate(evs, key=lambda e: e.phase)), ['forward', 'backward'])

# %% [markdown]
# A run can be cut into steps with `prof.step()` after each one (as PyTorch's profiler does). Then
# `rows()` gives, for each row, the median over the steps of its per-step time (and of its calls,
# FLOPs and bytes, which are the same in every step), and `step_time()` the median step time: on a
# shared machine an op that lost the processor in one step does not move the median. With
# `stat='min'` both take the fastest step instead, for a machine so loaded that most steps are
# interrupted somewhere. Without steps, `rows()` is `aggregate(prof.events)` and `step_time()` the
# whole block.

# %%
#| export
@patch
def step(self: Profiler):
    "Mark the end of one step (a training step); `rows` and `table` then give per-step medians."
    now = time.perf_counter()
    self._steps.append((len(self.events), now, self._overhead))
    self._done(now)

@patch
def _slices(self: Profiler) -> list:
    "(events, seconds) of each marked step, or of the whole block when no step was marked."
    if not self._steps: return [(self.events, self.seconds)]
    bounds = [(0, self.start, 0.0)] + self._steps
    return [(self.events[i:j], (t - s) - (v - u))                    # time less bookkeeping
            for (i, s, u), (j, t, v) in zip(bounds, bounds[1:])]

# %%
#| export
_STATS = {'median': np.median, 'min': np.min}

def _stat(stat: str):
    if stat not in _STATS:
        raise ValueError(f"Profiler: stat must be 'median' or 'min', got {stat!r}")
    return _STATS[stat]

@patch
def rows(self: Profiler, stat: str = 'median') -> dict:
    "Row name -> OpStats: totals of the block or, with steps marked, per step (`stat` of them)."
    f, per_step = _stat(stat), [aggregate(ev) for ev, _ in self._slices()]
    if len(per_step) == 1: return per_step[0]
    over = lambda k, fn, get: fn([get(r[k]) if k in r else 0 for r in per_step])
    keys = dict.fromkeys(k for r in per_step for k in r)                 # first-appearance order
    return {k: OpStats(int(over(k, np.median, lambda s: s.calls)),
                       float(over(k, f, lambda s: s.seconds)),
                       int(over(k, np.median, lambda s: s.flops)),
                       int(over(k, np.median, lambda s: s.nbytes)))
            for k in keys}

@patch
def step_time(self: Profiler, stat: str = 'median') -> float:
    "Seconds of the block, or the `stat` of the steps' seconds when steps were marked."
    return float(_stat(stat)([sec for _, sec in self._slices()]))

# %% [markdown]
# `table` prints the rows sorted by `sort_by` ('time', 'calls', 'flops', 'bytes' or 'gflops'):
# calls, time, the share of the profiled time (per step, when steps were marked), FLOPs, the
# achieved GFLOP/s and the arithmetic intensity (FLOPs per byte). The last lines give the time of
# all ops together and the untracked rest.

# %%
#| export
_SORT_KEYS = {'time': lambda s: s.seconds, 'calls': lambda s: s.calls, 'flops': lambda s: s.flops,
              'bytes': lambda s: s.nbytes, 'gflops': lambda s: s.gflops}

@patch
def table(self: Profiler, sort_by: str = 'time', top: int = 12, stat: str = 'median') -> str:
    "The `top` rows by `sort_by`, with their share of the profiled time and their GFLOP/s."
    if sort_by not in _SORT_KEYS:
        raise ValueError(f"Profiler.table: sort_by must be one of {list(_SORT_KEYS)}, "
                         f"got {sort_by!r}")
    rows = sorted(self.rows(stat).items(), key=lambda kv: -_SORT_KEYS[sort_by](kv[1]))
    total = self.step_time(stat)
    tracked = float(_stat(stat)([sum(e.seconds for e in ev) for ev, _ in self._slices()]))
    w = max([len(k) for k, _ in rows[:top]] + [12])
    lines = [f"{'op':<{w}}  {'calls':>5}  {'time':>9}  {'share':>6}  {'FLOPs':>9}  {'GFLOP/s':>7}  "
             f"{'FLOP/B':>6}"]
    for k, s in rows[:top]:
        lines.append(f"{k:<{w}}  {s.calls:>5}  {fmt_seconds(s.seconds):>9}  "
                     f"{s.seconds / total:>6.1%}  {_fmt_count(s.flops):>9}  {s.gflops:>7.2f}  "
                     f"{s.intensity:>6.2f}")
    calls = sum(s.calls for _, s in rows)
    lines.append(f"{'all ops':<{w}}  {calls:>5}  {fmt_seconds(tracked):>9}  "
                 f"{tracked / total:>6.1%}")
    lines.append(f"{'untracked':<{w}}  {'':>5}  {fmt_seconds(total - tracked):>9}  "
                 f"{1 - tracked / total:>6.1%}")
    if self._steps:
        what = 'medians' if stat == 'median' else 'fastest'
        lines.append(f"({what} of {len(self._steps)} steps; a step {fmt_seconds(total)})")
    return "\n".join(lines)

# %% [markdown]
# ### A trace for Perfetto
#
# `export_chrome_trace` writes the Chrome trace event format that Perfetto (ui.perfetto.dev) and
# `chrome://tracing` open: one complete event (`"ph": "X"`) per op, region and module call, with its
# start and duration in microseconds from the profiler's start. Module calls contain the forward ops
# that ran in them, since a forward op's interval starts at the latest module entry or event end.
# The file is written atomically: a reader sees the old file or the whole new one.

# %%
#| export
@patch
def export_chrome_trace(self: Profiler, path) -> None:
    "Write the events and module calls as Chrome trace event JSON to `path`, atomically."
    us = lambda t: (t - self.start) * 1e6
    ev = [dict(name=e.name, cat=e.phase, ph='X', ts=us(e.start), dur=us(e.end) - us(e.start),
               pid=0, tid=0, args=dict(flops=e.flops, bytes=e.nbytes, module=e.module))
          for e in self.events]
    ev += [dict(name=n, cat='module', ph='X', ts=us(s), dur=us(t) - us(s), pid=0, tid=0, args={})
           for n, s, t in self.spans]
    ev.sort(key=lambda d: (d['ts'], -d['dur']))
    with atomic_write(path, 'w') as f: json.dump(dict(traceEvents=ev, displayTimeUnit='ms'), f)

# %% [markdown]
# A first profile: one training step of a small MLP on the digits, with SGD. The test checks what
# the table claims: one forward event per recorded op and one backward event per gradient rule
# applied. The times are those of a single step on a shared machine, where one op may also carry a
# pause in which another program ran; the section on profiling a training step deals with that.

# %%
X, y, _, _ = load_digits(flatten=True)                                  # (1438, 64) in [0, 1]
manual_seed(0)
mlp = Sequential(Linear(64, 128), ReLU(), Linear(128, 64), ReLU(), Linear(64, 10))
opt = SGD(mlp.parameters(), lr=0.1)
xb, yb = Tensor(X[:64]), y[:64]

def train_step(model, opt, loss_fn, prof=None):
    "Zero the gradients, forward, backward, step; the step inside `prof.region` when profiling."
    opt.zero_grad()
    loss = loss_fn()
    loss.backward()
    if prof is None: opt.step()
    else:
        with prof.region('optimizer.step'): opt.step()
    return loss

# %%
train_step(mlp, opt, lambda: cross_entropy(mlp(xb), yb))                  # warm-up
with Profiler() as prof: train_step(mlp, opt, lambda: cross_entropy(mlp(xb), yb), prof)
rows = aggregate(prof.events)
test_eq(rows['matmul'].calls, 3)
test_eq(rows['matmul (backward)'].calls, 3)
test_eq(rows['matmul'].flops, 2 * 64 * (64 * 128 + 128 * 64 + 64 * 10))
test_eq(rows['[optimizer.step]'].calls, 1)
test_eq(Tensor._from_op is autograd._record, True)                        # detached on exit
print(prof.table())

# %%
path = os.path.join(tempfile.mkdtemp(), 'mlp_step.json')
prof.export_chrome_trace(path)
trace = json.load(open(path))['traceEvents']
test_eq(len(trace), len(prof.events) + len(prof.spans))
test_eq(sorted({e['cat'] for e in trace}), ['backward', 'forward', 'module', 'region'])
test_fail(lambda: prof.table(sort_by='speed'), contains="sort_by must be one of")

# %% [markdown]
# The profiler is not free: every op now runs through a Python wrapper that reads the clock and
# applies a FLOP rule. The table leaves that time out, but the wall clock does not. The cost,
# measured on the same MLP step with and without the profiler, alternated by `compare`:

# %%
mlp_loss = lambda: cross_entropy(mlp(xb), yb)
def profiled_step():
    with Profiler() as p: train_step(mlp, opt, mlp_loss, p)
c = compare({'plain': lambda: train_step(mlp, opt, mlp_loss), 'profiled': profiled_step}, rounds=7)
print(c.table(baseline='plain'))
print(f"about {fmt_seconds((c['profiled'].median - c['plain'].median) / len(prof.events))} "
      f"per recorded event")

# %% [markdown]
# ## Profiling a training step
#
# The three models of this module, small enough to keep the notebook fast: an MLP and a LeNet-style
# CNN (two 3x3 convolutions with BatchNorm, ReLU and max-pooling, then two linear layers) on batches
# of 64 digits, and a two-layer TinyGPT (4 heads, width 64, context 64) on batches of 8 random
# windows of token ids, each trained with Adam.

# %%
Xi, yi, _, _ = load_digits()                                              # (1438, 1, 8, 8) images

def make_mlp(): return Sequential(Linear(64, 128), ReLU(), Linear(128, 64), ReLU(), Linear(64, 10))

def make_cnn():
    return Sequential(Conv2d(1, 16, 3, padding=1), BatchNorm2d(16), ReLU(), MaxPool2d(2),
                      Conv2d(16, 32, 3, padding=1), BatchNorm2d(32), ReLU(), MaxPool2d(2),
                      Flatten(), Linear(128, 64), ReLU(), Linear(64, 10))                 # (N, 10)

def make_gpt(): return GPT(vocab_size=65, block_size=64, n_layer=2, n_head=4, n_embd=64)

manual_seed(0)
models = {'MLP': make_mlp(), 'CNN': make_cnn(), 'TinyGPT': make_gpt()}
ids = np.random.default_rng(0).integers(0, 65, (8, 65))                   # (8, 65) token ids

def loss_of(name, model, n=64):
    "Forward and loss of `model` on its batch (n examples; TinyGPT: n // 8 windows)."
    if name == 'MLP': return lambda: cross_entropy(model(Tensor(X[:n])), y[:n])
    if name == 'CNN': return lambda: cross_entropy(model(Tensor(Xi[:n])), yi[:n])
    return lambda: model(ids[:n // 8, :-1], ids[:n // 8, 1:])[1]

# %% [markdown]
# How often does a program lose the processor on this machine? Timing 300 calls of a product that
# takes a fraction of a millisecond shows it: most calls take the same time, and a few take
# milliseconds longer, when the operating system ran another program in between.

# %%
pa, pb = np.ones((144, 32), np.float32), np.ones((32, 1024), np.float32)
calls = []
for _ in range(300):
    with Timer() as t: pa @ pb
    calls.append(t.elapsed)
calls = np.array(calls)
late = calls > np.median(calls) + 2e-3
print(f"median call {fmt_seconds(float(np.median(calls)))}; {late.mean():.1%} of calls were more "
      f"than 2 ms late, by up to {fmt_seconds(float(calls.max()))}; one interruption per "
      f"{fmt_seconds(float(calls.sum() / max(late.sum(), 1)))} of computing")

# %% [markdown]
# A training step of a few milliseconds is then often interrupted, and the whole interruption lands
# in the op that was running. So each model's step is profiled several times, each step marked with
# `prof.step()`, and the tables show, for each row, its fastest step
# (`stat='min'`): load only ever adds time. (The median, the default, is the better summary on a
# quiet machine.) Under each table, the share of the step by kind of op: the MAC ops (matmul,
# conv2d, attention, forward and backward), the other ops that compute (element-wise,
# normalization, losses, pooling), pure data movement, and the optimizer step.

# %%
_KINDS = {'MAC ops': _MAC_OPS, 'data movement': _MOVEMENT}
STAT = 'min'

def shares(prof) -> dict:
    "Fraction of the (per-step) profiled time per kind of op."
    out = dict.fromkeys(['MAC ops', 'other compute', 'data movement', 'optimizer step'], 0.0)
    for key, s in prof.rows(STAT).items():
        op = key.removesuffix(' (backward)')
        kind = ('optimizer step' if key.startswith('[') else
                next((k for k, ops in _KINDS.items() if op in ops), 'other compute'))
        out[kind] += s.seconds / prof.step_time(STAT)
    return out

profiles = {}
for name, model in models.items():
    opt, loss_fn = Adam(model.parameters(), lr=1e-3), loss_of(name, model)
    train_step(model, opt, loss_fn)                                          # warm-up
    with Profiler() as prof:
        for _ in range(5 if name == 'TinyGPT' else 9):
            train_step(model, opt, loss_fn, prof); prof.step()
    profiles[name] = prof
    print(f"== {name}\n{prof.table(top=8, stat=STAT)}")
    print("  " + ", ".join(f"{k} {v:.0%}" for k, v in shares(prof).items()) + "\n")

# %% [markdown]
# What dominates each step, read from the tables above (the figures are those printed in this run of
# the notebook, on a shared machine). The cell under this text lists each step's three largest rows.
#
# - **MLP**: a step lasts well under a millisecond, and the matrix products are a minority of it.
#   The optimizer step (Adam's update, in Python over 6 parameters), the loss, the transposes of the
#   weights (`permute`) and the untracked Python between ops take most of the time. At this size the
#   framework's overhead per op, not arithmetic, sets the speed.
# - **CNN**: the convolutions, forward and backward, take the largest share of the step. Their
#   FLOP rate is far below the matmuls' in the MLP: each convolution's GEMM has an inner dimension
#   of only $C K_H K_W$ (9 for the first layer), and the copies of im2col and col2im come with it.
#   The element-wise ops (BatchNorm, ReLU, pooling) share most of the rest.
# - **TinyGPT**: the matrix products and attention share the step with GELU and LayerNorm. GELU once
#   had the largest row of all, ahead of every matrix product, at a FLOP rate hundreds of times
#   below theirs; this profiler is how it was found.
#
# GPT-2's GELU is the tanh form $\tfrac12 x (1 + \tanh(\sqrt{2/\pi}(x + 0.044715 x^3)))$, and the
# activation module used to compute $x^3$ as `x**3`. NumPy has fast paths for a few exponents
# (such as 2, 0.5 and -1) but computes `x**3` with the general power function, element by element;
# `x * x * x` is two multiplications. The two, on the shape of TinyGPT's hidden activations,
# alternated by `compare`:

# %%
for name, prof in profiles.items():
    top = sorted(prof.rows('min').items(), key=lambda kv: -kv[1].seconds)[:3]
    print(f"{name:8} largest rows: " + ", ".join(f"{k} {v.seconds * 1e3:.2f} ms" for k, v in top))

# %%
h = np.random.default_rng(0).standard_normal((8, 64, 256)).astype(np.float32)   # (B, T, 4C)
c = compare({'x**3': lambda: h**3, 'x*x*x': lambda: h * h * h}, rounds=5)
test_close(h**3, h * h * h, eps=1e-4)
print(c.table(baseline='x*x*x'))

# %% [markdown]
# A profiler finds such a thing in one run; reading the code would not have suggested that the
# activation function costs more than the matrix products. The fix, `x * x * x`, is now in the
# activation module, and the acceleration module measures the step before and after.
#
# The trace of TinyGPT's step can be opened in Perfetto (ui.perfetto.dev: "Open trace file"): module
# calls nest as they ran, with the ops inside them.

# %%
trace_path = os.path.join(tempfile.mkdtemp(), 'tinygpt_step.json')
profiles['TinyGPT'].export_chrome_trace(trace_path)
print(f"{trace_path}: {os.path.getsize(trace_path):,} bytes, "
      f"{len(json.load(open(trace_path))['traceEvents'])} events")

# %% [markdown]
# ## Memory
#
# Python's `tracemalloc` traces every allocation made through Python's allocators, and NumPy reports
# the data buffers of its arrays to it as well, so the bytes of every array created inside a block
# are seen. `MemoryProfiler` records, for the block inside it, the **peak** (the most bytes
# allocated at one moment, above what was allocated at the start) and the **retained** bytes (still
# allocated at the end). Tracing slows Python's allocations down, so memory and time are never
# measured in the same run. Profilers nest: an inner one resets tracemalloc's peak, and the outer
# one keeps the peak seen so far.

# %%
#| export
class MemoryProfiler:
    "Context manager: peak and retained bytes allocated inside the block, NumPy arrays included."
    _active = []

    def __enter__(self):
        self._started = not tracemalloc.is_tracing()
        if self._started: tracemalloc.start()
        now, peak = tracemalloc.get_traced_memory()
        for p in MemoryProfiler._active: p._top = max(p._top, peak)
        tracemalloc.reset_peak()
        self._base = self._top = now
        MemoryProfiler._active.append(self)
        return self

    def __exit__(self, *exc):
        now, peak = tracemalloc.get_traced_memory()
        MemoryProfiler._active.remove(self)
        for p in (self, *MemoryProfiler._active): p._top = max(p._top, peak)
        self.peak, self.retained = self._top - self._base, now - self._base
        if self._started: tracemalloc.stop()
        return False

# %% [markdown]
# A 1 MB array created and dropped inside the block raises the peak by 1 MB and retains nothing; one
# that is kept is retained.

# %%
with MemoryProfiler() as outer:
    with MemoryProfiler() as mp:
        tmp = np.ones(2**18, np.float32); del tmp                          # 1 MiB, freed
        kept = np.ones(2**17, np.float32)                                  # 0.5 MiB, kept
    also = np.ones(2**16, np.float32)
assert 2**20 <= mp.peak < 2**20 + 2**19 + 2**14                     # both arrays at once at most
assert 2**19 <= mp.retained < 2**19 + 2**14                         # and Python's bookkeeping
assert outer.peak >= mp.peak and outer.retained >= 2**19 + 2**18
test_eq(tracemalloc.is_tracing(), False)
print(f"peak {mp.peak:,} B, retained {mp.retained:,} B; outer peak {outer.peak:,} B")

# %% [markdown]
# ### Where a training step's memory goes
#
# A training step holds four kinds of arrays: the **parameters**; their **gradients**, one array the
# size of each parameter; the **optimizer state** (SGD with momentum keeps one buffer per parameter,
# Adam two: the first and second moment estimates); and the **activations**, the arrays the forward
# pass saves in the graph for the backward pass. The first three follow from the parameter count.
# Write that arithmetic.

# %%
#| export
def predicted_memory(params,           # the model's parameters (Tensors)
                     state_arrays: int,  # arrays of a parameter's size kept by the optimizer
                    ) -> dict:
    "Bytes: {'parameters', 'gradients' (trained ones), 'optimizer_state' (state_arrays each)}."
    ### BEGIN SOLUTION
    params = list(params)
    trained = sum(p.data.nbytes for p in params if p.requires_grad)
    return dict(parameters=sum(p.data.nbytes for p in params), gradients=trained,
                optimizer_state=state_arrays * trained)
    ### END SOLUTION

# %%
lin = Linear(10, 4)
test_eq(predicted_memory(lin.parameters(), 2),
        dict(parameters=44 * 4, gradients=44 * 4, optimizer_state=88 * 4))  # 44 float32 values
lin.bias.requires_grad = False
test_eq(predicted_memory(lin.parameters(), 1),
        dict(parameters=44 * 4, gradients=40 * 4, optimizer_state=40 * 4))  # the bias is frozen

# %% [markdown]
# `step_memory` runs one training step and measures the four parts: the retained bytes of the
# forward pass and loss are the activations the graph keeps; after the step, the gradients and the
# optimizer's state arrays are counted where they are. It also returns the peak of the whole step.

# %%
#| export
@dataclass
class StepMemory:
    "Bytes of one training step by kind, and the step's peak above what was allocated before it."
    parameters: int
    gradients: int
    optimizer_state: int
    activations: int
    peak: int

    def table(self) -> str:
        "One line per kind, in MiB."
        return "\n".join(f"{k:<16} {v / 2**20:9.3f} MiB" for k, v in vars(self).items())

def optimizer_state_bytes(optimizer) -> int:
    "Bytes of the arrays an optimizer keeps in its `state`."
    return sum(v.nbytes for st in optimizer.state.values() for v in st.values()
               if isinstance(v, np.ndarray))

def step_memory(model: Module, optimizer, loss_fn) -> StepMemory:
    "Run zero_grad, `loss_fn()` (forward and loss), backward and the optimizer step; measure bytes."
    optimizer.zero_grad()
    with MemoryProfiler() as step:
        with MemoryProfiler() as fwd: loss = loss_fn()
        loss.backward()
        optimizer.step()
    params = list(model.parameters())
    return StepMemory(sum(p.data.nbytes for p in params),
                      sum(p.grad.nbytes for p in params if p.grad is not None),
                      optimizer_state_bytes(optimizer), fwd.retained, step.peak)

# %% [markdown]
# For each model, the measured breakdown next to the prediction from its parameters. The first three
# parts agree to the byte; the activations are only measured.

# %%
for name, model in models.items():
    opt = Adam(model.parameters(), lr=1e-3)
    mem = step_memory(model, opt, loss_of(name, model))
    pred = predicted_memory(model.parameters(), 2)
    test_eq({k: getattr(mem, k) for k in pred}, pred)
    print(f"{name}: {sum(p.size for p in model.parameters()):,} parameters\n{mem.table()}\n")

# %% [markdown]
# The activations grow with the batch, the parameters do not: for the CNN, the bytes the graph keeps
# after the forward pass, for batches from 16 to 512 images. Per image, the saved arrays can be
# counted by hand from the layers' shapes and the gradient rules' contexts (float32, 4 bytes each):
# the first convolution keeps its output (16, 8, 8) and its im2col columns (9, 64); BatchNorm keeps
# $\hat x$ and its output, ReLU its output, three arrays of (16, 8, 8); pooling its output
# (16, 4, 4); the second block likewise with (32, 4, 4), columns (144, 16) and a pooled (32, 2, 2);
# the first linear layer its product, bias sum and ReLU (3 x 64), the last its product and sum
# (2 x 10).

# %%
per_image = 4 * (16*8*8 + 9*64 + 3 * 16*8*8 + 16*4*4          # block 1
                 + 32*4*4 + 144*16 + 3 * 32*4*4 + 32*2*2      # block 2
                 + 3 * 64 + 2 * 10)                           # classifier
cnn = models['CNN']
batches = [16, 32, 64, 128, 256, 512]
acts = []
for n in batches:
    with MemoryProfiler() as mp: loss = loss_of('CNN', cnn, n)()
    acts.append(mp.retained); del loss
slope, intercept = np.polyfit(batches, acts, 1)
test_close(slope, per_image, eps=1e-3 * per_image)       # per-call overheads are not per image
print(f"activations: {acts[0] / 2**20:.2f} MiB at batch {batches[0]}, "
      f"{acts[-1] / 2**20:.2f} MiB at batch {batches[-1]}; measured {slope:,.0f} bytes per image, "
      f"counted by hand {per_image:,}; parameters "
      f"{sum(p.data.nbytes for p in cnn.parameters()) / 2**20:.3f} MiB at any batch")
plt.figure(figsize=(5, 3))
plt.plot(batches, np.array(acts) / 2**20, 'o-', label='activations (measured)')
plt.axhline(sum(p.data.nbytes for p in cnn.parameters()) / 2**20, color='gray', ls='--',
            label='parameters')
plt.xlabel('batch size'); plt.ylabel('MiB'); plt.title('CNN forward pass: memory kept for backward')
plt.legend(); plt.tight_layout(); plt.show()

# %% [markdown]
# ## The roofline
#
# An op can be slow for two reasons: the processor cannot do its arithmetic faster (it is
# **compute-bound**), or memory cannot deliver its operands faster (it is **memory-bound**).
# Williams, Waterman and Patterson's roofline model tells them apart with two measured figures of
# the machine: its peak arithmetic rate $P$ (FLOP/s) and its memory bandwidth $\beta$ (bytes/s). An
# op with arithmetic intensity $I$ (FLOPs per byte of memory traffic) can reach at most $\min(P,
# I\beta)$; it is memory-bound when $I < P/\beta$, the ridge point, and compute-bound above it.
#
# `gemm_gflops` measures $P$ as the float32 rate of NumPy's matrix product on n x n matrices ($2n^3$
# FLOPs per product) and `memory_bandwidth` measures $\beta$ with a copy of a large array (each byte
# read once and written once). Both use the timing protocol, with `threads` BLAS threads, and return
# the rate of the fastest sample: a ceiling is the best the machine did, and load from other
# programs only ever lowers a rate. The GEMM samples are kept short (1 ms), since on this shared
# machine a longer sample is almost never undisturbed.

# %%
#| export
def gemm_gflops(n: int = 256,     # matrix size
                threads: int = 1, # BLAS threads
                repeats: int = 21,
                min_time: float = 0.001,  # seconds per sample: short, so some run undisturbed
               ) -> float:
    "Measured float32 GEMM rate, GFLOP/s: 2 n^3 FLOPs per n x n product, from the fastest sample."
    rng = np.random.default_rng(0)
    a, b = (rng.standard_normal((n, n), dtype=np.float32) for _ in range(2))
    out = np.empty((n, n), np.float32)
    with blas_threads(threads):
        m = measure(np.matmul, a, b, out=out, repeats=repeats, min_time=min_time, max_spread=np.inf)
    return 2 * n**3 / m.min / 1e9

def memory_bandwidth(nbytes: int = 64 * 2**20,  # bytes of the array copied
                     repeats: int = 11,
                    ) -> float:
    "Measured memory bandwidth, GB/s, fastest sample: a copy of `nbytes` moves 2 * nbytes."
    src = np.ones(nbytes // 4, np.float32)
    dst = np.empty_like(src)
    m = measure(np.copyto, dst, src, repeats=repeats, min_time=0.0, max_spread=np.inf)
    return 2 * src.nbytes / m.min / 1e9

# %% [markdown]
# The GEMM rate depends on the size: products whose matrices fit in the processor's caches run
# fastest. The peak is the best rate over a few sizes. Likewise a copy that fits in cache runs
# faster than one that must go to main memory (DRAM); the roofline below uses the DRAM figure, from
# a 64 MiB copy.

# %%
rates = {n: gemm_gflops(n=n, threads=1) for n in (64, 128, 256, 384)}
peak = max(rates.values())
bandwidth, in_cache = memory_bandwidth(64 * 2**20), memory_bandwidth(4 * 2**20)
print("float32 GEMM, 1 BLAS thread: " + ", ".join(f"n={n}: {r:.1f}" for n, r in rates.items())
      + f" GFLOP/s; peak {peak:.1f}")
print(f"copy bandwidth: {bandwidth:.1f} GB/s for 64 MiB (DRAM), {in_cache:.1f} GB/s for 4 MiB; "
      f"ridge point {peak / bandwidth:.1f} FLOP/byte")

# %% [markdown]
# Write the two formulas of the model: the attainable rate at an intensity, and the classification
# of an op from its FLOPs and bytes.

# %%
#| export
def attainable_gflops(intensity: float,  # FLOPs per byte
                      peak_gflops: float,  # the machine's arithmetic peak, GFLOP/s
                      bandwidth: float,    # the machine's memory bandwidth, GB/s
                     ) -> float:
    "The roofline: the most GFLOP/s an op of this intensity can reach, min(peak, intensity * bw)."
    ### BEGIN SOLUTION
    return min(peak_gflops, intensity * bandwidth)
    ### END SOLUTION

def roofline_bound(flops: float,        # FLOPs the op performs
                   nbytes: float,       # bytes it moves to and from memory
                   peak_gflops: float,  # GFLOP/s
                   bandwidth: float,    # GB/s
                  ) -> str:
    "'compute' if flops / nbytes is at least the ridge point peak / bandwidth, else 'memory'."
    if not (nbytes > 0 and peak_gflops > 0 and bandwidth > 0):
        raise ValueError(f"roofline_bound: nbytes, peak_gflops and bandwidth must be positive, got "
                         f"{nbytes=}, {peak_gflops=}, {bandwidth=}")
    ### BEGIN SOLUTION
    return 'compute' if flops / nbytes >= peak_gflops / bandwidth else 'memory'
    ### END SOLUTION

# %%
test_eq(attainable_gflops(2.0, 100.0, 10.0), 20.0)                        # below the ridge at 10
test_eq(attainable_gflops(50.0, 100.0, 10.0), 100.0)
n = 512                                                                    # a float32 n x n GEMM
test_eq(roofline_bound(2 * n**3, 3 * 4 * n * n, 100.0, 10.0), 'compute')  # 85 FLOP/B
test_eq(roofline_bound(n * n, 3 * 4 * n * n, 100.0, 10.0), 'memory')      # an add: 1/12 FLOP/B
test_eq(roofline_bound(100, 10, 100.0, 10.0), 'compute')                  # exactly at the ridge
test_fail(lambda: roofline_bound(1, 0, 100.0, 10.0), contains="nbytes=0")

# %% [markdown]
# Every op of the three profiled steps that computes, on the roofline: one point per row of the
# tables (op and phase, per model) at its intensity (FLOPs over the least bytes it must move) and
# its achieved rate. A forward op's time includes the Python before it, so forward points sit lower
# than the op's own work would put them.

# %%
fig, ax = plt.subplots(figsize=(7, 4.5))
xs = np.logspace(-2, 3, 200)
for bw, style, label in ((bandwidth, 'k-', 'roof (DRAM)'), (in_cache, 'k:', 'roof (4 MiB copy)')):
    ax.plot(xs, [attainable_gflops(x, peak, bw) for x in xs], style, lw=1.2, label=label)
for (name, prof), marker in zip(profiles.items(), 'os^'):
    rows = {k: s for k, s in prof.rows(STAT).items() if s.flops > 0}
    ax.scatter([s.intensity for s in rows.values()], [s.gflops for s in rows.values()],
               marker=marker, label=name, alpha=0.7)
    for k, s in sorted(rows.items(), key=lambda kv: -kv[1].seconds)[:2]:
        ax.annotate(k, (s.intensity, s.gflops), fontsize=7)
ax.set_xscale('log'); ax.set_yscale('log')
ax.set_xlabel('arithmetic intensity (FLOP/byte)'); ax.set_ylabel('achieved GFLOP/s')
ax.set_title('Ops of one training step on the roofline (1 BLAS thread)'); ax.legend(fontsize=8)
plt.tight_layout(); plt.show()

# %% [markdown]
# The classification against the DRAM roof and the fraction of the attainable rate each op reached,
# for the rows that take the most time in each model. Two cautions in reading it. The bytes are the
# least traffic an op must cause; conv2d moves more (its im2col columns), so its real intensity is
# lower than the one plotted. And the arrays of these small models fit in the processor's caches,
# whose bandwidth (the dotted roof) is several times DRAM's: an op classed memory-bound against DRAM
# may run above the DRAM roof. One roof per level of the memory hierarchy (a hierarchical roofline)
# resolves that; the classification function takes whichever bandwidth applies.

# %%
for name, prof in profiles.items():
    rows = sorted(prof.rows(STAT).items(), key=lambda kv: -kv[1].seconds)
    for k, s in [kv for kv in rows if kv[1].flops > 0][:3]:
        roof = attainable_gflops(s.intensity, peak, bandwidth)
        print(f"{name:8} {k:34} {roofline_bound(s.flops, s.nbytes, peak, bandwidth):>7}-bound: "
              f"{s.intensity:6.2f} FLOP/B, {s.gflops:7.2f} of {roof:6.1f} GFLOP/s attainable "
              f"({s.gflops / roof:.1%})")
