"""Measured per-split profiles: head latency under a device profile, tail latency unthrottled, activation size.

For every split point of a bundle: `edge_ms_p50` / `edge_ms_p95` (the head, in ONNX Runtime on this
machine under the device profile's CPU quota), `cloud_ms_p50` / `cloud_ms_p95` (the tail, no quota),
`activation_bytes` (raw) and the activation's shape. `edge_cpu_ms_p50` is the head's CPU time per run on
this machine: the work itself, unaffected by the quota or by other processes competing for the CPU. Plus the two ends: `local` (the full model on the
edge) and the `input` point (offload: nothing on the edge, the full model in the cloud). Each figure is
the median (p50) of `repeats` timed samples after `warmup` untimed runs, taken round-robin over all
split points so that other processes' bursts of load do not skew one point; on the edge a sample averages
back-to-back runs over at least four quota periods (`time_calls_ms`), so a short head is charged its
sustained speed under the quota, not a burst. Only ONNX Runtime and numpy are
needed: profiling runs on the device itself, without torch.
"""
from __future__ import annotations

import datetime as dt
import json
import os
import platform
from pathlib import Path
from typing import Any, Callable

import numpy as np
from tqdm import tqdm

from splitrt.bundle import HEAD_INPUT_NAME, INPUT_POINT, MANIFEST_NAME, TAIL_INPUT_NAME, Bundle
from splitrt.devices.ort import create_session
from splitrt.devices.profiles import DeviceProfile, cpu_limit
from splitrt.devices.timing import time_interleaved_ms

PROFILE_VERSION = 1
# A cloud sample averages back-to-back runs over at least this long: a tail of a fraction of a
# millisecond is otherwise at the mercy of one scheduling delay.
CLOUD_SAMPLE_MS = 10.0


def _runner(session: Any, input_name: str, feed: np.ndarray) -> Callable[[], object]:
    return lambda: session.run(None, {input_name: feed})


def profile_bundle(
    bundle: Bundle,
    device: DeviceProfile,
    repeats: int = 30,
    warmup: int = 5,
    cloud_threads: int = 1,
    fallback: str = "error",
    progress: bool = True,
    session_factory: Callable[..., Any] = create_session,
) -> dict[str, Any]:
    """Measure every split point of `bundle` under `device`; returns the profile as JSON-ready data."""
    manifest = bundle.manifest
    crop = manifest.preprocess.crop
    image = np.random.default_rng(0).integers(0, 256, size=(1, crop, crop, 3), dtype=np.uint8)
    points = [p for p in manifest.splits if p.head_file is not None]
    bar = tqdm(total=2 * repeats, desc=f"profile {manifest.model_id} on {device.name}", unit="round", disable=not progress)

    def advance(_: int) -> None:
        bar.update()

    # All sessions stay open and are sampled round-robin (`time_interleaved_ms`). With more than one
    # thread, the edge sessions are created under the quota, so that their thread pools share it (a
    # single-threaded session runs on the calling thread and is created outside, at full speed).
    def open_heads() -> dict[str, Any]:
        heads = {INPUT_POINT: session_factory(bundle.path(manifest.full_file), device.threads)}
        heads.update({p.name: session_factory(bundle.path(p.head_file), device.threads) for p in points})
        return heads

    heads = open_heads() if device.threads == 1 else {}
    with cpu_limit(device, fallback=fallback):
        heads = heads or open_heads()
        edge = time_interleaved_ms(
            {name: _runner(session, HEAD_INPUT_NAME, image) for name, session in heads.items()},
            repeats, warmup, min_sample_ms=device.sample_ms, on_round=advance,
        )
    activations = {p.name: heads[p.name].run(None, {HEAD_INPUT_NAME: image})[0] for p in points}
    del heads
    tails = {INPUT_POINT: (session_factory(bundle.path(manifest.full_file), cloud_threads), HEAD_INPUT_NAME, image)}
    tails.update(
        {p.name: (session_factory(bundle.path(p.tail_file), cloud_threads), TAIL_INPUT_NAME, activations[p.name]) for p in points}
    )
    cloud = time_interleaved_ms(
        {name: _runner(*entry) for name, entry in tails.items()}, repeats, warmup, min_sample_ms=CLOUD_SAMPLE_MS,
        on_round=advance,
    )
    del tails
    bar.close()

    splits = []
    for point in manifest.splits:
        is_input = point.name == INPUT_POINT
        splits.append(
            {
                "name": point.name,
                "edge_ms_p50": 0.0 if is_input else round(edge[point.name].p50_ms, 4),
                "edge_ms_p95": 0.0 if is_input else round(edge[point.name].p95_ms, 4),
                "edge_cpu_ms_p50": 0.0 if is_input else round(edge[point.name].cpu_p50_ms or 0.0, 4),
                "cloud_ms_p50": round(cloud[point.name].p50_ms, 4),
                "cloud_ms_p95": round(cloud[point.name].p95_ms, 4),
                "activation_bytes": point.raw_bytes,
                "shape": list(point.activation.shape),
                "dtype": point.activation.dtype,
            }
        )
    import onnxruntime

    return {
        "profile_version": PROFILE_VERSION,
        "model_id": manifest.model_id,
        "content_hash": manifest.content_hash,
        "device_profile": device.name,
        "cpu_share": device.cpu_share,
        "threads": device.threads,
        "cloud_threads": cloud_threads,
        "repeats": repeats,
        "warmup": warmup,
        "measured_at": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "edge_sample_ms": device.sample_ms,
        "host": {
            "machine": platform.machine(),
            "cpu_count": os.cpu_count(),
            "onnxruntime": onnxruntime.__version__,
            "load_average_1m": round(os.getloadavg()[0], 2),
        },
        "local": {
            "edge_ms_p50": round(edge[INPUT_POINT].p50_ms, 4),
            "edge_ms_p95": round(edge[INPUT_POINT].p95_ms, 4),
            "edge_cpu_ms_p50": round(edge[INPUT_POINT].cpu_p50_ms or 0.0, 4),
        },
        "splits": splits,
    }


def save_profile(bundle_root: str | Path, profile: dict[str, Any]) -> None:
    """Store `profile` under manifest["profiles"][device profile]; the content hash does not change.

    The manifest is rewritten atomically (a temporary file, then a rename)."""
    path = Path(bundle_root) / MANIFEST_NAME
    data = json.loads(path.read_text(encoding="utf-8"))
    if data.get("content_hash") != profile["content_hash"]:
        raise ValueError(
            f"profile is for bundle {profile['content_hash']}, but {bundle_root} is {data.get('content_hash')}; "
            "profile this bundle again"
        )
    data.setdefault("profiles", {})[profile["device_profile"]] = profile
    temporary = path.with_name(f".{MANIFEST_NAME}.{os.getpid()}.tmp")
    temporary.write_text(json.dumps(data, indent=2) + "\n", encoding="utf-8")
    os.replace(temporary, path)


def stored_profile(bundle: Bundle, device_profile: str) -> dict[str, Any]:
    profiles = bundle.manifest.profiles
    if device_profile not in profiles:
        known = ", ".join(profiles) or "none"
        raise KeyError(
            f"bundle {bundle.root} has no profile for {device_profile!r} (it has: {known}); measure it with "
            f"`splitrt partition profile --bundle {bundle.root} --device-profile {device_profile}`"
        )
    return profiles[device_profile]


def profile_identity(profile: dict[str, Any]) -> dict[str, Any]:
    """Which stored profile a result was computed from: device profile, when it was measured, for which
    bundle content and how (fields a profile stored by an older splitrt lacks are None)."""
    return {
        "device_profile": profile.get("device_profile"),
        "measured_at": profile.get("measured_at"),
        "content_hash": profile.get("content_hash"),
        "profile_version": profile.get("profile_version"),
        "cpu_share": profile.get("cpu_share"),
        "threads": profile.get("threads"),
        "repeats": profile.get("repeats"),
        "warmup": profile.get("warmup"),
        "host": profile.get("host"),
    }


def format_profile_identity(identity: dict[str, Any]) -> str:
    """One line: `profile pi4, measured 2026-...+00:00 (cpu share 0.18, 1 thread(s), medians of 30 runs), bundle sha256:...`."""
    measured_at = identity.get("measured_at") or "at an unknown time"
    content_hash = str(identity.get("content_hash") or "unknown")
    return (
        f"profile {identity.get('device_profile')}, measured {measured_at} (cpu share {identity.get('cpu_share')}, "
        f"{identity.get('threads')} thread(s), medians of {identity.get('repeats')} runs), bundle {content_hash[:19]}"
    )


def compare_profiles(first: dict[str, Any], second: dict[str, Any]) -> list[dict[str, Any]]:
    """Per split point, the relative difference of the two runs' medians (edge and cloud), in percent of
    the first run's median."""
    rows = []
    others = {s["name"]: s for s in second["splits"]}
    for split in first["splits"]:
        other = others.get(split["name"])
        if other is None:
            continue
        row: dict[str, Any] = {"name": split["name"]}
        for key in ("edge_ms_p50", "cloud_ms_p50", "edge_cpu_ms_p50"):
            a, b = float(split.get(key, 0.0)), float(other.get(key, 0.0))
            row[key.replace("_ms_p50", "_diff_pct")] = None if a == 0 else round(100.0 * abs(b - a) / a, 2)
        rows.append(row)
    local_a, local_b = first["local"]["edge_ms_p50"], second["local"]["edge_ms_p50"]
    rows.append(
        {
            "name": "local",
            "edge_diff_pct": round(100.0 * abs(local_b - local_a) / local_a, 2),
            "cloud_diff_pct": None,
            "edge_cpu_diff_pct": None,
        }
    )
    return rows


def format_profile(profile: dict[str, Any]) -> str:
    lines = [
        f"{profile['model_id']} on {profile['device_profile']} (cpu share {profile['cpu_share']}, "
        f"{profile['threads']} thread(s)); medians of {profile['repeats']} runs",
        f"{'split':<22} {'edge p50 ms':>11} {'edge p95 ms':>11} {'cloud p50 ms':>12} {'activation bytes':>16}  shape",
        f"{'local':<22} {profile['local']['edge_ms_p50']:>11.2f} {profile['local']['edge_ms_p95']:>11.2f} {'-':>12} {0:>16,}  -",
    ]
    for s in profile["splits"]:
        shape = "x".join(map(str, s["shape"]))
        lines.append(
            f"{s['name']:<22} {s['edge_ms_p50']:>11.2f} {s['edge_ms_p95']:>11.2f} {s['cloud_ms_p50']:>12.2f} "
            f"{s['activation_bytes']:>16,}  {s['dtype']} {shape}"
        )
    return "\n".join(lines)


def plot_profile(profile: dict[str, Any], out_path: str | Path) -> None:
    """Neurosurgeon-style: per split point, edge (head) and cloud (tail) latency as stacked bars and the
    activation size as a line on a log axis."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = ["local"] + [s["name"] for s in profile["splits"]]
    edge = [profile["local"]["edge_ms_p50"]] + [s["edge_ms_p50"] for s in profile["splits"]]
    cloud = [0.0] + [s["cloud_ms_p50"] for s in profile["splits"]]
    size_kb = [np.nan] + [s["activation_bytes"] / 1000.0 for s in profile["splits"]]
    x = np.arange(len(names))
    fig, ax = plt.subplots(figsize=(max(8.0, 0.42 * len(names) + 2), 4.8))
    ax.bar(x, edge, color="#d95f02", label=f"edge (head) on {profile['device_profile']}, p50")
    ax.bar(x, cloud, bottom=edge, color="#7570b3", label="cloud (tail), p50")
    ax.set_ylabel("latency (ms)")
    ax.set_xticks(x, names, rotation=60, ha="right", fontsize=8)
    ax.set_xlabel("split point (after this layer; 'input' = offload, 'local' = all on the edge)")
    twin = ax.twinx()
    twin.plot(x, size_kb, color="#1b9e77", marker="o", label="activation size (raw)")
    twin.set_yscale("log")
    twin.set_ylabel("activation size (kB, log)")
    handles = ax.get_legend_handles_labels()[0] + twin.get_legend_handles_labels()[0]
    labels = ax.get_legend_handles_labels()[1] + twin.get_legend_handles_labels()[1]
    ax.set_ylim(0, 1.3 * max(e + c for e, c in zip(edge, cloud)))  # headroom for the legend
    twin.set_ylim(min(s for s in size_kb[1:]) / 2, max(s for s in size_kb[1:]) * 8)
    ax.legend(handles, labels, loc="upper center", ncol=3, fontsize=8, frameon=False)
    ax.set_title(
        f"{profile['model_id']}: per-split latency and activation size "
        f"({profile['device_profile']}, cpu share {profile['cpu_share']})",
        fontsize=10,
    )
    fig.tight_layout()
    Path(out_path).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out_path, dpi=110)
    plt.close(fig)
