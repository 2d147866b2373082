"""NetFlow v5 decoding: real packets, the batch kernel's error handling, sequence tracking, totality."""
import json
import struct

import pytest
from hypothesis import given, settings, strategies as st

from imds_flow import wire
from imds_flow.addr import from_hilo
from imds_flow.build import v5
from imds_flow.datagrams import DatagramBatch
from imds_flow.exporters import ExporterTable
from imds_flow.flows import FlowBatch
from imds_flow.wire.errors import REASONS, DecodeError


def decode(payloads, src=("192.0.2.1", 2055)):
    dg = DatagramBatch.from_payloads(payloads, src=src, ts=1.0)
    table = ExporterTable(clock=lambda: 0.0)
    ids = table.lookup(dg.src_hi, dg.src_lo, dg.sport)
    out = FlowBatch(8)
    status = wire.decode(dg, ids, table, out)
    table.count(ids, status, out.view("exporter"), now=1.0)
    return out, status, table


def test_logstash_netflow5_all_twelve_messages(vendors):
    data = (vendors / "logstash-codec-netflow/netflow5.bin").read_bytes()
    manifest = json.loads((vendors / "MANIFEST.json").read_text())
    sample = next(s for s in manifest["samples"] if s["file"] == "logstash-codec-netflow/netflow5.bin")
    msgs = [data[m["offset"]: m["offset"] + m["length"]] for m in sample["messages_in_file"]]
    out, status, table = decode(msgs)
    assert status.tolist() == [0] * 12
    assert out.n == sum(m["records"] for m in sample["messages_in_file"])
    for exp in sample["expected_records"]:
        i, f = exp["record_index_in_file"], exp["fields"]
        c = out.cols
        assert from_hilo(c.src_hi[i], c.src_lo[i]) == f["ipv4_src_addr"]
        assert from_hilo(c.dst_hi[i], c.dst_lo[i]) == f["ipv4_dst_addr"]
        assert (c.in_if[i], c.out_if[i]) == (f["input_snmp"], f["output_snmp"])
        assert (c.packets[i], c.bytes[i]) == (f["in_pkts"], f["in_bytes"])
        assert (c.sport[i], c.dport[i], c.proto[i]) == (f["l4_src_port"], f["l4_dst_port"], f["protocol"])
        assert c.version[i] == 5
        assert c.vlan_src[i] == -1 and c.row_flags[i] == 0 and c.url[i] == -1
    # softflowd's flow_sequence runs on without gaps across the twelve messages
    assert table.seq_lost[0] == 0


@pytest.mark.parametrize("name", ["netflow5_test_juniper_mx80.bin", "netflow5_test_microtik.bin"])
def test_vendor_first_record(vendors, name):
    manifest = json.loads((vendors / "MANIFEST.json").read_text())
    sample = next(s for s in manifest["samples"] if s["file"].endswith(name))
    out, status, _ = decode([(vendors / sample["file"]).read_bytes()])
    assert status.tolist() == [0] and out.n == sample["data_records"]
    for exp in sample["expected_records"]:
        i, f = exp["record_index_in_file"], exp["fields"]
        assert from_hilo(out.cols.src_hi[i], out.cols.src_lo[i]) == f["ipv4_src_addr"]
        assert from_hilo(out.cols.dst_hi[i], out.cols.dst_lo[i]) == f["ipv4_dst_addr"]
        assert (out.cols.bytes[i], out.cols.packets[i]) == (f["in_bytes"], f["in_pkts"])
        assert (out.cols.sport[i], out.cols.dport[i]) == (f["l4_src_port"], f["l4_dst_port"])


def test_telegraf_all_records(vendors):
    expected = json.loads((vendors / "telegraf/netflow_v5_example/expected.json").read_text())
    out, status, _ = decode([(vendors / "telegraf/netflow_v5_example/netflow_v5.bin").read_bytes()])
    got = {(from_hilo(out.cols.src_hi[i], out.cols.src_lo[i]), int(out.cols.sport[i]),
            from_hilo(out.cols.dst_hi[i], out.cols.dst_lo[i]), int(out.cols.dport[i]),
            int(out.cols.bytes[i]), int(out.cols.packets[i])) for i in range(out.n)}
    metrics = expected["metrics"] if isinstance(expected, dict) else expected
    want = set()
    for m in metrics:
        f = m.get("fields", m)
        want.add((f["src"], f["src_port"], f["dst"], f["dst_port"], f["in_bytes"], f["in_packets"]))
    assert got == want


@pytest.mark.parametrize("name", ["netflow5_test_invalid01.bin", "netflow5_test_invalid02.bin"])
def test_invalid_count_is_counted_and_neighbours_survive(vendors, name):
    bad = (vendors / "logstash-codec-netflow" / name).read_bytes()
    good = v5([("10.0.0.1", "169.254.169.254", 40000, 80)])
    out, status, table = decode([good, bad, good])
    assert [REASONS[s] for s in status] == ["ok", "count_exceeds_datagram", "ok"]
    assert out.n == 2
    assert table.errors(0) == {"count_exceeds_datagram": 1}


def test_bad_inputs_each_get_their_reason():
    good = v5([("10.0.0.1", "10.0.0.2", 1, 2)] * 3)
    cases = [b"", b"\x00", good[:20], good[:-1], b"\x00\x07" + good[2:], b"GET / HTTP/1.1\r\n\r\n", good]
    out, status, table = decode(cases)
    assert [REASONS[s] for s in status] == ["too_short", "too_short", "too_short", "count_exceeds_datagram",
                                           "unknown_version", "unknown_version", "ok"]
    assert out.n == 3
    assert table.total("datagrams") == len(cases) and table.total("records") == 3


def test_sequence_gaps_are_wrap_safe():
    recs = [("10.0.0.1", "10.0.0.2", 1, 2)] * 2
    seqs = [0xFFFFFFFE, 0, 5, 7]       # 0xFFFFFFFE + 2 wraps to 0 (no gap); 0 + 2 = 2, got 5 (3 lost)
    _, status, table = decode([v5(recs, seq=s) for s in seqs])
    assert status.tolist() == [0, 0, 0, 0]
    assert table.seq_lost[0] == 3


def test_times_and_sampling_from_the_header():
    pkt = v5([("10.0.0.1", "10.0.0.2", 1, 2)], uptime=100_000, secs=1_700_000_000, nsecs=500_000_000,
             sampling=(1 << 14) | 100)
    out = wire.decode_one(pkt)
    assert out.cols.first_seen[0] == pytest.approx(1_700_000_000.5 - 5.0)
    assert out.cols.last_seen[0] == pytest.approx(1_700_000_000.5 - 1.0)
    assert out.cols.sampling_rate[0] == 100


def test_exporters_are_told_apart():
    pkt = v5([("10.0.0.1", "10.0.0.2", 1, 2)])
    dg = DatagramBatch.from_payloads([pkt] * 4, src=[("192.0.2.1", 2055), ("192.0.2.1", 2056),
                                                     ("2001:db8::1", 2055), ("192.0.2.1", 2055)])
    table = ExporterTable(clock=lambda: 0.0)
    ids = table.lookup(dg.src_hi, dg.src_lo, dg.sport)
    assert ids.tolist() == [0, 1, 2, 0]
    assert list(zip(table.address, table.port)) == [("192.0.2.1", 2055), ("192.0.2.1", 2056), ("2001:db8::1", 2055)]


@settings(max_examples=500, deadline=None)
@given(st.one_of(st.binary(max_size=200),
                 st.binary(max_size=400).map(lambda b: b"\x00\x05" + b),
                 st.tuples(st.integers(0, 40), st.binary(max_size=1500)).map(
                     lambda t: struct.pack("!HH", 5, t[0]) + t[1])))
def test_decoder_is_total(data):
    try:
        out = wire.decode_one(data)
    except DecodeError as e:
        assert e.reason in REASONS
    else:
        assert out.n == struct.unpack_from("!H", data, 2)[0]
