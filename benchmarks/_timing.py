"""The benchmarks' one timing protocol: warm up, then alternate the candidates round by round and take medians.

Each benchmark sets its BLAS thread count in the environment before NumPy is imported; this module imports NumPy,
so import it after doing that.
"""
import time

import numpy as np


def timed(fn, number: int) -> float:
    "Mean seconds per call over `number` calls of `fn`."
    start = time.perf_counter()
    for _ in range(number): fn()
    return (time.perf_counter() - start) / number


def alternate(candidates: dict, number: int, rounds: int) -> dict:
    "Median over `rounds` of each candidate's mean per-call time, the candidates alternating within every round."
    for fn in candidates.values(): timed(fn, max(1, number // 10))  # warm-up
    samples = {name: [] for name in candidates}
    for _ in range(rounds):
        for name, fn in candidates.items(): samples[name].append(timed(fn, number))
    return {name: float(np.median(s)) for name, s in samples.items()}
