"""The committed, trained bottleneck(s): their tables load, hash as recorded, and code a latent (no torch)."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from splitrt.codecs.bottleneck.entropy import EntropyCodec, EntropyTables
from splitrt.protocol import TensorSpec

ARTIFACTS = Path(__file__).resolve().parents[1] / "artifacts" / "bottlenecks"
FOLDERS = sorted(p.parent for p in ARTIFACTS.glob("*/*/bottleneck.json"))


@pytest.mark.skipif(not FOLDERS, reason="no trained bottleneck committed under artifacts/bottlenecks")
@pytest.mark.parametrize("folder", FOLDERS, ids=lambda p: p.name)
def test_committed_bottleneck_tables_match_their_hashes(folder: Path) -> None:
    description = json.loads((folder / "bottleneck.json").read_text(encoding="utf-8"))
    assert (folder / "weights.npz").stat().st_size < 4_000_000
    with np.load(folder / "weights.npz", allow_pickle=False) as weights:
        assert any(name.startswith("compressor.net.") for name in weights.files)
    assert description["operating_points"], "run `splitrt codecs fit-tables` to add operating points"
    for point in description["operating_points"]:
        tables = EntropyTables.from_json(json.loads((folder / point["tables"]).read_text(encoding="utf-8")))
        assert tables.table_hash == point["table_hash"]
        codec = EntropyCodec(tables)
        offsets = np.asarray(tables.offsets, np.float32).reshape(1, -1, 1, 1)
        latent = np.broadcast_to(offsets, (1, *tables.latent_shape)).copy()  # in range by construction
        spec = TensorSpec("float32", latent.shape)
        assert np.array_equal(codec.decode(codec.encode(latent), spec), latent)
