"""The one place JIT options live. cache=True keeps the CLI's cold start short.

numba's on-disk cache goes to a per-user folder, never beside the package: `NUMBA_CACHE_DIR` when
set (the systemd unit sets it to its CacheDirectory), else `$XDG_CACHE_HOME/imds-flow/numba`
(`~/.cache/imds-flow/numba`), in a subfolder per version of the sources (see cache_dir). A cache
next to the sources would leave files in site-packages that pip does not own (an `__pycache__` folder that outlives an uninstall and shadows an editable
install's package data), and fails on a read-only install.
"""
from __future__ import annotations

import hashlib
import os
from pathlib import Path

import numba

__all__ = ["njit", "kernel", "step", "cache_dir"]


def cache_dir() -> Path:
    """The folder for this version of the kernels: a subfolder named by a hash of the package's
    sources. numba checks a cached kernel against its own file only, and kernels here call functions
    from other files that are compiled into them (the packet kernel into the sFlow and IPFIX
    decoders): after an upgrade or an edit a stale kernel would load silently. Keyed by every source, a change
    compiles afresh and leaves the old folder behind (`rm -r` the parent to clear them all)."""
    explicit = os.environ.get("NUMBA_CACHE_DIR")
    if explicit:
        root = Path(explicit)
    else:
        root = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "imds-flow" / "numba"
    return root / _sources_digest()


def _sources_digest() -> str:
    package = Path(__file__).resolve().parent
    h = hashlib.sha256()
    for path in sorted(package.rglob("*.py")):
        h.update(str(path.relative_to(package)).encode() + b"\0" + path.read_bytes())
    return "src-" + h.hexdigest()[:16]


# numba reads NUMBA_CACHE_DIR once, at its own import; whoever imported it first, this is what the
# cache locator consults when a kernel is compiled or loaded.
numba.config.CACHE_DIR = str(cache_dir())


def njit(fn=None, **overrides):
    options = dict(cache=True, nogil=True, boundscheck=False, error_model="numpy")
    options.update(overrides)
    if fn is None:
        return lambda f: numba.njit(**options)(f)
    return numba.njit(**options)(fn)


def kernel(fn):
    """A hot kernel that allocates nothing: compiled without reference counting (numba's NRT).

    Arrays are borrowed from the caller for the length of the call. With NRT, every array that
    crosses a call inside the kernel (to a helper, a tuple unpacked, a field view) costs an atomic
    increment and decrement: measured, they were most of the v9 / IPFIX decoder's time (1.3 vs
    12 M records/s in process). A kernel that tries to allocate fails to compile: scratch arrays
    come from the caller."""
    return njit(fn, _nrt=False)


def step(fn):
    """A helper of a hot kernel, compiled into each caller (LLVM's alwaysinline, numba's
    `forceinline`): a call that stays a call pushes every array argument field by field (the
    packet kernel's call took ~40 pushes per packet) and returns its results through memory.
    This is not numba's inline="always", which inlines numba IR and types the body again at every
    call site (it blew the first start's compile time up); LLVM inlining left the sFlow kernel's
    compile time as it was. Its callees inherit the setting."""
    return njit(fn, forceinline=True)
