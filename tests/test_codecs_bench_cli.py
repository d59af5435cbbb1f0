"""`splitrt bench codecs` end to end on the tiny model: real head, codec, ZeroMQ and tail service."""
from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import pytest

from splitrt.bundle import Bundle
from splitrt.cli import main
from tests.conftest import write_labelled_images

ROW_FIELDS = {"model", "split", "codec", "frames", "bytes_p50", "top1", "top1_agreement", "encode_ms_p50",
              "decode_ms_p50"}


def test_bench_codecs_writes_rows_for_every_split_and_codec(tiny_bundle: Bundle, tmp_path: Path,
                                                           capsys: pytest.CaptureFixture[str]) -> None:
    images = write_labelled_images(tmp_path / "images", 6, 3)
    bundle = shutil.copytree(tiny_bundle.root, tmp_path / "bundle")
    out = tmp_path / "codecs.json"
    code = main(["bench", "codecs", "--images", str(images), "--bundle", str(bundle), "--model", "tiny-cnn",
                 "--codecs", "fp32,q8,webp-q90", "--splits", "res,pool", "--limit", "4", "--json", str(out)])
    assert code == 0
    assert f"wrote {out}" in capsys.readouterr().out
    document = json.loads(out.read_text(encoding="utf-8"))
    assert document["scenario"] == "codecs"
    assert isinstance(document["env"], dict) and document["env"]
    assert document["frames"] == 4 and document["parity"] == "all"
    rows = document["rows"]
    assert {(r["split"], r["codec"]) for r in rows} == {
        ("-", "pytorch-unsplit"), ("res", "fp32"), ("res", "q8"), ("pool", "fp32"), ("pool", "q8"),
        ("input", "webp-q90"),
    }
    for row in rows:
        assert ROW_FIELDS <= set(row), row
        assert row["model"] == "tiny-cnn" and row["frames"] == 4 and row["failed"] == 0, row
        assert 0.0 <= row["top1"] <= 1.0 and 0.0 <= row["top1_agreement"] <= 1.0
        assert all(math.isfinite(row[k]) and row[k] >= 0 for k in ("encode_ms_p50", "decode_ms_p50"))
    by_key = {(r["split"], r["codec"]): r for r in rows}
    for split in ("res", "pool"):  # fp32 carries the activation exactly: the tail answers as the unsplit model
        assert by_key[(split, "fp32")]["top1_agreement"] == 1.0
        assert by_key[(split, "fp32")]["bytes_p50"] == tiny_bundle.manifest.split(split).raw_bytes
        assert by_key[(split, "q8")]["bytes_p50"] < by_key[(split, "fp32")]["bytes_p50"]
