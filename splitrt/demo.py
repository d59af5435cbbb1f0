"""`splitrt demo`: export the bundle (cached; plus a copy with the committed learned bottleneck), start the cloud
tail and the edge agent as two processes on loopback, classify real photographs with local, split, bottleneck and
offload actions, and stop both cleanly."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from splitrt.bundle import Bundle, BundleError
from splitrt.codecs.bottleneck.install import parse_point_name
from splitrt.edge.sources import write_sample_images

DEFAULT_IMAGE_DIR = Path(".cache/demo-images")
ARTIFACTS = Path(__file__).resolve().parents[1] / "artifacts" / "bottlenecks"
# The learned bottleneck at b7 (issue 4): within 1 pp of the unsplit model at ~2.2 KB per frame.
DEMO_BOTTLENECK_POINT = "bn-b7-c192-linear-beta0.001-s1.25"
DEMO_BOTTLENECK_ACTION = f"{DEMO_BOTTLENECK_POINT}/ans"
DEFAULT_ACTIONS = f"local,b4/fp32,b4/fp16,b14/fp16,pool/fp16,{DEMO_BOTTLENECK_ACTION},offload/jpeg-q90"


def _artifact(model_id: str, point: str) -> Path:
    """The trained artifact folder of a bottleneck point `bn-NAME-sSTEP` (NAME itself if it is no such point)."""
    parsed = parse_point_name(point)
    return ARTIFACTS / model_id / (parsed[0] if parsed else point)


def _table_hash(folder: Path, point: str) -> str | None:
    """The table hash the artifact in `folder` records for `point`'s step, or None (no such artifact or step)."""
    parsed = parse_point_name(point)
    try:
        description = json.loads((folder / "bottleneck.json").read_text(encoding="utf-8"))
        step = float(parsed[1]) if parsed else None
    except (OSError, ValueError):
        return None
    hashes = [p.get("table_hash") for p in description.get("operating_points", []) if float(p.get("step", -1)) == step]
    return str(hashes[0]) if hashes else None


def with_bottlenecks(bundle: Bundle, bundle_dir: Path, actions: str) -> tuple[Bundle, Path]:
    """A bundle holding the learned bottlenecks the actions name (`bn-NAME-sSTEP/ans`) that the exported one
    lacks: a copy of it next to it (`<bundle>-bn`, made once from the trained artifacts in `artifacts/`), so that
    the exported bundle stays as the other commands expect it. Names with no artifact are left for the edge to
    refuse with its own error."""
    wanted = {a.split("/")[0] for a in actions.split(",") if parse_point_name(a.split("/")[0])}
    missing = [w for w in wanted if bundle.manifest.bottleneck(w) is None]
    tables = {w: t for w in missing if (t := _table_hash(_artifact(bundle.model_id, w), w))}
    if not tables:
        return bundle, bundle_dir
    folders = sorted({_artifact(bundle.model_id, w) for w in tables})
    out = bundle_dir.with_name(bundle_dir.name + "-bn")
    try:
        copy = Bundle.load(out)
        held = {w: getattr(copy.manifest.bottleneck(w), "table_hash", None) for w in tables}
        if held == tables and copy.manifest.files.items() >= bundle.manifest.files.items():  # same base and tables
            print(f"bundle: {out} (the exported bundle + learned bottlenecks, cached)")
            return copy, out
    except BundleError:
        pass
    from splitrt.codecs.bottleneck.install import add_bottlenecks

    print(f"bundle: adding the learned bottleneck(s) {', '.join(f.name for f in folders)} into {out} (once)")
    return add_bottlenecks(bundle_dir, folders, out), out


def wait_for_ready(process: subprocess.Popen[str], timeout_s: float) -> str:
    """Read the service's first stdout line: a JSON object with the endpoint it bound."""
    assert process.stdout is not None
    deadline = time.monotonic() + timeout_s
    os.set_blocking(process.stdout.fileno(), False)
    buffer = ""
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"the cloud service exited with code {process.returncode} before it was ready")
        chunk = process.stdout.readline()
        buffer += chunk or ""
        if buffer.endswith("\n"):
            event = json.loads(buffer)
            return str(event["endpoint"])
        time.sleep(0.05)
    raise RuntimeError(f"the cloud service was not ready within {timeout_s:.0f} s")


def run_demo(bundle_dir: str | Path, model: str, actions: str = DEFAULT_ACTIONS, images: str | None = None) -> int:
    bundle_dir = Path(bundle_dir)
    from splitrt.partition.export import load_or_export

    bundle = load_or_export(bundle_dir, model)
    if actions == DEFAULT_ACTIONS and not _table_hash(_artifact(bundle.model_id, DEMO_BOTTLENECK_POINT),
                                                      DEMO_BOTTLENECK_POINT):
        print("bundle: no trained bottleneck under artifacts/ (an installed package?): its action is left out")
        actions = ",".join(a for a in actions.split(",") if a != DEMO_BOTTLENECK_ACTION)
    bundle, bundle_dir = with_bottlenecks(bundle, bundle_dir, actions)
    image_dir = Path(images) if images else DEFAULT_IMAGE_DIR
    if not images:
        write_sample_images(image_dir)
    python = [sys.executable, "-m", "splitrt"]
    print(f"cloud: starting `splitrt cloud serve --bundle {bundle_dir}` on a free loopback port")
    cloud = subprocess.Popen(
        [*python, "cloud", "serve", "--bundle", str(bundle_dir), "--bind", "tcp://127.0.0.1:*", "--ready-json",
         "--warm-up"],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        endpoint = wait_for_ready(cloud, timeout_s=60)
        print(f"cloud: ready at {endpoint} (pid {cloud.pid})")
        print(f"edge:  `splitrt edge run --split {actions}` on {image_dir}\n")
        edge = subprocess.run(
            [*python, "edge", "run", "--bundle", str(bundle_dir), "--connect", endpoint,
             "--source", str(image_dir), "--split", actions],
            check=False,
        )
    finally:
        cloud.send_signal(signal.SIGTERM)
        try:
            code = cloud.wait(timeout=15)
        except subprocess.TimeoutExpired:
            cloud.kill()
            code = cloud.wait()
    print(f"\ncloud: stopped (exit code {code}); edge exit code {edge.returncode}")
    print(f"model {bundle.model_id}: {len(bundle.manifest.splits) - 1} split points; raw activation bytes per point:")
    print("  " + ", ".join(f"{p.name} {p.raw_bytes:,}" for p in bundle.manifest.splits))
    return edge.returncode or code
