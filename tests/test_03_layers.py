"""Property tests for `tinytorch.core.layers`: Linear against NumPy, checkpoints, parameter names, module state."""
import copy
import math
import re

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st
from hypothesis.extra import numpy as hnp

from tinytorch.core import activations
from tinytorch.core.activations import GELU, LogSoftmax, ReLU, Sigmoid, Softmax, Tanh
from tinytorch.core.layers import Identity, IncompatibleKeys, Linear, Module, Parameter, Sequential
from tinytorch.core.tensor import Tensor, manual_seed, ones, zeros

HYPOTHESIS = settings(max_examples=60)  # applied to this file's property tests by conftest.py

finite32 = st.floats(-100, 100, width=32, allow_nan=False)
seeds = st.integers(0, 2**32 - 1)


@st.composite
def specs(draw):
    "An MLP architecture: a list of ('linear', in, out, bias) and ('identity',) entries, widths chaining."
    widths = draw(st.lists(st.integers(1, 6), min_size=2, max_size=5))
    spec = []
    for i, o in zip(widths, widths[1:]):
        spec.append(("linear", i, o, draw(st.booleans())))
        if draw(st.booleans()): spec.append(("identity",))
    return spec


def build(spec, seed: int) -> Sequential:
    "The Sequential that `spec` describes, its weights drawn after `manual_seed(seed)`."
    manual_seed(seed)
    return Sequential(*[Linear(*s[1:]) if s[0] == "linear" else Identity() for s in spec])


def n_params(spec) -> int:
    "(in + 1) * out per Linear with a bias, in * out without."
    return sum((s[1] + s[3]) * s[2] for s in spec if s[0] == "linear")


def assert_same_state(a: dict, b: dict):
    assert list(a) == list(b)
    for k in a:
        assert a[k].dtype == b[k].dtype, k
        np.testing.assert_array_equal(a[k], b[k], err_msg=k)


@given(st.integers(1, 6), st.integers(1, 6), st.booleans(), hnp.array_shapes(min_dims=0, max_dims=3, max_side=4),
       seeds, st.data())
def test_linear_matches_numpy(n_in, n_out, bias, lead, seed, data):
    manual_seed(seed)
    lin = Linear(n_in, n_out, bias=bias)
    x = data.draw(hnp.arrays(np.float32, lead + (n_in,), elements=finite32))
    want = x @ lin.weight.numpy().T                     # (..., out): the same NumPy calls, so the same bits
    if bias: want = want + lin.bias.numpy()
    got = lin(Tensor(x))
    assert got.shape == lead + (n_out,) and got.dtype == np.float32
    np.testing.assert_array_equal(got.numpy(), want)


@given(st.integers(1, 6), st.integers(1, 6), hnp.array_shapes(min_dims=1, max_dims=3, max_side=4))
def test_linear_rejects_wrong_last_dim(n_in, n_out, shape):
    lin = Linear(n_in, n_out)
    shape = shape[:-1] + (n_in + 1,)
    with pytest.raises(ValueError, match=re.escape(f"Linear: input of shape {shape} does not end in in_features={n_in}")):
        lin(zeros(shape))


@given(st.integers(1, 300), st.integers(1, 8), seeds)
def test_linear_init_is_bounded_and_reproducible(n_in, n_out, seed):
    manual_seed(seed)
    a = Linear(n_in, n_out)
    manual_seed(seed)
    b = Linear(n_in, n_out)
    bound = 1 / math.sqrt(n_in)
    for p in a.parameters():
        assert p.dtype == np.float32 and p.requires_grad and isinstance(p, Parameter)
        assert np.abs(p.numpy()).max() <= bound
    assert_same_state(a.state_dict(), b.state_dict())


def test_linear_init_matches_uniform_moments():
    manual_seed(0)
    w = Linear(400, 500).weight.numpy()               # 200k draws from U(-1/20, 1/20)
    b = 1 / math.sqrt(400)
    # mean 0 and variance b^2/3; standard errors are b/sqrt(3N) and ~0.9 b^2/(3 sqrt(N)), tolerances are 5 of them
    assert abs(w.mean()) < 5 * b / math.sqrt(3 * w.size)
    assert abs(w.var() / (b**2 / 3) - 1) < 5 * 0.9 / math.sqrt(w.size)


@given(specs(), seeds, seeds, st.data())
def test_state_dict_round_trip_restores_outputs(spec, seed_a, seed_b, data):
    src, dst = build(spec, seed_a), build(spec, seed_b)
    x = Tensor(data.draw(hnp.arrays(np.float32, (3, spec[0][1]), elements=finite32)))
    assert dst.load_state_dict(src.state_dict()) == IncompatibleKeys([], [])
    np.testing.assert_array_equal(dst(x).numpy(), src(x).numpy())
    saved = dst.state_dict()
    for v in saved.values(): v += 1                   # the dict holds copies
    assert_same_state(dst.state_dict(), src.state_dict())


@given(specs(), seeds, st.sets(st.sampled_from(["drop", "add", "reshape"]), min_size=1), st.booleans(), st.data())
def test_corrupted_state_dict_raises_and_changes_nothing(spec, seed, corruptions, strict, data):
    model = build(spec, seed)
    before = model.state_dict()
    bad = build(spec, seed + 1).state_dict()          # different values under every key
    missing, unexpected, mismatch = [], [], []
    if "reshape" in corruptions:
        k = data.draw(st.sampled_from(list(bad)))
        shape = bad[k].shape + (1,)
        bad[k] = np.zeros(shape, np.float32)
        mismatch.append(f"shape mismatch for {k!r}: checkpoint {shape} vs model {before[k].shape}")
    droppable = [k for k in bad if not (mismatch and mismatch[0].startswith(f"shape mismatch for {k!r}"))]
    if "drop" in corruptions and droppable:
        k = data.draw(st.sampled_from(droppable))
        del bad[k]
        missing.append(k)
    if "add" in corruptions:
        bad["9.weight"] = np.zeros((2, 2), np.float32)
        unexpected.append("9.weight")
    expected = ([f"missing keys {missing}"] if strict and missing else []) \
        + ([f"unexpected keys {unexpected}"] if strict and unexpected else []) + mismatch
    if not expected:                                  # strict=False and only names differ: a partial load, no error
        assert model.load_state_dict(bad, strict=False) == IncompatibleKeys(missing, unexpected)
        return
    with pytest.raises(RuntimeError, match=re.escape("load_state_dict: " + "; ".join(expected))):
        model.load_state_dict(bad, strict=strict)
    assert_same_state(model.state_dict(), before)


@given(specs(), seeds)
def test_named_parameters_unique_and_counted(spec, seed):
    model = build(spec, seed)
    names = [n for n, _ in model.named_parameters()]
    assert len(names) == len(set(names))
    assert all(re.fullmatch(r"\d+\.(weight|bias)", n) for n in names)
    assert sum(p.size for p in model.parameters()) == n_params(spec)
    assert names == list(model.state_dict())          # no sharing and no buffers: the same names
    for name, p in model.named_parameters():          # each dotted name leads to its parameter
        i, attr = name.split(".")
        assert getattr(model[int(i)], attr) is p


def test_shared_module_and_tied_weight():
    lin = Linear(3, 3)
    model = Sequential(lin, Sequential(lin, Linear(3, 2)))
    assert [n for n, _ in model.named_modules()] == ["", "0", "1", "1.1"]
    assert [n for n, _ in model.named_parameters()] == ["0.weight", "0.bias", "1.1.weight", "1.1.bias"]
    assert list(model.state_dict()) == ["0.weight", "0.bias", "1.0.weight", "1.0.bias", "1.1.weight", "1.1.bias"]
    other = Sequential(Linear(3, 3), Sequential(Linear(3, 3), Linear(3, 2)))  # the same names, nothing shared
    other.load_state_dict(model.state_dict())
    x = Tensor(np.ones((2, 3), np.float32))
    np.testing.assert_array_equal(other(x).numpy(), model(x).numpy())
    a, b = Linear(4, 4), Linear(4, 4)
    b.weight = a.weight
    tied = Sequential(a, b)
    assert sum(p.size for p in tied.parameters()) == 16 + 4 + 4


def test_load_state_dict_keeps_dtypes_and_parameter_objects():
    model = Linear(2, 3)
    w = model.weight
    res = model.load_state_dict({"weight": np.arange(6.).reshape(3, 2), "bias": Tensor([1., 2., 3.], dtype=np.float64)})
    assert res == ([], []) and model.weight is w
    assert model.weight.dtype == np.float32 and model.bias.dtype == np.float32
    np.testing.assert_array_equal(model.bias.numpy(), [1., 2., 3.])


def test_buffers_are_saved_but_not_parameters():
    model = Sequential(Linear(2, 2), Identity())
    model[1].register_buffer("running_mean", zeros(2))
    assert [n for n, _ in model.named_buffers()] == ["1.running_mean"]
    assert len(list(model.parameters())) == 2
    assert list(model.state_dict()) == ["0.weight", "0.bias", "1.running_mean"]
    model.load_state_dict({**model.state_dict(), "1.running_mean": np.array([3., 4.])})
    np.testing.assert_array_equal(model[1].running_mean.numpy(), [3., 4.])
    without_buffer = {k: v for k, v in model.state_dict().items() if k != "1.running_mean"}
    with pytest.raises(RuntimeError, match=re.escape("missing keys ['1.running_mean']")):
        model.load_state_dict(without_buffer)


def test_setattr_registration_rules():
    class Net(Module):
        def __init__(self):
            super().__init__()
            self.fc, self.w, self.tag = Linear(2, 2), Parameter(ones(2)), "net"
    net = Net()
    assert list(net._modules) == ["fc"] and list(net._parameters) == ["w"] and net.tag == "net"
    assert "fc" not in net.__dict__ and "w" not in net.__dict__
    with pytest.raises(TypeError, match="cannot assign a Tensor to 'w', which holds a Parameter"):
        net.w = ones(2)
    with pytest.raises(TypeError, match="cannot assign a str to 'fc', which holds a Module"):
        net.fc = "fc"
    net.fc = None
    assert net.fc is None and [n for n, _ in net.named_parameters()] == ["w"]
    net.w = Linear(1, 1)                              # a Module moves the name to _modules
    assert list(net._parameters) == [] and list(net._modules) == ["fc", "w"]
    del net.w
    with pytest.raises(AttributeError, match="'Net' object has no attribute 'w'"):
        net.w


def test_train_eval_recurse_and_return_self():
    model = Sequential(Linear(2, 2), Sequential(Identity(), Linear(2, 2)))
    assert model.eval() is model
    assert [m.training for m in model.modules()] == [False] * 5
    model[1].train()
    assert [m.training for m in model.modules()] == [False, False, True, True, True]


def test_zero_grad_sets_none_once_per_shared_parameter():
    lin = Linear(2, 2)
    model = Sequential(lin, lin)
    for p in model.parameters(): p.grad = np.ones(p.shape, np.float32)
    model.zero_grad(set_to_none=False)
    assert all(not p.grad.any() for p in model.parameters())
    model.zero_grad()
    assert all(p.grad is None for p in lin.parameters())


def test_deepcopy_is_independent():
    model = Sequential(Linear(3, 4), Linear(4, 2))
    clone = copy.deepcopy(model)
    assert_same_state(clone.state_dict(), model.state_dict())
    clone[0].weight.data[...] = 0
    assert model[0].weight.numpy().any()
    assert [n for n, _ in clone.named_parameters()] == [n for n, _ in model.named_parameters()]


def test_repr_tree():
    model = Sequential(Linear(4, 8), Sequential(Identity(), Linear(8, 2, bias=False)))
    assert repr(model) == (
        "Sequential(\n"
        "  (0): Linear(in_features=4, out_features=8, bias=True)\n"
        "  (1): Sequential(\n"
        "    (0): Identity()\n"
        "    (1): Linear(in_features=8, out_features=2, bias=False)\n"
        "  )\n"
        ")")


ACTIVATION_MODULES = [ReLU(), Sigmoid(), Tanh(), GELU(), GELU("tanh"), Softmax(0), LogSoftmax(-1)]


def test_activation_classes_are_modules_without_copied_methods():
    "The activation classes derive from Module (as torch.nn.ReLU does); no methods are copied onto them."
    for act in ACTIVATION_MODULES:
        assert isinstance(act, Module) and act.training is True
        assert list(act.parameters()) == [] and act.state_dict() == {} and list(act.buffers()) == []
    base = activations.Activation
    assert issubclass(base, Module)
    copied = {"named_modules", "parameters", "state_dict", "load_state_dict", "train", "eval", "zero_grad",
              "_parameters", "_modules", "_buffers", "training"}
    assert not copied & set(vars(base)), sorted(copied & set(vars(base)))  # the old setattr loop is gone
    import tinytorch.core.layers as layers
    assert not hasattr(layers, "_TREE_METHODS")


def test_activation_modules_in_a_model():
    "In a Sequential: named, repr'd, switched by eval(), reached by hooks, and the output is the function's."
    manual_seed(0)
    net = Sequential(Linear(3, 4), *ACTIVATION_MODULES)
    assert [n for n, _ in net.named_parameters()] == ["0.weight", "0.bias"]
    assert repr(net).splitlines()[1:9] == [
        "  (0): Linear(in_features=3, out_features=4, bias=True)", "  (1): ReLU()", "  (2): Sigmoid()",
        "  (3): Tanh()", "  (4): GELU(approximate='none')", "  (5): GELU(approximate='tanh')",
        "  (6): Softmax(dim=0)", "  (7): LogSoftmax(dim=-1)"]
    net.eval()
    assert [m.training for m in net.modules()] == [False] * 9
    calls = []
    handles = [m.register_forward_pre_hook(lambda m, args: calls.append(type(m).__name__))
               for m in ACTIVATION_MODULES]
    x = Tensor(np.arange(6, dtype=np.float32).reshape(2, 3) - 2)
    out = net(x)
    for h in handles: h.remove()
    assert calls == ["ReLU", "Sigmoid", "Tanh", "GELU", "GELU", "Softmax", "LogSoftmax"]
    want = net[0](x)
    for f in (activations.relu, activations.sigmoid, activations.tanh, activations.gelu,
              lambda t: activations.gelu(t, "tanh"), lambda t: activations.softmax(t, 0),
              activations.log_softmax):
        want = f(want)
    np.testing.assert_array_equal(out.numpy(), want.numpy())
    net.train()
    with pytest.raises(TypeError, match="Tanh: expected a Tensor, got ndarray"): Tanh()(np.zeros(2))

