"""`splitrt bench device-load`: how well each estimate of the device's speed predicts its runs while other
processes load the CPU.

A local action runs paced frames of real images through the edge runtime on this machine, while the benchmark
starts and stops busy processes (real ones, each a Python loop) on a schedule of phases. Before every frame each
estimate predicts the run's time; after it, each learns from the time it took:
- `as calibrated`: the median of quiet runs before the schedule (what the options file says);
- `observed runs`: `DeviceSlowdown` from the frames alone (what the edge did before the CPU was read);
- `observed runs + contention`: the same, with the CPU contention from `splitrt.edge.cpu_load` (the edge's now);
- `observed runs + load share`: the same, with 1 / (1 - load), the load being the others' share of all cores
  (what a per-core reading of psutil would give: for comparison).
Rows: each estimate's error over every frame, over the frames just after a phase changed, and how often it
called the frame's deadline (`--deadline-factor` times the calibrated time) wrongly. No cloud is needed.

Then the daemon's start-up calibration (`splitrt.edge.calibration.calibrate`: paced frames through the SDK) runs
beside each count of busy processes of `--startup-hogs`: its median as measured, and netted of the contention
while each frame ran (`CpuContention.between_ms`, what the daemon does when it reads the CPU), against the
median of a quiet calibration (the first count).
"""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

from splitrt.actions import Local, parse_action
from splitrt.bench.common import format_table, p50, percentile, write_json
from splitrt.edge.commands import DEFAULT_BUNDLE
from splitrt.edge.cpu_load import CpuContention
from splitrt.policies.estimators import DeviceSlowdown

# A busy process that ends by itself once the benchmark that started it (its argument) is gone: checked every few
# ms, and before it starts, in case the benchmark ended while it was starting.
HOG_CODE = "import os, sys\nwhile os.getppid() == int(sys.argv[1]):\n    for _ in range(100_000):\n        pass\n"
ESTIMATES = ("as calibrated", "observed runs", "observed runs + contention", "observed runs + load share")
AFTER_CHANGE_FRAMES = 10  # frames after a phase change that the `after_change` columns count


class CpuHogs:
    """Busy processes on this machine, as many as `set` says; all stopped on `close`."""

    def __init__(self) -> None:
        self._processes: list[subprocess.Popen[bytes]] = []

    @property
    def count(self) -> int:
        return len(self._processes)

    def set(self, count: int) -> None:
        while len(self._processes) < count:
            self._processes.append(subprocess.Popen([sys.executable, "-c", HOG_CODE, str(os.getpid())],
                                                    stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                                    stderr=subprocess.DEVNULL))
        while len(self._processes) > count:
            self._stop(self._processes.pop())

    def close(self) -> None:
        self.set(0)

    def __enter__(self) -> "CpuHogs":
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    @staticmethod
    def _stop(process: "subprocess.Popen[bytes]") -> None:
        process.kill()
        process.wait(timeout=10)


def parse_schedule(text: str, flag: str = "--hogs") -> list[int]:
    """"0,2,0,1" -> busy processes per phase."""
    try:
        counts = [int(part) for part in text.split(",")]
    except ValueError:
        raise ValueError(f"{flag}: expected busy processes per phase such as 0,2,0,1, got {text!r}") from None
    if not counts or any(c < 0 or c > 64 for c in counts):
        raise ValueError(f"{flag}: each phase's count must be 0..64, got {text!r}")
    return counts


def load_share_contention(others_cores: float, cores: int) -> float:
    """1 / (1 - load), the load being the others' share of all cores (capped at 0.9)."""
    return 1.0 / (1.0 - min(others_cores / cores, 0.9))


@dataclass
class FrameRecord:
    t_s: float
    phase: int
    hogs: int
    took_ms: float
    others_cores: float
    contention: float
    predicted_ms: dict[str, float] = field(default_factory=dict)


@dataclass
class Estimates:
    """The four estimates of the benchmark, fed the same frames."""

    typical_ms: float
    observed: DeviceSlowdown = field(default_factory=DeviceSlowdown)
    contended: DeviceSlowdown = field(default_factory=DeviceSlowdown)
    load_share: DeviceSlowdown = field(default_factory=DeviceSlowdown)

    def predict(self, contention: float, load_share: float) -> dict[str, float]:
        """Each estimate's time for the next run, the CPU reading now counted (and kept, as the edge does)."""
        self.contended.contention, self.load_share.contention = contention, load_share
        return {
            ESTIMATES[0]: self.typical_ms,
            ESTIMATES[1]: self.typical_ms * self.observed.factor,
            ESTIMATES[2]: self.typical_ms * self.contended.factor,
            ESTIMATES[3]: self.typical_ms * self.load_share.factor,
        }

    def observe(self, took_ms: float, contention: float, load_share: float) -> None:
        """A run took `took_ms`, under what the reading taken after it says."""
        self.observed.observe(took_ms, self.typical_ms)
        self.contended.observe(took_ms, self.typical_ms, contention)
        self.load_share.observe(took_ms, self.typical_ms, load_share)


def summarise(frames: Sequence[FrameRecord], deadline_ms: float) -> list[dict[str, object]]:
    """One row per estimate: relative error of its predictions, and how often it called the deadline wrongly."""
    changed = {i for i, f in enumerate(frames) if i == 0 or f.phase != frames[i - 1].phase}
    after_change = {i + k for i in changed for k in range(AFTER_CHANGE_FRAMES) if i > 0}
    rows: list[dict[str, object]] = []
    for name in ESTIMATES:
        errors = [abs(f.predicted_ms[name] / f.took_ms - 1.0) * 100 for f in frames]
        after = [errors[i] for i in sorted(after_change) if i < len(frames)]
        wrong = sum((f.predicted_ms[name] <= deadline_ms) != (f.took_ms <= deadline_ms) for f in frames)
        rows.append({
            "estimate": name,
            "frames": len(frames),
            "error_p50_pct": round(p50(errors), 1),
            "error_p90_pct": round(percentile(errors, 90), 1),
            "within_15pct": round(sum(e <= 15.0 for e in errors) / max(len(errors), 1), 3),
            "after_change_error_p50_pct": round(p50(after), 1),
            "deadline_calls_wrong": round(wrong / max(len(frames), 1), 3),
        })
    return rows


def phase_rows(frames: Sequence[FrameRecord], typical_ms: float) -> list[dict[str, object]]:
    """One row per phase: what the load did to the runs, and what the CPU reading said of it."""
    rows: list[dict[str, object]] = []
    for phase in sorted({f.phase for f in frames}):
        own = [f for f in frames if f.phase == phase]
        took = [f.took_ms for f in own]
        rows.append({
            "phase": phase,
            "busy_processes": own[0].hogs,
            "frames": len(own),
            "took_p50_ms": round(p50(took), 2),
            "slowdown_p50": round(p50(took) / typical_ms, 2),
            "others_cores_p50": round(p50([f.others_cores for f in own]), 2),
            "contention_p50": round(p50([f.contention for f in own]), 2),
        })
    return rows


def run_schedule(infer: Callable[[int], float], schedule: Sequence[int], phase_s: float, fps: float,
                 typical_ms: float, sampler: CpuContention, hogs: CpuHogs) -> list[FrameRecord]:
    """Paced frames (`infer(i)` runs frame i and returns its time) through every phase of `schedule`."""
    estimates = Estimates(typical_ms)
    frames: list[FrameRecord] = []
    interval_s = 1.0 / fps
    start_s = time.monotonic()
    for phase, count in enumerate(schedule):
        hogs.set(count)
        end_s = start_s + (phase + 1) * phase_s
        next_s = time.monotonic()
        while next_s < end_s:
            contention = sampler.sample()
            others = sampler.others
            predicted = estimates.predict(contention, load_share_contention(others, sampler.cores))
            took_ms = infer(len(frames))
            after = sampler.sample()  # as the edge does: the run netted by a reading whose window covers it
            estimates.observe(took_ms, after, load_share_contention(sampler.others, sampler.cores))
            frames.append(FrameRecord(time.monotonic() - start_s, phase, count, took_ms, others, contention,
                                      predicted))
            next_s += interval_s
            pause_s = next_s - time.monotonic()
            if pause_s > 0:
                time.sleep(pause_s)
            else:
                next_s = time.monotonic()  # behind: the next frame now, not a burst to catch up
    return frames


def startup_calibrations(calibrate_once: Callable[[Callable[[float, float], float]], list[float]],
                         contention_ms: Callable[[float, float], float], counts: Sequence[int], hogs: CpuHogs,
                         settle_s: float = 0.5) -> list[dict[str, object]]:
    """A start-up calibration (`calibrate_once(load)`: its device samples, each netted of `load(start_ms, end_ms)`)
    beside each count of busy processes, the load read by `contention_ms`: the median as measured and as netted,
    each against the first count's netted median (that of a quiet device, for a first count of 0)."""
    from splitrt.edge.calibration import RecordedLoad

    rows: list[dict[str, object]] = []
    quiet_ms = 0.0
    for count in counts:
        hogs.set(count)
        time.sleep(settle_s)  # the busy processes running before the first frame
        load = RecordedLoad(contention_ms)
        netted = calibrate_once(load)
        if not netted:
            raise RuntimeError(f"the calibration beside {count} busy processes kept no frame")
        measured = [ms * f for ms, f in zip(netted, load.factors)]
        quiet_ms = quiet_ms or p50(netted)
        rows.append({"hogs": count, "frames": len(netted), "loaded_frames": load.loaded_frames,
                     "measured_ms": round(p50(measured), 3), "netted_ms": round(p50(netted), 3),
                     "measured_error": round(p50(measured) / quiet_ms - 1.0, 4),
                     "netted_error": round(p50(netted) / quiet_ms - 1.0, 4)})
    hogs.set(0)
    return rows


def run_device_load_bench(bundle_dir: str | Path, model: str, action_text: str, images: str | None, fps: float,
                          phase_s: float, schedule: Sequence[int], deadline_factor: float, calibration_frames: int,
                          threads: int, json_out: str | Path, plot_out: str | Path | None,
                          startup_hogs: Sequence[int] = (), startup_frames: int = 20) -> list[dict[str, object]]:
    from splitrt.demo import DEFAULT_IMAGE_DIR
    from splitrt.edge.calibration import calibrate
    from splitrt.edge.daemon import CALIBRATION_FPS
    from splitrt.edge.runtime import EdgeRuntime
    from splitrt.edge.sources import write_sample_images
    from splitrt.imaging import list_images, load_rgb
    from splitrt.partition.export import load_or_export

    if fps <= 0 or phase_s <= 0 or threads < 1 or calibration_frames < 1 or deadline_factor <= 0 or startup_frames < 1:
        raise ValueError("--fps, --phase-s, --deadline-factor must be > 0, --threads, --calibration-frames and "
                         "--startup-frames >= 1")
    action = parse_action(action_text)
    if not isinstance(action, Local):
        raise ValueError(f"--action: this benchmark runs on the device only (local or local@EXIT), not {action_text!r}")
    folder = Path(images) if images else DEFAULT_IMAGE_DIR
    if not images:
        write_sample_images(folder)
    pictures = [load_rgb(p) for p in list_images(folder)[:32]]
    if not pictures:
        raise FileNotFoundError(f"no images in {folder}")
    runtime = EdgeRuntime(load_or_export(bundle_dir, model), intra_op_threads=threads)
    try:
        runtime.warm_up([action])

        def infer(index: int) -> float:
            started = time.perf_counter()
            outcome = runtime.infer(pictures[index % len(pictures)], action, budget_ms=60_000)
            if not outcome.ok:
                raise RuntimeError(f"frame {index} ended {outcome.status.value}: {outcome.reason}")
            return (time.perf_counter() - started) * 1000.0

        quiet = []
        for index in range(calibration_frames):
            quiet.append(infer(index))
            time.sleep(max(1.0 / fps - quiet[-1] / 1000.0, 0.0))
        typical_ms = p50(quiet)
        sampler = CpuContention(threads=threads).start()
        try:
            with CpuHogs() as hogs:
                frames = run_schedule(infer, schedule, phase_s, fps, typical_ms, sampler, hogs)

                def calibrate_once(load: Callable[[float, float], float]) -> list[float]:
                    samples, _ = calibrate(runtime, [action], pictures[0], startup_frames, CALIBRATION_FPS, 0.0,
                                           load=load)
                    return samples[action.describe()]

                startup = startup_calibrations(calibrate_once,
                                               lambda start_ms, end_ms: sampler.between_ms(start_ms, end_ms,
                                                                                           runtime.clock_ms),
                                               startup_hogs, hogs)
        finally:
            sampler.close()
    finally:
        runtime.close()
    if not frames or len({f.phase for f in frames}) < len(schedule):
        raise ValueError(f"a phase ran no frame ({len(frames)} frames in all): lengthen --phase-s or lower --fps")
    deadline_ms = deadline_factor * typical_ms
    rows = summarise(frames, deadline_ms)
    phases = phase_rows(frames, typical_ms)
    print(format_table(phases, list(phases[0])))
    print()
    print(format_table(rows, list(rows[0])))
    if startup:
        print()
        print(format_table(startup, list(startup[0])))
    write_json(json_out, "device-load", rows, phases=phases, startup_calibration=startup,
               startup_frames=startup_frames, action=action.describe(), fps=fps, phase_s=phase_s,
               schedule=list(schedule), cores=sampler.cores, threads=threads, typical_ms=round(typical_ms, 3),
               deadline_ms=round(deadline_ms, 3), calibration_frames=calibration_frames,
               frames=[{"t_s": round(f.t_s, 3), "phase": f.phase, "hogs": f.hogs, "took_ms": round(f.took_ms, 3),
                        "others_cores": round(f.others_cores, 3), "contention": round(f.contention, 3),
                        "predicted_ms": {k: round(v, 3) for k, v in f.predicted_ms.items()}} for f in frames])
    print(f"{action.describe()} calibrated at {typical_ms:.2f} ms ({calibration_frames} quiet frames); deadline "
          f"{deadline_ms:.1f} ms ({deadline_factor}x); {sampler.cores} cores, {threads} thread(s); wrote {json_out}")
    if plot_out:
        plot_device_load(frames, typical_ms, deadline_ms, plot_out, f"{action.describe()}, {sampler.cores} cores")
        print(f"wrote {plot_out}")
    return rows


def plot_device_load(frames: Sequence[FrameRecord], typical_ms: float, deadline_ms: float, out: str | Path,
                     title: str) -> None:
    """Each frame's time and each estimate's prediction of it, over the phases; below, the CPU reading."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from splitrt.bench.plot import save_figure

    figure, (runs, cpu) = plt.subplots(2, 1, figsize=(15, 7), sharex=True, gridspec_kw={"height_ratios": [3, 1]})
    t = [f.t_s for f in frames]
    runs.plot(t, [f.took_ms for f in frames], ".", color="black", markersize=3, label="run took")
    for name, style in zip(ESTIMATES, (":", "-", "-", "--")):
        runs.plot(t, [f.predicted_ms[name] for f in frames], style, linewidth=1.2, label=f"predicted: {name}")
    runs.axhline(deadline_ms, color="red", linewidth=0.8, linestyle="-.", label=f"deadline {deadline_ms:.0f} ms")
    starts = [i for i, f in enumerate(frames) if i == 0 or f.phase != frames[i - 1].phase]
    for i in starts:
        runs.axvline(frames[i].t_s, color="gray", linewidth=0.6)
        runs.annotate(f"{frames[i].hogs} busy", (frames[i].t_s, 0.98), xycoords=("data", "axes fraction"),
                      fontsize=8, va="top", xytext=(3, 0), textcoords="offset points")
    top = max(max(f.took_ms for f in frames), typical_ms * 3)
    runs.set_ylim(0, min(top, typical_ms * 6))
    runs.set_ylabel("device time (ms)")
    runs.set_title(f"device-load: {title}")
    runs.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    runs.grid(alpha=0.3)
    cpu.plot(t, [f.others_cores for f in frames], color="tab:purple", linewidth=1, label="other processes (cores)")
    cpu.plot(t, [f.contention for f in frames], color="tab:green", linewidth=1, label="contention (x)")
    cpu.set_xlabel("time (s)")
    cpu.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    cpu.grid(alpha=0.3)
    save_figure(figure, out)


def _run(args: argparse.Namespace) -> int:
    run_device_load_bench(args.bundle, args.model, args.action, args.images, args.fps, args.phase_s,
                          parse_schedule(args.hogs), args.deadline_factor, args.calibration_frames, args.threads,
                          args.json, args.plot, parse_schedule(args.startup_hogs, "--startup-hogs") if args.startup_hogs else [],
                          args.startup_frames)
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser("device-load", help="device-time estimates against runs under competing CPU load")
    parser.add_argument("--bundle", default=DEFAULT_BUNDLE, help="bundle directory (exported if missing)")
    parser.add_argument("--model", default="efficientnet-lite0")
    parser.add_argument("--action", default="local", help="a device action: local or local@EXIT")
    parser.add_argument("--images", help="folder of images (default: the demo's sample photographs)")
    parser.add_argument("--fps", type=float, default=10.0)
    parser.add_argument("--phase-s", type=float, default=10.0, help="seconds per phase")
    parser.add_argument("--hogs", default="0,2,0,1,0,3,0", help="busy processes per phase")
    parser.add_argument("--deadline-factor", type=float, default=1.5,
                        help="the deadline the calls are judged by, as a multiple of the calibrated time")
    parser.add_argument("--calibration-frames", type=int, default=30, help="quiet frames that set the typical time")
    parser.add_argument("--threads", type=int, default=1, help="ONNX Runtime intra-op threads")
    parser.add_argument("--startup-hogs", default="0,1,2,3",
                        help="busy processes beside each start-up calibration, the first quiet (\"\": none)")
    parser.add_argument("--startup-frames", type=int, default=20,
                        help="frames of each start-up calibration (the daemon's calibrate_frames)")
    parser.add_argument("--json", required=True)
    parser.add_argument("--plot", help="PNG: runs and predictions over time")
    parser.set_defaults(func=_run)
