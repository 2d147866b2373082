"""Benchmarks: run from the repository root, e.g. `python -m bench.flowbench --help`."""
from __future__ import annotations

import json
from datetime import datetime, timezone
from pathlib import Path


def write_result(name: str, given: Path | None, fields: dict) -> Path:
    """An in-process bench's JSON ({"date": now in UTC, **fields}) at `given`, or at
    bench/results/NAME-<date>.json; says where on stdout."""
    stamp = datetime.now(timezone.utc)
    path = given or Path("bench/results") / f"{name}-{stamp:%Y%m%d-%H%M%S}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"date": stamp.isoformat(timespec="seconds"), **fields}, indent=1))
    print(f"wrote {path}")
    return path
