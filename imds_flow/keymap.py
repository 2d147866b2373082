"""KeyMap: keys of three uint64 words -> a small integer, looked up for a whole batch in one kernel
call (kernels.key_lookup). Python runs only for keys not seen before; the table doubles when half
full. Used where a batch maps its datagrams to an index: exporters, template scopes, templates,
template sets."""
from __future__ import annotations

import numpy as np

from . import kernels

__all__ = ["KeyMap"]


class KeyMap:
    def __init__(self, capacity: int = 64):
        self.n = 0
        self._new: list[tuple[int, int, int, int]] = []   # inserted, not yet in the table
        self._alloc(capacity)

    def _alloc(self, size: int) -> None:
        # One row of four words per slot (key words, then the value), handed to the kernels as four
        # strided columns: a probe reads one cache line, not four, and key_lookup's prefetch of a
        # slot brings its whole row. With thousands of exporters the tables (exporters, scopes,
        # templates, template sets) are out of the caches when a batch comes: key_lookup was 14-15 %
        # of the collector's CPU with 5000 exporters (2 % with 4); rows and prefetch, ~6 %.
        words = np.zeros(4 * size + 8, np.uint64)   # rows from a 64-byte boundary: none spans two lines
        at = (-words.ctypes.data % 64) // 8
        rows = words[at:at + 4 * size].reshape(size, 4)
        self.t0, self.t1, self.t2 = rows[:, 0], rows[:, 1], rows[:, 2]
        self.val = rows.view(np.int64)[:, 3]
        self.val[:] = -1

    def arrays(self) -> tuple:
        """The table as the kernels read it, with every key inserted so far."""
        if self._new:
            self._store()
        return self.t0, self.t1, self.t2, self.val

    def lookup(self, k0: np.ndarray, k1: np.ndarray, k2: np.ndarray, out: np.ndarray) -> int:
        """out[i] = value of key i, or -2 where the key is unknown; returns how many are unknown."""
        return kernels.key_lookup(k0, k1, k2, *self.arrays(), out)

    def insert(self, k0: int, k1: int, k2: int, value: int) -> None:
        """Stored in the table when it is next read (arrays, lookup), with every key inserted before
        it in one kernel call: a batch from thousands of new exporters inserts their rows, scopes,
        templates and template sets, and a call per key (~5 us of dispatch) was a third of what
        meeting an exporter cost."""
        self._new.append((k0, k1, k2, value))

    def insert_many(self, k0, k1, k2, values) -> None:
        """insert() of each (k0[i], k1[i], k2[i]) -> values[i], in order."""
        self._new.extend(zip(k0, k1, k2, values))

    def _store(self) -> None:
        new, self._new = self._new, []
        self.n += len(new)
        size = len(self.val)
        while 2 * self.n > size:
            size *= 2
        if size > len(self.val):
            old = self.t0, self.t1, self.t2, self.val
            self._alloc(size)
            kernels.key_rehash(*old, self.t0, self.t1, self.t2, self.val)
        keys = np.array([k[:3] for k in new], np.uint64).reshape(-1, 3)
        kernels.key_insert_many(keys[:, 0].copy(), keys[:, 1].copy(), keys[:, 2].copy(),
                                np.fromiter((k[3] for k in new), np.int64, len(new)), self.t0, self.t1, self.t2, self.val)
