"""`splitrt bench codecs`."""
from __future__ import annotations

import argparse

from splitrt.edge.commands import DEFAULT_BUNDLE


def _run(args: argparse.Namespace) -> int:
    from splitrt.bench.codecs import run_codec_bench

    run_codec_bench(
        bundle_dir=args.bundle,
        images=args.images,
        codecs=[c for c in args.codecs.split(",") if c],
        splits=[s for s in args.splits.split(",") if s] if args.splits else None,
        limit=args.limit,
        json_out=args.json,
        model=args.model,
    )
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    codecs = sub.add_parser("codecs", help="fidelity and size of each (split, codec) over the real path")
    codecs.add_argument("--images", required=True, help="folder with images and labels.csv (file,class_index,...)")
    codecs.add_argument("--bundle", default=DEFAULT_BUNDLE, help="bundle directory (exported if missing)")
    codecs.add_argument("--model", default="efficientnet-lite0", help="model of the bundle and of the reference")
    codecs.add_argument("--codecs", default="fp32,fp16", help="comma-separated codecs (tensor and jpeg-qN/webp-qN)")
    codecs.add_argument("--splits", help="comma-separated split points (default: all)")
    codecs.add_argument("--limit", type=int, help="use only the first N images")
    codecs.add_argument("--json", required=True, help="output JSON path")
    codecs.set_defaults(func=_run)
