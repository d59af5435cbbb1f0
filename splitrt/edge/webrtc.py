"""WebRTC video as a frame source (aiortc): any `MediaStreamTrack` of kind "video" feeds `EdgeRuntime.run`.

`TrackSource` reads a track (a drone's or a browser's stream received by an `RTCPeerConnection`) and is
real-time: the runtime keeps only the newest waiting frame. `ArrayVideoTrack` sends numpy images as a
track, and `loopback` connects two peer connections on this machine with no ICE servers (host candidates
only, nothing leaves the machine), which is how the tests and the offline demo get a real WebRTC track.
Needs the `webrtc` extra: `pip install 'splitrt[webrtc]'`.
"""
from __future__ import annotations

import asyncio
import fractions
import itertools
import time
from dataclasses import dataclass
from typing import AsyncIterator, Callable, Sequence

import numpy as np

from splitrt.clock import wall_clock_ms
from splitrt.frame import Frame

try:
    import av
    from aiortc import MediaStreamTrack, RTCConfiguration, RTCPeerConnection
    from aiortc.mediastreams import MediaStreamError
except ImportError as exc:  # pragma: no cover - depends on the installed extras
    raise ImportError("WebRTC sources need aiortc and PyAV: pip install 'splitrt[webrtc]'") from exc

VIDEO_CLOCK_RATE = 90_000  # RTP clock for video



class TrackSource:
    """Frames from a video `MediaStreamTrack`, converted to RGB; ends when the track ends or `close()`."""

    realtime = True

    def __init__(
        self,
        track: MediaStreamTrack,
        name: str = "webrtc",
        max_frames: int | None = None,
        clock_ms: Callable[[], float] = wall_clock_ms,
    ) -> None:
        if track.kind != "video":
            raise ValueError(f"TrackSource needs a video track, got a {track.kind} track")
        self.track = track
        self.name = name
        self.max_frames = max_frames
        self.clock_ms = clock_ms
        self._closed = False

    def close(self) -> None:
        self._closed = True

    async def __aiter__(self) -> AsyncIterator[Frame]:
        for frame_id in itertools.count(1):
            if self._closed or (self.max_frames is not None and frame_id > self.max_frames):
                return
            try:
                video_frame = await self.track.recv()
            except MediaStreamError:
                return
            pixels = video_frame.to_ndarray(format="rgb24")
            yield Frame(frame_id, pixels, self.clock_ms(), 0.0, f"{self.name}#{frame_id}")


class ArrayVideoTrack(MediaStreamTrack):
    """A video track that sends `images` (HWC RGB uint8, cycled) at `fps`, `count` frames then ends."""

    kind = "video"

    def __init__(self, images: Sequence[np.ndarray], fps: float = 30.0, count: int | None = None) -> None:
        super().__init__()
        if not images:
            raise ValueError("ArrayVideoTrack needs at least one image")
        self.images = [np.ascontiguousarray(i, dtype=np.uint8) for i in images]
        self.fps = fps
        self.count = count
        self.sent = 0
        self._start: float | None = None

    async def recv(self) -> av.VideoFrame:
        if self.readyState != "live" or (self.count is not None and self.sent >= self.count):
            self.stop()
            raise MediaStreamError
        if self._start is None:
            self._start = time.monotonic()
        due = self._start + self.sent / self.fps
        delay = due - time.monotonic()
        if delay > 0:
            await asyncio.sleep(delay)
        frame = av.VideoFrame.from_ndarray(self.images[self.sent % len(self.images)], format="rgb24")
        frame.pts = int(self.sent * VIDEO_CLOCK_RATE / self.fps)
        frame.time_base = fractions.Fraction(1, VIDEO_CLOCK_RATE)
        self.sent += 1
        return frame


@dataclass
class Loopback:
    """Two connected peer connections on this machine; `remote` is the track as the receiver sees it."""

    sender: RTCPeerConnection
    receiver: RTCPeerConnection
    remote: MediaStreamTrack

    async def close(self) -> None:
        await self.sender.close()
        await self.receiver.close()


async def loopback(track: MediaStreamTrack, timeout_s: float = 10.0) -> Loopback:
    """Send `track` from one peer connection to another on this machine (no ICE servers) and return both."""
    config = RTCConfiguration(iceServers=[])
    sender, receiver = RTCPeerConnection(config), RTCPeerConnection(config)
    received: asyncio.Future[MediaStreamTrack] = asyncio.get_running_loop().create_future()

    @receiver.on("track")
    def on_track(remote: MediaStreamTrack) -> None:
        if remote.kind == "video" and not received.done():
            received.set_result(remote)

    try:
        sender.addTrack(track)
        await sender.setLocalDescription(await sender.createOffer())  # gathers candidates
        await receiver.setRemoteDescription(sender.localDescription)
        await receiver.setLocalDescription(await receiver.createAnswer())
        await sender.setRemoteDescription(receiver.localDescription)
        remote = await asyncio.wait_for(received, timeout_s)
    except BaseException:
        await sender.close()
        await receiver.close()
        raise
    return Loopback(sender, receiver, remote)
