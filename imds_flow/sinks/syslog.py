"""Syslog: one RFC 5424 message per alert, its MSG in CEF, LEEF 2.0 or ECS JSON (format).

Rules: header <PRI>1 TIMESTAMP HOSTNAME imds-flow PROCID MSGID - (facility 4, security/authorization;
severity warning for a request, critical for a response, informational for a test alert; MSGID the
alert's direction, IMDS_REQUEST / IMDS_RESPONSE). udp: one datagram per alert (RFC 5426), best effort;
tcp and tls: RFC 6587 octet counting ("LEN SP MSG"), through the spool like every stream sink (RFC 5425
frames TLS the same way). The sink takes msgpack alerts (every field) and formats them itself.
"""
from __future__ import annotations

import os
import socket

import msgpack

from .. import siem
from ..formats import EcsJsonEncoder, iso_time
from .net import StreamProtocol, UdpSink

__all__ = ["SyslogFormatter", "SyslogProtocol", "SyslogUdpSink", "FACILITY", "SEVERITY"]

FACILITY = 4                                   # security/authorization messages
SEVERITY = {"request": 4, "response": 2}       # warning, critical
TEST_SEVERITY = 6                              # informational
APP_NAME = "imds-flow"


def _header_token(text: str, limit: int) -> str:
    """A header field: printable US-ASCII without spaces, at most `limit` characters, "-" if empty."""
    token = "".join(c for c in text if 33 <= ord(c) <= 126)[:limit]
    return token or "-"


class SyslogFormatter:
    """msgpack alert -> one RFC 5424 message (bytes, no framing). Built once per sink."""

    def __init__(self, fmt: str = "cef", hostname: str | None = None):
        if fmt not in ("cef", "leef", "rfc5424"):
            raise ValueError(f"unknown syslog format {fmt!r} (known: cef, leef, rfc5424)")
        self.fmt = fmt
        self.hostname = _header_token(hostname or socket.gethostname(), 255)
        self.procid = str(os.getpid())
        self._ecs = EcsJsonEncoder() if fmt == "rfc5424" else None

    def msg(self, alert: dict) -> str:
        if self.fmt == "cef":
            return siem.cef(alert, self.hostname)
        if self.fmt == "leef":
            return siem.leef(alert, self.hostname)
        return self._ecs.encode(alert).decode().rstrip("\n")

    def message(self, alert: dict) -> bytes:
        direction = alert.get("direction")
        severity = TEST_SEVERITY if alert.get("test") else SEVERITY.get(direction, 4)
        ts = alert.get("ts")
        stamp = iso_time(ts) if isinstance(ts, (int, float)) else "-"
        msgid = _header_token(f"IMDS_{str(direction).upper()}", 32)
        text = self.msg(alert).replace("\r", " ").replace("\n", " ")   # one line, whatever the receiver frames by
        return f"<{FACILITY * 8 + severity}>1 {stamp} {self.hostname} {APP_NAME} {self.procid} {msgid} - {text}".encode()

    def from_packed(self, packed: bytes) -> bytes:
        return self.message(msgpack.unpackb(packed, raw=False))


class SyslogProtocol(StreamProtocol):
    """tcp / tls: RFC 6587 octet counting; confirmed like a tcp sink (the receiver's kernel took it)."""

    kind = "syslog"

    def __init__(self, formatter: SyslogFormatter):
        self.formatter = formatter

    def record(self, alert: bytes) -> bytes:
        msg = self.formatter.from_packed(alert)
        return b"%d " % len(msg) + msg


class SyslogUdpSink(UdpSink):
    """udp: one RFC 5426 datagram per alert."""

    kind = "syslog"

    def __init__(self, name: str, host: str, port: int, formatter: SyslogFormatter):
        super().__init__(name, host, port)
        self.formatter = formatter

    def write_alerts(self, alerts: list[bytes]) -> None:
        super().write_alerts([self.formatter.from_packed(a) for a in alerts])
