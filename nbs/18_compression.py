# %%
#| default_exp optimization.compression

# %% [markdown]
# # Compression
#
# > Pruning with persistent masks, channel pruning, CSR, distillation and low-rank factorization.

# %% [markdown]
# A trained network holds more numbers than it needs. This module removes some of them and measures
# what each removal costs in accuracy and what it buys in bytes and time:
#
# - **magnitude pruning** (`l1_unstructured`, `global_unstructured`, `ln_structured`, `remove`),
#   with the interface of PyTorch's `torch.nn.utils.prune`: the module keeps the trained
#   `weight_orig` and a `weight_mask` buffer, and a forward pre-hook sets `weight = weight_orig *
#   weight_mask` before every forward pass, so a pruned weight receives zero gradient and stays zero
#   through any optimizer step;
# - a **sensitivity scan** per layer and **gradual pruning** with the cubic schedule of Zhu and
#   Gupta (2017);
# - **channel pruning** that cuts whole convolution filters and produces a smaller dense model,
#   which is really faster, unlike a masked one;
# - **CSR storage** of a pruned matrix, its bytes, and the sparsity at which a CSR product beats
#   BLAS;
# - **knowledge distillation** (Hinton et al., 2015), a loss built from framework ops so autograd
#   differentiates it;
# - **low-rank factorization** of a `Linear` by a truncated SVD.
#
# Every exercise sits between `### BEGIN SOLUTION` and `### END SOLUTION`; the cells under it test
# it at once. The notebook trains on the packaged 8x8 digits; `milestones/compress_fashion.py`
# applies the same tools to a LeNet-style CNN on Fashion-MNIST.

# %%
#| export
import copy
import math
from dataclasses import dataclass

import numpy as np

from tinytorch.core.tensor import Tensor
from tinytorch.core.autograd import no_grad
from tinytorch.core.layers import Module, Parameter, Linear, Sequential
from tinytorch.core.activations import softmax, log_softmax
from tinytorch.core.losses import cross_entropy
from tinytorch.core.spatial import Conv2d, Flatten
from tinytorch.core.normalization import BatchNorm2d

# %%
#| hide
import os
import tempfile
import time
import warnings

import matplotlib.pyplot as plt
from fastcore.test import test_eq, test_fail, test_close

from tinytorch.core.tensor import manual_seed, randn
from tinytorch.core.autograd import gradcheck
from tinytorch.core.activations import ReLU
from tinytorch.core.spatial import MaxPool2d
from tinytorch.core.optimizers import Adam, SGD
from tinytorch.core.losses import CrossEntropyLoss
from tinytorch.core.training import Batches, Trainer, save_checkpoint, load_checkpoint
from tinytorch.data.loader import load_digits
from tinytorch.optimization.profiling import count_flops
from tinytorch.optimization.quantization import quantize_model
from tinytorch.utils.timing import (Timer, UnstableMeasurementWarning, blas_threads, compare,
                                    machine_info)

warnings.simplefilter('ignore', UnstableMeasurementWarning)  # the tables flag unstable timings

# %% [markdown]
# ## The magnitude mask
#
# Magnitude pruning removes the weights of smallest absolute value. Given scores (here $|w|$) and a
# count $k$, the mask is 0 at the $k$ smallest scores and 1 elsewhere. The count is exact: when
# several scores tie at the threshold, a stable sort (by score, then by position) decides, so
# exactly $k$ entries are cut and the same ones on every run. A threshold test such as `scores >
# np.sort(scores)[k]` would cut more or fewer.

# %%
#| export
def magnitude_mask(scores: np.ndarray,  # importance of each entry, any shape
                   k: int,              # how many entries to prune
                  ) -> np.ndarray:
    "float32 mask shaped like `scores`: 0 at the `k` smallest (ties: lower index first), else 1."
    ### BEGIN SOLUTION
    order = np.argsort(scores, axis=None, kind='stable')  # by score, then by flat index
    mask = np.ones(scores.size, np.float32)
    mask[order[:k]] = 0
    return mask.reshape(scores.shape)
    ### END SOLUTION

# %%
test_eq(magnitude_mask(np.array([3., -5., 0.5, 2.]), 2), [1., 0., 0., 1.])  # scores as given
test_eq(magnitude_mask(np.abs(np.array([3., -5., 0.5, 2.])), 2), [1., 1., 0., 0.])
test_eq(magnitude_mask(np.ones(5), 2), [0., 0., 1., 1., 1.])                # ties: lowest first
test_eq(magnitude_mask(np.ones((2, 2)), 0), np.ones((2, 2)))
test_eq(magnitude_mask(np.arange(6.).reshape(2, 3), 4).sum(), 2)            # exact count

# %% [markdown]
# ## How much: fraction or count
#
# `amount` is a fraction of the candidates when it is a float in $[0, 1]$ (rounded to the nearest
# count, as PyTorch does) and a count when it is an int. Anything else is an error that names the
# operation.

# %%
#| export
def _count(op: str, amount, n: int) -> int:
    "How many of `n` candidates to prune: `amount` is a fraction in [0, 1] or an int count <= `n`."
    number = (int, float, np.integer, np.floating)
    if isinstance(amount, (bool, np.bool_)) or not isinstance(amount, number):
        raise TypeError(f"{op}: amount must be a float fraction or an int count, got {amount!r}")
    if isinstance(amount, (int, np.integer)):
        if not 0 <= amount <= n:
            raise ValueError(f"{op}: amount {amount} is not a count in [0, {n}] (the candidates)")
        return int(amount)
    if not 0. <= amount <= 1.:
        raise ValueError(f"{op}: amount {amount} is not a fraction in [0, 1]")
    return int(round(amount * n))

# %%
test_eq(_count('t', 0.7, 10), 7)
test_eq(_count('t', 3, 10), 3)
test_fail(lambda: _count('l1_unstructured', 1.5, 10), contains="l1_unstructured: amount 1.5 is not")
test_fail(lambda: _count('l1_unstructured', 11, 10), contains="amount 11 is not a count in [0, 10]")
test_fail(lambda: _count('l1_unstructured', -0.1, 10), contains="not a fraction in [0, 1]")
test_fail(lambda: _count('l1_unstructured', True, 10), contains="got True")

# %% [markdown]
# ## Masks that persist
#
# Zeroing weights in place does not last: the next optimizer step gives them a gradient and revives
# them, and Adam's momentum or weight decay moves them even with a zero gradient. PyTorch's answer,
# copied here, is to keep two tensors on the module:
#
# - `weight_orig`, the trained `Parameter` (the same object, so an optimizer built earlier still
#   updates it);
# - `weight_mask`, a buffer of 0s and 1s, saved by `state_dict` and by checkpoints.
#
# A forward pre-hook (`Module.register_forward_pre_hook`) computes `weight = weight_orig *
# weight_mask` before every forward pass. The product is an autograd op, so the gradient reaching
# `weight_orig` is the incoming one times the mask: zero at every pruned entry. Whatever the
# optimizer does to `weight_orig` there, the weight the layer uses is exactly zero.

# %%
#| export
class _PruningHook:
    "Forward pre-hook: set `module.<name>` to `<name>_orig * <name>_mask` before each forward pass."
    def __init__(self, name: str): self.name = name

    def __call__(self, module: Module, args): _apply_mask(module, self.name)

def _apply_mask(module: Module, name: str):
    "Recompute the effective `name` of `module` from its `_orig` parameter and `_mask` buffer."
    w = module._parameters[name + '_orig'] * module._buffers[name + '_mask']  # recorded by autograd
    object.__setattr__(module, name, w)                                        # a plain attribute

def _hooks(module: Module) -> dict:
    "name -> handle of the pruning hooks on `module`."
    return module.__dict__.setdefault('_pruning_hooks', {})

# %%
#| export
def _current(op: str, module: Module, name: str) -> tuple:
    "(effective values, mask) of `module.name`, the mask all ones if not pruned; raise if missing."
    if name in _hooks(module):
        w, m = module._parameters[name + '_orig'].data, module._buffers[name + '_mask'].data
        return w * m, m
    p = module._parameters.get(name)
    if p is None:
        have = [k for k, v in module._parameters.items() if v is not None]
        raise ValueError(f"{op}: {type(module).__name__} has no parameter {name!r} (it has {have})")
    return p.data, np.ones(p.shape, p.dtype)

def _set_mask(module: Module, name: str, mask: np.ndarray):
    "Set the mask of `module.name`; the first time, move it to `name_orig` and add the hook."
    if name not in _hooks(module):
        p = module._parameters.pop(name)
        setattr(module, name + '_orig', p)                              # the same Parameter object
        module.register_buffer(name + '_mask', Tensor(np.ones(p.shape, p.dtype)))
        _hooks(module)[name] = module.register_forward_pre_hook(_PruningHook(name))
    module._buffers[name + '_mask'].data[...] = mask
    _apply_mask(module, name)

def _effective(module: Module, name: str) -> np.ndarray:
    "The values the layer computes with: `name_orig * name_mask` if pruned, else the parameter."
    return _current('_effective', module, name)[0]

# %% [markdown]
# `l1_unstructured` prunes the `amount` entries of smallest $|w|$ in one parameter. Pruning a
# parameter that is already pruned combines the masks as PyTorch's `PruningContainer` does: the new
# `amount` applies to the entries still alive, and a pruned entry stays pruned. Every check runs
# before anything changes, so a failed call leaves the module as it was.

# %%
#| export
def l1_unstructured(module: Module,       # a layer such as Linear or Conv2d
                    name: str = 'weight', # the parameter to prune
                    amount=0.5,           # fraction in [0, 1] or int count of its live entries
                   ) -> Module:
    "Prune the `amount` entries of `module.name` with the smallest absolute value; masks persist."
    w, mask = _current('l1_unstructured', module, name)
    alive = np.flatnonzero(mask)                                        # entries not yet pruned
    k = _count('l1_unstructured', amount, alive.size)
    mask = mask.copy()
    mask.flat[alive] = magnitude_mask(np.abs(w).ravel()[alive], k)
    _set_mask(module, name, mask)
    return module

# %%
manual_seed(0)
lin = Linear(4, 3)
lin.weight.data[...] = [[1., -2., 3., 0.5], [-0.1, 4., 0.2, 5.], [6., -7., 0.3, 8.]]
orig = lin.weight
l1_unstructured(lin, 'weight', amount=4)
test_eq(list(lin._parameters), ['bias', 'weight_orig'])
test_eq(lin.weight_orig is orig, True)                                   # the same Parameter object
test_eq(lin.weight_mask.numpy(), [[1, 1, 1, 0], [0, 1, 0, 1], [1, 1, 0, 1]])
test_eq(lin.weight.numpy(), orig.numpy() * lin.weight_mask.numpy())
x = randn(2, 4)
masked = orig.numpy() * lin.weight_mask.numpy()
test_close(lin(x).numpy(), x.numpy() @ masked.T + lin.bias.numpy(), eps=1e-6)
l1_unstructured(lin, 'weight', amount=0.25)                          # a quarter of the 8 alive
test_eq(int(lin.weight_mask.numpy().sum()), 6)
test_eq(lin.weight_mask.numpy()[0], [0, 0, 1, 0])                        # 1 and -2: smallest alive
test_fail(lambda: l1_unstructured(lin, 'wieght'), contains="Linear has no parameter 'wieght'")
test_fail(lambda: l1_unstructured(lin, amount=1.2), contains="l1_unstructured: amount 1.2")
test_fail(lambda: l1_unstructured(lin, amount=7), contains="amount 7 is not a count in [0, 6]")

# %% [markdown]
# The gradient test: after one backward pass the pruned entries of `weight_orig` have gradient zero,
# and after 20 Adam steps with weight decay the layer's weight is still exactly zero there.

# %%
manual_seed(0)
lin = Linear(6, 4)
l1_unstructured(lin, amount=0.5)
opt = Adam(lin.parameters(), lr=0.1, weight_decay=0.1)
pruned = lin.weight_mask.numpy() == 0
for _ in range(20):
    opt.zero_grad()
    (lin(randn(8, 6)) ** 2).mean().backward()
    test_eq(lin.weight_orig.grad[pruned], np.zeros(pruned.sum()))
    opt.step()
lin(randn(1, 6))                                                     # the hook recomputes weight
test_eq(lin.weight.numpy()[pruned], np.zeros(pruned.sum()))
test_eq(int((lin.weight.numpy() != 0).sum()), 12)

# %% [markdown]
# ## Global and structured pruning
#
# `global_unstructured` ranks the weights of several parameters together, so a layer with many small
# weights loses more of them than one with few: one threshold for the whole network. `ln_structured`
# prunes whole slices along `dim` (for a convolution weight `(O, C, KH, KW)` and `dim=0`, whole
# output filters), ranking them by their $L_n$ norm. Both act on live entries only when the
# parameter is already pruned. Slices are ranked by the weight the layer uses, `weight_orig *
# weight_mask`; PyTorch ranks by `weight_orig`, which differs only when a parameter is pruned twice
# (`tests/test_18_compression.py` compares single calls with PyTorch's masks).

# %%
#| export
def global_unstructured(parameters,  # list of (module, name) pairs
                        amount=0.5,  # fraction in [0, 1] or int count of all their live entries
                       ):
    "Prune the `amount` entries of smallest absolute value across all `parameters` together."
    op = 'global_unstructured'
    parameters = list(parameters)
    if not parameters: raise ValueError(f"{op}: no parameters given")
    ws, masks = zip(*[_current(op, m, n) for m, n in parameters])
    alive = [np.flatnonzero(mk) for mk in masks]
    scores = np.concatenate([np.abs(w).ravel()[a] for w, a in zip(ws, alive)])
    new = magnitude_mask(scores, _count(op, amount, scores.size))
    parts = np.split(new, np.cumsum([len(a) for a in alive])[:-1])
    for (m, n), mk, a, part in zip(parameters, masks, alive, parts):
        mk = mk.copy()
        mk.flat[a] = part
        _set_mask(m, n, mk)

# %%
a, b = Linear(2, 2, bias=False), Linear(2, 2, bias=False)
a.weight.data[...] = [[1., 2.], [3., 4.]]
b.weight.data[...] = [[0.5, 10.], [20., 1.5]]
global_unstructured([(a, 'weight'), (b, 'weight')], amount=0.5)
test_eq(a.weight_mask.numpy(), [[0, 0], [1, 1]])                     # 0.5, 1, 1.5, 2: smallest
test_eq(b.weight_mask.numpy(), [[0, 1], [1, 0]])
test_fail(lambda: global_unstructured([]), contains="global_unstructured: no parameters given")
test_fail(lambda: global_unstructured([(a, 'bias')]), contains="Linear has no parameter 'bias'")

# %%
#| export
def ln_structured(module: Module,       # a layer such as Conv2d or Linear
                  name: str = 'weight', # the parameter to prune
                  amount=0.5,           # fraction in [0, 1] or int count of the live slices
                  n=2,                  # order of the norm: 1, 2 or np.inf
                  dim: int = 0,         # axis whose slices are pruned whole (0: output channels)
                 ) -> Module:
    "Prune the `amount` slices along `dim` of `module.name` of smallest L`n` norm; masks persist."
    op = 'ln_structured'
    w, mask = _current(op, module, name)
    if n not in (1, 2, np.inf): raise ValueError(f"{op}: n must be 1, 2 or np.inf, got {n!r}")
    if not -w.ndim <= dim < w.ndim:
        raise ValueError(f"{op}: dim {dim} is out of range for {name!r} of shape {w.shape}")
    mask, dim = mask.copy(), dim % w.ndim
    rest = tuple(i for i in range(w.ndim) if i != dim)
    slices = np.moveaxis(w, dim, 0).reshape(w.shape[dim], -1)           # (w.shape[dim], rest)
    norms = np.linalg.norm(slices, ord=n, axis=1)                        # (w.shape[dim],)
    alive = np.flatnonzero(mask.any(axis=rest))                         # slices with a live entry
    keep = magnitude_mask(norms[alive], _count(op, amount, alive.size))
    cut = alive[keep == 0]
    np.moveaxis(mask, dim, 0)[cut] = 0                                   # a view: whole slices
    _set_mask(module, name, mask)
    return module

# %%
conv = Conv2d(2, 4, 3)
conv.weight.data[...] = np.arange(1, 5, dtype=np.float32)[:, None, None, None]  # filter i: i+1
conv.weight.data[2] *= -1
ln_structured(conv, amount=0.5, n=1, dim=0)
test_eq(conv.weight_mask.numpy().sum(axis=(1, 2, 3)), [0, 0, 18, 18])    # filters 0 and 1 cut whole
ln_structured(conv, amount=1, n=2, dim=0)                                # one of the 2 live filters
test_eq(conv.weight_mask.numpy().sum(axis=(1, 2, 3)), [0, 0, 0, 18])
test_fail(lambda: ln_structured(conv, amount=2), contains="amount 2 is not a count in [0, 1]")
test_fail(lambda: ln_structured(conv, n=3), contains="n must be 1, 2 or np.inf, got 3")
test_fail(lambda: ln_structured(conv, dim=4), contains="dim 4 is out of range")

# %% [markdown]
# ## Making it permanent, and looking at it
#
# `remove` folds the mask into the parameter: `weight` becomes a plain `Parameter` again (the same
# object that was `weight_orig`, now holding the zeros), and the hook and buffer go. `identity`
# attaches an all-ones mask, so a pruned checkpoint can be loaded into a freshly built model.
# `is_pruned` and `sparsity` report.

# %%
#| export
def remove(module: Module, name: str = 'weight') -> Module:
    "Make the pruning of `module.name` permanent: `name` becomes a Parameter holding `orig * mask`."
    if name not in _hooks(module):
        raise ValueError(f"remove: parameter {name!r} of {type(module).__name__} is not pruned")
    _hooks(module).pop(name).remove()
    p = module._parameters.pop(name + '_orig')
    p.data *= module._buffers.pop(name + '_mask').data
    module.__dict__.pop(name, None)                                      # the plain attribute
    setattr(module, name, p)
    return module

def identity(module: Module, name: str = 'weight') -> Module:
    "Prune nothing, but give `module.name` an all-ones mask (to load a pruned state dict into it)."
    _set_mask(module, name, _current('identity', module, name)[1])
    return module

def is_pruned(module: Module) -> bool:
    "True if `module` or any of its submodules has a pruned parameter."
    return any(m.__dict__.get('_pruning_hooks') for m in module.modules())

# %%
#| export
def sparsity(model: Module) -> dict:
    "Fraction of zeros in each weight of 2+ axes (Linear, Conv2d), by dotted name, and 'overall'."
    out, zeros, total = {}, 0, 0
    for mname, m in model.named_modules():
        if m._parameters.get('weight') is None and 'weight' not in _hooks(m): continue
        w = _effective(m, 'weight')
        if w.ndim < 2: continue
        z = int((w == 0).sum())
        out[f"{mname}.weight" if mname else 'weight'] = z / w.size
        zeros, total = zeros + z, total + w.size
    out['overall'] = zeros / total if total else 0.
    return out

# %%
lin = Linear(4, 2)
test_eq(is_pruned(Sequential(lin)), False)
l1_unstructured(lin, amount=3)
test_eq(is_pruned(Sequential(lin)), True)
test_eq(sparsity(Sequential(lin, ReLU(), Linear(2, 2))),
        {'0.weight': 3 / 8, '2.weight': 0., 'overall': 3 / 12})
w_eff = lin.weight.numpy().copy()
remove(lin)
test_eq((list(lin._parameters), list(lin._buffers)), (['bias', 'weight'], []))
test_eq(lin.weight.numpy(), w_eff)
test_eq(is_pruned(lin), False)
test_fail(lambda: remove(lin), contains="remove: parameter 'weight' of Linear is not pruned")

# %% [markdown]
# A mask survives `state_dict`, `load_state_dict` and the pickle-free checkpoint: it is a buffer. A
# fresh model gets masks with `identity` before loading, as in PyTorch.

# %%
manual_seed(0)
net = Sequential(Linear(5, 4), ReLU(), Linear(4, 3))
global_unstructured([(net[0], 'weight'), (net[2], 'weight')], amount=0.6)
test_eq(sorted(net.state_dict()), ['0.bias', '0.weight_mask', '0.weight_orig',
                                   '2.bias', '2.weight_mask', '2.weight_orig'])
with tempfile.TemporaryDirectory() as d:
    path = save_checkpoint(os.path.join(d, 'pruned.npz'), net)
    fresh = Sequential(Linear(5, 4), ReLU(), Linear(4, 3))
    test_fail(lambda: load_checkpoint(path, fresh), contains="does not fit")
    identity(fresh[0]); identity(fresh[2])
    load_checkpoint(path, fresh)
x = randn(3, 5)
test_eq(fresh(x).numpy(), net(x).numpy())
test_eq(sparsity(fresh)['overall'], sparsity(net)['overall'])
print(f"sparsity after loading: {sparsity(fresh)}")

# %% [markdown]
# ## A model to compress
#
# A small CNN on the 8x8 digits: two 3x3 convolutions with BatchNorm and pooling, then two linear
# layers. `fit` trains it with Adam; `accuracy` evaluates in batches without recording a graph.

# %%
X_train, y_train, X_test, y_test = load_digits()

def digits_cnn(c1=16, c2=32):
    "Conv(1, c1)-BN-ReLU-pool, Conv(c1, c2)-BN-ReLU-pool, Linear(c2*2*2, 64)-ReLU, Linear(64, 10)."
    return Sequential(Conv2d(1, c1, 3, padding=1), BatchNorm2d(c1), ReLU(), MaxPool2d(2),
                      Conv2d(c1, c2, 3, padding=1), BatchNorm2d(c2), ReLU(), MaxPool2d(2),
                      Flatten(), Linear(c2 * 4, 64), ReLU(), Linear(64, 10))  # (N, 10)

def fit(model, epochs, lr=3e-3, seed=0, loss_fn=None):
    "Train `model` on the digits with Adam for `epochs`; return it."
    opt = Adam(model.parameters(), lr=lr)
    Trainer(model, loss_fn or CrossEntropyLoss(), opt, progress=False).fit(
        Batches(X_train, y_train, 64, shuffle=True, seed=seed), epochs=epochs)
    return model.eval()

def accuracy(model, X=X_test, y=y_test) -> float:
    "Fraction of `X` that `model` classifies correctly, in evaluation mode."
    model.eval()
    with no_grad(): return float((model(Tensor(X)).numpy().argmax(1) == y).mean())

manual_seed(0)
with Timer() as t_base: base = fit(digits_cnn(), epochs=8)
base_acc = accuracy(base)
print(f"digits CNN: {sum(p.size for p in base.parameters()):,} parameters, "
      f"test accuracy {base_acc:.2%} "
      f"on {len(y_test)} images, trained in {t_base.elapsed:.1f} s")

# %% [markdown]
# ## Sensitivity of each layer
#
# Layers differ in how much pruning they tolerate. The scan prunes one layer at a time, without
# fine-tuning, at increasing sparsity and measures the accuracy. A layer whose curve falls early
# should be pruned less.

# %%
#| export
def prunable(model: Module) -> list:
    "(module, 'weight') for every Linear and Conv2d in `model`, in order."
    return [(m, 'weight') for m in model.modules() if isinstance(m, (Linear, Conv2d))]

def sensitivity_scan(model: Module,      # a trained model; left unchanged
                     evaluate,           # function(model) -> score, such as test accuracy
                     sparsities=(0.3, 0.5, 0.7, 0.9, 0.95),
                    ) -> dict:
    "Score of `model` with each prunable layer alone pruned to each sparsity: {name: [scores]}."
    names = {id(m): n for n, m in model.named_modules()}
    out = {}
    for i, (m, _) in enumerate(prunable(model)):
        scores = []
        for s in sparsities:
            c = copy.deepcopy(model)
            l1_unstructured(prunable(c)[i][0], 'weight', float(s))
            scores.append(evaluate(c))
        out[names[id(m)]] = scores
    return out

# %%
levels = (0.5, 0.7, 0.8, 0.9, 0.95, 0.98)
scan = sensitivity_scan(base, accuracy, levels)
fig, ax = plt.subplots(figsize=(6, 3.2))
for name, accs in scan.items():
    n = dict(base.named_modules())[name].weight.size
    ax.plot(levels, accs, marker='o', label=f"{name} ({n} weights)")
    pairs = ", ".join(f"{s:.0%} -> {a:.1%}" for s, a in zip(levels, accs))
    print(f"layer {name:>2} ({n:>5} weights): {pairs}")
ax.axhline(base_acc, color='gray', ls=':', label='unpruned')
ax.set_xlabel('sparsity of that layer alone'); ax.set_ylabel('test accuracy'); ax.legend(fontsize=7)
plt.show()

# %% [markdown]
# ## One-shot pruning and fine-tuning
#
# Pruning 70% of all weights at once, globally, costs some accuracy; a few epochs of training with
# the masks in place recover it. The optimizer sees `weight_orig`, the masks keep the pruned entries
# at zero.

# %%
one = copy.deepcopy(base)
global_unstructured(prunable(one), amount=0.7)
acc_pruned = accuracy(one)
fit(one.train(), epochs=3, lr=1e-3)
acc_ft = accuracy(one)
sp = sparsity(one)
print(f"70% global pruning: accuracy {base_acc:.2%} -> {acc_pruned:.2%} pruned -> "
      f"{acc_ft:.2%} fine-tuned; "
      f"overall sparsity after fine-tuning {sp['overall']:.2%}")
print("per layer: " + ", ".join(f"{k} {v:.0%}" for k, v in sp.items() if k != 'overall'))
test_close(sp['overall'], 0.7, eps=1 / sum(m.weight.size for m, _ in prunable(one)))

# %% [markdown]
# ## Gradual pruning: the cubic schedule
#
# Zhu and Gupta (2017) raise the sparsity from $s_i$ to $s_f$ over $n$ pruning steps, $\Delta t$
# training steps apart, starting at step $t_0$, along
#
# $$s_t = s_f + (s_i - s_f)\left(1 - \frac{t - t_0}{n \Delta t}\right)^3
#   \quad \text{for } t_0 \le t \le t_0 + n\Delta t,$$
#
# $s_i$ before and $s_f$ after. The cube prunes fast while many redundant weights remain and slowly
# near the end, when each weight matters more; training between steps lets the rest adapt.

# %%
#| export
def cubic_sparsity(t: int,            # current training step
                   s_i: float,        # initial sparsity
                   s_f: float,        # final sparsity
                   t0: int,           # step at which pruning starts
                   n: int,            # number of pruning steps
                   dt: int,           # training steps between pruning steps
                  ) -> float:
    "Sparsity at step `t`: `s_i` before `t0`, `s_f` after `t0 + n*dt`, the cubic between."
    if not (0 <= s_i <= s_f <= 1):
        raise ValueError(f"cubic_sparsity: need 0 <= s_i <= s_f <= 1, got {s_i=}, {s_f=}")
    if n < 1 or dt < 1: raise ValueError(f"cubic_sparsity: n and dt must be >= 1, got {n=}, {dt=}")
    ### BEGIN SOLUTION
    if t < t0: return float(s_i)
    frac = min((t - t0) / (n * dt), 1.)
    return float(s_f + (s_i - s_f) * (1 - frac) ** 3)
    ### END SOLUTION

# %%
test_eq(cubic_sparsity(0, 0., 0.9, t0=10, n=4, dt=5), 0.)
test_eq(cubic_sparsity(10, 0., 0.9, t0=10, n=4, dt=5), 0.)
test_close(cubic_sparsity(20, 0., 0.8, t0=10, n=4, dt=5), 0.8 - 0.8 * 0.5**3, eps=1e-12)  # halfway
test_eq(cubic_sparsity(30, 0., 0.9, t0=10, n=4, dt=5), 0.9)
test_eq(cubic_sparsity(99, 0.1, 0.9, t0=10, n=4, dt=5), 0.9)
test_fail(lambda: cubic_sparsity(0, 0.5, 0.2, 0, 1, 1), contains="need 0 <= s_i <= s_f <= 1")

# %% [markdown]
# `prune_to` brings a set of parameters to an overall sparsity by pruning the right count of live
# entries, which is how a schedule is applied: the counts, not fractions of what is left, follow the
# curve exactly.

# %%
#| export
def prune_to(parameters,       # list of (module, name) pairs
             target: float,    # overall fraction of their entries that should be pruned
            ):
    "Prune globally by magnitude until exactly round(target * total) entries are masked."
    parameters = list(parameters)
    sizes = [(_effective(m, n)).size for m, n in parameters]
    masked = sum(int((_current('prune_to', m, n)[1] == 0).sum()) for m, n in parameters)
    want = int(round(target * sum(sizes)))
    if want < masked:
        raise ValueError(f"prune_to: target {target} asks for {want} pruned entries, "
                         f"{masked} already are")
    global_unstructured(parameters, amount=want - masked)

# %%
gradual = copy.deepcopy(base).train()
s_f, steps_per_epoch = 0.9, len(Batches(X_train, y_train, 64))
t0, n_prune, dt = 0, 8, steps_per_epoch // 2          # pruning during the first 4 of 6 epochs
opt = Adam(gradual.parameters(), lr=1e-3)
batches = Batches(X_train, y_train, 64, shuffle=True, seed=1)
curve, t = [], 0
for epoch in range(6):
    for xb, yb in batches:
        if t % dt == 0 and t <= t0 + n_prune * dt:
            prune_to(prunable(gradual), cubic_sparsity(t, 0., s_f, t0, n_prune, dt))
        opt.zero_grad()
        cross_entropy(gradual(xb), yb).backward()
        opt.step()
        t += 1
    curve.append((t, sparsity(gradual)['overall'], accuracy(gradual)))
    gradual.train()
print(f"gradual pruning to {s_f:.0%} over {n_prune} steps {dt} apart, 6 epochs:")
for step, s, acc in curve: print(f"  step {step:>3}: sparsity {s:.2%}, test accuracy {acc:.2%}")
oneshot90 = copy.deepcopy(base)
global_unstructured(prunable(oneshot90), amount=0.9)
print(f"90% one-shot without fine-tuning: {accuracy(oneshot90):.2%}; unpruned {base_acc:.2%}")
test_close(curve[-1][1], s_f, eps=1e-3)

# %%
#| hide
ts = np.arange(0, n_prune * dt + dt)
plt.figure(figsize=(5, 2.5))
plt.plot(ts, [cubic_sparsity(t, 0., s_f, t0, n_prune, dt) for t in ts])
plt.xlabel('training step'); plt.ylabel('target sparsity'); plt.title('cubic schedule')
plt.show()

# %% [markdown]
# ## Channel pruning: a smaller dense model
#
# A masked weight still costs its full multiply-adds: the zeros are multiplied like any number. To
# be faster the model must shrink. Removing output channel $c$ of a convolution removes filter $c$
# and its bias, channel $c$ of the BatchNorm after it, and what reads that channel downstream: input
# channel $c$ of the next convolution, or, after `Flatten`, the $H \cdot W$ columns $c \cdot HW,
# \dots, (c+1)HW - 1$ of the first `Linear` (Flatten lays out $(C, H, W)$ channel by channel). The
# result is an ordinary dense model.

# %%
#| export
def _sub_conv(conv: Conv2d, out_keep=None, in_keep=None) -> Conv2d:
    "A copy of `conv` keeping output channels `out_keep` and input channels `in_keep` (None: all)."
    w = conv.weight.data
    o = np.arange(w.shape[0]) if out_keep is None else np.asarray(out_keep)
    i = np.arange(w.shape[1]) if in_keep is None else np.asarray(in_keep)
    new = Conv2d(len(i), len(o), conv.kernel_size, conv.stride, conv.padding,
                 bias=conv.bias is not None)
    new.weight.data[...] = w[o][:, i]
    if conv.bias is not None: new.bias.data[...] = conv.bias.data[o]
    return new

def _sub_bn(bn: BatchNorm2d, keep) -> BatchNorm2d:
    "A copy of `bn` keeping channels `keep`, with their parameters and running statistics."
    new = BatchNorm2d(len(keep), bn.eps, bn.momentum, bn.affine, bn.track_running_stats)
    for k, t in list(bn._parameters.items()) + list(bn._buffers.items()):
        if t is not None: getattr(new, k).data[...] = t.data[keep] if t.ndim else t.data
    return new

# %%
#| export
def remove_channels(model: Sequential,  # Conv2d, BatchNorm2d, activations, pooling, Flatten, Linear
                    index: int,         # position of a Conv2d in `model`
                    keep,               # output channels of that Conv2d to keep, in order
                   ) -> Sequential:
    "A new dense Sequential without the other output channels of `model[index]` and their readers."
    layers = list(copy.deepcopy(model))
    if not isinstance(layers[index], Conv2d):
        kind = type(layers[index]).__name__
        raise TypeError(f"remove_channels: model[{index}] is a {kind}, not a Conv2d")
    keep = np.asarray(keep, dtype=np.int64)
    C = layers[index].out_channels
    if keep.size == 0 or len(set(keep.tolist())) != keep.size or keep.min() < 0 or keep.max() >= C:
        raise ValueError(f"remove_channels: keep must be distinct channels in [0, {C}), "
                         f"got {keep.tolist()}")
    layers[index] = _sub_conv(layers[index], out_keep=keep)
    flat = False
    for j in range(index + 1, len(layers)):
        m = layers[j]
        if isinstance(m, BatchNorm2d) and not flat: layers[j] = _sub_bn(m, keep)
        elif isinstance(m, Conv2d) and not flat:
            layers[j] = _sub_conv(m, in_keep=keep)
            break
        elif isinstance(m, Flatten): flat = True
        elif isinstance(m, Linear) and flat:
            hw = m.in_features // C                                      # positions per channel
            cols = (keep[:, None] * hw + np.arange(hw)).ravel()          # (len(keep) * hw,)
            new = Linear(len(cols), m.out_features, bias=m.bias is not None)
            new.weight.data[...] = m.weight.data[:, cols]
            if m.bias is not None: new.bias.data[...] = m.bias.data
            layers[j] = new
            break
        elif isinstance(m, Module) and any(p is not None for p in m._parameters.values()):
            raise TypeError(f"remove_channels: cannot carry channels through model[{j}], "
                            f"a {type(m).__name__}")
    else: raise ValueError(f"remove_channels: nothing after model[{index}] reads its channels")
    return Sequential(*layers).train(model.training)         # new layers start in training mode

# %% [markdown]
# When the removed channels output zeros (their filter, bias and BatchNorm scale and shift are zero,
# so ReLU passes 0), the smaller model computes exactly what the larger one does.

# %%
manual_seed(0)
m = digits_cnn(4, 6).eval()
for bn_i in (1, 5): m[bn_i].running_mean.data[...] = randn(m[bn_i].num_features).numpy()
drop = {0: [1], 4: [0, 3]}                                        # conv index -> channels to zero
for ci, chans in drop.items():
    m[ci].weight.data[chans] = 0; m[ci].bias.data[chans] = 0
    m[ci + 1].weight.data[chans] = 0; m[ci + 1].bias.data[chans] = 0
small = remove_channels(m, 0, [0, 2, 3])
small = remove_channels(small, 4, [1, 2, 4, 5])
test_eq((small[0].weight.shape, small[4].weight.shape, small[9].weight.shape),
        ((3, 1, 3, 3), (4, 3, 3, 3), (64, 16)))
x = randn(5, 1, 8, 8)
test_close(small(x).numpy(), m(x).numpy(), eps=1e-5)
test_fail(lambda: remove_channels(m, 1, [0]), contains="model[1] is a BatchNorm2d, not a Conv2d")
test_fail(lambda: remove_channels(m, 0, [0, 0]), contains="distinct channels in [0, 4)")
test_fail(lambda: remove_channels(m, 0, [4]), contains="got [4]")

# %% [markdown]
# `prune_channels` applies this to every convolution: it keeps the filters of largest $L_n$ norm.

# %%
#| export
def prune_channels(model: Sequential,  # see `remove_channels`
                   amount=0.5,         # fraction or count of each Conv2d's output channels to cut
                   n=1,                # order of the filter norm that ranks channels
                  ) -> Sequential:
    "A smaller dense copy of `model` without each Conv2d's `amount` channels of smallest L`n` norm."
    for i in [i for i, m in enumerate(model) if isinstance(m, Conv2d)]:
        w = model[i].weight.data
        norms = np.linalg.norm(w.reshape(w.shape[0], -1), ord=n, axis=1)  # (O,)
        k = _count('prune_channels', amount, w.shape[0])
        if k == w.shape[0]:
            raise ValueError(f"prune_channels: amount {amount} removes all {k} channels "
                             f"of model[{i}]")
        model = remove_channels(model, i, np.flatnonzero(magnitude_mask(norms, k)))
    return model

# %%
slim = prune_channels(base, amount=0.5)
print(slim)
acc_slim0 = accuracy(slim)
fit(slim.train(), epochs=3, lr=1e-3)
acc_slim = accuracy(slim)
params = lambda net: sum(p.size for p in net.parameters())
x1 = Tensor(X_test[:1])
flops = {name: count_flops(net.eval(), x1).total_flops
         for name, net in (('dense', base), ('slim', slim))}
print(f"channels halved: {params(base):,} -> {params(slim):,} parameters, {flops['dense']:,} -> "
      f"{flops['slim']:,} FLOPs per image ({flops['slim'] / flops['dense']:.2f}x, `count_flops`); "
      f"accuracy {base_acc:.2%} -> {acc_slim0:.2%} cut -> {acc_slim:.2%} fine-tuned")
test_fail(lambda: prune_channels(base, amount=16), contains="removes all 16 channels of model[0]")

# %% [markdown]
# The time of a forward pass at batch 64, the two models alternating (`compare`, one BLAS thread).
# The machine is shared, so the ratio moves from run to run; `benchmarks/bench_compression.py`
# measures it with more rounds.

# %%
xb = Tensor(X_test[:64])
def fwd(net, x=xb):
    "A function of no arguments: one forward pass of `net` on `x` without recording a graph."
    def f():
        with no_grad(): net(x)
    return f
with blas_threads(1):
    c = compare({'dense': fwd(base.eval()), 'channels halved': fwd(slim.eval())}, rounds=5)
print(c.table())
print(f"speed-up {1 / c.ratio('channels halved', 'dense'):.2f}x")

# %% [markdown]
# ## Sparse storage: CSR
#
# Compressed sparse row (CSR) format stores a matrix with `nnz` nonzeros in three arrays: `data`
# (the nonzero values, row by row), `indices` (the column of each) and `indptr` (length rows + 1:
# row $r$'s entries are `data[indptr[r]:indptr[r+1]]`). With float32 values and int32 indices each
# nonzero costs 8 bytes against 4 for a dense entry, so CSR saves space only above 50% sparsity;
# 16-bit indices (any matrix with at most 65,536 columns) move that to 33%.

# %%
#| export
@dataclass
class CSR:
    "A matrix in compressed sparse row format."
    data: np.ndarray     # (nnz,) nonzero values, row by row
    indices: np.ndarray  # (nnz,) column of each value
    indptr: np.ndarray   # (rows + 1,) row r holds data[indptr[r]:indptr[r + 1]]
    shape: tuple         # (rows, cols)

    @property
    def nnz(self) -> int: return int(self.data.size)
    @property
    def nbytes(self) -> int: return self.data.nbytes + self.indices.nbytes + self.indptr.nbytes

    def to_dense(self) -> np.ndarray:
        out = np.zeros(self.shape, self.data.dtype)
        rows = np.repeat(np.arange(self.shape[0]), np.diff(self.indptr))
        out[rows, self.indices] = self.data
        return out

# %%
#| export
def to_csr(a: np.ndarray,              # (rows, cols) dense matrix
           index_dtype=np.int32,       # dtype of `indices` and `indptr`
          ) -> CSR:
    "The CSR form of the 2-D array `a`: nonzeros row by row, their columns, and row pointers."
    if a.ndim != 2: raise ValueError(f"to_csr: expected a 2-D array, got shape {a.shape}")
    if np.iinfo(index_dtype).max < max(a.shape[1] - 1, np.count_nonzero(a)):
        raise ValueError(f"to_csr: {np.dtype(index_dtype)} cannot index {a.shape} "
                         f"with {np.count_nonzero(a)} nonzeros")
    ### BEGIN SOLUTION
    rows, cols = np.nonzero(a)                                           # row-major order
    indptr = np.zeros(a.shape[0] + 1, index_dtype)
    np.cumsum(np.bincount(rows, minlength=a.shape[0]), out=indptr[1:])
    return CSR(a[rows, cols], cols.astype(index_dtype), indptr, a.shape)
    ### END SOLUTION

# %%
w = np.array([[0., 2., 0.], [0., 0., 0.], [1., 0., 3.]], np.float32)
s = to_csr(w)
test_eq((s.data, s.indices, s.indptr), ([2., 1., 3.], [1, 0, 2], [0, 1, 1, 3]))
test_eq(s.data.dtype, np.float32)
test_eq(s.to_dense(), w)
test_eq(s.nbytes, 3 * 4 + 3 * 4 + 4 * 4)
test_eq(to_csr(np.zeros((2, 2))).indptr, [0, 0, 0])
test_fail(lambda: to_csr(np.zeros(3)), contains="to_csr: expected a 2-D array, got shape (3,)")
test_fail(lambda: to_csr(np.ones((2, 300)), np.int8), contains="int8 cannot index (2, 300)")

# %% [markdown]
# The product of a CSR matrix $A$ (rows, K) with a dense $B$ (K, N): each nonzero $a_{rk}$ scales
# row $k$ of $B$, and the scaled rows of row $r$ are summed. In NumPy: gather `B[indices]` (nnz, N),
# scale by `data`, and sum the segments that `indptr` delimits with `np.add.reduceat` (empty rows
# need care: reduceat would copy a value).

# %%
#| export
def csr_matmul(a: CSR,          # (rows, K) sparse matrix
               b: np.ndarray,   # (K, N) dense matrix
              ) -> np.ndarray:
    "Dense (rows, N) product `a @ b` computed from the nonzeros of `a` only."
    if b.ndim != 2 or b.shape[0] != a.shape[1]:
        raise ValueError(f"csr_matmul: shapes {a.shape} @ {b.shape} do not match")
    ### BEGIN SOLUTION
    out = np.zeros((a.shape[0], b.shape[1]), np.result_type(a.data, b))
    if a.nnz == 0: return out
    prod = a.data[:, None] * b[a.indices]                                # (nnz, N)
    full = np.diff(a.indptr) > 0                                         # rows with entries
    out[full] = np.add.reduceat(prod, a.indptr[:-1][full], axis=0)
    return out
    ### END SOLUTION

# %%
b = np.arange(6, dtype=np.float32).reshape(3, 2)
test_eq(csr_matmul(s, b), w @ b)
test_eq(csr_matmul(to_csr(np.zeros((2, 3), np.float32)), b), np.zeros((2, 2)))
rng = np.random.default_rng(0)
big = rng.standard_normal((50, 40)).astype(np.float32) * (rng.random((50, 40)) > 0.8)
b = rng.standard_normal((40, 7)).astype(np.float32)
test_close(csr_matmul(to_csr(big), b), big @ b, eps=1e-5)
test_fail(lambda: csr_matmul(s, np.ones((2, 2))), contains="shapes (3, 3) @ (2, 2) do not match")

# %% [markdown]
# Break-even: a (512, 512) weight times a batch of 64 columns, CSR in NumPy against BLAS's dense
# product, at rising sparsity, one BLAS thread, alternating (`compare`). Bytes are exact; times are
# noisy on this shared machine.

# %%
W = rng.standard_normal((512, 512)).astype(np.float32)
B = rng.standard_normal((512, 64)).astype(np.float32)
levels = (0.5, 0.8, 0.9, 0.95, 0.98, 0.99, 0.995, 0.999)
dense_t, csr_t, sizes = [], [], []
with blas_threads(1):
    for sp_ in levels:
        Wp = W * magnitude_mask(np.abs(W), int(sp_ * W.size))
        A = to_csr(Wp)
        c = compare({'dense': lambda: Wp @ B, 'csr': lambda: csr_matmul(A, B)},
                    rounds=3, min_time=0.01)
        dense_t.append(c['dense'].median); csr_t.append(c['csr'].median); sizes.append(A.nbytes)
        print(f"sparsity {sp_:6.1%}: CSR {A.nbytes:>9,} bytes vs dense {Wp.nbytes:,}; "
              f"dense {dense_t[-1] * 1e6:7.0f} us, CSR {csr_t[-1] * 1e6:7.0f} us "
              f"({c.ratio('csr', 'dense'):.2f}x)"
              + (" UNSTABLE" if c['dense'].unstable or c['csr'].unstable else ""))
wins = np.array(csr_t) < np.array(dense_t)
even = next((s_ for j, s_ in enumerate(levels) if wins[j:].all()), None)  # here and all above
print(f"CSR matmul beats dense BLAS from sparsity {even:.1%} on" if even is not None else
      "CSR matmul does not stay ahead of dense BLAS at the sparsities tried on",
      f"{machine_info()['processor']}, 1 thread (medians of 3 alternating rounds)")
plt.figure(figsize=(5, 3))
plt.plot(levels, np.array(dense_t) * 1e6, 'o-', label='dense (BLAS)')
plt.plot(levels, np.array(csr_t) * 1e6, 'o-', label='CSR (NumPy)')
plt.xlabel('sparsity'); plt.ylabel('us per (512,512)@(512,64)'); plt.yscale('log'); plt.legend()
plt.show()

# %% [markdown]
# ## Knowledge distillation
#
# A small student learns from a large teacher's softened outputs (Hinton, Vinyals and Dean, 2015).
# With temperature $T$, $p^T = \mathrm{softmax}(z_t / T)$ and $q^T = \mathrm{softmax}(z_s / T)$, the
# loss is
#
# $$L = \alpha T^2\, \mathrm{KL}(p^T \,\|\, q^T) + (1 - \alpha)\, \mathrm{CE}(z_s, y),
# \qquad \mathrm{KL}(p \| q) = \sum_i p_i (\log p_i - \log q_i),$$
#
# averaged over the batch. The direction matters: the teacher's distribution is the reference $p$.
# The $T^2$ keeps the soft term's gradient on the scale of the hard one, since
# $\partial\,\mathrm{KL}/\partial z_s = (q^T - p^T)/T$. The loss is built from `log_softmax`,
# `softmax` and `cross_entropy`, so autograd differentiates it; the teacher's logits are detached
# (the teacher does not learn).

# %%
#| export
def distillation_loss(student_logits: Tensor,  # (N, C)
                      teacher_logits: Tensor,  # (N, C), treated as constants
                      targets,                 # (N,) class indices
                      T: float = 4.0,          # temperature, > 0
                      alpha: float = 0.9,      # weight of the soft (teacher) term, in [0, 1]
                     ) -> Tensor:
    "alpha T^2 KL(softmax(teacher/T) || softmax(student/T)) + (1-alpha) CE(student, targets)."
    if not T > 0: raise ValueError(f"distillation_loss: temperature T must be > 0, got {T}")
    if not 0 <= alpha <= 1:
        raise ValueError(f"distillation_loss: alpha must be in [0, 1], got {alpha}")
    if student_logits.shape != teacher_logits.shape or student_logits.ndim != 2:
        raise ValueError(f"distillation_loss: student {student_logits.shape} and "
                         f"teacher {teacher_logits.shape} "
                         "logits must both be (N, C)")
    ### BEGIN SOLUTION
    t = teacher_logits.detach() / T
    p, log_p = softmax(t, dim=1), log_softmax(t, dim=1)                  # (N, C) teacher
    log_q = log_softmax(student_logits / T, dim=1)                       # (N, C) student
    kl = (p * (log_p - log_q)).sum(axis=1).mean()
    return alpha * T * T * kl + (1 - alpha) * cross_entropy(student_logits, targets)
    ### END SOLUTION

# %% [markdown]
# Checks: with identical logits the soft term is zero; with `alpha=0` it is plain cross-entropy; by
# hand for one row; the gradient against finite differences in float64; bad arguments.

# %%
z = Tensor([[1., 2., 0.5]])
test_close(distillation_loss(z, z, [1], T=2., alpha=1.).item(), 0., eps=1e-7)
test_close(distillation_loss(z, z * 3, [1], alpha=0.).item(), cross_entropy(z, [1]).item(),
           eps=1e-7)
pt, ps = np.array([.7, .2, .1]), np.array([.2, .5, .3])              # softmax(log(p)) = p at T=1
kl = (pt * np.log(pt / ps)).sum()
by_hand = distillation_loss(Tensor([np.log(ps)]), Tensor([np.log(pt)]), [0], T=1., alpha=1.)
test_close(by_hand.item(), kl, eps=1e-6)
s64 = Tensor(np.random.default_rng(0).standard_normal((4, 5)), dtype=np.float64, requires_grad=True)
t64 = Tensor(np.random.default_rng(1).standard_normal((4, 5)) * 3, dtype=np.float64)
test_eq(gradcheck(lambda s: distillation_loss(s, t64, [0, 1, 2, 4], T=3., alpha=0.7), s64), True)
test_fail(lambda: distillation_loss(z, z, [1], T=0.), contains="temperature T must be > 0, got 0.0")
test_fail(lambda: distillation_loss(z, z, [1], alpha=2), contains="alpha must be in [0, 1], got 2")
test_fail(lambda: distillation_loss(z, Tensor([[1., 2.]]), [1]), contains="and teacher (1, 2)")

# %% [markdown]
# A student MLP learns from the CNN above and, separately, alone: same initial weights, same
# batches, same epochs. The teacher's logits on the training images are computed once (the teacher
# does not change), and each batch carries the indices of its images so the loss can look them up.
# On 359 test images one image is 0.28 points, so differences of a point or two are within the noise
# of this small set; the Fashion-MNIST milestone measures the same comparison on 10,000 test images.

# %%
HIDDEN, EPOCHS = 16, 20
base.eval()
with no_grad(): teacher_logits = base(Tensor(X_train)).numpy()          # (1437, 10)
rows = np.arange(len(X_train))
soft = softmax(Tensor(teacher_logits / 4.), dim=1).numpy()
train_acc = (teacher_logits.argmax(1) == y_train).mean()
print(f"teacher on its training images: accuracy {train_acc:.2%}; at T=4 it "
      f"gives the other 9 classes {1 - soft[rows, y_train].mean():.1%} of the probability on "
      "average")

def train_student(distill: bool, hidden=HIDDEN, epochs=EPOCHS, T=4., alpha=0.9, seed=1):
    "A 64-hidden-10 MLP trained with Adam, by distillation from `base` or by cross-entropy alone."
    manual_seed(seed)
    s = Sequential(Flatten(), Linear(64, hidden), ReLU(), Linear(hidden, 10))
    opt = Adam(s.parameters(), lr=3e-3)
    batches = Batches(X_train, rows, 64, shuffle=True, seed=seed)
    for _ in range(epochs):
        for xb, ib in batches:
            i = ib.numpy()
            out = s(xb)
            zt = Tensor(teacher_logits[i])
            if distill: loss = distillation_loss(out, zt, y_train[i], T, alpha)
            else: loss = cross_entropy(out, y_train[i])
            opt.zero_grad(); loss.backward(); opt.step()
    return s

alone, taught = train_student(False), train_student(True)
print(f"student 64-{HIDDEN}-10 ({params(alone):,} parameters), {EPOCHS} epochs: "
      f"alone {accuracy(alone):.2%}, "
      f"distilled from the CNN ({base_acc:.2%}) {accuracy(taught):.2%}")

# %% [markdown]
# ## Low-rank factorization
#
# A `Linear` with weight $W$ (out, in) costs $\text{out} \cdot \text{in}$ multiply-adds per row. Its
# SVD $W = U \Sigma V^T$ truncated to rank $r$ is the best rank-$r$ approximation (Eckart-Young),
# and it splits into two layers: `Linear(in, r, bias=False)` with weight $\Sigma_r^{1/2} V_r^T$ and
# `Linear(r, out)` with weight $U_r \Sigma_r^{1/2}$ and the old bias: $r(\text{in} + \text{out})$
# numbers instead of $\text{in} \cdot \text{out}$. The relative error is $\sqrt{\sum_{i > r}
# \sigma_i^2} / \|W\|_F$.

# %%
#| export
def low_rank(linear: Linear,  # the layer to factor
             rank: int,       # r, at most min(in_features, out_features)
            ) -> Sequential:
    "Sequential(Linear(in, r, bias=False), Linear(r, out)): the weight's rank-r truncated SVD."
    o, i = linear.weight.shape
    if not (isinstance(rank, (int, np.integer)) and 1 <= rank <= min(o, i)):
        raise ValueError(f"low_rank: rank must be an int in [1, {min(o, i)}], got {rank!r}")
    first, second = Linear(i, rank, bias=False), Linear(rank, o, bias=linear.bias is not None)
    ### BEGIN SOLUTION
    U, S, Vt = np.linalg.svd(linear.weight.data.astype(np.float64), full_matrices=False)
    root = np.sqrt(S[:rank])                                             # (r,)
    first.weight.data[...] = root[:, None] * Vt[:rank]                   # (r, in)
    second.weight.data[...] = U[:, :rank] * root                          # (out, r)
    ### END SOLUTION
    if linear.bias is not None: second.bias.data[...] = linear.bias.data
    return Sequential(first, second)

# %%
lin = Linear(6, 4)
full = low_rank(lin, 4)
x = randn(3, 6)
test_close(full(x).numpy(), lin(x).numpy(), eps=1e-5)                    # full rank: the same map
S = np.linalg.svd(lin.weight.numpy().astype(np.float64), compute_uv=False)
two = low_rank(lin, 2)
err = np.linalg.norm(two[1].weight.numpy() @ two[0].weight.numpy() - lin.weight.numpy())
test_close(err, np.sqrt((S[2:] ** 2).sum()), eps=1e-5)                   # Eckart-Young
test_fail(lambda: low_rank(lin, 5), contains="low_rank: rank must be an int in [1, 4], got 5")

# %% [markdown]
# On the trained CNN's first `Linear` (128 to 64): error, size and time (a batch of 1,024 rows, one
# BLAS thread) against rank, then the test accuracy of the model with that layer replaced.

# %%
fc = base[9]
x1k = Tensor(np.random.default_rng(0).standard_normal((1024, fc.in_features)).astype(np.float32))
Sfull = np.linalg.svd(fc.weight.numpy().astype(np.float64), compute_uv=False)
for r in (4, 8, 16, 32, 64):
    f2 = low_rank(fc, r)
    err = np.sqrt((Sfull[r:] ** 2).sum() / (Sfull ** 2).sum())
    swapped = Sequential(*[f2 if i == 9 else m for i, m in enumerate(base)])
    with blas_threads(1):
        c = compare({'full': fwd(fc, x1k), 'low rank': fwd(f2, x1k)}, rounds=5, min_time=0.01)
    print(f"rank {r:>2}: relative error {err:.3f}, {params(f2):>5,} vs {params(fc):,} parameters, "
          f"time {c.ratio('low rank', 'full'):.2f}x, "
          f"model accuracy {accuracy(swapped):.2%} ({base_acc:.2%})")

# %% [markdown]
# ## Deep compression: prune, then quantize
#
# Han et al. (2016) prune, then quantize, then encode. Here the 90% gradually pruned model has its
# masks made permanent (`remove`), then `quantize_model` turns it into an integer model: BatchNorm
# folded into the convolutions, int8 weights with a scale per output channel, int8 activations
# calibrated on training images. A zero weight quantizes to the integer 0 (the weight zero point is
# 0), so the sparsity survives. The bytes count every tensor of each model's `state_dict`: weights
# with under a third nonzero as CSR (int8 values, 16-bit column indices and row pointers),
# everything else as stored.

# %%
def stored_bytes(model) -> int:
    "Bytes of `model`'s state: sparse 2-D+ tensors as CSR with 16-bit indices, the rest as is."
    total = 0
    for name, t in model.state_dict().items():
        a = t.data if isinstance(t, Tensor) else np.asarray(t)
        sparse = a.ndim >= 2 and np.count_nonzero(a) < a.size / 3
        total += to_csr(a.reshape(a.shape[0], -1), np.uint16).nbytes if sparse else a.nbytes
    return total

fixed = copy.deepcopy(gradual)
for mod, name in prunable(fixed): remove(mod, name)
calibration = [Tensor(X_train[i:i + 256]) for i in range(0, 1024, 256)]
qmodel = quantize_model(fixed, calibration, per_channel=True)
int8_weights = [m.weight_int8.numpy() for m in qmodel if hasattr(m, 'weight_int8')]
zeros = sum(int((w == 0).sum()) for w in int8_weights) / sum(w.size for w in int8_weights)
dense_b, pruned_b, q_b = stored_bytes(base), stored_bytes(fixed), stored_bytes(qmodel)
print(f"dense float32 {dense_b:,} bytes; 90% pruned, CSR float32 {pruned_b:,} "
      f"({dense_b / pruned_b:.1f}x smaller); "
      f"pruned and INT8, CSR int8 {q_b:,} ({dense_b / q_b:.1f}x smaller)")
print(f"int8 weights that are 0: {zeros:.1%}; accuracy: dense {base_acc:.2%}, "
      f"pruned {accuracy(gradual):.2%}, "
      f"pruned and INT8 {accuracy(qmodel):.2%}")
test_eq(all(w.dtype == np.int8 for w in int8_weights), True)

# %% [markdown]
# ## Summary
#
# - Masks live beside the weights (`weight_orig`, `weight_mask`), a forward pre-hook applies them,
#   and they survive optimizer steps, `state_dict` and checkpoints; `remove` makes them permanent.
# - A masked model is no faster: its zeros are multiplied like any number. Channel pruning gives a
#   smaller dense model, whose FLOPs `count_flops` counts and whose time is measured above.
# - CSR saves bytes above the sparsity its index size sets; its NumPy product beats BLAS, if at all,
#   only at the extreme sparsities printed above.
# - Distillation is a loss like any other once it is written with framework ops; whether it helps a
#   given student is an empirical question, answered above for the digits and in the milestone for
#   Fashion-MNIST.
# - A truncated SVD trades a measured approximation error for fewer parameters.
# - Pruning and INT8 quantization compose: the zeros stay zeros, and the bytes printed above
#   multiply.
