"""End to end with a real sFlow agent: pmacct's pmacctd (sfprobe plugin, 128-byte sampled headers)
exports a scapy-written capture of sampled-HTTP situations (tests/support/sflow_scenario.py) to
`imds-flow listen`; the alerts are exactly the scenario's, live and replayed from a dumpcap capture
of the export, and agree with Wireshark's sflow dissector (tshark) on the same datagrams."""
from __future__ import annotations

import json
import subprocess
import sys

import msgpack

from tests.support.capture import LoopbackCapture
from tests.support.collector import AWS_ENDPOINTS, Collector, read_alerts
from tests.support.exporters import require_tool, run_pmacctd_sfprobe
from tests.support.sflow_scenario import CONFIG_EXTRA, build, write_pcap

FIELDS = ("src", "dst", "sport", "dport", "proto", "endpoint", "direction", "signal", "http_method", "url",
          "headers", "vlan")
SECRETS = (b"AQAE", b"secret", b"21600", b"ASIAEXAMPLE", b"aws-sdk-go")


def _rows(alerts):
    return sorted(json.dumps([a[k] for k in FIELDS]) for a in alerts)


def _walk(obj, found):
    """Every raw packet header record of a tshark JSON tree, in order, as {field: [values]}."""
    if isinstance(obj, dict):
        if "sflow_245.header_tree" in obj:
            rec = {"frame_length": [obj.get("sflow_245.header.frame_length")]}
            _collect(obj["sflow_245.header_tree"], rec)
            found.append(rec)
            return
        for v in obj.values():
            _walk(v, found)
    elif isinstance(obj, list):
        for v in obj:
            _walk(v, found)


def _collect(obj, rec):
    if isinstance(obj, dict):
        for k, v in obj.items():
            if isinstance(v, (dict, list)):
                _collect(v, rec)
            else:
                rec.setdefault(k, []).append(v)
    elif isinstance(obj, list):
        for v in obj:
            _collect(v, rec)


def tshark_samples(pcap, port) -> list[dict]:
    out = subprocess.run(["tshark", "-r", str(pcap), "-d", f"udp.port=={port},sflow", "-T", "json",
                          "--no-duplicate-keys"], capture_output=True, text=True, timeout=120, check=True).stdout
    found: list[dict] = []
    _walk(json.loads(out), found)
    return found


def test_pmacctd_sfprobe_live_and_replay(tmp_path):
    require_tool("pmacctd")
    require_tool("dumpcap")
    require_tool("tshark")
    cases = build()
    pcap = write_pcap(cases, tmp_path / "traffic.pcap")
    want = [dict(c.want, vlan=c.want["vlan"] or 0) for c in cases if c.want]   # extended switch: VLAN 0 untagged
    with Collector(tmp_path, AWS_ENDPOINTS + CONFIG_EXTRA) as c:
        cap = LoopbackCapture(tmp_path / "export.pcapng", c.port)
        run = run_pmacctd_sfprobe(pcap, c.port)
        c.wait_alerts(len(want), timeout=30)
        export = cap.stop()
        live = c.stop()
        log = c.log
    assert run.returncode == 0
    assert _rows(live) == _rows(want), log
    assert "0 rejected datagrams" in log and "Traceback" not in log
    assert all(a["format"] == "sflow" and a["version"] == 5 and a["packets"] == 1 and a["sampling_rate"] == 1
               and a["count"] == 1 and a["exporter"] == "127.0.0.1" for a in live)
    # nothing of a header value or a payload leaves: not in an alert, not in the log
    raw = b"".join(msgpack.packb(a) for a in live)
    assert not any(s in raw or s.decode() in log for s in SECRETS)

    # Wireshark's decode of the same datagrams: one sample per frame sent, in order; the alert's frame
    # length, addresses, ports, VLAN, and (where tshark parsed HTTP) method and request-target agree
    samples = tshark_samples(export, c.port)
    assert len(samples) == len(cases)
    by_port = {((s.get("ip.src") or s.get("ipv6.src"))[0], int(s["tcp.srcport"][0])): s for s in samples}
    for a in live:
        s = by_port[(a["src"], a["sport"])]
        assert int(s["frame_length"][0]) == a["bytes"]
        assert (s.get("ip.src") or s.get("ipv6.src"))[0] == a["src"]
        assert (s.get("ip.dst") or s.get("ipv6.dst"))[0] == a["dst"]
        assert int(s["tcp.dstport"][0]) == a["dport"]
        assert [int(v) for v in s.get("vlan.id", [])] == ([a["vlan"]] if a["vlan"] else [])
        if "http.request.method" in s:
            assert s["http.request.method"][0] == a["http_method"]
            assert s["http.request.uri"][0] == a["url"]
    assert len(by_port) == len(cases)

    r = subprocess.run([sys.executable, "-m", "imds_flow.cli", "replay", str(export), "--config",
                        str(c.config_path), "--alerts", str(tmp_path / "replay.mp")],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    replayed = read_alerts(tmp_path / "replay.mp")
    assert _rows(replayed) == _rows(live)
    assert [a["bytes"] for a in sorted(replayed, key=lambda a: a["sport"])] == \
        [a["bytes"] for a in sorted(live, key=lambda a: a["sport"])]
