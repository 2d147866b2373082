"""Per-exporter state, the only state in the pipeline: identity, counters, sequence tracking.

An exporter is one (address, port) that sends us datagrams (for sFlow: one (address, port, agent
address, sub-agent id), registered by `agents`); it gets a small integer index the
kernels use to address per-exporter arrays. Lookups are vectorised per batch: Python work is per
distinct exporter in a batch, never per datagram. The clock is injected so tests never sleep.
At most `max_exporters` are ever registered (an index is never reused): datagrams from further
sources get index -1, are dropped by the caller and counted in `dropped["exporters_over_limit"]`.
With `allowed` networks (listen.allowed_exporters), datagrams from other sources get -1 before
any registration (one numba pass per batch), counted in `dropped["not_allowed"]`.
"""
from __future__ import annotations

import time
from typing import Callable

import numpy as np

from . import kernels
from .grow import grow
from .keymap import KeyMap
from .addr import from_hilo, network_hilo
from .wire.errors import REASONS
from .wire.sflow import TALLY, SflowState
from .wire.scopes import ScopeTable

__all__ = ["ExporterTable", "COUNTERS"]

# counter columns: datagrams, records, then one per decode error reason (REASONS[1:])
COUNTERS = ("datagrams", "records", *REASONS[1:], "alert_records", "suppressed",
            # NetFlow v9 / IPFIX per-scope state (wire/scopes.py: templates, sampling, sequences, pending)
            "templates", "templates_rejected", "withdrawals_ignored", "options_records",
            "template_misses", "sets_late", "template_expired_sets", "pending_dropped_sets", "template_redefinitions",
            # [limits]: template definitions refused (per scope, in all, fields in all)
            "templates_over_limit",
            # sFlow (wire/sflow.py): samples and flow records skipped by length, datagram sequence gaps
            "sflow_samples_skipped", "sflow_records_skipped", "sflow_datagrams_lost")
_C = {name: i for i, name in enumerate(COUNTERS)}
_REASON_COL = np.array([0] + [_C[r] for r in REASONS[1:]], dtype=np.int64)  # status code -> column


class ExporterTable:
    def __init__(self, clock: Callable[[], float] = time.time, capacity: int = 64,
                 templates: ScopeTable | None = None, max_exporters: int = 4096, allowed=(),
                 sflow: SflowState | None = None):
        self.clock = clock
        self.max_exporters = max_exporters
        nets = [network_hilo(str(a)) for a in allowed]
        self._allowed = tuple(np.array(col, np.uint64) for col in zip(*nets)) + \
            (np.array([a.version == 4 for a in allowed], np.bool_),) if nets else None
        # datagrams dropped before they had an exporter row: over max_exporters, not in
        # listen.allowed_exporters; `refused` is the last such source, for the rate-limited log
        self.dropped = {"exporters_over_limit": 0, "not_allowed": 0}
        self.refused: dict[str, tuple[int, int, int]] = {}
        self._index: dict[tuple, int] = {}    # (address hi, lo, port[, agent hi, lo, sub-agent]) -> row
        self._row_keys: list[tuple] = []       # the key of each row
        self._keymap = KeyMap()                # the source rows of _index, for a whole batch in one kernel call
        self._kernel_state: tuple | None = None
        self.address: list[str] = []
        self.port: list[int] = []
        self.counters = np.zeros((capacity, len(COUNTERS)), np.int64)
        self._columns: dict[tuple[str, ...], tuple] = {}   # columns(): views of the counters array they came from
        self.first_seen = np.zeros(capacity, np.float64)
        self.last_seen = np.zeros(capacity, np.float64)
        # NetFlow v5 sequence tracking (flow_sequence counts records)
        self.seq_next = np.zeros(capacity, np.uint32)
        self.seq_seen = np.zeros(capacity, np.bool_)
        self.seq_lost = np.zeros(capacity, np.int64)
        # NetFlow v9 / IPFIX: templates, sampling and sequence numbers per scope (address, port,
        # version, domain); the scope's exporter index links it back to this table
        self.templates = templates if templates is not None else ScopeTable()
        # sFlow: agent address and sub-agent id of each row (None for NetFlow / IPFIX rows), the
        # per source id sequence table and the HTTP strings the packet kernel looks for
        self.agent: list[str | None] = []
        self.sub_agent: list[int | None] = []
        self.sflow = sflow if sflow is not None else SflowState()
        # the sFlow rows of _index, keyed (agent hi, agent lo, source row << 32 | sub-agent id), so
        # the one-call kernel (onecall.py) finds a known agent's row without Python; rows are never
        # reused, so an entry never goes stale
        self._agent_keymap = KeyMap()

    def __len__(self) -> int:
        return len(self.address)

    def _add(self, key: tuple[int, int, int]) -> int:
        i = len(self.address)
        if i >= self.max_exporters:
            self.refused["exporters_over_limit"] = key[:3]
            return -1
        if i == len(self.first_seen):
            for name in ("counters", "first_seen", "last_seen", "seq_next", "seq_seen", "seq_lost"):
                setattr(self, name, grow(getattr(self, name), i + 1))
        self._index[key] = i
        self._row_keys.append(key)
        self.address.append(from_hilo(key[0], key[1]))
        self.port.append(key[2])
        self.agent.append(from_hilo(key[3], key[4]) if len(key) > 3 else None)
        self.sub_agent.append(key[5] if len(key) > 3 else None)
        self.first_seen[i] = self.clock()
        return i

    def lookup(self, src_hi: np.ndarray, src_lo: np.ndarray, sport: np.ndarray) -> np.ndarray:
        """Exporter index of every datagram (int32), registering new exporters; -1 for a source not
        allowed or past max_exporters."""
        return self.resolve(src_hi, src_lo, sport)[0]

    def resolve(self, src_hi: np.ndarray, src_lo: np.ndarray, sport: np.ndarray) -> tuple[np.ndarray, int]:
        """lookup, and how many datagrams it refused (-1): known without a pass over the result."""
        n = len(sport)
        if self._allowed is not None and n:
            ok = np.empty(n, np.bool_)
            kernels.match_nets(src_hi, src_lo, *self._allowed, ok)
            if not ok.all():
                bad = np.flatnonzero(~ok)
                self.dropped["not_allowed"] += len(bad)
                self.refused["not_allowed"] = (int(src_hi[bad[0]]), int(src_lo[bad[0]]), int(sport[bad[0]]))
                out = np.full(n, -1, np.int32)
                good = np.flatnonzero(ok)
                refused = len(bad)
                if len(good):
                    out[good], over = self._lookup(src_hi[good], src_lo[good], sport[good])
                    refused += over
                return out, refused
        return self._lookup(src_hi, src_lo, sport)

    def _lookup(self, src_hi: np.ndarray, src_lo: np.ndarray, sport: np.ndarray) -> tuple[np.ndarray, int]:
        n = len(sport)
        out = np.empty(n, np.int32)
        refused = 0
        if n and self._keymap.lookup(src_hi, src_lo, sport, out):   # one kernel call; Python per new source
            miss = np.flatnonzero(out == -2)
            keys = np.empty(len(miss), dtype=[("hi", "u8"), ("lo", "u8"), ("port", "u2")])
            keys["hi"], keys["lo"], keys["port"] = src_hi[miss], src_lo[miss], sport[miss]
            uniq, inverse = np.unique(keys, return_inverse=True)
            ids = np.empty(len(uniq), np.int32)
            for j, key in enumerate(uniq.tolist()):
                got = self._index.get(key)
                if got is None:
                    got = self._add(key)          # -1 past max_exporters: never stored, asked again
                    if got >= 0:
                        self._keymap.insert(*key, got)
                ids[j] = got
            out[miss] = ids[inverse.ravel()]
            refused = int((ids[inverse.ravel()] < 0).sum())
            if refused:
                self.dropped["exporters_over_limit"] += refused
        return out, refused

    def agents(self, exp_ids: np.ndarray, agent_hi: np.ndarray, agent_lo: np.ndarray, sub: np.ndarray) -> np.ndarray:
        """The sFlow row of each datagram: (its source row's address and port, agent, sub-agent id),
        registered when new; the source row itself where max_exporters is reached."""
        n = len(exp_ids)
        out = exp_ids.copy()
        if n == 0:
            return out
        if (exp_ids == exp_ids[0]).all() and (agent_hi == agent_hi[0]).all() and (agent_lo == agent_lo[0]).all() \
                and (sub == sub[0]).all():             # one agent behind one source: the usual batch
            out[:] = self.agent_row(int(exp_ids[0]), int(agent_hi[0]), int(agent_lo[0]), int(sub[0]))
            return out
        keys = np.empty(n, dtype=[("e", "i4"), ("hi", "u8"), ("lo", "u8"), ("sub", "u4")])
        keys["e"], keys["hi"], keys["lo"], keys["sub"] = exp_ids, agent_hi, agent_lo, sub
        uniq, inverse = np.unique(keys, return_inverse=True)
        ids = np.empty(len(uniq), np.int32)
        for j, (e, hi, lo, s) in enumerate(uniq.tolist()):
            ids[j] = self.agent_row(e, hi, lo, s)
        out[:] = ids[inverse.ravel()]
        return out

    def agent_row(self, exporter: int, agent_hi: int, agent_lo: int, sub: int) -> int:
        """The sFlow row of (source row `exporter`, agent, sub-agent id), registered when new; the
        source row itself where max_exporters is reached."""
        src = self._row_keys[exporter]
        key = (src[0], src[1], src[2], agent_hi, agent_lo, sub)
        i = self._index.get(key)
        if i is None:
            i = self._add(key)
            if i < 0:                  # past max_exporters: the datagram stays on its source's row
                return exporter
            self._agent_keymap.insert(agent_hi, agent_lo, (exporter << 32) | sub, i)
        return i

    def count(self, exp_ids: np.ndarray, status: np.ndarray, rec_exporter: np.ndarray | None, now: float) -> int:
        """Account one decoded batch: datagrams per exporter, errors per reason, and records per
        exporter from the rows' exporter column (None: wire.decode counted them already). Returns
        how many datagrams were rejected."""
        m = len(self.address)
        c = self.counters
        if rec_exporter is not None and len(rec_exporter):
            c[:m, _C["records"]] += np.bincount(rec_exporter, minlength=m)
        return kernels.count_batch(c, exp_ids, status, _REASON_COL, _C["datagrams"], self.last_seen, now)

    def kernel_state(self) -> tuple:
        """What the one-call kernels (onecall.py) read and update, as one tuple kept from batch to
        batch until the table or its KeyMap grows: the source rows' KeyMap (t0, t1, t2, val), the
        counters with each reason code's column and the datagrams, records, suppressed and
        alert_records columns, last_seen, the v5 and sFlow datagram sequence state, the columns
        the sFlow kernel counts into (wire.sflow.TALLY) and the sFlow rows' KeyMap (t0, t1, t2,
        val; keys as agent_row inserts them)."""
        s, keys, agents = self._kernel_state, self._keymap.arrays(), self._agent_keymap.arrays()
        if s is None or s[0] is not keys[0] or s[4] is not self.counters or s[15] is not agents[0]:
            s = self._kernel_state = keys + (
                self.counters, _REASON_COL, _C["datagrams"], _C["records"], _C["suppressed"], _C["alert_records"],
                self.last_seen, self.seq_next, self.seq_seen, self.seq_lost,
                np.array([_C[name] for name in TALLY], np.int64)) + agents
        return s

    def records_column(self) -> np.ndarray:
        """The per-exporter records counter, for wire.decode(records=...) (a view: valid until the
        table grows, i.e. for one batch after lookup)."""
        return self.counters[:, _C["records"]]

    def column(self, counter: str) -> np.ndarray:
        """A writable view of one counter for every exporter row (kernels add into it)."""
        return self.counters[:, _C[counter]]

    def columns(self, counters: tuple[str, ...]) -> tuple[np.ndarray, ...]:
        """column() of each counter, as one tuple kept from batch to batch until the table grows
        (the sFlow kernel's tally, every batch)."""
        kept = self._columns.get(counters)
        if kept is None or kept[0] is not self.counters:
            kept = (self.counters, tuple(self.counters[:, _C[c]] for c in counters))
            self._columns[counters] = kept
        return kept[1]

    def add_count(self, counter: str, exporter: int, k: int = 1) -> None:
        self.counters[exporter, _C[counter]] += k

    def add_counts(self, counter: str, exp_ids: np.ndarray, k: int = 1) -> None:
        """k counts per entry of exp_ids (an exporter index may repeat)."""
        if len(exp_ids):
            np.add.at(self.counters[:, _C[counter]], exp_ids, k)

    def total(self, counter: str) -> int:
        return int(self.counters[: len(self.address), _C[counter]].sum())

    def errors(self, exporter: int) -> dict[str, int]:
        row = self.counters[exporter]
        return {r: int(row[_C[r]]) for r in REASONS[1:] if row[_C[r]]}

    def sequence_lost(self) -> np.ndarray:
        """Records (v5, IPFIX) or datagrams (v9) missed upstream, per exporter, from sequence gaps."""
        m = len(self.address)
        t = self.templates
        k = len(t.scope_keys)
        lost = self.seq_lost[:m].copy()
        if k:
            lost += np.bincount(t.scope_exporter[:k], weights=t.seq_lost[:k], minlength=m)[:m].astype(np.int64)
        return lost

    def snapshot(self) -> list[dict]:
        """Every exporter with its counters, for logs and metrics."""
        out = []
        lost = self.sequence_lost()
        for i, (addr, port) in enumerate(zip(self.address, self.port)):
            row = {name: int(self.counters[i, j]) for j, name in enumerate(COUNTERS)}
            agent = {"agent": self.agent[i], "sub_agent": self.sub_agent[i]} if self.agent[i] is not None else {}
            out.append({"exporter": addr, "exporter_port": port, **agent, **row, "sequence_lost": int(lost[i])})
        return out
