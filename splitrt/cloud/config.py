"""The tail service's configuration: one frozen dataclass, loadable from a TOML file with errors naming the key.

    [server]    bind, bundles, backend, workers, intra_op_threads, ray_address, drain_timeout_s, server_id
    [batching]  enabled, max_batch_size, preferred_batch_sizes, max_queue_delay_ms, safety_margin_ms
    [limits]    max_queue_depth, max_inflight_per_client, max_message_bytes, min_time_left_ms
    [security]  curve (auto|on|off), server_secret_key, allowed_clients_dir, reload_interval_s
    [ops]       metrics_bind, metrics_port, log_format (text|json), log_level

Relative paths in the file are taken relative to the file's folder.
"""
from __future__ import annotations

import dataclasses
import math
import os
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from splitrt.cloud.batcher import BatchPolicy
from splitrt.protocol import DEFAULT_LIMITS, Limits


# The least time a request must have left before its deadline when its tail is about to start (`min_time_left_ms`).
# Two reasons. The deadline is when the device needs the Result, so a reply that leaves the cloud a few ms before it
# arrives late over any real network. And the deadline check and the tail's start are separate moments: on a loaded
# host the worker thread can be descheduled between them. Measured in the conv_head benchmark past saturation (16
# clients on 2 cores, ~40,000 batches): 26 gaps over 5 ms between the last check and the start, 1 over 10 ms (15.7),
# none over 20. A floor of one interpreter switch interval (5 ms) let 14 of ~190,000 requests start after their
# deadline in one run.
DEFAULT_MIN_TIME_LEFT_MS = 20.0


class ConfigError(ValueError):
    """A configuration value is missing, unknown or of the wrong type; the message names the key."""


@dataclass(frozen=True)
class CurveSettings:
    """`mode`: auto (on unless the bind address is loopback), on, or off."""

    mode: str = "auto"
    server_secret_key: str = ""  # a `*.key_secret` file from `splitrt cloud keygen`
    allowed_clients_dir: str = ""  # a folder of client `*.key` public key files; rescanned while serving
    reload_interval_s: float = 2.0


@dataclass(frozen=True)
class ServiceConfig:
    bind: str = "tcp://127.0.0.1:5555"
    bundles: tuple[str, ...] = ()
    backend: str = "local"  # local | ray
    workers: int = 0  # 0: one per CPU core (local); concurrent batches in flight (ray)
    intra_op_threads: int = 1
    ray_address: str = ""  # "": start a local Ray instance; "auto" or ray://host:port: join a cluster
    drain_timeout_s: float = 10.0
    server_id: str = ""
    batching: bool = True
    max_batch_size: int = 16
    preferred_batch_sizes: tuple[int, ...] = ()
    max_queue_delay_ms: float = 2.0
    safety_margin_ms: float = 0.5
    max_queue_depth: int = 256
    max_inflight_per_client: int = 64
    # A request with less than this left before its deadline when its tail would start is answered `expired`
    # (see DEFAULT_MIN_TIME_LEFT_MS above).
    min_time_left_ms: float = DEFAULT_MIN_TIME_LEFT_MS
    limits: Limits = DEFAULT_LIMITS
    curve: CurveSettings = field(default_factory=CurveSettings)
    metrics_bind: str = "127.0.0.1"
    metrics_port: int = 0  # 0: no HTTP endpoint
    log_format: str = "text"
    log_level: str = "info"

    def batch_policy(self) -> BatchPolicy:
        if not self.batching:
            return BatchPolicy.unbatched()
        return BatchPolicy(self.max_batch_size, self.preferred_batch_sizes, self.max_queue_delay_ms,
                           self.safety_margin_ms)

    @property
    def worker_count(self) -> int:
        if self.workers > 0:
            return self.workers
        cores = max(1, os.cpu_count() or 1)
        # Local workers compute, so one per core; Ray workers mostly wait on replicas, so more batches in flight.
        return 4 * cores if self.backend == "ray" else cores

    @property
    def max_message_bytes(self) -> int:
        return self.limits.max_payload_bytes + self.limits.max_meta_bytes + 4096

    def __post_init__(self) -> None:
        if not 0.0 <= self.min_time_left_ms < math.inf:
            raise ConfigError(f"min_time_left_ms: expected a non-negative number of ms, got {self.min_time_left_ms!r}")

    def curve_enabled(self) -> bool:
        if self.curve.mode == "on":
            return True
        if self.curve.mode == "off":
            return False
        return not is_loopback(self.bind)


def is_loopback(endpoint: str) -> bool:
    """True for inproc/ipc endpoints and tcp endpoints bound to a loopback address."""
    if endpoint.startswith(("inproc://", "ipc://")):
        return True
    host = (urlparse(endpoint).hostname or "").lower()
    return host in {"localhost", "::1"} or host.startswith("127.")


# --------------------------------------------------------------------------- TOML

_SECTIONS: dict[str, dict[str, str]] = {
    # section -> {toml key: ServiceConfig field (or curve.<field>, limits.<field>)}
    "server": {k: k for k in ("bind", "bundles", "backend", "workers", "intra_op_threads", "ray_address",
                              "drain_timeout_s", "server_id")},
    "batching": {"enabled": "batching", "max_batch_size": "max_batch_size",
                 "preferred_batch_sizes": "preferred_batch_sizes", "max_queue_delay_ms": "max_queue_delay_ms",
                 "safety_margin_ms": "safety_margin_ms"},
    "limits": {"max_queue_depth": "max_queue_depth", "max_inflight_per_client": "max_inflight_per_client",
               "max_message_bytes": "limits.max_payload_bytes", "min_time_left_ms": "min_time_left_ms"},
    "security": {"curve": "curve.mode", "server_secret_key": "curve.server_secret_key",
                 "allowed_clients_dir": "curve.allowed_clients_dir", "reload_interval_s": "curve.reload_interval_s"},
    "ops": {k: k for k in ("metrics_bind", "metrics_port", "log_format", "log_level")},
}
_CHOICES = {"backend": ("local", "ray"), "curve.mode": ("auto", "on", "off"), "log_format": ("text", "json"),
            "log_level": ("debug", "info", "warning", "error")}
_PATHS = {"bundles", "curve.server_secret_key", "curve.allowed_clients_dir"}


def _expected_type(target: str) -> type:
    if target.startswith("curve."):
        return {f.name: f.type for f in dataclasses.fields(CurveSettings)}[target[6:]]  # type: ignore[return-value]
    if target.startswith("limits."):
        return int  # type: ignore[return-value]
    return {f.name: f.type for f in dataclasses.fields(ServiceConfig)}[target]  # type: ignore[return-value]


def _check_value(where: str, target: str, value: Any) -> Any:
    kind = str(_expected_type(target))
    if kind in ("bool", "<class 'bool'>"):
        if not isinstance(value, bool):
            raise ConfigError(f"{where}: expected true or false, got {value!r}")
        return value
    if kind in ("int", "<class 'int'>"):
        if not isinstance(value, int) or isinstance(value, bool) or value < 0:
            raise ConfigError(f"{where}: expected a non-negative integer, got {value!r}")
        return value
    if kind in ("float", "<class 'float'>"):
        if not isinstance(value, (int, float)) or isinstance(value, bool) or not 0 <= value < math.inf:
            raise ConfigError(f"{where}: expected a non-negative number, got {value!r}")
        return float(value)
    if kind in ("str", "<class 'str'>"):
        if not isinstance(value, str):
            raise ConfigError(f"{where}: expected a string, got {value!r}")
        choices = _CHOICES.get(target)
        if choices and value not in choices:
            raise ConfigError(f"{where}: {value!r} is not one of {', '.join(choices)}")
        return value
    # tuple[...]
    item_type = int if "int" in kind else str
    if not isinstance(value, list) or not all(isinstance(v, item_type) and not isinstance(v, bool) for v in value):
        raise ConfigError(f"{where}: expected a list of {item_type.__name__}, got {value!r}")
    return tuple(value)


def config_from_mapping(data: dict[str, Any], base_dir: Path | None = None, source: str = "config") -> ServiceConfig:
    """Build a ServiceConfig from parsed TOML; unknown sections or keys and wrong types raise ConfigError."""
    top: dict[str, Any] = {}
    curve: dict[str, Any] = {}
    limits: dict[str, Any] = {}
    for section, entries in data.items():
        known = _SECTIONS.get(section)
        if known is None:
            raise ConfigError(f"{source}: unknown section [{section}] (known: {', '.join(_SECTIONS)})")
        if not isinstance(entries, dict):
            raise ConfigError(f"{source}: [{section}] must be a table")
        for key, value in entries.items():
            where = f"{source}: [{section}].{key}"
            target = known.get(key)
            if target is None:
                raise ConfigError(f"{where} is not a known key (known in [{section}]: {', '.join(known)})")
            value = _check_value(where, target, value)
            if target in _PATHS and base_dir is not None:
                value = (tuple(str(base_dir / v) for v in value) if isinstance(value, tuple)
                         else str(base_dir / value) if value else value)
            if target.startswith("curve."):
                curve[target[6:]] = value
            elif target.startswith("limits."):
                limits[target[7:]] = value
            else:
                top[target] = value
    if limits:
        top["limits"] = dataclasses.replace(DEFAULT_LIMITS, **limits)
    if curve:
        top["curve"] = CurveSettings(**curve)
    config = ServiceConfig(**top)
    try:
        config.batch_policy()
    except ValueError as exc:
        raise ConfigError(f"{source}: [batching]: {exc}") from None
    return config


def load_config(path: str | Path) -> ServiceConfig:
    path = Path(path)
    try:
        with open(path, "rb") as handle:
            data = tomllib.load(handle)
    except FileNotFoundError:
        raise ConfigError(f"config file {path} not found") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: not valid TOML ({exc})") from None
    return config_from_mapping(data, path.resolve().parent, str(path))
