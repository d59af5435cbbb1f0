"""The rate-accuracy plot: top-1 against median bytes per frame, one series per kind of codec."""
from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Sequence

from splitrt.codecs.bottleneck.install import parse_point_name

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
    bottleneck = parse_point_name(split)
    if bottleneck is not None:
        return f"learned bottleneck {bottleneck[0]} (ans)"
    if codec.startswith("jpeg-"):
        return "offload JPEG"
    if codec.startswith("webp-"):
        return "offload WebP"
    return f"split {split}, tensor codecs"


def _label(row: dict[str, object]) -> str:
    codec, split = str(row["codec"]), str(row["split"])
    bottleneck = parse_point_name(split)
    if bottleneck is not None:
        return "step " + bottleneck[1]
    return codec.split("-")[-1] if codec.startswith(("jpeg-", "webp-")) else ""


def _draw(axes: object, groups: dict[str, list[tuple[float, float, str]]], reference: float | None,
          label_kinds: tuple[str, ...]) -> None:
    """One panel: every series, the unsplit model and its 1 pp band, the 3,000-byte line; point labels on the
    series whose names start with one of `label_kinds`."""
    markers = iter("os^vDP*Xhp<>")
    for name, points in sorted(groups.items()):
        points.sort()
        xs, ys = [p[0] for p in points], [p[1] for p in points]
        line = "-" if name.startswith(("learned", "offload")) else ":"
        axes.plot(xs, ys, line, marker=next(markers, "o"), label=name,  # type: ignore[attr-defined]
                  linewidth=2 if name.startswith("learned") else 1)
        if name.startswith(label_kinds):
            for x, y, label in points:
                if label:
                    axes.annotate(label, (x, y), textcoords="offset points", xytext=(3, -10), fontsize=7)  # type: ignore[attr-defined]
    if reference is not None:
        axes.axhline(100 * reference, color="black", linewidth=1, label=f"unsplit model {100 * reference:.2f}%")  # type: ignore[attr-defined]
        axes.axhline(100 * reference - 1.0, color="gray", linestyle="--", linewidth=1, label="unsplit - 1 pp")  # type: ignore[attr-defined]
    axes.axvline(3000, color="gray", linestyle=":", linewidth=1)  # type: ignore[attr-defined]
    axes.set_xscale("log")  # type: ignore[attr-defined]
    axes.set_xlabel("bytes per frame (median payload)")  # type: ignore[attr-defined]
    axes.grid(True, which="both", alpha=0.3)  # type: ignore[attr-defined]


def rate_accuracy_plot(rows: Sequence[dict[str, object]], out: str | Path, title: str = "") -> None:
    """Write a PNG; each point is one (split, codec) row measured through the real edge -> cloud path. Left: every
    row; right: the same, zoomed on the band around the unsplit model (where the targets are)."""
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
    figure, (whole, zoom) = plt.subplots(1, 2, figsize=(15, 6), dpi=110, gridspec_kw={"width_ratios": [1, 1]})
    _draw(whole, groups, reference, ("offload",))
    whole.set_ylabel("top-1 accuracy (%)")
    whole.set_title(title or "rate-accuracy")
    whole.legend(fontsize=8, loc="lower right")
    _draw(zoom, groups, reference, ("offload", "learned"))
    if reference is not None:
        zoom.set_ylim(100 * reference - 6.0, 100 * reference + 2.0)
    zoom.set_title("near the unsplit model (the target: within 1 pp at <= 3,000 bytes)")
    save_figure(figure, out, dpi=100)
