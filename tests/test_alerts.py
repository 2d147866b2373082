"""Alert folding: the first alert of a key leaves at once, the rest fold, nothing is lost."""
import math

import numpy as np

from hypothesis import given, settings, strategies as st

from imds_flow import kernels
from imds_flow.alerts import Folder, _FoldKeys, _vlans, _words
from imds_flow.flows import VLAN_COLUMNS, FlowBatch


def alert(ts, key=0, b=10):
    return {"ts": ts, "count": 1, "bytes": b, "packets": 1, "first_seen": ts - 1, "last_seen": ts,
            "sport": 1000 + key, "dport": 80, "vlan": None}


def test_first_at_once_rest_on_close_of_window():
    out = []
    f = Folder(60.0, out.append)
    f.add([(("k",), alert(0.0)), (("k",), alert(1.0)), (("k",), alert(2.0))])
    assert [a["count"] for a in out] == [1]
    f.tick(59.0)
    assert len(out) == 1
    f.tick(60.0)
    assert [a["count"] for a in out] == [1, 2]
    folded = out[1]
    assert folded["bytes"] == 20 and folded["first_seen"] == 0.0 and folded["last_seen"] == 2.0 and folded["ts"] == 2.0
    f.add([(("k",), alert(61.0))])        # a new window: written at once again
    assert [a["count"] for a in out] == [1, 2, 1]


def test_window_zero_writes_every_record():
    out = []
    f = Folder(0.0, out.append)
    f.add([(("k",), alert(0.0)), (("k",), alert(0.0))])
    assert [a["count"] for a in out] == [1, 1]


def test_close_flushes_pending():
    out = []
    f = Folder(60.0, out.append)
    f.add([(("a",), alert(0.0)), (("a",), alert(1.0)), (("b",), alert(1.0))])
    assert f.pending == 1
    f.close()
    assert sorted(a["count"] for a in out) == [1, 1, 1]
    assert f.pending == 0


@settings(max_examples=200, deadline=None)
@given(events=st.lists(st.tuples(st.integers(0, 3), st.floats(0, 5)), max_size=60),
       window=st.sampled_from([0.0, 0.5, 2.0, 60.0]),
       ticks=st.lists(st.floats(0, 400), max_size=5))
def test_sum_of_count_equals_records(events, window, ticks):
    out = []
    f = Folder(window, out.append)
    t = 0.0
    tick_at = sorted(ticks)
    for key, dt in events:
        t += dt
        while tick_at and tick_at[0] <= t:
            f.tick(tick_at.pop(0))
        f.add([((key,), alert(t, key))])
    f.close()
    assert sum(a["count"] for a in out) == len(events)
    assert math.isclose(sum(a["bytes"] for a in out), 10 * len(events))
    # at most one alert is written "at once" per key per window: count>1 only for folded ones
    assert all(a["count"] >= 1 for a in out)


def _vlan(values: list[int], more: list[int] = ()):
    """The VLAN _vlans picks for one record whose VLAN_COLUMNS hold `values` and whose vlan_more
    holds the ids `more` (a 3rd, 4th, ... tag)."""
    b = FlowBatch(4)
    for name, v in zip(VLAN_COLUMNS, values):
        getattr(b.cols, name)[2] = v
    b.cols.vlan_more[2] = sum(v << 12 * k for k, v in enumerate(more)) | len(more) << 60 if more else 0
    return _vlans(b, np.array([2]))[0]


def test_vlan_choice():
    assert _vlan([-1, -1, -1, -1]) is None
    assert _vlan([0, 30, -1, -1]) == 30      # softflowd biflow: IE 58 = 0, IE 59 = VLAN
    assert _vlan([0, -1, -1, -1]) == 0
    assert _vlan([10, 20, -1, -1]) == 10
    assert _vlan([-1, -1, 0, 0], [0, 40]) == 40     # priority tags outside: the first real id, the 4th tag's
    assert _vlan([-1, -1, 0, 0], [0]) == 0
    assert _vlan([-1, -1, 5, 6], [7]) == 5


def _fold_key(k: int):
    """A fold key of hit_alerts' shape (exporter, source, destination, protocol, port, endpoint,
    direction) for k >= 0; for k < 0 one of another shape (Folder.add takes any key)."""
    if k < 0:
        return ("other", k)
    return (k % 7, (0, 0xFFFF0A000000 + k), (0, 0xFFFFA9FEA9FE), 6, 80 + k % 3, k % 2, k % 2)


@settings(max_examples=200, deadline=None)
@given(ops=st.lists(st.one_of(st.tuples(st.just("new"), st.integers(-5, -1) | st.integers(0, 400)),
                              st.tuples(st.just("close"), st.integers(0, 400)),
                              st.tuples(st.just("rebuild"), st.just(0)),
                              st.tuples(st.just("many"), st.integers(0, 400))), max_size=40))
def test_fold_keys_find_what_a_dict_finds(ops):
    """_FoldKeys (six words by id, a table of ids the kernels read) against a dict: every key finds
    its id, in Python and in the kernel's lookup, through growth (64 slots to thousands) and
    rebuilds that keep only open windows' ids, renumbered in order; keys of another shape too."""
    keys = _FoldKeys()
    model: dict = {}                        # key -> id
    is_open: dict = {}                      # id -> window open
    for op, k in ops:
        if op in ("new", "many"):
            for j in ([k] if op == "new" else range(k, k + 300)):
                key = _fold_key(j)
                if key not in model:
                    kid = keys.new(key)
                    assert kid == len(model)
                    model[key] = kid
                    keys.open[kid] = is_open[kid] = True
        elif op == "close" and model:
            kid = k % len(model)
            keys.open[kid] = is_open[kid] = False
        elif op == "rebuild":
            new_id = keys.rebuild()
            old = model
            kept = sorted((kid, key) for key, kid in old.items() if is_open[kid])
            model = {key: j for j, (_, key) in enumerate(kept)}
            is_open = {j: True for j in range(len(kept))}
            assert [int(new_id[kid]) for kid in old.values()] == [model.get(key, -1) for key in old]
        assert keys.n == len(model)
        for j in range(-5, 700):
            key = _fold_key(j)
            assert keys.find(key) == model.get(key, -1)
            words = _words(key)
            if words is not None:
                assert kernels.fold_lookup(words, keys.words, keys.table) == model.get(key, -1)
        held = keys.table[keys.table >= 0]
        assert sorted(held.tolist()) == sorted(kid for key, kid in model.items() if _words(key) is not None)
        assert 2 * len(held) <= len(keys.table)
