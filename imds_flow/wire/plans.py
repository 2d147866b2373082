"""Templates compiled once into plans: arrays the kernels index by plan id.

A plan holds the record length when every field is fixed (else -1 and the minimum length), the
offset and length of every slot in fields.SLOTS for fixed layouts, and the length and slot of
every field for variable layouts, which records.locate walks. A fixed layout also gets a *program*
(nfdump's sequencer): one instruction per output column with every fallback decided here (which
byte counter, which time encoding, v6 or v4, whether ICMP type/code overrides the ports), and the
flag bits it sets on every record, so cut.py cuts its data sets column by column. Identical layouts
share one plan (plans are content-addressed), so a router re-sending its templates costs no memory.
"""
from __future__ import annotations

from collections import namedtuple

import numpy as np

from ..flows import NAT_DST, NAT_SRC, NO_COUNTERS
from .fields import ELEMENTS, SLOT, SLOTS, URL_SLOTS, accepts
from .templates import VAR, Template, record_lengths

__all__ = ["PlanTable", "PlanArrays", "compile_program", "NSLOT", "NPROG"]

NSLOT = len(SLOTS)

# The program of a fixed layout: row P_* of PlanTable.prog[plan] is (op, offset, length, offset2,
# length2) for one output column (or column pair); op 0 is always "absent: write the absent value".
(P_SRC, P_DST, P_NSRC, P_NDST, P_PROTO, P_SPORT, P_DPORT, P_ICMP, P_VSRC, P_VDST, P_VDOT1Q, P_VCUST,
 P_BYTES, P_PKTS, P_FIRST, P_LAST, P_IN_IF, P_OUT_IF, P_SAMPLING, P_URL) = range(20)
NPROG = 20
OP_NONE, OP_READ, OP_SUM = 0, 1, 2          # unsigned (offset, length); or the sum of two of them
A_V4, A_V6, A_V6_V4 = 1, 2, 3               # addresses: v4, v6, v6 falling back to v4 when all zero
T_NTP, T_MS, T_S, T_DELTA_US, T_UPTIME = 1, 2, 3, 4, 5   # times (T_UPTIME: offset2 sysInitTime or -1)
SAMP_INTERVAL, SAMP_SAMPLER = 1, 2          # sampling per record, or by sampler id (0: the scope's rate)

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

    The choices mirror the per-record decoder (records.emit) exactly; a test keeps them equal.
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



# What the kernels take of a PlanTable: one argument (v9ipfix.decode_sets), fields read by name.
PlanArrays = namedtuple("PlanArrays", "reclen minlen f0 nf options slot_off slot_len f_len f_slot prog prog_flags")


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

    def arrays(self) -> PlanArrays:
        """The table as the kernels take it (current arrays: they are replaced when the table grows)."""
        return PlanArrays(self.reclen, self.minlen, self.f0, self.nf, self.options, self.slot_off, self.slot_len,
                          self.f_len, self.f_slot, self.prog, self.prog_flags)

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

