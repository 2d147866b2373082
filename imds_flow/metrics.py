"""Counters' reporting: rate-limited logging of decode errors and a periodic one-line summary."""
from __future__ import annotations

import logging

import numpy as np

from .exporters import ExporterTable
from .wire.errors import REASONS

__all__ = ["ErrorLog", "Latency", "summary_line", "STAT_KEYS"]

log = logging.getLogger("imds_flow")


class ErrorLog:
    """Logs decode errors at most once per (exporter, reason) per `interval` seconds."""

    def __init__(self, exporters: ExporterTable, interval: float):
        self.exporters = exporters
        self.interval = interval
        self._last: dict[tuple[int, int], float] = {}
        self._held: dict[tuple[int, int], int] = {}

    def report(self, exp_ids: np.ndarray, status: np.ndarray, now: float) -> None:
        bad = np.flatnonzero(status)
        if not len(bad):
            return
        pairs, counts = np.unique(np.stack([exp_ids[bad], status[bad]]), axis=1, return_counts=True)
        for (e, code), k in zip(pairs.T.tolist(), counts.tolist()):
            key = (e, code)
            held = self._held.get(key, 0) + k
            if now - self._last.get(key, -1e18) < self.interval:
                self._held[key] = held
                continue
            self._last[key] = now
            self._held[key] = 0
            log.warning("exporter %s:%d: %d datagram(s) rejected: %s (total %d)",
                        self.exporters.address[e], self.exporters.port[e], held, REASONS[code].replace("_", " "),
                        self.exporters.errors(e).get(REASONS[code], 0))


class Latency:
    """Alert latency (datagram arrival to alert written) in log-spaced buckets: cheap to add to,
    mergeable across workers, quantiles to within one bucket (about 6 %)."""

    EDGES = np.concatenate([[0.0], np.geomspace(1e-6, 100.0, 320)])

    def __init__(self, counts: list[int] | None = None):
        self.counts = np.array(counts, np.int64) if counts is not None else np.zeros(len(self.EDGES), np.int64)

    def add(self, seconds: np.ndarray) -> None:
        if len(seconds):
            np.add.at(self.counts, np.searchsorted(self.EDGES, np.maximum(seconds, 0.0), side="right") - 1, 1)

    def merge(self, other: "Latency") -> None:
        self.counts += other.counts

    def quantile(self, q: float) -> float | None:
        total = int(self.counts.sum())
        if total == 0:
            return None
        i = int(np.searchsorted(np.cumsum(self.counts), q * total, side="left"))
        return float(self.EDGES[min(i + 1, len(self.EDGES) - 1)])   # the bucket's upper edge


# the numbers every summary line reports; workers send these to the parent, which adds them up
STAT_KEYS = ("exporters", "datagrams", "records", "rejected", "sequence_lost", "alerts", "suppressed")


def stats_of(exporters: ExporterTable, alerts: int, suppressed: int) -> dict:
    return {"exporters": len(exporters), "datagrams": exporters.total("datagrams"),
            "records": exporters.total("records"), "rejected": sum(exporters.total(r) for r in REASONS[1:]),
            "sequence_lost": int(exporters.seq_lost[:len(exporters)].sum()), "alerts": alerts,
            "suppressed": suppressed}


def summary_line(stats: dict, latency: Latency | None = None) -> str:
    line = (f"{stats['exporters']} exporters, {stats['datagrams']} datagrams, {stats['records']} records, "
            f"{stats['rejected']} rejected datagrams, {stats['sequence_lost']} records lost upstream "
            f"(sequence gaps), {stats['alerts']} alerts, {stats['suppressed']} suppressed")
    if latency is not None and (p50 := latency.quantile(0.5)) is not None:
        line += f", alert latency p50 {p50 * 1e3:.2f} ms p99 {latency.quantile(0.99) * 1e3:.2f} ms"
    return line
