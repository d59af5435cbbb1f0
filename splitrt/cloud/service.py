"""The tail service's I/O: a ROUTER socket for any number of edge clients, worker threads for the tails.

The main thread owns the ROUTER socket: it decodes each request, answers handshakes and heartbeats at once,
rejects what it cannot take, and queues the rest. Workers run tails and hand replies back over an inproc
PUSH/PULL pair (ZeroMQ sockets never cross threads). Every request is answered: a Result or a Reject.
"""
from __future__ import annotations

import logging
import queue
import threading
import time
import uuid
from collections import Counter
from dataclasses import dataclass
from typing import Callable, Iterable

import zmq

from splitrt.bundle import Bundle
from splitrt.cloud.admission import Reply, Work, admit, execute, handshake, heartbeat_reply, reject
from splitrt.cloud.tails import TailExecutor
from splitrt.protocol import (
    DEFAULT_LIMITS,
    Heartbeat,
    Hello,
    Infer,
    Limits,
    ProtocolError,
    Reject,
    RejectReason,
    decode,
    encode,
    peek_frame_id,
)

log = logging.getLogger("splitrt.cloud")


def wall_clock_ms() -> float:
    return time.time() * 1000.0


@dataclass(frozen=True)
class ServiceConfig:
    bind: str = "tcp://127.0.0.1:5555"
    workers: int = 1
    intra_op_threads: int = 1
    max_queue_depth: int = 64
    limits: Limits = DEFAULT_LIMITS
    server_id: str = ""


class TailService:
    """Serve the tails of `bundles` on `config.bind` until `stop()` is called (or SIGTERM, from the CLI)."""

    def __init__(
        self,
        bundles: Iterable[Bundle],
        config: ServiceConfig = ServiceConfig(),
        clock_ms: Callable[[], float] = wall_clock_ms,
        context: zmq.Context | None = None,
    ) -> None:
        self.config = config
        self.bundles = {b.content_hash: b for b in bundles}
        if not self.bundles:
            raise ValueError("the tail service needs at least one bundle")
        self.server_id = config.server_id or f"tail-{uuid.uuid4().hex[:8]}"
        self.tails = TailExecutor(self.bundles.values(), config.intra_op_threads)
        self.clock_ms = clock_ms
        self.context = context or zmq.Context.instance()
        self.counters: Counter[str] = Counter()
        self._counters_lock = threading.Lock()
        self._work: queue.Queue[Work | None] = queue.Queue()
        self._busy = 0
        self._busy_lock = threading.Lock()
        self._stop = threading.Event()
        self._ready = threading.Event()
        self._reply_endpoint = f"inproc://splitrt-replies-{uuid.uuid4().hex}"
        self.endpoint = ""
        # Hard cap enforced by libzmq itself (the peer is dropped): far above the limit that earns a Reject.
        self._max_message_bytes = 4 * (config.limits.max_payload_bytes + config.limits.max_meta_bytes) + 4096

    # -- lifecycle -------------------------------------------------------------------------------------------
    def stop(self) -> None:
        """Stop taking requests; requests already queued are still answered before `serve` returns."""
        self._stop.set()

    def wait_ready(self, timeout_s: float = 10.0) -> bool:
        return self._ready.wait(timeout_s)

    @property
    def queue_depth(self) -> int:
        return self._work.qsize() + self._busy

    def serve(self) -> None:
        router = self.context.socket(zmq.ROUTER)
        router.setsockopt(zmq.LINGER, 1000)
        router.setsockopt(zmq.ROUTER_MANDATORY, 0)
        router.setsockopt(zmq.MAXMSGSIZE, self._max_message_bytes)
        router.bind(self.config.bind)
        self.endpoint = router.getsockopt_string(zmq.LAST_ENDPOINT)
        replies = self.context.socket(zmq.PULL)
        replies.bind(self._reply_endpoint)
        workers = [
            threading.Thread(target=self._worker, name=f"tail-worker-{i}", daemon=True)
            for i in range(self.config.workers)
        ]
        for worker in workers:
            worker.start()
        poller = zmq.Poller()
        poller.register(router, zmq.POLLIN)
        poller.register(replies, zmq.POLLIN)
        log.info("serving %s on %s (%d workers)", ", ".join(b.model_id for b in self.bundles.values()), self.endpoint, len(workers))
        self._ready.set()
        try:
            while not self._stop.is_set():
                events = dict(poller.poll(100))
                if replies in events:
                    self._forward_replies(replies, router)
                if router in events:
                    self._receive(router)
            log.info("stopping: draining %d queued or running requests", self.queue_depth)
            for _ in workers:
                self._work.put(None)
            while any(w.is_alive() for w in workers) or replies.poll(0):
                if replies.poll(50):
                    self._forward_replies(replies, router)
            for worker in workers:
                worker.join()
        finally:
            replies.close(linger=0)
            router.close()
            log.info("stopped; counters: %s", dict(self.counters))

    # -- main thread -----------------------------------------------------------------------------------------
    def _forward_replies(self, replies: zmq.Socket, router: zmq.Socket) -> None:
        while True:
            try:
                frames = replies.recv_multipart(zmq.NOBLOCK, copy=False)
            except zmq.Again:
                return
            router.send_multipart(frames, copy=False)

    def _send(self, router: zmq.Socket, client: bytes, reply: Reply) -> None:
        self._count(reply)
        router.send_multipart([client, *encode(reply.message, reply.payloads)], copy=False)

    def _count(self, reply: Reply) -> None:
        message = reply.message
        key = f"reject_{message.reason.value}" if isinstance(message, Reject) else type(message).__name__.lower()
        with self._counters_lock:
            self.counters[key] += 1

    def _receive(self, router: zmq.Socket) -> None:
        for _ in range(256):  # bounded batch per poll, so replies keep flowing under load
            try:
                frames = router.recv_multipart(zmq.NOBLOCK, copy=False)
            except zmq.Again:
                return
            client, body = frames[0].bytes, frames[1:]
            with self._counters_lock:
                self.counters["requests"] += 1
            self._handle(router, client, body)

    def _handle(self, router: zmq.Socket, client: bytes, body: list[zmq.Frame]) -> None:
        try:
            envelope = decode(body, self.config.limits)
        except ProtocolError as exc:
            frame_id = peek_frame_id(body)
            log.warning("client %s: rejected frame %d: %s", client.hex(), frame_id, exc)
            self._send(router, client, Reply(reject(frame_id, exc.reason, exc.detail)))
            return
        message = envelope.message
        if isinstance(message, Hello):
            reply = handshake(message, self.bundles, self.server_id)
            log.info("client %s (%s): hello -> %s", client.hex(), message.client_id, type(reply.message).__name__)
            self._send(router, client, reply)
        elif isinstance(message, Heartbeat):
            self._send(router, client, heartbeat_reply(message))
        elif isinstance(message, Infer):
            decision = admit(
                envelope, client, self.bundles, self.clock_ms(), self.queue_depth, self.config.max_queue_depth
            )
            if isinstance(decision, Reject):
                log.warning("client %s: rejected frame %d: %s (%s)", client.hex(), decision.frame_id, decision.reason.value, decision.detail)
                self._send(router, client, Reply(decision))
            else:
                self._work.put(decision)
        else:
            detail = f"{type(message).__name__} is not a request"
            self._send(router, client, Reply(reject(peek_frame_id(body), RejectReason.MALFORMED, detail)))

    # -- workers ---------------------------------------------------------------------------------------------
    def _worker(self) -> None:
        push = self.context.socket(zmq.PUSH)
        push.connect(self._reply_endpoint)
        try:
            while True:
                work = self._work.get()
                if work is None:
                    return
                with self._busy_lock:
                    self._busy += 1
                try:
                    reply = execute(work, self.tails, self.clock_ms, self.queue_depth)
                except Exception as exc:  # a tail that fails must not take the service down
                    log.exception("frame %d: tail failed", work.infer.frame_id)
                    reply = Reply(reject(work.infer.frame_id, RejectReason.INTERNAL, f"tail failed: {exc}"))
                finally:
                    with self._busy_lock:
                        self._busy -= 1
                if isinstance(reply.message, Reject):
                    log.warning("frame %d: %s (%s)", work.infer.frame_id, reply.message.reason.value, reply.message.detail)
                self._count(reply)
                push.send_multipart([work.client, *encode(reply.message, reply.payloads)], copy=False)
        finally:
            push.close(linger=1000)
