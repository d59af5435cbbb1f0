"""The service's TOML config: defaults, the example file, and errors that name the bad key."""
from __future__ import annotations

from pathlib import Path

import pytest

from splitrt.cloud.batcher import BatchPolicy
from splitrt.cloud.config import ConfigError, ServiceConfig, config_from_mapping, is_loopback, load_config

DEPLOY = Path(__file__).resolve().parents[1] / "deploy" / "cloud.toml"


def test_the_example_config_loads_with_paths_relative_to_it() -> None:
    config = load_config(DEPLOY)
    assert config.bind == "tcp://0.0.0.0:5555" and config.curve_enabled()
    assert config.preferred_batch_sizes == (8, 16) and config.max_queue_delay_ms == 4.0
    assert config.curve.server_secret_key == str(DEPLOY.parent / "keys/server.key_secret")
    assert config.limits.max_payload_bytes == 33554432 and config.min_time_left_ms == 20.0
    assert config.batch_policy() == BatchPolicy(16, (8, 16), 4.0, 0.5)


@pytest.mark.parametrize(
    "data, message",
    [
        ({"server": {"bnid": "tcp://*:1"}}, r"\[server\]\.bnid is not a known key"),
        ({"batching": {"max_batch_size": "16"}}, r"\[batching\]\.max_batch_size: expected a non-negative integer"),
        ({"batching": {"enabled": 1}}, r"\[batching\]\.enabled: expected true or false"),
        ({"batching": {"preferred_batch_sizes": [4, "8"]}}, r"preferred_batch_sizes: expected a list of int"),
        ({"batching": {"max_batch_size": 4, "preferred_batch_sizes": [8]}}, r"\[batching\]: preferred_batch_sizes"),
        ({"security": {"curve": "maybe"}}, r"\[security\]\.curve: 'maybe' is not one of auto, on, off"),
        ({"server": {"backend": "triton"}}, r"\[server\]\.backend: 'triton' is not one of local, ray"),
        ({"limits": {"max_queue_depth": -1}}, r"\[limits\]\.max_queue_depth"),
        ({"limits": {"min_time_left_ms": "20"}}, r"\[limits\]\.min_time_left_ms: expected a non-negative number"),
        ({"metrics": {}}, r"unknown section \[metrics\]"),
        ({"server": 3}, r"\[server\] must be a table"),
    ],
)
def test_bad_values_name_the_key(data: dict, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        config_from_mapping(data, source="cloud.toml")


def test_a_broken_file_says_so(tmp_path: Path) -> None:
    path = tmp_path / "cloud.toml"
    path.write_text("[server\nbind = 1\n")
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_config(path)
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "absent.toml")


def test_loopback_detection_and_unbatched_policy() -> None:
    assert is_loopback("tcp://127.0.0.1:5555") and is_loopback("tcp://localhost:1") and is_loopback("ipc:///tmp/x")
    assert not is_loopback("tcp://0.0.0.0:5555") and not is_loopback("tcp://10.0.0.2:5555")
    assert ServiceConfig(batching=False).batch_policy() == BatchPolicy.unbatched()
    assert ServiceConfig(workers=0).worker_count >= 1


def test_the_floor_is_a_finite_non_negative_number_of_ms() -> None:
    assert config_from_mapping({"limits": {"min_time_left_ms": 5}}).min_time_left_ms == 5.0
    assert isinstance(config_from_mapping({"limits": {"min_time_left_ms": 5}}).min_time_left_ms, float)
    for bad in (-1.0, float("nan"), float("inf")):
        with pytest.raises(ConfigError, match="min_time_left_ms"):
            config_from_mapping({"limits": {"min_time_left_ms": bad}})
        with pytest.raises(ConfigError, match="min_time_left_ms"):
            ServiceConfig(min_time_left_ms=bad)
