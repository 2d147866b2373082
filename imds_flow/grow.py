"""Arrays that grow by doubling, so that n appends cost O(n) copies: one rule for every table and
scratch buffer that grows (exporters, detection scratch, the column batch)."""
from __future__ import annotations

import numpy as np

__all__ = ["grown_size", "grow"]


def grown_size(have: int, need: int, limit: int = 1 << 62) -> int:
    """The size to grow to from `have` rows: twice as many (at most `limit`), or `need` if more."""
    return max(need, min(2 * have, limit))


def grow(arr: np.ndarray, need: int, *, keep: bool = True, fill=0) -> np.ndarray:
    """`arr` itself when it has `need` rows; otherwise a new array of grown_size(len(arr), need) rows,
    same dtype and row shape: the old rows first and `fill` after (keep), or uninitialised
    (keep=False: scratch whose contents do not outlive a call)."""
    if need <= len(arr):
        return arr
    shape = (grown_size(len(arr), need),) + arr.shape[1:]
    if not keep:
        return np.empty(shape, arr.dtype)
    # zeros: calloc'd, so the rows past the old ones stay untouched until used (a doubled table
    # is a quarter unused on average, and new memory is what growing costs most)
    new = np.zeros(shape, arr.dtype) if fill == 0 else np.full(shape, fill, arr.dtype)
    new[: len(arr)] = arr
    return new
