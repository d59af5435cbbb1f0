"""Codecs by id. The protocol carries the id; both ends build the same codec from it."""
from __future__ import annotations

from splitrt.codecs.base import Codec, CodecError
from splitrt.codecs.image import PillowImageCodec, parse_image_codec
from splitrt.codecs.tensor import Float16Codec, Float32Codec

_TENSOR_CODECS: dict[str, type[Codec]] = {"fp32": Float32Codec, "fp16": Float16Codec}

DEFAULT_TENSOR_CODECS = ("fp32", "fp16")
DEFAULT_IMAGE_CODECS = ("jpeg-q90", "jpeg-q75", "webp-q80")


class UnknownCodec(KeyError):
    def __str__(self) -> str:
        return (
            f"unknown codec {self.args[0]!r}: use one of {', '.join(DEFAULT_TENSOR_CODECS)} for activations "
            "or jpeg-qN / webp-qN (N in 1..100) for images"
        )


def get_codec(codec_id: str) -> Codec:
    """Build the codec named `codec_id`, e.g. `fp16` or `jpeg-q90`; raises UnknownCodec."""
    if codec_id in _TENSOR_CODECS:
        return _TENSOR_CODECS[codec_id]()
    try:
        image_codec = parse_image_codec(codec_id)
    except ValueError as exc:  # a quality outside 1..100
        raise UnknownCodec(codec_id) from exc
    if image_codec is None:
        raise UnknownCodec(codec_id)
    return image_codec


def is_known_codec(codec_id: str) -> bool:
    try:
        get_codec(codec_id)
    except UnknownCodec:
        return False
    return True


__all__ = [
    "Codec",
    "CodecError",
    "DEFAULT_IMAGE_CODECS",
    "DEFAULT_TENSOR_CODECS",
    "Float16Codec",
    "Float32Codec",
    "PillowImageCodec",
    "UnknownCodec",
    "get_codec",
    "is_known_codec",
]
