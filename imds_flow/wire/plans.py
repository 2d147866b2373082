"""Templates compiled once into plans: arrays the kernels index by plan id.

A plan holds the record length when every field is fixed (else -1 and the minimum length), the
offset and length of every slot in fields.SLOTS for fixed layouts (nfdump's sequencer: where each
field we need is, decided once), the length and slot of every field for variable layouts,
which records.locate walks per record, and whether a record can alert by its content (a URL,
HTTP method or packet section field) or only by its addresses. Identical layouts share one plan (plans are
content-addressed), so a router re-sending its templates costs no memory.
"""
from __future__ import annotations

from collections import namedtuple

import numpy as np

from ..grow import grow

from .fields import ELEMENTS, NSLOT, SLOT, SLOT_KIND, accepts
from .templates import VAR, Template, record_lengths

__all__ = ["PlanTable", "PlanArrays"]


# What the kernels take of a PlanTable: one argument (v9ipfix.decode_sets), fields read by name.
PlanArrays = namedtuple("PlanArrays", "reclen minlen f0 nf options content slot_off slot_len f_len f_slot")


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
        self.content = np.zeros(capacity, np.bool_)   # a URL / HTTP method / packet section slot
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
            for name in ("reclen", "minlen", "f0", "nf", "options", "content", "slot_off", "slot_len"):
                setattr(self, name, grow(getattr(self, name), pid + 1, fill=-1 if name == "slot_off" else 0))
        nf = len(t.fields)
        self.f_len = grow(self.f_len, self.nf_used + nf)
        self.f_slot = grow(self.f_slot, self.nf_used + nf, fill=-1)
        reclen, minlen = record_lengths(t.fields)
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
        self.reclen[pid] = reclen
        self.minlen[pid] = minlen
        self.f0[pid] = f0
        self.nf[pid] = nf
        self.options[pid] = t.options
        # the host is shown with a method, never searched: it alone cannot make a record alert
        self.content[pid] = any(SLOT_KIND[name] == "s" and name != "http_host" for name in seen)
        self.nf_used += nf
        self.n += 1
        return pid

    def arrays(self) -> PlanArrays:
        """The table as the kernels take it (current arrays: they are replaced when the table grows)."""
        return PlanArrays(self.reclen, self.minlen, self.f0, self.nf, self.options, self.content, self.slot_off,
                          self.slot_len, self.f_len, self.f_slot)

