"""Bare: the plainest receiver, to read the floor and imds-flow against.

    imds-flow bench --export v5 --rates 3e5,1e6 --compare nfcapd,floor,bare --repeat 3

`bare` is one compiled loop around a blocking recvmmsg (MSG_WAITFORONE: it sleeps in the Linux
kernel until a datagram arrives, then takes what is queued, up to 64) into the same receive slots,
with the same kernel arrival timestamps and unpack kernel as imds-flow's reads, counting NetFlow v5
records by each header's count. No event loop, no epoll, no polls, nothing behind: what a collector
that waits in the kernel for its datagrams, in any language, pays only to be woken and handed them
(a C program doing the same costs as much; bench/HISTORY.md). The floor (bench/floor.py) sleeps
between polls instead, so that a read finds many datagrams: bare minus the floor is what that
saves, imds-flow minus the floor what it does with the records.
Run alone (`python -m bench.bare --port P`) it says "listening on 127.0.0.1:P" and, at SIGTERM or
SIGINT, "bare: D datagrams, R records".
"""
from __future__ import annotations

import errno
import os
import signal
import socket
import struct
import sys

import numpy as np

from imds_flow import polls, receive
from imds_flow.jit import kernel

from .flowbench import reads_only_main

__all__ = ["serve", "main"]

MSG_WAITFORONE = 0x10000          # <linux/socket.h>: block for the first datagram only
WAKE_SECONDS = 0.1                # SO_RCVTIMEO: how often the loop comes back to see a stop asked for


_recv_waiting = polls.recvmmsg_with(MSG_WAITFORONE)


@kernel
def _read_waiting(fd, hdrs_at, now, recv, res):
    """Blocking reads until recvmmsg fails (the receive timeout, or a signal): res = (datagrams, v5
    records, errno of the failure). Module-level, so numba keeps it in its on-disk cache."""
    raw, names, control, buf, offs, lens, trunc, hi, lo, port, ts = recv
    slots = np.int32(raw.shape[0])
    while True:
        n = _recv_waiting(np.int32(fd), hdrs_at, slots)
        if n <= 0:
            res[2] = polls._errno()
            return
        res[0] += n
        receive._unpack(raw, names, control, n, now, lens, trunc, hi, lo, port, ts)
        for d in range(n):
            res[1] += np.int64(buf[offs[d] + 2]) * 256 + np.int64(buf[offs[d] + 3])


def serve(port: int, rcvbuf: int) -> None:
    """Listen on 127.0.0.1:port until SIGTERM / SIGINT, with the default config's receive slots."""
    from imds_flow import config
    from imds_flow.sockets import open_sockets
    lc = config.load(None).listen
    sock = open_sockets([("127.0.0.1", port)], rcvbuf)[0][0]
    sock.setblocking(True)               # recvmmsg waits in the kernel; SO_RCVTIMEO bounds each wait
    seconds = int(WAKE_SECONDS)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVTIMEO,
                    struct.pack("ll", seconds, int((WAKE_SECONDS - seconds) * 1e6)))
    receiver = receive.Receiver(sock, lc.batch_datagrams, lc.max_datagram_bytes)
    res = np.zeros(3, np.int64)
    _read_waiting(receiver._fd, receiver._hdrs_at, receiver.clock(), receiver.columns(), res)    # compiled (or loaded) now
    stop = []
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.append(True))      # interrupts the wait (Python sets no SA_RESTART)
    res[:] = 0
    print(f"listening on 127.0.0.1:{sock.getsockname()[1]}", file=sys.stderr, flush=True)
    while not stop:
        _read_waiting(receiver._fd, receiver._hdrs_at, receiver.clock(), receiver.columns(), res)
        if res[2] not in (errno.EAGAIN, errno.EINTR):          # not the receive timeout nor a signal
            raise OSError(int(res[2]), "recvmmsg: " + os.strerror(int(res[2])))
    print(f"bare: {res[0]} datagrams, {res[1]} records", file=sys.stderr, flush=True)


def main(argv=None) -> int:
    return reads_only_main("bare", serve, __doc__, argv)


if __name__ == "__main__":
    sys.exit(main())
