"""Tests for `tinytorch.optimization.compression`: masks that persist through optimizers, state dicts and
checkpoints; exact prune counts and tie handling; distillation loss against a float64 NumPy reference and finite
differences; CSR against dense; channel removal against the masked model; low rank against Eckart-Young."""
import copy

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from tinytorch.core.activations import ReLU
from tinytorch.core.autograd import gradcheck
from tinytorch.core.layers import Linear, Sequential
from tinytorch.core.normalization import BatchNorm2d
from tinytorch.core.optimizers import SGD, Adam
from tinytorch.core.spatial import Conv2d, Flatten, MaxPool2d
from tinytorch.core.tensor import Tensor, manual_seed, randn
from tinytorch.core.training import load_checkpoint, save_checkpoint
from tinytorch.optimization.compression import (CSR, csr_matmul, cubic_sparsity, distillation_loss,
                                                global_unstructured, identity, is_pruned, l1_unstructured,
                                                ln_structured, low_rank, magnitude_mask, prunable, prune_channels,
                                                prune_to, remove, remove_channels, sparsity, to_csr)

prop = settings(max_examples=40, deadline=None)
seeds = st.integers(0, 2**32 - 1)


def net(seed=0):
    manual_seed(seed)
    return Sequential(Conv2d(1, 4, 3, padding=1), ReLU(), MaxPool2d(2), Flatten(), Linear(4 * 4 * 4, 8), ReLU(),
                      Linear(8, 3))


def train_steps(model, opt, steps=5, seed=0):
    rng = np.random.default_rng(seed)
    for _ in range(steps):
        opt.zero_grad()
        (model(Tensor(rng.standard_normal((4, 1, 8, 8)).astype(np.float32))) ** 2).mean().backward()
        opt.step()
    model(Tensor(np.zeros((1, 1, 8, 8), np.float32)))   # the hook recomputes the effective weights


def masks(model):
    return [m.weight_mask.numpy().copy() for m, _ in prunable(model)]


def weights(model):
    return [m.weight.numpy() for m, _ in prunable(model)]


# --- masks persist -------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("make_opt", [lambda p: SGD(p, lr=0.1, momentum=0.9, weight_decay=0.1),
                                      lambda p: Adam(p, lr=0.05, weight_decay=0.1)])
def test_pruned_weights_stay_zero_through_training(make_opt):
    m = net()
    opt = make_opt(m.parameters())                          # built before pruning: weight_orig is the same object
    train_steps(m, opt, 2)                                  # the optimizer has momentum state for every entry
    global_unstructured(prunable(m), amount=0.6)
    before = masks(m)
    train_steps(m, opt, 10)
    for w, mk in zip(weights(m), before):
        assert np.all(w[mk == 0] == 0)                      # exactly zero, not small
        assert np.count_nonzero(w[mk == 1]) == np.count_nonzero(mk)
    for mod, _ in prunable(m):                              # the gradient reaching weight_orig is masked
        assert np.all(mod.weight_orig.grad[mod.weight_mask.numpy() == 0] == 0)
    assert abs(sparsity(m)['overall'] - 0.6) < 1 / sum(mk.size for mk in before)


def test_masks_survive_state_dict_and_checkpoint(tmp_path):
    m = net(0)
    global_unstructured(prunable(m), amount=0.5)
    train_steps(m, Adam(m.parameters(), lr=0.01), 3)
    x = Tensor(np.random.default_rng(1).standard_normal((2, 1, 8, 8)).astype(np.float32))
    other = net(1)
    for mod, name in prunable(other): identity(mod, name)
    other.load_state_dict(m.state_dict())
    np.testing.assert_array_equal(other(x).numpy(), m(x).numpy())
    path = save_checkpoint(tmp_path / "p.npz", m)
    fresh = net(2)
    with pytest.raises(ValueError, match="does not fit"): load_checkpoint(path, fresh)
    for mod, name in prunable(fresh): identity(mod, name)
    load_checkpoint(path, fresh)
    for a, b in zip(masks(fresh), masks(m)): np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(fresh(x).numpy(), m(x).numpy())
    saved = masks(fresh)
    train_steps(fresh, Adam(fresh.parameters(), lr=0.05, weight_decay=0.1), 5)   # still pruned after loading
    for w, mk in zip(weights(fresh), saved): assert np.all(w[mk == 0] == 0)


def test_remove_makes_pruning_permanent_and_keeps_the_parameter():
    lin = Linear(5, 4)
    p = lin.weight
    l1_unstructured(lin, amount=7)
    eff = lin.weight.numpy().copy()
    remove(lin)
    assert lin.weight is p and not is_pruned(lin) and list(lin._buffers) == []
    np.testing.assert_array_equal(lin.weight.numpy(), eff)
    assert np.count_nonzero(lin.weight.numpy() == 0) == 7


def test_deepcopy_of_pruned_model_is_independent():
    m = net()
    l1_unstructured(m[0], amount=0.5)
    c = copy.deepcopy(m)
    l1_unstructured(c[0], amount=0.5)
    assert int((m[0].weight_mask.numpy() == 0).sum()) == 18
    assert int((c[0].weight_mask.numpy() == 0).sum()) == 27
    x = randn(1, 1, 8, 8)
    m(x); c(x)
    assert np.count_nonzero(m[0].weight.numpy() == 0) == 18


# --- exact counts and ties -----------------------------------------------------------------------------------------

@prop
@given(st.integers(1, 60), seeds, st.data())
def test_magnitude_mask_exact_count_and_ties(n, seed, data):
    rng = np.random.default_rng(seed)
    scores = rng.integers(0, 4, n).astype(np.float32)       # many ties
    k = data.draw(st.integers(0, n))
    mask = magnitude_mask(scores, k)
    assert mask.dtype == np.float32 and int((mask == 0).sum()) == k
    cut, kept = np.flatnonzero(mask == 0), np.flatnonzero(mask == 1)
    if k and n - k:
        assert scores[cut].max() <= scores[kept].min()
        thr = scores[cut].max()                             # at the threshold, lower indices go first
        tied_cut, tied_kept = cut[scores[cut] == thr], kept[scores[kept] == thr]
        if tied_kept.size: assert tied_cut.max() < tied_kept.min()
    np.testing.assert_array_equal(mask, magnitude_mask(scores.copy(), k))   # deterministic


@prop
@given(seeds, st.floats(0, 1), st.floats(0, 1))
def test_repeated_l1_counts_and_mask_combination(seed, a1, a2):
    manual_seed(seed % 1000)
    lin = Linear(7, 5)
    l1_unstructured(lin, amount=a1)
    first = lin.weight_mask.numpy().copy()
    k1 = int(round(a1 * 35))
    assert int((first == 0).sum()) == k1
    l1_unstructured(lin, amount=a2)                          # a fraction of the live entries
    second = lin.weight_mask.numpy()
    assert int((second == 0).sum()) == k1 + int(round(a2 * (35 - k1)))
    assert np.all(second[first == 0] == 0)                   # pruned stays pruned


@prop
@given(seeds, st.floats(0, 1))
def test_global_and_prune_to_counts(seed, target):
    m = net(seed % 1000)
    params = prunable(m)
    total = sum(mod.weight.size for mod, _ in params)
    prune_to(params, target / 2)
    prune_to(params, target)
    assert sum(int((mod.weight_mask.numpy() == 0).sum()) for mod, _ in params) == int(round(target * total))
    if round(target * total) > 0:
        with pytest.raises(ValueError, match="already are"): prune_to(params, 0.)


def test_global_unstructured_matches_a_single_ranking():
    m = net(3)
    params = prunable(m)
    allw = np.concatenate([np.abs(mod.weight.numpy()).ravel() for mod, _ in params])
    thr = np.sort(allw)[99]
    global_unstructured(params, amount=100)
    for mod, _ in params:
        w, mk = np.abs(mod.weight_orig.numpy()), mod.weight_mask.numpy()
        assert np.all(w[mk == 0] <= thr) and np.all(w[mk == 1] >= thr)


def test_ln_structured_whole_slices_and_combination():
    manual_seed(0)
    conv = Conv2d(3, 6, 3)
    l1_unstructured(conv, amount=10)
    first = conv.weight_mask.numpy().copy()
    ln_structured(conv, amount=0.5, n=2, dim=0)
    mk = conv.weight_mask.numpy()
    dead = np.flatnonzero(mk.sum(axis=(1, 2, 3)) == 0)
    assert dead.size == 3
    assert int((mk == 0).sum()) >= 3 * 27
    live = np.setdiff1d(np.arange(6), dead)                 # the cut filters had the smallest L2 norms
    norms = np.sqrt(((conv.weight_orig.numpy() * first) ** 2).sum(axis=(1, 2, 3)))  # of the live entries
    assert norms[dead].max() <= norms[live].min()
    ln_structured(conv, amount=1, n=1, dim=1)                # input channels: combined with what is there
    mk2 = conv.weight_mask.numpy()
    assert np.all(mk2[mk == 0] == 0) and int((mk2.sum(axis=(0, 2, 3)) == 0).sum()) == 1


def test_bad_input_errors():
    lin = Linear(3, 2)
    with pytest.raises(ValueError, match="l1_unstructured: amount 1.5 is not a fraction in"): l1_unstructured(lin, amount=1.5)
    with pytest.raises(ValueError, match=r"amount -0.5 is not a fraction"): l1_unstructured(lin, amount=-0.5)
    with pytest.raises(ValueError, match=r"amount 7 is not a count in \[0, 6\]"): l1_unstructured(lin, amount=7)
    with pytest.raises(TypeError, match="amount must be a float fraction or an int count, got '0.5'"):
        l1_unstructured(lin, amount='0.5')
    with pytest.raises(ValueError, match="Linear has no parameter 'wieght'"): l1_unstructured(lin, 'wieght')
    with pytest.raises(ValueError, match="global_unstructured: Linear has no parameter 'scale'"):
        global_unstructured([(lin, 'scale')])
    with pytest.raises(ValueError, match="remove: parameter 'weight' of Linear is not pruned"): remove(lin)
    with pytest.raises(ValueError, match="temperature T must be > 0, got -1"):
        distillation_loss(Tensor([[1., 2.]]), Tensor([[1., 2.]]), [0], T=-1)
    with pytest.raises(ValueError, match="need 0 <= s_i <= s_f <= 1"): cubic_sparsity(0, 0.2, 1.5, 0, 1, 1)
    assert not is_pruned(lin)                                # nothing was half-done by the failures


# --- distillation ---------------------------------------------------------------------------------------------------

def reference_distillation(zs, zt, y, T, alpha):
    "float64 NumPy: alpha T^2 KL(p_t || q_s) + (1 - alpha) CE, batch mean."
    def log_softmax(z):
        z = z - z.max(1, keepdims=True)
        return z - np.log(np.exp(z).sum(1, keepdims=True))
    lp, lq = log_softmax(zt / T), log_softmax(zs / T)
    kl = (np.exp(lp) * (lp - lq)).sum(1).mean()
    ce = -log_softmax(zs)[np.arange(len(y)), y].mean()
    return alpha * T * T * kl + (1 - alpha) * ce


@settings(max_examples=25, deadline=None)
@given(st.integers(1, 4), st.integers(2, 5), st.floats(0.5, 8), st.floats(0, 1), seeds)
def test_distillation_loss_reference_and_gradcheck(n, c, T, alpha, seed):
    rng = np.random.default_rng(seed)
    zs, zt = rng.standard_normal((n, c)) * 3, rng.standard_normal((n, c)) * 3
    y = rng.integers(0, c, n)
    s = Tensor(zs, dtype=np.float64, requires_grad=True)
    t = Tensor(zt, dtype=np.float64, requires_grad=True)
    out = distillation_loss(s, t, y, T, alpha)
    np.testing.assert_allclose(out.item(), reference_distillation(zs, zt, y, T, alpha), rtol=1e-10, atol=1e-12)
    t.requires_grad = False
    assert gradcheck(lambda a: distillation_loss(a, t, y, T, alpha), s)


def test_distillation_gradient_is_soft_minus_hard_scaled():
    "d/dz_s of T^2 KL is T (q - p) / N: the T^2 factor keeps the soft gradient on the scale of the hard one."
    rng = np.random.default_rng(0)
    zs, zt, T = rng.standard_normal((3, 4)), rng.standard_normal((3, 4)), 5.
    s = Tensor(zs, dtype=np.float64, requires_grad=True)
    distillation_loss(s, Tensor(zt, dtype=np.float64), [0, 1, 2], T=T, alpha=1.).backward()
    sm = lambda z: np.exp(z - z.max(1, keepdims=True)) / np.exp(z - z.max(1, keepdims=True)).sum(1, keepdims=True)
    np.testing.assert_allclose(s.grad, T * (sm(zs / T) - sm(zt / T)) / 3, rtol=1e-10, atol=1e-14)


def test_distillation_matches_pytorch():
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(0)
    zs, zt, y, T, alpha = rng.standard_normal((5, 4)), rng.standard_normal((5, 4)), rng.integers(0, 4, 5), 3., 0.6
    F = torch.nn.functional
    ts, tt = torch.tensor(zs, requires_grad=True), torch.tensor(zt)
    ref = (alpha * T * T * F.kl_div(F.log_softmax(ts / T, 1), F.log_softmax(tt / T, 1), reduction='batchmean',
                                    log_target=True) + (1 - alpha) * F.cross_entropy(ts, torch.tensor(y)))
    ref.backward()
    s = Tensor(zs, dtype=np.float64, requires_grad=True)
    out = distillation_loss(s, Tensor(zt, dtype=np.float64), y, T, alpha)
    out.backward()
    np.testing.assert_allclose(out.item(), ref.item(), rtol=1e-12)
    np.testing.assert_allclose(s.grad, ts.grad.numpy(), rtol=1e-10, atol=1e-14)


def test_l1_unstructured_matches_pytorch():
    torch = pytest.importorskip("torch")
    prune = torch.nn.utils.prune
    lin = Linear(20, 10)
    tl = torch.nn.Linear(20, 10)
    with torch.no_grad(): tl.weight.copy_(torch.from_numpy(lin.weight.numpy()))
    l1_unstructured(lin, amount=0.3); prune.l1_unstructured(tl, 'weight', amount=0.3)
    l1_unstructured(lin, amount=0.5); prune.l1_unstructured(tl, 'weight', amount=0.5)
    np.testing.assert_array_equal(lin.weight_mask.numpy(), tl.weight_mask.numpy())


# --- CSR --------------------------------------------------------------------------------------------------------------

@prop
@given(st.integers(1, 12), st.integers(1, 12), st.integers(1, 5), st.floats(0, 1), seeds)
def test_csr_roundtrip_and_matmul_equal_dense(rows, cols, n, density, seed):
    rng = np.random.default_rng(seed)
    a = (rng.standard_normal((rows, cols)) * (rng.random((rows, cols)) < density)).astype(np.float32)
    b = rng.standard_normal((cols, n)).astype(np.float32)
    s = to_csr(a)
    assert isinstance(s, CSR) and s.nnz == np.count_nonzero(a) and s.indptr[-1] == s.nnz
    np.testing.assert_array_equal(s.to_dense(), a)
    assert s.nbytes == 4 * s.nnz + 4 * s.nnz + 4 * (rows + 1)
    # float32 sums of at most `cols` products in a different order
    np.testing.assert_allclose(csr_matmul(s, b), a.astype(np.float64) @ b, rtol=1e-5, atol=1e-5 * cols)
    s16 = to_csr(a, np.uint16)
    assert s16.indices.dtype == np.uint16 and s16.nbytes == 4 * s16.nnz + 2 * s16.nnz + 2 * (rows + 1)


def test_csr_errors():
    with pytest.raises(ValueError, match=r"csr_matmul: shapes \(2, 3\) @ \(2, 1\) do not match"):
        csr_matmul(to_csr(np.ones((2, 3), np.float32)), np.ones((2, 1), np.float32))
    with pytest.raises(ValueError, match="to_csr: expected a 2-D array"): to_csr(np.ones((2, 2, 2)))


# --- structured pruning ------------------------------------------------------------------------------------------------

@settings(max_examples=15, deadline=None)
@given(seeds, st.integers(1, 3), st.integers(1, 4))
def test_removing_zero_channels_keeps_outputs(seed, cut1, cut2):
    manual_seed(seed % 1000)
    rng = np.random.default_rng(seed)
    m = Sequential(Conv2d(2, 4, 3, padding=1), BatchNorm2d(4), ReLU(), MaxPool2d(2),
                   Conv2d(4, 6, 3, padding=1), BatchNorm2d(6), ReLU(), Flatten(), Linear(6 * 4 * 4, 5)).eval()
    for bn in (m[1], m[5]):
        bn.running_mean.data[...] = rng.standard_normal(bn.num_features)
        bn.running_var.data[...] = rng.uniform(0.5, 2, bn.num_features)
    drop1, drop2 = rng.choice(4, cut1, replace=False), rng.choice(6, cut2, replace=False)
    for conv, bn, drop in ((m[0], m[1], drop1), (m[4], m[5], drop2)):
        conv.weight.data[drop] = 0; conv.bias.data[drop] = 0
        bn.weight.data[drop] = 0; bn.bias.data[drop] = 0      # the channel outputs exact zeros
    small = remove_channels(m, 0, np.setdiff1d(np.arange(4), drop1))
    small = remove_channels(small, 4, np.setdiff1d(np.arange(6), drop2))
    assert small[0].out_channels == 4 - cut1 and small[8].in_features == (6 - cut2) * 16
    assert not small.training and not small[1].training
    x = Tensor(rng.standard_normal((3, 2, 8, 8)).astype(np.float32))
    np.testing.assert_allclose(small(x).numpy(), m(x).numpy(), rtol=1e-5, atol=1e-6)


def test_prune_channels_keeps_largest_filters():
    m = Sequential(Conv2d(1, 4, 3), ReLU(), Conv2d(4, 2, 3), ReLU(), Flatten(), Linear(2 * 4 * 4, 3))
    for i in range(4): m[0].weight.data[i] = [0.5, 3., 0.1, 2.][i]
    small = prune_channels(m, amount=0.5, n=1)
    np.testing.assert_array_equal(small[0].weight.numpy()[:, 0, 0, 0], [3., 2.])
    sub = m[2].weight.numpy()[:, [1, 3]]                      # conv 2 after its inputs shrank
    best = np.abs(sub).sum(axis=(1, 2, 3)).argmax()          # and half of its own filters are cut
    np.testing.assert_array_equal(small[2].weight.numpy(), sub[[best]])
    np.testing.assert_array_equal(small[5].weight.numpy(), m[5].weight.numpy()[:, best * 16:(best + 1) * 16])
    with pytest.raises(TypeError, match=r"model\[1\] is a ReLU, not a Conv2d"): remove_channels(m, 1, [0])


# --- low rank ------------------------------------------------------------------------------------------------------

@settings(max_examples=15, deadline=None)
@given(st.integers(1, 8), st.integers(1, 8), seeds, st.data())
def test_low_rank_is_the_truncated_svd(i, o, seed, data):
    manual_seed(seed % 1000)
    lin = Linear(i, o)
    r = data.draw(st.integers(1, min(i, o)))
    two = low_rank(lin, r)
    W = lin.weight.numpy().astype(np.float64)
    prod = two[1].weight.numpy().astype(np.float64) @ two[0].weight.numpy()
    S = np.linalg.svd(W, compute_uv=False)
    np.testing.assert_allclose(np.linalg.norm(prod - W), np.sqrt((S[r:] ** 2).sum()), atol=1e-5)
    assert np.linalg.matrix_rank(prod, tol=1e-5) <= r
    np.testing.assert_array_equal(two[1].bias.numpy(), lin.bias.numpy())
