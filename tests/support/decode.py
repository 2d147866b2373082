"""One batch of datagrams through the exporter table and wire.decode, counted as the Pipeline counts
it: for unit tests that need an ExporterTable holding real packets' counters, without a Pipeline."""
from __future__ import annotations

import numpy as np

from imds_flow import wire
from imds_flow.datagrams import DatagramBatch
from imds_flow.exporters import ExporterTable
from imds_flow.flows import FlowBatch

__all__ = ["decode_batch"]


def decode_batch(payloads: list[bytes], src, now: float = 0.0,
                 table: ExporterTable | None = None) -> tuple[ExporterTable, np.ndarray, np.ndarray]:
    """(table, exporter id per datagram, status per datagram); a new table on `now`'s clock unless given."""
    table = table if table is not None else ExporterTable(clock=lambda: now)
    batch = DatagramBatch.from_payloads(payloads, src=src, ts=now)
    ids = table.lookup(batch.src_hi, batch.src_lo, batch.sport)
    status = wire.decode(batch, ids, table, FlowBatch(8), records=table.records_column())
    table.count(ids, status, None, now=now)
    return table, ids, status
