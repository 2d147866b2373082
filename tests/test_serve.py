"""serve.serve: the event loop over a real loopback socket. Ticks and the stats line follow the
injected clock (one that runs 100 s a reading: a folding window of 60 s closes and stats every 150 s
come out within seconds of real time); SIGTERM stops the loop, which closes the socket. After each
read the loop either keeps watching a socket (epoll) or polls it every listen.coalesce_seconds: that
choice is tested on a recording stand-in for the event loop."""
import asyncio
import logging
import os
import signal
import socket
import threading
import time

import pytest

from imds_flow import config, polls
from imds_flow import serve as serve_mod
from imds_flow.app import Pipeline
from imds_flow.build import v5
from imds_flow.receive import Receiver
from imds_flow.serve import serve
from imds_flow.sockets import open_socket
from tests.support.alerts import AlertList


def test_ticks_and_stats_follow_the_injected_clock_until_sigterm(caplog):
    t0 = time.time()                               # datagrams carry the kernel's arrival time
    sink = AlertList()
    pipeline = Pipeline(config.load(None), sink)
    sock = open_socket("127.0.0.1", 0, 1 << 20)
    readings: list[float] = []

    def clock() -> float:
        readings.append(t0 + 100.0 * len(readings))
        if len(readings) == 4:                     # the third tick: the loop stops after it
            os.kill(os.getpid(), signal.SIGTERM)
        return readings[-1]

    def ready() -> None:                           # two records of one alert key: the second folds
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.sendto(v5([("10.0.0.1", "169.254.169.254", 40000, 80)] * 2), sock.getsockname())

    with caplog.at_level(logging.INFO, logger="imds_flow"):
        serve(pipeline, [Receiver(sock, 8, 2048)], clock=clock, stats_every=150.0, ready=ready)
    # readings: t0 at the start (stats due at t0+150), then ticks at t0+100, t0+200 (stats), t0+300
    # (stats, and SIGTERM), and perhaps t0+400 before the loop sees the signal (no stats: due at t0+450)
    stats = [r.getMessage() for r in caplog.records if r.getMessage() == pipeline.summary()]
    assert len(stats) == 2
    # the folded record left when the tick at t0+100 closed its 60 s window, not at close()
    assert [a["count"] for a in sink.alerts] == [1, 1]
    assert pipeline.stats()["datagrams"] == 1 and pipeline.stats()["records"] == 2
    assert sock.fileno() == -1                     # closed by serve
    pipeline.close()


def test_steady_datagrams_are_taken_in_coalesced_batches_and_an_idle_socket_is_watched_again(monkeypatch):
    """With listen.coalesce_seconds, a socket that keeps receiving is read every 20 ms (batches of
    several datagrams, not one wake-up each); once a read finds it empty it is watched again, so a
    datagram after a quiet spell is still decoded at once, before the loop stops. The polls run
    compiled (polls.py): each turn of the loop says what it read."""
    pipeline = Pipeline(config.load(None), AlertList())
    sock = open_socket("127.0.0.1", 0, 1 << 20)
    reads: list[tuple[int, int]] = []             # (datagrams, batches) of each turn
    run = polls.Polls.run

    def counted(self, r, n, idle):
        before = self.batches
        got, code = run(self, r, n, idle)
        reads.append((got, self.batches - before))
        return got, code

    monkeypatch.setattr(polls.Polls, "run", counted)
    record = v5([("10.0.0.1", "192.0.2.1", 40000, 80)])
    done = threading.Event()

    def exporter() -> None:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            for _ in range(40):                    # 80 ms of steady export
                s.sendto(record, sock.getsockname())
                time.sleep(0.002)
            time.sleep(0.3)                        # quiet: the socket goes back to epoll
            s.sendto(record, sock.getsockname())
        deadline = time.monotonic() + 5.0
        while sum(g for g, _ in reads) < 41 and time.monotonic() < deadline:
            time.sleep(0.005)
        if sum(g for g, _ in reads) == 41:         # decoded while the loop ran, not by its last drain
            done.set()
        os.kill(os.getpid(), signal.SIGTERM)

    thread = threading.Thread(target=exporter)
    serve(pipeline, [Receiver(sock, 64, 2048)], coalesce=0.02, ready=thread.start)
    thread.join()
    assert done.is_set() and sum(g for g, _ in reads) == 41
    assert sum(b for _, b in reads) <= 15, reads   # 40 datagrams over 80 ms: a handful of reads
    assert pipeline.stats()["datagrams"] == 41
    pipeline.close()


class _FakeLoop:
    def __init__(self):
        self.calls: list[tuple] = []

    def add_reader(self, fd, *_):
        self.calls.append(("add_reader", fd))

    def remove_reader(self, fd):
        self.calls.append(("remove_reader", fd))

    def call_later(self, delay, *_):
        self.calls.append(("call_later", delay))


class _FakeReceiver:
    batch = 512

    def __init__(self, got: int):
        self.got = got
        self.sock = type("Sock", (), {"fileno": lambda self: 7})()

    def drain(self, process, limit=None) -> int:
        if self.got < 0:
            raise RuntimeError("a batch failed")
        return self.got


@pytest.mark.parametrize("armed, got, calls", [
    (True, 0, []),                                                    # spurious wake-up: stays watched
    (True, 3, [("remove_reader", 7), ("call_later", 0.002)]),         # a trickle: polled from now on
    (True, serve_mod.WAKE_ENOUGH, []),                                # a burst read whole: stays watched
    (False, 5, [("call_later", 0.002)]),                              # a poll that found some: poll again
    (False, 0, [("add_reader", 7)]),                                  # a poll that found none: watched again
    (False, serve_mod.TURN_BATCHES * 512, [("call_later", 0.0)]),     # its turn ran out: the next comes at once
])
def test_after_each_read_a_socket_is_watched_or_polled(armed, got, calls):
    live = _stand_in_loop()
    live._drain(_FakeReceiver(got), armed)
    assert live.loop.calls == calls


class _FakePolls:
    def __init__(self, got: int, code: int):
        self.got, self.code, self.asked = got, code, None

    def run(self, r, n: int, idle: int) -> tuple[int, int]:
        self.asked = (n, idle)
        return self.got, self.code


@pytest.mark.parametrize("armed, got, code, calls", [
    (True, 0, polls.EMPTY, []),                                       # spurious wake-up: stays watched
    (True, 3, polls.DONE, [("remove_reader", 7), ("call_later", 0.002)]),   # data to the turn's end: polled
    (True, 3, polls.EMPTY, []),                                       # a burst, then quiet: stays watched
    (False, 5, polls.DONE, [("call_later", 0.002)]),                  # its polls found some: poll again
    (False, 0, polls.EMPTY, [("add_reader", 7)]),                     # polls that found none: watched again
    (False, 5, polls.EMPTY, [("add_reader", 7)]),                     # some, then quiet polls: watched again
    (False, 5, polls.BUSY, [("call_later", 0.0)]),                    # its turn ran out: the next comes at once
])
def test_compiled_polls_leave_a_socket_watched_or_polled(armed, got, code, calls):
    """The same rules when the polls run compiled (polls.Polls): every turn, a wake-up's or a
    timer's, polls up to per_turn times until `idle` polls in a row find nothing, and the code it
    ends with decides what comes next."""
    live = _stand_in_loop()
    live.polls, live.per_turn, live.idle = _FakePolls(got, code), 10, 4
    r = _FakeReceiver(got)
    r._use_mmsg = True
    live._drain(r, armed)
    assert live.polls.asked == (10, 4) and live.loop.calls == calls


def test_a_poll_that_raises_leaves_the_socket_watched():
    live = _stand_in_loop()
    with pytest.raises(RuntimeError):
        live._drain(_FakeReceiver(-1), False)
    assert live.loop.calls == [("add_reader", 7)]


def _stand_in_loop():
    live = serve_mod._Loop(pipeline=None, receivers=[], clock=time.time, coalesce=0.002, stats_every=0, reload=None)
    live.loop, live.stop = _FakeLoop(), asyncio.Event()
    live.pipeline = type("P", (), {"process": None})()
    return live


def test_what_the_start_loaded_is_left_out_of_the_garbage_collectors_passes():
    """After the kernels are loaded, everything alive then is frozen (gc.freeze): a full collection
    in the loop walks only what the loop made since, not the ~110 000 objects of the modules and
    kernels (a pass over those stalled the loop for 18-45 ms while the socket buffer filled)."""
    import subprocess
    import sys
    code = ("import gc\nfrom imds_flow import config\nfrom imds_flow.serve import _Live\n"
            "_Live(config.load(None), None, None, [], 1, None).load_kernels()\n"
            "print(gc.get_freeze_count(), len(gc.get_objects()))\n")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    frozen, walked = map(int, r.stdout.split())
    assert frozen > 50_000 and walked < frozen / 10, r.stderr[-2000:]
