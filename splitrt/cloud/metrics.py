"""Prometheus metrics, the readiness probe, and structured (JSON) logs for the tail service.

Each service owns its registry (several services can run in one process, as tests do). The HTTP endpoint
answers `/metrics` (Prometheus text format), `/ready` (200 when serving, 503 while starting or draining)
and `/live` (200 while the process runs).
"""
from __future__ import annotations

import json
import logging
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Callable

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram, generate_latest

_LATENCY_BUCKETS_MS = (0.1, 0.25, 0.5, 1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000)
_BATCH_BUCKETS = (1, 2, 3, 4, 6, 8, 12, 16, 24, 32, 48, 64)


class ServiceMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.messages = Counter("splitrt_messages", "Messages received, by type", ["type"], registry=r)
        self.results = Counter("splitrt_results", "Requests answered with a Result", registry=r)
        self.rejects = Counter("splitrt_rejects", "Requests answered with a Reject, by reason", ["reason"], registry=r)
        self.expired_executed = Counter(
            "splitrt_expired_executed", "Requests executed after their deadline (must stay 0)", registry=r)
        self.auth_denied = Counter("splitrt_auth_denied", "CURVE handshakes refused", registry=r)
        self.disconnects = Counter(
            "splitrt_disconnects",
            "Client connections closed or dropped, and handshakes failed, by event (a frame over the transport cap "
            "drops its connection unanswered: it shows here, never as a Reject)",
            ["event"], registry=r)
        self.queue_depth = Gauge("splitrt_queue_depth", "Requests queued or running", registry=r)
        # Read at scrape time from the gateway's per-client in-flight counts (see `track_inflight_clients`).
        self.inflight_clients = Gauge("splitrt_inflight_clients", "Clients with requests in flight", registry=r)
        self.batch_size = Histogram("splitrt_batch_size", "Requests per executed batch", buckets=_BATCH_BUCKETS,
                                    registry=r)
        self.queue_ms = Histogram("splitrt_queue_ms", "Time from arrival to execution start (ms)",
                                  buckets=_LATENCY_BUCKETS_MS, registry=r)
        self.compute_ms = Histogram("splitrt_compute_ms", "Decode + tail + encode time of a batch (ms)",
                                    buckets=_LATENCY_BUCKETS_MS, registry=r)
        self.service_ms = Histogram("splitrt_service_ms", "Time from arrival to reply sent (ms)",
                                    buckets=_LATENCY_BUCKETS_MS, registry=r)

        # Label children looked up once: `labels()` takes a lock and builds a key, on every request otherwise.
        self._children: dict[tuple[Counter, str], Counter] = {}

    def message_counter(self, kind: str) -> Counter:
        """`splitrt_messages{type=kind}`."""
        return self._child(self.messages, kind)

    def reject_counter(self, reason: str) -> Counter:
        """`splitrt_rejects{reason=reason}`."""
        return self._child(self.rejects, reason)

    def _child(self, metric: Counter, label: str) -> Counter:
        child = self._children.get((metric, label))
        if child is None:
            child = self._children[(metric, label)] = metric.labels(label)
        return child

    def track_inflight_clients(self, count: Callable[[], float]) -> None:
        """`splitrt_inflight_clients` is `count()` at each scrape: nothing is added to the request path."""
        self.inflight_clients.set_function(count)

    def track_ray_serve_replicas(self, count: Callable[[], float]) -> None:
        """Add `splitrt_ray_serve_replicas`, read at each scrape (only a service on the Ray backend has it)."""
        gauge = Gauge("splitrt_ray_serve_replicas", "Ray Serve replicas running the tails (NaN: Serve could not say)",
                      registry=self.registry)
        gauge.set_function(count)

    def exposition(self) -> bytes:
        return generate_latest(self.registry)


class OpsServer:
    """`/metrics`, `/ready`, `/live` over HTTP on its own thread."""

    def __init__(self, metrics: ServiceMetrics, ready: Callable[[], bool], host: str, port: int) -> None:
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 (http.server's naming)
                path = self.path.split("?", 1)[0]
                if path == "/metrics":
                    self._reply(200, outer.metrics.exposition(), CONTENT_TYPE_LATEST)
                elif path == "/ready":
                    ok = outer.ready()
                    self._reply(200 if ok else 503, b"ready\n" if ok else b"not ready\n", "text/plain")
                elif path == "/live":
                    self._reply(200, b"live\n", "text/plain")
                else:
                    self._reply(404, b"try /metrics, /ready or /live\n", "text/plain")

            def _reply(self, status: int, body: bytes, content_type: str) -> None:
                self.send_response(status)
                self.send_header("Content-Type", content_type)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: object) -> None:
                pass

        self.metrics = metrics
        self.ready = ready
        self.httpd = ThreadingHTTPServer((host, port), Handler)
        self.httpd.daemon_threads = True
        self.port = self.httpd.server_address[1]
        self._thread = threading.Thread(target=self.httpd.serve_forever, name="ops-http", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


_STANDARD_ATTRS = set(vars(logging.makeLogRecord({}))) | {"message", "asctime"}


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger, message, and every `extra={...}` field."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, object] = {
            "ts": self.formatTime(record, "%Y-%m-%dT%H:%M:%S") + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        for key, value in vars(record).items():
            if key not in _STANDARD_ATTRS:
                entry[key] = value if isinstance(value, (str, int, float, bool, type(None))) else str(value)
        if record.exc_info:
            entry["exc"] = self.formatException(record.exc_info)
        return json.dumps(entry)


def configure_logging(log_format: str, level: str) -> None:
    import time

    root = logging.getLogger()
    root.setLevel(level.upper())
    if log_format == "json":
        formatter: logging.Formatter = JsonFormatter()
        formatter.converter = time.gmtime
        for handler in root.handlers or [logging.StreamHandler()]:
            handler.setFormatter(formatter)
            if handler not in root.handlers:
                root.addHandler(handler)
