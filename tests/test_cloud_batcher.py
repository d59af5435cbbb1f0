"""The batcher as a pure state machine: time is a number the test passes in, nothing sleeps."""
from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from splitrt.cloud.batcher import Batcher, BatchPolicy, CostModel

KEY = ("bundle", "b14", "fp16")


def batcher(max_batch: int = 8, preferred: tuple[int, ...] = (), delay_ms: float = 5.0,
            fixed_ms: float = 1.0, item_ms: float = 1.0) -> Batcher[str]:
    policy = BatchPolicy(max_batch_size=max_batch, preferred_batch_sizes=preferred, max_queue_delay_ms=delay_ms,
                         safety_margin_ms=0.0)
    return Batcher(policy, CostModel(default_fixed_ms=fixed_ms, default_item_ms=item_ms))


def test_a_single_request_waits_at_most_the_max_queue_delay() -> None:
    b = batcher(delay_ms=5.0)
    b.add(KEY, "a", deadline_ms=1000.0, now_ms=0.0)
    first = b.poll(now_ms=0.0, free_slots=1)
    assert first.batches == () and first.wake_at_ms == pytest.approx(5.0)
    later = b.poll(now_ms=5.0, free_slots=1)
    assert [p.item for p in later.batches[0].requests] == ["a"]
    assert len(b) == 0


def test_a_full_batch_goes_at_once() -> None:
    b = batcher(max_batch=4, delay_ms=100.0)
    for i in range(5):
        b.add(KEY, f"r{i}", deadline_ms=1000.0 + i, now_ms=0.0)
    decision = b.poll(now_ms=0.0, free_slots=1)
    assert [p.item for p in decision.batches[0].requests] == ["r0", "r1", "r2", "r3"]
    assert len(b) == 1


def test_the_earliest_deadline_bounds_the_wait() -> None:
    # Full batch of 8 is expected to take 1 + 8 = 9 ms; the deadline at 20 ms means dispatch by 11 ms.
    b = batcher(max_batch=8, delay_ms=100.0)
    b.add(KEY, "late", deadline_ms=500.0, now_ms=0.0)
    b.add(KEY, "urgent", deadline_ms=20.0, now_ms=0.0)
    assert b.poll(now_ms=0.0, free_slots=1).wake_at_ms == pytest.approx(11.0)
    assert b.poll(now_ms=10.9, free_slots=1).batches == ()
    batch = b.poll(now_ms=11.0, free_slots=1).batches[0]
    assert [p.item for p in batch.requests] == ["urgent", "late"]  # earliest deadline first


def test_preferred_sizes_shape_the_batch() -> None:
    b = batcher(max_batch=16, preferred=(4, 8), delay_ms=5.0)
    for i in range(6):
        b.add(KEY, f"r{i}", deadline_ms=1000.0, now_ms=0.0)
    assert b.poll(now_ms=1.0, free_slots=1).batches == ()  # 6 < 8: wait for more
    batch = b.poll(now_ms=5.0, free_slots=1).batches[0]
    assert len(batch) == 4  # the largest preferred size that 6 requests fill
    for i in range(8):
        b.add(KEY, f"s{i}", deadline_ms=1000.0, now_ms=6.0)
    assert len(b.poll(now_ms=6.0, free_slots=1).batches[0]) == 8  # the largest preferred size goes at once


def test_a_batch_shrinks_to_finish_before_its_earliest_deadline() -> None:
    b = batcher(max_batch=8, delay_ms=0.0, fixed_ms=0.0, item_ms=2.0)
    for i in range(8):
        b.add(KEY, f"r{i}", deadline_ms=7.0 + i, now_ms=0.0)
    batch = b.poll(now_ms=0.0, free_slots=1).batches[0]
    assert len(batch) == 3 and batch.expected_compute_ms <= 7.0  # 3 items * 2 ms fit before 7 ms


def test_requests_that_cannot_finish_in_time_expire_and_are_never_batched() -> None:
    b = batcher(max_batch=8, delay_ms=50.0, fixed_ms=0.0, item_ms=2.0)
    b.add(KEY, "past", deadline_ms=5.0, now_ms=0.0)
    b.add(KEY, "tight", deadline_ms=11.0, now_ms=0.0)
    b.add(KEY, "fine", deadline_ms=100.0, now_ms=0.0)
    decision = b.poll(now_ms=10.0, free_slots=0)
    assert [p.item for p in decision.expired] == ["past", "tight"]  # 10 + 2 > 11: cannot finish
    assert len(b) == 1


def test_no_free_slot_means_no_batch_but_expiry_still_runs() -> None:
    b = batcher(delay_ms=0.0)
    b.add(KEY, "a", deadline_ms=100.0, now_ms=0.0)
    decision = b.poll(now_ms=1.0, free_slots=0)
    assert decision.batches == () and decision.wake_at_ms == pytest.approx(98.0)  # 100 - expected 2 ms alone


def test_keys_are_served_earliest_deadline_first() -> None:
    b = batcher(max_batch=1, delay_ms=0.0)
    b.add("x", "x1", deadline_ms=300.0, now_ms=0.0)
    b.add("y", "y1", deadline_ms=100.0, now_ms=0.0)
    b.add("z", "z1", deadline_ms=200.0, now_ms=0.0)
    decision = b.poll(now_ms=0.0, free_slots=2)
    assert [batch.key for batch in decision.batches] == ["y", "z"]


def test_flush_dispatches_without_waiting() -> None:
    b = batcher(delay_ms=1000.0)
    b.add(KEY, "a", deadline_ms=5000.0, now_ms=0.0)
    assert len(b.poll(now_ms=0.0, free_slots=1, flush=True).batches) == 1


def test_unbatched_policy_runs_each_request_alone() -> None:
    b: Batcher[int] = Batcher(BatchPolicy.unbatched())
    for i in range(3):
        b.add(KEY, i, deadline_ms=1000.0, now_ms=0.0)
    decision = b.poll(now_ms=0.0, free_slots=3)
    assert [len(batch) for batch in decision.batches] == [1]  # one key, one batch per poll
    assert len(b) == 2


def test_cost_model_learns_and_extrapolates_conservatively() -> None:
    cost = CostModel(default_fixed_ms=1.0, default_item_ms=1.0, alpha=0.5)
    assert cost.expected_ms(KEY, 4) == 5.0
    cost.observe(KEY, 2, 4.0)
    assert cost.expected_ms(KEY, 2) == 4.0
    assert cost.expected_ms(KEY, 4) == 8.0  # linear from the nearest smaller size
    assert cost.expected_ms(KEY, 1) == 4.0  # a smaller batch is bounded by the larger one
    cost.observe(KEY, 2, 2.0)
    assert cost.expected_ms(KEY, 2) == 3.0


def test_policy_validation_names_the_problem() -> None:
    with pytest.raises(ValueError, match="preferred_batch_sizes"):
        BatchPolicy(max_batch_size=4, preferred_batch_sizes=(8,))
    with pytest.raises(ValueError, match="max_batch_size"):
        BatchPolicy(max_batch_size=0)


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(st.floats(0, 50), st.floats(0, 100), st.integers(0, 2)), min_size=1, max_size=40),
       st.integers(1, 8), st.floats(0, 20))
def test_every_request_ends_once_and_nothing_runs_after_its_deadline(
    arrivals: list[tuple[float, float, int]], max_batch: int, delay_ms: float
) -> None:
    b = batcher(max_batch=max_batch, delay_ms=delay_ms)
    events = sorted((at, budget, key, i) for i, (at, budget, key) in enumerate(arrivals))
    seen: list[int] = []
    now = 0.0
    for at, budget, key, i in events:
        now = at
        b.add(key, i, deadline_ms=at + budget, now_ms=at)
        decision = b.poll(now, free_slots=2)
        for batch in decision.batches:
            assert all(now + batch.expected_compute_ms <= p.deadline_ms or len(batch) == 1 for p in batch.requests)
            assert all(p.deadline_ms > now for p in batch.requests)
            assert len(batch) <= max_batch
            seen += [p.item for p in batch.requests]
        seen += [p.item for p in decision.expired]
    while len(b):
        now += 1.0
        decision = b.poll(now, free_slots=2)
        for batch in decision.batches:
            assert all(p.deadline_ms > now for p in batch.requests)
            seen += [p.item for p in batch.requests]
        seen += [p.item for p in decision.expired]
    assert sorted(seen) == list(range(len(arrivals)))


def test_expected_finish_counts_the_requests_ahead() -> None:
    b = batcher(max_batch=4, fixed_ms=0.0, item_ms=1.0)
    assert b.expected_finish_ms(KEY, now_ms=100.0, ahead=0, workers=2) == 101.0
    assert b.expected_finish_ms(KEY, now_ms=100.0, ahead=8, workers=2) == 105.0  # 8 * 1 ms / 2 workers + 1 ms


def test_an_inflated_estimate_recovers_instead_of_refusing_forever() -> None:
    b = batcher(max_batch=4, delay_ms=0.0)
    b.cost.observe(KEY, 1, 500.0)  # one slow spell: now nothing with a 100 ms budget looks feasible
    refused = 0
    for i in range(100):
        b.add(KEY, i, deadline_ms=i * 10.0 + 100.0, now_ms=i * 10.0)
        decision = b.poll(now_ms=i * 10.0, free_slots=1)
        refused += len(decision.expired)
        if decision.batches:
            break
    assert decision.batches, "requests must get through again once the estimate has relaxed"
    assert 0 < refused < 100


def test_one_outlier_moves_the_estimate_only_so_far() -> None:
    cost = CostModel(alpha=0.5)
    cost.observe(KEY, 1, 1.0)
    cost.observe(KEY, 1, 1000.0)
    assert cost.expected_ms(KEY, 1) == pytest.approx(2.5)  # clipped to 4 ms, then averaged
