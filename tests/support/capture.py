"""Capture what really crosses loopback with dumpcap (Wireshark's capture engine), for replay tests."""
from __future__ import annotations

import shutil
import signal
import subprocess
import time
from pathlib import Path


class LoopbackCapture:
    """dumpcap -i lo for UDP to `port`, written as pcapng; start before the traffic, stop after."""

    def __init__(self, path: Path, port: int, timeout: float = 30.0):
        binary = shutil.which("dumpcap")
        if binary is None:
            raise RuntimeError("dumpcap is not installed (Debian package tshark / wireshark-common)")
        self.path = Path(path)
        self._err = open(self.path.with_suffix(".log"), "w+")
        self.proc = subprocess.Popen([binary, "-q", "-i", "lo", "-f", f"udp dst port {port}", "-w", str(self.path)],
                                     stdout=subprocess.DEVNULL, stderr=self._err, stdin=subprocess.DEVNULL)
        deadline = time.monotonic() + timeout
        while "Capturing on" not in self.path.with_suffix(".log").read_text():
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.proc.kill()
                raise RuntimeError("dumpcap did not start: " + self.path.with_suffix(".log").read_text())
            time.sleep(0.05)

    def stop(self) -> Path:
        time.sleep(0.5)                       # let the last datagrams reach the capture buffer
        self.proc.send_signal(signal.SIGINT)
        self.proc.wait(30)
        self._err.close()
        return self.path
