"""Alerts: one map per alert, folded per key within a window, encoded as msgpack.

Rules: records with the same (exporter, src, dst, proto, endpoint-side port) inside
`window` seconds fold into one alert. The first is emitted at once with count 1; the others
accumulate and leave as one alert (count = records folded) when the window closes, on tick()
or close(). Nothing is dropped: the sum of `count` equals the matching records seen.
Windows run on record arrival time, so a replay folds exactly like the live run did.
"""
from __future__ import annotations

import functools
import math
from typing import Callable

import msgpack
import numpy as np

from . import kernels
from .addr import from_hilo
from .alertpack import Run
from .detect import DIRECTIONS, REQUEST, Hits
from .flows import HTTP, LATE, ROW, SFLOW, FlowBatch
from .grow import grow
from .wire.packet import METHODS

__all__ = ["Folder", "ALERT_FIELDS", "hit_alerts", "Encoder"]

ALERT_FIELDS = ("ts", "exporter", "exporter_port", "version", "src", "dst", "sport", "dport", "proto",
                "vlan", "endpoint", "direction", "bytes", "packets", "first_seen", "last_seen", "count",
                "sampling_rate", "bytes_estimate", "packets_estimate",
                "format", "signal", "http_method", "http_host", "url", "headers")
# present only when the exporter reported them (SNMP / ifIndex of the input and output interfaces)
OPTIONAL_ALERT_FIELDS = ("in_if", "out_if")


# an alert's addresses as text: the same few instances and endpoints come back alert after alert
_address = functools.lru_cache(maxsize=1 << 16)(from_hilo)


def _time(v: float) -> float | None:
    return None if math.isnan(v) else v


def _vlans(batch: FlowBatch, idx: np.ndarray) -> list[int | None]:
    """The VLAN each record idx carries (kernels.vlan_code; the one rule folding uses too) as
    alert values: None for none."""
    out = np.empty(len(idx), np.int64)
    kernels.vlan_codes(batch.rows, np.ascontiguousarray(idx, np.int64), out)
    return [None if x < 0 else x for x in out.tolist()]


_U64_MAX = int(kernels.U64_MAX)


def saturate(value: int) -> int:
    """An alert's bytes, packets or estimate, at most 2**64 - 1: a counter scaled by a sampling rate,
    or folded, can pass 64 bits (a bogus or hostile record), and msgpack holds no more. The kernels
    saturate the same way (kernels.sat_add, sat_mul)."""
    return value if value <= _U64_MAX else _U64_MAX


def hit_alerts(batch: FlowBatch, hits: Hits, names: tuple[str, ...], exporters) -> list[tuple[tuple, dict]]:
    """(fold key, alert with count 1) for every hit; Python work only for hits."""
    m = len(hits)
    if not m:
        return []
    ints, floats = np.empty((m, len(kernels.HIT_INTS)), np.uint64), np.empty((m, len(kernels.HIT_FLOATS)), np.float64)
    kernels.hit_fields(batch.rows, np.ascontiguousarray(hits.idx, np.int64), ints, floats)
    signals = hits.signals + ("address",) * max(0, len(names) - len(hits.signals))
    address, port = exporters.address, exporters.port
    out = []
    for (e, version, src_hi, src_lo, dst_hi, dst_lo, sport, dport, proto, b, p, sampling, flags, method, url_off,
         url_len, h, host_off, host_len, in_if, out_if, vlan), (ts, first, last), ep, direction in zip(
            ints.tolist(), floats.tolist(), hits.endpoint.tolist(), hits.direction.tolist()):
        src, dst = (src_hi, src_lo), (dst_hi, dst_lo)
        sampling = sampling or 1
        alert = {
            "ts": ts, "exporter": address[e], "exporter_port": port[e],
            "version": version, "src": _address(src_hi, src_lo), "dst": _address(dst_hi, dst_lo),
            "sport": sport, "dport": dport, "proto": proto, "vlan": vlan - 1 if vlan else None,
            "endpoint": names[ep], "direction": DIRECTIONS[direction],
            "bytes": b, "packets": p, "first_seen": _time(first), "last_seen": _time(last),
            "count": 1, "sampling_rate": sampling,
            # bytes / packets as the exporter reported them; estimates scaled by its sampling rate
            "bytes_estimate": saturate(b * sampling), "packets_estimate": saturate(p * sampling),
        }
        if in_if:                             # interface index 0: the exporter did not say
            alert["in_if"] = in_if
        if out_if:
            alert["out_if"] = out_if
        alert["format"] = "sflow" if flags & SFLOW else ("ipfix" if version == 10 else "netflow")
        alert["signal"] = signals[ep]
        alert["http_method"] = alert["http_host"] = alert["url"] = None
        alert["headers"] = []
        if flags & HTTP:
            # the request-target as sampled and the NAMES of configured header fields, nothing else:
            # header values and payload bytes are secrets (tokens, credentials) and never leave. The
            # host is a flow record's own element (IPFIX 460, nProbe HTTP_HOST): the decoders never
            # fill it from a sampled packet's Host header
            alert["http_method"] = METHODS[method]
            text = batch.late_buf if flags & LATE else batch.buf
            alert["url"] = _text(text, url_off, url_len)
            alert["http_host"] = _text(text, host_off, host_len)
            alert["headers"] = [name for k, name in enumerate(hits.header_names) if h >> k & 1]
        out.append(((e, src, dst, proto, dport if direction == REQUEST else sport, ep, direction), alert))
    return out


def _text(buf: np.ndarray, off: int, length: int) -> str | None:
    """The string a row's HTTP columns point at (ASCII; any other byte escaped), None when empty."""
    return buf[off: off + length].tobytes().decode("ascii", "backslashreplace") if length else None


# The folded numbers of every pending alert, one row each in Folder's arrays (_count; _sums: bytes,
# packets and their estimates; _times: first / last seen, NaN none, and ts; _tail: sport, dport and
# VLAN code, -1 none, of the latest record), and every fold key's window in _FoldKeys' arrays (its
# start, whether it is open, its pending alert's row): a batch's groups are looked up, merged into
# pending alerts and their windows opened in one kernel call (kernels.fold_groups), and Python runs
# only for an alert that leaves or is held. No Python object per fold key: an alert flood's hundreds
# of thousands of keys are array rows, which neither cost a dict and a list each nor lengthen the
# garbage collector's passes. The alert dict of a pending alert Python held holds the rest and gets
# these numbers when it leaves (Folder._release); one the fold kernel made (a key's second record in
# its window, kernels._hold) has no dict: its first record's row is copied in _held, and it leaves
# packed from that row and these numbers with the others leaving at once (Packer.pack_folded), a dict
# made only where no packer is set. An alert flood's pending alerts cost no dict and no Python call
# per alert, made or leaving (in process, a window of 2371 leaving: 6.7 -> 3.0 us an alert).
_SUMS = ("bytes", "packets", "bytes_estimate", "packets_estimate")
_KEY_SLACK = 4096                      # ids of closed windows kept before _FoldKeys.rebuild
_SPARE = 64                            # rows set aside for the kernel's pending alerts at first,
_SPARE_MAX = 1 << 16                   # and at most (doubled each time a call took them all)
_RUN = 2048                            # pending alerts packed at a time when they leave (~0.7 MB)


class _Held:
    """The rows kernels._hold copied, as hit_alerts reads a FlowBatch (never with HTTP columns)."""

    def __init__(self, rows: np.ndarray):
        self.rows = rows
        self.buf = self.late_buf = np.zeros(0, np.uint8)


def _words(key) -> np.ndarray | None:
    """A fold key tuple (hit_alerts) as the six words kernels.fold_words makes of its row; None for
    a key of another shape (Folder.add takes any key, and only hit_alerts' meet a batch's groups)."""
    try:
        e, (sh, sl), (dh, dl), proto, side, ep, direction = key
    except (TypeError, ValueError):
        return None
    return np.array([e << 32 | ep, proto << 17 | side << 1 | direction, sh, sl, dh, dl], np.uint64)


class _FoldKeys:
    """Fold keys -> ids, and per id the key's window: its start, whether it is open and its pending
    alert's row (-1: none). hit_alerts' keys are six words, a row per id in `words`, found through
    an open-addressing table of ids (`table`: the one kernels.fold_groups reads and adds to); any
    other key in `others`. Ids of closed windows are dropped by rebuild().

    Why words by id and a table of ids: an alert flood (thousands of new keys a second) grows the
    table again and again. With the words in its slots each growth re-inserted every key into 56
    bytes a slot of new memory (kernels.fold_compact: 53 ms in all, 12 growths, in a 10 s bench of
    5000 exporters at 1 % matching, ~98 000 keys); now the words grow in order with the other
    per-id arrays and only the 8-byte slots are filled afresh (kernels.fold_index: 3 ms), so a
    key takes 48 bytes plus 2-4 slots instead of 2-4 slots of 56."""

    def __init__(self):
        self.n = 0                                # ids handed out
        self.others: dict = {}                    # keys of another shape -> id
        self.words = np.zeros((32, 6), np.uint64)
        self.start = np.zeros(32, np.float64)
        self.open = np.zeros(32, np.bool_)
        self.row = np.full(32, -1, np.int64)
        self._table(0)

    def _table(self, room: int) -> None:
        """A table for `room` keys (a power of two, at least 64 slots, at most half full) holding
        the ids handed out so far that have six words."""
        size = 64
        while 2 * room > size:
            size *= 2
        self.table = np.full(size, -1, np.int64)
        if self.n:
            ids = np.arange(self.n)
            if self.others:
                ids = np.setdiff1d(ids, np.fromiter(self.others.values(), np.int64, len(self.others)))
            kernels.fold_index(self.words, ids, self.table)

    def arrays(self) -> tuple:
        return self.words, self.table, self.start, self.open, self.row

    def reserve(self, k: int) -> None:
        """Room for k more ids: in the arrays, and in the table (kept at most half full)."""
        need = self.n + k
        if need > len(self.start):
            self.start, self.open, self.words = grow(self.start, need), grow(self.open, need), grow(self.words, need)
            self.row = grow(self.row, need, fill=-1)
        if 2 * need > len(self.table):
            self._table(need)

    def find(self, key) -> int:
        """The id of `key`, -1 when it has none."""
        words = _words(key)
        if words is None:
            return self.others.get(key, -1)
        return int(kernels.fold_lookup(words, self.words, self.table))

    def new(self, key) -> int:
        """An id for `key`, which has none."""
        self.reserve(1)
        kid = self.n
        self.n += 1
        words = _words(key)
        if words is None:
            self.others[key] = kid
        else:
            kernels.fold_insert(words, kid, self.words, self.table)
        return kid

    def rebuild(self) -> np.ndarray:
        """Keep only the ids of open windows, numbered afresh in their order; returns the new id of
        each old one (-1: dropped)."""
        keep = np.flatnonzero(self.open[: self.n])
        new_id = np.full(max(self.n, 1), -1, np.int64)
        new_id[keep] = np.arange(len(keep))
        self.others = {key: int(new_id[kid]) for key, kid in self.others.items() if new_id[kid] >= 0}
        words, start, row = self.words[keep], self.start[keep], self.row[keep]
        self.n = len(keep)
        self.words[: self.n] = words
        self.open[:] = False
        self.open[: self.n] = True
        self.start[: self.n], self.row[: self.n] = start, row
        self.row[self.n:] = -1
        self._table(self.n)
        return new_id


class Folder:
    """`emit` takes each alert dict as it leaves. With `packer` (alertpack.Packer) and
    `emit_packed` (its bytes and ts), an alert that leaves as it is made, never held to fold, is
    made as msgpack bytes in one kernel call per batch instead (an alert flood's every alert);
    `emit_packed_many` (bytes, ts: lists) takes a batch's at once where given, `emit_packed_run`
    (an alertpack.Run, every alert in it packed) a packing's without a bytes object per alert."""

    def __init__(self, window: float, emit: Callable[[dict], None], max_keys: int = 1 << 62,
                 packer=None, emit_packed: Callable[[bytes, float], None] | None = None,
                 emit_packed_many: Callable[[list, list], None] | None = None,
                 describe: Callable[[], tuple] | None = None,
                 emit_packed_run: Callable[[Run], None] | None = None):
        self.window = window
        self.emit = emit
        self.packer, self.emit_packed = packer, emit_packed
        self.emit_packed_many = emit_packed_many or self._emit_each
        self.emit_packed_run = emit_packed_run or self._emit_run
        self.max_keys = max_keys             # limits.max_fold_keys: a further new key's alert is written unfolded
        self.over_limit = 0
        self.reopened = 0                    # windows reopened over a held alert their tick had not yet let leave
        self.windows = 0                     # fold keys with an open window
        self._keys = _FoldKeys()
        # key id -> its pending alert (numbers in its row) where Python holds it, a dict. One the fold
        # kernel made (kernels._hold: its first record's row in _held) is its row's only: `_naming`
        # says which of `_namings` (what describe() said then) names it, its alert made only when
        # it leaves (_release_many, _leave_made); -1 a free row or Python's. No Python object per alert:
        # in a flood thousands a second are made and leave.
        self._pending: dict[int, dict] = {}
        self._naming = np.full(64, -1, np.int32)
        self._namings: list[tuple] = []
        self._naming_at: dict[tuple, int] = {}   # a naming -> its place in _namings (_naming_of)
        self._made_count = 0                      # rows whose _naming is set
        self._count = np.zeros(64, np.int64)          # folded numbers of the pending alerts, a row each
        self._sums = np.zeros((64, 4), np.uint64)
        self._times = np.zeros((64, 3), np.float64)
        self._tail = np.zeros((64, 3), np.int64)
        self._held = np.zeros(64, ROW)                # a pending alert the kernel made: its first hit's row,
        self._held_at = np.zeros((64, 3), np.int64)   # and that hit's key id, endpoint and direction
        self._free = list(range(63, -1, -1))  # rows not in use
        self._spare = np.zeros(0, np.int64)   # rows set aside for the kernel's pending alerts (kernels._hold)
        self._spare_size = _SPARE
        self._scratch(256)
        # kernels.fold_batch's: next id, windows opened, rest, groups, spare rows left, spare rows
        # given, hits past max_keys (written unfolded)
        self._counters = np.zeros(7, np.int64)
        # () -> (names, exporters, signals, header_names) of the hits being folded, as hit_alerts takes
        # them: set (Pipeline), the kernel makes pending alerts itself and Python only their dicts,
        # once per call that made any, instead of a return to Python for the batch
        self.describe = describe

    # --- pending alerts: the dict, and its folded numbers in a row of the arrays -------------------

    def _grow_rows(self) -> None:
        """Twice the rows for pending alerts; the new ones free."""
        have = len(self._count)
        self._count, self._sums, self._times, self._tail, self._held, self._held_at = (
            grow(a, 2 * have) for a in (self._count, self._sums, self._times, self._tail, self._held, self._held_at))
        self._naming = grow(self._naming, 2 * have, fill=-1)
        self._free[:0] = range(2 * have - 1, have - 1, -1)

    def _hold(self, kid: int, alert: dict, count: int, sums, times, tail) -> None:
        """`alert` becomes key kid's pending alert with these folded numbers (sums: bytes, packets
        and their estimates; times: first, last, ts; tail: sport, dport, vlan of the last record)."""
        if not self._free:
            self._grow_rows()
        row = self._free.pop()
        self._keys.row[kid] = row
        self._count[row] = count
        self._sums[row] = sums
        self._times[row] = times
        self._tail[row] = (tail[0], tail[1], -1 if tail[2] is None else tail[2])
        self._pending[kid] = alert

    def _release(self, kid: int, row: int) -> None:
        """Emit key kid's pending alert, in `row`, with its folded numbers."""
        self._release_many([kid], [row])

    def _release_many(self, kids: list[int], rows: list[int]) -> None:
        """_release of each (kid, row). The pending alerts the fold kernel made leave first, all
        made in one call per naming: packed with their folded numbers where a packer is set (an
        alert flood closes thousands of windows a tick: no dict and no call per alert), else as
        dicts; then the others. Each in the order given (a key leaves once: its own alerts keep
        their order)."""
        if not kids:
            return
        r = np.array(rows, np.int64)
        naming = self._naming[r]
        made = np.flatnonzero(naming >= 0)
        if len(made) == len(r) and naming.min() == naming.max():   # (one naming for all: the usual case)
            self._leave_made(kids, rows, r, int(naming[0]))
            return
        if len(made):
            for which in np.unique(naming[made]).tolist():
                at = made[naming[made] == which]
                self._leave_made([kids[k] for k in at.tolist()], [rows[k] for k in at.tolist()], r[at], which)
        for k in np.flatnonzero(naming < 0).tolist():
            self._release_dict(kids[k], rows[k])

    def _leave_made(self, kids: list[int], rows: list[int], r: np.ndarray, which: int) -> None:
        """The kernel-made pending alerts of keys `kids` in rows `rows` (r: the same as an array),
        all named by _namings[which], leave: packed where a packer is set, _RUN at a time (a
        closing window's thousands in a buffer the packer keeps), else as dicts."""
        desc = self._namings[which]
        if self.packer is None:
            for kid, row, alert in zip(kids, rows, self._made_dicts(r, desc)):
                self._release_dict(kid, row, alert)
            return
        for at in range(0, len(rows), _RUN):
            self._leave_packed(kids[at: at + _RUN], rows[at: at + _RUN], r[at: at + _RUN], desc)

    def _leave_packed(self, kids: list[int], rows: list[int], r: np.ndarray, desc: tuple) -> None:
        """_leave_made's packing of up to _RUN of them (Packer.pack_folded, what Folder._release
        would make of each), as one run; those only hit_alerts can say leave as dicts, after."""
        at = self._held_at[r]
        run = self.packer.pack_folded(self._held, r, at[:, 1], at[:, 2], self._count[r], self._sums[r],
                                      self._times[r], self._tail[r], *self._naming_args(desc))
        if run.ok.all():
            self._unhold(kids, rows, r)
            self.emit_packed_run(run)
            return
        blobs, stamps = run.split()              # (one only hit_alerts can say: none the decoders make)
        keep = [i for i, blob in enumerate(blobs) if blob is not None]
        rest = [(kids[i], rows[i]) for i, blob in enumerate(blobs) if blob is None]
        if keep:
            self._unhold([kids[i] for i in keep], [rows[i] for i in keep], r[keep])
            self.emit_packed_many([blobs[i] for i in keep], [stamps[i] for i in keep])
        for kid, row in rest:                    # after the packed ones, as dicts
            self._release_dict(kid, row, self._made_dicts([row], desc)[0])

    @staticmethod
    def _naming_args(desc: tuple) -> tuple:
        """pack_folded's names, signals, header names and exporters from describe()'s tuple."""
        names, exporters, signals, header_names = desc
        return names, signals, header_names, exporters

    def _unhold(self, kids: list[int], rows: list[int], r: np.ndarray) -> None:
        """Kernel-made pending alerts in rows `rows` (r: as an array) of keys `kids` have left."""
        self._naming[r] = -1
        self._made_count -= len(rows)
        self._free += rows
        self._keys.row[np.array(kids, np.int64)] = -1

    def _emit_run(self, run: Run) -> None:
        self.emit_packed_many(*run.split())

    def _release_dict(self, kid: int, row: int, alert: dict | None = None) -> None:
        """_release with the alert as a dict: Python's pending one, or `alert` made for the
        kernel's (_leave_made)."""
        if alert is None:
            alert = self._pending.pop(kid)
        else:
            self._naming[row] = -1
            self._made_count -= 1
        b, p, be, pe = self._sums[row].tolist()
        first, last, ts = self._times[row].tolist()
        sport, dport, vlan = self._tail[row].tolist()
        alert.update(count=int(self._count[row]), bytes=b, packets=p, first_seen=_time(first), last_seen=_time(last),
                     ts=ts, sport=sport, dport=dport, vlan=None if vlan < 0 else vlan)
        if "bytes_estimate" in alert:        # every alert of ours has them; a caller's own may not
            alert.update(bytes_estimate=be, packets_estimate=pe)
        self._free.append(row)
        self._keys.row[kid] = -1
        self.emit(alert)

    def _merge_one(self, row: int, alert: dict) -> None:
        """One more record's alert into the pending one in `row`."""
        self._count[row] += alert["count"]
        for q, name in enumerate(_SUMS):
            self._sums[row, q] = saturate(int(self._sums[row, q]) + alert.get(name, 0))
        t = self._times[row]
        for q, name, pick in ((0, "first_seen", min), (1, "last_seen", max)):
            if alert[name] is not None:
                t[q] = alert[name] if math.isnan(t[q]) else pick(t[q], alert[name])
        t[2] = max(t[2], alert["ts"])
        self._tail[row] = (alert["sport"], alert["dport"], -1 if alert["vlan"] is None else alert["vlan"])

    # --- folding ---------------------------------------------------------------------------------

    def add_hits(self, batch: FlowBatch, hits: Hits, names: tuple[str, ...], exporters) -> None:
        """Fold a batch's hits; the same alerts as add(hit_alerts(...)), built per group instead of
        per hit. Hits are grouped by fold key, the groups that fold into a pending alert merged and
        the windows of those that open one opened, in one kernel call (kernels.fold_batch; the
        one-call kernels make the same call themselves, onecall.py), so Python runs per group only
        for an alert that leaves or is held, never per key. A group that straddles a window
        boundary takes the per-hit path."""
        m = len(hits)
        if not m:
            return
        if self.window <= 0:                     # no folding: every alert leaves at once
            if self.packer is not None:
                self._emit_all(batch, hits, names, exporters)
            else:
                self.add(hit_alerts(batch, hits, names, exporters))
            return
        if len(self._table) < 2 * m:             # (a power of two: grown seldom)
            self._scratch(m)
        g = kernels.fold_batch(batch.rows, hits.idx, hits.endpoint, hits.direction, m, self.kernel_fold())
        if g < 0:                                # room for every group to be a new key first
            self._keys.reserve(int(self._counters[3]))
            g = kernels.fold_batch(batch.rows, hits.idx, hits.endpoint, hits.direction, m, self.kernel_fold())
        if self.folded():
            self.finish(g, batch, hits, names, exporters)

    def _scratch(self, hits: int) -> None:
        """Grouping scratch (kernels.group_hits) for batches of up to `hits` hits, reused."""
        size = 1 << (2 * hits - 1).bit_length()
        self._table = np.empty(size, np.int64)
        self._ints = np.empty((7, size), np.int64)     # per group: group, first, second, last, count, kid, released
        self._g_sums = np.empty((size, 8), np.uint64)
        self._g_times = np.empty((size, 7), np.float64)
        self._kind = np.empty(size, np.int8)

    def kernel_fold(self) -> tuple:
        """kernels.fold_batch's last argument: this folder's scratch and state as they are now, with
        spare rows set aside for the pending alerts the kernel makes (none without `describe`)."""
        counters = self._counters
        counters[0], counters[1] = self._keys.n, 0
        if self.describe is not None and counters[4] < self._spare_size:
            self._set_aside()
        return (self._table, self._ints, self._g_sums, self._g_times, self._kind, self._keys.arrays(),
                (self._count, self._sums, self._times, self._tail, self._held, self._held_at, self._spare), counters,
                float(self.window), max(self.max_keys - self.windows, 0))

    def _set_aside(self) -> None:
        """Spare rows back up to _spare_size, from the free ones (grown when too few)."""
        self._take_made()                        # (folded() ran after the last call: nothing left to take)
        counters, size = self._counters, self._spare_size
        left = int(counters[4])
        while len(self._free) < size - left:
            self._grow_rows()
        if len(self._spare) < size:
            self._spare = grow(self._spare, size)
        take = size - left                       # (as many pop()s: the last free rows, last first)
        self._spare[left: size] = self._free[len(self._free) - take:][::-1]
        del self._free[len(self._free) - take:]
        counters[4] = counters[5] = size

    def folded(self) -> bool:
        """Take in what kernels.fold_batch did with a batch's groups (ids handed out, windows
        opened, pending alerts made: since the last call, over one batch or, in polls.poll_loop,
        several); True when some are left to finish()."""
        counters = self._counters
        self._keys.n, opened, rest = counters[:3].tolist()
        self.windows += opened
        self.over_limit += int(counters[6])
        counters[1] = counters[6] = 0
        self._take_made()
        return rest > 0

    def _take_made(self) -> None:
        """The dicts of the pending alerts the kernel made (kernels._hold) since this last ran, from
        the copies of their first hits' rows: what _open_groups would have held."""
        counters = self._counters
        left, given = counters[4:6].tolist()
        if left >= given:
            return
        rows = self._spare[left: given]
        counters[5] = left
        if not left:                             # all taken: more next time (the kernel held the rest back)
            self._spare_size = min(2 * self._spare_size, _SPARE_MAX)
        self._naming[rows] = self._naming_of(self.describe())
        self._made_count += len(rows)

    def _naming_of(self, desc: tuple) -> int:
        """desc's place in _namings: one per naming (names, signals, header names, by value; the
        exporter table, by identity), however often describe() makes the tuple again, so that
        _namings grows by a reload that renames, not by a call."""
        names, exporters, signals, header_names = desc
        key = (id(exporters), names, signals, header_names)
        at = self._naming_at.get(key)
        if at is None:
            at = self._naming_at[key] = len(self._namings)
            self._namings.append(desc)           # (kept: the table's id stays its own)
        return at

    def _made_dicts(self, rows, desc: tuple) -> list[dict]:
        """The alert dicts (count 1, their first record's) of kernel-made pending alerts in `rows`,
        as hit_alerts made them under `desc` (describe()'s)."""
        names, exporters, signals, header_names = desc
        r = np.asarray(rows, np.int64)
        at = self._held_at[r]
        hits = Hits(r, at[:, 1].astype(np.int32), at[:, 2].astype(np.uint8), 0, signals, header_names)
        return [alert for _, alert in hit_alerts(_Held(self._held), hits, names, exporters)]

    def finish(self, groups: int, batch: FlowBatch, hits: Hits, names: tuple[str, ...], exporters) -> None:
        """The groups kernels.fold_batch left to Python: alerts that leave or are held. New keys'
        lone hits leave first (Packer.pack_leaving), then the other groups' alerts in group order:
        a key has one group per batch, so each key's alerts keep their order."""
        if self.packer is not None:              # new keys' lone hits (an alert flood's): packed in one call,
            run = self.packer.pack_leaving(self._kind, self._ints, groups, batch, hits, names, exporters)
            if len(run.ends):                    # leaving first; their groups' kind is now 0
                self.emit_packed_run(run)
        kind = self._kind[:groups]
        at = np.flatnonzero(kind)
        if len(at):
            self._open_groups(at, kind, batch, hits, names, exporters)

    def _emit_each(self, blobs: list[bytes], stamps: list[float]) -> None:
        for blob, ts in zip(blobs, stamps):
            self.emit_packed(blob, ts)

    def _emit_all(self, batch: FlowBatch, hits: Hits, names, exporters) -> None:
        """No folding: every hit's alert leaves at once, packed (a dict where pack cannot say)."""
        blobs, stamps = self.packer.pack(batch, hits, names, exporters)
        rest = [k for k, blob in enumerate(blobs) if blob is None]
        made = {}
        if rest:
            made = {k: alert for k, (_, alert) in zip(rest, hit_alerts(batch, hits.subset(np.array(rest, np.int64)),
                                                                       names, exporters))}
        for k, (blob, ts) in enumerate(zip(blobs, stamps)):
            if blob is None:
                self.emit(made[k])
            else:
                self.emit_packed(blob, ts)

    def _open_groups(self, at: np.ndarray, kind: np.ndarray, batch: FlowBatch, hits: Hits, names, exporters) -> None:
        """The groups `at` (kernels.fold_groups did not merge them) that open a pending alert
        (kind 1) or opened a window (2), go hit by hit (3), or are past max_keys (4: each hit's
        alert leaves unfolded, counted by the kernel; Packer.pack_leaving packs them unless one
        is only hit_alerts'), in group order, after the alerts held in the windows kind 2 reopened
        (each key's alerts in their order)."""
        group, first, second, last, count, g_kid, g_released = self._ints
        sums, times, c, m = self._g_sums, self._g_times, batch.cols, len(hits)
        steps = list(zip(at.tolist(), kind[at].tolist(), g_kid[at].tolist(), g_released[at].tolist(),
                         count[at].tolist()))
        # the first hit of a group opening a window leaves at once: packed where a packer is set
        packed = {}
        if self.packer is not None:
            two = [first[j] for j, k, *_ in steps if k == 2]
            if two:
                blobs, stamps = self.packer.pack(batch, hits.subset(np.array(two, np.int64)), names, exporters)
                packed = {pos: (b, t) for pos, b, t in zip(two, blobs, stamps) if b is not None}
        # alert dicts only where one is needed: the first hit of a group opening a pending alert or
        # a window (unless packed), the second hit of a group opening a window with more to fold
        want = [first[j] for j, k, *_ in steps if k == 1 or (k == 2 and first[j] not in packed)] + \
               [second[j] for j, k, _, _, n in steps if k == 2 and n > 1]
        built = {}
        if want:
            made = hit_alerts(batch, hits.subset(np.array(want, np.int64)), names, exporters)
            built = {pos: alert for pos, (_, alert) in zip(want, made)}
        # the per-hit groups' alerts in one call too: their hits in batch order, handed to add() (3)
        # or emitted (4) group by group
        per_hit: dict[int, list] = {}
        one_by_one = [j for j, k, *_ in steps if k >= 3]
        if one_by_one:
            pos = np.flatnonzero(np.isin(group[:m], one_by_one))
            for j, item in zip(group[pos].tolist(), hit_alerts(batch, hits.subset(pos), names, exporters)):
                per_hit.setdefault(j, []).append(item)
        held = [j for j, k, _, _, n in steps if k == 1 or (k == 2 and n > 1)]
        tails = {}
        if held:
            l_idx = hits.idx[last[held]]
            tails = dict(zip(held, zip(c.sport[l_idx].tolist(), c.dport[l_idx].tolist(), _vlans(batch, l_idx))))
        # a window reopened over a held alert (its window ended, not yet ticked): that alert leaves
        # first, all of them in one call (each key's alerts keep their order; a window closing
        # between ticks meets thousands of such groups a second)
        reopened = [(kid, old_row) for _, k, kid, old_row, _ in steps if k == 2 and old_row >= 0]
        if reopened:
            self.reopened += len(reopened)
            self._release_many([kid for kid, _ in reopened], [row for _, row in reopened])
        for j, k, kid, old_row, n in steps:
            if k == 1:
                self._hold(kid, built[first[j]], n, sums[j, :4].tolist(), times[j, :3].tolist(), tails[j])
            elif k == 2:
                got = packed.get(first[j])
                if got is None:
                    self.emit(built[first[j]])
                else:
                    self.emit_packed(*got)
                if n > 1:
                    self._hold(kid, built[second[j]], n - 1, sums[j, 4:].tolist(), times[j, 3:6].tolist(), tails[j])
            elif k == 3:
                self.add(per_hit[j])
            else:
                for _, alert in per_hit[j]:
                    self.emit(alert)

    def add(self, items: list[tuple[tuple, dict]]) -> None:
        if self.window <= 0:
            for _, alert in items:
                self.emit(alert)
            return
        keys = self._keys
        for key, alert in items:
            kid = keys.find(key)
            is_open = kid >= 0 and bool(keys.open[kid])
            t = alert["ts"]
            if not is_open and self.windows >= self.max_keys:
                self.over_limit += 1
                self.emit(alert)
                continue
            if not is_open or t - keys.start[kid] >= self.window:
                if is_open:
                    if keys.row[kid] >= 0:
                        self._release(kid, int(keys.row[kid]))
                else:
                    self.windows += 1
                    if kid < 0:
                        kid = keys.new(key)
                keys.start[kid], keys.open[kid], keys.row[kid] = t, True, -1
                self.emit(alert)
            elif keys.row[kid] < 0:
                self._hold(kid, alert, alert["count"], [alert.get(name, 0) for name in _SUMS],
                           [_nan(alert["first_seen"]), _nan(alert["last_seen"]), t],
                           (alert["sport"], alert["dport"], alert["vlan"]))
            else:
                self._merge_one(int(keys.row[kid]), alert)

    def tick(self, now: float) -> None:
        """Close every window older than `window` at time `now`."""
        keys = self._keys
        n = keys.n
        done = np.flatnonzero(keys.open[:n] & (now - keys.start[:n] >= self.window))
        if len(done):
            rows = keys.row[done]
            self._release_many(done[rows >= 0].tolist(), rows[rows >= 0].tolist())
            keys.open[done] = False
            self.windows -= len(done)
        if n > 2 * self.windows + _KEY_SLACK:     # ids of closed windows pile up
            new_id = keys.rebuild()
            self._pending = {int(new_id[kid]): alert for kid, alert in self._pending.items()}

    def close(self) -> None:
        keys = self._keys
        kids = np.flatnonzero(keys.row[: keys.n] >= 0)          # every key with a pending alert
        self._release_many(kids.tolist(), keys.row[kids].tolist())
        self._keys = _FoldKeys()
        self.windows = 0

    @property
    def pending(self) -> int:
        return len(self._pending) + self._made_count


def _nan(v: float | None) -> float:
    return math.nan if v is None else v


class Encoder:
    """msgpack, one map per alert; the packer is built once and reused."""

    def __init__(self):
        self._packer = msgpack.Packer(use_bin_type=True)

    def encode(self, alert: dict) -> bytes:
        return self._packer.pack(alert)
