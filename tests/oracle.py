"""Slow ipaddress-based reference implementations the numba kernels are compared with."""
from __future__ import annotations

import ipaddress

from imds_flow.addr import from_hilo


def ip_of(text: str):
    """An address; IPv4-mapped IPv6 (::ffff:a.b.c.d) counts as the IPv4 address it carries."""
    ip = ipaddress.ip_address(text)
    return (ip.ipv4_mapped or ip) if ip.version == 6 else ip


def detect_one(rec: dict, endpoints: list, suppress_subnets: list, suppress_vlans: set, url_patterns: int = 0):
    """(endpoint index, 'request'|'response') or None for one record given as plain Python values.

    rec: src, dst (strings), nsrc/ndst (strings or None), vlans (list of ints, -1 absent), url (int).
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
