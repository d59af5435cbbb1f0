"""Failover: the pure liveness rules with an injected clock, and a real cloud process killed and restarted."""
from __future__ import annotations

import time

import numpy as np
import pytest

from splitrt.actions import Local, Split
from splitrt.bundle import Bundle
from splitrt.edge.health import Backoff, HeartbeatConfig, LinkHealth, LinkState, Step


def test_backoff_doubles_up_to_its_cap_and_resets() -> None:
    backoff = Backoff(50, 500)
    assert [backoff.next_delay_ms() for _ in range(6)] == [50, 100, 200, 400, 500, 500]
    backoff.reset()
    assert backoff.next_delay_ms() == 50


def test_heartbeat_config_refuses_a_detection_slower_than_three_intervals() -> None:
    with pytest.raises(ValueError, match="within 3 heartbeat intervals"):
        HeartbeatConfig(down_after_intervals=3.0)
    with pytest.raises(ValueError, match="interval_ms"):
        HeartbeatConfig(interval_ms=0)


def run_until(health: LinkHealth, start_ms: float, end_ms: float, step_ms: float = 1.0) -> list[tuple[float, Step]]:
    """Drive the state machine like the I/O loop does (wake at next_wakeup_ms), collecting steps."""
    steps = []
    now = start_ms
    while now <= end_ms:
        steps += [(now, s) for s in health.due(now)]
        now = max(now + step_ms, min(health.next_wakeup_ms(now), end_ms + 1))
    return steps


def test_a_silent_cloud_is_declared_down_within_three_intervals_at_any_phase() -> None:
    config = HeartbeatConfig(interval_ms=100)
    for loss_offset_ms in range(0, 100, 7):  # the cloud dies at any point between two heartbeats
        health = LinkHealth(config, now_ms=0)
        health.on_welcome(0)
        now = 0.0
        heard_until = 1000 + loss_offset_ms
        while now < heard_until:  # echoes come back 1 ms after each heartbeat until the loss
            for step in health.due(now):
                if step is Step.SEND_HEARTBEAT and now + 1 < heard_until:
                    health.on_heard(now + 1)
            now += 1
        steps = run_until(health, now, now + 1000)
        down = [t for t, s in steps if s is Step.DECLARE_DOWN]
        assert down, "never declared down"
        assert down[0] - heard_until <= 3 * config.interval_ms
        assert health.state is LinkState.DOWN


def test_down_link_says_hello_with_backoff_and_a_welcome_brings_it_back() -> None:
    config = HeartbeatConfig(interval_ms=100, backoff_initial_ms=50, backoff_max_ms=400)
    health = LinkHealth(config, now_ms=0)
    assert health.due(0) == [Step.SEND_HELLO] and health.state is LinkState.CONNECTING
    health.on_welcome(10)
    assert health.is_up
    steps = run_until(health, 10, 2000)
    hellos = [t for t, s in steps if s is Step.SEND_HELLO]
    down = [t for t, s in steps if s is Step.DECLARE_DOWN][0]
    gaps = np.diff([down, *hellos]).tolist()
    assert gaps[:5] == pytest.approx([50, 100, 200, 400, 400], abs=2)
    assert not any(s is Step.SEND_HEARTBEAT and t > down for t, s in steps)
    health.on_welcome(2100)
    assert health.is_up and [s for _, s in health.transitions][-3:] == [LinkState.UP, LinkState.DOWN, LinkState.UP]
    assert health.due(2200) == [Step.SEND_HEARTBEAT]


def test_a_closed_connection_takes_an_up_link_down_until_a_new_handshake() -> None:
    config = HeartbeatConfig(interval_ms=1000)
    health = LinkHealth(config, now_ms=0)
    assert not health.on_disconnected(5)  # not up yet: nothing to take down
    health.on_welcome(10)
    assert health.on_disconnected(20) and health.state is LinkState.DOWN and health.down_since_ms == 20
    assert health.due(20) == [Step.SEND_HELLO]  # at once, not after a heartbeat timeout
    assert not health.on_disconnected(30)  # already down
    health.on_welcome(40)
    assert [s for _, s in health.transitions][-3:] == [LinkState.UP, LinkState.DOWN, LinkState.UP]


def test_a_cloud_replaced_by_one_with_another_bundle_is_refused_until_ours_is_back(tiny_bundle: Bundle,
                                                                                   tmp_path) -> None:  # type: ignore[no-untyped-def]
    """Replaced faster than a heartbeat timeout: the closed connection takes the link down, the new cloud's
    answer to the new Hello is checked, and frames run locally until a cloud with our bundle answers."""
    from splitrt.bench.failover import CloudProcess, free_tcp_port
    from splitrt.edge.failover import ResilientLink
    from splitrt.edge.runtime import EdgeRuntime
    from splitrt.partition.export import export_bundle
    from splitrt.partition.models import load_model

    other = export_bundle(load_model("tiny-cnn"), tmp_path / "other", splits=["res"], progress=False)
    assert other.content_hash != tiny_bundle.content_hash
    port = free_tcp_port()
    ours, theirs = CloudProcess(tiny_bundle.root, port), CloudProcess(other.root, port)
    ours.start()
    link = ResilientLink(ours.endpoint, tiny_bundle.content_hash, HeartbeatConfig(interval_ms=5000))  # silent: 15 s
    runtime = EdgeRuntime(tiny_bundle, link, action=Split("res", "fp16"), fallback=Local())
    photo = np.random.default_rng(0).integers(0, 256, size=(48, 40, 3), dtype=np.uint8)
    try:
        link.handshake(10_000)
        ours.kill()
        theirs.start()
        deadline = time.monotonic() + 10
        while link.rejection is None and time.monotonic() < deadline:
            time.sleep(0.02)
        assert not link.is_up and link.rejection is not None, link.transitions
        assert "unknown_bundle" in link.down_reason
        outcome = runtime.infer(photo, budget_ms=2000)
        assert outcome.ok and outcome.action == "local" and outcome.planned == "split@res/fp16", outcome.reason
        theirs.kill()
        ours.start()
        deadline = time.monotonic() + 10  # (wait_up returns at once while the last answer is a refusal)
        while not link.is_up and time.monotonic() < deadline:
            time.sleep(0.02)
        assert link.is_up and link.rejection is None
        assert runtime.infer(photo, budget_ms=2000).action == "split@res/fp16"
    finally:
        link.close()
        ours.stop()
        theirs.stop()


def test_killing_the_cloud_process_fails_over_locally_and_splitting_resumes(tiny_bundle: Bundle) -> None:
    from splitrt.bench.failover import CloudProcess, free_tcp_port
    from splitrt.edge.failover import ResilientLink
    from splitrt.edge.runtime import EdgeRuntime

    interval_ms = 100.0
    cloud = CloudProcess(tiny_bundle.root, free_tcp_port())
    cloud.start()
    link = ResilientLink(cloud.endpoint, tiny_bundle.content_hash, HeartbeatConfig(interval_ms=interval_ms))
    runtime = EdgeRuntime(tiny_bundle, link, action=Split("res", "fp16"), fallback=Local())
    photo = np.random.default_rng(0).integers(0, 256, size=(48, 40, 3), dtype=np.uint8)
    try:
        link.handshake(10_000)
        runtime.warm_up()
        before = runtime.infer(photo, budget_ms=500)
        assert before.ok and before.action == "split@res/fp16" and not before.planned

        killed_ms = cloud.kill()
        outcomes = []
        while link.is_up and time.monotonic() * 1000 - killed_ms < 5000:
            outcomes.append(runtime.infer(photo, budget_ms=500))
            time.sleep(0.01)
        assert not link.is_up
        down_ms = [t for t, s in link.transitions if s is LinkState.DOWN][-1]
        # Three intervals is the rule; the margin absorbs a loaded machine's scheduling, not a design slack.
        assert down_ms - killed_ms <= 3 * interval_ms + 100
        for _ in range(5):
            outcomes.append(runtime.infer(photo, budget_ms=500))
        assert all(o.ok and not o.missed_deadline for o in outcomes), [o.reason for o in outcomes]
        fallen_back = [o for o in outcomes if o.planned]
        assert fallen_back and all(o.action == "local" and o.planned == "split@res/fp16" for o in fallen_back)
        assert all("instead of split@res/fp16" in o.reason for o in fallen_back)

        ready_ms = cloud.start()
        assert link.wait_up(10)
        assert [s for _, s in link.transitions][-2:] == [LinkState.DOWN, LinkState.UP] and link.reconnects == 1
        after = runtime.infer(photo, budget_ms=500)
        assert after.ok and after.action == "split@res/fp16" and not after.planned
        assert link.transitions[-1][0] - ready_ms < 1000
    finally:
        link.close()
        cloud.stop()


def test_a_hello_for_an_unknown_bundle_is_reported(service, tiny_bundle: Bundle) -> None:  # type: ignore[no-untyped-def]
    from splitrt.edge.failover import ResilientLink
    from splitrt.edge.link import LinkError

    with ResilientLink(service.endpoint, "sha256:" + "0" * 64) as link:
        with pytest.raises(LinkError, match="unknown_bundle"):
            link.handshake(timeout_ms=600)


def test_a_hung_cloud_costs_no_deadline_the_frame_falls_back_in_time(tiny_bundle: Bundle) -> None:
    """SIGSTOP: the connection stays open and takes the request, no reply ever comes."""
    from splitrt.bench.failover import CloudProcess, free_tcp_port
    from splitrt.edge.failover import ResilientLink
    from splitrt.edge.runtime import EdgeRuntime

    cloud = CloudProcess(tiny_bundle.root, free_tcp_port())
    cloud.start()
    # Slow heartbeats: the frame's deadline, not the loss detection, is what ends its wait here.
    link = ResilientLink(cloud.endpoint, tiny_bundle.content_hash, HeartbeatConfig(interval_ms=1000))
    runtime = EdgeRuntime(tiny_bundle, link, action=Split("res", "fp16"), fallback=Local())
    photo = np.random.default_rng(1).integers(0, 256, size=(48, 40, 3), dtype=np.uint8)
    try:
        link.handshake(10_000)
        runtime.warm_up()
        cloud.freeze()
        budget_ms = 1000.0
        outcome = runtime.infer(photo, budget_ms=budget_ms)
        assert link.is_up  # not yet detected (2.5 s): the frame did not wait for that
        assert outcome.ok and outcome.action == "local" and outcome.planned == "split@res/fp16"
        assert "no reply from the cloud in time" in outcome.reason, outcome.reason
        assert not outcome.missed_deadline and outcome.latency_ms < budget_ms
        # It waited for the cloud first, up to the time the fallback needs.
        assert outcome.trace_ms["abandoned_network"] >= budget_ms - runtime.fallback_reserve_ms() - 100
        cloud.thaw()
        assert link.wait_up(5)
        assert runtime.infer(photo, budget_ms=1000).action == "split@res/fp16"
    finally:
        link.close()
        cloud.stop()
