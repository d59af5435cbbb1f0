"""`splitrt models` and `splitrt partition ...`: export, split points, profile, plan."""
from __future__ import annotations

import argparse
import functools
import json
import sys
import tempfile
from pathlib import Path
from typing import Callable

from splitrt.devices.profiles import CgroupUnavailable
from splitrt.partition.errors import TraceError

DEFAULT_WEIGHTS_DIR = "../shared/models/cifar10-resnet"


def _clear_errors(func: Callable[[argparse.Namespace], int]) -> Callable[[argparse.Namespace], int]:
    """Errors that already say what to do are printed as one line, like the CLI's own."""

    @functools.wraps(func)
    def run(args: argparse.Namespace) -> int:
        try:
            return func(args)
        except (CgroupUnavailable, TraceError) as exc:
            print(f"splitrt: error: {exc}", file=sys.stderr)
            return 2

    return run


def _models(args: argparse.Namespace) -> int:
    from splitrt.partition.models import available_models

    for name, description in available_models().items():
        print(f"{name:<26} {description}")
    return 0


def _split_modules(args: argparse.Namespace) -> list[str] | None:
    return [m for m in args.split_modules.split(",") if m] if args.split_modules else None


def _load(args: argparse.Namespace):  # type: ignore[no-untyped-def]
    from splitrt.partition.models import load_model

    return load_model(args.model, weights_dir=args.weights_dir, split_modules=_split_modules(args))


def _export(args: argparse.Namespace) -> int:
    from splitrt.partition.export import export_bundle

    splits = [s for s in args.splits.split(",") if s] if args.splits else None
    bundle = export_bundle(_load(args), args.out, splits=splits, verify=not args.no_verify)
    print(f"wrote {bundle.root}: {bundle.model_id} {bundle.content_hash}")
    if bundle.manifest.profiles:
        print(f"kept its stored profiles {', '.join(bundle.manifest.profiles)} (content hash unchanged)")
    width = max([12] + [len(point.name) for point in bundle.manifest.splits])
    print(f"{'split':<{width}} {'activation':<22} {'raw bytes':>12}")
    for point in bundle.manifest.splits:
        shape = "x".join(map(str, point.activation.shape))
        print(f"{point.name:<{width}} {point.activation.dtype + ' ' + shape:<22} {point.raw_bytes:>12,}")
    return 0


def _splits(args: argparse.Namespace) -> int:
    import torch

    model = _load(args)
    crop = model.preprocess.crop
    image = torch.zeros(1, crop, crop, 3, dtype=torch.uint8)
    print(f"{model.model_id}: {len(model.split_names)} split points (exactly one tensor crosses each)")
    with torch.no_grad():
        for name in model.split_names:
            activation = model.head(name)(image)
            shape = "x".join(map(str, activation.shape[1:]))
            print(f"  {name:<28} {str(activation.dtype).removeprefix('torch.')} {shape:<14} {activation.numel() * activation.element_size():>12,} bytes")
    return 0


def _fallback(args: argparse.Namespace) -> str:
    return "threads" if args.allow_thread_fallback else "error"


def _profile(args: argparse.Namespace) -> int:
    from splitrt.bundle import Bundle
    from splitrt.devices.profiles import get_profile
    from splitrt.partition.profile import compare_profiles, format_profile, plot_profile, profile_bundle, save_profile

    if args.bundle:
        bundle = Bundle.load(args.bundle)
    elif args.model:
        from splitrt.partition.export import load_or_export

        bundle = load_or_export(Path(".cache/bundles") / args.model, args.model)
    else:
        raise ValueError("give --bundle DIR (or --model NAME to export one under .cache/bundles)")
    device = get_profile(args.device_profile)
    result = profile_bundle(bundle, device, repeats=args.repeats, warmup=args.warmup,
                            cloud_threads=args.cloud_threads, fallback=_fallback(args))
    print(format_profile(result))
    if args.compare:
        previous = json.loads(Path(args.compare).read_text())
        rows = compare_profiles(previous, result)
        edge = [r["edge_diff_pct"] for r in rows if r["edge_diff_pct"] is not None]
        cloud = [r["cloud_diff_pct"] for r in rows if r["cloud_diff_pct"] is not None]
        cpu = [r["edge_cpu_diff_pct"] for r in rows if r["edge_cpu_diff_pct"] is not None]
        worst = max(rows, key=lambda r: max(r["edge_diff_pct"] or 0, r["cloud_diff_pct"] or 0))
        within = max(edge + cloud) <= 15.0
        print(f"vs {args.compare}: per-split median difference, edge max {max(edge):.1f}% "
              f"(median {sorted(edge)[len(edge) // 2]:.1f}%), cloud max {max(cloud):.1f}% "
              f"(median {sorted(cloud)[len(cloud) // 2]:.1f}%); worst: {worst['name']}; "
              f"{'within' if within else 'NOT within'} 15%"
              + (f"; edge CPU time max {max(cpu):.1f}%" if cpu else ""))
        result["reproducibility"] = {
            "compared_with": str(args.compare),
            "edge_max_diff_pct": max(edge),
            "cloud_max_diff_pct": max(cloud),
            "edge_cpu_max_diff_pct": max(cpu) if cpu else None,
            "within_15_pct": within,
            "per_split": rows,
        }
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(result, indent=2) + "\n")
        print(f"wrote {args.json}")
    if args.plot:
        plot_profile(result, args.plot)
        print(f"wrote {args.plot}")
    if not args.no_save:
        save_profile(bundle.root, result)
        print(f"saved into {bundle.root}/manifest.json under profiles[{device.name!r}] (content hash unchanged)")
    return 0


def _images(args: argparse.Namespace, tmp: str) -> list[Path]:
    from splitrt.imaging import list_images

    if args.images:
        return list_images(args.images)
    try:
        from splitrt.edge.sources import write_sample_images
    except ImportError:
        return []
    try:
        return write_sample_images(Path(tmp) / "images")
    except ImportError:  # scikit-image / scikit-learn absent
        return []


def _plan(args: argparse.Namespace) -> int:
    from splitrt.bundle import Bundle
    from splitrt.devices.profiles import get_profile
    from splitrt.partition.codec_costs import measure_codec_costs
    from splitrt.partition.planner import LinkState, format_plan, plan
    from splitrt.partition.profile import format_profile_identity, profile_identity, stored_profile

    bundle = Bundle.load(args.bundle)
    profile = stored_profile(bundle, args.device_profile)
    identity = profile_identity(profile)
    device = get_profile(args.device_profile)
    output = bundle.manifest.output
    result_bytes = output.nbytes
    with tempfile.TemporaryDirectory() as tmp:
        images = [] if args.offload_bytes is not None else _images(args, tmp)
        offload_codec = None if args.offload_bytes is not None else args.offload_codec
        costs = measure_codec_costs(bundle, device, args.codec, offload_codec, images, fallback=_fallback(args))
    offload_bytes = args.offload_bytes if args.offload_bytes is not None else costs.offload_bytes
    bandwidths = [float(b) for b in str(args.bandwidth_mbps).split(",") if b]
    print(f"{bundle.model_id}: {format_profile_identity(identity)}")
    print()
    report = []
    choices = []
    for bandwidth in bandwidths:
        link = LinkState(bandwidth, args.rtt_ms, args.queue_ms, args.downlink_mbps)
        result = plan(profile, link, costs.split_bytes, offload_bytes, result_bytes, costs.encode_ms)
        print(format_plan(result, link))
        print()
        report.append({"bandwidth_mbps": bandwidth, "estimates": [e.to_json() for e in result.estimates],
                       "choice": result.best.action, "choice_ms": round(result.best.total_ms, 3)})
        local = result.estimate("local").total_ms
        offload = result.estimate("offload").total_ms if offload_bytes is not None else float("nan")
        choices.append((bandwidth, result.best.action, result.best.total_ms, local, offload))
    if len(bandwidths) > 1:
        print(f"{'Mbit/s':>7}  {'choice':<20} {'expected ms':>11} {'local ms':>9} {'offload ms':>10}")
        for bandwidth, action, total, local, offload in choices:
            print(f"{bandwidth:>7g}  {action:<20} {total:>11.1f} {local:>9.1f} {offload:>10.1f}")
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps({
            "model_id": bundle.model_id, "device_profile": args.device_profile, "profile": identity, "codec": args.codec,
            "offload_codec": offload_codec, "offload_bytes": offload_bytes, "result_bytes": result_bytes,
            "rtt_ms": args.rtt_ms, "queue_ms": args.queue_ms, "plans": report}, indent=2) + "\n")
        print(f"wrote {args.json}")
    return 0


def _model_arguments(parser: argparse.ArgumentParser, required: bool = True) -> None:
    parser.add_argument("--model", required=required, help="a name from `splitrt models`")
    parser.add_argument("--weights-dir", default=DEFAULT_WEIGHTS_DIR,
                        help=f"pretrained weights for the CIFAR ResNets (default {DEFAULT_WEIGHTS_DIR})")
    parser.add_argument("--split-modules", help="explicit split points by module name (comma-separated); "
                        "those modules are kept whole: the fix for a model torch.fx cannot trace")


def register(commands: argparse._SubParsersAction) -> None:
    commands.add_parser("models", help="list the models that can be exported").set_defaults(func=_clear_errors(_models))
    partition = commands.add_parser("partition", help="offline tooling: split points, export, profile, plan")
    sub = partition.add_subparsers(dest="partition_command", required=True)

    export = sub.add_parser("export", help="export head/tail ONNX files for every split point")
    _model_arguments(export)
    export.add_argument("--out", required=True, help="bundle directory to write (replaced)")
    export.add_argument("--splits", help="comma-separated subset of split points (default: all)")
    export.add_argument("--no-verify", action="store_true", help="skip the head+tail == full check")
    export.set_defaults(func=_clear_errors(_export))

    splits = sub.add_parser("splits", help="list a model's split points and activation sizes")
    _model_arguments(splits)
    splits.set_defaults(func=_clear_errors(_splits))

    profile = sub.add_parser("profile", help="measure head/tail latency and activation size per split point")
    profile.add_argument("--bundle", help="bundle directory")
    profile.add_argument("--model", help="or: a model name (exported to .cache/bundles/NAME once)")
    profile.add_argument("--device-profile", required=True, help="x86, pi4, pi5, jetson-nano, jetson-orin-nano")
    profile.add_argument("--repeats", type=int, default=30)
    profile.add_argument("--warmup", type=int, default=5)
    profile.add_argument("--cloud-threads", type=int, default=1, help="ONNX Runtime threads for the tails")
    profile.add_argument("--json", help="write the profile here")
    profile.add_argument("--plot", help="write a latency/bytes plot (PNG) here")
    profile.add_argument("--compare", help="a previous profile JSON: report the per-split difference")
    profile.add_argument("--no-save", action="store_true", help="do not store the profile in the bundle manifest")
    profile.add_argument("--allow-thread-fallback", action="store_true", help="no cgroup: warn, limit threads only")
    profile.set_defaults(func=_clear_errors(_profile))

    plan = sub.add_parser("plan", help="expected latency of every action on a link, and the fastest")
    plan.add_argument("--bundle", required=True)
    plan.add_argument("--device-profile", required=True, help="a profile stored in the bundle")
    plan.add_argument("--bandwidth-mbps", required=True, help="uplink Mbit/s; a comma-separated list for a sweep")
    plan.add_argument("--rtt-ms", type=float, required=True)
    plan.add_argument("--queue-ms", type=float, default=0.0, help="expected cloud queue delay")
    plan.add_argument("--downlink-mbps", type=float, help="default: the same as the uplink")
    plan.add_argument("--codec", default="fp16", help="tensor codec for splits (fp32, fp16)")
    plan.add_argument("--offload-codec", default="jpeg-q90", help="image codec for offload")
    plan.add_argument("--offload-bytes", type=int, help="bytes of an offloaded image (default: measured on --images)")
    plan.add_argument("--images", help="images to measure the offload codec on (default: the bundled sample photos)")
    plan.add_argument("--json", help="write the plan(s) here")
    plan.add_argument("--allow-thread-fallback", action="store_true", help="no cgroup: warn, limit threads only")
    plan.set_defaults(func=_clear_errors(_plan))
