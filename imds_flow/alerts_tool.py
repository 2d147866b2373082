"""Reading alert files: msgpack streams or ECS JSON lines, whole or followed as they grow; printing them as
JSON lines or a table, or summing them up.

Rules: the input format is told by its first byte ('{' is ECS JSON lines, anything else msgpack). A reader
only ever hands out complete alerts: a map or line cut short at the end of the file waits for the rest when
following, and is reported (not raised) when the file is read once. A file that shrinks was rotated or
truncated: reading starts again from its beginning.
"""
from __future__ import annotations

import json
import os
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import BinaryIO, Callable, Iterator

import msgpack

from .formats import TRANSPORTS, from_ecs, iso_time

__all__ = ["AlertFormatError", "read_alerts", "readable_end", "follow_path", "Summary", "summarize", "json_line",
           "TABLE_COLUMNS",
           "table_header", "table_row"]

CHUNK = 1 << 16


class AlertFormatError(ValueError):
    """The input is neither a msgpack alert stream nor ECS JSON lines (from byte `offset` on)."""

    def __init__(self, message: str, offset: int = 0):
        super().__init__(message)
        self.offset = offset


class _Msgpack:
    def __init__(self, base: int = 0):
        self._u = msgpack.Unpacker(raw=False, strict_map_key=False)
        self.fed = 0
        self.base = base                      # file offset of the first byte fed
        self.good = 0                         # bytes fed that hold whole alerts

    def feed(self, data: bytes) -> Iterator[dict]:
        self._u.feed(data)
        self.fed += len(data)
        try:
            for item in self._u:
                if not isinstance(item, dict):
                    raise AlertFormatError(f"not a msgpack alert stream from byte {self.base + self.good} "
                                           f"(found a {type(item).__name__})", self.base + self.good)
                self.good = self._u.tell()
                yield item
        except (msgpack.ExtraData, msgpack.FormatError, msgpack.StackError, ValueError) as e:
            if isinstance(e, AlertFormatError):
                raise
            raise AlertFormatError(f"not a msgpack alert stream from byte {self.base + self.good} ({e})",
                                   self.base + self.good) from None

    @property
    def pending(self) -> int:
        return self.fed - self.good


class _JsonLines:
    def __init__(self, base: int = 0):
        self._buf = b""
        self.fed = 0
        self.base = base
        self.good = 0

    def feed(self, data: bytes) -> Iterator[dict]:
        self._buf += data
        self.fed += len(data)
        *lines, self._buf = self._buf.split(b"\n")
        for line in lines:
            if line.strip():
                try:
                    doc = json.loads(line)
                except ValueError as e:
                    raise AlertFormatError(f"not an ECS JSON line at byte {self.base + self.good} ({e})",
                                           self.base + self.good) from None
                if not isinstance(doc, dict):
                    raise AlertFormatError(f"not an ECS JSON line at byte {self.base + self.good}", self.base + self.good)
                self.good += len(line) + 1
                yield from_ecs(doc) if "@timestamp" in doc else doc
            else:
                self.good += len(line) + 1

    @property
    def pending(self) -> int:
        return self.fed - self.good


def _decoder_for(data: bytes, base: int = 0):
    """ECS JSON lines when the stream starts with "{", msgpack maps otherwise; None while it has
    shown only white space (the format is not known yet)."""
    first = data.lstrip()[:1]
    if not first:
        return None
    return _JsonLines(base) if first == b"{" else _Msgpack(base)


def read_alerts(f: BinaryIO, follow: bool = False, poll: float = 0.2,
                sleep: Callable[[float], None] = time.sleep, warn: Callable[[str], None] | None = None
                ) -> Iterator[dict]:
    """Every complete alert in `f`; with `follow`, keep waiting for more until the caller stops."""
    decoder = None
    pos = 0
    while True:
        data = f.read(CHUNK) if not follow else _read_available(f)
        if data:
            decoder = decoder or _decoder_for(data, pos)
            pos += len(data)
            if decoder is not None:
                yield from decoder.feed(data)
            continue
        if not follow:
            if decoder is not None and decoder.pending and warn:
                warn(f"ends inside an alert: unreadable from byte {decoder.base + decoder.good}, "
                     f"{decoder.pending} byte(s) left (a torn write, or still being written)")
            return
        if _shrunk(f, pos):
            f.seek(0)
            pos, decoder = 0, None
        sleep(poll)


def readable_end(f: BinaryIO) -> tuple[int, int]:
    """(bytes from the start that hold whole alerts, bytes in all): where `f` stops being readable."""
    decoder, pos = None, 0
    try:
        while data := f.read(CHUNK):
            decoder = decoder or _decoder_for(data, pos)
            pos += len(data)
            if decoder is not None:
                for _ in decoder.feed(data):
                    pass
    except AlertFormatError:
        pos += len(f.read())
    return (decoder.base + decoder.good if decoder is not None else pos), pos


def follow_path(path: str, poll: float = 0.2, sleep: Callable[[float], None] = time.sleep,
                note: Callable[[str], None] | None = None) -> Iterator[dict]:
    """Follow `path` by name, like tail -F: wait for it to exist; when it is moved away (the file sink's
    rotation) or replaced, read the old file to its end, then the new one from its beginning; a file
    that shrinks in place is read again from its beginning."""
    f, decoder, pos, waiting = None, None, 0, False
    try:
        while True:
            if f is None:
                try:
                    f = open(path, "rb")
                except FileNotFoundError:
                    if note and not waiting:
                        note("does not exist (yet); waiting for it")
                    waiting = True
                    sleep(poll)
                    continue
                if note and waiting:
                    note("appeared; following it")
                decoder, pos, waiting = None, 0, False
            data = _read_available(f)
            if data:
                decoder = decoder or _decoder_for(data)
                pos += len(data)
                if decoder is not None:
                    yield from decoder.feed(data)
                continue
            if _replaced(f, path):            # read what was written before the switch, then the new file
                while True:
                    data = _read_available(f)
                    if not data:
                        break
                    decoder = decoder or _decoder_for(data)
                    if decoder is not None:
                        yield from decoder.feed(data)
                f.close()
                f = None
                if note:
                    note("was rotated or replaced; following the new file")
                continue
            if _shrunk(f, pos):
                f.seek(0)
                pos, decoder = 0, None
            sleep(poll)
    finally:
        if f is not None:
            f.close()


def _replaced(f: BinaryIO, path: str) -> bool:
    """`path` names another file than the one open (or none): it was renamed, deleted or replaced."""
    try:
        now = os.stat(path)
    except FileNotFoundError:
        return True
    mine = os.fstat(f.fileno())
    return (now.st_ino, now.st_dev) != (mine.st_ino, mine.st_dev)


def whole_end(f: BinaryIO) -> tuple[int, int]:
    """(where the last whole record ends, bytes in all), cheaply, for a writer about to append: JSON
    lines end at the last newline; a msgpack stream is skipped through object by object, not decoded.
    readable_end() is the reader's full check."""
    size = f.seek(0, os.SEEK_END)
    f.seek(0)
    head = f.read(CHUNK)
    if head.lstrip()[:1] == b"{":
        pos = size
        while pos > 0:
            start = max(0, pos - CHUNK)
            f.seek(start)
            cut = f.read(pos - start).rfind(b"\n")
            if cut >= 0:
                return start + cut + 1, size
            pos = start
        return 0, size
    u = msgpack.Unpacker(raw=False, max_buffer_size=0)
    f.seek(0)
    good = 0
    while data := f.read(1 << 20):
        u.feed(data)
        try:
            while True:
                u.skip()
                good = u.tell()
        except msgpack.OutOfData:
            continue
        except (msgpack.FormatError, msgpack.StackError, ValueError):
            break
    return good, size


def _read_available(f: BinaryIO) -> bytes:
    read1 = getattr(f, "read1", None)
    return read1(CHUNK) if read1 else f.read(CHUNK)


def _shrunk(f: BinaryIO, pos: int) -> bool:
    try:
        return os.fstat(f.fileno()).st_size < pos
    except (OSError, ValueError, AttributeError):
        return False


# --- output -------------------------------------------------------------------------------------

def json_line(alert: dict) -> str:
    return json.dumps(alert, separators=(",", ":"), default=str)


def _addr(ip, port) -> str:
    ip = "-" if ip is None else str(ip)
    ip = f"[{ip}]" if ":" in ip else ip
    return ip if port is None else f"{ip}:{port}"


def _when(t) -> str:
    return "-" if t is None else iso_time(t)


# (header, width, value) per column; a width of 0 is the last, unpadded column.
TABLE_COLUMNS = (
    ("TIME", 24, lambda a: _when(a.get("ts"))),
    ("EXPORTER", 16, lambda a: str(a.get("exporter", "-"))),
    ("SOURCE", 30, lambda a: _addr(a.get("src"), a.get("sport"))),
    ("DESTINATION", 30, lambda a: _addr(a.get("dst"), a.get("dport"))),
    ("PROTO", 9, lambda a: TRANSPORTS.get(a.get("proto"), str(a.get("proto")))),
    ("VLAN", 5, lambda a: "-" if a.get("vlan") is None else str(a["vlan"])),
    ("DIR", 9, lambda a: str(a.get("direction", "-"))),
    ("COUNT", 6, lambda a: str(a.get("count", 1))),
    ("ENDPOINT", 0, lambda a: str(a.get("endpoint", "-"))),
)


def _cells(values) -> str:
    return " ".join(v if w == 0 else v.ljust(w) for (_, w, _), v in zip(TABLE_COLUMNS, values)).rstrip()


def table_header() -> str:
    return _cells(h for h, _, _ in TABLE_COLUMNS)


def table_row(alert: dict) -> str:
    return _cells(get(alert) for _, _, get in TABLE_COLUMNS)


# --- summary ------------------------------------------------------------------------------------

@dataclass
class Summary:
    alerts: int = 0
    records: int = 0                     # the sum of `count`: matching flow records
    first_seen: float | None = None
    last_seen: float | None = None
    local_hosts: Counter = field(default_factory=Counter)
    endpoints: Counter = field(default_factory=Counter)
    exporters: Counter = field(default_factory=Counter)

    def add(self, a: dict) -> None:
        n = a.get("count") or 1
        self.alerts += 1
        self.records += n
        first = a.get("first_seen") if a.get("first_seen") is not None else a.get("ts")
        last = a.get("last_seen") if a.get("last_seen") is not None else a.get("ts")
        if first is not None:
            self.first_seen = first if self.first_seen is None else min(self.first_seen, first)
        if last is not None:
            self.last_seen = last if self.last_seen is None else max(self.last_seen, last)
        local = a.get("dst") if a.get("direction") == "response" else a.get("src")
        self.local_hosts[str(local)] += n
        self.endpoints[str(a.get("endpoint"))] += n
        self.exporters[str(a.get("exporter"))] += n

    def as_dict(self, top: int) -> dict:
        return {
            "alerts": self.alerts, "records": self.records,
            "first_seen": None if self.first_seen is None else iso_time(self.first_seen),
            "last_seen": None if self.last_seen is None else iso_time(self.last_seen),
            "local_hosts": dict(self.local_hosts.most_common(top)),
            "endpoints": dict(self.endpoints.most_common(top)),
            "exporters": dict(self.exporters.most_common(top)),
        }

    def text(self, top: int) -> str:
        d = self.as_dict(top)
        lines = [f"alerts {d['alerts']}, flow records {d['records']}",
                 f"first seen {d['first_seen'] or '-'}, last seen {d['last_seen'] or '-'}"]
        for title, key in (("local hosts", "local_hosts"), ("endpoints", "endpoints"), ("exporters", "exporters")):
            counter = getattr(self, key)
            lines.append(f"top {title} (records, of {len(counter)}):")
            lines.extend(f"  {n:>10}  {name}" for name, n in counter.most_common(top))
        return "\n".join(lines)


def summarize(alerts) -> Summary:
    s = Summary()
    for a in alerts:
        s.add(a)
    return s
