"""Streams of frames through the runtime: results as they complete, and no backlog behind a real-time source.

`LatestFrameSlot` is the pure core of "latest frame wins": a slot of one frame where a newer frame
replaces an older one that has not started yet, and the replaced frame is handed back so that it can end
with `Status.DROPPED`. `run_stream` wires a source, the slot (or a bounded FIFO for sources that can wait)
and the runtime's single inference thread together with asyncio. Frames a real-time source replaced
itself before yielding them (`take_replaced()`, see `FrameSource`) end the same way, with the same reason.
"""
from __future__ import annotations

import asyncio
from dataclasses import replace
from typing import TYPE_CHECKING, AsyncIterator, Callable

from splitrt.actions import Action
from splitrt.frame import Frame, FrameOutcome, Status

if TYPE_CHECKING:
    from splitrt.edge.runtime import EdgeRuntime
    from splitrt.edge.sources import FrameSource


class LatestFrameSlot:
    """Holds at most one frame that waits for the pipeline; a newer frame replaces it."""

    def __init__(self) -> None:
        self._frame: Frame | None = None
        self.dropped = 0

    def put(self, frame: Frame) -> Frame | None:
        """Store `frame`; returns the frame it replaced (which will never run), or None."""
        replaced, self._frame = self._frame, frame
        if replaced is not None:
            self.dropped += 1
        return replaced

    def take(self) -> Frame | None:
        frame, self._frame = self._frame, None
        return frame

    def __len__(self) -> int:
        return 0 if self._frame is None else 1


def replaced_reason(newer_frame_id: int) -> str:
    """The reason of every frame a newer one replaced before it ran."""
    return f"replaced by frame {newer_frame_id} before it ran (latest frame wins)"


def dropped_outcome(frame: Frame, action: str, now_ms: float, reason: str) -> FrameOutcome:
    return FrameOutcome(
        frame_id=frame.frame_id,
        action=action,
        status=Status.DROPPED,
        reason=reason,
        source=frame.source,
        capture_ms=frame.capture_ms,
        deadline_ms=frame.deadline_ms,
        done_ms=now_ms,
    )


_END = object()


async def run_stream(
    runtime: "EdgeRuntime",
    source: "FrameSource",
    action: Action | None = None,
    budget_ms: float = 1000.0,
    stop: asyncio.Event | None = None,
    max_queue: int = 4,
    infer: Callable[[Frame], FrameOutcome] | None = None,
    planned: str | None = None,
) -> AsyncIterator[FrameOutcome]:
    """See `EdgeRuntime.run`. `infer` replaces `runtime.infer(frame, action)` (an `AdaptiveRuntime` chooses
    each frame's action itself; `planned` then names what a dropped frame would have run)."""
    loop = asyncio.get_running_loop()
    run_frame = infer or (lambda frame: runtime.infer(frame, action))
    planned = planned or (action or runtime.action).describe()
    outcomes: asyncio.Queue[object] = asyncio.Queue()
    realtime = bool(getattr(source, "realtime", False))
    slot = LatestFrameSlot()
    slot_filled = asyncio.Event()
    fifo: asyncio.Queue[object] = asyncio.Queue(maxsize=max(1, max_queue))
    source_done = asyncio.Event()

    def with_deadline(frame: Frame) -> Frame:
        return frame if frame.deadline_ms > 0 else replace(frame, deadline_ms=frame.capture_ms + budget_ms)

    take_replaced = getattr(source, "take_replaced", None) if realtime else None

    def end_replaced_at_source() -> None:
        for replaced, newer_id in take_replaced() if take_replaced is not None else ():
            outcomes.put_nowait(dropped_outcome(with_deadline(replaced), planned, runtime.clock_ms(),
                                                replaced_reason(newer_id)))

    async def produce() -> None:
        try:
            async for frame in source:
                frame = with_deadline(frame)
                if realtime:
                    end_replaced_at_source()
                    replaced = slot.put(frame)
                    slot_filled.set()
                    if replaced is not None:
                        reason = replaced_reason(frame.frame_id)
                        outcomes.put_nowait(dropped_outcome(replaced, planned, runtime.clock_ms(), reason))
                else:
                    await fifo.put(frame)
                if stop is not None and stop.is_set():
                    break
        finally:
            end_replaced_at_source()
            source_done.set()
            slot_filled.set()
            if not realtime:
                await fifo.put(_END)

    async def next_frame() -> Frame | None:
        if not realtime:
            item = await fifo.get()
            return None if item is _END else item  # type: ignore[return-value]
        while True:
            frame = slot.take()
            if frame is not None:
                return frame
            if source_done.is_set():
                return None
            slot_filled.clear()
            await slot_filled.wait()

    async def consume() -> None:
        try:
            while True:
                frame = await next_frame()
                if frame is None:
                    return
                outcome = await loop.run_in_executor(runtime.executor, run_frame, frame)
                outcomes.put_nowait(outcome)
        finally:
            outcomes.put_nowait(_END)

    async def stop_source() -> None:
        assert stop is not None
        await stop.wait()
        close = getattr(source, "close", None)
        if close is not None:
            close()

    producer = asyncio.create_task(produce(), name="splitrt-source")
    consumer = asyncio.create_task(consume(), name="splitrt-pipeline")
    stopper = asyncio.create_task(stop_source()) if stop is not None else None
    try:
        while True:
            item = await outcomes.get()
            if item is _END:
                break
            yield item  # type: ignore[misc]
        # Outcomes that were queued after the pipeline's last one (frames dropped at the very end).
        while not outcomes.empty():
            item = outcomes.get_nowait()
            if item is not _END:
                yield item  # type: ignore[misc]
        for task in (producer, consumer):
            if task.done() and not task.cancelled() and task.exception() is not None:
                raise task.exception()  # type: ignore[misc]
    finally:
        for task in (producer, consumer, stopper):
            if task is not None and not task.done():
                task.cancel()
        await asyncio.gather(producer, consumer, *([stopper] if stopper else []), return_exceptions=True)
