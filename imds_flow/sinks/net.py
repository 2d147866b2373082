"""Network sinks: UDP (one datagram per alert, best effort) and spooled TCP / Fluent forward.

Rules: a spooled sink never blocks the caller on the network: write_alerts appends to its on-disk
spool and returns; one thread per sink takes chunks from the spool in order, sends them, and commits
a chunk only once it is confirmed (Fluent: the server's ack of the chunk id; TCP: the receiver's
kernel acknowledged every byte, SIOCOUTQ = 0). A failed chunk is sent again after a reconnect with
exponential backoff. close() delivers for at most drain_seconds and leaves the rest on disk.
A connection may be TLS (tls.py: wrapped right after connect, unless the protocol starts TLS itself, as
NATS does after its INFO) and may open with the protocol's handshake (Fluent shared key, NATS CONNECT).
"""
from __future__ import annotations

import fcntl
import functools
import logging
import os
import select
import socket
import ssl
import struct
import termios
import threading
import time
import weakref

import msgpack

from ..ratelimit import RateLimit
from . import fluent
from .spool import Chunk, Spool
from .tls import Tls, readable, recv_now

__all__ = ["UdpSink", "SpooledSink", "StreamProtocol", "ForwardProtocol"]

log = logging.getLogger("imds_flow")

_TCP_CLOSE = 7                                # tcpi_state of a connection that was reset or closed
BACKOFF_MIN, BACKOFF_MAX = 0.1, 30.0
CHUNK_RECORDS, CHUNK_BYTES = 512, 1 << 20


class UdpSink:
    """Each alert one datagram to host:port; a datagram the kernel refuses is counted as dropped."""

    kind = "udp"

    def __init__(self, name: str, host: str, port: int):
        self.name = name
        family, stype, proto, _, addr = socket.getaddrinfo(host, port, type=socket.SOCK_DGRAM)[0]
        self.sock = socket.socket(family, stype, proto)
        self.sock.setblocking(False)
        self.sock.connect(addr)
        self.sent = 0
        self.dropped = 0
        self.spooled = 0
        self.spool_bytes = 0
        self._warn = RateLimit(30.0)
        self._failing = False

    def write_alerts(self, alerts: list[bytes]) -> None:
        for a in alerts:
            try:
                self.sock.send(a)
                self.sent += 1
            except OSError as e:              # refused (ICMP port unreachable), too large, buffer full
                self.dropped += 1
                self._failing = True
                self._warn.log(logging.WARNING, "%s: alert datagram dropped: %s", self.name, e.strerror or e)
            else:
                if self._failing:
                    self._failing = False
                    log.info("%s: sending again (%d alert datagram(s) dropped in all)", self.name, self.dropped)
                    self._warn.reset()

    def flush(self) -> None:
        pass

    def close(self) -> None:
        self.sock.close()


def _outq(sock: socket.socket) -> int:
    """Bytes written but not yet acknowledged by the receiver's kernel (Linux SIOCOUTQ)."""
    return struct.unpack("i", fcntl.ioctl(sock.fileno(), termios.TIOCOUTQ, b"\0\0\0\0"))[0]


def _raise_if_broken(sock: socket.socket, closed_too: bool = True) -> None:
    err = sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
    if err:
        raise OSError(err, os.strerror(err))
    if closed_too and sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, 1)[0] == _TCP_CLOSE:
        raise ConnectionResetError("connection closed by the receiver")


def wait_acknowledged(sock: socket.socket, deadline: float) -> bool:
    """Until the receiver's kernel has acknowledged every byte sent; True if the receiver closed its
    side meanwhile (what it was sent still reaches it: a half-closed receiver keeps reading).

    A reset is a pending error (SO_ERROR) and purges the send queue, so it is checked first; an empty
    queue then means every byte was acknowledged, even if the receiver closed right after (a chunk
    it took must not be sent again: that would duplicate it)."""
    eof = False
    while True:
        _raise_if_broken(sock, closed_too=False)
        if _outq(sock) == 0:
            return eof
        _raise_if_broken(sock)
        if time.monotonic() > deadline:
            raise TimeoutError("the receiver did not take the data in time")
        if eof:
            time.sleep(0.005)
        elif readable(sock, 0.005):
            eof = recv_now(sock) == b""        # a stream receiver sends nothing; what it sends is ignored


class StreamProtocol:
    """TCP: the alerts as the format wrote them, one after another (msgpack maps or JSON lines)."""

    kind = "tcp"

    def record(self, alert: bytes) -> bytes:
        return alert

    def send(self, sock: socket.socket, records: list[bytes], deadline: float) -> bool:
        sock.sendall(b"".join(records))
        return wait_acknowledged(sock, deadline)


class ForwardProtocol:
    """Fluent forward: one Forward mode message per chunk; with require_ack, a chunk counts as
    delivered only when the server acknowledges its chunk id."""

    kind = "fluent"

    def __init__(self, tag: str, fmt: str, require_ack: bool = True, use_event_time: bool = True,
                 shared_key: str = "", self_hostname: str = ""):
        self.tag, self.fmt, self.require_ack, self.use_event_time = tag, fmt, require_ack, use_event_time
        self.shared_key = shared_key
        self.self_hostname = self_hostname or socket.gethostname()

    def handshake(self, sock: socket.socket, deadline: float) -> None:
        """With a shared key: the server's HELO, our PING, its PONG (which proves it knows the key)."""
        if self.shared_key:
            fluent.handshake(sock, self.shared_key, self.self_hostname, deadline)

    def record(self, alert: bytes) -> bytes:
        return fluent.entry(alert, self.fmt, self.use_event_time)

    def send(self, sock: socket.socket, records: list[bytes], deadline: float) -> bool:
        chunk = fluent.new_chunk_id() if self.require_ack else None
        sock.sendall(fluent.message(self.tag, records, chunk))
        if chunk is None:
            return wait_acknowledged(sock, deadline)
        unpacker = msgpack.Unpacker(raw=False)
        while True:
            reply = fluent.next_message(sock, unpacker, deadline, f"ack for chunk {chunk}")
            if isinstance(reply, dict) and reply.get("ack") == chunk:
                return False


def _close_in_child(ref) -> None:
    """After fork: the child must not hold the parent's connection open (no FIN would be sent)."""
    sink = ref()
    if sink is not None and sink._sock is not None:
        try:
            os.close(sink._sock.detach())
        except OSError:
            pass
        sink._sock = None


class SpooledSink:
    """write_alerts -> spool (never waits for the network) -> delivery thread -> host:port."""

    def __init__(self, name: str, host: str, port: int, spool: Spool, protocol, timeout: float = 30.0,
                 drain_seconds: float = 5.0, tls: Tls | None = None):
        self.name = name
        self.tls = tls
        self.kind = protocol.kind
        self.host, self.port = host, port
        self.spool = spool
        self.protocol = protocol
        self.timeout = timeout
        self.drain_seconds = drain_seconds
        self.connects = 0                     # connections made (a reconnect after an outage counts)
        self._sock: socket.socket | None = None
        self._sock_lock = threading.Lock()
        self._closing = threading.Event()     # deliver what is left, then stop
        self._stop = threading.Event()        # stop now
        self._warn = RateLimit(30.0)      # at most one warning per 30 s while delivery fails
        os.register_at_fork(after_in_child=functools.partial(_close_in_child, weakref.ref(self)))
        self._thread = threading.Thread(target=self._run, name=f"imds-flow {name}", daemon=True)
        self._thread.start()

    # --- counters for the metrics endpoint -------------------------------------------------------

    @property
    def sent(self) -> int:
        return self.spool.delivered

    @property
    def spooled(self) -> int:
        return self.spool.appended

    @property
    def dropped(self) -> int:
        return self.spool.dropped

    @property
    def spool_bytes(self) -> int:
        return self.spool.bytes

    @property
    def errors(self) -> int:
        return self.spool.errors

    @property
    def connected(self) -> bool:
        return self._sock is not None

    # --- the sink protocol -----------------------------------------------------------------------

    def write_alerts(self, alerts: list[bytes]) -> None:
        if alerts:
            self.spool.append([self.protocol.record(a) for a in alerts])

    def flush(self) -> None:
        pass

    def close(self) -> None:
        """Deliver for at most drain_seconds, then stop; what is left stays in the spool for the next start."""
        self._closing.set()
        self.spool.notify()
        self._thread.join(self.drain_seconds)
        if self._thread.is_alive():
            self._stop.set()
            self._abort()
            self.spool.notify()
            self._thread.join(5.0)
        left = self.spool.records
        if left:
            log.warning("%s: %d alert(s) not delivered to %s:%d stay in %s for the next start", self.name, left,
                        self.host, self.port, self.spool.directory)
        self.spool.close()

    # --- the delivery thread ---------------------------------------------------------------------

    def _run(self) -> None:
        backoff = BACKOFF_MIN
        while not self._stop.is_set():
            chunk = self.spool.peek(CHUNK_RECORDS, CHUNK_BYTES)
            if chunk is None:
                if self._closing.is_set():
                    break
                self.spool.wait(0.5)
                continue
            try:
                self._deliver(chunk)
            except (OSError, ValueError) as e:       # ValueError: a reply that is not msgpack
                self._disconnect()
                if self._stop.is_set():
                    break
                self._warn.log(logging.WARNING, "%s: %s:%d: %s; %d alert(s) spooled, retrying", self.name,
                           self.host, self.port, e, self.spool.records)
                if self._stop.wait(backoff):
                    break
                backoff = min(backoff * 2, BACKOFF_MAX)
                continue
            if backoff > BACKOFF_MIN:             # an outage ended: the next one is reported at once
                log.info("%s: %s:%d: delivering again; %d alert(s) spooled", self.name, self.host, self.port,
                         self.spool.records)
                self._warn.reset()
            backoff = BACKOFF_MIN
        self._disconnect()

    def _deliver(self, chunk: Chunk) -> None:
        if self._sock is None or self._peer_gone():
            self._disconnect()
            self._connect()
        peer_closed = self.protocol.send(self._sock, chunk.records, time.monotonic() + self.timeout)
        self.spool.commit(chunk)
        if peer_closed:                       # the receiver is going away: reconnect for the next chunk
            self._disconnect()

    def _connect(self) -> None:
        sock = socket.create_connection((self.host, self.port), timeout=self.timeout)
        try:
            if self.tls is not None and not getattr(self.protocol, "wraps_tls", False):
                sock = self.tls.wrap(sock)
            handshake = getattr(self.protocol, "handshake", None)
            if handshake is not None:         # may return the socket it made (TLS started within it)
                sock = handshake(sock, time.monotonic() + self.timeout) or sock
        except BaseException:
            sock.close()
            raise
        with self._sock_lock:
            self._sock = sock
        log.info("%s: connected to %s:%d; %d alert(s) spooled", self.name, self.host, self.port, self.spool.records)
        self.connects += 1

    def _peer_gone(self) -> bool:
        """The receiver closed (or reset) the connection since the last chunk."""
        try:
            if isinstance(self._sock, ssl.SSLSocket):   # TLS cannot peek: what the receiver sent is read and ignored
                return readable(self._sock, 0) and recv_now(self._sock) == b""
            return bool(select.select([self._sock], [], [], 0)[0]) and \
                not self._sock.recv(65536, socket.MSG_PEEK | socket.MSG_DONTWAIT)
        except OSError:
            return True

    def _disconnect(self) -> None:
        with self._sock_lock:
            sock, self._sock = self._sock, None
        if sock is not None:
            sock.close()

    def _abort(self) -> None:
        """From close(): wake the thread out of a send or a wait for an ack."""
        with self._sock_lock:
            if self._sock is not None:
                try:
                    self._sock.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
