"""Make a link's rate follow a mahimahi uplink trace: every `step_ms`, set the rate to the trace's
capacity over that step. The schedule is a pure function of the trace; the thread only keeps time and
calls one `set_rate_bps` callable (tbf on a veth, or the relay's token buckets)."""
from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from typing import Callable

from splitrt.policies.trace import UplinkTrace

DEFAULT_STEP_MS = 100


def step_rate_bps(trace: UplinkTrace, step_index: int, step_ms: int = DEFAULT_STEP_MS) -> float:
    """The trace's capacity over step `step_index` ([i*step_ms, (i+1)*step_ms) of the looped trace)."""
    start_ms = step_index * step_ms
    return trace.throughput_bps(start_ms, start_ms + step_ms)


def rate_schedule(trace: UplinkTrace, duration_ms: int, step_ms: int = DEFAULT_STEP_MS) -> list[tuple[int, float]]:
    """(step start ms, rate bit/s) for every step in [0, duration_ms)."""
    return [(i * step_ms, step_rate_bps(trace, i, step_ms)) for i in range(-(-duration_ms // step_ms))]


@dataclass
class TraceFollower:
    """A thread that applies `rate_schedule` in real time from `start()` until `stop()`.

    `clock` (seconds, monotonic) is injectable; `applied` records (seconds since start, rate) of every
    rate actually set (a step whose rate equals the previous one is not re-set).
    """

    trace: UplinkTrace
    set_rate_bps: Callable[[float], None]
    step_ms: int = DEFAULT_STEP_MS
    clock: Callable[[], float] = time.monotonic
    applied: list[tuple[float, float]] = field(default_factory=list)

    def __post_init__(self) -> None:
        if self.step_ms <= 0:
            raise ValueError(f"step_ms must be positive, got {self.step_ms}")
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.error: BaseException | None = None
        self.start_s: float | None = None

    def start(self) -> "TraceFollower":
        if self._thread is not None:
            raise RuntimeError("follower already started")
        self.start_s = self.clock()
        self._apply(0)  # the first step is in place before start() returns
        self._thread = threading.Thread(target=self._loop, name=f"trace-follower-{self.trace.name}", daemon=True)
        self._thread.start()
        return self

    def _apply(self, index: int) -> None:
        rate = step_rate_bps(self.trace, index, self.step_ms)
        if not self.applied or self.applied[-1][1] != rate:
            self.set_rate_bps(rate)
            assert self.start_s is not None
            self.applied.append((self.clock() - self.start_s, rate))

    def _loop(self) -> None:
        assert self.start_s is not None
        index = 0
        try:
            while True:
                index += 1
                due_s = self.start_s + index * self.step_ms / 1000.0
                if self._stop.wait(max(0.0, due_s - self.clock())):
                    return
                # after a stall (a slow `tc`), jump to the step the clock is in rather than replaying
                index = max(index, int((self.clock() - self.start_s) * 1000 // self.step_ms))
                self._apply(index)
        except BaseException as exc:  # reported by stop(); the link keeps its last rate
            self.error = exc

    def stop(self, timeout_s: float = 5.0) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout_s)
            if self._thread.is_alive():
                raise RuntimeError("trace follower did not stop")
        if self.error is not None:
            raise RuntimeError(f"trace follower failed: {self.error}") from self.error

    def __enter__(self) -> "TraceFollower":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
