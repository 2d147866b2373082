"""grow: arrays grow by doubling (or to what is needed), keeping their rows or not."""
import numpy as np

from imds_flow.grow import grow, grown_size


def test_doubles_or_takes_what_is_needed_and_keeps_the_rows():
    a = np.arange(6, dtype=np.int32).reshape(3, 2)
    assert grow(a, 3) is a
    b = grow(a, 4, fill=-1)
    assert b.shape == (6, 2) and b.dtype == np.int32 and (b[:3] == a).all() and (b[3:] == -1).all()
    assert grow(a, 10, keep=False).shape == (10, 2)
    assert grown_size(0, 1) == 1 and grown_size(8, 9, limit=12) == 12 and grown_size(8, 20, limit=12) == 20
