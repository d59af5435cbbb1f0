"""`splitrt bench codecs`."""
from __future__ import annotations

import argparse

from splitrt.edge.commands import DEFAULT_BUNDLE


def _run(args: argparse.Namespace) -> int:
    from splitrt.bench.codecs import run_codec_bench

    bottlenecks = None if args.bottlenecks is None else [b for b in args.bottlenecks.split(",") if b and b != "none"]
    run_codec_bench(
        bundle_dir=args.bundle,
        images=args.images,
        codecs=[c for c in args.codecs.split(",") if c and c != "none"],
        splits=[s for s in args.splits.split(",") if s] if args.splits else None,
        limit=args.limit,
        json_out=args.json,
        model=args.model,
        parity=args.parity,
        bottlenecks=bottlenecks,
        plot_out=args.plot,
        include=args.include or (),
    )
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    codecs = sub.add_parser("codecs", help="fidelity and size of each (split, codec) over the real path")
    codecs.add_argument("--images", required=True, help="folder with images and labels.csv (file,class_index,...)")
    codecs.add_argument("--bundle", default=DEFAULT_BUNDLE, help="bundle directory (exported if missing)")
    codecs.add_argument("--model", default="efficientnet-lite0", help="model of the bundle and of the reference")
    codecs.add_argument("--codecs", default="fp32,fp16",
                        help="comma-separated codecs: tensor (fp16, q8, q4c, q8+zstd, ...) and jpeg-qN/webp-qN")
    codecs.add_argument("--splits", help="comma-separated split points for the tensor codecs (default: all)")
    codecs.add_argument("--bottlenecks", help="comma-separated bottlenecks of the bundle (default: all; none: skip)")
    codecs.add_argument("--parity", choices=("all", "even", "odd"), default="all",
                        help="images whose class_index is even/odd only (bottlenecks train on even, score on odd)")
    codecs.add_argument("--limit", type=int, help="use only the first N images")
    codecs.add_argument("--json", required=True, help="output JSON path")
    codecs.add_argument("--plot", help="also write the rate-accuracy PNG here")
    codecs.add_argument("--include", nargs="+", help="JSON of earlier runs on the same images: their rows join the table")
    codecs.set_defaults(func=_run)
