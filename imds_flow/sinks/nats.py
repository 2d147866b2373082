"""NATS: the client protocol (a few lines of text over TCP) and JetStream's acknowledged publish.

Rules: the server speaks first (INFO); we answer CONNECT and PING and wait for PONG (TLS, when the sink
has it, starts right after INFO, as NATS does it). With jetstream = true every alert is published with a
reply subject and a Nats-Msg-Id header (a digest of the alert, so a chunk sent again after a failure is
deduplicated by the stream within its duplicate window) and counts as delivered only when the stream
acknowledged it ({"stream": ..., "seq": n}). Without JetStream, a chunk counts once the server answered
the PING sent after it (the server took it; core NATS does not store). A server PING is answered at once.
"""
from __future__ import annotations

import hashlib
import json
import os
import socket
import time

from .tls import Tls, readable, recv_now

__all__ = ["NatsProtocol", "NatsError", "NatsConnection"]

_ID = 32                                     # bytes of the message id stored before each record


class NatsError(ConnectionError):
    """The server said -ERR, or JetStream refused or did not take a message."""


class NatsConnection:
    """One client connection on a connected socket: handshake(), then publish / request."""

    def __init__(self, sock: socket.socket, name: str = "imds-flow", tls: Tls | None = None):
        self.sock, self.name, self.tls = sock, name, tls
        self.buf = b""
        self.info: dict = {}
        self._inbox = "_INBOX." + os.urandom(8).hex()
        self._subscribed = False
        self._next = 0

    # --- reading ---------------------------------------------------------------------------------

    def _fill(self, deadline: float) -> None:
        left = deadline - time.monotonic()
        if left <= 0:
            raise TimeoutError("the NATS server did not answer in time")
        if not readable(self.sock, min(left, 0.5)):
            return
        data = recv_now(self.sock)
        if data == b"":
            raise ConnectionResetError("closed by the NATS server")
        if data:
            self.buf += data

    def _frame(self, deadline: float):
        """The next protocol frame: (op, args, payload or None). Answers PING itself."""
        while True:
            end = self.buf.find(b"\r\n")
            if end < 0:
                self._fill(deadline)
                continue
            line = self.buf[:end].decode("utf-8", "replace")
            op, _, args = line.partition(" ")
            op = op.upper()
            if op in ("MSG", "HMSG"):
                size = int(args.split()[-1])
                while len(self.buf) < end + 2 + size + 2:
                    self._fill(deadline)
                payload = self.buf[end + 2:end + 2 + size]
                self.buf = self.buf[end + 2 + size + 2:]
                return op, args, payload
            self.buf = self.buf[end + 2:]
            if op == "PING":
                self.sock.sendall(b"PONG\r\n")
                continue
            if op == "-ERR":
                raise NatsError(f"NATS server: {args.strip(chr(39))}")
            if op in ("+OK", ""):
                continue
            return op, args, None

    # --- handshake -------------------------------------------------------------------------------

    def handshake(self, deadline: float) -> socket.socket:
        op, args, _ = self._frame(deadline)
        if op != "INFO":
            raise NatsError(f"expected INFO from a NATS server, got {op!r:.40}")
        self.info = json.loads(args)
        if self.tls is not None:
            self.sock = self.tls.wrap(self.sock)
        elif self.info.get("tls_required"):
            raise NatsError("the NATS server requires TLS: set tls = true")
        connect = {"verbose": False, "pedantic": False, "tls_required": self.tls is not None, "name": self.name,
                   "lang": "python", "version": "imds-flow", "protocol": 1, "headers": True, "no_responders": True}
        self.sock.sendall(b"CONNECT " + json.dumps(connect).encode() + b"\r\nPING\r\n")
        op, args, _ = self._frame(deadline)
        if op != "PONG":
            raise NatsError(f"expected PONG, got {op} {args}")
        return self.sock

    # --- publishing ------------------------------------------------------------------------------

    def _subscribe_once(self) -> bytes:
        """The SUB for this connection's reply inbox, the first time only: it goes out in the same write
        as the first publish, as a separate small write Nagle would hold ~40 ms for the server's
        delayed ACK (the first publish after every connect waited that long)."""
        if self._subscribed:
            return b""
        self._subscribed = True
        return f"SUB {self._inbox}.* 1\r\n".encode()

    def _reply(self) -> str:
        self._next += 1
        return f"{self._inbox}.{self._next}"

    def publish_acked(self, subject: str, messages: list[tuple[bytes, bytes]], deadline: float) -> None:
        """JetStream: publish (message id, payload) pairs, then wait until the stream acknowledged each."""
        replies, out = {}, [self._subscribe_once()]
        for msg_id, payload in messages:
            reply = self._reply()
            replies[reply] = None
            headers = b"NATS/1.0\r\nNats-Msg-Id: " + msg_id + b"\r\n\r\n"
            out.append(f"HPUB {subject} {reply} {len(headers)} {len(headers) + len(payload)}\r\n".encode()
                       + headers + payload + b"\r\n")
        self.sock.sendall(b"".join(out))
        waiting = len(replies)
        while waiting:
            op, args, payload = self._frame(deadline)
            if op not in ("MSG", "HMSG"):
                continue
            parts = args.split()
            if parts[0] not in replies or replies[parts[0]] is not None:
                continue                      # an ack for an earlier, abandoned attempt
            if op == "HMSG":
                hlen = int(parts[-2])
                status = payload[:hlen].split(b"\r\n", 1)[0].decode(errors="replace")
                if " 503" in status:
                    raise NatsError(f"no JetStream stream holds subject {subject} (create one, see the README)")
                raise NatsError(f"JetStream answered {status}")
            ack = json.loads(payload)
            if "error" in ack:
                raise NatsError(f"JetStream refused a message: {ack['error'].get('description', ack['error'])}")
            replies[parts[0]] = ack
            waiting -= 1

    def publish(self, subject: str, payloads: list[bytes], deadline: float) -> None:
        """Core NATS: publish, then PING; the PONG says the server took everything before it."""
        self.sock.sendall(b"".join(f"PUB {subject} {len(p)}\r\n".encode() + p + b"\r\n" for p in payloads)
                          + b"PING\r\n")
        while self._frame(deadline)[0] != "PONG":
            pass

    def request(self, subject: str, payload: bytes, deadline: float) -> bytes:
        reply = self._reply()
        self.sock.sendall(self._subscribe_once() + f"PUB {subject} {reply} {len(payload)}\r\n".encode()
                          + payload + b"\r\n")
        while True:
            op, args, data = self._frame(deadline)
            if op == "MSG" and args.split()[0] == reply:
                return data


class NatsProtocol:
    """The spooled sink's protocol for NATS (type = "nats")."""

    kind = "nats"
    wraps_tls = True                          # TLS starts after the server's INFO, not at connect

    def __init__(self, subject: str, jetstream: bool = True, name: str = "imds-flow", tls: Tls | None = None):
        self.subject, self.jetstream, self.name, self.tls = subject, jetstream, name, tls
        self._conn: NatsConnection | None = None

    def record(self, alert: bytes) -> bytes:
        return hashlib.sha256(alert).hexdigest()[:_ID].encode() + alert

    def handshake(self, sock: socket.socket, deadline: float) -> socket.socket:
        self._conn = NatsConnection(sock, self.name, self.tls)
        return self._conn.handshake(deadline)

    def send(self, sock: socket.socket, records: list[bytes], deadline: float) -> bool:
        conn = self._conn
        if conn is None or conn.sock is not sock:
            raise ConnectionResetError("not connected")
        if self.jetstream:
            conn.publish_acked(self.subject, [(r[:_ID], r[_ID:]) for r in records], deadline)
        else:
            conn.publish(self.subject, [r[_ID:] for r in records], deadline)
        return False
