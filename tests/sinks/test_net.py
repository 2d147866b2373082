"""Spooled TCP and Fluent forward sinks against real receivers on loopback: receivers that stop
mid-stream and come back get every alert exactly once, in order; a full spool drops the oldest and
counts them; a spool left at shutdown is delivered at the next start; decoding never waits."""
import json
import os
import threading
import time

import msgpack
import pytest

from imds_flow import config as config_mod
from imds_flow.app import Pipeline
from imds_flow.config import SinkSpec
from imds_flow.datagrams import DatagramBatch
from imds_flow.formats import EcsJsonEncoder
from imds_flow.sinks import Spool, open_sinks
from imds_flow.sinks.net import ForwardProtocol, SpooledSink, StreamProtocol
from tests.support.sink_servers import BlackholeServer, ForwardServer, MsgpackServer
from tests.support.wait import wait_for
from imds_flow.build import v5

TS0 = 1_760_000_000.25


def alert(n: int) -> bytes:
    return msgpack.packb({"n": n, "ts": TS0 + n, "src": "10.0.0.1", "dst": "169.254.169.254", "count": 1})


def tcp_sink(tmp_path, port, **kw) -> SpooledSink:
    spool = Spool(str(tmp_path / "spool"), kw.pop("spool_max_bytes", 1 << 20), name="tcp test")
    return SpooledSink("tcp test", "127.0.0.1", port, spool, StreamProtocol(), **kw)


def fluent_sink(tmp_path, port, fmt="msgpack", require_ack=True, event_time=True, **kw) -> SpooledSink:
    spool = Spool(str(tmp_path / "spool"), kw.pop("spool_max_bytes", 1 << 20), name="fluent test")
    return SpooledSink("fluent test", "127.0.0.1", port, spool,
                       ForwardProtocol("imds_flow.alert", fmt, require_ack, event_time), **kw)


def feed(sink, total: int, batch: int = 7, pause: float = 0.001) -> None:
    """Write alerts 0..total-1 in batches, paced like a collector's flushes."""
    for start in range(0, total, batch):
        sink.write_alerts([alert(n) for n in range(start, min(start + batch, total))])
        sink.flush()
        time.sleep(pause)


def test_tcp_receiver_stops_mid_stream_and_comes_back(tmp_path):
    server = MsgpackServer().start()
    sink = tcp_sink(tmp_path, server.port)
    total = 3000
    feeder = threading.Thread(target=feed, args=(sink, total))
    feeder.start()
    assert wait_for(lambda: len(server.received) >= 800)
    server.stop()                                   # clean stop mid-stream: half-close, read to EOF
    stopped_at = len(server.received)
    # the sink is down for a while: alerts spool, and writes go on without waiting for the receiver
    assert wait_for(lambda: sink.spooled >= min(total, stopped_at + 500))
    assert len(server.received) == stopped_at
    server.start()                                  # same port
    feeder.join()
    assert wait_for(lambda: len(server.received) >= total)
    sink.close()
    server.stop()
    assert [a["n"] for a in server.received] == list(range(total))    # each exactly once, in order
    assert stopped_at < total and server.connections >= 2
    assert (sink.sent, sink.spooled, sink.dropped, sink.spool_bytes) == (total, total, 0, 0)


def test_fluent_receiver_dies_mid_stream_and_comes_back(tmp_path):
    server = ForwardServer(die_after=700).start()
    sink = fluent_sink(tmp_path, server.port)
    total = 3000
    feeder = threading.Thread(target=feed, args=(sink, total))
    feeder.start()
    assert server.died.wait(30)                     # reset the connection without acking a message
    server.stop()
    down_at = sink.spooled
    assert wait_for(lambda: sink.spooled >= min(total, down_at + 300))   # writes go on while it is down
    server.die_after = None
    server.start()
    feeder.join()
    assert wait_for(lambda: len(server.events) >= total)
    sink.close()
    server.stop()
    assert [r["n"] for _, _, r in server.events] == list(range(total))
    assert {tag for tag, _, _ in server.events} == {"imds_flow.alert"}
    _, t, r = server.events[5]
    assert t == ("EventTime", int(TS0) + 5, 250_000_000) and r["ts"] == TS0 + 5
    assert all(isinstance(o["chunk"], str) and o["size"] >= 1 for o in server.messages)
    assert len({o["chunk"] for o in server.messages}) == len(server.messages)
    assert (sink.sent, sink.dropped, sink.spool_bytes) == (total, 0, 0)


def test_fluent_without_ack_integer_time_and_ecs_records(tmp_path):
    server = ForwardServer().start()
    enc = EcsJsonEncoder()
    sink = fluent_sink(tmp_path, server.port, fmt="ecs-json", require_ack=False, event_time=False)
    alerts = [{"ts": TS0 + n, "src": "10.0.0.1", "dst": "169.254.169.254", "sport": 40000 + n, "dport": 80,
               "proto": 6, "endpoint": "aws-imds-ipv4", "direction": "request", "count": 1} for n in range(50)]
    sink.write_alerts([enc.encode(a) for a in alerts])
    assert wait_for(lambda: len(server.events) == 50)
    sink.close()
    server.stop()
    assert all("chunk" not in o for o in server.messages)
    _, t, doc = server.events[3]
    assert t == int(TS0) + 3
    assert doc["source"]["port"] == 40003 and doc["event"]["kind"] == "alert" and doc["@timestamp"].endswith("Z")


def test_spool_left_at_shutdown_is_delivered_at_next_start(tmp_path):
    server = MsgpackServer().start()
    port = server.port
    server.stop()                                   # nobody listens
    sink = tcp_sink(tmp_path, port, drain_seconds=0.3)
    feed(sink, 500, pause=0)
    closing = threading.Thread(target=sink.close)  # bounded: gives up after drain_seconds
    closing.start()
    closing.join(60)
    assert not closing.is_alive()
    assert any(f.endswith(".seg") for f in os.listdir(tmp_path / "spool"))
    server.start()
    sink = tcp_sink(tmp_path, port)                 # resumes the spool at start
    feed(sink, 0)
    assert wait_for(lambda: len(server.received) >= 500)
    sink.close()
    server.stop()
    assert [a["n"] for a in server.received] == list(range(500))


def test_spooled_sink_counts_drops_while_the_receiver_is_down(tmp_path):
    server = MsgpackServer().start()
    port = server.port
    server.stop()
    sink = tcp_sink(tmp_path, port, spool_max_bytes=8 << 10, drain_seconds=0)
    feed(sink, 2000, pause=0)
    assert sink.dropped > 0 and sink.spool_bytes <= 8 << 10
    assert sink.spooled == 2000 and sink.sent == 0
    server.start()
    assert wait_for(lambda: sink.sent + sink.dropped == 2000)
    sink.close()
    server.stop()
    got = [a["n"] for a in server.received]
    assert got == list(range(2000 - len(got), 2000)) and len(got) == sink.sent


@pytest.mark.parametrize("kind", ["tcp", "fluent"])
def test_decoding_is_not_stalled_by_a_stuck_receiver(tmp_path, kind):
    """The receiver accepts and never reads: the delivery thread blocks; process() does not."""
    server = BlackholeServer().start()
    spec = SinkSpec(kind, name=kind, address=server.address, host="127.0.0.1", port=server.port,
                    spool_dir=str(tmp_path / "spool"), timeout_seconds=60.0, drain_seconds=0.2)
    sinks = open_sinks([spec])
    cfg = config_mod.parse(config_mod.default_text().replace("fold_window_seconds = 60.0",
                                                             "fold_window_seconds = 0"))
    pipeline = Pipeline(cfg, sinks)
    imds = [("10.0.0.%d" % (i % 250 + 1), "169.254.169.254", 1024 + i, 80) for i in range(30)]
    for i in range(300):          # 2.7 MB to a receiver that never reads: a blocking write would hang here
        pipeline.process(DatagramBatch.from_payloads([v5(imds, seq=30 * i)], ts=TS0 + i))
    assert pipeline.alerts_written == 9000
    stats = sinks.stats()
    assert stats["sinks"][0]["spooled"] == 9000 and stats["spool_bytes"] > 0
    closing = threading.Thread(target=pipeline.close)   # gives up after drain_seconds
    closing.start()
    closing.join(60)
    assert not closing.is_alive()
    server.stop()


@pytest.mark.parametrize("workers", [1, 2])
def test_listen_with_a_fluent_sink_end_to_end(tmp_path, workers):
    """`imds-flow listen` with [[sinks]] fluent and no --alerts: alerts reach the forward server;
    alerts raised while it is down stay in the spool across a collector restart and arrive after it.
    With --workers the parent alone holds the sink; the workers send it their alerts."""
    import socket
    import subprocess
    import sys
    server = ForwardServer().start()
    cfg = tmp_path / "imds-flow.toml"
    cfg.write_text(config_mod.default_text().replace("fold_window_seconds = 60.0", "fold_window_seconds = 0")
                   + f'\n[[sinks]]\ntype = "fluent"\naddress = "{server.address}"\ntag = "imds.e2e"\n'
                   + f'spool_dir = "{tmp_path / "spool"}"\ndrain_seconds = 0.5\n')
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "XDG_STATE_HOME": str(tmp_path / "state")}
    exporter = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)

    def run(log_path, first_port: int, wanted) -> tuple[int, bytes, str]:
        """Start the collector, send 20 IMDS records from first_port on, wait for `wanted`, stop it."""
        with open(log_path, "w") as log:
            proc = subprocess.Popen([sys.executable, "-m", "imds_flow.cli", "listen", "127.0.0.1:0", "--config",
                                     str(cfg), "--workers", str(workers)],
                                    stdout=subprocess.PIPE, stderr=log, stdin=subprocess.DEVNULL, env=env)
        try:
            assert wait_for(lambda: "listening on" in log_path.read_text(), 300)   # may compile kernels
            port = int(log_path.read_text().split("listening on 127.0.0.1:")[1].split()[0])
            recs = [("10.0.0.%d" % (i + 1), "169.254.169.254", first_port + i, 80) for i in range(20)]
            exporter.sendto(v5(recs), ("127.0.0.1", port))
            assert wait_for(wanted, 30)
        finally:
            proc.terminate()
            out, _ = proc.communicate(timeout=60)
        return proc.returncode, out, log_path.read_text()

    rc, out, log = run(tmp_path / "1.log", 40000, lambda: len(server.events) >= 20)
    assert rc == 0 and out == b"", log              # the sinks replace stdout when --alerts is not given
    assert "alerts to fluent 127.0.0.1:" in log
    server.stop()                                   # the receiver is down while alerts are raised
    rc, _, log = run(tmp_path / "2.log", 41000,
                     lambda: sum(p.stat().st_size for p in (tmp_path / "spool").glob("*.seg")) > 20 * 100)
    assert rc == 0 and "stay in" in log, log         # left in the spool at shutdown
    server.start()
    rc, _, log = run(tmp_path / "3.log", 42000, lambda: len(server.events) >= 60)
    server.stop()
    assert rc == 0, log
    assert {tag for tag, _, _ in server.events} == {"imds.e2e"}
    sports = [r["sport"] for _, _, r in server.events]
    assert sorted(sports) == [*range(40000, 40020), *range(41000, 41020), *range(42000, 42020)]
    assert sports.index(41000) < sports.index(42000)    # the spooled ones first, then the new ones
    assert json.dumps(server.events[0][2])          # plain maps, as Fluent Bit / Fluentd read them
