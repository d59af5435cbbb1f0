"""Entropy coding of a bottleneck's integer latent with fixed integer frequency tables (constriction ANS).

The tables are the factorized prior fixed at export: one table of integer symbol frequencies per latent
channel, over a contiguous range of integers. They are stored as JSON in the bundle and identified by a
hash; the payload carries the first 8 bytes of that hash, and both ends build their ANS models from the same
integers (divided by a power of two, so the floats are exact), so a payload encoded on one machine decodes
to the same latent, byte for byte, on any other.

Payload: ``!3sB8s`` (magic ``SBN``, format version, table hash prefix) + the ANS words, little-endian
uint32. Symbols outside a channel's table are clipped into it (part of the stated error bound).
"""
from __future__ import annotations

import hashlib
import json
import math
import struct
from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np

from splitrt.codecs.base import Buffer, Codec, CodecError
from splitrt.protocol import TensorSpec

MAGIC = b"SBN"
FORMAT_VERSION = 1
TABLES_FORMAT = "splitrt-entropy-tables-1"
ENTROPY_CODEC_ID = "ans"
MAX_SYMBOLS = 512
FREQUENCY_BITS = 24  # frequencies are stored as integers that sum to at most 2**24 per channel
_HEADER = struct.Struct("<3sB8s")


class TableError(ValueError):
    """Entropy tables that are malformed (the bundle cannot be used)."""


@dataclass(frozen=True)
class EntropyTables:
    """Per-channel integer frequencies of the symbols `offsets[c] .. offsets[c] + len(frequencies[c]) - 1`."""

    latent_shape: tuple[int, ...]  # per sample (C, H, W)
    offsets: tuple[int, ...]
    frequencies: tuple[tuple[int, ...], ...]

    def __post_init__(self) -> None:
        if len(self.latent_shape) < 1 or any(d < 1 for d in self.latent_shape):
            raise TableError(f"latent shape {self.latent_shape} must be positive")
        channels = self.latent_shape[0]
        if len(self.offsets) != channels or len(self.frequencies) != channels:
            raise TableError(f"{channels} channels need {channels} offsets and tables, got "
                             f"{len(self.offsets)} and {len(self.frequencies)}")
        for c, table in enumerate(self.frequencies):
            if not 2 <= len(table) <= MAX_SYMBOLS:
                raise TableError(f"channel {c}: {len(table)} symbols, must be 2..{MAX_SYMBOLS}")
            if any((not isinstance(f, int)) or f < 1 for f in table) or sum(table) > 2**FREQUENCY_BITS:
                raise TableError(f"channel {c}: frequencies must be positive ints summing to <= 2**{FREQUENCY_BITS}")

    def to_json(self) -> dict[str, Any]:
        return {
            "format": TABLES_FORMAT,
            "latent_shape": list(self.latent_shape),
            "offsets": list(self.offsets),
            "frequencies": [list(t) for t in self.frequencies],
        }

    @classmethod
    def from_json(cls, data: Any) -> "EntropyTables":
        if not isinstance(data, dict) or data.get("format") != TABLES_FORMAT:
            raise TableError(f"entropy tables must be a JSON object with format {TABLES_FORMAT!r}")
        try:
            return cls(
                latent_shape=tuple(int(d) for d in data["latent_shape"]),
                offsets=tuple(int(o) for o in data["offsets"]),
                frequencies=tuple(tuple(int(f) for f in t) for t in data["frequencies"]),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise TableError(f"malformed entropy tables ({exc})") from exc

    def canonical_bytes(self) -> bytes:
        return json.dumps(self.to_json(), sort_keys=True, separators=(",", ":")).encode()

    @property
    def table_hash(self) -> str:
        """16 hex digits of the sha256 of the canonical JSON: what the protocol and the payload carry."""
        return hashlib.sha256(self.canonical_bytes()).hexdigest()[:16]

    def expected_bits(self, latent: np.ndarray) -> float:
        """Information content of an integer latent (C, H, W) under the tables, in bits."""
        symbols = self.symbols(latent[None])[0]
        total = 0.0
        for c, table in enumerate(self.frequencies):
            counts = np.asarray(table, dtype=np.float64)
            total -= float(np.log2(counts[symbols[c].ravel()] / counts.sum()).sum())
        return total

    def symbols(self, latent: np.ndarray) -> np.ndarray:
        """Rounded and clipped symbol indices (N, C, ...) as int32."""
        low = np.asarray(self.offsets, dtype=np.int64).reshape(1, -1, *([1] * (latent.ndim - 2)))
        high = low + np.asarray([len(t) - 1 for t in self.frequencies], dtype=np.int64).reshape(low.shape)
        rounded = np.rint(np.asarray(latent, dtype=np.float64))
        return (np.clip(rounded, low, high) - low).astype(np.int32)


def fit_tables(latents: np.ndarray, max_symbols: int = 255, total: int = 2**16) -> EntropyTables:
    """Tables from integer latents (N, C, H, W): per channel, the observed range (at most `max_symbols` wide,
    centred on the median), counts + 1 so that every symbol in range stays codable, scaled to about `total`."""
    latents = np.rint(np.asarray(latents, dtype=np.float64)).astype(np.int64)
    channels = latents.shape[1]
    offsets: list[int] = []
    tables: list[tuple[int, ...]] = []
    for c in range(channels):
        values = latents[:, c].ravel()
        low, high = int(values.min()), max(int(values.max()), int(values.min()) + 1)  # >= 2 symbols
        if high - low + 1 > max_symbols:
            centre = int(np.median(values))
            low = max(low, centre - max_symbols // 2)
            high = low + max_symbols - 1
        counts = np.bincount(np.clip(values, low, high) - low, minlength=high - low + 1).astype(np.float64)
        scaled = np.maximum(1, np.floor(counts / counts.sum() * (total - len(counts)))).astype(np.int64) + 0
        offsets.append(low)
        tables.append(tuple(int(f) for f in scaled))
    return EntropyTables(tuple(int(d) for d in latents.shape[1:]), tuple(offsets), tuple(tables))


class EntropyCodec(Codec):
    """Codes a float latent (N, C, H, W) as rounded integers with the tables' ANS models."""

    codec_id = ENTROPY_CODEC_ID
    kind = "tensor"
    lossless = False  # rounding and clipping; lossless on integer latents inside the tables' ranges

    def __init__(self, tables: EntropyTables) -> None:
        import constriction  # the edge and the cloud need it; imported here so other codecs do not

        self.tables = tables
        self._hash = tables.table_hash
        self._hash_bytes = bytes.fromhex(self._hash)[:8]
        self._constriction = constriction
        self._models = []
        for table in tables.frequencies:
            counts = np.asarray(table, dtype=np.float64)
            # Exact dyadic floats: identical on every machine, so the quantised ANS model is identical too.
            probabilities = counts / float(2 ** math.ceil(math.log2(counts.sum())))
            self._models.append(constriction.stream.model.Categorical(probabilities, perfect=False))

    @property
    def version_hash(self) -> str:
        return self._hash

    def _check_shape(self, shape: Sequence[int]) -> None:
        if tuple(shape[1:]) != self.tables.latent_shape or len(shape) != len(self.tables.latent_shape) + 1:
            raise CodecError(f"{self.codec_id}: tables are for latents (N,{','.join(map(str, self.tables.latent_shape))}), "
                             f"got {tuple(shape)}")

    def encode(self, array: np.ndarray) -> Buffer:
        array = np.asarray(array)
        if array.ndim != len(self.tables.latent_shape) + 1 or tuple(array.shape[1:]) != self.tables.latent_shape:
            raise ValueError(f"{self.codec_id}: expected a latent (N,{','.join(map(str, self.tables.latent_shape))}), "
                             f"got {array.shape}")
        if not np.all(np.isfinite(array)):
            raise ValueError(f"{self.codec_id}: latent has NaN or inf values")
        symbols = self.tables.symbols(array)
        coder = self._constriction.stream.stack.AnsCoder()
        channels = symbols.shape[1]
        for n in reversed(range(symbols.shape[0])):
            for c in reversed(range(channels)):
                coder.encode_reverse(np.ascontiguousarray(symbols[n, c].ravel()), self._models[c])
        words = coder.get_compressed().astype("<u4")
        return _HEADER.pack(MAGIC, FORMAT_VERSION, self._hash_bytes) + words.tobytes()

    def decode(self, data: Buffer, spec: TensorSpec) -> np.ndarray:
        if spec.dtype != "float32":
            raise CodecError(f"{self.codec_id} decodes to float32 latents, the request declares {spec.dtype}")
        self._check_shape(spec.shape)
        view = memoryview(data).cast("B")
        if view.nbytes < _HEADER.size or (view.nbytes - _HEADER.size) % 4:
            raise CodecError(f"{self.codec_id}: payload of {view.nbytes} bytes is not a header + 32-bit words")
        magic, version, hash_prefix = _HEADER.unpack_from(view)
        if magic != MAGIC or version != FORMAT_VERSION:
            raise CodecError(f"{self.codec_id}: not a bottleneck payload (magic {magic!r}, version {version})")
        if hash_prefix != self._hash_bytes:
            raise CodecError(f"{self.codec_id}: payload was coded with tables {hash_prefix.hex()}, "
                             f"this end holds {self._hash}")
        words = np.frombuffer(view[_HEADER.size:], dtype="<u4").astype(np.uint32)
        batch, channels = spec.shape[0], spec.shape[1]
        per_channel = math.prod(spec.shape[2:])
        out = np.empty((batch, channels, per_channel), dtype=np.int64)
        try:
            coder = self._constriction.stream.stack.AnsCoder(words)
            for n in range(batch):
                for c in range(channels):
                    out[n, c] = coder.decode(self._models[c], per_channel)
            leftover = not coder.is_empty()
        except Exception as exc:  # constriction raises on words that are not a valid ANS state
            raise CodecError(f"{self.codec_id}: corrupt payload ({exc})") from exc
        if leftover:
            raise CodecError(f"{self.codec_id}: corrupt payload (data left after the last symbol)")
        offsets = np.asarray(self.tables.offsets, dtype=np.int64).reshape(1, -1, 1)
        return (out + offsets).astype(np.float32).reshape(spec.shape)

    def max_abs_error(self, array: np.ndarray) -> float:
        array = np.asarray(array, dtype=np.float64)
        restored = self.tables.symbols(array) + np.asarray(self.tables.offsets).reshape(1, -1, *([1] * (array.ndim - 2)))
        return float(np.abs(restored - array).max(initial=0.0))
