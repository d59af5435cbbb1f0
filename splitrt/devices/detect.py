"""Which board this is: a Jetson, a Raspberry Pi, or a generic machine. Paths are injectable for tests."""
from __future__ import annotations

import os
import platform
from dataclasses import dataclass
from pathlib import Path

TEGRA_RELEASE = Path("/etc/nv_tegra_release")
DEVICE_TREE_MODEL = Path("/proc/device-tree/model")


@dataclass(frozen=True)
class Board:
    kind: str  # "jetson", "raspberry-pi" or "generic"
    model: str  # e.g. "Raspberry Pi 4 Model B Rev 1.4", "NVIDIA Jetson Orin Nano Developer Kit"
    machine: str  # CPU architecture: aarch64, x86_64, ...
    cpu_count: int
    l4t_release: str | None = None  # Jetson Linux release line, when there is one

    @property
    def suggested_profile(self) -> str:
        """The emulated profile closest to this board (for planning before it is measured)."""
        model = self.model.lower()
        if self.kind == "raspberry-pi":
            return "pi5" if "pi 5" in model else "pi4"
        if self.kind == "jetson":
            return "jetson-orin-nano" if "orin" in model else "jetson-nano"
        return "x86"


def _read_text(path: Path) -> str | None:
    try:
        return path.read_bytes().replace(b"\0", b"").decode("utf-8", "replace").strip()
    except OSError:
        return None


def detect_board(
    tegra_release: Path = TEGRA_RELEASE,
    device_tree_model: Path = DEVICE_TREE_MODEL,
    machine: str | None = None,
    cpu_count: int | None = None,
) -> Board:
    """Jetson via /etc/nv_tegra_release or a device-tree model naming Jetson/Tegra; Raspberry Pi via the
    device-tree model; anything else is generic."""
    machine = machine or platform.machine()
    cpu_count = cpu_count or os.cpu_count() or 1
    model = _read_text(device_tree_model) or ""
    release = _read_text(tegra_release)
    if release is not None or any(word in model.lower() for word in ("jetson", "tegra")):
        first_line = release.splitlines()[0] if release else None
        return Board("jetson", model or "NVIDIA Jetson", machine, cpu_count, first_line)
    if model.lower().startswith("raspberry pi"):
        return Board("raspberry-pi", model, machine, cpu_count)
    return Board("generic", model or f"{platform.system()} {machine}", machine, cpu_count)
