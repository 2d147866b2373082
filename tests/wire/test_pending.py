"""wire/pending.py: data sets that came before their template wait here, bounded. On the four data
sets of a real Citrix NetScaler IPFIX packet: what is taken back is byte for byte what was added, with
its columns; per scope at most max_sets wait (the newest stay); per exporter and in all at most so many
bytes (the oldest leave, a set larger than a bound never waits); sets older than max_seconds expire.
Whatever leaves unread comes back as its exporter, for the caller to count."""
from __future__ import annotations

import struct

import numpy as np
import pytest

from imds_flow.wire import pending
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


class Oracle:
    """The rules of the module docstring, set by set in Python: a list of (columns, bytes) in arrival
    order."""

    def __init__(self, max_bytes_per_exporter: int, max_bytes: int):
        self.per_exporter, self.in_all = max_bytes_per_exporter, max_bytes
        self.sets: list[tuple[dict, bytes]] = []

    def add(self, rows: dict, src: np.ndarray, max_sets: int) -> list[int]:
        for i in range(len(rows["key"])):
            o, n = int(rows["off"][i]), int(rows["len"][i])
            self.sets.append(({k: v[i].item() for k, v in rows.items() if k != "off"}, src[o:o + n].tobytes()))
        drop = [False] * len(self.sets)
        newest_first = list(range(len(self.sets)))[::-1]
        seen: dict[int, int] = {}
        for i in newest_first:                           # per scope, the newest max_sets stay
            s = self.sets[i][0]["scope"]
            seen[s] = seen.get(s, 0) + 1
            drop[i] = seen[s] > max_sets
        held: dict[int, int] = {}
        for i in newest_first:                           # per exporter, newest first, within its bytes
            e = self.sets[i][0]["exp"]
            held[e] = held.get(e, 0) + (0 if drop[i] else self.sets[i][0]["len"])
            drop[i] = drop[i] or held[e] > self.per_exporter
        total = 0
        for i in newest_first:                           # in all, newest first
            total += 0 if drop[i] else self.sets[i][0]["len"]
            drop[i] = drop[i] or total > self.in_all
        return self._remove(drop)

    def expire(self, now: float, max_seconds: float) -> list[int]:
        return self._remove([now - c["ts"] > max_seconds for c, _ in self.sets])

    def take(self, mask) -> list[tuple[dict, bytes]]:
        taken = [item for item, m in zip(self.sets, mask) if m]
        self._remove(mask)
        return taken

    def _remove(self, mask) -> list[int]:
        gone = [c["exp"] for (c, _), m in zip(self.sets, mask) if m]
        self.sets = [item for item, m in zip(self.sets, mask) if not m]
        return gone


def held(p: Pending, buf=None, cols=None) -> list[tuple[dict, bytes]]:
    cols = p.cols if cols is None else cols
    buf = p.buf if buf is None else buf
    names = [k for k in cols if k != "off"]
    return [({k: cols[k][i].item() for k in names}, buf[int(cols["off"][i]):int(cols["off"][i]) + int(cols["len"][i])]
             .tobytes()) for i in range(len(cols["key"]))]


@pytest.mark.parametrize("slack", [0, 4096])
def test_random_adds_takes_and_expiries_match_the_oracle(monkeypatch, slack):
    """Any sequence of operations: the same sets wait, byte for byte, the same leave, and what a take
    returned is still intact in its buffer after later adds; the buffer stays within twice max_bytes
    and a batch, and its bytes are copied seldom (amortised), not at every call."""
    monkeypatch.setattr(pending, "SLACK", slack)
    copied = [0]
    gather = pending._gather

    def counted(src, offs, lens, dst, dst_offs):
        copied[0] += int(lens.sum())
        gather(src, offs, lens, dst, dst_offs)
    monkeypatch.setattr(pending, "_gather", counted)
    rng = np.random.default_rng(7 + slack)
    src = rng.integers(0, 256, 1 << 16, dtype=np.uint8)
    p, o = Pending(8000, 20000), Oracle(8000, 20000)
    added, taken_before = 0, []
    for step in range(1500):
        op = rng.random()
        now = T0 + step
        if op < 0.6:
            k = int(rng.integers(1, 5))
            rows = {"key": rng.integers(0, 6, k).astype(np.int64), "scope": rng.integers(0, 12, k).astype(np.int64),
                    "exp": rng.integers(0, 3, k).astype(np.int32), "ver": np.full(k, 10, np.uint8),
                    "ts": np.full(k, now), "uptime": rng.integers(0, 1 << 32, k).astype(np.uint32),
                    "secs": np.full(k, now + 0.5), "off": rng.integers(0, 60000, k).astype(np.int64),
                    "len": rng.integers(1, 1500, k).astype(np.int64)}
            max_sets = int(rng.integers(4, 16))
            added += int(rows["len"].sum())
            assert p.add(rows, src, max_sets).tolist() == o.add(rows, src, max_sets)
        elif op < 0.7 and len(p):
            mask = rng.random(len(p)) < 0.2
            cols, buf = p.take(mask)
            got = held(p, buf, cols)
            assert got == o.take(mask)
            taken_before.append((buf, cols, got))
        elif op < 0.75:
            max_seconds = float(rng.integers(50, 400))
            assert p.expire(now, max_seconds).tolist() == o.expire(now, max_seconds)
        assert held(p) == o.sets
        assert len(p.buf) <= 2 * (20000 + 4 * 1500)       # twice max_bytes and a batch
    for buf, cols, got in taken_before:                  # never overwritten by what came after
        assert held(p, buf, cols) == got
    assert copied[0] <= 3 * added                        # was the whole buffer at each add and removal
