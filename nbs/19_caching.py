# %%
#| default_exp optimization.caching

# %% [markdown]
# # Caching
#
# > A KV cache allocated once and written in place: exact decoding, what it saves, and int8.

# %% [markdown]
# A transformer generating text reruns its model once per new token. Without a cache, step $t$
# recomputes the keys and values of all $t$ earlier tokens, though they never change. `GPT` already
# keeps them (`past_kv`), concatenating each step's new key and value onto the old ones. That copies
# the whole cache at every step: $O(t)$ bytes at step $t$, $O(T^2)$ over a generation. This module
# makes the cache a systems object:
#
# - `KVCache`, one key buffer and one value buffer for all layers, allocated once at full length,
#   written in place at the current position and read as views up to it, with `length`, `nbytes`,
#   `reset()` and `crop(n)`;
# - prefill (the whole prompt in one pass) then decode (one token at a time), whose logits are those
#   of full recomputation within the rounding bound derived for `GPT`, and whose greedy tokens are
#   the same;
# - measurements: bytes copied and time per step against concatenation, time per token against
#   position with and without the cache, and total generation time;
# - `Int8KVCache`, symmetric int8 with one scale per token and head, and what it costs in accuracy;
# - memory planning: the cache's bytes for TinyGPT and for a GPT-2-small-sized model, from the
#   formula.
#
# `benchmarks/bench_kvcache.py` measures the larger configuration against recomputation and against
# a decode step written in plain NumPy. Every exercise sits between `### BEGIN SOLUTION` and
# `### END SOLUTION`; the cells under it test it.

# %%
#| export
import numpy as np
from fastcore.basics import patch

from tinytorch.core.autograd import no_grad
from tinytorch.models.transformer import GPT
from tinytorch.optimization.quantization import (QuantizedTensor, choose_qparams,
                                                 quantize_per_channel)

# %%
#| hide
import math

import matplotlib.pyplot as plt
from fastcore.test import test_eq, test_fail, test_close

from tinytorch.core.tensor import manual_seed
from tinytorch.utils.timing import measure, compare, blas_threads, fmt_seconds

# %% [markdown]
# ## How many bytes a cache holds
#
# Every layer keeps, for every sequence of the batch, every head and every position, one key and one
# value of `head_dim` numbers. At full length the cache holds
#
# $$2 \cdot n_{layer} \cdot B \cdot n_{head} \cdot T_{max} \cdot d_{head} \cdot \text{itemsize}$$
#
# bytes, the 2 for keys and values. With $n_{head} d_{head} = C$ that is $2 L B T_{max} C$ numbers:
# per token, twice the width of the residual stream per layer.

# %%
#| export
def cache_nbytes(n_layer: int,     # L, transformer blocks
                 batch_size: int,  # B, sequences decoded together
                 n_head: int,      # attention heads per block
                 max_len: int,     # positions the cache can hold
                 head_dim: int,    # numbers per head
                 dtype=np.float32, # element type of keys and values
                ) -> int:
    "Bytes of the keys and values of `n_layer` layers, `batch_size` sequences, `max_len` positions."
    ### BEGIN SOLUTION
    return 2 * n_layer * batch_size * n_head * max_len * head_dim * np.dtype(dtype).itemsize
    ### END SOLUTION

# %%
test_eq(cache_nbytes(1, 1, 1, 1, 1), 8)                        # one key and one value, 4 bytes each
test_eq(cache_nbytes(4, 1, 4, 64, 32), 2 * 4 * 4 * 64 * 32 * 4)  # TinyGPT at block_size 64: 256 KiB
test_eq(cache_nbytes(2, 3, 2, 5, 4, np.float64), 2 * 2 * 3 * 2 * 5 * 4 * 8)

# %% [markdown]
# ## The cache object
#
# `KVCache` allocates the two buffers once, each of shape `(n_layer, B, n_head, max_len, head_dim)`:
# one layer's slice `k[layer]` is laid out as attention reads it, `(B, nh, T, hs)`, and the first
# `length` positions of it are valid. `nbytes` is the size of what was really allocated, so the test
# against the formula checks the buffers. NumPy's `zeros` asks the operating system for zeroed
# pages, which it maps only when written, so a large cache costs memory as it fills.

# %%
#| export
class KVCache:
    "Preallocated keys and values of every layer, written in place at the current position."
    def __init__(self,
                 n_layer: int,      # L, transformer blocks
                 batch_size: int,   # B, sequences decoded together
                 n_head: int,       # attention heads per block
                 max_len: int,      # positions it can hold
                 head_dim: int,     # numbers per head
                 dtype=np.float32,  # float dtype of the model it serves
                ):
        sizes = dict(n_layer=n_layer, batch_size=batch_size, n_head=n_head, max_len=max_len,
                     head_dim=head_dim)
        bad = {k: v for k, v in sizes.items() if not (isinstance(v, (int, np.integer)) and v >= 1)}
        name = type(self).__name__
        if bad: raise ValueError(f"{name}: sizes must be positive ints, got {bad}")
        if np.dtype(dtype).kind != 'f':
            raise TypeError(f"{name}: dtype must be a float type, got {np.dtype(dtype)}")
        self.n_layer, self.batch_size, self.n_head, self.max_len, self.head_dim = sizes.values()
        self.dtype, self.length = np.dtype(dtype), 0
        self._alloc()

    def _alloc(self):
        shape = (self.n_layer, self.batch_size, self.n_head, self.max_len, self.head_dim)
        self.k = np.zeros(shape, self.dtype)                          # (L, B, nh, max_len, hs)
        self.v = np.zeros(shape, self.dtype)

    @property
    def nbytes(self) -> int:
        "Bytes allocated for keys and values."
        return self.k.nbytes + self.v.nbytes

    def __repr__(self):
        return (f"{type(self).__name__}(n_layer={self.n_layer}, batch_size={self.batch_size}, "
                f"n_head={self.n_head}, max_len={self.max_len}, head_dim={self.head_dim}, "
                f"dtype={self.dtype}): length {self.length}, {self.nbytes:,} bytes")

# %%
kv = KVCache(4, 2, 4, 64, 32)
print(kv)
test_eq(kv.nbytes, cache_nbytes(4, 2, 4, 64, 32))
test_eq((kv.k.shape, kv.length), ((4, 2, 4, 64, 32), 0))
test_eq(KVCache(2, 1, 2, 8, 4, np.float64).nbytes, cache_nbytes(2, 1, 2, 8, 4, np.float64))
test_fail(lambda: KVCache(4, 0, 4, 64, 32), contains="positive ints, got {'batch_size': 0}")
test_fail(lambda: KVCache(4, 1, 4, 64, 32, np.int8), contains="must be a float type, got int8")

# %% [markdown]
# ## Writing in place, reading views
#
# `write(layer, k, v)` receives one layer's keys and values for the $T$ new positions,
# `(B, nh, T, hs)` each, stores them at positions `length .. length + T - 1` of that layer's
# buffers, and returns the keys and values of all `length + T` positions as views into the buffers:
# nothing is copied but the new entries. It does not move `length`, since every layer writes at the
# same positions; `advance(T)` does that once all layers have written. Invalid arguments raise
# before anything is stored.

# %%
#| export
@patch
def _check_write(self: KVCache, layer: int, k: np.ndarray, v: np.ndarray):
    "Raise if `layer` is out of range, k, v are not (B, nh, T, hs) alike, or T positions overrun."
    if not (isinstance(layer, (int, np.integer)) and 0 <= layer < self.n_layer):
        raise IndexError(f"KVCache.write: layer {layer!r} out of range for n_layer={self.n_layer}")
    want = (self.batch_size, self.n_head, k.shape[2] if k.ndim == 4 else 'T', self.head_dim)
    if k.shape != want or v.shape != want:
        raise ValueError(f"KVCache.write: keys and values must have shape (B={want[0]}, "
                         f"n_head={want[1]}, T, head_dim={want[3]}), got {k.shape} and {v.shape}")
    if self.length + k.shape[2] > self.max_len:
        raise ValueError(f"KVCache.write: {k.shape[2]} new positions after {self.length} "
                         f"exceed max_len={self.max_len}")

@patch
def write(self: KVCache,
          layer: int,      # which block's keys and values
          k: np.ndarray,   # (B, nh, T, hs) keys of the T new positions
          v: np.ndarray,   # (B, nh, T, hs) their values
         ) -> tuple:
    "Store k, v at positions length..length+T-1 of `layer`; return views of all length+T of them."
    self._check_write(layer, k, v)
    ### BEGIN SOLUTION
    end = self.length + k.shape[2]
    self.k[layer, :, :, self.length:end] = k                       # in place: only T positions move
    self.v[layer, :, :, self.length:end] = v
    return self.k[layer, :, :, :end], self.v[layer, :, :, :end]      # (B, nh, length + T, hs) views
    ### END SOLUTION

@patch
def advance(self: KVCache, T: int):
    "Count the T positions every layer has just written."
    if not 0 <= self.length + T <= self.max_len:
        raise ValueError(f"KVCache.advance: length {self.length} + {T} is outside "
                         f"0..max_len={self.max_len}")
    self.length += T

# %%
rng = np.random.default_rng(0)
c = KVCache(2, 1, 2, 6, 3)
k1, v1 = rng.standard_normal((2, 1, 2, 4, 3), dtype=np.float32)        # 4 positions
K, V = c.write(1, k1, v1)
# a view; length not yet moved
test_eq((K.shape, np.shares_memory(K, c.k), c.length), ((1, 2, 4, 3), True, 0))
test_eq(K, k1); test_eq(c.k[0], np.zeros((1, 2, 6, 3)))             # layer 0 untouched
c.advance(4)
k2 = rng.standard_normal((1, 2, 1, 3), dtype=np.float32)
K, V = c.write(1, k2, -k2)
test_eq(K, np.concatenate([k1, k2], 2)); test_eq(V, np.concatenate([v1, -k2], 2))
test_fail(lambda: c.write(2, k2, k2), contains="layer 2 out of range for n_layer=2")
test_fail(lambda: c.write(0, k2[:, :1], k2[:, :1]),
          contains="must have shape (B=1, n_head=2, T, head_dim=3), got (1, 1, 1, 3)")
test_fail(lambda: c.write(0, k1[:, :, :3], v1[:, :, :3]), contains="3 new positions after 4 exceed")

# %% [markdown]
# `reset()` empties the cache and `crop(n)` keeps its first `n` positions, as when a speculative
# decoder rejects drafted tokens or a chat rewinds a turn. Both only move `length`: the positions
# after it are overwritten by the next write, and reads never reach them.

# %%
#| export
@patch
def reset(self: KVCache):
    "Forget every cached position."
    self.length = 0

@patch
def crop(self: KVCache, n: int):
    "Keep the first n cached positions, 0 <= n <= length."
    ### BEGIN SOLUTION
    if not (isinstance(n, (int, np.integer)) and 0 <= n <= self.length):
        raise ValueError(f"KVCache.crop: n must be an int in 0..length={self.length}, got {n!r}")
    self.length = int(n)
    ### END SOLUTION

# %%
c.advance(1)
c.crop(2); test_eq(c.length, 2)
K, _ = c.write(1, k2, k2)                                              # position 2 overwritten
test_eq(K, np.concatenate([k1[:, :, :2], k2], 2))
test_fail(lambda: c.crop(3), contains="n must be an int in 0..length=2, got 3")
c.reset(); test_eq(c.length, 0)
test_eq(c.write(1, k2, k2)[0], k2)

# %% [markdown]
# ## A cache from the right model
#
# `GPT.forward` hands the cache its sizes before the first layer runs. `check` compares them with
# the cache's, and the start position with `length`, so that a wrong cache fails with the values
# named and nothing written: a batch or head count that differs, a cache built for another model
# (other layer count or head size), tokens that would run past `max_len`.

# %%
#| export
@patch
def check(self: KVCache,
          op: str,                            # the caller's name, for the messages
          B: int, T: int, start: int,         # batch, new tokens, position of the first
          n_layer: int, n_head: int, head_dim: int, dtype,   # the model's sizes and float dtype
         ):
    "Raise, naming the values, unless T tokens of B sequences from `start` fit cache and model."
    model = dict(n_layer=n_layer, n_head=n_head, head_dim=head_dim)
    mine = dict(n_layer=self.n_layer, n_head=self.n_head, head_dim=self.head_dim)
    if model != mine:
        raise ValueError(f"{op}: the cache is for another model: cache {mine}, model {model}")
    if B != self.batch_size:
        raise ValueError(f"{op}: batch of {B} sequences, but the cache holds "
                         f"batch_size={self.batch_size}")
    if np.dtype(dtype) != self.dtype:
        raise TypeError(f"{op}: model dtype {np.dtype(dtype)}, cache dtype {self.dtype}")
    if start != self.length:
        raise ValueError(f"{op}: start={start} but the cache holds {self.length} positions; "
                         "they must agree")
    if start + T > self.max_len:
        raise ValueError(f"{op}: {T} tokens from position {start} reach length {start + T}, "
                         f"past the cache's max_len={self.max_len}")

# %% [markdown]
# The model side: a GPT of 2 blocks with 4 heads of 8 numbers, and a 16-position cache for it. A
# failed call leaves `length` and every buffer as they were.

# %%
manual_seed(0)
gpt = GPT(vocab_size=23, block_size=16, n_layer=2, n_head=4, n_embd=32)
ids = np.random.default_rng(1).integers(0, 23, (2, 16))               # (B, T)
kv = KVCache(2, 2, 4, 16, 8)
with no_grad(): gpt(ids[:, :5], cache=kv)
snapshot = (kv.length, kv.k.copy(), kv.v.copy())
def unchanged(c):
    return c.length == snapshot[0] and (c.k == snapshot[1]).all() and (c.v == snapshot[2]).all()
with no_grad():
    test_fail(lambda: gpt(ids[:, 5:6], start=4, cache=kv), contains="start=4 but the cache holds 5")
    test_fail(lambda: gpt(ids[:1, 5:6], start=5, cache=kv),
              contains="batch of 1 sequences, but the cache holds batch_size=2")
    test_fail(lambda: gpt(ids[:, 5:6], start=5, cache=KVCache(3, 2, 4, 16, 8)),
              contains="the cache is for another model: cache {'n_layer': 3, 'n_head': 4, "
                       "'head_dim': 8}, model {'n_layer': 2")
    test_fail(lambda: gpt(ids[:, 5:6], start=5, cache=KVCache(2, 2, 2, 16, 16)),
              contains="cache {'n_layer': 2, 'n_head': 2, 'head_dim': 16}")
    test_fail(lambda: gpt(ids[:, 5:9], start=5, cache=KVCache(2, 2, 4, 8, 8)), contains="holds 0")
    short = KVCache(2, 2, 4, 8, 8); gpt(ids[:, :5], cache=short)
    test_fail(lambda: gpt(ids[:, 5:9], start=5, cache=short),
              contains="4 tokens from position 5 reach length 9, past the cache's max_len=8")
    test_fail(lambda: gpt(ids[:, 5:6], start=5, cache=KVCache(2, 2, 4, 16, 8, np.float64)),
              contains="model dtype float32, cache dtype float64")
test_fail(lambda: gpt(ids[:, 5:6], start=5, cache=kv), contains="decode under no_grad()")
test_eq(unchanged(kv), True)

# %% [markdown]
# ## Prefill, then decode
#
# Generation runs in two phases. The **prefill** passes the whole prompt at once: its $T_0$
# positions go through each `Linear` as one $(T_0, C)$ block, the efficient shape for a matrix
# product, and fill the cache. Then each **decode** step passes one token at position `length`,
# which attends over the cache. The exercise writes the loop with teacher forcing (the next token is
# taken from `ids` rather than sampled), so its logits can be compared position by position with one
# full pass.

# %%
#| export
def prefill_decode(model: GPT,      # the model, in evaluation mode
                   ids: np.ndarray, # (B, T) token ids
                   prefill: int,    # prompt length passed at once, 1 <= prefill <= T
                   cache,           # an empty cache for B sequences of at least T positions
                  ) -> np.ndarray:
    "Logits (B, T, V): a prefill of ids[:, :prefill] into `cache`, then one token per step."
    ### BEGIN SOLUTION
    with no_grad():
        steps = [model(ids[:, :prefill], cache=cache)[0].numpy()]      # (B, prefill, V)
        for t in range(prefill, ids.shape[1]):
            steps.append(model(ids[:, t:t + 1], start=t, cache=cache)[0].numpy())   # (B, 1, V)
    return np.concatenate(steps, axis=1)
    ### END SOLUTION

# %% [markdown]
# The tolerance is the one the transformers module derives. `tests/test_19_caching.py` checks every
# logit against its elementwise first-order bound on the rounding error of both paths, in float64
# ($u = 2^{-53}$) and in float32 ($u = 2^{-24}$). Here, as in that module, a scale tells rounding
# from a bug: in float64 both paths round $2^{29}$ times more finely than in float32, so their
# largest difference must lie a million times below the RMS error of the float32 full pass against
# float64; and in float32 the cached path's RMS error against float64 may be at most 8 times the
# full pass's (a misplaced cache entry moves the logits by their own size).

# %%
g64 = GPT(vocab_size=23, block_size=16, n_layer=2, n_head=4, n_embd=32).double()
g64.load_state_dict(gpt.state_dict())
with no_grad(): full64, full32 = g64(ids)[0].numpy(), gpt(ids)[0].numpy()
def rms(a): return float(np.sqrt(np.mean(a ** 2)))
err32 = rms(full32 - full64)                                   # float32 rounding of the full pass
for p in (1, 5, 16):
    inc64 = prefill_decode(g64, ids, p, KVCache(2, 2, 4, 16, 8, np.float64))
    inc32 = prefill_decode(gpt, ids, p, KVCache(2, 2, 4, 16, 8))
    d64 = np.abs(inc64 - full64).max()
    print(f"prefill {p:2}: largest difference from the full pass {d64:.1e} (float64), "
          f"{np.abs(inc32 - full32).max():.1e} (float32); RMS error against float64: cached "
          f"{rms(inc32 - full64):.1e}, full pass {err32:.1e}")
    test_eq(bool(d64 < 1e-6 * err32), True)
    test_eq(bool(rms(inc32 - full64) < 8 * err32), True)

# %% [markdown]
# `generate` takes the cache too: it resets it, prefills the prompt and decodes, and when the
# context reaches the smaller of `block_size` and `max_len` it crops to half and prefills again, as
# with `past_kv`. Greedy decoding (`top_k=1`) gives the same tokens as recomputing the whole
# sequence at every step, nanoGPT's way, written out here as the reference.

# %%
#| export
def generate_recompute(model: GPT, idx: np.ndarray, n: int) -> np.ndarray:
    "Greedy decoding with a full pass over the whole sequence for every new token (no cache)."
    out = np.array(idx)
    with no_grad():
        for _ in range(n):
            logits = model(out[:, -model.block_size:])[0].numpy()[:, -1]   # (B, V)
            out = np.concatenate([out, logits.argmax(-1)[:, None]], 1)
    return out

# %%
gpt.eval()
prompt = ids[:, :3]
greedy = gpt.generate(prompt, 13, top_k=1, cache=KVCache(2, 2, 4, 16, 8)).numpy()
test_eq(greedy, generate_recompute(gpt, prompt, 13))
test_eq(gpt.generate(prompt, 13, top_k=1).numpy(), greedy)          # the concatenating cache agrees
for kw in (dict(top_k=1), dict(seed=3)):                                     # past block_size too
    test_eq(gpt.generate(prompt, 30, cache=KVCache(2, 2, 4, 16, 8), **kw).numpy(),
            gpt.generate(prompt, 30, **kw).numpy())

# %% [markdown]
# ## Concatenation against the preallocated cache
#
# With `past_kv`, step $t$ builds new key and value arrays of $t$ positions per layer and copies the
# old ones in: $2 L B C t \cdot \text{itemsize}$ bytes. Over $n$ steps that is $O(n^2)$. The
# preallocated cache copies only the new position, $2 L B C \cdot \text{itemsize}$ bytes per step.
# The cell counts both per step and times the cache update alone (one layer's keys and values, as
# `cat` and as `write`) at several positions, for a layer of GPT-2 small's width (12 heads of 64,
# one sequence), one BLAS thread.

# %%
nh, hs, L = 12, 64, 12
positions = [64, 256, 512, 1024]
rng = np.random.default_rng(0)
new = rng.standard_normal((1, nh, 1, hs), dtype=np.float32)            # one position's keys
upd = {'concatenate': [], 'write in place': []}
for t in positions:
    old = rng.standard_normal((1, nh, t - 1, hs), dtype=np.float32)
    c1 = KVCache(1, 1, nh, 1024, hs); c1.length = t - 1
    def concat(): return np.concatenate([old, new], 2), np.concatenate([old, new], 2)
    def inplace(): return c1.write(0, new, new)
    with blas_threads(1):
        r = compare({'concatenate': concat, 'write in place': inplace}, rounds=5, min_time=0.005)
    for k in upd: upd[k].append(r[k].median)
copied = {'concatenate': [2 * L * nh * hs * 4 * t for t in positions],       # bytes per step
          'write in place': [2 * L * nh * hs * 4] * len(positions)}
for i, t in enumerate(positions):
    print(f"step at position {t:4}: bytes copied for 12 layers, concatenation "
          f"{copied['concatenate'][i] / 2**20:6.2f} MiB, "
          f"in place {copied['write in place'][i] / 2**10:.0f} KiB; one layer's update "
          f"{fmt_seconds(upd['concatenate'][i])} against {fmt_seconds(upd['write in place'][i])}")
total = sum(2 * L * nh * hs * 4 * t for t in range(1, 1025))
print(f"over 1,024 steps: {total / 2**30:.2f} GiB copied by concatenation, "
      f"{1024 * 2 * L * nh * hs * 4 / 2**20:.0f} MiB in place")

# %%
fig, (a1, a2) = plt.subplots(1, 2, figsize=(9, 3.2))
for k in upd:
    a1.plot(positions, [b / 2**20 for b in copied[k]], 'o-', label=k)
    a2.plot(positions, [s * 1e6 for s in upd[k]], 'o-', label=k)
a1.set(xlabel='position t', ylabel='MiB copied per step (12 layers)', title='bytes moved')
a2.set(xlabel='position t', ylabel='us per step (one layer)', title='cache update time')
a1.legend(); a2.legend()
plt.tight_layout(); plt.show()

# %% [markdown]
# ## What the cache saves: time per token against position
#
# Without a cache, the step at position $t$ runs all $t + 1$ tokens through every layer; with it,
# one token through the projections and one attention row over $t + 1$ keys. The cell times single
# steps at several positions both ways, on a GPT of 2 blocks, 4 heads and width 64 with a 256-token
# context (one BLAS thread, medians), and plots them: the cached step stays nearly flat, the
# recomputed one grows linearly.

# %%
manual_seed(0)
m = GPT(vocab_size=65, block_size=256, n_layer=2, n_head=4, n_embd=64); m.eval()
seq = np.random.default_rng(2).integers(0, 65, (1, 256))
kvm = KVCache(2, 1, 4, 256, 16)
with no_grad(): m(seq[:, :255], cache=kvm)
def cached_step(t):
    kvm.crop(t); return m(seq[:, t:t + 1], start=t, cache=kvm)
def full_step(t): return m(seq[:, :t + 1])
pos_list, per_pos = [16, 64, 128, 192, 255], {'cached': [], 'recomputed': []}
with no_grad(), blas_threads(1):
    for t in reversed(pos_list):                                 # crop only shortens: longest first
        r = compare({'cached': lambda: cached_step(t), 'recomputed': lambda: full_step(t)},
                    rounds=3, min_time=0.01)
        for k in per_pos: per_pos[k].insert(0, r[k].median)
for i, t in enumerate(pos_list):
    print(f"position {t:3}: cached {fmt_seconds(per_pos['cached'][i]):>9}, "
          f"recomputed {fmt_seconds(per_pos['recomputed'][i]):>9}")
test_eq(bool(per_pos['recomputed'][-1] > per_pos['cached'][-1]), True)

# %%
plt.figure(figsize=(5, 3.2))
for k, v in per_pos.items(): plt.plot(pos_list, [s * 1e3 for s in v], 'o-', label=k)
plt.xlabel('position of the new token'); plt.ylabel('ms per token')
plt.title('time per generated token')
plt.legend(); plt.tight_layout(); plt.show()

# %% [markdown]
# Summed over a generation the gap grows with its length. The cell generates $n$ tokens greedily
# from a one-token prompt both ways and checks that they are the same tokens;
# `benchmarks/bench_kvcache.py` runs the same comparison on a 4-block, width-128 GPT with a
# 512-token context for 64 to 512 tokens.

# %%
one = seq[:, :1]
gen = {}
with blas_threads(1):
    for n in (32, 64, 128):
        cache_n = KVCache(2, 1, 4, 256, 16)
        r = compare({'cached': lambda: m.generate(one, n, top_k=1, cache=cache_n),
                     'recomputed': lambda: generate_recompute(m, one, n)}, rounds=3, number=1)
        gen[n] = r.ratio('recomputed', 'cached')
        print(f"{n:3} new tokens: cached {fmt_seconds(r['cached'].median)}, "
              f"recomputed {fmt_seconds(r['recomputed'].median)}: "
              f"{gen[n]:.1f}x faster with the cache")
        test_eq(m.generate(one, n, top_k=1, cache=cache_n).numpy(), generate_recompute(m, one, n))

# %% [markdown]
# ## An int8 cache
#
# The cache, not the weights, dominates memory when batches or contexts are long. Storing keys and
# values as int8 cuts them to a quarter. Each token's vector in each head gets its own scale,
# symmetric around zero:
#
# $$s = \max_i |x_i| / 127, \quad q_i = \mathrm{round}(x_i / s) \in [-127, 127],
# \quad \hat x_i = s\, q_i ,$$
#
# so $|\hat x_i - x_i| \le s/2$. A per-token scale suits a cache: a position's scale is fixed when
# it is written and never revisited, and one outlier token cannot coarsen the others. The scales are
# float32, one per `head_dim` numbers, and count in the memory: `head_dim` int8 bytes plus 4 bytes
# of scale, against `4 * head_dim` bytes in float32.
#
# The quantization module's primitives do the arithmetic: viewed as a matrix with one row per
# (sequence, head, position), each row is a channel, so
# `choose_qparams(-amax, amax, symmetric=True)` gives the scales (zero points 0),
# `quantize_per_channel` the integers, and `QuantizedTensor.dequantize` the floats back.

# %%
#| export
def quantize_kv(x: np.ndarray,  # (..., hs) float keys or values
               ) -> tuple:
    "Symmetric int8, one scale per vector: q (..., hs) int8, scale (..., 1) float32; x ~ q * scale."
    rows = x.reshape(-1, x.shape[-1])                            # (N, hs): each vector is a channel
    ### BEGIN SOLUTION
    amax = np.abs(rows).max(axis=1)                                   # (N,)
    scale, zero_point = choose_qparams(-amax, amax, np.int8, symmetric=True)   # (N,), zeros (N,)
    q = quantize_per_channel(rows, scale, zero_point, axis=0)         # QuantizedTensor (N, hs) int8
    return q.int_repr().reshape(x.shape), scale.reshape(x.shape[:-1] + (1,))
    ### END SOLUTION

def dequantize_kv(q: np.ndarray,      # (..., hs) int8
                  scale: np.ndarray,  # (..., 1) float32
                  dtype=np.float32,
                 ) -> np.ndarray:
    "q * scale as floats (..., hs)."
    rows = q.reshape(-1, q.shape[-1])                                 # (N, hs)
    ### BEGIN SOLUTION
    qt = QuantizedTensor(rows, scale.reshape(-1), np.zeros(len(rows), np.int64), axis=0)
    return qt.dequantize().reshape(q.shape).astype(dtype, copy=False)
    ### END SOLUTION

# %%
x = np.array([[1.27, -0.635, 0.0, 0.3], [0., 0., 0., 0.]], np.float32)
q, s = quantize_kv(x)
test_eq((q.dtype, s.dtype, s.shape), (np.int8, np.float32, (2, 1)))
test_eq(q, [[127, -64, 0, 30], [0, 0, 0, 0]])           # -0.635 / 0.01 = -63.5 rounds to -64 (even)
test_close(s[0, 0], 0.01, eps=1e-8)
test_eq(dequantize_kv(q, s)[1], np.zeros(4))
xr = np.random.default_rng(0).standard_normal((3, 5, 64), dtype=np.float32) * 4
q, s = quantize_kv(xr)
# rounding error <= s/2
test_eq(bool((np.abs(dequantize_kv(q, s) - xr) <= s / 2 * (1 + 1e-6)).all()), True)
test_eq(np.abs(q).max(axis=-1), np.full((3, 5), 127))          # each vector's extreme hits +-127

# %% [markdown]
# `Int8KVCache` keeps int8 buffers and their scales, quantizes in `write`, and returns the keys and
# values of all positions dequantized: a float copy, made per layer and step, of the size the float
# cache holds. Attention then runs in float32 as before, so only storage changes; the model's
# decoding path is unchanged, since it sees the same `write` protocol.

# %%
#| export
class Int8KVCache(KVCache):
    "A `KVCache` that stores keys and values as int8 with one float32 scale per position and head."
    def _alloc(self):
        shape = (self.n_layer, self.batch_size, self.n_head, self.max_len, self.head_dim)
        # (L, B, nh, max_len, hs)
        self.k, self.v = np.zeros(shape, np.int8), np.zeros(shape, np.int8)
        self.k_scale = np.ones(shape[:-1] + (1,), np.float32)               # (L, B, nh, max_len, 1)
        self.v_scale = np.ones(shape[:-1] + (1,), np.float32)

    @property
    def nbytes(self) -> int:
        "Bytes allocated: int8 keys and values and their float32 scales."
        return self.k.nbytes + self.v.nbytes + self.k_scale.nbytes + self.v_scale.nbytes

@patch
def write(self: Int8KVCache, layer: int, k: np.ndarray, v: np.ndarray) -> tuple:
    "Quantize k, v (B, nh, T, hs) into positions length..; return all length+T of them dequantized."
    self._check_write(layer, k, v)
    end, out = self.length + k.shape[2], []
    for x, q, s in ((k, self.k, self.k_scale), (v, self.v, self.v_scale)):
        q[layer, :, :, self.length:end], s[layer, :, :, self.length:end] = quantize_kv(x)
        # (B,nh,end,hs)
        out.append(dequantize_kv(q[layer, :, :, :end], s[layer, :, :, :end], self.dtype))
    return tuple(out)

# %%
c8 = Int8KVCache(4, 1, 4, 64, 32)
f32 = KVCache(4, 1, 4, 64, 32)
print(f"{c8}\nfloat32 {f32.nbytes:,} bytes / int8 with scales {c8.nbytes:,} bytes = "
      f"{f32.nbytes / c8.nbytes:.3f}x "
      f"(4 * head_dim / (head_dim + 4) = {4 * 32 / 36:.3f}); without the scales exactly "
      f"{f32.nbytes / (c8.k.nbytes + c8.v.nbytes):.0f}x")
test_eq(c8.k.dtype, np.int8)
test_eq(c8.nbytes, 2 * 4 * 1 * 4 * 64 * (32 + 4))
# 3 heads, not 4
test_fail(lambda: c8.write(0, xr[None, :, :2, :32], xr[None, :, :2, 32:]), contains="got (1, 3, 2,")
kx = np.random.default_rng(1).standard_normal((1, 4, 5, 32), dtype=np.float32)
K, V = c8.write(0, kx, -kx)
test_eq((K.dtype, K.shape), (np.float32, (1, 4, 5, 32)))
test_eq(bool((np.abs(K - kx) <= c8.k_scale[0, :, :, :5] / 2 * (1 + 1e-6)).all()), True)

# %% [markdown]
# Its effect on the model: the logits of prefill and decode through an `Int8KVCache` against the
# full float32 pass, for the GPT above with weights scaled up 10-fold (logits of order 10, as after
# training), and how many of 13 greedy tokens stay the same. Untrained, its next-token choices are
# nearly ties, which makes this a harsh test; `benchmarks/bench_kvcache.py` measures the trained
# TinyGPT's validation loss and generated text.

# %%
manual_seed(1)
g10 = GPT(vocab_size=23, block_size=16, n_layer=2, n_head=4, n_embd=32); g10.eval()
for p_ in g10.parameters(): p_.data *= 10
with no_grad(): ref = g10(ids)[0].numpy()
d8 = np.abs(prefill_decode(g10, ids, 5, Int8KVCache(2, 2, 4, 16, 8)) - ref)
dfl = np.abs(prefill_decode(g10, ids, 5, KVCache(2, 2, 4, 16, 8)) - ref)
t8 = g10.generate(prompt, 13, top_k=1, cache=Int8KVCache(2, 2, 4, 16, 8)).numpy()
tf = g10.generate(prompt, 13, top_k=1, cache=KVCache(2, 2, 4, 16, 8)).numpy()
print(f"logits of order {np.abs(ref).mean():.1f}: int8 cache off by {d8.mean():.1e} on average, "
      f"{d8.max():.1e} at most; float32 cache {dfl.max():.1e} at most; "
      f"greedy tokens agreeing: {(t8[:, 3:] == tf[:, 3:]).mean():.0%} of 26")
test_eq(bool(d8.max() > dfl.max()), True)                             # int8 rounding is visible ...
test_eq(bool(d8.mean() < 0.05 * np.abs(ref).mean()), True)        # ... and small next to the logits

# %% [markdown]
# ## Memory planning
#
# The formula tells how much memory a model needs to decode before anything is allocated. The cell
# prints it for TinyGPT (4 blocks, 4 heads, width 128, 64-token context, 84 characters) and for a
# model of GPT-2 small's sizes (12 blocks, 12 heads of 64, a 1,024-token context, 50,257 tokens) at
# full context, next to their float32 weights (the parameter count
# $VC + T_{max}C + L(12C^2 + 13C) + 2C$ of `GPT`), and checks it against the bytes `KVCache` and
# `Int8KVCache` allocate (zeroed pages, mapped only when written). The weights are paid once; the
# cache once per sequence in the batch.

# %%
configs = {'TinyGPT': (84, dict(n_layer=4, n_head=4, max_len=64, head_dim=32)),
           'GPT-2 small': (50257, dict(n_layer=12, n_head=12, max_len=1024, head_dim=64))}
for name, (V, cfg) in configs.items():
    Lc, C, Tc = cfg['n_layer'], cfg['n_head'] * cfg['head_dim'], cfg['max_len']
    weights = 4 * (V * C + Tc * C + Lc * (12 * C * C + 13 * C) + 2 * C)   # float32 parameters
    f = cache_nbytes(batch_size=1, **cfg)
    full, int8 = KVCache(batch_size=1, **cfg), Int8KVCache(batch_size=1, **cfg)
    per_tok = f // cfg['max_len']
    print(f"{name}: {f:,} bytes ({f / 1e6:.2f} MB) in float32 at {cfg['max_len']} positions, "
          f"batch 1, {per_tok:,} bytes per token; int8 with scales {int8.nbytes:,} bytes "
          f"({f / int8.nbytes:.2f}x smaller); "
          f"batch 8: {cache_nbytes(batch_size=8, **cfg) / 1e6:.1f} MB; "
          f"weights {weights / 1e6:.1f} MB")
    test_eq(full.nbytes, f)
    test_eq(int8.nbytes, f // 4 + 2 * cfg['n_layer'] * cfg['n_head'] * cfg['max_len'] * 4)
    del full, int8

# %% [markdown]
# ## Optional: where a decode step's time goes
#
# For one token, the arithmetic of a decode step is small: a few matrix-vector products per layer.
# Profiling the step (cProfile) showed three costs beside it. First, framework overhead: through the
# modules, every intermediate result is wrapped in a `Tensor`, checked and recorded, and every
# parameter is found through `Module.__getattr__`; `GPT.forward` with a cache therefore runs a
# decoding plan, one function on arrays per layer, made from the parameters (`forward` makes one
# at each call, `generate` one for all its tokens). Second, NumPy's own cost per call, which for
# arrays of a few hundred numbers exceeds their arithmetic: `x.mean(-1)` passes through a Python
# layer, and a sum followed by a division is two calls where a product with a column of 1/C is
# one; adding a (C,) vector to a (1, C) row broadcasts, where a (1, C) row takes NumPy's
# same-shape fast path. Third, the tanh GELU's cube: NumPy computes a float32 `x**3` with a
# general `pow`, which on this machine costs several times `x * x * x`. The cell times one decode
# step at position 128 of the model above through the modules (`past_kv`) and through the cache,
# three ways of averaging one position's vector (64 numbers), the two ways of adding a bias to it,
# and the two ways of cubing the MLP's hidden vector (256 numbers).

# %%
with no_grad():
    _, _, past = m(seq[:, :128], use_cache=True)                      # positions 0..127 both ways
    kvm.reset(); m(seq[:, :128], cache=kvm)
    def module_step(): return m(seq[:, 128:129], start=128, past_kv=past, use_cache=True)
    def cache_step():
        kvm.crop(128); return m(seq[:, 128:129], start=128, cache=kvm)
    row = np.random.default_rng(3).standard_normal((1, 64)).astype(np.float32)   # (B*T, C)
    vec, col = row[0] * 0.5, np.full((64, 1), 1 / 64, np.float32)      # (C,), (C, 1)
    h256 = np.random.default_rng(4).standard_normal(256).astype(np.float32)
    test_close(row.dot(col), row.mean(-1, keepdims=True), eps=1e-6)   # the same means
    with blas_threads(1):
        r = compare({'modules (past_kv)': module_step, 'arrays (cache)': cache_step}, rounds=5)
        mean = compare({'x.mean': lambda: row.mean(-1, keepdims=True),
                        'add.reduce / n': lambda: np.add.reduce(row, -1, keepdims=True) / 64,
                        'x.dot(col)': lambda: row.dot(col)}, rounds=5)
        bias = compare({'x + (C,)': lambda: row + vec, 'x + (1, C)': lambda: row + vec[None]},
                       rounds=5)
        cube = compare({'x**3': lambda: h256 ** 3, 'x * x * x': lambda: h256 * h256 * h256},
                       rounds=5)
for c in (r, mean, bias, cube): print(c.table())
print(f"decode step through the modules / through the cache: "
      f"{r.ratio('modules (past_kv)', 'arrays (cache)'):.1f}x; on 64 float32, x.mean / x.dot(col): "
      f"{mean.ratio('x.mean', 'x.dot(col)'):.1f}x, add.reduce / n over x.dot(col): "
      f"{mean.ratio('add.reduce / n', 'x.dot(col)'):.1f}x; x + (C,) / x + (1, C): "
      f"{bias.ratio('x + (C,)', 'x + (1, C)'):.1f}x (the (1, C) view included); x**3 / x * x * x "
      f"on 256 float32: {cube.ratio('x**3', 'x * x * x'):.0f}x")

# %% [markdown]
# What remains is a few dozen NumPy calls per layer, each of a microsecond or so, and the
# matrix-vector products, which read every weight once per token. `benchmarks/bench_kvcache.py`
# measures the cached decode step against the same step written in plain NumPy with the same cheap
# calls, and greedy generation against recomputation and against a plain NumPy loop: the NumPy
# loop's speedup over recomputation is the ceiling for any cache whose step is made of NumPy calls.
# On its 4-block, width-128 GPT with a 512-token context it prints that ceiling next to the
# cache's speedup at 256 new tokens and whether the target, 20 times, is met.

# %% [markdown]
# ## Summary
#
# `KVCache` holds the keys and values of every layer in two buffers allocated once,
# $2 \cdot L \cdot B \cdot n_{head} \cdot T_{max} \cdot d_{head} \cdot \text{itemsize}$ bytes
# (`cache_nbytes`). `write` stores a layer's new positions in place and returns views of all of
# them, `advance` moves `length` once every layer has written, `reset` and `crop` rewind it, and
# `check` refuses a cache that does not fit the model or the tokens, before anything is written.
# `GPT.forward(idx, start=..., cache=...)` and `GPT.generate(..., cache=...)` decode into it: a
# prefill of the prompt, then one token per step, with the logits of the full pass within the
# derived rounding bound and the same greedy tokens. Concatenation copies the whole cache at every
# step; the preallocated cache copies one position. `Int8KVCache` stores int8 with one float32 scale
# per position and head, $4 d_{head} / (d_{head} + 4)$ times smaller than float32.
