"""The floor: imds-flow's own receive loop with nothing behind it, to say what waking up and reading
costs before a single record is decoded.

    imds-flow bench --export v5 --rates 3e5,1e6 --compare nfcapd,floor --repeat 3

`floor` runs serve._Loop (uvloop, epoll wake-ups, `listen.coalesce_seconds` polls) around
receive.Receiver (recvmmsg into the preallocated slots, kernel arrival timestamps, the unpack
kernel), exactly as `imds-flow listen` does with the default config, and hands each batch to a
pipeline that only counts it (NetFlow v5 records by the header's count: one numpy sum a batch, the
only work it adds). Its CPU per million records is the part of imds-flow's that no decoder,
detector or alert path can save; the rest is what they cost. Run alone (`python -m bench.floor
--port P`) it says "listening on 127.0.0.1:P" and, at SIGTERM or SIGINT, "floor: D datagrams, R
records".
"""
from __future__ import annotations

import argparse
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from .compare import tree_cpu_seconds, udp_drops

__all__ = ["Floor", "main"]

_DONE = re.compile(r"floor: (\d+) datagrams, (\d+) records")


class _Count:
    """The pipeline of the floor: counts datagrams and v5 records, decodes nothing."""

    def __init__(self):
        self.datagrams = self.records = 0

    def process(self, dg, truncated=None) -> None:
        offs = dg.offs[: dg.n]
        self.datagrams += dg.n
        self.records += int(dg.buf[offs + 2].astype(np.int64).sum() * 256 + dg.buf[offs + 3].sum())

    def tick(self, now: float) -> None:
        pass


def serve(port: int, rcvbuf: int) -> None:
    """Listen on 127.0.0.1:port until SIGTERM / SIGINT, with the default config's receive settings."""
    from imds_flow import config, receive, serve as live
    from imds_flow.sockets import open_sockets
    lc = config.load(None).listen
    sock = open_sockets([("127.0.0.1", port)], rcvbuf)[0][0]
    receiver = receive.Receiver(sock, lc.batch_datagrams, lc.max_datagram_bytes)
    receive.warm_up()
    count = _Count()
    print(f"listening on 127.0.0.1:{sock.getsockname()[1]}", file=sys.stderr, flush=True)
    live.serve(count, [receiver], coalesce=lc.coalesce_seconds)
    print(f"floor: {count.datagrams} datagrams, {count.records} records", file=sys.stderr, flush=True)


class Floor:
    """The floor as a separate process on 127.0.0.1, a fresh one per point (flowbench.measure)."""

    name = "floor"

    def __init__(self, workdir: Path, rcvbuf: int):
        self.workdir = workdir
        self._log = open(workdir / "floor.log", "w")
        root = Path(__file__).parent.parent
        self.proc = subprocess.Popen([sys.executable, "-m", "bench.floor", "--port", "0", "--rcvbuf", str(rcvbuf)],
                                     stdout=subprocess.DEVNULL, stderr=self._log, stdin=subprocess.DEVNULL, cwd=root)
        deadline = time.monotonic() + 60
        while not (m := re.search(r"listening on 127\.0\.0\.1:(\d+)", (workdir / "floor.log").read_text())):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.proc.kill()
                raise RuntimeError("the floor did not start: " + (workdir / "floor.log").read_text()[-2000:])
            time.sleep(0.02)
        self.port = int(m.group(1))

    def cpu_seconds(self) -> float:
        return tree_cpu_seconds(self.proc.pid)

    def stop(self) -> dict:
        drops = udp_drops(self.port)
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(60)
        finally:
            if self.proc.poll() is None:
                self.proc.kill()
            self._log.close()
        text = (self.workdir / "floor.log").read_text()
        m = _DONE.search(text)
        if not m:
            raise RuntimeError("no count from the floor: " + text[-2000:])
        return {"decoded_records": int(m.group(2)), "kernel_drop_datagrams": drops}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.floor", description=__doc__.split("\n\n")[0])
    p.add_argument("--port", type=int, default=0, help="UDP port on 127.0.0.1 (0: a free one, said on stderr)")
    p.add_argument("--rcvbuf", type=int, default=4 << 20, help="socket receive buffer, bytes")
    a = p.parse_args(argv)
    serve(a.port, a.rcvbuf)
    return 0


if __name__ == "__main__":
    sys.exit(main())
