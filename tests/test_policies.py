"""Policies, estimators and the trace simulator, driven by synthetic traces and no real clock."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from splitrt.actions import Local, Offload, Split
from splitrt.policies.estimators import LinkEstimates, ThroughputEstimator
from splitrt.policies.policies import (
    ActionOption,
    DeadlinePolicy,
    LatencyPolicy,
    LinkView,
    OraclePolicy,
    StaticPolicy,
    hedged,
    make_policy,
    on_time_probability,
    predict_ms,
)
from splitrt.policies.simulate import SimConfig, simulate, summarize
from splitrt.policies.trace import PACKET_BYTES, PAYLOAD_BYTES, UplinkTrace

from tests.conftest import SHARED_DIR

SHARED_TRACES = SHARED_DIR / "traces"

LOCAL = ActionOption(Local(), edge_ms=60.0, accuracy=0.70)
SPLIT = ActionOption(Split("b14", "fp16"), edge_ms=20.0, payload_bytes=15_000, cloud_ms=5.0, accuracy=0.88)
OFFLOAD = ActionOption(Offload("jpeg-q90"), edge_ms=2.0, payload_bytes=18_000, cloud_ms=10.0, accuracy=0.87)
OPTIONS = [LOCAL, SPLIT, OFFLOAD]


def on_off_trace(rate_bps: float, on_ms: int, off_ms: int) -> UplinkTrace:
    """`rate_bps` for `on_ms`, nothing for `off_ms`, then `rate_bps` again for `on_ms` (one period)."""
    per_ms = rate_bps / 8 / PACKET_BYTES / 1000
    first = np.floor(np.arange(1, int(on_ms * per_ms) + 1) / per_ms)
    second = first + on_ms + off_ms
    return UplinkTrace.from_opportunities("on-off", np.concatenate([first, second]).astype(np.int64))


def all_correct(images: int = 10) -> dict[str, np.ndarray]:
    return {o.key: np.ones(images, dtype=bool) for o in OPTIONS}


# -- trace -----------------------------------------------------------------------------------------------------
def test_constant_trace_transfers_at_its_rate() -> None:
    trace = UplinkTrace.constant("8mbps", 8e6)
    assert trace.mean_bps == pytest.approx(8e6, rel=0.02)
    end = trace.transfer_end_ms(100.0, 96_533)  # 100 kB of packets (1448 B of payload each) at 8 Mbit/s: 100 ms
    assert end - 100.0 == pytest.approx(100.0, abs=2.0)
    assert trace.transfer_end_ms(5.0, 0) == 5.0


def test_trace_loops_and_waits_through_an_outage() -> None:
    trace = on_off_trace(1.2e6, on_ms=1000, off_ms=2000)  # one packet per 10 ms while on
    assert trace.period_ms == 4000
    assert trace.transfer_end_ms(995.0, PAYLOAD_BYTES) == pytest.approx(1000.0)
    assert trace.transfer_end_ms(1000.5, PAYLOAD_BYTES) == pytest.approx(3010.0)  # waits out the outage
    assert trace.transfer_end_ms(4000.0 + 1000.5, PAYLOAD_BYTES) == pytest.approx(7010.0)  # one loop later
    assert trace.throughput_bps(1000, 3000) == 0.0


@pytest.mark.skipif(not SHARED_TRACES.is_dir(), reason="../shared/traces not present")
def test_shared_traces_load_with_their_published_mean_rate() -> None:
    trace = UplinkTrace.load(SHARED_TRACES / "ATT-LTE-driving-2016.up")
    assert trace.duration_s == pytest.approx(120, abs=2)
    assert trace.mean_bps == pytest.approx(1.91e6, rel=0.03)


def test_a_malformed_trace_file_is_refused(tmp_path: Path) -> None:
    (tmp_path / "bad.up").write_text("12\nbanana\n")
    with pytest.raises(ValueError, match="not a mahimahi trace"):
        UplinkTrace.load(tmp_path / "bad.up")


# -- estimators ------------------------------------------------------------------------------------------------
def test_throughput_estimator_believes_a_collapse_at_once_and_recovers_gradually() -> None:
    estimator = ThroughputEstimator(initial_bps=1e6)
    for t in range(10):
        estimator.observe(t * 100.0, 125_000, 100.0)  # 10 Mbit/s
    assert estimator.estimate_bps == pytest.approx(10e6, rel=0.1)
    estimator.observe(1000.0, 12_500, 1000.0)  # 100 kbit/s
    assert estimator.estimate_bps == pytest.approx(1e5, rel=0.01)
    estimator.observe(1100.0, 125_000, 100.0)
    assert 1e5 < estimator.estimate_bps < 10e6
    assert estimator.cautious_bps() < estimator.estimate_bps


def test_a_timeout_bounds_the_rate_from_above() -> None:
    estimator = ThroughputEstimator(initial_bps=10e6)
    estimator.observe_timeout(500.0, 20_000, 200.0)  # 160 kbit did not get through in 200 ms
    assert estimator.estimate_bps == pytest.approx(800e3)


def test_a_stale_estimate_relaxes_towards_what_the_link_delivered_before_it_went_quiet() -> None:
    estimator = ThroughputEstimator(initial_bps=1e6)
    assert estimator.relaxed(5_000.0) == (estimator.estimate_bps, estimator.log_sd)  # no past yet: nothing to relax to
    for t in range(10):
        estimator.observe(t * 100.0, 100_000, 100.0)  # 8 Mbit/s
    estimator.observe_timeout(1_000.0, 12_500, 200.0)  # then one transfer stuck: at most 500 kbit/s
    assert estimator.estimate_bps == pytest.approx(500e3)
    assert estimator.relaxed(1_000.0)[0] == pytest.approx(500e3)  # fresh: the estimate as it is
    rates = [estimator.relaxed(1_000.0 + ms)[0] for ms in (250, 1_000, 3_000, 60_000, 600_000)]
    assert rates == sorted(rates) and rates[1] > 2 * rates[0]
    past_mean = np.exp((10 * np.log(8e6) + np.log(500e3)) / 11)  # of the log rates, the bound counted as one
    assert rates[-1] == pytest.approx(past_mean, rel=1e-3) and rates[-2] == pytest.approx(past_mean, rel=1e-3)
    assert estimator.estimate_bps == pytest.approx(500e3)  # relaxing is a view: the estimate itself stays
    estimator.observe(2_000.0, 100_000, 100.0)
    assert estimator.relaxed(2_000.0)[0] == estimator.estimate_bps  # a new sample is believed as it is


def test_timeouts_in_a_row_slow_the_relaxation_down() -> None:
    """A dead link: each timeout in a row doubles the time the estimate stays pinned, as the probes back off."""
    once, thrice = ThroughputEstimator(initial_bps=1e6), ThroughputEstimator(initial_bps=1e6)
    for estimator in (once, thrice):
        for t in range(10):
            estimator.observe(t * 100.0, 100_000, 100.0)
    once.observe_timeout(1_400.0, 12_500, 200.0)
    for t in (1_000.0, 1_200.0, 1_400.0):
        thrice.observe_timeout(t, 12_500, 200.0)
    assert once.estimate_bps == thrice.estimate_bps
    assert thrice.relaxed(2_400.0)[0] < 0.6 * once.relaxed(2_400.0)[0]


def test_only_a_hedged_action_is_judged_by_the_relaxed_estimate() -> None:
    """A bet on a stale estimate can lose a whole frame unhedged, only the difference to its hedge's answer hedged."""
    hedged_split = hedged(SPLIT, LOCAL)
    pinned = LinkView(0.25e6, 0.15e6, 40.0, 40.0, bandwidth_log_sd=0.5)
    relaxed = LinkView(0.25e6, 0.15e6, 40.0, 40.0, bandwidth_log_sd=0.5, relaxed_bandwidth_bps=8e6, relaxed_log_sd=0.5)
    assert on_time_probability(SPLIT, 200.0, relaxed) == on_time_probability(SPLIT, 200.0, pinned) < 0.05
    assert on_time_probability(hedged_split, 200.0, pinned) < 0.05 < 0.95 < on_time_probability(hedged_split, 200.0,
                                                                                               relaxed)


def test_link_estimates_take_the_rtt_as_the_least_recent_network_time_and_the_rest_as_transfer() -> None:
    link = LinkEstimates(initial_bps=1e6, initial_rtt_ms=50.0)
    assert link.view(True, 0.0).rtt_ms == 50.0  # nothing seen yet: what it was told
    for now_ms, network_ms in [(100.0, 44.0), (300.0, 40.0), (500.0, 48.0)]:
        link.observe_reply(now_ms, 1_000, network_ms, queue_ms=2.0)
    seen = link.view(True, 600.0)
    assert seen.rtt_ms == 40.0 and seen.cautious_rtt_ms == pytest.approx(50.0)
    assert link.throughput.samples == 3 and link.throughput.last_sample_ms == 500.0
    assert seen.queue_ms == pytest.approx(2.0)
    link.observe_unreachable(700.0)
    assert not link.view(True, 800.0).cloud_up and link.view(True, 1_700.0).cloud_up
    before = link.throughput.estimate_bps
    link.observe_timeout(1_800.0, 10_000, 240.0)  # 80 kbit not through in 200 ms beyond the RTT: <= 400 kbit/s
    assert link.throughput.estimate_bps == pytest.approx(400e3) and 400e3 < before
    assert link.view(True, 1_800.0).cloud_up  # a timeout is an answer from a reachable link


def test_the_rtt_is_never_taken_from_a_frames_upload_alone() -> None:
    """Every frame uploads something: its network time is an upper bound on the RTT. Were the least of them the
    RTT, the first frame's upload would look instantaneous (a rate of gigabits); the configured RTT, or
    heartbeats (round trips that upload nothing), bound it instead."""
    link = LinkEstimates(initial_bps=1e6, initial_rtt_ms=20.0)
    link.observe_reply(100.0, 7_000, 76.0, queue_ms=0.0)  # 56 ms of upload after a 20 ms round trip
    assert link.rtt_ms == 20.0
    assert link.throughput.estimate_bps == pytest.approx(7_000 * 8 / 0.056, rel=0.01)
    link.observe_rtt(30.0)  # a heartbeat measured 30 ms: measured round trips replace the configured 20 ms
    assert link.rtt_ms == 30.0


# -- policies --------------------------------------------------------------------------------------------------
def view(bandwidth_bps: float, rtt_ms: float = 40.0, cloud_up: bool = True) -> LinkView:
    return LinkView(bandwidth_bps, bandwidth_bps, rtt_ms, rtt_ms, 0.0, cloud_up)


def test_deadline_policy_takes_the_most_accurate_action_that_fits() -> None:
    policy = DeadlinePolicy()
    assert policy.decide(200.0, OPTIONS, view(10e6)).option == SPLIT  # 20 + 12 + 40 + 5 = 77 ms
    assert policy.decide(200.0, OPTIONS, view(0.5e6)).option == LOCAL  # split: 20 + 240 + 45 ms
    assert policy.decide(50.0, OPTIONS, view(10e6)).option == LOCAL  # nothing fits: fastest local
    assert policy.decide(200.0, OPTIONS, view(10e6, cloud_up=False)).option == LOCAL


def test_on_time_probability_is_a_step_without_spread_and_a_smooth_risk_with_it() -> None:
    assert on_time_probability(LOCAL, 60.0, view(1e6)) == 1.0
    assert on_time_probability(LOCAL, 59.0, view(1e6)) == 0.0
    # SPLIT at 10 Mbit/s: 20 + 12 + 40 + 5 = 77 ms; certain link: in time or not.
    assert on_time_probability(SPLIT, 77.5, view(10e6)) == 1.0
    assert on_time_probability(SPLIT, 76.5, view(10e6)) == 0.0
    spread = LinkView(10e6, 10e6, 40.0, 40.0, 0.0, True, bandwidth_log_sd=0.5)
    assert on_time_probability(SPLIT, 77.0, spread) == pytest.approx(0.5)  # needs exactly the estimate
    chances = [on_time_probability(SPLIT, budget, spread) for budget in (70.0, 77.0, 90.0, 200.0)]
    assert chances == sorted(chances) and chances[0] < 0.5 < chances[2] < chances[3] <= 1.0
    assert on_time_probability(SPLIT, 64.0, spread) == 0.0  # no time left for the transfer at all


def test_expected_rule_weighs_the_accuracy_gained_against_the_risk_of_a_timeout() -> None:
    lossy_local = ActionOption(Local("skip2"), edge_ms=60.0, accuracy=0.81)
    poor_local = ActionOption(Local("skip9"), edge_ms=30.0, accuracy=0.49)
    remote = ActionOption(Offload("jpeg-q95"), edge_ms=2.0, payload_bytes=12_500, cloud_ms=10.0, accuracy=0.88)
    # The remote action needs 10 Mbit/s to end within 62 ms (100 kbit in 62 - 2 - 40 - 10 ms); the estimate says
    # 12 Mbit/s, spread 0.3 (log): on time with p = 0.73. Against a 0.81 local action (a 9% gain) that is not
    # worth it (0.88 * 0.73 = 0.64); against a 0.49 one it is.
    link = LinkView(12e6, 12e6 / 1.15, 40.0, 40.0, 0.0, True, bandwidth_log_sd=0.3)
    chance = on_time_probability(remote, 62.0, link)
    assert 0.7 < chance < 0.76
    assert DeadlinePolicy().decide(62.0, [lossy_local, remote], link).option == lossy_local
    assert DeadlinePolicy().decide(62.0, [poor_local, remote], link).option == remote
    # The cautious rule bets whenever the cautious rate (here 10.4 Mbit/s >= 10) suffices, whatever the gain.
    assert DeadlinePolicy(rule="cautious").decide(62.0, [lossy_local, remote], link).option == remote
    assert DeadlinePolicy(rule="cautious").decide(62.0, [poor_local, remote], link).option == remote
    sure = LinkView(40e6, 40e6 / 1.35, 40.0, 40.0, 0.0, True, bandwidth_log_sd=0.3)
    assert DeadlinePolicy().decide(62.0, [lossy_local, remote], sure).option == remote  # p > 0.99
    with pytest.raises(ValueError, match="unknown deadline rule"):
        DeadlinePolicy(rule="greedy").decide(62.0, [lossy_local, remote], sure)


def test_latency_policy_minimises_latency_among_full_accuracy_options_whatever_the_deadline() -> None:
    fast_offload = ActionOption(Offload("jpeg-q50"), edge_ms=1.0, payload_bytes=2_000, cloud_ms=2.0, accuracy=0.5)
    exact_split = ActionOption(Split("pool", "fp16"), edge_ms=55.0, payload_bytes=2_000, cloud_ms=0.1, accuracy=0.88)
    options = [*OPTIONS, fast_offload, exact_split]
    assert LatencyPolicy().decide(200.0, options, view(50e6)).option == SPLIT  # 20 + 2.4 + 40 + 5 ms
    # LOCAL here is a lossy variant (0.70): never considered, however fast; nor is the deadline.
    assert LatencyPolicy().decide(200.0, options, view(0.2e6)).option == exact_split  # 55 + 80 + 40 ms
    assert LatencyPolicy().decide(10.0, options, view(0.2e6)).option == exact_split
    assert DeadlinePolicy().decide(200.0, options, view(50e6)).option == SPLIT


def test_static_and_named_policies() -> None:
    assert StaticPolicy("local").decide(1.0, OPTIONS, view(1e6)).option == LOCAL
    with pytest.raises(KeyError):
        StaticPolicy("split@b99/fp16").decide(1.0, OPTIONS, view(1e6))
    assert make_policy("static:offload/jpeg-q90").name == "static:offload/jpeg-q90"
    with pytest.raises(ValueError, match="unknown policy"):
        make_policy("greedy")


options_strategy = st.lists(
    st.builds(
        ActionOption,
        action=st.sampled_from([Local(), Local("exit1"), Split("a", "fp16"), Split("b", "fp32"), Offload()]),
        edge_ms=st.floats(0.1, 500),
        payload_bytes=st.integers(0, 500_000),
        cloud_ms=st.floats(0, 100),
        accuracy=st.floats(0, 1),
    ),
    min_size=1,
    max_size=6,
).filter(lambda options: any(not o.remote for o in options))


@settings(max_examples=300, deadline=None)
@given(options_strategy, st.floats(1e3, 1e8), st.floats(0, 200), st.floats(1, 1000), st.booleans())
def test_deadline_policy_never_picks_a_late_action_when_one_fits(
    options: list[ActionOption], bandwidth_bps: float, rtt_ms: float, budget_ms: float, cloud_up: bool
) -> None:
    link = view(bandwidth_bps, rtt_ms, cloud_up)
    decision = DeadlinePolicy().decide(budget_ms, options, link)
    usable = [o for o in options if cloud_up or not o.remote]
    fits = [o for o in usable if predict_ms(o, bandwidth_bps, rtt_ms, 0.0) <= budget_ms]
    assert decision.option in usable
    if fits:
        assert decision.predicted_ms <= budget_ms
        assert decision.option.accuracy == max(o.accuracy for o in fits)


# -- the simulator ---------------------------------------------------------------------------------------------
def test_a_link_that_drops_to_zero_falls_back_within_one_frame_and_recovers() -> None:
    trace = on_off_trace(8e6, on_ms=5000, off_ms=5000)
    config = SimConfig(fps=10, deadline_ms=200, rtt_ms=40, duration_s=15, initial_bps=8e6)
    records = simulate(DeadlinePolicy(), OPTIONS, all_correct(), trace, config)
    during = [r for r in records if 5000 <= r.capture_ms < 10000]
    # The frame in flight when the link died times out and the one captured while it waited is dropped;
    # the next runs locally.
    assert [r.status for r in during[:3]] == ["timeout", "dropped", "ok"] and during[2].action == LOCAL.key
    # Afterwards only probes try the link: one frame per probe interval (the next one is dropped meanwhile).
    probes = [r for r in during[3:] if r.action not in (LOCAL.key, "")]
    assert 1 <= len(probes) <= 5000 / config.probe_interval_ms, probes
    assert all(r.status == "ok" for r in during[3:] if r.action == LOCAL.key)
    assert all(b.capture_ms - a.capture_ms >= config.probe_interval_ms for a, b in zip(probes, probes[1:]))
    before = [r for r in records if 1000 <= r.capture_ms < 5000]
    after = [r for r in records if 12000 <= r.capture_ms]
    assert all(r.action == SPLIT.key for r in before)
    assert sum(r.action == SPLIT.key for r in after) >= 0.8 * len(after), "splitting resumes after recovery"


def test_deadline_beats_every_static_action_on_a_swinging_link() -> None:
    trace = on_off_trace(8e6, on_ms=4000, off_ms=4000)
    # The edge starts out believing the link's real rate (it probes with frames, so it must believe the
    # link can carry one to ever try it).
    config = SimConfig(fps=10, deadline_ms=200, rtt_ms=40, duration_s=24, initial_bps=8e6)
    rng = np.random.default_rng(0)
    correctness = {o.key: rng.random(500) < o.accuracy for o in OPTIONS}
    rows = {}
    for policy in [DeadlinePolicy(), LatencyPolicy(), OraclePolicy(), *(StaticPolicy(o.key) for o in OPTIONS)]:
        rows[policy.name] = summarize(policy.name, simulate(policy, OPTIONS, correctness, trace, config))
    best_static = max(v["accuracy_at_deadline"] for k, v in rows.items() if k.startswith("static:"))
    assert rows["deadline"]["accuracy_at_deadline"] > best_static
    assert rows["oracle"]["accuracy_at_deadline"] >= rows["deadline"]["accuracy_at_deadline"] - 0.02
    assert rows["static:local"]["bytes_mean"] == 0


def burst_trace(base_bps: float, burst_bps: float, period_ms: int, burst_ms: int, periods: int) -> UplinkTrace:
    """`burst_bps` for the first `burst_ms` of every `period_ms`, `base_bps` for the rest."""
    times: list[float] = []
    for p in range(periods):
        for rate, start, length in ((burst_bps, 0, burst_ms), (base_bps, burst_ms, period_ms - burst_ms)):
            gap = PACKET_BYTES * 8 / rate * 1000
            times += list(np.arange(p * period_ms + start + gap, p * period_ms + start + length + 1e-9, gap))
    return UplinkTrace.from_opportunities("bursts", np.floor(np.array(times)).astype(np.int64))


def test_short_bursts_of_capacity_do_not_lure_the_expected_rule_into_timeouts() -> None:
    """1 s bursts of 10 Mbit/s every 3 s over 1 Mbit/s; offloading needs 2.5 Mbit/s for a 7% gain. Betting on a
    burst after one or two samples loses frames when it ends (the cautious rule); the expected rule waits until
    the link is both fast and steady enough for the gain to pay for the risk."""
    lossy_local = ActionOption(Local("skip2"), edge_ms=60.0, accuracy=0.81)
    remote = ActionOption(Offload("jpeg-q90"), edge_ms=2.0, payload_bytes=12_000, cloud_ms=10.0, accuracy=0.87)
    options = [lossy_local, remote]
    rng = np.random.default_rng(0)
    correctness = {o.key: rng.random(500) < o.accuracy for o in options}
    trace = burst_trace(1e6, 10e6, period_ms=3000, burst_ms=1000, periods=40)
    # The edge believes the link fast at first, so its probes (frames sent when the link was not measured for a
    # second) try the link, and each rule sees bursts.
    config = SimConfig(fps=5, deadline_ms=70, rtt_ms=20, initial_bps=10e6)
    rows = {}
    for policy in [StaticPolicy(lossy_local.key), StaticPolicy(remote.key), DeadlinePolicy(),
                   DeadlinePolicy(name="cautious", rule="cautious"), OraclePolicy()]:
        rows[policy.name] = summarize(policy.name, simulate(policy, options, correctness, trace, config))
    accuracy = {name: row["accuracy_at_deadline"] for name, row in rows.items()}
    # Within the cost of its probes (one frame per probe interval, fewer while they fail) of staying local.
    assert accuracy["deadline"] >= accuracy[f"static:{lossy_local.key}"] - 0.015
    assert accuracy["deadline"] > accuracy["cautious"] + 0.02
    assert accuracy["oracle"] >= accuracy["deadline"]


def test_a_probe_hopes_for_a_faster_link_than_first_believed_only_with_a_hedged_action(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """The edge first believes 1 Mbit/s, at which a hedged offload falls just short of beating local (it needs a
    74% chance; a 1 Mbit/s link with the first spread gives it 59%); the link runs at 8 Mbit/s. Probing only at the
    rate first believed, the policy never sends a frame and never learns that; its second, optimistic hope (two
    spreads faster) sends a hedged probe, finds the link, and offloads from then on. Without a hedge the optimistic
    hope sends nothing: a late reply would cost the whole frame."""
    local = ActionOption(Local("skip4"), edge_ms=100.0, accuracy=0.80)
    fallback = ActionOption(Local("skip9"), edge_ms=70.0, accuracy=0.60)
    offload = ActionOption(Offload("jpeg-q75"), edge_ms=10.0, payload_bytes=8_000, cloud_ms=15.0, accuracy=0.87)
    rng = np.random.default_rng(0)
    correctness = {o.key: rng.random(500) < o.accuracy for o in (local, fallback, offload)}
    trace = UplinkTrace.constant("fast", 8e6)
    config = SimConfig(fps=5, deadline_ms=120, rtt_ms=20, duration_s=20, initial_bps=1e6)

    def remote_share(options: list[ActionOption]) -> float:
        records = simulate(DeadlinePolicy(), options, correctness, trace, config)
        return sum(r.bytes_sent > 0 for r in records) / len(records)

    with_hedge = [local, fallback, offload, hedged(offload, fallback)]
    assert remote_share(with_hedge) > 0.9  # the first frame probes (nothing measured yet) and finds the link
    assert remote_share([local, fallback, offload]) == 0.0
    monkeypatch.setattr("splitrt.policies.policies.PROBE_OPTIMISM_SDS", 0.0)  # hope only for the rate first believed
    assert remote_share(with_hedge) == 0.0


def test_latest_frame_wins_when_the_pipeline_is_slower_than_the_source() -> None:
    slow = ActionOption(Local(), edge_ms=250.0, accuracy=0.9)
    config = SimConfig(fps=10, deadline_ms=300, duration_s=5)
    records = simulate(StaticPolicy("local"), [slow], {"local": np.ones(5, bool)}, UplinkTrace.constant("c", 1e6), config)
    dropped = [r for r in records if r.status == "dropped"]
    assert 0.5 < len(dropped) / len(records) < 0.9
    assert max(r.latency_ms for r in records if r.status != "dropped") <= 350.0, "no backlog builds up"


def test_the_clairvoyant_oracle_knows_each_frames_own_device_and_cloud_times() -> None:
    """With measured samples, every policy meets the same drawn times on the same frame, and the clairvoyant
    oracle takes the remote action exactly on the frames where its draw arrives in time: it is never late. The
    plain oracle knows only the link: a remote action in time one frame in two is worth 0.45 to it, less than
    the sure local 0.5, so it stays local."""
    sure = ActionOption(Local("skip9"), edge_ms=20.0, accuracy=0.5)
    remote = ActionOption(Offload("jpeg-q90"), edge_ms=5.0, payload_bytes=1_000, cloud_ms=30.0, accuracy=0.9,
                          cloud_samples_ms=(5.0, 60.0), edge_samples_ms=(4.0, 6.0))
    options = [sure, remote]
    correct = {o.key: np.ones(10, bool) for o in options}
    config = SimConfig(fps=5, deadline_ms=60.0, duration_s=20.0, rtt_ms=10.0)
    trace = UplinkTrace.constant("10mbps", 10e6)
    clairvoyant = simulate(OraclePolicy("frame"), options, correct, trace, config)
    static = simulate(StaticPolicy(remote.key), options, correct, trace, config)
    assert all(r.status == "ok" for r in clairvoyant)
    on_time = [r.frame_id for r in static if r.status == "ok"]
    assert 0 < len(on_time) < len(static)  # the draws differ by frame
    assert [r.frame_id for r in clairvoyant if r.action == remote.key] == on_time
    assert all(r.action == sure.key for r in simulate(OraclePolicy(), options, correct, trace, config))


def test_the_past_oracle_knows_what_the_link_did_not_what_it_will_do() -> None:
    """On a link that goes off for 2 s at a time, `oracle-past` (the link's exact last second) keeps sending
    into the first frames of an outage, which time out, where the oracle, which knows the future, does not."""
    trace = on_off_trace(8e6, on_ms=2000, off_ms=2000)
    config = SimConfig(fps=10, deadline_ms=200, rtt_ms=40, duration_s=16, initial_bps=8e6)
    correct = {o.key: np.ones(50, bool) for o in OPTIONS}
    past = simulate(OraclePolicy("past"), OPTIONS, correct, trace, config)
    assert any(r.status == "timeout" for r in past)
    accuracy = {p.name: summarize(p.name, simulate(p, OPTIONS, correct, trace, config))["accuracy_at_deadline"]
                for p in (OraclePolicy(), OraclePolicy("past"))}
    assert summarize("past", past)["accuracy_at_deadline"] == accuracy["oracle-past"] < accuracy["oracle"]
    assert make_policy("oracle-past").name == "oracle-past"


def test_the_oracle_follows_the_links_future_and_is_never_late_with_steady_costs() -> None:
    """On a link that goes off for 2 s at a time, the oracle sends a frame remote only when the link is on before
    its deadline, and runs it locally otherwise; with fixed device and cloud times it never misses a deadline, and no
    policy that decides from what it has seen does better."""
    trace = on_off_trace(8e6, on_ms=2000, off_ms=2000)
    config = SimConfig(fps=10, deadline_ms=200, rtt_ms=40, duration_s=16, initial_bps=8e6)
    correct = {o.key: np.ones(50, bool) for o in OPTIONS}
    oracle = simulate(OraclePolicy(), OPTIONS, correct, trace, config)
    assert all(r.status == "ok" for r in oracle)
    remote = [r for r in oracle if r.action != LOCAL.key]
    assert remote and all(trace.throughput_bps(r.capture_ms, r.capture_ms + config.deadline_ms) > 0 for r in remote)
    local = [r for r in oracle if r.action == LOCAL.key]
    assert sum(trace.throughput_bps(r.capture_ms, r.capture_ms + 50) == 0 for r in local) >= 0.25 * len(oracle)
    accuracy = {p.name: summarize(p.name, simulate(p, OPTIONS, correct, trace, config))["accuracy_at_deadline"]
                for p in (OraclePolicy(), DeadlinePolicy(), *(StaticPolicy(o.key) for o in OPTIONS))}
    assert accuracy["oracle"] >= max(v for k, v in accuracy.items() if k != "oracle")


def test_transfer_ends_for_many_starts_match_one_at_a_time() -> None:
    """The oracles ask for many start times at once; each must end where a single transfer would, across the
    trace's loop and for sizes of zero, one and several packets."""
    trace = on_off_trace(2e6, on_ms=700, off_ms=300)
    starts = np.random.default_rng(4).uniform(-5.0, 3.5 * trace.period_ms, 500)
    for size_bytes in (0, 1, 1_448, 1_449, 20_000):
        one_by_one = [trace.transfer_end_ms(s, size_bytes) for s in starts]
        assert trace.transfer_ends_ms(starts, size_bytes).tolist() == pytest.approx(one_by_one)


def test_the_past_oracle_knows_only_transfers_that_have_ended() -> None:
    """`oracle-past` learns from transfers begun in the last second that have ended by now (or have waited past
    any deadline): one still under way, whose end lies in the future, tells it nothing; before the trace's start
    there is no past."""
    from splitrt.policies.simulate import _past_transfer_ms

    trace = UplinkTrace.constant("8mbps", 8e6, period_ms=10_000)
    [took] = _past_transfer_ms(trace, 500.0, 200.0, 20_000)  # 14 packets: ~21 ms at 8 Mbit/s
    assert 20 <= took.size < 50  # 50 starts since the trace's start, the last ~21 ms of them still under way
    assert np.all(took <= 500.0) and np.allclose(took, 21.0, atol=2.0)
    outage = on_off_trace(8e6, on_ms=2000, off_ms=2000)  # nothing between 2 s and 4 s
    [waited] = _past_transfer_ms(outage, 3500.0, 200.0, 20_000)
    assert waited.size and np.all(waited > 200.0)  # only those that have waited longer than any deadline


def test_device_slowdown_follows_the_ratio_of_observed_to_typical_times() -> None:
    from splitrt.policies.estimators import DeviceSlowdown

    device = DeviceSlowdown(alpha=0.5)
    assert device.factor == 1.0
    for _ in range(20):
        device.observe(84.0, 60.0)
    assert device.factor == pytest.approx(1.4, rel=1e-3)
    device.observe(0.0, 60.0)  # nothing measured: ignored
    assert device.factor == pytest.approx(1.4, rel=1e-3)
    for _ in range(40):
        device.observe(6000.0, 1.0)
    assert device.factor == pytest.approx(4.0, rel=1e-3)  # capped


SKIP6 = ActionOption(Local("skip6"), 60.0, accuracy=0.8, edge_samples_ms=(58.0, 60.0, 62.0))
SKIP9 = ActionOption(Local("skip9"), 40.0, accuracy=0.5, edge_samples_ms=(39.0, 40.0, 41.0))


def test_a_tracking_policy_takes_the_device_as_it_runs_now() -> None:
    from dataclasses import replace

    options = [SKIP6, SKIP9]
    view = LinkView(1e6, 1e6, 20.0, 25.0)
    plain, tracking = make_policy("deadline"), make_policy("deadline-tracking")
    slow = replace(view, device_slowdown=1.3)  # skip6 now takes ~78 ms, past the 70 ms budget
    assert plain.decide(70.0, options, slow).option is SKIP6
    decision = tracking.decide(70.0, options, slow)
    assert decision.option is SKIP9 and "device x1.28" in decision.reason  # the option as given, not a scaled copy
    assert tracking.decide(70.0, options, replace(view, device_slowdown=1.04)).option is SKIP6  # under one step


def test_a_tracking_policy_rounds_the_slowdown_to_the_nearest_step_not_below() -> None:
    from dataclasses import replace

    from splitrt.policies.policies import device_steps

    assert [device_steps(f) for f in (1.04, 1 / 1.04, 1.06, 1.1, 1.2, 1 / 1.2)] == [0, 0, 1, 2, 4, -4]
    # At 1.2x, 76-78 ms takes 91-94 ms: past a 90 ms deadline. Truncated to 1.16x it looked in time on two frames in
    # three, worth more than the faster, less accurate action.
    edge = ActionOption(Local("skip9"), 77.0, accuracy=0.5, edge_samples_ms=(76.0, 77.0, 78.0))
    fast = ActionOption(Local("b4"), 50.0, accuracy=0.3, edge_samples_ms=(49.0, 50.0, 51.0))
    view = replace(LinkView(1e6, 1e6, 20.0, 25.0), device_slowdown=1.2)
    decision = make_policy("deadline-tracking").decide(90.0, [edge, fast], view)
    assert decision.option is fast and "device x1.22" in decision.reason


def test_in_the_simulator_a_tracking_policy_leaves_an_action_the_slowed_device_no_longer_finishes() -> None:
    correct = {o.key: np.ones(10, dtype=bool) for o in (SKIP6, SKIP9)}
    config = SimConfig(fps=5, deadline_ms=70, duration_s=6)
    slowed = {i: {SKIP6.key: 84.0, SKIP9.key: 56.0} for i in range(30)}  # the run's device: 1.4x the samples
    trace = UplinkTrace.constant("one-mbps", 1e6)
    plain = simulate(make_policy("deadline"), [SKIP6, SKIP9], correct, trace, config, frame_edge_ms=slowed)
    assert {r.action for r in plain} == {SKIP6.key} and all(r.status == "late" for r in plain)
    tracking = simulate(make_policy("deadline-tracking"), [SKIP6, SKIP9], correct, trace, config,
                        frame_edge_ms=slowed)
    assert [r.action for r in tracking[-10:]] == [SKIP9.key] * 10 and all(r.status == "ok" for r in tracking[-10:])
    assert tracking[0].action == SKIP6.key  # it learnt it from the frames


def test_a_tracking_decision_says_what_device_it_judged_its_option_by() -> None:
    from dataclasses import replace

    from splitrt.actions import Offload
    from splitrt.policies.policies import hedged

    jpeg = ActionOption(Offload("jpeg-q25"), 10.0, 400_000, 5.0, 0.9, edge_samples_ms=(9.0, 10.0, 11.0))
    option = hedged(jpeg, SKIP9)
    view = replace(LinkView(1e6, 1e6, 20.0, 25.0), device_slowdown=1.3)
    decision = make_policy("deadline-tracking").decide(400.0, [option], view)
    assert decision.option is option and decision.device_slowdown == pytest.approx(1.284, rel=1e-3)
    judged = decision.option_as_judged
    assert judged.edge_ms == pytest.approx(12.84, rel=1e-3) and judged.hedge.edge_ms == pytest.approx(51.36, rel=1e-3)
    assert make_policy("deadline").decide(400.0, [option], view).option_as_judged is option


def test_a_frame_queued_behind_earlier_bytes_that_times_out_still_bounds_the_rate() -> None:
    """The edge times a transfer from when it hands the bytes over, waiting behind its own earlier bytes included
    (the runtime's `network` stage). When the link dies under a large frame, the smaller frames sent after it
    wait behind it; each that times out bounds the rate as the edge sees it (its bytes in the time since it sent
    them), so the policy keeps the next frame local. Timed from when the link began carrying them (not before the
    outage ends), those timeouts bounded nothing, and frames went on being sent until the on-time calibration
    had learnt from enough of them."""
    local = ActionOption(Local("skip4"), edge_ms=100.0, accuracy=0.80)
    fallback = ActionOption(Local("skip9"), edge_ms=70.0, accuracy=0.60)
    large = ActionOption(Offload("jpeg-q95"), edge_ms=10.0, payload_bytes=24_000, cloud_ms=15.0, accuracy=0.88)
    small = ActionOption(Offload("jpeg-q50"), edge_ms=10.0, payload_bytes=7_000, cloud_ms=15.0, accuracy=0.85)
    options = [local, fallback, hedged(large, fallback), hedged(small, fallback)]
    trace = on_off_trace(20e6, on_ms=3000, off_ms=4000)
    correctness = {o.key: np.ones(10, dtype=bool) for o in (local, fallback, large, small)}
    config = SimConfig(fps=5, deadline_ms=120, rtt_ms=20, duration_s=7, initial_bps=20e6)
    records = simulate(DeadlinePolicy(), options, correctness, trace, config)
    outage = [r for r in records if 3000 <= r.capture_ms < 7000]
    # the large frame the link died under and one small frame behind it; then local, but for probes
    assert [r.bytes_sent > 0 for r in outage[:3]] == [True, True, False], [(r.capture_ms, r.action) for r in outage]
    probes = [r for r in outage[2:] if r.bytes_sent > 0]
    assert all(b.capture_ms - a.capture_ms >= config.probe_interval_ms for a, b in zip(probes, probes[1:]))


def test_the_runtime_the_daemon_and_the_simulator_start_from_one_prior() -> None:
    """What the benchmarks simulate is what ships: one uplink rate believed before the first transfer."""
    from splitrt.edge.config import PolicyConfig
    from splitrt.policies.estimators import PRIOR_UPLINK_BPS

    assert LinkEstimates().initial_bps == SimConfig().initial_bps == PRIOR_UPLINK_BPS
    assert PolicyConfig().initial_uplink_mbps * 1e6 == pytest.approx(PRIOR_UPLINK_BPS)
