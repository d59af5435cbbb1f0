"""The planner is pure: a profile and a link in, every action's expected latency out."""
from __future__ import annotations

import pytest

from splitrt.partition.planner import LinkState, codec_bytes, plan

PROFILE = {
    "local": {"edge_ms_p50": 100.0},
    "splits": [
        {"name": "input", "edge_ms_p50": 0.0, "cloud_ms_p50": 10.0},
        {"name": "early", "edge_ms_p50": 20.0, "cloud_ms_p50": 8.0},
        {"name": "late", "edge_ms_p50": 60.0, "cloud_ms_p50": 2.0},
    ],
}
BYTES = {"early": 100_000, "late": 2_000}


def test_expected_latency_adds_every_stage() -> None:
    link = LinkState(uplink_mbps=8.0, rtt_ms=40.0, cloud_queue_ms=5.0)  # 1 byte per microsecond
    result = plan(PROFILE, link, BYTES, offload_bytes=20_000, result_bytes=4_000, encode_ms={"early": 1.0, "input": 2.0})
    early = result.estimate("split@early")
    assert early.uplink_ms == pytest.approx(100.0) and early.downlink_ms == pytest.approx(4.0)
    assert early.total_ms == pytest.approx(20 + 1 + 100 + 40 + 5 + 8 + 4)
    offload = result.estimate("offload")
    assert offload.edge_ms == 0 and offload.total_ms == pytest.approx(2 + 20 + 40 + 5 + 10 + 4)
    assert result.estimate("local").total_ms == 100.0
    assert [e.action for e in result.estimates] == ["local", "split@early", "split@late", "offload"]
    assert result.best.action == "offload"


def test_choice_moves_from_local_to_split_to_offload_as_bandwidth_grows() -> None:
    choices = [plan(PROFILE, LinkState(mbps, 10.0), BYTES, 50_000).best.action for mbps in (0.05, 1.0, 100.0)]
    assert choices == ["local", "split@late", "offload"]


def test_a_slow_reply_link_and_a_queue_favour_local() -> None:
    link = LinkState(100.0, 10.0, cloud_queue_ms=200.0)
    assert plan(PROFILE, link, BYTES, 50_000).best.action == "local"


def test_points_without_bytes_and_no_offload_are_left_out() -> None:
    result = plan(PROFILE, LinkState(10.0, 10.0), {"late": 2_000}, offload_bytes=None)
    assert [e.action for e in result.estimates] == ["local", "split@late"]
    with pytest.raises(KeyError, match="actions: local, split@late"):
        result.estimate("offload")


def test_fixed_rate_codec_bytes_and_bad_links() -> None:
    assert codec_bytes(4000, "float32", "fp16") == 2000 and codec_bytes(4000, "float32", "fp32") == 4000
    with pytest.raises(ValueError, match="not fixed-rate"):
        codec_bytes(4000, "float32", "jpeg-q90")
    with pytest.raises(ValueError, match="bandwidth must be positive"):
        LinkState(0.0, 10.0)
