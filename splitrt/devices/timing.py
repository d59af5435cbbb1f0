"""Timing of repeated calls: warm-up, then repeats; percentiles in milliseconds. The clock is injectable."""
from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Callable

import numpy as np


def perf_ms() -> float:
    return time.perf_counter() * 1000.0


def thread_cpu_ms() -> float:
    """CPU time of the calling thread: what a call cost, whatever the quota or other processes did."""
    return time.thread_time() * 1000.0


@dataclass(frozen=True)
class Timing:
    p50_ms: float
    p95_ms: float
    samples_ms: tuple[float, ...]
    cpu_p50_ms: float | None = None  # median CPU time of the calling thread per call


def summarize_ms(samples_ms: list[float], cpu_samples_ms: list[float] | None = None) -> Timing:
    if not samples_ms:
        raise ValueError("no samples to summarize")
    array = np.asarray(samples_ms, dtype=np.float64)
    cpu = None if not cpu_samples_ms else float(np.median(cpu_samples_ms))
    return Timing(float(np.percentile(array, 50)), float(np.percentile(array, 95)), tuple(float(s) for s in array), cpu)


def time_calls_ms(
    fn: Callable[[], object],
    repeats: int,
    warmup: int = 3,
    clock_ms: Callable[[], float] = perf_ms,
    min_sample_ms: float = 0.0,
    cpu_clock_ms: Callable[[], float] = thread_cpu_ms,
) -> Timing:
    """Run fn `warmup` times untimed, then take `repeats` samples.

    A sample is one call, or with `min_sample_ms` as many back-to-back calls as fill that much wall time,
    averaged. Under a CPU quota this matters: a call shorter than the quota's budget per period would
    otherwise finish at full speed most of the time and wait out the throttle only now and then, so its
    median would say the device is as fast as this machine. Averaging over several periods gives the
    sustained latency, which is what a device that is slow all the time shows.
    """
    if repeats < 1:
        raise ValueError(f"repeats must be at least 1, got {repeats}")
    for _ in range(warmup):
        fn()
    samples: list[float] = []
    cpu_samples: list[float] = []
    for _ in range(repeats):
        start, cpu_start = clock_ms(), cpu_clock_ms()
        calls = 0
        while True:
            fn()
            calls += 1
            elapsed = clock_ms() - start
            if elapsed >= min_sample_ms:
                break
        samples.append(elapsed / calls)
        cpu_samples.append((cpu_clock_ms() - cpu_start) / calls)
    return summarize_ms(samples, cpu_samples)


def time_interleaved_ms(
    calls: dict[str, Callable[[], object]],
    repeats: int,
    warmup: int = 3,
    clock_ms: Callable[[], float] = perf_ms,
    min_sample_ms: float = 0.0,
    cpu_clock_ms: Callable[[], float] = thread_cpu_ms,
    on_round: Callable[[int], None] | None = None,
) -> dict[str, Timing]:
    """Like `time_calls_ms` for several calls, taking their samples round-robin: a burst of load from
    other processes then lands on a few samples of every call instead of on all samples of one call, so
    each median stays put and the calls stay comparable with each other."""
    if repeats < 1:
        raise ValueError(f"repeats must be at least 1, got {repeats}")
    for fn in calls.values():
        for _ in range(warmup):
            fn()
    samples: dict[str, list[float]] = {name: [] for name in calls}
    cpu_samples: dict[str, list[float]] = {name: [] for name in calls}
    for round_index in range(repeats):
        for name, fn in calls.items():
            start, cpu_start = clock_ms(), cpu_clock_ms()
            count = 0
            while True:
                fn()
                count += 1
                elapsed = clock_ms() - start
                if elapsed >= min_sample_ms:
                    break
            samples[name].append(elapsed / count)
            cpu_samples[name].append((cpu_clock_ms() - cpu_start) / count)
        if on_round is not None:
            on_round(round_index)
    return {name: summarize_ms(samples[name], cpu_samples[name]) for name in calls}
