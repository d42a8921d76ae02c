"""Transformers: gradients of the block and of GPT over random sizes, cached decoding against a full pass,
generation (seeds, cropping, the uncached reference), sampling, parameter counts, checkpoints, and PyTorch."""
import math

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from tinytorch.core.autograd import gradcheck, no_grad
from tinytorch.core.layers import Module, Parameter
from tinytorch.core.optimizers import AdamW
from tinytorch.core.tensor import manual_seed, randn
from tinytorch.core.training import load_checkpoint, save_checkpoint
from tinytorch.models.transformer import GPT, GPTConfig, TransformerBlock, sample_next
from bounds import cache_bound  # tests/bounds.py: verification code, not in the package

HYPOTHESIS = settings(max_examples=15)  # applied to this file's property tests by conftest.py


def scale_weights(model: Module, f: float) -> Module:
    "Multiply every parameter by f, so activations and logits are of order 1 rather than 0.02."
    for p in model.parameters(): p.data *= f
    return model


sizes = st.tuples(st.integers(1, 2), st.integers(1, 4), st.sampled_from([(4, 1), (4, 2), (6, 3), (8, 2)]))


@given(sizes, st.integers(0, 2**16))
def test_block_gradcheck(size, seed):
    B, T, (C, nh) = size
    manual_seed(seed)
    blk = scale_weights(TransformerBlock(C, nh).double(), 3.0)
    x = randn(B, T, C, seed=seed, dtype=np.float64).requires_grad_()
    assert gradcheck(lambda x, *ps: blk(x), x, *blk.parameters())


@settings(max_examples=5)
@given(st.integers(2, 6), st.integers(1, 2), st.integers(1, 4), st.integers(0, 2**16))
def test_gpt_loss_gradcheck(V, L, T, seed):
    manual_seed(seed)
    g = scale_weights(GPT(V, block_size=4, n_layer=L, n_head=2, n_embd=4).double(), 5.0)
    rng = np.random.default_rng(seed)
    ids, tgt = rng.integers(0, V, (2, T)), rng.integers(0, V, (2, T))
    assert gradcheck(lambda *ps: g(ids, tgt)[1], *g.parameters())


def decode(model: GPT, ids: np.ndarray, prefill: int) -> tuple:
    "Logits of a full pass, and of a prefill followed by one token at a time with the cache."
    with no_grad():
        full = model(ids)[0].numpy()
        logits, _, kv = model(ids[:, :prefill], use_cache=True)
        steps = [logits.numpy()]
        for t in range(prefill, ids.shape[1]):
            logits, _, kv = model(ids[:, t:t + 1], start=t, past_kv=kv, use_cache=True)
            steps.append(logits.numpy())
    return full, np.concatenate(steps, axis=1)


@given(st.integers(1, 12), st.integers(1, 3), st.sampled_from([(16, 2), (32, 4), (24, 3)]), st.integers(0, 2**16))
def test_cached_decoding_matches_full_pass(prefill, L, size, seed):
    C, nh = size
    manual_seed(seed)
    m32 = scale_weights(GPT(17, block_size=12, n_layer=L, n_head=nh, n_embd=C), 10.0)
    m64 = GPT(17, block_size=12, n_layer=L, n_head=nh, n_embd=C).double()
    m64.load_state_dict(m32.state_dict())
    ids = np.random.default_rng(seed).integers(0, 17, (2, 12))
    full64, inc64 = decode(m64, ids, prefill)
    # float64: the first-order elementwise bound on the rounding error of both paths, derived in the notebook
    assert (np.abs(inc64 - full64) <= cache_bound(m64, ids, 2.0 ** -53)).all()
    full32, inc32 = decode(m32, ids, prefill)
    assert (np.abs(inc32 - full32) <= cache_bound(m32, ids, 2.0 ** -24)).all()   # valid, if loose, in float32
    # float32 against float64, relative to the logits: over 150 random cases the cached path's RMS error was at
    # most 8.8e-5 of the logits' RMS (the full pass's, 9.9e-5); a stale or misplaced cache entry changes the logits
    # by their own size. (A ratio to the full pass's own error is no test: that error is sometimes tiny by luck.)
    rms = lambda a: np.sqrt(np.mean(a ** 2))
    assert rms(inc32 - full64) <= 1e-3 * rms(full64)


def test_start_and_cache_must_agree():
    manual_seed(0)
    g = GPT(9, block_size=6, n_layer=2, n_head=2, n_embd=8)
    ids = np.arange(6)[None] % 9
    with no_grad(): _, _, kv = g(ids[:, :3], use_cache=True)
    with pytest.raises(ValueError, match="past_kv holds 3 positions but start=2"): g(ids[:, 3:4], start=2, past_kv=kv)
    with pytest.raises(ValueError, match="past_kv has 1 entries, expected one per block \\(2\\)"): g(ids[:, 3:4], start=3, past_kv=kv[:1])
    with pytest.raises(ValueError, match="4 tokens from position 3 reach length 7, longer than block_size=6"):
        g(np.zeros((1, 4), np.int64), start=3, past_kv=kv)
    with pytest.raises(ValueError, match="start must be a non-negative int, got -1"): g(ids, start=-1)


@given(st.integers(1, 30), st.sampled_from([None, 1, 3]), st.floats(0.3, 2.0), st.integers(0, 2**16))
def test_generate_matches_uncached_reference(n_new, top_k, temperature, seed):
    "Sampling with the cache picks the tokens nanoGPT's full-pass generation picks (float64, within block_size)."
    manual_seed(seed)
    g = scale_weights(GPT(7, block_size=32, n_layer=1, n_head=2, n_embd=8).double(), 10.0)
    prompt = np.random.default_rng(seed).integers(0, 7, (2, 2))
    rng, ref = np.random.default_rng(seed), prompt.copy()
    with no_grad():
        for _ in range(n_new):
            logits = g(ref)[0].numpy()[:, -1]
            ref = np.concatenate([ref, sample_next(logits, temperature, top_k, rng)[:, None]], 1)
    np.testing.assert_array_equal(g.generate(prompt, n_new, temperature, top_k, seed=seed).numpy(), ref)


def test_generate_beyond_block_size_rebuilds_cache():
    manual_seed(0)
    g = scale_weights(GPT(7, block_size=8, n_layer=1, n_head=2, n_embd=8), 10.0)
    g.eval()
    out = g.generate(np.array([[1, 2, 3]]), 30, seed=4).numpy()
    assert out.shape == (1, 33) and g.training is False
    long_prompt = np.random.default_rng(0).integers(0, 7, (1, 20))   # longer than block_size: cropped at once
    assert g.generate(long_prompt, 5, seed=1).numpy().shape == (1, 25)
    np.testing.assert_array_equal(g.generate(long_prompt, 5, seed=1).numpy()[:, :20], long_prompt)
    np.testing.assert_array_equal(g.generate(long_prompt, 5, seed=1).numpy(), g.generate(long_prompt, 5, seed=1).numpy())


@given(st.integers(1, 6), st.integers(0, 2**16))
def test_top_k_draws_only_the_k_largest(k, seed):
    rng = np.random.default_rng(seed)
    z = rng.standard_normal((50, 6))
    draws = sample_next(z, 1.0, k, rng)
    kth = np.sort(z, axis=1)[:, -k]
    assert (z[np.arange(50), draws] >= kth).all()


def test_sampling_errors():
    z = np.zeros((1, 4))
    for bad in (0, -0.5, float("inf"), float("nan")):
        with pytest.raises(ValueError, match="temperature must be a positive finite number"): sample_next(z, bad)
    for bad in (0, 5, 2.0):
        with pytest.raises(ValueError, match="top_k must be None or an int in 1..4"): sample_next(z, 1.0, bad)


@given(st.integers(2, 100), st.integers(1, 64), st.integers(1, 3), st.sampled_from([(8, 2), (12, 3), (16, 4)]))
def test_parameter_count(V, T, L, size):
    C, nh = size
    g = GPT(V, T, L, nh, C)
    assert g.num_params(non_embedding=False) == V * C + T * C + L * (12 * C * C + 13 * C) + 2 * C
    assert g.num_params() == g.num_params(non_embedding=False) - T * C
    assert g.flops_per_token() == 6 * g.num_params() + 12 * L * nh * (C // nh) * T


def test_reproducible_and_tied():
    manual_seed(3); a = GPT(11, 8, 2, 2, 8)
    manual_seed(3); b = GPT.from_config(GPTConfig(11, 8, 2, 2, 8))
    for (na, pa), (nb, pb) in zip(a.named_parameters(), b.named_parameters()):
        assert na == nb; np.testing.assert_array_equal(pa.numpy(), pb.numpy())
    assert a.lm_head.weight is a.transformer.wte.weight
    _, loss = a(np.array([[1, 2, 3]]), np.array([[2, 3, 4]]))
    loss.backward()
    assert a.transformer.wte.weight.grad is not None and np.abs(a.transformer.wte.weight.grad[5]).max() > 0   # head only


def test_checkpoint_round_trip(tmp_path):
    manual_seed(0)
    g = GPT(11, 8, 2, 2, 8)
    opt = AdamW(g.parameters(), lr=1e-3)
    ids = np.array([[1, 2, 3, 4]])
    _, loss = g(ids, ids); loss.backward(); opt.step()
    path = save_checkpoint(tmp_path / "gpt.npz", g, opt, vocab=list("abcdefghijk"), step=1)
    manual_seed(1)
    h = GPT(11, 8, 2, 2, 8)
    info = load_checkpoint(path, h, AdamW(h.parameters(), lr=1e-3))
    assert info["vocab"] == list("abcdefghijk") and info["step"] == 1
    assert h.lm_head.weight is h.transformer.wte.weight                # still one matrix after loading
    with no_grad(): np.testing.assert_array_equal(h(ids)[0].numpy(), g(ids)[0].numpy())


def torch_gpt_logits(torch, g: GPT, ids: np.ndarray):
    "The same GPT written with PyTorch's functional ops on our weights (float64): logits (B, T, V)."
    F = torch.nn.functional
    W = {k: torch.tensor(v, dtype=torch.float64) for k, v in g.state_dict().items()}
    c = g.config; B, T = ids.shape; hs = c.n_embd // c.n_head
    x = W["transformer.wte.weight"][torch.tensor(ids)] + W["transformer.wpe.weight"][:T]
    ln = lambda x, p: F.layer_norm(x, (c.n_embd,), W[p + ".weight"], W[p + ".bias"], 1e-5)
    lin = lambda x, p: F.linear(x, W[p + ".weight"], W.get(p + ".bias"))
    for i in range(c.n_layer):
        p = f"transformer.h.{i}"
        q, k, v = lin(ln(x, p + ".ln_1"), p + ".attn.qkv").split(c.n_embd, dim=2)
        q, k, v = (t.view(B, T, c.n_head, hs).transpose(1, 2) for t in (q, k, v))
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True).transpose(1, 2).reshape(B, T, c.n_embd)
        x = x + lin(y, p + ".attn.proj")
        x = x + lin(F.gelu(lin(ln(x, p + ".ln_2"), p + ".mlp.fc"), approximate="tanh"), p + ".mlp.proj")
    return F.linear(ln(x, "transformer.ln_f"), W["lm_head.weight"])


def test_against_torch():
    torch = pytest.importorskip("torch")
    manual_seed(0)
    g = scale_weights(GPT(13, 10, 2, 2, 8).double(), 10.0)
    ids = np.random.default_rng(0).integers(0, 13, (3, 10))
    ours = g(ids, ids)
    ref = torch_gpt_logits(torch, g, ids)
    # float64 on both sides, sums of at most 4C = 32 terms of order 10-100 per stage: 1e-9 is far above rounding
    np.testing.assert_allclose(ours[0].numpy(), ref.numpy(), rtol=0, atol=1e-9)
    ref_loss = torch.nn.functional.cross_entropy(ref.reshape(-1, 13), torch.tensor(ids.reshape(-1)))
    assert abs(ours[1].item() - ref_loss.item()) < 1e-10
