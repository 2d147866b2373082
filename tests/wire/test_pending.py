"""wire/pending.py: data sets that came before their template wait here, bounded. On the four data
sets of a real Citrix NetScaler IPFIX packet: what is taken back is byte for byte what was added, with
its columns; per scope at most max_sets wait (the newest stay); per exporter and in all at most so many
bytes (the oldest leave, a set larger than a bound never waits); sets older than max_seconds expire.
Whatever leaves unread comes back as its exporter, for the caller to count."""
from __future__ import annotations

import struct

import numpy as np

from imds_flow.wire.pending import Pending
from tests.support import mutate

PACKET = mutate.vendor_payloads()["logstash-codec-netflow/ipfix_test_netscaler_data.bin"][0]
SRC = np.frombuffer(PACKET, np.uint8)
T0 = 1_700_000_000.0


def data_sets() -> list[tuple[int, int, int]]:
    """(set id, offset, length) of every data set of the packet."""
    out = []
    for loc in mutate.fields_of(PACKET):
        if loc.kind == "set_id":
            set_id, length = struct.unpack_from(">HH", PACKET, loc.off)
            out.append((set_id, loc.off, length))
    return out


SETS = data_sets()


def rows(picks, scope=0, exp=0, ts=T0) -> dict[str, np.ndarray]:
    """Columns of the sets SETS[i] for i in picks, all from one scope and exporter."""
    n = len(picks)
    return {"key": np.array([(scope << 16) | SETS[i][0] for i in picks], np.int64),
            "scope": np.full(n, scope, np.int64), "exp": np.full(n, exp, np.int32),
            "ver": np.full(n, 10, np.uint8), "ts": np.full(n, ts), "uptime": np.zeros(n, np.uint32),
            "secs": np.full(n, ts), "off": np.array([SETS[i][1] for i in picks], np.int64),
            "len": np.array([SETS[i][2] for i in picks], np.int64)}


def waiting(p: Pending) -> list[tuple[int, bytes]]:
    """(key, bytes) of every set held, in arrival order."""
    return [(k, p.buf[o:o + n].tobytes()) for k, o, n in
            zip(p.cols["key"].tolist(), p.cols["off"].tolist(), p.cols["len"].tolist())]


def raw(i: int, scope: int = 0) -> tuple[int, bytes]:
    set_id, off, length = SETS[i]
    return (scope << 16) | set_id, PACKET[off:off + length]


def test_the_packet_has_four_data_sets():
    assert [(s, n) for s, _, n in SETS] == [(258, 160), (257, 126), (280, 108), (258, 999)]


def test_sets_come_back_byte_for_byte_with_their_columns():
    p = Pending()
    assert len(p.add(rows([0, 1], scope=1, exp=3, ts=T0), SRC, max_sets=8)) == 0
    assert len(p.add(rows([2, 3], scope=2, exp=4, ts=T0 + 1), SRC, max_sets=8)) == 0
    assert waiting(p) == [raw(0, 1), raw(1, 1), raw(2, 2), raw(3, 2)]
    taken, buf = p.take(p.cols["scope"] == 2)
    assert taken["exp"].tolist() == [4, 4] and taken["ts"].tolist() == [T0 + 1] * 2
    assert [buf[o:o + n].tobytes() for o, n in zip(taken["off"], taken["len"])] == [raw(2)[1], raw(3)[1]]
    assert waiting(p) == [raw(0, 1), raw(1, 1)]                  # what stays is intact after the cut
    p.take(np.ones(len(p), np.bool_))
    assert len(p) == 0


def test_at_most_max_sets_wait_per_scope_the_newest_stay():
    p = Pending()
    assert p.add(rows([0, 1, 2], scope=1, exp=1), SRC, max_sets=2).tolist() == [1]
    assert waiting(p) == [raw(1, 1), raw(2, 1)]
    gone = p.add(rows([3], scope=1, exp=1), SRC, max_sets=2)
    assert gone.tolist() == [1] and waiting(p) == [raw(2, 1), raw(3, 1)]
    assert len(p.add(rows([0], scope=5, exp=1), SRC, max_sets=2)) == 0     # another scope: its own count


def test_byte_bounds_per_exporter_and_in_all_drop_the_oldest():
    size = [n for _, _, n in SETS]
    p = Pending(max_bytes_per_exporter=size[0] + size[1], max_bytes=1 << 20)
    assert len(p.add(rows([0, 1], exp=7), SRC, max_sets=99)) == 0
    gone = p.add(rows([2], exp=7), SRC, max_sets=99)               # exporter 7 is over: its oldest leaves
    assert gone.tolist() == [7] and waiting(p) == [raw(1), raw(2)]
    assert p.add(rows([3], exp=8), SRC, max_sets=99).tolist() == [8]     # larger than the bound: never waits
    assert len(p.add(rows([0], exp=8), SRC, max_sets=99)) == 0 and len(p) == 3   # other exporters unaffected

    p = Pending(max_bytes_per_exporter=1 << 20, max_bytes=size[0] + size[1] + size[2])
    p.add(rows([0, 1], exp=1), SRC, max_sets=99)
    assert p.add(rows([2, 0], exp=2), SRC, max_sets=99).tolist() == [1]  # in all: the oldest anywhere
    assert waiting(p) == [raw(1), raw(2), raw(0)]


def test_sets_older_than_max_seconds_expire():
    p = Pending()
    p.add(rows([0, 1], exp=1, ts=T0), SRC, max_sets=99)
    p.add(rows([2], exp=2, ts=T0 + 30), SRC, max_sets=99)
    assert len(p.expire(T0 + 60, max_seconds=60)) == 0             # exactly max_seconds old: still waits
    assert p.expire(T0 + 61, max_seconds=60).tolist() == [1, 1]
    assert waiting(p) == [raw(2)]
    assert p.expire(T0 + 91, max_seconds=60).tolist() == [2] and len(p) == 0
