"""Quantisation, lossless stages and their combinations: every codec round-trips within its stated bound."""
from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from splitrt.codecs import ALL_TENSOR_CODECS, CodecError, UnknownCodec, get_codec
from splitrt.protocol import TensorSpec

FLOATS = hnp.arrays(
    dtype=np.float32,
    shape=hnp.array_shapes(min_dims=1, max_dims=4, min_side=1, max_side=7),
    elements=st.floats(-1e4, 1e4, width=32, allow_nan=False, allow_infinity=False),
)
LOSSY_AND_STAGED = [c for c in ALL_TENSOR_CODECS if c not in ("fp32", "fp16")]


def spec_of(array: np.ndarray) -> TensorSpec:
    return TensorSpec("float32", tuple(array.shape))


@settings(max_examples=40, deadline=None)
@given(array=FLOATS, codec_id=st.sampled_from(ALL_TENSOR_CODECS))
def test_every_tensor_codec_round_trips_within_its_stated_bound(array: np.ndarray, codec_id: str) -> None:
    codec = get_codec(codec_id)
    payload = bytes(codec.encode(array))
    decoded = codec.decode(payload, spec_of(array))
    assert decoded.dtype == np.float32 and decoded.shape == array.shape
    error = float(np.abs(decoded.astype(np.float64) - array.astype(np.float64)).max(initial=0.0))
    assert error <= codec.max_abs_error(array)
    if codec.lossless:
        assert np.array_equal(decoded.view(np.uint32), array.view(np.uint32))


@pytest.mark.parametrize("bits", [8, 6, 4])
def test_quantisation_error_is_half_a_step_per_channel(bits: int, rng: np.random.Generator) -> None:
    scales = np.array([0.01, 1.0, 100.0], dtype=np.float32).reshape(1, 3, 1, 1)
    array = (rng.standard_normal((2, 3, 5, 5)) * scales).astype(np.float32)
    codec = get_codec(f"q{bits}")
    decoded = codec.decode(codec.encode(array), spec_of(array))
    for channel in range(3):
        values = array[:, channel]
        step = (values.max() - values.min()) / (2**bits - 1)  # per (sample, channel) range is tighter still
        assert np.abs(decoded[:, channel] - values).max() <= step / 2 * 1.001 + 1e-6


def test_payload_sizes_follow_the_bit_width(rng: np.random.Generator) -> None:
    array = rng.standard_normal((1, 40, 28, 28)).astype(np.float32)
    sizes = {c: len(bytes(get_codec(c).encode(array))) for c in ("q8", "q6", "q4")}
    values = array.size
    assert sizes["q8"] - values == sizes["q6"] - values * 6 // 8 == sizes["q4"] - values // 2 == 8 + 80 * 4


def test_clipping_bounds_the_range_but_states_the_clip_error(rng: np.random.Generator) -> None:
    array = rng.standard_normal((1, 2, 64, 64)).astype(np.float32)
    array[0, 0, 0, 0] = 1000.0  # one outlier
    plain, clipped = get_codec("q4"), get_codec("q4c")
    plain_error = np.abs(plain.decode(plain.encode(array), spec_of(array)) - array)
    clipped_error = np.abs(clipped.decode(clipped.encode(array), spec_of(array)) - array)
    assert np.median(clipped_error[:, 0]) < np.median(plain_error[:, 0]) / 10  # levels go to the bulk of the values
    assert clipped_error.max() <= clipped.max_abs_error(array)
    assert clipped.max_abs_error(array) > 900  # the outlier's clip is part of the bound


@pytest.mark.parametrize("codec_id", LOSSY_AND_STAGED)
def test_truncated_or_corrupt_payloads_raise_codec_error(codec_id: str, rng: np.random.Generator) -> None:
    array = rng.standard_normal((1, 4, 6, 6)).astype(np.float32)
    codec = get_codec(codec_id)
    payload = bytes(codec.encode(array))
    with pytest.raises(CodecError):
        codec.decode(payload[:-3], spec_of(array))
    with pytest.raises(CodecError):
        codec.decode(payload, TensorSpec("float32", (1, 4, 6, 7)))


@pytest.mark.parametrize("stage", ["zstd", "lz4"])
def test_a_decompression_bomb_is_refused_before_it_expands(stage: str) -> None:
    codec = get_codec(f"fp32+{stage}")
    bomb = bytes(codec.encode(np.zeros((1, 64, 64, 64), np.float32)))  # 1 MiB of zeros, a few hundred bytes
    assert len(bomb) < 10_000
    with pytest.raises(CodecError, match="expands|needs|corrupt"):
        codec.decode(bomb, TensorSpec("float32", (1, 4, 4, 4)))


def test_q8_zstd_is_smaller_than_q8_on_activation_like_tensors(rng: np.random.Generator) -> None:
    array = np.maximum(rng.standard_normal((1, 40, 28, 28)), 0).astype(np.float32)  # post-ReLU: many zeros
    assert len(get_codec("q8+zstd").encode(array)) < 0.8 * len(bytes(get_codec("q8").encode(array)))


@pytest.mark.parametrize("bad", ["q3", "q8+gzip", "jpeg-q90+zstd", "q8+zstd+lz4", "ans", "q16"])
def test_unknown_ids_are_refused(bad: str) -> None:
    with pytest.raises(UnknownCodec):
        get_codec(bad)


def test_version_hashes_differ_between_codecs() -> None:
    hashes = {get_codec(c).version_hash for c in ALL_TENSOR_CODECS}
    assert len(hashes) == len(ALL_TENSOR_CODECS)
