"""Stdout and append-only file sinks. Data is flushed once per batch so readers can follow the file.

Rotation (max_bytes > 0): before an alert that would take the file past max_bytes, the file is
renamed PATH.1 (PATH.1 to PATH.2, ... up to PATH.keep; the oldest goes) and a new PATH is started.
Files are cut between alerts only; one alert larger than max_bytes gets a file of its own.

A file stays readable after any interruption: a batch is written whole or not at all (a write cut
short, e.g. by a full disk, is truncated back to the last whole alert and raised); on open, a torn
tail left by a crash (found by alerts_tool.whole_end, which skips objects without decoding them) is
cut off, or, when more than TORN_MAX bytes would go, the file is renamed PATH.torn-<time> and a new
one started. reopen() opens PATH again when it now names another file (logrotate's rename + `create`).
"""
from __future__ import annotations

import logging
import os
import sys
import time
from typing import BinaryIO

__all__ = ["FileSink", "open_sink"]

log = logging.getLogger("imds_flow")
TORN_MAX = 1 << 20                            # a torn tail larger than this is kept aside, not cut


class FileSink:
    kind = "file"

    def __init__(self, stream: BinaryIO | None, owned: bool, path: str | None = None, max_bytes: int = 0,
                 keep: int = 5, name: str | None = None):
        self._f = stream                      # stdout; files are written through self._fd
        self._owned = owned
        self.path = path
        self.max_bytes = max_bytes
        self.keep = keep
        self.name = name or (path or "stdout")
        self._fd: int | None = None
        self._tear: int | None = None         # a rollback that failed: cut here before the next write
        self.size = 0
        self.sent = 0
        self.dropped = 0
        self.spooled = 0
        self.spool_bytes = 0
        self.rotations = 0
        if path:
            self._fd = _open_readable(path)
            self.size = os.fstat(self._fd).st_size

    def write(self, data: bytes) -> None:
        """Bytes as they are (no rotation check): for callers that hold no alert boundaries."""
        if self._fd is None:
            self._f.write(data)
        else:
            self._append(data)
        self.size += len(data)

    def _append(self, data: bytes) -> None:
        """All of `data` or none of it: a write cut short is rolled back, then the error raised."""
        fd = self._fd
        if self._tear is not None:
            os.ftruncate(fd, self._tear)
            self._tear = None
        start = os.fstat(fd).st_size
        view = memoryview(data)
        try:
            while view:
                view = view[os.write(fd, view):]
        except OSError:
            try:
                os.ftruncate(fd, start)
            except OSError:
                self._tear = start
            raise
        self.size = start

    def write_alerts(self, alerts: list[bytes]) -> None:
        if not self.max_bytes:
            self.write(b"".join(alerts))
            self.sent += len(alerts)
            return
        start, size = 0, self.size
        for i, a in enumerate(alerts):
            if size and size + len(a) > self.max_bytes:
                self.write(b"".join(alerts[start:i]))
                self.sent += i - start
                self._rotate()
                start, size = i, 0
            size += len(a)
        self.write(b"".join(alerts[start:]))
        self.sent += len(alerts) - start

    def write_run(self, data, alerts: int) -> bool:
        """write_alerts of `alerts` alerts packed back to back in `data` (a buffer), written as they
        are; False (nothing written) when they would take the file past max_bytes: rotation cuts
        between alerts, which write_alerts does."""
        if self.max_bytes and self.size + len(data) > self.max_bytes:
            return False
        self.write(data)
        self.sent += alerts
        return True

    def _rotate(self) -> None:
        if self.keep:
            for i in range(self.keep - 1, 0, -1):
                if os.path.exists(f"{self.path}.{i}"):
                    os.replace(f"{self.path}.{i}", f"{self.path}.{i + 1}")
            os.replace(self.path, f"{self.path}.1")
        fd = os.open(self.path, os.O_RDWR | os.O_APPEND | os.O_CREAT | os.O_TRUNC, 0o644)
        os.close(self._fd)
        self._fd, self._tear = fd, None
        self.size = 0
        self.rotations += 1

    def reopen(self) -> None:
        """Open PATH again (it was renamed by logrotate, or removed): later alerts go to the file now
        at PATH, created if missing. The old descriptor is closed only once the new one is open."""
        if self._fd is None:
            return
        try:
            now = os.stat(self.path)
            held = os.fstat(self._fd)
            if (now.st_dev, now.st_ino) == (held.st_dev, held.st_ino):
                return                        # still the file at PATH (a reload, not a rotation)
        except FileNotFoundError:
            pass
        fd = _open_readable(self.path)
        os.close(self._fd)
        self._fd, self._tear = fd, None
        self.size = os.fstat(fd).st_size

    def direct(self) -> tuple[int, int, int] | None:
        """(descriptor, max_bytes, size) for compiled code that appends whole alerts itself
        (polls.py: a batch's alerts in one write, a write cut short handed back to cut()); None
        for stdout, or while a rollback is pending."""
        if self._fd is None or self._tear is not None:
            return None
        return self._fd, self.max_bytes, self.size

    def wrote(self, alerts: int, size: int) -> None:
        """Compiled code appended `alerts` alerts through direct(); the file is now `size` bytes."""
        self.size = size
        self.sent += alerts

    def cut(self, wrote: int) -> None:
        """Compiled code's write stopped after `wrote` bytes: those are cut off (whole alerts only)."""
        try:
            os.ftruncate(self._fd, os.fstat(self._fd).st_size - wrote)
        except OSError:
            self._tear = self.size

    def flush(self) -> None:
        if self._fd is None:
            self._f.flush()

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
            return
        self._f.flush()
        if self._owned:
            self._f.close()


def _open_readable(path: str) -> int:
    """An append descriptor of `path` whose content ends in a whole alert (see the module rules)."""
    from ..alerts_tool import whole_end
    fd = os.open(path, os.O_RDWR | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        size = os.fstat(fd).st_size
        if not size:
            return fd
        with open(path, "rb") as f:
            good, size = whole_end(f)
        if good >= size:
            return fd
        if size - good <= TORN_MAX:
            os.ftruncate(fd, good)
            log.warning("%s: ends in %d unreadable byte(s) (a torn write) after byte %d; cut off", path,
                        size - good, good)
            return fd
        aside = f"{path}.torn-{int(time.time())}"
        os.rename(path, aside)
        log.warning("%s: unreadable from byte %d on (%d bytes); kept as %s, starting a new file", path, good,
                    size - good, aside)
        os.close(fd)
        fd = os.open(path, os.O_RDWR | os.O_APPEND | os.O_CREAT, 0o644)
        return fd
    except BaseException:
        os.close(fd)
        raise


def open_sink(target: str, max_bytes: int = 0, keep: int = 5) -> FileSink:
    """'-' is stdout; anything else a file opened for appending (created if missing)."""
    if target == "-":
        return FileSink(sys.stdout.buffer, owned=False)
    return FileSink(None, owned=True, path=target, max_bytes=max_bytes, keep=keep)
