"""NetFlow v9 / IPFIX records one by one: the fields of a record located, then decoded into a row.

A record's fields are found by their slot (fields.SLOTS): `so[slot]` is the field's offset in the
record (-1: absent), `sl[slot]` its length; a fixed-length plan gives them once per set, `locate`
per record for variable-length ones. Every choice (which byte counter, which time encoding, v6 or
v4) is made in `emit`; tests hold it to a Python oracle (tests/support/records_oracle.py).

The helpers `emit` calls per record are numba-level inlines (inline="always"): a call passes every
array argument as a struct of seven words, which cost more than the work (7 vs 12 M records/s in
process). There is one decoder. Fixed-length plans had a column-wise cutter of their own until
2026-11-30: it took about half of the first start's compile, and this decoder, inlined and free of
reference counting (jit.kernel), is faster than the cutter was (README, "Quick start" and
"Benchmarks").
"""
from __future__ import annotations

import numpy as np

from ..flows import HTTP, LATE, NAT_DST, NAT_SRC, NO_COUNTERS
from ..jit import njit, step
from ..kernels import in_cover, match_net
from . import packet as pk
from .fields import NSLOT, SLOT
from .readers import _u16, _u32, _uint

__all__ = ["locate", "emit", "address_slots", "may_alert", "next_may_alert", "sampled", "option_rate", "option_sampler", "url_index", "rate32", "ntp", "MAPPED"]

MAPPED = np.uint64(0x0000FFFF_00000000)
_NTP_EPOCH = 2208988800.0
_NO_SAMPLER = 0xFFFF_FFFF


# slot indices, compile-time constants for the kernels
S_SRC4, S_DST4, S_SRC6, S_DST6 = SLOT["src4"], SLOT["dst4"], SLOT["src6"], SLOT["dst6"]
S_NSRC4, S_NDST4, S_NSRC6, S_NDST6 = SLOT["nsrc4"], SLOT["ndst4"], SLOT["nsrc6"], SLOT["ndst6"]
S_SPORT, S_DPORT, S_SPORT_L4, S_DPORT_L4 = SLOT["sport"], SLOT["dport"], SLOT["sport_l4"], SLOT["dport_l4"]
S_ICMP, S_PROTO = SLOT["icmp"], SLOT["proto"]
S_VSRC, S_VDST, S_VDOT1Q, S_VCUST = SLOT["vlan_src"], SLOT["vlan_dst"], SLOT["vlan_dot1q"], SLOT["vlan_cust"]
S_BYTES, S_PKTS, S_BYTES_T, S_PKTS_T = SLOT["bytes"], SLOT["packets"], SLOT["bytes_total"], SLOT["packets_total"]
S_BYTES_I, S_BYTES_R, S_PKTS_I, S_PKTS_R = SLOT["bytes_init"], SLOT["bytes_resp"], SLOT["packets_init"], SLOT["packets_resp"]
S_FIRST_UP, S_LAST_UP, S_SYS_INIT = SLOT["first_up"], SLOT["last_up"], SLOT["sys_init_ms"]
S_START_S, S_END_S, S_START_MS, S_END_MS = SLOT["start_s"], SLOT["end_s"], SLOT["start_ms"], SLOT["end_ms"]
S_START_US, S_END_US, S_START_NS, S_END_NS = SLOT["start_us"], SLOT["end_us"], SLOT["start_ns"], SLOT["end_ns"]
S_START_DUS, S_END_DUS = SLOT["start_delta_us"], SLOT["end_delta_us"]
S_IN_IF, S_OUT_IF = SLOT["in_if"], SLOT["out_if"]
S_SAMPLER, S_INTERVAL, S_RANDOM = SLOT["sampler_id"], SLOT["sampling_interval"], SLOT["sampler_random_interval"]
S_PINT, S_PSPACE, S_SIZE, S_POP = SLOT["packet_interval"], SLOT["packet_space"], SLOT["sampling_size"], SLOT["sampling_population"]
S_URL0 = SLOT["url0"]
N_URL = 6
S_METHOD, S_SEC_IP, S_SEC_L2, S_SEC_PAY = SLOT["http_method"], SLOT["section_ip"], SLOT["section_l2"], SLOT["section_payload"]
S_HOST = SLOT["http_host"]


@njit
def _find(b, o, n, pat, p0, p1):
    """Whether pat[p0:p1] (lower case) occurs in b[o:o+n], ASCII case-insensitively."""
    m = p1 - p0
    if m == 0 or m > n:
        return False
    for i in range(n - m + 1):
        ok = True
        for j in range(m):
            c = b[o + i + j]
            if 65 <= c <= 90:
                c += 32
            if c != pat[p0 + j]:
                ok = False
                break
        if ok:
            return True
    return False


@njit(inline="always")
def _addr4(b, base, so, s):
    return MAPPED | np.uint64(_u32(b, base + so[s]))


@njit(inline="always")
def _vlan(b, base, so, sl, s):
    if so[s] < 0:
        return -1
    v = _uint(b, base + so[s], sl[s])
    return np.int16(v) if 1 <= v <= 4095 else -1


@njit
def ntp(v):
    return np.float64(v >> np.uint64(32)) - _NTP_EPOCH + np.float64(v & np.uint64(0xFFFFFFFF)) / 4294967296.0


@njit(inline="always")
def _time(b, base, so, sl, s_ns, s_us, s_ms, s_s, s_dus, s_up, ver, uptime, secs):
    if so[s_ns] >= 0:
        return ntp(_uint(b, base + so[s_ns], sl[s_ns]))
    if so[s_us] >= 0:
        return ntp(_uint(b, base + so[s_us], sl[s_us]))
    if so[s_ms] >= 0:
        return np.float64(_uint(b, base + so[s_ms], sl[s_ms])) * 1e-3
    if so[s_s] >= 0:
        return np.float64(_uint(b, base + so[s_s], sl[s_s]))
    if so[s_dus] >= 0:
        return secs - np.float64(_uint(b, base + so[s_dus], sl[s_dus])) * 1e-6
    if so[s_up] >= 0:
        up = np.uint32(_uint(b, base + so[s_up], sl[s_up]))
        if ver == 9:
            return secs - np.float64(np.uint32(uptime - up)) * 1e-3
        if so[S_SYS_INIT] >= 0:
            return (np.float64(_uint(b, base + so[S_SYS_INIT], sl[S_SYS_INIT])) + np.float64(up)) * 1e-3
    return np.nan


@njit
def rate32(rate):
    """The sampling column's value of a rate: rounded, 0 below 1, saturating (never undefined)."""
    if rate >= 1.0:
        return np.uint32(min(rate, 4294967295.0) + 0.5)
    return np.uint32(0)


@njit(inline="always")
def _sampling(b, base, so, sl, scope, samp_keys, samp_rates):
    if so[S_INTERVAL] >= 0:
        return np.float64(_uint(b, base + so[S_INTERVAL], sl[S_INTERVAL]))
    if samp_keys.shape[0] == 0:
        return 0.0
    top = np.int64(scope) << 32
    if so[S_SAMPLER] >= 0:
        key = top | np.int64(_uint(b, base + so[S_SAMPLER], sl[S_SAMPLER]) & np.uint64(0xFFFFFFFF))
        i = np.searchsorted(samp_keys, key)
        if i < samp_keys.shape[0] and samp_keys[i] == key:
            return samp_rates[i]
    key = top | np.int64(_NO_SAMPLER)
    i = np.searchsorted(samp_keys, key)
    if i < samp_keys.shape[0] and samp_keys[i] == key:
        return samp_rates[i]
    return 0.0


@njit
def option_rate(b, base, so, sl):
    if so[S_INTERVAL] >= 0:
        v = _uint(b, base + so[S_INTERVAL], sl[S_INTERVAL])
        if v > 0:
            return np.float64(v)
    if so[S_RANDOM] >= 0:
        v = _uint(b, base + so[S_RANDOM], sl[S_RANDOM])
        if v > 0:
            return np.float64(v)
    if so[S_PINT] >= 0 and so[S_PSPACE] >= 0:
        i = _uint(b, base + so[S_PINT], sl[S_PINT])
        if i > 0:
            return np.float64(i + _uint(b, base + so[S_PSPACE], sl[S_PSPACE])) / np.float64(i)
    if so[S_SIZE] >= 0 and so[S_POP] >= 0:
        s = _uint(b, base + so[S_SIZE], sl[S_SIZE])
        if s > 0:
            return np.float64(_uint(b, base + so[S_POP], sl[S_POP])) / np.float64(s)
    return 0.0


@njit(inline="always")
def _address(b, base, so, s6, s4):
    """(hi, lo, present) of an address the template may carry as IPv6 (slot s6), IPv4 (s4) or both:
    the IPv6 one unless it is absent or all zero."""
    hi = np.uint64(0)
    lo = np.uint64(0)
    present = False
    if so[s6] >= 0:
        hi = _uint(b, base + so[s6], 8)
        lo = _uint(b, base + so[s6] + 8, 8)
        present = True
    if (hi | lo) == 0 and so[s4] >= 0:
        lo = _addr4(b, base, so, s4)
        present = True
    return hi, lo, present


@njit(inline="always")
def _counter(b, base, so, sl, s_delta, s_total, s_init, s_resp):
    """(value, present) of a byte or packet counter: the delta counter, else the total, else
    initiator + responder (Cisco ASA 231/232, 298/299)."""
    if so[s_delta] >= 0:
        return _uint(b, base + so[s_delta], sl[s_delta]), True
    if so[s_total] >= 0:
        return _uint(b, base + so[s_total], sl[s_total]), True
    v = np.uint64(0)
    present = False
    for s in (s_init, s_resp):
        if so[s] >= 0:
            v += _uint(b, base + so[s], sl[s])
            present = True
    return v, present


@njit(inline="always")
def emit(b, base, so, sl, c, n, s, samp_keys, samp_rates, pat, pat_off, http, main):
    """The record at `base` (fields located in so / sl) into row n of `c`; `s` is its set's row
    (v9ipfix.SET: exporter, version, arrival time, header times, scope), `rates` the scopes'
    sampling rates (keys, rates), `http` the packet kernel's tables (pattern, offsets, header names,
    offsets, scratch); `main`: the record's bytes are in the batch's buffer."""
    ver, uptime, secs = s.ver, s.uptime, s.secs
    r = c[n]
    r.exporter = s.exp
    r.version = ver
    r.ts = s.ts
    flags = 0
    r.src_hi, r.src_lo, _ = _address(b, base, so, S_SRC6, S_SRC4)
    r.dst_hi, r.dst_lo, _ = _address(b, base, so, S_DST6, S_DST4)
    r.nsrc_hi, r.nsrc_lo, present = _address(b, base, so, S_NSRC6, S_NSRC4)
    if present:
        flags |= NAT_SRC
    r.ndst_hi, r.ndst_lo, present = _address(b, base, so, S_NDST6, S_NDST4)
    if present:
        flags |= NAT_DST
    proto = np.uint8(_uint(b, base + so[S_PROTO], sl[S_PROTO])) if so[S_PROTO] >= 0 else np.uint8(0)
    r.proto = proto
    sport = np.uint64(0)
    dport = np.uint64(0)
    if so[S_SPORT] >= 0:
        sport = _uint(b, base + so[S_SPORT], sl[S_SPORT])
    elif so[S_SPORT_L4] >= 0:
        sport = _uint(b, base + so[S_SPORT_L4], sl[S_SPORT_L4])
    if so[S_DPORT] >= 0:
        dport = _uint(b, base + so[S_DPORT], sl[S_DPORT])
    elif so[S_DPORT_L4] >= 0:
        dport = _uint(b, base + so[S_DPORT_L4], sl[S_DPORT_L4])
    if so[S_ICMP] >= 0 and (proto == 1 or proto == 58):
        sport = np.uint64(0)
        dport = _uint(b, base + so[S_ICMP], sl[S_ICMP])
    r.sport = np.uint16(sport)
    r.dport = np.uint16(dport)
    r.vlan_src = _vlan(b, base, so, sl, S_VSRC)
    r.vlan_dst = _vlan(b, base, so, sl, S_VDST)
    r.vlan_dot1q = _vlan(b, base, so, sl, S_VDOT1Q)
    r.vlan_cust = _vlan(b, base, so, sl, S_VCUST)
    r.vlan_more = 0                          # no element carries a third tag; a packet section may
    v, has_bytes = _counter(b, base, so, sl, S_BYTES, S_BYTES_T, S_BYTES_I, S_BYTES_R)
    r.bytes = v
    v, has_packets = _counter(b, base, so, sl, S_PKTS, S_PKTS_T, S_PKTS_I, S_PKTS_R)
    r.packets = v
    if not (has_bytes or has_packets):
        flags |= NO_COUNTERS
    r.first_seen = _time(b, base, so, sl, S_START_NS, S_START_US, S_START_MS, S_START_S, S_START_DUS, S_FIRST_UP,
                       ver, uptime, secs)
    r.last_seen = _time(b, base, so, sl, S_END_NS, S_END_US, S_END_MS, S_END_S, S_END_DUS, S_LAST_UP,
                      ver, uptime, secs)
    r.in_if = np.uint32(_uint(b, base + so[S_IN_IF], sl[S_IN_IF])) if so[S_IN_IF] >= 0 else np.uint32(0)
    r.out_if = np.uint32(_uint(b, base + so[S_OUT_IF], sl[S_OUT_IF])) if so[S_OUT_IF] >= 0 else np.uint32(0)
    r.sampling_rate = rate32(_sampling(b, base, so, sl, s.scope, samp_keys, samp_rates))
    r.url = url_index(b, base, so, sl, pat, pat_off) if _first_url(so) >= 0 else -1
    r.row_flags = flags
    if so[S_METHOD] >= 0 or so[S_SEC_IP] >= 0 or so[S_SEC_L2] >= 0 or so[S_SEC_PAY] >= 0:
        sampled(b, base, so, sl, c, n, http, main)


@njit(inline="always")
def address_slots(so):
    """The offsets may_alert reads: (dst6, dst4, src6, src4, ndst6, ndst4, nsrc6, nsrc4), -1 absent."""
    return (so[S_DST6], so[S_DST4], so[S_SRC6], so[S_SRC4], so[S_NDST6], so[S_NDST4], so[S_NSRC6], so[S_NSRC4])


@njit(inline="always")
def _address_at(b, base, o6, o4):
    """_address with the slots' offsets given: (hi, lo) of the IPv6 field unless absent or all zero,
    else of the IPv4 one, else 0."""
    hi = np.uint64(0)
    lo = np.uint64(0)
    if o6 >= 0:
        hi = _uint(b, base + o6, 8)
        lo = _uint(b, base + o6 + 8, 8)
    if (hi | lo) == 0 and o4 >= 0:
        lo = MAPPED | np.uint64(_u32(b, base + o4))
    return hi, lo


@njit(inline="always")
def _in_endpoint(hi, lo, ep_hi, ep_lo, ep_mhi, ep_mlo, ep_v4, cv):
    return in_cover(hi, lo, cv) and match_net(hi, lo, ep_hi, ep_lo, ep_mhi, ep_mlo, ep_v4) >= 0


@njit(inline="always")
def may_alert(b, base, at, ep_hi, ep_lo, ep_mhi, ep_mlo, ep_v4, cv):
    """Whether the record at `base` may alert by its addresses: kernels.compact's test on the row
    `emit` would write (an address, or a post-NAT one the template carries, in an endpoint), read
    from the record; `at`: address_slots, `cv`: the endpoints' kernels.cover. For a plan without
    content fields (plans.PlanTable.content) it is the whole test: the row's URL index is -1 and it
    has no HTTP flag."""
    d6, d4, s6, s4, nd6, nd4, ns6, ns4 = at
    hi, lo = _address_at(b, base, d6, d4)
    if _in_endpoint(hi, lo, ep_hi, ep_lo, ep_mhi, ep_mlo, ep_v4, cv):
        return True
    hi, lo = _address_at(b, base, s6, s4)
    if _in_endpoint(hi, lo, ep_hi, ep_lo, ep_mhi, ep_mlo, ep_v4, cv):
        return True
    if nd6 >= 0 or nd4 >= 0:
        hi, lo = _address_at(b, base, nd6, nd4)
        if _in_endpoint(hi, lo, ep_hi, ep_lo, ep_mhi, ep_mlo, ep_v4, cv):
            return True
    if ns6 >= 0 or ns4 >= 0:
        hi, lo = _address_at(b, base, ns6, ns4)
        if _in_endpoint(hi, lo, ep_hi, ep_lo, ep_mhi, ep_mlo, ep_v4, cv):
            return True
    return False


@step
def next_may_alert(b, o, stop, L, at, ep_hi, ep_lo, ep_mhi, ep_mlo, ep_v4, cv):
    """The offset of the first record of length L from o to stop that may_alert, or stop. A
    template whose only addresses are an IPv4 source and destination (the common one) has a loop
    of its own: may_alert's checks for the other fields cost as much as the matching."""
    d6, d4, s6, s4, nd6, nd4, ns6, ns4 = at
    if d4 >= 0 and s4 >= 0 and d6 < 0 and s6 < 0 and nd6 < 0 and nd4 < 0 and ns6 < 0 and ns4 < 0:
        zero = np.uint64(0)
        while o < stop:
            if (_in_endpoint(zero, MAPPED | np.uint64(_u32(b, o + d4)), ep_hi, ep_lo, ep_mhi, ep_mlo, ep_v4, cv)
                    or _in_endpoint(zero, MAPPED | np.uint64(_u32(b, o + s4)), ep_hi, ep_lo, ep_mhi, ep_mlo, ep_v4, cv)):
                return o
            o += L
        return o
    while o < stop:
        if may_alert(b, o, at, ep_hi, ep_lo, ep_mhi, ep_mlo, ep_v4, cv):
            return o
        o += L
    return o


@njit
def sampled(b, base, so, sl, c, n, http, main):
    """RFC 7133 packet sections (IE 315 from the Ethernet header, 313 from the IP header, 314 from the
    transport header of the record's protocol) through the packet kernel, else IE 459
    httpRequestMethod with IE 461 httpRequestTarget (or another URL element) and IE 460
    httpRequestHost (host_off / host_len; nProbe's too). A request read from a section never gets a
    host: the Host header is a header value, and header values never leave (issue 10). Addresses,
    ports and protocol come from a section only when the template carries no address (ports from
    IE 314 when it carries no port); its VLAN tags fill vlan_dot1q / vlan_cust where absent, and its
    further tags vlan_more. The HTTP columns (flag HTTP) point into `b`: the batch's buffer, or (not
    `main`: data that waited for its template) the pending buffer (flag LATE)."""
    pat, pat_off, hdr, hdr_off, scr = http
    r = c[n]
    version = 0
    payload = False
    kind = 0                                 # one call site: parse_packet is compiled into its caller
    q = e = base
    if so[S_SEC_L2] >= 0:
        q, e, kind = base + so[S_SEC_L2], base + so[S_SEC_L2] + sl[S_SEC_L2], pk.ETHERNET
    elif so[S_SEC_IP] >= 0 and sl[S_SEC_IP] > 0:
        q, e = base + so[S_SEC_IP], base + so[S_SEC_IP] + sl[S_SEC_IP]
        kind = pk.IPV6 if (b[q] >> 4) == 6 else pk.IPV4
    if kind != 0:
        version = pk.parse_packet(b, q, e, kind, scr, pat, pat_off, hdr, hdr_off)
    elif so[S_SEC_PAY] >= 0 and r.proto != 0:
        q = base + so[S_SEC_PAY]
        pk.parse_segment(b, q, q + sl[S_SEC_PAY], np.uint64(r.proto), scr, pat, pat_off, hdr, hdr_off)
        payload = True
        if so[S_SPORT] < 0 and so[S_SPORT_L4] < 0 and so[S_DPORT] < 0 and so[S_DPORT_L4] < 0 and so[S_ICMP] < 0:
            r.sport = scr[pk.S_SPORT]
            r.dport = scr[pk.S_DPORT]
    if version != 0 or payload:
        if version != 0 and so[S_SRC4] < 0 and so[S_SRC6] < 0 and so[S_DST4] < 0 and so[S_DST6] < 0:
            r.src_hi = scr[pk.S_SRC_HI]
            r.src_lo = scr[pk.S_SRC_LO]
            r.dst_hi = scr[pk.S_DST_HI]
            r.dst_lo = scr[pk.S_DST_LO]
            r.sport = scr[pk.S_SPORT]
            r.dport = scr[pk.S_DPORT]
            r.proto = scr[pk.S_PROTO]
        if r.vlan_dot1q < 0 and scr[pk.S_VLAN1] != pk.NONE:
            r.vlan_dot1q = np.int16(scr[pk.S_VLAN1])
        if r.vlan_cust < 0 and scr[pk.S_VLAN2] != pk.NONE:
            r.vlan_cust = np.int16(scr[pk.S_VLAN2])
        r.vlan_more = scr[pk.S_VLAN_MORE]
        if r.url < 0 and scr[pk.S_URL] != 0:
            r.url = np.int16(scr[pk.S_URL]) - np.int16(1)
        if scr[pk.S_METHOD] != 0:
            r.row_flags |= HTTP if main else HTTP | LATE
            r.http_method = np.int8(scr[pk.S_METHOD]) - np.int8(1)
            r.url_off = np.int64(scr[pk.S_URL_OFF])
            r.url_len = np.int32(scr[pk.S_URL_LEN])
            r.headers = np.uint32(scr[pk.S_HEADERS])
            r.host_off = 0
            r.host_len = 0               # never the sampled Host header's value
        return
    if so[S_METHOD] >= 0:
        m = pk.method_index(b, base + so[S_METHOD], sl[S_METHOD])
        if m >= 0:
            r.row_flags |= HTTP if main else HTTP | LATE
            r.http_method = m
            u = _first_url(so)
            r.url_off = base + so[u] if u >= 0 else 0
            r.url_len = sl[u] if u >= 0 else 0
            r.headers = 0
            r.host_off = base + so[S_HOST] if so[S_HOST] >= 0 else 0
            r.host_len = sl[S_HOST] if so[S_HOST] >= 0 else 0


@njit
def _first_url(so):
    """The slot of the record's first URL field (url0: IANA httpRequestTarget first), or -1."""
    for u in range(N_URL):
        if so[S_URL0 + u] >= 0:
            return S_URL0 + u
    return -1


@njit
def url_index(b, base, so, sl, pat, pat_off):
    """Index of the first configured substring found in one of the record's HTTP fields, or -1."""
    for k in range(pat_off.shape[0] - 1):
        for u in range(N_URL):
            s = S_URL0 + u
            if so[s] >= 0 and _find(b, base + so[s], sl[s], pat, pat_off[k], pat_off[k + 1]):
                return k
    return -1


@njit
def locate(b, o, end, f_len, f_slot, f0, nf, so, sl):
    """The fields of the variable-length record at o (fields f0 .. f0 + nf of the plan table) into
    so / sl; returns the offset after it, or -1 when a field overruns `end` (a bad record)."""
    for s in range(NSLOT):
        so[s] = -1
    q = o
    for f in range(f0, f0 + nf):
        fl = np.int64(f_len[f])
        if fl < 0:                              # variable length: 1-byte length, or 255 and 2 bytes
            if q >= end:
                return -1
            fl = np.int64(b[q])
            q += 1
            if fl == 255:
                if end - q < 2:
                    return -1
                fl = np.int64(_u16(b, q))
                q += 2
        if fl > end - q:
            return -1
        s = f_slot[f]
        if s >= 0:
            so[s] = q - o
            sl[s] = fl
        q += fl
    # a slot that needs a fixed size but got another length from a variable field
    for s in range(S_URL0):
        if so[s] >= 0 and (sl[s] < 1 or sl[s] > 16):
            so[s] = -1
    for s, need in ((S_SRC4, 4), (S_DST4, 4), (S_SRC6, 16), (S_DST6, 16)):
        if so[s] >= 0 and sl[s] != need:
            so[s] = -1
    return q


@njit
def option_sampler(b, base, so, sl):
    """The sampler / selector id an options record sets the rate of; -1: the scope's default."""
    return np.int64(_uint(b, base + so[S_SAMPLER], sl[S_SAMPLER])) if so[S_SAMPLER] >= 0 else np.int64(-1)
