"""Rounding-error bounds that the tests use to check cached decoding against a full pass.

`cache_bound(model, ids, u)` propagates elementwise bounds on the rounding error, to first order in
the unit roundoff u, through every op of a `GPT`, evaluated in float64 with its weights; the
transformers notebook derives each rule in prose:

- a `Linear` with n inputs adds (n + 1) u (|x||W|^T + |b|) and passes an input error e on as
  e |W|^T;
- attention follows the attention module's layer-level bound (scores, softmax, weighted sum);
- LayerNorm passes e on through its Jacobian in absolute value and adds its own rounding;
- the tanh GELU passes e on times |GELU'(x)| and adds the rounding of its argument, tanh and
  products;
- a residual addition adds the errors and u |x + y|.

Each path is within this bound of the exact result, so the two are within twice of it.
"""
import math

import numpy as np


def _linear_bound(x, e, lin, u):
    "Value and error bound of a Linear on x with error e (float64, first order in u)."
    W = lin.weight.numpy().astype(np.float64)
    b = 0. if lin.bias is None else lin.bias.numpy().astype(np.float64)
    err = (x.shape[-1] + 1) * u * (np.abs(x) @ np.abs(W).T + np.abs(b)) + e @ np.abs(W).T
    return x @ W.T + b, err


def _layer_norm_bound(x, e, ln, u):
    "Value and error bound of a LayerNorm on x with error e."
    w, b, C = ln.weight.numpy().astype(np.float64), ln.bias.numpy().astype(np.float64), x.shape[-1]
    mu = x.mean(-1, keepdims=True)
    sd = np.sqrt(((x - mu) ** 2).mean(-1, keepdims=True) + ln.eps)
    xh = (x - mu) / sd
    mean = lambda a: a.mean(-1, keepdims=True)
    prop = np.abs(w) / sd * (e + mean(e) + np.abs(xh) * mean(np.abs(xh) * e))
    rnd = (np.abs(w) * (C * u * mean(np.abs(x)) + (C + 6) * u * np.abs(x - mu)) / sd
           + u * np.abs(b))
    return xh * w + b, prop + rnd


def _gelu_bound(x, e, u):
    "Value and error bound of the tanh GELU on x with error e."
    c = math.sqrt(2 / math.pi)
    a = c * (x + 0.044715 * x**3); t = np.tanh(a)                     # the argument and its tanh
    y = 0.5 * x * (1 + t)
    dy = 0.5 * (1 + t) + 0.5 * x * (1 - t * t) * c * (1 + 3 * 0.044715 * x * x)
    rnd = (0.5 * np.abs(x) * ((1 - t * t) * 5 * u * np.abs(a) + 4 * u * np.abs(t))
           + 3 * u * np.abs(y))
    return y, np.abs(dy) * e + rnd


def _attention_bound(x, e, m, u):
    "Bound through causal MultiHeadAttention, stage by stage as in the attention module."
    B, T, C = x.shape; nh, hs = m.num_heads, m.head_dim
    qkv, eqkv = _linear_bound(x, e, m.qkv, u)
    def heads(a):                                                     # (B, nh, T, hs) each
        return [a[..., i * C:(i + 1) * C].reshape(B, T, nh, hs).transpose(0, 2, 1, 3)
                for i in range(3)]
    (q, k, v), (qa, ka, va), (eq, ek, ev) = heads(qkv), heads(np.abs(qkv)), heads(eqkv)
    sc, tr = hs ** -0.5, lambda a: a.transpose(0, 1, 3, 2)
    s = q @ tr(k) * sc + np.triu(np.full((T, T), -np.inf), 1)        # (B, nh, T, T)
    p = np.exp(s - s.max(-1, keepdims=True)); p /= p.sum(-1, keepdims=True)
    es = sc * ((hs + 2) * u * qa @ tr(ka) + eq @ tr(ka) + qa @ tr(ek))
    gap = np.where(p > 0, s.max(-1, keepdims=True) - s, 0)
    ep = p * (es + (p * es).sum(-1, keepdims=True)) + (T + 4 + gap) * u * p
    merge = lambda a: a.transpose(0, 2, 1, 3).reshape(B, T, C)
    y, ey = merge(p @ v), merge(T * u * (p @ va) + ep @ va + p @ ev)  # (B, T, C)
    return _linear_bound(y, ey, m.proj, u)


def cache_bound(model, ids: np.ndarray, u: float) -> np.ndarray:
    "Elementwise bound on |full pass - cached decoding| of GPT logits (B, T, V), first order in u."
    tr = model.transformer
    wte, wpe = (t.weight.numpy().astype(np.float64) for t in (tr.wte, tr.wpe))
    x = wte[ids] + wpe[:ids.shape[1]]; e = u * np.abs(x)              # (B, T, C)
    for blk in tr.h.children():
        a, ea = _attention_bound(*_layer_norm_bound(x, e, blk.ln_1, u), blk.attn, u)
        x, e = x + a, e + ea + u * np.abs(x + a)
        h, eh = _linear_bound(*_layer_norm_bound(x, e, blk.ln_2, u), blk.mlp.fc, u)
        h, eh = _linear_bound(*_gelu_bound(h, eh, u), blk.mlp.proj, u)
        x, e = x + h, e + eh + u * np.abs(x + h)
    return 2 * _linear_bound(*_layer_norm_bound(x, e, tr.ln_f, u), model.lm_head, u)[1]
