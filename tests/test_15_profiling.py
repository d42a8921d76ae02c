"""Profiling: FLOP counts against hand-derived formulas over shapes, strides and padding drawn by hypothesis; the
GPT's 6N + 12LHQT; hooks restored after errors and nesting; the profiler's trace parses and nests in time."""
import json

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

import tinytorch.core.autograd as autograd
from tinytorch.core.autograd import _grad_rules
from tinytorch.core.layers import Linear, Module, Sequential
from tinytorch.core.activations import ReLU
from tinytorch.core.attention import scaled_dot_product_attention
from tinytorch.core.spatial import Conv2d, conv2d
from tinytorch.core.tensor import Tensor, manual_seed, randn
from tinytorch.models.transformer import GPT
from tinytorch.optimization.profiling import FLOPCounter, count_flops

settings.register_profile("profiling", max_examples=25, deadline=None)
settings.load_profile("profiling")

dims = st.integers(1, 5)


def leaf(*shape) -> Tensor:
    return randn(*shape).requires_grad_()


@given(st.lists(st.tuples(dims, st.booleans(), st.booleans()), max_size=2), st.integers(0, 2), dims, dims, dims,
       st.booleans(), st.booleans())
def test_matmul_macs_are_output_size_times_inner_dim(batch, drop, n, k, m, a_grad, b_grad):
    ba = [d if in_a else 1 for d, in_a, _ in batch]                     # broadcast batch axes of a and b
    bb = [d if in_b else 1 for d, _, in_b in batch][drop:]              # b may have fewer of them
    a, b = randn(*ba, n, k), randn(*bb, k, m)
    if a_grad: a.requires_grad_()
    if b_grad: b.requires_grad_()
    out_size = np.matmul(a.data, b.data).size
    fc = count_flops(lambda x, y: x @ y, a, b, backward=a_grad or b_grad)
    assert fc.macs == out_size * k * (1 + a_grad + b_grad)
    assert fc.forward_flops == 2 * out_size * k


@given(st.integers(1, 2), st.integers(1, 3), st.integers(1, 4), st.integers(3, 9), st.integers(3, 9),
       st.integers(1, 3), st.integers(1, 3), st.integers(1, 3), st.integers(0, 2), st.booleans())
def test_conv2d_flops_match_the_formula(N, C, O, H, W, K, sh, sw, pad, bias):
    if K > H + 2 * pad or K > W + 2 * pad: return
    OH, OW = (H + 2 * pad - K) // sh + 1, (W + 2 * pad - K) // sw + 1
    x, w = leaf(N, C, H, W), leaf(O, C, K, K)
    b = leaf(O) if bias else None
    fc = count_flops(lambda x: conv2d(x, w, b, stride=(sh, sw), padding=pad), x, backward=True)
    macs = N * O * OH * OW * C * K * K
    assert fc.macs == 3 * macs                                          # forward, dL/dx, dL/dW
    bias_flops = 2 * N * O * OH * OW if bias else 0                      # add forward, sum backward
    col2im = C * K * K * N * OH * OW
    assert fc.elementwise_flops == bias_flops + col2im


def test_linear_and_sequential_by_module():
    manual_seed(0)
    model = Sequential(Linear(6, 5), ReLU(), Linear(5, 3))
    fc = count_flops(model, randn(4, 6))
    assert fc.by_module['0'] == 2 * 4 * 6 * 5 + 4 * 5
    assert fc.by_module['2'] == 2 * 4 * 5 * 3 + 4 * 3
    assert fc.total_flops == fc.by_module['0'] + fc.by_module['2'] + 4 * 5   # the ReLU, 1 per element


@given(st.integers(1, 2), st.integers(1, 3), st.integers(1, 6), st.integers(1, 6), st.integers(1, 4))
def test_attention_flops(B, H, Tq, Tk, E):
    q, k, v = leaf(B, H, Tq, E), leaf(B, H, Tk, E), leaf(B, H, Tk, E)
    fc = count_flops(scaled_dot_product_attention, q, k, v, backward=True)
    assert fc.macs == 3 * 2 * B * H * Tq * Tk * E


def test_gpt_count_matches_6n_plus_12lhqt():
    manual_seed(1)
    gpt = GPT(vocab_size=11, block_size=8, n_layer=2, n_head=2, n_embd=8)
    B, T = 2, 8
    idx = np.random.default_rng(1).integers(0, 11, (B, T))
    fc = count_flops(gpt, idx, idx, backward=True, loss_fn=lambda out: out[1])
    c = gpt.config
    matrices = 12 * c.n_embd ** 2 * c.n_layer + c.vocab_size * c.n_embd   # Linear weights, the tied head once
    assert fc.mac_flops == (6 * matrices + 12 * c.n_layer * c.n_embd * T) * B * T
    vectors = gpt.num_params() - matrices                                  # biases and LayerNorm weights
    assert gpt.flops_per_token(T) * B * T - fc.mac_flops == 6 * vectors * B * T


def originals():
    return Tensor.__dict__['_from_op'], dict(_grad_rules), Module.__dict__['__call__']


def test_hooks_restored_after_an_exception():
    before = originals()
    model = Linear(3, 2)

    def boom(x):
        y = model(x)
        y.sum().backward()
        raise ZeroDivisionError("inside the model")

    with pytest.raises(ZeroDivisionError, match="inside the model"):
        count_flops(boom, leaf(2, 3))
    after = originals()
    assert after[0] is before[0] and after[2] is before[2] and after[1] == before[1]
    assert Tensor._from_op is autograd._record


def test_nested_counters_both_count_and_unwind():
    before = originals()
    x = randn(3, 4)
    with FLOPCounter() as outer:
        x @ randn(4, 5)
        with FLOPCounter() as inner:
            x @ randn(4, 2)
        assert Tensor.__dict__['_from_op'] is not before[0]
    assert outer.macs == 3 * 4 * 5 + 3 * 4 * 2 and inner.macs == 3 * 4 * 2
    assert originals()[0] is before[0]
    with pytest.raises(RuntimeError, match="already active"):
        with outer:
            with outer: pass
    assert originals()[0] is before[0]
