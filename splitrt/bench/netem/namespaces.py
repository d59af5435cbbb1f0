"""An emulated uplink between an edge network namespace and the root namespace (where the cloud runs).

`EmulatedLink` creates, as root, a namespace `srt<pid>n<k>` and a veth pair `srt<pid>c<k>` (root side,
the cloud's address) / `srt<pid>e<k>` (moved into the namespace, the edge's address), each with an address
in 10.231.0.0/16 (one /30 per link), MTU 1500, links up. The uplink (edge -> cloud) is shaped on the
edge-side veth's egress by an htb class (default) or a `tbf` qdisc; `set_rate_bps` changes the rate with
`tc class change` / `tc qdisc change` while traffic flows (see `EmulatedLink` for why htb is the default).
The downlink is not shaped. A rate means IP bytes, like a mahimahi trace's 1500-byte packets (the qdiscs
count Ethernet frames, so their rate is scaled by 1514/1500): TCP goodput is 1448/1500 = 96.5% of it.
The burst (16 KiB by default: about 11 packets) is what the bucket holds after an idle period; the limit
(8 MiB, deep like mahimahi's default drop-tail queue) is the queue in front of it, beyond which packets
are dropped. A 256 KiB queue made TCP lose packets in outages and back off for seconds.

This kernel has no `netem`: delay and jitter come from the user-space relay (`relay.py`); random loss,
when wanted, would come from an nftables rule (`numgen random mod 100 < P drop`) in the edge namespace,
not from the relay (a TCP byte stream has nothing to lose).

Every name carries the creating process's pid, so `cleanup_stale()` can remove what a killed process left.
Cleanup runs on `close()`, on leaving the `with` block (also on an exception), at interpreter exit
(`atexit`) and on SIGTERM (turned into SystemExit so the `finally` blocks run).
"""
from __future__ import annotations

import atexit
import itertools
import os
import re
import signal
import subprocess
import threading
from dataclasses import dataclass
from types import FrameType
from typing import Any, Sequence

from splitrt.processes import pid_alive

PREFIX = "srt"
MTU_BYTES = 1500
ETHERNET_HEADER_BYTES = 14
FRAME_BYTES_PER_IP_BYTE = (MTU_BYTES + ETHERNET_HEADER_BYTES) / MTU_BYTES
# tbf (and htb) reject a rate that rounds to 0 bytes/s, so a trace outage (0 bit/s) is represented by the
# smallest accepted rate, 8 bit/s (1 byte/s): a 1514-byte frame then waits ~190 s, i.e. nothing leaves.
MIN_TBF_RATE_BPS = 8
DEFAULT_BURST_BYTES = 16 * 1024
QDISCS = ("htb", "tbf")
# htb charges a packet once it has left, as a debt in time that a later rate change does not rescale: one
# 1514-byte frame at 8 bit/s stalls the class for its 60 s maximum, long after an outage has ended. So in
# htb mode no rate goes below one frame per 100 ms (a follower step): an outage then leaks at most one
# packet per 100 ms (121 kbit/s) instead of stalling the link for a minute.
HTB_MIN_RATE_BPS = 121_120
DEFAULT_LIMIT_BYTES = 8 * 1024 * 1024
SUBNET_PREFIX = "10.231"

_NAME_RE = re.compile(rf"^{PREFIX}(\d+)([nce])(\d+)$")
_counter = itertools.count()
_open_links: "set[EmulatedLink]" = set()
_lock = threading.RLock()  # close() may run inside __init__'s critical section


class NamespaceUnavailable(RuntimeError):
    """Network namespaces (or veth/tc) cannot be used here; the relay-only mode still works."""


def _run(argv: Sequence[str], check: bool = True, timeout_s: float = 10.0) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(list(argv), capture_output=True, text=True, timeout=timeout_s)
    if check and result.returncode != 0:
        raise RuntimeError(f"`{' '.join(argv)}` failed ({result.returncode}): {result.stderr.strip()}")
    return result


_available = False


def check_available() -> None:
    """Raise NamespaceUnavailable with what to do when this process cannot create namespaces."""
    global _available
    if _available:
        return
    if os.geteuid() != 0:
        raise NamespaceUnavailable("needs root for network namespaces; run as root or use mode='relay'")
    name = f"{PREFIX}{os.getpid()}n{next(_counter)}"
    try:
        result = _run(["ip", "netns", "add", name], check=False)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise NamespaceUnavailable(f"cannot run `ip` ({exc}); install iproute2 or use mode='relay'") from exc
    if result.returncode != 0:
        raise NamespaceUnavailable(f"`ip netns add` failed: {result.stderr.strip()}; use mode='relay'")
    _run(["ip", "netns", "delete", name], check=False)
    _available = True


def tbf_rate_bps(rate_bps: float) -> int:
    """The tbf rate for a wanted rate of IP bytes: tbf counts Ethernet frames (14 more bytes per 1500-byte
    packet), so the rate is scaled by 1514/1500; whole bits/s, at least MIN_TBF_RATE_BPS (outages too)."""
    return max(MIN_TBF_RATE_BPS, int(round(rate_bps * FRAME_BYTES_PER_IP_BYTE)))


@dataclass(frozen=True)
class LinkNames:
    namespace: str
    cloud_dev: str
    edge_dev: str

    @classmethod
    def for_index(cls, pid: int, index: int) -> "LinkNames":
        return cls(f"{PREFIX}{pid}n{index}", f"{PREFIX}{pid}c{index}", f"{PREFIX}{pid}e{index}")


def _used_subnets() -> set[int]:
    out = _run(["ip", "-o", "-4", "addr", "show"], check=False).stdout
    used = set()
    for a, b in re.findall(rf"{re.escape(SUBNET_PREFIX)}\.(\d+)\.(\d+)/", out):
        used.add(int(a) * 64 + int(b) // 4)
    return used


def _subnet_addresses(index: int) -> tuple[str, str]:
    third, fourth = divmod(index, 64)
    return f"{SUBNET_PREFIX}.{third}.{fourth * 4 + 1}", f"{SUBNET_PREFIX}.{third}.{fourth * 4 + 2}"


class EmulatedLink:
    """Edge namespace + veth pair + a rate limit on the uplink. Use as a context manager.

    `cloud_ip` is the root-namespace side (bind the cloud or the relay there), `edge_ip` the namespace side.
    `qdisc` is "htb" (default: one class, a byte-limited fifo under it) or "tbf". Both take a new rate
    while traffic flows, but `tc qdisc change` on tbf refills its bucket, so a trace followed every 100 ms
    gets one free burst per step (measured +11% at 8 Mbit/s with a 16 KiB burst); an htb class change keeps
    its tokens. `mode` ("netns+htb" / "netns+tbf") labels results.
    """

    def __init__(
        self,
        rate_bps: float = 100e6,
        burst_bytes: int = DEFAULT_BURST_BYTES,
        limit_bytes: int = DEFAULT_LIMIT_BYTES,
        qdisc: str = "htb",
    ) -> None:
        if qdisc not in QDISCS:
            raise ValueError(f"qdisc must be one of {QDISCS}, got {qdisc!r}")
        check_available()
        self.qdisc = qdisc
        self.mode = f"netns+{qdisc}"
        self.burst_bytes = max(burst_bytes, 2 * MTU_BYTES + 100)
        self.limit_bytes = max(limit_bytes, self.burst_bytes)
        self.names = LinkNames.for_index(os.getpid(), next(_counter))
        self.rate_bps = float(rate_bps)  # as asked (IP bytes); the qdisc gets tbf_rate_bps(rate_bps)
        self._closed = False
        with _lock:
            _install_exit_hooks()
            _open_links.add(self)
            used = _used_subnets()
            subnet = next(i for i in range(1, 256 * 64) if i not in used)
            self.cloud_ip, self.edge_ip = _subnet_addresses(subnet)
            try:
                self._create()
            except BaseException:
                self.close()
                raise

    def _create(self) -> None:
        n = self.names
        _run(["ip", "netns", "add", n.namespace])
        _run(["ip", "link", "add", n.cloud_dev, "type", "veth", "peer", "name", n.edge_dev, "netns", n.namespace])
        _run(["ip", "addr", "add", f"{self.cloud_ip}/30", "dev", n.cloud_dev])
        _run(["ip", "link", "set", n.cloud_dev, "mtu", str(MTU_BYTES), "up"])
        _run(["ip", "-n", n.namespace, "addr", "add", f"{self.edge_ip}/30", "dev", n.edge_dev])
        _run(["ip", "-n", n.namespace, "link", "set", n.edge_dev, "mtu", str(MTU_BYTES), "up"])
        _run(["ip", "-n", n.namespace, "link", "set", "lo", "up"])
        rate = tbf_rate_bps(self.rate_bps)
        if self.qdisc == "tbf":
            self._tbf("add", rate)
        else:
            self._tc("qdisc", "add", "root", "handle", "1:", "htb", "default", "1")
            self._htb_class("add", max(HTB_MIN_RATE_BPS, rate))
            self._tc("qdisc", "add", "parent", "1:1", "handle", "2:", "bfifo", "limit", str(self.limit_bytes))

    def _tc(self, obj: str, verb: str, *args: str) -> None:
        _run(["tc", "-n", self.names.namespace, obj, verb, "dev", self.names.edge_dev, *args])

    def _tbf(self, verb: str, rate_bps: int) -> None:
        self._tc("qdisc", verb, "root", "tbf", "rate", f"{rate_bps}bit", "burst", str(self.burst_bytes),
                 "limit", str(self.limit_bytes))

    def _htb_class(self, verb: str, rate_bps: int) -> None:
        self._tc("class", verb, "parent", "1:", "classid", "1:1", "htb", "rate", f"{rate_bps}bit",
                 "ceil", f"{rate_bps}bit", "burst", str(self.burst_bytes), "cburst", str(self.burst_bytes),
                 "quantum", str(MTU_BYTES + ETHERNET_HEADER_BYTES))

    def set_rate_bps(self, rate_bps: float) -> None:
        """Change the uplink rate now; safe while traffic flows. 0 (an outage) becomes MIN_TBF_RATE_BPS with
        tbf, and any rate below HTB_MIN_RATE_BPS becomes that with htb."""
        if self._closed:
            raise RuntimeError("link is closed")
        if self.qdisc == "tbf":
            self._tbf("change", tbf_rate_bps(rate_bps))
        else:
            self._htb_class("change", max(HTB_MIN_RATE_BPS, tbf_rate_bps(rate_bps)))
        self.rate_bps = float(rate_bps)

    def qdisc_stats(self) -> str:
        """`tc -s qdisc show` (and, for htb, `tc -s class show`) of the shaped device: rate, bytes, drops."""
        argv = ["tc", "-n", self.names.namespace, "-s"]
        text = _run([*argv, "qdisc", "show", "dev", self.names.edge_dev]).stdout
        if self.qdisc == "htb":
            text += _run([*argv, "class", "show", "dev", self.names.edge_dev]).stdout
        return text

    def command(self, argv: Sequence[str]) -> list[str]:
        """argv wrapped to run inside the edge namespace."""
        return ["ip", "netns", "exec", self.names.namespace, *argv]

    def popen(self, argv: Sequence[str], **kwargs: Any) -> "subprocess.Popen[Any]":
        """Start a subprocess inside the edge namespace (the caller waits for / ends it)."""
        return subprocess.Popen(self.command(argv), **kwargs)

    def run_in_namespace(self, argv: Sequence[str], timeout_s: float = 60.0, **kwargs: Any) -> "subprocess.CompletedProcess[Any]":
        """Run argv inside the edge namespace to completion."""
        kwargs.setdefault("capture_output", True)
        kwargs.setdefault("text", True)
        return subprocess.run(self.command(argv), timeout=timeout_s, **kwargs)

    def close(self) -> None:
        if self._closed:
            return
        _remove(self.names)  # interrupted half-way (a second Ctrl-C), the atexit hook tries again
        self._closed = True
        with _lock:
            _open_links.discard(self)

    def __enter__(self) -> "EmulatedLink":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _remove(names: LinkNames) -> None:
    """Delete a link's pieces, whatever exists of them (deleting the namespace also deletes its qdisc and
    the veth inside it, which takes the peer with it)."""
    _run(["ip", "link", "delete", names.cloud_dev], check=False)
    _run(["ip", "netns", "delete", names.namespace], check=False)


def leftovers() -> list[str]:
    """Every srt* namespace and link on this machine (whoever created it)."""
    found = []
    for line in _run(["ip", "netns", "list"], check=False).stdout.splitlines():
        if line.split() and _NAME_RE.match(line.split()[0]):
            found.append(line.split()[0])
    for name in re.findall(r"^\d+: ([^:@]+)[@:]", _run(["ip", "-o", "link", "show"], check=False).stdout, re.M):
        if _NAME_RE.match(name):
            found.append(name)
    return found


def cleanup_stale() -> list[str]:
    """Remove srt* namespaces and links whose creating process is dead; returns what was removed."""
    removed = []
    for name in leftovers():
        match = _NAME_RE.match(name)
        assert match
        pid, kind = int(match.group(1)), match.group(2)
        if pid_alive(pid):
            continue
        if kind == "n":
            _run(["ip", "netns", "delete", name], check=False)
        else:
            _run(["ip", "link", "delete", name], check=False)
        removed.append(name)
    return removed


def _close_all() -> None:
    for link in list(_open_links):
        link.close()


_hooks_installed = False


def _install_exit_hooks() -> None:
    global _hooks_installed
    if _hooks_installed:
        return
    _hooks_installed = True
    atexit.register(_close_all)
    if threading.current_thread() is threading.main_thread() and signal.getsignal(signal.SIGTERM) == signal.SIG_DFL:
        def _on_sigterm(signum: int, frame: FrameType | None) -> None:
            raise SystemExit(128 + signum)  # unwinds through the `with` blocks, then atexit runs

        signal.signal(signal.SIGTERM, _on_sigterm)
