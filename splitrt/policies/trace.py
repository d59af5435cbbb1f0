"""Mahimahi uplink traces: each line is a millisecond at which one 1500-byte packet may leave.

A timestamp repeats when several packets may leave in the same millisecond; the trace loops at its end.
`UplinkTrace` answers when a transfer that starts at a given time finishes, which is all the simulator
and the oracle policy need.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

PACKET_BYTES = 1500
# What one opportunity carries of a TCP byte stream: a 1500-byte IP packet holds 1448 bytes of payload (20 IP,
# 20 TCP and 12 bytes of timestamp option). Transfers (a request's bytes) are counted in payload.
PAYLOAD_BYTES = 1448


@dataclass(frozen=True)
class UplinkTrace:
    name: str
    opportunities_ms: np.ndarray  # sorted delivery opportunities within one period, int64 ms
    period_ms: int

    @classmethod
    def load(cls, path: str | Path) -> "UplinkTrace":
        path = Path(path)
        try:
            values = np.loadtxt(path, dtype=np.int64, ndmin=1)
        except (OSError, ValueError) as exc:
            raise ValueError(f"{path}: not a mahimahi trace (one integer millisecond per line): {exc}") from exc
        return cls.from_opportunities(path.name, values)

    @classmethod
    def from_opportunities(cls, name: str, opportunities_ms: np.ndarray | list[int]) -> "UplinkTrace":
        values = np.sort(np.asarray(opportunities_ms, dtype=np.int64))
        if values.size == 0 or values[0] < 0:
            raise ValueError(f"trace {name}: needs at least one non-negative timestamp")
        return cls(name=name, opportunities_ms=values, period_ms=max(int(values[-1]), 1))

    def scaled(self, scale: float) -> "UplinkTrace":
        """This trace with `scale` times its capacity (a counterfactual link): opportunity i carries
        floor((i+1)K) - floor(iK) packets, so an integer K > 1 gives every opportunity K packets, and K < 1 keeps an
        evenly spread K of them (a slower link with the same clumps and gaps). The period, and so the length, stays."""
        if not scale > 0.0:
            raise ValueError(f"an uplink scale is a positive factor, not {scale!r}")
        if scale == 1.0:
            return self
        index = np.arange(self.opportunities_ms.size + 1, dtype=np.float64)
        packets = np.diff(np.floor(index * scale + 1e-9)).astype(np.int64)
        kept = np.repeat(self.opportunities_ms, packets)
        if kept.size == 0:
            raise ValueError(f"trace {self.name}: scaled by {scale} it has no delivery opportunity left")
        return UplinkTrace(self.name, kept, self.period_ms)

    @classmethod
    def constant(cls, name: str, rate_bps: float, period_ms: int = 1000) -> "UplinkTrace":
        """A synthetic trace with a constant rate (for tests and calibration)."""
        packets = max(1, round(rate_bps * period_ms / 1000 / (PACKET_BYTES * 8)))
        times = np.floor(np.arange(1, packets + 1) * period_ms / packets).astype(np.int64)
        return cls(name=name, opportunities_ms=times, period_ms=period_ms)

    @property
    def duration_s(self) -> float:
        return self.period_ms / 1000.0

    @property
    def mean_bps(self) -> float:
        return self.opportunities_ms.size * PACKET_BYTES * 8 / (self.period_ms / 1000.0)

    def opportunities_until(self, t_ms: float) -> int:
        """Opportunities in [0, t_ms] of the looped trace (timestamp 0 never counts: mahimahi starts at 1)."""
        if t_ms < 0:
            return 0
        loops, rest = divmod(t_ms, self.period_ms)
        return int(loops) * self.opportunities_ms.size + int(np.searchsorted(self.opportunities_ms, rest, "right"))

    def opportunity_ms(self, index: int) -> float:
        """Time of the index-th opportunity (1-based) of the looped trace."""
        loops, position = divmod(index - 1, self.opportunities_ms.size)
        return float(loops * self.period_ms + self.opportunities_ms[position])

    def transfer_end_ms(self, start_ms: float, size_bytes: int) -> float:
        """When the last packet of `size_bytes` (TCP payload) sent at `start_ms` leaves (opportunities after
        `start_ms`, `PAYLOAD_BYTES` each)."""
        if size_bytes <= 0:
            return start_ms
        packets = math.ceil(size_bytes / PAYLOAD_BYTES)
        return self.opportunity_ms(self.opportunities_until(start_ms) + packets)

    def transfer_ends_ms(self, starts_ms: np.ndarray, size_bytes: int) -> np.ndarray:
        """`transfer_end_ms` for many start times at once."""
        starts_ms = np.asarray(starts_ms, dtype=np.float64)
        if size_bytes <= 0:
            return starts_ms.copy()
        count = self.opportunities_ms.size
        loops, rest = np.divmod(starts_ms, self.period_ms)
        before = loops.astype(np.int64) * count + np.searchsorted(self.opportunities_ms, rest, "right")
        index = np.where(starts_ms < 0, 0, before) + math.ceil(size_bytes / PAYLOAD_BYTES)
        loops_end, position = np.divmod(index - 1, count)
        return (loops_end * self.period_ms + self.opportunities_ms[position]).astype(np.float64)

    def throughput_bps(self, start_ms: float, end_ms: float) -> float:
        """Capacity of the link over [start_ms, end_ms)."""
        if end_ms <= start_ms:
            return 0.0
        packets = self.opportunities_until(end_ms) - self.opportunities_until(start_ms)
        return packets * PACKET_BYTES * 8 / ((end_ms - start_ms) / 1000.0)

    def bandwidth_series(self, step_ms: int = 1000, duration_ms: int | None = None) -> tuple[np.ndarray, np.ndarray]:
        """(window start ms, bits/s) over consecutive windows, for plots."""
        duration_ms = duration_ms or self.period_ms
        starts = np.arange(0, duration_ms, step_ms)
        rates = np.array([self.throughput_bps(s, s + step_ms) for s in starts])
        return starts, rates
