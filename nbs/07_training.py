# %%
#| default_exp core.training

# %% [markdown]
# # Training
#
# > The loop that trains a model with a loss and an optimizer: history, safe checkpoints, examples.

# %% [markdown]
# Every earlier module supplied one piece: tensors, activations, layers, losses, gradients,
# optimizers. This module puts them in a loop. A `Trainer` runs epochs of training and evaluation,
# records loss and accuracy, steps a learning-rate schedule, clips gradients, and stops with an
# error that names the step when the loss stops being a number. `save_checkpoint` and
# `load_checkpoint` store a run in a file that cannot run code when loaded and is never left
# half-written.
#
# The module ends with three milestones of neural-network history, each trained here and measured:
# Rosenblatt's perceptron (1957), the XOR problem that a single layer cannot solve (1969), and a
# multilayer perceptron trained by backpropagation on real handwritten digits (1986).

# %%
#| export
import contextlib
import json
import math
import os
import tempfile
import time
import zipfile
from pathlib import Path

import numpy as np
from fastcore.basics import patch
from tqdm.auto import tqdm

from tinytorch.core.tensor import Tensor
from tinytorch.core.autograd import no_grad
from tinytorch.core.layers import Module
from tinytorch.core.optimizers import LRScheduler, Optimizer, clip_grad_norm_

# %%
#| hide
import gzip
from importlib.resources import files

import matplotlib
import matplotlib.pyplot as plt
from fastcore.test import test_eq, test_fail, test_close

from tinytorch.core.tensor import manual_seed, randn
from tinytorch.utils.timing import Timer
from tinytorch.core.activations import ReLU
from tinytorch.core.layers import Linear, Sequential, Parameter
from tinytorch.core.losses import CrossEntropyLoss, MSELoss
from tinytorch.core.optimizers import SGD, Adam, StepLR, CosineWarmupLR

# %% [markdown]
# ## Mini-batches
#
# A training step looks at a mini-batch of examples rather than one or all: enough to average out
# the noise of single examples, few enough to take many steps per pass over the data. `Batches` cuts
# arrays `X` and `y` into batches of `batch_size` rows, in order or shuffled. The shuffle comes from
# one generator seeded once, so each epoch sees a new order and the whole sequence of orders is the
# same on every run with the same seed. (The data-loading module generalises this into
# `DataLoader`.)

# %%
#| export
class Batches:
    """Re-iterable mini-batches `(Tensor x, Tensor y)` of arrays `X` and `y`, optionally shuffled
    each epoch."""
    def __init__(self, X, y, batch_size: int = 32, shuffle: bool = False, seed=None,
                 drop_last: bool = False):
        X, y = np.asarray(X), np.asarray(y)
        if len(X) != len(y): raise ValueError(f"Batches: X has {len(X)} rows but y has {len(y)}")
        if not (isinstance(batch_size, int) and batch_size >= 1):
            raise ValueError(f"Batches: batch_size must be an int >= 1, got {batch_size!r}")
        self.X, self.y, self.batch_size = X, y, batch_size
        self.shuffle, self.drop_last = shuffle, drop_last
        self.rng = np.random.default_rng(seed)

    def __len__(self) -> int:
        n, b = len(self.X), self.batch_size
        return n // b if self.drop_last else -(-n // b)

    def __iter__(self):
        order = self.rng.permutation(len(self.X)) if self.shuffle else np.arange(len(self.X))
        for i in range(len(self)):
            idx = order[i * self.batch_size:(i + 1) * self.batch_size]
            yield Tensor(self.X[idx]), Tensor(self.y[idx])

# %%
X, y = np.arange(10, dtype=np.float32).reshape(5, 2), np.arange(5)
test_eq([len(b[1]) for b in Batches(X, y, 2)], [2, 2, 1])
test_eq(len(Batches(X, y, 2, drop_last=True)), 2)
seen = np.concatenate([b[1].numpy() for b in Batches(X, y, 2, shuffle=True, seed=0)])
# each example once per epoch
test_eq(sorted(seen), list(range(5)))
a, b = Batches(X, y, 2, shuffle=True, seed=0), Batches(X, y, 2, shuffle=True, seed=0)
test_eq([[t[1].numpy().tolist() for t in a] for _ in range(3)],
        [[t[1].numpy().tolist() for t in b] for _ in range(3)])
test_fail(lambda: Batches(X, y[:3]), contains="X has 5 rows but y has 3")

# %% [markdown]
# ## Accuracy
#
# For a classifier, accuracy counts the examples whose highest-scoring class is the target. Two
# shapes of output are recognised: `(N, C)` scores with integer targets, and one logit per example
# with float targets that are all 0 or 1, where a positive logit means class 1. For anything else,
# such as regression, there is no accuracy and the count is None.

# %%
#| export
def correct_count(output: Tensor, target: Tensor):
    """Number of correctly classified examples, or None when `output` and `target` are not a
    classification."""
    out, t = output.data, target.data
    if out.ndim == 2 and out.shape[1] > 1 and t.ndim == 1 and t.dtype.kind in 'iu':
        return int((out.argmax(axis=1) == t).sum())
    # one logit, 0/1 labels
    if t.dtype.kind == 'f' and out.size == t.size == len(out) and ((t == 0) | (t == 1)).all():
        return int(((out.reshape(-1) > 0) == (t.reshape(-1) > 0.5)).sum())
    return None

# %%
test_eq(correct_count(Tensor([[0.1, 0.9], [0.8, 0.2], [0.3, 0.7]]), Tensor([1, 1, 1])), 2)
test_eq(correct_count(Tensor([[2.], [-1.]]), Tensor([[1.], [1.]])), 1)
test_eq(correct_count(Tensor([0.5, -2.]), Tensor([0., 0.])), 1)
# float targets other than 0/1: regression
test_eq(correct_count(Tensor([0.5, 2.]), Tensor([0.4, 2.1])), None)
test_eq(correct_count(Tensor(np.zeros((3, 4))), Tensor(np.zeros((3, 4)))), None)

# %% [markdown]
# ## The Trainer
#
# One training step is five lines: clear the gradients, compute the output and the loss, check the
# loss is a finite number, backpropagate, and update. The check comes before the update, so a step
# that produced NaN or infinity never reaches the weights, and the error names the epoch and step:
# training that diverges fails loudly instead of printing `nan` for the rest of the run.
#
# Gradient clipping (`clip_grad_norm`, a maximum global norm) sits between backward and the update.
# A learning-rate schedule steps after every update (`scheduler_interval='step'`, as for
# `CosineWarmupLR`) or after every epoch (`'epoch'`, as `StepLR` is usually used).

# %%
#| export
class Trainer:
    """Run epochs of training and evaluation of `model` with `loss_fn` and `optimizer`, recording
    the history."""
    def __init__(self, model: Module, loss_fn, optimizer: Optimizer,
                 scheduler: LRScheduler | None = None,  # learning-rate schedule, or None
                 scheduler_interval: str = 'step',      # 'step': after each update, or 'epoch'
                 clip_grad_norm: float | None = None,   # largest global gradient norm, or None
                 progress: bool = True,                 # show a progress bar per epoch (tqdm)
                ):
        if scheduler_interval not in ('step', 'epoch'):
            raise ValueError(f"Trainer: scheduler_interval must be 'step' or 'epoch', got "
                             f"{scheduler_interval!r}")
        self.model, self.loss_fn, self.optimizer = model, loss_fn, optimizer
        self.scheduler = scheduler
        self.scheduler_interval, self.clip_grad_norm = scheduler_interval, clip_grad_norm
        self.progress = progress
        self.step, self.epoch = 0, 0   # updates and epochs done so far
        keys = ('train_loss', 'train_acc', 'val_loss', 'val_acc', 'lr', 'seconds')
        self.history = {k: [] for k in keys}

# %%
#| export
@patch
def _train_step(self: Trainer, x: Tensor, y: Tensor, batch: int) -> tuple:
    "One update on the batch `(x, y)`; returns (loss value, number correct or None)."
    ### BEGIN SOLUTION
    self.optimizer.zero_grad()
    out = self.model(x)
    loss = self.loss_fn(out, y)
    value = loss.item()
    if not math.isfinite(value):
        raise FloatingPointError(f"Trainer: loss is {value} at epoch {self.epoch + 1}, "
                                 f"batch {batch + 1} "
                                 f"(update {self.step + 1}); lower the learning rate or "
                                 f"clip gradients")
    loss.backward()
    if self.clip_grad_norm is not None: clip_grad_norm_(self.optimizer.params, self.clip_grad_norm)
    self.optimizer.step()
    ### END SOLUTION
    self.step += 1
    if self.scheduler is not None and self.scheduler_interval == 'step': self.scheduler.step()
    return value, correct_count(out, y)


# %% [markdown]
# An epoch averages the per-batch losses weighted by batch size, which equals the mean over all
# examples for losses with `reduction='mean'`. Evaluation runs the model in `eval()` mode and under
# `no_grad()`, so it records no graph and layers such as dropout behave as at test time.

# %%
#| export
@patch
def _epoch(self: Trainer, data, train: bool) -> tuple:
    "One pass over `data`, training or evaluating; returns (mean loss, accuracy or None)."
    self.model.train(train)
    total, n, correct = 0.0, 0, 0
    bar = tqdm(data, desc=f"epoch {self.epoch + 1} {'train' if train else 'eval'}", leave=False,
               disable=not self.progress)
    for i, (x, y) in enumerate(bar):
        if train: value, right = self._train_step(x, y, i)
        else:
            with no_grad():
                out = self.model(x)
                value, right = self.loss_fn(out, y).item(), correct_count(out, y)
        total, n = total + value * len(y), n + len(y)
        correct = None if right is None or correct is None else correct + right
        if i % 10 == 0: bar.set_postfix(loss=f"{value:.4f}")
    if n == 0: raise ValueError("Trainer: the data yielded no batches")
    return total / n, (None if correct is None else correct / n)


# %%
#| export
@patch
def evaluate(self: Trainer, data) -> tuple:
    """Mean loss and accuracy (None if not a classification) of the model on `data`, without
    updating it."""
    return self._epoch(data, train=False)

@patch
def fit(self: Trainer, train_data, epochs: int, val_data=None) -> dict:
    """Train for `epochs` passes over `train_data`, evaluating on `val_data` after each; returns the
    history."""
    for _ in range(epochs):
        start = time.perf_counter()
        lr = self.optimizer.lr
        loss, acc = self._epoch(train_data, train=True)
        val_loss, val_acc = self.evaluate(val_data) if val_data is not None else (None, None)
        self.epoch += 1
        if self.scheduler is not None and self.scheduler_interval == 'epoch': self.scheduler.step()
        for k, v in zip(self.history,
                        (loss, acc, val_loss, val_acc, lr, time.perf_counter() - start)):
            self.history[k].append(v)
    return self.history


# %% [markdown]
# A regression that a reader can check: fitting $y = 2x + 1$ with one `Linear(1, 1)` and SGD
# recovers the slope and intercept.

# %%
manual_seed(0)
xs = np.linspace(-1, 1, 64, dtype=np.float32).reshape(-1, 1)
lin = Linear(1, 1)
tr = Trainer(lin, MSELoss(), SGD(lin.parameters(), lr=0.1), progress=False)
hist = tr.fit(Batches(xs, 2 * xs + 1, batch_size=16, shuffle=True, seed=0), epochs=60)
test_close(lin.weight.item(), 2., eps=1e-3)
test_close(lin.bias.item(), 1., eps=1e-3)
test_eq((len(hist['train_loss']), hist['train_acc'][0], tr.step), (60, None, 240))
print(f"after 60 epochs: w = {lin.weight.item():.4f}, b = {lin.bias.item():.4f}, loss "
      f"{hist['train_loss'][-1]:.2e}")

# %% [markdown]
# A learning rate far too large makes the loss overflow; the trainer stops at the first non-finite
# loss and says where.

# %%
lin = Linear(1, 1)
tr = Trainer(lin, MSELoss(), SGD(lin.parameters(), lr=1e18), progress=False)
with np.errstate(over='ignore', invalid='ignore'):    # the overflow is the point of this cell
    test_fail(lambda: tr.fit(Batches(xs * 1e10, xs * 1e10, batch_size=16), epochs=5),
              exc=FloatingPointError,
              contains="at epoch 1, batch 2 (update 2)")

# %% [markdown]
# A schedule is stepped for the trainer; the history records the learning rate each epoch started
# with.

# %%
lin = Linear(1, 1)
opt = SGD(lin.parameters(), lr=0.1)
tr = Trainer(lin, MSELoss(), opt, scheduler=StepLR(opt, step_size=2, gamma=0.5),
             scheduler_interval='epoch', progress=False)
test_eq(tr.fit(Batches(xs, xs, 16), epochs=5)['lr'], [0.1, 0.1, 0.05, 0.05, 0.025])
test_fail(lambda: Trainer(lin, MSELoss(), opt, scheduler_interval='batch'),
          contains="'step' or 'epoch', got 'batch'")

# %% [markdown]
# ## Same seed, same result
#
# Every source of randomness in a run, the weight initialisation (`manual_seed`) and the shuffle
# (`seed=`), is seeded, and NumPy's arithmetic is deterministic on one machine, so two runs with the
# same seeds give bit-identical weights and histories. The test trains twice and compares every
# number.

# %%
def run(seed: int):
    manual_seed(seed)
    model = Sequential(Linear(2, 8), ReLU(), Linear(8, 2))
    Xr = np.random.default_rng(seed).standard_normal((64, 2)).astype(np.float32)
    tr = Trainer(model, CrossEntropyLoss(), Adam(model.parameters(), lr=0.01), progress=False)
    h = tr.fit(Batches(Xr, (Xr[:, 0] > 0).astype(np.int64), 8, shuffle=True, seed=seed), epochs=3)
    return model.state_dict(), h['train_loss']

(w1, l1), (w2, l2), (w3, l3) = run(0), run(0), run(1)
test_eq(l1, l2)
for k in w1: test_eq(w1[k], w2[k])
test_eq(l1 == l3, False)

# %% [markdown]
# ## Checkpoints
#
# A checkpoint stores the model's `state_dict`, the optimizer's and the scheduler's state, and the
# epoch. Two things make it safe.
#
# *No code runs on load.* Python's pickle format can call any function while it loads, so a
# checkpoint from someone else would be a program. We write NumPy's `.npz` (a zip of `.npy` arrays)
# with `np.savez`, and read it with `np.load(..., allow_pickle=False)`, which refuses anything but
# plain arrays. The structure around the arrays (which names, which numbers, nested dictionaries of
# optimizer state) is stored as one JSON string.
#
# *No half-written file.* `save_checkpoint` writes to a temporary file in the same directory,
# flushes it to disk, and then renames it over the target. A rename within one file system is
# atomic, so the target is at every moment either the old complete checkpoint or the new complete
# one, even if the process is killed while writing.

# %%
#| export
_FORMAT = 'tinytorch-checkpoint-1'

def _encode(obj, arrays: dict, key: str):
    """A JSON-able description of `obj`; its ndarrays go into `arrays` under names derived from
    `key`."""
    if isinstance(obj, Tensor): obj = obj.data
    if isinstance(obj, np.ndarray):
        arrays[key] = obj
        return {'__array__': key}
    if isinstance(obj, dict):
        for k in obj:
            if not isinstance(k, (str, int)):
                raise TypeError(f"save_checkpoint: key {k!r} at {key!r} is not a str or int")
        return {'__dict__': [[k, _encode(v, arrays, f"{key}/{k}")] for k, v in obj.items()]}
    if isinstance(obj, (list, tuple)):
        items = [_encode(v, arrays, f"{key}/{i}") for i, v in enumerate(obj)]
        return {'__tuple__': items} if isinstance(obj, tuple) else items
    if isinstance(obj, np.generic): return obj.item()
    if obj is None or isinstance(obj, (bool, int, float, str)): return obj
    raise TypeError(f"save_checkpoint: cannot store a {type(obj).__name__} at {key!r}")

def _decode(obj, arrays):
    "Invert `_encode`, reading arrays from `arrays`."
    if isinstance(obj, list): return [_decode(v, arrays) for v in obj]
    if isinstance(obj, dict):
        if '__array__' in obj: return arrays[obj['__array__']]
        if '__tuple__' in obj: return tuple(_decode(v, arrays) for v in obj['__tuple__'])
        return {k: _decode(v, arrays) for k, v in obj['__dict__']}
    return obj

# %%
arrays = {}
state = {'state': {0: {'step': 3, 'exp_avg': np.ones(2)}}, 'betas': (0.9, 0.999), 'name': 'adam',
         'none': None}
enc = _encode(state, arrays, 'opt')
test_eq(list(arrays), ['opt/state/0/exp_avg'])
dec = _decode(json.loads(json.dumps(enc)), arrays)
test_eq(dec['state'][0]['step'], 3)                # the int key 0 stays an int
test_eq(dec['betas'], (0.9, 0.999))                 # the tuple stays a tuple
test_eq(dec['none'], None)
test_fail(lambda: _encode({'f': print}, {}, 'x'),
          contains="cannot store a builtin_function_or_method at 'x/f'")

# %% [markdown]
# `atomic_write` is the write-then-rename pattern as a context manager, so every file the package
# writes (checkpoints here, tokenizers and downloads later) goes through the same few lines.

# %%
#| export
@contextlib.contextmanager
def atomic_write(path, mode: str = 'wb', **open_kwargs):
    """Yield a temporary file beside `path`; on success flush it to disk and rename it over `path`,
    on failure delete it."""
    path = Path(path)
    ### BEGIN SOLUTION
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix='.tmp')
    try:
        with os.fdopen(fd, mode, **open_kwargs) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        # atomic: the old file or the new one, never a mix
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError): os.unlink(tmp)
        raise
    ### END SOLUTION

# %%
target = Path(tempfile.mkdtemp()) / 'note.txt'
with atomic_write(target, 'w') as f: f.write('first')
def fail_midway():
    with atomic_write(target, 'w') as f:
        f.write('second, half written')
        raise RuntimeError("stopped midway")          # as if the write had failed here
test_fail(fail_midway, contains="stopped midway")
test_eq(target.read_text(), 'first')
test_eq([p.name for p in target.parent.iterdir()], ['note.txt'])

# %%
#| export
def save_checkpoint(path,                              # file to write, usually ending in .npz
                    model: Module,
                    optimizer: Optimizer | None = None,
                    epoch: int | None = None,
                    scheduler: LRScheduler | None = None,
                    **extra,                           # further numbers, strings, lists or arrays
                   ) -> Path:
    "Write model, optimizer and scheduler state atomically to `path` as a pickle-free .npz file."
    arrays = {}
    meta = _encode({'format': _FORMAT, 'epoch': epoch, 'model': dict(model.state_dict()),
                    'optimizer': optimizer.state_dict() if optimizer is not None else None,
                    'scheduler': scheduler.state_dict() if scheduler is not None else None,
                    'extra': extra},
                   arrays, 'ckpt')
    path = Path(path)
    # UTF-8 bytes: a str array would take 4 per char
    text = np.frombuffer(json.dumps(meta).encode(), np.uint8)
    with atomic_write(path) as f: np.savez(f, __meta__=text, **arrays)
    return path

# %% [markdown]
# `load_checkpoint` reads everything before it changes anything, and restores everything it changed
# if a later part fails, so a checkpoint that does not fit the model (a missing layer, a different
# width) gives one clear error and leaves the model and optimizer exactly as they were.
# `read_checkpoint` returns the contents without loading them, for a script that needs the saved
# settings (say, a model's size) before it can build the model.

# %%
#| export
def read_checkpoint(path) -> dict:
    """The decoded contents of the checkpoint at `path` (format, epoch, model, optimizer, scheduler,
    extra), without loading them anywhere."""
    path = Path(path)
    if not path.exists(): raise FileNotFoundError(f"load_checkpoint: no checkpoint at {path}")
    try:
        with np.load(path, allow_pickle=False) as z:
            arrays = {k: z[k] for k in z.files}
        text = arrays.pop('__meta__')
        # UTF-8 bytes, or a str in older checkpoints
        meta = json.loads(text.tobytes().decode() if text.dtype == np.uint8 else str(text))
        content = _decode(meta, arrays)
    except (ValueError, OSError, KeyError, EOFError, zipfile.BadZipFile) as e:  # JSON errors too
        raise ValueError(f"load_checkpoint: {path} is not a readable checkpoint "
                         f"({type(e).__name__}: {e})") from None
    if not isinstance(content, dict) or content.get('format') != _FORMAT:
        raise ValueError(f"load_checkpoint: {path} is not a {_FORMAT} file")
    return content

# %%
#| export
def load_checkpoint(path,
                    model: Module,
                    optimizer: Optimizer | None = None,
                    scheduler: LRScheduler | None = None,
                   ) -> dict:
    """Load a checkpoint written by `save_checkpoint` into `model` (and `optimizer`, `scheduler`);
    all or nothing. Returns epoch and extras."""
    path = Path(path)
    c = read_checkpoint(path)
    others = ((optimizer, 'optimizer'), (scheduler, 'scheduler'))
    parts = [(model, c['model'])] + [(o, c[k]) for o, k in others if o is not None]
    for obj, state in parts:
        if state is None:
            raise ValueError(f"load_checkpoint: {path} holds no {type(obj).__name__} state")
    backups = [obj.state_dict() for obj, _ in parts]
    try:
        for obj, state in parts: obj.load_state_dict(state)
    except (RuntimeError, ValueError, KeyError, TypeError) as e:
        for (obj, _), backup in zip(parts, backups): obj.load_state_dict(backup)
        raise ValueError(f"load_checkpoint: {path} does not fit: {e}") from None
    return {'epoch': c['epoch'], **c['extra']}

# %% [markdown]
# A round trip: train, save, keep training; then load the checkpoint into fresh objects and train
# the same way. The two continuations are identical, which shows the optimizer's moment estimates
# and the schedule's position came back too.

# %%
def make(seed=0):
    manual_seed(seed)
    m = Sequential(Linear(2, 8), ReLU(), Linear(8, 2))
    o = Adam(m.parameters(), lr=0.01)
    return m, o, CosineWarmupLR(o, warmup_steps=2, total_steps=40)

Xc = np.random.default_rng(0).standard_normal((64, 2)).astype(np.float32)
yc = (Xc.sum(1) > 0).astype(np.int64)
ckpt = Path(tempfile.mkdtemp()) / 'run.npz'
m, o, s = make()
tr = Trainer(m, CrossEntropyLoss(), o, scheduler=s, progress=False)
tr.fit(Batches(Xc, yc, 16), epochs=2)
save_checkpoint(ckpt, m, o, epoch=2, scheduler=s, note='two epochs')
cont = tr.fit(Batches(Xc, yc, 16), epochs=2)['train_loss'][-2:]

# different initial weights, all overwritten by the load
m2, o2, s2 = make(seed=1)
info = load_checkpoint(ckpt, m2, o2, s2)
test_eq(info, {'epoch': 2, 'note': 'two epochs'})
tr2 = Trainer(m2, CrossEntropyLoss(), o2, scheduler=s2, progress=False)
test_eq(tr2.fit(Batches(Xc, yc, 16), epochs=2)['train_loss'], cont)
print(f"checkpoint: {ckpt.stat().st_size:,} bytes; continued losses {cont}")

# %% [markdown]
# A checkpoint of another architecture is refused and the model is untouched; a truncated file is
# reported as unreadable; a save that fails (here on a value it cannot store) leaves the previous
# checkpoint whole and no temporary file behind. `tests/test_07_training.py` also makes a save fail
# in the middle of writing.

# %%
other = Sequential(Linear(2, 4), ReLU(), Linear(4, 2))
before = other.state_dict()
test_fail(lambda: load_checkpoint(ckpt, other),
          contains="does not fit: load_state_dict: shape mismatch for '0.weight'")
for k, v in other.state_dict().items(): test_eq(v, before[k])

bad = ckpt.with_name('truncated.npz')
bad.write_bytes(ckpt.read_bytes()[:500])
test_fail(lambda: load_checkpoint(bad, m2), contains="is not a readable checkpoint")

good = ckpt.read_bytes()
test_fail(lambda: save_checkpoint(ckpt, m, o, epoch=3, bad=object()),
          contains="cannot store a object")
test_eq(ckpt.read_bytes(), good)
test_eq(sorted(p.name for p in ckpt.parent.iterdir()), ['run.npz', 'truncated.npz'])

# %% [markdown]
# ## Milestone 1957: the perceptron
#
# Rosenblatt's perceptron is a single linear unit with a threshold,
# $\hat y = \mathrm{sign}(w \cdot x + b)$, trained by his rule: for each misclassified example,
# $w \leftarrow w + y\,x$ and $b \leftarrow b + y$ (labels $y \in \{-1, 1\}$). No gradients, no
# loss. The perceptron convergence theorem guarantees a finite number of updates when the classes
# are linearly separable. The data: 200 points on either side of a random line, with a margin of 0.1
# left empty.

# %%
rng = np.random.default_rng(1957)
normal = rng.standard_normal(2); normal /= np.linalg.norm(normal)
pts = rng.uniform(-1, 1, (600, 2)).astype(np.float32)
dist = pts @ normal + 0.2
far = np.abs(dist) > 0.1
pts, labels = pts[far][:200], np.sign(dist[far][:200]).astype(np.float32)

w, b = Tensor(np.zeros(2)), Tensor(0.)
for epoch in range(1, 101):
    mistakes = 0
    for xi, yi in zip(pts, labels):
        if yi * ((Tensor(xi) @ w) + b).item() <= 0:
            w, b, mistakes = w + yi * Tensor(xi), b + yi, mistakes + 1
    if mistakes == 0: break
acc = float(((Tensor(pts) @ w + b).numpy() * labels > 0).mean())
print(f"perceptron: {len(pts)} points, no mistakes in epoch {epoch}, training accuracy {acc:.1%}")
test_eq(acc, 1.0)

# %% [markdown]
# ## Milestone 1969: XOR
#
# Minsky and Papert showed that a single-layer perceptron cannot compute XOR: no line separates
# $\{(0,0),(1,1)\}$ from $\{(0,1),(1,0)\}$. The data: 400 points in $[-1,1]^2$, class 1 when exactly
# one coordinate is positive, with a margin of 0.1 around the axes. A single `Linear` layer trained
# with cross-entropy does no better than guessing: its loss stays near $\ln 2$, the loss of
# predicting 50/50 for every point, and its accuracy stays near or below 50%. Two layers with a ReLU
# between them separate the classes.

# %%
rng = np.random.default_rng(1969)
P = rng.uniform(-1, 1, (1000, 2)).astype(np.float32)
P = P[(np.abs(P) > 0.1).all(1)][:400]
Y = ((P[:, 0] > 0) != (P[:, 1] > 0)).astype(np.int64)

def train_xor(model, epochs=200):
    "Train on the XOR points; return (loss, accuracy) on them afterwards."
    tr = Trainer(model, CrossEntropyLoss(), Adam(model.parameters(), lr=0.02), progress=False)
    tr.fit(Batches(P, Y, 50, shuffle=True, seed=0), epochs)
    return tr.evaluate(Batches(P, Y, len(P)))

manual_seed(0)
loss_linear, acc_linear = train_xor(Linear(2, 2))
loss_mlp, acc_mlp = train_xor(Sequential(Linear(2, 16), ReLU(), Linear(16, 2)))
print(f"XOR, {len(P)} points, classes {np.bincount(Y)}: one linear layer loss {loss_linear:.3f} "
      f"(ln 2 = {math.log(2):.3f}), "
      f"accuracy {acc_linear:.1%}; two layers with ReLU loss {loss_mlp:.3f}, accuracy "
      f"{acc_mlp:.1%}")
assert loss_linear > 0.68 and acc_linear < 0.75 and acc_mlp == 1.0

# %% [markdown]
# The best a line can do on four balanced quadrants is 75% (cut off one quadrant), so a linear model
# can never reach the 100% the two-layer network reaches.

# %% [markdown]
# ## Milestone 1986: an MLP on handwritten digits
#
# Rumelhart, Hinton and Williams made backpropagation the standard way to train multilayer networks.
# The data here is real: the UCI optical digits set, 1,797 images of 8x8 pixels with values 0..16,
# shipped with the package (`tinytorch/data/digits.csv.gz`, from scikit-learn, BSD-3; see
# `tinytorch/data/LICENSE-data.txt`). A fixed random split keeps 20% of the images for testing; the
# network never trains on them.

# %%
with gzip.open(files('tinytorch') / 'data' / 'digits.csv.gz', 'rt') as f:
    digits = np.loadtxt(f, delimiter=',', dtype=np.float32)                    # (1797, 65)
Xd, yd = digits[:, :64] / 16, digits[:, 64].astype(np.int64)                 # pixels to [0, 1]
perm = np.random.default_rng(0).permutation(len(Xd))
n_test = len(Xd) // 5
test_idx, train_idx = perm[:n_test], perm[n_test:]
print(f"digits: {len(train_idx)} training and {len(test_idx)} test images, classes "
      f"{np.bincount(yd)}")

# %%
manual_seed(1986)
mlp = Sequential(Linear(64, 128), ReLU(), Linear(128, 64), ReLU(), Linear(64, 10))
opt = Adam(mlp.parameters(), lr=2e-3)
trainer = Trainer(mlp, CrossEntropyLoss(), opt,
                  scheduler=CosineWarmupLR(opt, warmup_steps=23, total_steps=30 * 23),
                  progress=False)
with Timer() as run:
    hist = trainer.fit(Batches(Xd[train_idx], yd[train_idx], 64, shuffle=True, seed=0), epochs=30,
                       val_data=Batches(Xd[test_idx], yd[test_idx], 256))
seconds = run.elapsed
print(f"MLP 64-128-64-10, 30 epochs in {seconds:.1f} s: test accuracy {hist['val_acc'][-1]:.2%}, "
      f"train accuracy {hist['train_acc'][-1]:.2%}")
assert hist['val_acc'][-1] >= 0.95

# %%
fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(9, 3))
ax1.plot(hist['train_loss'], label='train'); ax1.plot(hist['val_loss'], label='test')
ax1.set_xlabel('epoch'); ax1.set_ylabel('loss'); ax1.legend()
ax2.plot(hist['train_acc'], label='train'); ax2.plot(hist['val_acc'], label='test')
ax2.set_xlabel('epoch'); ax2.set_ylabel('accuracy'); ax2.legend()
plt.tight_layout(); plt.show()

# %% [markdown]
# ## Summary
#
# `Trainer` runs the training step (clear, forward, check, backward, clip, update, schedule) and
# evaluation in `no_grad` and `eval()` mode, and keeps a history. Seeded runs repeat exactly.
# Checkpoints are pickle-free `.npz` files written atomically and loaded all or nothing.
