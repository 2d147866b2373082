"""NetFlow v9 / IPFIX datagrams walked into set rows, and sequence numbers accounted per scope.

Rules: sets are walked by their byte length to the end of the datagram (v9: the header count is
never trusted) or of the IPFIX message length. A v9 set of length 0 ends the datagram (exporters
zero-fill the rest); any other set shorter than its header or longer than what is left is
`bad_set_length` and stops the datagram, keeping the sets before it.
"""
from __future__ import annotations

import numpy as np

from ..jit import njit
from .errors import reason_code
from .readers import _u16, _u32

__all__ = ["walk_sets", "sequence"]

_TOO_SHORT = reason_code("too_short")
_BAD_LENGTH = reason_code("bad_length")
_BAD_SET = reason_code("bad_set_length")


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
