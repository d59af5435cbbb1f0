"""Hedged remote actions: the device runs a local action while the request is in flight, and its answer stands
when the cloud's is late. Parsing, the policies' expected accuracy, the simulator, and the runtime against a
real service, a silent cloud and a refused request."""
from __future__ import annotations

import contextlib
import dataclasses

import numpy as np
import pytest

from splitrt.actions import Local, Offload, Split, parse_action
from splitrt.policies.options_file import action_from_key
from splitrt.bundle import Bundle
from splitrt.edge.link import CloudLink
from splitrt.edge.metrics import EdgeMetrics
from splitrt.edge.runtime import EdgeRuntime
from splitrt.frame import Status
from splitrt.policies.estimators import LinkEstimates, OnTimeCalibration
from splitrt.policies.policies import (
    ActionOption,
    DeadlinePolicy,
    LinkView,
    OraclePolicy,
    PlattScaling,
    StaticPolicy,
    calibrated_chance,
    expected_accuracy,
    hedge_on_time_probability,
    hedged,
    make_policy,
    on_time_probability,
    teaches_on_time,
    with_best_hedges,
)
from splitrt.policies.simulate import SimConfig, simulate, summarize
from splitrt.policies.trace import PACKET_BYTES, UplinkTrace
from splitrt.protocol import Limits
from tests.conftest import RunningService, silent_cloud_link, start_service
from tests.test_policies import on_off_trace

SKIP = ActionOption(Local("skip9"), edge_ms=40.0, accuracy=0.50)
FULL = ActionOption(Local(), edge_ms=90.0, accuracy=0.88)  # too slow for the 70 ms deadline
JPEG = ActionOption(Offload("jpeg-q25"), edge_ms=5.0, payload_bytes=5_000, cloud_ms=10.0, accuracy=0.75)
OPTIONS = [SKIP, FULL, JPEG]


def test_a_hedged_action_names_its_hedge_and_parses_back() -> None:
    action = Offload("jpeg-q25", hedge=Local("skip9"))
    assert action.describe() == "offload/jpeg-q25/hedge:local@skip9"
    assert parse_action(action.describe()) == action == action_from_key(action.describe())
    split = Split("b7", "q8+zstd", hedge=Local())
    assert parse_action(split.describe()) == split == action_from_key(split.describe())
    assert parse_action("b4/fp16/hedge:local@skip2") == Split("b4", "fp16", hedge=Local("skip2"))
    with pytest.raises(ValueError, match="a hedge runs on the device"):
        parse_action("offload/jpeg-q25/hedge:b4")
    with pytest.raises(ValueError, match="only a split or an offload"):
        parse_action("local/hedge:local")


def test_a_hedge_must_be_local_and_its_remote_part_unhedged() -> None:
    option = hedged(JPEG, SKIP)
    assert option.key == "offload/jpeg-q25/hedge:local@skip9" and option.hedge is SKIP
    with pytest.raises(ValueError):
        hedged(SKIP, SKIP)
    with pytest.raises(ValueError):
        hedged(JPEG, JPEG)
    with pytest.raises(ValueError):
        hedged(option, SKIP)


def test_expected_accuracy_counts_the_hedge_on_the_frames_whose_reply_is_late() -> None:
    option = hedged(JPEG, SKIP)
    assert expected_accuracy(JPEG, 0.6, 70.0) == pytest.approx(0.6 * 0.75)
    assert expected_accuracy(option, 0.6, 70.0) == pytest.approx(0.6 * 0.75 + 0.4 * 0.50)
    # A hedge that cannot finish after the remote part's device work adds nothing.
    assert expected_accuracy(option, 0.6, 40.0) == pytest.approx(0.6 * 0.75)


def test_a_hedge_is_timed_over_the_remote_parts_device_times_not_after_its_median() -> None:
    """The hedge starts when the encode ends: an encode of 5 or 15 ms and a hedge of 95 or 100 ms end by 110 ms in
    three pairs of four. After the median encode (10 ms) both hedge times fit, and the hedge read as sure: on a link
    that could not carry the request, the hedged action then looked better than its hedge run alone, for any
    chance of a reply, and was late whenever a slow encode met a slow hedge."""
    encode = dataclasses.replace(JPEG, edge_ms=10.0, edge_samples_ms=(5.0, 15.0))
    skip = dataclasses.replace(SKIP, edge_ms=97.5, edge_samples_ms=(95.0, 100.0), accuracy=0.8)
    option = hedged(encode, skip)
    assert hedge_on_time_probability(option, 110.0) == pytest.approx(0.75)
    assert hedge_on_time_probability(option, 115.0) == 1.0 and hedge_on_time_probability(option, 99.0) == 0.0
    dead_link = LinkView(1e3, 1e3, 40.0, 40.0, bandwidth_log_sd=0.5)  # the request's chance: all but zero
    assert 0.0 < on_time_probability(option, 110.0, dead_link) < 1e-6
    chosen = DeadlinePolicy(calibrated=False).decide(110.0, [skip, encode, option], dead_link).option
    assert chosen is skip  # 0.8 x 1 against 0.8 x 0.75


def test_best_hedges_pick_the_local_action_most_likely_right_and_in_time() -> None:
    options = with_best_hedges(OPTIONS, 70.0)
    assert [o.key for o in options[3:]] == ["offload/jpeg-q25/hedge:local@skip9"], "full local misses 70 ms"
    assert [o.key for o in with_best_hedges(OPTIONS, 200.0)[3:]] == ["offload/jpeg-q25/hedge:local"]
    assert with_best_hedges(OPTIONS, 30.0) == OPTIONS, "no local action fits: no hedge"


def test_a_hedged_policy_risks_the_link_where_an_unhedged_one_would_not() -> None:
    # 5 KB in the 70 - 5 - 40 - 10 = 15 ms left needs 2.7 Mbit/s; the link is believed to carry 2 with a wide
    # spread: JPEG alone is on time with p ~0.3 (0.22 expected, below skip9's 0.50), hedged it is worth ~0.57.
    link = LinkView(2e6, 1e6, 40.0, 40.0, bandwidth_log_sd=1.0)
    assert DeadlinePolicy().decide(70.0, OPTIONS, link).option is SKIP
    chosen = DeadlinePolicy().decide(70.0, with_best_hedges(OPTIONS, 70.0), link).option
    assert chosen.key == "offload/jpeg-q25/hedge:local@skip9"


def test_in_the_simulator_a_late_reply_leaves_the_hedges_answer_in_time() -> None:
    trace = on_off_trace(8e6, on_ms=5000, off_ms=5000)
    config = SimConfig(fps=5, deadline_ms=70, rtt_ms=40, duration_s=15, initial_bps=8e6)
    options = with_best_hedges(OPTIONS, config.deadline_ms)
    correctness = {SKIP.key: np.zeros(10, bool), FULL.key: np.ones(10, bool), JPEG.key: np.ones(10, bool)}
    rows = {}
    for policy in [StaticPolicy(JPEG.key), StaticPolicy(options[-1].key)]:
        records = simulate(policy, options, correctness, trace, config)
        rows[policy.name] = summarize(policy.name, records)
        down = [r for r in records if 5500 <= r.capture_ms < 10000]
        if policy.name.endswith("skip9"):
            assert all(r.status == "ok" and r.hedge_answered and r.latency_ms == 70.0 for r in down)
            up = [r for r in records if r.capture_ms < 5000]
            assert all(r.status == "ok" and not r.hedge_answered and r.correct for r in up)
        else:
            assert all(r.status == "timeout" and not r.correct for r in down)
    assert rows[f"static:{options[-1].key}"]["deadline_hit"] == 1.0
    assert rows[f"static:{JPEG.key}"]["deadline_hit"] < 0.75
    # With the link's future known, the oracle takes the hedged offload whenever its reply will be late only
    # when the hedge is right; here skip9 is always wrong, so it takes it exactly while the link is up.
    oracle = simulate(OraclePolicy(), options, correctness, trace, config)
    assert all(r.correct for r in oracle if r.capture_ms < 5000 and r.status != "dropped")


# -- on-time calibration --------------------------------------------------------------------------------------
def test_on_time_calibration_learns_each_actions_own_hit_rate_and_forgets_it_in_time() -> None:
    calibration = OnTimeCalibration(hold_ms=10_000.0, relax_ms=20_000.0)
    assert calibration.chance(0.0, "a", 0.2) == pytest.approx(0.2), "no outcomes yet: the model's chance"
    for i in range(400):  # 200 ms apart: the model says 0.2; three replies in five come in time
        calibration.observe(i * 200.0, "a", 0.2, i % 5 < 3)
        calibration.observe(i * 200.0, "b", 0.9, i % 10 == 0)  # the model says 0.9; one in ten comes
        calibration.observe(i * 200.0, "c", 0.0, True)  # no time for the transfer at all: nothing to learn
    now_ms = 400 * 200.0
    assert calibration.chance(now_ms, "a", 0.2) == pytest.approx(0.6, abs=0.1)
    assert calibration.chance(now_ms, "b", 0.9) == pytest.approx(0.1, abs=0.1)
    assert set(calibration.scalings(now_ms)) == {"a", "b"}
    assert calibration.chance(now_ms, "c", 0.3) == pytest.approx(0.3)
    # Held for 10 s without frames of "b" (its last came 200 ms before now); 70 s on, its pessimism has faded
    # (within e^-3 of the way back to the model), while the optimism learnt for "a" stands: "a" is still sent
    # and corrected by its own outcomes, "b" would no longer be sent and is tried again.
    assert calibration.chance(now_ms + 9_000.0, "b", 0.9) == calibration.chance(now_ms, "b", 0.9)
    assert calibration.chance(now_ms + 70_000.0, "b", 0.9) == pytest.approx(0.9, abs=0.05)
    assert calibration.chance(now_ms + 70_000.0, "a", 0.2) == calibration.chance(now_ms, "a", 0.2)
    assert calibrated_chance(0.0, PlattScaling(3.0, 0.0)) == 0.0, "a chance of 0 stays 0"
    assert PlattScaling(-2.0, 1.0, pessimism=0.5)(0.5) == pytest.approx(0.5 - 0.5 * (0.5 - 0.1192), abs=1e-4)
    assert PlattScaling(2.0, 1.0, pessimism=0.0)(0.5) == pytest.approx(0.8808, abs=1e-4)


# A better local action that does not fit after the offload's encode, so that the hedge (skip9) is the weaker one.
SKIP6 = ActionOption(Local("skip6"), edge_ms=60.0, accuracy=0.7)
JPEG50 = ActionOption(Offload("jpeg-q50"), edge_ms=15.0, payload_bytes=7_000, cloud_ms=10.0, accuracy=0.9)
HEDGE_TRADE = with_best_hedges([SKIP, SKIP6, JPEG50], 70.0)  # the hedged offload beats skip6 when p > 0.5


def test_the_deadline_policy_takes_a_remote_actions_calibrated_chance_for_both_its_copies() -> None:
    hedged_jpeg = HEDGE_TRADE[-1]
    assert hedged_jpeg.key == "offload/jpeg-q50/hedge:local@skip9" and hedged_jpeg.remote_key == JPEG50.key
    # 7 KB in the 70 - 15 - 20 - 10 = 25 ms left needs 2.2 Mbit/s; the link is believed to carry 1: p ~0.06.
    link = LinkView(1e6, 0.6e6, 20.0, 20.0, bandwidth_log_sd=0.5)
    model = on_time_probability(hedged_jpeg, 70.0, link)
    assert model < 0.1 and DeadlinePolicy().decide(70.0, HEDGE_TRADE, link).option is SKIP6
    # Its replies have come far more often than that: the calibrated chance makes it worth its hedge's risk.
    learnt = LinkView(1e6, 0.6e6, 20.0, 20.0, bandwidth_log_sd=0.5,
                      on_time_calibration={JPEG50.key: PlattScaling(1.0, 0.0)})
    policy = DeadlinePolicy()
    assert policy.chance(hedged_jpeg, 70.0, learnt) == policy.chance(JPEG50, 70.0, learnt) == pytest.approx(0.731,
                                                                                                          abs=1e-3)
    assert policy.decide(70.0, HEDGE_TRADE, learnt).option is hedged_jpeg, "never its unhedged copy"
    assert DeadlinePolicy(calibrated=False).chance(JPEG50, 70.0, learnt) == model
    assert DeadlinePolicy(calibrated=False).decide(70.0, HEDGE_TRADE, learnt).option is SKIP6
    # A pessimistic calibration leaves the hedged copy at least as good as the unhedged one, whatever the link.
    for rate_bps in (1e6, 3e6, 10e6):
        for a, b in ((-0.5, 0.3), (-2.0, 1.0), (0.5, 0.5)):
            view = LinkView(rate_bps, rate_bps / 2, 20.0, 20.0, bandwidth_log_sd=0.5,
                            on_time_calibration={JPEG50.key: PlattScaling(a, b)})
            assert policy.decide(70.0, HEDGE_TRADE, view).option is not JPEG50


def flicker_trace(rate_bps: float, on_ms: int, off_ms: int, total_ms: int) -> UplinkTrace:
    """`rate_bps` for `on_ms`, then nothing for `off_ms`, over and over."""
    per_ms = rate_bps / 8 / PACKET_BYTES / 1000
    opportunities = np.floor(np.arange(1, int(total_ms * per_ms) + 1) / per_ms)
    return UplinkTrace.from_opportunities("flicker", opportunities[opportunities % (on_ms + off_ms) < on_ms]
                                          .astype(np.int64))


def test_in_the_simulator_calibration_sends_a_hedged_action_that_the_model_underrates() -> None:
    # The link is up 70% of the time in 1-s cycles. After each outage the rate estimate reads the link as far
    # worse than it is, so the model keeps rating the hedged offload below skip6; its own outcomes say otherwise.
    options = HEDGE_TRADE
    correctness = {SKIP.key: np.arange(10) < 5, SKIP6.key: np.arange(10) < 7, JPEG50.key: np.arange(10) < 9}
    config = SimConfig(fps=5, deadline_ms=70, rtt_ms=20, duration_s=60, initial_bps=4e6)
    trace = flicker_trace(4e6, on_ms=700, off_ms=300, total_ms=60_000)
    rows = {policy.name: summarize(policy.name, simulate(policy, options, correctness, trace, config))
            for policy in [DeadlinePolicy(), DeadlinePolicy(name="uncalibrated", calibrated=False)]}
    calibrated, uncalibrated = rows["deadline"], rows["uncalibrated"]
    assert calibrated["actions"][options[-1].key] > uncalibrated["actions"][options[-1].key] + 0.2
    assert calibrated["accuracy_at_deadline"] > uncalibrated["accuracy_at_deadline"] + 0.03


def test_after_a_short_stop_of_the_link_a_hedged_action_is_sent_again_before_a_probe_is_due() -> None:
    """8 Mbit/s with one 300 ms stop (delivery on cellular links comes in clumps). The frame that meets the stop
    times out and pins the rate estimate at its bound, under what the hedged offload needs; the estimate then
    relaxes towards what the link delivered before, and the hedged offload is sent again before the next probe
    would be due (a second after the timeout: without the relaxing, only that probe sent it again, 1.2 s later)."""
    options = HEDGE_TRADE
    hedged_jpeg = options[-1]
    correctness = {SKIP.key: np.arange(10) < 5, SKIP6.key: np.arange(10) < 7, JPEG50.key: np.arange(10) < 9}
    config = SimConfig(fps=5, deadline_ms=70, rtt_ms=20, duration_s=10, initial_bps=4e6)
    steady = UplinkTrace.constant("8mbps", 8e6, period_ms=10_000).opportunities_ms
    trace = UplinkTrace.from_opportunities("stop", steady[(steady < 5_000) | (steady >= 5_300)])
    records = simulate(DeadlinePolicy(), options, correctness, trace, config)
    stopped = [r for r in records if r.hedge_answered]
    assert [r.capture_ms for r in stopped] == [5_000.0]
    assert all(r.action == hedged_jpeg.key for r in records if 1_000 <= r.capture_ms < 5_000)
    after = [r for r in records if r.capture_ms > 5_000.0]
    back_ms = next(r.capture_ms for r in after if r.action == hedged_jpeg.key) - 5_000.0
    assert back_ms < config.probe_interval_ms
    assert sum(r.action == hedged_jpeg.key for r in after) >= len(after) - 3


def test_a_probe_that_timed_out_does_not_keep_the_link_unmeasured() -> None:
    """A local action nearly as good as the hedged offload; the link carries 4 Mbit/s once its first 400 ms are over.
    At the rate first believed (1 Mbit/s) the offload does not pay, at the probe's hopeful rate it does, and the first
    frame probes with it into the stop: the timeout pins the estimate and widens its spread. Judged with that spread,
    the offload never paid at the hopeful rate again and the link stayed unmeasured (20 s local); the probe hopes for
    the spread first believed as well, so the next probe goes out once due and finds the link."""
    local = ActionOption(Local("skip4"), edge_ms=100.0, accuracy=0.82)
    hedge = ActionOption(Local("skip6"), edge_ms=85.0, accuracy=0.735)
    jpeg = ActionOption(Offload("jpeg-q75"), edge_ms=12.0, payload_bytes=10_672, cloud_ms=20.0, accuracy=0.84)
    options = [local, hedge, jpeg, hedged(jpeg, hedge)]
    correctness = {local.key: np.arange(100) < 82, hedge.key: np.arange(100) < 73, jpeg.key: np.arange(100) < 84}
    config = SimConfig(fps=5, deadline_ms=120, rtt_ms=20, duration_s=20)
    assert config.initial_bps == 1e6
    steady = UplinkTrace.constant("4mbps", 4e6, period_ms=20_000).opportunities_ms
    trace = UplinkTrace.from_opportunities("late start", steady[steady >= 400])
    records = simulate(DeadlinePolicy(), options, correctness, trace, config)
    sent = [r for r in records if r.action == options[-1].key]
    assert sent[0].capture_ms == 0.0 and sent[0].hedge_answered  # the first probe met the stop
    assert sent[1].capture_ms <= 2 * config.probe_interval_ms + 200.0  # the next once due (backed off once)
    later = [r for r in records if r.capture_ms >= 5_000]
    assert sum(r.action == options[-1].key for r in later) >= 0.9 * len(later)
    assert summarize("deadline", records)["accuracy_at_deadline"] > local.accuracy


# -- the runtime ----------------------------------------------------------------------------------------------
@pytest.fixture()
def photo(rng: np.random.Generator) -> np.ndarray:
    return rng.integers(0, 256, size=(48, 40, 3), dtype=np.uint8)


def test_a_reply_in_time_is_the_answer(service: RunningService, tiny_bundle: Bundle, photo: np.ndarray) -> None:
    with CloudLink(service.endpoint, tiny_bundle.content_hash) as link:
        link.handshake()
        runtime = EdgeRuntime(tiny_bundle, link)
        local = runtime.infer(photo, Local())
        outcome = runtime.infer(photo, Split("res", "fp16", hedge=Local()), budget_ms=5000.0)
        assert outcome.ok and not outcome.hedge_answered, outcome.reason
        assert {"cloud_queue", "cloud_compute"} <= set(outcome.trace_ms)
        np.testing.assert_allclose(outcome.logits, local.logits, rtol=2e-2, atol=2e-2)
        runtime.close()


def test_a_silent_cloud_leaves_the_hedges_answer_before_the_deadline(tiny_bundle: Bundle, photo: np.ndarray) -> None:
    with silent_cloud_link(tiny_bundle.content_hash) as link:
        runtime = EdgeRuntime(tiny_bundle, link)
        local = runtime.infer(photo, Local())
        outcome = runtime.infer(photo, Offload("jpeg-q90", hedge=Local()), budget_ms=300.0)
        assert outcome.ok and outcome.hedge_answered, outcome.reason
        # It stops waiting just before the deadline (a loaded host may overshoot by a scheduling delay, never by
        # waiting for the silent cloud).
        assert outcome.done_ms < outcome.deadline_ms + 100.0
        assert "no reply from the cloud" in outcome.reason and "answered by the hedge local" in outcome.reason, (
            outcome.reason, outcome.trace_ms)
        assert outcome.bytes_sent > 0 and "hedge" in outcome.trace_ms
        np.testing.assert_array_equal(outcome.logits, local.logits)
        metrics = EdgeMetrics()
        metrics.observe(outcome)
        assert metrics.registry.get_sample_value("splitrt_edge_hedge_answers_total",
                                                 {"action": "offload/jpeg-q90/hedge:local"}) == 1.0
        unhedged = runtime.infer(photo, Offload("jpeg-q90"), budget_ms=100.0)
        assert unhedged.status is Status.TIMEOUT
        runtime.close()


def test_a_refused_request_is_answered_by_the_hedge(tiny_bundle: Bundle, photo: np.ndarray) -> None:
    running = start_service([tiny_bundle], limits=Limits(max_payload_bytes=1024))
    try:
        with CloudLink(running.endpoint, tiny_bundle.content_hash) as link:
            link.handshake()
            runtime = EdgeRuntime(tiny_bundle, link)
            outcome = runtime.infer(photo, Split("stem", "fp32", hedge=Local()))  # 8 KiB: over the limit
            assert outcome.ok and outcome.hedge_answered and "too_large" in outcome.reason
            assert outcome.to_json()["hedge_answered"] is True
            assert outcome.bytes_sent == 0 and "network" not in outcome.trace_ms, "refused on the edge: never sent"
            runtime.close()
    finally:
        running.service.stop()
        running.thread.join(10)


def test_a_hedged_frame_teaches_the_estimates_a_timeout_not_a_slow_reply() -> None:
    from splitrt.edge.adaptive import observe_outcome
    from splitrt.edge.runtime import NO_REPLY
    from splitrt.frame import FrameOutcome
    from splitrt.policies.estimators import LinkEstimates

    late = FrameOutcome(1, "offload/jpeg-q25/hedge:local@skip9", Status.OK, bytes_sent=5_000, hedge_answered=True,
                        reason=f"{NO_REPLY}: answered by the hedge local@skip9", trace_ms={"network": 60.0})
    estimates = LinkEstimates(initial_bps=8e6, initial_rtt_ms=40.0)
    observe_outcome(estimates, 1000.0, late)
    # 5 KB not through in 60 - 40 ms: at most 2 Mbit/s. Taken as a reply, it would have read as one.
    assert estimates.throughput.estimate_bps == pytest.approx(2e6)
    assert estimates.throughput.samples == 0, "a timeout is a bound, not a sample"


def test_a_request_the_cloud_refuses_as_expired_bounds_the_rate_as_a_timeout_hedged_or_not(
        tiny_bundle: Bundle, photo: np.ndarray) -> None:
    """Real socket: a cloud that wants 10 s left refuses every request as expired. The frame's wait then bounds the
    rate, as the simulator's timeout of the same frame does; a refusal for another reason teaches nothing."""
    from splitrt.edge.adaptive import observe_outcome
    from splitrt.frame import FrameOutcome

    running = start_service([tiny_bundle], min_time_left_ms=10_000.0)
    try:
        with CloudLink(running.endpoint, tiny_bundle.content_hash) as link:
            link.handshake()
            runtime = EdgeRuntime(tiny_bundle, link)
            plain = runtime.infer(photo, Offload("jpeg-q50"), budget_ms=2000.0)
            hedged = runtime.infer(photo, Offload("jpeg-q50", hedge=Local()), budget_ms=2000.0)
            runtime.close()
    finally:
        running.service.stop()
        running.thread.join(10)
    assert plain.status is Status.EXPIRED and hedged.hedge_answered, (plain.reason, hedged.reason)
    for outcome in (plain, hedged):
        estimates, as_timeout = LinkEstimates(initial_bps=1e9), LinkEstimates(initial_bps=1e9)
        observe_outcome(estimates, 1000.0, outcome)
        timed_out = FrameOutcome(9, "offload/jpeg-q50", Status.TIMEOUT, bytes_sent=outcome.bytes_sent,
                                 trace_ms={"network": outcome.trace_ms["network"]})
        observe_outcome(as_timeout, 1000.0, timed_out)
        assert estimates.throughput.estimate_bps == as_timeout.throughput.estimate_bps < 1e9
        assert estimates.throughput.samples == 0, "a bound, not a sample"
    overloaded = FrameOutcome(3, "offload/jpeg-q50", Status.REJECTED, bytes_sent=5_000, reason="overloaded: queue full",
                              trace_ms={"network": 60.0})
    estimates = LinkEstimates(initial_bps=8e6, initial_rtt_ms=40.0)
    observe_outcome(estimates, 1000.0, overloaded)
    assert estimates.throughput.estimate_bps == pytest.approx(8e6) and estimates.unreachable_since_ms is None


def test_a_failing_hedge_does_not_lose_the_clouds_answer(service: RunningService, tiny_bundle: Bundle,
                                                         photo: np.ndarray) -> None:
    with CloudLink(service.endpoint, tiny_bundle.content_hash) as link:
        link.handshake()
        runtime = EdgeRuntime(tiny_bundle, link)
        outcome = runtime.infer(photo, Split("res", "fp16", hedge=Local("no-such-exit")), budget_ms=5000.0)
        assert outcome.ok and not outcome.hedge_answered, outcome.reason
        runtime.close()
    with silent_cloud_link(tiny_bundle.content_hash) as silent:
        runtime = EdgeRuntime(tiny_bundle, silent)
        failed = runtime.infer(photo, Split("res", "fp16", hedge=Local("no-such-exit")), budget_ms=200.0)
        assert failed.status is Status.FAILED and "no early exit" in failed.reason
        assert "network" in failed.trace_ms, "the request's wait is recorded"
        runtime.close()


def test_an_unreachable_cloud_is_answered_by_the_hedge_and_learnt_as_unreachable(tiny_bundle: Bundle,
                                                                                  photo: np.ndarray) -> None:
    from splitrt.edge.adaptive import observe_outcome
    from splitrt.policies.estimators import LinkEstimates

    with CloudLink("tcp://127.0.0.1:9", tiny_bundle.content_hash) as link:  # nothing listens: never connected
        runtime = EdgeRuntime(tiny_bundle, link)
        outcome = runtime.infer(photo, Split("res", "fp16", hedge=Local()), budget_ms=500.0)
        assert outcome.ok and outcome.hedge_answered and "cloud link failed" in outcome.reason
        assert "network" not in outcome.trace_ms
        estimates = LinkEstimates()
        observe_outcome(estimates, 1000.0, outcome)
        assert estimates.unreachable_since_ms == 1000.0
        runtime.close()


def test_on_an_emulated_slow_device_a_reply_cuts_the_hedges_stretch(service: RunningService, tiny_bundle: Bundle,
                                                                    photo: np.ndarray) -> None:
    from splitrt.devices.dilation import TimeDilation

    with CloudLink(service.endpoint, tiny_bundle.content_hash) as link:
        link.handshake()
        runtime = EdgeRuntime(tiny_bundle, link)
        for action in (Local(), Split("res", "fp16")):  # sessions loaded at full speed
            assert runtime.infer(photo, action).ok
        runtime.device_speed = TimeDilation(0.0002)  # every stage lasts 5,000 times its CPU time
        outcome = runtime.infer(photo, Split("res", "fp16", hedge=Local()), budget_ms=600_000.0)
        assert outcome.ok and not outcome.hedge_answered, outcome.reason
        # The hedge (the whole model, more work than the head) ended when the reply came, well before the
        # head's stretch would have: it was not run to its end.
        assert outcome.trace_ms.get("hedge", 0.0) < outcome.trace_ms["head"]
        runtime.close()


def test_the_adaptive_runtime_teaches_the_calibration_whether_hedged_replies_came(service: RunningService,
                                                                                  tiny_bundle: Bundle,
                                                                                  photo: np.ndarray) -> None:
    from splitrt.edge.adaptive import AdaptiveRuntime

    local = ActionOption(Local(), edge_ms=5.0, accuracy=0.7)
    split = hedged(ActionOption(Split("res", "fp16"), edge_ms=2.0, payload_bytes=4_200, cloud_ms=2.0, accuracy=0.9),
                   local)
    learnt = {}
    # Initial rates at which the model gives the first frame's reply about even odds (33.6 kbit in ~5 s; in ~0.4 s).
    for endpoint, budget_ms, initial_bps in [(service.endpoint, 5000.0, 7e3), (None, 400.0, 8.5e4)]:
        with contextlib.ExitStack() as stack:
            if endpoint is None:
                link = stack.enter_context(silent_cloud_link(tiny_bundle.content_hash))
            else:
                link = stack.enter_context(CloudLink(endpoint, tiny_bundle.content_hash))
            runtime = EdgeRuntime(tiny_bundle, link)
            runtime.infer(photo, Local())  # sessions loaded before the frames that count (a loaded host is slow)
            runtime.infer(photo, Split("res", "fp16"), budget_ms=100.0)
            adaptive = AdaptiveRuntime(runtime, StaticPolicy(split.key), [local, split],
                                       estimates=LinkEstimates(initial_bps=initial_bps, initial_rtt_ms=1.0))
            first = on_time_probability(split, budget_ms, adaptive.estimates.view(True, 0.0))
            assert 0.2 < first < 0.8
            outcomes = [adaptive.infer(photo, budget_ms=budget_ms) for _ in range(3)]
            reasons = [(o.status.value, o.hedge_answered, o.reason, o.trace_ms) for o in outcomes]
            assert all(o.ok and o.action == split.key for o in outcomes), reasons
            assert all(o.hedge_answered != (endpoint == service.endpoint) for o in outcomes), reasons
            assert all("network" in o.trace_ms for o in outcomes), reasons  # every request went out
            learnt[endpoint == service.endpoint] = adaptive.estimates.on_time.scalings(adaptive.clock_ms())
            adaptive.runtime.close()
    # Learnt under the remote part's key: replies that came raise its chance above the model's, replies that did
    # not lower it.
    assert learnt[True][split.remote_key].a > 0.01 and learnt[False][split.remote_key].a < -0.01


@dataclasses.dataclass(frozen=True)
class StaticLearningFromUnhedged(StaticPolicy):
    on_time_from_unhedged: bool = True


def test_unhedged_replies_teach_the_calibration_only_for_a_policy_that_asks(service: RunningService,
                                                                             tiny_bundle: Bundle,
                                                                             photo: np.ndarray) -> None:
    """`deadline-tracking` learns the on-time chance from unhedged frames too (`teaches_on_time`); `deadline`
    only from hedged ones."""
    from splitrt.edge.adaptive import AdaptiveRuntime

    local = ActionOption(Local(), edge_ms=5.0, accuracy=0.7)
    split = ActionOption(Split("res", "fp16"), edge_ms=2.0, payload_bytes=4_200, cloud_ms=2.0, accuracy=0.9)
    assert make_policy("deadline-tracking").on_time_from_unhedged  # type: ignore[attr-defined]
    assert not teaches_on_time(make_policy("deadline"), split) and teaches_on_time(make_policy("deadline"),
                                                                                   hedged(split, local))
    assert teaches_on_time(make_policy("deadline-tracking"), split)
    assert not teaches_on_time(make_policy("deadline-tracking"), local)
    learnt = {}
    for policy in (StaticPolicy(split.key), StaticLearningFromUnhedged(split.key)):
        with CloudLink(service.endpoint, tiny_bundle.content_hash) as link:
            link.handshake()  # connected before the frames that count
            runtime = EdgeRuntime(tiny_bundle, link)
            runtime.infer(photo, Split("res", "fp16"), budget_ms=100.0)  # sessions loaded first
            # an initial rate at which the model gives the first reply about even odds (33.6 kbit in ~5 s)
            adaptive = AdaptiveRuntime(runtime, policy, [local, split],
                                       estimates=LinkEstimates(initial_bps=7e3, initial_rtt_ms=1.0))
            outcomes = [adaptive.infer(photo, budget_ms=5000.0) for _ in range(3)]
            assert all(o.ok and o.action == split.key for o in outcomes), [(o.status, o.reason) for o in outcomes]
            learnt[type(policy)] = adaptive.estimates.on_time.scalings(adaptive.clock_ms())
            runtime.close()
    assert split.remote_key not in learnt[StaticPolicy]
    assert learnt[StaticLearningFromUnhedged][split.remote_key].a > 0.01  # replies that came raise the chance
