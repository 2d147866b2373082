"""Open vSwitch (userspace datapath) as an sFlow agent in network namespaces this test creates.

Two namespaces, a veth pair into each; the root-side ends are ports of a netdev bridge whose sFlow
agent samples every packet (sampling=1, header bytes as asked) to a loopback collector. Frames are
sent into one namespace with scapy. Everything is torn down by pid files and names: only what this
module started. Commands and quirks: tests/support/EXPORTERS.md.
"""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

__all__ = ["OvsBridge"]


def _run(*argv, check=True, timeout=30):
    return subprocess.run(list(argv), capture_output=True, text=True, timeout=timeout, check=check)


class OvsBridge:
    def __init__(self, workdir: Path, target_port: int, header: int = 256):
        tag = f"{os.getpid() % 100000}"
        self.w = Path(workdir)
        self.db = f"unix:{self.w}/db.sock"
        self.br = f"imbr{tag}"
        self.ns = (f"imsa{tag}", f"imsb{tag}")
        self.veth = (f"ima{tag}", f"imb{tag}")
        self.target_port, self.header = target_port, header

    def vsctl(self, *args):
        return _run("ovs-vsctl", f"--db={self.db}", "--timeout=20", *args)

    def __enter__(self) -> "OvsBridge":
        try:
            self._start()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _start(self) -> None:
        Path("/var/run/openvswitch").mkdir(parents=True, exist_ok=True)
        _run("ovsdb-tool", "create", f"{self.w}/conf.db", "/usr/share/openvswitch/vswitch.ovsschema")
        _run(shutil.which("ovsdb-server", path="/usr/sbin:/usr/bin") or "ovsdb-server", f"{self.w}/conf.db",
             f"--remote=punix:{self.w}/db.sock", f"--pidfile={self.w}/ovsdb.pid", "--detach",
             f"--log-file={self.w}/ovsdb.log")
        self.vsctl("--no-wait", "init")
        _run(shutil.which("ovs-vswitchd", path="/usr/sbin:/usr/bin") or "ovs-vswitchd", self.db,
             f"--pidfile={self.w}/vswitchd.pid", "--detach", f"--log-file={self.w}/vswitchd.log")
        self.vsctl("add-br", self.br, "--", "set", "bridge", self.br, "datapath_type=netdev")
        for ns, veth in zip(self.ns, self.veth):
            _run("ip", "netns", "add", ns)
            _run("ip", "link", "add", veth, "type", "veth", "peer", "name", "eth0", "netns", ns)
            _run("ip", "link", "set", veth, "up")
            _run("ip", "netns", "exec", ns, "ip", "link", "set", "eth0", "up")
            _run("ip", "netns", "exec", ns, "ip", "link", "set", "lo", "up")
            self.vsctl("add-port", self.br, veth)
        self.vsctl("--", "--id=@s", "create", "sflow", "agent=lo", f'target="127.0.0.1:{self.target_port}"',
                   f"header={self.header}", "sampling=1", "polling=0", "--", "set", "bridge", self.br, "sflow=@s")
        deadline = time.monotonic() + 30
        while "ofport" not in self.vsctl("list", "interface", self.veth[0]).stdout or \
                "-1" in self.vsctl("get", "interface", self.veth[0], "ofport").stdout:
            if time.monotonic() > deadline:
                raise RuntimeError("Open vSwitch did not bring up its ports")
            time.sleep(0.1)

    def send_pcap(self, pcap: Path, gap: float = 0.005) -> None:
        """Send every frame of `pcap` out of the first namespace's interface, `gap` seconds apart."""
        code = ("import sys, time\nfrom scapy.all import rdpcap, sendp\n"
                f"for f in rdpcap({str(pcap)!r}):\n    sendp(f, iface='eth0', verbose=False)\n    time.sleep({gap})\n")
        _run("ip", "netns", "exec", self.ns[0], sys.executable, "-c", code, timeout=120)

    def close(self) -> None:
        for name in ("vswitchd", "ovsdb"):
            pid = self.w / f"{name}.pid"
            if pid.exists():
                try:
                    os.kill(int(pid.read_text().strip()), 15)
                except (ValueError, ProcessLookupError):
                    pass
        for ns in self.ns:
            _run("ip", "netns", "del", ns, check=False)
        for veth in self.veth:
            _run("ip", "link", "del", veth, check=False)
        _run("ip", "link", "del", self.br, check=False)
