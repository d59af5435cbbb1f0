"""`splitrt bench serve`: N real client processes against `splitrt cloud serve`, at increasing offered load.

For each service mode (dynamic batching on, and batch size 1) the service runs as its own process; the same
client processes then offer each load level in turn, open loop (each sends on its own schedule, whatever the
replies do), every request with a deadline `budget_ms` ahead. A row per (mode, load); `FIELDS` says what each
field is (it is printed above the table and written into the JSON). In short: `throughput_rps` counts every
Result (on time or late), `goodput_rps` only those on time; the latency percentiles are over every Result, late
ones included (Rejects are fast and are left out of them, so refusing work cannot lower them; `reply_p99_ms` has
them in); `expired_executed` is the clients' own count of Results whose tail started at or after the request's
deadline, read from `Result.tail_started_ms` against the deadline the client itself set.

`summarise` compares batch size 1 at its saturation point (its row with the most throughput) with batching's
row of most throughput at a p99 no higher, and records which rows it compared.

With `--backend ray`, a fixed set of requests (real photographs, `--check-outputs`) first goes to a service on the
local executor and to the Ray service, and the largest difference between their outputs is recorded; every row
also records how many Ray Serve replicas ran at the end of its load step (`serve.status()`).

The payload is the real activation of a real photograph (scikit-image's chelsea) at the chosen split.
A last phase measures the gateway's own CPU cost per request at a fixed rate of tiny requests.
"""
from __future__ import annotations

import argparse
import json
import math
import multiprocessing as mp
import os
import random
import re
import shlex
import signal
import socket as pysocket
import subprocess
import sys
import tempfile
import time
import urllib.request
from dataclasses import asdict, dataclass, field
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Sequence

import numpy as np

from splitrt.bench.common import format_table, percentile, write_json
from splitrt.bench.plot import save_figure
from splitrt.cloud.config import ServiceConfig
from splitrt.protocol import Message, Reject, Result

FIELDS: dict[str, str] = {
    "backend": "executor of the service: local (in-process ONNX Runtime) or ray (Ray Serve)",
    "batching": "dynamic batching on (True) or batch size 1 (False)",
    "clients": "client processes",
    "offered_rps": "requests per second the clients were asked to send, in total",
    "sent_rps": "requests per second the clients managed to send",
    "results": "Results received (on time or late)",
    "throughput_rps": "Results per second, on time or late",
    "goodput_rps": "Results that arrived by their deadline, per second",
    "latency_p50_ms": "median time from send to Result, over every Result (on time or late)",
    "latency_p99_ms": "99th percentile of the time from send to Result, over every Result (on time or late)",
    "reply_p99_ms": "99th percentile of the time from send to any reply, Results and the service's Rejects",
    "late": "Results that arrived after their deadline",
    "expired_executed": "Results whose tail started at or after the request's deadline (Result.tail_started_ms "
                        "against the deadline the client set; the clients' own check)",
    "expired_executed_service": "the service's own count of the same (splitrt_expired_executed_total)",
    "unverified_results": "Results that did not say when their tail started (an older service): not checked",
    "rejected": "Rejects of any reason, plus sends refused by backpressure",
    "reject_reasons": "rejected, by reason",
    "timeouts": "requests with no reply by their deadline + 1 s",
    "mean_batch": "mean requests per executed batch",
    "ray_replicas": "Ray Serve replicas running at the end of the load step (None: not the Ray backend)",
    "passes": "load steps behind the row: with --passes N, each mode ran the whole grid N times (modes in "
              "alternating order); the row's rates, latencies and mean batch are the medians over them, its counts "
              "(results, late, expired, unverified, rejected, timeouts) the sums",
}

COLUMNS = ("backend", "batching", "offered_rps", "sent_rps", "throughput_rps", "goodput_rps", "latency_p50_ms",
           "latency_p99_ms", "reply_p99_ms", "late", "expired_executed", "expired_executed_service",
           "unverified_results", "rejected", "timeouts", "mean_batch", "ray_replicas", "passes")

SELECTION_RULE = ("batch size 1 at its saturation point: its row with the highest throughput_rps; batching: its row "
                  "with the highest throughput_rps among those whose latency_p99_ms (over every Result, on time or "
                  "late) is no higher than that row's")
DONE_WHEN_RATIO = 1.5
SERVICE_MODES = ("unbatched", "batched")  # batch size 1, and deadline-aware batching
# How `median_rows` merges the passes of one (backend, mode, offered load): medians of these, sums of the counts.
MEDIAN_FIELDS = ("sent_rps", "throughput_rps", "goodput_rps", "latency_p50_ms", "latency_p99_ms", "reply_p99_ms",
                 "mean_batch")
SUMMED_FIELDS = ("results", "late", "expired_executed", "expired_executed_service", "unverified_results", "rejected",
                 "timeouts")

CLIENT_NICENESS = 10

# Photographs scikit-image ships, for the Ray-vs-local output check (flipped copies after these).
CHECK_PHOTOS = ("chelsea", "astronaut", "coffee", "rocket", "immunohistochemistry", "hubble_deep_field", "retina",
                "colorwheel")


@dataclass(frozen=True)
class Workload:
    endpoint: str
    bundle_hash: str
    split: str
    codec: str
    dtype: str
    shape: tuple[int, ...]
    payload_file: str


# --------------------------------------------------------------------------- what a client counts (pure)


@dataclass(frozen=True)
class Sent:
    """A request on its way: when it went and its deadline, on the client's perf clock and on the wall clock."""

    sent_s: float  # time.perf_counter()
    deadline_s: float  # time.perf_counter() scale
    deadline_ms: float  # unix epoch ms: the Infer's own deadline_ms, the clock of Result.tail_started_ms


def executed_after_deadline(result: Result, deadline_ms: float) -> bool | None:
    """Whether the service started this request's tail at or after its deadline; None when the Result does not say.

    At the deadline counts as after, as in the service's own filter (a request whose deadline has come is not run).
    """
    if result.tail_started_ms is None:
        return None
    return result.tail_started_ms >= deadline_ms


@dataclass
class ReplyTally:
    """What one client saw in one load step. `add` is pure bookkeeping: no clock, no socket."""

    result_latencies_ms: list[float] = field(default_factory=list)  # every Result, on time or late
    reject_latencies_ms: list[float] = field(default_factory=list)  # every Reject from the service
    on_time: int = 0
    late: int = 0
    expired_executed: int = 0
    unverified: int = 0
    rejected: int = 0
    reasons: dict[str, int] = field(default_factory=dict)

    def add(self, message: Message, sent: Sent, arrived_s: float) -> None:
        latency_ms = (arrived_s - sent.sent_s) * 1000.0
        if isinstance(message, Result):
            self.result_latencies_ms.append(latency_ms)
            if arrived_s <= sent.deadline_s:
                self.on_time += 1
            else:
                self.late += 1
            after = executed_after_deadline(message, sent.deadline_ms)
            if after is None:
                self.unverified += 1
            elif after:
                self.expired_executed += 1
        elif isinstance(message, Reject):
            self.reject_latencies_ms.append(latency_ms)
            self.reject(message.reason.value)

    def reject(self, reason: str) -> None:
        self.rejected += 1
        self.reasons[reason] = self.reasons.get(reason, 0) + 1

    @classmethod
    def merged(cls, tallies: Sequence["ReplyTally"]) -> "ReplyTally":
        total = cls()
        for tally in tallies:
            total.result_latencies_ms += tally.result_latencies_ms
            total.reject_latencies_ms += tally.reject_latencies_ms
            total.on_time += tally.on_time
            total.late += tally.late
            total.expired_executed += tally.expired_executed
            total.unverified += tally.unverified
            total.rejected += tally.rejected
            for reason, count in tally.reasons.items():
                total.reasons[reason] = total.reasons.get(reason, 0) + count
        return total


# --------------------------------------------------------------------------- client process


def _client(index: int, workload: Workload, commands: Connection) -> None:
    """Runs in its own process: for each (rate, duration, budget, start) it gets, offer that load and report."""
    import zmq

    from splitrt.protocol import Infer, TensorSpec, decode, encode

    # Below the service's CPU priority: on a small machine the load generator must not starve what it measures.
    os.nice(CLIENT_NICENESS)
    payload = Path(workload.payload_file).read_bytes()
    spec = TensorSpec(workload.dtype, workload.shape)
    context = zmq.Context()
    socket = context.socket(zmq.DEALER)
    socket.setsockopt(zmq.LINGER, 0)
    socket.setsockopt(zmq.SNDHWM, 4)
    socket.setsockopt(zmq.SNDBUF, 256 * 1024)
    socket.setsockopt(zmq.RCVHWM, 100000)
    socket.connect(workload.endpoint)
    frame_id = index * 10**9
    rng = random.Random(index)
    while True:
        command = commands.recv()
        if command is None:
            break
        rate_rps, duration_s, budget_ms, start_at = command
        sent: dict[int, Sent] = {}
        tally = ReplyTally()
        attempted = 0
        while time.time() < start_at:
            time.sleep(0.001)
        begin = time.perf_counter()
        end = begin + duration_s
        next_send = begin + rng.expovariate(rate_rps)
        while True:
            now = time.perf_counter()
            if now >= end and (not sent or now >= end + budget_ms / 1e3 + 1.0):
                break
            if now >= next_send and now < end:
                frame_id += 1
                attempted += 1
                deadline_ms = time.time() * 1000.0 + budget_ms
                infer = Infer(frame_id, workload.bundle_hash, workload.split, workload.codec, spec, deadline_ms)
                try:
                    # Copied: a zero-copy send of a frame over 64 KB has pyzmq's garbage-collector thread release
                    # it, a second thread and GIL hand-off per request (measured: 0.69 against 0.59 ms of client
                    # CPU per conv_head request), and the clients share the service's cores.
                    socket.send_multipart(encode(infer, [payload]), zmq.NOBLOCK, copy=True)
                    sent[frame_id] = Sent(now, now + budget_ms / 1e3, deadline_ms)
                except zmq.Again:  # the service's inbound buffer for us is full: backpressure, counted as rejected
                    tally.reject("backpressure")
                next_send += rng.expovariate(rate_rps)
                continue
            wait_s = (next_send if now < end else end + budget_ms / 1e3 + 1.0) - now
            # Round up: a 0 ms poll would spin, and 16 spinning clients would starve the service of CPU.
            if socket.poll(max(1, min(math.ceil(wait_s * 1000), 50))):
                while True:
                    try:
                        frames = socket.recv_multipart(zmq.NOBLOCK, copy=False)
                    except zmq.Again:
                        break
                    arrived = time.perf_counter()
                    message = decode(frames).message
                    entry = sent.pop(getattr(message, "frame_id", -1), None)
                    if entry is not None:
                        tally.add(message, entry, arrived)
        commands.send({"attempted": attempted, "tally": asdict(tally), "timeouts": len(sent)})
        # Replies that come after the timeout belong to this round; drop them.
        while socket.poll(0):
            socket.recv_multipart()
    socket.close()
    context.term()


# --------------------------------------------------------------------------- service process


def _free_port() -> int:
    with pysocket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


class ServiceProcess:
    def __init__(self, bundle_dir: str, backend: str, batching: bool, workers: int, max_batch: int,
                 max_delay_ms: float, stats_json: Path, ray_address: str = "", extra: Sequence[str] = ()) -> None:
        self.metrics_port = _free_port()
        root = Path(__file__).resolve().parents[2]
        command = [sys.executable, "-m", "splitrt", "cloud", "serve", "--bundle", bundle_dir,
                   "--bind", "tcp://127.0.0.1:*", "--backend", backend, "--workers", str(workers),
                   "--batching" if batching else "--no-batching", "--max-batch", str(max_batch),
                   "--max-delay-ms", str(max_delay_ms), "--max-queue", "512", "--max-inflight", "32",
                   "--metrics-port", str(self.metrics_port), "--ready-json", "--warm-up",
                   "--stats-json", str(stats_json), *extra]
        if backend == "ray":
            command += ["--ray-address", ray_address]
        self.stats_json = stats_json
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(root), os.environ.get("PYTHONPATH")]))}
        self.log = tempfile.TemporaryFile()
        self.process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=self.log, text=True, env=env)
        line = self.process.stdout.readline() if self.process.stdout else ""
        if not line:
            self.log.seek(0)
            raise RuntimeError(f"the service did not start:\n{self.log.read().decode()[-3000:]}")
        self.endpoint = json.loads(line)["endpoint"]

    def metrics(self) -> dict[str, float | None]:
        """The counters the rows need; `splitrt_ray_serve_replicas` is None where the service has no such gauge."""
        text = urllib.request.urlopen(f"http://127.0.0.1:{self.metrics_port}/metrics", timeout=30).read().decode()
        values: dict[str, float | None] = {}
        for name in ("splitrt_expired_executed_total", "splitrt_results_total", "splitrt_batch_size_sum",
                     "splitrt_batch_size_count", "splitrt_ray_serve_replicas"):
            match = re.search(rf"^{name} (\S+)$", text, re.MULTILINE)
            if match:
                values[name] = float(match.group(1))  # Prometheus writes NaN and +Inf as float() reads them
            else:
                values[name] = None if name == "splitrt_ray_serve_replicas" else 0.0
        return values

    def stop(self) -> dict[str, object]:
        self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(60)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        if self.process.stdout:
            self.process.stdout.close()
        self.log.close()
        return json.loads(self.stats_json.read_text()) if self.stats_json.exists() else {}


# --------------------------------------------------------------------------- the benchmark


def _photo(name: str) -> np.ndarray:
    """A photograph scikit-image ships, by name; `NAME-flipped` is its mirror image."""
    import skimage.data

    base, _, variant = name.partition("-")
    pixels = np.asarray(getattr(skimage.data, base)())
    return np.ascontiguousarray(pixels[:, ::-1]) if variant == "flipped" else pixels


def encoded_activations(bundle_dir: str, split: str, codec_id: str,
                        photos: Sequence[str]) -> tuple[str, tuple[int, ...], str, list[bytes]]:
    """(dtype, shape, bundle hash, one encoded activation per photograph) at `split`."""
    from splitrt.bundle import HEAD_INPUT_NAME, Bundle
    from splitrt.codecs import codec_for_point
    from splitrt.devices.ort import create_session
    from splitrt.imaging import crop_for_model

    bundle = Bundle.load(bundle_dir)
    point = bundle.manifest.split(split)
    if point.head_file is None:
        raise ValueError(f"--split {split} has no head; pick a split point such as conv_head")
    head = create_session(bundle.path(point.head_file))
    codec = codec_for_point(bundle, split, codec_id)  # a bottleneck point: its own entropy codec and tables
    shape: tuple[int, ...] = ()
    encoded: list[bytes] = []
    for name in photos:
        crop = crop_for_model(_photo(name), bundle.manifest.preprocess)[None]
        activation = head.run(None, {HEAD_INPUT_NAME: crop})[0]
        shape = tuple(int(d) for d in activation.shape)
        encoded.append(bytes(memoryview(codec.encode(activation))))
    return point.activation.dtype, shape, bundle.content_hash, encoded


def _payload(bundle_dir: str, split: str, codec_id: str, folder: Path) -> tuple[Path, str, tuple[int, ...], str]:
    """The encoded activation of a real photograph at `split`; written to a file the clients read."""
    dtype, shape, bundle_hash, (encoded,) = encoded_activations(bundle_dir, split, codec_id, ["chelsea"])
    path = folder / f"payload-{split}-{codec_id}.bin"
    path.write_bytes(encoded)
    return path, dtype, shape, bundle_hash


class ClientPool:
    def __init__(self, count: int, workload: Workload) -> None:
        context = mp.get_context("spawn")
        self.pipes: list[Connection] = []
        self.processes = []
        for index in range(count):
            parent, child = context.Pipe()
            process = context.Process(target=_client, args=(index, workload, child), daemon=True)
            process.start()
            self.pipes.append(parent)
            self.processes.append(process)

    def offer(self, total_rps: float, duration_s: float, budget_ms: float) -> dict[str, object]:
        start_at = time.time() + 0.5
        for pipe in self.pipes:
            pipe.send((total_rps / len(self.pipes), duration_s, budget_ms, start_at))
        reports = [pipe.recv() for pipe in self.pipes]
        return measured_load(reports, duration_s)

    def close(self) -> None:
        for pipe in self.pipes:
            pipe.send(None)
        for process in self.processes:
            process.join(10)
            if process.is_alive():
                process.kill()


def measured_load(reports: Sequence[dict[str, object]], duration_s: float) -> dict[str, object]:
    """One load step's figures from every client's report (see FIELDS)."""
    tally = ReplyTally.merged([ReplyTally(**report["tally"]) for report in reports])
    results = tally.result_latencies_ms
    return {
        "sent_rps": sum(int(r["attempted"]) for r in reports) / duration_s,
        "results": len(results),
        "throughput_rps": len(results) / duration_s,
        "goodput_rps": tally.on_time / duration_s,
        "latency_p50_ms": percentile(results, 50),
        "latency_p99_ms": percentile(results, 99),
        "reply_p99_ms": percentile(results + tally.reject_latencies_ms, 99),
        "late": tally.late,
        "expired_executed": tally.expired_executed,
        "unverified_results": tally.unverified,
        "rejected": tally.rejected,
        "reject_reasons": tally.reasons,
        "timeouts": sum(int(r["timeouts"]) for r in reports),
    }


def _run_mode(label: str, service: ServiceProcess, workload: Workload, clients: int, rates: Sequence[float],
              duration_s: float, budget_ms: float, backend: str, batching: bool) -> list[dict[str, object]]:
    pool = ClientPool(clients, workload)
    rows: list[dict[str, object]] = []
    try:
        pool.offer(min(rates), 1.0, budget_ms)  # warm-up: connections, sessions, the cost model
        for rate in rates:
            before = service.metrics()
            measured = pool.offer(rate, duration_s, budget_ms)
            after = service.metrics()  # at the end of the load step
            batches = (after["splitrt_batch_size_count"] or 0.0) - (before["splitrt_batch_size_count"] or 0.0)
            replicas = after["splitrt_ray_serve_replicas"]
            row: dict[str, object] = {
                "backend": backend, "batching": batching, "clients": clients, "offered_rps": float(rate),
                **measured,
                "expired_executed_service": int((after["splitrt_expired_executed_total"] or 0.0)
                                                - (before["splitrt_expired_executed_total"] or 0.0)),
                "mean_batch": ((after["splitrt_batch_size_sum"] or 0.0) - (before["splitrt_batch_size_sum"] or 0.0))
                / batches if batches else 0.0,
                "ray_replicas": None if replicas is None or math.isnan(replicas) else int(replicas),
            }
            rows.append(row)
            print(format_table([row], COLUMNS).splitlines()[-1], flush=True)
    finally:
        pool.close()
    return rows


def median_rows(pass_rows: Sequence[dict[str, object]]) -> list[dict[str, object]]:
    """One row per (backend, batching, offered load) from the rows of every pass, in first-seen order: see FIELDS
    ["passes"]. A pass's NaN (a step with no Result) is left out of the median; all NaN gives NaN."""
    groups: dict[tuple[object, object, object], list[dict[str, object]]] = {}
    for row in pass_rows:
        groups.setdefault((row["backend"], row["batching"], row["offered_rps"]), []).append(row)
    merged: list[dict[str, object]] = []
    for members in groups.values():
        row = {k: v for k, v in members[0].items() if k != "pass"}
        for name in MEDIAN_FIELDS:
            values = [v for v in (float(m.get(name, math.nan)) for m in members) if not math.isnan(v)]
            row[name] = float(np.median(values)) if values else math.nan
        for name in SUMMED_FIELDS:
            row[name] = sum(int(m.get(name, 0)) for m in members)
        reasons: dict[str, int] = {}
        for m in members:
            for reason, count in dict(m.get("reject_reasons", {})).items():
                reasons[reason] = reasons.get(reason, 0) + int(count)
        row["reject_reasons"] = reasons
        row["ray_replicas"] = members[-1].get("ray_replicas")
        row["passes"] = len(members)
        merged.append(row)
    return merged


def summarise(rows: list[dict[str, object]]) -> dict[str, object]:
    """Per backend: batch size 1 at its saturation point against batching's best row at a p99 no higher.

    The rows compared are named by their index in `rows` (and their offered load). `done_when_met`: batching gives
    at least DONE_WHEN_RATIO times the throughput, and no row of the backend has a Result that ran past its
    deadline (by the clients' check or the service's) or one that could not be checked.
    """
    def rate(row: dict[str, object]) -> float:
        return float(row["throughput_rps"])

    def p99(row: dict[str, object]) -> float:
        return float(row["latency_p99_ms"])

    summary: dict[str, object] = {}
    for backend in sorted({str(r["backend"]) for r in rows}):
        mine = [(i, r) for i, r in enumerate(rows) if r["backend"] == backend]
        totals = {
            "expired_executed_total": sum(int(r["expired_executed"]) for _, r in mine),
            "expired_executed_service_total": sum(int(r.get("expired_executed_service", 0))
                                                  for _, r in mine),
            "unverified_results_total": sum(int(r.get("unverified_results", 0)) for _, r in mine),
        }
        unbatched = max(((i, r) for i, r in mine if not r["batching"]), key=lambda e: rate(e[1]), default=None)
        if unbatched is None:
            summary[backend] = {"rule": SELECTION_RULE, "batch1_row": None, "batched_row": None, "ratio": None,
                                **totals, "done_when_met": False}
            continue
        i1, r1 = unbatched
        p99_cap = p99(r1)
        # A NaN p99 (no Result at all) compares False, so such a row is never picked.
        batched = max(((i, r) for i, r in mine if r["batching"] and p99(r) <= p99_cap), key=lambda e: rate(e[1]),
                      default=None)
        ib, rb = batched if batched else (None, None)
        ratio = rate(rb) / rate(r1) if rb is not None and rate(r1) > 0 else None
        summary[backend] = {
            "rule": SELECTION_RULE,
            "batch1_row": i1, "batch1_offered_rps": r1["offered_rps"],
            "batch1_saturation_rps": r1["throughput_rps"], "batch1_saturation_goodput_rps": r1.get("goodput_rps"),
            "batch1_saturation_p99_ms": p99_cap,
            "batched_row": ib, "batched_offered_rps": rb["offered_rps"] if rb else None,
            "batched_best_rps_at_p99_le_batch1": rb["throughput_rps"] if rb else None,
            "batched_goodput_rps": rb.get("goodput_rps") if rb else None,
            "batched_p99_ms": rb["latency_p99_ms"] if rb else None,
            "batched_mean_batch": rb["mean_batch"] if rb else None,
            "ratio": ratio,
            **totals,
            "done_when_met": ratio is not None and ratio >= DONE_WHEN_RATIO and not any(totals.values()),
        }
    return summary


# --------------------------------------------------------------------------- Ray against the local executor


def fetch_outputs(endpoint: str, bundle_hash: str, split: str, codec: str, dtype: str, shape: tuple[int, ...],
                  payloads: Sequence[bytes], timeout_s: float = 60.0) -> dict[int, np.ndarray | str]:
    """Send every payload at once (so the service may batch them); frame i's output, or its Reject's reason."""
    import zmq

    from splitrt.protocol import Infer, TensorSpec, decode, encode, tensor_from_payload

    context = zmq.Context()
    socket = context.socket(zmq.DEALER)
    socket.setsockopt(zmq.LINGER, 0)
    replies: dict[int, np.ndarray | str] = {}
    try:
        socket.connect(endpoint)
        deadline_ms = time.time() * 1000.0 + timeout_s * 1000.0
        for frame_id, payload in enumerate(payloads):
            infer = Infer(frame_id, bundle_hash, split, codec, TensorSpec(dtype, shape), deadline_ms)
            socket.send_multipart(encode(infer, [payload]))
        until = time.monotonic() + timeout_s
        while len(replies) < len(payloads) and time.monotonic() < until:
            if not socket.poll(100):
                continue
            envelope = decode(socket.recv_multipart())
            message = envelope.message
            if isinstance(message, Result):
                replies[message.frame_id] = np.array(tensor_from_payload(message.outputs[0], envelope.payloads[0]))
            elif isinstance(message, Reject):
                replies[message.frame_id] = message.reason.value
    finally:
        socket.close()
        context.term()
    return replies


def compare_outputs(reference: dict[int, np.ndarray | str], candidate: dict[int, np.ndarray | str],
                    requests: int) -> dict[str, object]:
    """Identical only if every request got a Result from both and every output is equal bit for bit."""
    compared = [k for k in range(requests)
                if isinstance(reference.get(k), np.ndarray) and isinstance(candidate.get(k), np.ndarray)]
    diffs = [float(np.max(np.abs(np.asarray(reference[k], np.float64) - np.asarray(candidate[k], np.float64))))
             if np.shape(reference[k]) == np.shape(candidate[k]) else math.inf for k in compared]
    missing = {str(k): {"local": _what(reference.get(k)), "ray": _what(candidate.get(k))}
               for k in range(requests) if k not in compared}
    return {
        "requests": requests,
        "compared": len(compared),
        "max_abs_diff": max(diffs) if diffs else None,
        "outputs_identical": len(compared) == requests and all(d == 0.0 for d in diffs),
        "not_compared": missing,
    }


def _what(reply: np.ndarray | str | None) -> str:
    return "result" if isinstance(reply, np.ndarray) else (f"reject {reply}" if reply else "no reply")


def check_against_local(bundle_dir: str, folder: Path, service: ServiceProcess, batching: bool, workers: int,
                        max_batch: int, max_delay_ms: float, split: str, codec: str,
                        count: int) -> dict[str, object]:
    """The same `count` photographs' requests to a service on the local executor (same batching) and to `service`."""
    photos = [CHECK_PHOTOS[i % len(CHECK_PHOTOS)] + ("" if i < len(CHECK_PHOTOS) else "-flipped")
              for i in range(count)]
    dtype, shape, bundle_hash, payloads = encoded_activations(bundle_dir, split, codec, photos)
    local = ServiceProcess(bundle_dir, "local", batching, workers, max_batch, max_delay_ms,
                           folder / f"stats-check-{'batched' if batching else 'unbatched'}.json")
    try:
        reference = fetch_outputs(local.endpoint, bundle_hash, split, codec, dtype, shape, payloads)
    finally:
        local.stop()
    candidate = fetch_outputs(service.endpoint, bundle_hash, split, codec, dtype, shape, payloads)
    return {"photos": photos, "split": split, "codec": codec, **compare_outputs(reference, candidate, count)}


# --------------------------------------------------------------------------- the gateway's cost


def measure_gateway_cost(bundle_dir: str, folder: Path, rate_rps: float, duration_s: float, clients: int,
                         budget_ms: float) -> dict[str, object]:
    """CPU ms per request of everything but payload decode and tail compute, at `rate_rps` tiny requests."""
    path, dtype, shape, bundle_hash = _payload(bundle_dir, "pool", "fp16", folder)
    stats = folder / "gateway-stats.json"
    service = ServiceProcess(bundle_dir, "local", True, 0, 16, 2.0, stats)
    workload = Workload(service.endpoint, bundle_hash, "pool", "fp16", dtype, shape, str(path))
    pool = ClientPool(clients, workload)
    try:
        pool.offer(rate_rps, 1.0, budget_ms)
        measured = pool.offer(rate_rps, duration_s, budget_ms)
    finally:
        pool.close()
        final = service.stop()
    cpu = final.get("cpu", {})
    answered = max(1.0, float(cpu.get("answered", 1.0)))
    return {
        "split": "pool", "codec": "fp16", "payload_bytes": path.stat().st_size, "offered_rps": rate_rps,
        "throughput_rps": measured["throughput_rps"], "goodput_rps": measured["goodput_rps"],
        "latency_p50_ms": measured["latency_p50_ms"], "latency_p99_ms": measured["latency_p99_ms"],
        "answered": answered,
        "gateway_cpu_ms_per_request": 1e3 * float(cpu.get("gateway_s", 0.0)) / answered,
        "io_thread_cpu_ms_per_request": 1e3 * float(cpu.get("io_s", 0.0)) / answered,
        "dispatcher_cpu_ms_per_request": 1e3 * float(cpu.get("dispatcher_s", 0.0)) / answered,
        "worker_reply_cpu_ms_per_request": 1e3 * float(cpu.get("worker_other_s", 0.0)) / answered,
        "decode_and_tail_cpu_ms_per_request": 1e3 * float(cpu.get("decode_and_tail_s", 0.0)) / answered,
    }


def plot(rows: list[dict[str, object]], path: Path, title: str) -> None:
    """Throughput (and goodput) and latency against offered load, one colour per (backend, batching)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, (left, right) = plt.subplots(1, 2, figsize=(11, 4.2))
    series_keys = sorted({(str(r["backend"]), bool(r["batching"])) for r in rows})
    for (backend, batching), marker, colour in zip(series_keys, "osv^", ("C0", "C1", "C2", "C3")):
        series = sorted((r for r in rows if r["backend"] == backend and r["batching"] == batching),
                        key=lambda r: float(r["offered_rps"]))
        label = f"{backend}, {'batching' if batching else 'batch size 1'}"
        offered = [float(r["offered_rps"]) for r in series]
        left.plot(offered, [float(r["throughput_rps"]) for r in series], marker=marker, color=colour,
                  label=f"{label}: Results/s")
        left.plot(offered, [float(r.get("goodput_rps", math.nan)) for r in series], marker=marker, color=colour,
                  linestyle=":", alpha=0.6, label=f"{label}: on time/s")
        right.plot(offered, [float(r["latency_p99_ms"]) for r in series], marker=marker, color=colour,
                   label=f"{label} p99")
        right.plot(offered, [float(r["latency_p50_ms"]) for r in series], marker=marker, color=colour,
                   linestyle=":", alpha=0.6, label=f"{label} p50")
    top = max(float(r["offered_rps"]) for r in rows)
    left.plot([0, top], [0, top], color="grey", linewidth=0.8, linestyle="--", label="offered")
    left.set(xlabel="offered load (requests/s)", ylabel="Results/s (solid: all; dotted: on time)",
             title="throughput and goodput")
    right.set(xlabel="offered load (requests/s)", ylabel="latency of every Result, on time or late (ms)",
              title="latency")
    left.legend(fontsize=7)
    right.legend(fontsize=7)
    figure.suptitle(title, fontsize=10)
    save_figure(figure, path)


def legend(columns: Sequence[str] = COLUMNS) -> str:
    return "\n".join(f"  {name}: {FIELDS[name]}" for name in columns if name in FIELDS)


def run_serve_bench(bundle_dir: str, clients: int, duration_s: float, json_out: str, backend: str = "local",
                    rates: Sequence[float] = (100, 200, 400, 800, 1200, 1600), split: str = "conv_head",
                    codec: str = "fp16", budget_ms: float = 100.0, max_batch: int = 16, max_delay_ms: float = 4.0,
                    workers: int = 0, modes: Sequence[str] = SERVICE_MODES, ray_address: str = "",
                    gateway_cost_rps: float = 0.0, check_outputs: int = 8, passes: int = 1,
                    command: str = "") -> dict[str, object]:
    """`check_outputs`: with the Ray backend, how many fixed requests to compare with the local executor (0: none).
    `passes`: how many times each mode runs the whole grid, the modes' order reversed every other pass, so that a
    spell of other work on a shared host falls on both modes; the rows are then the medians (`median_rows`)."""
    if passes < 1:
        raise ValueError(f"--passes must be at least 1, got {passes}")
    unknown = [mode for mode in modes if mode not in SERVICE_MODES]
    if unknown or not modes:
        raise ValueError(f"--modes: {', '.join(unknown) or 'none given'}; choose from {', '.join(SERVICE_MODES)}")
    if len(set(modes)) < len(modes) or len(set(rates)) < len(rates):
        raise ValueError("--modes and --rates must not repeat a value: the rows of one load step are merged by it "
                         "(use --passes to repeat)")
    if not 0 <= check_outputs <= 2 * len(CHECK_PHOTOS):
        raise ValueError(f"--check-outputs must lie in [0, {2 * len(CHECK_PHOTOS)}], got {check_outputs}")
    pass_rows: list[dict[str, object]] = []
    gateway: dict[str, object] | None = None
    output_check: dict[str, object] = {}
    print(f"{clients} client processes; what each column is:\n{legend()}", flush=True)
    print(format_table([], COLUMNS), flush=True)
    with tempfile.TemporaryDirectory(prefix="splitrt-bench-serve-") as tmp:
        folder = Path(tmp)
        path, dtype, shape, bundle_hash = _payload(bundle_dir, split, codec, folder)
        payload_bytes = path.stat().st_size
        for index in range(passes):
            for mode in modes if index % 2 == 0 else tuple(reversed(modes)):
                if passes > 1:
                    print(f"pass {index + 1} of {passes}: {mode}", flush=True)
                batching = mode == "batched"
                service = ServiceProcess(bundle_dir, backend, batching, workers, max_batch, max_delay_ms,
                                         folder / f"stats-{mode}-{index}.json", ray_address)
                try:
                    if backend == "ray" and check_outputs and mode not in output_check:
                        output_check[mode] = check_against_local(bundle_dir, folder, service, batching, workers,
                                                                 max_batch, max_delay_ms, split, codec, check_outputs)
                        print(f"{mode}: Ray against the local executor: {json.dumps(output_check[mode])}",
                              flush=True)
                    workload = Workload(service.endpoint, bundle_hash, split, codec, dtype, shape, str(path))
                    pass_rows += [{**row, "pass": index} for row in _run_mode(
                        mode, service, workload, clients, rates, duration_s, budget_ms, backend, batching)]
                finally:
                    service.stop()
        if gateway_cost_rps > 0:
            gateway = measure_gateway_cost(bundle_dir, folder, gateway_cost_rps, duration_s, clients, budget_ms)
    rows = median_rows(pass_rows)
    summary = summarise(rows)
    if output_check and isinstance(summary.get(backend), dict):
        checks = list(output_check.values())
        diffs = [float(c["max_abs_diff"]) for c in checks if c["max_abs_diff"] is not None]
        summary[backend]["outputs_identical"] = all(bool(c["outputs_identical"]) for c in checks)
        summary[backend]["outputs_max_abs_diff"] = max(diffs) if diffs else None
    params = {"command": command, "backend": backend, "clients": clients, "split": split, "codec": codec,
              "payload_bytes": payload_bytes, "budget_ms": budget_ms, "duration_s": duration_s,
              "max_batch": max_batch, "max_delay_ms": max_delay_ms,
              "workers": ServiceConfig(backend=backend, workers=workers).worker_count, "rates": list(rates),
              "modes": list(modes), "passes": passes, "check_outputs": check_outputs if backend == "ray" else 0}
    write_json(json_out, "serve", rows, params=params, fields=FIELDS, summary=summary, gateway_cost=gateway,
               output_check=output_check or None, pass_rows=pass_rows if passes > 1 else None)
    png = Path(json_out).with_suffix(".png")
    plot(rows, png, f"{clients} client processes, split {split}/{codec}, deadline {budget_ms:.0f} ms, "
                    f"{os.cpu_count()} CPU cores shared with the clients"
                    + (f"; medians of {passes} passes" if passes > 1 else ""))
    print(format_table(rows, COLUMNS))
    print(json.dumps({"summary": summary, "gateway_cost": gateway}, indent=2))
    print(f"wrote {json_out} and {png}")
    return {"rows": rows, "summary": summary, "gateway_cost": gateway, "output_check": output_check}


# --------------------------------------------------------------------------- command line


def _run(args: argparse.Namespace) -> int:
    run_serve_bench(
        bundle_dir=args.bundle,
        clients=args.clients,
        duration_s=args.duration_s,
        json_out=args.json,
        backend=args.backend,
        rates=[float(r) for r in args.rates.split(",") if r],
        split=args.split,
        codec=args.codec,
        budget_ms=args.budget_ms,
        max_batch=args.max_batch,
        max_delay_ms=args.max_delay_ms,
        workers=args.workers,
        modes=[m for m in args.modes.split(",") if m],
        ray_address=args.ray_address,
        gateway_cost_rps=args.gateway_cost_rps,
        check_outputs=args.check_outputs,
        passes=args.passes,
        command=shlex.join(["splitrt", *sys.argv[1:]]),
    )
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    serve = sub.add_parser("serve", help="N client processes against the tail service at increasing load")
    serve.add_argument("--clients", type=int, default=16, help="client processes")
    serve.add_argument("--duration-s", type=float, default=5.0, help="seconds per load level")
    serve.add_argument("--json", required=True, help="output JSON path (the plot goes next to it as .png)")
    serve.add_argument("--backend", choices=("local", "ray"), default="local")
    serve.add_argument("--ray-address", default="", help="Ray cluster ('' = start a local one)")
    serve.add_argument("--bundle", default=".cache/bundles/efficientnet-lite0", help="bundle directory")
    serve.add_argument("--split", default="conv_head",
                       help="split point (or a bundle bottleneck point, with --codec ans) whose activation the clients send")
    serve.add_argument("--codec", default="fp16")
    serve.add_argument("--rates", default="100,200,400,800,1200,1600", help="offered loads, requests/s in total")
    serve.add_argument("--budget-ms", type=float, default=100.0, help="deadline of each request after sending")
    serve.add_argument("--max-batch", type=int, default=16)
    serve.add_argument("--max-delay-ms", type=float, default=4.0)
    serve.add_argument("--workers", type=int, default=0, help="service workers (0 = one per core)")
    serve.add_argument("--modes", default=",".join(SERVICE_MODES),
                       help=f"which service modes to run, comma-separated: {', '.join(SERVICE_MODES)}")
    serve.add_argument("--passes", type=int, default=1,
                       help="run each mode's whole grid this many times, modes in alternating order, and report "
                            "the median per load step (a shared host's noise falls on both modes)")
    serve.add_argument("--gateway-cost-rps", type=float, default=0.0,
                       help="also measure the gateway's CPU per request at this rate of tiny (pool/fp16) requests")
    serve.add_argument("--check-outputs", type=int, default=8,
                       help="with --backend ray: send this many fixed requests (photographs) to a service on the "
                            "local executor and to the Ray service first, and record the largest output difference "
                            f"(0 = skip; at most {2 * len(CHECK_PHOTOS)})")
    serve.set_defaults(func=_run)
