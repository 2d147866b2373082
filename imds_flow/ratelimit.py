"""One rate limit for log messages that can repeat (per batch, per retry): at most one per `interval`
seconds for each key; what it holds back is counted, and reset() lets the next one out at once."""
from __future__ import annotations

import logging
import math
import time
from typing import Callable, Hashable

__all__ = ["RateLimit"]

log = logging.getLogger("imds_flow")


class RateLimit:
    def __init__(self, interval: float, clock: Callable[[], float] = time.monotonic):
        self.interval = interval
        self.clock = clock
        self._last: dict = {}                 # key -> when its last message went out
        self._held: dict = {}                 # key -> messages held back since (log() only)

    def due(self, key: Hashable = None, now: float | None = None) -> bool:
        """Whether a message for `key` may go out at `now` (default: the clock); if so, its interval
        starts again."""
        now = self.clock() if now is None else now
        if now - self._last.get(key, -math.inf) < self.interval:
            return False
        self._last[key] = now
        return True

    def reset(self, key: Hashable = None) -> None:
        """The trouble ended: the next message for `key` goes out at once."""
        self._last.pop(key, None)
        self._held.pop(key, None)

    def log(self, level: int, msg: str, *args, key: Hashable = None, now: float | None = None) -> None:
        """log.log(level, msg, *args) when due, saying how many similar messages were held back since the
        last; otherwise holds it back (counted)."""
        if not self.due(key, now):
            self._held[key] = self._held.get(key, 0) + 1
            return
        held = self._held.pop(key, 0)
        log.log(level, msg + (f" ({held} similar message(s) held back)" if held else ""), *args)
