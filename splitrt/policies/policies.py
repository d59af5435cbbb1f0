"""Policies: given the frame's deadline, what each action costs, and what is known of the link, pick one.

Pure: no clock reads, no I/O. `static:<action>`, `latency` (least expected latency with live estimates,
Neurosurgeon's rule), `deadline` (the action with the highest expected accuracy at the deadline: its accuracy
times the probability that it arrives in time under the link's estimated spread; or, with rule "cautious",
the most accurate action that meets the deadline at the cautious estimates) and `oracle` (offline: knows the
true future of the link; `oracle-clairvoyant` also each frame's own device and cloud times; `oracle-past` the
link's exact past).
"""
from __future__ import annotations

import bisect
import functools
import math
from dataclasses import dataclass, field, replace
from typing import Callable, Mapping, Protocol, Sequence

import numpy as np

from splitrt.actions import Action, Local, Skip


@dataclass(frozen=True)
class ActionOption:
    """What an action costs and yields, from profiles and measured accuracy."""

    action: Action
    edge_ms: float  # on the device: head (or exit) + encode
    payload_bytes: int = 0  # on the uplink (0: nothing is sent)
    cloud_ms: float = 0.0  # decode + tail on the cloud
    accuracy: float = 0.0  # measured top-1 on real images
    # Measured edge times on the device (wall clock, ms), when known: a simulator draws each frame's from these.
    edge_samples_ms: tuple[float, ...] = ()
    # Measured times from the request's last byte on the link to the frame's end, less the RTT (the cloud's
    # queue and tail, the transport, the device receiving and merging the reply), when known: likewise.
    cloud_samples_ms: tuple[float, ...] = ()
    # A remote option's hedge: the local option the device runs while the request is in flight, whose answer
    # stands when the reply is late (`hedged`); its own costs and accuracy are the local option's.
    hedge: "ActionOption | None" = None

    @property
    def key(self) -> str:
        return self.action.describe()

    @property
    def remote_key(self) -> str:
        """The key without the hedge: what the device part, the bytes and the cloud's answer are of (an unhedged
        option and its hedged copy share it)."""
        return self.unhedged.key

    @property
    def unhedged(self) -> "ActionOption":
        """The option without its hedge (its remote part: the same costs and accuracy); itself if it has none."""
        return self if self.hedge is None else replace(self, action=replace(self.action, hedge=None), hedge=None)

    @functools.cached_property
    def _sorted_edge_samples_ms(self) -> tuple[float, ...]:
        return tuple(sorted(self.edge_samples_ms))

    @functools.cached_property
    def _sorted_hedge_ready_ms(self) -> tuple[float, ...]:
        """When a hedge's answer is ready: every sum of a remote-part device time and a hedge device time (their
        samples, else their estimates), sorted; computed once per option, not per frame."""
        assert self.hedge is not None
        first_ms = self.edge_samples_ms or (self.edge_ms,)
        then_ms = self.hedge.edge_samples_ms or (self.hedge.edge_ms,)
        return tuple(sorted(a + b for a in first_ms for b in then_ms))

    def share_within_ms(self, budget_ms: float) -> float:
        """The share of its device times within `budget_ms` (from the samples; else 1 or 0 by the estimate)."""
        if not self.edge_samples_ms:
            return 1.0 if self.edge_ms <= budget_ms else 0.0
        return bisect.bisect_right(self._sorted_edge_samples_ms, budget_ms) / len(self.edge_samples_ms)

    @functools.cached_property
    def typical_edge_ms(self) -> float:
        """The median of its device times (the point estimate without samples)."""
        return float(np.median(self.edge_samples_ms)) if self.edge_samples_ms else self.edge_ms

    @functools.cached_property
    def cautious_edge_ms(self) -> float:
        """The edge time exceeded only one frame in ten (p90 of the samples); the point estimate without them."""
        return float(np.percentile(self.edge_samples_ms, 90)) if self.edge_samples_ms else self.edge_ms

    @property
    def remote(self) -> bool:
        return not isinstance(self.action, (Local, Skip))


def hedged(option: ActionOption, fallback: ActionOption) -> ActionOption:
    """`option` (remote) with `fallback` (local) as its hedge: after sending, the device runs `fallback`, and its
    answer stands if the cloud's has not come by the deadline."""
    if not option.remote or fallback.remote or not isinstance(fallback.action, Local) or option.hedge is not None:
        raise ValueError(f"a hedge is a local action for an unhedged remote one, not {fallback.key} for {option.key}")
    return replace(option, action=replace(option.action, hedge=fallback.action), hedge=fallback)


def with_best_hedges(options: Sequence[ActionOption], budget_ms: float) -> list[ActionOption]:
    """`options` and, for each unhedged remote one, a hedged copy (`hedged`) whose hedge is the local option with
    the highest accuracy x probability of being in time after that remote part's device work (none where no local
    option can be)."""
    local = [o for o in options if not o.remote and isinstance(o.action, Local)]
    extra: list[ActionOption] = []
    for option in options:
        if not option.remote or option.hedge is not None or not local:
            continue
        value, best = max(((o.accuracy * o.share_within_ms(budget_ms - option.edge_ms), o) for o in local),
                          key=lambda pair: (pair[0], -pair[1].edge_ms))
        if value > 0.0:
            extra.append(hedged(option, best))
    return [*options, *extra]


def on_slower_device(option: ActionOption, factor: float) -> ActionOption:
    """`option` on a device `factor` times slower than its measured times (its hedge likewise)."""
    return replace(option, edge_ms=option.edge_ms * factor,
                   edge_samples_ms=tuple(v * factor for v in option.edge_samples_ms),
                   hedge=None if option.hedge is None else on_slower_device(option.hedge, factor))


def hedge_on_time_probability(option: ActionOption, budget_ms: float) -> float:
    """Probability that `option`'s hedge has its answer by the deadline: it starts once the remote part's device
    work (head, encode) is done, so over every pair of the two device times (their samples, else their estimates),
    drawn independently, as the simulator draws them. Not the hedge's times after the remote part's median: where
    the hedge's slowest times end just inside the deadline after a median encode, that read as a sure hedge, and a
    hedged action on a link that could not carry it looked better than its hedge alone (late on 3% of frames).
    0 for an option without a hedge."""
    if option.hedge is None:
        return 0.0
    ready_ms = option._sorted_hedge_ready_ms
    return bisect.bisect_right(ready_ms, budget_ms) / len(ready_ms)


def expected_accuracy(option: ActionOption, chance: float, budget_ms: float,
                      hedge_chance: float | None = None) -> float:
    """The accuracy at the deadline that `option` is expected to reach when its own answer is in time with
    probability `chance`: a hedged option's hedge answers the frames whose reply is late, when it is in time
    (with probability `hedge_chance`, else `hedge_on_time_probability`)."""
    value = chance * option.accuracy
    if option.hedge is not None:
        in_time = hedge_on_time_probability(option, budget_ms) if hedge_chance is None else hedge_chance
        value += (1.0 - chance) * in_time * option.hedge.accuracy
    return value


@dataclass(frozen=True)
class LinkView:
    """What the edge believes about the link when it decides."""

    bandwidth_bps: float
    cautious_bandwidth_bps: float
    rtt_ms: float
    cautious_rtt_ms: float
    queue_ms: float = 0.0
    cloud_up: bool = True
    bandwidth_log_sd: float = 0.0  # spread of ln(bandwidth) around the estimate (0: the estimate is certain)
    # The estimate and its spread relaxed towards the link's recent past while nothing was observed
    # (`ThroughputEstimator.relaxed`), when known: what a hedged action is judged by, since its hedge bounds what a
    # bet on a stale estimate can lose. None: hedged actions are judged by the estimate as the others are.
    relaxed_bandwidth_bps: float | None = None
    relaxed_log_sd: float | None = None
    # Per remote part (`ActionOption.remote_key`), its on-time calibration, learnt from its hedged frames
    # (`OnTimeCalibration`); a key not here is taken as the model gives it.
    on_time_calibration: Mapping[str, PlattScaling] = field(default_factory=dict, hash=False)
    # How much slower the device runs now than the options' measured times (`DeviceSlowdown`); policies that
    # track the device scale those times by it.
    device_slowdown: float = 1.0


@dataclass(frozen=True)
class Decision:
    option: ActionOption
    predicted_ms: float
    reason: str
    device_slowdown: float = 1.0  # what the policy scaled the options' device times by (deadline-tracking)

    @property
    def option_as_judged(self) -> ActionOption:
        """The option with the device times the policy judged it by (its on-time chance is of this one)."""
        return self.option if self.device_slowdown == 1.0 else on_slower_device(self.option, self.device_slowdown)


def on_time_probability(option: ActionOption, budget_ms: float, link: LinkView) -> float:
    """Probability that `option` ends within `budget_ms`. A local one: the share of its measured device times
    within the budget (or whether its estimate is). A remote one: whether the uplink rate reaches what its bytes
    need in the time left after edge, cautious RTT, queue and cloud, with ln(rate) taken as normal around the
    estimate with sd `link.bandwidth_log_sd` (a hedged one: around the relaxed estimate, where the view has one)."""
    if not option.remote:
        return option.share_within_ms(budget_ms)
    bandwidth_bps, log_sd = link.bandwidth_bps, link.bandwidth_log_sd
    if option.hedge is not None and link.relaxed_bandwidth_bps is not None:
        bandwidth_bps = link.relaxed_bandwidth_bps
        log_sd = log_sd if link.relaxed_log_sd is None else link.relaxed_log_sd
    if log_sd <= 0.0:
        return 1.0 if predict_ms(option, bandwidth_bps, link.cautious_rtt_ms, link.queue_ms) <= budget_ms else 0.0
    slack_ms = budget_ms - option.edge_ms - link.cautious_rtt_ms - link.queue_ms - option.cloud_ms
    if slack_ms <= 0.0:
        return 0.0
    if option.payload_bytes <= 0:
        return 1.0
    needed_bps = option.payload_bytes * 8 / slack_ms * 1000.0
    z = (math.log(max(bandwidth_bps, 1.0)) - math.log(needed_bps)) / log_sd
    return 0.5 * math.erfc(-z / math.sqrt(2.0))


# The model's chances are kept this far from 0 and 1 before calibration, so that its logit is finite.
CHANCE_CLIP = 1e-3


def logit(chance: float) -> float:
    clipped = min(max(chance, CHANCE_CLIP), 1.0 - CHANCE_CLIP)
    return math.log(clipped / (1.0 - clipped))


@dataclass(frozen=True)
class PlattScaling:
    """A calibration of the model's on-time chance p: sigmoid(a + b * logit(p)), the identity at (0, 1). Where it
    lowers p, it lowers it by `pessimism` of the way (1: all of it). An action whose calibration says it is worse
    than the model thinks stops being sent, and then nothing corrects that verdict; one said to be better is
    sent and corrected by its outcomes. So the learner (`OnTimeCalibration`) lets an old verdict's pessimism
    fade, and not its optimism."""

    a: float = 0.0
    b: float = 1.0
    pessimism: float = 1.0

    def __call__(self, chance: float) -> float:
        x = self.a + self.b * logit(chance)
        scaled = 1.0 / (1.0 + math.exp(-x)) if x >= 0.0 else math.exp(x) / (1.0 + math.exp(x))  # no overflow
        return scaled if scaled >= chance else chance - self.pessimism * (chance - scaled)


def calibrated_chance(chance: float, scaling: PlattScaling | None) -> float:
    """The on-time chance `chance` (the model's, `on_time_probability`) through `scaling`; None is the identity,
    and a chance of 0 (no time left for the transfer) stays 0."""
    if scaling is None or chance <= 0.0:
        return chance
    return scaling(chance)


def predict_ms(option: ActionOption, bandwidth_bps: float, rtt_ms: float, queue_ms: float,
               edge_ms: float | None = None) -> float:
    """Expected capture-to-result latency of an option at a given link state (`edge_ms`: instead of the
    option's own estimate of its device time)."""
    edge_ms = option.edge_ms if edge_ms is None else edge_ms
    if not option.remote:
        return edge_ms
    transfer_ms = option.payload_bytes * 8 / max(bandwidth_bps, 1.0) * 1000.0
    return edge_ms + transfer_ms + rtt_ms + queue_ms + option.cloud_ms


class Policy(Protocol):
    name: str
    uses_link_estimates: bool  # whether the edge should keep measuring the link (probes) for it

    def decide(self, budget_ms: float, options: Sequence[ActionOption], link: LinkView) -> Decision: ...


def _usable(options: Sequence[ActionOption], link: LinkView) -> list[ActionOption]:
    usable = [o for o in options if not o.remote or link.cloud_up]
    if not usable:
        raise ValueError("no usable action: the cloud is down and no local action is configured")
    return usable


def _fastest_local(options: Sequence[ActionOption]) -> ActionOption | None:
    local = [o for o in options if not o.remote]
    return min(local, key=lambda o: o.edge_ms) if local else None


@dataclass(frozen=True)
class StaticPolicy:
    """Always the same action (the baseline every benchmark compares against)."""

    key: str
    uses_link_estimates: bool = False

    @property
    def name(self) -> str:
        return f"static:{self.key}"

    def decide(self, budget_ms: float, options: Sequence[ActionOption], link: LinkView) -> Decision:
        for option in options:
            if option.key == self.key:
                return Decision(option, predict_ms(option, link.bandwidth_bps, link.rtt_ms, link.queue_ms), "static")
        raise KeyError(f"static policy: no action {self.key!r} among {[o.key for o in options]}")


@dataclass(frozen=True)
class LatencyPolicy:
    """Neurosurgeon's rule with live estimates: among the ways to run the full model (accuracy within
    `tolerance` of the best), the one with the least expected latency; deadlines and lossy variants ignored."""

    name: str = "latency"
    uses_link_estimates: bool = True
    tolerance: float = 0.005

    def decide(self, budget_ms: float, options: Sequence[ActionOption], link: LinkView) -> Decision:
        usable = _usable(options, link)
        best_accuracy = max(o.accuracy for o in usable)
        usable = [o for o in usable if o.accuracy >= best_accuracy - self.tolerance]
        scored = [(predict_ms(o, link.bandwidth_bps, link.rtt_ms, link.queue_ms), o) for o in usable]
        predicted, best = min(scored, key=lambda pair: (pair[0], -pair[1].accuracy))
        return Decision(best, predicted, "least expected latency")


DEVICE_STEP = 0.05  # ln of the device slowdown a tracking policy scales by: 5% steps, nothing below the first


def device_steps(slowdown: float) -> int:
    """The device slowdown a tracking policy scales by, in whole DEVICE_STEPs of its log: the nearest step, and 0
    within one step of 1 (noise does not re-plan). Rounded, not truncated: truncating took a 1.2x device as 1.16x,
    under which an action at 97% of the deadline still looked in time."""
    log_slowdown = math.log(slowdown)
    return 0 if abs(log_slowdown) < DEVICE_STEP else round(log_slowdown / DEVICE_STEP)


@dataclass(frozen=True)
class DeadlinePolicy:
    """The action with the highest expected accuracy at the deadline; else the fastest local fallback.

    rule "expected" (default): each action scores its accuracy times the probability that it ends in time
    (`on_time_probability`: the link's rate as log-normal around the estimate, the cautious RTT; for a local
    action the share of its measured device times within the budget). A remote action is thus taken only when
    its gain over the best sure local action pays for its risk of a timeout: a 7% better action must arrive
    with probability above 93%, a far better one may take more risk. A hedged remote action (`hedged`) scores
    what its hedge adds on the frames whose reply is late (`expected_accuracy`): its risk costs only the
    difference between the two answers. With no spread known (sd 0, no samples) this is the most accurate action
    that fits at the estimates.

    rule "cautious": the most accurate action whose cautious latency meets the budget (bandwidth estimate minus
    the `deviations` the view was built with, RTT plus its deviations, the device time nine frames in ten stay
    under), whatever the accuracy gained. Among equally good actions the fastest wins, which leaves room for
    the unexpected.
    """

    name: str = "deadline"
    margin_ms: float = 0.0
    uses_link_estimates: bool = True
    rule: str = "expected"
    calibrated: bool = True
    # Scale the options' device times by the view's `device_slowdown` (in steps of DEVICE_STEP, once it is a step
    # away from 1): a device that slowed since its options were measured is taken as it is now.
    tracks_device: bool = False
    # Learn the on-time calibration from unhedged remote frames too, not only hedged ones (`teaches_on_time`): on
    # a device that slowed, hedges often no longer fit after an encode, and unhedged frames are all there is.
    on_time_from_unhedged: bool = False
    _on_device: dict[int, tuple[Sequence[ActionOption], list[ActionOption]]] = field(
        default_factory=dict, compare=False, hash=False, repr=False)

    def chance(self, option: ActionOption, budget_ms: float, link: LinkView) -> float:
        """The probability that `option`'s own answer is in time, as this policy takes it."""
        chance = on_time_probability(option, budget_ms, link)
        if self.calibrated and option.remote:
            return calibrated_chance(chance, link.on_time_calibration.get(option.remote_key))
        return chance

    def decide(self, budget_ms: float, options: Sequence[ActionOption], link: LinkView) -> Decision:
        steps = device_steps(link.device_slowdown) if self.tracks_device else 0
        if steps == 0:
            return self._decide(budget_ms, options, link)
        factor = math.exp(steps * DEVICE_STEP)
        cached = self._on_device.get(steps)
        if cached is None or cached[0] is not options:  # scaled once per step and options list
            cached = (options, [on_slower_device(o, factor) for o in options])
            self._on_device[steps] = cached
        scaled = cached[1]
        decision = self._decide(budget_ms, scaled, link)
        chosen = next(i for i, o in enumerate(scaled) if o is decision.option)
        return replace(decision, option=options[chosen],  # the option as given: its samples are the device's own
                       reason=f"{decision.reason}; device x{factor:.2f}", device_slowdown=factor)

    def _decide(self, budget_ms: float, options: Sequence[ActionOption], link: LinkView) -> Decision:
        usable = _usable(options, link)
        budget = budget_ms - self.margin_ms
        if self.rule == "expected":
            scored = [(self.chance(o, budget, link), o) for o in usable]
            possible = [(p, o) for p, o in scored if p > 0.0 or hedge_on_time_probability(o, budget) > 0.0]
            if possible:
                chance, best = max(possible, key=lambda pair: (expected_accuracy(pair[1], pair[0], budget), pair[0],
                                                               -predict_ms(pair[1], link.bandwidth_bps,
                                                                           link.cautious_rtt_ms, link.queue_ms)))
                predicted = predict_ms(best, link.bandwidth_bps, link.cautious_rtt_ms, link.queue_ms)
                return Decision(best, predicted, f"highest expected accuracy (on time with p={chance:.2f})")
            scored_ms = [(predict_ms(o, link.bandwidth_bps, link.cautious_rtt_ms, link.queue_ms), o) for o in usable]
        elif self.rule == "cautious":
            scored_ms = [(predict_ms(o, link.cautious_bandwidth_bps, link.cautious_rtt_ms, link.queue_ms,
                                     o.cautious_edge_ms), o) for o in usable]
            feasible = [(p, o) for p, o in scored_ms if p <= budget]
            if feasible:
                predicted, best = max(feasible, key=lambda pair: (pair[1].accuracy, -pair[0]))
                return Decision(best, predicted, "most accurate within the deadline")
        else:
            raise ValueError(f"unknown deadline rule {self.rule!r}: use expected or cautious")
        local = [(p, o) for p, o in scored_ms if not o.remote]
        if local:
            predicted, best = min(local, key=lambda pair: pair[0])
            return Decision(best, predicted, "nothing meets the deadline: fastest local")
        predicted, best = min(scored_ms, key=lambda pair: pair[0])
        return Decision(best, predicted, "nothing meets the deadline: fastest")


# A probe's second hope: the link this many spreads (of its log rate, as first believed) faster than first
# believed. Optimism in the face of uncertainty: at the rate first believed a remote action may fall just short of
# paying, and then no probe was ever sent: a link that ran at several times that rate was never measured again.
PROBE_OPTIMISM_SDS = 2.0


def _unless_none(pick: Callable[[float, float], float], value: float | None, other: float) -> float | None:
    return None if value is None else pick(value, other)


def probe_decision(policy: Policy, budget_ms: float, options: Sequence[ActionOption], link: LinkView,
                   hopeful_bps: float, hopeful_log_sd: float) -> Decision | None:
    """For a frame that `policy` keeps local while the link has not been measured lately: what the policy
    would choose if the link were as fast as first believed (`hopeful_bps`), when that is remote; failing that,
    what it would choose if the link were `PROBE_OPTIMISM_SDS` spreads faster (`hopeful_log_sd`: the spread of the
    log rate first believed), when that is a hedged remote action. Running the frame that way measures the link
    again, at the risk of that one frame (see `ProbeSchedule` for how often); a remote action no better than
    local under either hope is never tried.

    The optimistic hope probes only with a hedged action, whose loss when the reply is late is bounded by its
    hedge's answer: an unhedged probe at that hope lost whole frames to short bursts of capacity. It comes second
    because it picks larger transfers, and a large transfer that times out pins the rate estimate low. It hopes for
    the spread first believed too, not more: a timeout widens the estimate's spread, and judged with that spread a
    hedged action may never pay at the hoped rate, so that after one late probe the link was never measured again
    (a 4x cellular trace: 300 s local while it carried 3 Mbit/s on average)."""
    if not link.cloud_up:
        return None
    optimistic_bps = hopeful_bps * math.exp(PROBE_OPTIMISM_SDS * hopeful_log_sd)
    hopes = ((hopeful_bps, False, "probe: the link has not been measured lately"),
             (optimistic_bps, True, "probe: the link has not been measured lately; hoping it is faster"))
    for hope_bps, hedged_only, reason in hopes:
        most_log_sd = hopeful_log_sd if hedged_only else math.inf
        hopeful = replace(link, bandwidth_bps=max(hope_bps, link.bandwidth_bps),
                          cautious_bandwidth_bps=max(hope_bps, link.cautious_bandwidth_bps),
                          relaxed_bandwidth_bps=_unless_none(max, link.relaxed_bandwidth_bps, hope_bps),
                          bandwidth_log_sd=min(link.bandwidth_log_sd, most_log_sd),
                          relaxed_log_sd=_unless_none(min, link.relaxed_log_sd, most_log_sd))
        decision = policy.decide(budget_ms, options, hopeful)
        if decision.option.remote and (decision.option.hedge is not None or not hedged_only):
            return replace(decision, reason=reason)
    return None


@dataclass
class ProbeSchedule:
    """When a frame may probe the link: `interval_ms` after its last measurement, doubled after each probe that
    did not arrive in time (up to `max_backoff` times), back to `interval_ms` after one that did: a link that
    stays down costs ever fewer frames, one that comes back is found within `interval_ms * max_backoff`."""

    interval_ms: float = 1000.0
    max_backoff: int = 8
    failures: int = 0

    def due(self, now_ms: float, last_sample_ms: float) -> bool:
        return now_ms - last_sample_ms >= self.interval_ms * min(2 ** self.failures, self.max_backoff)

    def record(self, arrived: bool) -> None:
        self.failures = 0 if arrived else self.failures + 1


# What the simulator tells an oracle of an option before it decides: (probability that it ends in time, its
# expected capture-to-result latency in ms, and for a hedged option the probability that its hedge is in time
# when the oracle knows it for this frame, else None).
Outlook = Callable[[ActionOption], tuple[float, float, float | None]]
# What an oracle knows (the simulator computes its outlook from that): the link's true future; the future and
# each frame's own drawn device and cloud times; or only the link's exact past.
ORACLE_KNOWLEDGE = {"oracle": "future", "oracle-clairvoyant": "frame", "oracle-past": "past"}


@dataclass
class OraclePolicy:
    """Offline bounds: told each option's chance to end in time before it decides, and taking the highest
    expected accuracy at the deadline (accuracy x that chance), as `deadline` does from its estimates.

    knows "future" (`oracle`, the upper bound): the link's true future, its queue included; the chance averages
    over the option's measured device and cloud times, as the deadline policy's does. "frame"
    (`oracle-clairvoyant`): also this frame's own device and cloud times (the chance is 0 or 1), a profit from
    per-frame luck that no policy deciding before the frame runs can have. "past" (`oracle-past`): only the
    link's exact past (how long transfers begun in the last second took, those that have ended), more than any
    edge measures from its own transfers: a reference for how much of the oracle's gain knowing the past buys
    (not a bound: a greedy rule over a short window)."""

    knows: str = "future"
    outlook: Outlook | None = None
    uses_link_estimates: bool = False

    def __post_init__(self) -> None:
        if self.knows not in ORACLE_KNOWLEDGE.values():
            raise ValueError(f"an oracle knows one of {sorted(ORACLE_KNOWLEDGE.values())}, not {self.knows!r}")

    @property
    def name(self) -> str:
        return next(name for name, knows in ORACLE_KNOWLEDGE.items() if knows == self.knows)

    def decide(self, budget_ms: float, options: Sequence[ActionOption], link: LinkView) -> Decision:
        if self.outlook is None:
            raise RuntimeError("an oracle needs the simulator to tell it each option's outlook")
        scored = []  # (chance, predicted ms, the hedge's chance, option)
        for option in _usable(options, link):
            chance, predicted, hedge_chance = self.outlook(option)
            if hedge_chance is None:
                hedge_chance = hedge_on_time_probability(option, budget_ms)
            scored.append((chance, predicted, hedge_chance, option))
        possible = [s for s in scored if s[0] > 0.0 or s[2] > 0.0]  # on time itself, or answered by its hedge
        if possible:
            chance, predicted, _, best = max(possible, key=lambda s: (expected_accuracy(s[3], s[0], budget_ms, s[2]),
                                                                      s[0], -s[1]))
            return Decision(best, predicted, f"highest expected accuracy ({self.knows} known, on time with "
                                             f"p={chance:.2f})")
        _, predicted, _, best = min(scored, key=lambda s: s[1])
        return Decision(best, predicted, f"nothing on time: fastest ({self.knows} known)")


def teaches_on_time(policy: Policy, option: ActionOption) -> bool:
    """Whether a frame of `option` teaches the on-time calibration (its reply came in time or not) under
    `policy`: a hedged remote frame always; an unhedged one for a policy that asks for it."""
    return option.remote and (option.hedge is not None or getattr(policy, "on_time_from_unhedged", False))


def make_policy(name: str) -> Policy:
    """`static:<action key>`, `latency`, `deadline` (`deadline-uncalibrated`: without the on-time calibration of
    hedged actions; `deadline-tracking`: with the device's times scaled to how fast it runs now, and the on-time
    calibration learnt from unhedged remote frames too), or an oracle
    (`ORACLE_KNOWLEDGE`)."""
    if name.startswith("static:"):
        return StaticPolicy(name.removeprefix("static:"))
    if name == "latency":
        return LatencyPolicy()
    if name == "deadline":
        return DeadlinePolicy()
    if name == "deadline-uncalibrated":
        return DeadlinePolicy(name=name, calibrated=False)
    if name == "deadline-tracking":
        return DeadlinePolicy(name=name, tracks_device=True, on_time_from_unhedged=True)
    if name in ORACLE_KNOWLEDGE:
        return OraclePolicy(ORACLE_KNOWLEDGE[name])
    raise ValueError(f"unknown policy {name!r}: use static:<action>, latency, deadline, deadline-uncalibrated, "
                     f"deadline-tracking or {', '.join(ORACLE_KNOWLEDGE)}")
