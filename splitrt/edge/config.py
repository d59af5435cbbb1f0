"""The edge daemon's configuration: a TOML file, validated before anything starts.

Every error names the file, the section and the key, says what was expected and what was found, and
suggests the closest known key for a misspelt one. Parsing is pure (`parse_config` takes a dict), so the
rules are testable without files; `load_config` also reads the CURVE key files the config names (`curve_keys`),
so a missing or unreadable key stops the daemon (and `--check`) before anything starts. See `deploy/edge.toml`
for a commented example.
"""
from __future__ import annotations

import difflib
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

from splitrt.actions import Action, Local, Offload, Skip, Split, parse_action
from splitrt.policies.estimators import PRIOR_UPLINK_BPS

if TYPE_CHECKING:
    from splitrt.edge.link import CurveClientKeys
    from splitrt.policies.policies import ActionOption

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10
    import tomli as tomllib


class ConfigError(ValueError):
    """The configuration is invalid; the message names the key and what to do."""


@dataclass(frozen=True)
class PipelineConfig:
    bundle: str
    action: Action = Local()
    fallback: Action | None = Local()
    budget_ms: float = 200.0
    threads: int = 1


# Policies the daemon runs: `static` runs [pipeline] action (with its fallback); the others choose every frame's
# action among [policy] options (`make_policy`). The oracles know the future link: benchmarks only.
POLICIES = ("static", "deadline", "deadline-tracking", "deadline-uncalibrated", "latency")
CPU_LOAD_SETTINGS = ("auto", "on", "off")  # [policy] cpu_load_correction


@dataclass(frozen=True)
class PolicyConfig:
    name: str = "static"
    options: str = ""  # JSON file of the actions to choose from, their costs and accuracies (`policies.options_file`)
    calibrate_frames: int = 10  # at start, each action this many frames on this device; 0: the file's device costs
    calibration_image: str = ""  # the image those frames show; "": the file's device costs
    hedges: bool = True  # a remote action runs with the local one most likely right and in time as its hedge
    prefilter: str = ""  # "" (off) or FEATURE:THRESHOLD, e.g. "histogram:0.017" (`policies.prefilter`)
    probe_interval_ms: float = 1000.0  # while frames stay local, one frame this often tries the link
    initial_uplink_mbps: float = PRIOR_UPLINK_BPS / 1e6  # the link estimates before the first reply
    initial_rtt_ms: float = 40.0
    # count other processes' CPU load (psutil) in the device's times from the next frame on: "auto" (for a policy
    # that follows the device's speed, one inference thread on the CPU, no emulated device), "on" or "off"
    # (`splitrt.edge.cpu_load.applies`)
    cpu_load_correction: str = "auto"


@dataclass(frozen=True)
class CloudConfig:
    endpoint: str | None = None
    heartbeat_interval_ms: float = 100.0
    down_after_intervals: float = 2.5
    reconnect_initial_ms: float = 50.0
    reconnect_max_ms: float = 500.0
    connect_timeout_ms: float = 0.0  # wait this long for the first handshake at start (0: start at once)
    client_key: str = ""  # CURVE: this edge's NAME.key_secret (`splitrt cloud keygen`); "": no CURVE
    server_public_key: str = ""  # CURVE: the service's public NAME.key


@dataclass(frozen=True)
class SourceConfig:
    kind: str  # images | video | camera
    path: str = ""  # images: file or folder; video: file or URL; camera: device
    realtime: bool = True  # video: play at the file's frame rate like a camera (false: as fast as processed)
    loop: bool = False  # video: restart at the end; images: repeat forever
    format: str = "v4l2"  # camera: FFmpeg input format
    fps: int = 30  # camera
    size: str = "640x480"  # camera
    max_frames: int | None = None


@dataclass(frozen=True)
class ResultsConfig:
    sink: str = "stdout"  # stdout | jsonl | zmq | none
    path: str = ""  # jsonl
    bind: str = "tcp://127.0.0.1:5600"  # zmq PUB
    top_k: int = 3


@dataclass(frozen=True)
class TraceConfig:
    path: str = ""  # per-frame trace as JSON lines; empty: off


@dataclass(frozen=True)
class MetricsConfig:
    port: int = 0  # Prometheus /metrics; 0: off
    bind: str = "127.0.0.1"


@dataclass(frozen=True)
class LogConfig:
    level: str = "info"
    format: str = "json"  # json | text


@dataclass(frozen=True)
class DaemonConfig:
    pipeline: PipelineConfig
    source: SourceConfig
    policy: PolicyConfig = field(default_factory=PolicyConfig)
    cloud: CloudConfig = field(default_factory=CloudConfig)
    results: ResultsConfig = field(default_factory=ResultsConfig)
    trace: TraceConfig = field(default_factory=TraceConfig)
    metrics: MetricsConfig = field(default_factory=MetricsConfig)
    log: LogConfig = field(default_factory=LogConfig)
    origin: str = "edge.toml"


# --------------------------------------------------------------------------- field checks

Check = Callable[[Any], Any]  # returns the converted value or raises ValueError("expected ...")


def _number(low: float | None = None, low_open: bool = False) -> Check:
    def check(value: Any) -> float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ValueError(f"expected a number, got {value!r}")
        if low is not None and (value <= low if low_open else value < low):
            raise ValueError(f"expected a number {'>' if low_open else '>='} {low:g}, got {value!r}")
        return float(value)

    return check


def _integer(low: int) -> Check:
    def check(value: Any) -> int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ValueError(f"expected an integer, got {value!r}")
        if value < low:
            raise ValueError(f"expected an integer >= {low}, got {value!r}")
        return int(value)

    return check


def _string(choices: tuple[str, ...] | None = None, prefixes: tuple[str, ...] | None = None) -> Check:
    def check(value: Any) -> str:
        if not isinstance(value, str):
            raise ValueError(f"expected a string, got {value!r}")
        if choices is not None and value not in choices:
            raise ValueError(f"expected one of {', '.join(choices)}, got {value!r}")
        if prefixes is not None and not value.startswith(prefixes):
            raise ValueError(f"expected an endpoint starting with {' or '.join(prefixes)}, got {value!r}")
        return value

    return check


def _boolean(value: Any) -> bool:
    if not isinstance(value, bool):
        raise ValueError(f"expected true or false, got {value!r}")
    return value


def _action(value: Any) -> Action:
    if not isinstance(value, str):
        raise ValueError(f"expected an action such as \"local\", \"b4/fp16\" or \"offload/jpeg-q90\", got {value!r}")
    return parse_action(value)


def _fallback(value: Any) -> Action | None:
    if value == "none":
        return None
    action = _action(value)
    if isinstance(action, (Split, Offload, Skip)):
        raise ValueError(f"the fallback runs on the device while the cloud is away: \"local\" or \"none\", got {value!r}")
    return action


def parse_prefilter(value: str) -> tuple[str, float] | None:
    """(feature, threshold) of `[policy] prefilter` ("" is None: off); raises ValueError saying what is expected."""
    from splitrt.policies.prefilter import FEATURES

    if not value:
        return None
    feature, _, threshold = value.partition(":")
    try:
        number = float(threshold)
    except ValueError:
        number = -1.0
    if feature not in FEATURES or not number > 0:
        raise ValueError(f"expected FEATURE:THRESHOLD with FEATURE one of {', '.join(FEATURES)} and a threshold "
                         f"> 0, e.g. \"histogram:0.017\", got {value!r}")
    return feature, number


def _prefilter(value: Any) -> str:
    if not isinstance(value, str):
        raise ValueError(f"expected \"\" or FEATURE:THRESHOLD such as \"histogram:0.017\", got {value!r}")
    parse_prefilter(value)
    return value


ENDPOINT = _string(prefixes=("tcp://", "ipc://", "inproc://"))

SCHEMA: dict[str, tuple[type, dict[str, Check], tuple[str, ...]]] = {
    # section: (dataclass, {key: check}, required keys)
    "pipeline": (PipelineConfig, {
        "bundle": _string(), "action": _action, "fallback": _fallback, "budget_ms": _number(0, low_open=True),
        "threads": _integer(1),
    }, ("bundle",)),
    "policy": (PolicyConfig, {
        "name": _string(POLICIES), "options": _string(), "calibrate_frames": _integer(0),
        "calibration_image": _string(), "hedges": _boolean, "prefilter": _prefilter,
        "probe_interval_ms": _number(0, low_open=True), "initial_uplink_mbps": _number(0, low_open=True),
        "initial_rtt_ms": _number(0), "cpu_load_correction": _string(CPU_LOAD_SETTINGS),
    }, ()),
    "cloud": (CloudConfig, {
        "endpoint": ENDPOINT, "heartbeat_interval_ms": _number(0, low_open=True),
        "down_after_intervals": _number(1), "reconnect_initial_ms": _number(0, low_open=True),
        "reconnect_max_ms": _number(0, low_open=True), "connect_timeout_ms": _number(0),
        "client_key": _string(), "server_public_key": _string(),
    }, ()),
    "source": (SourceConfig, {
        "kind": _string(("images", "video", "camera")), "path": _string(), "realtime": _boolean, "loop": _boolean,
        "format": _string(), "fps": _integer(1), "size": _string(), "max_frames": _integer(1),
    }, ("kind",)),
    "results": (ResultsConfig, {
        "sink": _string(("stdout", "jsonl", "zmq", "none")), "path": _string(), "bind": ENDPOINT, "top_k": _integer(1),
    }, ()),
    "trace": (TraceConfig, {"path": _string()}, ()),
    "metrics": (MetricsConfig, {"port": _integer(0), "bind": _string()}, ()),
    "log": (LogConfig, {
        "level": _string(("debug", "info", "warning", "error")), "format": _string(("json", "text")),
    }, ()),
}
REQUIRED_SECTIONS = ("pipeline", "source")


def _did_you_mean(name: str, known: list[str]) -> str:
    close = difflib.get_close_matches(name, known, n=1, cutoff=0.6)
    return f"; did you mean {close[0]!r}?" if close else f"; known: {', '.join(sorted(known))}"


def parse_config(document: dict[str, Any], origin: str = "edge.toml") -> DaemonConfig:
    """Validate a parsed TOML document; raises ConfigError naming the first bad key."""

    def fail(where: str, message: str) -> ConfigError:
        return ConfigError(f"{origin}: {where}: {message}")

    for name, value in document.items():
        if name not in SCHEMA:
            raise fail(f"[{name}]", f"unknown section{_did_you_mean(name, list(SCHEMA))}")
        if not isinstance(value, dict):
            raise fail(name, f"expected a [{name}] table, got {value!r}")
    for name in REQUIRED_SECTIONS:
        if name not in document:
            raise fail(f"[{name}]", "missing section (see deploy/edge.toml for an example)")
    sections: dict[str, Any] = {}
    for name, table in document.items():
        cls, checks, required = SCHEMA[name]
        values: dict[str, Any] = {}
        for key, raw in table.items():
            if key not in checks:
                raise fail(f"[{name}] {key}", f"unknown key{_did_you_mean(key, list(checks))}")
            try:
                values[key] = checks[key](raw)
            except ValueError as exc:
                raise fail(f"[{name}] {key}", str(exc)) from None
        for key in required:
            if key not in values:
                raise fail(f"[{name}] {key}", "missing required key")
        sections[name] = cls(**values)
    config = DaemonConfig(**sections, origin=origin)
    _check_consistency(config, fail)
    return config


def _check_consistency(config: DaemonConfig, fail: Callable[[str, str], ConfigError]) -> None:
    source, cloud, pipeline, results = config.source, config.cloud, config.pipeline, config.results
    policy = config.policy
    if source.kind in ("images", "video") and not source.path:
        raise fail("[source] path", f"a {source.kind} source needs a path")
    needs_cloud = policy.name == "static" and isinstance(pipeline.action, (Split, Offload))
    if needs_cloud and not cloud.endpoint:
        raise fail("[cloud] endpoint", f"action {pipeline.action.describe()} needs the cloud's endpoint")
    if policy.name != "static" and not policy.options:
        raise fail("[policy] options", f"policy {policy.name} needs a file of the actions it chooses among "
                                       "(`splitrt bench policy --json OUT` writes one)")
    if policy.name == "static" and policy.options:
        raise fail("[policy] options", "the static policy runs [pipeline] action; set [policy] name to choose "
                                       "among these options")
    if cloud.endpoint and cloud.down_after_intervals >= 3:
        raise fail("[cloud] down_after_intervals", "must be below 3 so that a lost cloud is detected within 3 heartbeats")
    if cloud.reconnect_initial_ms > cloud.reconnect_max_ms:
        raise fail("[cloud] reconnect_initial_ms", f"is above reconnect_max_ms ({cloud.reconnect_max_ms:g})")
    if cloud.client_key and not cloud.server_public_key:
        raise fail("[cloud] server_public_key", "missing: CURVE needs the service's public NAME.key as well as client_key")
    if cloud.server_public_key and not cloud.client_key:
        raise fail("[cloud] client_key", "missing: CURVE needs this edge's NAME.key_secret as well as server_public_key")
    if results.sink == "jsonl" and not results.path:
        raise fail("[results] path", "the jsonl sink needs a path")


def curve_keys(config: DaemonConfig) -> "CurveClientKeys | None":
    """The CURVE keys `[cloud]` names, read from their files (None without CURVE); raises ConfigError naming
    the key whose file is missing or unreadable."""
    cloud = config.cloud
    if not cloud.client_key:
        return None
    from splitrt.edge.link import CurveClientKeys, CurveKeyError

    try:
        return CurveClientKeys.load(cloud.server_public_key, cloud.client_key)
    except CurveKeyError as exc:
        raise ConfigError(f"{config.origin}: [cloud] {exc.key}: {exc}") from None


def policy_options(config: DaemonConfig) -> "list[ActionOption]":
    """The options `[policy] options` names, read and checked (an empty list for the static policy); raises
    ConfigError naming the key and what is wrong with the file. An option that needs the cloud needs [cloud]."""
    from splitrt.policies.options_file import OptionsError, load_options

    if not config.policy.options:
        return []
    image = config.policy.calibration_image
    if image and config.policy.calibrate_frames:
        from splitrt.imaging import load_rgb

        if not Path(image).is_file():
            raise ConfigError(f"{config.origin}: [policy] calibration_image: {image}: no such file")
        try:
            load_rgb(image)
        except Exception as exc:  # PIL raises several kinds for a file that is not an image it can read
            raise ConfigError(f"{config.origin}: [policy] calibration_image: {image}: not an image "
                              f"({type(exc).__name__}: {exc})") from None
    try:
        options = load_options(config.policy.options)
    except OptionsError as exc:
        raise ConfigError(f"{config.origin}: [policy] options: {exc}") from None
    remote = [o.key for o in options if o.remote]
    if remote and not config.cloud.endpoint:
        raise ConfigError(f"{config.origin}: [cloud] endpoint: the options {', '.join(remote[:3])}"
                          f"{' ...' if len(remote) > 3 else ''} need the cloud's endpoint")
    return options


def load_config(path: str | Path) -> DaemonConfig:
    """Read and validate a TOML file, including that its CURVE key files (if any) and its policy's options file
    can be read."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"{path}: no such file (see deploy/edge.toml for an example)") from None
    try:
        document = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: not valid TOML: {exc}") from None
    config = parse_config(document, origin=str(path))
    curve_keys(config)
    policy_options(config)
    return config
