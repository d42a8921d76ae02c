# %%
#| default_exp core.tensor

# %% [markdown]
# # Tensor
#
# > An n-dimensional array on NumPy with room for a gradient: what every later module builds on.

# %% [markdown]
# A `Tensor` wraps a NumPy array (`Tensor.data`) and adds three things NumPy does not have:
# PyTorch's names and type rules, error messages that name the operation and the shapes,
# and a hook through which the autograd module records how each result was computed.
#
# This module covers construction and dtypes, memory layout (strides, views, copies),
# elementwise arithmetic with broadcasting, matrix multiplication, reductions,
# shape operations, indexing, and joining tensors.
# The cells under each exercise test it at once.

# %%
#| export
import contextlib
import numbers

import numpy as np
from fastcore.basics import patch

# %%
#| hide

from fastcore.test import test_eq, test_fail, test_close

from tinytorch.utils.timing import measure

# %% [markdown]
# ## From data to an array
#
# PyTorch's rule for the element type (dtype) is the one we follow:
# floating-point data becomes `float32` unless a dtype is asked for, because float32 halves
# memory against float64 and is accurate enough for training.
# Integer and boolean data keep their type, so an `int8` tensor really stores one byte per element;
# the quantization module depends on that.
#
# Data that is not a rectangular array of numbers is refused with a message that says why.

# %%
#| export
_UNSUPPORTED_KINDS = {'O': 'Python objects', 'U': 'strings', 'S': 'bytes', 'V': 'raw bytes',
                      'M': 'datetimes', 'm': 'timedeltas', 'c': 'complex numbers'}

def _to_array(data,        # nested lists, a scalar or an ndarray
              dtype=None,  # NumPy dtype or its name; None: floats become float32
             ) -> np.ndarray:
    "Convert `data` to an ndarray: floats default to float32, integers and bools keep their type."
    ### BEGIN SOLUTION
    try: arr = np.asarray(data, dtype=dtype)
    except ValueError as e:
        if 'inhomogeneous' not in str(e): raise
        lens = [len(r) if hasattr(r, '__len__') else 'scalar' for r in data]
        raise ValueError(f"Tensor: ragged nested sequence, row lengths "
                         f"{lens} differ ({e})") from None
    if arr.dtype.kind in _UNSUPPORTED_KINDS:
        raise TypeError(f"Tensor: unsupported data of dtype {arr.dtype} "
                        f"({_UNSUPPORTED_KINDS[arr.dtype.kind]}); "
                        "expected numbers or bools")
    if dtype is None and arr.dtype.kind == 'f' and arr.dtype != np.float32:
        arr = arr.astype(np.float32)
    return arr
    ### END SOLUTION

# %%
test_eq(_to_array([1.5, 2]).dtype, np.float32)
test_eq(_to_array(np.ones(3)).dtype, np.float32)            # float64 arrays become float32 too
test_eq(_to_array(np.ones(3), dtype=np.float64).dtype, np.float64)
test_eq(_to_array([1, 2]).dtype, np.int64)
test_eq(_to_array(np.array([1, -2], np.int8)).dtype, np.int8)
test_eq(_to_array(True).shape, ())
test_fail(lambda: _to_array([[1, 2], [3]]), contains="ragged")
test_fail(lambda: _to_array(['a', 'b']), contains="strings")
test_fail(lambda: _to_array([{}, 1]), contains="Python objects")

# %% [markdown]
# ## The Tensor class
#
# The class holds the array and two attributes that stay unused until the autograd module:
# `requires_grad` (should gradients flow to this tensor?) and `grad` (the gradient, once computed).
# `__slots__` keeps each instance small and its attribute access fast, which matters because a
# training step creates thousands of small tensors.
#
# `__array_ufunc__ = None` tells NumPy not to handle `ndarray + Tensor` itself but to defer to
# `Tensor.__radd__`, so mixing the two always gives a Tensor.

# %%
#| export
class Tensor:
    "An n-dimensional array of numbers, wrapping a NumPy array, with room for a gradient."
    __slots__ = ('data', 'requires_grad', 'grad', '_ctx', '__weakref__')
    __array_ufunc__ = None  # ndarray (op) Tensor defers to Tensor's reflected operator

    def __init__(self,
                 data,                # nested lists, a scalar, an ndarray or a Tensor
                 dtype=None,          # NumPy dtype or its name; None: floats become float32
                 requires_grad=False, # record operations for the autograd module?
                ):
        self.data = _to_array(data.data if isinstance(data, Tensor) else data, dtype)
        if requires_grad and self.data.dtype.kind != 'f':
            raise TypeError(f"Tensor: only floating-point tensors can require gradients, got dtype "
                            f"{self.data.dtype}")
        self.requires_grad = requires_grad
        self.grad = None   # filled in by backward() in the autograd module
        self._ctx = None   # how this tensor was computed, recorded by the autograd module

# %% [markdown]
# Like `torch.as_tensor`, the constructor does not copy an ndarray that already has the right dtype:
# the tensor and the array share memory.

# %%
a = np.array([1., 2., 3.], np.float32)
t = Tensor(a)
test_eq(np.shares_memory(t.data, a), True)
test_eq(Tensor([1, 2]).requires_grad, False)
test_fail(lambda: Tensor([1, 2], requires_grad=True), contains="floating-point")

# %% [markdown]
# ### Every op builds its result in one place
#
# Each operation in this module computes a NumPy array and hands it to `Tensor._from_op`, naming the
# op and its input tensors (`parents`), plus any settings the gradient will need (`ctx`, such as the
# axis of a sum). Here it only wraps the array. The autograd module replaces this one function with
# a version that also records `(op, parents, ctx)` on the result when an input requires a gradient,
# and registers a gradient rule per op name. None of the ops below change.
#
# The wrapping skips the checks of `__init__`: it is for arrays an op has just produced, and it is
# on the path of every op, so it does the least it can.

# %%
#| export
def _wrap(data: np.ndarray) -> Tensor:
    "Wrap an ndarray that an op produced, without the checks and conversions of `__init__`."
    t = object.__new__(Tensor)
    t.data = data; t.requires_grad = False; t.grad = None; t._ctx = None
    return t

def _from_op(data: np.ndarray,  # the op's result
             op: str,  # the op's name, e.g. 'add'; autograd looks up its gradient rule by it
             parents: tuple,    # the input Tensors
             **ctx) -> Tensor:  # what the gradient rule needs besides the inputs (axis, shape, ...)
    "Build an op's result. The autograd module replaces this to record the computation graph."
    return _wrap(data)

Tensor._from_op = staticmethod(_from_op)

# %%
t = Tensor._from_op(np.array([1., 2.], np.float32), 'add', ())
test_eq(type(t), Tensor)
test_eq(t._ctx, None)

# %% [markdown]
# `trace_ops()` lists the ops that run inside a `with` block: each op's name and the names of the
# settings it recorded, sorted. The tests under each exercise below use it to check that an op
# records exactly the names its gradient rule will read; a wrong name would otherwise surface only
# in the autograd module.

# %%
#| export
@contextlib.contextmanager
def trace_ops():
    """Context manager yielding a list that receives `(op, ctx names)` for every op built in the
    block."""
    ops, inner = [], Tensor._from_op
    def spy(data, op, parents, **ctx):
        ops.append((op, tuple(sorted(ctx))))
        return inner(data, op, parents, **ctx)
    Tensor._from_op = staticmethod(spy)
    try: yield ops
    finally: Tensor._from_op = staticmethod(inner)

# %%
with trace_ops() as ops: Tensor._from_op(np.zeros(2), 'sum', (), axis=0, keepdims=False)
test_eq(ops, [('sum', ('axis', 'keepdims'))])
test_eq(Tensor._from_op, _from_op)   # restored

# %% [markdown]
# ## Attributes of a tensor
#
# The attributes mirror NumPy's and PyTorch's. Two of them differ between those libraries, and we
# keep both meanings under their own names: `strides` is NumPy's (bytes to step along each axis),
# `stride()` is PyTorch's (elements to step).

# %%
#| export
@patch(as_prop=True)
def shape(self: Tensor) -> tuple:
    "Size along each axis."
    return self.data.shape
@patch(as_prop=True)
def ndim(self: Tensor) -> int:
    "Number of axes."
    return self.data.ndim
@patch(as_prop=True)
def size(self: Tensor) -> int:
    "Number of elements."
    return self.data.size
@patch(as_prop=True)
def dtype(self: Tensor) -> np.dtype:
    "Element type (a NumPy dtype)."
    return self.data.dtype
@patch(as_prop=True)
def nbytes(self: Tensor) -> int:
    "Bytes the elements occupy."
    return self.data.nbytes
@patch(as_prop=True)
def strides(self: Tensor) -> tuple:
    "Bytes to step along each axis (NumPy's meaning)."
    return self.data.strides

# %%
#| export
@patch
def stride(self: Tensor) -> tuple:
    "Steps in elements (not bytes) along each axis, as PyTorch reports them."
    return tuple(s // self.data.itemsize for s in self.data.strides)

@patch
def is_contiguous(self: Tensor) -> bool:
    "Are the elements laid out in memory in row-major (C) order with no gaps?"
    return self.data.flags.c_contiguous

# %%
x = Tensor(np.zeros((2, 3), np.int8))
test_eq((x.shape, x.ndim, x.size, x.dtype, x.nbytes), ((2, 3), 2, 6, np.int8, 6))
test_eq(Tensor(np.zeros((2, 3), np.float32)).strides, (12, 4))
test_eq(Tensor(np.zeros((2, 3), np.float32)).stride(), (3, 1))

# %% [markdown]
# Conversions back to NumPy and Python, and a `repr` in PyTorch's format.
# `numpy()` returns the array itself, not a copy, as in PyTorch.

# %%
#| export
@patch
def numpy(self: Tensor) -> np.ndarray:
    "The underlying ndarray (shared, not copied)."
    return self.data

@patch
def __array__(self: Tensor, dtype=None, copy=None) -> np.ndarray:
    "Let `np.asarray(t)` see the data."
    return self.data if dtype is None else self.data.astype(dtype)

@patch
def item(self: Tensor):
    "The single element as a Python number."
    if self.data.size != 1:
        raise ValueError(f"item: tensor of shape {self.shape} has {self.size} elements, not 1")
    return self.data.item()

@patch
def __len__(self: Tensor) -> int:
    "Size of the first axis."
    if self.data.ndim == 0: raise TypeError("len() of a 0-d tensor")
    return self.data.shape[0]

@patch
def __bool__(self: Tensor) -> bool:
    "Truth value of a one-element tensor."
    if self.data.size != 1:
        raise ValueError(f"bool: truth value of a tensor of shape {self.shape} is ambiguous")
    return bool(self.data)

# %%
#| export
@patch
def __repr__(self: Tensor) -> str:
    "`tensor([...])` in PyTorch's format; the dtype is shown unless it is the default."
    body = np.array2string(self.data, separator=', ', prefix='tensor(')
    extra = '' if self.dtype in (np.float32, np.int64, np.bool_) else f", dtype={self.dtype}"
    if self.requires_grad: extra += ", requires_grad=True"
    return f"tensor({body}{extra})"

# %%
test_eq(repr(Tensor([[1., 2.], [3., 4.]])), "tensor([[1., 2.],\n        [3., 4.]])")
test_eq(repr(Tensor([1, 2], dtype='int8')), "tensor([1, 2], dtype=int8)")
test_eq(repr(Tensor(2., requires_grad=True)), "tensor(2., requires_grad=True)")
test_eq(Tensor([[7]]).item(), 7)
test_eq(len(Tensor(np.zeros((4, 2)))), 4)
test_fail(lambda: Tensor([1, 2]).item(), contains="2 elements")
test_fail(lambda: len(Tensor(1.)), contains="0-d")

# %% [markdown]
# ## Creating tensors
#
# `zeros`, `ones`, `rand` and `randn` take the shape as separate integers or one tuple, as in
# PyTorch. Random draws come from a NumPy `Generator`. Pass `seed` as an int or a `Generator` to
# control it; without one they use a module-wide generator that `manual_seed` resets, so a script
# that calls `manual_seed(0)` first gives the same numbers on every run.

# %%
#| export
_rng = np.random.default_rng(0)

def manual_seed(seed: int) -> None:
    "Reset the module-wide random generator, as `torch.manual_seed` does."
    global _rng
    _rng = np.random.default_rng(seed)

def _shape_arg(shape) -> tuple:
    "Accept `f(2, 3)` and `f((2, 3))` alike."
    one_sequence = len(shape) == 1 and isinstance(shape[0], (tuple, list))  # zeros((2, 3))
    return tuple(shape[0]) if one_sequence else tuple(shape)

def _generator(seed) -> np.random.Generator:
    "The generator that `seed` (None, an int or a Generator) stands for."
    if seed is None: return _rng
    if isinstance(seed, np.random.Generator): return seed
    return np.random.default_rng(seed)

# %%
#| export
def zeros(*shape, dtype=np.float32) -> Tensor:
    "A tensor of zeros."
    return _wrap(np.zeros(_shape_arg(shape), dtype))

def ones(*shape, dtype=np.float32) -> Tensor:
    "A tensor of ones."
    return _wrap(np.ones(_shape_arg(shape), dtype))

def rand(*shape, seed=None, dtype=np.float32) -> Tensor:
    """Uniform samples on [0, 1); `seed` is an int, a `np.random.Generator` or None (the module
    generator)."""
    return _wrap(_generator(seed).random(_shape_arg(shape), dtype=dtype))

def randn(*shape, seed=None, dtype=np.float32) -> Tensor:
    """Standard normal samples; `seed` is an int, a `np.random.Generator` or None (the module
    generator)."""
    return _wrap(_generator(seed).standard_normal(_shape_arg(shape), dtype=dtype))

# %%
test_eq(zeros(2, 3).shape, (2, 3))
test_eq(ones((2, 3), dtype=np.int8).dtype, np.int8)
test_eq(randn(3, seed=1).numpy(), randn(3, seed=1).numpy())           # same seed, same numbers
test_eq(randn(1000, seed=1).dtype, np.float32)
g = np.random.default_rng(5)
test_eq(rand(4, seed=g).shape, (4,))
manual_seed(3); a = randn(5).numpy()
manual_seed(3); test_eq(randn(5).numpy(), a)
# std of 1e5 samples: error ~ 1/sqrt(2e5)
test_close(randn(100_000, seed=0).numpy().std(), 1.0, eps=0.01)

# %% [markdown]
# ## Memory layout: strides, views and copies
#
# An ndarray is a flat block of memory plus a shape and strides. The element at index
# $(i, j)$ of a 2-D array lives at byte offset $i \cdot s_0 + j \cdot s_1$.
# A row-major (C-contiguous) array of shape $(R, C)$ and 4-byte elements has strides $(4C, 4)$:
# stepping along a row moves 4 bytes, stepping down a column moves a whole row.
#
# Transposing swaps the strides and moves no data; the result is a *view* of the same memory
# that is no longer contiguous. Basic slicing also gives views.

# %%
x = Tensor(np.arange(12, dtype=np.float32).reshape(3, 4))
xt = Tensor(x.data.T)
print(f"x:   shape {x.shape}, strides {x.strides} bytes, contiguous {x.is_contiguous()}")
print(f"x.T: shape {xt.shape}, strides {xt.strides} bytes, contiguous {xt.is_contiguous()}")
test_eq(xt.strides, x.strides[::-1])
test_eq(np.shares_memory(x.data, xt.data), True)

# %% [markdown]
# Strides explain why the direction of a loop matters. Summing a large float32 array one row at a
# time reads consecutive bytes; summing it one column at a time jumps a full row between elements,
# so each 64-byte cache line fetched from memory serves one 4-byte element instead of sixteen.
#
# Timing protocol, here and in every module: `measure` from `tinytorch.utils.timing` (the timing
# notebook) makes one warm-up call, then 5 samples of `number` calls each, and reports the median
# seconds per call.

# %%
n = 2048
# 16 MiB, larger than the caches
big = np.random.default_rng(0).standard_normal((n, n), dtype=np.float32)
by_rows = measure(lambda: [big[i, :].sum() for i in range(n)], number=3, repeats=5).median
by_cols = measure(lambda: [big[:, j].sum() for j in range(n)], number=3, repeats=5).median
print(f"{n}x{n} float32, strides {big.strides}: row-wise {by_rows*1e3:.1f} ms, "
      f"column-wise {by_cols*1e3:.1f} ms, column/row = {by_cols/by_rows:.1f}x")

# %% [markdown]
# The ratio printed above depends on the machine's caches; column-wise traversal is slower wherever
# a cache line holds more than one element.

# %% [markdown]
# ## Elementwise arithmetic and broadcasting
#
# Binary operators follow NumPy's broadcasting rule: shapes are aligned from the right, and each
# pair of sizes must be equal or contain a 1, which is stretched without copying. `(3, 1) + (4,)`
# gives `(3, 4)`.
#
# For the result dtype we follow PyTorch, which differs from NumPy in two places: a Python scalar
# takes the tensor's dtype (`int8_tensor + 1` stays int8), and float64 appears only when an input is
# float64 (`int_tensor / 2` and `float32 + int64` give float32, where NumPy gives float64).

# %%
#| export
def _lift(x, like: Tensor) -> Tensor:
    "Return `x` as a Tensor; a Python scalar takes `like`'s dtype where its value fits it."
    if isinstance(x, Tensor): return x
    if isinstance(x, numbers.Number) and not isinstance(x, np.generic):
        # NumPy 2: a Python scalar does not widen the array's dtype
        dt = np.result_type(like.data, x)
        if dt == np.float64 and like.data.dtype != np.float64: dt = np.float32
        try: return _wrap(np.asarray(x, dt))
        except OverflowError:
            raise OverflowError(f"scalar {x} does not fit in tensor dtype {like.dtype}") from None
    return Tensor(x)

def _op_error(op: str, e: ValueError, a: Tensor, b: Tensor) -> ValueError:
    """The error to raise when NumPy's `fn(a, b)` raised `e`: name the op, and the shapes if they do
    not broadcast."""
    if 'broadcast' in str(e):
        return ValueError(f"{op}: shapes {a.shape} and {b.shape} do not broadcast")
    return ValueError(f"{op}: {e} (shapes {a.shape} and {b.shape}, dtypes {a.dtype} and {b.dtype})")

_F64 = np.dtype(np.float64)

def _fix_float(out: np.ndarray, *inputs: np.ndarray) -> np.ndarray:
    "Keep float64 out of results unless an input was float64."
    if out.dtype is _F64 and all(i.dtype != _F64 for i in inputs): return out.astype(np.float32)
    return out  # `is` first: a cheap test that almost every result fails

# %%
test_eq(_lift(1, Tensor(np.zeros(2, np.int8))).dtype, np.int8)
test_eq(_lift(0.5, Tensor([1, 2])).dtype, np.float32)
test_eq(_lift(0.5, Tensor(np.zeros(2), dtype=np.float64)).dtype, np.float64)
test_fail(lambda: _lift(300, Tensor(np.zeros(2, np.int8))), contains="does not fit")
test_eq(_fix_float(np.zeros(2), np.zeros(2, np.int64)).dtype, np.float32)

# %% [markdown]
# All binary ops go through one helper, which lifts the other operand, applies the NumPy function,
# and names the op if the shapes do not broadcast.

# %%
#| export
def _binary(a: Tensor, b, op: str, fn) -> Tensor:
    "Apply the NumPy binary function `fn` to `a` and `b` with broadcasting; record it as `op`."
    if not isinstance(b, Tensor): b = _lift(b, a)
    # Set `out` to fn's result; if NumPy raises a ValueError, raise `_op_error(op, e, a, b)`
    # instead.
    ### BEGIN SOLUTION
    try: out = fn(a.data, b.data)
    except ValueError as e: raise _op_error(op, e, a, b) from None
    ### END SOLUTION
    # the dtype test inline: it runs on every op
    if out.dtype is _F64: out = _fix_float(out, a.data, b.data)
    return Tensor._from_op(out, op, (a, b))

# %%
#| export
@patch
def __add__(self: Tensor, other) -> Tensor:
    "`self + other`, broadcasting."
    return _binary(self, other, 'add', np.add)
@patch
def __radd__(self: Tensor, other) -> Tensor:
    "`other + self`."
    return _binary(_lift(other, self), self, 'add', np.add)
@patch
def __sub__(self: Tensor, other) -> Tensor:
    "`self - other`, broadcasting."
    return _binary(self, other, 'sub', np.subtract)
@patch
def __rsub__(self: Tensor, other) -> Tensor:
    "`other - self`."
    return _binary(_lift(other, self), self, 'sub', np.subtract)
@patch
def __mul__(self: Tensor, other) -> Tensor:
    "`self * other`, broadcasting."
    return _binary(self, other, 'mul', np.multiply)
@patch
def __rmul__(self: Tensor, other) -> Tensor:
    "`other * self`."
    return _binary(_lift(other, self), self, 'mul', np.multiply)
@patch
def __truediv__(self: Tensor, other) -> Tensor:
    "`self / other`, broadcasting; integer inputs give float32."
    return _binary(self, other, 'div', np.true_divide)
@patch
def __rtruediv__(self: Tensor, other) -> Tensor:
    "`other / self`."
    return _binary(_lift(other, self), self, 'div', np.true_divide)
@patch
def __pow__(self: Tensor, other) -> Tensor:
    "`self ** other`, broadcasting."
    return _binary(self, other, 'pow', np.power)
@patch
def __rpow__(self: Tensor, other) -> Tensor:
    "`other ** self`."
    return _binary(_lift(other, self), self, 'pow', np.power)

# %%
a = Tensor([[1.], [2.], [3.]])                  # (3, 1)
b = Tensor([10., 20., 30., 40.])                # (4,)
test_eq((a + b).shape, (3, 4))
test_eq((a + b).numpy()[2], [13., 23., 33., 43.])
test_eq((2 - a).numpy().ravel(), [1., 0., -1.])
test_eq((a ** 2).numpy().ravel(), [1., 4., 9.])
test_eq((2 ** Tensor([1., 3.])).numpy(), [2., 8.])
test_eq((1 / Tensor([2., 4.])).numpy(), [0.5, 0.25])
# ndarray on the left still gives a Tensor
test_eq((np.array([1., 2.]) * Tensor([3., 4.])).numpy(), [3., 8.])
test_eq(type(np.array([1., 2.]) * Tensor([3., 4.])), Tensor)
with trace_ops() as ops: Tensor([1., 2.]) * 2 - 1
test_eq(ops, [('mul', ()), ('sub', ())])   # the op names the gradient rules are registered under

# %%
i8 = Tensor(np.array([1, 2], np.int8))
test_eq((i8 + 1).dtype, np.int8)                 # scalar takes the tensor's dtype
# true division of ints gives float32, as in PyTorch
test_eq((Tensor([1, 2]) / 2).dtype, np.float32)
test_eq((Tensor([1., 2.]) + Tensor([1, 2])).dtype, np.float32)
test_eq((Tensor([1., 2.], dtype=np.float64) * 2).dtype, np.float64)
test_fail(lambda: Tensor(np.ones((2, 3))) + Tensor(np.ones(4)),
          contains="add: shapes (2, 3) and (4,) do not broadcast")
test_fail(lambda: Tensor([2, 3]) ** -1, contains="pow: Integers to negative integer powers")

# %% [markdown]
# ## Unary math
#
# `exp`, `log`, `sqrt`, `abs`, negation and `clip` apply elementwise. Integer inputs to `exp`, `log`
# and `sqrt` give float32, as in PyTorch. As in NumPy and PyTorch, `log` of a negative number is
# NaN.

# %%
#| export
def _unary(a: Tensor, op: str, fn, **ctx) -> Tensor:
    "Apply the NumPy function `fn` elementwise; record it as `op`."
    return Tensor._from_op(_fix_float(fn(a.data), a.data), op, (a,), **ctx)

@patch
def __neg__(self: Tensor) -> Tensor:
    "`-self`."
    return _unary(self, 'neg', np.negative)
@patch
def exp(self: Tensor) -> Tensor:
    "$e^x$ elementwise."
    return _unary(self, 'exp', np.exp)
@patch
def log(self: Tensor) -> Tensor:
    "Natural logarithm elementwise."
    return _unary(self, 'log', np.log)
@patch
def sqrt(self: Tensor) -> Tensor:
    "Square root elementwise."
    return _unary(self, 'sqrt', np.sqrt)
@patch
def abs(self: Tensor) -> Tensor:
    "Absolute value elementwise."
    return _unary(self, 'abs', np.abs)
@patch
def __abs__(self: Tensor) -> Tensor:
    "`abs(self)`."
    return self.abs()

# %%
#| export
@patch
def clip(self: Tensor, min=None, max=None) -> Tensor:
    "Limit values to [`min`, `max`]; either bound may be None."
    if min is None and max is None:
        raise ValueError("clip: at least one of min and max must be given")
    return _unary(self, 'clip', lambda d: np.clip(d, min, max), min=min, max=max)

# %%
x = Tensor([-1., 0., 4.])
test_eq((-x).numpy(), [1., 0., -4.])
test_eq(abs(x).numpy(), [1., 0., 4.])
test_eq(Tensor([0., 4.]).sqrt().numpy(), [0., 2.])
test_close(Tensor([0., 1.]).exp().numpy(), [1., np.e], eps=1e-6)    # float32 epsilon at e ~ 2.4e-7
test_eq(Tensor([1, 4]).sqrt().dtype, np.float32)
test_eq(x.clip(0., 1.).numpy(), [0., 0., 1.])
test_eq(x.clip(max=0.).numpy(), [-1., 0., 0.])
test_fail(lambda: x.clip(), contains="at least one")

# %% [markdown]
# ## Comparisons
#
# Comparisons give boolean tensors. They have no gradient, so they wrap their result directly
# instead of being recorded as ops. Defining `__eq__` makes Python drop the default hash, so we
# restore hashing by identity, as PyTorch does: tensors can be dictionary keys and set members.

# %%
#| export
def _compare(a: Tensor, b, op: str, fn) -> Tensor:
    "Apply the NumPy comparison `fn`; the result has no gradient, so it is wrapped directly."
    b = _lift(b, a)
    try: return _wrap(fn(a.data, b.data))
    except ValueError as e: raise _op_error(op, e, a, b) from None

@patch
def __eq__(self: Tensor, other) -> Tensor:
    "Elementwise `self == other` as a bool tensor."
    return _compare(self, other, 'eq', np.equal)
@patch
def __ne__(self: Tensor, other) -> Tensor:
    "Elementwise `self != other` as a bool tensor."
    return _compare(self, other, 'ne', np.not_equal)
@patch
def __lt__(self: Tensor, other) -> Tensor:
    "Elementwise `self < other` as a bool tensor."
    return _compare(self, other, 'lt', np.less)
@patch
def __le__(self: Tensor, other) -> Tensor:
    "Elementwise `self <= other` as a bool tensor."
    return _compare(self, other, 'le', np.less_equal)
@patch
def __gt__(self: Tensor, other) -> Tensor:
    "Elementwise `self > other` as a bool tensor."
    return _compare(self, other, 'gt', np.greater)
@patch
def __ge__(self: Tensor, other) -> Tensor:
    "Elementwise `self >= other` as a bool tensor."
    return _compare(self, other, 'ge', np.greater_equal)

Tensor.__hash__ = object.__hash__

# %%
x = Tensor([1., 2., 3.])
test_eq((x > 1.5).numpy(), [False, True, True])
test_eq((x == Tensor([1., 0., 3.])).numpy(), [True, False, True])
test_eq((x <= 2).dtype, np.bool_)
test_eq(len({x, x, Tensor([1.])}), 2)

# %% [markdown]
# ## Matrix multiplication
#
# `a @ b` multiplies the last two axes of each operand and broadcasts the others (batch) axes:
# `(B, n, k) @ (k, m)` gives `(B, n, m)`. A 1-D operand is treated as a vector, as in NumPy.
# The inner dimensions must agree; that check comes first, so the error names the shapes.

# %%
#| export
@patch
def __matmul__(self: Tensor, other) -> Tensor:
    "Matrix product with NumPy's rules for 1-D operands and broadcast batch axes."
    other = _lift(other, self)
    a, b = self.data, other.data
    # Set `out` to the product of `a` and `b`; first check the shapes, naming them in the error.
    ### BEGIN SOLUTION
    if a.ndim == 0 or b.ndim == 0:
        raise ValueError(f"matmul: operands need at least 1 dimension, got {a.shape} @ {b.shape}")
    if a.shape[-1] != b.shape[-2 if b.ndim > 1 else 0]:
        raise ValueError(f"matmul: inner dims differ, {a.shape} @ {b.shape}")
    try: out = _fix_float(np.matmul(a, b), a, b)
    except ValueError:
        raise ValueError(f"matmul: batch dims do not broadcast, {a.shape} @ {b.shape}") from None
    ### END SOLUTION
    return Tensor._from_op(out, 'matmul', (self, other))

@patch
def __rmatmul__(self: Tensor, other) -> Tensor:
    "`other @ self`."
    return _lift(other, self) @ self

# %%
A = Tensor([[1., 2.], [3., 4.]])
test_eq((A @ Tensor([[1.], [1.]])).numpy(), [[3.], [7.]])
test_eq((A @ Tensor([1., 0.])).numpy(), [1., 3.])                      # matrix @ vector
test_eq((randn(5, 2, 3, seed=0) @ randn(3, 4, seed=1)).shape, (5, 2, 4))  # batched
test_eq((randn(5, 2, 3, seed=0) @ randn(5, 3, 4, seed=1)).shape, (5, 2, 4))
test_eq((np.eye(2, dtype=np.float32) @ A).numpy(), A.numpy())
test_fail(lambda: A @ Tensor(np.ones((3, 2))), contains="inner dims differ, (2, 2) @ (3, 2)")
test_fail(lambda: randn(2, 2, 3) @ randn(3, 3, 4), contains="batch dims")
test_fail(lambda: A @ Tensor(2.), contains="at least 1 dimension")
with trace_ops() as ops: Tensor(np.ones((2, 3))) @ Tensor(np.ones((3, 4)))
test_eq(ops, [('matmul', ())])

# %% [markdown]
# A measurement: the matrix product is where the arithmetic lives, so its rate in GFLOP/s ($2nkm$
# floating-point operations for an $(n,k) @ (k,m)$ product) says how fast this machine's BLAS is.

# %%
a, b = randn(512, 512, seed=0), randn(512, 512, seed=1)
t_mm = measure(lambda: a @ b, number=3, repeats=5).median
print(f"(512, 512) @ (512, 512) float32: {t_mm*1e3:.2f} ms, {2 * 512**3 / t_mm / 1e9:.1f} GFLOP/s")

# %% [markdown]
# ## Reductions
#
# `sum`, `mean`, `max` and `min` reduce over `axis` (an int, a tuple of ints, or None for all axes);
# `keepdims=True` keeps each reduced axis with size 1, so the result still broadcasts against the
# input. PyTorch calls the argument `dim` and the flag `keepdim`; we use NumPy's names here. `max`
# returns only the values (NumPy's convention); `argmax` gives the indices. An axis that does not
# exist is an error that names the axis and the shape.

# %%
#| export
def _check_axis(op: str, axis, ndim: int, shape: tuple):
    "Raise a clear error if `axis` (None, int or tuple) does not exist for a tensor of `shape`."
    for ax in (() if axis is None else axis if isinstance(axis, tuple) else (axis,)):
        if not isinstance(ax, (int, np.integer)) or not -ndim <= ax < ndim:
            raise IndexError(f"{op}: axis {ax} out of range for tensor of shape {shape}")

def _reduce(a: Tensor, op: str, fn, axis, keepdims: bool) -> Tensor:
    "Reduce `a` with the NumPy function `fn` over `axis`; record it as `op`."
    # Check the axis (`_check_axis`), refuse max/min of an empty tensor, and set `out` to fn's
    # result array.
    ### BEGIN SOLUTION
    _check_axis(op, axis, a.data.ndim, a.data.shape)
    if a.data.size == 0 and op in ('max', 'min'):
        raise ValueError(f"{op}: tensor of shape {a.shape} is empty")
    out = _fix_float(np.asarray(fn(a.data, axis=axis, keepdims=keepdims)), a.data)
    ### END SOLUTION
    return Tensor._from_op(out, op, (a,), axis=axis, keepdims=keepdims)

# %%
#| export
@patch
def sum(self: Tensor, axis=None, keepdims=False) -> Tensor:
    "Sum over `axis` (all axes when None)."
    return _reduce(self, 'sum', np.sum, axis, keepdims)
@patch
def mean(self: Tensor, axis=None, keepdims=False) -> Tensor:
    "Mean over `axis` (all axes when None)."
    return _reduce(self, 'mean', np.mean, axis, keepdims)
@patch
def max(self: Tensor, axis=None, keepdims=False) -> Tensor:
    "Maximum over `axis`; the values only, as in NumPy."
    return _reduce(self, 'max', np.max, axis, keepdims)
@patch
def min(self: Tensor, axis=None, keepdims=False) -> Tensor:
    "Minimum over `axis`; the values only, as in NumPy."
    return _reduce(self, 'min', np.min, axis, keepdims)

@patch
def argmax(self: Tensor, axis=None, keepdims=False) -> Tensor:
    "Indices of the maxima (int64); over the flattened tensor when `axis` is None."
    _check_axis('argmax', axis, self.data.ndim, self.data.shape)
    if isinstance(axis, tuple): raise TypeError(f"argmax: axis must be an int or None, got {axis}")
    return _wrap(np.asarray(np.argmax(self.data, axis=axis, keepdims=keepdims)))

# %%
x = Tensor([[1., 5., 3.], [4., 2., 6.]])     # (2, 3)
test_eq(x.sum().item(), 21.)
test_eq(x.sum(axis=0).numpy(), [5., 7., 9.])
test_eq(x.sum(axis=1, keepdims=True).shape, (2, 1))
test_eq(x.mean(axis=(0, 1)).item(), 3.5)
test_eq(x.max(axis=1).numpy(), [5., 6.])
test_eq(x.min(axis=-1).numpy(), [1., 2.])
test_eq(x.argmax(axis=1).numpy(), [1, 2])
test_eq(x.argmax().item(), 5)
test_eq(Tensor([1, 2]).mean().dtype, np.float32)
# integer sums widen, as in NumPy and PyTorch
test_eq(Tensor(np.ones(3, np.int8)).sum().dtype, np.int64)
test_fail(lambda: x.sum(axis=2), contains="axis 2 out of range for tensor of shape (2, 3)")
test_fail(lambda: x.max(axis=(0, -3)), contains="axis -3")
test_fail(lambda: zeros(0).max(), contains="empty")
with trace_ops() as ops: Tensor(np.ones((2, 3))).max(axis=1, keepdims=True)
test_eq(ops, [('max', ('axis', 'keepdims'))])

# %% [markdown]
# ## Shape operations
#
# `reshape` gives the same elements in row-major order under a new shape; one size may be `-1` and
# is inferred. It returns a view when the strides allow it and a copy otherwise. `view` is the
# strict form from PyTorch: it never copies, and refuses a tensor whose layout would need one, such
# as a transpose. `flatten`, `squeeze` and `unsqueeze` are reshapes with the new shape worked out
# for you, so they share the one gradient rule of `reshape`.

# %%
#| export
@patch
def reshape(self: Tensor, *shape) -> Tensor:
    "The same elements in row-major order under a new `shape` (one size may be -1)."
    shape = _shape_arg(shape)
    # Set `out` to the data under `shape`; a size mismatch names both shapes.
    ### BEGIN SOLUTION
    try: out = self.data.reshape(shape)
    except ValueError: raise ValueError(f"reshape: cannot reshape tensor of shape {self.shape} "
                                        f"({self.size} elements) into {shape}") from None
    ### END SOLUTION
    return Tensor._from_op(out, 'reshape', (self,))

@patch
def view(self: Tensor, *shape) -> Tensor:
    "Like `reshape`, but never copies: raises if the layout of the data would need a copy."
    shape = _shape_arg(shape)
    try: out = np.reshape(self.data, shape, copy=False)
    except ValueError as e:
        if 'copy' not in str(e): raise ValueError(f"view: cannot view tensor of shape {self.shape} "
                                                  f"({self.size} elements) as {shape}") from None
        raise ValueError(f"view: tensor of shape {self.shape} with strides {self.stride()} is "
                         f"not contiguous "
                         f"enough to view as {shape}; use reshape, which copies") from None
    return Tensor._from_op(out, 'reshape', (self,))

# %%
x = Tensor(np.arange(6, dtype=np.float32))
test_eq(x.reshape(2, 3).shape, (2, 3))
test_eq(x.reshape((3, -1)).shape, (3, 2))
# reshape of contiguous data is a view
test_eq(np.shares_memory(x.reshape(2, 3).data, x.data), True)
test_eq(x.view(3, 2).numpy()[2], [4., 5.])
test_fail(lambda: x.reshape(4, 2),
          contains="cannot reshape tensor of shape (6,) (6 elements) into (4, 2)")
test_fail(lambda: x.view(4, 2), contains="cannot view tensor of shape (6,)")
test_fail(lambda: Tensor(x.reshape(2, 3).data.T).view(6), contains="not contiguous")
test_eq(Tensor(x.reshape(2, 3).data.T).reshape(6).numpy(), [0., 3., 1., 4., 2., 5.])
with trace_ops() as ops: Tensor(np.ones(6)).reshape(2, 3)
test_eq(ops, [('reshape', ())])

# %%
#| export
@patch
def flatten(self: Tensor, start_dim=0, end_dim=-1) -> Tensor:
    "Merge axes `start_dim`..`end_dim` into one."
    if self.ndim == 0: return self.reshape(1)
    _check_axis('flatten', (start_dim, end_dim), self.ndim, self.shape)
    s, e = start_dim % self.ndim, end_dim % self.ndim
    return self.reshape(self.shape[:s] + (-1,) + self.shape[e + 1:])

@patch
def squeeze(self: Tensor, dim=None) -> Tensor:
    "Drop axes of size 1 (only `dim`, if given and of size 1)."
    if dim is None: return self.reshape(tuple(n for n in self.shape if n != 1))
    _check_axis('squeeze', dim, self.ndim, self.shape)
    if self.shape[dim] != 1: return self
    d = dim % self.ndim
    return self.reshape(self.shape[:d] + self.shape[d + 1:])

@patch
def unsqueeze(self: Tensor, dim: int) -> Tensor:
    "Insert an axis of size 1 at `dim`."
    _check_axis('unsqueeze', dim, self.ndim + 1, self.shape)
    d = dim % (self.ndim + 1)
    return self.reshape(self.shape[:d] + (1,) + self.shape[d:])

# %%
x = zeros(2, 1, 3, 4)
test_eq(x.flatten().shape, (24,))
test_eq(x.flatten(1).shape, (2, 12))
test_eq(x.flatten(1, 2).shape, (2, 3, 4))
test_eq(x.squeeze().shape, (2, 3, 4))
test_eq(x.squeeze(1).shape, (2, 3, 4))
test_eq(x.squeeze(0).shape, (2, 1, 3, 4))
test_eq(x.unsqueeze(0).shape, (1, 2, 1, 3, 4))
test_eq(x.unsqueeze(-1).shape, (2, 1, 3, 4, 1))
test_fail(lambda: x.unsqueeze(6), contains="axis 6 out of range")

# %% [markdown]
# `permute` reorders all axes; `transpose(dim0, dim1)` swaps two; `T` reverses all of them, as in
# NumPy. All three are one op, a permutation of the strides, and return views.

# %%
#| export
@patch
def permute(self: Tensor, *dims) -> Tensor:
    "Reorder the axes: axis `i` of the result is axis `dims[i]` of the input."
    dims = _shape_arg(dims)
    # Check that `dims` is a permutation, make it non-negative (it is recorded), and set `out`.
    ### BEGIN SOLUTION
    if (sorted(d % max(self.ndim, 1) for d in dims) != list(range(self.ndim))
            or len(dims) != self.ndim):
        raise ValueError(f"permute: {dims} is not a permutation of the {self.ndim} axes of "
                         f"shape {self.shape}")
    dims = tuple(d % self.ndim for d in dims)
    out = self.data.transpose(dims)
    ### END SOLUTION
    return Tensor._from_op(out, 'permute', (self,), dims=dims)

@patch
def transpose(self: Tensor, dim0: int, dim1: int) -> Tensor:
    "Swap axes `dim0` and `dim1`."
    _check_axis('transpose', (dim0, dim1), self.ndim, self.shape)
    dims = list(range(self.ndim))
    dims[dim0], dims[dim1] = dims[dim1], dims[dim0]
    return self.permute(dims)

@patch(as_prop=True)
def T(self: Tensor) -> Tensor:
    "All axes reversed, as NumPy's `.T`."
    return self.permute(tuple(range(self.ndim))[::-1])

# %%
x = Tensor(np.arange(24, dtype=np.float32).reshape(2, 3, 4))
test_eq(x.permute(2, 0, 1).shape, (4, 2, 3))
test_eq(x.permute(2, 0, 1).numpy(), np.transpose(x.numpy(), (2, 0, 1)))
test_eq(x.transpose(0, 2).shape, (4, 3, 2))
test_eq(x.transpose(-1, -2).numpy(), np.swapaxes(x.numpy(), -1, -2))
test_eq(x.T.shape, (4, 3, 2))
test_eq(x.T.is_contiguous(), False)
test_fail(lambda: x.permute(0, 1), contains="not a permutation")
test_fail(lambda: x.permute(0, 1, 1), contains="not a permutation")
test_fail(lambda: x.transpose(0, 3), contains="axis 3 out of range")
with trace_ops() as ops: Tensor(np.ones((2, 3))).permute(-1, 0)
test_eq(ops, [('permute', ('dims',))])

# %% [markdown]
# ## Indexing and slicing
#
# Indexing follows NumPy: integers and slices (basic indexing) give views; integer arrays and
# boolean masks (advanced indexing) give copies. Index tensors are accepted wherever index arrays
# are. The index is recorded as `key=` in the op's context, because the gradient of `x[key]`
# scatters back into the positions `key` chose.

# %%
#| export
def _index_key(key):
    "Replace Tensors in an index by their arrays."
    if isinstance(key, Tensor): return key.data
    if isinstance(key, tuple): return tuple(k.data if isinstance(k, Tensor) else k for k in key)
    return key

@patch
def __getitem__(self: Tensor, key) -> Tensor:
    "Index like NumPy; the index may contain Tensors."
    key = _index_key(key)
    # Set `out` to the indexed data as an array; an IndexError names the tensor's shape.
    ### BEGIN SOLUTION
    try: out = np.asarray(self.data[key])
    except IndexError as e: raise IndexError(f"getitem: {e} (tensor shape {self.shape})") from None
    ### END SOLUTION
    return Tensor._from_op(out, 'getitem', (self,), key=key)

# %%
x = Tensor(np.arange(12, dtype=np.float32).reshape(3, 4))
test_eq(x[1].numpy(), [4., 5., 6., 7.])
test_eq(x[:, 1].numpy(), [1., 5., 9.])
test_eq(x[1, 2].item(), 6.)
test_eq(x[Tensor([2, 0])].shape, (2, 4))
test_eq(x[x > 9].numpy(), [10., 11.])
test_eq(np.shares_memory(x[1:].data, x.data), True)      # slice: a view
test_eq(np.shares_memory(x[[0, 1]].data, x.data), False)  # index array: a copy
test_eq([r.shape for r in x], [(4,)] * 3)                 # iteration runs over the first axis
test_fail(lambda: x[3], contains="tensor shape (3, 4)")
with trace_ops() as ops: Tensor(np.ones((2, 3)))[0, 1:]
test_eq(ops, [('getitem', ('key',))])

# %% [markdown]
# ## Joining tensors
#
# `cat` joins tensors along an existing axis; `stack` joins them along a new one. All sizes except
# along `dim` must agree (for `stack`, all of them).

# %%
#| export
def cat(tensors: list, dim: int = 0) -> Tensor:
    "Concatenate `tensors` along the existing axis `dim`."
    if not tensors: raise ValueError("cat: expected a non-empty list of tensors")
    tensors = tuple(t if isinstance(t, Tensor) else Tensor(t) for t in tensors)
    # Check `dim`, then set `out` to the joined arrays; sizes that differ outside `dim` are an
    # error.
    ### BEGIN SOLUTION
    _check_axis('cat', dim, tensors[0].ndim, tensors[0].shape)
    arrays = [t.data for t in tensors]
    try: out = _fix_float(np.concatenate(arrays, axis=dim), *arrays)
    except ValueError:
        raise ValueError(f"cat: shapes {[a.shape for a in arrays]} differ "
                         f"outside dim {dim}") from None
    ### END SOLUTION
    return Tensor._from_op(out, 'cat', tensors, dim=dim)

def stack(tensors: list, dim: int = 0) -> Tensor:
    "Join equally shaped `tensors` along a new axis `dim`."
    if not tensors: raise ValueError("stack: expected a non-empty list of tensors")
    shapes = [tuple(t.shape) if isinstance(t, Tensor) else np.shape(t) for t in tensors]
    if len(set(shapes)) > 1: raise ValueError(f"stack: shapes {shapes} differ")
    _check_axis('stack', dim, len(shapes[0]) + 1, shapes[0])
    return cat([(t if isinstance(t, Tensor) else Tensor(t)).unsqueeze(dim) for t in tensors], dim)

# %%
a, b = ones(2, 3), zeros(1, 3)
test_eq(cat([a, b]).shape, (3, 3))
test_eq(cat([a, ones(2, 1)], dim=1).shape, (2, 4))
test_eq(cat([a, ones(2, 3, dtype=np.int64)]).dtype, np.float32)
test_eq(stack([a, a]).shape, (2, 2, 3))
test_eq(stack([a, a], dim=-1).shape, (2, 3, 2))
test_eq(stack([Tensor([1, 2]), Tensor([3, 4])], dim=1).numpy(), [[1, 3], [2, 4]])
test_fail(lambda: cat([a, ones(2, 2)]),
          contains="cat: shapes [(2, 3), (2, 2)] differ outside dim 0")
test_fail(lambda: stack([a, b]), contains="stack: shapes [(2, 3), (1, 3)] differ")
test_fail(lambda: cat([]), contains="non-empty")
test_fail(lambda: cat([a, a], dim=2), contains="axis 2 out of range")
with trace_ops() as ops: cat([Tensor([1.]), Tensor([2.])])
test_eq(ops, [('cat', ('dim',))])

# %% [markdown]
# ## What a tensor costs
#
# Each op above adds a little Python work around a NumPy call: lifting the operand, checking the
# dtype, building the result. For large arrays this is invisible; for small ones it dominates. The
# measurement below prints both, with this module's timing protocol (median of 5 repetitions).

# %%
for n in (100, 1_000_000):
    xa, ya = np.ones(n, np.float32), np.ones(n, np.float32)
    xt, yt = Tensor(xa), Tensor(ya)
    k = 20_000 if n == 100 else 20
    t_np = measure(lambda: xa + ya, number=k, repeats=5).median
    t_tt = measure(lambda: xt + yt, number=k, repeats=5).median
    print(f"add on {n:>9,} float32 elements: NumPy {t_np*1e6:8.2f} us, Tensor {t_tt*1e6:8.2f} us, "
          f"Tensor/NumPy {t_tt / t_np:.2f}x")

# %% [markdown]
# ## Summary
#
# `Tensor` wraps an ndarray and follows PyTorch's names and dtype rules. Every differentiable op
# builds its result in one place that names the op, its input tensors and the settings its gradient
# needs (`ctx`); the autograd module extends that one function, and adds `backward`, without
# touching the ops defined here.
