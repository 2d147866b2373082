"""Counters' reporting: rate-limited logging of decode errors and a periodic one-line summary."""
from __future__ import annotations

import logging

import numpy as np

from .exporters import ExporterTable
from .wire.errors import REASONS

__all__ = ["ErrorLog", "summary_line"]

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


def summary_line(exporters: ExporterTable, alerts: int, suppressed: int) -> str:
    errs = sum(exporters.total(r) for r in REASONS[1:])
    return (f"{len(exporters)} exporters, {exporters.total('datagrams')} datagrams, "
            f"{exporters.total('records')} records, {errs} rejected datagrams, "
            f"{int(exporters.seq_lost[:len(exporters)].sum())} records lost upstream (sequence gaps), "
            f"{alerts} alerts, {suppressed} suppressed")
