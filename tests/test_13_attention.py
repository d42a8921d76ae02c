"""Attention: the fused op's gradient over random shapes and masks, agreement with the composed ops and with PyTorch,
and MultiHeadAttention (gradients, causality, and incremental decoding with a KV cache against a full pass)."""
import math

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st
from hypothesis.extra import numpy as hnp

from tinytorch.core.activations import softmax
from tinytorch.core.attention import MultiHeadAttention, scaled_dot_product_attention
from tinytorch.core.autograd import gradcheck, no_grad
from tinytorch.core.layers import Module, Parameter
from tinytorch.core.tensor import Tensor, manual_seed, randn

HYPOTHESIS = settings(max_examples=25)  # applied to this file's property tests by conftest.py

MASKS = ["none", "bool", "float", "learned float", "causal", "causal and bool"]


def leaf(a):
    return Tensor(np.asarray(a, np.float64), dtype=np.float64, requires_grad=True)


@st.composite
def attention_case(draw):
    "float64 query, key, value with 0-2 batch dims (key and value may share a size-1 head axis) and a mask kind."
    batch = draw(st.sampled_from([(), (2,), (2, 3)]))
    kv_batch = draw(st.sampled_from([batch, batch[:-1] + (1,) if batch else ()]))
    Tq, Tk, E, Ev = (draw(st.integers(1, 4)) for _ in range(4))
    arr = lambda shape: draw(hnp.arrays(np.float64, shape, elements=st.floats(-2, 2)))
    q, k, v = arr(batch + (Tq, E)), arr(kv_batch + (Tk, E)), arr(kv_batch + (Tk, Ev))
    kind = draw(st.sampled_from(MASKS))
    mask_shape = draw(st.sampled_from([(Tq, Tk), (1, Tk), batch + (Tq, Tk)]))
    bool_mask = draw(hnp.arrays(np.bool_, mask_shape))
    float_mask = arr(mask_shape)
    scale = draw(st.none() | st.floats(0.1, 2.0))
    return q, k, v, kind, bool_mask, float_mask, scale


def call(kind, bool_mask, float_mask, scale):
    "A function of (q, k, v[, mask]) applying the mask of `kind`."
    if kind == "learned float":
        return lambda q, k, v, m: scaled_dot_product_attention(q, k, v, attn_mask=m, scale=scale)
    kw = {"none": {}, "bool": dict(attn_mask=bool_mask), "float": dict(attn_mask=float_mask),
          "causal": dict(is_causal=True), "causal and bool": dict(attn_mask=bool_mask, is_causal=True)}[kind]
    return lambda q, k, v: scaled_dot_product_attention(q, k, v, scale=scale, **kw)


@given(attention_case())
def test_gradcheck_over_shapes_and_masks(case):
    q, k, v, kind, bool_mask, float_mask, scale = case
    inputs = [leaf(q), leaf(k), leaf(v)] + ([leaf(float_mask)] if kind == "learned float" else [])
    assert gradcheck(call(kind, bool_mask, float_mask, scale), *inputs)


def bias_of(kind, bool_mask, float_mask, Tq, Tk):
    "The additive mask of `kind`, built independently of the module: 0 / -inf, or the float values."
    causal = np.where(np.arange(Tk)[None, :] <= np.arange(Tq)[:, None] + Tk - Tq, 0.0, -np.inf)   # bottom-right
    allow = np.where(bool_mask, 0.0, -np.inf)
    return {"none": 0.0, "bool": allow, "float": float_mask, "learned float": float_mask, "causal": causal,
            "causal and bool": allow + causal}[kind]


@given(attention_case())
def test_forward_matches_the_formula(case):
    q, k, v, kind, bool_mask, float_mask, scale = case
    Tq, Tk = q.shape[-2], k.shape[-2]
    sc = q.shape[-1] ** -0.5 if scale is None else scale
    s = q @ np.swapaxes(k, -1, -2) * sc + bias_of(kind, bool_mask, float_mask, Tq, Tk)   # (..., Tq, Tk)
    m = s.max(-1, keepdims=True)
    empty = np.isneginf(m)                                            # rows with no allowed key
    e = np.exp(s - np.where(empty, 0, m))
    p = e / np.where(empty, 1, e.sum(-1, keepdims=True))
    extra = (Tensor(float_mask, dtype=np.float64),) if kind == "learned float" else ()
    out = call(kind, bool_mask, float_mask, scale)(leaf(q), leaf(k), leaf(v), *extra).numpy()
    np.testing.assert_allclose(out, p @ v, rtol=0, atol=1e-12)        # float64 rounding: scores <= 34, outputs <= 2
    assert np.all(out[np.broadcast_to(empty, out.shape[:-1] + (1,))[..., 0]] == 0)


def test_fully_masked_rows_give_zero_output_and_zero_gradient():
    q, k, v = leaf(np.ones((3, 2))), leaf(np.ones((2, 2))), leaf(np.arange(4.).reshape(2, 2))
    mask = np.array([[False, False], [True, False], [True, True]])
    out = scaled_dot_product_attention(q, k, v, attn_mask=mask)
    assert np.all(out.numpy()[0] == 0) and np.all(np.isfinite(out.numpy()))
    out.backward(np.ones((3, 2)))
    assert np.all(q.grad[0] == 0) and np.all(np.isfinite(k.grad)) and np.all(np.isfinite(v.grad))


def test_composed_ops_agree_in_value_and_gradient():
    rng = np.random.default_rng(0)
    q, k, v = (leaf(rng.standard_normal(s)) for s in [(2, 3, 4, 5), (2, 3, 6, 5), (2, 3, 6, 2)])
    g = rng.standard_normal((2, 3, 4, 2))
    scaled_dot_product_attention(q, k, v, is_causal=True).backward(g)
    fused = [t.grad for t in (q, k, v)]
    for t in (q, k, v): t.grad = None
    causal = Tensor(bias_of("causal", None, None, 4, 6), dtype=np.float64)
    (softmax(q @ k.transpose(-1, -2) * 5 ** -0.5 + causal, -1) @ v).backward(g)
    for a, t in zip(fused, (q, k, v)): np.testing.assert_allclose(a, t.grad, rtol=0, atol=1e-12)  # float64 rounding


def test_dropout_is_reproducible_scaled_and_differentiable():
    q, k, v = randn(32, 8, seed=0), randn(32, 8, seed=1), Tensor(np.eye(32))
    manual_seed(3); a = scaled_dot_product_attention(q, k, v, dropout_p=0.5).numpy()
    manual_seed(3); b = scaled_dot_product_attention(q, k, v, dropout_p=0.5).numpy()
    full = scaled_dot_product_attention(q, k, v).numpy()
    np.testing.assert_array_equal(a, b)
    assert abs(np.mean(a > 0) - 0.5) < 5 * math.sqrt(0.25 / a.size)   # 5 standard errors of 1024 Bernoulli draws
    np.testing.assert_array_equal(a[a > 0], (full / 0.5)[a > 0])
    qs, ks, vs = (leaf(np.random.default_rng(i).standard_normal((2, 3, 4))) for i in range(3))
    assert gradcheck(lambda q, k, v: (manual_seed(0), scaled_dot_product_attention(q, k, v, dropout_p=0.3))[1], qs, ks, vs)


@pytest.mark.parametrize("bad, match", [
    (dict(key=np.zeros((5, 3))), "key must be a Tensor, got ndarray"),
    (dict(key=Tensor(np.zeros((5, 3)))), r"query \(2, 4\) and key \(5, 3\) must end in the same head size"),
    (dict(value=Tensor(np.zeros((4, 4)))), r"key \(5, 4\) and value \(4, 4\) must have the same number of positions"),
    (dict(attn_mask=np.ones((3, 5), bool)), r"attn_mask of shape \(3, 5\) does not broadcast to the weights' shape \(2, 5\)"),
    (dict(attn_mask=np.ones((2, 5), np.int32)), "attn_mask must be bool or float, got dtype int32"),
    (dict(dropout_p=-0.1), r"dropout_p must be in \[0, 1\), got -0.1"),
])
def test_errors_name_the_values(bad, match):
    args = dict(query=Tensor(np.zeros((2, 4))), key=Tensor(np.zeros((5, 4))), value=Tensor(np.zeros((5, 4)))) | bad
    with pytest.raises((ValueError, TypeError), match=match): scaled_dot_product_attention(**args)


# Comparison with PyTorch (skipped when it is not installed)

def _torch_run(torch, fn, arrays, g):
    ts = [torch.tensor(a, requires_grad=True) for a in arrays]
    out = fn(*ts)
    out.backward(torch.tensor(g))
    return [out.detach().numpy()] + [t.grad.numpy() for t in ts]


def _ours(fn, arrays, g):
    ts = [leaf(a) for a in arrays]
    out = fn(*ts)
    out.backward(g)
    return [out.numpy()] + [t.grad for t in ts]


@pytest.mark.parametrize("case", ["none", "bool", "float", "causal square", "causal Tq < Tk", "broadcast kv"])
def test_against_torch_sdpa(case):
    torch = pytest.importorskip("torch")
    F = torch.nn.functional.scaled_dot_product_attention
    rng = np.random.default_rng(0)
    Tq = 3 if case == "causal Tq < Tk" else 5
    q, k, v = rng.standard_normal((2, 3, Tq, 4)), rng.standard_normal((2, 3, 5, 4)), rng.standard_normal((2, 3, 5, 6))
    if case == "broadcast kv": k, v = k[:, :1], v[:, :1]
    bmask = rng.random((Tq, 5)) > 0.4; bmask[:, 0] = True              # every query may see key 0: no empty rows
    fmask = rng.standard_normal((Tq, 5))
    lower_right = np.tril(np.ones((Tq, 5), bool), 5 - Tq)
    ours_kw, torch_kw = {
        "none": ({}, {}), "broadcast kv": ({}, {}),
        "bool": (dict(attn_mask=bmask), dict(attn_mask=torch.tensor(bmask))),
        "float": (dict(attn_mask=fmask), dict(attn_mask=torch.tensor(fmask))),
        "causal square": (dict(is_causal=True), dict(is_causal=True)),
        "causal Tq < Tk": (dict(is_causal=True), dict(attn_mask=torch.tensor(lower_right))),  # torch's is_causal is top-left
    }[case]
    g = rng.standard_normal((2, 3, Tq, 6))
    ours = _ours(lambda q, k, v: scaled_dot_product_attention(q, k, v, **ours_kw), [q, k, v], g)
    theirs = _torch_run(torch, lambda q, k, v: F(q, k, v, **torch_kw), [q, k, v], g)
    for a, b in zip(ours, theirs): np.testing.assert_allclose(a, b, rtol=0, atol=1e-12)   # float64: rounding only


def test_fully_masked_rows_match_torch():
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(2)
    q, k, v = rng.standard_normal((3, 4)), rng.standard_normal((2, 4)), rng.standard_normal((2, 3))
    mask = np.array([[False, False], [True, False], [True, True]])       # row 0 may see no key
    g = rng.standard_normal((3, 3))
    ours = _ours(lambda q, k, v: scaled_dot_product_attention(q, k, v, attn_mask=mask), [q, k, v], g)
    F = torch.nn.functional.scaled_dot_product_attention
    theirs = _torch_run(torch, lambda q, k, v: F(q, k, v, attn_mask=torch.tensor(mask)), [q, k, v], g)
    for a, b in zip(ours, theirs): np.testing.assert_allclose(a, b, rtol=0, atol=1e-12)   # zeros for row 0 on both sides


def test_torch_is_causal_is_top_left_aligned_and_ours_bottom_right():
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(1)
    q, k, v = rng.standard_normal((2, 4)), rng.standard_normal((5, 4)), rng.standard_normal((5, 3))
    ours = scaled_dot_product_attention(leaf(q), leaf(k), leaf(v), is_causal=True).numpy()
    top_left = torch.nn.functional.scaled_dot_product_attention(*map(torch.tensor, (q, k, v)), is_causal=True).numpy()
    assert np.abs(ours - top_left).max() > 0.01                       # the documented difference is real
    ours_tl = scaled_dot_product_attention(leaf(q), leaf(k), leaf(v), attn_mask=np.tril(np.ones((2, 5), bool))).numpy()
    np.testing.assert_allclose(ours_tl, top_left, rtol=0, atol=1e-12)


# MultiHeadAttention

@pytest.mark.parametrize("C, nh, causal, bias", [(4, 2, True, True), (6, 3, False, True), (4, 1, True, False)])
def test_mha_gradcheck_through_input_and_parameters(C, nh, causal, bias):
    manual_seed(0)
    m = MultiHeadAttention(C, nh, bias=bias).double()
    x = leaf(np.random.default_rng(1).standard_normal((2, 3, C)))
    assert gradcheck(lambda x, *ps: m(x, is_causal=causal), x, *m.parameters())


def test_mha_gradcheck_with_cached_keys_and_values():
    manual_seed(0)
    m = MultiHeadAttention(4, 2).double()
    rng = np.random.default_rng(2)
    x, pk, pv = leaf(rng.standard_normal((2, 2, 4))), leaf(rng.standard_normal((2, 2, 3, 2))), leaf(rng.standard_normal((2, 2, 3, 2)))
    assert gradcheck(lambda x, k, v, *ps: m(x, past_kv=(k, v)), x, pk, pv, *m.parameters())


def test_mha_against_torch_multihead_attention():
    torch = pytest.importorskip("torch")
    manual_seed(0)
    m = MultiHeadAttention(8, 2).double()
    ref = torch.nn.MultiheadAttention(8, 2, batch_first=True, dtype=torch.float64)
    with torch.no_grad():                                             # qkv.weight has in_proj_weight's (3C, C) layout
        ref.in_proj_weight.copy_(torch.tensor(m.qkv.weight.numpy())); ref.in_proj_bias.copy_(torch.tensor(m.qkv.bias.numpy()))
        ref.out_proj.weight.copy_(torch.tensor(m.proj.weight.numpy())); ref.out_proj.bias.copy_(torch.tensor(m.proj.bias.numpy()))
    x = np.random.default_rng(3).standard_normal((2, 5, 8))
    tx = torch.tensor(x)
    causal = torch.triu(torch.full((5, 5), float("-inf"), dtype=torch.float64), 1)
    theirs = ref(tx, tx, tx, attn_mask=causal, need_weights=False)[0].detach().numpy()
    np.testing.assert_allclose(m(Tensor(x, dtype=np.float64)).numpy(), theirs, rtol=0, atol=1e-12)  # float64 rounding


def incremental_bound(m: MultiHeadAttention, x: np.ndarray) -> np.ndarray:
    "Elementwise first-order bound on |full causal pass - incremental pass| for float32 `m` on x (B, T, C).\n\n"
    "Each stage's rounding: a sum of n products is within n*u*sum|a_i b_i| of exact (u = 2**-24); the softmax\n"
    "turns score errors ds into |dp_j| <= p_j (|ds_j| + sum_i p_i |ds_i|) and adds (T + 4 + |s_j - m|) u p_j of its\n"
    "own. Both passes are within the bound of the exact result, so within twice of each other."
    u, (B, T, C), nh, hs = 2.0**-24, x.shape, m.num_heads, m.head_dim
    W, b = m.qkv.weight.numpy().astype(np.float64), m.qkv.bias.numpy().astype(np.float64)
    Wp, bp = np.abs(m.proj.weight.numpy().astype(np.float64)), np.abs(m.proj.bias.numpy().astype(np.float64))
    heads = lambda a: [a[..., i * C:(i + 1) * C].reshape(B, T, nh, hs).transpose(0, 2, 1, 3) for i in range(3)]
    x64 = x.astype(np.float64)
    (q, k, v), (qa, ka, va) = heads(x64 @ W.T + b), heads(np.abs(x64) @ np.abs(W).T + np.abs(b))
    eq, ek, ev = ((C + 1) * u * a for a in (qa, ka, va))
    sc, kT = hs ** -0.5, (lambda a: a.transpose(0, 1, 3, 2))
    s = q @ kT(k) * sc + np.triu(np.full((T, T), -np.inf), 1)
    p = np.exp(s - s.max(-1, keepdims=True)); p /= p.sum(-1, keepdims=True)
    es = sc * ((hs + 2) * u * qa @ kT(ka) + eq @ kT(ka) + qa @ kT(ek))
    gap = np.where(p > 0, s.max(-1, keepdims=True) - s, 0)
    ep = p * (es + (p * es).sum(-1, keepdims=True)) + (T + 4 + gap) * u * p
    ey = T * u * (p @ va) + ep @ va + p @ ev
    merge = lambda a: a.transpose(0, 2, 1, 3).reshape(B, T, C)
    return 2 * ((C + 1) * u * (np.abs(merge(p @ v)) @ Wp.T + bp) + merge(ey) @ Wp.T)


@given(st.data(), st.integers(1, 10), st.sampled_from([(8, 1), (8, 2), (12, 3), (16, 4)]), st.integers(1, 2))
def test_incremental_decoding_matches_a_full_pass(data, T, shape, B):
    C, nh = shape
    manual_seed(data.draw(st.integers(0, 1000)))
    m = MultiHeadAttention(C, nh)
    x = randn(B, T, C, seed=data.draw(st.integers(0, 1000)))
    with no_grad():
        full = m(x).numpy()
        past, outs, start = None, [], 0
        while start < T:                                              # a prompt chunk, then pieces of random length
            n = data.draw(st.integers(1, T - start))
            y, past = m(x[:, start:start + n], past_kv=past, use_cache=True)
            assert past[0].shape == past[1].shape == (B, nh, start + n, C // nh)
            outs.append(y.numpy()); start += n
    assert np.all(np.abs(np.concatenate(outs, 1) - full) <= incremental_bound(m, x.numpy()))


@given(st.integers(2, 8), st.data())
def test_future_tokens_do_not_change_earlier_outputs(T, data):
    manual_seed(0)
    m = MultiHeadAttention(8, 2)
    t = data.draw(st.integers(0, T - 2))
    x = randn(2, T, 8, seed=data.draw(st.integers(0, 100)))
    x2 = Tensor(x.numpy().copy()); x2.data[:, t + 1:] += 1.0
    np.testing.assert_array_equal(m(x2).numpy()[:, :t + 1], m(x).numpy()[:, :t + 1])  # masked weights are exactly 0


def test_mha_layout_errors_and_dropout_only_in_training():
    m = MultiHeadAttention(8, 2, dropout=0.5)
    assert [n for n, _ in m.named_parameters()] == ["qkv.weight", "qkv.bias", "proj.weight", "proj.bias"]
    x = randn(1, 4, 8, seed=0)
    m.eval()
    np.testing.assert_array_equal(m(x).numpy(), m(x).numpy())          # no dropout in evaluation
    m.train(); manual_seed(0); a = m(x).numpy(); manual_seed(1)
    assert not np.array_equal(a, m(x).numpy())
    with pytest.raises(ValueError, match="embed_dim=10 is not divisible by num_heads=4"): MultiHeadAttention(10, 4)
    with pytest.raises(ValueError, match=r"expected input \(B, T, 8\), got shape \(4, 8\)"): m(randn(4, 8))
    with pytest.raises(ValueError, match=r"cached key must have shape \(B=1, num_heads=2, T_past, head_dim=4\)"):
        m(x, past_kv=(randn(1, 2, 3, 5), randn(1, 2, 3, 5)))
