"""What each action costs on this device, measured the way the edge runs it: paced frames through the SDK
(`EdgeRuntime.run`), remote actions through the link the runtime has.

Each frame's time is split as the simulator and the policies count it (`frame_times_ms`): the device's part, from
when the device could start the frame (the hand-off to the inference thread, crop, head or exit, encode, the
request's encoding and checksum; a local action's merge) to its end or to the moment its request left; and for a
remote action the part after the link (the cloud's tail, the transport, the device receiving and merging the reply).
`calibrate` measures them; `with_samples` and `measured_options` put them into a policy's options. The benchmarks
use them on an emulated device, the edge daemon on its own at start.
"""
from __future__ import annotations

import asyncio
from dataclasses import dataclass, replace
from typing import Callable, Mapping, Sequence

import numpy as np

from splitrt.actions import Action
from splitrt.edge.runtime import EdgeRuntime
from splitrt.edge.sources import PacedSource
from splitrt.frame import FrameOutcome, Status
from splitrt.policies.policies import ActionOption, with_best_hedges


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
    hedge_ms: float | None = None  # a hedged frame whose hedge answered: the hedge's own device time
    start_ms: float = 0.0  # when the device could start the frame (its clock: epoch ms)


def frame_times_ms(outcomes: list[dict[str, object]]) -> list[FrameTimes]:
    """Each frame's time split as the simulator counts it, from outcomes' JSON (`FrameOutcome.to_json`). A remote
    frame's request left at its end less the round trip and the merge (`trace_ms`); a hedged one whose hedge answered,
    at its end less the merge and the longer of the wait for the reply and the hedge (which began as the request
    left). Frames that ended otherwise than ok or timeout, or a local one that timed out, are left out."""
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
        after_send_ms, hedge_ms = after_send(o["trace_ms"], bool(o.get("hedge_answered")))  # type: ignore[arg-type]
        if after_send_ms is None and o["status"] != "ok":
            continue
        edge_ms = max(0.0, done_ms - (after_send_ms or 0.0) - start_ms)
        answered = after_send_ms if o["status"] == "ok" and hedge_ms is None else None
        times.append(FrameTimes(int(o["frame_id"]), str(o["action"]), edge_ms, answered,  # type: ignore[arg-type]
                                hedge_ms, start_ms))
    return times


def after_send(stages: Mapping[str, float], hedge_answered: bool) -> tuple[float | None, float | None]:
    """(ms from the request leaving to the frame's end, or None for a frame that sent nothing; the hedge's own
    device time where it answered, else None), from a frame's `trace_ms`: the round trip, the cloud's part and the
    merge; for a frame its hedge answered, the merge after the longer of the wait for the reply and the hedge."""
    if hedge_answered and "hedge" in stages:
        hedge_ms = stages["hedge"] + stages.get("hedge_tail", 0.0)
        return max(stages.get("network", 0.0), hedge_ms) + stages.get("merge", 0.0), hedge_ms
    if "network" in stages:
        return sum(stages.get(k, 0.0) for k in ("network", "cloud_queue", "cloud_compute", "merge")), None
    return None, None


class RecordedLoad:
    """A `calibrate` load (how much other processes slowed a run between two epoch-ms times) that keeps each
    frame's factor, so that the caller can tell how many frames ran loaded and rebuild their times as measured."""

    def __init__(self, read: Callable[[float, float], float]) -> None:
        self.read = read
        self.factors: list[float] = []

    def __call__(self, start_ms: float, end_ms: float) -> float:
        self.factors.append(self.read(start_ms, end_ms))
        return self.factors[-1]

    @property
    def loaded_frames(self) -> int:
        return sum(f > 1.0 for f in self.factors)


def calibrate(runtime: EdgeRuntime, actions: list[Action], image: np.ndarray, frames: int, fps: float,
              rtt_ms: float, stopped: Callable[[], bool] = lambda: False,
              load: Callable[[float, float], float] | None = None,
              ) -> tuple[dict[str, list[float]], dict[str, list[float]]]:
    """Each action `frames` paced frames through `runtime` (the first after a change of action left out):
    (device ms, after-link ms) samples per action; the latter only for remote actions answered in time. A frame
    that ran something else (a remote action's fallback, the cloud being away) is not the action's sample.
    `stopped` is asked before each action: once it says so, the actions measured so far are returned. With `load`
    (how much other processes slowed a run between two epoch-ms times: `CpuContention.between_ms`), each device
    sample is netted of it, so that a device calibrated while busy with something else is still measured as it
    runs unloaded (what `DeviceSlowdown` takes its typical times to be)."""
    device: dict[str, list[float]] = {}
    after_link: dict[str, list[float]] = {}
    for action in actions:
        if stopped():
            break
        ran = paced_outcomes(runtime, action, image, frames + 1, 1000.0 / fps, budget_ms=1000.0)
        outcomes = [o.to_json() for o in ran]
        first = ran[0].frame_id if ran else 0
        times = [t for t in frame_times_ms(outcomes) if t.frame != first and t.action == action.describe()]
        device[action.describe()] = [t.edge_ms / (load(t.start_ms, t.start_ms + t.edge_ms) if load else 1.0)
                                     for t in times]
        after = [max(0.0, t.after_send_ms - rtt_ms) for t in times if t.after_send_ms is not None]
        if after:
            after_link[action.describe()] = after
    return device, after_link


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


def measured_options(options: Sequence[ActionOption], samples_ms: dict[str, list[float]],
                     after_link_ms: dict[str, list[float]], deadline_ms: float, rehedge: bool) -> list[ActionOption]:
    """`options` with the edge's own measurements (`with_samples`); with `rehedge` (a policy that chooses among
    them), each remote one's hedge chosen again from those measurements (`with_best_hedges`): the local action
    most likely right and in time on the device as it is now, not as it was when the costs were sampled."""
    measured = with_samples(options, samples_ms, after_link_ms)
    if not rehedge or all(o.hedge is None for o in measured):
        return measured
    return with_best_hedges([o for o in measured if o.hedge is None], deadline_ms)
