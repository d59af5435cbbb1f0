"""The one wall clock that components take by default (each accepts an injected clock instead)."""
from __future__ import annotations

import time


def wall_clock_ms() -> float:
    """Unix epoch milliseconds: the time base of frame capture times and absolute deadlines."""
    return time.time() * 1000.0
