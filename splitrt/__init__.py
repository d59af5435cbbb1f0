"""splitrt: an edge-cloud split-computing runtime.

The public API, imported lazily so that `import splitrt.protocol` stays light:

    from splitrt import Bundle, CloudLink, EdgeRuntime, Local, Offload, Split, TailService
    from splitrt import ResilientLink, VideoSource, TrackSource   # failover link, video/WebRTC sources
"""
from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

_EXPORTS = {
    "Bundle": "splitrt.bundle",
    "BundleError": "splitrt.bundle",
    "EdgeRuntime": "splitrt.edge.runtime",
    "CloudLink": "splitrt.edge.link",
    "LinkError": "splitrt.edge.link",
    "ResilientLink": "splitrt.edge.failover",
    "LinkDown": "splitrt.edge.failover",
    "HeartbeatConfig": "splitrt.edge.health",
    "LinkState": "splitrt.edge.health",
    "ImageFolderSource": "splitrt.edge.sources",
    "PacedSource": "splitrt.edge.sources",
    "VideoSource": "splitrt.edge.sources",
    "TrackSource": "splitrt.edge.webrtc",
    "EdgeDaemon": "splitrt.edge.daemon",
    "load_config": "splitrt.edge.config",
    "TailService": "splitrt.cloud.service",
    "ServiceConfig": "splitrt.cloud.service",
    "Skip": "splitrt.actions",
    "Local": "splitrt.actions",
    "Split": "splitrt.actions",
    "Offload": "splitrt.actions",
    "Frame": "splitrt.frame",
    "FrameOutcome": "splitrt.frame",
    "Status": "splitrt.frame",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'splitrt' has no attribute {name!r}")
