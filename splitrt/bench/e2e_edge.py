"""The edge process of `splitrt bench e2e`: one policy, live, on paced frames, through the emulated link.

It is started by the benchmark (on the emulated device: under the profile's CPU quota, or, with a `dilation_share`,
stretching its own stages to it; inside the link's network namespace in a netns mode) with `python -m
splitrt.bench.e2e_edge SPEC.json`. The spec names the bundle, the endpoint, the policy, its action options (costs
at the device profile's speed, as the simulator uses them) and the frames. It connects, warms every action up (one
frame each, before the trace starts) and prints `{"event": "ready"}`. The benchmark then puts it under the device's
quota (unless it dilates) and sends `calibrate`: with `calibration_frames` > 0 it runs each of its actions (a hedged
one as its remote part and its hedge, which are among its actions) that many paced frames through the real link (the
trace has not started: the link has its delay but no rate limit), now, in this process, at the speed the run will
have, and splits each frame's time (`frame_times_ms`) into the device's part and, for a remote action, the part
after the request left less the RTT (the cloud, the transport, receiving and merging the reply). It runs its policy
with those times and reports them (`{"event": "calibrated", "samples_ms": ..., "after_link_ms": ...}`) for the
simulator. On `go` it runs `count` frames at `fps` with the SDK's `AdaptiveRuntime.run` (latest frame wins) and
writes every outcome as a JSON line to `out`.
"""
from __future__ import annotations

import asyncio
import json
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from splitrt.bundle import Bundle
from splitrt.devices.dilation import TimeDilation, warmup_runs
from splitrt.devices.ort import default_threads
from splitrt.edge.adaptive import AdaptiveRuntime
from splitrt.edge.calibration import calibrate, measured_options
from splitrt.edge.link import CloudLink
from splitrt.edge.runtime import EdgeRuntime
from splitrt.edge.sources import PacedSource
from splitrt.imaging import load_rgb
from splitrt.policies.estimators import LinkEstimates
from splitrt.policies.options_file import option_from_json
from splitrt.policies.policies import make_policy


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
    calibration_frames: int = 0
    dilation_share: float | None = None  # set: the device is emulated by dilating stages to this share, not a quota
    steady_runs: int = 0  # with dilation_share: `TimeDilation.steady_runs`

    @classmethod
    def load(cls, path: str | Path) -> "EdgeSpec":
        return cls(**json.loads(Path(path).read_text(encoding="utf-8")))


def _emit(event: str, **fields: object) -> None:
    print(json.dumps({"event": event, **fields}), flush=True)


def _wait_for(command: str) -> bool:
    line = sys.stdin.readline()
    if line.strip() != command:
        _emit("error", detail=f"expected {command!r} on stdin, got {line.strip()!r}")
        return False
    return True


def run_edge(spec: EdgeSpec) -> int:
    bundle = Bundle.load(spec.bundle)
    options = [option_from_json(o) for o in spec.options]
    images = [load_rgb(p) for p in spec.images]
    link = CloudLink(spec.endpoint, bundle.content_hash)
    try:
        link.handshake(timeout_ms=30_000)
        speed = TimeDilation(spec.dilation_share, spec.steady_runs) if spec.dilation_share else None
        runtime = EdgeRuntime(bundle, link, intra_op_threads=default_threads(1), device_speed=speed)
        # Every action once, with time to spare: sessions loaded, the cloud's tails touched.
        for option in options:
            for _ in range(warmup_runs(runtime.device_speed)):
                warm = runtime.infer(images[0], option.action, budget_ms=30_000.0)
            if not warm.ok:
                _emit("error", detail=f"warm-up of {option.key} failed: {warm.status.value} {warm.reason}")
                return 1
        _emit("ready")
        if not _wait_for("calibrate"):
            return 1
        samples: dict[str, list[float]] = {}
        after_link: dict[str, list[float]] = {}
        if spec.calibration_frames > 0:
            # a hedged option is measured as its remote part and its hedge (its own frames mix the two)
            samples, after_link = calibrate(runtime, [o.action for o in options if o.hedge is None], images[0],
                                            spec.calibration_frames, spec.fps, spec.rtt_ms)
            options = measured_options(options, samples, after_link, spec.deadline_ms,
                                       rehedge=not spec.policy.startswith("static:"))
        _emit("calibrated", samples_ms=samples, after_link_ms=after_link)
        adaptive = AdaptiveRuntime(
            runtime, make_policy(spec.policy), options,
            estimates=LinkEstimates(initial_bps=spec.initial_bps, initial_rtt_ms=spec.rtt_ms),
            probe_interval_ms=spec.probe_interval_ms,
        )
        if not _wait_for("go"):
            return 1
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
