"""Fluent Forward protocol v1, Forward mode, as Fluentd's and Fluent Bit's forward inputs read it.

Rules: one message is the msgpack array [tag, [[time, record], ...], {"size": n, "chunk": id}];
time is EventTime (msgpack ext type 0: seconds and nanoseconds, big-endian uint32 each) or integer
seconds; with a chunk id the server answers {"ack": id} once it has taken the whole message.
With a shared key, a connection opens with the handshake: the server's ["HELO", {nonce, auth}], our
["PING", hostname, salt, sha512(salt + hostname + nonce + key), "", ""] and its ["PONG", ok, reason,
hostname, sha512(salt + its hostname + nonce + key)], which we check before sending anything.
"""
from __future__ import annotations

import base64
import hashlib
import json
import os
import struct
import time
from datetime import datetime

import msgpack

__all__ = ["event_time", "entry", "message", "handshake", "next_message", "digest", "HandshakeError", "EVENT_TIME_EXT"]

EVENT_TIME_EXT = 0
_PACK = msgpack.Packer(use_bin_type=True)


def event_time(ts: float) -> msgpack.ExtType:
    sec = int(ts)
    nsec = min(int(round((ts - sec) * 1e9)), 999_999_999)
    return msgpack.ExtType(EVENT_TIME_EXT, struct.pack("!II", sec & 0xFFFFFFFF, nsec))


def _array_header(n: int) -> bytes:
    if n < 16:
        return bytes([0x90 | n])
    if n < 1 << 16:
        return b"\xdc" + struct.pack("!H", n)
    return b"\xdd" + struct.pack("!I", n)


def entry(alert: bytes, fmt: str, use_event_time: bool = True) -> bytes:
    """One [time, record] entry, msgpack-encoded, from one alert as its format encoded it. The time is
    the alert's (record arrival); a msgpack alert map is reused as the record byte for byte."""
    if fmt == "msgpack":
        ts = msgpack.unpackb(alert, raw=False).get("ts")
        record = alert
    else:
        doc = json.loads(alert)
        stamp = doc.get("@timestamp")
        ts = datetime.fromisoformat(stamp.replace("Z", "+00:00")).timestamp() if isinstance(stamp, str) else None
        record = _PACK.pack(doc)
    if not isinstance(ts, (int, float)):
        ts = 0.0
    when = event_time(ts) if use_event_time else int(ts)
    return b"\x92" + _PACK.pack(when) + record


def new_chunk_id() -> str:
    """A unique chunk id: base64 of 16 random bytes, as Fluentd's out_forward makes them."""
    return base64.b64encode(os.urandom(16)).decode()


def message(tag: str, entries: list[bytes], chunk: str | None = None) -> bytes:
    """A Forward mode message holding the pre-encoded entries."""
    option = {"size": len(entries)}
    if chunk is not None:
        option["chunk"] = chunk
    return b"\x93" + _PACK.pack(tag) + _array_header(len(entries)) + b"".join(entries) + _PACK.pack(option)


class HandshakeError(ConnectionError):
    """The server refused our key, or could not prove it knows it."""


def digest(*parts: str | bytes) -> str:
    """sha512 hex of the parts concatenated, as the handshake computes it."""
    h = hashlib.sha512()
    for p in parts:
        h.update(p.encode() if isinstance(p, str) else p)
    return h.hexdigest()


def next_message(sock, unpacker: msgpack.Unpacker, deadline: float, what: str):
    """The next msgpack message from the server (the handshake's HELO / PONG, an ack): TimeoutError
    past `deadline`, ConnectionResetError if the server hangs up first; both name `what`."""
    from .tls import readable, recv_now
    while True:
        for msg in unpacker:
            return msg
        left = deadline - time.monotonic()
        if left <= 0:
            raise TimeoutError(f"no {what} from the server")
        if not readable(sock, min(left, 0.5)):
            continue
        data = recv_now(sock)
        if data == b"":
            raise ConnectionResetError(f"closed by the server before its {what}")
        if data:
            unpacker.feed(data)


def handshake(sock, shared_key: str, hostname: str, deadline: float) -> None:
    """The forward protocol's shared-key handshake (no user authentication)."""
    unpacker = msgpack.Unpacker(raw=False)
    helo = next_message(sock, unpacker, deadline, "HELO")
    if not (isinstance(helo, list) and len(helo) == 2 and helo[0] == "HELO" and isinstance(helo[1], dict)):
        raise HandshakeError(f"expected HELO, got {helo!r:.80}")
    nonce = helo[1].get("nonce", b"")
    if helo[1].get("auth"):
        raise HandshakeError("the server asks for a user name and password, which imds-flow does not send")
    salt = os.urandom(16).hex()
    sock.sendall(_PACK.pack(["PING", hostname, salt, digest(salt, hostname, nonce, shared_key), "", ""]))
    pong = next_message(sock, unpacker, deadline, "PONG")
    if not (isinstance(pong, list) and len(pong) == 5 and pong[0] == "PONG"):
        raise HandshakeError(f"expected PONG, got {pong!r:.80}")
    _, ok, reason, server_hostname, server_digest = pong
    if not ok:
        raise HandshakeError(f"the server refused the shared key: {reason}")
    if server_digest != digest(salt, server_hostname, nonce, shared_key):
        raise HandshakeError("the server's PONG does not prove it knows the shared key")
