"""The live decision loop: per frame, prefilter, ask the policy with live estimates, run, learn from it.

The estimates (`LinkEstimates`, the simulator's too) learn only from what frames observe: a remote frame's
`network` stage (round trip minus the cloud's queue and compute), a timeout, a request that could not be sent,
and the cloud's queue delay that every Result carries; and, over a link that sends heartbeats, their round trip.
A hedged frame (any remote frame, for `deadline-tracking`: `teaches_on_time`) also tells the on-time calibration
(`OnTimeCalibration`) whether its reply came in time, against the chance the policies' model gave it when the frame
was decided.
When no remote frame has measured the link for `probe_interval_ms` (doubling while probes fail, `ProbeSchedule`)
and the policy keeps a frame local, the frame runs what the policy would choose if the link were as fast as first
believed, when that is remote, or failing that a hedged action it would choose on a somewhat faster link
(`probe_decision`): this is how a link that came back is noticed, at the risk of one frame per probe. The
simulator models the same probes.
Every frame's device part tells `DeviceSlowdown` how fast the device runs now; with `cpu_contention`, the load
that other processes put on the CPU (psutil) counts from the next frame on, before frames have run slow under it.
"""
from __future__ import annotations

import collections
from typing import TYPE_CHECKING, AsyncIterator, Callable, Protocol, Sequence

import numpy as np

from splitrt.clock import wall_clock_ms
from splitrt.edge.calibration import after_send
from splitrt.edge.runtime import NO_REPLY, EdgeRuntime
from splitrt.frame import Frame, FrameOutcome, Status
from splitrt.policies.estimators import LinkEstimates
from splitrt.policies.policies import (ActionOption, Decision, LinkView, Policy, ProbeSchedule, on_time_probability,
                                       probe_decision, teaches_on_time)
from splitrt.policies.prefilter import Prefilter
from splitrt.protocol import RejectReason

if TYPE_CHECKING:
    import asyncio

    from splitrt.edge.sources import FrameSource


class ContentionSampler(Protocol):
    """How much other processes slow the device's runs now (`splitrt.edge.cpu_load.CpuContention`)."""

    def sample(self) -> float: ...


# How a hedged frame's reason starts when the cloud refused its request as expired (`EdgeRuntime._take_reply`).
EXPIRED_BY_CLOUD = f"cloud rejected it ({RejectReason.EXPIRED.value})"


def observe_outcome(estimates: LinkEstimates, now_ms: float, outcome: FrameOutcome) -> None:
    """What a frame's outcome tells the link estimates (nothing, for a frame that sent nothing).

    A request the cloud refused as expired (it arrived with too little time left to run) did not come back in
    time either: its wait bounds the rate as a timeout's does. The simulator, which has no such refusal, sees
    the same frame time out."""
    if not outcome.bytes_sent:
        return
    network = outcome.trace_ms.get("network")
    if outcome.status is Status.FAILED and network is None:  # never left: no connection to the cloud
        estimates.observe_unreachable(now_ms)
    elif outcome.hedge_answered:  # its hedge answered: the reply was late or refused, or the link failed
        if network is None:
            estimates.observe_unreachable(now_ms)
        elif outcome.reason.startswith((NO_REPLY, EXPIRED_BY_CLOUD)):
            estimates.observe_timeout(now_ms, outcome.bytes_sent, network)
        else:
            estimates.unreachable_since_ms = None
    elif outcome.status is Status.OK and network is not None:
        estimates.observe_reply(now_ms, outcome.bytes_sent, network, outcome.trace_ms.get("cloud_queue", 0.0))
    elif outcome.status in (Status.TIMEOUT, Status.EXPIRED) and network is not None:
        estimates.observe_timeout(now_ms, outcome.bytes_sent, network)
    else:
        estimates.unreachable_since_ms = None  # it reached the cloud (another reject, say): the link is there


class AdaptiveRuntime:
    """Runs each frame with the action `policy` picks from `options` (costs from a profile, accuracies from a
    benchmark), learning the link from every frame. Every frame ends with exactly one outcome."""

    def __init__(
        self,
        runtime: EdgeRuntime,
        policy: Policy,
        options: Sequence[ActionOption],
        prefilter: Prefilter | None = None,
        estimates: LinkEstimates | None = None,
        probe_interval_ms: float = 1000.0,
        clock_ms: Callable[[], float] = wall_clock_ms,
        cpu_contention: ContentionSampler | None = None,
    ) -> None:
        if not options:
            raise ValueError("the adaptive runtime needs at least one action option")
        self.runtime = runtime
        self.policy = policy
        self.options = list(options)
        self.prefilter = prefilter
        self.estimates = estimates or LinkEstimates()
        self.probes = ProbeSchedule(probe_interval_ms)
        self.clock_ms = clock_ms
        self.cpu_contention = cpu_contention  # other processes' load: the device estimate counts it from the next frame
        self.last: FrameOutcome | None = None
        self.decisions: collections.deque[Decision] = collections.deque(maxlen=1000)  # the latest ones
        self._heartbeat_rtt_ms: float | None = None

    def _cloud_up(self) -> bool:
        link = self.runtime.link
        return link is not None and getattr(link, "is_up", True)

    def _decide(self, budget_ms: float) -> tuple[Decision, LinkView]:
        heartbeat_rtt_ms = getattr(self.runtime.link, "heartbeat_rtt_ms", None)  # a FailoverLink measures it
        if heartbeat_rtt_ms is not None and heartbeat_rtt_ms != self._heartbeat_rtt_ms:
            self.estimates.observe_rtt(heartbeat_rtt_ms)
            self._heartbeat_rtt_ms = heartbeat_rtt_ms
        view = self.estimates.view(self._cloud_up(), self.clock_ms())
        decision = self.policy.decide(budget_ms, self.options, view)
        if decision.option.remote or not self.policy.uses_link_estimates:
            return decision, view
        if not self.probes.due(self.clock_ms(), self.estimates.throughput.last_sample_ms):
            return decision, view
        throughput = self.estimates.throughput
        probe = probe_decision(self.policy, budget_ms, self.options, view, throughput.initial_bps,
                               throughput.initial_log_sd)
        if probe is None:
            return decision, view
        throughput.last_sample_ms = self.clock_ms()  # one probe per interval
        return probe, view

    def infer(self, pixels: np.ndarray | Frame, budget_ms: float = 1000.0, source: str = "") -> FrameOutcome:
        """One frame (HWC uint8 pixels, or a `Frame`, whose deadline then sets the budget: the time it waited
        for the pipeline counts) with the action the policy picks now."""
        frame = pixels if isinstance(pixels, Frame) else None
        if frame is not None:
            image, source = frame.pixels, frame.source
            if frame.deadline_ms > 0:
                budget_ms = frame.deadline_ms - self.clock_ms()
        else:
            image = pixels
        if self.prefilter is not None and self.last is not None and not self.prefilter.admit(image):
            now_ms = self.clock_ms()
            return FrameOutcome(
                frame_id=frame.frame_id if frame is not None else self.runtime.next_frame_id(),
                action="skip",
                status=Status.SKIPPED,
                reason=f"prefilter ({self.prefilter.feature}): no change since frame {self.last.frame_id}; "
                f"its result is reused",
                top=list(self.last.top),
                logits=self.last.logits,
                source=source,
                capture_ms=frame.capture_ms if frame is not None else now_ms,
                deadline_ms=frame.deadline_ms if frame is not None else now_ms + budget_ms,
                done_ms=now_ms,
            )
        if self.prefilter is not None and self.last is None:
            self.prefilter.admit(image)  # the first frame becomes the reference
        if self.cpu_contention is not None:
            self.estimates.device.contention = self.cpu_contention.sample()
        decision, view = self._decide(budget_ms)
        self.decisions.append(decision)
        option = decision.option
        # what the policies' model gives the option's reply now (with the device times it judged it by), which its
        # outcome calibrates (a hedged option's; any remote one's for some policies)
        teaches = teaches_on_time(self.policy, option)
        model_chance = on_time_probability(decision.option_as_judged, budget_ms, view) if teaches else 0.0
        started_ms = self.clock_ms()
        outcome = self.runtime.infer(pixels, option.action, budget_ms=budget_ms, source=source)
        took_ms = self.clock_ms() - started_ms
        # the run is netted by a reading whose window covers it, not by the one it was decided with
        ran_under = self.cpu_contention.sample() if self.cpu_contention is not None else None
        self._observe_device(option, outcome, took_ms, ran_under)
        outcome.predicted_ms = decision.predicted_ms
        reply_in_time = outcome.ok and not outcome.missed_deadline and not outcome.hedge_answered
        if decision.reason.startswith("probe"):
            self.probes.record(reply_in_time)
        if teaches and "network" in outcome.trace_ms:  # the request went out: its reply came or not
            self.estimates.on_time.observe(self.clock_ms(), option.remote_key, model_chance, reply_in_time)
        observe_outcome(self.estimates, self.clock_ms(), outcome)
        if outcome.ok:
            self.last = outcome
        return outcome

    def _observe_device(self, option: ActionOption, outcome: FrameOutcome, took_ms: float,
                        contention: float | None) -> None:
        """What the frame says of the device's speed: its device part (until its request left, for a remote
        one) against the option's typical time, and a hedge's own time where it answered. A frame that ran
        something else (a fallback) or ended otherwise says nothing."""
        if outcome.action != option.key or outcome.status not in (Status.OK, Status.TIMEOUT, Status.EXPIRED):
            return
        sent_ms, hedge_ms = after_send(outcome.trace_ms, outcome.hedge_answered)
        if sent_ms is None and outcome.status is not Status.OK:
            return
        device = self.estimates.device
        device.observe(took_ms - (sent_ms or 0.0), option.typical_edge_ms, contention)
        if hedge_ms is not None and option.hedge is not None:
            device.observe(hedge_ms, option.hedge.typical_edge_ms, contention)

    def run(
        self, source: "FrameSource", budget_ms: float = 1000.0, stop: "asyncio.Event | None" = None, max_queue: int = 4
    ) -> AsyncIterator[FrameOutcome]:
        """`EdgeRuntime.run` with the action of every frame chosen by the policy (latest frame wins for a
        real-time source: a replaced frame ends `dropped`)."""
        from splitrt.edge.stream import run_stream

        return run_stream(self.runtime, source, budget_ms=budget_ms, stop=stop, max_queue=max_queue,
                          infer=self.infer, planned=f"policy:{self.policy.name}")
