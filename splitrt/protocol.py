"""Sans-IO wire format for edge-cloud split inference.

A message is a list of ZeroMQ frames:

* frame 0: a fixed binary header ``!3sBBI`` (magic ``b"SRT"``, protocol
  version, message type, metadata length) immediately followed by exactly
  that many bytes of msgpack metadata: a map holding the message's fields;
* frames 1..n: raw payloads, each covered by a CRC32 listed in the metadata
  under ``"crc32"`` (only Infer and Result carry payloads, and only they have
  that key).

:func:`decode` treats its input as hostile: every size is checked before
anything is parsed or allocated, every field is type- and range-checked,
unknown or missing keys are rejected, and every failure is a
:class:`ProtocolError` whose ``reason`` fits straight into a :class:`Reject`.
"""

from __future__ import annotations

import binascii
import enum
import math
import struct
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, TypeAlias

import msgpack
import numpy as np

__all__ = [
    "ALLOWED_DTYPES",
    "MAGIC",
    "MAX_LIST_ENTRIES",
    "PROTOCOL_VERSION",
    "ChecksumMismatch",
    "Envelope",
    "Heartbeat",
    "Hello",
    "Infer",
    "Limits",
    "MalformedMessage",
    "Message",
    "MessageTooLarge",
    "MessageType",
    "ProtocolError",
    "Reject",
    "RejectReason",
    "Result",
    "TensorSpec",
    "VersionMismatch",
    "Welcome",
    "decode",
    "encode",
    "peek_frame_id",
    "tensor_from_payload",
    "tensor_payload",
]

# 2: Welcome.max_payload_bytes and Result.tail_started_ms (a version-1 peer would refuse them as unknown fields).
PROTOCOL_VERSION: int = 2
MAGIC: bytes = b"SRT"
MAX_LIST_ENTRIES: int = 256
"""Most entries in Welcome.splits / Welcome.codecs."""

_HEADER = struct.Struct("!3sBBI")
_INT_MAX = 2**63 - 1
_U32_MAX = 2**32 - 1
_U8_MAX = 2**8 - 1
_DIM_MAX = 2**31
_MAX_META_KEYS = 16
_SHORT_CHARS = 48
_MAX_DETAIL_CHARS = 256  # == Limits().max_string_chars, so error details fit a Reject

# The payload checksum: binascii's CRC-32 is zlib's, but holds the GIL while it runs. zlib.crc32 lets go of the GIL
# for a buffer over 5 KB, and a thread that lets go of it mid-request waits to get it back behind every other thread
# of the process (in the cloud service, the workers). Measured on a 125 KB payload beside one busy Python thread:
# 0.51 ms per checksum with zlib's, 0.11 ms with binascii's (0.035 ms alone).
_crc32 = binascii.crc32

_ITEMSIZE_BYTES: dict[str, int] = {
    "float32": 4,
    "float16": 2,
    "uint8": 1,
    "int8": 1,
    "int32": 4,
    "int64": 8,
}
ALLOWED_DTYPES: frozenset[str] = frozenset(_ITEMSIZE_BYTES)


class MessageType(enum.IntEnum):
    HELLO = 1
    WELCOME = 2
    INFER = 3
    RESULT = 4
    REJECT = 5
    HEARTBEAT = 6


class RejectReason(str, enum.Enum):
    EXPIRED = "expired"
    OVERLOADED = "overloaded"
    UNKNOWN_BUNDLE = "unknown_bundle"
    UNKNOWN_SPLIT = "unknown_split"
    UNKNOWN_CODEC = "unknown_codec"
    BAD_PAYLOAD = "bad_payload"
    MALFORMED = "malformed"
    TOO_LARGE = "too_large"
    UNAUTHORISED = "unauthorised"
    VERSION_MISMATCH = "version_mismatch"
    INTERNAL = "internal"


# --------------------------------------------------------------------------- errors


class ProtocolError(Exception):
    """A message that cannot be accepted; ``reason`` is what to put in a Reject.

    ``detail`` is capped at the default ``max_string_chars`` so that
    ``Reject(frame_id, err.reason, err.detail)`` always encodes.
    """

    reason: RejectReason
    detail: str

    def __init__(self, reason: RejectReason, detail: str = "") -> None:
        self.reason = RejectReason(reason)
        self.detail = _clip(detail, _MAX_DETAIL_CHARS)
        super().__init__(self.reason, self.detail)

    def __str__(self) -> str:
        return f"{self.reason.value}: {self.detail}" if self.detail else self.reason.value


class MalformedMessage(ProtocolError):
    """Structurally invalid frames or metadata."""

    def __init__(self, detail: str = "") -> None:
        super().__init__(RejectReason.MALFORMED, detail)


class MessageTooLarge(ProtocolError):
    """A frame count, frame size or declared tensor size exceeds the limits."""

    def __init__(self, detail: str = "") -> None:
        super().__init__(RejectReason.TOO_LARGE, detail)


class VersionMismatch(ProtocolError):
    """The header carries a protocol version other than PROTOCOL_VERSION."""

    def __init__(self, detail: str = "") -> None:
        super().__init__(RejectReason.VERSION_MISMATCH, detail)


class ChecksumMismatch(ProtocolError):
    """A payload frame does not match its CRC32."""

    def __init__(self, detail: str = "") -> None:
        super().__init__(RejectReason.BAD_PAYLOAD, detail)


# --------------------------------------------------------------------------- data


@dataclass(frozen=True)
class TensorSpec:
    dtype: str
    shape: tuple[int, ...]

    @property
    def nbytes(self) -> int:
        """Size of the C-order tensor in bytes (exact Python int, no allocation)."""
        itemsize = _ITEMSIZE_BYTES.get(self.dtype)
        if itemsize is None:
            raise ValueError(f"dtype {self.dtype!r} is not one of {sorted(ALLOWED_DTYPES)}")
        return math.prod(self.shape) * itemsize


@dataclass(frozen=True)
class Limits:
    """Bounds enforced by decode (and encode) before anything is allocated."""

    max_meta_bytes: int = 64 * 1024
    max_payload_bytes: int = 32 * 1024 * 1024  # sum of all payload frames
    max_payload_frames: int = 16
    max_string_chars: int = 256
    max_tensor_dims: int = 8

    def __post_init__(self) -> None:
        for name, value in vars(self).items():
            if type(value) is not int or value < 0:
                raise ValueError(f"Limits.{name} must be a non-negative int, got {value!r}")


DEFAULT_LIMITS = Limits()


@dataclass(frozen=True)
class Hello:
    client_id: str
    bundle_hash: str
    protocol_version: int = PROTOCOL_VERSION


@dataclass(frozen=True)
class Welcome:
    server_id: str
    bundle_hash: str
    splits: tuple[str, ...]
    codecs: tuple[str, ...]
    protocol_version: int = PROTOCOL_VERSION
    # Largest total payload (bytes) of a request the server takes: past it a request earns Reject(too_large), and
    # far past it (the server's transport cap) the connection is dropped with no answer at all. Optional on the
    # wire (None: the server did not say, as older servers do not).
    max_payload_bytes: int | None = None


@dataclass(frozen=True)
class Infer:
    """One activation to run through the tail; exactly one codec-encoded payload."""

    frame_id: int
    bundle_hash: str
    split: str
    codec: str
    tensor: TensorSpec  # dtype/shape of the tensor the codec decodes to
    deadline_ms: float  # absolute, unix epoch milliseconds
    codec_hash: str = ""  # the codec's version/table hash; optional on the wire, checked by the cloud when set


@dataclass(frozen=True)
class Result:
    """Tail outputs; one raw C-order little-endian payload per output."""

    frame_id: int
    outputs: tuple[TensorSpec, ...]
    queue_ms: float
    compute_ms: float
    queue_depth: int
    # When the tail began running this request: absolute, unix epoch milliseconds (the clock of Infer.deadline_ms),
    # so a client can check for itself that nothing ran past its deadline. Optional on the wire (None: the server
    # did not say, as older servers do not).
    tail_started_ms: float | None = None


@dataclass(frozen=True)
class Reject:
    frame_id: int  # -1 when not tied to a frame
    reason: RejectReason
    detail: str = ""


@dataclass(frozen=True)
class Heartbeat:
    seq: int
    sent_ms: float


Message: TypeAlias = Hello | Welcome | Infer | Result | Reject | Heartbeat


@dataclass(frozen=True)
class Envelope:
    """A decoded message plus its payloads (read-only views over the input frames)."""

    message: Message
    payloads: tuple[memoryview, ...]


_TYPE_OF: dict[type, MessageType] = {
    Hello: MessageType.HELLO,
    Welcome: MessageType.WELCOME,
    Infer: MessageType.INFER,
    Result: MessageType.RESULT,
    Reject: MessageType.REJECT,
    Heartbeat: MessageType.HEARTBEAT,
}

_KEYS: dict[MessageType, frozenset[str]] = {
    MessageType.HELLO: frozenset({"client_id", "bundle_hash", "protocol_version"}),
    MessageType.WELCOME: frozenset(
        {"server_id", "bundle_hash", "splits", "codecs", "protocol_version"}
    ),
    MessageType.INFER: frozenset(
        {"frame_id", "bundle_hash", "split", "codec", "tensor", "deadline_ms", "crc32"}
    ),
    MessageType.RESULT: frozenset(
        {"frame_id", "outputs", "queue_ms", "compute_ms", "queue_depth", "crc32"}
    ),
    MessageType.REJECT: frozenset({"frame_id", "reason", "detail"}),
    MessageType.HEARTBEAT: frozenset({"seq", "sent_ms"}),
}
# Fields a message may carry but need not (absent from older peers' messages).
_OPTIONAL_KEYS: dict[MessageType, frozenset[str]] = {
    MessageType.INFER: frozenset({"codec_hash"}),
    MessageType.WELCOME: frozenset({"max_payload_bytes"}),
    MessageType.RESULT: frozenset({"tail_started_ms"}),
}
_SPEC_KEYS = frozenset({"dtype", "shape"})


# --------------------------------------------------------------------------- helpers


def _clip(text: str, max_chars: int) -> str:
    return text if len(text) <= max_chars else text[: max_chars - 3] + "..."


def _short(value: object) -> str:
    """Bounded description of an untrusted value (never reprs a whole container)."""
    if isinstance(value, (str, bytes)):
        return _clip(repr(value[:_SHORT_CHARS]), _SHORT_CHARS + 8)
    if isinstance(value, (bool, int, float)) or value is None:
        return _clip(repr(value), _SHORT_CHARS)
    if isinstance(value, (list, tuple, dict)):
        return f"{type(value).__name__} of length {len(value)}"
    return type(value).__name__


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _byte_view(obj: object) -> memoryview:
    """Flat, read-only, zero-copy byte view of a buffer (or of ``obj.buffer``)."""
    try:
        view = memoryview(obj)  # type: ignore[arg-type]
    except TypeError:
        inner = getattr(obj, "buffer", None)
        if inner is None:
            raise
        view = memoryview(inner)
    if not view.c_contiguous:
        raise ValueError("buffer is not C-contiguous")
    if view.format != "B" or view.ndim != 1:
        view = view.cast("B")
    return view.toreadonly()


def _frame_view(obj: object, what: str) -> memoryview:
    try:
        return _byte_view(obj)
    except (TypeError, ValueError, AttributeError, BufferError) as exc:
        raise MalformedMessage(f"{what} is not a contiguous byte buffer ({exc})") from None


# --------------------------------------------------------------------------- field validation


def _int_field(meta: dict[str, Any], key: str, *, low: int = 0, high: int = _INT_MAX) -> int:
    value = meta[key]
    if not _is_int(value):
        raise MalformedMessage(f"{key}: expected int, got {_short(value)}")
    if not low <= value <= high:
        raise MalformedMessage(f"{key}: {value} out of range [{low}, {high}]")
    return int(value)


def _float_field(meta: dict[str, Any], key: str) -> float:
    value = meta[key]
    if not isinstance(value, (int, float)) or isinstance(value, bool):
        raise MalformedMessage(f"{key}: expected number, got {_short(value)}")
    try:
        number = float(value)
    except OverflowError:
        raise MalformedMessage(f"{key}: {_short(value)} does not fit a float") from None
    if not math.isfinite(number) or number < 0:
        raise MalformedMessage(f"{key}: expected a finite number >= 0, got {number!r}")
    return number


def _check_str(value: object, what: str, limits: Limits, *, allow_empty: bool = False) -> str:
    if not isinstance(value, str):
        raise MalformedMessage(f"{what}: expected str, got {_short(value)}")
    if not value and not allow_empty:
        raise MalformedMessage(f"{what}: must not be empty")
    if len(value) > limits.max_string_chars:
        raise MalformedMessage(
            f"{what}: {len(value)} chars exceeds limit of {limits.max_string_chars}"
        )
    return str(value)


def _str_field(
    meta: dict[str, Any], key: str, limits: Limits, *, allow_empty: bool = False
) -> str:
    return _check_str(meta[key], key, limits, allow_empty=allow_empty)


def _str_tuple_field(meta: dict[str, Any], key: str, limits: Limits) -> tuple[str, ...]:
    value = meta[key]
    if not isinstance(value, (list, tuple)):
        raise MalformedMessage(f"{key}: expected list of str, got {_short(value)}")
    if len(value) > MAX_LIST_ENTRIES:
        raise MalformedMessage(f"{key}: {len(value)} entries exceeds limit of {MAX_LIST_ENTRIES}")
    return tuple(_check_str(item, f"{key}[{i}]", limits) for i, item in enumerate(value))


def _check_spec(value: object, what: str, limits: Limits) -> TensorSpec:
    if not isinstance(value, dict):
        raise MalformedMessage(f"{what}: expected map with dtype/shape, got {_short(value)}")
    _check_keys(value, _SPEC_KEYS, what)
    dtype = value["dtype"]
    if not isinstance(dtype, str) or dtype not in ALLOWED_DTYPES:
        raise MalformedMessage(
            f"{what}.dtype: {_short(dtype)} is not one of {sorted(ALLOWED_DTYPES)}"
        )
    shape = value["shape"]
    if not isinstance(shape, (list, tuple)):
        raise MalformedMessage(f"{what}.shape: expected list of int, got {_short(shape)}")
    if len(shape) > limits.max_tensor_dims:
        raise MalformedMessage(
            f"{what}.shape: {len(shape)} dims exceeds limit of {limits.max_tensor_dims}"
        )
    for dim in shape:
        if not _is_int(dim) or not 0 <= dim <= _DIM_MAX:
            raise MalformedMessage(
                f"{what}.shape: dimension {_short(dim)} is not an int in [0, {_DIM_MAX}]"
            )
    spec = TensorSpec(str(dtype), tuple(int(d) for d in shape))
    if spec.nbytes > limits.max_payload_bytes:
        raise MessageTooLarge(
            f"{what}: tensor of {spec.nbytes} bytes exceeds limit of {limits.max_payload_bytes}"
        )
    return spec


def _check_keys(
    meta: dict[Any, Any], expected: frozenset[str], what: str, optional: frozenset[str] = frozenset()
) -> None:
    keys = set(meta)
    missing = expected - keys
    if missing:
        raise MalformedMessage(f"{what}: missing field(s) {sorted(missing)}")
    extra = keys - expected - optional
    if extra:
        names = sorted(_short(k) for k in extra)
        raise MalformedMessage(f"{what}: unknown field(s) {_clip(', '.join(names), 120)}")


def _crc_field(meta: dict[str, Any], limits: Limits) -> tuple[int, ...]:
    value = meta["crc32"]
    if not isinstance(value, (list, tuple)) or len(value) > limits.max_payload_frames:
        raise MalformedMessage(f"crc32: expected list of at most {limits.max_payload_frames} ints")
    for crc in value:
        if not _is_int(crc) or not 0 <= crc <= _U32_MAX:
            raise MalformedMessage(f"crc32: {_short(crc)} is not a u32")
    return tuple(int(c) for c in value)


def _parse_hello(meta: dict[str, Any], limits: Limits) -> Hello:
    return Hello(
        client_id=_str_field(meta, "client_id", limits),
        bundle_hash=_str_field(meta, "bundle_hash", limits),
        protocol_version=_int_field(meta, "protocol_version", high=_U8_MAX),
    )


def _parse_welcome(meta: dict[str, Any], limits: Limits) -> Welcome:
    return Welcome(
        server_id=_str_field(meta, "server_id", limits),
        bundle_hash=_str_field(meta, "bundle_hash", limits),
        splits=_str_tuple_field(meta, "splits", limits),
        codecs=_str_tuple_field(meta, "codecs", limits),
        protocol_version=_int_field(meta, "protocol_version", high=_U8_MAX),
        max_payload_bytes=_int_field(meta, "max_payload_bytes", low=1) if "max_payload_bytes" in meta else None,
    )


def _parse_infer(meta: dict[str, Any], limits: Limits) -> Infer:
    return Infer(
        frame_id=_int_field(meta, "frame_id"),
        bundle_hash=_str_field(meta, "bundle_hash", limits),
        split=_str_field(meta, "split", limits),
        codec=_str_field(meta, "codec", limits),
        tensor=_check_spec(meta["tensor"], "tensor", limits),
        deadline_ms=_float_field(meta, "deadline_ms"),
        codec_hash=_str_field(meta, "codec_hash", limits) if "codec_hash" in meta else "",
    )


def _parse_result(meta: dict[str, Any], limits: Limits) -> Result:
    outputs = meta["outputs"]
    if not isinstance(outputs, (list, tuple)):
        raise MalformedMessage(f"outputs: expected list of tensor specs, got {_short(outputs)}")
    if len(outputs) > limits.max_payload_frames:
        raise MessageTooLarge(
            f"outputs: {len(outputs)} entries exceeds limit of {limits.max_payload_frames}"
        )
    return Result(
        frame_id=_int_field(meta, "frame_id"),
        outputs=tuple(_check_spec(o, f"outputs[{i}]", limits) for i, o in enumerate(outputs)),
        queue_ms=_float_field(meta, "queue_ms"),
        compute_ms=_float_field(meta, "compute_ms"),
        queue_depth=_int_field(meta, "queue_depth"),
        tail_started_ms=_float_field(meta, "tail_started_ms") if "tail_started_ms" in meta else None,
    )


def _parse_reject(meta: dict[str, Any], limits: Limits) -> Reject:
    reason = meta["reason"]
    try:
        known = RejectReason(reason) if isinstance(reason, str) else None
    except ValueError:
        known = None
    if known is None:
        raise MalformedMessage(f"reason: {_short(reason)} is not a known reject reason")
    return Reject(
        frame_id=_int_field(meta, "frame_id", low=-1),
        reason=known,
        detail=_str_field(meta, "detail", limits, allow_empty=True),
    )


def _parse_heartbeat(meta: dict[str, Any], limits: Limits) -> Heartbeat:
    return Heartbeat(seq=_int_field(meta, "seq"), sent_ms=_float_field(meta, "sent_ms"))


_PARSERS: dict[MessageType, Callable[[dict[str, Any], Limits], Message]] = {
    MessageType.HELLO: _parse_hello,
    MessageType.WELCOME: _parse_welcome,
    MessageType.INFER: _parse_infer,
    MessageType.RESULT: _parse_result,
    MessageType.REJECT: _parse_reject,
    MessageType.HEARTBEAT: _parse_heartbeat,
}


def _parse_meta(
    mtype: MessageType, meta: object, limits: Limits
) -> tuple[Message, tuple[int, ...]]:
    """Validate a metadata map; return the message and its payload CRCs."""
    if not isinstance(meta, dict):
        raise MalformedMessage(f"metadata: expected map, got {_short(meta)}")
    _check_keys(meta, _KEYS[mtype], mtype.name, _OPTIONAL_KEYS.get(mtype, frozenset()))
    message = _PARSERS[mtype](meta, limits)
    crcs = _crc_field(meta, limits) if "crc32" in meta else ()
    return message, crcs


def _expected_payloads(mtype: MessageType) -> int | None:
    """Payload frame count a type needs; None for Result (depends on its outputs)."""
    if mtype is MessageType.INFER:
        return 1
    if mtype is MessageType.RESULT:
        return None
    return 0


def _check_payloads(
    message: Message,
    crcs: tuple[int, ...],
    payloads: Sequence[memoryview],
    *,
    verify_crc: bool,
) -> None:
    mtype = _TYPE_OF[type(message)]
    expected = len(message.outputs) if isinstance(message, Result) else _expected_payloads(mtype)
    if len(payloads) != expected:
        raise MalformedMessage(
            f"{mtype.name} needs {expected} payload frame(s), got {len(payloads)}"
        )
    if len(crcs) != len(payloads):
        raise MalformedMessage(f"crc32: {len(crcs)} checksums for {len(payloads)} payload(s)")
    if isinstance(message, Result):
        for i, (spec, payload) in enumerate(zip(message.outputs, payloads)):
            if payload.nbytes != spec.nbytes:
                raise ProtocolError(
                    RejectReason.BAD_PAYLOAD,
                    f"outputs[{i}]: payload is {payload.nbytes} bytes, spec needs {spec.nbytes}",
                )
    if verify_crc:
        for i, (crc, payload) in enumerate(zip(crcs, payloads)):
            actual = _crc32(payload)
            if actual != crc:
                raise ChecksumMismatch(
                    f"payload {i}: crc32 {actual:#010x} != declared {crc:#010x}"
                )


def _meta_of(message: Message) -> dict[str, Any]:
    """Metadata map for a message; values are passed as-is so validation sees them."""

    def seq(value: object) -> object:
        return list(value) if isinstance(value, (tuple, list)) else value

    def spec(value: object) -> dict[str, object]:
        if not isinstance(value, TensorSpec):
            raise MalformedMessage(f"expected a TensorSpec, got {type(value).__name__}")
        return {"dtype": value.dtype, "shape": seq(value.shape)}

    if isinstance(message, Hello):
        return {
            "client_id": message.client_id,
            "bundle_hash": message.bundle_hash,
            "protocol_version": message.protocol_version,
        }
    if isinstance(message, Welcome):
        return {
            "server_id": message.server_id,
            "bundle_hash": message.bundle_hash,
            "splits": seq(message.splits),
            "codecs": seq(message.codecs),
            "protocol_version": message.protocol_version,
        } | ({"max_payload_bytes": message.max_payload_bytes} if message.max_payload_bytes is not None else {})
    if isinstance(message, Infer):
        return {
            "frame_id": message.frame_id,
            "bundle_hash": message.bundle_hash,
            "split": message.split,
            "codec": message.codec,
            "tensor": spec(message.tensor),
            "deadline_ms": message.deadline_ms,
        } | ({"codec_hash": message.codec_hash} if message.codec_hash != "" else {})
    if isinstance(message, Result):
        outputs: object = message.outputs
        if isinstance(outputs, (tuple, list)):
            outputs = [spec(o) for o in outputs]
        return {
            "frame_id": message.frame_id,
            "outputs": outputs,
            "queue_ms": message.queue_ms,
            "compute_ms": message.compute_ms,
            "queue_depth": message.queue_depth,
        } | ({"tail_started_ms": message.tail_started_ms} if message.tail_started_ms is not None else {})
    if isinstance(message, Reject):
        reason = message.reason
        return {
            "frame_id": message.frame_id,
            "reason": reason.value if isinstance(reason, RejectReason) else reason,
            "detail": message.detail,
        }
    return {"seq": message.seq, "sent_ms": message.sent_ms}


def _unpack_meta(data: memoryview, limits: Limits) -> object:
    def no_ext(code: int, data: bytes) -> object:
        raise ValueError(f"msgpack ext type {code} is not allowed")

    try:
        return msgpack.unpackb(
            data,
            raw=False,
            strict_map_key=True,
            use_list=True,
            max_str_len=4 * limits.max_string_chars,  # UTF-8 is at most 4 bytes per char
            max_bin_len=0,
            max_ext_len=0,
            max_array_len=max(MAX_LIST_ENTRIES, limits.max_payload_frames, limits.max_tensor_dims),
            max_map_len=_MAX_META_KEYS,
            ext_hook=no_ext,
        )
    except Exception as exc:  # the parser sees hostile bytes; any failure means malformed
        raise MalformedMessage(f"metadata is not valid msgpack ({type(exc).__name__})") from None


def _split_header(frame0: memoryview, limits: Limits) -> tuple[MessageType, memoryview]:
    if frame0.nbytes < _HEADER.size:
        raise MalformedMessage(f"header frame is {frame0.nbytes} bytes, needs {_HEADER.size}")
    magic, version, type_code, meta_len = _HEADER.unpack_from(frame0)
    if magic != MAGIC:
        raise MalformedMessage(f"bad magic {_short(magic)}, expected {MAGIC!r}")
    if version != PROTOCOL_VERSION:
        raise VersionMismatch(f"protocol version {version}, expected {PROTOCOL_VERSION}")
    try:
        mtype = MessageType(type_code)
    except ValueError:
        raise MalformedMessage(f"unknown message type {type_code}") from None
    actual = frame0.nbytes - _HEADER.size
    if actual > limits.max_meta_bytes:
        raise MessageTooLarge(f"metadata is {actual} bytes, limit is {limits.max_meta_bytes}")
    if meta_len != actual:
        raise MalformedMessage(f"header declares {meta_len} metadata bytes, frame has {actual}")
    return mtype, frame0[_HEADER.size :]


def _frame_list(frames: Sequence[Any], limits: Limits) -> list[Any]:
    try:
        count = len(frames)
    except TypeError:
        raise MalformedMessage(f"frames must be a sequence, got {_short(frames)}") from None
    if count == 0:
        raise MalformedMessage("no frames")
    if count > 1 + limits.max_payload_frames:
        raise MessageTooLarge(
            f"{count - 1} payload frames exceeds limit of {limits.max_payload_frames}"
        )
    return list(frames)


# --------------------------------------------------------------------------- public API


def encode(
    message: Message,
    payloads: Sequence[bytes | memoryview | bytearray] = (),
    *,
    limits: Limits = DEFAULT_LIMITS,
) -> list[bytes | memoryview]:
    """Frames for ``message``; runs the same validation as :func:`decode`.

    Payloads are not copied: bytes pass through, other buffers become flat
    byte memoryviews over the same memory.
    """
    mtype = _TYPE_OF.get(type(message))
    if mtype is None:
        raise TypeError(f"not a protocol message: {type(message).__name__}")
    views: list[memoryview] = []
    for i, payload in enumerate(payloads):
        try:
            views.append(_byte_view(payload))
        except TypeError as exc:
            raise ValueError(f"payload {i} is not a byte buffer ({exc})") from None
        except ValueError as exc:
            raise ValueError(f"payload {i}: {exc}") from None
    if len(views) > limits.max_payload_frames:
        raise MessageTooLarge(
            f"{len(views)} payload frames exceeds limit of {limits.max_payload_frames}"
        )
    total_bytes = sum(v.nbytes for v in views)
    if total_bytes > limits.max_payload_bytes:
        raise MessageTooLarge(
            f"payloads total {total_bytes} bytes, limit is {limits.max_payload_bytes}"
        )
    meta = _meta_of(message)
    if _expected_payloads(mtype) != 0:
        meta["crc32"] = [_crc32(v) for v in views]
    parsed, crcs = _parse_meta(mtype, meta, limits)
    _check_payloads(parsed, crcs, views, verify_crc=False)
    packed = msgpack.packb(meta, use_bin_type=True)
    if len(packed) > limits.max_meta_bytes:
        raise MessageTooLarge(f"metadata is {len(packed)} bytes, limit is {limits.max_meta_bytes}")
    header = _HEADER.pack(MAGIC, PROTOCOL_VERSION, int(mtype), len(packed))
    out: list[bytes | memoryview] = [header + packed]
    for payload, view in zip(payloads, views):
        out.append(payload if isinstance(payload, bytes) else view)
    return out


def decode(frames: Sequence[Any], limits: Limits = DEFAULT_LIMITS) -> Envelope:
    """Parse and validate frames from the network; raises only :class:`ProtocolError`.

    Frames may be any buffer-protocol object or have a ``.buffer`` attribute
    (``zmq.Frame``). Payloads come back as read-only views over the input.
    """
    items = _frame_list(frames, limits)
    mtype, meta_bytes = _split_header(_frame_view(items[0], "frame 0"), limits)
    payloads = tuple(_frame_view(f, f"frame {i}") for i, f in enumerate(items[1:], start=1))
    total_bytes = sum(p.nbytes for p in payloads)
    if total_bytes > limits.max_payload_bytes:
        raise MessageTooLarge(
            f"payloads total {total_bytes} bytes, limit is {limits.max_payload_bytes}"
        )
    expected = _expected_payloads(mtype)
    if expected is not None and len(payloads) != expected:
        raise MalformedMessage(
            f"{mtype.name} needs {expected} payload frame(s), got {len(payloads)}"
        )
    message, crcs = _parse_meta(mtype, _unpack_meta(meta_bytes, limits), limits)
    _check_payloads(message, crcs, payloads, verify_crc=True)
    return Envelope(message, payloads)


def peek_frame_id(frames: Sequence[Any], limits: Limits = DEFAULT_LIMITS) -> int:
    """Best-effort frame_id of a message that failed to decode; -1 if unknown. Never raises.

    Reads the metadata map entry by entry, so a frame_id that precedes the
    damage (encode writes it first) is still found.
    """
    try:
        items = _frame_list(frames, limits)
        _, meta_bytes = _split_header(_frame_view(items[0], "frame 0"), limits)
        unpacker = msgpack.Unpacker(
            None,
            raw=False,
            strict_map_key=True,
            max_buffer_size=max(1, meta_bytes.nbytes),
            max_str_len=4 * limits.max_string_chars,
            max_bin_len=0,
            max_ext_len=0,
            max_array_len=MAX_LIST_ENTRIES,
            max_map_len=_MAX_META_KEYS,
        )
        unpacker.feed(meta_bytes)
        for _ in range(unpacker.read_map_header()):
            key = unpacker.unpack()
            value = unpacker.unpack()
            if key == "frame_id":
                if _is_int(value) and -1 <= value <= _INT_MAX:
                    return int(value)
                return -1
    except Exception:
        return -1
    return -1


def tensor_payload(array: np.ndarray) -> tuple[TensorSpec, memoryview]:
    """Spec and C-contiguous little-endian byte view of ``array``; copies only if needed."""
    name = array.dtype.name
    if name not in ALLOWED_DTYPES:
        raise ValueError(f"dtype {array.dtype} is not one of {sorted(ALLOWED_DTYPES)}")
    wire = np.asarray(array, dtype=np.dtype(name).newbyteorder("<"), order="C")
    view = wire.reshape(-1).view(np.uint8).data.toreadonly()
    return TensorSpec(name, tuple(int(d) for d in array.shape)), view


def tensor_from_payload(spec: TensorSpec, payload: memoryview | bytes) -> np.ndarray:
    """Read-only zero-copy array over ``payload``; its length must equal ``spec.nbytes``."""
    if spec.dtype not in ALLOWED_DTYPES:
        raise MalformedMessage(
            f"dtype {_short(spec.dtype)} is not one of {sorted(ALLOWED_DTYPES)}"
        )
    if not isinstance(spec.shape, tuple) or not all(_is_int(d) and d >= 0 for d in spec.shape):
        raise MalformedMessage(f"shape {_short(spec.shape)} is not a tuple of non-negative ints")
    try:
        view = _byte_view(payload)
    except (TypeError, ValueError) as exc:
        detail = f"payload is not a byte buffer ({exc})"
        raise ProtocolError(RejectReason.BAD_PAYLOAD, detail) from None
    if view.nbytes != spec.nbytes:
        raise ProtocolError(
            RejectReason.BAD_PAYLOAD,
            f"payload is {view.nbytes} bytes, {spec.dtype}{list(spec.shape)} needs {spec.nbytes}",
        )
    array = np.frombuffer(view, dtype=np.dtype(spec.dtype).newbyteorder("<")).reshape(spec.shape)
    array.flags.writeable = False
    return array
