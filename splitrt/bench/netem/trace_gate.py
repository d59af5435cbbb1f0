"""A mahimahi link in real time: when bytes that reach the uplink now may leave it.

A mahimahi uplink trace lists the milliseconds at which one 1500-byte packet may leave (`UplinkTrace`). A
queued byte leaves at the first opportunity after it arrived that still has room; an opportunity carries up
to `PAYLOAD_BYTES` of the TCP stream, shared by whatever is queued at its instant, and one that finds nothing
queued is lost. On an idle link this is the rule the simulator's `UplinkTrace.transfer_end_ms` applies, so
the relay that books its bytes here delivers a request when the simulator says it arrives, also on cellular
traces whose opportunities come in clumps (a rate re-set every 100 ms smooths the clumps away and lets small
requests through sooner). Behind a backlog the two differ slightly: the simulator starts the next transfer
after the last opportunity of the one before, losing that packet's leftover room and the rest of its
millisecond's clump, which the gate (like mahimahi) still uses.

`TraceGate` is pure: it books bytes against the trace and returns times; the caller waits. The clock is
injected (seconds, monotonic).
"""
from __future__ import annotations

import threading
import time
from typing import Callable

from splitrt.policies.trace import PAYLOAD_BYTES, UplinkTrace


class TraceGate:
    """Books bytes on the opportunities of `trace`, whose time 0 is `start()`. Until then bytes pass at once
    (no rate limit), so that a connection can be made, warmed up and its fixed costs measured first."""

    def __init__(self, trace: UplinkTrace, clock: Callable[[], float] = time.monotonic) -> None:
        self.trace = trace
        self.clock = clock
        self._lock = threading.Lock()
        self.start_s: float | None = None
        self._index = 0  # the last opportunity booked (1-based; 0: none yet)
        self._room_bytes = 0  # what is left of it

    def start(self) -> float:
        """Trace time 0 is now; returns it (monotonic seconds)."""
        with self._lock:
            self.start_s = self.clock()
            self._index, self._room_bytes = 0, 0
            return self.start_s

    def book(self, size_bytes: int, arrival_s: float | None = None) -> float:
        """Queue `size_bytes` of payload that reached the link at `arrival_s` (default: now) behind everything
        booked before; returns the monotonic time at which its last byte leaves."""
        with self._lock:
            arrival_s = self.clock() if arrival_s is None else arrival_s
            if size_bytes <= 0 or self.start_s is None:
                return arrival_s
            arrival_ms = (arrival_s - self.start_s) * 1000.0
            if self._index == 0 or self.trace.opportunity_ms(self._index) <= arrival_ms:
                # the queue ran empty before these bytes came: the first opportunity after their arrival
                self._index = self.trace.opportunities_until(arrival_ms)
                self._room_bytes = 0
            remaining = size_bytes - self._room_bytes
            if remaining <= 0:
                self._room_bytes = -remaining
            else:
                packets = -(-remaining // PAYLOAD_BYTES)
                self._index += packets
                self._room_bytes = packets * PAYLOAD_BYTES - remaining
            return self.start_s + self.trace.opportunity_ms(self._index) / 1000.0
