"""`bench policy-sweep` on synthetic options and traces (no clock, no model)."""
from __future__ import annotations

import argparse
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from splitrt.actions import Local, Offload
from splitrt.bench.policy_sweep import _seeds, evaluate_setting, static_candidates, summarize_seeds, summarize_settings
from splitrt.policies.policies import ActionOption
from splitrt.policies.trace import PACKET_BYTES, UplinkTrace

# At one thread of the reference machine; the sweep takes them at the device's speed (here 0.1 of it: `on_device`).
FULL = ActionOption(Local(), edge_ms=10.0, accuracy=0.88)
SKIP = ActionOption(Local("skip2"), edge_ms=8.0, accuracy=0.81)
SLOW_SKIP = ActionOption(Local("worse"), edge_ms=9.0, accuracy=0.80)  # dominated by SKIP
JPEG = ActionOption(Offload("jpeg-q90"), edge_ms=0.2, payload_bytes=10_000, cloud_ms=5.0, accuracy=0.87)
OPTIONS = [FULL, SKIP, SLOW_SKIP, JPEG]


def constant(name: str, rate_bps: float, seconds: int = 60) -> UplinkTrace:
    per_ms = rate_bps / 8 / PACKET_BYTES / 1000
    return UplinkTrace.from_opportunities(name, np.floor(np.arange(1, int(seconds * 1000 * per_ms)) / per_ms).astype(np.int64))


def test_sweep_finds_a_setting_where_the_best_static_differs_between_traces() -> None:
    rng = np.random.default_rng(0)
    correctness = {o.key: rng.random(400) < o.accuracy for o in OPTIONS}
    traces = [constant("fast", 20e6), constant("slow", 0.5e6)]
    # 0.1 CPU: full model 100 ms, skip2 80 ms; deadline 90 ms: offload wins on the fast link, skip2 on the slow one.
    on_device = [replace(o, edge_ms=o.edge_ms * 10) for o in OPTIONS]
    assert [o.key for o in static_candidates(on_device, 90.0, 20.0)] == ["local@skip2", "offload/jpeg-q90"]
    # The edge believes 5 Mbit/s at first: enough for a probe to try JPEG and find the fast link.
    rows = evaluate_setting(on_device, correctness, traces, "0.1", 90.0, 5.0, 20.0, duration_s=30, initial_bps=5e6)
    by_trace = {r["trace"]: r for r in rows}
    assert by_trace["fast"]["best_static"] == "offload/jpeg-q90"
    assert by_trace["slow"]["best_static"] == "local@skip2"
    [setting] = summarize_settings(rows)
    assert setting["distinct_best_static"] == 2
    assert all(r["oracle"] >= r["best_static_acc"] - 0.02 for r in rows)
    # On a constant link the deadline policy settles on the right action: it matches the best static (not above),
    # less, on the slow link, the frames it spends probing for the fast link it first believed in (1, 2, 4, 8 s
    # apart: 5 of 150 frames in 30 s).
    assert all(abs(float(r["deadline"]) - float(r["best_static_acc"])) < 0.04 for r in rows)


def test_each_seed_draws_other_device_times_and_the_gain_is_summarised_over_them() -> None:
    rng = np.random.default_rng(0)
    # skip2 takes 80 or 95 ms (half its measured runs each): at 90 ms, which frames are late depends on the seed.
    jittery = replace(SKIP, edge_ms=87.5, edge_samples_ms=(80.0, 95.0))
    on_device = [jittery, replace(FULL, edge_ms=100.0), replace(JPEG, edge_ms=2.0)]
    correctness = {o.key: rng.random(400) < o.accuracy for o in on_device}
    traces = [constant("fast", 20e6), constant("slow", 0.5e6)]
    rows = [row for seed in (0, 1, 2) for row in
            evaluate_setting(on_device, correctness, traces, "0.1", 90.0, 5.0, 20.0, duration_s=30, seed=seed)]
    assert [r["seed"] for r in rows] == [0, 0, 1, 1, 2, 2]
    slow = [r for r in rows if r["trace"] == "slow"]
    assert len({r["best_static_acc"] for r in slow}) > 1  # skip2's late frames moved with the seed
    # one summary per setting and seed; one per setting and trace over the seeds, of each seed's own gain
    assert [s["seed"] for s in summarize_settings(rows)] == [0, 1, 2]
    over = {s["trace"]: s for s in summarize_seeds(rows)}
    gains = [float(r["deadline"]) - float(r["best_static_acc"]) for r in slow]
    assert over["slow"]["seeds"] == 3
    assert over["slow"]["mean_deadline_gain"] == pytest.approx(sum(gains) / 3)
    assert (over["slow"]["min_deadline_gain"], over["slow"]["max_deadline_gain"]) == (min(gains), max(gains))
    assert over["slow"]["met_seeds"] == sum(bool(r["met"]) for r in slow)
    assert over["fast"]["mean_vs_oracle"] == pytest.approx(
        sum(float(r["vs_oracle"]) for r in rows if r["trace"] == "fast") / 3)


def test_the_probe_interval_moves_only_the_policies_that_probe() -> None:
    rng = np.random.default_rng(0)
    correctness = {o.key: rng.random(400) < o.accuracy for o in OPTIONS}
    on_device = [replace(o, edge_ms=o.edge_ms * 10) for o in OPTIONS]
    traces = [constant("slow", 0.5e6)]
    every_s, rarely = (evaluate_setting(on_device, correctness, traces, "0.1", 90.0, 5.0, 20.0, duration_s=30,
                                        initial_bps=5e6, hedges=False, probe_interval_ms=interval_ms)[0]
                       for interval_ms in (1000.0, 10_000.0))
    # On a link too slow for any offload each (unhedged) probe loses its frame: 5 frames probed 1, 2, 4, 8, 8 s
    # apart against 1 frame 10 s on.
    assert float(rarely["deadline"]) > float(every_s["deadline"])
    unmoved = ("best_static", "best_static_acc", "oracle", "oracle_past", "oracle_clairvoyant")
    assert {k: rarely[k] for k in unmoved} == {k: every_s[k] for k in unmoved}


@pytest.mark.parametrize("text", ["1,a", "0.5", ",", ""])
def test_seeds_on_the_command_line_are_whole_numbers(text: str) -> None:
    assert _seeds("0, 1,2") == [0, 1, 2]
    with pytest.raises(argparse.ArgumentTypeError):
        _seeds(text)


def test_a_scaled_trace_keeps_its_clumps_and_length_at_k_times_the_capacity(tmp_path: Path) -> None:
    path = tmp_path / "clumps.up"
    path.write_text("".join(f"{t}\n" for t in [5, 5, 5, 5, 40, 40, 41, 90, 90, 90, 90, 100]))
    original = UplinkTrace.load(path)
    for scale in (0.25, 0.5, 1.0, 2.0, 2.5, 4.0):
        scaled = original.scaled(scale)
        assert scaled.period_ms == original.period_ms == 100
        assert scaled.opportunities_ms.size == int(12 * scale)
        assert set(scaled.opportunities_ms) <= set(original.opportunities_ms)  # packets only where the trace has them
    assert list(original.scaled(2.0).opportunities_ms) == sorted(2 * list(original.opportunities_ms))
    assert list(original.scaled(0.25).opportunities_ms) == [5, 90, 100]  # the 4th, 8th and 12th: evenly thinned
    for bad in (0.0, -1.0, float("nan")):
        with pytest.raises(ValueError, match="positive"):
            original.scaled(bad)
    with pytest.raises(ValueError, match="no delivery opportunity"):
        original.scaled(0.01)
