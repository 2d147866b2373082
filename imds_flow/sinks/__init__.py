"""Alert sinks behind one small protocol: write_alerts(list of encoded alerts), flush(), close(), and
optionally reopen().

A sink gets the alerts of a batch as a list, one bytes object per alert, so that it can cut files,
datagrams and messages between alerts. Sinks: stdout and file (stream.py), UDP and spooled TCP /
Fluent forward (net.py, spool.py, fluent.py), syslog (syslog.py: CEF, LEEF, RFC 5424 over udp, tcp,
tls), NATS JetStream (nats.py); TLS for the stream sinks (tls.py); Sinks fans one batch out to several.
Sinks counts sent / dropped / spooled / errors per sink for the metrics (a sink's own counters
sent, dropped, spooled, spool_bytes and errors are used where it has them). A file sink also takes
alerts packed back to back in one buffer (write_run), so that thousands leaving at once (a tick's
closing fold windows) need no bytes object each.
"""
from __future__ import annotations

import logging
import re
import time
from pathlib import Path
from typing import Protocol

import msgpack

from ..ratelimit import RateLimit
from .net import ForwardProtocol, SpooledSink, StreamProtocol, UdpSink
from .spool import Spool, SpoolError
from .stream import FileSink, open_sink
from .tls import client_context

__all__ = ["Sink", "Sinks", "FileSink", "UdpSink", "SpooledSink", "Spool", "SpoolError", "open_sink",
           "open_sinks", "spool_dir_for"]

log = logging.getLogger("imds_flow")


class Sink(Protocol):
    def write_alerts(self, alerts: list[bytes]) -> None: ...
    def flush(self) -> None: ...
    def close(self) -> None: ...


class _Health:
    """One sink's standing in the fan-out: what it took and lost, and the warnings of an outage
    (one when it starts, then at most one per interval while it lasts, one when it ends)."""

    def __init__(self, sink, interval: float, clock):
        self.sink, self.clock = sink, clock
        self.accepted = 0                     # alerts write_alerts took without raising
        self.dropped = 0                      # alerts of batches it raised on
        self.errors = 0                       # calls that raised
        self.failing_since: float | None = None
        self._limit = RateLimit(interval, clock)   # "still failing" warnings
        self._outage_dropped = 0

    def label(self) -> str:
        path = getattr(self.sink, "path", None)
        name = getattr(self.sink, "name", type(self.sink).__name__)
        return f"{name} ({path})" if path and path != name else name

    def ok(self, n: int) -> None:
        self.accepted += n
        if self.failing_since is not None:
            log.warning("sink %s: recovered after %.1f s; %d alert(s) dropped meanwhile", self.label(),
                        self.clock() - self.failing_since, self._outage_dropped)
            self.failing_since = None

    def failed(self, n: int, error: BaseException) -> None:
        self.errors += 1
        self.dropped += n
        now = self.clock()
        reason = getattr(error, "strerror", None) or error
        if self.failing_since is None:
            self.failing_since, self._outage_dropped = now, n
            self._limit.reset()
            self._limit.due(now=now)              # the next "still failing" is an interval from now
            log.warning("sink %s: %s; its alerts are dropped (and counted) until it recovers, the other sinks "
                        "get theirs", self.label(), reason)
            return
        self._outage_dropped += n
        if self._limit.due(now=now):
            log.warning("sink %s: still failing (%s) for %.0f s; %d alert(s) dropped so far", self.label(), reason,
                        now - self.failing_since, self._outage_dropped)


class Sinks:
    """Several sinks as one. Alerts come in `input_format`; a sink that wants the other format gets
    them re-encoded (from msgpack, which holds every field).

    Each sink fails alone: one that raises gets the batch counted as dropped and a warning naming it
    (see _Health); the others get every alert exactly once, and nothing is raised to the caller.
    Any object with write_alerts / flush / close gets this accounting; reopen() is optional."""

    def __init__(self, sinks: list, formats: list[str], input_format: str, log_interval: float = 10.0,
                 clock=time.monotonic):
        from ..formats import encoder
        self.sinks = sinks
        self.formats = formats
        self.input_format = input_format
        self._encoders = {f: encoder(f) for f in set(formats) if f != input_format}
        self.health = [_Health(s, log_interval, clock) for s in sinks]

    def write_alerts(self, alerts: list[bytes]) -> None:
        converted = {f: [enc.encode(msgpack.unpackb(a, raw=False)) for a in alerts]
                     for f, enc in self._encoders.items()} if alerts else {}
        for sink, fmt, health in zip(self.sinks, self.formats, self.health):
            batch = converted.get(fmt, alerts)
            try:
                sink.write_alerts(batch)
            except Exception as e:            # noqa: BLE001 - a sink must not stop the collector
                health.failed(len(batch), e)
            else:
                health.ok(len(batch))

    def write_run(self, data, alerts: int) -> bool:
        """`alerts` alerts packed back to back in `data` (a buffer) to the only sink at once, where
        it takes them so (FileSink.write_run) and none is re-encoded. True when taken: written, or
        lost and counted as write_alerts counts them; False when the caller must hand them to
        write_alerts as bytes each (then nothing was written)."""
        write_run = getattr(self.sinks[0], "write_run", None) if len(self.sinks) == 1 and not self._encoders else None
        if write_run is None:
            return False
        health = self.health[0]
        try:
            if not write_run(data, alerts):
                return False
        except Exception as e:                # noqa: BLE001 - as write_alerts
            health.failed(alerts, e)
        else:
            health.ok(alerts)
        return True

    def direct(self) -> tuple[int, int, int] | None:
        """FileSink.direct of the only sink, when it takes alerts as they come and is not failing:
        then compiled code may append them itself (polls.py), and tells wrote() or cut()."""
        if len(self.sinks) != 1 or self._encoders or self.health[0].failing_since is not None:
            return None
        direct = getattr(self.sinks[0], "direct", None)
        return direct() if direct is not None else None

    def wrote(self, alerts: int, size: int) -> None:
        self.sinks[0].wrote(alerts, size)
        self.health[0].ok(alerts)

    def cut(self, wrote: int) -> None:
        self.sinks[0].cut(wrote)

    def flush(self) -> None:
        for sink, health in zip(self.sinks, self.health):
            try:
                sink.flush()
            except Exception as e:            # noqa: BLE001
                health.failed(0, e)

    def reopen(self) -> None:
        """Open the files again (SIGHUP after logrotate renamed them); other sinks are untouched."""
        for sink, health in zip(self.sinks, self.health):
            reopen = getattr(sink, "reopen", None)
            if reopen is None:
                continue
            try:
                reopen()
            except Exception as e:            # noqa: BLE001 - keeps writing where it did
                health.errors += 1
                log.warning("sink %s: cannot reopen: %s; still writing to the file it had open", health.label(),
                            getattr(e, "strerror", None) or e)
            else:
                log.info("sink %s: reopened", health.label())

    def close(self) -> None:
        for sink, health in zip(self.sinks, self.health):
            try:
                sink.close()
            except Exception as e:            # noqa: BLE001
                log.error("sink %s: %s", health.label(), e)

    def stats(self) -> dict:
        """Totals and per-sink counters, for the metrics endpoint."""
        per = [{"name": getattr(s, "name", type(s).__name__), "type": getattr(s, "kind", type(s).__name__),
                "sent": getattr(s, "sent", h.accepted), "dropped": getattr(s, "dropped", 0) + h.dropped,
                "spooled": getattr(s, "spooled", 0), "spool_bytes": getattr(s, "spool_bytes", 0),
                "errors": getattr(s, "errors", 0) + h.errors, "failing": int(h.failing_since is not None)}
               for s, h in zip(self.sinks, self.health)]
        return {"spool_bytes": sum(p["spool_bytes"] for p in per),
                "spool_dropped": sum(s.dropped for s in self.sinks if isinstance(s, SpooledSink)),
                "sinks": per}


def spool_dir_for(spec, state_dir: Path | None = None) -> Path:
    """spool_dir = "auto": <state directory>/spool/<type>-<host>-<port> (the state directory is the one
    templates.state_file = "auto" uses)."""
    if spec.spool_dir != "auto":
        return Path(spec.spool_dir)
    if state_dir is None:
        from ..config import default_state_file
        state_dir = default_state_file().parent
    return state_dir / "spool" / re.sub(r"[^A-Za-z0-9_.-]", "_", f"{spec.type}-{spec.host}-{spec.port}")


def _open_one(spec, state_dir: Path | None):
    if spec.type in ("stdout", "file"):
        sink = open_sink("-" if spec.type == "stdout" else spec.path, spec.max_bytes, spec.keep)
        sink.name = spec.name
        return sink
    if spec.type == "udp":
        return UdpSink(spec.name, spec.host, spec.port)
    if spec.type == "syslog":
        from .syslog import SyslogFormatter, SyslogProtocol, SyslogUdpSink
        formatter = SyslogFormatter(spec.format)
        if spec.transport == "udp":
            return SyslogUdpSink(spec.name, spec.host, spec.port, formatter)
        protocol = SyslogProtocol(formatter)
    elif spec.type == "nats":
        from .nats import NatsProtocol
        protocol = NatsProtocol(spec.subject, spec.jetstream, f"imds-flow {spec.name}",
                                client_context(spec) if spec.tls else None)
    else:
        protocol = StreamProtocol() if spec.type == "tcp" else \
            ForwardProtocol(spec.tag, spec.format, spec.require_ack, spec.event_time, spec.shared_key,
                            spec.self_hostname)
    tls = client_context(spec) if getattr(spec, "tls", False) else None
    spool = Spool(str(spool_dir_for(spec, state_dir)), spec.spool_max_bytes, name=spec.name)
    return SpooledSink(spec.name, spec.host, spec.port, spool, protocol, spec.timeout_seconds, spec.drain_seconds,
                       tls=tls)


def _input_format(spec) -> str:
    """The alert encoding a sink takes: syslog formats each msgpack alert itself."""
    return "msgpack" if spec.type == "syslog" else spec.format


def open_sinks(specs, alerts: str | None = None, alerts_format: str = "msgpack",
               state_dir: Path | None = None) -> Sinks:
    """The configured [[sinks]] plus `alerts` (--alerts: a file or - for stdout) in `alerts_format`;
    stdout alone when there are neither. The caller encodes alerts in the returned input_format."""
    from ..config import SinkSpec
    specs = list(specs)
    if alerts is not None or not specs:
        target = "-" if alerts is None else alerts
        specs.append(SinkSpec("stdout" if target == "-" else "file", name="stdout" if target == "-" else target,
                              format=alerts_format, path="" if target == "-" else target))
    opened = []
    try:
        for spec in specs:
            try:
                opened.append(_open_one(spec, state_dir))
            except OSError as e:
                raise OSError(e.errno, f"{spec.name}: {e.strerror or e}") from None
    except BaseException:
        for sink in opened:
            sink.close()
        raise
    formats = [_input_format(s) for s in specs]
    one = formats[0] if len(set(formats)) == 1 and formats[0] != "table" else "msgpack"   # table: one header
    return Sinks(opened, formats, one)
