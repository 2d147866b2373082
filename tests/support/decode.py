"""One batch of datagrams through the exporter table and wire.decode, counted as the Pipeline counts
it: for unit tests that need an ExporterTable holding real packets' counters, without a Pipeline.
And the records of a decoded v9 / IPFIX datagram in the order its file holds them (file_order)."""
from __future__ import annotations

import numpy as np

from imds_flow import wire
from imds_flow.datagrams import DatagramBatch
from imds_flow.exporters import ExporterTable
from imds_flow.flows import FlowBatch
from imds_flow.wire.templates import VAR, record_lengths

__all__ = ["decode_batch", "file_order"]


def decode_batch(payloads: list[bytes], src, now: float = 0.0,
                 table: ExporterTable | None = None) -> tuple[ExporterTable, np.ndarray, np.ndarray]:
    """(table, exporter id per datagram, status per datagram); a new table on `now`'s clock unless given."""
    table = table if table is not None else ExporterTable(clock=lambda: now)
    batch = DatagramBatch.from_payloads(payloads, src=src, ts=now)
    ids = table.lookup(batch.src_hi, batch.src_lo, batch.sport)
    status = wire.decode(batch, ids, table, FlowBatch(8), records=table.records_column())
    table.count(ids, status, None, now=now)
    return table, ids, status


def file_order(payload: bytes, rows: list, table: ExporterTable, exporter: int) -> list:
    """The records of one decoded v9 / IPFIX datagram in file order: its flow `rows` as the decoder
    cut them (data set after data set, in file order; rows released from the pending buffer left
    out), with None for each options record. Read from the datagram's set headers and the
    templates `table` holds after the decode; a data set with no template (it waits) holds none."""
    version = int.from_bytes(payload[:2], "big")
    if version == 9:
        at, end, domain = 20, len(payload), int.from_bytes(payload[16:20], "big")
    else:
        at, end, domain = 16, min(len(payload), int.from_bytes(payload[2:4], "big")), int.from_bytes(payload[12:16], "big")
    scopes = table.templates
    key = (table.address[exporter], table.port[exporter] if scopes.scope_port else 0, version, domain)
    scope = scopes.scope_keys.index(key) if key in scopes.scope_keys else -1
    out, row = [], 0
    while at + 4 <= end:
        set_id, length = int.from_bytes(payload[at:at + 2], "big"), int.from_bytes(payload[at + 2:at + 4], "big")
        if length < 4 or at + length > end:
            break
        held = scopes.templates.get((scope << 16) | set_id) if set_id >= 256 and scope >= 0 else None
        if held is not None:
            template = held[2]
            count = _records(payload[at + 4:at + length], template.fields)
            if template.options:
                out += [None] * count
            else:
                out += rows[row:row + count]
                row += count
        at += length
    return out


def _records(body: bytes, fields) -> int:
    """Records of a data set body: whole records while at least a minimal one fits."""
    fixed, minimum = record_lengths(fields)
    if fixed > 0:
        return len(body) // fixed
    n = at = 0
    while len(body) - at >= minimum:
        for _, _, length in fields:
            if length == VAR:
                if at >= len(body):
                    return n
                length, at = body[at], at + 1
                if length == 255:
                    length, at = int.from_bytes(body[at:at + 2], "big"), at + 2
            at += length
        if at > len(body):
            return n
        n += 1
    return n
