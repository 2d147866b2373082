"""NetFlow v5 and sFlow batches from known exporters in one kernel call: exporter lookup, decode,
counting and detection, the work Pipeline.process otherwise spreads over five or more kernel calls
and some forty Python and numpy steps.

Why: at moderate rates a collector wakes up for a few dozen datagrams and sleeps in between; while it
sleeps the core's caches go cold, and every distinct step of a batch then costs microseconds of cache
misses whatever its records (`python -m bench.wakeup`: a v5 batch after 6 ms of idle costs ~13x the
same batch in a busy loop; a lone kernel call after idle ~35 us, each further one ~4 us). One call
touches one kernel's code. It runs the same kernels as the general path (kernels.key_lookup,
wire._classify, wire.v5.decode_v5 or wire.sflow.decode_datagrams, kernels.count_batch,
kernels.detect_batch), compiled into one, so their rules are not restated here; a test holds the two
paths to the same alerts, rows, counters and sequence state on random batches.

It takes a batch only when nothing else is needed: every datagram's source already registered (so
allowed and within limits.max_exporters), every datagram of the first one's format (v5 or sFlow) or
rejected by its first bytes, every sFlow agent already known behind its source, records compacted to
the rows that may alert. Anything else (a new exporter or agent, v9 / IPFIX, formats mixed in a
batch, a truncated datagram, a batch over limits.max_batch_records) is left untouched for the
general path: the kernel decides before it changes any state.
"""
from __future__ import annotations

import numpy as np

from . import kernels
from .jit import kernel, njit
from .wire import _classify
from .wire.sflow import MIN_ROW_BYTES, agent, decode_datagrams
from .wire.v5 import RECORD as V5_RECORD, decode_v5

__all__ = ["OneCall", "v5_batch", "sflow_batch"]

_ROW_BYTES = min(V5_RECORD, MIN_ROW_BYTES)   # the fewest datagram bytes a row of either format takes

_NO = np.int64(-1)


@njit
def _sources_and_formats(buf, offs, lens, src_hi, src_lo, sport, n, state, scratch):
    """Every datagram's source row into exp_ids and the datagrams by format (wire._classify):
    (False, 0, 0, 0) when a source is not registered."""
    t0, t1, t2, val = state[:4]
    exp_ids, version, status, sel, size = scratch
    if kernels.key_lookup(src_hi[:n], src_lo[:n], sport[:n], t0, t1, t2, val, exp_ids):
        return False, 0, 0, 0
    for d in range(n):
        status[d] = 0
    size[:] = 0
    k5, kt, ks = _classify(buf, offs, lens, n, version, status, sel, size)
    return True, k5, kt, ks


@njit
def _count_and_detect(rows, m, n, ts, state, scratch, ep, tables, out):
    """The batch's datagrams counted and its m rows matched, as the general path does; out = (rows,
    rejected datagrams, hits, suppressed)."""
    counters, reason_col, datagrams_col = state[4:7]
    suppressed_col, alerted_col, last_seen = state[8:11]
    exp_ids, status = scratch[0], scratch[2]
    bad = kernels.count_batch(counters, exp_ids[:n], status[:n], reason_col, datagrams_col, last_seen, ts[n - 1])
    hits, suppressed = kernels.detect_batch(rows, m, ep, tables[0], tables[1], tables[2], tables[3], tables[4],
                                            tables[5], tables[6], counters[:, suppressed_col],
                                            counters[:, alerted_col])
    out[0] = m
    out[1] = bad
    out[2] = hits
    out[3] = suppressed
    return np.int64(0)


@kernel
def v5_batch(buf, offs, lens, src_hi, src_lo, sport, ts, n, state, scratch, rows, ep, tables, out):
    """The first n datagrams as one v5 batch end to end (module docstring): -1 when they are not one
    (nothing changed), else 0 with out = (rows, rejected datagrams, hits, suppressed). state is
    ExporterTable.kernel_state(), tables Detector.tables, scratch (exp_ids, version, status, sel,
    size) of n datagrams at least."""
    known, k5, kt, ks = _sources_and_formats(buf, offs, lens, src_hi, src_lo, sport, n, state, scratch)
    exp_ids, status, sel, size = scratch[0], scratch[2], scratch[3], scratch[4]
    if not known or kt or ks or size[0] // V5_RECORD + 1 > rows.shape[0]:
        return _NO
    counters, records_col, seq_next, seq_seen, seq_lost = state[4], state[7], state[11], state[12], state[13]
    m = decode_v5(buf, offs, lens, sel[0, :k5], exp_ids, ts, rows, 0, status, seq_next, seq_seen, seq_lost,
                  counters[:, records_col], True, ep)
    return _count_and_detect(rows, m, n, ts, state, scratch, ep, tables, out)


@kernel
def sflow_batch(buf, offs, lens, src_hi, src_lo, sport, ts, n, state, sflow, scratch, rows, ep, tables, out):
    """The first n datagrams as one sFlow batch end to end, as v5_batch does for v5: -1 when they are
    not one (nothing changed). Besides registered sources, every datagram's (source, agent,
    sub-agent id) must have its row already (the sFlow rows' KeyMap in state), which it is counted
    in; a datagram without an agent keeps its source row, as in wire.decode, and is rejected by the
    decoder. sflow = (sources, http) as SflowState holds them, then scratch for the agent lookup
    (keys (3, n) uint64, positions int64, rows int32)."""
    known, k5, kt, ks = _sources_and_formats(buf, offs, lens, src_hi, src_lo, sport, n, state, scratch)
    exp_ids, status, sel, size = scratch[0], scratch[2], scratch[3], scratch[4]
    if not known or k5 or kt or size[2] // MIN_ROW_BYTES + 1 > rows.shape[0]:
        return _NO
    sources, http, keys, at, found = sflow
    j = 0
    for k in range(ks):
        d = sel[2, k]
        ok, hi, lo, sub = agent(buf, offs[d], lens[d])
        if ok:
            keys[0, j] = hi
            keys[1, j] = lo
            keys[2, j] = (np.uint64(exp_ids[d]) << np.uint64(32)) | np.uint64(sub)
            at[j] = d
            j += 1
    a0, a1, a2, a_val = state[15:19]
    if kernels.key_lookup(keys[0, :j], keys[1, :j], keys[2, :j], a0, a1, a2, a_val, found[:j]):
        return _NO                      # an agent new behind its source
    for i in range(j):                  # from here on the batch is taken
        exp_ids[at[i]] = found[i]
    counters, tally_cols = state[4], state[14]
    tally = (counters[:, tally_cols[0]], counters[:, tally_cols[1]], counters[:, tally_cols[2]],
             counters[:, tally_cols[3]])
    m = decode_datagrams((buf, offs, lens, ts), sel[2, :ks], exp_ids, rows, 0, status, tally,
                         (state[11], state[12], state[13]), sources, http, True, ep)
    return _count_and_detect(rows, m, n, ts, state, scratch, ep, tables, out)


class OneCall:
    """The one-call path of a Pipeline: run() -> (rejected datagrams, hits, suppressed), or None when
    the general path must take the batch. Its scratch arrays are its own, grown with the batch;
    exp_ids and status hold the last batch's (ErrorLog reads them when a datagram was rejected)."""

    def __init__(self, size: int = 512):
        self._scratch(size)
        self.out = np.zeros(4, np.int64)

    def _scratch(self, size: int) -> None:
        self.exp_ids = np.empty(size, np.int32)
        self.status = np.empty(size, np.int16)
        self.scratch = (self.exp_ids, np.empty(size, np.int32), self.status, np.empty((3, size), np.int64),
                        np.zeros(3, np.int64))
        self.agents = (np.empty((3, size), np.uint64), np.empty(size, np.int64), np.empty(size, np.int32))

    def run(self, dg, exporters, batch, detector) -> tuple[int, int, int] | None:
        """`dg` (no datagram truncated, within limits.max_batch_records) into `batch`, compacted."""
        n = dg.n
        first = int(dg.offs[0])
        word = dg.buf[first:first + 2].tobytes()  # the first datagram's: a batch is usually one exporter's
        if word != b"\x00\x05" and word != b"\x00\x00":
            return None                         # v9 / IPFIX, or junk
        if n > len(self.status):
            self._scratch(max(n, 2 * len(self.status)))
        batch.reset(dg.nbytes() // _ROW_BYTES + 1)   # the most rows v5 or sFlow datagrams of these bytes give
        detector.room(batch.capacity)
        if word == b"\x00\x05":
            done = v5_batch(dg.buf, dg.offs, dg.lens, dg.src_hi, dg.src_lo, dg.sport, dg.ts, n,
                            exporters.kernel_state(), self.scratch, batch.rows, detector.endpoints, detector.tables,
                            self.out)
        else:
            s = exporters.sflow
            done = sflow_batch(dg.buf, dg.offs, dg.lens, dg.src_hi, dg.src_lo, dg.sport, dg.ts, n,
                               exporters.kernel_state(), (s.sources, s.http) + self.agents, self.scratch, batch.rows,
                               detector.endpoints, detector.tables, self.out)
        if done < 0:
            return None
        batch.buf = batch.late_buf = dg.buf
        batch.n, bad, hits, suppressed = self.out.tolist()
        return bad, hits, suppressed
