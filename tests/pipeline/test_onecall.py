"""The one-call path (onecall.py) against the general path it stands in for: on random batches of
v5 datagrams (hits, suppressed sources, sequence gaps, datagrams too short or whose count overruns
them, unknown versions), of sFlow datagrams (hits by address, URL and header name, suppressed
sources and VLANs, IPv4 and IPv6 agents and sub-agents, datagram and sample sequence gaps, samples
that do not fit, datagrams without an agent) and of v9 and IPFIX datagrams (fixed and variable
layouts, hits by address and URL, sequence gaps, datagrams too short, of a bad length or with a set
longer than what is left, records that overrun their set), the same alerts byte for byte, the same
counters, sequence state, template state, snapshot and summary, also with bytes overwritten at
random; and the batches it must leave to the general path (a new exporter, agent or scope, a
template set that defines something, options data, waiting data the batch would release or expire,
formats mixed, a datagram cut short by the socket) are left untouched, whatever came before them."""
from __future__ import annotations

import collections
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
       '[suppress]\nsource_subnets = ["10.9.0.0/16"]\nvlans = [66]\n')
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


AGENTS = [("192.0.2.7", 0), ("192.0.2.7", 1), ("2001:db8::7", 0)]
PAYLOADS = [b"GET /latest/meta-data/iam/ HTTP/1.1\r\nHost: x\r\n\r\n",                          # URL
            b"PUT /token HTTP/1.1\r\nX-aws-ec2-metadata-token-ttl-seconds: 60\r\n\r\n",       # header
            b"GET /index.html HTTP/1.1\r\nHost: x\r\n\r\n", b"\x16\x03\x01" + bytes(40), b""]


def _sflow(rng: random.Random, seq: dict, src, agent) -> bytes:
    kind = rng.random()
    if kind < 0.05:
        return b"\x00\x00\x00\x05" + bytes(rng.randrange(0, 12))            # no room for an agent
    if kind < 0.08:
        return b"\x00\x00\x00\x07" + bytes(40)                              # sFlow of another version
    samples = []
    for _ in range(rng.randrange(0, 9)):
        k = seq.get((src, agent, "sample"), 0) + (rng.randrange(1, 9) if rng.random() < 0.1 else 1)
        seq[(src, agent, "sample")] = k
        f = build.frame(rng.choice(ADDRESSES), rng.choice(ADDRESSES), rng.randrange(1024, 65536), 80,
                        rng.choice(PAYLOADS), vlan=rng.choice((10, 66)))
        samples.append(build.packet_sample(k, f, rng.choice((64, 128)), rate=rng.choice((1, 512, 4096))))
    if kind < 0.12 and samples:
        samples[-1] = samples[-1][:-6]                                        # a sample that does not fit
    d = seq.get((src, agent), 0) + (rng.randrange(2, 5) if rng.random() < 0.1 else 1)
    seq[(src, agent)] = d
    return build.sflow(samples, d, agent=agent[0], sub_agent=agent[1])


# NetFlow v9 / IPFIX: a fixed layout, a variable one with an HTTP target, sampling options data
_URL = [(8, 4), (12, 4), (7, 2), (11, 2), (4, 1), (1, 8), (2, 8), (461, build.VAR)]
_OPT_SCOPE, _OPT = [(144, 4)], [(34, 4)]
TARGETS = [b"/latest/meta-data/iam/", b"/index.html", b"/LATEST/API/TOKEN", b""]
VERSIONS = {EXPORTERS[0]: 10, EXPORTERS[1]: 9, EXPORTERS[2]: 10}   # what each source exports as v9 / IPFIX


def _templates(version: int, late: bool = False, other: bool = False) -> bytes:
    """The template set of both layouts; `late` adds the one of data that waited, `other` redefines
    257 with another layout."""
    return build.template_set(version, {256: _IPFIX, 257: _IPFIX if other else _URL} | ({300: _IPFIX} if late else {}))


def _flow(rng: random.Random, seq: dict, src, defined: set) -> bytes:
    """A v9 or IPFIX datagram of `src`: data sets of both templates (its first one in each scope
    defines them), now and then their templates resent as they were (the one-call path takes
    those); now and then a datagram too short or of a bad length, a set a record overruns, a set
    longer than the datagram; rarely (most batches stay whole for the one-call path) templates
    resent with the one of data that waited for it, or with a layout changed, options data, data for
    a template not defined yet (it waits)."""
    version = VERSIONS[src]
    domain = 0 if rng.random() < 0.995 else 1
    kind = rng.random()
    if kind < 0.04:
        return bytes((0, version)) + bytes(rng.randrange(0, 22))                    # too short / bad length
    sets = []
    if (src, domain) not in defined or kind < 0.14:
        defined.add((src, domain))
        sets.append(_templates(version, late=kind < 0.045, other=0.045 <= kind < 0.05))   # (re)sent
    records = 0
    for _ in range(rng.randrange(1, 4)):
        if rng.random() < 0.6:
            recs = [build.record(_IPFIX, [rng.choice(ADDRESSES), rng.choice(ADDRESSES), rng.randrange(1024, 65536),
                                          80, 6]) for _ in range(rng.randrange(1, 12))]
            sets.append(build.data_set(256, recs))
        else:
            recs = [build.record(_URL, [rng.choice(ADDRESSES), rng.choice(ADDRESSES), 40000, 80, 6, 600, 3,
                                        rng.choice(TARGETS)]) for _ in range(rng.randrange(1, 6))]
            sets.append(build.data_set(257, recs, pad_to=1))
        records += len(recs)
    odd = rng.random()
    if odd < 0.005:
        sets.append(build.options_template_set(version, 258, _OPT_SCOPE, _OPT))
        sets.append(build.data_set(258, [build.record(_OPT_SCOPE + _OPT, [1, rng.choice((1, 100))])]))
    elif odd < 0.01:
        sets.append(build.data_set(300, [build.record(_IPFIX, ["10.1.2.3", "169.254.169.254", 1, 80, 6])]))
    elif odd < 0.1 and sets[-1][:2] == b"\x01\x01":
        sets[-1] = sets[-1][:2] + (len(sets[-1]) - 3).to_bytes(2, "big") + sets[-1][4:-3]   # a record overruns
    elif odd < 0.13:
        sets.append(b"\x01\x00\x00\x40" + bytes(8))                                     # longer than what is left
    key = (src, domain, "flow")
    q = seq.get(key, 0) + (rng.randrange(1, 40) if rng.random() < 0.1 else 0)
    seq[key] = q + (records if version == 10 else 1)
    return build.ipfix(sets, seq=q, domain=domain) if version == 10 else build.v9(sets, seq=q, source_id=domain)


def _batches(seed: int, mangle: bool = False):
    """(payloads, sources, truncated) per batch: mostly v5, v9 / IPFIX or sFlow from known exporters,
    agents and scopes, now and then a batch the one-call path must decline; with `mangle`, a few
    bytes of every batch's datagrams past their version word overwritten at random."""
    rng = random.Random(seed)
    seq: dict = {}
    known = EXPORTERS[:2]
    agents = {}                                        # the agent each source sends sFlow for now
    defined: set = set()                               # the v9 / IPFIX scopes whose templates were sent
    for b in range(rng.randrange(3, 16)):
        n = rng.randrange(1, 40)
        src = [rng.choice(known) for _ in range(n)]
        fmt = rng.random()
        if fmt < 0.3:
            payloads = [_v5(rng, seq, s) for s in src]
        elif fmt < 0.7:
            payloads = [_flow(rng, seq, s, defined) for s in src]
        else:
            if rng.random() < 0.2:                     # a source that sends for another agent now
                agents[rng.choice(known)] = rng.choice(AGENTS)
            payloads = [_sflow(rng, seq, s, agents.setdefault(s, AGENTS[0])) for s in src]
            if rng.random() < 0.1:                     # two agents behind one source in a batch
                payloads[rng.randrange(n)] = _sflow(rng, seq, src[0], rng.choice(AGENTS))
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
        elif odd < 0.35:
            payloads[rng.randrange(n)] = rng.choice((_v5(rng, seq, src[0]),   # formats mixed
                                                     _sflow(rng, seq, src[0], agents.get(src[0], AGENTS[0]))))
        if mangle:
            for _ in range(rng.randrange(1, 5)):
                d = rng.randrange(n)
                if len(payloads[d]) > 2:
                    b = bytearray(payloads[d])
                    b[rng.randrange(2, len(b))] = rng.randrange(256)
                    payloads[d] = bytes(b)
        yield payloads, src, truncated


def _run(seed: int, onecall: bool, cfg: str = CFG, mangle: bool = False, ticks: bool = False):
    p = app.Pipeline(config.parse(cfg), AlertList(), clock=lambda: T0)
    taken = {"v5": 0, "sflow": 0, "ipfix": 0, "folded": 0}  # batches the one-call path took, by format;
    run = p.onecall.run                                    # and those whose hits it folded too

    def counted(dg, *args):
        got = run(dg, *args) if onecall else None
        if got is not None:
            taken[{5: "v5", 0: "sflow"}.get(int(dg.buf[dg.offs[0] + 1]), "ipfix")] += 1
            taken["folded"] += p.onecall.grouped >= 0
        return got
    p.onecall.run = counted
    rows = []
    for k, (payloads, src, truncated) in enumerate(_batches(seed, mangle)):
        p.process(DatagramBatch.from_payloads(payloads, src=src, ts=T0 + k * 0.25), truncated)
        if ticks and k % 3 == 2:              # windows closed, pending alerts released, fold keys dropped
            p.tick(T0 + k * 0.25)
        kept = p.batch.rows[: p.batch.n]
        rows.append([kept[name].tobytes() for name in V5_FIELDS])
    return dict(outcome(p), rows=rows), taken


def outcome(p) -> dict:
    """What a pipeline leaves (closed): alerts, exporter, sequence and template state, snapshot, summary."""
    m = len(p.exporters)
    state = (p.exporters.counters[:m].tolist(), p.exporters.seq_next[:m].tolist(), p.exporters.seq_seen[:m].tolist(),
             p.exporters.seq_lost[:m].tolist(), p.exporters.last_seen[:m].tolist(),
             p.exporters.sflow.src_key.tolist(), p.exporters.sflow.src_next.tolist(),
             [getattr(p.exporters.templates, name).tolist() for name in ("seq_next", "seq_seen", "seq_lost",
                                                                         "seq_count")],
             sorted((key, pid, received) for key, (pid, received, _) in p.exporters.templates.templates.items()),
             p.exporters.templates.dirty)
    snapshot, summary = p.snapshot(), p.summary(latency=False)
    p.close()
    return {"alerts": getattr(p.sink, "alerts", None), "state": state, "snapshot": snapshot, "summary": summary,
            "dropped": dict(p.exporters.dropped)}


@settings(max_examples=40, deadline=None)
@given(st.integers(0, 2 ** 32 - 1))
def test_the_one_call_path_leaves_what_the_general_path_leaves(seed):
    one, taken = _run(seed, onecall=True)
    general, _ = _run(seed, onecall=False)
    assert one == general


@settings(max_examples=30, deadline=None)
@given(st.integers(0, 2 ** 32 - 1))
def test_bytes_overwritten_at_random_leave_the_same_too(seed):
    """Any byte of a datagram may be wrong (a length, a count, a set id, an address, a template
    field): the one-call path takes or declines such batches exactly as the general path decodes
    them, counts and all; test_it_takes_known_batches_and_declines_the_rest checks it takes some."""
    one, _ = _run(seed, onecall=True, mangle=True)
    general, _ = _run(seed, onecall=False, mangle=True)
    assert one == general


@pytest.mark.parametrize("alerts", ["[alerts]\nfold_window_seconds = 1.0\n", "[limits]\nmax_fold_keys = 2\n",
                                    "[alerts]\nfold_window_seconds = 0.0\n"])
def test_hits_folded_in_the_kernel_leave_what_add_hits_leaves(alerts):
    """The one-call kernels fold a batch's hits themselves (kernels.fold_batch); with windows that
    close and reopen every few batches (1 s, batches 0.25 s apart), with the fold keys' limit
    reached, and with no folding at all, with and without the loop's tick between batches (which
    releases pending alerts and drops closed keys), the alerts, counters and state are the general
    path's."""
    folded = 0
    for seed in range(8):
        one, taken = _run(seed, True, CFG + alerts, ticks=seed % 2 == 1)
        general, _ = _run(seed, False, CFG + alerts, ticks=seed % 2 == 1)
        assert one == general
        folded += taken["folded"]
    assert folded > 0 if "= 0.0" not in alerts else folded == 0


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


def _one(p, payloads, src=EXPORTERS[0]):
    return p.onecall.run(DatagramBatch.from_payloads(payloads, src=src, ts=T0), p.exporters, p.batch, p.detector,
                         p.folder)


def test_it_takes_known_batches_and_declines_the_rest():
    """Not a vacuous comparison: the one-call path takes many v5, sFlow and IPFIX batches of the
    random runs above, and leaves the general path a new exporter, agent or scope, a template set,
    data for a template not defined or expired, formats mixed and a truncated datagram, changing
    nothing."""
    taken, mangled = collections.Counter(), collections.Counter()
    for seed in range(20):
        taken.update(_run(seed, onecall=True)[1])
        mangled.update(_run(seed, onecall=True, mangle=True)[1])
    assert taken["v5"] >= 30 and taken["sflow"] >= 12 and taken["ipfix"] >= 6 and taken["folded"] >= 20
    assert mangled["v5"] >= 12 and mangled["sflow"] >= 7 and mangled["ipfix"] >= 7
    p = app.Pipeline(config.parse(CFG), AlertList(), clock=lambda: T0)
    v5 = build.v5([("10.1.2.3", "169.254.169.254", 1, 80)])
    sflow = build.sflow([build.packet_sample(1, build.frame("10.1.2.3", "169.254.169.254", 4000, 80))])
    assert _one(p, [v5]) is None and _one(p, [sflow]) is None                # not registered yet
    p.process(DatagramBatch.from_payloads([v5], src=EXPORTERS[0], ts=T0))
    assert _one(p, [v5]) == (0, 1, 0)
    assert _one(p, [sflow]) is None                                          # its agent is not known yet
    p.process(DatagramBatch.from_payloads([sflow], src=EXPORTERS[0], ts=T0))
    assert _one(p, [sflow, sflow]) == (0, 2, 0)
    before = p.exporters.counters.copy(), p.exporters.seq_next.copy(), p.exporters.sflow.src_next.copy()
    other_agent = build.sflow([build.packet_sample(2, build.frame("10.1.2.3", "169.254.169.254", 4000, 80))],
                              sub_agent=3)
    for payloads in ([v5, IPFIX], [IPFIX], [v5, sflow], [sflow, v5], [sflow, other_agent]):
        assert _one(p, payloads) is None
    assert _one(p, [v5], EXPORTERS[1]) is None and _one(p, [sflow], EXPORTERS[1]) is None
    assert (p.exporters.counters == before[0]).all() and (p.exporters.seq_next == before[1]).all()
    assert (p.exporters.sflow.src_next == before[2]).all()
    p.process(DatagramBatch.from_payloads([other_agent], src=EXPORTERS[0], ts=T0))
    assert _one(p, [sflow, other_agent, sflow]) == (0, 3, 0)                 # two agents behind one source
    data = build.data_set(256, [build.record(_IPFIX, ["10.1.2.3", "169.254.169.254", 4000, 80, 6])])
    p.process(DatagramBatch.from_payloads([IPFIX], src=EXPORTERS[0], ts=T0))
    assert _one(p, [build.ipfix([data], seq=1)] * 2) == (0, 2, 0)           # its template is known now
    assert _one(p, [IPFIX]) == (0, 1, 0)                                     # its template set resent as it was
    cache = p.exporters.templates
    cache.dirty = False
    again = DatagramBatch.from_payloads([IPFIX], src=EXPORTERS[0], ts=T0 + 61.0)
    assert p.onecall.run(again, p.exporters, p.batch, p.detector, p.folder) == (0, 1, 0)
    assert cache.dirty and [received for _, received, _ in cache.templates.values()] == [T0 + 61.0]   # to be saved
    before = p.exporters.counters.copy(), p.exporters.templates.seq_next.copy()
    changed = build.template_set(10, {256: _IPFIX[:4]})
    swapped = build.template_set(10, {256: [_IPFIX[1], _IPFIX[0]] + _IPFIX[2:]})
    for payloads in ([build.ipfix([changed, data])],                         # a template set that changes one
                     [build.ipfix([swapped, data])],                         # ... in as many bytes
                     [build.ipfix([build.template_set(10, {256: _IPFIX, 258: _URL}), data])],   # or adds one
                     [build.ipfix([data], domain=7)],                        # a new observation domain
                     [build.ipfix([build.data_set(300, [bytes(13)])])],      # a template not defined
                     [build.v9([data])]):                                    # v9: another scope
        assert _one(p, payloads) is None
    late = DatagramBatch.from_payloads([build.ipfix([data], seq=3)], src=EXPORTERS[0], ts=T0 + 61.0 + 1801.0)
    assert p.onecall.run(late, p.exporters, p.batch, p.detector, p.folder) is None    # past templates.lifetime_seconds
    assert (p.exporters.counters == before[0]).all() and (p.exporters.templates.seq_next == before[1]).all()
    p.process(DatagramBatch.from_payloads([build.ipfix([swapped])], src=EXPORTERS[0], ts=T0 + 62.0))
    assert _one(p, [IPFIX]) is None                                          # the set it remembers no longer holds


def test_data_waiting_for_a_template_holds_back_only_what_would_release_or_expire_it():
    """Data for a template not held waits (wire.pending); the one-call path still takes other
    batches meanwhile, but not a resent template set that would release it (its template expired
    since it was last sent), nor a batch that would expire it (templates.pending_max_seconds)."""
    p = app.Pipeline(config.parse(CFG), AlertList(), clock=lambda: T0)
    data = build.data_set(256, [build.record(_IPFIX, ["10.1.2.3", "169.254.169.254", 4000, 80, 6])])
    for src in EXPORTERS[:2]:
        p.process(DatagramBatch.from_payloads([IPFIX], src=src, ts=T0))
    p.process(DatagramBatch.from_payloads([build.ipfix([data], seq=1)], src=EXPORTERS[0], ts=T0 + 1801.0))
    pending = p.exporters.templates.pending
    assert len(pending) == 1                                                 # its template expired: it waits
    later = [build.ipfix([data], seq=1)]
    other = DatagramBatch.from_payloads(later, src=EXPORTERS[1], ts=T0 + 1801.0)
    assert p.onecall.run(other, p.exporters, p.batch, p.detector, p.folder) is None   # the other one's expired too
    p.process(DatagramBatch.from_payloads([IPFIX], src=EXPORTERS[1], ts=T0 + 1801.0))
    taken = p.onecall.run(DatagramBatch.from_payloads(later, src=EXPORTERS[1], ts=T0 + 1802.0), p.exporters,
                          p.batch, p.detector, p.folder)
    assert taken == (0, 1, 0) and len(pending) == 1                          # taken, the waiting data untouched
    resent = DatagramBatch.from_payloads([build.ipfix([build.template_set(10, {256: _IPFIX})])], src=EXPORTERS[0],
                                         ts=T0 + 1802.0)
    assert p.onecall.run(resent, p.exporters, p.batch, p.detector, p.folder) is None   # it would release the data
    p.process(resent)
    assert len(pending) == 0 and p.exporters.total("sets_late") == 1
    p.process(DatagramBatch.from_payloads([build.ipfix([build.data_set(300, [bytes(13)])])], src=EXPORTERS[1],
                                          ts=T0 + 1803.0))
    assert len(pending) == 1
    expiring = DatagramBatch.from_payloads(later, src=EXPORTERS[1], ts=T0 + 1803.0 + 61.0)
    assert p.onecall.run(expiring, p.exporters, p.batch, p.detector, p.folder) is None   # it would expire the data
