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
from .detect import DIRECTIONS, REQUEST, Hits
from .flows import HTTP, LATE, SFLOW, FlowBatch
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
            "bytes_estimate": b * sampling, "packets_estimate": p * sampling,
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
# VLAN code, -1 none, of the latest record), and every fold key's window in _FoldKeys: a batch's
# groups are looked up and merged into pending alerts in one kernel call (kernels.fold_groups), and
# Python runs only for a group that opens a window or a pending alert. The alert dict holds the rest
# and gets these numbers when it leaves (Folder._release).
_SUMS = ("bytes", "packets", "bytes_estimate", "packets_estimate")
_KEY_SLACK = 4096                      # ids of closed windows kept before _FoldKeys.rebuild


def _words(key) -> np.ndarray | None:
    """A fold key tuple (hit_alerts) as the six words kernels.fold_words makes of its row; None for
    a key of another shape (Folder.add takes any key, and only hit_alerts' meet a batch's groups)."""
    try:
        e, (sh, sl), (dh, dl), proto, side, ep, direction = key
    except (TypeError, ValueError):
        return None
    return np.array([e << 32 | ep, proto << 17 | side << 1 | direction, sh, sl, dh, dl], np.uint64)


class _FoldKeys:
    """Fold keys -> ids, in an open-addressing table kernels.fold_groups reads, and per id the key's
    window: its start, whether it is open (the key is in Folder._open) and its pending alert's row
    (-1: none). Ids of closed windows are dropped by rebuild()."""

    def __init__(self):
        self.ids: dict[tuple, int] = {}
        self._table(64)
        self.start = np.zeros(32, np.float64)
        self.open = np.zeros(32, np.bool_)
        self.row = np.full(32, -1, np.int64)

    def _table(self, size: int) -> None:
        self.t_keys = np.zeros((size, 6), np.uint64)
        self.t_val = np.full(size, -1, np.int64)

    def arrays(self) -> tuple:
        return self.t_keys, self.t_val, self.start, self.open, self.row

    def id(self, key: tuple) -> int:
        kid = self.ids.get(key)
        if kid is None:
            kid = self._new(key)
            words = _words(key)
            if words is not None:
                kernels.fold_insert(words, kid, self.t_keys, self.t_val)
        return kid

    def add_rows(self, keys: dict[int, tuple], batch: FlowBatch, hits: Hits, first: np.ndarray) -> None:
        """Ids for the groups' keys not seen yet ({group: key}; `first[group]`: its first hit), put
        into the table in one kernel call that takes their words from the batch rows."""
        new = [j for j, key in keys.items() if key not in self.ids]
        if new:
            kids = np.array([self._new(keys[j]) for j in new], np.int64)
            kernels.fold_insert_rows(batch.rows, hits.idx, hits.endpoint, hits.direction, first[new], kids,
                                     self.t_keys, self.t_val)

    def _new(self, key) -> int:
        """The next id for `key`, with room for it in the arrays and the table (not inserted)."""
        kid = self.ids[key] = len(self.ids)
        if kid >= len(self.start):
            self.start, self.open = grow(self.start, kid + 1), grow(self.open, kid + 1)
            self.row = grow(self.row, kid + 1, fill=-1)
        if 2 * len(self.ids) > len(self.t_val):
            old_keys, old_val = self.t_keys, self.t_val
            self._table(2 * len(self.t_val))
            kernels.fold_rehash(old_keys, old_val, self.t_keys, self.t_val)
        return kid

    def rebuild(self, states: dict[tuple, list]) -> None:
        """Keep only the keys in `states` (Folder._open), numbered afresh (state[3])."""
        self.ids = {}
        self._table(64)
        self.open[:] = False
        for key, state in states.items():
            kid = state[3] = self.id(key)
            self.start[kid], self.open[kid] = state[0], True
            self.row[kid] = state[2] if state[1] is not None else -1


class Folder:
    """`emit` takes each alert dict as it leaves. With `pack` (alertpack.Packer.pack) and
    `emit_packed` (its bytes and ts), an alert that leaves as it is made, never held to fold, is
    made as msgpack bytes in one kernel call per batch instead (an alert flood's every alert)."""

    def __init__(self, window: float, emit: Callable[[dict], None], max_keys: int = 1 << 62,
                 pack: Callable | None = None, emit_packed: Callable[[bytes, float], None] | None = None):
        self.window = window
        self.emit = emit
        self.pack, self.emit_packed = pack, emit_packed
        self.max_keys = max_keys             # limits.max_fold_keys: a further new key's alert is written unfolded
        self.over_limit = 0
        self._open: dict[tuple, list] = {}   # key -> [window start, pending alert or None, its row, key id]
        self._keys = _FoldKeys()
        self._count = np.zeros(64, np.int64)          # folded numbers of the pending alerts, a row each
        self._sums = np.zeros((64, 4), np.uint64)
        self._times = np.zeros((64, 3), np.float64)
        self._tail = np.zeros((64, 3), np.int64)
        self._free = list(range(63, -1, -1))  # rows not in use
        self._table = np.empty(0, np.int64)   # group_hits scratch, reused

    # --- pending alerts: the dict, and its folded numbers in a row of the arrays -------------------

    def _hold(self, state: list, alert: dict, count: int, sums, times, tail) -> None:
        """`alert` becomes the key's pending alert with these folded numbers (sums: bytes, packets
        and their estimates; times: first, last, ts; tail: sport, dport, vlan of the last record)."""
        if not self._free:
            have = len(self._count)
            self._count, self._sums, self._times, self._tail = (
                grow(a, 2 * have) for a in (self._count, self._sums, self._times, self._tail))
            self._free = list(range(2 * have - 1, have - 1, -1))
        row = self._free.pop()
        self._keys.row[state[3]] = row
        self._count[row] = count
        self._sums[row] = sums
        self._times[row] = times
        self._tail[row] = (tail[0], tail[1], -1 if tail[2] is None else tail[2])
        state[1], state[2] = alert, row

    def _release(self, state: list) -> None:
        """Emit the key's pending alert, with its folded numbers, if it has one."""
        alert = state[1]
        if alert is None:
            return
        row = state[2]
        b, p, be, pe = self._sums[row].tolist()
        first, last, ts = self._times[row].tolist()
        sport, dport, vlan = self._tail[row].tolist()
        alert.update(count=int(self._count[row]), bytes=b, packets=p, first_seen=_time(first), last_seen=_time(last),
                     ts=ts, sport=sport, dport=dport, vlan=None if vlan < 0 else vlan)
        if "bytes_estimate" in alert:        # every alert of ours has them; a caller's own may not
            alert.update(bytes_estimate=be, packets_estimate=pe)
        self._free.append(row)
        state[1] = None                      # its key's window closes or opens anew next: _FoldKeys follows
        self.emit(alert)

    def _merge_one(self, state: list, alert: dict) -> None:
        """One more record's alert into the key's pending one."""
        row = state[2]
        self._count[row] += alert["count"]
        for q, name in enumerate(_SUMS):
            self._sums[row, q] += alert.get(name, 0)
        t = self._times[row]
        for q, name, pick in ((0, "first_seen", min), (1, "last_seen", max)):
            if alert[name] is not None:
                t[q] = alert[name] if math.isnan(t[q]) else pick(t[q], alert[name])
        t[2] = max(t[2], alert["ts"])
        self._tail[row] = (alert["sport"], alert["dport"], -1 if alert["vlan"] is None else alert["vlan"])

    def _window(self, key: tuple, t: float) -> list:
        """Open a new window for `key` at time t (its pending alert, if any, was released)."""
        kid = self._keys.id(key)
        self._keys.start[kid], self._keys.open[kid], self._keys.row[kid] = t, True, -1
        state = self._open[key] = [t, None, -1, kid]
        return state

    # --- folding ---------------------------------------------------------------------------------

    def add_hits(self, batch: FlowBatch, hits: Hits, names: tuple[str, ...], exporters) -> None:
        """Fold a batch's hits; the same alerts as add(hit_alerts(...)), built per group instead of
        per hit. Hits are grouped by fold key in one kernel call with their sums, and Python runs
        per group only to find its key: groups that fold into a pending alert are merged in numpy
        together, and an alert dict is built only for an alert that leaves at once or opens a
        pending one. A group that straddles a window boundary takes the per-hit path."""
        m = len(hits)
        if self.window <= 0 and self.pack is not None and m:
            self._emit_all(batch, hits, names, exporters)
            return
        if self.window <= 0 or m < 2:
            self.add(hit_alerts(batch, hits, names, exporters))
            return
        size = 1 << (2 * m - 1).bit_length()
        if len(self._table) < size:              # scratch, grown as needed and reused
            self._table = np.empty(size, np.int64)
            self._ints = np.empty((5, size), np.int64)
            self._g_sums = np.empty((size, 8), np.uint64)
            self._g_times = np.empty((size, 7), np.float64)
            self._kind = np.empty(size, np.int8)
        group, first, second, last, count = self._ints
        sums, times = self._g_sums, self._g_times
        g = kernels.group_hits(batch.rows, hits.idx, hits.endpoint, hits.direction, self._table[:size],
                               group, first, second, last, count, sums, times)
        kind = self._kind[:g]
        rest = kernels.fold_groups(batch.rows, hits.idx, hits.endpoint, hits.direction,
                                   (first, last, count, sums, times), g, self._keys.arrays(),
                                   (self._count, self._sums, self._times, self._tail), self.window,
                                   max(self.max_keys - len(self._open), 0), kind)
        if rest:
            self._open_groups(np.flatnonzero(kind), kind, batch, hits, names, exporters)

    def _emit_all(self, batch: FlowBatch, hits: Hits, names, exporters) -> None:
        """No folding: every hit's alert leaves at once, packed (a dict where pack cannot say)."""
        blobs, stamps = self.pack(batch, hits, names, exporters)
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
        (kind 1) or a window (2), or go hit by hit (3), in group order."""
        group, first, second, last, count = self._ints
        sums, times, c, m = self._g_sums, self._g_times, batch.cols, len(hits)
        f_idx, at_l = hits.idx[first[at]], at.tolist()
        direction = hits.direction[first[at]]
        side = np.where(direction == REQUEST, c.dport[f_idx], c.sport[f_idx])
        keys = dict(zip(at_l, zip(c.exporter[f_idx].tolist(), zip(c.src_hi[f_idx].tolist(), c.src_lo[f_idx].tolist()),
                                  zip(c.dst_hi[f_idx].tolist(), c.dst_lo[f_idx].tolist()), c.proto[f_idx].tolist(),
                                  side.tolist(), hits.endpoint[first[at]].tolist(), direction.tolist())))
        steps = list(zip(at_l, kind[at].tolist()))
        count_l = dict(zip(at_l, count[at].tolist()))
        l_idx = hits.idx[last[: len(kind)]]
        # the first hit of a group opening a window leaves at once: packed where a packer is set
        packed = {}
        if self.pack is not None:
            two = [first[j] for j, k in steps if k == 2]
            if two:
                blobs, stamps = self.pack(batch, hits.subset(np.array(two, np.int64)), names, exporters)
                packed = {pos: (b, t) for pos, b, t in zip(two, blobs, stamps) if b is not None}
        # alert dicts only where one is needed: the first hit of a group opening a pending alert or
        # a window (unless packed), the second hit of a group opening a window with more to fold
        want = [first[j] for j, k in steps if k == 1 or (k == 2 and first[j] not in packed)] + \
               [second[j] for j, k in steps if k == 2 and count_l[j] > 1]
        built = {}
        if want:
            sel = np.array(want, np.int64)
            made = hit_alerts(batch, hits.subset(sel), names, exporters)
            built = {pos: alert for pos, (_, alert) in zip(want, made)}
        # the per-hit groups' alerts in one call too (past limits.max_fold_keys, in a flood of new keys,
        # that is every group): their hits in batch order, handed to add() group by group
        per_hit: dict[int, list] = {}
        three = [j for j, k in steps if k == 3]
        if three:
            pos = np.flatnonzero(np.isin(group[:m], three))
            for j, item in zip(group[pos].tolist(), hit_alerts(batch, hits.subset(pos), names, exporters)):
                per_hit.setdefault(j, []).append(item)
        opened = [j for j, k in steps if k in (1, 2)]
        tails = dict(zip(opened, zip(c.sport[l_idx[opened]].tolist(), c.dport[l_idx[opened]].tolist(),
                                     _vlans(batch, l_idx[opened]))))
        self._keys.add_rows({j: keys[j] for j, k in steps if k == 2}, batch, hits, first)
        for j, k in steps:
            key, n = keys[j], count_l[j]
            if k == 1:
                self._hold(self._open[key], built[first[j]], n, sums[j, :4].tolist(), times[j, :3].tolist(), tails[j])
            elif k == 2:
                state = self._open.get(key)
                if state is not None:
                    self._release(state)
                got = packed.get(first[j])
                if got is None:
                    alert = built[first[j]]
                    state = self._window(key, alert["ts"])
                    self.emit(alert)
                else:
                    state = self._window(key, got[1])
                    self.emit_packed(*got)
                if n > 1:
                    self._hold(state, built[second[j]], n - 1, sums[j, 4:].tolist(), times[j, 3:6].tolist(), tails[j])
            else:
                self.add(per_hit[j])

    def add(self, items: list[tuple[tuple, dict]]) -> None:
        if self.window <= 0:
            for _, alert in items:
                self.emit(alert)
            return
        for key, alert in items:
            state = self._open.get(key)
            t = alert["ts"]
            if state is None and len(self._open) >= self.max_keys:
                self.over_limit += 1
                self.emit(alert)
                continue
            if state is None or t - state[0] >= self.window:
                if state is not None:
                    self._release(state)
                self._window(key, t)
                self.emit(alert)
            elif state[1] is None:
                self._hold(state, alert, alert["count"], [alert.get(name, 0) for name in _SUMS],
                           [_nan(alert["first_seen"]), _nan(alert["last_seen"]), t],
                           (alert["sport"], alert["dport"], alert["vlan"]))
            else:
                self._merge_one(state, alert)

    def tick(self, now: float) -> None:
        """Close every window older than `window` at time `now`."""
        done = [k for k, state in self._open.items() if now - state[0] >= self.window]
        for key in done:
            state = self._open.pop(key)
            self._release(state)
            self._keys.open[state[3]] = False
        if len(self._keys.ids) > 2 * len(self._open) + _KEY_SLACK:     # ids of closed windows pile up
            self._keys.rebuild(self._open)

    def close(self) -> None:
        for state in self._open.values():
            self._release(state)
        self._open.clear()
        self._keys = _FoldKeys()

    @property
    def pending(self) -> int:
        return sum(1 for state in self._open.values() if state[1] is not None)


def _nan(v: float | None) -> float:
    return math.nan if v is None else v


class Encoder:
    """msgpack, one map per alert; the packer is built once and reused."""

    def __init__(self):
        self._packer = msgpack.Packer(use_bin_type=True)

    def encode(self, alert: dict) -> bytes:
        return self._packer.pack(alert)
