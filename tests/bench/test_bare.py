"""bench/bare.py: a blocking recvmmsg loop with nothing behind it counts every v5 record sent to it
over loopback, stops at SIGTERM while it waits, and the bench takes it as a collector of NetFlow v5
only."""
from __future__ import annotations

import socket
import time

from bench import compare
from bench.bare import Bare
from bench.synth import flow_datagrams


def test_bare_receives_every_record(tmp_path):
    ex = flow_datagrams(5, 200, 30)
    bare = Bare(tmp_path, 4 << 20)
    try:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            for row in ex.data:
                s.sendto(row.tobytes(), ("127.0.0.1", bare.port))
        assert bare.cpu_seconds() >= 0
    finally:
        got = bare.stop()
    assert got["decoded_records"] + 30 * got["kernel_drop_datagrams"] == 200 * 30
    assert got["kernel_drop_datagrams"] <= 2


def test_bare_stops_while_it_waits(tmp_path):
    """SIGTERM with nothing sent: the wait in the kernel ends and it says its (empty) count."""
    bare = Bare(tmp_path, 4 << 20)
    time.sleep(0.3)
    began = time.monotonic()
    got = bare.stop()
    assert got == {"decoded_records": 0, "kernel_drop_datagrams": 0}
    assert time.monotonic() - began < 5


def test_bare_is_a_collector_of_v5_only():
    from tests.bench.test_flowbench import bench
    for export in ("ipfix", "sflow"):
        r = bench("--export", export, "--compare", "bare")
        assert r.returncode == 2 and "--compare bare" in r.stderr and r.stderr.count("\n") == 1


def test_bare_needs_nothing_installed():
    said = []
    assert compare.installed(["bare", "floor", "imds-flow"], said.append) == ["bare", "floor", "imds-flow"]
    assert said == []
