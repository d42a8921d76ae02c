"""TinyMLPerf: the quality gate, statistics, result schema, escaping, failing submissions, re-runs and `tito benchmark`."""
import html
import json
import math

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from tinytorch.benchmarking.tinymlperf import (
    TASKS, Leaderboard, RunConfig, Submission, bootstrap_ratio_ci, compare_latencies, digits_cnn, digits_student, escape_html,
    escape_md, pareto_front, passes_gate, percentile, predict, read_result, run_submission, score, validate_result,
    write_result)
from tinytorch.core.tensor import manual_seed
from tinytorch.core.training import save_checkpoint
from tito.cli import main

QUICK = RunConfig(min_queries=40, min_duration=0.0, warmup=2, offline_repeats=1)
DIGITS = TASKS['digits']


@pytest.fixture(scope='module')
def setup(tmp_path_factory):
    "The digits data, its trained reference (seed 0), the reference's accuracy, and a folder with its submission."
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
    path.write_text(f"NAME = {name!r}\nDIVISION = {division!r}\nTASK = 'digits'\nCHECKPOINT = {ckpt!r}\n{body}\n")
    return Submission.from_file(path)


BUILD = "from tinytorch.benchmarking.tinymlperf import digits_cnn\ndef build_model(): return digits_cnn()"


def run(setup, sub):
    tmp, data, reference, acc = setup
    return run_submission(sub, DIGITS, data, reference, acc, QUICK)


# The quality gate

def test_random_weights_fail_the_gate_and_are_not_timed(setup):
    r = run(setup, submission(setup[0], 'random', BUILD, 'random.npz'))
    assert r['status'] == 'fail' and r['quality']['value'] < 0.5 and 'misses the target' in r['reason']
    assert r['single_stream'] is None and r['offline'] is None
    validate_result(r)


def test_reference_passes_and_rerun_reproduces_accuracy_exactly(setup):
    sub = submission(setup[0], 'fp32', BUILD, 'ref.npz')
    a, b = run(setup, sub), run(setup, sub)
    assert a['status'] == b['status'] == 'pass'
    assert a['quality']['value'] == b['quality']['value'] == setup[3]       # exact, not approximately
    assert a['quality']['target'] == pytest.approx(0.99 * setup[3])
    assert a['single_stream']['queries'] >= 40 and a['flops_per_sample'] > 0
    assert a['size_bytes'] == (setup[0] / 'ref.npz').stat().st_size


@given(st.floats(allow_nan=True), st.floats(0, 1))
def test_gate_against_definition(value, target):
    ok = passes_gate(value, target, 'accuracy')
    assert ok == (not math.isnan(value) and math.isfinite(value) and value >= target)
    assert passes_gate(value, target, 'loss') == (math.isfinite(value) and value <= target)


# Statistics

@settings(max_examples=30, deadline=None)
@given(st.lists(st.floats(1e-6, 1e-2), min_size=5, max_size=200), st.integers(0, 2**31))
def test_bootstrap_interval_contains_one_for_identical_samples(xs, seed):
    for paired in (False, True):
        r, lo, hi = bootstrap_ratio_ci(xs, list(xs), n_boot=200, seed=seed, paired=paired)
        assert r == 1.0 and lo <= 1 <= hi
    assert compare_latencies(xs, xs, seed=seed)['verdict'] == 'no measurable difference'


def test_bootstrap_detects_a_real_difference_and_is_seeded():
    x = np.random.default_rng(0).lognormal(-8, 0.2, 400)
    c = compare_latencies(x, 2 * x[::-1], seed=1)
    assert c['high'] < 1 and c['verdict'] == '2.00x faster'
    assert compare_latencies(x, 2 * x, seed=5) == compare_latencies(x, 2 * x, seed=5)


@given(st.lists(st.floats(0, 1e3), min_size=1, max_size=100), st.sampled_from([1, 25, 50, 90, 99, 100]))
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
    write_result(tmp_path / 'a.json', dict(r, name='<script>alert(1)</script>', description="x' onmouseover='alert(2)"))
    board = Leaderboard.from_dir(tmp_path)
    page, md = board.html(), board.markdown()
    assert '<script>' not in page and "onmouseover='" not in page and '&lt;script&gt;alert(1)&lt;/script&gt;' in page
    assert '<script>' not in md


# The result schema

@pytest.mark.parametrize('edit, message', [
    (lambda r: r['quality'].update(value=1.01), "'value' = 1.01 is outside"),
    (lambda r: r['quality'].update(value=float('nan')), "'value' must be a finite number"),
    (lambda r: r['single_stream'].update(p50=-0.001), "'p50' = -0.001 is outside"),
    (lambda r: r['single_stream'].update(p90=1.0), "p50 <= p90 <= p99"),
    (lambda r: r.update(version=99), "version 1 file"),
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
    ("from tinytorch.benchmarking.tinymlperf import digits_cnn\ndef build_model(): return digits_cnn()[:-2]",
     'ref.npz', 'does not fit'),
    (BUILD, 'missing.npz', 'no checkpoint at'),
    ("from tinytorch.benchmarking.tinymlperf import digits_student\ndef build_model(): return digits_student()",
     'student.npz', 'closed division: weighted layer 0'),
])
def test_crashing_submissions_are_reported_with_the_reason(setup, body, ckpt, reason):
    r = run(setup, submission(setup[0], 'bad', body, ckpt))
    assert r['status'] == 'error' and reason in r['reason'], r['reason']
    validate_result(r)


def test_nan_and_wrong_shape_outputs_are_errors(setup):
    tmp, data, reference, acc = setup
    broken = digits_cnn(); broken.load_state_dict(reference.state_dict())
    broken[-1].bias.data[3] = np.inf
    save_checkpoint(tmp / 'inf.npz', broken)
    r = run(setup, submission(tmp, 'inf', BUILD, 'inf.npz'))
    assert r['status'] == 'error' and 'not finite' in r['reason']
    save_checkpoint(tmp / 'headless.npz', reference[:-1])
    r = run(setup, submission(tmp, 'headless', BUILD.replace('digits_cnn()', 'digits_cnn()[:-1]'), 'headless.npz',
                              division='open'))
    assert r['status'] == 'error' and 'expected (2, 10)' in r['reason']


def test_submission_constants_are_read_without_running_the_file(tmp_path):
    p = tmp_path / 's.py'
    p.write_text("NAME = 'x'\nDIVISION = 'open'\nTASK = 'digits'\nCHECKPOINT = 'c.npz'\nraise SystemExit(3)\n")
    s = Submission.from_file(p)
    assert (s.name, s.division, s.checkpoint) == ('x', 'open', tmp_path / 'c.npz')
    p.write_text("NAME = 'x'\n")
    with pytest.raises(ValueError, match=r"does not set \['DIVISION', 'TASK'\]"): Submission.from_file(p)


# The command line, end to end on a tiny configuration

def test_tito_benchmark_end_to_end(tmp_path, capsys):
    fast = ['--runs', str(tmp_path), '--queries', '30', '--min-duration', '0', '--warmup', '2',
            '--offline-repeats', '1', '--quiet']
    assert main(['benchmark', '--only', 'fp32,int8', *fast]) == 0
    out = capsys.readouterr().out
    assert 'digits-fp32' in out and 'digits-int8' in out and '2 of 2 submission(s) passed' in out
    bench = tmp_path / 'benchmark'
    results = sorted(p.name for p in (bench / 'results').iterdir())
    assert results == ['digits--digits-fp32.json', 'digits--digits-int8.json']
    assert (tmp_path / 'digits_cnn.npz').is_file()
    assert (bench / 'leaderboard.html').is_file() and (bench / 'digits_latency_vs_accuracy.png').is_file()
    ref_acc = read_result(bench / 'results' / 'digits--digits-fp32.json')['quality']['value']
    # a user submission that crashes: reported, exit code 1, the earlier entries stay on the leaderboard
    bad = tmp_path / 'bad.py'
    bad.write_text("NAME = '<b>bad</b>'\nDIVISION = 'open'\nTASK = 'digits'\nCHECKPOINT = 'none.npz'\n"
                   "def build_model(): raise ValueError('no model today')\n")
    assert main(['benchmark', 'submit', str(bad), *fast]) == 1
    md = (bench / 'leaderboard.md').read_text()
    assert 'digits-fp32' in md and '&lt;b&gt;bad&lt;/b&gt;' in md and 'no model today' in md
    # the reference is loaded, not retrained, the second time: the same accuracy
    assert 'reference: loaded' in capsys.readouterr().out
    assert read_result(bench / 'results' / 'digits--digits-fp32.json')['quality']['value'] == ref_acc


def test_tito_benchmark_unknown_task_and_missing_checkpoint(tmp_path, capsys):
    assert main(['benchmark', '--task', 'imagenet', '--runs', str(tmp_path)]) == 2
    assert "no task 'imagenet'" in capsys.readouterr().err
    assert main(['benchmark', '--task', 'shakespeare_char', '--runs', str(tmp_path)]) == 2
    assert 'tito milestone tinygpt' in capsys.readouterr().err
    assert main(['benchmark', '--only', 'fp64', '--runs', str(tmp_path)]) == 2
    assert "no entries ['fp64'] for task digits" in capsys.readouterr().err


def test_closed_division_allows_int8_with_folded_batchnorm_and_rejects_other_shapes():
    from tinytorch.benchmarking.tinymlperf import check_closed, fashion_lenet, int8_skeleton
    assert check_closed(int8_skeleton(fashion_lenet(), (1, 1, 28, 28)), fashion_lenet()) is None
    assert check_closed(int8_skeleton(digits_cnn(), (1, 1, 8, 8), per_channel=False), digits_cnn()) is None
    assert 'weighted layer 0' in check_closed(digits_student(), digits_cnn())
