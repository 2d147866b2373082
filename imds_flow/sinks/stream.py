"""Stdout and append-only file sinks. Data is flushed once per batch so readers can follow the file."""
from __future__ import annotations

import sys
from typing import BinaryIO

__all__ = ["FileSink", "open_sink"]


class FileSink:
    def __init__(self, stream: BinaryIO, owned: bool):
        self._f = stream
        self._owned = owned

    def write(self, data: bytes) -> None:
        self._f.write(data)

    def flush(self) -> None:
        self._f.flush()

    def close(self) -> None:
        self._f.flush()
        if self._owned:
            self._f.close()


def open_sink(target: str) -> FileSink:
    """'-' is stdout; anything else a file opened for appending (created if missing)."""
    if target == "-":
        return FileSink(sys.stdout.buffer, owned=False)
    return FileSink(open(target, "ab"), owned=True)
