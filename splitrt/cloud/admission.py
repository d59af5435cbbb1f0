"""Pure request handling: which requests the service takes, and which it rejects with what reason.

No sockets and no clock reads here: the gateway passes `now_ms` in, so every rule is testable directly.
"""
from __future__ import annotations

from dataclasses import dataclass
from splitrt.bundle import INPUT_POINT, Bundle, UnknownSplit
from splitrt.codecs import Codec, UnknownCodec, codec_for_point
from splitrt.protocol import (
    PROTOCOL_VERSION,
    Envelope,
    Heartbeat,
    Hello,
    Infer,
    Message,
    Reject,
    RejectReason,
    Welcome,
)

SUPPORTED_CODECS = ("fp32", "fp16", "q8", "q6", "q4", "q8c", "q6c", "q4c", "+zstd", "+lz4", "jpeg-qN", "webp-qN", "ans")
MAX_DETAIL_CHARS = 200


def reject(frame_id: int, reason: RejectReason, detail: str) -> Reject:
    """A Reject whose detail always fits the wire limit (details may quote client-supplied strings)."""
    return Reject(frame_id, reason, detail if len(detail) <= MAX_DETAIL_CHARS else detail[: MAX_DETAIL_CHARS - 3] + "...")


@dataclass(frozen=True)
class Work:
    """An admitted request, waiting for a worker."""

    client: bytes
    infer: Infer
    payload: memoryview
    received_ms: float
    codec: Codec | None = None  # resolved at admission (a bottleneck's tables come from its bundle)


@dataclass(frozen=True)
class Reply:
    message: Message
    payloads: tuple[memoryview, ...] = ()


def handshake(message: Hello, bundles: dict[str, Bundle], server_id: str, max_payload_bytes: int | None = None) -> Reply:
    """A Welcome (announcing `max_payload_bytes`, the most a request may carry), or a Reject: a protocol version
    this service does not speak (the header's version matched, the Hello's own field did not), or an unknown bundle."""
    if message.protocol_version != PROTOCOL_VERSION:
        return Reply(reject(-1, RejectReason.VERSION_MISMATCH,
                            f"hello for protocol version {message.protocol_version}; this service speaks "
                            f"version {PROTOCOL_VERSION} only"))
    bundle = bundles.get(message.bundle_hash)
    if bundle is None:
        return Reply(reject(-1, RejectReason.UNKNOWN_BUNDLE, f"no bundle {message.bundle_hash[:24]} here"))
    welcome = Welcome(
        server_id=server_id,
        bundle_hash=bundle.content_hash,
        splits=tuple(bundle.manifest.split_names) + tuple(b.name for b in bundle.manifest.bottlenecks),
        codecs=SUPPORTED_CODECS,
        max_payload_bytes=max_payload_bytes,
    )
    return Reply(welcome)


def heartbeat_reply(message: Heartbeat) -> Reply:
    return Reply(Heartbeat(message.seq, message.sent_ms))


def admit(
    envelope: Envelope,
    client: bytes,
    bundles: dict[str, Bundle],
    now_ms: float,
    queue_depth: int,
    max_queue_depth: int,
    max_batch: int = 64,
    client_inflight: int = 0,
    max_inflight_per_client: int | None = None,
    min_time_left_ms: float = 0.0,
) -> Work | Reject:
    """Check an Infer against what the service holds; a request is never guessed at, it is rejected with a reason.
    One that arrives with less than `min_time_left_ms` before its deadline would never be run: it is `expired` now."""
    infer = envelope.message
    assert isinstance(infer, Infer)
    frame_id = infer.frame_id
    bundle = bundles.get(infer.bundle_hash)
    if bundle is None:
        return reject(frame_id, RejectReason.UNKNOWN_BUNDLE, f"no bundle {infer.bundle_hash[:24]} here")
    try:
        point = bundle.manifest.split(infer.split)
    except UnknownSplit:
        return reject(frame_id, RejectReason.UNKNOWN_SPLIT, f"{bundle.model_id} has no split {infer.split!r}")
    try:
        codec = codec_for_point(bundle, point.name, infer.codec)
    except UnknownCodec:
        return reject(frame_id, RejectReason.UNKNOWN_CODEC, f"unknown codec {infer.codec!r} for split {point.name}")
    if infer.codec_hash and infer.codec_hash != codec.version_hash:
        return reject(
            frame_id,
            RejectReason.UNKNOWN_CODEC,
            f"codec {infer.codec} with hash {infer.codec_hash[:16]} is not held here (this end has {codec.version_hash})",
        )
    wants_image = point.name == INPUT_POINT
    if (codec.kind == "image") != wants_image:
        return reject(
            frame_id,
            RejectReason.UNKNOWN_CODEC,
            f"codec {infer.codec} ({codec.kind}) cannot carry split {point.name}",
        )
    shape = infer.tensor.shape
    if infer.tensor.dtype != point.activation.dtype or tuple(shape[1:]) != point.activation.shape:
        return reject(
            frame_id,
            RejectReason.BAD_PAYLOAD,
            f"split {point.name} takes {point.activation.dtype}(N,{','.join(map(str, point.activation.shape))}), "
            f"got {infer.tensor.dtype}{tuple(shape)}",
        )
    if not shape or not 1 <= shape[0] <= max_batch or (wants_image and shape[0] != 1):
        return reject(frame_id, RejectReason.BAD_PAYLOAD, f"batch size {shape[:1]} is not allowed")
    if now_ms >= infer.deadline_ms:
        return reject(frame_id, RejectReason.EXPIRED, f"arrived {now_ms - infer.deadline_ms:.1f} ms after its deadline")
    if infer.deadline_ms - now_ms < min_time_left_ms:
        return reject(frame_id, RejectReason.EXPIRED,
                      f"arrived {infer.deadline_ms - now_ms:.1f} ms before its deadline, less than the "
                      f"{min_time_left_ms:g} ms a tail needs left to start")
    if queue_depth >= max_queue_depth:
        return reject(frame_id, RejectReason.OVERLOADED, f"queue is full ({queue_depth} requests)")
    if max_inflight_per_client is not None and client_inflight >= max_inflight_per_client:
        return reject(
            frame_id,
            RejectReason.OVERLOADED,
            f"this client has {client_inflight} requests in flight (limit {max_inflight_per_client}); wait for replies",
        )
    return Work(client=client, infer=infer, payload=envelope.payloads[0], received_ms=now_ms, codec=codec)
