# %%
#| default_exp utils.timing

# %% [markdown]
# # Timing
#
# > One protocol for every time measurement in the course: warm up, repeat, take medians, alternate.

# %% [markdown]
# Every later module measures something: how much faster one layout is than another, what a fused
# kernel saves, how an INT8 model compares with its float32 original. This notebook holds the one
# way the project times code, so that every printed figure means the same thing. It has no
# exercises; the profiling module explains it further and builds its profiler on it.
#
# The protocol, and why each step exists:
#
# 1. **Warm up.** The first calls of a function pay for things later calls do not: allocating
#    buffers, filling caches, starting BLAS threads. They are run and thrown away.
# 2. **Enough calls per sample.** `time.perf_counter` has a resolution of well under a microsecond,
#    but a call that takes a few microseconds is still timed in batches (`number` calls per sample),
#    chosen so a sample lasts at least `min_time` seconds, as `timeit.Timer.autorange` does.
# 3. **Several samples, the median.** A shared machine adds delays that only ever make a sample
#    slower. The median ignores a few slow samples; the minimum is reported too, and the
#    interquartile range (IQR) and 90th percentile say how much the samples spread.
# 4. **Say when the spread is large.** As pyperf does, a measurement whose IQR is more than a stated
#    fraction of its median is flagged unstable and a warning says so.
# 5. **Alternate candidates.** To compare two functions, run them in turns within each round, so a
#    burst of load hits both, and take the ratio of the two within each round. A ratio is never
#    formed from two separate runs.
# 6. **Pin the BLAS threads.** NumPy's matrix products use a BLAS library that may start one thread
#    per core; on a shared machine idle spinning threads can make a small model many times slower.
#    `blas_threads(1)` fixes the count for a measurement, and `machine_info()` records it.

# %%
#| export
import contextlib
import os
import platform
import time
import warnings
from dataclasses import dataclass, field

import numpy as np

# %%
#| hide
from fastcore.test import test_eq, test_fail, test_close

# %% [markdown]
# ## A measurement
#
# `Measurement` holds every sample (seconds per call) and derives the statistics from them, so a
# result can always be re-examined. `unstable` compares the IQR with `max_spread` times the median.

# %%
#| export
class UnstableMeasurementWarning(UserWarning):
    "The samples of a measurement spread more than its stated threshold allows."

@dataclass
class Measurement:
    "Seconds per call of one timed function: every sample and the statistics of them."
    samples: list          # seconds per call, one entry per sample
    number: int = 1        # calls averaged into each sample
    label: str = ''
    max_spread: float = 0.1  # IQR above this fraction of the median marks the measurement unstable

    def _q(self, p): return float(np.percentile(self.samples, p))
    @property
    def median(self) -> float: return self._q(50)
    @property
    def min(self) -> float: return float(np.min(self.samples))
    @property
    def mean(self) -> float: return float(np.mean(self.samples))
    @property
    def p90(self) -> float: return self._q(90)
    @property
    def iqr(self) -> float: return self._q(75) - self._q(25)
    @property
    def spread(self) -> float: return self.iqr / self.median if self.median > 0 else 0.0
    @property
    def unstable(self) -> bool: return self.spread > self.max_spread

    def __repr__(self):
        flag = ', UNSTABLE' if self.unstable else ''
        return (f"{self.label + ': ' if self.label else ''}median {fmt_seconds(self.median)} "
                f"(IQR {fmt_seconds(self.iqr)}, p90 {fmt_seconds(self.p90)}, "
                f"min {fmt_seconds(self.min)}; "
                f"{len(self.samples)} samples x {self.number} calls{flag})")

# %% [markdown]
# Durations print in the unit that keeps three significant figures readable.

# %%
#| export
def fmt_seconds(s: float) -> str:
    "A duration with a unit: `0.00123` -> `'1.23 ms'`."
    for unit, scale in (('s', 1.0), ('ms', 1e-3), ('us', 1e-6)):
        if abs(s) >= scale: return f"{s / scale:.3g} {unit}"
    return f"{s / 1e-9:.3g} ns"

# %%
test_eq(fmt_seconds(0.00123), '1.23 ms')
test_eq(fmt_seconds(2.5), '2.5 s')
test_eq(fmt_seconds(4.2e-7), '420 ns')
m = Measurement([1.0, 2.0, 3.0, 4.0, 100.0], number=10, label='f')
test_eq(m.median, 3.0)
test_eq(m.min, 1.0)
test_eq(m.iqr, 2.0)          # 75th percentile 4, 25th percentile 2
test_close(m.p90, 61.6)      # linear interpolation between 4 and 100
test_eq(m.unstable, True)    # IQR 2 is 67% of the median 3
test_eq(Measurement([1.0, 1.0, 1.01, 1.0]).unstable, False)
print(m)

# %% [markdown]
# ## Measuring one function
#
# `measure` runs `warmup` calls, chooses `number` (calls per sample) unless it is given, then takes
# `repeats` samples. With `number=None`, `number` doubles from 1 until one sample lasts `min_time`
# seconds; the calls made while choosing count as warm-up. It warns when the result is unstable.

# %%
#| export
def _per_call(fn, args, kwargs, number: int) -> float:
    "Seconds per call, averaged over `number` back-to-back calls."
    start = time.perf_counter()
    for _ in range(number): fn(*args, **kwargs)
    return (time.perf_counter() - start) / number

def _check_protocol(op: str, warmup, repeats, number, min_time):
    "Raise a `ValueError` naming `op` and the value when a protocol setting is out of range."
    if not (isinstance(warmup, int) and warmup >= 0):
        raise ValueError(f"{op}: warmup must be an int >= 0, got {warmup!r}")
    if not (isinstance(repeats, int) and repeats >= 1):
        raise ValueError(f"{op}: repeats must be an int >= 1, got {repeats!r}")
    if number is not None and not (isinstance(number, int) and number >= 1):
        raise ValueError(f"{op}: number must be None or an int >= 1, got {number!r}")
    if not min_time >= 0: raise ValueError(f"{op}: min_time must be >= 0 seconds, got {min_time!r}")

def _calibrate(fn, args, kwargs, min_time: float) -> int:
    "Calls per sample: doubles from 1 until a sample lasts at least `min_time` seconds."
    number = 1
    while _per_call(fn, args, kwargs, number) * number < min_time and number < 2**20: number *= 2
    return number

# %%
#| export
def measure(fn,                  # the function to time
            *args,               # positional arguments for `fn`
            warmup: int = 1,     # calls made and discarded first
            repeats: int = 7,    # samples taken
            number: int = None,  # calls per sample; None: chosen so a sample lasts `min_time`
            min_time: float = 0.02,  # seconds a sample should last when `number` is chosen
            label: str = '',
            max_spread: float = 0.1,  # warn when IQR / median exceeds this
            **kwargs) -> Measurement:
    "Time `fn(*args, **kwargs)`: warm up, then `repeats` samples of `number` calls each."
    _check_protocol('measure', warmup, repeats, number, min_time)
    for _ in range(warmup): fn(*args, **kwargs)
    if number is None: number = _calibrate(fn, args, kwargs, min_time)
    samples = [_per_call(fn, args, kwargs, number) for _ in range(repeats)]
    m = Measurement(samples, number, label or getattr(fn, '__name__', ''), max_spread)
    if m.unstable:
        warnings.warn(f"measure: {m}: IQR is {m.spread:.0%} of the median",
                      UnstableMeasurementWarning)
    return m

# %% [markdown]
# The tests count calls rather than time them: a unit test that asserts a duration fails at random
# on a shared machine. With `number` given, `measure` makes exactly `warmup + repeats * number`
# calls.

# %%
calls = []
m = measure(calls.append, 1, warmup=2, repeats=5, number=3)
test_eq(len(calls), 2 + 5 * 3)
test_eq(len(m.samples), 5)
test_eq(m.number, 3)
test_eq(m.label, 'append')
m = measure(lambda: sum(range(100)), repeats=3, min_time=0.001)
assert m.number >= 1 and m.median > 0
test_fail(lambda: measure(print, repeats=0), contains="repeats must be an int >= 1, got 0")
test_fail(lambda: measure(print, warmup=-1), contains="warmup must be an int >= 0, got -1")
test_fail(lambda: measure(print, number=0), contains="number must be None or an int >= 1")

# %% [markdown]
# A function that raises is not timed: the error reaches the caller unchanged.

# %%
def boom(): raise ZeroDivisionError("boom")
test_fail(lambda: measure(boom), contains="boom")

# %% [markdown]
# ## Comparing candidates
#
# `compare` takes a dict of named functions. After warming each up and choosing one `number` per
# candidate, it runs `rounds` rounds; in each round every candidate takes one sample, in turn. The
# `Comparison` it returns holds one `Measurement` per candidate, and `ratio(a, b)` is the median
# over rounds of `a`'s sample divided by `b`'s sample in the same round: a ratio between neighbours
# in time.

# %%
#| export
@dataclass
class Comparison:
    "Measurements of candidates that alternated round by round."
    results: dict  # name -> Measurement

    def __getitem__(self, name) -> Measurement: return self.results[name]

    def ratio(self, a: str, b: str) -> float:
        "Median over rounds of (time of `a`) / (time of `b`) in the same round."
        for n in (a, b):
            if n not in self.results:
                raise KeyError(f"Comparison.ratio: no candidate {n!r}; have {list(self.results)}")
        per_round = np.array(self.results[a].samples) / np.array(self.results[b].samples)
        return float(np.median(per_round))

    def table(self, baseline: str = None) -> str:
        "One line per candidate: median, IQR and the ratio to `baseline` (default: the first)."
        baseline = baseline or next(iter(self.results))
        width = max(map(len, self.results))
        return "\n".join(f"{n:<{width}}  median {fmt_seconds(m.median):>9}  "
                         f"IQR {fmt_seconds(m.iqr):>9}  {self.ratio(n, baseline):6.2f}x {baseline}"
                         + ('  UNSTABLE' if m.unstable else '') for n, m in self.results.items())

    def __repr__(self): return self.table()

# %%
#| export
def compare(candidates: dict,        # name -> function of no arguments
            rounds: int = 7,         # samples per candidate, one per round
            warmup: int = 1,         # calls of each candidate discarded first
            number: int = None,      # calls per sample for every candidate; None: chosen for each
            min_time: float = 0.02,  # seconds a sample should last when `number` is chosen
            max_spread: float = 0.1,
           ) -> Comparison:
    "Time the candidates alternately, round by round, so their ratios come from the same moments."
    _check_protocol('compare', warmup, rounds, number, min_time)
    if not candidates: raise ValueError("compare: no candidates")
    for name, fn in candidates.items():
        if not callable(fn):
            raise TypeError(f"compare: candidate {name!r} is a {type(fn).__name__}, not a function")
        for _ in range(warmup): fn()
    numbers = {n: number or _calibrate(fn, (), {}, min_time) for n, fn in candidates.items()}
    samples = {n: [] for n in candidates}
    for _ in range(rounds):
        for n, fn in candidates.items(): samples[n].append(_per_call(fn, (), {}, numbers[n]))
    out = Comparison({n: Measurement(s, numbers[n], n, max_spread) for n, s in samples.items()})
    shaky = [n for n, m in out.results.items() if m.unstable]
    if shaky:
        warnings.warn(f"compare: unstable measurements for {shaky}", UnstableMeasurementWarning)
    return out

# %%
calls = {'a': 0, 'b': 0}
def bump(k): calls[k] += 1
c = compare({'a': lambda: bump('a'), 'b': lambda: bump('b')}, rounds=4, number=2, warmup=1)
test_eq(calls, {'a': 1 + 4 * 2, 'b': 1 + 4 * 2})
test_eq(len(c['a'].samples), 4)
fake = Comparison({'x': Measurement([2., 4., 6.]), 'y': Measurement([1., 1., 2.])})
test_eq(fake.ratio('x', 'y'), 3.0)  # per-round ratios 2, 4, 3: median 3
test_eq(fake.ratio('y', 'y'), 1.0)
test_fail(lambda: fake.ratio('x', 'z'), contains="no candidate 'z'")
test_fail(lambda: compare({}), contains="no candidates")
test_fail(lambda: compare({'a': 3}), contains="candidate 'a' is a int")
print(fake.table())

# %% [markdown]
# A measured comparison, to show the output: summing a float32 array along its contiguous axis and
# along its strided axis.

# %%
big = np.random.default_rng(0).standard_normal((1024, 1024), dtype=np.float32)
c = compare({'rows': lambda: big.sum(axis=1), 'cols': lambda: big.sum(axis=0)}, rounds=5)
print(c)

# %% [markdown]
# ## Pinning BLAS threads
#
# `blas_threads(n)` limits the BLAS library NumPy uses to `n` threads inside a `with` block and
# restores the previous limit afterwards, through threadpoolctl. `machine_info()` returns what a
# result file or a printed figure should carry: the processor, Python, NumPy and BLAS versions, and
# the BLAS thread count in force.

# %%
#| export
@contextlib.contextmanager
def blas_threads(n: int):
    "Context manager: NumPy's BLAS uses at most `n` threads inside the block."
    if not (isinstance(n, int) and n >= 1):
        raise ValueError(f"blas_threads: n must be an int >= 1, got {n!r}")
    from threadpoolctl import threadpool_limits
    with threadpool_limits(limits=n, user_api='blas'): yield

def machine_info() -> dict:
    "Processor, core count, Python, NumPy and BLAS (library, version, threads) of this process."
    from threadpoolctl import threadpool_info
    blas = [p for p in threadpool_info() if p.get('user_api') == 'blas']
    return {'machine': platform.machine(), 'processor': platform.processor() or platform.machine(),
            'cores': os.cpu_count(), 'python': platform.python_version(), 'numpy': np.__version__,
            'blas': [f"{p['internal_api']} {p['version']}" for p in blas],
            'blas_threads': max((p['num_threads'] for p in blas), default=None)}

# %%
with blas_threads(1): inside = machine_info()['blas_threads']
test_eq(inside, 1)
test_fail(lambda: blas_threads(0).__enter__(), contains="n must be an int >= 1, got 0")
print(inside, machine_info())

# %% [markdown]
# ## Timer
#
# `Timer` keeps protocol settings for repeated use, as the profiling module's `Timer` does, and also
# times a block of code once with `with Timer() as t: ...`, leaving the seconds in `t.elapsed`.

# %%
#| export
class Timer:
    "Time functions with one set of protocol settings, or a block once as a context manager."
    def __init__(self, warmup=1, repeats=7, number=None, min_time=0.02, max_spread=0.1):
        _check_protocol('Timer', warmup, repeats, number, min_time)
        self.kw = dict(warmup=warmup, repeats=repeats, number=number, min_time=min_time,
                       max_spread=max_spread)
        self.elapsed = None

    def measure(self, fn, *args, **kwargs) -> Measurement:
        "`measure(fn, *args, **kwargs)` with this timer's settings."
        return measure(fn, *args, **self.kw, **kwargs)

    def __enter__(self):
        self._start = time.perf_counter()
        return self

    def __exit__(self, *exc): self.elapsed = time.perf_counter() - self._start

# %%
with Timer() as t: sum(range(1000))
assert t.elapsed > 0
calls = []
test_eq(Timer(warmup=0, repeats=2, number=4).measure(calls.append, 0).number, 4)
test_eq(len(calls), 8)
test_fail(lambda: Timer(repeats=0), contains="Timer: repeats must be an int >= 1")
