"""ONNX Runtime sessions with explicit threading: one inference thread per process by default, no spinning.

Execution providers are chosen per device: TensorRT, then CUDA, where this onnxruntime build has them
(a Jetson with onnxruntime-gpu), and always the CPU provider last as the fallback.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Sequence

import onnxruntime as ort

PREFERRED_PROVIDERS = ("TensorrtExecutionProvider", "CUDAExecutionProvider")
CPU_PROVIDER = "CPUExecutionProvider"


def choose_providers(available: Sequence[str] | None = None, allow_gpu: bool = True) -> list[str]:
    """TensorRT and CUDA when present (and allowed), in that order, then the CPU provider."""
    available = list(ort.get_available_providers() if available is None else available)
    chosen = [p for p in PREFERRED_PROVIDERS if allow_gpu and p in available]
    return chosen + [CPU_PROVIDER]


def default_threads(fallback: int = 1) -> int:
    """SPLITRT_THREADS (set when a process runs under an emulated device profile), else `fallback`."""
    value = os.environ.get("SPLITRT_THREADS")
    if value is None:
        return fallback
    try:
        threads = int(value)
    except ValueError as exc:
        raise ValueError(f"SPLITRT_THREADS must be a positive integer, got {value!r}") from exc
    if threads < 1:
        raise ValueError(f"SPLITRT_THREADS must be a positive integer, got {value!r}")
    return threads


def create_session(
    path: str | Path,
    intra_op_threads: int = 1,
    providers: Sequence[str] | None = None,
) -> ort.InferenceSession:
    """A session with fixed thread counts and spinning off, so it does not burn a small device's cores idle.

    `providers` None picks them for this device (`choose_providers`).
    """
    options = ort.SessionOptions()
    options.intra_op_num_threads = intra_op_threads
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    options.add_session_config_entry("session.inter_op.allow_spinning", "0")
    options.log_severity_level = 3
    chosen = choose_providers() if providers is None else list(providers)
    return ort.InferenceSession(str(path), sess_options=options, providers=chosen)
