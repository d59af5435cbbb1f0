"""Codecs by id. The protocol carries the id (and the codec's version/table hash); both ends build the same
codec from it.

Ids: `fp32`, `fp16`; `q8`, `q6`, `q4` (per-channel uniform quantisation; `q8c`… clip each channel to its 0.1..99.9 percentiles); any of
these followed by a lossless stage, `+zstd` or `+lz4` (e.g. `q8+zstd`); `jpeg-qN` / `webp-qN` for images;
`ans` for a bundle's learned bottleneck (its entropy tables live in the bundle, see `codec_for_point`).
"""
from __future__ import annotations

import re
from typing import TYPE_CHECKING

from splitrt.codecs.base import Codec, CodecError
from splitrt.codecs.image import PillowImageCodec, parse_image_codec
from splitrt.codecs.lossless import STAGES, StagedCodec
from splitrt.codecs.quant import UniformQuantCodec, parse_quant_codec
from splitrt.codecs.tensor import Float16Codec, Float32Codec

if TYPE_CHECKING:
    from splitrt.bundle import Bundle

_TENSOR_CODECS: dict[str, type[Codec]] = {"fp32": Float32Codec, "fp16": Float16Codec}

DEFAULT_TENSOR_CODECS = ("fp32", "fp16")
DEFAULT_IMAGE_CODECS = ("jpeg-q90", "jpeg-q75", "webp-q80")
ALL_TENSOR_CODECS = (
    "fp32", "fp16", "q8", "q6", "q4", "q8c", "q6c", "q4c",
    "fp32+zstd", "fp16+zstd", "q8+zstd", "q6+zstd", "q4+zstd", "q4c+zstd", "fp16+lz4", "q8+lz4",
)
_STAGED_ID = re.compile(r"^([a-z0-9]+)\+(zstd|lz4)$")


class UnknownCodec(KeyError):
    def __str__(self) -> str:
        return (
            f"unknown codec {self.args[0]!r}: use fp32, fp16, q8/q6/q4 (suffix c: clipped), optionally +zstd or +lz4, "
            "for activations, jpeg-qN / webp-qN (N in 1..100) for images, or ans for a bundle's bottleneck"
        )


def _plain_tensor_codec(codec_id: str) -> Codec | None:
    if codec_id in _TENSOR_CODECS:
        return _TENSOR_CODECS[codec_id]()
    return parse_quant_codec(codec_id)


def get_codec(codec_id: str) -> Codec:
    """Build the codec named `codec_id`, e.g. `fp16`, `q8+zstd` or `jpeg-q90`; raises UnknownCodec."""
    plain = _plain_tensor_codec(codec_id)
    if plain is not None:
        return plain
    staged = _STAGED_ID.match(codec_id)
    if staged is not None:
        inner = _plain_tensor_codec(staged.group(1))
        if inner is None:
            raise UnknownCodec(codec_id)
        return StagedCodec(inner, STAGES[staged.group(2)]())
    try:
        image_codec = parse_image_codec(codec_id)
    except ValueError as exc:  # a quality outside 1..100
        raise UnknownCodec(codec_id) from exc
    if image_codec is None:
        raise UnknownCodec(codec_id)
    return image_codec


def codec_for_point(bundle: "Bundle", point: str, codec_id: str) -> Codec:
    """The codec for `codec_id` at split `point` of `bundle`: a bottleneck point takes only its own entropy
    codec (tables from the bundle), any other point a codec of `get_codec`. Raises UnknownCodec."""
    bottleneck = bundle.manifest.bottleneck(point)
    if bottleneck is None:
        return get_codec(codec_id)
    if codec_id != bottleneck.codec:
        raise UnknownCodec(codec_id)
    from splitrt.codecs.bottleneck.install import entropy_codec

    return entropy_codec(bundle, bottleneck)


def is_known_codec(codec_id: str) -> bool:
    try:
        get_codec(codec_id)
    except UnknownCodec:
        return False
    return True


__all__ = [
    "ALL_TENSOR_CODECS",
    "Codec",
    "CodecError",
    "DEFAULT_IMAGE_CODECS",
    "DEFAULT_TENSOR_CODECS",
    "Float16Codec",
    "Float32Codec",
    "PillowImageCodec",
    "StagedCodec",
    "UniformQuantCodec",
    "UnknownCodec",
    "codec_for_point",
    "get_codec",
    "is_known_codec",
]
