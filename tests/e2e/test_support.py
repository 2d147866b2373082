"""tests/support works and tells the truth: the scenario pcap, the exporter drivers and the oracle agree
with what softflowd 1.1.0 and pmacct 1.7.7 really export, decoded independently by Wireshark (tshark).
"""

from __future__ import annotations

import ipaddress
import socket

import pytest
from scapy.layers.l2 import Dot1Q
from scapy.packet import Padding, Raw
from scapy.utils import rdpcap

from tests.support import exporters
from tests.support.exporters import (
    capture_udp,
    require_tool,
    run_pmacctd,
    run_softflowd,
    tshark_records,
    write_export_pcap,
)
from tests.support.scenario import (
    ENDPOINTS,
    IMDS_V4,
    SUPPRESS_SUBNETS,
    SUPPRESS_VLANS,
    build_scenario,
    expected_alert_flows,
    flow_key,
)

ENDPOINT_NETS = [ipaddress.ip_network(address) for _, address in ENDPOINTS]
ICMP = (1, 58)


@pytest.fixture(scope="module")
def scenario():
    return build_scenario()


@pytest.fixture(scope="module")
def scenario_pcap(scenario, tmp_path_factory):
    return scenario.write_pcap(tmp_path_factory.mktemp("scenario") / "scenario.pcap")


def _export(tmp_path, run, **options):
    """Run one exporter against a fresh capture; the export as datagrams and as tshark records."""
    capture = capture_udp(until_idle=0.5, timeout=90)
    try:
        result = run(port=capture.port, **options)
    finally:
        datagrams = capture.wait()
    pcap = write_export_pcap(datagrams, tmp_path / "export.pcap", capture.port)
    return result, datagrams, tshark_records(pcap, capture.port)


def _touches_endpoint(record: dict) -> bool:
    src, dst = ipaddress.ip_address(record["src"]), ipaddress.ip_address(record["dst"])
    return any(src in net or dst in net for net in ENDPOINT_NETS)


def _row(record: dict) -> tuple:
    return (*flow_key(record), record["packets"], record["bytes"])


def _rows(records) -> list[tuple]:
    return sorted((_row(r) for r in records), key=str)


# --- the scenario -----------------------------------------------------------------------------------


def test_scenario_is_deterministic_and_round_trips_through_a_pcap(scenario, scenario_pcap):
    again = build_scenario()
    assert [bytes(f) for f in again.frames()] == [bytes(f) for f in scenario.frames()]
    assert [f.time for f in again.frames()] == [f.time for f in scenario.frames()]
    assert [bytes(f) for f in build_scenario(seed=1).frames()] != [bytes(f) for f in scenario.frames()]

    frames = rdpcap(str(scenario_pcap))
    assert len(frames) == scenario.packet_count
    assert 150 <= len(frames) <= 500 and 20 <= len(scenario.flows) <= 80
    times = [float(f.time) for f in frames]
    assert all(a < b for a, b in zip(times, times[1:]))
    assert 15 < times[-1] - times[0] < 20
    assert {f[Dot1Q].vlan for f in frames if Dot1Q in f} == {10, 20, 30, 99}
    assert any(Padding in f for f in frames)  # short frames are padded as on a real wire

    payloads = b"".join(bytes(f[Raw].load) for f in frames if Raw in f)
    for needle in (b"GET /latest/meta-data/ HTTP/1.1", b"PUT /latest/api/token HTTP/1.1",
                   b"X-aws-ec2-metadata-token-ttl-seconds: 21600", b"X-aws-ec2-metadata-token: ",
                   b"Host: [fd00:ec2::254]"):
        assert needle in payloads


def test_oracle_agrees_with_the_scenario_intent(scenario):
    by_key = {flow.key: flow for flow in scenario.flows}
    alerts = expected_alert_flows(scenario)
    assert {flow_key(a) for a in alerts} == {f.key for f in scenario.flows if f.role}
    for alert in alerts:
        flow = by_key[flow_key(alert)]
        assert alert["direction"] == flow.role
        assert alert["endpoint"] == ("aws-imds-ipv6" if ":" in alert["src"] else "aws-imds-ipv4")
        assert (alert["packets"], alert["bytes"]) == (flow.packets, flow.ip_bytes)
    labels = {flow.label for flow in scenario.flows if flow.role}
    assert {"imds-syn-unanswered-v4", "imds-answers-only-v6", "ping-imds-v4", "imdsv2-token-v6"} <= labels

    quiet = expected_alert_flows(scenario, suppress_subnets=SUPPRESS_SUBNETS, suppress_vlans=SUPPRESS_VLANS)
    silenced = {by_key[flow_key(a)].label for a in alerts} - {by_key[flow_key(a)].label for a in quiet}
    assert silenced == {label for label in labels if "suppressed" in label}
    assert len(quiet) < len(alerts)


def test_oracle_views_for_netflow_v5(scenario):
    v5 = expected_alert_flows(scenario, suppress_vlans=SUPPRESS_VLANS, ipv6=False, vlan_visible=False)
    assert v5 and all(":" not in a["src"] and a["vlan"] is None for a in v5)
    # Without a VLAN field, VLAN suppression cannot apply: the VLAN 99 request is back.
    assert any(a["src"] == "192.168.99.5" for a in v5)
    # Records that differ only by VLAN stay separate records.
    full = expected_alert_flows(scenario, ipv6=False)
    assert len(v5) == len(full)


def test_oracle_counts_padding_only_when_asked(scenario):
    ip = {flow_key(a): a["bytes"] for a in expected_alert_flows(scenario)}
    framed = {flow_key(a): a["bytes"] for a in expected_alert_flows(scenario, padding_counted=True)}
    assert ip.keys() == framed.keys()
    assert all(framed[k] >= ip[k] for k in ip) and framed != ip


# --- the helpers ------------------------------------------------------------------------------------


def test_capture_and_export_pcap_keep_the_real_source(tmp_path):
    capture = capture_udp(until_idle=0.2, timeout=10)
    sender = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sender.bind(("127.0.0.1", 0))
    for i in range(3):
        sender.sendto(b"datagram %d" % i, ("127.0.0.1", capture.port))
    source = sender.getsockname()
    sender.close()
    datagrams = capture.wait()
    assert [(d, a) for d, a, _ in datagrams] == [(b"datagram %d" % i, source) for i in range(3)]

    frames = rdpcap(str(write_export_pcap(datagrams, tmp_path / "x.pcap", capture.port)))
    assert [(f["IP"].src, f["UDP"].sport, f["UDP"].dport, bytes(f["UDP"].payload)) for f in frames] == [
        ("127.0.0.1", source[1], capture.port, b"datagram %d" % i) for i in range(3)
    ]


def test_require_tool_skips_locally_and_fails_under_ci(monkeypatch):
    monkeypatch.setattr(exporters, "have_tool", lambda name: None)
    monkeypatch.delenv("CI", raising=False)
    with pytest.raises(pytest.skip.Exception):
        require_tool("softflowd")
    monkeypatch.setenv("CI", "true")
    with pytest.raises(pytest.fail.Exception):
        require_tool("softflowd")


# --- real exporters against the oracle --------------------------------------------------------------


@pytest.mark.parametrize("version", [5, 9, 10])
def test_softflowd_export_matches_the_oracle(version, scenario, scenario_pcap, tmp_path):
    run, datagrams, records = _export(tmp_path, lambda port: run_softflowd(scenario_pcap, port, version=version))

    v5 = version == 5
    flows = [f for f in scenario.flows if not (v5 and ":" in f.src)]
    assert len(records) == run.exported_records == len(flows)  # all exported, none lost in decoding
    assert all(r["version"] == version for r in records)
    if not v5:
        assert all(r["post_vlan"] is None for r in records)  # uniflow: IE 58 = VLAN, IE 59 = 0

    expected = expected_alert_flows(scenario, ipv6=not v5, vlan_visible=not v5, padding_counted=True)
    assert _rows(r for r in records if _touches_endpoint(r)) == _rows(expected)
    # Every flow, not only the alerting ones, has the oracle's counters (softflowd counts padding).
    everything = [(*f.key[:5], None if v5 else f.vlan, f.packets, f.frame_l3_bytes) for f in flows]
    assert _rows(records) == sorted(everything, key=str)


@pytest.mark.parametrize("version", [9, 10])
def test_pmacctd_export_matches_the_oracle(version, scenario, scenario_pcap, tmp_path):
    _, datagrams, records = _export(tmp_path, lambda port: run_pmacctd(scenario_pcap, port, version=version))

    assert len(records) == len(scenario.flows)
    assert len(datagrams) > 5  # small datagrams, about six records each
    expected = expected_alert_flows(scenario)  # pmacct counts IP total length: no padding
    assert _rows(r for r in records if _touches_endpoint(r)) == _rows(expected)


def _legs(record: dict):
    """The unidirectional flows inside one softflowd biflow record (VLAN in IE 58 or IE 59)."""
    vlan = record["vlan"] or record["post_vlan"]
    src, dst, sport, dport = record["src"], record["dst"], record["sport"], record["dport"]
    if record["packets"]:
        yield (*flow_key({**record, "vlan": vlan}), record["packets"], record["bytes"])
    if record["reverse_packets"]:
        reverse = {**record, "src": dst, "dst": src, "sport": dport, "dport": sport, "vlan": vlan}
        yield (*flow_key(reverse), record["reverse_packets"], record["reverse_bytes"])


def test_softflowd_biflow_orders_by_address_and_splits_tagged_conversations(scenario, scenario_pcap, tmp_path):
    run, _, records = _export(tmp_path, lambda port: run_softflowd(scenario_pcap, port, version=10, bidir=True))
    assert len(records) == run.exported_records

    # Forward is the lower address, not the connection opener: the client above 169.254.169.254
    # sent three SYNs and the record says 169.254.169.254 sent nothing.
    syn = [r for r in records if r["dst"] == "192.168.20.12"]
    assert [(r["src"], r["packets"], r["reverse_packets"]) for r in syn] == [(IMDS_V4, 0, 3)]
    # With -T vlan a tagged conversation is two records: IE 58 = VLAN with forward counters,
    # IE 58 = 0 and IE 59 = VLAN with reverse counters.
    tagged = [r for r in records if "192.168.10.30" in (r["src"], r["dst"]) and 80 in (r["sport"], r["dport"])
              and IMDS_V4 in (r["src"], r["dst"])]
    assert {(r["vlan"], r["post_vlan"], r["packets"] > 0, r["reverse_packets"] > 0) for r in tagged} == {
        (None, 10, False, True), (10, None, True, False)}
    assert len(tagged) == 2

    # Split back into directions, the biflow export is the oracle's, except that a reverse-only
    # ICMP record carries icmpTypeCode 0: the reverse direction's type is lost.
    expected = []
    for alert in expected_alert_flows(scenario, padding_counted=True):
        row = _row(alert)
        if alert["proto"] in ICMP and ipaddress.ip_address(alert["src"]) > ipaddress.ip_address(alert["dst"]):
            row = (*row[:3], 0, 0, *row[5:])
        expected.append(row)
    legs = [leg for r in records if _touches_endpoint(r) for leg in _legs(r)]
    assert sorted(legs, key=str) == sorted(expected, key=str)
