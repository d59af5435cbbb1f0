"""How much other processes on this machine slow the edge's inference now, read from psutil.

The device's times (`DeviceSlowdown`) follow observed runs, which react only after a few frames ran slow. The
CPU's other users are visible before that: between two readings, the busy CPU time of the cores this process may
use, less this process's own, is how many of them the others kept busy (`others_cores`). `contention` turns that
into how much longer a run of `threads` inference threads takes, by how a scheduler places a waking thread: on a
core the others leave free, while there is one; beyond that, sharing a core with them. So on 2 cores one busy
process beside a one-thread run costs nothing and two double it (measured with `splitrt bench device-load`),
where the load share alone (1 / (1 - load)) would say 2x and 10x. With more threads than that the model fits
worse: it takes every thread to be as slow as its slowest, and a run that gains little from its second thread
(Lite0 on 2 cores) loses less than that; so the daemon applies it by itself to one-thread CPU sessions only
(`applies`). `CpuContention.between_ms` tells what a past frame ran under: the daemon nets its start-up calibration
with it, so that a device calibrated beside a busy process is still measured as it runs unloaded.

The others' time is what they got, not what they wanted: more runnable processes than cores read as all cores
busy, so the contention is capped at 2x and the observed runs learn the rest. A device whose own speed is
emulated (a CPU quota, dilation) does not follow this machine's load, nor does a run on a GPU.
"""
from __future__ import annotations

import collections
import logging
import os
import threading
import time
from dataclasses import dataclass
from typing import Any, Callable, Sequence

import psutil

from splitrt.clock import wall_clock_ms

log = logging.getLogger(__name__)

MAX_CONTENTION = 2.0  # what `contention` can tell: a thread sharing its core with others that never wait
NOISE_CORES = 0.15  # less excess than this is the machine's own noise (daemons, ticks), not a load to plan for


@dataclass(frozen=True)
class CpuReading:
    """Cumulative CPU seconds: the busy time of the cores read, this process's own, and the wall clock."""

    busy_s: float
    own_s: float
    wall_s: float


def usable_cpus() -> list[int]:
    """The CPUs this process may run on (its affinity: taskset, systemd CPUAffinity=, a container's cpuset)."""
    if hasattr(os, "sched_getaffinity"):
        return sorted(os.sched_getaffinity(0))
    return list(range(os.cpu_count() or 1))


def _busy_s(times: Any) -> float:  # one of psutil.cpu_times(percpu=True)
    # guest time is already in user and nice (Linux), iowait is idle
    idle_s = times.idle + getattr(times, "iowait", 0.0)
    return sum(times) - idle_s - getattr(times, "guest", 0.0) - getattr(times, "guest_nice", 0.0)


def read_cpu(process: psutil.Process, cpus: Sequence[int]) -> CpuReading:
    """Now, from psutil (on Linux, /proc/stat and /proc/self/stat: 10 ms ticks)."""
    per_cpu = psutil.cpu_times(percpu=True)
    busy_s = sum(_busy_s(per_cpu[i]) for i in cpus if i < len(per_cpu))
    own = process.cpu_times()
    return CpuReading(busy_s=busy_s, own_s=own.user + own.system, wall_s=time.monotonic())


def others_cores(before: CpuReading, after: CpuReading) -> float:
    """How many cores processes other than this one kept busy between two readings, on average."""
    wall_s = after.wall_s - before.wall_s
    if wall_s <= 0.0:
        return 0.0
    return max((after.busy_s - before.busy_s) - (after.own_s - before.own_s), 0.0) / wall_s


def contention(others: float, cores: int, threads: int = 1) -> float:
    """How much longer a run of `threads` threads takes beside `others` busy cores of `cores` (1: not at all):
    none while `threads` cores are left free (give or take `NOISE_CORES`), then up to 2x as its last thread
    shares a core with a busy one."""
    excess = others - (cores - min(max(threads, 1), cores))
    if excess < NOISE_CORES:
        return 1.0
    return 1.0 + min(excess, MAX_CONTENTION - 1.0)


def applies(setting: str, tracks_device: bool, threads: int, emulated: bool,
            providers: Sequence[str]) -> tuple[bool, str]:
    """Whether the daemon reads the CPU for its device estimate (`[policy] cpu_load_correction`), and why."""
    if setting == "on":
        return True, "cpu_load_correction = \"on\""
    if setting == "off":
        return False, "cpu_load_correction = \"off\""
    if not tracks_device:
        return False, "the policy does not follow the device's speed (deadline-tracking does)"
    if emulated:
        return False, "the device is emulated: its speed does not follow this machine's load"
    if any(p != "CPUExecutionProvider" for p in providers):
        return False, f"inference may run on {providers[0]}, not on the CPU"
    if threads != 1:
        return False, f"measured for one inference thread only (this runs {threads}); \"on\" applies it anyway"
    return True, "one inference thread on the CPU"


class CpuContention:
    """`contention` now: the others' cores over the time since a reading at least `interval_ms` old (ticks are
    10 ms: a shorter window is mostly rounding), 1 until there is one. Readings come from `sample()` and, once
    `start()`ed, from a thread every `interval_ms`, so that the window is the last 100-200 ms however seldom
    frames come; the last `KEPT_READINGS` of them also tell what a past frame ran under (`between_ms`). A reading
    that fails keeps the last value (logged once)."""

    KEPT_READINGS = 512  # 51 s of readings at 100 ms: a calibration's frames of one action, however many

    def __init__(self, threads: int = 1, cpus: Sequence[int] | None = None, interval_ms: float = 100.0,
                 read: Callable[[], CpuReading] | None = None) -> None:
        self.threads = threads
        self.cpus = list(cpus) if cpus is not None else usable_cpus()
        self.cores = len(self.cpus)
        self.interval_s = interval_ms / 1000.0
        process = psutil.Process()
        self._read = read or (lambda: read_cpu(process, self.cpus))
        self._readings: collections.deque[CpuReading] = collections.deque(maxlen=self.KEPT_READINGS)
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._ticker: threading.Thread | None = None
        self._failed = False
        self.others = 0.0
        self.value = 1.0
        self._record()

    def start(self) -> "CpuContention":
        if self._ticker is None:
            self._ticker = threading.Thread(target=self._tick, name="cpu-load", daemon=True)
            self._ticker.start()
        return self

    def close(self) -> None:
        self._stop.set()
        if self._ticker is not None:
            self._ticker.join(timeout=2.0)
            self._ticker = None

    def sample(self) -> float:
        now = self._record()
        if now is None:
            return self.value
        with self._lock:
            base = next((r for r in reversed(self._readings) if now.wall_s - r.wall_s >= self.interval_s), None)
        if base is not None:
            self.others = others_cores(base, now)
            self.value = contention(self.others, self.cores, self.threads)
        return self.value

    def between_ms(self, start_ms: float, end_ms: float, clock_ms: Callable[[], float] = wall_clock_ms) -> float:
        """`contention` while a past frame ran, from `start_ms` to `end_ms` on `clock_ms`'s time base (a frame's
        capture time and end): over the readings just before and just after it (a window of the frame and up to one
        interval either side); 1 where the readings kept do not reach back to it."""
        now = self._record()
        shift_s = (now.wall_s if now is not None else time.monotonic()) - clock_ms() / 1000.0
        start_s, end_s = start_ms / 1000.0 + shift_s, end_ms / 1000.0 + shift_s
        with self._lock:
            before = next((r for r in reversed(self._readings) if r.wall_s <= start_s), None)
            after = next((r for r in self._readings if r.wall_s >= end_s), None)
        if before is None or after is None:
            return 1.0
        return contention(others_cores(before, after), self.cores, self.threads)

    def _tick(self) -> None:
        while not self._stop.wait(self.interval_s):
            self._record()

    def _record(self) -> CpuReading | None:
        try:
            reading = self._read()
        except (psutil.Error, OSError) as exc:
            if not self._failed:
                log.warning("cannot read the CPU's load (%s): the device estimate keeps the last reading", exc)
                self._failed = True
            return None
        with self._lock:
            self._readings.append(reading)
        return reading
