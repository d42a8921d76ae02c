# %%
#| default_exp optimization.acceleration

# %% [markdown]
# # Acceleration
#
# > Where a NumPy framework's time goes, measured, and the changes that make it faster.

# %% [markdown]
# The earlier modules made every op correct first. This one asks how fast they are and why, and
# answers with measurements on this machine, each taken with the course's timing protocol
# (`measure`, `compare`, `blas_threads` from `tinytorch.utils.timing`): warm-up, several samples,
# medians, candidates alternating. Unless a cell says otherwise, NumPy's BLAS runs on **one thread**
# (`with blas_threads(1):`), so the numbers describe one core. The machine is shared with other work
# while these cells run, so every figure carries noise of tens of percent; the ratios come from
# candidates alternating in the same rounds, which is the most a shared machine allows.
#
# The sections:
#
# 1. **The ladder**: a matrix product as three Python loops, then with the inner loop as a dot
#    product, then as one broadcast expression, then as BLAS `@`; the rate of each in GFLOP/s
#    against the machine's GEMM peak.
# 2. **Convolution**: the seven loops of a direct convolution against `conv2d` (im2col and one
#    GEMM).
# 3. **Fusion and temporaries**: the same computation written as a chain of NumPy expressions and in
#    place in one buffer; time, peak temporary memory, and the page faults that fresh temporaries
#    cost.
# 4. **Layout and precision**: strided against contiguous operands, float64, float32 and float16,
#    one thread against two.
# 5. **Amdahl's law** on a measured profile of a training step.
# 6. **The framework**: the changes these measurements led to in the TinyGPT and LeNet training
#    steps, with `benchmarks/bench_gpt.py` and `benchmarks/bench_lenet.py` comparing them with
#    PyTorch.
#
# Every exercise sits between `### BEGIN SOLUTION` and `### END SOLUTION`; the cells under it test
# it at once.

# %%
#| export
import math
import tracemalloc

import numpy as np

# %%
#| hide
import os
import resource

import matplotlib.pyplot as plt
from fastcore.test import test_eq, test_fail, test_close

from tinytorch.core.tensor import Tensor, manual_seed
from tinytorch.core.spatial import conv2d
from tinytorch.core.activations import gelu, Activation, ReLU
from tinytorch.core.autograd import grad_rule, unbroadcast, _grad_rules, keep_freed_memory
from tinytorch.core.optimizers import Adam, AdamW
from tinytorch.core.layers import Linear, Sequential
from tinytorch.core.losses import cross_entropy
from tinytorch.core.spatial import Conv2d, MaxPool2d, Flatten
from tinytorch.core.normalization import BatchNorm2d, Dropout, batch_norm
from tinytorch.models.transformer import GPT
from tinytorch.optimization.profiling import Profiler, aggregate
from tinytorch.utils.timing import measure, compare, blas_threads, machine_info, fmt_seconds

# %%
info = machine_info()
print({k: info[k] for k in ('processor', 'cores', 'numpy', 'blas')})

# %% [markdown]
# ## The ladder: one matrix product, four ways
#
# $C = AB$ with $A$ of shape $(n, k)$ and $B$ of shape $(k, m)$ costs $2nkm$ floating-point
# operations: $nkm$ multiplications and as many additions. The most direct program is three nested
# loops. Each step of the ladder below hands one more loop to compiled code:
#
# | step | Python runs | compiled code runs |
# |---|---|---|
# | `matmul_loops` | all $nkm$ multiply-adds, one bytecode round trip each | nothing |
# | `matmul_dot` | $nm$ iterations | a dot product of length $k$ per entry |
# | `matmul_broadcast` | one expression | an $(n, k, m)$ product array, then a sum over $k$ |
# | `a @ b` | one call | BLAS: blocked for the caches, vectorised, fused multiply-adds |
#
# First the three loops. Indexing a NumPy array from Python returns a NumPy scalar, and each `+=`
# creates a new one: every multiply-add is tens of bytecodes and two object allocations.

# %%
#| export
def _check_matmul(op: str, a: np.ndarray, b: np.ndarray):
    "Raise unless `a` (n, k) and `b` (k, m) are 2-D with matching inner sizes."
    if a.ndim != 2 or b.ndim != 2 or a.shape[1] != b.shape[0]:
        raise ValueError(f"{op}: expected (n, k) @ (k, m), got {a.shape} @ {b.shape}")

def matmul_loops(a: np.ndarray,  # (n, k)
                 b: np.ndarray,  # (k, m)
                ) -> np.ndarray:
    "a @ b by three Python loops over i, j and the inner index p: (n, m), the inputs' result dtype."
    _check_matmul('matmul_loops', a, b)
    (n, k), m = a.shape, b.shape[1]
    out = np.zeros((n, m), np.result_type(a, b))
    ### BEGIN SOLUTION
    for i in range(n):
        for j in range(m):
            s = 0.0
            for p in range(k): s += a[i, p] * b[p, j]
            out[i, j] = s
    ### END SOLUTION
    return out

# %%
A = np.array([[1., 2.], [3., 4.], [5., 6.]]); B = np.array([[1., 0., 2.], [0., 1., 3.]])
test_eq(matmul_loops(A, B), [[1., 2., 8.], [3., 4., 18.], [5., 6., 28.]])
test_eq(matmul_loops(A, B), A @ B)
test_fail(lambda: matmul_loops(A, A), contains="expected (n, k) @ (k, m), got (3, 2) @ (3, 2)")

# %% [markdown]
# The second step keeps the two outer loops and lets NumPy do each inner product: entry $(i, j)$ is
# the dot product of row $i$ of $A$ with column $j$ of $B$.

# %%
#| export
def matmul_dot(a: np.ndarray,  # (n, k)
               b: np.ndarray,  # (k, m)
              ) -> np.ndarray:
    "a @ b by two Python loops over i and j, entry (i, j) = np.dot(a[i], b[:, j]): (n, m)."
    _check_matmul('matmul_dot', a, b)
    (n, k), m = a.shape, b.shape[1]
    out = np.zeros((n, m), np.result_type(a, b))
    ### BEGIN SOLUTION
    for i in range(n):
        for j in range(m): out[i, j] = np.dot(a[i], b[:, j])
    ### END SOLUTION
    return out

# %%
test_eq(matmul_dot(A, B), A @ B)
test_fail(lambda: matmul_dot(A, A), contains="matmul_dot: expected")

# %% [markdown]
# The third step has no Python loop: `a[:, :, None] * b[None, :, :]` broadcasts to every product
# $a_{ip} b_{pj}$ at once, an $(n, k, m)$ array, and a sum over the middle axis finishes the
# product. It is one line, and it pays for it in memory: $nkm$ elements written and read back, where
# BLAS keeps the partial sums in registers.

# %%
#| export
def matmul_broadcast(a: np.ndarray,  # (n, k)
                     b: np.ndarray,  # (k, m)
                    ) -> np.ndarray:
    "a @ b as one broadcast product of shape (n, k, m) summed over its middle axis: (n, m)."
    _check_matmul('matmul_broadcast', a, b)
    ### BEGIN SOLUTION
    return (a[:, :, None] * b[None, :, :]).sum(axis=1)   # (n,k,1) * (1,k,m) -> (n,k,m) -> (n,m)
    ### END SOLUTION

# %%
test_close(matmul_broadcast(A, B), A @ B, eps=1e-12)
test_eq(matmul_broadcast(A, B).shape, (3, 3))
test_fail(lambda: matmul_broadcast(A, A), contains="matmul_broadcast: expected")

# %% [markdown]
# ### The measured ladder
#
# The size is chosen so the three loops take under a second: $n = k = m = 64$, float32, one BLAS
# thread. The slow steps get few samples (the loops one call per sample, three samples); each rate
# is $2nkm$ divided by the median time. The peak is the rate of a large GEMM,
# $(512, 512) @ (512, 512)$, from its fastest sample: the best this core did with NumPy's BLAS
# during the run.

# %%
N_LADDER = 64
rng = np.random.default_rng(0)
a64, b64 = (rng.standard_normal((N_LADDER, N_LADDER), dtype=np.float32) for _ in range(2))
big = rng.standard_normal((512, 512), dtype=np.float32)
with blas_threads(1):
    ladder = {'three loops': measure(matmul_loops, a64, b64, warmup=0, repeats=3, number=1),
              'dot product': measure(matmul_dot, a64, b64, warmup=1, repeats=3, number=1),
              'broadcast': measure(matmul_broadcast, a64, b64, repeats=5),
              'BLAS @': measure(np.matmul, a64, b64, repeats=5)}
    peak = 2 * 512**3 / measure(np.matmul, big, big, repeats=7).min / 1e9       # GFLOP/s
flops = 2 * N_LADDER**3
rates = {k: flops / m.median / 1e9 for k, m in ladder.items()}
print(f"({N_LADDER}, {N_LADDER}) @ ({N_LADDER}, {N_LADDER}) float32, 1 BLAS thread; "
      f"GEMM peak {peak:.1f} GFLOP/s (512 x 512 x 512)")
for k, m in ladder.items():
    print(f"{k:>12}: {fmt_seconds(m.median):>9}  {rates[k]:9.4f} GFLOP/s  "
          f"{rates[k] / peak:8.3%} of peak  "
          f"{ladder['three loops'].median / m.median:9.0f}x the loops")

# %% [markdown]
# Each step must still compute the same product: the loops accumulate in a different order than
# BLAS, so the results agree to float32 rounding, not bit for bit.

# %%
want = a64.astype(np.float64) @ b64.astype(np.float64)
for f in (matmul_loops, matmul_dot, matmul_broadcast, np.matmul):
    test_close(f(a64, b64), want, eps=1e-4 * np.abs(want).max())   # 64 float32 terms

# %%
fig, ax = plt.subplots(figsize=(7, 3))
ax.barh(list(rates)[::-1], list(rates.values())[::-1])
ax.axvline(peak, color='k', ls='--', label=f'GEMM peak {peak:.0f} GFLOP/s')
ax.set_xscale('log'); ax.set_xlabel('GFLOP/s (log scale)'); ax.legend(loc='lower right')
ax.set_title(f'({N_LADDER}, {N_LADDER}) @ ({N_LADDER}, {N_LADDER}) float32, one thread')
plt.tight_layout(); plt.show()

# %% [markdown]
# The original version of this course promised "2700x+ speedups" from this ladder. What it gives
# here, top to bottom, is printed below. It depends on the size: the loops' time grows as $n^3$ at a
# constant rate, while BLAS's rate grows with $n$ until the caches fill (a $64^3$ product is too
# small to reach the peak, the fixed cost of the call is a visible part of it). The figure is a
# property of this size on this machine, not a constant.

# %%
total = ladder['three loops'].median / ladder['BLAS @'].median
print(f"three loops -> BLAS at n = {N_LADDER}: {total:,.0f}x; the claim was 2700x+")
print(f"BLAS on the {N_LADDER}^3 product: {rates['BLAS @'] / peak:.0%} of the peak rate")

# %% [markdown]
# ## Convolution: seven loops against one GEMM
#
# A 2-D convolution (cross-correlation, as in PyTorch) of an input $(N, C, H, W)$ with a weight
# $(O, C, K_H, K_W)$ is, written out,
#
# $$y_{n,o,i,j} = b_o + \sum_{c,p,q} w_{o,c,p,q}\; x^{pad}_{n,\,c,\,i s_h + p,\,j s_w + q},$$
#
# seven loops: four over the output $(n, o, i, j)$ and three over the receptive field $(c, p, q)$.
# `conv2d` (`tinytorch.core.spatial`) does the same arithmetic as im2col, one copy of every
# receptive field into a column, and one GEMM. `conv2d_loops` is the direct form, for small sizes
# only; it is exported as the reference that the GEMM form is tested against.

# %%
#| export
def _pair(v) -> tuple: return (v, v) if isinstance(v, (int, np.integer)) else tuple(v)

def conv2d_loops(x: np.ndarray,       # (N, C, H, W)
                 weight: np.ndarray,  # (O, C, KH, KW)
                 bias=None,           # (O,) or None
                 stride=1,            # int or (sh, sw)
                 padding=0,           # int or (ph, pw): zeros on each side
                ) -> np.ndarray:
    "Direct convolution by seven Python loops (n, o, i, j, c, p, q): (N, O, OH, OW); small sizes."
    if x.ndim != 4 or weight.ndim != 4 or x.shape[1] != weight.shape[1]:
        raise ValueError(f"conv2d_loops: expected x (N, C, H, W) and weight (O, C, KH, KW), "
                         f"got {x.shape} and {weight.shape}")
    (N, C, H, W), (O, _, KH, KW) = x.shape, weight.shape
    (sh, sw), (ph, pw) = _pair(stride), _pair(padding)
    xp = np.pad(x, ((0, 0), (0, 0), (ph, ph), (pw, pw)))                  # (N, C, H + 2ph, W + 2pw)
    OH, OW = (H + 2 * ph - KH) // sh + 1, (W + 2 * pw - KW) // sw + 1
    out = np.zeros((N, O, OH, OW), np.result_type(x, weight))
    ### BEGIN SOLUTION
    for n in range(N):
        for o in range(O):
            for i in range(OH):
                for j in range(OW):
                    s = 0.0 if bias is None else bias[o]
                    for c in range(C):
                        for p in range(KH):
                            for q in range(KW):
                                s += weight[o, c, p, q] * xp[n, c, i * sh + p, j * sw + q]
                    out[n, o, i, j] = s
    ### END SOLUTION
    return out

# %% [markdown]
# A hand-checked case first: a 3x3 image of ones, a 2x2 kernel of ones, no padding: every output
# sums four ones. Then agreement with `conv2d` in float64 over strides and paddings, where the two
# orders of summation differ only by rounding.

# %%
ones33, ones22 = np.ones((1, 1, 3, 3)), np.ones((1, 1, 2, 2))
test_eq(conv2d_loops(ones33, ones22), np.full((1, 1, 2, 2), 4.))
row0 = conv2d_loops(ones33, ones22, bias=np.array([1.]), padding=1)[0, 0, 0]
test_eq(row0, [2., 3., 3., 2.])                       # corners see one 1, edges two, plus the bias
rng = np.random.default_rng(1)
for stride, padding in ((1, 0), (2, 1), ((1, 2), (2, 0))):
    xs, ws = rng.standard_normal((2, 3, 7, 6)), rng.standard_normal((4, 3, 3, 2))
    bs = rng.standard_normal(4)
    xT, wT, bT = (Tensor(v, dtype=np.float64) for v in (xs, ws, bs))
    want = conv2d(xT, wT, bT, stride, padding).numpy()
    test_close(conv2d_loops(xs, ws, bs, stride, padding), want, eps=1e-12)
test_fail(lambda: conv2d_loops(np.ones((1, 2, 3, 3)), np.ones((1, 1, 2, 2))),
          contains="conv2d_loops: expected")

# %% [markdown]
# The stated layer: input $(2, 4, 12, 12)$, 8 filters of $3 \times 3$, padding 1, float32, one BLAS
# thread: $2 N O\, OH\, OW\, C K_H K_W$ FLOPs, printed below. The loops get one sample: a second
# would double the notebook's time for a figure whose order of magnitude is the point.

# %%
xc = rng.standard_normal((2, 4, 12, 12), dtype=np.float32)
wc = rng.standard_normal((8, 4, 3, 3), dtype=np.float32)
bc = rng.standard_normal(8, dtype=np.float32)
xt, wt, bt = Tensor(xc), Tensor(wc), Tensor(bc)
with blas_threads(1):
    t_loops = measure(conv2d_loops, xc, wc, bc, 1, 1, warmup=0, repeats=1, number=1)
    t_gemm = measure(lambda: conv2d(xt, wt, bt, 1, 1), repeats=5)
conv_flops = 2 * 2 * 8 * 12 * 12 * 4 * 9
test_close(conv2d_loops(xc, wc, bc, 1, 1), conv2d(xt, wt, bt, 1, 1).numpy(), eps=1e-4)   # 36 terms
print(f"conv (2, 4, 12, 12) -> 8 filters 3x3, padding 1: {conv_flops:,} FLOPs; seven loops "
      f"{fmt_seconds(t_loops.median)} (one sample), im2col + GEMM {fmt_seconds(t_gemm.median)}: "
      f"{t_loops.median / t_gemm.median:,.0f}x")

# %% [markdown]
# ## Fusion and temporaries
#
# NumPy evaluates `0.5 * x * (1 + np.tanh(c * (x + 0.044715 * x**3)))` one operator at a time, and
# every operator allocates a new array for its result. For an array of a million float32 that is a
# 4 MiB temporary per operator: written once, read once, freed. Three costs follow:
#
# - **memory traffic**: each pass streams the whole array through the caches;
# - **peak memory**: several temporaries are alive at once;
# - **fresh pages**: when the allocator returns a large freed block to the operating system, the
#   next allocation of that size gets new pages, and the first write to each 4 KiB page is a page
#   fault that the kernel must serve (and zero). The framework now asks glibc's malloc to keep freed
#   memory for reuse (`keep_freed_memory`, called when `tinytorch.core.autograd` is imported); the
#   cell below switches back to glibc's initial settings for a moment to measure what a fault
#   costs.
#
# A *fused* form computes the same values in one buffer with `out=` arguments and in-place
# operators, so it allocates once. (NumPy already does a little of this by itself: when an operand
# is a temporary that nothing else refers to and is larger than 256 KiB, an operator may write its
# result into it, "temporary elision". It cannot do it for a temporary that is still needed, such as
# `x` in `x * (1 + t)`.) Compiled frameworks fuse such chains into one loop over the elements (one
# read and one write); in NumPy the passes remain, but the temporaries go.
#
# Two measurement helpers. `peak_alloc` runs a function under `tracemalloc`, which NumPy reports its
# array buffers to, and returns the largest number of bytes allocated at one time during the call,
# above what was allocated before it. `page_faults` counts the minor page faults of the process
# during calls.

# %%
#| export
def peak_alloc(fn, *args, **kwargs) -> int:
    "Bytes: the peak allocated during `fn(*args, **kwargs)`, above the prior level (tracemalloc)."
    started = not tracemalloc.is_tracing()
    if started: tracemalloc.start()
    try:
        tracemalloc.reset_peak()
        before = tracemalloc.get_traced_memory()[0]
        fn(*args, **kwargs)
        return tracemalloc.get_traced_memory()[1] - before
    finally:
        if started: tracemalloc.stop()

# %%
buf = np.ones(1000)
assert peak_alloc(lambda: None) < 1000
assert 8000 <= peak_alloc(lambda: buf * 2) < 16000             # one result of 1,000 float64
assert peak_alloc(lambda: (buf * 2, buf * 3)) >= 16000                  # two alive at once
assert peak_alloc(np.multiply, buf, 2, out=buf) < 1000         # in place: a few Python objects

# %%
def page_faults(fn, calls=10) -> float:
    "Minor page faults of this process per call of `fn`, over `calls` calls."
    f0 = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    for _ in range(calls): fn()
    return (resource.getrusage(resource.RUSAGE_SELF).ru_minflt - f0) / calls

# %% [markdown]
# What a page fault costs here: three new 4 MiB arrays alive at once, each written once, with
# glibc's initial thresholds (128 KiB: freed memory goes back to the operating system) and with
# the memory kept, against writing into three arrays that already exist.

# %%
def fresh_3x4mib():
    a = np.ones(2**20, np.float32); b = np.ones(2**20, np.float32); c = np.ones(2**20, np.float32)
def fresh_returned(): keep_freed_memory(128 * 2**10); fresh_3x4mib()
def fresh_kept(): keep_freed_memory(); fresh_3x4mib()
kept_arrays = [np.empty(2**20, np.float32) for _ in range(3)]
def existing_arrays():
    for k in kept_arrays: k.fill(1.0)
c_pf = compare({'new, memory returned': fresh_returned, 'new, memory kept': fresh_kept,
                'existing arrays': existing_arrays}, rounds=5)
pf_ret, pf_kept = page_faults(fresh_returned), page_faults(fresh_kept)
test_eq(keep_freed_memory(), True)                              # the framework's setting again
print(c_pf.table())
extra = c_pf['new, memory returned'].median - c_pf['existing arrays'].median   # seconds
print(f"page faults per call: memory returned {pf_ret:.0f}, kept {pf_kept:.0f}"
      + (f"; about {extra / pf_ret * 1e6:.1f} us per fault" if pf_ret >= 1 else ""))

# %% [markdown]
# ### GELU
#
# The tanh form of GELU as written in the formula, and fused: one array, every step in place. The
# composed form below also shows a second cost: `x**3` on float32 goes through the general power
# function, where `x * x * x` is two multiplications.

# %%
#| export
_SQRT_2_OVER_PI = math.sqrt(2 / math.pi)

def gelu_tanh_(x: np.ndarray,  # float array; overwritten with the result
              ) -> np.ndarray:
    "GELU, tanh form, in place: x/2 (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3))); returns `x`."
    t = x * x                                                             # the one temporary
    t *= 0.044715; t += 1; t *= x; t *= _SQRT_2_OVER_PI          # sqrt(2/pi) (x + 0.044715 x^3)
    np.tanh(t, out=t); t += 1
    x *= t; x *= 0.5
    return x

# %%
def gelu_composed(x): return 0.5 * x * (1 + np.tanh(_SQRT_2_OVER_PI * (x + 0.044715 * x**3)))
xg = np.random.default_rng(2).standard_normal((256, 1024), dtype=np.float32)
test_close(gelu_tanh_(xg.copy()), gelu_composed(xg), eps=1e-6)
test_close(gelu_tanh_(np.array([0., 1., -1.])), [0., 0.841192, -0.158808], eps=1e-6)
x1 = np.array([1.0]); test_eq(gelu_tanh_(x1) is x1, True)              # the input is the output

# %% [markdown]
# Measured on a (256, 1024) float32 array, the fused form on a fresh copy every call (so it starts
# from the same values), the copy included in its time:

# %%
def fused_gelu_call(x=xg): return gelu_tanh_(x.copy())
def composed_x_cubed(x=xg): return gelu_composed(x)
def composed_xxx(x=xg): return 0.5 * x * (1 + np.tanh(_SQRT_2_OVER_PI * (x + 0.044715 * x * x * x)))
gelu_forms = {'composed, x**3': composed_x_cubed, 'composed, x*x*x': composed_xxx,
              'fused (copy + in place)': fused_gelu_call}
c_gelu = compare(gelu_forms, rounds=5)
print(f"GELU (tanh) on {xg.shape} float32 ({xg.nbytes / 2**20:.0f} MiB):")
for k, f in gelu_forms.items():
    print(f"  {k:>24}: {fmt_seconds(c_gelu[k].median):>9}  "
          f"{c_gelu.ratio(k, 'fused (copy + in place)'):5.1f}x fused  "
          f"peak alloc {peak_alloc(f) / xg.nbytes:4.1f}x the array")

# %% [markdown]
# ### A bias and activation epilogue
#
# A linear layer followed by an activation, $\mathrm{act}(x W^T + b)$, composed, allocates the
# product, then the sum with the bias, then the activation's result. BLAS can write the product into
# a buffer we give it (`np.matmul(..., out=)`), and the bias and the activation can then run in
# place on that buffer: an *epilogue*, as GPU GEMM libraries call the element-wise work they fuse
# into the end of a matrix product. `linear_relu` does this for ReLU; the exercise `bias_gelu_` is
# the epilogue for GELU, on a product already computed.

# %%
#| export
def linear_relu(x: np.ndarray,       # (N, in_features)
                weight: np.ndarray,  # (out_features, in_features), `Linear`'s layout
                bias=None,           # (out_features,) or None
                out=None,            # (N, out_features) buffer to write into, or None for a new one
               ) -> np.ndarray:
    "relu(x @ weight.T + bias) in one output array: the product into `out`, bias and ReLU in place."
    if x.ndim != 2 or weight.ndim != 2 or x.shape[1] != weight.shape[1]:
        raise ValueError(f"linear_relu: expected x (N, in) and weight (out, in), "
                         f"got {x.shape} and {weight.shape}")
    out = np.matmul(x, weight.T, out=out)                                  # (N, out)
    if bias is not None: out += bias
    return np.maximum(out, 0, out=out)

# %%
#| export
def bias_gelu_(y: np.ndarray,     # (..., F) a product such as x @ W.T; overwritten
               bias: np.ndarray,  # (F,)
              ) -> np.ndarray:
    "GELU (tanh form) of y + bias, computed in place in `y` (one temporary at most); returns `y`."
    ### BEGIN SOLUTION
    y += bias
    return gelu_tanh_(y)
    ### END SOLUTION

# %%
rng = np.random.default_rng(3)
xl, wl, bl = (rng.standard_normal(s, dtype=np.float32) for s in ((2048, 128), (512, 128), (512,)))
test_close(linear_relu(xl, wl, bl), np.maximum(xl @ wl.T + bl, 0), eps=1e-5)
test_eq(linear_relu(np.array([[1., -2.]]), np.array([[1., 1.], [-1., 0.]]), np.array([0., 0.5])),
        [[0., 0.]])                                    # relu(-1), relu(-1 + 0.5)
test_fail(lambda: linear_relu(xl, wl.T), contains="expected x (N, in) and weight (out, in)")
yl = xl @ wl.T
test_close(bias_gelu_(yl.copy(), bl), gelu_composed(yl + bl), eps=1e-5)
test_eq(bias_gelu_(np.array([[-1., 0.]]), np.array([1., 0.])), [[0., 0.]])   # GELU(0) = 0

# %% [markdown]
# ### LayerNorm and softmax with cross-entropy
#
# LayerNorm composed: the mean, the centred values, their squares, the variance, the division, the
# scale and the shift, each a new array. Fused: one output array holds the centred values and is
# then scaled in place; the sum of squares comes from `np.einsum('ij,ij->i', xc, xc)`, which reduces
# without materialising the squares.
#
# Softmax followed by cross-entropy composed computes the probabilities $p = e^{z} / \sum e^{z}$ and
# then $-\log p_t$. Fused, the probabilities are never formed:
# $-\log p_t = \log \sum_j e^{z_j - m} + m - z_t$ with $m = \max_j z_j$, the one temporary holding
# $e^{z - m}$. It is also the stable form: $\log p_t$ of a tiny probability underflows to $-\infty$
# in the composed form.

# %%
#| export
def fused_layer_norm(x: np.ndarray,       # (R, D): normalise each row
                     weight=None,         # (D,) or None
                     bias=None,           # (D,) or None
                     eps: float = 1e-5,   # added to the variance
                    ) -> np.ndarray:
    "LayerNorm over the last axis of a 2-D array: one output array and no other (R, D) temporary."
    if x.ndim != 2:
        raise ValueError(f"fused_layer_norm: expected a 2-D array (R, D), got shape {x.shape}")
    out = x - x.mean(axis=1, keepdims=True)                       # (R, D) centred: the one array
    var = np.einsum('ij,ij->i', out, out)[:, None] / x.shape[1]   # (R, 1), squares never stored
    out *= 1 / np.sqrt(var + eps)
    if weight is not None: out *= weight
    if bias is not None: out += bias
    return out

def softmax_cross_entropy(logits: np.ndarray,  # (N, C) scores
                          target: np.ndarray,  # (N,) class ids
                         ) -> float:
    "Mean of -log softmax(logits)[n, target[n]], without forming the probabilities."
    if logits.ndim != 2 or target.shape != logits.shape[:1]:
        raise ValueError(f"softmax_cross_entropy: expected logits (N, C) and target (N,), "
                         f"got {logits.shape} and {target.shape}")
    m = logits.max(axis=1, keepdims=True)                                  # (N, 1)
    e = np.subtract(logits, m); np.exp(e, out=e)                  # (N, C), the one temporary
    lse = np.log(e.sum(axis=1)) + m[:, 0]                                 # (N,) log-sum-exp
    return float((lse - logits[np.arange(len(target)), target]).mean())

# %%
def layer_norm_composed(x, w, b, eps=1e-5):
    mu = x.mean(axis=1, keepdims=True)
    var = ((x - mu) ** 2).mean(axis=1, keepdims=True)
    return (x - mu) / np.sqrt(var + eps) * w + b

def cross_entropy_composed(z, t):
    p = np.exp(z - z.max(axis=1, keepdims=True)); p = p / p.sum(axis=1, keepdims=True)
    with np.errstate(divide='ignore'): return float(-np.log(p[np.arange(len(t)), t]).mean())

xn = rng.standard_normal((2048, 128), dtype=np.float32) * 3 + 1
wn, bn = rng.standard_normal(128, dtype=np.float32), rng.standard_normal(128, dtype=np.float32)
test_close(fused_layer_norm(xn, wn, bn), layer_norm_composed(xn, wn, bn), eps=1e-4)
test_close(fused_layer_norm(np.array([[1., 3.]])), [[-1., 1.]], eps=1e-5)     # mean 2, variance 1
test_fail(lambda: fused_layer_norm(xn[0]), contains="expected a 2-D array (R, D), got shape (128,)")
zc, tc = rng.standard_normal((2048, 65), dtype=np.float32), rng.integers(0, 65, 2048)
test_close(softmax_cross_entropy(zc, tc), cross_entropy_composed(zc, tc), eps=1e-5)
test_close(softmax_cross_entropy(np.zeros((3, 4)), np.array([0, 1, 3])), math.log(4), eps=1e-12)
far = np.array([[0., 200.]], np.float32), np.array([0])
print(f"a far-off target, logits (0, 200): fused {softmax_cross_entropy(*far):.1f}, "
      f"composed {cross_entropy_composed(*far)}")

# %% [markdown]
# ### Composed against fused, measured
#
# Each pair on the shapes of the TinyGPT training step (batch 32 of 64 tokens: 2,048 rows; width
# 128, MLP width 512, 65 classes), float32, one BLAS thread. The fused forms that overwrite their
# input get a fresh copy every call, and the copy is counted in their time and memory.

# %%
fusion_cases = {
    'GELU (2048, 512)': (lambda: composed_xxx(yl), lambda: gelu_tanh_(yl.copy())),
    'Linear + bias + ReLU (2048, 128) -> 512': (lambda: np.maximum(xl @ wl.T + bl, 0),
                                                lambda: linear_relu(xl, wl, bl)),
    'bias + GELU on (2048, 512)': (lambda: composed_xxx(yl + bl),
                                   lambda: bias_gelu_(yl.copy(), bl)),
    'LayerNorm (2048, 128)': (lambda: layer_norm_composed(xn, wn, bn),
                              lambda: fused_layer_norm(xn, wn, bn)),
    'softmax + cross-entropy (2048, 65)': (lambda: cross_entropy_composed(zc, tc),
                                           lambda: softmax_cross_entropy(zc, tc)),
}
fusion = {}
with blas_threads(1):
    for name, (composed, fused) in fusion_cases.items():
        c = compare({'composed': composed, 'fused': fused}, rounds=5)
        fusion[name] = dict(t_c=c['composed'].median, t_f=c['fused'].median,
                            ratio=c.ratio('composed', 'fused'),
                            m_c=peak_alloc(composed), m_f=peak_alloc(fused))
print(f"{'':38} {'composed':>9} {'fused':>9} {'speedup':>7}  {'peak alloc (MiB)':>17}")
for name, r in fusion.items():
    print(f"{name:38} {fmt_seconds(r['t_c']):>9} {fmt_seconds(r['t_f']):>9} {r['ratio']:6.2f}x  "
          f"{r['m_c'] / 2**20:7.2f} -> {r['m_f'] / 2**20:5.2f}")

# %% [markdown]
# Reading the table: the peak-allocation column is exact (tracemalloc counts every buffer NumPy
# allocates), the times carry the machine's noise. Where the composed form allocates several arrays
# of the full size, the fused one allocates one (or one plus the copy of its input). With freed
# memory kept by the allocator, what remains of the difference in time is memory traffic.

# %% [markdown]
# ## Layout and precision
#
# BLAS wants each matrix with one axis of unit stride. A transposed view (`b.T`) qualifies: BLAS
# reads it as the transpose of a contiguous matrix, for free. A view that skips elements
# (`wide[:, ::2]`) does not: NumPy copies it into a contiguous buffer first, one extra pass over
# the operand, which is small next to the $n^3$ work of the product once $n$ is in the hundreds.
# Float64 moves twice the bytes and its vector instructions hold half as many numbers as float32's.
# Float16 has no BLAS kernel in NumPy at all: a float16 product runs NumPy's own loop. Each row
# below is a (256, 256) @ (256, 256) product (float16 at 128 so the notebook stays short, its rate
# from its own FLOPs), one BLAS thread.

# %%
rng = np.random.default_rng(4)
a32, b32 = (rng.standard_normal((256, 256), dtype=np.float32) for _ in range(2))
wide = rng.standard_normal((256, 512), dtype=np.float32)
strided = wide[:, ::2]                                          # (256, 256), stride 2 elements
a16, b16 = a32[:128, :128].astype(np.float16), b32[:128, :128].astype(np.float16)
a64_, b64_ = a32.astype(np.float64), b32.astype(np.float64)
layout = {'float32 contiguous': (lambda: a32 @ b32, 256),
          'float32 @ transposed view': (lambda: a32 @ b32.T, 256),
          'float32 @ strided view': (lambda: a32 @ strided, 256),
          'float64 contiguous': (lambda: a64_ @ b64_, 256),
          'float16 (no BLAS), n = 128': (lambda: a16 @ b16, 128)}
with blas_threads(1):
    c_lay = compare({k: f for k, (f, _) in layout.items()}, rounds=5)
for k, (f, n) in layout.items():
    print(f"{k:>28}: {fmt_seconds(c_lay[k].median):>9}  "
          f"{2 * n**3 / c_lay[k].median / 1e9:7.2f} GFLOP/s")
r64 = c_lay.ratio('float64 contiguous', 'float32 contiguous')
print(f"float64 takes {r64:.2f}x the time of float32; the strided operand "
      f"{c_lay.ratio('float32 @ strided view', 'float32 contiguous'):.2f}x")
test_eq(strided.flags.c_contiguous, False)
a16_as32 = a16.astype(np.float32) @ b16.astype(np.float32)
test_close((a16 @ b16).astype(np.float32), a16_as32, eps=0.5)    # float16 rounding, 128 terms

# %% [markdown]
# Threads: the same float32 product at (512, 512), one BLAS thread against two. This machine has two
# cores shared with other jobs, so a second thread helps only when a core is free; the figure
# printed is what it gave during this run.

# %%
a512, b512 = (rng.standard_normal((512, 512), dtype=np.float32) for _ in range(2))
def gemm_1t():
    with blas_threads(1): a512 @ b512
def gemm_2t():
    with blas_threads(2): a512 @ b512
c_thr = compare({'1 thread': gemm_1t, '2 threads': gemm_2t}, rounds=5)
for k in ('1 thread', '2 threads'):
    print(f"{k:>9}: {fmt_seconds(c_thr[k].median):>9}  "
          f"{2 * 512**3 / c_thr[k].median / 1e9:6.1f} GFLOP/s")
print(f"two threads take {c_thr.ratio('2 threads', '1 thread'):.2f}x the time of one "
      f"(load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores)")

# %% [markdown]
# ## Amdahl's law
#
# If a part that takes the fraction $p$ of a program's time is made $s$ times faster and nothing
# else changes, the whole takes $(1 - p) + p/s$ of its old time, so the overall speedup is
#
# $$S(p, s) = \frac{1}{(1 - p) + p / s} \;\le\; \frac{1}{1 - p}.$$
#
# The bound on the right holds however large $s$ is: a part that is 10% of the time can never give
# more than 1.11x. Before optimising anything, measure its share.

# %%
#| export
def amdahl_speedup(p: float,  # fraction of the time spent in the part that is sped up, 0 <= p <= 1
                   s: float,  # speedup of that part, > 0 (math.inf: the part takes no time at all)
                  ) -> float:
    "Overall speedup 1 / ((1 - p) + p / s) when a part taking fraction p of the time is s x faster."
    if not 0 <= p <= 1: raise ValueError(f"amdahl_speedup: p must be a fraction in [0, 1], got {p}")
    if not s > 0: raise ValueError(f"amdahl_speedup: s must be positive, got {s}")
    ### BEGIN SOLUTION
    return 1 / ((1 - p) + p / s)
    ### END SOLUTION

# %%
test_close(amdahl_speedup(0.5, 2), 4 / 3)
test_eq(amdahl_speedup(0.0, 100), 1.0)
test_eq(amdahl_speedup(1.0, 8), 8.0)
test_close(amdahl_speedup(0.1, math.inf), 1 / 0.9)                   # the 1 / (1 - p) bound
test_fail(lambda: amdahl_speedup(1.5, 2), contains="p must be a fraction in [0, 1], got 1.5")
test_fail(lambda: amdahl_speedup(0.5, 0), contains="s must be positive, got 0")

# %% [markdown]
# ### A measured profile
#
# The training step of a small GPT (2 layers, 2 heads, width 64, 65 tokens, batch 16 of 32 tokens)
# with the GELU the framework used before this module: the formula as written, with `x**3`, in the
# forward pass and in the gradient rule. To put it back without editing the package, the cell below
# registers it as an op of its own, `gelu_x3`, with the old gradient rule, and swaps it into the
# model's MLPs.

# %%
@grad_rule('gelu_x3')
def _gelu_x3_grad(g, out, a):
    x, k = a.data, math.sqrt(2 / math.pi)
    t = np.tanh(k * (x + 0.044715 * x**3))
    d = 0.5 * (1 + t) + 0.5 * x * (1 - t * t) * k * (1 + 3 * 0.044715 * x * x)
    return ((g * d).astype(x.dtype),)

class GELUx3(Activation):
    "The tanh GELU as composed before: x**3 and one temporary per operator."
    def forward(self, x):
        d = x.data
        out = 0.5 * d * (1 + np.tanh(_SQRT_2_OVER_PI * (d + 0.044715 * d**3)))
        return Tensor._from_op(out, 'gelu_x3', (x,))

def small_gpt_step(old_gelu: bool):
    "A training step (forward, backward, AdamW) of a small GPT, with the old or the current GELU."
    manual_seed(0)
    m = GPT(65, 32, 2, 2, 64)
    if old_gelu:
        for blk in m.transformer.h.children(): blk.mlp.gelu = GELUx3()
    opt = AdamW(m.parameters(), lr=1e-3)
    r = np.random.default_rng(0)
    x, y = r.integers(0, 65, (16, 32)), r.integers(0, 65, (16, 32))
    def step():
        _, loss = m(x, y); opt.zero_grad(); loss.backward(); opt.step()
        return loss
    return step

step_old, step_new = small_gpt_step(True), small_gpt_step(False)
test_close(step_old().item(), step_new().item(), eps=1e-5)              # same model, same loss
xs = Tensor(np.random.default_rng(5).standard_normal((512, 256), dtype=np.float32))
test_close(GELUx3()(xs).numpy(), gelu(xs, 'tanh').numpy(), eps=1e-6)

# %% [markdown]
# The profile of the old step by `Profiler` (`tinytorch.optimization.profiling`), which times every
# op of the forward pass and every gradient rule of the backward pass: the share $p$ of the step
# spent in the old GELU is its two rows, `gelu_x3` and `gelu_x3 (backward)`.

# %%
with blas_threads(1):
    step_old()
    with Profiler() as prof:
        for _ in range(3): step_old()
print(prof.table(top=8))
rows = aggregate(prof.events)
p_gelu = (rows['gelu_x3'].seconds + rows['gelu_x3 (backward)'].seconds) / prof.seconds
print(f"old GELU (forward op + gradient rule): p = {p_gelu:.1%} of the profiled steps")

# %% [markdown]
# The part's own speedup $s$: the old GELU against the current `gelu`
# (`tinytorch.core.activations`), forward and backward on the MLP's activation shape, (16, 32, 256).
# Then the bound $S(p, s)$, and the step itself measured with each.

# %%
xg3 = Tensor(np.random.default_rng(6).standard_normal((16, 32, 256), dtype=np.float32),
             requires_grad=True)
gg3 = np.ones(xg3.shape, np.float32)
def gelu_old_fb(): GELUx3()(xg3).backward(gg3)
def gelu_new_fb(): gelu(xg3, 'tanh').backward(gg3)
with blas_threads(1):
    c_part = compare({'old': gelu_old_fb, 'new': gelu_new_fb}, rounds=5)
    c_step = compare({'old': step_old, 'new': step_new}, rounds=5)
s_gelu = c_part.ratio('old', 'new')
print(f"GELU forward + backward on {xg3.shape}: old {fmt_seconds(c_part['old'].median)}, "
      f"new {fmt_seconds(c_part['new'].median)}: s = {s_gelu:.1f}")
print(f"Amdahl: p = {p_gelu:.1%}, s = {s_gelu:.1f} -> the step can gain at most "
      f"{amdahl_speedup(p_gelu, s_gelu):.2f}x (and {amdahl_speedup(p_gelu, math.inf):.2f}x "
      f"if the GELU took no time at all)")
print(f"measured: step {fmt_seconds(c_step['old'].median)} -> {fmt_seconds(c_step['new'].median)}, "
      f"{c_step.ratio('old', 'new'):.2f}x")

# %% [markdown]
# The bound uses the share measured under the profiler, and the profiler's own bookkeeping per op
# makes the rest of the step (many small ops) look slower than it is, so $p$ comes out low and the
# bound tight; the share computed from the two timings without a profiler,
# $p = 2\,t_\text{GELU} / t_\text{step}$ (two blocks, one GELU each), is printed for comparison.
# Both bounds assume that the rest of the step is unchanged by the GELU's speedup; the cell checks
# the measured gain against that assumption.

# %%
p_timed = 2 * c_part['old'].median / c_step['old'].median
bound, gained = amdahl_speedup(min(p_timed, 1.0), s_gelu), c_step.ratio('old', 'new')
print(f"p from timings: {p_timed:.1%}; bound with it {bound:.2f}x; measured {gained:.2f}x: "
      + ("within the bound" if gained <= bound * 1.05
         else "above the bound: either the rest of the step changed too, or noise; see below"))

# %% [markdown]
# Amdahl's law assumes the rest of the program does not change. The cell below checks that
# assumption: the profiled time per step outside the GELU, and the page faults per step, with the
# old GELU and with the new. A GELU that leaves large freed temporaries behind can make its
# neighbours slower: the allocator hands the memory back to the operating system, and the next ops
# fault fresh pages in. A profile attributes that time to the op that spends it, not to the op that
# caused it.

# %%
with blas_threads(1):
    with Profiler() as prof_gpt:
        for _ in range(3): step_new()
rows_new = aggregate(prof_gpt.events)
rest_old = prof.seconds - rows['gelu_x3'].seconds - rows['gelu_x3 (backward)'].seconds
rest_new = prof_gpt.seconds - rows_new['gelu'].seconds - rows_new['gelu (backward)'].seconds
print(f"per step, outside the GELU: old {fmt_seconds(rest_old / 3)}, "
      f"new {fmt_seconds(rest_new / 3)}")
print(f"page faults per step: old {page_faults(step_old, 3):.0f}, "
      f"new {page_faults(step_new, 3):.0f}")

# %% [markdown]
# ## The framework's training steps
#
# The same method applied to the two training steps the course's milestones run: profile, find the
# largest costs that are not the arithmetic itself, remove them where they are made, and measure
# again. The profile of the small GPT's step as the framework now stands (taken above):

# %%
print(prof_gpt.table(top=10))

# %% [markdown]
# What the profiles of the full TinyGPT step (batch 32 of 64 tokens, 4 layers, width 128) showed,
# and what was changed in the notebooks that own the code:
#
# 1. **GELU** (`gelu` in `tinytorch.core.activations`, its rule in `tinytorch.core.autograd`):
#    float32 `x**3` and a temporary per operator, forward and backward. Now `x * x`, with the
#    forward pass in one array and the gradient rule in three, all updated in place. Measured above.
# 2. **The matmul gradient for `(..., n, k) @ (k, m)`**, the shape of every `Linear` on a (B, T, C)
#    input: the weight's gradient was a batch of B products $(k, n) @ (n, m)$ into a $(B, k, m)$
#    temporary, then summed over B. Now it is one GEMM, $A^T G$ with $A$ viewed as $(Bn, k)$, and
#    the input's gradient is one GEMM as well.
# 3. **Freed memory is kept** (`keep_freed_memory` in `tinytorch.core.autograd`, called on import).
#    With glibc's default settings freed arrays went back to the operating system and every step
#    faulted fresh pages in. The count and the cost for the small step are printed below.
# 4. **`batch_norm` and `layer_norm`** (`tinytorch.core.normalization`), on the paths of both the
#    TinyGPT and the LeNet steps: the forward pass made five arrays of the input's size (centred
#    values, their squares, the normalised values, the scaled ones, the shifted ones). Now the
#    variance comes from `np.einsum`, which sums the squares without storing them, and the
#    normalisation and the scale and shift run in place: two arrays. Their gradient rules likewise
#    make one or two arrays of that size where they made five or six.
#
# The second change, before and after, on the MLP's first layer of the TinyGPT step:

# %%
def matmul_grad_batched(g, A, B):
    "The old rule for A (..., n, k) @ B (k, m): a batched product per leading index, then a sum."
    return g @ B.T, unbroadcast(np.swapaxes(A, -1, -2) @ g, B.shape)

rng = np.random.default_rng(7)
Am = rng.standard_normal((32, 64, 128), dtype=np.float32)                  # (B, T, C)
Bm = rng.standard_normal((128, 512), dtype=np.float32)                     # (C, 4C), W transposed
gm = rng.standard_normal((32, 64, 512), dtype=np.float32)
ta, tb = Tensor(Am, requires_grad=True), Tensor(Bm, requires_grad=True)
matmul_rule = _grad_rules['matmul']
old_g, new_g = matmul_grad_batched(gm, Am, Bm), matmul_rule(gm, None, ta, tb)
for o, n in zip(old_g, new_g): test_close(o, n, eps=1e-3 * np.abs(o).max())   # <= 2,048 terms
with blas_threads(1):
    c_mm = compare({'batched + sum': lambda: matmul_grad_batched(gm, Am, Bm),
                    'one GEMM each': lambda: matmul_rule(gm, None, ta, tb)}, rounds=5)
print(c_mm.table())
print(f"gradient of (32, 64, 128) @ (128, 512): "
      f"{c_mm.ratio('batched + sum', 'one GEMM each'):.2f}x faster; "
      f"peak allocation {peak_alloc(matmul_grad_batched, gm, Am, Bm) / 2**20:.1f} MiB -> "
      f"{peak_alloc(matmul_rule, gm, None, ta, tb) / 2**20:.1f} MiB")

# %% [markdown]
# The third change: the small GPT's training step with freed memory returned to the operating
# system (glibc's initial thresholds) and kept, the two alternating, and the page faults per step.

# %%
def gpt_step_returned(): keep_freed_memory(128 * 2**10); step_new()
def gpt_step_kept(): keep_freed_memory(); step_new()
with blas_threads(1):
    c_mem = compare({'memory returned': gpt_step_returned, 'memory kept': gpt_step_kept}, rounds=5)
pf_step = page_faults(gpt_step_returned, 3), page_faults(gpt_step_kept, 3)
test_eq(keep_freed_memory(), True)
print(c_mem.table())
print(f"page faults per step: returned {pf_step[0]:,.0f}, kept {pf_step[1]:,.0f}; the step is "
      f"{c_mem.ratio('memory returned', 'memory kept'):.2f}x faster with the memory kept")

# %% [markdown]
# The fourth change, on the LeNet's first `BatchNorm2d` in training mode, (32, 16, 28, 28): the old
# forward pass written out again on arrays, against `batch_norm` as it now is.

# %%
def batch_norm_forward_old(x, w, b, eps=1e-5):
    "The old training-mode forward pass: five arrays of x's size."
    N, C = x.shape[:2]
    x2 = x.reshape(N, -1); P = x2.shape[1] // C
    chsum = lambda a: a.sum(axis=0).reshape(C, -1).sum(axis=1)
    mean = chsum(x2) / (N * P)
    xc = x2 - np.repeat(mean, P)
    var = chsum(xc * xc) / (N * P)
    xhat = xc * np.repeat(1 / np.sqrt(var + eps), P)
    return (xhat * np.repeat(w, P) + np.repeat(b, P)).reshape(x.shape)

rng = np.random.default_rng(8)
xb = rng.standard_normal((32, 16, 28, 28), dtype=np.float32) * 2 + 1
wb, bb = rng.standard_normal(16, dtype=np.float32), rng.standard_normal(16, dtype=np.float32)
xbt, wbt, bbt = Tensor(xb), Tensor(wb), Tensor(bb)
def batch_norm_new(): return batch_norm(xbt, None, None, wbt, bbt, training=True)
test_close(batch_norm_new().numpy(), batch_norm_forward_old(xb, wb, bb), eps=1e-4)
c_bn = compare({'old (five arrays)': lambda: batch_norm_forward_old(xb, wb, bb),
                'now (two arrays)': batch_norm_new}, rounds=5)
print(c_bn.table())
print(f"peak allocation {peak_alloc(batch_norm_forward_old, xb, wb, bb) / xb.nbytes:.1f}x -> "
      f"{peak_alloc(batch_norm_new) / xb.nbytes:.1f}x the input's size; "
      f"{c_bn.ratio('old (five arrays)', 'now (two arrays)'):.2f}x faster")

# %% [markdown]
# The LeNet-style CNN of the Fashion-MNIST milestone, one training step on a batch of 32 images of
# 28x28 (the milestone uses 128; the notebook keeps it short), profiled the same way:

# %%
def lenet_step(batch=32):
    "One training step (forward, cross-entropy, backward, Adam) of the milestone's LeNet layout."
    manual_seed(0)
    m = Sequential(Conv2d(1, 16, 5, padding=2), BatchNorm2d(16), ReLU(), MaxPool2d(2),
                   Conv2d(16, 32, 5), BatchNorm2d(32), ReLU(), MaxPool2d(2),
                   Flatten(), Linear(32 * 5 * 5, 120), ReLU(), Dropout(0.25),
                   Linear(120, 84), ReLU(), Linear(84, 10))
    opt = Adam(m.parameters(), lr=2e-3)
    r = np.random.default_rng(0)
    x, y = Tensor(r.standard_normal((batch, 1, 28, 28), dtype=np.float32)), r.integers(0, 10, batch)
    def step():
        loss = cross_entropy(m(x), y); opt.zero_grad(); loss.backward(); opt.step()
    return step

step_lenet = lenet_step()
with blas_threads(1):
    step_lenet()
    with Profiler() as prof_cnn:
        for _ in range(3): step_lenet()
print(prof_cnn.table(top=10))

# %% [markdown]
# Against PyTorch, the benchmarks build the same models from the same layers with the same weights,
# check that they agree, then alternate the two at one thread (they need PyTorch installed, take a
# minute each, and are not run by CI):
#
# - `.venv/bin/python benchmarks/bench_gpt.py`: the TinyGPT training step (batch 32 of 64 tokens, 4
#   layers, 4 heads, width 128, AdamW). Target: at most 1.5x PyTorch's time.
# - `.venv/bin/python benchmarks/bench_lenet.py`: `lenet()` of `milestones/fashion_lenet.py`, batch
#   128 of 28x28, Adam. Target: at most 1.5x PyTorch's time.
#
# Their figures, with the spread over several runs, are in the README.
