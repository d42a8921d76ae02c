# %%
#| default_exp data.loader

# %% [markdown]
# # Data loading
#
# > Data sets, mini-batches, batch augmentation, and image data sets checked against their SHA-256.

# %% [markdown]
# A training loop wants one thing from the data: a sequence of mini-batches `(x, y)`, in a new
# random order every epoch. This module builds that in three layers, named as in PyTorch. A
# `Dataset` answers `len(ds)` and `ds[i]`. A `DataLoader` draws the indices of an epoch, collates
# the examples of each batch into arrays, applies a batch transform to `x`, and hands out Tensors.
# The transforms (`Normalize`, `RandomCrop`, `RandomHorizontalFlip`) work on a whole `(N, C, H, W)`
# batch at once, as array operations.
#
# The second half reads real data: the digits shipped with the package, MNIST, Fashion-MNIST and
# CIFAR-10. Their files are parsed from the published binary formats (IDX, and CIFAR-10's binary
# records), looked up in a fixed order of folders, and downloaded only when no folder has them.
# Every file is checked against a published SHA-256 before it is used. The module ends by measuring
# the pipeline against a training step.

# %%
#| export
import contextlib
import gzip
import hashlib
import http.client
import math
import numbers
import os
import struct
import tarfile
import tempfile
import urllib.request
import warnings
import zlib
from dataclasses import dataclass
from importlib.resources import files
from pathlib import Path, PurePosixPath

import numpy as np
from fastcore.basics import patch
from numpy.lib.stride_tricks import sliding_window_view

from tinytorch.core.tensor import Tensor, _generator

# %%
#| hide
import io

import matplotlib.pyplot as plt
from fastcore.test import test_eq, test_fail, test_close, test_ne

from tinytorch.core.tensor import manual_seed
from tinytorch.core.activations import ReLU
from tinytorch.core.layers import Linear, Sequential
from tinytorch.core.losses import CrossEntropyLoss
from tinytorch.core.optimizers import SGD, Adam
from tinytorch.core.training import Trainer
from tinytorch.utils.timing import Timer, blas_threads, compare

# %% [markdown]
# ## Data sets
#
# A map-style data set is anything with `__len__` and `__getitem__`: example `i` is `ds[i]`, usually
# a tuple `(x, y)`. `Dataset` is the base class that says so. The most common one holds its examples
# as rows of arrays: `TensorDataset(X, y)` returns `(X[i], y[i])`. It keeps NumPy arrays (Tensors
# are unwrapped), because the loader below indexes them directly.

# %%
#| export
class Dataset:
    "A map-style data set: `len(ds)` examples, the `i`-th is `ds[i]` (usually a tuple `(x, y)`)."
    def __len__(self) -> int:
        raise NotImplementedError(f"{type(self).__name__}: a Dataset subclass must define __len__")
    def __getitem__(self, index):
        raise NotImplementedError(f"{type(self).__name__}: a Dataset subclass must define "
                                  f"__getitem__")

class TensorDataset(Dataset):
    "Examples that are rows of arrays or Tensors of one first dimension: `ds[i]` is `(a[i], ...)`."
    def __init__(self, *tensors):
        if not tensors: raise ValueError("TensorDataset: needs at least one array")
        arrays = tuple(t.data if isinstance(t, Tensor) else np.asarray(t) for t in tensors)
        if any(a.ndim == 0 for a in arrays):
            raise ValueError(f"TensorDataset: every array needs a first dimension, got shapes "
                             f"{[a.shape for a in arrays]}")
        if len({len(a) for a in arrays}) > 1:
            raise ValueError(f"TensorDataset: first dimensions differ, shapes "
                             f"{[a.shape for a in arrays]}")
        self.tensors = arrays   # ndarrays, under PyTorch's attribute name
    def __len__(self) -> int: return len(self.tensors[0])
    def __getitem__(self, index): return tuple(a[index] for a in self.tensors)

# %%
ds = TensorDataset(np.arange(6).reshape(3, 2), Tensor([10, 11, 12]))
test_eq(len(ds), 3)
x1, y1 = ds[1]
test_eq((x1.tolist(), int(y1)), ([2, 3], 11))
test_fail(lambda: TensorDataset(np.zeros((3, 2)), np.zeros(4)),
          contains="first dimensions differ, shapes [(3, 2), (4,)]")
test_fail(lambda: TensorDataset(np.float32(1)), contains="needs a first dimension")
test_fail(lambda: len(Dataset()), contains="Dataset subclass must define __len__")

# %% [markdown]
# ## Collating a batch
#
# A batch of examples is a list of tuples; the model wants one array per field. `default_collate`
# transposes the list field by field and stacks each field along a new first axis: `[(x0, y0), (x1,
# y1)]` becomes `(stack([x0, x1]), stack([y0, y1]))`. Numbers become 1-D arrays, arrays gain an
# axis, and examples of different shapes are an error that lists the shapes.

# %%
#| export
def default_collate(batch: list):
    "Stack a list of examples into arrays, tuples field by field, along a new first axis."
    first = batch[0]
    if isinstance(first, (tuple, list)):
        if any(len(s) != len(first) for s in batch):
            raise ValueError(f"default_collate: examples have different numbers of fields "
                             f"{sorted({len(s) for s in batch})}")
        return tuple(default_collate([s[i] for s in batch]) for i in range(len(first)))
    if isinstance(first, Tensor): batch = [s.data for s in batch]
    elif not isinstance(first, (np.ndarray, np.generic, numbers.Number)):
        raise TypeError(f"default_collate: cannot batch a {type(first).__name__}; pass collate_fn= "
                        f"to the DataLoader")
    shapes = {np.shape(s) for s in batch}
    if len(shapes) > 1: raise ValueError(f"default_collate: examples differ in shape, "
                                         f"{sorted(shapes)}")
    return np.stack(batch)

# %%
xb, yb = default_collate([(np.array([1., 2.]), 0), (np.array([3., 4.]), 1)])
test_eq((xb.tolist(), yb.tolist()), ([[1., 2.], [3., 4.]], [0, 1]))
test_eq(default_collate([Tensor([1., 2.]), Tensor([3., 4.])]).shape, (2, 2))
test_fail(lambda: default_collate([np.zeros(2), np.zeros(3)]),
          contains="differ in shape, [(2,), (3,)]")
test_fail(lambda: default_collate(['a', 'b']), contains="cannot batch a str")

# %% [markdown]
# ## The DataLoader
#
# An epoch is a permutation of the `n` indices cut into pieces of `batch_size`; the last piece is
# shorter unless `drop_last` drops it, so there are $\lceil n / b \rceil$ batches, or $\lfloor n / b
# \rfloor$. The permutation comes from one NumPy `Generator` made once, when the loader is made:
# each epoch draws the next permutation from it, so the epochs differ, and two loaders with the same
# `seed` give the same sequence of epochs. With `seed=None` the loader draws from the tensor
# module's generator, the one `manual_seed` resets, so one `manual_seed` call makes a whole run
# (weights and order) repeat.
#
# Each batch then goes through three steps: fetch the examples, apply `transform` to the first field
# (`x`, an ndarray), and wrap every array in a `Tensor`. For a `TensorDataset` the fetch is one
# fancy index per array, `X[idx]`, instead of `len(idx)` calls to `__getitem__` and a stack; the
# section on measurement shows what that saves.

# %%
#| export
class DataLoader:
    "Re-iterable mini-batches of `dataset` as Tensors, in a new order each epoch if `shuffle`."
    def __init__(self, dataset,                 # anything with __len__ and __getitem__
                 batch_size: int = 1,
                 shuffle: bool = False,         # a new permutation every epoch
                 drop_last: bool = False,       # drop the last batch if it is short
                 # int or Generator: the loader's own, seeded once; None: the tensor module's
                 seed=None,
                 collate_fn=None,               # list of examples -> batch; None: `default_collate`
                 # applied to each batch's x (an ndarray) before it becomes a Tensor
                 transform=None,
                ):
        if not (isinstance(batch_size, (int, np.integer)) and batch_size >= 1):
            raise ValueError(f"DataLoader: batch_size must be an int >= 1, got {batch_size!r}")
        if not (hasattr(dataset, '__len__') and hasattr(dataset, '__getitem__')):
            raise TypeError(f"DataLoader: dataset must have __len__ and __getitem__, got a "
                            f"{type(dataset).__name__}")
        self.dataset, self.batch_size, self.shuffle, self.drop_last = (dataset, int(batch_size),
                                                                       shuffle, drop_last)
        self.collate_fn, self.transform = collate_fn, transform
        # a Generator is used as it is
        self.generator = None if seed is None else np.random.default_rng(seed)

    def __len__(self) -> int:
        "Number of batches in an epoch."
        n, b = len(self.dataset), self.batch_size
        return n // b if self.drop_last else -(-n // b)

# %% [markdown]
# Fetching and finishing a batch. A custom `collate_fn` may return anything: a tuple has its first
# field transformed and its ndarrays wrapped; a single array is transformed and wrapped whole.

# %%
#| export
def _rng(generator) -> np.random.Generator:
    "`generator`, or the tensor module's generator (the one `manual_seed` resets) if it is None."
    return generator if generator is not None else _generator(None)

@patch
def _fetch(self: DataLoader, idx: np.ndarray):
    "The examples `idx`: rows of the arrays for a TensorDataset, else the collated `dataset[i]`."
    if self.collate_fn is None and isinstance(self.dataset, TensorDataset):
        return tuple(a[idx] for a in self.dataset.tensors)            # one fancy index per array
    return (self.collate_fn or default_collate)([self.dataset[int(i)] for i in idx])

@patch
def _finish(self: DataLoader, batch):
    "Apply the transform to x (the first field), then wrap ndarrays in Tensors."
    fields = list(batch) if isinstance(batch, tuple) else [batch]
    if self.transform is not None: fields[0] = self.transform(fields[0])
    fields = [Tensor(f) if isinstance(f, np.ndarray) else f for f in fields]
    return tuple(fields) if isinstance(batch, tuple) else fields[0]

# %% [markdown]
# The epoch itself, the exercise: draw the order (a permutation from the loader's generator, or
# `0..n-1`), walk it in steps of `batch_size` for `len(self)` batches, and yield each batch fetched
# and finished.

# %%
#| export
@patch
def __iter__(self: DataLoader):
    "Yield the `len(self)` batches of one epoch, in a new order if shuffling."
    ### BEGIN SOLUTION
    n, b = len(self.dataset), self.batch_size
    order = _rng(self.generator).permutation(n) if self.shuffle else np.arange(n)
    for start in range(0, len(self) * b, b):
        yield self._finish(self._fetch(order[start:start + b]))
    ### END SOLUTION

# %% [markdown]
# Five examples in batches of two: three batches of sizes 2, 2 and 1, or two with `drop_last`. A
# shuffled epoch is a permutation of all five; the next epoch is a different one; a second loader
# with the same seed repeats the sequence.

# %%
X5, y5 = np.arange(10, dtype=np.float32).reshape(5, 2), np.arange(5)
dl = DataLoader(TensorDataset(X5, y5), batch_size=2)
test_eq([yb.numpy().tolist() for _, yb in dl], [[0, 1], [2, 3], [4]])
test_eq(len(dl), 3)
test_eq(len(DataLoader(TensorDataset(X5, y5), 2, drop_last=True)), 2)
xb, yb = next(iter(dl))
test_eq((type(xb), xb.dtype, xb.numpy().tolist()), (Tensor, np.float32, [[0., 1.], [2., 3.]]))

def epochs(loader, k=3):
    return [np.concatenate([yb.numpy() for _, yb in loader]).tolist() for _ in range(k)]
e1, e2 = (epochs(DataLoader(TensorDataset(X5, y5), 2, shuffle=True, seed=0)),
          epochs(DataLoader(TensorDataset(X5, y5), 2, shuffle=True, seed=0)))
test_eq(e1, e2)                                        # same seed, same sequence of epochs
test_eq([sorted(e) for e in e1], [list(range(5))] * 3) # every example once per epoch
test_ne(e1[0], e1[1])                                  # a new order each epoch
print(f"three epochs with seed=0: {e1}")

# %% [markdown]
# With `seed=None` the order follows `manual_seed`; the fast path for a `TensorDataset` gives the
# same batches as the general path (a `Dataset` subclass, fetched example by example and collated);
# a custom `collate_fn` and a `transform` take part; bad arguments are refused.

# %%
manual_seed(1); a = epochs(DataLoader(TensorDataset(X5, y5), 2, shuffle=True), 2)
manual_seed(1); b = epochs(DataLoader(TensorDataset(X5, y5), 2, shuffle=True), 2)
test_eq(a, b)

class Rows(Dataset):
    "The rows of X and y, one `__getitem__` call per example (no fast path)."
    def __init__(self, X, y): self.X, self.y = X, y
    def __len__(self): return len(self.X)
    def __getitem__(self, i): return self.X[i], self.y[i]

fast = [(xb.numpy(), yb.numpy())
        for xb, yb in DataLoader(TensorDataset(X5, y5), 2, shuffle=True, seed=3)]
slow = [(xb.numpy(), yb.numpy()) for xb, yb in DataLoader(Rows(X5, y5), 2, shuffle=True, seed=3)]
for (fx, fy), (sx, sy) in zip(fast, slow): test_eq(fx, sx); test_eq(fy, sy)

xs = next(iter(DataLoader(Rows(X5, y5), 5, collate_fn=lambda b: np.stack([x for x, _ in b]),
                          transform=lambda x: 2 * x)))
test_eq(xs.numpy()[:, 0].tolist(), [0., 4., 8., 12., 16.])
test_fail(lambda: DataLoader(TensorDataset(X5, y5), batch_size=0),
          contains="batch_size must be an int >= 1, got 0")
test_fail(lambda: DataLoader(5, 2), contains="must have __len__ and __getitem__, got a int")

# %% [markdown]
# ## Batch transforms
#
# Augmentation makes each epoch show the model slightly different images, so it learns what a class
# looks like rather than the exact pixels of the training set. The transforms here act on a whole
# batch, an `(N, C, H, W)` float32 array (the random ones on uint8 too), with a few array operations
# each, not a Python loop over images. The random ones take a `seed` (an int or a `Generator`) and,
# like the loader, keep one generator for their lifetime; with `seed=None` they draw from the tensor
# module's generator.
#
# `ToFloat` turns the uint8 images of the data sets into float32 in $[0, 1]$ and adds the channel
# axis to `(N, H, W)` batches. `Normalize(mean, std)` standardises each channel $c$: $x' = (x -
# \mu_c) / \sigma_c$.

# %%
#| export
def _check_images(op: str, x) -> None:
    "Raise unless `x` is an (N, C, H, W) ndarray."
    if not isinstance(x, np.ndarray): raise TypeError(f"{op}: expected an ndarray batch, got a "
                                                      f"{type(x).__name__}")
    if x.ndim != 4: raise ValueError(f"{op}: expected a 4-D batch (N, C, H, W), got shape "
                                     f"{x.shape}")

class ToFloat:
    "uint8 images `(N, H, W)` or `(N, C, H, W)` to float32 `(N, C, H, W)` in [0, 1]."
    def __call__(self, x: np.ndarray) -> np.ndarray:
        if getattr(x, 'dtype', None) != np.uint8:
            raise TypeError(f"ToFloat: expected uint8 images, got "
                            f"{getattr(x, 'dtype', type(x).__name__)}")
        if x.ndim == 3: x = x[:, None]                                   # (N, 1, H, W)
        _check_images('ToFloat', x)
        return x.astype(np.float32) / np.float32(255)                    # (N, C, H, W)
    def __repr__(self) -> str: return "ToFloat()"

class Normalize:
    "Standardise each channel of an `(N, C, H, W)` batch: `(x - mean[c]) / std[c]`."
    def __init__(self, mean, std):
        self.mean, self.std = (np.atleast_1d(np.asarray(mean, np.float32)),
                               np.atleast_1d(np.asarray(std, np.float32)))
        if self.mean.shape != self.std.shape or self.mean.ndim != 1:
            raise ValueError(f"Normalize: mean and std must be two lists of the same length, got "
                             f"shapes {self.mean.shape} and {self.std.shape}")
        if (self.std <= 0).any(): raise ValueError(f"Normalize: std must be positive, got "
                                                   f"{self.std.tolist()}")
    def __call__(self, x: np.ndarray) -> np.ndarray:
        _check_images('Normalize', x)
        if x.shape[1] != len(self.mean):
            raise ValueError(f"Normalize: batch of shape {x.shape} has {x.shape[1]} channels, mean "
                             f"and std have {len(self.mean)}")
        return (x - self.mean[:, None, None]) / self.std[:, None, None]   # (N, C, H, W) - (C, 1, 1)
    def __repr__(self) -> str:
        return f"Normalize(mean={self.mean.tolist()}, std={self.std.tolist()})"

# %%
u8 = np.array([[[0, 255], [51, 102]]], np.uint8)                        # one 2x2 image
# 51/255 = 0.2, rounded once to float32
test_eq(ToFloat()(u8), np.array([[[[0., 1.], [0.2, 0.4]]]], np.float32))
# (1, 2, 2, 2): channels 1 and 3
x2 = np.stack([np.full((2, 2), 1.), np.full((2, 2), 3.)])[None].astype(np.float32)
test_eq(Normalize([1., 2.], [1., 0.5])(x2)[0, :, 0, 0].tolist(), [0., 2.])
test_fail(lambda: ToFloat()(x2), contains="expected uint8 images, got float32")
test_fail(lambda: Normalize([0.], [1.])(x2), contains="has 2 channels, mean and std have 1")
test_fail(lambda: Normalize([0.], [0.]), contains="std must be positive")
test_fail(lambda: Normalize([0.], [1.])(np.zeros((2, 2))),
          contains="expected a 4-D batch (N, C, H, W), got shape (2, 2)")

# %% [markdown]
# ### Random crops
#
# `RandomCrop(size, padding)` pads each image with `padding` zeros on every side, then cuts a `size`
# window at a random place, chosen per image; when `size` is the image's size, that is a shift of up
# to `padding` pixels in each direction. Vectorised, the cropping is one fancy index.
# `sliding_window_view` presents the padded batch as every possible window, shape `(N, C, H', W', h,
# w)` with $H' = H + 2p - h + 1$, without copying; indexing it with one row offset $i_n$ and one
# column offset $j_n$ per image picks image $n$'s window:
#
# $$\text{out}[n, c] = \text{windows}[n, c, i_n, j_n]
#   = \text{padded}[n, c, i_n : i_n + h, j_n : j_n + w].$$
#
# The index arrays sit at axes 0, 2 and 3 with the channel slice between them, so NumPy puts their
# common axis first and the result is `(N, C, h, w)`. Only the chosen windows are copied.

# %%
#| export
class RandomCrop:
    "Pad each image of an `(N, C, H, W)` batch by `padding` zeros, then cut a random `size` window."
    def __init__(self, size,                  # int or (h, w): the output's height and width
                 padding: int = 0,            # zeros added on each side before cropping
                 # int or Generator, used for the transform's lifetime; None: the tensor module's
                 seed=None,
                ):
        self.size = (size, size) if isinstance(size, (int, np.integer)) else tuple(size)
        if len(self.size) != 2 or min(self.size) < 1 or padding < 0:
            raise ValueError(f"RandomCrop: size must be positive and padding >= 0, got "
                             f"size={size!r}, padding={padding!r}")
        self.padding, self.generator = (padding,
                                        None if seed is None else np.random.default_rng(seed))

    def __call__(self, x: np.ndarray) -> np.ndarray:
        "The batch `x` cropped to `size`, each image at its own random offset."
        _check_images('RandomCrop', x)
        (h, w), p = self.size, self.padding
        if h > x.shape[2] + 2 * p or w > x.shape[3] + 2 * p:
            raise ValueError(f"RandomCrop: crop {self.size} is larger than the padded image "
                             f"{(x.shape[2] + 2 * p, x.shape[3] + 2 * p)}")
        ### BEGIN SOLUTION
        n, c, H, W = x.shape
        xp = np.zeros((n, c, H + 2 * p, W + 2 * p), x.dtype)              # (N, C, H+2p, W+2p)
        xp[:, :, p:p + H, p:p + W] = x
        rng = _rng(self.generator)
        i = rng.integers(0, xp.shape[2] - h + 1, n)  # (N,) top row of each window
        j = rng.integers(0, xp.shape[3] - w + 1, n)  # (N,) left column of each window
        windows = sliding_window_view(xp, (h, w), axis=(2, 3))  # (N, C, H', W', h, w), a view
        return windows[np.arange(n), :, i, j]                              # (N, C, h, w)
        ### END SOLUTION

    def __repr__(self) -> str: return f"RandomCrop(size={self.size}, padding={self.padding})"

# %% [markdown]
# A 3x3 image holding 1..9, padded by one and cropped to 3x3: every crop is the image shifted by at
# most one pixel, and a crop at offset $(i, j)$ equals the slice of the padded image there. Without
# padding, a full-size crop returns the image unchanged; a crop larger than the padded image is an
# error.

# %%
img = np.arange(1, 10, dtype=np.float32).reshape(1, 1, 3, 3)
batch = np.repeat(img, 4, axis=0)                                       # (4, 1, 3, 3), four copies
crops = RandomCrop(3, padding=1, seed=0)(batch)
test_eq(crops.shape, (4, 1, 3, 3))
rng = np.random.default_rng(0)  # the draws RandomCrop(seed=0) makes
# row and column offsets in the 5x5 padded image
i, j = rng.integers(0, 3, 4), rng.integers(0, 3, 4)
padded = np.pad(img[0, 0], 1)                                           # (5, 5)
for n in range(4): test_eq(crops[n, 0], padded[i[n]:i[n] + 3, j[n]:j[n] + 3])
test_eq(RandomCrop(3)(batch), batch)
test_eq(RandomCrop(3, 1, seed=5)(batch), RandomCrop(3, 1, seed=5)(batch))   # same seed, same crops
test_fail(lambda: RandomCrop(6, padding=1)(batch),
          contains="crop (6, 6) is larger than the padded image (5, 5)")
print(f"offsets (row, column): {list(zip(i.tolist(), j.tolist()))}\n{crops[:, 0]}")

# %% [markdown]
# `RandomHorizontalFlip(p)` mirrors each image left to right with probability `p`, independently: a
# per-image mask selects the images to replace by their mirror image `x[..., ::-1]`. `Compose`
# applies transforms in order; any function of an ndarray can be one of them.

# %%
#| export
class RandomHorizontalFlip:
    "Mirror each image of an `(N, C, H, W)` batch left-right with probability `p`, independently."
    def __init__(self, p: float = 0.5, seed=None):
        if not 0 <= p <= 1: raise ValueError(f"RandomHorizontalFlip: p must be in [0, 1], got {p}")
        self.p, self.generator = p, None if seed is None else np.random.default_rng(seed)
    def __call__(self, x: np.ndarray) -> np.ndarray:
        _check_images('RandomHorizontalFlip', x)
        flip = _rng(self.generator).random(len(x)) < self.p               # (N,)
        out = x.copy()                                                     # (N, C, H, W)
        out[flip] = x[flip, ..., ::-1]                                     # (flipped, C, H, W)
        return out
    def __repr__(self) -> str: return f"RandomHorizontalFlip(p={self.p})"

class Compose:
    "Apply `transforms` to a batch in order."
    def __init__(self, transforms): self.transforms = list(transforms)
    def __call__(self, x):
        for t in self.transforms: x = t(x)
        return x
    def __repr__(self) -> str: return "Compose(" + ", ".join(map(repr, self.transforms)) + ")"

# %%
b2 = np.arange(8, dtype=np.float32).reshape(2, 1, 2, 2)
test_eq(RandomHorizontalFlip(p=1.0)(b2)[:, 0].tolist(),
        [[[1., 0.], [3., 2.]], [[5., 4.], [7., 6.]]])
test_eq(RandomHorizontalFlip(p=0.0)(b2), b2)
flipped = RandomHorizontalFlip(seed=0)(np.repeat(b2[:1], 1000, axis=0))[:, 0, 0, 0] == 1.
print(f"p=0.5 flipped {flipped.mean():.1%} of 1,000 images")
test_fail(lambda: RandomHorizontalFlip(p=2), contains="p must be in [0, 1], got 2")
pipeline = Compose([ToFloat(), RandomCrop(2, padding=1, seed=0), Normalize([0.5], [0.5])])
test_eq(pipeline(np.zeros((3, 2, 2), np.uint8)).shape, (3, 1, 2, 2))
test_eq(repr(pipeline),
        "Compose(ToFloat(), RandomCrop(size=(2, 2), padding=1), Normalize(mean=[0.5], std=[0.5]))")

# %% [markdown]
# ## The digits, split once
#
# The UCI digits that the training module learns from ship with the package
# (`tinytorch/data/digits.csv.gz`, from scikit-learn, BSD-3; see `tinytorch/data/LICENSE-data.txt`).
# `load_digits` reads them and returns the same split as the training module: a permutation from
# `default_rng(0)`, its first fifth for testing. Images are `(N, 1, 8, 8)` float32 in $[0, 1]$ (the
# raw values 0..16 divided by 16), or `(N, 64)` with `flatten=True`.

# %%
#| export
def load_digits(flatten: bool = False,  # images as (N, 64) rows instead of (N, 1, 8, 8)
               ) -> tuple:
    "The 1,797 8x8 digits shipped with the package: (X_train, y_train, X_test, y_test), split once."
    path = files('tinytorch') / 'data' / 'digits.csv.gz'
    if not path.is_file(): raise FileNotFoundError(f"load_digits: {path} is missing; reinstall "
                                                   f"tinytorch (pip install -e .)")
    # (1797, 65)
    with gzip.open(path, 'rt') as f: table = np.loadtxt(f, delimiter=',', dtype=np.float32)
    X, y = table[:, :64] / 16, table[:, 64].astype(np.int64)  # pixels 0..16 -> [0, 1]
    perm = np.random.default_rng(0).permutation(len(X))
    test, train = perm[:len(X) // 5], perm[len(X) // 5:]
    X = X if flatten else X.reshape(-1, 1, 8, 8)                              # (N, 1, 8, 8)
    return X[train], y[train], X[test], y[test]

# %%
Xd_tr, yd_tr, Xd_te, yd_te = load_digits()
test_eq((Xd_tr.shape, Xd_te.shape, Xd_tr.dtype, yd_tr.dtype),
        ((1438, 1, 8, 8), (359, 1, 8, 8), np.float32, np.int64))
test_eq((float(Xd_tr.min()), float(Xd_tr.max())), (0., 1.))
test_eq(load_digits(flatten=True)[0].shape, (1438, 64))
print(f"digits: {len(Xd_tr)} training and {len(Xd_te)} test images, test classes "
      f"{np.bincount(yd_te).tolist()}")

# %% [markdown]
# The loader works with `Trainer.fit`, which needs only a re-iterable of `(x, y)` pairs with a
# length: a small MLP on the digits, with a flattening step at the end of the transform, learns in a
# few epochs.

# %%
manual_seed(0)
flat = lambda x: x.reshape(len(x), -1)                                   # (N, 1, 8, 8) -> (N, 64)
mlp = Sequential(Linear(64, 64), ReLU(), Linear(64, 10))
tr = Trainer(mlp, CrossEntropyLoss(), Adam(mlp.parameters(), lr=3e-3), progress=False)
hist = tr.fit(DataLoader(TensorDataset(Xd_tr, yd_tr), 64, shuffle=True, seed=0, transform=flat),
              epochs=8,
              val_data=DataLoader(TensorDataset(Xd_te, yd_te), 256, transform=flat))
print(f"digits MLP, 8 epochs: test accuracy {hist['val_acc'][-1]:.1%}")
assert hist['val_acc'][-1] > 0.9 and hist['train_loss'][-1] < hist['train_loss'][0]

# %% [markdown]
# ## Where data files come from
#
# The larger data sets are not shipped. A loader looks for their files in a fixed order and uses the
# first place that has all of them:
#
# 1. `root`, if the caller passes one;
# 2. the cache folder: `$TINYTORCH_DATA`, else `$XDG_CACHE_HOME/tinytorch`, else
#    `~/.cache/tinytorch`, with one subfolder per data set;
# 3. a folder where an operating-system package installs them (Debian's `dataset-fashion-mnist` puts
#    Fashion-MNIST in `/usr/share/datasets/fashion-mnist`);
# 4. otherwise it downloads the missing files into the cache, from the data set's address.
#
# A `Source` records where a data set comes from and what its files must hash to. `SOURCES` holds
# one per data set; changing an entry's `url` or `files` is how the tests point a loader at a local
# server.

# %%
#| export
def get_data_home() -> Path:
    "The data cache: $TINYTORCH_DATA, else $XDG_CACHE_HOME/tinytorch, else ~/.cache/tinytorch."
    if env := os.environ.get('TINYTORCH_DATA'): return Path(env).expanduser()
    xdg = os.environ.get('XDG_CACHE_HOME')
    # relative XDG paths are ignored, as the spec says
    base = Path(xdg) if xdg and Path(xdg).is_absolute() else Path.home() / '.cache'
    return base / 'tinytorch'

@dataclass
class Source:
    "Where a data set's files come from, and the SHA-256 values they must match."
    name: str                  # subfolder of the cache, e.g. 'fashion-mnist'
    url: str                   # base address: file `f` is downloaded from url + f
    # file name -> (SHA-256 of the file as published, SHA-256 of its gunzipped content or None)
    files: dict
    system_dirs: tuple = ()    # folders where an operating-system package installs the files
    hint: str = ''             # how to get the data, ending the error message

# %% [markdown]
# The checksums of the files are published values, taken from the places the comments name.
# Fashion-MNIST has a second kind of value, the SHA-256 of each file's decompressed content,
# computed from Debian's copy and explained in the next section.

# %%
#| export
SOURCES = {
    # The copy of MNIST that TensorFlow Datasets downloads, and the SHA-256 it lists for the .gz
    # files at exactly this address (tensorflow/datasets,
    # tensorflow_datasets/url_checksums/mnist.txt).
    'mnist': Source('mnist', 'https://storage.googleapis.com/cvdf-datasets/mnist/', {
        'train-images-idx3-ubyte.gz':
            ('440fcabf73cc546fa21475e81ea370265605f56be210a4024d2ca8f203523609', None),
        'train-labels-idx1-ubyte.gz':
            ('3552534a0a558bbed6aed32b30c495cca23d567ec52cac8be1a0730e8010255c', None),
        't10k-images-idx3-ubyte.gz':
            ('8d422c7b0a1c1c79245a5bcf07fe86e33eeafee792b84584aec276f5a2dbc4e6', None),
        't10k-labels-idx1-ubyte.gz':
            ('f7ae60f92e00ec6debd23a6088c31dbd2371eca3ffa0defaefb259924204aec6', None)},
        hint="Download the four files from https://storage.googleapis.com/cvdf-datasets/mnist/ "
             "into the cache folder or pass root= (a folder holding them)"),
    # File SHA-256: TensorFlow Datasets (tensorflow_datasets/url_checksums/fashion_mnist.txt) for
    # these addresses; the project's README (zalandoresearch/fashion-mnist) publishes MD5s only:
    # 8d4fb7e6..., 25c81989..., bef4ecab..., bb300cfd...
    # Content SHA-256: computed from Debian's dataset-fashion-mnist 0.0~git20200523.55506a9-1. Its
    # .gz files are the published ones with a rewritten gzip header (no file name, the build's time
    # stamp): tests/test_08_datasets.py restores the header and gets back files with exactly the
    # README's MD5s and the SHA-256s below.
    'fashion-mnist': Source(
        'fashion-mnist', 'http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/', {
        'train-images-idx3-ubyte.gz':
            ('3aede38d61863908ad78613f6a32ed271626dd12800ba2636569512369268a84',
             'c59f468a2f672dc815687fe0f83887768d799fd8a3f3276145d20f83aa44d888'),
        'train-labels-idx1-ubyte.gz':
            ('a04f17134ac03560a47e3764e11b92fc97de4d1bfaf8ba1a3aa29af54cc90845',
             'bad3541b69d912435c50bb6ba87bec294ff4f6a2e1246121d8633921760443d9'),
        't10k-images-idx3-ubyte.gz':
            ('346e55b948d973a97e58d2351dde16a484bd415d4595297633bb08f03db6a073',
             '5b4141f0afbad91edebe8549f8fcffe087ea10ca49f1dbef5c9a5cd8815ce37b'),
        't10k-labels-idx1-ubyte.gz':
            ('67da17c76eaffca5446c3361aaab5c3cd6d1c2608764d35dfb1850b086bf8dd5',
             '0402a96d92fd2663957122ceb108a494c5af83dab82d92729df917d7dec38c34')},
        system_dirs=('/usr/share/datasets/fashion-mnist',),
        hint="Install Debian's dataset-fashion-mnist (apt-get install -y dataset-fashion-mnist) "
             "or pass root="),
    # SHA-256 of the binary version at this address, from TensorFlow Datasets
    # (tensorflow_datasets/url_checksums/cifar10.txt).
    'cifar10': Source('cifar10', 'https://www.cs.toronto.edu/~kriz/', {
        'cifar-10-binary.tar.gz':
            ('c4a38c50a1bc5f3a1c5537f2155ab9d68f9f25eb1ed8d9ddda3db29a59bca1dd', None)},
        hint="Download cifar-10-binary.tar.gz (the binary version, not the Python one) from "
             "https://www.cs.toronto.edu/~kriz/cifar.html into the cache folder or pass root="),
}

# %% [markdown]
# ## Checksums
#
# A SHA-256 digest is 32 bytes computed from every byte of a file; a file that differs in any byte
# has, for all practical purposes, a different digest, and no one knows how to make a file with a
# given digest. Comparing a file's digest with the published one therefore shows it is the published
# file: not truncated, not corrupted on the way, not replaced.
#
# For a gzip file a second digest may be accepted: that of the decompressed content, the bytes the
# parser actually reads (the optional section at the end says why Debian's copies of Fashion-MNIST
# need it). Reading is done in chunks (`hashlib.file_digest`), so a large file is never held in
# memory just to be hashed.

# %%
#| export
class ChecksumError(ValueError):
    "A file's bytes do not match the SHA-256 published for it."

def _sha256(path, gunzip: bool = False) -> str:
    "Hex SHA-256 of the file's bytes, or of its gzip-decompressed content, read in chunks."
    with (gzip.open if gunzip else open)(path, 'rb') as f:
        return hashlib.file_digest(f, 'sha256').hexdigest()

# %% [markdown]
# The check, the exercise: hash the file; if the digest is the published one, the file is good.
# Otherwise, if a content digest is known, hash the decompressed content and accept a match; a file
# that is not valid gzip fails the check. Anything else raises `ChecksumError` naming the file and
# both digests.

# %%
#| export
def check_sha256(path,                               # the file to check
                 sha256: str,                        # hex SHA-256 of the file as published
                 # hex SHA-256 of its gzip-decompressed content, or None
                 content_sha256: str | None = None,
                ) -> None:
    "Raise `ChecksumError` unless the file's SHA-256 is `sha256` or its content's `content_sha256`."
    ### BEGIN SOLUTION
    got = _sha256(path)
    if got == sha256: return
    if content_sha256 is not None:
        try: content = _sha256(path, gunzip=True)
        except (OSError, EOFError, zlib.error) as e:   # not gzip, or truncated
            raise ChecksumError(f"check_sha256: {path} has SHA-256 {got}, expected {sha256}, and "
                                f"is not readable gzip ({e})") from None
        if content == content_sha256: return
        raise ChecksumError(f"check_sha256: {path} has SHA-256 {got}, expected {sha256}; "
                            f"its content has SHA-256 {content}, expected {content_sha256}")
    raise ChecksumError(f"check_sha256: {path} has SHA-256 {got}, expected {sha256}")
    ### END SOLUTION

# %% [markdown]
# The SHA-256 of the three bytes `abc` is a test vector published with the standard (FIPS 180-2), so
# a reader can check the first line against it. A gzip file of the same content with another header
# passes by its content digest; a changed byte fails.

# %%
tmp = Path(tempfile.mkdtemp())
(tmp / 'abc').write_bytes(b'abc')
ABC = 'ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad'  # FIPS 180-2, appendix B.1
test_eq(_sha256(tmp / 'abc'), ABC)
check_sha256(tmp / 'abc', ABC)
(tmp / 'a.gz').write_bytes(gzip.compress(b'abc', mtime=0))
(tmp / 'b.gz').write_bytes(gzip.compress(b'abc', mtime=1))  # same content, another header
test_ne(_sha256(tmp / 'a.gz'), _sha256(tmp / 'b.gz'))
check_sha256(tmp / 'b.gz', _sha256(tmp / 'a.gz'), content_sha256=ABC)
test_fail(lambda: check_sha256(tmp / 'abc', ABC.replace('b', 'c', 1)),
          contains=f"has SHA-256 {ABC}, expected")
test_fail(lambda: check_sha256(tmp / 'abc', '0' * 64, content_sha256=ABC),
          contains="is not readable gzip")

# %% [markdown]
# ## Downloading without half files
#
# A download goes to a temporary file beside its target (`.name.XXXX.part`), is checked against its
# digest, and only then renamed to its name; a rename within a folder is atomic. So a file under its
# real name is always complete and verified. A download that stops early, one shorter than the
# `Content-Length` the server announced, or one with the wrong digest is deleted and raises, naming
# the address.

# %%
#| export
class DownloadError(OSError):
    "A download ended before the whole file arrived."

def _copy_response(url: str, f, timeout: float) -> None:
    "Write the body at `url` to the file `f`; `DownloadError` if shorter than its Content-Length."
    with urllib.request.urlopen(url, timeout=timeout) as r:
        size, got = r.headers.get('Content-Length'), 0
        try:
            while chunk := r.read(1 << 20): got += f.write(chunk)
        except http.client.IncompleteRead as e:
            raise DownloadError(f"download_file: {url} ended early ({e!r})") from None
    if size is not None and got != int(size):
        raise DownloadError(f"download_file: {url} ended after {got:,} of {int(size):,} bytes")

# %%
#| export
def download_file(url: str, dest,
                  sha256: str,                       # hex SHA-256 the file must have
                  content_sha256: str | None = None, # or its gunzipped content must have
                  timeout: float = 60.,              # seconds to wait for the server at each step
                 ) -> Path:
    "Download `url` to `dest` via a temporary file, check its SHA-256, rename; on failure no file."
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=dest.parent, prefix=f".{dest.name}.", suffix='.part')
    try:
        with os.fdopen(fd, 'wb') as f: _copy_response(url, f, timeout)
        try: check_sha256(tmp, sha256, content_sha256)
        except ChecksumError as e:
            raise ChecksumError(f"download_file: {url} does not match its published SHA-256, "
                                f"deleted ({e})") from None
        os.replace(tmp, dest)  # atomic: no file under `dest` until it is whole and verified
    except BaseException:
        with contextlib.suppress(FileNotFoundError): os.unlink(tmp)
        raise
    return dest

# %% [markdown]
# The downloader speaks any address `urllib` does, `file://` included, which lets this notebook show
# it without a network (the tests run a real HTTP server on 127.0.0.1, with truncated responses
# too). A good file arrives under its name; a file with the wrong digest is reported and leaves
# nothing behind.

# %%
src_dir, dst_dir = Path(tempfile.mkdtemp()), Path(tempfile.mkdtemp())
(src_dir / 'abc').write_bytes(b'abc')
download_file((src_dir / 'abc').as_uri(), dst_dir / 'abc', ABC)
test_eq((dst_dir / 'abc').read_bytes(), b'abc')
test_fail(lambda: download_file((src_dir / 'abc').as_uri(), dst_dir / 'bad', '0' * 64),
          contains="does not match its published SHA-256, deleted")
test_eq(sorted(p.name for p in dst_dir.iterdir()), ['abc'])           # no 'bad', no .part file
test_fail(lambda: download_file((src_dir / 'missing').as_uri(), dst_dir / 'm', ABC), exc=OSError)

# %% [markdown]
# ## Finding the files
#
# The lookup below walks the places in order and returns the paths of the first complete, verified
# set. A file that fails its check is reported with a warning (and named in the final error); in the
# cache, which only this module writes, it is also deleted, so the next call downloads it again.
# Files in `root` or a system folder belong to someone else and are never deleted. If no place has
# the data, the error is one line: every place tried, every problem met, and how to get the data.

# %%
#| export
def _verified(paths: dict, src: Source, delete: bool, problems: list) -> bool:
    "Check each file of `paths` (name -> path); note failures in `problems`, deleted if `delete`."
    ok = True
    for name, path in paths.items():
        try: check_sha256(path, *src.files[name])
        except ChecksumError as e:
            ok = False
            if delete: path.unlink()
            problems.append(f"{e}{'; deleted it' if delete else ''}")
            warnings.warn(problems[-1], stacklevel=3)
    return ok

# %%
#| export
def _locate(src: Source, op: str, root=None, download: bool = True) -> dict:
    "Verified paths of `src`'s files: in `root`, the cache or a system folder, or downloaded."
    cache, problems = get_data_home() / src.name, []
    places = [(Path(root), False)] if root is not None else []  # (folder, delete bad files?)
    places += [(cache, True)] + [(Path(d), False) for d in src.system_dirs]
    for place, delete in places:
        paths = {name: place / name for name in src.files if (place / name).is_file()}
        if _verified(paths, src, delete, problems) and len(paths) == len(src.files): return paths
    if download:
        try:
            for name, (sha, content_sha) in src.files.items():
                if not (cache / name).is_file():
                    download_file(src.url + name, cache / name, sha, content_sha)
            return {name: cache / name for name in src.files}
        except (OSError, http.client.HTTPException, ChecksumError) as e:
            problems.append(f"download failed: {e}")
    else: problems.append("download=False")
    tried = ', '.join([f"root={None if root is None else str(root)!r}", str(cache)]
                      + list(src.system_dirs))
    raise FileNotFoundError(f"{op}: no data in {tried}; {'; '.join(problems)}. {src.hint}")

# %% [markdown]
# A two-file data set made here and served from a `file://` folder shows the order. The first call
# finds nothing, downloads both files into the cache and returns them; the second finds them in the
# cache. A cached file that is damaged is reported, deleted and fetched again. With downloads off
# and nothing anywhere, the error says where it looked.

# %%
# a fresh cache for this demonstration
os.environ['TINYTORCH_DATA'] = str(Path(tempfile.mkdtemp()) / 'cache')
site = Path(tempfile.mkdtemp())
for name, data in {'a.bin': b'abc', 'b.bin': b'12345'}.items(): (site / name).write_bytes(data)
demo = Source('demo', site.as_uri() + '/',
              {n: (_sha256(site / n), None) for n in ('a.bin', 'b.bin')},
              hint="Run the cell above.")
paths = _locate(demo, 'demo')
test_eq({n: p.read_bytes() for n, p in paths.items()}, {'a.bin': b'abc', 'b.bin': b'12345'})
test_eq(paths['a.bin'].parent, Path(os.environ['TINYTORCH_DATA']) / 'demo')

paths['b.bin'].write_bytes(b'12x45')                                     # damage the cached copy
with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter('always')
    test_eq(_locate(demo, 'demo')['b.bin'].read_bytes(), b'12345')  # deleted and downloaded again
test_eq(len(caught), 1)
print(str(caught[0].message)[:110] + '...')

empty = Path(tempfile.mkdtemp())
os.environ['TINYTORCH_DATA'] = str(empty)
test_fail(lambda: _locate(demo, 'demo', root=empty / 'mine', download=False),
          contains=f"demo: no data in root={str(empty / 'mine')!r}, {empty / 'demo'}; "
                   f"download=False. Run the cell above.")
del os.environ['TINYTORCH_DATA']

# %% [markdown]
# ## The IDX format
#
# MNIST and Fashion-MNIST are stored in IDX files, a format made for them: a 4-byte magic number `00
# 00 T D`, where `T` names the element type (`0x08` unsigned byte, `0x09` signed byte, `0x0B` 2-byte
# int, `0x0C` 4-byte int, `0x0D` float, `0x0E` double) and `D` the number of dimensions; then `D`
# sizes as big-endian 32-bit integers; then the values, big-endian, in row-major order. An images
# file starts `00 00 08 03`, then the number of images, 28 and 28, then the pixel bytes. Nothing
# else is in the file, so its length must be exactly the header plus the product of the sizes times
# the element size; the parser checks each of these and says which failed.

# %%
#| export
_IDX_TYPES = {0x08: np.dtype('u1'), 0x09: np.dtype('i1'), 0x0B: np.dtype('>i2'),
              0x0C: np.dtype('>i4'), 0x0D: np.dtype('>f4'), 0x0E: np.dtype('>f8')}

def parse_idx(data: bytes,          # the whole (decompressed) file
              name: str = 'data',   # what to call it in errors
             ) -> np.ndarray:
    "The array in IDX bytes: magic `00 00 type ndim`, `ndim` big-endian uint32 sizes, the values."
    ### BEGIN SOLUTION
    if len(data) < 4 or data[:2] != b'\0\0':
        raise ValueError(f"parse_idx: {name} does not start with an IDX magic number 00 00 <type> "
                         f"<ndim>, got {data[:4].hex(' ')!r}")
    code, ndim = data[2], data[3]
    if code not in _IDX_TYPES:
        raise ValueError(f"parse_idx: {name} has unknown type code 0x{code:02x}; known: "
                         f"{', '.join(f'0x{c:02x}' for c in _IDX_TYPES)}")
    header = 4 + 4 * ndim
    if len(data) < header:
        raise ValueError(f"parse_idx: {name} ends inside its header: {len(data)} bytes, "
                         f"the header of {ndim} sizes needs {header}")
    shape, dtype = struct.unpack(f'>{ndim}I', data[4:header]), _IDX_TYPES[code]
    size = header + math.prod(shape) * dtype.itemsize
    if len(data) != size:
        raise ValueError(f"parse_idx: {name} holds {len(data):,} bytes, but shape {shape} of "
                         f"{dtype.name} needs {size:,}")
    return np.frombuffer(data, dtype, offset=header).reshape(shape).astype(dtype.newbyteorder('='))
    ### END SOLUTION

# %% [markdown]
# A 2x3 array of unsigned bytes written out by hand: magic `00 00 08 02`, sizes 2 and 3, six values.
# Then a 2-byte integer array, which shows the byte order (`01 00` is 256), and files broken in each
# way the parser checks.

# %%
raw = bytes([0, 0, 0x08, 2, 0, 0, 0, 2, 0, 0, 0, 3, 1, 2, 3, 4, 5, 6])
test_eq(parse_idx(raw).tolist(), [[1, 2, 3], [4, 5, 6]])
test_eq(parse_idx(raw).dtype, np.uint8)
i2 = parse_idx(bytes([0, 0, 0x0B, 1, 0, 0, 0, 2, 1, 0, 0xFF, 0xFF]))
test_eq((i2.tolist(), i2.dtype.byteorder), ([256, -1], '='))
test_fail(lambda: parse_idx(b'\x1f\x8b\x08\x00'),
          contains="does not start with an IDX magic number 00 00 <type> <ndim>, got '1f 8b 08 00'")
test_fail(lambda: parse_idx(bytes([0, 0, 0x07, 1, 0, 0, 0, 1, 5])),
          contains="unknown type code 0x07")
test_fail(lambda: parse_idx(raw[:10]), contains="ends inside its header: 10 bytes")
test_fail(lambda: parse_idx(raw[:-1], 'x.idx'),
          contains="x.idx holds 17 bytes, but shape (2, 3) of uint8 needs 18")

# %% [markdown]
# ## MNIST and Fashion-MNIST
#
# Both come as four gzip-compressed IDX files with the same names: training and test images (`idx3`:
# N x 28 x 28 unsigned bytes) and labels (`idx1`: N unsigned bytes, 0..9). The loader finds and
# verifies the files, parses them and checks what a model will rely on: the element type, the image
# size, and that images and labels agree in number. It returns uint8 images `(N, 28, 28)` and int64
# labels, the type `CrossEntropyLoss` takes. `ToFloat` turns a batch of images into float32 `(N, 1,
# 28, 28)`; keeping the data set in uint8 keeps it a quarter of the size.

# %%
#| export
def read_idx(path) -> np.ndarray:
    "The array in an IDX file, gzip-compressed (`.gz`) or not."
    path = Path(path)
    data = path.read_bytes()
    return parse_idx(gzip.decompress(data) if path.suffix == '.gz' else data, str(path))

def _load_idx_set(src: Source, op: str, root, download: bool) -> tuple:
    "(X_train, y_train, X_test, y_test) from an MNIST-style set of four IDX files."
    paths, out = _locate(src, op, root, download), []
    for split in ('train', 't10k'):
        x_path, y_path = (paths[f'{split}-images-idx3-ubyte.gz'],
                          paths[f'{split}-labels-idx1-ubyte.gz'])
        X, y = read_idx(x_path), read_idx(y_path)
        if X.dtype != np.uint8 or X.ndim != 3 or X.shape[1:] != (28, 28):
            raise ValueError(f"{op}: {x_path} holds {X.dtype} of shape {X.shape}, expected uint8 "
                             f"(N, 28, 28)")
        if y.dtype != np.uint8 or y.shape != (len(X),) or (y.size and y.max() > 9):
            raise ValueError(f"{op}: {y_path} holds {y.dtype} of shape {y.shape}, expected "
                             f"{len(X)} uint8 labels 0..9")
        out += [X, y.astype(np.int64)]
    return tuple(out)

# %%
#| export
def load_mnist(root=None,             # a folder holding the four .gz files; looked at first
               download: bool = True, # download missing files into the cache?
              ) -> tuple:
    "MNIST digits: (X_train, y_train, X_test, y_test), uint8 images (N, 28, 28), int64 labels."
    return _load_idx_set(SOURCES['mnist'], 'load_mnist', root, download)

def load_fashion_mnist(root=None,             # a folder holding the four .gz files; looked at first
                       download: bool = True, # download missing files into the cache?
                      ) -> tuple:
    "Fashion-MNIST: (X_train, y_train, X_test, y_test), uint8 images (N, 28, 28), int64 labels."
    return _load_idx_set(SOURCES['fashion-mnist'], 'load_fashion_mnist', root, download)

FASHION_MNIST_CLASSES = ('T-shirt/top', 'Trouser', 'Pullover', 'Dress', 'Coat', 'Sandal', 'Shirt',
                         'Sneaker', 'Bag', 'Ankle boot')

# %% [markdown]
# Without the files and with downloads off, the error names every place tried. (The cell points
# `root` and the cache at empty folders, so the message is the same on every machine.)

# %%
os.environ['TINYTORCH_DATA'] = str(empty)
msg = ''
try: load_mnist(root=empty / 'mnist', download=False)
except FileNotFoundError as e: msg = str(e)
print(msg)
test_eq(msg.startswith(f"load_mnist: no data in root={str(empty / 'mnist')!r}, {empty / 'mnist'}; "
                       f"download=False."), True)
test_eq('\n' in msg, False)
del os.environ['TINYTORCH_DATA']

# %% [markdown]
# ## CIFAR-10, binary version
#
# CIFAR-10 is published in two forms. The Python version stores pickles, and unpickling a file can
# run any code in it, so we use the binary version, `cifar-10-binary.tar.gz`: six files
# `data_batch_1.bin` .. `data_batch_5.bin` and `test_batch.bin` in the folder
# `cifar-10-batches-bin/`, each a sequence of records of 1 + 3 x 32 x 32 bytes: a label byte (0..9),
# then the red, green and blue 32x32 planes of the image, each row by row. That is already the `(3,
# 32, 32)` channel-first layout, so a whole file is one reshape.

# %%
#| export
CIFAR10_CLASSES = ('airplane', 'automobile', 'bird', 'cat', 'deer', 'dog', 'frog', 'horse', 'ship',
                   'truck')
_CIFAR_RECORD = 1 + 3 * 32 * 32    # label byte + 3,072 pixel bytes

def parse_cifar10_batch(data: bytes, name: str = 'data') -> tuple:
    "Images (N, 3, 32, 32) uint8, labels (N,) int64 from CIFAR-10 records (1 label, 3,072 pixels)."
    if len(data) % _CIFAR_RECORD:
        raise ValueError(f"parse_cifar10_batch: {name} holds {len(data):,} bytes, not a whole "
                         f"number of {_CIFAR_RECORD:,}-byte records")
    records = np.frombuffer(data, np.uint8).reshape(-1, _CIFAR_RECORD)    # (N, 3073)
    labels = records[:, 0].astype(np.int64)                               # (N,)
    if labels.size and labels.max() > 9: raise ValueError(f"parse_cifar10_batch: {name} has label "
                                                          f"{labels.max()}, expected 0..9")
    return records[:, 1:].reshape(-1, 3, 32, 32).copy(), labels          # (N, 3, 32, 32)

# %%
rec = bytes([3]) + bytes(range(256)) * 12  # one record: label 3, pixel k = k mod 256
Xc, yc = parse_cifar10_batch(rec * 2)
test_eq((Xc.shape, yc.tolist()), ((2, 3, 32, 32), [3, 3]))
# R, G, B planes
test_eq((int(Xc[0, 0, 0, 1]), int(Xc[0, 1, 0, 0]), int(Xc[0, 2, 31, 31])),
        (1, 1024 % 256, 3071 % 256))
test_fail(lambda: parse_cifar10_batch(rec[:-1]),
          contains="not a whole number of 3,073-byte records")
test_fail(lambda: parse_cifar10_batch(bytes([10]) + rec[1:]),
          contains="has label 10, expected 0..9")

# %% [markdown]
# The archive is read in place: each member is decompressed into memory and parsed, and nothing from
# it is written to disk, so a member name cannot put a file anywhere. The names are still checked
# before anything is read. The official archive holds only plain files and folders under
# `cifar-10-batches-bin/`; an archive with an absolute name, a `..` step, a link or a device is not
# the official archive and is refused as a whole.

# %%
#| export
_CIFAR_FILES = [f'data_batch_{i}.bin' for i in range(1, 6)] + ['test_batch.bin']

def _safe_members(tar: tarfile.TarFile, what: str) -> dict:
    "The regular files of `tar` by name; refuses absolute names, `..` steps, links and devices."
    out = {}
    for m in tar.getmembers():
        parts = PurePosixPath(m.name).parts
        if (m.name.startswith(('/', '\\')) or '..' in parts or ':' in m.name
                or not (m.isfile() or m.isdir())):
            raise ValueError(f"load_cifar10: {what} holds an unsafe member {m.name!r} (type "
                             f"{m.type!r}); refusing the archive")
        if m.isfile(): out[m.name] = m
    return out

def load_cifar10(root=None,             # a folder holding cifar-10-binary.tar.gz; looked at first
                 download: bool = True, # download it into the cache if missing?
                ) -> tuple:
    "CIFAR-10: (X_train, y_train, X_test, y_test), uint8 images (N, 3, 32, 32), int64 labels."
    path = _locate(SOURCES['cifar10'], 'load_cifar10', root, download)['cifar-10-binary.tar.gz']
    with tarfile.open(path, 'r:gz') as tar:
        members = _safe_members(tar, str(path))
        missing = [f for f in _CIFAR_FILES if f'cifar-10-batches-bin/{f}' not in members]
        if missing: raise ValueError(f"load_cifar10: {path} lacks cifar-10-batches-bin/{missing}")
        parts = [parse_cifar10_batch(tar.extractfile(members[f'cifar-10-batches-bin/{f}']).read(),
                                     f) for f in _CIFAR_FILES]
    train = np.concatenate([x for x, _ in parts[:5]]), np.concatenate([y for _, y in parts[:5]])
    return train + parts[5]

# %% [markdown]
# An archive whose member would climb out of its folder is refused before anything is read:

# %%
buf = io.BytesIO()
with tarfile.open(fileobj=buf, mode='w:gz') as t:
    info = tarfile.TarInfo('cifar-10-batches-bin/../../evil.sh'); info.size = 3
    t.addfile(info, io.BytesIO(b'abc'))
buf.seek(0)
with tarfile.open(fileobj=buf, mode='r:gz') as t:
    test_fail(lambda: _safe_members(t, 'evil.tar.gz'),
              contains="unsafe member 'cifar-10-batches-bin/../../evil.sh'")

# %% [markdown]
# ## Measuring the pipeline
#
# How much does data loading cost next to training? The measurement uses Fashion-MNIST when its
# files can be found without downloading, the digits otherwise. Four loader configurations each run
# whole epochs of batches of 128; the training step is one SGD update of an MLP 784-128-10
# (64-128-10 on the digits) on one such batch. After a warm-up, five rounds alternate the candidates
# (each round: one epoch of every configuration, then 20 steps), and each figure is the median over
# the rounds, so a slow moment of the machine touches all candidates alike. Everything runs with one
# BLAS thread, as the project's benchmarks do.

# %%
try:
    Xtr, ytr, Xte, yte = load_fashion_mnist(download=False)
    data_name, pad = 'Fashion-MNIST', 2
except FileNotFoundError as e:
    print(f"Fashion-MNIST not found ({e}); measuring on the digits")
    Xtr, ytr, Xte, yte = load_digits()
    data_name, pad = 'digits', 1
to_float = [ToFloat()] if Xtr.dtype == np.uint8 else []
px = Compose(to_float)(Xtr)  # (N, 1, H, W) float32 in [0, 1]
stats = ([round(float(px.mean()), 3)], [round(float(px.std()), 3)])    # for Normalize
del px
print(f"{data_name}: {len(Xtr):,} training images {Xtr.shape[1:]} {Xtr.dtype}, {len(Xte):,} test; "
      f"training classes {np.bincount(ytr).tolist()}; pixel mean {stats[0][0]}, std {stats[1][0]}")

# %% [markdown]
# The first row shows training images, the second the same images after `RandomCrop` with padding
# and `RandomHorizontalFlip`: shifted by a few pixels, some mirrored.

# %%
fig, axes = plt.subplots(2, 8, figsize=(10, 2.8))
aug = Compose(to_float + [RandomCrop(Xtr.shape[-1], padding=pad, seed=1),
                          RandomHorizontalFlip(seed=1)])(Xtr[:8])
orig = Compose(to_float)(Xtr[:8]) if to_float else Xtr[:8]
for k in range(8):
    axes[0, k].imshow(orig[k, 0], cmap='gray'); axes[0, k].axis('off')
    axes[1, k].imshow(aug[k, 0], cmap='gray'); axes[1, k].axis('off')
plt.tight_layout(); plt.show()

# %%
flat = lambda x: x.reshape(len(x), -1)  # (N, C, H, W) -> (N, C*H*W)
augment = [RandomCrop(Xtr.shape[-1], pad, seed=0), RandomHorizontalFlip(seed=0), Normalize(*stats)]
configs = {
    'in order':              DataLoader(TensorDataset(Xtr, ytr), 128,
                                        transform=Compose(to_float + [flat])),
    'shuffled':              DataLoader(TensorDataset(Xtr, ytr), 128, shuffle=True, seed=0,
                                        transform=Compose(to_float + [flat])),
    'shuffled + augmented':  DataLoader(TensorDataset(Xtr, ytr), 128, shuffle=True, seed=0,
                                        transform=Compose(to_float + augment + [flat])),
    'shuffled, per example': DataLoader(Rows(Xtr, ytr), 128, shuffle=True, seed=0,
                                        transform=Compose(to_float + [flat])),
}
manual_seed(0)
d_in = int(np.prod(Xtr.shape[1:]))
model = Sequential(Linear(d_in, 128), ReLU(), Linear(128, 10))
loss_fn, opt = CrossEntropyLoss(), SGD(model.parameters(), lr=0.05)
xb, yb = next(iter(configs['shuffled']))

def step():
    opt.zero_grad()
    loss_fn(model(xb), yb).backward()
    opt.step()

def epoch(loader):
    for _ in loader: pass

candidates = {k: (lambda dl=dl: epoch(dl)) for k, dl in configs.items()}
with blas_threads(1):
    c = compare({**candidates, 'step': step}, rounds=5)  # an epoch per sample; steps in batches
per_batch = {k: c[k].median / len(dl) for k, dl in configs.items()}
step_s = c['step'].median
print(f"{os.cpu_count()} CPUs, NumPy {np.__version__}, one BLAS thread; {len(configs['in order'])} "
      f"batches of 128 per epoch")
for k, s in per_batch.items():
    print(f"{k:>22}: {1 / s:8,.0f} batches/s ({1e6 * s:7.1f} us per batch)")
print(f"training step, MLP {d_in}-128-10: {1e3 * step_s:.2f} ms")
shuffling = (per_batch['shuffled'] - per_batch['in order']) / step_s
augmenting = (per_batch['shuffled + augmented'] - per_batch['shuffled']) / step_s
whole = per_batch['shuffled + augmented'] / step_s
print(f"per batch, shuffling costs {shuffling:+.1%} of a training step, augmentation "
      f"{augmenting:+.1%}; the whole augmented loader {whole:.1%}")
per_example = per_batch['shuffled, per example'] / per_batch['shuffled']
print(f"fetching example by example instead of by fancy index: "
      f"{per_example:.1f}x the loader's time per batch")

# %% [markdown]
# Shuffling is nearly free: a permutation per epoch, and per batch a gather in place of a slice.
# Augmentation costs a few passes over the batch (pad, gather, flip, normalise); next to this small
# MLP's step that is a visible share, next to the step of a convolutional network (`Conv2d`) a much
# smaller one. The fast path matters more: fetching examples one by one multiplies the loader's cost
# by the factor printed above. Two epochs of the MLP with the augmented loader, through
# `Trainer.fit`:

# %%
manual_seed(0)
model = Sequential(Linear(d_in, 128), ReLU(), Linear(128, 10))
tr = Trainer(model, CrossEntropyLoss(), Adam(model.parameters(), lr=2e-3), progress=False)
epochs_n = 2 if data_name == 'Fashion-MNIST' else 15
with blas_threads(1), Timer() as run:
    hist = tr.fit(configs['shuffled + augmented'], epochs=epochs_n,
                  val_data=DataLoader(TensorDataset(Xte, yte), 1000,
                                      transform=Compose(to_float + [Normalize(*stats), flat])))
print(f"{data_name}, MLP {d_in}-128-10, {epochs_n} epochs with augmentation in "
      f"{run.elapsed:.1f} s: "
      f"test accuracy {hist['val_acc'][-1]:.1%}")
assert hist['val_acc'][-1] > 0.75

# %% [markdown]
# ## Summary
#
# `DataLoader` turns any `Dataset` into re-iterable batches of Tensors, reshuffled every epoch from
# one seeded generator, with a fast path that indexes a `TensorDataset`'s arrays once per batch.
# Batch transforms are vectorised array operations. The real data sets are parsed from their
# published binary formats, found in `root`, the cache or a system folder, downloaded only when
# missing, and never used unless their SHA-256 matches the published value.

# %% [markdown]
# ## Optional: why a content digest
#
# A gzip file holds more than the compressed data: its header records a file name and a time. When
# Debian built its Fashion-MNIST package, the headers were rewritten (the name dropped, the time set
# to the build's), so the files' digests differ from the published ones while their content is the
# published content. `check_sha256` therefore accepts, for these files, the SHA-256 of the
# decompressed content; `tests/test_08_datasets.py` restores the original headers of Debian's files
# and gets back files with exactly the published digests.
