"""NetFlow v5, sans-IO: one numba kernel decodes every v5 datagram of a batch into FlowBatch columns.

Rules: a datagram shorter than the 24-byte header, or whose count needs more bytes than it has,
is rejected whole (status code) and its neighbours are decoded as usual; bytes after the last
record are ignored. Times come from the header's clock (unix_secs - (sys_uptime - First)).
"""
from __future__ import annotations

import numpy as np

from ..jit import kernel
from ..kernels import in_v4_endpoints
from .errors import reason_code
from .readers import _u16, _u32

__all__ = ["HEADER", "RECORD", "decode_v5"]

HEADER = 24
RECORD = 48
_MAPPED = np.uint64(0x0000FFFF_00000000)
_TOO_SHORT = reason_code("too_short")
_COUNT = reason_code("count_exceeds_datagram")


@kernel
def decode_v5(buf, offs, lens, sel, exp_ids, ts, c, n, status, seq_next, seq_seen, seq_lost, records, keep, ep):
    """Decode datagrams `sel` (indices into offs/lens) into columns `c` from row n; returns new n.

    status[d] gets 0 or a reason code; seq_next/seq_seen/seq_lost are per-exporter arrays
    (expected next flow_sequence, whether one was seen, records missed) updated in place;
    records[e] counts the records decoded per exporter. With `keep`, only records with an address
    in an endpoint of `ep` (kernels.compact's test: v5 has no NAT or URL fields) get a row.
    """
    cap = c.ts.shape[0]
    for k in range(sel.shape[0]):
        d = sel[k]
        o = offs[d]
        ln = lens[d]
        if ln < HEADER:
            status[d] = _TOO_SHORT
            continue
        count = _u16(buf, o + 2)
        if HEADER + count * RECORD > ln:
            status[d] = _COUNT
            continue
        if n + count > cap:           # the caller sizes columns from the batch; never overrun
            break
        status[d] = 0
        uptime = _u32(buf, o + 4)
        secs = np.float64(_u32(buf, o + 8)) + np.float64(_u32(buf, o + 12)) * 1e-9
        seq = _u32(buf, o + 16)
        samp = _u16(buf, o + 22)
        sampling = samp & 0x3FFF if (samp >> 14) != 0 else 0
        e = exp_ids[d]
        if seq_seen[e]:
            gap = np.uint32(seq - seq_next[e])
            if gap < np.uint32(0x80000000):
                seq_lost[e] += gap
        seq_seen[e] = True
        seq_next[e] = np.uint32(seq + count)
        records[e] += count
        t = ts[d]
        exporter = e
        r = o + HEADER - RECORD
        _, ep_lo, _, ep_mlo, ep_v4 = ep          # v5 addresses are IPv4: the low words decide
        for _ in range(count):
            r += RECORD
            if keep and not in_v4_endpoints(_MAPPED | np.uint64(_u32(buf, r + 4)), _MAPPED | np.uint64(_u32(buf, r)),
                                            ep_lo, ep_mlo, ep_v4):
                continue
            c.exporter[n] = exporter
            c.version[n] = 5
            c.ts[n] = t
            c.src_hi[n] = 0
            c.src_lo[n] = _MAPPED | np.uint64(_u32(buf, r))
            c.dst_hi[n] = 0
            c.dst_lo[n] = _MAPPED | np.uint64(_u32(buf, r + 4))
            c.in_if[n] = _u16(buf, r + 12)
            c.out_if[n] = _u16(buf, r + 14)
            c.packets[n] = _u32(buf, r + 16)
            c.bytes[n] = _u32(buf, r + 20)
            c.first_seen[n] = secs - np.float64(np.uint32(uptime - _u32(buf, r + 24))) * 1e-3
            c.last_seen[n] = secs - np.float64(np.uint32(uptime - _u32(buf, r + 28))) * 1e-3
            c.sport[n] = _u16(buf, r + 32)
            c.dport[n] = _u16(buf, r + 34)
            c.proto[n] = buf[r + 38]
            c.vlan_src[n] = -1
            c.vlan_dst[n] = -1
            c.vlan_dot1q[n] = -1
            c.vlan_cust[n] = -1
            c.vlan_more[n] = 0
            c.sampling_rate[n] = sampling
            c.url[n] = -1
            c.row_flags[n] = 0
            n += 1
    return n
