import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
VENDORS = Path(os.environ.get("IMDS_FLOW_VENDORS", ROOT.parent / "shared" / "fixtures" / "vendors"))


@pytest.fixture(scope="session")
def vendors() -> Path:
    if not (VENDORS / "MANIFEST.json").exists():
        pytest.fail(f"vendor corpus not found at {VENDORS} (set IMDS_FLOW_VENDORS)")
    return VENDORS
