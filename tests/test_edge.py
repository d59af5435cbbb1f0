"""The edge runtime against a real service on loopback: actions agree, and every frame ends with a reason."""
from __future__ import annotations

import contextlib
import dataclasses
import logging
import threading
import time
from typing import Callable, Iterator

import numpy as np
import pytest
import zmq

from splitrt.actions import Local, Offload, Skip, Split, parse_action
from splitrt.bundle import Bundle
from splitrt.edge.failover import ResilientLink
from splitrt.edge.link import CloudLink, LinkError, max_reply_frame_bytes
from splitrt.edge.runtime import EdgeRuntime
from splitrt.frame import Status
from splitrt.protocol import PROTOCOL_VERSION, Heartbeat, Limits, RejectReason, Welcome, encode
from tests.conftest import RunningService, silent_cloud_link, start_service


@pytest.fixture()
def photo(rng: np.random.Generator) -> np.ndarray:
    return rng.integers(0, 256, size=(48, 40, 3), dtype=np.uint8)


def test_local_split_and_offload_agree(service: RunningService, tiny_bundle: Bundle, photo: np.ndarray) -> None:
    with CloudLink(service.endpoint, tiny_bundle.content_hash) as link:
        link.handshake()
        runtime = EdgeRuntime(tiny_bundle, link)
        local = runtime.infer(photo, Local())
        assert local.ok and local.logits is not None and local.bytes_sent == 0
        for action in [Split("stem", "fp32"), Split("res", "fp16"), Split("pool", "fp32")]:
            outcome = runtime.infer(photo, action)
            assert outcome.ok, outcome.reason
            np.testing.assert_allclose(outcome.logits, local.logits, rtol=2e-2, atol=2e-2)
            assert {"head", "encode", "network", "cloud_queue", "cloud_compute"} <= set(outcome.trace_ms)
            assert outcome.bytes_sent > tiny_bundle.manifest.split(action.point).raw_bytes // (
                2 if action.codec == "fp16" else 1
            )
        offload = runtime.infer(photo, Offload("webp-q100"))
        assert offload.ok and offload.top[0].class_index == local.top[0].class_index


def test_skip_and_unknown_things_end_with_a_reason(tiny_bundle: Bundle, photo: np.ndarray) -> None:
    runtime = EdgeRuntime(tiny_bundle, link=None)
    assert runtime.infer(photo, Skip()).status is Status.SKIPPED
    no_link = runtime.infer(photo, Split("res", "fp16"))
    assert no_link.status is Status.FAILED and "no cloud link" in no_link.reason
    bad_split = runtime.infer(photo, Split("b99", "fp16"))
    assert bad_split.status is Status.FAILED and "no split point 'b99'" in bad_split.reason
    bad_codec = runtime.infer(photo, Split("res", "lzma"))
    assert bad_codec.status is Status.FAILED and "unknown codec" in bad_codec.reason
    wrong_kind = runtime.infer(photo, Offload("fp16"))
    assert wrong_kind.status is Status.FAILED and "cannot carry" in wrong_kind.reason


def test_no_cloud_fails_fast_instead_of_waiting(tiny_bundle: Bundle, photo: np.ndarray) -> None:
    with CloudLink("tcp://127.0.0.1:1", tiny_bundle.content_hash) as link:
        with pytest.raises(LinkError, match="no answer"):
            link.handshake(timeout_ms=300)
        runtime = EdgeRuntime(tiny_bundle, link)
        start = time.perf_counter()
        outcome = runtime.infer(photo, Split("res", "fp16"), budget_ms=2000)
        assert outcome.status is Status.FAILED and "not connected" in outcome.reason
        assert time.perf_counter() - start < 1.0


def test_a_silent_cloud_ends_the_frame_at_its_deadline(tiny_bundle: Bundle, photo: np.ndarray) -> None:
    with silent_cloud_link(tiny_bundle.content_hash) as link:
        runtime = EdgeRuntime(tiny_bundle, link)
        outcome = runtime.infer(photo, Split("res", "fp16"), budget_ms=150)
        assert outcome.status is Status.TIMEOUT
        assert 140 <= outcome.latency_ms < 1000


def test_a_reply_for_an_older_frame_is_not_taken_for_the_current_one(
    service: RunningService, tiny_bundle: Bundle, photo: np.ndarray
) -> None:
    with CloudLink(service.endpoint, tiny_bundle.content_hash) as link:
        link.handshake()
        runtime = EdgeRuntime(tiny_bundle, link)
        late = runtime.infer(photo, Split("res", "fp32"), budget_ms=0.01)  # times out at once
        assert late.status in (Status.TIMEOUT, Status.EXPIRED)
        time.sleep(0.1)  # its reply (a Reject: expired) arrives while nobody waits
        current = runtime.infer(photo, Split("res", "fp32"))
        assert current.ok and current.frame_id == late.frame_id + 1


def test_parse_action() -> None:
    assert parse_action("local") == Local()
    assert parse_action("offload") == Offload("jpeg-q90")
    assert parse_action("offload/webp-q80") == Offload("webp-q80")
    assert parse_action("b4", default_codec="fp32") == Split("b4", "fp32")
    assert parse_action("b4/fp16") == Split("b4", "fp16")
    with pytest.raises(ValueError):
        parse_action("")


OTHER_BUNDLE = "sha256:" + "e" * 64


def other_bundle(bundle: Bundle) -> Bundle:
    """The same files under OTHER_BUNDLE: an edge whose bundle the flipped service does not really hold."""
    return dataclasses.replace(bundle, manifest=dataclasses.replace(bundle.manifest, content_hash=OTHER_BUNDLE))


@pytest.fixture()
def flipped_service(tiny_bundle: Bundle) -> Iterator[RunningService]:
    """A real service that answers a Hello for OTHER_BUNDLE with a Welcome for the tiny bundle (as a cloud
    holding another bundle under the edge's hash would): its answers would be for the wrong model."""
    running = start_service([tiny_bundle])
    running.service.bundles[OTHER_BUNDLE] = tiny_bundle
    yield running
    running.service.stop()
    running.thread.join(10)


def test_a_cloud_with_another_bundle_is_never_split_to(
    flipped_service: RunningService, tiny_bundle: Bundle, photo: np.ndarray, caplog: pytest.LogCaptureFixture
) -> None:
    edge_bundle = other_bundle(tiny_bundle)
    with caplog.at_level(logging.ERROR, logger="splitrt.edge"):
        with CloudLink(flipped_service.endpoint, OTHER_BUNDLE) as link:
            with pytest.raises(LinkError, match="unknown_bundle"):
                link.handshake()
            assert not link.is_up and link.welcome is None
            failed = EdgeRuntime(edge_bundle, link).infer(photo, Split("res", "fp16"))
            assert failed.status is Status.FAILED and "serves bundle" in failed.reason
            local = EdgeRuntime(edge_bundle, link, fallback=Local()).infer(photo, Split("res", "fp16"))
            assert local.ok and local.action == "local" and "cloud unreachable" in local.reason
    assert any(getattr(r, "event", None) == "welcome_mismatch" and "serves bundle" in r.getMessage()
               for r in caplog.records)
    assert flipped_service.service.counters["result"] == 0, "no request reached the wrong tail"


def test_a_resilient_link_stays_down_for_a_cloud_with_another_bundle(
    flipped_service: RunningService, tiny_bundle: Bundle, photo: np.ndarray, caplog: pytest.LogCaptureFixture
) -> None:
    edge_bundle = other_bundle(tiny_bundle)
    with caplog.at_level(logging.ERROR, logger="splitrt.edge"):
        with ResilientLink(flipped_service.endpoint, OTHER_BUNDLE) as link:
            assert not link.wait_up(5)
            assert link.rejection is not None and link.rejection.reason is RejectReason.UNKNOWN_BUNDLE
            with pytest.raises(LinkError, match="serves bundle"):
                link.handshake(timeout_ms=500)
            failed = EdgeRuntime(edge_bundle, link).infer(photo, Split("res", "fp16"))
            assert failed.status is Status.FAILED and "serves bundle" in failed.reason
            local = EdgeRuntime(edge_bundle, link, fallback=Local()).infer(photo, Split("res", "fp16"))
            assert local.ok and local.action == "local"
            time.sleep(0.3)  # Hellos go on with backoff, each answered by a mismatched Welcome
    mismatches = [r for r in caplog.records if getattr(r, "event", None) == "welcome_mismatch"]
    assert len(mismatches) == 1, "logged once, not at every retry"
    assert flipped_service.service.counters["result"] == 0


@contextlib.contextmanager
def cloud_answering_once(reply: Callable[[], list[bytes | memoryview]]) -> Iterator[str]:
    """A real ROUTER socket that answers the first message it receives with `reply()`'s frames, as a misbehaving
    cloud would; yields its endpoint."""
    fake = zmq.Context.instance().socket(zmq.ROUTER)
    fake.setsockopt(zmq.LINGER, 0)
    port = fake.bind_to_random_port("tcp://127.0.0.1")

    def answer() -> None:
        if fake.poll(5000):
            client, *_ = fake.recv_multipart()
            fake.send_multipart([client, *reply()])

    thread = threading.Thread(target=answer)
    thread.start()
    try:
        yield f"tcp://127.0.0.1:{port}"
    finally:
        thread.join(10)
        fake.close()


def test_a_cloud_speaking_another_protocol_version_is_not_split_to(tiny_bundle: Bundle) -> None:
    newer = Welcome("future-cloud", tiny_bundle.content_hash, ("res",), ("fp16",), protocol_version=PROTOCOL_VERSION + 1)
    with cloud_answering_once(lambda: encode(newer)) as endpoint:
        with CloudLink(endpoint, tiny_bundle.content_hash) as link:
            with pytest.raises(LinkError, match=f"version_mismatch.*protocol version {PROTOCOL_VERSION + 1}"):
                link.handshake()
            assert not link.is_up


def test_a_request_over_the_announced_limit_is_not_sent(tiny_bundle: Bundle, photo: np.ndarray) -> None:
    running = start_service([tiny_bundle], limits=Limits(max_payload_bytes=1024))
    try:
        with CloudLink(running.endpoint, tiny_bundle.content_hash) as link:
            assert link.handshake().max_payload_bytes == 1024
            runtime = EdgeRuntime(tiny_bundle, link)
            big = runtime.infer(photo, Split("stem", "fp32"))  # 8 KiB of activation
            assert big.status is Status.REJECTED and big.reason.startswith("too_large: not sent")
            assert big.bytes_sent == 0, "a request refused on the edge sent nothing"
            assert link.oversize_requests == 1
            small = runtime.infer(photo, Split("pool", "fp32"))  # 128 bytes
            assert small.ok, small.reason
            rescued = EdgeRuntime(tiny_bundle, link, fallback=Local()).infer(photo, Split("stem", "fp32"))
            assert rescued.ok and rescued.action == "local" and "too_large" in rescued.reason
        with ResilientLink(running.endpoint, tiny_bundle.content_hash) as resilient:
            resilient.handshake()
            outcome = EdgeRuntime(tiny_bundle, resilient).infer(photo, Split("stem", "fp32"))
            assert outcome.status is Status.REJECTED and "not sent" in outcome.reason
            assert resilient.oversize_requests == 1
        # Only the small request ever reached the service (plus the two Hellos and some heartbeats).
        assert running.service.counters["result"] == 1
        assert running.service.counters["reject_too_large"] == 0
    finally:
        running.service.stop()
        running.thread.join(10)


def test_a_reply_over_the_edge_transport_cap_is_dropped_not_buffered(tiny_bundle: Bundle) -> None:
    """A reply frame larger than any valid reply ends the connection as it arrives (libzmq does not reconnect
    after such a protocol error): the link then fails fast instead of holding the frame in memory."""
    limits = Limits(max_payload_bytes=1024, max_meta_bytes=1024)
    huge = [*encode(Heartbeat(1, 0.0)), b"\0" * (max_reply_frame_bytes(limits) + 1)]  # a heartbeat with a huge frame
    with cloud_answering_once(lambda: huge) as endpoint:
        with CloudLink(endpoint, tiny_bundle.content_hash, limits=limits) as link:
            assert link._socket.getsockopt(zmq.MAXMSGSIZE) == max_reply_frame_bytes(limits)
            time.sleep(0.2)  # let the connection come up
            assert link.ping(1, timeout_ms=500) is None
            with pytest.raises(LinkError, match="not connected"):
                link.request(encode(Heartbeat(2, 0.0)), 2, timeout_ms=100)


def test_a_malformed_endpoint_is_a_link_error_and_leaves_nothing_open(tiny_bundle: Bundle) -> None:
    context = zmq.Context()
    try:
        with pytest.raises(LinkError, match="cannot connect to 'tcp://no-port'"):
            CloudLink("tcp://no-port", tiny_bundle.content_hash, context=context)
    finally:
        context.term()  # returns only once every socket of the context is closed
