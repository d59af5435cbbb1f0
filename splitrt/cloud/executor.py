"""Running one batch: decode every payload, drop what is past its deadline, one tail call, one reply each.

No sockets and no threads here; the clock and the tail runner are passed in. Every request in the batch
ends with exactly one reply: a Result (with queue ms, compute ms and the queue depth), or a Reject.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import numpy as np

from splitrt.bundle import INPUT_POINT
from splitrt.cloud.admission import Reply, Work, reject
from splitrt.cloud.batcher import Batch
from splitrt.cloud.tails import TailRunner
from splitrt.codecs import CodecError, get_codec
from splitrt.protocol import RejectReason, Result, tensor_payload


@dataclass
class BatchOutcome:
    replies: list[tuple[Work, Reply]] = field(default_factory=list)
    executed: int = 0  # requests that went through the tail
    expired_executed: int = 0  # of those, how many were past their deadline when the tail started (must be 0)
    started_ms: float = 0.0
    compute_ms: float = 0.0


def decode_activation(work: Work) -> np.ndarray:
    """The request's tensor as the tail takes it (N, ...); raises CodecError on a bad payload."""
    codec = work.codec if work.codec is not None else get_codec(work.infer.codec)
    activation = codec.decode(work.payload, work.infer.tensor)
    if work.infer.split == INPUT_POINT and activation.ndim == 3:
        activation = activation[None]
    return activation


def run_batch(
    batch: Batch[Work],
    runner: TailRunner,
    clock_ms: Callable[[], float],
    queue_depth: Callable[[], int],
) -> BatchOutcome:
    outcome = BatchOutcome(started_ms=clock_ms())
    decoded: list[tuple[Work, np.ndarray]] = []
    for pending in batch.requests:
        work = pending.item
        try:
            decoded.append((work, decode_activation(work)))
        except CodecError as exc:
            outcome.replies.append((work, Reply(reject(work.infer.frame_id, RejectReason.BAD_PAYLOAD, str(exc)))))
    tail_start_ms = clock_ms()
    live: list[tuple[Work, np.ndarray]] = []
    for work, activation in decoded:  # the last check before the tail: nothing past its deadline runs
        if work.infer.deadline_ms <= tail_start_ms:
            late_ms = tail_start_ms - work.infer.deadline_ms
            outcome.replies.append((work, Reply(reject(
                work.infer.frame_id, RejectReason.EXPIRED, f"deadline passed {late_ms:.1f} ms before its turn"))))
        else:
            live.append((work, activation))
    if not live:
        return outcome
    bundle_hash, split = live[0][0].infer.bundle_hash, live[0][0].infer.split
    stacked = live[0][1] if len(live) == 1 else np.concatenate([a for _, a in live])
    outcome.expired_executed = sum(1 for w, _ in live if w.infer.deadline_ms <= tail_start_ms)
    output = runner.run(bundle_hash, split, stacked)
    outcome.executed = len(live)
    row = 0
    depth = queue_depth()
    finished_ms = clock_ms()
    outcome.compute_ms = max(0.0, finished_ms - outcome.started_ms)
    for work, activation in live:
        rows = activation.shape[0]
        spec, payload = tensor_payload(output[row : row + rows])
        row += rows
        result = Result(
            frame_id=work.infer.frame_id,
            outputs=(spec,),
            queue_ms=max(0.0, outcome.started_ms - work.received_ms),
            compute_ms=outcome.compute_ms,  # payload decode + tail, shared by the batch
            queue_depth=depth,
        )
        outcome.replies.append((work, Reply(result, (payload,))))
    return outcome
