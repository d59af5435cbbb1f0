"""`splitrt codecs ...`: train a learned bottleneck, add trained bottlenecks to a bundle, list codecs."""
from __future__ import annotations

import argparse
from pathlib import Path


def _train(args: argparse.Namespace) -> int:
    from splitrt.codecs.bottleneck.train import TrainConfig, run_training

    channels = [int(c) for c in str(args.latent_channels).split(",") if c]
    betas = [float(b) for b in str(args.beta).split(",") if b]
    configs = [
        TrainConfig(model=args.model, split=args.split, latent_channels=c, latent_stride=args.latent_stride,
                    transform=args.transform,
                    beta_per_kbit=b, views_per_image=args.views, phase1_epochs=args.epochs, phase2_steps=args.kd_steps,
                    batch_size=args.batch_size, seed=args.seed, init_from=args.init_from or "",
                    unlabelled=args.unlabelled or "")
        for c in channels for b in betas
    ]
    run_training(args.images, args.out, configs, cache_dir=args.cache, steps=_steps(args.latent_steps))
    return 0


def _steps(text: str) -> list[float]:
    return [float(s) for s in text.split(",") if s]


def _fit(args: argparse.Namespace) -> int:
    from splitrt.codecs.bottleneck.train import refit_operating_points

    description = refit_operating_points(args.bottleneck, args.images, args.cache, _steps(args.latent_steps))
    for point in description["operating_points"]:  # type: ignore[union-attr]
        print(f"step {point['step']:g}: {point['tables']} (hash {point['table_hash']})")
    return 0


def _add(args: argparse.Namespace) -> int:
    from splitrt.codecs.bottleneck.install import add_bottlenecks

    bundle = add_bottlenecks(args.bundle, [Path(p) for p in args.bottleneck], args.out)
    names = ", ".join(b.name for b in bundle.manifest.bottlenecks)
    print(f"bundle {args.out}: {bundle.content_hash[:19]} with bottleneck(s) {names}")
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    codecs = sub.add_parser("codecs", help="tensor/image codecs and learned bottlenecks")
    commands = codecs.add_subparsers(dest="codecs_command", required=True)

    train = commands.add_parser("train-bottleneck", help="distil a bottleneck at a split point (CPU, minutes)")
    train.add_argument("--model", default="efficientnet-lite0")
    train.add_argument("--split", default="b4", help="split point whose activation the student reproduces")
    train.add_argument("--images", default="../shared/data/imagenet-sample",
                       help="folder with labels.csv: trains on even class_index, evaluates on odd")
    train.add_argument("--latent-channels", default="24", help="latent channels, comma-separated for several")
    train.add_argument("--latent-stride", type=int, choices=(1, 2, 4), default=2,
                       help="2: latent at half the activation's resolution; 1: at the same (deep split points); "
                       "4 (linear only): a quarter")
    train.add_argument("--transform", choices=("conv", "linear"), default="conv",
                       help="conv: small conv networks trained from scratch; linear: one linear map per stride x stride "
                       "block, started from the blocks' principal axes; one latent unit = one std")
    train.add_argument("--beta", default="0.01", help="rate weight per kilobit, comma-separated operating points")
    train.add_argument("--views", type=int, default=6, help="views per training image (standard crop + random crops)")
    train.add_argument("--epochs", type=int, default=5, help="phase 1 epochs (activation MSE + rate)")
    train.add_argument("--kd-steps", type=int, default=40, help="phase 2 steps (+ logits through the frozen tail)")
    train.add_argument("--batch-size", type=int, default=32)
    train.add_argument("--seed", type=int, default=0)
    train.add_argument("--init-from", help="a trained bottleneck folder to fine-tune from (e.g. at a lower beta)")
    train.add_argument("--unlabelled", help="a folder of extra images (searched recursively; labels never read): "
                       "one view each, distilled from the teacher like the training views")
    train.add_argument("--cache", default=".cache/bottleneck-teacher", help="where the teacher's outputs are cached")
    train.add_argument("--latent-steps", default="1", help="quantisation steps of the latent: one operating point each")
    train.add_argument("--out", required=True, help="output folder: one sub-folder per operating point")
    train.set_defaults(func=_train)

    fit = commands.add_parser("fit-tables", help="entropy tables for (new) quantisation steps of a trained bottleneck")
    fit.add_argument("--bottleneck", required=True, help="a trained bottleneck folder")
    fit.add_argument("--images", default="../shared/data/imagenet-sample", help="the training images (even classes)")
    fit.add_argument("--latent-steps", required=True, help="comma-separated quantisation steps")
    fit.add_argument("--cache", default=".cache/bottleneck-teacher", help="where the teacher's outputs are cached")
    fit.set_defaults(func=_fit)

    add = commands.add_parser("add-bottleneck", help="write a copy of a bundle with trained bottlenecks in it")
    add.add_argument("--bundle", required=True, help="the bundle to extend (left unchanged)")
    add.add_argument("--bottleneck", required=True, nargs="+", help="trained bottleneck folder(s)")
    add.add_argument("--out", required=True, help="the new bundle's folder")
    add.set_defaults(func=_add)
