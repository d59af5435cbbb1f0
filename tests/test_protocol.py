"""Tests for splitrt.protocol: round trips, every decode rule, and fuzzing."""

from __future__ import annotations

import math
import struct
import zlib
from typing import Any

import msgpack
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from splitrt.protocol import (
    ALLOWED_DTYPES,
    MAGIC,
    PROTOCOL_VERSION,
    ChecksumMismatch,
    Envelope,
    Heartbeat,
    Hello,
    Infer,
    Limits,
    MalformedMessage,
    Message,
    MessageTooLarge,
    MessageType,
    ProtocolError,
    Reject,
    RejectReason,
    Result,
    TensorSpec,
    VersionMismatch,
    Welcome,
    decode,
    encode,
    peek_frame_id,
    tensor_from_payload,
    tensor_payload,
)

HEADER = struct.Struct("!3sBBI")
FUZZ = settings(
    max_examples=400,
    deadline=500,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)

SPEC = TensorSpec("float32", (1, 2, 3))
INFER = Infer(7, "bundle", "layer3", "raw", SPEC, 1_700_000_000_000.5)


def raw_frames(
    mtype: int,
    meta: Any,
    payloads: tuple[bytes, ...] = (),
    *,
    version: int = PROTOCOL_VERSION,
    magic: bytes = MAGIC,
) -> list[bytes]:
    """Frames with a hand-made metadata object, bypassing encode's validation."""
    packed = msgpack.packb(meta, use_bin_type=True)
    return [HEADER.pack(magic, version, mtype, len(packed)) + packed, *payloads]


def infer_meta(**overrides: Any) -> dict[str, Any]:
    payload = b"x" * 24
    meta: dict[str, Any] = {
        "frame_id": 7,
        "bundle_hash": "bundle",
        "split": "layer3",
        "codec": "raw",
        "tensor": {"dtype": "float32", "shape": [1, 2, 3]},
        "deadline_ms": 1.0,
        "crc32": [zlib.crc32(payload)],
    }
    meta.update(overrides)
    return meta


def decode_infer_meta(meta: dict[str, Any], payload: bytes = b"x" * 24) -> Envelope:
    return decode(raw_frames(MessageType.INFER, meta, (payload,)))


def expect(error: type[ProtocolError], reason: RejectReason, frames: Any, **kw: Any) -> None:
    with pytest.raises(error) as info:
        decode(frames, **kw)
    assert info.value.reason is reason
    assert str(info.value)
    assert len(info.value.detail) <= 256


def malformed(frames: Any, **kw: Any) -> None:
    expect(MalformedMessage, RejectReason.MALFORMED, frames, **kw)


# --------------------------------------------------------------------------- round trips


def roundtrip(message: Message, payloads: tuple[bytes, ...] = ()) -> Envelope:
    env = decode(encode(message, payloads))
    assert env.message == message
    assert type(env.message) is type(message)
    assert [bytes(p) for p in env.payloads] == [bytes(p) for p in payloads]
    return env


@pytest.mark.parametrize(
    "message",
    [
        Hello("edge-1", "abc123"),
        Hello("édge-☃", "h", protocol_version=3),
        Welcome("cloud", "abc123", ("layer1", "layer3"), ("raw", "fp16", "int8")),
        Welcome("cloud", "abc123", (), ()),
        Welcome("cloud", "abc123", ("layer1",), ("raw",), max_payload_bytes=64 * 1024),
        Welcome("cloud", "abc123", (), (), max_payload_bytes=1),
        Reject(7, RejectReason.EXPIRED, "deadline passed"),
        Reject(-1, RejectReason.MALFORMED),
        Heartbeat(0, 0.0),
        Heartbeat(2**63 - 1, 123.25),
        Result(3, (), 0.0, 0.0, 0),
    ],
)
def test_roundtrip_without_payloads(message: Message) -> None:
    roundtrip(message)


def test_roundtrip_infer() -> None:
    env = roundtrip(INFER, (b"encoded-bytes",))
    assert isinstance(env.message, Infer) and env.message.tensor.nbytes == 24


def test_roundtrip_result_with_outputs() -> None:
    logits = np.linspace(-1, 1, 10, dtype=np.float32).reshape(1, 10)
    top = np.array([[3, 1, 4]], dtype=np.int64)
    specs, views = zip(*(tensor_payload(a) for a in (logits, top)))
    message = Result(9, tuple(specs), 1.5, 12.25, 4)
    env = decode(encode(message, views))
    assert env.message == message
    out = [tensor_from_payload(s, p) for s, p in zip(env.message.outputs, env.payloads)]
    np.testing.assert_array_equal(out[0], logits)
    np.testing.assert_array_equal(out[1], top)


def test_int_accepted_for_float_fields() -> None:
    env = decode(encode(Heartbeat(1, 5)))  # type: ignore[arg-type]
    assert env.message == Heartbeat(1, 5.0)
    assert type(env.message.sent_ms) is float  # type: ignore[union-attr]


def test_reject_reason_as_plain_string_is_normalised() -> None:
    env = decode(encode(Reject(1, "overloaded")))  # type: ignore[arg-type]
    assert env.message.reason is RejectReason.OVERLOADED  # type: ignore[union-attr]


def test_payloads_are_zero_copy_views() -> None:
    payload = bytearray(b"abcdefgh")
    frames = encode(INFER, [payload])
    assert isinstance(frames[1], memoryview)
    assert np.shares_memory(np.frombuffer(frames[1], np.uint8), np.frombuffer(payload, np.uint8))
    env = decode([bytearray(frames[0]), payload])
    assert env.payloads[0].readonly
    assert np.shares_memory(
        np.frombuffer(env.payloads[0], np.uint8), np.frombuffer(payload, np.uint8)
    )


def test_bytes_payload_passed_through_unchanged() -> None:
    payload = b"abc"
    assert encode(INFER, [payload])[1] is payload


def test_decode_accepts_frame_like_objects() -> None:
    class FakeFrame:
        def __init__(self, data: bytes) -> None:
            self.buffer = memoryview(data)

    frames = encode(INFER, [b"payload"])
    env = decode([FakeFrame(bytes(f)) for f in frames])
    assert env.message == INFER and bytes(env.payloads[0]) == b"payload"


def test_spec_nbytes() -> None:
    assert TensorSpec("float16", ()).nbytes == 2
    assert TensorSpec("int64", (0, 5)).nbytes == 0
    assert TensorSpec("uint8", (2**31,) * 8).nbytes == 2**248
    with pytest.raises(ValueError):
        _ = TensorSpec("bool", (1,)).nbytes


# --------------------------------------------------------------------------- tensors


@pytest.mark.parametrize("dtype", sorted(ALLOWED_DTYPES))
def test_tensor_roundtrip_each_dtype(dtype: str) -> None:
    array = (np.arange(24) % 100).astype(dtype).reshape(2, 3, 4)
    spec, view = tensor_payload(array)
    assert spec == TensorSpec(dtype, (2, 3, 4))
    assert view.nbytes == spec.nbytes and view.readonly
    assert np.shares_memory(np.frombuffer(view, np.uint8), array)  # already C/LE: no copy
    back = tensor_from_payload(spec, view)
    np.testing.assert_array_equal(back, array)
    assert back.dtype == np.dtype(dtype) and not back.flags.writeable
    assert np.shares_memory(back, array)


def test_tensor_noncontiguous_and_big_endian_are_normalised() -> None:
    base = np.arange(24, dtype=np.float32).reshape(4, 6)
    strided = base[:, ::2].T
    spec, view = tensor_payload(strided)
    assert spec == TensorSpec("float32", (3, 4))
    np.testing.assert_array_equal(tensor_from_payload(spec, view), strided)

    big = np.arange(6, dtype=">i4").reshape(2, 3)
    spec, view = tensor_payload(big)
    assert spec == TensorSpec("int32", (2, 3))
    assert bytes(view) == np.arange(6, dtype="<i4").tobytes()
    np.testing.assert_array_equal(tensor_from_payload(spec, view), big)


def test_tensor_scalar_and_empty() -> None:
    for array in (np.array(3.5, dtype=np.float16), np.zeros((0, 4), dtype=np.int8)):
        spec, view = tensor_payload(array)
        back = tensor_from_payload(spec, view)
        assert back.shape == array.shape
        np.testing.assert_array_equal(back, array)


def test_tensor_payload_rejects_unsupported_dtype() -> None:
    with pytest.raises(ValueError):
        tensor_payload(np.zeros(3, dtype=np.float64))
    with pytest.raises(ValueError):
        tensor_payload(np.zeros(3, dtype=bool))


def test_tensor_from_payload_checks_length_first() -> None:
    with pytest.raises(ProtocolError) as info:
        tensor_from_payload(TensorSpec("float32", (2**20, 2**20)), b"\0" * 16)
    assert info.value.reason is RejectReason.BAD_PAYLOAD
    with pytest.raises(ProtocolError) as info:
        tensor_from_payload(TensorSpec("float32", (2,)), b"\0" * 7)
    assert info.value.reason is RejectReason.BAD_PAYLOAD


# --------------------------------------------------------------------------- header and size rules


def test_bad_magic() -> None:
    malformed(raw_frames(6, {"seq": 1, "sent_ms": 1.0}, magic=b"XYZ"))


def test_version_mismatch() -> None:
    frames = raw_frames(6, {"seq": 1, "sent_ms": 1.0}, version=PROTOCOL_VERSION + 1)
    expect(VersionMismatch, RejectReason.VERSION_MISMATCH, frames)


@pytest.mark.parametrize("code", [0, 7, 255])
def test_unknown_type(code: int) -> None:
    malformed(raw_frames(code, {"seq": 1, "sent_ms": 1.0}))


@pytest.mark.parametrize("size", range(HEADER.size))
def test_truncated_header(size: int) -> None:
    frame = encode(Heartbeat(1, 1.0))[0]
    malformed([frame[:size]])


def test_no_frames_or_not_a_sequence() -> None:
    malformed([])
    malformed(42)
    malformed(["not bytes"])
    strided = memoryview(bytes(range(20)))[::2]
    malformed([strided])


@pytest.mark.parametrize("delta", [-1, 1, 2**31])
def test_meta_length_mismatch(delta: int) -> None:
    frame = encode(Heartbeat(1, 1.0))[0]
    magic, version, mtype, length = HEADER.unpack_from(frame)
    bad = HEADER.pack(magic, version, mtype, length + delta) + frame[HEADER.size :]
    malformed([bad])


def test_oversize_meta() -> None:
    frames = encode(Reject(1, RejectReason.INTERNAL, "x" * 200))
    expect(MessageTooLarge, RejectReason.TOO_LARGE, frames, limits=Limits(max_meta_bytes=64))
    huge = HEADER.pack(MAGIC, PROTOCOL_VERSION, 6, 2**20) + b"\0" * 2**20
    expect(MessageTooLarge, RejectReason.TOO_LARGE, [huge])


def test_oversize_payload_total() -> None:
    frames = encode(INFER, [b"z" * 100])
    expect(MessageTooLarge, RejectReason.TOO_LARGE, frames, limits=Limits(max_payload_bytes=99))


def test_tensor_spec_claiming_huge_size_rejected_before_allocation() -> None:
    meta = infer_meta(tensor={"dtype": "float32", "shape": [2**20, 2**20]})  # 4 TiB
    with pytest.raises(MessageTooLarge):
        decode_infer_meta(meta)
    result = {
        "frame_id": 1,
        "outputs": [{"dtype": "uint8", "shape": [2**31] * 8}],
        "queue_ms": 0,
        "compute_ms": 0,
        "queue_depth": 0,
        "crc32": [0],
    }
    expect(MessageTooLarge, RejectReason.TOO_LARGE, raw_frames(MessageType.RESULT, result, (b"",)))


def test_too_many_frames() -> None:
    frames = encode(Heartbeat(1, 1.0)) + [b""] * 17
    expect(MessageTooLarge, RejectReason.TOO_LARGE, frames)
    frames = encode(Heartbeat(1, 1.0)) + [b""] * 3
    expect(MessageTooLarge, RejectReason.TOO_LARGE, frames, limits=Limits(max_payload_frames=2))


# --------------------------------------------------------------------------- payload rules


def test_bad_crc() -> None:
    frames = encode(INFER, [b"payload"])
    frames[1] = b"paylobd"
    expect(ChecksumMismatch, RejectReason.BAD_PAYLOAD, frames)


def test_bad_crc_result() -> None:
    spec, view = tensor_payload(np.arange(4, dtype=np.int32))
    frames = encode(Result(1, (spec,), 0.0, 0.0, 0), [view])
    frames[1] = b"\xff" * 16
    expect(ChecksumMismatch, RejectReason.BAD_PAYLOAD, frames)


@pytest.mark.parametrize("count", [0, 2])
def test_wrong_payload_count_infer(count: int) -> None:
    frames = encode(INFER, [b"p"])[:1] + [b"p"] * count
    malformed(frames)


def test_wrong_payload_count_other_types() -> None:
    malformed(encode(Heartbeat(1, 1.0)) + [b""])
    spec, view = tensor_payload(np.zeros(2, np.uint8))
    frames = encode(Result(1, (spec,), 0.0, 0.0, 0), [view])
    malformed(frames[:1])
    malformed(frames + [view])


def test_crc_list_length_mismatch() -> None:
    malformed(raw_frames(MessageType.INFER, infer_meta(crc32=[]), (b"p",)))
    with pytest.raises(MalformedMessage):
        decode_infer_meta(infer_meta(crc32=[1, 2]))
    with pytest.raises(MalformedMessage):
        decode_infer_meta(infer_meta(crc32=[2**32]))


def test_result_payload_length_must_match_spec() -> None:
    payload = b"\0" * 7
    meta = {
        "frame_id": 1,
        "outputs": [{"dtype": "float32", "shape": [2]}],
        "queue_ms": 0.0,
        "compute_ms": 0.0,
        "queue_depth": 0,
        "crc32": [zlib.crc32(payload)],
    }
    frames = raw_frames(MessageType.RESULT, meta, (payload,))
    with pytest.raises(ProtocolError) as info:
        decode(frames)
    assert info.value.reason is RejectReason.BAD_PAYLOAD


# --------------------------------------------------------------------------- metadata rules


def test_msgpack_garbage_and_non_dict() -> None:
    packed = b"\xc1"  # never-used msgpack byte
    frame = HEADER.pack(MAGIC, PROTOCOL_VERSION, 6, len(packed)) + packed
    malformed([frame])
    for meta in ([1, 2], "seq", 5, None):
        malformed(raw_frames(6, meta))
    extra = msgpack.packb({"seq": 1, "sent_ms": 1.0}) + b"\x00"
    frame = HEADER.pack(MAGIC, PROTOCOL_VERSION, 6, len(extra)) + extra
    malformed([frame])


def test_msgpack_deep_nesting() -> None:
    packed = b"\x91" * 5000 + b"\xc0"
    malformed([HEADER.pack(MAGIC, PROTOCOL_VERSION, 6, len(packed)) + packed])


@pytest.mark.parametrize(
    "value", [msgpack.ExtType(5, b"abc"), msgpack.Timestamp(1, 0), b"binary"]
)
def test_msgpack_ext_and_bin_rejected(value: Any) -> None:
    malformed(raw_frames(6, {"seq": 1, "sent_ms": value}))


def test_non_string_map_key_rejected() -> None:
    malformed(raw_frames(6, {1: 1, "seq": 1, "sent_ms": 1.0}))


def test_invalid_utf8_rejected() -> None:
    packed = b"\x82\xa3seq\x01\xa7sent_ms\xcb" + struct.pack("!d", 1.0)
    assert msgpack.unpackb(packed) == {"seq": 1, "sent_ms": 1.0}
    bad = packed.replace(b"\xa3seq", b"\xa3s\xffq")
    malformed([HEADER.pack(MAGIC, PROTOCOL_VERSION, 6, len(bad)) + bad])


def test_extra_and_missing_keys() -> None:
    malformed(raw_frames(6, {"seq": 1, "sent_ms": 1.0, "x": 0}))
    malformed(raw_frames(6, {"seq": 1}))
    with pytest.raises(MalformedMessage):
        decode_infer_meta(infer_meta(tensor={"dtype": "float32", "shape": [1], "x": 1}))
    with pytest.raises(MalformedMessage):
        decode_infer_meta(infer_meta(tensor={"dtype": "float32"}))
    # crc32 is only known for payload-carrying types
    malformed(raw_frames(6, {"seq": 1, "sent_ms": 1.0, "crc32": []}))


@pytest.mark.parametrize(
    "field, value",
    [
        ("frame_id", True),
        ("frame_id", 1.0),
        ("frame_id", -1),
        ("frame_id", 2**63),
        ("frame_id", "7"),
        ("deadline_ms", math.nan),
        ("deadline_ms", math.inf),
        ("deadline_ms", -1.0),
        ("deadline_ms", False),
        ("deadline_ms", None),
        ("split", ""),
        ("split", 5),
        ("codec", "c" * 257),
        ("bundle_hash", ["a"]),
        ("tensor", {"dtype": "float64", "shape": [1]}),
        ("tensor", {"dtype": "bool", "shape": [1]}),
        ("tensor", {"dtype": 1, "shape": [1]}),
        ("tensor", {"dtype": "float32", "shape": [-1]}),
        ("tensor", {"dtype": "float32", "shape": [True]}),
        ("tensor", {"dtype": "float32", "shape": [2**31 + 1]}),
        ("tensor", {"dtype": "float32", "shape": [1.0]}),
        ("tensor", {"dtype": "float32", "shape": [1] * 9}),
        ("tensor", {"dtype": "float32", "shape": 3}),
        ("tensor", [1, 2]),
        ("crc32", [True]),
        ("crc32", 5),
    ],
)
def test_infer_field_validation(field: str, value: Any) -> None:
    with pytest.raises(MalformedMessage):
        decode_infer_meta(infer_meta(**{field: value}))


def test_string_limit_counts_chars_not_bytes() -> None:
    env = decode_infer_meta(infer_meta(split="☃" * 256))
    assert env.message.split == "☃" * 256  # type: ignore[union-attr]


def test_reject_validation() -> None:
    def reject(**kw: Any) -> list[bytes]:
        meta = {"frame_id": -1, "reason": "expired", "detail": ""}
        meta.update(kw)
        return raw_frames(MessageType.REJECT, meta)

    assert decode(reject()).message == Reject(-1, RejectReason.EXPIRED)
    bad_fields: list[dict[str, Any]] = [
        {"reason": "nope"},
        {"reason": 1},
        {"reason": "EXPIRED"},
        {"frame_id": -2},
        {"detail": 3},
    ]
    for bad in bad_fields:
        malformed(reject(**bad))


def test_welcome_and_hello_validation() -> None:
    base = {
        "server_id": "s",
        "bundle_hash": "b",
        "splits": ["a"],
        "codecs": ["raw"],
        "protocol_version": PROTOCOL_VERSION,
    }
    welcome = Welcome("s", "b", ("a",), ("raw",))
    assert decode(raw_frames(MessageType.WELCOME, base)).message == welcome
    for bad in (
        {"splits": ["a", 1]},
        {"splits": [""]},
        {"codecs": "raw"},
        {"codecs": ["c"] * 257},
        {"protocol_version": 256},
        {"protocol_version": True},
    ):
        malformed(raw_frames(MessageType.WELCOME, {**base, **bad}))
    hello = {"client_id": "", "bundle_hash": "b", "protocol_version": PROTOCOL_VERSION}
    malformed(raw_frames(MessageType.HELLO, hello))


def test_welcome_max_payload_bytes_is_optional_both_ways() -> None:
    base = {"server_id": "s", "bundle_hash": "b", "splits": ["a"], "codecs": ["raw"], "protocol_version": PROTOCOL_VERSION}
    # A Welcome without the key decodes: the limit is not announced.
    assert decode(raw_frames(MessageType.WELCOME, base)).message.max_payload_bytes is None  # type: ignore[union-attr]
    announced = decode(raw_frames(MessageType.WELCOME, {**base, "max_payload_bytes": 4096})).message
    assert announced == Welcome("s", "b", ("a",), ("raw",), max_payload_bytes=4096)
    # Not announced: not on the wire, so the message is byte for byte the same as without the field.
    frames = encode(Welcome("s", "b", ("a",), ("raw",)))
    assert set(msgpack.unpackb(frames[0][HEADER.size :])) == set(base)
    assert frames == raw_frames(MessageType.WELCOME, base)
    for bad in (0, -1, True, 1.5, "4096", 2**63, None):
        malformed(raw_frames(MessageType.WELCOME, {**base, "max_payload_bytes": bad}))
    malformed(raw_frames(MessageType.HELLO, {"client_id": "c", "bundle_hash": "b", "protocol_version": PROTOCOL_VERSION,
                                             "max_payload_bytes": 1}))  # only Welcome knows it


def test_result_and_heartbeat_validation() -> None:
    base = {
        "frame_id": 1,
        "outputs": [],
        "queue_ms": 0.0,
        "compute_ms": 0.0,
        "queue_depth": 0,
        "crc32": [],
    }
    assert decode(raw_frames(MessageType.RESULT, base)).message == Result(1, (), 0.0, 0.0, 0)
    bad_fields: list[dict[str, Any]] = [
        {"queue_depth": -1},
        {"queue_depth": True},
        {"compute_ms": math.nan},
        {"outputs": {}},
    ]
    for bad in bad_fields:
        malformed(raw_frames(MessageType.RESULT, {**base, **bad}))
    for bad_hb in ({"seq": True, "sent_ms": 1.0}, {"seq": 1, "sent_ms": -math.inf}):
        malformed(raw_frames(MessageType.HEARTBEAT, bad_hb))


# --------------------------------------------------------------------------- encode validation


def test_encode_rejects_bad_messages() -> None:
    with pytest.raises(MalformedMessage):
        encode(INFER)  # no payload
    with pytest.raises(MalformedMessage):
        encode(INFER, [b"a", b"b"])
    with pytest.raises(MalformedMessage):
        encode(Heartbeat(1, 1.0), [b"a"])
    with pytest.raises(ProtocolError):
        encode(Result(1, (TensorSpec("uint8", (3,)),), 0.0, 0.0, 0), [])
    with pytest.raises(ProtocolError) as info:
        encode(Result(1, (TensorSpec("uint8", (3,)),), 0.0, 0.0, 0), [b"ab"])
    assert info.value.reason is RejectReason.BAD_PAYLOAD
    for bad in (
        Heartbeat(True, 1.0),  # type: ignore[arg-type]
        Heartbeat(1, math.nan),
        Hello("", "b"),
        Reject(1, "unknown"),  # type: ignore[arg-type]
        Infer(1, "b", "s", "c", TensorSpec("float64", (1,)), 1.0),
        Infer(1, "b", "s", "c", TensorSpec("float32", None), 1.0),  # type: ignore[arg-type]
        Welcome("s", "b", "ab", ()),  # type: ignore[arg-type]
        Infer(1, "b", "s", "c", {"dtype": "uint8", "shape": [1]}, 1.0),  # type: ignore[arg-type]
        Result(1, [TensorSpec("uint8", (1,)), "spec"], 0.0, 0.0, 0),  # type: ignore[list-item]
    ):
        with pytest.raises(ProtocolError):
            encode(bad, [b""] if isinstance(bad, Infer) else [])
    with pytest.raises(TypeError):
        encode("hello")  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        encode(INFER, [memoryview(bytes(10))[::2]])
    with pytest.raises(ValueError):
        encode(INFER, ["text"])  # type: ignore[list-item]


def test_encode_limits() -> None:
    with pytest.raises(MessageTooLarge):
        encode(INFER, [b"x" * 11], limits=Limits(max_payload_bytes=10))
    with pytest.raises(MessageTooLarge):
        encode(Welcome("s", "b", ("x" * 200,) * 200, ()), limits=Limits(max_meta_bytes=1024))


def test_error_detail_is_bounded_and_rejectable() -> None:
    err = MalformedMessage("y" * 10_000)
    assert len(err.detail) <= 256
    decode(encode(Reject(3, err.reason, err.detail)))


# --------------------------------------------------------------------------- peek_frame_id


def test_peek_frame_id() -> None:
    good = encode(INFER, [b"p"])
    assert peek_frame_id(good) == 7
    corrupted = [good[0], b"q"]  # bad CRC: decode fails, frame_id still readable
    with pytest.raises(ChecksumMismatch):
        decode(corrupted)
    assert peek_frame_id(corrupted) == 7
    truncated = good[0][: good[0].index(b"bundle_hash") + 3]
    truncated = HEADER.pack(MAGIC, PROTOCOL_VERSION, 3, len(truncated) - HEADER.size) + truncated[HEADER.size :]
    assert peek_frame_id([truncated]) == 7
    assert peek_frame_id(encode(Reject(-1, RejectReason.MALFORMED))) == -1
    assert peek_frame_id(encode(Heartbeat(4, 1.0))) == -1
    assert peek_frame_id(raw_frames(3, {"frame_id": True})) == -1
    assert peek_frame_id(raw_frames(3, {"frame_id": 2**64 - 1})) == -1
    for junk in ([], [b""], [b"garbage" * 3], 42, None, ["str"], raw_frames(3, [1, 2])):
        assert peek_frame_id(junk) == -1  # type: ignore[arg-type]


# --------------------------------------------------------------------------- property-based


def assert_protocol_safe(frames: Any) -> Envelope | None:
    """decode raises only ProtocolError; peek_frame_id never raises."""
    fid = peek_frame_id(frames)
    assert isinstance(fid, int) and fid >= -1
    try:
        env = decode(frames)
    except ProtocolError as exc:
        assert isinstance(exc.reason, RejectReason)
        assert len(exc.detail) <= 256
        return None
    assert isinstance(env, Envelope)
    encode(env.message, env.payloads)  # anything decode accepts, encode accepts
    return env


names = st.text(min_size=1, max_size=24)
u63 = st.integers(0, 2**63 - 1)
times_ms = st.floats(0, 1e16, allow_nan=False, allow_infinity=False)
specs = st.builds(
    TensorSpec,
    st.sampled_from(sorted(ALLOWED_DTYPES)),
    st.lists(st.integers(0, 4), max_size=4).map(tuple),
)


@st.composite
def messages_with_payloads(draw: st.DrawFn) -> tuple[Message, tuple[bytes, ...]]:
    kind = draw(st.sampled_from(list(MessageType)))
    if kind is MessageType.HELLO:
        return Hello(draw(names), draw(names), draw(st.integers(0, 255))), ()
    if kind is MessageType.WELCOME:
        tags = st.lists(names, max_size=5).map(tuple)
        version = draw(st.integers(0, 255))
        max_payload = draw(st.none() | st.integers(1, 2**63 - 1))
        return Welcome(draw(names), draw(names), draw(tags), draw(tags), version, max_payload), ()
    if kind is MessageType.INFER:
        msg = Infer(draw(u63), draw(names), draw(names), draw(names), draw(specs), draw(times_ms))
        return msg, (draw(st.binary(max_size=64)),)
    if kind is MessageType.RESULT:
        outputs = tuple(draw(st.lists(specs, max_size=3)))
        payloads = tuple(draw(st.binary(min_size=s.nbytes, max_size=s.nbytes)) for s in outputs)
        return Result(draw(u63), outputs, draw(times_ms), draw(times_ms), draw(u63)), payloads
    if kind is MessageType.REJECT:
        fid = draw(st.integers(-1, 2**63 - 1))
        reason = draw(st.sampled_from(list(RejectReason)))
        return Reject(fid, reason, draw(st.text(max_size=40))), ()
    return Heartbeat(draw(u63), draw(times_ms)), ()


@FUZZ
@given(messages_with_payloads())
def test_fuzz_valid_messages_roundtrip(item: tuple[Message, tuple[bytes, ...]]) -> None:
    message, payloads = item
    frames = encode(message, payloads)
    env = decode(frames)
    assert env.message == message
    assert [bytes(p) for p in env.payloads] == list(payloads)
    expected_id = getattr(message, "frame_id", -1)
    assert peek_frame_id(frames) == expected_id


def header_then(body: bytes, mtype: int) -> bytes:
    return HEADER.pack(MAGIC, PROTOCOL_VERSION, mtype, len(body)) + body


random_frame0 = st.one_of(
    st.binary(max_size=64),
    st.builds(header_then, st.binary(max_size=64), st.integers(0, 8)),
)


@FUZZ
@given(st.tuples(random_frame0, st.lists(st.binary(max_size=32), max_size=20)))
def test_fuzz_random_frames(parts: tuple[bytes, list[bytes]]) -> None:
    head, rest = parts
    assert_protocol_safe([head, *rest])
    assert_protocol_safe(rest)


@st.composite
def mutated_frames(draw: st.DrawFn) -> list[bytes]:
    message, payloads = draw(messages_with_payloads())
    frames = [bytearray(f) for f in encode(message, payloads)]
    for _ in range(draw(st.integers(1, 4))):
        op = draw(st.sampled_from(["flip", "insert", "delete", "truncate", "drop", "add"]))
        index = draw(st.integers(0, len(frames) - 1)) if frames else 0
        if op == "drop" and frames:
            del frames[index]
            continue
        if op == "add" or not frames:
            frames.insert(index, bytearray(draw(st.binary(max_size=16))))
            continue
        frame = frames[index]
        pos = draw(st.integers(0, len(frame)))
        if op == "flip" and frame:
            frame[pos % len(frame)] ^= 1 << draw(st.integers(0, 7))
        elif op == "insert":
            frame[pos:pos] = draw(st.binary(min_size=1, max_size=8))
        elif op == "delete":
            del frame[pos : pos + draw(st.integers(1, 8))]
        elif op == "truncate":
            del frame[pos:]
    return [bytes(f) for f in frames]


@FUZZ
@given(mutated_frames())
def test_fuzz_mutated_messages(frames: list[bytes]) -> None:
    env = assert_protocol_safe(frames)
    if env is not None:
        assert len(env.payloads) == len(frames) - 1


field_names = st.sampled_from(
    sorted(
        {
            "frame_id", "bundle_hash", "split", "codec", "tensor", "deadline_ms", "crc32",
            "outputs", "queue_ms", "compute_ms", "queue_depth", "reason", "detail", "seq",
            "sent_ms", "client_id", "server_id", "splits", "codecs", "protocol_version",
            "dtype", "shape",
        }
    )
)
scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(2**63), 2**64 - 1),
    st.floats(),
    st.text(max_size=20),
    st.binary(max_size=8),
    st.sampled_from(sorted(ALLOWED_DTYPES) + [r.value for r in RejectReason]),
)
msgpack_values = st.recursive(
    scalars,
    lambda inner: st.one_of(
        st.lists(inner, max_size=6),
        st.dictionaries(st.one_of(field_names, st.text(max_size=8)), inner, max_size=6),
    ),
    max_leaves=30,
)
meta_objects = st.one_of(
    msgpack_values,
    st.dictionaries(field_names, msgpack_values, max_size=8),
)


@FUZZ
@given(
    st.integers(0, 8),
    meta_objects,
    st.lists(st.binary(max_size=32), max_size=3),
)
def test_fuzz_random_metadata(mtype: int, meta: Any, payloads: list[bytes]) -> None:
    packed = msgpack.packb(meta, use_bin_type=True)
    assert_protocol_safe([header_then(packed, mtype), *payloads])
