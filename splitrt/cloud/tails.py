"""Bundles the service holds, and the ONNX Runtime sessions that run their tails.

A tail whose input is float32 also takes float16 (what an `fp16` request carries): the batch goes through a
one-node Cast model first (`splitrt/data/cast_f16_f32.onnx`, written by `splitrt.partition.cast_model`). The cast is
exact, and ONNX Runtime does it about ten times faster than NumPy on this CPU.
"""
from __future__ import annotations

import threading
from importlib import resources
from pathlib import Path
from typing import Iterable, Protocol

import numpy as np
import onnxruntime as ort

from splitrt.bundle import HEAD_INPUT_NAME, TAIL_INPUT_NAME, Bundle, SplitPoint
from splitrt.devices.ort import CPU_PROVIDER, create_session

CAST_MODEL = "cast_f16_f32.onnx"
CAST_INPUT_NAME = "half"  # as splitrt.partition.cast_model writes it


class TailExecutor:
    """Runs tails by (bundle hash, split point). Sessions are created on first use and shared across threads."""

    def __init__(self, bundles: Iterable[Bundle], intra_op_threads: int = 1) -> None:
        self.bundles: dict[str, Bundle] = {b.content_hash: b for b in bundles}
        self.intra_op_threads = intra_op_threads
        self._sessions: dict[tuple[str, str], ort.InferenceSession] = {}
        self._lock = threading.Lock()
        self._cast: ort.InferenceSession | None = None

    def _session(self, bundle: Bundle, point: SplitPoint) -> ort.InferenceSession:
        key = (bundle.content_hash, point.name)
        session = self._sessions.get(key)
        if session is None:
            with self._lock:
                session = self._sessions.get(key)
                if session is None:
                    session = create_session(bundle.path(point.tail_file), self.intra_op_threads)
                    self._sessions[key] = session
        return session

    def _cast_session(self) -> ort.InferenceSession:
        if self._cast is None:
            with self._lock:
                if self._cast is None:
                    with resources.as_file(resources.files("splitrt").joinpath(f"data/{CAST_MODEL}")) as path:
                        # on the CPU whatever the tails run on: a GPU would copy the batch there and back
                        self._cast = create_session(path, self.intra_op_threads, providers=[CPU_PROVIDER])
        return self._cast

    def warm_up(self) -> None:
        """Create every session now, so that the first request does not pay for it."""
        self._cast_session()
        for bundle in self.bundles.values():
            for point in bundle.manifest.tail_points:
                self._session(bundle, point)

    def close(self) -> None:
        self._sessions.clear()
        self._cast = None

    def run(self, bundle_hash: str, split: str, activation: np.ndarray) -> np.ndarray:
        """Run the tail of `split` on a batch (N, ...) and return its output (N, ...). A float32 tail also takes a
        float16 batch, cast first."""
        bundle = self.bundles[bundle_hash]
        point = bundle.manifest.split(split)
        input_name = HEAD_INPUT_NAME if point.head_file is None else TAIL_INPUT_NAME
        if activation.dtype == np.float16 and point.activation.dtype == "float32":
            activation = self._cast_session().run(None, {CAST_INPUT_NAME: activation})[0]
        return self._session(bundle, point).run(None, {input_name: activation})[0]


def load_bundles(paths: Iterable[str | Path]) -> list[Bundle]:
    return [Bundle.load(p) for p in paths]


class TailRunner(Protocol):
    """What the gateway needs from an executor backend: run a batch through a tail, and load tails early."""

    def run(self, bundle_hash: str, split: str, activation: np.ndarray) -> np.ndarray: ...

    def warm_up(self) -> None: ...

    def close(self) -> None: ...
