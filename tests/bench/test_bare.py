"""bench/bare.py, a blocking recvmmsg loop with nothing behind it: the bench takes it as a collector
of NetFlow v5 only (what it shares with the floor: tests/bench/test_reads_only.py)."""
from __future__ import annotations


def test_bare_is_a_collector_of_v5_only():
    from tests.bench.test_flowbench import bench
    for export in ("ipfix", "sflow"):
        r = bench("--export", export, "--compare", "bare")
        assert r.returncode == 2 and "--compare bare" in r.stderr and r.stderr.count("\n") == 1
