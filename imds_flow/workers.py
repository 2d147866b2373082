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


def _worker(index: int, conn: socket.socket, socks, make_pipeline, serve_fn, report: bool) -> int:
    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, signal.SIG_DFL)
    sink = FrameSink(conn)
    pipeline = make_pipeline(sink, index)
    if report:
        pipeline.reporter = lambda: sink.send_snapshot(pipeline.snapshot())
    try:
        serve_fn(socks, pipeline)
    finally:
        pipeline.close()
        sink.send_stats(pipeline.stats(), pipeline.latency)
        conn.close()
    return 0


def run_workers(groups: list[list[socket.socket]], workers: int, sink, make_pipeline: Callable,
                serve_fn: Callable, announce: Callable[[tuple | None], None],
                metrics_at: tuple[str, int] | None = None) -> tuple[dict, Latency]:
    """Fork `workers` processes; worker i serves socket i of every address group. Returns the
    merged counters and latency once every worker has drained, flushed and exited. SIGHUP is
    passed on (each worker reloads); with `metrics_at` the parent serves the workers' merged
    metrics, which they report every second."""
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
                code = _worker(i, child_end, [g[i] for g in groups], make_pipeline, serve_fn,
                               metrics_at is not None)
            except BaseException:            # noqa: BLE001 - a worker must report and exit, never return
                log.exception("worker %d failed", i)
            finally:
                os._exit(code)
        child_end.close()
        children[pid] = parent_end
    for group in groups:                      # the parent keeps no socket: datagrams go to workers only
        for sock in group:
            sock.close()
    latest: dict[int, dict] = {}
    sink_stats = getattr(sink, "stats", None)
    published = [{"exporters": [], "global": {}}]    # replaced whole, never changed: the HTTP thread reads it

    def publish() -> None:
        merged = merge_snapshots(list(latest.values()))
        merged["sinks"] = sink_stats()["sinks"] if callable(sink_stats) else []
        published[0] = merged

    server = None
    if metrics_at is not None:
        server = MetricsServer(*metrics_at, lambda: published[0])
    announce(server.address if server else None)

    hup = [False]

    def forward(signum, _frame):
        if signum == signal.SIGHUP:
            hup[0] = True                     # the parent's own sinks reopen from the loop below
        for pid in children:
            try:
                os.kill(pid, signal.SIGHUP if signum == signal.SIGHUP else signal.SIGTERM)
            except ProcessLookupError:
                pass

    previous = {s: signal.signal(s, forward) for s in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)}
    totals = {k: 0 for k in STAT_KEYS}
    latency = Latency()
    failed = 0
    try:
        sel = selectors.DefaultSelector()
        buffers = {}
        for pid, conn in children.items():
            sel.register(conn, selectors.EVENT_READ, pid)
            buffers[pid] = bytearray()
        open_conns = len(children)
        while open_conns:
            if hup[0]:
                hup[0] = False
                reopen = getattr(sink, "reopen", None)
                if reopen is not None:
                    reopen()
            for key, _ in sel.select(timeout=1.0):
                pid = key.data
                chunk = key.fileobj.recv(1 << 20)
                if not chunk:
                    sel.unregister(key.fileobj)
                    key.fileobj.close()
                    open_conns -= 1
                    continue
                buf = buffers[pid]
                buf += chunk
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
                        latest[pid] = json.loads(payload)
                        publish()
                    else:
                        report = json.loads(payload)
                        for k in STAT_KEYS:
                            totals[k] += report["stats"][k]
                        latency.merge(Latency(report["latency"]))
                if alerts:
                    sink.write_alerts(alerts)
                    sink.flush()
        for pid in children:
            _, status = os.waitpid(pid, 0)
            if os.waitstatus_to_exitcode(status) != 0:
                failed += 1
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
        if server is not None:
            server.close()
    if failed:
        log.error("%d of %d workers failed; see the messages above", failed, workers)
    log.info("stopped (%d workers): %s", workers, summary_line(totals, latency))
    return totals, latency
