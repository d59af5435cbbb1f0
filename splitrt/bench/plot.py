"""The rate-accuracy plot: top-1 against median bytes per frame, one series per kind of codec."""
from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Sequence

if TYPE_CHECKING:
    from matplotlib.figure import Figure


def save_figure(figure: "Figure", path: str | Path, dpi: int = 110) -> None:
    """Lay the figure out, write it as a PNG (making its folder) and free it."""
    import matplotlib.pyplot as plt

    figure.tight_layout()
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=dpi)
    plt.close(figure)


def _series(row: dict[str, object]) -> str:
    codec, split = str(row["codec"]), str(row["split"])
    if split.startswith("bn-"):
        return f"learned bottleneck {split[3:].rsplit('-s', 1)[0]} (ans)"
    if codec.startswith("jpeg-"):
        return "offload JPEG"
    if codec.startswith("webp-"):
        return "offload WebP"
    return f"split {split}, tensor codecs"


def _label(row: dict[str, object]) -> str:
    codec, split = str(row["codec"]), str(row["split"])
    if split.startswith("bn-"):
        return "step " + split.rsplit("-s", 1)[1]
    return codec.split("-")[-1] if codec.startswith(("jpeg-", "webp-")) else ""


def rate_accuracy_plot(rows: Sequence[dict[str, object]], out: str | Path, title: str = "") -> None:
    """Write a PNG; each point is one (split, codec) row measured through the real edge -> cloud path."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    groups: dict[str, list[tuple[float, float, str]]] = {}
    reference = None
    for row in rows:
        if row["codec"] == "pytorch-unsplit":
            reference = float(row["top1"])  # type: ignore[arg-type]
            continue
        groups.setdefault(_series(row), []).append(
            (float(row["bytes_p50"]), 100 * float(row["top1"]), _label(row)))  # type: ignore[arg-type]
    figure, axes = plt.subplots(figsize=(9, 5.5), dpi=110)
    markers = iter("os^vDP*Xhp<>")
    for name, points in sorted(groups.items()):
        points.sort()
        xs, ys = [p[0] for p in points], [p[1] for p in points]
        line = "-" if name.startswith(("learned", "offload")) else ":"
        axes.plot(xs, ys, line, marker=next(markers, "o"), label=name, linewidth=2 if name.startswith("learned") else 1)
        if name.startswith(("offload", "learned")):
            for x, y, label in points:
                if label:
                    axes.annotate(label, (x, y), textcoords="offset points", xytext=(3, -10), fontsize=7)
    if reference is not None:
        axes.axhline(100 * reference, color="black", linewidth=1, label=f"unsplit model {100 * reference:.2f}%")
        axes.axhline(100 * reference - 1.0, color="gray", linestyle="--", linewidth=1, label="unsplit - 1 pp")
    axes.axvline(3000, color="gray", linestyle=":", linewidth=1)
    axes.set_xscale("log")
    axes.set_xlabel("bytes per frame (median payload)")
    axes.set_ylabel("top-1 accuracy (%)")
    axes.set_title(title or "rate-accuracy")
    axes.grid(True, which="both", alpha=0.3)
    axes.legend(fontsize=8, loc="lower right")
    save_figure(figure, out, dpi=100)
