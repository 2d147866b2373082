"""Faults without loss (issue 14): a sink that fails alone, append-only files that stay readable, log
rotation, bounded memory, /metrics under load, config edges. Live tests start a real collector; the
full-disk and read-only cases mount a small filesystem (the tests run as root)."""
import errno
import io
import json
import os
import signal
import socket
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import msgpack
import pytest

from imds_flow import alerts_tool, config
from imds_flow.alerts import Folder
from imds_flow.config import ConfigError
from imds_flow.metrics import MetricsServer
from imds_flow.sinks import Sinks, open_sink
from imds_flow.sinks import stream as stream_mod
from tests.support.collector import ONE_ENDPOINT as BASE, Collector, read_alerts, scrape
from tests.support.wait import wait_for
from imds_flow.build import v5

ROOT = Path(__file__).resolve().parents[2]
IMDS = "169.254.169.254"


def packed(n: int) -> bytes:
    return msgpack.packb({"n": n, "count": 1, "pad": "x" * 40})


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]




def mount_tmpfs(path: Path, size: str, options: str = "") -> None:
    path.mkdir(parents=True, exist_ok=True)
    subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}{options}", "tmpfs", str(path)], check=True)


def umount(path: Path) -> None:
    subprocess.run(["umount", "-l", str(path)], check=False)


def need_root():
    if os.geteuid() != 0:
        pytest.skip("mounts a filesystem: needs root")


class Sender:
    """Distinct alerts over v5: alert i is 10.x.y.z:sport -> IMDS, unique per i."""

    def __init__(self, port: int):
        self.port = port
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.next = 0
        self.seq = 0

    def send(self, count: int, per: int = 30, pace: bool = True) -> None:
        while count > 0:
            k = min(per, count)
            recs = [(f"10.{(i >> 16) & 255}.{(i >> 8) & 255}.{i & 255}", IMDS, 1024 + i % 60000, 80)
                    for i in range(self.next, self.next + k)]
            self.sock.sendto(v5(recs, seq=self.seq), ("127.0.0.1", self.port))
            self.next += k
            self.seq += k
            count -= k
            if pace:
                time.sleep(0.0005)           # pacing, not waiting: keeps loopback from dropping


def fill_up(path: Path) -> None:
    """Write `path` until its filesystem is full (ENOSPC), keeping what fitted."""
    with open(path, "wb", buffering=0) as f:
        for size in (1 << 16, 1 << 12, 1 << 8, 1):
            try:
                while True:
                    f.write(bytes(size))
            except OSError as e:
                if e.errno != errno.ENOSPC:
                    raise


def keys(alerts: list[dict]) -> list[tuple]:
    return [(a["src"], a["sport"]) for a in alerts]


# --- file sinks: whole batches or nothing; readable after any interruption ----------------------------

def test_a_short_write_is_rolled_back_and_the_error_raised(tmp_path, monkeypatch):
    path = tmp_path / "a.mp"
    sink = open_sink(str(path))
    sink.write_alerts([packed(0), packed(1)])
    real = os.write

    def half_then_full(fd, data):
        if len(data) > 10:
            real(fd, bytes(data[: len(data) // 2]))
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(stream_mod.os, "write", half_then_full)
    with pytest.raises(OSError):
        sink.write_alerts([packed(2), packed(3)])
    monkeypatch.setattr(stream_mod.os, "write", real)
    sink.write_alerts([packed(4)])
    sink.close()
    assert [a["n"] for a in read_alerts(path)] == [0, 1, 4]
    assert alerts_tool.readable_end(open(path, "rb")) == (path.stat().st_size,) * 2


def test_a_torn_tail_is_cut_on_open_and_later_alerts_stay_readable(tmp_path, caplog):
    path = tmp_path / "a.mp"
    whole = packed(0) + packed(1)
    path.write_bytes(whole + packed(2)[:7])            # a crash in the middle of a write
    sink = open_sink(str(path))
    sink.write_alerts([packed(3)])
    sink.close()
    assert [a["n"] for a in read_alerts(path)] == [0, 1, 3]
    assert f"ends in 7 unreadable byte(s) (a torn write) after byte {len(whole)}" in caplog.text


def test_a_large_unreadable_tail_is_kept_aside_and_a_new_file_started(tmp_path, monkeypatch):
    monkeypatch.setattr(stream_mod, "TORN_MAX", 16)
    path = tmp_path / "a.mp"
    path.write_bytes(packed(0) + b"\xc1" * 100)          # 0xc1 is never used in msgpack: unreadable from there
    sink = open_sink(str(path))
    sink.write_alerts([packed(1)])
    sink.close()
    aside = [p for p in tmp_path.iterdir() if p.name.startswith("a.mp.torn-")]
    assert len(aside) == 1 and aside[0].read_bytes() == packed(0) + b"\xc1" * 100    # kept as it was
    assert [a["n"] for a in read_alerts(path)] == [1]


def test_a_json_lines_file_cut_inside_a_line_is_trimmed(tmp_path):
    path = tmp_path / "a.json"
    path.write_bytes(b'{"n": 0}\n{"n": 1}\n{"n": ')
    sink = open_sink(str(path))
    sink.write_alerts([b'{"n": 2}\n'])
    sink.close()
    assert path.read_bytes() == b'{"n": 0}\n{"n": 1}\n{"n": 2}\n'


def test_alerts_tool_reports_where_a_file_stops_being_readable(tmp_path):
    path = tmp_path / "a.mp"
    good = packed(0) + packed(1)
    path.write_bytes(good + packed(2)[:5] + packed(3))   # what an older version left: a tear, then more
    assert alerts_tool.readable_end(open(path, "rb"))[0] == len(good)
    out = subprocess.run([sys.executable, "-m", "imds_flow.cli", "alerts", str(path)], capture_output=True,
                         text=True, cwd=ROOT, timeout=120)
    assert len(out.stdout.splitlines()) == 2
    left = path.stat().st_size - len(good)
    assert f"byte {len(good)}" in out.stderr and f"{left} byte(s) left" in out.stderr, out.stderr


# --- the fan-out: each sink fails alone ----------------------------------------------------------------

class Broken:
    """A sink that raises while `broken` is set; what it took is in .got."""
    name, kind = "broken", "test"

    def __init__(self):
        self.broken = False
        self.got = []

    def write_alerts(self, alerts):
        if self.broken:
            raise OSError(errno.ENOSPC, "No space left on device")
        self.got += alerts

    def flush(self):
        pass

    def close(self):
        pass


class Plain(Broken):
    name = "plain"


def test_a_failing_sink_loses_only_its_own_alerts_counted_and_warned(caplog):
    now = [0.0]
    broken, plain = Broken(), Plain()
    sinks = Sinks([broken, plain], ["msgpack", "msgpack"], "msgpack", log_interval=10.0, clock=lambda: now[0])
    sinks.write_alerts([packed(0)])
    broken.broken = True
    for i in range(1, 31):                             # 30 s of outage, a batch a second
        now[0] = float(i)
        sinks.write_alerts([packed(i)])
    broken.broken = False
    now[0] = 31.0
    sinks.write_alerts([packed(31)])
    assert [msgpack.unpackb(a)["n"] for a in plain.got] == list(range(32))       # each exactly once
    assert [msgpack.unpackb(a)["n"] for a in broken.got] == [0, 31]
    stats = {s["name"]: s for s in sinks.stats()["sinks"]}
    assert stats["broken"]["dropped"] == 30 and stats["broken"]["errors"] == 30 and stats["broken"]["sent"] == 2
    assert stats["plain"]["dropped"] == 0 and stats["plain"]["sent"] == 32
    warnings = [r.getMessage() for r in caplog.records if "sink broken" in r.getMessage()]
    assert "No space left on device" in warnings[0]
    assert 3 <= len(warnings) <= 5                     # the start, every 10 s, the recovery
    assert "recovered after 30.0 s; 30 alert(s) dropped" in warnings[-1]


def test_pipeline_never_offers_a_batch_twice():
    from imds_flow.app import Pipeline

    class Raising(Broken):
        broken = True

        def __init__(self):
            super().__init__()
            self.calls = []

        def write_alerts(self, alerts):
            self.calls.append(len(alerts))
            raise OSError(errno.EIO, "boom")

    sink = Raising()
    p = Pipeline(config.load(), sink)
    for i in range(3):
        p._emit({"ts": 1.0, "n": i})
        with pytest.raises(OSError):
            p.flush()
    assert sink.calls == [1, 1, 1]


# --- live: a full disk under one sink --------------------------------------------------------------------

def test_disk_full_under_one_sink_beside_a_healthy_one(tmp_path):
    need_root()
    disk = tmp_path / "small"
    mount_tmpfs(disk, "256k")
    try:
        filler = disk / "filler"
        filler.write_bytes(bytes(150_000))              # leaves ~100 KB: a few hundred alerts fit
        full = disk / "alerts.mp"
        cfg = BASE + f'[[sinks]]\ntype = "file"\npath = "{full}"\n'
        with Collector(tmp_path, cfg, args=["--metrics", "127.0.0.1:0"]) as c:
            mport = c.metrics_port
            tx = Sender(c.port)
            tx.send(3000)
            healthy = c.wait_alerts(3000, timeout=120)
            assert c.proc.poll() is None, c.log
            label = f'sink="file {full}"'
            dropped = f'imds_flow_sink_alerts_total{{{label},outcome="dropped"}}'
            m = wait_for(lambda: (m := scrape(mport)).get(dropped) and m)     # published once a second
            assert m[f"imds_flow_sink_errors_total{{{label}}}"] > 0
            # A rolled-back batch leaves a few bytes free, where a later small batch may still fit
            # (the gauge then says 0 again, rightly): take those too, so that every write fails.
            plug = disk / "plug"
            fill_up(plug)
            tx.send(50)
            failing = f"imds_flow_sink_failing{{{label}}}"
            m = wait_for(lambda: (m := scrape(mport)).get(failing) == 1 and m)
            assert m and m[failing] == 1
            assert f"sink file {full} ({full}): No space left on device" in c.log
            filler.unlink()                              # space returns
            plug.unlink()
            tx.send(300)
            healthy = c.wait_alerts(3350, timeout=120)
            wait_for(lambda: "recovered after" in c.log, 30)
            total = lambda m: sum(m.get(f'imds_flow_sink_alerts_total{{{label},outcome="{o}"}}', 0)  # noqa: E731
                                  for o in ("sent", "dropped"))
            m = wait_for(lambda: (m := scrape(mport)) and total(m) == 3350 and m)
            healthy = c.stop()
        assert len(healthy) == 3350 and len(set(keys(healthy))) == 3350     # every alert exactly once
        size = full.stat().st_size
        assert alerts_tool.readable_end(open(full, "rb")) == (size, size)  # readable end to end
        written = read_alerts(full)
        assert set(keys(healthy[-300:])) <= set(keys(written))         # what came after space returned
        sent = m[f'imds_flow_sink_alerts_total{{{label},outcome="sent"}}']
        dropped = m[f'imds_flow_sink_alerts_total{{{label},outcome="dropped"}}']
        assert len(written) == sent and sent + dropped == 3350
        assert "Traceback" not in c.log and "recovered after" in c.log
    finally:
        umount(disk)


# --- live: the spool directory turns read-only while running ----------------------------------------------

class Receiver(threading.Thread):
    def __init__(self):
        super().__init__(daemon=True)
        self.srv = socket.create_server(("127.0.0.1", 0))
        self.port = self.srv.getsockname()[1]
        self.data = bytearray()

    def run(self):
        while True:
            try:
                conn, _ = self.srv.accept()
            except OSError:
                return
            while chunk := conn.recv(65536):
                self.data += chunk

    def alerts(self):
        return list(msgpack.Unpacker(io.BytesIO(bytes(self.data)), raw=False))


def test_spool_directory_read_only_while_running(tmp_path):
    need_root()
    spool = tmp_path / "spool"
    spool.mkdir()
    rx = Receiver()
    rx.start()
    cfg = BASE + (f'[[sinks]]\ntype = "tcp"\naddress = "127.0.0.1:{rx.port}"\nname = "siem"\n'
                  f'spool_dir = "{spool}"\nspool_max_bytes = 65536\n')
    with Collector(tmp_path, cfg, args=["--metrics", "127.0.0.1:0"]) as c:
        mport = c.metrics_port
        tx = Sender(c.port)
        tx.send(60)
        assert len(wait_for(lambda: len(rx.alerts()) >= 60 and rx.alerts()) or []) == 60, c.log
        subprocess.run(["mount", "--bind", str(spool), str(spool)], check=True)
        try:
            subprocess.run(["mount", "-o", "remount,bind,ro", str(spool)], check=True)
            tx.send(600)                                  # 8 KB segments: rolls fail, new ones cannot be made
            c.wait_alerts(660, timeout=60)
            assert wait_for(lambda: scrape(mport).get('imds_flow_sink_alerts_total{sink="siem",outcome="dropped"}', 0) > 0,
                            30), c.log
            assert c.proc.poll() is None, c.log
        finally:
            umount(spool)
        before = len(rx.alerts())
        tx.send(60)                                       # writable again: spooled and delivered
        c.wait_alerts(720, timeout=60)
        assert wait_for(lambda: len(rx.alerts()) >= before + 60, 60), (before, len(rx.alerts()), c.log)
        c.stop()
    assert set(keys(rx.alerts()[-60:])) == {(f"10.0.{i >> 8 & 255}.{i & 255}", 1024 + i) for i in range(660, 720)}
    assert "Bad file descriptor" not in c.log and "Traceback" not in c.log
    assert "cannot write the spool" in c.log and "writable again" in c.log


# --- logrotate: rename + SIGHUP --------------------------------------------------------------------------

@pytest.mark.parametrize("workers", [1, 2])
def test_rename_and_sighup_start_a_new_file_and_lose_nothing(tmp_path, workers):
    with Collector(tmp_path, BASE, args=["--workers", str(workers)]) as c:
        tx = Sender(c.port)
        tx.send(100)
        c.wait_alerts(100)
        rotated = tmp_path / "alerts.mp.1"
        c.alerts_path.rename(rotated)
        tx.send(50)                                       # between the rename and the signal: old file
        wait_for(lambda: len(read_alerts(rotated)) >= 150, 30)
        c.proc.send_signal(signal.SIGHUP)
        assert wait_for(lambda: "reopened" in c.log, 30), c.log
        tx.send(100)
        new = c.wait_alerts(100)
        c.stop()
    old = read_alerts(rotated)
    new = read_alerts(c.alerts_path)
    assert len(old) == 150 and len(new) == 100
    assert sorted(keys(old + new)) == sorted(set(keys(old + new))) and len(set(keys(old + new))) == 250


# --- memory bounded by [limits] ----------------------------------------------------------------------------

TINY = textwrap.dedent('''
    import gc, json, struct
    from imds_flow import app, config
    from imds_flow.datagrams import DatagramBatch

    def rss_mb(key="VmRSS"):
        for line in open("/proc/self/status"):
            if line.startswith(key + ":"):
                return int(line.split()[1]) / 1024

    p = app.Pipeline(config.load(), app._NullSink(), clock=lambda: 1.7e9)
    p.warm_up()
    tmpl = struct.pack(">HHHH", 256, 1, 4, 1)                         # one field: protocol, 1 byte
    tset = struct.pack(">HH", 2, 4 + len(tmpl)) + tmpl
    def ipfix(body, seq):
        return struct.pack(">HHIII", 10, 16 + len(body), 1_700_000_000, seq, 0) + body
    records = 65535 - 16 - 4
    dset = struct.pack(">HH", 256, 4 + records) + bytes([6]) * records
    p.process(DatagramBatch.from_payloads([ipfix(tset, 0)], ts=1.7e9))
    datagrams = [ipfix(dset, i * records) for i in range(256)]
    batch = DatagramBatch.from_payloads(datagrams, ts=1.7e9)          # one receive batch, as listen has it
    gc.collect()
    base = rss_mb()
    p.process(batch)
    print(json.dumps({"rss_growth_mb": rss_mb() - base, "peak_growth_mb": rss_mb("VmHWM") - base,
                      "records": p.exporters.total("records"), "batches_split": p.batches_split,
                      "capacity": p.batch.capacity}))
''')


def test_datagrams_of_tiny_records_are_decoded_in_parts_within_bounded_memory():
    """256 datagrams of 64 KiB of 1-byte IPFIX records (16.7 M records) in one receive batch."""
    from imds_flow import app
    app.Pipeline(config.load(), app._NullSink()).warm_up()          # kernels compiled and cached here
    out = subprocess.run([sys.executable, "-c", TINY], cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    r = json.loads(out.stdout.strip().splitlines()[-1])
    print(r)
    assert r["records"] == 256 * (65535 - 20)                        # every record decoded
    assert r["batches_split"] == 1 and r["capacity"] <= config.Limits().max_batch_records
    assert r["peak_growth_mb"] < 300, r


def test_fold_keys_are_bounded_and_nothing_is_lost():
    out = []
    f = Folder(60.0, out.append, max_keys=10)
    f.add([((k,), {"ts": 1.0, "k": k, "count": 1}) for k in range(25)])
    assert f.windows == 10 and f.over_limit == 15 and len(out) == 25


# --- /metrics under a burst of new alert keys ---------------------------------------------------------------

def test_scrapes_during_a_burst_of_new_alert_keys_all_succeed(tmp_path):
    cfg = BASE.replace("fold_window_seconds = 0", "fold_window_seconds = 600")
    # 600 000 new alert keys, sent at once: the socket buffer holds them and the collector works through
    # them for many seconds, its fold table growing all along (the old /metrics iterated that table
    # from the HTTP thread: "dictionary changed size during iteration")
    dgrams = [v5([(f"10.{j >> 8 & 255}.{j & 255}.{k}", IMDS, 1024 + k, 80) for k in range(30)], seq=30 * j)
              for j in range(20_000)]
    with Collector(tmp_path, cfg, args=["--metrics", "127.0.0.1:0"]) as c:
        mport = c.metrics_port
        tx = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        for j, d in enumerate(dgrams):
            tx.sendto(d, ("127.0.0.1", c.port))
            if j % 20 == 0:
                time.sleep(0.001)                         # pacing, not waiting: fewer drops on loopback
        # scrape once the table is large (each scrape then iterated it for several ms) and still growing
        assert wait_for(lambda: c.alerts_path.stat().st_size > 150_000 * 300, 120)
        failures, done = [], []

        def scraper():
            for _ in range(50):
                try:
                    scrape(mport)
                    done.append(1)
                except Exception as e:               # noqa: BLE001 - counted
                    failures.append(repr(e))

        threads = [threading.Thread(target=scraper) for _ in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(300)
        assert c.proc.poll() is None
        c.stop()
    assert not failures and len(done) == 200, (len(failures), failures[:3])
    assert "Traceback" not in c.log


def test_idle_and_vanishing_metrics_clients_are_bounded_and_quiet(tmp_path):
    with Collector(tmp_path, BASE, args=["--metrics", "127.0.0.1:0"]) as c:
        mport = c.metrics_port
        threads_before = len(os.listdir(f"/proc/{c.proc.pid}/task"))
        idle = []
        for _ in range(200):                              # clients that never say a word
            idle.append(socket.socket())
            idle[-1].setblocking(False)
            idle[-1].connect_ex(("127.0.0.1", mport))
        tasks = lambda: len(os.listdir(f"/proc/{c.proc.pid}/task"))              # noqa: E731
        wait_for(lambda: tasks() >= threads_before + MetricsServer.MAX_CONNECTIONS, 10)
        threads_idle = max(tasks() for _ in range(200))   # sampled while 200 idle clients stay connected
        for s in idle:
            s.close()
        for _ in range(20):                               # clients that ask and leave before the answer
            s = socket.create_connection(("127.0.0.1", mport))
            s.sendall(b"GET /metrics HTTP/1.0\r\n\r\n")
            s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\1\0\0\0\0\0\0\0")
            s.close()
        assert wait_for(lambda: _scrapes(mport), 60)      # served again once the idle ones are gone
        c.stop()
    assert threads_idle - threads_before <= MetricsServer.MAX_CONNECTIONS, (threads_before, threads_idle)
    assert "Traceback" not in c.log and "Exception" not in c.log


def _scrapes(port: int) -> bool:
    try:
        return "imds_flow_exporters" in str(scrape(port))
    except OSError:
        return False


# --- config edges ------------------------------------------------------------------------------------------

MINIMAL = '[[endpoints]]\nname = "x"\naddress = "169.254.169.254"\n'


@pytest.mark.parametrize("text, message", [
    ("[alerts]\nfold_window_seconds = nan", "alerts.fold_window_seconds = nan: expected a finite number"),
    ("[logging]\nerror_interval_seconds = inf", "logging.error_interval_seconds = inf: expected a finite number"),
    ("[templates]\nlifetime_seconds = -inf", "templates.lifetime_seconds = -inf: expected a finite number"),
    ("[listen]\nrcvbuf_bytes = 9223372036854775807", "listen.rcvbuf_bytes = 9223372036854775807: must be <= "),
    ("[limits]\nmax_exporters = 9223372036854775807", "limits.max_exporters = 9223372036854775807: must be <= "),
    ("[limits]\nmax_batch_records = 100", "limits.max_batch_records = 100: must be >= 65536"),
    ("[alerts]\nfold_window_seconds = 1e300", "alerts.fold_window_seconds = 1e+300: must be <= "),
    ("[[sinks]]\ntype = \"tcp\"\naddress = \"h:1\"\ntimeout_seconds = nan", "expected a finite number"),
])
def test_config_numbers_are_finite_and_in_range(text, message):
    with pytest.raises(ConfigError) as e:
        config.parse(MINIMAL + text)
    assert message in str(e.value) and "\n" not in str(e.value)


@pytest.mark.parametrize("content", [
    b'[[endpoints]]\nname = "caf\xe9"\naddress = "169.254.169.254"\n',      # Latin-1, not UTF-8
    b"\xff\xfe[\x00[\x00",                                                   # UTF-16
    MINIMAL.encode() + b"[listen]\nrcvbuf_bytes = 9223372036854775807\n",
    MINIMAL.encode() + b"[alerts]\nfold_window_seconds = nan\n",
])
def test_bad_config_files_are_one_line_and_exit_2(tmp_path, content):
    path = tmp_path / "bad.toml"
    path.write_bytes(content)
    out = subprocess.run([sys.executable, "-m", "imds_flow.cli", "listen", "127.0.0.1:0", "--config", str(path)],
                         capture_output=True, text=True, cwd=ROOT, timeout=120, stdin=subprocess.DEVNULL)
    assert out.returncode == 2, out.stderr
    assert len(out.stderr.strip().splitlines()) == 1 and "Traceback" not in out.stderr, out.stderr


def test_a_reload_that_changes_sinks_says_it_takes_effect_at_next_start(caplog):
    from imds_flow.app import Pipeline, _NullSink
    p = Pipeline(config.parse(MINIMAL), _NullSink())
    p.reload(config.parse(MINIMAL + '[[sinks]]\ntype = "stdout"\n'))
    assert "[[sinks]] changed" in caplog.text and "next start" in caplog.text


# --- template state: saved off the loop, soon after it changes; redefinitions counted -------------------

def _template(tid: int, fields) -> bytes:
    from imds_flow import build
    return build.ipfix([build.template_set(10, {tid: fields})])


def test_a_template_is_persisted_within_a_second_or_two(tmp_path):
    state = tmp_path / "state" / "imds-flow" / "templates.json"

    def held():
        try:
            return {t["template_id"] for t in json.loads(state.read_text())["templates"]}
        except (OSError, ValueError):
            return set()

    with Collector(tmp_path, BASE) as c:
        tx = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        tx.sendto(_template(256, [(8, 4), (12, 4)]), ("127.0.0.1", c.port))
        assert wait_for(lambda: 256 in held(), 30)
        tx.sendto(_template(257, [(8, 4), (12, 4), (4, 1)]), ("127.0.0.1", c.port))
        assert wait_for(lambda: 257 in held(), 8), c.log   # was: the next save 10 s after the first
        c.stop()


def test_template_redefinitions_are_counted_and_logged_at_debug(caplog):
    import logging
    from imds_flow.app import Pipeline, _NullSink
    from imds_flow.datagrams import DatagramBatch
    from imds_flow.metrics import render_prometheus
    caplog.set_level(logging.DEBUG, logger="imds_flow")
    p = Pipeline(config.load(), _NullSink(), clock=lambda: 1.7e9)
    for fields in ([(8, 4), (12, 4)], [(8, 4), (12, 4)], [(8, 4), (12, 4), (4, 1)]):   # same, same, another
        p.process(DatagramBatch.from_payloads([_template(300, fields)], ts=1.7e9))
    p.tick(1.7e9)
    assert p.exporters.total("template_redefinitions") == 1
    assert "imds_flow_template_redefinitions_total{" in render_prometheus(p.snapshot())
    assert "1 template(s) redefined" in caplog.text


def test_every_outage_of_a_udp_sink_is_warned_however_close(caplog):
    import logging
    from imds_flow.sinks import UdpSink
    caplog.set_level(logging.INFO, logger="imds_flow")
    port = free_port()
    sink = UdpSink("siem-udp", "127.0.0.1", port)

    def send_until(dropped: bool) -> None:
        for _ in range(200):                              # ICMP port unreachable arrives after a send
            before = sink.dropped
            sink.write_alerts([packed(0)])
            if (sink.dropped > before) == dropped:
                return
        raise AssertionError("the outage did not show")

    for outage in range(2):                               # two outages within a second of each other
        send_until(dropped=True)
        rx = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        rx.bind(("127.0.0.1", port))
        send_until(dropped=False)
        rx.close()
    sink.close()
    warned = [r for r in caplog.records if "alert datagram dropped" in r.getMessage()]
    assert len(warned) == 2 and caplog.text.count("sending again") == 2


PENDING = textwrap.dedent('''
    import gc, json, struct
    from imds_flow import app, config
    from imds_flow.datagrams import DatagramBatch

    def rss_mb(key="VmRSS"):
        for line in open("/proc/self/status"):
            if line.startswith(key + ":"):
                return int(line.split()[1]) / 1024

    cfg = config.parse(config.default_text().replace("max_pending_bytes = 16777216", "max_pending_bytes = 67108864")
                       .replace("max_pending_bytes_per_exporter = 1048576", "max_pending_bytes_per_exporter = 67108864")
                       .replace("pending_max_sets = 256", "pending_max_sets = 4096"))
    p = app.Pipeline(cfg, app._NullSink(), clock=lambda: 1.7e9)
    p.warm_up()
    def ipfix(body, seq):
        return struct.pack(">HHIII", 10, 16 + len(body), 1_700_000_000, seq, 0) + body
    records = 65535 - 16 - 4
    dset = struct.pack(">HH", 256, 4 + records) + bytes([6]) * records
    for k in range(8):                                                # 32 MB of data before its template
        p.process(DatagramBatch.from_payloads([ipfix(dset, 0)] * 64, ts=1.7e9))
    tmpl = struct.pack(">HHHH", 256, 1, 4, 1)
    tset = struct.pack(">HH", 2, 4 + len(tmpl)) + tmpl
    gc.collect()
    base = rss_mb()
    waiting = len(p.exporters.templates.pending)
    for k in range(40):                                               # the template, then more traffic
        p.process(DatagramBatch.from_payloads([ipfix(tset, 0)], ts=1.7e9))
    print(json.dumps({"peak_growth_mb": rss_mb("VmHWM") - base, "records": p.exporters.total("records"),
                      "waiting_before": waiting, "waiting_after": len(p.exporters.templates.pending),
                      "capacity": p.batch.capacity}))
''')


def test_data_waiting_for_its_template_is_released_within_the_batch_limit():
    """32 MB of 1-byte records wait for their template; when it comes they are decoded a batch's worth
    at a time (the column batch within limits.max_batch_records), none lost."""
    from imds_flow import app
    app.Pipeline(config.load(), app._NullSink()).warm_up()
    out = subprocess.run([sys.executable, "-c", PENDING], cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    r = json.loads(out.stdout.strip().splitlines()[-1])
    print(r)
    assert r["waiting_before"] == 512 and r["waiting_after"] == 0
    assert r["records"] == 512 * (65535 - 20)
    assert r["capacity"] <= 2 * config.Limits().max_batch_records and r["peak_growth_mb"] < 400, r


def test_reopen_keeps_the_file_that_is_still_at_its_path_and_follows_a_rename(tmp_path):
    path = tmp_path / "a.mp"
    sink = open_sink(str(path))
    sink.write_alerts([packed(0)])
    fd = sink._fd
    sink.reopen()                                         # a config reload: nothing moved
    assert sink._fd == fd
    path.rename(tmp_path / "a.mp.1")
    sink.reopen()                                         # logrotate: a new file at the path
    sink.write_alerts([packed(1)])
    sink.close()
    assert [a["n"] for a in read_alerts(tmp_path / "a.mp.1")] == [0] and [a["n"] for a in read_alerts(path)] == [1]
