"""`splitrt bench codecs`: for every (split, codec), run each labelled image through the real split path
(ONNX Runtime head -> codec -> ZeroMQ on loopback -> tail service) and measure bytes, accuracy, and the
agreement of the top-1 with the unsplit PyTorch model."""
from __future__ import annotations

import threading
import time
from collections import defaultdict
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from tqdm import tqdm

from splitrt.bench.common import LabelledImage, format_table, p50, read_labelled_images, write_json
from splitrt.bundle import HEAD_INPUT_NAME, INPUT_POINT, Bundle
from splitrt.cloud.service import ServiceConfig, TailService
from splitrt.codecs import get_codec
from splitrt.devices.ort import create_session
from splitrt.edge.link import CloudLink
from splitrt.imaging import crop_for_model, load_rgb
from splitrt.partition.export import load_or_export
from splitrt.partition.models import load_model
from splitrt.protocol import Infer, Result, TensorSpec, encode, tensor_from_payload

COLUMNS = ("split", "codec", "frames", "bytes_p50", "top1", "top1_agreement", "encode_ms_p50", "decode_ms_p50",
           "round_trip_ms_p50", "failed")


def reference_top1(model_id: str, crops: list[np.ndarray]) -> np.ndarray:
    """Top-1 class of the unsplit PyTorch model (the model as its package defines it) for each crop."""
    model = load_model(model_id)
    normalize = model.normalizer()
    answers = []
    with torch.no_grad():
        for start in range(0, len(crops), 32):
            batch = torch.from_numpy(np.stack(crops[start : start + 32]))
            answers.append(model.reference(normalize(batch)).argmax(1).numpy())
    return np.concatenate(answers)


def run_codec_bench(
    bundle_dir: str | Path,
    images: str | Path,
    codecs: Sequence[str],
    json_out: str | Path,
    splits: Sequence[str] | None = None,
    limit: int | None = None,
    model: str = "efficientnet-lite0",
) -> list[dict[str, object]]:
    labelled: list[LabelledImage] = read_labelled_images(images, limit)
    bundle = load_or_export(bundle_dir, model)
    tensor_codecs = [get_codec(c) for c in codecs if get_codec(c).kind == "tensor"]
    image_codecs = [get_codec(c) for c in codecs if get_codec(c).kind == "image"]
    points = [p for p in bundle.manifest.splits if p.head_file is not None and (splits is None or p.name in splits)]
    crops = [crop_for_model(load_rgb(item.path), bundle.manifest.preprocess) for item in labelled]
    truth = np.array([item.class_index for item in labelled])
    reference = reference_top1(bundle.model_id, crops)
    print(f"{bundle.model_id} (PyTorch, unsplit): top-1 {np.mean(reference == truth):.4f} on {len(labelled)} images")

    service = TailService([bundle], ServiceConfig(bind="tcp://127.0.0.1:*", max_queue_depth=8))
    service.tails.warm_up()
    thread = threading.Thread(target=service.serve, daemon=True)
    thread.start()
    service.wait_ready()
    link = CloudLink(service.endpoint, bundle.content_hash, client_id="bench-codecs")
    link.handshake()
    measured: dict[tuple[str, str], dict[str, list[float]]] = defaultdict(lambda: defaultdict(list))
    jobs = [(p, tensor_codecs) for p in points] + ([(bundle.manifest.split(INPUT_POINT), image_codecs)] if image_codecs else [])
    frame_id = 0
    try:
        with tqdm(total=len(labelled) * sum(len(c) for _, c in jobs), desc="bench codecs", unit="frame") as bar:
            for point, point_codecs in jobs:
                head = create_session(bundle.path(point.head_file)) if point.head_file else None
                for index, crop in enumerate(crops):
                    image = crop[None]
                    activation = head.run(None, {HEAD_INPUT_NAME: image})[0] if head else image
                    spec = TensorSpec(point.activation.dtype, (1, *point.activation.shape))
                    for codec in point_codecs:
                        frame_id += 1
                        stats = measured[(point.name, codec.codec_id)]
                        start = time.perf_counter()
                        payload = codec.encode(activation)
                        stats["encode_ms"].append((time.perf_counter() - start) * 1000)
                        start = time.perf_counter()
                        codec.decode(payload, spec)  # the same decode the service runs, timed here alone
                        stats["decode_ms"].append((time.perf_counter() - start) * 1000)
                        infer = Infer(frame_id, bundle.content_hash, point.name, codec.codec_id, spec,
                                      deadline_ms=time.time() * 1000 + 10_000)
                        frames = encode(infer, [payload])
                        start = time.perf_counter()
                        envelope = link.request(frames, frame_id, timeout_ms=10_000)
                        stats["round_trip_ms"].append((time.perf_counter() - start) * 1000)
                        stats["bytes"].append(memoryview(payload).nbytes)
                        if envelope is None or not isinstance(envelope.message, Result):
                            stats["failed"].append(1)
                            bar.update()
                            continue
                        logits = tensor_from_payload(envelope.message.outputs[0], envelope.payloads[0])
                        top1 = int(np.argmax(logits))
                        stats["correct"].append(float(top1 == truth[index]))
                        stats["agree"].append(float(top1 == reference[index]))
                        bar.update()
    finally:
        link.close()
        service.stop()
        thread.join(30)

    rows: list[dict[str, object]] = [{
        "model": bundle.model_id, "split": "-", "codec": "pytorch-unsplit", "frames": len(labelled),
        "bytes_p50": 0, "top1": float(np.mean(reference == truth)), "top1_agreement": 1.0,
        "encode_ms_p50": 0.0, "decode_ms_p50": 0.0, "round_trip_ms_p50": 0.0, "failed": 0,
    }]
    for (split, codec_id), stats in measured.items():
        done = len(stats["correct"])
        rows.append({
            "model": bundle.model_id,
            "split": split,
            "codec": codec_id,
            "frames": done,
            "bytes_p50": int(p50(stats["bytes"])),
            "top1": float(np.mean(stats["correct"])) if done else float("nan"),
            "top1_agreement": float(np.mean(stats["agree"])) if done else float("nan"),
            "encode_ms_p50": p50(stats["encode_ms"]),
            "decode_ms_p50": p50(stats["decode_ms"]),
            "round_trip_ms_p50": p50(stats["round_trip_ms"]),
            "failed": len(stats["failed"]),
        })
    print(format_table(rows, COLUMNS))
    write_json(json_out, "codecs", rows, images=str(images), frames=len(labelled))
    print(f"wrote {json_out}")
    return rows
