"""Lossless byte stages (zstd, lz4) and the combination `inner+stage`, e.g. `q8+zstd` or `fp16+lz4`.

Decompression is bounded before it allocates: a stage never produces more than the inner codec's largest
payload for the declared tensor, so a small hostile payload cannot expand into gigabytes.
"""
from __future__ import annotations

from abc import ABC, abstractmethod

import numpy as np

from splitrt.codecs.base import Buffer, Codec, CodecError
from splitrt.protocol import TensorSpec


class LosslessStage(ABC):
    name: str

    @abstractmethod
    def compress(self, data: Buffer) -> bytes: ...

    @abstractmethod
    def decompress(self, data: Buffer, max_bytes: int) -> bytes:
        """The original bytes; raises CodecError if corrupt or longer than `max_bytes`."""


class ZstdStage(LosslessStage):
    name = "zstd"

    def __init__(self, level: int = 3) -> None:
        import zstandard

        self._zstd = zstandard
        self._compressor = zstandard.ZstdCompressor(level=level)

    def compress(self, data: Buffer) -> bytes:
        return self._compressor.compress(bytes(data) if not isinstance(data, bytes) else data)

    def decompress(self, data: Buffer, max_bytes: int) -> bytes:
        try:
            reader = self._zstd.ZstdDecompressor().stream_reader(bytes(data), read_across_frames=False)
            out = reader.read(max_bytes + 1)
        except self._zstd.ZstdError as exc:
            raise CodecError(f"zstd: corrupt payload ({exc})") from exc
        if len(out) > max_bytes:
            raise CodecError(f"zstd: payload expands beyond {max_bytes} bytes")
        return out


class Lz4Stage(LosslessStage):
    name = "lz4"

    def __init__(self) -> None:
        import lz4.frame

        self._frame = lz4.frame

    def compress(self, data: Buffer) -> bytes:
        return self._frame.compress(bytes(data), store_size=False)

    def decompress(self, data: Buffer, max_bytes: int) -> bytes:
        decompressor = self._frame.LZ4FrameDecompressor()
        try:
            out = decompressor.decompress(bytes(data), max_length=max_bytes + 1)
        except RuntimeError as exc:
            raise CodecError(f"lz4: corrupt payload ({exc})") from exc
        if len(out) > max_bytes:
            raise CodecError(f"lz4: payload expands beyond {max_bytes} bytes")
        if not decompressor.eof:
            raise CodecError("lz4: truncated payload")
        return out


STAGES = {"zstd": ZstdStage, "lz4": Lz4Stage}


class StagedCodec(Codec):
    """`inner` followed by a lossless byte stage; as lossless as `inner`, with the same error bound."""

    kind = "tensor"

    def __init__(self, inner: Codec, stage: LosslessStage) -> None:
        if inner.kind != "tensor":
            raise ValueError(f"a lossless stage follows a tensor codec, not {inner.codec_id}")
        self.inner = inner
        self.stage = stage
        self.codec_id = f"{inner.codec_id}+{stage.name}"
        self.lossless = inner.lossless
        self.implementation_version = inner.implementation_version

    def encode(self, array: np.ndarray) -> Buffer:
        return self.stage.compress(self.inner.encode(array))

    def decode(self, data: Buffer, spec: TensorSpec) -> np.ndarray:
        return self.inner.decode(self._inner_payload(data, spec), spec)

    def decode_for_tail(self, data: Buffer, spec: TensorSpec) -> np.ndarray:
        return self.inner.decode_for_tail(self._inner_payload(data, spec), spec)

    def _inner_payload(self, data: Buffer, spec: TensorSpec) -> Buffer:
        inner_bytes = self.inner.max_encoded_bytes(spec)
        if inner_bytes is None:
            raise CodecError(f"{self.codec_id}: {self.inner.codec_id} has no size bound for {spec}")
        return self.stage.decompress(data, inner_bytes)

    @property
    def version_hash(self) -> str:
        import hashlib

        text = f"{self.stage.name}:1:{self.inner.version_hash}".encode()
        return hashlib.sha256(text).hexdigest()[:16]

    def max_abs_error(self, array: np.ndarray) -> float:
        return self.inner.max_abs_error(array)
