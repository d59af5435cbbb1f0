"""CIFAR-10 ResNet-20/56 from ../shared (skipped when it is absent)."""
from __future__ import annotations

import io
import os
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch

from splitrt.partition.cifar import DEFAULT_WEIGHTS_DIR, CifarResNet
from splitrt.partition.models import load_model
from splitrt.partition.traced import TracedModel

# ../shared beside the project, or wherever SPLITRT_SHARED points.
SHARED = Path(os.environ.get("SPLITRT_SHARED", Path(__file__).resolve().parents[1].parent / "shared"))
WEIGHTS = SHARED / "models" / "cifar10-resnet"
needs_weights = pytest.mark.skipif(not WEIGHTS.is_dir(), reason=f"no CIFAR-10 ResNet weights at {WEIGHTS}")


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def test_missing_weights_say_what_to_do(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="--weights-dir"):
        load_model("resnet20-cifar10", weights_dir=tmp_path)
    assert str(DEFAULT_WEIGHTS_DIR) == "../shared/models/cifar10-resnet"


def test_residual_blocks_are_never_cut_through() -> None:
    from splitrt.partition.models import CIFAR_PREPROCESS

    model = TracedModel("resnet20", CifarResNet(20), CIFAR_PREPROCESS, [str(i) for i in range(10)])
    blocks = [f"layer{s}.{b}" for s in (1, 2, 3) for b in range(3)]
    assert model.split_names == ["conv1", "bn1", "relu", *blocks, "adaptive_avg_pool2d", "flatten"]


@needs_weights
def test_resnet56_offers_at_least_20_points_and_each_recomposes_exactly() -> None:
    model = load_model("resnet56-cifar10", weights_dir=WEIGHTS)
    assert len(model.split_names) >= 20
    images = torch.from_numpy(np.random.default_rng(0).integers(0, 256, size=(2, 32, 32, 3), dtype=np.uint8))
    with torch.no_grad():
        reference = model.reference(model.normalizer()(images))
        for split in model.split_names:
            torch.testing.assert_close(model.tail(split)(model.head(split)(images)), reference, msg=split)


@needs_weights
def test_pretrained_resnet20_classifies_real_cifar_images() -> None:
    archive = SHARED / "data" / "cifar10-test.tar"
    if not archive.is_file():
        pytest.skip(f"no CIFAR-10 test set at {archive}")
    from PIL import Image

    classes = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
    images, labels = [], []
    with tarfile.open(archive) as tar:
        for member in tar:
            if member.isfile() and member.name.endswith(".jpg"):
                label = classes.index(Path(member.name).parent.name)
                if labels.count(label) < 20:
                    data = tar.extractfile(member).read()  # type: ignore[union-attr]
                    images.append(np.asarray(Image.open(io.BytesIO(data)).convert("RGB")))
                    labels.append(label)
            if len(labels) == 200:
                break
    model = load_model("resnet20-cifar10", weights_dir=WEIGHTS)
    with torch.no_grad():
        predicted = model.full()(torch.from_numpy(np.stack(images))).argmax(1).numpy()
    # 81.0% on all 10,000 JPEG test images (ResNet-56: 83.2%); the JPEG compression costs some points.
    assert (predicted == np.array(labels)).mean() > 0.7
