# %%
#| default_exp text.embeddings

# %% [markdown]
# # Embeddings
#
# > Token ids become rows of a learned table; positions become sinusoidal or learned vectors.

# %% [markdown]
# A tokenizer turns text into integers, one per token. A network needs vectors. An *embedding* is a
# table with one learned row of `embedding_dim` numbers per token id; the forward pass looks rows
# up, and the backward pass adds each position's gradient into the row that was looked up there.
#
# Attention, the next module's subject, compares every token with every other token but does not see
# their order: shuffle the tokens and the outputs shuffle the same way. So each position also gets a
# vector, added to its token's vector. This module builds
#
# - `embedding` and `Embedding`: the lookup as one op with a scatter-add gradient, and errors that
#   name a bad id, where it is, and the vocabulary size;
# - `sinusoidal_table` and `PositionalEncoding`: the fixed encoding of Vaswani et al. (2017);
# - `LearnedPositionalEmbedding`: a learned row per position, as in GPT-2.
#
# Both positional modules take an explicit start position, so that generation which feeds one new
# token at a time gives position $t$ the same vector a full pass over the sequence gives it. Every
# exercise sits between `### BEGIN SOLUTION` and `### END SOLUTION`; the cells under it test it at
# once.

# %%
#| export
import math

import numpy as np

from tinytorch.core.tensor import Tensor, randn
from tinytorch.core.autograd import grad_rule
from tinytorch.core.layers import Module, Parameter

# %%
#| hide
import matplotlib.pyplot as plt
from fastcore.test import test_eq, test_fail, test_close

from tinytorch.core.tensor import manual_seed, zeros, trace_ops
from tinytorch.core.autograd import gradcheck
from tinytorch.utils.timing import compare

# %% [markdown]
# ## Token ids name rows
#
# A token id is a row number of the table, so it must be an integer in $[0,
# \text{num\_embeddings})$. NumPy would read a negative id as counting from the end of the table,
# and an id that is too large as an `IndexError` that does not say which token it was. A tokenizer
# bug or a model built with a smaller vocabulary than its data shows up exactly here, so the check
# names the first offending id, its position in the batch and the vocabulary size. Float and boolean
# ids are refused: `3.0` is not a row.

# %%
#| export
def _check_ids(op: str,         # the op or layer, for the message
               ids: np.ndarray, # token ids of any shape
               num: int,        # vocabulary size: valid ids are 0..num-1
              ) -> None:
    "Raise unless `ids` are integers in [0, num), naming the first bad id and its position."
    if ids.dtype.kind not in 'iu':
        raise TypeError(f"{op}: token ids must be integers, got dtype {ids.dtype}")
    if ids.size and (ids.min() < 0 or ids.max() >= num):
        first = np.argmax((ids < 0) | (ids >= num))             # flat index of the first bad id
        pos = tuple(int(i) for i in np.unravel_index(first, ids.shape))
        raise IndexError(f"{op}: token id {ids[pos]} at position {pos} is out of range "
                         f"for a vocabulary of {num} (valid ids 0..{num - 1})")

# %%
_check_ids('embedding', np.array([[0, 3], [2, 1]]), 4)                 # all in range: no error
_check_ids('embedding', np.array([], np.int64), 4)                     # nothing to check
_check_ids('embedding', np.array([1, 2], np.uint8), 4)                 # any integer dtype
test_fail(lambda: _check_ids('embedding', np.array([[0, 3], [4, 1]]), 4),
          contains="embedding: token id 4 at position (1, 0) is out of range for a vocabulary of 4 "
                   "(valid ids 0..3)")
test_fail(lambda: _check_ids('embedding', np.array([0, -1, 9]), 4),
          contains="token id -1 at position (1,)")
test_fail(lambda: _check_ids('embedding', np.array([1., 2.]), 4),
          contains="token ids must be integers, got dtype float64")
test_fail(lambda: _check_ids('embedding', np.array([True]), 4), contains="got dtype bool")

# %% [markdown]
# ## The lookup
#
# With a table $W$ of shape `(num_embeddings, embedding_dim)` and ids of any shape, the output has
# the ids' shape with `embedding_dim` appended: `(B, T)` ids give `(B, T, embedding_dim)` vectors,
# and the vector at `[b, t]` is row `ids[b, t]` of $W$. `np.take(W, ids, axis=0)` is that gather.
#
# The op records only the table as its input: the ids are integers and have no gradient. They go
# into the op's settings (as `ids`, with `padding_idx`), where the gradient rule finds them.
# `padding_idx`, as in PyTorch, names a row that never receives a gradient, for the padding token of
# batches of unequal lengths.

# %%
#| export
def embedding(input,            # integer token ids, a Tensor or array of any shape
              weight: Tensor,   # the table, (num_embeddings, embedding_dim)
              padding_idx=None, # a row that receives no gradient, or None
             ) -> Tensor:
    "Rows of `weight` picked by the ids: (*input.shape, embedding_dim); one op, `embedding`."
    ids = input.data if isinstance(input, Tensor) else np.asarray(input)
    if weight.ndim != 2: raise ValueError(f"embedding: weight must be 2-D (num_embeddings, "
                                          f"embedding_dim), got shape {weight.shape}")
    _check_ids('embedding', ids, weight.shape[0])
    # Set `out` (*ids.shape, embedding_dim) to the rows of the table that the ids name.
    ### BEGIN SOLUTION
    out = np.take(weight.data, ids, axis=0)                            # (*ids.shape, embedding_dim)
    ### END SOLUTION
    # the gradient rule reads the ids and padding_idx
    return Tensor._from_op(out, 'embedding', (weight,), ids=ids, padding_idx=padding_idx)

# %% [markdown]
# A worked example: row $r$ of the table below is $(r, 10r)$, so each output vector shows which id
# it came from.

# %%
W = Tensor([[0., 0.], [1., 10.], [2., 20.], [3., 30.]])             # (4, 2)
ids = Tensor([[1, 3], [3, 0]])                                      # (2, 2)
out = embedding(ids, W)
test_eq(out.shape, (2, 2, 2))
test_eq(out.numpy(), [[[1., 10.], [3., 30.]], [[3., 30.], [0., 0.]]])
test_eq(embedding(Tensor(2), W).numpy(), [2., 20.])                   # a 0-d id gives one vector
test_eq(embedding(np.zeros((0, 5), np.int64), W).shape, (0, 5, 2))  # no ids, no vectors
test_eq(embedding([1, 1], W).dtype, np.float32)
test_fail(lambda: embedding(Tensor([[1, 4]]), W), contains="token id 4 at position (0, 1)")
test_fail(lambda: embedding(Tensor([1.5]), W), contains="must be integers")
test_fail(lambda: embedding([0], Tensor([1., 2.])), contains="weight must be 2-D")
with trace_ops() as ops: embedding(ids, W, padding_idx=0)
test_eq(ops, [('embedding', ('ids', 'padding_idx'))])

# %% [markdown]
# The lookup is a matrix product in disguise. Write each id as a one-hot row $e_r$ (1 in column $r$,
# 0 elsewhere); then $e_r W$ is row $r$ of $W$, and a batch of ids is the product $E W$ with $E$ of
# shape `(N, num_embeddings)`. The gather computes the same thing without multiplying by all those
# zeros. The product form tells us the gradient: $\partial L / \partial W = E^T G$.

# %%
E = np.eye(4, dtype=np.float32)[ids.numpy().reshape(-1)]           # (4 ids, 4 rows) one-hot
test_eq(E @ W.numpy(), out.numpy().reshape(-1, 2))

# %% [markdown]
# ## The gradient: a scatter-add
#
# Row $r$ of $E^T G$ is the sum of the upstream gradient rows $g_p$ over the positions $p$ whose id
# is $r$:
#
# $$\frac{\partial L}{\partial W_r} = \sum_{p \,:\, \text{ids}_p = r} g_p .$$
#
# Rows that no position used get 0; a row used three times gets three gradients added. The obvious
# NumPy line, `grad[ids] += g`, is wrong for repeated ids: fancy-index assignment writes each row
# once, so only one of the gradients survives. The cell shows it.

# %%
g = np.ones((3, 2), np.float32)                                     # three positions, all with id 1
wrong = np.zeros((4, 2), np.float32); wrong[[1, 1, 1]] += g
right = np.zeros((4, 2), np.float32); np.add.at(right, [1, 1, 1], g)
print(f"grad[ids] += g gives row 1 = {wrong[1]}; np.add.at gives {right[1]}")
test_eq(wrong[1], [1., 1.])
test_eq(right[1], [3., 3.])

# %% [markdown]
# `np.add.at` accumulates correctly. Called with a 2-D table and one id per row it is slow, though:
# NumPy handles each id as a separate sub-array update. Three other ways give the same sums:
#
# - **flat**: compute, for every element of $G$, its index in the flattened table (`id *
#   embedding_dim + column`) and call `np.add.at` once on 1-D arrays, the case NumPy has a fast loop
#   for;
# - **bincount**: `np.bincount(ids, weights=G[:, j], minlength=num)` for each column $j$, a loop
#   over the columns;
# - **sort**: sort the positions by id and sum each run of equal ids with `np.add.reduceat`.
#
# The cell times all four with `compare` (after a warm-up, 5 rounds in which each form takes a
# sample of 3 calls in turn; the median per call) on a character-level vocabulary and a word-level
# one, and checks that they agree. The gradient rule below uses whichever form the measurement
# favours; on the machine this was written on it was the flat form at both sizes, and the cell
# prints the ratios so that you can check yours.

# %%
def scatter_rows(ids, g, num):
    "np.add.at on rows: the obvious form."
    out = np.zeros((num, g.shape[1]), g.dtype); np.add.at(out, ids, g); return out

def scatter_flat(ids, g, num):
    "np.add.at on the flattened table: one 1-D call."
    dim = g.shape[1]
    out = np.zeros((num, dim), g.dtype)
    np.add.at(out.reshape(-1), (ids[:, None] * dim + np.arange(dim)).reshape(-1), g.reshape(-1))
    return out

def scatter_bincount(ids, g, num):
    "np.bincount once per column."
    cols = [np.bincount(ids, weights=g[:, j], minlength=num) for j in range(g.shape[1])]
    return np.stack(cols, 1).astype(g.dtype)

def scatter_sort(ids, g, num):
    "Sort positions by id, then sum each run of equal ids."
    order = np.argsort(ids, kind='stable'); s = ids[order]
    starts = np.flatnonzero(np.r_[True, s[1:] != s[:-1]])
    out = np.zeros((num, g.shape[1]), g.dtype)
    out[s[starts]] = np.add.reduceat(g[order], starts, axis=0)
    return out

# %%
rng = np.random.default_rng(0)
methods = {'add.at rows': scatter_rows, 'add.at flat': scatter_flat, 'bincount': scatter_bincount,
           'sort': scatter_sort}
for num, n_ids, dim in [(65, 8 * 256, 128), (10_000, 8 * 256, 256)]:
    ids_, g_ = rng.integers(0, num, n_ids), rng.standard_normal((n_ids, dim), dtype=np.float32)
    ref = scatter_rows(ids_, g_, num)
    # float32 sums of at most 2048 terms of size ~1
    for f in methods.values(): test_close(f(ids_, g_, num), ref, eps=1e-4)
    c = compare({name: (lambda f=f: f(ids_, g_, num)) for name, f in methods.items()},
                rounds=5, number=3)
    times = {name: c[name].median for name in methods}
    print(f"vocabulary {num:>6,}, {n_ids} ids, dim {dim}: " +
          ", ".join(f"{name} {t*1e3:.2f} ms" for name, t in times.items()) +
          f"; add.at rows / add.at flat = {times['add.at rows'] / times['add.at flat']:.1f}x")

# %% [markdown]
# The rule, then, is the flat scatter-add. The index arithmetic runs in `np.intp`, so ids stored as
# `uint8` or `int16` cannot overflow when multiplied by `embedding_dim`. The padding row's gradient
# is set to 0.

# %%
#| export
@grad_rule('embedding')
def _embedding_grad(g, out, weight, ids, padding_idx):
    "dL/dW (num_embeddings, embedding_dim): row r sums the upstream gradients g where the id is r."
    num, dim = weight.shape
    # Set `gw` to the flat scatter-add of g into a zero table; the padding row stays 0.
    ### BEGIN SOLUTION
    gw = np.zeros((num, dim), g.dtype)  # (num_embeddings, embedding_dim)
    # (N, dim) positions in gw.reshape(-1)
    flat = ids.reshape(-1, 1).astype(np.intp) * dim + np.arange(dim)
    np.add.at(gw.reshape(-1), flat.reshape(-1), g.reshape(-1))         # repeated ids accumulate
    if padding_idx is not None: gw[padding_idx] = 0
    ### END SOLUTION
    return (gw,)

# %% [markdown]
# By hand: with ids `[[1, 3], [3, 0]]` and $L = \sum$ of all outputs, every used row gets one
# gradient of ones per use: row 3 was used twice, rows 0 and 1 once, row 2 never.

# %%
W = Tensor(np.zeros((4, 2)), requires_grad=True)
embedding(ids, W).sum().backward()
test_eq(W.grad, [[1., 1.], [1., 1.], [0., 0.], [2., 2.]])
W.grad = None
embedding(Tensor(np.array([[1, 3], [3, 0]], np.uint8)), W, padding_idx=3).sum().backward()
test_eq(W.grad, [[1., 1.], [1., 1.], [0., 0.], [0., 0.]])            # the padding row gets nothing

# %% [markdown]
# `gradcheck` compares the rule with finite differences, with ids that repeat within and across
# rows, stored as `int64` and as `uint8`. (`padding_idx` departs from the true gradient on purpose,
# so it is checked by the worked example above, not by finite differences.)

# %%
test_eq(gradcheck(lambda w: embedding(Tensor([[0, 2, 2], [1, 2, 0]]), w),
                  randn(4, 3, seed=0, dtype=np.float64).requires_grad_()), True)
test_eq(gradcheck(lambda w: embedding(np.array([[0, 2, 2], [1, 2, 0]], np.uint8), w) * 2,
                  randn(4, 3, seed=1, dtype=np.float64).requires_grad_()), True)
test_eq(gradcheck(lambda w: embedding(Tensor(3), w),
                  randn(5, 2, seed=2, dtype=np.float64).requires_grad_()), True)

# %% [markdown]
# ## The Embedding layer
#
# `Embedding(num_embeddings, embedding_dim)` holds the table as its parameter `weight`, with
# PyTorch's name, shape and initialisation: every entry drawn from the standard normal distribution
# $N(0, 1)$, from the tensor module's generator, so `manual_seed` makes it reproducible. With
# `padding_idx` set, that row starts at zero and, having no gradient, stays there. A negative
# `padding_idx` counts from the end, as in PyTorch.

# %%
#| export
class Embedding(Module):
    "A table of `num_embeddings` learned vectors of size `embedding_dim`; `weight` from N(0, 1)."
    def __init__(self,
                 num_embeddings: int,  # vocabulary size: ids 0..num_embeddings-1
                 embedding_dim: int,   # size of each vector
                 padding_idx=None,     # a row that starts at zero and gets no gradient, or None
                ):
        super().__init__()
        if not all(isinstance(n, (int, np.integer)) and n > 0
                   for n in (num_embeddings, embedding_dim)):
            raise ValueError(f"Embedding: sizes must be positive integers, got {num_embeddings=}, "
                             f"{embedding_dim=}")
        if padding_idx is not None:
            if not -num_embeddings <= padding_idx < num_embeddings:
                raise ValueError(f"Embedding: padding_idx={padding_idx} is out of range for "
                                 f"num_embeddings={num_embeddings}")
            padding_idx %= num_embeddings
        self.num_embeddings, self.embedding_dim, self.padding_idx = (num_embeddings, embedding_dim,
                                                                     padding_idx)
        # (num_embeddings, embedding_dim)
        self.weight = Parameter(randn(num_embeddings, embedding_dim))
        if padding_idx is not None: self.weight.data[padding_idx] = 0

    def forward(self, input) -> Tensor:
        "Look up the vectors of `input` (integer ids of any shape): (*input.shape, embedding_dim)."
        return embedding(input, self.weight, self.padding_idx)

    def extra_repr(self) -> str:
        pad = '' if self.padding_idx is None else f", padding_idx={self.padding_idx}"
        return f"{self.num_embeddings}, {self.embedding_dim}{pad}"

# %%
manual_seed(0)
emb = Embedding(10, 3)
test_eq(repr(emb), "Embedding(10, 3)")
test_eq([(n, p.shape) for n, p in emb.named_parameters()], [('weight', (10, 3))])
x = Tensor([[1, 2, 4], [4, 3, 9]])
test_eq(emb(x).shape, (2, 3, 3))
test_eq(emb(x).numpy()[1, 0], emb.weight.numpy()[4])
manual_seed(0); test_eq(Embedding(10, 3).weight.numpy(), emb.weight.numpy())   # reproducible
pad = Embedding(5, 2, padding_idx=-1)
test_eq((pad.padding_idx, pad.weight.numpy()[4]), (4, [0., 0.]))
test_eq(repr(pad), "Embedding(5, 2, padding_idx=4)")
test_fail(lambda: emb(Tensor([[1, 2], [10, 0]])),
          contains="token id 10 at position (1, 0) is out of range for a vocabulary of 10")
test_fail(lambda: Embedding(0, 3), contains="sizes must be positive integers, got num_embeddings=0")
test_fail(lambda: Embedding(5, 2, padding_idx=5), contains="padding_idx=5 is out of range")

# %% [markdown]
# The initial table has mean 0 and standard deviation 1 (within sampling error, about $1/\sqrt{n}$
# for $n$ draws), and a training step updates only the rows the batch used.

# %%
big = Embedding(1000, 100)
w = big.weight.numpy()
print(f"weight mean {w.mean():+.4f}, std {w.std():.4f} over {w.size:,} entries")
test_close(w.mean(), 0., eps=5 / math.sqrt(w.size))                # 5 standard errors
test_close(w.std(), 1., eps=5 / math.sqrt(2 * w.size))             # std of a sample std: 1/sqrt(2n)
big(Tensor([[5, 7, 5]])).sum().backward()
test_eq(sorted(np.flatnonzero(np.abs(big.weight.grad).sum(1))), [5, 7])

# %% [markdown]
# ## Why positions are needed
#
# Self-attention (the attention module builds it) mixes the vectors of a sequence with weights
# computed from the vectors themselves: $\mathrm{softmax}(X X^T / \sqrt d)\, X$ in its simplest
# form. Permute the rows of $X$ and the weights are permuted in both axes, so the output rows come
# out permuted in the same way and are otherwise unchanged: the operation is
# *permutation-equivariant*. "dog bites man" and "man bites dog" give each word the same vector. The
# cell checks it with the bare formula in NumPy, and shows that adding a different vector for each
# position breaks the symmetry.

# %%
def toy_self_attention(x: np.ndarray) -> np.ndarray:
    "softmax(x x^T / sqrt(d)) x for x of shape (T, d), without masks or projections."
    s = x @ x.T / math.sqrt(x.shape[1])                               # (T, T)
    p = np.exp(s - s.max(1, keepdims=True)); p /= p.sum(1, keepdims=True)
    return p @ x                                                      # (T, d)

manual_seed(0)
vocab = {'dog': 0, 'bites': 1, 'man': 2}
tok = Embedding(3, 8)
a = tok(Tensor([vocab[w] for w in "dog bites man".split()])).numpy()     # (3, 8)
b = tok(Tensor([vocab[w] for w in "man bites dog".split()])).numpy()
perm = [2, 1, 0]  # b is a with its rows reversed
# same vectors, reordered (float32 sums of 8 terms)
test_close(toy_self_attention(b), toy_self_attention(a)[perm], eps=1e-5)
pos = np.random.default_rng(1).standard_normal((3, 8)).astype(np.float32)  # a vector per position
ya, yb = toy_self_attention(a + pos), toy_self_attention(b + pos)
print(f"without positions, 'dog' gets the same output in both orders; with them the outputs "
      f"differ by {np.abs(ya[0] - yb[2]).max():.3f} (largest entry)")
test_eq(np.allclose(ya[0], yb[2], atol=1e-3), False)

# %% [markdown]
# ## The sinusoidal table
#
# Vaswani et al. (2017) give position $p$ the vector
#
# $$PE_{p,\,2i} = \sin\!\left(\frac{p}{10000^{2i/d}}\right), \qquad
#   PE_{p,\,2i+1} = \cos\!\left(\frac{p}{10000^{2i/d}}\right),$$
#
# with $d$ = `d_model`: each pair of columns is a sine and a cosine of one frequency, and the
# wavelengths grow geometrically from $2\pi$ to $10000 \cdot 2\pi$. Nothing is learned, every
# position up to `max_len` has a distinct vector, and the values stay in $[-1, 1]$, on the scale of
# the token vectors they are added to.
#
# The angles are computed in float64 and only the table is stored in float32. The fastest column's
# angle is the position itself, in radians, and float32 numbers near a large position are far apart;
# the cell after the tests prints how far, and what that would do to the table. An odd `d_model`
# gets one more sine column than cosine columns.

# %%
#| export
def sinusoidal_table(max_len: int,  # number of positions, 0..max_len-1
                     d_model: int,  # size of each position's vector
                    ) -> np.ndarray:
    "The (max_len, d_model) float32 table: sin(p / 10000^(2i/d)) in column 2i, cos in 2i+1."
    if not all(isinstance(n, (int, np.integer)) and n > 0 for n in (max_len, d_model)):
        raise ValueError(f"sinusoidal_table: sizes must be positive integers, got {max_len=}, "
                         f"{d_model=}")
    ### BEGIN SOLUTION
    pos = np.arange(max_len, dtype=np.float64)[:, None]                # (max_len, 1)
    inv_freq = 10000.0 ** (-np.arange(0, d_model, 2) / d_model)  # (ceil(d/2),) 1 / 10000^(2i/d)
    angles = pos * inv_freq                                            # (max_len, ceil(d/2))
    pe = np.empty((max_len, d_model), np.float32)
    pe[:, 0::2] = np.sin(angles)                                       # even columns
    pe[:, 1::2] = np.cos(angles[:, :d_model // 2])                     # odd columns
    return pe
    ### END SOLUTION

# %% [markdown]
# By hand, for $d = 4$: the two frequencies are $1$ and $1/10000^{2/4} = 1/100$, so position 0 is
# $(0, 1, 0, 1)$ and position 1 is $(\sin 1, \cos 1, \sin 0.01, \cos 0.01)$.

# %%
pe = sinusoidal_table(3, 4)
test_eq(pe.dtype, np.float32)
test_eq(pe[0], [0., 1., 0., 1.])
# float32 rounding of values <= 1
test_close(pe[1], [math.sin(1), math.cos(1), math.sin(0.01), math.cos(0.01)], eps=1e-7)
# odd d_model
test_close(sinusoidal_table(2, 3)[1], [math.sin(1), math.cos(1), math.sin(10000 ** (-2 / 3))],
           eps=1e-7)
test_eq(sinusoidal_table(4, 1)[:, 0], np.sin(np.arange(4)).astype(np.float32))
test_fail(lambda: sinusoidal_table(0, 4),
          contains="sizes must be positive integers, got max_len=0, d_model=4")

# %% [markdown]
# The angles in float32 instead, at position 5000: the error of the sines is of the order of
# float32's spacing there, against the half-spacing rounding of values below 1 in the stored table.

# %%
p = 5000
inv = 10000.0 ** (-np.arange(0, 64, 2) / 64)                       # (32,) frequencies
exact = np.sin(p * inv)
err32 = np.abs(np.sin((np.float32(p) * inv.astype(np.float32)).astype(np.float64)) - exact).max()
err_table = np.abs(sinusoidal_table(p + 1, 64)[p, 0::2] - exact).max()
print(f"float32 spacing near {p}: {np.spacing(np.float32(p)):.1e}; sines of float32 angles off by "
      f"up to {err32:.1e}; stored table off by up to {err_table:.1e}")
test_eq(bool(err_table <= 2**-25 + 1e-12), True)

# %% [markdown]
# The picture: each column oscillates along the positions, the left columns quickly and the right
# ones slowly, so that the pattern of a row identifies the position like the digits of a clock.

# %%
table = sinusoidal_table(128, 64)
fig, ax = plt.subplots(figsize=(7, 3.5))
im = ax.imshow(table, aspect='auto', cmap='RdBu', vmin=-1, vmax=1)
ax.set(xlabel='column (2i: sin, 2i+1: cos)', ylabel='position p',
       title='sinusoidal positional encoding, d_model = 64')
fig.colorbar(im, ax=ax); plt.tight_layout(); plt.show()

# %% [markdown]
# Two properties explain the choice. For each frequency $\omega$, the pair $(\sin \omega(p+k), \cos
# \omega(p+k))$ is the pair at $p$ rotated by the angle $\omega k$, whatever $p$ is: moving $k$
# positions is the same linear map everywhere, which a layer can learn once. And the dot product of
# two rows, $\sum_i \sin\omega_i p \sin\omega_i q + \cos\omega_i p \cos\omega_i q = \sum_i \cos
# \omega_i (p - q)$, depends only on the distance $p - q$. The cell checks both on the float32
# table. Each stored entry is within half a float32 spacing, $2^{-25}$, of the exact value for
# entries of size below 1, so the rotation of a stored pair is within $(\sqrt 2 + 1) \cdot 2^{-25}$
# of the stored pair $k$ rows later, and a dot product of 64 entries within $64 \cdot 2 \cdot
# 2^{-25}$ of the exact one.

# %%
k = 7
w_ = 10000.0 ** (-np.arange(0, 64, 2) / 64)                        # (32,) frequencies
c, s = np.cos(w_ * k), np.sin(w_ * k)
sin_p, cos_p = table[:-k, 0::2].astype(np.float64), table[:-k, 1::2].astype(np.float64)
rotated_sin, rotated_cos = sin_p * c + cos_p * s, cos_p * c - sin_p * s   # (121, 32) each
err = max(np.abs(rotated_sin - table[k:, 0::2]).max(), np.abs(rotated_cos - table[k:, 1::2]).max())
print(f"rotation by {k} positions: largest error {err:.1e}, bound "
      f"{(math.sqrt(2) + 1) * 2**-25:.1e}")
# + float64 rounding of the angles, ~1e-14
test_eq(bool(err <= (math.sqrt(2) + 1) * 2**-25 + 1e-12), True)
gram = table.astype(np.float64) @ table.T.astype(np.float64)      # (128, 128) dot products
for d in (0, 1, 10):
    diag = np.diagonal(gram, d)  # the dot products of all pairs at distance d
    print(f"distance {d:>2}: dot product {diag.min():.4f} .. {diag.max():.4f} over {diag.size} "
          f"pairs")
    test_close(diag, np.cos(w_ * d).sum(), eps=64 * 2 * 2**-25)

# %% [markdown]
# ## Positional encoding with a start position
#
# `PositionalEncoding(max_len, d_model)` keeps the table as a buffer named `pe`: it is saved with
# the model but it is not a parameter, so no optimizer changes it. Its `forward(x_or_T, start=0)`
# serves both ways the vectors are used:
#
# - `forward(T, start)` with an integer returns the `(T, d_model)` encodings of positions `start ..
#   start+T-1`;
# - `forward(x, start)` with a tensor `x` of shape `(..., T, d_model)` (batch first, `(B, T,
#   d_model)` for a batch) returns `x` plus those encodings, broadcast over the leading axes.
#
# `start` is the position of the first of the `T` vectors. A full pass over a sequence uses
# `start=0`. Generation with a cache of earlier keys and values (`MultiHeadAttention` takes one)
# feeds only the new tokens, and passes `start` = the number of tokens already processed, so the
# token at position $t$ gets row $t$ of the table whether it arrived in a full pass or on its own. A
# span that reaches past `max_len` is an error naming the span, not a silently shorter slice. The
# range check is shared with the learned embedding below.

# %%
#| export
def _span(name: str, x_or_T, start: int, max_len: int, d_model: int) -> int:
    "Check `x_or_T` (an int T or a (..., T, d_model) Tensor) and `start`; return T."
    if isinstance(x_or_T, (int, np.integer)): T = int(x_or_T)
    elif isinstance(x_or_T, Tensor):
        if x_or_T.ndim < 2 or x_or_T.shape[-1] != d_model:
            raise ValueError(f"{name}: expected an int T or a tensor of shape (..., T, {d_model}), "
                             f"got shape {x_or_T.shape}")
        T = x_or_T.shape[-2]
    else: raise TypeError(f"{name}: expected an int T or a Tensor, got {type(x_or_T).__name__}")
    if not isinstance(start, (int, np.integer)) or start < 0 or T < 0:
        raise ValueError(f"{name}: start and T must be non-negative integers, got start={start!r}, "
                         f"T={T}")
    if start + T > max_len:
        raise IndexError(f"{name}: positions {start}..{start + T - 1} go beyond max_len={max_len}")
    return T

# %%
test_eq(_span('pe', 5, 0, 8, 4), 5)
test_eq(_span('pe', zeros(2, 3, 4), 5, 8, 4), 3)
test_eq(_span('pe', 0, 8, 8, 4), 0)  # an empty span at the end is allowed
test_fail(lambda: _span('pe', 3, 6, 8, 4), contains="pe: positions 6..8 go beyond max_len=8")
test_fail(lambda: _span('pe', zeros(2, 3, 5), 0, 8, 4),
          contains="shape (..., T, 4), got shape (2, 3, 5)")
test_fail(lambda: _span('pe', 3, -1, 8, 4), contains="got start=-1")
test_fail(lambda: _span('pe', [1, 2], 0, 8, 4), contains="got list")

# %%
#| export
class PositionalEncoding(Module):
    "Adds (or returns) the sinusoidal encodings of positions start..start+T-1 (buffer `pe`)."
    def __init__(self,
                 max_len: int,  # number of positions the table covers
                 d_model: int,  # size of each vector
                ):
        super().__init__()
        self.max_len, self.d_model = max_len, d_model
        self.register_buffer('pe', Tensor(sinusoidal_table(max_len, d_model)))  # (max_len, d_model)

    def forward(self, x_or_T, start: int = 0) -> Tensor:
        "`x + pe[start:start+T]` for a (..., T, d_model) `x`; `pe[start:start+T]` for an int T."
        T = _span('PositionalEncoding', x_or_T, start, self.max_len, self.d_model)
        pe = self.pe[start:start + T]                                   # (T, d_model)
        return pe if isinstance(x_or_T, (int, np.integer)) else x_or_T + pe

    def extra_repr(self) -> str: return f"max_len={self.max_len}, d_model={self.d_model}"

# %% [markdown]
# The test that matters for generation: encode a batch of sequences in one pass, then feed the same
# tokens one at a time and in chunks, each with its own `start`. Every position gets exactly the
# same vector (the same rows of the same table are added to the same numbers, so the results are
# equal, not merely close).

# %%
penc = PositionalEncoding(16, 8)
test_eq(repr(penc), "PositionalEncoding(max_len=16, d_model=8)")
# a buffer, not a parameter
test_eq((list(penc.parameters()), list(penc.state_dict())), ([], ['pe']))
x = randn(2, 10, 8, seed=0)                                          # (B, T, d_model)
full = penc(x).numpy()                                               # (2, 10, 8)
for t in range(10): test_eq(penc(x[:, t:t + 1], start=t).numpy(), full[:, t:t + 1])
test_eq(penc(x[:, 4:10], start=4).numpy(), full[:, 4:])
test_eq(penc(3, start=2).numpy(), sinusoidal_table(16, 8)[2:5])
test_eq(penc(x[0]).numpy(), full[0])  # (T, d_model) without a batch axis
test_fail(lambda: penc(x, start=7),
          contains="PositionalEncoding: positions 7..16 go beyond max_len=16")

# %% [markdown]
# ## Learned positions
#
# GPT-2 learns a vector per position instead: a second table, `(max_len, d_model)`, initialised like
# `Embedding`'s and trained with the rest of the model. It can fit whatever the data wants but says
# nothing about positions past `max_len`, which it never saw. `LearnedPositionalEmbedding` keeps the
# parameter under PyTorch's name `weight`, so its `state_dict` matches an `nn.Embedding(max_len,
# d_model)` (GPT-2's `wpe`), and has the same `forward(x_or_T, start=0)` as `PositionalEncoding`.
# The rows of a span are a slice of the table, so the gradient is the slicing op's: it goes to the
# rows used, and to no others.

# %%
#| export
class LearnedPositionalEmbedding(Module):
    "A learned vector per position, `weight` (max_len, d_model) from N(0, 1), added or returned."
    def __init__(self,
                 max_len: int,  # number of positions
                 d_model: int,  # size of each vector
                ):
        super().__init__()
        if not all(isinstance(n, (int, np.integer)) and n > 0 for n in (max_len, d_model)):
            raise ValueError(f"LearnedPositionalEmbedding: sizes must be positive integers, got "
                             f"{max_len=}, {d_model=}")
        self.max_len, self.d_model = max_len, d_model
        self.weight = Parameter(randn(max_len, d_model))                # (max_len, d_model)

    def forward(self, x_or_T, start: int = 0) -> Tensor:
        "`x + weight[start:start+T]` for a (..., T, d_model) `x`; the rows alone for an int T."
        T = _span('LearnedPositionalEmbedding', x_or_T, start, self.max_len, self.d_model)
        pe = self.weight[start:start + T]                               # (T, d_model)
        return pe if isinstance(x_or_T, (int, np.integer)) else x_or_T + pe

    def extra_repr(self) -> str: return f"max_len={self.max_len}, d_model={self.d_model}"

# %%
manual_seed(0)
lpe = LearnedPositionalEmbedding(16, 8)
test_eq([(n, p.shape) for n, p in lpe.named_parameters()], [('weight', (16, 8))])
full = lpe(x).numpy()
for t in range(10): test_eq(lpe(x[:, t:t + 1], start=t).numpy(), full[:, t:t + 1])
test_eq(lpe(4, start=3).numpy(), lpe.weight.numpy()[3:7])
lpe(x[:, :3], start=5).sum().backward()
test_eq(np.flatnonzero(np.abs(lpe.weight.grad).sum(1)), [5, 6, 7])  # only the rows of the span
test_eq(lpe.weight.grad[5], np.full(8, 2.))  # one gradient of ones per sequence in the batch
test_fail(lambda: lpe(17),
          contains="LearnedPositionalEmbedding: positions 0..16 go beyond max_len=16")
test_fail(lambda: LearnedPositionalEmbedding(16, 0), contains="got max_len=16, d_model=0")

# %% [markdown]
# Both forward passes are differentiable in `x`, and the learned one in its table; `gradcheck` on
# float64 copies:

# %%
lpe.weight = Parameter(Tensor(lpe.weight.data, dtype=np.float64))
xs = randn(2, 3, 8, seed=3, dtype=np.float64).requires_grad_()
test_eq(gradcheck(lambda x, w: lpe(x, start=4) * lpe(3, start=1), xs, lpe.weight), True)
test_eq(gradcheck(lambda x: penc(x, start=2) * x, xs), True)

# %% [markdown]
# ## Token and position together
#
# The input of a transformer is the sum of the two: `tok(ids) + pos(T)`, shape `(B, T, d_model)`.
# For a character-level model of 65 symbols with `d_model = 64` and a context of 256 positions, the
# cell counts what each part costs: the token table has a row per symbol, the learned positions a
# row per position, and the sinusoidal table has no parameters at all.

# %%
manual_seed(0)
tok, wpe, sin_pe = (Embedding(65, 64), LearnedPositionalEmbedding(256, 64),
                    PositionalEncoding(256, 64))
ids = Tensor(np.random.default_rng(0).integers(0, 65, (4, 32)))     # (B, T)
h = tok(ids) + wpe(ids.shape[1])                                      # (B, T, d_model)
test_eq(h.shape, (4, 32, 64))
test_eq(sin_pe(tok(ids)).shape, (4, 32, 64))
for name, m in [('token Embedding(65, 64)', tok), ('LearnedPositionalEmbedding(256, 64)', wpe),
                ('PositionalEncoding(256, 64)', sin_pe)]:
    n_par = sum(p.size for p in m.parameters())
    n_buf = sum(b.size for _, b in m.named_buffers())
    print(f"{name:36} {n_par:>6,} parameters, {n_buf:>6,} buffer entries")

# %% [markdown]
# ## Summary
#
# `embedding` gathers rows of a table and its gradient scatters the upstream gradient back into
# them, adding up repeated ids with one flat `np.add.at`. `Embedding` wraps the table with PyTorch's
# name, shape and $N(0, 1)$ initialisation. Positions get vectors from `PositionalEncoding` (fixed
# sines and cosines, a buffer) or `LearnedPositionalEmbedding` (a parameter); both take a start
# position, so that a sequence processed in pieces gets exactly the vectors of a full pass, which
# the KV cache of the attention module relies on.
