from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from splitrt.codecs import CodecError, UnknownCodec, get_codec, is_known_codec
from splitrt.protocol import TensorSpec

FLOATS = hnp.arrays(
    dtype=np.float32,
    shape=hnp.array_shapes(min_dims=1, max_dims=4, min_side=1, max_side=9),
    elements=st.floats(-1e6, 1e6, width=32, allow_nan=False, allow_infinity=False),
)


def spec_of(array: np.ndarray) -> TensorSpec:
    return TensorSpec(str(array.dtype), tuple(array.shape))


@settings(max_examples=200, deadline=None)
@given(FLOATS)
def test_fp32_round_trip_is_bit_exact(array: np.ndarray) -> None:
    codec = get_codec("fp32")
    decoded = codec.decode(bytes(codec.encode(array)), spec_of(array))
    assert decoded.dtype == np.float32 and decoded.shape == array.shape
    assert np.array_equal(decoded.view(np.uint32), array.view(np.uint32))
    assert codec.lossless


@settings(max_examples=200, deadline=None)
@given(FLOATS)
def test_fp16_round_trip_within_its_stated_bound(array: np.ndarray) -> None:
    codec = get_codec("fp16")
    payload = bytes(codec.encode(array))
    assert len(payload) == array.size * 2
    decoded = codec.decode(payload, spec_of(array))
    assert decoded.dtype == np.float32 and decoded.shape == array.shape
    assert np.all(np.isfinite(decoded)), "out-of-range values are clipped, never sent as inf"
    bound = codec.max_abs_error(array)
    assert float(np.abs(decoded.astype(np.float64) - array).max(initial=0.0)) <= bound


@pytest.mark.parametrize("codec_id", ["fp32", "fp16"])
def test_tensor_codec_refuses_a_payload_of_the_wrong_length(codec_id: str) -> None:
    codec = get_codec(codec_id)
    payload = bytes(codec.encode(np.zeros((2, 3), np.float32)))
    with pytest.raises(CodecError, match="needs"):
        codec.decode(payload[:-2], TensorSpec("float32", (2, 3)))
    with pytest.raises(CodecError):
        codec.decode(payload, TensorSpec("uint8", (2, 3)))


@pytest.mark.parametrize("codec_id", ["fp16", "fp16+zstd", "fp16+lz4"])
def test_fp16_hands_the_tail_its_halves_which_cast_to_what_decode_returns(codec_id: str,
                                                                           rng: np.random.Generator) -> None:
    codec = get_codec(codec_id)
    array = (rng.standard_normal((2, 5, 3)) * 100).astype(np.float32)
    payload = bytes(codec.encode(array))
    spec = spec_of(array)
    halves = codec.decode_for_tail(payload, spec)
    assert halves.dtype == np.float16 and halves.shape == array.shape
    assert np.array_equal(halves.astype(np.float32), codec.decode(payload, spec))
    with pytest.raises(CodecError):
        codec.decode_for_tail(payload[:-2], spec)
    with pytest.raises(CodecError):
        codec.decode_for_tail(payload, TensorSpec("uint8", (2, 5, 3)))


@pytest.mark.parametrize("codec_id", ["jpeg-q90", "jpeg-q50", "webp-q80"])
def test_image_codec_round_trip(codec_id: str, rng: np.random.Generator) -> None:
    codec = get_codec(codec_id)
    # A smooth image, so lossy compression keeps it close.
    y, x = np.mgrid[0:48, 0:64]
    image = np.stack([x * 4, y * 5, (x + y) * 2], axis=-1).astype(np.uint8)
    payload = codec.encode(image)
    assert len(payload) < image.nbytes
    decoded = codec.decode(payload, TensorSpec("uint8", (1, 48, 64, 3)))
    assert decoded.shape == (1, 48, 64, 3) and decoded.dtype == np.uint8
    assert np.abs(decoded[0].astype(int) - image).mean() < 6


def test_image_codec_refuses_wrong_size_and_garbage() -> None:
    codec = get_codec("jpeg-q90")
    payload = codec.encode(np.zeros((32, 32, 3), np.uint8))
    with pytest.raises(CodecError, match="expected a JPEG of 64x64"):
        codec.decode(payload, TensorSpec("uint8", (64, 64, 3)))
    with pytest.raises(CodecError, match="cannot decode"):
        codec.decode(b"\xff\xd8 definitely not a jpeg", TensorSpec("uint8", (32, 32, 3)))
    with pytest.raises(CodecError):
        codec.decode(bytes(payload)[: len(payload) // 3], TensorSpec("uint8", (32, 32, 3)))
    with pytest.raises(CodecError, match="JPEG"):
        codec.decode(get_codec("webp-q80").encode(np.zeros((32, 32, 3), np.uint8)), TensorSpec("uint8", (32, 32, 3)))


def test_unknown_codecs_are_named_in_the_error() -> None:
    for codec_id in ["zstd-9000", "jpeg-q0", "jpeg-q101", "", "FP16"]:
        assert not is_known_codec(codec_id)
        with pytest.raises(UnknownCodec, match="unknown codec"):
            get_codec(codec_id)


def test_codec_version_hashes_differ() -> None:
    hashes = {get_codec(c).version_hash for c in ["fp32", "fp16", "jpeg-q90", "jpeg-q75"]}
    assert len(hashes) == 4
