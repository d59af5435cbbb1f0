"""Emulated device profiles: a slow device is this machine under a CPU quota, with a fixed thread count.

A profile puts a thread, or a whole process, into a cgroup whose CPU bandwidth is `cpu_share` CPUs
(cgroup v1 `cpu.cfs_quota_us` / `cpu.cfs_period_us`, or v2 `cpu.max`), with a short period (10 ms) so
that throttling is fine-grained rather than bursty. Where no cgroup can be written, `cpu_limit` raises
`CgroupUnavailable` with what to do, or (with `fallback="threads"`) warns and only fixes the thread count.

Each share was calibrated so that EfficientNet-Lite0 (the full model, one ONNX Runtime thread) runs on
this machine as fast as the published figure for the board; `splitrt devices calibrate` re-measures it
and prints the share that would match. The sources are in `PROFILES` (one per board).
"""
from __future__ import annotations

import contextlib
import itertools
import math
import os
import subprocess
import threading
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator, Mapping, Sequence, TypeVar

from splitrt.processes import pid_alive

DEFAULT_CGROUP_ROOT = Path("/sys/fs/cgroup")
PERIOD_US = 10_000
MIN_QUOTA_US = 1_000  # cgroup v1 refuses quotas below 1 ms
MIN_SHARE = MIN_QUOTA_US / 1_000_000  # the kernel's longest period is 1 s
T = TypeVar("T")


class CgroupUnavailable(RuntimeError):
    """No cgroup v1 cpu controller or v2 cpu.max that this process may write."""


def quota_and_period_us(cpu_share: float, period_us: int = PERIOD_US) -> tuple[int, int]:
    """The CFS quota and period for a share: the period is lengthened for a share whose quota would be below
    `MIN_QUOTA_US` (0.065: 1 ms of every 15.4 ms), rather than the share rounded up."""
    period_us = max(period_us, math.ceil(MIN_QUOTA_US / cpu_share))
    return max(MIN_QUOTA_US, round(cpu_share * period_us)), period_us


@dataclass(frozen=True)
class DeviceProfile:
    name: str
    cpu_share: float  # CPU time per wall-clock second, in CPUs (0.2 = a fifth of one core)
    threads: int  # ONNX Runtime intra-op threads
    description: str
    published_ms: float | None  # EfficientNet-Lite0 latency on the board, what the share is calibrated to
    basis: str  # "published": that figure is for this board; "derived": scaled from one, see `source`
    source: str
    # The share at which time dilation (`devices.dilation`: each stage's CPU time / share) gives `published_ms`
    # on the reference machine: its CPU time per run / published ms. The quota's share is lower because a
    # budget below the scheduler tick overruns (see `device_costs`). None: the same as `cpu_share`.
    cpu_share_dilated: float | None = None

    @property
    def dilation_share(self) -> float:
        return self.cpu_share if self.cpu_share_dilated is None else self.cpu_share_dilated

    @property
    def quota_us(self) -> int:
        return quota_and_period_us(self.cpu_share)[0]

    @property
    def sample_ms(self) -> float:
        """Shortest timing sample under this profile's quota: four periods (see `time_calls_ms`)."""
        return 4 * quota_and_period_us(self.cpu_share)[1] / 1000.0


# Calibrated on this project's reference machine (x86-64, 2 cores shared with other work, onnxruntime 1.31,
# one thread; docs/results/calibration.json): `splitrt devices calibrate --bundle DIR` prints measured vs
# published and the share that would match. The quota-bound profiles (pi4, jetson-nano) were set from the
# measured wall-clock latency under the quota; the faster two (pi5, jetson-orin-nano) need more CPU than a
# busy 2-core machine reliably gives one thread, so they were set from the CPU time per run (cpu ms /
# published ms), corrected by the factor (0.83) by which the quota-bound profiles ran faster than that
# estimate. Each profile's dilation share is `share_from_cpu_time` from the same calibration (CPU ms of the full
# model on one thread / published ms).
PROFILES: dict[str, DeviceProfile] = {
    profile.name: profile
    for profile in (
        DeviceProfile(
            name="x86",
            cpu_share=1.0,
            threads=1,
            description="this machine: one full core, one thread (the unthrottled reference)",
            published_ms=None,
            basis="reference",
            source="none: the host itself",
        ),
        DeviceProfile(
            name="pi4",
            cpu_share=0.18,
            threads=1,
            description="Raspberry Pi 4 (4x Cortex-A72), CPU inference",
            published_ms=49.0,
            basis="published",
            # EfficientNet-Lite0, TensorFlow Lite on the Pi 4 CPU: 49 ms.
            source="TildAlice, 'MobileNet vs EfficientNet-Lite: Pi 4 First Model 38ms Gap', dev.to/tildalice "
            "(mobilenet-vs-efficientnet-lite-pi-4-first-model-38ms-gap-3l84)",
            cpu_share_dilated=0.209,
        ),
        DeviceProfile(
            name="pi5",
            cpu_share=0.75,
            threads=1,
            description="Raspberry Pi 5 (4x Cortex-A76 @ 2.4 GHz), CPU inference",
            published_ms=12.0,
            basis="derived",
            # No per-board Lite0 figure found; the Pixel 4's CPU (Cortex-A76 @ 2.42-2.84 GHz, 4 threads)
            # runs EfficientNet-Lite0 fp32 in 12 ms: the same core class and clock as the Pi 5.
            source="EfficientNet-Lite README, tensorflow/tpu models/official/efficientnet/lite: Lite0 FP32 CPU "
            "latency 12 ms on Pixel 4, 4 threads (same Cortex-A76 core class as the Pi 5)",
            cpu_share_dilated=0.854,
        ),
        DeviceProfile(
            name="jetson-nano",
            cpu_share=0.13,
            threads=1,
            description="Jetson Nano (4x Cortex-A57 @ 1.43 GHz), ONNX Runtime CPU path",
            published_ms=67.0,
            basis="derived",
            # No per-board Lite0 CPU figure found; scaled from the Pi 4's 49 ms by clock (1.5/1.43 GHz)
            # and the A72's ~1.3x per-clock advantage over the A57: 49 * 1.05 * 1.3 = 67 ms.
            source="derived from the pi4 figure (TildAlice, dev.to) by clock and core generation",
            cpu_share_dilated=0.152,
        ),
        DeviceProfile(
            name="jetson-orin-nano",
            cpu_share=0.56,
            threads=1,
            description="Jetson Orin Nano (6x Cortex-A78AE @ 1.5 GHz), ONNX Runtime CPU path",
            published_ms=16.0,
            basis="derived",
            # Scaled from the Pixel 4 A76 figure: clock 2.42/1.5 GHz, A78 ~1.2x per clock: 12*1.61/1.2 = 16 ms.
            source="derived from the EfficientNet-Lite README Pixel 4 figure (12 ms) by clock and core generation",
            cpu_share_dilated=0.628,
        ),
    )
}


def get_profile(name: str) -> DeviceProfile:
    """A profile by name, or a counterfactual device given as a bare CPU share (`0.065`: this machine at that
    share, one thread), for what-if benchmarks."""
    if name in PROFILES:
        return PROFILES[name]
    try:
        share = float(name)
    except ValueError:
        raise KeyError(f"unknown device profile {name!r}; profiles: {', '.join(PROFILES)}, or a CPU share "
                       "such as 0.065") from None
    if not MIN_SHARE <= share <= 1.0:
        raise KeyError(f"a device given as a CPU share must be in [{MIN_SHARE}, 1], got {name!r}")
    return DeviceProfile(name=name, cpu_share=share, threads=1, description=f"this machine at a {share:g} CPU share",
                         published_ms=None, basis="what-if", source="none: a counterfactual share, not a board")


@dataclass(frozen=True)
class CgroupLayout:
    """Where the cpu controller lives: v1 (`<root>/cpu/cpu.cfs_quota_us`) or v2 (`<root>/cpu.max`)."""

    version: int
    parent: Path  # the directory new cgroups are made in

    @property
    def threads_file(self) -> str:
        return "tasks" if self.version == 1 else "cgroup.threads"


def _own_v2_cgroup(root: Path, proc_cgroup: Path) -> Path:
    try:
        for line in proc_cgroup.read_text().splitlines():
            if line.startswith("0::"):
                return root / line[3:].lstrip("/")
    except OSError:
        pass
    return root


def find_cgroup_layout(root: Path = DEFAULT_CGROUP_ROOT, proc_cgroup: Path = Path("/proc/self/cgroup")) -> CgroupLayout:
    """The writable cpu controller under `root`, or CgroupUnavailable saying why."""
    v1 = root / "cpu"
    if (v1 / "cpu.cfs_quota_us").exists():
        if os.access(v1, os.W_OK):
            return CgroupLayout(1, v1)
        raise CgroupUnavailable(f"{v1} exists but is not writable: run as root, or with a delegated cgroup")
    controllers = root / "cgroup.controllers"
    if controllers.exists():
        parent = _own_v2_cgroup(root, proc_cgroup).parent
        if "cpu" not in controllers.read_text().split():
            raise CgroupUnavailable(f"cgroup v2 at {root} has no cpu controller; enable it in cgroup.subtree_control")
        if os.access(parent, os.W_OK):
            return CgroupLayout(2, parent)
        raise CgroupUnavailable(f"cgroup v2 directory {parent} is not writable: run as root or under systemd-run --user")
    raise CgroupUnavailable(f"no cgroup cpu controller under {root} (neither v1 cpu/ nor v2 cgroup.controllers)")


def remove_stale_quotas(layout: CgroupLayout) -> list[str]:
    """Remove the cgroups that a killed splitrt process left (`splitrt-<label>-<pid>-<n>`, pid gone, no tasks);
    returns their names. A signal that kills a process skips its `close()`; the next quota tidies up."""
    removed = []
    for path in layout.parent.glob("splitrt-*-*-*"):
        pid = path.name.rsplit("-", 2)[-2]
        if not pid.isdigit() or pid_alive(int(pid)):
            continue
        members = path / ("tasks" if layout.version == 1 else "cgroup.procs")
        try:
            if members.exists() and members.read_text().split():
                continue
            path.rmdir()
        except OSError:
            continue
        removed.append(path.name)
    return removed


class CpuQuota:
    """One cgroup with a CPU bandwidth limit; threads and processes can be moved in. Always `close()` it
    (or use it as a context manager): the cgroup is removed and everything in it moved back out."""

    _counter = itertools.count()

    def __init__(self, cpu_share: float, layout: CgroupLayout, label: str = "quota", period_us: int = PERIOD_US) -> None:
        if cpu_share <= 0:
            raise ValueError(f"cpu_share must be positive, got {cpu_share}")
        self.layout = layout
        self.quota_us, self.period_us = quota_and_period_us(cpu_share, period_us)
        period_us = self.period_us
        remove_stale_quotas(layout)
        self.path = layout.parent / f"splitrt-{label}-{os.getpid()}-{next(self._counter)}"
        self.path.mkdir()
        try:
            if layout.version == 1:
                (self.path / "cpu.cfs_period_us").write_text(str(period_us))
                (self.path / "cpu.cfs_quota_us").write_text(str(self.quota_us))
            else:
                (self.path / "cpu.max").write_text(f"{self.quota_us} {period_us}")
        except OSError:
            self.close()
            raise

    @property
    def procs_file(self) -> Path:
        return self.path / "cgroup.procs"

    def add_thread(self, thread_id: int) -> None:
        """Move one thread (v1; v2 needs a threaded cgroup, so there the whole process moves)."""
        if self.layout.version == 1:
            (self.path / "tasks").write_text(str(thread_id))
        else:
            self.add_process(os.getpid())

    def add_process(self, pid: int) -> None:
        self.procs_file.write_text(str(pid))

    def command(self, argv: Sequence[str]) -> list[str]:
        """`argv` wrapped so that its process joins this cgroup before it execs: it never runs unthrottled."""
        return ["/bin/sh", "-c", 'echo $$ > "$0" && exec "$@"', str(self.procs_file), *argv]

    def close(self) -> None:
        if not self.path.exists():
            return
        members = self.path / ("tasks" if self.layout.version == 1 else "cgroup.procs")
        target = self.layout.parent / ("tasks" if self.layout.version == 1 else "cgroup.procs")
        for _ in range(3):
            try:
                ids = members.read_text().split()
            except OSError:
                break
            for task in ids:
                with contextlib.suppress(OSError):  # it may have exited meanwhile
                    target.write_text(task)
        with contextlib.suppress(OSError):
            self.path.rmdir()

    def __enter__(self) -> "CpuQuota":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


@contextlib.contextmanager
def profile_quota(
    profile: DeviceProfile, fallback: str = "error", layout: CgroupLayout | None = None, label: str | None = None
) -> Iterator[CpuQuota | None]:
    """The profile's CPU quota for the duration of the block (threads and processes are added by the caller);
    None with fallback="threads" when no cgroup can be written (a warning says only the thread count then
    emulates the device), else `CgroupUnavailable` with what to do."""
    if fallback not in ("error", "threads"):
        raise ValueError("fallback must be 'error' or 'threads'")
    try:
        quota = CpuQuota(profile.cpu_share, layout or find_cgroup_layout(), label=label or profile.name)
    except (CgroupUnavailable, OSError) as exc:
        if fallback == "error":
            raise CgroupUnavailable(
                f"cannot put device profile {profile.name} under a CPU quota: {exc}. "
                "Run as root (cgroup v1 or v2), or pass fallback='threads' (--allow-thread-fallback) to "
                "emulate the device by its thread count only"
            ) from exc
        warnings.warn(f"device profile {profile.name}: no CPU quota ({exc}); emulating by thread count only", stacklevel=4)
        yield None
        return
    with quota:
        yield quota


@contextlib.contextmanager
def cpu_limit(
    profile: DeviceProfile, fallback: str = "error", layout: CgroupLayout | None = None
) -> Iterator[DeviceProfile]:
    """Run the calling thread under the profile's CPU quota for the duration of the block.

    Threads created inside the block (ONNX Runtime's pool, when a session with threads > 1 is created
    inside it) share the quota. fallback="threads" turns a missing cgroup into a warning: only the thread
    count then emulates the device.
    """
    with profile_quota(profile, fallback, layout) as quota:
        if quota is not None:
            quota.add_thread(threading.get_native_id())
        yield profile


def call_under_profile(profile: DeviceProfile, fn: Callable[..., T], *args: object, fallback: str = "error", **kwargs: object) -> T:
    """fn(*args, **kwargs) on this thread, under the profile's CPU quota."""
    with cpu_limit(profile, fallback=fallback):
        return fn(*args, **kwargs)


def run_under_profile(
    profile: DeviceProfile,
    argv: Sequence[str],
    layout: CgroupLayout | None = None,
    timeout_s: float | None = None,
    **popen: object,
) -> subprocess.CompletedProcess:
    """Run a command under the profile: the process joins the cgroup before it execs, so it never runs
    unthrottled; SPLITRT_THREADS tells splitrt inside it how many inference threads to use."""
    env = profile_environment(profile, popen.pop("env", None))  # type: ignore[arg-type]
    with CpuQuota(profile.cpu_share, layout or find_cgroup_layout(), label=profile.name) as quota:
        return subprocess.run(quota.command(argv), env=env, timeout=timeout_s, check=False, **popen)  # type: ignore[call-overload]


def profile_environment(profile: DeviceProfile, base: Mapping[str, str] | None = None) -> dict[str, str]:
    """The environment of a process that runs as `profile`: SPLITRT_THREADS sets its inference threads."""
    env = dict(base or os.environ)
    env["SPLITRT_THREADS"] = str(profile.threads)
    env["SPLITRT_DEVICE_PROFILE"] = profile.name
    return env
