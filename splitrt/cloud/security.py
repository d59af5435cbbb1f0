"""CURVE encryption and authentication for the gateway.

The server holds a key pair; clients are allowed by their public key, one `*.key` file each in a folder
(the format `splitrt cloud keygen` and pyzmq's `zmq.auth.create_certificates` write). The folder is
rescanned while the service runs, so adding or removing a client needs no restart.

Authentication is a ZAP handler (ZeroMQ RFC 27) in its own thread: libzmq asks it about every CURVE
handshake; a key that is not on the list is refused (the client's handshake fails, no message of it ever
reaches the gateway) and logged with the peer's address.
"""
from __future__ import annotations

import logging
import threading
import time
from pathlib import Path
from typing import Callable

import zmq
import zmq.auth

log = logging.getLogger("splitrt.cloud.security")

ZAP_ENDPOINT = "inproc://zeromq.zap.01"
ZAP_VERSION = b"1.0"


class KeyFileError(ValueError):
    """A key file is missing or unreadable; the message says which and how to make one."""


def generate_keys(folder: str | Path, name: str) -> tuple[Path, Path]:
    """Write `name.key` (public, give it to the other side) and `name.key_secret` (keep it) into `folder`."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    public_file, secret_file = zmq.auth.create_certificates(str(folder), name)
    Path(secret_file).chmod(0o600)
    return Path(public_file), Path(secret_file)


def load_secret_keys(path: str | Path) -> tuple[bytes, bytes]:
    """(public, secret) Z85 keys from a `*.key_secret` file."""
    path = Path(path)
    if not path.is_file():
        raise KeyFileError(f"CURVE secret key file {path} not found; create one with `splitrt cloud keygen`")
    try:
        public, secret = zmq.auth.load_certificate(str(path))
    except Exception as exc:
        raise KeyFileError(f"{path} is not a CURVE key file ({exc})") from None
    if not secret:
        raise KeyFileError(f"{path} holds no secret key (use the .key_secret file, not the public .key)")
    return public, secret


def load_public_key(path: str | Path) -> bytes:
    path = Path(path)
    if not path.is_file():
        raise KeyFileError(f"CURVE public key file {path} not found")
    try:
        public, _ = zmq.auth.load_certificate(str(path))
    except Exception as exc:
        raise KeyFileError(f"{path} is not a CURVE key file ({exc})") from None
    return public


def read_allow_list(folder: str | Path) -> frozenset[bytes]:
    """Z85 public keys of every readable `*.key` file in `folder`; unreadable files are logged and skipped."""
    keys = set()
    for path in sorted(Path(folder).glob("*.key")):
        try:
            keys.add(load_public_key(path))
        except KeyFileError as exc:
            log.warning("allow-list: skipped %s", exc)
    return frozenset(keys)


def _folder_stamp(folder: Path) -> tuple[tuple[str, int, int], ...]:
    try:
        return tuple(sorted((p.name, p.stat().st_mtime_ns, p.stat().st_size) for p in folder.glob("*.key")))
    except OSError:
        return ()


class ZapAuthenticator:
    """Answers libzmq's ZAP requests for one context: CURVE keys on the allow-list pass, others are refused."""

    def __init__(self, context: zmq.Context, allowed_clients_dir: str | Path, reload_interval_s: float = 2.0,
                 on_denied: Callable[[str], None] | None = None) -> None:
        self.context = context
        self.folder = Path(allowed_clients_dir)
        if not self.folder.is_dir():
            raise KeyFileError(f"allowed clients folder {self.folder} not found; put client *.key files there")
        self.reload_interval_s = reload_interval_s
        self.on_denied = on_denied
        self.allowed: frozenset[bytes] = read_allow_list(self.folder)
        self._stamp = _folder_stamp(self.folder)
        self._stop = threading.Event()
        self._bound = threading.Event()
        self._thread = threading.Thread(target=self._run, name="zap-auth", daemon=True)

    def start(self) -> None:
        self._thread.start()
        if not self._bound.wait(5):
            raise RuntimeError("the ZAP authenticator did not start")
        log.info("CURVE authentication on: %d allowed client key(s) in %s", len(self.allowed), self.folder)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(5)

    def reload(self) -> bool:
        """Re-read the folder if it changed; True if the allow-list was replaced."""
        stamp = _folder_stamp(self.folder)
        if stamp == self._stamp:
            return False
        self._stamp = stamp
        allowed = read_allow_list(self.folder)
        added, removed = len(allowed - self.allowed), len(self.allowed - allowed)
        self.allowed = allowed
        log.info("allow-list reloaded: %d key(s) (+%d, -%d)", len(allowed), added, removed,
                 extra={"event": "allow_list_reloaded", "keys": len(allowed)})
        return True

    def _run(self) -> None:
        socket = self.context.socket(zmq.REP)
        socket.setsockopt(zmq.LINGER, 0)
        socket.bind(ZAP_ENDPOINT)
        self._bound.set()
        next_reload = time.monotonic() + self.reload_interval_s
        try:
            while not self._stop.is_set():
                if socket.poll(100):
                    socket.send_multipart(self._answer(socket.recv_multipart()))
                if time.monotonic() >= next_reload:
                    self.reload()
                    next_reload = time.monotonic() + self.reload_interval_s
        finally:
            socket.close(linger=0)

    def _answer(self, request: list[bytes]) -> list[bytes]:
        if len(request) < 6:
            request_id = request[1] if len(request) > 1 else b""
            return [ZAP_VERSION, request_id, b"400", b"malformed ZAP request", b"", b""]
        version, request_id, _domain, address, _identity, mechanism = request[:6]
        credentials = request[6:]
        peer = address.decode("ascii", "replace")
        if version != ZAP_VERSION:
            return [ZAP_VERSION, request_id, b"400", b"unsupported ZAP version", b"", b""]
        if mechanism != b"CURVE" or len(credentials) != 1 or len(credentials[0]) != 32:
            self._deny(peer, f"mechanism {mechanism.decode('ascii', 'replace')} is not allowed")
            return [ZAP_VERSION, request_id, b"400", b"CURVE required", b"", b""]
        client_key = zmq.utils.z85.encode(credentials[0])
        if client_key not in self.allowed:
            self._deny(peer, f"client key {client_key.decode()} is not on the allow-list")
            return [ZAP_VERSION, request_id, b"400", b"unknown client key", b"", b""]
        return [ZAP_VERSION, request_id, b"200", b"OK", client_key, b""]

    def _deny(self, peer: str, why: str) -> None:
        log.warning("refused client at %s: %s", peer, why, extra={"event": "auth_denied", "peer": peer})
        if self.on_denied is not None:
            self.on_denied(why)


def configure_server_socket(socket: zmq.Socket, public_key: bytes, secret_key: bytes) -> None:
    """Make `socket` a CURVE server (call before bind); ZAP must be running in its context."""
    socket.setsockopt(zmq.CURVE_SERVER, 1)
    socket.setsockopt(zmq.CURVE_PUBLICKEY, public_key)
    socket.setsockopt(zmq.CURVE_SECRETKEY, secret_key)
    socket.setsockopt(zmq.ZAP_ENFORCE_DOMAIN, 0)
