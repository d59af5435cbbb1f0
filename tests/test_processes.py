"""Processes that benchmarks and the demo start are stopped when they are stopped with SIGTERM."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import splitrt.cli
from splitrt.processes import pid_alive

PARENT = """
import subprocess, sys, time
from splitrt.processes import exit_on_sigterm
if sys.argv[1] == "handled":
    exit_on_sigterm()
child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
try:
    print(child.pid, flush=True)
    time.sleep(120)
finally:
    child.kill()
    child.wait()
"""


def _terminated_parent(mode: str) -> tuple[int, int]:
    """(the parent's exit code after SIGTERM, its child's pid)."""
    parent = subprocess.Popen([sys.executable, "-c", PARENT, mode], stdout=subprocess.PIPE, text=True,
                              cwd=Path(__file__).resolve().parents[1])
    assert parent.stdout is not None
    child_pid = int(parent.stdout.readline())
    parent.send_signal(signal.SIGTERM)
    return parent.wait(timeout=30), child_pid


def test_sigterm_runs_the_cleanup_that_stops_a_child() -> None:
    code, child_pid = _terminated_parent("handled")
    assert code == 128 + signal.SIGTERM
    assert not pid_alive(child_pid), "the parent's finally block stopped its child"


def test_without_it_sigterm_leaves_the_child_running() -> None:
    code, child_pid = _terminated_parent("default")
    try:
        assert code == -signal.SIGTERM
        assert pid_alive(child_pid), "the default SIGTERM skips the finally block: the child outlives its parent"
    finally:
        if pid_alive(child_pid):
            os.kill(child_pid, signal.SIGKILL)


def test_bench_and_demo_commands_run_with_it_and_put_the_previous_handler_back(monkeypatch) -> None:  # type: ignore[no-untyped-def]
    import argparse

    seen: dict[str, object] = {}

    def parser() -> argparse.ArgumentParser:
        top = argparse.ArgumentParser()
        top.add_argument("-v", "--verbose", action="store_true")
        commands = top.add_subparsers(dest="command", required=True)
        for name in ("bench", "demo", "edge"):
            commands.add_parser(name).set_defaults(func=lambda args: seen.update({args.command: signal.getsignal(
                signal.SIGTERM)}))
        return top

    monkeypatch.setattr(splitrt.cli, "build_parser", parser)
    before = signal.getsignal(signal.SIGTERM)
    for name in ("bench", "demo", "edge"):
        assert splitrt.cli.main([name]) == 0
        assert signal.getsignal(signal.SIGTERM) is before
    assert getattr(seen["bench"], "__name__", "") == "stop" and getattr(seen["demo"], "__name__", "") == "stop"
    assert seen["edge"] is before, "the edge and cloud commands keep their own handling"
