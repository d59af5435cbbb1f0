"""What a codec costs at each split point on a device: bytes on the wire and encode time on the edge.

Tensor codecs are timed on an activation of the split's shape; the image codec on real photographs
cropped the way the bundle crops them. Encode times are measured under the device profile's CPU quota.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np

from splitrt.bundle import INPUT_POINT, Bundle
from splitrt.codecs import get_codec
from splitrt.devices.profiles import DeviceProfile, cpu_limit
from splitrt.devices.timing import time_calls_ms
from splitrt.imaging import crop_for_model, load_rgb


@dataclass(frozen=True)
class CodecCosts:
    codec_id: str
    offload_codec_id: str | None
    split_bytes: dict[str, int]
    offload_bytes: int | None  # median over the images
    encode_ms: dict[str, float]  # per split point, and `input` for the image codec


def _payload_bytes(payload: object) -> int:
    return memoryview(payload).nbytes  # type: ignore[arg-type]


def measure_codec_costs(
    bundle: Bundle,
    device: DeviceProfile,
    codec_id: str,
    offload_codec_id: str | None,
    images: Sequence[Path],
    repeats: int = 10,
    fallback: str = "error",
) -> CodecCosts:
    codec = get_codec(codec_id)
    if codec.kind != "tensor":
        raise ValueError(f"--codec {codec_id} is an image codec; give a tensor codec (fp32, fp16)")
    rng = np.random.default_rng(0)
    split_bytes: dict[str, int] = {}
    encode_ms: dict[str, float] = {}
    offload_bytes: int | None = None
    crops = [crop_for_model(load_rgb(path), bundle.manifest.preprocess) for path in images]
    with cpu_limit(device, fallback=fallback):
        for point in bundle.manifest.splits:
            if point.head_file is None:
                continue
            activation = rng.standard_normal((1, *point.activation.shape)).astype(point.activation.dtype)
            split_bytes[point.name] = _payload_bytes(codec.encode(activation))
            encode_ms[point.name] = time_calls_ms(
                lambda: codec.encode(activation), repeats, warmup=2, min_sample_ms=device.sample_ms
            ).p50_ms
        if offload_codec_id is not None:
            image_codec = get_codec(offload_codec_id)
            if image_codec.kind != "image":
                raise ValueError(f"--offload-codec {offload_codec_id} is not an image codec (jpeg-qN, webp-qN)")
            if not crops:
                raise ValueError("measuring the offload codec needs images: pass --images DIR or --offload-bytes N")
            sizes = [_payload_bytes(image_codec.encode(crop)) for crop in crops]
            offload_bytes = int(np.median(sizes))
            times = [
                time_calls_ms(lambda: image_codec.encode(crop), 3, warmup=1, min_sample_ms=device.sample_ms).p50_ms
                for crop in crops
            ]
            encode_ms[INPUT_POINT] = float(np.median(times))
    return CodecCosts(codec_id, offload_codec_id, split_bytes, offload_bytes, encode_ms)
