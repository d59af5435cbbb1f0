"""The live decision loop: per frame, prefilter, ask the policy with live estimates, run, learn from it.

The estimators learn only from what frames observe. A remote frame's `network` stage (round trip minus the
cloud's queue and compute) is the RTT plus the upload: the smallest recent value stands for the RTT (a
windowed minimum, as BBR keeps) and the rest is the transfer. A frame that timed out bounds the rate from
above, and every Result carries the cloud's queue delay. When no remote frame has measured the link for
`probe_interval_ms` and the policy keeps a frame local, the frame runs the cheapest remote action instead,
if that would still meet its deadline at the rate the link was first believed to have: this is how a link
that came back is noticed, at the cost of one frame's risk per interval.
"""
from __future__ import annotations

import collections
from dataclasses import dataclass, field
from typing import Callable, Sequence

import numpy as np

from splitrt.clock import wall_clock_ms
from splitrt.edge.runtime import EdgeRuntime
from splitrt.frame import FrameOutcome, Status
from splitrt.policies.estimators import EwmaEstimator, ThroughputEstimator
from splitrt.policies.policies import ActionOption, Decision, LinkView, Policy, predict_ms
from splitrt.policies.prefilter import Prefilter



@dataclass
class LinkEstimates:
    """Live estimates of the uplink, the RTT and the cloud's queue, from frame outcomes (pure)."""

    initial_bps: float = 2e6
    initial_rtt_ms: float = 40.0
    rtt_window: int = 30
    retry_ms: float = 1000.0  # after a request could not even be sent, the cloud counts as away this long
    throughput: ThroughputEstimator = field(init=False)
    unreachable_since_ms: float | None = None
    queue_ms: EwmaEstimator = field(default_factory=EwmaEstimator)
    _network_ms: collections.deque[float] = field(init=False)

    def __post_init__(self) -> None:
        self.throughput = ThroughputEstimator(initial_bps=self.initial_bps)
        self._network_ms = collections.deque(maxlen=self.rtt_window)

    @property
    def rtt_ms(self) -> float:
        return min(self._network_ms) if self._network_ms else self.initial_rtt_ms

    def reachable(self, now_ms: float) -> bool:
        return self.unreachable_since_ms is None or now_ms - self.unreachable_since_ms >= self.retry_ms

    def view(self, cloud_up: bool, now_ms: float, deviations: float = 1.0) -> LinkView:
        return LinkView(
            bandwidth_bps=self.throughput.estimate_bps,
            cautious_bandwidth_bps=self.throughput.cautious_bps(deviations),
            rtt_ms=self.rtt_ms,
            cautious_rtt_ms=self.rtt_ms * 1.25,
            queue_ms=self.queue_ms.value,
            cloud_up=cloud_up and self.reachable(now_ms),
            bandwidth_log_sd=self.throughput.log_sd,
        )

    def observe(self, now_ms: float, outcome: FrameOutcome) -> None:
        if not outcome.bytes_sent:
            return
        network = outcome.trace_ms.get("network")
        if outcome.status is Status.FAILED and network is None:  # never left: no connection to the cloud
            self.unreachable_since_ms = now_ms
            return
        self.unreachable_since_ms = None
        if outcome.status is Status.OK and network is not None:
            self._network_ms.append(network)
            transfer_ms = max(network - self.rtt_ms, 0.5)
            self.throughput.observe(now_ms, outcome.bytes_sent, transfer_ms)
            self.queue_ms.observe(outcome.trace_ms.get("cloud_queue", 0.0))
        elif outcome.status is Status.TIMEOUT and network is not None:
            self.throughput.observe_timeout(now_ms, outcome.bytes_sent, max(network - self.rtt_ms, 0.5))


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
    ) -> None:
        if not options:
            raise ValueError("the adaptive runtime needs at least one action option")
        self.runtime = runtime
        self.policy = policy
        self.options = list(options)
        self.prefilter = prefilter
        self.estimates = estimates or LinkEstimates()
        self.probe_interval_ms = probe_interval_ms
        self.clock_ms = clock_ms
        self.last: FrameOutcome | None = None
        self.decisions: list[Decision] = []

    def _cloud_up(self) -> bool:
        link = self.runtime.link
        return link is not None and getattr(link, "is_up", True)

    def _decide(self, budget_ms: float) -> Decision:
        view = self.estimates.view(self._cloud_up(), self.clock_ms())
        decision = self.policy.decide(budget_ms, self.options, view)
        stale = self.clock_ms() - self.estimates.throughput.last_sample_ms >= self.probe_interval_ms
        if decision.option.remote or not stale or not view.cloud_up or not self.policy.uses_link_estimates:
            return decision
        # Probe: the link has not been measured for a while; try the cheapest remote action if it would fit
        # the deadline at the rate the link had before it was last doubted.
        remote = [o for o in self.options if o.remote]
        if not remote:
            return decision
        probe = min(remote, key=lambda o: o.payload_bytes)
        hopeful_ms = predict_ms(probe, max(self.estimates.throughput.initial_bps, view.bandwidth_bps), view.rtt_ms,
                                view.queue_ms)
        if hopeful_ms <= budget_ms:
            self.estimates.throughput.last_sample_ms = self.clock_ms()  # one probe per interval
            return Decision(probe, hopeful_ms, "probe: the link has not been measured lately")
        return decision

    def infer(self, pixels: np.ndarray, budget_ms: float, source: str = "") -> FrameOutcome:
        if self.prefilter is not None and self.last is not None and not self.prefilter.admit(pixels):
            outcome = FrameOutcome(
                frame_id=self.runtime.next_frame_id(),
                action="skip",
                status=Status.SKIPPED,
                reason=f"prefilter ({self.prefilter.feature}): no change since frame {self.last.frame_id}; "
                f"its result is reused",
                top=list(self.last.top),
                logits=self.last.logits,
                source=source,
            )
            return outcome
        if self.prefilter is not None and self.last is None:
            self.prefilter.admit(pixels)  # the first frame becomes the reference
        decision = self._decide(budget_ms)
        self.decisions.append(decision)
        outcome = self.runtime.infer(pixels, decision.option.action, budget_ms=budget_ms, source=source)
        self.estimates.observe(self.clock_ms(), outcome)
        if outcome.ok:
            self.last = outcome
        return outcome
