"""NetFlow v9 (RFC 3954) and IPFIX (RFC 7011), sans-IO: sets walked in numba, records cut over plans.

Rules: sets are walked by their byte length to the end of the datagram (v9: the header count is
never trusted) or of the IPFIX message length. A v9 set of length 0 ends the datagram (exporters
zero-fill the rest); any other set shorter than its header or longer than what is left is
`bad_set_length` and stops the datagram, keeping the sets before it. A data set is decoded with
the latest definition of its template sent before it (in this batch or earlier); failing that,
with the first definition sent after it in the same batch; failing that it waits in the pending
buffer until its template arrives. Options data sets the sampling rate of their scope (sampler
-1) or of their sampler / selector id; they are applied before the batch's flow records.

Python runs per template set and per distinct (scope, template) in a batch; walking, cutting and
sequence accounting are numba kernels over every datagram of the batch. Flow data sets of fixed-length
templates are cut column by column by the plan's compiled program (`_cut_fixed`); variable-length
templates (and options data) go record by record (`_emit`), the reference the fast path is tested
against.
"""
from __future__ import annotations

import numpy as np

from ..flows import HTTP, NAT_DST, NAT_SRC, NO_COUNTERS
from . import packet as pk
from ..jit import njit
from ..kernels import compact
from .errors import reason_code
from .readers import _u16, _u32, _u64, _uint
from .fields import SLOT
from .templates import (A_V4, A_V6, A_V6_V4, OP_NONE, OP_SUM, P_BYTES, P_DPORT, P_DST, P_FIRST, P_ICMP,
                        P_IN_IF, P_LAST, P_NDST, P_NSRC, P_OUT_IF, P_PKTS, P_PROTO, P_SAMPLING, P_SPORT, P_SRC,
                        P_URL, P_VCUST, P_VDOT1Q, P_VDST, P_VSRC, SAMP_INTERVAL, SAMP_SAMPLER, T_DELTA_US, T_MS,
                        T_NTP, T_S, T_UPTIME, parse_template_set)

__all__ = ["prepare", "finish", "Prepared"]

FAST_PATH = True      # cut fixed-length flow data sets by program; False: record by record (tests)

_TOO_SHORT = reason_code("too_short")
_BAD_LENGTH = reason_code("bad_length")
_BAD_SET = reason_code("bad_set_length")
_BAD_TEMPLATE = reason_code("bad_template")
_BAD_RECORD = reason_code("bad_record")
_SCOPE_OVER = reason_code("scope_over_limit")
_MAPPED = np.uint64(0x0000FFFF_00000000)
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
S_METHOD, S_SEC_IP, S_SEC_L2 = SLOT["http_method"], SLOT["section_ip"], SLOT["section_l2"]
NSLOT = len(SLOT)


@njit
def walk_sets(buf, offs, lens, sel, version, status, h_uptime, h_secs, h_seq, h_domain,
              s_dg, s_id, s_off, s_len):
    """Headers of datagrams `sel` into h_* and one row per set into s_*; returns the set count."""
    k = 0
    for j in range(sel.shape[0]):
        d = sel[j]
        o = offs[d]
        ln = lens[d]
        v9 = version[d] == 9
        hl = 20 if v9 else 16
        if ln < hl:
            status[d] = _TOO_SHORT
            continue
        if v9:
            h_uptime[d] = _u32(buf, o + 4)
            h_secs[d] = _u32(buf, o + 8)
            h_seq[d] = _u32(buf, o + 12)
            h_domain[d] = _u32(buf, o + 16)
            end = o + ln
        else:
            mlen = _u16(buf, o + 2)
            if mlen < 16 or mlen > ln:
                status[d] = _BAD_LENGTH
                continue
            h_uptime[d] = 0
            h_secs[d] = _u32(buf, o + 4)
            h_seq[d] = _u32(buf, o + 8)
            h_domain[d] = _u32(buf, o + 12)
            end = o + mlen
        status[d] = 0
        p = o + hl
        while end - p >= 4:
            sid = _u16(buf, p)
            sl = _u16(buf, p + 2)
            if sl == 0 and v9:
                break
            if sl < 4 or sl > end - p:
                status[d] = _BAD_SET
                break
            s_dg[k] = d
            s_id[k] = sid
            s_off[k] = p + 4
            s_len[k] = sl - 4
            k += 1
            p += sl
    return k


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


@njit
def _addr4(b, base, so, s):
    return _MAPPED | np.uint64(_u32(b, base + so[s]))


@njit
def _vlan(b, base, so, sl, s):
    if so[s] < 0:
        return -1
    v = _uint(b, base + so[s], sl[s])
    return np.int16(v) if 1 <= v <= 4095 else -1


@njit
def _ntp(v):
    return np.float64(v >> np.uint64(32)) - _NTP_EPOCH + np.float64(v & np.uint64(0xFFFFFFFF)) / 4294967296.0


@njit
def _time(b, base, so, sl, s_ns, s_us, s_ms, s_s, s_dus, s_up, ver, uptime, secs):
    if so[s_ns] >= 0:
        return _ntp(_uint(b, base + so[s_ns], sl[s_ns]))
    if so[s_us] >= 0:
        return _ntp(_uint(b, base + so[s_us], sl[s_us]))
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
def _rate32(rate):
    """The sampling column's value of a rate: rounded, 0 below 1, saturating (never undefined)."""
    if rate >= 1.0:
        return np.uint32(min(rate, 4294967295.0) + 0.5)
    return np.uint32(0)


@njit
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
def _option_rate(b, base, so, sl):
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


@njit
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


@njit
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


@njit
def _emit(b, base, so, sl, c, n, exp, ver, ts, uptime, secs, scope, samp_keys, samp_rates, pat, pat_off,
          main, hdr, hdr_off, scr):
    c.exporter[n] = exp
    c.version[n] = ver
    c.ts[n] = ts
    flags = 0
    c.src_hi[n], c.src_lo[n], _ = _address(b, base, so, S_SRC6, S_SRC4)
    c.dst_hi[n], c.dst_lo[n], _ = _address(b, base, so, S_DST6, S_DST4)
    c.nsrc_hi[n], c.nsrc_lo[n], present = _address(b, base, so, S_NSRC6, S_NSRC4)
    if present:
        flags |= NAT_SRC
    c.ndst_hi[n], c.ndst_lo[n], present = _address(b, base, so, S_NDST6, S_NDST4)
    if present:
        flags |= NAT_DST
    proto = np.uint8(_uint(b, base + so[S_PROTO], sl[S_PROTO])) if so[S_PROTO] >= 0 else np.uint8(0)
    c.proto[n] = proto
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
    c.sport[n] = np.uint16(sport)
    c.dport[n] = np.uint16(dport)
    c.vlan_src[n] = _vlan(b, base, so, sl, S_VSRC)
    c.vlan_dst[n] = _vlan(b, base, so, sl, S_VDST)
    c.vlan_dot1q[n] = _vlan(b, base, so, sl, S_VDOT1Q)
    c.vlan_cust[n] = _vlan(b, base, so, sl, S_VCUST)
    v, has_bytes = _counter(b, base, so, sl, S_BYTES, S_BYTES_T, S_BYTES_I, S_BYTES_R)
    c.bytes[n] = v
    v, has_packets = _counter(b, base, so, sl, S_PKTS, S_PKTS_T, S_PKTS_I, S_PKTS_R)
    c.packets[n] = v
    if not (has_bytes or has_packets):
        flags |= NO_COUNTERS
    c.first[n] = _time(b, base, so, sl, S_START_NS, S_START_US, S_START_MS, S_START_S, S_START_DUS, S_FIRST_UP,
                       ver, uptime, secs)
    c.last[n] = _time(b, base, so, sl, S_END_NS, S_END_US, S_END_MS, S_END_S, S_END_DUS, S_LAST_UP,
                      ver, uptime, secs)
    c.in_if[n] = np.uint32(_uint(b, base + so[S_IN_IF], sl[S_IN_IF])) if so[S_IN_IF] >= 0 else np.uint32(0)
    c.out_if[n] = np.uint32(_uint(b, base + so[S_OUT_IF], sl[S_OUT_IF])) if so[S_OUT_IF] >= 0 else np.uint32(0)
    rate = _sampling(b, base, so, sl, scope, samp_keys, samp_rates)
    c.sampling[n] = _rate32(rate)
    c.url[n] = _url(b, base, so, sl, pat, pat_off)
    c.row_flags[n] = flags
    if so[S_METHOD] >= 0 or so[S_SEC_IP] >= 0 or so[S_SEC_L2] >= 0:
        _sampled(b, base, so, sl, c, n, main, pat, pat_off, hdr, hdr_off, scr)


@njit
def _sampled(b, base, so, sl, c, n, main, pat, pat_off, hdr, hdr_off, scr):
    """RFC 7133 packet sections (IE 315 from the Ethernet header, 313 from the IP header) through the
    packet kernel, else IE 459 httpRequestMethod with IE 461 httpRequestTarget. Addresses, ports and
    protocol come from a section only when the template carries no address; its VLAN tags fill
    vlan_dot1q / vlan_cust where absent. The HTTP columns (flag HTTP) only for records whose bytes
    are in the batch's buffer (`main`; not data that waited for its template)."""
    version = 0
    if so[S_SEC_L2] >= 0:
        version = pk.parse_packet(b, base + so[S_SEC_L2], base + so[S_SEC_L2] + sl[S_SEC_L2], pk.ETHERNET, scr,
                                  pat, pat_off, hdr, hdr_off)
    elif so[S_SEC_IP] >= 0 and sl[S_SEC_IP] > 0:
        q = base + so[S_SEC_IP]
        kind = pk.IPV6 if (b[q] >> 4) == 6 else pk.IPV4
        version = pk.parse_packet(b, q, q + sl[S_SEC_IP], kind, scr, pat, pat_off, hdr, hdr_off)
    if version != 0:
        if so[S_SRC4] < 0 and so[S_SRC6] < 0 and so[S_DST4] < 0 and so[S_DST6] < 0:
            c.src_hi[n] = scr[pk.S_SRC_HI]
            c.src_lo[n] = scr[pk.S_SRC_LO]
            c.dst_hi[n] = scr[pk.S_DST_HI]
            c.dst_lo[n] = scr[pk.S_DST_LO]
            c.sport[n] = scr[pk.S_SPORT]
            c.dport[n] = scr[pk.S_DPORT]
            c.proto[n] = scr[pk.S_PROTO]
        if c.vlan_dot1q[n] < 0 and scr[pk.S_VLAN1] != pk.NONE:
            c.vlan_dot1q[n] = np.int16(scr[pk.S_VLAN1])
        if c.vlan_cust[n] < 0 and scr[pk.S_VLAN2] != pk.NONE:
            c.vlan_cust[n] = np.int16(scr[pk.S_VLAN2])
        if c.url[n] < 0 and scr[pk.S_URL] != 0:
            c.url[n] = np.int16(scr[pk.S_URL]) - np.int16(1)
        if main and scr[pk.S_METHOD] != 0:
            c.row_flags[n] |= HTTP
            c.http_method[n] = np.int8(scr[pk.S_METHOD]) - np.int8(1)
            c.url_off[n] = np.int64(scr[pk.S_URL_OFF])
            c.url_len[n] = np.int32(scr[pk.S_URL_LEN])
            c.headers[n] = np.uint32(scr[pk.S_HEADERS])
        return
    if so[S_METHOD] >= 0 and main:
        m = pk.method_index(b, base + so[S_METHOD], sl[S_METHOD])
        if m >= 0:
            c.row_flags[n] |= HTTP
            c.http_method[n] = m
            c.url_off[n] = base + so[S_URL0] if so[S_URL0] >= 0 else 0
            c.url_len[n] = sl[S_URL0] if so[S_URL0] >= 0 else 0
            c.headers[n] = 0


@njit
def _url(b, base, so, sl, pat, pat_off):
    """Index of the first configured substring found in one of the record's HTTP fields, or -1."""
    for k in range(pat_off.shape[0] - 1):
        for u in range(N_URL):
            s = S_URL0 + u
            if so[s] >= 0 and _find(b, base + so[s], sl[s], pat, pat_off[k], pat_off[k + 1]):
                return k
    return -1


# --- the fast path: a fixed-length set, column by column over its compiled program ------------
# The program is read as prog[plan, row, i] scalars: no array views per set. The column helpers
# are ordinary calls, not numba-level inlines: inlining them made IPFIX decode about 1.5x faster
# in process (7.2 vs 4.9 M records/s, loaded machine) but the first start's compile 24 s longer
# (68 vs 44 s); the first start is what every install pays (README, "Start-up").

@njit
def _fill(col, n, m, v):
    for k in range(n, m):
        col[np.uint64(k)] = v


@njit
def _col_uint(b, q, L, cnt, ln, col, n):
    """col[np.uint64(n + k)] = the `ln`-byte unsigned at q + k * L (cast to the column's type), k < cnt."""
    if ln == 1:
        for k in range(cnt):
            col[np.uint64(n + k)] = b[np.uint64(q + k * L)]
    elif ln == 2:
        for k in range(cnt):
            col[np.uint64(n + k)] = _u16(b, q + k * L)
    elif ln == 4:
        for k in range(cnt):
            col[np.uint64(n + k)] = _u32(b, q + k * L)
    elif ln == 8:
        for k in range(cnt):
            col[np.uint64(n + k)] = _uint(b, q + k * L, 8)
    else:
        for k in range(cnt):
            col[np.uint64(n + k)] = _uint(b, q + k * L, ln)


@njit
def _col_read(b, o, L, cnt, prog, p, row, col, n):
    if prog[p, row, 0] == OP_NONE:
        _fill(col, n, n + cnt, 0)
    else:
        _col_uint(b, o + prog[p, row, 1], L, cnt, prog[p, row, 2], col, n)


@njit
def _col_addr(b, o, L, cnt, prog, p, row, hi, lo, n):
    op = prog[p, row, 0]
    if op == OP_NONE:
        _fill(hi, n, n + cnt, 0)
        _fill(lo, n, n + cnt, 0)
    elif op == A_V4:
        _fill(hi, n, n + cnt, 0)
        q = o + prog[p, row, 1]
        for k in range(cnt):
            lo[np.uint64(n + k)] = _MAPPED | np.uint64(_u32(b, q + k * L))
    else:
        q = o + prog[p, row, 1]
        q4 = o + prog[p, row, 3]
        for k in range(cnt):
            h = _uint(b, q + k * L, 8)
            l = _uint(b, q + k * L + 8, 8)
            if op == A_V6_V4 and (h | l) == 0:
                l = _MAPPED | np.uint64(_u32(b, q4 + k * L))
            hi[np.uint64(n + k)] = h
            lo[np.uint64(n + k)] = l


@njit
def _col_vlan(b, o, L, cnt, prog, p, row, col, n):
    if prog[p, row, 0] == OP_NONE:
        _fill(col, n, n + cnt, -1)
        return
    q = o + prog[p, row, 1]
    ln = prog[p, row, 2]
    for k in range(cnt):
        v = _uint(b, q + k * L, ln)
        col[np.uint64(n + k)] = np.int16(v) if 1 <= v <= 4095 else -1


@njit
def _col_counter(b, o, L, cnt, prog, p, row, col, n):
    op = prog[p, row, 0]
    if op == OP_SUM:
        q, ln, q2, ln2 = o + prog[p, row, 1], prog[p, row, 2], o + prog[p, row, 3], prog[p, row, 4]
        for k in range(cnt):
            col[np.uint64(n + k)] = _uint(b, q + k * L, ln) + _uint(b, q2 + k * L, ln2)
    else:
        _col_read(b, o, L, cnt, prog, p, row, col, n)


@njit
def _col_time(b, o, L, cnt, prog, p, row, col, n, ver, uptime, secs):
    op = prog[p, row, 0]
    q = o + prog[p, row, 1]
    ln = prog[p, row, 2]
    if op == T_MS and ln == 8:
        for k in range(cnt):
            col[np.uint64(n + k)] = np.float64(_uint(b, q + k * L, 8)) * 1e-3
    elif op == T_NTP:
        for k in range(cnt):
            col[np.uint64(n + k)] = _ntp(_uint(b, q + k * L, ln))
    elif op == T_MS:
        for k in range(cnt):
            col[np.uint64(n + k)] = np.float64(_uint(b, q + k * L, ln)) * 1e-3
    elif op == T_S:
        for k in range(cnt):
            col[np.uint64(n + k)] = np.float64(_uint(b, q + k * L, ln))
    elif op == T_DELTA_US:
        for k in range(cnt):
            col[np.uint64(n + k)] = secs - np.float64(_uint(b, q + k * L, ln)) * 1e-6
    elif op == T_UPTIME and ver == 9:
        for k in range(cnt):
            up = np.uint32(_uint(b, q + k * L, ln))
            col[np.uint64(n + k)] = secs - np.float64(np.uint32(uptime - up)) * 1e-3
    elif op == T_UPTIME and prog[p, row, 3] >= 0:
        q2 = o + prog[p, row, 3]
        ln2 = prog[p, row, 4]
        for k in range(cnt):
            up = np.uint32(_uint(b, q + k * L, ln))
            col[np.uint64(n + k)] = (np.float64(_uint(b, q2 + k * L, ln2)) + np.float64(up)) * 1e-3
    else:
        _fill(col, n, n + cnt, np.nan)


@njit
def _lookup_rate(samp_keys, samp_rates, key):
    i = np.searchsorted(samp_keys, key)
    if i < samp_keys.shape[0] and samp_keys[i] == key:
        return samp_rates[i]
    return -1.0


@njit
def _col_sampling(b, o, L, cnt, prog, p, row, col, n, scope, samp_keys, samp_rates):
    op = prog[p, row, 0]
    q = o + prog[p, row, 1]
    ln = prog[p, row, 2]
    if op == SAMP_INTERVAL:
        for k in range(cnt):
            col[np.uint64(n + k)] = _rate32(np.float64(_uint(b, q + k * L, ln)))
    elif samp_keys.shape[0] == 0:
        _fill(col, n, n + cnt, 0)
    else:
        top = np.int64(scope) << 32
        dflt = max(_lookup_rate(samp_keys, samp_rates, top | np.int64(_NO_SAMPLER)), 0.0)
        if op == SAMP_SAMPLER:
            for k in range(cnt):
                key = top | np.int64(_uint(b, q + k * L, ln) & np.uint64(0xFFFFFFFF))
                rate = _lookup_rate(samp_keys, samp_rates, key)
                col[np.uint64(n + k)] = _rate32(rate if rate >= 0.0 else dflt)
        else:
            _fill(col, n, n + cnt, _rate32(dflt))


@njit
def _cut_fixed(b, o, L, cnt, prog, p, flags, so, sl, c, n, exp, ver, ts, uptime, secs, scope,
               samp_keys, samp_rates, pat, pat_off, main, hdr, hdr_off, scr):
    """Records o, o + L, ... (cnt of them) of one fixed-length set into rows n.. of `c`, column by
    column over plan p's program (templates.compile_program); so/sl are its slot offsets."""
    m = n + cnt
    _fill(c.exporter, n, m, exp)
    _fill(c.version, n, m, ver)
    _fill(c.ts, n, m, ts)
    _col_addr(b, o, L, cnt, prog, p, P_SRC, c.src_hi, c.src_lo, n)
    _col_addr(b, o, L, cnt, prog, p, P_DST, c.dst_hi, c.dst_lo, n)
    _col_addr(b, o, L, cnt, prog, p, P_NSRC, c.nsrc_hi, c.nsrc_lo, n)
    _col_addr(b, o, L, cnt, prog, p, P_NDST, c.ndst_hi, c.ndst_lo, n)
    _col_read(b, o, L, cnt, prog, p, P_PROTO, c.proto, n)
    _col_read(b, o, L, cnt, prog, p, P_SPORT, c.sport, n)
    _col_read(b, o, L, cnt, prog, p, P_DPORT, c.dport, n)
    if prog[p, P_ICMP, 0] != OP_NONE:           # after proto and ports: type * 256 + code as dport
        q = o + prog[p, P_ICMP, 1]
        ln = prog[p, P_ICMP, 2]
        for k in range(cnt):
            pr = c.proto[np.uint64(n + k)]
            if pr == 1 or pr == 58:
                c.sport[np.uint64(n + k)] = 0
                c.dport[np.uint64(n + k)] = np.uint16(_uint(b, q + k * L, ln))
    _col_vlan(b, o, L, cnt, prog, p, P_VSRC, c.vlan_src, n)
    _col_vlan(b, o, L, cnt, prog, p, P_VDST, c.vlan_dst, n)
    _col_vlan(b, o, L, cnt, prog, p, P_VDOT1Q, c.vlan_dot1q, n)
    _col_vlan(b, o, L, cnt, prog, p, P_VCUST, c.vlan_cust, n)
    _col_counter(b, o, L, cnt, prog, p, P_BYTES, c.bytes, n)
    _col_counter(b, o, L, cnt, prog, p, P_PKTS, c.packets, n)
    _col_time(b, o, L, cnt, prog, p, P_FIRST, c.first, n, ver, uptime, secs)
    _col_time(b, o, L, cnt, prog, p, P_LAST, c.last, n, ver, uptime, secs)
    _col_read(b, o, L, cnt, prog, p, P_IN_IF, c.in_if, n)
    _col_read(b, o, L, cnt, prog, p, P_OUT_IF, c.out_if, n)
    _col_sampling(b, o, L, cnt, prog, p, P_SAMPLING, c.sampling, n, scope, samp_keys, samp_rates)
    if prog[p, P_URL, 0] == OP_NONE or pat_off.shape[0] < 2:
        _fill(c.url, n, m, -1)
    else:
        for k in range(cnt):
            c.url[np.uint64(n + k)] = _url(b, o + k * L, so, sl, pat, pat_off)
    _fill(c.row_flags, n, m, flags)
    if so[S_METHOD] >= 0 or so[S_SEC_IP] >= 0 or so[S_SEC_L2] >= 0:
        for k in range(cnt):
            _sampled(b, o + k * L, so, sl, c, n + k, main, pat, pat_off, hdr, hdr_off, scr)


@njit
def decode_sets(buf, pbuf, r_src, r_off, r_len, r_plan, r_exp, r_ver, r_ts, r_uptime, r_secs, r_scope,
                reclen, minlen, f0, nf, options, slot_off, slot_len, f_len, f_slot, prog, prog_flags,
                samp_keys, samp_rates, pat, pat_off, want_options, fast,
                c, n, r_bad, r_nrec, o_scope, o_sampler, o_rate, hdr, hdr_off, scr):
    """Cut the data sets r_* over their plans: flow records into columns `c` from row n (when
    want_options is False) or sampling settings of options records into o_* (when True).

    Returns (new n, options rows written). r_bad[i] gets 1 when set i had a record overrunning it;
    r_nrec[i] the number of records cut from it. With `fast`, flow sets of fixed-length plans are cut
    column by column by the plan's program; otherwise every record goes through `_emit`.
    """
    cap = c.ts.shape[0]
    no = 0
    so = np.empty(NSLOT, np.int64)
    sl = np.empty(NSLOT, np.int64)
    for i in range(r_plan.shape[0]):
        p = r_plan[i]
        if p < 0 or options[p] != want_options:
            continue
        b = buf if r_src[i] == 0 else pbuf
        o = r_off[i]
        end = o + r_len[i]
        L = reclen[p]
        cnt = 0
        if L > 0:
            for s in range(NSLOT):
                so[s] = slot_off[p, s]
                sl[s] = slot_len[p, s]
            if fast and not want_options:
                cnt = min((end - o) // L, max(cap - n, 0))
                _cut_fixed(b, o, L, cnt, prog, p, prog_flags[p], so, sl, c, n, r_exp[i], r_ver[i], r_ts[i],
                           r_uptime[i], r_secs[i], r_scope[i], samp_keys, samp_rates, pat, pat_off,
                           r_src[i] == 0, hdr, hdr_off, scr)
                n += cnt
                r_nrec[i] = cnt
                continue
        while True:
            if L > 0:
                if end - o < L:
                    break
                nxt = o + L
            else:
                if end - o < minlen[p]:
                    break
                for s in range(NSLOT):
                    so[s] = -1
                q = o
                bad = False
                for f in range(f0[p], f0[p] + nf[p]):
                    fl = np.int64(f_len[f])
                    if fl < 0:
                        if q >= end:
                            bad = True
                            break
                        fl = np.int64(b[q])
                        q += 1
                        if fl == 255:
                            if end - q < 2:
                                bad = True
                                break
                            fl = np.int64(_u16(b, q))
                            q += 2
                    if fl > end - q:
                        bad = True
                        break
                    s = f_slot[f]
                    if s >= 0:
                        so[s] = q - o
                        sl[s] = fl
                    q += fl
                if bad:
                    r_bad[i] = 1
                    break
                nxt = q
                # a slot that needs a fixed size but got another length from a variable field
                for s in range(NSLOT):
                    if so[s] >= 0 and s < S_URL0 and (sl[s] < 1 or sl[s] > 16):
                        so[s] = -1
                if so[S_SRC4] >= 0 and sl[S_SRC4] != 4:
                    so[S_SRC4] = -1
                if so[S_DST4] >= 0 and sl[S_DST4] != 4:
                    so[S_DST4] = -1
                if so[S_SRC6] >= 0 and sl[S_SRC6] != 16:
                    so[S_SRC6] = -1
                if so[S_DST6] >= 0 and sl[S_DST6] != 16:
                    so[S_DST6] = -1
            if want_options:
                if no < o_scope.shape[0]:
                    rate = _option_rate(b, o, so, sl)
                    if rate > 0.0:
                        o_scope[no] = r_scope[i]
                        o_sampler[no] = np.int64(_uint(b, o + so[S_SAMPLER], sl[S_SAMPLER])) if so[S_SAMPLER] >= 0 else -1
                        o_rate[no] = rate
                        no += 1
            else:
                if n >= cap:
                    break
                _emit(b, o, so, sl, c, n, r_exp[i], r_ver[i], r_ts[i], r_uptime[i], r_secs[i], r_scope[i],
                      samp_keys, samp_rates, pat, pat_off, r_src[i] == 0, hdr, hdr_off, scr)
                n += 1
            cnt += 1
            o = nxt
        r_nrec[i] = cnt
    return n, no


def _http_args(exporters) -> tuple:
    """Header names and the packet kernel's scratch, kept with the sFlow state (wire/sflow.py)."""
    s = exporters.sflow
    return s.hdr, s.hdr_off, s.scratch


@njit
def sequence(sel, scope, version, seq, nrec, unknown, seq_next, seq_seen, seq_lost, seq_count):
    """Sequence gaps per scope, in datagram order: v9 counts datagrams, IPFIX data records.

    Wrap-safe (uint32 arithmetic; a backwards jump of less than 2^31 is a reorder, not loss).
    softflowd's IPFIX counts the message's own records (seq = previous seq + this message's
    records): accepted as no gap. A message with data still waiting for its template has an
    unknown record count: tracking restarts at the next message.
    """
    for j in range(sel.shape[0]):
        d = sel[j]
        s = scope[d]
        if s < 0:
            continue
        q = np.uint32(seq[d])
        if seq_seen[s]:
            gap = np.uint32(q - seq_next[s])
            if gap != 0 and gap < np.uint32(0x80000000):
                prev = np.uint32((np.int64(seq_next[s]) - seq_count[s]) & 0xFFFFFFFF)
                if not (version[d] == 10 and np.uint32(q - prev) == np.uint32(nrec[d])):
                    seq_lost[s] += gap
        step = np.uint32(1) if version[d] == 9 else np.uint32(nrec[d])
        seq_next[s] = np.uint32(q + step)
        seq_count[s] = nrec[d] if version[d] == 10 else 1
        seq_seen[s] = not unknown[d]


def _warm_up() -> bytes:
    """An IPFIX message with a template (fixed and variable fields) and one data record."""
    import struct
    fields = [(8, 4), (12, 4), (7, 2), (11, 2), (4, 1), (1, 8), (2, 8), (461, 0xFFFF)]
    tset = struct.pack(">HH", 256, len(fields)) + b"".join(struct.pack(">HH", i, ln) for i, ln in fields)
    tset = struct.pack(">HH", 2, 4 + len(tset)) + tset
    rec = bytes([10, 0, 0, 1, 169, 254, 169, 254, 0, 80, 0, 80, 6]) + bytes(16) + b"\x01/"
    dset = struct.pack(">HH", 256, 4 + len(rec)) + rec
    body = tset + dset
    return struct.pack(">HHIII", 10, 16 + len(body), 0, 0, 0) + body


WARM_UP = _warm_up()


class Prepared:
    """A batch walked and resolved: the set rows to cut and how many records they can hold."""

    __slots__ = ("rows", "need", "sel", "scope_dg", "h_seq", "unknown", "pbuf", "buf", "version")


_ROW_COLUMNS = ("src", "off", "len", "plan", "exp", "ver", "ts", "uptime", "secs", "scope", "dg", "key")


def prepare(dg, sel: np.ndarray, version: np.ndarray, exp_ids: np.ndarray, exporters, status: np.ndarray) -> Prepared:
    """Walk every v9 / IPFIX datagram of `sel`, take their templates, resolve every data set to a plan."""
    cache = exporters.templates
    n = dg.n
    buf = dg.buf
    h_uptime = np.zeros(n, np.uint32)
    h_secs = np.zeros(n, np.float64)
    h_seq = np.zeros(n, np.uint32)
    h_domain = np.zeros(n, np.uint32)
    cap = int(dg.lens[sel].sum()) // 4 + 1
    s_dg = np.empty(cap, np.int64)
    s_id = np.empty(cap, np.int64)
    s_off = np.empty(cap, np.int64)
    s_len = np.empty(cap, np.int64)
    k = walk_sets(buf, dg.offs, dg.lens, sel, version, status, h_uptime, h_secs, h_seq, h_domain,
                  s_dg, s_id, s_off, s_len)
    s_dg, s_id, s_off, s_len = s_dg[:k], s_id[:k], s_off[:k], s_len[:k]
    walked = sel[(status[sel] == 0) | (status[sel] == _BAD_SET)]
    scope_dg = np.full(n, -1, np.int64)
    if len(walked):
        scope_dg[walked] = cache.scopes_for(exp_ids[walked], version[walked], h_domain[walked], exporters)
    now = float(dg.ts[:n].max()) if n else 0.0
    status[walked[scope_dg[walked] < 0]] = _SCOPE_OVER  # past limits.max_scopes_per_exporter: dropped
    keep = scope_dg[s_dg] >= 0
    s_dg, s_id, s_off, s_len = s_dg[keep], s_id[keep], s_off[keep], s_len[keep]
    s_ver = version[s_dg]
    s_scope = scope_dg[s_dg]
    is_tmpl = np.where(s_ver == 9, s_id <= 1, (s_id == 2) | (s_id == 3))

    # templates: Python per template set, in batch order
    defs: dict[int, list[tuple[int, int]]] = {}
    before: dict[int, int] = {}                      # the plan each redefined key had before the batch
    for row in np.flatnonzero(is_tmpl).tolist():
        d = int(s_dg[row])
        o = int(s_off[row])
        sid = int(s_scope[row])
        parsed = cache.parse_set(buf[o:o + int(s_len[row])].tobytes(), int(s_ver[row]), int(s_id[row]))
        e = int(exp_ids[d])
        exporters.add_count("templates", e, len(parsed.templates))
        if parsed.rejected:
            exporters.add_count("templates_rejected", e, parsed.rejected)
            if status[d] == 0:
                status[d] = _BAD_TEMPLATE
        if parsed.withdrawals:
            exporters.add_count("withdrawals_ignored", e, parsed.withdrawals)
        for t in parsed.templates:
            key = (sid << 16) | t.template_id
            if key not in before:
                before[key] = cache.lookup(key, float(dg.ts[d]))
            held = cache.templates.get(key)
            pid = cache.define(sid, t, float(dg.ts[d]))
            if pid < 0:                              # past a [limits] bound: not stored, counted
                exporters.add_count("templates_over_limit", e)
                continue
            if held is not None and held[0] != pid:  # the same id with another layout
                exporters.add_count("templates_redefined", e)
            defs.setdefault(key, []).append((row, pid))

    # data sets: Python per distinct (scope, template id)
    data_rows = np.flatnonzero(s_id >= 256)
    keys = (s_scope[data_rows] << 16) | s_id[data_rows]
    plan = np.full(len(data_rows), -1, np.int32)
    if len(data_rows):
        order = np.argsort(keys, kind="stable")
        uniq, starts = np.unique(keys[order], return_index=True)
        bounds = np.append(starts, len(order))
        for j, key in enumerate(uniq.tolist()):
            idx = order[bounds[j]:bounds[j + 1]]
            dd = defs.get(key)
            if dd is None:
                plan[idx] = cache.lookup(key, now)
                continue
            pos = np.array([r for r, _ in dd], np.int64)
            pids = np.array([p for _, p in dd], np.int32)
            at = np.searchsorted(pos, data_rows[idx], side="right") - 1
            earlier = before[key] if before[key] >= 0 else pids[0]
            plan[idx] = np.where(at >= 0, pids[np.maximum(at, 0)], earlier)
    d_dg = s_dg[data_rows]
    rows = {
        "src": np.zeros(len(data_rows), np.uint8), "off": s_off[data_rows], "len": s_len[data_rows], "plan": plan,
        "exp": exp_ids[d_dg].astype(np.int32), "ver": s_ver[data_rows].astype(np.uint8), "ts": dg.ts[d_dg],
        "uptime": h_uptime[d_dg], "secs": h_secs[d_dg], "scope": s_scope[data_rows], "dg": d_dg, "key": keys,
    }

    # data that waited for a template that has now arrived goes first (it is older)
    prep = Prepared()
    pend = cache.pending
    prep.pbuf = pend.buf
    if len(pend) and (defs or pend.held):
        known = set(defs) | pend.held
        ready = np.isin(pend.cols["key"], np.fromiter(known, np.int64, len(known)))
        pend.held = set()
        if ready.any():
            ready, plans = _release_within(ready, pend, rows, defs, cache, now)
        if ready.any():
            taken, prep.pbuf = pend.take(ready)
            late = dict(taken, src=np.ones(len(taken["key"]), np.uint8), dg=np.full(len(taken["key"]), -1, np.int64),
                        plan=plans)
            rows = {name: np.concatenate([late[name].astype(rows[name].dtype), rows[name]]) for name in _ROW_COLUMNS}
            exporters.add_counts("sets_late", taken["exp"])

    # what still has no plan waits; what waited too long leaves, counted
    waiting = rows["plan"] < 0
    unknown = np.zeros(n, np.bool_)
    if waiting.any():
        w = {name: rows[name][waiting] for name in ("key", "off", "len", "exp", "ver", "ts", "uptime", "secs", "scope")}
        unknown[rows["dg"][waiting]] = True
        exporters.add_counts("sets_waiting", w["exp"])
        exporters.add_counts("sets_dropped", pend.add(w, buf, cache.pending_max_sets))
        rows = {name: col[~waiting] for name, col in rows.items()}
    exporters.add_counts("sets_expired", pend.expire(now, cache.pending_max_seconds))
    p = rows["plan"]
    prep.need = int((rows["len"] // np.maximum(cache.plans.minlen[p], 1)).sum()) if len(p) else 0
    prep.rows, prep.sel, prep.scope_dg, prep.h_seq, prep.unknown, prep.buf, prep.version = \
        rows, sel, scope_dg, h_seq, unknown, buf, version
    return prep


def _release_within(ready: np.ndarray, pend, rows: dict, defs: dict, cache, now: float):
    """The waiting sets to release with this batch, oldest first, as many as keep the batch's records
    within bounds.batch_records (at worst one per byte); the rest wait for the next batch (pend.held).
    Returns the mask and the plan of each released set."""
    idx = np.flatnonzero(ready)
    keys = pend.cols["key"][idx].tolist()
    plans = np.array([defs[k][0][1] if k in defs else cache.lookup(k, now) for k in keys], np.int32)
    minlen = cache.plans.minlen
    own = rows["plan"] >= 0
    budget = cache.bounds.batch_records - int((rows["len"][own] // np.maximum(minlen[rows["plan"][own]], 1)).sum())
    need = np.where(plans >= 0, pend.cols["len"][idx] // np.maximum(minlen[np.maximum(plans, 0)], 1), 0)
    fits = (np.cumsum(need) <= budget) & (plans >= 0)   # a template that expired meanwhile: it waits (expires)
    pend.held = {k for k, f, p in zip(keys, fits.tolist(), plans.tolist()) if not f and p >= 0}
    out = np.zeros_like(ready)
    out[idx[fits]] = True
    return out, plans[fits]


def finish(prep: Prepared, exporters, out, status: np.ndarray, keep: bool = False, ep=None,
           records: np.ndarray | None = None) -> int:
    """Cut the resolved sets into `out` from row out.n; options first (they set sampling rates).

    With `keep`, only rows that may alert for the endpoint table `ep` are kept (wire.decode);
    `records` (per exporter) gets every flow record cut, kept or not."""
    cache = exporters.templates
    pl = cache.plans
    r = prep.rows
    m = len(r["plan"])
    bad = np.zeros(m, np.uint8)
    nrec = np.zeros(m, np.int64)
    n = out.n
    if m:
        args = (prep.buf, prep.pbuf, r["src"], r["off"], r["len"], r["plan"], r["exp"], r["ver"], r["ts"],
                r["uptime"], r["secs"], r["scope"], pl.reclen, pl.minlen, pl.f0, pl.nf, pl.options,
                pl.slot_off, pl.slot_len, pl.f_len, pl.f_slot, pl.prog, pl.prog_flags)
        if pl.options[r["plan"]].any():
            cap = prep.need + 1
            o_scope = np.empty(cap, np.int64)
            o_sampler = np.empty(cap, np.int64)
            o_rate = np.empty(cap, np.float64)
            _, no = decode_sets(*args, cache.samp_keys, cache.samp_rates, cache.pat_buf, cache.pat_off, True, False,
                                out.rows, n, bad, nrec, o_scope, o_sampler, o_rate, *_http_args(exporters))
            cache.set_rates(o_scope[:no], o_sampler[:no], o_rate[:no])
            opts = pl.options[r["plan"]]
            exporters.add_counts("options_records", np.repeat(r["exp"][opts], nrec[opts]))
        empty = np.empty(0, np.int64)
        n0 = n
        n, _ = decode_sets(*args, cache.samp_keys, cache.samp_rates, cache.pat_buf, cache.pat_off, False, FAST_PATH,
                           out.rows, n, bad, nrec, empty, empty, np.empty(0, np.float64), *_http_args(exporters))
        if keep:                                     # one call per batch: a call costs more than 30 rows
            n = compact(out.rows, n0, n, ep)
        if records is not None:
            flows = ~pl.options[r["plan"]]
            np.add.at(records, r["exp"][flows], nrec[flows])
        baddg = r["dg"][(bad != 0) & (r["dg"] >= 0)]
        status[baddg[status[baddg] == 0]] = _BAD_RECORD
    # where each set's records went, for tools and tests that locate a record in its datagram
    cache.last_sets = (r["dg"], r["off"], nrec, pl.options[r["plan"]] if m else np.zeros(0, np.bool_))
    per_dg = np.zeros(prep.scope_dg.shape[0], np.int64)
    inbatch = r["dg"] >= 0
    np.add.at(per_dg, r["dg"][inbatch], nrec[inbatch])
    sequence(prep.sel, prep.scope_dg, prep.version, prep.h_seq, per_dg, prep.unknown,
             cache.seq_next, cache.seq_seen, cache.seq_lost, cache.seq_count)
    return n
