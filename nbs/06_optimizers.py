# %%
#| default_exp core.optimizers

# %% [markdown]
# # Optimizers
#
# > Gradients into parameter updates: SGD with momentum, Adam, AdamW, schedules, gradient clipping.

# %% [markdown]
# A training step has three parts: a forward pass computes the loss, a backward pass fills each
# parameter's `.grad`, and an optimizer changes the parameters using those gradients. This module is
# the third part. It depends only on `Tensor`: a parameter is a `Tensor` with `requires_grad=True`,
# and its gradient is an ndarray of the parameter's shape in `.grad`, or None if the backward pass
# did not reach it. Here we set `.grad` by hand from gradients we know in closed form, so every
# update can be checked against arithmetic done on paper.
#
# The optimizers follow `torch.optim` in names, signatures and update equations, so what a learner
# knows of one carries over to the other. Updates change `p.data` in place, in the parameter's own
# dtype, with as few temporary arrays as the formulas allow: they run once per training step on
# every parameter. The cells under each exercise test it at once.

# %%
#| export
import math

import numpy as np
from fastcore.basics import patch

from tinytorch.core.tensor import Tensor

# %%
#| hide
import tracemalloc
from io import BytesIO

import matplotlib.pyplot as plt
from fastcore.test import test_eq, test_fail, test_close

# %% [markdown]
# ## The optimizer base class
#
# An `Optimizer` holds three things: the list of parameters, the hyperparameters (learning rate,
# momentum, ...), and a state dictionary per parameter (a momentum buffer, Adam's running averages).
# Parameters are referred to by their position in the list, which is also how `state_dict` names
# them.
#
# The constructor takes any iterable of tensors, including a generator such as a model's
# `parameters()`, and turns it into a list at once, because a generator can be read only once. It
# refuses what would otherwise fail later and far from the cause: an empty list, an element that is
# not a tensor requiring a gradient, and a tensor listed twice (it would be updated twice per step).
# Each hyperparameter becomes an attribute, so a learning-rate schedule can set `optimizer.lr`.

# %%
#| export
class Optimizer:
    """Base class: the parameters, their hyperparameters and per-parameter state, as
    `torch.optim.Optimizer`."""
    # names of the per-parameter state entries that are arrays of the parameter's shape
    _state_arrays = ()

    def __init__(self,
                 params,          # iterable of Tensors with requires_grad=True; a generator is fine
                 defaults: dict,  # hyperparameter name -> value; each an attribute (`opt.lr`)
                ):
        name = type(self).__name__
        if isinstance(params, Tensor):
            raise TypeError(f"{name}: params must be an iterable of Tensors, got one Tensor; "
                            f"wrap it in a list")
        self.params, seen = list(params), {}
        if not self.params: raise ValueError(f"{name}: got an empty list of parameters")
        for i, p in enumerate(self.params):
            if not isinstance(p, Tensor):
                raise TypeError(f"{name}: parameter {i} has type {type(p).__name__}, not Tensor")
            if not p.requires_grad:
                raise ValueError(f"{name}: parameter {i} (shape {p.shape}) does not require grad")
            if id(p) in seen:
                raise ValueError(f"{name}: parameters {seen[id(p)]} and {i} are the same tensor")
            seen[id(p)] = i
        self.defaults = dict(defaults)
        for k, v in self.defaults.items(): setattr(self, k, v)
        self._validate()
        # parameter index -> dict of its state, created at the parameter's first update
        self.state = {}

    def _validate(self):
        "Check the hyperparameters; subclasses raise a ValueError naming the bad one."

# %%
w = Tensor([1., 2.], requires_grad=True)
opt = Optimizer((p for p in [w]), dict(lr=0.1))      # a generator is read once, into a list
test_eq(opt.params, [w])
test_eq((opt.lr, opt.defaults, opt.state), (0.1, {'lr': 0.1}, {}))
test_fail(lambda: Optimizer([], {}), contains="empty list")
test_fail(lambda: Optimizer(w, {}), contains="got one Tensor")
test_fail(lambda: Optimizer([w, np.ones(2)], {}),
          contains="parameter 1 has type ndarray, not Tensor")
test_fail(lambda: Optimizer([w, Tensor([1.])], {}),
          contains="parameter 1 (shape (1,)) does not require grad")
test_fail(lambda: Optimizer([w, w], {}), contains="parameters 0 and 1 are the same tensor")

# %% [markdown]
# Every optimizer walks the same list: the parameters whose gradient is set. As in PyTorch, a
# parameter whose `.grad` is None is skipped, neither moved nor decayed, and its state is left as it
# was. The walk also checks each gradient's shape, because a gradient of the wrong shape would
# otherwise broadcast silently into the update.
#
# `zero_grad` clears the gradients before the next backward pass. Setting them to None (PyTorch's
# default) frees the arrays; `set_to_none=False` fills them with zeros instead.

# %%
#| export
@patch
def _grads(self: Optimizer):
    """Yield `(index, parameter, gradient)` for every parameter whose `.grad` is set, checking the
    gradient's shape."""
    for i, p in enumerate(self.params):
        g = p.grad
        if g is None: continue
        if g.shape != p.data.shape:
            raise ValueError(f"{type(self).__name__}: parameter {i} has shape {p.shape} but its "
                             f"grad has shape {g.shape}")
        yield i, p, g

@patch
def zero_grad(self: Optimizer, set_to_none: bool = True):
    "Clear every gradient: set `.grad` to None, or fill it with zeros if `set_to_none` is False."
    for p in self.params:
        if set_to_none: p.grad = None
        elif p.grad is not None: p.grad.fill(0)

# %%
w, b = Tensor([1., 2.], requires_grad=True), Tensor(0., requires_grad=True)
opt = Optimizer([w, b], dict(lr=0.1))
w.grad = np.array([3., 4.], np.float32)
test_eq([i for i, p, g in opt._grads()], [0])              # b has no gradient: skipped
opt.zero_grad(set_to_none=False)
test_eq((w.grad, b.grad), ([0., 0.], None))
opt.zero_grad()
test_eq(w.grad, None)
w.grad = np.ones(3, np.float32)
test_fail(lambda: list(opt._grads()),
          contains="parameter 0 has shape (2,) but its grad has shape (3,)")

# %% [markdown]
# `step` is where the optimizers differ; the base class only says that it has no rule. The `repr`
# lists the hyperparameters, so printing an optimizer shows how it is configured.

# %%
#| export
@patch
def step(self: Optimizer):
    "Update every parameter that has a gradient; each optimizer defines its own rule."
    raise NotImplementedError(f"{type(self).__name__}.step: the base class has no update rule")

@patch
def __repr__(self: Optimizer) -> str:
    "The class name, the number of parameters and the hyperparameters."
    hp = ", ".join(f"{k}={getattr(self, k)}" for k in self.defaults)
    return f"{type(self).__name__}({len(self.params)} parameters, {hp})"

# %%
test_eq(repr(opt), "Optimizer(2 parameters, lr=0.1)")
test_fail(opt.step, contains="no update rule")

# %% [markdown]
# ## Stochastic gradient descent
#
# Plain gradient descent moves each parameter against its gradient:
# $\theta \leftarrow \theta - \gamma g$, with learning rate $\gamma$. `torch.optim.SGD` adds three
# options, applied in this order at step $t$:
#
# 1. weight decay $\lambda$ (an L2 penalty $\tfrac{\lambda}{2}\lVert\theta\rVert^2$ in the loss):
#    $g \leftarrow g + \lambda\theta$;
# 2. momentum $\mu$, a running sum of past gradients: $b_t = \mu b_{t-1} + (1-\tau) g$, with
#    $b_1 = g$ and dampening $\tau$ (0 by default); then $g \leftarrow b_t$;
# 3. Nesterov momentum, which instead takes $g \leftarrow g + \mu b_t$: the step looks ahead along
#    the buffer.
#
# Momentum helps where the loss is a narrow valley: gradients across the valley alternate in sign
# and cancel in the buffer, gradients along it add up. With a constant gradient, the buffer
# approaches $g/(1-\mu)$, a step $1/(1-\mu)$ times larger. Like PyTorch, we scale the buffer by
# $\gamma$ at use, not at accumulation, so changing the learning rate mid-training takes effect at
# once.
#
# Invalid hyperparameters are refused when the optimizer is built: negative values, and Nesterov
# momentum without momentum or with dampening, which PyTorch also refuses.

# %%
#| export
def _check_nonneg(op: str, **values):
    "Raise a ValueError naming `op` and the value if any of `values` is negative or NaN."
    for name, v in values.items():
        if not v >= 0: raise ValueError(f"{op}: invalid {name}={v}, expected {name} >= 0")

class SGD(Optimizer):
    """Stochastic gradient descent with optional momentum, Nesterov momentum and weight decay, as
    `torch.optim.SGD`."""
    _state_arrays = ('momentum_buffer',)

    def __init__(self, params,
                 lr: float,                # step size γ
                 momentum: float = 0.,     # μ; 0 turns momentum off
                 dampening: float = 0.,    # τ: the new gradient enters the buffer scaled by 1 - τ
                 weight_decay: float = 0., # λ: adds λθ to the gradient (an L2 penalty)
                 nesterov: bool = False,   # step along g + μb instead of b
                ):
        super().__init__(params, dict(lr=lr, momentum=momentum, dampening=dampening,
                                      weight_decay=weight_decay, nesterov=nesterov))

    def _validate(self):
        _check_nonneg('SGD', lr=self.lr, momentum=self.momentum, weight_decay=self.weight_decay)
        if self.nesterov and (self.momentum <= 0 or self.dampening != 0):
            raise ValueError(f"SGD: nesterov=True needs momentum > 0 and dampening = 0, "
                             f"got momentum={self.momentum}, dampening={self.dampening}")

# %%
w = Tensor([1.], requires_grad=True)
test_eq(SGD([w], lr=0.1, momentum=0.9).momentum, 0.9)
test_fail(lambda: SGD([w], lr=-0.1), contains="SGD: invalid lr=-0.1, expected lr >= 0")
test_fail(lambda: SGD([w], lr=float('nan')), contains="invalid lr=nan")
test_fail(lambda: SGD([w], lr=0.1, weight_decay=-1), contains="invalid weight_decay=-1")
test_fail(lambda: SGD([w], lr=0.1, nesterov=True), contains="nesterov=True needs momentum > 0")
test_fail(lambda: SGD([w], lr=0.1, momentum=0.9, dampening=0.1, nesterov=True),
          contains="dampening=0.1")

# %% [markdown]
# The update. Weight decay makes a new array rather than adding into `p.grad`, so the gradient a
# caller set is not changed by the step. The momentum buffer starts as a copy of the first gradient,
# in the parameter's dtype, and is then updated in place. The final subtraction writes into `p.data`
# itself: the parameter keeps its array, its dtype, and any other reference to that array sees the
# new values.

# %%
#| export
@patch
def step(self: SGD):
    """Update every parameter that has a gradient: θ ← θ − γ·g, with weight decay and momentum
    applied to g first."""
    ### BEGIN SOLUTION
    lr, mu, tau, wd = self.lr, self.momentum, self.dampening, self.weight_decay
    for i, p, g in self._grads():
        # a new array: p.grad stays as the caller set it
        if wd != 0: g = g + wd * p.data
        if mu != 0:
            st = self.state.setdefault(i, {})
            buf = st.get('momentum_buffer')
            # b₁ = g, a copy
            if buf is None: buf = st['momentum_buffer'] = np.array(g, dtype=p.data.dtype)
            else:
                buf *= mu                                 # b ← μb + (1 − τ)g, in place
                buf += g if tau == 0 else (1 - tau) * g
            g = g + mu * buf if self.nesterov else buf
        p.data -= lr * g
    ### END SOLUTION

# %% [markdown]
# Two steps of momentum on $f(\theta) = \theta^2$ (gradient $2\theta$) from $\theta = 1$, with
# $\gamma = 0.1$ and $\mu = 0.9$, worked by hand in the comments. The second step is larger than the
# first although the gradient shrank: the buffer remembers the first gradient.

# %%
w = Tensor([1.], requires_grad=True)
opt = SGD([w], lr=0.1, momentum=0.9)
data = w.data
w.grad = 2 * w.data; opt.step()     # g = 2,   b = 2,             θ = 1 - 0.1·2     = 0.8
test_close(w.data, [0.8], eps=1e-6) # float32 keeps about 7 digits of numbers near 1
w.grad = 2 * w.data; opt.step()     # g = 1.6, b = 0.9·2 + 1.6 = 3.4, θ = 0.8 - 0.1·3.4 = 0.46
test_close(w.data, [0.46], eps=1e-6)
test_close(opt.state[0]['momentum_buffer'], [3.4], eps=1e-6)
test_eq(w.data is data, True)       # updated in place
test_eq((w.dtype, opt.state[0]['momentum_buffer'].dtype), (np.float32, np.float32))

# %% [markdown]
# Nesterov momentum on the same problem, then weight decay alone, then a parameter without a
# gradient.

# %%
w = Tensor([1.], requires_grad=True)
opt = SGD([w], lr=0.1, momentum=0.9, nesterov=True)
# b = 2,    g = 2 + 0.9·2 = 3.8,               θ = 1 - 0.38 = 0.62
w.grad = 2 * w.data; opt.step()
# g = 1.24, b = 0.9·2 + 1.24 = 3.04, g = 1.24 + 0.9·3.04 = 3.976, θ = 0.2224
w.grad = 2 * w.data; opt.step()
test_close(w.data, [0.2224], eps=1e-6)

w = Tensor([1., -2.], requires_grad=True)
grad = np.zeros(2, np.float32)
w.grad = grad
SGD([w], lr=0.5, weight_decay=0.1).step()  # g = 0 + 0.1·θ, θ ← θ(1 - 0.5·0.1) = 0.95·θ
test_close(w.data, [0.95, -1.9], eps=1e-6)
test_eq(grad, [0., 0.])                    # the caller's gradient array is unchanged

w, b = Tensor([1.], requires_grad=True), Tensor([5.], requires_grad=True)
opt = SGD([w, b], lr=0.1, momentum=0.9, weight_decay=0.1)
w.grad = np.ones(1, np.float32); opt.step()
test_eq(b.data, [5.])                      # no gradient: not moved, not decayed, no state
test_eq(list(opt.state), [0])

# %% [markdown]
# ## Adam
#
# Adam (Kingma and Ba, 2015) keeps two running averages per parameter: of the gradient, $m$, and of
# its elementwise square, $v$, and divides one by the square root of the other. At step $t$
# (`torch.optim.Adam`):
#
# $$m_t = \beta_1 m_{t-1} + (1-\beta_1) g, \qquad v_t = \beta_2 v_{t-1} + (1-\beta_2) g^2,$$
# $$\hat m_t = \frac{m_t}{1-\beta_1^t}, \qquad \hat v_t = \frac{v_t}{1-\beta_2^t}, \qquad
# \theta \leftarrow \theta - \gamma \frac{\hat m_t}{\sqrt{\hat v_t} + \epsilon}.$$
#
# $m$ and $v$ start at zero, so for small $t$ they are biased towards zero: $m_1 = (1-\beta_1) g$.
# Dividing by $1-\beta^t$ removes that bias exactly; for a constant gradient, $\hat m_t = g$ and
# $\hat v_t = g^2$ at every step. Because the update divides $\hat m$ by $\sqrt{\hat v}$, it does
# not change when the loss is multiplied by a constant (up to $\epsilon$), and each weight moves by
# about $\gamma$ per step whatever the size of its gradient.
#
# `weight_decay` $\lambda$ in `torch.optim.Adam` adds $\lambda\theta$ to the gradient before the
# averages, like SGD's. With `decoupled_weight_decay=True`, which is what `AdamW` sets, the
# parameter is instead shrunk directly, $\theta \leftarrow \theta - \gamma\lambda\theta$, and the
# averages see only the loss's gradient. The state per parameter is its own step count $t$ (a
# parameter skipped at some steps counts fewer) and two arrays of its shape, `exp_avg` ($m$) and
# `exp_avg_sq` ($v$).

# %%
#| export
class Adam(Optimizer):
    """Adam with bias-corrected moment estimates, as `torch.optim.Adam`; `weight_decay` adds λθ to
    the gradient."""
    _state_arrays = ('exp_avg', 'exp_avg_sq')

    def __init__(self, params,
                 lr: float = 1e-3,            # step size γ
                 betas: tuple = (0.9, 0.999), # (β1, β2): decay rates of the means of g and g²
                 eps: float = 1e-8,           # ε, added to √v̂ so that the division stays finite
                 weight_decay: float = 0.,    # λ: L2 term in the gradient, or decoupled decay
                 *, decoupled_weight_decay: bool = False, # shrink θ by γλθ directly, as AdamW
                ):
        super().__init__(params, dict(lr=lr, betas=tuple(betas), eps=eps, weight_decay=weight_decay,
                                      decoupled_weight_decay=decoupled_weight_decay))

    def _validate(self):
        name = type(self).__name__
        _check_nonneg(name, lr=self.lr, eps=self.eps, weight_decay=self.weight_decay)
        if len(self.betas) != 2 or not all(0 <= b < 1 for b in self.betas):
            raise ValueError(f"{name}: invalid betas={self.betas}, expected two values in [0, 1)")

# %%
w = Tensor([1.], requires_grad=True)
test_eq(Adam([w]).betas, (0.9, 0.999))
test_eq(Adam([w], betas=[0.8, 0.99]).betas, (0.8, 0.99))
test_fail(lambda: Adam([w], lr=-1e-3), contains="Adam: invalid lr=-0.001")
test_fail(lambda: Adam([w], betas=(0.9, 1.0)),
          contains="invalid betas=(0.9, 1.0), expected two values in [0, 1)")
test_fail(lambda: Adam([w], betas=(-0.1, 0.9)), contains="invalid betas")
test_fail(lambda: Adam([w], betas=(0.9,)), contains="invalid betas")
test_fail(lambda: Adam([w], eps=-1.), contains="invalid eps=-1.0")

# %% [markdown]
# The update, as the formulas read. The state of parameter `i` is `self.state[i]`, a dict with
# PyTorch's keys: `step` (the count $t$), `exp_avg` ($m$) and `exp_avg_sq` ($v$), created at the
# parameter's first update. A later section writes the same update with less temporary memory.

# %%
#| export
@patch
def _begin_update(self: Adam, i: int, p: Tensor, g: np.ndarray) -> tuple:
    "Weight decay, then parameter i's state with its step count advanced: (gradient to use, state)."
    lr, wd = self.lr, self.weight_decay
    if wd != 0 and self.decoupled_weight_decay: p.data *= 1 - lr * wd      # AdamW: shrink θ itself
    elif wd != 0: g = g + wd * p.data                                       # Adam: L2 term in g
    st = self.state.get(i)
    if st is None:
        zeros = lambda: np.zeros_like(p.data)
        st = self.state[i] = dict(step=0, exp_avg=zeros(), exp_avg_sq=zeros())
    st['step'] += 1
    return g, st

@patch
def step(self: Adam):
    """One Adam update of each parameter with a gradient; `self.state[i]` holds `step`, `exp_avg`
    (m), `exp_avg_sq` (v)."""
    (b1, b2), lr, eps = self.betas, self.lr, self.eps
    for i, p, g in self._grads():
        g, st = self._begin_update(i, p, g)                 # weight decay; state; st['step'] += 1
        # Update st['exp_avg'] and st['exp_avg_sq'], then subtract γ·m̂ / (√v̂ + ε) from p.data in
        # place.
        ### BEGIN SOLUTION
        t = st['step']
        m = st['exp_avg'] = b1 * st['exp_avg'] + (1 - b1) * g           # m ← β1·m + (1 − β1)·g
        v = st['exp_avg_sq'] = b2 * st['exp_avg_sq'] + (1 - b2) * g * g  # v ← β2·v + (1 − β2)·g²
        p.data -= lr * (m / (1 - b1 ** t)) / (np.sqrt(v / (1 - b2 ** t)) + eps)
        ### END SOLUTION

# %% [markdown]
# At the first step $\hat m_1 = g$ and $\hat v_1 = g^2$, so the update is
# $\gamma\, g/(|g| + \epsilon)$: every weight moves by $\gamma$ against the sign of its gradient,
# short by a relative $\epsilon/|g|$. Below, the loss $f(\theta) = \tfrac12\sum_i c_i\theta_i^2$ has
# curvatures $c_i$ three orders of magnitude apart, and each weight still moves by $\gamma = 0.1$.
# Gradient descent would move them by $\gamma c_i \theta_i$, also three orders of magnitude apart.

# %%
c = np.array([0.5, 2., 1e-3], np.float32)
w = Tensor([1., -1., 1.], requires_grad=True)
opt = Adam([w], lr=0.1)
w.grad = c * w.data                  # ∇f = c·θ = [0.5, -2, 0.001]
opt.step()
# off by γε/|g| ≤ 0.1·1e-8/1e-3 = 1e-6, plus float32 rounding near 1
test_close(w.data, [0.9, -0.9, 0.9], eps=2e-6)
test_eq(opt.state[0]['step'], 1)
test_eq((opt.state[0]['exp_avg'].dtype, opt.state[0]['exp_avg_sq'].dtype), (np.float32, np.float32))
adam_step_plain = Adam.step   # kept, to compare with the in-place update written later

# %% [markdown]
# With a constant gradient the bias correction makes every step, not only the first, move each
# weight by $\gamma$. Without it, the first step would move each weight by
# $\gamma(1-\beta_1)/\sqrt{1-\beta_2}$; the cell prints that factor for the default betas. A
# parameter that has no gradient at some step does not advance its own step count.

# %%
w, b = Tensor([0., 0.], requires_grad=True), Tensor([0.], requires_grad=True)
opt = Adam([w, b], lr=0.1)
(b1, b2) = opt.betas
print(f"first step without bias correction: {(1 - b1) / math.sqrt(1 - b2):.2f} x lr")
for t in range(3):
    w.grad = np.array([3., -0.01], np.float32)
    b.grad = np.ones(1, np.float32) if t == 2 else None
    opt.step()
# three steps of exactly γ each, up to ε/|g| = 1e-6 relative
test_close(w.data, [-0.3, 0.3], eps=1e-6)
test_eq((opt.state[0]['step'], opt.state[1]['step']), (3, 1))
test_close(b.data, [-0.1], eps=1e-6)             # b's first step is a first step: it moves by γ too

# %% [markdown]
# ## AdamW: decoupled weight decay
#
# With L2 weight decay inside Adam, the term $\lambda\theta$ goes through the same division by
# $\sqrt{\hat v}$ as the gradient. A weight whose loss gradient is large is barely decayed; a weight
# whose loss gradient is zero is decayed by a full $\gamma$ per step, however small $\lambda$ is.
# Loshchilov and Hutter (2019) decouple the two: AdamW shrinks every weight by the same factor
# $1 - \gamma\lambda$ and lets the adaptive step see only the loss. `torch.optim.AdamW` is `Adam`
# with `decoupled_weight_decay=True` and a default $\lambda$ of 0.01; so is ours.

# %%
#| export
class AdamW(Adam):
    "Adam with decoupled weight decay θ ← θ − γλθ, as `torch.optim.AdamW`."
    def __init__(self, params,
                 lr: float = 1e-3,            # step size γ
                 betas: tuple = (0.9, 0.999), # (β1, β2)
                 eps: float = 1e-8,           # ε
                 weight_decay: float = 1e-2,  # λ: each step multiplies θ by 1 - γλ
                ):
        super().__init__(params, lr, betas, eps, weight_decay, decoupled_weight_decay=True)

    def _validate(self):
        super()._validate()
        if not self.decoupled_weight_decay:
            raise ValueError("AdamW: decoupled_weight_decay must be True (an Adam state dict?)")

# %% [markdown]
# The difference on a weight whose loss gradient is zero: Adam's L2 term $\lambda\theta = 0.02$ is
# normalised to a full step of $\gamma$, AdamW shrinks the weight by $\gamma\lambda\theta$ and takes
# no adaptive step.

# %%
w1, w2 = Tensor([2.], requires_grad=True), Tensor([2.], requires_grad=True)
# the loss does not depend on w
w1.grad, w2.grad = np.zeros(1, np.float32), np.zeros(1, np.float32)
Adam([w1], lr=0.1, weight_decay=0.01).step()    # g = 0.01·2 = 0.02, θ ← 2 - 0.1·0.02/(0.02 + ε)
# θ ← 2·(1 - 0.1·0.01) = 1.998, then m = 0: no adaptive step
AdamW([w2], lr=0.1, weight_decay=0.01).step()
test_close(w1.data, [1.9], eps=1e-6)            # γε/|g| = 5e-8, plus float32 rounding near 2
test_close(w2.data, [1.998], eps=1e-6)
test_eq(AdamW([w2]).weight_decay, 0.01)

# %% [markdown]
# ## Saving and restoring the state
#
# Resuming a training run needs the optimizer's state as well as the parameters: without the
# momentum buffers and Adam's averages (and step counts, which drive the bias correction), the first
# steps after a restart differ from an uninterrupted run. `state_dict` returns that state in
# PyTorch's layout: `'state'` maps a parameter's index to its entries, and `'param_groups'` holds
# one dictionary of hyperparameters plus the list of parameter indices. Everything in it is a
# number, a tuple, a bool or an ndarray, so the training module can write it with `np.savez` and
# read it back without pickle. The arrays are copies, so later steps do not change a saved state
# dictionary.
#
# `load_state_dict` accepts the same dictionary, or one whose numbers and tuples came back from
# `np.load` as 0-d and 1-d arrays. It checks that the state fits this optimizer before it changes
# anything: the number of parameters, the hyperparameter names, and the shape of every state array,
# naming the parameter and the shapes when they disagree, and the hyperparameters' values with the
# constructor's checks. Loaded arrays are copied into the parameter's dtype.

# %%
#| export
@patch
def state_dict(self: Optimizer) -> dict:
    """Hyperparameters and per-parameter state, as plain numbers and copied ndarrays keyed by
    parameter index."""
    state = {i: {k: v.copy() if isinstance(v, np.ndarray) else v for k, v in st.items()} for i,
             st in self.state.items()}
    group = {k: getattr(self, k) for k in self.defaults} | {'params': list(range(len(self.params)))}
    return {'state': state, 'param_groups': [group]}

def _plain(v, like):
    "`v` as a Python value of the kind `like` is: 0-d arrays become numbers, 1-d arrays tuples."
    v = np.asarray(v).tolist()
    return tuple(v) if isinstance(like, tuple) else v

# %% [markdown]
# Loading builds the new state aside and installs it only once every check has passed, so a state
# dictionary that does not fit leaves the optimizer as it was.

# %%
#| export
@patch
def load_state_dict(self: Optimizer, state_dict: dict):
    """Restore hyperparameters and state saved by `state_dict`, after checking that they fit these
    parameters."""
    name, n = f"{type(self).__name__}.load_state_dict", len(self.params)
    groups = state_dict['param_groups']
    if len(groups) != 1: raise ValueError(f"{name}: expected 1 parameter group, got {len(groups)}")
    group = groups[0]
    if len(group['params']) != n:
        raise ValueError(f"{name}: state dict has {len(group['params'])} parameters, "
                         f"optimizer has {n}")
    if set(group) - {'params'} != set(self.defaults):
        raise ValueError(f"{name}: hyperparameters {sorted(set(group) - {'params'})} differ from "
                         f"{sorted(self.defaults)}")
    state = {}
    for i, st in state_dict['state'].items():
        i = int(i)
        if not 0 <= i < n:
            raise ValueError(f"{name}: state for parameter {i}, optimizer has {n} parameters")
        p = self.params[i]
        for k in self._state_arrays:
            if k not in st:
                raise ValueError(f"{name}: state of parameter {i} has entries "
                                 f"{sorted(st)}, no '{k}'")
            if np.shape(st[k]) != p.shape:
                raise ValueError(f"{name}: parameter {i} has shape {p.shape}, its '{k}' has shape "
                                 f"{np.shape(st[k])}")
        state[i] = {k: np.array(v, dtype=p.dtype) if k in self._state_arrays else _plain(v, 0)
                    for k, v in st.items()}
    old = {k: getattr(self, k) for k in self.defaults}
    self.__dict__.update({k: _plain(group[k], like) for k, like in self.defaults.items()})
    try: self._validate()
    except ValueError: self.__dict__.update(old); raise  # leave the optimizer as it was
    self.state = state

# %% [markdown]
# A round trip through `np.savez`, flattened by hand into names such as `state/0/exp_avg`: the
# restored optimizer continues exactly as the original does.

# %%
def make_params(seed: int) -> list:
    "Two float32 parameters drawn from a seeded generator."
    rng = np.random.default_rng(seed)
    return [Tensor(rng.standard_normal((3, 2), dtype=np.float32), requires_grad=True),
            Tensor(rng.standard_normal(2, dtype=np.float32), requires_grad=True)]

def quadratic_grads(params):
    "Set each gradient to that of f(θ) = ½ Σ θ², which is θ itself."
    for p in params: p.grad = p.data.copy()

ps = make_params(0)
opt = AdamW(ps, lr=0.1)
for _ in range(3): quadratic_grads(ps); opt.step()
sd = opt.state_dict()
flat = {f"hp/{k}": np.asarray(v) for k, v in sd['param_groups'][0].items()}
flat |= {f"state/{i}/{k}": np.asarray(v) for i, st in sd['state'].items() for k, v in st.items()}
buf = BytesIO(); np.savez(buf, **flat); buf.seek(0)
with np.load(buf, allow_pickle=False) as z: loaded = {k: z[k] for k in z.files}

group, state = {}, {}
for key, v in loaded.items():
    kind, *rest = key.split('/')
    if kind == 'hp': group[rest[0]] = v
    else: state.setdefault(int(rest[0]), {})[rest[1]] = v
ps2 = [Tensor(p.data.copy(), requires_grad=True) for p in ps]
# different lr: load_state_dict restores 0.1
opt2 = AdamW(ps2, lr=0.5)
opt2.load_state_dict({'state': state, 'param_groups': [group]})
test_eq((opt2.lr, opt2.betas, opt2.state[0]['step']), (0.1, (0.9, 0.999), 3))
for _ in range(3):
    quadratic_grads(ps); opt.step()
    quadratic_grads(ps2); opt2.step()
test_eq([p.data for p in ps2], [p.data for p in ps])     # the same trajectory, bit for bit
# the saved copy did not move on with the optimizer
test_eq(sd['state'][0]['step'], 3)

# %% [markdown]
# State that does not fit is refused with the index and the shapes.

# %%
sd = opt.state_dict()
test_fail(lambda: AdamW(make_params(0)[:1]).load_state_dict(sd),
          contains="state dict has 2 parameters, optimizer has 1")
test_fail(lambda: SGD(make_params(0), lr=0.1).load_state_dict(sd), contains="hyperparameters")
adam_sd = Adam(make_params(0)).state_dict()
test_fail(lambda: AdamW(make_params(0)).load_state_dict(adam_sd),
          contains="decoupled_weight_decay must be True")
swapped = [Tensor(np.zeros((2, 3), np.float32), requires_grad=True),
           Tensor(np.zeros(2, np.float32), requires_grad=True)]
test_fail(lambda: AdamW(swapped).load_state_dict(sd),
          contains="parameter 0 has shape (2, 3), its 'exp_avg' has shape (3, 2)")
bad = {'state': {}, 'param_groups': [sd['param_groups'][0] | {'lr': -1.}]}
opt3 = AdamW(make_params(0), lr=0.1)
test_fail(lambda: opt3.load_state_dict(bad), contains="invalid lr=-1.0")
test_eq(opt3.lr, 0.1)                                     # unchanged by the failed load

# %% [markdown]
# ## What optimizer state costs
#
# Optimizer state is memory on top of the parameters and their gradients. SGD with momentum keeps
# one array per parameter, Adam two. Below, the parameters of a multilayer perceptron with layers of
# 784, 256, 128 and 10 units (a weight matrix and a bias per layer), in float32; the state bytes are
# summed over the arrays the optimizers really hold after one step.

# %%
def mlp_params(sizes=(784, 256, 128, 10), seed=0) -> list:
    "Weight and bias Tensors for an MLP with the given layer sizes, float32, requiring grad."
    rng = np.random.default_rng(seed)
    return [Tensor(rng.standard_normal(shape, dtype=np.float32) * 0.01, requires_grad=True)
            for n_in, n_out in zip(sizes[:-1], sizes[1:]) for shape in ((n_in, n_out), (n_out,))]

def state_nbytes(opt: Optimizer) -> int:
    "Bytes of the arrays in an optimizer's per-parameter state."
    arrays = [v for st in opt.state.values() for v in st.values() if isinstance(v, np.ndarray)]
    return sum(v.nbytes for v in arrays)

ps = mlp_params()
n_params, param_bytes = sum(p.size for p in ps), sum(p.nbytes for p in ps)
print(f"shapes {[p.shape for p in ps]}")
print(f"parameters: {n_params:,} float32 values, {param_bytes:,} bytes")
for p in ps: p.grad = np.ones_like(p.data)
for label, opt, copies in (('SGD', SGD(ps, lr=0.01), 0),
                           ('SGD, momentum', SGD(ps, lr=0.01, momentum=0.9), 1),
                           ('Adam', Adam(ps), 2)):
    opt.step()
    held = 2 * param_bytes + state_nbytes(opt)      # parameters, gradients, optimizer state
    print(f"{label:<14} state {state_nbytes(opt):>9,} bytes = "
          f"{state_nbytes(opt) / param_bytes:.0f}x the parameters; "
          f"with parameters and gradients {held / n_params:.0f} bytes per parameter")
    # state arrays have the parameters' shapes and dtype
    test_eq(state_nbytes(opt), copies * param_bytes)

# %% [markdown]
# Adam's state is twice the size of the model, and with the gradients, training with Adam holds four
# times the memory of the parameters alone. This is why large models are sometimes trained with
# optimizers that keep less state, or with the state in lower precision.
#
# The update itself should allocate little. `tracemalloc` sees NumPy's allocations, so it can report
# the peak of temporary memory during one step, once the state exists. The largest parameter bounds
# what a single scratch array costs.

# %%
largest = max(p.nbytes for p in ps)
tracemalloc.start()
for label, opt in (('SGD', SGD(ps, lr=0.01)), ('SGD, momentum', SGD(ps, lr=0.01, momentum=0.9)),
                   ('Adam', Adam(ps)), ('AdamW', AdamW(ps))):
    opt.step()                                   # creates the state
    tracemalloc.reset_peak(); base = tracemalloc.get_traced_memory()[0]
    opt.step()
    peak = tracemalloc.get_traced_memory()[1] - base
    print(f"{label:<14} peak temporary memory {peak:>9,} bytes = {peak / largest:.2f}x the "
          f"largest parameter "
          f"({largest:,} bytes)")
    if label.startswith('SGD'): test_eq(peak < 1.1 * largest, True)  # one temporary array at a time
tracemalloc.stop()

# %% [markdown]
# SGD's update allocates about one array the size of the largest parameter (the product $\gamma g$).
# Adam's, written as the formulas read, allocates one array per operator: $\beta_1 m$,
# $(1-\beta_1) g$, their sum, and so on, several arrays the size of the largest parameter at once.
# The same arithmetic can run with one scratch array per parameter, `tmp`, changing $m$, $v$ and
# $\theta$ in place: NumPy's `out=` argument writes a result into an existing array, and `*=` or
# `+=` on an array writes into it. The bias corrections fold into two scalars, $\sqrt{1-\beta_2^t}$
# and $\gamma/(1-\beta_1^t)$: the same arithmetic in a cheaper order, so the results agree to
# float32 rounding. The exercise below is that update for one parameter; the cell then makes
# `Adam.step` (and so `AdamW`'s) call it instead of the formulas above.

# %%
#| export
def _adam_update_(p: np.ndarray,  # the parameter's data, updated in place
                  g: np.ndarray,  # its gradient
                  m: np.ndarray,  # exp_avg, updated in place
                  v: np.ndarray,  # exp_avg_sq, updated in place
                  t: int, lr: float, b1: float, b2: float, eps: float):
    "Adam's update of `m`, `v` and `p` in place, with one scratch array the size of `p`."
    ### BEGIN SOLUTION
    # a copy: the one scratch array of this update
    tmp = np.array(g, dtype=p.dtype)
    tmp *= 1 - b1
    m *= b1; m += tmp                                       # m ← β1·m + (1 − β1)·g
    np.multiply(g, g, out=tmp); tmp *= 1 - b2
    v *= b2; v += tmp                                       # v ← β2·v + (1 − β2)·g²
    np.sqrt(v, out=tmp); tmp /= math.sqrt(1 - b2 ** t); tmp += eps   # √v̂ + ε
    np.divide(m, tmp, out=tmp); tmp *= lr / (1 - b1 ** t)           # γ·m̂ / (√v̂ + ε)
    p -= tmp
    ### END SOLUTION

def _adam_step_in_place(self: Adam):
    "One Adam update of each parameter with a gradient, in place; `self.state[i]` as above."
    (b1, b2), lr, eps = self.betas, self.lr, self.eps
    for i, p, g in self._grads():
        g, st = self._begin_update(i, p, g)
        _adam_update_(p.data, g, st['exp_avg'], st['exp_avg_sq'], st['step'], lr, b1, b2, eps)

Adam.step = _adam_step_in_place  # replaces the step above; AdamW inherits it

# %% [markdown]
# The two updates agree, and the in-place one stays within one scratch array: the peak temporary
# memory of one step of each, measured as above.

# %%
a, b = mlp_params(seed=1), mlp_params(seed=1)
for x, y in zip(a, b):
    x.grad = y.grad = np.random.default_rng(2).standard_normal(x.shape, dtype=np.float32)
opt_a, opt_b = Adam(a, lr=0.01, weight_decay=0.1), Adam(b, lr=0.01, weight_decay=0.1)
for _ in range(3): adam_step_plain(opt_a); opt_b.step()
for x, y in zip(a, b): test_close(x.data, y.data, eps=1e-6)   # float32 rounding of values near 0.01
peaks, opt_c = {}, Adam(b, lr=0.01)       # no weight decay: its L2 term allocates g + λθ
tracemalloc.start()
# creates the state, traced, so that replacing it is counted
opt_c.step()
for label, step in (('as the formulas read', adam_step_plain), ('in place', Adam.step)):
    tracemalloc.reset_peak(); base = tracemalloc.get_traced_memory()[0]
    step(opt_c)
    peaks[label] = tracemalloc.get_traced_memory()[1] - base
    print(f"Adam {label:<21} peak temporary memory {peaks[label]:>9,} bytes = "
          f"{peaks[label] / largest:.2f}x the largest parameter")
tracemalloc.stop()
# one scratch array at a time, plus small Python objects
test_eq(peaks['in place'] < 1.1 * largest, True)
test_eq(peaks['as the formulas read'] > 2 * largest, True)

# %% [markdown]
# ## Comparing optimizers on the Rosenbrock function
#
# The Rosenbrock function $f(x, y) = (1-x)^2 + 100\,(y - x^2)^2$ has its minimum $f = 0$ at
# $(1, 1)$, at the bottom of a long, curved, narrow valley: steep across it, nearly flat along it.
# Its gradient is $\partial f/\partial x = -2(1-x) - 400x(y-x^2)$ and
# $\partial f/\partial y = 200(y-x^2)$. We start each optimizer at $(-1.5, 2)$ and run the same
# number of steps.

# %%
def rosenbrock(w: np.ndarray) -> float:
    "(1 - x)² + 100 (y - x²)²"
    x, y = w
    return float((1 - x)**2 + 100 * (y - x * x)**2)

def rosenbrock_grad(w: np.ndarray) -> np.ndarray:
    "The gradient of `rosenbrock`, in closed form."
    x, y = w
    return np.array([-2 * (1 - x) - 400 * x * (y - x * x), 200 * (y - x * x)], dtype=w.dtype)

def train(make_opt, steps=2000, start=(-1.5, 2.)) -> np.ndarray:
    """Losses after each of `steps` updates from `start`; stops early if the loss is no longer
    finite."""
    w = Tensor(start, requires_grad=True)
    opt, losses = make_opt([w]), []
    with np.errstate(over='ignore', invalid='ignore'):
        for _ in range(steps):
            w.grad = rosenbrock_grad(w.data)
            opt.step()
            losses.append(rosenbrock(w.data))
            if not np.isfinite(losses[-1]): break
    return np.array(losses)

test_eq(rosenbrock(np.array([1., 1.])), 0.)
test_eq(rosenbrock_grad(np.array([1., 1.])), [0., 0.])
h, w0 = 1e-6, np.array([-1.5, 2.])  # float64 central differences: truncation h²·|f'''|/6 ≈ 6e-10,
# rounding ≈ 2e-16·f/h ≈ 3e-9
fd = [(rosenbrock(w0 + d) - rosenbrock(w0 - d)) / (2 * h) for d in np.eye(2) * h]
test_close(rosenbrock_grad(w0), fd, eps=1e-6)

# %%
runs = {'SGD, momentum 0.9, lr 2e-3': lambda ps: SGD(ps, lr=2e-3, momentum=0.9),
        'Adam, lr 0.05':              lambda ps: Adam(ps, lr=0.05),
        'AdamW, lr 0.05, wd 0.01':    lambda ps: AdamW(ps, lr=0.05, weight_decay=0.01)}
curves = {name: train(make) for name, make in runs.items()}
for name, losses in curves.items():
    print(f"{name:<28} loss after {len(losses)} steps: {losses[-1]:.3g}")
final = [losses[-1] for losses in curves.values()]
# SGD and Adam at the minimum; AdamW above it
test_eq(max(final[:2]) < 1e-6 < final[2], True)

# %%
fig, ax = plt.subplots(figsize=(7, 4))
for name, losses in curves.items(): ax.semilogy(np.arange(1, len(losses) + 1), losses, label=name)
ax.set(xlabel='step', ylabel='Rosenbrock loss', title='From (-1.5, 2), float32')
ax.legend(); plt.show()

# %% [markdown]
# All three reach the valley floor. AdamW's loss levels off where Adam's keeps falling: decoupled
# weight decay pulls every weight towards zero, so AdamW settles where that pull balances the
# gradient, near but not at $(1, 1)$. Weight decay changes the problem being solved; that is its
# purpose as a regulariser, and here it shows as a floor in the loss.
#
# The learning rates above were chosen for each optimizer. How much that choice matters is the
# larger difference between them: the cell below runs each optimizer over a range of learning rates,
# each twice the one before.

# %%
sweep = {}
runs = (('SGD, momentum 0.9', lambda lr: lambda ps: SGD(ps, lr=lr, momentum=0.9),
         (5e-4, 1e-3, 2e-3, 4e-3)),
        ('Adam', lambda lr: lambda ps: Adam(ps, lr=lr), (0.025, 0.05, 0.1, 0.2, 0.4)))
for name, make, lrs in runs:
    finals = {lr: train(make(lr)) for lr in lrs}
    ends = {lr: f"{l[-1]:.2g}" + ("" if np.isfinite(l[-1]) else f" (diverged at step {len(l)})")
            for lr, l in finals.items()}
    print(f"{name}: " + ", ".join(f"lr {lr:g}: {end}" for lr, end in ends.items()))
    sweep[name] = {lr: l[-1] for lr, l in finals.items()}
test_eq(np.isfinite(list(sweep['SGD, momentum 0.9'].values())).tolist(), [True, True, True, False])
test_eq(np.isfinite(list(sweep['Adam'].values())).all(), True)

# %% [markdown]
# On this valley, SGD with momentum diverges once the learning rate passes a threshold set by the
# steepest curvature it meets, and crawls well below it. Adam's step is bounded by about $\gamma$
# per weight whatever the gradient's size, so it cannot blow up that way and works over a wider
# range of learning rates. The printed losses show both effects.

# %% [markdown]
# ## Learning-rate schedules
#
# A schedule changes the learning rate as training proceeds, usually decaying it: large steps make
# fast progress early, small steps settle into a minimum late. A scheduler follows
# `torch.optim.lr_scheduler`: it remembers the optimizer's learning rate when it is created as
# `base_lr`, sets the optimizer's `lr` to its value for step 0 right away, and on each `step()`
# advances its counter and sets the value for the new step. PyTorch calls the counter `last_epoch`
# even when `step()` is called once per batch; we keep the name. `get_last_lr()` returns a
# one-element list, because PyTorch returns one value per parameter group.
#
# Each schedule is a formula of the step number, so jumping to any step (after loading a checkpoint)
# gives the same value as stepping there.

# %%
#| export
class LRScheduler:
    """Base class: set `optimizer.lr` from a formula of the step count, as
    `torch.optim.lr_scheduler.LRScheduler`."""
    def __init__(self, optimizer: Optimizer):
        if not isinstance(optimizer, Optimizer):
            raise TypeError(f"{type(self).__name__}: expected an Optimizer, got "
                            f"{type(optimizer).__name__}")
        self.optimizer, self.base_lr, self.last_epoch = optimizer, optimizer.lr, -1
        self.step()  # as in PyTorch: the optimizer's lr becomes the schedule's value at step 0

    def _lr_at(self, t: int) -> float:
        raise NotImplementedError(f"{type(self).__name__}: no formula for the learning rate")

    def step(self):
        "Advance the schedule by one step and set the optimizer's `lr`."
        self.last_epoch += 1
        self.optimizer.lr = self._last_lr = self._lr_at(self.last_epoch)

    def get_last_lr(self) -> list:
        "The learning rate set by the last `step`, in a list (PyTorch has one per parameter group)."
        return [self._last_lr]

# %% [markdown]
# A scheduler's state is its settings and its counter; saving it with the optimizer's lets a resumed
# run continue the schedule where it stopped.

# %%
#| export
@patch
def state_dict(self: LRScheduler) -> dict:
    "The scheduler's settings and step counter, without the optimizer."
    return {k: v for k, v in vars(self).items() if k != 'optimizer'}

@patch
def load_state_dict(self: LRScheduler, state_dict: dict):
    """Restore what `state_dict` returned; 0-d arrays (from `np.load`) become numbers. Does not
    change the optimizer's lr."""
    self.__dict__.update({k: _plain(v, 0) for k, v in state_dict.items()})

# %% [markdown]
# ### Step decay
#
# `StepLR` multiplies the learning rate by `gamma` every `step_size` steps:
# $\eta_t = \eta_0\, \gamma^{\lfloor t / s \rfloor}$.

# %%
#| export
class StepLR(LRScheduler):
    """Multiply the learning rate by `gamma` every `step_size` steps, as
    `torch.optim.lr_scheduler.StepLR`."""
    def __init__(self, optimizer: Optimizer,
                 step_size: int,      # steps between decays
                 gamma: float = 0.1,  # factor applied at each decay
                ):
        if not (isinstance(step_size, int) and step_size >= 1):
            raise ValueError(f"StepLR: invalid step_size={step_size}, expected an int >= 1")
        _check_nonneg('StepLR', gamma=gamma)
        self.step_size, self.gamma = step_size, gamma
        super().__init__(optimizer)

    def _lr_at(self, t: int) -> float: return self.base_lr * self.gamma ** (t // self.step_size)

# %%
opt = SGD([Tensor([0.], requires_grad=True)], lr=1.)
sched = StepLR(opt, step_size=2, gamma=0.5)
lrs = [sched.get_last_lr()[0]]
for _ in range(6): sched.step(); lrs.append(opt.lr)
test_eq(lrs, [1., 1., 0.5, 0.5, 0.25, 0.25, 0.125])   # halved every 2 steps, exact in binary
test_eq(sched.last_epoch, 6)
test_fail(lambda: StepLR(opt, step_size=0), contains="invalid step_size=0")
test_fail(lambda: StepLR(opt, step_size=2.5), contains="expected an int >= 1")
test_fail(lambda: StepLR(lrs, step_size=1), contains="expected an Optimizer, got list")

# %% [markdown]
# ### Cosine decay with linear warm-up
#
# Transformers are usually trained with a short warm-up, during which the learning rate rises
# linearly from near zero, followed by a cosine decay. The warm-up keeps the first updates small
# while Adam's averages are still estimated from few gradients. With peak rate $\eta_{\max}$ (the
# optimizer's `lr`), floor $\eta_{\min}$, $W$ warm-up steps and decay ending at step $T$, the rate
# at step $t = 0, 1, \ldots$ is
#
# $$\eta_t = \begin{cases}
# \eta_{\max}\,\dfrac{t+1}{W} & t < W \\[1ex] \eta_{\min} + (\eta_{\max} - \eta_{\min})\,
# \tfrac12\left(1 + \cos\left(\pi\,\dfrac{t - W}{T - W}\right)\right) & W \le t < T \\[1ex]
# \eta_{\min} & t \ge T \end{cases}$$
#
# The warm-up counts from $t+1$ so that the first step does not use a learning rate of zero; it
# reaches $\eta_{\max}$ at its last step, $t = W-1$, and the cosine starts from $\eta_{\max}$ at
# $t = W$. Halfway through the decay the cosine term is zero and $\eta$ is the mean of $\eta_{\max}$
# and $\eta_{\min}$.

# %%
#| export
def cosine_warmup_lr(step: int,           # t, counted from 0
                     base_lr: float,      # η_max, reached at the end of the warm-up
                     warmup_steps: int,   # W
                     total_steps: int,    # T: the decay reaches min_lr here
                     min_lr: float = 0.,  # η_min
                    ) -> float:
    """Learning rate at `step`: linear warm-up to `base_lr` over `warmup_steps`, cosine decay to
    `min_lr` at `total_steps`."""
    ### BEGIN SOLUTION
    if step < warmup_steps: return base_lr * (step + 1) / warmup_steps
    if step >= total_steps: return min_lr
    progress = (step - warmup_steps) / (total_steps - warmup_steps)   # 0 -> 1 over the decay
    return min_lr + (base_lr - min_lr) * 0.5 * (1 + math.cos(math.pi * progress))
    ### END SOLUTION

# %% [markdown]
# A worked example with $\eta_{\max} = 1$, $\eta_{\min} = 0.1$, $W = 2$ and $T = 6$: the warm-up
# gives $\tfrac12$ and $1$; the cosine part is evaluated at $0, \tfrac14, \tfrac12, \tfrac34$ of the
# way through the decay; from $t = T$ on the rate is the floor.

# %%
lrs = [cosine_warmup_lr(t, 1., warmup_steps=2, total_steps=6, min_lr=0.1) for t in range(8)]
r = 0.5 * (1 + math.cos(math.pi / 4))                     # 0.8536
# double precision
test_close(lrs, [0.5, 1., 1., 0.1 + 0.9 * r, 0.55, 0.1 + 0.9 * (1 - r), 0.1, 0.1], eps=1e-12)
# no warm-up: start at the peak
test_eq(cosine_warmup_lr(0, 1., warmup_steps=0, total_steps=4), 1.)
test_eq(cosine_warmup_lr(5, 1., warmup_steps=0, total_steps=4), 0.)

# %%
#| export
class CosineWarmupLR(LRScheduler):
    """Linear warm-up to the optimizer's lr over `warmup_steps`, then cosine decay to `min_lr` at
    `total_steps`."""
    def __init__(self, optimizer: Optimizer,
                 warmup_steps: int,   # W: steps of linear warm-up
                 total_steps: int,    # T: step at which the decay reaches min_lr
                 min_lr: float = 0.,  # η_min, the floor after the decay
                ):
        if not 0 <= warmup_steps <= total_steps:
            raise ValueError(f"CosineWarmupLR: need 0 <= warmup_steps <= total_steps, "
                             f"got warmup_steps={warmup_steps}, total_steps={total_steps}")
        if not 0 <= min_lr <= optimizer.lr:
            raise ValueError(f"CosineWarmupLR: need 0 <= min_lr <= lr, got min_lr={min_lr}, "
                             f"lr={optimizer.lr}")
        self.warmup_steps, self.total_steps, self.min_lr = warmup_steps, total_steps, min_lr
        super().__init__(optimizer)

    def _lr_at(self, t: int) -> float:
        return cosine_warmup_lr(t, self.base_lr, self.warmup_steps, self.total_steps, self.min_lr)

# %%
opt = AdamW([Tensor([0.], requires_grad=True)], lr=1.)
sched = CosineWarmupLR(opt, warmup_steps=2, total_steps=6, min_lr=0.1)
test_eq(opt.lr, 0.5)                                       # set to step 0's value on creation
seen = [opt.lr]
for _ in range(7): sched.step(); seen.append(sched.get_last_lr()[0])
test_close(seen, lrs, eps=1e-12)
again = CosineWarmupLR(AdamW([Tensor([0.], requires_grad=True)], lr=1.), warmup_steps=2,
                       total_steps=6, min_lr=0.1)
again.load_state_dict({k: np.asarray(v) for k, v in sched.state_dict().items()})   # as from np.load
again.step()
test_eq((again.last_epoch, again.get_last_lr()), (8, [0.1]))
test_fail(lambda: CosineWarmupLR(opt, warmup_steps=5, total_steps=3),
          contains="warmup_steps=5, total_steps=3")
test_fail(lambda: CosineWarmupLR(opt, warmup_steps=1, total_steps=3, min_lr=2.),
          contains="min_lr=2.0")

# %% [markdown]
# The two schedules over a run of 1000 steps from a peak of 1e-3:

# %%
fig, ax = plt.subplots(figsize=(7, 3))
schedules = (('StepLR(step_size=300, gamma=0.3)', lambda o: StepLR(o, step_size=300, gamma=0.3)),
             ('CosineWarmupLR(100, 1000, min_lr=1e-4)',
              lambda o: CosineWarmupLR(o, 100, 1000, min_lr=1e-4)))
for label, make in schedules:
    sched, values = make(SGD([Tensor([0.], requires_grad=True)], lr=1e-3)), []
    for _ in range(1000): values.append(sched.get_last_lr()[0]); sched.step()
    ax.plot(values, label=label)
ax.set(xlabel='step', ylabel='learning rate'); ax.legend(); plt.show()

# %% [markdown]
# ## Gradient clipping
#
# One bad batch can produce a gradient many times larger than usual, and one step along it can undo
# much of the training so far. `clip_grad_norm_` (as `torch.nn.utils.clip_grad_norm_`) treats all
# the gradients as one vector and computes its L2 norm
# $\lVert g \rVert = \sqrt{\sum_p \sum_i g_{p,i}^2}$. If that norm exceeds `max_norm`, every
# gradient is multiplied in place by $\text{max\_norm} / (\lVert g\rVert + 10^{-6})$: the direction
# is kept, the length is capped (the $10^{-6}$ guards the division, as in PyTorch). It returns the
# norm before clipping, which is worth logging: a rising gradient norm often comes before a
# divergence. Parameters without a gradient are skipped. PyTorch returns the norm as a tensor; we
# return a Python float.

# %%
#| export
def clip_grad_norm_(parameters,       # a Tensor or an iterable of Tensors; None grads are skipped
                    max_norm: float,  # largest global L2 norm of the gradients after clipping
                   ) -> float:
    """Scale all gradients in place so that their global L2 norm is at most `max_norm`; return the
    norm before clipping."""
    _check_nonneg('clip_grad_norm_', max_norm=max_norm)
    ### BEGIN SOLUTION
    if isinstance(parameters, Tensor): parameters = [parameters]
    params = [p for p in parameters if p.grad is not None]
    # vdot flattens without copying
    total = math.sqrt(sum(float(np.vdot(p.grad, p.grad)) for p in params))
    coef = max_norm / (total + 1e-6)
    if coef < 1:
        for p in params: p.grad *= coef   # in place for an ndarray
    return total
    ### END SOLUTION

# %% [markdown]
# Gradients $(3, 4)$ and $(12,)$ have global norm $\sqrt{9 + 16 + 144} = 13$. Clipped to 6.5, each
# is halved.

# %%
a, b, c = (Tensor(np.zeros(s, np.float32), requires_grad=True) for s in (2, 1, 3))
a.grad, b.grad = np.array([3., 4.], np.float32), np.array([12.], np.float32)
test_eq(clip_grad_norm_([a, b, c], max_norm=20.), 13.)     # below max_norm: unchanged
test_eq(b.grad, [12.])
test_eq(clip_grad_norm_([a, b, c], max_norm=6.5), 13.)     # the norm before clipping
# factor 6.5/(13 + 1e-6): relative error 1e-7
test_close(a.grad, [1.5, 2.], eps=1e-6)
test_close(b.grad, [6.], eps=1e-6)
test_eq(c.grad, None)
test_close(clip_grad_norm_(a, 1.), 2.5, eps=1e-6)          # a single Tensor is accepted
test_eq(clip_grad_norm_([c], 1.), 0.)                      # no gradients: norm 0
test_fail(lambda: clip_grad_norm_([a], -1.), contains="invalid max_norm=-1.0")

# %% [markdown]
# ## Summary
#
# An `Optimizer` holds a list of parameters, hyperparameters as attributes, and per-parameter state
# keyed by index. `SGD`, `Adam` and `AdamW` follow `torch.optim`'s update equations and change
# `p.data` in place, skipping parameters without a gradient. `state_dict` and `load_state_dict` save
# and restore everything a resumed run needs, as plain numbers and arrays. `StepLR` and
# `CosineWarmupLR` set `optimizer.lr` from the step count, and `clip_grad_norm_` caps the global
# gradient norm. The training module puts these together with a model, a loss and the autograd
# module's `backward`.
