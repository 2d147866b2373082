"""Where the test corpora live: inside the checkout, never beside it.

`tests/fixtures/vendors` (NetFlow v5/v9/IPFIX packets) and `tests/fixtures/sflow` (sFlow v5
datagrams) are copies of the project's shared corpora, each with its README, MANIFEST.json and the
upstream licence texts. A missing corpus is a test failure (`require`), never a silent skip.
"""
from __future__ import annotations

from pathlib import Path

__all__ = ["FIXTURES", "VENDORS", "SFLOW", "require"]

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"
VENDORS = FIXTURES / "vendors"
SFLOW = FIXTURES / "sflow"


def require(root: Path) -> Path:
    """`root` if its MANIFEST.json is there; otherwise fail the calling test (or module) loudly."""
    if not (root / "MANIFEST.json").exists():
        import pytest
        pytest.fail(f"test corpus missing: {root}/MANIFEST.json (it is part of the repository)", pytrace=False)
    return root
