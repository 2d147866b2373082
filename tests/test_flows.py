"""FlowBatch: one structured array whose fields the column views share; reset grows within the limit
and empties; view() is the filled part."""
import numpy as np

from imds_flow.flows import COLUMNS, ROW, Columns, FlowBatch


def test_columns_are_views_of_the_rows():
    b = FlowBatch(4)
    assert b.capacity == 4 and b.n == 0 and len(b) == 0
    assert Columns._fields == tuple(name for name, _ in COLUMNS) == ROW.names
    for name, dtype in COLUMNS:
        col = getattr(b.cols, name)
        assert col.dtype == np.dtype(dtype) and np.shares_memory(col, b.rows)
    b.cols.dport[2] = 80
    b.rows["sampling_rate"][1] = 100
    assert b.rows["dport"][2] == 80 and b.cols.sampling_rate[1] == 100


def test_view_is_the_filled_part():
    b = FlowBatch(8)
    b.cols.sport[:3] = [1, 2, 3]
    b.n = 2
    assert b.view("sport").tolist() == [1, 2] and len(b) == 2


def test_reset_empties_and_grows_only_when_needed():
    b = FlowBatch(4, limit=100)
    b.n = 3
    rows = b.rows
    b.reset(4)
    assert b.n == 0 and b.rows is rows                 # room enough: the same array
    b.reset(5)
    assert b.capacity >= 5 and b.rows is not rows
    assert np.shares_memory(b.cols.ts, b.rows)         # the views follow the new array
    b.reset(90)
    assert 90 <= b.capacity <= 100                     # growth stops at the limit
