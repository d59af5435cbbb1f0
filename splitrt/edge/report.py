"""Human-readable output of the edge agent: one line per frame and a summary table per action."""
from __future__ import annotations

from collections import defaultdict
from typing import Iterable

import numpy as np

from splitrt.frame import FrameOutcome

STAGES = ("preprocess", "head", "encode", "network", "cloud_queue", "cloud_compute", "merge")
_SHORT = {"preprocess": "pre", "head": "head", "encode": "enc", "network": "net", "cloud_queue": "queue",
          "cloud_compute": "cloud", "merge": "merge"}


def frame_line(outcome: FrameOutcome) -> str:
    if outcome.ok and outcome.top:
        best = outcome.top[0]
        what = f"{best.label[:22]:<22} {best.confidence:5.2f}"
    else:
        what = f"{outcome.status.value.upper()}: {outcome.reason}"[:28].ljust(28)
    stages = " ".join(f"{_SHORT[s]} {outcome.trace_ms[s]:.1f}" for s in STAGES if s in outcome.trace_ms)
    return (
        f"#{outcome.frame_id:<4} {outcome.source[:22]:<22} {outcome.action:<20} {what}  "
        f"{outcome.latency_ms:7.1f} ms [{stages}]  sent {outcome.bytes_sent:,} B"
    )


def summary_rows(outcomes: Iterable[FrameOutcome]) -> list[dict[str, object]]:
    """Per action: frames, ok, latency p50/p95, median of each stage, median bytes sent."""
    groups: dict[str, list[FrameOutcome]] = defaultdict(list)
    for outcome in outcomes:
        groups[outcome.action].append(outcome)
    rows = []
    for action, group in groups.items():
        done = [o for o in group if o.ok]
        latencies = [o.latency_ms for o in done]
        row: dict[str, object] = {
            "action": action,
            "frames": len(group),
            "ok": len(done),
            "latency_p50_ms": float(np.percentile(latencies, 50)) if latencies else float("nan"),
            "latency_p95_ms": float(np.percentile(latencies, 95)) if latencies else float("nan"),
        }
        for stage in STAGES:
            values = [o.trace_ms[stage] for o in done if stage in o.trace_ms]
            row[f"{stage}_ms_p50"] = float(np.median(values)) if values else 0.0
        row["bytes_sent_p50"] = int(np.median([o.bytes_sent for o in group])) if group else 0
        rows.append(row)
    return rows


def summary_table(rows: list[dict[str, object]]) -> str:
    width = max([20, *(len(str(row["action"])) for row in rows)])
    header = f"{'action':<{width}} {'frames':>6} {'ok':>4} {'p50 ms':>8} {'p95 ms':>8} " + " ".join(
        f"{_SHORT[s]:>6}" for s in STAGES
    ) + f" {'bytes/frame':>12}"
    lines = [header, "-" * len(header)]
    for row in rows:
        stages = " ".join(f"{row[f'{s}_ms_p50']:6.1f}" for s in STAGES)
        lines.append(
            f"{row['action']:<{width}} {row['frames']:>6} {row['ok']:>4} {row['latency_p50_ms']:8.1f} "
            f"{row['latency_p95_ms']:8.1f} {stages} {row['bytes_sent_p50']:>12,}"
        )
    lines.append("stage columns are medians in ms; net = round trip minus cloud queue and compute")
    return "\n".join(lines)
