"""Many new exporters sending the same template set in one batch are met together
(resolve._new_alike, ScopeTable.define_new / remember_new_sets): the tables, counters, mirrors the
kernels read and decoded records end exactly as when each set is taken one by one."""
from __future__ import annotations

import numpy as np
import pytest

from imds_flow import app, kernels
from imds_flow.datagrams import DatagramBatch
from imds_flow.wire import resolve

from .test_bounds import FIELDS, T0, assert_mirrored, data, pipeline, templates, with_limits

OTHER = [(12, 4), (8, 4), (7, 2), (11, 2), (4, 1), (1, 8), (2, 8)]


def batch_of(n: int, t: float) -> DatagramBatch:
    """n new exporters with the same two-template set, then their data; among them: one sending its
    set twice, one a set of its own, one with two observation domains, and data before a template."""
    same = templates([256, 257])
    payloads, srcs = [], []
    for e in range(n):
        src = (f"10.0.{e >> 8}.{e & 255}", 2055)
        payloads += [same, data(256)]
        srcs += [src, src]
    payloads += [data(256), same, same, templates([256, 300], fields=OTHER), templates([256, 257], domain=7), same]
    srcs += [("198.51.100.1", 2055)] * 3 + [("198.51.100.2", 2055)] + [("198.51.100.3", 2055)] * 2
    return DatagramBatch.from_payloads(payloads, src=srcs, ts=[t + i * 1e-4 for i in range(len(payloads))])


def state(p) -> dict:
    """Everything meeting exporters touches, with plan ids replaced by their layouts (the order in
    which layouts are first compiled may number them otherwise)."""
    cache = p.exporters.templates
    layout = {pid: (t.options, t.fields) for pid, _, t in cache.templates.values()}
    known = {}
    for at, e in cache._known.items():
        first, count, off = int(cache.set_first[e]), int(cache.set_count[e]), int(cache.set_off[e])
        slots = cache.set_slots[first:first + count].tolist()
        known[at] = (cache.set_bytes[off:off + at[2]].tobytes(), [cache._slot_keys[s] for s in slots],
                     [layout[pid] for pid in cache.set_pids[first:first + count].tolist()])
    t0, t1, t2, val = cache.kernel_state()[18:22]
    sets = np.array([(s, i, n) for s, i, n in cache._known], np.uint64).reshape(-1, 3)
    found = np.empty(len(sets), np.int64)
    assert kernels.key_lookup(sets[:, 0].copy(), sets[:, 1].copy(), sets[:, 2].copy(), t0, t1, t2, val, found) == 0
    assert sorted(found.tolist()) == sorted(cache._known.values())     # the kernels find every entry
    cols = p.batch.cols
    return {"templates": {k: (r, layout[pid]) for k, (pid, r, _) in cache.templates.items()},
            "scope_templates": cache.scope_templates[: len(cache.scope_keys)].tolist(),
            "fields": cache._fields, "known": known, "dirty": cache.dirty,
            "counters": p.exporters.counters[: len(p.exporters)].tolist(), "stats": p.stats(),
            "records": (p.batch.n, cols.sport[: p.batch.n].tolist(), cols.bytes[: p.batch.n].tolist())}


@pytest.mark.parametrize("n", [2, 40, 300])
def test_exporters_met_together_end_as_one_by_one(monkeypatch, n):
    together, alone = pipeline(), pipeline()
    took = []
    define_new = type(together.exporters.templates).define_new
    monkeypatch.setattr(type(together.exporters.templates), "define_new",
                        lambda self, *a: took.append(len(a[0])) or define_new(self, *a))
    together.process(batch_of(n, T0))
    assert together.stats()["records"] == n + 1  # (198.51.100.1's came before its template: released within)
    assert took == [n + 2, n + 2]    # each template in n + 2 scopes at once (both of the two-domain exporter's)
    with monkeypatch.context() as m:
        m.setattr(resolve, "_new_alike", lambda *a: {})
        alone.process(batch_of(n, T0))
    assert state(together) == state(alone)
    assert_mirrored(together.exporters.templates)
    # resent byte for byte a second later: the one-call path takes what was remembered, alike in both
    for p in (together, alone):
        p.process(batch_of(n, T0 + 1))
    assert state(together) == state(alone)
    assert together.stats()["records"] == 2 * n + 2


def test_near_the_bounds_each_set_goes_one_by_one(monkeypatch):
    """Where the batch's templates, all new, could pass a bound, none is met together: define()
    refuses past the bound in batch order, and counts it, as before."""
    took = []
    p = pipeline(max_templates=50)
    define_new = type(p.exporters.templates).define_new
    monkeypatch.setattr(type(p.exporters.templates), "define_new",
                        lambda self, *a: took.append(len(a[0])) or define_new(self, *a))
    p.process(batch_of(40, T0))
    assert took == []
    assert len(p.exporters.templates.templates) == 50
    assert p.exporters.total("templates_over_limit") > 0


def test_a_scope_that_held_the_ids_before_goes_one_by_one():
    """A scope whose templates expired keeps their slots: it is not fresh, so it is met one by one
    and reuses its slot (the kernels' mirror stays one slot per key)."""
    p = pipeline()
    cache = p.exporters.templates
    p.process(batch_of(3, T0))
    p.tick(T0 + 4000)                                                  # every template expired
    assert not cache.templates
    p.process(batch_of(3, T0 + 4001))
    assert len(cache._slots) == len(set(cache._slot_keys)) == len(cache.templates)
    assert_mirrored(cache)
    assert p.stats()["records"] == 2 * (3 + 1)


def test_expiry_forgets_what_the_dict_says_is_old():
    """ScopeTable.expire finds old templates in the kernels' mirror: it forgets exactly those whose
    received time in the dict is past the lifetime (the dict walk it replaced, as the oracle), with
    some templates resent later (refreshed by the kernel) and some not."""
    clock = [T0]
    p = app.Pipeline(with_limits(), app._NullSink(), clock=lambda: clock[0], compact=False)
    cache = p.exporters.templates
    for n, clock[0] in ((40, T0), (20, T0 + 100), (5, T0 + 200)):      # the first 20, then 5, resend
        p.process(batch_of(n, clock[0]))
    for now, left in ((T0 + 50, True), (T0 + 150, True), (T0 + 250, False)):
        now += cache.lifetime
        before = set(cache.templates)
        old = {k for k, (_, received, _) in cache.templates.items() if now - received > cache.lifetime}
        assert 0 < len(old) and (len(old) < len(before)) == left
        assert cache.expire(now) == len(old)
        assert set(cache.templates) == before - old
        assert_mirrored(cache)


def test_kept_fields_are_the_templates_fields():
    p = pipeline()
    p.process(batch_of(5, T0))
    cache = p.exporters.templates
    assert cache._fields == sum(len(t.fields) for _, _, t in cache.templates.values())
    assert {len(t.fields) for _, _, t in cache.templates.values()} == {len(FIELDS)}
