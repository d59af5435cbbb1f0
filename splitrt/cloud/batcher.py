"""Deadline-aware dynamic batching, as a pure state machine: no threads, no sockets, no clock reads.

Requests wait in one queue per key (bundle, split, codec), earliest deadline first. The caller feeds the
current time into `poll` and gets back the batches to run now, the requests that can no longer meet their
deadline (to be answered `Reject(expired)`, never executed), and when to poll again.

A key's queue is dispatched when
  * it holds `max_batch_size` requests, or at least the largest preferred batch size, or
  * waiting longer would break a promise: the oldest request has waited `max_queue_delay_ms`, or the earliest
    deadline minus the expected compute time of a full batch (minus a safety margin) has come.
Then the batch is the largest preferred size that fits (or everything queued, up to `max_batch_size`),
shrunk until its expected compute time still ends before the earliest deadline in it.

Across keys, ready batches go out earliest deadline first, as many as there are free executor slots.
"""
from __future__ import annotations

import heapq
import itertools
from dataclasses import dataclass, field
from typing import Generic, Hashable, TypeVar

T = TypeVar("T")


@dataclass(frozen=True)
class BatchPolicy:
    max_batch_size: int = 16
    preferred_batch_sizes: tuple[int, ...] = ()
    max_queue_delay_ms: float = 2.0
    safety_margin_ms: float = 0.5

    def __post_init__(self) -> None:
        if self.max_batch_size < 1:
            raise ValueError(f"max_batch_size must be >= 1, got {self.max_batch_size}")
        if self.max_queue_delay_ms < 0 or self.safety_margin_ms < 0:
            raise ValueError("max_queue_delay_ms and safety_margin_ms must be >= 0")
        bad = [s for s in self.preferred_batch_sizes if not 1 <= s <= self.max_batch_size]
        if bad:
            raise ValueError(f"preferred_batch_sizes {bad} must lie in [1, max_batch_size={self.max_batch_size}]")
        object.__setattr__(self, "preferred_batch_sizes", tuple(sorted(set(self.preferred_batch_sizes))))

    @classmethod
    def unbatched(cls) -> "BatchPolicy":
        """Batch size 1, no waiting: every request runs on its own."""
        return cls(max_batch_size=1, preferred_batch_sizes=(), max_queue_delay_ms=0.0)

    @property
    def eager_size(self) -> int:
        """A queue this long is dispatched at once."""
        return self.preferred_batch_sizes[-1] if self.preferred_batch_sizes else self.max_batch_size

    def batch_size_for(self, queued: int) -> int:
        """Largest preferred size that `queued` requests fill; else all of them (up to the maximum)."""
        size = min(queued, self.max_batch_size)
        fitting = [s for s in self.preferred_batch_sizes if s <= size]
        return fitting[-1] if fitting else size


class CostModel:
    """Expected compute time of a batch, learnt per (key, batch size) as an exponential moving average.

    For a size never seen, it scales the nearest smaller observed size linearly (never optimistic), or takes
    the nearest larger one as an upper bound; with no observation at all, `default_fixed_ms + n * default_item_ms`.
    """

    def __init__(self, default_fixed_ms: float = 1.0, default_item_ms: float = 1.0, alpha: float = 0.2) -> None:
        self.default_fixed_ms = default_fixed_ms
        self.default_item_ms = default_item_ms
        self.alpha = alpha
        self._ms: dict[Hashable, dict[int, float]] = {}

    def observe(self, key: Hashable, batch_size: int, compute_ms: float) -> None:
        """Fold in a measured batch; one outlier (a descheduled thread) moves the estimate at most 4x its weight."""
        sizes = self._ms.setdefault(key, {})
        old = sizes.get(batch_size)
        if old is None:
            sizes[batch_size] = compute_ms
        else:
            sizes[batch_size] = old + self.alpha * (min(compute_ms, 4.0 * old) - old)

    def relax(self, key: Hashable, factor: float = 0.9) -> None:
        """Lower the estimates of `key` after a request was refused on the estimate alone.

        Without this, an estimate inflated by a slow spell would refuse every request, so nothing would run
        and no measurement would ever correct it; relaxing lets requests through until measurements take over.
        """
        for size, ms in self._ms.get(key, {}).items():
            self._ms[key][size] = ms * factor

    def expected_ms(self, key: Hashable, batch_size: int) -> float:
        sizes = self._ms.get(key)
        if not sizes:
            return self.default_fixed_ms + batch_size * self.default_item_ms
        known = sizes.get(batch_size)
        if known is not None:
            return known
        smaller = [s for s in sizes if s < batch_size]
        if smaller:
            base = max(smaller)
            return sizes[base] * batch_size / base
        return sizes[min(sizes)]


@dataclass(frozen=True)
class Pending(Generic[T]):
    key: Hashable
    item: T
    deadline_ms: float
    arrival_ms: float


@dataclass(frozen=True)
class Batch(Generic[T]):
    key: Hashable
    requests: tuple[Pending[T], ...]
    formed_ms: float
    expected_compute_ms: float

    def __len__(self) -> int:
        return len(self.requests)


@dataclass(frozen=True)
class Decision(Generic[T]):
    batches: tuple[Batch[T], ...] = ()
    expired: tuple[Pending[T], ...] = ()
    wake_at_ms: float | None = None  # poll again no later than this (None: only when something changes)


@dataclass
class _Queue(Generic[T]):
    heap: list[tuple[float, int, Pending[T]]] = field(default_factory=list)
    oldest_arrival_ms: dict[int, float] = field(default_factory=dict)  # seq -> arrival, for the delay bound

    def oldest_ms(self) -> float:
        return min(self.oldest_arrival_ms.values())


class Batcher(Generic[T]):
    """Per-key earliest-deadline-first queues and the decision of when to cut a batch."""

    def __init__(self, policy: BatchPolicy, cost: CostModel | None = None) -> None:
        self.policy = policy
        self.cost = cost or CostModel()
        self._queues: dict[Hashable, _Queue[T]] = {}
        self._seq = itertools.count()
        self._size = 0

    def __len__(self) -> int:
        return self._size

    def depth(self, key: Hashable) -> int:
        queue = self._queues.get(key)
        return len(queue.heap) if queue else 0

    def add(self, key: Hashable, item: T, deadline_ms: float, now_ms: float) -> None:
        seq = next(self._seq)
        queue = self._queues.setdefault(key, _Queue())
        heapq.heappush(queue.heap, (deadline_ms, seq, Pending(key, item, deadline_ms, now_ms)))
        queue.oldest_arrival_ms[seq] = now_ms
        self._size += 1

    def expected_finish_ms(self, key: Hashable, now_ms: float, ahead: int, workers: int) -> float:
        """When a request for `key` arriving now should finish, with `ahead` requests queued or running.

        Those ahead are served `workers` at a time at the per-request cost of a full batch; then this one
        runs on its own. Admission compares this with the request's deadline (and rejects it as overloaded
        at once, instead of letting it wait only to expire).
        """
        size = self.policy.max_batch_size
        per_request_ms = self.cost.expected_ms(key, size) / size
        return now_ms + ahead * per_request_ms / max(1, workers) + self.cost.expected_ms(key, 1)

    def _pop(self, queue: _Queue[T]) -> Pending[T]:
        _, seq, pending = heapq.heappop(queue.heap)
        del queue.oldest_arrival_ms[seq]
        self._size -= 1
        return pending

    def _expire(self, key: Hashable, queue: _Queue[T], now_ms: float) -> list[Pending[T]]:
        """Requests that cannot finish in time even alone, now; EDF order means they are at the front."""
        single_ms = self.cost.expected_ms(key, 1)
        expired = []
        while queue.heap and queue.heap[0][0] <= now_ms + single_ms:
            if queue.heap[0][0] > now_ms:  # refused on the estimate, not on the clock
                self.cost.relax(key)
            expired.append(self._pop(queue))
        return expired

    def _dispatch_by_ms(self, key: Hashable, queue: _Queue[T]) -> float:
        """The latest time this queue may wait until, given the delay bound and its earliest deadline."""
        earliest_deadline_ms = queue.heap[0][0]
        full_ms = self.cost.expected_ms(key, self.policy.max_batch_size)
        return min(
            queue.oldest_ms() + self.policy.max_queue_delay_ms,
            earliest_deadline_ms - full_ms - self.policy.safety_margin_ms,
        )

    def _cut(self, key: Hashable, queue: _Queue[T], now_ms: float) -> Batch[T]:
        size = self.policy.batch_size_for(len(queue.heap))
        earliest_deadline_ms = queue.heap[0][0]
        while size > 1 and now_ms + self.cost.expected_ms(key, size) > earliest_deadline_ms:
            size -= 1
        requests = tuple(self._pop(queue) for _ in range(size))
        return Batch(key, requests, now_ms, self.cost.expected_ms(key, size))

    def poll(self, now_ms: float, free_slots: int, flush: bool = False) -> Decision[T]:
        """What to do at `now_ms` with `free_slots` idle executors; `flush` dispatches without waiting."""
        expired: list[Pending[T]] = []
        ready: list[tuple[float, Hashable]] = []
        wake_at_ms: float | None = None
        for key, queue in list(self._queues.items()):
            expired += self._expire(key, queue, now_ms)
            if not queue.heap:
                del self._queues[key]
                continue
            dispatch_by_ms = self._dispatch_by_ms(key, queue)
            if flush or len(queue.heap) >= self.policy.eager_size or now_ms >= dispatch_by_ms:
                ready.append((queue.heap[0][0], key))
            else:
                wake_at_ms = dispatch_by_ms if wake_at_ms is None else min(wake_at_ms, dispatch_by_ms)
        batches: list[Batch[T]] = []
        for _, key in sorted(ready, key=lambda entry: entry[0]):
            if len(batches) >= free_slots:
                break
            queue = self._queues[key]
            batches.append(self._cut(key, queue, now_ms))
            if not queue.heap:
                del self._queues[key]
        for key, queue in self._queues.items():  # also wake to expire what is still waiting
            expiry_ms = queue.heap[0][0] - self.cost.expected_ms(key, 1)
            wake_at_ms = expiry_ms if wake_at_ms is None else min(wake_at_ms, expiry_ms)
        return Decision(tuple(batches), tuple(expired), wake_at_ms)
