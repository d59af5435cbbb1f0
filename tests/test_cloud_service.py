"""The tail service at scale, over real ROUTER/DEALER sockets on loopback with real ONNX Runtime tails."""
from __future__ import annotations

import json
import logging
import os
import shutil
import signal
import socket as pysocket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
import pytest
import zmq

from splitrt.bundle import Bundle
from splitrt.cloud.config import ServiceConfig
from splitrt.cloud.service import TailService
from splitrt.cloud.tails import TailExecutor
from splitrt.edge.link import CloudLink, CurveClientKeys, LinkError
from splitrt.protocol import Reject, RejectReason, Result, Welcome, decode, tensor_from_payload
from tests.conftest import RunningService
from tests.test_service import full_output, head_output, infer_frames, now_ms


class SlowTails(TailExecutor):
    """The real ONNX Runtime tails, plus a fixed delay per call, and a record of every batch they ran."""

    def __init__(self, bundles: list[Bundle], delay_s: float) -> None:
        super().__init__(bundles)
        self.delay_s = delay_s
        self.batch_rows: list[int] = []

    def run(self, bundle_hash: str, split: str, activation: np.ndarray) -> np.ndarray:
        self.batch_rows.append(int(activation.shape[0]))
        time.sleep(self.delay_s)
        return super().run(bundle_hash, split, activation)


def start(bundle: Bundle, runner: TailExecutor | None = None, **config: object) -> RunningService:
    service = TailService([bundle], ServiceConfig(bind="tcp://127.0.0.1:*", **config), runner=runner)  # type: ignore[arg-type]
    thread = threading.Thread(target=service.serve, daemon=True)
    thread.start()
    assert service.wait_ready(10), "service did not start"
    return RunningService(service, thread)


def stop(running: RunningService) -> None:
    running.service.stop()
    running.thread.join(10)
    assert not running.thread.is_alive(), "service did not stop"


def dealer(endpoint: str) -> zmq.Socket:
    socket = zmq.Context.instance().socket(zmq.DEALER)
    socket.setsockopt(zmq.LINGER, 0)
    socket.connect(endpoint)
    return socket


def collect(socket: zmq.Socket, count: int, timeout_s: float = 5.0) -> dict[int, object]:
    replies: dict[int, object] = {}
    deadline = time.monotonic() + timeout_s
    while len(replies) < count and time.monotonic() < deadline:
        if socket.poll(100):
            envelope = decode(socket.recv_multipart())
            replies[envelope.message.frame_id] = envelope
    return replies


@pytest.fixture()
def activation(tiny_bundle: Bundle, rng: np.random.Generator) -> np.ndarray:
    image = rng.integers(0, 256, size=(1, 32, 32, 3), dtype=np.uint8)
    return head_output(tiny_bundle, "res", image)


def test_concurrent_requests_are_batched_and_each_gets_its_own_row(tiny_bundle: Bundle,
                                                                   rng: np.random.Generator) -> None:
    tails = SlowTails([tiny_bundle], delay_s=0.05)
    running = start(tiny_bundle, tails, workers=1, max_batch_size=8, max_queue_delay_ms=20.0)
    socket = dealer(running.endpoint)
    try:
        images = [rng.integers(0, 256, size=(1, 32, 32, 3), dtype=np.uint8) for _ in range(9)]
        requests = [infer_frames(tiny_bundle, "res", head_output(tiny_bundle, "res", image), frame_id=frame_id)
                    for frame_id, image in enumerate(images)]
        for frames in requests:
            socket.send_multipart(frames, copy=False)
        replies = collect(socket, len(images))
        assert sorted(replies) == list(range(len(images)))
        for frame_id, envelope in replies.items():
            result = envelope.message
            assert isinstance(result, Result)
            assert result.queue_ms >= 0 and result.compute_ms > 0 and result.queue_depth >= 0
            logits = tensor_from_payload(result.outputs[0], envelope.payloads[0])
            np.testing.assert_allclose(logits, full_output(tiny_bundle, images[frame_id]), rtol=1e-5, atol=1e-5)
        assert max(tails.batch_rows) > 1, tails.batch_rows
        assert sum(tails.batch_rows) == len(images)
    finally:
        socket.close()
        stop(running)


def test_an_expired_request_is_answered_expired_and_never_executed(tiny_bundle: Bundle,
                                                                   activation: np.ndarray) -> None:
    tails = SlowTails([tiny_bundle], delay_s=0.15)
    running = start(tiny_bundle, tails, workers=1, batching=False)
    socket = dealer(running.endpoint)
    try:
        socket.send_multipart(infer_frames(tiny_bundle, "res", activation, frame_id=1, deadline_ms=now_ms() + 5000))
        started = time.monotonic()
        while not tails.batch_rows and time.monotonic() - started < 5:
            time.sleep(0.005)  # until frame 1 runs (for 150 ms)
        socket.send_multipart(infer_frames(tiny_bundle, "res", activation, frame_id=2, deadline_ms=now_ms() + 60))
        replies = collect(socket, 2)
        assert isinstance(replies[1].message, Result)
        reply = replies[2].message
        assert isinstance(reply, Reject) and reply.reason is RejectReason.EXPIRED, reply
        assert tails.batch_rows == [1], "the expired request must not reach the tail"
        assert running.service.counters["expired_executed"] == 0
        assert running.service.metrics.expired_executed._value.get() == 0
    finally:
        socket.close()
        stop(running)


def test_a_request_arriving_with_less_than_the_floor_left_is_expired_at_once(tiny_bundle: Bundle,
                                                                             activation: np.ndarray) -> None:
    tails = SlowTails([tiny_bundle], delay_s=0.0)
    running = start(tiny_bundle, tails, workers=1)
    socket = dealer(running.endpoint)
    try:
        socket.send_multipart(infer_frames(tiny_bundle, "res", activation, frame_id=1, deadline_ms=now_ms() + 10))
        socket.send_multipart(infer_frames(tiny_bundle, "res", activation, frame_id=2, deadline_ms=now_ms() + 5000))
        replies = collect(socket, 2)
        reply = replies[1].message
        assert isinstance(reply, Reject) and reply.reason is RejectReason.EXPIRED, reply
        assert isinstance(replies[2].message, Result)
        assert tails.batch_rows == [1], "the request with 10 ms left must not reach the tail"
    finally:
        socket.close()
        stop(running)


def test_overload_is_rejected_at_once_not_queued(tiny_bundle: Bundle, activation: np.ndarray) -> None:
    tails = SlowTails([tiny_bundle], delay_s=0.05)
    running = start(tiny_bundle, tails, workers=1, batching=False, max_queue_depth=3, max_inflight_per_client=100)
    socket = dealer(running.endpoint)
    try:
        for frame_id in range(20):
            socket.send_multipart(infer_frames(tiny_bundle, "res", activation, frame_id=frame_id))
        replies = collect(socket, 20, timeout_s=5.0)
        assert len(replies) == 20, "every request is answered, none hangs"
        reasons = [r.message.reason for r in replies.values() if isinstance(r.message, Reject)]
        results = [r for r in replies.values() if isinstance(r.message, Result)]
        assert reasons and set(reasons) == {RejectReason.OVERLOADED}
        assert 1 <= len(results) <= 5
    finally:
        socket.close()
        stop(running)


def test_per_client_in_flight_limit(tiny_bundle: Bundle, activation: np.ndarray) -> None:
    tails = SlowTails([tiny_bundle], delay_s=0.05)
    running = start(tiny_bundle, tails, workers=1, batching=False, max_inflight_per_client=2)
    greedy, polite = dealer(running.endpoint), dealer(running.endpoint)
    try:
        for frame_id in range(4):
            greedy.send_multipart(infer_frames(tiny_bundle, "res", activation, frame_id=frame_id))
        time.sleep(0.02)
        polite.send_multipart(infer_frames(tiny_bundle, "res", activation, frame_id=99))
        greedy_replies = collect(greedy, 4)
        rejected = [r.message for r in greedy_replies.values() if isinstance(r.message, Reject)]
        assert len(rejected) == 2 and all("in flight" in r.detail for r in rejected)
        assert isinstance(collect(polite, 1)[99].message, Result), "other clients are not held back"
    finally:
        greedy.close()
        polite.close()
        stop(running)


def test_a_client_that_disconnects_mid_request_leaves_no_state(tiny_bundle: Bundle, activation: np.ndarray) -> None:
    tails = SlowTails([tiny_bundle], delay_s=0.01)
    running = start(tiny_bundle, tails, workers=1, max_batch_size=4)
    try:
        for _ in range(3):
            socket = dealer(running.endpoint)
            for frame_id in range(12):
                socket.send_multipart(infer_frames(tiny_bundle, "res", activation, frame_id=frame_id))
            time.sleep(0.02)
            socket.close()  # gone, with requests queued and running
        deadline = time.monotonic() + 5
        while (running.service.inflight or running.service.queue_depth) and time.monotonic() < deadline:
            time.sleep(0.02)
        assert running.service.inflight == {}
        assert running.service.queue_depth == 0
        assert len(running.service._batcher) == 0
        # And the service still serves a new client.
        socket = dealer(running.endpoint)
        socket.send_multipart(infer_frames(tiny_bundle, "res", activation, frame_id=7))
        assert isinstance(collect(socket, 1)[7].message, Result)
        socket.close()
    finally:
        stop(running)


def _free_port() -> int:
    with pysocket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def test_metrics_and_readiness_endpoints(tiny_bundle: Bundle, activation: np.ndarray) -> None:
    port = _free_port()
    running = start(tiny_bundle, metrics_port=port)
    socket = dealer(running.endpoint)
    try:
        socket.send_multipart(infer_frames(tiny_bundle, "res", activation, frame_id=1))
        socket.send_multipart(infer_frames(tiny_bundle, "res", activation, frame_id=2, deadline_ms=1.0))
        assert len(collect(socket, 2)) == 2
        base = f"http://127.0.0.1:{port}"
        assert urllib.request.urlopen(f"{base}/ready", timeout=5).status == 200
        text = urllib.request.urlopen(f"{base}/metrics", timeout=5).read().decode()
        assert "splitrt_results_total 1.0" in text
        assert 'splitrt_rejects_total{reason="expired"} 1.0' in text
        for name in ("splitrt_queue_depth", "splitrt_batch_size_bucket", "splitrt_queue_ms_bucket",
                     "splitrt_compute_ms_bucket", "splitrt_service_ms_bucket", "splitrt_expired_executed_total"):
            assert name in text
        with pytest.raises(urllib.error.HTTPError):
            urllib.request.urlopen(f"{base}/nope", timeout=5)
    finally:
        socket.close()
        stop(running)


def test_results_say_when_their_tail_started_on_the_deadline_clock(tiny_bundle: Bundle,
                                                                  activation: np.ndarray) -> None:
    running = start(tiny_bundle, workers=1)
    socket = dealer(running.endpoint)
    try:
        sent_ms = now_ms()
        deadline_ms = sent_ms + 5000
        socket.send_multipart(infer_frames(tiny_bundle, "res", activation, frame_id=1, deadline_ms=deadline_ms))
        result = collect(socket, 1)[1].message
        assert isinstance(result, Result) and result.tail_started_ms is not None
        assert sent_ms <= result.tail_started_ms < min(deadline_ms, now_ms() + 1)
    finally:
        socket.close()
        stop(running)


def test_inflight_clients_gauge_counts_clients_with_requests_in_flight(tiny_bundle: Bundle,
                                                                      activation: np.ndarray) -> None:
    tails = SlowTails([tiny_bundle], delay_s=0.3)
    running = start(tiny_bundle, tails, workers=1, batching=False)
    sockets = [dealer(running.endpoint) for _ in range(2)]

    def gauge() -> float | None:
        return running.service.metrics.registry.get_sample_value("splitrt_inflight_clients")

    try:
        assert gauge() == 0
        for index, socket in enumerate(sockets):
            socket.send_multipart(infer_frames(tiny_bundle, "res", activation, frame_id=index))
        deadline = time.monotonic() + 2
        while gauge() != 2 and time.monotonic() < deadline:
            time.sleep(0.01)
        assert gauge() == 2, "both clients have a request queued or running"
        for socket in sockets:
            assert len(collect(socket, 1)) == 1
        deadline = time.monotonic() + 2
        while gauge() != 0 and time.monotonic() < deadline:
            time.sleep(0.01)
        assert gauge() == 0
    finally:
        for socket in sockets:
            socket.close()
        stop(running)


def test_ray_serve_replicas_gauge_only_for_a_runner_that_counts_them(tiny_bundle: Bundle) -> None:
    class CountedTails(TailExecutor):
        def running_replicas(self) -> float:
            return 3.0

    assert TailService([tiny_bundle], ServiceConfig()).metrics.registry.get_sample_value(
        "splitrt_ray_serve_replicas") is None
    service = TailService([tiny_bundle], ServiceConfig(), runner=CountedTails([tiny_bundle]))
    assert service.metrics.registry.get_sample_value("splitrt_ray_serve_replicas") == 3.0
    assert b"splitrt_ray_serve_replicas 3.0" in service.metrics.exposition()


def test_ready_is_503_while_draining_after_stop(tiny_bundle: Bundle, activation: np.ndarray) -> None:
    port = _free_port()
    tails = SlowTails([tiny_bundle], delay_s=0.25)
    running = start(tiny_bundle, tails, workers=1, batching=False, metrics_port=port)
    socket = dealer(running.endpoint)
    base = f"http://127.0.0.1:{port}"
    try:
        assert urllib.request.urlopen(f"{base}/ready", timeout=5).status == 200
        for frame_id in range(4):  # about 1 s of work queued: the drain lasts that long
            socket.send_multipart(infer_frames(tiny_bundle, "res", activation, frame_id=frame_id))
        deadline = time.monotonic() + 2
        while sum(running.service.inflight.values()) < 4 and time.monotonic() < deadline:
            time.sleep(0.005)  # until all four are admitted
        running.service.stop()  # what SIGTERM calls in `splitrt cloud serve`
        with pytest.raises(urllib.error.HTTPError) as not_ready:
            urllib.request.urlopen(f"{base}/ready", timeout=5)
        assert not_ready.value.code == 503 and not_ready.value.read() == b"not ready\n"
        assert running.thread.is_alive(), "the 503 must come while the service is still draining"
        assert urllib.request.urlopen(f"{base}/live", timeout=5).status == 200
        replies = collect(socket, 4)
        assert len(replies) == 4 and all(isinstance(r.message, Result) for r in replies.values())
    finally:
        socket.close()
        stop(running)


# --------------------------------------------------------------------------- CURVE


@pytest.fixture()
def keys(tmp_path: Path) -> Path:
    from splitrt.cloud.security import generate_keys

    generate_keys(tmp_path / "server", "server")
    (tmp_path / "allowed").mkdir()
    generate_keys(tmp_path / "clients", "alice")
    generate_keys(tmp_path / "clients", "mallory")
    shutil.copy(tmp_path / "clients" / "alice.key", tmp_path / "allowed" / "alice.key")
    return tmp_path


def _curve_service(bundle: Bundle, keys: Path) -> RunningService:
    from splitrt.cloud.config import CurveSettings

    curve = CurveSettings(mode="on", server_secret_key=str(keys / "server" / "server.key_secret"),
                          allowed_clients_dir=str(keys / "allowed"), reload_interval_s=0.1)
    return start(bundle, curve=curve)


def _link(running: RunningService, bundle: Bundle, keys: Path, name: str) -> CloudLink:
    curve = CurveClientKeys.load(keys / "server" / "server.key", keys / "clients" / f"{name}.key_secret")
    return CloudLink(running.endpoint, bundle.content_hash, client_id=name, context=zmq.Context.instance(),
                     curve=curve)


def test_curve_allows_listed_keys_refuses_others_and_reloads_the_list(
    tiny_bundle: Bundle, keys: Path, caplog: pytest.LogCaptureFixture
) -> None:
    running = _curve_service(tiny_bundle, keys)
    try:
        with _link(running, tiny_bundle, keys, "alice") as alice:
            assert isinstance(alice.handshake(3000), Welcome)
        with caplog.at_level(logging.WARNING, logger="splitrt.cloud.security"):
            with _link(running, tiny_bundle, keys, "mallory") as mallory, pytest.raises(LinkError):
                mallory.handshake(1500)
        assert running.service.metrics.auth_denied._value.get() >= 1
        assert any("refused client" in r.getMessage() and "allow-list" in r.getMessage() for r in caplog.records)
        # A plain (unencrypted) client gets nothing either.
        plain = CloudLink(running.endpoint, tiny_bundle.content_hash, context=zmq.Context.instance())
        with plain, pytest.raises(LinkError):
            plain.handshake(800)
        # Allowing mallory needs no restart: the folder is rescanned.
        shutil.copy(keys / "clients" / "mallory.key", keys / "allowed" / "mallory.key")
        time.sleep(0.4)
        with _link(running, tiny_bundle, keys, "mallory") as mallory:
            assert isinstance(mallory.handshake(3000), Welcome)
        # And removing alice locks her out for new connections.
        (keys / "allowed" / "alice.key").unlink()
        time.sleep(0.4)
        with _link(running, tiny_bundle, keys, "alice") as alice, pytest.raises(LinkError):
            alice.handshake(1000)
    finally:
        stop(running)


def test_curve_is_required_off_loopback_and_a_missing_key_is_a_clear_error(tiny_bundle: Bundle) -> None:
    from splitrt.cloud.config import ConfigError

    config = ServiceConfig(bind="tcp://0.0.0.0:*")
    assert config.curve_enabled() and not ServiceConfig(bind="tcp://127.0.0.1:*").curve_enabled()
    service = TailService([tiny_bundle], config)
    with pytest.raises(ConfigError, match="keygen"):
        service.serve()


# --------------------------------------------------------------------------- the real process


def test_sigterm_drains_in_flight_requests_before_exit(tiny_bundle: Bundle, activation: np.ndarray,
                                                       tmp_path: Path) -> None:
    stats = tmp_path / "stats.json"
    root = Path(__file__).resolve().parents[1]
    process = subprocess.Popen(
        [sys.executable, "-m", "splitrt", "cloud", "serve", "--bundle", str(tiny_bundle.root),
         "--bind", "tcp://127.0.0.1:*", "--workers", "1", "--no-batching", "--ready-json", "--stats-json", str(stats)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=root,
        env={**os.environ, "PYTHONPATH": str(root)},
    )
    try:
        ready = json.loads(process.stdout.readline())
        socket = dealer(ready["endpoint"])
        count = 400
        requests = [infer_frames(tiny_bundle, "res", activation, frame_id=frame_id) for frame_id in range(count)]
        for frames in requests:
            socket.send_multipart(frames)
        time.sleep(0.02)
        process.send_signal(signal.SIGTERM)
        replies = collect(socket, count, timeout_s=10)
        socket.close()
        assert process.wait(10) == 0
        assert len(replies) == count, "every request sent before SIGTERM is answered"
        kinds = [type(r.message).__name__ for r in replies.values()]
        assert "Result" in kinds
        assert all(isinstance(r.message, Result) or r.message.reason is RejectReason.OVERLOADED
                   for r in replies.values())
        final = json.loads(stats.read_text())
        assert final["counters"]["result"] == kinds.count("Result")
        assert final["in_flight_at_stop"] > 0, "the stop came while requests were in flight"
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
        process.stdout.close()
        process.stderr.close()


def test_a_burst_is_admitted_request_by_request(tiny_bundle: Bundle, activation: np.ndarray) -> None:
    """The gateway admits what one read brings in together (one lock, one wake-up): each request still sees the
    queue and the in-flight counts the ones before it left."""
    context = zmq.Context()
    service = TailService([tiny_bundle], ServiceConfig(bind="inproc://unused", max_queue_depth=3,
                                                       max_inflight_per_client=2), context=context)
    router = context.socket(zmq.ROUTER)
    router.bind("inproc://splitrt-test-burst")
    greedy, polite = context.socket(zmq.DEALER), context.socket(zmq.DEALER)
    try:
        for name, socket in ((b"greedy", greedy), (b"polite", polite)):
            socket.setsockopt(zmq.IDENTITY, name)
            socket.connect("inproc://splitrt-test-burst")
        for frame_id in range(4):
            greedy.send_multipart(infer_frames(tiny_bundle, "res", activation, frame_id=frame_id))
        for frame_id in (10, 11):
            polite.send_multipart(infer_frames(tiny_bundle, "res", activation, frame_id=frame_id))
        deadline = time.monotonic() + 5
        while router.get(zmq.EVENTS) & zmq.POLLIN == 0 and time.monotonic() < deadline:
            time.sleep(0.01)
        service._receive(router)  # one burst: all six were waiting
        assert service.counters["requests"] == 6
        # Judged against the state before the burst, all six would be queued. (The ROUTER interleaves the two
        # clients, so which ones are refused, and why, depends on the order they are read in.)
        assert service.queue_depth == 3 and sum(service.inflight.values()) == 3
        assert all(count <= 2 for count in service.inflight.values())
        refusals = [*collect(greedy, 4, timeout_s=0.3).values(), *collect(polite, 2, timeout_s=0.3).values()]
        assert len(refusals) == 3 and service.counters["reject_overloaded"] == 3
        for reply in refusals:
            assert isinstance(reply.message, Reject) and reply.message.reason is RejectReason.OVERLOADED
            assert "queue is full" in reply.message.detail or "in flight" in reply.message.detail
    finally:
        for socket in (greedy, polite, router):
            socket.close(linger=0)
        context.term()
