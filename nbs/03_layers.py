# %%
#| default_exp core.layers

# %% [markdown]
# # Layers
#
# > `Module`, which finds its own parameters, and layers on it: `Linear`, `Sequential`, `ReLU`.

# %% [markdown]
# A layer is a function with state. `Linear` computes $y = x W^T + b$, and $W$ and $b$ are what
# training changes. Before we can train anything, something has to find those arrays, name them,
# save them and load them again. In PyTorch that something is `nn.Module`, and this module builds
# it:
#
# - `Parameter`, a `Tensor` marked as learnable;
# - `Module`, which registers every `Parameter` and sub-`Module` assigned to it as an attribute,
#   walks the tree they form (`named_parameters`, `named_modules`), switches it between training and
#   evaluation, and saves and loads it (`state_dict`, `load_state_dict`);
# - `Linear`, `Sequential` and `Identity`, with PyTorch's names, layouts and initialisation;
# - the activation modules `ReLU`, `GELU`, `Softmax`, ..., which wrap the activation functions.
#
# Nothing here computes a gradient: the autograd module adds that, and an optimizer then walks
# `parameters()`. The cells under each exercise test it at once.

# %%
#| export
import math
from collections import OrderedDict, namedtuple

import numpy as np
from fastcore.basics import patch

from tinytorch.core.tensor import Tensor, rand, zeros

# %% [markdown]
# The activation modules at the end of this notebook are exported into `tinytorch.core.activations`,
# next to the functions they call. The first cell below is that file's import of `Module`; in this
# notebook, the `Module` class defined further down replaces it. The second brings the functions
# into this notebook.

# %%
#| export core.activations
from tinytorch.core.layers import Module

# %%
from tinytorch.core.activations import relu, sigmoid, tanh, gelu, softmax, log_softmax

# %%
#| hide
from fastcore.test import test_eq, test_fail, test_close

from tinytorch.core.tensor import manual_seed, ones, randn

# %% [markdown]
# ## Parameters
#
# A `Parameter` is a `Tensor` with one difference in meaning: when it is assigned as an attribute of
# a `Module`, the module records it as something to learn. It requires a gradient unless told
# otherwise, and it must hold floating-point numbers, because a gradient step adds fractions to it.
# `__slots__ = ()` gives the subclass no per-instance dictionary, so a `Parameter` costs what a
# `Tensor` costs.
#
# Results of operations on a `Parameter` are plain tensors: `2 * w` is a new value computed from
# `w`, not a second learnable weight. A `Tensor` passed in keeps its dtype and shares its memory, as
# in PyTorch.

# %%
#| export
class Parameter(Tensor):
    """A `Tensor` that a `Module` registers as learnable; it requires a gradient unless told
    otherwise."""
    __slots__ = ()

    def __init__(self,
                 data,                # a Tensor (dtype kept), an ndarray or nested lists of floats
                 requires_grad=True,  # should gradients flow to it?
                ):
        super().__init__(data, dtype=data.dtype if isinstance(data, Tensor) else None)
        if self.data.dtype.kind != 'f':
            raise TypeError(f"Parameter: data must be floating-point, got dtype {self.data.dtype}")
        self.requires_grad = requires_grad

    def __repr__(self) -> str: return "Parameter containing:\n" + super().__repr__()

# %%
w = Parameter(Tensor([[1., 2.]]))
test_eq(isinstance(w, Tensor), True)
test_eq(w.requires_grad, True)
test_eq(repr(w), "Parameter containing:\ntensor([[1., 2.]], requires_grad=True)")
# op results are plain tensors
test_eq(type(2 * w), Tensor)
# float64 arrays become float32, as for Tensor
test_eq(Parameter(np.zeros(2)).dtype, np.float32)
test_eq(Parameter(Tensor([1.], dtype=np.float64)).dtype, np.float64)      # a Tensor keeps its dtype
test_eq(Parameter([1.], requires_grad=False).requires_grad, False)
t = Tensor([1., 2.])
test_eq(np.shares_memory(Parameter(t).data, t.data), True)
test_fail(lambda: Parameter([1, 2]),
          contains="Parameter: data must be floating-point, got dtype int64")
test_fail(lambda: setattr(w, 'name', 'w'), contains="'Parameter' object has no attribute 'name'")

# %% [markdown]
# ## The Module class
#
# A `Module` is a layer or a whole model: some parameters, some submodules, and a `forward` method
# that says what to compute. `module(x)` calls `module.forward(x)`. The base class keeps three
# insertion-ordered dictionaries, each name in at most one of them:
#
# - `_parameters`: name -> `Parameter`, what training changes;
# - `_modules`: name -> child `Module`;
# - `_buffers`: name -> `Tensor`, state that is saved with the model but not learned, such as the
#   running mean that batch normalization keeps.
#
# The flag `training` says whether the module is being trained; layers such as dropout read it.
# `__init__` writes straight into `self.__dict__` because the `__setattr__` below reads these
# dictionaries. Python calls `__getattr__` only when normal attribute lookup fails; ours then looks
# in the three dictionaries, so `self.weight` finds a registered parameter. (It is defined in the
# class body, not added with `@patch`, because `@patch` also binds the name in the exporting module,
# and a module-level `__getattr__` changes how Python imports from that module.)

# %%
#| export
class Module:
    """Base class of layers and models: registers the `Parameter`s and `Module`s assigned to it, and
    calls `forward`."""
    def __init__(self):
        d = self.__dict__  # bypass our __setattr__, which needs these dictionaries to exist
        d['training'] = True
        d['_parameters'], d['_buffers'], d['_modules'] = {}, {}, {}
        d['_forward_pre_hooks'] = {}  # handle id -> hook(module, args), run before each forward

    def forward(self, *args, **kwargs):
        "The computation; every subclass defines it."
        raise NotImplementedError(f"{type(self).__name__}.forward: a subclass of Module must "
                                  f"define forward()")

    def __call__(self, *args, **kwargs):
        "`module(x)` runs the forward pre-hooks, then `module.forward(x)`."
        hooks = self.__dict__.get('_forward_pre_hooks')
        # on every call: no list is built for the usual module without hooks
        if hooks:
            for hook in list(hooks.values()):
                out = hook(self, args)  # a hook may return new positional arguments
                if out is not None: args = out if isinstance(out, tuple) else (out,)
        return self.forward(*args, **kwargs)

    def __getattr__(self, name: str):
        """Find `name` among the registered parameters, buffers and modules; Python calls this only
        when normal lookup fails."""
        d = self.__dict__
        for r in ('_parameters', '_buffers', '_modules'):
            if name in d.get(r, ()): return d[r][name]
        raise AttributeError(f"{type(self).__name__!r} object has no attribute {name!r}")

    def extra_repr(self) -> str:
        """The settings shown inside the parentheses of the repr, such as `in_features=4,
        out_features=8, bias=True`."""
        return ''

# %%
test_eq(Module().training, True)
test_fail(lambda: Module()(Tensor([1.])),
          contains="Module.forward: a subclass of Module must define forward()")

# %% [markdown]
# ### Registering what is assigned
#
# `self.weight = Parameter(...)` inside `__init__` is all a layer writes; `__setattr__` does the
# bookkeeping. A `Parameter` goes into `_parameters` and a `Module` into `_modules`, and the name is
# removed from wherever else it was. A name that is already registered keeps its kind: assigning
# `None` empties it (a layer without a bias), and assigning a plain `Tensor` to a parameter's name
# is an error. That error catches a common mistake, `self.weight = self.weight * 2`, which would
# otherwise replace the weight by a constant that training never updates. Any other value becomes an
# ordinary attribute.
#
# Reading goes through `__getattr__` above, and deleting through `__delattr__` below, so each
# parameter lives in exactly one place: its module's `_parameters`.

# %%
#| export
# where a value lives -> its type
_REGISTRIES = {'_parameters': Parameter, '_modules': Module, '_buffers': Tensor}
_KINDS = {'_parameters': 'Parameter', '_modules': 'Module', '_buffers': 'Tensor'}

@patch
def __setattr__(self: Module, name: str, value):
    """Register a `Parameter` in `_parameters` and a `Module` in `_modules`; other values become
    plain attributes."""
    ### BEGIN SOLUTION
    d = self.__dict__
    new = '_parameters' if isinstance(value,
                                      Parameter) else '_modules' if isinstance(value,
                                                                               Module) else None
    if new and '_parameters' not in d:
        raise AttributeError(f"{type(self).__name__}: cannot assign {name!r} before "
                             f"Module.__init__() has run; "
                             "call super().__init__() first")
    # where `name` is registered now
    old = next((r for r in _REGISTRIES if name in d.get(r, ())), None)
    if new:
        if old: del d[old][name]
        d.pop(name, None)
        d[new][name] = value
    elif old:  # a registered name keeps its kind; None empties it
        kind = _KINDS[old]
        if value is not None and not isinstance(value, _REGISTRIES[old]):
            raise TypeError(f"{type(self).__name__}: cannot assign a {type(value).__name__} "
                            f"to {name!r}, "
                            f"which holds a {kind}; assign a {kind} or None")
        d[old][name] = value
    else: object.__setattr__(self, name, value)
    ### END SOLUTION

# %%
#| export
@patch
def __delattr__(self: Module, name: str):
    "Remove the attribute `name`, registered or plain."
    for r in _REGISTRIES:
        if name in self.__dict__.get(r, ()):
            del self.__dict__[r][name]
            return
    object.__delattr__(self, name)

# %% [markdown]
# The tests use a one-parameter module, `Scale`, defined here and not exported.

# %%
class Scale(Module):
    "Multiply by a learnable vector: a small module for the tests in this notebook."
    def __init__(self, n: int):
        super().__init__()
        self.gain = Parameter(ones(n))
        self.label = 'scale'  # a plain attribute
    def forward(self, x): return x * self.gain

# %%
s = Scale(3)
test_eq(list(s._parameters), ['gain'])
# the registry is the one place the parameter lives
test_eq('gain' in s.__dict__, False)
test_eq(s.gain.shape, (3,))
test_eq(s.label, 'scale')
test_eq(s(Tensor([1., 2., 3.])).numpy(), [1., 2., 3.])
test_fail(lambda: setattr(s, 'gain', ones(3)),
          contains="cannot assign a Tensor to 'gain', which holds a Parameter")
s.gain = None                                        # emptying a parameter's slot is allowed
test_eq(s._parameters, {'gain': None})
s.inner = Scale(2)
test_eq(list(s._modules), ['inner'])
test_fail(lambda: setattr(s, 'inner', 3),
          contains="cannot assign a int to 'inner', which holds a Module")
s.inner = Parameter(ones(1))                         # a Parameter moves the name to _parameters
test_eq((list(s._modules), list(s._parameters)), ([], ['gain', 'inner']))
del s.inner
test_fail(lambda: s.inner, contains="'Scale' object has no attribute 'inner'")

# %%
class Forgot(Module):
    "A module whose __init__ does not call super().__init__()."
    def __init__(self): self.w = Parameter(ones(1))

test_fail(Forgot, contains="cannot assign 'w' before Module.__init__() has run")

# %% [markdown]
# ### Buffers
#
# Some state belongs to the model without being learned: batch normalization keeps a running mean
# and variance of its inputs and uses them at evaluation time. `register_buffer` records such a
# tensor in `_buffers`. Buffers are saved and loaded with the parameters, but `parameters()` does
# not yield them, so an optimizer leaves them alone. Assigning a new `Tensor` to a buffer's name
# replaces the buffer.

# %%
#| export
@patch
def register_buffer(self: Module,
                    name: str,              # attribute name, without '.'
                    tensor: Tensor | None,  # the state; None reserves the name
                   ):
    """Register non-learnable state, such as a running mean: saved by `state_dict`, not yielded by
    `parameters`."""
    if '_buffers' not in self.__dict__:
        raise AttributeError(f"{type(self).__name__}: cannot register buffer {name!r} before "
                             f"Module.__init__() has run")
    if not isinstance(name, str) or not name or '.' in name:
        raise ValueError(f"register_buffer: name must be a non-empty string without "
                         f"'.', got {name!r}")
    if tensor is not None and not isinstance(tensor, Tensor):
        raise TypeError(f"register_buffer: {name!r} must be a Tensor or None, got "
                        f"{type(tensor).__name__}")
    if hasattr(self, name) and name not in self._buffers:
        raise ValueError(f"register_buffer: {type(self).__name__} already has an "
                         f"attribute {name!r}")
    self._buffers[name] = tensor

# %%
s = Scale(2)
s.register_buffer('running_mean', zeros(2))
test_eq(list(s._buffers), ['running_mean'])
test_eq(s.running_mean.numpy(), [0., 0.])
# a Tensor assigned to a buffer's name replaces the buffer
s.running_mean = ones(2)
test_eq(s._buffers['running_mean'].numpy(), [1., 1.])
test_fail(lambda: s.register_buffer('gain', zeros(2)),
          contains="Scale already has an attribute 'gain'")
test_fail(lambda: s.register_buffer('forward', zeros(2)),
          contains="already has an attribute 'forward'")
test_fail(lambda: s.register_buffer('a.b', zeros(2)), contains="without '.', got 'a.b'")
test_fail(lambda: s.register_buffer('c', np.zeros(2)),
          contains="'c' must be a Tensor or None, got ndarray")

# %% [markdown]
# ## Linear
#
# `Linear(in_features, out_features)` maps the last axis of its input from `in_features` to
# `out_features` numbers: $y = x W^T + b$. As in PyTorch, the weight has shape
# `(out_features, in_features)`, one row per output unit, and the input may have any number of
# leading axes: `(B, in)` and `(B, T, in)` work alike, because `@` broadcasts them.
#
# Initialisation follows PyTorch exactly: every entry of $W$ and of $b$ is drawn from
# $U(-1/\sqrt{\text{in\_features}},\ 1/\sqrt{\text{in\_features}})$. The next section says why. The
# draws come from the tensor module's generator through `rand`, so `manual_seed(0)` before building
# a model gives the same weights on every run. `uniform_` fills a tensor in place, like
# `torch.nn.init.uniform_`.

# %%
#| export
def uniform_(tensor: Tensor,  # filled in place
             a: float = 0.,   # lower bound
             b: float = 1.,   # upper bound
            ) -> Tensor:
    """Fill `tensor` in place with draws from U(a, b), made by the tensor module's generator; return
    it."""
    tensor.data[...] = a + (b - a) * rand(*tensor.shape, dtype=tensor.dtype).data
    return tensor

# %%
t = uniform_(zeros(1000), -0.5, 0.5)
test_eq(t.dtype, np.float32)
test_eq(bool((t.numpy() >= -0.5).all() and (t.numpy() < 0.5).all()), True)
manual_seed(1); a = uniform_(zeros(3)).numpy().copy()
manual_seed(1); test_eq(uniform_(zeros(3)).numpy(), a)

# %%
#| export
class Linear(Module):
    "Affine map of the last axis, $y = x W^T + b$, with PyTorch's weight layout and initialisation."
    def __init__(self,
                 in_features: int,   # size of the input's last axis
                 out_features: int,  # size of the output's last axis
                 bias: bool = True,  # add a learnable bias b?
                ):
        """Make `weight` (out_features, in_features) and `bias` (out_features,), drawn from
        U(-1/sqrt(in_features), 1/sqrt(in_features))."""
        super().__init__()
        if not all(isinstance(n, (int, np.integer)) and n > 0 for n in (in_features, out_features)):
            raise ValueError(f"Linear: in_features and out_features must be positive integers, "
                             f"got {in_features=}, {out_features=}")
        self.in_features, self.out_features = in_features, out_features
        ### BEGIN SOLUTION
        bound = 1 / math.sqrt(in_features)
        # (out, in)
        self.weight = uniform_(Parameter(zeros(out_features, in_features)), -bound, bound)
        # (out,)
        self.bias = uniform_(Parameter(zeros(out_features)), -bound, bound) if bias else None
        ### END SOLUTION

    def extra_repr(self) -> str:
        return (f"in_features={self.in_features}, out_features={self.out_features}, "
                f"bias={self.bias is not None}")

# %% [markdown]
# The parameters' shapes, their registration, and the layer without a bias; the values come next.

# %%
lin = Linear(3, 2)
test_eq((lin.weight.shape, lin.bias.shape), ((2, 3), (2,)))
test_eq(list(lin._parameters), ['weight', 'bias'])
test_eq((lin.weight.dtype, lin.weight.requires_grad), (np.float32, True))
test_eq(Linear(3, 2, bias=False).bias, None)
test_eq(bool(np.abs(lin.weight.numpy()).max() <= 1 / math.sqrt(3)), True)

# %%
#| export
@patch
def forward(self: Linear, x: Tensor) -> Tensor:
    "$y = x W^T + b$ on the last axis: (..., in_features) -> (..., out_features)."
    ### BEGIN SOLUTION
    if x.ndim == 0 or x.shape[-1] != self.in_features:
        raise ValueError(f"Linear: input of shape {x.shape} does not end in "
                         f"in_features={self.in_features}")
    y = x @ self.weight.T                              # (..., in) @ (in, out) -> (..., out)
    return y if self.bias is None else y + self.bias   # (..., out) + (out,)
    ### END SOLUTION

# %% [markdown]
# A worked example with weights set by hand, then shapes, the layer without a bias, and the failure
# paths.

# %%
lin = Linear(3, 2)
test_eq((lin.weight.shape, lin.bias.shape), ((2, 3), (2,)))
test_eq(list(lin._parameters), ['weight', 'bias'])
lin.weight.data[...] = [[1., 0., -1.], [2., 2., 2.]]
lin.bias.data[...] = [0.5, -1.]
x = Tensor([[1., 2., 3.], [0., 0., 1.]])             # (2, 3)
test_eq(lin(x).numpy(), [[-1.5, 11.], [-0.5, 1.]])   # row 0: 1 - 3 + 0.5, 2 + 4 + 6 - 1
test_eq(lin(Tensor([1., 2., 3.])).numpy(), [-1.5, 11.])
test_eq(lin(randn(4, 5, 3)).shape, (4, 5, 2))        # leading axes pass through
test_eq(lin(x).dtype, np.float32)

# %%
nb = Linear(3, 2, bias=False)
test_eq(nb.bias, None)
test_eq(list(nb._parameters), ['weight'])
test_eq(nb(x).numpy(), x.numpy() @ nb.weight.numpy().T)
test_fail(lambda: lin(randn(4, 4)),
          contains="Linear: input of shape (4, 4) does not end in in_features=3")
test_fail(lambda: lin(Tensor(1.)), contains="input of shape ()")
test_fail(lambda: Linear(0, 2),
          contains="must be positive integers, got in_features=0, out_features=2")
test_fail(lambda: Linear(3, 2.5), contains="out_features=2.5")

# %% [markdown]
# The weights lie inside the bound, and `manual_seed` makes them reproducible.

# %%
big = Linear(100, 50)
test_eq(bool(np.abs(big.weight.numpy()).max() <= 1 / math.sqrt(100)), True)
test_eq(bool(np.abs(big.bias.numpy()).max() <= 1 / math.sqrt(100)), True)
manual_seed(0); first = Linear(3, 4)
manual_seed(0); again = Linear(3, 4)
test_eq((again.weight.numpy(), again.bias.numpy()), (first.weight.numpy(), first.bias.numpy()))
# no reset: the generator moved on
test_eq(np.array_equal(Linear(3, 4).weight.numpy(), first.weight.numpy()), False)

# %% [markdown]
# ## Why this initialisation
#
# An entry drawn from $U(-b, b)$ has variance $b^2/3$. With $b = 1/\sqrt{n}$ for $n$ inputs, and
# inputs with mean zero and second moment $E[x^2]$, each output $y_j = \sum_i W_{ji} x_i + b_j$ has
# variance
#
# $$\operatorname{Var}(y_j) = n \cdot \frac{1}{3n} \cdot E[x^2] + \frac{1}{3n}
#   = \frac{E[x^2]}{3} + \frac{1}{3n}.$$
#
# The factor $1/n$ in the weight variance cancels the $n$ terms of the sum, so the output's scale
# does not depend on the width: each unit's output variance is about a third of its input's second
# moment.
#
# PyTorch states this initialisation as `kaiming_uniform_(weight, a=math.sqrt(5))`. Kaiming's rule
# draws from $U(-\text{bound}, \text{bound})$ with
# $\text{bound} = \text{gain} \cdot \sqrt{3/\text{fan\_in}}$, and the gain for a leaky ReLU of
# negative slope $a$ is $\sqrt{2/(1+a^2)}$. With $a = \sqrt 5$ the gain is $\sqrt{1/3}$ and the
# bound becomes $1/\sqrt{\text{fan\_in}}$. The cell checks that arithmetic.

# %%
a = math.sqrt(5)
gain = math.sqrt(2 / (1 + a**2))
for fan_in in (3, 784):
    kaiming_bound = gain * math.sqrt(3 / fan_in)
    print(f"fan_in={fan_in}: gain {gain:.4f}, Kaiming bound {kaiming_bound:.6f}, 1/sqrt(fan_in) "
          f"{1 / math.sqrt(fan_in):.6f}")
    test_close(kaiming_bound, 1 / math.sqrt(fan_in), eps=1e-12)

# %% [markdown]
# A measurement: standard-normal inputs through one `Linear(512, 512)`, against the formula above.

# %%
manual_seed(0)
n = 512
x = randn(4096, n, seed=0)                            # (4096, 512), E[x^2] = 1
y = Linear(n, n)(x)                                   # (4096, 512)
predicted = math.sqrt(1 / 3 + 1 / (3 * n))
print(f"input std {x.numpy().std():.4f}, output std {y.numpy().std():.4f}, predicted "
      f"{predicted:.4f}")
# sampling error of 2M outputs and 262k weights is ~0.2%
test_close(y.numpy().std() / predicted, 1., eps=0.02)

# %% [markdown]
# Depth multiplies the factor. With a ReLU between layers, which zeroes the negative half of a
# symmetric input and so halves its second moment, the second moment after layer $l$ follows
# $m_l = (c\, m_{l-1} + 1/(3n)) / 2$, where $c = n \operatorname{Var}(w)$ is $1/3$ for the default
# bound. The scale falls by about $\sqrt 6$ per layer towards the floor that the bias sets. He et
# al. (2015) chose the weight variance $2/n$ for ReLU networks, a gain of $\sqrt 2$ and the bound
# $\sqrt{6/n}$, so that $c = 2$ and the scale stays put through any depth. PyTorch keeps the first
# rule as the default of `Linear` for compatibility; models built from ReLU layers often
# re-initialise with `kaiming_uniform_` or `kaiming_normal_`.
#
# The cell measures both in a stack of six layers, averaging four independent stacks, and compares
# with the recurrence. The ReLU is written as `clip(min=0.)`: the `ReLU` module comes at the end of
# this notebook. The average is needed because of finite width: after a ReLU the inputs have a
# positive mean, and each unit turns that mean into an offset that is the same for the whole batch,
# so a single stack measures only $n$ independent offsets and its scale wanders a few percent per
# layer.

# %%
def mean_square_through_relu_stack(bound, depth=6, n=512, batch=512, runs=4):
    """Mean square of the activations after each Linear+ReLU layer, averaged over `runs` stacks;
    weights from U(-bound(n), bound(n))."""
    manual_seed(0)
    ms = np.zeros(depth)
    for _ in range(runs):
        x = randn(batch, n)                                # (batch, n), E[x^2] = 1
        for l in range(depth):
            lin = Linear(n, n)
            uniform_(lin.weight, -bound(n), bound(n))
            x = lin(x).clip(min=0.)                        # (batch, n)
            ms[l] += (x.numpy() ** 2).mean() / runs
    return ms

def predicted_mean_square(c, depth=6, n=512):
    "The recurrence m_l = (c m_{l-1} + 1/(3n)) / 2 from m_0 = 1, where c = n Var(w)."
    m, out = 1., []
    for _ in range(depth):
        m = (c * m + 1 / (3 * n)) / 2
        out.append(m)
    return np.array(out)

default = np.sqrt(mean_square_through_relu_stack(lambda n: 1 / math.sqrt(n)))
kaiming = np.sqrt(mean_square_through_relu_stack(lambda n: math.sqrt(6 / n)))
default_pred = np.sqrt(predicted_mean_square(1 / 3))
kaiming_pred = np.sqrt(predicted_mean_square(2.))
for l in range(len(default)):
    print(f"layer {l + 1}: rms with default init {default[l]:.4f} (predicted "
          f"{default_pred[l]:.4f}), "
          f"with Kaiming init {kaiming[l]:.3f} (predicted {kaiming_pred[l]:.3f})")
print(f"scale lost per layer with the default init, first step: {default[0] / default[1]:.2f}x, "
      f"sqrt(6) = {math.sqrt(6):.2f}")
# finite width moves each stack's rms by a few percent per layer; four stacks averaged over six
# layers
test_close(default / default_pred, 1., eps=0.15)
test_close(kaiming / kaiming_pred, 1., eps=0.15)

# %% [markdown]
# ### Forward pre-hooks
#
# A forward pre-hook is a function `hook(module, args)` that `module(x)` calls before `forward`, as
# in PyTorch's `register_forward_pre_hook`. It may return new positional arguments, or None to keep
# them. Pruning uses one to recompute a masked weight before every forward pass. Registering returns
# a handle whose `remove()` unregisters the hook.

# %%
#| export
class RemovableHandle:
    "Returned by `register_forward_pre_hook`; `remove()` unregisters the hook."
    _next_id = 0

    def __init__(self, hooks: dict):
        self.hooks, self.id = hooks, RemovableHandle._next_id
        RemovableHandle._next_id += 1

    def remove(self): self.hooks.pop(self.id, None)

@patch
def register_forward_pre_hook(self: Module, hook) -> RemovableHandle:
    """Run `hook(module, args)` before every `forward`; a non-None result replaces the positional
    arguments."""
    if not callable(hook):
        raise TypeError(f"register_forward_pre_hook: hook must be callable, got "
                        f"{type(hook).__name__}")
    hooks = self.__dict__.setdefault('_forward_pre_hooks', {})
    handle = RemovableHandle(hooks)
    hooks[handle.id] = hook
    return handle

# %%
s = Scale(2)
calls = []
h1 = s.register_forward_pre_hook(lambda m, args: calls.append(args[0].shape))
h2 = s.register_forward_pre_hook(lambda m, args: (args[0] * 10,))   # replaces the input
test_eq(s(Tensor([1., 2.])).numpy(), [10., 20.])
test_eq(calls, [(2,)])
h2.remove(); h2.remove()                                            # removing twice is harmless
test_eq(s(Tensor([1., 2.])).numpy(), [1., 2.])
h1.remove()
test_eq(len(s._forward_pre_hooks), 0)
test_fail(lambda: s.register_forward_pre_hook(3), contains="hook must be callable, got int")

# %% [markdown]
# ## Walking the module tree
#
# Modules nest, and a parameter's name is the path of attribute names from the root, joined by dots:
# `encoder.fc.bias`. `named_modules` yields the root (under the name `''`) and then every
# descendant, depth first in the order they were assigned. A module reachable along two paths is
# yielded once, under the first. `children` yields only the direct submodules.

# %%
#| export
def _join(prefix: str, name: str) -> str:
    "`prefix.name`, or `name` alone at the root."
    return f"{prefix}.{name}" if prefix else name

@patch
def named_modules(self: Module, memo: set | None = None, prefix: str = ''):
    """Yield (dotted name, module) for this module and every descendant, depth first, each module
    once."""
    memo = set() if memo is None else memo  # ids of the modules yielded so far
    if id(self) in memo: return
    memo.add(id(self))
    yield prefix, self
    for name, m in self._modules.items():
        if m is not None: yield from m.named_modules(memo, _join(prefix, name))

@patch
def modules(self: Module):
    "Yield this module and every descendant, each once."
    for _, m in self.named_modules(): yield m

# %%
#| export
@patch
def named_children(self: Module):
    "Yield (name, module) for the direct submodules, each once."
    seen = set()
    for name, m in self._modules.items():
        if m is not None and id(m) not in seen:
            seen.add(id(m))
            yield name, m

@patch
def children(self: Module):
    "Yield the direct submodules, each once."
    for _, m in self.named_children(): yield m

# %% [markdown]
# `named_parameters` visits the modules in that order and yields each module's own parameters under
# the module's prefix. A parameter shared by two modules, such as the tied input and output
# embeddings of a language model, is yielded once: an optimizer must update it once per step, and a
# parameter count must count it once. `parameters()` is the same walk without the names; it is what
# an optimizer receives. `named_buffers` is the same walk over `_buffers`.

# %%
#| export
@patch
def named_parameters(self: Module,
                     prefix: str = '',      # put before every name, with a '.'
                     recurse: bool = True,  # include the parameters of submodules?
                    ):
    """Yield (dotted name, parameter) for every parameter, each once even if several modules share
    it."""
    ### BEGIN SOLUTION
    seen = set()  # ids of the parameters yielded so far
    for mod_name, m in (self.named_modules(prefix=prefix) if recurse else [(prefix, self)]):
        for name, p in m._parameters.items():
            if p is None or id(p) in seen: continue
            seen.add(id(p))
            yield _join(mod_name, name), p
    ### END SOLUTION

@patch
def parameters(self: Module, recurse: bool = True):
    "Yield every parameter once: what an optimizer updates."
    for _, p in self.named_parameters(recurse=recurse): yield p

# %%
#| export
@patch
def named_buffers(self: Module, prefix: str = '', recurse: bool = True):
    "Yield (dotted name, buffer) for every buffer, each once."
    seen = set()
    for mod_name, m in (self.named_modules(prefix=prefix) if recurse else [(prefix, self)]):
        for name, b in m._buffers.items():
            if b is None or id(b) in seen: continue
            seen.add(id(b))
            yield _join(mod_name, name), b

@patch
def buffers(self: Module, recurse: bool = True):
    "Yield every buffer once."
    for _, b in self.named_buffers(recurse=recurse): yield b

# %% [markdown]
# The tests build trees with `Block`, a module whose children are given by keyword and applied in
# order.

# %%
class Block(Module):
    """A test module: `Block(fc=Linear(4, 3))` has a child named `fc`; forward applies the children
    in order."""
    def __init__(self, **children):
        super().__init__()
        for name, m in children.items(): setattr(self, name, m)
    def forward(self, x):
        for m in self._modules.values(): x = m(x)
        return x

# %%
ae = Block(encoder=Block(fc=Linear(4, 3)), decoder=Linear(3, 4))
test_eq([n for n, _ in ae.named_parameters()],
        ['encoder.fc.weight', 'encoder.fc.bias', 'decoder.weight', 'decoder.bias'])
test_eq([n for n, _ in ae.named_modules()], ['', 'encoder', 'encoder.fc', 'decoder'])
test_eq([n for n, _ in ae.named_children()], ['encoder', 'decoder'])
test_eq([type(m).__name__ for m in ae.modules()], ['Block', 'Block', 'Linear', 'Linear'])
test_eq(sum(p.size for p in ae.parameters()), (4 + 1) * 3 + (3 + 1) * 4)
test_eq(list(ae.named_parameters(recurse=False)), [])
test_eq([n for n, _ in ae.encoder.named_parameters(prefix='enc')], ['enc.fc.weight', 'enc.fc.bias'])
test_eq(ae(randn(2, 4)).shape, (2, 4))

# %% [markdown]
# Sharing: the same `Linear` used twice, and one weight tied between two layers.

# %%
lin = Linear(3, 3)
twice = Block(first=lin, second=lin)
test_eq([n for n, _ in twice.named_modules()], ['', 'first'])
test_eq([n for n, _ in twice.named_parameters()], ['first.weight', 'first.bias'])
a, b = Linear(3, 3), Linear(3, 3)
b.weight = a.weight
tied = Block(a=a, b=b)
test_eq([n for n, _ in tied.named_parameters()], ['a.weight', 'a.bias', 'b.bias'])
test_eq(sum(p.size for p in tied.parameters()), 9 + 3 + 3)

# %%
s = Scale(2)
s.register_buffer('running_mean', zeros(2))
with_buf = Block(s=s, fc=Linear(2, 2))
test_eq([n for n, _ in with_buf.named_buffers()], ['s.running_mean'])
test_eq([n for n, _ in with_buf.named_parameters()], ['s.gain', 'fc.weight', 'fc.bias'])
test_eq(len(list(with_buf.buffers())), 1)

# %% [markdown]
# ## Sequential and Identity
#
# `Sequential(*modules)` holds its modules under the names `"0"`, `"1"`, ... and its `forward`
# passes the output of each to the next. As in PyTorch, one dict argument names the modules instead.
# `seq[i]` is one module (negative indices count from the end); a slice is a `Sequential` of those
# modules that keeps their names, so its `state_dict` keys match the original's.
#
# `Identity` returns its input. It stands in where a layer is optional, for example a projection
# that is only needed when two widths differ.

# %%
#| export
class Sequential(Module):
    "Modules applied in order, named '0', '1', ... or by the keys of a single dict argument."
    def __init__(self, *modules):
        super().__init__()
        one_dict = len(modules) == 1 and isinstance(modules[0], dict)
        named = modules[0].items() if one_dict else ((str(i), m) for i, m in enumerate(modules))
        for name, m in named:
            if not isinstance(name, str) or not name or '.' in name:
                raise ValueError(f"Sequential: module names must be non-empty strings without "
                                 f"'.', got {name!r}")
            if not isinstance(m, Module):
                raise TypeError(f"Sequential: {name!r} is a {type(m).__name__}, not a Module")
            setattr(self, name, m)

    def __len__(self) -> int: return len(self._modules)
    def __iter__(self): return iter(self._modules.values())

    def __getitem__(self, idx):
        "The module at position `idx`; a slice gives a `Sequential` that keeps the names."
        items = list(self._modules.items())
        if isinstance(idx, slice): return Sequential(dict(items[idx]))
        try: return items[idx][1]
        except IndexError:
            raise IndexError(f"Sequential: index {idx} out of range for "
                             f"{len(items)} modules") from None

# %%
#| export
@patch
def forward(self: Sequential, x):
    "Pass `x` through each module in order."
    ### BEGIN SOLUTION
    for m in self: x = m(x)
    return x
    ### END SOLUTION

class Identity(Module):
    "Return the input unchanged: a placeholder where a layer is optional."
    def forward(self, x, *args, **kwargs): return x

# %%
manual_seed(0)
seq = Sequential(Linear(4, 8), Identity(), Linear(8, 2))
test_eq(len(seq), 3)
test_eq([n for n, _ in seq.named_parameters()], ['0.weight', '0.bias', '2.weight', '2.bias'])
test_eq([type(m).__name__ for m in seq], ['Linear', 'Identity', 'Linear'])
test_eq(type(seq[1]), Identity)
test_eq(seq[-1].out_features, 2)
test_eq([n for n, _ in seq[1:].named_children()], ['1', '2'])
x = randn(5, 4)
test_eq(seq(x).numpy(), seq[2](seq[0](x)).numpy())
test_eq(Identity()(x) is x, True)
test_eq(Sequential()(x) is x, True)
named = Sequential({'fc': Linear(4, 2), 'out': Identity()})
test_eq([n for n, _ in named.named_parameters()], ['fc.weight', 'fc.bias'])
test_fail(lambda: seq[3], contains="Sequential: index 3 out of range for 3 modules")
test_fail(lambda: Sequential(Linear(2, 2), np.eye(2)), contains="'1' is a ndarray, not a Module")
test_fail(lambda: Sequential({'a.b': Identity()}), contains="without '.', got 'a.b'")
test_fail(lambda: seq(randn(5, 3)), contains="input of shape (5, 3) does not end in in_features=4")

# %% [markdown]
# ## Training and evaluation mode
#
# Some layers compute differently while training: dropout zeroes random activations only in
# training, and batch normalization uses the batch's statistics in training and its running averages
# in evaluation. `train(mode)` sets `training` on the module and, through each child's own `train`,
# on the whole tree, so a subclass that overrides `train` still takes part. `eval()` is
# `train(False)`. Both return the module, so `model = Net().eval()` reads naturally.

# %%
#| export
@patch
def train(self: Module, mode: bool = True) -> Module:
    "Set `training` to `mode` on this module and every descendant; return `self`."
    if not isinstance(mode, bool): raise TypeError(f"train: mode must be a bool, got {mode!r}")
    self.training = mode
    for m in self.children(): m.train(mode)
    return self

@patch
def eval(self: Module) -> Module:
    "Switch this module and every descendant to evaluation mode, `train(False)`; return `self`."
    return self.train(False)

# %%
net = Block(encoder=Block(fc=Linear(4, 3)), decoder=Linear(3, 4))
test_eq(net.eval() is net, True)
test_eq([m.training for m in net.modules()], [False] * 4)
test_eq(net.train() is net, True)
test_eq([m.training for m in net.modules()], [True] * 4)
net.encoder.eval()
test_eq([m.training for m in net.modules()], [True, False, False, True])
test_fail(lambda: net.train('no'), contains="train: mode must be a bool, got 'no'")

# %% [markdown]
# ## Clearing gradients
#
# The autograd module adds each new gradient into `.grad`, so that a parameter used twice collects
# both contributions. A training step therefore starts by clearing the gradients of the previous
# step. Following PyTorch's default, `zero_grad()` sets `.grad` to `None` rather than filling it
# with zeros: it writes no memory, and an optimizer can tell that a parameter received no gradient
# at all and skip it. Gradients do not exist yet in this module, so the test puts arrays into
# `.grad` by hand.

# %%
#| export
@patch
def zero_grad(self: Module, set_to_none: bool = True):
    """Clear every parameter's gradient: set it to None, or fill it with zeros if `set_to_none` is
    False."""
    for p in self.parameters():
        if set_to_none: p.grad = None
        elif p.grad is not None: p.grad[...] = 0

# %%
# stand-ins for gradients from autograd
for p in net.parameters(): p.grad = np.ones(p.shape, np.float32)
net.zero_grad(set_to_none=False)
test_eq([float(np.abs(p.grad).sum()) for p in net.parameters()], [0.] * 4)
net.zero_grad()
test_eq([p.grad for p in net.parameters()], [None] * 4)
net.zero_grad(set_to_none=False)                                    # no gradient stays no gradient
test_eq([p.grad for p in net.parameters()], [None] * 4)

# %% [markdown]
# ## Saving and loading
#
# A checkpoint is a model's numbers by name. `state_dict()` maps every dotted name to a copy of the
# array: each module's parameters, then its buffers, then its children's entries, the order PyTorch
# uses. The arrays are copies, where PyTorch returns tensors that share memory with the model; with
# shared memory a "best model so far" kept in a variable keeps changing as training continues,
# unless one remembers `copy.deepcopy`. A parameter shared by two modules appears under each of its
# names, also as in PyTorch, so the checkpoint loads into a model in which the two are separate.

# %%
#| export
@patch
def _named_state(self: Module, prefix: str = ''):
    """Yield (dotted name, tensor) for every parameter and buffer along every path; a shared one
    appears under each name."""
    for name, t in [*self._parameters.items(), *self._buffers.items()]:
        if t is not None: yield _join(prefix, name), t
    for name, m in self._modules.items():
        if m is not None: yield from m._named_state(_join(prefix, name))

@patch
def state_dict(self: Module) -> OrderedDict:
    "Dotted name -> a copy of the array, for every parameter and buffer."
    return OrderedDict((name, t.data.copy()) for name, t in self._named_state())

# %%
manual_seed(0)
src = Sequential(Linear(4, 4), Linear(4, 2))
sd = src.state_dict()
test_eq(list(sd), ['0.weight', '0.bias', '1.weight', '1.bias'])
test_eq((type(sd['0.weight']), sd['0.weight'].dtype, sd['1.weight'].shape),
        (np.ndarray, np.float32, (2, 4)))
# the dict holds copies: the model does not change
sd['0.bias'][0] = 99.
test_eq(bool(src[0].bias.numpy()[0] == 99.), False)
# shared: each name
test_eq(list(Sequential(lin, lin).state_dict()), ['0.weight', '0.bias', '1.weight', '1.bias'])
# buffers included
test_eq(list(with_buf.state_dict()), ['s.gain', 's.running_mean', 'fc.weight', 'fc.bias'])

# %% [markdown]
# `load_state_dict(state)` copies the arrays of `state` into the parameters and buffers of the same
# names. It checks everything before it copies anything: a missing name, a name the model does not
# have, and a shape that differs are collected and reported in one error, and the model is left as
# it was. A half-loaded model would run and give plausible numbers, which hides the mistake.
#
# Values are copied into the existing arrays and cast to the model's dtypes, so the `Parameter`
# objects an optimizer holds stay the same objects. `state` may hold ndarrays or tensors. With
# `strict=False`, missing and unexpected names are allowed: the matching entries are loaded, and the
# names are returned, as PyTorch returns them, in a named tuple `(missing_keys, unexpected_keys)`. A
# shape mismatch is an error either way.

# %%
#| export
IncompatibleKeys = namedtuple('IncompatibleKeys', ['missing_keys', 'unexpected_keys'])

@patch
def load_state_dict(self: Module,
                    state: dict,         # dotted name -> ndarray or Tensor, as `state_dict` gives
                    strict: bool = True, # require exactly the model's names?
                   ) -> IncompatibleKeys:
    """Copy `state` into the parameters and buffers of the same names; check everything first, load
    all or nothing."""
    ### BEGIN SOLUTION
    own = dict(self._named_state())
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    new, problems = {}, []
    for k, t in own.items():
        if k not in state: continue
        v = np.asarray(state[k].data if isinstance(state[k], Tensor) else state[k])
        if v.shape != t.shape:
            problems.append(f"shape mismatch for {k!r}: checkpoint {v.shape} vs model {t.shape}")
        else: new[k] = v.astype(t.dtype)  # a copy, in the model's dtype
    if strict and unexpected: problems.insert(0, f"unexpected keys {unexpected}")
    if strict and missing: problems.insert(0, f"missing keys {missing}")
    if problems: raise RuntimeError(f"load_state_dict: {'; '.join(problems)}")
    for k, v in new.items(): own[k].data[...] = v
    return IncompatibleKeys(missing, unexpected)
    ### END SOLUTION

# %% [markdown]
# A round trip gives a second model that computes exactly what the first computes.

# %%
manual_seed(1)
dst = Sequential(Linear(4, 4), Linear(4, 2))
w = dst[0].weight
x = randn(3, 4)
test_eq(np.array_equal(dst(x).numpy(), src(x).numpy()), False)
test_eq(dst.load_state_dict(src.state_dict()), IncompatibleKeys([], []))
test_eq(dst(x).numpy(), src(x).numpy())
test_eq(dst[0].weight is w, True)                       # the same Parameter object, new values
dst.load_state_dict({k: Tensor(v, dtype=np.float64) for k, v in src.state_dict().items()})
test_eq(dst[0].weight.dtype, np.float32)                # tensors accepted, the model's dtype kept

# %% [markdown]
# A checkpoint with three problems: all three are reported, and nothing is loaded.

# %%
bad = Sequential(Linear(4, 4), Linear(4, 2)).state_dict()
del bad['1.bias']
bad['2.weight'] = np.zeros((2, 2), np.float32)
bad['0.weight'] = np.zeros((3, 4), np.float32)
before = dst.state_dict()
test_fail(lambda: dst.load_state_dict(bad), exc=RuntimeError,
          contains="load_state_dict: missing keys ['1.bias']; unexpected keys ['2.weight']; "
                   "shape mismatch for '0.weight': checkpoint (3, 4) vs model (4, 4)")
test_eq(list(dst.state_dict()), list(before))
# bad['0.bias'] and bad['1.weight'] were not loaded
for k, v in dst.state_dict().items(): test_eq(v, before[k])

# %% [markdown]
# With `strict=False` the matching entries load and the others are returned; a shape mismatch still
# refuses.

# %%
res = dst.load_state_dict({'0.bias': np.zeros(4), 'extra.weight': np.ones(1)}, strict=False)
test_eq(res.missing_keys, ['0.weight', '1.weight', '1.bias'])
test_eq(res.unexpected_keys, ['extra.weight'])
test_eq(dst[0].bias.numpy(), np.zeros(4))
test_eq(dst[0].bias.dtype, np.float32)
test_fail(lambda: dst.load_state_dict({'0.bias': np.zeros(5)}, strict=False),
          contains="shape mismatch for '0.bias': checkpoint (5,) vs model (4,)")

# %% [markdown]
# ## A readable repr
#
# `print(model)` shows the tree in PyTorch's format: the class name, the settings that `extra_repr`
# returns, and one indented line per child, labelled with the child's name. `Linear` overrides
# `extra_repr` above.

# %%
#| export
def _indent(text: str, n: int) -> str:
    "Indent every line of `text` after the first by `n` spaces."
    return text.replace('\n', '\n' + ' ' * n)

@patch
def __repr__(self: Module) -> str:
    "`Name(settings)`, then one indented line per child, in PyTorch's format."
    extra = self.extra_repr()
    lines = (extra.split('\n') if extra else []) + [f"({k}): {_indent(repr(m), 2)}"
                                                   for k, m in self._modules.items()]
    if not self._modules and len(lines) <= 1: return f"{type(self).__name__}({extra})"
    return f"{type(self).__name__}(\n  " + "\n  ".join(lines) + "\n)"

# %%
test_eq(repr(Identity()), "Identity()")
test_eq(repr(Linear(4, 8)), "Linear(in_features=4, out_features=8, bias=True)")
test_eq(repr(Sequential(Linear(4, 8), Identity(), Linear(8, 2, bias=False))),
        "Sequential(\n"
        "  (0): Linear(in_features=4, out_features=8, bias=True)\n"
        "  (1): Identity()\n"
        "  (2): Linear(in_features=8, out_features=2, bias=False)\n"
        ")")
print(Block(encoder=Sequential(Linear(4, 3), Identity()), decoder=Linear(3, 4)))

# %% [markdown]
# ## Activations as modules
#
# The activations module wrote the functions (`relu(x)`, `gelu(x, approximate)`). To put one in a
# `Sequential`, or assign it to a module's attribute, it must be a `Module`, as `torch.nn.ReLU` is
# an `nn.Module` whose `forward` calls `torch.nn.functional.relu`. An activation module holds no
# parameters, only its settings (such as `dim`), so it adds nothing to `parameters()` or a
# `state_dict`; being a `Module`, it takes part in `train()`, hooks and `print(model)` like any
# layer.
#
# `Activation` is their common base: `module(x)` checks that `x` is a `Tensor` before the hooks and
# `forward` run, so a NumPy array gets an error naming the module. The cell is exported into
# `tinytorch.core.activations`, next to the functions, so
# `from tinytorch.core.activations import ReLU` works in every later module.

# %%
#| export core.activations
class Activation(Module):
    "Base of the activation modules: no parameters; `module(x)` checks that `x` is a `Tensor`."
    def __call__(self, x: Tensor, *args, **kwargs) -> Tensor:
        if not isinstance(x, Tensor):
            raise TypeError(f"{type(self).__name__}: expected a Tensor, got {type(x).__name__}")
        return super().__call__(x, *args, **kwargs)

class ReLU(Activation):
    "$\\max(x, 0)$ elementwise."
    def forward(self, x: Tensor) -> Tensor: return relu(x)

class Sigmoid(Activation):
    "$1 / (1 + e^{-x})$ elementwise."
    def forward(self, x: Tensor) -> Tensor: return sigmoid(x)

class Tanh(Activation):
    "Hyperbolic tangent elementwise."
    def forward(self, x: Tensor) -> Tensor: return tanh(x)

# %%
#| export core.activations
class GELU(Activation):
    "$x\\,\\Phi(x)$, exact (`approximate='none'`) or with the tanh approximation."
    def __init__(self, approximate: str = 'none'):
        super().__init__()
        if approximate not in ('none', 'tanh'):
            raise ValueError(f"GELU: approximate must be 'none' or 'tanh', got {approximate!r}")
        self.approximate = approximate
    def forward(self, x: Tensor) -> Tensor: return gelu(x, self.approximate)
    def extra_repr(self) -> str: return f"approximate={self.approximate!r}"

class Softmax(Activation):
    "Softmax along `dim`."
    def __init__(self, dim: int = -1):
        super().__init__()
        self.dim = dim
    def forward(self, x: Tensor) -> Tensor: return softmax(x, self.dim)
    def extra_repr(self) -> str: return f"dim={self.dim}"

class LogSoftmax(Activation):
    "Log of softmax along `dim`, by log-sum-exp."
    def __init__(self, dim: int = -1):
        super().__init__()
        self.dim = dim
    def forward(self, x: Tensor) -> Tensor: return log_softmax(x, self.dim)
    def extra_repr(self) -> str: return f"dim={self.dim}"

# %%
x = Tensor([-2., 0., 3.])
test_eq(ReLU()(x).numpy(), [0., 0., 3.])
test_eq(Sigmoid()(x).numpy(), sigmoid(x).numpy())
test_eq(Tanh()(x).numpy(), tanh(x).numpy())
test_eq(GELU('tanh')(x).numpy(), gelu(x, 'tanh').numpy())
test_eq(Softmax(dim=0)(x).numpy(), softmax(x, dim=0).numpy())
test_eq(LogSoftmax()(x).numpy(), log_softmax(x).numpy())
test_eq([repr(m) for m in (ReLU(), GELU('tanh'), Softmax(), LogSoftmax(dim=1))],
        ["ReLU()", "GELU(approximate='tanh')", "Softmax(dim=-1)", "LogSoftmax(dim=1)"])
test_eq(isinstance(ReLU(), Module), True)
test_eq(list(ReLU().parameters()), [])
test_eq(GELU().state_dict(), {})
test_fail(lambda: ReLU()(np.array([1.])), contains="ReLU: expected a Tensor, got ndarray")
test_fail(lambda: GELU('fast'), contains="GELU: approximate must be 'none' or 'tanh', got 'fast'")

# %% [markdown]
# In a model they behave as any other layer: a `Sequential` names them, `eval()` reaches them, a
# forward pre-hook runs before them, and they add no parameters.

# %%
manual_seed(0)
net = Sequential(Linear(4, 8), ReLU(), Linear(8, 2))
test_eq([n for n, _ in net.named_parameters()], ['0.weight', '0.bias', '2.weight', '2.bias'])
test_eq(list(net.state_dict()), ['0.weight', '0.bias', '2.weight', '2.bias'])
test_eq(repr(net),
        "Sequential(\n  (0): Linear(in_features=4, out_features=8, bias=True)\n  (1): ReLU()\n"
                   "  (2): Linear(in_features=8, out_features=2, bias=True)\n)")
test_eq([m.training for m in net.eval().modules()], [False] * 4)
x = randn(3, 4)
test_eq(net(x).numpy(), net[2](np.maximum(net[0](x).numpy(), 0)).numpy())
seen = []
h = net[1].register_forward_pre_hook(lambda m, args: seen.append(args[0].shape))
net(x)
h.remove()
test_eq(seen, [(3, 8)])
blk = Block(fc=Linear(4, 4), act=GELU('tanh'))
test_eq(list(blk._modules), ['fc', 'act'])
test_eq(len(list(blk.parameters())), 2)

# %% [markdown]
# ## Counting parameters and bytes
#
# A `Linear(in, out)` holds `in * out` weights and `out` biases, `(in + 1) * out` parameters in all.
# The classic multilayer perceptron for handwritten digits takes a flattened 784-pixel image through
# widths 256 and 128 to 10 class scores. The counts and float32 bytes below are read from the model
# and checked against the formula. A real classifier puts a `ReLU` between the layers; it holds no
# parameters, so the counts are the same.

# %%
sizes = [784, 256, 128, 10]
mlp = Sequential(*[Linear(i, o) for i, o in zip(sizes[:-1], sizes[1:])])
for name, p in mlp.named_parameters():
    print(f"{name:9} {str(p.shape):11} {p.size:>8,} parameters {p.nbytes:>9,} bytes")
n_params = sum(p.size for p in mlp.parameters())
n_bytes = sum(p.nbytes for p in mlp.parameters())
print(f"total: {n_params:,} parameters, {n_bytes:,} bytes ({n_bytes / 2**20:.2f} MiB) in float32")
print(f"share of the first layer: {sum(p.size for p in mlp[0].parameters()) / n_params:.1%}")
test_eq(n_params, sum((i + 1) * o for i, o in zip(sizes[:-1], sizes[1:])))
test_eq(n_bytes, 4 * n_params)
test_eq(sum(v.nbytes for v in mlp.state_dict().values()), n_bytes)

# %% [markdown]
# The first layer holds most of the parameters because its input is the widest.
#
# Without a nonlinearity between them, stacked `Linear` layers compute one affine map:
# $W = W_3 W_2 W_1$ and $b = W_3 (W_2 b_1 + b_2) + b_3$. The cell builds that single
# `Linear(784, 10)` and compares it with the three-layer stack. Depth adds nothing until a
# nonlinearity such as `ReLU` separates the layers.
#
# The comparison runs in float64, so that a wrong bias or a transposed weight could not hide inside
# the rounding error. The tolerance is the first-order bound for dot products of length $k$,
# $k \epsilon \sum_i |a_i b_i|$, summed over the three layers' lengths and doubled because both
# sides round. `double()` converts a model to float64, as PyTorch's `Module.double` does: every
# parameter is replaced by a float64 copy (one copy for a parameter that several modules share, so
# it stays shared), and every floating-point buffer too. Gradient checks, which need float64, use it
# in later modules.

# %%
#| export
@patch
def double(self: Module) -> Module:
    """Convert every parameter and floating-point buffer to float64 in place, keeping shared
    parameters shared; return `self`."""
    copies = {}  # id of an original parameter -> its float64 copy
    for m in self.modules():
        for name, p in list(m._parameters.items()):
            if p is None: continue
            if id(p) not in copies:
                copies[id(p)] = Parameter(Tensor(p.data, dtype=np.float64),
                                          requires_grad=p.requires_grad)
            setattr(m, name, copies[id(p)])
        for name, b in list(m._buffers.items()):
            if b is not None and b.dtype.kind == 'f':
                setattr(m, name, Tensor(b.data, dtype=np.float64))
    return self

# %%
tied = Sequential(Linear(2, 2), Linear(2, 2))
tied[1].weight = tied[0].weight
tied.double()
test_eq([p.dtype for p in tied.parameters()], [np.float64] * 3)
test_eq(tied[1].weight is tied[0].weight, True)                      # still one shared parameter
mlp.double()
(W1, b1), (W2, b2), (W3, b3) = [(l.weight.numpy(), l.bias.numpy()) for l in mlp]
one = Linear(784, 10).double()
one.load_state_dict({'weight': W3 @ W2 @ W1, 'bias': W3 @ (W2 @ b1 + b2) + b3})
x = randn(8, 784, seed=2, dtype=np.float64)
diff = np.abs(mlp(x).numpy() - one(x).numpy())                                            # (8, 10)
abs_chain = np.abs(x.numpy()) @ np.abs(W1).T + np.abs(b1)                                # (8, 256)
abs_chain = (abs_chain @ np.abs(W2).T + np.abs(b2)) @ np.abs(W3).T + np.abs(b3)          # (8, 10)
tol = 2 * (784 + 256 + 128) * np.finfo(np.float64).eps * abs_chain                         # (8, 10)
print(f"largest difference {diff.max():.1e}, smallest allowed {tol.min():.1e}, largest output "
      f"{np.abs(one(x).numpy()).max():.3f}")
test_eq(one.weight.dtype, np.float64)
test_eq(bool((diff <= tol).all()), True)

# %% [markdown]
# ## Summary
#
# `Module` registers what is assigned to it: `Parameter`s in `_parameters`, submodules in
# `_modules`, and non-learnable state through `register_buffer`. From those dictionaries it derives
# dotted names (`named_parameters`, `named_modules`), the training flag of the whole tree (`train`,
# `eval`), gradient clearing (`zero_grad`), and checkpoints (`state_dict`, and `load_state_dict`,
# which checks every name and shape before it copies anything). `Linear`, `Sequential` and
# `Identity` follow PyTorch's names, weight layout and initialisation, so a model written here reads
# like one written in PyTorch.
