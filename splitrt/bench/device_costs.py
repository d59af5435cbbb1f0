"""What each action costs on the emulated device: wall-clock samples of the runtime's own edge path under the
device profile's CPU quota.

CPU time divided by the profile's share is only an estimate of that. Under a CFS quota a job runs in bursts
of the per-period budget and waits out the rest of each period, so its latency (a) spreads by about one period
(10 ms) with the phase at which it starts, and (b) comes out faster than cpu/share on this kernel (the budget
is checked at scheduler ticks, so each period overruns it a little; the profiles' calibration measured the
factor at ~0.83). A deadline near an action's latency turns both into whole percentage points of deadline
hits, so the simulator draws each frame's edge time from these samples instead.

A sample is one frame of a paced stream as the SDK runs it on the device (`EdgeRuntime.run`: the hand-off to
the inference thread, crop, head or exit, encode, the request's encoding and checksum; local actions also the
merge), from capture to the moment the request would leave. The cloud's part is not included (nothing is
sent).
"""
from __future__ import annotations

import asyncio
import json
import warnings
from dataclasses import replace
from pathlib import Path
from typing import Sequence

import numpy as np

from splitrt.actions import Action
from splitrt.bundle import Bundle
from splitrt.devices.profiles import CgroupUnavailable, DeviceProfile, cpu_limit
from splitrt.edge.runtime import EdgeRuntime
from splitrt.edge.sources import PacedSource
from splitrt.frame import FrameOutcome, Status
from splitrt.policies.policies import ActionOption


SAMPLING_METHOD = "paced stream through EdgeRuntime.run"  # a cache made another way is not reused


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


def edge_samples_ms(bundle: Bundle, actions: Sequence[Action], profile: DeviceProfile, image: np.ndarray,
                    repeats: int = 30, interval_ms: float = 200.0) -> dict[str, list[float]]:
    """Capture-to-end ms of each action's edge part, `repeats` paced frames each (`paced_outcomes`), under the
    profile's CPU quota (raises `CgroupUnavailable` without one): the pipeline's own per-frame work counts, as on
    the device."""
    runtime = EdgeRuntime(bundle, UnsentLink(), intra_op_threads=profile.threads)  # type: ignore[arg-type]
    for action in actions:  # sessions load outside the quota: loading is not a frame's cost
        runtime.infer(image, action, budget_ms=60_000.0)
    try:
        with cpu_limit(profile):  # the runtime's thread starts inside: it is limited too
            return {action.describe(): [o.age_ms for o in paced_outcomes(runtime, action, image, repeats + 1,
                                                                         interval_ms)[1:]]
                    for action in actions}
    finally:
        runtime.close()


def with_samples(options: Sequence[ActionOption], samples_ms: dict[str, list[float]],
                 after_link_ms: dict[str, list[float]] | None = None) -> list[ActionOption]:
    """`options` with the device times of `samples_ms` (median and samples) where it has them, and the times
    after the link of `after_link_ms` as their cloud times likewise."""
    updated = []
    for option in options:
        if samples_ms.get(option.key):
            values = samples_ms[option.key]
            option = replace(option, edge_ms=float(np.median(values)), edge_samples_ms=tuple(values))
        if after_link_ms and after_link_ms.get(option.key):
            values = after_link_ms[option.key]
            option = replace(option, cloud_ms=float(np.median(values)), cloud_samples_ms=tuple(values))
        updated.append(option)
    return updated


def device_options(bundle: Bundle, measured: Sequence[ActionOption], profile: DeviceProfile, image: np.ndarray,
                   cache: Path | None = None, repeats: int = 30, interval_ms: float = 200.0
                   ) -> tuple[list[ActionOption], str]:
    """`measured` (CPU ms on this machine) as the device runs them: edge times sampled under the profile's
    quota (cached in `cache` by bundle, profile and actions). With `repeats` 0 or without a writable cgroup:
    CPU ms / share, and the returned cost model says so."""
    if repeats <= 0:  # asked not to sample
        return [replace(o, edge_ms=o.edge_ms / profile.cpu_share) for o in measured], "cpu/share"
    keys = [o.key for o in measured]
    document: dict[str, object] = {}
    if cache is not None and cache.is_file():
        document = json.loads(cache.read_text(encoding="utf-8"))
    stored = document.get("samples_ms")
    valid = (document.get("bundle_hash") == bundle.content_hash and document.get("profile") == profile.name
             and document.get("cpu_share") == profile.cpu_share and document.get("interval_ms") == interval_ms
             and document.get("repeats") == repeats and document.get("method") == SAMPLING_METHOD
             and isinstance(stored, dict) and set(keys) <= set(stored))
    if valid:
        samples = {k: [float(v) for v in stored[k]] for k in keys}  # type: ignore[index]
    else:
        try:
            samples = edge_samples_ms(bundle, [o.action for o in measured], profile, image, repeats, interval_ms)
        except (CgroupUnavailable, OSError) as exc:
            warnings.warn(f"device costs: no CPU quota ({exc}); using CPU ms / share {profile.cpu_share}", stacklevel=2)
            return [replace(o, edge_ms=o.edge_ms / profile.cpu_share) for o in measured], "cpu/share"
        if cache is not None:
            cache.parent.mkdir(parents=True, exist_ok=True)
            cache.write_text(json.dumps({"bundle_hash": bundle.content_hash, "profile": profile.name,
                                         "cpu_share": profile.cpu_share, "interval_ms": interval_ms, "repeats": repeats,
                                         "method": SAMPLING_METHOD,
                                         "samples_ms": samples}), encoding="utf-8")
    return with_samples(measured, samples), "sampled under the quota"
