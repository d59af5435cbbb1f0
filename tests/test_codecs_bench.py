"""Pieces of `splitrt bench codecs` that need no model: the parity split and the rate-accuracy plot."""
from __future__ import annotations

from pathlib import Path

import pytest

from splitrt.bench.codecs import select_parity
from splitrt.bench.common import LabelledImage


def test_parity_split_keeps_even_or_odd_class_indices() -> None:
    items = [LabelledImage(Path(f"{i}.jpg"), i) for i in range(7)]
    assert [i.class_index for i in select_parity(items, "even")] == [0, 2, 4, 6]
    assert [i.class_index for i in select_parity(items, "odd")] == [1, 3, 5]
    assert select_parity(items, "all") == items
    with pytest.raises(ValueError):
        select_parity(items, "prime")


def test_rate_accuracy_plot_writes_a_png(tmp_path: Path) -> None:
    pytest.importorskip("matplotlib")
    from splitrt.bench.plot import rate_accuracy_plot

    rows = [
        {"split": "-", "codec": "pytorch-unsplit", "bytes_p50": 0, "top1": 0.88},
        {"split": "bn-b4-c24-beta0.01-s1", "codec": "ans", "bytes_p50": 1400, "top1": 0.55},
        {"split": "bn-b4-c24-beta0.01-s2", "codec": "ans", "bytes_p50": 900, "top1": 0.53},
        {"split": "input", "codec": "jpeg-q10", "bytes_p50": 2900, "top1": 0.60},
        {"split": "pool", "codec": "q8+zstd", "bytes_p50": 830, "top1": 0.88},
    ]
    out = tmp_path / "plot.png"
    rate_accuracy_plot(rows, out, title="test")
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
