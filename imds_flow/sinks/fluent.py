"""Fluent Forward protocol v1, Forward mode, as Fluentd's and Fluent Bit's forward inputs read it.

Rules: one message is the msgpack array [tag, [[time, record], ...], {"size": n, "chunk": id}];
time is EventTime (msgpack ext type 0: seconds and nanoseconds, big-endian uint32 each) or integer
seconds; with a chunk id the server answers {"ack": id} once it has taken the whole message.
"""
from __future__ import annotations

import base64
import json
import os
import struct
from datetime import datetime

import msgpack

__all__ = ["event_time", "entry", "message", "EVENT_TIME_EXT"]

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
