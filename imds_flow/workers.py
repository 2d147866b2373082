"""Several worker processes behind the same addresses: SO_REUSEPORT sockets, one per worker.

The kernel hashes each exporter's (address, port) to one socket, so an exporter's templates and
sequence numbers stay with one worker. Workers send their encoded alerts and, at the end, their
counters to the parent over a socketpair; the parent alone writes the sink and the summary, so
alerts from different workers never interleave inside a record.
"""
from __future__ import annotations

import json
import logging
import os
import selectors
import signal
import socket
import struct
from typing import Callable

from .metrics import STAT_KEYS, Latency, MetricsServer, merge_snapshots, summary_line
from .sockets import close_sockets

__all__ = ["run_workers"]

log = logging.getLogger("imds_flow")

_HEAD = struct.Struct("!cI")    # frame: kind (b"A" alerts, b"M" metrics snapshot, b"S" final stats), length


class FrameSink:
    """The worker's sink: alerts go to the parent as frames, one alert per frame."""

    def __init__(self, sock: socket.socket):
        self.sock = sock

    def write_alerts(self, alerts: list[bytes]) -> None:
        self.sock.sendall(b"".join(_HEAD.pack(b"A", len(a)) + a for a in alerts))

    def flush(self) -> None:
        pass

    def close(self) -> None:
        pass

    def send_snapshot(self, snapshot: dict) -> None:
        data = json.dumps(snapshot).encode()
        self.sock.sendall(_HEAD.pack(b"M", len(data)) + data)

    def send_stats(self, stats: dict, latency: Latency) -> None:
        data = json.dumps({"stats": stats, "latency": latency.counts.tolist()}).encode()
        self.sock.sendall(_HEAD.pack(b"S", len(data)) + data)


def run_workers(groups: list[list[socket.socket]], workers: int, sink, body: Callable,
                announce: Callable[[tuple | None], None],
                metrics_at: tuple[str, int] | None = None) -> tuple[dict, Latency]:
    """Fork `workers` processes; worker i runs body(i, socket i of every address group, its
    FrameSink, a publish callback or None). Returns the merged counters and latency once every
    worker has drained, flushed and exited. SIGHUP is passed on (each worker reloads); with
    `metrics_at` the parent serves the workers' merged metrics, which they publish every second."""
    children = _fork(groups, workers, body, metrics_at is not None)
    close_sockets(groups)                     # the parent keeps no socket: datagrams go to workers only
    parent = _Parent(children, sink)
    server = MetricsServer(*metrics_at, parent.published) if metrics_at is not None else None
    announce(server.address if server else None)
    try:
        failed = parent.run()
    finally:
        if server is not None:
            server.close()
    if failed:
        log.error("%d of %d workers failed; see the messages above", failed, workers)
    log.info("stopped (%d workers): %s", workers, summary_line(parent.totals, parent.latency))
    return parent.totals, parent.latency


def _fork(groups: list[list[socket.socket]], workers: int, body: Callable, report: bool) -> dict[int, socket.socket]:
    """The worker processes, each with a socketpair to the parent: {pid: the parent's end}."""
    children: dict[int, socket.socket] = {}
    for i in range(workers):
        parent_end, child_end = socket.socketpair()
        pid = os.fork()
        if pid == 0:                          # the worker
            parent_end.close()
            for other in children.values():
                other.close()
            code = 1
            try:
                code = _worker(i, child_end, [g[i] for g in groups], body, report)
            except BaseException:            # noqa: BLE001 - a worker must report and exit, never return
                log.exception("worker %d failed", i)
            finally:
                os._exit(code)
        child_end.close()
        children[pid] = parent_end
    return children


def _worker(index: int, conn: socket.socket, socks, body: Callable, report: bool) -> int:
    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, signal.SIG_DFL)
    frames = FrameSink(conn)
    try:
        body(index, socks, frames, frames.send_snapshot if report else None)
    finally:
        conn.close()
    return 0


class _Parent:
    """The parent's side: reads every worker's frames until all have closed; writes their alerts to
    the sink, keeps their latest snapshots merged for /metrics and adds up their final counters."""

    def __init__(self, children: dict[int, socket.socket], sink):
        self.children = children
        self.sink = sink
        self.totals = {k: 0 for k in STAT_KEYS}
        self.latency = Latency()
        self._latest: dict[int, dict] = {}
        self._published = {"exporters": [], "global": {}}   # replaced whole, never changed: the HTTP thread reads it
        self._hup = False

    def published(self) -> dict:
        return self._published

    def run(self) -> int:
        """Until every worker has exited; returns how many failed. SIGINT / SIGTERM / SIGHUP are
        passed on to the workers meanwhile."""
        previous = {s: signal.signal(s, self._forward) for s in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)}
        try:
            self._read_until_closed()
            failed = 0
            for pid in self.children:
                _, status = os.waitpid(pid, 0)
                if os.waitstatus_to_exitcode(status) != 0:
                    failed += 1
            return failed
        finally:
            for s, handler in previous.items():
                signal.signal(s, handler)

    def _forward(self, signum, _frame) -> None:
        if signum == signal.SIGHUP:
            self._hup = True                  # the parent's own sinks reopen from the read loop
        for pid in self.children:
            try:
                os.kill(pid, signal.SIGHUP if signum == signal.SIGHUP else signal.SIGTERM)
            except ProcessLookupError:
                pass

    def _read_until_closed(self) -> None:
        buffers = {pid: bytearray() for pid in self.children}
        with selectors.DefaultSelector() as sel:
            for pid, conn in self.children.items():
                sel.register(conn, selectors.EVENT_READ, pid)
            open_conns = len(self.children)
            while open_conns:
                if self._hup:
                    self._hup = False
                    reopen = getattr(self.sink, "reopen", None)
                    if reopen is not None:
                        reopen()
                for key, _ in sel.select(timeout=1.0):
                    chunk = key.fileobj.recv(1 << 20)
                    if not chunk:
                        sel.unregister(key.fileobj)
                        key.fileobj.close()
                        open_conns -= 1
                        continue
                    buffers[key.data] += chunk
                    self._take_frames(key.data, buffers[key.data])

    def _take_frames(self, pid: int, buf: bytearray) -> None:
        """Every whole frame at the front of `buf`, taken off it."""
        alerts = []
        while len(buf) >= _HEAD.size:
            kind, size = _HEAD.unpack_from(buf)
            if len(buf) < _HEAD.size + size:
                break
            payload = bytes(buf[_HEAD.size:_HEAD.size + size])
            del buf[:_HEAD.size + size]
            if kind == b"A":
                alerts.append(payload)
            elif kind == b"M":
                self._latest[pid] = json.loads(payload)
                self._publish()
            else:
                report = json.loads(payload)
                for k in STAT_KEYS:
                    self.totals[k] += report["stats"][k]
                self.latency.merge(Latency(report["latency"]))
        if alerts:
            self.sink.write_alerts(alerts)
            self.sink.flush()

    def _publish(self) -> None:
        merged = merge_snapshots(list(self._latest.values()))
        sink_stats = getattr(self.sink, "stats", None)
        merged["sinks"] = sink_stats()["sinks"] if callable(sink_stats) else []
        self._published = merged
