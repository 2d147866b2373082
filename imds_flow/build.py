"""NetFlow v5, v9, IPFIX and sFlow v5 datagrams built from fields: the one builder the warm-up, the
benchmarks, `imds-flow probe` and the test suite share.

NetFlow / IPFIX: a field is (element id, length) or (enterprise number, element id, length); length
0xFFFF is variable. Values are ints (big-endian in the field's length), dotted quads / IPv6 text for
4- / 16-byte address fields, or bytes (variable-length fields get the 1- or 3-byte length prefix).
sFlow: a datagram (`sflow`) holds flow samples (`flow_sample`, or `packet_sample`: what a switch sends
for one sampled packet), which hold flow records (`raw_header` of a `frame`, `switch`).
"""
from __future__ import annotations

import ipaddress
import struct

__all__ = ["VAR", "v5", "v9", "ipfix", "template_set", "options_template_set", "data_set", "record", "set_",
           "sflow", "flow_sample", "packet_sample", "raw_header", "switch", "frame"]

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


# --- sFlow v5 -------------------------------------------------------------------------------------

def sflow(samples: list[bytes], seq: int = 1, agent: str | int = "192.0.2.7", sub_agent: int = 0,
          uptime: int = 1000) -> bytes:
    """An sFlow v5 datagram holding `samples`, from an IPv4 or IPv6 agent (text or an integer)."""
    ip = ipaddress.ip_address(agent)
    return (struct.pack(">II", 5, 1 if ip.version == 4 else 2) + ip.packed
            + struct.pack(">IIII", sub_agent, seq, uptime, len(samples)) + b"".join(samples))


def flow_sample(seq: int, records: list[bytes], rate: int = 1000, source: int = 7, pool: int | None = None,
                in_if: int = 7, out_if: int = 9) -> bytes:
    """A compact flow sample (0:1) holding `records`; the sample pool is seq * rate unless given."""
    pool = (seq * rate) & 0xFFFFFFFF if pool is None else pool
    body = struct.pack(">IIIIIIII", seq, source, rate, pool, 0, in_if, out_if, len(records)) + b"".join(records)
    return struct.pack(">II", 1, len(body)) + body


def packet_sample(seq: int, frame: bytes, header_bytes: int = 128, rate: int = 1000, vlan: int = 10) -> bytes:
    """What a switch sends for one sampled packet: an extended switch record (`vlan` in and out) and
    the raw header record of the frame's first `header_bytes` bytes."""
    return flow_sample(seq, [switch(vlan, vlan), raw_header(frame, header_bytes)], rate)


def raw_header(frame: bytes, header_bytes: int = 128, stripped: int = 4) -> bytes:
    """A raw packet header record (0:1) of an Ethernet frame: its first `header_bytes` bytes, padded
    to 4; the frame length counts the `stripped` bytes (the FCS) the switch removed."""
    head = frame[:header_bytes]
    body = struct.pack(">IIII", 1, len(frame) + stripped, stripped, len(head)) + head + bytes(-len(head) % 4)
    return struct.pack(">II", 1, len(body)) + body


def switch(src_vlan: int, dst_vlan: int) -> bytes:
    """An extended switch record (0:1001): input and output VLAN, priorities 0."""
    return struct.pack(">IIIIII", 1001, 16, src_vlan, 0, dst_vlan, 0)


def frame(src: str | int, dst: str | int, sport: int, dport: int, payload: bytes = b"",
          vlan: int | tuple[int, ...] | None = None) -> bytes:
    """An Ethernet frame (802.1Q-tagged unless vlan is None; a tuple of ids, outer first, stacks
    one tag each) of an IPv4 / TCP segment (PSH ACK) carrying `payload`; addresses as text or
    integers, checksums 0."""
    tcp = struct.pack(">HHIIBBHHH", sport, dport, 1, 1, 0x50, 0x18, 512, 0, 0)
    ip = struct.pack(">BBHHHBBH4s4s", 0x45, 0, 40 + len(payload), 0, 0x4000, 64, 6, 0,
                     ipaddress.IPv4Address(src).packed, ipaddress.IPv4Address(dst).packed)
    ids = () if vlan is None else (vlan,) if isinstance(vlan, int) else tuple(vlan)
    tag = b"".join(struct.pack(">HH", 0x8100, v) for v in ids)
    return b"\x02\x00\x00\x00\x00\x0b\x02\x00\x00\x00\x00\x0a" + tag + b"\x08\x00" + ip + tcp + payload
