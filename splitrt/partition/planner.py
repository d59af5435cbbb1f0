"""The latency-optimal action for a link, from a measured profile. Pure: no I/O, no clocks.

Expected end-to-end latency of each action (Neurosurgeon's model, with a queue and a reply):

    local        = edge_full
    split at k   = edge_head(k) + encode(k) + up_bytes(k) / uplink + rtt + queue + cloud_tail(k)
                   + result_bytes / downlink
    offload      = encode(image) + image_bytes / uplink + rtt + queue + cloud_full + result_bytes / downlink

`rtt` is the round trip of an empty message (propagation and per-message overheads); the serialisation
delay of the bytes on each direction is added on top.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping

from splitrt.bundle import INPUT_POINT

LOCAL = "local"
OFFLOAD = "offload"


@dataclass(frozen=True)
class LinkState:
    uplink_mbps: float
    rtt_ms: float
    cloud_queue_ms: float = 0.0
    downlink_mbps: float | None = None  # None: the same as the uplink

    def __post_init__(self) -> None:
        if self.uplink_mbps <= 0:
            raise ValueError(f"bandwidth must be positive, got {self.uplink_mbps} Mbit/s")
        if self.rtt_ms < 0 or self.cloud_queue_ms < 0:
            raise ValueError("rtt_ms and cloud_queue_ms must not be negative")

    def uplink_ms(self, size_bytes: float) -> float:
        return size_bytes * 8.0 / (self.uplink_mbps * 1e6) * 1000.0

    def downlink_ms(self, size_bytes: float) -> float:
        rate = self.downlink_mbps if self.downlink_mbps is not None else self.uplink_mbps
        return size_bytes * 8.0 / (rate * 1e6) * 1000.0


@dataclass(frozen=True)
class ActionEstimate:
    action: str  # "local", "split@<point>", "offload"
    split: str | None
    edge_ms: float
    encode_ms: float
    sent_bytes: int
    uplink_ms: float
    rtt_ms: float
    queue_ms: float
    cloud_ms: float
    downlink_ms: float

    @property
    def total_ms(self) -> float:
        return (
            self.edge_ms + self.encode_ms + self.uplink_ms + self.rtt_ms + self.queue_ms + self.cloud_ms + self.downlink_ms
        )

    def to_json(self) -> dict[str, Any]:
        return {
            "action": self.action,
            "split": self.split,
            "edge_ms": round(self.edge_ms, 3),
            "encode_ms": round(self.encode_ms, 3),
            "sent_bytes": self.sent_bytes,
            "uplink_ms": round(self.uplink_ms, 3),
            "rtt_ms": round(self.rtt_ms, 3),
            "queue_ms": round(self.queue_ms, 3),
            "cloud_ms": round(self.cloud_ms, 3),
            "downlink_ms": round(self.downlink_ms, 3),
            "total_ms": round(self.total_ms, 3),
        }


@dataclass(frozen=True)
class Plan:
    estimates: tuple[ActionEstimate, ...]  # local first, then splits in depth order, offload last

    @property
    def best(self) -> ActionEstimate:
        """The fastest action; on a tie, the earlier one in the table (local before splitting before offload)."""
        return min(self.estimates, key=lambda e: e.total_ms)

    def estimate(self, action: str) -> ActionEstimate:
        for e in self.estimates:
            if e.action == action:
                return e
        raise KeyError(f"no action {action!r}; actions: {', '.join(e.action for e in self.estimates)}")


def plan(
    profile: Mapping[str, Any],
    link: LinkState,
    split_bytes: Mapping[str, int],
    offload_bytes: int | None,
    result_bytes: int = 0,
    encode_ms: Mapping[str, float] | None = None,
) -> Plan:
    """Every action's expected latency under `link`.

    `profile`: a measured profile (`splitrt.partition.profile`): `local.edge_ms_p50` and per split
    `name`, `edge_ms_p50`, `cloud_ms_p50`. `split_bytes`: the codec's bytes per split point (points absent
    here are not considered); `offload_bytes`: the encoded image (None: no offload action). `encode_ms`:
    per split point (and `input` for the image), time to encode on the edge (default 0).
    """
    encode_ms = encode_ms or {}
    estimates = [
        ActionEstimate(LOCAL, None, float(profile["local"]["edge_ms_p50"]), 0.0, 0, 0.0, 0.0, 0.0, 0.0, 0.0)
    ]
    offload: ActionEstimate | None = None
    for split in profile["splits"]:
        name = split["name"]
        is_input = name == INPUT_POINT
        size = offload_bytes if is_input else split_bytes.get(name)
        if size is None:
            continue
        estimate = ActionEstimate(
            action=OFFLOAD if is_input else f"split@{name}",
            split=None if is_input else name,
            edge_ms=0.0 if is_input else float(split["edge_ms_p50"]),
            encode_ms=float(encode_ms.get(name, 0.0)),
            sent_bytes=int(size),
            uplink_ms=link.uplink_ms(size),
            rtt_ms=link.rtt_ms,
            queue_ms=link.cloud_queue_ms,
            cloud_ms=float(split["cloud_ms_p50"]),
            downlink_ms=link.downlink_ms(result_bytes),
        )
        if is_input:
            offload = estimate
        else:
            estimates.append(estimate)
    if offload is not None:
        estimates.append(offload)
    return Plan(tuple(estimates))


def codec_bytes(raw_bytes: int, dtype: str, codec_id: str) -> int:
    """Bytes a fixed-rate tensor codec sends for an activation of `raw_bytes` (fp32 and fp16)."""
    itemsize = {"float32": 4, "float16": 2, "uint8": 1}.get(dtype)
    if itemsize is None:
        raise ValueError(f"unknown activation dtype {dtype!r}")
    elements = raw_bytes // itemsize
    if codec_id == "fp32":
        return elements * 4
    if codec_id == "fp16":
        return elements * 2
    raise ValueError(f"codec {codec_id!r} is not fixed-rate: measure its bytes per split point instead")


def format_plan(plan_: Plan, link: LinkState) -> str:
    best = plan_.best
    lines = [
        f"uplink {link.uplink_mbps:g} Mbit/s, RTT {link.rtt_ms:g} ms, cloud queue {link.cloud_queue_ms:g} ms",
        f"{'action':<24} {'edge':>8} {'enc':>6} {'bytes':>10} {'uplink':>9} {'rtt':>6} {'queue':>6} {'cloud':>7} "
        f"{'down':>6} {'total ms':>9}",
    ]
    for e in plan_.estimates:
        mark = "  <- fastest" if e is best else ""
        lines.append(
            f"{e.action:<24} {e.edge_ms:>8.2f} {e.encode_ms:>6.2f} {e.sent_bytes:>10,} {e.uplink_ms:>9.2f} "
            f"{e.rtt_ms:>6.1f} {e.queue_ms:>6.1f} {e.cloud_ms:>7.2f} {e.downlink_ms:>6.2f} {e.total_ms:>9.2f}{mark}"
        )
    lines.append(f"choice: {best.action} ({best.total_ms:.1f} ms)")
    return "\n".join(lines)
