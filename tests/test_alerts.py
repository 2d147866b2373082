"""Alert folding: the first alert of a key leaves at once, the rest fold, nothing is lost."""
import math

import numpy as np

from hypothesis import given, settings, strategies as st

from imds_flow.alerts import Folder, _vlans
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
