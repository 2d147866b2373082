"""bench/floor.py: imds-flow's receive loop with nothing behind it counts every v5 record sent to
it over loopback, and the bench takes it as a collector of NetFlow v5 and sFlow only (the sFlow
bench's use of it: tests/bench/test_sflow_bench.py)."""
from __future__ import annotations

import socket

from bench.floor import Floor
from bench.synth import flow_datagrams


def test_the_floor_receives_every_record(tmp_path):
    ex = flow_datagrams(5, 200, 30)
    floor = Floor(tmp_path, 4 << 20)
    try:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            for row in ex.data:
                s.sendto(row.tobytes(), ("127.0.0.1", floor.port))
        assert floor.cpu_seconds() >= 0
    finally:
        got = floor.stop()
    assert got["decoded_records"] + 30 * got["kernel_drop_datagrams"] == 200 * 30
    assert got["kernel_drop_datagrams"] <= 2


def test_floor_is_a_collector_of_v5_and_sflow_only():
    from tests.bench.test_flowbench import bench
    r = bench("--export", "ipfix", "--compare", "floor")
    assert r.returncode == 2 and "--compare floor" in r.stderr and r.stderr.count("\n") == 1
