"""`splitrt bench policy`: replay mahimahi uplink traces against measured action costs and per-image
correctness, for every static action, `latency`, `deadline` and the oracles (`OraclePolicy`: `oracle` knows the
link's future; `oracle-clairvoyant` also each frame's own device and cloud times; `oracle-past` only the link's
exact past).

Costs: each action's edge part (crop, head or exit, encode) is run as `EdgeRuntime.infer` runs it, on the
emulated device (under the profile's CPU quota, or dilated: `--device-emulation`), paced like the frames
(`splitrt.bench.device_costs`): the simulator draws every frame's device time from those samples (CPU time /
share without a writable cgroup). The tail's CPU time
is the cloud's time (a cloud core to itself). Bytes are the real encoded
payloads. Correctness is each action's real top-1 on every evaluation image (odd `class_index`, so early
exits are judged on images they were not trained on). Frames cycle through the images in order.

The actions compared are a named candidate set (`CANDIDATE_SETS`, `--candidates`); the measured options are
cached per bundle and set (`options_cache_path`), so a cache of another set or bundle is never reused. Both
measurements (the options, and the device times) are kept in `--measurements` (default `.cache/`): pointed at a
committed copy, a replay of the same bundle reproduces a committed table exactly, the host's timing noise included;
for another bundle (its content hash) they are measured afresh and written there. With
`--hedges` (the default) each remote action is also compared hedged by the local action most likely to be right
and in time after it (`with_best_hedges`): built from the measured options, nothing more is measured.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import logging
from pathlib import Path
from typing import Sequence

import numpy as np
from tqdm import tqdm

from splitrt.actions import Action, Local, Offload, Split
from splitrt.bench.common import format_table, read_labelled_images, select_parity, write_json
from splitrt.bench.device_costs import device_options
from splitrt.policies.options_file import action_from_key
from splitrt.bench.payloads import offload_sizes, request_bytes
from splitrt.bench.plot import save_figure
from splitrt.bundle import HEAD_INPUT_NAME, TAIL_INPUT_NAME, Bundle
from splitrt.codecs import codec_for_point, get_codec
from splitrt.devices.dilation import EMULATIONS
from splitrt.devices.ort import create_session
from splitrt.devices.profiles import DeviceProfile
from splitrt.devices.timing import time_calls_ms
from splitrt.edge.commands import DEFAULT_BUNDLE
from splitrt.imaging import crop_for_model, load_rgb
from splitrt.policies.policies import (ActionOption, DeadlinePolicy, LatencyPolicy, OraclePolicy, StaticPolicy,
                                       make_policy, on_slower_device, with_best_hedges)
from splitrt.policies.simulate import SimConfig, simulate, summarize
from splitrt.policies.trace import UplinkTrace
from splitrt.protocol import TensorSpec

log = logging.getLogger(__name__)

COLUMNS = ("policy", "frames", "deadline_hit", "accuracy", "accuracy_at_deadline", "latency_p50_ms",
           "latency_p95_ms", "bytes_mean", "hedge_answered")
# Defaults of `bench policy` (importable by other benchmarks). A deadline below the device's full-model time, so
# that the choice matters: with a looser one, local EfficientNet-Lite0 meets every deadline on every profile and
# is the best action everywhere. The search for settings where no single static action is best on all four
# shared traces found none that is physically sensible (README, issue 5); these are the documented ones.
DEFAULT_DEVICE_PROFILE = "jetson-nano"
DEFAULT_DEADLINE_MS = 70.0
DEFAULT_FPS = 5.0
DEFAULT_RTT_MS = 40.0
DEFAULT_CANDIDATES = "wide"
DEFAULT_MEASUREMENTS_DIR = Path(".cache")  # measured options and device times (`--measurements`)

DEFAULT_SPLITS = ("b4", "b7", "b10", "b14", "pool")
DEFAULT_OFFLOAD = ("jpeg-q90", "jpeg-q75", "jpeg-q50")
DEFAULT_SPLIT_CODECS = ("fp16",)

# Candidate sets (`--candidates`): every action is a real measured option (payload bytes, top-1 on the
# odd-class images, edge CPU ms). "base": the original set; "wide": more JPEG qualities, WebP, quantised
# split activations, and the bundle's learned bottlenecks when it has any (`splitrt codecs add-bottleneck`).
CANDIDATE_SETS: dict[str, dict[str, tuple[str, ...]]] = {
    "base": {"splits": DEFAULT_SPLITS, "split_codecs": DEFAULT_SPLIT_CODECS, "offload": DEFAULT_OFFLOAD},
    "wide": {
        "splits": DEFAULT_SPLITS,
        "split_codecs": ("fp16", "q8+zstd", "q4c+zstd"),
        "offload": ("jpeg-q95", "jpeg-q90", "jpeg-q75", "jpeg-q50", "jpeg-q25", "jpeg-q10",
                    "webp-q90", "webp-q75", "webp-q50", "webp-q25", "webp-q10"),
    },
}


def _median_ms(run) -> float:  # type: ignore[no-untyped-def]
    """Median CPU time of `run` on this thread (ONNX Runtime with one intra-op thread runs on the caller's)."""
    cpu_ms = time_calls_ms(run, repeats=15, warmup=2).cpu_p50_ms
    assert cpu_ms is not None
    return cpu_ms


def candidate_actions(bundle: Bundle, splits: Sequence[str], offload: Sequence[str],
                      split_codecs: Sequence[str] = DEFAULT_SPLIT_CODECS, bottlenecks: bool = False) -> list[Action]:
    """Local (and every exit), each split point in `splits` the bundle has with each of `split_codecs`, offload
    with each image codec in `offload`, and with `bottlenecks` each learned bottleneck of the bundle."""
    actions: list[Action] = [Local()]
    actions += [Local(e.name) for e in bundle.manifest.exits]
    teacher_points = [p.name for p in bundle.manifest.splits]
    actions += [Split(s, c) for s in splits if s in teacher_points for c in split_codecs]
    if bottlenecks:
        actions += [Split(b.name, b.codec) for b in bundle.manifest.bottlenecks]
    actions += [Offload(c) for c in offload]
    return actions


def candidate_set(bundle: Bundle, name: str) -> list[Action]:
    """The actions of candidate set `name` (`CANDIDATE_SETS`) that `bundle` supports."""
    if name not in CANDIDATE_SETS:
        raise ValueError(f"unknown candidate set {name!r}: use one of {', '.join(CANDIDATE_SETS)}")
    spec = CANDIDATE_SETS[name]
    if not bundle.manifest.exits:
        log.warning("bundle %s has no early exits or block-skipping variants, so the actions compared are the whole "
                    "model, splits and offload only: add them with `splitrt train exits --bundle DIR` and "
                    "`splitrt train skips --bundle DIR` (before `splitrt codecs add-bottleneck`)", bundle.root)
    return candidate_actions(bundle, spec["splits"], spec["offload"], spec["split_codecs"], bottlenecks=name != "base")


def measure_options(bundle: Bundle, images_dir: str | Path, actions: Sequence[Action], slowdown: float = 1.0,
                    limit: int | None = None) -> tuple[list[ActionOption], dict[str, np.ndarray]]:
    """Cost of each action (edge CPU ms times `slowdown`) and its correctness on every odd-class image."""
    items = select_parity(read_labelled_images(images_dir), "odd")[:limit]
    crops = [crop_for_model(load_rgb(i.path), bundle.manifest.preprocess)[None] for i in items]
    labels = np.array([i.class_index for i in items])
    manifest = bundle.manifest
    full = create_session(bundle.path(manifest.full_file))
    options: list[ActionOption] = []
    correctness: dict[str, np.ndarray] = {}
    full_top1 = np.array([int(full.run(None, {HEAD_INPUT_NAME: c})[0].argmax()) for c in crops])
    probe = crops[0]
    for action in tqdm(actions, desc="measure actions", unit="action"):
        key = action.describe()
        if isinstance(action, Local) and action.exit is None:
            edge_ms = _median_ms(lambda: full.run(None, {HEAD_INPUT_NAME: probe}))
            options.append(ActionOption(action, edge_ms * slowdown, accuracy=float((full_top1 == labels).mean())))
            correctness[key] = full_top1 == labels
        elif isinstance(action, Local):
            session = create_session(bundle.path(manifest.exit(action.exit).file))
            edge_ms = _median_ms(lambda: session.run(None, {HEAD_INPUT_NAME: probe}))
            top1 = np.array([int(session.run(None, {HEAD_INPUT_NAME: c})[-1].argmax()) for c in crops])  # logits last
            options.append(ActionOption(action, edge_ms * slowdown, accuracy=float((top1 == labels).mean())))
            correctness[key] = top1 == labels
        elif isinstance(action, Split):
            point = manifest.split(action.point)
            head, tail = create_session(bundle.path(point.head_file)), create_session(bundle.path(point.tail_file))
            codec = codec_for_point(bundle, action.point, action.codec)  # a bottleneck's head is its encoder
            edge_ms = _median_ms(lambda: codec.encode(head.run(None, {HEAD_INPUT_NAME: probe})[0]))
            spec = TensorSpec(point.activation.dtype, (1, *point.activation.shape))
            payloads = [codec.encode(head.run(None, {HEAD_INPUT_NAME: c})[0]) for c in crops]
            cloud_ms = _median_ms(lambda: tail.run(None, {TAIL_INPUT_NAME: codec.decode(payloads[0], spec)}))
            top1 = np.array([int(tail.run(None, {TAIL_INPUT_NAME: codec.decode(p, spec)})[0].argmax()) for p in payloads])
            # fp16 payloads have one size; quantised + zstd and entropy-coded ones vary: the median goes on the wire
            sizes = [request_bytes(bundle, point.name, codec.codec_id, spec, p) for p in payloads]
            options.append(ActionOption(action, edge_ms * slowdown, int(np.median(sizes)), cloud_ms,
                                        float((top1 == labels).mean())))
            correctness[key] = top1 == labels
        elif isinstance(action, Offload):
            codec = get_codec(action.codec)
            spec = TensorSpec("uint8", (1, *manifest.input.shape))
            payloads = [codec.encode(c) for c in crops]
            edge_ms = _median_ms(lambda: codec.encode(probe))
            cloud_ms = _median_ms(lambda: full.run(None, {HEAD_INPUT_NAME: codec.decode(payloads[0], spec)}))
            top1 = np.array([int(full.run(None, {HEAD_INPUT_NAME: codec.decode(p, spec)})[0].argmax()) for p in payloads])
            sizes = [request_bytes(bundle, "input", codec.codec_id, spec, p) for p in payloads]
            options.append(ActionOption(action, edge_ms * slowdown, int(np.median(sizes)), cloud_ms,
                                        float((top1 == labels).mean())))
            correctness[key] = top1 == labels
    return options, correctness


def cached_options(bundle: Bundle, images: str | Path, cache: Path | None, limit: int | None,
                   actions: Sequence[Action] | None = None) -> tuple[list[ActionOption], dict[str, np.ndarray]]:
    """Measured options at this machine's speed (one thread), from `cache` when it was measured for this bundle,
    this image limit and exactly these actions (default: the "base" candidate set); else measured and saved."""
    actions = list(actions) if actions is not None else candidate_set(bundle, "base")
    keys = [a.describe() for a in actions]
    if cache is not None and cache.is_file():
        data = json.loads(cache.read_text())
        if (data.get("bundle_hash") == bundle.content_hash and data.get("limit") == limit
                and sorted(o["action"] for o in data["options"]) == sorted(keys)):
            by_key = {o["action"]: o for o in data["options"]}
            options = [ActionOption(action_from_key(k), by_key[k]["edge_ms"], by_key[k]["payload_bytes"],
                                    by_key[k]["cloud_ms"], by_key[k]["accuracy"]) for k in keys]
            return options, {k: np.array(data["correctness"][k], dtype=bool) for k in keys}
    options, correctness = measure_options(bundle, images, actions, 1.0, limit)
    if cache is not None:
        cache.parent.mkdir(parents=True, exist_ok=True)
        cache.write_text(json.dumps({
            "bundle_hash": bundle.content_hash, "limit": limit,
            "options": [{"action": o.key, "edge_ms": o.edge_ms, "payload_bytes": o.payload_bytes,
                         "cloud_ms": o.cloud_ms, "accuracy": o.accuracy} for o in options],
            "correctness": {k: v.astype(int).tolist() for k, v in correctness.items()},
        }))
    return options, correctness


def device_costs_path(bundle: Bundle, profile_name: str, emulation: str = "quota",
                      directory: str | Path = DEFAULT_MEASUREMENTS_DIR) -> Path:
    """Where `bench.device_costs` keeps its samples for a bundle, device profile and emulation."""
    suffix = "" if emulation == "quota" else f"-{emulation}"
    return Path(directory) / f"device-costs-{bundle.content_hash[7:19]}-{profile_name}{suffix}.json"


def options_on_device(bundle: Bundle, measured: Sequence[ActionOption], images: str | Path, profile: DeviceProfile,
                      fps: float, edge_cost_samples: int, emulation: str,
                      measurements_dir: str | Path = DEFAULT_MEASUREMENTS_DIR) -> tuple[list[ActionOption], str]:
    """`measured` as they cost on `profile`'s device: device times sampled on the emulated device at the frames'
    pace, with the first evaluation image (cached by `device_costs_path`), or with `edge_cost_samples` 0 CPU time /
    share; and the cost model used."""
    image = load_rgb(select_parity(read_labelled_images(images), "odd")[0].path)
    return device_options(bundle, measured, profile, image,
                          device_costs_path(bundle, profile.name, emulation, measurements_dir),
                          repeats=edge_cost_samples, interval_ms=1000.0 / fps, emulation=emulation)


def options_cache_path(bundle: Bundle, actions: Sequence[Action],
                       directory: str | Path = DEFAULT_MEASUREMENTS_DIR) -> Path:
    """`<directory>/policy-options-<bundle>-<actions>.json`: one file per bundle and candidate set."""
    digest = hashlib.sha256("\n".join(sorted(a.describe() for a in actions)).encode()).hexdigest()[:8]
    return Path(directory) / f"policy-options-{bundle.content_hash[7:19]}-{digest}.json"


def run_policy_bench(
    traces: Sequence[str | Path],
    bundle_dir: str | Path,
    images: str | Path,
    json_out: str | Path,
    device_profile: str,
    deadline_ms: float,
    fps: float,
    rtt_ms: float,
    plot: str | Path | None = None,
    limit: int | None = None,
    candidates: str = DEFAULT_CANDIDATES,
    edge_cost_samples: int = 30,
    device_emulation: str = "quota",
    hedges: bool = True,
    device_slowdown: float = 1.0,
    uplink_scale: float = 1.0,
    measurements_dir: str | Path = DEFAULT_MEASUREMENTS_DIR,
) -> dict[str, list[dict[str, object]]]:
    from splitrt.devices.profiles import get_profile

    bundle = Bundle.load(bundle_dir)
    profile = get_profile(device_profile)
    actions = candidate_set(bundle, candidates)
    measured, correctness = cached_options(bundle, images, options_cache_path(bundle, actions, measurements_dir), limit,
                                           actions)
    options, cost_model = options_on_device(bundle, measured, images, profile, fps, edge_cost_samples, device_emulation,
                                            measurements_dir)
    sizes = offload_sizes(bundle, images, options, limit)
    if hedges:
        options = with_best_hedges(options, deadline_ms)
    print(format_table([{"action": o.key, "edge_ms": o.edge_ms, "bytes": o.payload_bytes, "cloud_ms": o.cloud_ms,
                         "accuracy": o.accuracy} for o in options], ["action", "edge_ms", "bytes", "cloud_ms", "accuracy"]))
    config = SimConfig(fps=fps, deadline_ms=deadline_ms, rtt_ms=rtt_ms)
    results: dict[str, list[dict[str, object]]] = {}
    timelines: dict[str, tuple[UplinkTrace, list]] = {}
    oracle_timelines: dict[str, list] = {}
    for trace_path in traces:
        trace = UplinkTrace.load(trace_path).scaled(uplink_scale)
        policies = [StaticPolicy(o.key) for o in options] + [
            LatencyPolicy(), make_policy("deadline"), DeadlinePolicy(name="deadline-cautious", rule="cautious"),
            *([make_policy("deadline-uncalibrated")] if hedges else []), make_policy("deadline-tracking"),
            OraclePolicy(), OraclePolicy("past"), OraclePolicy("frame")]
        device = (None if device_slowdown == 1.0 else
                  slowed_device(options, int(trace.duration_s * fps) + 1, device_slowdown))
        rows = []
        for policy in policies:
            records = simulate(policy, options_told_to(policy, options, device_slowdown), correctness, trace, config,
                               sizes, frame_edge_ms=device)
            rows.append({"trace": trace.name, **summarize(policy.name, records)})
            if policy.name == "deadline":
                timelines[trace.name] = (trace, records)
            elif policy.name == "oracle":
                oracle_timelines[trace.name] = records
        oracle, clairvoyant = (next(r for r in rows if r["policy"] == name)["accuracy_at_deadline"]
                               for name in ("oracle", "oracle-clairvoyant"))
        for row in rows:
            row["vs_oracle"] = row["accuracy_at_deadline"] / oracle if oracle else float("nan")
            row["vs_clairvoyant"] = row["accuracy_at_deadline"] / clairvoyant if clairvoyant else float("nan")
        results[trace.name] = rows
        print(f"\n{trace.name}: mean {trace.mean_bps / 1e6:.2f} Mbit/s, {trace.duration_s:.0f} s")
        print(format_table(rows, (*COLUMNS, "vs_oracle", "vs_clairvoyant")))
    write_json(json_out, "policy", [r for rows in results.values() for r in rows],
               options=[{"action": o.key, "edge_ms": o.edge_ms, "payload_bytes": o.payload_bytes,
                         "cloud_ms": o.cloud_ms, "accuracy": o.accuracy} for o in options],
               settings={"candidates": candidates, "device_profile": device_profile, "cpu_share": profile.cpu_share,
                         "dilation_share": profile.dilation_share, "edge_cost_model": cost_model,
                         "device_emulation": device_emulation, "deadline_ms": deadline_ms, "fps": fps,
                         "rtt_ms": rtt_ms, "hedges": hedges, "device_slowdown": device_slowdown,
                         "uplink_scale": uplink_scale,
                         "evaluation_images": int(len(next(iter(correctness.values()))))})
    if plot:
        plot_timelines(timelines, options, plot, oracle=oracle_timelines)
    return results


def options_told_to(policy: object, options: Sequence[ActionOption], device_slowdown: float
                    ) -> Sequence[ActionOption]:
    """The options as `policy` is told them when the replayed device runs `device_slowdown` times as long as
    measured (`slowed_device`): an oracle knows the device as it runs, every other policy sees the measurements."""
    if device_slowdown == 1.0 or not isinstance(policy, OraclePolicy):
        return options
    return [on_slower_device(o, device_slowdown) for o in options]


def slowed_device(options: Sequence[ActionOption], frames: int, slowdown: float,
                  seed: int = 0) -> dict[int, dict[str, float]]:
    """Each frame's device time of every action (`simulate(frame_edge_ms=)`), drawn from its measured samples and
    `slowdown` times as long: a device slower (or faster) than when its options were measured, which the policies'
    options do not say (a counterfactual, as `bench policy-sweep --uplink-scale` is for the link)."""
    rng = np.random.default_rng(seed)
    draws = {o.key: rng.choice(o.edge_samples_ms or (o.edge_ms,), frames) * slowdown
             for o in options if o.hedge is None}
    return {i: {key: float(values[i]) for key, values in draws.items()} for i in range(frames)}


def plot_timelines(timelines: dict[str, tuple[UplinkTrace, list]], options: Sequence[ActionOption],
                   path: str | Path, oracle: dict[str, list] | None = None) -> None:
    """Per trace: its uplink capacity (1 s bins) and the deadline policy's action per frame (coloured by outcome),
    with the oracle's (grey) when given; only the actions either chose get a row."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    keys = [o.key for o in options]
    figure, axes = plt.subplots(len(timelines), 1, figsize=(12, 3.2 * len(timelines)), squeeze=False)
    for axis, (name, (trace, records)) in zip(axes[:, 0], timelines.items()):
        starts, rates = trace.bandwidth_series(1000)
        axis.fill_between(starts / 1000, rates / 1e6, step="post", color="#cfe2f3", label="uplink capacity (1 s)")
        axis.set_ylabel("Mbit/s")
        axis.set_title(f"{name}: deadline policy's action per frame" + (" (oracle's in grey)" if oracle else ""))
        twin = axis.twinx()
        oracle_records = (oracle or {}).get(name, [])
        used = {r.action for r in [*records, *oracle_records] if r.action}
        rows = [k for k in keys if k in used]
        if oracle_records:
            points = [(r.capture_ms / 1000, rows.index(r.action) + 0.25) for r in oracle_records if r.action]
            twin.scatter(*zip(*points), s=2, color="#888888", label="oracle")
        chosen = [(r.capture_ms / 1000, rows.index(r.action), r.status) for r in records if r.action]
        for status, color in (("ok", "#2a7d2a"), ("timeout", "#c0392b"), ("late", "#e67e22")):
            points = [(t, k) for t, k, s in chosen if s == status]
            if points:
                twin.scatter(*zip(*points), s=4, color=color, label=f"frame {status}")
        twin.set_yticks(range(len(rows)), rows, fontsize=7)
        twin.set_ylim(-0.5, len(rows) - 0.25)
        axis.set_xlim(0, trace.duration_s)
        twin.legend(loc="upper right", fontsize=7, markerscale=3)
    axes[-1, 0].set_xlabel("time (s)")
    save_figure(figure, path)


def _run(args: argparse.Namespace) -> int:
    traces = [t for t in args.trace.split(",") if t]
    run_policy_bench(traces, args.bundle, args.images, args.json, args.device_profile, args.deadline_ms, args.fps,
                     args.rtt_ms, args.plot, args.limit, args.candidates, args.edge_cost_samples, args.device_emulation,
                     args.hedges, args.device_slowdown, args.uplink_scale, args.measurements)
    return 0


def add_hedges_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--hedges", action=argparse.BooleanOptionalAction, default=True,
                        help="also compare each remote action hedged by the local action most likely to be right "
                             "and in time after it (the device runs it while the request is in flight; its answer "
                             "stands when the reply is late)")


def add_uplink_scale_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--uplink-scale", type=float, default=1.0,
                        help="counterfactual: K times each trace's capacity (K packets per opportunity; below 1, an "
                             "evenly spread share of them); see UplinkTrace.scaled")


def add_replay_arguments(parser: argparse.ArgumentParser) -> None:
    """The options `bench policy` and `bench e2e` share, with the same defaults, so that the two compare."""
    parser.add_argument("--trace", required=True, help="mahimahi uplink trace(s), comma-separated")
    parser.add_argument("--bundle", default=DEFAULT_BUNDLE)
    parser.add_argument("--images", default="../shared/data/imagenet-sample", help="labelled images (odd classes used)")
    parser.add_argument("--device-profile", default=DEFAULT_DEVICE_PROFILE,
                        help="emulated device (`splitrt devices profiles`)")
    parser.add_argument("--deadline-ms", type=float, default=DEFAULT_DEADLINE_MS)
    parser.add_argument("--fps", type=float, default=DEFAULT_FPS)
    parser.add_argument("--rtt-ms", type=float, default=DEFAULT_RTT_MS, help="round trip (bench e2e: the relay adds "
                        "half each way)")
    parser.add_argument("--candidates", choices=sorted(CANDIDATE_SETS), default=DEFAULT_CANDIDATES,
                        help="actions compared: base (local, exits, fp16 splits, JPEG q90/75/50) or wide (also JPEG "
                             "q95/25/10, WebP q90..q10, q8+zstd and q4c+zstd splits, and the bundle's learned "
                             "bottlenecks, if it has any: `splitrt codecs add-bottleneck`); measured once per bundle "
                             "and set, kept in --measurements")
    parser.add_argument("--limit", type=int, help="use only the first N evaluation images")
    parser.add_argument("--device-emulation", choices=EMULATIONS, default="quota",
                        help="how the device is made slow: quota (the process under the profile's CPU quota), "
                        "dilation (each stage takes its CPU time / share) or steady (dilation, a model's run taking "
                        "the least CPU time of its recent runs: without the host's noise); see "
                        "splitrt.devices.dilation")
    parser.add_argument("--edge-cost-samples", type=int, default=30,
                        help="device-time samples per action on the emulated device (0: CPU time / share instead)")
    parser.add_argument("--device-slowdown", type=float, default=1.0,
                        help="counterfactual: the device takes this many times its measured times in the replay "
                             "(the policies' options still say the measured ones; deadline-tracking learns it)")
    add_measurements_argument(parser)
    parser.add_argument("--json", required=True)


def add_measurements_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--measurements", default=str(DEFAULT_MEASUREMENTS_DIR), metavar="DIR",
                        help="where the measured options and device times are kept and reused, by bundle hash: a "
                             "committed copy (docs/results/measurements) replays the README's figures exactly")


def register(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser("policy", help="trace-driven comparison of static actions, latency, deadline, oracle")
    add_replay_arguments(parser)
    parser.add_argument("--plot", help="PNG of the deadline policy's actions over the traces' bandwidth")
    add_uplink_scale_argument(parser)
    add_hedges_argument(parser)
    parser.set_defaults(func=_run)
    from splitrt.bench.policy_sweep import register as register_sweep

    register_sweep(sub)
