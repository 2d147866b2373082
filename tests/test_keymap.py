"""KeyMap (kernels.key_lookup / key_insert) against a dict, on hypothesis-generated keys: growth,
colliding words, keys looked up before and after they are stored."""
import numpy as np
from hypothesis import given, settings, strategies as st

from imds_flow.keymap import KeyMap

word = st.one_of(st.integers(0, 3), st.integers(0, 2**64 - 1))
key = st.tuples(word, word, st.integers(0, 65535))


@settings(max_examples=200, deadline=None)
@given(stored=st.lists(key, max_size=300, unique=True), probes=st.lists(key, max_size=50))
def test_keymap_is_a_dict(stored, probes):
    km, ref = KeyMap(capacity=4), {}
    for i, k in enumerate(stored):
        km.insert(*k, i)
        ref[k] = i
    keys = stored + probes
    if not keys:
        return
    cols = [np.array([k[j] for k in keys], np.uint64) for j in range(3)]
    out = np.empty(len(keys), np.int64)
    missing = km.lookup(cols[0], cols[1], cols[2].astype(np.uint16), out)
    assert out.tolist() == [ref.get(k, -2) for k in keys]
    assert missing == sum(k not in ref for k in keys)
