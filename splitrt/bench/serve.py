"""`splitrt bench serve`: N real client processes against `splitrt cloud serve`, at increasing offered load.

For each service mode (dynamic batching on, and batch size 1) the service runs as its own process; the same
client processes then offer each load level in turn, open loop (each sends on its own schedule, whatever the
replies do), every request with a deadline `budget_ms` ahead. A row per (mode, load):

    backend, batching, clients, offered_rps, throughput_rps (Results in time per second), latency_p50_ms,
    latency_p99_ms (of those Results), expired_executed (the service's own count of requests executed past
    their deadline), rejected (Rejects of any reason), timeouts (no reply by deadline + 1 s), mean_batch

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
import signal
import socket as pysocket
import subprocess
import sys
import tempfile
import time
import urllib.request
from dataclasses import dataclass
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Sequence

import numpy as np

from splitrt.bench.common import format_table, percentile, write_json
from splitrt.bench.plot import save_figure
from splitrt.cloud.config import ServiceConfig

COLUMNS = ("backend", "batching", "clients", "offered_rps", "sent_rps", "throughput_rps", "latency_p50_ms", "latency_p99_ms",
           "expired_executed", "rejected", "late", "timeouts", "mean_batch")


CLIENT_NICENESS = 10


@dataclass(frozen=True)
class Workload:
    endpoint: str
    bundle_hash: str
    split: str
    codec: str
    dtype: str
    shape: tuple[int, ...]
    payload_file: str


# --------------------------------------------------------------------------- client process


def _client(index: int, workload: Workload, commands: Connection) -> None:
    """Runs in its own process: for each (rate, duration, budget, start) it gets, offer that load and report."""
    import zmq

    from splitrt.protocol import Infer, Reject, Result, TensorSpec, decode, encode

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
        sent: dict[int, tuple[float, float]] = {}  # frame id -> (sent perf s, deadline perf s)
        latencies_ms: list[float] = []
        late = rejected = attempted = 0
        reasons: dict[str, int] = {}
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
                    socket.send_multipart(encode(infer, [payload]), zmq.NOBLOCK, copy=False)
                    sent[frame_id] = (now, now + budget_ms / 1e3)
                except zmq.Again:  # the service's inbound buffer for us is full: backpressure, counted as rejected
                    rejected += 1
                    reasons["backpressure"] = reasons.get("backpressure", 0) + 1
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
                    if entry is None:
                        continue
                    if isinstance(message, Result):
                        if arrived <= entry[1]:
                            latencies_ms.append((arrived - entry[0]) * 1000.0)
                        else:
                            late += 1
                    elif isinstance(message, Reject):
                        rejected += 1
                        reasons[message.reason.value] = reasons.get(message.reason.value, 0) + 1
        commands.send({"attempted": attempted, "latencies_ms": latencies_ms, "late": late, "rejected": rejected, "reasons": reasons,
                       "timeouts": len(sent)})
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

    def metrics(self) -> dict[str, float]:
        text = urllib.request.urlopen(f"http://127.0.0.1:{self.metrics_port}/metrics", timeout=10).read().decode()
        values: dict[str, float] = {}
        for name in ("splitrt_expired_executed_total", "splitrt_results_total", "splitrt_batch_size_sum",
                     "splitrt_batch_size_count"):
            match = re.search(rf"^{name} ([0-9.e+-]+)$", text, re.MULTILINE)
            values[name] = float(match.group(1)) if match else 0.0
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


def _payload(bundle_dir: str, split: str, codec_id: str, folder: Path) -> tuple[Path, str, tuple[int, ...], str]:
    """The encoded activation of a real photograph at `split`; written to a file the clients read."""
    import skimage.data

    from splitrt.bundle import HEAD_INPUT_NAME, Bundle
    from splitrt.codecs import get_codec
    from splitrt.devices.ort import create_session
    from splitrt.imaging import crop_for_model

    bundle = Bundle.load(bundle_dir)
    point = bundle.manifest.split(split)
    if point.head_file is None:
        raise ValueError(f"--split {split} has no head; pick a split point such as conv_head")
    crop = crop_for_model(np.asarray(skimage.data.chelsea()), bundle.manifest.preprocess)[None]
    activation = create_session(bundle.path(point.head_file)).run(None, {HEAD_INPUT_NAME: crop})[0]
    encoded = bytes(memoryview(get_codec(codec_id).encode(activation)))
    path = folder / f"payload-{split}-{codec_id}.bin"
    path.write_bytes(encoded)
    return path, point.activation.dtype, tuple(int(d) for d in activation.shape), bundle.content_hash


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
        latencies = [v for r in reports for v in r["latencies_ms"]]
        reasons: dict[str, int] = {}
        for report in reports:
            for reason, count in report["reasons"].items():
                reasons[reason] = reasons.get(reason, 0) + count
        return {
            "sent_rps": sum(int(r["attempted"]) for r in reports) / duration_s,
            "results": len(latencies),
            "throughput_rps": len(latencies) / duration_s,
            "latency_p50_ms": percentile(latencies, 50),
            "latency_p99_ms": percentile(latencies, 99),
            "rejected": sum(int(r["rejected"]) for r in reports),
            "reject_reasons": reasons,
            "late": sum(int(r["late"]) for r in reports),
            "timeouts": sum(int(r["timeouts"]) for r in reports),
        }

    def close(self) -> None:
        for pipe in self.pipes:
            pipe.send(None)
        for process in self.processes:
            process.join(10)
            if process.is_alive():
                process.kill()


def _run_mode(label: str, service: ServiceProcess, workload: Workload, clients: int, rates: Sequence[float],
              duration_s: float, budget_ms: float, backend: str, batching: bool) -> list[dict[str, object]]:
    pool = ClientPool(clients, workload)
    rows: list[dict[str, object]] = []
    try:
        pool.offer(min(rates), 1.0, budget_ms)  # warm-up: connections, sessions, the cost model
        for rate in rates:
            before = service.metrics()
            measured = pool.offer(rate, duration_s, budget_ms)
            after = service.metrics()
            batches = after["splitrt_batch_size_count"] - before["splitrt_batch_size_count"]
            row = {
                "backend": backend, "batching": batching, "clients": clients, "offered_rps": float(rate),
                "sent_rps": measured["sent_rps"], "throughput_rps": measured["throughput_rps"], "latency_p50_ms": measured["latency_p50_ms"],
                "latency_p99_ms": measured["latency_p99_ms"],
                "expired_executed": int(after["splitrt_expired_executed_total"]
                                        - before["splitrt_expired_executed_total"]),
                "rejected": measured["rejected"], "timeouts": measured["timeouts"], "late": measured["late"],
                "reject_reasons": measured["reject_reasons"],
                "mean_batch": (after["splitrt_batch_size_sum"] - before["splitrt_batch_size_sum"]) / batches
                if batches else 0.0,
            }
            rows.append(row)
            print(format_table([row], COLUMNS).splitlines()[-1], flush=True)
    finally:
        pool.close()
    return rows


def summarise(rows: list[dict[str, object]]) -> dict[str, object]:
    """Batch-1's saturation point (its best throughput) against batching's best row with a p99 no higher."""
    def best(candidates: list[dict[str, object]]) -> dict[str, object] | None:
        return max(candidates, key=lambda r: float(r["throughput_rps"]), default=None)

    summary: dict[str, object] = {}
    for backend in sorted({str(r["backend"]) for r in rows}):
        unbatched = best([r for r in rows if r["backend"] == backend and not r["batching"]])
        if unbatched is None:
            continue
        p99_cap = float(unbatched["latency_p99_ms"])
        batched = best([r for r in rows if r["backend"] == backend and r["batching"]
                        and float(r["latency_p99_ms"]) <= p99_cap])
        summary[backend] = {
            "batch1_saturation_rps": unbatched["throughput_rps"], "batch1_saturation_p99_ms": p99_cap,
            "batched_best_rps_at_p99_le_batch1": batched["throughput_rps"] if batched else None,
            "batched_p99_ms": batched["latency_p99_ms"] if batched else None,
            "ratio": (float(batched["throughput_rps"]) / float(unbatched["throughput_rps"])) if batched else None,
            "expired_executed_total": sum(int(r["expired_executed"]) for r in rows if r["backend"] == backend),
        }
    return summary


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
        "throughput_rps": measured["throughput_rps"], "latency_p50_ms": measured["latency_p50_ms"],
        "latency_p99_ms": measured["latency_p99_ms"], "answered": answered,
        "gateway_cpu_ms_per_request": 1e3 * float(cpu.get("gateway_s", 0.0)) / answered,
        "io_thread_cpu_ms_per_request": 1e3 * float(cpu.get("io_s", 0.0)) / answered,
        "dispatcher_cpu_ms_per_request": 1e3 * float(cpu.get("dispatcher_s", 0.0)) / answered,
        "worker_reply_cpu_ms_per_request": 1e3 * float(cpu.get("worker_other_s", 0.0)) / answered,
        "decode_and_tail_cpu_ms_per_request": 1e3 * float(cpu.get("decode_and_tail_s", 0.0)) / answered,
    }


def plot(rows: list[dict[str, object]], path: Path, title: str) -> None:
    """Throughput and latency against offered load, one colour per (backend, batching)."""
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
        left.plot(offered, [float(r["throughput_rps"]) for r in series], marker=marker, color=colour, label=label)
        right.plot(offered, [float(r["latency_p99_ms"]) for r in series], marker=marker, color=colour,
                   label=f"{label} p99")
        right.plot(offered, [float(r["latency_p50_ms"]) for r in series], marker=marker, color=colour,
                   linestyle=":", alpha=0.6, label=f"{label} p50")
    top = max(float(r["offered_rps"]) for r in rows)
    left.plot([0, top], [0, top], color="grey", linewidth=0.8, linestyle="--", label="offered")
    left.set(xlabel="offered load (requests/s)", ylabel="throughput (Results in time /s)", title="throughput")
    right.set(xlabel="offered load (requests/s)", ylabel="latency of Results (ms)", title="latency")
    left.legend(fontsize=8)
    right.legend(fontsize=7)
    figure.suptitle(title, fontsize=10)
    save_figure(figure, path)


def run_serve_bench(bundle_dir: str, clients: int, duration_s: float, json_out: str, backend: str = "local",
                    rates: Sequence[float] = (100, 200, 400, 800, 1200, 1600), split: str = "conv_head",
                    codec: str = "fp16", budget_ms: float = 100.0, max_batch: int = 16, max_delay_ms: float = 4.0,
                    workers: int = 0, modes: Sequence[str] = ("unbatched", "batched"), ray_address: str = "",
                    gateway_cost_rps: float = 0.0) -> dict[str, object]:
    rows: list[dict[str, object]] = []
    gateway: dict[str, object] | None = None
    print(format_table([], COLUMNS), flush=True)
    with tempfile.TemporaryDirectory(prefix="splitrt-bench-serve-") as tmp:
        folder = Path(tmp)
        path, dtype, shape, bundle_hash = _payload(bundle_dir, split, codec, folder)
        payload_bytes = path.stat().st_size
        for mode in modes:
            batching = mode == "batched"
            service = ServiceProcess(bundle_dir, backend, batching, workers, max_batch, max_delay_ms,
                                     folder / f"stats-{mode}.json", ray_address)
            try:
                workload = Workload(service.endpoint, bundle_hash, split, codec, dtype, shape, str(path))
                rows += _run_mode(mode, service, workload, clients, rates, duration_s, budget_ms, backend, batching)
            finally:
                service.stop()
        if gateway_cost_rps > 0:
            gateway = measure_gateway_cost(bundle_dir, folder, gateway_cost_rps, duration_s, clients, budget_ms)
    summary = summarise(rows)
    params = {"split": split, "codec": codec, "payload_bytes": payload_bytes,
              "budget_ms": budget_ms, "duration_s": duration_s, "max_batch": max_batch, "max_delay_ms": max_delay_ms,
              "workers": ServiceConfig(backend=backend, workers=workers).worker_count, "rates": list(rates)}
    write_json(json_out, "serve", rows, params=params, summary=summary, gateway_cost=gateway)
    png = Path(json_out).with_suffix(".png")
    plot(rows, png, f"{clients} client processes, split {split}/{codec}, deadline {budget_ms:.0f} ms, "
                    f"{os.cpu_count()} CPU cores shared with the clients")
    print(format_table(rows, COLUMNS))
    print(json.dumps({"summary": summary, "gateway_cost": gateway}, indent=2))
    print(f"wrote {json_out} and {png}")
    return {"rows": rows, "summary": summary, "gateway_cost": gateway}


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
    serve.add_argument("--split", default="conv_head", help="split point whose activation the clients send")
    serve.add_argument("--codec", default="fp16")
    serve.add_argument("--rates", default="100,200,400,800,1200,1600", help="offered loads, requests/s in total")
    serve.add_argument("--budget-ms", type=float, default=100.0, help="deadline of each request after sending")
    serve.add_argument("--max-batch", type=int, default=16)
    serve.add_argument("--max-delay-ms", type=float, default=4.0)
    serve.add_argument("--workers", type=int, default=0, help="service workers (0 = one per core)")
    serve.add_argument("--modes", default="unbatched,batched", help="which service modes to run")
    serve.add_argument("--gateway-cost-rps", type=float, default=0.0,
                       help="also measure the gateway's CPU per request at this rate of tiny (pool/fp16) requests")
    serve.set_defaults(func=_run)
