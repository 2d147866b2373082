"""sinks.fluent: Forward mode messages as msgpack reads them (EventTime, integer time, a msgpack alert
reused byte for byte, an ECS alert's @timestamp, the size / chunk option, long arrays); the shared-key
handshake against a server on a real socket pair: accepted, refused, a server that cannot prove the
key, one that asks for a password, one that hangs up or stays silent."""
import json
import socket
import struct
import threading
import time

import msgpack
import pytest

from imds_flow.sinks.fluent import (EVENT_TIME_EXT, HandshakeError, digest, entry, event_time, handshake, message,
                                    new_chunk_id)

KEY = "s3cr3t"


def test_event_time_is_seconds_and_nanoseconds():
    assert event_time(1_760_000_000.25) == msgpack.ExtType(EVENT_TIME_EXT, struct.pack("!II", 1_760_000_000, 250_000_000))
    assert struct.unpack("!II", event_time(5.9999999999).data) == (5, 999_999_999)


def test_entries_carry_the_alert_time_and_record():
    alert = msgpack.packb({"ts": 1_760_000_000.5, "src": "10.0.0.1", "count": 1})
    e = entry(alert, "msgpack")
    assert e.endswith(alert)                                    # the alert map reused byte for byte
    when, record = msgpack.unpackb(e, raw=False)
    assert when == event_time(1_760_000_000.5) and record == {"ts": 1_760_000_000.5, "src": "10.0.0.1", "count": 1}
    assert msgpack.unpackb(entry(alert, "msgpack", use_event_time=False))[0] == 1_760_000_000
    ecs = json.dumps({"@timestamp": "2025-10-09T08:53:20.250Z", "source": {"ip": "10.0.0.1"}}).encode()
    when, record = msgpack.unpackb(entry(ecs, "ecs-json"), raw=False)
    assert when == event_time(1_760_000_000.25) and record["source"] == {"ip": "10.0.0.1"}
    assert msgpack.unpackb(entry(b"{}", "ecs-json"))[0] == event_time(0.0)          # no time: 0


@pytest.mark.parametrize("count", [1, 16, 70_000])
def test_message_is_tag_entries_and_option(count):
    entries = [entry(msgpack.packb({"ts": float(n), "n": n}), "msgpack", use_event_time=False) for n in range(count)]
    chunk = new_chunk_id()
    tag, got, option = msgpack.unpackb(message("imds_flow.alert", entries, chunk), raw=False)
    assert tag == "imds_flow.alert" and option == {"size": count, "chunk": chunk}
    assert [r["n"] for _, r in got] == list(range(count)) and [t for t, _ in got[:3]] == [0, 1, 2][:count]
    assert msgpack.unpackb(message("t", entries[:1]), raw=False)[2] == {"size": 1}
    assert len(chunk) == 24 and chunk != new_chunk_id()


class Server(threading.Thread):
    """A forward input's side of the handshake on one end of a socket pair."""

    def __init__(self, sock, key=KEY, auth=b"", prove=True, hang_up=False):
        super().__init__(daemon=True)
        self.sock, self.key, self.auth, self.prove, self.hang_up = sock, key, auth, prove, hang_up
        self.ping = None

    def run(self):
        if self.hang_up:
            self.sock.close()
            return
        nonce = b"\x01nonce\xff"
        self.sock.sendall(msgpack.packb(["HELO", {"nonce": nonce, "auth": self.auth, "keepalive": True}]))
        unpacker = msgpack.Unpacker(raw=False)
        while self.ping is None:
            data = self.sock.recv(4096)
            if not data:                          # the client gave up before its PING
                return
            unpacker.feed(data)
            self.ping = next(iter(unpacker), None)
        _, host, salt, their, _, _ = self.ping
        ok = their == digest(salt, host, nonce, self.key)
        proof = digest(salt, "fluentd-1", nonce, self.key if self.prove else "guess")
        self.sock.sendall(msgpack.packb(["PONG", ok, "" if ok else "shared_key mismatch", "fluentd-1", proof]))


def shake(server: Server, key=KEY, seconds=5.0):
    ours, theirs = socket.socketpair()
    server.sock = theirs
    server.start()
    try:
        handshake(ours, key, "collector-1", time.monotonic() + seconds)
    finally:
        ours.close()
        server.join(5)
        theirs.close()


def test_handshake_accepted():
    server = Server(None)
    shake(server)
    assert server.ping[0] == "PING" and server.ping[1] == "collector-1" and server.ping[4:] == ["", ""]


@pytest.mark.parametrize("server,key,error", [
    (dict(), "wrong", "refused the shared key: shared_key mismatch"),
    (dict(prove=False), KEY, "does not prove it knows the shared key"),
    (dict(auth=b"salt"), KEY, "user name and password"),
])
def test_handshake_refused(server, key, error):
    with pytest.raises(HandshakeError, match=error):
        shake(Server(None, **server), key)


def test_handshake_hang_up_and_silence():
    with pytest.raises(ConnectionResetError, match="before its HELO"):
        shake(Server(None, hang_up=True))
    ours, theirs = socket.socketpair()
    with ours, theirs, pytest.raises(TimeoutError, match="no HELO"):
        handshake(ours, KEY, "collector-1", time.monotonic() + 0.2)
