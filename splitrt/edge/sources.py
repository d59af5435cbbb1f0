"""Frame sources: an image file, a folder of images, or the sample images that scikit-image/scikit-learn ship."""
from __future__ import annotations

from pathlib import Path
from typing import Iterator

import numpy as np
from PIL import Image

from splitrt.imaging import list_images, load_rgb

SAMPLE_IMAGES = ("astronaut", "chelsea", "coffee", "rocket", "hubble_deep_field", "colorwheel")


def image_source(path: str | Path) -> Iterator[tuple[str, np.ndarray]]:
    """Yield (name, RGB pixels) for one image file or every image in a folder, in name order."""
    path = Path(path)
    if path.is_file():
        yield path.name, load_rgb(path)
        return
    files = list_images(path)
    if not files:
        raise FileNotFoundError(f"no images (.jpg, .png, ...) in {path}")
    for file in files:
        yield file.name, load_rgb(file)


def write_sample_images(folder: str | Path) -> list[Path]:
    """Write the real photographs that scikit-image and scikit-learn ship into `folder` as PNG/JPEG files."""
    import skimage.data
    from sklearn.datasets import load_sample_images

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    written: list[Path] = []
    for name in SAMPLE_IMAGES:
        target = folder / f"{name}.png"
        if not target.exists():
            Image.fromarray(np.asarray(getattr(skimage.data, name)())[:, :, :3]).save(target)
        written.append(target)
    samples = load_sample_images()
    for file_name, pixels in zip(samples.filenames, samples.images):
        target = folder / Path(file_name).name
        if not target.exists():
            Image.fromarray(pixels).save(target, quality=95)
        written.append(target)
    return written
