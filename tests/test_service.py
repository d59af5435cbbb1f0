"""The tail service over a real ROUTER socket on loopback: every request is answered, bad ones with a reason."""
from __future__ import annotations

import logging
import struct
import time

import numpy as np
import pytest
import zmq

from splitrt.bundle import HEAD_INPUT_NAME, Bundle
from splitrt.codecs import get_codec
from splitrt.devices.ort import create_session
from splitrt.protocol import (
    PROTOCOL_VERSION,
    Envelope,
    Heartbeat,
    Hello,
    Infer,
    Limits,
    Reject,
    RejectReason,
    Result,
    TensorSpec,
    Welcome,
    decode,
    encode,
    tensor_from_payload,
)
from tests.conftest import RunningService, start_service

TIMEOUT_MS = 5000


def now_ms() -> float:
    return time.time() * 1000.0


def exchange(socket: zmq.Socket, frames: list) -> Envelope:
    socket.send_multipart(frames, copy=False)
    assert socket.poll(TIMEOUT_MS), "no reply: the service must answer every request"
    return decode(socket.recv_multipart())


def infer_frames(bundle: Bundle, point: str, activation: np.ndarray, payload_codec: str = "fp32",
                 frame_id: int = 1, **overrides) -> list:
    """An Infer for `activation` at split `point`; `overrides` replace fields of the message only."""
    fields = dict(
        frame_id=frame_id,
        bundle_hash=bundle.content_hash,
        split=point,
        codec=payload_codec,
        tensor=TensorSpec(str(activation.dtype), tuple(activation.shape)),
        deadline_ms=now_ms() + 5000,
    )
    fields.update(overrides)
    return encode(Infer(**fields), [get_codec(payload_codec).encode(activation)])


def head_output(bundle: Bundle, split: str, image: np.ndarray) -> np.ndarray:
    point = bundle.manifest.split(split)
    return create_session(bundle.path(point.head_file)).run(None, {HEAD_INPUT_NAME: image})[0]


def full_output(bundle: Bundle, image: np.ndarray) -> np.ndarray:
    return create_session(bundle.path(bundle.manifest.full_file)).run(None, {HEAD_INPUT_NAME: image})[0]


@pytest.fixture()
def image(rng: np.random.Generator) -> np.ndarray:
    return rng.integers(0, 256, size=(1, 32, 32, 3), dtype=np.uint8)


def test_handshake_and_heartbeat(service: RunningService, dealer: zmq.Socket, tiny_bundle: Bundle) -> None:
    dealer.connect(service.endpoint)
    welcome = exchange(dealer, encode(Hello("test", tiny_bundle.content_hash))).message
    assert isinstance(welcome, Welcome) and "res" in welcome.splits
    echo = exchange(dealer, encode(Heartbeat(7, 123.0))).message
    assert echo == Heartbeat(7, 123.0)


def test_unknown_bundle_is_rejected_with_that_reason(service: RunningService, dealer: zmq.Socket, tiny_bundle: Bundle,
                                                     image: np.ndarray) -> None:
    dealer.connect(service.endpoint)
    hello = exchange(dealer, encode(Hello("test", "sha256:" + "0" * 64))).message
    assert isinstance(hello, Reject) and hello.reason is RejectReason.UNKNOWN_BUNDLE
    reply = exchange(dealer, infer_frames(tiny_bundle, "res", head_output(tiny_bundle, "res", image),
                                          bundle_hash="sha256:feed")).message
    assert isinstance(reply, Reject) and reply.reason is RejectReason.UNKNOWN_BUNDLE and reply.frame_id == 1


@pytest.mark.parametrize("split, codec", [("stem", "fp32"), ("down", "fp16"), ("expand", "fp16"), ("pool", "fp32")])
def test_split_result_matches_the_full_model(service: RunningService, dealer: zmq.Socket, tiny_bundle: Bundle,
                                             image: np.ndarray, split: str, codec: str) -> None:
    dealer.connect(service.endpoint)
    envelope = exchange(dealer, infer_frames(tiny_bundle, split, head_output(tiny_bundle, split, image), codec, 42))
    result = envelope.message
    assert isinstance(result, Result) and result.frame_id == 42
    assert result.queue_ms >= 0 and result.compute_ms > 0
    logits = tensor_from_payload(result.outputs[0], envelope.payloads[0])
    tolerance = 1e-5 if codec == "fp32" else 2e-2
    np.testing.assert_allclose(logits, full_output(tiny_bundle, image), rtol=tolerance, atol=tolerance)


def test_offload_runs_the_whole_model_on_the_decoded_image(service: RunningService, dealer: zmq.Socket,
                                                           tiny_bundle: Bundle, image: np.ndarray) -> None:
    dealer.connect(service.endpoint)
    frames = infer_frames(tiny_bundle, "input", image, "webp-q100", 3)
    envelope = exchange(dealer, frames)
    assert isinstance(envelope.message, Result)
    logits = tensor_from_payload(envelope.message.outputs[0], envelope.payloads[0])
    assert logits.shape == (1, 10)


@pytest.mark.parametrize(
    "overrides, reason",
    [
        ({"split": "nope"}, RejectReason.UNKNOWN_SPLIT),
        ({"codec": "zstd-7"}, RejectReason.UNKNOWN_CODEC),
        ({"codec": "jpeg-q90"}, RejectReason.UNKNOWN_CODEC),  # an image codec cannot carry an activation
        ({"tensor": TensorSpec("float32", (1, 16, 4, 4))}, RejectReason.BAD_PAYLOAD),  # wrong shape
        ({"tensor": TensorSpec("float32", (1000, 16, 8, 8))}, RejectReason.BAD_PAYLOAD),  # batch too large
        ({"deadline_ms": 1.0}, RejectReason.EXPIRED),
    ],
)
def test_bad_requests_get_a_reject_with_a_reason(service: RunningService, dealer: zmq.Socket, tiny_bundle: Bundle,
                                                 image: np.ndarray, overrides: dict, reason: RejectReason) -> None:
    dealer.connect(service.endpoint)
    frames = infer_frames(tiny_bundle, "res", head_output(tiny_bundle, "res", image), frame_id=9, **overrides)
    reply = exchange(dealer, frames).message
    assert isinstance(reply, Reject), reply
    assert (reply.reason, reply.frame_id) == (reason, 9), reply.detail
    assert service.service.counters["result"] == 0, "a rejected request is never executed"


def test_corrupted_payload_is_caught_by_the_checksum(service: RunningService, dealer: zmq.Socket,
                                                     tiny_bundle: Bundle, image: np.ndarray) -> None:
    dealer.connect(service.endpoint)
    frames = infer_frames(tiny_bundle, "res", head_output(tiny_bundle, "res", image), frame_id=5)
    payload = bytearray(frames[1])
    payload[10] ^= 0xFF
    reply = exchange(dealer, [frames[0], bytes(payload)]).message
    assert isinstance(reply, Reject) and reply.reason is RejectReason.BAD_PAYLOAD and reply.frame_id == 5


def test_malformed_and_oversize_requests_are_rejected_and_the_service_keeps_serving(
    tiny_bundle: Bundle, image: np.ndarray
) -> None:
    from splitrt.protocol import Limits

    running = start_service([tiny_bundle], limits=Limits(max_payload_bytes=64 * 1024))
    context = zmq.Context.instance()
    try:
        hostile = [
            [b"garbage"],
            [b"SRT" + bytes([PROTOCOL_VERSION, 3]) + struct.pack("!I", 3) + b"\xc1\xc1\xc1"],  # valid header, invalid msgpack
            [b"SRT\x09\x03\x00\x00\x00\x00"],  # unknown protocol version
            infer_frames(tiny_bundle, "res", np.zeros((1, 16, 8, 8), np.float32))[:1],  # payload missing
            [*infer_frames(tiny_bundle, "res", head_output(tiny_bundle, "res", image))[:1], b"\0" * (100 * 1024)],
        ]
        expected = [RejectReason.MALFORMED, RejectReason.MALFORMED, RejectReason.VERSION_MISMATCH,
                    RejectReason.MALFORMED, RejectReason.TOO_LARGE]
        for frames, reason in zip(hostile, expected):
            socket = context.socket(zmq.DEALER)
            socket.setsockopt(zmq.LINGER, 0)
            socket.connect(running.endpoint)
            reply = exchange(socket, frames).message
            socket.close()
            assert isinstance(reply, Reject) and reply.reason is reason, (reply, reason)
        # A well-behaved client is still served.
        good = context.socket(zmq.DEALER)
        good.setsockopt(zmq.LINGER, 0)
        good.connect(running.endpoint)
        reply = exchange(good, infer_frames(tiny_bundle, "res", head_output(tiny_bundle, "res", image))).message
        good.close()
        assert isinstance(reply, Result)
    finally:
        running.service.stop()
        running.thread.join(10)


def test_a_full_queue_rejects_with_overloaded_instead_of_growing(tiny_bundle: Bundle, image: np.ndarray) -> None:
    running = start_service([tiny_bundle], max_queue_depth=0)
    socket = zmq.Context.instance().socket(zmq.DEALER)
    socket.setsockopt(zmq.LINGER, 0)
    try:
        socket.connect(running.endpoint)
        reply = exchange(socket, infer_frames(tiny_bundle, "res", head_output(tiny_bundle, "res", image))).message
        assert isinstance(reply, Reject) and reply.reason is RejectReason.OVERLOADED
    finally:
        socket.close()
        running.service.stop()
        running.thread.join(10)


def test_stop_drains_queued_requests(tiny_bundle: Bundle, image: np.ndarray) -> None:
    running = start_service([tiny_bundle])
    socket = zmq.Context.instance().socket(zmq.DEALER)
    socket.setsockopt(zmq.LINGER, 0)
    socket.connect(running.endpoint)
    activation = head_output(tiny_bundle, "res", image)
    for frame_id in range(20):
        socket.send_multipart(infer_frames(tiny_bundle, "res", activation, frame_id=frame_id))
    time.sleep(0.2)
    running.service.stop()
    answered = set()
    while socket.poll(3000):
        answered.add(decode(socket.recv_multipart()).message.frame_id)
        if len(answered) == 20:
            break
    running.thread.join(10)
    socket.close()
    assert answered == set(range(20))
    assert not running.thread.is_alive()


def test_a_hello_for_another_protocol_version_is_rejected_with_that_reason(
    service: RunningService, dealer: zmq.Socket, tiny_bundle: Bundle, caplog: pytest.LogCaptureFixture
) -> None:
    dealer.connect(service.endpoint)
    with caplog.at_level(logging.WARNING, logger="splitrt.cloud"):
        reply = exchange(dealer, encode(Hello("future-edge", tiny_bundle.content_hash, protocol_version=PROTOCOL_VERSION + 1))).message
    assert isinstance(reply, Reject) and reply.reason is RejectReason.VERSION_MISMATCH and reply.frame_id == -1
    assert f"version {PROTOCOL_VERSION + 1}" in reply.detail and f"version {PROTOCOL_VERSION}" in reply.detail
    assert any(getattr(r, "reason", None) == "version_mismatch" and "future-edge" in r.getMessage()
               for r in caplog.records)
    # The same client, speaking this version, is welcomed, and told the largest request the service takes.
    welcome = exchange(dealer, encode(Hello("future-edge", tiny_bundle.content_hash))).message
    assert isinstance(welcome, Welcome)
    assert welcome.max_payload_bytes == service.service.config.limits.max_payload_bytes


def test_a_frame_over_the_transport_cap_drops_only_its_connection_and_is_logged(
    tiny_bundle: Bundle, image: np.ndarray, caplog: pytest.LogCaptureFixture
) -> None:
    """Past 4x the message limit libzmq drops the sender before the gateway sees it (no Reject is possible):
    the service stays up, serves the next client, and the drop shows in the log and the metrics."""
    running = start_service([tiny_bundle], limits=Limits(max_payload_bytes=64 * 1024))
    service = running.service
    cap_bytes = 4 * service.config.max_message_bytes
    context = zmq.Context.instance()
    hostile = context.socket(zmq.DEALER)
    hostile.setsockopt(zmq.LINGER, 0)
    hostile.setsockopt(zmq.RECONNECT_IVL, 5000)  # not straight back: the test counts one drop
    good = context.socket(zmq.DEALER)
    good.setsockopt(zmq.LINGER, 0)
    try:
        with caplog.at_level(logging.INFO, logger="splitrt.cloud"):
            hostile.connect(running.endpoint)
            activation = head_output(tiny_bundle, "res", image)
            header = infer_frames(tiny_bundle, "res", activation)[0]
            hostile.send_multipart([header, b"\0" * (cap_bytes + 1)])
            assert not hostile.poll(500), "a frame over the transport cap gets no answer"
            deadline = time.monotonic() + 5
            while not [r for r in caplog.records if getattr(r, "event", None) == "connection_closed"]:
                assert time.monotonic() < deadline, "the dropped connection was not logged"
                time.sleep(0.02)
        closed = [r for r in caplog.records if getattr(r, "event", None) == "connection_closed"]
        assert f"transport cap of {cap_bytes} bytes" in closed[0].getMessage()
        assert closed[0].transport_cap_bytes == cap_bytes  # type: ignore[attr-defined]
        assert service.metrics.registry.get_sample_value(
            "splitrt_disconnects_total", {"event": "disconnected"}) == 1
        assert service.counters["requests"] == 0, "the dropped request never reached the gateway"
        # The service is still up and a well-behaved client is served.
        good.connect(running.endpoint)
        reply = exchange(good, infer_frames(tiny_bundle, "res", activation)).message
        assert isinstance(reply, Result)
        assert running.thread.is_alive() and service.ready
    finally:
        hostile.close()
        good.close()
        service.stop()
        running.thread.join(10)
