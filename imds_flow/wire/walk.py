"""NetFlow v9 / IPFIX datagrams walked into set rows, and sequence numbers accounted per scope.

Rules: sets are walked by their byte length to the end of the datagram (v9: the header count is
never trusted) or of the IPFIX message length. A v9 set of length 0 ends the datagram (exporters
zero-fill the rest); any other set shorter than its header or longer than what is left is
`bad_set_length` and stops the datagram, keeping the sets before it.
"""
from __future__ import annotations

import numpy as np

from ..jit import kernel, njit
from .errors import reason_code
from .readers import _u16, _u32

__all__ = ["walk_sets", "key_sets", "most_records", "tally", "sequence"]

_TOO_SHORT = reason_code("too_short")
_BAD_LENGTH = reason_code("bad_length")
_BAD_SET = reason_code("bad_set_length")


@njit
def walk_sets(buf, offs, lens, sel, version, status, h_uptime, h_secs, h_seq, h_domain,
              s_dg, s_id, s_off, s_len):
    """Headers of datagrams `sel` into h_* and one row per set into s_*; returns the set count, or
    -1 when the sets do not fit s_* (the caller grows them and walks again: it writes nothing else)."""
    k = 0
    cap = s_dg.shape[0]
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
            if k == cap:
                return -1
            s_dg[k] = d
            s_id[k] = sid
            s_off[k] = p + 4
            s_len[k] = sl - 4
            k += 1
            p += sl
    return k


@kernel
def key_sets(s_dg, s_id, s_off, s_len, k, scope, version, exp_ids, ts, h_uptime, h_secs,
             sets, pos, tmpl, uniq, inverse, table):
    """The walked sets 0..k-1 (walk_sets' s_*) of datagrams with a scope (scope[d] >= 0), in walk
    order: template and options template sets (v9 ids 0 and 1, IPFIX 2 and 3) by walk position
    into tmpl; data sets (ids >= 256) as v9ipfix.SET rows into `sets` with their key (scope << 16
    | template id; plan -1, found by the caller), their walk positions into pos, their keys'
    distinct values in order of first appearance into uniq and each one's index there into
    inverse. Other set ids are skipped. `table`: int64 scratch, a power of two above k.
    Returns (data sets, template sets, distinct keys)."""
    mask = table.shape[0] - 1
    for j in range(table.shape[0]):
        table[j] = -1
    nd = 0
    nt = 0
    nu = 0
    for r in range(k):
        d = s_dg[r]
        sc = scope[d]
        if sc < 0:
            continue
        sid = s_id[r]
        v = version[d]
        if (v == 9 and sid <= 1) or (v == 10 and (sid == 2 or sid == 3)):
            tmpl[nt] = r
            nt += 1
            continue
        if sid < 256:
            continue
        key = (sc << 16) | sid
        h = np.int64((np.uint64(key) * np.uint64(0x9E3779B97F4A7C15)) >> np.uint64(32)) & mask
        while table[h] >= 0 and uniq[table[h]] != key:
            h = (h + 1) & mask
        if table[h] < 0:
            table[h] = nu
            uniq[nu] = key
            nu += 1
        inverse[nd] = table[h]
        pos[nd] = r
        s = sets[nd]
        s.src = 0
        s.ver = v
        s.bad = 0
        s.plan = -1
        s.exp = exp_ids[d]
        s.uptime = h_uptime[d]
        s.off = s_off[r]
        s.len = s_len[r]
        s.ts = ts[d]
        s.secs = h_secs[d]
        s.scope = sc
        s.dg = d
        s.key = key
        s.nrec = 0
        nd += 1
    return nd, nt, nu


@kernel
def most_records(sets, minlen, options):
    """How many records the sets can hold at most (each set's length over its plan's shortest
    record: the rows the batch needs), and how many are options data sets (cut first)."""
    need = 0
    n_options = 0
    for i in range(sets.shape[0]):
        p = sets[i].plan
        need += sets[i].len // max(minlen[p], 1)
        n_options += options[p]
    return need, n_options


@kernel
def tally(sets, options, records, per_dg, status, bad_record):
    """After the cut: each flow data set's records into records[exporter] (options data are not flow
    records), every in-batch set's into per_dg[datagram] (the sequence count), and a datagram
    with a set a record overran gets status bad_record unless it has another already."""
    for i in range(sets.shape[0]):
        s = sets[i]
        if not options[s.plan]:
            records[s.exp] += s.nrec
        if s.dg >= 0:
            per_dg[s.dg] += s.nrec
            if s.bad != 0 and status[s.dg] == 0:
                status[s.dg] = bad_record


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
