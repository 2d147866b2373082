"""Operations: Prometheus metrics, SIGHUP reload without losing datagrams, --workers, the systemd unit."""
import re
import shutil
import signal
import socket
import subprocess
import threading
import time
from pathlib import Path

import pytest

from tests.support.collector import ONE_ENDPOINT as BASE, Collector
from tests.support.wait import wait_for
from tests.support.exporters import require_tool
from imds_flow.build import v5

ROOT = Path(__file__).resolve().parents[2]
IMDS = "169.254.169.254"


@pytest.mark.parametrize("workers", [1, 2])
def test_metrics_endpoint_counts_exactly(tmp_path, workers):
    with Collector(tmp_path, BASE, args=["--metrics", "127.0.0.1:0", "--workers", str(workers)]) as c:
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        s.bind(("127.0.0.1", 0))
        for i in range(10):
            s.sendto(v5([("10.0.0.1", IMDS, 40000 + i, 80), ("10.0.0.1", "10.0.0.2", 1, 2)], seq=2 * i),
                     ("127.0.0.1", c.port))
        s.sendto(b"not netflow at all", ("127.0.0.1", c.port))
        c.wait_alerts(10)
        labels = f'exporter="127.0.0.1",exporter_port="{s.getsockname()[1]}"'
        m = c.wait_metric(f"imds_flow_datagrams_total{{{labels}}}", 11)    # workers report once a second
        c.stop()
    assert m[f"imds_flow_datagrams_total{{{labels}}}"] == 11
    assert m[f"imds_flow_records_total{{{labels}}}"] == 20
    assert m[f"imds_flow_alert_records_total{{{labels}}}"] == 10
    assert m[f'imds_flow_decode_errors_total{{{labels},reason="unknown_version"}}'] == 1
    assert m[f"imds_flow_sequence_lost_total{{{labels}}}"] == 0
    assert m["imds_flow_exporters"] == 1 and m["imds_flow_kernel_drops_total"] == 0


def suppressed_series(c: Collector) -> str:
    """The one exporter's suppressed-records series (its source port is the sender's)."""
    assert wait_for(lambda: any(k.startswith("imds_flow_suppressed_records_total{") for k in c.metrics()))
    return next(k for k in c.metrics() if k.startswith("imds_flow_suppressed_records_total{"))


def test_sighup_reload_swaps_suppression_and_loses_nothing(tmp_path):
    cfg_text = BASE + "[suppress]\nsource_subnets = []\n"
    with Collector(tmp_path, cfg_text, args=["--metrics", "127.0.0.1:0"]) as c:
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        sent = {"n": 0}
        stop = threading.Event()

        def send():
            i = 0
            while not stop.is_set():
                s.sendto(v5([("10.9.0.1", IMDS, 1024 + i % 50000, 80)], seq=i), ("127.0.0.1", c.port))
                i += 1
                sent["n"] = i
                time.sleep(0.0005)

        t = threading.Thread(target=send)
        t.start()
        c.wait_alerts(150)
        c.config_path.write_text(BASE + '[suppress]\nsource_subnets = ["10.9.0.0/16"]\n')
        c.proc.send_signal(signal.SIGHUP)
        assert wait_for(lambda: "reload: 1 endpoint(s), 1 suppressed subnet(s)" in c.log)
        series = suppressed_series(c)
        c.wait_metric(series, 150)
        c.config_path.write_text(BASE + "[suppress]\nvlans = [5000]\n")     # invalid: must keep the last good
        c.proc.send_signal(signal.SIGHUP)
        assert wait_for(lambda: "reload failed, keeping the running config" in c.log)
        before = c.metrics()[series]
        c.wait_metric(series, before + 50)                           # the last good config still suppresses
        stop.set()
        t.join()
        c.wait_metric(series.replace("suppressed_records", "datagrams"), sent["n"])
        alerts = c.stop()
    log = c.log
    assert "reload: 1 endpoint(s), 1 suppressed subnet(s)" in log
    assert "reload failed, keeping the running config" in log and "suppress.vlans[0] = 5000" in log
    m = re.search(r"stopped: .*?(\d+) datagrams, (\d+) records.*?(\d+) alerts, (\d+) suppressed", log)
    datagrams, records, alerted, suppressed = map(int, m.groups())
    assert datagrams == records == sent["n"]                      # not one datagram lost to the reloads
    assert alerted + suppressed == sent["n"] and alerted == len(alerts)
    assert alerted > 100 and suppressed > 100


def test_workers_merge_alerts_and_keep_exporters_apart(tmp_path):
    with Collector(tmp_path, BASE, args=["--workers", "2"]) as c:
        socks = [socket.socket(socket.AF_INET, socket.SOCK_DGRAM) for _ in range(16)]
        for k, s in enumerate(socks):
            for i in range(20):
                s.sendto(v5([(f"10.0.{k}.1", IMDS, 1000 + i, 80)] * 3, seq=3 * i), ("127.0.0.1", c.port))
        c.wait_alerts(16 * 20 * 3)
        alerts = c.stop()
    assert sum(a["count"] for a in alerts) == 16 * 20 * 3
    assert "stopped (2 workers): 16 exporters, 320 datagrams, 960 records" in c.log
    assert "0 records lost upstream" in c.log        # each exporter's sequence stayed on one worker
    assert len({(a["exporter"], a["exporter_port"]) for a in alerts}) == 16


def test_systemd_unit_verifies_and_is_hardened(tmp_path):
    unit = (ROOT / "config/imds-flow.service").read_text()
    for option in ("DynamicUser=yes", "NoNewPrivileges=yes", "ProtectSystem=strict", "ProtectHome=yes",
                   "PrivateTmp=yes", "CapabilityBoundingSet=\n", "RestrictAddressFamilies=AF_INET AF_INET6 AF_UNIX",
                   "SystemCallFilter=@system-service", "ExecReload=/bin/kill -HUP $MAINPID", "StateDirectory=imds-flow"):
        assert option in unit
    assert re.search(r"^ExecStart=\S*imds-flow listen :2055", unit, re.M)
    require_tool("systemd-analyze")
    exe = shutil.which("imds-flow") or str(ROOT / ".venv/bin/imds-flow")
    local = tmp_path / "imds-flow.service"
    local.write_text(unit.replace("/opt/imds-flow/.venv/bin/imds-flow", exe))
    r = subprocess.run(["systemd-analyze", "verify", str(local)], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    r = subprocess.run(["systemd-analyze", "security", "--offline=true", str(local)], capture_output=True,
                       text=True, timeout=60)
    exposure = float(re.search(r"Overall exposure level for \S+: ([\d.]+)", r.stdout).group(1))
    assert exposure < 3.0, r.stdout[-2000:]


def test_systemd_socket_unit_verifies_and_binds_what_the_service_listens_on(tmp_path):
    """Socket activation passes exactly the sockets `imds-flow listen` is told to use (it stops with
    exit code 2 otherwise): the socket unit's ListenDatagram= lines are the service's addresses."""
    from imds_flow.sockets import parse_listen
    service = (ROOT / "config/imds-flow.service").read_text()
    socket_unit = (ROOT / "config/imds-flow.socket").read_text()
    args = re.search(r"^ExecStart=\S*imds-flow listen (.*?) --", service, re.M).group(1).split()
    bound = re.findall(r"^ListenDatagram=(\S+)", socket_unit, re.M)
    assert sorted(parse_listen(a) for a in args) == sorted(parse_listen(a) for a in bound)
    assert len(bound) == 4 and "BindIPv6Only=ipv6-only" in socket_unit
    require_tool("systemd-analyze")
    exe = shutil.which("imds-flow") or str(ROOT / ".venv/bin/imds-flow")
    (tmp_path / "imds-flow.service").write_text(service.replace("/opt/imds-flow/.venv/bin/imds-flow", exe))
    (tmp_path / "imds-flow.socket").write_text(socket_unit)
    r = subprocess.run(["systemd-analyze", "verify", str(tmp_path / "imds-flow.socket")], capture_output=True,
                       text=True, timeout=60)
    assert r.returncode == 0, r.stderr
