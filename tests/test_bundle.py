from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from splitrt.bundle import HEAD_INPUT_NAME, INPUT_POINT, TAIL_INPUT_NAME, Bundle, BundleError, UnknownSplit
from splitrt.devices.ort import create_session
from splitrt.partition.models import available_models, load_model


def test_manifest_describes_every_split_point(tiny_bundle: Bundle) -> None:
    manifest = tiny_bundle.manifest
    assert manifest.model_id == "tiny-cnn"
    assert manifest.split_names == [INPUT_POINT, "stem", "down", "res", "expand", "pool"]
    assert manifest.split("stem").activation.shape == (8, 16, 16)
    assert manifest.split("pool").raw_bytes == 32 * 4
    assert manifest.input.shape == (32, 32, 3) and manifest.input.dtype == "uint8"
    assert tiny_bundle.content_hash.startswith("sha256:")
    with pytest.raises(UnknownSplit, match="has no split point 'b4'"):
        manifest.split("b4")


def test_head_plus_tail_equals_full_model_on_random_inputs(tiny_bundle: Bundle, rng: np.random.Generator) -> None:
    images = rng.integers(0, 256, size=(5, 32, 32, 3), dtype=np.uint8)
    full = create_session(tiny_bundle.path(tiny_bundle.manifest.full_file)).run(None, {HEAD_INPUT_NAME: images})[0]
    model = load_model("tiny-cnn")
    with torch.no_grad():
        reference = model.reference(model.normalizer()(torch.from_numpy(images))).numpy()
    np.testing.assert_allclose(full, reference, rtol=1e-4, atol=1e-5)
    for point in tiny_bundle.manifest.splits:
        if point.head_file is None:
            continue
        activation = create_session(tiny_bundle.path(point.head_file)).run(None, {HEAD_INPUT_NAME: images})[0]
        assert activation.shape[1:] == point.activation.shape
        out = create_session(tiny_bundle.path(point.tail_file)).run(None, {TAIL_INPUT_NAME: activation})[0]
        np.testing.assert_allclose(out, full, rtol=1e-4, atol=1e-5, err_msg=f"split {point.name}")


def copy_bundle(bundle: Bundle, tmp_path: Path) -> Path:
    target = tmp_path / "copy"
    shutil.copytree(bundle.root, target)
    return target


def test_a_modified_onnx_file_is_detected(tiny_bundle: Bundle, tmp_path: Path) -> None:
    root = copy_bundle(tiny_bundle, tmp_path)
    with open(root / "tail_res.onnx", "ab") as handle:
        handle.write(b"\0")
    with pytest.raises(BundleError, match="tail_res.onnx does not match its sha256"):
        Bundle.load(root)


def test_an_edited_manifest_is_detected(tiny_bundle: Bundle, tmp_path: Path) -> None:
    root = copy_bundle(tiny_bundle, tmp_path)
    data = json.loads((root / "manifest.json").read_text())
    data["preprocess"]["crop"] = 30
    (root / "manifest.json").write_text(json.dumps(data))
    with pytest.raises(BundleError, match="content hash"):
        Bundle.load(root)


def test_profiles_do_not_change_the_content_hash(tiny_bundle: Bundle, tmp_path: Path) -> None:
    root = copy_bundle(tiny_bundle, tmp_path)
    data = json.loads((root / "manifest.json").read_text())
    data["profiles"] = {"pi4": {"stem": {"edge_ms_p50": 1.0}}}
    (root / "manifest.json").write_text(json.dumps(data))
    assert Bundle.load(root).content_hash == tiny_bundle.content_hash


@pytest.mark.parametrize(
    "edit, message",
    [
        (lambda d: d.pop("splits"), "missing key 'splits'"),
        (lambda d: d.update(format_version=99), "format_version 99"),
        (lambda d: d["splits"][1].update(raw_bytes=5), "raw_bytes 5"),
        (lambda d: d["files"].update({"../evil.onnx": "0"}), "plain name"),
    ],
)
def test_malformed_manifests_name_the_problem(tiny_bundle: Bundle, tmp_path: Path, edit, message: str) -> None:
    root = copy_bundle(tiny_bundle, tmp_path)
    data = json.loads((root / "manifest.json").read_text())
    edit(data)
    (root / "manifest.json").write_text(json.dumps(data))
    with pytest.raises(BundleError, match=message.replace("(", r"\(")):
        Bundle.load(root)


def test_a_missing_bundle_says_how_to_make_one(tmp_path: Path) -> None:
    with pytest.raises(BundleError, match="splitrt partition export"):
        Bundle.load(tmp_path / "nothing")


def test_unknown_model_and_split_are_named() -> None:
    assert "efficientnet-lite0" in available_models() and "tiny-cnn" in available_models()
    with pytest.raises(KeyError, match="known models"):
        load_model("resnet-9000")
    with pytest.raises(KeyError, match="split points: stem"):
        load_model("tiny-cnn").head("nope")
