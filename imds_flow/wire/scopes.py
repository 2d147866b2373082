"""The scope table: per (exporter, version, source id / observation domain) state of NetFlow v9 and
IPFIX: templates, sampling rates, sequence numbers, and the data waiting for its template.

Rules: a template's scope is (exporter address, exporter port unless scope_port is off, version,
source id / observation domain), then its id. A definition replaces the previous one for the
same key; it lives `lifetime` seconds after it was last (re)sent. Nothing here does I/O; times
come from datagram arrival times.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..grow import grow
from ..keymap import KeyMap

from .plans import PlanTable
from .templates import VAR, SetParse, Template, parse_template_set, record_lengths

__all__ = ["ScopeTable", "Bounds"]

_NO_SAMPLER = 0xFFFF_FFFF


@dataclass(frozen=True)
class Bounds:
    """What the cache may hold (config [limits]); whatever would pass a bound is refused and counted
    by the caller, never evicting what an exporter already has: a flood cannot push out real templates.
    Compiled plans may also hold up to as many again of layouts no longer used, until the next batch
    compacts them."""
    max_scopes_per_exporter: int = 32         # (version, source id / observation domain) per exporter
    max_templates_per_scope: int = 1024       # template definitions per scope
    max_templates: int = 65536                # template definitions in all (also: sampling-rate entries)
    max_template_fields: int = 1 << 21        # fields of all template definitions together
    max_pending_bytes_per_exporter: int = 1 << 20   # data sets waiting for their template, per exporter
    max_pending_bytes: int = 16 << 20         # ... and in all
    max_batch_records: int = 1 << 62          # records decoded at once (waiting data is released within it)


def template_entry(t: Template) -> dict:
    """The template part of an export_state entry (many exporters send the same Template object)."""
    return {"template_id": t.template_id, "options": t.options, "scope_fields": t.scope_fields,
            "fields": [list(f) for f in t.fields]}


class ScopeTable:
    """Scopes, their templates, sampling rates, sequence numbers and the data waiting for templates:
    all per-scope state of v9 / IPFIX (v5 and sFlow sequences are per exporter, in ExporterTable).

    Keys the kernels see are integers: scope ids, and scope << 16 | template id.
    """

    def __init__(self, scope_port: bool = True, lifetime: float = 1800.0, pending_max_sets: int = 256,
                 pending_max_seconds: float = 60.0, url_patterns: tuple[str, ...] = (), bounds: Bounds = Bounds()):
        self.scope_port = scope_port
        self.bounds = bounds
        self.lifetime = lifetime
        self.pending_max_sets = pending_max_sets
        self.pending_max_seconds = pending_max_seconds
        self.plans = PlanTable()
        self._scopes: dict[tuple, int] = {}           # (address, port or 0, version, domain) -> scope id
        self.scope_keys: list[tuple] = []
        self._by_exporter: dict[tuple[int, int, int], int] = {}   # (exporter index, version, domain)
        self._scope_ids = KeyMap()                    # the same, for a batch in one kernel call
        self.templates: dict[int, tuple[int, float, Template]] = {}  # key -> (plan, received, template)
        cap = 16
        # The same, for a batch in one kernel call (onecall.ipfix_batch): key -> slot in a KeyMap,
        # the slot's plan (-1: forgotten) and received time in arrays; kept by _hold and _forget.
        self._slots: dict[int, int] = {}
        self._slot_ids = KeyMap()
        self.slot_plan = np.full(cap, -1, np.int32)
        self.slot_received = np.zeros(cap, np.float64)
        self._slot_keys: list[int] = []               # slot -> key
        self._forget_sets()
        self.dirty = False
        self.scope_exporter = np.zeros(cap, np.int32)
        self.seq_next = np.zeros(cap, np.uint32)
        self.seq_seen = np.zeros(cap, np.bool_)
        self.seq_lost = np.zeros(cap, np.int64)
        self.seq_count = np.zeros(cap, np.int64)    # records of the last message (IPFIX)
        self.scope_templates = np.zeros(cap, np.int32)   # template definitions held per scope
        self._exporter_scopes: dict[int, int] = {}   # exporter index -> scopes it has (bounds.max_scopes_per_exporter)
        self._fields = 0                              # fields of every definition held (bounds.max_template_fields)
        self._rates: dict[int, float] = {}
        self.samp_keys = np.zeros(0, np.int64)
        self.samp_rates = np.zeros(0, np.float64)
        self.set_url_patterns(url_patterns)
        self._parsed: dict[tuple[int, int, bytes], SetParse] = {}   # see parse_set
        self.buffers = None                           # resolve.py's scratch, reused batch after batch
        from .pending import Pending                  # the buffer of data sets waiting for templates
        self.pending = Pending(bounds.max_pending_bytes_per_exporter, bounds.max_pending_bytes)

    def set_url_patterns(self, url_patterns: tuple[str, ...]) -> None:
        """The http.url_substrings the kernels look for; a URL's `url` column is an index into
        them, so the detector's names must be built from the same tuple (Pipeline.reload)."""
        pats = [p.lower().encode() for p in url_patterns]
        self.pat_off = np.zeros(len(pats) + 1, np.int64)
        self.pat_off[1:] = np.cumsum([len(p) for p in pats]) if pats else []
        self.pat_buf = np.frombuffer(b"".join(pats) or b"\0", np.uint8).copy()

    # --- scopes ------------------------------------------------------------------------------

    def scope(self, address: str, port: int, version: int, domain: int) -> int:
        key = (address, port if self.scope_port else 0, version, domain)
        sid = self._scopes.get(key)
        if sid is None:
            sid = self._scopes[key] = len(self.scope_keys)
            self.scope_keys.append(key)
            if sid >= len(self.scope_exporter):      # (they grow together)
                for name in ("scope_exporter", "seq_next", "seq_seen", "seq_lost", "seq_count", "scope_templates"):
                    setattr(self, name, grow(getattr(self, name), sid + 1))
        return sid

    def scopes_for(self, exp: np.ndarray, version: np.ndarray, domain: np.ndarray, exporters) -> np.ndarray:
        """Scope id of every datagram; one kernel call, Python work per new (exporter, version, domain).

        -1 for a datagram that would open a scope past bounds.max_scopes_per_exporter (the caller
        drops it as scope_over_limit)."""
        out = np.empty(len(exp), np.int64)
        if not len(exp) or not self._scope_ids.lookup(exp.astype(np.uint64), version.astype(np.uint64),
                                                      domain.astype(np.uint64), out):
            self.scope_exporter[out] = exp           # exporters sharing a scope (scope_port off): the latest
            return out
        miss = np.flatnonzero(out == -2)
        keys = (exp[miss].astype(np.int64) << 40) | (version[miss].astype(np.int64) << 32) | domain[miss].astype(np.int64)
        uniq, inverse = np.unique(keys, return_inverse=True)
        ids = np.empty(len(uniq), np.int64)
        for j, k in enumerate(uniq.tolist()):
            e, v, d = k >> 40, (k >> 32) & 0xFF, k & 0xFFFF_FFFF
            sid = self._by_exporter.get((e, v, d))
            if sid is None:
                have = self._exporter_scopes.get(e, 0)
                if have >= self.bounds.max_scopes_per_exporter:
                    ids[j] = -1
                    continue
                self._exporter_scopes[e] = have + 1
                sid = self._by_exporter[(e, v, d)] = self.scope(exporters.address[e], exporters.port[e], v, d)
                self._scope_ids.insert(e, v, d, sid)
            self.scope_exporter[sid] = e
            ids[j] = sid
        out[miss] = ids[inverse.ravel()]
        ok = out >= 0
        self.scope_exporter[out[ok]] = exp[ok]
        return out

    # --- templates ---------------------------------------------------------------------------

    PARSED_SETS = 256         # template sets remembered by their bytes (every scope together) ...
    PARSED_SET_BYTES = 4096   # ... of at most this size: a flood of large sets cannot grow memory

    def parse_set(self, body: bytes, version: int, set_id: int) -> SetParse:
        """parse_template_set, remembered by the set's bytes: exporters resend the same templates
        every few datagrams (and many exporters send the same ones), so an unchanged set is one
        dict lookup, not a parse. Its templates come back as the same objects, which define()
        recognises per scope. A pure function of the bytes: scopes stay apart in define()."""
        key = (version, set_id, body)
        got = self._parsed.get(key)
        if got is None:
            got = parse_template_set(body, version, set_id)
            if len(body) <= self.PARSED_SET_BYTES:
                if len(self._parsed) >= self.PARSED_SETS:
                    self._parsed.clear()
                self._parsed[key] = got
        return got

    def define(self, sid: int, t: Template, received: float) -> int:
        """Store a definition; returns its plan id, or -1 when it would pass a bound (not stored:
        templates_over_limit). A redefinition of a key the scope holds is taken unless it would
        pass template_fields or fill the plan table."""
        b = self.bounds
        if sid < 0:
            return -1
        key = (sid << 16) | t.template_id
        old = self.templates.get(key)
        if old is not None and old[2] is t:          # resent unchanged (parse_set): refresh only
            if received - old[1] > 60.0:
                self.dirty = True
            self._hold(key, old[0], received, t)
            return old[0]
        nf = len(t.fields)
        if old is None and (self.scope_templates[sid] >= b.max_templates_per_scope or len(self.templates) >= b.max_templates):
            return -1
        grow = nf - (len(old[2].fields) if old is not None else 0)
        if self._fields + grow > b.max_template_fields:
            return -1
        pl = self.plans
        if (t.options, t.fields) not in pl._ids and (pl.n >= 2 * b.max_templates or pl.nf_used + nf > 2 * b.max_template_fields):
            return -1                                  # plans of dropped layouts fill the table: until begin_batch
        pid = pl.plan(t)
        if old is None or old[0] != pid or received - old[1] > 60.0:
            self.dirty = True
        if old is None:
            self.scope_templates[sid] += 1
        self._fields += grow
        self._hold(key, pid, received, t)
        return pid

    def fits(self, templates: int, fields: int) -> bool:
        """Whether `templates` definitions of `fields` fields in all, every one new and of a new
        layout, would pass no bound (define_new's callers ask for a whole batch's at once)."""
        b, pl = self.bounds, self.plans
        return len(self.templates) + templates <= b.max_templates and self._fields + fields <= b.max_template_fields \
            and pl.n + templates <= 2 * b.max_templates and pl.nf_used + fields <= 2 * b.max_template_fields

    def fresh(self, sid: int, template_ids) -> bool:
        """Scope `sid` never held a definition of these ids (define_new may take them)."""
        slots = self._slots
        return all(((sid << 16) | i) not in slots for i in template_ids)

    def define_new(self, sids: list[int], t: Template, received: list[float]) -> int:
        """define() of `t` in each of the scopes `sids`, in one step: distinct scopes, each fresh()
        for it, with room for it under max_templates_per_scope, and fits() asked for all. A batch
        from thousands of new exporters sending the same template set defined them one by one
        (~10 us each in Python). Returns the plan id."""
        pid = self.plans.plan(t)
        keys = [(s << 16) | t.template_id for s in sids]
        self.templates.update(zip(keys, [(pid, r, t) for r in received]))
        self.scope_templates[np.array(sids, np.int64)] += 1
        self._fields += len(keys) * len(t.fields)
        self.dirty = True
        first = self._new_slots(keys)
        self.slot_plan[first:first + len(keys)] = pid
        self.slot_received[first:first + len(keys)] = received
        return pid

    def compaction_due(self) -> bool:
        """Compiled plans take more room than the bounds allow live definitions (begin_batch)."""
        return self.plans.n > self.bounds.max_templates or self.plans.nf_used > self.bounds.max_template_fields

    def begin_batch(self) -> None:
        """Between two batches: drop compiled plans no definition uses any more, once they take more
        room than the bounds allow live definitions (plan ids change: never call it mid-batch)."""
        if not self.compaction_due():
            return
        new = PlanTable()
        remap: dict[int, int] = {}
        for key, (pid, received, t) in list(self.templates.items()):
            if pid not in remap:
                remap[pid] = new.plan(t)
            self._hold(key, remap[pid], received, t)
        self.plans = new

    def _hold(self, key: int, pid: int, received: float, t: Template) -> None:
        """The one place a definition is stored: the dict and its mirror for the kernels."""
        self.templates[key] = (pid, received, t)
        slot = self._slots.get(key)
        if slot is None:
            slot = self._new_slots([key])
        self.slot_plan[slot] = pid
        self.slot_received[slot] = received

    def _new_slots(self, keys: list[int]) -> int:
        """Slots in the kernels' mirror for `keys` (none has one), numbered on from the last; returns
        the first."""
        m, first = len(keys), len(self._slots)
        self._slots.update(zip(keys, range(first, first + m)))
        self._slot_keys.extend(keys)
        self.slot_plan = grow(self.slot_plan, first + m, fill=-1)
        self.slot_received = grow(self.slot_received, first + m)
        self._slot_ids.insert_many(keys, [0] * m, [0] * m, range(first, first + m))
        return first

    def _forget(self, key: int) -> None:
        _, _, t = self.templates.pop(key)
        self.slot_plan[self._slots[key]] = -1
        self.scope_templates[key >> 16] -= 1
        self._fields -= len(t.fields)

    def _compact_slots(self) -> None:
        """Slots of forgotten keys are kept (a key usually comes back) until they outnumber the live
        ones: then the mirror is rebuilt from the dict, so memory follows the bounds."""
        if len(self._slots) <= 2 * len(self.templates) + 64:
            return
        held = self.templates
        self._slots, self._slot_ids, self._slot_keys = {}, KeyMap(), []
        self.slot_plan[:] = -1
        for key, (pid, received, t) in list(held.items()):
            self._hold(key, pid, received, t)
        self._forget_sets()                           # they name slots by number

    # Template sets as last taken, for onecall.ipfix_batch: a set resent byte for byte redefines
    # nothing, so the kernel can take its batch and refresh its templates' received times itself.
    # Keyed (scope, set id, length) in a KeyMap; each entry's bytes in set_bytes and its templates'
    # slots and plans in set_slots / set_pids (from set_first, set_count of them).

    KNOWN_SETS = 65536        # entries at most; past that (or bytes past twice the live ones) all are forgotten

    def _forget_sets(self) -> None:
        self._known: dict[tuple[int, int, int], int] = {}
        self._set_ids = KeyMap()
        self.set_off = np.zeros(16, np.int64)
        self.set_first = np.zeros(16, np.int64)
        self.set_count = np.zeros(16, np.int64)
        self.set_bytes = np.zeros(1024, np.uint8)
        self.set_slots = np.zeros(64, np.int64)
        self.set_pids = np.zeros(64, np.int32)
        self._set_bytes_used = self._set_slots_used = self._set_bytes_live = 0

    def remember_set(self, scope: int, set_id: int, body: bytes, keys: list[int]) -> None:
        """A template set taken whole (nothing rejected, withdrawn or over a bound): `keys`, the
        keys it defined in order, hold its templates now."""
        if len(body) > self.PARSED_SET_BYTES or len(set(keys)) < len(keys):   # an id twice: redefined in it
            return
        slots = [self._slots[k] for k in keys]
        pids = [self.templates[k][0] for k in keys]
        at = (scope, set_id, len(body))
        e = self._known.get(at)
        if e is not None:
            first, count, off = int(self.set_first[e]), int(self.set_count[e]), int(self.set_off[e])
            if self.set_bytes[off:off + len(body)].tobytes() == body and count == len(keys) \
                    and self.set_slots[first:first + count].tolist() == slots \
                    and self.set_pids[first:first + count].tolist() == pids:
                return                                # as remembered (the usual case)
        if len(self._known) >= self.KNOWN_SETS or self._set_bytes_used > 2 * self._set_bytes_live + (1 << 20):
            self._forget_sets()                       # (a set that changes keeps appending its bytes)
            e = None
        if e is None:
            e = self._new_entries([at])
        self._put_sets(e, 1, body, slots, pids)       # appended: an entry's old bytes are left behind

    def remember_new_sets(self, sids: list[int], set_id: int, body: bytes, template_ids: list[int]) -> None:
        """remember_set of one template set taken whole in each of the scopes `sids` (distinct;
        define_new defined its templates there), in one step, sharing one copy of its bytes."""
        m, c = len(sids), len(template_ids)
        at = [(s, set_id, len(body)) for s in sids]
        if len(body) > self.PARSED_SET_BYTES or len(set(template_ids)) < c:
            return
        if len(self._known) + m > self.KNOWN_SETS or any(a in self._known for a in at):
            for s in sids:                            # the one-by-one way (it forgets what it must)
                self.remember_set(s, set_id, body, [(s << 16) | i for i in template_ids])
            return
        keys = [(s << 16) | i for s in sids for i in template_ids]
        self._put_sets(self._new_entries(at), m, body, [self._slots[k] for k in keys],
                       [self.templates[k][0] for k in keys])

    def _new_entries(self, at: list[tuple[int, int, int]]) -> int:
        """Remembered-set entries for the (scope, set id, length) keys `at` (none has one), numbered
        on from the last; returns the first."""
        m, e = len(at), len(self._known)
        self._known.update(zip(at, range(e, e + m)))
        for name in ("set_off", "set_first", "set_count"):
            setattr(self, name, grow(getattr(self, name), e + m))
        self._set_ids.insert_many(*zip(*at), range(e, e + m))
        self._set_bytes_live += sum(size for *_, size in at)
        return e

    def _put_sets(self, e: int, m: int, body: bytes, slots: list[int], pids: list[int]) -> None:
        """Entries e .. e + m - 1 hold `body` (one copy, appended) and, in turn, an equal share of
        `slots` and `pids` (their templates' slots and plans, in set order)."""
        c = len(slots) // m
        off = self._set_bytes_used
        self.set_bytes = grow(self.set_bytes, off + len(body))
        self.set_bytes[off:off + len(body)] = np.frombuffer(body, np.uint8)
        self._set_bytes_used += len(body)
        first = self._set_slots_used
        self.set_slots = grow(self.set_slots, first + len(slots))
        self.set_pids = grow(self.set_pids, first + len(slots))
        self.set_slots[first:first + len(slots)] = slots
        self.set_pids[first:first + len(slots)] = pids
        self._set_slots_used += len(slots)
        self.set_off[e:e + m], self.set_first[e:e + m], self.set_count[e:e + m] = off, first + c * np.arange(m), c

    def refreshed(self, entries: np.ndarray, long_ago: bool) -> None:
        """After onecall.ipfix_batch took template sets (their `entries`) and refreshed slot_received:
        the same received times into the dict, as define() would have set them."""
        received = self.slot_received
        for e in set(entries.tolist()):
            first, count = int(self.set_first[e]), int(self.set_count[e])
            for slot in self.set_slots[first:first + count].tolist():
                key = self._slot_keys[slot]
                pid, _, t = self.templates[key]
                self._hold(key, pid, float(received[slot]), t)
        if long_ago:                                  # a refresh more than 60 s after the last: save it
            self.dirty = True

    def kernel_state(self) -> tuple:
        """What onecall.ipfix_batch reads and updates: the scopes' KeyMap (t0, t1, t2, val; keys
        (exporter, version, domain)), scope_exporter, the sequence state (seq_next, seq_seen,
        seq_lost, seq_count), the templates' KeyMap (keys (scope << 16 | template id, 0, 0)) with
        slot_plan and slot_received, the lifetime, the sampling rates (keys, rates), the pending
        buffer (no set of the batch reads it), and the template sets remembered (remember_set: their
        KeyMap, set_off, set_first, set_count, set_bytes, set_slots, set_pids). Current arrays: they
        are replaced when they grow."""
        return self._scope_ids.arrays() + (self.scope_exporter, self.seq_next, self.seq_seen, self.seq_lost,
                                           self.seq_count) + self._slot_ids.arrays() + (
            self.slot_plan, self.slot_received, self.lifetime, (self.samp_keys, self.samp_rates), self.pending.buf
        ) + self._set_ids.arrays() + (self.set_off, self.set_first, self.set_count, self.set_bytes, self.set_slots,
                                      self.set_pids)

    def lookup(self, key: int, now: float) -> int:
        """Plan id for a key, or -1 when unknown or expired."""
        return self.lookup_many((key,), now)[0]

    def lookup_many(self, keys, now: float) -> list[int]:
        """lookup of every key: one call for a batch's keys (with thousands of exporters a batch has
        a key per datagram, and a call per key cost more than the lookup)."""
        held, life = self.templates, self.lifetime
        return [-1 if e is None or now - e[1] > life else e[0] for e in map(held.get, keys)]

    def expire(self, now: float) -> int:
        """Forget templates older than their lifetime; returns how many. Found in the kernels'
        mirror (slot_received; slot_plan -1 where forgotten), one comparison over an array: every
        tick walked the dict, and with 5000 exporters that was ~1.7 ms of Python a second (perf)."""
        n = len(self._slot_keys)
        old = np.flatnonzero((self.slot_plan[:n] >= 0) & (now - self.slot_received[:n] > self.lifetime))
        if not len(old):
            return 0
        keys = self._slot_keys
        for slot in old.tolist():
            self._forget(keys[slot])
        self.dirty = True
        self._compact_slots()
        return len(old)

    # --- sampling ----------------------------------------------------------------------------

    def set_rates(self, scope: np.ndarray, sampler: np.ndarray, rate: np.ndarray) -> None:
        """Record sampling rates from options data (sampler -1: the scope's default); at most
        bounds.max_templates entries: a new (scope, sampler) past that is ignored."""
        if not len(scope):
            return
        keys = (scope.astype(np.int64) << 32) | (sampler.astype(np.int64) & _NO_SAMPLER)
        room = self.bounds.max_templates
        for k, r in zip(keys.tolist(), rate.tolist()):   # per options record, never per flow record
            if k in self._rates or len(self._rates) < room:
                self._rates[k] = r
        ks = np.array(sorted(self._rates), np.int64)
        self.samp_keys = ks
        self.samp_rates = np.array([self._rates[k] for k in ks.tolist()], np.float64)

    # --- persistence (the file side lives in templates_store.py) -----------------------------

    def export_state(self, templates: dict | None = None) -> list[dict]:
        """Every definition as plain data; `templates`: a copy of self.templates taken earlier (a writer
        thread exports from it while the loop goes on; scope_keys only grows, so it is read as is)."""
        held = self.templates if templates is None else templates
        # ints: sorting (key, value) pairs is ten times slower
        return [self.scope_entry(key >> 16) | template_entry(held[key][2]) | {"received": held[key][1]}
                for key in sorted(held)]

    def scope_entry(self, sid: int) -> dict:
        """The exporter scope part of an export_state entry (TemplateFile keeps its text between saves)."""
        address, port, version, domain = self.scope_keys[sid]
        return {"exporter": address, "port": port if self.scope_port else None, "version": version, "domain": domain}

    def import_state(self, entries: list[dict]) -> int:
        """Templates from export_state(); returns how many were taken (malformed ones are skipped)."""
        taken = 0
        for e in entries:
            try:
                port = e["port"]
                if self.scope_port and port is None:
                    continue
                fields = tuple((int(a), int(b), int(c)) for a, b, c in e["fields"])
                t = Template(int(e["template_id"]), fields, bool(e["options"]), int(e["scope_fields"]))
                if not fields or not 256 <= t.template_id <= 0xFFFF or record_lengths(fields)[1] <= 0 \
                        or not all(0 <= a <= 0xFFFF_FFFF and 0 <= b <= 0xFFFF and (c == VAR or 0 <= c < 0xFFFF)
                                   for a, b, c in fields):
                    continue
                sid = self.scope(str(e["exporter"]), int(port or 0), int(e["version"]), int(e["domain"]))
                taken += self.define(sid, t, float(e["received"])) >= 0
            except (KeyError, TypeError, ValueError):
                continue
        self.dirty = False
        return taken

