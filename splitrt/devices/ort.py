"""ONNX Runtime sessions with explicit threading: one inference thread per process by default, no spinning."""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

import onnxruntime as ort


def create_session(
    path: str | Path,
    intra_op_threads: int = 1,
    providers: Sequence[str] = ("CPUExecutionProvider",),
) -> ort.InferenceSession:
    """A session with fixed thread counts and spinning off, so it does not burn a small device's cores idle."""
    options = ort.SessionOptions()
    options.intra_op_num_threads = intra_op_threads
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    options.add_session_config_entry("session.inter_op.allow_spinning", "0")
    options.log_severity_level = 3
    return ort.InferenceSession(str(path), sess_options=options, providers=list(providers))
