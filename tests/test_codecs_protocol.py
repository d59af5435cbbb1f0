"""`Infer.codec_hash`: optional on the wire (older peers omit it), validated like every other field."""
from __future__ import annotations

import struct

import msgpack
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from splitrt.protocol import MAGIC, PROTOCOL_VERSION, Infer, MalformedMessage, MessageType, TensorSpec, decode, encode

SPEC = TensorSpec("float32", (1, 2, 3))


def infer(**fields: object) -> Infer:
    base: dict[str, object] = dict(frame_id=3, bundle_hash="sha256:x", split="b4", codec="ans", tensor=SPEC,
                                   deadline_ms=1.0e12)
    base.update(fields)
    return Infer(**base)  # type: ignore[arg-type]


def frames_with_meta(meta: dict[str, object], payload: bytes = b"p") -> list[bytes]:
    packed = msgpack.packb(meta, use_bin_type=True)
    return [struct.pack("!3sBBI", MAGIC, PROTOCOL_VERSION, int(MessageType.INFER), len(packed)) + packed, payload]


@settings(max_examples=60, deadline=None)
@given(st.text(min_size=1, max_size=64))
def test_codec_hash_round_trips(codec_hash: str) -> None:
    message = infer(codec_hash=codec_hash)
    assert decode(encode(message, [b"payload"])).message == message


def test_codec_hash_is_optional_and_absent_when_empty() -> None:
    frames = encode(infer(), [b"payload"])
    assert b"codec_hash" not in bytes(frames[0])  # what an older peer sends
    assert decode(frames).message.codec_hash == ""  # type: ignore[union-attr]


@pytest.mark.parametrize("bad", [7, None, ["a"], b"bytes", "x" * 300])
def test_a_codec_hash_of_the_wrong_type_or_size_is_malformed(bad: object) -> None:
    import zlib

    meta = {"frame_id": 1, "bundle_hash": "b", "split": "s", "codec": "c", "tensor": {"dtype": "float32", "shape": [1]},
            "deadline_ms": 1.0, "crc32": [zlib.crc32(b"p")], "codec_hash": bad}
    with pytest.raises(MalformedMessage):
        decode(frames_with_meta(meta))
    meta.pop("codec_hash")
    meta["codec_hashes"] = "x"  # only the known optional field is allowed
    with pytest.raises(MalformedMessage, match="unknown field"):
        decode(frames_with_meta(meta))
