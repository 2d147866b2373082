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
          "headers", "vlan", "http_host")
SECRETS = (b"AQAE", b"secret", b"21600", b"ASIAEXAMPLE", b"aws-sdk-go")


def _rows(alerts):
    return sorted(json.dumps([a[k] for k in FIELDS]) for a in alerts)


def _walk(obj, found):
    """Every raw packet header record of a tshark JSON tree, in order, as {field: [values]}."""
    if isinstance(obj, dict):
        raw = obj.get("Raw packet header")
        if isinstance(raw, dict) and "sflow_245.header_tree" in raw:      # a flow sample
            rec = {"frame_length": [raw.get("sflow_245.header.frame_length")]}
            _collect(raw["sflow_245.header_tree"], rec)
            sw = obj.get("Extended switch data")
            if isinstance(sw, dict):
                rec["sflow_245.vlan.in"] = [sw.get("sflow_245.vlan.in")]
                rec["sflow_245.vlan.out"] = [sw.get("sflow_245.vlan.out")]
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


def _vlan_of(sample: dict):
    """The alert's `vlan` from tshark's decode: the first non-zero id of the extended switch record's
    in / out VLANs and the frame's 802.1Q tags, else 0 if one is 0, else None."""
    present = [int(v) for k in ("sflow_245.vlan.in", "sflow_245.vlan.out", "vlan.id") for v in sample.get(k, [])]
    return next((v for v in present if v), present[0] if present else None)


def test_openvswitch_agent_replayed(tmp_path):
    """Open vSwitch (userspace datapath, 256-byte headers) as a second agent, in namespaces this test
    creates. OVS does not emit a sample for every packet even at sampling 1, so the expectation is
    built from tshark's decode of what it exported: every sampled frame that must alert does, nothing
    else; with 256 bytes the token header that 128 bytes cut off is seen."""
    import os
    from tests.support.exporters import capture_udp, write_export_pcap
    from tests.support.ovs import OvsBridge
    for tool in ("ovs-vsctl", "ovsdb-server", "ovs-vswitchd", "ovsdb-tool", "tshark"):
        require_tool(tool)
    if os.geteuid() != 0:
        import pytest
        pytest.skip("network namespaces need root")
    cases = build()
    pcap = write_pcap(cases, tmp_path / "traffic.pcap")
    cap = capture_udp(until_idle=3.0, timeout=120)
    with OvsBridge(tmp_path, cap.port, header=256) as ovs:
        ovs.send_pcap(pcap)
        datagrams = cap.wait()
    assert datagrams, "Open vSwitch exported nothing"
    export = write_export_pcap(datagrams, tmp_path / "export.pcap", cap.port)
    keyed = {}
    for c in cases:
        ip = c.frame.getlayer("IP") or c.frame.getlayer("IPv6")
        keyed[(str(ip.src), int(c.frame.getlayer("TCP").sport))] = c
    samples = [s for s in tshark_samples(export, cap.port)
               if (s.get("ip.src") or s.get("ipv6.src")) and "tcp.srcport" in s]
    sampled = {}
    for s in samples:
        key = ((s.get("ip.src") or s.get("ipv6.src"))[0], int(s["tcp.srcport"][0]))
        if key in keyed:
            sampled[key] = s
    assert len(sampled) >= len(cases) // 3, f"only {len(sampled)} of {len(cases)} frames sampled"
    want = []
    for key, s in sampled.items():
        case = keyed[key]
        if case.want is None:
            continue
        w = dict(case.want, vlan=_vlan_of(s))
        if case.label == "token header cut by the sample":
            w["headers"] = ["x-aws-ec2-metadata-token-ttl-seconds"]
        want.append(w)
    config_path = tmp_path / "imds-flow.toml"
    config_path.write_text(AWS_ENDPOINTS + CONFIG_EXTRA)
    r = subprocess.run([sys.executable, "-m", "imds_flow.cli", "replay", str(export), "--config", str(config_path),
                        "--alerts", str(tmp_path / "replay.mp")], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    replayed = read_alerts(tmp_path / "replay.mp")
    assert _rows(replayed) == _rows(_repeat(want, samples)), r.stderr
    assert all(a["format"] == "sflow" and a["packets"] == 1 and a["exporter"] == "127.0.0.1" for a in replayed)


def _repeat(want, samples):
    """One expected alert per exported sample (OVS may sample a frame twice: in and out port)."""
    count = {}
    for s in samples:
        key = ((s.get("ip.src") or s.get("ipv6.src"))[0], int(s["tcp.srcport"][0]))
        count[key] = count.get(key, 0) + 1
    return [w for w in want for _ in range(count[(w["src"], w["sport"])])]
