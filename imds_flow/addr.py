"""Addresses as two uint64 words, the one form every stage uses.

IPv6 is the 128-bit value split into (hi, lo); IPv4 a.b.c.d is stored IPv4-mapped
(::ffff:a.b.c.d), so one comparison serves both families and an IPv4 /n is a /(96+n).
"""
from __future__ import annotations

import ipaddress

MAPPED_V4 = 0x0000FFFF_00000000
_M64 = (1 << 64) - 1

__all__ = ["MAPPED_V4", "to_hilo", "from_hilo", "network_hilo", "is_v4"]


def to_hilo(address: str | ipaddress.IPv4Address | ipaddress.IPv6Address) -> tuple[int, int]:
    ip = ipaddress.ip_address(address) if isinstance(address, str) else address
    if ip.version == 4:
        return 0, MAPPED_V4 | int(ip)
    v = int(ip)
    return v >> 64, v & _M64


def is_v4(hi: int, lo: int) -> bool:
    return hi == 0 and (lo >> 32) == 0xFFFF


def from_hilo(hi: int, lo: int) -> str:
    """Dotted quad for IPv4-mapped values, compressed IPv6 otherwise."""
    hi, lo = int(hi), int(lo)
    if is_v4(hi, lo):
        return f"{(lo >> 24) & 255}.{(lo >> 16) & 255}.{(lo >> 8) & 255}.{lo & 255}"
    return str(ipaddress.IPv6Address((hi << 64) | lo))


def network_hilo(cidr: str) -> tuple[int, int, int, int]:
    """(net_hi, net_lo, mask_hi, mask_lo) of an address or CIDR; raises ValueError."""
    net = ipaddress.ip_network(cidr, strict=False)
    prefix = net.prefixlen + (96 if net.version == 4 else 0)
    mask = ((1 << 128) - 1) ^ ((1 << (128 - prefix)) - 1)
    hi, lo = to_hilo(net.network_address)
    return hi & (mask >> 64), lo & (mask & _M64), mask >> 64, mask & _M64
