"""The slow oracle of the v9 / IPFIX record decoder (imds_flow/wire/records.py): one record of a
fixed-length template decoded in plain Python, from the rules in the module docstrings, not from
the kernel's code. Returns the row's columns as Python numbers.

Covers the flow columns: addresses (IPv6 unless absent or all zero, then IPv4 as ::ffff:a.b.c.d),
NAT addresses and their flags, protocol, ports (transport fallbacks, ICMP type/code as dport),
VLANs, counters (delta, total, initiator + responder), times (NTP, ms, s, delta-us, uptime), ifaces,
sampling (per record, by sampler id, the scope's default) and the URL substring index. Packet
sections and the HTTP method are the packet kernel's (its oracle is tests/oracle.py: packet_one).
"""
from __future__ import annotations

import math

from imds_flow.flows import NAT_DST, NAT_SRC, NO_COUNTERS
from imds_flow.wire.fields import ELEMENTS, accepts

__all__ = ["decode_record"]

_MAPPED = 0xFFFF << 32
_NTP_EPOCH = 2208988800.0
_DEFAULT = 0xFFFF_FFFF            # sampler id of the scope's default rate


def _slots(fields) -> dict[str, tuple[int, int]]:
    """name -> (offset, length): the first field of each slot whose length the slot accepts."""
    out, off = {}, 0
    for pen, fid, ln in fields:
        name = ELEMENTS.get((pen, fid))
        if name is not None and name not in out and accepts(name, ln):
            out[name] = (off, ln)
        off += ln
    return out


def decode_record(rec: bytes, fields, version: int, uptime: int, secs: float, rates: dict[int, float],
                  url_patterns: tuple[str, ...], scope: int = 0) -> dict:
    """`rates`: sampler id (0xFFFFFFFF: the scope's default) -> rate, as options data set them."""
    slots = _slots(fields)

    def has(name):
        return name in slots

    def uint(name):
        o, ln = slots[name]
        return int.from_bytes(rec[o:o + ln], "big")

    def address(v6, v4):
        hi = lo = 0
        if has(v6):
            value = uint(v6)
            hi, lo = value >> 64, value & (2**64 - 1)
        if hi == lo == 0 and has(v4):
            lo = _MAPPED | uint(v4)
        return hi, lo, has(v6) or has(v4)

    def first(*names):
        return next((uint(n) for n in names if has(n)), None)

    def vlan(name):
        v = uint(name) if has(name) else 0
        return v if 1 <= v <= 4095 else -1

    def counter(delta, total, init, resp):
        v = first(delta, total)
        if v is not None:
            return v, True
        parts = [uint(n) for n in (init, resp) if has(n)]
        return sum(parts) % 2**64, bool(parts)

    def ntp(v):
        return float(v >> 32) - _NTP_EPOCH + float(v & 0xFFFF_FFFF) / 4294967296.0

    def time(side, up_name):
        if has(f"{side}_ns") or has(f"{side}_us"):
            return ntp(first(f"{side}_ns", f"{side}_us"))
        if has(f"{side}_ms"):
            return float(uint(f"{side}_ms")) * 1e-3
        if has(f"{side}_s"):
            return float(uint(f"{side}_s"))
        if has(f"{side}_delta_us"):
            return secs - float(uint(f"{side}_delta_us")) * 1e-6
        if has(up_name):
            up = uint(up_name) & 0xFFFF_FFFF
            if version == 9:
                return secs - float((uptime - up) & 0xFFFF_FFFF) * 1e-3
            if has("sys_init_ms"):
                return (float(uint("sys_init_ms")) + float(up)) * 1e-3
        return math.nan

    def sampling():
        if has("sampling_interval"):
            rate = float(uint("sampling_interval"))
        else:
            rate = rates.get(uint("sampler_id") & 0xFFFF_FFFF, -1.0) if has("sampler_id") else -1.0
            if rate < 0:
                rate = rates.get(_DEFAULT, 0.0)
        return int(min(rate, 4294967295.0) + 0.5) if rate >= 1.0 else 0

    def url():
        for k, pattern in enumerate(url_patterns):
            needle = pattern.lower().encode()
            for u in range(6):
                name = f"url{u}"
                if has(name):
                    o, ln = slots[name]
                    text = bytes(c + 32 if 65 <= c <= 90 else c for c in rec[o:o + ln])
                    if needle and needle in text:
                        return k
        return -1

    row = {"version": version, "row_flags": 0}
    row["src_hi"], row["src_lo"], _ = address("src6", "src4")
    row["dst_hi"], row["dst_lo"], _ = address("dst6", "dst4")
    row["nsrc_hi"], row["nsrc_lo"], nat_src = address("nsrc6", "nsrc4")
    row["ndst_hi"], row["ndst_lo"], nat_dst = address("ndst6", "ndst4")
    row["row_flags"] |= (NAT_SRC if nat_src else 0) | (NAT_DST if nat_dst else 0)
    proto = uint("proto") & 0xFF if has("proto") else 0
    sport, dport = first("sport", "sport_l4") or 0, first("dport", "dport_l4") or 0
    if has("icmp") and proto in (1, 58):
        sport, dport = 0, uint("icmp")
    row.update(proto=proto, sport=sport & 0xFFFF, dport=dport & 0xFFFF)
    for name in ("vlan_src", "vlan_dst", "vlan_dot1q", "vlan_cust"):
        row[name] = vlan(name)
    row["vlan_more"] = 0                 # further tags come from packet sections only
    row["bytes"], has_bytes = counter("bytes", "bytes_total", "bytes_init", "bytes_resp")
    row["packets"], has_packets = counter("packets", "packets_total", "packets_init", "packets_resp")
    row["row_flags"] |= 0 if (has_bytes or has_packets) else NO_COUNTERS
    row["first_seen"], row["last_seen"] = time("start", "first_up"), time("end", "last_up")
    row["in_if"] = uint("in_if") & 0xFFFF_FFFF if has("in_if") else 0
    row["out_if"] = uint("out_if") & 0xFFFF_FFFF if has("out_if") else 0
    row["sampling_rate"] = sampling()
    row["url"] = url()
    return row
