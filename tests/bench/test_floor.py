"""bench/floor.py, imds-flow's receive loop with nothing behind it: the bench takes it as a collector
of NetFlow v5 and sFlow only (the sFlow bench's use of it: tests/bench/test_sflow_bench.py; what it
shares with bare: tests/bench/test_reads_only.py)."""
from __future__ import annotations


def test_floor_is_a_collector_of_v5_and_sflow_only():
    from tests.bench.test_flowbench import bench
    r = bench("--export", "ipfix", "--compare", "floor")
    assert r.returncode == 2 and "--compare floor" in r.stderr and r.stderr.count("\n") == 1
