"""What an image codec sends for each evaluation image: its size depends on the image, so a simulator that
replays frame i with image i must send image i's bytes, not a median."""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np

from splitrt.actions import Offload
from splitrt.bench.common import read_labelled_images, select_parity
from splitrt.bundle import INPUT_POINT, Bundle
from splitrt.codecs import get_codec
from splitrt.imaging import crop_for_model, load_rgb
from splitrt.policies.policies import ActionOption
from splitrt.protocol import Infer, TensorSpec, encode


def request_bytes(bundle: Bundle, split: str, codec_id: str, spec: TensorSpec, payload: bytes) -> int:
    """Bytes of the whole Infer request (header, metadata, payload) as the edge sends it."""
    return sum(memoryview(f).nbytes for f in encode(Infer(1, bundle.content_hash, split, codec_id, spec, 1.0), [payload]))


def offload_sizes(bundle: Bundle, images: str | Path, options: Sequence[ActionOption],
                  limit: int | None = None) -> dict[str, np.ndarray]:
    """For each offload option, the request bytes of every odd-class image, in the simulator's image order."""
    offloads = [o for o in options if isinstance(o.action, Offload) and o.hedge is None]  # a hedged one: the same
    if not offloads:
        return {}
    items = select_parity(read_labelled_images(images), "odd")[:limit]
    crops = [crop_for_model(load_rgb(i.path), bundle.manifest.preprocess)[None] for i in items]
    spec = TensorSpec("uint8", (1, *bundle.manifest.input.shape))
    sizes: dict[str, np.ndarray] = {}
    for option in offloads:
        codec = get_codec(option.action.codec)  # type: ignore[union-attr]
        sizes[option.key] = np.array([request_bytes(bundle, INPUT_POINT, codec.codec_id, spec, codec.encode(c))
                                      for c in crops])
    return sizes
