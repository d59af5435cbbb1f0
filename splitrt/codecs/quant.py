"""Uniform quantisation of float tensors to 8, 6 or 4 bits, with one scale per channel.

The channel axis is axis 1 of an (N, C, H, ...) tensor (every channel of every sample gets its own range);
each sample of an (N, F) vector is one channel, and a tensor of rank < 2 is one. Ids: `q8`, `q6`, `q4` quantise each channel's [min, max]; `q8c`, `q6c`,
`q4c` first clip each channel to its 0.1st..99.9th percentile, so that a few outliers do not waste
the levels. Clipping is part of the stated error bound.

Payload: ``<2sBBI`` (magic ``SQ``, format version, bits, channel count), then per channel its low end and
step as float32, then the codes, packed `bits` to a value (little bit order within each byte group).
"""
from __future__ import annotations

import math
import re
import struct

import numpy as np

from splitrt.codecs.base import Buffer, Codec, CodecError
from splitrt.protocol import TensorSpec

_HEADER = struct.Struct("<2sBBI")
_MAGIC = b"SQ"
_FORMAT = 1
CLIP_PERCENT = 0.1  # q8c/q6c/q4c clip each channel to its 0.1..99.9 percentile range
QUANT_ID = re.compile(r"^q(8|6|4)(c?)$")


def _channels_view(array: np.ndarray) -> np.ndarray:
    """(channels, values): one range per (sample, channel) of an (N, C, H, ...) tensor, one per sample of an
    (N, F) vector, one for a tensor of rank < 2."""
    return array.reshape(_channel_count(array.shape), -1)


def _channel_count(shape: tuple[int, ...]) -> int:
    if len(shape) >= 3:
        return shape[0] * shape[1]
    if len(shape) == 2:
        return shape[0]
    return 1


def _pack(codes: np.ndarray, bits: int) -> bytes:
    if bits == 8:
        return codes.astype(np.uint8).tobytes()
    if bits == 4:
        padded = np.zeros(codes.size + (codes.size & 1), dtype=np.uint8)
        padded[: codes.size] = codes
        return (padded[0::2] | (padded[1::2] << 4)).tobytes()
    unpacked = np.unpackbits(codes.astype(np.uint8).reshape(-1, 1), axis=1, bitorder="little")[:, :bits]
    return np.packbits(unpacked.reshape(-1), bitorder="little").tobytes()


def _unpack(data: memoryview, count: int, bits: int) -> np.ndarray:
    raw = np.frombuffer(data, dtype=np.uint8)
    if bits == 8:
        return raw
    if bits == 4:
        out = np.empty(raw.size * 2, dtype=np.uint8)
        out[0::2], out[1::2] = raw & 0x0F, raw >> 4
        return out[:count]
    unpacked = np.unpackbits(raw, bitorder="little")[: count * bits].reshape(count, bits)
    return np.packbits(unpacked, axis=1, bitorder="little").reshape(-1)


def packed_bytes(count: int, bits: int) -> int:
    return math.ceil(count * bits / 8)


class UniformQuantCodec(Codec):
    """Per-channel uniform quantisation to `bits` bits, optionally clipping each channel to its 0.1..99.9 percentiles."""

    kind = "tensor"
    lossless = False

    def __init__(self, bits: int, clip: bool = False) -> None:
        if bits not in (4, 6, 8):
            raise ValueError(f"quantisation takes 4, 6 or 8 bits, got {bits}")
        self.bits = bits
        self.clip = clip
        self.codec_id = f"q{bits}{'c' if clip else ''}"

    def _ranges(self, channels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        low = channels.min(axis=1)
        high = channels.max(axis=1)
        if self.clip and channels.shape[1] > 1:
            low, high = np.percentile(channels, [CLIP_PERCENT, 100 - CLIP_PERCENT], axis=1)
        low32 = low.astype(np.float32)
        levels = (1 << self.bits) - 1
        step = ((high - low32.astype(np.float64)) / levels).astype(np.float32)
        # Round the step up, so that low + levels * step still reaches the channel's high end in float32.
        step = np.nextafter(step, np.float32(np.inf)).astype(np.float32)
        step[high <= low32] = 0.0
        return low32, step

    def encode(self, array: np.ndarray) -> Buffer:
        array = np.asarray(array, dtype=np.float32)
        if not np.all(np.isfinite(array)):
            raise ValueError(f"{self.codec_id}: tensor has NaN or inf values")
        channels = _channels_view(array).astype(np.float64)
        low, step = self._ranges(channels)
        safe = np.where(step > 0, step, 1.0).astype(np.float64)[:, None]
        codes = np.rint((channels - low.astype(np.float64)[:, None]) / safe)
        codes = np.clip(codes, 0, (1 << self.bits) - 1).astype(np.uint8)
        header = _HEADER.pack(_MAGIC, _FORMAT, self.bits, low.size)
        return header + low.astype("<f4").tobytes() + step.astype("<f4").tobytes() + _pack(codes.reshape(-1), self.bits)

    def decode(self, data: Buffer, spec: TensorSpec) -> np.ndarray:
        if spec.dtype != "float32":
            raise CodecError(f"{self.codec_id} decodes to float32 tensors, the request declares {spec.dtype}")
        shape = spec.shape
        channels = _channel_count(shape)
        count = math.prod(shape)
        expected = _HEADER.size + 8 * channels + packed_bytes(count, self.bits)
        view = memoryview(data).cast("B")
        if view.nbytes != expected:
            raise CodecError(f"{self.codec_id}: payload has {view.nbytes} bytes, the declared tensor needs {expected}")
        magic, version, bits, declared = _HEADER.unpack_from(view)
        if magic != _MAGIC or version != _FORMAT or bits != self.bits or declared != channels:
            raise CodecError(f"{self.codec_id}: header (magic {magic!r}, version {version}, {bits} bits, "
                             f"{declared} channels) does not match the declared tensor")
        offset = _HEADER.size
        low = np.frombuffer(view[offset : offset + 4 * channels], dtype="<f4").astype(np.float64)
        step = np.frombuffer(view[offset + 4 * channels : offset + 8 * channels], dtype="<f4").astype(np.float64)
        if not (np.all(np.isfinite(low)) and np.all(np.isfinite(step)) and np.all(step >= 0)):
            raise CodecError(f"{self.codec_id}: payload has non-finite or negative channel scales")
        codes = _unpack(view[offset + 8 * channels :], count, self.bits).astype(np.float64)
        values = low[:, None] + codes.reshape(channels, -1) * step[:, None]
        return values.astype(np.float32).reshape(shape)

    def max_encoded_bytes(self, spec: TensorSpec) -> int:
        channels = _channel_count(spec.shape)
        return _HEADER.size + 8 * channels + packed_bytes(math.prod(spec.shape), self.bits)

    def max_abs_error(self, array: np.ndarray) -> float:
        array = np.asarray(array, dtype=np.float32)
        channels = _channels_view(array).astype(np.float64)
        if channels.size == 0:
            return 0.0
        low, step = self._ranges(channels)
        low64 = low.astype(np.float64)[:, None]
        high64 = low64 + ((1 << self.bits) - 1) * step.astype(np.float64)[:, None]
        clip_error = float(np.max(np.maximum(low64 - channels, channels - high64), initial=0.0))
        rounding = float(step.max(initial=0.0)) / 2
        float32_error = float(np.abs(channels).max(initial=0.0)) * 2.0**-23
        return max(clip_error, 0.0) + rounding * (1 + 1e-6) + float32_error


def parse_quant_codec(codec_id: str) -> UniformQuantCodec | None:
    match = QUANT_ID.match(codec_id)
    if match is None:
        return None
    return UniformQuantCodec(int(match.group(1)), clip=bool(match.group(2)))
