"""Alert sinks behind one small protocol: write(bytes), flush(), close()."""
from __future__ import annotations

from typing import Protocol

from .stream import FileSink, open_sink

__all__ = ["Sink", "FileSink", "open_sink"]


class Sink(Protocol):
    def write(self, data: bytes) -> None: ...
    def flush(self) -> None: ...
    def close(self) -> None: ...
