"""Tensor codecs: raw float32 and float16."""
from __future__ import annotations

import math

import numpy as np

from splitrt.codecs.base import Buffer, Codec, CodecError, check_length
from splitrt.protocol import TensorSpec

FP16_MAX = float(np.finfo(np.float16).max)


def _element_count(spec: TensorSpec) -> int:
    return math.prod(spec.shape)


class Float32Codec(Codec):
    """Raw little-endian float32: lossless, the reference the others are measured against."""

    codec_id = "fp32"
    kind = "tensor"
    lossless = True

    def encode(self, array: np.ndarray) -> Buffer:
        return memoryview(np.ascontiguousarray(array, dtype="<f4")).cast("B")

    def decode(self, data: Buffer, spec: TensorSpec) -> np.ndarray:
        if spec.dtype != "float32":
            raise CodecError(f"fp32 decodes to float32 tensors, the request declares {spec.dtype}")
        check_length(data, _element_count(spec) * 4, self.codec_id)
        return np.frombuffer(data, dtype="<f4").reshape(spec.shape)

    def max_encoded_bytes(self, spec: TensorSpec) -> int:
        return _element_count(spec) * 4


class Float16Codec(Codec):
    """Half precision: half the bytes; values beyond the fp16 range are clipped to it, not sent as inf."""

    codec_id = "fp16"
    kind = "tensor"
    lossless = False

    def encode(self, array: np.ndarray) -> Buffer:
        array = np.asarray(array, dtype=np.float32)
        half = np.clip(array, -FP16_MAX, FP16_MAX).astype("<f2", order="C")
        return memoryview(half).cast("B")

    def decode(self, data: Buffer, spec: TensorSpec) -> np.ndarray:
        return self.decode_for_tail(data, spec).astype(np.float32)

    def decode_for_tail(self, data: Buffer, spec: TensorSpec) -> np.ndarray:
        """The halves as they came, shaped by `spec` (no copy); the tail runner casts them."""
        if spec.dtype != "float32":
            raise CodecError(f"fp16 decodes to float32 tensors, the request declares {spec.dtype}")
        check_length(data, _element_count(spec) * 2, self.codec_id)
        return np.frombuffer(data, dtype="<f2").reshape(spec.shape)

    def max_encoded_bytes(self, spec: TensorSpec) -> int:
        return _element_count(spec) * 2

    def max_abs_error(self, array: np.ndarray) -> float:
        # Round-to-nearest: relative error 2**-11 for normal values, 2**-25 absolute in the subnormal range.
        finite = np.abs(np.asarray(array, dtype=np.float64))
        peak = float(finite.max(initial=0.0))
        clip_error = max(0.0, peak - FP16_MAX)
        return max(min(peak, FP16_MAX) * 2.0**-11, 2.0**-24) + clip_error
