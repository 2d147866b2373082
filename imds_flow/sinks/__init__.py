"""Alert sinks behind one small protocol: write_alerts(list of encoded alerts), flush(), close().

A sink gets the alerts of a batch as a list, one bytes object per alert, so that it can cut files,
datagrams and messages between alerts. Sinks: stdout and file (stream.py), UDP and spooled TCP /
Fluent forward (net.py, spool.py, fluent.py), syslog (syslog.py: CEF, LEEF, RFC 5424 over udp, tcp,
tls), NATS JetStream (nats.py); TLS for the stream sinks (tls.py); Sinks fans one batch out to several.
Every sink has the counters sent, dropped, spooled and spool_bytes as attributes.
"""
from __future__ import annotations

import logging
import re
from pathlib import Path
from typing import Protocol

import msgpack

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


class Sinks:
    """Several sinks as one. Alerts come in `input_format`; a sink that wants the other format gets
    them re-encoded (from msgpack, which holds every field)."""

    def __init__(self, sinks: list, formats: list[str], input_format: str):
        from ..formats import encoder
        self.sinks = sinks
        self.formats = formats
        self.input_format = input_format
        self._encoders = {f: encoder(f) for f in set(formats) if f != input_format}

    def write_alerts(self, alerts: list[bytes]) -> None:
        converted = {f: [enc.encode(msgpack.unpackb(a, raw=False)) for a in alerts]
                     for f, enc in self._encoders.items()} if alerts else {}
        first_error = None
        for sink, fmt in zip(self.sinks, self.formats):
            try:
                sink.write_alerts(converted.get(fmt, alerts))
            except OSError as e:              # one failing sink does not keep alerts from the others
                first_error = first_error or e
        if first_error is not None:
            raise first_error

    def flush(self) -> None:
        for sink in self.sinks:
            sink.flush()

    def close(self) -> None:
        for sink in self.sinks:
            try:
                sink.close()
            except OSError as e:
                log.error("%s: %s", sink.name, e)

    def stats(self) -> dict:
        """Totals and per-sink counters, for the metrics endpoint."""
        per = [{"name": s.name, "type": s.kind, "sent": s.sent, "dropped": s.dropped, "spooled": s.spooled,
                "spool_bytes": s.spool_bytes} for s in self.sinks]
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
