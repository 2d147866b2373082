"""Counters' reporting: rate-limited logging of decode errors and a periodic one-line summary."""
from __future__ import annotations

import bisect
import logging
import socket
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Callable

import numpy as np

from .addr import from_hilo
from .exporters import COUNTERS, ExporterTable
from .ratelimit import RateLimit
from .wire.errors import REASONS

__all__ = ["ErrorLog", "LimitLog", "Latency", "summary_line", "STAT_KEYS", "render_prometheus", "MetricsServer"]

log = logging.getLogger("imds_flow")


class ErrorLog:
    """Logs decode errors at most once per (exporter, reason) per `interval` seconds."""

    def __init__(self, exporters: ExporterTable, interval: float):
        self.exporters = exporters
        self._limit = RateLimit(interval)
        self._held: dict[tuple[int, int], int] = {}      # datagrams rejected since the last warning

    def report(self, exp_ids: np.ndarray, status: np.ndarray, now: float) -> None:
        bad = np.flatnonzero(status)
        if not len(bad):
            return
        pairs, counts = np.unique(np.stack([exp_ids[bad], status[bad]]), axis=1, return_counts=True)
        for (e, code), k in zip(pairs.T.tolist(), counts.tolist()):
            key = (e, code)
            held = self._held.get(key, 0) + k
            if not self._limit.due(key, now):
                self._held[key] = held
                continue
            self._held[key] = 0
            log.warning("exporter %s:%d: %d datagram(s) rejected: %s (total %d)",
                        self.exporters.address[e], self.exporters.port[e], held, REASONS[code].replace("_", " "),
                        self.exporters.errors(e).get(REASONS[code], 0))


class LimitLog:
    """Warnings for [limits] and listen.allowed_exporters, at most one per kind per `interval`:
    datagrams dropped before they had an exporter (naming the last source), and per-exporter
    refusals (naming the exporters with the most since the last warning). Per batch it only
    compares a time; the counters are read when a warning is due."""

    GLOBAL = {"not_allowed": "not in listen.allowed_exporters",
              "exporters_over_limit": "past limits.max_exporters"}
    PER_EXPORTER = {"templates_over_limit": "template definitions refused (limits.max_templates*)",
                    "pending_dropped_sets": "data sets dropped while waiting for their template (pending bounds)"}

    def __init__(self, exporters: ExporterTable, interval: float):
        self.exporters = exporters
        self._limit = RateLimit(interval)
        self._seen = dict(exporters.dropped)
        self._cols = [COUNTERS.index(k) for k in self.PER_EXPORTER]
        self._prev = np.zeros((0, len(self._cols)), np.int64)

    def report(self, now: float) -> None:
        if not self._limit.due(now=now):
            return
        ex = self.exporters
        for kind, why in self.GLOBAL.items():
            new = ex.dropped[kind] - self._seen[kind]
            if new:
                hi, lo, port = ex.refused[kind]
                log.warning("%d datagram(s) dropped: source %s, last from %s port %d (total %d)",
                            new, why, from_hilo(hi, lo), port, ex.dropped[kind])
        self._seen = dict(ex.dropped)
        m = len(ex)
        cur = ex.counters[:m][:, self._cols]
        prev = np.zeros_like(cur)
        prev[: len(self._prev)] = self._prev
        diff = cur - prev
        self._prev = cur
        for j, (kind, why) in enumerate(self.PER_EXPORTER.items()):
            hit = np.flatnonzero(diff[:, j])
            if len(hit):
                top = hit[np.argsort(-diff[hit, j], kind="stable")[:3]]
                who = ", ".join(f"{ex.address[e]}:{ex.port[e]} ({diff[e, j]})" for e in top.tolist())
                log.warning("%d %s: %s%s", int(diff[hit, j].sum()), why, who,
                            f" and {len(hit) - 3} more exporter(s)" if len(hit) > 3 else "")


_FEW = 16                                   # Latency.add: up to this many values a Python loop is cheaper


class Latency:
    """Alert latency (datagram arrival to alert written) in log-spaced buckets: cheap to add to,
    mergeable across workers, quantiles to within one bucket (about 6 %)."""

    EDGES = np.concatenate([[0.0], np.geomspace(1e-6, 100.0, 320)])

    def __init__(self, counts: list[int] | None = None):
        self.counts = np.array(counts, np.int64) if counts is not None else np.zeros(len(self.EDGES), np.int64)

    def add(self, seconds) -> None:
        """Count each of `seconds` (a sequence of floats) in its bucket."""
        if len(seconds) <= _FEW:             # the usual batch: an alert or two, no numpy calls
            for s in seconds:
                self.counts[bisect.bisect_right(_EDGES, max(s, 0.0)) - 1] += 1
        else:
            np.add.at(self.counts, np.searchsorted(self.EDGES, np.maximum(seconds, 0.0), side="right") - 1, 1)

    def merge(self, other: "Latency") -> None:
        self.counts += other.counts

    def quantile(self, q: float) -> float | None:
        total = int(self.counts.sum())
        if total == 0:
            return None
        i = int(np.searchsorted(np.cumsum(self.counts), q * total, side="left"))
        return float(self.EDGES[min(i + 1, len(self.EDGES) - 1)])   # the bucket's upper edge


_EDGES = Latency.EDGES.tolist()              # the same, for bisect (Latency.add)


# the numbers every summary line reports; workers send these to the parent, which adds them up
STAT_KEYS = ("exporters", "datagrams", "records", "rejected", "sequence_lost", "alerts", "suppressed")


def stats_of(exporters: ExporterTable, alerts: int) -> dict:
    return {"exporters": len(exporters), "datagrams": exporters.total("datagrams"),
            "records": exporters.total("records"), "rejected": sum(exporters.total(r) for r in REASONS[1:]),
            "sequence_lost": int(exporters.sequence_lost().sum()), "alerts": alerts,
            "suppressed": exporters.total("suppressed")}


def summary_line(stats: dict, latency: Latency | None = None) -> str:
    line = (f"{stats['exporters']} exporters, {stats['datagrams']} datagrams, {stats['records']} records, "
            f"{stats['rejected']} rejected datagrams, {stats['sequence_lost']} records lost upstream "
            f"(sequence gaps), {stats['alerts']} alerts, {stats['suppressed']} suppressed")
    if latency is not None and (p50 := latency.quantile(0.5)) is not None:
        line += f", alert latency p50 {p50 * 1e3:.2f} ms p99 {latency.quantile(0.99) * 1e3:.2f} ms"
    return line


# --- Prometheus text exposition --------------------------------------------------------------------

# per-exporter counters as metric families: (metric, help, counter column or reason label)
_FAMILIES = (
    ("imds_flow_datagrams_total", "Datagrams received from the exporter.", "datagrams"),
    ("imds_flow_records_total", "Flow records decoded.", "records"),
    ("imds_flow_alert_records_total", "Records that touched a metadata endpoint and alerted.", "alert_records"),
    ("imds_flow_suppressed_records_total", "Records that touched an endpoint but were suppressed.", "suppressed"),
    ("imds_flow_sequence_lost_total", "Records (v5, IPFIX) or datagrams (v9) missed upstream: sequence gaps.",
     "sequence_lost"),
    ("imds_flow_templates_total", "Templates received.", "templates"),
    ("imds_flow_template_redefinitions_total", "Templates received for an id the scope held with another layout.",
     "template_redefinitions"),
    ("imds_flow_template_misses_total", "Data sets that arrived before their template (waited).", "template_misses"),
    ("imds_flow_template_expired_sets_total", "Data sets dropped because their template never came.",
     "template_expired_sets"),
    ("imds_flow_pending_dropped_sets_total", "Data sets waiting for a template dropped by pending bounds.",
     "pending_dropped_sets"),
    ("imds_flow_templates_over_limit_total", "Template definitions refused by [limits].", "templates_over_limit"),
    ("imds_flow_sflow_samples_skipped_total", "sFlow samples without a packet (counters, drops, ...) skipped.",
     "sflow_samples_skipped"),
    ("imds_flow_sflow_records_skipped_total", "sFlow flow records not used, skipped by length.",
     "sflow_records_skipped"),
    ("imds_flow_sflow_datagrams_lost_total", "sFlow datagrams missed upstream: datagram sequence gaps.",
     "sflow_datagrams_lost"),
)


def _labels(row: dict) -> str:
    agent = f',agent="{row["agent"]}",sub_agent="{row["sub_agent"]}"' if row.get("agent") is not None else ""
    return f'exporter="{row["exporter"]}",exporter_port="{row["exporter_port"]}"{agent}'


def render_prometheus(snapshot: dict) -> str:
    """Text exposition format 0.0.4 of a snapshot (Pipeline.snapshot(), or several merged)."""
    rows = snapshot["exporters"]
    out = []
    for name, help_text, key in _FAMILIES:
        out += [f"# HELP {name} {help_text}", f"# TYPE {name} counter"]
        out += [f"{name}{{{_labels(r)}}} {r.get(key, 0)}" for r in rows]
    name = "imds_flow_decode_errors_total"
    out += [f"# HELP {name} Datagrams rejected by the decoders, by reason.", f"# TYPE {name} counter"]
    for r in rows:
        for reason in REASONS[1:]:
            if r.get(reason):
                out.append(f'{name}{{{_labels(r)},reason="{reason}"}} {r[reason]}')
    g = snapshot["global"]
    for name, kind, help_text, key in (
            ("imds_flow_exporters", "gauge", "Exporters seen since start.", "exporters"),
            ("imds_flow_not_allowed_datagrams_total", "counter",
             "Datagrams dropped undecoded: source not in listen.allowed_exporters.", "not_allowed"),
            ("imds_flow_exporters_over_limit_datagrams_total", "counter",
             "Datagrams dropped undecoded: a new source past limits.max_exporters.", "exporters_over_limit"),
            ("imds_flow_alerts_written_total", "counter", "Alerts written (after folding).", "alerts_written"),
            ("imds_flow_kernel_drops_total", "counter", "Datagrams dropped by the kernel: socket queue full.",
             "kernel_drops"),
            ("imds_flow_pending_alerts", "gauge", "Folded alerts waiting for their window to close.", "pending_alerts"),
            ("imds_flow_spool_bytes", "gauge", "Alert bytes spooled on disk for sinks that are down.",
             "spool_bytes"),
            ("imds_flow_spool_dropped_alerts_total", "counter", "Spooled alerts dropped because the spool was full.",
             "spool_dropped"),
            ("imds_flow_batches_split_total", "counter",
             "Batches of datagrams decoded in parts to stay within limits.max_batch_records.", "batches_split"),
            ("imds_flow_fold_keys_over_limit_total", "counter",
             "Alerts written unfolded because limits.max_fold_keys keys were folding already.",
             "fold_keys_over_limit")):
        out += [f"# HELP {name} {help_text}", f"# TYPE {name} {kind}", f"{name} {g.get(key, 0)}"]
    out += _sink_lines(snapshot.get("sinks", []))
    out += build_info()
    return "\n".join(out) + "\n"


def _quote(value: str) -> str:
    return str(value).replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def _sink_lines(sinks: list[dict]) -> list[str]:
    """Per-sink families (label sink = the sink's name, e.g. its path)."""
    name = "imds_flow_sink_alerts_total"
    out = [f"# HELP {name} Alerts per sink by outcome: sent (written, or delivered by a spooled sink), spooled "
           "(taken into its spool), dropped (lost: the sink failed, or its spool was full or unwritable).",
           f"# TYPE {name} counter"]
    for s in sinks:
        for outcome in ("sent", "spooled", "dropped"):
            out.append(f'{name}{{sink="{_quote(s["name"])}",outcome="{outcome}"}} {s.get(outcome, 0)}')
    for name, kind, help_text, key in (
            ("imds_flow_sink_errors_total", "counter", "Calls to a sink that failed (raised, or its spool refused a "
             "write).", "errors"),
            ("imds_flow_sink_failing", "gauge", "1 while a sink's last write failed.", "failing")):
        out += [f"# HELP {name} {help_text}", f"# TYPE {name} {kind}"]
        out += [f'{name}{{sink="{_quote(s["name"])}"}} {s.get(key, 0)}' for s in sinks]
    return out


def build_info() -> list[str]:
    """imds_flow_build_info: 1, with the versions of the collector and what it runs on as labels."""
    import platform
    from importlib.metadata import PackageNotFoundError, version

    def v(package: str) -> str:
        try:
            return version(package)
        except PackageNotFoundError:
            return "unknown"
    labels = {"version": v("imds-flow"), "python": platform.python_version(), "numpy": v("numpy"),
              "numba": v("numba")}
    text = ",".join(f'{k}="{val}"' for k, val in labels.items())
    name = "imds_flow_build_info"
    return [f"# HELP {name} The running collector's version and its runtime's, as labels.", f"# TYPE {name} gauge",
            f"{name}{{{text}}} 1"]


def merge_snapshots(parts: list[dict]) -> dict:
    """Workers' snapshots as one: exporters concatenated (each lives on one worker), globals summed."""
    merged = {"exporters": [], "global": {}}
    for p in parts:
        merged["exporters"] += p["exporters"]
        for k, v in p["global"].items():
            merged["global"][k] = merged["global"].get(k, 0) + v
    return merged


class MetricsServer:
    """GET /metrics on HOST:PORT; `snapshot` is called per scrape and must return a dict nobody changes
    (the loop publishes one per tick). At most MAX_CONNECTIONS at once (more are closed unanswered),
    each with a TIMEOUT; a client that leaves early is not an error worth a traceback. A connection past
    the limit waits (in the listen backlog) for a free slot for up to TIMEOUT, then is closed."""

    MAX_CONNECTIONS = 16
    TIMEOUT = 5.0

    def __init__(self, host: str, port: int, snapshot: Callable[[], dict]):
        class Handler(BaseHTTPRequestHandler):
            timeout = MetricsServer.TIMEOUT

            def do_GET(self):                # noqa: N802 - http.server's naming
                if self.path.split("?")[0] != "/metrics":
                    self.send_error(404, "only /metrics here")
                    return
                body = render_prometheus(snapshot()).encode()
                self.send_response(200)
                self.send_header("Content-Type", "text/plain; version=0.0.4; charset=utf-8")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args):    # scrapes are not news
                pass

        slots = threading.BoundedSemaphore(self.MAX_CONNECTIONS)

        class Server(ThreadingHTTPServer):
            address_family = socket.AF_INET6 if ":" in host else socket.AF_INET
            daemon_threads = True
            request_queue_size = 64

            def process_request(self, request, client_address):
                if not slots.acquire(timeout=MetricsServer.TIMEOUT):
                    self.shutdown_request(request)   # every slot held for a whole timeout: closed
                    return
                try:
                    super().process_request(request, client_address)
                except BaseException:
                    slots.release()
                    raise

            def process_request_thread(self, request, client_address):
                try:
                    super().process_request_thread(request, client_address)
                finally:
                    slots.release()

            def handle_error(self, request, client_address):
                log.debug("metrics: client %s: %s", client_address, sys.exc_info()[1])

        self.httpd = Server((host, port), Handler)
        self.address = self.httpd.server_address[:2]
        self._thread = threading.Thread(target=self.httpd.serve_forever, name="metrics", daemon=True)
        self._thread.start()

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
