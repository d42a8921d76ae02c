"""Conv2d and MaxPool2d speed: forward+backward against PyTorch (if installed) and against the machine's GEMM rate,
and the time of one LeNet-style training epoch on Fashion-MNIST-sized random data.

Run: .venv/bin/python benchmarks/bench_conv.py [--threads 1,2] [--malloc default,keep] [--rounds N] [--epoch-steps N]

Protocol: the BLAS thread count is set in the environment before NumPy is imported (each thread count runs in a
child process of its own) and `torch.set_num_threads` matches it; candidates alternate within each round; each
figure is the median over rounds of the mean time of a batch of calls after a warm-up. Ratios are taken between
medians measured in this same run. Before timing, our outputs and gradients are checked against PyTorch's.
Each thread count runs twice: with the C library's malloc as it is ('default') and with MALLOC_TOP_PAD_ set to
256 MiB ('keep'), which stops glibc from returning freed memory to the system after every step and faulting it back
in on the next (the page faults per call are printed; see the end of nbs/09_spatial.py).
Target (issue 9): Conv2d forward+backward at most 1.5x PyTorch on one thread, for
  A: input (64, 32, 16, 16) -> 64 channels, kernel 3, padding 1, the input requiring a gradient (a middle layer);
  B: input (64, 3, 32, 32) -> 32 channels, kernel 3, padding 1, the input an image without gradient (a first layer).
"""
import argparse
import os
import subprocess
import sys

ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
ap.add_argument("--threads", default="1,2", help="comma-separated BLAS/torch thread counts (default 1,2)")
ap.add_argument("--malloc", default="default,keep",
                help="comma-separated allocator settings: default, keep (MALLOC_TOP_PAD_=256 MiB); default both")
ap.add_argument("--rounds", type=int, default=9, help="alternating rounds per candidate (default 9)")
ap.add_argument("--epoch-steps", type=int, default=None,
                help="training steps timed for the LeNet epoch (default: the whole epoch, 469 steps)")
args = ap.parse_args()
threads = [int(t) for t in args.threads.split(",")]
mallocs = args.malloc.split(",")
if not set(mallocs) <= {"default", "keep"}: sys.exit(f"bench_conv: --malloc takes default and keep, got {args.malloc!r}")
KEEP_BYTES = 256 * 2**20
if len(threads) > 1 or len(mallocs) > 1:
    # one child process per setting: BLAS reads its thread count, and glibc its malloc settings, once at start
    for m in mallocs:
        for t in threads:
            env = dict(os.environ, **({"MALLOC_TOP_PAD_": str(KEEP_BYTES)} if m == "keep" else {}))
            cmd = [sys.executable, __file__, "--threads", str(t), "--malloc", m, "--rounds", str(args.rounds)]
            if args.epoch_steps is not None: cmd += ["--epoch-steps", str(args.epoch_steps)]
            subprocess.run(cmd, check=True, env=env)
    sys.exit(0)
if mallocs == ["keep"] and os.environ.get("MALLOC_TOP_PAD_") != str(KEEP_BYTES):
    sys.exit("bench_conv: --malloc keep needs MALLOC_TOP_PAD_ set before the process starts; run it with both settings")
for _var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ[_var] = str(threads[0])

import platform  # noqa: E402  (after the thread count is fixed)
import resource  # noqa: E402

import numpy as np  # noqa: E402

from tinytorch.utils.timing import Timer, compare  # noqa: E402
from tinytorch.core.activations import ReLU  # noqa: E402
from tinytorch.core.layers import Linear, Sequential  # noqa: E402
from tinytorch.core.losses import cross_entropy  # noqa: E402
from tinytorch.core.optimizers import SGD  # noqa: E402
from tinytorch.core.spatial import Conv2d, Flatten, MaxPool2d  # noqa: E402
from tinytorch.core.tensor import Tensor, manual_seed  # noqa: E402
from tinytorch.core.training import Batches  # noqa: E402

try:
    import torch  # noqa: E402
except ImportError:  # the comparison is optional: without PyTorch the GEMM rate is the yardstick
    torch = None

NTHREADS = threads[0]


def gemm_rate(rounds: int) -> float:
    "The machine's float32 GEMM rate in GFLOP/s, on a (64, 288) @ (288, 16384) product (layer A's forward GEMM)."
    rng = np.random.default_rng(0)
    a, b = rng.standard_normal((64, 288), dtype=np.float32), rng.standard_normal((288, 16384), dtype=np.float32)
    t = compare({"gemm": lambda: a @ b}, rounds=rounds, number=5)["gemm"].median
    return 2 * 64 * 288 * 16384 / t / 1e9


def conv_layer(shape, out_channels, kernel, padding, input_grad: bool, rounds: int):
    "Forward+backward time of Conv2d on `shape`, ours and PyTorch's, after checking they agree."
    rng = np.random.default_rng(0)
    x = rng.standard_normal(shape, dtype=np.float32)
    manual_seed(0)
    conv = Conv2d(shape[1], out_channels, kernel, padding=padding)
    xt = Tensor(x, requires_grad=input_grad)
    g = rng.standard_normal(conv(xt).shape, dtype=np.float32)

    def ours():
        conv.zero_grad(); xt.grad = None
        conv(xt).backward(g)
    cands = {"tinytorch": ours}
    if torch is not None:
        tconv = torch.nn.Conv2d(shape[1], out_channels, kernel, padding=padding)
        with torch.no_grad():
            tconv.weight.copy_(torch.from_numpy(conv.weight.numpy())); tconv.bias.copy_(torch.from_numpy(conv.bias.numpy()))
        xc, gc_ = torch.from_numpy(x.copy()).requires_grad_(input_grad), torch.from_numpy(g)

        def theirs():
            tconv.zero_grad(); xc.grad = None
            tconv(xc).backward(gc_)
        ours(); theirs()
        # float32 sums of C*k*k (forward) and N*OH*OW (weight gradient) terms in different orders
        pairs = [(conv.weight.grad, tconv.weight.grad), (conv.bias.grad, tconv.bias.grad)]
        if input_grad: pairs.append((xt.grad, xc.grad))
        for a, b in pairs:
            b = b.numpy()
            assert np.allclose(a, b, rtol=1e-3, atol=1e-3 * np.abs(b).max()), "gradients differ from PyTorch's"
        cands["torch"] = theirs
    flops = 2 * int(np.prod(g.shape)) * shape[1] * kernel * kernel * (3 if input_grad else 2)
    f0 = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    for _ in range(5): ours()
    faults = (resource.getrusage(resource.RUSAGE_SELF).ru_minflt - f0) / 5
    return compare(cands, rounds=rounds, number=3), flops, faults


def maxpool(rounds: int):
    "Forward+backward time of MaxPool2d(2) on (64, 64, 16, 16), ours and PyTorch's."
    x = np.random.default_rng(1).standard_normal((64, 64, 16, 16), dtype=np.float32)
    g = np.ones((64, 64, 8, 8), np.float32)
    xt, pool = Tensor(x, requires_grad=True), MaxPool2d(2)
    def ours():
        xt.grad = None
        pool(xt).backward(g)
    cands = {"tinytorch": ours}
    if torch is not None:
        xc, gc_ = torch.from_numpy(x.copy()).requires_grad_(), torch.from_numpy(g)

        def theirs():
            xc.grad = None
            torch.nn.functional.max_pool2d(xc, 2).backward(gc_)
        ours(); theirs()
        assert np.array_equal(xt.grad, xc.grad.numpy()), "max-pool gradients differ from PyTorch's"
        cands["torch"] = theirs
    return compare(cands, rounds=rounds, number=10)


def lenet(steps):
    "Seconds for one epoch (60,000 random 28x28 images, batch 128) of a LeNet-style CNN with SGD, and the steps timed."
    rng = np.random.default_rng(0)
    X = rng.standard_normal((60_000, 1, 28, 28), dtype=np.float32)
    y = rng.integers(0, 10, 60_000)
    manual_seed(0)
    model = Sequential(Conv2d(1, 32, 3, padding=1), ReLU(), MaxPool2d(2), Conv2d(32, 64, 3, padding=1), ReLU(),
                       MaxPool2d(2), Flatten(), Linear(64 * 7 * 7, 128), ReLU(), Linear(128, 10))
    opt = SGD(model.parameters(), lr=0.01, momentum=0.9)
    batches = Batches(X, y, 128, shuffle=True, seed=0)
    n_total = len(batches)
    steps = n_total if steps is None else min(steps, n_total)
    done = 0
    with Timer() as run:
        for xb, yb in batches:
            opt.zero_grad()
            loss = cross_entropy(model(xb), yb)
            loss.backward()
            opt.step()
            done += 1
            if done == steps: break
    return run.elapsed * n_total / steps, steps, n_total


def row(name: str, times, flops=None, rate=None):
    t = times["tinytorch"].median
    s = f"  {name:44} tinytorch {t*1e3:8.2f} ms"
    if "torch" in times.results:
        s += f"   torch {times['torch'].median*1e3:8.2f} ms   ratio {times.ratio('tinytorch', 'torch'):5.2f}x"
    if flops: s += f"   {flops / t / 1e9:5.1f} GFLOP/s ({flops / t / 1e9 / rate:.0%} of GEMM)"
    print(s)


def main():
    if torch is not None: torch.set_num_threads(NTHREADS)
    setting = "default malloc" if mallocs == ["default"] else f"MALLOC_TOP_PAD_={KEEP_BYTES // 2**20} MiB"
    print(f"\n== {NTHREADS} thread(s), {setting}: {platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}, "
          f"NumPy {np.__version__}" + (f", PyTorch {torch.__version__}" if torch else ", PyTorch not installed")
          + f"; load average at start {os.getloadavg()[0]:.1f}")
    rate = gemm_rate(args.rounds)
    print(f"  float32 GEMM (64, 288) @ (288, 16384): {rate:.1f} GFLOP/s")
    a, fa, pfa = conv_layer((64, 32, 16, 16), 64, 3, 1, input_grad=True, rounds=args.rounds)
    b, fb, pfb = conv_layer((64, 3, 32, 32), 32, 3, 1, input_grad=False, rounds=args.rounds)
    p = maxpool(args.rounds)
    print("  forward+backward, median of per-call means; ratios: median of per-round ratios:")
    row("A Conv2d(32, 64, 3, padding=1) (64,32,16,16)", a, fa, rate)
    row("B Conv2d(3, 32, 3, padding=1) (64,3,32,32)", b, fb, rate)
    row("MaxPool2d(2) on (64,64,16,16)", p)
    print(f"  MaxPool2d(2) costs {p['tinytorch'].median / a['tinytorch'].median:.1%} of layer A; "
          f"page faults per tinytorch call: A {pfa:,.0f}, B {pfb:,.0f}")
    if torch is not None:
        for name, t in (("A", a), ("B", b)):
            r = t.ratio("tinytorch", "torch")
            print(f"  target {name}: at most 1.50x PyTorch on {NTHREADS} thread(s), {setting}: "
                  f"{'met' if r <= 1.5 else 'NOT met'} ({r:.2f}x)")
    sec, steps, total = lenet(args.epoch_steps)
    how = "measured" if steps == total else f"extrapolated from {steps} of {total} steps"
    print(f"  LeNet-style CNN, one epoch of 60,000 images at batch 128 with SGD: {sec:.1f} s ({how})")


if __name__ == "__main__":
    main()
