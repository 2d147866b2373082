"""Templates: parsed once per template set, compiled once into a plan, kept per scope.

Rules: a template's scope is (exporter address, exporter port unless scope_port is off, version,
source id / observation domain), then its id. A definition replaces the previous one for the
same key; it lives `lifetime` seconds after it was last (re)sent. A v9 template with no fields is
rejected and counted; an IPFIX template record with field count 0 is a withdrawal, which RFC 7011
§8.4 forbids over UDP: ignored and counted. Identical layouts share one plan (plans are
content-addressed), so a router re-sending its templates every few seconds costs no memory.

A plan holds the record length when every field is fixed (else -1 and the minimum length), the
offset and length of every slot in fields.SLOTS for fixed layouts, and the length and slot of
every field for variable layouts, which the kernel walks. Nothing here does I/O; times come from
datagram arrival times.
"""
from __future__ import annotations

import struct
from dataclasses import dataclass

import numpy as np

from .fields import ELEMENTS, SLOT, SLOTS, accepts

__all__ = ["Template", "PlanTable", "TemplateCache", "parse_template_set", "SetParse", "VAR"]

VAR = -1                      # field length 0xFFFF: variable length, 1- or 3-byte length prefix
NSLOT = len(SLOTS)
_U16 = struct.Struct(">HH")
_U16x3 = struct.Struct(">HHH")
_U32 = struct.Struct(">I")


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
        seen = set()
        for i, (pen, fid, ln) in enumerate(t.fields):
            name = ELEMENTS.get((pen, fid))
            slot = -1
            if name is not None and name not in seen and accepts(name, ln):
                seen.add(name)                              # duplicates: the first one wins
                slot = SLOT[name]
                if reclen >= 0:
                    self.slot_off[pid, slot] = off
                    self.slot_len[pid, slot] = ln
            self.f_len[f0 + i] = ln
            self.f_slot[f0 + i] = slot
            off += 0 if ln == VAR else ln
        self.reclen[pid] = reclen
        self.minlen[pid] = minlen
        self.f0[pid] = f0
        self.nf[pid] = nf
        self.options[pid] = t.options
        self.nf_used += nf
        self.n += 1
        return pid

    def _grow_plans(self, cap: int) -> None:
        for name in ("reclen", "minlen", "f0", "nf", "options", "slot_off", "slot_len"):
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


class TemplateCache:
    """Scopes, their templates, sampling rates, sequence numbers and the data waiting for templates.

    Keys the kernels see are integers: scope ids, and scope << 16 | template id.
    """

    def __init__(self, scope_port: bool = True, lifetime: float = 1800.0, pending_max_sets: int = 256,
                 pending_max_seconds: float = 60.0, url_patterns: tuple[str, ...] = ()):
        self.scope_port = scope_port
        self.lifetime = lifetime
        self.pending_max_sets = pending_max_sets
        self.pending_max_seconds = pending_max_seconds
        self.plans = PlanTable()
        self._scopes: dict[tuple, int] = {}           # (address, port or 0, version, domain) -> scope id
        self.scope_keys: list[tuple] = []
        self._by_exporter: dict[tuple[int, int, int], int] = {}   # (exporter index, version, domain)
        self.templates: dict[int, tuple[int, float, Template]] = {}  # key -> (plan, received, template)
        self.dirty = False
        self.last_sets = None                         # (datagram, offset, records, options) of the last batch
        cap = 16
        self.scope_exporter = np.zeros(cap, np.int32)
        self.seq_next = np.zeros(cap, np.uint32)
        self.seq_seen = np.zeros(cap, np.bool_)
        self.seq_lost = np.zeros(cap, np.int64)
        self.seq_count = np.zeros(cap, np.int64)    # records of the last message (IPFIX)
        self._rates: dict[int, float] = {}
        self.samp_keys = np.zeros(0, np.int64)
        self.samp_rates = np.zeros(0, np.float64)
        pats = [p.lower().encode() for p in url_patterns if p]
        self.pat_off = np.zeros(len(pats) + 1, np.int64)
        self.pat_off[1:] = np.cumsum([len(p) for p in pats]) if pats else []
        self.pat_buf = np.frombuffer(b"".join(pats) or b"\0", np.uint8).copy()
        from .pending import Pending                  # the buffer of data sets waiting for templates
        self.pending = Pending()

    # --- scopes ------------------------------------------------------------------------------

    def scope(self, address: str, port: int, version: int, domain: int) -> int:
        key = (address, port if self.scope_port else 0, version, domain)
        sid = self._scopes.get(key)
        if sid is None:
            sid = self._scopes[key] = len(self.scope_keys)
            self.scope_keys.append(key)
            if sid == len(self.seq_next):
                for name in ("scope_exporter", "seq_next", "seq_seen", "seq_lost", "seq_count"):
                    old = getattr(self, name)
                    new = np.zeros(2 * sid, old.dtype)
                    new[:sid] = old
                    setattr(self, name, new)
        return sid

    def scopes_for(self, exp: np.ndarray, version: np.ndarray, domain: np.ndarray, exporters) -> np.ndarray:
        """Scope id of every datagram; Python work per distinct (exporter, version, domain)."""
        keys = (exp.astype(np.int64) << 40) | (version.astype(np.int64) << 32) | domain.astype(np.int64)
        uniq, inverse = np.unique(keys, return_inverse=True)
        ids = np.empty(len(uniq), np.int64)
        for j, k in enumerate(uniq.tolist()):
            e, v, d = k >> 40, (k >> 32) & 0xFF, k & 0xFFFF_FFFF
            sid = self._by_exporter.get((e, v, d))
            if sid is None:
                sid = self._by_exporter[(e, v, d)] = self.scope(exporters.address[e], exporters.port[e], v, d)
            self.scope_exporter[sid] = e
            ids[j] = sid
        return ids[inverse.ravel()]

    # --- templates ---------------------------------------------------------------------------

    def define(self, sid: int, t: Template, received: float) -> int:
        """Store a definition; returns its plan id."""
        pid = self.plans.plan(t)
        key = (sid << 16) | t.template_id
        old = self.templates.get(key)
        if old is None or old[0] != pid or received - old[1] > 60.0:
            self.dirty = True
        self.templates[key] = (pid, received, t)
        return pid

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
            del self.templates[k]
        if old:
            self.dirty = True
        return len(old)

    # --- sampling ----------------------------------------------------------------------------

    def set_rates(self, scope: np.ndarray, sampler: np.ndarray, rate: np.ndarray) -> None:
        """Record sampling rates from options data (sampler -1: the scope's default)."""
        if not len(scope):
            return
        keys = (scope.astype(np.int64) << 32) | (sampler.astype(np.int64) & _NO_SAMPLER)
        for k, r in zip(keys.tolist(), rate.tolist()):   # per options record, never per flow record
            self._rates[k] = r
        ks = np.array(sorted(self._rates), np.int64)
        self.samp_keys = ks
        self.samp_rates = np.array([self._rates[k] for k in ks.tolist()], np.float64)

    def rate(self, sid: int, sampler: int = -1) -> float:
        return self._rates.get((sid << 32) | (sampler & _NO_SAMPLER), 0.0)

    # --- persistence (the file side lives in templates_store.py) -----------------------------

    def export_state(self) -> list[dict]:
        out = []
        for key, (_, received, t) in sorted(self.templates.items()):
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
                if not fields or not 256 <= t.template_id <= 0xFFFF or _record_lengths(fields)[1] <= 0:
                    continue
                sid = self.scope(str(e["exporter"]), int(port or 0), int(e["version"]), int(e["domain"]))
                self.define(sid, t, float(e["received"]))
                taken += 1
            except (KeyError, TypeError, ValueError):
                continue
        self.dirty = False
        return taken
