"""The edge pipeline for one frame: crop -> head (ONNX Runtime) -> encode -> send -> merge.

`EdgeRuntime.infer` ends every frame with a FrameOutcome: a result, or a status and a reason. The
trace holds each stage's time in milliseconds; it is what the summary tables and benchmarks read.
"""
from __future__ import annotations

import itertools
import time
from typing import Callable

import numpy as np
import onnxruntime as ort

from splitrt.actions import Action, Local, Offload, Skip, Split
from splitrt.bundle import HEAD_INPUT_NAME, INPUT_POINT, Bundle, BundleError
from splitrt.codecs import CodecError, UnknownCodec, codec_for_point
from splitrt.devices.ort import create_session
from splitrt.edge.link import CloudLink, LinkError
from splitrt.frame import FrameOutcome, Prediction, Status
from splitrt.imaging import crop_for_model
from splitrt.protocol import Infer, Reject, Result, TensorSpec, encode, tensor_from_payload


def wall_clock_ms() -> float:
    return time.time() * 1000.0


def softmax_top(logits: np.ndarray, labels: Callable[[int], str], k: int = 5) -> list[Prediction]:
    scores = logits.astype(np.float64).reshape(-1)
    probabilities = np.exp(scores - scores.max())
    probabilities /= probabilities.sum()
    order = np.argsort(-probabilities)[:k]
    return [Prediction(int(i), labels(int(i)), float(probabilities[i])) for i in order]


class EdgeRuntime:
    """Runs frames of one bundle on this device, and through `link` on the cloud when the action says so."""

    def __init__(
        self,
        bundle: Bundle,
        link: CloudLink | None = None,
        intra_op_threads: int = 1,
        clock_ms: Callable[[], float] = wall_clock_ms,
    ) -> None:
        self.bundle = bundle
        self.link = link
        self.intra_op_threads = intra_op_threads
        self.clock_ms = clock_ms
        self._sessions: dict[str, ort.InferenceSession] = {}
        self._frame_ids = itertools.count(1)

    def _session(self, file_name: str) -> ort.InferenceSession:
        session = self._sessions.get(file_name)
        if session is None:
            session = create_session(self.bundle.path(file_name), self.intra_op_threads)
            self._sessions[file_name] = session
        return session

    def warm_up(self, actions: list[Action]) -> None:
        """Load the sessions the actions need and run each once, so the first frame is not an outlier."""
        crop = self.bundle.manifest.preprocess.crop
        image = np.zeros((1, crop, crop, 3), dtype=np.uint8)
        for action in actions:
            if isinstance(action, Local):
                self._session(self.bundle.manifest.full_file).run(None, {HEAD_INPUT_NAME: image})
            elif isinstance(action, Split):
                point = self.bundle.manifest.split(action.point)
                if point.head_file:
                    self._session(point.head_file).run(None, {HEAD_INPUT_NAME: image})

    def infer(
        self,
        pixels: np.ndarray,
        action: Action,
        deadline_ms: float | None = None,
        budget_ms: float = 1000.0,
        frame_id: int | None = None,
        source: str = "",
    ) -> FrameOutcome:
        """Run one RGB frame (HWC uint8, any size) through `action`; never waits past its deadline."""
        start_ms = self.clock_ms()
        frame_id = next(self._frame_ids) if frame_id is None else frame_id
        deadline_ms = start_ms + budget_ms if deadline_ms is None else deadline_ms
        outcome = FrameOutcome(frame_id=frame_id, action=action.describe(), status=Status.OK, source=source)
        try:
            if isinstance(action, Skip):
                outcome.status, outcome.reason = Status.SKIPPED, "skipped by request"
            else:
                self._run(pixels, action, deadline_ms, outcome)
        except (BundleError, CodecError, UnknownCodec, KeyError, ValueError) as exc:
            outcome.status, outcome.reason = Status.FAILED, str(exc)
        outcome.latency_ms = self.clock_ms() - start_ms
        if outcome.ok and self.clock_ms() > deadline_ms:
            outcome.reason = f"late by {self.clock_ms() - deadline_ms:.1f} ms"
        return outcome

    def _run(self, pixels: np.ndarray, action: Action, deadline_ms: float, outcome: FrameOutcome) -> None:
        trace = outcome.trace_ms
        manifest = self.bundle.manifest
        t = time.perf_counter()
        image = crop_for_model(pixels, manifest.preprocess)[None]
        trace["preprocess"] = _since_ms(t)

        if isinstance(action, Local):
            if action.exit is not None:
                raise ValueError(f"bundle {manifest.model_id} has no early exit {action.exit!r}")
            t = time.perf_counter()
            logits = self._session(manifest.full_file).run(None, {HEAD_INPUT_NAME: image})[0]
            trace["head"] = _since_ms(t)
            self._merge(logits, outcome)
            return

        point = manifest.split(INPUT_POINT if isinstance(action, Offload) else action.point)
        codec = codec_for_point(self.bundle, point.name, action.codec)  # a bottleneck's encoder is its head
        if (codec.kind == "image") != (point.name == INPUT_POINT):
            raise ValueError(f"codec {codec.codec_id} ({codec.kind}) cannot carry split {point.name}")
        if point.head_file is None:
            activation = image
        else:
            t = time.perf_counter()
            activation = self._session(point.head_file).run(None, {HEAD_INPUT_NAME: image})[0]
            trace["head"] = _since_ms(t)
        t = time.perf_counter()
        payload = codec.encode(activation)
        trace["encode"] = _since_ms(t)
        spec = TensorSpec(point.activation.dtype, (1, *point.activation.shape))
        self._send(point.name, codec.codec_id, spec, payload, deadline_ms, outcome, codec.version_hash)

    def _send(
        self, split: str, codec_id: str, spec: TensorSpec, payload: object, deadline_ms: float, outcome: FrameOutcome,
        codec_hash: str = "",
    ) -> None:
        if self.link is None:
            outcome.status, outcome.reason = Status.FAILED, "no cloud link configured for a split/offload action"
            return
        infer = Infer(
            frame_id=outcome.frame_id,
            bundle_hash=self.bundle.content_hash,
            split=split,
            codec=codec_id,
            tensor=spec,
            deadline_ms=deadline_ms,
            codec_hash=codec_hash,
        )
        frames = encode(infer, [payload])  # type: ignore[list-item]
        outcome.bytes_sent = sum(memoryview(f).nbytes for f in frames)
        sent = time.perf_counter()
        try:
            envelope = self.link.request(frames, outcome.frame_id, deadline_ms - self.clock_ms())
        except LinkError as exc:
            outcome.status, outcome.reason = Status.FAILED, str(exc)
            return
        round_trip_ms = _since_ms(sent)
        if envelope is None:
            outcome.status, outcome.reason = Status.TIMEOUT, "no reply from the cloud before the deadline"
            outcome.trace_ms["network"] = round_trip_ms
            return
        message = envelope.message
        if isinstance(message, Reject):
            outcome.status = Status.EXPIRED if message.reason.value == "expired" else Status.REJECTED
            outcome.reason = f"{message.reason.value}: {message.detail}"
            outcome.trace_ms["network"] = round_trip_ms
            return
        assert isinstance(message, Result)
        outcome.bytes_received = sum(p.nbytes for p in envelope.payloads)
        outcome.trace_ms["cloud_queue"] = message.queue_ms
        outcome.trace_ms["cloud_compute"] = message.compute_ms
        outcome.trace_ms["network"] = max(0.0, round_trip_ms - message.queue_ms - message.compute_ms)
        logits = tensor_from_payload(message.outputs[0], envelope.payloads[0])
        self._merge(logits, outcome)

    def _merge(self, logits: np.ndarray, outcome: FrameOutcome) -> None:
        t = time.perf_counter()
        outcome.logits = np.array(logits, dtype=np.float32).reshape(-1)
        outcome.top = softmax_top(outcome.logits, self.bundle.label)
        outcome.trace_ms["merge"] = _since_ms(t)


def _since_ms(start: float) -> float:
    return (time.perf_counter() - start) * 1000.0
