"""Trainer, Batches and checkpoints: reproducibility, failure paths, atomic saves."""
import os

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from tinytorch.core.activations import ReLU
from tinytorch.core.layers import Linear, Sequential
from tinytorch.core.losses import CrossEntropyLoss
from tinytorch.core.optimizers import SGD, Adam, CosineWarmupLR
from tinytorch.core.tensor import manual_seed
from tinytorch.core.training import Batches, Trainer, load_checkpoint, read_checkpoint, save_checkpoint

HYPOTHESIS = settings(max_examples=40)  # applied to this file's property tests by conftest.py


@given(st.integers(1, 50), st.integers(1, 16), st.booleans(), st.booleans(), st.integers(0, 2**32 - 1))
def test_batches_cover_each_example_once_per_epoch(n, batch_size, shuffle, drop_last, seed):
    X, y = np.arange(n * 2, dtype=np.float32).reshape(n, 2), np.arange(n)
    b = Batches(X, y, batch_size, shuffle=shuffle, seed=seed, drop_last=drop_last)
    for _ in range(2):
        seen = np.concatenate([t.numpy() for _, t in b]) if len(b) else np.array([], int)
        assert len(seen) == (n // batch_size * batch_size if drop_last else n)
        assert len(set(seen.tolist())) == len(seen)                      # no example twice
        for xb, yb in b:
            np.testing.assert_array_equal(xb.numpy()[:, 0], yb.numpy() * 2)  # rows stay with their labels


def data(seed=0, n=96):
    rng = np.random.default_rng(seed)
    X = rng.standard_normal((n, 4)).astype(np.float32)
    return X, (X[:, 0] * X[:, 1] > 0).astype(np.int64)


def run(seed):
    manual_seed(seed)
    model = Sequential(Linear(4, 16), ReLU(), Linear(16, 2))
    opt = Adam(model.parameters(), lr=0.01)
    tr = Trainer(model, CrossEntropyLoss(), opt, scheduler=CosineWarmupLR(opt, 3, 30), clip_grad_norm=1.0, progress=False)
    X, y = data()
    hist = tr.fit(Batches(X, y, 16, shuffle=True, seed=seed), epochs=5, val_data=Batches(X, y, 32))
    return model.state_dict(), hist


def test_same_seed_same_result():
    (w1, h1), (w2, h2) = run(3), run(3)
    assert h1["train_loss"] == h2["train_loss"] and h1["val_acc"] == h2["val_acc"] and h1["lr"] == h2["lr"]
    for k in w1: np.testing.assert_array_equal(w1[k], w2[k])
    _, h3 = run(4)
    assert h3["train_loss"] != h1["train_loss"]


def test_training_lowers_the_loss_and_records_history():
    _, h = run(0)
    assert len(h["train_loss"]) == 5 and h["train_loss"][-1] < h["train_loss"][0]
    assert all(0 <= a <= 1 for a in h["val_acc"])


def test_nan_loss_stops_with_the_step_and_leaves_weights_finite():
    manual_seed(0)
    model = Linear(4, 2)
    X, y = data()
    X[40] = np.nan                                             # batch 3 of 16 rows holds the NaN
    tr = Trainer(model, CrossEntropyLoss(), SGD(model.parameters(), lr=0.1), progress=False)
    with pytest.raises(FloatingPointError, match=r"loss is nan at epoch 1, batch 3 \(update 3\)"):
        tr.fit(Batches(X, y, 16), epochs=1)
    assert all(np.isfinite(p.numpy()).all() for p in model.parameters())


def make(seed=0):
    manual_seed(seed)
    m = Sequential(Linear(4, 8), ReLU(), Linear(8, 2))
    o = Adam(m.parameters(), lr=0.01)
    return m, o


def test_checkpoint_round_trip_restores_model_and_optimizer(tmp_path):
    m, o = make()
    X, y = data()
    Trainer(m, CrossEntropyLoss(), o, progress=False).fit(Batches(X, y, 16), epochs=2)
    path = save_checkpoint(tmp_path / "c.npz", m, o, epoch=2, best=0.5, tags=["a", "b"])
    m2, o2 = make(seed=9)
    assert load_checkpoint(path, m2, o2) == {"epoch": 2, "best": 0.5, "tags": ["a", "b"]}
    for k, v in m.state_dict().items(): np.testing.assert_array_equal(m2.state_dict()[k], v)
    s1, s2 = o.state_dict(), o2.state_dict()
    for i in s1["state"]:
        for k, v in s1["state"][i].items(): np.testing.assert_array_equal(s2["state"][i][k], v)
    with np.load(path, allow_pickle=False) as z:              # the file is plain arrays: loads without pickle
        assert z["__meta__"].dtype == np.uint8                # the description as UTF-8 bytes


def test_checkpoint_with_a_str_description_still_loads(tmp_path):
    "Checkpoints written before the description became UTF-8 bytes stored it as a NumPy str array."
    m, _ = make()
    path = save_checkpoint(tmp_path / "new.npz", m, epoch=1)
    with np.load(path, allow_pickle=False) as z: arrays = {k: z[k] for k in z.files}
    arrays["__meta__"] = np.array(arrays["__meta__"].tobytes().decode())
    np.savez(tmp_path / "old.npz", **arrays)
    assert read_checkpoint(tmp_path / "old.npz")["epoch"] == 1


def test_mismatched_model_is_refused_and_left_unchanged(tmp_path):
    m, o = make()
    path = save_checkpoint(tmp_path / "c.npz", m, o)
    other = Sequential(Linear(4, 8), ReLU(), Linear(8, 3))
    before = other.state_dict()
    with pytest.raises(ValueError, match=r"does not fit: load_state_dict: shape mismatch for '2.weight'"):
        load_checkpoint(path, other)
    for k, v in other.state_dict().items(): np.testing.assert_array_equal(v, before[k])


def test_optimizer_failure_rolls_back_the_model(tmp_path):
    m, o = make()
    path = save_checkpoint(tmp_path / "c.npz", m, o)
    m2, _ = make(seed=5)
    before = m2.state_dict()
    wrong_opt = SGD(list(m2.parameters())[:2], lr=0.1)          # 2 parameters where the checkpoint has 4
    with pytest.raises(ValueError, match="does not fit"):
        load_checkpoint(path, m2, wrong_opt)
    for k, v in m2.state_dict().items(): np.testing.assert_array_equal(v, before[k])


def test_missing_truncated_and_foreign_files(tmp_path):
    m, o = make()
    with pytest.raises(FileNotFoundError, match="no checkpoint at"):
        load_checkpoint(tmp_path / "nope.npz", m)
    path = save_checkpoint(tmp_path / "c.npz", m)
    data_ = path.read_bytes()
    for cut in (10, len(data_) // 2, len(data_) - 10):
        (tmp_path / "t.npz").write_bytes(data_[:cut])
        with pytest.raises(ValueError, match="is not a readable checkpoint"):
            load_checkpoint(tmp_path / "t.npz", m)
    np.savez(tmp_path / "f.npz", weights=np.ones(3))
    with pytest.raises(ValueError, match="is not a readable checkpoint"):
        load_checkpoint(tmp_path / "f.npz", m)


def test_a_save_that_fails_midway_keeps_the_old_file(tmp_path, monkeypatch):
    m, o = make()
    path = save_checkpoint(tmp_path / "c.npz", m, o, epoch=1)
    good = path.read_bytes()
    real_savez = np.savez

    def savez_then_fail(f, **arrays):            # fault injection: write a real partial file, then fail
        real_savez(f, **arrays)
        f.truncate(f.tell() // 2)
        raise OSError("disk full (injected)")

    monkeypatch.setattr(np, "savez", savez_then_fail)
    with pytest.raises(OSError, match="injected"):
        save_checkpoint(path, m, o, epoch=2)
    monkeypatch.undo()
    assert path.read_bytes() == good
    assert sorted(os.listdir(tmp_path)) == ["c.npz"]          # no temporary file left behind
    assert load_checkpoint(path, m, o)["epoch"] == 1
