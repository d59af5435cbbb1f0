"""`splitrt bench policy-sweep`: the `bench policy` comparison over a grid of settings (device profile x deadline
x fps x RTT), to find where the choice of action matters.

For each setting and trace: the best static action, `latency`, `deadline` (with hedges, also
`deadline-uncalibrated`: without the on-time calibration of hedged actions) and the oracles (accuracy at
deadline; `OraclePolicy`), and whether `deadline` beats every static action and `latency` at >= 95% of the
oracle. Static actions that cannot meet the deadline even on an infinite link, or that another action of the
same kind (local or remote) beats on every cost and on accuracy, are left out (they cannot be the best static).
Options come from the same measured cache as `bench policy`; device times are CPU time / share, or with
`--edge-cost-samples N` sampled on the emulated device as `bench policy` samples them. Counterfactuals: a device
given as a bare CPU share (e.g. `0.065`), and `--uplink-scale K` (a K times faster uplink: every delivery
opportunity of a trace carries K packets; below 1, a slower one: an evenly spread share K of them is kept).
`--seeds` replays each setting once per seed of the device-time draws and summarises `deadline`'s gain per trace
over them (`summarize_seeds`).
"""
from __future__ import annotations

import argparse
import itertools
import multiprocessing
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Mapping, Sequence

from splitrt.bench.common import format_table, write_json
from splitrt.bench.policy import (DEFAULT_CANDIDATES, DEFAULT_MEASUREMENTS_DIR, cached_options, candidate_set,
                                  options_cache_path, options_on_device)
from splitrt.bundle import Bundle
from splitrt.devices.dilation import EMULATIONS
from splitrt.devices.profiles import get_profile
from splitrt.policies.policies import (ActionOption, LatencyPolicy, OraclePolicy, StaticPolicy,
                                       hedge_on_time_probability, make_policy, with_best_hedges)
from splitrt.policies.simulate import SimConfig, simulate, summarize
from splitrt.policies.trace import UplinkTrace
from splitrt.processes import default_sigterm

SWEEP_COLUMNS = ("device", "deadline_ms", "fps", "rtt_ms", "trace", "best_static", "best_static_acc", "latency",
                 "deadline", "oracle", "vs_oracle", "met")


def _dominated(option: ActionOption, options: Sequence[ActionOption]) -> bool:
    return any(
        other is not option and other.remote == option.remote and (other.hedge is None) == (option.hedge is None)
        and other.edge_ms <= option.edge_ms
        and other.payload_bytes <= option.payload_bytes and other.cloud_ms <= option.cloud_ms
        and other.accuracy >= option.accuracy and (other.accuracy > option.accuracy or other.edge_ms < option.edge_ms)
        for other in options
    )


def static_candidates(options: Sequence[ActionOption], deadline_ms: float, rtt_ms: float) -> list[ActionOption]:
    """The actions that may be the best static one: undominated, and in time on an infinite link (or, hedged,
    with a hedge that can be in time)."""
    return [o for o in options if not _dominated(o, options)
            and (o.edge_ms + ((rtt_ms + o.cloud_ms) if o.remote else 0.0) <= deadline_ms
                 or hedge_on_time_probability(o, deadline_ms) > 0.0)]


def evaluate_setting(
    options: Sequence[ActionOption], correctness: Mapping[str, np.ndarray], traces: Sequence[UplinkTrace],
    device: str, deadline_ms: float, fps: float, rtt_ms: float, duration_s: float | None = None,
    initial_bps: float = SimConfig.initial_bps, hedges: bool = True, seed: int = 0,
    probe_interval_ms: float = SimConfig.probe_interval_ms,
) -> list[dict[str, object]]:
    """One row per trace for one setting (`options`: their costs on `device`; with `hedges`, also each remote one
    hedged by its best local option at this deadline, `with_best_hedges`), every policy meeting the device times
    drawn with `seed` (`SimConfig.seed`); the policies that estimate the link probe it every `probe_interval_ms`
    while they stay local (`SimConfig.probe_interval_ms`)."""
    if hedges:
        options = with_best_hedges(options, deadline_ms)
    statics = static_candidates(options, deadline_ms, rtt_ms)
    rows = []
    for trace in traces:
        duration = min(duration_s, trace.duration_s) if duration_s else None
        config = SimConfig(fps=fps, deadline_ms=deadline_ms, rtt_ms=rtt_ms, duration_s=duration, initial_bps=initial_bps,
                           seed=seed, probe_interval_ms=probe_interval_ms)
        accuracy = {}
        uncalibrated = [make_policy("deadline-uncalibrated")] if hedges else []
        for policy in [*(StaticPolicy(o.key) for o in statics), LatencyPolicy(), make_policy("deadline"), *uncalibrated,
                       OraclePolicy(), OraclePolicy("past"), OraclePolicy("frame")]:
            records = simulate(policy, options, correctness, trace, config)
            accuracy[policy.name] = float(summarize(policy.name, records)["accuracy_at_deadline"])
        static_rows = {k.removeprefix("static:"): v for k, v in accuracy.items() if k.startswith("static:")}
        best = max(static_rows, key=lambda k: static_rows[k]) if static_rows else ""
        best_acc = static_rows.get(best, 0.0)
        oracle = accuracy["oracle"]
        rows.append({
            "device": device, "deadline_ms": deadline_ms, "fps": fps, "rtt_ms": rtt_ms, "seed": seed,
            "trace": trace.name, "best_static": best, "best_static_acc": best_acc, "latency": accuracy["latency"],
            "deadline": accuracy["deadline"], "deadline_uncalibrated": accuracy.get("deadline-uncalibrated"),
            "oracle": oracle, "oracle_past": accuracy["oracle-past"],
            "oracle_clairvoyant": accuracy["oracle-clairvoyant"],
            "vs_oracle": accuracy["deadline"] / oracle if oracle else float("nan"),
            "met": bool(accuracy["deadline"] > best_acc and accuracy["deadline"] > accuracy["latency"]
                        and accuracy["deadline"] >= 0.95 * oracle),
        })
    return rows


def _gains(rows: Sequence[dict[str, object]], column: str) -> list[float]:
    """`column`'s accuracy at deadline less the best static action's, per row."""
    return [float(r[column]) - float(r["best_static_acc"]) for r in rows]  # type: ignore[arg-type]


SETTING_KEYS = ("device", "deadline_ms", "fps", "rtt_ms")


def _grouped(rows: Sequence[dict[str, object]], last: str) -> list[tuple[dict[str, object], list[dict[str, object]]]]:
    """The rows grouped by setting and `last` (a column of one type: seed or trace), in order of the setting's values
    then `last`'s: each group as (its key columns, its rows)."""
    groups: dict[tuple[object, ...], list[dict[str, object]]] = {}
    for row in rows:
        groups.setdefault((*(row[k] for k in SETTING_KEYS), row[last]), []).append(row)
    order = sorted(groups, key=lambda k: (str(k[0]), *(float(v) for v in k[1:-1]), k[-1]))  # type: ignore[arg-type]
    return [(dict(zip((*SETTING_KEYS, last), key)), groups[key]) for key in order]


def summarize_settings(rows: Sequence[dict[str, object]]) -> list[dict[str, object]]:
    """Per setting and seed of the device-time draws: how many distinct best static actions over the traces, the
    least oracle headroom over the best static, and whether `deadline` met the condition on every trace."""
    return [{
        **key,
        "distinct_best_static": len({r["best_static"] for r in group}),
        "best_static": ",".join(sorted({str(r["best_static"]) for r in group})),
        "min_oracle_gain": min(_gains(group, "oracle")),
        "max_oracle_gain": max(_gains(group, "oracle")),
        "min_deadline_gain": min(_gains(group, "deadline")),
        "min_past_gain": min(_gains(group, "oracle_past")),
        "met_all": all(bool(r["met"]) for r in group),
    } for key, group in _grouped(rows, "seed")]


def summarize_seeds(rows: Sequence[dict[str, object]]) -> list[dict[str, object]]:
    """Per setting and trace, over the seeds of the device-time draws (each seed's `deadline` against that seed's
    best static action, side by side): how many seeds, the mean, least and greatest gain, the mean share of the
    oracle, and on how many seeds `deadline` met the condition. One frame more or fewer on the time-line moves every
    later frame's draws, so a single seed's gain of a few frames is not a verdict."""
    out = []
    for key, group in _grouped(rows, "trace"):
        gains = _gains(group, "deadline")
        out.append({
            **key, "seeds": len(group),
            "mean_deadline_gain": sum(gains) / len(gains), "min_deadline_gain": min(gains),
            "max_deadline_gain": max(gains),
            "mean_vs_oracle": sum(float(r["vs_oracle"]) for r in group) / len(group),  # type: ignore[arg-type]
            "met_seeds": sum(bool(r["met"]) for r in group),
        })
    return out


def _evaluate(args: tuple) -> list[dict[str, object]]:  # type: ignore[type-arg]
    return evaluate_setting(*args)


def run_policy_sweep(
    traces: Sequence[str | Path], bundle_dir: str | Path, images: str | Path, json_out: str | Path,
    devices: Sequence[str], deadlines_ms: Sequence[float], fps: Sequence[float], rtts_ms: Sequence[float],
    duration_s: float | None = 300.0, uplink_scale: float = 1.0, candidates: str | None = None, workers: int = 1,
    edge_cost_samples: int = 0, device_emulation: str = "quota", hedges: bool = True, seeds: Sequence[int] = (0,),
    measurements_dir: str | Path = DEFAULT_MEASUREMENTS_DIR, probe_interval_ms: float = SimConfig.probe_interval_ms,
) -> list[dict[str, object]]:
    bundle = Bundle.load(bundle_dir)
    actions = candidate_set(bundle, candidates or DEFAULT_CANDIDATES)
    measured, correctness = cached_options(bundle, images, options_cache_path(bundle, actions, measurements_dir), None,
                                           actions)
    loaded = [UplinkTrace.load(t).scaled(uplink_scale) for t in traces]
    on_device = {(d, f): options_on_device(bundle, measured, images, get_profile(d), f, edge_cost_samples,
                                           device_emulation, measurements_dir)[0]
                 for d, f in itertools.product(devices, fps)}
    jobs = [(on_device[d, f], correctness, loaded, d, dl, f, r, duration_s, SimConfig.initial_bps, hedges, seed,
             probe_interval_ms)
            for d, dl, f, r, seed in itertools.product(devices, deadlines_ms, fps, rtts_ms, seeds)]
    rows: list[dict[str, object]] = []
    if workers > 1:
        pool = ProcessPoolExecutor(workers, initializer=default_sigterm)
        try:
            for result in pool.map(_evaluate, jobs):
                rows += result
        except BaseException:  # stopped (Ctrl-C, SIGTERM) or failed: the running jobs too, not only those queued
            for worker in multiprocessing.active_children():
                worker.terminate()
            raise
        finally:
            pool.shutdown(wait=True, cancel_futures=True)
    else:
        for job in jobs:
            rows += _evaluate(job)
    settings = summarize_settings(rows)
    print(format_table(settings, (*SETTING_KEYS, "seed", "distinct_best_static", "best_static", "min_oracle_gain",
                                  "max_oracle_gain", "min_past_gain", "min_deadline_gain", "met_all")))
    over_seeds = summarize_seeds(rows) if len(seeds) > 1 else []
    if over_seeds:
        print(format_table(over_seeds, (*SETTING_KEYS, "trace", "seeds", "mean_deadline_gain", "min_deadline_gain",
                                        "max_deadline_gain", "mean_vs_oracle", "met_seeds")))
    write_json(json_out, "policy-sweep", rows, settings=settings, over_seeds=over_seeds,
               sweep={"candidates": candidates or DEFAULT_CANDIDATES, "duration_s": duration_s,
                      "uplink_scale": uplink_scale, "traces": [t.name for t in loaded],
                      "edge_cost_model": "cpu/share" if edge_cost_samples <= 0 else f"sampled ({device_emulation})",
                      "device_emulation": device_emulation, "hedges": hedges, "seeds": list(seeds),
                      "probe_interval_ms": probe_interval_ms})
    return rows


def _floats(text: str) -> list[float]:
    return [float(v) for v in text.split(",") if v]


def _seeds(text: str) -> list[int]:
    """`--seeds`: comma-separated whole numbers, at least one."""
    try:
        seeds = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"seeds are whole numbers separated by commas, not {text!r}") from None
    if not seeds:
        raise argparse.ArgumentTypeError("at least one seed is needed")
    return seeds


def _positive_ms(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"a number of milliseconds, not {text!r}") from None
    if not value > 0.0:
        raise argparse.ArgumentTypeError(f"must be > 0 ms, not {text!r}")
    return value


def _run(args: argparse.Namespace) -> int:
    run_policy_sweep([t for t in args.trace.split(",") if t], args.bundle, args.images, args.json,
                     [d for d in args.devices.split(",") if d], _floats(args.deadlines_ms), _floats(args.fps),
                     _floats(args.rtts_ms), args.duration_s or None, args.uplink_scale, args.candidates, args.workers,
                     args.edge_cost_samples, args.device_emulation, args.hedges, args.seeds, args.measurements,
                     args.probe_interval_ms)
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    from splitrt.bench.policy import (CANDIDATE_SETS, add_hedges_argument, add_measurements_argument,
                                      add_uplink_scale_argument)
    from splitrt.edge.commands import DEFAULT_BUNDLE

    parser = sub.add_parser("policy-sweep", help="`bench policy` over device x deadline x fps x RTT settings")
    parser.add_argument("--trace", required=True, help="mahimahi uplink trace(s), comma-separated")
    parser.add_argument("--bundle", default=DEFAULT_BUNDLE)
    parser.add_argument("--images", default="../shared/data/imagenet-sample", help="labelled images (odd classes used)")
    parser.add_argument("--candidates", choices=sorted(CANDIDATE_SETS), default=DEFAULT_CANDIDATES)
    parser.add_argument("--devices", default="pi4,jetson-nano", help="profile names or bare CPU shares, comma-separated")
    parser.add_argument("--deadlines-ms", default="40,50,60,70")
    parser.add_argument("--fps", default="5")
    parser.add_argument("--rtts-ms", default="20,40")
    parser.add_argument("--duration-s", type=float, default=300.0, help="simulated seconds per trace (0: whole trace)")
    add_uplink_scale_argument(parser)
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--edge-cost-samples", type=int, default=0,
                        help="device-time samples per action on the emulated device, as bench policy takes them "
                        "(cached per device; 0: CPU time / share)")
    parser.add_argument("--device-emulation", choices=EMULATIONS, default="quota",
                        help="with --edge-cost-samples: quota, dilation or steady (see bench policy)")
    add_hedges_argument(parser)
    parser.add_argument("--seeds", type=_seeds, default=[0], help="seeds of the device-time draws, comma-separated: each setting "
                        "is replayed once per seed, and with more than one the JSON and the table also summarise "
                        "deadline's gain per trace over them")
    parser.add_argument("--probe-interval-ms", type=_positive_ms, default=SimConfig.probe_interval_ms,
                        help="while a policy that estimates the link stays local, one frame this often probes it "
                        "(doubling while probes fail), as the daemon's [policy] probe_interval_ms")
    add_measurements_argument(parser)
    parser.add_argument("--json", required=True)
    parser.set_defaults(func=_run)
