"""TinyGPT: a character-level GPT on Shakespeare; target validation loss <= 2.0 nats per character (stretch 1.7) within 15 minutes on 2 cores.

Training draws random windows of `block_size` characters from the training works with a seeded generator; the
validation loss is the mean over a fixed set of windows from the held-out works (fixed seed), so runs compare. The
learning rate warms up, then follows a cosine in *elapsed time*, so it reaches its floor when the wall-clock budget
(--minutes) runs out, whatever the machine's speed. The budget covers training and the periodic evaluations; then
the script evaluates, writes the curve, samples 300 characters from a fixed seed, and saves a pickle-free checkpoint
(model, optimizer, vocabulary, configuration). `--sample-only --checkpoint PATH` loads one and generates.
"""
import _common  # noqa: F401  first: it sets the BLAS threads (one unless the environment says) before NumPy loads

import argparse
import os
import sys
import dataclasses
import time
from pathlib import Path

import numpy as np

from tinytorch.core.autograd import no_grad
from tinytorch.core.optimizers import AdamW, clip_grad_norm_, cosine_warmup_lr
from tinytorch.core.tensor import manual_seed
from tinytorch.core.training import read_checkpoint, load_checkpoint, save_checkpoint
from tinytorch.models.transformer import GPT, GPTConfig, get_batch
from tinytorch.text.tokenization import CharTokenizer, load_shakespeare

TARGET, STRETCH = 2.0, 1.7


def options() -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--minutes", type=float, default=15.0, help="wall-clock budget for training and its evaluations (default 15)")
    ap.add_argument("--n-layer", type=int, default=4); ap.add_argument("--n-head", type=int, default=4)
    ap.add_argument("--n-embd", type=int, default=128); ap.add_argument("--block-size", type=int, default=64)
    ap.add_argument("--dropout", type=float, default=0.0)
    ap.add_argument("--batch-size", type=int, default=32, help="windows per step (default 32)")
    ap.add_argument("--lr", type=float, default=3e-3, help="peak learning rate (default 3e-3)")
    ap.add_argument("--weight-decay", type=float, default=0.01, help="AdamW's decoupled weight decay (default 0.01)")
    ap.add_argument("--eval-windows", type=int, default=256, help="fixed validation windows (default 256)")
    ap.add_argument("--eval-every", type=float, default=60.0, help="seconds between validation evaluations (default 60)")
    ap.add_argument("--seed", type=int, default=0, help="seed for weights and training windows (default 0)")
    ap.add_argument("--sample-seed", type=int, default=1337, help="seed of the printed sample (default 1337)")
    ap.add_argument("--out", default="runs", help="folder for the curve PNG and the checkpoint (default runs/)")
    ap.add_argument("--checkpoint", default=None, help="checkpoint path (default OUT/tinygpt.npz)")
    ap.add_argument("--sample-only", action="store_true", help="load --checkpoint and generate, no training")
    return ap.parse_args()


def evaluate(model: GPT, X: np.ndarray, Y: np.ndarray, batch: int = 64) -> float:
    "Mean cross-entropy (nats per character) over the fixed windows X, Y, in evaluation mode."
    model.eval(); total = 0.0
    with no_grad():
        for i in range(0, len(X), batch):
            _, loss = model(X[i:i + batch], Y[i:i + batch])
            total += loss.item() * len(X[i:i + batch])
    model.train()
    return total / len(X)


def sample(model: GPT, tok: CharTokenizer, seed: int, n: int = 300, prompt: str = "\n") -> str:
    "n characters generated after `prompt` with a fixed seed (temperature 0.8, top-k 20)."
    out = model.generate(np.array([tok.encode(prompt)]), n, temperature=0.8, top_k=20, seed=seed)
    return tok.decode(out.numpy()[0, len(prompt):].tolist())


def plot(steps, train, evals, path: Path, title: str) -> Path:
    "Training loss per step (smoothed) and validation loss at each evaluation, to a PNG."
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    k = 20
    smooth = np.convolve(train, np.ones(k) / k, mode="valid") if len(train) >= k else np.asarray(train)
    fig, ax = plt.subplots(figsize=(7, 4))
    ax.plot(steps[len(steps) - len(smooth):], smooth, label=f"train (mean of {k} steps)")
    ax.plot([s for s, _ in evals], [v for _, v in evals], "o-", label="validation (fixed windows)")
    ax.axhline(TARGET, color="gray", ls=":", label=f"target {TARGET}")
    ax.set(xlabel="step", ylabel="cross-entropy (nats per character)", title=title); ax.legend()
    fig.tight_layout(); path.parent.mkdir(parents=True, exist_ok=True); fig.savefig(path, dpi=100); plt.close(fig)
    return path


def sample_only(args) -> int:
    if not args.checkpoint: sys.exit("tinygpt: --sample-only needs --checkpoint PATH")
    extra = read_checkpoint(Path(args.checkpoint))["extra"]          # the configuration, to build the model first
    model = GPT.from_config(GPTConfig(**extra["config"]))
    info = load_checkpoint(args.checkpoint, model)
    tok = CharTokenizer("".join(info["vocab"]))
    print(f"tinygpt: loaded {args.checkpoint} (step {info['step']}, validation loss {info['val_loss']:.4f})")
    print(f"--- 300 characters, seed {args.sample_seed} ---\n{sample(model, tok, args.sample_seed)}\n---")
    return 0


def main() -> int:
    args = options()
    if args.sample_only: return sample_only(args)
    ckpt = Path(args.checkpoint) if args.checkpoint else Path(args.out) / "tinygpt.npz"
    train_text, val_text = load_shakespeare("train"), load_shakespeare("val")
    tok = CharTokenizer(train_text + val_text)
    train_ids, val_ids = (np.array(tok.encode(t), dtype=np.int64) for t in (train_text, val_text))
    cfg = GPTConfig(tok.vocab_size, args.block_size, args.n_layer, args.n_head, args.n_embd, args.dropout)
    manual_seed(args.seed)
    model = GPT.from_config(cfg)
    opt = AdamW(model.parameters(), lr=args.lr, betas=(0.9, 0.99), weight_decay=args.weight_decay)   # beta2 0.99 as nanoGPT for small models
    Xv, Yv = get_batch(val_ids, args.eval_windows, cfg.block_size, np.random.default_rng(12345))   # fixed validation set
    rng = np.random.default_rng(args.seed)
    n_params = sum(p.size for p in model.parameters())
    print(f"tinygpt: {cfg}\n  {n_params:,} parameters (tied embedding counted once), vocabulary {tok.vocab_size}, "
          f"{len(train_ids):,} training and {len(val_ids):,} validation characters; {args.eval_windows} validation "
          f"windows of {cfg.block_size}; batch {args.batch_size}; budget {args.minutes} min; "
          f"{os.cpu_count()} cores, {os.environ['OPENBLAS_NUM_THREADS']} BLAS thread(s) (OPENBLAS_NUM_THREADS), load average {os.getloadavg()[0]:.2f}", flush=True)
    budget, warmup = args.minutes * 60, 0.03                          # warm-up: the first 3% of the budget
    steps, train_losses, evals = [], [], [(0, evaluate(model, Xv, Yv))]
    t0 = last_eval = time.perf_counter(); step = 0
    while (elapsed := time.perf_counter() - t0) < budget:
        opt.lr = cosine_warmup_lr(int(1000 * elapsed / budget), args.lr, int(1000 * warmup), 1000, args.lr / 10)
        x, y = get_batch(train_ids, args.batch_size, cfg.block_size, rng)
        _, loss = model(x, y)
        opt.zero_grad(); loss.backward(); clip_grad_norm_(model.parameters(), 1.0); opt.step()
        step += 1; steps.append(step); train_losses.append(loss.item())
        if time.perf_counter() - last_eval >= args.eval_every:
            evals.append((step, evaluate(model, Xv, Yv))); last_eval = time.perf_counter()
            print(f"  {time.perf_counter() - t0:6.0f} s, step {step:5d}: train loss (last 20) "
                  f"{np.mean(train_losses[-20:]):.4f}, validation {evals[-1][1]:.4f}, lr {opt.lr:.2e}", flush=True)
    train_time = time.perf_counter() - t0
    val = evaluate(model, Xv, Yv); evals.append((step, val))
    train_eval = evaluate(model, *get_batch(train_ids, args.eval_windows, cfg.block_size, np.random.default_rng(54321)))
    tokens = step * args.batch_size * cfg.block_size
    met = val <= TARGET
    png = plot(steps, train_losses, evals, Path(args.out) / "tinygpt.png", f"TinyGPT: validation loss {val:.3f} after {step} steps")
    save_checkpoint(ckpt, model, opt, vocab=tok.itos, config=dataclasses.asdict(cfg), step=step, val_loss=val)
    print(f"--- 300 characters, seed {args.sample_seed} ---\n{sample(model, tok, args.sample_seed)}\n---")
    print(f"tinygpt: {step} steps in {train_time:.0f} s ({tokens:,} tokens, {tokens / train_time:,.0f} tokens/s including "
          f"evaluations); final train loss {train_eval:.4f}, validation loss {val:.4f} nats per character "
          f"({val / np.log(2):.3f} bits); target {TARGET}: {'met' if met else 'NOT met'}, stretch {STRETCH}: "
          f"{'met' if val <= STRETCH else 'not met'}; load average {os.getloadavg()[0]:.2f}; "
          f"{time.perf_counter() - t0:.0f} s in all; curve {png}; checkpoint {ckpt}")
    return 0 if met else 1


if __name__ == "__main__":
    sys.exit(main())
