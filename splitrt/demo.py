"""`splitrt demo`: export the bundle (cached), start the cloud tail and the edge agent as two processes on
loopback, classify real photographs with local, split and offload actions, and stop both cleanly."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from splitrt.edge.sources import write_sample_images

DEFAULT_IMAGE_DIR = Path(".cache/demo-images")
DEFAULT_ACTIONS = "local,b4/fp32,b4/fp16,b14/fp16,pool/fp16,offload/jpeg-q90"


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
