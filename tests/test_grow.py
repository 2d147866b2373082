"""grow: arrays grow by doubling (or to what is needed), keeping their rows or not."""
import numpy as np

from imds_flow.grow import grow, grown_size


def test_doubles_or_takes_what_is_needed_and_keeps_the_rows():
    a = np.arange(6, dtype=np.int32).reshape(3, 2)
    assert grow(a, 3) is a
    b = grow(a, 4, fill=-1)
    assert b.shape == (6, 2) and b.dtype == np.int32 and (b[:3] == a).all() and (b[3:] == -1).all()
    c = grow(a, 5)                                  # fill 0 (calloc'd) and a fill that is not
    assert c.shape == (6, 2) and (c[:3] == a).all() and (c[3:] == 0).all()
    r = np.ones(2, [("x", np.int64), ("y", np.float64)])
    g = grow(r, 3)
    assert g.dtype == r.dtype and g.tolist() == [(1, 1.0), (1, 1.0), (0, 0.0), (0, 0.0)]
    f = grow(np.zeros(1, np.float64), 2, fill=np.nan)
    assert f[0] == 0 and np.isnan(f[1])
    assert grow(a, 10, keep=False).shape == (10, 2)
    assert grown_size(0, 1) == 1 and grown_size(8, 9, limit=12) == 12 and grown_size(8, 20, limit=12) == 20
