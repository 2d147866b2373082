"""Alerts: one map per alert, folded per key within a window, encoded as msgpack.

Rules: records with the same (exporter, src, dst, proto, endpoint-side port) inside
`window` seconds fold into one alert. The first is emitted at once with count 1; the others
accumulate and leave as one alert (count = records folded) when the window closes, on tick()
or close(). Nothing is dropped: the sum of `count` equals the matching records seen.
Windows run on record arrival time, so a replay folds exactly like the live run did.
"""
from __future__ import annotations

import math
from typing import Callable

import msgpack
import numpy as np

from . import kernels
from .addr import from_hilo
from .detect import DIRECTIONS, REQUEST, Hits
from .flows import HTTP, LATE, SFLOW, VLAN_COLUMNS, FlowBatch
from .wire.packet import METHODS

__all__ = ["Folder", "ALERT_FIELDS", "hit_alerts", "Encoder"]

ALERT_FIELDS = ("ts", "exporter", "exporter_port", "version", "src", "dst", "sport", "dport", "proto",
                "vlan", "endpoint", "direction", "bytes", "packets", "first_seen", "last_seen", "count",
                "sampling_rate", "bytes_estimate", "packets_estimate",
                "format", "signal", "http_method", "url", "headers")
# present only when the exporter reported them (SNMP / ifIndex of the input and output interfaces)
OPTIONAL_ALERT_FIELDS = ("in_if", "out_if")


def _time(v: float) -> float | None:
    return None if math.isnan(v) else v


def _vlans(c, idx: np.ndarray) -> list[int | None]:
    """The VLAN each record idx carries: the first non-zero id of VLAN_COLUMNS, else 0 if one
    says 0, else None (-1 everywhere: absent)."""
    v = np.stack([getattr(c, name)[idx] for name in VLAN_COLUMNS], axis=1).astype(np.int32)
    if not len(v):
        return []
    nonzero = v > 0
    out = np.where(nonzero.any(axis=1), v[np.arange(len(v)), nonzero.argmax(axis=1)],
                   np.where((v == 0).any(axis=1), 0, -1))
    return [None if x < 0 else x for x in out.tolist()]


def hit_alerts(batch: FlowBatch, hits: Hits, names: tuple[str, ...], exporters) -> list[tuple[tuple, dict]]:
    """(fold key, alert with count 1) for every hit; Python work only for hits."""
    if not len(hits):
        return []
    idx = hits.idx
    c = batch.cols
    cols = {name: getattr(c, name)[idx].tolist() for name in (
        "exporter", "version", "ts", "src_hi", "src_lo", "dst_hi", "dst_lo", "sport", "dport", "proto",
        "bytes", "packets", "first_seen", "last_seen", "sampling_rate", "row_flags", "http_method", "url_off", "url_len", "headers")}
    vlans = _vlans(c, idx)
    in_ifs, out_ifs = c.in_if[idx].tolist(), c.out_if[idx].tolist()
    out = []
    for j, (ep, direction) in enumerate(zip(hits.endpoint.tolist(), hits.direction.tolist())):
        e = cols["exporter"][j]
        src = (cols["src_hi"][j], cols["src_lo"][j])
        dst = (cols["dst_hi"][j], cols["dst_lo"][j])
        sport, dport, proto = cols["sport"][j], cols["dport"][j], cols["proto"][j]
        sampling = cols["sampling_rate"][j] or 1
        alert = {
            "ts": cols["ts"][j], "exporter": exporters.address[e], "exporter_port": exporters.port[e],
            "version": cols["version"][j], "src": from_hilo(*src), "dst": from_hilo(*dst),
            "sport": sport, "dport": dport, "proto": proto, "vlan": vlans[j],
            "endpoint": names[ep], "direction": DIRECTIONS[direction],
            "bytes": cols["bytes"][j], "packets": cols["packets"][j],
            "first_seen": _time(cols["first_seen"][j]), "last_seen": _time(cols["last_seen"][j]),
            "count": 1, "sampling_rate": sampling,
            # bytes / packets as the exporter reported them; estimates scaled by its sampling rate
            "bytes_estimate": cols["bytes"][j] * sampling, "packets_estimate": cols["packets"][j] * sampling,
        }
        for key, value in (("in_if", in_ifs[j]), ("out_if", out_ifs[j])):
            if value:                         # interface index 0: the exporter did not say
                alert[key] = value
        flags = cols["row_flags"][j]
        alert["format"] = "sflow" if flags & SFLOW else ("ipfix" if alert["version"] == 10 else "netflow")
        alert["signal"] = hits.signals[ep] if ep < len(hits.signals) else "address"
        alert["http_method"] = alert["url"] = None
        alert["headers"] = []
        if flags & HTTP:
            # the request-target as sampled and the NAMES of configured header fields, nothing else:
            # header values and payload bytes are secrets (tokens, credentials) and never leave
            off = cols["url_off"][j]
            alert["http_method"] = METHODS[cols["http_method"][j]]
            size = cols["url_len"][j]
            text = batch.late_buf if flags & LATE else batch.buf
            alert["url"] = text[off: off + size].tobytes().decode("ascii", "backslashreplace") if size else None
            h = cols["headers"][j]
            alert["headers"] = [name for k, name in enumerate(hits.header_names) if h >> k & 1]
        side_port = dport if direction == REQUEST else sport
        out.append(((e, src, dst, proto, side_port, ep, direction), alert))
    return out


def _merge(into: dict, a: dict) -> None:
    into["count"] += a["count"]
    into["bytes"] += a["bytes"]
    into["packets"] += a["packets"]
    for key in ("bytes_estimate", "packets_estimate"):
        if key in a:
            into[key] = into.get(key, 0) + a[key]
    for key, pick in (("first_seen", min), ("last_seen", max)):
        if a[key] is not None:
            into[key] = a[key] if into[key] is None else pick(into[key], a[key])
    into["ts"] = max(into["ts"], a["ts"])
    into["sport"], into["dport"], into["vlan"] = a["sport"], a["dport"], a["vlan"]


def _overwrite(into: dict, count: int, sums, times, ports_vlan) -> None:
    """Set the folded fields of `into` to a group's aggregate (what merging one by one gives)."""
    into["count"] = count
    into["bytes"], into["packets"], into["bytes_estimate"], into["packets_estimate"] = sums
    into["first_seen"], into["last_seen"], into["ts"] = _time(times[0]), _time(times[1]), times[2]
    into["sport"], into["dport"], into["vlan"] = ports_vlan


def _merge_group(into: dict, count: int, sums, times, ports_vlan) -> None:
    """_merge of a group's aggregate, without building it as an alert first."""
    into["count"] += count
    into["bytes"] += sums[0]
    into["packets"] += sums[1]
    into["bytes_estimate"] = into.get("bytes_estimate", 0) + sums[2]
    into["packets_estimate"] = into.get("packets_estimate", 0) + sums[3]
    first, last = times[0], times[1]
    if first == first:                         # not NaN
        into["first_seen"] = first if into["first_seen"] is None else min(into["first_seen"], first)
    if last == last:
        into["last_seen"] = last if into["last_seen"] is None else max(into["last_seen"], last)
    if times[2] > into["ts"]:
        into["ts"] = times[2]
    into["sport"], into["dport"], into["vlan"] = ports_vlan


class Folder:
    def __init__(self, window: float, emit: Callable[[dict], None], max_keys: int = 1 << 62):
        self.window = window
        self.emit = emit
        self.max_keys = max_keys             # limits.max_fold_keys: a further new key's alert is written unfolded
        self.over_limit = 0
        self._open: dict[tuple, list] = {}   # key -> [window start, pending alert or None]
        self._table = np.empty(0, np.int64)   # group_hits scratch, reused

    def add_hits(self, batch: FlowBatch, hits: Hits, names: tuple[str, ...], exporters) -> None:
        """Fold a batch's hits; the same alerts as add(hit_alerts(...)), built per group instead of
        per hit. Hits are grouped by fold key in one kernel call with their sums, and Python runs
        per group: a group that stays inside one window folds as one aggregate, and an alert dict
        is built only for an alert that leaves at once or opens a pending one. A group that
        straddles a window boundary takes the per-hit path."""
        m = len(hits)
        if self.window <= 0 or m < 2:
            self.add(hit_alerts(batch, hits, names, exporters))
            return
        size = 1 << (2 * m - 1).bit_length()
        if len(self._table) < size:              # scratch, grown as needed and reused
            self._table = np.empty(size, np.int64)
            self._ints = np.empty((5, size), np.int64)
            self._sums = np.empty((size, 8), np.uint64)
            self._times = np.empty((size, 7), np.float64)
        group, first, second, last, count = self._ints
        sums, times = self._sums, self._times
        g = kernels.group_hits(batch.rows, hits.idx, hits.endpoint, hits.direction, self._table[:size],
                               group, first, second, last, count, sums, times)
        c = batch.cols
        f_idx = hits.idx[first[:g]]
        direction = hits.direction[first[:g]]
        side = np.where(direction == REQUEST, c.dport[f_idx], c.sport[f_idx])
        keys = list(zip(c.exporter[f_idx].tolist(), zip(c.src_hi[f_idx].tolist(), c.src_lo[f_idx].tolist()),
                        zip(c.dst_hi[f_idx].tolist(), c.dst_lo[f_idx].tolist()), c.proto[f_idx].tolist(),
                        side.tolist(), hits.endpoint[first[:g]].tolist(), direction.tolist()))
        l_idx = hits.idx[last[:g]]
        tail = list(zip(c.sport[l_idx].tolist(), c.dport[l_idx].tolist(), _vlans(c, l_idx)))
        count_l, sums_l, times_l = count[:g].tolist(), sums[:g].tolist(), times[:g].tolist()
        window = self.window
        steps = []                 # (group, kind): 0 merge into pending, 1 new pending, 2 new window, 3 per hit
        opening = len(self._open)  # keys open once the groups so far are applied (limits.max_fold_keys)
        for j in range(g):
            state = self._open.get(keys[j])
            t_first, t_max = times_l[j][6], times_l[j][2]
            if state is None and opening >= self.max_keys:
                steps.append((j, 3))           # add() writes these unfolded and counts them
                continue
            opening += state is None
            if state is not None and t_max - state[0] < window:
                steps.append((j, 0 if state[1] is not None else 1))
            elif (state is None or t_first - state[0] >= window) and t_max - t_first < window:
                steps.append((j, 2))
            else:
                steps.append((j, 3))
        # alert dicts only where one is needed: the first hit of a group opening a pending alert or
        # a window, the second hit of a group opening a window with more to fold
        want = [first[j] for j, kind in steps if kind in (1, 2)] + \
               [second[j] for j, kind in steps if kind == 2 and count_l[j] > 1]
        built = {}
        if want:
            sel = np.array(want, np.int64)
            made = hit_alerts(batch, hits.subset(sel), names, exporters)
            built = {pos: alert for pos, (_, alert) in zip(want, made)}
        # the per-hit groups' alerts in one call too (past limits.max_fold_keys, in a flood of new keys,
        # that is every group): their hits in batch order, handed to add() group by group
        per_hit: dict[int, list] = {}
        if any(kind == 3 for _, kind in steps):
            pos = np.flatnonzero(np.isin(group[:m], [j for j, kind in steps if kind == 3]))
            for j, item in zip(group[pos].tolist(), hit_alerts(batch, hits.subset(pos), names, exporters)):
                per_hit.setdefault(j, []).append(item)
        for j, kind in steps:
            key, n = keys[j], count_l[j]
            if kind == 0:
                _merge_group(self._open[key][1], n, sums_l[j][:4], times_l[j][:3], tail[j])
            elif kind == 1:
                alert = built[first[j]]
                _overwrite(alert, n, sums_l[j][:4], times_l[j][:3], tail[j])
                self._open[key][1] = alert
            elif kind == 2:
                state = self._open.get(key)
                if state is not None and state[1] is not None:
                    self.emit(state[1])
                alert = built[first[j]]
                self._open[key] = [alert["ts"], None]
                self.emit(alert)
                if n > 1:
                    pending = built[second[j]]
                    _overwrite(pending, n - 1, sums_l[j][4:], times_l[j][3:6], tail[j])
                    self._open[key][1] = pending
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
                if state is not None and state[1] is not None:
                    self.emit(state[1])
                self._open[key] = [t, None]
                self.emit(alert)
            elif state[1] is None:
                state[1] = alert
            else:
                _merge(state[1], alert)

    def tick(self, now: float) -> None:
        """Close every window older than `window` at time `now`."""
        done = [k for k, (start, _) in self._open.items() if now - start >= self.window]
        for key in done:
            pending = self._open.pop(key)[1]
            if pending is not None:
                self.emit(pending)

    def close(self) -> None:
        for _, pending in self._open.values():
            if pending is not None:
                self.emit(pending)
        self._open.clear()

    @property
    def pending(self) -> int:
        return sum(1 for _, p in self._open.values() if p is not None)


class Encoder:
    """msgpack, one map per alert; the packer is built once and reused."""

    def __init__(self):
        self._packer = msgpack.Packer(use_bin_type=True)

    def encode(self, alert: dict) -> bytes:
        return self._packer.pack(alert)
