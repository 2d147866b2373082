"""Tests wait on conditions, never on clocks: poll until the condition holds or a generous deadline."""
from __future__ import annotations

import time
from typing import Callable, TypeVar

__all__ = ["wait_for"]

T = TypeVar("T")


def wait_for(condition: Callable[[], T], timeout: float = 60.0, step: float = 0.02) -> T:
    """The condition's first truthy value, or its last value once `timeout` seconds have passed."""
    deadline = time.monotonic() + timeout
    while True:
        got = condition()
        if got or time.monotonic() > deadline:
            return got
        time.sleep(step)
