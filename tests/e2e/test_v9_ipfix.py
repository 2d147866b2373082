"""End to end with real exporters over loopback: softflowd (NetFlow v9, IPFIX, IPFIX biflow) and
pmacct's pmacctd nfprobe (v9, IPFIX, with VLANs) export a scapy-written pcap to `imds-flow listen`;
the alerts are exactly the oracle's (tests/support/scenario.py), nothing missed, nothing extra."""
from __future__ import annotations

import pytest

from tests.support.collector import AWS_ENDPOINTS, Collector
from tests.support.exporters import require_tool, run_pmacctd, run_softflowd
from tests.support.scenario import SUPPRESS_SUBNETS, SUPPRESS_VLANS, build_scenario, expected_alert_flows

CONFIG = AWS_ENDPOINTS + f'''[suppress]
source_subnets = {list(SUPPRESS_SUBNETS)!r}
vlans = {list(SUPPRESS_VLANS)!r}
[alerts]
fold_window_seconds = 0
[templates]
state_file = "STATE"
'''.replace("'", '"')

FIELDS = ("src", "dst", "sport", "dport", "proto", "vlan", "endpoint", "direction", "packets", "bytes")


def rows(alerts):
    return sorted(tuple(a[k] for k in FIELDS) for a in alerts)


def run_case(tmp_path, export, version, want_count):
    cfg = CONFIG.replace("STATE", str(tmp_path / "templates.json"))
    with Collector(tmp_path, cfg) as c:
        export(c.port)
        c.wait_alerts(want_count, timeout=30)
        alerts = c.stop()
    assert "Traceback" not in c.log
    assert all(a["version"] == version and a["count"] == 1 for a in alerts)
    assert (tmp_path / "templates.json").exists()                 # templates persisted at close
    return alerts, c.log


@pytest.mark.parametrize("version", [9, 10])
def test_softflowd(tmp_path, version):
    require_tool("softflowd")
    scenario = build_scenario()
    pcap = scenario.write_pcap(tmp_path / "traffic.pcap")
    want = expected_alert_flows(scenario, suppress_subnets=SUPPRESS_SUBNETS, suppress_vlans=SUPPRESS_VLANS,
                                padding_counted=True)
    alerts, log = run_case(tmp_path, lambda port: run_softflowd(pcap, port, version=version), version, len(want))
    assert rows(alerts) == rows(want), log


@pytest.mark.parametrize("version", [9, 10])
def test_pmacctd_nfprobe_with_vlans(tmp_path, version):
    require_tool("pmacctd")
    scenario = build_scenario()
    pcap = scenario.write_pcap(tmp_path / "traffic.pcap")
    want = expected_alert_flows(scenario, suppress_subnets=SUPPRESS_SUBNETS, suppress_vlans=SUPPRESS_VLANS)
    assert any(w["vlan"] for w in want)
    alerts, log = run_case(tmp_path, lambda port: run_pmacctd(pcap, port, version=version), version, len(want))
    assert rows(alerts) == rows(want), log


def _conversation(r) -> tuple:
    """A record's conversation: unordered endpoints (ports only for TCP/UDP), protocol, VLAN, endpoint."""
    ends = (r["src"], r["dst"]) if r["proto"] in (1, 58) else ((r["src"], r["sport"]), (r["dst"], r["dport"]))
    return (frozenset(ends), r["proto"], r["vlan"], r["endpoint"])


def test_softflowd_ipfix_biflow(tmp_path):
    """softflowd -b: one RFC 5103 record per conversation, ordered by address (not by who opened it),
    reverse counters under PEN 29305 (not ours: bytes / packets are the forward ones), tagged
    conversations split into an IE 58 and an IE 59 record. Exact at the conversation level: every
    conversation the oracle alerts on, and nothing else; each alert's direction follows its own
    addresses."""
    require_tool("softflowd")
    scenario = build_scenario()
    pcap = scenario.write_pcap(tmp_path / "traffic.pcap")
    want = expected_alert_flows(scenario, suppress_subnets=SUPPRESS_SUBNETS, suppress_vlans=SUPPRESS_VLANS)
    alerts, log = run_case(tmp_path, lambda port: run_softflowd(pcap, port, version=10, bidir=True), 10,
                           len({_conversation(w) for w in want}))
    assert {_conversation(a) for a in alerts} == {_conversation(w) for w in want}, log
    v4, v6 = "169.254.169.254", "fd00:ec2::254"
    for a in alerts:
        assert a["direction"] == ("request" if a["dst"] in (v4, v6) else "response"), a
