"""NetFlow v5, v9 / IPFIX and sFlow batches from known exporters in one kernel call: exporter lookup,
decode, counting and detection, the work Pipeline.process otherwise spreads over five or more kernel calls
and some forty Python and numpy steps.

Why: at moderate rates a collector wakes up for a few dozen datagrams and sleeps in between; while it
sleeps the core's caches go cold, and every distinct step of a batch then costs microseconds of cache
misses whatever its records (`python -m bench.wakeup`: a v5 batch after 6 ms of idle costs ~13x the
same batch in a busy loop; a lone kernel call after idle ~35 us, each further one ~4 us). One call
touches one kernel's code. It runs the same kernels as the general path (kernels.key_lookup,
wire._classify, wire.v5.decode_v5, wire.walk's and wire.v9ipfix.decode_sets or
wire.sflow.decode_datagrams, kernels.count_batch, kernels.detect_batch), compiled into one, so their
rules are not restated here; a test holds the two paths to the same alerts, rows, counters and
sequence state on random batches.

It takes a batch only when nothing else is needed: every datagram's source already registered (so
allowed and within limits.max_exporters), every datagram of the first one's format (v5, v9 / IPFIX
or sFlow) or rejected by its first bytes, every sFlow agent already known behind its source, every
v9 / IPFIX scope known, every data set's template held and every template set one resent byte for
byte, records compacted to the rows that may alert. Anything else (a new exporter, agent or scope, a
template set that defines something, options data, data waiting for a template that this batch
would release or expire, formats mixed in a batch, a truncated datagram, a batch over
limits.max_batch_records) is left untouched for the general path: the kernel decides before it
changes any state.
"""
from __future__ import annotations

import numpy as np

from . import kernels
from .exporters import COUNTERS
from .jit import kernel, njit
from .wire import _classify
from .wire.errors import reason_code
from .wire.resolve import buffers, http_tables
from .wire.v9ipfix import OPTION, decode_sets
from .wire.walk import key_sets, most_records, sequence, tally, walk_sets
from .wire.sflow import MIN_ROW_BYTES, agent, decode_datagrams
from .wire.v5 import RECORD as V5_RECORD, decode_v5

__all__ = ["OneCall", "v5_batch", "sflow_batch", "ipfix_batch", "WALK_ENTRIES"]

_ROW_BYTES = min(V5_RECORD, MIN_ROW_BYTES)   # the fewest datagram bytes a v5 or sFlow row takes

_NO = np.int64(-1)
_GROW = np.int64(-2)                 # ipfix_batch: the batch needs room for out[0] rows first
_BAD_SET = reason_code("bad_set_length")
_BAD_RECORD = reason_code("bad_record")
_NO_OPTIONS = np.empty(0, OPTION)
_TEMPLATES = COUNTERS.index("templates")       # the exporter counter of templates received
WALK_ENTRIES = 21                    # ipfix_batch's walk: the template sets' entries, last of its buffers


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
def _count_and_detect(rows, m, n, ts, state, scratch, ep, tables, fold, out):
    """The batch's datagrams counted, its m rows matched and its hits folded, as the general path
    does; out = (rows, rejected datagrams, hits, suppressed, -, -, hit groups folded: -1 when
    kernels.fold_batch left the hits to Folder.add_hits)."""
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
    out[6] = kernels.fold_batch(rows, tables[4], tables[5], tables[6], hits, fold) if hits else _NO
    return np.int64(0)


@kernel
def v5_batch(buf, offs, lens, src_hi, src_lo, sport, ts, n, state, scratch, rows, ep, tables, fold, out):
    """The first n datagrams as one v5 batch end to end (module docstring): -1 when they are not one
    (nothing changed), else 0 with out = (rows, rejected datagrams, hits, suppressed). state is
    ExporterTable.kernel_state(), tables Detector.tables, fold Folder.kernel_fold(), scratch
    (exp_ids, version, status, sel, size) of n datagrams at least."""
    known, k5, kt, ks = _sources_and_formats(buf, offs, lens, src_hi, src_lo, sport, n, state, scratch)
    exp_ids, status, sel, size = scratch[0], scratch[2], scratch[3], scratch[4]
    if not known or kt or ks or size[0] // V5_RECORD + 1 > rows.shape[0]:
        return _NO
    counters, records_col, seq_next, seq_seen, seq_lost = state[4], state[7], state[11], state[12], state[13]
    m = decode_v5(buf, offs, lens, sel[0, :k5], exp_ids, ts, rows, 0, status, seq_next, seq_seen, seq_lost,
                  counters[:, records_col], True, ep)
    return _count_and_detect(rows, m, n, ts, state, scratch, ep, tables, fold, out)


@kernel
def sflow_batch(buf, offs, lens, src_hi, src_lo, sport, ts, n, state, sflow, scratch, rows, ep, tables, fold,
                out):
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
    return _count_and_detect(rows, m, n, ts, state, scratch, ep, tables, fold, out)


@njit
def _known_sets(buf, s_id, s_off, s_len, s_dg, scope, tmpl, keys, entries, slot_plan, slot_received, now, lifetime,
                known):
    """Every template set of walk positions `tmpl` is one ScopeTable.remember_set kept for its scope,
    byte for byte, and each template it defined is held with the plan it gave and alive at `now`
    (so no data waits for it: it would be released by the general path): its entry into
    `entries`. False otherwise."""
    t0, t1, t2, val, set_off, set_first, set_count, set_bytes, set_slots, set_pids = known
    nt = tmpl.shape[0]
    for i in range(nt):
        r = tmpl[i]
        keys[0, i] = np.uint64(scope[s_dg[r]])
        keys[1, i] = np.uint64(s_id[r])
        keys[2, i] = np.uint64(s_len[r])
    if kernels.key_lookup(keys[0, :nt], keys[1, :nt], keys[2, :nt], t0, t1, t2, val, entries[:nt]):
        return False
    for i in range(nt):
        e = entries[i]
        o = s_off[tmpl[i]]
        at = set_off[e]
        for j in range(s_len[tmpl[i]]):
            if buf[o + j] != set_bytes[at + j]:
                return False
        for q in range(set_first[e], set_first[e] + set_count[e]):
            if slot_plan[set_slots[q]] != set_pids[q] or now - slot_received[set_slots[q]] > lifetime:
                return False
    return True


@kernel
def ipfix_batch(buf, offs, lens, src_hi, src_lo, sport, ts, n, state, scratch, walk, scopes, plans, http, no_opts,
                templates_col, rows, ep, tables, fold, out):
    """The first n datagrams as one NetFlow v9 / IPFIX batch end to end, as v5_batch does for v5: -1
    when they are not one, -2 when `rows` must first hold out[0] rows (nothing changed either
    way). Besides registered sources, every datagram's scope must exist, every data set's template
    be held and alive and every template set be one remembered byte for byte whose templates are
    held as it defined them (ScopeTable.kernel_state(): the scopes', templates' and sets' KeyMaps);
    it then counts their templates and refreshes their received times as define() would (out[4]:
    how many sets, their entries in walk's `entries`, out[5]: a refresh came over 60 s after the last). A
    batch with any other template set, a template expired, an options data set or more sets than
    `walk` holds (resolve._Buffers.kernel_scratch()) is declined, and so is a batch that would
    release or expire data waiting for its template (OneCall checks that: Pending.quiet). The rules
    are wire/resolve.py's for a batch that changes no definition: the same kernels (walk_sets,
    key_sets, most_records, decode_sets, tally, sequence) in the same order."""
    known, k5, kt, ks = _sources_and_formats(buf, offs, lens, src_hi, src_lo, sport, n, state, scratch)
    exp_ids, version, status, sel = scratch[0], scratch[1], scratch[2], scratch[3]
    if not known or k5 or ks or kt == 0:
        return _NO
    (uptime, secs, seq, domain, scope, s_dg, s_id, s_off, s_len, tmpl, pos, inverse, uniq, table, sets, keys, found,
     per_dg, unknown, so, sl, entries) = walk
    sc0, sc1, sc2, sc_val, scope_exporter, seq_next, seq_seen, seq_lost, seq_count = scopes[:9]
    tk0, tk1, tk2, tk_val, slot_plan, slot_received, lifetime, rates, pbuf = scopes[9:18]
    st0, st1, st2, st_val, set_off, set_first, set_count, set_bytes, set_slots, set_pids = scopes[18:]
    dsel = sel[1, :kt]
    k = walk_sets(buf, offs, lens, dsel, version, status, uptime, secs, seq, domain, s_dg, s_id, s_off, s_len)
    if k < 0:
        return _NO
    j = 0
    for i in range(kt):                 # the scopes of datagrams walked (resolve.prepare: scopes_for)
        d = dsel[i]
        scope[d] = -1
        if status[d] == 0 or status[d] == _BAD_SET:
            keys[0, j] = np.uint64(exp_ids[d])
            keys[1, j] = np.uint64(version[d])
            keys[2, j] = np.uint64(domain[d])
            j += 1
    if kernels.key_lookup(keys[0, :j], keys[1, :j], keys[2, :j], sc0, sc1, sc2, sc_val, found[:j]):
        return _NO                      # a new scope
    j = 0
    for i in range(kt):
        d = dsel[i]
        if status[d] == 0 or status[d] == _BAD_SET:
            scope[d] = found[j]
            j += 1
    size = 2
    while size <= k:                    # key_sets' hash table: a power of two above k
        size *= 2
    nd, nt, nu = key_sets(s_dg, s_id, s_off, s_len, k, scope, version, exp_ids, ts, uptime, secs, sets, pos, tmpl,
                          uniq, inverse, table[:size])
    now = ts[0]
    for d in range(1, n):
        now = max(now, ts[d])
    if nt and not _known_sets(buf, s_id, s_off, s_len, s_dg, scope, tmpl[:nt], keys, entries, slot_plan,
                              slot_received, now, lifetime,
                              (st0, st1, st2, st_val, set_off, set_first, set_count, set_bytes, set_slots, set_pids)):
        return _NO                      # a template set that defines something: resolve.py takes it
    for u in range(nu):
        keys[0, u] = np.uint64(uniq[u])
        keys[1, u] = 0
        keys[2, u] = 0
    if kernels.key_lookup(keys[0, :nu], keys[1, :nu], keys[2, :nu], tk0, tk1, tk2, tk_val, found[:nu]):
        return _NO                      # data for a template never defined: it waits (pending)
    for u in range(nu):                 # ScopeTable.lookup_many
        p = slot_plan[found[u]]
        if p < 0 or now - slot_received[found[u]] > lifetime:
            return _NO
        found[u] = p
    data = sets[:nd]
    for i in range(nd):
        data[i].plan = found[inverse[i]]
    need, n_options = most_records(data, plans.minlen, plans.options)
    if n_options:
        return _NO
    if need > rows.shape[0]:
        out[0] = need
        return _GROW
    for i in range(kt):                 # from here on the batch is taken
        d = dsel[i]
        if scope[d] >= 0:
            scope_exporter[scope[d]] = exp_ids[d]
    counters = state[4]
    long_ago = False
    for i in range(nt):                 # the template sets resent: ScopeTable.define's refresh
        d = s_dg[tmpl[i]]
        e = entries[i]
        counters[exp_ids[d], templates_col] += set_count[e]
        for q in range(set_first[e], set_first[e] + set_count[e]):
            slot = set_slots[q]
            long_ago |= ts[d] - slot_received[slot] > 60.0
            slot_received[slot] = ts[d]
    out[4] = nt
    out[5] = long_ago
    m, _ = decode_sets(buf, pbuf, data, plans, rates, http, False, rows, 0, no_opts, ep, True, so, sl)
    records_col = state[7]
    for d in range(n):
        per_dg[d] = 0
        unknown[d] = False
    tally(data, plans.options, counters[:, records_col], per_dg, status, _BAD_RECORD)
    sequence(dsel, scope, version, seq, per_dg, unknown, seq_next, seq_seen, seq_lost, seq_count)
    return _count_and_detect(rows, m, n, ts, state, scratch, ep, tables, fold, out)


_WORDS = (b"\x00\x05", b"\x00\x00", b"\x00\x09", b"\x00\x0a")   # v5, sFlow, v9, IPFIX


class OneCall:
    """The one-call path of a Pipeline: run() -> (rejected datagrams, hits, suppressed), or None when
    the general path must take the batch. Its scratch arrays are its own, grown with the batch;
    exp_ids and status hold the last batch's (ErrorLog reads them when a datagram was rejected)."""

    def __init__(self, size: int = 512):
        self._scratch(size)
        self.out = np.zeros(7, np.int64)
        self.grouped = -1                       # the last batch's hit groups folded in the kernel (-1: none)

    def _scratch(self, size: int) -> None:
        self.exp_ids = np.empty(size, np.int32)
        self.status = np.empty(size, np.int16)
        self.scratch = (self.exp_ids, np.empty(size, np.int32), self.status, np.empty((3, size), np.int64),
                        np.zeros(3, np.int64))
        self.agents = (np.empty((3, size), np.uint64), np.empty(size, np.int64), np.empty(size, np.int32))

    def run(self, dg, exporters, batch, detector, folder) -> tuple[int, int, int] | None:
        """`dg` (no datagram truncated, within limits.max_batch_records) into `batch`, compacted, its
        hits folded by `folder` (alerts.Folder) unless `grouped` is then -1."""
        n = dg.n
        first = int(dg.offs[0])
        word = dg.buf[first:first + 2].tobytes()  # the first datagram's: a batch is usually one exporter's
        if word not in _WORDS:
            return None                         # junk
        self.room(n)
        batch.reset(dg.nbytes() // _ROW_BYTES + 1)   # the most rows v5 or sFlow datagrams of these bytes give
        # (v9 / IPFIX records can be shorter: ipfix_batch asks for more room when they need it)
        detector.room(batch.capacity)
        fold = folder.kernel_fold()
        if word == b"\x00\x05":
            done = v5_batch(dg.buf, dg.offs, dg.lens, dg.src_hi, dg.src_lo, dg.sport, dg.ts, n,
                            exporters.kernel_state(), self.scratch, batch.rows, detector.endpoints, detector.tables,
                            fold, self.out)
        elif word != b"\x00\x00":
            done = self._ipfix(dg, exporters, batch, detector, fold)
        else:
            done = sflow_batch(dg.buf, dg.offs, dg.lens, dg.src_hi, dg.src_lo, dg.sport, dg.ts, n,
                               exporters.kernel_state(), self.sflow_arguments(exporters), self.scratch, batch.rows,
                               detector.endpoints, detector.tables, fold, self.out)
        if done < 0:
            return None
        return self.took(dg, batch)

    def took(self, dg, batch) -> tuple[int, int, int]:
        """After a one-call kernel took `dg` (here or in polls.poll_loop): `batch` reads its
        buffer; returns (rejected datagrams, hits, suppressed)."""
        batch.buf = batch.late_buf = dg.buf
        batch.n, bad, hits, suppressed, _, _, self.grouped = self.out.tolist()
        return bad, hits, suppressed

    def room(self, n: int) -> None:
        """Scratch for batches of n datagrams."""
        if n > len(self.status):
            self._scratch(max(n, 2 * len(self.status)))

    def sflow_arguments(self, exporters) -> tuple:
        """sflow_batch's `sflow`: the sFlow state's sources and HTTP tables, then the agent lookup's scratch."""
        s = exporters.sflow
        return (s.sources, s.http) + self.agents

    @staticmethod
    def ipfix_arguments(exporters, n: int) -> tuple:
        """ipfix_batch's arguments from `walk` to `templates_col`, for batches of n datagrams."""
        cache = exporters.templates
        return (buffers(cache).kernel_scratch(n), cache.kernel_state(), cache.plans.arrays(), http_tables(exporters),
                _NO_OPTIONS, _TEMPLATES)

    def _ipfix(self, dg, exporters, batch, detector, fold) -> int:
        cache = exporters.templates
        pend = cache.pending                    # plans to compact (begin_batch), or waiting data to release or expire
        if cache.compaction_due() or len(pend) and not pend.quiet(float(dg.ts[: dg.n].max()),
                                                                  cache.pending_max_seconds):
            return _NO
        args = self.ipfix_arguments(exporters, dg.n)
        for _ in range(2):                      # again once with room for the rows, when it asked for it
            done = ipfix_batch(dg.buf, dg.offs, dg.lens, dg.src_hi, dg.src_lo, dg.sport, dg.ts, dg.n,
                               exporters.kernel_state(), self.scratch, *args,
                               batch.rows, detector.endpoints, detector.tables, fold, self.out)
            if done != _GROW:
                break
            batch.reset(int(self.out[0]))
            detector.room(batch.capacity)
        if done == 0 and self.out[4]:           # template sets resent: their received times into the dict
            cache.refreshed(args[0][WALK_ENTRIES][: self.out[4]], bool(self.out[5]))
        return done
