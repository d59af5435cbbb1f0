"""Frame-difference prefilters (as Reducto): skip a frame that differs too little from the last processed one.

Features are computed on a small blurred grey thumbnail, so the filter costs far less than the model:
- `pixel`: share of thumbnail pixels that changed by more than `pixel_delta`;
- `edge`: share of edge pixels (gradient magnitude above a level) that appeared or vanished;
- `histogram`: half the L1 distance between grey-level histograms (0 = same, 1 = disjoint).
A skipped frame reuses the last result and says so. `tune_threshold` picks, on a stretch of frames whose
every result is known, the threshold that skips the most while keeping a target agreement.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Sequence

import numpy as np
from PIL import Image, ImageFilter

FEATURES = ("pixel", "edge", "histogram")


def thumbnail(pixels: np.ndarray, size: int = 64) -> np.ndarray:
    """Grey, blurred, size x size, float in [0, 1]."""
    image = Image.fromarray(np.ascontiguousarray(pixels)).convert("L").resize((size, size), Image.BILINEAR)
    return np.asarray(image.filter(ImageFilter.GaussianBlur(1)), dtype=np.float32) / 255.0


def _edges(grey: np.ndarray, level: float = 0.08) -> np.ndarray:
    gy, gx = np.gradient(grey)
    return np.hypot(gx, gy) > level


@dataclass(frozen=True)
class FrameSignature:
    grey: np.ndarray
    edges: np.ndarray
    histogram: np.ndarray

    @classmethod
    def of(cls, pixels: np.ndarray, size: int = 64) -> "FrameSignature":
        grey = thumbnail(pixels, size)
        histogram = np.histogram(grey, bins=32, range=(0.0, 1.0))[0].astype(np.float32)
        return cls(grey, _edges(grey), histogram / max(histogram.sum(), 1.0))


def difference(feature: str, a: FrameSignature, b: FrameSignature, pixel_delta: float = 0.1) -> float:
    if feature == "pixel":
        return float(np.mean(np.abs(a.grey - b.grey) > pixel_delta))
    if feature == "edge":
        return float(np.mean(a.edges != b.edges))
    if feature == "histogram":
        return float(np.abs(a.histogram - b.histogram).sum() / 2.0)
    raise ValueError(f"unknown prefilter feature {feature!r}: use one of {', '.join(FEATURES)}")


@dataclass
class Prefilter:
    """Stateful filter for a stream: `admit(pixels)` is False when the frame may reuse the last result."""

    feature: str = "pixel"
    threshold: float = 0.02
    size: int = 64
    _reference: FrameSignature | None = field(default=None, init=False)

    def __post_init__(self) -> None:
        if self.feature not in FEATURES:
            raise ValueError(f"unknown prefilter feature {self.feature!r}: use one of {', '.join(FEATURES)}")

    def admit(self, pixels: np.ndarray) -> bool:
        signature = FrameSignature.of(pixels, self.size)
        return self.admit_signature(signature)

    def admit_signature(self, signature: FrameSignature) -> bool:
        if self._reference is not None and difference(self.feature, signature, self._reference) < self.threshold:
            return False
        self._reference = signature
        return True


@dataclass(frozen=True)
class FrameResult:
    """What processing a frame gives: its top-1 and top-5 classes."""

    top1: int
    top5: frozenset[int]


@dataclass(frozen=True)
class FilterOutcome:
    feature: str
    threshold: float
    frames: int
    skipped: float  # share of frames skipped
    agreement_top1: float  # delivered top-1 == the frame's own top-1
    agreement_top5: float  # delivered top-1 is among the frame's own top-5 (the same answer within its doubt)

    def agreement(self, measure: str) -> float:
        return self.agreement_top1 if measure == "top1" else self.agreement_top5


def replay(
    feature: str, threshold: float, signatures: Sequence[FrameSignature], results: Sequence[FrameResult]
) -> FilterOutcome:
    """Run a filter over frames whose every result is known; a skipped frame delivers the reference's result."""
    prefilter = Prefilter(feature, threshold)
    delivered: FrameResult | None = None
    skipped = agree_top1 = agree_top5 = 0
    for signature, result in zip(signatures, results):
        if prefilter.admit_signature(signature) or delivered is None:
            delivered = result
        else:
            skipped += 1
        agree_top1 += int(delivered.top1 == result.top1)
        agree_top5 += int(delivered.top1 in result.top5)
    frames = len(results)
    return FilterOutcome(feature, threshold, frames, skipped / frames, agree_top1 / frames, agree_top5 / frames)


def tune_threshold(
    feature: str,
    signatures: Sequence[FrameSignature],
    results: Sequence[FrameResult],
    target_agreement: float,
    measure: str = "top1",
) -> FilterOutcome:
    """The threshold that skips the most frames while the agreement `measure` stays at or above the target."""
    consecutive = [difference(feature, a, b) for a, b in zip(signatures[1:], signatures[:-1])]
    candidates = sorted(set(np.quantile(consecutive, np.linspace(0, 1, 41)).tolist()) | {0.0})
    best = replay(feature, 0.0, signatures, results)
    for threshold in candidates:
        # Slightly above each observed difference, so the candidate itself is skipped.
        outcome = replay(feature, threshold * 1.0001 + 1e-9, signatures, results)
        if outcome.agreement(measure) >= target_agreement and outcome.skipped > best.skipped:
            best = outcome
    return best
