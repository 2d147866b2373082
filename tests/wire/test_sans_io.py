"""wire/ is sans-IO (STYLE 1): no module of it imports sockets, event loops, clocks or threads, nor the
stages that do IO (receive, serve, app, workers, sinks, metrics). Read from the sources, so a module
added to wire/ is held to it from its first line."""
from __future__ import annotations

import ast
from pathlib import Path

import imds_flow.wire

WIRE = Path(imds_flow.wire.__file__).parent
IO = {"asyncio", "socket", "selectors", "select", "ssl", "time", "threading", "multiprocessing", "uvloop",
      "imds_flow.receive", "imds_flow.serve", "imds_flow.app", "imds_flow.workers", "imds_flow.sinks",
      "imds_flow.metrics", "imds_flow.sockets", "imds_flow.cli"}


def imports(path: Path) -> set[str]:
    """Every module a file imports (relative imports resolved), at any depth of the file."""
    package = ["imds_flow", "wire"]                # every file of wire/, __init__ too
    out = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            out |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = ".".join(package[: len(package) - node.level + 1]) if node.level else ""
            module = ".".join(p for p in (base, node.module) if p)
            out |= {module} | {f"{module}.{a.name}" for a in node.names}
    return out


def test_wire_imports_no_io():
    files = sorted(WIRE.glob("*.py"))
    assert len(files) > 5
    for path in files:
        bad = {m for m in imports(path) if any(m == io or m.startswith(io + ".") for io in IO)}
        assert not bad, f"{path.name} imports {sorted(bad)}"


def test_the_check_sees_relative_imports():
    found = imports(WIRE / "__init__.py")
    assert "imds_flow.datagrams" in found and "imds_flow.wire.errors" in found
