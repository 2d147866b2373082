"""Sans-IO decoders: a batch of datagrams plus exporter state in, FlowBatch columns out.

The single dispatch on the version word lives here; nothing downstream looks at versions again.
NetFlow / IPFIX datagrams start with a 16-bit version (5, 9, 10); sFlow with a 32-bit version 5,
so their first 16 bits are 0.
Nothing in wire/ imports sockets, asyncio, time or sinks (a test keeps it so).
"""
from __future__ import annotations

import numpy as np

from ..datagrams import DatagramBatch
from ..flows import FlowBatch
from ..jit import kernel
from .errors import OK, REASONS, DecodeError, error_for, reason_code
from . import resolve, sflow
from .scopes import ScopeTable
from .v5 import RECORD as V5_RECORD, decode_v5

__all__ = ["decode", "decode_one", "DecodeError", "REASONS"]

_TOO_SHORT = reason_code("too_short")
_UNKNOWN = reason_code("unknown_version")


@kernel
def _classify(buf, offs, lens, n, version, status, sel, size):
    """The one dispatch on the version word: version[d] of datagrams 0..n-1 (-1: fewer than 2
    bytes, status too_short; not 0, 5, 9 or 10: status unknown_version), and their indexes by
    decoder in sel[0] (v5), sel[1] (v9 / IPFIX) and sel[2] (sFlow), size[j] their bytes. Returns
    how many each decoder has."""
    k5 = 0
    kt = 0
    ks = 0
    for d in range(n):
        if lens[d] < 2:
            version[d] = -1
            status[d] = _TOO_SHORT
            continue
        v = (np.int32(buf[offs[d]]) << 8) | np.int32(buf[offs[d] + 1])
        version[d] = v
        if v == 5:
            sel[0, k5] = d
            k5 += 1
            size[0] += lens[d]
        elif v == 9 or v == 10:
            sel[1, kt] = d
            kt += 1
            size[1] += lens[d]
        elif v == 0:
            sel[2, ks] = d
            ks += 1
            size[2] += lens[d]
        else:
            status[d] = _UNKNOWN
    return k5, kt, ks


_NO_ENDPOINTS = (np.zeros(0, np.uint64),) * 4 + (np.zeros(0, np.bool_),)


def decode(dg: DatagramBatch, exp_ids: np.ndarray, state, out: FlowBatch, keep=None,
           records: np.ndarray | None = None) -> np.ndarray:
    """Decode every datagram of `dg` into `out` (reset first); returns one status code per datagram.

    `state` is the exporter table: per-exporter arrays indexed by exp_ids (seq_next, seq_seen,
    seq_lost for v5 and sFlow). A rejected datagram costs only itself. `records`, when given, gets
    the number of flow records decoded per exporter added. `keep`, an endpoint table (net_hi,
    net_lo, mask_hi, mask_lo, is_v4; Detector.endpoints), keeps only the NetFlow / IPFIX rows that
    may alert (kernels.compact), dropped inside the decode kernels: `out` then holds those rows
    alone; an sFlow row is kept also when its packet names a URL substring or a header name. An
    sFlow datagram's entry of exp_ids is replaced in place by its agent's row (state.agents), so it
    is counted there; the agent rows it registers may grow the table, so the sFlow kernel counts
    into the table's own columns (state.column), fetched after that, never into `records`.
    """
    n = dg.n
    compacting = keep is not None
    ep = keep if compacting else _NO_ENDPOINTS
    counts = records if records is not None else np.zeros(max(int(exp_ids.max(initial=0)) + 1, 1), np.int64)
    status = np.zeros(n, np.int16)
    version = np.empty(n, np.int32)
    sel, size = np.empty((3, n), np.int64), np.zeros(3, np.int64)
    k5, kt, ks = _classify(dg.buf, dg.offs, dg.lens, n, version, status, sel, size)
    if kt:
        state.templates.begin_batch()                # compacts plans between batches only
    prep = resolve.prepare(dg, sel[1, :kt], version, exp_ids, state, status) if kt else None
    need_s = int(size[2]) // sflow.MIN_ROW_BYTES + 1 if ks else 0
    out.reset(int(size[0]) // V5_RECORD + 1 + (prep.need if prep is not None else 0) + need_s)
    out.buf = dg.buf
    out.late_buf = prep.pbuf if prep is not None else dg.buf
    if k5:
        out.n = decode_v5(dg.buf, dg.offs, dg.lens, sel[0, :k5], exp_ids, dg.ts, out.rows, out.n, status,
                          state.seq_next, state.seq_seen, state.seq_lost, counts, compacting, ep)
    if prep is not None:
        out.n = resolve.finish(prep, state, out, status, compacting, ep, counts)
    if ks:
        _decode_sflow(dg, sel[2, :ks], exp_ids, state, out, status, compacting, ep)
    return status


def _decode_sflow(dg: DatagramBatch, sel: np.ndarray, exp_ids: np.ndarray, state, out: FlowBatch,
                  status: np.ndarray, compacting: bool, ep) -> None:
    k = len(sel)
    hi, lo = np.empty(k, np.uint64), np.empty(k, np.uint64)
    sub, ok = np.empty(k, np.uint32), np.empty(k, np.bool_)
    found = sflow.agents(dg.buf, dg.offs, dg.lens, sel, exp_ids, hi, lo, sub, ok)
    if found == -1:                                  # every one from one source and one agent
        exp_ids[sel] = state.agent_row(int(exp_ids[sel[0]]), int(hi[0]), int(lo[0]), int(sub[0]))
    elif found:
        has = sel[ok]
        exp_ids[has] = state.agents(exp_ids[has], hi[ok], lo[ok], sub[ok])
    s = state.sflow                                  # the table is grown: its columns are final
    tally = state.columns(sflow.TALLY)
    out.n = sflow.decode_datagrams((dg.buf, dg.offs, dg.lens, dg.ts), sel, exp_ids, out.rows, out.n, status, tally,
                                   (state.seq_next, state.seq_seen, state.seq_lost), s.sources, s.http,
                                   compacting, ep)


class _OneExporter:
    """Exporter state for decode_one: a single exporter with index 0."""

    def __init__(self):
        self.seq_next = np.zeros(1, np.uint32)
        self.seq_seen = np.zeros(1, np.bool_)
        self.seq_lost = np.zeros(1, np.int64)
        self.address, self.port = ["192.0.2.1"], [0]
        self.templates = ScopeTable()
        self.sflow = sflow.SflowState()
        self.counters = {}
        self._columns = {}                           # strided, as the exporter table's columns are

    def column(self, counter: str) -> np.ndarray:
        if counter not in self._columns:
            self._columns[counter] = np.zeros((1, 2), np.int64)[:, 0]
        return self._columns[counter]

    def columns(self, counters: tuple[str, ...]) -> tuple[np.ndarray, ...]:
        return tuple(self.column(c) for c in counters)

    def agents(self, exp_ids, agent_hi, agent_lo, sub) -> np.ndarray:
        return exp_ids.copy()

    def agent_row(self, exporter: int, agent_hi: int, agent_lo: int, sub: int) -> int:
        return exporter

    def add_count(self, counter: str, exporter: int, k: int = 1) -> None:
        self.counters[counter] = self.counters.get(counter, 0) + k

    def add_counts(self, counter: str, exp_ids: np.ndarray) -> None:
        self.add_count(counter, 0, len(exp_ids))


def decode_one(data: bytes, state=None, out: FlowBatch | None = None) -> FlowBatch:
    """Decode one datagram (tests, tools): a FlowBatch, or raises a DecodeError subclass."""
    dg = DatagramBatch.from_payloads([data])
    out = out if out is not None else FlowBatch(64)
    status = decode(dg, np.zeros(1, np.int32), state if state is not None else _OneExporter(), out)
    if status[0] != OK:
        raise error_for(int(status[0]))
    return out
