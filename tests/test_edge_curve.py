"""The edge against a CURVE cloud, over real sockets: a real `TailService` with CURVE on and an allow-list, and
real edges (`ResilientLink` + `EdgeRuntime`, the daemon from its TOML config, `splitrt edge run`) that
classify through it with their keys, or, with a key the service does not list, get no remote result."""
from __future__ import annotations

import asyncio
import json
import shutil
import time
from pathlib import Path
from typing import Iterator

import numpy as np
import pytest
from PIL import Image

from splitrt.actions import Local, Split
from splitrt.bundle import Bundle
from splitrt.cloud.config import CurveSettings
from splitrt.edge.failover import ResilientLink
from splitrt.edge.health import HeartbeatConfig
from splitrt.edge.link import CurveClientKeys, LinkError
from splitrt.edge.runtime import EdgeRuntime
from splitrt.frame import Status
from tests.conftest import RunningService, start_service

SPLIT = Split("res", "fp16")


@pytest.fixture()
def keys(tmp_path: Path) -> Path:
    """`splitrt cloud keygen` files: the server's pair, alice (allowed) and mallory (not on the allow-list)."""
    from splitrt.cloud.security import generate_keys

    generate_keys(tmp_path / "server", "server")
    generate_keys(tmp_path / "clients", "alice")
    generate_keys(tmp_path / "clients", "mallory")
    (tmp_path / "allowed").mkdir()
    shutil.copy(tmp_path / "clients" / "alice.key", tmp_path / "allowed" / "alice.key")
    return tmp_path


def curve_settings(keys: Path) -> CurveSettings:
    return CurveSettings(mode="on", server_secret_key=str(keys / "server" / "server.key_secret"),
                         allowed_clients_dir=str(keys / "allowed"), reload_interval_s=0.1)


def stop(running: RunningService) -> None:
    running.service.stop()
    running.thread.join(10)
    assert not running.thread.is_alive(), "service did not stop"


@pytest.fixture()
def curve_service(tiny_bundle: Bundle, keys: Path) -> Iterator[RunningService]:
    running = start_service([tiny_bundle], curve=curve_settings(keys))
    yield running
    stop(running)


def client_keys(keys: Path, name: str) -> CurveClientKeys:
    return CurveClientKeys.load(keys / "server" / "server.key", keys / "clients" / f"{name}.key_secret")


def photo(seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, size=(48, 40, 3), dtype=np.uint8)


def edge(service: RunningService, bundle: Bundle, curve: CurveClientKeys | None,
         fallback: Local | None = Local()) -> tuple[ResilientLink, EdgeRuntime]:
    link = ResilientLink(service.endpoint, bundle.content_hash, HeartbeatConfig(interval_ms=100), curve=curve).start()
    return link, EdgeRuntime(bundle, link, action=SPLIT, fallback=fallback)


def test_an_allowed_edge_splits_through_curve_and_a_refused_one_falls_back_while_the_service_serves(
    curve_service: RunningService, tiny_bundle: Bundle, keys: Path
) -> None:
    alice_link, alice = edge(curve_service, tiny_bundle, client_keys(keys, "alice"))
    mallory_link, mallory = edge(curve_service, tiny_bundle, client_keys(keys, "mallory"))
    strict_link, strict = edge(curve_service, tiny_bundle, client_keys(keys, "mallory"), fallback=None)
    plain_link, plain = edge(curve_service, tiny_bundle, None)
    try:
        assert alice_link.wait_up(5) and alice_link.refusal is None
        local = alice.infer(photo(), Local(), budget_ms=5000)
        remote = alice.infer(photo(), budget_ms=5000)
        assert remote.ok and remote.action == "split@res/fp16" and not remote.planned, remote.reason
        assert remote.bytes_received > 0 and "cloud_compute" in remote.trace_ms
        assert remote.top[0].class_index == local.top[0].class_index

        # Refused at the security handshake: known at once (no waiting out a timeout), and said why.
        assert not mallory_link.wait_up(5) and not mallory_link.is_up
        assert "refused this edge's CURVE key" in (mallory_link.refusal or "")
        refused = mallory.infer(photo(), budget_ms=5000)
        assert refused.ok and refused.action == "local" and refused.planned == "split@res/fp16"
        assert "cloud unreachable" in refused.reason and "CURVE key" in refused.reason
        assert not strict_link.wait_up(5)
        failed = strict.infer(photo(), budget_ms=5000)
        assert failed.status is Status.FAILED and "CURVE key" in failed.reason and not failed.top
        # An edge without keys learns that the service requires CURVE.
        assert not plain_link.wait_up(5) and "requires CURVE" in (plain_link.refusal or "")
        with pytest.raises(LinkError, match="requires CURVE"):
            plain_link.handshake(1000)
        assert curve_service.service.metrics.auth_denied._value.get() >= 2

        # The service kept serving the allowed edge all along.
        again = alice.infer(photo(1), budget_ms=5000)
        assert again.ok and again.action == "split@res/fp16" and not again.planned, again.reason

        # Listing mallory needs no restart on either side: the refused link tries again on a new socket.
        shutil.copy(keys / "clients" / "mallory.key", keys / "allowed" / "mallory.key")
        deadline = time.monotonic() + 10
        while not mallory_link.is_up and time.monotonic() < deadline:
            time.sleep(0.02)
        assert mallory_link.is_up, mallory_link.down_reason
        assert mallory_link.refusal is None and mallory_link.refusals >= 1
        admitted = mallory.infer(photo(2), budget_ms=5000)
        assert admitted.ok and admitted.action == "split@res/fp16" and not admitted.planned, admitted.reason
    finally:
        for link in (alice_link, mallory_link, strict_link, plain_link):
            link.close()
        for runtime in (alice, mallory, strict, plain):
            runtime.close()


def test_a_wrong_server_key_is_hinted_at(curve_service: RunningService, tiny_bundle: Bundle, keys: Path) -> None:
    from splitrt.cloud.security import generate_keys
    from splitrt.edge.link import CloudLink

    other_public, _ = generate_keys(keys / "other", "server")
    wrong = CurveClientKeys.load(other_public, keys / "clients" / "alice.key_secret")
    with ResilientLink(curve_service.endpoint, tiny_bundle.content_hash, curve=wrong) as link:
        with pytest.raises(LinkError, match="is the server public key the service's own"):
            link.handshake(500)
    with CloudLink(curve_service.endpoint, tiny_bundle.content_hash, curve=wrong) as plain:
        with pytest.raises(LinkError, match="is the server public key the service's own"):
            plain.handshake(500)


def test_the_keys_survive_a_reconnect_to_a_restarted_cloud(tiny_bundle: Bundle, keys: Path) -> None:
    from splitrt.bench.failover import free_tcp_port
    from splitrt.edge.health import LinkState

    bind = f"tcp://127.0.0.1:{free_tcp_port()}"
    first = start_service([tiny_bundle], bind=bind, curve=curve_settings(keys))
    link, runtime = edge(first, tiny_bundle, client_keys(keys, "alice"))
    second = None
    try:
        assert link.wait_up(5)
        assert runtime.infer(photo(), budget_ms=5000).action == "split@res/fp16"
        stop(first)
        deadline = time.monotonic() + 5
        while link.is_up and time.monotonic() < deadline:
            time.sleep(0.02)
        assert link.state is LinkState.DOWN  # and its socket was replaced
        second = start_service([tiny_bundle], bind=bind, curve=curve_settings(keys))
        assert link.wait_up(10), link.down_reason
        assert link.reconnects == 1 and link.refusals == 0
        after = runtime.infer(photo(), budget_ms=5000)
        assert after.ok and after.action == "split@res/fp16" and not after.planned, after.reason
    finally:
        link.close()
        runtime.close()
        if second is not None:
            stop(second)


def write_images(folder: Path, count: int) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(count):
        Image.fromarray(photo(i)).save(folder / f"{i}.png")
    return folder


def daemon_config(tmp_path: Path, service: RunningService, bundle: Bundle, keys: Path, client: str) -> Path:
    config = tmp_path / f"edge-{client}.toml"
    config.write_text(f"""
[pipeline]
bundle = "{bundle.root}"
action = "res/fp16"
budget_ms = 2000
[cloud]
endpoint = "{service.endpoint}"
connect_timeout_ms = 5000
client_key = "{keys / 'clients' / f'{client}.key_secret'}"
server_public_key = "{keys / 'server' / 'server.key'}"
[source]
kind = "images"
path = "{write_images(tmp_path / 'images', 3)}"
[results]
sink = "jsonl"
path = "{tmp_path / f'results-{client}.jsonl'}"
""")
    return config


def run_daemon(config_path: Path) -> list[dict[str, object]]:
    from splitrt.edge.config import load_config
    from splitrt.edge.daemon import EdgeDaemon

    config = load_config(config_path)

    async def main() -> int:
        return await EdgeDaemon(config).run(asyncio.Event())

    assert asyncio.run(asyncio.wait_for(main(), 60)) == 0
    return [json.loads(line) for line in Path(config.results.path).read_text().splitlines()]


def test_the_daemon_uses_the_keys_of_its_config(
    curve_service: RunningService, tiny_bundle: Bundle, keys: Path, tmp_path: Path
) -> None:
    records = run_daemon(daemon_config(tmp_path, curve_service, tiny_bundle, keys, "alice"))
    assert len(records) == 3
    assert all(r["status"] == "ok" and r["action"] == "split@res/fp16" and not r["planned"] for r in records), records

    started = time.monotonic()
    refused = run_daemon(daemon_config(tmp_path, curve_service, tiny_bundle, keys, "mallory"))
    assert time.monotonic() - started < 5, "the refusal ends the wait for the first handshake"
    assert len(refused) == 3
    assert all(r["status"] == "ok" and r["action"] == "local" and r["planned"] == "split@res/fp16"
               and "CURVE key" in str(r["reason"]) for r in refused), refused


def test_edge_run_takes_key_flags(
    curve_service: RunningService, tiny_bundle: Bundle, keys: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from splitrt.cli import main

    image = write_images(tmp_path / "images", 1) / "0.png"

    def edge_run(client: str, *extra: str) -> int:
        return main(["edge", "run", "--bundle", str(tiny_bundle.root), "--connect", curve_service.endpoint,
                     "--source", str(image), "--split", "res/fp16", "--connect-timeout-ms", "5000",
                     "--client-key", str(keys / "clients" / f"{client}.key_secret"), *extra])

    frames = tmp_path / "frames.jsonl"
    assert edge_run("alice", "--server-key", str(keys / "server" / "server.key"), "--json", str(frames)) == 0
    assert ", CURVE: bundle" in capsys.readouterr().out
    [record] = [json.loads(line) for line in frames.read_text().splitlines()]
    assert record["status"] == "ok" and record["action"] == "split@res/fp16", record

    assert edge_run("mallory", "--server-key", str(keys / "server" / "server.key")) == 2
    assert "refused this edge's CURVE key" in capsys.readouterr().err
    assert edge_run("alice") == 2
    assert "--server-key is missing" in capsys.readouterr().err
    assert edge_run("alice", "--server-key", str(tmp_path / "nowhere.key")) == 2
    assert "--server-key: CURVE public key file" in capsys.readouterr().err
    assert edge_run("alice", "--server-key", str(keys / "server" / "server.key"),
                    "--client-key", str(keys / "clients" / "alice.key")) == 2  # the public half given as the secret
    assert "--client-key:" in (err := capsys.readouterr().err) and "holds no secret key" in err


def test_loopback_without_keys_still_works(service: RunningService, tiny_bundle: Bundle) -> None:
    link, runtime = edge(service, tiny_bundle, None)
    try:
        assert link.wait_up(5)
        outcome = runtime.infer(photo(), budget_ms=5000)
        assert outcome.ok and outcome.action == "split@res/fp16" and not outcome.planned, outcome.reason
    finally:
        link.close()
        runtime.close()
