"""Capture framing and datagram location, pure functions of bytes (no IO, no numpy).

Two jobs, each testable on a bytes object:
* `PcapFraming` / `PcapngFraming` walk capture records: `next(b, pos, n)` returns the record that
  starts at `pos` within b[:n] as a plain 7-tuple (the fields of `Record`), or a negative int: it
  needs that many bytes from pos first, or a non-negative int: the block carried no packet and the
  next one starts there (section and interface blocks update the framing's own state), or
  (skip reason, next position) for a packet block that cannot be read. Plain tuples and ints, not
  objects: this runs once per captured packet.
* `locate_udp(b, p, end, linktype, cut)` finds the IP and UDP headers inside one link-layer frame
  b[p:end], or the reason (a SKIP_REASONS key) why the frame holds no whole UDP datagram.
Nothing here raises for a packet; a corrupt file raises PcapError from the framing.
"""
from __future__ import annotations

import struct
from typing import Dict, List, NamedTuple, Optional, Tuple, Union

__all__ = ["PcapError", "SKIP_REASONS", "PCAP_MAGIC", "PCAPNG_MAGIC", "MAX_RECORD", "Record",
           "PcapFraming", "PcapngFraming", "locate_udp"]

MAX_RECORD = 256 << 20  # a record or block longer than this is corruption, not data

# Skip reasons as stats keys -> how a summary line says them ("skipped 3 non-UDP, 1 fragmented").
SKIP_REASONS: Dict[str, str] = {
    "non_ip": "non-IP",
    "non_udp": "non-UDP",
    "fragment": "fragmented",
    "snaplen": "cut short by the snaplen",
    "bad_udp_length": "with a bad UDP length",
    "malformed": "malformed",
    "linktype": "of an unsupported link type",
    "pcapng_block": "in obsolete pcapng packet blocks",
    "dst_port": "to other destination ports",
}

# Classic pcap magic (as the first 4 bytes appear in the file) -> (byte order, ticks per second,
# record header length). 0xa1b2cd34 is Kuznetzov's "modified" pcap with 8 more bytes per record.
PCAP_MAGIC = {
    b"\xd4\xc3\xb2\xa1": ("<", 1_000_000, 16),
    b"\xa1\xb2\xc3\xd4": (">", 1_000_000, 16),
    b"\x4d\x3c\xb2\xa1": ("<", 1_000_000_000, 16),
    b"\xa1\xb2\x3c\x4d": (">", 1_000_000_000, 16),
    b"\x34\xcd\xb2\xa1": ("<", 1_000_000, 24),
    b"\xa1\xb2\xcd\x34": (">", 1_000_000, 24),
}
PCAPNG_MAGIC = b"\x0a\x0d\x0d\x0a"
# pcapng: the section header block's type reads the same in both byte orders; its byte-order
# magic tells which one the section uses.
_BOM = {b"\x4d\x3c\x2b\x1a": "<", b"\x1a\x2b\x3c\x4d": ">"}

_RAW_TYPES = frozenset({12, 14, 101})  # DLT_RAW as some systems write LINKTYPE_RAW
_VLAN_TPIDS = frozenset({0x8100, 0x88A8, 0x9100, 0x9200})
_AF_INET6 = frozenset({10, 24, 28, 30})  # Linux, Net/OpenBSD, FreeBSD, Darwin
_IPV6_SKIPPED_EXT = frozenset({0, 43, 60})  # hop-by-hop, routing, destination options
_IP4 = struct.Struct(">BxHxxHxB").unpack_from  # version/IHL, total length, flags/offset, protocol


class PcapError(Exception):
    """The file is not a readable pcap / pcapng capture."""


class Record(NamedTuple):
    """The fields of the 7-tuple a framing returns for one captured packet: its link-layer frame is
    b[p:end]; `tso` is where its timestamp is (-1: none, a pcapng simple packet block); `nxt` where
    the next record starts."""
    p: int
    end: int
    caplen: int
    origlen: int
    linktype: int
    tso: int
    nxt: int


Step = Union[tuple, int]   # a record 7-tuple, -bytes needed, the next pos (no packet), (reason, next pos)


class PcapFraming:
    """Classic pcap: a 24-byte file header, then (header, frame) records."""

    header_size = 24

    def __init__(self, head: bytes):
        self.order, self.ticks, self.rec_len = PCAP_MAGIC[bytes(head[:4])]
        self.linktype = struct.unpack_from(self.order + "I", head, 20)[0] & 0xFFFF  # high bits: FCS info
        self._cap = struct.Struct(self.order + "II").unpack_from

    def next(self, b, pos: int, n: int) -> Step:
        rl = self.rec_len
        if pos + rl > n:
            return -(rl)
        caplen, origlen = self._cap(b, pos + 8)
        if caplen > MAX_RECORD:
            raise PcapError(f"captured length {caplen}")
        end = pos + rl + caplen
        if end > n:
            return -(rl + caplen)
        return (pos + rl, end, caplen, origlen, self.linktype, pos, end)


class PcapngFraming:
    """pcapng: blocks; sections reset the interfaces (link type, snaplen, time resolution)."""

    header_size = 0

    def __init__(self):
        self.order = "<"
        self.if_lt: List[int] = []
        self.if_snap: List[int] = []
        self.if_ticks: List[int] = []
        self.if_offset: List[int] = []
        self.sections = 0
        self._set_order("<")

    def _set_order(self, e: str) -> None:
        self.order = e
        self._hdr = struct.Struct(e + "II").unpack_from       # block type, total length
        self._epb = struct.Struct(e + "I8xII").unpack_from    # EPB at +8: interface, caplen, origlen

    def next(self, b, pos: int, n: int) -> Step:
        if pos + 12 > n:
            return -(12)
        bt, bl = self._hdr(b, pos)
        if bt == 0x0A0D0D0A:                                  # section header block
            e = _BOM.get(bytes(b[pos + 8: pos + 12]))
            if e is None:
                raise PcapError("bad pcapng byte-order magic")
            bl = struct.unpack_from(e + "I", b, pos + 4)[0]
            if bl < 28 or bl & 3 or bl > MAX_RECORD:
                raise PcapError(f"bad section header length {bl}")
            if pos + bl > n:
                return -(bl)
            major = struct.unpack_from(e + "H", b, pos + 12)[0]
            if major != 1:
                raise PcapError(f"unsupported pcapng version {major}")
            self._set_order(e)
            self.if_lt, self.if_snap, self.if_ticks, self.if_offset = [], [], [], []
            self.sections += 1
            return pos + bl
        if bl < 12 or bl & 3 or bl > MAX_RECORD:
            raise PcapError(f"bad block length {bl}")
        if pos + bl > n:
            return -(bl)
        nxt = pos + bl
        if bt == 6:                                           # enhanced packet block
            if bl < 32:
                raise PcapError(f"enhanced packet block of length {bl}")
            iface, caplen, origlen = self._epb(b, pos + 8)
            if caplen > bl - 32:
                raise PcapError(f"captured length {caplen} overruns its block")
            if iface >= len(self.if_lt):
                return ("malformed", nxt)
            return (pos + 28, pos + 28 + caplen, caplen, origlen, self.if_lt[iface], pos + 12, nxt)
        if bt == 3:                                           # simple packet block: interface 0, no time
            if bl < 16 or not self.if_lt:
                return ("malformed", nxt)
            origlen = struct.unpack_from(self.order + "I", b, pos + 8)[0]
            caplen = min(origlen, bl - 16)
            if self.if_snap[0]:
                caplen = min(caplen, self.if_snap[0])
            return (pos + 12, pos + 12 + caplen, caplen, origlen, self.if_lt[0], -1, nxt)
        if bt == 1:                                           # interface description block
            lt, snap, ticks, off = _parse_idb(b, pos, bl, self.order)
            self.if_lt.append(lt)
            self.if_snap.append(snap)
            self.if_ticks.append(ticks)
            self.if_offset.append(off)
            return nxt
        if bt == 2:                                           # obsolete packet block
            return ("pcapng_block", nxt)
        return nxt


def _parse_idb(b, blk: int, bl: int, e: str) -> Tuple[int, int, int, int]:
    """Interface description block -> (link type, snaplen, ticks per second, offset seconds)."""
    if bl < 20:
        return -1, 0, 1_000_000, 0
    lt, _, snap = struct.unpack_from(e + "HHI", b, blk + 8)
    div, off = 1_000_000, 0
    o, stop = blk + 16, blk + bl - 4
    while o + 4 <= stop:
        code, ln = struct.unpack_from(e + "HH", b, o)
        o += 4
        if code == 0 or o + ln > stop:
            break
        if code == 9 and ln >= 1:  # if_tsresol: 10^-v, or 2^-v with the high bit set
            r = b[o]
            div = 1 << (r & 0x7F) if r & 0x80 else 10**r
            if div >= 1 << 64:
                raise PcapError(f"unsupported if_tsresol {r:#04x}")
        elif code == 14 and ln >= 8:  # if_tsoffset, seconds
            off = struct.unpack_from(e + "q", b, o)[0]
        o += (ln + 3) & ~3
    return lt, snap, div, off


def locate_udp(b, p: int, end: int, linktype: int, cut: bool) -> Tuple[Optional[str], int, int, int]:
    """(skip reason or None, IP header offset, UDP header offset, room) for the frame b[p:end].

    `cut`: the frame was cut short by the snaplen (caplen < origlen), which decides between the
    reasons "snaplen" and "malformed" for a header that does not fit. `room` is how many bytes the
    IP header says follow the UDP header's start (0xFFFF when it does not say: offload, jumbogram).
    """
    short = "snaplen" if cut else "malformed"
    # ---- link layer -> q (IP header), et (ethertype; -1: frame cut short)
    if linktype == 1:                                         # Ethernet, any number of tags
        q = p + 14
        if q > end:
            return short, 0, 0, 0
        et = b[p + 12] << 8 | b[p + 13]
        q, et = _skip_tags(b, q, end, et)
    elif linktype in _RAW_TYPES:                              # raw IP: the version nibble decides
        q = p
        if q >= end:
            return short, 0, 0, 0
        v = b[q] >> 4
        et = 0x0800 if v == 4 else 0x86DD if v == 6 else 0
    elif linktype == 113 or linktype == 276:                  # Linux cooked SLL / SLL2
        q = p + (16 if linktype == 113 else 20)
        if q > end:
            return short, 0, 0, 0
        et = b[p + 14] << 8 | b[p + 15] if linktype == 113 else b[p] << 8 | b[p + 1]
        q, et = _skip_tags(b, q, end, et)
    elif linktype == 0 or linktype == 108:                    # BSD loopback (NULL) / OpenBSD LOOP
        q = p + 4
        if q > end:
            return short, 0, 0, 0
        # NULL: address family in the capturing host's byte order; LOOP: big endian.
        af = b[p + 3] if linktype == 108 else (b[p] or b[p + 3])
        et = 0x0800 if af == 2 else 0x86DD if af in _AF_INET6 else 0
    elif linktype == 228:
        q, et = p, 0x0800
    elif linktype == 229:
        q, et = p, 0x86DD
    else:
        return "linktype", 0, 0, 0
    if et == -1:
        return short, 0, 0, 0

    # ---- IP -> u (UDP header), room
    if et == 0x0800:
        if q + 20 > end:
            return short, 0, 0, 0
        v, total, frag, proto = _IP4(b, q)
        ihl = (v & 15) << 2
        if v >> 4 != 4 or ihl < 20:
            return "malformed", 0, 0, 0
        if proto != 17:
            return "non_udp", 0, 0, 0
        if frag & 0x3FFF:                                     # MF or a fragment offset
            return "fragment", 0, 0, 0
        room = total - ihl if total else 0xFFFF               # total length 0: segmentation offload
        u = q + ihl
    elif et == 0x86DD:
        reason, u, room = _ipv6(b, q, end, short)
        if reason is not None:
            return reason, 0, 0, 0
    else:
        return "non_ip", 0, 0, 0
    if u + 8 > end:
        return short, 0, 0, 0
    return None, q, u, room


def _ipv6(b, q: int, end: int, short: str) -> Tuple[Optional[str], int, int]:
    """(skip reason or None, UDP header offset, room) of the IPv6 packet at b[q:end], past the
    extension headers that may stand before a UDP header; `short` is the reason for a header that
    does not fit."""
    if q + 40 > end:
        return short, 0, 0
    if b[q] >> 4 != 6:
        return "malformed", 0, 0
    nh = b[q + 6]
    u = q + 40
    while nh != 17 and (nh in _IPV6_SKIPPED_EXT or nh == 44):
        if u + 8 > end:
            return short, 0, 0
        if nh == 44:          # fragment header: only an atomic fragment is a whole datagram
            if (b[u + 2] << 8 | b[u + 3]) & 0xFFF9:
                return ("fragment" if b[u] == 17 else "non_udp"), 0, 0
            nh = b[u]
            u += 8
        else:
            nh = b[u]
            u += (b[u + 1] + 1) << 3
    if nh != 17:
        return "non_udp", 0, 0
    payload = b[q + 4] << 8 | b[q + 5]
    return None, u, payload - (u - q - 40) if payload else 0xFFFF   # 0: jumbogram or offload


def _skip_tags(b, q: int, end: int, et: int) -> Tuple[int, int]:
    """Past any 802.1Q / 802.1ad tags: (IP header offset, ethertype; -1 when cut short)."""
    while et in _VLAN_TPIDS:
        q += 4
        if q > end:
            return q, -1
        et = b[q - 2] << 8 | b[q - 1]
    return q, et
