"""`splitrt bench codecs`: for every (split, codec), run each labelled image through the real split path
(ONNX Runtime head -> codec -> ZeroMQ on loopback -> tail service) and measure bytes, accuracy, and the
agreement of the top-1 with the unsplit PyTorch model. Learned bottlenecks in the bundle are measured the
same way (their encoder is the head, `ans` the codec), and image codecs as offload rows at the input.
Optionally writes the rate-accuracy plot (top-1 against median bytes per frame)."""
from __future__ import annotations

import threading
import time
from collections import defaultdict
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from tqdm import tqdm

from splitrt.bench.common import (
    LabelledImage,
    format_table,
    p50,
    read_labelled_images,
    select_parity,
    write_json,
)
from splitrt.bundle import HEAD_INPUT_NAME, INPUT_POINT, Bundle, SplitPoint
from splitrt.cloud.service import ServiceConfig, TailService
from splitrt.codecs import Codec, codec_for_point, get_codec
from splitrt.devices.ort import create_session
from splitrt.edge.link import CloudLink
from splitrt.imaging import crop_for_model, load_rgb
from splitrt.partition.export import load_or_export
from splitrt.partition.models import load_model
from splitrt.protocol import Infer, Result, TensorSpec, encode, tensor_from_payload

COLUMNS = ("split", "codec", "frames", "bytes_p50", "top1", "top1_agreement", "head_ms_p50", "encode_ms_p50",
           "decode_ms_p50", "round_trip_ms_p50", "failed")


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



def _jobs(bundle: Bundle, codecs: Sequence[str], splits: Sequence[str] | None,
          bottlenecks: Sequence[str] | None) -> list[tuple[SplitPoint, list[Codec]]]:
    tensor_codecs = [c for c in codecs if get_codec(c).kind == "tensor"]
    image_codecs = [get_codec(c) for c in codecs if get_codec(c).kind == "image"]
    manifest = bundle.manifest
    jobs: list[tuple[SplitPoint, list[Codec]]] = []
    if tensor_codecs:
        for point in manifest.splits:
            if point.head_file is not None and (splits is None or point.name in splits):
                jobs.append((point, [get_codec(c) for c in tensor_codecs]))
    names = [b.name for b in manifest.bottlenecks] if bottlenecks is None else list(bottlenecks)
    for name in names:
        bottleneck = manifest.bottleneck(name)
        if bottleneck is None:
            raise KeyError(f"bundle {bundle.model_id} has no bottleneck {name!r}; it has: "
                           f"{', '.join(b.name for b in manifest.bottlenecks) or 'none'}")
        jobs.append((bottleneck.as_split_point(), [codec_for_point(bundle, name, bottleneck.codec)]))
    if image_codecs:
        jobs.append((manifest.split(INPUT_POINT), image_codecs))
    return jobs


def _included_rows(paths: Sequence[str | Path], parity: str, frames: int,
                   present: set[tuple[str, str]]) -> list[dict[str, object]]:
    import json

    rows: list[dict[str, object]] = []
    for path in paths:
        document = json.loads(Path(path).read_text(encoding="utf-8"))
        if document.get("parity", "all") != parity or document.get("frames") != frames:
            raise ValueError(f"{path}: measured on {document.get('frames')} images ({document.get('parity', 'all')}), "
                             f"this run has {frames} ({parity}); only rows on the same images can be compared")
        for row in document["rows"]:
            key = (str(row["split"]), str(row["codec"]))
            if key not in present:
                rows.append(row)
                present.add(key)
    return rows


def run_codec_bench(
    bundle_dir: str | Path,
    images: str | Path,
    codecs: Sequence[str],
    json_out: str | Path,
    splits: Sequence[str] | None = None,
    limit: int | None = None,
    model: str = "efficientnet-lite0",
    parity: str = "all",
    bottlenecks: Sequence[str] | None = None,
    plot_out: str | Path | None = None,
    include: Sequence[str | Path] = (),
) -> list[dict[str, object]]:
    """`include`: JSON files of earlier runs on the same images and parity whose rows join this table and plot."""
    labelled: list[LabelledImage] = select_parity(read_labelled_images(images), parity)[:limit]
    bundle = load_or_export(bundle_dir, model)
    jobs = _jobs(bundle, codecs, splits, bottlenecks)
    crops = [crop_for_model(load_rgb(item.path), bundle.manifest.preprocess) for item in labelled]
    truth = np.array([item.class_index for item in labelled])
    reference = reference_top1(bundle.model_id, crops)
    print(f"{bundle.model_id} (PyTorch, unsplit): top-1 {np.mean(reference == truth):.4f} on {len(labelled)} images "
          f"({parity} classes)")

    service = TailService([bundle], ServiceConfig(bind="tcp://127.0.0.1:*", max_queue_depth=8))
    service.tails.warm_up()
    thread = threading.Thread(target=service.serve, daemon=True)
    thread.start()
    service.wait_ready()
    link = CloudLink(service.endpoint, bundle.content_hash, client_id="bench-codecs")
    link.handshake()
    measured: dict[tuple[str, str], dict[str, list[float]]] = defaultdict(lambda: defaultdict(list))
    frame_id = 0
    try:
        with tqdm(total=len(labelled) * sum(len(c) for _, c in jobs), desc="bench codecs", unit="frame") as bar:
            for point, point_codecs in jobs:
                head = create_session(bundle.path(point.head_file)) if point.head_file else None
                if head is not None:
                    head.run(None, {HEAD_INPUT_NAME: crops[0][None]})  # warm-up, not measured
                for index, crop in enumerate(crops):
                    image = crop[None]
                    start = time.perf_counter()
                    activation = head.run(None, {HEAD_INPUT_NAME: image})[0] if head else image
                    head_ms = (time.perf_counter() - start) * 1000
                    spec = TensorSpec(point.activation.dtype, (1, *point.activation.shape))
                    for codec in point_codecs:
                        frame_id += 1
                        stats = measured[(point.name, codec.codec_id)]
                        stats["head_ms"].append(head_ms if head else 0.0)
                        start = time.perf_counter()
                        payload = codec.encode(activation)
                        stats["encode_ms"].append((time.perf_counter() - start) * 1000)
                        start = time.perf_counter()
                        codec.decode(payload, spec)  # the same decode the service runs, timed here alone
                        stats["decode_ms"].append((time.perf_counter() - start) * 1000)
                        infer = Infer(frame_id, bundle.content_hash, point.name, codec.codec_id, spec,
                                      deadline_ms=time.time() * 1000 + 10_000, codec_hash=codec.version_hash)
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
        "bytes_p50": 0, "top1": float(np.mean(reference == truth)), "top1_agreement": 1.0, "head_ms_p50": 0.0,
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
            "head_ms_p50": p50(stats["head_ms"]),
            "encode_ms_p50": p50(stats["encode_ms"]),
            "decode_ms_p50": p50(stats["decode_ms"]),
            "round_trip_ms_p50": p50(stats["round_trip_ms"]),
            "failed": len(stats["failed"]),
        })
    rows += _included_rows(include, parity, len(labelled), {(str(r["split"]), str(r["codec"])) for r in rows})
    print(format_table(rows, COLUMNS))
    write_json(json_out, "codecs", rows, images=str(images), frames=len(labelled), parity=parity)
    print(f"wrote {json_out}")
    if plot_out is not None:
        from splitrt.bench.plot import rate_accuracy_plot

        rate_accuracy_plot(rows, plot_out, title=f"{bundle.model_id}, {len(labelled)} images ({parity} classes)")
        print(f"wrote {plot_out}")
    return rows
