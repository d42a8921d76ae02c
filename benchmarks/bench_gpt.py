"""GPT training throughput: tinytorch's GPT against the same model written in PyTorch, tokens per second on the CPU.

Run: .venv/bin/python benchmarks/bench_gpt.py [--rounds N] [--steps S]

Model: the TinyGPT milestone's configuration: vocabulary of the Shakespeare corpus' characters, block_size 64,
4 layers, 4 heads, n_embd 128, tied embeddings; batch 32 windows of 64 characters, float32. One step is the forward
pass with the loss, the backward pass, and an AdamW step (lr 1e-3, betas (0.9, 0.99), weight decay 0.01).

Candidates:
  tinytorch   `tinytorch.models.transformer.GPT` and `tinytorch.core.optimizers.AdamW`;
  torch       the same architecture from PyTorch's basic modules and ops (nn.Embedding, nn.LayerNorm, nn.Linear,
              F.scaled_dot_product_attention with is_causal, F.gelu(approximate='tanh'), F.cross_entropy, tied
              head), `torch.optim.AdamW`, started from the tinytorch model's weights.

Protocol: one BLAS / OpenMP thread on both sides (set before NumPy and PyTorch are imported); both models are checked
to give the same loss on the same batch first. Timing is `tinytorch.utils.timing.compare`: the candidates
alternate within each round; each figure is the median over rounds of the mean time of S steps after a
warm-up step, and the ratio is the median over rounds of the ratio of the two candidates' times within a
round. Target: tinytorch at most 1.5x PyTorch's time per step.
"""
import os

for _var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ[_var] = "1"

import argparse
import platform

import numpy as np

from tinytorch.core.optimizers import AdamW
from tinytorch.core.tensor import manual_seed
from tinytorch.models.transformer import GPT
from tinytorch.text.tokenization import CharTokenizer, load_shakespeare
from tinytorch.utils.timing import compare

try:
    import torch
except ImportError:
    torch = None

B, T, L, H, C = 32, 64, 4, 4, 128


def torch_gpt(g: GPT):
    "The same GPT in PyTorch, with g's weights copied in."
    nn, F = torch.nn, torch.nn.functional

    class Block(nn.Module):
        def __init__(self):
            super().__init__()
            self.ln_1, self.ln_2 = nn.LayerNorm(C), nn.LayerNorm(C)
            self.qkv, self.attn_proj = nn.Linear(C, 3 * C), nn.Linear(C, C)
            self.fc, self.mlp_proj = nn.Linear(C, 4 * C), nn.Linear(4 * C, C)

        def forward(self, x):
            Bx, Tx, _ = x.shape
            q, k, v = self.qkv(self.ln_1(x)).split(C, dim=2)                       # (B, T, C) each
            q, k, v = (t.view(Bx, Tx, H, C // H).transpose(1, 2) for t in (q, k, v))   # (B, nh, T, hs)
            y = F.scaled_dot_product_attention(q, k, v, is_causal=True)           # (B, nh, T, hs)
            x = x + self.attn_proj(y.transpose(1, 2).reshape(Bx, Tx, C))
            return x + self.mlp_proj(F.gelu(self.fc(self.ln_2(x)), approximate="tanh"))

    class TorchGPT(nn.Module):
        def __init__(self, V):
            super().__init__()
            self.wte, self.wpe = nn.Embedding(V, C), nn.Embedding(T, C)
            self.h = nn.ModuleList([Block() for _ in range(L)])
            self.ln_f = nn.LayerNorm(C)

        def forward(self, idx, targets):
            x = self.wte(idx) + self.wpe.weight[:idx.shape[1]]                      # (B, T, C)
            for blk in self.h: x = blk(x)
            logits = F.linear(self.ln_f(x), self.wte.weight)                         # (B, T, V), tied head
            return F.cross_entropy(logits.view(-1, logits.shape[-1]), targets.view(-1))

    m = TorchGPT(g.config.vocab_size)
    sd = g.state_dict()
    rename = {"wte.weight": "transformer.wte.weight", "wpe.weight": "transformer.wpe.weight",
              "ln_f.weight": "transformer.ln_f.weight", "ln_f.bias": "transformer.ln_f.bias"}
    for i in range(L):
        for ours, theirs in (("ln_1", "ln_1"), ("ln_2", "ln_2"), ("attn.qkv", "qkv"), ("attn.proj", "attn_proj"),
                             ("mlp.fc", "fc"), ("mlp.proj", "mlp_proj")):
            for w in ("weight", "bias"): rename[f"h.{i}.{theirs}.{w}"] = f"transformer.h.{i}.{ours}.{w}"
    m.load_state_dict({k: torch.tensor(sd[v]) for k, v in rename.items()})
    return m


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rounds", type=int, default=5, help="alternating rounds (default 5)")
    ap.add_argument("--steps", type=int, default=3, help="training steps per measurement (default 3)")
    args = ap.parse_args()
    text = load_shakespeare("all")
    tok = CharTokenizer(text)
    data = np.array(tok.encode(text[:200_000]), dtype=np.int64)
    rng = np.random.default_rng(0)
    starts = rng.integers(0, len(data) - T - 1, B)[:, None] + np.arange(T + 1)
    x, y = data[starts[:, :-1]], data[starts[:, 1:]]                                 # (B, T) each
    manual_seed(0)
    g = GPT(tok.vocab_size, T, L, H, C)
    opt = AdamW(g.parameters(), lr=1e-3, betas=(0.9, 0.99), weight_decay=0.01)

    def ours():
        _, loss = g(x, y); opt.zero_grad(); loss.backward(); opt.step()

    cands = {"tinytorch": ours}
    if torch is not None:
        torch.set_num_threads(1)
        tm = torch_gpt(g)
        topt = torch.optim.AdamW(tm.parameters(), lr=1e-3, betas=(0.9, 0.99), weight_decay=0.01)
        tx, ty = torch.tensor(x), torch.tensor(y)
        with torch.no_grad(): l_t = tm(tx, ty).item()
        l_o = g(x, y)[1].item()
        assert abs(l_t - l_o) < 1e-4, f"losses differ: tinytorch {l_o}, torch {l_t}"   # float32 sums of <= 512 terms

        def theirs():
            loss = tm(tx, ty); topt.zero_grad(); loss.backward(); topt.step()
        cands["torch"] = theirs
    print(f"GPT L={L} H={H} C={C} V={tok.vocab_size} block_size={T}, batch {B}: {g.num_params(non_embedding=False):,} "
          f"parameters, {g.flops_per_token():,} FLOPs per token (6N + 12LHQT); {platform.processor() or platform.machine()}, "
          f"{os.cpu_count()} cores, 1 thread per side, load average {os.getloadavg()[0]:.2f}; torch "
          f"{torch.__version__ if torch else 'not installed'}")
    res = compare(cands, rounds=args.rounds, warmup=1, number=args.steps)
    for k in cands:
        t = res[k].median
        print(f"{k:>10}: {t * 1e3:8.1f} ms per step (IQR {res[k].iqr * 1e3:.1f} ms), "
              f"{B * T / t:9,.0f} tokens/s, {B * T * g.flops_per_token() / t / 1e9:6.2f} GFLOP/s")
    if "torch" in cands:
        r = res.ratio("tinytorch", "torch")
        print(f"tinytorch / torch time per step: {r:.2f}x (median over rounds of the ratio "
              f"within a round); target at most 1.50x: {'met' if r <= 1.5 else 'NOT met'}")


if __name__ == "__main__":
    main()
