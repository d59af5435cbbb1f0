"""What every benchmark shares: labelled image sets, percentiles, the environment block, output."""
from __future__ import annotations

import csv
import datetime
import json
import os
import platform
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np


@dataclass(frozen=True)
class LabelledImage:
    path: Path
    class_index: int


def read_labelled_images(folder: str | Path, limit: int | None = None) -> list[LabelledImage]:
    """Images listed in `folder/labels.csv` (columns `file,class_index,...`), in file order."""
    folder = Path(folder)
    labels = folder / "labels.csv"
    if not labels.is_file():
        raise FileNotFoundError(
            f"{labels} not found: --images needs a folder with images and a labels.csv (file,class_index,...), "
            "such as ../shared/data/imagenet-sample"
        )
    with open(labels, newline="", encoding="utf-8") as handle:
        reader = csv.DictReader(handle)
        missing = {"file", "class_index"} - set(reader.fieldnames or [])
        if missing:
            raise ValueError(f"{labels}: missing column(s) {', '.join(sorted(missing))}")
        rows = [LabelledImage(folder / row["file"], int(row["class_index"])) for row in reader]
    if limit is not None:
        rows = rows[:limit]
    absent = [r.path.name for r in rows if not r.path.is_file()]
    if absent:
        raise FileNotFoundError(f"{len(absent)} image(s) in labels.csv are missing, e.g. {absent[0]}")
    return rows


# Images are split by class: the learned parts (bottlenecks, exits) train on even class indices and are
# scored on odd ones, so that no evaluated class was seen in training.
PARITIES = ("all", "even", "odd")


def select_parity(labelled: list[LabelledImage], parity: str) -> list[LabelledImage]:
    """All images, or those whose class index is even / odd."""
    if parity not in PARITIES:
        raise ValueError(f"parity must be one of {', '.join(PARITIES)}, got {parity!r}")
    if parity == "all":
        return labelled
    keep = 0 if parity == "even" else 1
    return [item for item in labelled if item.class_index % 2 == keep]


def p50(values: Sequence[float]) -> float:
    return float(np.median(values)) if len(values) else float("nan")


def percentile(values: Sequence[float], q: float) -> float:
    return float(np.percentile(values, q)) if len(values) else float("nan")


def environment() -> dict[str, object]:
    def version(name: str) -> str:
        try:
            return metadata.version(name)
        except metadata.PackageNotFoundError:
            return "absent"

    return {
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "python": platform.python_version(),
        "machine": platform.machine(),
        "processor": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "onnxruntime": version("onnxruntime"),
        "torch": version("torch"),
        "numpy": version("numpy"),
        "pyzmq": version("pyzmq"),
    }


def write_json(path: str | Path, scenario: str, rows: list[dict[str, object]], **extra: object) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    document = {"scenario": scenario, "rows": rows, "env": environment(), **extra}
    path.write_text(json.dumps(document, indent=2) + "\n", encoding="utf-8")


def format_table(rows: Iterable[dict[str, object]], columns: Sequence[str]) -> str:
    """A plain aligned text table; floats with 3 significant decimals, fractions as they are."""
    def cell(value: object) -> str:
        if isinstance(value, float):
            return f"{value:.4f}" if abs(value) <= 1 else f"{value:.2f}"
        return str(value)

    rows = list(rows)
    cells = [[cell(row.get(c, "")) for c in columns] for row in rows]
    widths = [max(len(c), *(len(r[i]) for r in cells)) if cells else len(c) for i, c in enumerate(columns)]
    lines = ["  ".join(c.rjust(w) for c, w in zip(columns, widths))]
    lines.append("  ".join("-" * w for w in widths))
    lines += ["  ".join(v.rjust(w) for v, w in zip(r, widths)) for r in cells]
    return "\n".join(lines)
