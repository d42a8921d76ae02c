"""Tests for `tinytorch.core.optimizers` against plain NumPy implementations of PyTorch's documented algorithms.

The references below are written from the pseudocode in the torch.optim documentation (SGD, Adam, AdamW),
one parameter at a time, in float64, as directly as the formulas read. Each also returns a running error scale:
the same recurrences applied to absolute values, so that a rounding error of one unit in the last place of any
intermediate quantity is bounded by eps * scale. That is the standard forward error bound for sums and
products, and it gives each comparison a tolerance derived from the numbers of that example.
"""
import io
import math

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st
from hypothesis.extra import numpy as hnp

from tinytorch.core.tensor import Tensor
from tinytorch.core.optimizers import (SGD, Adam, AdamW, StepLR, CosineWarmupLR, cosine_warmup_lr,
                                       clip_grad_norm_)

HYPOTHESIS = settings(max_examples=60)  # applied to this file's property tests by conftest.py

# Roundings per element per step in our implementations: at most about a dozen (decay, two moment updates,
# sqrt, two scalings, division, subtraction). Errors carried from earlier steps enter the scale again each
# step, so summing the per-step scales covers their accumulation. 32 leaves a factor of ~2 of headroom.
ROUNDINGS = 32


# ---------------------------------------------------------------- references (float64, one parameter)

def ref_sgd(theta, grads, lr, momentum=0., dampening=0., weight_decay=0., nesterov=False):
    "torch.optim.SGD's documented algorithm; `grads[t]` None skips step t. Returns (theta, error scale)."
    theta, b, b_abs, scale = theta.astype(np.float64), None, None, np.zeros(theta.shape)
    for g in grads:
        if g is None: continue
        g = g.astype(np.float64)
        g_abs = np.abs(g) + weight_decay * np.abs(theta)
        if weight_decay != 0: g = g + weight_decay * theta
        if momentum != 0:
            if b is None: b, b_abs = g.copy(), g_abs.copy()
            else: b, b_abs = momentum * b + (1 - dampening) * g, momentum * b_abs + (1 - dampening) * g_abs
            if nesterov: g, g_abs = g + momentum * b, g_abs + momentum * b_abs
            else: g, g_abs = b, b_abs
        scale += np.abs(theta) + lr * g_abs
        theta = theta - lr * g
    return theta, scale


def ref_adam(theta, grads, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0., decoupled=False):
    "torch.optim.Adam's documented algorithm (AdamW's if `decoupled`); `grads[t]` None skips step t."
    b1, b2 = betas
    theta = theta.astype(np.float64)
    zeros = lambda: np.zeros(theta.shape)
    m, v, m_abs, v_abs, t, scale = zeros(), zeros(), zeros(), zeros(), 0, zeros()
    for g in grads:
        if g is None: continue
        g, t = g.astype(np.float64), t + 1
        scale += np.abs(theta)
        g_abs = np.abs(g)  # size of the roundings in g, per unit eps
        if decoupled: theta = theta - lr * weight_decay * theta
        elif weight_decay != 0: g, g_abs = g + weight_decay * theta, g_abs + weight_decay * np.abs(theta)
        m = b1 * m + (1 - b1) * g
        v = b2 * v + (1 - b2) * g * g
        m_abs = b1 * m_abs + (1 - b1) * g_abs
        v_abs = b2 * v_abs + (1 - b2) * 2 * np.abs(g) * g_abs  # first-order error of v, per unit eps
        m_hat, v_hat = m / (1 - b1 ** t), v / (1 - b2 ** t)
        d = np.sqrt(v_hat) + eps
        # error of sqrt(v_hat) to first order: a g that nearly cancels its weight decay makes it large
        d_abs = v_abs / (1 - b2 ** t) / (2 * np.sqrt(v_hat) + eps) + np.sqrt(v_hat)
        scale += lr * m_abs / (1 - b1 ** t) / d + lr * np.abs(m_hat) * d_abs / d ** 2
        theta = theta - lr * m_hat / d
    return theta, scale


# ---------------------------------------------------------------- strategies

dtypes = st.sampled_from([np.float32, np.float64])
shape_lists = st.lists(hnp.array_shapes(min_dims=0, max_dims=3, max_side=4), min_size=1, max_size=3)


@st.composite
def problems(draw):
    "Parameter values and a gradient schedule (None where a parameter gets no gradient at a step)."
    dtype, shapes = draw(dtypes), draw(shape_lists)
    steps, seed = draw(st.integers(1, 6)), draw(st.integers(0, 2**32 - 1))
    rng = np.random.default_rng(seed)
    scale = draw(st.sampled_from([1e-3, 1., 100.]))  # gradient sizes: Adam's update should not care
    thetas = [np.asarray(rng.standard_normal(s), dtype) for s in shapes]
    grads = [[None if rng.random() < 0.2 else np.asarray(scale * rng.standard_normal(s), dtype) for _ in range(steps)]
             for s in shapes]
    return dtype, thetas, grads


def run_ours(make_opt, thetas, grads):
    "Run our optimizer over the gradient schedule; return the final parameter arrays and the optimizer."
    params = [Tensor(th.copy(), dtype=th.dtype, requires_grad=True) for th in thetas]
    arrays = [p.data for p in params]
    opt = make_opt(params)
    for t in range(len(grads[0])):
        for p, gs in zip(params, grads): p.grad = None if gs[t] is None else gs[t].copy()
        opt.step()
    for p, a in zip(params, arrays):
        assert p.data is a, "the update must be in place"
        assert p.data.dtype == a.dtype
    return [p.data for p in params], opt


def assert_matches(ours, refs, dtype):
    "Compare each parameter with its (theta, scale) reference, within ROUNDINGS * eps * scale."
    eps = np.finfo(dtype).eps
    for got, (want, scale) in zip(ours, refs):
        tol = ROUNDINGS * eps * scale + np.finfo(dtype).tiny
        np.testing.assert_array_less(np.abs(got - want), tol)


weight_decays = st.sampled_from([0., 1e-4, 0.01, 0.1])


# ---------------------------------------------------------------- update rules

@given(problems(), st.floats(0, 1), st.sampled_from([0., 0.5, 0.9, 0.99]), st.sampled_from([0., 0.1, 0.5]),
       weight_decays, st.booleans())
def test_sgd_matches_reference(problem, lr, momentum, dampening, weight_decay, nesterov):
    dtype, thetas, grads = problem
    nesterov = nesterov and momentum > 0
    if nesterov: dampening = 0.
    kw = dict(lr=lr, momentum=momentum, dampening=dampening, weight_decay=weight_decay, nesterov=nesterov)
    ours, opt = run_ours(lambda ps: SGD(ps, **kw), thetas, grads)
    assert_matches(ours, [ref_sgd(th, gs, **kw) for th, gs in zip(thetas, grads)], dtype)
    for i, st_ in opt.state.items(): assert st_['momentum_buffer'].dtype == dtype


@given(problems(), st.floats(1e-4, 1), st.floats(0, 0.999), st.floats(0, 0.999),
       st.sampled_from([1e-8, 1e-6, 1e-3]), weight_decays, st.booleans())
def test_adam_and_adamw_match_reference(problem, lr, b1, b2, eps, weight_decay, decoupled):
    dtype, thetas, grads = problem
    kw = dict(lr=lr, betas=(b1, b2), eps=eps, weight_decay=weight_decay)
    make = (lambda ps: AdamW(ps, **kw)) if decoupled else (lambda ps: Adam(ps, **kw))
    ours, opt = run_ours(make, thetas, grads)
    assert_matches(ours, [ref_adam(th, gs, decoupled=decoupled, **kw) for th, gs in zip(thetas, grads)], dtype)
    for i, gs in enumerate(grads):  # each parameter counts only the steps at which it had a gradient
        n = sum(g is not None for g in gs)
        assert opt.state.get(i, {}).get('step', 0) == n
        if n: assert opt.state[i]['exp_avg'].dtype == opt.state[i]['exp_avg_sq'].dtype == dtype


def test_step_leaves_the_gradient_unchanged():
    for make in (lambda ps: SGD(ps, lr=0.1, momentum=0.9, weight_decay=0.1, nesterov=True),
                 lambda ps: Adam(ps, lr=0.1, weight_decay=0.1), lambda ps: AdamW(ps, lr=0.1)):
        p = Tensor(np.ones((2, 3), np.float32), requires_grad=True)
        g = np.arange(6, dtype=np.float32).reshape(2, 3)
        p.grad = g.copy()
        opt = make([p])
        for _ in range(2): opt.step()
        np.testing.assert_array_equal(p.grad, g)


def test_float64_gradient_keeps_float32_parameter_and_state():
    for make in (lambda ps: SGD(ps, lr=0.1, momentum=0.9), lambda ps: Adam(ps), lambda ps: AdamW(ps)):
        p = Tensor(np.ones(4, np.float32), requires_grad=True)
        opt = make([p])
        for _ in range(2):
            p.grad = np.full(4, 0.5)  # float64
            opt.step()
        assert p.dtype == np.float32
        assert all(v.dtype == np.float32 for v in opt.state[0].values() if isinstance(v, np.ndarray))


def test_zero_learning_rate_moves_nothing():
    rng = np.random.default_rng(0)
    for make in (lambda ps: SGD(ps, lr=0., momentum=0.9, weight_decay=0.1), lambda ps: Adam(ps, lr=0.),
                 lambda ps: AdamW(ps, lr=0.)):
        p = Tensor(rng.standard_normal(5, dtype=np.float32), requires_grad=True)
        before = p.data.copy()
        opt = make([p])
        p.grad = rng.standard_normal(5, dtype=np.float32)
        opt.step()
        np.testing.assert_array_equal(p.data, before)


# ---------------------------------------------------------------- state dict round trip

def to_npz(state_dict) -> bytes:
    "Flatten a state dict into names like `state/0/exp_avg` and write it with np.savez."
    flat = {f"hp/{k}": np.asarray(v) for k, v in state_dict['param_groups'][0].items()}
    flat |= {f"state/{i}/{k}": np.asarray(v) for i, s in state_dict['state'].items() for k, v in s.items()}
    buf = io.BytesIO()
    np.savez(buf, **flat)
    return buf.getvalue()


def from_npz(data: bytes) -> dict:
    "Read what `to_npz` wrote, without pickle; keys and values come back as strings and arrays."
    group, state = {}, {}
    with np.load(io.BytesIO(data), allow_pickle=False) as z:
        for key in z.files:
            kind, *rest = key.split('/')
            if kind == 'hp': group[rest[0]] = z[key]
            else: state.setdefault(rest[0], {})[rest[1]] = z[key]
    return {'state': state, 'param_groups': [group]}


makers = [lambda ps: SGD(ps, lr=0.05, momentum=0.9, weight_decay=0.01, nesterov=True),
          lambda ps: SGD(ps, lr=0.05, momentum=0.5, dampening=0.3),
          lambda ps: Adam(ps, lr=0.01, betas=(0.8, 0.99), weight_decay=0.01),
          lambda ps: AdamW(ps, lr=0.01, weight_decay=0.1)]


@given(st.sampled_from(range(len(makers))), shape_lists, st.integers(0, 5), st.integers(1, 5),
       st.integers(0, 2**32 - 1))
def test_state_dict_round_trip_continues_identically(which, shapes, k1, k2, seed):
    rng = np.random.default_rng(seed)
    grads = [[np.asarray(rng.standard_normal(s), np.float32) if rng.random() < 0.8 else None for s in shapes]
             for _ in range(k1 + k2)]
    def run(opt, params, steps):
        for gs in steps:
            for p, g in zip(params, gs): p.grad = None if g is None else g.copy()
            opt.step()
    # the uninterrupted run, with a snapshot after k1 steps
    params = [Tensor(np.asarray(rng.standard_normal(s), np.float32), requires_grad=True) for s in shapes]
    opt = makers[which](params)
    run(opt, params, grads[:k1])
    saved, snapshot = to_npz(opt.state_dict()), [p.data.copy() for p in params]
    run(opt, params, grads[k1:])
    # a fresh optimizer, built with other hyperparameters, loads the snapshot and continues
    resumed = [Tensor(a, requires_grad=True) for a in snapshot]
    opt2 = makers[which](resumed)
    opt2.lr = 123.
    opt2.load_state_dict(from_npz(saved))
    assert opt2.lr == opt.lr
    run(opt2, resumed, grads[k1:])
    for a, b in zip(resumed, params): np.testing.assert_array_equal(a.data, b.data)  # bit for bit


def test_load_state_dict_refuses_what_does_not_fit():
    p = [Tensor(np.zeros((3, 2), np.float32), requires_grad=True), Tensor(np.zeros(2, np.float32), requires_grad=True)]
    opt = Adam(p)
    for q in p: q.grad = np.ones_like(q.data)
    opt.step()
    sd = opt.state_dict()
    with pytest.raises(ValueError, match=r"state dict has 2 parameters, optimizer has 1"):
        Adam(p[:1]).load_state_dict(sd)
    other = [Tensor(np.zeros((2, 3), np.float32), requires_grad=True), p[1]]
    with pytest.raises(ValueError, match=r"parameter 0 has shape \(2, 3\), its 'exp_avg' has shape \(3, 2\)"):
        Adam(other).load_state_dict(sd)
    with pytest.raises(ValueError, match=r"hyperparameters"):
        SGD(p, lr=0.1).load_state_dict(sd)
    bad = {'state': {}, 'param_groups': [dict(sd['param_groups'][0], lr=-1.)]}
    fresh = Adam(p, lr=0.5)
    with pytest.raises(ValueError, match=r"invalid lr=-1.0"):
        fresh.load_state_dict(bad)
    assert fresh.lr == 0.5 and fresh.state == {}  # a failed load changes nothing
    partial = {'state': {0: {'step': 1, 'exp_avg': sd['state'][0]['exp_avg']}}, 'param_groups': sd['param_groups']}
    with pytest.raises(ValueError, match=r"state of parameter 0 has entries \['exp_avg', 'step'\], no 'exp_avg_sq'"):
        Adam(p).load_state_dict(partial)
    with pytest.raises(ValueError, match=r"state for parameter 5"):
        Adam(p).load_state_dict({'state': {5: sd['state'][0]}, 'param_groups': sd['param_groups']})


# ---------------------------------------------------------------- schedules

def lrs_of(make_sched, lr, n):
    "The learning rates a scheduler sets at steps 0..n-1."
    opt = SGD([Tensor([0.], requires_grad=True)], lr=lr)
    sched, out = make_sched(opt), []
    for _ in range(n):
        assert sched.get_last_lr() == [opt.lr]
        out.append(opt.lr)
        sched.step()
    return out


def test_step_lr_values():
    got = lrs_of(lambda o: StepLR(o, step_size=3, gamma=0.1), 0.5, 10)
    want = [0.5] * 3 + [0.05] * 3 + [0.005] * 3 + [0.0005]
    np.testing.assert_allclose(got, want, rtol=4e-16)  # base_lr * gamma**k: two float64 roundings


def test_cosine_warmup_values_by_hand():
    # peak 2, floor 0.2, warm-up 4, decay ends at 8: warm-up 2/4, 4/4, ...; cosine at 0, 1/4, 1/2, 3/4 of pi
    r = (1 + math.cos(math.pi / 4)) / 2
    want = [0.5, 1., 1.5, 2., 2., 0.2 + 1.8 * r, 1.1, 0.2 + 1.8 * (1 - r), 0.2, 0.2, 0.2]
    got = lrs_of(lambda o: CosineWarmupLR(o, warmup_steps=4, total_steps=8, min_lr=0.2), 2., 11)
    np.testing.assert_allclose(got, want, rtol=1e-15)  # a handful of float64 roundings


@given(st.floats(1e-6, 10), st.integers(0, 50), st.integers(0, 100), st.floats(0, 1))
def test_cosine_warmup_shape(base, warmup, extra, floor_frac):
    total, floor = warmup + extra, base * floor_frac
    lrs = [cosine_warmup_lr(t, base, warmup, total, floor) for t in range(total + 3)]
    slack = 1e-12 * base  # float64 rounding of values of size base
    assert all(0 < x <= base + slack for x in lrs[:warmup])                   # warm-up: from base/W up to base
    assert all(floor - slack <= x <= base + slack for x in lrs[warmup:])      # then between the floor and the peak
    assert all(a < b for a, b in zip(lrs[:warmup], lrs[1:warmup]))            # rises during the warm-up
    assert all(a >= b - slack for a, b in zip(lrs[warmup:], lrs[warmup + 1:]))  # never rises afterwards
    if warmup: assert math.isclose(lrs[warmup - 1], base, rel_tol=1e-15)
    assert lrs[total:] == [floor] * 3


def test_scheduler_state_round_trip_through_npz():
    opt = Adam([Tensor([0.], requires_grad=True)], lr=1.)
    sched = CosineWarmupLR(opt, warmup_steps=3, total_steps=20, min_lr=0.1)
    for _ in range(7): sched.step()
    buf = io.BytesIO()
    np.savez(buf, **sched.state_dict())
    buf.seek(0)
    opt2 = Adam([Tensor([0.], requires_grad=True)], lr=1.)
    sched2 = CosineWarmupLR(opt2, warmup_steps=3, total_steps=20, min_lr=0.1)
    with np.load(buf, allow_pickle=False) as z: sched2.load_state_dict({k: z[k] for k in z.files})
    for _ in range(5):
        sched.step(); sched2.step()
        assert sched2.get_last_lr() == sched.get_last_lr() and opt2.lr == opt.lr


# ---------------------------------------------------------------- gradient clipping

@given(shape_lists, st.integers(0, 2**32 - 1), st.sampled_from([1e-3, 1., 1e3]), st.floats(0.01, 10))
def test_clip_grad_norm(shapes, seed, scale, max_norm):
    rng = np.random.default_rng(seed)
    params = [Tensor(np.zeros(s, np.float32), requires_grad=True) for s in shapes]
    for p in params: p.grad = np.asarray(scale * rng.standard_normal(p.shape), np.float32)
    params.append(Tensor(np.zeros(2, np.float32), requires_grad=True))  # no gradient: skipped
    before = [p.grad.copy() for p in params[:-1]]
    want = math.sqrt(sum(float(np.sum(g.astype(np.float64) ** 2)) for g in before))
    n = sum(g.size for g in before)
    eps = np.finfo(np.float32).eps
    got = clip_grad_norm_(params, max_norm)
    # a float32 dot product of n terms has relative error <= n * eps; the square root halves it
    assert abs(got - want) <= n * eps * want
    after = math.sqrt(sum(float(np.sum(p.grad.astype(np.float64) ** 2)) for p in params[:-1]))
    if want <= max_norm:
        for p, g in zip(params, before): np.testing.assert_array_equal(p.grad, g)
    else:
        # scaled by max_norm / (got + 1e-6): relative error 1e-6 / got, plus n * eps from `got`, plus one rounding
        assert abs(after - max_norm) <= max_norm * (1e-6 / got + (n + 2) * eps)
        for p, g in zip(params, before):  # same direction: each gradient is a positive multiple of the old one
            np.testing.assert_allclose(p.grad, g * (max_norm / (got + 1e-6)), rtol=2 * eps, atol=0)
    assert params[-1].grad is None


# ---------------------------------------------------------------- PyTorch, when it is installed

def test_matches_torch_optim_when_installed():
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(0)
    shapes = [(3, 4), (4,), ()]
    configs = [(SGD, torch.optim.SGD, dict(lr=0.1, momentum=0.9, weight_decay=0.01, nesterov=True)),
               (SGD, torch.optim.SGD, dict(lr=0.1, momentum=0.8, dampening=0.2)),
               (Adam, torch.optim.Adam, dict(lr=0.01, betas=(0.8, 0.99), weight_decay=0.01)),
               (AdamW, torch.optim.AdamW, dict(lr=0.01, weight_decay=0.1))]
    for ours_cls, torch_cls, kw in configs:
        init = [rng.standard_normal(s) for s in shapes]
        ours = [Tensor(a, dtype=np.float64, requires_grad=True) for a in init]
        theirs = [torch.tensor(a, dtype=torch.float64, requires_grad=True) for a in init]
        o, t = ours_cls(ours, **kw), torch_cls(theirs, **kw)
        for _ in range(5):
            for p, q in zip(ours, theirs):
                g = rng.standard_normal(p.shape)
                p.grad, q.grad = g.copy(), torch.tensor(g, dtype=torch.float64)
            o.step(); t.step()
        for p, q in zip(ours, theirs):
            # float64 on both sides, same formulas in a different order, five steps of O(1) values
            np.testing.assert_allclose(p.data, q.detach().numpy(), rtol=1e-12, atol=1e-12)
    grads = [rng.standard_normal(s) for s in shapes]
    ours = [Tensor(np.zeros(s), dtype=np.float64, requires_grad=True) for s in shapes]
    theirs = [torch.zeros(s, dtype=torch.float64, requires_grad=True) for s in shapes]
    for p, q, g in zip(ours, theirs, grads): p.grad, q.grad = g.copy(), torch.tensor(g)
    assert math.isclose(clip_grad_norm_(ours, 0.5), torch.nn.utils.clip_grad_norm_(theirs, 0.5).item(), rel_tol=1e-12)
    for p, q in zip(ours, theirs): np.testing.assert_allclose(p.grad, q.grad.numpy(), rtol=1e-12)
    opt_t = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=0.5)
    sched_t = torch.optim.lr_scheduler.StepLR(opt_t, step_size=3, gamma=0.1)
    want = []
    for _ in range(10): want.append(sched_t.get_last_lr()[0]); opt_t.step(); sched_t.step()
    np.testing.assert_allclose(lrs_of(lambda o: StepLR(o, step_size=3, gamma=0.1), 0.5, 10), want, rtol=1e-15)
