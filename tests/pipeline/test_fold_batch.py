"""The per-batch fast paths against their slow references: compaction keeps every row that can
alert (ipaddress oracle), Folder.add_hits emits exactly what Folder.add(hit_alerts(...)) emits, and
a Pipeline that compacts writes the same alerts and counters as one that keeps every row."""
import math

import msgpack
import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from imds_flow import alerts, app, config, kernels
from imds_flow.alertpack import Packer
from imds_flow.alerts import Folder, hit_alerts
from imds_flow.datagrams import DatagramBatch
from imds_flow.detect import Detector, Hits
from imds_flow.flows import HTTP, FlowBatch
from imds_flow.kernels import compact

from bench.synth import flow_datagrams
from tests.support.oracle import detect_one
from tests.test_kernels import build_config, config as config_st, fill, record


class _Exporters:
    address = [f"192.0.2.{i}" for i in range(8)]
    port = [2055 + i for i in range(8)]


@settings(max_examples=300, deadline=None)
@given(cfg=config_st, records=st.lists(record, max_size=40), start=st.integers(0, 3))
def test_compact_keeps_exactly_the_records_that_may_alert(cfg, records, start):
    conf = build_config(cfg)
    det = Detector(conf, url_patterns=("/latest/meta-data", "/latest/api/token"))
    fb = fill(records)
    fb.cols.sport[: fb.n] = np.arange(fb.n)                # a row's identity after it moved
    start = min(start, fb.n)
    end = compact(fb.rows, start, fb.n, det.endpoints)
    nets = [e.network for e in conf.endpoints]
    want = [i for i, r in enumerate(records) if i < start or detect_one(r, nets, [], set()) is not None]
    assert fb.cols.sport[:end].tolist() == want


def _batch_of_hits(rows):
    """A FlowBatch from (key, ts, bytes, first, last, sport, vlan) rows; every row a hit."""
    fb = FlowBatch(max(1, len(rows)))
    fb.reset(len(rows))
    c = fb.cols
    for i, (key, ts, b, first, last, sport, vlan) in enumerate(rows):
        c.exporter[i] = key % 3
        c.version[i] = 5
        c.ts[i] = ts
        c.src_hi[i], c.src_lo[i] = 0, 0xFFFF0A000001 + key
        c.dst_hi[i], c.dst_lo[i] = 0, 0xFFFFA9FEA9FE
        c.sport[i], c.dport[i], c.proto[i] = sport, 80, 6
        c.bytes[i], c.packets[i] = b, 1 + b % 7
        c.first_seen[i], c.last_seen[i] = first, last
        c.sampling_rate[i] = (0, 1, 100)[key % 3]
        c.vlan_src[i], c.vlan_dst[i], c.vlan_dot1q[i], c.vlan_cust[i] = vlan, -1, -1, -1
        c.vlan_more[i] = 0
        c.url[i], c.row_flags[i] = -1, 0
    fb.n = len(rows)
    return fb


row = st.tuples(st.integers(0, 4), st.floats(0, 3), st.integers(0, 10_000),
                st.one_of(st.just(math.nan), st.floats(0, 100)), st.one_of(st.just(math.nan), st.floats(0, 100)),
                st.integers(1024, 1030), st.sampled_from([-1, 0, 10]))


@settings(max_examples=300, deadline=None)
@given(batches=st.lists(st.lists(row, max_size=30), max_size=4), window=st.sampled_from([0.0, 0.5, 2.0, 60.0]),
       gaps=st.lists(st.floats(0, 3), min_size=4, max_size=4), ticks=st.lists(st.booleans(), min_size=4, max_size=4),
       max_keys=st.sampled_from([1 << 62, 1, 3]), slack=st.sampled_from([4096, 0]), packed=st.booleans(),
       spare=st.sampled_from([0, 1, 2, 64]))
def test_add_hits_is_add_of_hit_alerts(batches, window, gaps, ticks, max_keys, slack, packed, spare):
    """Same alerts, same order of emission per key, same pending state: batch by batch; also past
    limits.max_fold_keys, with the fold key table rebuilt at every tick (slack 0), with the
    alerts that leave at once packed by alertpack (the msgpack of every alert is the same), and
    with pending alerts made in the kernel from `spare` rows set aside (0: none, all in Python;
    1 or 2: the kernel runs out and Python holds the rest)."""
    fast, slow = [], []
    enc = alerts.Encoder()
    pack = dict(packer=Packer(), emit_packed=lambda alert, ts: fast.append(msgpack.unpackb(alert))) if packed else {}
    names = ("imds", "other")
    saved_spare, alerts._SPARE = alerts._SPARE, max(spare, 1)
    try:
        f_fast, f_slow = Folder(window, fast.append, max_keys, **pack), Folder(window, slow.append, max_keys)
    finally:
        alerts._SPARE = saved_spare
    if spare:
        f_fast.describe = lambda: (names, _Exporters, (), ())
    t = 0.0
    saved, alerts._KEY_SLACK = alerts._KEY_SLACK, slack
    try:
        for rows, gap, tick in zip(batches, gaps, ticks):
            t += gap
            rows = sorted(((k, t + dt, *rest) for k, dt, *rest in rows), key=lambda r: r[1]) if tick else \
                [(k, t + dt, *rest) for k, dt, *rest in rows]      # arrival order is not always time order
            fb = _batch_of_hits(rows)
            m = len(rows)
            hits = Hits(np.arange(m, dtype=np.int64), np.array([k % 2 for k, *_ in rows], np.int32),
                        np.zeros(m, np.uint8), 0)
            f_fast.add_hits(fb, hits, names, _Exporters)
            f_slow.add(hit_alerts(fb, hits, names, _Exporters))
            assert f_fast.pending == f_slow.pending and f_fast.over_limit == f_slow.over_limit
            if tick:
                f_fast.tick(t + 1.0)
                f_slow.tick(t + 1.0)
    finally:
        alerts._KEY_SLACK = saved
    f_fast.close()
    f_slow.close()
    key = lambda a: (a["src"], a["exporter"], a["endpoint"], a["ts"], a["count"])  # noqa: E731
    assert sorted(fast, key=key) == sorted(slow, key=key)
    assert sorted(map(enc.encode, fast)) == sorted(map(enc.encode, slow))
    assert sum(a["count"] for a in fast) == sum(len(b) for b in batches)


def test_add_hits_finds_its_keys_after_the_key_table_grew():
    """Thousands of new keys in one batch grow the fold key table (from 64 slots) several times; the
    next batches' hits must still find and merge into their pending alerts. The table ends past
    kernels._CACHED_SLOTS: fold_groups asks for its reads first (_ask_for_keys) there."""
    fast, slow = [], []
    f_fast, f_slow = Folder(60.0, fast.append), Folder(60.0, slow.append)
    names = ("imds", "other")
    for b, keys in enumerate((20, 2500, 2500)):    # the first batch's keys must survive the growth
        rows = [(k, 1.0 + b + k * 1e-4, 100 + k, math.nan, math.nan, 1024, -1) for k in range(keys)] * 2
        fb = _batch_of_hits(rows)
        hits = Hits(np.arange(len(rows), dtype=np.int64), np.zeros(len(rows), np.int32), np.zeros(len(rows), np.uint8), 0)
        f_fast.add_hits(fb, hits, names, _Exporters)
        f_slow.add(hit_alerts(fb, hits, names, _Exporters))
        assert f_fast.pending == f_slow.pending == keys
    assert len(f_fast._keys.table) > kernels._CACHED_SLOTS
    f_fast.close()
    f_slow.close()
    key = lambda a: (a["src"], a["exporter"], a["ts"], a["count"])  # noqa: E731
    assert sorted(fast, key=key) == sorted(slow, key=key) and len(fast) == 5000


def _run(compact: bool, version: int, window: float):
    cfg = config.parse(f'[[endpoints]]\nname = "imds"\naddress = "169.254.169.254"\n'
                       f"[alerts]\nfold_window_seconds = {window}\n")
    out = []
    p = app.Pipeline(cfg, app._NullSink(), clock=lambda: 1.7e9, compact=compact)
    p._emit = lambda alert: out.append(alert)
    p.folder.emit = p._emit
    p.folder.emit_packed = lambda alert, ts: out.append(msgpack.unpackb(alert))
    ex = flow_datagrams(version, 64, 30, imds_fraction=0.05)
    ex.set_sequence(ex.data, 0)
    srcs = [("192.0.2.1", 2055), ("192.0.2.2", 2055)]
    if ex.template is not None:
        for s in srcs:
            p.process(DatagramBatch.from_payloads([ex.template], src=s, ts=1.7e9))
    for k in range(3):
        rows = [r.tobytes() for r in ex.data]
        p.process(DatagramBatch.from_payloads(rows, src=[srcs[i % 2] for i in range(len(rows))],
                                              ts=[1.7e9 + k + i * 1e-3 for i in range(len(rows))]))
    p.folder.close()
    return out, p.exporters.snapshot()


def test_compacting_pipeline_alerts_and_counts_like_the_full_one():
    for version in (5, 10):
        for window in (0.0, 60.0):
            fast, fast_counts = _run(True, version, window)
            slow, slow_counts = _run(False, version, window)
            assert fast and sorted(map(repr, fast)) == sorted(map(repr, slow))
            assert fast_counts == slow_counts
            assert fast_counts[0]["records"] == 3 * 32 * 30


def test_a_flood_of_new_fold_keys_makes_no_python_object_per_key():
    """5000 new fold keys, each alert leaving at once (packed): the keys' windows are array rows, so
    the objects the garbage collector tracks do not grow with them (a dict entry and a list per key
    did: full collections over hundreds of thousands of them took tens of ms in a flood)."""
    import gc
    out = []
    f = Folder(60.0, out.append, packer=Packer(), emit_packed=lambda alert, ts: out.append(ts))
    names = ("imds", "other")
    batches = []
    for b in range(50):
        rows = [(100 * b + k, 1.0 + b, 100, math.nan, math.nan, 1024, -1) for k in range(100)]
        fb = _batch_of_hits(rows)
        fb.cols.src_lo[:100] = 0xFFFF0A000000 + 100 * b + np.arange(100)
        batches.append((fb, Hits(np.arange(100, dtype=np.int64), np.zeros(100, np.int32), np.zeros(100, np.uint8), 0)))
    f.add_hits(*batches[0], names, _Exporters)
    gc.collect()
    before = len(gc.get_objects())
    for fb, hits in batches[1:]:
        f.add_hits(fb, hits, names, _Exporters)
    out.clear()
    gc.collect()
    assert f.windows == 5000 and f.pending == 0
    assert len(gc.get_objects()) - before < 500


def test_new_keys_lone_hits_leave_in_one_kernel_call_and_nothing_else_does():
    """Packer.pack_leaving takes the groups left to Folder.finish that are a lone hit opening a
    window: they leave through emit_packed_many, in group order, the bytes the dict path makes. A
    lone hit in an open window (held), a lone hit that reopens a window over a held alert (which
    must leave first) and a new key's group of two (whose second is held) go the general way, in a
    batch of their own or beside lone new keys (which then leave first); each key's alerts in the
    order the dict path emits them."""
    names = ("imds", "other")
    many, each, slow = [], [], []
    f = Folder(2.0, each.append, packer=Packer(), emit_packed=lambda alert, ts: each.append(msgpack.unpackb(alert)),
               emit_packed_many=lambda alerts, stamps: many.append([msgpack.unpackb(a) for a in alerts]))
    ref = Folder(2.0, slow.append)

    def batch(*rows):
        m = len(rows)
        fb = _batch_of_hits([(key, ts, 100 + i, math.nan, math.nan, 1024 + i, -1) for i, (key, ts) in enumerate(rows)])
        hits = Hits(np.arange(m, dtype=np.int64), np.zeros(m, np.int32), np.zeros(m, np.uint8), 0)
        f.add_hits(fb, hits, names, _Exporters)
        ref.add(hit_alerts(fb, hits, names, _Exporters))

    src = lambda key: f"10.0.0.{1 + key}"                   # noqa: E731 - _batch_of_hits' source of a key
    batch(*[(k, 1.0) for k in range(6)])                    # six new keys, one hit each
    assert [[a["src"] for a in b] for b in many] == [[src(k) for k in range(6)]] and each == []
    batch((1, 1.5), (1, 1.6))                               # key 1's window: a pending alert of count 2
    batch((2, 1.7))                                         # a lone hit in key 2's open window: held
    assert len(many) == 1 and each == [] and f.pending == 2
    batch((1, 5.0))                                         # reopens key 1's window: its held alert leaves first
    assert len(many) == 1 and [a["count"] for a in each] == [2, 1] and f.pending == 1
    batch((7, 6.0), (7, 6.1))                               # a new key, two hits: the first leaves, the second is held
    assert len(many) == 1 and len(each) == 3 and f.pending == 2
    batch((20, 6.2), (2, 6.2), (21, 6.2))                   # lone new keys beside one that reopens over a held alert
    assert [a["src"] for a in many[1]] == [src(20), src(21)] and len(many) == 2
    assert [(a["src"], a["count"]) for a in each[3:]] == [(src(2), 1), (src(2), 1)] and f.pending == 1
    f.close()
    ref.close()
    got = [a for b in many for a in b] + each
    enc = alerts.Encoder()
    assert sorted(map(enc.encode, got)) == sorted(map(enc.encode, slow)) and len(got) == len(slow)
    for key in (1, 2, 7):
        assert [a for a in got if a["src"] == src(key)] == [a for a in slow if a["src"] == src(key)]


def test_windows_reopened_over_held_alerts_let_them_leave_in_one_call():
    """A batch whose hits reopen many windows that ended over a held alert (no tick between: a
    window closing in a flood) lets those alerts leave in one packing call, the fold kernel's and
    Python's held alike, each before its key's new alert, as the dict path emits them."""
    names = ("imds", "other")
    out, slow = [], []
    packed = lambda alert, ts: out.append(msgpack.unpackb(alert))              # noqa: E731
    f = Folder(2.0, out.append, packer=Packer(), emit_packed=packed,
               emit_packed_many=lambda alerts, stamps: out.extend(msgpack.unpackb(a) for a in alerts),
               describe=lambda: (names, _Exporters, (), ()))
    ref = Folder(2.0, slow.append)
    calls = []
    pack_folded = f.packer.pack_folded
    f.packer.pack_folded = lambda *a: calls.append(len(a[1])) or pack_folded(*a)

    def batch(rows):
        m = len(rows)
        fb = _batch_of_hits([(key, ts, 100 + i, math.nan, math.nan, 1024 + i, -1) for i, (key, ts) in enumerate(rows)])
        hits = Hits(np.arange(m, dtype=np.int64), np.zeros(m, np.int32), np.zeros(m, np.uint8), 0)
        f.add_hits(fb, hits, names, _Exporters)
        ref.add(hit_alerts(fb, hits, names, _Exporters))

    keys = range(150)
    batch([(k, 1.0) for k in keys])                         # new keys: each alert leaves at once
    batch([(k, 1.5) for k in keys])                         # a second hit each, held (the kernel's spare
                                                            # rows are 64 at first: the rest by Python)
    made = f._made_count
    assert f.pending == 150 and 0 < made < 150 and calls == []
    batch([(k, 4.0) for k in keys])                         # every window ended: reopened over its held alert
    assert calls == [made] and f.pending == 0 and len(out) == 3 * 150
    f.close()
    ref.close()
    enc = alerts.Encoder()
    assert sorted(map(enc.encode, out)) == sorted(map(enc.encode, slow))
    for k in keys:                                          # each key's: its first, its held, its new one
        src = f"10.0.0.{1 + k}"
        assert [a["ts"] for a in out if a["src"] == src] == [a["ts"] for a in slow if a["src"] == src] == \
            [1.0, 1.5, 4.0]


def test_hits_past_max_fold_keys_leave_in_the_same_kernel_call():
    """Past limits.max_fold_keys every hit of a key with no open window is an alert of its own
    (fold_groups' kind 4, counted there): Packer.pack_leaving packs them after the lone new keys',
    in hit order, with no dict per alert; the alerts and the count are add()'s."""
    names = ("imds", "other")
    many, each, slow = [], [], []
    f = Folder(2.0, each.append, 2, packer=Packer(), emit_packed=lambda alert, ts: each.append(msgpack.unpackb(alert)),
               emit_packed_many=lambda alerts, stamps: many.append([msgpack.unpackb(a) for a in alerts]))
    ref = Folder(2.0, slow.append, 2)
    rows = [(0, 1.0), (1, 1.0), (2, 1.0), (3, 1.0), (2, 1.1), (4, 1.2)]    # keys 0 and 1 take the room
    fb = _batch_of_hits([(key, ts, 100 + i, math.nan, math.nan, 1024, -1) for i, (key, ts) in enumerate(rows)])
    hits = Hits(np.arange(6, dtype=np.int64), np.zeros(6, np.int32), np.zeros(6, np.uint8), 0)
    f.add_hits(fb, hits, names, _Exporters)
    ref.add(hit_alerts(fb, hits, names, _Exporters))
    assert [[(a["src"], a["bytes"]) for a in b] for b in many] == \
        [[(f"10.0.0.{1 + key}", 100 + i) for i, (key, _) in enumerate(rows)]] and each == []
    assert f.over_limit == ref.over_limit == 4 and f.windows == ref.windows == 2
    enc = alerts.Encoder()
    assert [enc.encode(a) for a in many[0]] == [enc.encode(a) for a in slow]


def test_pending_alerts_are_made_in_the_kernel_and_python_only_names_them():
    """With `describe` set (Pipeline sets it), a hit in a key's open window makes the pending alert in
    the fold kernel, from a spare row: nothing is left to Folder.finish, and the alert that leaves
    later is the one the dict path holds; so are a new key's hits after its first in one batch.
    When the spare rows run out Python holds the rest as before, and the next call sets more aside;
    a row whose HTTP columns point into the batch's buffer, and a reopened window's hits over a held
    alert, are held by Python. Checked to fail with kernels._hold never taking a row (rest > 0)."""
    names = ("imds", "other")
    fast, slow = [], []
    saved, alerts._SPARE = alerts._SPARE, 2
    try:
        f, ref = Folder(60.0, fast.append), Folder(60.0, slow.append)
    finally:
        alerts._SPARE = saved
    f.describe = lambda: (names, _Exporters, (), ())

    def batch(*rows, http=()):
        m = len(rows)
        fb = _batch_of_hits([(key, ts, 100 + i, math.nan, 5.0 + i, 1024 + i, 10) for i, (key, ts) in enumerate(rows)])
        for i in http:
            fb.cols.row_flags[i] = HTTP
            fb.cols.url_len[i] = fb.cols.host_len[i] = fb.cols.headers[i] = fb.cols.http_method[i] = 0
        fb.cols.in_if[:m] = 7
        hits = Hits(np.arange(m, dtype=np.int64), np.zeros(m, np.int32), np.zeros(m, np.uint8), 0)
        f.add_hits(fb, hits, names, _Exporters)
        ref.add(hit_alerts(fb, hits, names, _Exporters))
        return int(f._counters[2])                          # groups left to Python

    assert batch(*[(k, 1.0) for k in range(5)]) == 5        # five new keys: their windows open, alerts leave
    assert batch((0, 1.5), (1, 1.5), (0, 1.6)) == 0         # two held in the kernel (key 0 with 2 hits)
    assert f.pending == 2 and f._spare_size == 4
    assert batch((2, 1.7), (3, 1.7), (4, 1.7)) == 0         # four spare now: three more
    assert batch((0, 1.8), (1, 1.9)) == 0 and f.pending == 5   # merged into the kernel's pending alerts
    assert batch((5, 2.0)) == 1 and batch((5, 2.1), http=(0,)) == 1 and f.pending == 6   # HTTP: Python's
    made, python_held = [], []

    def take_made(was=f._take_made):                       # how many pending alerts the kernel made
        if f._counters[5] > f._counters[4]:
            made.append(int(f._counters[5] - f._counters[4]))
        was()
    f._take_made = take_made
    f._hold = lambda *a, was=f._hold: python_held.append(a[0]) or was(*a)
    batch((6, 2.2), (6, 2.3), (6, 2.4))                     # a new key, three hits: the first leaves (Python
    assert made == [1] and python_held == [] and f.pending == 7   # here, no packer), the rest held in the kernel
    batch((1, 99.0), (1, 99.1))                             # reopens key 1 over its held alert: Python's, as before
    assert made == [1] and len(python_held) == 1 and f.pending == 7
    assert f.pending == ref.pending
    f.close()
    ref.close()
    enc = alerts.Encoder()
    assert len(fast) == len(slow) == 16 and sorted(map(enc.encode, fast)) == sorted(map(enc.encode, slow))
    assert sum(a["count"] for a in fast) == 20                # every hit of the eight batches


@pytest.mark.parametrize("packed", [True, False])
def test_pending_alerts_taken_under_two_namings_leave_each_with_its_own(packed):
    """A reload between batches renames the endpoints: the kernel's pending alerts of each batch are
    named as describe() said when they were made, released together (close), packed or as dicts,
    beside one Python held (its HTTP row): the dict path's alerts, byte for byte. The folder keeps
    one naming per naming, however often describe() builds it anew."""
    fast, slow = [], []
    pack = dict(packer=Packer(), emit_packed=lambda alert, ts: fast.append(msgpack.unpackb(alert))) if packed else {}
    f, ref = Folder(60.0, fast.append, **pack), Folder(60.0, slow.append)
    naming = [("imds", "other")]
    f.describe = lambda: (tuple(list(naming[0])), _Exporters, (), ())   # a new tuple each call, as a caller may

    def batch(*rows, http=()):
        fb = _batch_of_hits([(key, ts, 100 + i, math.nan, 5.0, 1024, -1) for i, (key, ts) in enumerate(rows)])
        for i in http:
            fb.cols.row_flags[i] = HTTP
            fb.cols.url_len[i] = fb.cols.host_len[i] = fb.cols.headers[i] = fb.cols.http_method[i] = 0
        m = len(rows)
        hits = Hits(np.arange(m, dtype=np.int64), np.zeros(m, np.int32), np.zeros(m, np.uint8), 0)
        f.add_hits(fb, hits, naming[0], _Exporters)
        ref.add(hit_alerts(fb, hits, naming[0], _Exporters))

    batch(*[(k, 1.0) for k in range(4)])                    # four windows open
    batch((0, 1.5), (1, 1.5))                               # two pending alerts under the first naming
    naming[0] = ("imds-renamed", "other")
    batch((2, 1.6), (3, 1.6), http=(1,))                    # one under the second, one Python holds
    assert f.pending == ref.pending == 4
    batch((4, 1.7), (4, 1.8))                               # a new key: one leaves, one more under the second
    assert f.pending == ref.pending == 5 and len(f._namings) == 2   # a naming each, not a describe() call each
    f.close()
    ref.close()
    enc = alerts.Encoder()
    assert sorted(map(enc.encode, fast)) == sorted(map(enc.encode, slow)) and len(fast) == 10
    assert sorted(a["endpoint"] for a in fast) == ["imds"] * 6 + ["imds-renamed"] * 4


_HUGE = [(8, 4), (12, 4), (7, 2), (11, 2), (4, 1), (1, 8), (2, 8), (34, 4)]


class _DictPath(alerts.Encoder):
    """msgpack as the collector writes it, but every alert made as a dict (hit_alerts), not packed:
    Pipeline packs in a kernel only with the plain Encoder."""


@pytest.mark.parametrize("window", [60.0, 0.0])
@pytest.mark.parametrize("batches", [1, 3])
@pytest.mark.parametrize("encoder", [alerts.Encoder, _DictPath])
def test_counters_past_64_bits_saturate(window, batches, encoder):
    """A record's bytes or packets times its sampling rate (and folded sums) can pass 64 bits, which
    msgpack cannot hold: a bogus or hostile record once made the alert's encoding fail and took its
    batch's alerts with it. Estimates and folded sums saturate at 2**64 - 1 on every path (dict,
    packed, grouped and folded in the kernel, merged into a pending alert)."""
    from imds_flow import build
    from tests.support.alerts import AlertList
    top = (1 << 64) - 1
    row = build.record(_HUGE, ["10.1.2.3", "169.254.169.254", 40000, 80, 6, top - 4, top - 2, 100])
    tmpl = build.template_set(10, {256: _HUGE})
    p = app.Pipeline(config.parse('[[endpoints]]\nname = "imds"\naddress = "169.254.169.254"\n'
                                  f'[alerts]\nfold_window_seconds = {window}\n'), AlertList(),
                     clock=lambda: 1.7e9, encoder=encoder())
    p.process(DatagramBatch.from_payloads([build.ipfix([tmpl, build.data_set(256, [row])])], ts=1.7e9))
    for k in range(batches):                  # the one-call path, its hits folded in the kernel
        p.process(DatagramBatch.from_payloads([build.ipfix([build.data_set(256, [row, row])], seq=1 + 2 * k)],
                                              ts=1.7e9 + k))
        assert p.onecall.grouped >= 0 if window else p.onecall.grouped < 0
    p.close()
    got = p.sink.alerts
    assert [a["count"] for a in got] == ([1, 2 * batches] if window else [1] * (1 + 2 * batches))
    first = got[0]
    assert (first["bytes"], first["packets"], first["bytes_estimate"], first["packets_estimate"]) == \
        (top - 4, top - 2, top, top)
    if window:
        assert all(got[1][name] == top for name in ("bytes", "packets", "bytes_estimate", "packets_estimate"))


@pytest.mark.parametrize("case", ["file", "rotation", "disk_full"])
def test_a_tick_writes_its_closing_windows_packed_at_once_as_write_alerts_would(case, tmp_path):
    """A tick releasing more pending alerts (all the fold kernel's) than one run packs (alerts._RUN:
    two runs and part of a third) hands each run to the file at once (Sinks.write_run, no bytes
    object per alert), as a batch's new keys' alerts (Folder.finish) are: the files, sink counters,
    alert count and latency are what write_alerts leaves with the same alerts one bytes object each.
    With a rotation due within a run, write_alerts takes that run (files cut between alerts); on a
    full disk (/dev/full) the runs are dropped and counted as write_alerts drops them."""
    from imds_flow import build
    from imds_flow.sinks import Sinks
    from imds_flow.sinks.stream import open_sink
    keys, t0 = 2 * alerts._RUN + 100, 1.7e9

    def run(by_run: bool) -> tuple[dict, list[bool]]:
        now = [t0]
        path = tmp_path / f"{by_run}.mp"
        target = "/dev/full" if case == "disk_full" else str(path)
        sink = Sinks([open_sink(target, max_bytes=(1 << 20) if case == "rotation" else 0, keep=1000)],
                     ["msgpack"], "msgpack")
        taken, write_run = [], sink.write_run
        sink.write_run = lambda data, k: taken.append(write_run(data, k) if by_run else False) or taken[-1]
        p = app.Pipeline(config.parse('[[endpoints]]\nname = "imds"\naddress = "169.254.169.254"\n'), sink,
                         clock=lambda: now[0])
        hosts = [f"10.{k >> 16}.{k >> 8 & 255}.{k & 255}" for k in range(1, keys + 1)]
        for rep in range(2):                     # each key's first alert leaves at once, its second is held
            payloads = [build.v5([(h, "169.254.169.254", 4000 + rep, 80) for h in hosts[i: i + 30]], seq=rep * keys + i)
                        for i in range(0, keys, 30)]
            for part in ([payloads], [[d] for d in payloads])[rep]:   # (held a datagram at a time: by the kernel)
                p.process(DatagramBatch.from_payloads(part, src=("192.0.2.1", 2055), ts=t0 + rep))
        assert p.folder._made_count == keys and p.alerts_written == keys
        now[0] = t0 + 61
        p.tick(now[0])
        assert p.alerts_written == 2 * keys and p.folder.pending == 0
        files = sorted(tmp_path.glob(f"{by_run}.mp.*"), key=lambda f: -int(f.suffix[1:])) + [path]
        out = {"file": b"".join(f.read_bytes() for f in files if f.exists()), "files": len(files),
               "sinks": [{k: v for k, v in one.items() if k != "name"} for one in sink.stats()["sinks"]],
               "latency": p.latency.counts.tolist(), "summary": p.summary(latency=False)}
        p.close()
        return out, taken

    (packed, taken), (each, none) = run(True), run(False)
    assert packed == each and none == [False] * len(none)
    if case == "disk_full":
        assert taken == [True] * 4 and each["sinks"][0]["dropped"] == 2 * keys
        return
    unpacker = msgpack.Unpacker()
    unpacker.feed(each["file"])
    got = list(unpacker)
    assert sum(a["count"] for a in got) == 2 * keys and len(got) == 2 * keys
    if case == "file":                           # the first batch's new keys (Folder.finish), then the tick's three
        assert taken == [True] * 4 and each["files"] == 1
    else:                                        # runs that would pass the rotation size: write_alerts'
        assert True in taken and False in taken and each["files"] >= 3


def test_a_window_reopened_over_a_held_alert_closes_the_ended_ones_at_most_every_early_tick():
    """Hits that meet a window ended over a held alert before the tick let it leave (each sends its
    batch from compiled code back to Python) make the pipeline close every ended window then, as
    the next tick would: the other keys' held alerts leave at once instead of each costing a return
    on its own next hit; at most once per app.EARLY_TICK_SECONDS. By the batch's arrival times, not
    the clock's: a replay's windows follow capture time (here the clock is a day ahead)."""
    from imds_flow import build
    now, t0 = [1.7e9], 1.7e9
    p = app.Pipeline(config.parse('[[endpoints]]\nname = "imds"\naddress = "169.254.169.254"\n'), app._NullSink(),
                     clock=lambda: now[0] + 86400)
    ticks = []
    tick = p.folder.tick
    p.folder.tick = lambda t: (ticks.append(t), tick(t))
    seq = [0]

    def send(hosts, t):
        now[0] = t
        payloads = [build.v5([(h, "169.254.169.254", 4000, 80) for h in hosts[i: i + 30]], seq=seq[0] + i)
                    for i in range(0, len(hosts), 30)]
        seq[0] += len(hosts)
        p.process(DatagramBatch.from_payloads(payloads, src=("192.0.2.1", 2055), ts=t))

    many = [f"10.1.{k >> 8}.{k & 255}" for k in range(100)]
    for start, hosts in ((0.0, many + ["10.2.0.1"]), (2.02, ["10.2.0.2"]), (2.1, ["10.2.0.3"])):
        send(hosts, t0 + start)                 # a window each, its first alert out at once
        send(hosts, t0 + start + 0.5)           # and one held
    assert p.folder.pending == 103 and ticks == []
    send(["10.2.0.1"], t0 + 62.0)               # its window ended: reopened over its held alert
    assert p.folder.reopened == 1 and ticks == [t0 + 62.0]
    assert p.folder.pending == 2                # the 100 ended with it left too (10.2.0.2, .3 still open)
    send(["10.2.0.2"], t0 + 62.05)              # ended at 62.02: reopened, but within EARLY_TICK_SECONDS
    assert p.folder.reopened == 2 and ticks == [t0 + 62.0] and p.folder.pending == 1
    later = t0 + 62.0 + 2 * app.EARLY_TICK_SECONDS
    send(["10.2.0.3"], later)                   # ended at 62.1: reopened past EARLY_TICK_SECONDS
    assert p.folder.reopened == 3 and ticks == [t0 + 62.0, later]
    assert p.folder.pending == 0 and p.alerts_written == 2 * 103 + 3
    p.close()
