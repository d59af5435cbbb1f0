"""The edge runtime against a real service on loopback: actions agree, and every frame ends with a reason."""
from __future__ import annotations

import time

import numpy as np
import pytest
import zmq

from splitrt.actions import Local, Offload, Skip, Split, parse_action
from splitrt.bundle import Bundle
from splitrt.edge.link import CloudLink, LinkError
from splitrt.edge.runtime import EdgeRuntime
from splitrt.frame import Status
from tests.conftest import RunningService


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
    silent = zmq.Context.instance().socket(zmq.ROUTER)  # accepts connections, never answers
    silent.setsockopt(zmq.LINGER, 0)
    port = silent.bind_to_random_port("tcp://127.0.0.1")
    try:
        with CloudLink(f"tcp://127.0.0.1:{port}", tiny_bundle.content_hash) as link:
            time.sleep(0.2)  # let the connection come up
            runtime = EdgeRuntime(tiny_bundle, link)
            outcome = runtime.infer(photo, Split("res", "fp16"), budget_ms=150)
            assert outcome.status is Status.TIMEOUT
            assert 140 <= outcome.latency_ms < 1000
    finally:
        silent.close()


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
