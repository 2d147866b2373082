"""KeyMap: keys of three uint64 words -> a small integer, looked up for a whole batch in one kernel
call (kernels.key_lookup). Python runs only for keys not seen before; the table doubles when half
full. Used where a batch maps its datagrams to an index: exporters, template scopes."""
from __future__ import annotations

import numpy as np

from . import kernels

__all__ = ["KeyMap"]


class KeyMap:
    def __init__(self, capacity: int = 64):
        self.n = 0
        self._alloc(capacity)

    def _alloc(self, size: int) -> None:
        self.t0 = np.zeros(size, np.uint64)
        self.t1 = np.zeros(size, np.uint64)
        self.t2 = np.zeros(size, np.uint64)
        self.val = np.full(size, -1, np.int64)

    def arrays(self) -> tuple:
        return self.t0, self.t1, self.t2, self.val

    def lookup(self, k0: np.ndarray, k1: np.ndarray, k2: np.ndarray, out: np.ndarray) -> int:
        """out[i] = value of key i, or -2 where the key is unknown; returns how many are unknown."""
        return kernels.key_lookup(k0, k1, k2, *self.arrays(), out)

    def insert(self, k0: int, k1: int, k2: int, value: int) -> None:
        if 2 * (self.n + 1) > len(self.val):
            old = self.t0, self.t1, self.t2, self.val
            self._alloc(2 * len(self.val))
            kernels.key_rehash(*old, self.t0, self.t1, self.t2, self.val)
        kernels.key_insert(np.uint64(k0), np.uint64(k1), np.uint64(k2), np.int64(value),
                           self.t0, self.t1, self.t2, self.val)
        self.n += 1
