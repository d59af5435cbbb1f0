"""`splitrt devices ...`: detect the board, read telemetry, list and calibrate emulated device profiles."""
from __future__ import annotations

import argparse
import functools
import json
import sys
from pathlib import Path
from typing import Callable

from splitrt.devices.profiles import CgroupUnavailable


def _clear_errors(func: Callable[[argparse.Namespace], int]) -> Callable[[argparse.Namespace], int]:
    """Errors that already say what to do are printed as one line, like the CLI's own."""

    @functools.wraps(func)
    def run(args: argparse.Namespace) -> int:
        try:
            return func(args)
        except (CgroupUnavailable,) as exc:
            print(f"splitrt: error: {exc}", file=sys.stderr)
            return 2

    return run


def _detect(args: argparse.Namespace) -> int:
    from splitrt.devices.detect import detect_board
    from splitrt.devices.ort import choose_providers

    board = detect_board()
    print(f"board:     {board.kind} ({board.model})")
    print(f"cpu:       {board.machine}, {board.cpu_count} cores")
    if board.l4t_release:
        print(f"l4t:       {board.l4t_release}")
    print(f"providers: {', '.join(choose_providers())}")
    print(f"profile:   {board.suggested_profile} (closest emulated profile)")
    return 0


def _telemetry(args: argparse.Namespace) -> int:
    from splitrt.devices.telemetry import read_telemetry

    print(json.dumps(read_telemetry().to_json(), indent=2))
    return 0


def _profiles(args: argparse.Namespace) -> int:
    from splitrt.devices.profiles import PROFILES

    print(f"{'profile':<18} {'cpu share':>9} {'dilated':>7} {'threads':>7} {'published ms':>12}  basis      description")
    for p in PROFILES.values():
        published = "-" if p.published_ms is None else f"{p.published_ms:.1f}"
        print(f"{p.name:<18} {p.cpu_share:>9.2f} {p.dilation_share:>7.3f} {p.threads:>7} {published:>12}  {p.basis:<10} "
              f"{p.description}")
    return 0


def _calibrate(args: argparse.Namespace) -> int:
    from splitrt.bundle import Bundle
    from splitrt.devices.calibrate import calibrate, calibrate_all
    from splitrt.devices.profiles import PROFILES, get_profile

    bundle = Bundle.load(args.bundle)
    names = list(PROFILES) if args.profiles == "all" else [n for n in args.profiles.split(",") if n]
    crop = bundle.manifest.preprocess.crop
    fallback = "threads" if args.allow_thread_fallback else "error"
    results = []
    print(f"{bundle.model_id}, full model, {args.repeats} runs after {args.warmup} warm-up runs per profile")
    print(f"{'profile':<18} {'share':>6} {'thr':>3} {'published ms':>12} {'measured p50':>12} {'p95':>8} {'ratio':>6} "
          f"{'cpu ms':>7} {'quota-bound ms':>14} {'share for published':>19}  basis")
    model_path = bundle.path(bundle.manifest.full_file)
    shape = (1, crop, crop, 3)
    if args.sequential or args.allow_thread_fallback:
        measured = [calibrate(get_profile(n), model_path, shape, args.repeats, args.warmup, fallback) for n in names]
    else:
        measured = calibrate_all([get_profile(n) for n in names], model_path, shape, args.repeats, args.warmup)
    for name, result in zip(names, measured):
        row = result.to_json()
        results.append(row)
        published = "-" if row["published_ms"] is None else f"{row['published_ms']:.1f}"
        ratio = "-" if row["ratio"] is None else f"{row['ratio']:.2f}"
        share = "-" if row["share_from_cpu_time"] is None else f"{row['share_from_cpu_time']:.3f}"
        cpu = "-" if row["cpu_ms_p50"] is None else f"{row['cpu_ms_p50']:.2f}"
        bound = "-" if row["quota_bound_ms"] is None else f"{row['quota_bound_ms']:.1f}"
        print(f"{name:<18} {row['cpu_share']:>6.2f} {row['threads']:>3} {published:>12} {row['measured_ms_p50']:>12.2f} "
              f"{row['measured_ms_p95']:>8.2f} {ratio:>6} {cpu:>7} {bound:>14} {share:>19}  {row['basis']}")
    print("measured p50: wall clock under the quota (other processes' load adds to it); cpu ms: this machine's CPU "
          "time per run; quota-bound ms = cpu ms / share; share for published = cpu ms / published ms")
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        import os

        document = {"model_id": bundle.model_id, "load_average_1m": round(os.getloadavg()[0], 2), "profiles": results}
        Path(args.json).write_text(json.dumps(document, indent=2) + "\n")
        print(f"wrote {args.json}")
    return 0


def _run(args: argparse.Namespace) -> int:
    from splitrt.devices.profiles import get_profile, run_under_profile

    command = args.argv[1:] if args.argv and args.argv[0] == "--" else args.argv
    if not command:
        raise ValueError("give the command to run after --, e.g. splitrt devices run --profile pi4 -- splitrt edge run ...")
    return run_under_profile(get_profile(args.profile), command).returncode


def register(commands: argparse._SubParsersAction) -> None:
    devices = commands.add_parser("devices", help="board detection, telemetry, emulated device profiles")
    sub = devices.add_subparsers(dest="devices_command", required=True)
    sub.add_parser("detect", help="which board this is, and its execution providers").set_defaults(func=_clear_errors(_detect))
    sub.add_parser("telemetry", help="CPU, memory, thermal zones (and jetson-stats) as JSON").set_defaults(func=_clear_errors(_telemetry))
    sub.add_parser("profiles", help="the emulated device profiles").set_defaults(func=_clear_errors(_profiles))
    calibrate = sub.add_parser("calibrate", help="measure each profile's full-model latency vs its published figure")
    calibrate.add_argument("--bundle", required=True, help="an EfficientNet-Lite0 bundle (its full.onnx is timed)")
    calibrate.add_argument("--profiles", default="all", help="comma-separated profile names (default: all)")
    calibrate.add_argument("--repeats", type=int, default=40)
    calibrate.add_argument("--warmup", type=int, default=5)
    calibrate.add_argument("--allow-thread-fallback", action="store_true", help="no cgroup: warn, limit threads only")
    calibrate.add_argument("--sequential", action="store_true",
                           help="one profile after the other (default: round-robin, one sample of each in turn)")
    calibrate.add_argument("--json", help="write the table as JSON here")
    calibrate.set_defaults(func=_clear_errors(_calibrate))
    run = sub.add_parser("run", help="run a command under a profile's CPU quota: devices run --profile pi4 -- CMD")
    run.add_argument("--profile", required=True)
    run.add_argument("argv", nargs=argparse.REMAINDER)
    run.set_defaults(func=_clear_errors(_run))
