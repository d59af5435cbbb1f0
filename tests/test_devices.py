"""Board detection, telemetry, execution providers and emulated device profiles (CPU quota in a cgroup)."""
from __future__ import annotations

import os
import sys
import time
from pathlib import Path

import pytest

from splitrt.devices.calibrate import suggest_share
from splitrt.devices.detect import detect_board
from splitrt.devices.ort import choose_providers, create_session, default_threads
from splitrt.devices.profiles import (
    PROFILES,
    CgroupLayout,
    CgroupUnavailable,
    CpuQuota,
    call_under_profile,
    cpu_limit,
    find_cgroup_layout,
    get_profile,
    run_under_profile,
)
from splitrt.devices.telemetry import read_telemetry, read_thermal_zones
from splitrt.devices.timing import time_calls_ms


def test_jetson_by_tegra_release(tmp_path: Path) -> None:
    release = tmp_path / "nv_tegra_release"
    release.write_text("# R35 (release), REVISION: 4.1, GCID: 33958178, BOARD: t186ref\n")
    model = tmp_path / "model"
    model.write_bytes(b"NVIDIA Jetson Orin Nano Developer Kit\0")
    board = detect_board(release, model, machine="aarch64", cpu_count=6)
    assert board.kind == "jetson" and board.l4t_release.startswith("# R35")
    assert board.suggested_profile == "jetson-orin-nano"


def test_jetson_by_device_tree_only(tmp_path: Path) -> None:
    model = tmp_path / "model"
    model.write_bytes(b"NVIDIA Jetson Nano Developer Kit\0")
    board = detect_board(tmp_path / "absent", model)
    assert board.kind == "jetson" and board.suggested_profile == "jetson-nano"


@pytest.mark.parametrize("model, profile", [("Raspberry Pi 4 Model B Rev 1.4", "pi4"), ("Raspberry Pi 5 Model B Rev 1.0", "pi5")])
def test_raspberry_pi_by_device_tree(tmp_path: Path, model: str, profile: str) -> None:
    path = tmp_path / "model"
    path.write_bytes(model.encode() + b"\0")
    board = detect_board(tmp_path / "absent", path)
    assert board.kind == "raspberry-pi" and board.model == model and board.suggested_profile == profile


def test_anything_else_is_generic(tmp_path: Path) -> None:
    board = detect_board(tmp_path / "absent", tmp_path / "absent-too", machine="x86_64", cpu_count=2)
    assert board.kind == "generic" and board.suggested_profile == "x86" and board.cpu_count == 2


def test_thermal_zones_and_telemetry(tmp_path: Path) -> None:
    for index, (kind, millidegrees) in enumerate([("cpu-thermal", "51234"), ("gpu-thermal", "47000"), ("broken", "n/a")]):
        zone = tmp_path / f"thermal_zone{index}"
        zone.mkdir()
        (zone / "type").write_text(kind + "\n")
        (zone / "temp").write_text(millidegrees + "\n")
    assert read_thermal_zones(tmp_path) == {"cpu-thermal": 51.234, "gpu-thermal": 47.0}
    snapshot = read_telemetry(tmp_path, jetson_stats=lambda: {"GPU": 12.0})
    assert 0 < snapshot.memory_used_bytes <= snapshot.memory_total_bytes
    assert snapshot.jetson == {"GPU": 12.0} and snapshot.to_json()["temperatures_c"]["cpu-thermal"] == 51.234


def test_providers_prefer_tensorrt_then_cuda_then_cpu() -> None:
    everything = ["CPUExecutionProvider", "CUDAExecutionProvider", "TensorrtExecutionProvider", "AzureExecutionProvider"]
    assert choose_providers(everything) == ["TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"]
    assert choose_providers(["CPUExecutionProvider", "CUDAExecutionProvider"]) == ["CUDAExecutionProvider", "CPUExecutionProvider"]
    assert choose_providers(everything, allow_gpu=False) == ["CPUExecutionProvider"]
    assert choose_providers(["AzureExecutionProvider", "CPUExecutionProvider"]) == ["CPUExecutionProvider"]


def test_session_keeps_its_signature_and_threads(tiny_bundle, monkeypatch: pytest.MonkeyPatch) -> None:  # type: ignore[no-untyped-def]
    session = create_session(tiny_bundle.path("full.onnx"), 1, ("CPUExecutionProvider",))
    assert session.get_providers() == ["CPUExecutionProvider"]
    assert create_session(tiny_bundle.path("full.onnx")).get_providers()[-1] == "CPUExecutionProvider"
    monkeypatch.setenv("SPLITRT_THREADS", "3")
    assert default_threads() == 3
    monkeypatch.setenv("SPLITRT_THREADS", "zero")
    with pytest.raises(ValueError, match="SPLITRT_THREADS"):
        default_threads()


def test_profiles_are_cited_and_in_range() -> None:
    assert set(PROFILES) == {"x86", "pi4", "pi5", "jetson-nano", "jetson-orin-nano"}
    for profile in PROFILES.values():
        assert 0.1 <= profile.cpu_share <= 1.0 and profile.threads >= 1 and profile.source
        assert profile.basis in ("reference", "published", "derived")
        assert (profile.published_ms is None) == (profile.basis == "reference")
    with pytest.raises(KeyError, match="profiles: x86"):
        get_profile("pi3")


def test_suggested_share_scales_inversely_with_latency() -> None:
    assert suggest_share(0.2, measured_ms=60.0, target_ms=49.0) == pytest.approx(0.2449, abs=1e-4)
    assert suggest_share(1.0, 10.0, None) is None


def test_timing_uses_the_injected_clock() -> None:
    ticks = iter(range(0, 1000, 5))
    timing = time_calls_ms(lambda: None, repeats=4, warmup=2, clock_ms=lambda: float(next(ticks)))
    assert timing.p50_ms == 5.0 and len(timing.samples_ms) == 4


def test_no_cgroup_is_a_clear_error_or_a_warned_fallback(tmp_path: Path) -> None:
    with pytest.raises(CgroupUnavailable, match="no cgroup cpu controller"):
        find_cgroup_layout(tmp_path)
    layout = CgroupLayout(1, tmp_path / "missing")
    with pytest.raises(CgroupUnavailable, match="thread count only"):
        with cpu_limit(get_profile("pi4"), layout=layout):
            pass
    with pytest.warns(UserWarning, match="emulating by thread count only"):
        with cpu_limit(get_profile("pi4"), fallback="threads", layout=layout) as profile:
            assert profile.threads == 1


def test_a_v1_layout_is_found_and_quota_files_written(tmp_path: Path) -> None:
    (tmp_path / "cpu").mkdir()
    (tmp_path / "cpu" / "cpu.cfs_quota_us").write_text("-1")
    layout = find_cgroup_layout(tmp_path)
    assert layout == CgroupLayout(1, tmp_path / "cpu")
    quota = CpuQuota(0.25, layout, label="t")  # a plain directory stands in for the kernel's files
    assert (quota.path / "cpu.cfs_quota_us").read_text() == "2500"
    assert (quota.path / "cpu.cfs_period_us").read_text() == "10000"
    for name in ("cpu.cfs_quota_us", "cpu.cfs_period_us"):
        (quota.path / name).unlink()
    quota.close()
    assert not quota.path.exists()
    small = CpuQuota(0.065, layout, label="t")  # below 0.1 the 1 ms minimum quota needs a longer period
    assert (small.path / "cpu.cfs_quota_us").read_text() == "1000"
    assert (small.path / "cpu.cfs_period_us").read_text() == "15385"
    for name in ("cpu.cfs_quota_us", "cpu.cfs_period_us"):
        (small.path / name).unlink()
    small.close()


def test_a_bare_cpu_share_is_a_what_if_profile() -> None:
    profile = get_profile("0.065")
    assert profile.cpu_share == 0.065 and profile.threads == 1 and profile.basis == "what-if"
    with pytest.raises(KeyError, match="CPU share"):
        get_profile("jetson-tx9")
    for bad in ("1.5", "0.0005"):
        with pytest.raises(KeyError, match="CPU share must be in"):
            get_profile(bad)
    assert get_profile("0.065").sample_ms == pytest.approx(4 * 15.385)  # four of its (longer) periods


def _writable_cgroup() -> str | None:
    try:
        find_cgroup_layout()
    except CgroupUnavailable as exc:
        return str(exc)
    return None


cgroups = pytest.mark.skipif(_writable_cgroup() is not None, reason=f"cannot write cgroups here: {_writable_cgroup()}")


def _spin_cpu_ms(wall_ms: float) -> float:
    """Busy-loop for `wall_ms` of wall-clock time; returns the CPU time this thread got, in ms."""
    start_wall, start_cpu = time.perf_counter(), time.thread_time()
    while (time.perf_counter() - start_wall) * 1000 < wall_ms:
        pass
    return (time.thread_time() - start_cpu) * 1000


@cgroups
def test_a_callable_under_a_quota_gets_about_its_share_and_the_cgroup_is_removed() -> None:
    before = set(os.listdir("/sys/fs/cgroup/cpu")) if os.path.isdir("/sys/fs/cgroup/cpu") else set()
    cpu_ms = call_under_profile(get_profile("pi4"), _spin_cpu_ms, 300.0)  # share 0.2
    assert cpu_ms < 0.4 * 300  # without the quota this thread would get up to 300 ms
    after = set(os.listdir("/sys/fs/cgroup/cpu")) if os.path.isdir("/sys/fs/cgroup/cpu") else set()
    assert not {name for name in after - before if name.startswith("splitrt-")}
    assert _spin_cpu_ms(100.0) > 0.0  # and this thread runs freely again


@cgroups
def test_a_subprocess_runs_inside_the_quota() -> None:
    code = "import os; print(os.environ['SPLITRT_THREADS'], os.environ['SPLITRT_DEVICE_PROFILE']); print(open('/proc/self/cgroup').read())"
    result = run_under_profile(get_profile("jetson-nano"), [sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("1 jetson-nano") and "splitrt-jetson-nano-" in result.stdout


def test_a_sample_can_average_calls_over_a_minimum_time() -> None:
    ticks = iter(range(0, 10_000, 3))
    timing = time_calls_ms(lambda: None, repeats=2, warmup=0, clock_ms=lambda: float(next(ticks)), min_sample_ms=10.0)
    assert timing.p50_ms == 3.0  # each sample: four calls of 3 ms (12 ms >= 10 ms), averaged


def test_interleaved_samples_go_round_robin() -> None:
    from splitrt.devices.timing import time_interleaved_ms

    order: list[str] = []
    ticks = iter(range(0, 10_000))
    timings = time_interleaved_ms(
        {"a": lambda: order.append("a"), "b": lambda: order.append("b")}, repeats=3, warmup=1,
        clock_ms=lambda: float(next(ticks)), cpu_clock_ms=lambda: 0.0,
    )
    assert order == ["a", "b"] + ["a", "b"] * 3
    assert timings["a"].p50_ms == 1.0 and timings["b"].cpu_p50_ms == 0.0


def test_a_v2_layout_uses_the_parent_of_this_process_cgroup(tmp_path: Path) -> None:
    (tmp_path / "cgroup.controllers").write_text("cpuset cpu io memory pids\n")
    (tmp_path / "user.slice" / "session-1.scope").mkdir(parents=True)
    proc = tmp_path / "proc-self-cgroup"
    proc.write_text("0::/user.slice/session-1.scope\n")
    assert find_cgroup_layout(tmp_path, proc) == CgroupLayout(2, tmp_path / "user.slice")
    (tmp_path / "cgroup.controllers").write_text("memory pids\n")
    with pytest.raises(CgroupUnavailable, match="no cpu controller"):
        find_cgroup_layout(tmp_path, proc)


def test_devices_commands_print_their_tables(capsys: pytest.CaptureFixture[str]) -> None:
    from splitrt.cli import main

    assert main(["devices", "profiles"]) == 0
    assert "pi4" in capsys.readouterr().out
    assert main(["devices", "detect"]) == 0
    assert "CPUExecutionProvider" in capsys.readouterr().out


@cgroups
def test_calibrate_all_round_robin_orders_profiles_by_share(tiny_bundle) -> None:  # type: ignore[no-untyped-def]
    from splitrt.devices.calibrate import calibrate_all

    before = set(os.listdir("/sys/fs/cgroup/cpu")) if os.path.isdir("/sys/fs/cgroup/cpu") else set()
    slow, fast = get_profile("jetson-nano"), get_profile("x86")  # shares 0.15 and 1.0
    results = calibrate_all([slow, fast], tiny_bundle.path("full.onnx"), (1, 32, 32, 3), repeats=3, warmup=1)
    assert [r.profile.name for r in results] == ["jetson-nano", "x86"]
    assert results[0].measured.p50_ms > results[1].measured.p50_ms
    after = set(os.listdir("/sys/fs/cgroup/cpu")) if os.path.isdir("/sys/fs/cgroup/cpu") else set()
    assert not {name for name in after - before if name.startswith("splitrt-")}


def test_stale_quota_cgroups_of_dead_processes_are_removed(tmp_path: Path) -> None:
    from splitrt.devices.profiles import CgroupLayout, remove_stale_quotas

    dead = tmp_path / "splitrt-pi4-999999999-0"  # no such pid
    alive = tmp_path / f"splitrt-pi4-{os.getpid()}-0"
    other = tmp_path / "someone-else"
    for path in (dead, alive, other):
        path.mkdir()
    assert remove_stale_quotas(CgroupLayout(1, tmp_path)) == [dead.name]
    assert not dead.exists() and alive.exists() and other.exists()
