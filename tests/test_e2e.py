"""Edge and cloud as real processes over real sockets, started the way a user starts them."""
from __future__ import annotations

import json
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from splitrt.bundle import Bundle
from splitrt.demo import wait_for_ready

SPLITRT = [sys.executable, "-m", "splitrt"]


@pytest.fixture()
def cloud_process(tiny_bundle: Bundle):
    process = subprocess.Popen(
        [*SPLITRT, "cloud", "serve", "--bundle", str(tiny_bundle.root), "--bind", "tcp://127.0.0.1:*",
         "--ready-json", "--warm-up"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        endpoint = wait_for_ready(process, timeout_s=60)
        yield process, endpoint
    finally:
        if process.poll() is None:
            process.kill()
        process.wait()


def test_edge_and_cloud_processes_classify_every_image(
    cloud_process, tiny_bundle: Bundle, sample_images: Path, tmp_path: Path
) -> None:
    process, endpoint = cloud_process
    out = tmp_path / "frames.jsonl"
    edge = subprocess.run(
        [*SPLITRT, "edge", "run", "--bundle", str(tiny_bundle.root), "--connect", endpoint,
         "--source", str(sample_images), "--split", "local,res/fp16,pool/fp32,offload/jpeg-q90", "--json", str(out)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert edge.returncode == 0, edge.stderr
    frames = [json.loads(line) for line in out.read_text().splitlines()]
    images = len(list(sample_images.iterdir()))
    assert len(frames) == 4 * images
    assert all(f["status"] == "ok" for f in frames), [f for f in frames if f["status"] != "ok"]
    # Lossless-enough splits agree with local on every image.
    by_image: dict[str, dict[str, int]] = {}
    for f in frames:
        by_image.setdefault(f["source"], {})[f["action"]] = f["top"][0]["class_index"]
    for source, answers in by_image.items():
        assert answers["split@pool/fp32"] == answers["local"] == answers["split@res/fp16"], source
    assert "split@res/fp16" in edge.stdout and "bytes/frame" in edge.stdout

    process.send_signal(signal.SIGTERM)
    assert process.wait(timeout=15) == 0
    log = process.stderr.read()
    assert "stopping: draining" in log and "'result': " in log


def test_edge_reports_an_unreachable_cloud(tiny_bundle: Bundle, sample_images: Path) -> None:
    edge = subprocess.run(
        [*SPLITRT, "edge", "run", "--bundle", str(tiny_bundle.root), "--connect", "tcp://127.0.0.1:1",
         "--source", str(sample_images), "--split", "res", "--connect-timeout-ms", "500"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert edge.returncode == 2
    assert "no answer from tcp://127.0.0.1:1" in edge.stderr


def test_serve_refuses_a_missing_bundle_with_a_hint(tmp_path: Path) -> None:
    result = subprocess.run(
        [*SPLITRT, "cloud", "serve", "--bundle", str(tmp_path / "none")], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 2 and "splitrt partition export" in result.stderr
