"""A user-space TCP relay that adds one-way delay (and jitter) to each direction, and optionally limits
the rate of each direction with a token bucket (the "relay" emulation mode, for machines without root).

Each chunk read from one side is released to the other side at
`max(arrival + delay + jitter, previous release)`, so bytes are never reordered. Jitter is a normal
sample with standard deviation `jitter_ms`, clipped so that delay + jitter >= 0. Random loss is not
emulated: a TCP byte stream cannot lose bytes; loss belongs below TCP (an nftables rule in the edge
namespace), which only the "netns+tbf" mode can have.

The uplink can be limited two ways. With a trace (`up_trace`), every chunk's bytes are booked on the trace's
delivery opportunities (`TraceGate`, mahimahi's rule, the simulator's too) and leave at the opportunity that
carries their last byte; the relay queues them meanwhile, as mahimahi's link queue does. With a rate, a
direction's reader takes tokens (bytes) from a bucket filled at the current rate before it forwards a chunk,
so it stops reading when the link is slow and TCP back-pressure reaches the sender; `set_rate_bps` may change
the rate at any time (a `TraceFollower` calls it), 0 meaning an outage.

Threads, not asyncio: `time.sleep` and `Event.wait` keep the release times to a fraction of a millisecond.
"""
from __future__ import annotations

import collections
import itertools
import math
import random
import socket
import threading
import time
from dataclasses import dataclass
from typing import Callable

from splitrt.bench.netem.trace_gate import TraceGate
from splitrt.policies.trace import PAYLOAD_BYTES, UplinkTrace

RECV_BYTES = 64 * 1024
DEFAULT_BURST_BYTES = 16 * 1024
DEFAULT_QUEUE_BYTES = 4 * 1024 * 1024
RATE_POLL_S = 0.005
# The relay sees TCP payload; a rate means IP bytes (a trace's 1500-byte packets carry 1448 payload bytes
# with TCP timestamps), so payload is charged at 1500/1448 to give the same goodput as tbf.
WIRE_BYTES_PER_PAYLOAD_BYTE = 1500 / 1448  # how soon a rate change (or the end of an outage) is noticed


@dataclass(frozen=True)
class Direction:
    delay_ms: float = 0.0
    jitter_ms: float = 0.0


class TokenBucket:
    """Bytes that may leave; filled at `rate_bps`/8 bytes a second up to `burst_bytes`. Thread-safe rate."""

    def __init__(self, rate_bps: float, burst_bytes: int = DEFAULT_BURST_BYTES, clock: Callable[[], float] = time.monotonic) -> None:
        self.rate_bps = float(rate_bps)
        self.burst_bytes = burst_bytes
        self.clock = clock
        self._tokens = float(burst_bytes)
        self._last_s = clock()
        self._lock = threading.Lock()

    def set_rate_bps(self, rate_bps: float) -> None:
        with self._lock:
            self._refill()
            self.rate_bps = max(0.0, float(rate_bps))

    def _refill(self) -> None:
        now = self.clock()
        self._tokens = min(float(self.burst_bytes), self._tokens + (now - self._last_s) * self.rate_bps / 8)
        self._last_s = now

    def chunk_bytes(self) -> int:
        """How much a reader should take at once: ~10 ms of the current rate, 1448 B .. 90% of the burst."""
        return int(min(0.9 * self.burst_bytes, max(1448, self.rate_bps / 8 * 0.01)))

    def take(self, size_bytes: int, stop: threading.Event) -> bool:
        """Wait until `size_bytes` (<= burst) may leave and take them; False if `stop` was set meanwhile."""
        size_bytes = min(size_bytes, self.burst_bytes)
        while True:
            with self._lock:
                self._refill()
                if self._tokens >= size_bytes:
                    self._tokens -= size_bytes
                    return True
                missing = size_bytes - self._tokens
                wait_s = RATE_POLL_S if self.rate_bps <= 0 else min(RATE_POLL_S, missing * 8 / self.rate_bps)
            if stop.wait(wait_s):
                return False


class _Pipe:
    """One direction of one connection: a reader thread (bucket, release times) and a writer thread."""

    def __init__(self, src: socket.socket, dst: socket.socket, direction: Direction, bucket: TokenBucket | None,
                 gate: TraceGate | None, rng: random.Random, stop: threading.Event, on_done: Callable[[], None],
                 name: str) -> None:
        self.src, self.dst, self.direction, self.bucket, self.gate, self.rng = src, dst, direction, bucket, gate, rng
        self.stop, self.on_done = stop, on_done
        self.queue: collections.deque[tuple[float, bytes | None]] = collections.deque()
        self.queued_bytes = 0
        self.cond = threading.Condition()
        self.last_release_s = 0.0
        self.threads = [
            threading.Thread(target=self._read, name=f"{name}-read", daemon=True),
            threading.Thread(target=self._write, name=f"{name}-write", daemon=True),
        ]
        for thread in self.threads:
            thread.start()

    def _release_time(self, sent_s: float) -> float:
        delay_ms = self.direction.delay_ms
        if self.direction.jitter_ms > 0:
            delay_ms = max(0.0, delay_ms + self.rng.gauss(0.0, self.direction.jitter_ms))
        self.last_release_s = max(sent_s + delay_ms / 1000.0, self.last_release_s)
        return self.last_release_s

    def _put(self, item: bytes | None, sent_s: float) -> None:
        """Queue `item` for the far side; `sent_s` is when it left the (emulated) link, before the delay."""
        with self.cond:
            while item is not None and self.queued_bytes > DEFAULT_QUEUE_BYTES and not self.stop.is_set():
                self.cond.wait(0.1)
            self.queue.append((self._release_time(sent_s), item))
            self.queued_bytes += len(item or b"")
            self.cond.notify_all()

    def _read(self) -> None:
        try:
            while not self.stop.is_set():
                size = RECV_BYTES if self.bucket is None else self.bucket.chunk_bytes()
                data = self.src.recv(size)
                arrival_s = time.monotonic()
                if not data:
                    break
                if self.gate is not None:  # packet by packet, each when its opportunity comes
                    for offset in range(0, len(data), PAYLOAD_BYTES):
                        piece = data[offset:offset + PAYLOAD_BYTES]
                        self._put(piece, self.gate.book(len(piece), arrival_s))
                    continue
                if self.bucket is not None and not self.bucket.take(
                        math.ceil(len(data) * WIRE_BYTES_PER_PAYLOAD_BYTE), self.stop):
                    break
                self._put(data, time.monotonic())
        except OSError:
            pass
        self._put(None, time.monotonic())  # end of stream: the writer half-closes the other side

    def _write(self) -> None:
        try:
            while True:
                with self.cond:
                    while not self.queue and not self.stop.is_set():
                        self.cond.wait(0.1)
                    if self.stop.is_set():
                        return
                    release_s, data = self.queue[0]
                wait_s = release_s - time.monotonic()
                if wait_s > 0 and self.stop.wait(wait_s):
                    return
                with self.cond:
                    self.queue.popleft()
                    self.queued_bytes -= len(data or b"")
                    self.cond.notify_all()
                if data is None:
                    self.dst.shutdown(socket.SHUT_WR)
                    return
                self.dst.sendall(data)
        except OSError:
            pass
        finally:
            self.on_done()


class DelayRelay:
    """Listen on (host, port) and forward every connection to `target`, with per-direction delay, jitter
    and (optionally) a rate limit. `up` is client -> target (edge -> cloud), `down` the other way.

    The uplink follows `up_trace` (time 0 at `start_trace()`, no rate limit until then) or a rate
    (`up_rate_bps`, changed with `set_rate_bps`), not both. mode is "relay" when the relay limits the rate
    itself, "delay-only" when it only delays.
    """

    def __init__(self, target: tuple[str, int], listen: tuple[str, int] = ("127.0.0.1", 0),
                 up: Direction = Direction(), down: Direction = Direction(),
                 up_rate_bps: float | None = None, down_rate_bps: float | None = None,
                 burst_bytes: int = DEFAULT_BURST_BYTES, seed: int = 0, up_trace: UplinkTrace | None = None) -> None:
        if up_trace is not None and up_rate_bps is not None:
            raise ValueError("give the uplink a trace or a rate, not both")
        self.target = target
        self.up, self.down = up, down
        self.up_gate = None if up_trace is None else TraceGate(up_trace)
        self.up_bucket = None if up_rate_bps is None else TokenBucket(up_rate_bps, burst_bytes)
        self.down_bucket = None if down_rate_bps is None else TokenBucket(down_rate_bps, burst_bytes)
        self.rng = random.Random(seed)
        self.stop_event = threading.Event()
        self._lock = threading.Lock()
        self._sockets: set[socket.socket] = set()
        self._pipes: list[_Pipe] = []
        self._connections = itertools.count()
        self.listener = socket.create_server(listen, reuse_port=False)
        self.listener.settimeout(0.2)
        self.address: tuple[str, int] = self.listener.getsockname()[:2]
        self._accept_thread = threading.Thread(target=self._accept, name="relay-accept", daemon=True)
        self._accept_thread.start()

    @property
    def mode(self) -> str:
        return "relay" if self.up_bucket is not None or self.up_gate is not None else "delay-only"

    @property
    def endpoint(self) -> str:
        """A ZeroMQ endpoint for the listening address."""
        return f"tcp://{self.address[0]}:{self.address[1]}"

    def set_rate_bps(self, rate_bps: float) -> None:
        """Set the uplink rate (what a TraceFollower drives); needs up_rate_bps at construction."""
        if self.up_bucket is None:
            raise RuntimeError("this relay was made without up_rate_bps, so it does not limit the rate")
        self.up_bucket.set_rate_bps(rate_bps)

    def start_trace(self) -> float:
        """Time 0 of `up_trace` is now; returns the monotonic start, s."""
        if self.up_gate is None:
            raise RuntimeError("this relay was made without up_trace")
        return self.up_gate.start()

    def _accept(self) -> None:
        while not self.stop_event.is_set():
            try:
                client, _ = self.listener.accept()
            except socket.timeout:
                continue
            except OSError:
                return
            try:
                server = socket.create_connection(self.target, timeout=5)
            except OSError:
                client.close()
                continue
            for sock in (client, server):
                sock.settimeout(None)
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            self._start_connection(client, server)

    def _start_connection(self, client: socket.socket, server: socket.socket) -> None:
        remaining = [2]
        pipes: list[_Pipe] = []

        def done() -> None:
            with self._lock:
                remaining[0] -= 1
                if remaining[0] == 0:  # both directions ended: forget the connection
                    for sock in (client, server):
                        self._sockets.discard(sock)
                        sock.close()
                    for pipe in pipes:
                        if pipe in self._pipes:
                            self._pipes.remove(pipe)

        with self._lock:
            self._sockets.update((client, server))
            n = next(self._connections)
            pipes.append(_Pipe(client, server, self.up, self.up_bucket, self.up_gate, self.rng, self.stop_event, done,
                               f"relay{n}-up"))
            pipes.append(_Pipe(server, client, self.down, self.down_bucket, None, self.rng, self.stop_event, done,
                               f"relay{n}-down"))
            self._pipes.extend(pipes)

    def close(self) -> None:
        self.stop_event.set()
        self.listener.close()
        self._accept_thread.join(2)
        with self._lock:
            sockets = list(self._sockets)
            pipes = list(self._pipes)
        for sock in sockets:
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        for pipe in pipes:
            for thread in pipe.threads:
                thread.join(2)
        for sock in sockets:
            sock.close()

    def __enter__(self) -> "DelayRelay":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
