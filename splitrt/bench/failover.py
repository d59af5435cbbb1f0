"""`splitrt bench failover` and `splitrt bench freshness`: the edge when the cloud dies, and behind a slow pipeline.

failover: frames stream from a paced (camera-like) source through a split action while a real
`splitrt cloud serve` process is killed (SIGKILL) and, after a while, started again on the same port. It
reports how fast the loss was detected, how fast splitting resumed after the cloud was back, and whether
every frame ended, and in time.

freshness: a 30 fps source in front of a pipeline slower than 30 fps. With latest-frame-wins the age of
results (capture to result) stays bounded; a plain FIFO, for contrast, builds a backlog whose age grows
for as long as the stream runs.
"""
from __future__ import annotations

import argparse
import asyncio
import os
import signal
import socket
import subprocess
import sys
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Sequence

import numpy as np

from splitrt.actions import Action, Local, parse_action
from splitrt.bench.common import format_table, percentile, write_json
from splitrt.bench.plot import save_figure
from splitrt.bundle import Bundle
from splitrt.frame import FrameOutcome, Status

if TYPE_CHECKING:
    from splitrt.edge.sources import PacedSource

DEFAULT_BUNDLE = ".cache/bundles/efficientnet-lite0"


# --------------------------------------------------------------------------- the cloud as a process


def free_tcp_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


class CloudProcess:
    """A `splitrt cloud serve` subprocess on a fixed loopback port, which can be killed and started again."""

    def __init__(self, bundle_dir: str | Path, port: int, workers: int = 1, nice: int = 0,
                 extra_args: Sequence[str] = ()) -> None:
        self.bundle_dir = str(bundle_dir)
        self.port = port
        self.workers = workers
        self.extra_args = list(extra_args)  # more `splitrt cloud serve` options, e.g. --no-batching
        self.nice = nice  # on one machine, a lower priority keeps the cloud's restart from starving the edge
        self.process: subprocess.Popen[str] | None = None

    @property
    def endpoint(self) -> str:
        return f"tcp://127.0.0.1:{self.port}"

    def start(self, timeout_s: float = 60.0) -> float:
        """Start it and wait until it has bound its port; returns the monotonic ms at which it was ready."""
        from splitrt.demo import wait_for_ready

        package_root = str(Path(__file__).resolve().parents[2])
        env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [package_root, os.environ.get("PYTHONPATH")])))
        self.process = subprocess.Popen(
            [sys.executable, "-m", "splitrt", "cloud", "serve", "--bundle", self.bundle_dir, "--bind", self.endpoint,
             "--workers", str(self.workers), "--warm-up", "--ready-json", *self.extra_args],
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            text=True,
            env=env,
            preexec_fn=(lambda: os.nice(self.nice)) if self.nice else None,
        )
        wait_for_ready(self.process, timeout_s)
        return time.monotonic() * 1000.0

    def freeze(self) -> float:
        """SIGSTOP: the process hangs with its connections open (a stuck machine); returns monotonic ms."""
        assert self.process is not None
        frozen_ms = time.monotonic() * 1000.0
        self.process.send_signal(signal.SIGSTOP)
        return frozen_ms

    def thaw(self) -> float:
        assert self.process is not None
        self.process.send_signal(signal.SIGCONT)
        return time.monotonic() * 1000.0

    def kill(self) -> float:
        """SIGKILL: no drain, no goodbye, like a crashed machine. Returns the monotonic ms of the kill."""
        assert self.process is not None
        killed_ms = time.monotonic() * 1000.0
        self.process.send_signal(signal.SIGKILL)
        self.process.wait()
        return killed_ms

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


# --------------------------------------------------------------------------- failover


@dataclass
class FailoverResult:
    summary: dict[str, object]
    frames: list[dict[str, object]] = field(default_factory=list)
    events_s: dict[str, float] = field(default_factory=dict)


def sample_frames(count: int = 6) -> list[np.ndarray]:
    """Real photographs (scikit-image), or noise when scikit-image is not installed."""
    try:
        import skimage.data

        names = ("astronaut", "chelsea", "coffee", "rocket", "camera", "cat")
        images = []
        for name in names[:count]:
            pixels = np.asarray(getattr(skimage.data, name)())
            if pixels.ndim == 2:
                pixels = np.stack([pixels] * 3, axis=-1)
            images.append(np.ascontiguousarray(pixels[:, :, :3]))
        return images
    except ImportError:
        rng = np.random.default_rng(0)
        return [rng.integers(0, 256, size=(240, 320, 3), dtype=np.uint8) for _ in range(count)]


def link_wait_overran(outcome: FrameOutcome) -> bool:
    """A miss caused by waiting on the link: it timed out, or it would have been in time without that wait."""
    if outcome.status is Status.TIMEOUT:
        return True
    waited_ms = outcome.trace_ms.get("abandoned_network", 0.0)
    return outcome.missed_deadline and waited_ms > 0 and outcome.done_ms - waited_ms <= outcome.deadline_ms


def waited_on_link(outcome: FrameOutcome) -> bool:
    """It sent its request and waited for a reply that did not come in time (or the link went down meanwhile)."""
    return bool(outcome.planned) and not outcome.reason.startswith("cloud unreachable")


class CountingSource:
    """Counts the frames a source hands out, so that frames that never ended would show as lost."""

    realtime = True

    def __init__(self, inner: PacedSource) -> None:
        self.inner = inner
        self.produced = 0

    def close(self) -> None:
        self.inner.close()

    async def __aiter__(self):  # type: ignore[no-untyped-def]
        async for frame in self.inner:
            self.produced += 1
            yield frame


def run_failover(
    bundle_dir: str | Path,
    action: Action,
    fps: float = 30.0,
    budget_ms: float = 200.0,
    heartbeat_ms: float = 100.0,
    before_s: float = 2.0,
    down_s: float = 2.0,
    after_s: float = 2.0,
    fault: str = "kill",
    cloud_nice: int = 0,
) -> FailoverResult:
    """Stream, kill the cloud after `before_s`, start it again `down_s` later, stream `after_s` more.

    `fault="freeze"` stops the process (SIGSTOP) instead and lets it go on (SIGCONT): its connections stay
    open, requests are taken and never answered, which only heartbeats and deadlines can tell."""
    if fault not in ("kill", "freeze"):
        raise ValueError(f"fault must be kill or freeze, got {fault!r}")
    from splitrt.edge.failover import ResilientLink
    from splitrt.edge.health import HeartbeatConfig, LinkState
    from splitrt.edge.runtime import EdgeRuntime
    from splitrt.edge.sources import PacedSource

    bundle = Bundle.load(bundle_dir)
    cloud = CloudProcess(bundle_dir, free_tcp_port(), nice=cloud_nice)
    cloud.start()
    link = ResilientLink(cloud.endpoint, bundle.content_hash, HeartbeatConfig(interval_ms=heartbeat_ms))
    runtime = EdgeRuntime(bundle, link, action=action, fallback=Local())
    wall_minus_mono_ms = time.time() * 1000.0 - time.monotonic() * 1000.0
    events: dict[str, float] = {}
    try:
        link.handshake(10_000)
        runtime.warm_up([action, Local()])
        source = CountingSource(PacedSource(sample_frames(), fps=fps, name="camera"))
        outcomes: list[FrameOutcome] = []

        async def control(stop: asyncio.Event) -> None:
            loop = asyncio.get_running_loop()
            await asyncio.sleep(before_s)
            if fault == "kill":
                events["kill"] = cloud.kill()
                await asyncio.sleep(down_s)
                events["restart"] = time.monotonic() * 1000.0
                events["ready"] = await loop.run_in_executor(None, cloud.start)
            else:
                events["kill"] = cloud.freeze()
                await asyncio.sleep(down_s)
                events["ready"] = cloud.thaw()
            await asyncio.sleep(after_s)
            stop.set()

        async def stream() -> None:
            stop = asyncio.Event()
            controller = asyncio.create_task(control(stop))
            async for outcome in runtime.run(source, budget_ms=budget_ms, stop=stop):
                outcomes.append(outcome)
            await controller

        events["start"] = time.monotonic() * 1000.0
        asyncio.run(stream())
        transitions = link.transitions
    finally:
        runtime.close()
        link.close()
        cloud.stop()

    kill_ms, ready_ms = events["kill"], events["ready"]
    down_at = [t for t, s in transitions if s is LinkState.DOWN and t >= kill_ms]
    up_at = [t for t, s in transitions if s is LinkState.UP and t >= ready_ms - 1000.0]
    events["detect"] = down_at[0] if down_at else float("nan")
    events["link_up"] = up_at[0] if up_at else float("nan")

    def mono(wall_ms: float) -> float:
        return wall_ms - wall_minus_mono_ms

    planned = action.describe()
    split_after = sorted(mono(o.done_ms) for o in outcomes if o.ok and o.action == planned and mono(o.done_ms) >= ready_ms)
    events["split_resumed"] = split_after[0] if split_after else float("nan")
    resumed_ms = events["split_resumed"]

    def phase(o: FrameOutcome) -> str:
        captured = mono(o.capture_ms)
        if captured < kill_ms:
            return "before"
        if not split_after or captured < resumed_ms:
            return "outage"
        return "after"

    frames = []
    for o in outcomes:
        frames.append({
            "frame_id": o.frame_id, "t_s": round((mono(o.capture_ms) - kill_ms) / 1000.0, 4),
            "done_s": round((mono(o.done_ms) - kill_ms) / 1000.0, 4), "phase": phase(o), "action": o.action,
            "planned": o.planned, "status": o.status.value, "missed_deadline": o.missed_deadline,
            "latency_ms": round(o.latency_ms, 3), "age_ms": round(o.age_ms, 3), "reason": o.reason,
        })
    ids = {o.frame_id for o in outcomes}
    produced = source.produced
    outage = [o for o in outcomes if phase(o) == "outage"]
    by_phase = {p: Counter(f"{o.action}:{o.status.value}" for o in outcomes if phase(o) == p) for p in ("before", "outage", "after")}
    ages = [o.age_ms for o in outcomes if o.ok]
    summary: dict[str, object] = {
        "action": planned,
        "fault": fault,
        "fps": fps,
        "budget_ms": budget_ms,
        "heartbeat_interval_ms": heartbeat_ms,
        "detect_ms": round(events["detect"] - kill_ms, 1),
        "detect_budget_ms": 3 * heartbeat_ms,
        "link_up_ms": round(events["link_up"] - ready_ms, 1),
        "recover_ms": round(resumed_ms - ready_ms, 1),
        "cloud_down_s": round((ready_ms - kill_ms) / 1000.0, 3),
        "frames_total": produced,
        "frames_ended": len(ids),
        "frames_lost": produced - len(ids),
        "frames_ended_twice": len(outcomes) - len(ids),
        "frames_ok": sum(o.ok for o in outcomes),
        "frames_dropped": sum(o.status is Status.DROPPED for o in outcomes),
        "frames_fallback": sum(bool(o.planned) for o in outcomes),
        "fallback_after_waiting": sum(waited_on_link(o) for o in outcomes),
        "deadline_misses_while_down": sum(o.missed_deadline for o in outcomes if phase(o) == "outage"),
        # Misses caused by waiting on the dead link: timed out, or would have been in time without the wait.
        # The rest are frames that waited for the pipeline or ran locally for longer than they had (compute,
        # e.g. a loaded CPU).
        "misses_waiting_on_link": sum(o.missed_deadline and link_wait_overran(o) for o in outcomes),
        "misses_running_locally": sum(
            o.missed_deadline and bool(o.planned) and not link_wait_overran(o) for o in outcomes if phase(o) == "outage"),
        "local_ms_p50_while_down": round(percentile([o.latency_ms for o in outage if o.planned], 50), 2),
        "local_ms_p95_while_down": round(percentile([o.latency_ms for o in outage if o.planned], 95), 2),
        "deadline_misses_total": sum(o.missed_deadline for o in outcomes),
        "frames_while_down": len(outage),
        "age_p50_ms": round(percentile(ages, 50), 2),
        "age_p95_ms": round(percentile(ages, 95), 2),
        "load_avg_1min": round(os.getloadavg()[0], 2),
        "by_phase": {p: dict(c) for p, c in by_phase.items()},
    }
    events_s = {k: round((v - kill_ms) / 1000.0, 4) for k, v in events.items()}
    return FailoverResult(summary, frames, events_s)


def fallback_reasons(result: FailoverResult) -> dict[str, int]:
    """Why frames captured after the cloud was back still ran locally (reason text up to the colon)."""
    ready_s = result.events_s.get("ready", float("inf"))
    reasons = Counter(str(f["reason"]).split(":")[0] for f in result.frames if f["planned"] and float(f["t_s"]) >= ready_s)
    return dict(reasons)


def plot_failover(result: FailoverResult, path: str | Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    frames = result.frames
    planned = str(result.summary["action"])
    rows = {f"{planned} (cloud)": 3, "local (fallback)": 2, "dropped (newer frame)": 1, "missed deadline": 0}
    colours = {3: "tab:blue", 2: "tab:orange", 1: "tab:gray", 0: "tab:red"}

    def row(f: dict[str, object]) -> int:
        if f["missed_deadline"]:
            return 0
        if f["status"] == "dropped":
            return 1
        return 2 if f["planned"] else 3

    fig, (top, bottom) = plt.subplots(2, 1, figsize=(10, 5.6), sharex=True, gridspec_kw={"height_ratios": [1.1, 1]})
    for r, colour in colours.items():
        xs = [f["t_s"] for f in frames if row(f) == r]
        top.scatter(xs, [r] * len(xs), s=9, color=colour, marker="|" if r else "x")
    top.set_yticks(list(rows.values()), list(rows.keys()))
    top.set_ylim(-0.6, 3.6)
    top.set_clip_on(False)
    for f_row in (2, 3):
        xs = [f["t_s"] for f in frames if row(f) == f_row]
        ys = [f["age_ms"] for f in frames if row(f) == f_row]
        bottom.scatter(xs, ys, s=8, color=colours[f_row], label=list(rows)[3 - f_row])
    bottom.axhline(float(result.summary["budget_ms"]), color="tab:red", lw=0.8, ls=":", label="deadline (budget)")
    bottom.set_ylabel("age at result, ms\n(capture to end)")
    bottom.set_xlabel(f"seconds since the cloud process was {'killed' if result.summary.get('fault') == 'kill' else 'frozen'} (capture time)")
    bottom.set_yscale("log")
    events = result.events_s
    for ax in (top, bottom):
        for name, style in (("kill", "-"), ("detect", "--"), ("ready", "-"), ("split_resumed", "--")):
            if name in events and events[name] == events[name]:
                ax.axvline(events[name], color="black", lw=0.8, ls=style)
    labels = (("kill", "killed" if result.summary.get("fault") == "kill" else "frozen", 3.75),
              ("detect", "detected", 4.15), ("ready", "cloud back", 3.75), ("split_resumed", "split resumes", 4.15))
    for name, label, height in labels:
        if name in events and events[name] == events[name]:
            top.text(events[name], height, label, fontsize=7, ha="center", va="bottom")
    bottom.legend(fontsize=7, loc="upper left")
    s = result.summary
    fig.suptitle(
        f"failover ({s['fault']}): {s['action']} at {s['fps']:.0f} fps, heartbeat {s['heartbeat_interval_ms']:.0f} ms - "
        f"detect {s['detect_ms']} ms, recover {s['recover_ms']} ms, lost {s['frames_lost']}, "
        f"misses while down {s['deadline_misses_while_down']}",
        fontsize=9,
    )
    fig.tight_layout(rect=(0, 0, 1, 0.97))
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


FAILOVER_COLUMNS = (
    "detect_ms", "link_up_ms", "recover_ms", "frames_total", "frames_ended", "frames_lost",
    "frames_fallback", "fallback_after_waiting", "frames_dropped", "deadline_misses_while_down",
    "misses_waiting_on_link", "misses_running_locally", "local_ms_p95_while_down", "age_p95_ms", "load_avg_1min",
)


def _failover(args: argparse.Namespace) -> int:
    action = parse_action(args.split)
    rows = []
    frames_by_run: list[list[dict[str, object]]] = []
    last: FailoverResult | None = None
    for run in range(args.runs):
        result = run_failover(
            args.bundle, action, fps=args.fps, budget_ms=args.budget_ms, heartbeat_ms=args.heartbeat_ms,
            before_s=args.before_s, down_s=args.down_s, after_s=args.after_s, fault=args.fault,
            cloud_nice=args.cloud_nice,
        )
        rows.append({"run": run + 1, **{k: v for k, v in result.summary.items() if k != "by_phase"},
                     "events_s": result.events_s, "fallback_reasons_after_return": fallback_reasons(result)})
        frames_by_run.append(result.frames)
        last = result
        print(f"run {run + 1}: by phase {result.summary['by_phase']}")
    print(format_table(rows, ("run", *FAILOVER_COLUMNS)))
    assert last is not None
    targets = {
        "frames_lost == 0": all(r["frames_lost"] == 0 for r in rows),
        "detect_ms <= 3 heartbeat intervals": all(r["detect_ms"] <= r["detect_budget_ms"] for r in rows),
        "recover_ms <= 1000": all(r["recover_ms"] <= 1000 for r in rows),
        "deadline_misses_while_down == 0": all(r["deadline_misses_while_down"] == 0 for r in rows),
        "no miss from waiting on the dead link": all(r["misses_waiting_on_link"] == 0 for r in rows),
    }
    for name, met in targets.items():
        print(f"  {'met ' if met else 'MISSED'}  {name}")
    if args.json:
        write_json(args.json, "failover", rows, targets=targets, by_phase=last.summary["by_phase"],
                   events_s=last.events_s, frames_by_run=frames_by_run, bundle=str(args.bundle))
    if args.png:
        plot_failover(last, args.png)
        print(f"wrote {args.png}")
    return 0


# --------------------------------------------------------------------------- freshness


def run_freshness(
    bundle_dir: str | Path, fps: float, seconds: float, repeat: int, mode: str, budget_ms: float
) -> dict[str, object]:
    """Local inference (`repeat` model runs per frame) behind a `fps` source; `mode` is latest or fifo."""
    from splitrt.edge.runtime import EdgeRuntime
    from splitrt.edge.sources import PacedSource

    class SlowerDevice(EdgeRuntime):
        """Stands in for a slower device: each frame runs the model `repeat` times (real compute, no sleep)."""

        def infer(self, pixels, action=None, **kwargs):  # type: ignore[no-untyped-def,override]
            started_ms = self.clock_ms()
            for _ in range(repeat - 1):
                super().infer(pixels.pixels if hasattr(pixels, "pixels") else pixels, Local(), budget_ms=60_000)
            outcome = super().infer(pixels, action, **kwargs)
            outcome.latency_ms = outcome.done_ms - started_ms  # the whole (slower) pipeline
            return outcome

    bundle = Bundle.load(bundle_dir)
    runtime = SlowerDevice(bundle, action=Local())
    runtime.warm_up()
    source = PacedSource(sample_frames(), fps=fps, count=int(fps * seconds), name="camera")
    if mode == "fifo":
        source.realtime = False  # type: ignore[misc]  # queue everything: the naive pipeline

    async def main() -> list[FrameOutcome]:
        return [o async for o in runtime.run(source, budget_ms=budget_ms, max_queue=1_000_000)]

    started = time.perf_counter()
    outcomes = asyncio.run(main())
    elapsed_s = time.perf_counter() - started
    runtime.close()
    done = [o for o in outcomes if o.ok]
    ages = [o.age_ms for o in done]
    latencies = [o.latency_ms for o in done]
    first_capture = min((o.capture_ms for o in outcomes), default=0.0)
    series = [[round((o.capture_ms - first_capture) / 1000.0, 4), round(o.age_ms, 2)] for o in done]
    return {
        "mode": "latest-frame-wins" if mode == "latest" else "fifo (no dropping)",
        "series_capture_s_age_ms": series,
        "source_fps": fps,
        "model_runs_per_frame": repeat,
        "frames_total": len({o.frame_id for o in outcomes}),
        "frames_ok": len(done),
        "frames_dropped": sum(o.status is Status.DROPPED for o in outcomes),
        "pipeline_ms_p50": round(percentile(latencies, 50), 2),
        "pipeline_ms_p95": round(percentile(latencies, 95), 2),
        "results_per_s": round(len(done) / elapsed_s, 2),
        "age_p50_ms": round(percentile(ages, 50), 1),
        "age_p95_ms": round(percentile(ages, 95), 1),
        "age_max_ms": round(max(ages), 1) if ages else float("nan"),
        "deadline_misses": sum(o.missed_deadline for o in outcomes),
        # Latest frame wins: a result waited for at most one frame in progress, then ran: age <~ 2 pipeline times.
        "age_p95_over_pipeline_p95": round(percentile(ages, 95) / max(1e-9, percentile(latencies, 95)), 2),
        "wall_s": round(elapsed_s, 2),
        "load_avg_1min": round(os.getloadavg()[0], 2),
    }


def _freshness(args: argparse.Namespace) -> int:
    rows = [
        run_freshness(args.bundle, args.fps, args.seconds, args.model_runs, mode, args.budget_ms)
        for mode in args.modes.split(",")
    ]
    series = {str(r["mode"]): r.pop("series_capture_s_age_ms") for r in rows}
    print(format_table(rows, ("mode", "source_fps", "model_runs_per_frame", "pipeline_ms_p50", "pipeline_ms_p95",
                              "results_per_s", "frames_total", "frames_ok", "frames_dropped", "age_p50_ms", "age_p95_ms",
                              "age_max_ms", "age_p95_over_pipeline_p95", "deadline_misses", "load_avg_1min")))
    if args.json:
        write_json(args.json, "freshness", rows, bundle=str(args.bundle), seconds=args.seconds, series=series)
    if args.png:
        plot_freshness(rows, series, args.png)
        print(f"wrote {args.png}")
    return 0


def plot_freshness(rows: list[dict[str, object]], series: dict[str, list[list[float]]], path: str | Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(9, 4))
    for row, colour in zip(rows, ("tab:blue", "tab:red", "tab:green")):
        points = series[str(row["mode"])]
        ax.plot([p[0] for p in points], [p[1] for p in points], ".", ms=4, color=colour,
                label=f"{row['mode']}: p95 age {row['age_p95_ms']:.0f} ms, {row['frames_dropped']} dropped")
    ax.set_yscale("log")
    ax.set_xlabel("capture time, s")
    ax.set_ylabel("age of the result, ms (capture to end)")
    first = rows[0]
    ax.set_title(f"{first['source_fps']:.0f} fps source, pipeline p50 {first['pipeline_ms_p50']:.0f} ms "
                 f"({first['model_runs_per_frame']} model runs per frame)", fontsize=9)
    ax.legend(fontsize=8)
    save_figure(fig, path)


def register(sub: argparse._SubParsersAction) -> None:
    failover = sub.add_parser("failover", help="kill and restart a real cloud process while frames stream")
    failover.add_argument("--bundle", default=DEFAULT_BUNDLE, help="bundle directory")
    failover.add_argument("--split", default="b4/fp16", help="the action while the cloud is up (point/codec or offload)")
    failover.add_argument("--fps", type=float, default=30.0, help="frame rate of the paced (camera-like) source")
    failover.add_argument("--budget-ms", type=float, default=200.0, help="deadline of each frame after its capture")
    failover.add_argument("--heartbeat-ms", type=float, default=100.0, help="heartbeat interval")
    failover.add_argument("--before-s", type=float, default=3.0, help="streaming before the kill")
    failover.add_argument("--down-s", type=float, default=3.0, help="how long the cloud stays dead")
    failover.add_argument("--after-s", type=float, default=3.0, help="streaming after the cloud is back")
    failover.add_argument("--fault", choices=("kill", "freeze"), default="kill",
                          help="kill: SIGKILL then a fresh process; freeze: SIGSTOP then SIGCONT (a hung cloud)")
    failover.add_argument("--cloud-nice", type=int, default=0,
                          help="niceness added to the cloud process (it shares this machine's cores with the edge)")
    failover.add_argument("--runs", type=int, default=1, help="repeat the whole kill/restart cycle")
    failover.add_argument("--json", help="write the summary and every frame of every run here")
    failover.add_argument("--png", help="plot the frames' actions and latency around the outage here")
    failover.set_defaults(func=_failover)

    fresh = sub.add_parser("freshness", help="age of results behind a 30 fps source and a slower pipeline")
    fresh.add_argument("--bundle", default=DEFAULT_BUNDLE, help="bundle directory")
    fresh.add_argument("--fps", type=float, default=30.0)
    fresh.add_argument("--seconds", type=float, default=6.0, help="how long the source runs")
    fresh.add_argument("--model-runs", type=int, default=5,
                       help="model runs per frame: emulates a device that many times slower than this one")
    fresh.add_argument("--budget-ms", type=float, default=500.0)
    fresh.add_argument("--modes", default="latest,fifo", help="latest (latest frame wins) and/or fifo")
    fresh.add_argument("--json", help="write the rows here")
    fresh.add_argument("--png", help="plot the age of every result over time here")
    fresh.set_defaults(func=_freshness)
