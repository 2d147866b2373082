"""DatagramBatch: UDP datagrams as column arrays, the shape both receive paths fill.

The live socket path and the offline capture reader (pcapread) produce the same batch, so
everything downstream decodes sockets and captures alike. Addresses are 128-bit (hi, lo) pairs;
IPv4 a.b.c.d is stored IPv4-mapped (::ffff:a.b.c.d), i.e. hi = 0, lo = 0xFFFF_0000_0000 | a.b.c.d.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence, Tuple, Union

import numpy as np

from .addr import to_hilo

__all__ = ["DatagramBatch"]

Source = Tuple[str, int]


@dataclass
class DatagramBatch:
    buf: np.ndarray  # uint8, the payload bytes of the batch, back to back
    offs: np.ndarray  # int64, start of datagram i in buf
    lens: np.ndarray  # int32, length of datagram i
    src_hi: np.ndarray  # uint64, exporter address, high 64 bits
    src_lo: np.ndarray  # uint64, exporter address, low 64 bits (IPv4-mapped for IPv4)
    sport: np.ndarray  # uint16, exporter UDP source port
    ts: np.ndarray  # float64, receive / capture time, epoch seconds
    n: int  # number of datagrams
    size: int = -1  # total payload bytes of the n datagrams; -1: not known yet (nbytes() sums)

    def nbytes(self) -> int:
        """Total payload bytes: from the receive kernel, which sums them as it unpacks the batch,
        or summed here once (captures, tools)."""
        if self.size < 0:
            self.size = int(self.lens[: self.n].sum())
        return self.size

    def payload(self, i: int) -> bytes:
        """The payload of datagram i as bytes (for tests and debugging, not hot paths)."""
        o = int(self.offs[i])
        return self.buf[o : o + int(self.lens[i])].tobytes()

    def select(self, keep: np.ndarray) -> "DatagramBatch":
        """The datagrams where `keep` (bool[n]) is true, in order; shares the payload buffer."""
        return DatagramBatch(self.buf, self.offs[: self.n][keep], self.lens[: self.n][keep], self.src_hi[: self.n][keep],
                             self.src_lo[: self.n][keep], self.sport[: self.n][keep], self.ts[: self.n][keep],
                             int(np.count_nonzero(keep)))

    @classmethod
    def from_payloads(
        cls,
        payloads: Sequence[bytes],
        src: Union[Source, Sequence[Source]] = ("127.0.0.1", 9995),
        ts: Union[float, Sequence[float]] = 0.0,
    ) -> "DatagramBatch":
        """Build a batch from bytes objects (tests, tools).

        src is one (address, port) for every datagram or a list with one per datagram;
        ts is one float for every datagram or a list with one per datagram.
        """
        n = len(payloads)
        if isinstance(src, tuple) and len(src) == 2 and isinstance(src[0], str):
            srcs: Sequence[Source] = [src] * n
        else:
            srcs = list(src)  # type: ignore[arg-type]
            if len(srcs) != n:
                raise ValueError(f"{len(srcs)} sources for {n} payloads")
        if isinstance(ts, (int, float)):
            tss = np.full(n, float(ts), dtype=np.float64)
        else:
            tss = np.asarray(ts, dtype=np.float64)
            if tss.shape != (n,):
                raise ValueError(f"{tss.size} timestamps for {n} payloads")
        lens = np.fromiter((len(p) for p in payloads), dtype=np.int32, count=n)
        offs = np.zeros(n, dtype=np.int64)
        if n > 1:
            np.cumsum(lens[:-1], out=offs[1:])
        buf = np.frombuffer(b"".join(bytes(p) for p in payloads), dtype=np.uint8).copy()
        hilo = [to_hilo(a) for a, _ in srcs]
        return cls(
            buf=buf,
            offs=offs,
            lens=lens,
            src_hi=np.array([h for h, _ in hilo], dtype=np.uint64),
            src_lo=np.array([lo for _, lo in hilo], dtype=np.uint64),
            sport=np.array([p for _, p in srcs], dtype=np.uint16),
            ts=tss,
            n=n,
        )

