"""The codec contract: encode an array to bytes, decode bytes back to an array of a declared spec."""
from __future__ import annotations

import hashlib
from abc import ABC, abstractmethod
from typing import Literal

import numpy as np

from splitrt.protocol import TensorSpec

Buffer = bytes | bytearray | memoryview


class CodecError(ValueError):
    """A payload this codec cannot decode into the declared tensor (the frame ends as `bad_payload`)."""


class Codec(ABC):
    """A tensor or image codec.

    `decode(encode(x), spec)` returns an array of exactly `spec` (dtype and shape). A lossless codec returns
    `x` bit for bit; a lossy one states its error bound through `max_abs_error`.
    """

    codec_id: str
    kind: Literal["tensor", "image"]
    lossless: bool
    implementation_version: int = 1

    @property
    def version_hash(self) -> str:
        """Identifies the exact bitstream format; the cloud refuses a codec whose hash it does not know."""
        text = f"{self.codec_id}:{self.implementation_version}".encode()
        return hashlib.sha256(text).hexdigest()[:16]

    @abstractmethod
    def encode(self, array: np.ndarray) -> Buffer:
        """Encode an array; raises ValueError if the array is not of a kind this codec takes."""

    @abstractmethod
    def decode(self, data: Buffer, spec: TensorSpec) -> np.ndarray:
        """Decode into an array of `spec`; raises CodecError on a payload that does not fit it."""

    def decode_for_tail(self, data: Buffer, spec: TensorSpec) -> np.ndarray:
        """Decode for the cloud's tail runners, which also take float16 where `spec` says float32 (they cast the
        whole batch in ONNX Runtime, much faster than NumPy): a codec that carries halves returns them as they
        are. Otherwise `decode`."""
        return self.decode(data, spec)

    def max_encoded_bytes(self, spec: TensorSpec) -> int | None:
        """The largest payload this codec writes for `spec` (None: unbounded); bounds lossless stages."""
        return None

    def max_abs_error(self, array: np.ndarray) -> float:
        """The largest absolute error a round trip of `array` may have."""
        return 0.0


def check_length(data: Buffer, expected_bytes: int, codec_id: str) -> None:
    if len(data) != expected_bytes:
        raise CodecError(f"{codec_id}: payload has {len(data)} bytes, the declared tensor needs {expected_bytes}")
