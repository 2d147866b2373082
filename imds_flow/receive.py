"""Sockets and batching, no parsing: drain UDP sockets into a preallocated buffer, a batch at a time.

Linux: recvmmsg(2) through ctypes fills up to `batch_datagrams` slots per system call, driven by
the event loop's add_reader (serve.py); the mmsghdr array is a numpy structured array, so lengths
and source addresses are read as columns. Elsewhere a portable recvfrom_into loop fills the same
buffers. Receiver.drain hands the batches on until the socket is empty.
"""
from __future__ import annotations

import ctypes
import ctypes.util
import errno
import socket
import sys
import time
from typing import Callable

import numpy as np

from .addr import MAPPED_V4
from .datagrams import DatagramBatch
from .sockets import SO_REUSEPORT, open_socket, open_sockets, parse_listen  # noqa: F401
from .jit import kernel, njit

__all__ = ["IoVec", "MsgHdr", "MMsgHdr", "parse_listen", "open_socket", "open_sockets", "Receiver", "describe", "warm_up", "HAVE_RECVMMSG"]

MSG_DONTWAIT = 0x40
MSG_TRUNC = 0x20
SO_TIMESTAMPNS = 35                          # also the cmsg type (SCM_TIMESTAMPNS) it produces
_NAME = 28                                   # sizeof(struct sockaddr_in6)
_CONTROL = 64                                # one cmsghdr (16 bytes) + struct timespec (16), with room


class IoVec(ctypes.Structure):
    _fields_ = [("base", ctypes.c_void_p), ("len", ctypes.c_size_t)]


class MsgHdr(ctypes.Structure):
    _fields_ = [("name", ctypes.c_void_p), ("namelen", ctypes.c_uint32), ("iov", ctypes.c_void_p),
                ("iovlen", ctypes.c_size_t), ("control", ctypes.c_void_p), ("controllen", ctypes.c_size_t),
                ("flags", ctypes.c_int)]


class MMsgHdr(ctypes.Structure):
    _fields_ = [("hdr", MsgHdr), ("len", ctypes.c_uint)]


def _load_recvmmsg():
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or None, use_errno=True)
        fn = libc.recvmmsg
    except (OSError, AttributeError):
        return None
    fn.argtypes = [ctypes.c_int, ctypes.c_void_p, ctypes.c_uint, ctypes.c_int, ctypes.c_void_p]
    fn.restype = ctypes.c_int
    return fn


_recvmmsg = _load_recvmmsg()
HAVE_RECVMMSG = _recvmmsg is not None


PREFAULT = 8192          # bytes of each receive slot written at start-up: datagrams up to 8 KiB, i.e. all but jumbo


class Receiver:
    """Owns one socket's receive buffers; read() returns the next batch (n == 0 when drained)."""

    def __init__(self, sock: socket.socket, batch: int, slot: int, clock: Callable[[], float] = time.time):
        self.sock = sock
        self.clock = clock
        self.slot = slot
        self.batch = batch
        self.buf = np.zeros(batch * slot, np.uint8)
        # Touch the first PREFAULT bytes of every slot now, so that the first traffic does not pay
        # for them: np.zeros maps pages only when written, and recvmmsg's copy into a page never
        # written costs a page fault (on a virtual machine, one the host serves too). Measured: the
        # first reads into a fresh buffer took 14 ms per 512 datagrams, a 70-150 ms stall at the
        # start of traffic in which a 4 MiB socket buffer overflowed at 2-3 M records/s.
        self.buf.reshape(batch, slot)[:, :PREFAULT] = 0
        self.offs = np.arange(batch, dtype=np.int64) * slot
        self.names = np.zeros((batch, 32), np.uint8)
        self.control = np.zeros((batch, _CONTROL), np.uint8)
        self._hdrs = np.zeros(batch, dtype=np.dtype(MMsgHdr))
        iov = np.zeros(batch, dtype=np.dtype(IoVec))
        iov["base"] = self.buf.ctypes.data + self.offs
        iov["len"] = slot
        self._iov = iov
        h = self._hdrs["hdr"]
        h["name"] = self.names.ctypes.data + np.arange(batch, dtype=np.int64) * 32
        h["iov"] = iov.ctypes.data + np.arange(batch, dtype=np.int64) * iov.itemsize
        h["iovlen"] = 1
        h["control"] = self.control.ctypes.data + np.arange(batch, dtype=np.int64) * _CONTROL
        self._fd = sock.fileno()
        self._hdrs_at = self._hdrs.ctypes.data      # the address, once: .ctypes builds an object per call
        self._use_mmsg = HAVE_RECVMMSG
        self._view = memoryview(self.buf)
        h["namelen"] = _NAME
        h["controllen"] = _CONTROL
        self._raw = self._hdrs.view(np.uint8).reshape(batch, self._hdrs.itemsize)
        # batch columns, reused: a batch is consumed (decoded) before the next read
        self._lens = np.zeros(batch, np.int32)
        self._trunc = np.zeros(batch, np.bool_)
        self._hi = np.zeros(batch, np.uint64)
        self._lo = np.zeros(batch, np.uint64)
        self._port = np.zeros(batch, np.uint16)
        self._ts = np.zeros(batch, np.float64)
        self._empty = DatagramBatch(self.buf, self.offs[:0], self._lens[:0], self._hi[:0], self._lo[:0], self._port[:0],
                                    self._ts[:0], 0, 0)

    def read(self) -> tuple[DatagramBatch, np.ndarray | None]:
        """The next batch and a mask of datagrams cut short by the slot size (None: none were)."""
        if not self._use_mmsg or not _LITTLE:
            return self._read_portable()
        n = self._recv_mmsg()
        if not self._use_mmsg:                        # recvmmsg turned out missing (ENOSYS)
            return self._read_portable(n)
        if n == 0:                                    # empty: the common end of a drain, kept cheap
            return self._empty, None
        # one kernel call: lengths, truncation, source addresses and arrival times of the batch,
        # and the header fields recvmmsg overwrote set back for the next call
        size = _unpack(self._raw, self.names, self.control, n, self.clock(), self._lens, self._trunc, self._hi,
                       self._lo, self._port, self._ts)
        return self.batch_of(n, size)

    def batch_of(self, n: int, size: int) -> tuple[DatagramBatch, np.ndarray | None]:
        """read()'s result for the n datagrams just unpacked (`size`: _unpack's result)."""
        lens, hi, lo, port, ts, trunc = self._lens, self._hi, self._lo, self._port, self._ts, self._trunc
        any_trunc = size < 0
        return (DatagramBatch(self.buf, self.offs[:n], lens[:n], hi[:n], lo[:n], port[:n], ts[:n], n,
                              -1 if any_trunc else size),
                trunc[:n].copy() if any_trunc else None)

    def columns(self) -> tuple:
        """What recvmmsg fills and _unpack reads and writes, for polls.poll_loop: the mmsghdr rows,
        names and control messages, the buffer with its slot offsets, and the batch columns."""
        return (self._raw, self.names, self.control, self.buf, self.offs, self._lens, self._trunc, self._hi, self._lo,
                self._port, self._ts)

    def drain(self, process: Callable[[DatagramBatch, np.ndarray | None], None], limit: int | None = None) -> int:
        """Hand batches to process(dg, truncated) until the socket is empty; with `limit`, stop after
        that many batches or after a partial one. Returns the datagrams handed on (0: it was empty)."""
        done = got = 0
        while limit is None or done < limit:
            dg, truncated = self.read()
            if dg.n == 0:
                break
            process(dg, truncated)
            done += 1
            got += dg.n
            if limit is not None and dg.n < self.batch:
                break
        return got

    def _read_portable(self, n: int | None = None) -> tuple[DatagramBatch, np.ndarray | None]:
        """The same with numpy column operations: the portable path, and recvmmsg on big-endian hosts."""
        if n is None:
            if self._use_mmsg:
                h = self._hdrs["hdr"]
                h["namelen"] = _NAME
                h["controllen"] = _CONTROL
                n = self._recv_mmsg()
            else:
                n = self._recv_portable()
        lens = self._hdrs["len"][:n].astype(np.int32)
        trunc = (self._hdrs["hdr"]["flags"][:n] & MSG_TRUNC) != 0
        hi, lo, port = _parse_names(self.names[:n])
        ts = self._arrival(n)
        return DatagramBatch(self.buf, self.offs[:n], lens, hi, lo, port, ts, n), (trunc if trunc.any() else None)

    def _arrival(self, n: int) -> np.ndarray:
        """Kernel receive time of each datagram (SCM_TIMESTAMPNS) for the portable path; our clock
        where there is none (recvfrom_into carries no control message)."""
        now = self.clock()
        if not self._use_mmsg or n == 0:
            return np.full(n, now)
        ctl = self.control[:n]
        have = (self._hdrs["hdr"]["controllen"][:n] >= 32) & (ctl[:, 12] == SO_TIMESTAMPNS)
        ts = np.full(n, now)
        if have.any():
            spec = np.ascontiguousarray(ctl[have, 16:32]).view(np.int64)
            ts[have] = spec[:, 0] + spec[:, 1] * 1e-9
        return ts

    def _recv_mmsg(self) -> int:
        n = _recvmmsg(self._fd, self._hdrs_at, self.batch, MSG_DONTWAIT, None)
        if n < 0:
            err = ctypes.get_errno()
            if err in (errno.EAGAIN, errno.EWOULDBLOCK, errno.EINTR):
                return 0
            if err == errno.ENOSYS:
                self._use_mmsg = False
                return self._recv_portable()
            raise OSError(err, "recvmmsg: " + errno.errorcode.get(err, str(err)))
        return n

    def _recv_portable(self) -> int:
        n = 0
        while n < self.batch:
            o = n * self.slot
            try:
                size, addr = self.sock.recvfrom_into(self._view[o: o + self.slot])
            except (BlockingIOError, InterruptedError):
                break
            self._hdrs["len"][n] = size
            self._hdrs["hdr"]["flags"][n] = 0
            _store_name(self.names[n], addr)
            n += 1
        return n


_LITTLE = sys.byteorder == "little"         # _unpack reads the native structs as little-endian
_OFF_NAMELEN = MsgHdr.namelen.offset
_OFF_CONTROLLEN = MsgHdr.controllen.offset
_OFF_FLAGS = MsgHdr.flags.offset
_OFF_LEN = MMsgHdr.len.offset
_AF_INET6 = np.uint64(int(socket.AF_INET6))
_MAPPED = np.uint64(MAPPED_V4)


@njit
def _le(raw, i, o, k):
    v = np.uint64(0)
    for j in range(k - 1, -1, -1):
        v = (v << np.uint64(8)) | np.uint64(raw[i, o + j])
    return v


@njit
def _be(row, o, k):
    v = np.uint64(0)
    for j in range(k):
        v = (v << np.uint64(8)) | np.uint64(row[o + j])
    return v


@kernel
def _unpack(raw, names, control, n, now, lens, trunc, hi, lo, port, ts):
    """Columns of the first n mmsghdr rows (`raw`: the struct mmsghdr array as bytes, native
    little-endian): length, MSG_TRUNC, source (hi, lo, port; IPv4 as IPv4-mapped) and the kernel's
    SCM_TIMESTAMPNS (`now` where there is none); sets namelen / controllen back for the next
    recvmmsg. Returns the batch's total length in bytes, or -1 when a datagram was truncated."""
    any_trunc = False
    size = 0
    for i in range(n):
        lens[i] = np.int32(_le(raw, i, _OFF_LEN, 4))
        size += lens[i]
        t = (_le(raw, i, _OFF_FLAGS, 4) & np.uint64(MSG_TRUNC)) != 0
        trunc[i] = t
        any_trunc = any_trunc or t
        row = names[i]
        port[i] = np.uint16(_be(row, 2, 2))
        if np.uint64(row[0]) | (np.uint64(row[1]) << np.uint64(8)) == _AF_INET6:
            hi[i] = _be(row, 8, 8)
            lo[i] = _be(row, 16, 8)
        else:
            hi[i] = 0
            lo[i] = _MAPPED | _be(row, 4, 4)
        ctl = control[i]
        if _le(raw, i, _OFF_CONTROLLEN, 8) >= 32 and ctl[12] == SO_TIMESTAMPNS:
            sec = np.int64(0)
            nsec = np.int64(0)
            for j in range(7, -1, -1):
                sec = (sec << 8) | np.int64(ctl[16 + j])
                nsec = (nsec << 8) | np.int64(ctl[24 + j])
            ts[i] = sec + nsec * 1e-9
        else:
            ts[i] = now
        for j in range(4):                           # namelen = _NAME, controllen = _CONTROL
            raw[i, _OFF_NAMELEN + j] = (_NAME >> (8 * j)) & 0xFF
        for j in range(8):
            raw[i, _OFF_CONTROLLEN + j] = (_CONTROL >> (8 * j)) & 0xFF
    return -1 if any_trunc else size


def warm_up() -> None:
    """Load (or compile) the receive kernel before the first datagram."""
    r = np.zeros((1, np.dtype(MMsgHdr).itemsize), np.uint8)
    cols = (np.zeros(1, np.int32), np.zeros(1, np.bool_), np.zeros(1, np.uint64), np.zeros(1, np.uint64),
            np.zeros(1, np.uint16), np.zeros(1, np.float64))
    _unpack(r, np.zeros((1, 32), np.uint8), np.zeros((1, _CONTROL), np.uint8), 1, 0.0, *cols)


def _store_name(row: np.ndarray, addr: tuple) -> None:
    """Write a Python socket address into a sockaddr-shaped row (portable path only)."""
    row[:] = 0
    if len(addr) == 2:
        row[0:2] = np.frombuffer(np.uint16(socket.AF_INET).tobytes(), np.uint8)
        row[4:8] = np.frombuffer(socket.inet_pton(socket.AF_INET, addr[0]), np.uint8)
    else:
        row[0:2] = np.frombuffer(np.uint16(socket.AF_INET6).tobytes(), np.uint8)
        row[8:24] = np.frombuffer(socket.inet_pton(socket.AF_INET6, addr[0].split("%")[0]), np.uint8)
    row[2], row[3] = addr[1] >> 8, addr[1] & 0xFF


def _parse_names(names: np.ndarray):
    """Columns (hi, lo, port) from sockaddr_in / sockaddr_in6 rows; IPv4 becomes IPv4-mapped."""
    n = len(names)
    family = names[:, 0].astype(np.uint16) | (names[:, 1].astype(np.uint16) << 8)
    port = (names[:, 2].astype(np.uint16) << 8) | names[:, 3]
    v6 = family == socket.AF_INET6
    hi = np.zeros(n, np.uint64)
    lo = np.zeros(n, np.uint64)
    if v6.any():
        hi[v6] = np.ascontiguousarray(names[v6, 8:16]).view(">u8").ravel()
        lo[v6] = np.ascontiguousarray(names[v6, 16:24]).view(">u8").ravel()
    v4 = ~v6
    if v4.any():
        lo[v4] = np.uint64(MAPPED_V4) | np.ascontiguousarray(names[v4, 4:8]).view(">u4").ravel().astype(np.uint64)
    return hi, lo, port


def describe(batch: int, workers: int = 1) -> str:
    recv = f"recvmmsg, batch {batch}" if HAVE_RECVMMSG else "portable recvfrom, recvmmsg unavailable"
    return f"{recv}, {workers} worker{'s' if workers > 1 else ''}"
