"""The CPU-load correction of the device's times: psutil's reading, the contention model, `DeviceSlowdown` net of
it, its wiring into the edge and the daemon, and the device-load benchmark's parts (its busy processes are real)."""
from __future__ import annotations

import itertools
import math
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable

import numpy as np
import psutil
import pytest
from PIL import Image

from splitrt.actions import Local
from splitrt.bench.device_load import (ESTIMATES, HOG_CODE, CpuHogs, Estimates, FrameRecord, load_share_contention,
                                       parse_schedule, phase_rows, summarise)
from splitrt.bundle import Bundle
from splitrt.edge.cpu_load import CpuContention, CpuReading, applies, contention, others_cores, read_cpu, usable_cpus
from splitrt.policies.estimators import DeviceSlowdown, LinkEstimates
from splitrt.policies.policies import ActionOption, Decision, LinkView, make_policy


def test_contention_counts_only_load_that_leaves_the_inference_threads_no_free_core() -> None:
    assert contention(0.0, cores=2) == 1.0
    assert contention(1.0, cores=2) == 1.0  # one busy process on 2 cores: a core is still free
    assert contention(1.5, cores=2) == pytest.approx(1.5)
    assert contention(2.0, cores=2) == pytest.approx(2.0)
    assert contention(3.5, cores=4, threads=2) == pytest.approx(2.0)
    assert contention(8.0, cores=2) == 2.0  # more than that cannot be read off busy time: capped
    assert contention(0.5, cores=2, threads=2) == pytest.approx(1.5)  # both cores needed
    assert contention(0.5, cores=1, threads=4) == pytest.approx(1.5)  # more threads than cores
    assert contention(1.1, cores=2) == 1.0  # the machine's own noise beside one busy process is not a load
    assert contention(0.1, cores=1) == 1.0 and contention(0.2, cores=1) == pytest.approx(1.2)


def test_others_cores_is_the_machine_s_busy_time_less_this_process_s() -> None:
    before = CpuReading(busy_s=10.0, own_s=2.0, wall_s=100.0)
    assert others_cores(before, CpuReading(busy_s=12.5, own_s=2.5, wall_s=101.0)) == pytest.approx(2.0)
    assert others_cores(before, CpuReading(busy_s=10.1, own_s=2.3, wall_s=101.0)) == 0.0  # tick rounding
    assert others_cores(before, before) == 0.0


def test_the_sampler_reads_over_the_latest_window_of_at_least_the_interval(caplog: pytest.LogCaptureFixture) -> None:
    readings = iter([CpuReading(0.0, 0.0, 0.0), CpuReading(0.1, 0.0, 0.05), CpuReading(0.4, 0.0, 0.2),
                     CpuReading(0.4, 0.0, 0.25), CpuReading(0.6, 0.1, 0.4)])
    sampler = CpuContention(threads=1, cpus=[0, 1], interval_ms=100.0, read=lambda: next(readings))
    assert sampler.cores == 2
    assert sampler.sample() == 1.0  # 50 ms after the first reading: no window yet
    assert sampler.sample() == pytest.approx(2.0)  # since the reading at 50 ms: 0.3 s of others over 0.15 s
    assert sampler.sample() == pytest.approx(1.5) and sampler.others == pytest.approx(1.5)  # since 50 ms again
    assert sampler.sample() == 1.0 and sampler.others == pytest.approx(0.1 / 0.15)  # since 250 ms

    def fails() -> CpuReading:
        raise psutil.AccessDenied()

    sampler._read = fails
    assert sampler.sample() == 1.0 and sampler.sample() == 1.0  # the last value, kept
    assert sum("cannot read the CPU's load" in r.message for r in caplog.records) == 1  # said once


def test_a_started_sampler_reads_on_its_own_until_closed() -> None:
    sampler = CpuContention(cpus=[0], interval_ms=10.0, read=lambda: CpuReading(0.0, 0.0, time.monotonic())).start()
    try:
        deadline = time.monotonic() + 10
        while len(sampler._readings) < 4 and time.monotonic() < deadline:
            time.sleep(0.01)
        assert len(sampler._readings) >= 4
    finally:
        sampler.close()
    assert sampler._ticker is None
    assert usable_cpus() and all(isinstance(c, int) for c in usable_cpus())


def test_a_past_frame_reads_the_contention_of_the_readings_around_it() -> None:
    # readings every 100 ms (monotonic s): the others kept 0.2 cores busy from 0.1 to 0.2 s, 1 to 0.3 s, 2 to 0.4 s
    busy = {0.0: 0.0, 0.1: 0.0, 0.2: 0.02, 0.3: 0.12, 0.4: 0.32, 0.5: 0.32}
    readings = itertools.chain([CpuReading(b, 0.0, t) for t, b in busy.items()],
                               itertools.repeat(CpuReading(0.32, 0.0, 0.6)))  # now: 0.6 s
    sampler = CpuContention(threads=1, cpus=[0, 1], interval_ms=100.0, read=lambda: next(readings))
    for _ in range(5):
        sampler._record()
    epoch_ms = lambda: 1_000_600.0  # noqa: E731  the frames' clock reads 1,000,000.6 s when monotonic reads 0.6 s
    assert sampler.between_ms(1_000_320.0, 1_000_340.0, epoch_ms) == pytest.approx(2.0)  # from 0.3 to 0.4 s
    assert sampler.between_ms(1_000_120.0, 1_000_140.0, epoch_ms) == 1.0  # 0.2 cores: noise on a free core
    assert sampler.between_ms(1_000_250.0, 1_000_350.0, epoch_ms) == pytest.approx(1.5)  # 0.2 to 0.4 s: 1.5 cores
    assert sampler.between_ms(999_000.0, 999_010.0, epoch_ms) == 1.0  # before the readings kept: unknown


def test_calibration_nets_each_frame_of_the_load_it_ran_under(tiny_bundle: Bundle) -> None:
    from splitrt.clock import wall_clock_ms
    from splitrt.edge.calibration import calibrate
    from splitrt.edge.runtime import EdgeRuntime

    windows: list[tuple[float, float]] = []

    def twice_as_slow(start_ms: float, end_ms: float) -> float:
        windows.append((start_ms, end_ms))
        return 2.0

    runtime = EdgeRuntime(tiny_bundle, None)
    began_ms = wall_clock_ms()
    try:
        device, _ = calibrate(runtime, [Local()], np.zeros((40, 40, 3), np.uint8), 3, 50.0, 0.0, load=twice_as_slow)
    finally:
        runtime.close()
    assert len(device["local"]) == len(windows) == 3  # asked once per frame kept (the first is left out)
    assert [w[1] - w[0] for w in windows] == pytest.approx([2.0 * ms for ms in device["local"]])  # netted of 2x
    assert began_ms <= windows[0][0] and all(a[1] <= b[0] for a, b in zip(windows, windows[1:]))  # frame by frame
    assert windows[-1][1] <= wall_clock_ms()


def test_the_daemon_s_automatic_setting_reads_the_cpu_only_where_the_model_was_measured() -> None:
    cpu = ["CPUExecutionProvider"]
    assert applies("auto", tracks_device=True, threads=1, emulated=False, providers=cpu)[0]
    assert not applies("auto", tracks_device=False, threads=1, emulated=False, providers=cpu)[0]
    assert "emulated" in applies("auto", tracks_device=True, threads=1, emulated=True, providers=cpu)[1]
    assert "CUDAExecutionProvider" in applies("auto", True, 1, False, ["CUDAExecutionProvider", *cpu])[1]
    assert "one inference thread" in applies("auto", True, 2, False, cpu)[1]
    assert applies("on", False, 4, True, ["CUDAExecutionProvider"])[0]
    assert not applies("off", True, 1, False, cpu)[0]


def test_psutil_sees_a_busy_process_beside_this_one() -> None:
    cpus, process = usable_cpus(), psutil.Process()
    before = read_cpu(process, cpus)
    hog = subprocess.Popen([sys.executable, "-c", HOG_CODE, str(psutil.Process().pid)])
    try:
        time.sleep(1.0)
        after = read_cpu(process, cpus)
    finally:
        hog.kill()
        hog.wait(10)
    assert others_cores(before, after) >= 0.5  # the busy loop had at least half a core of the second


def test_device_slowdown_is_learnt_net_of_the_contention_and_follows_it_at_once() -> None:
    device = DeviceSlowdown(alpha=0.5)
    for _ in range(20):
        device.observe(120.0, 60.0, contention=2.0)  # twice as slow, all of it the other processes'
    assert device.factor == pytest.approx(1.0)  # the contention now is 1: the device itself is as measured
    device.contention = 2.0
    assert device.factor == pytest.approx(2.0)
    for _ in range(20):
        device.observe(90.0, 60.0, contention=1.0)  # slower by itself (say, throttled)
    assert device.factor == pytest.approx(3.0, rel=1e-3)  # 1.5 of its own, times the load now
    device.observe(90.0, 60.0, contention=0.0)  # no reading: ignored
    assert device.factor == pytest.approx(3.0, rel=1e-3)
    device.observe(180.0, 60.0)  # no contention given: the current one (2), so 1.5 of its own again
    assert device.factor == pytest.approx(3.0, rel=1e-3)


class FixedContention:
    """A sampler whose reading the test sets."""

    def __init__(self, value: float) -> None:
        self.value = value

    def sample(self) -> float:
        return self.value


class RecordingPolicy:
    name = "recording"
    uses_link_estimates = False

    def __init__(self) -> None:
        self.inner = make_policy("deadline-tracking")
        self.views: list[LinkView] = []

    def decide(self, budget_ms: float, options: list[ActionOption], link: LinkView) -> Decision:
        self.views.append(link)
        return self.inner.decide(budget_ms, options, link)


class SpyDevice(DeviceSlowdown):
    def __init__(self) -> None:
        super().__init__()
        self.contentions: list[float] = []

    def observe(self, observed_ms: float, typical_ms: float, contention: float = 1.0) -> None:
        self.contentions.append(contention)
        super().observe(observed_ms, typical_ms, contention)


def test_the_edge_counts_the_load_before_a_frame_has_run_slow(tiny_bundle: Bundle) -> None:
    from splitrt.edge.adaptive import AdaptiveRuntime
    from splitrt.edge.runtime import EdgeRuntime

    image = np.random.default_rng(0).integers(0, 256, (40, 40, 3), dtype=np.uint8)
    policy, device, load = RecordingPolicy(), SpyDevice(), FixedContention(2.0)
    # a typical time far above any run of the tiny model: every observation says "faster", by the capped ratio
    adaptive = AdaptiveRuntime(EdgeRuntime(tiny_bundle), policy, [ActionOption(Local(), edge_ms=1e4, accuracy=0.5)],
                               estimates=LinkEstimates(device=device), cpu_contention=load)
    assert adaptive.infer(image, budget_ms=1000).ok
    assert policy.views[0].device_slowdown == pytest.approx(2.0)  # the first frame, before any observation
    assert device.contentions == [2.0]  # and its run is taken net of it
    load.value = 1.0
    assert adaptive.infer(image, budget_ms=1000).ok
    # the load is gone at once: what is left is the one observation, capped at 4x faster, with weight 0.1
    assert policy.views[1].device_slowdown == pytest.approx(math.exp(-0.1 * math.log(4.0)))


def test_the_daemon_reads_the_cpu_for_a_tracking_policy_unless_told_not_to_or_emulating_a_device(
        tmp_path: Path, tiny_bundle: Bundle, monkeypatch: pytest.MonkeyPatch) -> None:
    from splitrt.edge.config import load_config, policy_options
    from splitrt.edge.daemon import EdgeDaemon
    from splitrt.edge.runtime import EdgeRuntime
    from tests.test_daemon import OPTIONS, policy_config

    def sampler(device: object = None, **policy: object) -> object:
        config = load_config(policy_config(tmp_path, str(tiny_bundle.root), OPTIONS, "tcp://127.0.0.1:1", **policy))
        adaptive = EdgeDaemon(config, device)._adaptive(runtime, policy_options(config), lambda: False)
        if isinstance(adaptive.cpu_contention, CpuContention):
            adaptive.cpu_contention.close()
        return adaptive.cpu_contention

    monkeypatch.delenv("SPLITRT_THREADS", raising=False)
    runtime = EdgeRuntime(tiny_bundle, None)
    try:
        tracking = sampler(name="deadline-tracking")
        assert isinstance(tracking, CpuContention) and tracking.threads == runtime.intra_op_threads == 1
        assert sampler(name="deadline") is None  # it does not follow the device's speed: nothing to correct
        assert sampler(device=object(), name="deadline-tracking") is None  # an emulated device
        assert sampler(name="deadline-tracking", cpu_load_correction="off") is None
        assert isinstance(sampler(name="deadline", cpu_load_correction="on"), CpuContention)
        monkeypatch.setenv("SPLITRT_THREADS", "1")  # under `splitrt devices run --profile ...`
        assert sampler(name="deadline-tracking") is None
    finally:
        runtime.close()
    with pytest.raises(Exception, match=r"cpu_load_correction"):
        load_config(policy_config(tmp_path, str(tiny_bundle.root), OPTIONS, "tcp://127.0.0.1:1",
                                  cpu_load_correction=True))


def test_the_daemon_nets_its_start_up_calibration_of_the_load_when_it_reads_the_cpu(
        tmp_path: Path, tiny_bundle: Bundle, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    from splitrt.edge.config import load_config, policy_options
    from splitrt.edge.daemon import EdgeDaemon
    from splitrt.edge.runtime import EdgeRuntime
    from tests.test_daemon import OPTIONS, policy_config

    image = tmp_path / "calibration.png"
    Image.fromarray(np.full((40, 40, 3), 90, np.uint8)).save(image)
    asked: list[tuple[float, float]] = []

    def under_load(self: CpuContention, start_ms: float, end_ms: float, clock_ms: object = None) -> float:
        asked.append((start_ms, end_ms))
        return 2.0  # as if two busy processes ran beside every frame

    monkeypatch.setattr(CpuContention, "between_ms", under_load)
    monkeypatch.delenv("SPLITRT_THREADS", raising=False)

    def calibrated(setting: str, name: str = "deadline-tracking") -> dict[str, object]:
        config = load_config(policy_config(tmp_path, str(tiny_bundle.root), OPTIONS, "tcp://127.0.0.1:1",
                                           name=name, cpu_load_correction=setting,
                                           calibration_image=str(image), calibrate_frames=2))
        caplog.clear()
        with caplog.at_level("INFO", logger="splitrt.edge.daemon"):
            adaptive = EdgeDaemon(config)._adaptive(runtime, policy_options(config), lambda: False)
        tracks[name] = adaptive.cpu_contention is not None
        if isinstance(adaptive.cpu_contention, CpuContention):
            adaptive.cpu_contention.close()
        return next(r.__dict__ for r in caplog.records if getattr(r, "event", "") == "calibrated")

    tracks: dict[str, bool] = {}
    runtime = EdgeRuntime(tiny_bundle, None)  # no cloud: local is measured, the split keeps the file's costs
    try:
        on = calibrated("auto")
        assert on["loaded_frames"] == len(asked) == 2 and tracks["deadline-tracking"]
        assert "2 of 2 frames ran beside other processes' load (up to 2.00x slower)" in on["msg"] % on["args"]
        asked.clear()
        # a policy that does not follow the device's speed keeps its calibration for good: netted all the same,
        # though the CPU is not read after it
        fixed = calibrated("auto", name="deadline")
        assert fixed["loaded_frames"] == len(asked) == 2 and not tracks["deadline"]
        asked.clear()
        off = calibrated("off")
        assert off["loaded_frames"] == 0 and not asked  # without the correction, the CPU is not read
    finally:
        runtime.close()


def test_busy_processes_start_stop_and_never_outlive_the_benchmark(tmp_path: Path) -> None:
    with CpuHogs() as hogs:
        hogs.set(2)
        pids = [p.pid for p in hogs._processes]
        assert all(psutil.pid_exists(pid) for pid in pids)
        hogs.set(1)
        assert psutil.pid_exists(pids[0]) and not psutil.pid_exists(pids[1])  # stopped and reaped
    assert hogs.count == 0
    # A benchmark killed outright leaves no busy process behind.
    script = tmp_path / "parent.py"
    script.write_text("import os\nfrom splitrt.bench.device_load import CpuHogs\nhogs = CpuHogs()\nhogs.set(1)\n"
                      "print(hogs._processes[0].pid, flush=True)\nos._exit(0)\n")
    child = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=60,
                           cwd=Path(__file__).resolve().parents[1])
    try:
        orphan = psutil.Process(int(child.stdout.split()[0]))
        orphan.wait(timeout=30)  # not our child: waits until it is gone
    except psutil.NoSuchProcess:
        pass  # gone before we looked
    except psutil.TimeoutExpired:
        if orphan.status() != psutil.STATUS_ZOMBIE:  # ended, but nothing reaped it
            orphan.kill()
            raise AssertionError("a busy process outlived the benchmark that started it") from None


def test_schedules_are_checked() -> None:
    assert parse_schedule("0,2,0,1") == [0, 2, 0, 1]
    with pytest.raises(ValueError, match="--hogs: expected"):
        parse_schedule("0,two")
    with pytest.raises(ValueError, match="0..64"):
        parse_schedule("0,-1")


def test_the_summary_scores_each_estimate_against_the_runs() -> None:
    assert load_share_contention(1.0, 2) == pytest.approx(2.0)  # one busy process of 2 cores: "half the CPU"
    estimates = Estimates(typical_ms=10.0)
    frames = []
    for i, (phase, took, load) in enumerate([(0, 10.0, 1.0)] * 5 + [(1, 20.0, 2.0)] * 15):
        predicted = estimates.predict(load, load_share_contention(2.0 if phase else 0.0, 2))
        estimates.observe(took, load, load_share_contention(2.0 if phase else 0.0, 2))
        frames.append(FrameRecord(i * 0.1, phase, 2 * phase, took, 2.0 * phase, load, predicted))
    rows = {r["estimate"]: r for r in summarise(frames, deadline_ms=15.0)}
    assert set(rows) == set(ESTIMATES)
    exact = rows["observed runs + contention"]
    assert exact["error_p50_pct"] == 0.0 and exact["deadline_calls_wrong"] == 0.0 and exact["within_15pct"] == 1.0
    calibrated = rows["as calibrated"]
    assert calibrated["deadline_calls_wrong"] == 0.75  # it called every loaded frame in time
    assert calibrated["after_change_error_p50_pct"] == 50.0
    assert 0.0 < rows["observed runs"]["after_change_error_p50_pct"] < 50.0  # it learns, but only as frames show it
    [quiet, loaded] = phase_rows(frames, 10.0)
    assert quiet["slowdown_p50"] == 1.0 and loaded["slowdown_p50"] == 2.0 and loaded["contention_p50"] == 2.0


def test_the_schedule_runs_real_frames_beside_real_busy_processes(tiny_bundle: Bundle) -> None:
    from splitrt.bench.device_load import run_schedule
    from splitrt.edge.runtime import EdgeRuntime

    runtime = EdgeRuntime(tiny_bundle)
    image = np.random.default_rng(3).integers(0, 256, (40, 40, 3), dtype=np.uint8)

    def infer(_index: int) -> float:
        started = time.perf_counter()
        assert runtime.infer(image, Local(), budget_ms=60_000).ok
        return (time.perf_counter() - started) * 1000.0

    try:
        with CpuHogs() as hogs:
            frames = run_schedule(infer, [0, 1], phase_s=0.5, fps=20.0, typical_ms=infer(0), sampler=CpuContention(),
                                  hogs=hogs)
            assert hogs.count == 1
        assert hogs.count == 0
    finally:
        runtime.close()
    assert {f.phase for f in frames} == {0, 1} and {f.hogs for f in frames if f.phase == 1} == {1}
    assert all(set(f.predicted_ms) == set(ESTIMATES) and f.took_ms > 0 for f in frames)


def test_start_up_calibrations_beside_busy_processes_are_scored_as_measured_and_as_netted() -> None:
    from splitrt.bench.device_load import startup_calibrations

    with CpuHogs() as hogs:
        def contention_ms(_start_ms: float, _end_ms: float) -> float:
            return 1.0 + hogs.count  # as if each busy process slowed a frame by one more run's time

        def calibrate_once(load: Callable[[float, float], float]) -> list[float]:
            return [ms * (1.0 + hogs.count) / load(0.0, ms) for ms in (9.0, 10.0, 11.0)]  # ran slower, netted

        rows = startup_calibrations(calibrate_once, contention_ms, [0, 1], hogs, settle_s=0.0)
        assert hogs.count == 0  # stopped after the last calibration
    assert [(r["hogs"], r["frames"], r["loaded_frames"]) for r in rows] == [(0, 3, 0), (1, 3, 3)]
    assert rows[1]["measured_ms"] == pytest.approx(20.0) and rows[1]["measured_error"] == pytest.approx(1.0)
    assert rows[1]["netted_ms"] == pytest.approx(10.0) and rows[1]["netted_error"] == 0.0
    with pytest.raises(ValueError, match="--startup-hogs: expected"):
        parse_schedule("one", "--startup-hogs")
