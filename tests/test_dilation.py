"""Device emulation by time dilation: a stage lasts its CPU time / share, with fake clocks and with a real runtime."""
from __future__ import annotations

import collections
import json
import logging
import threading
import time

import numpy as np
import pytest

from splitrt.actions import Local
from splitrt.bundle import Bundle
from splitrt.devices.dilation import STEADY_RUNS, NativeSpeed, TimeDilation, device_speed
from splitrt.devices.profiles import PROFILES, get_profile
from splitrt.edge.runtime import EdgeRuntime


class FakeClocks:
    """A thread that computes for `cpu_ms` of each stage and waits for the host for `preempted_ms` more."""

    def __init__(self) -> None:
        self.wall_ms = 0.0
        self.cpu_ms = 0.0
        self.sleeps_ms: list[float] = []

    def compute(self, cpu_ms: float, preempted_ms: float = 0.0) -> None:
        self.cpu_ms += cpu_ms
        self.wall_ms += cpu_ms + preempted_ms

    def sleep_s(self, seconds: float) -> None:
        self.sleeps_ms.append(seconds * 1000.0)
        self.wall_ms += seconds * 1000.0


def dilation(clocks: FakeClocks, share: float) -> TimeDilation:
    return TimeDilation(share, cpu_clock_ms=lambda: clocks.cpu_ms, wall_clock_ms=lambda: clocks.wall_ms,
                        sleep_s=clocks.sleep_s)


def test_a_stage_lasts_its_cpu_time_over_the_share() -> None:
    clocks = FakeClocks()
    slow = dilation(clocks, 0.25)
    with slow.stage():
        clocks.compute(10.0)
    assert clocks.wall_ms == pytest.approx(40.0)
    assert slow.slept_ms == pytest.approx(30.0)


def test_time_the_host_took_from_the_thread_is_not_added_again() -> None:
    clocks = FakeClocks()
    slow = dilation(clocks, 0.25)
    with slow.stage():
        clocks.compute(10.0, preempted_ms=12.0)  # other processes ran meanwhile: the device would not have waited
    assert clocks.wall_ms == pytest.approx(40.0)
    with slow.stage():
        clocks.compute(1.0, preempted_ms=50.0)  # already later than the device would be: no sleep
    assert clocks.sleeps_ms == [pytest.approx(18.0)]


def test_a_stage_that_raises_still_takes_the_device_time() -> None:
    clocks = FakeClocks()
    slow = dilation(clocks, 0.5)
    with pytest.raises(RuntimeError), slow.stage():
        clocks.compute(4.0)
        raise RuntimeError("codec failed")
    assert clocks.wall_ms == pytest.approx(8.0)


def test_steady_dilation_takes_a_models_least_recent_cpu_time() -> None:
    """A model's run that the host slowed (more CPU time for the same work) lasts what its quickest recent run
    did; a stage that names no model (its work depends on the input) lasts its own CPU time."""
    clocks = FakeClocks()
    steady = TimeDilation(0.25, steady_runs=2, cpu_clock_ms=lambda: clocks.cpu_ms,
                          wall_clock_ms=lambda: clocks.wall_ms, sleep_s=clocks.sleep_s)
    lasted = []
    for model, cpu_ms in [("head.onnx", 10.0), ("head.onnx", 14.0), ("tail.onnx", 4.0), (None, 14.0),
                          ("head.onnx", 12.0), ("head.onnx", 13.0)]:
        start = clocks.wall_ms
        with steady.stage(model):
            clocks.compute(cpu_ms)
        lasted.append(clocks.wall_ms - start)
    # head: 10 -> 40; 14 (min 10) -> 40; tail's own history; unnamed: 56; head window of 2: min(14, 12), min(12, 13)
    assert lasted == pytest.approx([40.0, 40.0, 16.0, 56.0, 48.0, 48.0])
    assert device_speed("steady", get_profile("0.2")).steady_runs == STEADY_RUNS  # type: ignore[attr-defined]
    assert device_speed("dilation", get_profile("0.2")).steady_runs == 0  # type: ignore[attr-defined]


def test_shares_and_emulation_names_are_checked() -> None:
    with pytest.raises(ValueError, match="cpu_share"):
        TimeDilation(0.0)
    with pytest.raises(ValueError, match="cpu_share"):
        TimeDilation(1.5)
    with pytest.raises(ValueError, match="unknown device emulation"):
        device_speed("netem", get_profile("0.2"))
    assert isinstance(device_speed("quota", get_profile("0.2")), NativeSpeed)
    dilated = device_speed("dilation", get_profile("0.2"))
    assert isinstance(dilated, TimeDilation) and dilated.cpu_share == 0.2  # a what-if share is its own
    nano = device_speed("dilation", get_profile("jetson-nano"))
    assert isinstance(nano, TimeDilation) and nano.cpu_share == PROFILES["jetson-nano"].dilation_share
    # a board's dilation share is above its quota share: the quota's tick overrun gives it more CPU than it says
    assert all(p.dilation_share >= p.cpu_share for p in PROFILES.values())


def test_a_dilated_runtime_stretches_each_stage_and_keeps_the_result(tiny_bundle: Bundle) -> None:
    pixels = np.random.default_rng(3).integers(0, 255, (40, 40, 3), dtype=np.uint8)
    reference = EdgeRuntime(tiny_bundle).infer(pixels, Local(), budget_ms=60_000.0)
    ticks = iter(range(1_000_000))  # a CPU clock that says every stage cost 1 ms of CPU
    slow = TimeDilation(0.05, cpu_clock_ms=lambda: float(next(ticks)))
    outcome = EdgeRuntime(tiny_bundle, device_speed=slow).infer(pixels, Local(), budget_ms=60_000.0)
    assert outcome.ok and outcome.top[0].class_index == reference.top[0].class_index
    stages = ("preprocess", "head", "merge")
    assert set(outcome.trace_ms) >= set(stages)
    assert all(outcome.trace_ms[k] >= 20.0 for k in stages), outcome.trace_ms  # 1 ms / 0.05 each
    assert outcome.latency_ms >= 60.0


def test_device_costs_are_sampled_dilated_without_a_cgroup(tiny_bundle: Bundle, tmp_path) -> None:  # type: ignore[no-untyped-def]
    from splitrt.bench.device_costs import device_options
    from splitrt.policies.policies import ActionOption

    image = np.random.default_rng(4).integers(0, 255, (40, 40, 3), dtype=np.uint8)
    measured = [ActionOption(Local(), edge_ms=1.0, accuracy=1.0)]
    cache = tmp_path / "costs.json"
    options, model = device_options(tiny_bundle, measured, get_profile("0.02"), image, cache, repeats=3,
                                    interval_ms=200.0, emulation="dilation")
    assert model == "sampled dilated"
    assert len(options[0].edge_samples_ms) == 3
    assert '"emulation": "dilation"' in cache.read_text()
    recorded = json.loads(cache.read_text())
    assert recorded["measured_at"].endswith("+00:00") and isinstance(recorded["others_busy_cores"], float)
    assert recorded["cores"] >= 1
    # The cache answers the same question again without sampling.
    again, _ = device_options(tiny_bundle, measured, get_profile("0.02"), image, cache, repeats=3,
                              interval_ms=200.0, emulation="dilation")
    assert again[0].edge_samples_ms == options[0].edge_samples_ms


def test_a_busy_host_is_named_when_device_costs_are_measured(tiny_bundle: Bundle, tmp_path, caplog) -> None:  # type: ignore[no-untyped-def]
    from splitrt.bench.device_costs import busy_host_warning, device_options
    from splitrt.bench.device_load import CpuHogs
    from splitrt.policies.policies import ActionOption

    assert busy_host_warning(0.3, 2, None) is None
    message = busy_host_warning(1.2, 2, tmp_path / "costs.json")
    assert message is not None and "1.2 of 2 cores" in message and str(tmp_path / "costs.json") in message

    image = np.random.default_rng(6).integers(0, 255, (40, 40, 3), dtype=np.uint8)
    measured = [ActionOption(Local(), edge_ms=1.0, accuracy=1.0)]
    cache = tmp_path / "costs.json"
    with CpuHogs() as hogs:
        hogs.set(2)
        time.sleep(0.3)  # the busy processes are running before the measurement starts
        with pytest.warns(UserWarning, match="other processes kept .* cores busy while they were measured"):
            device_options(tiny_bundle, measured, get_profile("0.5"), image, cache, repeats=5, interval_ms=100.0,
                           emulation="dilation")
    assert json.loads(cache.read_text())["others_busy_cores"] > 0.5
    # A cache measured that way says so again each time it is reused, and the log says where and when it is from.
    with caplog.at_level(logging.INFO, logger="splitrt.bench.device_costs"):
        with pytest.warns(UserWarning, match="other processes kept"):
            device_options(tiny_bundle, measured, get_profile("0.5"), image, cache, repeats=5, interval_ms=100.0,
                           emulation="dilation")
    assert f"reusing {cache}, measured 20" in caplog.text and "while other processes kept" in caplog.text


def test_remote_actions_are_sampled_through_a_loopback_cloud(tiny_bundle: Bundle, tmp_path) -> None:  # type: ignore[no-untyped-def]
    from splitrt.actions import Offload
    from splitrt.bench.device_costs import device_options
    from splitrt.policies.policies import ActionOption

    image = np.random.default_rng(5).integers(0, 255, (40, 40, 3), dtype=np.uint8)
    measured = [ActionOption(Local(), edge_ms=1.0, accuracy=1.0),
                ActionOption(Offload("jpeg-q75"), edge_ms=1.0, payload_bytes=900, cloud_ms=0.5, accuracy=1.0)]
    options, _ = device_options(tiny_bundle, measured, get_profile("0.5"), image, tmp_path / "costs.json",
                                repeats=3, interval_ms=100.0, emulation="dilation")
    local, offload = options
    assert len(offload.edge_samples_ms) == 3 and len(offload.cloud_samples_ms) == 3  # every reply came in time
    assert not local.cloud_samples_ms
    assert offload.cloud_ms == pytest.approx(float(np.median(offload.cloud_samples_ms)))


def test_a_stopped_stage_ends_its_stretch_and_is_not_a_models_run() -> None:
    """A hedge whose reply came is stopped: its stage ends at once, and its partial run does not become the
    model's steady time."""
    clocks = FakeClocks()
    steady = TimeDilation(0.25, steady_runs=4, cpu_clock_ms=lambda: clocks.cpu_ms,
                          wall_clock_ms=lambda: clocks.wall_ms, sleep_s=clocks.sleep_s)
    with steady.stage("head.onnx"):
        clocks.compute(10.0)
    stop = threading.Event()
    stop.set()
    start = clocks.wall_ms
    with pytest.raises(RuntimeError), steady.stage("head.onnx", stop):
        clocks.compute(1.0)  # stopped part-way
        raise RuntimeError("Exiting due to terminate flag being set to true")
    assert clocks.wall_ms - start == pytest.approx(1.0), "no stretch after a stop"
    with steady.stage("head.onnx"):
        clocks.compute(12.0)
    assert steady._runs_ms["head.onnx"] == collections.deque([10.0, 12.0])  # the partial 1 ms run is not one


def test_a_stop_during_the_stretch_ends_it() -> None:
    """On the real clock: a stage stretched to about 2 s (a 0.0005 share) ends soon after its stop is set."""
    cpu_ms = [0.0]
    slow = TimeDilation(0.0005, cpu_clock_ms=lambda: cpu_ms[0])
    stop = threading.Event()
    threading.Timer(0.05, stop.set).start()
    begin = time.perf_counter()
    with slow.stage(None, stop):
        cpu_ms[0] = 1.0  # 1 ms of "CPU": 2,000 ms at this share
    assert time.perf_counter() - begin < 1.0
