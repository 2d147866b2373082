"""The Python side of a NetFlow v9 / IPFIX batch: sets walked, templates taken, data sets resolved.

Rules: a data set is decoded with the latest definition of its template sent before it (in this
batch or earlier); failing that, with the first definition sent after it in the same batch;
failing that it waits in the pending buffer until its template arrives. Data that waited goes
first when its template comes (it is older), as much as keeps the batch within
bounds.max_batch_records. Options data are cut before the batch's flow records (they set sampling).
Python runs per template set and per distinct (scope, template) in a batch, never per record.
"""
from __future__ import annotations

import numpy as np

from .errors import reason_code
from .fields import NSLOT
from .v9ipfix import OPTION, SET, decode_sets
from .walk import key_sets, most_records, sequence, tally, walk_sets

__all__ = ["prepare", "finish", "Prepared", "buffers", "http_tables"]

_BAD_SET = reason_code("bad_set_length")
_BAD_TEMPLATE = reason_code("bad_template")
_BAD_RECORD = reason_code("bad_record")
_SCOPE_OVER = reason_code("scope_over_limit")
_NO_OPTIONS = np.empty(0, OPTION)                    # the flow pass writes no options rows
_PENDING = ("key", "off", "len", "exp", "ver", "ts", "uptime", "secs", "scope")


class Prepared:
    """A batch walked and resolved: the set rows to cut and how many records they can hold."""

    __slots__ = ("sets", "need", "options", "sel", "scope_dg", "h_seq", "unknown", "pbuf", "buf", "version")


class _Buffers:
    """The arrays a batch's walk and resolve write, grown as needed and reused batch after batch (no
    batch allocates them afresh: a dozen numpy allocations cost more than the walk)."""

    def __init__(self):
        self.datagrams = self.sets = 0
        self.so, self.sl = np.empty(NSLOT, np.int64), np.empty(NSLOT, np.int64)   # decode_sets' scratch
        self.found = np.empty(0, np.int64)
        self._kernel: tuple | None = None             # kernel_scratch(), until a buffer grows
        self._grow(64, 64)

    def _grow(self, datagrams: int, sets: int) -> None:
        if datagrams > self.datagrams:
            self.datagrams = 1 << (datagrams - 1).bit_length()
            self.uptime = np.zeros(self.datagrams, np.uint32)
            self.secs = np.zeros(self.datagrams, np.float64)
            self.seq = np.zeros(self.datagrams, np.uint32)
            self.domain = np.zeros(self.datagrams, np.uint32)
            self.scope = np.zeros(self.datagrams, np.int64)
            self.per_dg = np.zeros(self.datagrams, np.int64)
            self.unknown = np.zeros(self.datagrams, np.bool_)
            self._kernel = None
        if sets > self.sets:
            self.sets = 1 << (sets - 1).bit_length()
            self.s_dg, self.s_id, self.s_off, self.s_len, self.tmpl, self.pos, self.inverse, self.uniq = \
                (np.empty(self.sets, np.int64) for _ in range(8))
            self.table = np.empty(2 * self.sets, np.int64)
            self.set_rows = np.empty(self.sets, SET)
            self.entries = np.empty(self.sets, np.int64)
            self._kernel = None
        keys = max(self.datagrams, self.sets)
        if keys > len(self.found):
            self.keys, self.found = np.zeros((3, keys), np.uint64), np.empty(keys, np.int64)

    def kernel_scratch(self, datagrams: int) -> tuple:
        """The buffers onecall.ipfix_batch walks and resolves a batch of `datagrams` in: room for
        four sets a datagram (it declines a batch with more; walk() grows them then)."""
        if datagrams > self.datagrams or 4 * datagrams > self.sets:
            self._grow(datagrams, 4 * datagrams)
        if self._kernel is None:
            self._kernel = (self.uptime, self.secs, self.seq, self.domain, self.scope, self.s_dg, self.s_id,
                            self.s_off, self.s_len, self.tmpl, self.pos, self.inverse, self.uniq, self.table,
                            self.set_rows, self.keys, self.found, self.per_dg, self.unknown, self.so, self.sl,
                            self.entries)
        return self._kernel

    def walk(self, dg, sel: np.ndarray, version: np.ndarray, status: np.ndarray) -> int:
        """walk_sets into the buffers (grown and walked again when the sets do not fit); returns the
        set count."""
        self._grow(dg.n, 4 * len(sel))
        while True:
            k = walk_sets(dg.buf, dg.offs, dg.lens, sel, version, status, self.uptime, self.secs, self.seq,
                          self.domain, self.s_dg, self.s_id, self.s_off, self.s_len)
            if k >= 0:
                return k
            self._grow(0, 2 * self.sets)


def http_tables(exporters) -> tuple:
    """The packet kernel's tables as decode_sets takes them: the URL substrings (the scope table's)
    and the header names with their scratch (the sFlow state's)."""
    cache, s = exporters.templates, exporters.sflow
    return cache.pat_buf, cache.pat_off, s.hdr, s.hdr_off, s.scratch


def buffers(cache) -> _Buffers:
    """The scope table's scratch buffers (made at its first v9 / IPFIX batch)."""
    if cache.buffers is None:
        cache.buffers = _Buffers()
    return cache.buffers


def prepare(dg, sel: np.ndarray, version: np.ndarray, exp_ids: np.ndarray, exporters, status: np.ndarray) -> Prepared:
    """Walk every v9 / IPFIX datagram of `sel`, take their templates, resolve every data set to a plan."""
    w = buffers(exporters.templates)
    cache = exporters.templates
    n = dg.n
    k = w.walk(dg, sel, version, status)
    walked = sel[(status[sel] == 0) | (status[sel] == _BAD_SET)]
    scope_dg = w.scope[:n]
    scope_dg[sel] = -1
    if len(walked):
        scope_dg[walked] = cache.scopes_for(exp_ids[walked], version[walked], w.domain[walked], exporters)
        status[walked[scope_dg[walked] < 0]] = _SCOPE_OVER  # past limits.max_scopes_per_exporter: dropped
    now = float(dg.ts[:n].max())
    sets = np.empty(k, SET)
    nd, nt, nu = key_sets(w.s_dg, w.s_id, w.s_off, w.s_len, k, scope_dg, version, exp_ids, dg.ts, w.uptime,
                          w.secs, sets, w.pos, w.tmpl, w.uniq, w.inverse, w.table[:1 << max(k, 1).bit_length()])
    sets = sets[:nd]
    defs, before = _take_templates(w.tmpl[:nt], w, version, scope_dg, dg, exp_ids, exporters, status) if nt else ({}, {})
    _plans(sets, w.pos[:nd], w.uniq[:nu], w.inverse[:nd], defs, before, cache, now)
    prep = Prepared()
    prep.pbuf = cache.pending.buf
    sets = _release_pending(prep, sets, defs, exporters, now)
    unknown = np.zeros(n, np.bool_)
    sets = _park_waiting(sets, unknown, dg.buf, exporters, now)
    prep.need, prep.options = most_records(sets, cache.plans.minlen, cache.plans.options)
    prep.sets, prep.sel, prep.scope_dg, prep.h_seq, prep.unknown, prep.buf, prep.version = \
        sets, sel, scope_dg, w.seq, unknown, dg.buf, version
    return prep


def _take_templates(rows: np.ndarray, w: _Buffers, version, scope_dg, dg, exp_ids, exporters, status):
    """Define the templates of every template set (walk positions `rows`), in batch order. Returns
    {key: [(walk position, plan)]} and {key: the plan it had before the batch}."""
    cache = exporters.templates
    buf = dg.buf
    defs: dict[int, list[tuple[int, int]]] = {}
    before: dict[int, int] = {}
    sets = []                                        # (row, datagram, scope, body, parse) in batch order
    for row in rows.tolist():
        d = int(w.s_dg[row])
        o = int(w.s_off[row])
        body = buf[o:o + int(w.s_len[row])].tobytes()
        sets.append((row, d, int(scope_dg[d]), body, cache.parse_set(body, int(version[d]), int(w.s_id[row]))))
    alike = _new_alike(sets, version, w.s_id, cache)
    for row, d, scope, body, parsed in sets:
        group = alike.get(row)
        if group is not None:
            if group:                                # its first: every set of the group at once
                _define_alike(group, w.s_id, dg.ts, exp_ids, exporters, defs, before)
            continue
        e = int(exp_ids[d])
        whole = not parsed.rejected and not parsed.withdrawals
        exporters.add_count("templates", e, len(parsed.templates))
        if parsed.rejected:
            exporters.add_count("templates_rejected", e, parsed.rejected)
            if status[d] == 0:
                status[d] = _BAD_TEMPLATE
        if parsed.withdrawals:
            exporters.add_count("withdrawals_ignored", e, parsed.withdrawals)
        for t in parsed.templates:
            key = (scope << 16) | t.template_id
            if key not in before:
                before[key] = cache.lookup(key, float(dg.ts[d]))
            held = cache.templates.get(key)
            pid = cache.define(scope, t, float(dg.ts[d]))
            if pid < 0:                              # past a [limits] bound: not stored, counted
                exporters.add_count("templates_over_limit", e)
                whole = False
                continue
            if held is not None and held[0] != pid:  # the same id with another layout
                exporters.add_count("template_redefinitions", e)
            defs.setdefault(key, []).append((row, pid))
        if whole:                                    # resent as it is, the one-call path takes it
            cache.remember_set(scope, int(w.s_id[row]), body, [(scope << 16) | t.template_id for t in parsed.templates])
    return defs, before


def _new_alike(sets: list, version, set_id, cache) -> dict:
    """The template sets a batch from many new exporters brings: sets with the same bytes, each in a
    scope of its own that never held their ids and sends no other set in the batch, well within the
    [limits] bounds (all the batch's templates, as new layouts, would pass none). Returns {walk
    position: []} for each of them and, for the first of each group, the group (row, datagram,
    scope, body, parse) instead; nothing when the bounds are near (then each goes one by one and
    is refused where define() refuses it)."""
    if len(sets) < 2:
        return {}
    per_scope: dict[int, int] = {}
    for _, _, scope, _, _ in sets:
        per_scope[scope] = per_scope.get(scope, 0) + 1
    if not cache.fits(sum(len(p.templates) for *_, p in sets), sum(len(t.fields) for *_, p in sets for t in p.templates)):
        return {}
    room = cache.bounds.max_templates_per_scope
    groups: dict[tuple, list] = {}
    for s in sets:
        row, d, scope, body, parsed = s
        ids = [t.template_id for t in parsed.templates]
        if scope >= 0 and per_scope[scope] == 1 and parsed.templates and not parsed.rejected \
                and not parsed.withdrawals and len(set(ids)) == len(ids) \
                and cache.scope_templates[scope] + len(ids) <= room and cache.fresh(scope, ids):
            groups.setdefault((int(version[d]), int(set_id[row]), body), []).append(s)
    alike: dict[int, list] = {}
    for group in groups.values():
        if len(group) > 1:
            alike.update((s[0], []) for s in group)
            alike[group[0][0]] = group
    return alike


def _define_alike(group: list, set_id, ts, exp_ids, exporters, defs: dict, before: dict) -> None:
    """What _take_templates does set by set, for a group _new_alike found: define_new and
    remember_new_sets per template for all its scopes at once."""
    cache = exporters.templates
    row0, _, _, body, parsed = group[0]
    rows = [s[0] for s in group]
    scopes = [s[2] for s in group]
    received = ts[np.array([s[1] for s in group], np.int64)].tolist()
    exporters.add_counts("templates", exp_ids[np.array([s[1] for s in group], np.int64)], len(parsed.templates))
    for t in parsed.templates:
        pid = cache.define_new(scopes, t, received)
        for row, scope in zip(rows, scopes):
            key = (scope << 16) | t.template_id
            before[key] = -1
            defs[key] = [(row, pid)]
    cache.remember_new_sets(scopes, int(set_id[row0]), body, [t.template_id for t in parsed.templates])


def _plans(sets: np.ndarray, pos: np.ndarray, uniq: np.ndarray, inverse: np.ndarray, defs: dict, before: dict,
           cache, now: float) -> None:
    """Each data set's plan (-1: none yet): the one its key has now (a dict lookup per distinct key:
    thousands of exporters put hundreds of keys in a batch), then for the keys this batch defines,
    set by set by walk position (`pos`)."""
    if not len(sets):
        return
    keys = uniq.tolist()
    plan = np.array(cache.lookup_many(keys, now), np.int32)[inverse]
    if defs:
        # every definition as (key, walk position, plan), sorted by key then position (a key's are
        # in batch order), and for each data set of a defined key the last one before it: numpy
        # over the batch (a Python step per defined key cost ~20 us; a batch from hundreds of new
        # exporters defines hundreds of keys)
        dkeys = np.fromiter(defs.keys(), np.int64, len(defs))
        count = np.fromiter(map(len, defs.values()), np.int64, len(defs))
        flat = [d for dd in defs.values() for d in dd]
        drow = np.fromiter((r for r, _ in flat), np.int64, len(flat))
        dpid = np.fromiter((p for _, p in flat), np.int32, len(flat))
        order = np.argsort(np.repeat(dkeys, count), kind="stable")
        drow, dpid = drow[order], dpid[order]
        by_key = np.argsort(dkeys)                 # (dict keys: distinct)
        ukeys = dkeys[by_key]
        dk = np.repeat(np.arange(len(ukeys)), count[by_key])   # each definition's key, as its rank
        first = np.searchsorted(dk, np.arange(len(ukeys)))
        earlier = np.array([before[k] for k in ukeys.tolist()], np.int32)
        earlier = np.where(earlier >= 0, earlier, dpid[first])  # none held before: the first definition
        k = np.minimum(np.searchsorted(ukeys, sets["key"]), len(ukeys) - 1)
        mine = np.flatnonzero(ukeys[k] == sets["key"])
        if len(mine):
            span = int(max(drow.max(), pos[mine].max())) + 1
            at = np.searchsorted(dk * span + drow, k[mine] * span + pos[mine], side="right") - 1
            ok = (at >= 0) & (dk[np.maximum(at, 0)] == k[mine])
            plan[mine] = np.where(ok, dpid[np.maximum(at, 0)], earlier[k[mine]])
    sets["plan"] = plan


def _release_pending(prep: Prepared, sets: np.ndarray, defs: dict, exporters, now: float) -> np.ndarray:
    """Data that waited for a template that has now arrived goes first (it is older)."""
    cache = exporters.templates
    pend = cache.pending
    if not len(pend) or not (defs or pend.held):
        return sets
    known = set(defs) | pend.held
    ready = np.isin(pend.cols["key"], np.fromiter(known, np.int64, len(known)))
    pend.held = set()
    if not ready.any():
        return sets
    ready, plans = _release_within(ready, pend, sets, defs, cache, now)
    if not ready.any():
        return sets
    taken, prep.pbuf = pend.take(ready)
    late = np.zeros(len(taken["key"]), SET)
    for name in _PENDING:
        late[name] = taken[name]
    late["src"], late["dg"], late["plan"] = 1, -1, plans
    exporters.add_counts("sets_late", taken["exp"])
    return np.concatenate([late, sets])


def _release_within(ready: np.ndarray, pend, sets: np.ndarray, defs: dict, cache, now: float):
    """The waiting sets to release with this batch, oldest first, as many as keep the batch's records
    within bounds.max_batch_records (at worst one per byte); the rest wait for the next batch (pend.held).
    Returns the mask and the plan of each released set."""
    idx = np.flatnonzero(ready)
    keys = pend.cols["key"][idx].tolist()
    plans = np.array([defs[k][0][1] if k in defs else cache.lookup(k, now) for k in keys], np.int32)
    minlen = cache.plans.minlen
    own = sets["plan"] >= 0
    budget = cache.bounds.max_batch_records - int((sets["len"][own] // np.maximum(minlen[sets["plan"][own]], 1)).sum())
    need = np.where(plans >= 0, pend.cols["len"][idx] // np.maximum(minlen[np.maximum(plans, 0)], 1), 0)
    fits = (np.cumsum(need) <= budget) & (plans >= 0)   # a template that expired meanwhile: it waits (expires)
    pend.held = {k for k, f, p in zip(keys, fits.tolist(), plans.tolist()) if not f and p >= 0}
    out = np.zeros_like(ready)
    out[idx[fits]] = True
    return out, plans[fits]


def _park_waiting(sets: np.ndarray, unknown: np.ndarray, buf: np.ndarray, exporters, now: float) -> np.ndarray:
    """What still has no plan waits (its datagram's record count is then unknown: `unknown`); what
    waited too long leaves, counted. Returns the sets to cut."""
    cache = exporters.templates
    pend = cache.pending
    waiting = sets["plan"] < 0
    if waiting.any():
        w = {name: sets[name][waiting] for name in _PENDING}
        unknown[sets["dg"][waiting]] = True
        exporters.add_counts("template_misses", w["exp"])
        exporters.add_counts("pending_dropped_sets", pend.add(w, buf, cache.pending_max_sets))
        sets = sets[~waiting]
    exporters.add_counts("template_expired_sets", pend.expire(now, cache.pending_max_seconds))
    return sets


def finish(prep: Prepared, exporters, out, status: np.ndarray, keep: bool = False, ep=None,
           records: np.ndarray | None = None) -> int:
    """Cut the resolved sets into `out` from row out.n; options first (they set sampling rates).

    With `keep`, only rows that may alert for the endpoint table `ep` are kept (wire.decode);
    `records` (per exporter) gets every flow record cut, kept or not."""
    cache = exporters.templates
    pl = cache.plans
    w = cache.buffers
    sets = prep.sets
    n = out.n
    if len(sets):
        plans = pl.arrays()
        http = http_tables(exporters)
        if prep.options:
            options = pl.options[sets["plan"]]
            opts = np.empty(prep.need + 1, OPTION)
            _, no = decode_sets(prep.buf, prep.pbuf, sets, plans, (cache.samp_keys, cache.samp_rates), http, True,
                                out.rows, n, opts, ep, False, w.so, w.sl)
            cache.set_rates(opts["scope"][:no], opts["sampler"][:no], opts["rate"][:no])
            exporters.add_counts("options_records", np.repeat(sets["exp"][options], sets["nrec"][options]))
        n, _ = decode_sets(prep.buf, prep.pbuf, sets, plans, (cache.samp_keys, cache.samp_rates), http, False,
                           out.rows, n, _NO_OPTIONS, ep, bool(keep), w.so, w.sl)
    per_dg = np.zeros(prep.scope_dg.shape[0], np.int64)
    if len(sets):
        tally(sets, pl.options, records if records is not None else np.zeros(len(exporters.seq_next), np.int64),
              per_dg, status, _BAD_RECORD)
    sequence(prep.sel, prep.scope_dg, prep.version, prep.h_seq, per_dg, prep.unknown,
             cache.seq_next, cache.seq_seen, cache.seq_lost, cache.seq_count)
    return n
