"""Image codecs for offload: the edge sends its uint8 crop, the cloud runs the whole model on it."""
from __future__ import annotations

import io
import re

import numpy as np
from PIL import Image

from splitrt.codecs.base import Buffer, Codec, CodecError
from splitrt.protocol import TensorSpec


def _image_shape(spec: TensorSpec) -> tuple[int, int]:
    """(height, width) of an image spec shaped (H, W, 3) or (1, H, W, 3)."""
    shape = spec.shape[1:] if len(spec.shape) == 4 and spec.shape[0] == 1 else spec.shape
    if spec.dtype != "uint8" or len(shape) != 3 or shape[2] != 3:
        raise CodecError(f"image codecs decode to uint8 (1,)H,W,3 tensors, the request declares {spec}")
    return shape[0], shape[1]


class PillowImageCodec(Codec):
    """JPEG or WebP through Pillow (libjpeg-turbo / libwebp) at a fixed quality."""

    kind = "image"
    lossless = False

    def __init__(self, fmt: str, quality: int) -> None:
        if not 1 <= quality <= 100:
            raise ValueError(f"image quality must be 1..100, got {quality}")
        self.format = fmt
        self.quality = quality
        self.codec_id = f"{fmt.lower()}-q{quality}"

    def encode(self, array: np.ndarray) -> Buffer:
        pixels = np.asarray(array)
        if pixels.ndim == 4 and pixels.shape[0] == 1:
            pixels = pixels[0]
        if pixels.dtype != np.uint8 or pixels.ndim != 3 or pixels.shape[2] != 3:
            raise ValueError(f"{self.codec_id} encodes HxWx3 uint8 images, got {pixels.shape} {pixels.dtype}")
        out = io.BytesIO()
        Image.fromarray(pixels).save(out, format=self.format, quality=self.quality)
        return out.getvalue()

    def decode(self, data: Buffer, spec: TensorSpec) -> np.ndarray:
        height, width = _image_shape(spec)
        try:
            with Image.open(io.BytesIO(bytes(data))) as image:
                # The header is read lazily: refuse a wrong size before any pixel is decoded.
                if image.format != self.format or image.size != (width, height):
                    raise CodecError(
                        f"{self.codec_id}: payload is a {image.format} of {image.size[0]}x{image.size[1]}, "
                        f"expected a {self.format} of {width}x{height}"
                    )
                pixels = np.asarray(image.convert("RGB"), dtype=np.uint8)
        except CodecError:
            raise
        except Exception as exc:  # Pillow raises many types on corrupt input
            raise CodecError(f"{self.codec_id}: cannot decode payload: {exc}") from exc
        return pixels.reshape(spec.shape)

    def max_abs_error(self, array: np.ndarray) -> float:
        return 255.0


_IMAGE_ID = re.compile(r"^(jpeg|webp)-q(\d{1,3})$")


def parse_image_codec(codec_id: str) -> PillowImageCodec | None:
    match = _IMAGE_ID.match(codec_id)
    if match is None:
        return None
    return PillowImageCodec("JPEG" if match.group(1) == "jpeg" else "WEBP", int(match.group(2)))
