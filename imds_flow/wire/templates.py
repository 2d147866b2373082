"""Templates: parsed once per template set, compiled once into a plan, kept per scope.

Rules: a template's scope is (exporter address, exporter port unless scope_port is off, version,
source id / observation domain), then its id. A definition replaces the previous one for the
same key; it lives `lifetime` seconds after it was last (re)sent. A v9 template with no fields is
rejected and counted; an IPFIX template record with field count 0 is a withdrawal, which RFC 7011
§8.4 forbids over UDP: ignored and counted. Identical layouts share one plan (plans are
content-addressed), so a router re-sending its templates every few seconds costs no memory.

A plan holds the record length when every field is fixed (else -1 and the minimum length), the
offset and length of every slot in fields.SLOTS for fixed layouts, and the length and slot of
every field for variable layouts, which the kernel walks. A fixed layout also gets a *program*
(nfdump's sequencer): one instruction per output column with every fallback decided here (which
byte counter, which time encoding, v6 or v4, whether ICMP type/code overrides the ports), and the
flag bits it sets on every record, so the kernel cuts its data sets column by column. Nothing here
does I/O; times come from datagram arrival times.
"""
from __future__ import annotations

import struct
from dataclasses import dataclass

import numpy as np

from ..flows import NAT_DST, NAT_SRC, NO_COUNTERS
from .fields import ELEMENTS, SLOT, SLOTS, URL_SLOTS, accepts

__all__ = ["Template", "PlanTable", "TemplateCache", "Bounds", "parse_template_set", "SetParse", "VAR"]

VAR = -1                      # field length 0xFFFF: variable length, 1- or 3-byte length prefix
NSLOT = len(SLOTS)
_U16 = struct.Struct(">HH")
_U16x3 = struct.Struct(">HHH")
_U32 = struct.Struct(">I")

# The program of a fixed layout: row P_* of PlanTable.prog[plan] is (op, offset, length, offset2,
# length2) for one output column (or column pair); op 0 is always "absent: write the absent value".
(P_SRC, P_DST, P_NSRC, P_NDST, P_PROTO, P_SPORT, P_DPORT, P_ICMP, P_VSRC, P_VDST, P_VDOT1Q, P_VCUST,
 P_BYTES, P_PKTS, P_FIRST, P_LAST, P_IN_IF, P_OUT_IF, P_SAMPLING, P_URL) = range(20)
NPROG = 20
OP_NONE, OP_READ, OP_SUM = 0, 1, 2          # unsigned (offset, length); or the sum of two of them
A_V4, A_V6, A_V6_V4 = 1, 2, 3               # addresses: v4, v6, v6 falling back to v4 when all zero
T_NTP, T_MS, T_S, T_DELTA_US, T_UPTIME = 1, 2, 3, 4, 5   # times (T_UPTIME: offset2 sysInitTime or -1)
SAMP_SCOPE, SAMP_INTERVAL, SAMP_SAMPLER = 0, 1, 2        # sampling: per set, per record, by sampler id

_ADDRS = ((P_SRC, "src6", "src4"), (P_DST, "dst6", "dst4"), (P_NSRC, "nsrc6", "nsrc4"), (P_NDST, "ndst6", "ndst4"))
_READS = ((P_PROTO, ("proto",)), (P_SPORT, ("sport", "sport_l4")), (P_DPORT, ("dport", "dport_l4")),
          (P_ICMP, ("icmp",)), (P_VSRC, ("vlan_src",)), (P_VDST, ("vlan_dst",)), (P_VDOT1Q, ("vlan_dot1q",)),
          (P_VCUST, ("vlan_cust",)), (P_IN_IF, ("in_if",)), (P_OUT_IF, ("out_if",)))
_COUNTERS = ((P_BYTES, ("bytes", "bytes_total"), "bytes_init", "bytes_resp"),
             (P_PKTS, ("packets", "packets_total"), "packets_init", "packets_resp"))
_TIMES = ((P_FIRST, "start"), (P_LAST, "end"))
_TIME_OPS = (("ns", T_NTP), ("us", T_NTP), ("ms", T_MS), ("s", T_S), ("delta_us", T_DELTA_US))
_UPTIME = {"start": "first_up", "end": "last_up"}


def compile_program(slots: dict[str, tuple[int, int]]) -> tuple[np.ndarray, int]:
    """The program (NPROG x 5) and constant flag bits of a fixed layout; `slots`: name -> (offset, length).

    The choices mirror the per-record decoder (v9ipfix._emit) exactly; a test keeps them equal.
    """
    prog = np.zeros((NPROG, 5), np.int32)
    prog[:, 3] = -1

    def put(row, op, a=None, b=None):
        prog[row, 0] = op
        if a is not None:
            prog[row, 1:3] = slots[a]
        if b is not None:
            prog[row, 3:5] = slots[b]

    def first(names):
        return next((name for name in names if name in slots), None)

    flags = 0
    for row, v6, v4 in _ADDRS:
        if v6 in slots and v4 in slots:
            put(row, A_V6_V4, v6, v4)
        elif v6 in slots:
            put(row, A_V6, v6)
        elif v4 in slots:
            put(row, A_V4, v4)
    flags |= NAT_SRC if prog[P_NSRC, 0] else 0
    flags |= NAT_DST if prog[P_NDST, 0] else 0
    for row, names in _READS:
        name = first(names)
        if name is not None:
            put(row, OP_READ, name)
    counted = False
    for row, names, init, resp in _COUNTERS:
        name = first(names)
        if name is not None:
            put(row, OP_READ, name)
        elif init in slots and resp in slots:
            put(row, OP_SUM, init, resp)
        elif first((init, resp)) is not None:
            put(row, OP_READ, first((init, resp)))
        counted |= bool(prog[row, 0])
    flags |= 0 if counted else NO_COUNTERS
    for row, side in _TIMES:
        for unit, op in _TIME_OPS:
            if f"{side}_{unit}" in slots:
                put(row, op, f"{side}_{unit}")
                break
        else:
            if _UPTIME[side] in slots:
                put(row, T_UPTIME, _UPTIME[side], "sys_init_ms" if "sys_init_ms" in slots else None)
    if "sampling_interval" in slots:
        put(P_SAMPLING, SAMP_INTERVAL, "sampling_interval")
    elif "sampler_id" in slots:
        put(P_SAMPLING, SAMP_SAMPLER, "sampler_id")
    if any(SLOTS[s] in slots for s in URL_SLOTS):
        put(P_URL, OP_READ)
    return prog, flags


@dataclass(frozen=True)
class Template:
    template_id: int
    fields: tuple[tuple[int, int, int], ...]   # (enterprise number, element id, length or VAR)
    options: bool = False
    scope_fields: int = 0                      # options templates: how many leading fields are scope


@dataclass
class SetParse:
    """What one template set held."""
    templates: list[Template]
    rejected: int = 0          # unparseable records, zero-field v9 templates, zero-length records
    withdrawals: int = 0       # IPFIX withdrawals, ignored over UDP


def _record_lengths(fields) -> tuple[int, int]:
    """(fixed record length or -1, minimum record length)."""
    fixed = all(ln != VAR for _, _, ln in fields)
    minimum = sum(1 if ln == VAR else ln for _, _, ln in fields)
    return (minimum if fixed else -1), minimum


def parse_template_set(body: bytes, version: int, set_id: int) -> SetParse:
    """Template and options-template records of one set body (after the 4-byte set header).

    Total: any bytes give templates plus counts, never an exception. Trailing bytes too short for
    a record header are padding; a record that overruns the set stops the set (counted rejected).
    """
    out = SetParse([])
    n = len(body)
    p = 0
    ipfix = version == 10
    options = set_id in (1, 3)
    while True:
        head = 6 if options else 4
        if n - p < head:
            break
        if options and not ipfix:
            tid, scope_len, opt_len = _U16x3.unpack_from(body, p)
            p += 6
            if tid < 256:                                  # padding (zeros) or garbage: stop
                out.rejected += any(body[p - 6:])
                break
            if scope_len % 4 or opt_len % 4 or scope_len + opt_len == 0 or p + scope_len + opt_len > n:
                out.rejected += 1
                break
            raw = [_U16.unpack_from(body, p + 4 * i) for i in range((scope_len + opt_len) // 4)]
            p += scope_len + opt_len
            nscope = scope_len // 4
            # v9 scope field types are scope kinds (1 System, 2 Interface...), not elements
            fields = tuple((0xFFFF_FFFF, t, VAR if ln == 0xFFFF else ln) for t, ln in raw[:nscope]) + \
                tuple((0, t, VAR if ln == 0xFFFF else ln) for t, ln in raw[nscope:])
            _add(out, Template(tid, fields, True, nscope))
            continue
        if ipfix and options:
            tid, count, nscope = _U16x3.unpack_from(body, p)
            p += 6
        else:
            tid, count = _U16.unpack_from(body, p)
            p += 4
            nscope = 0
        if ipfix and count == 0:
            if tid >= 256 or tid == set_id:                # a withdrawal (or "withdraw all")
                out.withdrawals += 1
                continue
            out.rejected += any(body[p - head:])            # zero padding ends the set quietly
            break
        if tid < 256:
            out.rejected += any(body[p - head:])
            break
        if count == 0:                                      # v9: a template without fields
            out.rejected += 1
            continue
        fields = []
        for _ in range(count):
            if n - p < 4:
                break
            fid, ln = _U16.unpack_from(body, p)
            p += 4
            pen = 0
            if ipfix and fid & 0x8000:
                if n - p < 4:
                    break
                pen = _U32.unpack_from(body, p)[0]
                p += 4
                fid &= 0x7FFF
            fields.append((pen, fid, VAR if ln == 0xFFFF else ln))
        if len(fields) < count:
            out.rejected += 1
            break
        _add(out, Template(tid, tuple(fields), options, nscope if ipfix else 0))
    return out


def _add(out: SetParse, t: Template) -> None:
    if _record_lengths(t.fields)[1] == 0:                  # a record of zero bytes: never looped on
        out.rejected += 1
    else:
        out.templates.append(t)


class PlanTable:
    """Compiled plans as arrays the kernels index by plan id; grows, never shrinks."""

    def __init__(self, capacity: int = 64, field_capacity: int = 2048):
        self.n = 0
        self.nf_used = 0
        self.reclen = np.zeros(capacity, np.int32)
        self.minlen = np.zeros(capacity, np.int32)
        self.f0 = np.zeros(capacity, np.int32)
        self.nf = np.zeros(capacity, np.int32)
        self.options = np.zeros(capacity, np.bool_)
        self.slot_off = np.full((capacity, NSLOT), -1, np.int32)
        self.slot_len = np.zeros((capacity, NSLOT), np.int32)
        self.f_len = np.zeros(field_capacity, np.int32)
        self.f_slot = np.full(field_capacity, -1, np.int16)
        self.prog = np.zeros((capacity, NPROG, 5), np.int32)     # fixed layouts only
        self.prog_flags = np.zeros(capacity, np.uint8)
        self._ids: dict[tuple, int] = {}

    def plan(self, t: Template) -> int:
        """The plan id of a template's layout, compiling it the first time it is seen."""
        key = (t.options, t.fields)
        pid = self._ids.get(key)
        if pid is None:
            pid = self._ids[key] = self._compile(t)
        return pid

    def _compile(self, t: Template) -> int:
        pid = self.n
        if pid == len(self.reclen):
            self._grow_plans(2 * pid)
        nf = len(t.fields)
        while self.nf_used + nf > len(self.f_len):
            self._grow_fields(2 * len(self.f_len))
        reclen, minlen = _record_lengths(t.fields)
        f0 = self.nf_used
        off = 0
        seen = {}
        for i, (pen, fid, ln) in enumerate(t.fields):
            name = ELEMENTS.get((pen, fid))
            slot = -1
            if name is not None and name not in seen and accepts(name, ln):
                seen[name] = (off, ln)                      # duplicates: the first one wins
                slot = SLOT[name]
                if reclen >= 0:
                    self.slot_off[pid, slot] = off
                    self.slot_len[pid, slot] = ln
            self.f_len[f0 + i] = ln
            self.f_slot[f0 + i] = slot
            off += 0 if ln == VAR else ln
        if reclen >= 0:
            self.prog[pid], self.prog_flags[pid] = compile_program(seen)
        self.reclen[pid] = reclen
        self.minlen[pid] = minlen
        self.f0[pid] = f0
        self.nf[pid] = nf
        self.options[pid] = t.options
        self.nf_used += nf
        self.n += 1
        return pid

    def _grow_plans(self, cap: int) -> None:
        for name in ("reclen", "minlen", "f0", "nf", "options", "slot_off", "slot_len", "prog", "prog_flags"):
            old = getattr(self, name)
            new = np.full((cap,) + old.shape[1:], -1 if name == "slot_off" else 0, old.dtype)
            new[: len(old)] = old
            setattr(self, name, new)

    def _grow_fields(self, cap: int) -> None:
        for name, fill in (("f_len", 0), ("f_slot", -1)):
            old = getattr(self, name)
            new = np.full(cap, fill, old.dtype)
            new[: len(old)] = old
            setattr(self, name, new)


_NO_SAMPLER = 0xFFFF_FFFF


@dataclass(frozen=True)
class Bounds:
    """What the cache may hold (config [limits]); whatever would pass a bound is refused and counted
    by the caller, never evicting what an exporter already has: a flood cannot push out real templates.
    Compiled plans may also hold up to as many again of layouts no longer used, until the next batch
    compacts them."""
    scopes_per_exporter: int = 32         # (version, source id / observation domain) per exporter
    templates_per_scope: int = 1024       # template definitions per scope
    templates: int = 65536                # template definitions in all (also: sampling-rate entries)
    template_fields: int = 1 << 21        # fields of all template definitions together
    pending_bytes_per_exporter: int = 1 << 20   # data sets waiting for their template, per exporter
    pending_bytes: int = 16 << 20         # ... and in all
    batch_records: int = 1 << 62          # records decoded at once (waiting data is released within it)


class TemplateCache:
    """Scopes, their templates, sampling rates, sequence numbers and the data waiting for templates.

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
        from ..keymap import KeyMap
        self._scope_ids = KeyMap()                    # the same, for a batch in one kernel call
        self.templates: dict[int, tuple[int, float, Template]] = {}  # key -> (plan, received, template)
        self.dirty = False
        self.last_sets = None                         # (datagram, offset, records, options) of the last batch
        cap = 16
        self.scope_exporter = np.zeros(cap, np.int32)
        self.seq_next = np.zeros(cap, np.uint32)
        self.seq_seen = np.zeros(cap, np.bool_)
        self.seq_lost = np.zeros(cap, np.int64)
        self.seq_count = np.zeros(cap, np.int64)    # records of the last message (IPFIX)
        self.scope_templates = np.zeros(cap, np.int32)   # template definitions held per scope
        self._exporter_scopes: dict[int, int] = {}   # exporter index -> scopes it has (bounds.scopes_per_exporter)
        self._fields = 0                              # fields of every definition held (bounds.template_fields)
        self._rates: dict[int, float] = {}
        self.samp_keys = np.zeros(0, np.int64)
        self.samp_rates = np.zeros(0, np.float64)
        self.set_url_patterns(url_patterns)
        self._parsed: dict[tuple[int, int, bytes], SetParse] = {}   # see parse_set
        from .pending import Pending                  # the buffer of data sets waiting for templates
        self.pending = Pending(bounds.pending_bytes_per_exporter, bounds.pending_bytes)

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
            if sid == len(self.seq_next):
                for name in ("scope_exporter", "seq_next", "seq_seen", "seq_lost", "seq_count", "scope_templates"):
                    old = getattr(self, name)
                    new = np.zeros(2 * sid, old.dtype)
                    new[:sid] = old
                    setattr(self, name, new)
        return sid

    def scopes_for(self, exp: np.ndarray, version: np.ndarray, domain: np.ndarray, exporters) -> np.ndarray:
        """Scope id of every datagram; one kernel call, Python work per new (exporter, version, domain).

        -1 for a datagram that would open a scope past bounds.scopes_per_exporter (the caller
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
                if have >= self.bounds.scopes_per_exporter:
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
            self.templates[key] = (old[0], received, t)
            return old[0]
        nf = len(t.fields)
        if old is None and (self.scope_templates[sid] >= b.templates_per_scope or len(self.templates) >= b.templates):
            return -1
        grow = nf - (len(old[2].fields) if old is not None else 0)
        if self._fields + grow > b.template_fields:
            return -1
        pl = self.plans
        if (t.options, t.fields) not in pl._ids and (pl.n >= 2 * b.templates or pl.nf_used + nf > 2 * b.template_fields):
            return -1                                  # plans of dropped layouts fill the table: until begin_batch
        pid = pl.plan(t)
        if old is None or old[0] != pid or received - old[1] > 60.0:
            self.dirty = True
        if old is None:
            self.scope_templates[sid] += 1
        self._fields += grow
        self.templates[key] = (pid, received, t)
        return pid

    def begin_batch(self) -> None:
        """Between two batches: drop compiled plans no definition uses any more, once they take more
        room than the bounds allow live definitions (plan ids change: never call it mid-batch)."""
        b = self.bounds
        if self.plans.n <= b.templates and self.plans.nf_used <= b.template_fields:
            return
        new = PlanTable()
        remap: dict[int, int] = {}
        for key, (pid, received, t) in self.templates.items():
            if pid not in remap:
                remap[pid] = new.plan(t)
            self.templates[key] = (remap[pid], received, t)
        self.plans = new

    def _forget(self, key: int) -> None:
        _, _, t = self.templates.pop(key)
        self.scope_templates[key >> 16] -= 1
        self._fields -= len(t.fields)

    def lookup(self, key: int, now: float) -> int:
        """Plan id for a key, or -1 when unknown or expired."""
        entry = self.templates.get(key)
        if entry is None or now - entry[1] > self.lifetime:
            return -1
        return entry[0]

    def expire(self, now: float) -> int:
        """Forget templates older than their lifetime; returns how many."""
        old = [k for k, (_, received, _) in self.templates.items() if now - received > self.lifetime]
        for k in old:
            self._forget(k)
        if old:
            self.dirty = True
        return len(old)

    # --- sampling ----------------------------------------------------------------------------

    def set_rates(self, scope: np.ndarray, sampler: np.ndarray, rate: np.ndarray) -> None:
        """Record sampling rates from options data (sampler -1: the scope's default); at most
        bounds.templates entries: a new (scope, sampler) past that is ignored."""
        if not len(scope):
            return
        keys = (scope.astype(np.int64) << 32) | (sampler.astype(np.int64) & _NO_SAMPLER)
        room = self.bounds.templates
        for k, r in zip(keys.tolist(), rate.tolist()):   # per options record, never per flow record
            if k in self._rates or len(self._rates) < room:
                self._rates[k] = r
        ks = np.array(sorted(self._rates), np.int64)
        self.samp_keys = ks
        self.samp_rates = np.array([self._rates[k] for k in ks.tolist()], np.float64)

    def rate(self, sid: int, sampler: int = -1) -> float:
        return self._rates.get((sid << 32) | (sampler & _NO_SAMPLER), 0.0)

    # --- persistence (the file side lives in templates_store.py) -----------------------------

    def export_state(self, templates: dict | None = None) -> list[dict]:
        """Every definition as plain data; `templates`: a copy of self.templates taken earlier (a writer
        thread exports from it while the loop goes on; scope_keys only grows, so it is read as is)."""
        out = []
        held = self.templates if templates is None else templates
        for key in sorted(held):                       # ints: sorting (key, value) pairs is ten times slower
            _, received, t = held[key]
            address, port, version, domain = self.scope_keys[key >> 16]
            out.append({"exporter": address, "port": port if self.scope_port else None, "version": version,
                        "domain": domain, "template_id": t.template_id, "options": t.options,
                        "scope_fields": t.scope_fields, "fields": [list(f) for f in t.fields],
                        "received": received})
        return out

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
                if not fields or not 256 <= t.template_id <= 0xFFFF or _record_lengths(fields)[1] <= 0 \
                        or not all(0 <= a <= 0xFFFF_FFFF and 0 <= b <= 0xFFFF and (c == VAR or 0 <= c < 0xFFFF)
                                   for a, b, c in fields):
                    continue
                sid = self.scope(str(e["exporter"]), int(port or 0), int(e["version"]), int(e["domain"]))
                taken += self.define(sid, t, float(e["received"])) >= 0
            except (KeyError, TypeError, ValueError):
                continue
        self.dirty = False
        return taken
