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
from splitrt.frame import Status
from splitrt.policies.policies import ActionOption


SAMPLING_METHOD = "paced stream through EdgeRuntime.run"  # a cache made another way is not reused


class _UnsentLink:
    """Takes a request and answers nothing at once: the frame's edge part runs in full, nothing is sent."""

    is_up = True

    def request(self, frames: object, frame_id: int, timeout_ms: float) -> None:
        return None


def edge_samples_ms(bundle: Bundle, actions: Sequence[Action], profile: DeviceProfile, image: np.ndarray,
                    repeats: int = 30, interval_ms: float = 200.0) -> dict[str, list[float]]:
    """Capture-to-end ms of each action's edge part, `repeats` frames each, streamed through the SDK
    (`EdgeRuntime.run` on a `PacedSource` at the frame interval) under the profile's CPU quota (raises
    `CgroupUnavailable` without one): the pipeline's own per-frame work counts, as on the device."""
    runtime = EdgeRuntime(bundle, _UnsentLink(), intra_op_threads=profile.threads)  # type: ignore[arg-type]
    for action in actions:  # sessions load outside the quota: loading is not a frame's cost
        runtime.infer(image, action, budget_ms=60_000.0)

    async def stream(action: Action) -> list[float]:
        source = PacedSource([image], 1000.0 / interval_ms, count=repeats + 1)
        outcomes = [o async for o in runtime.run(source, action, budget_ms=60_000.0)]
        ran = sorted((o for o in outcomes if o.status is not Status.DROPPED), key=lambda o: o.frame_id)
        return [o.age_ms for o in ran[1:]]  # the first after a change of action is not typical

    samples: dict[str, list[float]] = {}
    try:
        with cpu_limit(profile):  # the runtime's thread starts inside: it is limited too
            for action in actions:
                samples[action.describe()] = asyncio.run(stream(action))
    finally:
        runtime.close()
    return samples


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
    options = [replace(o, edge_ms=float(np.median(samples[o.key])), edge_samples_ms=tuple(samples[o.key]))
               for o in measured]
    return options, "sampled under the quota"
