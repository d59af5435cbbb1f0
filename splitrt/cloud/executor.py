"""Running one batch: decode every payload, drop what is past its deadline, one tail call, one reply each.

No sockets and no threads here; the clock and the tail runner are passed in. Every request in the batch
ends with exactly one reply: a Result (with queue ms, compute ms, the queue depth, and when its tail started), or
a Reject.

The deadline checks and the record of when the tail started are separate readings: the checks keep only requests
that can still finish by their deadline, and the start is read again just before the tail runs (or reported by a
runner whose batches may queue elsewhere, Ray Serve's replicas: `run_before`, which gets each row's deadline and
skips what has expired when it takes the batch up). So `expired_executed`, and the `tail_started_ms` every Result
carries, check the filter instead of restating it.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Protocol, runtime_checkable

import numpy as np

from splitrt.bundle import INPUT_POINT
from splitrt.cloud.admission import Reply, Work, reject
from splitrt.cloud.batcher import Batch
from splitrt.cloud.config import DEFAULT_MIN_TIME_LEFT_MS
from splitrt.cloud.tails import TailRunner
from splitrt.codecs import CodecError, get_codec
from splitrt.protocol import RejectReason, Result, tensor_payload


@dataclass
class BatchOutcome:
    replies: list[tuple[Work, Reply]] = field(default_factory=list)
    executed: int = 0  # requests that went through the tail
    expired_executed: int = 0  # of those, how many were at or past their deadline when the tail started (must be 0)
    started_ms: float = 0.0  # when the batch was taken up (decoding starts)
    tail_started_ms: float | None = None  # when the tail began running the batch (same clock as the deadlines)
    compute_ms: float = 0.0


@runtime_checkable
class DeadlineTailRunner(Protocol):
    """A runner whose tails run elsewhere and may queue there: it gets each row's deadline (unix epoch ms) and runs
    only the rows still before theirs when the tail starts. Returns the outputs of those rows, when it started, and
    which rows ran (a boolean mask over the input's rows)."""

    def run_before(self, bundle_hash: str, split: str, activation: np.ndarray,
                   deadlines_ms: np.ndarray) -> tuple[np.ndarray, float, np.ndarray]: ...


def decode_activation(work: Work) -> np.ndarray:
    """The request's tensor as the tail takes it (N, ...): its declared dtype, or float16 for the runner to cast;
    raises CodecError on a bad payload."""
    codec = work.codec if work.codec is not None else get_codec(work.infer.codec)
    activation = codec.decode_for_tail(work.payload, work.infer.tensor)
    if work.infer.split == INPUT_POINT and activation.ndim == 3:
        activation = activation[None]
    return activation


def run_batch(
    batch: Batch[Work],
    runner: TailRunner,
    clock_ms: Callable[[], float],
    queue_depth: Callable[[], int],
    min_time_left_ms: float = DEFAULT_MIN_TIME_LEFT_MS,
) -> BatchOutcome:
    """Every request of `batch` ends with one reply. A request is run only if, at both checks before the tail, it has
    at least `min_time_left_ms` left before its deadline (and at the first, the batch's expected time, if more)."""
    outcome = BatchOutcome(started_ms=clock_ms())
    decoded: list[tuple[Work, np.ndarray]] = []
    for pending in batch.requests:
        work = pending.item
        try:
            decoded.append((work, decode_activation(work)))
        except CodecError as exc:
            outcome.replies.append((work, Reply(reject(work.infer.frame_id, RejectReason.BAD_PAYLOAD, str(exc)))))
    check_ms = clock_ms()
    # The first check before the tail: a request that cannot finish by its deadline (less time left than the batch is
    # expected to take, and never less than `min_time_left_ms`) is answered `expired`, not run. Without the
    # margin, under overload many requests reach this point just before their deadline, and a wait for the GIL or
    # the CPU between this reading and the tail's start would let some of them start after it.
    # The expectation is learnt from the batch's start, so it covers decoding, which is done by now: the margin is
    # on the safe side by that much. Taking it off (measured) let 20-33 requests per overloaded row start late on
    # a 2-core host.
    margin_ms = max(batch.expected_compute_ms, min_time_left_ms)
    live: list[tuple[Work, np.ndarray]] = []
    for work, activation in decoded:
        left_ms = work.infer.deadline_ms - check_ms
        if left_ms >= margin_ms:
            live.append((work, activation))
        elif left_ms <= 0:
            _expire(outcome, work, f"deadline passed {-left_ms:.1f} ms before its turn")
        else:
            _expire(outcome, work, f"{left_ms:.1f} ms left before its deadline, the tail is expected to take "
                                   f"{margin_ms:.1f} ms")
    if not live:
        return outcome
    bundle_hash, split = live[0][0].infer.bundle_hash, live[0][0].infer.split
    if isinstance(runner, DeadlineTailRunner):  # the runner checks the deadlines where its tail runs
        row_deadlines_ms = np.concatenate([np.full(a.shape[0], w.infer.deadline_ms) for w, a in live])
        output, started_ms, ran = runner.run_before(bundle_hash, split, _stack(live), row_deadlines_ms)
        live = _keep_rows_that_ran(live, ran, started_ms, outcome)
        if not live:
            outcome.tail_started_ms = started_ms
            return outcome
    else:
        stacked = _stack(live)
        # Once more, as late as can be: the thread may have been descheduled for longer than the margin since the
        # check (an overloaded host). A request left with less than `min_time_left_ms` is answered `expired`.
        recheck_ms = clock_ms()
        kept: list[tuple[Work, np.ndarray]] = []
        for work, activation in live:
            left_ms = work.infer.deadline_ms - recheck_ms
            if left_ms >= min_time_left_ms:
                kept.append((work, activation))
            else:
                _expire(outcome, work, f"{left_ms:.1f} ms left before its deadline when the tail could start")
        if not kept:
            return outcome
        if len(kept) < len(live):
            live, stacked = kept, _stack(kept)
        started_ms = clock_ms()
        output = runner.run(bundle_hash, split, stacked)
    outcome.tail_started_ms = started_ms
    # Counted against the start itself, not the filter's reading: if anything between the two (stacking, a queue at
    # a remote replica) lets a request's deadline pass, it shows here.
    outcome.expired_executed = sum(1 for w, _ in live if w.infer.deadline_ms <= started_ms)
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
            tail_started_ms=started_ms,
        )
        outcome.replies.append((work, Reply(result, (payload,))))
    return outcome


def _keep_rows_that_ran(live: list[tuple[Work, np.ndarray]], ran: np.ndarray, started_ms: float,
                        outcome: BatchOutcome) -> list[tuple[Work, np.ndarray]]:
    """The requests all of whose rows ran at a remote runner; the others are answered `expired` (a request's
    deadline passed while its batch queued there, so the runner skipped it)."""
    kept: list[tuple[Work, np.ndarray]] = []
    row = 0
    for work, activation in live:
        rows = activation.shape[0]
        if bool(np.all(ran[row : row + rows])):
            kept.append((work, activation))
        else:
            left_ms = work.infer.deadline_ms - started_ms
            if left_ms <= 0:
                why = f"deadline passed {-left_ms:.1f} ms before the replica took the batch up"
            else:
                why = (f"{left_ms:.1f} ms left before its deadline when the replica took the batch up, less than its "
                       "floor (min_time_left_ms)")
            _expire(outcome, work, why)
        row += rows
    return kept


def _stack(live: list[tuple[Work, np.ndarray]]) -> np.ndarray:
    return live[0][1] if len(live) == 1 else np.concatenate([a for _, a in live])


def _expire(outcome: BatchOutcome, work: Work, why: str) -> None:
    outcome.replies.append((work, Reply(reject(work.infer.frame_id, RejectReason.EXPIRED, why))))
