"""imds_flow.alerts_tool and `imds-flow alerts`: reading whole or growing files, table, summary."""
from __future__ import annotations

import io
import json
import queue
import subprocess
import sys
import threading
import time

import msgpack
import pytest
from click.testing import CliRunner

from imds_flow import alerts_tool as tool
from imds_flow import formats
from imds_flow.cli import cli


def _alert(i: int, **over) -> dict:
    a = {"ts": 1759947300.0 + i, "exporter": f"192.0.2.{1 + i % 2}", "exporter_port": 2055, "version": 9,
         "src": f"10.1.0.{i % 3}", "dst": "169.254.169.254", "sport": 40000 + i, "dport": 80, "proto": 6,
         "vlan": None, "endpoint": "aws-imds-ipv4", "direction": "request", "bytes": 100, "packets": 2,
         "first_seen": 1759947299.0 + i, "last_seen": 1759947300.0 + i, "count": i + 1, "sampling_rate": 1}
    a.update(over)
    return a


ALERTS = [_alert(i) for i in range(5)] + [
    _alert(5, src="fd00:ec2::254", dst="2001:db8::9", sport=80, dport=50000, endpoint="aws-imds-ipv6",
           direction="response", proto=58, first_seen=None, last_seen=None, count=4)]


def _msgpack(alerts) -> bytes:
    return b"".join(msgpack.packb(a, use_bin_type=True) for a in alerts)


def _ecs(alerts) -> bytes:
    enc = formats.encoder("ecs-json")
    return b"".join(enc.encode(a) for a in alerts)


@pytest.mark.parametrize("encode", [_msgpack, _ecs])
def test_reads_msgpack_and_ecs_json(encode):
    assert list(tool.read_alerts(io.BytesIO(encode(ALERTS)))) == ALERTS


def test_partial_tail_is_reported_not_raised():
    data = _msgpack(ALERTS)
    warnings = []
    got = list(tool.read_alerts(io.BytesIO(data[:-5]), warn=warnings.append))
    assert got == ALERTS[:-1]
    assert len(warnings) == 1 and "ends inside an alert" in warnings[0]
    good = len(_msgpack(ALERTS[:-1]))               # exactly where it stops, and what is left
    assert f"unreadable from byte {good}, {len(data) - 5 - good} byte(s) left" in warnings[0]


def test_garbage_is_an_error():
    with pytest.raises(tool.AlertFormatError):
        list(tool.read_alerts(io.BytesIO(b"\xc1\xc1\xc1")))
    with pytest.raises(tool.AlertFormatError):
        list(tool.read_alerts(io.BytesIO(msgpack.packb([1, 2]))))


def test_follow_waits_for_the_rest_of_a_split_alert():
    data = _msgpack(ALERTS[:2])
    cut = len(msgpack.packb(ALERTS[0])) + 7
    f = io.BytesIO(data[:cut])
    sleeps = []

    def sleep(_):
        sleeps.append(1)
        if len(sleeps) == 2:                  # the writer finishes the second alert while we wait
            pos = f.tell()
            f.seek(0, 2)
            f.write(data[cut:])
            f.seek(pos)
        if len(sleeps) > 4:
            raise StopIteration

    got = []
    with pytest.raises(RuntimeError):         # StopIteration inside a generator surfaces as RuntimeError
        for a in tool.read_alerts(f, follow=True, sleep=sleep):
            got.append(a)
    assert got == ALERTS[:2]


def test_summary():
    s = tool.summarize(ALERTS)
    d = s.as_dict(top=2)
    assert d["alerts"] == 6
    assert d["records"] == sum(a["count"] for a in ALERTS) == 19
    assert d["first_seen"] == formats.iso_time(1759947299.0)
    assert d["last_seen"] == formats.iso_time(1759947305.0)      # the ts of the alert without last_seen
    # local host: the source of a request, the destination of a response; weighted by count
    assert s.local_hosts == {"10.1.0.0": 1 + 4, "10.1.0.1": 2 + 5, "10.1.0.2": 3, "2001:db8::9": 4}
    assert list(d["local_hosts"]) == ["10.1.0.1", "10.1.0.0"]
    assert s.endpoints == {"aws-imds-ipv4": 15, "aws-imds-ipv6": 4}
    assert s.exporters == {"192.0.2.1": 1 + 3 + 5, "192.0.2.2": 2 + 4 + 4}
    text = s.text(top=10)
    assert "alerts 6, flow records 19" in text and "top local hosts" in text


def test_cli_formats(tmp_path):
    path = tmp_path / "alerts.msgpack"
    path.write_bytes(_msgpack(ALERTS))
    runner = CliRunner()
    out = runner.invoke(cli, ["alerts", str(path)])
    assert out.exit_code == 0
    assert [json.loads(line) for line in out.output.splitlines()] == ALERTS
    table = runner.invoke(cli, ["alerts", str(path), "--format", "table"]).output.splitlines()
    assert table[0].split() == [h for h, _, _ in tool.TABLE_COLUMNS]
    assert len(table) == 1 + len(ALERTS)
    assert table[1].split() == ["2025-10-08T18:15:00.000Z", "192.0.2.1", "10.1.0.0:40000", "169.254.169.254:80",
                                "tcp", "-", "request", "1", "aws-imds-ipv4"]
    assert "[fd00:ec2::254]:80" in table[-1] and "ipv6-icmp" in table[-1]
    summary = runner.invoke(cli, ["alerts", str(path), "--summary", "--format", "json"])
    assert json.loads(summary.output)["records"] == 19
    both = runner.invoke(cli, ["alerts", str(path), "--summary", "--follow"])
    assert both.exit_code == 2


def test_follow_a_growing_file(tmp_path):
    """A writer thread appends alerts, each in two writes with a pause inside the map, while
    `imds-flow alerts --follow` runs as a subprocess; every alert comes out whole and in order."""
    path = tmp_path / "alerts.msgpack"
    path.write_bytes(_msgpack(ALERTS[:1]))
    proc = subprocess.Popen([sys.executable, "-m", "imds_flow.cli", "alerts", str(path), "--follow"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    lines: queue.Queue = queue.Queue()
    threading.Thread(target=lambda: [lines.put(x) for x in proc.stdout], daemon=True).start()

    def write():
        with open(path, "ab", buffering=0) as f:
            for a in ALERTS[1:]:
                data = msgpack.packb(a, use_bin_type=True)
                f.write(data[: len(data) // 2])
                time.sleep(0.3)                       # longer than the follower's poll: it sees half a map
                f.write(data[len(data) // 2:])
                time.sleep(0.05)

    got = []
    try:
        deadline = time.monotonic() + 60
        got.append(json.loads(lines.get(timeout=30)))   # the alert that was there before
        writer = threading.Thread(target=write)
        writer.start()
        while len(got) < len(ALERTS) and time.monotonic() < deadline:
            try:
                got.append(json.loads(lines.get(timeout=0.5)))
            except queue.Empty:
                assert proc.poll() is None, proc.stderr.read()
        writer.join(timeout=30)
        assert proc.poll() is None                      # still following
    finally:
        proc.terminate()
        proc.wait(timeout=10)
    assert got == ALERTS
    assert "imds-flow:" not in proc.stderr.read()
