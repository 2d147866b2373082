"""Run `imds-flow listen` as a real process for tests: start, learn its ports, stop, read alerts."""
from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import urllib.request

import msgpack

_LISTENING = re.compile(r"listening on (.*?) \(")
_METRICS = re.compile(r"metrics on http://(.*?)/metrics")

# one endpoint, every matching record its own alert: the config most live tests start from
ONE_ENDPOINT = """
[[endpoints]]
name = "aws-imds-ipv4"
address = "169.254.169.254"
[alerts]
fold_window_seconds = 0
"""

# the shipped config's two endpoints, for test configs to start from
AWS_ENDPOINTS = """
[[endpoints]]
name = "aws-imds-ipv4"
address = "169.254.169.254"
[[endpoints]]
name = "aws-imds-ipv6"
address = "fd00:ec2::254"
"""


def read_alerts(path: Path) -> list[dict]:
    if not path.exists():
        return []
    with open(path, "rb") as f:
        return list(msgpack.Unpacker(f, raw=False))


def scrape(port: int) -> dict[str, float]:
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=20).read().decode()
    out = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            name, value = line.rsplit(" ", 1)
            out[name] = float(value)
    return out


class Collector:
    """`with Collector(tmp_path, config_text) as c:` ... `c.port`, `c.send(...)`, then `c.stop()`."""

    def __init__(self, workdir: Path, config_text: str | None = None, listen=("127.0.0.1:0",), args=(),
                 activate=()):
        self.workdir = Path(workdir)
        self.alerts_path = self.workdir / "alerts.mp"
        self.log_path = self.workdir / "collector.log"
        self.config_path = None
        if config_text is not None:
            self.config_path = self.workdir / "imds-flow.toml"
            self.config_path.write_text(config_text)
        self.listen = list(listen)
        self.args = list(args)
        self.activate = list(activate)      # sockets passed as systemd socket activation does
        self.proc = None
        self.addresses: list[tuple[str, int]] = []
        self.metrics_port: int | None = None    # with args "--metrics 127.0.0.1:0": the port it got

    @property
    def port(self) -> int:
        return self.addresses[0][1]

    def start(self, timeout: float = 120.0) -> "Collector":
        cmd = [sys.executable, "-m", "imds_flow.cli", "listen", *self.listen, "--alerts", str(self.alerts_path),
               *self.args]
        if self.config_path:
            cmd += ["--config", str(self.config_path)]
        self._log = open(self.log_path, "w")
        # templates.state_file = "auto" resolves under XDG_STATE_HOME: keep each test's state its own
        env = {**os.environ, "PYTHONUNBUFFERED": "1", "XDG_STATE_HOME": str(self.workdir / "state")}
        env.pop("STATE_DIRECTORY", None)
        kw = {"env": env}
        if self.activate:
            kw = {"preexec_fn": self._socket_activation(env), "pass_fds": range(3, 3 + len(self.activate))}
        self.proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=self._log, stdin=subprocess.DEVNULL, **kw)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            text = self.log_path.read_text()
            m = _LISTENING.search(text)
            if m:
                for part in m.group(1).split(", "):
                    host, _, port = part.rpartition(":")
                    self.addresses.append((host.strip("[]"), int(port)))
                metrics = _METRICS.search(text)
                if metrics:
                    self.metrics_port = int(metrics.group(1).rpartition(":")[2])
                return self
            if self.proc.poll() is not None:
                raise RuntimeError(f"collector exited {self.proc.returncode}: {self.log_path.read_text()}")
            time.sleep(0.05)
        self.proc.kill()
        raise RuntimeError(f"collector did not start: {self.log_path.read_text()}")

    def _socket_activation(self, env: dict):
        """What systemd does in the child before exec: the sockets become fds 3, 4, ... (kept open
        through the exec by pass_fds) and LISTEN_FDS / LISTEN_PID (this very process) name them."""
        fds = [s.fileno() for s in self.activate]

        def child() -> None:
            moved = [os.dup(fd) for fd in fds]           # out of the way of fds 3.. first
            for k, fd in enumerate(moved):
                os.dup2(fd, 3 + k)
            os.environ.clear()
            os.environ.update(env, LISTEN_FDS=str(len(fds)), LISTEN_PID=str(os.getpid()))
        return child

    def wait_alerts(self, count: int, timeout: float = 30.0) -> list[dict]:
        """Alerts written so far, once their count sums to at least `count` (or the timeout ends)."""
        deadline = time.monotonic() + timeout
        while True:
            alerts = read_alerts(self.alerts_path)
            if sum(a["count"] for a in alerts) >= count or time.monotonic() > deadline:
                return alerts
            time.sleep(0.05)

    def stop(self, sig=signal.SIGTERM, timeout: float = 30.0) -> list[dict]:
        """Signal the collector, wait for it to exit 0, and return every alert it wrote."""
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                raise
        self._log.close()
        if self.proc.returncode != 0:
            raise RuntimeError(f"collector exited {self.proc.returncode}: {self.log_path.read_text()}")
        return read_alerts(self.alerts_path)

    def metrics(self) -> dict[str, float]:
        """One scrape of /metrics as {series: value} (needs `--metrics 127.0.0.1:0` in args)."""
        return scrape(self.metrics_port)

    def wait_metric(self, series: str, want: float, timeout: float = 30.0) -> dict[str, float]:
        """Scrape until `series` reaches `want` (workers report once a second); the last scrape."""
        deadline = time.monotonic() + timeout
        while True:
            m = self.metrics()
            if m.get(series, 0) >= want or time.monotonic() > deadline:
                return m
            time.sleep(0.05)

    def wait_total(self, family: str, want: float, timeout: float = 30.0) -> float:
        """Scrape until the sum of a metric family over every exporter reaches `want`; that sum."""
        deadline = time.monotonic() + timeout
        while True:
            total = sum(v for k, v in self.metrics().items() if k.split("{")[0] == family)
            if total >= want or time.monotonic() > deadline:
                return total
            time.sleep(0.05)

    @property
    def log(self) -> str:
        return self.log_path.read_text()

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        if self.proc and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
