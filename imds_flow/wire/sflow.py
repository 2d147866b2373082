"""sFlow version 5 (sflow.org), sans-IO: one numba kernel decodes every sFlow datagram of a batch.

Rules: a datagram counts only whole: every sample and every flow record must fit in what contains
it, else the datagram is rejected (bad_sample), leaves no row and no count, and its neighbours
decode as usual (one walk checks and decodes; a datagram's rows and counts are committed at its end);
bytes after the last sample are ignored. One row per flow sample (compact 0:1 or expanded 0:3) that
carries a packet: its raw header record (0:1; Ethernet, IPv4 or IPv6, walked by wire/packet.py),
else its sampled IPv4 / IPv6 record (0:3, 0:4). bytes = the sampled frame's length, packets = 1,
sampling = the sampling rate; the extended switch record (0:1001) gives vlan_src / vlan_dst. Every
other sample (counters, drops, unknown) and record is skipped by its length and counted. Sequence
numbers: datagram gaps per agent (sflow_datagrams_lost), flow-sample gaps per source id (records lost
upstream, seq_lost). The exporter of a datagram is (source address and port, agent, sub-agent id).
"""
from __future__ import annotations

import numpy as np

from ..flows import SFLOW
from ..jit import kernel, njit, step
from .errors import reason_code
from ..kernels import in_v4_endpoints, match_net
from .packet import (ETHERNET, IPV4, IPV6, S_DPORT, S_DST_HI, S_DST_LO, S_HEADERS, S_METHOD, S_PROTO, S_SPORT,
                     S_SRC_HI, S_SRC_LO, S_URL, parse_packet, patterns, reset, scratch, store)
from .readers import _u32, _u64

__all__ = ["SflowState", "agent", "agents", "decode_datagrams", "MIN_ROW_BYTES", "SKIPPED", "TALLY"]

_MAPPED = np.uint64(0x0000FFFF_00000000)
_TOO_SHORT = reason_code("too_short")
_UNKNOWN = reason_code("unknown_version")
_BAD = reason_code("bad_sample")
MIN_ROW_BYTES = 48           # a flow sample with one record takes at least this many bytes
_MAX_DATAGRAM = 65535        # the longest UDP payload
# the exporter counters the kernel adds to (tally), in this order
SKIPPED = ("sflow_samples_skipped", "sflow_records_skipped", "sflow_datagrams_lost")
TALLY = ("records", *SKIPPED)
_TABLE_BITS = 16             # per source id sequence tracking: open addressing, 65 536 slots
_PROBES = 32


class SflowState:
    """What the sFlow kernel keeps between batches, and the HTTP strings it looks for."""

    def __init__(self, url_substrings=(), header_names=()):
        self.scratch = scratch()
        self.set_patterns(url_substrings, header_names)
        self.src_key = np.full(1 << _TABLE_BITS, -1, np.int64)   # (exporter, source id) of the slot
        self.src_next = np.zeros(1 << _TABLE_BITS, np.uint32)    # next flow-sample sequence number
        # a datagram's flow-sample sequence numbers wait here until the whole datagram has proved
        # sound (at most one per MIN_ROW_BYTES of a datagram UDP can carry)
        self.pend_key = np.zeros(_MAX_DATAGRAM // MIN_ROW_BYTES + 1, np.int64)
        self.pend_seq = np.zeros(_MAX_DATAGRAM // MIN_ROW_BYTES + 1, np.uint32)
        self.sources = (self.src_key, self.src_next, self.pend_key, self.pend_seq)   # as decode_datagrams takes them

    def set_patterns(self, url_substrings, header_names) -> None:
        """http.url_substrings and http.header_names as the kernels read them; the detector's
        names must come from the same tuples (Pipeline.reload swaps both at once)."""
        self.pat, self.pat_off = patterns(url_substrings)
        self.hdr, self.hdr_off = patterns(header_names)
        # the packet kernel's tables, as decode_datagrams (and records.emit) take them
        self.http = (self.pat, self.pat_off, self.hdr, self.hdr_off, self.scratch)

    def next_sequence(self, exporter: int, source_type: int, source_index: int) -> int | None:
        """The flow-sample sequence number expected next from a source id (tools, tests)."""
        key = (exporter << 40) | ((source_type & 0xFF) << 32) | source_index
        h = ((key * 0x9E3779B97F4A7C15) & (2**64 - 1)) >> (64 - _TABLE_BITS)
        for i in range(_PROBES):
            s = (h + i) & ((1 << _TABLE_BITS) - 1)
            if self.src_key[s] == key:
                return int(self.src_next[s])
            if self.src_key[s] < 0:
                return None
        return None


@njit
def agent(buf, o, ln):
    """(True, address hi, lo, sub-agent id) of the sFlow datagram at buf[o:o+ln], (False, 0, 0, 0)
    when it has none (too short, not version 5, an unknown address type)."""
    if ln < 8 or _u32(buf, o) != 5:
        return False, np.uint64(0), np.uint64(0), np.uint32(0)
    at = _u32(buf, o + 4)
    if at == 1 and ln >= 16:
        return True, np.uint64(0), _MAPPED | np.uint64(_u32(buf, o + 8)), np.uint32(_u32(buf, o + 12))
    if at == 2 and ln >= 28:
        return (True, (np.uint64(_u32(buf, o + 8)) << np.uint64(32)) | np.uint64(_u32(buf, o + 12)),
                (np.uint64(_u32(buf, o + 16)) << np.uint64(32)) | np.uint64(_u32(buf, o + 20)),
                np.uint32(_u32(buf, o + 24)))
    return False, np.uint64(0), np.uint64(0), np.uint32(0)


@njit
def agents(buf, offs, lens, sel, exp_ids, out_hi, out_lo, out_sub, out_ok):
    """Agent address and sub-agent id of the sFlow datagrams `sel`; out_ok False where absent.
    Returns how many have one, or -1 when all have the same one and the same exporter."""
    found = 0
    same = True
    for k in range(sel.shape[0]):
        d = sel[k]
        ok, out_hi[k], out_lo[k], out_sub[k] = agent(buf, offs[d], lens[d])
        out_ok[k] = ok
        if not ok:
            same = False
            continue
        found += 1
        if k > 0 and (out_hi[k] != out_hi[0] or out_lo[k] != out_lo[0] or out_sub[k] != out_sub[0]
                      or exp_ids[d] != exp_ids[sel[0]]):
            same = False
    return -1 if same and found > 0 else found


_NO_SLOT = np.uint64(1 << 63)


@step
def _slot(key, seq, src_key, src_next):
    """The tracking slot of (exporter, source id) `key`; a key seen first claims one expecting `seq`,
    so that its first sample counts no gap. _NO_SLOT when the probe sequence is full: untracked."""
    mask = np.uint64((1 << _TABLE_BITS) - 1)
    h = (np.uint64(key) * np.uint64(0x9E3779B97F4A7C15)) >> np.uint64(64 - _TABLE_BITS)
    for i in range(_PROBES):
        s = (h + np.uint64(i)) & mask
        if src_key[s] == key:
            return s
        if src_key[s] < 0:
            src_key[s] = key
            src_next[s] = np.uint32(seq)
            return s
    return _NO_SLOT


@step
def _track(s, seq, src_next):
    """Flow samples missed before `seq` by the source id of slot s (0 when seq went back)."""
    gap = np.uint32(seq - src_next[s])
    src_next[s] = np.uint32(seq + 1)
    return np.int64(gap) if gap < np.uint32(0x80000000) else np.int64(0)


@kernel
def decode_datagrams(dgs, sel, exp_ids, c, n, status, tally, seq, sources, http, keep, ep):
    """Decode sFlow datagrams `sel` into rows `c` from row n; returns the new n.

    dgs = (buf, offs, lens, ts): the datagram batch's arrays. status[d] gets 0 or a reason code.
    tally = per-exporter counter columns (TALLY: records decoded, then the SKIPPED counts), added
    to in place; seq = (seq_next, seq_seen, seq_lost): per-exporter arrays (datagram sequence,
    flow samples missed); sources = (src_key, src_next, pend_key, pend_seq) and http = (pat, pat_off, hdr, hdr_off,
    scratch: the packet kernel's tables) as SflowState holds them. With `keep`, only samples that
    may alert get a row (an address in an endpoint of `ep`, a URL substring or a configured header
    name: a superset of detect_batch's hits); every decoded sample is counted all the same.
    Compiled without reference counting (jit.kernel), and so are the functions it calls, the packet
    kernel included (numba compiles a callee with its caller's setting).
    """
    buf, offs, lens, ts = dgs
    records, samples_skipped, records_skipped, datagrams_lost = tally
    seq_next, seq_seen, seq_lost = seq
    src_key, src_next, pend_key, pend_seq = sources
    pat, pat_off, hdr, hdr_off, scr = http
    ep_hi, ep_lo, ep_mhi, ep_mlo, ep_v4 = ep
    cap = c.ts.shape[0]
    for k in range(sel.shape[0]):
        d = sel[k]
        end = offs[d] + lens[d]
        code, p = _datagram_header(buf, offs[d], lens[d])
        if code != 0:
            status[d] = code
            continue
        e = exp_ids[d]
        # one walk checks and decodes: the datagram's rows and counts are its own until its last
        # sample has proved to fit, then committed; a bad one takes its rows back and counts nothing
        n0 = n
        flows = 0                      # samples decoded (their sequence numbers wait in pend_*)
        s_skip = 0
        r_skip = 0
        bad = False
        full = False
        nsamp = _u32(buf, p + 12)
        dseq = _u32(buf, p + 4)
        p += 16
        for _ in range(nsamp):
            if p + 8 > end:
                bad = True
                break
            fmt = _u32(buf, p)
            body = p + 8
            p = body + _u32(buf, p + 4)
            if p > end:
                bad = True
                break
            if fmt != 1 and fmt != 3:
                s_skip += 1
                continue
            if p - body < (32 if fmt == 1 else 44):
                bad = True
                break
            sseq, source, rate, in_if, out_if, nrec, r = _flow_sample(buf, fmt, body)
            raw, raw_end, ip4, ip6, sw, skipped = _records(buf, r, nrec, p)
            if skipped < 0:                # a record does not fit in its sample
                bad = True
                break
            version = 0
            size = np.uint64(0)
            if raw >= 0:                   # the raw packet header, walked by the packet kernel
                kind = _u32(buf, raw)
                hstart = raw + 16
                hend = min(hstart + _u32(buf, raw + 12), raw_end)
                if kind == ETHERNET or kind == IPV4 or kind == IPV6:
                    version = parse_packet(buf, hstart, hend, kind, scr, pat, pat_off, hdr, hdr_off)
                    size = np.uint64(_u32(buf, raw + 4))
            if version != 0:               # sampled IP records the header made unneeded
                skipped += (ip4 >= 0) + (ip6 >= 0)
            elif ip4 >= 0 or ip6 >= 0:
                version, size = _sampled_ip(buf, ip4, ip6, scr)
            r_skip += skipped
            if version == 0:
                s_skip += 1
                continue
            if flows == pend_key.shape[0]:  # more samples than a UDP datagram can hold
                bad = True
                break
            pend_key[flows] = (np.int64(e) << 40) | source
            pend_seq[flows] = sseq
            flows += 1
            if keep and not (scr[S_URL] != 0 or (scr[S_METHOD] != 0 and scr[S_HEADERS] != 0)
                             or _in_endpoint(version, scr, ep_hi, ep_lo, ep_mhi, ep_mlo, ep_v4)):
                continue
            if n == cap:                   # the caller sizes columns from the batch; never overrun
                full = True
                break
            c.row_flags[n] = SFLOW
            store(scr, c, n)               # addresses, ports, VLAN tags, url, HTTP
            c.exporter[n] = e
            c.version[n] = 5
            c.ts[n] = ts[d]
            c.first_seen[n] = ts[d]
            c.last_seen[n] = ts[d]
            c.bytes[n] = size
            c.packets[n] = 1
            c.in_if[n] = in_if
            c.out_if[n] = out_if
            c.sampling_rate[n] = rate
            c.vlan_src[n] = np.int16(_u32(buf, sw) & 0xFFF) if sw >= 0 else np.int16(-1)
            c.vlan_dst[n] = np.int16(_u32(buf, sw + 8) & 0xFFF) if sw >= 0 else np.int16(-1)
            n += 1
        if full:                       # (cannot happen): stop, this datagram and the rest undecoded
            n = n0
            break
        if bad:
            n = n0
            status[d] = _BAD
            continue
        status[d] = 0
        datagrams_lost[e] += _datagrams_lost(dseq, e, seq_next, seq_seen)
        last = np.int64(-1)            # consecutive samples of one source id share its slot
        slot = np.uint64(0)
        for i in range(flows):
            if pend_key[i] != last:
                last = pend_key[i]
                slot = _slot(last, pend_seq[i], src_key, src_next)
            if slot != _NO_SLOT:
                seq_lost[e] += _track(slot, pend_seq[i], src_next)
        records[e] += flows
        samples_skipped[e] += s_skip
        records_skipped[e] += r_skip
    return n


@step
def _in_endpoint(version, r, ep_hi, ep_lo, ep_mhi, ep_mlo, ep_v4):
    """Whether the source or destination address in the scratch r lies in an endpoint (kernels.match_net
    on both). An IPv4 packet's addresses are IPv4-mapped: only the IPv4 endpoints' low words can match
    them, compared for both addresses in one pass."""
    if version == 4:
        return in_v4_endpoints(r[S_DST_LO], r[S_SRC_LO], ep_lo, ep_mlo, ep_v4)
    return (match_net(r[S_DST_HI], r[S_DST_LO], ep_hi, ep_lo, ep_mhi, ep_mlo, ep_v4) >= 0
            or match_net(r[S_SRC_HI], r[S_SRC_LO], ep_hi, ep_lo, ep_mhi, ep_mlo, ep_v4) >= 0)


@step
def _datagram_header(buf, o, ln):
    """(0 or a reason code, where the sub-agent id, sequence number, uptime and sample count are)
    of the datagram buf[o:o+ln]."""
    if ln < 8:
        return _TOO_SHORT, o
    if _u32(buf, o) != 5:
        return _UNKNOWN, o
    at = _u32(buf, o + 4)
    if at == 1:
        p = o + 12
    elif at == 2:
        p = o + 24
    else:
        return _BAD, o
    if p + 16 > o + ln:
        return _TOO_SHORT, o
    return 0, p


@step
def _datagrams_lost(seq, e, seq_next, seq_seen):
    """Datagrams missed from exporter e before sequence number seq (0 when first seen, or when seq
    went back); seq is then the last seen."""
    gap = np.uint32(0)
    if seq_seen[e]:
        gap = np.uint32(seq - seq_next[e])
        if gap >= np.uint32(0x80000000):
            gap = np.uint32(0)
    seq_seen[e] = True
    seq_next[e] = np.uint32(seq + 1)
    return gap


@step
def _flow_sample(buf, fmt, body):
    """(sequence number, source id key, sampling rate, input and output interface, record count,
    first record) of a compact (fmt 1) or expanded (fmt 3) flow sample."""
    if fmt == 1:
        sid = _u32(buf, body + 4)
        return (_u32(buf, body), (np.int64(sid >> 24) << 32) | np.int64(sid & 0xFFFFFF), _u32(buf, body + 8),
                np.uint32(_u32(buf, body + 20) & np.uint32(0x3FFFFFFF)),
                np.uint32(_u32(buf, body + 24) & np.uint32(0x3FFFFFFF)), _u32(buf, body + 28), body + 32)
    return (_u32(buf, body), (np.int64(_u32(buf, body + 4) & 0xFF) << 32) | np.int64(_u32(buf, body + 8)),
            _u32(buf, body + 12), np.uint32(_u32(buf, body + 28)), np.uint32(_u32(buf, body + 36)),
            _u32(buf, body + 40), body + 44)


@step
def _records(buf, r, nrec, send):
    """Where the first raw header record (and its end), sampled IPv4, sampled IPv6 and extended
    switch record of a flow sample start (-1: none), and how many other records it holds (-1: a
    record does not fit in the sample, which ends at `send`)."""
    skipped = 0
    raw = -1
    ip4 = -1
    ip6 = -1
    sw = -1
    raw_end = 0
    for _ in range(nrec):
        if r + 8 > send:
            return raw, raw_end, ip4, ip6, sw, -1
        rf = _u32(buf, r)
        rl = _u32(buf, r + 4)
        rb = r + 8
        r = rb + rl
        if r > send:
            return raw, raw_end, ip4, ip6, sw, -1
        if rf == 1 and rl >= 16 and raw < 0:
            raw = rb
            raw_end = r
        elif rf == 3 and rl >= 32 and ip4 < 0:
            ip4 = rb
        elif rf == 4 and rl >= 56 and ip6 < 0:
            ip6 = rb
        elif rf == 1001 and rl >= 16 and sw < 0:
            sw = rb
        else:
            skipped += 1
    return raw, raw_end, ip4, ip6, sw, skipped


@step
def _sampled_ip(buf, ip4, ip6, r):
    """The sampled IPv4 record at ip4, else the sampled IPv6 record at ip6, into the packet
    kernel's scratch r (no VLAN tag, no HTTP): returns (IP version, frame length)."""
    reset(r, 0)
    if ip4 >= 0:
        r[S_PROTO] = _u32(buf, ip4 + 4)
        r[S_SRC_HI] = 0
        r[S_SRC_LO] = _MAPPED | np.uint64(_u32(buf, ip4 + 8))
        r[S_DST_HI] = 0
        r[S_DST_LO] = _MAPPED | np.uint64(_u32(buf, ip4 + 12))
        r[S_SPORT] = _u32(buf, ip4 + 16)
        r[S_DPORT] = _u32(buf, ip4 + 20)
        return 4, np.uint64(_u32(buf, ip4))
    r[S_PROTO] = _u32(buf, ip6 + 4)
    r[S_SRC_HI] = _u64(buf, ip6 + 8)
    r[S_SRC_LO] = _u64(buf, ip6 + 16)
    r[S_DST_HI] = _u64(buf, ip6 + 24)
    r[S_DST_LO] = _u64(buf, ip6 + 32)
    r[S_SPORT] = _u32(buf, ip6 + 40)
    r[S_DPORT] = _u32(buf, ip6 + 44)
    return 6, np.uint64(_u32(buf, ip6))

