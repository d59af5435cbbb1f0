"""Running a batch, with the clock passed in: nothing past its deadline reaches the tail."""
from __future__ import annotations

import json
import logging

import numpy as np
import pytest

from splitrt.bundle import Bundle
from splitrt.cloud.admission import Work
from splitrt.cloud.batcher import Batch, Pending
from splitrt.cloud.executor import run_batch
from splitrt.cloud.metrics import JsonFormatter
from splitrt.cloud.tails import TailExecutor
from splitrt.codecs import get_codec
from splitrt.protocol import Infer, Reject, RejectReason, Result, TensorSpec, decode, encode


class CountingTails(TailExecutor):
    def __init__(self, bundles: list[Bundle]) -> None:
        super().__init__(bundles)
        self.rows: list[int] = []
        self.dtypes: list[np.dtype] = []

    def run(self, bundle_hash: str, split: str, activation: np.ndarray) -> np.ndarray:
        self.rows.append(int(activation.shape[0]))
        self.dtypes.append(activation.dtype)
        return super().run(bundle_hash, split, activation)


def _work(bundle: Bundle, frame_id: int, deadline_ms: float, payload: bytes | None = None) -> Pending[Work]:
    activation = np.full((1, 16, 8, 8), frame_id, np.float32)
    infer = Infer(frame_id, bundle.content_hash, "res", "fp32", TensorSpec("float32", (1, 16, 8, 8)), deadline_ms)
    data = memoryview(payload if payload is not None else bytes(get_codec("fp32").encode(activation)))
    work = Work(client=b"c", infer=infer, payload=data, received_ms=0.0)
    return Pending(("k",), work, deadline_ms, 0.0)


def test_requests_past_their_deadline_at_the_tail_are_rejected_not_run(tiny_bundle: Bundle) -> None:
    ticks = iter([10.0, 50.0, 55.0, 60.0, 60.0])  # batch start, deadline filter, recheck, tail start, finish
    tails = CountingTails([tiny_bundle])
    batch = Batch(("k",), (_work(tiny_bundle, 1, 40.0), _work(tiny_bundle, 2, 100.0),
                           _work(tiny_bundle, 3, 100.0, payload=b"short")), 10.0, 1.0)
    outcome = run_batch(batch, tails, lambda: next(ticks), lambda: 7)
    replies = {work.infer.frame_id: reply.message for work, reply in outcome.replies}
    assert isinstance(replies[1], Reject) and replies[1].reason is RejectReason.EXPIRED
    assert isinstance(replies[3], Reject) and replies[3].reason is RejectReason.BAD_PAYLOAD
    result = replies[2]
    assert isinstance(result, Result) and result.queue_depth == 7
    assert result.queue_ms == 10.0 and result.compute_ms == 50.0
    assert tails.rows == [1] and outcome.executed == 1 and outcome.expired_executed == 0
    assert result.tail_started_ms == 60.0 and outcome.tail_started_ms == 60.0


def test_a_batch_gives_each_request_its_own_rows(tiny_bundle: Bundle) -> None:
    ticks = iter([0.0, 1.0, 1.5, 2.0, 3.0])  # batch start, deadline filter, recheck, tail start, finish
    tails = CountingTails([tiny_bundle])
    batch = Batch(("k",), tuple(_work(tiny_bundle, i, 100.0) for i in range(4)), 0.0, 1.0)
    outcome = run_batch(batch, tails, lambda: next(ticks), lambda: 0)
    assert tails.rows == [4]
    alone = TailExecutor([tiny_bundle])
    for work, reply in outcome.replies:
        expected = alone.run(tiny_bundle.content_hash, "res", np.full((1, 16, 8, 8), work.infer.frame_id, np.float32))
        got = np.frombuffer(reply.payloads[0], np.float32).reshape(expected.shape)
        np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-6)


class LateReplicaTails(CountingTails):
    """A runner that reports its own start (as Ray Serve's does), here after the requests' deadlines had passed,
    and runs every row anyway (a replica that does not check the deadlines it is given)."""

    def __init__(self, bundles: list[Bundle], started_ms: float) -> None:
        super().__init__(bundles)
        self.started_ms = started_ms

    def run_before(self, bundle_hash: str, split: str, activation: np.ndarray,
                   deadlines_ms: np.ndarray) -> tuple[np.ndarray, float, np.ndarray]:
        return self.run(bundle_hash, split, activation), self.started_ms, np.ones(len(activation), dtype=bool)


def test_a_tail_that_starts_past_the_deadline_is_counted_even_after_the_filter_passed_it(tiny_bundle: Bundle) -> None:
    # The filter reads 50 (both deadlines 100 are ahead), but the replica only took the batch up at 120.
    ticks = iter([10.0, 50.0, 130.0])  # batch start, deadline filter, finish (the start comes from the runner)
    tails = LateReplicaTails([tiny_bundle], started_ms=120.0)
    batch = Batch(("k",), (_work(tiny_bundle, 1, 100.0), _work(tiny_bundle, 2, 150.0)), 10.0, 1.0)
    outcome = run_batch(batch, tails, lambda: next(ticks), lambda: 0)
    assert outcome.executed == 2 and outcome.expired_executed == 1
    results = [reply.message for _, reply in outcome.replies]
    assert all(isinstance(r, Result) and r.tail_started_ms == 120.0 for r in results)


def test_a_request_that_cannot_finish_by_its_deadline_is_not_started(tiny_bundle: Bundle) -> None:
    # At the check (50) frame 1 has 22 ms left, more than the 20 ms floor but less than the 25 ms the batch is
    # expected to take.
    ticks = iter([49.0, 50.0, 50.2, 50.5, 75.0])  # batch start, deadline check (decoded), recheck, tail start, finish
    tails = CountingTails([tiny_bundle])
    batch = Batch(("k",), (_work(tiny_bundle, 1, 72.0), _work(tiny_bundle, 2, 150.0)), 10.0, 25.0)
    outcome = run_batch(batch, tails, lambda: next(ticks), lambda: 0)
    assert outcome.executed == 1 and outcome.expired_executed == 0
    replies = {work.infer.frame_id: reply.message for work, reply in outcome.replies}
    assert isinstance(replies[1], Reject) and replies[1].reason == RejectReason.EXPIRED
    assert "expected to take 25.0 ms" in replies[1].detail
    assert isinstance(replies[2], Result)


def test_a_deadline_that_passes_after_the_check_is_caught_before_the_tail_starts(tiny_bundle: Bundle) -> None:
    # The check at 50 leaves frame 1 thirty ms (more than the 20 ms floor), then the thread is descheduled until 70.
    ticks = iter([10.0, 50.0, 70.0, 70.1, 72.0])  # batch start, deadline check, recheck, tail start, finish
    tails = CountingTails([tiny_bundle])
    batch = Batch(("k",), (_work(tiny_bundle, 1, 80.0), _work(tiny_bundle, 2, 150.0)), 10.0, 1.0)
    outcome = run_batch(batch, tails, lambda: next(ticks), lambda: 0)
    assert tails.rows == [1] and outcome.executed == 1 and outcome.expired_executed == 0
    replies = {work.infer.frame_id: reply.message for work, reply in outcome.replies}
    assert isinstance(replies[1], Reject) and replies[1].reason == RejectReason.EXPIRED
    assert "when the tail could start" in replies[1].detail
    assert isinstance(replies[2], Result) and replies[2].tail_started_ms == 70.1


def test_a_request_with_less_than_the_floor_left_is_answered_expired_and_the_floor_is_a_setting(
        tiny_bundle: Bundle) -> None:
    # Frame 1 has 15 ms left at the check: its Result could not reach a device in time, so by default it is not run.
    def run(**floor: float) -> dict[int, object]:
        ticks = iter([10.0, 50.0, 50.1, 50.2, 52.0])  # batch start, deadline check, recheck, tail start, finish
        batch = Batch(("k",), (_work(tiny_bundle, 1, 65.0), _work(tiny_bundle, 2, 150.0)), 10.0, 1.0)
        outcome = run_batch(batch, CountingTails([tiny_bundle]), lambda: next(ticks), lambda: 0, **floor)
        return {work.infer.frame_id: reply.message for work, reply in outcome.replies}

    default = run()
    assert isinstance(default[1], Reject) and default[1].reason is RejectReason.EXPIRED
    assert "15.0 ms left" in default[1].detail and isinstance(default[2], Result)
    assert all(isinstance(m, Result) for m in run(min_time_left_ms=5.0).values())


class QueueingReplicaTails(CountingTails):
    """A runner whose batch queued elsewhere until `started_ms` (as at a Ray Serve replica): it runs only the rows
    still before their deadline then."""

    def __init__(self, bundles: list[Bundle], started_ms: float) -> None:
        super().__init__(bundles)
        self.started_ms = started_ms

    def run_before(self, bundle_hash: str, split: str, activation: np.ndarray,
                   deadlines_ms: np.ndarray) -> tuple[np.ndarray, float, np.ndarray]:
        ran = deadlines_ms > self.started_ms
        return self.run(bundle_hash, split, activation[ran]), self.started_ms, ran


def test_a_request_that_expires_while_queued_at_the_runner_is_rejected_not_executed(tiny_bundle: Bundle) -> None:
    ticks = iter([10.0, 50.0, 130.0])  # batch start, deadline filter (both ahead), finish
    tails = QueueingReplicaTails([tiny_bundle], started_ms=120.0)
    batch = Batch(("k",), (_work(tiny_bundle, 1, 100.0), _work(tiny_bundle, 2, 150.0)), 10.0, 1.0)
    outcome = run_batch(batch, tails, lambda: next(ticks), lambda: 0)
    assert outcome.executed == 1 and outcome.expired_executed == 0
    replies = {work.infer.frame_id: reply.message for work, reply in outcome.replies}
    assert isinstance(replies[1], Reject) and replies[1].reason == RejectReason.EXPIRED
    assert isinstance(replies[2], Result) and replies[2].tail_started_ms == 120.0
    alone = CountingTails([tiny_bundle])
    expected = alone.run(tiny_bundle.content_hash, "res", np.full((1, 16, 8, 8), 2, np.float32))
    got = [reply for work, reply in outcome.replies if work.infer.frame_id == 2][0]
    np.testing.assert_allclose(np.frombuffer(got.payloads[0], np.float32).reshape(expected.shape), expected,
                               rtol=1e-5, atol=1e-6)


def test_result_tail_start_is_optional_on_the_wire() -> None:
    spec = TensorSpec("float32", (1, 2))
    payload = np.zeros((1, 2), np.float32).tobytes()
    with_start = Result(5, (spec,), 1.0, 2.0, 3, tail_started_ms=1.7e12 + 0.25)
    assert decode(encode(with_start, [payload])).message == with_start
    frames = encode(Result(5, (spec,), 1.0, 2.0, 3), [payload])
    assert b"tail_started_ms" not in bytes(frames[0])  # what an older service sends
    assert decode(frames).message.tail_started_ms is None  # type: ignore[union-attr]


def test_json_logs_carry_the_extra_fields() -> None:
    record = logging.makeLogRecord({"name": "splitrt.cloud", "levelname": "WARNING", "msg": "refused %s",
                                    "args": ("peer",), "event": "auth_denied", "peer": "10.0.0.2"})
    entry = json.loads(JsonFormatter().format(record))
    assert entry["msg"] == "refused peer" and entry["event"] == "auth_denied" and entry["peer"] == "10.0.0.2"
    assert entry["level"] == "warning"


def test_fp16_requests_run_through_the_cast_and_match_their_float32_values_bit_for_bit(tiny_bundle: Bundle,
                                                                                        rng: np.random.Generator
                                                                                        ) -> None:
    fp16 = get_codec("fp16")
    spec = TensorSpec("float32", (1, 16, 8, 8))
    activations = [(rng.standard_normal((1, 16, 8, 8)) * 3).astype(np.float32) for _ in range(3)]
    batch = Batch(("k",), tuple(
        Pending(("k",), Work(client=b"c", infer=Infer(i, tiny_bundle.content_hash, "res", "fp16", spec, 100.0),
                             payload=memoryview(bytes(fp16.encode(a))), received_ms=0.0), 100.0, 0.0)
        for i, a in enumerate(activations)), 0.0, 1.0)
    tails = CountingTails([tiny_bundle])
    outcome = run_batch(batch, tails, lambda: 0.0, lambda: 0)
    assert tails.rows == [3] and outcome.executed == 3
    assert tails.dtypes == [np.float16], "the halves reach the runner as they came"
    as_float32 = TailExecutor([tiny_bundle]).run(
        tiny_bundle.content_hash, "res", np.concatenate([a.astype(np.float16).astype(np.float32) for a in activations]))
    for work, reply in outcome.replies:
        (spec_out,), (payload,) = reply.message.outputs, reply.payloads
        output = np.frombuffer(bytes(payload), dtype=spec_out.dtype).reshape(spec_out.shape)
        assert np.array_equal(output, as_float32[work.infer.frame_id : work.infer.frame_id + 1])


def test_the_committed_cast_model_is_what_its_generator_writes() -> None:
    pytest.importorskip("onnx")
    from importlib import resources

    from splitrt.cloud.tails import CAST_INPUT_NAME, CAST_MODEL
    from splitrt.partition.cast_model import CAST_INPUT_NAME as WRITTEN_INPUT_NAME
    from splitrt.partition.cast_model import cast_model_bytes

    committed = resources.files("splitrt").joinpath(f"data/{CAST_MODEL}").read_bytes()
    assert committed == cast_model_bytes(), "run: python -m splitrt.partition.cast_model splitrt/data/cast_f16_f32.onnx"
    assert CAST_INPUT_NAME == WRITTEN_INPUT_NAME


def test_a_ray_replica_skips_the_rows_left_with_less_than_its_floor(tiny_bundle: Bundle) -> None:
    """The replica's own check, without Ray Serve: a row with 10 ms left is skipped at a 20 ms floor, run at 5."""
    import asyncio
    import time

    from splitrt.cloud.ray_backend import TailReplica

    rows = np.zeros((2, 16, 8, 8), np.float32)
    for floor_ms, expected in ((20.0, [False, True]), (5.0, [True, True])):
        replica = TailReplica(str(tiny_bundle.root), 1, min_time_left_ms=floor_ms)
        now = time.time() * 1000.0
        request = ("res", rows, np.array([now + 10, now + 5000]))
        ((output, started_ms, ran),) = asyncio.run(replica.run_batch_impl([request]))
        assert list(ran) == expected and output.shape[0] == sum(expected) and started_ms >= now
