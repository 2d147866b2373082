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
from .walk import sequence, walk_sets

__all__ = ["prepare", "finish", "Prepared"]

_BAD_SET = reason_code("bad_set_length")
_BAD_TEMPLATE = reason_code("bad_template")
_BAD_RECORD = reason_code("bad_record")
_SCOPE_OVER = reason_code("scope_over_limit")
_PENDING = ("key", "off", "len", "exp", "ver", "ts", "uptime", "secs", "scope")


class Prepared:
    """A batch walked and resolved: the set rows to cut and how many records they can hold."""

    __slots__ = ("sets", "need", "sel", "scope_dg", "h_seq", "unknown", "pbuf", "buf", "version")


class _Walked:
    """The sets of a batch's datagrams as columns, and the header fields per datagram."""

    def __init__(self, dg, sel: np.ndarray, version: np.ndarray, status: np.ndarray):
        n = dg.n
        self.uptime = np.zeros(n, np.uint32)
        self.secs = np.zeros(n, np.float64)
        self.seq = np.zeros(n, np.uint32)
        self.domain = np.zeros(n, np.uint32)
        cap = int(dg.lens[sel].sum()) // 4 + 1
        s_dg, s_id, s_off, s_len = (np.empty(cap, np.int64) for _ in range(4))
        k = walk_sets(dg.buf, dg.offs, dg.lens, sel, version, status, self.uptime, self.secs, self.seq,
                      self.domain, s_dg, s_id, s_off, s_len)
        self.dg, self.id, self.off, self.len = s_dg[:k], s_id[:k], s_off[:k], s_len[:k]

    def keep(self, mask: np.ndarray) -> None:
        self.dg, self.id, self.off, self.len = self.dg[mask], self.id[mask], self.off[mask], self.len[mask]


def prepare(dg, sel: np.ndarray, version: np.ndarray, exp_ids: np.ndarray, exporters, status: np.ndarray) -> Prepared:
    """Walk every v9 / IPFIX datagram of `sel`, take their templates, resolve every data set to a plan."""
    cache = exporters.templates
    n = dg.n
    w = _Walked(dg, sel, version, status)
    walked = sel[(status[sel] == 0) | (status[sel] == _BAD_SET)]
    scope_dg = np.full(n, -1, np.int64)
    if len(walked):
        scope_dg[walked] = cache.scopes_for(exp_ids[walked], version[walked], w.domain[walked], exporters)
    status[walked[scope_dg[walked] < 0]] = _SCOPE_OVER  # past limits.max_scopes_per_exporter: dropped
    w.keep(scope_dg[w.dg] >= 0)
    ver, scope = version[w.dg], scope_dg[w.dg]
    now = float(dg.ts[:n].max()) if n else 0.0
    is_tmpl = np.where(ver == 9, w.id <= 1, (w.id == 2) | (w.id == 3))
    defs, before = _take_templates(np.flatnonzero(is_tmpl), w, ver, scope, dg, exp_ids, exporters, status)
    sets = _data_sets(w, ver, scope, dg, exp_ids, defs, before, cache, now)
    prep = Prepared()
    prep.pbuf = cache.pending.buf
    sets = _release_pending(prep, sets, defs, exporters, now)
    unknown = np.zeros(n, np.bool_)
    sets = _park_waiting(sets, unknown, dg.buf, exporters, now)
    p = sets["plan"]
    prep.need = int((sets["len"] // np.maximum(cache.plans.minlen[p], 1)).sum()) if len(p) else 0
    prep.sets, prep.sel, prep.scope_dg, prep.h_seq, prep.unknown, prep.buf, prep.version = \
        sets, sel, scope_dg, w.seq, unknown, dg.buf, version
    return prep


def _take_templates(rows: np.ndarray, w: _Walked, ver, scope, dg, exp_ids, exporters, status):
    """Define the templates of every template set, in batch order. Returns {key: [(set row, plan)]}
    and {key: the plan it had before the batch}."""
    cache = exporters.templates
    buf = dg.buf
    defs: dict[int, list[tuple[int, int]]] = {}
    before: dict[int, int] = {}
    for row in rows.tolist():
        d = int(w.dg[row])
        o = int(w.off[row])
        parsed = cache.parse_set(buf[o:o + int(w.len[row])].tobytes(), int(ver[row]), int(w.id[row]))
        e = int(exp_ids[d])
        exporters.add_count("templates", e, len(parsed.templates))
        if parsed.rejected:
            exporters.add_count("templates_rejected", e, parsed.rejected)
            if status[d] == 0:
                status[d] = _BAD_TEMPLATE
        if parsed.withdrawals:
            exporters.add_count("withdrawals_ignored", e, parsed.withdrawals)
        for t in parsed.templates:
            key = (int(scope[row]) << 16) | t.template_id
            if key not in before:
                before[key] = cache.lookup(key, float(dg.ts[d]))
            held = cache.templates.get(key)
            pid = cache.define(int(scope[row]), t, float(dg.ts[d]))
            if pid < 0:                              # past a [limits] bound: not stored, counted
                exporters.add_count("templates_over_limit", e)
                continue
            if held is not None and held[0] != pid:  # the same id with another layout
                exporters.add_count("template_redefinitions", e)
            defs.setdefault(key, []).append((row, pid))
    return defs, before


def _data_sets(w: _Walked, ver, scope, dg, exp_ids, defs: dict, before: dict, cache, now: float) -> np.ndarray:
    """The batch's data sets as SET rows, each with its plan (-1: none yet): Python per distinct
    (scope, template id)."""
    data = np.flatnonzero(w.id >= 256)
    keys = (scope[data] << 16) | w.id[data]
    plan = np.full(len(data), -1, np.int32)
    if len(data):
        # the plan each distinct key has now (a dict lookup per key: thousands of exporters put
        # hundreds of keys in a batch), then the keys this batch defines, set by set
        uniq, inverse = np.unique(keys, return_inverse=True)
        lookup = cache.lookup
        plan = np.fromiter((lookup(k, now) for k in uniq.tolist()), np.int32, len(uniq))[inverse]
        for key in defs.keys() & set(uniq.tolist()):
            idx = np.flatnonzero(keys == key)
            dd = defs[key]
            pos = np.array([r for r, _ in dd], np.int64)
            pids = np.array([p for _, p in dd], np.int32)
            at = np.searchsorted(pos, data[idx], side="right") - 1
            earlier = before[key] if before[key] >= 0 else pids[0]
            plan[idx] = np.where(at >= 0, pids[np.maximum(at, 0)], earlier)
    d = w.dg[data]
    sets = np.zeros(len(data), SET)
    sets["off"], sets["len"], sets["plan"], sets["exp"], sets["ver"] = w.off[data], w.len[data], plan, exp_ids[d], ver[data]
    sets["ts"], sets["uptime"], sets["secs"], sets["scope"], sets["dg"], sets["key"] = \
        dg.ts[d], w.uptime[d], w.secs[d], scope[data], d, keys
    return sets


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
    sets = prep.sets
    n = out.n
    if len(sets):
        plans = pl.arrays()
        s = exporters.sflow                          # the packet kernel's tables live with the sFlow state
        http = (cache.pat_buf, cache.pat_off, s.hdr, s.hdr_off, s.scratch)
        options = pl.options[sets["plan"]]
        if options.any():
            opts = np.empty(prep.need + 1, OPTION)
            _, no = decode_sets(prep.buf, prep.pbuf, sets, plans, (cache.samp_keys, cache.samp_rates), http, True,
                                out.rows, n, opts, ep, False, np.empty(NSLOT, np.int64), np.empty(NSLOT, np.int64))
            cache.set_rates(opts["scope"][:no], opts["sampler"][:no], opts["rate"][:no])
            exporters.add_counts("options_records", np.repeat(sets["exp"][options], sets["nrec"][options]))
        n, _ = decode_sets(prep.buf, prep.pbuf, sets, plans, (cache.samp_keys, cache.samp_rates), http, False,
                           out.rows, n, np.empty(0, OPTION), ep, bool(keep),
                           np.empty(NSLOT, np.int64), np.empty(NSLOT, np.int64))
        if records is not None:
            np.add.at(records, sets["exp"][~options], sets["nrec"][~options])
        baddg = sets["dg"][(sets["bad"] != 0) & (sets["dg"] >= 0)]
        status[baddg[status[baddg] == 0]] = _BAD_RECORD
    per_dg = np.zeros(prep.scope_dg.shape[0], np.int64)
    inbatch = sets["dg"] >= 0
    np.add.at(per_dg, sets["dg"][inbatch], sets["nrec"][inbatch])
    sequence(prep.sel, prep.scope_dg, prep.version, prep.h_seq, per_dg, prep.unknown,
             cache.seq_next, cache.seq_seen, cache.seq_lost, cache.seq_count)
    return n
