"""Fixed-length NetFlow v9 / IPFIX data sets cut column by column over the plan's program.

The program (plans.compile_program) is one instruction per output column with every fallback
decided per template, read here as prog[plan, row, i] scalars: no array views per set. The result
equals the per-record decoder's (records.emit), which a test holds it to. The column helpers are
ordinary calls, not numba-level inlines: inlining them made IPFIX decode about 1.5x faster in
process (7.2 vs 4.9 M records/s, loaded machine) but the first start's compile 24 s longer (68 vs
44 s); the first start is what every install pays (README, "Start-up").
"""
from __future__ import annotations

import numpy as np

from ..jit import njit
from .plans import (A_V4, A_V6_V4, OP_NONE, OP_SUM, P_BYTES, P_DPORT, P_DST, P_FIRST, P_ICMP, P_IN_IF, P_LAST,
                    P_NDST, P_NSRC, P_OUT_IF, P_PKTS, P_PROTO, P_SAMPLING, P_SPORT, P_SRC, P_URL, P_VCUST, P_VDOT1Q,
                    P_VDST, P_VSRC, SAMP_INTERVAL, SAMP_SAMPLER, T_DELTA_US, T_MS, T_NTP, T_S, T_UPTIME)
from .readers import _u16, _u32, _uint
from .records import MAPPED, S_METHOD, S_SEC_IP, S_SEC_L2, ntp, rate32, sampled, url_index

__all__ = ["cut_fixed"]

_NO_SAMPLER = 0xFFFF_FFFF


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
            lo[np.uint64(n + k)] = MAPPED | np.uint64(_u32(b, q + k * L))
    else:
        q = o + prog[p, row, 1]
        q4 = o + prog[p, row, 3]
        for k in range(cnt):
            h = _uint(b, q + k * L, 8)
            l = _uint(b, q + k * L + 8, 8)
            if op == A_V6_V4 and (h | l) == 0:
                l = MAPPED | np.uint64(_u32(b, q4 + k * L))
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
            col[np.uint64(n + k)] = ntp(_uint(b, q + k * L, ln))
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
            col[np.uint64(n + k)] = rate32(np.float64(_uint(b, q + k * L, ln)))
    elif samp_keys.shape[0] == 0:
        _fill(col, n, n + cnt, 0)
    else:
        top = np.int64(scope) << 32
        dflt = max(_lookup_rate(samp_keys, samp_rates, top | np.int64(_NO_SAMPLER)), 0.0)
        if op == SAMP_SAMPLER:
            for k in range(cnt):
                key = top | np.int64(_uint(b, q + k * L, ln) & np.uint64(0xFFFFFFFF))
                rate = _lookup_rate(samp_keys, samp_rates, key)
                col[np.uint64(n + k)] = rate32(rate if rate >= 0.0 else dflt)
        else:
            _fill(col, n, n + cnt, rate32(dflt))


@njit
def cut_fixed(b, o, L, cnt, plans, p, so, sl, c, n, s, rates, http, main):
    """Records o, o + L, ... (cnt of them) of one fixed-length set into rows n.. of `c`, column by
    column over plan p's program; so / sl are its slot offsets and lengths, `s` the set's row
    (v9ipfix.SET); rates, http and main as for records.emit."""
    prog = plans.prog
    exp, ver, ts, uptime, secs, scope = s.exp, s.ver, s.ts, s.uptime, s.secs, s.scope
    samp_keys, samp_rates = rates
    pat, pat_off = http[0], http[1]
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
            c.url[np.uint64(n + k)] = url_index(b, o + k * L, so, sl, pat, pat_off)
    _fill(c.row_flags, n, m, plans.prog_flags[p])
    if so[S_METHOD] >= 0 or so[S_SEC_IP] >= 0 or so[S_SEC_L2] >= 0:
        for k in range(cnt):
            sampled(b, o + k * L, so, sl, c, n + k, http, main)
