"""Operator commands: check-config, probe (every export through the collector; sFlow read by tshark),
alerts --follow across rotation and a file that does not exist yet, listen / replay on a terminal."""
from __future__ import annotations

import json
import os
import pty
import select
import shutil
import subprocess
import sys
import threading
import time

import msgpack
import pytest
from scapy.all import IP, UDP, Ether, wrpcap

from imds_flow import config as config_mod
from imds_flow import probe
from imds_flow.app import Pipeline
from imds_flow.check import effective_toml
from imds_flow.datagrams import DatagramBatch
from imds_flow.sinks import FileSink
from tests.support.collector import AWS_ENDPOINTS, Collector
from tests.support.receivers import wait_for

CLI = [sys.executable, "-m", "imds_flow.cli"]


def run(*args, **kw) -> subprocess.CompletedProcess:
    return subprocess.run([*CLI, *args], capture_output=True, text=True, timeout=120, **kw)


# --- check-config ----------------------------------------------------------------------------------

SINKS = '''
[[sinks]]
type = "syslog"
address = "siem.example.net:6514"
transport = "tls"
format = "leef"
tls_server_name = "siem"
[[sinks]]
type = "nats"
address = "nats://127.0.0.1:4222"
subject = "imds_flow.alerts.collector-1"
[[sinks]]
type = "fluent"
address = "127.0.0.1:24224"
tls = true
shared_key = "secret"
'''


def test_check_config_prints_the_effective_config_which_parses_back(tmp_path):
    path = tmp_path / "c.toml"
    path.write_text(config_mod.default_text() + SINKS)
    out = run("check-config", "--config", str(path))
    assert out.returncode == 0, out.stderr
    assert "secret" not in out.stdout and 'shared_key = "(set; not shown)"' in out.stdout
    again = config_mod.parse(out.stdout.replace('"(set; not shown)"', '"secret"'), "again")
    assert again == type(again)(**{**config_mod.load(path).__dict__, "source": "again"})
    assert config_mod.parse(effective_toml(config_mod.load(None)), "<embedded default>") == config_mod.load(None)


def test_check_config_errors_are_one_line_and_exit_2(tmp_path):
    bad = tmp_path / "bad.toml"
    bad.write_text(config_mod.default_text() + '[[sinks]]\ntype = "syslog"\naddress = "h:1"\nformat = "json"\n')
    out = run("check-config", "--config", str(bad))
    assert out.returncode == 2 and out.stdout == ""
    assert out.stderr.strip().count("\n") == 0 and "format = 'json': expected one of cef, leef, rfc5424" in out.stderr
    missing_ca = tmp_path / "ca.toml"
    missing_ca.write_text(config_mod.default_text() + '[[sinks]]\ntype = "tcp"\naddress = "h:1"\ntls = true\n'
                          f'tls_ca_file = "{tmp_path}/none.pem"\n')
    out = run("check-config", "--config", str(missing_ca))
    assert out.returncode == 2 and "none.pem" in out.stderr


# --- probe -------------------------------------------------------------------------------------------

class _Capture:
    def __init__(self):
        self.alerts = []

    def write_alerts(self, alerts):
        self.alerts += [msgpack.unpackb(a, raw=False) for a in alerts]

    def flush(self):
        pass

    def close(self):
        pass


@pytest.mark.parametrize("export", ["v5", "v9", "ipfix", "sflow"])
@pytest.mark.parametrize("endpoint", ["169.254.169.254", "fd00:ec2::254"])
def test_probe_exports_raise_one_test_alert(export, endpoint):
    if export == "v5" and ":" in endpoint:
        with pytest.raises(ValueError, match="IPv4 only"):
            probe.build(export, endpoint)
        return
    sink = _Capture()
    pipeline = Pipeline(config_mod.load(None), sink)
    pipeline.process(DatagramBatch.from_payloads([probe.build(export, endpoint, now=1_760_000_000)],
                                                 src=("192.0.2.1", 2055), ts=1_760_000_000.0))
    pipeline.close()
    [a] = sink.alerts
    src = probe.PROBE_SOURCE_V6 if ":" in endpoint else probe.PROBE_SOURCE
    assert (a["src"], a["sport"], a["dst"], a["dport"], a["proto"], a["direction"]) == \
        (src, probe.PROBE_PORT, endpoint, 80, 6, "request")
    assert a["test"] is True and a["version"] == {"v5": 5, "v9": 9, "ipfix": 10, "sflow": 5}[export]


def test_ordinary_alerts_are_not_tests():
    assert not probe.is_probe({"src": "192.0.2.169", "sport": 80, "dst": "169.254.169.254", "dport": 80})
    assert not probe.is_probe({"src": "10.0.0.1", "sport": probe.PROBE_PORT, "dst": "169.254.169.254"})


@pytest.mark.skipif(not shutil.which("tshark"), reason="needs tshark (tests/run installs it)")
@pytest.mark.parametrize("endpoint", ["169.254.169.254", "fd00:ec2::254"])
def test_probe_sflow_is_what_tshark_reads(tmp_path, endpoint):
    data = probe.build("sflow", endpoint, agent="192.0.2.1")
    pcap = tmp_path / "sflow.pcap"
    wrpcap(str(pcap), [Ether() / IP(src="192.0.2.1", dst="127.0.0.1") / UDP(sport=50000, dport=6343) / data])
    out = subprocess.run(["tshark", "-r", str(pcap), "-d", "udp.port==6343,sflow", "-T", "fields",
                          "-e", "sflow_245.version", "-e", "sflow_245.sampletype", "-e", "sflow.flow_sample.sampling_rate",
                          "-e", "ip.src", "-e", "ipv6.src", "-e", "ip.dst", "-e", "ipv6.dst", "-e", "tcp.srcport",
                          "-e", "tcp.dstport", "-e", "http.request.uri", "-E", "separator=|"],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    fields = out.stdout.strip().split("|")
    assert fields[0] == "5" and fields[2] == "1", out.stdout
    src = probe.PROBE_SOURCE_V6 if ":" in endpoint else probe.PROBE_SOURCE
    assert src in fields[3:5][0].split(",") + fields[3:5][1].split(",")
    assert endpoint in fields[5].split(",") + fields[6].split(",")
    assert (fields[7], fields[8], fields[9]) == (str(probe.PROBE_PORT), "80", "/latest/meta-data/")


def test_probe_through_a_running_collector(tmp_path):
    config = AWS_ENDPOINTS + "[alerts]\nfold_window_seconds = 0\n"
    with Collector(tmp_path, config) as c:
        for export in ("v5", "v9", "ipfix", "sflow"):
            out = run("probe", f"127.0.0.1:{c.port}", "--export", export)
            assert out.returncode == 0, out.stderr
            assert "test = true" in out.stdout
        alerts = c.wait_alerts(4)
        c.stop()
    assert [(a["version"], a["format"]) for a in alerts] == [(5, "netflow"), (9, "netflow"), (10, "ipfix"), (5, "sflow")]
    assert all(a["test"] is True and a["src"] == probe.PROBE_SOURCE for a in alerts)
    bad = run("probe", "localhost", "--export", "v9")
    assert bad.returncode == 2 and "expected host:port" in bad.stderr


# --- alerts --follow -----------------------------------------------------------------------------------

def _reader(proc, lines):
    for line in proc.stdout:
        lines.append(line)


def test_follow_waits_for_the_file_and_follows_it_across_rotation(tmp_path):
    path = tmp_path / "alerts.mp"
    err = tmp_path / "stderr"
    proc = subprocess.Popen([*CLI, "alerts", str(path), "--follow"], stdout=subprocess.PIPE,
                            stderr=open(err, "w"), text=True)
    lines: list[str] = []
    t = threading.Thread(target=_reader, args=(proc, lines), daemon=True)
    t.start()
    try:
        assert wait_for(lambda: "does not exist (yet); waiting for it" in err.read_text(), 60)
        sink = FileSink(open(path, "ab"), owned=True, path=str(path), max_bytes=600, keep=3)
        total = 120
        for n in range(total):                               # rotates every few alerts, several times
            sink.write_alerts([msgpack.packb({"n": n, "ts": 1_760_000_000.0 + n, "src": "10.0.0.1"})])
            sink.flush()
            if n % 10 == 0:
                wait_for(lambda: len(lines) > n - 5, 10)     # the follower keeps up, now and then
        sink.close()
        assert sink.rotations >= 4
        assert wait_for(lambda: len(lines) >= total, 60)
        assert proc.poll() is None                          # still following
    finally:
        proc.terminate()
        proc.wait(10)
    assert [json.loads(x)["n"] for x in lines] == list(range(total))      # each once, in order
    assert "rotated or replaced" in err.read_text()


def test_alerts_without_follow_still_needs_the_file(tmp_path):
    out = run("alerts", str(tmp_path / "nope.mp"))
    assert out.returncode == 2 and "nope.mp" in out.stderr and "No such file" in out.stderr


# --- listen / replay on a terminal -------------------------------------------------------------------

def _on_a_terminal(args: list[str], timeout: float = 120) -> str:
    """Run the CLI with stdout on a pseudo-terminal; what it wrote there."""
    master, slave = pty.openpty()
    proc = subprocess.Popen([*CLI, *args], stdout=slave, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL)
    os.close(slave)
    out = b""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if select.select([master], [], [], 0.1)[0]:
            try:
                chunk = os.read(master, 65536)
            except OSError:
                break
            if not chunk:
                break
            out += chunk
        elif proc.poll() is not None:
            break
    proc.wait(10)
    os.close(master)
    return out.decode(errors="replace")


def test_replay_on_a_terminal_writes_the_table(tmp_path):
    pcap = tmp_path / "probe.pcap"
    wrpcap(str(pcap), [Ether() / IP(src="192.0.2.1", dst="127.0.0.1") / UDP(sport=2055, dport=2055)
                       / probe.build("v9", now=1_760_000_000)])
    shown = _on_a_terminal(["replay", str(pcap)])
    assert "TIME" in shown and "192.0.2.169:16925" in shown and "169.254.169.254:80" in shown
    piped = subprocess.run([*CLI, "replay", str(pcap)], capture_output=True, timeout=120)
    assert msgpack.unpackb(piped.stdout, raw=False)["test"] is True          # not a terminal: msgpack
    explicit = _on_a_terminal(["replay", str(pcap), "--alerts-format", "ecs-json"])
    assert '"tags":["test"]' in explicit
