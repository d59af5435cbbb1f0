"""Prometheus metrics of the edge agent, on a registry of its own (never the process-global one).

Served on `/metrics` by the daemon when `[metrics] port` is set. Needs `prometheus-client`
(`pip install 'splitrt[edge]'`). The device's load (`splitrt.devices.telemetry`: CPU, memory, thermal
zones) is read at every scrape, so it costs nothing between scrapes and is never stale.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Iterator

from splitrt.devices.telemetry import THERMAL_ROOT, read_telemetry
from splitrt.edge.health import LinkState
from splitrt.frame import FrameOutcome

try:
    from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server
    from prometheus_client.core import GaugeMetricFamily, Metric
except ImportError as exc:  # pragma: no cover - depends on the installed extras
    raise ImportError("metrics need prometheus-client: pip install 'splitrt[edge]'") from exc

LATENCY_BUCKETS_S = (0.005, 0.01, 0.02, 0.035, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.5, 1.0, 2.0, 5.0)


class TelemetryCollector:
    """Device gauges read at scrape time: CPU % (whole machine, since the previous scrape), memory used and
    total, and one temperature per thermal zone (none on a machine without `/sys/class/thermal` zones)."""

    def __init__(self, thermal_root: Path = THERMAL_ROOT) -> None:
        self.thermal_root = thermal_root
        read_telemetry(thermal_root, jetson_stats=_no_jetson)  # primes psutil: the first CPU % is since now

    def _families(self) -> tuple[GaugeMetricFamily, GaugeMetricFamily, GaugeMetricFamily, GaugeMetricFamily]:
        return (
            GaugeMetricFamily("splitrt_edge_cpu_percent", "Whole-machine CPU use since the previous scrape (0-100)"),
            GaugeMetricFamily("splitrt_edge_memory_used_bytes", "Memory in use (total minus available)"),
            GaugeMetricFamily("splitrt_edge_memory_total_bytes", "Physical memory"),
            GaugeMetricFamily("splitrt_edge_temperature_celsius", "Thermal zone temperature", labels=["zone"]),
        )

    def describe(self) -> Iterator[Metric]:
        return iter(self._families())

    def collect(self) -> Iterator[Metric]:
        # jetson-stats is left out: it talks to its own service, too slow for every scrape.
        telemetry = read_telemetry(self.thermal_root, jetson_stats=_no_jetson)
        cpu, used, total, temperature = self._families()
        cpu.add_metric([], telemetry.cpu_percent)
        used.add_metric([], telemetry.memory_used_bytes)
        total.add_metric([], telemetry.memory_total_bytes)
        for zone, celsius in sorted(telemetry.temperatures_c.items()):
            temperature.add_metric([zone], celsius)
        return iter((cpu, used, total, temperature))


def _no_jetson() -> None:
    return None


class EdgeMetrics:
    def __init__(self, registry: CollectorRegistry | None = None, thermal_root: Path = THERMAL_ROOT) -> None:
        self.registry = registry or CollectorRegistry()
        r = self.registry
        self.telemetry = TelemetryCollector(thermal_root)
        r.register(self.telemetry)
        self.frames = Counter("splitrt_edge_frames", "Frames ended, by the action that ran and how it ended",
                              ["action", "status"], registry=r)
        self.fallbacks = Counter("splitrt_edge_fallbacks", "Frames that ran the fallback instead of the planned action",
                                 ["planned"], registry=r)
        self.hedge_answers = Counter("splitrt_edge_hedge_answers", "Hedged frames answered by their hedge (the "
                                     "cloud's reply was late or refused), by action", ["action"], registry=r)
        self.deadline_misses = Counter("splitrt_edge_deadline_misses", "Frames that ended after their deadline",
                                       registry=r)
        self.latency = Histogram("splitrt_edge_frame_latency_seconds", "From the start of processing to the outcome",
                                 ["action"], buckets=LATENCY_BUCKETS_S, registry=r)
        self.age = Histogram("splitrt_edge_result_age_seconds", "From capture to outcome (includes waiting)",
                             buckets=LATENCY_BUCKETS_S, registry=r)
        self.bytes_sent = Counter("splitrt_edge_sent_bytes", "Bytes sent to the cloud", registry=r)
        self.cloud_up = Gauge("splitrt_edge_cloud_up", "1 while the cloud link is up (heartbeats answered)", registry=r)
        self.link_transitions = Counter("splitrt_edge_link_transitions", "Cloud link state changes", ["state"],
                                        registry=r)
        self.heartbeat_rtt = Gauge("splitrt_edge_heartbeat_rtt_seconds", "Last heartbeat round trip", registry=r)
        self._server: Any = None

    def observe(self, outcome: FrameOutcome) -> None:
        self.frames.labels(outcome.action, outcome.status.value).inc()
        if outcome.planned:
            self.fallbacks.labels(outcome.planned).inc()
        if outcome.hedge_answered:
            self.hedge_answers.labels(outcome.action).inc()
        if outcome.missed_deadline:
            self.deadline_misses.inc()
        if outcome.ok:
            self.latency.labels(outcome.action).observe(outcome.latency_ms / 1000.0)
        if outcome.age_ms > 0:
            self.age.observe(outcome.age_ms / 1000.0)
        if outcome.bytes_sent:
            self.bytes_sent.inc(outcome.bytes_sent)

    def link_state(self, state: LinkState, heartbeat_rtt_ms: float | None = None) -> None:
        self.cloud_up.set(1 if state is LinkState.UP else 0)
        self.link_transitions.labels(state.value).inc()
        if heartbeat_rtt_ms is not None:
            self.heartbeat_rtt.set(heartbeat_rtt_ms / 1000.0)

    def serve(self, port: int, bind: str = "127.0.0.1") -> int:
        """Serve `/metrics` over HTTP; returns the port (useful with port 0... which the daemon treats as off)."""
        server, _thread = start_http_server(port, addr=bind, registry=self.registry)
        self._server = server
        return int(server.server_address[1])

    def close(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
