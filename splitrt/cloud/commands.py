"""`splitrt cloud ...`."""
from __future__ import annotations

import argparse
import json
import signal
import threading


def _serve(args: argparse.Namespace) -> int:
    from splitrt.bundle import Bundle
    from splitrt.cloud.service import ServiceConfig, TailService

    bundles = [Bundle.load(path) for path in args.bundle]
    config = ServiceConfig(
        bind=args.bind,
        workers=args.workers,
        intra_op_threads=args.threads,
        max_queue_depth=args.max_queue,
    )
    service = TailService(bundles, config)
    if args.warm_up:
        service.tails.warm_up()
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: service.stop())

    def announce() -> None:
        if service.wait_ready(60) and args.ready_json:
            print(json.dumps({"event": "ready", "endpoint": service.endpoint}), flush=True)

    threading.Thread(target=announce, daemon=True).start()
    service.serve()
    return 0


def register(commands: argparse._SubParsersAction) -> None:
    cloud = commands.add_parser("cloud", help="the cloud tail service")
    sub = cloud.add_subparsers(dest="cloud_command", required=True)
    serve = sub.add_parser("serve", help="serve bundles' tails over ZeroMQ")
    serve.add_argument("--bundle", action="append", required=True, help="bundle directory (repeatable)")
    serve.add_argument("--bind", default="tcp://127.0.0.1:5555", help="ZeroMQ endpoint (tcp://IP:PORT, port * = any)")
    serve.add_argument("--workers", type=int, default=1, help="tail worker threads")
    serve.add_argument("--threads", type=int, default=1, help="ONNX Runtime intra-op threads per worker")
    serve.add_argument("--max-queue", type=int, default=64, help="queued requests before Reject(overloaded)")
    serve.add_argument("--warm-up", action="store_true", help="load every tail before serving")
    serve.add_argument("--ready-json", action="store_true", help="print {'event':'ready','endpoint':...} when bound")
    serve.set_defaults(func=_serve)
