"""`splitrt edge daemon --config edge.toml`: the unattended edge agent.

It streams a source (camera, video, images) through the runtime with failover to local inference, and
writes every frame's outcome: results to stdout, a JSON-lines file or a ZeroMQ PUB socket; the full
per-frame trace as JSON lines; Prometheus metrics on `/metrics`; structured (JSON) logs on stderr.
With `[policy] name = "deadline"` (or another policy) each frame's action is chosen among the options file's
actions from live link estimates (`AdaptiveRuntime`); at start each action runs `calibrate_frames` frames of
`calibration_image` on this device, and their measured times replace the file's device costs.
SIGTERM or SIGINT stops the source; the frame being processed finishes (it is bounded by its deadline),
the outputs are flushed and closed, and the process exits 0. Under systemd: `deploy/splitrt-edge.service`.
"""
from __future__ import annotations

import asyncio
import datetime
import json
import logging
import os
import signal
import sys
from collections import Counter
from typing import IO, TYPE_CHECKING, Any, Callable, Protocol

import numpy as np

from splitrt.actions import Action, Offload, Split
from splitrt.edge.config import DaemonConfig, SourceConfig, curve_keys, parse_prefilter, policy_options
from splitrt.frame import FrameOutcome

if TYPE_CHECKING:
    from splitrt.bundle import Bundle
    from splitrt.edge.adaptive import AdaptiveRuntime
    from splitrt.edge.cpu_load import CpuContention
    from splitrt.edge.link import CurveClientKeys
    from splitrt.edge.runtime import EdgeRuntime
    from splitrt.policies.policies import ActionOption

log = logging.getLogger("splitrt.edge.daemon")

CALIBRATION_FPS = 5.0  # the pace of the calibration frames (each action's first is left out)
CALIBRATION_LINK_WAIT_S = 5.0  # how long calibration waits for the cloud, when there are remote actions to measure

_RESERVED = set(vars(logging.makeLogRecord({}))) | {"message", "asctime"}


class JsonLogFormatter(logging.Formatter):
    """One JSON object per line: ts, level, logger, msg, and any `extra={...}` fields of the record."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "ts": datetime.datetime.fromtimestamp(record.created, datetime.timezone.utc).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        for key, value in vars(record).items():
            if key not in _RESERVED and not key.startswith("_"):
                entry[key] = value
        if record.exc_info:
            entry["exc"] = self.formatException(record.exc_info)
        return json.dumps(entry, default=str)


def setup_logging(level: str, fmt: str, stream: IO[str] = sys.stderr) -> None:
    handler = logging.StreamHandler(stream)
    handler.setFormatter(
        JsonLogFormatter() if fmt == "json" else logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s")
    )
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level.upper())


# --------------------------------------------------------------------------- outputs


def result_record(outcome: FrameOutcome, top_k: int) -> dict[str, object]:
    """What a consumer of results needs: the frame, how it ended, and the top-k classes."""
    return {
        "frame_id": outcome.frame_id,
        "source": outcome.source,
        "capture_ms": round(outcome.capture_ms, 3),
        "status": outcome.status.value,
        "action": outcome.action,
        "planned": outcome.planned,
        "reason": outcome.reason,
        "top": [{"label": p.label, "class_index": p.class_index, "confidence": round(p.confidence, 5)}
                for p in outcome.top[:top_k]],
        "latency_ms": round(outcome.latency_ms, 3),
        "age_ms": round(outcome.age_ms, 3),
    }


class Sink(Protocol):
    def write(self, record: dict[str, object]) -> None: ...

    def close(self) -> None: ...


class JsonLinesSink:
    def __init__(self, stream: IO[str], owned: bool) -> None:
        self.stream = stream
        self.owned = owned

    def write(self, record: dict[str, object]) -> None:
        self.stream.write(json.dumps(record) + "\n")
        self.stream.flush()

    def close(self) -> None:
        self.stream.flush()
        if self.owned:
            self.stream.close()


class ZmqPubSink:
    """Results on a PUB socket: two frames, the topic `splitrt.result` and the JSON record."""

    TOPIC = b"splitrt.result"

    def __init__(self, bind: str) -> None:
        import zmq

        self._socket = zmq.Context.instance().socket(zmq.PUB)
        self._socket.setsockopt(zmq.LINGER, 500)
        self._socket.setsockopt(zmq.SNDHWM, 1000)  # a slow subscriber loses old results, never stalls the edge
        self._socket.bind(bind)
        self.endpoint = self._socket.getsockopt_string(zmq.LAST_ENDPOINT)

    def write(self, record: dict[str, object]) -> None:
        import zmq

        try:
            self._socket.send_multipart([self.TOPIC, json.dumps(record).encode()], zmq.NOBLOCK)
        except zmq.Again:
            pass

    def close(self) -> None:
        self._socket.close()


class NullSink:
    def write(self, record: dict[str, object]) -> None:
        pass

    def close(self) -> None:
        pass


def open_results_sink(config: DaemonConfig) -> Sink:
    results = config.results
    if results.sink == "stdout":
        return JsonLinesSink(sys.stdout, owned=False)
    if results.sink == "jsonl":
        return JsonLinesSink(open(results.path, "a", encoding="utf-8"), owned=True)
    if results.sink == "zmq":
        sink = ZmqPubSink(results.bind)
        log.info("publishing results on %s", sink.endpoint, extra={"event": "results_bound", "endpoint": sink.endpoint})
        return sink
    return NullSink()


def open_source(config: SourceConfig) -> Any:
    from splitrt.edge.sources import ImageFolderSource, VideoSource, camera_source

    if config.kind == "images":
        return ImageFolderSource(config.path, repeat=10**9 if config.loop else 1, max_frames=config.max_frames)
    if config.kind == "video":
        return VideoSource(config.path, realtime=config.realtime, loop=config.loop, max_frames=config.max_frames)
    source = camera_source(config.path or "/dev/video0", config.format, config.fps, config.size)
    source.max_frames = config.max_frames
    return source


# --------------------------------------------------------------------------- the daemon


class EdgeDaemon:
    """Runs until `stop` is set (SIGTERM/SIGINT from `main`), or the source ends.

    `device` is the integration point for `splitrt.devices`: an object with optional
    `intra_op_threads` (int) and `apply()` (e.g. put the process under the profile's CPU quota);
    `None` runs as configured.
    """

    def __init__(self, config: DaemonConfig, device: Any | None = None) -> None:
        self.config = config
        self.device = device
        self.counts: Counter[str] = Counter()

    async def run(self, stop: asyncio.Event) -> int:
        from splitrt.bundle import Bundle
        from splitrt.edge.cpu_load import CpuContention
        from splitrt.edge.runtime import EdgeRuntime

        config = self.config
        curve = curve_keys(config)  # a missing or unreadable key file stops the daemon before anything starts
        options = policy_options(config)  # so does an options file that cannot be used
        if self.device is not None and hasattr(self.device, "apply"):
            self.device.apply()
        threads = int(getattr(self.device, "intra_op_threads", config.pipeline.threads) or config.pipeline.threads)
        bundle = Bundle.load(config.pipeline.bundle)
        check_options(bundle, options, config.origin)
        metrics = self._metrics()
        link = self._link(bundle, metrics, curve)
        runtime = EdgeRuntime(bundle, link, intra_op_threads=threads, action=config.pipeline.action,
                              fallback=config.pipeline.fallback)
        results = open_results_sink(config)
        trace = open(config.trace.path, "a", encoding="utf-8") if config.trace.path else None
        adaptive: "AdaptiveRuntime | None" = None
        try:
            runtime.warm_up()
            if link is not None and config.cloud.connect_timeout_ms > 0:
                await asyncio.get_running_loop().run_in_executor(
                    None, link.wait_up, config.cloud.connect_timeout_ms / 1000.0)
            if options:
                adaptive = await asyncio.get_running_loop().run_in_executor(None, self._adaptive, runtime, options,
                                                                            stop.is_set)
                if stop.is_set():  # stopped while calibrating
                    return 0
            source = open_source(config.source)
            runs = adaptive.policy.name if adaptive is not None else config.pipeline.action.describe()
            log.info("started: %s on %s, fallback %s, budget %.0f ms", runs,
                     config.source.kind, config.pipeline.fallback.describe() if config.pipeline.fallback else "none",
                     config.pipeline.budget_ms,
                     extra={"event": "started", "bundle": bundle.model_id, "cloud": config.cloud.endpoint or ""})
            frames = (adaptive or runtime).run(source, budget_ms=config.pipeline.budget_ms, stop=stop)
            async for outcome in frames:
                self.counts[outcome.status.value] += 1
                if outcome.planned:
                    self.counts["fallback"] += 1
                if metrics is not None:
                    metrics.observe(outcome)
                    if link is not None and link.heartbeat_rtt_ms is not None:
                        metrics.heartbeat_rtt.set(link.heartbeat_rtt_ms / 1000.0)
                results.write(result_record(outcome, config.results.top_k))
                if trace is not None:
                    record = outcome.to_json()
                    record["link"] = link.state.value if link is not None else "none"
                    trace.write(json.dumps(record) + "\n")
                    trace.flush()
        finally:
            if adaptive is not None and isinstance(adaptive.cpu_contention, CpuContention):
                adaptive.cpu_contention.close()
            runtime.close()
            results.close()
            if trace is not None:
                trace.close()
            if link is not None:
                link.close()
            if metrics is not None:
                metrics.close()
            log.info("stopped", extra={"event": "stopped", "frames": dict(self.counts)})
        return 0

    def _adaptive(self, runtime: "EdgeRuntime", options: "list[ActionOption]",
                  stopped: Callable[[], bool]) -> "AdaptiveRuntime":
        """The policy's runtime over `options`, their device costs measured here first when the config says so
        (`calibration_image`, `calibrate_frames`); with `hedges`, each remote option runs hedged by the local one
        most likely right and in time on this device. Runs before the source opens (`calibrate_frames` / 5 s per
        action); `stopped` (SIGTERM) ends the calibration early."""
        from splitrt.devices.ort import choose_providers
        from splitrt.edge.adaptive import AdaptiveRuntime
        from splitrt.edge.cpu_load import CpuContention, applies
        from splitrt.policies.estimators import LinkEstimates
        from splitrt.policies.policies import make_policy, with_best_hedges
        from splitrt.policies.prefilter import Prefilter

        policy, pipeline = self.config.policy, self.config.pipeline
        if policy.hedges:  # hedges are chosen here, from this device's times: the file's hedged options unhedged
            options = list({o.remote_key: o.unhedged for o in options}.values())
        # every action once (sessions loaded), and the parts of hedged ones (their remote part and their hedge),
        # which are what calibration measures
        actions = {o.key: o.action for o in options}
        parts = {p.key: p.action for o in options if o.hedge is not None for p in (o.unhedged, o.hedge)}
        runtime.warm_up([*actions.values(), *parts.values()])
        unhedged = [a for a in {**actions, **parts}.values() if getattr(a, "hedge", None) is None]
        remote = [a for a in unhedged if isinstance(a, (Split, Offload))]
        chosen = make_policy(policy.name)
        # an emulated device (`self.device`, or `splitrt devices run`, which sets SPLITRT_THREADS) keeps its own
        # speed whatever else runs on this machine
        emulated, providers = self.device is not None or "SPLITRT_THREADS" in os.environ, choose_providers()
        read_cpu, why = applies(policy.cpu_load_correction, getattr(chosen, "tracks_device", False),
                                runtime.intra_op_threads, emulated, providers)
        # the start-up calibration is netted of the load for any policy: one that does not follow the device's
        # speed keeps what it measured for good
        net_calibration, _ = applies(policy.cpu_load_correction, True, runtime.intra_op_threads, emulated, providers)
        state = "on" if read_cpu else "on for the start-up calibration only" if net_calibration else "off"
        log.info("CPU load correction %s: %s", state, why,
                 extra={"event": "cpu_load_correction", "on": read_cpu, "calibration": net_calibration})
        contention = CpuContention(threads=runtime.intra_op_threads).start() if net_calibration else None
        try:
            options = self._calibrated(runtime, options, unhedged, remote, stopped, contention)
        except BaseException:
            if contention is not None:
                contention.close()
            raise
        if contention is not None and not read_cpu:
            contention.close()
            contention = None
        if policy.hedges:
            options = with_best_hedges(options, pipeline.budget_ms)
        parsed = parse_prefilter(policy.prefilter)
        return AdaptiveRuntime(runtime, chosen, options,
                               prefilter=Prefilter(*parsed) if parsed else None,
                               estimates=LinkEstimates(initial_bps=policy.initial_uplink_mbps * 1e6,
                                                       initial_rtt_ms=policy.initial_rtt_ms),
                               probe_interval_ms=policy.probe_interval_ms, cpu_contention=contention)

    def _calibrated(self, runtime: "EdgeRuntime", options: "list[ActionOption]", unhedged: list[Action],
                    remote: list[Action], stopped: Callable[[], bool],
                    contention: "CpuContention | None") -> "list[ActionOption]":
        """`options` with the device costs measured here when the config says so (`calibration_image`,
        `calibrate_frames`): `unhedged` (`remote` among them only while the cloud is up), each frame netted of other
        processes' load where `contention` reads it."""
        from splitrt.edge.calibration import RecordedLoad, calibrate, with_samples
        from splitrt.imaging import load_rgb

        policy, link = self.config.policy, runtime.link
        if not (policy.calibrate_frames and policy.calibration_image):
            log.warning("device costs are the options file's, not measured on this device (set [policy] "
                        "calibration_image)", extra={"event": "not_calibrated"})
            return options
        if remote and link is not None and not link.is_up:
            link.wait_up(CALIBRATION_LINK_WAIT_S)  # so that the remote actions are measured too
        link_up = link is not None and link.is_up
        measure = [a for a in unhedged if link_up or a not in remote]
        log.info("calibrating %d actions on this device, %d frames each (about %.0f s)", len(measure),
                 policy.calibrate_frames, len(measure) * (policy.calibrate_frames + 1) / CALIBRATION_FPS,
                 extra={"event": "calibrating", "actions": len(measure)})
        rtt_ms = getattr(link, "heartbeat_rtt_ms", None) or policy.initial_rtt_ms
        load = (RecordedLoad(lambda start_ms, end_ms: contention.between_ms(start_ms, end_ms, runtime.clock_ms))
                if contention is not None else None)
        samples, after_link = calibrate(runtime, measure, load_rgb(policy.calibration_image), policy.calibrate_frames,
                                        CALIBRATION_FPS, rtt_ms, stopped, load)
        kept = "" if link_up or not remote else " (the cloud was away: remote actions keep the file's costs)"
        loaded = load.loaded_frames if load is not None else 0
        if load is not None and loaded:
            kept += (f"; {loaded} of {len(load.factors)} frames ran beside other processes' load (up to "
                     f"{max(load.factors):.2f}x slower): their times are netted of it")
        log.info("calibrated %d actions on this device%s", len(samples), kept,
                 extra={"event": "calibrated", "loaded_frames": loaded,
                        "edge_ms": {k: round(float(np.median(v)), 2) for k, v in samples.items() if v}})
        return with_samples(options, samples, after_link)

    def _metrics(self) -> Any:
        if not self.config.metrics.port:
            return None
        from splitrt.edge.metrics import EdgeMetrics

        metrics = EdgeMetrics()
        port = metrics.serve(self.config.metrics.port, self.config.metrics.bind)
        log.info("metrics on http://%s:%d/metrics", self.config.metrics.bind, port,
                 extra={"event": "metrics_bound", "port": port})
        return metrics

    def _link(self, bundle: Any, metrics: Any, curve: "CurveClientKeys | None" = None) -> Any:
        cloud = self.config.cloud
        if not cloud.endpoint:
            return None
        from splitrt.cloud.config import is_loopback
        from splitrt.edge.failover import ResilientLink
        from splitrt.edge.health import HeartbeatConfig

        if curve is not None:
            log.info("CURVE on for %s: client key %s", cloud.endpoint, cloud.client_key,
                     extra={"event": "curve", "endpoint": cloud.endpoint})
        elif not is_loopback(cloud.endpoint):
            log.warning("%s is not on loopback and [cloud] has no CURVE keys: a service bound off loopback "
                        "requires them (set client_key and server_public_key)", cloud.endpoint,
                        extra={"event": "curve_off", "endpoint": cloud.endpoint})
        link = ResilientLink(cloud.endpoint, bundle.content_hash, HeartbeatConfig(
            interval_ms=cloud.heartbeat_interval_ms, down_after_intervals=cloud.down_after_intervals,
            backoff_initial_ms=cloud.reconnect_initial_ms, backoff_max_ms=cloud.reconnect_max_ms), curve=curve)

        def on_state(state: Any, _now_ms: float) -> None:
            log.info("cloud link %s", state.value, extra={"event": "link", "state": state.value, "endpoint": cloud.endpoint})
            if metrics is not None:
                metrics.link_state(state, link.heartbeat_rtt_ms)

        link.add_listener(on_state)
        if metrics is not None:
            metrics.cloud_up.set(0)
        return link.start()


def check_options(bundle: "Bundle", options: "list[ActionOption]", origin: str) -> None:
    """Raises ConfigError naming the first option (or hedge) that `bundle` cannot run."""
    from splitrt.edge.config import ConfigError
    from splitrt.edge.runtime import check_action

    for option in options:
        try:
            check_action(bundle, option.action)
        except Exception as exc:  # BundleError, UnknownCodec, ValueError: all mean this bundle cannot run it
            raise ConfigError(f"{origin}: [policy] options: {option.key}: not in bundle {bundle.model_id}: "
                              f"{exc}") from None


def main(config: DaemonConfig, device: Any | None = None) -> int:
    """Run the daemon in this process until SIGTERM/SIGINT; returns the exit code."""
    setup_logging(config.log.level, config.log.format)

    async def run() -> int:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, _stopping, stop, signum)
        return await EdgeDaemon(config, device).run(stop)

    return asyncio.run(run())


def _stopping(stop: asyncio.Event, signum: int) -> None:
    log.info("%s: stopping", signal.Signals(signum).name, extra={"event": "stopping", "signal": signal.Signals(signum).name})
    stop.set()

