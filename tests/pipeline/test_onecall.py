"""The one-call v5 path (onecall.py) against the general path it stands in for: on random batches of
v5 datagrams (hits, suppressed sources, sequence gaps, datagrams too short or whose count overruns
them, unknown versions), the same alerts byte for byte, the same counters, sequence state, snapshot
and summary; and the batches it must leave to the general path (a new exporter, IPFIX, a datagram
cut short by the socket) are left untouched, whatever came before them."""
from __future__ import annotations

import random

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from imds_flow import app, build, config
from imds_flow.datagrams import DatagramBatch
from imds_flow.flows import ROW
from tests.support.alerts import AlertList

T0 = 1_700_000_000.0
CFG = ('[[endpoints]]\nname = "imds"\naddress = "169.254.169.254"\n'
       '[suppress]\nsource_subnets = ["10.9.0.0/16"]\n')
EXPORTERS = [("192.0.2.1", 2055), ("192.0.2.1", 2056), ("198.51.100.7", 9995)]
ADDRESSES = ["169.254.169.254", "10.1.2.3", "10.9.4.4", "192.0.2.77"]
# the row fields a v5 record sets (NAT and HTTP fields stay unset, as row_flags says, in either path)
V5_FIELDS = [name for name in ROW.names if not name.startswith(("nsrc", "ndst", "http", "url_", "host", "headers"))]
_IPFIX = [(8, 4), (12, 4), (7, 2), (11, 2), (4, 1)]
IPFIX = build.ipfix([build.template_set(10, {256: _IPFIX}),
                     build.data_set(256, [build.record(_IPFIX, ["10.1.2.3", "169.254.169.254", 4000, 80, 6])])])


def _v5(rng: random.Random, seq: dict, src) -> bytes:
    kind = rng.random()
    if kind < 0.06:
        return b"\x00\x05" + bytes(rng.randrange(0, 22))                     # too short
    if kind < 0.1:
        return build.v5([("10.1.2.3", "169.254.169.254", 1, 80)])[:-10]        # count overruns it
    if kind < 0.13:
        return b"\x00\x07" + bytes(40)                                        # unknown version
    records = [(rng.choice(ADDRESSES), rng.choice(ADDRESSES), rng.randrange(1, 65536), rng.choice((80, 443)))
               for _ in range(rng.randrange(1, 31))]
    s = seq.get(src, 0) + (rng.randrange(1, 50) if rng.random() < 0.1 else 0)   # now and then a gap
    seq[src] = s + len(records)
    return build.v5(records, seq=s, uptime=100_000 + rng.randrange(1000))


def _batches(seed: int):
    """(payloads, sources, truncated) per batch: mostly v5 from known exporters, now and then a batch
    the one-call path must decline."""
    rng = random.Random(seed)
    seq: dict = {}
    known = EXPORTERS[:2]
    for b in range(rng.randrange(3, 12)):
        n = rng.randrange(1, 40)
        src = [rng.choice(known) for _ in range(n)]
        payloads = [_v5(rng, seq, s) for s in src]
        truncated = None
        odd = rng.random()
        if odd < 0.15 and len(known) < len(EXPORTERS):
            known = EXPORTERS[: len(known) + 1]                               # a new exporter
            src[-1] = known[-1]
        elif odd < 0.25:
            payloads[rng.randrange(n)] = IPFIX                                # another format
        elif odd < 0.3:
            truncated = np.zeros(n, np.bool_)
            truncated[rng.randrange(n)] = True                                # cut short by the socket
        yield payloads, src, truncated


def _run(seed: int, onecall: bool, cfg: str = CFG):
    p = app.Pipeline(config.parse(cfg), AlertList(), clock=lambda: T0)
    taken = [0]
    run = p.onecall.run

    def counted(*args):
        got = run(*args) if onecall else None
        taken[0] += got is not None
        return got
    p.onecall.run = counted
    rows = []
    for k, (payloads, src, truncated) in enumerate(_batches(seed)):
        p.process(DatagramBatch.from_payloads(payloads, src=src, ts=T0 + k * 0.25), truncated)
        kept = p.batch.rows[: p.batch.n]
        rows.append([kept[name].tobytes() for name in V5_FIELDS])
    state = (p.exporters.counters[: len(p.exporters)].tolist(), p.exporters.seq_next[: len(p.exporters)].tolist(),
             p.exporters.seq_seen[: len(p.exporters)].tolist(), p.exporters.seq_lost[: len(p.exporters)].tolist(),
             p.exporters.last_seen[: len(p.exporters)].tolist())
    snapshot, summary = p.snapshot(), p.summary(latency=False)
    p.close()
    return {"alerts": p.sink.alerts, "rows": rows, "state": state, "snapshot": snapshot, "summary": summary,
            "dropped": dict(p.exporters.dropped)}, taken[0]


@settings(max_examples=40, deadline=None)
@given(st.integers(0, 2 ** 32 - 1))
def test_the_one_call_path_leaves_what_the_general_path_leaves(seed):
    one, taken = _run(seed, onecall=True)
    general, _ = _run(seed, onecall=False)
    assert one == general


@pytest.mark.parametrize("limits", ['[listen]\nallowed_exporters = ["192.0.2.0/24"]\n', "[limits]\nmax_exporters = 2\n"])
def test_sources_refused_stay_refused(limits):
    """A source outside listen.allowed_exporters or past limits.max_exporters never gets a row, so
    the one-call path never takes its batches: the counters of refused datagrams agree."""
    dropped = 0
    for seed in range(6):
        one, _ = _run(seed, True, CFG + limits)
        general, _ = _run(seed, False, CFG + limits)
        assert one == general
        dropped += sum(one["dropped"].values())
    assert dropped > 0


def test_it_takes_known_v5_batches_and_declines_the_rest():
    """Not a vacuous comparison: the one-call path takes most batches of the random runs above, and
    leaves the general path a new exporter, another format and a truncated datagram."""
    taken = sum(_run(seed, onecall=True)[1] for seed in range(20))
    assert taken >= 60
    p = app.Pipeline(config.parse(CFG), AlertList(), clock=lambda: T0)
    v5 = build.v5([("10.1.2.3", "169.254.169.254", 1, 80)])
    one = DatagramBatch.from_payloads([v5], src=EXPORTERS[0], ts=T0)
    assert p.onecall.run(one, p.exporters, p.batch, p.detector) is None           # not registered yet
    p.process(one)
    assert p.onecall.run(DatagramBatch.from_payloads([v5], src=EXPORTERS[0], ts=T0), p.exporters, p.batch,
                         p.detector) == (0, 1, 0)
    before = p.exporters.counters.copy(), p.exporters.seq_next.copy()
    for payloads in ([v5, IPFIX], [IPFIX]):
        assert p.onecall.run(DatagramBatch.from_payloads(payloads, src=EXPORTERS[0], ts=T0), p.exporters, p.batch,
                             p.detector) is None
    assert p.onecall.run(DatagramBatch.from_payloads([v5], src=EXPORTERS[1], ts=T0), p.exporters, p.batch,
                         p.detector) is None
    assert (p.exporters.counters == before[0]).all() and (p.exporters.seq_next == before[1]).all()
