"""bench/floor.py and bench/bare.py, the bench's receive-only loops (flowbench.ReadsOnly): each
counts every v5 record sent to it over loopback, stops at SIGTERM while it waits, and needs nothing
installed."""
from __future__ import annotations

import socket
import time

import pytest

from bench import compare
from bench.flowbench import ReadsOnly
from bench.synth import flow_datagrams

LOOPS = ["floor", "bare"]


@pytest.mark.parametrize("name", LOOPS)
def test_it_receives_every_record(tmp_path, name):
    ex = flow_datagrams(5, 200, 30)
    loop = ReadsOnly(name, tmp_path, 4 << 20)
    try:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            for row in ex.data:
                s.sendto(row.tobytes(), ("127.0.0.1", loop.port))
        assert loop.cpu_seconds() >= 0
    finally:
        got = loop.stop()
    assert got["decoded_records"] + 30 * got["kernel_drop_datagrams"] == 200 * 30
    assert got["kernel_drop_datagrams"] <= 2


@pytest.mark.parametrize("name", LOOPS)
def test_it_stops_while_it_waits(tmp_path, name):
    """SIGTERM with nothing sent: the wait ends and it says its (empty) count."""
    loop = ReadsOnly(name, tmp_path, 4 << 20)
    time.sleep(0.3)
    began = time.monotonic()
    got = loop.stop()
    assert got == {"decoded_records": 0, "kernel_drop_datagrams": 0}
    assert time.monotonic() - began < 5


def test_they_need_nothing_installed():
    said = []
    assert compare.installed([*LOOPS, "imds-flow"], said.append) == [*LOOPS, "imds-flow"]
    assert said == []
