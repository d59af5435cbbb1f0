"""`splitrt bench prefilter`: on a real video, how many frames each prefilter skips and how often the
reused result agrees with processing every frame. Thresholds are tuned on the first part of the video and
reported on the rest (and, for reference, on the whole)."""
from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
from tqdm import tqdm

from splitrt.actions import Local
from splitrt.bench.common import format_table, write_json
from splitrt.edge.commands import DEFAULT_BUNDLE
from splitrt.policies.prefilter import FEATURES, FrameResult, FrameSignature, replay, tune_threshold

DEFAULT_VIDEO = "/usr/share/doc/opencv-doc/examples/data/vtest.avi"


def read_video(path: str | Path) -> list[np.ndarray]:
    import av

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found (vtest.avi comes with Debian's opencv-doc package)")
    with av.open(str(path)) as container:
        return [frame.to_ndarray(format="rgb24") for frame in container.decode(video=0)]


def run_prefilter_bench(video: str | Path, bundle_dir: str | Path, json_out: str | Path, target_agreement: float,
                        tune_fraction: float, model: str = "efficientnet-lite0") -> list[dict[str, object]]:
    from splitrt.edge.runtime import EdgeRuntime
    from splitrt.partition.export import load_or_export

    frames = read_video(video)
    bundle = load_or_export(bundle_dir, model)
    runtime = EdgeRuntime(bundle)
    results: list[FrameResult] = []
    confidences: list[float] = []
    for pixels in tqdm(frames, desc="result of every frame", unit="frame"):
        outcome = runtime.infer(pixels, Local(), budget_ms=60_000)
        results.append(FrameResult(outcome.top[0].class_index, frozenset(p.class_index for p in outcome.top[:5])))
        confidences.append(outcome.top[0].confidence)
    signatures = [FrameSignature.of(p) for p in frames]
    split = int(len(frames) * tune_fraction)
    rows: list[dict[str, object]] = []
    for measure in ("top1", "top5"):
        for feature in FEATURES:
            tuned = tune_threshold(feature, signatures[:split], results[:split], target_agreement, measure)
            held_out = replay(feature, tuned.threshold, signatures[split:], results[split:])
            rows.append({
                "tuned_for": f"{measure}>={target_agreement}",
                "feature": feature,
                "threshold": round(tuned.threshold, 5),
                "tuned_skipped": round(tuned.skipped, 4),
                "frames": held_out.frames,
                "skipped": round(held_out.skipped, 4),
                "agreement_top1": round(held_out.agreement_top1, 4),
                "agreement_top5": round(held_out.agreement_top5, 4),
            })
    print(format_table(rows, list(rows[0])))
    flips = sum(a.top1 != b.top1 for a, b in zip(results, results[1:])) / max(len(results) - 1, 1)
    write_json(json_out, "prefilter", rows, video=str(video), frames=len(frames), tuned_on_frames=split,
               target_agreement=target_agreement, top1_changes_between_consecutive_frames=round(flips, 4),
               median_top1_confidence=round(float(np.median(confidences)), 4))
    print(f"{len(frames)} frames (tuned on the first {split}, reported on the other {len(frames) - split}); "
          f"processing every frame, top-1 changes between {flips:.1%} of consecutive frames "
          f"(median top-1 confidence {np.median(confidences):.2f}); wrote {json_out}")
    return rows


def _run(args: argparse.Namespace) -> int:
    run_prefilter_bench(args.video, args.bundle, args.json, args.target_agreement, args.tune_fraction, args.model)
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser("prefilter", help="frames skipped vs agreement of frame-difference prefilters")
    parser.add_argument("--video", default=DEFAULT_VIDEO, help="video file (default: vtest.avi from opencv-doc)")
    parser.add_argument("--bundle", default=DEFAULT_BUNDLE, help="bundle directory (exported if missing)")
    parser.add_argument("--model", default="efficientnet-lite0")
    parser.add_argument("--target-agreement", type=float, default=0.98)
    parser.add_argument("--tune-fraction", type=float, default=0.4, help="share of frames (from the start) to tune on")
    parser.add_argument("--json", required=True)
    parser.set_defaults(func=_run)
