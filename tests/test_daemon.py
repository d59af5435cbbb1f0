"""The edge daemon: configuration errors name the bad key; a real daemon process streams, serves metrics,
writes results and traces, and stops cleanly on SIGTERM."""
from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Callable

import numpy as np
import pytest

from splitrt.actions import Local, Split
from splitrt.bundle import Bundle
from splitrt.edge.config import ConfigError, load_config, parse_config
from tests.conftest import RunningService

SPLITRT = [sys.executable, "-m", "splitrt"]
MINIMAL = {"pipeline": {"bundle": "b"}, "source": {"kind": "images", "path": "p"}}


def with_(section: str, **values: object) -> dict[str, dict[str, object]]:
    document = {name: dict(table) for name, table in MINIMAL.items()}
    document.setdefault(section, {}).update(values)
    return document


def test_a_minimal_config_gets_the_defaults() -> None:
    config = parse_config(MINIMAL)
    assert config.pipeline.action == Local() and config.pipeline.fallback == Local()
    assert config.cloud.endpoint is None and config.metrics.port == 0 and config.results.sink == "stdout"


@pytest.mark.parametrize(
    ("document", "message"),
    [
        (with_("cloud", heartbeat_interval=100), r"\[cloud\] heartbeat_interval: unknown key; did you mean 'heartbeat_interval_ms'"),
        (with_("pipeline", budget_ms="fast"), r"\[pipeline\] budget_ms: expected a number, got 'fast'"),
        (with_("pipeline", budget_ms=0), r"\[pipeline\] budget_ms: expected a number > 0"),
        (with_("pipeline", threads=1.5), r"\[pipeline\] threads: expected an integer"),
        (with_("source", kind="usb"), r"\[source\] kind: expected one of images, video, camera, got 'usb'"),
        (with_("pipeline", action="b4/fp16"), r"\[cloud\] endpoint: action split@b4/fp16 needs the cloud's endpoint"),
        (with_("pipeline", fallback="b4"), r"\[pipeline\] fallback: the fallback runs on the device"),
        (with_("cloud", endpoint="cloud:5555"), r"\[cloud\] endpoint: expected an endpoint starting with tcp://"),
        (with_("cloud", endpoint="tcp://c:1", down_after_intervals=3), r"\[cloud\] down_after_intervals: must be below 3"),
        (with_("results", sink="jsonl"), r"\[results\] path: the jsonl sink needs a path"),
        (with_("metrics", port=True), r"\[metrics\] port: expected an integer"),
        ({**MINIMAL, "metric": {"port": 1}}, r"\[metric\]: unknown section; did you mean 'metrics'"),
        ({"source": {"kind": "images", "path": "p"}}, r"\[pipeline\]: missing section"),
        ({"pipeline": {"action": "local"}, "source": {"kind": "video", "path": "v"}}, r"\[pipeline\] bundle: missing required key"),
        (with_("source", path=""), r"\[source\] path: a images source needs a path"),
        (with_("cloud", endpoint="tcp://c:1", client_key="edge.key_secret"), r"\[cloud\] server_public_key: missing"),
        (with_("cloud", server_public_key="server.key"), r"\[cloud\] client_key: missing: CURVE needs"),
        (with_("cloud", client_key=1, server_public_key="s"), r"\[cloud\] client_key: expected a string, got 1"),
        (with_("cloud", client_keys="k"), r"\[cloud\] client_keys: unknown key; did you mean 'client_key'"),
        (with_("policy", name="oracle"), r"\[policy\] name: expected one of static, deadline, deadline-tracking, deadline-uncalibrated"),
        (with_("policy", name="deadline"), r"\[policy\] options: policy deadline needs a file of the actions"),
        (with_("policy", options="o.json"), r"\[policy\] options: the static policy runs \[pipeline\] action"),
        (with_("policy", name="deadline", options="o", prefilter="hist:0.1"), r"\[policy\] prefilter: expected FEATURE"),
        (with_("policy", name="deadline", options="o", prefilter="edge:0"), r"\[policy\] prefilter: expected FEATURE"),
        (with_("policy", calibrate_frames=-1), r"\[policy\] calibrate_frames: expected an integer >= 0"),
    ],
)
def test_config_errors_name_the_bad_key(document: dict[str, object], message: str) -> None:
    with pytest.raises(ConfigError, match=r"^edge\.toml: " + message):
        parse_config(document)


def test_config_files(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="no such file"):
        load_config(tmp_path / "missing.toml")
    broken = tmp_path / "broken.toml"
    broken.write_text("[pipeline\nbundle = 1\n")
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_config(broken)
    example = load_config(Path(__file__).parents[1] / "deploy" / "edge.toml")
    assert example.pipeline.action == Split("b4", "fp16") and example.cloud.heartbeat_interval_ms == 100


def test_curve_key_files_are_read_when_the_config_is_loaded(tmp_path: Path) -> None:
    from splitrt.cloud.security import generate_keys

    server_public, _ = generate_keys(tmp_path / "keys", "server")
    client_public, client_secret = generate_keys(tmp_path / "keys", "cam-17")
    config = tmp_path / "edge.toml"

    def write(client_key: Path, server_key: Path) -> Path:
        config.write_text(f'[pipeline]\nbundle = "b"\n[source]\nkind = "images"\npath = "p"\n[cloud]\n'
                          f'endpoint = "tcp://cloud:5555"\nclient_key = "{client_key}"\nserver_public_key = "{server_key}"\n')
        return config

    loaded = load_config(write(client_secret, server_public))
    assert loaded.cloud.client_key == str(client_secret) and loaded.cloud.server_public_key == str(server_public)
    with pytest.raises(ConfigError, match=r"edge\.toml: \[cloud\] client_key: CURVE secret key file .*missing\.key_secret "
                                          r"not found; create one with `splitrt cloud keygen`"):
        load_config(write(tmp_path / "missing.key_secret", server_public))
    with pytest.raises(ConfigError, match=r"\[cloud\] client_key: .*holds no secret key"):
        load_config(write(client_public, server_public))  # the public half where the secret one belongs
    with pytest.raises(ConfigError, match=r"\[cloud\] server_public_key: CURVE public key file .* not found"):
        load_config(write(client_secret, tmp_path / "nowhere.key"))
    (tmp_path / "garbage.key").write_text("not a key\n")
    with pytest.raises(ConfigError, match=r"\[cloud\] server_public_key: .*garbage\.key is not a CURVE key file"):
        load_config(write(client_secret, tmp_path / "garbage.key"))


OPTIONS = [{"action": "local", "edge_ms": 5.0, "accuracy": 0.5},
           {"action": "split@res/fp16", "edge_ms": 2.0, "payload_bytes": 2048, "cloud_ms": 1.0, "accuracy": 0.9}]


def policy_config(tmp_path: Path, bundle: str, options: object, endpoint: str = "", **policy: object) -> Path:
    (tmp_path / "options.json").write_text(json.dumps(options))
    lines = [f"{key} = {json.dumps(value)}" for key, value in
             {"name": "deadline", "options": str(tmp_path / "options.json"), **policy}.items()]
    config = tmp_path / "edge.toml"
    config.write_text(f'[pipeline]\nbundle = "{bundle}"\n[policy]\n' + "\n".join(lines) + "\n"
                      + (f'[cloud]\nendpoint = "{endpoint}"\n' if endpoint else "")
                      + f'[source]\nkind = "images"\npath = "{tmp_path}"\n')
    return config


def test_a_policy_s_options_file_is_read_and_checked_when_the_config_is_loaded(tmp_path: Path,
                                                                                tiny_bundle: Bundle) -> None:
    from splitrt.edge.config import policy_options
    from splitrt.edge.daemon import check_options

    loaded = load_config(policy_config(tmp_path, "b", OPTIONS, "tcp://cloud:5555"))
    assert [o.key for o in policy_options(loaded)] == ["local", "split@res/fp16"]
    with pytest.raises(ConfigError, match=r"edge\.toml: \[cloud\] endpoint: the options split@res/fp16 need the cloud"):
        load_config(policy_config(tmp_path, "b", OPTIONS))
    with pytest.raises(ConfigError, match=r"edge\.toml: \[policy\] options: .*options\.json: options\[0\] \(local\): "
                                          r"edge_ms: expected a finite number >= 0, got 'fast'"):
        load_config(policy_config(tmp_path, "b", [{"action": "local", "edge_ms": "fast", "accuracy": 0.5}]))
    with pytest.raises(ConfigError, match=r"\[policy\] calibration_image: .*nowhere\.png: no such file"):
        load_config(policy_config(tmp_path, "b", OPTIONS, "tcp://c:1", calibration_image=str(tmp_path / "nowhere.png")))
    # What the bundle cannot run is refused when the daemon starts (the bundle is not read before).
    unknown = policy_options(load_config(policy_config(
        tmp_path, "b", [*OPTIONS, {"action": "split@b4/fp16", "edge_ms": 1, "accuracy": 0.9}], "tcp://c:1")))
    check_options(tiny_bundle, unknown[:2], "edge.toml")
    with pytest.raises(ConfigError, match=r"\[policy\] options: split@b4/fp16: not in bundle tiny-cnn"):
        check_options(tiny_bundle, unknown, "edge.toml")


def test_device_telemetry_gauges_are_read_at_scrape(tmp_path: Path) -> None:
    pytest.importorskip("prometheus_client")
    from prometheus_client import generate_latest

    from splitrt.edge.metrics import EdgeMetrics

    zone = tmp_path / "thermal" / "thermal_zone0"  # the sysfs layout: type and temp in millidegrees
    zone.mkdir(parents=True)
    (zone / "type").write_text("cpu-thermal\n")
    (zone / "temp").write_text("47500\n")
    metrics = EdgeMetrics(thermal_root=tmp_path / "thermal")
    body = generate_latest(metrics.registry).decode()
    assert 'splitrt_edge_temperature_celsius{zone="cpu-thermal"} 47.5' in body
    assert "splitrt_edge_cpu_percent " in body and "splitrt_edge_memory_total_bytes " in body
    (zone / "temp").write_text("51000\n")
    assert 'splitrt_edge_temperature_celsius{zone="cpu-thermal"} 51.0' in generate_latest(metrics.registry).decode()
    # No thermal zones (a VM, a container): the CPU and memory gauges still come, no temperature sample.
    bare = generate_latest(EdgeMetrics(thermal_root=tmp_path / "none").registry).decode()
    assert "splitrt_edge_memory_used_bytes " in bare and "splitrt_edge_temperature_celsius{" not in bare


def test_check_reports_a_bad_key_and_exits_2(tmp_path: Path) -> None:
    config = tmp_path / "edge.toml"
    config.write_text('[pipeline]\nbundle = "b"\nbudget = 100\n[source]\nkind = "images"\npath = "x"\n')
    result = subprocess.run([*SPLITRT, "edge", "daemon", "--config", str(config), "--check"],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 2
    assert "[pipeline] budget: unknown key; did you mean 'budget_ms'?" in result.stderr


def free_port() -> int:
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def run_daemon_until(config: Path, results: Path, count: int, timeout_s: float = 90.0,
                     while_running: Callable[[], None] = lambda: None
                     ) -> tuple[list[dict[str, object]], list[dict[str, object]]]:
    """Start a daemon process, wait for `count` results, call `while_running`, SIGTERM it, and check that it exits
    0; (result records, JSON log entries)."""
    daemon = subprocess.Popen([*SPLITRT, "edge", "daemon", "--config", str(config)],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline and daemon.poll() is None:
            if results.exists() and len(results.read_text().splitlines()) >= count:
                break
            time.sleep(0.1)
        assert daemon.poll() is None, daemon.stderr.read()  # type: ignore[union-attr]
        while_running()
        daemon.send_signal(signal.SIGTERM)
        assert daemon.wait(timeout=30) == 0
    finally:
        if daemon.poll() is None:
            daemon.kill()
            daemon.wait()
    logs = [json.loads(line) for line in daemon.stderr.read().splitlines() if line.startswith("{")]  # type: ignore[union-attr]
    return [json.loads(line) for line in results.read_text().splitlines()], logs


def test_daemon_streams_with_metrics_and_stops_cleanly_on_sigterm(
    service: RunningService, tiny_bundle: Bundle, tmp_path: Path
) -> None:
    pytest.importorskip("av")
    pytest.importorskip("prometheus_client")
    from splitrt.edge.sources import write_test_clip

    clip = write_test_clip(tmp_path / "clip.mp4", frames=30, fps=30)
    port = free_port()
    results, trace = tmp_path / "results.jsonl", tmp_path / "trace.jsonl"
    config = tmp_path / "edge.toml"
    config.write_text(f"""
[pipeline]
bundle = "{tiny_bundle.root}"
action = "res/fp16"
budget_ms = 500
[cloud]
endpoint = "{service.endpoint}"
connect_timeout_ms = 5000
[source]
kind = "video"
path = "{clip}"
loop = true
[results]
sink = "jsonl"
path = "{results}"
[trace]
path = "{trace}"
[metrics]
port = {port}
""")
    def scrape() -> None:
        body = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10).read().decode()
        assert 'splitrt_edge_frames_total{action="split@res/fp16",status="ok"}' in body
        assert "splitrt_edge_cloud_up 1.0" in body and "splitrt_edge_result_age_seconds_bucket" in body
        # Device telemetry; temperatures only where the machine has thermal zones (often none in a VM).
        from splitrt.devices.telemetry import read_thermal_zones

        assert "splitrt_edge_cpu_percent " in body and "splitrt_edge_memory_used_bytes " in body
        assert ("splitrt_edge_temperature_celsius{" in body) == bool(read_thermal_zones())

    records, logs = run_daemon_until(config, results, 20, timeout_s=60, while_running=scrape)
    events = [entry.get("event") for entry in logs]
    assert "started" in events and "stopping" in events and events[-1] == "stopped"
    assert all({"ts", "level", "logger", "msg"} <= set(entry) for entry in logs)
    traces = [json.loads(line) for line in trace.read_text().splitlines()]  # every line is whole JSON
    assert len(records) == len(traces) >= 20
    ids = [r["frame_id"] for r in records]
    assert len(set(ids)) == len(ids)  # every frame ended exactly once
    assert {r["status"] for r in records} <= {"ok", "dropped"}
    ok = [r for r in records if r["status"] == "ok"]
    assert ok and all(r["action"] == "split@res/fp16" and len(r["top"]) == 3 for r in ok)
    assert all("trace_ms" in t and t["link"] == "up" for t in traces if t["status"] == "ok")
    assert logs[-1]["frames"]["ok"] == len(ok)


def test_results_on_a_zeromq_pub_socket() -> None:
    import zmq

    from splitrt.edge.daemon import ZmqPubSink

    sink = ZmqPubSink("tcp://127.0.0.1:*")
    subscriber = zmq.Context.instance().socket(zmq.SUB)
    subscriber.setsockopt(zmq.LINGER, 0)
    subscriber.setsockopt(zmq.SUBSCRIBE, ZmqPubSink.TOPIC)
    subscriber.connect(sink.endpoint)
    try:
        deadline = time.monotonic() + 10
        received = None
        while received is None and time.monotonic() < deadline:  # PUB drops until the subscription arrives
            sink.write({"frame_id": 7, "status": "ok"})
            if subscriber.poll(50):
                received = subscriber.recv_multipart()
        assert received is not None
        assert received[0] == b"splitrt.result" and json.loads(received[1]) == {"frame_id": 7, "status": "ok"}
    finally:
        subscriber.close()
        sink.close()


@pytest.mark.parametrize("cloud", ["up", "away"])
def test_the_daemon_runs_the_deadline_policy_over_an_options_file(
    cloud: str, service: RunningService, tiny_bundle: Bundle, tmp_path: Path
) -> None:
    pytest.importorskip("skimage")
    from splitrt.edge.sources import write_sample_images

    photos = write_sample_images(tmp_path / "photos")[:3]
    endpoint = service.endpoint if cloud == "up" else f"tcp://127.0.0.1:{free_port()}"  # nothing listens there
    config = policy_config(tmp_path, str(tiny_bundle.root), OPTIONS, endpoint,
                           calibration_image=str(photos[0]), calibrate_frames=3, prefilter="")
    text = config.read_text().replace(f'path = "{tmp_path}"', f'path = "{tmp_path / "photos"}"\nloop = true')
    results = tmp_path / "results.jsonl"
    config.write_text(text.replace("[pipeline]\n", "[pipeline]\nbudget_ms = 500\n")
                      + f'[results]\nsink = "jsonl"\npath = "{results}"\n')
    if cloud == "up":  # wait for the handshake, so that calibration measures the remote action too
        config.write_text(config.read_text().replace(f'endpoint = "{endpoint}"',
                                                     f'endpoint = "{endpoint}"\nconnect_timeout_ms = 5000'))
    records, logs = run_daemon_until(config, results, 15)
    events = {entry.get("event"): entry for entry in logs}
    assert "calibrated" in events and "started" in events and events.get("stopped")
    measured = events["calibrated"]["edge_ms"]
    ok = [r for r in records if r["status"] == "ok"]
    assert len(ok) >= 10 and {r["status"] for r in records} <= {"ok", "dropped"}
    actions = {str(r["action"]) for r in ok}
    if cloud == "up":
        assert set(measured) == {"local", "split@res/fp16"}
        # the split is the more accurate option and the loopback cloud answers in time: every frame goes there
        # (hedged: the local option runs meanwhile, answering only if the reply is late)
        assert actions <= {"split@res/fp16", "split@res/fp16/hedge:local"}, actions
    else:
        assert set(measured) == {"local"}  # the remote action keeps the file's costs
        assert actions == {"local"}


def test_hedged_options_in_the_file_are_hedged_again_on_the_device(tmp_path: Path, tiny_bundle: Bundle) -> None:
    from PIL import Image

    from splitrt.edge.config import policy_options
    from splitrt.edge.daemon import EdgeDaemon
    from splitrt.edge.runtime import EdgeRuntime

    image = tmp_path / "calibration.png"
    Image.fromarray(np.full((40, 40, 3), 128, np.uint8)).save(image)
    local, split = OPTIONS
    hedged_only = [local, {**split, "action": "split@res/fp16/hedge:local", "hedge": local}]  # no plain split
    config = load_config(policy_config(tmp_path, str(tiny_bundle.root), hedged_only, "tcp://127.0.0.1:1",
                                       calibration_image=str(image), calibrate_frames=1))
    runtime = EdgeRuntime(tiny_bundle, None)  # no cloud: only the local action is measured
    try:
        adaptive = EdgeDaemon(config)._adaptive(runtime, policy_options(config), lambda: False)
        assert [o.key for o in adaptive.options] == ["local", "split@res/fp16", "split@res/fp16/hedge:local"]
        assert adaptive.options[0].edge_samples_ms and not adaptive.options[1].edge_samples_ms
        # Stopped (SIGTERM) before calibrating: nothing is measured, the file's costs stay.
        stopped = EdgeDaemon(config)._adaptive(runtime, policy_options(config), lambda: True)
        assert not any(o.edge_samples_ms for o in stopped.options)
    finally:
        runtime.close()


def test_calibration_leaves_out_frames_that_ran_something_else(tiny_bundle: Bundle) -> None:
    from splitrt.edge.calibration import calibrate
    from splitrt.edge.runtime import EdgeRuntime

    runtime = EdgeRuntime(tiny_bundle, None)  # the split's frames fall back to local: not the split's samples
    try:
        device, after_link = calibrate(runtime, [Local(), Split("res", "fp16")], np.zeros((40, 40, 3), np.uint8),
                                       2, 50.0, 0.0)
    finally:
        runtime.close()
    assert len(device["local"]) == 2 and device["split@res/fp16"] == [] and after_link == {}


def test_check_runs_the_policy_s_actions_against_the_bundle(tmp_path: Path, tiny_bundle: Bundle) -> None:
    not_an_image = tmp_path / "calibration.png"
    not_an_image.write_text("no pixels here")
    config = policy_config(tmp_path, str(tiny_bundle.root), OPTIONS, "tcp://127.0.0.1:1",
                           calibration_image=str(not_an_image))
    with pytest.raises(ConfigError, match=r"\[policy\] calibration_image: .*calibration\.png: not an image"):
        load_config(config)
    config = policy_config(tmp_path, str(tiny_bundle.root),
                           [*OPTIONS, {"action": "split@b4/fp16", "edge_ms": 1, "accuracy": 0.9}], "tcp://127.0.0.1:1")
    result = subprocess.run([*SPLITRT, "edge", "daemon", "--config", str(config), "--check"],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 2 and "[policy] options: split@b4/fp16: not in bundle tiny-cnn" in result.stderr
