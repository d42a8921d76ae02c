"""Framework overhead: per-op cost and a whole MLP training step, against raw NumPy (and PyTorch if installed).

Run: .venv/bin/python benchmarks/bench_overhead.py [--rounds N]

Protocol: one BLAS thread on every side (set before NumPy is imported); candidates alternate within each round;
each figure is the median over rounds of the mean time of a batch of calls after a warm-up. Ratios are taken
between medians measured in this same run. Targets (issue 3): add on 100 elements with gradient recording
under 2.5 us; MLP step at most 1.3x the raw NumPy step.
"""
import os

for _var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ[_var] = "1"

import argparse
import platform
import time

import numpy as np

from tinytorch.utils.timing import compare
from tinytorch.core.activations import ReLU
from tinytorch.core.layers import Linear, Sequential
from tinytorch.core.losses import cross_entropy
from tinytorch.core.optimizers import SGD
from tinytorch.core.tensor import Tensor, manual_seed

try:
    import torch
except ImportError:
    torch = None

B, SIZES, LR = 128, (784, 256, 128, 10), 0.01


def per_op(rounds: int) -> dict:
    rng = np.random.default_rng(0)
    xa, ya = rng.standard_normal(100, dtype=np.float32), rng.standard_normal(100, dtype=np.float32)
    xt, yt = Tensor(xa, requires_grad=True), Tensor(ya)
    assert (xt + yt).requires_grad and (xt + yt)._ctx is not None  # the graph really is recorded
    cands = {"numpy": lambda: xa + ya, "tinytorch": lambda: xt + yt}
    if torch is not None:
        xc, yc = torch.from_numpy(xa.copy()).requires_grad_(), torch.from_numpy(ya.copy())
        cands["torch"] = lambda: xc + yc
    return compare(cands, rounds=rounds, number=20_000)


def init_weights(seed: int = 0) -> list:
    "PyTorch-style U(-1/sqrt(in), 1/sqrt(in)) weights (out, in) and biases for the 784-256-128-10 MLP, float32."
    rng = np.random.default_rng(seed)
    out = []
    for i, o in zip(SIZES[:-1], SIZES[1:]):
        bound = 1 / np.sqrt(i)
        out += [rng.uniform(-bound, bound, (o, i)).astype(np.float32), rng.uniform(-bound, bound, o).astype(np.float32)]
    return out


def numpy_step_fn(weights: list, x: np.ndarray, y: np.ndarray):
    "The training step written by hand in NumPy: forward, softmax cross-entropy, backward, SGD."
    W1, b1, W2, b2, W3, b3 = [w.copy() for w in weights]
    rows = np.arange(len(y))

    def step() -> float:
        h1 = x @ W1.T + b1; a1 = np.maximum(h1, 0)                      # (B, 256)
        h2 = a1 @ W2.T + b2; a2 = np.maximum(h2, 0)                     # (B, 128)
        z = a2 @ W3.T + b3                                              # (B, 10)
        e = np.exp(z - z.max(1, keepdims=True)); p = e / e.sum(1, keepdims=True)
        loss = -np.log(p[rows, y]).mean()
        dz = p; dz[rows, y] -= 1; dz /= len(y)                          # (B, 10)
        gW3, gb3 = dz.T @ a2, dz.sum(0)
        da2 = dz @ W3; da2 *= h2 > 0                                    # (B, 128)
        gW2, gb2 = da2.T @ a1, da2.sum(0)
        da1 = da2 @ W2; da1 *= h1 > 0                                   # (B, 256)
        gW1, gb1 = da1.T @ x, da1.sum(0)
        for w, g in ((W1, gW1), (b1, gb1), (W2, gW2), (b2, gb2), (W3, gW3), (b3, gb3)): w -= LR * g
        return float(loss)
    return step


def tinytorch_step_fn(weights: list, x: np.ndarray, y: np.ndarray):
    "The same step with tinytorch's Linear, ReLU, cross_entropy, backward and SGD."
    manual_seed(0)
    model = Sequential(Linear(784, 256), ReLU(), Linear(256, 128), ReLU(), Linear(128, 10))
    model.load_state_dict(dict(zip(["0.weight", "0.bias", "2.weight", "2.bias", "4.weight", "4.bias"], weights)))
    opt = SGD(model.parameters(), lr=LR)
    xt, yt = Tensor(x), Tensor(y)

    def step() -> float:
        opt.zero_grad()
        loss = cross_entropy(model(xt), yt)
        loss.backward()
        opt.step()
        return loss.item()
    return step


def torch_step_fn(weights: list, x: np.ndarray, y: np.ndarray):
    "The same step in PyTorch."
    nn = torch.nn
    model = nn.Sequential(nn.Linear(784, 256), nn.ReLU(), nn.Linear(256, 128), nn.ReLU(), nn.Linear(128, 10))
    with torch.no_grad():
        for p, w in zip(model.parameters(), weights): p.copy_(torch.from_numpy(w))
    opt = torch.optim.SGD(model.parameters(), lr=LR)
    xt, yt = torch.from_numpy(x), torch.from_numpy(y)

    def step() -> float:
        opt.zero_grad()
        loss = nn.functional.cross_entropy(model(xt), yt)
        loss.backward()
        opt.step()
        return loss.item()
    return step


def mlp_step(rounds: int) -> dict:
    rng = np.random.default_rng(1)
    x = rng.standard_normal((B, SIZES[0]), dtype=np.float32)
    y = rng.integers(0, SIZES[-1], B)
    weights = init_weights()
    makers = {"numpy": numpy_step_fn, "tinytorch": tinytorch_step_fn}
    if torch is not None: makers["torch"] = torch_step_fn
    # the candidates compute the same thing: their losses agree over the first steps (float32 rounding apart)
    check = {name: make(weights, x, y) for name, make in makers.items()}
    traj = {name: [fn() for _ in range(3)] for name, fn in check.items()}
    ref = np.array(traj["numpy"])
    for name, t in traj.items():
        assert np.allclose(t, ref, rtol=1e-4), f"{name} losses {t} differ from numpy {list(ref)}"
    steps = {name: make(weights, x, y) for name, make in makers.items()}
    return compare(steps, rounds=rounds, number=20), traj


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rounds", type=int, default=15, help="alternating rounds per candidate (default 15)")
    args = ap.parse_args()
    print(f"machine: {platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}, "
          f"NumPy {np.__version__}" + (f", PyTorch {torch.__version__}" if torch else ", PyTorch not installed")
          + "; one BLAS thread per side")
    if torch is not None: torch.set_num_threads(1)

    op = per_op(args.rounds)
    print("\nelementwise add, 100 float32 elements, gradient recording on (median of per-call means)")
    for name, m in op.results.items():
        print(f"  {name:10} {m.median*1e6:7.2f} us  {op.ratio(name, 'numpy'):5.2f}x NumPy")
    t_add = op['tinytorch'].median
    print(f"  target: tinytorch under 2.50 us: {'met' if t_add < 2.5e-6 else 'NOT met'} ({t_add*1e6:.2f} us)")

    step, traj = mlp_step(args.rounds)
    print(f"\nMLP 784-256-128-10 training step, batch {B}: forward, cross-entropy, backward, SGD (median)")
    print("  losses over 3 steps agree: " + ", ".join(f"{n} {t[-1]:.5f}" for n, t in traj.items()))
    for name, m in step.results.items():
        print(f"  {name:10} {m.median*1e3:7.3f} ms  {step.ratio(name, 'numpy'):5.2f}x NumPy")
    ratio = step.ratio("tinytorch", "numpy")
    print(f"  target: tinytorch at most 1.30x NumPy: {'met' if ratio <= 1.3 else 'NOT met'} ({ratio:.2f}x)")


if __name__ == "__main__":
    main()
