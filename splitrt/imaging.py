"""Image loading and the geometric part of preprocessing (resize + center crop).

Normalisation ((x - mean) / std, HWC -> CHW) lives inside every exported ONNX head, so the edge only has to
produce a uint8 crop, and an offloaded JPEG of that crop is all the cloud needs.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff")


@dataclass(frozen=True)
class Preprocess:
    """Resize the short side to `resize_short_side`, then center-crop a `crop` x `crop` square."""

    resize_short_side: int = 256
    crop: int = 224
    mean: tuple[float, float, float] = (0.5, 0.5, 0.5)
    std: tuple[float, float, float] = (0.5, 0.5, 0.5)

    def to_json(self) -> dict[str, object]:
        return {
            "resize_short_side": self.resize_short_side,
            "crop": self.crop,
            "mean": list(self.mean),
            "std": list(self.std),
        }

    @classmethod
    def from_json(cls, data: dict[str, object]) -> "Preprocess":
        return cls(
            resize_short_side=int(data["resize_short_side"]),  # type: ignore[arg-type]
            crop=int(data["crop"]),  # type: ignore[arg-type]
            mean=tuple(float(v) for v in data["mean"]),  # type: ignore[arg-type,union-attr]
            std=tuple(float(v) for v in data["std"]),  # type: ignore[arg-type,union-attr]
        )


def load_rgb(path: str | Path) -> np.ndarray:
    """Read an image file as an HWC uint8 RGB array."""
    with Image.open(path) as image:
        return np.asarray(image.convert("RGB"), dtype=np.uint8)


def crop_for_model(pixels: np.ndarray, prep: Preprocess) -> np.ndarray:
    """Resize (bilinear) so the short side is `prep.resize_short_side`, then center-crop: HWC uint8 in and out."""
    if pixels.ndim == 2:
        pixels = np.stack([pixels] * 3, axis=-1)
    if pixels.ndim != 3 or pixels.shape[2] not in (3, 4) or pixels.dtype != np.uint8:
        raise ValueError(f"expected an HxWx3 uint8 RGB image, got shape {pixels.shape} dtype {pixels.dtype}")
    image = Image.fromarray(np.ascontiguousarray(pixels[:, :, :3]))
    width, height = image.size
    scale = prep.resize_short_side / min(width, height)
    image = image.resize((max(prep.crop, round(width * scale)), max(prep.crop, round(height * scale))), Image.BILINEAR)
    width, height = image.size
    left, top = (width - prep.crop) // 2, (height - prep.crop) // 2
    return np.array(image.crop((left, top, left + prep.crop, top + prep.crop)), dtype=np.uint8)


def list_images(folder: str | Path) -> list[Path]:
    """Image files in a folder, sorted by name."""
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"image folder {folder} does not exist")
    return sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
