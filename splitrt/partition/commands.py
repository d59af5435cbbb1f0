"""`splitrt models` and `splitrt partition ...`."""
from __future__ import annotations

import argparse


def _models(args: argparse.Namespace) -> int:
    from splitrt.partition.models import available_models

    for name, description in available_models().items():
        print(f"{name:<20} {description}")
    return 0


def _export(args: argparse.Namespace) -> int:
    from splitrt.partition.export import export_bundle
    from splitrt.partition.models import load_model

    splits = [s for s in args.splits.split(",") if s] if args.splits else None
    bundle = export_bundle(load_model(args.model), args.out, splits=splits, verify=not args.no_verify)
    print(f"wrote {bundle.root}: {bundle.model_id} {bundle.content_hash}")
    print(f"{'split':<12} {'activation':<22} {'raw bytes':>12}")
    for point in bundle.manifest.splits:
        shape = "x".join(map(str, point.activation.shape))
        print(f"{point.name:<12} {point.activation.dtype + ' ' + shape:<22} {point.raw_bytes:>12,}")
    return 0


def register(commands: argparse._SubParsersAction) -> None:
    commands.add_parser("models", help="list the models that can be exported").set_defaults(func=_models)
    partition = commands.add_parser("partition", help="offline tooling: export a model to a bundle")
    sub = partition.add_subparsers(dest="partition_command", required=True)
    export = sub.add_parser("export", help="export head/tail ONNX files for every split point")
    export.add_argument("--model", required=True, help="a name from `splitrt models`")
    export.add_argument("--out", required=True, help="bundle directory to write (replaced)")
    export.add_argument("--splits", help="comma-separated subset of split points (default: all)")
    export.add_argument("--no-verify", action="store_true", help="skip the head+tail == full check")
    export.set_defaults(func=_export)
