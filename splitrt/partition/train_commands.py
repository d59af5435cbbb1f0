"""`splitrt train ...`: offline training of the parts a bundle can carry beside the model."""
from __future__ import annotations

import argparse


def _exits(args: argparse.Namespace) -> int:
    from splitrt.bench.common import format_table, write_json
    from splitrt.partition.exits import DEFAULT_EXIT_POINTS, train_exits
    from splitrt.partition.models import load_model

    model = load_model(args.model)
    points = [p for p in args.points.split(",") if p] if args.points else list(DEFAULT_EXIT_POINTS.get(args.model, ()))
    if not points:
        raise ValueError(f"no default exit points for {args.model}: pass --points a,b,c")
    bundle, rows = train_exits(model, args.bundle, args.images, points, copies=args.copies, epochs=args.epochs)
    print(format_table(rows, list(rows[0])))
    if args.json:
        write_json(args.json, "exits", rows, model=args.model, bundle_hash=bundle.content_hash, copies=args.copies,
                   epochs=args.epochs, train="even class_index (4 of 5), calibration: even (1 of 5)",
                   evaluation="odd class_index")
    print(f"bundle {bundle.root} now carries exits {', '.join(e.name for e in bundle.manifest.exits)}; "
          f"new content hash {bundle.content_hash[:19]}")
    return 0


def _skips(args: argparse.Namespace) -> int:
    from splitrt.bench.common import format_table, write_json
    from splitrt.partition.exits import DEFAULT_SKIP_VARIANTS, add_skip_variants
    from splitrt.partition.models import load_model

    variants = DEFAULT_SKIP_VARIANTS.get(args.model)
    if not variants:
        raise ValueError(f"no block-skipping variants are defined for {args.model}")
    bundle, rows = add_skip_variants(load_model(args.model), args.bundle, args.images, variants)
    print(format_table(rows, list(rows[0])))
    if args.json:
        write_json(args.json, "skip-variants", rows, model=args.model, bundle_hash=bundle.content_hash,
                   evaluation="odd class_index")
    print(f"bundle {bundle.root}: exits {', '.join(e.name for e in bundle.manifest.exits)}; hash {bundle.content_hash[:19]}")
    return 0


def register(commands: argparse._SubParsersAction) -> None:
    train = commands.add_parser("train", help="offline training (early exits)")
    sub = train.add_subparsers(dest="train_command", required=True)
    exits = sub.add_parser("exits", help="train, calibrate and export early exits into a bundle")
    exits.add_argument("--model", default="efficientnet-lite0")
    exits.add_argument("--bundle", required=True, help="bundle directory to add the exits to")
    exits.add_argument("--images", default="../shared/data/imagenet-sample",
                       help="folder with labels.csv: even class_index trains/calibrates, odd evaluates")
    exits.add_argument("--points", help="comma-separated split points (default: the model's)")
    exits.add_argument("--copies", type=int, default=8, help="augmented crops per training image")
    exits.add_argument("--epochs", type=int, default=12)
    exits.add_argument("--json", help="write the report here")
    exits.set_defaults(func=_exits)
    skips = sub.add_parser("skips", help="export shallower variants (residual blocks skipped) as local exits")
    skips.add_argument("--model", default="efficientnet-lite0")
    skips.add_argument("--bundle", required=True)
    skips.add_argument("--images", default="../shared/data/imagenet-sample", help="labelled images (odd classes evaluate)")
    skips.add_argument("--json", help="write the report here")
    skips.set_defaults(func=_skips)
