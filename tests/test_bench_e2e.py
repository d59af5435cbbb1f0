"""`bench e2e` on the tiny model: a real cloud process, the relay following a trace, an edge process per
policy; rows side by side with the simulator's. Also the pieces it relies on: device-time samples in the
simulator and the deadline policy, and `AdaptiveRuntime.run` on a paced source."""
from __future__ import annotations

import asyncio
import json
import os
import shutil
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from splitrt.actions import Local, Offload
from splitrt.bench.e2e import E2ESettings, EdgeRun, actions_for, measured_device_ms, measured_records, run_e2e_bench
from splitrt.bundle import Bundle
from splitrt.edge.adaptive import AdaptiveRuntime
from splitrt.edge.calibration import frame_times_ms, measured_options, with_samples
from splitrt.edge.link import CloudLink
from splitrt.edge.runtime import EdgeRuntime
from splitrt.edge.sources import PacedSource
from splitrt.frame import Status
from splitrt.policies.options_file import option_from_json, option_to_json
from splitrt.policies.policies import (ActionOption, DeadlinePolicy, LinkView, StaticPolicy, hedged as hedged_option,
                                       with_best_hedges)
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


def test_simulator_replays_a_runs_device_times() -> None:
    jittery = ActionOption(Local(), edge_ms=60.0, accuracy=1.0, edge_samples_ms=(40.0, 80.0))
    correct = {jittery.key: np.ones(10, dtype=bool)}
    trace = UplinkTrace.constant("one-mbps", 1e6)
    config = SimConfig(fps=5, deadline_ms=70, duration_s=4)
    slow = {i: {"local": 75.0} for i in range(20)}
    records = simulate(StaticPolicy(jittery.key), [jittery], correct, trace, config, frame_edge_ms=slow)
    assert [r.latency_ms for r in records] == [75.0] * 20 and all(r.status == "late" for r in records)
    other = {i: {"local@skip2": 75.0} for i in range(20)}  # another action's time: drawn from the samples
    records = simulate(StaticPolicy(jittery.key), [jittery], correct, trace, config, frame_edge_ms=other)
    assert {r.latency_ms for r in records} == {40.0, 80.0}


def test_simulator_draws_cloud_times_from_samples_and_options_round_trip() -> None:
    offload = ActionOption(Offload("jpeg-q90"), edge_ms=1.0, payload_bytes=1_000, cloud_ms=10.0, accuracy=1.0,
                           cloud_samples_ms=(10.0, 40.0))
    correct = {offload.key: np.ones(10, dtype=bool)}
    trace = UplinkTrace.constant("ten-mbps", 10e6)
    config = SimConfig(fps=5, deadline_ms=40, duration_s=20, rtt_ms=10)
    hit = summarize("x", simulate(StaticPolicy(offload.key), [offload], correct, trace, config))["deadline_hit"]
    assert 0.3 < hit < 0.7  # with a 40 ms draw a frame misses the 40 ms deadline, with a 10 ms one it meets it
    assert option_from_json(json.loads(json.dumps(option_to_json(offload)))) == offload
    shifted = simulate(StaticPolicy(offload.key), [offload], correct, trace, replace(config, first_frame_ms=12.0))
    assert shifted[0].capture_ms == 12.0 and shifted[1].capture_ms == 212.0


def test_measured_device_ms_counts_from_when_the_device_could_start() -> None:
    def outcome(frame_id: int, action: str, capture: float, age: float, status: str = "ok", **stages: float) -> dict:
        return {"frame_id": frame_id, "action": action, "capture_ms": capture, "age_ms": age, "status": status,
                "trace_ms": stages}

    run = EdgeRun([
        outcome(1, "local", 1000.0, 250.0, head=240.0, merge=1.0),  # busy past the next capture
        outcome(2, "local", 1200.0, 100.0),  # could start at 1250 only: 50 ms on the device
        outcome(3, "offload/jpeg-q90", 1400.0, 90.0, network=60.0, cloud_queue=2.0, cloud_compute=10.0, merge=3.0),
        outcome(4, "offload/jpeg-q90", 1600.0, 70.0, "timeout", network=60.0),
        outcome(5, "local", 1800.0, 0.0, "dropped"),
        outcome(6, "split@b4/fp16", 2000.0, 250.0, "failed"),  # the device is busy until 2250 all the same
        outcome(7, "local", 2200.0, 100.0),  # could start at 2250 only: 50 ms on the device
    ], trace_start_wall_ms=1000.0, quota="cgroup", calibration_ms={}, after_link_ms={})
    assert measured_device_ms(run) == {0: {"local": 250.0}, 1: {"local": 50.0}, 2: {"offload/jpeg-q90": 15.0},
                                       3: {"offload/jpeg-q90": 10.0}, 6: {"local": 50.0}}
    times = frame_times_ms(run.outcomes)
    assert [t.after_send_ms for t in times] == [None, None, 75.0, None, None]  # only answered remote frames


def test_a_hedged_frame_replays_its_remote_part_and_its_hedge() -> None:
    hedged = "offload/jpeg-q25/hedge:local@skip6"

    def outcome(frame_id: int, capture: float, age: float, answered: bool, **stages: float) -> dict:
        return {"frame_id": frame_id, "action": hedged, "capture_ms": capture, "age_ms": age, "status": "ok",
                "hedge_answered": answered, "trace_ms": stages}

    run = EdgeRun([
        # the reply came in time (the hedge was stopped part-way: its time is not the hedge's)
        outcome(1, 1000.0, 40.0, False, encode=5.0, network=25.0, cloud_queue=1.0, cloud_compute=3.0, merge=1.0,
                hedge=20.0),
        # the reply was late: the hedge (60 + 5 ms) answered after the wait for the reply (50 ms) ended
        outcome(2, 1200.0, 76.0, True, encode=5.0, network=50.0, hedge=60.0, hedge_tail=5.0, merge=1.0),
        # the link failed at once: no round trip, the hedge answered
        outcome(3, 1400.0, 70.0, True, encode=8.0, hedge=61.0, merge=1.0),
    ], trace_start_wall_ms=1000.0, quota="cgroup", calibration_ms={}, after_link_ms={})
    assert measured_device_ms(run) == {0: {"offload/jpeg-q25": 10.0},
                                       1: {"offload/jpeg-q25": 10.0, "local@skip6": 65.0},
                                       2: {"offload/jpeg-q25": 8.0, "local@skip6": 61.0}}
    assert [t.after_send_ms for t in frame_times_ms(run.outcomes)] == [30.0, None, None]  # the cloud's answers only
    # The simulator runs those times: the hedge's 61 ms after the part's 8 ms end the frame at 69 ms, not the
    # options' 40 + 10.
    skip6 = ActionOption(Local("skip6"), edge_ms=40.0, accuracy=0.5)
    jpeg = ActionOption(Offload("jpeg-q25"), edge_ms=10.0, payload_bytes=500_000, cloud_ms=1.0, accuracy=0.9)
    option = hedged_option(jpeg, skip6)
    correct = {o.key: np.ones(3, dtype=bool) for o in (skip6, jpeg)}
    config = SimConfig(fps=5, deadline_ms=70, duration_s=0.6, rtt_ms=10)
    records = simulate(StaticPolicy(option.key), [option], correct, UplinkTrace.constant("slow", 1e6), config,
                       frame_edge_ms=measured_device_ms(run))
    assert [r.hedge_answered for r in records] == [True, True, True]  # 500 KB at 1 Mbit/s: never in time
    assert [r.latency_ms for r in records][1:] == [75.0, 70.0]  # max(deadline, the part's end + the hedge's)


def test_hedged_options_travel_to_the_edge_and_take_their_parts_times() -> None:
    skip9 = ActionOption(Local("skip9"), edge_ms=40.0, accuracy=0.5, edge_samples_ms=(40.0, 41.0))
    jpeg = ActionOption(Offload("jpeg-q25"), edge_ms=5.0, payload_bytes=5_000, cloud_ms=10.0, accuracy=0.75)
    options = with_best_hedges([skip9, jpeg], 70.0)
    hedged_jpeg = options[-1]
    assert option_from_json(json.loads(json.dumps(option_to_json(hedged_jpeg)))) == hedged_jpeg
    # A static hedged policy's edge also gets its remote part and its hedge, by which it is measured.
    assert [o.key for o in actions_for(f"static:{hedged_jpeg.key}", options)] == [skip9.key, jpeg.key, hedged_jpeg.key]
    # Any hedge among the options may be named, not only the one `with_best_hedges` paired (which follows the
    # device's measured times, so a command line naming a hedge would otherwise work on one day and not the next).
    skip6 = ActionOption(Local("skip6"), edge_ms=60.0, accuracy=0.7, edge_samples_ms=(60.0,))
    named = actions_for("static:offload/jpeg-q25/hedge:local@skip6", with_best_hedges([skip9, skip6, jpeg], 70.0))
    assert [o.key for o in named] == [skip6.key, jpeg.key, "offload/jpeg-q25/hedge:local@skip6"]
    assert named[-1].hedge == skip6
    for unknown in ("offload/jpeg-q25/hedge:local@skip2", "offload/jpeg-q10/hedge:local@skip9", "local@skip2"):
        with pytest.raises(ValueError, match="no such action"):
            actions_for(f"static:{unknown}", options)
    # The edge measures the parts (a hedged frame's time mixes the two): the hedged option takes their times.
    [measured] = with_samples([hedged_jpeg], {jpeg.key: [6.0, 8.0], skip9.key: [50.0, 52.0]}, {jpeg.key: [12.0]})
    assert (measured.edge_ms, measured.cloud_ms, measured.edge_samples_ms) == (7.0, 12.0, (6.0, 8.0))
    assert measured.hedge is not None and measured.hedge.edge_samples_ms == (50.0, 52.0)
    # An adaptive policy's hedges are chosen again from the edge's own measurements: skip9 no longer fits after
    # the encode here, skip4 (faster now) does; a static policy keeps the hedge it was given.
    skip4 = ActionOption(Local("skip4"), edge_ms=80.0, accuracy=0.8, edge_samples_ms=(80.0,))
    given = with_best_hedges([skip9, skip4, jpeg], 70.0)
    assert given[-1].key == "offload/jpeg-q25/hedge:local@skip9"
    now = {skip9.key: [68.0, 69.0], skip4.key: [50.0, 51.0], jpeg.key: [6.0, 7.0]}
    assert measured_options(given, now, {}, 70.0, rehedge=True)[-1].key == "offload/jpeg-q25/hedge:local@skip4"
    assert measured_options(given, now, {}, 70.0, rehedge=False)[-1].key == "offload/jpeg-q25/hedge:local@skip9"
    run = EdgeRun([{"frame_id": 1, "action": hedged_jpeg.key, "capture_ms": 1000.0, "age_ms": 70.0, "status": "ok",
                    "missed_deadline": False, "hedge_answered": True, "bytes_sent": 5_000, "trace_ms": {},
                    "top": [{"class_index": 3}]}],
                  trace_start_wall_ms=1000.0, quota="dilation", calibration_ms={}, after_link_ms={})
    [record] = measured_records(run, [3])
    assert record.hedge_answered and record.correct and record.status == "ok"


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
                           allow_thread_fallback=os.geteuid() != 0, edge_cost_samples=3,
                           calibration_frames=2)
    out = tmp_path / "e2e.json"
    rows = run_e2e_bench([trace], bundle, images, out, settings,
                         policies=["static:local", "static:offload/jpeg-q90", "deadline"], plot=tmp_path / "e2e.png",
                         frames_dir=tmp_path / "frames")
    assert [r["policy"] for r in rows] == ["static:local", "static:offload/jpeg-q90", "deadline"]
    for row in rows:
        assert row["emulation"] == "relay" and row["frames"] == 20
        assert row["deadline_hit"] > 0.5, row  # 400 ms is plenty for the tiny model, even under the quota
        assert abs(row["difference_pp"] - 100 * (row["accuracy_at_deadline"] - row["simulated_accuracy_at_deadline"])) < 1e-9
        assert abs(row["presampled_difference_pp"]
                   - 100 * (row["accuracy_at_deadline"] - row["presampled_accuracy_at_deadline"])) < 1e-9
    # each edge measured its own actions under the quota before its run, and the simulator used those times
    assert set(rows[0]["calibrated_edge_ms_p50"]) == {"local"}
    assert all(v > 0 for row in rows for v in row["calibrated_edge_ms_p50"].values())
    assert set(rows[1]["calibrated_after_link_ms_p50"]) == {"offload/jpeg-q90"}  # measured through the real link
    assert rows[0]["bytes_mean"] == 0 and rows[1]["bytes_mean"] > 1000
    assert rows[1]["actions"] == {"offload/jpeg-q90": 1.0}
    document = json.loads(out.read_text())
    assert document["scenario"] == "e2e" and document["settings"]["device_profile"] == "pi5"
    assert set(rows[2]["calibrated_edge_ms_p50"]) == {o["action"] for o in document["options"]}  # all it may pick
    assert (tmp_path / "e2e.png").stat().st_size > 10_000
    frames = sorted((tmp_path / "frames").glob("*.jsonl"))
    assert len(frames) == 3
    lines = [json.loads(line) for line in frames[0].read_text().splitlines()]
    assert len(lines) == 20 and {"frame", "measured", "simulated"} <= set(lines[0])


def test_e2e_bench_with_a_dilated_device(tiny_bundle: Bundle, tmp_path: Path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    """No cgroup: the edge process stretches its own stages to the share, and says so in every row."""
    monkeypatch.chdir(tmp_path)
    images = write_labelled_images(tmp_path / "images", 6, 3)
    trace = tmp_path / "four-mbps.up"
    trace.write_text("\n".join(str(t) for t in range(1, 3001, 3)) + "\n")
    bundle = shutil.copytree(tiny_bundle.root, tmp_path / "bundle")
    settings = E2ESettings(device_profile="0.5", deadline_ms=400.0, fps=10.0, rtt_ms=20.0, duration_s=1.0,
                           edge_cost_samples=2, calibration_frames=2, device_emulation="dilation")
    [row] = run_e2e_bench([trace], bundle, images, tmp_path / "e2e.json", settings, policies=["static:offload/jpeg-q90"])
    assert row["device_quota"] == "dilation" and row["frames"] == 10 and row["deadline_hit"] > 0.5
    assert set(row["calibrated_after_link_ms_p50"]) == {"offload/jpeg-q90"}
    document = json.loads((tmp_path / "e2e.json").read_text())
    assert document["settings"]["device_emulation"] == "dilation"
    assert len(list((tmp_path / ".cache").glob("device-costs-*-0.5-dilation.json"))) == 1
