"""Attention forward + backward: tinytorch's fused scaled_dot_product_attention against PyTorch on the CPU.

Run: .venv/bin/python benchmarks/bench_attention.py [--rounds N] [--heads H]

Shapes: batch 8, 4 heads (--heads), sequence 256, head size 64, causal, float32; one step is the forward pass and
the backward pass of a fixed upstream gradient into query, key and value.

Candidates:
  tinytorch fused    `scaled_dot_product_attention(q, k, v, is_causal=True)`, one op with a hand-derived gradient;
  torch composed     the same formula from PyTorch's basic ops with autograd, as nanoGPT writes it without flash
                     attention: `(q @ k^T) * scale`, `masked_fill(-inf)`, `softmax`, `@ v`;
  torch fused        `torch.nn.functional.scaled_dot_product_attention(..., is_causal=True)`, for information;
  tinytorch composed the formula from tinytorch's own ops (matmul, mul, add of the mask, softmax, matmul), for information.

Protocol: one BLAS / OpenMP thread on every side (set before NumPy and PyTorch are imported); all candidates are
checked to compute the same values and gradients first; candidates alternate within each round; each figure is the
median over rounds of the mean time of a few calls after a warm-up. Ratios are between medians of this same run.
Target: tinytorch fused at most 1.2x torch composed.
"""
import os

for _var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ[_var] = "1"

import argparse
import math
import platform
import time

import numpy as np
from threadpoolctl import threadpool_info

from tinytorch.utils.timing import compare
from tinytorch.core.activations import softmax
from tinytorch.core.attention import scaled_dot_product_attention
from tinytorch.core.tensor import Tensor

try:
    import torch
except ImportError:
    torch = None

B, T, HS = 8, 256, 64


def make_candidates(nh: int) -> dict:
    "Name -> a step (forward + backward) that returns (output, dq, dk, dv) as arrays, for checking."
    rng = np.random.default_rng(0)
    q, k, v, g = (rng.standard_normal((B, nh, T, HS), dtype=np.float32) for _ in range(4))
    scale = 1 / math.sqrt(HS)
    tq, tk, tv = (Tensor(a.copy(), requires_grad=True) for a in (q, k, v))
    causal = Tensor(np.triu(np.full((T, T), -np.inf, np.float32), 1))

    def tt(fused: bool):
        def run():
            for t in (tq, tk, tv): t.grad = None
            if fused: out = scaled_dot_product_attention(tq, tk, tv, is_causal=True)
            else: out = softmax((tq @ tk.transpose(-1, -2)) * scale + causal, -1) @ tv
            out.backward(g)
            return out.numpy(), tq.grad, tk.grad, tv.grad
        return run

    runs = {"tinytorch fused": tt(True)}
    if torch is not None:
        pq, pk, pv = (torch.from_numpy(a.copy()).requires_grad_() for a in (q, k, v))
        pg = torch.from_numpy(g)
        keep = torch.ones(T, T, dtype=torch.bool).tril()

        def th(fused: bool):
            def run():
                for t in (pq, pk, pv): t.grad = None
                if fused: out = torch.nn.functional.scaled_dot_product_attention(pq, pk, pv, is_causal=True)
                else:
                    att = (pq @ pk.transpose(-2, -1)) * scale                  # (B, nh, T, T)
                    att = att.masked_fill(~keep, float("-inf"))
                    out = torch.softmax(att, dim=-1) @ pv                      # (B, nh, T, hs)
                out.backward(pg)
                return out.detach().numpy(), pq.grad.numpy(), pk.grad.numpy(), pv.grad.numpy()
            return run
        runs |= {"torch composed": th(False), "torch fused": th(True)}
    runs["tinytorch composed"] = tt(False)
    return runs


def check_agreement(runs: dict):
    "Every candidate computes the same output and gradients as tinytorch fused, to float32 rounding."
    ref = [a.copy() for a in runs["tinytorch fused"]()]
    for name, run in runs.items():
        for label, a, b in zip(("output", "dq", "dk", "dv"), run(), ref):
            # float32: sums of 256 terms (scores, weighted values) whose sizes are ~1; 1e-4 is ~100x the rounding seen
            err = float(np.abs(a - b).max())
            assert err < 1e-4, f"{name} {label} differs from tinytorch fused by {err:.2e}"


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rounds", type=int, default=15, help="alternating rounds per candidate (default 15)")
    ap.add_argument("--heads", type=int, default=4, help="number of heads (default 4)")
    args = ap.parse_args()
    if torch is not None: torch.set_num_threads(1)
    blas = [f"{i['internal_api']} {i['num_threads']} thread(s)" for i in threadpool_info()]
    print(f"machine: {platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}, NumPy {np.__version__}"
          + (f", PyTorch {torch.__version__} ({torch.get_num_threads()} thread)" if torch else ", PyTorch not installed")
          + f"; thread pools: {', '.join(blas)}")
    runs = make_candidates(args.heads)
    check_agreement(runs)
    print(f"\nattention forward + backward, causal, float32: batch {B}, {args.heads} heads, sequence {T}, head size {HS} "
          f"(median over {args.rounds} rounds; all candidates agree to < 1e-4)")
    res = compare(runs, rounds=args.rounds, number=3)
    for name, m in res.results.items():
        print(f"  {name:20} {m.median*1e3:8.2f} ms  {res.ratio(name, 'tinytorch fused'):5.2f}x tinytorch fused")
    if torch is None:
        print("  PyTorch is not installed: no comparison")
        return
    ratio = res.ratio("tinytorch fused", "torch composed")
    print(f"  tinytorch fused / torch composed = {ratio:.2f}x; target at most 1.20x: {'met' if ratio <= 1.2 else 'NOT met'}")
    print(f"  tinytorch fused / torch fused SDPA = {res.ratio('tinytorch fused', 'torch fused'):.2f}x (for information)")


if __name__ == "__main__":
    main()
