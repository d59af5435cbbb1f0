"""`splitrt bench e2e`: the real edge and cloud processes through an emulated uplink, on an emulated device.

For every trace and policy: a `splitrt cloud serve` process (no batching, as the simulator assumes no queue),
an emulated link in front of it (`splitrt.bench.netem.Emulation`: the trace's rate, half the RTT each way)
and an edge process (`splitrt.bench.e2e_edge`) on the emulated device (under the profile's CPU quota, or with
its stages dilated to the profile's share) that runs the policy live on paced frames of the odd-class images.
The edge starts, connects and warms up before the device is slowed; then it measures its own actions
(`calibration_frames` paced frames each through the real link, before the trace limits its rate: device times,
and times after the link) and runs its policy with them; then the trace starts and trace time 0 is its first
frame. Each row is measured the same way as a `bench policy` row and is put beside what the simulator says for
the same settings, trace window, options and images, three ways:

- `simulated_*` (and `difference_pp` of accuracy at deadline): with each frame's device time as the run measured
  it (`measured_device_ms`; the edge's calibration for an action the run did not take on that frame). The
  device's speed is then an input, and what is compared is the rest of the model: link, cloud, policy.
- `calibrated_*`: with the edge's calibration alone (device times measured seconds before the run).
- `presampled_*`: with the device times sampled earlier (`bench.device_costs`), as `bench policy` predicts.

Under the quota (`device_emulation` "quota") the three differ because the emulated device's speed is not
stationary on a shared machine: under a 13% quota of a 10 ms period (below the kernel's 4 ms tick) a frame's
latency comes in clusters a period apart whose mix moves, so device times sampled even seconds before a run can
put an action that sits near the deadline tens of points off in deadline hits. With "dilation" the edge runs
each stage at this machine's speed and sleeps to its CPU time / share (`splitrt.devices.dilation`): a device as
steady as a real one, whose remaining drift is that of the CPU time itself; with "steady" a model's run takes
the least CPU time of its recent runs, which takes the host's noise out of that too.
"""
from __future__ import annotations

import argparse
import contextlib
import json
import os
import queue
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Sequence

import numpy as np

from splitrt.bench.common import format_table, p50, read_labelled_images, select_parity, write_json
from splitrt.edge.calibration import frame_times_ms, measured_options
from splitrt.policies.options_file import action_from_key, option_to_json
from splitrt.bench.failover import CloudProcess, free_tcp_port
from splitrt.bench.netem.emulation import MODES, Emulation
from splitrt.bench.payloads import offload_sizes
from splitrt.bench.plot import save_figure
from splitrt.bench.policy import (DEFAULT_CANDIDATES, DEFAULT_MEASUREMENTS_DIR, add_hedges_argument,
                                  add_replay_arguments, cached_options, candidate_set, options_cache_path,
                                  options_on_device)
from splitrt.bundle import Bundle
from splitrt.devices.dilation import STEADY_RUNS, dilates
from splitrt.devices.profiles import DeviceProfile, get_profile, profile_environment, profile_quota
from splitrt.policies.policies import ActionOption, hedged, make_policy, with_best_hedges
from splitrt.policies.simulate import FrameRecord, SimConfig, simulate, summarize
from splitrt.policies.trace import UplinkTrace

COLUMNS = ("policy", "frames", "deadline_hit", "accuracy_at_deadline", "simulated_accuracy_at_deadline",
           "difference_pp", "calibrated_difference_pp", "presampled_difference_pp", "latency_p50_ms", "latency_p95_ms",
           "predicted_latency_p50_ms", "bytes_mean")
ADAPTIVE_POLICIES = ("latency", "deadline")
FAMILIES = ("local@", "split@", "offload/")  # one best static action of each, besides plain `local`


@dataclass(frozen=True)
class E2ESettings:
    device_profile: str
    deadline_ms: float
    fps: float
    rtt_ms: float
    duration_s: float
    mode: str = "auto"
    initial_bps: float = SimConfig.initial_bps
    probe_interval_ms: float = 1000.0
    allow_thread_fallback: bool = False
    edge_cost_samples: int = 30  # device-time samples per action for the simulator (`bench.device_costs`)
    calibration_frames: int = 12  # device-time samples per action that the edge takes on the device, before the run
    candidates: str = DEFAULT_CANDIDATES  # the action set, as `bench policy --candidates`
    device_emulation: str = "quota"  # the edge under the profile's CPU quota, or its stages dilated (`devices.dilation`)
    hedges: bool = True  # also each remote action hedged by its best local one (`with_best_hedges`), as bench policy

    def sim_config(self) -> SimConfig:
        return SimConfig(fps=self.fps, deadline_ms=self.deadline_ms, duration_s=self.duration_s, rtt_ms=self.rtt_ms,
                         initial_bps=self.initial_bps, probe_interval_ms=self.probe_interval_ms)

    @property
    def frames(self) -> int:
        return len(np.arange(0.0, self.duration_s * 1000.0, 1000.0 / self.fps))


# --------------------------------------------------------------------------- which policies


def default_policies(options: Sequence[ActionOption], correctness: dict[str, np.ndarray],
                     sizes: dict[str, np.ndarray], traces: Sequence[UplinkTrace], config: SimConfig) -> list[str]:
    """`static:local`, the best static action of each family (exit, split, offload, and hedged where `options` has
    hedged ones) by simulated accuracy at deadline averaged over the traces, then `latency` and `deadline`."""
    def score(key: str) -> float:
        policy = make_policy(f"static:{key}")
        return float(np.mean([summarize(policy.name, simulate(policy, options, correctness, t, config, sizes))[
            "accuracy_at_deadline"] for t in traces]))

    chosen = ["static:local"]
    families = [[o.key for o in options if o.key.startswith(prefix) and o.hedge is None] for prefix in FAMILIES]
    for family in [*families, [o.key for o in options if o.hedge is not None]]:
        if family:
            chosen.append(f"static:{max(family, key=score)}")
    return chosen + list(ADAPTIVE_POLICIES)


def actions_for(policy: str, options: Sequence[ActionOption]) -> list[ActionOption]:
    """The options a policy may pick: a static policy only its own (the edge then warms up just that one; a hedged
    one also its remote part and its hedge, which the edge measures it by). A static hedged action need not be one
    that `with_best_hedges` paired: any remote option hedged by any local one among `options` may be named."""
    if policy.startswith("static:"):
        key = policy.removeprefix("static:")
        picked = [o for o in options if o.key == key] or [_named_hedged(key, options)]
        if picked[0].hedge is not None:
            parts = {picked[0].remote_key, picked[0].hedge.key}
            picked = [o for o in options if o.key in parts] + picked
        return picked
    make_policy(policy)  # a clear error for an unknown name
    return list(options)


def _named_hedged(key: str, options: Sequence[ActionOption]) -> ActionOption:
    """The hedged option `key` names, from its remote part and its hedge among `options`."""
    by_key = {o.key: o for o in options}
    try:
        action = action_from_key(key)
    except ValueError:
        action = None
    hedge = getattr(action, "hedge", None)
    remote = None if hedge is None else by_key.get(replace(action, hedge=None).describe())
    local = None if hedge is None else by_key.get(hedge.describe())
    if remote is None or local is None:
        raise ValueError(f"static:{key}: no such action among {[o.key for o in options]}")
    return hedged(remote, local)


# --------------------------------------------------------------------------- one run


@dataclass
class EdgeRun:
    outcomes: list[dict[str, object]]
    trace_start_wall_ms: float
    quota: str  # how the device was emulated: "cgroup", "threads only" (no cgroup), "dilation" or "steady"
    calibration_ms: dict[str, list[float]]  # the edge's own device-time samples per action, on the emulated device
    after_link_ms: dict[str, list[float]]  # and of the time after the link (less the RTT), remote actions


class _EdgeProcess:
    """The edge subprocess and a thread that reads its JSON events (stderr goes to a file: never blocks it)."""

    def __init__(self, argv: list[str], env: dict[str, str], stderr_path: Path) -> None:
        self._stderr = open(stderr_path, "w+", encoding="utf-8")
        self.process = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self._stderr,
                                        text=True, env=env)
        self.events: queue.Queue[dict[str, object]] = queue.Queue()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            if line.startswith("{"):
                self.events.put(json.loads(line))
        self.events.put({"event": "exit", "detail": f"the edge process exited (code {self.process.wait()})"})

    def expect(self, name: str, timeout_s: float) -> dict[str, object]:
        try:
            event = self.events.get(timeout=timeout_s)
        except queue.Empty:
            raise TimeoutError(f"the edge process did not report '{name}' within {timeout_s:.0f} s") from None
        if event.get("event") != name:
            raise RuntimeError(f"edge process: {event.get('detail', event)}; stderr: {self.stderr_tail()}")
        return event

    def send(self, line: str) -> None:
        assert self.process.stdin is not None
        self.process.stdin.write(line + "\n")
        self.process.stdin.flush()

    def stderr_tail(self, chars: int = 2000) -> str:
        self._stderr.flush()
        self._stderr.seek(0)
        return self._stderr.read()[-chars:].strip()

    def close(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
        self.process.wait()
        self._stderr.close()


def run_edge_process(spec: dict[str, object], emulation: Emulation, profile: DeviceProfile,
                     allow_thread_fallback: bool, timeout_s: float) -> EdgeRun:
    """Start the edge, wait until it is warm, put it under the quota (unless `spec["dilation_share"]` is set: the
    edge then slows its own stages), let it calibrate, start the trace, let it run."""
    dilating = spec.get("dilation_share") is not None
    package_root = str(Path(__file__).resolve().parents[2])
    env = profile_environment(profile)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [package_root, env.get("PYTHONPATH")]))
    limit = (profile_quota(profile, "threads" if allow_thread_fallback else "error", label=f"e2e-{profile.name}")
             if not dilating else contextlib.nullcontext())
    with tempfile.TemporaryDirectory(prefix="splitrt-e2e-") as scratch, limit as quota:
        spec_path = Path(scratch) / "spec.json"
        spec_path.write_text(json.dumps({**spec, "out": str(Path(scratch) / "outcomes.jsonl")}), encoding="utf-8")
        argv = emulation.edge_command([sys.executable, "-m", "splitrt.bench.e2e_edge", str(spec_path)])
        edge = _EdgeProcess(argv, env, Path(scratch) / "stderr.txt")
        try:
            edge.expect("ready", 300.0)
            if quota is not None:
                quota.add_process(edge.process.pid)  # every thread of it: the device is this slow from now on
            edge.send("calibrate")
            calibrated = edge.expect("calibrated", 600.0)
            emulation.start_trace()
            trace_start_wall_ms = time.time() * 1000.0
            edge.send("go")
            edge.expect("done", timeout_s)
            edge.process.wait(30)
        finally:
            edge.close()
        lines = (Path(scratch) / "outcomes.jsonl").read_text(encoding="utf-8").splitlines()
    def samples(name: str) -> dict[str, list[float]]:
        return {str(k): [float(x) for x in v] for k, v in calibrated[name].items()}  # type: ignore[union-attr]

    if dilating:
        device_mode = "steady" if spec.get("steady_runs") else "dilation"
    else:
        device_mode = "cgroup" if quota else "threads only"
    return EdgeRun([json.loads(line) for line in lines], trace_start_wall_ms, device_mode,
                   samples("samples_ms"), samples("after_link_ms"))


def measured_records(run: EdgeRun, labels: Sequence[int]) -> list[FrameRecord]:
    """The edge's outcomes as simulator records: times from the trace's start, correctness from the labels."""
    records = []
    for o in sorted(run.outcomes, key=lambda o: int(o["frame_id"])):  # type: ignore[arg-type]
        index = int(o["frame_id"]) - 1  # type: ignore[arg-type]
        status = str(o["status"])
        if status == "ok":
            status = "late" if o["missed_deadline"] else "ok"
        elif status not in ("timeout", "dropped"):
            status = "failed"  # rejected, expired or failed: ended without a result
        top = o["top"]
        answered = status in ("ok", "late") and bool(top)
        correct = answered and int(top[0]["class_index"]) == labels[index % len(labels)]  # type: ignore[index]
        records.append(FrameRecord(
            frame_id=index,
            capture_ms=float(o["capture_ms"]) - run.trace_start_wall_ms,  # type: ignore[arg-type]
            action="" if status == "dropped" else str(o["action"]),
            status=status,
            latency_ms=float(o["age_ms"]),  # type: ignore[arg-type]
            correct=bool(correct),
            bytes_sent=int(o["bytes_sent"]),  # type: ignore[arg-type]
            hedge_answered=bool(o.get("hedge_answered", False)),
        ))
    return records


# --------------------------------------------------------------------------- the benchmark


def run_e2e_bench(
    traces: Sequence[str | Path],
    bundle_dir: str | Path,
    images: str | Path,
    json_out: str | Path,
    settings: E2ESettings,
    policies: Sequence[str] | None = None,
    plot: str | Path | None = None,
    limit: int | None = None,
    frames_dir: str | Path | None = None,
    measurements_dir: str | Path = DEFAULT_MEASUREMENTS_DIR,
) -> list[dict[str, object]]:
    """Every policy on every trace, for real and simulated; with `frames_dir`, each run's frames as JSON lines
    (`<trace>-<policy>.jsonl`: the edge's outcome and the simulated record of each frame, side by side)."""
    bundle = Bundle.load(bundle_dir)
    profile = get_profile(settings.device_profile)
    actions = candidate_set(bundle, settings.candidates)
    measured, correctness = cached_options(bundle, images, options_cache_path(bundle, actions, measurements_dir), limit,
                                           actions)
    items = select_parity(read_labelled_images(images), "odd")[:limit]
    options, cost_model = options_on_device(bundle, measured, images, profile, settings.fps,
                                            settings.edge_cost_samples, settings.device_emulation, measurements_dir)
    if settings.hedges:
        options = with_best_hedges(options, settings.deadline_ms)
    labels = [i.class_index for i in items]
    sizes = offload_sizes(bundle, images, options, limit)
    loaded = [UplinkTrace.load(t) for t in traces]
    config = settings.sim_config()
    policies = list(policies) if policies else default_policies(options, correctness, sizes, loaded, config)
    print(f"policies: {', '.join(policies)}; {settings.frames} frames of {settings.duration_s:.0f} s per run; "
          f"edge costs {cost_model}")
    rows: list[dict[str, object]] = []
    timelines: dict[str, dict[str, tuple[list[FrameRecord], list[FrameRecord]]]] = {}
    cloud = CloudProcess(bundle_dir, free_tcp_port(), extra_args=["--no-batching"])
    cloud.start()
    try:
        for trace_path, trace in zip(traces, loaded):
            timelines[trace.name] = {}
            for policy in policies:
                picked = actions_for(policy, options)
                spec = {
                    "bundle": str(bundle_dir), "endpoint": "", "policy": policy,
                    "options": [option_to_json(o) for o in picked],
                    "images": [str(i.path) for i in items], "fps": settings.fps, "count": settings.frames,
                    "deadline_ms": settings.deadline_ms, "rtt_ms": settings.rtt_ms,
                    "initial_bps": settings.initial_bps, "probe_interval_ms": settings.probe_interval_ms,
                    "calibration_frames": settings.calibration_frames,
                    "dilation_share": profile.dilation_share if dilates(settings.device_emulation) else None,
                    "steady_runs": STEADY_RUNS if settings.device_emulation == "steady" else 0,
                }
                with Emulation(("127.0.0.1", cloud.port), trace, one_way_delay_ms=settings.rtt_ms / 2.0,
                               mode=settings.mode, follow_now=False) as emulation:
                    spec["endpoint"] = emulation.endpoint
                    run = run_edge_process(spec, emulation, profile, settings.allow_thread_fallback,
                                           timeout_s=settings.duration_s + 60.0)
                    mode = emulation.mode
                records = measured_records(run, labels)
                # frames at the run's own phase of the trace (its first came a few ms after the trace's start)
                first_ms = records[0].capture_ms - records[0].frame_id * 1000.0 / settings.fps if records else 0.0
                aligned = replace(config, first_frame_ms=first_ms)
                calibrated = measured_options(picked, run.calibration_ms, run.after_link_ms, settings.deadline_ms,
                                              rehedge=not policy.startswith("static:"))  # as the edge ran them
                simulated = simulate(make_policy(policy), calibrated, correctness, trace, aligned, sizes,
                                     frame_edge_ms=measured_device_ms(run))
                predictions = {  # without the run's own device times: the edge's calibration, the samples from before
                    "calibrated": simulate(make_policy(policy), calibrated, correctness, trace, aligned, sizes),
                    "presampled": simulate(make_policy(policy), picked, correctness, trace, aligned, sizes),
                }
                row = _row(trace, policy, mode, run, records, simulated, predictions)
                if frames_dir is not None:
                    write_frames(Path(frames_dir) / f"{trace.name}-{policy}.jsonl".replace("/", "_").replace(":", "_"),
                                 run, simulated)
                rows.append(row)
                timelines[trace.name][policy] = (records, simulated)
                print(format_table([row], COLUMNS), flush=True)
    finally:
        cloud.stop()
    print()
    print(format_table(rows, ("trace", *COLUMNS)))
    write_json(json_out, "e2e", rows, settings={**asdict(settings), "traces": [str(t) for t in traces],
               "evaluation_images": len(items), "cpu_share": profile.cpu_share,
               "dilation_share": profile.dilation_share,
                         "edge_cost_model": cost_model},
               options=[option_to_json(o) for o in options])
    if plot:
        plot_e2e(timelines, loaded, settings, plot)
    return rows


def _row(trace: UplinkTrace, policy: str, mode: str, run: EdgeRun, records: list[FrameRecord],
         simulated: list[FrameRecord], predictions: dict[str, list[FrameRecord]]) -> dict[str, object]:
    """`simulated_*` with the run's own device times; each of `predictions` (a name: records) as
    `<name>_accuracy_at_deadline`, `<name>_deadline_hit` and `<name>_difference_pp`."""
    measured = summarize(policy, records)
    sim = summarize(policy, simulated)
    predicted = [float(o["predicted_ms"]) for o in run.outcomes if o["status"] != "dropped"]  # type: ignore[arg-type]
    first_capture = min((r.capture_ms for r in records), default=0.0)
    accuracy = float(measured["accuracy_at_deadline"])  # type: ignore[arg-type]
    row: dict[str, object] = {
        "trace": trace.name,
        **measured,
        "emulation": mode,
        "device_quota": run.quota,
        "predicted_latency_p50_ms": p50(predicted),
        "simulated_accuracy_at_deadline": sim["accuracy_at_deadline"],
        "simulated_deadline_hit": sim["deadline_hit"],
        "simulated_latency_p50_ms": sim["latency_p50_ms"],
        "simulated_bytes_mean": sim["bytes_mean"],
        "simulated_actions": sim["actions"],
        "difference_pp": 100.0 * (accuracy - float(sim["accuracy_at_deadline"])),  # type: ignore[arg-type]
    }
    for name, prediction in predictions.items():
        summary = summarize(policy, prediction)
        row[f"{name}_accuracy_at_deadline"] = summary["accuracy_at_deadline"]
        row[f"{name}_deadline_hit"] = summary["deadline_hit"]
        other = float(summary["accuracy_at_deadline"])  # type: ignore[arg-type]
        row[f"{name}_difference_pp"] = 100.0 * (accuracy - other)
    row["calibrated_edge_ms_p50"] = {k: round(p50(v), 2) for k, v in run.calibration_ms.items() if v}
    row["calibrated_after_link_ms_p50"] = {k: round(p50(v), 2) for k, v in run.after_link_ms.items() if v}
    row["first_frame_after_trace_start_ms"] = first_capture
    row["failed"] = sum(r.status == "failed" for r in records)
    return row


def write_frames(path: Path, run: EdgeRun, simulated: Sequence[FrameRecord]) -> None:
    """One JSON line per frame: the edge's outcome (times relative to the trace's start) and the simulator's."""
    path.parent.mkdir(parents=True, exist_ok=True)
    by_frame = {r.frame_id: r for r in simulated}
    with open(path, "w", encoding="utf-8") as out:
        for o in sorted(run.outcomes, key=lambda o: int(o["frame_id"])):  # type: ignore[arg-type]
            index = int(o["frame_id"]) - 1  # type: ignore[arg-type]
            measured = {**o, "capture_ms": float(o["capture_ms"]) - run.trace_start_wall_ms}  # type: ignore[arg-type]
            sim = by_frame.get(index)
            out.write(json.dumps({"frame": index, "measured": measured,
                                  "simulated": asdict(sim) if sim is not None else None}) + "\n")


def measured_device_ms(run: EdgeRun) -> dict[int, dict[str, float]]:
    """Each frame's device times in the run (`frame_times_ms`), by frame index and action key, for
    `simulate(frame_edge_ms=)`: a hedged frame's under its remote part's key, and its hedge's where it answered."""
    measured: dict[int, dict[str, float]] = {}
    for t in frame_times_ms(run.outcomes):
        action = action_from_key(t.action)
        hedge = getattr(action, "hedge", None)
        if hedge is None:
            measured[t.frame - 1] = {t.action: t.edge_ms}
            continue
        measured[t.frame - 1] = {replace(action, hedge=None).describe(): t.edge_ms,
                                 **({hedge.describe(): t.hedge_ms} if t.hedge_ms is not None else {})}
    return measured


def plot_e2e(timelines: dict[str, dict[str, tuple[list[FrameRecord], list[FrameRecord]]]],
             traces: Sequence[UplinkTrace], settings: E2ESettings, path: str | Path, window_s: float = 5.0) -> None:
    """Per trace: the uplink's capacity with each frame's measured latency under `deadline`, and every
    policy's accuracy at deadline per window, measured (solid) and simulated (dashed)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    by_name = {t.name: t for t in traces}
    figure, axes = plt.subplots(2 * len(timelines), 1, figsize=(12, 5.6 * len(timelines)), squeeze=False)
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    edges = np.arange(0.0, settings.duration_s + window_s, window_s)
    for index, (name, runs) in enumerate(timelines.items()):
        top, bottom = axes[2 * index, 0], axes[2 * index + 1, 0]
        starts, rates = by_name[name].bandwidth_series(1000, int(settings.duration_s * 1000))
        top.fill_between(starts / 1000, rates / 1e6, step="post", color="#cfe2f3", label="uplink capacity (1 s)")
        top.set_ylabel("Mbit/s")
        top.set_xlim(0, settings.duration_s)
        top.set_title(f"{name}: measured latency of each frame under `deadline` ({settings.device_profile}, "
                      f"deadline {settings.deadline_ms:.0f} ms, RTT {settings.rtt_ms:.0f} ms)")
        twin = top.twinx()
        records = runs.get("deadline", ([], []))[0]
        keys = sorted({r.action for r in records if r.action})
        for k, key in enumerate(keys):
            points = [(r.capture_ms / 1000, r.latency_ms) for r in records if r.action == key]
            twin.scatter(*zip(*points), s=5, color=colors[k % len(colors)], label=key)
        twin.axhline(settings.deadline_ms, color="#c0392b", lw=0.8, ls="--", label="deadline")
        twin.set_ylabel("latency ms")
        twin.legend(loc="upper right", fontsize=7, markerscale=3)
        for k, (policy, (measured, simulated)) in enumerate(runs.items()):
            color = colors[k % len(colors)]
            for records_, style, label in ((measured, "-", policy), (simulated, "--", None)):
                times = np.array([r.capture_ms / 1000 for r in records_])
                hits = np.array([r.correct and r.status == "ok" for r in records_], dtype=float)
                values = [hits[(times >= a) & (times < b)].mean() if ((times >= a) & (times < b)).any() else np.nan
                          for a, b in zip(edges[:-1], edges[1:])]
                bottom.stairs(values, edges, color=color, ls=style, lw=1.2, label=label)
        bottom.set_ylabel(f"accuracy at deadline ({window_s:.0f} s)")
        bottom.set_ylim(-0.02, 1.02)
        bottom.set_xlim(0, settings.duration_s)
        bottom.legend(loc="lower left", fontsize=7, ncol=3, title="solid: measured, dashed: simulated", title_fontsize=7)
    axes[-1, 0].set_xlabel("time since the trace's start (s)")
    save_figure(figure, path)


# --------------------------------------------------------------------------- command line


def _run(args: argparse.Namespace) -> int:
    settings = E2ESettings(
        device_profile=args.device_profile,
        deadline_ms=args.deadline_ms,
        fps=args.fps,
        rtt_ms=args.rtt_ms,
        duration_s=args.duration_s,
        mode=args.emulation,
        allow_thread_fallback=args.allow_thread_fallback,
        candidates=args.candidates,
        edge_cost_samples=args.edge_cost_samples,
        calibration_frames=args.calibration_frames,
        device_emulation=args.device_emulation,
        hedges=args.hedges,
    )
    policies = [p for p in (args.policies or "").split(",") if p]
    run_e2e_bench([t for t in args.trace.split(",") if t], args.bundle, args.images, args.json, settings,
                  policies or None, args.plot, args.limit, args.frames_dir, args.measurements)
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser("e2e", help="real edge + cloud processes through an emulated uplink, per policy")
    add_replay_arguments(parser)  # the same options and defaults as bench policy
    add_hedges_argument(parser)
    parser.add_argument("--duration-s", type=float, default=60.0, help="seconds of each trace per policy (from its start)")
    parser.add_argument("--policies", help="comma-separated (static:<action>, latency, deadline, deadline-tracking, "
                        "deadline-uncalibrated); default: static:local, "
                        "the best static exit, split and offload by simulation, latency, deadline")
    parser.add_argument("--emulation", choices=MODES, default="auto", help="link emulation (auto: relay)")
    parser.add_argument("--allow-thread-fallback", action="store_true",
                        help="without a writable cgroup, emulate the device by thread count only (labelled)")
    parser.add_argument("--calibration-frames", type=int, default=E2ESettings.calibration_frames,
                        help="paced frames per action with which the edge measures its device times on the emulated device "
                        "before each run (0: use the times sampled earlier, as bench policy does)")
    parser.add_argument("--plot", help="PNG: capacity and latency over time, accuracy at deadline per window")
    parser.add_argument("--frames-dir", help="write each run's frames, measured and simulated, as JSON lines here")
    parser.set_defaults(func=_run)
