"""`splitrt edge run`: classify every image of a source with one or more actions, print and record them."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Callable, Sequence

from splitrt.actions import Action, Local, Skip
from splitrt.bundle import Bundle
from splitrt.edge.link import CloudLink, CurveClientKeys
from splitrt.edge.report import frame_line, summary_rows, summary_table
from splitrt.edge.runtime import EdgeRuntime
from splitrt.edge.sources import image_source
from splitrt.frame import FrameOutcome


def needs_cloud(actions: Sequence[Action]) -> bool:
    return any(not isinstance(a, (Local, Skip)) for a in actions)


def run_agent(
    bundle: Bundle,
    source: str | Path,
    actions: Sequence[Action],
    endpoint: str | None,
    budget_ms: float = 1000.0,
    intra_op_threads: int = 1,
    json_out: str | Path | None = None,
    echo: Callable[[str], None] = print,
    handshake_timeout_ms: float = 10000.0,
    curve: CurveClientKeys | None = None,
) -> list[FrameOutcome]:
    """Run each image through each action in turn; returns every frame's outcome (also written as JSON lines).

    `curve`: keys for a service that requires CURVE (any `splitrt cloud serve` bound off loopback)."""
    link = None
    if needs_cloud(actions):
        if not endpoint:
            raise ValueError("split and offload actions need --connect tcp://HOST:PORT")
        link = CloudLink(endpoint, bundle.content_hash, curve=curve)
        try:
            welcome = link.handshake(handshake_timeout_ms)
        except BaseException:
            link.close()
            raise
        secured = ", CURVE" if curve is not None else ""
        echo(f"connected to {welcome.server_id} at {endpoint}{secured}: bundle {bundle.model_id} "
             f"{bundle.content_hash[:19]}")
    runtime = EdgeRuntime(bundle, link, intra_op_threads=intra_op_threads)
    runtime.warm_up(list(actions))
    outcomes: list[FrameOutcome] = []
    sink = open(json_out, "w", encoding="utf-8") if json_out else None
    try:
        for name, pixels in image_source(source):
            for action in actions:
                outcome = runtime.infer(pixels, action, budget_ms=budget_ms, source=name)
                outcomes.append(outcome)
                echo(frame_line(outcome))
                if sink:
                    sink.write(json.dumps(outcome.to_json()) + "\n")
    finally:
        if sink:
            sink.close()
        if link:
            link.close()
    echo("")
    echo(summary_table(summary_rows(outcomes)))
    return outcomes
