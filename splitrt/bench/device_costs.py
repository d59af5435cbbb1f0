"""What each action costs on the emulated device, measured the way the edge runs it: paced frames through the
SDK (`EdgeRuntime.run`) on the device as emulated (under the profile's CPU quota, or with the runtime's stages
dilated to its share: `devices.dilation`), remote actions through a real cloud on loopback.

Each frame's time is split as the simulator counts it (`frame_times_ms`): the device's part, from when the device
could start the frame (the hand-off to the inference thread, crop, head or exit, encode, the request's encoding and
checksum; a local action's merge) to its end or to the moment its request left; and for a remote action the part
after the link (the cloud's tail, the transport, the device receiving and merging the reply). CPU time divided
by the profile's share is only an estimate of the first: under a CFS quota whose per-period budget is below the
scheduler tick a short job may finish at full speed or wait out several periods, and the simulator draws each
frame's times from these samples instead.
"""
from __future__ import annotations

import asyncio
import contextlib
import json
import warnings
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np

from splitrt.actions import Action
from splitrt.bundle import Bundle
from splitrt.devices.dilation import device_speed, dilates, warmup_runs
from splitrt.devices.profiles import CgroupUnavailable, DeviceProfile, cpu_limit
from splitrt.edge.link import CloudLink, Link
from splitrt.edge.runtime import EdgeRuntime
from splitrt.edge.sources import PacedSource
from splitrt.frame import FrameOutcome, Status
from splitrt.policies.policies import ActionOption


SAMPLING_METHOD = "paced stream through EdgeRuntime.run, remote actions through a loopback cloud"  # else resampled


class UnsentLink:
    """Takes a request and answers nothing at once: the frame's edge part runs in full, nothing is sent."""

    is_up = True

    def request(self, frames: object, frame_id: int, timeout_ms: float) -> None:
        return None


def paced_outcomes(runtime: EdgeRuntime, action: Action, image: np.ndarray, count: int, interval_ms: float,
                   budget_ms: float = 60_000.0) -> list[FrameOutcome]:
    """`count` frames of `action` streamed through the SDK (`EdgeRuntime.run` on a `PacedSource` at the frame
    interval), at whatever speed this process has now; the ones that ran, in frame order (the first after a
    change of action is not typical: callers leave it out)."""
    async def stream() -> list[FrameOutcome]:
        source = PacedSource([image], 1000.0 / interval_ms, count=count, name="calibration")
        return [o async for o in runtime.run(source, action, budget_ms=budget_ms)]

    outcomes = asyncio.run(stream())
    return sorted((o for o in outcomes if o.status is not Status.DROPPED), key=lambda o: o.frame_id)


@dataclass(frozen=True)
class FrameTimes:
    frame: int  # the outcome's frame_id
    action: str
    edge_ms: float  # from when the device could start the frame (its capture, or the end of the frame before)
    # to its end (local) or to the moment its request left (remote)
    after_send_ms: float | None  # remote frames answered in time: from the request leaving to the frame's end


def frame_times_ms(outcomes: list[dict[str, object]]) -> list[FrameTimes]:
    """Each frame's time split as the simulator counts it, from outcomes' JSON (`FrameOutcome.to_json`). A remote
    frame's request left at its end less the round trip and the merge (`trace_ms`). Frames that ended otherwise
    than ok or timeout, or a local one that timed out, are left out."""
    times: list[FrameTimes] = []
    previous_done_ms = float("-inf")
    for o in sorted(outcomes, key=lambda o: int(o["frame_id"])):  # type: ignore[arg-type]
        if o["status"] == "dropped":
            continue
        capture_ms = float(o["capture_ms"])  # type: ignore[arg-type]
        done_ms = capture_ms + float(o["age_ms"])  # type: ignore[arg-type]
        start_ms, previous_done_ms = max(capture_ms, previous_done_ms), done_ms  # busy until any frame ends
        if o["status"] not in ("ok", "timeout"):
            continue
        stages: dict[str, float] = o["trace_ms"]  # type: ignore[assignment]
        after_send_ms: float | None = None
        if "network" in stages:
            after_send_ms = sum(stages.get(k, 0.0) for k in ("network", "cloud_queue", "cloud_compute", "merge"))
        elif o["status"] != "ok":
            continue
        edge_ms = max(0.0, done_ms - (after_send_ms or 0.0) - start_ms)
        answered = after_send_ms if o["status"] == "ok" else None
        times.append(FrameTimes(int(o["frame_id"]), str(o["action"]), edge_ms, answered))  # type: ignore[arg-type]
    return times


def calibrate(runtime: EdgeRuntime, actions: list[Action], image: np.ndarray, frames: int, fps: float,
              rtt_ms: float) -> tuple[dict[str, list[float]], dict[str, list[float]]]:
    """Each action `frames` paced frames through `runtime` (the first after a change of action left out):
    (device ms, after-link ms) samples per action; the latter only for remote actions answered in time."""
    device: dict[str, list[float]] = {}
    after_link: dict[str, list[float]] = {}
    for action in actions:
        ran = paced_outcomes(runtime, action, image, frames + 1, 1000.0 / fps, budget_ms=1000.0)
        outcomes = [o.to_json() for o in ran]
        first = ran[0].frame_id if ran else 0
        times = [t for t in frame_times_ms(outcomes) if t.frame != first]
        device[action.describe()] = [t.edge_ms for t in times]
        after = [max(0.0, t.after_send_ms - rtt_ms) for t in times if t.after_send_ms is not None]
        if after:
            after_link[action.describe()] = after
    return device, after_link


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
def loopback_cloud(bundle: Bundle) -> Iterator[CloudLink]:
    """A `splitrt cloud serve` process for `bundle` on a loopback port (no batching, as the simulator assumes),
    and a link to it."""
    from splitrt.bench.failover import CloudProcess, free_tcp_port

    cloud = CloudProcess(bundle.root, free_tcp_port(), extra_args=["--no-batching"])
    cloud.start()
    link = CloudLink(cloud.endpoint, bundle.content_hash)
    try:
        link.handshake(timeout_ms=30_000)
        yield link
    finally:
        link.close()
        cloud.stop()


def with_samples(options: Sequence[ActionOption], samples_ms: dict[str, list[float]],
                 after_link_ms: dict[str, list[float]] | None = None) -> list[ActionOption]:
    """`options` with the device times of `samples_ms` (median and samples) where it has them, and the times
    after the link of `after_link_ms` as their cloud times likewise. A hedged option takes its remote part's
    times (`ActionOption.remote_key`) and its hedge the hedge's own."""
    return [_with_samples(o, samples_ms, after_link_ms or {}) for o in options]


def _with_samples(option: ActionOption, samples_ms: dict[str, list[float]],
                  after_link_ms: dict[str, list[float]]) -> ActionOption:
    if samples_ms.get(option.remote_key):
        values = samples_ms[option.remote_key]
        option = replace(option, edge_ms=float(np.median(values)), edge_samples_ms=tuple(values))
    if after_link_ms.get(option.remote_key):
        values = after_link_ms[option.remote_key]
        option = replace(option, cloud_ms=float(np.median(values)), cloud_samples_ms=tuple(values))
    if option.hedge is not None:
        option = replace(option, hedge=_with_samples(option.hedge, samples_ms, after_link_ms))
    return option


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
    else:
        try:
            with loopback_cloud(bundle) if any(o.remote for o in measured) else contextlib.nullcontext() as link:
                samples, after_link = edge_samples_ms(bundle, [o.action for o in measured], profile, image, repeats,
                                                      interval_ms, emulation, link)
        except (CgroupUnavailable, OSError) as exc:
            warnings.warn(f"device costs: no CPU quota ({exc}); using CPU ms / share {share}", stacklevel=2)
            return cpu_over_share()
        if cache is not None:
            cache.parent.mkdir(parents=True, exist_ok=True)
            cache.write_text(json.dumps({"bundle_hash": bundle.content_hash, "profile": profile.name,
                                         "cpu_share": share, "interval_ms": interval_ms, "repeats": repeats,
                                         "method": SAMPLING_METHOD, "emulation": emulation,
                                         "samples_ms": samples, "after_link_ms": after_link}), encoding="utf-8")
    labels = {"quota": "sampled under the quota", "dilation": "sampled dilated", "steady": "sampled dilated, steady"}
    return with_samples(measured, samples, after_link), labels[emulation]
