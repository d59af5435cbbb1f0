"""Hedged remote actions: the device runs a local action while the request is in flight, and its answer stands
when the cloud's is late. Parsing, the policies' expected accuracy, the simulator, and the runtime against a
real service, a silent cloud and a refused request."""
from __future__ import annotations

import contextlib
import time
from typing import Iterator

import numpy as np
import pytest
import zmq

from splitrt.actions import Local, Offload, Split, parse_action
from splitrt.bench.policy import action_from_key
from splitrt.bundle import Bundle
from splitrt.edge.link import CloudLink
from splitrt.edge.metrics import EdgeMetrics
from splitrt.edge.runtime import EdgeRuntime
from splitrt.frame import Status
from splitrt.policies.policies import (
    ActionOption,
    DeadlinePolicy,
    LinkView,
    OraclePolicy,
    StaticPolicy,
    expected_accuracy,
    hedged,
    with_best_hedges,
)
from splitrt.policies.simulate import SimConfig, simulate, summarize
from splitrt.protocol import Limits
from tests.conftest import RunningService, start_service
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


# -- the runtime ----------------------------------------------------------------------------------------------
@pytest.fixture()
def photo(rng: np.random.Generator) -> np.ndarray:
    return rng.integers(0, 256, size=(48, 40, 3), dtype=np.uint8)


@contextlib.contextmanager
def silent_cloud() -> Iterator[str]:
    """A real ROUTER socket that takes requests and never answers."""
    socket = zmq.Context.instance().socket(zmq.ROUTER)
    socket.setsockopt(zmq.LINGER, 0)
    port = socket.bind_to_random_port("tcp://127.0.0.1")
    try:
        yield f"tcp://127.0.0.1:{port}"
    finally:
        socket.close()


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
    with silent_cloud() as endpoint, CloudLink(endpoint, tiny_bundle.content_hash) as link:
        runtime = EdgeRuntime(tiny_bundle, link)
        local = runtime.infer(photo, Local())
        outcome = runtime.infer(photo, Offload("jpeg-q90", hedge=Local()), budget_ms=300.0)
        assert outcome.ok and outcome.hedge_answered, outcome.reason
        # It stops waiting just before the deadline (a loaded host may overshoot by a scheduling delay, never by
        # waiting for the silent cloud).
        assert outcome.done_ms < outcome.deadline_ms + 100.0
        assert "no reply from the cloud" in outcome.reason and "answered by the hedge local" in outcome.reason
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


def test_a_failing_hedge_does_not_lose_the_clouds_answer(service: RunningService, tiny_bundle: Bundle,
                                                         photo: np.ndarray) -> None:
    with CloudLink(service.endpoint, tiny_bundle.content_hash) as link:
        link.handshake()
        runtime = EdgeRuntime(tiny_bundle, link)
        outcome = runtime.infer(photo, Split("res", "fp16", hedge=Local("no-such-exit")), budget_ms=5000.0)
        assert outcome.ok and not outcome.hedge_answered, outcome.reason
        runtime.close()
    with silent_cloud() as endpoint, CloudLink(endpoint, tiny_bundle.content_hash) as silent:
        runtime = EdgeRuntime(tiny_bundle, silent)
        time.sleep(0.3)  # the TCP connection is up, so the request is sent (not refused as unconnected)
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
