"""`splitrt cloud serve` and `splitrt cloud keygen`."""
from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import signal
import sys
import threading

log = logging.getLogger("splitrt.cloud")


def build_config(args: argparse.Namespace):  # type: ignore[no-untyped-def]
    """The config file (if any), then every flag given on the command line on top of it."""
    from splitrt.cloud.config import ConfigError, CurveSettings, ServiceConfig, load_config

    config = load_config(args.config) if args.config else ServiceConfig()
    overrides: dict[str, object] = {}
    for flag, name in (("bind", "bind"), ("workers", "workers"), ("threads", "intra_op_threads"),
                       ("max_queue", "max_queue_depth"), ("max_inflight", "max_inflight_per_client"),
                       ("backend", "backend"), ("ray_address", "ray_address"), ("max_batch", "max_batch_size"),
                       ("max_delay_ms", "max_queue_delay_ms"), ("metrics_port", "metrics_port"),
                       ("batching", "batching"), ("drain_timeout_s", "drain_timeout_s"),
                       ("min_time_left_ms", "min_time_left_ms")):
        value = getattr(args, flag, None)
        if value is not None:
            overrides[name] = value
    if args.bundle:
        overrides["bundles"] = tuple(args.bundle)
    if args.preferred_batch:
        overrides["preferred_batch_sizes"] = tuple(int(v) for v in args.preferred_batch.split(",") if v)
    if args.log_json:
        overrides["log_format"] = "json"
    curve = dataclasses.asdict(config.curve)
    for flag, name in (("curve", "mode"), ("server_key", "server_secret_key"), ("allowed_clients", "allowed_clients_dir")):
        value = getattr(args, flag, None)
        if value is not None:
            curve[name] = value
    overrides["curve"] = CurveSettings(**curve)
    config = dataclasses.replace(config, **overrides)
    if not config.bundles:
        raise ConfigError("no bundle to serve: pass --bundle DIR or set [server].bundles in the config file")
    config.batch_policy()
    return config


def _serve(args: argparse.Namespace) -> int:
    from splitrt.bundle import Bundle
    from splitrt.cloud.metrics import configure_logging
    from splitrt.cloud.service import TailService

    config = build_config(args)
    configure_logging(config.log_format, config.log_level)
    # The gateway thread must not wait the default 5 ms for the GIL behind a worker's Python code.
    sys.setswitchinterval(0.0005)
    bundles = [Bundle.load(path) for path in config.bundles]
    runner = None
    if config.backend == "ray":
        from splitrt.cloud.ray_backend import RayTailRunner

        runner = RayTailRunner(bundles, address=config.ray_address, intra_op_threads=config.intra_op_threads,
                               max_batch_size=config.max_batch_size if config.batching else 1,
                               min_time_left_ms=config.min_time_left_ms)
    service = TailService(bundles, config, runner=runner)
    if args.warm_up:
        service.tails.warm_up()
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: service.stop())

    def announce() -> None:
        if service.wait_ready(120) and args.ready_json:
            port = service.ops.port if service.ops else None
            print(json.dumps({"event": "ready", "endpoint": service.endpoint, "metrics_port": port}), flush=True)

    threading.Thread(target=announce, daemon=True).start()
    try:
        service.serve()
    finally:
        service.tails.close()
    if args.stats_json:
        with open(args.stats_json, "w", encoding="utf-8") as handle:
            json.dump({"counters": dict(service.counters), "cpu": service.cpu_totals(),
                       "in_flight_at_stop": service.in_flight_at_stop}, handle, indent=2)
    return 0


def _keygen(args: argparse.Namespace) -> int:
    from splitrt.cloud.security import generate_keys

    public, secret = generate_keys(args.out, args.name)
    print(f"public key: {public}  (give it to the other side: clients' go into the server's allowed_clients_dir)")
    print(f"secret key: {secret}  (keep it; mode 0600)")
    return 0


def register(commands: argparse._SubParsersAction) -> None:
    cloud = commands.add_parser("cloud", help="the cloud tail service")
    sub = cloud.add_subparsers(dest="cloud_command", required=True)
    serve = sub.add_parser("serve", help="serve bundles' tails over ZeroMQ",
                           description="Flags override the values of --config (a TOML file, see deploy/cloud.toml).")
    serve.add_argument("--config", help="TOML config file ([server], [batching], [limits], [security], [ops])")
    serve.add_argument("--bundle", action="append", help="bundle directory (repeatable)")
    serve.add_argument("--bind", help="ZeroMQ endpoint (tcp://IP:PORT, port * = any); default tcp://127.0.0.1:5555")
    serve.add_argument("--backend", choices=("local", "ray"), help="executor: in-process ONNX Runtime or Ray Serve")
    serve.add_argument("--ray-address", help="Ray cluster to join ('' = start a local one, 'auto', ray://host:port)")
    serve.add_argument("--workers", type=int, help="tail worker threads (0 = one per CPU core)")
    serve.add_argument("--threads", type=int, help="ONNX Runtime intra-op threads per worker")
    serve.add_argument("--max-queue", type=int, help="queued requests before Reject(overloaded)")
    serve.add_argument("--max-inflight", type=int, help="requests in flight per client before Reject(overloaded)")
    serve.add_argument("--batching", action=argparse.BooleanOptionalAction, help="dynamic batching (default on)")
    serve.add_argument("--max-batch", type=int, help="largest batch")
    serve.add_argument("--preferred-batch", help="comma-separated preferred batch sizes")
    serve.add_argument("--max-delay-ms", type=float, help="longest a request waits for a batch to fill")
    serve.add_argument("--min-time-left-ms", type=float,
                       help="a request with less than this left before its deadline is answered expired, not run "
                            "(default 20)")
    serve.add_argument("--curve", choices=("auto", "on", "off"), help="CURVE encryption + auth (auto: off on loopback)")
    serve.add_argument("--server-key", help="server *.key_secret file (from `splitrt cloud keygen`)")
    serve.add_argument("--allowed-clients", help="folder of allowed client *.key files (rescanned while serving)")
    serve.add_argument("--metrics-port", type=int, help="HTTP port for /metrics, /ready, /live (0 = off)")
    serve.add_argument("--drain-timeout-s", type=float, help="longest SIGTERM waits for in-flight requests")
    serve.add_argument("--log-json", action="store_true", help="structured logs: one JSON object per line")
    serve.add_argument("--warm-up", action="store_true", help="load every tail before serving")
    serve.add_argument("--ready-json", action="store_true", help="print {'event':'ready','endpoint':...} when bound")
    serve.add_argument("--stats-json", help="write counters and CPU time by role here on exit")
    serve.set_defaults(func=_serve)
    keygen = sub.add_parser("keygen", help="create a CURVE key pair (NAME.key public, NAME.key_secret secret)")
    keygen.add_argument("--out", required=True, help="folder for the key files")
    keygen.add_argument("--name", default="server", help="file name stem (server, or a client's name)")
    keygen.set_defaults(func=_keygen)
