"""The one place JIT options live. cache=True keeps the CLI's cold start short."""
from __future__ import annotations

import numba

__all__ = ["njit"]


def njit(fn=None, **overrides):
    options = dict(cache=True, nogil=True, boundscheck=False, error_model="numpy")
    options.update(overrides)
    if fn is None:
        return lambda f: numba.njit(**options)(f)
    return numba.njit(**options)(fn)
