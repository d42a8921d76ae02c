"""Does a re-run of `tito benchmark` reproduce its latency comparisons within their intervals?

Run: .venv/bin/python benchmarks/bench_rerun.py [--runs N] [--task digits] [--out DIR]
                                                 [-- OPTIONS OF TITO BENCHMARK]

Runs `tito benchmark --task TASK` N times (default 3), each in a process of its own and writing to
DIR/runK (default runs/rerun/), after one run that trains or loads the reference checkpoint. Then,
for every comparison the leaderboard prints (each entry against the reference, and each entry
against the one ranked above it), it prints each run's p50 ratio with its 95% interval and counts
the ordered pairs of runs (i, j) in which run j's ratio lies inside run i's interval. Issue 11's
requirement: "re-running a submission reproduces its latency within the stated interval".

What to expect: if the blocks of both runs were draws from one distribution, a re-run's median of
11 block ratios would fall inside the first run's interval (the 2nd to the 10th of its 11 ratios)
with probability `rerun_probability(11, 2)` = 93.7%, printed below. The p90 is printed for
information: the verdicts use p50.

Measured on the shared two-core machine this was written on (1 Dec 2026, otherwise idle), six
runs each, p50 ratios, 150 ordered pairs (5 comparisons x 30):
  default (each block in a new worker process): 141 of 150 inside (94.0%); runs 14-19 s each.
  -- --in-process (every block in the `tito benchmark` process, on fresh copies): 71 of 150
    (47.3%); runs 15-16 s. Earlier, with 100 s of blocks per run (`--min-duration 10`, blocks in
    the process as with --in-process), 29 of 72 (40.3%): the INT8 ratios stayed put within a run
    and moved between runs by more than the intervals are wide. The offset belongs to the
    process; more blocks in the same process only narrow the interval around it.
"""
import argparse
import itertools
import subprocess
import sys
from pathlib import Path

from tinytorch.benchmarking.tinymlperf import (Leaderboard, compare_latencies, compare_results,
                                               rerun_probability)
from tinytorch.utils.timing import Timer

REPO = Path(__file__).resolve().parents[1]
TITO = [sys.executable, "-m", "tito.cli"]


def run(task: str, out: Path, extra=()) -> float:
    "One `tito benchmark` in a process of its own; its wall time in seconds."
    with Timer() as t:
        subprocess.run(TITO + ["benchmark", "--task", task, "--out", str(out), "--quiet", *extra],
                       cwd=REPO, check=True, stdout=subprocess.DEVNULL)
    return t.elapsed


def comparisons(folder: Path, task: str, q: float) -> dict:
    "{(a, b): comparison} for every pair the leaderboard in `folder` compares."
    board = Leaderboard.from_dir(folder / "results")
    passed = {r['name']: r for r in board.results if r['status'] == 'pass'}
    ranked = [r['name'] for r in board.ranked(task)]
    out = {}
    for a in ranked:
        ss = passed[a]['single_stream']
        out[(a, 'reference')] = compare_latencies(ss['latencies'], ss['reference_latencies'], q=q)
    for b, a in zip(ranked, ranked[1:]):
        out[(a, b)] = compare_results(passed[a], passed[b], q=q)
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--runs", type=int, default=3, help="runs to compare (default 3)")
    ap.add_argument("--task", default="digits", help="the task (default digits)")
    ap.add_argument("--out", default="runs/rerun", help="folder for the runs (default runs/rerun)")
    ap.add_argument("tito_args", nargs=argparse.REMAINDER,
                    help="after --: options passed to every `tito benchmark`, e.g. --min-duration 10")
    args = ap.parse_args()
    extra = [a for a in args.tito_args if a != "--"]
    if args.runs < 2: sys.exit(f"bench_rerun: need at least 2 runs, got {args.runs}")
    base = REPO / args.out
    print(f"bench_rerun: {args.runs} runs of `tito benchmark --task {args.task} {' '.join(extra)}`, "
          f"each in its own process, into {base}/runK")
    for k in range(1, args.runs + 1):
        print(f"  run {k}: {run(args.task, base / f'run{k}', extra):.1f} s", flush=True)
    expected = rerun_probability(11, 2)
    for q in (50, 90):
        per_run = [comparisons(base / f"run{k}", args.task, q) for k in range(1, args.runs + 1)]
        pairs = [p for p in per_run[0] if all(p in c for c in per_run)]
        print(f"\np{q} ratio a / b in each run, 95% interval, and re-runs inside another run's "
              f"interval{' (verdicts use p50)' if q == 50 else ' (for information)'}:")
        inside_all = total = 0
        for a, b in pairs:
            cs = [c[(a, b)] for c in per_run]
            inside = sum(cs[i]['low'] <= cs[j]['ratio'] <= cs[i]['high']
                         for i, j in itertools.permutations(range(len(cs)), 2))
            n = len(cs) * (len(cs) - 1)
            inside_all += inside; total += n
            cells = "; ".join(f"{c['ratio']:.3f} [{c['low']:.3f}, {c['high']:.3f}]"
                              + (" =" if c['verdict'] == 'no measurable difference' else "")
                              for c in cs)
            print(f"  {a} / {b}: {cells}; inside {inside}/{n}")
        print(f"  all comparisons: {inside_all}/{total} = {inside_all / total:.1%} inside "
              f"(expected {expected:.1%} if nothing changed between runs; '=' marks "
              f"'no measurable difference')")
    return 0


if __name__ == "__main__":
    sys.exit(main())
