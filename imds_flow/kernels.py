"""Pure detection kernels on ndarrays and scalars: no dicts, no logging, no config.

Addresses are (hi, lo) uint64 pairs (addr.py); a network is (net_hi, net_lo, mask_hi, mask_lo,
is_v4) in five parallel arrays. An IPv6 network never contains an IPv4(-mapped) address, so
::/0 means "all IPv6", as an operator reads it. detect.py builds the tables once.
"""
from __future__ import annotations

import numpy as np
from llvmlite import ir
from numba import literal_unroll, types
from numba.core import cgutils
from numba.extending import intrinsic

from .flows import HTTP, NAT_DST, NAT_SRC, VLAN_MORE_COUNT, VLAN_MORE_MAX
from .jit import kernel, njit, step

__all__ = ["match_net", "match_nets", "in_v4_endpoints", "cover", "in_cover", "detect_batch", "compact", "group_hits",
           "fold_groups", "fold_insert", "fold_lookup", "fold_index", "vlan_code", "vlan_codes", "count_batch", "key_lookup",
           "REQUEST", "RESPONSE"]

REQUEST = 0
RESPONSE = 1


@njit
def match_net(hi, lo, net_hi, net_lo, mask_hi, mask_lo, net_v4):
    """Index of the first network containing (hi, lo), or -1."""
    v4 = hi == 0 and (lo >> np.uint64(32)) == np.uint64(0xFFFF)
    for e in range(net_hi.shape[0]):
        if (hi & mask_hi[e]) == net_hi[e] and (lo & mask_lo[e]) == net_lo[e] and net_v4[e] == v4:
            return e
    return -1


@step
def in_v4_endpoints(a_lo, b_lo, ep_lo, ep_mlo, ep_v4):
    """Whether either of two IPv4 addresses (IPv4-mapped low words; their high word is 0) lies in
    an IPv4 network of the table: match_net for addresses known to be IPv4, both in one pass, only
    the IPv4 networks' low words compared."""
    for e in range(ep_lo.shape[0]):
        if ep_v4[e] and ((a_lo & ep_mlo[e]) == ep_lo[e] or (b_lo & ep_mlo[e]) == ep_lo[e]):
            return True
    return False


@njit
def _cover_of(net_hi, net_lo, mask_hi, mask_lo, net_v4, v4):
    nh = nl = mh = ml = np.uint64(0)
    first = True
    for e in range(net_hi.shape[0]):
        if net_v4[e] != v4:
            continue
        if first:
            nh, nl, mh, ml = net_hi[e], net_lo[e], mask_hi[e], mask_lo[e]
            first = False
        else:
            mh &= mask_hi[e] & ~(nh ^ net_hi[e])
            ml &= mask_lo[e] & ~(nl ^ net_lo[e])
            nh &= mh
            nl &= ml
    if first:                                   # no network of this family: nothing is in it
        nh = np.uint64(1)
    return nh, nl, mh, ml


@njit
def cover(net_hi, net_lo, mask_hi, mask_lo, net_v4):
    """Per family (IPv4, IPv6) one network containing all of a table's networks of that family:
    the bits they all fix, to the value they all give them. An address in no cover is in no
    network of the table (in_cover: four words compared, where match_net walks the table); a
    family without networks covers nothing. ((net_hi, net_lo, mask_hi, mask_lo) IPv4, ... IPv6)."""
    return (_cover_of(net_hi, net_lo, mask_hi, mask_lo, net_v4, True),
            _cover_of(net_hi, net_lo, mask_hi, mask_lo, net_v4, False))


@njit(inline="always")
def in_cover(hi, lo, cv):
    """Whether (hi, lo) lies in one of the covers `cv` (cover): false means in no network."""
    (nh4, nl4, mh4, ml4), (nh6, nl6, mh6, ml6) = cv
    return ((hi & mh4) == nh4 and (lo & ml4) == nl4) or ((hi & mh6) == nh6 and (lo & ml6) == nl6)


@njit
def match_nets(hi, lo, net_hi, net_lo, mask_hi, mask_lo, net_v4, out):
    """out[i] = whether address (hi[i], lo[i]) lies in any of the networks."""
    for i in range(hi.shape[0]):
        out[i] = match_net(hi[i], lo[i], net_hi, net_lo, mask_hi, mask_lo, net_v4) >= 0


@kernel
def detect_batch(c, n, endpoints, suppress, vlan_suppressed, n_endpoints, n_urls, out_idx, out_ep, out_dir,
                 suppressed_by_exporter, alerted_by_exporter):
    """Find records that touch an endpoint and are not suppressed.

    A destination (or post-NAT destination) in an endpoint is a request; otherwise a source in one
    is a response. A record that matches no address but carries a configured URL substring
    (c.url >= 0) is a request to pseudo-endpoint n_endpoints + url; else one whose sampled HTTP
    request names a configured header field (flag HTTP, c.headers bit k) is a request to
    pseudo-endpoint n_endpoints + n_urls + k (the lowest such k). Suppressed when the local
    side (the one that is not the endpoint) is in a suppressed subnet or any VLAN it carries is
    flagged in vlan_suppressed (bool[4096]); each suppressed record adds one to
    suppressed_by_exporter[c.exporter[i]], each hit to alerted_by_exporter[...]. Writes hits to
    out_*; returns (hits, suppressed).
    `endpoints` and `suppress` (the suppressed subnets) are network tables (net_hi, net_lo,
    mask_hi, mask_lo, is_v4), as compact takes them.
    """
    ep_hi, ep_lo, ep_mhi, ep_mlo, ep_v4 = endpoints      # once: an array taken from a tuple in the
    sup_hi, sup_lo, sup_mhi, sup_mlo, sup_v4 = suppress  # loop costs a reference count per record
    hits = 0
    suppressed = 0
    for i in range(n):
        flags = c.row_flags[i]
        direction = REQUEST
        ep = match_net(c.dst_hi[i], c.dst_lo[i], ep_hi, ep_lo, ep_mhi, ep_mlo, ep_v4)
        if ep < 0 and flags & NAT_DST:
            ep = match_net(c.ndst_hi[i], c.ndst_lo[i], ep_hi, ep_lo, ep_mhi, ep_mlo, ep_v4)
        if ep < 0:
            direction = RESPONSE
            ep = match_net(c.src_hi[i], c.src_lo[i], ep_hi, ep_lo, ep_mhi, ep_mlo, ep_v4)
            if ep < 0 and flags & NAT_SRC:
                ep = match_net(c.nsrc_hi[i], c.nsrc_lo[i], ep_hi, ep_lo, ep_mhi, ep_mlo, ep_v4)
        if ep < 0:
            if c.url[i] >= 0:
                ep = n_endpoints + c.url[i]
            elif flags & HTTP and c.headers[i] != 0:
                h = c.headers[i]
                k = 0
                while (h >> np.uint32(k)) & np.uint32(1) == 0:
                    k += 1
                ep = n_endpoints + n_urls + k
            else:
                continue
            direction = REQUEST
        if direction == REQUEST:
            local_hi = c.src_hi[i]
            local_lo = c.src_lo[i]
        else:
            local_hi = c.dst_hi[i]
            local_lo = c.dst_lo[i]
        if match_net(local_hi, local_lo, sup_hi, sup_lo, sup_mhi, sup_mlo, sup_v4) >= 0 or _vlan_hit(c, i, vlan_suppressed):
            suppressed += 1
            e = c.exporter[i]
            if 0 <= e < suppressed_by_exporter.shape[0]:
                suppressed_by_exporter[e] += 1
            continue
        out_idx[hits] = i
        out_ep[hits] = ep
        out_dir[hits] = direction
        hits += 1
        e = c.exporter[i]
        if 0 <= e < alerted_by_exporter.shape[0]:
            alerted_by_exporter[e] += 1
    return hits, suppressed


@njit
def _vlan_hit(c, i, table):
    """Whether any VLAN id row i carries (the four VLAN columns and the ids packed in vlan_more)
    is flagged in `table`."""
    for v in (c.vlan_src[i], c.vlan_dst[i], c.vlan_dot1q[i], c.vlan_cust[i]):
        if 0 <= v < 4096 and table[v]:
            return True
    more = c.vlan_more[i]
    for k in range(_more_count(more)):
        if table[_more_id(more, k)]:
            return True
    return False


@step
def _more_count(more):
    """How many VLAN ids a vlan_more value holds (flows.py)."""
    return min(np.int64(more >> np.uint64(VLAN_MORE_COUNT)), VLAN_MORE_MAX)


@step
def _more_id(more, k):
    """The k-th VLAN id packed in a vlan_more value (0 .. 4095)."""
    return np.int64((more >> np.uint64(12 * k)) & np.uint64(0xFFF))


@njit
def _in_any(hi, lo, ep_hi, ep_lo, ep_mhi, ep_mlo, ep_v4):
    v4 = hi == 0 and (lo >> np.uint64(32)) == np.uint64(0xFFFF)
    for e in range(ep_hi.shape[0]):
        if (hi & ep_mhi[e]) == ep_hi[e] and (lo & ep_mlo[e]) == ep_lo[e] and ep_v4[e] == v4:
            return True
    return False


@kernel
def compact(c, start, end, ep):
    """Keep the rows of start..end that may alert, moved down in order (every column); returns the
    new end. A row may alert when an address or post-NAT address is in an endpoint of `ep`
    (net_hi, net_lo, mask_hi, mask_lo, is_v4), it carries a configured URL substring, or it holds a
    sampled HTTP request (flag HTTP: its header names may alert): a superset
    of detect_batch's hits (suppression is left to it), so dropping the other rows changes no alert.
    Written over column arrays, not per-row calls with the Columns tuple (a reference count per
    column per call costs ~1 us a row)."""
    ep_hi, ep_lo, ep_mhi, ep_mlo, ep_v4 = ep
    url, flags, dst_hi, dst_lo, src_hi, src_lo = c.url, c.row_flags, c.dst_hi, c.dst_lo, c.src_hi, c.src_lo
    ndst_hi, ndst_lo, nsrc_hi, nsrc_lo = c.ndst_hi, c.ndst_lo, c.nsrc_hi, c.nsrc_lo
    j = start
    for i in range(start, end):
        f = flags[i]
        if (url[i] >= 0 or f & HTTP or _in_any(dst_hi[i], dst_lo[i], ep_hi, ep_lo, ep_mhi, ep_mlo, ep_v4)
                or _in_any(src_hi[i], src_lo[i], ep_hi, ep_lo, ep_mhi, ep_mlo, ep_v4)
                or (f & NAT_DST and _in_any(ndst_hi[i], ndst_lo[i], ep_hi, ep_lo, ep_mhi, ep_mlo, ep_v4))
                or (f & NAT_SRC and _in_any(nsrc_hi[i], nsrc_lo[i], ep_hi, ep_lo, ep_mhi, ep_mlo, ep_v4))):
            if j != i:
                c[j] = c[i]
            j += 1
    return j


@kernel
def count_batch(counters, exp_ids, status, reason_col, col_datagrams, last_seen, now):
    """Per exporter: one datagram each, one error in the column of its reason code; last_seen = now.
    Returns how many datagrams were rejected."""
    bad = 0
    for d in range(exp_ids.shape[0]):
        e = exp_ids[d]
        counters[e, col_datagrams] += 1
        if status[d] != 0:
            counters[e, reason_col[status[d]]] += 1
            bad += 1
        last_seen[e] = now
    return bad


_PRIME = np.uint64(0x9E3779B97F4A7C15)


@njit
def _mix(h, v):
    h = (h ^ np.uint64(v)) * _PRIME
    return h ^ (h >> np.uint64(29))


@njit
def _side_port(c, i, direction):
    return c.dport[i] if direction == REQUEST else c.sport[i]


@njit
def _same_key(c, i, j, ep_i, ep_j, dir_i, dir_j):
    return (ep_i == ep_j and dir_i == dir_j and c.exporter[i] == c.exporter[j] and c.src_hi[i] == c.src_hi[j]
            and c.src_lo[i] == c.src_lo[j] and c.dst_hi[i] == c.dst_hi[j] and c.dst_lo[i] == c.dst_lo[j]
            and c.proto[i] == c.proto[j] and _side_port(c, i, dir_i) == _side_port(c, j, dir_j))


@njit
def vlan_code(c, i):
    """The VLAN row i carries: the first non-zero of vlan_src, vlan_dst, vlan_dot1q, vlan_cust and
    the ids packed in vlan_more, else 0 if one says 0, else -1 (none)."""
    zero = False
    for v in (c.vlan_src[i], c.vlan_dst[i], c.vlan_dot1q[i], c.vlan_cust[i]):
        if v > 0:
            return np.int64(v)
        zero = zero or v == 0
    more = c.vlan_more[i]
    for k in range(_more_count(more)):
        v = _more_id(more, k)
        if v > 0:
            return v
        zero = True
    return np.int64(0) if zero else np.int64(-1)


@kernel
def vlan_codes(c, idx, out):
    """out[k] = vlan_code of row idx[k]."""
    for k in range(idx.shape[0]):
        out[k] = vlan_code(c, idx[k])


# what an alert takes from its hit row (alerts.hit_alerts): these fields as uint64 (signed ones
# reinterpreted; VLAN: vlan_code + 1, 0 none), and ts, first_seen, last_seen as float64
HIT_INTS = ("exporter", "version", "src_hi", "src_lo", "dst_hi", "dst_lo", "sport", "dport", "proto", "bytes",
            "packets", "sampling_rate", "row_flags", "http_method", "url_off", "url_len", "headers", "host_off",
            "host_len", "in_if", "out_if", "vlan")
HIT_FLOATS = ("ts", "first_seen", "last_seen")
_HIT_READ = HIT_INTS[:-1]               # read from the row as they are; "vlan" is computed


@kernel
def hit_fields(c, idx, ints, floats):
    """Row k of ints / floats = the HIT_INTS / HIT_FLOATS of row idx[k]: one call and two tolist()
    give hit_alerts every value, where a column at a time took two numpy calls per field."""
    for k in range(idx.shape[0]):
        row = c[idx[k]]
        j = 0
        for name in literal_unroll(_HIT_READ):
            ints[k, j] = np.uint64(np.int64(row[name]))     # a signed field: its 64-bit pattern
            j += 1
        ints[k, j] = vlan_code(c, idx[k]) + 1
        j = 0
        for name in literal_unroll(HIT_FLOATS):
            floats[k, j] = row[name]
            j += 1


U64_MAX = np.uint64(0xFFFFFFFFFFFFFFFF)         # bytes, packets and estimates saturate here


@njit
def sat_add(a, b):
    """a + b of two uint64, at most 2**64 - 1: an alert's bytes, packets and estimates saturate
    rather than wrap (alerts.saturate is the same rule in Python)."""
    s = a + b
    return s if s >= a else U64_MAX


@njit
def sat_mul(a, b):
    """a * b of two uint64, at most 2**64 - 1 (a counter scaled by a sampling rate)."""
    if a != 0 and b > U64_MAX // a:
        return U64_MAX
    return a * b


@njit
def _merge(c, i, r, g, g_count, g_sums, g_times, pending):
    """Fold group g (group_hits; i: the batch row of its last hit) into row r of the pending
    alerts' numbers: a_count; a_sums: bytes, packets and their estimates; a_times: first / last
    seen, NaN none, and ts; a_tail: sport, dport, VLAN code of the latest record."""
    a_count, a_sums, a_times, a_tail = pending[0], pending[1], pending[2], pending[3]
    a_count[r] += g_count[g]
    for q in range(4):
        a_sums[r, q] = sat_add(a_sums[r, q], g_sums[g, q])
    first, last = g_times[g, 0], g_times[g, 1]
    if first == first and not (a_times[r, 0] <= first):      # NaN never wins, a number beats NaN
        a_times[r, 0] = first
    if last == last and not (a_times[r, 1] >= last):
        a_times[r, 1] = last
    if g_times[g, 2] > a_times[r, 2]:
        a_times[r, 2] = g_times[g, 2]
    a_tail[r, 0] = c.sport[i]
    a_tail[r, 1] = c.dport[i]
    a_tail[r, 2] = vlan_code(c, i)


@njit
def _hold(c, i, key, ep, direction, g, rest, last, g_count, g_sums, g_times, pending, counters):
    """Group g's alert becomes key `key`'s pending alert here, in a row of the spare rows Python set
    aside (counters[4] of them left in `spare`): its numbers as _merge keeps them (rest: those of
    its hits after the first, group_hits' [.., 1], the first having left), and a copy of the row i
    of its first hit held (endpoint ep, direction) with the key's id, from which Folder.folded
    makes the alert's dict when the kernel call returns. Returns the row, or -1 when none is spare
    or the row's HTTP columns point into the batch's buffer (it is overwritten by the next batch):
    Python holds it (Folder._open_groups)."""
    a_count, a_sums, a_times, a_tail, held, held_at, spare = pending
    left = counters[4]
    if left <= 0 or c.row_flags[i] & HTTP:
        return -1
    r = spare[left - 1]
    counters[4] = left - 1
    a_count[r] = g_count[g] - rest
    for q in range(4):
        a_sums[r, q] = g_sums[g, 4 * rest + q]
    for q in range(3):
        a_times[r, q] = g_times[g, 3 * rest + q]
    a_tail[r, 0] = c.sport[last]
    a_tail[r, 1] = c.dport[last]
    a_tail[r, 2] = vlan_code(c, last)
    held[r] = c[i]
    held_at[r, 0] = key
    held_at[r, 1] = ep
    held_at[r, 2] = direction
    return r


@kernel
def group_hits(c, idx, ep, direction, table, hit_group, g_first, g_second, g_last, g_count, g_sums, g_times):
    """Group hits by fold key (exporter, src, dst, proto, endpoint-side port, endpoint, direction).

    Groups are numbered in order of first appearance; hit_group[k] is hit k's. Per group g: hit positions of its first,
    second (-1) and last hit, its count, and for the hits after the first (`rest`, [.., 1]) and for
    all ([.., 0]): sums of bytes, packets, bytes and packets times sampling (g_sums[g, 0..3] all,
    [4..7] rest), times (g_times[g]: 0 min first / 1 max last / 2 max ts over all, 3..5 the same
    over the rest, 6 ts of the first hit, NaN where there is none). `table` is int64 scratch of
    a power of two >= 2 * len(idx). Returns the number of groups.
    """
    m = idx.shape[0]
    mask = table.shape[0] - 1
    table[:] = -1
    groups = 0
    for k in range(m):
        i = idx[k]
        h = _mix(_mix(_mix(_mix(_mix(_PRIME, c.exporter[i]), c.src_lo[i]), c.dst_lo[i]), c.src_hi[i] ^ c.dst_hi[i]),
                 (np.uint64(c.proto[i]) << np.uint64(32)) | (np.uint64(_side_port(c, i, direction[k])) << np.uint64(8))
                 | (np.uint64(ep[k]) << np.uint64(40)) | np.uint64(direction[k]))
        s = np.int64(h & np.uint64(mask))
        while True:
            g = table[s]
            if g < 0:
                g = groups
                groups += 1
                table[s] = g
                g_first[g] = k
                g_second[g] = -1
                g_count[g] = 0
                for q in range(8):
                    g_sums[g, q] = 0
                for q in range(6):
                    g_times[g, q] = np.nan
                g_times[g, 6] = c.ts[i]
                break
            f = idx[g_first[g]]
            if _same_key(c, i, f, ep[k], ep[g_first[g]], direction[k], direction[g_first[g]]):
                break
            s = (s + 1) & mask
        hit_group[k] = g
        g_count[g] += 1
        g_last[g] = k
        if g_count[g] == 2:
            g_second[g] = k
        samp = np.uint64(c.sampling_rate[i]) if c.sampling_rate[i] != 0 else np.uint64(1)
        b = c.bytes[i]
        p = c.packets[i]
        lo = 0 if g_count[g] == 1 else 4
        b_est, p_est = sat_mul(b, samp), sat_mul(p, samp)
        for at in range(0, lo + 1, 4):
            g_sums[g, at] = sat_add(g_sums[g, at], b)
            g_sums[g, at + 1] = sat_add(g_sums[g, at + 1], p)
            g_sums[g, at + 2] = sat_add(g_sums[g, at + 2], b_est)
            g_sums[g, at + 3] = sat_add(g_sums[g, at + 3], p_est)
        t0 = 0 if g_count[g] == 1 else 3
        for at in range(0, t0 + 1, 3):
            v = c.first_seen[i]
            if not np.isnan(v) and (np.isnan(g_times[g, at]) or v < g_times[g, at]):
                g_times[g, at] = v
            v = c.last_seen[i]
            if not np.isnan(v) and (np.isnan(g_times[g, at + 1]) or v > g_times[g, at + 1]):
                g_times[g, at + 1] = v
            v = c.ts[i]
            if np.isnan(g_times[g, at + 2]) or v > g_times[g, at + 2]:
                g_times[g, at + 2] = v
    return groups


@njit
def fold_words(c, i, ep, direction):
    """The fold key of row i (hit of endpoint `ep`, `direction`) as six words: exporter and
    endpoint, protocol / endpoint-side port / direction, source and destination (hi, lo); the
    same words Folder computes from a key tuple (alerts._words)."""
    return ((np.uint64(c.exporter[i]) << np.uint64(32)) | np.uint64(ep),
            (np.uint64(c.proto[i]) << np.uint64(17)) | (np.uint64(_side_port(c, i, direction)) << np.uint64(1))
            | np.uint64(direction),
            np.uint64(c.src_hi[i]), np.uint64(c.src_lo[i]), np.uint64(c.dst_hi[i]), np.uint64(c.dst_lo[i]))


@step
def _home_words(words, mask):
    """The first slot a six-word fold key probes in a table of mask + 1 slots."""
    h = _PRIME
    for q in range(6):
        h = _mix(h, words[q])
    return np.int64(h & np.uint64(mask))


@njit
def _find_words(words, k_words, t_val):
    """Slot of `words` in the open-addressing table of ids (t_val -1 = empty; id k's key is row k
    of k_words): where its id is, or the empty slot where it would go."""
    mask = t_val.shape[0] - 1
    s = _home_words(words, mask)
    while t_val[s] != -1:
        k = t_val[s]
        same = True
        for q in range(6):
            if k_words[k, q] != words[q]:
                same = False
                break
        if same:
            break
        s = (s + 1) & mask
    return s


@njit
def fold_insert(words, value, k_words, t_val):
    """Store six-word key `words` (absent) under id `value` (>= 0, a row of k_words) in the table
    fold_groups reads; the caller keeps it at most half full."""
    s = _find_words(words, k_words, t_val)
    for q in range(6):
        k_words[value, q] = words[q]
    t_val[s] = value


@kernel
def fold_lookup(words, k_words, t_val):
    """The id of six-word key `words` in a fold key table, -1 when absent."""
    return t_val[_find_words(words, k_words, t_val)]


@step
def _ask_for_keys(c, idx, ep, direction, g_first, n, keys, slot):
    """fold_groups' memory reads asked for before it makes them (prefetch, as key_lookup): each
    group's first slot in the table of ids, then the rows of the ids found there (its words,
    window and pending row). In an alert flood (thousands of exporters each reporting the same
    instances: hundreds of thousands of keys) the table and rows are out of the caches, and one
    group after another waited for five memory reads after another. `slot`: scratch of n."""
    k_words, t_val, k_start, k_open, k_row = keys
    mask = t_val.shape[0] - 1
    for g in range(n):
        f = g_first[g]
        slot[g] = _home_words(fold_words(c, idx[f], ep[f], direction[f]), mask)
        prefetch(t_val, slot[g])
    flat = k_words.reshape(-1)
    for g in range(n):
        key = t_val[slot[g]]
        if key >= 0:
            prefetch(flat, 6 * key)
            prefetch(k_start, key)
            prefetch(k_open, key)
            prefetch(k_row, key)


@kernel
def fold_groups(c, idx, ep, direction, groups, n, keys, pending, window, room, kind, opened):
    """What each of a batch's n hit groups (group_hits) does, and what can be done here: Python runs
    only for the rest. `keys`: the fold keys seen (per id its six words, k_words, and the table of
    ids t_val: _find_words) and per id the open window's start, whether a window is open, its
    pending alert's row (-1: none); `pending`:
    the pending alerts' numbers (see _merge); `room`: keys that may still open
    (limits.max_fold_keys). kind[g]: 0 merged into its pending alert here, or made one here
    (_hold), 1 opens a pending alert in its window (Python makes it), 2 opens a window (opened
    here: a new key gets the next id, the caller having made room in the table and the arrays;
    hits after its first, with no pending alert to release, are held here and its count set to
    1), 3 goes hit by hit (straddles a window boundary), 4 past the limit: a key with no open
    window and no room for one, each of its hits an alert that leaves unfolded, counted in
    counters[6] (Folder.over_limit). `opened`: per group its key's id (-1: none) and, for a kind 2
    that reopens a window holding a pending alert, that alert's row (the caller releases it; else
    -1); and counters: the next free id, how many windows opened that were not open, at [4] the
    spare rows _hold may still take, at [6] the hits past the limit. Returns how many groups are
    left to Python."""
    g_first, g_second, g_last, g_count, g_sums, g_times = groups
    k_words, t_val, k_start, k_open, k_row = keys
    g_kid, g_released, counters = opened
    if t_val.shape[0] > _CACHED_SLOTS:
        _ask_for_keys(c, idx, ep, direction, g_first, n, keys, g_kid)
    rest = 0
    for g in range(n):
        f = g_first[g]
        words = fold_words(c, idx[f], ep[f], direction[f])
        s = _find_words(words, k_words, t_val)
        key = t_val[s]
        is_open = key >= 0 and k_open[key]
        t_first, t_max = g_times[g, 6], g_times[g, 2]
        g_kid[g] = key
        if not is_open:
            if room <= 0:                        # past the limit: each of its hits leaves unfolded
                kind[g] = 4
                counters[6] += g_count[g]
                rest += 1
                continue
            room -= 1
        if is_open and t_max - k_start[key] < window:
            if k_row[key] >= 0:
                _merge(c, idx[g_last[g]], k_row[key], g, g_count, g_sums, g_times, pending)
                kind[g] = 0
                continue
            r = _hold(c, idx[f], key, ep[f], direction[f], g, 0, idx[g_last[g]], g_count, g_sums, g_times, pending,
                      counters)
            if r >= 0:
                k_row[key] = r
                kind[g] = 0
                continue
            kind[g] = 1
        elif (not is_open or t_first - k_start[key] >= window) and t_max - t_first < window:
            kind[g] = 2
            if key < 0:                          # a new key: the next id, in the empty slot found
                key = counters[0]
                counters[0] += 1
                for q in range(6):
                    k_words[key, q] = words[q]
                t_val[s] = key
                g_kid[g] = key
            g_released[g] = k_row[key] if is_open else -1
            counters[1] += not is_open
            k_start[key], k_open[key], k_row[key] = t_first, True, -1
            if g_count[g] > 1 and g_released[g] < 0:     # its first leaves, the rest held here: a lone
                s2 = g_second[g]                          # hit opening a window is what is left
                r = _hold(c, idx[s2], key, ep[s2], direction[s2], g, 1, idx[g_last[g]], g_count, g_sums, g_times,
                          pending, counters)
                if r >= 0:
                    k_row[key] = r
                    g_count[g] = 1
        else:
            kind[g] = 3
        rest += 1
    return rest


@kernel
def fold_batch(c, idx, ep, direction, m, fold):
    """A batch's first m hits grouped (group_hits) and folded (fold_groups) in one call, in the
    Folder's scratch and state (Folder.kernel_fold: table, ints, sums, times, kind, keys, pending,
    counters, window, room). Returns the number of groups, or -1 when it could not fold them here
    (no folding window, scratch too small for m hits, or the key table and arrays without room for
    every group to be a new key: Folder.add_hits makes room and folds them). counters: the next
    free id and the windows opened (fold_groups), the groups left to Python, the groups made and
    at [6] the hits past limits.max_fold_keys. Grouping writes only scratch, so a batch declined
    after it is grouped again, unchanged."""
    table, ints, g_sums, g_times, kind, keys, pending, counters, window, room = fold
    if window <= 0:
        return np.int64(-1)
    size = 2
    while size < 2 * m:
        size *= 2
    if size > table.shape[0]:
        return np.int64(-1)
    group, first, second, last, count, kid, released = ints[0], ints[1], ints[2], ints[3], ints[4], ints[5], ints[6]
    g = group_hits(c, idx[:m], ep[:m], direction[:m], table[:size], group, first, second, last, count, g_sums, g_times)
    counters[3] = g
    need = counters[0] + g
    if need > keys[2].shape[0] or 2 * need > keys[1].shape[0]:
        return np.int64(-1)
    # room: keys that may still open when the fold tuple was made, less those opened since (polls.py
    # folds batch after batch in one call and Python hears of the windows when it returns)
    counters[2] = fold_groups(c, idx[:m], ep[:m], direction[:m], (first, second, last, count, g_sums, g_times), g, keys,
                              pending, window, max(room - counters[1], 0), kind, (kid, released, counters))
    return np.int64(g)


@kernel
def fold_index(k_words, ids, t_val):
    """Ids `ids` (distinct keys: rows of k_words) into an empty table of ids t_val (Folder's table
    grown, or rebuilt with the ids of open windows): only the table is written, 8 bytes a slot, so
    an alert flood's growing table costs little new memory."""
    mask = t_val.shape[0] - 1
    for j in range(ids.shape[0]):
        k = ids[j]
        s = _home_words(k_words[k], mask)
        while t_val[s] != -1:
            s = (s + 1) & mask
        t_val[s] = k


@intrinsic
def prefetch(typingctx, arr, i):
    """Ask for the cache line of arr[i] without waiting for it (LLVM's prefetch: read, keep in
    every cache level); no effect on the result, and no fault on any address."""
    def codegen(context, builder, signature, args):
        ary = context.make_array(signature.args[0])(context, builder, args[0])
        ptr = cgutils.get_item_pointer(context, builder, signature.args[0], ary, [args[1]], wraparound=False)
        i8p, i32 = ir.IntType(8).as_pointer(), ir.IntType(32)
        fn = cgutils.get_or_insert_function(builder.module, ir.FunctionType(ir.VoidType(), [i8p, i32, i32, i32]),
                                            "llvm.prefetch.p0i8")
        builder.call(fn, [builder.bitcast(ptr, i8p), i32(0), i32(3), i32(1)])
        return context.get_dummy_value()
    return types.void(arr, i), codegen


_CACHED_SLOTS = 4096                   # key_lookup: a table this small stays in the caches (128 KB)


@step
def _home(k0, k1, k2, mask):
    """The first slot key (k0, k1, k2) probes in a KeyMap table of mask + 1 slots."""
    return np.int64(_mix(_mix(_mix(_PRIME, k0), k1), k2) & np.uint64(mask))


@step
def _as_before(k0, k1, k2, i):
    """Key i is key i - 1."""
    return i > 0 and k0[i] == k0[i - 1] and k1[i] == k1[i - 1] and k2[i] == k2[i - 1]


@kernel
def key_lookup(k0, k1, k2, t0, t1, t2, t_val, out):
    """out[i] = the value stored for key (k0[i], k1[i], k2[i]) in the open-addressing table t_*
    (size a power of two, t_val -1 = empty), or -2 when absent. Returns how many were absent. A key
    equal to the one before it (a run of datagrams from one exporter) takes its value unhashed.

    Every key's first slot is asked for (prefetch) before any is read: with thousands of exporters
    the tables are out of the caches when a batch comes, and one lookup after another waited for
    one memory read after another (~120 ns each: 14 % of the collector's CPU with 5000
    exporters); asked for together, the reads overlap. A small table (a few exporters) is in the
    caches already, and is not asked for."""
    mask = t_val.shape[0] - 1
    for i in range(k0.shape[0] if t_val.shape[0] > _CACHED_SLOTS else 0):
        if not _as_before(k0, k1, k2, i):
            s = _home(k0[i], k1[i], k2[i], mask)
            prefetch(t_val, s)
            prefetch(t_val, (s + 1) & mask)         # a collision's next slot (KeyMap: the next row)
    missing = 0
    for i in range(k0.shape[0]):
        if _as_before(k0, k1, k2, i):
            out[i] = out[i - 1]
            missing += out[i] == -2
            continue
        s = _home(k0[i], k1[i], k2[i], mask)
        while True:
            v = t_val[s]
            if v == -1:
                out[i] = -2
                missing += 1
                break
            if t0[s] == k0[i] and t1[s] == k1[i] and t2[s] == k2[i]:
                out[i] = v
                break
            s = (s + 1) & mask
    return missing


@kernel
def key_insert(k0, k1, k2, val, t0, t1, t2, t_val):
    """Store key (k0, k1, k2) -> val (>= 0) in the table key_lookup reads; the caller keeps it at
    most half full."""
    mask = t_val.shape[0] - 1
    s = _home(k0, k1, k2, mask)
    while t_val[s] != -1 and not (t0[s] == k0 and t1[s] == k1 and t2[s] == k2):
        s = (s + 1) & mask
    t0[s], t1[s], t2[s] = k0, k1, k2
    t_val[s] = val


@kernel
def key_insert_many(k0, k1, k2, val, t0, t1, t2, t_val):
    """key_insert of every key in order (a later value of a key replaces an earlier): KeyMap stores
    the keys a batch added in one call, not one per key."""
    for j in range(val.shape[0]):
        key_insert(k0[j], k1[j], k2[j], val[j], t0, t1, t2, t_val)


@kernel
def key_rehash(o0, o1, o2, o_val, t0, t1, t2, t_val):
    """Every key of a table (o_*) into a larger one: KeyMap's growth in one call, not one per key."""
    for j in range(o_val.shape[0]):
        if o_val[j] >= 0:
            key_insert(o0[j], o1[j], o2[j], o_val[j], t0, t1, t2, t_val)
