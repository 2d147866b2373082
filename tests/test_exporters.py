"""exporters.py, the per-exporter state: one row per source (address, port) in order of arrival, stable
across batches, its first sighting from the injected clock; sFlow agents behind a source as rows of their
own; per-exporter counters from real packets (goflow2's NetFlow v5, a SonicWall IPFIX template and data
packet); v5 and IPFIX sequence gaps as one number per exporter in the snapshot."""
from __future__ import annotations

import struct

import numpy as np

from imds_flow.addr import to_hilo
from imds_flow.exporters import ExporterTable
from tests.support import mutate
from tests.support.decode import decode_batch

PAYLOADS = mutate.vendor_payloads()
V5 = PAYLOADS["goflow2/netflowlegacy_test_data.bin"][0]                         # 6 records
IPFIX_TEMPLATE = PAYLOADS["logstash-codec-netflow/benchmarks/ipfix_bench_sonicwall_tpl.bin"][0]
IPFIX_DATA = PAYLOADS["logstash-codec-netflow/benchmarks/ipfix_bench_sonicwall_data.bin"][0]  # 5 records
A, B, C = ("192.0.2.1", 2055), ("192.0.2.1", 2056), ("2001:db8::7", 4739)


def with_u32(payload: bytes, offset: int, value: int) -> bytes:
    out = bytearray(payload)
    struct.pack_into(">I", out, offset, value)
    return bytes(out)


def feed(table: ExporterTable, payloads: list[bytes], src, now: float = 1.0) -> np.ndarray:
    return decode_batch(payloads, src, now, table)[1]


def test_one_row_per_source_in_order_of_arrival_stable_across_batches():
    clock = [100.0]
    table = ExporterTable(clock=lambda: clock[0], capacity=2)                # it grows past its capacity
    assert feed(table, [V5] * 5, [A, B, A, C, B]).tolist() == [0, 1, 0, 2, 1]
    clock[0] = 200.0
    assert feed(table, [V5] * 3, [C, ("192.0.2.9", 2055), A]).tolist() == [2, 3, 0]
    assert list(zip(table.address, table.port)) == [A, B, C, ("192.0.2.9", 2055)]
    assert table.first_seen[:4].tolist() == [100.0, 100.0, 100.0, 200.0]
    assert table.column("datagrams")[:4].tolist() == [3, 2, 2, 1]


def test_sflow_agents_behind_one_source_are_rows_of_their_own():
    table = ExporterTable(clock=lambda: 0.0)
    src = feed(table, [V5], A)

    def agents(addresses, subs):
        hi, lo = np.array([to_hilo(a) for a in addresses], np.uint64).T
        return table.agents(np.repeat(src, len(subs)), hi, lo, np.array(subs, np.uint32)).tolist()

    assert agents(["10.0.0.1", "10.0.0.1", "10.0.0.2", "10.0.0.1"], [0, 1, 0, 0]) == [1, 2, 3, 1]
    assert agents(["10.0.0.2"], [0]) == [3]                                  # the one-agent batch path
    snap = table.snapshot()
    assert [(r["exporter"], r["exporter_port"], r.get("agent"), r.get("sub_agent")) for r in snap] == \
        [(*A, None, None), (*A, "10.0.0.1", 0), (*A, "10.0.0.1", 1), (*A, "10.0.0.2", 0)]


def test_counters_per_exporter_from_real_packets():
    table = ExporterTable(clock=lambda: 0.0)
    feed(table, [V5, V5, V5[:30], b"\x00\x07" + V5[2:], IPFIX_TEMPLATE, IPFIX_DATA], [A, A, B, B, C, C])
    snap = {(r["exporter"], r["exporter_port"]): r for r in table.snapshot()}
    assert [(snap[k]["datagrams"], snap[k]["records"]) for k in (A, B, C)] == [(2, 12), (2, 0), (2, 5)]
    assert table.errors(0) == {} and table.errors(2) == {}
    assert table.errors(1) == {"count_exceeds_datagram": 1, "unknown_version": 1}
    assert snap[C]["templates"] == 1
    assert table.total("datagrams") == 6 and table.total("records") == 17


def test_v5_and_ipfix_sequence_gaps_are_one_number_per_exporter():
    table = ExporterTable(clock=lambda: 0.0)
    seq5 = struct.unpack_from(">I", V5, 16)[0]
    feed(table, [V5, with_u32(V5, 16, seq5 + 6 + 10)], A)                    # v5 counts records: 10 missed
    seq = struct.unpack_from(">I", IPFIX_DATA, 8)[0]
    feed(table, [with_u32(IPFIX_TEMPLATE, 8, seq), IPFIX_DATA, with_u32(IPFIX_DATA, 8, seq + 5 + 7)], C)
    feed(table, [V5, V5], B)                                                 # the same number twice: no gap
    assert table.sequence_lost().tolist() == [10, 7, 0]
    assert [r["sequence_lost"] for r in table.snapshot()] == [10, 7, 0]


def test_columns_are_kept_between_batches_and_follow_the_table_when_it_grows():
    table = ExporterTable(capacity=2)
    feed(table, [V5] * 2, [A, B])
    kept = table.columns(("records", "datagrams"))
    assert table.columns(("records", "datagrams")) is kept                    # the same views, not rebuilt
    assert [c[:2].tolist() for c in kept] == [[6, 6], [1, 1]]
    feed(table, [V5] * 2, [C, ("192.0.2.9", 2055)])                           # past its capacity: it grows
    grown = table.columns(("records", "datagrams"))
    assert grown is not kept and len(grown[0]) >= 4
    grown[1][3] += 5                                                          # a kernel's write reaches the table
    assert table.total("datagrams") == 4 + 5
