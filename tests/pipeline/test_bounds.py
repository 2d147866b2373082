"""[limits]: what exporters (or anyone forging their addresses) can make the collector hold.

Each bound is refused-and-counted, never evicting what is held; memory stays bounded under a
flood of 65 535 template ids from 10 000 forged exporters (measured in a subprocess).
"""
from __future__ import annotations

import json
import logging
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from imds_flow import app, config, kernels
from imds_flow.wire.pending import SLACK
from imds_flow.config import ConfigError, Limits
from imds_flow.datagrams import DatagramBatch
from imds_flow.exporters import COUNTERS
from imds_flow.wire.errors import REASONS
from imds_flow.wire.scopes import Bounds
from imds_flow import build

ROOT = Path(__file__).resolve().parents[2]
T0 = 1_700_000_000.0
FIELDS = [(8, 4), (12, 4), (7, 2), (11, 2), (4, 1), (1, 8), (2, 8)]
FLOW = ["10.0.0.1", "169.254.169.254", 40000, 80, 6, 100, 1]

# What the flood adds to the resident size of a process that has its kernels loaded, at most.
FLOOD_RSS_MB = 350


MINIMAL = '[[endpoints]]\nname = "imds"\naddress = "169.254.169.254"\n'


def with_limits(**limits) -> config.Config:
    return config.parse(MINIMAL + "[limits]\n" + "".join(f"{k} = {v}\n" for k, v in limits.items()))


def pipeline(**limits) -> app.Pipeline:
    return app.Pipeline(with_limits(**limits), app._NullSink(), clock=lambda: T0, compact=False)


def send(p: app.Pipeline, payloads, src=("192.0.2.1", 2055), t=T0) -> np.ndarray:
    p.process(DatagramBatch.from_payloads(payloads, src=src, ts=t))
    return p.batch.n


def col(p: app.Pipeline, name: str, exporter: int = 0) -> int:
    return int(p.exporters.counters[exporter, COUNTERS.index(name)])


def templates(ids, fields=FIELDS, version=10, domain=0, extra=None) -> bytes:
    sets = [build.template_set(version, {i: fields for i in ids})] + (extra or [])
    return build.ipfix(sets, domain=domain) if version == 10 else build.v9(sets, source_id=domain)


def data(tid, version=10, domain=0, n=1) -> bytes:
    sets = [build.data_set(tid, [build.record(FIELDS, FLOW)] * n)]
    return build.ipfix(sets, domain=domain) if version == 10 else build.v9(sets, source_id=domain)


# --- config ------------------------------------------------------------------------------------

def test_limits_defaults_are_the_shipped_ones_and_the_caches():
    shipped = config.load().limits
    assert shipped == Limits()
    b = Bounds()
    assert (b.max_scopes_per_exporter, b.max_templates_per_scope, b.max_templates, b.max_template_fields,
            b.max_pending_bytes_per_exporter, b.max_pending_bytes) == (
        shipped.max_scopes_per_exporter, shipped.max_templates_per_scope, shipped.max_templates,
        shipped.max_template_fields, shipped.max_pending_bytes_per_exporter, shipped.max_pending_bytes)


@pytest.mark.parametrize("line,message", [
    ("max_exporters = 0", "limits.max_exporters = 0: must be >= 1"),
    ("max_templates = -5", "limits.max_templates = -5: must be >= 1"),
    ("max_pending_bytes = -1", "limits.max_pending_bytes = -1: must be >= 0"),
    ("max_templates_per_scope = \"many\"", "limits.max_templates_per_scope = 'many': expected int"),
    ("max_template_fields = 1.5", "limits.max_template_fields = 1.5: expected int"),
    ("max_exporter = 10", "unknown key limits.max_exporter = 10"),
])
def test_bad_limits_are_one_line_errors(line, message):
    with pytest.raises(ConfigError) as e:
        config.parse(MINIMAL + f"[limits]\n{line}\n")
    assert str(e.value).startswith(message)
    assert "\n" not in str(e.value)


def test_limits_parse():
    cfg = with_limits(max_exporters=7, max_pending_bytes=0)
    assert cfg.limits.max_exporters == 7 and cfg.limits.max_pending_bytes == 0
    assert cfg.limits.max_templates == Limits().max_templates


# --- each bound ----------------------------------------------------------------------------------

def test_exporters_past_the_maximum_are_dropped_undecoded_and_counted(caplog):
    p = pipeline(max_exporters=3)
    srcs = [(f"192.0.2.{i}", 2055) for i in range(1, 6)]
    with caplog.at_level(logging.WARNING, "imds_flow"):
        p.process(DatagramBatch.from_payloads([data(256)] * 5, src=srcs, ts=T0))
    assert len(p.exporters) == 3
    assert p.exporters.dropped["exporters_over_limit"] == 2
    assert p.snapshot()["global"]["exporters_over_limit"] == 2
    assert "past limits.max_exporters" in caplog.text and "192.0.2." in caplog.text
    # the registered ones keep working; a new source still does not get in
    v5 = (5).to_bytes(2, "big") + (1).to_bytes(2, "big") + bytes(20) + bytes(48)
    assert send(p, [v5], src=srcs[0]) == 1
    assert send(p, [v5], src=("198.51.100.1", 9)) == 0
    assert p.exporters.dropped["exporters_over_limit"] == 3
    assert p.exporters.total("datagrams") == 5 - 2 + 1


def test_scopes_past_the_maximum_are_dropped_and_counted():
    p = pipeline(max_scopes_per_exporter=2)
    assert send(p, [templates([256], domain=d) for d in (1, 2)] + [data(256, domain=d) for d in (1, 2)]) == 2
    assert send(p, [templates([256], domain=3), data(256, domain=3)]) == 0
    assert col(p, "scope_over_limit") == 2
    assert "scope_over_limit" in REASONS
    assert len(p.exporters.templates.scope_keys) == 2
    assert send(p, [data(256, domain=1), data(256, domain=2, version=10)]) == 2   # held scopes unaffected
    v9 = ("192.0.2.1", 2055)
    assert send(p, [templates([256], version=9, domain=1)], src=v9) == 0
    assert col(p, "scope_over_limit") == 3                                    # a new version is a new scope


def test_templates_per_scope_and_in_all():
    p = pipeline(max_templates_per_scope=4, max_templates=6)
    send(p, [templates(range(256, 262))])
    assert col(p, "templates_over_limit") == 2
    assert len(p.exporters.templates.templates) == 4
    assert send(p, [data(256), data(261)]) == 1                               # 261 was refused: it waits
    other = [(8, 4), (12, 4)]
    send(p, [templates([256], fields=other)])                                 # a redefinition is always taken
    assert col(p, "templates_over_limit") == 2
    send(p, [templates(range(300, 305), domain=9)])                           # 2 more in all, then refused
    assert len(p.exporters.templates.templates) == 6
    assert col(p, "templates_over_limit") == 2 + 3
    assert_mirrored(p.exporters.templates)
    p.tick(T0 + 4000)                                                         # expiry frees the room
    assert len(p.exporters.templates.templates) == 0
    assert_mirrored(p.exporters.templates)
    send(p, [templates(range(400, 404))], t=T0 + 4001)
    assert len(p.exporters.templates.templates) == 4
    assert_mirrored(p.exporters.templates)


def test_template_fields_in_all():
    p = pipeline(max_template_fields=20)
    send(p, [templates([256, 257, 258])])                                     # 7 fields each: 21 > 20
    assert len(p.exporters.templates.templates) == 2
    assert col(p, "templates_over_limit") == 1


def test_plans_of_dropped_layouts_are_compacted_between_batches():
    """One id redefined with ever new layouts: definitions stay 1, plans stay bounded, decoding right."""
    p = pipeline(max_templates=8)
    cache = p.exporters.templates
    for k in range(100):
        fields = FIELDS + [(999, 1 + k)]
        rec = build.record(fields, FLOW + [0])
        pkt = build.ipfix([build.template_set(10, {256: fields}), build.data_set(256, [rec, rec])])
        assert send(p, [pkt], t=T0 + k) == 2
        assert cache.plans.n <= 2 * 8 + 1
        assert int(p.batch.cols.sport[0]) == 40000
        assert_mirrored(cache)                                                # plan ids remapped there too
    assert len(cache.templates) == 1


def assert_mirrored(cache) -> None:
    """The templates as onecall.ipfix_batch reads them (ScopeTable.kernel_state: a KeyMap of slots,
    each slot's plan and received time) agree with the dict the Python side reads."""
    t0, t1, t2, val, slot_plan, slot_received = cache.kernel_state()[9:15]
    keys = np.array(sorted(cache._slots), np.uint64)
    slot = np.empty(len(keys), np.int64)
    zero = np.zeros(len(keys), np.uint64)
    assert kernels.key_lookup(keys, zero, zero, t0, t1, t2, val, slot) == 0
    for key, s in zip(keys.tolist(), slot.tolist()):
        held = cache.templates.get(key)
        assert (slot_plan[s], slot_received[s]) == ((held[0], held[1]) if held else (-1, slot_received[s]))
    assert set(cache.templates) <= set(cache._slots)


def test_forgotten_templates_leave_the_mirror():
    """Keys forgotten by expiry keep their slot (plan -1) until they outnumber the live ones; then
    the mirror is rebuilt from the live definitions: its memory follows the bounds."""
    p = pipeline()
    cache = p.exporters.templates
    for k in range(5):
        send(p, [templates(range(256 + 100 * k, 356 + 100 * k))], t=T0 + 2000 * k)
        p.tick(T0 + 2000 * k + 1)                                             # the earlier ones expire
        assert len(cache.templates) == 100
        assert len(cache._slots) <= 2 * 100 + 64 + 100
        assert_mirrored(cache)


def test_pending_bytes_per_exporter_and_in_all():
    p = pipeline(max_pending_bytes_per_exporter=3000, max_pending_bytes=5000)
    big = data(256, n=20)                                                     # 20 records of 29 bytes: ~600 bytes
    send(p, [big] * 10)
    pend = p.exporters.templates.pending
    assert int(pend.cols["len"].sum()) <= 3000 and len(pend) == 5
    # the buffer is append-only (wire/pending.py): within twice what waits and the batch, plus SLACK
    assert len(pend.buf) <= 2 * (3000 + 10 * len(big)) + SLACK
    assert col(p, "pending_dropped_sets") == 5
    send(p, [big] * 10, src=("192.0.2.2", 2055))
    assert int(pend.cols["len"].sum()) <= 5000
    assert col(p, "pending_dropped_sets") + col(p, "pending_dropped_sets", 1) == 20 - len(pend)
    # the template arrives: what waited is decoded
    waiting = int((pend.cols["exp"] == 1).sum())
    assert send(p, [templates([256])], src=("192.0.2.2", 2055)) == 20 * waiting


def test_sampling_entries_are_bounded():
    p = pipeline(max_templates=4)
    cache = p.exporters.templates
    n = 50
    cache.set_rates(np.arange(n), np.arange(n), np.full(n, 10.0))
    assert len(cache.samp_keys) == 4
    cache.set_rates(np.array([0]), np.array([0]), np.array([20.0]))
    assert dict(zip(cache.samp_keys.tolist(), cache.samp_rates.tolist()))[(0 << 32) | 0] == 20.0


def test_limit_warnings_are_rate_limited(caplog):
    p = pipeline(max_templates_per_scope=1)
    with caplog.at_level(logging.WARNING, "imds_flow"):
        for k in range(20):
            send(p, [templates([256, 300 + k])], t=T0 + k * 0.1)
    lines = [r for r in caplog.records if "template definitions refused" in r.getMessage()]
    assert len(lines) == 1 and "192.0.2.1:2055" in lines[0].getMessage()
    assert col(p, "templates_over_limit") == 20


def test_prometheus_shows_the_limit_counters():
    from imds_flow.metrics import render_prometheus
    p = pipeline(max_exporters=1, max_templates_per_scope=1)
    send(p, [templates([256, 257])])
    send(p, [data(256)], src=("192.0.2.9", 1))
    text = render_prometheus(p.snapshot())
    assert "imds_flow_exporters_over_limit_datagrams_total 1" in text
    assert 'imds_flow_templates_over_limit_total{exporter="192.0.2.1",exporter_port="2055"} 1' in text


# --- the flood ---------------------------------------------------------------------------------------

FLOOD = textwrap.dedent('''
    import gc, json, struct, sys, time
    from imds_flow import app, config
    from imds_flow.datagrams import DatagramBatch

    def rss_mb(key="VmRSS"):
        for line in open("/proc/self/status"):
            if line.startswith(key + ":"):
                return int(line.split()[1]) / 1024

    p = app.Pipeline(config.load(), app._NullSink(), clock=lambda: 1.7e9, compact=False)
    p.warm_up()
    gc.collect()
    base = rss_mb()
    # every template id 256..65535 with its own layout (the worst case for compiled plans): 8 fields,
    # two of them unknown elements whose lengths encode the id
    rec = {}
    for tid in range(256, 65536):
        fields = [(8, 4), (12, 4), (7, 2), (11, 2), (4, 1), (1, 8), (999, 1 + tid % 1000), (998, 1 + tid // 1000)]
        rec[tid] = struct.pack(">HH", tid, len(fields)) + b"".join(struct.pack(">HH", i, n) for i, n in fields)
    ids = list(range(256, 65536))
    ids2 = ids + ids
    per = 64

    def v9(sets, source_id=0):
        body = b"".join(sets)
        return struct.pack(">HHIIII", 9, len(sets), 1, 1_700_000_000, 0, source_id) + body

    def tset(tids):
        body = b"".join(rec[t] for t in tids)
        return struct.pack(">HH", 0, 4 + len(body)) + body

    waiting = struct.pack(">HH", 300, 4 + 8000) + bytes(8000)          # data for a template never sent
    t0 = time.monotonic()
    sent = 0
    for rnd in range(2):                                                  # the second round: redefinitions
        batch, srcs = [], []
        for e in range(10_000):
            src = (f"10.{e >> 8}.{e & 0xFF}.1", 2055)
            start = (e * per) % len(ids)
            tids = ids2[start:start + per]
            batch += [v9([tset(tids)], source_id=e % 3), v9([waiting, waiting], source_id=e % 3)]
            srcs += [src, src]
            if len(batch) >= 512:
                p.process(DatagramBatch.from_payloads(batch, src=srcs, ts=1.7e9 + sent * 1e-5))
                sent += len(batch)
                batch, srcs = [], []
        # one exporter sends every id
        for k in range(0, len(ids), per):
            batch.append(v9([tset(ids[k:k + per])]))
            srcs.append(("10.0.0.1", 2055))
        p.process(DatagramBatch.from_payloads(batch, src=srcs, ts=1.7e9 + sent * 1e-5))
        sent += len(batch)
    took = time.monotonic() - t0
    gc.collect()
    cache = p.exporters.templates
    print(json.dumps({
        "base_mb": base, "rss_growth_mb": rss_mb() - base, "peak_growth_mb": rss_mb("VmHWM") - base,
        "seconds": took, "datagrams": sent, "exporters": len(p.exporters),
        "exporters_over_limit": p.exporters.dropped["exporters_over_limit"],
        "templates": len(cache.templates), "plans": cache.plans.n, "scopes": len(cache.scope_keys),
        "templates_over_limit": p.exporters.total("templates_over_limit"),
        "templates_received": p.exporters.total("templates"),
        "pending_bytes": int(cache.pending.cols["len"].sum()), "pending_dropped_sets": p.exporters.total("pending_dropped_sets"),
    }))
''')


def test_flood_of_template_ids_from_forged_exporters_stays_bounded():
    """10 000 forged exporters x 64 template ids each (every id 256..65535 with its own layout, so
    every one a new compiled plan), plus 16 KB of data waiting for a template from each, twice; and
    one exporter sending all 65 280 ids. Processed in 512-datagram batches as `listen` does."""
    app.Pipeline(config.load(), app._NullSink()).warm_up()          # kernels compiled and cached here
    out = subprocess.run([sys.executable, "-c", FLOOD], cwd=ROOT, capture_output=True, text=True, timeout=240)
    assert out.returncode == 0, out.stderr[-3000:]
    r = json.loads(out.stdout.strip().splitlines()[-1])
    print(r)
    lim = Limits()
    assert r["exporters"] == lim.max_exporters and r["exporters_over_limit"] > 0
    assert r["templates"] <= lim.max_templates and r["templates_over_limit"] > 0
    assert r["plans"] <= 2 * lim.max_templates
    assert r["scopes"] <= lim.max_exporters * 3
    assert r["pending_bytes"] <= lim.max_pending_bytes and r["pending_dropped_sets"] > 0
    assert r["peak_growth_mb"] < FLOOD_RSS_MB, r


def test_template_sets_remembered_stay_bounded(monkeypatch):
    """The template sets kept byte for byte for the one-call path (ScopeTable.remember_set) are
    forgotten all at once past KNOWN_SETS entries: a flood of ever new sets cannot grow them."""
    p = pipeline()
    cache = p.exporters.templates
    monkeypatch.setattr(cache, "KNOWN_SETS", 4)
    for k in range(10):
        send(p, [templates(range(256, 257 + k))])                             # a set of another length each time
        assert 1 <= len(cache._known) <= 4


def test_a_template_set_that_keeps_changing_stays_bounded():
    """One scope alternating two template sets of the same length (another layout each time): each
    change appends the set's bytes; past twice the live bytes plus 1 MiB they are all forgotten."""
    p = pipeline()
    cache = p.exporters.templates
    wide = [(8, 4), (12, 4), (7, 2), (11, 2), (4, 1), (1, 8), (2, 8)] * 20                # 140 fields
    other = [(12, 4), (8, 4), (7, 2), (11, 2), (4, 1), (1, 8), (2, 8)] * 20
    for k in range(2000):                                                    # ~1.1 MiB appended each 1000
        send(p, [templates(range(256, 258), fields=wide if k % 2 else other)], t=T0 + k)
        assert cache._set_bytes_used <= 2 * cache._set_bytes_live + (1 << 20) + 4096
    assert len(cache._known) == 1
