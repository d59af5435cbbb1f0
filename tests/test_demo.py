"""`splitrt demo` on the tiny model: a cloud process and an edge process on loopback, stopped cleanly."""
from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from splitrt.bundle import Bundle
from splitrt.cli import main
from tests.conftest import write_labelled_images


def test_demo_runs_cloud_and_edge_processes_and_stops_both(tiny_bundle: Bundle, tmp_path: Path,
                                                           capfd: pytest.CaptureFixture[str]) -> None:
    images = write_labelled_images(tmp_path / "images", 2, 2)
    bundle = shutil.copytree(tiny_bundle.root, tmp_path / "bundle")
    actions = "local,res/fp32,pool/fp16,offload/jpeg-q90"
    code = main(["demo", "--bundle", str(bundle), "--model", "tiny-cnn", "--images", str(images), "--split", actions])
    out = capfd.readouterr().out
    assert code == 0, out
    assert "cloud: ready at tcp://127.0.0.1:" in out
    assert "cloud: stopped (exit code 0); edge exit code 0" in out
    for action in ("local", "split@res/fp32", "split@pool/fp16", "offload/jpeg-q90"):  # the edge's summary table
        assert any(line.split()[:3] == [action, "2", "2"] for line in out.splitlines()), (action, out)
    assert "model tiny-cnn: 5 split points" in out


def test_the_default_actions_name_a_committed_bottleneck_and_other_bundles_are_left_alone(tiny_bundle: Bundle) -> None:
    from splitrt.demo import (DEFAULT_ACTIONS, DEMO_BOTTLENECK_ACTION, DEMO_BOTTLENECK_POINT, _artifact, _table_hash,
                              with_bottlenecks)

    assert DEMO_BOTTLENECK_ACTION in DEFAULT_ACTIONS.split(",")
    artifact = _artifact("efficientnet-lite0", DEMO_BOTTLENECK_POINT)
    assert (artifact / "tables_s1.25.json").is_file() and _table_hash(artifact, DEMO_BOTTLENECK_POINT)
    assert _table_hash(artifact, DEMO_BOTTLENECK_POINT.replace("-s1.25", "-s9")) is None  # no such step
    # No bottleneck asked for, or none trained for this model: the exported bundle itself is used.
    assert with_bottlenecks(tiny_bundle, tiny_bundle.root, "local,res/fp16") == (tiny_bundle, tiny_bundle.root)
    assert with_bottlenecks(tiny_bundle, tiny_bundle.root, DEFAULT_ACTIONS) == (tiny_bundle, tiny_bundle.root)
