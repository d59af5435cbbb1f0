"""A snapshot of the device's load: CPU and memory (psutil), thermal zones, and jetson-stats on a Jetson."""
from __future__ import annotations

import importlib.util
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import psutil

THERMAL_ROOT = Path("/sys/class/thermal")


@dataclass(frozen=True)
class Telemetry:
    cpu_percent: float  # whole machine, since the previous call (psutil semantics)
    memory_used_bytes: int
    memory_total_bytes: int
    temperatures_c: dict[str, float] = field(default_factory=dict)  # thermal zone type -> degrees C
    jetson: dict[str, Any] | None = None  # jetson-stats' `jtop.stats`, when it is installed and running

    def to_json(self) -> dict[str, Any]:
        return {
            "cpu_percent": self.cpu_percent,
            "memory_used_bytes": self.memory_used_bytes,
            "memory_total_bytes": self.memory_total_bytes,
            "temperatures_c": self.temperatures_c,
            "jetson": self.jetson,
        }


def read_thermal_zones(root: Path = THERMAL_ROOT) -> dict[str, float]:
    """`<root>/thermal_zone*/{type,temp}`: millidegrees in, degrees C out; unreadable zones are skipped."""
    temperatures: dict[str, float] = {}
    for zone in sorted(root.glob("thermal_zone*")):
        try:
            kind = (zone / "type").read_text().strip() or zone.name
            millidegrees = int((zone / "temp").read_text().strip())
        except (OSError, ValueError):
            continue
        name = kind if kind not in temperatures else f"{kind}-{zone.name}"
        temperatures[name] = millidegrees / 1000.0
    return temperatures


def _jtop_stats() -> dict[str, Any] | None:
    if importlib.util.find_spec("jtop") is None:
        return None
    from jtop import jtop  # jetson-stats; talks to its own service

    try:
        with jtop() as jetson:
            return {str(k): (v if isinstance(v, (int, float, str)) else str(v)) for k, v in jetson.stats.items()}
    except Exception:  # the jtop service is not running: no Jetson stats, the rest still works
        return None


def read_telemetry(
    thermal_root: Path = THERMAL_ROOT,
    jetson_stats: Callable[[], dict[str, Any] | None] = _jtop_stats,
) -> Telemetry:
    memory = psutil.virtual_memory()
    return Telemetry(
        cpu_percent=float(psutil.cpu_percent(interval=None)),
        memory_used_bytes=int(memory.total - memory.available),
        memory_total_bytes=int(memory.total),
        temperatures_c=read_thermal_zones(thermal_root),
        jetson=jetson_stats(),
    )
