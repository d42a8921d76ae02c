"""Compression speed: channel-pruned LeNet against dense, CSR matmul against dense BLAS by sparsity, low rank by rank.

Run: .venv/bin/python benchmarks/bench_compression.py [--rounds N]

Protocol: one BLAS thread (set before NumPy is imported); candidates alternate within each round (`compare` from
tinytorch.utils.timing); each figure is the median over rounds; ratios are medians of per-round ratios measured in
this same run. Before timing, each pair is checked to compute the same thing (the channel-pruned model with zeroed
channels against the masked one, CSR against dense, full-rank factors against the layer). The machine is shared:
figures flagged UNSTABLE had an IQR above 10% of the median.
Targets (issue 18): channel pruning that halves the FLOPs runs at least 1.6x faster at batch 64; the break-even
sparsity of the NumPy CSR matmul against BLAS is measured, not targeted.
"""
import os

for _var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ[_var] = "1"

import argparse
import warnings

import numpy as np

from tinytorch.core.activations import ReLU
from tinytorch.core.autograd import no_grad
from tinytorch.core.layers import Linear, Sequential
from tinytorch.core.normalization import BatchNorm2d, Dropout
from tinytorch.core.spatial import Conv2d, Flatten, MaxPool2d
from tinytorch.core.tensor import Tensor, manual_seed
from tinytorch.optimization.compression import csr_matmul, low_rank, magnitude_mask, prune_channels, to_csr
from tinytorch.utils.timing import UnstableMeasurementWarning, blas_threads, compare, machine_info



def lenet() -> Sequential:
    "The layout of milestones/fashion_lenet.py's `lenet()`, the model the targets are about."
    return Sequential(Conv2d(1, 16, 5, padding=2), BatchNorm2d(16), ReLU(), MaxPool2d(2),   # (N, 16, 14, 14)
                      Conv2d(16, 32, 5), BatchNorm2d(32), ReLU(), MaxPool2d(2),             # (N, 32, 5, 5)
                      Flatten(), Linear(32 * 5 * 5, 120), ReLU(), Dropout(0.25),             # (N, 120)
                      Linear(120, 84), ReLU(), Linear(84, 10))                                # (N, 10)

warnings.simplefilter("ignore", UnstableMeasurementWarning)  # flagged in the tables instead


def flag(m) -> str: return " UNSTABLE" if m.unstable else ""


def forward(net, x):
    def f():
        with no_grad(): net(x)
    return f


def channels(rounds: int):
    "Forward time at batch 64 of the LeNet and of copies with a fraction of each conv's channels removed."
    manual_seed(0)
    base = lenet().eval()
    x = Tensor(np.random.default_rng(0).standard_normal((64, 1, 28, 28)).astype(np.float32))
    try:
        from tinytorch.optimization.profiling import count_flops
    except ImportError:
        count_flops = None
    cands, flops = {"dense": forward(base, x)}, {}
    for amount in (0.25, 0.375, 0.5):
        slim = prune_channels(base, amount=amount).eval()
        cands[f"{amount:.1%} cut"] = forward(slim, x)
        if count_flops: flops[f"{amount:.1%} cut"] = count_flops(slim, x[:1]).total_flops
    if count_flops: flops["dense"] = count_flops(base, x[:1]).total_flops
    c = compare(cands, rounds=rounds, min_time=0.05)
    print("\nLeNet forward, batch 64 (median of rounds; channels cut from each Conv2d by L1 norm)")
    for name, m in c.results.items():
        f = f", FLOPs per image {flops[name]:,} ({flops[name] / flops['dense']:.2f}x)" if flops else ""
        print(f"  {name:12} {m.median * 1e3:7.2f} ms  {1 / c.ratio(name, 'dense'):5.2f}x faster{f}{flag(m)}")
    if not flops: print("  FLOPs: count_flops (tinytorch.optimization.profiling) is not available in this checkout")


def csr(rounds: int):
    "CSR matmul in NumPy against dense BLAS, (out, in) @ (in, 64), by sparsity."
    rng = np.random.default_rng(0)
    for out_f, in_f in ((120, 800), (512, 512)):
        W = rng.standard_normal((out_f, in_f)).astype(np.float32)
        B = rng.standard_normal((in_f, 64)).astype(np.float32)
        print(f"\nCSR (NumPy) against dense (BLAS): ({out_f}, {in_f}) @ ({in_f}, 64)")
        even = None
        for s in (0.5, 0.8, 0.9, 0.95, 0.98, 0.99, 0.995, 0.999):
            Wp = W * magnitude_mask(np.abs(W), int(round(s * W.size)))
            A = to_csr(Wp)
            assert np.allclose(csr_matmul(A, B), Wp @ B, rtol=1e-4, atol=1e-4 * in_f ** 0.5)
            c = compare({"dense": lambda: Wp @ B, "csr": lambda: csr_matmul(A, B)}, rounds=rounds, min_time=0.01)
            r = c.ratio("csr", "dense")
            if r < 1 and even is None: even = s
            print(f"  sparsity {s:6.1%}: dense {c['dense'].median * 1e6:8.1f} us, CSR {c['csr'].median * 1e6:8.1f} us "
                  f"({r:6.2f}x dense), CSR {A.nbytes:,} bytes vs dense {Wp.nbytes:,}"
                  f"{flag(c['dense']) or flag(c['csr'])}")
        print(f"  break-even: CSR faster from sparsity {even:.1%}" if even is not None
              else "  break-even: CSR never faster at the sparsities tried")


def rank(rounds: int):
    "Linear(800, 120) (LeNet's fc1) against its rank-r factorization, batch 64."
    manual_seed(0)
    fc = lenet()[9]
    x = Tensor(np.random.default_rng(1).standard_normal((64, 800)).astype(np.float32))
    full = low_rank(fc, 120)
    with no_grad(): assert np.allclose(full(x).numpy(), fc(x).numpy(), rtol=1e-4, atol=1e-4)
    cands = {"full": forward(fc, x)}
    for r in (8, 16, 32, 64): cands[f"rank {r}"] = forward(low_rank(fc, r), x)
    c = compare(cands, rounds=rounds)
    print("\nLinear(800, 120) against two Linear layers through rank r, batch 64")
    for name, m in c.results.items():
        r = 120 if name == "full" else int(name.split()[1])
        n = 800 * 120 if name == "full" else r * (800 + 120)
        print(f"  {name:8} {m.median * 1e6:8.1f} us  {c.ratio(name, 'full'):5.2f}x full, {n:,} weights{flag(m)}")


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rounds", type=int, default=15, help="alternating rounds per candidate (default 15)")
    args = ap.parse_args()
    info = machine_info()
    print(f"machine: {info['machine']}, {info['cores']} cores, Python {info['python']}, NumPy {info['numpy']}, "
          f"BLAS {info['blas']}; one BLAS thread; load average {os.getloadavg()[0]:.1f}")
    with blas_threads(1):
        channels(args.rounds)
        csr(max(3, args.rounds // 3))
        rank(args.rounds)


if __name__ == "__main__":
    main()
