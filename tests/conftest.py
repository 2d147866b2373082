import os
from pathlib import Path

import pytest

from tests.support import corpus

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="session")
def vendors() -> Path:
    return corpus.require(corpus.VENDORS)


@pytest.fixture(scope="session", autouse=True)
def _private_state(tmp_path_factory):
    """templates.state_file = "auto" resolves under XDG_STATE_HOME: never the developer's home."""
    os.environ["XDG_STATE_HOME"] = str(tmp_path_factory.mktemp("state"))
    os.environ.pop("STATE_DIRECTORY", None)


@pytest.fixture(scope="session", autouse=True)
def _warm_numba_cache():
    """Compile every kernel once, in this process, before any test starts a collector process:
    they then load the on-disk cache (numba cache=True) instead of each compiling for a minute."""
    from imds_flow import config
    from imds_flow.app import Pipeline, _NullSink

    Pipeline(config.load(None), _NullSink()).warm_up()
