"""Compress the Fashion-MNIST LeNet: pruning, channel pruning, distillation, prune + INT8; one table.

Starts from runs/fashion_lenet.npz (run `tito milestone fashion_lenet` first). Each stage fine-tunes
with Adam on the 60,000 training images and reports accuracy on the 10,000 test images. Targets
(issue 18), all against the loaded model's accuracy:
  A  70% of the weights pruned (one shot, global magnitude), at most 0.5 points lost after
     fine-tuning; the first convolution and the last Linear (1% of the weights, the most
     sensitive) stay dense, so the other layers are pruned a little further to make 70% (90% in
     B) of all Conv2d and Linear weights;
  B  90% pruned with the cubic schedule of Zhu and Gupta (from A's model), at most 1 point lost;
  C  channel pruning to at most half the FLOPs (`count_flops`), at least 1.6x faster at batch 64,
     at most 1 point lost;
  D  a student MLP distilled from the LeNet beats the same student trained alone (same initial
     weights, batches and epochs);
  E  B's model quantized by `quantize_model` (per channel) and stored as CSR with INT8 values at
     least 10x smaller on disk than the FP32 dense model, within 1 point.
Exit status 1 if a target is missed. Timings use one BLAS thread on a shared machine: noisy.
"""
import sys

from _common import plot_history  # noqa: F401  (first: it sets one BLAS thread before NumPy loads)

import argparse
import copy
import json
import os
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np

from fashion_lenet import CHECKPOINT, load_lenet
from fashion_mlp import prepare
from tinytorch.core.activations import ReLU
from tinytorch.core.autograd import no_grad
from tinytorch.core.layers import Linear, Sequential
from tinytorch.core.losses import cross_entropy
from tinytorch.core.optimizers import Adam, CosineWarmupLR
from tinytorch.core.spatial import Flatten
from tinytorch.core.tensor import Tensor, manual_seed
from tinytorch.core.training import Batches, atomic_write
from tinytorch.data.loader import load_fashion_mnist
from tinytorch.optimization.compression import (_hooks, cubic_sparsity, distillation_loss, prunable,
                                                prune_channels, prune_to, remove, sparsity, to_csr)
from tinytorch.optimization.profiling import count_flops
from tinytorch.optimization.quantization import quantize_model
from tinytorch.utils.timing import UnstableMeasurementWarning, blas_threads, compare, machine_info

warnings.simplefilter("ignore", UnstableMeasurementWarning)  # stage C prints the spread instead

BATCH = 128


def accuracy(model, X, y) -> float:
    "Test accuracy in evaluation mode, batches of 1000, no graph."
    model.eval()
    with no_grad():
        hits = sum(int((model(Tensor(X[i:i + 1000])).data.argmax(1) == y[i:i + 1000]).sum())
                   for i in range(0, len(X), 1000))
    return hits / len(X)


def finetune(model, data, epochs: float, lr: float, seed: int, on_step=None):
    "Adam with cosine decay for `epochs` (may be fractional) over `data`; `on_step(t)` runs before step t."
    manual_seed(seed)                      # dropout draws from here: each stage repeats on its own
    X, y = data
    batches = Batches(X, y, BATCH, shuffle=True, seed=seed)
    total = int(round(epochs * len(batches)))
    opt = Adam(model.parameters(), lr=lr)
    sched = CosineWarmupLR(opt, 0, total)
    model.train()
    t = 0
    while t < total:
        for xb, yb in batches:
            if on_step: on_step(t)
            opt.zero_grad()
            cross_entropy(model(xb), yb).backward()
            opt.step(); sched.step()
            t += 1
            if t == total: break
    return model.eval()


def prune_overall(model, target: float):
    "Prune the inner layers globally by magnitude so that `target` of ALL Conv2d/Linear weights are zero."
    everything = prunable(model)
    inner = everything[1:-1]           # the first conv (400 weights) and the last Linear (840) stay dense
    total, inner_total = (sum(m.weight.size for m, _ in ps) for ps in (everything, inner))
    prune_to(inner, target * total / inner_total)


def stage_prune70(base, train, test, args):
    m = copy.deepcopy(base)
    prune_overall(m, 0.7)
    cut = accuracy(m, *test)
    finetune(m, train, args.ft_epochs, args.ft_lr, args.seed)
    return m, cut, accuracy(m, *test)


def stage_gradual90(start, train, test, args):
    "From the 70% model: the cubic schedule to 90% over the first half of the epochs, then fine-tuning."
    m = copy.deepcopy(start)
    steps = int(round(args.gradual_epochs * len(Batches(*train, BATCH))))
    n, dt = 10, max(1, steps // 20)                       # 10 pruning steps over the first half of training
    s_i = sparsity(m)['overall']

    def on_step(t):
        if t % dt == 0 and t <= n * dt: prune_overall(m, cubic_sparsity(t, s_i, 0.9, 0, n, dt))
    finetune(m, train, args.gradual_epochs, args.ft_lr, args.seed + 1, on_step)
    return m, accuracy(m, *test)


def stage_channels(base, train, test, args):
    slim = prune_channels(base, amount=args.channel_amount, n=1)
    cut = accuracy(slim, *test)
    finetune(slim, train, args.channel_epochs, args.channel_lr, args.seed + 2)
    acc = accuracy(slim, *test)
    x1 = Tensor(test[0][:1])
    flops = [count_flops(mdl.eval(), x1).total_flops for mdl in (base, slim)]
    xb = Tensor(test[0][:64])

    def fwd(net):
        def f():
            with no_grad(): net(xb)
        return f
    with blas_threads(1):
        c = compare({'dense': fwd(base.eval()), 'slim': fwd(slim.eval())}, rounds=args.rounds, min_time=0.05)
    return slim, cut, acc, flops, c


def stage_distill(base, train, test, args):
    "An MLP 784-hidden-10 trained alone and from the LeNet's logits: same init, batches and epochs."
    X, y = train
    with no_grad():
        zt = np.concatenate([base.eval()(Tensor(X[i:i + 1000])).data for i in range(0, len(X), 1000)])
    idx = np.arange(len(X))

    def student():
        manual_seed(args.seed + 3)
        return Sequential(Flatten(), Linear(784, args.hidden), ReLU(), Linear(args.hidden, 10))

    def train_student(distill: bool):
        s = student().train()
        batches = Batches(X, idx, BATCH, shuffle=True, seed=args.seed + 3)
        total = args.student_epochs * len(batches)
        opt = Adam(s.parameters(), lr=2e-3)
        sched = CosineWarmupLR(opt, 0, total)
        for _ in range(args.student_epochs):
            for xb, ib in batches:
                i = ib.data
                out = s(xb)
                loss = (distillation_loss(out, Tensor(zt[i]), y[i], T=args.T, alpha=args.alpha) if distill
                        else cross_entropy(out, y[i]))
                opt.zero_grad(); loss.backward(); opt.step(); sched.step()
        return accuracy(s, *test)
    return train_student(False), train_student(True)


def store(model, path: Path) -> int:
    "Write `model`'s state to `path` and return the file's bytes: 2-D+ weights with under a third nonzero as CSR."
    packed, meta = {}, []                                  # one array per dtype, so .npz headers stay few

    def put(key, a):
        a = np.ascontiguousarray(a).ravel()
        meta.append([key, str(a.dtype), a.size])
        packed.setdefault(str(a.dtype), []).append(a)
    for key, t in model.state_dict().items():
        a = t.data if isinstance(t, Tensor) else np.asarray(t)
        if a.ndim >= 2 and np.count_nonzero(a) < a.size / 3:
            A = to_csr(a.reshape(a.shape[0], -1), np.uint16)
            put(key + '/data', A.data); put(key + '/indices', A.indices); put(key + '/indptr', A.indptr)
        else: put(key, a)
    with atomic_write(path) as f:
        np.savez(f, meta=np.array(json.dumps(meta)), **{k: np.concatenate(v) for k, v in packed.items()})
    return path.stat().st_size


def stage_deep(p90, train, test, args):
    "B's model with its masks made permanent, quantized by `quantize_model` (static INT8, per channel)."
    m = copy.deepcopy(p90)
    for mod in m.modules():
        if 'weight' in _hooks(mod): remove(mod, 'weight')
    calib = [Tensor(train[0][i:i + 256]) for i in range(0, 2048, 256)]
    q = quantize_model(m, calib, per_channel=True)
    return m, q, accuracy(q, *test)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--checkpoint", default=f"runs/{CHECKPOINT}", help="the trained LeNet (default runs/%(default)s)")
    ap.add_argument("--ft-epochs", type=float, default=3.0, help="fine-tuning epochs after 70%% pruning")
    ap.add_argument("--ft-lr", type=float, default=2e-4, help="peak Adam learning rate in stages A and B")
    ap.add_argument("--gradual-epochs", type=float, default=4.0, help="epochs of gradual pruning to 90%%")
    ap.add_argument("--channel-amount", type=float, default=0.375, help="fraction of each conv's channels cut")
    ap.add_argument("--channel-lr", type=float, default=1e-3, help="peak Adam learning rate after channel pruning")
    ap.add_argument("--channel-epochs", type=float, default=3.0, help="fine-tuning epochs after channel pruning")
    ap.add_argument("--hidden", type=int, default=128, help="hidden units of the student MLP")
    ap.add_argument("--student-epochs", type=int, default=15, help="epochs for each student")
    ap.add_argument("--T", type=float, default=2.0, help="distillation temperature")
    ap.add_argument("--alpha", type=float, default=0.3, help="weight of the distillation term")
    ap.add_argument("--rounds", type=int, default=15, help="alternating timing rounds")
    ap.add_argument("--stages", default="ABCDE", help="which stages to run (default ABCDE)")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    if not Path(args.checkpoint).exists():
        sys.exit(f"compress_fashion: no checkpoint at {args.checkpoint}; run `tito milestone fashion_lenet` first")
    start = time.perf_counter()
    info = machine_info()
    print(f"compress_fashion: {info['cores']} cores, BLAS {info['blas']} with {info['blas_threads']} thread(s), "
          f"load average {os.getloadavg()[0]:.1f}", flush=True)
    X_train, y_train, X_test, y_test = load_fashion_mnist()
    train, test = (prepare(X_train, False), y_train), (prepare(X_test, False), y_test)
    base = load_lenet(args.checkpoint)
    base_acc = accuracy(base, *test)
    print(f"loaded {args.checkpoint}: test accuracy {base_acc:.2%}", flush=True)
    rows, ok = [], True

    def row(name, figure, target, met):
        nonlocal ok
        ok &= met
        rows.append((name, figure, target, 'met' if met else 'NOT met'))
        print(f"  [{time.perf_counter() - start:6.0f} s] {name}: {figure} (target {target}: "
              f"{'met' if met else 'NOT met'})", flush=True)

    p70 = p90 = None
    if 'A' in args.stages or 'B' in args.stages or 'E' in args.stages:
        p70, cut, acc = stage_prune70(base, train, test, args)
        sp = sparsity(p70)['overall']
        row("A 70% one-shot + fine-tune", f"sparsity {sp:.1%}, accuracy {base_acc:.2%} -> {cut:.2%} -> {acc:.2%}, "
            f"lost {100 * (base_acc - acc):.2f} pt", "<= 0.5 pt", base_acc - acc <= 0.005 and sp >= 0.7 - 1e-3)
    if 'B' in args.stages or 'E' in args.stages:
        p90, acc = stage_gradual90(p70, train, test, args)
        sp = sparsity(p90)
        row("B 90% gradual (cubic)", f"sparsity {sp['overall']:.1%} (" + ", ".join(
            f"{k.split('.')[0]} {v:.0%}" for k, v in sp.items() if k != 'overall') + f"), accuracy {acc:.2%}, "
            f"lost {100 * (base_acc - acc):.2f} pt", "<= 1 pt", base_acc - acc <= 0.01 and sp['overall'] >= 0.9 - 1e-3)
    if 'C' in args.stages:
        slim, cut, acc, flops, c = stage_channels(base, train, test, args)
        speed = 1 / c.ratio('slim', 'dense')
        params = lambda net: sum(p.size for p in net.parameters())
        row("C channel pruning", f"{args.channel_amount:.1%} of channels cut, {params(base):,} -> {params(slim):,} "
            f"params, FLOPs {flops[0]:,} -> {flops[1]:,} ({flops[1] / flops[0]:.2f}x), batch 64 forward "
            f"{c['dense'].median * 1e3:.2f} -> {c['slim'].median * 1e3:.2f} ms ({speed:.2f}x faster; IQR "
            f"{c['dense'].spread:.0%} and {c['slim'].spread:.0%} of the medians), accuracy "
            f"{cut:.2%} cut -> {acc:.2%}, lost {100 * (base_acc - acc):.2f} pt",
            "FLOPs <= 0.5x, >= 1.6x faster, <= 1 pt",
            flops[1] <= flops[0] / 2 and speed >= 1.6 and base_acc - acc <= 0.01)
    if 'D' in args.stages:
        alone, taught = stage_distill(base, train, test, args)
        row("D distillation", f"MLP 784-{args.hidden}-10, {args.student_epochs} epochs, T={args.T}, alpha={args.alpha}: "
            f"alone {alone:.2%}, distilled {taught:.2%} ({100 * (taught - alone):+.2f} pt)",
            "distilled > alone", taught > alone)
    if 'E' in args.stages:
        fixed, q, acc8 = stage_deep(p90, train, test, args)
        with tempfile.TemporaryDirectory() as d:
            dense_b, csr32, csr8 = (store(mdl, Path(d) / f"{i}.npz") for i, mdl in enumerate((base, fixed, q)))
        row("E prune + INT8 on disk", f"dense FP32 {dense_b:,} B; 90% pruned as CSR FP32 {csr32:,} B "
            f"({dense_b / csr32:.1f}x); then quantize_model (static INT8, per channel, BatchNorm folded) as CSR INT8 "
            f"{csr8:,} B ({dense_b / csr8:.1f}x); INT8 accuracy {acc8:.2%}, lost {100 * (base_acc - acc8):.2f} pt",
            ">= 10x, <= 1 pt", dense_b / csr8 >= 10 and base_acc - acc8 <= 0.01)
    total = time.perf_counter() - start
    print(f"\ncompress_fashion: baseline {base_acc:.2%}, {total:.0f} s in all")
    w = max(len(r[0]) for r in rows)
    for name, fig, target, met in rows: print(f"{name:<{w}}  {met:<7}  target {target}\n{'':<{w}}  {fig}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
