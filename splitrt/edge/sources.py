"""Frame sources: image files and folders, the sample images that scikit-image/scikit-learn ship, and the
streaming sources that `EdgeRuntime.run` takes: image folders, paced frames, video files and cameras (PyAV).
The WebRTC track source lives in `splitrt.edge.webrtc` (it needs aiortc)."""
from __future__ import annotations

import asyncio
import itertools
import queue
import threading
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import AsyncIterator, Callable, Iterator, Protocol, Sequence

import numpy as np
from PIL import Image

from splitrt.clock import wall_clock_ms
from splitrt.frame import Frame
from splitrt.imaging import list_images, load_rgb

SAMPLE_IMAGES = ("astronaut", "chelsea", "coffee", "rocket", "hubble_deep_field", "colorwheel")


def image_source(path: str | Path) -> Iterator[tuple[str, np.ndarray]]:
    """Yield (name, RGB pixels) for one image file or every image in a folder, in name order."""
    path = Path(path)
    if path.is_file():
        yield path.name, load_rgb(path)
        return
    files = list_images(path)
    if not files:
        raise FileNotFoundError(f"no images (.jpg, .png, ...) in {path}")
    for file in files:
        yield file.name, load_rgb(file)


def write_sample_images(folder: str | Path) -> list[Path]:
    """Write the real photographs that scikit-image and scikit-learn ship into `folder` as PNG/JPEG files."""
    import skimage.data
    from sklearn.datasets import load_sample_images

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    written: list[Path] = []
    for name in SAMPLE_IMAGES:
        target = folder / f"{name}.png"
        if not target.exists():
            Image.fromarray(np.asarray(getattr(skimage.data, name)())[:, :, :3]).save(target)
        written.append(target)
    samples = load_sample_images()
    for file_name, pixels in zip(samples.filenames, samples.images):
        target = folder / Path(file_name).name
        if not target.exists():
            Image.fromarray(pixels).save(target, quality=95)
        written.append(target)
    return written


# --------------------------------------------------------------------------- streaming sources (async)



class FrameSource(Protocol):
    """An async iterable of frames. `realtime`: frames come whether or not the pipeline keeps up (a camera),
    so `EdgeRuntime.run` keeps only the newest waiting frame; otherwise the source waits for the pipeline.

    A real-time source that replaces frames itself before yielding them (`VideoSource`, whose decoder runs
    ahead on its own thread) also has `take_replaced()`: those frames with the id of the frame that replaced
    each, so that `EdgeRuntime.run` ends them as dropped like the frames it replaces."""

    realtime: bool

    def __aiter__(self) -> AsyncIterator[Frame]: ...


class ImageFolderSource:
    """Every image of a file or folder (in name order), `repeat` times, at most `max_frames` frames in all;
    waits for the pipeline."""

    realtime = False

    def __init__(self, path: str | Path, repeat: int = 1, clock_ms: Callable[[], float] = wall_clock_ms,
                 max_frames: int | None = None) -> None:
        self.path = Path(path)
        self.repeat = repeat
        self.clock_ms = clock_ms
        self.max_frames = max_frames
        self._closed = False

    def close(self) -> None:
        self._closed = True

    async def __aiter__(self) -> AsyncIterator[Frame]:
        frame_ids = itertools.count(1)
        for _ in range(self.repeat):
            for name, pixels in image_source(self.path):
                frame_id = next(frame_ids)
                if self._closed or (self.max_frames is not None and frame_id > self.max_frames):
                    return
                yield Frame(frame_id, pixels, self.clock_ms(), 0.0, name)
                await asyncio.sleep(0)


class PacedSource:
    """Frames at a fixed rate from a list of images (cycled), like a camera: `count` frames or until closed.

    A tick that the event loop misses is not made up with a burst, as a camera would not either.
    """

    realtime = True

    def __init__(
        self,
        images: Sequence[np.ndarray],
        fps: float,
        count: int | None = None,
        name: str = "paced",
        clock_ms: Callable[[], float] = wall_clock_ms,
    ) -> None:
        if not images:
            raise ValueError("PacedSource needs at least one image")
        if fps <= 0:
            raise ValueError(f"fps must be > 0, got {fps}")
        self.images = list(images)
        self.fps = fps
        self.count = count
        self.name = name
        self.clock_ms = clock_ms
        self._closed = False

    def close(self) -> None:
        self._closed = True

    async def __aiter__(self) -> AsyncIterator[Frame]:
        period_s = 1.0 / self.fps
        next_tick = time.monotonic()
        for index in itertools.count():
            if self._closed or (self.count is not None and index >= self.count):
                return
            delay = next_tick - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            else:
                next_tick = time.monotonic()  # late: no catch-up burst
            next_tick += period_s
            if self._closed:
                return
            yield Frame(index + 1, self.images[index % len(self.images)], self.clock_ms(), 0.0, f"{self.name}#{index + 1}")


@dataclass
class _DecodeRun:
    """One iteration's decoder thread: its own stop flag and replaced frames, so a second iteration never sees
    what the first one's thread still produces while it winds down."""

    stop: threading.Event = field(default_factory=threading.Event)
    replaced: list[tuple[Frame, int]] = field(default_factory=list)
    thread: threading.Thread | None = None


class VideoSource:
    """Frames decoded by PyAV from a video file, a camera (`format="v4l2"`, `avfoundation`, `dshow`) or any
    URL FFmpeg opens (RTSP, ...). Decoding runs on its own thread.

    `realtime=True` for a live camera or stream; for a file it also paces the frames at their timestamps,
    i.e. plays the file like a camera (30 fps file -> 30 frames per second). Between the decoder and the
    pipeline there is then room for one frame: a newer frame replaces one not taken yet (latest frame wins,
    the decoder never waits and no backlog builds up), and `take_replaced()` hands the replaced ones over.
    `realtime=False` decodes as fast as the pipeline takes frames. `loop` restarts a file at its end;
    `max_frames` stops early.
    """

    def __init__(
        self,
        url: str | Path,
        realtime: bool = False,
        format: str | None = None,
        options: dict[str, str] | None = None,
        loop: bool = False,
        max_frames: int | None = None,
        clock_ms: Callable[[], float] = wall_clock_ms,
    ) -> None:
        self.url = str(url)
        self.realtime = realtime
        self.format = format
        self.options = dict(options or {})
        self.loop = loop
        self.max_frames = max_frames
        self.clock_ms = clock_ms
        self.name = Path(self.url).name if format is None else self.url
        self.replaced = 0  # frames a newer one replaced before the pipeline took them (real-time)
        self._replaced_lock = threading.Lock()
        self._run = _DecodeRun()  # the current (or last) iteration's

    def close(self) -> None:
        """Stop the current iteration's decoder (a later iteration starts a new one)."""
        self._run.stop.set()

    def take_replaced(self) -> list[tuple[Frame, int]]:
        """Frames replaced since the last call, each with the id of the frame that replaced it (pixels released)."""
        with self._replaced_lock:
            taken, self._run.replaced = self._run.replaced, []
        return taken

    def _put_latest(self, out: "queue.Queue[object]", frame: Frame, run: _DecodeRun) -> None:
        """Real-time: put `frame` into the one-frame queue at once, replacing a frame still waiting there."""
        while True:
            try:
                out.put_nowait(frame)
                return
            except queue.Full:
                pass
            try:
                older = out.get_nowait()  # only frames are ever waiting here: the end or an error comes last
            except queue.Empty:
                continue  # taken meanwhile: there is room now
            assert isinstance(older, Frame)
            with self._replaced_lock:
                if run is not self._run:  # a later iteration has started: nobody takes this run's frames
                    return
                run.replaced.append((replace(older, pixels=_NO_PIXELS), frame.frame_id))
                self.replaced += 1

    @staticmethod
    def _put_waiting(out: "queue.Queue[object]", item: object, stop: threading.Event) -> None:
        """Put `item`, waiting for room, unless the run is stopped meanwhile (then nobody takes it)."""
        while not stop.is_set():
            try:
                out.put(item, timeout=0.1)
                return
            except queue.Full:
                continue

    def _read(self, out: "queue.Queue[object]", run: _DecodeRun) -> None:
        """Decoder thread: puts Frames, then an exception or _END_OF_STREAM."""
        stop = run.stop
        try:
            import av
        except ImportError:
            self._put_waiting(out, ImportError("video sources need PyAV: pip install 'splitrt[webrtc]' (or pip install av)"),
                              stop)
            return
        try:
            produced = 0
            frame_ids = itertools.count(1)
            paced_file = self.realtime and self.format is None
            while not stop.is_set():
                with av.open(self.url, format=self.format, options=self.options) as container:
                    if not container.streams.video:
                        raise ValueError(f"{self.url} has no video stream")
                    stream = container.streams.video[0]
                    start = time.monotonic()
                    first_time: float | None = None
                    for frame in container.decode(stream):
                        if stop.is_set() or (self.max_frames is not None and produced >= self.max_frames):
                            self._put_waiting(out, _END_OF_STREAM, stop)
                            return
                        if paced_file and frame.time is not None:
                            first_time = frame.time if first_time is None else first_time
                            delay = start + (frame.time - first_time) - time.monotonic()
                            if delay > 0 and stop.wait(delay):
                                break
                        frame_id = next(frame_ids)
                        item = Frame(frame_id, frame.to_ndarray(format="rgb24"), self.clock_ms(), 0.0,
                                     f"{self.name}#{frame_id}")
                        if self.realtime:
                            self._put_latest(out, item, run)  # never blocks the decoder, never builds a backlog
                        else:
                            self._put_waiting(out, item, stop)
                        produced += 1
                if not self.loop:
                    break
            self._put_waiting(out, _END_OF_STREAM, stop)
        except Exception as exc:  # handed to the async side, which raises it
            self._put_waiting(out, exc, stop)

    async def __aiter__(self) -> AsyncIterator[Frame]:
        run = _DecodeRun()
        with self._replaced_lock:
            previous, self._run = self._run, run
        previous.stop.set()  # an earlier iteration's decoder, if still running, winds down
        loop = asyncio.get_running_loop()
        if previous.thread is not None and previous.thread.is_alive():  # let it release a camera before reopening
            await loop.run_in_executor(None, previous.thread.join, 2.0)
        items: queue.Queue[object] = queue.Queue(maxsize=1 if self.realtime else 2)
        run.thread = threading.Thread(target=self._read, args=(items, run), name="splitrt-decode", daemon=True)
        run.thread.start()
        try:
            while True:
                item = await loop.run_in_executor(None, _get_or_end, items, run.stop)
                if item is _END_OF_STREAM:
                    return
                if isinstance(item, BaseException):
                    raise item
                assert isinstance(item, Frame)
                yield item
        finally:
            run.stop.set()


_END_OF_STREAM = object()
_NO_PIXELS = np.empty((0, 0, 3), dtype=np.uint8)
_NO_PIXELS.flags.writeable = False


def _get_or_end(items: "queue.Queue[object]", stop: threading.Event) -> object:
    while True:
        try:
            return items.get(timeout=0.1)
        except queue.Empty:
            if stop.is_set():
                return _END_OF_STREAM


def video_file_source(path: str | Path, realtime: bool = False, loop: bool = False, max_frames: int | None = None) -> VideoSource:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no video file {path}")
    return VideoSource(path, realtime=realtime, loop=loop, max_frames=max_frames)


def camera_source(device: str = "/dev/video0", format: str = "v4l2", fps: int = 30, size: str = "640x480") -> VideoSource:
    """A live camera through FFmpeg's capture device (`v4l2` on Linux): always real-time."""
    return VideoSource(device, realtime=True, format=format, options={"framerate": str(fps), "video_size": size})


def write_test_clip(path: str | Path, frames: int = 30, fps: int = 30, size: tuple[int, int] = (96, 64)) -> Path:
    """Encode a short synthetic clip (moving gradient and box) with PyAV; for tests and demos without a camera."""
    import av

    path = Path(path)
    width, height = size
    with av.open(str(path), mode="w") as container:
        stream = container.add_stream("mpeg4", rate=fps)
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        ys, xs = np.mgrid[0:height, 0:width]
        for index in range(frames):
            pixels = np.empty((height, width, 3), dtype=np.uint8)
            pixels[..., 0] = (xs * 255 // max(1, width - 1) + index * 8) % 256
            pixels[..., 1] = ys * 255 // max(1, height - 1)
            pixels[..., 2] = 64
            x0 = (index * 3) % max(1, width - 16)
            pixels[8:24, x0 : x0 + 16] = 255
            for packet in stream.encode(av.VideoFrame.from_ndarray(pixels, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path
