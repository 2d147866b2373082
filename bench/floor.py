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
import sys
from pathlib import Path

import numpy as np

from .flowbench import Listening

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
    port = sock.getsockname()[1]
    live.serve(count, [receiver], coalesce=lc.coalesce_seconds,    # said once SIGTERM is handled
               ready=lambda: print(f"listening on 127.0.0.1:{port}", file=sys.stderr, flush=True))
    print(f"floor: {count.datagrams} datagrams, {count.records} records", file=sys.stderr, flush=True)


class Floor(Listening):
    """The floor as a separate process on 127.0.0.1, a fresh one per point (flowbench.measure)."""

    name = "floor"

    def __init__(self, workdir: Path, rcvbuf: int):
        super().__init__([sys.executable, "-m", "bench.floor", "--port", "0", "--rcvbuf", str(rcvbuf)],
                         workdir / "floor.log", "the floor", cwd=Path(__file__).parent.parent)

    def stop(self) -> dict:
        drops, text = self._stop()
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
