"""Training early exits on any model: the image splits, one-pass activations of a traced model, the
confidence-threshold table, and `train_exits` end to end on the tiny model and a small CIFAR-style archive."""
from __future__ import annotations

import io
import shutil
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from splitrt.actions import Local
from splitrt.bundle import HEAD_INPUT_NAME, Bundle
from splitrt.devices.ort import create_session
from splitrt.edge.runtime import EdgeRuntime
from splitrt.imaging import Preprocess
from splitrt.partition.exit_data import augmented, load_exit_images, read_cifar_archive
from splitrt.partition.exits import (
    activation_recorder,
    activation_shapes,
    final_classifier,
    teacher_pass,
    threshold_rows,
    train_exit,
    train_exits,
)
from splitrt.partition.models import load_model
from splitrt.partition.traced import TracedModel
from tests.conftest import SHARED_DIR

CIFAR_PREP = Preprocess(resize_short_side=32, crop=32, mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5))


def _jpeg(pixels: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="JPEG", quality=95)
    return buffer.getvalue()


def write_archive(path: Path, files: dict[str, bytes]) -> Path:
    with tarfile.open(path, "w") as archive:
        for name, data in files.items():
            member = tarfile.TarInfo(name)
            member.size = len(data)
            archive.addfile(member, io.BytesIO(data))
    return path


CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")


def cifar_files(per_class: int, seed: int = 0) -> dict[str, bytes]:
    """`per_class` random 32x32 JPEGs in each CIFAR-10 class folder, in the real archive's layout."""
    rng = np.random.default_rng(seed)
    files = {"test/README": b"not an image"}
    for label in CLASSES:
        for index in range(per_class):
            files[f"test/{label}/{index:04d}.jpg"] = _jpeg(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8))
    return files


@pytest.fixture(scope="module")
def cifar_archive(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_archive(tmp_path_factory.mktemp("cifar") / "cifar10-test.tar", cifar_files(10))


def test_a_cifar_archive_splits_6_1_3_per_class_with_labels_and_augmented_training_crops(cifar_archive: Path) -> None:
    images = load_exit_images(cifar_archive, CIFAR_PREP, copies=3)
    assert len(images.train) == 10 * 6 * 3  # 6 of 10 per class, 3 crops each
    assert images.calibration_labels.tolist() == list(range(10))  # one per class, in CIFAR-10's order
    assert len(images.evaluation) == 30 and (images.evaluation_labels == 3).sum() == 3
    assert all(crop.shape == (32, 32, 3) and crop.dtype == np.uint8 for crop in images.train)
    first_image_crops = images.train[:3]  # its own crop, then two padded random crops
    assert len({crop.tobytes() for crop in first_image_crops}) == 3
    assert "3 of 10 evaluate" in images.split


def _with(files: dict[str, bytes], **changes: bytes) -> dict[str, bytes]:
    return {**files, **{name.replace("__", "/"): data for name, data in changes.items()}}


@pytest.mark.parametrize("changes, message", [
    ({"test__zebra__0001.jpg": b"x"}, "test/zebra/0001.jpg is in no CIFAR-10 class folder"),
    ({"test__cat__0003.jpg": b"not a jpeg"}, "test/cat/0003.jpg is not a readable image"),
    ({"test__cat__0004.jpg": _jpeg(np.zeros((600, 40, 3), dtype=np.uint8))}, "0004.jpg is 40x600, too large"),
    ({"test__cat__0005.jpg": bytes(2 << 20)}, "0005.jpg is 2,097,152 bytes, too large"),
])
def test_a_malformed_archive_member_is_refused_with_its_name(
        tmp_path: Path, changes: dict[str, bytes], message: str) -> None:
    archive = write_archive(tmp_path / "bad.tar", _with(cifar_files(10), **changes))
    with pytest.raises(ValueError, match=message):
        load_exit_images(archive, CIFAR_PREP, copies=1)


def test_an_archive_short_of_a_class_or_not_an_archive_at_all_is_refused(tmp_path: Path) -> None:
    files = cifar_files(10)
    short = {name: data for name, data in files.items() if not name.startswith("test/frog/000")}
    with pytest.raises(ValueError, match=r"fewer than 10 images of frog \(0\)"):
        load_exit_images(write_archive(tmp_path / "short.tar", short), CIFAR_PREP, copies=1)
    with pytest.raises(ValueError, match="no CIFAR-10 test set here"):
        load_exit_images(write_archive(tmp_path / "empty.tar", {"test/README": b"x"}), CIFAR_PREP, copies=1)
    (tmp_path / "fake.tar").write_bytes(b"\x00not a tar" * 100)
    with pytest.raises(ValueError, match="fake.tar: not a readable tar archive"):
        load_exit_images(tmp_path / "fake.tar", CIFAR_PREP, copies=1)


def test_a_source_that_is_neither_a_labelled_folder_nor_an_archive_says_what_it_expects(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="labels.csv .* or a CIFAR-10 archive"):
        load_exit_images(tmp_path, CIFAR_PREP, copies=1)


def test_a_labelled_folder_trains_on_even_classes_and_evaluates_on_odd(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    lines = ["file,class_index"]
    for index in range(20):
        Image.fromarray(rng.integers(0, 256, (40, 48, 3), dtype=np.uint8)).save(tmp_path / f"{index}.png")
        lines.append(f"{index}.png,{index}")
    (tmp_path / "labels.csv").write_text("\n".join(lines) + "\n")
    images = load_exit_images(tmp_path, CIFAR_PREP, copies=2)
    assert images.evaluation_labels.tolist() == list(range(1, 20, 2))
    assert images.calibration_labels.tolist() == [0, 10]  # every fifth even-class image
    assert len(images.train) == 8 * 2


def test_augmented_crops_of_a_large_image_are_random_resized_crops_of_the_model_s_size() -> None:
    import random

    pixels = np.random.default_rng(0).integers(0, 256, (64, 80, 3), dtype=np.uint8)
    crops = augmented(pixels, CIFAR_PREP, copies=4, rng=random.Random(0))
    assert len(crops) == 4 and all(c.shape == (32, 32, 3) for c in crops)
    assert len({c.tobytes() for c in crops}) == 4


def test_a_traced_model_s_activations_come_from_one_pass_and_match_its_heads() -> None:
    staged = load_model("tiny-cnn")
    traced = TracedModel(model_id="tiny-traced", reference=staged.reference, preprocess=staged.preprocess,
                         labels=staged.labels)
    points = traced.split_names[1:4]
    images = torch.from_numpy(np.random.default_rng(0).integers(0, 256, (3, 32, 32, 3), dtype=np.uint8))
    with torch.no_grad():
        values = activation_recorder(traced, points)(images)
        for point in points:
            torch.testing.assert_close(values[point], traced.head(point)(images), msg=point)
    with pytest.raises(KeyError, match="no split point"):
        activation_recorder(traced, ["nowhere"])
    with pytest.raises(ValueError, match=r"needs a \(C, H, W\) activation"):
        activation_shapes(staged, ["pool"])


class _Doubler(torch.nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.mul_(2.0) + 1.0  # changes its input in place


class _InPlaceNet(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 4, 3, padding=1)
        self.twice = _Doubler()
        self.pool = torch.nn.AdaptiveAvgPool2d(1)
        self.fc = torch.nn.Linear(4, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.flatten(self.pool(self.twice(self.conv(x))), 1))


def test_a_recorded_activation_is_not_changed_by_a_later_in_place_op() -> None:
    traced = TracedModel(model_id="in-place", reference=_InPlaceNet(), preprocess=CIFAR_PREP, labels=["a", "b"])
    images = torch.from_numpy(np.random.default_rng(0).integers(0, 256, (2, 32, 32, 3), dtype=np.uint8))
    with torch.no_grad():
        recorded = activation_recorder(traced, ["conv"])(images)["conv"]
        torch.testing.assert_close(recorded, traced.head("conv")(images))


def test_the_threshold_table_stops_confident_frames_and_finishes_the_others() -> None:
    probabilities = np.array([[0.95, 0.05], [0.6, 0.4], [0.2, 0.8], [0.45, 0.55]])
    final_top1 = np.array([0, 1, 1, 0])
    labels = np.array([0, 1, 0, 0])
    rows = threshold_rows("exit@x", probabilities, final_top1, labels, exit_ms=2.0, tail_ms=4.0,
                          thresholds=(0.5, 0.9))
    loose, strict = rows
    assert loose["stopped"] == 1.0 and loose["accuracy"] == 0.25 and loose["device_ms_mean"] == 2.0
    # At 0.9 only the first frame stops (right); the final classifier answers the rest: 1, 1, 0 -> 2 of 3 right.
    assert strict["stopped"] == 0.25 and strict["accuracy"] == 0.75 and strict["accuracy_of_stopped"] == 1.0
    assert strict["device_ms_mean"] == 2.0 + 0.75 * 4.0


def test_train_exits_end_to_end_exports_calibrated_exits_that_the_runtime_runs(
        tiny_bundle: Bundle, cifar_archive: Path, tmp_path: Path) -> None:
    root = tmp_path / "tiny"
    shutil.copytree(tiny_bundle.root, root)
    model = load_model("tiny-cnn")
    report = train_exits(model, root, cifar_archive, ["down", "res"], copies=2, epochs=1)
    assert [r["exit"] for r in report.rows] == ["final", "exit@down", "exit@res"]
    assert report.rows[0]["agreement"] == 1.0 and report.rows[0]["device_share"] == 1.0
    assert [(r["exit"], r["threshold"]) for r in report.thresholds][:2] == [("exit@down", 0.5), ("exit@down", 0.7)]
    assert "6 of 10 train" in report.split
    bundle = report.bundle
    assert [e.name for e in bundle.manifest.exits] == ["down", "res"]
    # What the exported exit answers is what the report judged: the calibrated exit's top-1 on an evaluation image.
    images = load_exit_images(cifar_archive, model.preprocess, copies=1)
    session = create_session(root / "exit_res.onnx")
    exit_logits = session.run(None, {HEAD_INPUT_NAME: images.evaluation[0][None]})[1]
    assert exit_logits.shape == (1, 10)
    outcome = EdgeRuntime(bundle, exit_threshold=0.0).infer(images.evaluation[0], Local("res"))
    assert outcome.ok and outcome.action == "local@res" and "local_tail" not in outcome.trace_ms
    assert int(np.argmax(outcome.logits)) == int(np.argmax(exit_logits))
    # A second run reuses the teacher's outputs (one cache file) and, trained the same way, reports the same.
    caches = list(root.parent.glob(".tiny-exit-teacher-*.pt"))
    assert len(caches) == 1
    again = train_exits(model, root, cifar_archive, ["down", "res"], copies=2, epochs=1)
    assert list(root.parent.glob(".tiny-exit-teacher-*.pt")) == caches
    assert [r["accuracy"] for r in again.rows] == [r["accuracy"] for r in report.rows]


def test_a_resnet56_exit_learns_from_real_cifar_images_what_the_model_answers() -> None:
    """On real data (skipped without ../shared): an exit at layer3.4, trained on 600 unlabelled images for a few
    epochs, agrees with the full model on most held-out images; untrained, it would agree on about a tenth."""
    archive, weights = SHARED_DIR / "data" / "cifar10-test.tar", SHARED_DIR / "models" / "cifar10-resnet"
    if not (archive.is_file() and weights.is_dir()):
        pytest.skip(f"needs {archive} and {weights}")
    model = load_model("resnet56-cifar10", weights_dir=weights)
    by_class = list(read_cifar_archive(archive).values())
    train = [image for images in by_class for image in images[:60]]
    held_out = [image for images in by_class for image in images[-30:]]
    torch.manual_seed(0)
    acts, features, logits = teacher_pass(model, train, ["layer3.4"], desc="teacher")
    head = train_exit(acts["layer3.4"], features, logits, final_classifier(model), epochs=6, side=8, desc="exit")
    held_acts, _, held_logits = teacher_pass(model, held_out, ["layer3.4"], desc="held out")
    with torch.no_grad():
        exit_top1 = head.from_pooled(held_acts["layer3.4"].float())[1].argmax(1)
    assert (exit_top1 == held_logits.argmax(1)).float().mean() > 0.6
