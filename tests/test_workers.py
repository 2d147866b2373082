"""workers: forked workers on their own copy of every socket send alerts (one frame each, whole however
the stream is cut) and final counters to the parent, which alone writes the sink and adds the counters
up; a worker that fails is counted, its alerts so far still written; the parent keeps no socket."""
import logging
import socket

import numpy as np

from imds_flow.metrics import STAT_KEYS, Latency
from imds_flow.sockets import open_sockets
from imds_flow.workers import _HEAD, FrameSink, run_workers


class ListSink:
    def __init__(self):
        self.alerts = []

    def write_alerts(self, alerts):
        self.alerts += alerts

    def flush(self):
        pass


def body(index, socks, frames, publish):
    assert publish is None and len(socks) == 2
    port = socks[0].getsockname()[1]
    frames.write_alerts([f"worker {index} port {port}".encode(), bytes([index]) * 300_000])
    if index == 2:
        raise RuntimeError("worker 2 breaks")
    latency = Latency()
    latency.add(np.array([0.001 * (index + 1)]))
    frames.send_stats({k: index + 1 for k in STAT_KEYS}, latency)


def test_alerts_and_counters_reach_the_parent(caplog):
    groups = open_sockets([("127.0.0.1", 0), ("::1", 0)], 1 << 20, copies=3)
    port = groups[0][0].getsockname()[1]
    sink, announced = ListSink(), []
    with caplog.at_level(logging.INFO, logger="imds_flow"):
        totals, latency = run_workers(groups, 3, sink, body, announced.append)
    assert announced == [None]
    assert sorted(a for a in sink.alerts if a.startswith(b"worker")) == \
        [f"worker {i} port {port}".encode() for i in range(3)]
    assert sorted(a for a in sink.alerts if not a.startswith(b"worker")) == [bytes([i]) * 300_000 for i in range(3)]
    assert totals == {k: 1 + 2 for k in STAT_KEYS}                       # workers 0 and 1 reported
    assert int(latency.counts.sum()) == 2
    assert "1 of 3 workers failed" in caplog.text and "stopped (3 workers)" in caplog.text
    assert all(s.fileno() == -1 for g in groups for s in g)


def test_worker_frames_keep_alert_boundaries():
    a, b = socket.socketpair()
    FrameSink(a).write_alerts([b"one", b"three"])
    data = b.recv(100)
    assert data == _HEAD.pack(b"A", 3) + b"one" + _HEAD.pack(b"A", 5) + b"three"
