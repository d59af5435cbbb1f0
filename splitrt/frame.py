"""A frame in, a frame outcome out: the types that flow through the edge pipeline."""
from __future__ import annotations

import enum
from dataclasses import dataclass, field

import numpy as np


@dataclass(frozen=True)
class Frame:
    """Pixels (HWC, RGB, uint8), an id, the capture time and an absolute deadline (unix epoch ms)."""

    frame_id: int
    pixels: np.ndarray
    capture_ms: float
    deadline_ms: float
    source: str = ""


class Status(str, enum.Enum):
    """How a frame ended. Every frame ends with exactly one of these."""

    OK = "ok"
    SKIPPED = "skipped"
    EXPIRED = "expired"
    REJECTED = "rejected"
    FAILED = "failed"
    TIMEOUT = "timeout"
    DROPPED = "dropped"  # a real-time source replaced it with a newer frame before it was processed


@dataclass(frozen=True)
class Prediction:
    class_index: int
    label: str
    confidence: float


@dataclass
class FrameOutcome:
    """The result of one frame, or the reason it has none, with its per-stage trace in milliseconds."""

    frame_id: int
    action: str
    status: Status
    reason: str = ""
    top: list[Prediction] = field(default_factory=list)
    logits: np.ndarray | None = None
    trace_ms: dict[str, float] = field(default_factory=dict)
    bytes_sent: int = 0
    bytes_received: int = 0
    latency_ms: float = 0.0
    source: str = ""
    planned: str = ""  # the action asked for, when another one ran instead (fallback while the cloud is away)
    capture_ms: float = 0.0  # unix epoch ms when the frame was captured (0: unknown)
    deadline_ms: float = 0.0  # absolute, unix epoch ms (0: none)
    done_ms: float = 0.0  # unix epoch ms when the frame ended
    predicted_ms: float = 0.0  # the latency the policy expected of its choice when it decided (0: no policy chose)
    hedge_answered: bool = False  # a hedged action's reply was late (or refused): the answer is its hedge's

    @property
    def age_ms(self) -> float:
        """How old the frame's pixels were when its outcome was ready (capture to end); 0 if unknown."""
        return self.done_ms - self.capture_ms if self.capture_ms and self.done_ms else 0.0

    @property
    def missed_deadline(self) -> bool:
        """Ended after its deadline, or timed out waiting for it (a dropped or skipped frame misses nothing)."""
        if self.status is Status.TIMEOUT:
            return True
        return bool(self.deadline_ms and self.done_ms and self.done_ms > self.deadline_ms)

    @property
    def ok(self) -> bool:
        return self.status is Status.OK

    def to_json(self) -> dict[str, object]:
        """A JSON-ready dict (logits left out)."""
        return {
            "frame_id": self.frame_id,
            "source": self.source,
            "action": self.action,
            "planned": self.planned,
            "status": self.status.value,
            "reason": self.reason,
            "top": [
                {"class_index": p.class_index, "label": p.label, "confidence": round(p.confidence, 5)}
                for p in self.top
            ],
            "latency_ms": round(self.latency_ms, 3),
            "capture_ms": round(self.capture_ms, 3),
            "age_ms": round(self.age_ms, 3),
            "deadline_ms": round(self.deadline_ms, 3),
            "missed_deadline": self.missed_deadline,
            "trace_ms": {k: round(v, 3) for k, v in self.trace_ms.items()},
            "bytes_sent": self.bytes_sent,
            "bytes_received": self.bytes_received,
            "predicted_ms": round(self.predicted_ms, 3),
            "hedge_answered": self.hedge_answered,
        }
