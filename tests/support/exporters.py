"""Run real exporters (softflowd, pmacctd) on a pcap against a loopback UDP port, and record what they send.

Every driver returns only after the exporter has exited, so everything it exported is already in the
receiving socket's buffer; every run is bounded by a timeout and killed when it overruns.
Commands and quirks: tests/support/EXPORTERS.md.
"""

from __future__ import annotations

import os
import re
import shutil
import socket
import subprocess
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from xml.etree import ElementTree

import pytest
from scapy.layers.inet import IP, UDP
from scapy.layers.inet6 import IPv6
from scapy.layers.l2 import Ether
from scapy.utils import wrpcap

__all__ = [
    "ExporterRun",
    "UdpCapture",
    "capture_udp",
    "have_pmacctd",
    "have_softflowd",
    "have_tool",
    "require_tool",
    "run_pmacctd",
    "run_softflowd",
    "tshark_records",
    "write_export_pcap",
]

Datagram = tuple[bytes, tuple[str, int], float]

# Debian installs daemons under /usr/sbin, which is not always on a test runner's PATH.
_SEARCH_PATH = os.pathsep.join([os.environ.get("PATH", ""), "/usr/sbin", "/usr/local/sbin", "/sbin"])


def have_tool(name: str) -> str | None:
    """The path of the executable ``name``, or None."""
    return shutil.which(name, path=_SEARCH_PATH)


def have_softflowd() -> bool:
    return have_tool("softflowd") is not None


def have_pmacctd() -> bool:
    return have_tool("pmacctd") is not None


def require_tool(name: str) -> str:
    """The tool's path; skips the test when it is missing, but fails it under CI=true.

    The CI command installs the exporters, so a missing one there is a broken environment, not a
    reason to skip silently.
    """
    path = have_tool(name)
    if path is None:
        message = f"{name} is not installed (apt-get install softflowd pmacct nfdump tshark)"
        if os.environ.get("CI") == "true":
            pytest.fail(message, pytrace=False)
        pytest.skip(message)
    return path


@dataclass(frozen=True)
class ExporterRun:
    argv: tuple[str, ...]
    returncode: int
    stdout: str
    stderr: str
    seconds: float

    @property
    def exported_records(self) -> int | None:
        """softflowd's own count of exported flow records ("Flows exported: N (R records) ..."), or None."""
        match = re.search(r"Flows exported: \d+ \((\d+) records\)", self.stdout)
        return int(match.group(1)) if match else None


def _run(argv: list[str], timeout: float, cwd: str) -> ExporterRun:
    started = time.monotonic()
    proc = subprocess.Popen(
        argv, cwd=cwd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        start_new_session=True,
    )
    try:
        stdout, stderr = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, 9)  # its own session: only what we started
        stdout, stderr = proc.communicate()
        message = f"{argv[0]} did not finish within {timeout} s\nstdout:\n{stdout}\nstderr:\n{stderr}"
        raise TimeoutError(message) from None
    run = ExporterRun(tuple(argv), proc.returncode, stdout, stderr, time.monotonic() - started)
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)} exited {proc.returncode}\nstdout:\n{stdout}\nstderr:\n{stderr}")
    return run


def run_softflowd(
    pcap: str | Path,
    port: int,
    version: int = 9,
    bidir: bool = False,
    host: str = "127.0.0.1",
    timeout: float = 30,
) -> ExporterRun:
    """softflowd -r pcap: exports every flow (flushed at end of file) and exits.

    ``-c none`` keeps it from blocking after the end of the file; ``-a`` takes time from the pcap;
    ``-T vlan`` keys flows by VLAN and exports it (v9 / IPFIX); ``-6`` tracks IPv6 (under v5 IPv6
    flows are tracked but silently not exported). With ``-r`` softflowd does not daemonise.
    """
    if version not in (5, 9, 10):
        raise ValueError(f"softflowd version must be 5, 9 or 10, not {version}")
    if bidir and version != 10:
        raise ValueError("softflowd biflow (-b) needs IPFIX (version=10)")
    binary = require_tool("softflowd")
    with tempfile.TemporaryDirectory(prefix="softflowd-") as tmp:
        argv = [
            binary, "-r", str(Path(pcap).resolve()), "-n", _host_port(host, port), "-v", str(version),
            "-T", "vlan", "-6", "-a", "-c", "none", "-p", os.path.join(tmp, "softflowd.pid"),
        ]
        if bidir:
            argv.append("-b")
        return _run(argv, timeout, tmp)


def run_pmacctd(
    pcap: str | Path,
    port: int,
    version: int = 10,
    host: str = "127.0.0.1",
    timeout: float = 60,
) -> ExporterRun:
    """pmacctd with the nfprobe plugin reading a pcap; it exits after flushing its cache (about 4 s)."""
    if version not in (5, 9, 10):
        raise ValueError(f"pmacctd nfprobe version must be 5, 9 or 10, not {version}")
    binary = require_tool("pmacctd")
    with tempfile.TemporaryDirectory(prefix="pmacctd-") as tmp:
        config = Path(tmp, "pmacctd.conf")
        config.write_text(
            "daemonize: false\n"
            f"pcap_savefile: {Path(pcap).resolve()}\n"
            "pcap_savefile_wait: false\n"
            "plugins: nfprobe[p]\n"
            f"nfprobe_receiver[p]: {_host_port(host, port)}\n"
            f"nfprobe_version[p]: {version}\n"
            "aggregate[p]: src_host, dst_host, src_port, dst_port, proto, tos, vlan\n"
            "nfprobe_timeouts[p]: tcp=5:tcp.rst=5:tcp.fin=5:udp=5:icmp=5:general=5:maxlife=60:expint=1\n"
        )
        return _run([binary, "-f", str(config)], timeout, tmp)


def _host_port(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


class UdpCapture:
    """A UDP socket bound at construction and drained by a thread: start it before the exporter.

    ``wait()`` returns the datagrams once none arrived for ``until_idle`` seconds (counted from the
    later of the last datagram and the call to wait) or ``timeout`` seconds after the start.
    """

    def __init__(
        self, port: int = 0, host: str = "127.0.0.1", until_idle: float = 2.0, timeout: float = 60, rcvbuf: int = 8 << 20
    ):
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        self._sock = socket.socket(family, socket.SOCK_DGRAM)
        self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        self._sock.bind((host, port))
        self._sock.settimeout(0.05)
        self.host, self.port = self._sock.getsockname()[:2]
        self.until_idle, self.timeout = until_idle, timeout
        self.datagrams: list[Datagram] = []
        self._started = time.monotonic()
        self._last = self._started
        self._waiting_since: float | None = None
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._drain, name=f"capture-udp-{self.port}", daemon=True)
        self._thread.start()

    def _drain(self) -> None:
        try:
            while True:
                try:
                    data, addr = self._sock.recvfrom(65535)
                except socket.timeout:
                    now = time.monotonic()
                    if now - self._started > self.timeout:
                        return
                    waiting = self._waiting_since
                    if waiting is not None and now - max(self._last, waiting) >= self.until_idle:
                        return
                    continue
                self._last = time.monotonic()
                self.datagrams.append((data, addr[:2], time.time()))
        finally:
            self._sock.close()
            self._done.set()

    def wait(self) -> list[Datagram]:
        self._waiting_since = time.monotonic()
        self._done.wait()
        self._thread.join()
        return list(self.datagrams)

    def __enter__(self) -> UdpCapture:
        return self

    def __exit__(self, *exc) -> None:
        self.wait()


def capture_udp(port: int = 0, until_idle: float = 2.0, timeout: float = 60, host: str = "127.0.0.1") -> UdpCapture:
    """Bind ``host:port`` now (port 0: a free one, see ``.port``) and record datagrams in a thread.

        cap = capture_udp()
        run_softflowd(pcap, cap.port, version=9)
        datagrams = cap.wait()   # [(payload, (src_addr, src_port), unix_time), ...]
    """
    return UdpCapture(port=port, host=host, until_idle=until_idle, timeout=timeout)


def write_export_pcap(datagrams: list[Datagram], path: str | Path, dst_port: int, dst_addr: str | None = None) -> Path:
    """Wrap captured datagrams in Ethernet/IP/UDP with their real source address and port.

    The result replays as the exporter sent it (``imds-flow replay``) and decodes with
    ``tshark -d udp.port==dst_port,cflow``. Timestamps are the capture times.
    """
    frames = []
    for data, (src_addr, src_port), ts in datagrams:
        dst = dst_addr or ("::1" if ":" in src_addr else "127.0.0.1")
        ip = IPv6(src=src_addr, dst=dst) if ":" in src_addr else IP(src=src_addr, dst=dst)
        frame = Ether(src="02:00:00:00:00:01", dst="02:00:00:00:00:02") / ip / UDP(sport=src_port, dport=dst_port)
        frame = frame / data
        frame.time = ts
        frames.append(frame)
    path = Path(path)
    wrpcap(str(path), frames)
    return path


# --- an independent reference decoder ------------------------------------------------------------

_RECORD_LABEL = re.compile(r"^(pdu \d+/\d+|Flow \d+)$")


def tshark_records(pcap: str | Path, port: int, timeout: float = 60) -> list[dict]:
    """Flow records of an export pcap as Wireshark decodes them (``-d udp.port==port,cflow``).

    One dict per data record that carries addresses: src, dst, proto, sport, dport, vlan, post_vlan,
    packets, bytes, reverse_packets and reverse_bytes (biflow only, else None), version, and
    ``fields`` (every cflow.* field of the record as tshark shows it, in order; repeated names repeat).
    ICMP records carry no ports in v9 / IPFIX (softflowd exports icmpTypeCode IE 32 / 139 instead):
    sport is then 0 and dport type*256+code, the v5 convention. ``vlan`` is IE 58 (None when absent or
    0, which is what softflowd puts for untagged frames), ``post_vlan`` IE 59 likewise.
    """
    binary = require_tool("tshark")
    argv = [binary, "-n", "-r", str(pcap), "-d", f"udp.port=={port},cflow", "-T", "pdml"]
    proc = subprocess.run(argv, capture_output=True, timeout=timeout, check=True)
    root = ElementTree.fromstring(proc.stdout)
    records = []
    for proto in root.iter("proto"):
        if proto.get("name") != "cflow":
            continue
        version = int(next(f.get("show") for f in proto.iter("field") if f.get("name") == "cflow.version"))
        for element in proto.iter("field"):
            if element.get("name") == "" and _RECORD_LABEL.match(element.get("show", "")):
                fields: dict[str, list[str]] = {}
                for child in element.iter("field"):
                    if child is not element and child.get("name"):
                        fields.setdefault(child.get("name"), []).append(child.get("show"))
                record = _normalise(fields, version)
                if record is not None:
                    records.append(record)
    return records


def _normalise(fields: dict[str, list[str]], version: int) -> dict | None:
    def one(name: str, default=None):
        values = fields.get(name)
        return values[0] if values else default

    src = one("cflow.srcaddr") or one("cflow.srcaddrv6")
    dst = one("cflow.dstaddr") or one("cflow.dstaddrv6")
    if src is None or dst is None:
        return None  # options data, templates
    proto = int(one("cflow.protocol"))
    sport, dport = one("cflow.srcport"), one("cflow.dstport")
    if sport is None and dport is None:
        type_code = one("cflow.icmp_type_code_ipv4")
        if type_code is not None:
            sport, dport = 0, int(type_code, 0)
        elif one("cflow.icmp_ipv6_type") is not None:
            sport, dport = 0, int(one("cflow.icmp_ipv6_type")) * 256 + int(one("cflow.icmp_ipv6_code", "0"))
    vlan, post_vlan = one("cflow.vlanid"), one("cflow.post_vlanid")
    return {
        "src": src,
        "dst": dst,
        "proto": proto,
        "sport": int(sport or 0),
        "dport": int(dport or 0),
        "vlan": (int(vlan) or None) if vlan is not None else None,
        "post_vlan": (int(post_vlan) or None) if post_vlan is not None else None,
        "packets": int(one("cflow.packets", "0")),
        "bytes": int(one("cflow.octets", "0")),
        # RFC 5103 biflow: tshark names the reverse elements (PEN 29305) like the forward ones.
        "reverse_packets": int(fields["cflow.packets"][1]) if len(fields.get("cflow.packets", ())) > 1 else None,
        "reverse_bytes": int(fields["cflow.octets"][1]) if len(fields.get("cflow.octets", ())) > 1 else None,
        "version": version,
        "fields": fields,
    }


def run_pmacctd_sfprobe(pcap: str | Path, port: int, host: str = "127.0.0.1", agent: str = "192.0.2.7",
                        sampling: int = 1, timeout: float = 60) -> ExporterRun:
    """pmacctd with the sfprobe plugin reading a pcap: sFlow v5, one flow sample per packet at
    sampling 1, each with a raw header record of at most 128 bytes and an extended switch record."""
    binary = require_tool("pmacctd")
    with tempfile.TemporaryDirectory(prefix="pmacctd-sf-") as tmp:
        config = Path(tmp, "pmacctd.conf")
        config.write_text(
            "daemonize: false\n"
            f"pcap_savefile: {Path(pcap).resolve()}\n"
            "pcap_savefile_wait: false\n"
            "plugins: sfprobe[p]\n"
            f"sfprobe_receiver[p]: {_host_port(host, port)}\n"
            f"sfprobe_agentip[p]: {agent}\n"
            f"sampling_rate[p]: {sampling}\n"
        )
        return _run([binary, "-f", str(config)], timeout, tmp)
