"""Paced UDP sender for benchmarks: sendmmsg(2) bursts from K exporter sockets at a target rate.

Run as its own process (`python -m bench.sender ...`) so it has a core of its own; prints one JSON
line with what it really sent. Loopback only.
"""
from __future__ import annotations

import argparse
import ctypes
import ctypes.util
import json
import socket
import sys
import time

import numpy as np

from imds_flow.receive import IoVec, MMsgHdr      # the same struct mmsghdr layout as the receive side

from .synth import flow_datagrams, instance_of_datagrams


_libc = ctypes.CDLL(ctypes.util.find_library("c") or None, use_errno=True)
_sendmmsg = _libc.sendmmsg
_sendmmsg.argtypes = [ctypes.c_int, ctypes.c_void_p, ctypes.c_uint, ctypes.c_int]
_sendmmsg.restype = ctypes.c_int


class Burst:
    """A preallocated burst of `n` datagrams (rows of `data`) ready for sendmmsg on a connected socket."""

    def __init__(self, data: np.ndarray):
        self.data = np.ascontiguousarray(data)
        n, size = self.data.shape
        self.iov = np.zeros(n, dtype=np.dtype(IoVec))
        self.iov["base"] = self.data.ctypes.data + np.arange(n, dtype=np.int64) * size
        self.iov["len"] = size
        self.hdrs = np.zeros(n, dtype=np.dtype(MMsgHdr))
        self.hdrs["hdr"]["iov"] = self.iov.ctypes.data + np.arange(n, dtype=np.int64) * self.iov.itemsize
        self.hdrs["hdr"]["iovlen"] = 1
        self.n = n

    def with_template(self, template: np.ndarray, first: int, every: int) -> "Burst":
        """This burst with `template` sent before every data datagram whose number (from `first`,
        counted per exporter) is a multiple of `every`: what an exporter resending its templates
        every N datagrams puts on the wire. Returns a burst sharing this one's data."""
        at = np.flatnonzero((first + np.arange(self.n)) % every == 0)
        if not len(at):
            return self
        out = Burst.__new__(Burst)
        out.data = self.data
        out.n = self.n + len(at)
        iov = np.insert(self.iov, at, np.zeros(len(at), self.iov.dtype))
        tpos = at + np.arange(len(at))
        iov["base"][tpos] = template.ctypes.data
        iov["len"][tpos] = len(template)
        out.iov = iov
        out.hdrs = np.zeros(out.n, dtype=self.hdrs.dtype)
        out.hdrs["hdr"]["iov"] = iov.ctypes.data + np.arange(out.n, dtype=np.int64) * iov.itemsize
        out.hdrs["hdr"]["iovlen"] = 1
        return out

    def send(self, fd: int) -> int:
        sent = 0
        while sent < self.n:
            k = _sendmmsg(fd, self.hdrs.ctypes.data + sent * self.hdrs.itemsize, self.n - sent, 0)
            if k < 0:
                err = ctypes.get_errno()
                if err in (11, 105):         # EAGAIN / ENOBUFS: the sender outran the socket; retry
                    time.sleep(0.0001)
                    continue
                raise OSError(err, "sendmmsg")
            sent += k
        return sent


def exporter_sockets(host: str, port: int, exporters: int) -> list[socket.socket]:
    """One UDP socket per exporter, connected to host:port, with a send buffer for bursts."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    socks = []
    for _ in range(exporters):
        s = socket.socket(family, socket.SOCK_DGRAM)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4 << 20)
        s.connect((host, port))
        socks.append(s)
    return socks


def run(host: str, port: int, rate: float, duration: float, exporters: int, records: int,
        imds_fraction: float, version: int = 5, ipv6_fraction: float = 0.0, burst: int = 64,
        template_every: int = 0, imds_sources: int = 64, imds_seen_by: str = "all") -> dict:
    """Send `version` exports at `rate` records/s for `duration` s from `exporters` sockets.

    v9 / IPFIX exporters send their template datagram first and, with `template_every` N > 0,
    again before every N-th data datagram. Up to `burst` exporters take turns by burst (one
    sendmmsg each); with more, every burst comes from `burst` different exporters, one datagram
    each, so that all of them send steadily during the run, as that many routers would (by
    bursts, a 3 s run at 1 M records/s would hear from only 1,560 of 5,000 exporters, each of
    them new). Returns offered datagrams, records and metadata records (hits), and how far the
    sender fell behind its schedule (late_max_ms; late_bursts: bursts sent more than 2 ms late):
    a late sender sends what it owes back to back, a burst that can overflow a receive buffer.

    `imds_seen_by`: which exporters send each instance's metadata records. "all": any of them, so
    every exporter reports the same `imds_sources` instances (for the collector the worst case:
    with 5,000 exporters nearly every such record is a fold key of its own, a new alert). "one":
    instance i's go through exporter i mod `exporters` only, as 169.254.169.254 traffic, never
    routed, is seen on its own segment; the other datagrams spread as before, every datagram sent
    on its own (not one sendmmsg a burst), for 4 exporters as for 5,000."""
    one = imds_seen_by == "one"
    socks = exporter_sockets(host, port, exporters)
    nb = 64
    n6 = round(nb * ipv6_fraction) if version != 5 else 0
    exports = [flow_datagrams(version, burst * (nb - n6), records, imds_fraction, 0.0, seed=1,
                              imds_sources=imds_sources, instance_per_datagram=one)]
    if n6:
        exports.append(flow_datagrams(version, burst * n6, records, imds_fraction, 1.0, seed=2,
                                      imds_sources=imds_sources, instance_per_datagram=one))
    bursts = []                               # (Burst, export, hits in that burst, its rows' instances)
    for ex in exports:
        instance = instance_of_datagrams(ex.hits, imds_sources) if one else None
        for i in range(len(ex.data) // burst):
            rows = slice(i * burst, (i + 1) * burst)
            bursts.append((Burst(ex.data[rows]), ex, int(ex.hits[rows].sum()),
                           None if instance is None else instance[rows]))
    order = np.random.default_rng(3).permutation(len(bursts))    # spread the IPv6 bursts out
    bursts = [bursts[i] for i in order]
    template = exports[0].template
    tbuf = np.frombuffer(template, np.uint8).copy() if template is not None else None
    seq = [0] * exporters
    sent_by = [0] * exporters
    spread = _Spread(socks, burst, tbuf, template_every) if exporters > burst or one else None
    dgram_rate = rate / records
    interval = burst / dgram_rate
    sent_d = hits = templates = 0
    late_max, late_bursts = 0.0, 0              # how far behind its schedule the sender fell
    start = time.perf_counter()
    next_at = start
    end = start + duration
    i = 0
    while True:
        now = time.perf_counter()
        if now >= end:
            break
        if now < next_at:
            if next_at - now > 0.0005:
                time.sleep(next_at - now - 0.0003)
            continue
        b, ex, h, instance = bursts[i % len(bursts)]
        late = now - next_at                 # behind schedule (a stall of this process, or of the VM):
        late_max = max(late_max, late)       # the bursts it owes go out back to back
        late_bursts += late > 0.002
        if spread is not None:
            sent, tsent = spread.send(b, ex, instance)
            sent_d += sent
            templates += tsent
            hits += h
            i += 1
            next_at += interval
            if now - next_at > 1.0:
                next_at = now
            continue
        e = i % exporters
        if template is not None and sent_by[e] == 0:
            socks[e].send(template)
            templates += 1
        seq[e] = ex.set_sequence(b.data, seq[e])
        if tbuf is not None and template_every > 0:
            tb = b.with_template(tbuf, sent_by[e] * burst, template_every)
            sent = tb.send(socks[e].fileno()) - (tb.n - b.n)
            templates += tb.n - b.n
        else:
            sent = b.send(socks[e].fileno())
        sent_by[e] += 1
        sent_d += sent
        hits += h
        i += 1
        next_at += interval
        if now - next_at > 1.0:              # cannot keep up: do not build an unbounded backlog
            next_at = now
    took = time.perf_counter() - start
    return {"datagrams": sent_d, "template_datagrams": templates, "records": sent_d * records, "hits": hits,
            "seconds": took, "records_per_s": sent_d * records / took, "exporters": exporters, "version": version,
            "late_max_ms": round(late_max * 1e3, 2), "late_bursts": late_bursts}


class _Spread:
    """Bursts sent by many exporters in turn, one datagram each: burst k's datagram j comes from
    exporter (k * burst + j) mod exporters (one carrying instance i's metadata records, given: from
    exporter i mod exporters), numbered in that exporter's sequence, after its template where one
    is due (its first datagram, and every `template_every`-th)."""

    def __init__(self, socks: list[socket.socket], burst: int, template: np.ndarray | None, template_every: int):
        self.socks = socks
        self.template = template.tobytes() if template is not None else None
        self.every = template_every
        self.seq = np.zeros(len(socks), np.uint64)
        self.sent = np.zeros(len(socks), np.int64)
        self.cursor = 0
        self.burst = burst

    def send(self, b: Burst, ex, instance: np.ndarray | None = None) -> tuple[int, int]:
        """Send burst `b` (rows of export `ex`, carrying these instances' metadata records: -1 none);
        returns (data datagrams, template datagrams) sent."""
        es = (self.cursor + np.arange(b.n)) % len(self.socks)
        if instance is not None:
            es = np.where(instance >= 0, instance % len(self.socks), es)
        self.cursor = (self.cursor + b.n) % len(self.socks)
        before = _earlier(es)                 # an exporter can send several rows of a burst (fewer
        sent = self.sent[es] + before         # exporters than rows, or an instance's): in row order
        ex.set_sequences(b.data, self.seq[es] + np.uint64(ex.sequence_step) * before.astype(np.uint64))
        np.add.at(self.seq, es, np.uint64(ex.sequence_step))
        np.add.at(self.sent, es, 1)
        due = np.zeros(b.n, np.bool_)
        if self.template is not None:
            due = sent == 0
            if self.every > 0:
                due |= sent % self.every == 0
        templates = 0
        for e, row, t in zip(es.tolist(), b.data, due.tolist()):
            s = self.socks[e]
            if t:
                _send(s, self.template)
                templates += 1
            _send(s, row)
        return b.n, templates


def _earlier(es: np.ndarray) -> np.ndarray:
    """For each position, how many earlier positions hold the same value."""
    order = np.argsort(es, kind="stable")
    ranked = es[order]
    first = np.flatnonzero(np.r_[True, ranked[1:] != ranked[:-1]])
    run = np.repeat(first, np.diff(np.r_[first, len(es)]))
    out = np.empty(len(es), np.int64)
    out[order] = np.arange(len(es)) - run
    return out


def _send(s: socket.socket, data) -> None:
    while True:
        try:
            s.send(data)
            return
        except (BlockingIOError, InterruptedError):
            time.sleep(0.0001)
        except OSError as e:
            if e.errno != 105:                 # ENOBUFS: the sender outran the socket; retry
                raise
            time.sleep(0.0001)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--rate", type=float, required=True, help="records per second")
    p.add_argument("--duration", type=float, default=5.0)
    p.add_argument("--exporters", type=int, default=4)
    p.add_argument("--records", type=int, default=30, help="records per datagram")
    p.add_argument("--imds-fraction", type=float, default=0.001)
    p.add_argument("--version", type=int, choices=(5, 9, 10), default=5)
    p.add_argument("--ipv6-fraction", type=float, default=0.0)
    p.add_argument("--imds-sources", type=int, default=64)
    p.add_argument("--imds-seen-by", choices=("all", "one"), default="all")
    p.add_argument("--template-every", type=int, default=0, help="resend templates every N datagrams (0: once)")
    a = p.parse_args()
    if not (a.host.startswith("127.") or a.host in ("::1", "localhost")):
        sys.exit("bench sender: loopback targets only")
    print(json.dumps(run(a.host, a.port, a.rate, a.duration, a.exporters, a.records, a.imds_fraction,
                         a.version, a.ipv6_fraction, template_every=a.template_every,
                         imds_sources=a.imds_sources, imds_seen_by=a.imds_seen_by)))


if __name__ == "__main__":
    main()
