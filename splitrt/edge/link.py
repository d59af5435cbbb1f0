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

log = logging.getLogger("splitrt.edge")


class LinkError(Exception):
    """The cloud cannot be reached or refused the handshake."""


@dataclass(frozen=True)
class CurveClientKeys:
    """CURVE keys (Z85) for a link to a service that requires them: the server's public key and our pair."""

    server_public_key: bytes
    public_key: bytes
    secret_key: bytes

    @classmethod
    def load(cls, server_public_file: str | Path, client_secret_file: str | Path) -> "CurveClientKeys":
        """From `splitrt cloud keygen` files: the server's `.key` and this client's `.key_secret`."""
        import zmq.auth

        for path in (server_public_file, client_secret_file):
            if not Path(path).is_file():
                raise LinkError(f"CURVE key file {path} not found; create keys with `splitrt cloud keygen`")
        server_public, _ = zmq.auth.load_certificate(str(server_public_file))
        public, secret = zmq.auth.load_certificate(str(client_secret_file))
        if not secret:
            raise LinkError(f"{client_secret_file} holds no secret key (use the .key_secret file)")
        return cls(server_public, public, secret)
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
        self._context = context or zmq.Context.instance()
        self._socket = self._context.socket(zmq.DEALER)
        self._socket.setsockopt(zmq.LINGER, 0)
        # Do not queue requests for a peer that is not connected: a send fails at once instead.
        self._socket.setsockopt(zmq.IMMEDIATE, 1)
        if curve is not None:  # encrypted and authenticated: the service refuses keys it does not list
            self._socket.setsockopt(zmq.CURVE_SERVERKEY, curve.server_public_key)
            self._socket.setsockopt(zmq.CURVE_PUBLICKEY, curve.public_key)
            self._socket.setsockopt(zmq.CURVE_SECRETKEY, curve.secret_key)
        self._socket.connect(endpoint)

    @property
    def is_up(self) -> bool:
        """Handshake done. This link has no heartbeats: a lost cloud shows only as failed or timed-out requests
        (use `splitrt.edge.failover.ResilientLink` for detection and reconnection)."""
        return self.welcome is not None

    def close(self) -> None:
        self._socket.close(linger=0)

    def __enter__(self) -> "CloudLink":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def handshake(self, timeout_ms: float = 5000.0) -> Welcome:
        """Send Hello until a Welcome comes back (the service may still be starting); raises LinkError."""
        deadline = time.monotonic() + timeout_ms / 1000.0
        while time.monotonic() < deadline:
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
            self.welcome = message
            return message
        raise LinkError(f"no answer from {self.endpoint} within {timeout_ms:.0f} ms; is `splitrt cloud serve` running?")

    def request(self, frames: Sequence[bytes | memoryview], frame_id: int, timeout_ms: float) -> Envelope | None:
        """Send an encoded Infer and wait for its Result or Reject; None if none came within `timeout_ms`.

        Raises LinkError if the request cannot even be sent (no connected peer).
        """
        deadline = time.monotonic() + max(0.0, timeout_ms) / 1000.0
        try:
            self._socket.send_multipart(list(frames), zmq.NOBLOCK, copy=False)
        except zmq.Again as exc:
            raise LinkError(f"not connected to {self.endpoint}") from exc
        return self._receive(
            lambda m: isinstance(m, (Result, Reject)) and m.frame_id == frame_id, deadline
        )

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
