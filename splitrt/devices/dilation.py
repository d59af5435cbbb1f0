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
"""
from __future__ import annotations

import contextlib
import time
from dataclasses import dataclass, field
from typing import Callable, Iterator, Protocol

from splitrt.devices.profiles import DeviceProfile
from splitrt.devices.timing import perf_ms, thread_cpu_ms

EMULATIONS = ("quota", "dilation")  # how a benchmark makes this machine as slow as a device profile


class DeviceSpeed(Protocol):
    def stage(self) -> contextlib.AbstractContextManager[None]: ...


class NativeSpeed:
    """This machine as it is: stages are not stretched."""

    @contextlib.contextmanager
    def stage(self) -> Iterator[None]:
        yield


@dataclass
class TimeDilation:
    """Stages take `1 / cpu_share` times the CPU time they spent (0.13: a Nano-class device, 7.7x slower)."""

    cpu_share: float
    cpu_clock_ms: Callable[[], float] = thread_cpu_ms
    wall_clock_ms: Callable[[], float] = perf_ms
    sleep_s: Callable[[float], None] = time.sleep
    slept_ms: float = field(default=0.0, init=False)  # total added, for reports

    def __post_init__(self) -> None:
        if not 0.0 < self.cpu_share <= 1.0:
            raise ValueError(f"cpu_share must be in (0, 1], got {self.cpu_share}")

    @contextlib.contextmanager
    def stage(self) -> Iterator[None]:
        wall_start, cpu_start = self.wall_clock_ms(), self.cpu_clock_ms()
        try:
            yield
        finally:
            target_ms = wall_start + (self.cpu_clock_ms() - cpu_start) / self.cpu_share
            wait_ms = target_ms - self.wall_clock_ms()
            if wait_ms > 0.0:
                self.slept_ms += wait_ms
                self.sleep_s(wait_ms / 1000.0)


def device_speed(emulation: str, profile: DeviceProfile) -> DeviceSpeed:
    """What a runtime uses to stretch its stages: `TimeDilation` at the profile's dilation share for emulation
    "dilation"; nothing for "quota" (the cgroup slows the process down instead)."""
    if emulation not in EMULATIONS:
        raise ValueError(f"unknown device emulation {emulation!r}: use {' or '.join(EMULATIONS)}")
    return TimeDilation(profile.dilation_share) if emulation == "dilation" else NativeSpeed()
