"""`bench e2e` on the tiny model: a real cloud process, the relay following a trace, an edge process per
policy; rows side by side with the simulator's. Also the pieces it relies on: device-time samples in the
simulator and the deadline policy, and `AdaptiveRuntime.run` on a paced source."""
from __future__ import annotations

import asyncio
import json
import os
import shutil
from pathlib import Path

import numpy as np

from splitrt.actions import Local, Offload
from splitrt.bench.e2e import E2ESettings, run_e2e_bench
from splitrt.bundle import Bundle
from splitrt.edge.adaptive import AdaptiveRuntime
from splitrt.edge.link import CloudLink
from splitrt.edge.runtime import EdgeRuntime
from splitrt.edge.sources import PacedSource
from splitrt.frame import Status
from splitrt.policies.policies import ActionOption, DeadlinePolicy, LinkView, StaticPolicy
from splitrt.policies.simulate import SimConfig, simulate, summarize
from splitrt.policies.trace import UplinkTrace
from tests.conftest import start_service, write_labelled_images

LINK = LinkView(bandwidth_bps=1e6, cautious_bandwidth_bps=1e6, rtt_ms=40.0, cautious_rtt_ms=40.0)


def test_simulator_draws_device_times_from_samples() -> None:
    jittery = ActionOption(Local(), edge_ms=60.0, accuracy=1.0, edge_samples_ms=(40.0, 80.0))  # half late at 70 ms
    correct = {jittery.key: np.ones(10, dtype=bool)}
    trace = UplinkTrace.constant("one-mbps", 1e6)
    config = SimConfig(fps=5, deadline_ms=70, duration_s=40)
    first = summarize("x", simulate(StaticPolicy(jittery.key), [jittery], correct, trace, config))
    again = summarize("x", simulate(StaticPolicy(jittery.key), [jittery], correct, trace, config))
    assert first == again  # seeded
    assert 0.35 < first["deadline_hit"] < 0.65  # type: ignore[operator]
    steady = summarize("x", simulate(StaticPolicy("local"), [ActionOption(Local(), 60.0, accuracy=1.0)], correct, trace, config))
    assert steady["deadline_hit"] == 1.0


def test_deadline_policy_plans_with_the_slow_tail_of_device_times() -> None:
    jittery = ActionOption(Local(), edge_ms=60.0, accuracy=0.9, edge_samples_ms=tuple(np.linspace(50, 90, 41)))
    steady = ActionOption(Local("skip2"), edge_ms=62.0, accuracy=0.8, edge_samples_ms=(61.0, 62.0, 63.0))
    assert jittery.cautious_edge_ms > 80.0
    decision = DeadlinePolicy().decide(70.0, [jittery, steady], LINK)
    assert decision.option is steady  # the median fits, but one frame in four would be late
    assert DeadlinePolicy().decide(95.0, [jittery, steady], LINK).option is jittery


def test_adaptive_runtime_streams_a_paced_source(tiny_bundle: Bundle) -> None:
    running = start_service([tiny_bundle], batching=False)
    link = CloudLink(running.endpoint, tiny_bundle.content_hash)
    link.handshake()
    options = [ActionOption(Local(), edge_ms=5.0, accuracy=0.5),
               ActionOption(Offload("jpeg-q90"), edge_ms=1.0, payload_bytes=3_000, cloud_ms=2.0, accuracy=0.9)]
    adaptive = AdaptiveRuntime(EdgeRuntime(tiny_bundle, link), DeadlinePolicy(), options)
    image = np.random.default_rng(0).integers(0, 256, (40, 40, 3), dtype=np.uint8)

    async def collect() -> list:
        return [o async for o in adaptive.run(PacedSource([image], fps=50, count=20), budget_ms=500.0)]

    try:
        outcomes = asyncio.run(collect())
    finally:
        adaptive.runtime.close()
        link.close()
        running.service.stop()
        running.thread.join(10)
    assert sorted(o.frame_id for o in outcomes) == list(range(1, 21))  # every frame ends exactly once
    ran = [o for o in outcomes if o.status is not Status.DROPPED]
    assert ran and all(o.ok and o.action == "offload/jpeg-q90" and o.predicted_ms > 0 for o in ran)
    assert all(o.deadline_ms - o.capture_ms == 500.0 for o in ran)
    assert all(o.action == "policy:deadline" for o in outcomes if o.status is Status.DROPPED)


def test_e2e_bench_runs_real_processes_through_the_relay(tiny_bundle: Bundle, tmp_path: Path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)  # caches go under ./.cache
    images = write_labelled_images(tmp_path / "images", 6, 3)
    trace = tmp_path / "four-mbps.up"
    trace.write_text("\n".join(str(t) for t in range(1, 3001, 3)) + "\n")  # one packet per 3 ms: 4 Mbit/s
    bundle = shutil.copytree(tiny_bundle.root, tmp_path / "bundle")
    settings = E2ESettings(device_profile="pi5", deadline_ms=400.0, fps=10.0, rtt_ms=20.0, duration_s=2.0,
                           allow_thread_fallback=os.geteuid() != 0, edge_cost_samples=3)
    out = tmp_path / "e2e.json"
    rows = run_e2e_bench([trace], bundle, images, out, settings,
                         policies=["static:local", "static:offload/jpeg-q90", "deadline"], plot=tmp_path / "e2e.png")
    assert [r["policy"] for r in rows] == ["static:local", "static:offload/jpeg-q90", "deadline"]
    for row in rows:
        assert row["emulation"] == "relay" and row["frames"] == 20
        assert row["deadline_hit"] > 0.5, row  # 400 ms is plenty for the tiny model, even under the quota
        assert abs(row["difference_pp"] - 100 * (row["accuracy_at_deadline"] - row["simulated_accuracy_at_deadline"])) < 1e-9
    assert rows[0]["bytes_mean"] == 0 and rows[1]["bytes_mean"] > 1000
    assert rows[1]["actions"] == {"offload/jpeg-q90": 1.0}
    document = json.loads(out.read_text())
    assert document["scenario"] == "e2e" and document["settings"]["device_profile"] == "pi5"
    assert (tmp_path / "e2e.png").stat().st_size > 10_000
