"""Stdout and append-only file sinks. Data is flushed once per batch so readers can follow the file.

Rotation (max_bytes > 0): before an alert that would take the file past max_bytes, the file is
renamed PATH.1 (PATH.1 to PATH.2, ... up to PATH.keep; the oldest goes) and a new PATH is started.
Files are cut between alerts only; one alert larger than max_bytes gets a file of its own.
"""
from __future__ import annotations

import os
import sys
from typing import BinaryIO

__all__ = ["FileSink", "open_sink"]


class FileSink:
    kind = "file"

    def __init__(self, stream: BinaryIO, owned: bool, path: str | None = None, max_bytes: int = 0, keep: int = 5,
                 name: str | None = None):
        self._f = stream
        self._owned = owned
        self.path = path
        self.max_bytes = max_bytes
        self.keep = keep
        self.name = name or (path or "stdout")
        self.size = os.fstat(stream.fileno()).st_size if path else 0
        self.sent = 0
        self.dropped = 0
        self.spooled = 0
        self.spool_bytes = 0
        self.rotations = 0

    def write(self, data: bytes) -> None:
        """Bytes as they are (no rotation check): for callers that hold no alert boundaries."""
        self._f.write(data)
        self.size += len(data)

    def write_alerts(self, alerts: list[bytes]) -> None:
        if not self.max_bytes:
            self.write(b"".join(alerts))
            self.sent += len(alerts)
            return
        start, size = 0, self.size
        for i, a in enumerate(alerts):
            if size and size + len(a) > self.max_bytes:
                self.write(b"".join(alerts[start:i]))
                self._rotate()
                start, size = i, 0
            size += len(a)
        self.write(b"".join(alerts[start:]))
        self.sent += len(alerts)

    def _rotate(self) -> None:
        self._f.close()
        if self.keep:
            for i in range(self.keep - 1, 0, -1):
                if os.path.exists(f"{self.path}.{i}"):
                    os.replace(f"{self.path}.{i}", f"{self.path}.{i + 1}")
            os.replace(self.path, f"{self.path}.1")
        self._f = open(self.path, "wb")
        self.size = 0
        self.rotations += 1

    def flush(self) -> None:
        self._f.flush()

    def close(self) -> None:
        self._f.flush()
        if self._owned:
            self._f.close()


def open_sink(target: str, max_bytes: int = 0, keep: int = 5) -> FileSink:
    """'-' is stdout; anything else a file opened for appending (created if missing)."""
    if target == "-":
        return FileSink(sys.stdout.buffer, owned=False)
    return FileSink(open(target, "ab"), owned=True, path=target, max_bytes=max_bytes, keep=keep)
