"""LeNet training step: tinytorch's LeNet-style CNN against the same model in PyTorch, on the CPU.

Run: .venv/bin/python benchmarks/bench_lenet.py [--rounds N] [--steps S] [--batch B]

Model: milestones/fashion_lenet.py's `lenet()`: Conv2d(1, 16, 5, padding=2), BatchNorm2d, ReLU,
MaxPool2d(2), Conv2d(16, 32, 5), BatchNorm2d, ReLU, MaxPool2d(2), Flatten, Linear(800, 120), ReLU,
Dropout(0.25), Linear(120, 84), ReLU, Linear(84, 10); input a batch of 28x28 one-channel images
(Fashion-MNIST's size; random values, so the benchmark needs no data files), float32. One step is
the forward pass in training mode with the cross-entropy loss, the backward pass, and an Adam step
(lr 2e-3), as the milestone trains it.

Candidates:
  tinytorch   `lenet()` and `tinytorch.core.optimizers.Adam`;
  torch       the same layers from `torch.nn` (Conv2d, BatchNorm2d, ReLU, MaxPool2d, Flatten,
              Linear, Dropout), F.cross_entropy and `torch.optim.Adam`, started from the tinytorch
              model's weights.

Protocol: one BLAS / OpenMP thread on both sides (set before NumPy and PyTorch are imported).
Before timing, with dropout switched off on both sides, the two models are checked to give the
same loss and the same gradients on the same batch in training mode (batch statistics), and the
same logits in evaluation mode. Timing is `tinytorch.utils.timing.compare`: the candidates
alternate within each round; each figure is the median over rounds of the mean time of S steps
after a warm-up step, and the ratio is the median over rounds of the ratio of the two candidates'
times within a round. Target: tinytorch at most 1.5x PyTorch's time per step.
"""
import os
for _var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ[_var] = "1"

import argparse  # noqa: E402
import platform  # noqa: E402

import numpy as np  # noqa: E402

from tinytorch.benchmarking.tinymlperf import fashion_lenet as lenet  # noqa: E402  (the milestone's model)

from tinytorch.core.losses import cross_entropy  # noqa: E402
from tinytorch.core.optimizers import Adam  # noqa: E402
from tinytorch.core.tensor import Tensor, manual_seed  # noqa: E402
from tinytorch.utils.timing import compare  # noqa: E402

try:
    import torch  # noqa: E402
except ImportError:
    torch = None

LR = 2e-3


def torch_lenet(model):
    "The same network in PyTorch, with `model`'s parameters and running statistics copied in."
    nn = torch.nn
    m = nn.Sequential(nn.Conv2d(1, 16, 5, padding=2), nn.BatchNorm2d(16), nn.ReLU(),
                      nn.MaxPool2d(2),
                      nn.Conv2d(16, 32, 5), nn.BatchNorm2d(32), nn.ReLU(), nn.MaxPool2d(2),
                      nn.Flatten(), nn.Linear(32 * 5 * 5, 120), nn.ReLU(), nn.Dropout(0.25),
                      nn.Linear(120, 84), nn.ReLU(), nn.Linear(84, 10))
    sd = {k: torch.tensor(np.asarray(v)) for k, v in model.state_dict().items()}
    m.load_state_dict(sd)                        # same names: both are Sequentials indexed 0..14
    return m


def set_dropout(model, tm, p: float):
    "Set the dropout probability of both models."
    model[11].p = p
    tm[11].p = p


def check_agree(model, tm, x: np.ndarray, y: np.ndarray):
    "Same loss and gradients in training mode (dropout off), same logits in eval mode, or raise."
    set_dropout(model, tm, 0.0)
    model.zero_grad(); tm.zero_grad()
    loss = cross_entropy(model(Tensor(x)), y); loss.backward()
    tloss = torch.nn.functional.cross_entropy(tm(torch.tensor(x)), torch.tensor(y))
    tloss.backward()
    # float32 sums of up to N*H*W = 128*28*28 terms in different orders: a relative tolerance
    lo, lt = loss.item(), tloss.item()
    assert abs(lo - lt) < 1e-4 * max(1, abs(lt)), f"losses differ: tinytorch {lo}, torch {lt}"
    scale = max(np.abs(tp.grad.numpy()).max() for tp in tm.parameters())
    for (name, p), tp in zip(model.named_parameters(), tm.parameters()):
        b = tp.grad.numpy()
        # a convolution bias before BatchNorm has a gradient of exactly 0 in exact arithmetic: its
        # float32 values are rounding noise, so the absolute tolerance scales with the largest
        # gradient of the model
        assert np.allclose(p.grad, b, rtol=1e-3, atol=1e-4 * scale), \
            f"gradient of {name} differs: max |difference| {np.abs(p.grad - b).max():.3g}, " \
            f"largest |grad| {scale:.3g}"
    model.eval(); tm.eval()
    with torch.no_grad(): tl = tm(torch.tensor(x)).numpy()
    ol = model(Tensor(x)).numpy()
    assert np.allclose(ol, tl, rtol=1e-4, atol=1e-4 * np.abs(tl).max()), "eval-mode logits differ"
    model.train(); tm.train()
    set_dropout(model, tm, 0.25)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rounds", type=int, default=7, help="alternating rounds (default 7)")
    ap.add_argument("--steps", type=int, default=5,
                    help="training steps per measurement (default 5)")
    ap.add_argument("--batch", type=int, default=128, help="images per step (default 128)")
    args = ap.parse_args()
    rng = np.random.default_rng(0)
    x = rng.standard_normal((args.batch, 1, 28, 28), dtype=np.float32)     # (N, 1, 28, 28)
    y = rng.integers(0, 10, args.batch)                                    # (N,)
    manual_seed(0)
    model = lenet()
    opt = Adam(model.parameters(), lr=LR)
    xt = Tensor(x)

    def ours():
        loss = cross_entropy(model(xt), y); opt.zero_grad(); loss.backward(); opt.step()

    cands = {"tinytorch": ours}
    if torch is not None:
        torch.set_num_threads(1)
        tm = torch_lenet(model)
        check_agree(model, tm, x, y)
        topt = torch.optim.Adam(tm.parameters(), lr=LR)
        tx, ty = torch.tensor(x), torch.tensor(y)

        def theirs():
            loss = torch.nn.functional.cross_entropy(tm(tx), ty)
            topt.zero_grad(); loss.backward(); topt.step()
        cands["torch"] = theirs
    n_params = sum(p.size for p in model.parameters())
    print(f"LeNet-style CNN, batch {args.batch} of 1x28x28, {n_params:,} parameters, Adam; "
          f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
          f"1 thread per side, "
          f"load average {os.getloadavg()[0]:.2f}; NumPy {np.__version__}, "
          f"torch {torch.__version__ if torch else 'not installed'}")
    res = compare(cands, rounds=args.rounds, warmup=1, number=args.steps)
    for k in cands:
        t = res[k].median
        print(f"{k:>10}: {t * 1e3:8.2f} ms per step (IQR {res[k].iqr * 1e3:.2f} ms), "
              f"{args.batch / t:9,.0f} images/s")
    if "torch" in cands:
        r = res.ratio("tinytorch", "torch")
        print(f"tinytorch / torch time per step: {r:.2f}x (median over rounds of the ratio "
              f"within a round); target at most 1.50x: {'met' if r <= 1.5 else 'NOT met'}")


if __name__ == "__main__":
    main()
