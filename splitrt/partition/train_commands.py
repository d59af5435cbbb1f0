"""`splitrt train ...`: offline training of the parts a bundle can carry beside the model."""
from __future__ import annotations

import argparse


DEFAULT_IMAGES = "../shared/data/imagenet-sample"
DEFAULT_CIFAR_IMAGES = "../shared/data/cifar10-test.tar"


def _exits(args: argparse.Namespace) -> int:
    from splitrt.bench.common import format_table, write_json
    from splitrt.partition.exits import DEFAULT_EXIT_POINTS, train_exits
    from splitrt.partition.models import load_model

    model = load_model(args.model, weights_dir=args.weights_dir)
    points = [p for p in args.points.split(",") if p] if args.points else list(DEFAULT_EXIT_POINTS.get(args.model, ()))
    if not points:
        raise ValueError(f"no default exit points for {args.model}: pass --points a,b,c")
    images = args.images or (DEFAULT_CIFAR_IMAGES if args.model.endswith("-cifar10") else DEFAULT_IMAGES)
    report = train_exits(model, args.bundle, images, points, copies=args.copies, epochs=args.epochs)
    print(format_table(report.rows, list(report.rows[0])))
    print("\nwith EdgeRuntime(exit_threshold=t): a frame stops at the exit when its calibrated confidence reaches t, "
          "else the model finishes from the exit's point")
    print(format_table(report.thresholds, list(report.thresholds[0])))
    bundle = report.bundle
    if args.json:
        write_json(args.json, "exits", report.rows, thresholds=report.thresholds, model=args.model, images=str(images),
                   bundle_hash=bundle.content_hash, copies=args.copies, epochs=args.epochs, split=report.split)
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
    exits.add_argument("--images", help="a folder with labels.csv (even class_index trains and calibrates, odd "
                       f"evaluates; default {DEFAULT_IMAGES}) or a CIFAR-10 .tar (per class 6/10 train, 1/10 "
                       f"calibrates, 3/10 evaluate; the default for the CIFAR models: {DEFAULT_CIFAR_IMAGES})")
    exits.add_argument("--weights-dir", default="../shared/models/cifar10-resnet",
                       help="pretrained weights of the CIFAR ResNets (ignored by the other models)")
    exits.add_argument("--points", help="comma-separated split points (default: the model's)")
    exits.add_argument("--copies", type=int, default=8, help="augmented crops per training image")
    exits.add_argument("--epochs", type=int, default=12)
    exits.add_argument("--json", help="write the report here")
    exits.set_defaults(func=_exits)
    skips = sub.add_parser("skips", help="export shallower variants (residual blocks skipped) as local exits")
    skips.add_argument("--model", default="efficientnet-lite0")
    skips.add_argument("--bundle", required=True)
    skips.add_argument("--images", default=DEFAULT_IMAGES, help="labelled images (odd classes evaluate)")
    skips.add_argument("--json", help="write the report here")
    skips.set_defaults(func=_skips)
