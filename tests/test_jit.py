"""jit: where the cache goes (NUMBA_CACHE_DIR, else XDG_CACHE_HOME, in a folder per version of the
sources), the options every kernel is compiled with, a kernel that would allocate failing to compile, and a
step compiled into its caller."""
import math
import re
from pathlib import Path

import numba
import numpy as np
import pytest

from imds_flow import jit


def _divide(a, b):
    return a / b


def _total(a):
    s = 0.0
    for x in a:
        s += x
    return s


def _allocates(n):
    return np.zeros(n).sum()


_divide_step = jit.step(_divide)


def _quarter_plus_one(a, b):
    return _divide_step(a, b) + 1.0


def test_cache_dir_follows_the_environment(monkeypatch, tmp_path):
    monkeypatch.delenv("NUMBA_CACHE_DIR", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    here = jit.cache_dir()
    assert here.parent == tmp_path / "xdg" / "imds-flow" / "numba" and re.fullmatch(r"src-[0-9a-f]{16}", here.name)
    monkeypatch.setenv("NUMBA_CACHE_DIR", str(tmp_path / "explicit"))
    assert jit.cache_dir() == tmp_path / "explicit" / here.name      # same sources, same folder name
    monkeypatch.delenv("NUMBA_CACHE_DIR")
    monkeypatch.delenv("XDG_CACHE_HOME")
    assert jit.cache_dir().parent == Path.home() / ".cache" / "imds-flow" / "numba"


def test_numba_uses_the_folder_of_these_sources():
    assert Path(numba.config.CACHE_DIR).name == jit.cache_dir().name


def test_kernel_options():
    f = jit.njit(_divide)
    assert f.targetoptions["nogil"] and not f.targetoptions["boundscheck"] and f.targetoptions["error_model"] == "numpy"
    assert math.isinf(f(1.0, 0.0))                      # numpy's error model: no ZeroDivisionError
    assert jit.njit(boundscheck=True)(_total)(np.arange(4.0)) == 6.0


def test_a_kernel_runs_without_reference_counting_and_cannot_allocate():
    assert jit.kernel(_total)(np.arange(5.0)) == 10.0
    with pytest.raises(numba.core.errors.NumbaError):
        jit.kernel(_allocates)(3)


def test_a_step_is_compiled_into_its_caller_with_the_kernel_options():
    f = _divide_step
    assert f.targetoptions["forceinline"] and f.targetoptions["nogil"] and f.targetoptions["error_model"] == "numpy"
    caller = jit.kernel(_quarter_plus_one)
    assert caller(1.0, 4.0) == 1.25 and math.isinf(caller(1.0, 0.0))
