"""The one place JIT options live. cache=True keeps the CLI's cold start short.

numba's on-disk cache goes to a per-user folder, never beside the package: `NUMBA_CACHE_DIR` when
set (the systemd unit sets it to its CacheDirectory), else `$XDG_CACHE_HOME/imds-flow/numba`
(`~/.cache/imds-flow/numba`). A cache next to the sources would leave files in site-packages that
pip does not own (an `__pycache__` folder that outlives an uninstall and shadows an editable
install's package data), and fails on a read-only install.
"""
from __future__ import annotations

import os
from pathlib import Path

import numba

__all__ = ["njit", "cache_dir"]


def cache_dir() -> Path:
    explicit = os.environ.get("NUMBA_CACHE_DIR")
    if explicit:
        return Path(explicit)
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "imds-flow" / "numba"


# numba reads NUMBA_CACHE_DIR once, at its own import; whoever imported it first, this is what the
# cache locator consults when a kernel is compiled or loaded.
numba.config.CACHE_DIR = str(cache_dir())


def njit(fn=None, **overrides):
    options = dict(cache=True, nogil=True, boundscheck=False, error_model="numpy")
    options.update(overrides)
    if fn is None:
        return lambda f: numba.njit(**options)(f)
    return numba.njit(**options)(fn)
