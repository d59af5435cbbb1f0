"""The edge pipeline for one frame: crop -> head (ONNX Runtime) -> encode -> send -> merge.

`EdgeRuntime.infer` ends every frame with a FrameOutcome: a result, or a status and a reason. The
trace holds each stage's time in milliseconds; it is what the summary tables and benchmarks read.
"""
from __future__ import annotations

import collections
import contextlib
import concurrent.futures
import itertools
import sys
import threading
import time
from typing import TYPE_CHECKING, AsyncIterator, Callable, Iterator, Sequence

import numpy as np
import onnxruntime as ort

from splitrt.clock import wall_clock_ms
from splitrt.actions import Action, Local, Offload, Skip, Split
from splitrt.bundle import HEAD_INPUT_NAME, INPUT_POINT, TAIL_INPUT_NAME, Bundle, BundleError, SplitPoint
from splitrt.codecs import Codec, CodecError, UnknownCodec, codec_for_point
from splitrt.devices.dilation import DeviceSpeed, NativeSpeed
from splitrt.devices.ort import create_session
from splitrt.edge.link import NOT_SENT, Link, LinkError
from splitrt.frame import Frame, FrameOutcome, Prediction, Status
from splitrt.imaging import crop_for_model
from splitrt.protocol import Envelope, Infer, ProtocolError, Reject, Result, TensorSpec, encode, tensor_from_payload

if TYPE_CHECKING:
    import asyncio

    from splitrt.edge.sources import FrameSource



def softmax_top(logits: np.ndarray, labels: Callable[[int], str], k: int = 5) -> list[Prediction]:
    scores = logits.astype(np.float64).reshape(-1)
    probabilities = np.exp(scores - scores.max())
    probabilities /= probabilities.sum()
    order = np.argsort(-probabilities)[:k]
    return [Prediction(int(i), labels(int(i)), float(probabilities[i])) for i in order]


# The reason of a frame whose cloud did not answer in time (a hedged frame's reason starts with it).
NO_REPLY = "no reply from the cloud before the deadline"
# How long before its deadline a hedged frame stops waiting for the cloud, so that taking the hedge's answer
# (softmax, top-5) still ends it in time: one interpreter switch interval, the longest the waiting thread may
# wait for the GIL once woken.
HEDGE_MERGE_RESERVE_MS = sys.getswitchinterval() * 1000.0


class _StopSignal:
    """Stops a local run part-way: ONNX Runtime's terminate flag for the run, and an event for the stretch of an
    emulated device (`DeviceSpeed.stage`)."""

    def __init__(self) -> None:
        self.run_options = ort.RunOptions()
        self.event = threading.Event()

    def set(self) -> None:
        self.run_options.terminate = True
        self.event.set()


class _FallBack(Exception):
    """The cloud path cannot deliver this frame in time; run the fallback action instead."""


def remote_point_and_codec(bundle: Bundle, action: Split | Offload) -> tuple[SplitPoint, Codec]:
    """The split point and codec a remote action sends; raises BundleError, UnknownCodec or ValueError when
    `bundle` has no such point or the codec cannot carry it."""
    point = bundle.manifest.split(INPUT_POINT if isinstance(action, Offload) else action.point)
    codec = codec_for_point(bundle, point.name, action.codec)  # a bottleneck's encoder is its head
    if (codec.kind == "image") != (point.name == INPUT_POINT):
        raise ValueError(f"codec {codec.codec_id} ({codec.kind}) cannot carry split {point.name}")
    return point, codec


def check_action(bundle: Bundle, action: Action) -> None:
    """Raises (BundleError, UnknownCodec, ValueError) when `bundle` cannot run `action`: an exit, split point or
    codec it does not have, its hedge's included. Nothing is loaded."""
    if isinstance(action, Local):
        if action.exit is not None:
            bundle.manifest.exit(action.exit)
    elif isinstance(action, (Split, Offload)):
        remote_point_and_codec(bundle, action)
        if action.hedge is not None:
            check_action(bundle, action.hedge)


def needs_cloud(action: Action) -> bool:
    return isinstance(action, (Split, Offload))


class EdgeRuntime:
    """Runs frames of one bundle on this device, and through `link` on the cloud when the action says so.

    `action` is what `infer` and `run` do when not told otherwise. With a `fallback` action (e.g. `Local()`),
    a frame whose cloud path fails runs that action instead and still ends in time: when the link is known
    to be down the frame never touches it; when a reply is outstanding, the frame waits for it only until
    its deadline minus the fallback's measured run time (times 2, plus 5 ms), then runs the fallback.
    """

    def __init__(
        self,
        bundle: Bundle,
        link: Link | None = None,
        intra_op_threads: int = 1,
        clock_ms: Callable[[], float] = wall_clock_ms,
        exit_threshold: float = 0.0,
        action: Action = Local(),
        fallback: Action | None = None,
        device_speed: DeviceSpeed | None = None,
    ) -> None:
        self.bundle = bundle
        self.device_speed = device_speed or NativeSpeed()  # `TimeDilation`: stages take as long as on a slower device
        self.link = link
        self.exit_threshold = exit_threshold  # an exit less confident than this continues to the final classifier
        self.intra_op_threads = intra_op_threads
        self.clock_ms = clock_ms
        self.action = action
        self.fallback = fallback
        if fallback is not None and needs_cloud(fallback):
            raise ValueError(f"the fallback must run on the device, not {fallback.describe()}")
        self.fallback_ms_estimate: float | None = None  # EWMA of the fallback's run time
        self._fallback_recent_ms: collections.deque[float] = collections.deque(maxlen=16)
        self._sessions: dict[str, ort.InferenceSession] = {}
        self._frame_ids = itertools.count(1)
        self._executor: concurrent.futures.ThreadPoolExecutor | None = None
        self._requests: concurrent.futures.ThreadPoolExecutor | None = None
        self._request_in_flight: concurrent.futures.Future | None = None  # type: ignore[type-arg]

    def next_frame_id(self) -> int:
        """A fresh frame id, for outcomes made outside `infer` (a prefilter's skip)."""
        return next(self._frame_ids)

    def _session(self, file_name: str) -> ort.InferenceSession:
        session = self._sessions.get(file_name)
        if session is None:
            session = create_session(self.bundle.path(file_name), self.intra_op_threads)
            self._sessions[file_name] = session
        return session

    def warm_up(self, actions: list[Action] | None = None) -> None:
        """Load the sessions the actions need and run each once, so the first frame is not an outlier.

        Also times the fallback action (three runs), which sets how long a frame may wait for the cloud.
        """
        crop = self.bundle.manifest.preprocess.crop
        image = np.zeros((1, crop, crop, 3), dtype=np.uint8)
        actions = list(actions) if actions is not None else [self.action]
        for action in actions:
            if isinstance(action, Local):
                self._session(self.bundle.manifest.full_file).run(None, {HEAD_INPUT_NAME: image})
            elif isinstance(action, Split):
                point = self.bundle.manifest.split(action.point)
                if point.head_file:
                    self._session(point.head_file).run(None, {HEAD_INPUT_NAME: image})
        if self.fallback is not None:
            pixels = np.zeros((crop, crop, 3), dtype=np.uint8)
            for _ in range(3):
                self.infer(pixels, self.fallback, budget_ms=60_000.0, frame_id=0)

    def fallback_reserve_ms(self) -> float:
        """Time kept back before a frame's deadline so that the fallback can still finish in time: twice its
        mean run time or the 90th percentile of its last 16 runs, whichever is more, plus 5 ms. (A frame
        keeps at most half of the time it has left, see `_send`.)"""
        if self.fallback is None:
            return 0.0
        if self.fallback_ms_estimate is None:
            return 105.0  # not measured yet (no warm_up): assume a slow device
        recent = float(np.percentile(self._fallback_recent_ms, 90)) if self._fallback_recent_ms else 0.0
        return max(2.0 * self.fallback_ms_estimate, recent) + 5.0

    def _record_fallback_ms(self, took_ms: float) -> None:
        previous = self.fallback_ms_estimate
        self.fallback_ms_estimate = took_ms if previous is None else 0.8 * previous + 0.2 * took_ms
        self._fallback_recent_ms.append(took_ms)

    def infer(
        self,
        pixels: np.ndarray | Frame,
        action: Action | None = None,
        deadline_ms: float | None = None,
        budget_ms: float = 1000.0,
        frame_id: int | None = None,
        source: str = "",
    ) -> FrameOutcome:
        """Run one RGB frame (HWC uint8, any size, or a `Frame`) through `action`; never waits past its deadline.

        A `Frame` brings its own id, capture time, deadline and source name.
        """
        start_ms = self.clock_ms()
        capture_ms = start_ms
        if isinstance(pixels, Frame):
            frame = pixels
            pixels, frame_id, source, capture_ms = frame.pixels, frame.frame_id, frame.source, frame.capture_ms
            if deadline_ms is None and frame.deadline_ms > 0:
                deadline_ms = frame.deadline_ms
            if deadline_ms is None:
                deadline_ms = capture_ms + budget_ms
        action = self.action if action is None else action
        frame_id = next(self._frame_ids) if frame_id is None else frame_id
        deadline_ms = start_ms + budget_ms if deadline_ms is None else deadline_ms
        outcome = FrameOutcome(
            frame_id=frame_id, action=action.describe(), status=Status.OK, source=source,
            capture_ms=capture_ms, deadline_ms=deadline_ms,
        )
        try:
            if isinstance(action, Skip):
                outcome.status, outcome.reason = Status.SKIPPED, "skipped by request"
            elif needs_cloud(action) and self.fallback is not None and not self._link_up():
                self._run_fallback(pixels, deadline_ms, outcome, self._unreachable())
            else:
                try:
                    self._run(pixels, action, deadline_ms, outcome)
                except _FallBack as why:
                    self._run_fallback(pixels, deadline_ms, outcome, str(why))
        except (BundleError, CodecError, UnknownCodec, KeyError, ValueError) as exc:
            outcome.status, outcome.reason = Status.FAILED, str(exc)
        outcome.done_ms = self.clock_ms()
        outcome.latency_ms = outcome.done_ms - start_ms
        if outcome.ok and outcome.done_ms > deadline_ms:
            late = f"late by {outcome.done_ms - deadline_ms:.1f} ms"
            outcome.reason = f"{outcome.reason}; {late}" if outcome.reason else late
        return outcome

    def run(
        self,
        source: "FrameSource",
        action: Action | None = None,
        budget_ms: float = 1000.0,
        stop: "asyncio.Event | None" = None,
        max_queue: int = 4,
    ) -> AsyncIterator[FrameOutcome]:
        """Run every frame of `source`, yielding outcomes as they complete (an async generator).

        A real-time source (camera, WebRTC track, paced video) never builds a backlog: the newest frame
        replaces one still waiting, and the replaced frame ends with `Status.DROPPED`. Other sources wait
        for the pipeline (at most `max_queue` frames ahead). Frames run one at a time on this runtime's
        inference thread; setting `stop` ends the stream after the frames already taken.
        """
        from splitrt.edge.stream import run_stream

        return run_stream(self, source, action=action, budget_ms=budget_ms, stop=stop, max_queue=max_queue)

    @property
    def executor(self) -> concurrent.futures.ThreadPoolExecutor:
        """The one thread that runs this runtime's frames for `run` (ONNX Runtime sessions stay on it)."""
        if self._executor is None:
            self._executor = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="splitrt-infer")
        return self._executor

    def close(self) -> None:
        for pool in (self._executor, self._requests):
            if pool is not None:
                pool.shutdown(wait=True)
        self._executor = self._requests = None

    def _link_up(self) -> bool:
        return self.link is not None and bool(getattr(self.link, "is_up", True))

    def _unreachable(self) -> str:
        """The fallback's reason while the link is down, with the link's own when it knows one (a refused key)."""
        reason = getattr(self.link, "down_reason", None)
        return f"cloud unreachable ({reason})" if reason else "cloud unreachable"

    def _run_fallback(self, pixels: np.ndarray, deadline_ms: float, outcome: FrameOutcome, why: str) -> None:
        assert self.fallback is not None
        outcome.planned = outcome.action
        outcome.action = self.fallback.describe()
        outcome.status = Status.OK
        outcome.bytes_received = 0
        outcome.top, outcome.logits = [], None
        # The abandoned cloud attempt's stages stay in the trace under their own names.
        for stage in ("preprocess", "head", "encode", "network"):
            if stage in outcome.trace_ms:
                outcome.trace_ms[f"abandoned_{stage}"] = outcome.trace_ms.pop(stage)
        # Time left when the cloud path was given up: > 0 means waiting on the link cost this frame no deadline.
        outcome.trace_ms["slack_at_fallback"] = deadline_ms - self.clock_ms()
        started = time.perf_counter()
        self._run(pixels, self.fallback, deadline_ms, outcome)
        self._record_fallback_ms(_since_ms(started))
        outcome.reason = f"{why}: ran {outcome.action} instead of {outcome.planned}"

    @contextlib.contextmanager
    def _stage(self, trace: dict[str, float], name: str, model: str | None = None,
               stop: threading.Event | None = None) -> Iterator[None]:
        """Time a stage into `trace[name]` (ms), stretched to the device's speed (`device_speed`; `model`: the
        model file the stage runs, whose cost does not depend on the input; `stop`: set when the stage is no
        longer needed, which ends its stretch)."""
        start = time.perf_counter()
        with self.device_speed.stage(model, stop):
            yield
        trace[name] = _since_ms(start)

    def _run(self, pixels: np.ndarray, action: Action, deadline_ms: float, outcome: FrameOutcome) -> None:
        trace = outcome.trace_ms
        manifest = self.bundle.manifest
        with self._stage(trace, "preprocess"):
            image = crop_for_model(pixels, manifest.preprocess)[None]

        if isinstance(action, Local):
            logits, outcome.reason = self._local_logits(image, action, trace, "head")
            self._merge(logits, outcome)
            if action == self.fallback and not outcome.planned:
                self._record_fallback_ms(sum(trace.values()))
            return

        point, codec = remote_point_and_codec(self.bundle, action)
        if point.head_file is None:
            activation = image
        else:
            with self._stage(trace, "head", point.head_file):
                activation = self._session(point.head_file).run(None, {HEAD_INPUT_NAME: image})[0]
        with self._stage(trace, "encode"):
            payload = codec.encode(activation)
        spec = TensorSpec(point.activation.dtype, (1, *point.activation.shape))
        self._send(point.name, codec.codec_id, spec, payload, deadline_ms, outcome, image, codec.version_hash,
                   action.hedge)

    def _send(
        self, split: str, codec_id: str, spec: TensorSpec, payload: object, deadline_ms: float, outcome: FrameOutcome,
        image: np.ndarray, codec_hash: str = "", hedge: Local | None = None,
    ) -> None:
        """Send the request and take the reply into `outcome`; with a `hedge`, run it on the frame's preprocessed
        `image` while the request is in flight (`_send_hedged`)."""
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
        try:
            frames = encode(infer, [payload])  # type: ignore[list-item]
        except ProtocolError as exc:  # e.g. a payload over the protocol's size limit: never sent
            if hedge is not None:
                self._answer_with_hedge(*self._local_logits(image, hedge, outcome.trace_ms, "hedge"), hedge, outcome,
                                        f"request not sent ({exc})")
                return
            if self.fallback is not None:
                raise _FallBack(f"request not sent ({exc})") from exc
            outcome.status, outcome.reason = Status.FAILED, f"request not sent: {exc}"
            return
        outcome.bytes_sent = sum(memoryview(f).nbytes for f in frames)
        if hedge is not None:
            self._send_hedged(frames, deadline_ms, outcome, hedge, image)
            return
        self._link_free()
        sent = time.perf_counter()
        # Wait for the cloud until the fallback's reserve, but give the cloud at least half of the time left:
        # when the device is (momentarily) too slow for the deadline, the cloud is the better chance.
        left_ms = deadline_ms - self.clock_ms()
        wait_ms = left_ms - min(self.fallback_reserve_ms(), left_ms / 2.0)
        if self.fallback is not None and wait_ms <= 0:
            raise _FallBack("no time left to wait for the cloud")
        try:
            envelope = self.link.request(frames, outcome.frame_id, wait_ms)
        except LinkError as exc:
            if self.fallback is not None:
                outcome.trace_ms["network"] = _since_ms(sent)
                raise _FallBack(f"cloud link failed ({exc})") from exc
            outcome.status, outcome.reason = Status.FAILED, str(exc)
            return
        round_trip_ms = _since_ms(sent)
        if envelope is None:
            outcome.trace_ms["network"] = round_trip_ms
            if self.fallback is not None:
                raise _FallBack("no reply from the cloud in time")
            outcome.status, outcome.reason = Status.TIMEOUT, NO_REPLY
            return
        self._take_reply(envelope, round_trip_ms, outcome)

    def _take_reply(self, envelope: Envelope, round_trip_ms: float, outcome: FrameOutcome) -> None:
        """The cloud's answer into `outcome`: a Result's logits, or a Reject's status (or the fallback)."""
        message = envelope.message
        if isinstance(message, Reject) and message.detail.startswith(NOT_SENT):  # refused on the edge itself
            outcome.bytes_sent = 0
        if isinstance(message, Reject) and self.fallback is not None:
            outcome.trace_ms["network"] = round_trip_ms
            raise _FallBack(f"cloud rejected it ({message.reason.value})")
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

    def _send_hedged(self, frames: Sequence[bytes | memoryview], deadline_ms: float, outcome: FrameOutcome,
                     hedge: Local, image: np.ndarray) -> None:
        """Send the request, run `hedge` on the device while it is in flight, and answer with the cloud's Result
        if it comes by the deadline (the hedge is stopped when it does), else with the hedge's logits.

        The request waits on the `requests` thread and notes when its answer came, so the round trip is the
        link's, not the hedge's. The frame stops waiting `HEDGE_MERGE_RESERVE_MS` before its deadline; a request
        still waiting then is left to give up by itself, and the next use of the link waits for it
        (`_link_free`), so the link is never used by two threads at once.
        """
        assert self.link is not None
        give_up_ms = deadline_ms - HEDGE_MERGE_RESERVE_MS  # then the hedge's answer still ends the frame in time
        self._link_free()
        if give_up_ms - self.clock_ms() <= 0.0:
            outcome.bytes_sent = 0
            self._answer_with_hedge(*self._local_logits(image, hedge, outcome.trace_ms, "hedge"), hedge, outcome,
                                    "no time left for the cloud")
            return
        sent = time.perf_counter()
        stop_hedge = _StopSignal()
        link = self.link

        def request() -> tuple[Envelope | None, float]:
            envelope = link.request(frames, outcome.frame_id, give_up_ms - self.clock_ms())
            if envelope is not None and isinstance(envelope.message, Result):
                stop_hedge.set()
            return envelope, time.perf_counter()

        self._request_in_flight = reply = self.requests.submit(request)
        hedge_logits, hedge_reason, hedge_error = None, "", None
        try:
            hedge_logits, hedge_reason = self._local_logits(image, hedge, outcome.trace_ms, "hedge", stop_hedge)
        except Exception as exc:  # noqa: BLE001 - ONNX Runtime raises a plain failure when the terminate flag stops it
            hedge_error = exc
        try:
            envelope, arrived = reply.result(timeout=max(0.0, give_up_ms - self.clock_ms()) / 1000.0)
        except concurrent.futures.TimeoutError:  # still waiting at the give-up time (a slow poll): not in time
            envelope, arrived, why = None, time.perf_counter(), NO_REPLY
        except LinkError as exc:  # never sent, or the link went down: the cloud is unreachable
            envelope, arrived, why = None, None, f"cloud link failed ({exc})"
        else:
            why = NO_REPLY
        if envelope is not None and isinstance(envelope.message, Result):
            self._take_reply(envelope, (arrived - sent) * 1000.0, outcome)
            return
        if envelope is not None:
            assert isinstance(envelope.message, Reject)
            why = f"cloud rejected it ({envelope.message.reason.value})"
            if envelope.message.detail.startswith(NOT_SENT):  # refused on the edge itself: nothing went out
                outcome.bytes_sent, arrived = 0, None
        if arrived is not None:
            outcome.trace_ms["network"] = (arrived - sent) * 1000.0
        if hedge_error is not None:  # the hedge failed and the cloud did not answer: the frame ends with the error
            raise hedge_error
        assert hedge_logits is not None  # only a Result stops the hedge, and a Result has answered above
        self._answer_with_hedge(hedge_logits, hedge_reason, hedge, outcome, why)

    def _link_free(self) -> None:
        """Wait for a hedged frame's request that was still giving up when its frame ended (a few ms at most)."""
        if self._request_in_flight is not None:
            concurrent.futures.wait([self._request_in_flight])
            self._request_in_flight = None

    def _answer_with_hedge(self, logits: np.ndarray, hedge_reason: str, hedge: Local, outcome: FrameOutcome,
                           why: str) -> None:
        outcome.hedge_answered = True
        outcome.reason = f"{why}: answered by the hedge {hedge.describe()}" + (f" ({hedge_reason})" if hedge_reason
                                                                                 else "")
        self._merge(logits, outcome)

    @property
    def requests(self) -> concurrent.futures.ThreadPoolExecutor:
        """The thread that waits for a hedged frame's reply while the inference thread runs the hedge."""
        if self._requests is None:
            self._requests = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="splitrt-request")
        return self._requests

    def _local_logits(self, image: np.ndarray, action: Local, trace: dict[str, float], stage: str,
                      stop: "_StopSignal | None" = None) -> tuple[np.ndarray, str]:
        """The logits of local action `action` on a preprocessed image, timed into `trace[stage]`, and a reason
        when an exit was not confident enough (the model then finishes locally, `_exit_logits`). `stop`: set, it
        ends the run part-way (a hedge whose reply came)."""
        manifest = self.bundle.manifest
        if action.exit is not None:
            return self._exit_logits(image, action.exit, trace, stage, stop)
        with self._stage(trace, stage, manifest.full_file, stop and stop.event):
            return self._session(manifest.full_file).run(None, {HEAD_INPUT_NAME: image},
                                                         stop and stop.run_options)[0], ""

    def _exit_logits(self, image: np.ndarray, name: str, trace: dict[str, float], stage: str,
                     stop: "_StopSignal | None") -> tuple[np.ndarray, str]:
        """Stop at exit `name` when it is confident enough; otherwise finish the model locally from there."""
        exit_point = self.bundle.manifest.exit(name)
        with self._stage(trace, stage, exit_point.file, stop and stop.event):
            outputs = self._session(exit_point.file).run(None, {HEAD_INPUT_NAME: image}, stop and stop.run_options)
        if not exit_point.point:  # a complete shallower model: nothing to continue with
            return outputs[0], ""
        activation, logits = outputs
        top = softmax_top(logits, self.bundle.label, k=1)[0]
        if top.confidence >= self.exit_threshold:
            return logits, ""
        tail = self.bundle.manifest.split(exit_point.point).tail_file
        with self._stage(trace, "local_tail" if stage == "head" else f"{stage}_tail", tail, stop and stop.event):
            logits = self._session(tail).run(None, {TAIL_INPUT_NAME: activation}, stop and stop.run_options)[0]
        return logits, f"exit {name} not confident ({top.confidence:.2f} < {self.exit_threshold:.2f})"

    def _merge(self, logits: np.ndarray, outcome: FrameOutcome) -> None:
        with self._stage(outcome.trace_ms, "merge"):
            outcome.logits = np.array(logits, dtype=np.float32).reshape(-1)
            outcome.top = softmax_top(outcome.logits, self.bundle.label)


def _since_ms(start: float) -> float:
    return (time.perf_counter() - start) * 1000.0
