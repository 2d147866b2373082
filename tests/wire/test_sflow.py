"""Every datagram of the sFlow corpus (tests/fixtures/sflow) through wire.decode, asserted against
MANIFEST.json: its corpus decode, tshark's independent decode and the upstream tests' values.

Each file is decoded in a fresh exporter state from one source address. Asserted per datagram: the
status (rejected exactly where a sample or flow record does not fit; NetFlow v5 on port 6343 decodes
as NetFlow), the exporter row's agent address and sub-agent id, the datagram sequence number, and
for every flow sample carrying a packet one row in order: sampling rate, interfaces, frame length,
addresses, protocol, ports (ICMP: type * 256 + code), VLANs from 802.1Q tags and the extended switch
record, the source id's sample sequence; samples and records skipped are counted exactly.
"""
from __future__ import annotations

import json

import pytest

from imds_flow import wire
from imds_flow.addr import from_hilo
from imds_flow.datagrams import DatagramBatch
from imds_flow.exporters import COUNTERS, ExporterTable
from imds_flow.flows import SFLOW, FlowBatch
from tests.support import corpus

ROOT = corpus.require(corpus.SFLOW)
MANIFEST = json.loads((ROOT / "MANIFEST.json").read_text())
ENTRIES = {e["file"]: e for e in MANIFEST["samples"]}
SOURCE = ("192.0.2.1", 6343)
FLOW_TYPES = ("flow_sample", "flow_sample_expanded")
USED = (1, 3, 4, 1001)


def _decode(data: bytes):
    dg = DatagramBatch.from_payloads([data], src=SOURCE, ts=1000.0)
    ex = ExporterTable()
    ids = ex.lookup(dg.src_hi, dg.src_lo, dg.sport)
    fb = FlowBatch(8)
    status = wire.decode(dg, ids, ex, fb)
    return int(status[0]), int(ids[0]), ex, fb


def _packet(sample: dict) -> dict | None:
    """What the manifest says the row of a flow sample holds, or None if the sample has no packet."""
    recs = sample.get("records", [])
    raw = next((r for r in recs if r["format"] == 1), None)
    sw = next((r for r in recs if r["format"] == 1001), None)
    vl = {"vlan_src": sw["src_vlan"] if sw else -1, "vlan_dst": sw["dst_vlan"] if sw else -1}
    if raw is not None and raw.get("decoded", {}).get("src_ip"):
        d = raw["decoded"]
        tags = [t["vid"] for t in d.get("vlans", [])] + [-1, -1]
        if "icmp_type" in d:
            sport, dport = 0, d["icmp_type"] * 256 + d["icmp_code"]
        else:
            sport, dport = d.get("src_port", 0), d.get("dst_port", 0)
        return {"src": d["src_ip"], "dst": d["dst_ip"], "proto": d["ip_protocol"], "sport": sport, "dport": dport,
                "bytes": raw["frame_length"], "vlan_dot1q": tags[0], "vlan_cust": tags[1], **vl}
    ip = next((r for r in recs if r["format"] in (3, 4)), None)
    if ip is not None:
        return {"src": ip["src_ip"], "dst": ip["dst_ip"], "proto": ip["protocol"], "sport": ip["src_port"],
                "dport": ip["dst_port"], "bytes": ip.get("length"), "vlan_dot1q": -1, "vlan_cust": -1, **vl}
    return None


def _iface(v: dict) -> int:
    return v.get("value", v.get("raw", 0) & 0x3FFFFFFF)


def _skipped_records(sample: dict) -> int:
    """Records of a flow sample the decoder does not use (the first raw header / sampled IP / switch
    record of a sample is used; a sampled IP record beside a decoded raw header is counted)."""
    seen, n = set(), 0
    raw_ok = _packet(sample) is not None and any(r["format"] == 1 for r in sample["records"])
    for r in sample["records"]:
        f = r["format"] if r.get("enterprise", 0) == 0 else -1
        if f in USED and f not in seen:
            seen.add(f)
            if f in (3, 4) and raw_ok and any(x["format"] == 1 and x.get("decoded", {}).get("src_ip")
                                              for x in sample["records"]):
                n += 1
        else:
            n += 1
    return n


@pytest.mark.parametrize("name", sorted(ENTRIES))
def test_corpus_datagram(name):
    e = ENTRIES[name]
    status, row, ex, fb = _decode((ROOT / name).read_bytes())
    caveats = set(e["caveats"])
    if "not_sflow" in caveats:                     # NetFlow v5 sent to the sFlow port: decoded as NetFlow
        assert status == 0 and fb.n > 0
        assert not (fb.view("row_flags") & SFLOW).any() and set(fb.view("version").tolist()) == {5}
        return
    errors = e.get("decode_errors") or []
    structural = [m for m in errors if "runs past" in m or m.startswith("header")]
    if structural:                                 # a sample or record that does not fit: rejected whole
        assert status != 0 and fb.n == 0
        assert wire.REASONS[status] in ("bad_sample", "too_short")
        return
    assert status == 0, wire.REASONS[status]
    h = e["header"]
    assert h["version"] == 5
    assert ex.agent[row] == h["agent_address"] and ex.sub_agent[row] == h["sub_agent_id"]
    assert ex.address[row] == SOURCE[0] and ex.port[row] == SOURCE[1]
    assert int(ex.seq_next[row]) == (h["sequence_number"] + 1) & 0xFFFFFFFF
    samples = e["samples"]
    assert len(samples) == h["num_samples"]
    want = []
    skipped_samples = skipped_records = 0
    for s in samples:
        pkt = _packet(s) if s["type"] in FLOW_TYPES and s.get("enterprise", 0) == 0 else None
        if pkt is None:
            skipped_samples += 1
            if s["type"] in FLOW_TYPES:
                skipped_records += _skipped_records(s)
            continue
        skipped_records += _skipped_records(s)
        want.append((s, pkt))
    assert fb.n == len(want)
    c = fb.cols
    for i, (s, pkt) in enumerate(want):
        got = {"src": from_hilo(int(c.src_hi[i]), int(c.src_lo[i])), "dst": from_hilo(int(c.dst_hi[i]), int(c.dst_lo[i])),
               "proto": int(c.proto[i]), "sport": int(c.sport[i]), "dport": int(c.dport[i]), "bytes": int(c.bytes[i]),
               "vlan_dot1q": int(c.vlan_dot1q[i]), "vlan_cust": int(c.vlan_cust[i]),
               "vlan_src": int(c.vlan_src[i]), "vlan_dst": int(c.vlan_dst[i])}
        assert got == pkt, (i, s["index"])
        assert int(c.exporter[i]) == row and int(c.packets[i]) == 1 and int(c.row_flags[i]) & SFLOW
        assert int(c.sampling_rate[i]) == s["sampling_rate"]
        assert int(c.in_if[i]) == _iface(s["input"]) and int(c.out_if[i]) == _iface(s["output"])
        assert ex.sflow.next_sequence(row, s["source_id_type"], s["source_id_index"]) is not None
    # the last flow sample of each source id set its next expected sequence number
    last = {}
    for s, _ in want:
        last[(s["source_id_type"], s["source_id_index"])] = s["sequence_number"]
    for (t, idx), seq in last.items():
        assert ex.sflow.next_sequence(row, t, idx) == (seq + 1) & 0xFFFFFFFF
    counters = dict(zip(COUNTERS, ex.counters[row].tolist()))
    assert counters["sflow_samples_skipped"] == skipped_samples
    assert counters["sflow_records_skipped"] == skipped_records


def _tshark_rows(e: dict) -> list[dict]:
    rows = []
    for s in e["tshark"].get("samples", []):
        for r in s.get("records", []):
            inner = r.get("inner_packet") or {}
            src = (inner.get("ip.src") or inner.get("ipv6.src") or [None])[0]
            if r.get("flow_record_format") == "1" and src:
                sport = (inner.get("tcp.srcport") or inner.get("udp.srcport") or ["0"])[0]
                dport = (inner.get("tcp.dstport") or inner.get("udp.dstport") or [None])[0]
                rows.append({"src": src, "dst": (inner.get("ip.dst") or inner.get("ipv6.dst"))[0],
                             "sport": int(sport), "dport": None if dport is None else int(dport),
                             "vlans": [int(v) for v in inner.get("vlan.id", [])],
                             "rate": int(s["sampling_rate"])})
    return rows


@pytest.mark.parametrize("name", sorted(n for n, e in ENTRIES.items()
                                        if e["tshark"].get("agrees_with_manifest_decode") and e.get("header")
                                        and "inconsistent_lengths_or_truncated" not in e["caveats"]))
def test_corpus_agrees_with_tshark(name):
    """Wireshark's sflow dissector, an independent decoder: every raw header it decoded to an IP
    packet is a row with the same addresses, ports, 802.1Q VLAN ids and sampling rate."""
    e = ENTRIES[name]
    status, row, ex, fb = _decode((ROOT / name).read_bytes())
    assert status == 0
    th = e["tshark"]
    assert int(th["header"]["sequence_number"]) + 1 == int(ex.seq_next[row])
    assert th["header"].get("agent", th["header"].get("agent.v6")) == ex.agent[row] and int(th["header"]["sub_agent_id"]) == ex.sub_agent[row]
    c = fb.cols
    rows = [{"src": from_hilo(int(c.src_hi[i]), int(c.src_lo[i])), "dst": from_hilo(int(c.dst_hi[i]), int(c.dst_lo[i])),
             "sport": int(c.sport[i]), "dport": int(c.dport[i]),
             "vlans": [v for v in (int(c.vlan_dot1q[i]), int(c.vlan_cust[i])) if v >= 0], "rate": int(c.sampling_rate[i])}
            for i in range(fb.n)]
    expected = _tshark_rows(e)
    assert len(expected) <= len(rows)
    it = iter(rows)
    for t in expected:                       # in order; rows from sampled IPv4/IPv6 records come between
        r = next(x for x in it if x["src"] == t["src"] and x["dst"] == t["dst"])
        if t["dport"] is not None:
            assert (r["sport"], r["dport"]) == (t["sport"], t["dport"])
        assert r["vlans"] == t["vlans"] and r["rate"] == t["rate"]


def _telegraf_metrics():
    for name, e in ENTRIES.items():
        for exp in e.get("upstream_expectations", []):
            if exp.get("source") == "telegraf-inputs-sflow" and exp.get("metrics"):
                yield name, exp


@pytest.mark.parametrize("name,exp", list(_telegraf_metrics()), ids=lambda v: v if isinstance(v, str) else v["test"])
def test_corpus_telegraf_expectations(name, exp):
    """Telegraf's inputs.sflow metrics (one per raw header record): agent, addresses, ports,
    interfaces, sampling rate, frame length and bytes = frame length * sampling rate."""
    status, row, ex, fb = _decode((ROOT / name).read_bytes())
    assert status == 0
    c = fb.cols
    assert fb.n == exp["expected_metric_count"] == len(exp["metrics"])
    for i, m in enumerate(exp["metrics"]):
        t, f = m["tags"], m["fields"]
        assert ex.agent[row] == t["agent_address"]
        assert from_hilo(int(c.src_hi[i]), int(c.src_lo[i])) == t["src_ip"]
        assert from_hilo(int(c.dst_hi[i]), int(c.dst_lo[i])) == t["dst_ip"]
        if "src_port" in t:
            assert (int(c.sport[i]), int(c.dport[i])) == (int(t["src_port"]), int(t["dst_port"]))
        assert int(c.in_if[i]) == int(t["input_ifindex"]) and int(c.out_if[i]) == int(t["output_ifindex"])
        assert int(c.sampling_rate[i]) == f["sampling_rate"] and int(c.bytes[i]) == f["frame_length"]
        assert int(c.bytes[i]) * int(c.sampling_rate[i]) == f["bytes"]


def test_corpus_as_one_batch():
    """All 105 payloads in one batch from one source: the same rows as one at a time (a rejected
    datagram costs only itself), and one exporter row per (source, agent, sub-agent)."""
    names = sorted(ENTRIES)
    payloads = [(ROOT / n).read_bytes() for n in names]
    dg = DatagramBatch.from_payloads(payloads, src=SOURCE, ts=1000.0)
    ex = ExporterTable()
    ids = ex.lookup(dg.src_hi, dg.src_lo, dg.sport)
    fb = FlowBatch(8)
    status = wire.decode(dg, ids, ex, fb)
    total = 0
    for k, n in enumerate(names):
        st, _, _, one = _decode(payloads[k])
        assert status[k] == st, n
        total += one.n
    assert fb.n == total
    agents = {(ex.agent[i], ex.sub_agent[i]) for i in range(len(ex)) if ex.agent[i] is not None}
    want = {(e["header"]["agent_address"], e["header"]["sub_agent_id"]) for e in ENTRIES.values()
            if e.get("header") and "agent_address" in e["header"] and "not_sflow" not in e["caveats"]
            and not any("runs past sample" in m for m in e.get("decode_errors") or [])} - {(None, None)}
    assert agents >= {a for a in want if a[0] is not None}


# the keep test: an IPv4 packet's addresses against the IPv4 endpoints' low words only, in one pass;
# the same answer as kernels.match_net on both addresses, for any endpoint table and address
import numpy as np  # noqa: E402
from hypothesis import given, settings, strategies as st  # noqa: E402

from imds_flow.addr import network_hilo, to_hilo  # noqa: E402
from imds_flow.kernels import match_net  # noqa: E402
from imds_flow.wire import packet, sflow  # noqa: E402

_NETS = ["169.254.169.254", "169.254.0.0/16", "10.0.0.0/8", "0.0.0.0/0", "fd00:ec2::254", "::/0",
         "::ffff:169.254.169.254", "::ffff:0:0/96", "::a9fe:a9fe", "100.100.100.200/31"]
_ADDRS = ["169.254.169.254", "169.254.1.1", "10.1.2.3", "100.100.100.201", "192.0.2.1", "0.0.0.0",
          "255.255.255.255"]


@settings(max_examples=300, deadline=None)
@given(st.lists(st.sampled_from(_NETS), max_size=5), st.sampled_from(_ADDRS), st.sampled_from(_ADDRS),
       st.sampled_from(["4", "6", "mapped6"]))
def test_in_endpoint_is_match_net(nets, src, dst, family):
    import ipaddress
    table = [network_hilo(n) for n in nets]
    cols = [np.array(col, np.uint64) for col in zip(*table)] if table else [np.zeros(0, np.uint64)] * 4
    v4 = np.array([ipaddress.ip_network(n, strict=False).version == 4 for n in nets], np.bool_)
    r = packet.scratch()
    for slot, text in ((packet.S_SRC_HI, src), (packet.S_DST_HI, dst)):
        a = ipaddress.ip_address(text)
        if family == "6":       # an IPv6 packet: the IPv4 text as the low 32 bits of an IPv6 address
            a = ipaddress.IPv6Address(int(a))
        r[slot], r[slot + 1] = to_hilo(a)
    want = any(match_net(np.uint64(r[s]), np.uint64(r[s + 1]), *cols, v4) >= 0
               for s in (packet.S_SRC_HI, packet.S_DST_HI))
    assert sflow._in_endpoint(4 if family == "4" else 6, r, *cols, v4) == want



def test_a_rejected_datagram_takes_back_its_rows_and_counts():
    """One walk checks and decodes: when a later sample does not fit, the rows and counts of the
    samples before it are taken back (no row, no record, no sequence number tracked), and the
    datagrams around it decode as usual."""
    import struct
    from imds_flow import build

    def imds(seq):
        return build.packet_sample(seq, build.frame("10.0.0.1", "169.254.169.254", 40000, 80))
    overrun = build.flow_sample(9, [struct.pack(">II", 1, 10_000) + bytes(16)])   # its record runs past it
    dg = DatagramBatch.from_payloads([build.sflow([imds(5)], seq=1), build.sflow([imds(6), imds(7), overrun], seq=2),
                                      build.sflow([imds(8)], seq=3)], src=SOURCE, ts=1000.0)
    ex = ExporterTable()
    ids = ex.lookup(dg.src_hi, dg.src_lo, dg.sport)
    fb = FlowBatch(8)
    status = wire.decode(dg, ids, ex, fb)
    assert [wire.REASONS[s] for s in status] == ["ok", "bad_sample", "ok"]
    assert fb.n == 2 and list(fb.view("sport")) == [40000, 40000]
    row = int(ids[0])
    assert int(ex.column("records")[row]) == 2
    assert int(ex.seq_lost[row]) == 2                 # samples 6 and 7 went with their datagram
    assert int(ex.column("sflow_datagrams_lost")[row]) == 1
    assert ex.sflow.next_sequence(row, 0, 7) == 9
    whole = build.sflow([imds(6), imds(7)], seq=2)   # the same samples without the bad one: two rows
    assert _decode(whole)[3].n == 2


def test_the_kernel_never_writes_past_its_columns():
    """Columns too short for the rows (wire.decode never gives such): the kernel stops at the first
    datagram that does not fit, takes back that datagram's rows and decodes nothing after it."""
    import numpy as np
    from imds_flow import build

    def imds(seq):
        return build.packet_sample(seq, build.frame("10.0.0.1", "169.254.169.254", 40000 + seq, 80))
    dg = DatagramBatch.from_payloads([build.sflow([imds(1)], seq=1), build.sflow([imds(2), imds(3)], seq=2),
                                      build.sflow([imds(4)], seq=3)], src=SOURCE, ts=1000.0)
    rows = FlowBatch(2).rows[:2]
    rows[:] = np.zeros(2, rows.dtype)
    st = sflow.SflowState()
    tally = tuple(np.zeros(1, np.int64) for _ in sflow.TALLY)
    seq = (np.zeros(1, np.uint32), np.zeros(1, np.bool_), np.zeros(1, np.int64))
    status = np.zeros(3, np.int16)
    ep = (np.zeros(0, np.uint64),) * 4 + (np.zeros(0, np.bool_),)
    n = sflow.decode_datagrams((dg.buf, dg.offs, dg.lens, dg.ts), np.arange(3, dtype=np.int64), np.zeros(3, np.int32),
                               rows[:1], 0, status, tally, seq, st.sources, st.http,
                               False, ep)
    assert n == 1 and int(rows[0]["sport"]) == 40001
    assert all(rows[1][name] == 0 for name in rows.dtype.names)   # never touched
    assert int(tally[0][0]) == 1 and list(status) == [0, 0, 0]  # the second and third: not decoded, not counted
