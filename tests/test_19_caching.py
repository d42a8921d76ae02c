"""Caching: greedy tokens and logits with a preallocated KVCache against recomputation, the nbytes
formula, crop and reset, errors that name the values and leave the cache unchanged, and the int8
cache's rounding."""
import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from tinytorch.core.autograd import no_grad
from tinytorch.core.tensor import manual_seed
from tinytorch.models.transformer import GPT
from bounds import cache_bound  # tests/bounds.py: verification code, not in the package
from tinytorch.optimization.caching import (Int8KVCache, KVCache, cache_nbytes, dequantize_kv,
                                            prefill_decode, quantize_kv)

HYPOTHESIS = settings(max_examples=12)  # applied to this file's property tests by conftest.py

configs = st.tuples(st.integers(1, 2), st.integers(1, 3),                 # B, L
                    st.sampled_from([(8, 2), (12, 3), (16, 4), (16, 1)]))  # C, n_head


def model(seed: int, L: int, nh: int, C: int, T: int = 12, scale: float = 10.0) -> GPT:
    "A GPT with weights scaled up: logits of order 10, so greedy choices are rarely near ties."
    manual_seed(seed)
    g = GPT(17, block_size=T, n_layer=L, n_head=nh, n_embd=C)
    for p in g.parameters(): p.data *= scale
    return g.eval()


def cache_for(g: GPT, B: int, cls=KVCache, max_len=None, dtype=np.float32) -> KVCache:
    c = g.config
    return cls(c.n_layer, B, c.n_head, max_len or c.block_size, c.n_embd // c.n_head, dtype)


def recompute(g: GPT, idx: np.ndarray, n: int) -> np.ndarray:
    "Greedy decoding with a full pass over the (cropped) sequence for every new token."
    out = np.array(idx)
    with no_grad():
        for _ in range(n):
            nxt = g(out[:, -g.block_size:])[0].numpy()[:, -1].argmax(-1)        # (B,)
            out = np.concatenate([out, nxt[:, None]], 1)
    return out


@given(configs, st.integers(1, 12), st.integers(0, 2**16))
def test_logits_within_bound_float64_and_float32(cfg, prefill, seed):
    B, L, (C, nh) = cfg
    g32 = model(seed, L, nh, C)
    g64 = model(seed, L, nh, C).double(); g64.load_state_dict(g32.state_dict())
    ids = np.random.default_rng(seed).integers(0, 17, (B, 12))
    for g, u, dt in ((g64, 2.0 ** -53, np.float64), (g32, 2.0 ** -24, np.float32)):
        with no_grad(): full = g(ids)[0].numpy()
        inc = prefill_decode(g, ids, prefill, cache_for(g, B, dtype=dt))
        assert (np.abs(inc - full) <= cache_bound(g, ids, u)).all()   # derived in module 14


@given(configs, st.integers(1, 6), st.integers(1, 20), st.integers(0, 2**16))
def test_greedy_tokens_identical_to_recomputation(cfg, prompt_len, n, seed):
    B, L, (C, nh) = cfg
    g = model(seed, L, nh, C).double()                                 # float64: no near-tie flips
    prompt = np.random.default_rng(seed).integers(0, 17, (B, prompt_len))
    cached = g.generate(prompt, n, top_k=1, cache=cache_for(g, B, dtype=np.float64)).numpy()
    fits = min(n, 12 - prompt_len)             # past 12 tokens recomputation slides its window
    np.testing.assert_array_equal(cached[:, :prompt_len + fits], recompute(g, prompt, fits))
    np.testing.assert_array_equal(cached, g.generate(prompt, n, top_k=1).numpy())   # crops alike


def test_float32_greedy_and_sampled_tokens_match_concatenating_cache():
    g = model(0, 2, 4, 16)
    prompt = np.random.default_rng(0).integers(0, 17, (2, 3))
    for kw in (dict(top_k=1), dict(seed=4), dict(temperature=0.7, top_k=5, seed=5)):
        a = g.generate(prompt, 30, cache=cache_for(g, 2), **kw).numpy()
        np.testing.assert_array_equal(a, g.generate(prompt, 30, **kw).numpy())


def test_generate_with_a_shorter_cache_crops_at_max_len():
    "With max_len 6 < block_size 12 the context is cropped to its last 3 tokens when it reaches 6."
    g = model(1, 1, 2, 8)
    out = [1, 2, 3]
    win = list(out)                                                    # the context the model sees
    with no_grad():
        for _ in range(10):
            nxt = int(g(np.array([win]))[0].numpy()[0, -1].argmax())   # a full pass over the window
            out.append(nxt)
            win = out[-3:] if len(win) == 6 else win + [nxt]
    kv = cache_for(g, 1, max_len=6)
    got = g.generate(np.array([[1, 2, 3]]), 10, top_k=1, cache=kv).numpy()[0]
    np.testing.assert_array_equal(got, out)
    assert kv.length == len(win)


@given(st.integers(1, 4), st.integers(1, 3), st.integers(1, 4), st.integers(1, 9),
       st.integers(1, 8), st.sampled_from([np.float16, np.float32, np.float64]))
def test_nbytes_formula(L, B, nh, T, hs, dtype):
    c = KVCache(L, B, nh, T, hs, dtype)
    formula = 2 * L * B * nh * T * hs * np.dtype(dtype).itemsize
    assert c.nbytes == cache_nbytes(L, B, nh, T, hs, dtype) == formula
    q = Int8KVCache(L, B, nh, T, hs)
    assert q.k.dtype == np.int8 and q.nbytes == 2 * L * B * nh * T * (hs + 4)   # + float32 scales


def test_write_is_in_place_and_returns_views():
    rng = np.random.default_rng(0)
    c = KVCache(2, 2, 3, 10, 4)
    ref = [np.zeros((2, 3, 0, 4), np.float32)] * 2
    for T in (3, 1, 1, 4):
        k, v = rng.standard_normal((2, 2, 3, T, 4), dtype=np.float32)
        ptr = c.k.ctypes.data
        for layer in range(2): K, V = c.write(layer, k, v)
        c.advance(T)
        ref = [np.concatenate([r, x], 2) for r, x in zip(ref, (k, v))]
        assert c.k.ctypes.data == ptr and np.shares_memory(K, c.k) and np.shares_memory(V, c.v)
        np.testing.assert_array_equal(K, ref[0]); np.testing.assert_array_equal(V, ref[1])
    assert c.length == 9


def test_crop_and_reset():
    rng = np.random.default_rng(1)
    c = KVCache(1, 1, 1, 8, 2)
    x = rng.standard_normal((1, 1, 6, 2), dtype=np.float32)
    c.write(0, x, -x); c.advance(6)
    c.crop(4)
    assert c.length == 4
    y = rng.standard_normal((1, 1, 1, 2), dtype=np.float32)
    K, V = c.write(0, y, y); c.advance(1)
    np.testing.assert_array_equal(K, np.concatenate([x[:, :, :4], y], 2))
    np.testing.assert_array_equal(V, np.concatenate([-x[:, :, :4], y], 2))
    c.crop(5); c.crop(0)
    assert c.length == 0
    for bad in (-1, 1, 2.0):
        with pytest.raises(ValueError, match=f"n must be an int in 0..length=0, got {bad!r}"):
            c.crop(bad)
    c.write(0, x, x); c.advance(6); c.reset()
    assert c.length == 0
    np.testing.assert_array_equal(c.write(0, y, -y)[1], -y)


def test_crop_then_decode_matches_a_fresh_prefill():
    g = model(2, 2, 2, 8)
    ids = np.random.default_rng(2).integers(0, 17, (1, 10))
    kv = cache_for(g, 1)
    with no_grad():
        g(ids, cache=kv)
        kv.crop(6)
        a = g(ids[:, 6:8], start=6, cache=kv)[0].numpy()
        b = g(ids[:, :8], cache=cache_for(g, 1))[0].numpy()[:, 6:]
    assert (np.abs(a - b) <= cache_bound(g, ids[:, :8], 2.0 ** -24)[:, 6:]).all()


def snapshot(c: KVCache):
    return c.length, c.k.copy(), c.v.copy()


def same(c: KVCache, s) -> bool:
    return c.length == s[0] and np.array_equal(c.k, s[1]) and np.array_equal(c.v, s[2])


@pytest.mark.parametrize("cls", [KVCache, Int8KVCache])
def test_bad_input_names_values_and_leaves_cache_unchanged(cls):
    g = model(3, 2, 4, 16, T=16)
    ids = np.random.default_rng(3).integers(0, 17, (2, 16))
    kv = cache_for(g, 2, cls, max_len=8)
    with no_grad(): g(ids[:, :5], cache=kv)
    s = snapshot(kv)
    cases = [
        (lambda: g(ids[:, 5:9], start=5, cache=kv),
         "4 tokens from position 5 reach length 9, past the cache's max_len=8"),
        (lambda: g(ids[:1, 5:6], start=5, cache=kv),
         "batch of 1 sequences, but the cache holds batch_size=2"),
        (lambda: g(ids[:, 5:6], start=3, cache=kv), "start=3 but the cache holds 5 positions"),
        (lambda: model(3, 3, 4, 16, T=16)(ids[:, 5:6], start=5, cache=kv),
         "the cache is for another model: cache {'n_layer': 2, 'n_head': 4, 'head_dim': 4}, "
         "model {'n_layer': 3, 'n_head': 4, 'head_dim': 4}"),
        (lambda: model(3, 2, 2, 16, T=16)(ids[:, 5:6], start=5, cache=kv),
         "cache {'n_layer': 2, 'n_head': 4, 'head_dim': 4}, "
         "model {'n_layer': 2, 'n_head': 2, 'head_dim': 8}"),
        (lambda: model(3, 2, 4, 16, T=16).double()(ids[:, 5:6], start=5, cache=kv),
         "model dtype float64, cache dtype float32"),
        (lambda: g(ids[:, 5:6], start=5, past_kv=[], cache=kv), "give past_kv or cache, not both"),
        (lambda: g(np.array([[17], [0]]), start=5, cache=kv), "out of range"),
    ]
    for fn, msg in cases:
        pattern = msg.replace("(", r"\(").replace("{", r"\{")
        with no_grad(), pytest.raises((ValueError, TypeError, IndexError), match=pattern):
            fn()
        assert same(kv, s), msg
    with pytest.raises(RuntimeError, match="decode under no_grad"):
        g(ids[:, 5:6], start=5, cache=kv)
    k = np.zeros((2, 4, 4, 4), np.float32)
    for args, msg in (((2, k, k), "layer 2 out of range for n_layer=2"),
                      ((0, k[:, :3], k[:, :3]), r"got \(2, 3, 4, 4\) and \(2, 3, 4, 4\)"),
                      ((0, k, k), "4 new positions after 5 exceed max_len=8")):
        with pytest.raises((ValueError, IndexError), match=msg): kv.write(*args)
        assert same(kv, s)
    with pytest.raises(ValueError, match="length 5 \\+ 4 is outside 0..max_len=8"): kv.advance(4)
    assert same(kv, s)
    with no_grad(): g(ids[:, 5:6], start=5, cache=kv)                  # and it still works
    assert kv.length == 6


def test_constructor_errors():
    with pytest.raises(ValueError, match=r"positive ints, got \{'n_head': 0, 'max_len': -1\}"):
        KVCache(1, 1, 0, -1, 4)
    with pytest.raises(TypeError, match="dtype must be a float type, got int32"):
        KVCache(1, 1, 1, 1, 1, np.int32)


@given(st.integers(0, 2**16), st.floats(1e-3, 1e3))
def test_quantize_round_trip_within_half_a_step(seed, mag):
    x = (np.random.default_rng(seed).standard_normal((2, 3, 5, 16)) * mag).astype(np.float32)
    x[0, 0, 0] = 0                                                     # an all-zero vector
    q, s = quantize_kv(x)
    assert q.dtype == np.int8 and s.dtype == np.float32 and s.shape == (2, 3, 5, 1)
    assert np.abs(q).max() <= 127 and (np.abs(q).max(-1)[1:] == 127).all()
    d = dequantize_kv(q, s)
    assert d.dtype == np.float32
    assert (np.abs(d - x) <= s / 2 * (1 + 1e-6) + 1e-30).all()       # rounding error <= scale / 2
    assert (d[0, 0, 0] == 0).all()


def test_int8_cache_stores_int8_and_dequantizes_what_quantize_gives():
    rng = np.random.default_rng(5)
    c = Int8KVCache(1, 1, 2, 6, 8)
    k, v = rng.standard_normal((2, 1, 2, 4, 8), dtype=np.float32)
    K, V = c.write(0, k, v)
    qk, sk = quantize_kv(k)
    np.testing.assert_array_equal(c.k[0, :, :, :4], qk)
    np.testing.assert_array_equal(K, dequantize_kv(qk, sk))
    assert np.abs(V - v).max() <= np.abs(v).max() / 127 / 2 * (1 + 1e-6)


def test_int8_cache_logits_close_and_greedy_mostly_agree():
    g = model(6, 2, 4, 32, T=16)
    ids = np.random.default_rng(6).integers(0, 17, (2, 16))
    with no_grad(): full = g(ids)[0].numpy()
    d8 = np.abs(prefill_decode(g, ids, 4, cache_for(g, 2, Int8KVCache)) - full)
    d32 = np.abs(prefill_decode(g, ids, 4, cache_for(g, 2)) - full)
    assert d32.max() < d8.max() < 0.2 * np.abs(full).max()   # int8 error visible, yet small


def test_a_pruned_model_decodes_with_its_pruned_weights():
    # Pruning (module 18) moves a layer's weight to weight_orig and sets the weight in a forward
    # pre-hook; the cached path must compute with what the hooks set, as the full pass does.
    from tinytorch.optimization.compression import global_unstructured, prunable
    g = model(3, 2, 2, 16, T=16).double()
    global_unstructured(prunable(g), amount=0.6)                 # every Linear, attention included
    ids = np.random.default_rng(3).integers(0, 17, (2, 16))
    with no_grad():
        full = g(ids)[0].numpy()                                  # (2, 16, 17)
        kv = cache_for(g, 2, dtype=np.float64)
        steps = [g(ids[:, :5], cache=kv)[0].numpy()]
        steps += [g(ids[:, t:t + 1], start=t, cache=kv)[0].numpy() for t in range(5, 16)]
    np.testing.assert_allclose(np.concatenate(steps, 1), full, rtol=0, atol=1e-9)
    fc = next(g.transformer.h.children()).mlp.fc
    fc.weight_orig.data *= 2                                      # a later change of the weights
    with no_grad():
        kv.reset()
        cached = g(ids, cache=kv)[0].numpy()
        np.testing.assert_allclose(cached, g(ids)[0].numpy(), rtol=0, atol=1e-9)
    assert not np.allclose(cached, full)
    prompt = ids[:, :3]
    assert (g.generate(prompt, 13, top_k=1, cache=cache_for(g, 2, dtype=np.float64)).numpy()
            == recompute(g, prompt, 13)).all()
