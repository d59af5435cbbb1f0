"""A cloud link that survives the cloud: heartbeats, loss detection, reconnection and re-handshake.

`ResilientLink` owns one ZeroMQ DEALER socket on a background I/O thread (sockets never cross threads).
Callers on any thread hand it encoded requests and wait on a future for the reply; the I/O thread sends
heartbeats and follows `LinkHealth` (pure, in `health.py`). When the cloud is declared down, every request
still waiting fails at once with `LinkDown` (so no frame waits on a dead link), the socket is replaced
(queued messages for the dead peer are discarded, as the Lazy Pirate pattern does), and Hellos go out with
backoff until a Welcome brings the link back up; splitting then resumes by itself.

With `curve` keys every socket it makes (the first, and each replacement) is a CURVE client. A service that
refuses the security handshake (our key is not on its allow-list, or CURVE on one side only) is not retried
by libzmq; the link records why (`refusal`, also in every LinkDown and `down_reason`) and tries again with a
new socket after a backoff of its own (1 s doubling to 30 s), so a key added to the allow-list later is
picked up without a restart and a refused edge never hammers the service.

It answers to the same `request(frames, frame_id, timeout_ms)` as `CloudLink`, so `EdgeRuntime` takes either.
"""
from __future__ import annotations

import logging
import os
import queue
import threading
import time
import uuid
from concurrent.futures import Future
from concurrent.futures import TimeoutError as FutureTimeout
from typing import Callable, Sequence

import zmq
from zmq.utils.monitor import parse_monitor_message

from splitrt.edge.health import Backoff, HeartbeatConfig, LinkHealth, LinkState, Step
from splitrt.edge.link import (
    HANDSHAKE_REFUSED_EVENTS,
    CurveClientKeys,
    LinkError,
    handshake_refusal,
    log_welcome_mismatch,
    max_reply_frame_bytes,
    oversize_reject,
    welcome_mismatch,
    wrong_server_key_hint,
)
from splitrt.protocol import (
    DEFAULT_LIMITS,
    Envelope,
    Heartbeat,
    Hello,
    Limits,
    ProtocolError,
    Reject,
    Result,
    Welcome,
    decode,
    encode,
)

log = logging.getLogger("splitrt.edge.link")


class LinkDown(LinkError):
    """The cloud is (or just went) away; the request was not, or will not be, answered."""


def monotonic_ms() -> float:
    return time.monotonic() * 1000.0


StateListener = Callable[[LinkState, float], None]

# After the service refused our security handshake: try a new connection after 1 s, doubling up to 30 s.
REFUSED_RETRY_INITIAL_MS = 1000.0
REFUSED_RETRY_MAX_MS = 30_000.0


class ResilientLink:
    """Heartbeats + failover + reconnect around a DEALER socket; see the module docstring."""

    def __init__(
        self,
        endpoint: str,
        bundle_hash: str,
        config: HeartbeatConfig = HeartbeatConfig(),
        client_id: str | None = None,
        context: zmq.Context | None = None,
        limits: Limits = DEFAULT_LIMITS,
        clock_ms: Callable[[], float] = monotonic_ms,
        curve: CurveClientKeys | None = None,
    ) -> None:
        self.endpoint = endpoint
        self.curve = curve
        self.bundle_hash = bundle_hash
        self.config = config
        self.client_id = client_id or f"edge-{uuid.uuid4().hex[:8]}"
        self.limits = limits
        self.clock_ms = clock_ms
        self.welcome: Welcome | None = None
        self.rejection: Reject | None = None  # a Reject of our Hello (e.g. unknown bundle): not retried blindly
        self.refusal: str | None = None  # why the service refused our security handshake (CURVE key, mechanism)
        self.refusals = 0
        self._handshake_hint: str | None = None  # CURVE handshakes fail without a reason (wrong server key?)
        self._refused_backoff = Backoff(REFUSED_RETRY_INITIAL_MS, REFUSED_RETRY_MAX_MS)
        self._new_socket_at_ms: float | None = None  # after a refusal: when to try again on a new socket
        self.heartbeat_rtt_ms: float | None = None
        self.stale_replies = 0
        self.oversize_requests = 0  # requests not sent: over the payload limit the cloud announced
        self.heartbeats_sent = 0
        self.reconnects = 0
        self.disconnects = 0
        self._context = context or zmq.Context.instance()
        self._health = LinkHealth(config, clock_ms())
        self._listeners: list[StateListener] = []
        self._outbox: queue.SimpleQueue[tuple[list, int, Future]] = queue.SimpleQueue()
        self._pending: dict[int, Future] = {}
        self._pending_lock = threading.Lock()
        self._state_changed = threading.Condition()
        self._wake_read, self._wake_write = os.pipe()
        self._fds_closed = False
        os.set_blocking(self._wake_read, False)
        os.set_blocking(self._wake_write, False)
        self._stop = threading.Event()
        self._heartbeat_seq = 0
        self._heartbeat_sent_ms: dict[int, float] = {}
        self._thread = threading.Thread(target=self._loop, name="splitrt-link", daemon=True)
        self._started = False
        self._monitor: zmq.Socket

    # -- lifecycle -------------------------------------------------------------------------------------------
    def start(self) -> "ResilientLink":
        if not self._started:
            self._started = True
            self._thread.start()
        return self

    def close(self) -> None:
        self._stop.set()
        self._wake()
        if self._started:
            self._thread.join(5)
        self._fds_closed = True
        for fd in (self._wake_read, self._wake_write):
            try:
                os.close(fd)
            except OSError:
                pass

    def __enter__(self) -> "ResilientLink":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()

    def add_listener(self, listener: StateListener) -> None:
        """`listener(state, monotonic_ms)` runs on the I/O thread at every transition; keep it short."""
        self._listeners.append(listener)

    # -- state -----------------------------------------------------------------------------------------------
    @property
    def state(self) -> LinkState:
        return self._health.state

    @property
    def is_up(self) -> bool:
        return self._health.is_up

    @property
    def transitions(self) -> list[tuple[float, LinkState]]:
        """(monotonic ms, state) of every transition so far."""
        return list(self._health.transitions)

    @property
    def down_reason(self) -> str | None:
        """Why the link is not up, when more is known than its state: a refused handshake or Hello."""
        if self.is_up:
            return None
        if self.refusal is not None:
            return self.refusal
        if self.rejection is not None:
            return f"{self.endpoint} refused the handshake: {self.rejection.reason.value} ({self.rejection.detail})"
        return self._handshake_hint

    def wait_up(self, timeout_s: float) -> bool:
        """Block until the link is up (True), or `timeout_s` passes, or the cloud has refused our Hello or our
        security handshake (False; see `down_reason`). After a refused handshake the link keeps trying by itself
        (a key added to the allow-list later lets it in): poll `is_up` to wait for that."""
        end = time.monotonic() + timeout_s
        with self._state_changed:
            while not self.is_up and self.rejection is None and self.refusal is None:
                remaining = end - time.monotonic()
                if remaining <= 0:
                    return False
                self._state_changed.wait(remaining)
        return self.is_up

    def handshake(self, timeout_ms: float = 5000.0) -> Welcome:
        """Start the link and wait for the first Welcome, like `CloudLink.handshake`; raises LinkError."""
        self.start()
        if not self.wait_up(timeout_ms / 1000.0):
            reason = self.down_reason
            if self.refusal is not None or self.rejection is not None:
                raise LinkError(reason)
            hint = f" ({reason})" if reason else ""
            raise LinkError(
                f"no answer from {self.endpoint} within {timeout_ms:.0f} ms; is `splitrt cloud serve` running?{hint}")
        assert self.welcome is not None
        return self.welcome

    # -- requests (any thread) -------------------------------------------------------------------------------
    def submit(self, frames: Sequence[bytes | memoryview], frame_id: int) -> "Future[Envelope]":
        """Queue an encoded Infer; the future gets its Result/Reject envelope, or LinkDown."""
        future: Future[Envelope] = Future()
        if self._stop.is_set():
            future.set_exception(LinkDown(f"link to {self.endpoint} is closed"))
            return future
        if not self.is_up:
            future.set_exception(LinkDown(self._down_message()))
            return future
        too_large = oversize_reject(frames, frame_id, self.welcome, self.endpoint)
        if too_large is not None:  # never sent: the cloud announced it takes no such request
            self.oversize_requests += 1
            future.set_result(Envelope(too_large, ()))
            return future
        self._outbox.put((list(frames), frame_id, future))
        self._wake()
        return future

    def request(self, frames: Sequence[bytes | memoryview], frame_id: int, timeout_ms: float) -> Envelope | None:
        """Send and wait up to `timeout_ms`: the envelope, None on timeout; raises LinkDown if the cloud is away."""
        future = self.submit(frames, frame_id)
        try:
            return future.result(timeout=max(0.0, timeout_ms) / 1000.0)
        except FutureTimeout:
            with self._pending_lock:
                self._pending.pop(frame_id, None)
            return None

    def _down_message(self) -> str:
        reason = self.down_reason
        return f"cloud at {self.endpoint} is {self.state.value}" + (f": {reason}" if reason else "")

    # -- I/O thread ------------------------------------------------------------------------------------------
    def _wake(self) -> None:
        if self._fds_closed:
            return
        try:
            os.write(self._wake_write, b"\0")
        except (BlockingIOError, OSError):
            pass  # a wake-up is already pending, or the link is closed

    def _new_socket(self) -> zmq.Socket:
        socket = self._context.socket(zmq.DEALER)
        socket.setsockopt(zmq.LINGER, 0)
        socket.setsockopt(zmq.IMMEDIATE, 1)
        # libzmq's own TCP reconnect: every 50 ms, backing off to 100 ms (cheap on a refused port).
        socket.setsockopt(zmq.RECONNECT_IVL, 50)
        socket.setsockopt(zmq.RECONNECT_IVL_MAX, int(min(100.0, self.config.backoff_max_ms)))
        socket.setsockopt(zmq.MAXMSGSIZE, max_reply_frame_bytes(self.limits))  # a huge reply cannot fill memory
        if self.curve is not None:
            self.curve.apply(socket)
        # Hello goes out the moment a ZMTP handshake completes (a frozen peer accepts TCP but never greets);
        # a dropped connection fails the requests on it at once (a reply can never come back on another);
        # a refused security handshake is recorded and retried on a new socket (libzmq gives up on it).
        self._monitor = socket.get_monitor_socket(
            zmq.EVENT_HANDSHAKE_SUCCEEDED | zmq.EVENT_DISCONNECTED | HANDSHAKE_REFUSED_EVENTS
            | zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL)
        socket.connect(self.endpoint)
        return socket

    def _replace_socket(self, socket: zmq.Socket, poller: zmq.Poller) -> zmq.Socket:
        """A new socket (and monitor) in place of `socket`: whatever was queued for the old peer is gone."""
        self._close_socket(socket, poller)
        socket = self._new_socket()
        poller.register(socket, zmq.POLLIN)
        poller.register(self._monitor, zmq.POLLIN)
        return socket

    def _close_socket(self, socket: zmq.Socket, poller: zmq.Poller) -> None:
        poller.unregister(socket)
        poller.unregister(self._monitor)
        socket.disable_monitor()
        self._monitor.close(linger=0)
        socket.close(linger=0)

    def _loop(self) -> None:
        socket = self._new_socket()
        poller = zmq.Poller()
        poller.register(socket, zmq.POLLIN)
        poller.register(self._monitor, zmq.POLLIN)
        poller.register(self._wake_read, zmq.POLLIN)
        try:
            while not self._stop.is_set():
                now = self.clock_ms()
                socket = self._act(self._health.due(now), socket, poller, now)
                if self._new_socket_at_ms is not None and now >= self._new_socket_at_ms:
                    self._new_socket_at_ms = None
                    log.debug("trying %s again after a refused handshake", self.endpoint)
                    socket = self._replace_socket(socket, poller)
                wakeup_ms = self._health.next_wakeup_ms(self.clock_ms())
                if self._new_socket_at_ms is not None:
                    wakeup_ms = min(wakeup_ms, self._new_socket_at_ms)
                timeout_ms = max(0.0, wakeup_ms - self.clock_ms())
                events = dict(poller.poll(max(1, int(timeout_ms))))
                if self._wake_read in events:
                    try:
                        os.read(self._wake_read, 4096)
                    except BlockingIOError:
                        pass
                if self._monitor in events:
                    self._on_connected(socket)
                if socket in events:
                    self._receive(socket)
                self._send_outbox(socket)
        finally:
            self._close_socket(socket, poller)
            self._fail_pending("link closed")
            self._fail_outbox("link closed")

    def _on_connected(self, socket: zmq.Socket) -> None:
        """Connection events. Up (the cloud is back, or first reachable): say Hello at once, no backoff wait.
        Dropped: the requests sent on it cannot be answered any more; they fail now, not at their deadline, and
        the link is down until a new handshake (the cloud that answers next may be another one, with another
        bundle: its Welcome is checked again).
        Refused (security handshake): recorded, and a new socket is scheduled after a backoff."""
        dropped = False
        # The last handshake outcome among the events read counts: a success then a refusal is a refusal.
        connected = False
        refusal: str | None = None
        while True:
            try:
                event = parse_monitor_message(self._monitor.recv_multipart(zmq.NOBLOCK))
            except zmq.Again:
                break
            kind = event["event"]
            dropped |= kind == zmq.EVENT_DISCONNECTED
            refused = handshake_refusal(self.endpoint, kind, event["value"], self.curve is not None)
            if kind == zmq.EVENT_HANDSHAKE_SUCCEEDED:
                connected, refusal = True, None
            elif refused is not None:
                connected, refusal = False, refused
            if kind == zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL and self.curve is not None:
                self._handshake_hint = wrong_server_key_hint(self.endpoint)
        if connected:
            self.refusal = self._handshake_hint = self._new_socket_at_ms = None
            self._refused_backoff.reset()
        elif refusal is not None:
            self._on_refused(refusal)
        if dropped:
            self.disconnects += 1
            self._fail_pending(f"connection to {self.endpoint} dropped")
            now = self.clock_ms()
            if self._health.on_disconnected(now):
                log.warning("connection to %s closed; running frames locally until a new handshake", self.endpoint,
                            extra={"event": "link_down", "endpoint": self.endpoint})
                self._notify(LinkState.DOWN, now)
        if connected and not self.is_up:
            log.debug("connected to %s: hello", self.endpoint)
            self._try_send(socket, encode(Hello(self.client_id, self.bundle_hash)))

    def _on_refused(self, refusal: str) -> None:
        self.refusals += 1
        if refusal != self.refusal:
            log.error("%s; running frames locally, trying again with backoff", refusal,
                      extra={"event": "link_refused", "endpoint": self.endpoint})
        self.refusal = refusal
        self._new_socket_at_ms = self.clock_ms() + self._refused_backoff.next_delay_ms()
        with self._state_changed:
            self._state_changed.notify_all()

    def _act(self, steps: list[Step], socket: zmq.Socket, poller: zmq.Poller, now: float) -> zmq.Socket:
        for step in steps:
            if step is Step.SEND_HEARTBEAT:
                self._heartbeat_seq += 1
                self._heartbeat_sent_ms = {self._heartbeat_seq: now}
                self._try_send(socket, encode(Heartbeat(self._heartbeat_seq, time.time() * 1000.0)))
                self.heartbeats_sent += 1
            elif step is Step.SEND_HELLO:
                self._try_send(socket, encode(Hello(self.client_id, self.bundle_hash)))
            elif step is Step.DECLARE_DOWN:
                silent_ms = now - self._health.last_heard_ms
                log.warning("cloud at %s is down: nothing heard for %.0f ms; running frames locally", self.endpoint, silent_ms)
                self._fail_pending(f"cloud at {self.endpoint} went down (silent for {silent_ms:.0f} ms)")
                self._fail_outbox(f"cloud at {self.endpoint} went down")
                socket = self._replace_socket(socket, poller)
                self._new_socket_at_ms = None
                self._notify(LinkState.DOWN, now)
        return socket

    def _try_send(self, socket: zmq.Socket, frames: Sequence[bytes | memoryview]) -> bool:
        try:
            socket.send_multipart(list(frames), zmq.NOBLOCK, copy=False)
            return True
        except zmq.Again:
            return False  # no connected peer (yet): the next Hello/heartbeat tries again

    def _send_outbox(self, socket: zmq.Socket) -> None:
        while True:
            try:
                frames, frame_id, future = self._outbox.get_nowait()
            except queue.Empty:
                return
            if not self.is_up:
                future.set_exception(LinkDown(self._down_message()))
                continue
            with self._pending_lock:
                self._pending[frame_id] = future
            if not self._try_send(socket, frames):
                with self._pending_lock:
                    self._pending.pop(frame_id, None)
                future.set_exception(LinkDown(f"not connected to {self.endpoint}"))

    def _receive(self, socket: zmq.Socket) -> None:
        for _ in range(256):
            try:
                frames = socket.recv_multipart(zmq.NOBLOCK, copy=False)
            except zmq.Again:
                return
            now = self.clock_ms()
            try:
                envelope = decode(frames, self.limits)
            except ProtocolError as exc:
                log.warning("dropped a malformed message from %s: %s", self.endpoint, exc)
                continue
            message = envelope.message
            self._health.on_heard(now)
            if isinstance(message, Welcome):
                refusal = welcome_mismatch(message, self.bundle_hash)
                if refusal is not None:  # not this edge's cloud: the link stays down, frames run locally
                    if refusal != self.rejection:  # Hellos go on with backoff: say it once, not at each Welcome
                        log_welcome_mismatch(self.endpoint, message, refusal)
                    self.rejection = refusal
                    with self._state_changed:
                        self._state_changed.notify_all()
                    continue
                was_up = self.is_up
                self.welcome = message
                self.rejection = None
                self._health.on_welcome(now)
                if not was_up:
                    if len(self._health.transitions) > 2:
                        self.reconnects += 1
                    log.info("cloud at %s is up: %s, bundle %s", self.endpoint, message.server_id, message.bundle_hash[:19])
                    self._notify(LinkState.UP, now)
            elif isinstance(message, Heartbeat):
                sent = self._heartbeat_sent_ms.pop(message.seq, None)
                if sent is not None:
                    self.heartbeat_rtt_ms = now - sent
            elif isinstance(message, (Result, Reject)):
                if isinstance(message, Reject) and message.frame_id == -1 and not self.is_up:
                    self.rejection = message  # our Hello was refused
                    log.error("%s refused the handshake: %s (%s)", self.endpoint, message.reason.value, message.detail)
                    with self._state_changed:
                        self._state_changed.notify_all()
                    continue
                with self._pending_lock:
                    future = self._pending.pop(message.frame_id, None)
                if future is None:
                    self.stale_replies += 1
                else:
                    future.set_result(envelope)

    def _fail_pending(self, reason: str) -> None:
        with self._pending_lock:
            pending, self._pending = self._pending, {}
        for future in pending.values():
            if not future.done():
                future.set_exception(LinkDown(reason))

    def _fail_outbox(self, reason: str) -> None:
        while True:
            try:
                _, _, future = self._outbox.get_nowait()
            except queue.Empty:
                return
            future.set_exception(LinkDown(reason))

    def _notify(self, state: LinkState, now_ms: float) -> None:
        with self._state_changed:
            self._state_changed.notify_all()
        for listener in self._listeners:
            try:
                listener(state, now_ms)
            except Exception:  # a listener must not take the link down
                log.exception("link state listener failed")
