"""The edge process of `splitrt bench e2e`: one policy, live, on paced frames, through the emulated link.

It is started by the benchmark (under the device profile's CPU quota, and inside the link's network
namespace in a netns mode) with `python -m splitrt.bench.e2e_edge SPEC.json`. The spec names the bundle, the
endpoint, the policy, its action options (costs at the device profile's speed, as the simulator uses them)
and the frames. It connects, warms every action up (one frame each, before the trace starts), prints
`{"event": "ready"}`, waits for a line on stdin, then runs `count` frames at `fps` with the SDK's
`AdaptiveRuntime.run` (latest frame wins) and writes every outcome as a JSON line to `out`.
"""
from __future__ import annotations

import asyncio
import json
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from splitrt.bench.policy import action_from_key
from splitrt.bundle import Bundle
from splitrt.devices.ort import default_threads
from splitrt.edge.adaptive import AdaptiveRuntime, LinkEstimates
from splitrt.edge.link import CloudLink
from splitrt.edge.runtime import EdgeRuntime
from splitrt.edge.sources import PacedSource
from splitrt.imaging import load_rgb
from splitrt.policies.policies import ActionOption, make_policy


@dataclass(frozen=True)
class EdgeSpec:
    bundle: str
    endpoint: str
    policy: str
    options: list[dict[str, object]]  # `option_to_json` of each
    images: list[str]  # frame i shows images[i % len(images)]
    fps: float
    count: int
    deadline_ms: float
    rtt_ms: float
    initial_bps: float
    probe_interval_ms: float
    out: str

    @classmethod
    def load(cls, path: str | Path) -> "EdgeSpec":
        return cls(**json.loads(Path(path).read_text(encoding="utf-8")))


def option_to_json(option: ActionOption) -> dict[str, object]:
    return {"action": option.key, "edge_ms": option.edge_ms, "payload_bytes": option.payload_bytes,
            "cloud_ms": option.cloud_ms, "accuracy": option.accuracy,
            "edge_samples_ms": [round(v, 3) for v in option.edge_samples_ms]}


def option_from_json(item: dict[str, object]) -> ActionOption:
    return ActionOption(action_from_key(str(item["action"])), float(item["edge_ms"]),  # type: ignore[arg-type]
                        int(item["payload_bytes"]), float(item["cloud_ms"]), float(item["accuracy"]),  # type: ignore[arg-type]
                        tuple(float(v) for v in item.get("edge_samples_ms", ())))  # type: ignore[union-attr]


def _emit(event: str, **fields: object) -> None:
    print(json.dumps({"event": event, **fields}), flush=True)


def run_edge(spec: EdgeSpec) -> int:
    bundle = Bundle.load(spec.bundle)
    options = [option_from_json(o) for o in spec.options]
    images = [load_rgb(p) for p in spec.images]
    link = CloudLink(spec.endpoint, bundle.content_hash)
    try:
        link.handshake(timeout_ms=30_000)
        runtime = EdgeRuntime(bundle, link, intra_op_threads=default_threads(1))
        # Every action once, with time to spare: sessions loaded, the cloud's tails touched.
        for option in options:
            warm = runtime.infer(images[0], option.action, budget_ms=30_000.0)
            if not warm.ok:
                _emit("error", detail=f"warm-up of {option.key} failed: {warm.status.value} {warm.reason}")
                return 1
        adaptive = AdaptiveRuntime(
            runtime, make_policy(spec.policy), options,
            estimates=LinkEstimates(initial_bps=spec.initial_bps, initial_rtt_ms=spec.rtt_ms),
            probe_interval_ms=spec.probe_interval_ms,
        )
        _emit("ready")
        if not sys.stdin.readline():
            return 1  # the benchmark went away
        source = PacedSource(images, spec.fps, count=spec.count, name="e2e")

        async def stream() -> int:
            written = 0
            with open(spec.out, "w", encoding="utf-8") as out:
                async for outcome in adaptive.run(source, budget_ms=spec.deadline_ms):
                    out.write(json.dumps(outcome.to_json()) + "\n")
                    written += 1
            return written

        written = asyncio.run(stream())
        runtime.close()
        _emit("done", outcomes=written)
        return 0
    finally:
        link.close()


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1:
        print("usage: python -m splitrt.bench.e2e_edge SPEC.json", file=sys.stderr)
        return 2
    np.seterr(all="ignore")
    return run_edge(EdgeSpec.load(args[0]))


if __name__ == "__main__":
    sys.exit(main())
