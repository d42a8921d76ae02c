"""Profiling: FLOP counts against hand-derived formulas over shapes, strides and padding drawn by
hypothesis; the GPT's 6N + 12LHQT; hooks restored after errors and nesting; the profiler's
trace parses and nests in time; memory breakdown against its prediction; roofline classes."""
import json
import os
import tracemalloc

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
from tinytorch.core.losses import cross_entropy
from tinytorch.core.optimizers import SGD, Adam
from tinytorch.optimization.profiling import (FLOPCounter, MemoryProfiler, OpEvent, Profiler, Timer,
                                              aggregate, attainable_gflops, blas_threads, compare,
                                              count_flops, measure, predicted_memory,
                                              roofline_bound, step_memory)

HYPOTHESIS = settings(max_examples=25)  # applied to this file's property tests by conftest.py

dims = st.integers(1, 5)


def leaf(*shape) -> Tensor:
    return randn(*shape).requires_grad_()


@given(st.lists(st.tuples(dims, st.booleans(), st.booleans()), max_size=2), st.integers(0, 2),
       dims, dims, dims, st.booleans(), st.booleans())
def test_matmul_macs_are_output_size_times_inner_dim(batch, drop, n, k, m, a_grad, b_grad):
    ba = [d if in_a else 1 for d, in_a, _ in batch]                     # batch axes of a and b
    bb = [d if in_b else 1 for d, _, in_b in batch][drop:]              # b may have fewer of them
    a, b = randn(*ba, n, k), randn(*bb, k, m)
    if a_grad: a.requires_grad_()
    if b_grad: b.requires_grad_()
    out_size = np.matmul(a.data, b.data).size
    fc = count_flops(lambda x, y: x @ y, a, b, backward=a_grad or b_grad)
    assert fc.macs == out_size * k * (1 + a_grad + b_grad)
    assert fc.forward_flops == 2 * out_size * k


@given(st.integers(1, 2), st.integers(1, 3), st.integers(1, 4), st.integers(3, 9),
       st.integers(3, 9), st.integers(1, 3), st.integers(1, 3), st.integers(1, 3),
       st.integers(0, 2), st.booleans())
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
    relu = 4 * 5                                                      # 1 FLOP per element
    assert fc.total_flops == fc.by_module['0'] + fc.by_module['2'] + relu


@given(st.integers(1, 2), st.integers(1, 3), st.integers(1, 6), st.integers(1, 6),
       st.integers(1, 4))
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
    matrices = 12 * c.n_embd ** 2 * c.n_layer + c.vocab_size * c.n_embd  # Linears; tied head once
    assert fc.mac_flops == (6 * matrices + 12 * c.n_layer * c.n_embd * T) * B * T
    vectors = gpt.num_params() - matrices                                # biases, LayerNorm weights
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


def profiled_step(model, x, y):
    opt = SGD(model.parameters(), lr=0.1)
    with Profiler() as prof:
        opt.zero_grad()
        cross_entropy(model(x), y).backward()
        with prof.region('step'): opt.step()
    return prof


def test_trace_parses_and_nests(tmp_path):
    manual_seed(2)
    model = Sequential(Linear(6, 8), ReLU(), Sequential(Linear(8, 8), ReLU()), Linear(8, 3))
    prof = profiled_step(model, randn(5, 6), np.arange(5) % 3)
    path = tmp_path / "trace.json"
    prof.export_chrome_trace(path)
    events = json.loads(path.read_text())["traceEvents"]
    assert {e["ph"] for e in events} == {"X"} and all(e["dur"] >= 0 for e in events)
    names = {e["name"] for e in events if e["cat"] == "module"}
    assert names == {"Sequential", "0", "1", "2", "2.0", "2.1", "3"}  # activations are Modules too
    stack = []                                   # intervals either nest or are disjoint
    for e in sorted(events, key=lambda e: (e["ts"], -e["dur"])):
        start, end = e["ts"], e["ts"] + e["dur"]
        while stack and stack[-1] <= start: stack.pop()
        assert not stack or end <= stack[-1], f"{e['name']} crosses its parent's end"
        stack.append(end)
    forward = [e for e in events if e["cat"] == "forward" and e["args"]["module"] == "2.0"]
    span = next(e for e in events if e["name"] == "2.0")
    assert forward
    assert all(span["ts"] <= e["ts"] and e["ts"] + e["dur"] <= span["ts"] + span["dur"]
               for e in forward)
    assert len(os.listdir(tmp_path)) == 1        # the temporary file was renamed, none left behind


def test_profiler_counts_match_the_counter():
    manual_seed(3)
    model = Sequential(Linear(7, 9), ReLU(), Linear(9, 4))
    x, y = randn(6, 7), np.arange(6) % 4
    prof = profiled_step(model, x, y)
    with FLOPCounter() as fc:
        cross_entropy(model(x), y).backward()
    assert sum(e.flops for e in prof.events) == fc.total_flops
    rows = aggregate(prof.events)
    assert rows["matmul"].calls == 2 and rows["matmul (backward)"].calls == 2
    assert rows["[step]"].calls == 1
    assert prof.seconds >= sum(e.seconds for e in prof.events)


def test_profiler_detaches_when_the_step_raises():
    before = originals()
    model = Linear(3, 2)
    with pytest.raises(ValueError, match="in_features=3"):
        with Profiler():
            model(randn(2, 3)).sum().backward()
            model(randn(2, 4))
    after = originals()
    assert after[0] is before[0] and after[2] is before[2] and after[1] == before[1]


def test_profiler_inside_a_counter_and_out_of_order_exit():
    x = randn(3, 4)
    with FLOPCounter() as fc:
        with Profiler() as prof:
            x @ randn(4, 5)
    assert fc.macs == 60 and prof.events[0].flops == 120
    outer, inner = FLOPCounter(), FLOPCounter()
    outer.__enter__(); inner.__enter__()
    with pytest.raises(RuntimeError, match="still active"):
        outer.__exit__(None, None, None)
    inner.__exit__(None, None, None); outer.__exit__(None, None, None)
    assert Tensor._from_op is autograd._record


def test_timing_protocol_is_re_exported_and_checks_its_settings():
    with pytest.raises(ValueError, match="repeats must be an int >= 1, got 0"):
        measure(lambda: None, repeats=0)
    with pytest.raises(ValueError, match="warmup must be an int >= 0, got -1"):
        Timer(warmup=-1)
    assert callable(compare) and callable(blas_threads)


def test_gpt_by_module_names_are_dotted_paths():
    manual_seed(4)
    gpt = GPT(vocab_size=7, block_size=4, n_layer=2, n_head=1, n_embd=4)
    fc = count_flops(gpt, np.zeros((1, 4), np.int64))
    names = {"transformer.h.0", "transformer.h.1.attn", "transformer.h.1.mlp.fc", "lm_head"}
    assert names <= set(fc.by_module)
    assert fc.by_module["transformer.h.0"] == fc.by_module["transformer.h.1"]   # identical blocks
    blocks = fc.by_module["transformer.h.0"] + fc.by_module["transformer.h.1"]
    assert blocks + fc.by_module["lm_head"] + fc.by_module["transformer.ln_f"] <= fc.total_flops


@given(st.floats(1e-3, 1e3), st.floats(1, 1e3), st.floats(1, 1e3))
def test_roofline_bound_agrees_with_the_attainable_rate(intensity, peak, bw):
    nbytes = 1000.0
    bound = roofline_bound(intensity * nbytes, nbytes, peak, bw)
    roof = attainable_gflops(intensity, peak, bw)
    assert roof <= peak and roof <= intensity * bw * (1 + 1e-12)
    assert bound == ("compute" if intensity * bw >= peak * (1 - 1e-12) else "memory") or \
        abs(intensity * bw - peak) < 1e-9 * peak                       # at the ridge: either


@pytest.mark.parametrize("args", [(1, 0, 1, 1), (1, 1, 0, 1), (1, 1, 1, -2)])
def test_roofline_bound_rejects_non_positive_inputs(args):
    with pytest.raises(ValueError, match="roofline_bound"):
        roofline_bound(*args)


def test_memory_profiler_sees_numpy_and_nests():
    was_tracing = tracemalloc.is_tracing()
    with MemoryProfiler() as outer:
        a = np.ones(2**18, np.float64)                                 # 2 MiB, kept
        with MemoryProfiler() as inner:
            b = np.ones(2**17, np.float64); del b                      # 1 MiB, freed
        c = np.ones(2**19, np.float64); del c                          # 4 MiB, freed
    assert 2**20 <= inner.peak < 2**20 + 2**15 and inner.retained < 2**15
    assert 2**21 + 2**22 <= outer.peak < 2**21 + 2**22 + 2**15         # a and c at once
    assert 2**21 <= outer.retained < 2**21 + 2**15
    assert tracemalloc.is_tracing() == was_tracing
    del a


@pytest.mark.parametrize("opt_cls, slots", [(Adam, 2), (SGD, 0)])
def test_step_memory_matches_the_prediction(opt_cls, slots):
    manual_seed(5)
    model = Sequential(Linear(8, 16), ReLU(), Linear(16, 3))
    opt = opt_cls(model.parameters(), lr=0.01)
    x, y = randn(32, 8), np.arange(32) % 3
    mem = step_memory(model, opt, lambda: cross_entropy(model(x), y))
    pred = predicted_memory(model.parameters(), slots)
    assert (mem.parameters, mem.gradients, mem.optimizer_state) == tuple(pred.values())
    hidden = 32 * 16 * 4                                               # one (32, 16) float32 array
    assert 2 * hidden <= mem.activations and mem.peak >= mem.activations


def test_rows_are_per_step_medians():
    prof = Profiler()
    prof.events, prof._steps, prof.start, prof.end, prof._overhead = [], [], 0.0, 9.0, 0.0
    for i, dur in enumerate([1.0, 5.0, 2.0]):                          # step 2 was disturbed
        t = 3.0 * i
        prof.events.append(OpEvent("matmul", "forward", t, t + dur, 10, 4))
        prof._steps.append((len(prof.events), t + 3.0, 0.5 * (i + 1)))  # 0.5 s bookkeeping a step
    rows = prof.rows()
    assert (rows["matmul"].seconds, rows["matmul"].calls, rows["matmul"].flops) == (2.0, 1, 10)
    assert prof.step_time() == 2.5                                     # bookkeeping left out
    assert "medians of 3 steps" in prof.table()
    assert prof.rows("min")["matmul"].seconds == 1.0 and prof.step_time("min") == 2.5
    assert "fastest of 3 steps" in prof.table(stat="min")
    with pytest.raises(ValueError, match="stat must be 'median' or 'min'"):
        prof.rows("mean")
    with pytest.raises(ValueError, match="sort_by must be one of"):
        prof.table(sort_by="speed")
    assert aggregate(prof.events)["matmul"].calls == 3


def test_profiled_time_excludes_the_profilers_bookkeeping():
    manual_seed(6)
    model = Sequential(Linear(5, 5), ReLU(), Linear(5, 2))
    prof = profiled_step(model, randn(3, 5), np.arange(3) % 2)
    wall = prof.end - prof.start
    assert 0 < prof._overhead < wall and prof.seconds == pytest.approx(wall - prof._overhead)
    assert sum(e.seconds for e in prof.events) <= prof.seconds
