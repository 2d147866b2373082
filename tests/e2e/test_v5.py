"""End to end with a real exporter: softflowd turns a scapy-written pcap into NetFlow v5 that
`imds-flow listen` receives over loopback; the alerts are exactly the oracle's. The export is
captured off the wire with dumpcap and `imds-flow replay` of it gives the same alerts."""
import subprocess
import sys

from tests.support.capture import LoopbackCapture
from tests.support.collector import AWS_ENDPOINTS, Collector, read_alerts
from tests.support.exporters import require_tool, run_softflowd
from tests.support.scenario import SUPPRESS_SUBNETS, SUPPRESS_VLANS, build_scenario, expected_alert_flows

CONFIG = AWS_ENDPOINTS + f'''[suppress]
source_subnets = {list(SUPPRESS_SUBNETS)!r}
vlans = {list(SUPPRESS_VLANS)!r}
[alerts]
fold_window_seconds = 0
'''.replace("'", '"')

FIELDS = ("src", "dst", "sport", "dport", "proto", "vlan", "endpoint", "direction", "packets", "bytes")


def as_rows(alerts):
    return sorted(tuple(a[k] for k in FIELDS) for a in alerts)


def test_softflowd_v5_live_and_replay(tmp_path):
    require_tool("softflowd")
    require_tool("dumpcap")
    scenario = build_scenario()
    pcap = scenario.write_pcap(tmp_path / "traffic.pcap")
    # v5 carries neither IPv6 nor VLANs: those flows are not exported / VLAN suppression cannot apply
    want = expected_alert_flows(scenario, suppress_subnets=SUPPRESS_SUBNETS, suppress_vlans=SUPPRESS_VLANS,
                                ipv6=False, vlan_visible=False, padding_counted=True)
    assert len(want) > 10
    with Collector(tmp_path, CONFIG) as c:
        cap = LoopbackCapture(tmp_path / "export.pcapng", c.port)
        run = run_softflowd(pcap, c.port, version=5)
        live = c.wait_alerts(len(want), timeout=30)
        export = cap.stop()
        live = c.stop()
    assert as_rows(live) == as_rows([{**w} for w in want]), c.log
    assert all(a["count"] == 1 and a["version"] == 5 and a["exporter"] == "127.0.0.1" for a in live)
    assert "0 rejected datagrams" in c.log and "Traceback" not in c.log
    assert run.returncode == 0

    r = subprocess.run([sys.executable, "-m", "imds_flow.cli", "replay", str(export), "--config",
                        str(c.config_path), "--alerts", str(tmp_path / "replay.mp")],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    replayed = read_alerts(tmp_path / "replay.mp")
    assert as_rows(replayed) == as_rows(live)
    assert {(a["exporter"], a["exporter_port"]) for a in replayed} == {(a["exporter"], a["exporter_port"]) for a in live}
