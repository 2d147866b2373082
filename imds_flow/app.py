"""The wiring of every stage: datagrams -> wire -> FlowBatch -> detect -> alerts -> sinks.

This is the only module that knows them all; cli.py parses arguments and calls run_listen /
run_replay. The same Pipeline.process serves live sockets and offline captures.
"""
from __future__ import annotations

import logging
import time
from typing import Callable, Iterable

import numpy as np

from . import wire
from .alerts import Encoder, Folder, hit_alerts
from .config import Config
from .datagrams import DatagramBatch
from .detect import Detector
from .exporters import ExporterTable
from .flows import FlowBatch
from .metrics import ErrorLog, summary_line
from .sinks import Sink

__all__ = ["Pipeline", "run_listen", "run_replay"]

log = logging.getLogger("imds_flow")
_TRUNCATED = wire.errors.reason_code("truncated_by_receive")


class Pipeline:
    def __init__(self, config: Config, sink: Sink, clock: Callable[[], float] = time.time):
        self.config = config
        self.clock = clock
        self.sink = sink
        self.exporters = ExporterTable(clock)
        self.detector = Detector(config)
        self.batch = FlowBatch()
        self.encoder = Encoder()
        self.alerts_written = 0
        self.records_matched = 0
        self.suppressed = 0
        self._out: list[bytes] = []
        self.folder = Folder(config.alerts.fold_window_seconds, self._emit)
        self.errors = ErrorLog(self.exporters, config.logging.error_interval_seconds)

    def warm_up(self) -> None:
        """Load (or compile) every kernel on a scratch batch, so the first real burst is not spent
        waiting for the JIT while the socket buffer fills. Touches no counters."""
        header = (5).to_bytes(2, "big") + (1).to_bytes(2, "big") + bytes(20)
        dg = DatagramBatch.from_payloads([header + bytes(48), b"\x00"], ts=0.0)
        scratch = ExporterTable(self.clock)
        ids = scratch.lookup(dg.src_hi, dg.src_lo, dg.sport)
        batch = FlowBatch(64)
        wire.decode(dg, ids, scratch, batch)
        self.detector.run(batch)

    def _emit(self, alert: dict) -> None:
        self._out.append(self.encoder.encode(alert))
        self.alerts_written += 1

    def process(self, dg: DatagramBatch, truncated: np.ndarray | None = None) -> None:
        """Decode, detect and alert one batch of datagrams; alerts are written before it returns.

        `truncated` marks datagrams the socket cut short: they are counted, not decoded.
        """
        if dg.n == 0:
            return
        exp_ids = self.exporters.lookup(dg.src_hi[: dg.n], dg.src_lo[: dg.n], dg.sport[: dg.n])
        if truncated is not None:
            dg.lens[truncated] = 0
        status = wire.decode(dg, exp_ids, self.exporters, self.batch)
        if truncated is not None:
            status[truncated] = _TRUNCATED
        now = float(dg.ts[dg.n - 1])
        self.exporters.count(exp_ids, status, self.batch.view("exporter"), now)
        self.errors.report(exp_ids, status, now)
        hits = self.detector.run(self.batch)
        self.suppressed += hits.suppressed
        if len(hits):
            self.records_matched += len(hits)
            self.exporters.add("alerts", self.batch.view("exporter")[hits.idx])
            self.folder.add(hit_alerts(self.batch, hits, self.detector.names, self.exporters))
        self.flush()

    def tick(self, now: float) -> None:
        """Close folding windows that ended by `now` and write what they held."""
        self.folder.tick(now)
        self.flush()

    def flush(self) -> None:
        if self._out:
            self.sink.write(b"".join(self._out))
            self._out.clear()
            self.sink.flush()

    def close(self) -> None:
        self.folder.close()
        self.flush()
        self.sink.close()

    def summary(self) -> str:
        return summary_line(self.exporters, self.alerts_written, self.suppressed)


def run_replay(config: Config, sink: Sink, batches: Iterable[DatagramBatch]) -> Pipeline:
    """Feed captured datagrams through the pipeline; folding windows follow capture time."""
    pipeline = Pipeline(config, sink)
    last_tick = None
    try:
        for dg in batches:
            pipeline.process(dg)
            if dg.n:
                now = float(dg.ts[dg.n - 1])
                if last_tick is None or now - last_tick >= 1.0:
                    pipeline.tick(now)
                    last_tick = now
    finally:
        pipeline.close()
    return pipeline


def run_listen(config: Config, sink: Sink, listen: list[tuple[str, int]], ready: Callable[[list], None] | None = None):
    """Receive on every address until SIGINT/SIGTERM, then drain, flush every alert and return."""
    from .receive import serve   # the socket side is imported only by the live path

    pipeline = Pipeline(config, sink)
    started = time.monotonic()
    pipeline.warm_up()
    log.debug("kernels ready in %.2f s", time.monotonic() - started)
    try:
        serve(config, listen, pipeline, ready=ready)
    finally:
        pipeline.close()
        log.info("stopped: %s", pipeline.summary())
    return pipeline
