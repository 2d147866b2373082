"""The live collector: bind, load the kernels, then run an event loop around Receivers (receive.py)
feeding a Pipeline (app.py), in one process or in each of several workers (workers.py).

The loop owns what happens over time: a socket is drained when it becomes readable; a tick a
second closes folding windows, expires templates and publishes the metrics snapshot; a stats line
every logging.stats_interval_seconds; SIGINT / SIGTERM drain the sockets and stop; SIGHUP reopens
the sinks and swaps in a reloaded config between two batches.
"""
from __future__ import annotations

import asyncio
import gc
import logging
import signal
import socket
import threading
import time
from typing import Callable

from . import polls
from .app import Pipeline, _NullSink
from .config import Config, default_state_file
from .sinks import Sink
from .sockets import close_sockets, fmt_address, kernel_drops, open_sockets

__all__ = ["run_listen", "serve"]

log = logging.getLogger("imds_flow")


def run_listen(config: Config, sink: Sink, listen: list[tuple[str, int]], ready: Callable[[list], None] | None = None,
               encoder=None, workers: int = 1, metrics_at: tuple[str, int] | None = None,
               reload: Callable[[], Config] | None = None, groups: list[list] | None = None):
    """Receive on every address until SIGINT/SIGTERM, then drain, flush every alert and return.

    With workers > 1 the kernels are loaded once, then `workers` processes share every address
    (SO_REUSEPORT); the parent merges their alerts into `sink` and their counters into the summary.
    `metrics_at` serves Prometheus metrics on /metrics; SIGHUP applies `reload()`'s config.
    `groups`: sockets already bound for `listen` (sockets.open_sockets), as the CLI does before
    it imports the kernels; opened here otherwise.
    """
    # Bind first, then load the kernels: exports that arrive meanwhile wait in the socket buffer
    # instead of being refused (ICMP port unreachable) while numba loads or compiles.
    if groups is None:
        groups = open_sockets(listen, config.listen.rcvbuf_bytes, copies=workers)
    live = _Live(config, encoder, reload, groups, workers, ready)
    live.load_kernels()
    if workers > 1:
        from .workers import run_workers
        try:
            run_workers(groups, workers, sink, live.serve_worker, live.announce, metrics_at)
        finally:
            sink.close()
        return None
    return live.serve_one(sink, metrics_at)


class _Live:
    """How a listening process is built: its Pipeline, its Receivers and the loop, from the config
    and the sockets bound for it."""

    def __init__(self, config: Config, encoder, reload: Callable[[], Config] | None, groups: list[list],
                 workers: int, ready: Callable[[list], None] | None):
        self.config, self.encoder, self.reload = config, encoder, reload
        self.groups, self.workers, self.ready = groups, workers, ready
        self.bound = [g[0].getsockname()[:2] for g in groups]

    def load_kernels(self) -> None:
        """Load (or compile) every kernel before the first datagram; on failure the sockets close."""
        started = time.monotonic()
        # Loading the cached kernels takes well under a second; the first start after an install
        # compiles them (tens of seconds): say so rather than sit silent.
        notice = threading.Timer(3.0, log.info, ("compiling the decode kernels (first start after an install; "
                                                 "exports are queued meanwhile), later starts load them in a second",))
        notice.daemon = True
        notice.start()
        try:
            Pipeline(self.config, _NullSink(), encoder=self.encoder).warm_up()   # the receive kernel too
        except BaseException:
            close_sockets(self.groups)
            raise
        finally:
            notice.cancel()
        # What is loaded by now (modules, kernels, config: ~110 000 objects) lives as long as the
        # process. Frozen, the garbage collector's full passes walk only what the loop made since: a
        # full pass over all of them took 18-45 ms here, a stall in which a 4 MiB socket buffer fills
        # at 2 M records/s. Before the workers fork, so that they share these pages too.
        gc.collect()
        gc.freeze()
        log.debug("kernels ready in %.2f s", time.monotonic() - started)

    def announce(self, metrics_bound: tuple[str, int] | None = None) -> None:
        """The addresses as bound: with port 0 (tests, ad-hoc runs) this line says which port it got."""
        from .receive import describe
        log.info("listening on %s (%s)%s", ", ".join(fmt_address(a) for a in self.bound),
                 describe(self.config.listen.batch_datagrams, self.workers),
                 f"; metrics on http://{fmt_address(metrics_bound)}/metrics" if metrics_bound else "")
        if self.ready is not None:
            self.ready(self.bound)

    def pipeline(self, sink: Sink, socks: list[socket.socket], worker: int | None = None,
                 publish: Callable[[dict], None] | None = None) -> Pipeline:
        pipeline = Pipeline(self.config, sink, encoder=self.encoder, kernel_drops=kernel_drops(socks), publish=publish)
        state_file = self.config.templates.state_file
        if state_file:
            path = default_state_file() if state_file == "auto" else state_file
            pipeline.persist_templates(path if worker is None else f"{path}.worker{worker}")
        return pipeline

    def serve(self, pipeline: Pipeline, socks: list[socket.socket], ready: Callable[[], None] | None = None) -> None:
        from .receive import Receiver
        lc = self.config.listen
        receivers = [Receiver(s, lc.batch_datagrams, lc.max_datagram_bytes, clock=pipeline.clock) for s in socks]
        serve(pipeline, receivers, clock=pipeline.clock, coalesce=lc.coalesce_seconds,
              stats_every=self.config.logging.stats_interval_seconds, ready=ready, reload=self.reload)

    def serve_one(self, sink: Sink, metrics_at: tuple[str, int] | None) -> Pipeline:
        """The collector in this process: the first socket of every address group."""
        from .metrics import MetricsServer
        socks = [g[0] for g in self.groups]
        # The HTTP thread reads only what the loop published (an immutable snapshot, once per tick),
        # never the live tables the loop is changing.
        published: list[dict] = [{}]
        pipeline = self.pipeline(sink, socks, publish=(lambda snapshot: published.__setitem__(0, snapshot))
                                 if metrics_at else None)
        server = None
        if metrics_at:
            published[0] = pipeline.snapshot()
            server = MetricsServer(*metrics_at, lambda: published[0])
        try:
            self.serve(pipeline, socks, ready=lambda: self.announce(server.address if server else None))
        finally:
            if server is not None:
                server.close()
            pipeline.close()
            log.info("stopped: %s", pipeline.summary())
        return pipeline

    def serve_worker(self, index: int, socks: list[socket.socket], frames: Sink,
                     publish: Callable[[dict], None] | None) -> None:
        """A worker process: its own pipeline on its copy of every socket; alerts, snapshots and,
        at the end, its counters go to the parent as frames."""
        pipeline = self.pipeline(frames, socks, worker=index, publish=publish)
        try:
            self.serve(pipeline, socks)
        finally:
            pipeline.close()
            frames.send_stats(pipeline.stats(), pipeline.latency)


def serve(pipeline: Pipeline, receivers: list, *, clock: Callable[[], float] = time.time, coalesce: float = 0.0,
          stats_every: float = 0.0, ready: Callable[[], None] | None = None,
          reload: Callable[[], Config] | None = None, compiled=None) -> None:
    """Run the event loop (uvloop when installed) until SIGINT / SIGTERM, then drain every socket
    and close it. `ready()` is called once the sockets are watched; SIGHUP reopens the sinks and
    swaps `reload()`'s config into the pipeline between batches. `compiled`: what runs the polls
    (polls.Polls' run()) instead of the Pipeline's own (bench/floor.py's reads alone)."""
    try:
        import uvloop
        runner = uvloop.run
    except ImportError:                      # portable fallback: asyncio's own loop
        runner = asyncio.run
    live = _Loop(pipeline, receivers, clock, coalesce, stats_every, reload)
    if compiled is not None:
        live.polls = compiled
    runner(live.run(ready))


TURN_BATCHES = polls.TURN_BATCHES            # most batches a socket drains per turn of the loop
WAKE_ENOUGH = 32                             # datagrams that make an epoll wake-up worth its cost
# most time one turn of the loop spends polling one socket: each turn costs ~0.4 ms of Python on a
# cold core (the event loop, Polls.run making the kernel's arguments), so a longer one costs less
# per record; the loop's timers and signals wait at most this long (alerts do not: they leave
# with their batch; a fold window closes at most this late, on a tick of its own every second).
# 0.1 s against 0.02 s, alternating, medians of 3: sFlow 200 000 samples/s 0.483 -> 0.375 CPU s per
# million samples, v5 0.3 M records/s 208 -> 158 ms per million; 0.25 s against 0.1 s (8 s runs):
# v5 0.3 M records/s 121 -> 104 ms (0.5 s: 96, not worth twice the wait).
POLLS_SECONDS = 0.25
IDLE_POLLS = 4                               # polls in a row that find a socket empty: back to epoll


class _Loop:
    def __init__(self, pipeline: Pipeline, receivers: list, clock: Callable[[], float], coalesce: float,
                 stats_every: float, reload: Callable[[], Config] | None):
        self.pipeline, self.receivers, self.clock = pipeline, receivers, clock
        self.coalesce, self.stats_every, self.reload = coalesce, stats_every, reload
        # A Pipeline's polls run compiled (polls.py). With one socket, a turn (a wake-up or a timer's)
        # polls it for up to POLLS_SECONDS, sleeping `coalesce` between polls, and hands it back to
        # epoll once IDLE_POLLS polls in a row found nothing: exporters that send in bursts a few
        # milliseconds apart are read by the compiled loop, without a wake-up of the event loop
        # and its Python for each burst. With more sockets, one poll a turn, so that no socket
        # waits on another's sleep.
        self.polls = polls.Polls(pipeline, coalesce, receivers[0].batch) \
            if isinstance(pipeline, Pipeline) and pipeline.compact and receivers else None
        one = coalesce > 0 and len(receivers) == 1
        self.per_turn = max(1, int(POLLS_SECONDS / coalesce)) if one else 1
        self.idle = IDLE_POLLS if one else 1

    async def run(self, ready: Callable[[], None] | None) -> None:
        self.loop = asyncio.get_running_loop()
        self.stop = asyncio.Event()
        for r in self.receivers:
            self.loop.add_reader(r.sock.fileno(), self._drain, r)
        for sig in (signal.SIGINT, signal.SIGTERM):
            self.loop.add_signal_handler(sig, self.stop.set)
        if self.reload is not None:
            self.loop.add_signal_handler(signal.SIGHUP, self._on_hup)
        if ready is not None:
            ready()
        try:
            await self._tick_until_stopped()
        finally:
            for r in self.receivers:
                self.loop.remove_reader(r.sock.fileno())
                r.drain(self.pipeline.process)    # what the kernel still holds
                r.sock.close()

    def _drain(self, r, armed: bool = True) -> None:
        # Bounded work per turn (TURN_BATCHES), so other sockets and timers get theirs. While
        # datagrams keep coming the socket is polled every `coalesce` seconds instead of watched:
        # each turn finds a larger batch, and no epoll wake-up or epoll_ctl is spent per batch
        # (on a virtual machine a wake-up costs more than the batch's records: caches go cold while
        # the core idles). Latency grows by at most `coalesce`. A poll that finds the socket empty
        # (compiled polls: IDLE_POLLS in a row) hands it back to epoll, so an idle collector uses no
        # CPU; so does a wake-up of one poll that found WAKE_ENOUGH datagrams (exporters that send
        # in bursts: one wake-up per burst).
        if not armed and self.stop.is_set():
            return                               # run() drains what is left
        fd = r.sock.fileno()
        try:
            if self.polls is not None and polls.usable(r):
                got, code = self.polls.run(r, self.per_turn, self.idle)
                busy, empty, turn = code == polls.BUSY, code == polls.EMPTY, self.per_turn
            else:
                got = r.drain(self.pipeline.process, limit=TURN_BATCHES)
                busy, empty, turn = got >= TURN_BATCHES * r.batch, got == 0, 1
        except BaseException:
            if not armed:                        # never leave a socket neither watched nor polled
                self.loop.add_reader(fd, self._drain, r)
            raise
        if self.coalesce <= 0 or self.stop.is_set():
            return
        if armed and got >= WAKE_ENOUGH and turn == 1:   # worth its wake-up: stay on epoll (a burst,
            return                               # read whole; a poll soon after it would find nothing)
        if empty or got == 0:                    # a poll found the socket empty: back to epoll
            if not armed:
                self.loop.add_reader(fd, self._drain, r)
            return
        if armed:
            self.loop.remove_reader(fd)
        # more may be waiting when busy: the next turn comes soon
        self.loop.call_later(0.0 if busy else self.coalesce, self._drain, r, False)

    def _on_hup(self) -> None:
        # Runs on the loop, between two batches: no datagram is lost, the kernel queues them.
        self.pipeline.reopen_sinks()         # logrotate renamed the files: later alerts go to new ones
        try:
            self.pipeline.reload(self.reload())
        except Exception as e:               # noqa: BLE001 - a bad new config must not stop the collector
            log.error("reload failed, keeping the running config: %s", e)

    async def _tick_until_stopped(self) -> None:
        next_stats = self.clock() + self.stats_every if self.stats_every > 0 else None
        while not self.stop.is_set():
            try:
                await asyncio.wait_for(self.stop.wait(), timeout=1.0)
            except asyncio.TimeoutError:
                pass
            now = self.clock()
            self.pipeline.tick(now)
            if next_stats is not None and now >= next_stats:
                next_stats += self.stats_every
                log.info("%s", self.pipeline.summary())
