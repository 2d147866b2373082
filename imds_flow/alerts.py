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

from .addr import from_hilo
from .detect import DIRECTIONS, REQUEST, Hits
from .flows import HTTP, SFLOW, VLAN_COLUMNS, FlowBatch
from .wire.packet import METHODS

__all__ = ["Folder", "ALERT_FIELDS", "hit_alerts", "Encoder"]

ALERT_FIELDS = ("ts", "exporter", "exporter_port", "version", "src", "dst", "sport", "dport", "proto",
                "vlan", "endpoint", "direction", "bytes", "packets", "first_seen", "last_seen", "count",
                "sampling_rate", "bytes_estimate", "packets_estimate",
                "format", "signal", "http_method", "url", "headers")


def _time(v: float) -> float | None:
    return None if math.isnan(v) else v


def _vlan(values: list[int]) -> int | None:
    """The VLAN a record carries: the first non-zero id, else 0 if one says 0, else None."""
    present = [v for v in values if v >= 0]
    return next((v for v in present if v > 0), present[0] if present else None)


def hit_alerts(batch: FlowBatch, hits: Hits, names: tuple[str, ...], exporters) -> list[tuple[tuple, dict]]:
    """(fold key, alert with count 1) for every hit; Python work only for hits."""
    if not len(hits):
        return []
    idx = hits.idx
    c = batch.cols
    cols = {name: getattr(c, name)[idx].tolist() for name in (
        "exporter", "version", "ts", "src_hi", "src_lo", "dst_hi", "dst_lo", "sport", "dport", "proto",
        "bytes", "packets", "first", "last", "sampling", "flags", "http_method", "url_off", "url_len", "headers",
        *VLAN_COLUMNS)}
    vlans = list(zip(*(cols[v] for v in VLAN_COLUMNS)))
    out = []
    for j, (ep, direction) in enumerate(zip(hits.endpoint.tolist(), hits.direction.tolist())):
        e = cols["exporter"][j]
        src = (cols["src_hi"][j], cols["src_lo"][j])
        dst = (cols["dst_hi"][j], cols["dst_lo"][j])
        sport, dport, proto = cols["sport"][j], cols["dport"][j], cols["proto"][j]
        sampling = cols["sampling"][j] or 1
        alert = {
            "ts": cols["ts"][j], "exporter": exporters.address[e], "exporter_port": exporters.port[e],
            "version": cols["version"][j], "src": from_hilo(*src), "dst": from_hilo(*dst),
            "sport": sport, "dport": dport, "proto": proto, "vlan": _vlan(vlans[j]),
            "endpoint": names[ep], "direction": DIRECTIONS[direction],
            "bytes": cols["bytes"][j], "packets": cols["packets"][j],
            "first_seen": _time(cols["first"][j]), "last_seen": _time(cols["last"][j]),
            "count": 1, "sampling_rate": sampling,
            # bytes / packets as the exporter reported them; estimates scaled by its sampling rate
            "bytes_estimate": cols["bytes"][j] * sampling, "packets_estimate": cols["packets"][j] * sampling,
        }
        flags = cols["flags"][j]
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
            alert["url"] = batch.buf[off: off + size].tobytes().decode("ascii", "backslashreplace") if size else None
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


class Folder:
    def __init__(self, window: float, emit: Callable[[dict], None]):
        self.window = window
        self.emit = emit
        self._open: dict[tuple, list] = {}   # key -> [window start, pending alert or None]

    def add(self, items: list[tuple[tuple, dict]]) -> None:
        if self.window <= 0:
            for _, alert in items:
                self.emit(alert)
            return
        for key, alert in items:
            state = self._open.get(key)
            t = alert["ts"]
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
