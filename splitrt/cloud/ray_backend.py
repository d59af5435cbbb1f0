"""The Ray Serve backend: each bundle's tails run as a Ray Serve deployment that batches and autoscales.

The gateway stays the same (admission, deadline-aware batching, replies); only `TailRunner.run` changes:
instead of an in-process ONNX Runtime session, a batch goes to the bundle's deployment through a
deployment handle. The deployment merges batches that reach one replica at the same time (`serve.batch`,
useful when several gateways share it), and Serve adds or removes replicas with the load.

Ray moves the arrays between processes with its own serialisation, inside the Ray cluster: a cluster is one
trust domain. Nothing from the edge's network reaches Ray except arrays the gateway has already decoded.
"""
from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any, Iterable

import numpy as np

from splitrt.bundle import Bundle

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

    def __init__(self, bundle_dir: str, intra_op_threads: int) -> None:
        from splitrt.cloud.tails import TailExecutor

        self.tails = TailExecutor([Bundle.load(bundle_dir, verify=False)], intra_op_threads)
        self.bundle_hash = next(iter(self.tails.bundles))

    async def __call__(self, request: tuple[str, np.ndarray]) -> np.ndarray:
        return await self.run_batch(request)

    async def run_batch_impl(self, requests: list[tuple[str, np.ndarray]]) -> list[np.ndarray]:
        """Requests for the same split are stacked into one session call; each gets its rows back."""
        outputs: list[np.ndarray | None] = [None] * len(requests)
        by_split: dict[str, list[int]] = {}
        for index, (split, _) in enumerate(requests):
            by_split.setdefault(split, []).append(index)
        for split, indices in by_split.items():
            arrays = [requests[i][1] for i in indices]
            stacked = arrays[0] if len(arrays) == 1 else np.concatenate(arrays)
            result = self.tails.run(self.bundle_hash, split, stacked)
            row = 0
            for i, array in zip(indices, arrays):
                outputs[i] = result[row : row + array.shape[0]]
                row += array.shape[0]
        return outputs  # type: ignore[return-value]


def _deployment(max_batch_size: int, max_replicas: int, replica_cpus: float) -> Any:
    """The Serve deployment class, built when Ray is there (the decorators need it)."""

    class TailDeployment(TailReplica):
        @serve.batch(max_batch_size=max_batch_size, batch_wait_timeout_s=0.0005)
        async def run_batch(self, requests: list[tuple[str, np.ndarray]]) -> list[np.ndarray]:
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
                 max_batch_size: int = 16, max_replicas: int | None = None, replica_cpus: float = 1.0) -> None:
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
        for bundle_hash, bundle in self.bundles.items():
            app = _deployment(max_batch_size, replicas, replica_cpus).bind(str(bundle.root.resolve()), intra_op_threads)
            name = f"splitrt-{bundle_hash.split(':')[-1][:12]}"
            self._handles[bundle_hash] = serve.run(app, name=name, route_prefix=None)
            log.info("Ray Serve deployment %s for %s: 1..%d replicas", name, bundle.model_id, replicas)

    def run(self, bundle_hash: str, split: str, activation: np.ndarray) -> np.ndarray:
        return self._handles[bundle_hash].remote((split, np.ascontiguousarray(activation))).result()

    def warm_up(self) -> None:
        """Run one zero input through every tail, so replicas load their sessions before traffic comes."""
        for bundle_hash, bundle in self.bundles.items():
            for point in bundle.manifest.splits:
                spec = point.activation
                self.run(bundle_hash, point.name, np.zeros((1, *spec.shape), dtype=spec.dtype))

    def close(self) -> None:
        import ray

        try:
            serve.shutdown()
        finally:
            if self._started_ray:
                ray.shutdown()
