"""Calibrate emulated device profiles: EfficientNet-Lite0 under each profile's quota vs the published figure."""
from __future__ import annotations

import contextlib
import os
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np

from splitrt.devices.profiles import CgroupLayout, CpuQuota, DeviceProfile, cpu_limit, find_cgroup_layout
from splitrt.devices.timing import Timing, summarize_ms, time_calls_ms


@dataclass(frozen=True)
class Calibration:
    profile: DeviceProfile
    measured: Timing

    @property
    def ratio(self) -> float | None:
        """measured / published: 1.0 is a perfect calibration."""
        if self.profile.published_ms is None:
            return None
        return self.measured.p50_ms / self.profile.published_ms

    @property
    def suggested_share(self) -> float | None:
        return suggest_share(self.profile.cpu_share, self.measured.p50_ms, self.profile.published_ms)

    @property
    def quota_bound_ms(self) -> float | None:
        """CPU time per run / share: the latency the quota alone imposes, on a machine with a core to spare.
        Above it, the measured figure says other processes took CPU from this one."""
        if self.measured.cpu_p50_ms is None:
            return None
        return self.measured.cpu_p50_ms / min(self.profile.cpu_share, 1.0)

    @property
    def share_from_cpu_time(self) -> float | None:
        """The share at which the quota alone would give the published latency (robust to other load)."""
        if self.measured.cpu_p50_ms is None or self.profile.published_ms is None:
            return None
        return self.measured.cpu_p50_ms / self.profile.published_ms

    def to_json(self) -> dict[str, Any]:
        return {
            "profile": self.profile.name,
            "cpu_share": self.profile.cpu_share,
            "threads": self.profile.threads,
            "published_ms": self.profile.published_ms,
            "basis": self.profile.basis,
            "source": self.profile.source,
            "measured_ms_p50": round(self.measured.p50_ms, 3),
            "measured_ms_p95": round(self.measured.p95_ms, 3),
            "ratio": None if self.ratio is None else round(self.ratio, 3),
            "suggested_share": None if self.suggested_share is None else round(self.suggested_share, 3),
            "cpu_ms_p50": None if self.measured.cpu_p50_ms is None else round(self.measured.cpu_p50_ms, 3),
            "quota_bound_ms": None if self.quota_bound_ms is None else round(self.quota_bound_ms, 3),
            "share_from_cpu_time": None if self.share_from_cpu_time is None else round(self.share_from_cpu_time, 3),
        }


def suggest_share(share: float, measured_ms: float, target_ms: float | None) -> float | None:
    """Under a CPU quota the latency of CPU-bound work scales as 1/share: the share that hits the target."""
    if target_ms is None:
        return None
    if measured_ms <= 0 or target_ms <= 0:
        raise ValueError("latencies must be positive")
    return share * measured_ms / target_ms


def calibrate(
    profile: DeviceProfile,
    model_path: str | Path,
    input_shape: tuple[int, ...] = (1, 224, 224, 3),
    repeats: int = 30,
    warmup: int = 5,
    fallback: str = "error",
    session_factory: Callable[..., Any] | None = None,
) -> Calibration:
    """Median latency of the full model (uint8 NHWC input named `image`) under the profile."""
    from splitrt.devices.ort import create_session

    factory = session_factory or create_session
    image = np.random.default_rng(0).integers(0, 256, size=input_shape, dtype=np.uint8)
    with cpu_limit(profile, fallback=fallback):
        session = factory(model_path, profile.threads)
        timing = time_calls_ms(
            lambda: session.run(None, {"image": image}), repeats, warmup, min_sample_ms=profile.sample_ms
        )
    return Calibration(profile, timing)


def calibrate_all(
    profiles: list[DeviceProfile],
    model_path: str | Path,
    input_shape: tuple[int, ...] = (1, 224, 224, 3),
    repeats: int = 30,
    warmup: int = 5,
    layout: CgroupLayout | None = None,
) -> list[Calibration]:
    """`calibrate` for several single-threaded profiles at once, round-robin: the calling thread moves
    from one profile's cgroup to the next for every sample, so a change in the machine's load during the
    run shifts every profile alike instead of one of them."""
    from splitrt.devices.ort import create_session

    if any(p.threads != 1 for p in profiles):
        raise ValueError("calibrate_all moves one thread between cgroups: give single-threaded profiles")
    layout = layout or find_cgroup_layout()
    image = np.random.default_rng(0).integers(0, 256, size=input_shape, dtype=np.uint8)
    session = create_session(model_path, 1)
    run = lambda: session.run(None, {"image": image})  # noqa: E731
    thread_id = threading.get_native_id()
    parent_tasks = layout.parent / ("tasks" if layout.version == 1 else "cgroup.procs")
    samples: dict[str, list[float]] = {p.name: [] for p in profiles}
    cpu_samples: dict[str, list[float]] = {p.name: [] for p in profiles}
    with contextlib.ExitStack() as stack:
        quotas = {p.name: stack.enter_context(CpuQuota(p.cpu_share, layout, label=p.name)) for p in profiles}
        try:
            for _ in range(warmup):
                run()
            for _ in range(repeats):
                for profile in profiles:
                    quotas[profile.name].add_thread(thread_id)
                    timing = time_calls_ms(run, 1, warmup=0, min_sample_ms=profile.sample_ms)
                    samples[profile.name].extend(timing.samples_ms)
                    cpu_samples[profile.name].append(timing.cpu_p50_ms or 0.0)
        finally:
            parent_tasks.write_text(str(thread_id if layout.version == 1 else os.getpid()))
    return [Calibration(p, summarize_ms(samples[p.name], cpu_samples[p.name])) for p in profiles]
