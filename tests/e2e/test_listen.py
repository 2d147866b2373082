"""The live collector over real loopback UDP: alerts, bad input, clean stop, replay of the same traffic."""
import signal
import socket

import pytest
from scapy.all import IP, UDP, Ether, wrpcap

from tests.support.collector import AWS_ENDPOINTS, Collector, read_alerts
from imds_flow.build import v5

CONFIG = AWS_ENDPOINTS + '''[suppress]
source_subnets = ["10.99.0.0/16"]
[alerts]
fold_window_seconds = 0
[logging]
error_interval_seconds = 3600
'''

IMDS = "169.254.169.254"


def traffic():
    """Datagrams: valid v5 with hits, garbage in between, a suppressed source, a truncated header."""
    seq = 0
    out = []
    for i in range(20):
        recs = [("10.0.0.%d" % (i + 1), IMDS, 40000 + i, 80), (IMDS, "10.0.0.%d" % (i + 1), 80, 40000 + i),
                ("10.99.1.1", IMDS, 41000, 80), ("10.0.0.9", "10.0.0.10", 5, 6)]
        out.append(v5(recs, seq=seq))
        seq += len(recs)
        out.append(b"\x00\x09garbage")                 # version 9 header cut short / not NetFlow
        out.append(b"hello, not netflow")
        out.append(v5(recs)[:30])                        # count says 4 records, 6 bytes present
    return out


@pytest.mark.parametrize("listen, target", [("127.0.0.1:0", "127.0.0.1"), ("[::1]:0", "::1")])
def test_listen_alerts_and_counts_bad_input(tmp_path, listen, target):
    datagrams = traffic()
    with Collector(tmp_path, CONFIG, listen=[listen]) as c:
        fam = socket.AF_INET6 if ":" in target else socket.AF_INET
        s = socket.socket(fam, socket.SOCK_DGRAM)
        for d in datagrams:
            s.sendto(d, (target, c.port))
        alerts = c.wait_alerts(40, timeout=30)
        assert sum(a["count"] for a in alerts) == 40
        got_before_stop = len(alerts)
        alerts = c.stop()
    assert len(alerts) == got_before_stop == 40
    assert {a["direction"] for a in alerts} == {"request", "response"}
    assert not any(a["src"].startswith("10.99.") for a in alerts)
    a = next(x for x in alerts if x["direction"] == "request" and x["src"] == "10.0.0.1")
    assert a["exporter"] == target and a["exporter_port"] == s.getsockname()[1]
    assert (a["dst"], a["sport"], a["dport"], a["proto"], a["vlan"], a["endpoint"], a["version"]) == \
        (IMDS, 40000, 80, 6, None, "aws-imds-ipv4", 5)
    assert (a["bytes"], a["packets"], a["count"]) == (1000, 10, 1)
    assert isinstance(a["ts"], float) and a["first_seen"] < a["last_seen"]
    log = c.log
    assert "rejected" in log and "unknown version" in log and "count exceeds datagram" in log
    assert "Traceback" not in log
    assert "80 datagrams, 80 records, 60 rejected datagrams" in log   # 20 good datagrams of 4 records


def test_sigint_flushes_folded_alerts(tmp_path):
    cfg = CONFIG.replace("fold_window_seconds = 0", "fold_window_seconds = 3600")
    with Collector(tmp_path, cfg, args=["--metrics", "127.0.0.1:0"]) as c:
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        for i in range(50):
            s.sendto(v5([("10.0.0.1", IMDS, 40000 + i, 80)], seq=i), ("127.0.0.1", c.port))
        first = c.wait_alerts(1)
        c.wait_metric("imds_flow_pending_alerts", 1)      # every record decoded, one alert folding
        m = c.wait_metric(f'imds_flow_alert_records_total{{exporter="127.0.0.1",exporter_port="{s.getsockname()[1]}"}}', 50)
        assert m["imds_flow_pending_alerts"] == 1
        assert [a["count"] for a in read_alerts(c.alerts_path)] == [1]   # the rest are folding
        alerts = c.stop(signal.SIGINT)
    assert [a["count"] for a in alerts] == [1, 49]
    assert first[0]["sport"] == 40000 and alerts[1]["sport"] == 40049


def test_several_listen_addresses(tmp_path):
    with Collector(tmp_path, CONFIG, listen=["127.0.0.1:0", "[::1]:0"]) as c:
        assert len(c.addresses) == 2
        for (host, port) in c.addresses:
            fam = socket.AF_INET6 if ":" in host else socket.AF_INET
            socket.socket(fam, socket.SOCK_DGRAM).sendto(v5([("10.0.0.1", IMDS, 1, 80)]), (host, port))
        c.wait_alerts(2)
        alerts = c.stop()
    assert sorted(a["exporter"] for a in alerts) == ["127.0.0.1", "::1"]


def test_socket_activation_keeps_exports_sent_before_the_start(tmp_path):
    """Under systemd socket activation the socket is bound before the collector exists: exports sent
    then wait in it, none is refused, and the collector alerts on every one."""
    held = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    held.bind(("127.0.0.1", 0))
    port = held.getsockname()[1]
    tx = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    tx.connect(("127.0.0.1", port))
    for i in range(20):
        tx.send(v5([("10.0.0.%d" % (i + 1), IMDS, 40000 + i, 80)], seq=i))
    with Collector(tmp_path, CONFIG, listen=[f"127.0.0.1:{port}"], activate=[held]) as c:
        held.close()
        tx.send(v5([("10.0.0.99", IMDS, 40099, 80)], seq=20))       # an ECONNREFUSED would raise here
        c.wait_alerts(21)
        alerts = c.stop()
    assert sorted(a["sport"] for a in alerts) == [*range(40000, 40020), 40099]
    assert "socket activation: listening on the 1 socket(s) systemd bound" in c.log


def test_socket_activation_for_another_address_is_a_usage_error(tmp_path):
    held = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    held.bind(("127.0.0.1", 0))
    c = Collector(tmp_path, CONFIG, listen=["127.0.0.2:2055"], activate=[held])
    with pytest.raises(RuntimeError, match="exited 2"):
        c.start()
    assert c.log.strip() == (f"imds-flow: socket activation: systemd passed no socket for 127.0.0.2:2055 "
                             f"(it passed 127.0.0.1:{held.getsockname()[1]}) (see imds-flow listen --help)")
    held.close()


def test_replay_gives_the_same_alerts_as_listen(tmp_path):
    datagrams = traffic()
    live_dir = tmp_path / "live"
    live_dir.mkdir()
    with Collector(live_dir, CONFIG) as c:
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        s.bind(("127.0.0.1", 0))
        sport = s.getsockname()[1]
        for d in datagrams:
            s.sendto(d, ("127.0.0.1", c.port))
        c.wait_alerts(40)
        live = c.stop()
    pkts = [Ether(src="00:00:00:00:00:01", dst="00:00:00:00:00:02") / IP(src="127.0.0.1", dst="127.0.0.1") / UDP(sport=sport, dport=2055) / d for d in datagrams]
    for i, p in enumerate(pkts):
        p.time = 1_700_000_000 + i * 0.001
    wrpcap(str(tmp_path / "export.pcap"), pkts)
    import subprocess, sys
    cfg = tmp_path / "cfg.toml"
    cfg.write_text(CONFIG)
    r = subprocess.run([sys.executable, "-m", "imds_flow.cli", "replay", str(tmp_path / "export.pcap"),
                        "--config", str(cfg), "--alerts", str(tmp_path / "replay.mp")],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    replayed = read_alerts(tmp_path / "replay.mp")

    def key(a):
        return tuple(a[k] for k in ("exporter", "exporter_port", "src", "dst", "sport", "dport", "proto",
                                    "endpoint", "direction", "bytes", "packets", "count", "vlan", "version"))
    assert sorted(map(key, live)) == sorted(map(key, replayed))
    assert "80 datagrams, 80 records, 60 rejected datagrams" in r.stderr
