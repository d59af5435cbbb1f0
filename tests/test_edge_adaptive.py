"""The live policy loop against a real tail service: it splits while the cloud is fast, falls back to local
within one frame when the cloud goes away, and the prefilter reuses results for unchanged frames."""
from __future__ import annotations

import time

import numpy as np
import pytest

from splitrt.actions import Local, Split
from splitrt.bundle import Bundle
from splitrt.edge.adaptive import AdaptiveRuntime
from splitrt.edge.link import CloudLink
from splitrt.edge.runtime import EdgeRuntime
from splitrt.frame import Status
from splitrt.policies.estimators import LinkEstimates
from splitrt.policies.policies import ActionOption, DeadlinePolicy, make_policy
from splitrt.policies.prefilter import Prefilter
from tests.conftest import start_service

# Costs as a profile would give them: local is slow on this "device", the split is more accurate.
LOCAL = ActionOption(Local(), edge_ms=5.0, accuracy=0.70)
SPLIT = ActionOption(Split("res", "fp16"), edge_ms=2.0, payload_bytes=4_200, cloud_ms=2.0, accuracy=0.90)


def test_splits_while_the_cloud_answers_and_falls_back_within_one_frame(tiny_bundle: Bundle) -> None:
    running = start_service([tiny_bundle], batching=False)
    image = np.random.default_rng(0).integers(0, 256, (40, 40, 3), dtype=np.uint8)
    link = CloudLink(running.endpoint, tiny_bundle.content_hash)
    link.handshake()
    adaptive = AdaptiveRuntime(EdgeRuntime(tiny_bundle, link), DeadlinePolicy(), [LOCAL, SPLIT],
                               estimates=LinkEstimates(initial_bps=50e6, initial_rtt_ms=1.0, retry_ms=200),
                               probe_interval_ms=200)
    try:
        before = [adaptive.infer(image, budget_ms=300) for _ in range(5)]
        assert all(o.ok and o.action == SPLIT.key for o in before), [(o.action, o.reason) for o in before]
        assert adaptive.estimates.throughput.samples == 5
        running.service.stop()
        running.thread.join(10)
        after = [adaptive.infer(image, budget_ms=300) for _ in range(4)]
        # The first frame into the dead cloud ends without a result; the next ones run locally.
        assert after[0].status in (Status.TIMEOUT, Status.FAILED)
        assert all(o.ok and o.action == LOCAL.key for o in after[1:]), [(o.action, o.reason) for o in after]
        # The cloud comes back on the same address: splitting resumes by itself.
        running = start_service([tiny_bundle], bind=running.endpoint, batching=False)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            outcome = adaptive.infer(image, budget_ms=300)
            if outcome.ok and outcome.action == SPLIT.key:
                break
            time.sleep(0.05)
        else:
            raise AssertionError("splitting did not resume within 10 s of the cloud's return")
    finally:
        link.close()
        running.service.stop()
        running.thread.join(10)


def test_the_prefilter_reuses_the_last_result_for_an_unchanged_frame(tiny_bundle: Bundle) -> None:
    image = np.random.default_rng(1).integers(0, 256, (40, 40, 3), dtype=np.uint8)
    adaptive = AdaptiveRuntime(EdgeRuntime(tiny_bundle), DeadlinePolicy(), [LOCAL], prefilter=Prefilter("pixel", 0.05))
    first = adaptive.infer(image, budget_ms=1000)
    second = adaptive.infer(image.copy(), budget_ms=1000)
    changed = adaptive.infer(255 - image, budget_ms=1000)
    assert first.ok and changed.ok
    assert second.status is Status.SKIPPED and "reused" in second.reason
    assert second.top == first.top and second.frame_id != first.frame_id


def test_heartbeats_give_the_estimates_their_rtt(tiny_bundle: Bundle) -> None:
    """Over a link that sends heartbeats, their round trip (no upload) replaces the configured RTT guess."""
    from splitrt.edge.failover import ResilientLink
    from splitrt.edge.health import HeartbeatConfig

    running = start_service([tiny_bundle], batching=False)
    link = ResilientLink(running.endpoint, tiny_bundle.content_hash, HeartbeatConfig(interval_ms=50.0))
    image = np.random.default_rng(2).integers(0, 256, (40, 40, 3), dtype=np.uint8)
    adaptive = AdaptiveRuntime(EdgeRuntime(tiny_bundle, link), DeadlinePolicy(), [LOCAL, SPLIT],
                               estimates=LinkEstimates(initial_bps=50e6, initial_rtt_ms=400.0))
    try:
        link.handshake(10_000)
        deadline = time.monotonic() + 10
        while link.heartbeat_rtt_ms is None and time.monotonic() < deadline:
            time.sleep(0.02)
        assert link.heartbeat_rtt_ms is not None, "no heartbeat answered within 10 s"
        adaptive.infer(image, budget_ms=300)
        assert adaptive.estimates.rtt_ms < 100.0  # loopback: a heartbeat's round trip is a few ms
    finally:
        link.close()
        running.service.stop()
        running.thread.join(10)


def test_every_frame_tells_the_runtime_how_fast_the_device_runs(tiny_bundle: Bundle) -> None:
    photo = np.random.default_rng(1).integers(0, 256, (40, 40, 3), dtype=np.uint8)
    # Options measured on a device a thousand times faster than this one: after a frame, the runtime knows better.
    fast = ActionOption(Local(), edge_ms=0.001, accuracy=0.9)
    adaptive = AdaptiveRuntime(EdgeRuntime(tiny_bundle), DeadlinePolicy(), [fast])
    assert adaptive.estimates.device.factor == 1.0
    outcome = adaptive.infer(photo, budget_ms=5000.0)
    assert outcome.ok and adaptive.estimates.device.factor == pytest.approx(4.0 ** 0.1)  # one step to the cap
    # A frame that failed (a split with no cloud configured) says nothing of the split's time.
    split = ActionOption(Split("res", "fp16"), edge_ms=0.001, payload_bytes=2048, cloud_ms=1.0, accuracy=0.95)
    alone = AdaptiveRuntime(EdgeRuntime(tiny_bundle), make_policy("static:split@res/fp16"), [split])
    failed = alone.infer(photo, budget_ms=5000.0)
    assert failed.status is Status.FAILED and alone.estimates.device.factor == 1.0
