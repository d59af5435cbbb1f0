"""The images early exits are trained, calibrated and evaluated on, kept apart from each other.

Two sources:
- a folder with `labels.csv` (ImageNet-style, `../shared/data/imagenet-sample`): even class indices train
  (4 of 5) and calibrate (1 of 5); odd class indices evaluate, so an exit is judged on classes it never saw;
- a CIFAR-10 archive (`../shared/data/cifar10-test.tar`, `test/<class>/<n>.jpg`): within each class, in name
  order, 6 of every 10 images train, 1 calibrates and 3 evaluate.

Training uses no labels (the exits learn from the full model's own outputs); calibration and evaluation do.
"""
from __future__ import annotations

import io
import math
import random
import tarfile
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Sequence

import numpy as np
from PIL import Image

from splitrt.imaging import Preprocess, crop_for_model, load_rgb

# A CIFAR image is ~1 KB and 32x32; anything far larger is not one (and is not decoded: a small file can
# decode to a huge image).
MAX_ARCHIVE_IMAGE_BYTES = 1 << 20
MAX_ARCHIVE_IMAGE_SIDE = 512
MAX_ARCHIVE_MEMBERS = 200_000
MIN_IMAGES_PER_CLASS = 10  # one of each slot of the 6/1/3 split


@dataclass(frozen=True)
class ExitImages:
    """Model-sized uint8 crops (HWC): augmented training crops, labelled calibration and evaluation crops."""

    train: list[np.ndarray]
    calibration: list[np.ndarray]
    calibration_labels: np.ndarray
    evaluation: list[np.ndarray]
    evaluation_labels: np.ndarray
    split: str  # which images went where, for the report


def load_exit_images(source: str | Path, prep: Preprocess, copies: int, seed: int = 0) -> ExitImages:
    """Read `source` (a labels.csv folder or a CIFAR-10 .tar) and split it; `copies` crops per training image."""
    source = Path(source)
    if source.is_file() and source.name.endswith(".tar"):
        return _from_cifar_archive(source, prep, copies, seed)
    if (source / "labels.csv").is_file():
        return _from_labelled_folder(source, prep, copies, seed)
    raise FileNotFoundError(
        f"{source}: expected a folder with a labels.csv (such as ../shared/data/imagenet-sample) "
        "or a CIFAR-10 archive of test/<class>/<n>.jpg (such as ../shared/data/cifar10-test.tar)"
    )


def augmented(pixels: np.ndarray, prep: Preprocess, copies: int, rng: random.Random) -> list[np.ndarray]:
    """The model's own crop of `pixels`, plus `copies - 1` random crops with flips.

    An image larger than the crop gets random resized squares (35-100% of the area of the square on its short
    side); an image already the crop's size (CIFAR) gets the usual pad-by-an-eighth-and-crop.
    """
    out = [crop_for_model(pixels, prep)]
    image = Image.fromarray(pixels)
    width, height = image.size
    padding = prep.crop // 8
    for _ in range(copies - 1):
        if min(width, height) > prep.crop:
            side = int(min(width, height) * math.sqrt(rng.uniform(0.35, 1.0)))
            left, top = rng.randint(0, width - side), rng.randint(0, height - side)
            patch = np.asarray(image.crop((left, top, left + side, top + side)).resize((prep.crop, prep.crop), Image.BILINEAR))
        else:
            padded = np.pad(crop_for_model(pixels, prep), ((padding, padding), (padding, padding), (0, 0)), mode="reflect")
            top, left = rng.randint(0, 2 * padding), rng.randint(0, 2 * padding)
            patch = padded[top : top + prep.crop, left : left + prep.crop]
        if rng.random() < 0.5:
            patch = patch[:, ::-1]
        out.append(np.ascontiguousarray(patch, dtype=np.uint8))
    return out


def _split(
    train: Sequence[np.ndarray], calibration: Sequence[tuple[np.ndarray, int]], evaluation: Sequence[tuple[np.ndarray, int]],
    prep: Preprocess, copies: int, seed: int, split: str,
) -> ExitImages:
    rng = random.Random(seed)
    return ExitImages(
        train=[crop for pixels in train for crop in augmented(pixels, prep, copies, rng)],
        calibration=[crop_for_model(p, prep) for p, _ in calibration],
        calibration_labels=np.array([c for _, c in calibration], dtype=np.int64),
        evaluation=[crop_for_model(p, prep) for p, _ in evaluation],
        evaluation_labels=np.array([c for _, c in evaluation], dtype=np.int64),
        split=split,
    )


def _from_labelled_folder(folder: Path, prep: Preprocess, copies: int, seed: int) -> ExitImages:
    from splitrt.bench.common import read_labelled_images, select_parity

    items = read_labelled_images(folder)
    even = [(load_rgb(i.path), i.class_index) for i in select_parity(items, "even")]
    odd = [(load_rgb(i.path), i.class_index) for i in select_parity(items, "odd")]
    train = [pixels for index, (pixels, _) in enumerate(even) if index % 5 != 0]
    split = "train: even class_index (4 of 5, unlabelled), calibration: even (1 of 5), evaluation: odd class_index"
    return _split(train, even[::5], odd, prep, copies, seed, split)


def read_cifar_archive(path: Path) -> dict[str, list[np.ndarray]]:
    """Every `<class>/<name>.jpg` of the archive, by class, in name order; nothing is written to disk. A member
    that is not a CIFAR image (unknown class, too large, not a JPEG) is refused with its name, and so is an
    archive with fewer than MIN_IMAGES_PER_CLASS images of a class (one cut short, say)."""
    from splitrt.partition.cifar import CIFAR10_CLASSES

    by_class: dict[str, list[tuple[str, np.ndarray]]] = {name: [] for name in CIFAR10_CLASSES}
    try:
        archive = tarfile.open(path)
    except tarfile.TarError as exc:
        raise ValueError(f"{path}: not a readable tar archive ({exc})") from exc
    with archive:
        for count, member in enumerate(archive):
            if count >= MAX_ARCHIVE_MEMBERS:
                raise ValueError(f"{path}: more than {MAX_ARCHIVE_MEMBERS:,} members, not a CIFAR-10 test set")
            if not (member.isfile() and member.name.endswith(".jpg")):
                continue
            name = PurePosixPath(member.name)
            if name.parent.name not in by_class:
                raise ValueError(f"{path}: {member.name} is in no CIFAR-10 class folder ({', '.join(CIFAR10_CLASSES)})")
            if member.size > MAX_ARCHIVE_IMAGE_BYTES:
                raise ValueError(f"{path}: {member.name} is {member.size:,} bytes, too large for a CIFAR image")
            handle = archive.extractfile(member)
            assert handle is not None  # a regular file
            by_class[name.parent.name].append((name.name, _decode_small_image(handle.read(), f"{path}: {member.name}")))
    short = [f"{label} ({len(images)})" for label, images in by_class.items() if len(images) < MIN_IMAGES_PER_CLASS]
    if len(short) == len(by_class):
        raise ValueError(f"{path}: no CIFAR-10 test set here: fewer than {MIN_IMAGES_PER_CLASS} <class>/<name>.jpg "
                         "images of every class")
    if short:
        raise ValueError(f"{path}: fewer than {MIN_IMAGES_PER_CLASS} images of {', '.join(short)}: "
                         "an archive cut short, or not the whole test set")
    return {label: [p for _, p in sorted(images, key=lambda item: item[0])] for label, images in by_class.items()}


def _decode_small_image(data: bytes, where: str) -> np.ndarray:
    """RGB pixels of an encoded image, refused before decoding when either side exceeds MAX_ARCHIVE_IMAGE_SIDE."""
    try:
        image = Image.open(io.BytesIO(data))
        if max(image.size) > MAX_ARCHIVE_IMAGE_SIDE:
            raise ValueError(f"{where} is {image.size[0]}x{image.size[1]}, too large for a CIFAR image")
        return np.asarray(image.convert("RGB"), dtype=np.uint8)
    except (OSError, Image.DecompressionBombError) as exc:  # PIL's UnidentifiedImageError is an OSError
        raise ValueError(f"{where} is not a readable image ({exc})") from exc


def _from_cifar_archive(path: Path, prep: Preprocess, copies: int, seed: int) -> ExitImages:
    from splitrt.partition.cifar import CIFAR10_CLASSES

    train, calibration, evaluation = [], [], []
    for label, images in read_cifar_archive(path).items():
        class_index = CIFAR10_CLASSES.index(label)
        for position, pixels in enumerate(images):
            slot = position % 10
            if slot < 6:
                train.append(pixels)
            elif slot == 6:
                calibration.append((pixels, class_index))
            else:
                evaluation.append((pixels, class_index))
    split = "per class in name order: 6 of 10 train (unlabelled), 1 of 10 calibrates, 3 of 10 evaluate"
    return _split(train, calibration, evaluation, prep, copies, seed, split)
