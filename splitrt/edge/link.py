"""The edge's ZeroMQ link to a tail service: a DEALER socket, a handshake, and request/reply by frame id.

Nothing here waits past the time it is given: a request whose reply does not come in time ends as a
timeout, and a late reply for an old frame is dropped when it arrives.
"""
from __future__ import annotations

import logging
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol, Sequence

import zmq
from zmq.utils.monitor import parse_monitor_message

from splitrt.protocol import (
    DEFAULT_LIMITS,
    PROTOCOL_VERSION,
    Envelope,
    Heartbeat,
    Hello,
    Limits,
    ProtocolError,
    Reject,
    RejectReason,
    Result,
    Welcome,
    decode,
    encode,
)

log = logging.getLogger("splitrt.edge")


class LinkError(Exception):
    """The cloud cannot be reached or refused the handshake."""


class CurveKeyError(LinkError, ValueError):
    """A CURVE key file of the edge is missing or unusable; `key` names which one (`client_key`, `server_public_key`)."""

    def __init__(self, key: str, message: str) -> None:
        super().__init__(message)
        self.key = key


@dataclass(frozen=True)
class CurveClientKeys:
    """CURVE keys (Z85) for a link to a service that requires them: the server's public key and our pair."""

    server_public_key: bytes
    public_key: bytes
    secret_key: bytes

    @classmethod
    def load(cls, server_public_file: str | Path, client_secret_file: str | Path) -> "CurveClientKeys":
        """From `splitrt cloud keygen` files: the server's `NAME.key` and this client's `NAME.key_secret`.

        Raises CurveKeyError naming the bad one (`server_public_key` or `client_key`)."""
        from splitrt.cloud.security import KeyFileError, load_public_key, load_secret_keys

        try:
            server_public = load_public_key(server_public_file)
        except KeyFileError as exc:
            raise CurveKeyError("server_public_key", f"{exc} (the service's public NAME.key)") from None
        try:
            public, secret = load_secret_keys(client_secret_file)
        except KeyFileError as exc:
            raise CurveKeyError("client_key", str(exc)) from None
        return cls(server_public, public, secret)

    def apply(self, socket: zmq.Socket) -> None:
        """Make `socket` a CURVE client of the server (before connect): encrypted, and authenticated by our key."""
        socket.setsockopt(zmq.CURVE_SERVERKEY, self.server_public_key)
        socket.setsockopt(zmq.CURVE_PUBLICKEY, self.public_key)
        socket.setsockopt(zmq.CURVE_SECRETKEY, self.secret_key)


# ZMTP security handshake failures, as a socket monitor reports them. libzmq does not reconnect after either
# (the session ends), so a link that sees one must make a new socket to try again.
HANDSHAKE_REFUSED_EVENTS = zmq.EVENT_HANDSHAKE_FAILED_AUTH | zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL


def wrong_server_key_hint(endpoint: str) -> str:
    """For CURVE handshakes that fail with no reason: libzmq retries them by itself, and a wrong server key is the
    usual cause."""
    return f"CURVE handshakes with {endpoint} fail: is the server public key the service's own?"


def handshake_refusal(endpoint: str, event: int, value: int, curve: bool) -> str | None:
    """Why the service refused our connection, for a HANDSHAKE_FAILED_AUTH/PROTOCOL monitor event; else None."""
    if event == zmq.EVENT_HANDSHAKE_FAILED_AUTH:
        return (f"{endpoint} refused this edge's CURVE key (ZAP status {int(value)}): its public NAME.key must be "
                "in the service's allowed_clients_dir")
    if event != zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL:
        return None
    if int(value) == zmq.PROTOCOL_ERROR_ZMTP_MECHANISM_MISMATCH:
        if curve:
            return f"{endpoint} does not use CURVE but this edge has CURVE keys (security mechanism mismatch)"
        return (f"{endpoint} requires CURVE: give this edge a client key and the service's public key "
                "(`splitrt cloud keygen`; [cloud] client_key and server_public_key, or --client-key and --server-key)")
    return f"the security handshake with {endpoint} failed (ZMTP protocol error {int(value):#x})"


class Link(Protocol):
    """What the runtime needs of a link: `CloudLink` (plain) or `ResilientLink` (heartbeats, failover)."""

    @property
    def is_up(self) -> bool: ...

    def request(self, frames: Sequence[bytes | memoryview], frame_id: int, timeout_ms: float) -> Envelope | None: ...


class CloudLink:
    def __init__(
        self,
        endpoint: str,
        bundle_hash: str,
        client_id: str | None = None,
        context: zmq.Context | None = None,
        limits: Limits = DEFAULT_LIMITS,
        curve: CurveClientKeys | None = None,
    ) -> None:
        self.endpoint = endpoint
        self.bundle_hash = bundle_hash
        self.client_id = client_id or f"edge-{uuid.uuid4().hex[:8]}"
        self.limits = limits
        self.welcome: Welcome | None = None
        self.stale_replies = 0
        self.oversize_requests = 0  # requests not sent: over the payload limit the cloud announced
        self.mismatch: Reject | None = None  # a Welcome for another bundle or protocol version: never split to it
        self._context = context or zmq.Context.instance()
        self._socket = self._context.socket(zmq.DEALER)
        self._socket.setsockopt(zmq.LINGER, 0)
        # Do not queue requests for a peer that is not connected: a send fails at once instead.
        self._socket.setsockopt(zmq.IMMEDIATE, 1)
        self._socket.setsockopt(zmq.MAXMSGSIZE, max_reply_frame_bytes(limits))
        self.curve = curve
        self._monitor: zmq.Socket | None = None
        self._handshake_failed = False
        try:
            if curve is not None:  # encrypted and authenticated: the service refuses keys it does not list
                curve.apply(self._socket)
            # A refused security handshake (key not allowed, CURVE on one side only) ends the handshake at once.
            self._monitor = self._socket.get_monitor_socket(
                HANDSHAKE_REFUSED_EVENTS | zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL)
            self._socket.connect(endpoint)
        except zmq.ZMQError as exc:  # e.g. a malformed endpoint: nothing is left open
            self.close()
            raise LinkError(f"cannot connect to {endpoint!r}: {exc}") from exc
        except BaseException:  # bad keys (CurveKeyError) and the rest: close, and let them through as they are
            self.close()
            raise

    @property
    def is_up(self) -> bool:
        """Handshake done. This link has no heartbeats: a lost cloud shows only as failed or timed-out requests
        (use `splitrt.edge.failover.ResilientLink` for detection and reconnection)."""
        return self.welcome is not None

    def close(self) -> None:
        if self._monitor is not None:
            self._socket.disable_monitor()
            self._monitor.close(linger=0)
            self._monitor = None
        self._socket.close(linger=0)

    def __enter__(self) -> "CloudLink":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def handshake(self, timeout_ms: float = 5000.0) -> Welcome:
        """Send Hello until a Welcome comes back (the service may still be starting); raises LinkError."""
        deadline = time.monotonic() + timeout_ms / 1000.0
        while time.monotonic() < deadline:
            self._check_refused()
            try:
                self._socket.send_multipart(encode(Hello(self.client_id, self.bundle_hash)), zmq.NOBLOCK)
            except zmq.Again:
                time.sleep(0.05)  # not connected yet
                continue
            envelope = self._receive(lambda m: isinstance(m, (Welcome, Reject)), min(deadline, time.monotonic() + 1.0))
            if envelope is None:
                continue
            message = envelope.message
            if isinstance(message, Reject):
                raise LinkError(f"{self.endpoint} refused the handshake: {message.reason.value} ({message.detail})")
            assert isinstance(message, Welcome)
            self.mismatch = welcome_mismatch(message, self.bundle_hash)
            if self.mismatch is not None:
                log_welcome_mismatch(self.endpoint, message, self.mismatch)
                raise LinkError(self._mismatch_message())
            self.welcome = message
            return message
        self._check_refused()
        hint = ""
        if self._handshake_failed and self.curve is not None:
            hint = f" ({wrong_server_key_hint(self.endpoint)})"
        raise LinkError(
            f"no answer from {self.endpoint} within {timeout_ms:.0f} ms; is `splitrt cloud serve` running?{hint}")

    def _check_refused(self) -> None:
        """Raise LinkError if the service refused our security handshake (see `handshake_refusal`)."""
        if self._monitor is None:
            raise LinkError(f"the link to {self.endpoint} is closed")
        while True:
            try:
                event = parse_monitor_message(self._monitor.recv_multipart(zmq.NOBLOCK))
            except zmq.Again:
                return
            if event["event"] == zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL:
                self._handshake_failed = True  # e.g. a wrong server key: libzmq retries by itself
                continue
            refusal = handshake_refusal(self.endpoint, event["event"], event["value"], self.curve is not None)
            if refusal is not None:
                raise LinkError(refusal)

    def request(self, frames: Sequence[bytes | memoryview], frame_id: int, timeout_ms: float) -> Envelope | None:
        """Send an encoded Infer and wait for its Result or Reject; None if none came within `timeout_ms`.

        Raises LinkError if the request cannot even be sent (no connected peer, or the cloud's Welcome was for
        another bundle or protocol version). A request over the payload limit the cloud announced is not sent:
        it comes back at once as a local Reject(too_large).
        """
        deadline = time.monotonic() + max(0.0, timeout_ms) / 1000.0
        if self.mismatch is not None:
            raise LinkError(self._mismatch_message())
        too_large = oversize_reject(frames, frame_id, self.welcome, self.endpoint)
        if too_large is not None:
            self.oversize_requests += 1
            return Envelope(too_large, ())
        try:
            self._socket.send_multipart(list(frames), zmq.NOBLOCK, copy=False)
        except zmq.Again as exc:
            raise LinkError(f"not connected to {self.endpoint}") from exc
        return self._receive(
            lambda m: isinstance(m, (Result, Reject)) and m.frame_id == frame_id, deadline
        )

    def _mismatch_message(self) -> str:
        assert self.mismatch is not None
        return f"not splitting to {self.endpoint}: {self.mismatch.reason.value} ({self.mismatch.detail})"

    def ping(self, seq: int, timeout_ms: float = 1000.0) -> float | None:
        """Round-trip time of a heartbeat in ms, or None."""
        sent_ms = time.time() * 1000.0
        try:
            self._socket.send_multipart(encode(Heartbeat(seq, sent_ms)), zmq.NOBLOCK)
        except zmq.Again:
            return None
        start = time.perf_counter()
        reply = self._receive(
            lambda m: isinstance(m, Heartbeat) and m.seq == seq, time.monotonic() + timeout_ms / 1000.0
        )
        return None if reply is None else (time.perf_counter() - start) * 1000.0

    def _receive(self, wanted, deadline: float) -> Envelope | None:  # type: ignore[no-untyped-def]
        while True:
            remaining_ms = (deadline - time.monotonic()) * 1000.0
            if remaining_ms <= 0 or not self._socket.poll(max(1, int(remaining_ms))):
                return None
            frames = self._socket.recv_multipart(copy=False)
            try:
                envelope = decode(frames, self.limits)
            except ProtocolError as exc:
                log.warning("dropped a malformed reply from %s: %s", self.endpoint, exc)
                continue
            if wanted(envelope.message):
                return envelope
            self.stale_replies += 1


# --------------------------------------------------------------------------- what the cloud announced


def max_reply_frame_bytes(limits: Limits) -> int:
    """MAXMSGSIZE for the edge's DEALER socket: no reply within `limits` has a larger frame, and a larger one
    makes ZeroMQ drop the connection as it arrives instead of holding it in memory."""
    return limits.max_payload_bytes + limits.max_meta_bytes + 4096


def welcome_mismatch(welcome: Welcome, bundle_hash: str) -> Reject | None:
    """Why this edge must not split to the cloud that sent `welcome` (as a Reject of the handshake), or None.

    A cloud that speaks another protocol version, or runs the tails of another bundle, would misread requests
    or compute wrong answers: the link does not come up, so frames run locally (a fallback) or end with the
    reason, as with an unreachable cloud.
    """
    if welcome.protocol_version != PROTOCOL_VERSION:
        return Reject(-1, RejectReason.VERSION_MISMATCH,
                      f"the cloud speaks protocol version {welcome.protocol_version}, this edge {PROTOCOL_VERSION}")
    if welcome.bundle_hash != bundle_hash:
        return Reject(-1, RejectReason.UNKNOWN_BUNDLE,
                      f"the cloud serves bundle {welcome.bundle_hash[:24]}, this edge runs {bundle_hash[:24]}")
    return None


def log_welcome_mismatch(endpoint: str, welcome: Welcome, refusal: Reject) -> None:
    log.error("not splitting to %s (%s): %s", endpoint, welcome.server_id, refusal.detail,
              extra={"event": "welcome_mismatch", "endpoint": endpoint, "reason": refusal.reason.value})


NOT_SENT = "not sent"  # how a Reject made on the edge, for a request that never left it, begins its detail


def oversize_reject(frames: Sequence[bytes | memoryview], frame_id: int, welcome: Welcome | None,
                    endpoint: str) -> Reject | None:
    """A local Reject(too_large) for a request whose payloads exceed what the cloud announced it takes, or None.

    Such a request is never sent: the cloud would only reject it, and far over its limit (its transport cap)
    ZeroMQ would drop the connection with no answer at all. None when the cloud announced no limit.
    """
    limit = welcome.max_payload_bytes if welcome is not None else None
    if limit is None:
        return None
    payload_bytes = sum(memoryview(frame).nbytes for frame in list(frames)[1:])
    if payload_bytes <= limit:
        return None
    log.debug("frame %d not sent to %s: %d payload bytes, over its limit of %d", frame_id, endpoint,
              payload_bytes, limit)
    return Reject(frame_id, RejectReason.TOO_LARGE,
                  f"{NOT_SENT}: {payload_bytes} payload bytes, the cloud at {endpoint} takes at most {limit}")
