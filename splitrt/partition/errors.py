"""Errors of the partition tooling that the command line reports (importable without torch)."""
from __future__ import annotations


class TraceError(RuntimeError):
    """A module whose forward torch.fx cannot follow (data-dependent control flow, unsupported calls)."""
