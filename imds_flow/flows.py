"""FlowBatch: the flow rows that are the one contract between decode and detect.

A decoder writes every field of records i = n, n+1, ... into a preallocated structured array and
returns the new n; detect reads it. One row is one flow record; no Python object per record exists.
Kernels take the structured array `rows` (one argument: numba types it in well under a
microsecond and compiles it as one record type, where a tuple of thirty-odd column arrays cost
tens of microseconds a call and most of the first start's compile time); they read fields as
`c.src_hi[i]`, as they would columns. Python code reads `cols`, the same fields as column views.
Absent values: NAT addresses 0 with the flag bit clear, VLAN -1, vlan_more 0, times NaN,
sampling 0, url -1; the HTTP columns (http_method, url_off, url_len, headers, host_off, host_len)
hold values only with the HTTP flag.

vlan_more: the ids of a sampled frame's 3rd, 4th, ... 802.1Q / 802.1ad tags (vlan_dot1q and
vlan_cust hold the 1st and 2nd), packed 12 bits each: tag 3 in bits 0-11, tag 4 in 12-23, ...,
at most VLAN_MORE_MAX ids (bits 0-59); bits 60-63 say how many are there, so VLAN 0 is never
mistaken for "absent". 0: no further tag. Tags beyond these are walked, not recorded.
"""
from __future__ import annotations

from collections import namedtuple

import numpy as np

from .grow import grown_size

__all__ = ["COLUMNS", "ROW", "Columns", "FlowBatch", "NAT_SRC", "NAT_DST", "NO_COUNTERS", "HTTP", "SFLOW", "LATE", "VLAN_COLUMNS", "HTTP_COLUMNS",
           "VLAN_MORE_MAX", "VLAN_MORE_COUNT", "vlan_more_ids"]

# row_flags bits
NAT_SRC = 1        # nsrc_* holds a post-NAT source address
NAT_DST = 2        # ndst_* holds a post-NAT destination address
NO_COUNTERS = 4    # the record carried neither bytes nor packets
HTTP = 8           # an HTTP request (sampled request line, or a record's method element) is in the HTTP columns
SFLOW = 16         # the row is an sFlow flow sample (version is then the sFlow version, 5)
LATE = 32          # the record waited for its template: url_off / host_off index FlowBatch.late_buf, not buf

COLUMNS = (
    ("exporter", np.int32),   # index into the exporter table
    ("version", np.uint8),    # 5, 9 or 10
    ("ts", np.float64),       # arrival time of the datagram, epoch seconds
    ("src_hi", np.uint64), ("src_lo", np.uint64),     # see addr.py: IPv4 is IPv4-mapped
    ("dst_hi", np.uint64), ("dst_lo", np.uint64),
    ("nsrc_hi", np.uint64), ("nsrc_lo", np.uint64),   # post-NAT (IE 225/281), valid with NAT_SRC
    ("ndst_hi", np.uint64), ("ndst_lo", np.uint64),   # post-NAT (IE 226/282), valid with NAT_DST
    ("sport", np.uint16), ("dport", np.uint16), ("proto", np.uint8),
    ("vlan_src", np.int16),   # IE 58 vlanId
    ("vlan_dst", np.int16),   # IE 59 postVlanId
    ("vlan_dot1q", np.int16), # IE 243 dot1qVlanId
    ("vlan_cust", np.int16),  # IE 245 dot1qCustomerVlanId
    ("vlan_more", np.uint64), # the ids of further 802.1Q tags of a sampled frame (see above), 0 none
    ("bytes", np.uint64), ("packets", np.uint64),
    ("first_seen", np.float64), ("last_seen", np.float64),      # flow start / end, epoch seconds
    ("in_if", np.uint32), ("out_if", np.uint32),
    ("sampling_rate", np.uint32),  # sampling interval (1 in N); 0 unknown
    ("url", np.int16),        # index of the configured URL substring found in an HTTP field, -1 none
    ("row_flags", np.uint8),  # NAT_SRC | NAT_DST | NO_COUNTERS | HTTP | SFLOW | LATE
    # sampled HTTP request (valid with flag HTTP): strings stay in the datagram buffer (FlowBatch.buf),
    # or for data that waited for its template (flag LATE) in the pending buffer it came from (late_buf)
    ("http_method", np.int8), # index into wire.packet.METHODS
    ("url_off", np.int64),    # request-target: buf[url_off : url_off + url_len], as sampled
    ("url_len", np.int32),
    ("headers", np.uint32),   # bit k: configured http.header_names[k] was seen as a field name
    # the Host a flow record's exporter decoded (IE 460, nProbe HTTP_HOST): buf[host_off : host_off +
    # host_len], host_len 0 when absent; never from sampled packet bytes (a Host header is a header value)
    ("host_off", np.int64),
    ("host_len", np.int32),
)
VLAN_COLUMNS = ("vlan_src", "vlan_dst", "vlan_dot1q", "vlan_cust")   # one VLAN id each; and vlan_more
VLAN_MORE_MAX = 5            # ids vlan_more holds
VLAN_MORE_COUNT = 60         # the bit how many it holds starts at
HTTP_COLUMNS = ("http_method", "url_off", "url_len", "headers", "host_off", "host_len")


def vlan_more_ids(word: int) -> list[int]:
    """The VLAN ids a vlan_more value holds, in tag order (tools, tests)."""
    word = int(word)
    return [word >> (12 * k) & 0xFFF for k in range(min(word >> VLAN_MORE_COUNT, VLAN_MORE_MAX))]


Columns = namedtuple("Columns", [name for name, _ in COLUMNS])
ROW = np.dtype(list(COLUMNS), align=True)

class FlowBatch:
    """Preallocated rows with a fill level `n`; reused batch after batch. `rows` goes to kernels;
    `cols` holds a view of each field of `rows` (the same memory), for numpy and Python code."""

    __slots__ = ("rows", "cols", "n", "limit", "buf", "late_buf")

    def __init__(self, capacity: int = 16384, limit: int = 1 << 62):
        self._allocate(capacity)
        self.n = 0
        self.limit = limit                    # growth stops here (the caller keeps `need` within it)
        self.buf = np.zeros(0, np.uint8)   # the datagram bytes url_off / host_off point into (wire.decode)
        self.late_buf = self.buf           # the same for rows flagged LATE: the pending buffer they left

    def _allocate(self, capacity: int) -> None:
        self.rows = np.empty(capacity, ROW)
        self.cols = Columns(*(self.rows[name] for name, _ in COLUMNS))

    @property
    def capacity(self) -> int:
        return len(self.rows)

    def reset(self, need: int) -> None:
        """Empty the batch with room for `need` records (contents are left as they were)."""
        if need > self.capacity:
            self._allocate(grown_size(self.capacity, need, self.limit))
        self.n = 0

    def view(self, name: str) -> np.ndarray:
        return getattr(self.cols, name)[: self.n]

    def __len__(self) -> int:
        return self.n

