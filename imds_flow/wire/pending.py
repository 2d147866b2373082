"""Data sets that arrived before their template, kept (bounded) until it arrives.

Rules: a data set whose (scope, template id) has no plan is copied here with what its datagram's
header said. At most `max_sets` wait per scope, `max_bytes_per_exporter` bytes per exporter and
`max_bytes` in all (the oldest leave first; a set larger than a byte bound never waits), and none
longer than `max_seconds`; whatever leaves unread is counted by the caller, never dropped silently. Columns
and one byte buffer, no Python object per set: every operation is per batch.
"""
from __future__ import annotations

import numpy as np

from ..jit import njit

__all__ = ["Pending", "COLUMNS"]

COLUMNS = (("key", np.int64), ("scope", np.int64), ("exp", np.int32), ("ver", np.uint8), ("ts", np.float64),
           ("uptime", np.uint32), ("secs", np.float64), ("off", np.int64), ("len", np.int64))


@njit
def _gather(src, offs, lens, dst, dst_offs):
    for i in range(offs.shape[0]):
        o = offs[i]
        d = dst_offs[i]
        for j in range(lens[i]):
            dst[d + j] = src[o + j]


def _starts(lens: np.ndarray) -> np.ndarray:
    starts = np.zeros(len(lens), np.int64)
    if len(lens) > 1:
        np.cumsum(lens[:-1], out=starts[1:])
    return starts


class Pending:
    def __init__(self, max_bytes_per_exporter: int = 1 << 20, max_bytes: int = 16 << 20):
        self.max_bytes_per_exporter = max_bytes_per_exporter
        self.max_bytes = max_bytes
        self.cols = {name: np.zeros(0, dtype) for name, dtype in COLUMNS}
        self.buf = np.zeros(1, np.uint8)
        self.held: set[int] = set()          # keys whose template came but whose sets did not fit a batch

    def __len__(self) -> int:
        return len(self.cols["key"])

    def add(self, rows: dict[str, np.ndarray], src: np.ndarray, max_sets: int) -> np.ndarray:
        """Append sets (rows["off"] / rows["len"] index `src`); returns exporters of sets evicted."""
        if not len(rows["key"]):
            return np.zeros(0, np.int32)
        lens = rows["len"].astype(np.int64)
        offs = rows["off"].astype(np.int64)
        base = len(self.buf)
        new = np.zeros(base + int(lens.sum()), np.uint8)
        new[:base] = self.buf
        dst = base + _starts(lens)
        _gather(src, offs, lens, new, dst)
        self.buf = new
        rows = dict(rows, off=dst, len=lens)
        for name, dtype in COLUMNS:
            self.cols[name] = np.concatenate([self.cols[name], rows[name].astype(dtype)])
        return self._bound(max_sets)

    def _bound(self, max_sets: int) -> np.ndarray:
        # rows are in arrival order: within a group, the newest are kept
        scope = self.cols["scope"]
        order = np.argsort(scope, kind="stable")
        s = scope[order]
        last = np.searchsorted(s, s, side="right")
        from_end = last - 1 - np.arange(len(s))      # 0 for the newest set of its scope
        drop = np.zeros(len(s), np.bool_)
        drop[order] = from_end >= max_sets
        lens = np.where(drop, 0, self.cols["len"])
        exp = self.cols["exp"]
        order = np.argsort(exp, kind="stable")[::-1]  # newest first within each exporter
        e = exp[order]
        newer = np.cumsum(lens[order])                # bytes of this set and every newer one ...
        first = np.searchsorted(-e, -e, side="left")  # ... of its exporter (e is descending)
        newer -= np.concatenate([[0], newer])[first]
        drop[order[newer > self.max_bytes_per_exporter]] = True
        lens = np.where(drop, 0, lens)
        drop |= np.cumsum(lens[::-1])[::-1] > self.max_bytes
        return self._remove(drop)

    def quiet(self, now: float, max_seconds: float) -> bool:
        """A batch at `now` that defines nothing would release and expire nothing here (no set held
        back from an earlier release, none older than max_seconds)."""
        return not len(self) or (not self.held and now - float(self.cols["ts"].min()) <= max_seconds)

    def expire(self, now: float, max_seconds: float) -> np.ndarray:
        """Remove sets older than max_seconds; returns their exporters."""
        if not len(self):
            return np.zeros(0, np.int32)
        return self._remove(now - self.cols["ts"] > max_seconds)

    def take(self, mask: np.ndarray) -> tuple[dict[str, np.ndarray], np.ndarray]:
        """Remove the sets in `mask`; returns their columns and the buffer their offsets index."""
        buf = self.buf
        taken = {name: col[mask] for name, col in self.cols.items()}
        self._remove(mask)
        return taken, buf

    def _remove(self, mask: np.ndarray) -> np.ndarray:
        if not mask.any():
            return np.zeros(0, np.int32)
        gone = self.cols["exp"][mask]
        keep = ~mask
        cols = {name: col[keep] for name, col in self.cols.items()}
        lens = cols["len"]
        buf = np.zeros(max(1, int(lens.sum())), np.uint8)
        dst = _starts(lens)
        _gather(self.buf, cols["off"], lens, buf, dst)
        cols["off"] = dst
        self.cols, self.buf = cols, buf
        return gone
