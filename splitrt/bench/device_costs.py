"""What each action costs on the emulated device, measured the way the edge runs it: paced frames through the
SDK (`EdgeRuntime.run`) on the device as emulated (under the profile's CPU quota, or with the runtime's stages
dilated to its share: `devices.dilation`), remote actions through a real cloud on loopback.

Each frame's time is split as the simulator counts it (`splitrt.edge.calibration`). CPU time divided by the
profile's share is only an estimate of the device's part: under a CFS quota whose per-period budget is below the
scheduler tick a short job may finish at full speed or wait out several periods, and the simulator draws each
frame's times from these samples instead.
"""
from __future__ import annotations

import contextlib
import datetime
import json
import logging
import warnings
from dataclasses import replace
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np
import psutil

from splitrt.actions import Action
from splitrt.bundle import Bundle
from splitrt.devices.dilation import device_speed, dilates, warmup_runs
from splitrt.devices.profiles import CgroupUnavailable, DeviceProfile, cpu_limit
from splitrt.edge.calibration import calibrate, with_samples
from splitrt.edge.cpu_load import CpuReading, others_cores, read_cpu, usable_cpus
from splitrt.edge.link import CloudLink, Link
from splitrt.edge.runtime import EdgeRuntime
from splitrt.policies.policies import ActionOption


SAMPLING_METHOD = "paced stream through EdgeRuntime.run, remote actions through a loopback cloud"  # else resampled
# Other processes keeping more cores than this busy while the costs are measured make the emulated device read
# slower than it is (under a quota the runtime's share of a period shrinks too): the measurement is flagged.
BUSY_WARNING_CORES = 0.5

log = logging.getLogger(__name__)


def host_reading(process: psutil.Process, cpus: Sequence[int], helper_pid: int | None) -> CpuReading | None:
    """`read_cpu`, with the CPU time of a helper process of ours (the loopback cloud) counted as this process's own;
    None when psutil cannot read them."""
    try:
        reading = read_cpu(process, cpus)
        if helper_pid is None:
            return reading
        times = psutil.Process(helper_pid).cpu_times()
    except psutil.Error:
        return None
    return replace(reading, own_s=reading.own_s + times.user + times.system)


def busy_host_warning(busy_cores: float, cores: int, cache: Path | None) -> str | None:
    """What to tell when other processes kept `busy_cores` of the `cores` busy while device costs were measured
    (None: few enough to ignore)."""
    if busy_cores <= BUSY_WARNING_CORES:
        return None
    again = f"delete {cache} and measure again" if cache is not None else "measure again"
    return (f"device costs: other processes kept {busy_cores:.1f} of {cores} cores busy while they were measured, "
            f"so the emulated device reads slower than it is; {again} on a quiet host")


class UnsentLink:
    """Takes a request and answers nothing at once: the frame's edge part runs in full, nothing is sent."""

    is_up = True

    def request(self, frames: object, frame_id: int, timeout_ms: float) -> None:
        return None


def edge_samples_ms(bundle: Bundle, actions: Sequence[Action], profile: DeviceProfile, image: np.ndarray,
                    repeats: int = 30, interval_ms: float = 200.0, emulation: str = "quota",
                    link: Link | None = None) -> tuple[dict[str, list[float]], dict[str, list[float]]]:
    """(device ms, after-link ms) samples of each action, `repeats` paced frames each (`calibrate`), on the emulated
    device: under the profile's CPU quota (raises `CgroupUnavailable` without one), or with the runtime's stages
    dilated to the profile's share (`devices.dilation`). The pipeline's own per-frame work counts, as on the device.
    Remote actions go through `link` (a loopback cloud: the after-link samples are its tail, the transport and the
    device receiving the reply); without one nothing is sent and there are no after-link samples."""
    runtime = EdgeRuntime(bundle, link or UnsentLink(), intra_op_threads=profile.threads,  # type: ignore[arg-type]
                          device_speed=device_speed(emulation, profile))
    for action in actions:  # sessions load before the device is slowed: loading is not a frame's cost
        for _ in range(warmup_runs(runtime.device_speed)):
            runtime.infer(image, action, budget_ms=60_000.0)
    limit = cpu_limit(profile) if emulation == "quota" else contextlib.nullcontext()
    try:
        with limit:  # the runtime's thread starts inside: a quota limits it too
            return calibrate(runtime, list(actions), image, repeats, 1000.0 / interval_ms, rtt_ms=0.0)
    finally:
        runtime.close()


@contextlib.contextmanager
def loopback_cloud(bundle: Bundle) -> Iterator[tuple[CloudLink, int]]:
    """A `splitrt cloud serve` process for `bundle` on a loopback port (no batching, as the simulator assumes):
    a link to it and its pid."""
    from splitrt.bench.failover import CloudProcess, free_tcp_port

    cloud = CloudProcess(bundle.root, free_tcp_port(), extra_args=["--no-batching"])
    cloud.start()
    link = CloudLink(cloud.endpoint, bundle.content_hash)
    try:
        link.handshake(timeout_ms=30_000)
        yield link, cloud.process.pid
    finally:
        link.close()
        cloud.stop()


def device_options(bundle: Bundle, measured: Sequence[ActionOption], profile: DeviceProfile, image: np.ndarray,
                   cache: Path | None = None, repeats: int = 30, interval_ms: float = 200.0, emulation: str = "quota"
                   ) -> tuple[list[ActionOption], str]:
    """`measured` (CPU ms on this machine) as the device runs them: edge times sampled on the emulated device
    (`emulation`: under the profile's quota, or dilated; cached in `cache` by bundle, profile, emulation and
    actions). With `repeats` 0 or, for the quota, without a writable cgroup: CPU ms / share, and the returned cost
    model says so."""
    share = profile.dilation_share if dilates(emulation) else profile.cpu_share

    def cpu_over_share() -> tuple[list[ActionOption], str]:
        return [replace(o, edge_ms=o.edge_ms / share) for o in measured], "cpu/share"

    if repeats <= 0:  # asked not to sample
        return cpu_over_share()
    keys = [o.key for o in measured]
    document: dict[str, object] = {}
    if cache is not None and cache.is_file():
        document = json.loads(cache.read_text(encoding="utf-8"))
    stored = document.get("samples_ms")
    valid = (document.get("bundle_hash") == bundle.content_hash and document.get("profile") == profile.name
             and document.get("cpu_share") == share and document.get("interval_ms") == interval_ms
             and document.get("repeats") == repeats and document.get("method") == SAMPLING_METHOD
             and document.get("emulation", "quota") == emulation
             and isinstance(stored, dict) and set(keys) <= set(stored))
    if valid:
        samples = {k: [float(v) for v in stored[k]] for k in keys}  # type: ignore[index]
        after_link = {k: [float(v) for v in values] for k, values in document["after_link_ms"].items()}  # type: ignore[union-attr]
        busy, cores = document.get("others_busy_cores"), document.get("cores")
        if isinstance(busy, (int, float)) and isinstance(cores, int):
            log.info("device costs: reusing %s, measured %s while other processes kept %s of %d cores busy", cache,
                     document.get("measured_at"), busy, cores)
            warning = busy_host_warning(float(busy), cores, cache)
        else:
            log.info("device costs: reusing %s (it does not say when it was measured or beside how much load)", cache)
            warning = None
    else:
        cpus, process = usable_cpus(), psutil.Process()
        cores = len(cpus)
        try:
            cloud = loopback_cloud(bundle) if any(o.remote for o in measured) else contextlib.nullcontext((None, None))
            with cloud as (link, cloud_pid):
                before = host_reading(process, cpus, cloud_pid)  # once the cloud is up: its start is not a load
                samples, after_link = edge_samples_ms(bundle, [o.action for o in measured], profile, image, repeats,
                                                      interval_ms, emulation, link)
                after = host_reading(process, cpus, cloud_pid)
        except (CgroupUnavailable, OSError) as exc:
            warnings.warn(f"device costs: no CPU quota ({exc}); using CPU ms / share {share}", stacklevel=2)
            return cpu_over_share()
        busy = None if before is None or after is None else round(others_cores(before, after), 2)
        warning = None if busy is None else busy_host_warning(busy, cores, cache)
        if cache is not None:
            cache.parent.mkdir(parents=True, exist_ok=True)
            cache.write_text(json.dumps({"bundle_hash": bundle.content_hash, "profile": profile.name,
                                         "cpu_share": share, "interval_ms": interval_ms, "repeats": repeats,
                                         "method": SAMPLING_METHOD, "emulation": emulation,
                                         "measured_at": datetime.datetime.now(datetime.timezone.utc).isoformat(
                                             timespec="seconds"),
                                         "others_busy_cores": busy, "cores": cores,
                                         "samples_ms": samples, "after_link_ms": after_link}), encoding="utf-8")
    if warning:
        warnings.warn(warning, stacklevel=2)
    labels = {"quota": "sampled under the quota", "dilation": "sampled dilated", "steady": "sampled dilated, steady"}
    return with_samples(measured, samples, after_link), labels[emulation]
