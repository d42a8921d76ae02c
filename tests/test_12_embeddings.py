"""Embeddings: the lookup and its scatter-add gradient over random shapes, id checks, the sinusoidal formula, and
positional encodings with a start position (a sequence fed in pieces gets the vectors of a full pass)."""
import math

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st
from hypothesis.extra import numpy as hnp

from tinytorch.core.autograd import gradcheck
from tinytorch.core.tensor import Tensor, manual_seed, randn
from tinytorch.text.embeddings import (Embedding, LearnedPositionalEmbedding, PositionalEncoding, embedding,
                                       sinusoidal_table)

HYPOTHESIS = settings(max_examples=30)  # applied to this file's property tests by conftest.py

INT_DTYPES = st.sampled_from([np.int64, np.int32, np.int16, np.uint8, np.uint16])


@st.composite
def ids_and_table(draw):
    "Ids of 0-3 dims drawn from a small vocabulary (so they repeat), any integer dtype, and a float64 table."
    num, dim = draw(st.integers(1, 5)), draw(st.integers(1, 4))
    shape = draw(hnp.array_shapes(min_dims=0, max_dims=3, min_side=0, max_side=4))
    ids = draw(hnp.arrays(draw(INT_DTYPES), shape, elements=st.integers(0, num - 1)))
    return ids, randn(num, dim, seed=draw(st.integers(0, 2**16)), dtype=np.float64).requires_grad_()


@given(ids_and_table())
def test_forward_is_the_one_hot_product(case):
    ids, w = case
    out = embedding(Tensor(ids), w).numpy()
    onehot = np.eye(w.shape[0])[ids.reshape(-1).astype(np.int64)]      # (N, num)
    assert out.shape == ids.shape + (w.shape[1],)
    np.testing.assert_array_equal(out.reshape(-1, w.shape[1]), onehot @ w.numpy())  # one nonzero term per sum: exact


@given(ids_and_table())
def test_gradcheck_with_repeated_ids(case):
    ids, w = case
    assert gradcheck(lambda t: embedding(ids, t), w)


@given(ids_and_table(), st.data())
def test_gradient_is_the_count_weighted_scatter(case, data):
    ids, w = case
    g = data.draw(hnp.arrays(np.float64, ids.shape + (w.shape[1],), elements=st.floats(-2, 2)))
    embedding(ids, w).backward(g)
    expected = np.zeros(w.shape)
    for pos in np.ndindex(ids.shape): expected[ids[pos]] += g[pos]    # the definition, one position at a time
    np.testing.assert_allclose(w.grad, expected, rtol=0, atol=1e-12)  # float64 sums of at most 64 terms of size <= 2


@given(ids_and_table(), st.data())
def test_padding_row_gets_no_gradient_and_others_are_unchanged(case, data):
    ids, w = case
    pad = data.draw(st.integers(0, w.shape[0] - 1))
    embedding(ids, w).sum().backward()
    plain = w.grad.copy(); w.grad = None
    embedding(ids, w, padding_idx=pad).sum().backward()
    plain[pad] = 0
    np.testing.assert_array_equal(w.grad, plain)


@given(st.data(), hnp.array_shapes(min_dims=1, max_dims=3, min_side=1, max_side=4), st.integers(1, 6),
       st.sampled_from(["negative", "too large"]))
def test_out_of_range_id_is_named_with_its_position(data, shape, num, kind):
    ids = data.draw(hnp.arrays(np.int64, shape, elements=st.integers(0, num - 1)))
    pos = data.draw(st.tuples(*[st.integers(0, n - 1) for n in shape]))
    bad = data.draw(st.integers(-50, -1) if kind == "negative" else st.integers(num, num + 50))
    ids[pos] = bad
    with pytest.raises(IndexError, match=rf"token id {bad} at position \({', '.join(map(str, pos))},?\) "
                                         rf"is out of range for a vocabulary of {num} \(valid ids 0..{num - 1}\)"):
        Embedding(num, 2)(Tensor(ids))


@pytest.mark.parametrize("ids", [np.array([0.0, 1.0]), np.array([True, False]), np.array([1 + 0j])])
def test_non_integer_ids_are_refused(ids):
    with pytest.raises(TypeError, match=f"token ids must be integers, got dtype {ids.dtype}"):
        Embedding(3, 2)(ids)


def test_init_is_standard_normal_and_reproducible():
    manual_seed(0)
    w = Embedding(2000, 50).weight.numpy()
    assert abs(w.mean()) < 5 / math.sqrt(w.size)                     # 5 standard errors of the mean
    assert abs(w.std() - 1) < 5 / math.sqrt(2 * w.size)              # 5 standard errors of the std
    manual_seed(0)
    np.testing.assert_array_equal(Embedding(2000, 50).weight.numpy(), w)


@given(st.integers(1, 40), st.integers(1, 17))
def test_sinusoidal_table_matches_the_formula(max_len, d_model):
    pe = sinusoidal_table(max_len, d_model)
    ref = np.array([[math.sin(p / 10000 ** (c / d_model)) if c % 2 == 0 else math.cos(p / 10000 ** ((c - 1) / d_model))
                     for c in range(d_model)] for p in range(max_len)])
    assert pe.dtype == np.float32 and pe.shape == (max_len, d_model)
    np.testing.assert_allclose(pe, ref, rtol=0, atol=2**-25 + 1e-12)  # float32 rounding of values <= 1, plus float64 noise


def pieces(draw, T):
    "Cut range(T) into consecutive pieces of random lengths; yield (start, length)."
    start = 0
    while start < T:
        n = draw(st.integers(1, T - start))
        yield start, n
        start += n


@given(st.data(), st.integers(1, 12), st.sampled_from([PositionalEncoding, LearnedPositionalEmbedding]))
def test_a_sequence_in_pieces_gets_the_vectors_of_a_full_pass(data, T, cls):
    manual_seed(0)
    enc = cls(16, 6)
    x = randn(2, T, 6, seed=data.draw(st.integers(0, 100)))
    full, table = enc(x).numpy(), enc(16).numpy()                     # (2, T, 6), (16, 6)
    for start, n in pieces(data.draw, T):
        np.testing.assert_array_equal(enc(x[:, start:start + n], start=start).numpy(), full[:, start:start + n])
        np.testing.assert_array_equal(enc(n, start=start).numpy(), table[start:start + n])


@pytest.mark.parametrize("cls", [PositionalEncoding, LearnedPositionalEmbedding])
def test_positions_beyond_max_len_are_an_error(cls):
    enc = cls(8, 4)
    enc(4, start=4)                                                   # exactly up to max_len is fine
    with pytest.raises(IndexError, match=f"{cls.__name__}: positions 5..8 go beyond max_len=8"): enc(4, start=5)
    with pytest.raises(IndexError, match="positions 0..8 go beyond max_len=8"): enc(randn(1, 9, 4))
    with pytest.raises(ValueError, match=r"shape \(\.\.\., T, 4\), got shape \(1, 3, 5\)"): enc(randn(1, 3, 5))
    with pytest.raises(ValueError, match="got start=-2"): enc(2, start=-2)


def test_sinusoidal_encoding_is_a_buffer_and_learned_one_a_parameter():
    pe, lpe = PositionalEncoding(8, 4), LearnedPositionalEmbedding(8, 4)
    assert list(pe.parameters()) == [] and list(pe.state_dict()) == ["pe"]
    assert [n for n, _ in lpe.named_parameters()] == ["weight"] and list(lpe.state_dict()) == ["weight"]


def test_against_torch_embedding():
    torch = pytest.importorskip("torch")
    manual_seed(1)
    emb = Embedding(7, 3, padding_idx=2)
    ids = np.array([[0, 2, 6, 6], [1, 2, 0, 5]])
    g = np.random.default_rng(0).standard_normal((2, 4, 3)).astype(np.float32)
    emb(Tensor(ids)).backward(g)
    tw = torch.tensor(emb.weight.numpy(), requires_grad=True)
    out = torch.nn.functional.embedding(torch.from_numpy(ids), tw, padding_idx=2)
    out.backward(torch.from_numpy(g))
    np.testing.assert_array_equal(emb(Tensor(ids)).numpy(), out.detach().numpy())   # a gather: exact
    np.testing.assert_allclose(emb.weight.grad, tw.grad.numpy(), rtol=0, atol=1e-6)  # float32 sums of <= 2 terms of size ~1
