"""The Ray Serve backend: each bundle's tails run as a Ray Serve deployment that batches and autoscales.

The gateway stays the same (admission, deadline-aware batching, replies); only `TailRunner.run` changes:
instead of an in-process ONNX Runtime session, a batch goes to the bundle's deployment through a
deployment handle. The deployment merges batches that reach one replica at the same time (`serve.batch`,
useful when several gateways share it), and Serve adds or removes replicas with the load.

A batch may queue at a replica (Serve's own batching, several gateway workers in flight). So every row travels with
its deadline (unix epoch ms), the replica skips the rows whose deadline has passed when it takes the batch up, and
the gateway answers those `Reject(expired)`; the replica also reports when it started, so the gateway's
`expired_executed` check is made where the tail really runs. On a cluster of several machines that relies on their
clocks agreeing, as the deadlines themselves do.

Ray moves the arrays between processes with its own serialisation, inside the Ray cluster: a cluster is one
trust domain. Nothing from the edge's network reaches Ray except arrays the gateway has already decoded.
"""
from __future__ import annotations

import logging
import math
import os
import time
from pathlib import Path
from typing import Any, Iterable

import numpy as np

from splitrt.bundle import Bundle
from splitrt.cloud.config import DEFAULT_MIN_TIME_LEFT_MS

log = logging.getLogger("splitrt.cloud.ray")

try:
    from ray import serve
except ImportError:  # the [ray] extra is not installed
    serve = None


def ray_available() -> bool:
    return serve is not None


def _require_ray() -> None:
    if serve is None:
        raise RuntimeError("the Ray backend needs Ray Serve: pip install 'splitrt[ray]' (ray[serve])")


class TailReplica:
    """One replica: ONNX Runtime sessions for one bundle's tails. Wrapped by `serve.deployment` below."""

    def __init__(self, bundle_dir: str, intra_op_threads: int,
                 min_time_left_ms: float = DEFAULT_MIN_TIME_LEFT_MS) -> None:
        from splitrt.cloud.tails import TailExecutor

        self.tails = TailExecutor([Bundle.load(bundle_dir, verify=False)], intra_op_threads)
        self.bundle_hash = next(iter(self.tails.bundles))
        self.min_time_left_ms = min_time_left_ms

    async def __call__(self, request: tuple[str, np.ndarray, np.ndarray]) -> tuple[np.ndarray, float, np.ndarray]:
        return await self.run_batch(request)

    async def run_batch_impl(
        self, requests: list[tuple[str, np.ndarray, np.ndarray]],
    ) -> list[tuple[np.ndarray, float, np.ndarray]]:
        """Requests for the same split are stacked into one session call. Each request is (split, rows, each row's
        deadline in unix epoch ms). A row with less than `min_time_left_ms` left when its call is about to start
        is skipped (a batch may have queued here). Each request gets back the outputs of its rows that ran, when the
        call started, and which of its rows ran."""
        outputs: list[tuple[np.ndarray, float, np.ndarray] | None] = [None] * len(requests)
        by_split: dict[str, list[int]] = {}
        for index, (split, _, _) in enumerate(requests):
            by_split.setdefault(split, []).append(index)
        for split, indices in by_split.items():
            arrays = [requests[i][1] for i in indices]
            stacked = np.concatenate(arrays) if len(arrays) > 1 else arrays[0]
            check_ms = time.time() * 1000.0  # as late as can be: the batch may have queued, the process paused
            ran = {i: requests[i][2] - check_ms >= self.min_time_left_ms for i in indices}
            if not all(bool(np.all(mask)) for mask in ran.values()):  # some expired: stack only the others
                arrays = [requests[i][1][ran[i]] for i in indices]
                stacked = np.concatenate(arrays)
            if stacked.shape[0]:
                started_ms = time.time() * 1000.0
                result = self.tails.run(self.bundle_hash, split, stacked)
            else:  # every row of this split expired while queued: nothing runs
                started_ms = check_ms
                result = np.zeros((0,), dtype=np.float32)
            row = 0
            for i, array in zip(indices, arrays):
                outputs[i] = (result[row : row + array.shape[0]], started_ms, ran[i])
                row += array.shape[0]
        return outputs  # type: ignore[return-value]


def _deployment(max_batch_size: int, max_replicas: int, replica_cpus: float) -> Any:
    """The Serve deployment class, built when Ray is there (the decorators need it)."""

    class TailDeployment(TailReplica):
        @serve.batch(max_batch_size=max_batch_size, batch_wait_timeout_s=0.0005)
        async def run_batch(
            self, requests: list[tuple[str, np.ndarray, np.ndarray]],
        ) -> list[tuple[np.ndarray, float, np.ndarray]]:
            return await self.run_batch_impl(requests)

    return serve.deployment(
        TailDeployment,
        name="splitrt-tail",
        max_ongoing_requests=max(4, 2 * max_batch_size),
        autoscaling_config={"min_replicas": 1, "max_replicas": max_replicas, "target_ongoing_requests": 2,
                            "upscale_delay_s": 2.0, "downscale_delay_s": 30.0},
        ray_actor_options={"num_cpus": replica_cpus},
    )


class RayTailRunner:
    """A TailRunner whose tails run as Ray Serve deployments (one application per bundle)."""

    def __init__(self, bundles: Iterable[Bundle], address: str = "", intra_op_threads: int = 1,
                 max_batch_size: int = 16, max_replicas: int | None = None, replica_cpus: float = 1.0,
                 min_time_left_ms: float = DEFAULT_MIN_TIME_LEFT_MS) -> None:
        _require_ray()
        import ray

        self.bundles = {b.content_hash: b for b in bundles}
        self._started_ray = False
        if not ray.is_initialized():
            package_root = str(Path(__file__).resolve().parents[2])  # replicas import this very splitrt
            python_path = os.pathsep.join(p for p in (package_root, os.environ.get("PYTHONPATH", "")) if p)
            os.environ["PYTHONPATH"] = python_path
            init: dict[str, Any] = {"include_dashboard": False, "logging_level": logging.WARNING,
                                    "log_to_driver": False, "ignore_reinit_error": True}
            if address:
                init["address"] = address
            else:
                init["num_cpus"] = os.cpu_count() or 1
            init["runtime_env"] = {"env_vars": {"PYTHONPATH": python_path}}
            ray.init(**init)
            self._started_ray = not address
        serve.start(proxy_location="Disabled")
        cpus = max(1, int(ray.cluster_resources().get("CPU", 1)))
        replicas = max_replicas or max(1, int(cpus / replica_cpus))
        self._handles = {}
        self.app_names: list[str] = []
        for bundle_hash, bundle in self.bundles.items():
            app = _deployment(max_batch_size, replicas, replica_cpus).bind(str(bundle.root.resolve()), intra_op_threads,
                                                                       min_time_left_ms)
            name = f"splitrt-{bundle_hash.split(':')[-1][:12]}"
            self._handles[bundle_hash] = serve.run(app, name=name, route_prefix=None)
            self.app_names.append(name)
            log.info("Ray Serve deployment %s for %s: 1..%d replicas", name, bundle.model_id, replicas)

    def run(self, bundle_hash: str, split: str, activation: np.ndarray) -> np.ndarray:
        """The tail's output for every row (no deadline)."""
        return self.run_before(bundle_hash, split, activation, np.full(activation.shape[0], math.inf))[0]

    def run_before(self, bundle_hash: str, split: str, activation: np.ndarray,
                   deadlines_ms: np.ndarray) -> tuple[np.ndarray, float, np.ndarray]:
        """The outputs of the rows still before their deadline when the replica took the batch up, when that was
        (unix epoch ms), and which rows ran."""
        request = (split, np.ascontiguousarray(activation), np.asarray(deadlines_ms, dtype=np.float64))
        output, started_ms, ran = self._handles[bundle_hash].remote(request).result()
        return output, float(started_ms), np.asarray(ran, dtype=bool)

    def running_replicas(self) -> float:
        """Replicas in state RUNNING across this runner's deployments, from `serve.status()`; NaN if Serve cannot say.

        Read when the metrics are scraped (`splitrt_ray_serve_replicas`), so it never runs on the request path.
        """
        try:
            applications = serve.status().applications
            count = 0
            for name in self.app_names:
                app = applications.get(name)
                for deployment in (app.deployments.values() if app else ()):
                    for state, replicas in deployment.replica_states.items():
                        if str(getattr(state, "value", state)).upper() == "RUNNING":
                            count += int(replicas)
            return float(count)
        except Exception:  # a scrape must not fail because Serve is starting or shutting down
            log.debug("serve.status() failed", exc_info=True)
            return math.nan

    def warm_up(self) -> None:
        """Run one zero input through every tail, so replicas load their sessions before traffic comes."""
        for bundle_hash, bundle in self.bundles.items():
            for point in bundle.manifest.tail_points:
                spec = point.activation
                self.run(bundle_hash, point.name, np.zeros((1, *spec.shape), dtype=spec.dtype))

    def close(self) -> None:
        import ray

        try:
            serve.shutdown()
        finally:
            if self._started_ray:
                ray.shutdown()
