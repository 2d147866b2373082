"""Detection: endpoint and suppression tables built once from the config; wraps kernels.py."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from . import kernels
from .addr import network_hilo
from .config import Config
from .flows import FlowBatch
from .grow import grow

__all__ = ["Detector", "Hits", "REQUEST", "RESPONSE", "DIRECTIONS"]

REQUEST = kernels.REQUEST
RESPONSE = kernels.RESPONSE
DIRECTIONS = ("request", "response")


def _net_table(networks) -> tuple[np.ndarray, ...]:
    """(net_hi, net_lo, mask_hi, mask_lo, is_v4) arrays for kernels.match_net."""
    networks = list(networks)
    rows = [network_hilo(str(n)) for n in networks]
    cols = list(zip(*rows)) if rows else [(), (), (), ()]
    v4 = np.array([n.version == 4 for n in networks], dtype=np.bool_)
    return (*(np.array(col, dtype=np.uint64) for col in cols), v4)


@dataclass
class Hits:
    """Rows of a FlowBatch that alert: row index, endpoint index (into Detector.names), direction."""
    idx: np.ndarray
    endpoint: np.ndarray
    direction: np.ndarray
    suppressed: int
    signals: tuple[str, ...] = ()      # per endpoint index: "address", "url" or "header"
    header_names: tuple[str, ...] = () # bit k of FlowBatch.headers is header_names[k]

    def __len__(self) -> int:
        return len(self.idx)

    def subset(self, sel: np.ndarray) -> "Hits":
        """The hits at positions `sel`, with the same endpoint meanings (suppressed not carried)."""
        return Hits(self.idx[sel], self.endpoint[sel], self.direction[sel], 0, self.signals, self.header_names)


class Detector:
    """Immutable once built; a config reload builds a new one and swaps it in whole."""

    def __init__(self, config: Config, url_patterns: tuple[str, ...] = (), header_names: tuple[str, ...] | None = None):
        header_names = config.http.header_names if header_names is None else header_names
        self.names = tuple(e.name for e in config.endpoints) + tuple(f"url:{u}" for u in url_patterns) + \
            tuple(f"header:{h.lower()}" for h in header_names[:32])
        self.n_endpoints = len(config.endpoints)
        self.n_urls = len(url_patterns)
        # what matched, per endpoint index: "address", "url" or "header"
        self.header_names = tuple(h.lower() for h in header_names[:32])
        self.signals = ("address",) * self.n_endpoints + ("url",) * self.n_urls + ("header",) * len(header_names[:32])
        self._ep = _net_table(e.network for e in config.endpoints)
        self.endpoints = self._ep             # for wire.decode(keep=...): rows that may alert
        self._sup = _net_table(config.suppress.source_subnets)
        self._vlans = np.zeros(4096, dtype=np.bool_)
        self._vlans[list(config.suppress.vlans)] = True
        self._idx = np.empty(4096, np.int64)  # detect_batch's output: hit rows, endpoints, directions
        self._epi = np.empty(4096, np.int32)
        self._dir = np.empty(4096, np.uint8)
        self._tables()

    @staticmethod
    def _scratch_counts(batch: FlowBatch) -> np.ndarray:
        # a strided column, the layout of an exporter-table column: one compiled kernel serves both
        top = int(batch.view("exporter").max()) + 1 if batch.n else 1
        return np.zeros((top, 2), np.int64)[:, 0]

    def run(self, batch: FlowBatch, suppressed_by_exporter: np.ndarray | None = None,
            alerted_by_exporter: np.ndarray | None = None) -> Hits:
        """Hits of `batch`; each suppressed record also counts in suppressed_by_exporter[exporter]
        and each hit in alerted_by_exporter[exporter] (columns of the exporter table: the
        per-exporter `suppressed` and `alert_records` counters)."""
        self.room(batch.n)
        if suppressed_by_exporter is None:
            suppressed_by_exporter = self._scratch_counts(batch)
        if alerted_by_exporter is None:
            alerted_by_exporter = self._scratch_counts(batch)
        hits, suppressed = kernels.detect_batch(batch.rows, batch.n, self._ep, *self.tables,
                                                suppressed_by_exporter, alerted_by_exporter)
        return self.hits(hits, suppressed)

    def room(self, rows: int) -> None:
        """Output room for a batch of `rows` records (every one may be a hit)."""
        if rows > len(self._idx):
            self._idx, self._epi, self._dir = (grow(a, rows, keep=False) for a in (self._idx, self._epi, self._dir))
            self._tables()

    def _tables(self) -> None:
        # detect_batch's arguments after (rows, n, endpoints) and before the per-exporter counts
        self.tables = (self._sup, self._vlans, self.n_endpoints, self.n_urls, self._idx, self._epi, self._dir)

    def hits(self, count: int, suppressed: int) -> Hits:
        """The Hits detect_batch wrote (its first `count` outputs)."""
        return Hits(self._idx[:count], self._epi[:count], self._dir[:count], int(suppressed), self.signals,
                    self.header_names)
