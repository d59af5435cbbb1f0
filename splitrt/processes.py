"""Small helpers about other processes."""
from __future__ import annotations

import os
import signal


def pid_alive(pid: int) -> bool:
    """Whether a process with this pid exists (one we may not signal counts as alive)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def exit_on_sigterm() -> None:
    """Make SIGTERM end this process as Ctrl-C does: through its finally blocks and context managers, so that what
    it started (a loopback cloud, busy processes, an edge) is stopped with it instead of left running. By default
    SIGTERM (`kill`, `timeout`, a CI job cancelled) ends a Python process at once, cleanup unrun."""

    def stop(signum: int, _frame: object) -> None:
        raise SystemExit(128 + signum)

    signal.signal(signal.SIGTERM, stop)
