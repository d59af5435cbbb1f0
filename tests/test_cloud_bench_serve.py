"""What `bench serve`'s clients count, and how its summary picks the rows it compares: pure functions, no sockets."""
from __future__ import annotations

import math

import numpy as np
import pytest

from splitrt.bench.serve import (
    FIELDS,
    COLUMNS,
    ReplyTally,
    Sent,
    compare_outputs,
    executed_after_deadline,
    measured_load,
    median_rows,
    run_serve_bench,
    summarise,
)
from splitrt.protocol import Reject, RejectReason, Result

DEADLINE_MS = 1_700_000_000_100.0  # unix epoch ms, as Infer.deadline_ms


def result(frame_id: int, tail_started_ms: float | None) -> Result:
    return Result(frame_id, (), 0.0, 1.0, 0, tail_started_ms=tail_started_ms)


def sent(sent_s: float = 10.0, budget_s: float = 0.1) -> Sent:
    return Sent(sent_s=sent_s, deadline_s=sent_s + budget_s, deadline_ms=DEADLINE_MS)


def test_a_tail_started_at_or_after_the_deadline_counts_as_executed_expired() -> None:
    assert executed_after_deadline(result(1, DEADLINE_MS + 0.5), DEADLINE_MS) is True
    assert executed_after_deadline(result(1, DEADLINE_MS), DEADLINE_MS) is True  # as the service's own filter
    assert executed_after_deadline(result(1, DEADLINE_MS - 0.5), DEADLINE_MS) is False
    assert executed_after_deadline(result(1, None), DEADLINE_MS) is None


def test_a_result_carrying_a_start_after_its_deadline_is_counted_even_when_it_arrives_in_time() -> None:
    tally = ReplyTally()
    tally.add(result(1, DEADLINE_MS + 3.0), sent(), arrived_s=10.05)  # arrived in time, ran late
    tally.add(result(2, DEADLINE_MS - 20.0), sent(), arrived_s=10.02)
    tally.add(result(3, DEADLINE_MS - 1.0), sent(), arrived_s=10.30)  # ran in time, arrived late
    tally.add(result(4, None), sent(), arrived_s=10.01)  # an older service: cannot be checked
    tally.add(Reject(5, RejectReason.OVERLOADED, "full"), sent(), arrived_s=10.001)
    tally.reject("backpressure")
    assert tally.expired_executed == 1 and tally.unverified == 1
    assert (tally.on_time, tally.late) == (3, 1)
    assert np.allclose(tally.result_latencies_ms, [50.0, 20.0, 300.0, 10.0])
    assert np.allclose(tally.reject_latencies_ms, [1.0])
    assert tally.rejected == 2 and tally.reasons == {"overloaded": 1, "backpressure": 1}


def test_latency_percentiles_take_late_results_in_and_throughput_counts_them() -> None:
    on_time = ReplyTally(result_latencies_ms=[10.0] * 95, on_time=95)
    late = ReplyTally(result_latencies_ms=[400.0] * 5, late=5, reject_latencies_ms=[0.5] * 100, rejected=100,
                      reasons={"overloaded": 100})
    reports = [{"attempted": 100, "tally": vars(on_time), "timeouts": 0},
               {"attempted": 105, "tally": vars(late), "timeouts": 2}]
    measured = measured_load(reports, duration_s=2.0)
    assert measured["results"] == 100 and measured["throughput_rps"] == 50.0 and measured["goodput_rps"] == 47.5
    assert measured["latency_p99_ms"] == 400.0, "late Results are in the percentile, not capped at the deadline"
    assert measured["latency_p50_ms"] == 10.0
    assert float(measured["reply_p99_ms"]) <= 400.0  # type: ignore[arg-type]
    assert measured["late"] == 5 and measured["timeouts"] == 2 and measured["sent_rps"] == 102.5
    assert set(measured) <= set(FIELDS) and set(COLUMNS) <= set(FIELDS)


def row(batching: bool, offered: float, rps: float, p99: float, expired: int = 0) -> dict[str, object]:
    return {"backend": "local", "batching": batching, "offered_rps": offered, "throughput_rps": rps,
            "goodput_rps": rps, "latency_p99_ms": p99, "mean_batch": 4.0 if batching else 1.0,
            "expired_executed": expired, "expired_executed_service": 0, "unverified_results": 0}


def test_summary_compares_batch1_saturation_with_the_best_batching_row_at_no_higher_p99_and_names_them() -> None:
    rows = [row(False, 100, 100, 20.0), row(False, 200, 150, 180.0), row(False, 400, 120, 900.0),
            row(True, 100, 100, 10.0), row(True, 200, 200, 60.0), row(True, 400, 320, 250.0),
            row(True, 800, 240, math.nan)]
    summary = summarise(rows)["local"]
    assert summary["batch1_row"] == 1 and summary["batch1_saturation_p99_ms"] == 180.0
    assert summary["batched_row"] == 4, "the 320 req/s row has a p99 above batch-1's (late Results count)"
    assert summary["ratio"] == 200 / 150 and summary["done_when_met"] is False  # 1.33 < 1.5
    rows[5]["latency_p99_ms"] = 170.0
    summary = summarise(rows)["local"]
    assert summary["batched_row"] == 5 and summary["done_when_met"] is True
    rows[0]["expired_executed"] = 1
    assert summarise(rows)["local"]["done_when_met"] is False


def test_passes_merge_into_one_row_per_load_step_with_medians_of_rates_and_sums_of_counts() -> None:
    def step(batching: bool, offered: float, rps: float, p99: float, expired: int, index: int) -> dict[str, object]:
        return {**row(batching, offered, rps, p99, expired), "sent_rps": offered, "latency_p50_ms": p99 / 4,
                "reply_p99_ms": p99, "results": int(rps * 5), "late": 1, "rejected": 2, "timeouts": 0,
                "reject_reasons": {"overloaded": 2}, "ray_replicas": None, "pass": index}

    pass_rows = [step(False, 100, 100, 20.0, 0, 0), step(False, 200, 150, 180.0, 0, 0),
                 step(True, 100, 100, 10.0, 0, 1), step(True, 200, 200, 60.0, 0, 1),
                 step(True, 100, 90, 12.0, 0, 2), step(True, 200, 100, 900.0, 1, 2),
                 step(False, 100, 98, 25.0, 0, 2), step(False, 200, 60, math.nan, 0, 2),
                 step(True, 100, 95, 11.0, 0, 0), step(True, 200, 190, 70.0, 0, 0)]
    rows = median_rows(pass_rows)
    assert [(r["batching"], r["offered_rps"]) for r in rows] == [(False, 100), (False, 200), (True, 100), (True, 200)]
    unbatched_200, batched_200 = rows[1], rows[3]
    assert unbatched_200["throughput_rps"] == 105.0 and unbatched_200["latency_p99_ms"] == 180.0, "NaN left out"
    assert batched_200["throughput_rps"] == 190.0 and batched_200["latency_p99_ms"] == 70.0, "one bad pass is outvoted"
    assert batched_200["expired_executed"] == 1, "a late start in any pass stays in the row"
    assert batched_200["rejected"] == 6 and batched_200["reject_reasons"] == {"overloaded": 6}
    assert all(r["passes"] == (3 if r["batching"] else 2) for r in rows) and all("pass" not in r for r in rows)
    assert summarise(rows)["local"]["done_when_met"] is False


def test_an_unknown_mode_or_no_pass_is_refused_before_anything_starts(tmp_path) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(ValueError, match="--modes: batching; choose from unbatched, batched"):
        run_serve_bench(str(tmp_path), 1, 1.0, str(tmp_path / "out.json"), modes=["batching"])
    with pytest.raises(ValueError, match="must not repeat a value"):
        run_serve_bench(str(tmp_path), 1, 1.0, str(tmp_path / "out.json"), rates=(100, 200, 100))
    with pytest.raises(ValueError, match="--passes must be at least 1"):
        run_serve_bench(str(tmp_path), 1, 1.0, str(tmp_path / "out.json"), passes=0)


def test_outputs_are_identical_only_if_every_request_got_equal_results_from_both() -> None:
    a, b = np.arange(6, dtype=np.float32).reshape(1, 6), np.ones((1, 6), np.float32)
    same = compare_outputs({0: a, 1: b}, {0: a.copy(), 1: b.copy()}, requests=2)
    assert same["outputs_identical"] is True and same["max_abs_diff"] == 0.0 and same["compared"] == 2
    off = compare_outputs({0: a, 1: b}, {0: a + 1e-6, 1: b}, requests=2)
    assert off["outputs_identical"] is False and 0 < float(off["max_abs_diff"]) < 1e-5  # type: ignore[arg-type]
    missing = compare_outputs({0: a, 1: b}, {0: a, 1: "overloaded"}, requests=2)
    assert missing["outputs_identical"] is False and missing["not_compared"] == {
        "1": {"local": "result", "ray": "reject overloaded"}}
