"""One kernel for sampled packet headers (sFlow raw header records; RFC 7133 packet sections).

Rules: Ethernet (any number of 802.1Q / 802.1ad tags: the outer id goes to vlan_dot1q, the next to
vlan_cust, the 3rd to 7th packed into vlan_more (flows.py); tags beyond the 7th are walked but
their ids not recorded), IPv4 (options skipped by IHL) or IPv6 (extension headers walked; a
non-first fragment has no L4 header), then TCP / UDP ports or ICMP type * 256 + code as the
destination port. In a TCP payload, as far as it was sampled and within the IP length: an HTTP
request line whose method is in METHODS, its request-target (cut by the end of the sample or not)
and the names of the header fields that follow, each compared whole and case-insensitively with the
configured names. Bodies, header values and responses are never searched, and nothing of them is
kept: not even the Host header's value (a row's host columns stay empty; only a flow record's own
host element fills them). Every read is bounded by `end`.
"""
from __future__ import annotations

import numpy as np

from ..flows import HTTP, VLAN_MORE_COUNT, VLAN_MORE_MAX, vlan_more_ids
from ..jit import njit, step
from .readers import _u16, _u32

__all__ = ["ETHERNET", "IPV4", "IPV6", "METHODS", "parse_packet", "parse_segment", "store", "scratch", "reset", "patterns", "parse_one"]

# sFlow header_protocol values (sFlow v5 "header_protocol"); RFC 7133 sections map onto them
ETHERNET = 1
IPV4 = 11
IPV6 = 12

METHODS = ("GET", "PUT", "POST", "HEAD", "DELETE", "OPTIONS", "PATCH", "CONNECT", "TRACE")
_M = [m.encode() for m in METHODS]
_METHOD_BUF = np.frombuffer(b"".join(_M), np.uint8).copy()
_METHOD_OFF = np.zeros(len(_M) + 1, np.int64)
_METHOD_OFF[1:] = np.cumsum([len(m) for m in _M])
_METHOD_FIRST = np.zeros(256, np.bool_)           # the bytes a method starts with
_METHOD_FIRST[[m[0] for m in _M]] = True

_MAPPED = np.uint64(0x0000FFFF_00000000)


# the kernel's results, in a uint64 scratch array (a column set passed per call would cost reference
# counting per column per packet): addresses, ports, protocol, VLAN ids (NONE: absent), url index + 1,
# method index + 1 (0: no request line), request-target offset and length, header bits, and the ids
# of the 3rd and further tags as the vlan_more column holds them (0: none)
S_SRC_HI, S_SRC_LO, S_DST_HI, S_DST_LO, S_SPORT, S_DPORT, S_PROTO, S_VLAN1, S_VLAN2, S_URL, S_METHOD, \
    S_URL_OFF, S_URL_LEN, S_HEADERS, S_VLAN_MORE = range(15)
NONE = np.uint64(0xFFFF)
_MORE_ONE = np.uint64(1) << np.uint64(VLAN_MORE_COUNT)   # one more id in vlan_more's count


def scratch() -> np.ndarray:
    return np.zeros(16, np.uint64)


def patterns(strings) -> tuple[np.ndarray, np.ndarray]:
    """(buffer, offsets) of lower-cased ASCII strings for the kernels: string k is buf[off[k]:off[k+1]]."""
    enc = [s.lower().encode() for s in strings if s]
    off = np.zeros(len(enc) + 1, np.int64)
    if enc:
        off[1:] = np.cumsum([len(p) for p in enc])
    return np.frombuffer(b"".join(enc) or b"\0", np.uint8).copy(), off


@step
def _lower(x):
    return x + 32 if 65 <= x <= 90 else x


@step
def _at(b, q):
    """b[q] for q >= 0: an unsigned index spares numba's negative-index wraparound on every byte."""
    return b[np.uint64(q)]


_ONES = np.uint64(0x0101010101010101)
_HIGHS = np.uint64(0x8080808080808080)
_LFS = np.uint64(0x0A0A0A0A0A0A0A0A)
_SPACES = np.uint64(0x2020202020202020)
_CRS = np.uint64(0x0D0D0D0D0D0D0D0D)
_BYTE_INDEX = np.uint64(0x0001020304050607)


@step
def _word(b, q):
    """b[q:q+8] as a little-endian uint64 (one load; the caller has checked q + 8 <= end)."""
    u = np.uint64(q)
    return (np.uint64(b[u]) | (np.uint64(b[u + np.uint64(1)]) << np.uint64(8))
            | (np.uint64(b[u + np.uint64(2)]) << np.uint64(16)) | (np.uint64(b[u + np.uint64(3)]) << np.uint64(24))
            | (np.uint64(b[u + np.uint64(4)]) << np.uint64(32)) | (np.uint64(b[u + np.uint64(5)]) << np.uint64(40))
            | (np.uint64(b[u + np.uint64(6)]) << np.uint64(48)) | (np.uint64(b[u + np.uint64(7)]) << np.uint64(56)))


@step
def _zero_bytes(x):
    """High bit set in the lowest zero byte of x (and maybe in bytes above it): 0 when none is zero."""
    return (x - _ONES) & ~x & _HIGHS


@step
def _first_flagged(t):
    """Index (0..7) of the lowest byte of t with its high bit set (t != 0)."""
    return np.int64(((t & (~t + np.uint64(1))) >> np.uint64(7)) * _BYTE_INDEX >> np.uint64(56))


@step
def _line_end(b, q, end):
    """The first LF in b[q:end], or end: eight bytes a step."""
    while q + 8 <= end:
        t = _zero_bytes(_word(b, q) ^ _LFS)
        if t != 0:
            return q + _first_flagged(t)
        q += 8
    while q < end and _at(b, q) != 10:
        q += 1
    return q


@step
def _target_end(b, q, end):
    """The first SP, CR or LF in b[q:end] (the end of a request-target), or end: eight bytes a step."""
    while q + 8 <= end:
        w = _word(b, q)
        t = _zero_bytes(w ^ _SPACES) | _zero_bytes(w ^ _CRS) | _zero_bytes(w ^ _LFS)
        if t != 0:
            return q + _first_flagged(t)
        q += 8
    while q < end:
        x = _at(b, q)
        if x == 32 or x == 13 or x == 10:
            break
        q += 1
    return q


@step
def _bytes_like(w, x):
    """High bit set in every byte of the word w that may be ASCII-case-insensitively the lower-case
    byte x (and maybe in a few more: a superset, for _find to verify). A letter matches either case
    (w | 0x20 per byte folds A-Z onto a-z), anything else only itself."""
    if 97 <= x <= 122:
        w = w | _SPACES
    return _zero_bytes(w ^ (np.uint64(x) * _ONES))


@step
def _matches(b, s, pat, p0, m):
    k = 0
    while k < m and _lower(_at(b, s + k)) == pat[p0 + k]:
        k += 1
    return k == m


@step
def _find(b, o, ln, pat, p0, p1):
    """Whether pat[p0:p1] occurs in b[o:o+ln], ASCII case-insensitively (pat is lower case). Eight
    positions a step: the words at q and q + 1 flag where the pattern's first two bytes may be,
    and only those are compared whole; a target with no candidate costs a few operations a word."""
    m = p1 - p0
    if m == 0:
        return True
    last = o + ln - m                    # the last position the pattern fits at
    x0 = pat[p0]
    x1 = pat[p0 + 1] if m > 1 else x0
    q = o
    while q + 9 <= o + ln and q <= last:
        t = _bytes_like(_word(b, q), x0)
        if m > 1:
            t &= _bytes_like(_word(b, q + 1), x1)
        while t != 0:
            s = q + _first_flagged(t)
            if s <= last and _matches(b, s, pat, p0, m):
                return True
            t &= t - np.uint64(1)
        q += 8
    for s in range(q, last + 1):
        if _matches(b, s, pat, p0, m):
            return True
    return False


@step
def _equal(b, o, ln, pat, p0, p1):
    if ln != p1 - p0:
        return False
    for k in range(ln):
        if _lower(_at(b, o + k)) != pat[p0 + k]:
            return False
    return True


@step
def _spells(b, o, m):
    """Whether b[o:] starts with METHODS[m] (the caller has checked there is room)."""
    m0 = _METHOD_OFF[m]
    for k in range(_METHOD_OFF[m + 1] - m0):
        if _at(b, o + k) != _METHOD_BUF[m0 + k]:
            return False
    return True


@step
def _method(b, p, end):
    """Index into METHODS of the request method at p (followed by one space), or -1."""
    if p >= end or not _METHOD_FIRST[_at(b, p)]:     # most payloads: one byte read, no method tried
        return -1
    for m in range(_METHOD_OFF.shape[0] - 1):
        ln = _METHOD_OFF[m + 1] - _METHOD_OFF[m]
        if p + ln < end and _at(b, p + ln) == 32 and _spells(b, p, m):
            return m
    return -1


@njit
def method_index(b, o, ln):
    """Index into METHODS of the method spelled by b[o:o+ln] exactly (IPFIX httpRequestMethod), or -1."""
    for m in range(_METHOD_OFF.shape[0] - 1):
        if _METHOD_OFF[m + 1] - _METHOD_OFF[m] == ln and _spells(b, o, m):
            return m
    return -1


@step
def _field_name(b, q, end, hdr, hdr_off):
    """Bit of the configured name (hdr, lower case) that the field line at q names, or 0. A name is
    seen whole: it runs from q to the line's first ':', with no SP, HT or LF in it; only the
    configured lengths are looked at."""
    for k in range(min(hdr_off.shape[0] - 1, 32)):
        c = q + hdr_off[k + 1] - hdr_off[k]
        if c < end and _at(b, c) == 58 and _equal(b, q, c - q, hdr, hdr_off[k], hdr_off[k + 1]) \
                and _token(b, q, c):
            return np.uint32(1) << np.uint32(k)
    return np.uint32(0)


@step
def _token(b, q, c):
    """Whether b[q:c] holds no ':', SP, HT or LF (a configured name is a token; a caller's may not be)."""
    for i in range(q, c):
        x = _at(b, i)
        if x == 58 or x == 32 or x == 9 or x == 10:
            return False
    return True


@step
def _http(b, p, end, r, pat, pat_off, hdr, hdr_off):
    """Parse an HTTP request line (and header names) at b[p:end] into the scratch r."""
    m = _method(b, p, end)
    if m < 0:
        return
    t = p + _METHOD_OFF[m + 1] - _METHOD_OFF[m] + 1
    te = _target_end(b, t, end)
    if te == t:
        return
    r[S_METHOD] = m + 1
    r[S_URL_OFF] = t
    r[S_URL_LEN] = te - t
    for k in range(pat_off.shape[0] - 1):
        if _find(b, t, te - t, pat, pat_off[k], pat_off[k + 1]):
            r[S_URL] = k + 1
            break
    if te >= end or _at(b, te) != 32:
        return                       # cut in the target, or an HTTP/0.9 line: no header fields
    q = _line_end(b, te, end)        # the rest of the request line
    found = np.uint32(0)
    while q < end:
        q += 1                       # past LF: the start of a field line
        if q >= end or _at(b, q) == 13 or _at(b, q) == 10:
            break                    # the empty line: the body follows and is never read
        found |= _field_name(b, q, end, hdr, hdr_off)
        q = _line_end(b, q, end)
    r[S_HEADERS] = found


@step
def _ethernet(b, p, end, r):
    """The Ethernet header at p and its 802.1Q / QinQ tags (the first two VLAN ids into r, the next
    VLAN_MORE_MAX packed into r[S_VLAN_MORE]; only a third tag costs that work): returns (the
    network layer: IPV4, IPV6 or -1, offset after the headers)."""
    if p + 14 > end:
        return np.int64(-1), p
    et = _u16(b, p + 12)
    p += 14
    tags = 0
    # 802.1Q, 802.1ad and the pre-standard QinQ TPIDs
    while et == 0x8100 or et == 0x88A8 or et == 0x9100 or et == 0x9200:
        if p + 4 > end:
            return np.int64(-1), p
        vid = np.uint64(_u16(b, p) & 0xFFF)
        if tags == 0:
            r[S_VLAN1] = vid
        elif tags == 1:
            r[S_VLAN2] = vid
        elif tags < 2 + VLAN_MORE_MAX:
            r[S_VLAN_MORE] = (r[S_VLAN_MORE] + _MORE_ONE) | (vid << np.uint64(12 * (tags - 2)))
        tags += 1
        et = _u16(b, p + 2)
        p += 4
    if et == 0x0800:
        return np.int64(IPV4), p
    if et == 0x86DD:
        return np.int64(IPV6), p
    return np.int64(-1), p


@njit
def _extensions(b, p, end, proto):
    """IPv6 extension headers from p (at most 16): returns (upper-layer protocol, its offset,
    whether the packet is a fragment other than the first)."""
    frag = False
    for _ in range(16):
        if proto == 44:                     # fragment
            if p + 8 > end:
                break
            frag = (_u16(b, p + 2) & 0xFFF8) != 0
            proto = b[p]
            p += 8
        elif proto == 51:                   # AH
            if p + 2 > end:
                break
            ln = (b[p + 1] + 2) * 4
            proto = b[p]
            p += ln
        # walked by their length, (len + 1) * 8 bytes: hop-by-hop, routing, destination options,
        # mobility, HIP, shim6 (AH above: (len + 2) * 4; the fragment header: 8, apart)
        elif proto == 0 or proto == 43 or proto == 60 or proto == 135 or proto == 139 or proto == 140:
            if p + 2 > end:
                break
            ln = (b[p + 1] + 1) * 8
            proto = b[p]
            p += ln
        else:
            break
    return proto, p, frag


@step
def parse_packet(b, o, end, kind, r, pat, pat_off, hdr, hdr_off):
    """Walk the sampled packet b[o:end] of type `kind` (ETHERNET, IPV4, IPV6) into the scratch r
    (S_* slots; `store` writes it to a row). Returns the IP version found (4, 6) or 0 (no IP header)."""
    reset(r, 0)
    p = o
    net = np.int64(kind)                 # the network layer to walk; an int, never unified with a float
    if net == ETHERNET:
        net, p = _ethernet(b, p, end, r)
    frag = False
    if net == IPV4:
        if p + 20 > end or (b[p] >> 4) != 4:
            return 0
        ihl = (b[p] & 15) * 4
        if ihl < 20:
            return 0
        ip_end = p + _u16(b, p + 2)
        proto = b[p + 9]
        frag = (_u16(b, p + 6) & 0x1FFF) != 0
        r[S_SRC_HI] = 0
        r[S_SRC_LO] = _MAPPED | np.uint64(_u32(b, p + 12))
        r[S_DST_HI] = 0
        r[S_DST_LO] = _MAPPED | np.uint64(_u32(b, p + 16))
        version = 4
        p += ihl
    elif net == IPV6:
        if p + 40 > end or (b[p] >> 4) != 6:
            return 0
        ip_end = p + 40 + _u16(b, p + 4)
        proto = b[p + 6]
        r[S_SRC_HI] = (np.uint64(_u32(b, p + 8)) << np.uint64(32)) | np.uint64(_u32(b, p + 12))
        r[S_SRC_LO] = (np.uint64(_u32(b, p + 16)) << np.uint64(32)) | np.uint64(_u32(b, p + 20))
        r[S_DST_HI] = (np.uint64(_u32(b, p + 24)) << np.uint64(32)) | np.uint64(_u32(b, p + 28))
        r[S_DST_LO] = (np.uint64(_u32(b, p + 32)) << np.uint64(32)) | np.uint64(_u32(b, p + 36))
        version = 6
        proto, p, frag = _extensions(b, p + 40, end, proto)
    else:
        return 0
    r[S_PROTO] = proto
    if frag or p > end:
        return version
    _transport(b, p, end, min(end, ip_end), proto, r, pat, pat_off, hdr, hdr_off)
    return version


@njit                                        # a call, not compiled into its caller: the one HTTP walk
def parse_segment(b, o, end, proto, r, pat, pat_off, hdr, hdr_off):
    """The IP payload b[o:end] of protocol `proto` (RFC 7133 ipPayloadPacketSection, IE 314: from the
    transport header on; addresses and protocol are the record's) into the scratch r, as
    parse_packet reads the transport header and what follows it."""
    reset(r, proto)
    _transport(b, o, end, end, proto, r, pat, pat_off, hdr, hdr_off)


@step
def reset(r, proto):
    """The scratch r as for a packet with nothing found yet: no ports, no VLAN tag, no HTTP."""
    r[S_SPORT] = 0
    r[S_DPORT] = 0
    r[S_PROTO] = proto
    r[S_VLAN1] = NONE
    r[S_VLAN2] = NONE
    r[S_VLAN_MORE] = 0
    r[S_URL] = 0
    r[S_METHOD] = 0
    r[S_HEADERS] = 0


@step
def _transport(b, p, end, stop, proto, r, pat, pat_off, hdr, hdr_off):
    """TCP / UDP / SCTP ports or ICMP type * 256 + code at p (reads bounded by `end`), and in a TCP
    payload the HTTP request, as far as `stop` (the sample's end or the IP length)."""
    if proto == 6 or proto == 17 or proto == 132:
        if p + 4 > end:
            return
        r[S_SPORT] = _u16(b, p)
        r[S_DPORT] = _u16(b, p + 2)
        if proto == 6 and p + 20 <= end:
            off = (b[p + 12] >> 4) * 4
            if off >= 20 and p + off < stop:
                _http(b, p + off, stop, r, pat, pat_off, hdr, hdr_off)
    elif proto == 1 or proto == 58:
        if p + 2 > end:
            return
        r[S_DPORT] = _u16(b, p)


@njit
def store(r, c, n):
    """Row n of the columns c from the scratch r of parse_packet (addresses, ports, protocol,
    vlan_dot1q / vlan_cust / vlan_more, url and, with a request line, flag HTTP and the HTTP columns)."""
    c.src_hi[n] = r[S_SRC_HI]
    c.src_lo[n] = r[S_SRC_LO]
    c.dst_hi[n] = r[S_DST_HI]
    c.dst_lo[n] = r[S_DST_LO]
    c.sport[n] = r[S_SPORT]
    c.dport[n] = r[S_DPORT]
    c.proto[n] = r[S_PROTO]
    c.vlan_dot1q[n] = np.int16(r[S_VLAN1]) if r[S_VLAN1] != NONE else np.int16(-1)
    c.vlan_cust[n] = np.int16(r[S_VLAN2]) if r[S_VLAN2] != NONE else np.int16(-1)
    c.vlan_more[n] = r[S_VLAN_MORE]
    c.url[n] = np.int16(r[S_URL]) - np.int16(1)
    if r[S_METHOD] != 0:
        c.row_flags[n] |= HTTP
        c.http_method[n] = np.int8(r[S_METHOD]) - np.int8(1)
        c.url_off[n] = np.int64(r[S_URL_OFF])
        c.url_len[n] = np.int32(r[S_URL_LEN])
        c.headers[n] = np.uint32(r[S_HEADERS])
        c.host_off[n] = 0
        c.host_len[n] = 0      # the Host header is a header value: never copied from sampled bytes


@njit
def _one(b, kind, c, r, pat, pat_off, hdr, hdr_off):
    c.row_flags[0] = 0
    version = parse_packet(b, 0, b.shape[0], kind, r, pat, pat_off, hdr, hdr_off)
    if version:
        store(r, c, 0)
    return version


def parse_one(data: bytes, kind: int = ETHERNET, url_substrings=(), header_names=()) -> dict | None:
    """The kernel on one packet (tests, tools): a dict of what it found, or None without an IP header."""
    from ..addr import from_hilo
    from ..flows import FlowBatch
    fb = FlowBatch(1)
    c = fb.cols
    b = np.frombuffer(bytes(data), np.uint8).copy()
    version = _one(b, kind, fb.rows, scratch(), *patterns(url_substrings), *patterns(header_names))
    if not version:
        return None
    http = bool(c.row_flags[0] & HTTP)
    names = [h.lower() for h in header_names if h]
    t0, tl = int(c.url_off[0]), int(c.url_len[0])
    return {
        "src": from_hilo(int(c.src_hi[0]), int(c.src_lo[0])), "dst": from_hilo(int(c.dst_hi[0]), int(c.dst_lo[0])),
        "proto": int(c.proto[0]), "sport": int(c.sport[0]), "dport": int(c.dport[0]),
        "vlans": [int(c.vlan_dot1q[0]), int(c.vlan_cust[0]), *vlan_more_ids(c.vlan_more[0])],
        "method": METHODS[int(c.http_method[0])] if http else None,
        "target": bytes(b[t0:t0 + tl]) if http else None,
        "url": int(c.url[0]),
        "headers": [h for k, h in enumerate(names[:32]) if int(c.headers[0]) >> k & 1] if http else [],
    }
