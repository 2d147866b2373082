"""The wiring of every stage: datagrams -> wire -> FlowBatch -> detect -> alerts -> sinks.

This is the only module that knows them all; cli.py parses arguments and calls run_replay here or
serve.run_listen, which runs a Pipeline on live sockets. The same Pipeline.process serves both.
"""
from __future__ import annotations

import logging
import math
import time
from typing import Callable, Iterable

import numpy as np

from . import warmup, wire
from .alertpack import Packer, Run
from .alerts import Encoder, Folder
from .config import Config
from .datagrams import DatagramBatch
from .detect import Detector
from .exporters import ExporterTable
from .flows import FlowBatch
from .metrics import ErrorLog, LimitLog, Latency, stats_of, summary_line
from .onecall import OneCall
from .probe import PROBE_PORT, PROBE_SOURCE, PROBE_SOURCE_V6, is_probe
from .ratelimit import RateLimit
from .sinks import Sink
from .templates_store import TemplateFile
from .wire.sflow import SflowState
from .wire.scopes import Bounds, ScopeTable

__all__ = ["Pipeline", "run_replay"]

log = logging.getLogger("imds_flow")
_TRUNCATED = wire.errors.reason_code("truncated_by_receive")
EARLY_TICK_SECONDS = 0.1                      # _close_ended's least interval (a tick scans every fold key:
                                              # ~0.3 ms for 400 000)


class Pipeline:
    """`kernel_drops` counts what the kernel dropped on the sockets that feed it (live only);
    `publish` is handed a snapshot() every tick (the metrics endpoint, or a worker's parent)."""

    def __init__(self, config: Config, sink: Sink, clock: Callable[[], float] = time.time, encoder=None,
                 compact: bool = True, kernel_drops: Callable[[], int] = lambda: 0,
                 publish: Callable[[dict], None] | None = None):
        self.config = config
        # compact: the decoders keep only rows that may alert (wire.decode keep=); False keeps every
        # decoded record in self.batch (tests and tools that look at the records)
        self.compact = compact
        self.clock = clock
        self.sink = sink
        t, lim = config.templates, config.limits
        bounds = Bounds(lim.max_scopes_per_exporter, lim.max_templates_per_scope, lim.max_templates,
                        lim.max_template_fields, lim.max_pending_bytes_per_exporter, lim.max_pending_bytes,
                        lim.max_batch_records)
        self.exporters = ExporterTable(clock, templates=ScopeTable(
            t.scope_port, t.lifetime_seconds, t.pending_max_sets, t.pending_max_seconds, config.http.url_substrings,
            bounds), max_exporters=lim.max_exporters, allowed=config.listen.allowed_exporters,
            sflow=SflowState(config.http.url_substrings, config.http.header_names))
        self.detector = Detector(config, url_patterns=config.http.url_substrings)
        self.template_file: TemplateFile | None = None    # set by persist_templates() (listen only)
        self.batch = FlowBatch(limit=lim.max_batch_records)
        self.onecall = OneCall(config.listen.batch_datagrams)
        self.batches_split = 0                # batches decoded in parts to keep within max_batch_records
        self.encoder = encoder if encoder is not None else Encoder()   # formats.encoder(name)
        self.alerts_written = 0
        self._out: list[bytes] = []
        self._out_ts: list[float] = []        # arrival time of each alert in _out, for latency
        self.latency = Latency()
        self.kernel_drops = kernel_drops
        self.publish = publish
        # msgpack (the default format): alerts that leave at once are packed by one kernel per batch
        packer = Packer((PROBE_SOURCE, PROBE_SOURCE_V6), PROBE_PORT) if type(self.encoder) is Encoder else None
        self.folder = Folder(config.alerts.fold_window_seconds, self._emit, lim.max_fold_keys,
                             packer=packer, emit_packed=self._emit_packed,
                             emit_packed_many=self._emit_packed_many, describe=self._describe,
                             emit_packed_run=self._emit_packed_run)
        self._bounds_logged = (0, 0)          # (batches_split, folder.over_limit) at the last warning
        self._reopened, self._ended_closed = 0, -math.inf   # _close_ended: folder.reopened seen, when it last ran
        self._bounds_limit = RateLimit(config.logging.error_interval_seconds)
        self._redefined = 0                   # template redefinitions at the last debug line
        self.errors = ErrorLog(self.exporters, config.logging.error_interval_seconds)
        self.limit_log = LimitLog(self.exporters, config.logging.error_interval_seconds)

    def warm_up(self) -> None:
        """Load (or compile) every kernel on scratch data, so the first real burst is not spent
        waiting for the JIT while the socket buffer fills (warmup.py). Touches no counters."""
        warmup.warm_up(self)

    def _emit(self, alert: dict) -> None:
        if is_probe(alert):                   # `imds-flow probe`: the alert says it is a test
            alert["test"] = True
        self._emit_packed(self.encoder.encode(alert), alert["ts"])

    def _emit_packed(self, alert: bytes, ts: float) -> None:
        """An encoded alert (by _emit, or by alertpack: the same bytes, the probe's mark included)."""
        self._out.append(alert)
        self._out_ts.append(ts)
        self.alerts_written += 1

    def _emit_packed_many(self, alerts: list[bytes], stamps: list[float]) -> None:
        """_emit_packed for a batch's alerts at once (alerts.Folder.finish in an alert flood)."""
        self._out += alerts
        self._out_ts += stamps
        self.alerts_written += len(alerts)

    def _emit_packed_run(self, run: Run) -> None:
        """Alerts packed back to back (a tick's closing windows, a batch's new keys): after those
        still to write (flushed first), written at once, no bytes object made per alert, by a sink
        that takes them so (Sinks.write_run: one file, nothing to re-encode, no rotation due), or
        lost and counted there, before this returns; else bytes each, as _emit_packed_many's
        (written at the next flush)."""
        k = len(run.ends)
        write_run = getattr(self.sink, "write_run", None)
        if write_run is None:
            self._emit_packed_many(*run.split())
            return
        self.flush()
        if not write_run(run.out, k):
            self._emit_packed_many(*run.split())
            return
        self.sink.flush()
        self.alerts_written += k
        self.latency.add(self.clock() - run.stamps)

    def _describe(self) -> tuple:
        """What the folder's hits are named by (alerts.Folder.describe): the detector's of now."""
        d = self.detector
        return d.names, self.exporters, d.signals, d.header_names

    def direct_sink(self) -> tuple[int, int, int] | None:
        """The alert file compiled code may append alerts to itself (polls.py; the sink's direct():
        descriptor, rotation size, size), when alerts are msgpack packed by the Folder's Packer
        and their latency is measured on time.time's clock; else None."""
        direct = getattr(self.sink, "direct", None)
        if direct is None or self.folder.packer is None or self.clock is not time.time:
            return None
        return direct()

    def process(self, dg: DatagramBatch, truncated: np.ndarray | None = None) -> None:
        """Decode, detect and alert one batch of datagrams; alerts are written before it returns.

        `truncated` marks datagrams the socket cut short: they are counted, not decoded.
        """
        if dg.n == 0:
            return
        if dg.n > 1 and dg.nbytes() > self.batch.limit:
            self._process_in_parts(dg, truncated)
            return
        one = self.onecall.run(dg, self.exporters, self.batch, self.detector, self.folder) \
            if truncated is None and self.compact else None
        if one is not None:                   # known exporters' v5, v9 / IPFIX or sFlow: one kernel call did it all
            self.taken(dg, one)
            return
        hits = self._decode_and_detect(dg, truncated)
        if hits is None:
            return
        if hits:                              # None: no hit, and no Hits made for it
            self.folder.add_hits(self.batch, hits, self.detector.names, self.exporters)
            self._close_ended(float(dg.ts[dg.n - 1]))
        self.flush()

    def taken(self, dg: DatagramBatch, one: tuple[int, int, int]) -> None:
        """What is left of a batch a one-call kernel took (OneCall.run, or polls.poll_loop with
        OneCall.took): `one` = (rejected datagrams, hits, suppressed). Rejected datagrams are logged,
        hits the kernel did not fold are folded here, and alerts written."""
        bad, count, suppressed = one
        now = float(dg.ts[dg.n - 1])
        if bad:
            self.errors.report(self.onecall.exp_ids[: dg.n], self.onecall.status[: dg.n], now)
        self.limit_log.report(now)
        if count:
            groups = self.onecall.grouped         # folded in the kernel too, unless -1
            if groups < 0:
                self.folder.add_hits(self.batch, self.detector.hits(count, suppressed), self.detector.names,
                                     self.exporters)
            elif self.folder.folded():            # groups left to Python: alerts that leave or are held
                self.folder.finish(groups, self.batch, self.detector.hits(count, suppressed),
                                   self.detector.names, self.exporters)
            self._close_ended(now)
        self.flush()

    def _close_ended(self, now: float) -> None:
        """Close the folding windows that ended by `now`, the batch's last arrival time (Folder.tick:
        what the next tick does; a replay's capture time, which its windows follow) when hits of
        this batch met a window that ended over a held alert its tick had not yet let leave
        (Folder.reopened), at most every EARLY_TICK_SECONDS. Each such hit sends a batch back
        from compiled code to Python: in an alert flood, while the first minute's windows close,
        ~150 a second, each a few hundred us (and the held alerts leave sooner)."""
        if self.folder.reopened == self._reopened:
            return
        self._reopened = self.folder.reopened
        if now - self._ended_closed >= EARLY_TICK_SECONDS:
            self._ended_closed = now
            self.folder.tick(now)

    def _decode_and_detect(self, dg: DatagramBatch, truncated: np.ndarray | None):
        """The general path: any format, new exporters, truncated datagrams. None when every
        datagram was refused."""
        exp_ids, refused = self.exporters.resolve(dg.src_hi[: dg.n], dg.src_lo[: dg.n], dg.sport[: dg.n])
        if refused:                    # not in listen.allowed_exporters, or past limits.max_exporters
            keep = exp_ids >= 0
            self.limit_log.report(float(dg.ts[dg.n - 1]))
            dg, exp_ids = dg.select(keep), exp_ids[keep]
            truncated = truncated[keep] if truncated is not None else None
            if dg.n == 0:
                self.batch.n = 0
                return None
        if truncated is not None:
            dg.lens[truncated] = 0
        status = wire.decode(dg, exp_ids, self.exporters, self.batch,
                             keep=self.detector.endpoints if self.compact else None,
                             records=self.exporters.records_column())
        if truncated is not None:
            status[truncated] = _TRUNCATED
        now = float(dg.ts[dg.n - 1])
        if self.exporters.count(exp_ids, status, None, now):
            self.errors.report(exp_ids, status, now)
        self.limit_log.report(now)
        return self.detector.run(self.batch, self.exporters.column("suppressed"), self.exporters.column("alert_records"))

    def _process_in_parts(self, dg: DatagramBatch, truncated: np.ndarray | None) -> None:
        """Datagrams that could hold more records than limits.max_batch_records (at worst one per
        byte: 1-byte IPFIX records) are decoded in consecutive parts that cannot, so the column
        batch stays within its limit. Order and exporter state are as if decoded at once."""
        self.batches_split += 1
        ends = np.cumsum(dg.lens[: dg.n], dtype=np.int64)
        start = 0
        while start < dg.n:
            base = int(ends[start - 1]) if start else 0
            stop = max(int(np.searchsorted(ends, base + self.batch.limit, side="right")), start + 1)
            part = DatagramBatch(dg.buf, dg.offs[start:stop], dg.lens[start:stop], dg.src_hi[start:stop],
                                 dg.src_lo[start:stop], dg.sport[start:stop], dg.ts[start:stop], stop - start)
            self.process(part, truncated[start:stop] if truncated is not None else None)
            start = stop

    def _report_bounds(self, now: float) -> None:
        """A warning, at most once per logging.error_interval_seconds, when a memory limit was hit."""
        split, over = self._bounds_logged
        if (split, over) == (self.batches_split, self.folder.over_limit) or not self._bounds_limit.due(now=now):
            return
        if self.batches_split > split:
            log.warning("%d batch(es) of datagrams decoded in parts: they could hold more than "
                        "limits.max_batch_records = %d records (total %d)", self.batches_split - split,
                        self.batch.limit, self.batches_split)
        if self.folder.over_limit > over:
            log.warning("%d alert(s) written unfolded: limits.max_fold_keys = %d alert keys are folding already "
                        "(total %d)", self.folder.over_limit - over, self.folder.max_keys, self.folder.over_limit)
        self._bounds_logged = (self.batches_split, self.folder.over_limit)

    def tick(self, now: float) -> None:
        """Close folding windows that ended by `now` and write what they held; expire templates and
        data that waited too long for one (counted), and save changed templates."""
        self.folder.tick(now)
        self.flush()
        self._report_bounds(now)
        if self.publish is not None:
            self.publish(self.snapshot())
        cache = self.exporters.templates
        cache.expire(now)
        self.exporters.add_counts("template_expired_sets", cache.pending.expire(now, cache.pending_max_seconds))
        if self.template_file is not None:
            self.template_file.maybe_save(now)
        if log.isEnabledFor(logging.DEBUG) and (redefined := self.exporters.total("template_redefinitions")) != self._redefined:
            log.debug("%d template(s) redefined with another layout since the last tick (total %d)",
                      redefined - self._redefined, redefined)
            self._redefined = redefined

    def persist_templates(self, path) -> None:
        """Restore templates from `path` now and keep it up to date (tick, close)."""
        self.template_file = TemplateFile(path, self.exporters.templates)
        self.template_file.load()

    def flush(self) -> None:
        """Hand the alerts to the sink once: a sink that raises has lost them (Sinks counts that per
        sink and never raises); they are never offered again with a later batch."""
        if self._out:
            out, ts = self._out, self._out_ts
            self._out, self._out_ts = [], []
            self.sink.write_alerts(out)           # one bytes per alert: sinks cut between alerts
            self.sink.flush()
            now = self.clock()
            self.latency.add([now - t for t in ts])

    def close(self) -> None:
        self.folder.close()
        self.flush()
        if self.template_file is not None:
            self.template_file.save()
        self.sink.close()

    def snapshot(self) -> dict:
        """Every counter, for the metrics endpoint (read from another thread: monitoring-grade)."""
        sink_stats = getattr(self.sink, "stats", None)
        extra = sink_stats() if callable(sink_stats) else {}
        return {"exporters": self.exporters.snapshot(),
                "global": {"exporters": len(self.exporters), "alerts_written": self.alerts_written,
                           **self.exporters.dropped,
                           "kernel_drops": self.kernel_drops(), "pending_alerts": self.folder.pending,
                           "spool_bytes": extra.get("spool_bytes", 0), "spool_dropped": extra.get("spool_dropped", 0),
                           "batches_split": self.batches_split, "fold_keys_over_limit": self.folder.over_limit},
                "sinks": extra.get("sinks", [])}

    def reopen_sinks(self) -> None:
        """SIGHUP: file sinks open their path again (after logrotate's rename); nothing is lost."""
        self.flush()
        reopen = getattr(self.sink, "reopen", None)
        if reopen is not None:
            reopen()

    def reload(self, config: Config) -> None:
        """Swap in a new config's endpoints, suppression and URL substrings at once (between two
        batches). Other sections take effect at the next start; a warning says so."""
        self.detector = Detector(config, url_patterns=config.http.url_substrings)
        self.exporters.templates.set_url_patterns(config.http.url_substrings)
        self.exporters.sflow.set_patterns(config.http.url_substrings, config.http.header_names)
        for section in ("listen", "templates", "alerts", "logging", "limits"):
            if getattr(config, section, None) != getattr(self.config, section, None):
                log.warning("reload: [%s] changed; it takes effect at the next start", section)
        if config.sinks != self.config.sinks:
            log.warning("reload: [[sinks]] changed; the sinks in use stay until the next start (SIGHUP only "
                        "reopens their files)")
        self.config = config
        log.info("reload: %d endpoint(s), %d suppressed subnet(s), %d suppressed VLAN(s) in force",
                 len(config.endpoints), len(config.suppress.source_subnets), len(config.suppress.vlans))

    def stats(self) -> dict:
        return stats_of(self.exporters, self.alerts_written)

    def summary(self, latency: bool = True) -> str:
        """One line of counters; `latency` adds alert latency (live only: a replay's arrival times
        are the capture's)."""
        return summary_line(self.stats(), self.latency if latency else None)


def run_replay(config: Config, sink: Sink, batches: Iterable[DatagramBatch], encoder=None) -> Pipeline:
    """Feed captured datagrams through the pipeline; folding windows follow capture time."""
    pipeline = Pipeline(config, sink, encoder=encoder)
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


class _NullSink:
    def write_alerts(self, alerts: list[bytes]) -> None:
        pass

    def flush(self) -> None:
        pass

    def close(self) -> None:
        pass
