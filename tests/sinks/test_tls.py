"""TLS for the tcp and fluent sinks (and Fluent forward's shared-key handshake) against TLS receivers the
test starts with Python's ssl: the receiver is verified, a client certificate is sent when asked for,
every alert arrives once and in order, also across a receiver that is down for a while."""
from __future__ import annotations

import hashlib
import os
import socket
import ssl
import threading

import msgpack
import pytest

from imds_flow import config as config_mod
from imds_flow.sinks import open_sinks
from tests.support.receivers import make_certs, wait_for

TS0 = 1_760_000_000.25


def alert(n: int) -> bytes:
    return msgpack.packb({"n": n, "ts": TS0 + n, "src": "10.0.0.1", "dst": "169.254.169.254", "count": 1})


def _sha512(*parts) -> str:
    return hashlib.sha512(b"".join(p.encode() if isinstance(p, str) else p for p in parts)).hexdigest()


class TlsReceiver:
    """TLS on 127.0.0.1: a msgpack stream (kind "tcp") or Fluent forward with acks and, with shared_key,
    the HELO / PING / PONG handshake (kind "fluent"). stop() closes; start() listens on the same port."""

    def __init__(self, certs, kind: str, shared_key: str = "", client_ca: str | None = None):
        self.ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        self.ctx.load_cert_chain(certs.cert, certs.key)
        if client_ca:
            self.ctx.verify_mode = ssl.CERT_REQUIRED
            self.ctx.load_verify_locations(client_ca)
        self.kind, self.shared_key = kind, shared_key
        self.port = 0
        self.received: list = []
        self.client_names: list[str] = []
        self.refused = 0                            # handshakes that failed (TLS or shared key)
        self.lock = threading.Lock()

    def start(self) -> "TlsReceiver":
        self._stop = threading.Event()
        self._listen = socket.socket()
        self._listen.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._listen.bind(("127.0.0.1", self.port))
        self._listen.listen(8)
        self._listen.settimeout(0.05)
        self.port = self._listen.getsockname()[1]
        self._threads = [threading.Thread(target=self._accept, daemon=True)]
        self._threads[0].start()
        return self

    def stop(self) -> None:
        self._stop.set()
        for t in list(self._threads):
            t.join(10)
        self._listen.close()

    def _accept(self) -> None:
        while not self._stop.is_set():
            try:
                raw, _ = self._listen.accept()
            except (socket.timeout, OSError):
                continue
            t = threading.Thread(target=self._serve, args=(raw,), daemon=True)
            t.start()
            self._threads.append(t)

    def _serve(self, raw: socket.socket) -> None:
        raw.settimeout(10)
        try:
            conn = self.ctx.wrap_socket(raw, server_side=True)
        except (ssl.SSLError, OSError):
            with self.lock:
                self.refused += 1
            raw.close()
            return
        conn.settimeout(0.05)
        unpacker = msgpack.Unpacker(raw=False, strict_map_key=False)
        with conn:
            if self.kind == "fluent" and self.shared_key and not self._handshake(conn, unpacker):
                return
            while not self._stop.is_set():
                try:
                    data = conn.recv(65536)
                except (socket.timeout, ssl.SSLWantReadError):
                    continue
                except OSError:
                    return
                if not data:
                    return
                unpacker.feed(data)
                for msg in unpacker:
                    if self.kind == "tcp":
                        with self.lock:
                            self.received.append(msg)
                        continue
                    tag, entries, option = msg
                    with self.lock:
                        self.received.extend(record for _, record in entries)
                    if "chunk" in option:
                        conn.sendall(msgpack.packb({"ack": option["chunk"]}))

    def _handshake(self, conn, unpacker) -> bool:
        nonce = os.urandom(16)
        conn.sendall(msgpack.packb(["HELO", {"nonce": nonce, "auth": b"", "keepalive": True}], use_bin_type=True))
        ping = None
        while ping is None and not self._stop.is_set():
            try:
                unpacker.feed(conn.recv(65536))
            except (socket.timeout, ssl.SSLWantReadError):
                continue
            ping = next(iter(unpacker), None)
        _, hostname, salt, digest, _user, _password = ping
        ok = digest == _sha512(salt, hostname, nonce, self.shared_key)
        with self.lock:
            self.client_names.append(hostname)
            self.refused += not ok
        conn.sendall(msgpack.packb(["PONG", ok, "" if ok else "shared key mismatch", "receiver.test",
                                    _sha512(salt, "receiver.test", nonce, self.shared_key)]))
        return ok


@pytest.fixture(scope="module")
def certs(tmp_path_factory):
    return make_certs(tmp_path_factory.mktemp("certs"))


def sinks_for(tmp_path, table: str):
    cfg = config_mod.parse(config_mod.default_text() + "\n[[sinks]]\n" + table)
    return open_sinks(cfg.sinks, state_dir=tmp_path / "state")


def _received_n(receiver) -> list[int]:
    with receiver.lock:
        return [r["n"] for r in receiver.received]


@pytest.mark.parametrize("kind", ["tcp", "fluent"])
def test_tls_sink_delivers_once_in_order_across_a_receiver_that_is_down(tmp_path, certs, kind):
    receiver = TlsReceiver(certs, kind, shared_key="s3cret" if kind == "fluent" else "").start()
    extra = 'shared_key = "s3cret"\nself_hostname = "collector-1"\n' if kind == "fluent" else ""
    sinks = sinks_for(tmp_path, f'type = "{kind}"\naddress = "localhost:{receiver.port}"\ntls = true\n'
                                f'tls_ca_file = "{certs.ca}"\n{extra}')
    sink = sinks.sinks[0]
    sinks.write_alerts([alert(n) for n in range(200)])
    assert wait_for(lambda: len(_received_n(receiver)) >= 200)
    receiver.stop()
    sinks.write_alerts([alert(n) for n in range(200, 500)])
    assert wait_for(lambda: sink.spool.records == 300 and not sink.connected)
    receiver.start()
    sinks.write_alerts([alert(n) for n in range(500, 600)])
    assert wait_for(lambda: len(_received_n(receiver)) >= 600, 60)
    sinks.close()
    receiver.stop()
    assert _received_n(receiver) == list(range(600))
    assert (sink.sent, sink.dropped, sink.spool.records) == (600, 0, 0)
    if kind == "fluent":
        assert set(receiver.client_names) == {"collector-1"} and receiver.refused == 0


def test_tls_sends_a_client_certificate_when_the_receiver_asks(tmp_path, certs):
    receiver = TlsReceiver(certs, "tcp", client_ca=certs.ca).start()
    table = f'type = "tcp"\naddress = "127.0.0.1:{receiver.port}"\ntls = true\ntls_ca_file = "{certs.ca}"\n'
    without = sinks_for(tmp_path / "a", table)
    without.write_alerts([alert(0)])
    assert wait_for(lambda: receiver.refused >= 1)
    without.sinks[0].drain_seconds = 0.2
    without.close()
    with_cert = sinks_for(tmp_path / "b", table + f'tls_cert_file = "{certs.client_cert}"\n'
                                                  f'tls_key_file = "{certs.client_key}"\n')
    with_cert.write_alerts([alert(1)])
    assert wait_for(lambda: _received_n(receiver) == [1])
    with_cert.close()
    receiver.stop()


def test_tls_verifies_the_receiver(tmp_path, certs):
    """By default the receiver's certificate must chain to a trusted CA and carry the name: not ours."""
    receiver = TlsReceiver(certs, "tcp").start()
    for i, extra in enumerate(("", f'tls_ca_file = "{certs.other_ca}"\n',
                               f'tls_ca_file = "{certs.ca}"\ntls_server_name = "siem.example.net"\n')):
        sinks = sinks_for(tmp_path / str(i), f'type = "tcp"\naddress = "127.0.0.1:{receiver.port}"\ntls = true\n'
                                             + extra)
        sinks.write_alerts([alert(0)])
        sink = sinks.sinks[0]
        assert wait_for(lambda: receiver.refused >= i + 1)
        sink.drain_seconds = 0.2
        sinks.close()
        assert sink.sent == 0
    receiver.stop()
    assert receiver.received == []


def test_fluent_wrong_shared_key_is_refused_and_nothing_is_sent(tmp_path, certs, caplog):
    receiver = TlsReceiver(certs, "fluent", shared_key="right").start()
    sinks = sinks_for(tmp_path, f'type = "fluent"\naddress = "localhost:{receiver.port}"\ntls = true\n'
                                f'tls_ca_file = "{certs.ca}"\nshared_key = "wrong"\n')
    sinks.write_alerts([alert(0)])
    assert wait_for(lambda: receiver.refused >= 1)
    sinks.sinks[0].drain_seconds = 0.2
    sinks.close()
    receiver.stop()
    assert receiver.received == [] and receiver.client_names[0] == socket.gethostname()
    assert "refused the shared key: shared key mismatch" in caplog.text


@pytest.mark.parametrize("table, message", [
    ('type = "tcp"\naddress = "h:1"\ntls_ca_file = "/x"', 'tls_* keys need tls = true'),
    ('type = "syslog"\naddress = "h:1"\ntls_ca_file = "/x"', 'tls_* keys need transport = "tls"'),
    ('type = "syslog"\naddress = "h:1"\ntransport = "quic"', "transport = 'quic': expected one of udp, tcp, tls"),
    ('type = "syslog"\naddress = "h:1"\nformat = "msgpack"', "format = 'msgpack': expected one of cef, leef, rfc5424"),
    ('type = "udp"\naddress = "h:1"\ntls = true', "unknown key sinks[0].tls"),
    ('type = "tcp"\naddress = "h:1"\ntls = true\ntls_key_file = "k"', "tls_key_file = 'k': needs tls_cert_file"),
    ('type = "nats"\naddress = "nats://h:4222"\nsubject = "a.*"', "subject = 'a.*': expected a NATS subject"),
])
def test_bad_tls_syslog_and_nats_keys_are_one_line_errors(table, message):
    with pytest.raises(config_mod.ConfigError) as e:
        config_mod.parse(config_mod.default_text() + "\n[[sinks]]\n" + table)
    assert message in str(e.value) and "\n" not in str(e.value)


def test_a_missing_ca_file_is_named_when_the_sink_opens(tmp_path):
    cfg = config_mod.parse(config_mod.default_text() + '\n[[sinks]]\ntype = "tcp"\naddress = "h:1"\ntls = true\n'
                           f'tls_ca_file = "{tmp_path}/nope.pem"\n')
    with pytest.raises(OSError, match=r"tcp h:1: tls_ca_file .*nope.pem"):
        open_sinks(cfg.sinks, state_dir=tmp_path)
