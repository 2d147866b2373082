"""NetFlow v5, v9 and IPFIX packets built from fields: the one builder the warm-up, the benchmarks,
`imds-flow probe`'s tests and the test suite share.

A field is (element id, length) or (enterprise number, element id, length); length 0xFFFF is
variable. Values are ints (big-endian in the field's length), dotted quads / IPv6 text for 4- /
16-byte address fields, or bytes (variable-length fields get the 1- or 3-byte length prefix).
"""
from __future__ import annotations

import ipaddress
import struct

__all__ = ["VAR", "v5", "v9", "ipfix", "template_set", "options_template_set", "data_set", "record", "set_"]

VAR = 0xFFFF


def _spec(f):
    return (0, f[0], f[1]) if len(f) == 2 else tuple(f)


def set_(set_id: int, body: bytes, pad_to: int = 1) -> bytes:
    pad = (-(4 + len(body))) % pad_to
    return struct.pack(">HH", set_id, 4 + len(body) + pad) + body + bytes(pad)


def template_set(version: int, templates: dict[int, list]) -> bytes:
    body = b""
    for tid, fields in templates.items():
        body += struct.pack(">HH", tid, len(fields))
        for f in fields:
            pen, fid, ln = _spec(f)
            if pen and version == 10:
                body += struct.pack(">HHI", fid | 0x8000, ln, pen)
            else:
                body += struct.pack(">HH", fid, ln)
    return set_(0 if version == 9 else 2, body)


def options_template_set(version: int, tid: int, scope: list, options: list) -> bytes:
    if version == 9:
        body = struct.pack(">HHH", tid, 4 * len(scope), 4 * len(options))
        body += b"".join(struct.pack(">HH", *f) for f in scope + options)
        return set_(1, body, pad_to=4)
    body = struct.pack(">HHH", tid, len(scope) + len(options), len(scope))
    for f in scope + options:
        pen, fid, ln = _spec(f)
        body += struct.pack(">HHI", fid | 0x8000, ln, pen) if pen else struct.pack(">HH", fid, ln)
    return set_(3, body)


def record(fields: list, values: list) -> bytes:
    out = b""
    for f, v in zip(fields, values):
        ln = _spec(f)[2]
        if ln == VAR:
            v = bytes(v)
            out += (bytes([len(v)]) if len(v) < 255 else b"\xff" + struct.pack(">H", len(v))) + v
        elif isinstance(v, str):
            packed = ipaddress.ip_address(v).packed
            assert len(packed) == ln
            out += packed
        elif isinstance(v, (bytes, bytearray)):
            out += bytes(v).ljust(ln, b"\0")[:ln]
        else:
            out += int(v).to_bytes(ln, "big")
    return out


def data_set(tid: int, records: list[bytes], pad_to: int = 4) -> bytes:
    return set_(tid, b"".join(records), pad_to)


def v5(records: list[tuple[str, str, int, int]], seq: int = 0, uptime: int = 100_000, secs: int = 1_700_000_000,
       nsecs: int = 0, sampling: int = 0) -> bytes:
    """A NetFlow v5 datagram of TCP records (src, dst, sport, dport), 10 packets and 1000 bytes each."""
    head = struct.pack("!HHIIIIBBH", 5, len(records), uptime, secs, nsecs, seq, 0, 0, sampling)
    body = b"".join(
        struct.pack("!4s4s4sHHIIIIHHBBBBHHBBH", bytes(map(int, s.split("."))), bytes(map(int, d.split("."))),
                    b"\0" * 4, 1, 2, 10, 1000, uptime - 5000, uptime - 1000, sp, dp, 0, 0x18, 6, 0, 0, 0, 24, 24, 0)
        for s, d, sp, dp in records)
    return head + body


def v9(sets: list[bytes], seq: int = 0, source_id: int = 0, uptime: int = 100_000, secs: int = 1_700_000_000,
       count: int | None = None) -> bytes:
    """`count`: the header's record count (collectors do not trust it); default one per set."""
    return struct.pack(">HHIIII", 9, len(sets) if count is None else count, uptime, secs, seq, source_id) + b"".join(sets)


def ipfix(sets: list[bytes], seq: int = 0, domain: int = 0, export_time: int = 1_700_000_000) -> bytes:
    body = b"".join(sets)
    return struct.pack(">HHIII", 10, 16 + len(body), export_time, seq, domain) + body
