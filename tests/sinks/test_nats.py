"""The NATS sink against a real nats-server with JetStream: acknowledged publishes, every alert once and
in order in the stream, also across a server that is down for a while; TLS; core NATS without JetStream."""
from __future__ import annotations

import base64
import json
import shutil
import socket
import time

import msgpack
import pytest

from imds_flow import config as config_mod
from imds_flow.sinks import open_sinks
from imds_flow.sinks.nats import NatsConnection
from imds_flow.sinks.tls import Tls
from tests.support.receivers import NatsServer, make_certs, wait_for

pytestmark = pytest.mark.skipif(not shutil.which("nats-server"), reason="needs nats-server (tests/run installs it)")

TS0 = 1_760_000_000.25
SUBJECT = "imds_flow.alerts.collector-1"


def alert(n: int) -> bytes:
    return msgpack.packb({"n": n, "ts": TS0 + n, "src": "10.0.0.1", "dst": "169.254.169.254", "count": 1})


def client(server: NatsServer, tls: Tls | None = None) -> NatsConnection:
    conn = NatsConnection(socket.create_connection(("127.0.0.1", server.port), timeout=10), "test", tls)
    conn.handshake(time.monotonic() + 10)
    return conn


def js(server: NatsServer, api: str, body: dict, tls: Tls | None = None) -> dict:
    conn = client(server, tls)
    try:
        return json.loads(conn.request("$JS.API." + api, json.dumps(body).encode(), time.monotonic() + 10))
    finally:
        conn.sock.close()


def stream_messages(server: NatsServer, tls: Tls | None = None) -> list[tuple[str, dict]]:
    """(subject, alert) of every message in stream ALERTS, read back from the server."""
    info = js(server, "STREAM.INFO.ALERTS", {}, tls)
    out = []
    for seq in range(info["state"]["first_seq"], info["state"]["last_seq"] + 1):
        msg = js(server, "STREAM.MSG.GET.ALERTS", {"seq": seq}, tls)["message"]
        out.append((msg["subject"], msgpack.unpackb(base64.b64decode(msg["data"]), raw=False)))
    return out


def create_stream(server: NatsServer, tls: Tls | None = None) -> None:
    reply = js(server, "STREAM.CREATE.ALERTS", {"name": "ALERTS", "subjects": ["imds_flow.alerts.>"],
                                                "storage": "file", "duplicate_window": 120_000_000_000}, tls)
    assert "error" not in reply, reply


def sinks_for(tmp_path, table: str):
    cfg = config_mod.parse(config_mod.default_text() + "\n[[sinks]]\n" + table)
    return open_sinks(cfg.sinks, state_dir=tmp_path / "state")


def test_jetstream_every_alert_once_in_order_across_a_server_that_is_down(tmp_path):
    server = NatsServer(tmp_path / "nats").start()
    try:
        create_stream(server)
        sinks = sinks_for(tmp_path, f'type = "nats"\naddress = "nats://127.0.0.1:{server.port}"\n'
                                    f'subject = "{SUBJECT}"\njetstream = true\n')
        sink = sinks.sinks[0]
        sinks.write_alerts([alert(n) for n in range(300)])
        assert wait_for(lambda: sink.sent == 300, 60)
        server.stop()                                 # down: the store stays on disk
        for start in range(300, 600, 60):
            sinks.write_alerts([alert(n) for n in range(start, start + 60)])
        assert wait_for(lambda: sink.spool.records == 300 and not sink.connected, 60)
        server.start()                                # back, same port and store
        sinks.write_alerts([alert(n) for n in range(600, 700)])
        assert wait_for(lambda: sink.sent == 700, 90)
        sinks.close()
        got = stream_messages(server)
        assert [a["n"] for _, a in got] == list(range(700))        # exactly once, in order, in the stream
        assert {s for s, _ in got} == {SUBJECT}
        assert (sink.dropped, sink.spool.records) == (0, 0) and sink.connects >= 2
    finally:
        server.stop()


def test_a_chunk_sent_twice_is_stored_once(tmp_path):
    """A resend after a lost ack carries the same Nats-Msg-Id: the stream keeps one copy."""
    server = NatsServer(tmp_path / "nats").start()
    try:
        create_stream(server)
        from imds_flow.sinks.nats import NatsProtocol
        proto = NatsProtocol(SUBJECT)
        records = [proto.record(alert(n)) for n in range(5)]
        for _ in range(2):
            sock = socket.create_connection(("127.0.0.1", server.port), timeout=10)
            sock = proto.handshake(sock, time.monotonic() + 10)
            proto.send(sock, records, time.monotonic() + 10)
            sock.close()
        assert [a["n"] for _, a in stream_messages(server)] == list(range(5))
    finally:
        server.stop()


def test_no_stream_for_the_subject_keeps_alerts_spooled_and_says_why(tmp_path, caplog):
    server = NatsServer(tmp_path / "nats").start()
    try:
        sinks = sinks_for(tmp_path, f'type = "nats"\naddress = "127.0.0.1:{server.port}"\nsubject = "{SUBJECT}"\n')
        sinks.write_alerts([alert(0)])
        sink = sinks.sinks[0]
        assert wait_for(lambda: "no JetStream stream holds subject" in caplog.text, 30)
        assert sink.sent == 0 and sink.spool.records == 1
        create_stream(server)                          # the operator creates it: delivered on the next try
        assert wait_for(lambda: sink.sent == 1, 60)
        sinks.close()
    finally:
        server.stop()


def test_jetstream_over_tls(tmp_path):
    certs = make_certs(tmp_path / "certs")
    server = NatsServer(tmp_path / "nats", certs).start()
    try:
        import ssl
        tls = Tls(ssl.create_default_context(cafile=certs.ca), "localhost")
        create_stream(server, tls)
        sinks = sinks_for(tmp_path, f'type = "nats"\naddress = "nats://127.0.0.1:{server.port}"\ntls = true\n'
                                    f'tls_ca_file = "{certs.ca}"\ntls_server_name = "localhost"\nsubject = "{SUBJECT}"\n')
        sinks.write_alerts([alert(n) for n in range(50)])
        sink = sinks.sinks[0]
        assert wait_for(lambda: sink.sent == 50, 60)
        sinks.close()
        assert [a["n"] for _, a in stream_messages(server, tls)] == list(range(50))
    finally:
        server.stop()


def test_core_nats_without_jetstream_reaches_a_subscriber(tmp_path):
    server = NatsServer(tmp_path / "nats").start()
    try:
        sub = client(server)
        sub.sock.sendall(f"SUB {SUBJECT} 7\r\nPING\r\n".encode())
        while sub._frame(time.monotonic() + 10)[0] != "PONG":
            pass
        sinks = sinks_for(tmp_path, f'type = "nats"\naddress = "127.0.0.1:{server.port}"\nsubject = "{SUBJECT}"\n'
                                    'jetstream = false\nformat = "ecs-json"\n')
        sinks.write_alerts([json.dumps({"n": n}).encode() + b"\n" for n in range(10)])
        got = [json.loads(sub._frame(time.monotonic() + 30)[2]) for _ in range(10)]
        sinks.close()
        sub.sock.close()
        assert [g["n"] for g in got] == list(range(10))
    finally:
        server.stop()
