"""The Ray Serve backend gives the same outputs as the in-process executor, through the same gateway.

Starts a local Ray instance (tens of seconds); skipped when the [ray] extra is not installed.
"""
from __future__ import annotations

import threading
import time

import numpy as np
import pytest
import zmq

from splitrt.bundle import Bundle
from splitrt.cloud.config import ServiceConfig
from splitrt.cloud.service import TailService
from splitrt.cloud.tails import TailExecutor
from splitrt.protocol import Result, decode, tensor_from_payload
from tests.test_service import head_output, infer_frames

pytest.importorskip("ray.serve", reason="the Ray backend needs the [ray] extra (ray[serve])")


def test_ray_backend_matches_the_local_executor_through_the_gateway(tiny_bundle: Bundle,
                                                                   rng: np.random.Generator) -> None:
    from splitrt.cloud.ray_backend import RayTailRunner

    runner = RayTailRunner([tiny_bundle], max_batch_size=8, max_replicas=2)
    service = TailService([tiny_bundle], ServiceConfig(bind="tcp://127.0.0.1:*", workers=4,
                                                       max_queue_delay_ms=10.0), runner=runner)
    thread = threading.Thread(target=service.serve, daemon=True)
    thread.start()
    socket = zmq.Context.instance().socket(zmq.DEALER)
    socket.setsockopt(zmq.LINGER, 0)
    try:
        assert service.wait_ready(10)
        local = TailExecutor([tiny_bundle])
        images = [rng.integers(0, 256, size=(1, 32, 32, 3), dtype=np.uint8) for _ in range(12)]
        batch = np.concatenate([head_output(tiny_bundle, "res", image) for image in images])
        np.testing.assert_array_equal(runner.run(tiny_bundle.content_hash, "res", batch),
                                      local.run(tiny_bundle.content_hash, "res", batch))
        before_ms = time.time() * 1000.0
        deadlines_ms = np.where(np.arange(len(batch)) % 3 == 0, before_ms - 1.0, before_ms + 60_000.0)
        output, started_ms, ran = runner.run_before(tiny_bundle.content_hash, "res", batch, deadlines_ms)
        assert before_ms <= started_ms <= time.time() * 1000.0, "the replica's start, on the deadlines' clock"
        assert ran.tolist() == [i % 3 != 0 for i in range(len(batch))], "rows past their deadline do not run"
        np.testing.assert_array_equal(output, local.run(tiny_bundle.content_hash, "res", batch[ran]))
        assert 1 <= runner.running_replicas() <= 2
        socket.connect(service.endpoint)
        for frame_id, image in enumerate(images):
            socket.send_multipart(infer_frames(tiny_bundle, "res", head_output(tiny_bundle, "res", image),
                                               frame_id=frame_id))
        seen = 0
        while seen < len(images) and socket.poll(20000):
            envelope = decode(socket.recv_multipart())
            result = envelope.message
            assert isinstance(result, Result), result
            logits = tensor_from_payload(result.outputs[0], envelope.payloads[0])
            expected = local.run(tiny_bundle.content_hash, "res", head_output(tiny_bundle, "res", images[result.frame_id]))
            np.testing.assert_allclose(logits, expected, rtol=1e-6, atol=1e-6)  # batched on the Ray side
            seen += 1
        assert seen == len(images)
    finally:
        socket.close()
        service.stop()
        thread.join(15)
        runner.close()
