"""Shared pieces of the milestone scripts: options, the training run with its report, and the learning-curve plot.

Importing this module sets one BLAS thread unless the environment already sets one: for these small models a
second thread gains little, and on a machine shared with other work idle BLAS threads that spin can slow each
step down (`benchmarks/bench_conv.py --threads 1,2` measures both). It must therefore be imported before NumPy.
"""
import os

for _var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"): os.environ.setdefault(_var, "1")

import argparse
import math
from pathlib import Path

from tinytorch.core.losses import CrossEntropyLoss
from tinytorch.core.optimizers import Adam, CosineWarmupLR
from tinytorch.core.training import Trainer
from tinytorch.utils.timing import Timer


def options(doc: str, epochs: int, batch_size: int, lr: float) -> argparse.Namespace:
    "Command-line options shared by every milestone, with the milestone's own defaults."
    ap = argparse.ArgumentParser(description=doc)
    ap.add_argument("--epochs", type=int, default=epochs, help=f"passes over the training set (default {epochs})")
    ap.add_argument("--batch-size", type=int, default=batch_size, help=f"examples per step (default {batch_size})")
    ap.add_argument("--lr", type=float, default=lr, help=f"peak learning rate (default {lr})")
    ap.add_argument("--seed", type=int, default=0, help="seed for weights and shuffling (default 0)")
    ap.add_argument("--root", default=None, help="folder holding the data files (default: the usual search path)")
    ap.add_argument("--out", default="runs", help="folder for the learning-curve PNG (default runs/)")
    ap.add_argument("--no-progress", action="store_true", help="no progress bar")
    return ap.parse_args()


def adam_trainer(model, args: argparse.Namespace, batches_per_epoch: int, warmup: float) -> Trainer:
    "A cross-entropy `Trainer` with Adam at `args.lr`, warmed up over the fraction `warmup` of all steps, then cosine-decayed."
    opt = Adam(model.parameters(), lr=args.lr)
    steps = args.epochs * batches_per_epoch
    return Trainer(model, CrossEntropyLoss(), opt, scheduler=CosineWarmupLR(opt, math.ceil(warmup * steps), steps),
                   progress=not args.no_progress)


def plot_history(history: dict, path: Path, title: str) -> Path:
    "Write train/test loss and accuracy per epoch to a PNG at `path`."
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    epochs = range(1, len(history["train_loss"]) + 1)
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 3.5))
    ax1.plot(epochs, history["train_loss"], label="train"); ax1.plot(epochs, history["val_loss"], label="test")
    ax1.set_xlabel("epoch"); ax1.set_ylabel("cross-entropy"); ax1.legend()
    ax2.plot(epochs, history["train_acc"], label="train"); ax2.plot(epochs, history["val_acc"], label="test")
    ax2.set_xlabel("epoch"); ax2.set_ylabel("accuracy"); ax2.legend()
    fig.suptitle(title)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def run(name: str, trainer: Trainer, train_data, test_data, epochs: int, target: float, out: str,
        time_limit: float | None = None) -> int:
    "Train epoch by epoch, printing each; plot the curves; report the final test accuracy against `target`. Exit code."
    print(f"{name}: {sum(p.size for p in trainer.model.parameters()):,} parameters, "
          f"{len(train_data)} training batches per epoch, {os.cpu_count()} cores")
    with Timer() as run_time:
        for epoch in range(1, epochs + 1):
            h = trainer.fit(train_data, epochs=1, val_data=test_data)
            print(f"epoch {epoch:>2}/{epochs}: train loss {h['train_loss'][-1]:.4f} acc {h['train_acc'][-1]:.2%}, "
                  f"test loss {h['val_loss'][-1]:.4f} acc {h['val_acc'][-1]:.2%}, {h['seconds'][-1]:.1f} s", flush=True)
    total = run_time.elapsed
    png = plot_history(trainer.history, Path(out) / f"{name}.png", f"{name}: test accuracy {h['val_acc'][-1]:.2%}")
    acc = h["val_acc"][-1]
    met = acc >= target and (time_limit is None or total <= time_limit)
    limit = f" within {time_limit:.0f} s" if time_limit else ""
    print(f"{name}: test accuracy {acc:.2%} after {epochs} epochs, {total:.1f} s in all "
          f"({total / epochs:.1f} s per epoch, train and test); target {target:.0%}{limit}: "
          f"{'met' if met else 'NOT met'}; curves in {png}")
    return 0 if met else 1
