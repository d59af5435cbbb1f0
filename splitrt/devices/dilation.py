"""Device emulation by time dilation: each computation takes as long as it would on a slower device.

A CPU quota (`profiles.cpu_limit`) caps how much CPU a process gets per period, which is the device's
throughput but not its latency: on a kernel whose scheduler tick (4 ms here) is longer than the quota of a
short period (1.3 ms of 10 ms for a Jetson Nano's share), a job overruns the quota by up to a tick and then
waits several periods, so the same 3.5 ms exit took 4.8, 17, 60 or 75 ms by the phase at which it started.
A real device runs it in the same time every frame. Dilation does: a stage runs at this machine's speed, then
the thread sleeps until `cpu_ms / cpu_share` after the stage began (`cpu_ms`: the CPU time the calling thread
spent in it, so other processes on this machine do not count; a stage the host itself delayed past that
target ends when it ends).

Only the stages that a runtime wraps in `stage()` are dilated (crop, head, encode, merge in `EdgeRuntime`);
waiting on the network is not. Pure apart from the injected clocks and sleep.

Emulation "steady" also takes out this machine's own noise. The CPU time of a model's run is not steady on a
shared host: over five minutes the full model's median per 30 s window moved between 9.7 and 12.3 ms while its
minimum held at 9.35-9.55 ms, because other work on the same cores (caches, memory bandwidth, the sibling
hyper-thread) slows the thread without descheduling it. A real board's run of a fixed-shape model takes the same
time every frame. So a stage that names its model (`stage(key)`) lasts the least CPU time of that model's last
`steady_runs` runs / share; stages whose work depends on the input (crop, encode, merge) stay as measured.
"""
from __future__ import annotations

import collections
import contextlib
import threading
import time
from dataclasses import dataclass, field
from typing import Callable, Iterator, Protocol

from splitrt.devices.profiles import DeviceProfile
from splitrt.devices.timing import perf_ms, thread_cpu_ms

# How a benchmark makes this machine as slow as a device profile: its process under the CPU quota, or its stages
# dilated (to the profile's dilation share), "steady" also without the host's noise in its models' runs.
EMULATIONS = ("quota", "dilation", "steady")
STEADY_RUNS = 50  # a model's device time under "steady": the least CPU time of its last this many runs / share
# Runs of each action before a "steady" device is measured or used: enough that one of them ran clear of the
# host's other work (in every 30 s window of the measurement above, at least one run in ten was within 3% of the
# least), so that the first measured frames are not slower than the later ones.
STEADY_WARMUP_RUNS = 20


def dilates(emulation: str) -> bool:
    """Whether `emulation` stretches the runtime's stages (rather than putting the process under a quota)."""
    return emulation in ("dilation", "steady")


class DeviceSpeed(Protocol):
    def stage(self, model: str | None = None,
              stop: threading.Event | None = None) -> contextlib.AbstractContextManager[None]: ...


class NativeSpeed:
    """This machine as it is: stages are not stretched."""

    @contextlib.contextmanager
    def stage(self, model: str | None = None, stop: threading.Event | None = None) -> Iterator[None]:
        yield


@dataclass
class TimeDilation:
    """Stages take `1 / cpu_share` times the CPU time they spent (0.13: a Nano-class device, 7.7x slower); with
    `steady_runs`, a stage that runs `model` takes the least CPU time of that model's last `steady_runs` runs."""

    cpu_share: float
    steady_runs: int = 0
    cpu_clock_ms: Callable[[], float] = thread_cpu_ms
    wall_clock_ms: Callable[[], float] = perf_ms
    sleep_s: Callable[[float], None] = time.sleep
    slept_ms: float = field(default=0.0, init=False)  # total added, for reports
    _runs_ms: dict[str, collections.deque[float]] = field(default_factory=dict, init=False)

    def __post_init__(self) -> None:
        if not 0.0 < self.cpu_share <= 1.0:
            raise ValueError(f"cpu_share must be in (0, 1], got {self.cpu_share}")
        if self.steady_runs < 0:
            raise ValueError(f"steady_runs must be >= 0, got {self.steady_runs}")

    @contextlib.contextmanager
    def stage(self, model: str | None = None, stop: threading.Event | None = None) -> Iterator[None]:
        """Stretch the enclosed work; `stop` set (a hedge whose reply came) ends the stage's stretch at once, and a
        run it stopped part-way is not taken as one of the model's runs."""
        wall_start, cpu_start = self.wall_clock_ms(), self.cpu_clock_ms()
        try:
            yield
        finally:
            cpu_ms = self.cpu_clock_ms() - cpu_start
            stopped = stop is not None and stop.is_set()
            if model is not None and self.steady_runs > 0 and not stopped:
                runs = self._runs_ms.setdefault(model, collections.deque(maxlen=self.steady_runs))
                runs.append(cpu_ms)
                cpu_ms = min(runs)
            wait_ms = wall_start + cpu_ms / self.cpu_share - self.wall_clock_ms()
            if wait_ms > 0.0 and not stopped:
                if stop is None:
                    self.slept_ms += wait_ms
                    self.sleep_s(wait_ms / 1000.0)
                else:  # the device stops computing when told to, part-way through the stretch
                    before_ms = self.wall_clock_ms()
                    stop.wait(wait_ms / 1000.0)
                    self.slept_ms += max(0.0, self.wall_clock_ms() - before_ms)


def warmup_runs(speed: DeviceSpeed) -> int:
    """How many times to run each action before measuring or using a device that runs at `speed`."""
    return STEADY_WARMUP_RUNS if isinstance(speed, TimeDilation) and speed.steady_runs > 0 else 1


def device_speed(emulation: str, profile: DeviceProfile) -> DeviceSpeed:
    """What a runtime uses to stretch its stages: `TimeDilation` at the profile's dilation share for emulation
    "dilation" ("steady": over `STEADY_RUNS`); nothing for "quota" (the cgroup slows the process down instead)."""
    if emulation not in EMULATIONS:
        raise ValueError(f"unknown device emulation {emulation!r}: use {', '.join(EMULATIONS)}")
    if not dilates(emulation):
        return NativeSpeed()
    return TimeDilation(profile.dilation_share, STEADY_RUNS if emulation == "steady" else 0)
