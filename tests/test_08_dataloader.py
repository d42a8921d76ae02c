"""DataLoader and batch transforms: coverage of every example per epoch, seeded order, fast path, transforms against loops."""
import numpy as np
import pytest
from hypothesis import given, settings, strategies as st
from hypothesis.extra.numpy import arrays

from tinytorch.core.activations import ReLU
from tinytorch.core.layers import Linear, Sequential
from tinytorch.core.losses import CrossEntropyLoss
from tinytorch.core.optimizers import SGD
from tinytorch.core.tensor import Tensor, manual_seed
from tinytorch.core.training import Trainer
from tinytorch.data.loader import (Compose, DataLoader, Dataset, Normalize, RandomCrop, RandomHorizontalFlip,
                                   TensorDataset, ToFloat, default_collate)

HYPOTHESIS = settings(max_examples=60)  # applied to this file's property tests by conftest.py


class Rows(Dataset):
    "Rows of X and y, one `__getitem__` per example: the general (collating) path of the loader."
    def __init__(self, X, y): self.X, self.y = X, y
    def __len__(self): return len(self.X)
    def __getitem__(self, i): return self.X[i], self.y[i]


def data(n):
    X = np.arange(n * 3, dtype=np.float32).reshape(n, 3)   # row i is 3i, 3i+1, 3i+2
    return X, np.arange(n)


@given(st.integers(0, 60), st.integers(1, 17), st.booleans(), st.booleans(), st.integers(0, 2**32 - 1),
       st.sampled_from([TensorDataset, Rows]))
def test_every_example_once_per_epoch(n, batch_size, shuffle, drop_last, seed, kind):
    X, y = data(n)
    dl = DataLoader(kind(X, y), batch_size, shuffle=shuffle, drop_last=drop_last, seed=seed)
    assert len(dl) == (n // batch_size if drop_last else -(-n // batch_size))
    for _ in range(2):
        batches = list(dl)
        assert len(batches) == len(dl)
        assert all(len(yb) == batch_size for _, yb in batches[:-1])
        seen = np.concatenate([yb.numpy() for _, yb in batches]) if batches else np.array([], np.int64)
        assert len(seen) == (n // batch_size * batch_size if drop_last else n)
        assert len(set(seen.tolist())) == len(seen)                       # no example twice
        if not shuffle: assert seen.tolist() == list(range(len(seen)))   # in order without shuffle
        for xb, yb in batches:
            np.testing.assert_array_equal(xb.numpy()[:, 0], 3 * yb.numpy())  # rows stay with their labels


@given(st.integers(1, 60), st.integers(1, 17), st.integers(0, 2**32 - 1))
def test_fast_path_equals_collating_path(n, batch_size, seed):
    X, y = data(n)
    fast = DataLoader(TensorDataset(X, y), batch_size, shuffle=True, seed=seed)
    slow = DataLoader(Rows(X, y), batch_size, shuffle=True, seed=seed)
    for _ in range(2):
        for (fx, fy), (sx, sy) in zip(fast, slow, strict=True):
            assert fx.dtype == sx.dtype and fy.dtype == sy.dtype
            np.testing.assert_array_equal(fx.numpy(), sx.numpy())
            np.testing.assert_array_equal(fy.numpy(), sy.numpy())


def epochs(loader, k):
    return [np.concatenate([yb.numpy() for _, yb in loader]).tolist() for _ in range(k)]


def test_same_seed_same_sequence_of_epochs_and_each_epoch_new():
    X, y = data(50)
    a = epochs(DataLoader(TensorDataset(X, y), 8, shuffle=True, seed=7), 4)
    b = epochs(DataLoader(TensorDataset(X, y), 8, shuffle=True, seed=7), 4)
    c = epochs(DataLoader(TensorDataset(X, y), 8, shuffle=True, seed=8), 4)
    assert a == b and a != c
    assert len({tuple(e) for e in a}) == 4           # 50! orders: four epochs repeating one would be a bug
    assert all(sorted(e) == list(range(50)) for e in a)


def test_generator_argument_and_manual_seed():
    X, y = data(30)
    g1, g2 = np.random.default_rng(5), np.random.default_rng(5)
    assert epochs(DataLoader(TensorDataset(X, y), 4, shuffle=True, seed=g1), 2) == \
           epochs(DataLoader(TensorDataset(X, y), 4, shuffle=True, seed=g2), 2)
    manual_seed(3); a = epochs(DataLoader(TensorDataset(X, y), 4, shuffle=True), 2)
    manual_seed(3); b = epochs(DataLoader(TensorDataset(X, y), 4, shuffle=True), 2)
    assert a == b


def test_batches_are_tensors_with_pytorch_dtypes():
    X, y = data(5)
    xb, yb = next(iter(DataLoader(Rows(X.astype(np.float64), [0.5, 1, 2, 3, 4]), 5)))
    assert isinstance(xb, Tensor) and xb.dtype == np.float32 and yb.dtype == np.float32  # floats default to float32
    xb, yb = next(iter(DataLoader(TensorDataset(X.astype(np.uint8), y), 5)))
    assert xb.dtype == np.uint8 and yb.dtype == np.int64                                 # integers keep their type


def test_single_field_dataset_custom_collate_and_transform():
    class Squares(Dataset):
        def __len__(self): return 4
        def __getitem__(self, i): return np.float32(i * i)
    assert next(iter(DataLoader(Squares(), 4))).numpy().tolist() == [0, 1, 4, 9]
    X, y = data(4)
    collate = lambda b: (np.stack([x for x, _ in b]) + 1, np.array([t for _, t in b]), "meta")
    xb, yb, meta = next(iter(DataLoader(Rows(X, y), 4, collate_fn=collate, transform=lambda x: -x)))
    assert meta == "meta" and xb.numpy()[:, 0].tolist() == [-1, -4, -7, -10] and yb.numpy().tolist() == [0, 1, 2, 3]


def test_failure_paths_name_the_values():
    X, y = data(4)
    with pytest.raises(ValueError, match="batch_size must be an int >= 1, got 2.5"): DataLoader(TensorDataset(X, y), 2.5)
    with pytest.raises(TypeError, match="must have __len__ and __getitem__, got a NoneType"): DataLoader(None, 2)
    with pytest.raises(ValueError, match=r"first dimensions differ, shapes \[\(4, 3\), \(3,\)\]"): TensorDataset(X, y[:3])
    with pytest.raises(ValueError, match=r"differ in shape, \[\(2,\), \(3,\)\]"):
        list(DataLoader(Rows([np.zeros(2), np.zeros(3)], [0, 1]), 2))
    with pytest.raises(TypeError, match="cannot batch a dict"): default_collate([{}, {}])
    with pytest.raises(NotImplementedError, match="must define __getitem__"): Dataset()[0]


def test_dataloader_trains_with_trainer_fit():
    manual_seed(0)
    rng = np.random.default_rng(0)
    X = rng.standard_normal((256, 4)).astype(np.float32)
    y = (X[:, 0] + X[:, 1] > 0).astype(np.int64)
    model = Sequential(Linear(4, 16), ReLU(), Linear(16, 2))
    tr = Trainer(model, CrossEntropyLoss(), SGD(model.parameters(), lr=0.5), progress=False)
    hist = tr.fit(DataLoader(TensorDataset(X, y), 32, shuffle=True, seed=0), epochs=10,
                  val_data=DataLoader(TensorDataset(X, y), 256))
    assert tr.step == 80 and hist["train_loss"][-1] < hist["train_loss"][0] / 2 and hist["val_acc"][-1] > 0.9


# Transforms

images = st.tuples(st.integers(1, 6), st.integers(1, 3), st.integers(1, 9), st.integers(1, 9)).flatmap(
    lambda s: arrays(np.float32, s, elements=st.floats(-1e3, 1e3, width=32)))


@given(images, st.data())
def test_random_crop_equals_a_loop_over_images(x, data):
    n, c, h, w = x.shape
    p = data.draw(st.integers(0, 3))
    size = (data.draw(st.integers(1, h + 2 * p)), data.draw(st.integers(1, w + 2 * p)))
    seed = data.draw(st.integers(0, 2**32 - 1))
    out = RandomCrop(size, padding=p, seed=seed)(x)
    rng = np.random.default_rng(seed)                      # the draws the transform makes: rows, then columns
    i, j = rng.integers(0, h + 2 * p - size[0] + 1, n), rng.integers(0, w + 2 * p - size[1] + 1, n)
    for k in range(n):
        padded = np.pad(x[k], ((0, 0), (p, p), (p, p)))    # (C, H+2p, W+2p)
        np.testing.assert_array_equal(out[k], padded[:, i[k]:i[k] + size[0], j[k]:j[k] + size[1]])
    assert out.shape == (n, c) + size and out.dtype == x.dtype


@given(images, st.integers(0, 2**32 - 1))
def test_flip_equals_a_loop_over_images(x, seed):
    out = RandomHorizontalFlip(0.5, seed=seed)(x)
    flip = np.random.default_rng(seed).random(len(x)) < 0.5
    for k in range(len(x)):
        np.testing.assert_array_equal(out[k], x[k, :, :, ::-1] if flip[k] else x[k])


@given(images, st.data())
def test_normalize_matches_formula_per_channel(x, data):
    c = x.shape[1]
    mean = data.draw(st.lists(st.floats(-10, 10), min_size=c, max_size=c))
    std = data.draw(st.lists(st.floats(0.1, 10), min_size=c, max_size=c))
    out = Normalize(mean, std)(x)
    for ch in range(c):
        ref = (x[:, ch].astype(np.float64) - np.float32(mean[ch])) / np.float32(std[ch])
        # float32: one rounding in the subtraction and one in the division, each <= 2**-24 relative: (1 + u)**2 - 1 < 2.01u;
        # below 2**-126 (subnormals) the spacing is a fixed 2**-149, so each rounding there is <= 2**-150 absolute
        np.testing.assert_allclose(out[:, ch], ref, rtol=2.01 * 2**-24, atol=2 * 2**-150)


def test_random_transforms_repeat_with_a_seed_and_vary_across_batches():
    x = np.random.default_rng(0).random((64, 1, 8, 8), dtype=np.float32)
    t1, t2 = RandomCrop(8, 2, seed=4), RandomCrop(8, 2, seed=4)
    a1, a2 = t1(x), t1(x)
    np.testing.assert_array_equal(a1, t2(x))
    assert not np.array_equal(a1, a2)                       # the second batch gets new offsets
    f = RandomHorizontalFlip(seed=1)(np.repeat(x[:1], 2000, axis=0))
    share = (f[:, 0, 0, 0] != x[0, 0, 0, 0]).mean()
    assert abs(share - 0.5) < 4 * (0.25 / 2000) ** 0.5     # binomial share within 4 standard deviations


def test_crop_works_on_uint8_and_transform_errors():
    x = np.arange(2 * 9, dtype=np.uint8).reshape(2, 1, 3, 3)
    assert RandomCrop(3, 1, seed=0)(x).dtype == np.uint8
    assert np.array_equal(RandomCrop(3)(x), x)
    pipeline = Compose([ToFloat(), RandomCrop(3, 1, seed=0), Normalize([0.5], [0.25])])
    assert pipeline(x[:, 0]).shape == (2, 1, 3, 3)
    with pytest.raises(ValueError, match=r"crop \(4, 4\) is larger than the padded image \(3, 3\)"): RandomCrop(4)(x)
    with pytest.raises(ValueError, match=r"expected a 4-D batch \(N, C, H, W\), got shape \(3, 3\)"): RandomCrop(2)(x[0, 0])
    with pytest.raises(TypeError, match="expected an ndarray batch, got a Tensor"): RandomHorizontalFlip()(Tensor(x))
    with pytest.raises(TypeError, match="expected uint8 images, got float32"): ToFloat()(x.astype(np.float32))
    with pytest.raises(ValueError, match="size must be positive and padding >= 0"): RandomCrop(2, padding=-1)


def test_loader_transform_sees_the_batch_array():
    X = np.random.default_rng(0).integers(0, 256, (10, 5, 5), dtype=np.uint8)
    dl = DataLoader(TensorDataset(X, np.zeros(10, np.int64)), 4, transform=Compose([ToFloat(), Normalize([0.5], [0.5])]))
    xb, _ = next(iter(dl))
    np.testing.assert_allclose(xb.numpy(), (X[:4, None] / 255 - 0.5) / 0.5, atol=1e-6)  # float32 rounding of values <= 1
