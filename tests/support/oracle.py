"""Slow ipaddress-based reference implementations the numba kernels are compared with."""
from __future__ import annotations

import ipaddress
import re

from imds_flow.addr import from_hilo


def ip_of(text: str):
    """An address; IPv4-mapped IPv6 (::ffff:a.b.c.d) counts as the IPv4 address it carries."""
    ip = ipaddress.ip_address(text)
    return (ip.ipv4_mapped or ip) if ip.version == 6 else ip


def detect_one(rec: dict, endpoints: list, suppress_subnets: list, suppress_vlans: set, url_patterns: int = 0):
    """(endpoint index, 'request'|'response') or None for one record given as plain Python values.

    rec: src, dst (strings), nsrc/ndst (strings or None), vlans (list of ints, -1 absent: the four VLAN
    columns' and any number of further ids), url (int).
    """
    def ep_of(addr):
        if addr is None:
            return -1
        ip = ip_of(addr)
        for i, net in enumerate(endpoints):
            if ip.version == net.version and ip in net:
                return i
        return -1

    ep, direction = ep_of(rec["dst"]), "request"
    if ep < 0:
        ep = ep_of(rec.get("ndst"))
    if ep < 0:
        ep, direction = ep_of(rec["src"]), "response"
        if ep < 0:
            ep = ep_of(rec.get("nsrc"))
    if ep < 0:
        if rec.get("url", -1) < 0:
            return None
        ep, direction = len(endpoints) + rec["url"], "request"
    local = ip_of(rec["src"] if direction == "request" else rec["dst"])
    if any(local.version == n.version and local in n for n in suppress_subnets):
        return None
    if any(0 <= v < 4096 and v in suppress_vlans for v in rec["vlans"]):
        return None
    return ep, direction


def addr_str(hi, lo) -> str:
    return from_hilo(hi, lo)


# --- sampled packets (wire/packet.py) ------------------------------------------------------------

HTTP_METHODS = ("GET", "PUT", "POST", "HEAD", "DELETE", "OPTIONS", "PATCH", "CONNECT", "TRACE")


def packet_one(data: bytes, kind: int, url_substrings=(), header_names=()) -> dict | None:
    """What wire.packet.parse_one must find in `data` (1 Ethernet, 11 IPv4, 12 IPv6), by slicing bytes."""
    vlans = [-1, -1]
    if kind == 1:
        if len(data) < 14:
            return None
        et, rest = int.from_bytes(data[12:14], "big"), data[14:]
        tags = 0
        while et in (0x8100, 0x88A8, 0x9100, 0x9200):
            if len(rest) < 4:
                return None
            if tags < 2:
                vlans[tags] = int.from_bytes(rest[:2], "big") & 0xFFF
            elif tags < 7:                       # tags 3 to 7 are recorded (vlan_more), later ones walked
                vlans.append(int.from_bytes(rest[:2], "big") & 0xFFF)
            tags += 1
            et, rest = int.from_bytes(rest[2:4], "big"), rest[4:]
        kind = {0x0800: 11, 0x86DD: 12}.get(et)
        if kind is None:
            return None
        data = rest
    frag = False
    if kind == 11:
        if len(data) < 20 or data[0] >> 4 != 4 or (data[0] & 15) < 5:
            return None
        ihl = (data[0] & 15) * 4
        src, dst = str(ipaddress.IPv4Address(data[12:16])), str(ipaddress.IPv4Address(data[16:20]))
        proto, total = data[9], int.from_bytes(data[2:4], "big")
        frag = int.from_bytes(data[6:8], "big") & 0x1FFF != 0
        l4, ip_payload_end = data[ihl:], total - ihl
    elif kind == 12:
        if len(data) < 40 or data[0] >> 4 != 6:
            return None
        src, dst = str(ipaddress.IPv6Address(data[8:24])), str(ipaddress.IPv6Address(data[24:40]))
        proto, plen = data[6], int.from_bytes(data[4:6], "big")
        l4, used = data[40:], 0
        for _ in range(16):
            if proto == 44 and len(l4) >= 8:
                frag = int.from_bytes(l4[2:4], "big") & 0xFFF8 != 0
                proto, step = l4[0], 8
            elif proto == 51 and len(l4) >= 2:
                proto, step = l4[0], (l4[1] + 2) * 4
            elif proto in (0, 43, 60, 135, 139, 140) and len(l4) >= 2:
                proto, step = l4[0], (l4[1] + 1) * 8
            else:
                break
            l4, used = l4[step:], used + step
        ip_payload_end = plen - used
        if used > len(data) - 40:
            l4 = None
    else:
        return None
    out = {"src": from_hilo(*_hilo(src)), "dst": from_hilo(*_hilo(dst)), "proto": proto, "sport": 0, "dport": 0,
           "vlans": vlans, "method": None, "target": None, "url": -1, "headers": []}
    if frag or l4 is None:
        return out
    if proto in (6, 17, 132) and len(l4) >= 4:
        out["sport"], out["dport"] = int.from_bytes(l4[0:2], "big"), int.from_bytes(l4[2:4], "big")
        if proto == 6 and len(l4) >= 20:
            off = (l4[12] >> 4) * 4
            payload = l4[off:max(off, ip_payload_end)] if off >= 20 else b""
            out.update(_http_oracle(payload, url_substrings, header_names))
    elif proto in (1, 58) and len(l4) >= 2:
        out["dport"] = int.from_bytes(l4[0:2], "big")
    return out


def _hilo(text: str) -> tuple[int, int]:
    from imds_flow.addr import to_hilo
    return to_hilo(text)


def _http_oracle(payload: bytes, url_substrings, header_names) -> dict:
    method = next((m for m in HTTP_METHODS if payload.startswith(m.encode() + b" ")), None)
    if method is None:
        return {}
    rest = payload[len(method) + 1:]
    cut = min([i for i in (rest.find(b" "), rest.find(b"\r"), rest.find(b"\n")) if i >= 0] or [len(rest)])
    target = rest[:cut]
    if not target:
        return {}
    low = target.lower()
    url = next((k for k, u in enumerate(s for s in url_substrings if s) if u.lower().encode() in low), -1)
    names = [h.lower() for h in header_names if h][:32]
    found = set()
    after = rest[cut:]
    lf = after.find(b"\n")
    if after[:1] == b" " and lf >= 0:           # a complete request line: field lines follow
        pos = lf + 1
        while pos < len(after) and after[pos] not in (13, 10):      # the empty line ends the fields
            name = re.match(rb"[^:\n \t]*", after[pos:]).group(0)
            end = pos + len(name)
            if name and end < len(after) and after[end] == 58:      # seen whole, up to its colon
                found.add(name.lower().decode("latin-1"))
            lf = after.find(b"\n", pos)
            if lf < 0:
                break
            pos = lf + 1
    return {"method": method, "target": target, "url": url, "headers": [h for h in names if h in found]}
