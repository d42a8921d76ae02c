"""`tito benchmark`: run TinyMLPerf (`tinytorch.benchmarking.tinymlperf`) on a task's submissions
and write its leaderboard.

`run` builds the course's submissions for the task (their model files are under
`submissions/TASK/`, their checkpoints are written to OUT/checkpoints/), re-runs them from those
files as one experiment (their single-stream blocks interleaved), writes one result file per
submission to OUT/results/, then the leaderboard (Markdown, HTML, two plots) from every result
file there. `submit` runs one user submission the same way and rebuilds the leaderboard.
Reference checkpoints live in runs/ (the milestones write them there); the digits reference is
trained when its checkpoint is missing.
"""
import os
import re
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from .project import Project, TitoError

# NumPy, the package and matplotlib are imported inside the functions: `tito status` imports this
# module too.


@dataclass
class Entry:
    "A submission the course builds: its file under submissions/ and what writes its checkpoint."
    file: str                # submissions/TASK/FILE
    make: Callable           # (context, checkpoint path) -> None: write the checkpoint


class Context:
    "What the entries' builders share: the task, its data and the trained reference."
    def __init__(self, task, data, reference, seed: int):
        self.task, self.data, self.reference, self.seed = task, data, reference, seed


def _save_reference(ctx: Context, path: Path):
    from tinytorch.core.training import save_checkpoint
    save_checkpoint(path, ctx.reference)


def _save(path: Path, model, ctx: Context):
    from tinytorch.core.training import save_checkpoint
    save_checkpoint(path, model, seed=ctx.seed)


def _copy_reference(ctx: Context):
    "A copy of the reference with its own weights, so the entries built from it leave it unchanged."
    model = ctx.task.reference()
    model.load_state_dict(ctx.reference.state_dict())
    return model.eval()


def _calibration_batches(ctx: Context, batch: int = 50) -> list:
    "The task's calibration subset (training images only), in batches: all quantization sees."
    X = ctx.data.calibration(ctx.task.calibration_size, ctx.seed)
    return [X[i:i + batch] for i in range(0, len(X), batch)]


def _int8(per_channel: bool):
    def make(ctx: Context, path: Path):
        from tinytorch.optimization.quantization import quantize_model
        q = quantize_model(ctx.reference, _calibration_batches(ctx), per_channel=per_channel)
        _save(path, q, ctx)
    return make


def _fit(model, ctx: Context, loss_fn, epochs: int, lr: float):
    "Adam on the training split, one BLAS thread; `loss_fn(logits, x, y)` is a batch's loss."
    from tinytorch.core.optimizers import Adam
    from tinytorch.core.training import Batches
    from tinytorch.utils.timing import blas_threads
    opt = Adam(model.parameters(), lr=lr)
    batches = Batches(ctx.data.X_train, ctx.data.y_train, 32, shuffle=True, seed=ctx.seed)
    model.train()
    with blas_threads(1):
        for _ in range(epochs):
            for x, y in batches:                                      # a new order every epoch
                opt.zero_grad()
                loss_fn(model(x), x, y).backward()
                opt.step()
    return model.eval()


def _pruned_int8(ctx: Context, path: Path, amount: float = 0.7, epochs: int = 3,
                 lr: float = 3e-4):
    """Prune `amount` of the weights by global magnitude, fine-tune with the masks kept, then INT8.

    The learning rate and epochs were chosen on a validation split (the last 287 of the 1,438
    training images), pruning a reference trained on the other 1,151 (98.26% on validation),
    seeds 0-2, mean accuracy: 3 epochs at 1e-3 99.07%, 6 at 1e-3 99.42%, 10 at 1e-3 99.42%,
    3 at 3e-4 99.65%, 6 at 3e-4 99.65%; pruned, not fine-tuned, 97.91%."""
    from tinytorch.core.losses import cross_entropy
    from tinytorch.core.tensor import manual_seed
    from tinytorch.optimization.compression import global_unstructured, prunable, remove, sparsity
    from tinytorch.optimization.quantization import quantize_model
    manual_seed(ctx.seed)
    model = _copy_reference(ctx)
    global_unstructured(prunable(model), amount=amount)
    _fit(model, ctx, lambda out, x, y: cross_entropy(out, y), epochs, lr=lr)
    for m, name in prunable(model): remove(m, name)
    _save(path, quantize_model(model, _calibration_batches(ctx), per_channel=True), ctx)


def _distilled(ctx: Context, path: Path, T: float = 4.0, alpha: float = 0.9, epochs: int = 30):
    """Train `digits_student` on the reference's softened outputs and the labels.

    Epochs chosen on a validation split (the last 287 of the 1,438 training images; the student
    trained on the rest, seeds 0-2, mean accuracy): 12 epochs 98.14% (alone on the labels also
    98.14%), 20 epochs 99.42% (alone 98.95%), 30 epochs 99.77% (alone 99.19%); T 4 and alpha
    0.9 against 0.5 and T 2 at 12 epochs: 98.14%, 98.49%, 97.33-97.44%. Distillation needs the
    longer schedule (Beyer et al. 2022, "A good teacher is patient and consistent")."""
    from tinytorch.benchmarking.tinymlperf import digits_student
    from tinytorch.core.autograd import no_grad
    from tinytorch.core.tensor import manual_seed
    from tinytorch.optimization.compression import distillation_loss
    manual_seed(ctx.seed)
    student, teacher = digits_student(), ctx.reference

    def loss(out, x, y):
        with no_grad(): t = teacher(x)
        return distillation_loss(out, t, y, T=T, alpha=alpha)
    _save(path, _fit(student, ctx, loss, epochs, lr=3e-3), ctx)


def _train_small(ctx: Context, path: Path):
    "`digits_student` trained on the labels alone, with the reference's recipe."
    from tinytorch.benchmarking.tinymlperf import digits_student, train_classifier
    from tinytorch.core.tensor import manual_seed
    manual_seed(ctx.seed)
    _save(path, train_classifier(digits_student(), ctx.data, seed=ctx.seed), ctx)


# The course's submissions per task, in display order. The larger tasks run their FP32 reference;
# their INT8 entries need a submission file with the task's input shape (see
# submissions/digits/int8.py).
ENTRIES = {
    'digits': [Entry('fp32.py', _save_reference), Entry('int8.py', _int8(per_channel=True)),
               Entry('pruned_int8.py', _pruned_int8), Entry('distilled.py', _distilled),
               Entry('small_cnn.py', _train_small),
               Entry('int8_per_tensor.py', _int8(per_channel=False))],
    'fashion_mnist': [Entry('fp32.py', _save_reference), Entry('int8.py', _int8(per_channel=True))],
    'shakespeare_char': [Entry('fp32.py', _save_reference)],
    'cifar10': [Entry('fp32.py', _save_reference)],
}


def slug(name: str) -> str:
    "A file-name-safe form of a submission's name."
    return re.sub(r'[^A-Za-z0-9._-]+', '_', name).strip('._') or 'submission'


class Progress:
    "Stage updates: a tqdm bar on a terminal, one plain line per update otherwise."
    def __init__(self, names: list, enabled: bool = True):
        self.tty, self.enabled, self.names = sys.stdout.isatty(), enabled, names
        self.bar = None
        if enabled and self.tty:
            from tqdm.auto import tqdm
            self.bar = tqdm(total=len(names), unit='submission', leave=False, dynamic_ncols=True)

    def stage(self, i: int, what: str):
        "Submission `i` is at stage `what`."
        if not self.enabled: return
        if self.bar is not None:
            self.bar.set_description_str(f"{self.names[i]}: {what}"); self.bar.refresh()
        else: print(f"benchmark [{i + 1}/{len(self.names)}] {self.names[i]}: {what}", flush=True)

    def done(self, i: int, result: dict):
        if self.bar is not None: self.bar.update(1)
        elif self.enabled:
            print(f"benchmark [{i + 1}/{len(self.names)}] {self.names[i]}: {result['status']}"
                  + (f" ({result['reason']})" if result['reason'] else ''), flush=True)

    def close(self):
        if self.bar is not None: self.bar.close()


def load_task(name: str, runs: Path, seed: int, say=print):
    "The task, its data, its reference (loaded from runs/, or trained and saved) and its score."
    from tinytorch.benchmarking.tinymlperf import TASKS, predict, score
    from tinytorch.core.training import load_checkpoint, save_checkpoint
    if name not in TASKS: raise TitoError(f"no task {name!r}; tasks are {', '.join(TASKS)}")
    task = TASKS[name]
    try: data = task.load()
    except (OSError, ValueError) as e:
        raise TitoError(f"task {name}: cannot load its data ({type(e).__name__}: {e}); "
                        f"{task.how_to_get}") from None
    ckpt = runs / task.checkpoint
    reference = task.reference()
    if ckpt.is_file():
        try: load_checkpoint(ckpt, reference)
        except ValueError as e:
            raise TitoError(f"task {name}: reference checkpoint {ckpt}: {e}") from None
        say(f"reference: loaded {ckpt}")
    elif task.train is not None:
        start = time.perf_counter()
        reference = task.train(seed=seed)
        save_checkpoint(ckpt, reference, seed=seed)
        say(f"reference: trained the {name} reference in {time.perf_counter() - start:.1f} s; "
            f"saved {ckpt}")
    else:
        raise TitoError(f"task {name}: no reference checkpoint at {ckpt}; {task.how_to_get}")
    reference.eval()
    ref_score = score(task.metric, predict(reference, data.X_test, task.batch_size), data.y_test)
    say(f"reference: {task.metric} {ref_score:.4f} on {len(data.y_test):,} test samples; "
        f"quality target {task.quality_target(ref_score):.4f}")
    return task, data, reference, ref_score


def run_all(subs: list, ctx: Context, ref_score: float, cfg, results: Path,
            progress: Progress) -> list:
    "Run the submissions as one experiment (blocks interleaved); write each result atomically."
    from tinytorch.benchmarking.tinymlperf import run_submissions, write_result
    rs = run_submissions(subs, ctx.task, ctx.data, ctx.reference, ref_score, cfg,
                         progress=progress.stage)
    for i, (sub, r) in enumerate(zip(subs, rs)):
        write_result(results / f"{ctx.task.name}--{slug(sub.name)}.json", r)
        progress.done(i, r)
    return rs


def console_table(board, task: str) -> str:
    "The leaderboard of `task` as fixed-width text: ranked entries, then the others with reasons."
    cols = ['rank', 'name', 'division', 'quality', 'p50', 'p90', 'p99', 'p50 vs reference',
            'offline', 'size', 'FLOPs']
    rows = [[row[c] for c in cols] for row in board.rows(task)]
    widths = [max(len(c), *(len(r[i]) for r in rows)) if rows else len(c)
              for i, c in enumerate(cols)]
    fmt = lambda cells: '  '.join(f"{x:<{w}}" for x, w in zip(cells, widths)).rstrip()
    lines = [fmt(cols), fmt(['-' * w for w in widths]), *map(fmt, rows),
             board.offline_ranking(task)]
    lines += [f"not ranked: {r['name']} ({r['division']}): {r['status']}, {r['reason']}"
              for r in board.unranked(task)]
    return '\n'.join(lines)


def plots(board, out: Path) -> list[Path]:
    "Latency (p90) against quality with the Pareto front, and size against quality: PNGs."
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt
    from tinytorch.benchmarking.tinymlperf import METRICS, pareto_front
    written = []
    for task in board.tasks():
        ranked = board.ranked(task)
        if not ranked: continue
        metric = ranked[0]['quality']['metric']
        sign = 1 if METRICS[metric] else -1
        q = [r['quality']['value'] * sign for r in ranked]           # higher is better
        for kind, xs, xlabel in (
                ('latency', [r['single_stream']['p90'] * 1e3 for r in ranked], 'p90 latency (ms)'),
                ('size', [r['size_bytes'] / 1024 for r in ranked], 'model file (KiB)')):
            fig, ax = plt.subplots(figsize=(6.5, 4.5))
            ys = [r['quality']['value'] for r in ranked]
            for r, x, y in zip(ranked, xs, ys):
                closed = r['division'] == 'closed'
                ax.scatter(x, y, marker='o' if closed else 's', color='C0' if closed else 'C1')
                ax.annotate(r['name'], (x, y), textcoords='offset points', xytext=(5, 4),
                            fontsize=8)
            front = sorted(pareto_front(list(zip(xs, q))), key=lambda i: xs[i])
            ax.step([xs[i] for i in front], [ys[i] for i in front], where='post', color='gray',
                    ls='--', label='Pareto front')
            ax.axhline(ranked[0]['quality']['target'], color='C3', ls=':', label='quality target')
            ax.set_xscale('log')
            ax.set(xlabel=xlabel, ylabel=metric,
                   title=f"{task}: {metric} against {kind} (circles closed, squares open)")
            ax.legend(fontsize=8); fig.tight_layout()
            path = out / f"{task}_{kind}_vs_{metric}.png"
            fig.savefig(path, dpi=100); plt.close(fig)
            written.append(path)
    return written


def write_leaderboard(out: Path, say=print) -> object:
    "Read OUT/results, write leaderboard.md, leaderboard.html and the plots atomically; return it."
    from tinytorch.benchmarking.tinymlperf import Leaderboard
    from tinytorch.core.training import atomic_write
    board = Leaderboard.from_dir(out / 'results')
    for name, text in (('leaderboard.md', board.markdown()), ('leaderboard.html', board.html())):
        with atomic_write(out / name, 'w', encoding='utf-8') as f: f.write(text)
    pngs = plots(board, out)
    for n, why in board.rejected: say(f"rejected result file {n}: {why}")
    say(f"wrote {out / 'leaderboard.md'}, {out / 'leaderboard.html'}"
        + ''.join(f", {p}" for p in pngs))
    return board


def run_config(args):
    from tinytorch.benchmarking.tinymlperf import RunConfig
    if args.blocks < 6:
        raise TitoError(f"benchmark --blocks: a 95% interval needs 6 blocks or more, "
                        f"got {args.blocks}")
    return RunConfig(min_queries=args.queries, min_duration=args.min_duration, warmup=args.warmup,
                     offline_repeats=args.offline_repeats, threads=args.threads,
                     blocks=args.blocks, workers=not args.in_process, seed=args.seed)


def cmd_benchmark(project: Project, args) -> int:
    "`tito benchmark [run|submit FILE]`."
    start = time.perf_counter()
    runs = Path(args.runs) if args.runs else project.root / 'runs'
    out = Path(args.out) if args.out else runs / 'benchmark'
    (out / 'results').mkdir(parents=True, exist_ok=True)
    from tinytorch.benchmarking.tinymlperf import Submission
    from tinytorch.utils.timing import blas_threads, machine_info
    cfg = run_config(args)
    if args.action == 'submit':
        if not args.file: raise TitoError("benchmark submit: give the submission's Python file")
        try: sub = Submission.from_file(args.file, checkpoint=args.checkpoint)
        except ValueError as e: raise TitoError(str(e)) from None
        task_name, subs = sub.task, [sub]
    else:
        if args.file:
            raise TitoError(f"benchmark: unexpected argument {args.file!r} "
                            "(did you mean `submit`?)")
        task_name = args.task
        entries = ENTRIES.get(task_name, [])
        if args.only:
            only = args.only.split(',')
            unknown = set(only) - {Path(e.file).stem for e in entries}
            if unknown:
                raise TitoError(f"benchmark --only: no entries {sorted(unknown)} for task "
                                f"{task_name}; entries are "
                                f"{', '.join(Path(e.file).stem for e in entries)}")
            entries = [e for e in entries if Path(e.file).stem in only]
    with blas_threads(args.threads):
        info = machine_info()
        print(f"tito benchmark: task {task_name}; {info['cores']} cores, NumPy {info['numpy']}, "
              f"BLAS {', '.join(info['blas'])} with {info['blas_threads']} thread(s); "
              f"single-stream at least {cfg.min_queries} queries and {cfg.min_duration:g} s in "
              f"{cfg.blocks} interleaved blocks after {cfg.warmup} warm-up queries; "
              f"seed {cfg.seed}", flush=True)
        task, data, reference, ref_score = load_task(task_name, runs, cfg.seed)
        ctx = Context(task, data, reference, cfg.seed)
        if args.action != 'submit':
            subs = []
            folder = project.root / 'submissions' / task.name
            for e in entries:
                ckpt = out / 'checkpoints' / f"{task.name}--{Path(e.file).stem}.npz"
                ckpt.parent.mkdir(parents=True, exist_ok=True)
                t = time.perf_counter()
                e.make(ctx, ckpt)
                subs.append(Submission.from_file(folder / e.file, checkpoint=ckpt))
                print(f"built {subs[-1].name} ({time.perf_counter() - t:.1f} s): {ckpt}",
                      flush=True)
        progress = Progress([s.name for s in subs], enabled=not args.quiet)
        try: results = run_all(subs, ctx, ref_score, cfg, out / 'results', progress)
        finally: progress.close()
    board = write_leaderboard(out)
    print()
    print(console_table(board, task.name))
    print()
    failed = [r for r in results if r['status'] != 'pass']
    print(f"tito benchmark: {len(results) - len(failed)} of {len(results)} submission(s) passed "
          f"the quality gate; {time.perf_counter() - start:.1f} s in all")
    return 0 if args.action != 'submit' or not failed else 1


def add_parser(sub) -> None:
    "The `benchmark` subcommand, added to tito's parser."
    s = sub.add_parser('benchmark',
                       help="run TinyMLPerf on a task's submissions and write the leaderboard",
                       description=__doc__.split('\n\n')[0] + "\n\n" + __doc__.split('\n\n')[1],
                       formatter_class=__import__('argparse').RawDescriptionHelpFormatter)
    s.add_argument('action', nargs='?', choices=['run', 'submit'], default='run',
                   help="run: the course's submissions (default); submit FILE: one user submission")
    s.add_argument('file', nargs='?', metavar='FILE', help="submit: the submission's Python file")
    s.add_argument('--task', default='digits',
                   help="digits (default), fashion_mnist, shakespeare_char or cifar10")
    s.add_argument('--checkpoint', metavar='PATH',
                   help="submit: the checkpoint (default: the file's CHECKPOINT)")
    s.add_argument('--only', metavar='NAMES',
                   help="run: only these entries, by file name, e.g. fp32,int8")
    s.add_argument('--runs', metavar='DIR',
                   help="folder of the reference checkpoints (default runs/)")
    s.add_argument('--out', metavar='DIR', help="output folder (default RUNS/benchmark)")
    s.add_argument('--queries', type=int, default=1024,
                   help="single-stream queries, at least (default 1024)")
    s.add_argument('--min-duration', type=float, default=1.0,
                   help="seconds of single-stream queries, at least (default 1.0)")
    s.add_argument('--warmup', type=int, default=32, help="warm-up queries (default 32)")
    s.add_argument('--blocks', type=int, default=11,
                   help="single-stream blocks per submission, interleaved (default 11)")
    s.add_argument('--in-process', action='store_true',
                   help="measure every block in this process, not each in a new worker process "
                        "(faster; re-runs reproduce less well: benchmarks/bench_rerun.py)")
    s.add_argument('--offline-repeats', type=int, default=5,
                   help="timed offline passes (default 5)")
    s.add_argument('--threads', type=int, default=1, help="BLAS threads (default 1)")
    s.add_argument('--seed', type=int, default=0, help="seed of training and subsets (default 0)")
    s.add_argument('--quiet', action='store_true', help="no progress display")
    s.set_defaults(func=cmd_benchmark)
