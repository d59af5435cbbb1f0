"""Small helpers about other processes."""
from __future__ import annotations

import os
import signal
import threading
from typing import Callable


def pid_alive(pid: int) -> bool:
    """Whether a process with this pid exists (one we may not signal counts as alive)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def exit_on_sigterm() -> Callable[[], None]:
    """Make SIGTERM end this process as Ctrl-C does: through its finally blocks and context managers, so that what
    it started (a loopback cloud, busy processes, an edge) is stopped with it instead of left running. By default
    SIGTERM (`kill`, `timeout`, a CI job cancelled) ends a Python process at once, cleanup unrun. Returns what puts
    the previous handler back. Only the main thread may set a handler: from another thread this changes nothing."""
    if threading.current_thread() is not threading.main_thread():
        return lambda: None
    previous = signal.getsignal(signal.SIGTERM)

    def stop(signum: int, _frame: object) -> None:
        raise SystemExit(128 + signum)

    signal.signal(signal.SIGTERM, stop)
    return lambda: signal.signal(signal.SIGTERM, previous)


def default_sigterm() -> None:
    """For a worker process forked from one that `exit_on_sigterm`: SIGTERM ends it at once again, as a worker
    pool expects (the handler's SystemExit would be taken as one failed job and the worker would go on)."""
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
