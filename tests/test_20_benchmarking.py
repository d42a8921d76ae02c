"""TinyMLPerf: the quality gate, statistics, result schema, escaping, failing submissions, re-runs
and `tito benchmark`."""
import html
import itertools
import json
import math
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from tinytorch.benchmarking.tinymlperf import (
    TASKS, Leaderboard, RunConfig, Submission, block_ratios, compare_latencies, compare_results,
    digits_cnn, digits_student, escape_html, escape_md, median_ci, pareto_front, passes_gate,
    percentile, predict, read_result, rerun_probability, run_submission, run_submissions, score,
    single_stream, validate_result, write_result)
from tinytorch.core.layers import Module
from tinytorch.core.tensor import manual_seed
from tinytorch.core.training import save_checkpoint
from tinytorch.optimization.quantization import quantize_model
from tito.cli import main

# QUICK measures its blocks in this process (fast); the re-run and worker tests use workers.
QUICK = RunConfig(min_queries=40, min_duration=0.0, warmup=2, offline_repeats=1, workers=False)
DIGITS = TASKS['digits']


@pytest.fixture(scope='module')
def setup(tmp_path_factory):
    "The digits data, its trained reference (seed 0), its accuracy, and a folder of checkpoints."
    tmp = tmp_path_factory.mktemp('bench')
    data = DIGITS.load()
    reference = DIGITS.train(seed=0)
    acc = score('accuracy', predict(reference, data.X_test), data.y_test)
    save_checkpoint(tmp / 'ref.npz', reference)
    manual_seed(7); save_checkpoint(tmp / 'random.npz', digits_cnn())
    save_checkpoint(tmp / 'student.npz', digits_student())
    return tmp, data, reference, acc


def submission(tmp, name, body, ckpt, division='closed'):
    path = tmp / f"{name}.py"
    path.write_text(f"NAME = {name!r}\nDIVISION = {division!r}\nTASK = 'digits'\n"
                    f"CHECKPOINT = {ckpt!r}\n{body}\n")
    return Submission.from_file(path)


BUILD = ("from tinytorch.benchmarking.tinymlperf import digits_cnn\n"
         "def build_model(): return digits_cnn()")
INT8 = ("from tinytorch.benchmarking.tinymlperf import digits_cnn, int8_skeleton\n"
        "def build_model(): return int8_skeleton(digits_cnn(), (1, 1, 8, 8))")


def run(setup, sub):
    tmp, data, reference, acc = setup
    return run_submission(sub, DIGITS, data, reference, acc, QUICK)


# The quality gate

def test_random_weights_fail_the_gate_and_are_not_timed(setup):
    r = run(setup, submission(setup[0], 'random', BUILD, 'random.npz'))
    assert r['status'] == 'fail' and r['quality']['value'] < 0.5
    assert 'misses the target' in r['reason']
    assert r['single_stream'] is None and r['offline'] is None
    validate_result(r)


def test_reference_passes_with_its_accuracy_target_size_and_blocks(setup):
    a = run(setup, submission(setup[0], 'fp32', BUILD, 'ref.npz'))
    assert a['status'] == 'pass' and a['quality']['value'] == setup[3]
    assert a['quality']['target'] == pytest.approx(0.99 * setup[3])
    ss = a['single_stream']
    assert ss['blocks'] == len(ss['latencies']) == len(ss['reference_latencies']) == QUICK.blocks
    assert ss['queries'] == sum(map(len, ss['latencies'])) >= 40 and a['flops_per_sample'] > 0
    assert a['size_bytes'] == (setup[0] / 'ref.npz').stat().st_size


# The reproducible re-run. 31 blocks per run; the interval compared is the one from the 3rd
# smallest to the 3rd largest block ratio (`median_ci` at level 1 - 1e-6 picks j = 3 for 31
# values). If the blocks of the two runs are exchangeable (no change in between), the re-run's
# median block ratio falls outside the first run's interval with probability
# 1 - rerun_probability(31, 3) = 1.6e-4 (asserted below), whatever the latency distribution:
# that is this test's false-failure rate, per candidate, under that hypothesis. The same
# interval excludes 1 for a model doing twice the work, so it is not wide enough to hold anything.
LEVEL, BLOCKS = 1 - 1e-6, 31
RERUN = RunConfig(min_queries=BLOCKS * 24, min_duration=0.0, warmup=4, offline_repeats=1,
                  blocks=BLOCKS)


class Twice(Module):
    "The reference architecture run twice on each input: twice the work, the same outputs."
    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, x):
        self.model(x)
        return self.model(x)


def test_rerun_reproduces_accuracy_exactly_and_latency_within_the_interval(setup):
    tmp, data, reference, acc = setup
    save_checkpoint(tmp / 'int8.npz', quantize_model(reference, [data.calibration(200)]))
    subs = [submission(tmp, 'fp32', BUILD, 'ref.npz'), submission(tmp, 'int8', INT8, 'int8.npz')]
    first, again = (run_submissions(subs, DIGITS, data, reference, acc, RERUN) for _ in range(2))
    assert 1 - rerun_probability(BLOCKS, 3) < 2e-4
    for a, b in zip(first, again):
        assert a['status'] == b['status'] == 'pass'
        assert a['quality']['value'] == b['quality']['value']             # exact, same seed
        sa, sb = a['single_stream'], b['single_stream']
        ra = block_ratios(sa['latencies'], sa['reference_latencies'])    # (31,)
        rb = block_ratios(sb['latencies'], sb['reference_latencies'])
        m, lo, hi, cov = median_ci(ra, LEVEL)
        assert cov == 1 - 2 * (1 + 31 + 465) / 2**31                        # j = 3
        assert lo <= np.median(rb) <= hi, (a['name'], lo, hi, np.median(rb))
    fp32 = median_ci(block_ratios(first[0]['single_stream']['latencies'],
                                  first[0]['single_stream']['reference_latencies']), LEVEL)
    assert fp32[1] <= 1 <= fp32[2]                                          # the same model
    twice = Twice(digits_cnn()); twice.model.load_state_dict(reference.state_dict()); twice.eval()
    lat = single_stream(twice, data.performance(256), reference, BLOCKS * 24, 0.0, 4, BLOCKS)
    c = compare_latencies(lat['submission'], lat['reference'], level=LEVEL)
    assert c['low'] > 1 and c['verdict'].endswith('slower'), c


def test_rerun_probability_counts_every_order():
    for n, j in [(1, 1), (3, 1), (3, 2), (5, 1), (5, 2), (5, 3), (7, 2)]:
        inside = total = 0
        for first in itertools.combinations(range(2 * n), n):     # ranks of the first run's blocks
            rerun = sorted(set(range(2 * n)) - set(first))
            total += 1
            inside += first[j - 1] <= rerun[n // 2] <= first[n - j]
        assert rerun_probability(n, j) == pytest.approx(inside / total, abs=1e-12), (n, j)
    with pytest.raises(ValueError, match="need odd n"): rerun_probability(4, 1)


@given(st.floats(allow_nan=True), st.floats(0, 1))
def test_gate_against_definition(value, target):
    ok = passes_gate(value, target, 'accuracy')
    assert ok == (not math.isnan(value) and math.isfinite(value) and value >= target)
    assert passes_gate(value, target, 'loss') == (math.isfinite(value) and value <= target)


# Statistics

@settings(max_examples=60, deadline=None)
@given(st.lists(st.floats(0.1, 10), min_size=6, max_size=60), st.sampled_from([0.5, 0.9, 0.95]))
def test_median_ci_against_its_definition(xs, level):
    m, lo, hi, cov = median_ci(xs, level)
    n, x = len(xs), sorted(xs)
    coverage = lambda j: 1 - 2 * sum(math.comb(n, i) for i in range(j)) / 2**n
    j = max(j for j in range(1, (n + 1) // 2 + 1) if coverage(j) >= level)
    assert (lo, hi) == (x[j - 1], x[n - j]) and cov == pytest.approx(coverage(j), abs=1e-15)
    assert lo <= m == np.median(xs) <= hi


@settings(max_examples=30, deadline=None)
@given(st.lists(st.lists(st.floats(1e-6, 1e-2), min_size=1, max_size=20), min_size=6, max_size=30))
def test_identical_blocks_show_no_difference(blocks):
    for q in (50, 90):
        c = compare_latencies(blocks, [list(b) for b in blocks], q=q)
        assert c['ratio'] == c['low'] == c['high'] == 1.0
        assert c['verdict'] == 'no measurable difference'


def test_a_real_difference_is_detected_and_results_compare_through_the_reference():
    rng = np.random.default_rng(0)
    ref = [list(rng.lognormal(-8, 0.2, 50)) for _ in range(11)]
    slow = [list(2 * np.array(b) * rng.lognormal(0, 0.01, 50)) for b in ref]
    c = compare_latencies(slow, ref)
    assert c['low'] > 1.9 and c['verdict'].endswith('x slower') and c['coverage'] > 0.95
    # a and b were measured in separate runs, each beside its own reference: a runs 2x, b 4x
    ss = lambda k, r: {'single_stream': {'latencies': [[k * v for v in blk] for blk in r],
                                         'reference_latencies': r}}
    r2 = [list(rng.lognormal(-7, 0.2, 50)) for _ in range(11)]
    c = compare_results(ss(2, ref), ss(4, r2))
    assert c['ratio'] == pytest.approx(0.5) and c['verdict'] == '2.00x faster'
    with pytest.raises(ValueError, match="5 values cannot give"): median_ci([1, 2, 3, 4, 5])


@given(st.lists(st.floats(0, 1e3), min_size=1, max_size=100),
       st.sampled_from([1, 25, 50, 90, 99, 100]))
def test_percentile_is_numpys_inverted_cdf(xs, q):
    assert percentile(xs, q) == np.percentile(np.array(xs, np.float64), q, method='inverted_cdf')


@given(st.lists(st.tuples(st.integers(1, 5), st.integers(1, 5)), max_size=12))
def test_pareto_front_is_exactly_the_undominated_points(points):
    dominates = lambda a, b: a[0] <= b[0] and a[1] >= b[1] and a != b
    front = pareto_front(points)
    assert front == [i for i, p in enumerate(points) if not any(dominates(q, p) for q in points)]


# Escaping

@given(st.text())
def test_escape_html_matches_the_standard_library(s):
    assert escape_html(s) == html.escape(s, quote=True)
    assert '|' not in escape_md(s).replace('\\|', '') and '\n' not in escape_md(s)


def test_leaderboard_shows_hostile_names_as_text(setup, tmp_path):
    r = run(setup, submission(setup[0], 'fp32', BUILD, 'ref.npz'))
    write_result(tmp_path / 'a.json', dict(r, name='<script>alert(1)</script>',
                                           description="x' onmouseover='alert(2)"))
    board = Leaderboard.from_dir(tmp_path)
    page, md = board.html(), board.markdown()
    assert '<script>' not in page and "onmouseover='" not in page
    assert '&lt;script&gt;alert(1)&lt;/script&gt;' in page
    assert '<script>' not in md


# The result schema

@pytest.mark.parametrize('edit, message', [
    (lambda r: r['quality'].update(value=1.01), "'value' = 1.01 is outside"),
    (lambda r: r['quality'].update(value=float('nan')), "'value' must be a finite number"),
    (lambda r: r['single_stream'].update(p50=-0.001), "'p50' = -0.001 is outside"),
    (lambda r: r['single_stream'].update(p90=1.0), "p50 <= p90 <= p99"),
    (lambda r: r.update(version=99), "version 2 file"),
    (lambda r: r['single_stream']['latencies'].pop(), "'latencies' must be as many blocks"),
    (lambda r: [r['single_stream'][k].__delitem__(slice(5, None))
                for k in ('latencies', 'reference_latencies')], "blocks (6 or more)"),
    (lambda r: r['single_stream']['latencies'][0].append(-1e-3), "'latencies' must be"),
    (lambda r: r.update(status='pass', quality=dict(r['quality'], value=0.1)), "contradicts"),
    (lambda r: r.update(date='yesterday'), "isoformat"),
    (lambda r: r.update(size_bytes=-5), "'size_bytes' = -5 is outside"),
])
def test_edited_results_are_rejected_with_the_field(setup, tmp_path, edit, message):
    r = run(setup, submission(setup[0], 'fp32', BUILD, 'ref.npz'))
    path = write_result(tmp_path / 'r.json', r)
    d = json.loads(path.read_text())
    edit(d)
    path.write_text(json.dumps(d))
    with pytest.raises(ValueError, match='read_result: .*r.json') as e: read_result(path)
    assert message in str(e.value)
    board = Leaderboard.from_dir(tmp_path)
    assert board.results == [] and board.rejected[0][0] == 'r.json'


def test_write_result_refuses_an_invalid_result_and_keeps_the_old_file(setup, tmp_path):
    r = run(setup, submission(setup[0], 'fp32', BUILD, 'ref.npz'))
    path = write_result(tmp_path / 'r.json', r)
    before = path.read_bytes()
    with pytest.raises(ValueError): write_result(path, dict(r, division='secret'))
    assert path.read_bytes() == before and [p.name for p in tmp_path.iterdir()] == ['r.json']


# Bad submissions

@pytest.mark.parametrize('body, ckpt, reason', [
    ("raise RuntimeError('boom')", 'ref.npz', 'RuntimeError: boom'),
    ("def build_model(): return 'a model'", 'ref.npz', 'returned a str, not a Module'),
    (BUILD.replace('digits_cnn()', 'digits_cnn()[:-2]'),
     'ref.npz', 'does not fit'),
    (BUILD, 'missing.npz', 'no checkpoint at'),
    (BUILD.replace('digits_cnn', 'digits_student'),
     'student.npz', 'closed division: weighted layer 0'),
])
def test_crashing_submissions_are_reported_with_the_reason(setup, body, ckpt, reason):
    r = run(setup, submission(setup[0], 'bad', body, ckpt))
    assert r['status'] == 'error' and reason in r['reason'], r['reason']
    validate_result(r)


# Each block runs in a new process that loads the submission again. A file that behaves there
# unlike in the parent (here, only in a process other than the main one) fails that submission
# with the reason, whether it raises or kills the worker; the other submission is measured.
IN_WORKER = ("import multiprocessing, os\n" + BUILD + "\n"
             "if multiprocessing.current_process().name != 'MainProcess': {}")


@pytest.mark.parametrize('action, reason', [
    ("raise RuntimeError('only in a worker')", "RuntimeError: only in a worker"),
    ("os._exit(3)", "the worker died"),
])
def test_a_submission_failing_in_the_worker_is_reported_and_the_others_run(setup, action, reason):
    tmp, data, reference, acc = setup
    subs = [submission(tmp, 'flaky', IN_WORKER.format(action), 'ref.npz'),
            submission(tmp, 'fp32', BUILD, 'ref.npz')]
    cfg = RunConfig(min_queries=60, min_duration=0.0, warmup=2, offline_repeats=1, blocks=6)
    flaky, fp32 = run_submissions(subs, DIGITS, data, reference, acc, cfg)
    assert flaky['status'] == 'error' and reason in flaky['reason'], flaky['reason']
    assert flaky['reason'].startswith('block 1: ') and flaky['quality']['value'] == acc
    assert fp32['status'] == 'pass' and fp32['single_stream']['blocks'] == 6
    validate_result(flaky); validate_result(fp32)


def test_nan_and_wrong_shape_outputs_are_errors(setup):
    tmp, data, reference, acc = setup
    broken = digits_cnn(); broken.load_state_dict(reference.state_dict())
    broken[-1].bias.data[3] = np.inf
    save_checkpoint(tmp / 'inf.npz', broken)
    r = run(setup, submission(tmp, 'inf', BUILD, 'inf.npz'))
    assert r['status'] == 'error' and 'not finite' in r['reason']
    save_checkpoint(tmp / 'headless.npz', reference[:-1])
    r = run(setup, submission(tmp, 'headless', BUILD.replace('digits_cnn()', 'digits_cnn()[:-1]'),
                              'headless.npz', division='open'))
    assert r['status'] == 'error' and 'expected (2, 10)' in r['reason']


def test_submission_constants_are_read_without_running_the_file(tmp_path):
    p = tmp_path / 's.py'
    p.write_text("NAME = 'x'\nDIVISION = 'open'\nTASK = 'digits'\nCHECKPOINT = 'c.npz'\n"
                 "raise SystemExit(3)\n")
    s = Submission.from_file(p)
    assert (s.name, s.division, s.checkpoint) == ('x', 'open', tmp_path / 'c.npz')
    p.write_text("NAME = 'x'\n")
    with pytest.raises(ValueError, match=r"does not set \['DIVISION', 'TASK'\]"):
        Submission.from_file(p)


# The command line, end to end on a tiny configuration

def test_tito_benchmark_end_to_end(tmp_path, capsys):
    fast = ['--runs', str(tmp_path), '--queries', '30', '--min-duration', '0', '--warmup', '2',
            '--offline-repeats', '1', '--quiet']
    assert main(['benchmark', '--only', 'fp32,int8', *fast]) == 0
    out = capsys.readouterr().out
    assert 'digits-fp32' in out and 'digits-int8' in out and '2 of 2 submission(s) passed' in out
    assert 'p50 vs reference' in out and 'in 11 interleaved blocks' in out
    bench = tmp_path / 'benchmark'
    results = sorted(p.name for p in (bench / 'results').iterdir())
    assert results == ['digits--digits-fp32.json', 'digits--digits-int8.json']
    assert (tmp_path / 'digits_cnn.npz').is_file()
    assert (bench / 'leaderboard.html').is_file()
    assert (bench / 'digits_latency_vs_accuracy.png').is_file()
    ref_acc = read_result(bench / 'results' / 'digits--digits-fp32.json')['quality']['value']
    # a user submission that crashes: reported, exit code 1, the earlier entries stay ranked
    bad = tmp_path / 'bad.py'
    bad.write_text("NAME = '<b>bad</b>'\nDIVISION = 'open'\nTASK = 'digits'\n"
                   "CHECKPOINT = 'none.npz'\n"
                   "def build_model(): raise ValueError('no model today')\n")
    assert main(['benchmark', 'submit', str(bad), *fast]) == 1
    md = (bench / 'leaderboard.md').read_text()
    assert 'digits-fp32' in md and '&lt;b&gt;bad&lt;/b&gt;' in md and 'no model today' in md
    assert '| p50 vs reference | p50 vs above |' in md
    # the reference is loaded, not retrained, the second time: the same accuracy
    assert 'reference: loaded' in capsys.readouterr().out
    fp32 = read_result(bench / 'results' / 'digits--digits-fp32.json')
    assert fp32['quality']['value'] == ref_acc


def test_tito_benchmark_unknown_task_and_missing_checkpoint(tmp_path, capsys):
    assert main(['benchmark', '--task', 'imagenet', '--runs', str(tmp_path)]) == 2
    assert "no task 'imagenet'" in capsys.readouterr().err
    assert main(['benchmark', '--task', 'shakespeare_char', '--runs', str(tmp_path)]) == 2
    assert 'tito milestone tinygpt' in capsys.readouterr().err
    assert main(['benchmark', '--only', 'fp64', '--runs', str(tmp_path)]) == 2
    assert "no entries ['fp64'] for task digits" in capsys.readouterr().err
    assert main(['benchmark', '--blocks', '5', '--runs', str(tmp_path)]) == 2
    assert "a 95% interval needs 6 blocks or more, got 5" in capsys.readouterr().err


def test_closed_division_allows_int8_with_folded_batchnorm_and_rejects_other_shapes():
    from tinytorch.benchmarking.tinymlperf import check_closed, fashion_lenet, int8_skeleton
    assert check_closed(int8_skeleton(fashion_lenet(), (1, 1, 28, 28)), fashion_lenet()) is None
    per_tensor = int8_skeleton(digits_cnn(), (1, 1, 8, 8), per_channel=False)
    assert check_closed(per_tensor, digits_cnn()) is None
    assert 'weighted layer 0' in check_closed(digits_student(), digits_cnn())
