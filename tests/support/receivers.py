"""Real receivers the sink tests start and stop themselves: test certificates (openssl CLI), rsyslog
(Debian rsyslog + rsyslog-gnutls: imtcp plain and TLS, CEF parsed by mmnormalize/liblognorm, LEEF's
header by mmnormalize, RFC 5424 JSON by mmjsonparse) and nats-server with JetStream. Each runs in the
test's own directory, on loopback ports, with its own config, pid file and work directory."""
from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
from dataclasses import dataclass
from pathlib import Path


from .wait import wait_for  # noqa: E402,F401 - the receivers' tests import it from here


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class Certs:
    ca: str
    cert: str            # server: CN=localhost, SAN localhost and 127.0.0.1
    key: str
    client_cert: str     # client: CN=imds-flow test client
    client_key: str
    other_ca: str        # a CA that signed nothing here: verification against it must fail


def _openssl(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True, timeout=60)


def make_certs(directory: Path) -> Certs:
    d = Path(directory)
    d.mkdir(parents=True, exist_ok=True)
    for ca in ("ca", "other"):
        _openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", f"{ca}.key", "-out", f"{ca}.pem",
                 "-days", "2", "-subj", f"/CN=imds-flow test {ca}", "-addext", "basicConstraints=critical,CA:TRUE",
                 "-addext", "keyUsage=critical,keyCertSign,cRLSign", cwd=d)
    for name, cn, ext in (("server", "localhost", "subjectAltName=DNS:localhost,IP:127.0.0.1\n"
                                                  "extendedKeyUsage=serverAuth\n"),
                          ("client", "imds-flow test client", "extendedKeyUsage=clientAuth\n")):
        (d / f"{name}.ext").write_text(ext)
        _openssl("req", "-newkey", "rsa:2048", "-nodes", "-keyout", f"{name}.key", "-out", f"{name}.csr",
                 "-subj", f"/CN={cn}", cwd=d)
        _openssl("x509", "-req", "-in", f"{name}.csr", "-CA", "ca.pem", "-CAkey", "ca.key", "-CAcreateserial",
                 "-out", f"{name}.pem", "-days", "2", "-extfile", f"{name}.ext", cwd=d)
    return Certs(str(d / "ca.pem"), str(d / "server.pem"), str(d / "server.key"), str(d / "client.pem"),
                 str(d / "client.key"), str(d / "other.pem"))


def _wait_exit(pid: int, timeout: float = 30.0) -> None:
    def gone():
        try:
            os.kill(pid, 0)
            return False
        except ProcessLookupError:
            return True
    if not wait_for(gone, timeout):
        os.kill(pid, signal.SIGKILL)


_RSYSLOG_CONF = '''
global(workDirectory="{work}" maxMessageSize="64k" parser.escapeControlCharactersOnReceive="off"
       defaultNetstreamDriverCAFile="{ca}" defaultNetstreamDriverCertFile="{cert}" defaultNetstreamDriverKeyFile="{key}")
module(load="imtcp" maxSessions="100")
module(load="mmnormalize")
module(load="mmjsonparse")
input(type="imtcp" port="{tcp}" listenPortFileName="{dir}/tcp.port" ruleset="in")
input(type="imtcp" port="{tls}" listenPortFileName="{dir}/tls.port" ruleset="in"
      streamDriver.name="gtls" streamDriver.mode="1" streamDriver.authMode="{auth}")
template(name="received" type="list" option.jsonf="on") {{
  property(outname="hostname" name="hostname" format="jsonf")
  property(outname="app" name="app-name" format="jsonf")
  property(outname="procid" name="procid" format="jsonf")
  property(outname="msgid" name="msgid" format="jsonf")
  property(outname="pri" name="pri" format="jsonf")
  property(outname="timestamp" name="timereported" dateFormat="rfc3339" format="jsonf")
  property(outname="msg" name="msg" format="jsonf")
  property(outname="parsed" name="$!" format="jsonf")
}}
ruleset(name="in") {{
  if $msg startswith "CEF:" then {{
    action(type="mmnormalize" rule=["rule=:%cef:cef%"])
  }} else if $msg startswith "LEEF:" then {{
    action(type="mmnormalize"
           rule=["rule=:LEEF:%leef_version:char-to:|%|%vendor:char-to:|%|%product:char-to:|%|%version:char-to:|%|%event_id:char-to:|%|%delimiter:char-to:|%|%attributes:rest%"])
  }} else {{
    action(type="mmjsonparse" cookie="")
  }}
  action(type="omfile" file="{dir}/received.jsonl" template="received")
}}
'''


class Rsyslog:
    """rsyslogd -n with imtcp on a plain and a TLS port; every message it receives is one JSON line in
    received.jsonl (header fields as rsyslog parsed them, and `parsed`: what its parsers made of MSG)."""

    def __init__(self, directory: Path, certs: Certs, auth: str = "anon"):
        self.dir = Path(directory)
        self.dir.mkdir(parents=True, exist_ok=True)
        (self.dir / "work").mkdir(exist_ok=True)
        self.certs, self.auth = certs, auth
        self.tcp_port = self.tls_port = 0
        self.proc: subprocess.Popen | None = None

    def start(self) -> "Rsyslog":
        for f in ("tcp.port", "tls.port"):
            (self.dir / f).unlink(missing_ok=True)
        conf = self.dir / "rsyslog.conf"
        conf.write_text(_RSYSLOG_CONF.format(work=self.dir / "work", dir=self.dir, ca=self.certs.ca,
                                             cert=self.certs.cert, key=self.certs.key, tcp=self.tcp_port,
                                             tls=self.tls_port, auth=self.auth))
        self.proc = subprocess.Popen(["rsyslogd", "-n", "-f", str(conf), "-i", str(self.dir / "rsyslogd.pid")],
                                     stdout=open(self.dir / "rsyslogd.log", "ab"), stderr=subprocess.STDOUT)
        if self.tcp_port:                    # a restart: the same ports (rsyslog writes the files for port 0 only)
            assert wait_for(lambda: _accepts(self.tcp_port) and _accepts(self.tls_port) or
                            self.proc.poll() is not None, 60), "rsyslogd did not start"
        else:
            ports = [self.dir / "tcp.port", self.dir / "tls.port"]
            assert wait_for(lambda: all(p.exists() and p.read_text().strip() for p in ports) or
                            self.proc.poll() is not None, 60), "rsyslogd did not start"
            self.tcp_port, self.tls_port = (int(p.read_text()) for p in ports)
        assert self.proc.poll() is None, (self.dir / "rsyslogd.log").read_text()
        return self

    def stop(self) -> None:
        stop_process(self.proc)
        self.proc = None

    def received(self) -> list[dict]:
        path = self.dir / "received.jsonl"
        if not path.exists():
            return []
        out = []
        text = path.read_text()
        # rsyslog may be writing the last line right now: only lines it has finished count
        for line in text[: text.rfind("\n") + 1].splitlines():
            if line.strip():
                doc = json.loads(line)
                doc["parsed"] = json.loads(doc["parsed"]) if doc.get("parsed") else {}
                out.append(doc)
        return out


def stop_process(proc: subprocess.Popen | None) -> None:
    """SIGTERM, then SIGKILL if it has not exited within 30 s."""
    if proc is not None and proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)


def _accepts(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=1).close()
        return True
    except OSError:
        return False


class NatsServer:
    """nats-server -js on a loopback port, its store in the test's directory; optionally TLS."""

    def __init__(self, directory: Path, certs: Certs | None = None):
        self.dir = Path(directory)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        self.certs = certs
        self.proc: subprocess.Popen | None = None

    def start(self) -> "NatsServer":
        args = ["nats-server", "-js", "-a", "127.0.0.1", "-p", str(self.port), "-sd", str(self.dir / "store")]
        if self.certs is not None:
            args += ["--tls", "--tlscert", self.certs.cert, "--tlskey", self.certs.key]
        self.proc = subprocess.Popen(args, stdout=open(self.dir / "nats.log", "ab"), stderr=subprocess.STDOUT)
        assert wait_for(lambda: _accepts(self.port) or self.proc.poll() is not None, 60) and self.proc.poll() is None, \
            (self.dir / "nats.log").read_text()
        return self

    def stop(self) -> None:
        stop_process(self.proc)
        self.proc = None
