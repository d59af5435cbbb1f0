"""The tail service: a ZeroMQ ROUTER gateway, a deadline-aware batcher, and an executor pool.

Threads and what each owns:

* the gateway (the thread that calls `serve`) owns the ROUTER socket: it validates each message (header,
  metadata, checksum; no payload decoding), answers Hello and Heartbeat at once, rejects what it cannot take
  (bounded queue, per-client in-flight limit) and hands the rest to the batcher; it forwards every reply the
  workers produce, and keeps the per-client in-flight counts (so they need no lock);
* the dispatcher owns the batcher's timing: it cuts batches when the pure `Batcher` says so, answers expired
  requests with `Reject(expired)`, and hands batches to free workers;
* workers decode payloads, run the tail (in-process ONNX Runtime, or Ray Serve) and encode the replies, which
  go back to the gateway over an inproc PUSH/PULL pair (ZeroMQ sockets never cross threads).

Every request is answered: a Result or a Reject. `stop()` (SIGTERM in the CLI) stops taking requests,
answers everything queued or running, then returns.
"""
from __future__ import annotations

import logging
import queue
import threading
import time
import uuid
from collections import Counter
from typing import Callable, Iterable

import zmq
from zmq.utils.monitor import parse_monitor_message

from splitrt.clock import wall_clock_ms
from splitrt.bundle import Bundle
from splitrt.cloud.admission import Reply, Work, admit, handshake, heartbeat_reply, reject
from splitrt.cloud.batcher import Batch, Batcher, CostModel
from splitrt.cloud.config import ConfigError, ServiceConfig
from splitrt.cloud.executor import run_batch
from splitrt.cloud.metrics import OpsServer, ServiceMetrics
from splitrt.cloud.tails import TailExecutor, TailRunner
from splitrt.protocol import (
    PROTOCOL_VERSION,
    Envelope,
    Heartbeat,
    Hello,
    Infer,
    ProtocolError,
    Reject,
    RejectReason,
    Result,
    decode,
    encode,
    peek_frame_id,
)

__all__ = ["ServiceConfig", "TailService", "wall_clock_ms"]

log = logging.getLogger("splitrt.cloud")

UNREAD_MESSAGES_PER_CLIENT = 16
QUIET_BEFORE_EXIT_S = 0.1
RECEIVE_BUFFER_BYTES = 256 * 1024
# Infers the gateway decodes before it admits them together (see `_receive`): a 125 KB request takes ~0.1 ms to
# read and check, so the first of a group waits ~1.6 ms at most for the others.
ADMIT_AT_ONCE = 16
# Connection events the gateway logs and counts (`splitrt_disconnects{event}`), read from a socket monitor.
CONNECTION_EVENTS: dict[int, str] = {
    zmq.EVENT_DISCONNECTED: "disconnected",
    zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL: "handshake_failed",
    zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL: "handshake_failed_protocol",
    zmq.EVENT_HANDSHAKE_FAILED_AUTH: "handshake_failed_auth",
}



class TailService:
    """Serve the tails of `bundles` on `config.bind` until `stop()` is called (or SIGTERM, from the CLI)."""

    def __init__(
        self,
        bundles: Iterable[Bundle],
        config: ServiceConfig = ServiceConfig(),
        clock_ms: Callable[[], float] = wall_clock_ms,
        context: zmq.Context | None = None,
        runner: TailRunner | None = None,
    ) -> None:
        self.config = config
        self.bundles = {b.content_hash: b for b in bundles}
        if not self.bundles:
            raise ValueError("the tail service needs at least one bundle")
        self.server_id = config.server_id or f"tail-{uuid.uuid4().hex[:8]}"
        self.tails: TailRunner = runner or TailExecutor(self.bundles.values(), config.intra_op_threads)
        self.clock_ms = clock_ms
        self._own_context = context is None
        self.context = context or zmq.Context()
        self.metrics = ServiceMetrics()
        self.counters: Counter[str] = Counter()
        self._counters_lock = threading.Lock()
        # Batcher state, shared by the gateway (adds) and the dispatcher (polls), under one condition.
        self._cond = threading.Condition()
        self._batcher: Batcher[Work] = Batcher(config.batch_policy(), CostModel(default_fixed_ms=0.5,
                                                                                 default_item_ms=0.5))
        self._running_requests = 0
        self.worker_count = config.worker_count  # read once: the property asks the OS for the core count
        self._free_workers = self.worker_count
        self._batches: queue.SimpleQueue[Batch[Work] | None] = queue.SimpleQueue()
        # Gateway-only state.
        self.inflight: dict[bytes, int] = {}
        self.metrics.track_inflight_clients(lambda: len(self.inflight))  # read at scrape time, off the request path
        if hasattr(self.tails, "running_replicas"):  # the Ray backend: how many replicas Serve runs now
            self.metrics.track_ray_serve_replicas(self.tails.running_replicas)
        self._stop = threading.Event()
        self._ready = threading.Event()
        self._draining = False  # gateway-only: the stop has been seen
        self.in_flight_at_stop = 0  # admitted, unanswered requests when the stop was seen (all answered after)
        self._reply_endpoint = f"inproc://splitrt-replies-{uuid.uuid4().hex}"
        self.endpoint = ""
        self.ops: OpsServer | None = None
        self.authenticator = None
        # CPU time of each thread role, for the gateway-cost measurement (seconds).
        self.cpu_s: Counter[str] = Counter()
        # Hard cap enforced by libzmq itself (the peer is dropped): far above the limit that earns a Reject.
        self._max_frame_bytes = 4 * config.max_message_bytes

    # -- lifecycle -------------------------------------------------------------------------------------------
    def stop(self) -> None:
        """Stop taking requests; requests already queued or running are still answered before `serve` returns."""
        self._stop.set()
        with self._cond:
            self._cond.notify_all()

    def wait_ready(self, timeout_s: float = 10.0) -> bool:
        return self._ready.wait(timeout_s)

    @property
    def ready(self) -> bool:
        return self._ready.is_set() and not self._stop.is_set()

    @property
    def queue_depth(self) -> int:
        """Requests queued in the batcher or running on a worker."""
        return len(self._batcher) + self._running_requests

    def _bind(self, router: zmq.Socket) -> None:
        if self.config.curve_enabled():
            from splitrt.cloud.security import ZapAuthenticator, configure_server_socket, load_secret_keys

            curve = self.config.curve
            if not curve.server_secret_key or not curve.allowed_clients_dir:
                raise ConfigError(
                    f"CURVE is {'on' if curve.mode == 'on' else 'required'} for {self.config.bind} (not loopback), "
                    "but [security].server_secret_key or [security].allowed_clients_dir is not set: create keys with "
                    "`splitrt cloud keygen --out keys --name server` and set both, or set [security].curve = \"off\""
                )
            public, secret = load_secret_keys(curve.server_secret_key)
            self.authenticator = ZapAuthenticator(self.context, curve.allowed_clients_dir, curve.reload_interval_s,
                                                  on_denied=lambda _why: self.metrics.auth_denied.inc())
            self.authenticator.start()
            configure_server_socket(router, public, secret)
        router.bind(self.config.bind)

    def serve(self) -> None:
        router = self.context.socket(zmq.ROUTER)
        router.setsockopt(zmq.LINGER, 1000)
        router.setsockopt(zmq.ROUTER_MANDATORY, 0)
        router.setsockopt(zmq.MAXMSGSIZE, self._max_frame_bytes)
        # Bounded inbound buffering per client: past this, libzmq stops reading that client's connection (TCP
        # backpressure reaches its send queue) instead of holding requests that would go stale in memory.
        # Kernel buffers are kept small too: a request never waits long unread in them, it waits at the client.
        router.setsockopt(zmq.RCVHWM, UNREAD_MESSAGES_PER_CLIENT)
        router.setsockopt(zmq.RCVBUF, RECEIVE_BUFFER_BYTES)
        # A frame over MAXMSGSIZE makes libzmq drop its connection before any of it reaches the gateway: no Reject
        # can answer it, so the connection events are watched instead (see `_connection_events`).
        monitor = router.get_monitor_socket(sum(CONNECTION_EVENTS))
        replies = self.context.socket(zmq.PULL)
        replies.bind(self._reply_endpoint)
        threads: list[threading.Thread] = []
        try:
            self._bind(router)
            self.endpoint = router.getsockopt_string(zmq.LAST_ENDPOINT)
            threads = [threading.Thread(target=self._dispatcher, name="dispatcher", daemon=True)]
            threads += [threading.Thread(target=self._worker, name=f"tail-worker-{i}", daemon=True)
                        for i in range(self.worker_count)]
            for thread in threads:
                thread.start()
            if self.config.metrics_port:
                self.ops = OpsServer(self.metrics, lambda: self.ready, self.config.metrics_bind,
                                     self.config.metrics_port)
                self.ops.start()
            log.info("serving %s on %s (%d workers, batching %s, CURVE %s)",
                     ", ".join(b.model_id for b in self.bundles.values()), self.endpoint, self.worker_count,
                     "on" if self.config.batching else "off", "on" if self.authenticator else "off",
                     extra={"event": "serving", "endpoint": self.endpoint})
            self._ready.set()
            self._loop(router, replies, monitor)
        finally:
            self._stop.set()
            with self._cond:
                self._cond.notify_all()
            for thread in threads:
                thread.join(5)
            replies.close(linger=0)
            router.disable_monitor()
            monitor.close(linger=0)
            router.close(linger=1000)
            if self.ops:
                self.ops.stop()
            if self.authenticator:
                self.authenticator.stop()
            if self._own_context:
                self.context.term()
            log.info("stopped; counters: %s", dict(self.counters), extra={"event": "stopped"})

    def _loop(self, router: zmq.Socket, replies: zmq.Socket, monitor: zmq.Socket) -> None:
        poller = zmq.Poller()
        poller.register(router, zmq.POLLIN)
        poller.register(replies, zmq.POLLIN)
        poller.register(monitor, zmq.POLLIN)
        drain_until = float("inf")
        quiet_since: float | None = None
        cpu_start_s = time.thread_time()
        while True:
            if self._stop.is_set() and not self._draining:
                self._draining = True
                drain_until = time.monotonic() + self.config.drain_timeout_s
                self.in_flight_at_stop = sum(self.inflight.values())
                log.info("stopping: draining %d queued or running requests", self.queue_depth,
                         extra={"event": "draining", "queue_depth": self.queue_depth})
            if self._draining:
                with self._cond:
                    idle = self.queue_depth == 0
                idle = idle and not self.inflight and not replies.poll(0) and not router.poll(0)
                # Requests still on their way in get their Reject too: exit only after a quiet spell.
                quiet_since = (quiet_since or time.monotonic()) if idle else None
                if (quiet_since and time.monotonic() - quiet_since >= QUIET_BEFORE_EXIT_S) or \
                        time.monotonic() > drain_until:
                    break
            events = dict(poller.poll(20 if self._draining else 100))
            if replies in events:
                self._forward_replies(replies, router)
            if router in events:
                self._receive(router)
            if monitor in events:
                self._connection_events(monitor)
            self.cpu_s["gateway"] = time.thread_time() - cpu_start_s
        if self.inflight:
            log.warning("drain timeout: %d client(s) still had requests in flight", len(self.inflight))

    # -- gateway ---------------------------------------------------------------------------------------------
    def _forward_replies(self, replies: zmq.Socket, router: zmq.Socket) -> None:
        """Pass on packed replies (see `_push_replies`): one inproc message per batch, one ROUTER send per reply."""
        for _ in range(256):
            if not replies.get(zmq.EVENTS) & zmq.POLLIN:  # cheaper than a failing recv and its exception
                return
            frames = replies.recv_multipart(copy=False)
            index = 1
            for count in frames[0].bytes:
                client = frames[index].bytes
                router.send_multipart(frames[index : index + 1 + count], copy=False)
                index += 1 + count
                left = self.inflight.get(client, 0) - 1
                if left > 0:
                    self.inflight[client] = left
                else:
                    self.inflight.pop(client, None)  # a client that is gone leaves nothing behind

    def _send(self, router: zmq.Socket, client: bytes, reply: Reply) -> None:
        self._count(reply)
        router.send_multipart([client, *encode(reply.message, reply.payloads)], copy=False)

    def _count(self, *replies: Reply) -> None:
        """Count replies in the metrics and `counters` (a batch's at once: one lock, one increment per kind)."""
        keys: Counter[str] = Counter()
        for reply in replies:
            message = reply.message
            if isinstance(message, Reject):
                keys[f"reject_{message.reason.value}"] += 1
                self.metrics.reject_counter(message.reason.value).inc()
            else:
                keys[type(message).__name__.lower()] += 1
        if keys["result"]:
            self.metrics.results.inc(keys["result"])
        with self._counters_lock:
            self.counters.update(keys)

    def _receive(self, router: zmq.Socket) -> None:
        """Read what has arrived (at most 256 messages, so replies keep flowing under load) and admit its Infers
        a few at a time: one lock and one wake-up of the dispatcher per `ADMIT_AT_ONCE` requests, not per request,
        while an idle worker waits for no more than that many decodes."""
        infers: list[tuple[bytes, Envelope]] = []
        received = 0
        for _ in range(256):
            if not router.get(zmq.EVENTS) & zmq.POLLIN:
                break
            frames = router.recv_multipart(copy=False)
            received += 1
            client, body = frames[0].bytes, frames[1:]
            envelope = self._handle(router, client, body)
            if envelope is not None:
                infers.append((client, envelope))
                if len(infers) == ADMIT_AT_ONCE:
                    self._admit(router, infers)
                    infers = []
        if received:
            with self._counters_lock:
                self.counters["requests"] += received
        if infers:
            self._admit(router, infers)

    def _connection_events(self, monitor: zmq.Socket) -> None:
        """Log and count closed connections and failed handshakes (at most 256 per poll, like `_receive`).

        A client that sends a frame over the transport cap (`zmq.MAXMSGSIZE`, 4x the message limit) is
        disconnected by libzmq before the gateway sees any of it, so it gets no Reject, and libzmq's monitor
        reports it as a plain disconnect: it cannot be told from a client that closed its socket. Every
        disconnect is therefore logged naming both causes and counted in `splitrt_disconnects{event}`.
        """
        for _ in range(256):
            try:
                event = parse_monitor_message(monitor.recv_multipart(zmq.NOBLOCK))
            except zmq.Again:
                return
            name = CONNECTION_EVENTS.get(event["event"])
            if name is None:
                continue
            self.metrics.disconnects.labels(name).inc()
            with self._counters_lock:
                self.counters[f"connection_{name}"] += 1
            endpoint = event["endpoint"].decode(errors="replace") if event["endpoint"] else self.endpoint
            if event["event"] == zmq.EVENT_DISCONNECTED:
                log.info("client connection on %s closed (by the client, or by ZeroMQ for a frame over the "
                         "transport cap of %d bytes: such a frame gets no Reject)", endpoint, self._max_frame_bytes,
                         extra={"event": "connection_closed", "endpoint": endpoint,
                                "transport_cap_bytes": self._max_frame_bytes})
            else:  # CURVE refusals are logged with their reason by the authenticator; a bare TCP connect and close
                # (a load balancer's probe, a port scan) fails the handshake with no detail: both only at debug level
                quiet = (zmq.EVENT_HANDSHAKE_FAILED_AUTH, zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL)
                log.log(logging.DEBUG if event["event"] in quiet else logging.WARNING,
                        "a client connection on %s failed its handshake (%s, code %s)", endpoint, name,
                        event["value"], extra={"event": "handshake_failed", "endpoint": endpoint,
                                               "reason": name, "code": event["value"]})

    def _answer_hello(self, client: bytes, message: Hello) -> Reply:
        """`handshake`'s answer, announcing this service's payload limit; a refused protocol version is logged."""
        reply = handshake(message, self.bundles, self.server_id, self.config.limits.max_payload_bytes)
        if isinstance(reply.message, Reject) and reply.message.reason is RejectReason.VERSION_MISMATCH:
            log.warning("client %s (%s): hello with protocol version %d, this service speaks %d", client.hex(),
                        message.client_id, message.protocol_version, PROTOCOL_VERSION,
                        extra={"event": "reject", "client": client.hex(), "client_id": message.client_id,
                               "reason": RejectReason.VERSION_MISMATCH.value})
        return reply

    def _handle(self, router: zmq.Socket, client: bytes, body: list[zmq.Frame]) -> Envelope | None:
        """Answer a message at once, or return an Infer's envelope for `_admit`."""
        try:
            envelope = decode(body, self.config.limits)
        except ProtocolError as exc:
            frame_id = peek_frame_id(body)
            self.metrics.message_counter("invalid").inc()
            log.warning("client %s: rejected frame %d: %s", client.hex(), frame_id, exc,
                        extra={"event": "reject", "client": client.hex(), "reason": exc.reason.value})
            self._send(router, client, Reply(reject(frame_id, exc.reason, exc.detail)))
            return None
        message = envelope.message
        self.metrics.message_counter(type(message).__name__.lower()).inc()
        if isinstance(message, Hello):
            reply = self._answer_hello(client, message)
            log.info("client %s (%s): hello -> %s", client.hex(), message.client_id, type(reply.message).__name__,
                     extra={"event": "hello", "client": client.hex(), "client_id": message.client_id})
            self._send(router, client, reply)
        elif isinstance(message, Heartbeat):
            self._send(router, client, heartbeat_reply(message))
        elif isinstance(message, Infer):
            return envelope
        else:
            detail = f"{type(message).__name__} is not a request"
            self._send(router, client, Reply(reject(peek_frame_id(body), RejectReason.MALFORMED, detail)))
        return None

    def _admit(self, router: zmq.Socket, infers: list[tuple[bytes, Envelope]]) -> None:
        """Queue the Infers that pass admission, in arrival order, and answer the others with their Reject.

        Decided under the batcher's lock, so each sees the queue the ones before it left, and the dispatcher
        never exits with one of them queued."""
        now_ms = self.clock_ms()
        refused: list[tuple[bytes, Reject]] = []
        queued = 0
        with self._cond:
            for client, envelope in infers:
                decision = self._decide(client, envelope, now_ms)
                if isinstance(decision, Reject):
                    refused.append((client, decision))
                    continue
                infer = decision.infer
                self._batcher.add((infer.bundle_hash, infer.split, infer.codec), decision, infer.deadline_ms, now_ms)
                self.inflight[client] = self.inflight.get(client, 0) + 1
                queued += 1
            if queued:
                self.metrics.queue_depth.set(self.queue_depth)
                self._cond.notify()
        for client, decision in refused:
            log.debug("client %s: rejected frame %d: %s (%s)", client.hex(), decision.frame_id,
                      decision.reason.value, decision.detail)
            self._send(router, client, Reply(decision))

    def _decide(self, client: bytes, envelope: Envelope, now_ms: float) -> Work | Reject:
        """Admission (see `admit`), then the batcher's estimate: a request expected to finish after its deadline
        is refused as overloaded now rather than expired later. Called under `_cond`."""
        decision = admit(envelope, client, self.bundles, now_ms, self.queue_depth, self.config.max_queue_depth,
                         client_inflight=self.inflight.get(client, 0),
                         max_inflight_per_client=self.config.max_inflight_per_client,
                         min_time_left_ms=self.config.min_time_left_ms)
        if isinstance(decision, Reject):
            return decision
        infer = decision.infer
        if self._stop.is_set():
            return reject(infer.frame_id, RejectReason.OVERLOADED, "the service is shutting down; try another replica")
        key = (infer.bundle_hash, infer.split, infer.codec)
        finish_ms = self._batcher.expected_finish_ms(key, now_ms, self.queue_depth, self.worker_count)
        if finish_ms > infer.deadline_ms:
            if self.queue_depth == 0:  # refused on the estimate alone: let it relax (see CostModel.relax)
                self._batcher.cost.relax(key)
            return reject(infer.frame_id, RejectReason.OVERLOADED,
                          f"{self.queue_depth} requests ahead: expected to finish "
                          f"{finish_ms - infer.deadline_ms:.1f} ms after the deadline")
        return decision

    # -- dispatcher ------------------------------------------------------------------------------------------
    def _dispatcher(self) -> None:
        push = self.context.socket(zmq.PUSH)
        push.connect(self._reply_endpoint)
        try:
            while True:
                with self._cond:
                    draining = self._stop.is_set()
                    now_ms = self.clock_ms()
                    decision = self._batcher.poll(now_ms, self._free_workers, flush=draining)
                    for batch in decision.batches:
                        self._free_workers -= 1
                        self._running_requests += len(batch)
                        self._batches.put(batch)
                    self.metrics.queue_depth.set(self.queue_depth)
                    if draining and len(self._batcher) == 0 and self._running_requests == 0 and not decision.expired:
                        break
                    if not decision.batches and not decision.expired:
                        timeout_s = None if decision.wake_at_ms is None else max(0.0, decision.wake_at_ms - now_ms) / 1e3
                        self._cond.wait(0.05 if draining else timeout_s)
                self._push_replies(push, [
                    (p.item, Reply(reject(p.item.infer.frame_id, RejectReason.EXPIRED,
                                          f"cannot finish before its deadline (waited {now_ms - p.item.received_ms:.1f} ms)")))
                    for p in decision.expired
                ])
                self.cpu_s["dispatcher"] = time.thread_time()
        finally:
            for _ in range(self.worker_count):
                self._batches.put(None)
            push.close(linger=1000)

    def _push_replies(self, push: zmq.Socket, replies: list[tuple[Work, Reply]]) -> None:
        """Send the replies of a batch to the gateway as one message: [counts, client, *frames, client, ...].

        `counts` holds one byte per reply: how many frames its encoded message has (at most 17).
        """
        if not replies:
            return
        now_ms = self.clock_ms()
        counts = bytearray()
        packed: list[object] = [b""]
        self._count(*(reply for _, reply in replies))
        for work, reply in replies:
            if not isinstance(reply.message, Result):
                log.debug("frame %d: %s (%s)", work.infer.frame_id, reply.message.reason.value,
                          reply.message.detail)
            self.metrics.service_ms.observe(max(0.0, now_ms - work.received_ms))
            frames = encode(reply.message, reply.payloads)
            counts.append(len(frames))
            packed.append(work.client)
            packed.extend(frames)
        packed[0] = bytes(counts)
        push.send_multipart(packed, copy=False)

    # -- workers ---------------------------------------------------------------------------------------------
    def _worker(self) -> None:
        push = self.context.socket(zmq.PUSH)
        push.connect(self._reply_endpoint)
        name = threading.current_thread().name
        try:
            while True:
                batch = self._batches.get()
                if batch is None:
                    return
                cpu_start_s = time.thread_time()
                try:
                    outcome = run_batch(batch, self.tails, self.clock_ms, lambda: self.queue_depth,
                                        self.config.min_time_left_ms)
                    replies = outcome.replies
                except Exception as exc:  # a tail that fails must not take the service down
                    log.exception("batch of %d for %s failed", len(batch), batch.key[1])
                    replies = [(p.item, Reply(reject(p.item.infer.frame_id, RejectReason.INTERNAL,
                                                     f"tail failed: {type(exc).__name__}: {exc}")))
                               for p in batch.requests]
                    outcome = None
                compute_cpu_s = time.thread_time() - cpu_start_s
                if outcome is not None and outcome.executed:
                    self.metrics.batch_size.observe(outcome.executed)
                    self.metrics.compute_ms.observe(outcome.compute_ms)
                    if outcome.expired_executed:
                        self.metrics.expired_executed.inc(outcome.expired_executed)
                    for pending in batch.requests:
                        self.metrics.queue_ms.observe(max(0.0, outcome.started_ms - pending.arrival_ms))
                with self._cond:
                    if outcome is not None and outcome.executed:
                        self._batcher.cost.observe(batch.key, outcome.executed, outcome.compute_ms)
                    self._running_requests -= len(batch)
                    self._free_workers += 1
                    self._cond.notify()
                self._push_replies(push, replies)
                with self._counters_lock:
                    self.cpu_s["worker_compute"] += compute_cpu_s
                    self.cpu_s[f"worker:{name}"] = time.thread_time()
                    self.counters["batches"] += 1
                    self.counters["executed"] += outcome.executed if outcome else 0
                    self.counters["expired_executed"] += outcome.expired_executed if outcome else 0
        finally:
            push.close(linger=1000)

    def cpu_totals(self) -> dict[str, float]:
        """Cumulative CPU seconds by role, and the number of answered requests; diff two for a window.

        `gateway_s` is everything but payload decode and tail compute: the I/O thread (receive, validate,
        admit, forward), the dispatcher (batching decisions), and the workers' reply encoding and sending.
        """
        with self._counters_lock:
            answered = self.counters["result"] + sum(v for k, v in self.counters.items() if k.startswith("reject_"))
            workers = sum(v for k, v in self.cpu_s.items() if k.startswith("worker:"))
            compute = self.cpu_s["worker_compute"]
            io, dispatch = self.cpu_s["gateway"], self.cpu_s["dispatcher"]
        return {"answered": float(answered), "io_s": io, "dispatcher_s": dispatch,
                "worker_other_s": max(0.0, workers - compute), "decode_and_tail_s": compute,
                "gateway_s": io + dispatch + max(0.0, workers - compute)}
