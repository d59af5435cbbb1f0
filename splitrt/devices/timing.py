"""Timing of repeated calls: warm-up, then repeats; percentiles in milliseconds. The clock is injectable."""
from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Callable

import numpy as np


def perf_ms() -> float:
    return time.perf_counter() * 1000.0


@dataclass(frozen=True)
class Timing:
    p50_ms: float
    p95_ms: float
    samples_ms: tuple[float, ...]


def summarize_ms(samples_ms: list[float]) -> Timing:
    if not samples_ms:
        raise ValueError("no samples to summarize")
    array = np.asarray(samples_ms, dtype=np.float64)
    return Timing(float(np.percentile(array, 50)), float(np.percentile(array, 95)), tuple(float(s) for s in array))


def time_calls_ms(
    fn: Callable[[], object], repeats: int, warmup: int = 3, clock_ms: Callable[[], float] = perf_ms
) -> Timing:
    """Run fn `warmup` times untimed, then `repeats` times timed."""
    if repeats < 1:
        raise ValueError(f"repeats must be at least 1, got {repeats}")
    for _ in range(warmup):
        fn()
    samples: list[float] = []
    for _ in range(repeats):
        start = clock_ms()
        fn()
        samples.append(clock_ms() - start)
    return summarize_ms(samples)
