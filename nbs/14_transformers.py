# %%
#| default_exp models.transformer

# %% [markdown]
# # Transformers
#
# > The pre-LayerNorm transformer block and nanoGPT's GPT, generating from cached keys and values.

# %% [markdown]
# The earlier modules built every part: token and position embeddings, causal multi-head attention
# that can continue from cached keys and values, layer normalization, dropout, GELU, linear layers,
# cross-entropy, AdamW. This module stacks them into Radford et al.'s GPT-2, in the layout and with
# the parameter names of Karpathy's nanoGPT (`model.py`):
#
# - `MLP`, the position-wise feed-forward layer: `fc` widens to $4C$, GELU, `proj` narrows back to
#   $C$;
# - `TransformerBlock`: $x \leftarrow x + \mathrm{attn}(\mathrm{ln}_1(x))$, then
#   $x \leftarrow x + \mathrm{mlp}(\mathrm{ln}_2(x))$;
# - `GPT`: embeddings, `n_layer` blocks, a final LayerNorm and a head that turns each position's
#   vector into one score (logit) per token of the vocabulary, with `generate`, which samples text
#   one token at a time.
#
# Generation feeds the prompt once, then each new token alone, together with the keys and values
# cached from the earlier positions and the position at which the new token starts. Each step then
# costs $O(T)$ instead of the $O(T^2)$ of a full pass, and the logits are those of the full pass.
# The notebook counts parameters and FLOPs, trains a small character-level model on Shakespeare for
# a few seconds, and measures cached against uncached generation. Every exercise sits between
# `### BEGIN SOLUTION` and `### END SOLUTION`; the cells under it test it.

# %%
#| export
import functools
import math
from dataclasses import dataclass
from typing import Callable

import numpy as np
from fastcore.basics import patch

from tinytorch.core.tensor import Tensor, randn
from tinytorch.core.autograd import no_grad
from tinytorch.core.layers import Module, Linear
from tinytorch.core.activations import GELU
from tinytorch.core.normalization import LayerNorm, Dropout
from tinytorch.core.losses import cross_entropy
from tinytorch.core.attention import MultiHeadAttention
from tinytorch.text.embeddings import Embedding, LearnedPositionalEmbedding
from tinytorch.core.tensor import _wrap
from tinytorch.core.autograd import is_grad_enabled
from tinytorch.core.attention import _causal_bias
from tinytorch.text.embeddings import _check_ids

# %%
#| hide
import matplotlib.pyplot as plt
from fastcore.test import test_eq, test_fail, test_close

from tinytorch.core.tensor import manual_seed, zeros
from tinytorch.core.autograd import gradcheck
from tinytorch.core.layers import Parameter
from tinytorch.core.optimizers import AdamW, CosineWarmupLR, clip_grad_norm_
from tinytorch.text.tokenization import CharTokenizer, load_shakespeare
from tinytorch.utils.timing import Timer, blas_threads, compare

# %% [markdown]
# ## The feed-forward layer
#
# Attention mixes information *between* positions; the MLP then transforms each position on its own:
# $\mathrm{MLP}(x) = \mathrm{GELU}(x W_{fc}^T + b_{fc})\, W_{proj}^T + b_{proj}$, with a hidden
# width of $4C$ as in GPT-2. It holds two thirds of a block's weights ($8C^2$ of $12C^2$). The
# dropout at its end is the residual dropout of nanoGPT, active only in training. GELU is GPT-2's
# tanh approximation, $\tfrac12 x (1 + \tanh(\sqrt{2/\pi}(x + 0.044715 x^3)))$, as in OpenAI's GPT-2
# code; nanoGPT uses the exact $x\Phi(x)$, which here is an `erf` evaluated in NumPy by a polynomial
# and an `exp`. The choice follows GPT-2 rather than speed: the cell below measures the forward pass
# of both on one MLP's hidden layer.

# %%
#| export
class MLP(Module):
    "Position-wise feed-forward layer: Linear(C, 4C), GELU, Linear(4C, C), dropout."
    def __init__(self,
                 n_embd: int,           # C, the size of each position's vector
                 dropout: float = 0.0,  # probability of dropping an output element in training
                 bias: bool = True,     # biases in fc and proj?
                ):
        super().__init__()
        self.fc = Linear(n_embd, 4 * n_embd, bias=bias)     # (4C, C)
        self.gelu = GELU(approximate='tanh')                # GPT-2's tanh approximation
        self.proj = Linear(4 * n_embd, n_embd, bias=bias)   # (C, 4C)
        self.dropout = Dropout(dropout)

    def forward(self, x: Tensor) -> Tensor:
        "(B, T, C) -> (B, T, C)."
        return self.dropout(self.proj(self.gelu(self.fc(x))))   # (B, T, 4C) inside, (B, T, C) out

# %%
manual_seed(0)
mlp = MLP(8)
test_eq([(n, p.shape) for n, p in mlp.named_parameters()],
        [('fc.weight', (32, 8)), ('fc.bias', (32,)), ('proj.weight', (8, 32)), ('proj.bias', (8,))])
x = randn(2, 3, 8, seed=1)
test_eq(mlp(x).shape, (2, 3, 8))
# each position on its own; BLAS may order the 8 + 32 products differently: float32 rounding
test_close(mlp(x)[0, 1].numpy(), mlp(x[:1, 1:2]).numpy()[0, 0], eps=1e-6)
test_fail(lambda: mlp(randn(2, 3, 7)), contains="does not end in in_features=8")

# %%
# one MLP hidden layer of a (32, 64) batch
z = randn(32 * 64, 512, seed=2)
with blas_threads(1):
    c = compare({a: (lambda a=a: GELU(a)(z)) for a in ('none', 'tanh')}, rounds=5, number=3)
print(f"GELU on {z.shape}: exact (erf) {c['none'].median * 1e3:.1f} ms, "
      f"tanh approximation {c['tanh'].median * 1e3:.1f} ms, ratio {c.ratio('none', 'tanh'):.1f} "
      f"(median of 5 alternating rounds of 3 calls)")

# %% [markdown]
# ## The transformer block
#
# GPT-2 normalises the *input* of each sub-layer (pre-LayerNorm) instead of the sum after it as the
# original transformer did. The residual stream $x$ then passes from the embeddings to the head
# through nothing but additions, so at initialisation every block starts close to the identity and
# gradients reach the early layers undiminished:
#
# $$x \leftarrow x + \mathrm{attn}(\mathrm{ln}_1(x)),
# \qquad x \leftarrow x + \mathrm{mlp}(\mathrm{ln}_2(x)).$$
#
# The block passes `past_kv` and `use_cache` through to its attention layer, so it can continue a
# sequence from cached keys and values and return the extended cache. `attn` is a
# `MultiHeadAttention` (its fused `qkv` and `proj` layers are nanoGPT's `c_attn` and `c_proj`);
# `drop` is the residual dropout after it.

# %%
#| export
class TransformerBlock(Module):
    "Pre-LayerNorm block: x + attn(ln_1(x)), then x + mlp(ln_2(x))."
    def __init__(self,
                 n_embd: int,           # C
                 n_head: int,           # attention heads; C must be divisible by it
                 dropout: float = 0.0,  # attention-weight and residual dropout in training
                ):
        super().__init__()
        self.ln_1 = LayerNorm(n_embd)
        self.attn = MultiHeadAttention(n_embd, n_head, dropout=dropout)
        self.drop = Dropout(dropout)
        self.ln_2 = LayerNorm(n_embd)
        self.mlp = MLP(n_embd, dropout)

    def forward(self,
                x: Tensor,               # (B, T, C) the new positions
                past_kv=None,            # (k, v) of earlier positions, each (B, nh, T_past, hs)
                use_cache: bool = False, # also return (k, v) of all T_past + T positions?
               ):
        "(B, T, C) -> (B, T, C), or `(y, (k, v))` with `use_cache`."
        ### BEGIN SOLUTION
        a, kv = self.attn(self.ln_1(x), past_kv=past_kv, use_cache=True)   # (B, T, C), kv
        x = x + self.drop(a)                                              # (B, T, C)
        x = x + self.mlp(self.ln_2(x))                                    # (B, T, C)
        ### END SOLUTION
        return (x, kv) if use_cache else x

# %% [markdown]
# The check below writes the block out with the layers it holds: the two residual additions, in
# order. A second check zeroes both output projections: each sub-layer then adds zero (the biases
# are zero too), and the block is the identity, which is what the scaled initialisation below
# approaches. Gradients are checked in float64 through the input and every parameter;
# `Module.double()` converts a model's parameters to float64 and keeps a parameter that two modules
# share shared.

# %%
manual_seed(0)
blk = TransformerBlock(8, 2).double()
x = randn(2, 5, 8, seed=1, dtype=np.float64)
h = x + blk.attn(blk.ln_1(x))
test_eq(blk(x).numpy(), (h + blk.mlp(blk.ln_2(h))).numpy())
y, (k, v) = blk(x, use_cache=True)
test_eq((y.shape, k.shape, v.shape), ((2, 5, 8), (2, 2, 5, 4), (2, 2, 5, 4)))
for lin in (blk.attn.proj, blk.mlp.proj): lin.weight.data[...] = 0; lin.bias.data[...] = 0
test_eq(blk(x).numpy(), x.numpy())
test_fail(lambda: blk(randn(2, 5, 6, dtype=np.float64)), contains="got shape (2, 5, 6)")

# %%
manual_seed(1)
blk = TransformerBlock(4, 2).double()
x = randn(2, 3, 4, seed=2, dtype=np.float64).requires_grad_()
test_eq(gradcheck(lambda x, *ps: blk(x), x, *blk.parameters()), True)
x, k, v = (randn(*shape, seed=s, dtype=np.float64).requires_grad_()
           for shape, s in (((1, 2, 4), 3), ((1, 2, 2, 2), 4), ((1, 2, 2, 2), 5)))
test_eq(gradcheck(lambda x, k, v: blk(x, past_kv=(k, v)), x, k, v), True)

# %% [markdown]
# ## The model's configuration
#
# nanoGPT gathers the sizes in a dataclass. The defaults below are nanoGPT's "baby GPT" for
# Shakespeare's characters; this notebook and the TinyGPT milestone use smaller ones, chosen so that
# training fits in seconds or minutes on two CPU cores.

# %%
#| export
@dataclass
class GPTConfig:
    "The sizes of a `GPT`; defaults are nanoGPT's character-level Shakespeare model."
    vocab_size: int = 65      # tokens: the distinct characters of tinyshakespeare
    block_size: int = 256     # longest context, in tokens; also the number of learned positions
    n_layer: int = 6          # transformer blocks
    n_head: int = 6           # attention heads per block
    n_embd: int = 384         # C, the width of the residual stream
    dropout: float = 0.0      # dropout probability in training (nanoGPT uses 0.2 for this model)

# %% [markdown]
# ## GPT
#
# The model, with nanoGPT's names: `transformer.wte` (token embedding, $V \times C$),
# `transformer.wpe` (learned position embedding, `block_size` $\times C$), `transformer.drop`,
# `transformer.h.0` ... `transformer.h.{L-1}` (the blocks), `transformer.ln_f` (final LayerNorm),
# and `lm_head`, a `Linear(C, V)` without bias.
#
# **Weight tying.** As in GPT-2 and nanoGPT, `lm_head.weight` *is* `transformer.wte.weight`: the
# same $V \times C$ matrix turns ids into vectors at the input and vectors into scores at the output
# (Press and Wolf, 2017). It saves $VC$ parameters, and a token's input vector and its output
# direction then learn from both uses. `parameters()` yields the shared matrix once, so the
# optimizer updates it once and the counts below include it once; `state_dict()` lists it under both
# names, as PyTorch does.
#
# **Initialisation** is nanoGPT's: every `Linear` weight and both embeddings from $N(0, 0.02^2)$,
# biases zero, LayerNorms at weight 1 and bias 0; and the two projections that write into the
# residual stream in each block (`attn.proj`, `mlp.proj`) from $N(0, (0.02/\sqrt{2L})^2)$, as GPT-2
# does, so that the $2L$ additions to the residual stream do not make its variance grow with depth.
# All draws come from the tensor module's generator, so `manual_seed` makes a model reproducible.

# %%
#| export
def _container(**modules) -> Module:
    "A Module that only holds named submodules, like `nn.ModuleDict`."
    m = Module()
    for name, sub in modules.items(): setattr(m, name, sub)
    return m

class GPT(Module):
    "nanoGPT's decoder-only transformer language model, with tied input and output embeddings."
    def __init__(self,
                 vocab_size: int,       # V, tokens in the vocabulary
                 block_size: int,       # longest sequence the model can see
                 n_layer: int,          # L, transformer blocks
                 n_head: int,           # attention heads per block
                 n_embd: int,           # C, width of the residual stream
                 dropout: float = 0.0,  # dropout in training
                ):
        super().__init__()
        self.config = GPTConfig(vocab_size, block_size, n_layer, n_head, n_embd, dropout)
        self.block_size = block_size
        self.transformer = _container(
            wte=Embedding(vocab_size, n_embd),                      # (V, C)
            wpe=LearnedPositionalEmbedding(block_size, n_embd),     # (block_size, C)
            drop=Dropout(dropout),
            h=_container(**{str(i): TransformerBlock(n_embd, n_head, dropout)
                            for i in range(n_layer)}),
            ln_f=LayerNorm(n_embd))
        self.lm_head = Linear(n_embd, vocab_size, bias=False)      # (V, C)
        self.lm_head.weight = self.transformer.wte.weight          # weight tying: one (V, C) matrix
        self._init_weights()

    @classmethod
    def from_config(cls, config: GPTConfig) -> 'GPT':
        "A GPT of the sizes in `config`."
        return cls(config.vocab_size, config.block_size, config.n_layer, config.n_head,
                   config.n_embd, config.dropout)

# %%
#| export
def _normal_(p: Tensor, std: float):
    "Fill `p` in place with N(0, std^2) draws from the tensor module's generator."
    p.data[...] = std * randn(*p.shape, dtype=p.dtype).data

@patch
def _init_weights(self: GPT):
    "nanoGPT's initialisation: N(0, 0.02^2) weights, zero biases, residual projections / sqrt(2L)."
    for name, mod in self.named_modules():
        if isinstance(mod, (Linear, Embedding, LearnedPositionalEmbedding)):
            _normal_(mod.weight, 0.02)
        if isinstance(mod, Linear) and mod.bias is not None: mod.bias.data[...] = 0
    for block in self.transformer.h.children():
        for proj in (block.attn.proj, block.mlp.proj):
            _normal_(proj.weight, 0.02 / math.sqrt(2 * self.config.n_layer))

# %%
manual_seed(0)
gpt = GPT(vocab_size=11, block_size=8, n_layer=2, n_head=2, n_embd=16)
names = [n for n, _ in gpt.named_parameters()]
print(f"{len(names)} parameter tensors, first {names[:4]}, last {names[-2:]}")
test_eq(names[:4], ['transformer.wte.weight', 'transformer.wpe.weight',
                    'transformer.h.0.ln_1.weight', 'transformer.h.0.ln_1.bias'])
# tied: yielded once, as transformer.wte.weight
test_eq('lm_head.weight' in names, False)
test_eq(gpt.lm_head.weight is gpt.transformer.wte.weight, True)
test_eq('lm_head.weight' in gpt.state_dict(), True)                  # but saved under both names
w = getattr(gpt.transformer.h, '0')                                  # the first block
# 176 draws: the sample std's std error is 0.02/sqrt(2*176) ~ 0.001; 4 of them
test_close(gpt.transformer.wte.weight.numpy().std(), 0.02, eps=0.004)
# 1,024 draws: std error 0.02/sqrt(2048) ~ 0.00044
test_close(w.mlp.fc.weight.numpy().std(), 0.02, eps=0.002)
# scaled by 1/sqrt(2L), L = 2; std error ~ 0.00022
test_close(w.mlp.proj.weight.numpy().std(), 0.02 / math.sqrt(4), eps=0.001)
test_eq(w.mlp.fc.bias.numpy(), np.zeros(64))
manual_seed(0)                                                        # reproducible
test_eq(GPT(11, 8, 2, 2, 16).state_dict()['lm_head.weight'], gpt.state_dict()['lm_head.weight'])
test_eq(GPT.from_config(GPTConfig(11, 8, 2, 2, 16)).config, gpt.config)

# %% [markdown]
# ### The forward pass, from an explicit start position
#
# `forward(idx, targets=None, start=0, past_kv=None, use_cache=False)` maps token ids `idx` of shape
# $(B, T)$ to logits $(B, T, V)$: row $t$ scores every token as the continuation of `idx[:, :t+1]`.
# With `targets` (ids of the same shape, usually `idx` shifted by one) it also returns the mean
# cross-entropy, computed on the $(B \cdot T, V)$ view of the logits; without, the loss is `None`.
#
# `start` is the position of `idx[:, 0]` in the sequence. A full pass uses `start=0`. Generation
# with a cache passes the keys and values of positions $0 .. \text{start}-1$ as `past_kv` (a list
# with one `(k, v)` per block) and the new tokens with their true positions, so that `wpe` gives
# them the vectors a full pass would. The cache must hold exactly `start` positions, and `start + T`
# may not exceed `block_size`: there are no learned vectors for later positions. With
# `use_cache=True` the model returns `(logits, loss, kv)`, `kv` being the cache extended by the new
# positions.

# %%
#| export
def _check_idx(op: str, idx, block_size: int, start: int, past_kv, n_layer: int,
               cache=None) -> np.ndarray:
    "Check ids (B, T), the start position and the cache; return the ids as an integer ndarray."
    ids = idx.data if isinstance(idx, Tensor) else np.asarray(idx)
    if ids.ndim != 2 or ids.dtype.kind not in 'iu':
        raise ValueError(f"{op}: expected integer token ids of shape (B, T), got shape "
                         f"{ids.shape}, dtype {ids.dtype}")
    if not isinstance(start, (int, np.integer)) or start < 0:
        raise ValueError(f"{op}: start must be a non-negative int, got {start!r}")
    if start + ids.shape[1] > block_size:
        raise ValueError(f"{op}: {ids.shape[1]} tokens from position {start} reach length "
                         f"{start + ids.shape[1]}, longer than block_size={block_size}")
    if cache is not None:
        if past_kv is not None: raise ValueError(f"{op}: give past_kv or cache, not both")
        return ids                                                    # the cache checks start
    if past_kv is None:
        if start:
            raise ValueError(f"{op}: start={start} needs past_kv, the keys and values of positions "
                             f"0..{start - 1}")
        return ids
    if len(past_kv) != n_layer:
        raise ValueError(f"{op}: past_kv has {len(past_kv)} entries, expected one per block "
                         f"({n_layer})")
    cached = past_kv[0][0].shape[2]
    if cached != start:
        raise ValueError(f"{op}: past_kv holds {cached} positions but start={start}; "
                         "they must agree")
    return ids

# %%
#| export
@patch
def forward(self: GPT,
            idx,                     # (B, T) integer token ids, a Tensor or an array
            targets=None,            # (B, T) ids of the next tokens, or None
            start: int = 0,          # position of idx[:, 0] in the sequence
            past_kv=None,            # list of (k, v) per block, each (B, nh, start, hs), or None
            use_cache: bool = False, # also return the extended cache?
            cache=None,              # a preallocated cache of positions 0..start-1, extended
           ):
    "Logits (B, T, V) and cross-entropy against `targets` (or None); with `use_cache`, the cache."
    ids = _check_idx('GPT.forward', idx, self.block_size, start, past_kv, self.config.n_layer,
                     cache)
    if cache is not None: return self._forward_cached(ids, targets, start, cache, use_cache)
    B, T = ids.shape
    tr = self.transformer
    ### BEGIN SOLUTION
    # (B, T, C) + (T, C) positions start..start+T-1
    x = tr.drop(tr.wte(ids) + tr.wpe(T, start=start))
    kv = []
    for i, block in enumerate(tr.h.children()):
        # (B, T, C)
        x, kv_i = block(x, past_kv=None if past_kv is None else past_kv[i], use_cache=True)
        kv.append(kv_i)                                               # each (B, nh, start + T, hs)
    logits = self.lm_head(tr.ln_f(x))                                 # (B, T, V)
    loss = None
    if targets is not None:
        V = logits.shape[-1]
        t = targets.data if isinstance(targets, Tensor) else np.asarray(targets)
        if t.shape != (B, T):
            raise ValueError(f"GPT.forward: targets of shape {t.shape} do not match idx of shape "
                             f"{(B, T)}")
        loss = cross_entropy(logits.reshape(B * T, V), t.reshape(B * T))   # (B*T, V) against (B*T,)
    ### END SOLUTION
    return (logits, loss, kv) if use_cache else (logits, loss)

# %%
manual_seed(0)
idx = np.array([[1, 2, 3, 4], [5, 6, 7, 8]])
logits, loss = gpt(idx)
test_eq((logits.shape, loss), ((2, 4, 11), None))
logits, loss = gpt(idx[:, :-1], targets=idx[:, 1:])
print(f"loss at initialisation {loss.item():.4f}, ln(V) = {math.log(11):.4f}")
# logits ~ 0 at initialisation: uniform over V tokens
test_close(loss.item(), math.log(11), eps=0.05)
test_fail(lambda: gpt(np.zeros((1, 9), np.int64)),
          contains="9 tokens from position 0 reach length 9, longer than block_size=8")
test_fail(lambda: gpt(np.zeros(4, np.int64)),
          contains="expected integer token ids of shape (B, T), got shape (4,)")
test_fail(lambda: gpt(idx, start=2), contains="start=2 needs past_kv")
test_fail(lambda: gpt(idx, targets=idx[:, :3]),
          contains="targets of shape (2, 3) do not match idx of shape (2, 4)")
test_fail(lambda: gpt(np.array([[11]])), contains="token id 11 at position (0, 0) is out of range")

# %% [markdown]
# A GPT of two blocks passes `gradcheck` in float64, through every parameter, including the tied
# embedding that receives gradient from both the lookup and the head.

# %%
manual_seed(2)
tiny = GPT(vocab_size=5, block_size=4, n_layer=2, n_head=2, n_embd=4).double()
ids, tgt = np.array([[0, 3, 1], [4, 4, 2]]), np.array([[3, 1, 2], [4, 2, 0]])
for p in tiny.parameters(): p.requires_grad = True
test_eq(gradcheck(lambda *ps: tiny(ids, tgt)[1], *tiny.parameters()), True)

# %% [markdown]
# ## Sampling the next token
#
# The logits of the last position, divided by a *temperature* $\tau$, give the distribution
# $p_i = e^{z_i/\tau} / \sum_j e^{z_j/\tau}$. $\tau < 1$ sharpens it towards the most likely token,
# $\tau > 1$ flattens it; $\tau = 0$ would be the argmax, and is refused (as a division by zero)
# rather than silently special-cased. *Top-k* sampling keeps the $k$ largest logits and sets the
# others to $-\infty$ before the softmax, so no unlikely token is ever drawn. Ties at the $k$-th
# value keep all tied tokens, as nanoGPT's comparison with the $k$-th largest value does. The draw
# inverts the cumulative distribution with one uniform number per row from a NumPy `Generator`, so a
# seed fixes the text.

# %%
#| export
def _check_sampling(temperature, top_k, vocab_size: int):
    "Raise if the temperature is not positive or top_k is not an int in 1..vocab_size."
    if not (isinstance(temperature, (int, float, np.floating)) and temperature > 0
            and math.isfinite(temperature)):
        raise ValueError(f"generate: temperature must be a positive finite number, "
                         f"got {temperature!r}")
    if top_k is not None and not (isinstance(top_k, (int, np.integer))
                                  and 1 <= top_k <= vocab_size):
        raise ValueError(f"generate: top_k must be None or an int in 1..{vocab_size} "
                         f"(the vocabulary), got {top_k!r}")

def sample_next(logits: np.ndarray,        # (B, V) scores of the next token
                temperature: float = 1.0,  # divides the logits; must be > 0
                top_k=None,                # keep only the k largest logits per row, or None
                rng=None,                  # np.random.Generator (None: a fresh unseeded one)
               ) -> np.ndarray:
    "One token id per row drawn from softmax(logits / temperature) within the top k: (B,) int64."
    _check_sampling(temperature, top_k, logits.shape[-1])
    rng = np.random.default_rng() if rng is None else rng
    ### BEGIN SOLUTION
    z = logits.astype(np.float64) / temperature                       # (B, V)
    if top_k is not None:
        # (B, 1) k-th largest
        kth = np.partition(z, -top_k, axis=-1)[:, -top_k:].min(-1, keepdims=True)
        z = np.where(z < kth, -np.inf, z)                             # (B, V)
    p = np.exp(z - z.max(-1, keepdims=True))                          # (B, V)
    # (B, V), last column is the total
    cdf = np.cumsum(p, axis=-1)
    u = rng.random((z.shape[0], 1)) * cdf[:, -1:]                     # (B, 1) uniform on [0, total)
    # (B,) first index with cdf > u
    return np.minimum((cdf <= u).sum(-1), z.shape[-1] - 1).astype(np.int64)
    ### END SOLUTION

# %% [markdown]
# Checks a reader can verify: with logits $\ln(1), \ln(3)$ token 1 has probability $3/4$; at
# temperature 2 it has $\sqrt3/(1+\sqrt3)$. Top-1 always gives the argmax, and a masked token is
# never drawn. The frequencies over 20,000 draws must lie within 4 standard errors $\sqrt{p(1-p)/n}$
# of the probabilities.

# %%
rng = np.random.default_rng(0)
n = 20_000
two = np.log(np.array([[1., 3.]] * n))                                # (n, 2)
for tau, p1 in ((1.0, 0.75), (2.0, math.sqrt(3) / (1 + math.sqrt(3)))):
    freq = sample_next(two, tau, rng=rng).mean()
    print(f"temperature {tau}: token 1 drawn with frequency {freq:.4f}, probability {p1:.4f}")
    test_close(freq, p1, eps=4 * math.sqrt(p1 * (1 - p1) / n))
z = np.array([[0.1, 2.0, -1.0, 1.9], [5.0, 0.0, 0.0, 4.0]])
test_eq(sample_next(z, top_k=1, rng=rng), [1, 0])
# tokens 2 never
test_eq(set(sample_next(np.repeat(z, 500, 0), top_k=2, rng=rng).tolist()) <= {0, 1, 3}, True)
test_eq(set(sample_next(z[:1].repeat(500, 0), top_k=2, rng=rng).tolist()), {1, 3})
# a seed fixes the draw
test_eq(sample_next(z, rng=np.random.default_rng(7)), sample_next(z, rng=np.random.default_rng(7)))
test_fail(lambda: sample_next(z, temperature=0),
          contains="temperature must be a positive finite number, got 0")
test_fail(lambda: sample_next(z, top_k=5),
          contains="top_k must be None or an int in 1..4 (the vocabulary), got 5")
test_fail(lambda: sample_next(z, top_k=0), contains="got 0")

# %% [markdown]
# ## Generation with a cache of keys and values
#
# `generate(idx, max_new_tokens, temperature=1.0, top_k=None, seed=None)` extends each row of `idx`
# $(B, T_0)$ by `max_new_tokens` sampled tokens and returns all of them, $(B, T_0 + n)$. It runs
# under `no_grad` and in evaluation mode (no dropout), restoring the model's mode afterwards. The
# prompt is processed once (the *prefill*), keeping every block's keys and values; then each step
# feeds only the token just drawn, with `start` set to its position and the cache of all earlier
# positions. A step costs one row through every `Linear` and one attention row over the cached keys:
# $O(T)$, where recomputing the whole prefix costs $O(T^2)$.
#
# **Beyond `block_size`.** The model has no position vectors past `block_size - 1`, so the context
# must be cropped. Because positions are added at the input, every cached key depends on its
# absolute position: after dropping the oldest token, all remaining tokens move one position back
# and the whole cache is stale. nanoGPT recomputes the last `block_size` tokens at every step. Here,
# when the cache is full, the context is cropped to its last `block_size // 2` tokens (at least 1)
# and a new prefill rebuilds the cache from them at positions 0, 1, ...; decoding then continues one
# token at a time. The model always sees between `block_size // 2` and `block_size` tokens of
# context, and the cost per token stays $O(\text{block\_size})$ on average, one prefill per
# `block_size - block_size // 2` tokens.
#
# With `cache`, a preallocated cache (below), `generate` decodes into it instead of concatenating:
# it resets it, prefills, and crops at the smaller of `block_size` and the cache's `max_len`. The
# prefill goes through `forward`, which checks the prompt and the cache; each later step feeds
# `generate`'s own token at the next position, so it runs the decoding plan (below) directly.
#
# `generate` checks the temperature and top-k once, writes the tokens into an array allocated once,
# and draws each one as `sample_next` does. A greedy row (`top_k=1`) whose largest logit is unique
# and finite takes the argmax directly: that is the token `sample_next` returns for it, and the one
# uniform number per row that `sample_next` would draw is still drawn, so the generator's stream,
# and every later token, stays the same. A tie goes through `sample_next`.

# %%
#| export
def _draw(logits: np.ndarray, temperature: float, top_k, rng) -> np.ndarray:
    "`sample_next` for `generate`, whose arguments are checked once; greedy rows by argmax."
    if top_k == 1:                                                    # the top-1 token, unless tied
        z = logits.astype(np.float64)                                 # (B, V), as sample_next
        if temperature != 1: z /= temperature                         # x / 1 is x
        best = np.maximum.reduce(z, axis=-1, keepdims=True)           # (B, 1)
        # each row has at least one maximum, so B of them in all means one per row; the largest
        # is below inf unless a row holds inf or NaN (NaN < inf is False)
        if np.count_nonzero(z == best) == len(z) and best.max() < np.inf:
            rng.random((len(z), 1))                                   # sample_next's one draw per
            return z.argmax(-1)                                       # row: the same stream after
    return sample_next(logits, temperature, top_k, rng)

# %%
#| export
@patch
def generate(self: GPT,
             idx,                      # (B, T0) integer ids of the prompt, T0 >= 1
             max_new_tokens: int,      # tokens to append
             temperature: float = 1.0, # > 0; lower is more conservative
             top_k=None,               # sample only among the k most likely tokens, or None
             # int or np.random.Generator for the draws; same seed, same text
             seed=None,
             cache=None,               # a preallocated cache to decode into (reset first), or None
            ) -> Tensor:
    "The prompt and `max_new_tokens` sampled tokens, (B, T0 + max_new_tokens) int64; a KV cache."
    _check_sampling(temperature, top_k, self.config.vocab_size)
    prompt = np.asarray(idx.data if isinstance(idx, Tensor) else idx)
    if prompt.ndim != 2 or prompt.shape[1] == 0:
        raise ValueError(f"generate: expected a prompt of shape (B, T0) with T0 >= 1, "
                         f"got shape {prompt.shape}")
    (B, T0), end = prompt.shape, prompt.shape[1] + max_new_tokens
    out = np.empty((B, end), np.int64); out[:, :T0] = prompt         # (B, T0 + n), filled in order
    limit = self.block_size if cache is None else min(self.block_size, cache.max_len)  # context
    rng, was_training, keep = np.random.default_rng(seed), self.training, max(1, limit // 2)
    def prefill(ctx):                                                 # a fresh cache of ctx
        if cache is None: return self(ctx, use_cache=True)
        cache.reset(); return self(ctx, use_cache=True, cache=cache)  # checks the cache
    self.eval()
    try:
        with no_grad():
            plan = None if cache is None else self._decode_plan()      # the layers, on arrays
            ctx = out[:, max(0, T0 - limit):T0]                       # (B, <= limit) the prefill
            logits, _, kv = prefill(ctx)                              # (B, T, V), T cached
            logits, pos = logits.data, ctx.shape[1]                   # positions held in the cache
            for t in range(T0, end):
                out[:, t] = _draw(logits[:, -1], temperature, top_k, rng)   # (B,)
                if pos == limit:                                      # full: crop, rebuild
                    ctx = out[:, t + 1 - keep:t + 1]                  # (B, keep)
                    logits, _, kv = prefill(ctx); logits, pos = logits.data, ctx.shape[1]
                    continue
                if cache is None:
                    lg, _, kv = self(out[:, t:t + 1], start=pos, past_kv=kv, use_cache=True)
                    logits = lg.data                                  # (B, 1, V)
                else: logits = self._decode(plan, out[:, t:t + 1], pos, cache)   # (B, 1, V)
                pos += 1
    finally: self.train(was_training)
    return Tensor(out)

# %%
manual_seed(0)
g = GPT(vocab_size=11, block_size=6, n_layer=1, n_head=2, n_embd=8)
prompt = np.array([[1, 2], [3, 4]])
out = g.generate(prompt, 10, seed=0)
test_eq((out.shape, out.dtype), ((2, 12), np.int64))
test_eq(out.numpy()[:, :2], prompt)
# same seed, same tokens
test_eq(g.generate(prompt, 10, seed=0).numpy(), out.numpy())
test_eq(g.generate(prompt, 0, seed=0).numpy(), prompt)
test_eq(g.training, True)                                                    # the mode is restored
test_fail(lambda: g.generate(prompt, 3, temperature=-1.0),
          contains="temperature must be a positive finite number, got -1.0")
test_fail(lambda: g.generate(prompt, 3, top_k=12),
          contains="top_k must be None or an int in 1..11 (the vocabulary), got 12")
test_fail(lambda: g.generate(np.zeros((2, 0), np.int64), 3),
          contains="expected a prompt of shape (B, T0) with T0 >= 1, got shape (2, 0)")

# %%
z = np.random.default_rng(1).standard_normal((3, 7)).astype(np.float32)   # (B, V)
z[2, 4] = z[2].max()                                                  # a tie in row 2
for rows in (z[:2], z):                                               # greedy shortcut, then a tie
    r1, r2 = np.random.default_rng(9), np.random.default_rng(9)
    test_eq(_draw(rows, 1.0, 1, r1), sample_next(rows, 1.0, 1, r2))
    test_eq(r1.random(), r2.random())                                 # the same stream after

# %% [markdown]
# ### The cache gives the full pass's logits
#
# Decoding one token at a time with `start` and `past_kv` must give, at every position, the logits
# of one full pass over the same tokens. Mathematically they are equal; in floating point they
# differ by rounding, because BLAS sums a $(1, C)$ row and a $(T, C)$ block in different orders and
# attention sums over a growing number of keys.
#
# A first tolerance is derived, not tuned: an elementwise bound on the rounding error, propagated to
# first order in the unit roundoff $u$ through every op of the model and evaluated in float64 with
# its weights:
#
# - a `Linear` with $n$ inputs adds $(n+1)\,u\,(|x||W|^T + |b|)$ and passes an input error $e$ on as
#   $e\,|W|^T$;
# - attention follows the layer-level bound of the attention module (scores, softmax, weighted sum);
# - LayerNorm passes $e$ on as $\frac{|w|}{\sigma}(e + \bar e + |\hat x|\,\overline{|\hat x| e})$
#   (its Jacobian in absolute value) and adds its own rounding,
#   $|w|(C u \overline{|x|} + (C+6) u |x - \mu|)/\sigma + u|b|$;
# - GELU $\tfrac12 x(1 + \tanh a)$ passes $e$ on times $|\mathrm{GELU}'(x)|$ and adds its rounding:
#   $5u|a|$ in the argument $a$ (four operations), $4u|\tanh a|$ in NumPy's `tanh` (an allowance of
#   a few ulp), $3u|y|$ in the final products;
# - a residual addition adds the errors and $u\,|x + y|$.
#
# Each path is within this bound of the exact result, so the two are within twice of it. The bound
# is verification code, not part of the framework: `cache_bound` in `tests/bounds.py` evaluates it,
# and `tests/test_14_transformers.py` checks every logit against it, in float64 and in float32, over
# random models and prefill lengths.

# %%
def decode_both(m: GPT, ids: np.ndarray, prefill: int) -> tuple:
    "Logits (B, T, V) of one full pass, and of a prefill of `prefill` tokens then one at a time."
    with no_grad():
        full = m(ids)[0].numpy()                                      # (B, T, V)
        logits, _, kv = m(ids[:, :prefill], use_cache=True)           # positions 0..prefill-1
        steps = [logits.numpy()]
        for t in range(prefill, ids.shape[1]):
            # (B, 1, V), cache of t + 1
            logits, _, kv = m(ids[:, t:t + 1], start=t, past_kv=kv, use_cache=True)
            steps.append(logits.numpy())
    return full, np.concatenate(steps, axis=1), kv

# %% [markdown]
# In the notebook, a scale is enough to tell rounding from a bug. In float64 ($u = 2^{-53}$) both
# paths round $2^{29}$ times more finely than in float32 ($u = 2^{-24}$), so on a GPT of two blocks
# with a prompt of 5 tokens followed by 11 single tokens their largest float64 difference must lie
# far below the RMS error of the float32 full pass against float64; the cell asks for a factor of a
# million, which leaves a margin of about 500 for the growth of rounding errors with depth and
# width.

# %%
manual_seed(0)
m = GPT(vocab_size=23, block_size=16, n_layer=2, n_head=4, n_embd=32)
m64 = GPT(vocab_size=23, block_size=16, n_layer=2, n_head=4, n_embd=32).double()
m64.load_state_dict(m.state_dict())                                   # the same weights, in float64
ids = np.random.default_rng(0).integers(0, 23, (2, 16))               # (B, T)
full64, inc64, kv = decode_both(m64, ids, 5)
full32, inc32, _ = decode_both(m, ids, 5)
def rms(a): return float(np.sqrt(np.mean(a ** 2)))
d64, err32 = np.abs(inc64 - full64).max(), rms(full32 - full64)
print(f"float64: largest difference {d64:.1e}; float32 full pass: RMS error {err32:.1e} against "
      f"float64, {err32 / d64:.0e} times larger")
test_eq(kv[0][0].shape, (2, 4, 16, 8))
test_eq(bool(d64 < 1e-6 * err32), True)

# %% [markdown]
# The derived bound with float32's $u = 2^{-24}$ holds too (the tests check it), but is of little
# use: a worst case in which every rounding error has the same sign, amplified by each LayerNorm's
# $1/\sigma$, lies orders of magnitude above what happens. For float32 the check is therefore
# relative to a reference: the float64 logits of the same weights stand in for the exact ones, and
# the cached path may not be markedly less accurate than the full float32 pass it replaces. Which
# path is closer at a given element is a matter of luck, so the cell first measures the ratio of
# their root mean square errors over 20 random models (weights scaled up 10-fold for logits of order
# 10, prompts of random length); a cache bug, shown below, moves the logits by about a million times
# float32's rounding.

# %%
print(f"float32: cached and full pass differ by {np.abs(inc32 - full32).max():.1e} at most")
ratios = []
for seed in range(20):
    r = np.random.default_rng(seed)
    manual_seed(seed)
    a32 = GPT(23, 12, 2, 4, 32)
    for p in a32.parameters(): p.data *= 10
    a64 = GPT(23, 12, 2, 4, 32).double(); a64.load_state_dict(a32.state_dict())
    t = r.integers(0, 23, (2, 12))
    f64_, _, _ = decode_both(a64, t, 1); f32_, i32_, _ = decode_both(a32, t, int(r.integers(1, 12)))
    ratios.append(rms(i32_ - f64_) / rms(f32_ - f64_))
print(f"RMS error of the cached path / RMS error of the full pass, both against float64, "
      f"over 20 models: {min(ratios):.2f} to {max(ratios):.2f}, median {np.median(ratios):.2f}")
# same order as float32 rounding of the full pass
test_eq(bool(max(ratios) < 8), True)

# %% [markdown]
# The explicit start position is what makes this work. Feeding the new token with `start=0`, as if
# it were the first, cannot even be asked for: the cache then holds more positions than `start`
# says, which is refused. Emulating the mistake by giving token 5 position 0's vector moves its
# logits far beyond both tolerances:

# %%
test_fail(lambda: m64(ids[:, 5:6], start=0, past_kv=kv),
          contains="past_kv holds 16 positions but start=0; they must agree")
with no_grad():
    _, _, kv5 = m64(ids[:, :5], use_cache=True)
    wpe = m64.transformer.wpe.weight.data
    # position 5 gets position 0's vector
    saved = wpe.copy(); wpe[5] = wpe[0]
    wrong = m64(ids[:, 5:6], start=5, past_kv=kv5)[0].numpy()[:, 0]   # (B, V)
    wpe[...] = saved
off = np.abs(wrong - full64[:, 5]).max()
print(f"token 5 at position 0: logits off by up to {off:.1e}, {off / d64:.0e} times the largest "
      f"float64 difference, {off / err32:.0e} times the RMS rounding error of the float32 "
      f"full pass")
test_eq(bool(off > 1000 * err32), True)

# %% [markdown]
# Sampling with the cache draws the same tokens as sampling with a full pass over the whole sequence
# at every step, as nanoGPT's `generate` does: `generate_uncached` below is that reference, and in
# float64 the two agree token for token for a sequence that fits in `block_size`.

# %%
def generate_uncached(model: GPT, idx: np.ndarray, max_new_tokens: int, temperature=1.0,
                      top_k=None, seed=None) -> np.ndarray:
    "nanoGPT's generation: a full pass over the (cropped) sequence for every new token."
    rng, out = np.random.default_rng(seed), np.array(idx, dtype=np.int64)
    with no_grad():
        for _ in range(max_new_tokens):
            logits, _ = model(out[:, -model.block_size:])             # (B, T, V)
            nxt = sample_next(logits.numpy()[:, -1], temperature, top_k, rng)   # (B,)
            out = np.concatenate([out, nxt[:, None]], 1)
    return out

# %%
prompt = ids[:, :3]
test_eq(m64.generate(prompt, 13, seed=5).numpy(), generate_uncached(m64, prompt, 13, seed=5))
test_eq(m64.generate(prompt, 13, temperature=0.5, top_k=4, seed=6).numpy(),
        generate_uncached(m64, prompt, 13, 0.5, 4, seed=6))
# beyond block_size: cropped, cache rebuilt
long = m64.generate(prompt, 40, seed=5).numpy()
test_eq(long.shape, (2, 43))
# identical until the first crop
test_eq(long[:, :16], generate_uncached(m64, prompt, 13, seed=5))

# %% [markdown]
# ### Decoding into a preallocated cache
#
# `past_kv` grows by concatenation: every step copies all cached keys and values into new arrays,
# $O(T)$ bytes per step and $O(T^2)$ over a generation. `forward` and `generate` also accept
# `cache`, an object that keeps every layer's keys and values in buffers allocated once and written
# in place (`KVCache` in the caching module builds one). It has `length`, `max_len`, `reset()` and
# three methods that `forward` calls:
#
# - `check(op, B, T, start, n_layer, n_head, head_dim, dtype)` raises, before anything is written,
#   if the new tokens do not fit the cache or the cache does not fit the model, or `start` differs
#   from `length`;
# - `write(layer, k, v)` stores a layer's new keys and values, `(B, nh, T, hs)` arrays, after the
#   `length` cached positions and returns the keys and values of all `length + T` positions;
# - `advance(T)` moves `length` on, once every layer has written.
#
# Decoding records no graph, and for one token the `Tensor` around each intermediate result (a
# wrapper, a graph check, argument checks) costs more than the arithmetic, and so does finding each
# parameter through the modules. So with a cache the forward pass runs a **decoding plan**: for
# each layer a function on arrays, made from its parameters' arrays once (`_on_arrays`), then
# called for every token. The functions do the layers' operations in the layers' order, checked
# below against the full pass. A layer that is not exactly the class a function is written for,
# or that has forward pre-hooks (module 18's pruning sets a layer's weight in one), becomes a call
# of the module itself, so that it computes what it computes in the full pass. Decoding needs
# `no_grad` (the cache stores values, not a graph) and no dropout.
#
# The functions keep arrays two-dimensional, (B*T, C), and read each bias and LayerNorm vector as
# a (1, C) row: NumPy combines two arrays of one shape by a fast path, and broadcasting a (C,)
# vector over (B, T, C) costs more than the arithmetic of a single token. For the same reason
# LayerNorm takes its means as products with a column of 1/C (one call, where a sum and a division
# are two), and the constants of LayerNorm and of GELU's tanh form are 0-d arrays made with the
# plan (NumPy converts a Python number anew in every operation). LayerNorm's rounding differs
# from the layer's in the last bits; the checks below bound the difference. Module 19 measures
# what these choices save.

# %%
#| export
def _plain(m: Module, cls) -> bool:
    "True if `m` is exactly a `cls` with no forward pre-hooks: its parameters are what it uses."
    return type(m) is cls and not m.__dict__.get('_forward_pre_hooks')

@functools.cache
def _ln_consts(dtype, C: int, eps: float) -> tuple:
    "A column of 1/C, (C, 1), and eps, 0-d, in `dtype`: made once per dtype, size and eps."
    return np.full((C, 1), 1 / C, dtype), np.array(eps, dtype)

@functools.cache
def _gelu_consts(dtype) -> tuple:
    "The tanh GELU's 0.5, 1, sqrt(2/pi) and 0.044715 as 0-d arrays of `dtype`, made once."
    return tuple(np.array(v, dtype) for v in (0.5, 1, math.sqrt(2 / math.pi), 0.044715))

def _on_arrays(m: Module, dtype) -> Callable:
    "A function x (N, n) -> array computing `m` from its arrays now; `m` itself if not plain."
    p = m._parameters                                                 # registry: no __getattr__
    if _plain(m, Linear):
        W, b = p['weight'].data, p.get('bias')                        # (out, in), (out,) or None
        if b is None: return lambda x: x @ W.T
        b = b.data[None]                                              # (1, out) row
        def linear(x): y = x @ W.T; y += b; return y                  # in place: no new array
        return linear
    w, b = p.get('weight'), p.get('bias')
    if _plain(m, LayerNorm) and w is not None and b is not None and w.ndim == 1:
        w, b = w.data[None], b.data[None]                             # (1, C) rows
        col, eps = _ln_consts(dtype, w.shape[1], m.eps)               # x.dot(col): row means
        def layer_norm(x):
            xc = x - x.dot(col)                                       # (N, C)
            var = (xc * xc).dot(col); var += eps                      # (N, 1)
            xc /= np.sqrt(var, out=var); xc *= w; xc += b
            return xc
        return layer_norm
    if _plain(m, GELU) and m.approximate == 'tanh':                   # as `gelu` computes it
        half, one, c, a = _gelu_consts(dtype)
        return lambda x: half * x * (one + np.tanh(c * (x + a * (x * x * x))))
    return lambda x: m(_wrap(x)).data                                 # hooks run, as in the pass

# %%
#| export
def _attend(qkv: np.ndarray, B: int, nh: int, layer: int, cache) -> np.ndarray:
    "Causal attention of the new positions' qkv (B*T, 3C) over the cached ones and themselves."
    N, C = qkv.shape[0], qkv.shape[1] // 3; T, hs = N // B, C // nh
    q, k, v = qkv.reshape(B, T, 3, nh, hs).transpose(2, 0, 3, 1, 4)   # (B, nh, T, hs) each
    k, v = cache.write(layer, k, v)                                   # (B, nh, length + T, hs) each
    s = (q * hs ** -0.5) @ k.swapaxes(-1, -2)                         # (B, nh, T, length + T)
    if T > 1: s += _causal_bias(T, k.shape[2], s.dtype)               # bottom-right aligned
    s -= np.maximum.reduce(s, axis=-1, keepdims=True)                 # every row has a finite
    np.exp(s, out=s); s /= np.add.reduce(s, axis=-1, keepdims=True)   # score: plain softmax
    return (s @ v).transpose(0, 2, 1, 3).reshape(N, C)                # (B*T, C)

# %%
#| export
@patch
def _decode_plan(self: GPT) -> list:
    "Per block (ln_1, qkv, proj, ln_2, fc, gelu, proj, n_head), then (ln_f, lm_head): `_on_arrays`."
    tr, dt = self.transformer, self.transformer.wte.weight.dtype
    on = lambda *ms: tuple(_on_arrays(m, dt) for m in ms)
    blocks = []
    for blk in tr.h._modules.values():                                # registries: no __getattr__
        b, attn, mlp = blk._modules, blk._modules['attn'], blk._modules['mlp']._modules
        blocks.append(on(b['ln_1'], attn._modules['qkv'], attn._modules['proj'], b['ln_2'],
                         mlp['fc'], mlp['gelu'], mlp['proj']) + (attn.num_heads,))
    return blocks + [on(tr.ln_f, self.lm_head)]

@patch
def _decode(self: GPT, plan: list, ids: np.ndarray, start: int, cache) -> np.ndarray:
    "Logits (B, T, V) of ids (B, T) at positions start.., after the cached ones; cache extended."
    tr, (B, T) = self.transformer, ids.shape
    if _plain(tr.wte, Embedding) and _plain(tr.wpe, LearnedPositionalEmbedding):
        x = tr.wte.weight.data[ids] + tr.wpe.weight.data[start:start + T]   # (B, T, C)
    else: x = (tr.wte(ids) + tr.wpe(T, start=start)).data
    x = x.reshape(B * T, -1)                                          # (B*T, C)
    for i, (ln_1, qkv, proj, ln_2, fc, gelu, mlp_proj, nh) in enumerate(plan[:-1]):
        x += proj(_attend(qkv(ln_1(x)), B, nh, i, cache))             # in place
        x += mlp_proj(gelu(fc(ln_2(x))))
    cache.advance(T)
    ln_f, head = plan[-1]
    return head(ln_f(x)).reshape(B, T, -1)

# %%
#| export
@patch
def _forward_cached(self: GPT, ids: np.ndarray, targets, start: int, cache, use_cache: bool):
    "`forward` with a preallocated cache, on arrays: logits of positions start.., cache extended."
    c, tr, (B, T) = self.config, self.transformer, ids.shape
    if is_grad_enabled():
        raise RuntimeError("GPT.forward: a cache keeps values, not a graph; decode under no_grad()")
    if self.training and c.dropout > 0:
        raise RuntimeError(f"GPT.forward: a cache decodes without dropout, but dropout={c.dropout} "
                           "in training mode; call eval()")
    cache.check('GPT.forward', B, T, start, c.n_layer, c.n_head, c.n_embd // c.n_head,
                tr.wte.weight.dtype)
    _check_ids('GPT.forward', ids, c.vocab_size)
    logits = _wrap(self._decode(self._decode_plan(), ids, start, cache))   # (B, T, V)
    loss = None
    if targets is not None:
        t = targets.data if isinstance(targets, Tensor) else np.asarray(targets)
        if t.shape != (B, T):
            raise ValueError(f"GPT.forward: targets of shape {t.shape} do not match idx of shape "
                             f"{(B, T)}")
        loss = cross_entropy(logits.reshape(B * T, -1), t.reshape(B * T))
    return (logits, loss, cache) if use_cache else (logits, loss)

# %% [markdown]
# The smallest object that follows the protocol keeps a list of keys and values per layer and
# concatenates, like `past_kv`. Decoding through it gives the logits of the full pass, and
# `generate` draws the same tokens with it as with `past_kv`, in float64:

# %%
class ListCache:
    "The cache protocol by concatenation: a test double for `forward(cache=...)`."
    def __init__(self, n_layer, max_len):
        self.kv, self.length, self.max_len = [None] * n_layer, 0, max_len
    def reset(self): self.kv, self.length = [None] * len(self.kv), 0
    def check(self, op, B, T, start, n_layer, n_head, head_dim, dtype):
        if start != self.length or start + T > self.max_len:
            raise ValueError(f"{op}: start={start}, length={self.length}")
    def write(self, layer, k, v):
        if self.kv[layer] is not None:
            k, v = (np.concatenate([a, b], 2) for a, b in zip(self.kv[layer], (k, v)))
        self.kv[layer] = (k, v); return k, v
    def advance(self, T): self.length += T

# %%
lc = ListCache(2, 16)
with no_grad():
    steps = [m64(ids[:, :5], cache=lc)[0].numpy()]
    steps += [m64(ids[:, t:t + 1], start=t, cache=lc)[0].numpy() for t in range(5, 16)]
d = np.abs(np.concatenate(steps, 1) - full64)
print(f"float64, decoding through ListCache: largest difference from the full pass {d.max():.1e}")
test_eq(bool(d.max() < 1e-6 * err32), True)
test_eq(lc.length, 16)
test_eq(m64.generate(prompt, 13, seed=5, cache=ListCache(2, 16)).numpy(),
        generate_uncached(m64, prompt, 13, seed=5))
test_eq(m64.generate(prompt, 40, seed=5, cache=ListCache(2, 16)).numpy(), long)   # crops alike
test_fail(lambda: m64(ids[:, :2], cache=lc), contains="decode under no_grad()")
test_fail(lambda: m64(ids[:, :2], past_kv=kv, cache=lc), contains="give past_kv or cache, not both")

# %% [markdown]
# ## Counting parameters and FLOPs
#
# Each block holds $12C^2 + 13C$ parameters: `qkv` $3C^2 + 3C$, `attn.proj` $C^2 + C$,
# `fc` $4C^2 + 4C$, `mlp.proj` $4C^2 + C$, and two LayerNorms $2C$ each. The model adds the token
# table $VC$ (shared with the head), the position table $T_{max} C$ and the final LayerNorm $2C$:
#
# $$N = VC + T_{max}C + L(12C^2 + 13C) + 2C .$$
#
# nanoGPT reports the count without the position table (`get_num_params(non_embedding=True)`); the
# token table stays in, since it is also the head. Its FLOPs estimate (`estimate_mfu`, after the
# PaLM paper, appendix B) is $6N + 12\,L\,H\,Q\,T$ per token for a forward and backward pass, with
# $N$ that count, $H$ heads of size $Q$ and context $T$: $2N$ multiply-adds per token forward and
# twice that backward, plus the attention scores and weighted sums, which grow with $T$. The cell
# evaluates both for the notebook's model below and for the TinyGPT milestone's configuration.

# %%
#| export
@patch
def num_params(self: GPT, non_embedding: bool = True) -> int:
    "Parameters, a shared one once; without the position table if `non_embedding` (as nanoGPT)."
    n = sum(p.size for p in self.parameters())
    return n - self.transformer.wpe.weight.size if non_embedding else n

@patch
def flops_per_token(self: GPT, T=None) -> int:
    "Training FLOPs per token, forward and backward, for context T (default block_size): 6N+12LHQT."
    c = self.config
    hs = c.n_embd // c.n_head                                         # Q, the head size
    return 6 * self.num_params() + 12 * c.n_layer * c.n_head * hs * (T or c.block_size)

# %%
def formula(V, T, L, C): return V * C + T * C + L * (12 * C * C + 13 * C) + 2 * C
for V, T, L, H, C in ((65, 64, 2, 4, 64), (84, 64, 4, 4, 128)):
    g = GPT(V, T, L, H, C)
    n_all, n = g.num_params(non_embedding=False), g.num_params()
    print(f"GPT(V={V}, block_size={T}, L={L}, H={H}, C={C}): {n_all:,} parameters "
          f"({n:,} without positions), formula {formula(V, T, L, C):,}; "
          f"{g.flops_per_token():,} FLOPs per token, "
          f"attention's share {1 - 6 * n / g.flops_per_token():.1%}")
    test_eq(n_all, formula(V, T, L, C))
    test_eq(n_all - n, T * C)

# %% [markdown]
# ## A small model learns Shakespeare's characters
#
# A GPT of two blocks, $C = 64$, trained for a fixed number of steps on random windows of 32
# characters from the first 300,000 characters of the training works, with AdamW, a short warm-up
# and a cosine decay, and gradients clipped at norm 1. Before training the loss is about $\ln V$, a
# uniform guess. The TinyGPT milestone trains a larger model for minutes; this run only shows the
# loss falling and what a few seconds of training produce.

# %% [markdown]
# A training batch is nanoGPT's `get_batch`: `batch_size` windows of `block_size + 1` consecutive
# ids at random starts, the first `block_size` as inputs and the same window shifted by one as
# targets, so every position learns to predict the id after it. The TinyGPT milestone draws its
# training and validation windows with it too.

# %%
#| export
def get_batch(data: np.ndarray,          # 1-D integer ids of a text
              batch_size: int,           # windows to draw
              block_size: int,           # T, ids per window
              rng: np.random.Generator,  # draws the starts; same generator state, same batch
             ) -> tuple:
    "Random windows of `data`: inputs (batch_size, T), and the ids after them (batch_size, T)."
    if data.ndim != 1 or len(data) < block_size + 2:
        raise ValueError(f"get_batch: need 1-D ids longer than block_size + 1 = {block_size + 1}, "
                         f"got shape {data.shape}")
    starts = rng.integers(0, len(data) - block_size - 1, size=batch_size)
    rows = data[starts[:, None] + np.arange(block_size + 1)]         # (batch_size, T + 1)
    return rows[:, :-1], rows[:, 1:]

# %%
xb, yb = get_batch(np.arange(100), 3, 5, np.random.default_rng(0))
test_eq((xb.shape, yb.shape), ((3, 5), (3, 5)))
test_eq(yb, xb + 1)                                                   # targets: the next id
test_eq(xb[:, 1:], xb[:, :-1] + 1)                                    # consecutive ids
test_eq(get_batch(np.arange(100), 3, 5, np.random.default_rng(0))[0], xb)   # same seed, same batch
test_fail(lambda: get_batch(np.arange(6), 2, 5, np.random.default_rng(0)),
          contains="longer than block_size + 1 = 6, got shape (6,)")

# %%
text = load_shakespeare('train')[:300_000]
tok = CharTokenizer(text)
data = np.array(tok.encode(text), dtype=np.int64)

manual_seed(0)
model = GPT(tok.vocab_size, block_size=32, n_layer=2, n_head=4, n_embd=64)
opt = AdamW(model.parameters(), lr=3e-3, betas=(0.9, 0.99), weight_decay=0.01)
steps = 250
sched = CosineWarmupLR(opt, warmup_steps=20, total_steps=steps, min_lr=3e-4)
rng, losses = np.random.default_rng(0), []
with blas_threads(1), Timer() as run:
    for step in range(steps):
        x, y = get_batch(data, 16, 32, rng)
        _, loss = model(x, y)
        opt.zero_grad(); loss.backward(); clip_grad_norm_(model.parameters(), 1.0)
        opt.step(); sched.step()
        losses.append(loss.item())
secs = run.elapsed
print(f"{model.num_params():,} parameters, vocabulary {tok.vocab_size} "
      f"(ln V = {math.log(tok.vocab_size):.3f}); {steps} steps of 16 x 32 characters in "
      f"{secs:.1f} s ({steps * 512 / secs:,.0f} characters/s): loss "
      f"{np.mean(losses[:10]):.3f} over the first 10 steps, {np.mean(losses[-10:]):.3f} over the "
      f"last 10")
test_eq(bool(np.mean(losses[-10:]) < np.mean(losses[:10]) - 0.5), True)

# %%
plt.figure(figsize=(6, 3))
plt.plot(losses, lw=0.8, label='training batch')
plt.axhline(math.log(tok.vocab_size), color='gray', ls=':', label='ln V (uniform guess)')
plt.xlabel('step'); plt.ylabel('cross-entropy (nats per character)'); plt.legend()
plt.tight_layout(); plt.show()

# %%
sample = model.generate(np.array([tok.encode('\n')]), 200, temperature=0.8, seed=0)
print(tok.decode(sample.numpy()[0].tolist()))

# %% [markdown]
# After a few seconds the model has learnt the shape of the text: names in capitals before speeches,
# line breaks, common short words; the spelling of longer words comes with more training, as in the
# milestone.
#
# ## What the cache saves
#
# Without a cache, step $t$ of generation runs the model over all $t$ tokens so far: the projections
# cost $O(t)$ and attention $O(t^2)$, so $n$ tokens cost $O(n^2)$ to $O(n^3)$ in all. With the
# cache, step $t$ runs one token through the projections and one query against $t$ keys: $O(t)$,
# $O(n^2)$ in all. The cell generates 200 tokens from a one-token prompt with a GPT of `block_size`
# 256 both ways (`compare`: one BLAS thread, the two alternating over 3 rounds after a warm-up), and
# counts how many of the tokens the two produce agree.

# %%
manual_seed(0)
big = GPT(vocab_size=65, block_size=256, n_layer=2, n_head=4, n_embd=64)
start_tok = np.zeros((1, 1), np.int64)
with blas_threads(1):
    c = compare({'cached': lambda: big.generate(start_tok, 200, seed=0),
                 'full': lambda: generate_uncached(big, start_tok, 200, seed=0)},
                rounds=3, number=1)
t_cached, t_full = c['cached'].median, c['full'].median
same = (big.generate(start_tok, 200, seed=0).numpy()
        == generate_uncached(big, start_tok, 200, seed=0)).mean()
print(f"200 tokens: with the cache {t_cached:.2f} s ({200 / t_cached:.0f} tokens/s), full passes "
      f"{t_full:.2f} s ({200 / t_full:.0f} tokens/s): {c.ratio('full', 'cached'):.1f}x faster; "
      f"{same:.1%} of the tokens identical (float32)")

# %% [markdown]
# The gap widens with the length generated: the uncached cost of step $t$ grows with $t$ in every
# layer, the cached cost only in the attention row, which at these sizes is small next to one
# token's pass through the `Linear` layers.
#
# ## Summary
#
# `TransformerBlock` is the pre-LayerNorm block, $x + \mathrm{attn}(\mathrm{ln}_1(x))$ then
# $x + \mathrm{mlp}(\mathrm{ln}_2(x))$, with a $4C$-wide tanh-GELU `MLP`. `GPT` stacks `n_layer` of
# them between token and learned position embeddings and a final LayerNorm, with nanoGPT's names and
# initialisation and the head tied to the token embedding; `forward` takes an explicit `start`
# position and the cached keys and values of the earlier positions, and returns the extended cache
# with `use_cache`. `generate` prefills the prompt and then feeds one token per step, giving the
# logits of a full pass at a fraction of the cost, crops the context to its last `block_size // 2`
# tokens and rebuilds the cache when it is full, and samples with a temperature and top-k from a
# seeded NumPy generator. The TinyGPT milestone trains such a model on Shakespeare.
