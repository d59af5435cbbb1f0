"""Early exits on the tiny model: export into a bundle, stop when confident, finish locally when not."""
from __future__ import annotations

import shutil

import numpy as np
import pytest
import torch

from splitrt.actions import Local
from splitrt.bundle import Bundle, BundleError
from splitrt.edge.runtime import EdgeRuntime
from splitrt.partition.exits import (
    add_exits_to_bundle,
    expected_calibration_error,
    export_exit,
    fit_temperature,
    teacher_pass,
    train_exit,
)
from splitrt.partition.models import load_model


@pytest.fixture(scope="module")
def bundle_with_exit(tiny_bundle: Bundle, tmp_path_factory: pytest.TempPathFactory) -> Bundle:
    root = tmp_path_factory.mktemp("exits") / "tiny"
    shutil.copytree(tiny_bundle.root, root)
    model = load_model("tiny-cnn")
    rng = np.random.default_rng(0)
    crops = list(rng.integers(0, 256, size=(64, 32, 32, 3), dtype=np.uint8))
    acts, features, logits = teacher_pass(model, crops, ["down"], desc="tiny teacher")
    head = train_exit(acts["down"], features, logits, model.stages[-1][1], epochs=2, side=8, desc="tiny exit")
    export_exit(model, "down", head, 1.5, root / "exit_down.onnx")
    return add_exits_to_bundle(root, [{"name": "down", "point": "down", "file": "exit_down.onnx",
                                       "temperature": 1.5, "accuracy": 0.0}])


def test_exit_is_in_the_manifest_and_covered_by_the_hash(bundle_with_exit: Bundle, tiny_bundle: Bundle) -> None:
    assert [e.name for e in bundle_with_exit.manifest.exits] == ["down"]
    assert bundle_with_exit.content_hash != tiny_bundle.content_hash
    with pytest.raises(BundleError, match="no early exit 'b3'"):
        bundle_with_exit.manifest.exit("b3")


def test_a_confident_exit_ends_the_frame_and_an_unsure_one_finishes_locally(bundle_with_exit: Bundle) -> None:
    image = np.random.default_rng(1).integers(0, 256, size=(40, 40, 3), dtype=np.uint8)
    full = EdgeRuntime(bundle_with_exit).infer(image, Local())
    stop = EdgeRuntime(bundle_with_exit, exit_threshold=0.0).infer(image, Local("down"))
    assert stop.ok and "local_tail" not in stop.trace_ms and stop.action == "local@down"
    go_on = EdgeRuntime(bundle_with_exit, exit_threshold=1.01).infer(image, Local("down"))
    assert go_on.ok and "local_tail" in go_on.trace_ms and "not confident" in go_on.reason
    np.testing.assert_allclose(go_on.logits, full.logits, rtol=1e-4, atol=1e-5)
    missing = EdgeRuntime(bundle_with_exit).infer(image, Local("b3"))
    assert missing.status.value == "failed" and "no early exit" in missing.reason


def test_temperature_scaling_lowers_calibration_error_of_overconfident_logits() -> None:
    generator = torch.Generator().manual_seed(0)
    labels = torch.randint(0, 10, (2000,), generator=generator)
    logits = torch.randn(2000, 10, generator=generator)
    logits[torch.arange(2000), labels] += 1.0  # right about half the time...
    logits *= 6.0  # ...but sure of itself every time
    temperature = fit_temperature(logits, labels)
    assert temperature > 2.0
    before = expected_calibration_error(torch.softmax(logits, 1).numpy(), labels.numpy())
    after = expected_calibration_error(torch.softmax(logits / temperature, 1).numpy(), labels.numpy())
    assert after < before / 3


def test_the_policy_benchmark_compares_a_bundle_s_exits_and_warns_when_it_has_none(
        bundle_with_exit: Bundle, tiny_bundle: Bundle, caplog: pytest.LogCaptureFixture) -> None:
    from splitrt.bench.policy import candidate_set

    with caplog.at_level("WARNING", logger="splitrt.bench.policy"):
        with_exit = candidate_set(bundle_with_exit, "base")
    assert Local("down") in with_exit and not caplog.records
    with caplog.at_level("WARNING", logger="splitrt.bench.policy"):
        without = candidate_set(tiny_bundle, "base")
    assert not any(isinstance(a, Local) and a.exit for a in without)
    assert "no early exits" in caplog.text and "splitrt train exits" in caplog.text
