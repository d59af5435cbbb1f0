"""Liveness of the cloud link as a pure state machine: heartbeats, loss detection, reconnection with backoff.

No sockets and no clock reads: the I/O loop (`splitrt.edge.failover.ResilientLink`) passes `now_ms` in and
carries out the steps that `LinkHealth.due` returns, so every timing rule is testable without sleeping.

The rules:

* While the link is up, a heartbeat goes out every `interval_ms`; anything that comes back from the cloud
  (a heartbeat echo, a Result, a Reject, a Welcome) counts as hearing from it.
* When nothing has been heard for `down_after_intervals * interval_ms`, the cloud is declared down. Since
  the last thing heard came before the loss, the loss is detected at most that long after it happened
  (plus one tick of the loop); `down_after_intervals` must be below 3.
* While it is down (or not yet connected), a Hello goes out after each backoff delay: `backoff_initial_ms`,
  doubling up to `backoff_max_ms`. The first Welcome brings the link up again and resets the backoff.
"""
from __future__ import annotations

import enum
from dataclasses import dataclass


class LinkState(str, enum.Enum):
    CONNECTING = "connecting"  # never welcomed yet
    UP = "up"
    DOWN = "down"  # was up, lost; reconnecting


class Step(str, enum.Enum):
    SEND_HEARTBEAT = "send_heartbeat"
    SEND_HELLO = "send_hello"
    DECLARE_DOWN = "declare_down"


@dataclass(frozen=True)
class HeartbeatConfig:
    interval_ms: float = 100.0
    down_after_intervals: float = 2.5
    backoff_initial_ms: float = 50.0
    backoff_max_ms: float = 500.0
    backoff_factor: float = 2.0

    def __post_init__(self) -> None:
        if not self.interval_ms > 0:
            raise ValueError(f"interval_ms must be > 0, got {self.interval_ms}")
        if not 1.0 <= self.down_after_intervals < 3.0:
            raise ValueError(
                f"down_after_intervals must be in [1, 3) so that a loss is detected within 3 heartbeat "
                f"intervals, got {self.down_after_intervals}"
            )
        if not 0 < self.backoff_initial_ms <= self.backoff_max_ms:
            raise ValueError(
                f"need 0 < backoff_initial_ms <= backoff_max_ms, got {self.backoff_initial_ms} and {self.backoff_max_ms}"
            )
        if self.backoff_factor < 1.0:
            raise ValueError(f"backoff_factor must be >= 1, got {self.backoff_factor}")

    @property
    def down_after_ms(self) -> float:
        return self.down_after_intervals * self.interval_ms


class Backoff:
    """Delays between reconnection attempts: initial, then multiplied by `factor`, capped at `max_ms`."""

    def __init__(self, initial_ms: float, max_ms: float, factor: float = 2.0) -> None:
        self.initial_ms = initial_ms
        self.max_ms = max_ms
        self.factor = factor
        self.attempts = 0

    def next_delay_ms(self) -> float:
        delay = min(self.max_ms, self.initial_ms * self.factor**self.attempts)
        self.attempts += 1
        return delay

    def reset(self) -> None:
        self.attempts = 0


class LinkHealth:
    """What the link should do next, given what it heard and when. Times are monotonic milliseconds."""

    def __init__(self, config: HeartbeatConfig, now_ms: float) -> None:
        self.config = config
        self.state = LinkState.CONNECTING
        self.last_heard_ms = now_ms
        self.down_since_ms: float | None = None
        self._backoff = Backoff(config.backoff_initial_ms, config.backoff_max_ms, config.backoff_factor)
        self._next_heartbeat_ms = now_ms
        self._next_hello_ms = now_ms  # the first Hello goes out at once
        self.transitions: list[tuple[float, LinkState]] = [(now_ms, LinkState.CONNECTING)]

    @property
    def is_up(self) -> bool:
        return self.state is LinkState.UP

    @property
    def hello_attempts(self) -> int:
        return self._backoff.attempts

    def on_heard(self, now_ms: float) -> None:
        """Any valid message from the cloud arrived."""
        self.last_heard_ms = max(self.last_heard_ms, now_ms)

    def on_welcome(self, now_ms: float) -> None:
        """The handshake completed: the link is up."""
        self.on_heard(now_ms)
        if self.state is not LinkState.UP:
            self.state = LinkState.UP
            self.down_since_ms = None
            self.transitions.append((now_ms, LinkState.UP))
        self._backoff.reset()
        self._next_heartbeat_ms = now_ms + self.config.interval_ms

    def on_disconnected(self, now_ms: float) -> bool:
        """The connection closed (the cloud process ended, or something between dropped it). Until a new
        handshake the link is down: whoever answers next may be another process, serving another bundle.
        The Hello is due at once (it goes out when the connection is back). Returns whether the link was up."""
        if self.state is not LinkState.UP:
            return False
        self.state = LinkState.DOWN
        self.down_since_ms = now_ms
        self.transitions.append((now_ms, LinkState.DOWN))
        self._backoff.reset()
        self._next_hello_ms = now_ms
        return True

    def due(self, now_ms: float) -> list[Step]:
        """The steps to take now; call it whenever the loop wakes, and again by `next_wakeup_ms`."""
        if self.state is LinkState.UP:
            if now_ms - self.last_heard_ms > self.config.down_after_ms:
                self.state = LinkState.DOWN
                self.down_since_ms = now_ms
                self.transitions.append((now_ms, LinkState.DOWN))
                self._backoff.reset()
                self._next_hello_ms = now_ms + self._backoff.next_delay_ms()
                return [Step.DECLARE_DOWN]
            if now_ms >= self._next_heartbeat_ms:
                self._next_heartbeat_ms = now_ms + self.config.interval_ms
                return [Step.SEND_HEARTBEAT]
            return []
        if now_ms >= self._next_hello_ms:
            self._next_hello_ms = now_ms + self._backoff.next_delay_ms()
            return [Step.SEND_HELLO]
        return []

    def next_wakeup_ms(self, now_ms: float) -> float:
        """When `due` may next return something (the loop also wakes on any incoming message)."""
        if self.state is LinkState.UP:
            # Wake often enough that a loss is declared within a tenth of an interval of its due time.
            down_at = self.last_heard_ms + self.config.down_after_ms
            return min(self._next_heartbeat_ms, max(now_ms, down_at) + self.config.interval_ms / 10.0)
        return self._next_hello_ms
