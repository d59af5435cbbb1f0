"""Shared fixtures: a tiny exported bundle and a tail service on a real loopback socket."""
from __future__ import annotations

import contextlib
import os
import threading
from pathlib import Path
from typing import Iterator

import numpy as np
import pytest
import zmq

from splitrt.bundle import Bundle
from splitrt.cloud.service import ServiceConfig, TailService
from splitrt.edge.link import CloudLink


# Real data beside the repository (never committed); tests that need it skip when it is absent.
SHARED_DIR = Path(os.environ.get("SPLITRT_SHARED", Path(__file__).resolve().parents[1].parent / "shared"))


@pytest.fixture(scope="session")
def tiny_bundle(tmp_path_factory: pytest.TempPathFactory) -> Bundle:
    from splitrt.partition.export import export_bundle
    from splitrt.partition.models import load_model

    return export_bundle(load_model("tiny-cnn"), tmp_path_factory.mktemp("bundles") / "tiny", progress=False)


@pytest.fixture()
def rng() -> np.random.Generator:
    return np.random.default_rng(1234)


class RunningService:
    def __init__(self, service: TailService, thread: threading.Thread) -> None:
        self.service = service
        self.thread = thread

    @property
    def endpoint(self) -> str:
        return self.service.endpoint


def start_service(bundles: list[Bundle], **config: object) -> RunningService:
    config.setdefault("bind", "tcp://127.0.0.1:*")
    service = TailService(bundles, ServiceConfig(**config))  # type: ignore[arg-type]
    thread = threading.Thread(target=service.serve, daemon=True)
    thread.start()
    assert service.wait_ready(10), "service did not start"
    return RunningService(service, thread)


@pytest.fixture()
def service(tiny_bundle: Bundle) -> Iterator[RunningService]:
    running = start_service([tiny_bundle])
    yield running
    running.service.stop()
    running.thread.join(10)
    assert not running.thread.is_alive(), "service did not stop"


@pytest.fixture()
def dealer() -> Iterator[zmq.Socket]:
    """A raw DEALER socket, to send whatever bytes a test likes."""
    socket = zmq.Context.instance().socket(zmq.DEALER)
    socket.setsockopt(zmq.LINGER, 0)
    yield socket
    socket.close()


@pytest.fixture(scope="session")
def sample_images(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from splitrt.edge.sources import write_sample_images

    folder = tmp_path_factory.mktemp("images")
    write_sample_images(folder)
    return folder


@pytest.fixture(scope="module")
def one_torch_thread() -> Iterator[None]:
    """One intra-op thread: small convolutions only lose to thread hand-offs on a shared machine."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def write_labelled_images(folder: Path, count: int, classes: int) -> Path:
    """`count` random 40x40 PNGs with a labels.csv, cycling through the first `classes` odd class indices (the
    evaluation half that the benchmarks use)."""
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    lines = ["file,class_index"]
    for i in range(count):
        Image.fromarray(rng.integers(0, 256, (40, 40, 3), dtype=np.uint8)).save(folder / f"{i}.png")
        lines.append(f"{i}.png,{2 * (i % classes) + 1}")
    (folder / "labels.csv").write_text("\n".join(lines) + "\n")
    return folder


@contextlib.contextmanager
def silent_cloud_link(bundle_hash: str) -> Iterator[CloudLink]:
    """A CloudLink connected to a real ROUTER socket that takes requests and never answers.

    The link's socket refuses to queue a send until its connection is up (zmq.IMMEDIATE), so a request sent too
    soon ends at once as "not connected", another case. This waits until a heartbeat has reached the cloud.
    """
    socket = zmq.Context.instance().socket(zmq.ROUTER)
    socket.setsockopt(zmq.LINGER, 0)
    port = socket.bind_to_random_port("tcp://127.0.0.1")
    try:
        with CloudLink(f"tcp://127.0.0.1:{port}", bundle_hash) as link:
            for seq in range(500):
                link.ping(seq, timeout_ms=10.0)
                if socket.poll(0):
                    break
            else:
                raise AssertionError("the link never connected to the silent cloud")
            while socket.poll(0):
                socket.recv_multipart()
            yield link
    finally:
        socket.close()
