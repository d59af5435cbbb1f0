"""`splitrt edge ...`."""
from __future__ import annotations

import argparse
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from splitrt.edge.link import CurveClientKeys

DEFAULT_BUNDLE = ".cache/bundles/efficientnet-lite0"


def _run(args: argparse.Namespace) -> int:
    from splitrt.actions import parse_action
    from splitrt.bundle import Bundle
    from splitrt.edge.agent import run_agent
    from splitrt.frame import Status

    curve = _curve_keys(args)
    bundle = Bundle.load(args.bundle)
    actions = [parse_action(text, args.codec) for text in args.split.split(",") if text]
    outcomes = run_agent(
        bundle,
        args.source,
        actions,
        args.connect,
        budget_ms=args.budget_ms,
        intra_op_threads=args.threads,
        json_out=args.json,
        handshake_timeout_ms=args.connect_timeout_ms,
        curve=curve,
    )
    failed = [o for o in outcomes if o.status is Status.FAILED]
    return 1 if failed and len(failed) == len(outcomes) else 0


_KEY_FLAGS = {"client_key": "--client-key", "server_public_key": "--server-key"}


def _curve_keys(args: argparse.Namespace) -> "CurveClientKeys | None":
    """CURVE keys from --client-key and --server-key (both or neither); errors name the flag."""
    from splitrt.edge.link import CurveClientKeys, CurveKeyError

    if not args.client_key and not args.server_key:
        return None
    if not args.client_key or not args.server_key:
        missing = "--client-key" if not args.client_key else "--server-key"
        raise ValueError(f"{missing} is missing: CURVE needs this edge's NAME.key_secret (--client-key) and the "
                         "service's public NAME.key (--server-key)")
    try:
        return CurveClientKeys.load(args.server_key, args.client_key)
    except CurveKeyError as exc:
        raise CurveKeyError(exc.key, f"{_KEY_FLAGS[exc.key]}: {exc}") from None


def _daemon(args: argparse.Namespace) -> int:
    from splitrt.edge.config import load_config

    config = load_config(args.config)
    if args.check:
        if config.policy.options:  # the policy's actions against the bundle, as the daemon checks them at start
            from splitrt.bundle import Bundle, BundleError
            from splitrt.edge.config import ConfigError, policy_options
            from splitrt.edge.daemon import check_options

            try:
                bundle = Bundle.load(config.pipeline.bundle, verify=False)
            except (BundleError, OSError) as exc:
                raise ConfigError(f"{args.config}: [pipeline] bundle: {exc}") from None
            check_options(bundle, policy_options(config), config.origin)
        print(f"{args.config}: ok")
        return 0
    from splitrt.edge.daemon import main

    return main(config)


def register(commands: argparse._SubParsersAction) -> None:
    edge = commands.add_parser("edge", help="the edge agent")
    sub = edge.add_subparsers(dest="edge_command", required=True)
    run = sub.add_parser("run", help="classify images: locally, split, or offloaded")
    run.add_argument("--bundle", default=DEFAULT_BUNDLE, help="bundle directory")
    run.add_argument("--connect", help="tail service endpoint, e.g. tcp://127.0.0.1:5555")
    run.add_argument("--source", required=True, help="an image file or a folder of images")
    run.add_argument(
        "--split",
        default="local",
        help="comma-separated actions: local, offload[/jpeg-q90], or a split point[/codec] such as b4/fp16",
    )
    run.add_argument("--codec", default=None, help="default codec for split points (fp32, fp16)")
    run.add_argument("--budget-ms", type=float, default=1000.0, help="deadline of each frame after its capture")
    run.add_argument("--threads", type=int, default=1, help="ONNX Runtime intra-op threads")
    run.add_argument("--json", help="write one JSON line per frame here")
    run.add_argument("--connect-timeout-ms", type=float, default=10000.0, help="how long to wait for the handshake")
    run.add_argument("--client-key", help="CURVE: this edge's NAME.key_secret (`splitrt cloud keygen`); needed for a "
                                          "service bound off loopback, whose allowed_clients_dir holds NAME.key")
    run.add_argument("--server-key", "--server-public-key", dest="server_key",
                     help="CURVE: the service's public NAME.key (not its .key_secret)")
    run.set_defaults(func=_run)

    daemon = sub.add_parser("daemon", help="the unattended agent: stream a source with failover, metrics and logs")
    daemon.add_argument("--config", required=True, help="TOML configuration (see deploy/edge.toml)")
    daemon.add_argument("--check", action="store_true", help="validate the configuration and exit")
    daemon.set_defaults(func=_daemon)
