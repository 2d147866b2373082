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


@settings(max_examples=200, deadline=None)
@given(steps=st.lists(st.one_of(st.tuples(st.just("insert"), key, st.integers(0, 2**62)),
                                st.tuples(st.just("lookup"), st.lists(key, min_size=1, max_size=20))),
                      max_size=60))
def test_inserts_wait_for_the_next_read_and_keep_their_order(steps):
    """Inserts are stored in one kernel call when the table is next read: a key inserted again takes
    its latest value, a lookup between inserts sees every one before it, and the arrays handed to
    the kernels (arrays()) hold them too."""
    km, ref = KeyMap(capacity=2), {}
    for step in steps:
        if step[0] == "insert":
            km.insert(*step[1], step[2])
            ref[step[1]] = step[2]
            continue
        keys = step[1]
        cols = [np.array([k[j] for k in keys], np.uint64) for j in range(3)]
        out = np.empty(len(keys), np.int64)
        km.lookup(*cols, out)
        assert out.tolist() == [ref.get(k, -2) for k in keys]
    t0, t1, t2, val = km.arrays()
    held = {(int(a), int(b), int(c)): int(v) for a, b, c, v in zip(t0, t1, t2, val) if v >= 0}
    assert held == ref
    assert 2 * len(ref) <= len(val)


def test_a_large_table_finds_what_a_dict_finds():
    """Past 4096 slots key_lookup asks for every key's slot before reading any (prefetch): the same
    answers as a dict, for keys stored, keys absent and runs of one key; every row starts on a
    64-byte boundary (a row spans one cache line)."""
    rng = np.random.default_rng(7)
    stored = {tuple(k): i for i, k in enumerate(rng.integers(0, 2**64, (5000, 3), np.uint64).tolist())}
    stored.update({(0, 0, p): 5000 + p for p in range(3000)})     # keys that differ in one word only
    km = KeyMap()
    for k, v in stored.items():
        km.insert(*k, v)
    t0, t1, t2, val = km.arrays()
    assert len(val) >= 8192 and t0.ctypes.data % 64 == 0 and val.ctypes.data == t0.ctypes.data + 24
    keys = list(stored)[::7] + [tuple(k) for k in rng.integers(0, 2**64, (500, 3), np.uint64).tolist()]
    keys = [k for k in keys for _ in range(1 + k[2] % 3)]       # runs of one key, 1 to 3 long
    cols = [np.array([k[j] for k in keys], np.uint64) for j in range(3)]
    out = np.empty(len(keys), np.int64)
    missing = km.lookup(*cols, out)
    assert out.tolist() == [stored.get(k, -2) for k in keys]
    assert missing == sum(k not in stored for k in keys)
