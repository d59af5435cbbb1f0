"""The `splitrt` command. Thin: each package registers its own subcommands."""
from __future__ import annotations

import argparse
import logging
import sys

from splitrt.bench import commands as bench_commands
from splitrt.cloud import commands as cloud_commands
from splitrt.devices import commands as devices_commands
from splitrt.codecs import commands as codecs_commands
from splitrt.edge import commands as edge_commands
from splitrt.partition import commands as partition_commands
from splitrt.partition import train_commands
from splitrt.processes import exit_on_sigterm


def _demo(args: argparse.Namespace) -> int:
    from splitrt.demo import DEFAULT_ACTIONS, run_demo

    return run_demo(args.bundle, args.model, actions=args.split or DEFAULT_ACTIONS, images=args.images)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="splitrt", description="Edge-cloud split-computing runtime")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    commands = parser.add_subparsers(dest="command", required=True)
    partition_commands.register(commands)
    train_commands.register(commands)
    cloud_commands.register(commands)
    edge_commands.register(commands)
    bench_commands.register(commands)
    devices_commands.register(commands)
    codecs_commands.register(commands)
    demo = commands.add_parser("demo", help="cloud + edge on loopback, a real model, real images")
    demo.add_argument("--bundle", default=edge_commands.DEFAULT_BUNDLE, help="bundle directory (exported if missing)")
    demo.add_argument("--model", default="efficientnet-lite0")
    demo.add_argument("--images", help="image folder (default: sample photographs from scikit-image/learn)")
    demo.add_argument("--split", help="comma-separated actions (default: a local/split/offload comparison)")
    demo.set_defaults(func=_demo)
    return parser


# Commands that start processes of their own (a loopback cloud, an edge, busy processes) and stop them when they
# end: on SIGTERM they end as on Ctrl-C, so that nothing they started outlives them.
STOP_CHILDREN_ON_SIGTERM = ("bench", "demo")


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    restore_sigterm = exit_on_sigterm() if args.command in STOP_CHILDREN_ON_SIGTERM else (lambda: None)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    from splitrt.bundle import BundleError
    from splitrt.edge.link import LinkError

    try:
        return int(args.func(args) or 0)
    except (BundleError, LinkError, FileNotFoundError, KeyError, ValueError) as exc:
        message = exc.args[0] if isinstance(exc, KeyError) and exc.args else exc
        print(f"splitrt: error: {message}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    finally:
        restore_sigterm()


if __name__ == "__main__":
    raise SystemExit(main())
