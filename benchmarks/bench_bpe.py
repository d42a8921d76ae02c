"""BPE training and encoding speed on the Shakespeare corpus, against the 60 s budget and the full-recount reference.

Run: .venv/bin/python benchmarks/bench_bpe.py [--rounds N] [--small CHARS]

Protocol: `tinytorch.utils.timing.compare`, with one BLAS thread (set before anything imports NumPy; the tokenizer
itself is pure Python): each candidate runs once for its result (which also warms it up), then the candidates
alternate within each round; every figure is the median over rounds of one run each, and every ratio the median of
the per-round ratios of this same run. Target (issue 11): training a 1,000-id vocabulary on 1 MB of text takes
under 60 s. The comparison with `bpe_merges_naive`, which recounts every pair before each merge, runs on a smaller
text (`--small` characters) because the reference is slow; both learn from the same chunk counts and must learn the
same merges.
"""
import os

for _var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ[_var] = "1"

import argparse
import platform
import sys
from collections import Counter

from tinytorch.text.tokenization import BPETokenizer, bpe_merges, bpe_merges_naive, load_shakespeare, pretokenize
from tinytorch.utils.timing import compare

BUDGET_S, TRAIN_CHARS, VOCAB = 60.0, 1_000_000, 1000


def alternate(candidates: dict, rounds: int) -> tuple:
    "Each candidate's result from one call, then `compare` over `rounds` rounds of one call each."
    results = {name: fn() for name, fn in candidates.items()}
    return compare(candidates, rounds=rounds, warmup=0, number=1), results


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rounds", type=int, default=3, help="alternating rounds per candidate (default 3)")
    ap.add_argument("--small", type=int, default=100_000, help="characters for the reference comparison (default 100,000)")
    args = ap.parse_args()
    print(f"machine: {platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}; "
          f"median of {args.rounds} alternating rounds")
    train, val = load_shakespeare("train"), load_shakespeare("val")

    text = train[:TRAIN_CHARS]
    c, res = alternate({"train": lambda: BPETokenizer().train(text, VOCAB)}, args.rounds)
    med = {"train": c["train"].median}
    tok = res["train"]
    assert tok.vocab_size == VOCAB, tok
    print(f"\ntrain {VOCAB:,} ids ({len(tok.merges)} merges) on the first {len(text):,} characters of the training works "
          f"({len(text.encode()):,} bytes)")
    print(f"  {med['train']:.2f} s, {med['train'] / BUDGET_S:.3f} of the {BUDGET_S:.0f} s budget: "
          f"{'met' if med['train'] < BUDGET_S else 'NOT met'}")

    chunks = Counter(pretokenize(train[:args.small]))
    n = len(tok.merges)
    c_s, res_s = alternate({"incremental": lambda: bpe_merges(chunks, n),
                            "recount": lambda: bpe_merges_naive(chunks, n)}, args.rounds)
    assert res_s["incremental"] == res_s["recount"], "the incremental trainer learned different merges"
    print(f"\n{n} merges on the first {args.small:,} characters ({len(chunks):,} distinct chunks), same merges learned")
    for name, m in c_s.results.items(): print(f"  {name:12} {m.median:7.2f} s")
    print(f"  speed-up of the incremental counts: {c_s.ratio('recount', 'incremental'):.1f}x")

    def cold():
        tok._cache.clear()
        return tok.encode(val)

    c_e, res_e = alternate({"cold cache": cold, "warm cache": lambda: tok.encode(val)}, args.rounds)
    assert res_e["cold cache"] == res_e["warm cache"] and tok.decode(res_e["cold cache"]) == val
    print(f"\nencode the validation works ({len(val):,} characters -> {len(res_e['cold cache']):,} tokens) with that tokenizer")
    for name, t in ((n, m.median) for n, m in c_e.results.items()): print(f"  {name:12} {t:7.3f} s  {len(val) / t / 1e6:5.2f} M characters/s")
    return 0 if med["train"] < BUDGET_S else 1


if __name__ == "__main__":
    sys.exit(main())
