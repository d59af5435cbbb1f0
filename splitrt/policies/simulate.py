"""Replay an uplink trace against profiled latencies and measured per-image correctness.

The model matches the edge runtime: one frame at a time; a newer frame that arrives while the pipeline
is busy replaces any older waiting one (latest frame wins: the older ends `dropped`); a remote action
queues its bytes on the uplink behind earlier transfers; the edge waits for a reply no longer than the
frame's deadline (it ends `timeout`; a hedged action's frame ends then with its hedge's answer, on time if
the hedge, begun after the remote part's device work, has finished), but bytes already sent still occupy the
link. The policy sees the
edge's own estimates (`LinkEstimates`), fed what the edge would observe: a reply that arrived in time, when it
arrives, and a timeout (an upper bound on the rate) when the frame gives up, each timed from when the edge handed
the frame's bytes over (behind any of its earlier bytes still on the link); a hedged frame (any remote frame, for
`deadline-tracking`) also teaches the on-time calibration whether its reply came in time (`OnTimeCalibration`). While no
transfer has been seen for a while (`ProbeSchedule`) and the policy keeps a frame local, the frame runs the
action the policy would choose on a link as fast as first believed, when that is remote, or failing that a hedged
action it would choose on a somewhat faster link (`probe_decision`), as the edge does.
An option with measured device times (`edge_samples_ms`) takes a random one of them per frame (seeded, the same
for every policy: `_FrameCosts`), and one with measured times after the link (`cloud_samples_ms`) likewise for its
cloud part; a device time is drawn unless `frame_edge_ms` says what that frame's device time was for that action
(a measured run replayed: the device's speed then comes from the run, and what the simulator predicts is the
rest: link, cloud and policy). The oracles are told what they know (`OraclePolicy`: the link's future, also the
frame's drawn times, or the link's past) before they decide.
"""
from __future__ import annotations

import functools
import heapq
import math
from collections import Counter
from dataclasses import dataclass, field
from typing import Mapping, Sequence

import numpy as np

from splitrt.policies.estimators import PRIOR_UPLINK_BPS, LinkEstimates
from splitrt.policies.policies import (ActionOption, OraclePolicy, Policy, ProbeSchedule, on_time_probability,
                                       probe_decision, teaches_on_time)
from splitrt.policies.trace import PAYLOAD_BYTES, UplinkTrace


# What `oracle-past` knows of the link: how long a transfer begun at each of this many points of the last
# second took (those that have ended), and how many bytes it has queued that the link has not carried yet.
PAST_WINDOW_MS = 1000.0
PAST_STARTS = 100


@dataclass(frozen=True)
class SimConfig:
    fps: float = 15.0
    deadline_ms: float = 200.0
    duration_s: float | None = None  # default: the trace's length
    rtt_ms: float = 40.0
    queue_ms: float = 0.0
    probe_interval_ms: float = 1000.0  # the edge runtime's default
    initial_bps: float = PRIOR_UPLINK_BPS
    cautious_deviations: float = 1.0
    seed: int = 0  # for the draws of edge times from options' measured samples
    first_frame_ms: float = 0.0  # when the first frame is captured, after the trace's start (frames every 1/fps)


@dataclass(frozen=True)
class FrameRecord:
    frame_id: int
    capture_ms: float
    action: str  # "" for a dropped frame
    status: str  # ok | late | timeout | dropped
    latency_ms: float
    correct: bool
    bytes_sent: int
    hedge_answered: bool = False  # a hedged action's reply was late: the answer is its hedge's


@dataclass
class _Link:
    """The uplink: one transfer at a time, in order."""

    trace: UplinkTrace
    free_at_ms: float = 0.0
    _queued: list[tuple[float, float, int]] = field(default_factory=list)  # (begin, end, bytes) of each transfer

    def send(self, start_ms: float, size_bytes: int) -> float:
        """Queue a transfer handed over at `start_ms` (its transmission begins once earlier ones have ended); returns
        when its transmission ends."""
        begin = max(start_ms, self.free_at_ms)
        end = self.trace.transfer_end_ms(begin, size_bytes)
        self.free_at_ms = end
        # frames start one after another: a transfer over before this one's frame started concerns no later one
        self._queued = [q for q in self._queued if q[1] > start_ms]
        self._queued.append((begin, end, size_bytes))
        return end

    def unsent_bytes(self, now_ms: float) -> int:
        """Bytes queued before `now_ms` that the link has not carried by then (what the sender knows it has
        left to send, without knowing when it will have gone)."""
        carried_until = self.trace.opportunities_until(now_ms)
        return sum(max(0, size - max(0, carried_until - self.trace.opportunities_until(begin)) * PAYLOAD_BYTES)
                   for begin, end, size in self._queued if end > now_ms)

    def peek_ends(self, starts_ms: np.ndarray, size_bytes: int) -> np.ndarray:
        """When transfers queued at each of `starts_ms` would end (without queueing them)."""
        return self.trace.transfer_ends_ms(np.maximum(starts_ms, self.free_at_ms), size_bytes)


class _FrameCosts:
    """Each option's device and cloud time on each frame: drawn once per run from its measured samples (seeded),
    so every policy meets the same device on the same frame and a clairvoyant oracle knows the times it will get;
    or its point estimates without samples; a measured run's device time where `frame_edge_ms` has one for that
    action."""

    def __init__(self, options: Sequence[ActionOption], frames: int, seed: int,
                 frame_edge_ms: Mapping[int, Mapping[str, float]] | None) -> None:
        rng = np.random.default_rng(seed)
        unhedged = [o for o in options if o.hedge is None]  # a hedged option meets its remote part's times
        self._edge = {o.key: rng.choice(o.edge_samples_ms, frames) for o in unhedged if o.edge_samples_ms}
        self._cloud = {o.key: rng.choice(o.cloud_samples_ms, frames) for o in unhedged if o.cloud_samples_ms}
        self._measured = frame_edge_ms or {}
        self._distribution: dict[str, tuple[np.ndarray, np.ndarray]] = {}

    def distribution(self, option: ActionOption) -> tuple[np.ndarray, np.ndarray]:
        """(device ms, sorted cloud ms) that `option`'s frames are drawn from."""
        if option.key not in self._distribution:
            self._distribution[option.key] = (np.asarray(option.edge_samples_ms or (option.edge_ms,), dtype=float),
                                              np.sort(np.asarray(option.cloud_samples_ms or (option.cloud_ms,),
                                                                 dtype=float)))
        return self._distribution[option.key]

    def of(self, option: ActionOption, frame_id: int) -> tuple[float, float]:
        """(device ms, cloud ms) of `option` on frame `frame_id` (of its remote part, for a hedged one)."""
        key = option.remote_key
        measured = self._measured.get(frame_id, {}).get(key)
        if measured is not None:
            edge_ms = measured
        else:
            edge = self._edge.get(key)
            edge_ms = option.edge_ms if edge is None else float(edge[frame_id])
        cloud = self._cloud.get(key)
        return edge_ms, option.cloud_ms if cloud is None else float(cloud[frame_id])


@dataclass
class _Observations:
    """Estimator updates that become visible at a given time (when a reply would arrive), fed to the same
    `LinkEstimates` as the edge runtime keeps."""

    estimates: LinkEstimates
    pending: list[tuple[float, int, str, tuple[float | str, ...]]] = field(default_factory=list)
    _seq: int = 0

    def at(self, when_ms: float, kind: str, *values: float | str) -> None:
        self._seq += 1
        heapq.heappush(self.pending, (when_ms, self._seq, kind, values))

    def advance(self, now_ms: float) -> None:
        while self.pending and self.pending[0][0] <= now_ms:
            when, _, kind, values = heapq.heappop(self.pending)
            if kind == "reply":
                size_bytes, network_ms, queue_ms = values
                self.estimates.observe_reply(when, int(size_bytes), float(network_ms), float(queue_ms))
            elif kind == "timeout":
                size_bytes, network_ms = values
                self.estimates.observe_timeout(when, int(size_bytes), float(network_ms))
            else:  # on_time: a hedged frame's reply came in time or not
                key, model_chance, on_time = values
                self.estimates.on_time.observe(when, str(key), float(model_chance), bool(on_time))


def simulate(
    policy: Policy,
    options: Sequence[ActionOption],
    correctness: Mapping[str, np.ndarray],
    trace: UplinkTrace,
    config: SimConfig,
    payload_bytes: Mapping[str, np.ndarray] | None = None,
    frame_edge_ms: Mapping[int, Mapping[str, float]] | None = None,
) -> list[FrameRecord]:
    """Run `policy` over the trace; `correctness[key][i]` says whether action `key` is right on image i, and
    `payload_bytes[key][i]`, where given, what it sends for image i (an image codec's size depends on the image;
    otherwise every frame sends the option's `payload_bytes`). `frame_edge_ms[i]`, where given, holds the device ms
    of what ran in frame i of a measured run, by action key (a hedged frame: its remote part's, and its hedge's where
    the hedge ran to the end): the device time of frame i when the simulator runs that action (or part)."""
    duration_ms = (config.duration_s or trace.duration_s) * 1000.0
    frame_gap_ms = 1000.0 / config.fps
    captures = config.first_frame_ms + np.arange(0.0, duration_ms, frame_gap_ms)
    images = min(len(v) for v in correctness.values())
    link = _Link(trace)
    seen = _Observations(LinkEstimates(initial_bps=config.initial_bps, initial_rtt_ms=config.rtt_ms))
    throughput = seen.estimates.throughput
    records: list[FrameRecord] = []
    costs = _FrameCosts(options, len(captures), config.seed, frame_edge_ms)
    probes = ProbeSchedule(config.probe_interval_ms)
    edge_free_ms = 0.0
    for frame_id, capture_ms in enumerate(captures):
        start_ms = max(capture_ms, edge_free_ms)
        if frame_id + 1 < len(captures) and captures[frame_id + 1] <= start_ms:
            records.append(FrameRecord(frame_id, capture_ms, "", "dropped", 0.0, False, 0))
            continue
        seen.advance(start_ms)
        deadline_ms = capture_ms + config.deadline_ms
        view = seen.estimates.view(True, start_ms, config.cautious_deviations)
        if isinstance(policy, OraclePolicy):
            policy.outlook = functools.partial(_oracle_outlook, policy.knows, link, config, costs,
                                               payload_bytes, frame_id, capture_ms, start_ms)
        decision, probing = policy.decide(deadline_ms - start_ms, options, view), False
        option = decision.option
        if not option.remote and policy.uses_link_estimates and probes.due(start_ms, throughput.last_sample_ms):
            probe = probe_decision(policy, deadline_ms - start_ms, options, view, throughput.initial_bps,
                                   throughput.initial_log_sd)
            if probe is not None:  # as the edge runtime does: this frame measures the link
                decision, option, probing = probe, probe.option, True
                throughput.last_sample_ms = start_ms
        key = option.key
        # the chance the policies' model gives the option's reply now (with the device times it judged it by),
        # which its outcome will calibrate (a hedged option's; any remote one's for some policies)
        teaches = teaches_on_time(policy, option)
        model_chance = on_time_probability(decision.option_as_judged, deadline_ms - start_ms, view) if teaches else 0.0
        edge_ms, cloud_ms = costs.of(option, frame_id)
        seen.estimates.device.observe(edge_ms, option.typical_edge_ms)  # as the edge does at the frame's end
        image = frame_id % images
        bytes_sent, hedge_answered = 0, False
        if not option.remote:
            correct = bool(correctness[key][image])
            end_ms = start_ms + edge_ms
            status = "ok" if end_ms <= deadline_ms else "late"
        else:
            correct = bool(correctness[option.remote_key][image])
            size_bytes = _frame_bytes(option, frame_id, payload_bytes)
            # the edge times a transfer from when it hands the bytes over (`handed_ms`), as the runtime's `network`
            # stage does: a wait behind its own earlier bytes still on the link counts, and a timeout while they
            # block the link bounds the rate too
            handed_ms = start_ms + edge_ms
            sent_ms = link.send(handed_ms, size_bytes)
            reply_ms = sent_ms + config.rtt_ms + config.queue_ms + cloud_ms
            bytes_sent = size_bytes
            if reply_ms <= deadline_ms:  # a hedge still running is stopped: the reply is the answer
                end_ms, status = reply_ms, "ok"
                # what the edge measures: the round trip less the cloud's part (`cloud_ms`, its queue and compute)
                seen.at(reply_ms, "reply", size_bytes, sent_ms - handed_ms + config.rtt_ms, config.queue_ms)
            else:
                seen.at(deadline_ms, "timeout", size_bytes, deadline_ms - handed_ms)
                if option.hedge is None:
                    end_ms, status, correct = deadline_ms, "timeout", False
                else:  # the hedge ran after the send; its answer is taken once the reply is given up on
                    hedge_ms = costs.of(option.hedge, frame_id)[0]
                    seen.estimates.device.observe(hedge_ms, option.hedge.typical_edge_ms)
                    hedge_end_ms = start_ms + edge_ms + hedge_ms
                    end_ms = max(deadline_ms, hedge_end_ms)
                    status = "ok" if hedge_end_ms <= deadline_ms else "late"
                    correct, hedge_answered = bool(correctness[option.hedge.key][image]), True
            if teaches:
                seen.at(min(reply_ms, deadline_ms), "on_time", option.remote_key, model_chance,
                        float(reply_ms <= deadline_ms))
        if probing:
            probes.record(status == "ok" and not hedge_answered)
        edge_free_ms = end_ms
        records.append(FrameRecord(frame_id, capture_ms, key, status, end_ms - capture_ms, correct, bytes_sent,
                                   hedge_answered))
    return records


def _frame_bytes(option: ActionOption, frame_id: int, payload_bytes: Mapping[str, np.ndarray] | None) -> int:
    sizes = None if payload_bytes is None else payload_bytes.get(option.remote_key)
    return option.payload_bytes if sizes is None else int(sizes[frame_id % len(sizes)])


def _oracle_outlook(knows: str, link: _Link, config: SimConfig, costs: _FrameCosts,
                    payload_bytes: Mapping[str, np.ndarray] | None, frame_id: int, capture_ms: float, start_ms: float,
                    option: ActionOption) -> tuple[float, float, float | None]:
    """What an oracle that `knows` (`OraclePolicy`) is told of `option` on this frame: (probability that it ends
    by the deadline, expected latency ms, whether a hedge is in time when it knows that: see `Outlook`). "frame": this
    frame's own drawn times on the link's true future (probabilities 0 or 1); "future": over the option's measured
    device and cloud times (or its estimates) on the link's true future, its queue included; "past": likewise, with
    each transfer taking as long as one begun at any of `PAST_STARTS` points of the last `PAST_WINDOW_MS` took
    (`_past_transfer_ms`), behind the bytes still queued."""
    deadline_ms = capture_ms + config.deadline_ms
    hedge_chance = None
    if knows == "frame":
        edge_ms, cloud_ms = costs.of(option, frame_id)
        edges, clouds = np.array([edge_ms]), np.array([cloud_ms])
        if option.hedge is not None:
            hedge_chance = float(start_ms + edge_ms + costs.of(option.hedge, frame_id)[0] <= deadline_ms)
    else:
        edges, clouds = costs.distribution(option)
    if option.remote:
        size_bytes = _frame_bytes(option, frame_id, payload_bytes)
        if knows == "past":
            own_ms, with_backlog_ms = _past_transfer_ms(link.trace, start_ms, config.deadline_ms, size_bytes,
                                                        size_bytes + link.unsent_bytes(start_ms))
            if own_ms.size == 0:  # no past yet: nothing is known of the link
                return 0.0, math.inf, hedge_chance
            # its bytes leave once encoded and once the bytes still queued before them have gone
            sent_ms = (start_ms + np.maximum(edges[:, None] + own_ms[None, :], with_backlog_ms[None, :])).ravel()
        else:
            sent_ms = link.peek_ends(start_ms + edges, size_bytes)
        slack_ms = deadline_ms - sent_ms - config.rtt_ms - config.queue_ms
        chance = float(np.searchsorted(clouds, slack_ms, "right").mean()) / clouds.size
        end_ms = float(np.median(sent_ms)) + config.rtt_ms + config.queue_ms + float(np.median(clouds))
    else:
        chance = float(np.mean(start_ms + edges <= deadline_ms))
        end_ms = start_ms + float(np.median(edges))
    return chance, end_ms - capture_ms, hedge_chance


def _past_transfer_ms(trace: UplinkTrace, now_ms: float, horizon_ms: float,
                      *sizes_bytes: int) -> tuple[np.ndarray, ...]:
    """For each of `sizes_bytes`: how long a transfer of that size took when begun at each of `PAST_STARTS` points
    of the last `PAST_WINDOW_MS` (none before the trace's start), as known at `now_ms`: one that has not ended by
    then counts only once it has waited longer than `horizon_ms` (too slow for any frame, however long it will
    take), and then as that wait."""
    past_ms = now_ms - PAST_WINDOW_MS * np.arange(1, PAST_STARTS + 1) / PAST_STARTS
    past_ms = past_ms[past_ms >= 0.0]
    waited_ms = now_ms - past_ms
    ends_ms = [trace.transfer_ends_ms(past_ms, size) for size in sizes_bytes]
    known = np.logical_and.reduce([end <= now_ms for end in ends_ms]) | (waited_ms > horizon_ms)
    return tuple(np.where(end <= now_ms, end - past_ms, waited_ms)[known] for end in ends_ms)


def summarize(policy_name: str, records: Sequence[FrameRecord]) -> dict[str, object]:
    """The benchmark row of one policy run."""
    frames = len(records)
    answered = [r for r in records if r.status in ("ok", "late")]
    ended = [r for r in records if r.status != "dropped"]
    latencies = [r.latency_ms for r in ended]
    actions = Counter(r.action for r in ended)
    return {
        "policy": policy_name,
        "frames": frames,
        "deadline_hit": sum(r.status == "ok" for r in records) / frames if frames else 0.0,
        "accuracy": sum(r.correct for r in answered) / len(answered) if answered else 0.0,
        "accuracy_at_deadline": sum(r.correct and r.status == "ok" for r in records) / frames if frames else 0.0,
        "latency_p50_ms": float(np.percentile(latencies, 50)) if latencies else float("nan"),
        "latency_p95_ms": float(np.percentile(latencies, 95)) if latencies else float("nan"),
        "bytes_mean": sum(r.bytes_sent for r in records) / frames if frames else 0.0,
        "dropped": sum(r.status == "dropped" for r in records) / frames if frames else 0.0,
        "hedge_answered": sum(r.hedge_answered for r in records) / frames if frames else 0.0,
        "actions": {k: round(v / len(ended), 4) for k, v in sorted(actions.items())} if ended else {},
    }
