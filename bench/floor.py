"""The floor: imds-flow's own receive loop with nothing behind it, to say what waking up and reading
costs before a single record is decoded.

    imds-flow bench --export v5 --rates 3e5,1e6 --compare nfcapd,floor --repeat 3

`floor` runs serve._Loop (uvloop, epoll wake-ups, turns of `listen.coalesce_seconds` polls) around
receive.Receiver, exactly as `imds-flow listen` does with the default config, with its polls
compiled as polls.poll_loop's are (recvmmsg into the preallocated slots with kernel arrival
timestamps, the unpack kernel, the sleep between polls, back to epoll after the same idle polls) but
nothing behind the unpack kernel: each batch is only counted (its datagrams, and NetFlow v5 records
by the header's count). Its CPU per million records is the part of imds-flow's that no decoder,
detector or alert path can save; the rest is what they cost. Run alone (`python -m bench.floor
--port P`) it says "listening on 127.0.0.1:P" and, at SIGTERM or SIGINT, "floor: D datagrams, R
records".
"""
from __future__ import annotations

import sys

import numpy as np

from .flowbench import reads_only_main

__all__ = ["serve", "main"]


class _Count:
    """The pipeline of the floor: counts datagrams and v5 records, decodes nothing (the batches the
    compiled reads hand back: the last of a run cut short by an error, and the final drain)."""

    def __init__(self):
        self.datagrams = self.records = 0

    def process(self, dg, truncated=None) -> None:
        offs = dg.offs[: dg.n]
        self.datagrams += dg.n
        self.records += int(dg.buf[offs + 2].astype(np.int64).sum() * 256 + dg.buf[offs + 3].sum())

    def tick(self, now: float) -> None:
        pass


def _reads():
    """The compiled reads, made on first use (numba is imported by imds_flow's modules anyway).

    read_polls is polls.poll_loop's loop with a count where poll_loop calls the one-call kernels: a
    copy, kept in step by hand. One loop taking its per-batch work as a function (an argument, or a
    closure's) is what numba cannot keep in its on-disk cache (tried: a function in the signature
    or the closure makes every process compile it again), and the poll loop must load in a second.
    """
    from imds_flow import polls, receive
    from imds_flow.jit import kernel

    @kernel
    def read_polls(fd, hdrs_at, sleep_at, polls_, idle, now, recv, res):
        """polls.poll_loop's polls with only counting behind the unpack kernel: res = (code, -, -,
        datagrams, -, -, -, v5 records)."""
        raw, names, control, buf, offs, lens, trunc, hi, lo, port, ts = recv
        slots = np.int32(raw.shape[0])
        empty = 0
        res[0] = polls.DONE
        for p in range(polls_):
            if p > 0:
                polls._nanosleep(sleep_at)
            polled = 0
            full = False
            for _ in range(polls.TURN_BATCHES):
                n = polls._recvmmsg(np.int32(fd), hdrs_at, slots)
                if n <= 0:
                    full = False
                    break
                polled += n
                res[3] += n
                receive._unpack(raw, names, control, n, now, lens, trunc, hi, lo, port, ts)
                for d in range(n):
                    res[7] += np.int64(buf[offs[d] + 2]) * 256 + np.int64(buf[offs[d] + 3])
                full = n == slots
                if not full:
                    break
            empty = empty + 1 if polled == 0 else 0
            if empty >= idle:
                res[0] = polls.EMPTY
                return
            if full:
                res[0] = polls.BUSY
                return

    return read_polls


class _FloorPolls:
    """serve._Loop's `polls` for the floor: polls.Polls.run's contract, reads only."""

    def __init__(self, count: _Count, coalesce: float):
        self.count, self.read = count, _reads()
        from imds_flow.polls import timespec
        self._sleep = timespec(coalesce)
        self.res = np.zeros(8, np.int64)

    def run(self, r, polls: int, idle: int = 1) -> tuple[int, int]:
        res = self.res
        res[:] = 0
        self.read(r._fd, r._hdrs_at, self._sleep.ctypes.data, polls, idle, r.clock(), r.columns(), res)
        self.count.datagrams += int(res[3])
        self.count.records += int(res[7])
        return int(res[3]), int(res[0])


def serve(port: int, rcvbuf: int) -> None:
    """Listen on 127.0.0.1:port until SIGTERM / SIGINT, with the default config's receive settings."""
    from imds_flow import config, polls, receive, serve as live
    from imds_flow.sockets import open_sockets
    lc = config.load(None).listen
    sock = open_sockets([("127.0.0.1", port)], rcvbuf)[0][0]
    receiver = receive.Receiver(sock, lc.batch_datagrams, lc.max_datagram_bytes)
    receive.warm_up()
    count = _Count()
    reads = _FloorPolls(count, lc.coalesce_seconds) if polls.usable(receiver) else None
    if reads is not None:
        reads.run(receiver, 1)                                    # compiled (or loaded) before traffic
    port = sock.getsockname()[1]
    live.serve(count, [receiver], coalesce=lc.coalesce_seconds, compiled=reads,    # said once SIGTERM is handled
               ready=lambda: print(f"listening on 127.0.0.1:{port}", file=sys.stderr, flush=True))
    print(f"floor: {count.datagrams} datagrams, {count.records} records", file=sys.stderr, flush=True)


def main(argv=None) -> int:
    return reads_only_main("floor", serve, __doc__, argv)


if __name__ == "__main__":
    sys.exit(main())
