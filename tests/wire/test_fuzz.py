"""Decoders are total (STYLE 7): any bytes give records or a DecodeError subclass / a counted status,
never another exception, for v5, v9 and IPFIX, through wire.decode_one, the batch API and the whole
Pipeline; and mutated vendor packets leave the state able to decode valid packets exactly as a
fresh collector does. The long-running version of this is fuzz/fuzz_decode.py (atheris).

Bounded for CI; IMDS_FLOW_FUZZ_SCALE=N multiplies example counts and mutants (e.g. 20 for a soak).
"""
from __future__ import annotations

import os
import random
import struct
import sys
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from imds_flow import app, config, wire
from imds_flow.datagrams import DatagramBatch
from imds_flow.exporters import ExporterTable
from imds_flow.flows import HTTP, LATE, FlowBatch
from imds_flow.wire import DecodeError, REASONS
from imds_flow import build
from tests.support import corpus, mutate

SCALE = int(os.environ.get("IMDS_FLOW_FUZZ_SCALE", "1"))
SETTINGS = settings(max_examples=60 * SCALE, deadline=None, derandomize=SCALE == 1,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
EXPORTER = ("192.0.2.1", 2055)
CANARY_SRC = ("203.0.113.9", 4739)
T0 = 1_700_000_000.0

corpus.require(mutate.VENDORS)


def decode_one_total(data: bytes, state=None):
    """decode_one, where a DecodeError is an answer too; anything else propagates."""
    try:
        return wire.decode_one(data, state)
    except DecodeError as e:
        assert e.reason in REASONS
        return None


def decode_batch_total(payloads: list[bytes], table: ExporterTable | None = None) -> np.ndarray:
    table = table if table is not None else ExporterTable(clock=lambda: T0)
    dg = DatagramBatch.from_payloads(payloads, src=EXPORTER, ts=T0)
    out = FlowBatch(64)
    status = wire.decode(dg, table.lookup(dg.src_hi, dg.src_lo, dg.sport), table, out)
    assert status.shape == (len(payloads),)
    assert ((status >= 0) & (status < len(REASONS))).all()
    return status


def pipeline() -> app.Pipeline:
    return app.Pipeline(config.load(), app._NullSink(), clock=lambda: T0, compact=False)


# --- a canary: a valid packet whose records we know ------------------------------------------------

_FIELDS = [(8, 4), (12, 4), (7, 2), (11, 2), (4, 1), (1, 8), (2, 8)]
_FLOWS = [("10.9.0.1", "169.254.169.254", 40000), ("10.9.0.2", "10.9.0.3", 443), ("10.9.0.4", "10.9.0.5", 53)]


def canary(version: int = 10, tid: int = 300, domain: int = 7) -> bytes:
    recs = [build.record(_FIELDS, [s, d, p, 80, 6, 1000, 10]) for s, d, p in _FLOWS]
    sets = [build.template_set(version, {tid: _FIELDS}), build.data_set(tid, recs)]
    return build.ipfix(sets, domain=domain) if version == 10 else build.v9(sets, source_id=domain)


def _v4(a: str) -> int:
    return 0xFFFF_0000_0000 | int.from_bytes(bytes(int(x) for x in a.split(".")), "big")


def assert_canary(p: app.Pipeline, src=CANARY_SRC, version: int = 10, tid: int = 300) -> None:
    p.process(DatagramBatch.from_payloads([canary(version, tid)], src=src, ts=T0))
    c, n = p.batch.cols, p.batch.n
    got = [(int(c.src_lo[i]), int(c.dst_lo[i]), int(c.sport[i]), int(c.bytes[i])) for i in range(n)]
    assert got == [(_v4(s), _v4(d), port, 1000) for s, d, port in _FLOWS]


# --- hypothesis: arbitrary bytes -----------------------------------------------------------------

def _with_version(draw_bytes: bytes, version: int) -> bytes:
    return struct.pack(">H", version) + draw_bytes


@SETTINGS
@given(st.binary(max_size=600), st.sampled_from([None, 1, 5, 9, 10, 0xFFFF]))
def test_any_bytes_decode_one(data, version):
    if version is not None:
        data = _with_version(data, version)
    out = decode_one_total(data)
    if out is not None:
        assert 0 <= out.n <= out.capacity


@SETTINGS
@given(st.lists(st.tuples(st.binary(max_size=300), st.sampled_from([5, 9, 10])), min_size=1, max_size=8))
def test_any_bytes_batch(items):
    decode_batch_total([_with_version(b, v) for b, v in items])


# --- hypothesis: structured v9 / IPFIX with random templates, then damaged ------------------------

_IDS = [1, 2, 4, 7, 8, 10, 11, 12, 14, 21, 22, 27, 28, 32, 34, 48, 58, 59, 85, 86, 150, 152, 153, 156, 158, 160,
        180, 225, 226, 231, 232, 243, 245, 281, 302, 305, 306, 309, 310, 459, 460, 461, 999, 40001, 57652, 57659,
        57832]
_LENGTHS = [0, 1, 2, 3, 4, 5, 8, 9, 16, 17, 255, 1000, 0xFFFF]
_field = st.one_of(st.tuples(st.sampled_from(_IDS), st.sampled_from(_LENGTHS)),
                   st.tuples(st.sampled_from([9, 3054, 5951, 15397, 35632]), st.integers(0, 400), st.sampled_from(_LENGTHS)))
_template = st.lists(_field, max_size=10)


@st.composite
def packets(draw):
    """(version, templates packet, data packet) from one exporter: random layouts, random data
    sets for defined and undefined ids, an options template, and maybe damage."""
    version = draw(st.sampled_from([9, 10]))
    tids = draw(st.lists(st.integers(256, 270), min_size=1, max_size=4, unique=True))
    layouts = {t: draw(_template) for t in tids}
    if version == 9:
        layouts = {t: [f[-2:] for f in fs] for t, fs in layouts.items()}   # no enterprise fields in v9
    sets = [build.template_set(version, layouts)]
    if draw(st.booleans()):
        opt_id = draw(st.integers(256, 270))
        scope = [(draw(st.sampled_from([1, 2, 149])), draw(st.sampled_from([0, 2, 4])))]
        opts = [(draw(st.sampled_from([34, 48, 50, 305, 306, 309, 310, 302])), draw(st.sampled_from([1, 2, 4, 8])))
                for _ in range(draw(st.integers(0, 4)))]
        sets.append(build.options_template_set(version, opt_id, scope, opts))
    data = [build.data_set(draw(st.sampled_from(tids + [300, 65535])), [draw(st.binary(max_size=200))])
            for _ in range(draw(st.integers(1, 4)))]
    header = build.ipfix if version == 10 else build.v9
    tpl, dat = header(sets), header(data)
    mixed = header(sets + data if draw(st.booleans()) else data + sets)
    out = []
    for p in (tpl, dat, mixed):
        how = draw(st.sampled_from(["none", "cut", "flip", "len"]))
        if how == "cut":
            p = p[:draw(st.integers(0, len(p)))]
        elif how == "flip":
            p = mutate.flip_bits(p, random.Random(draw(st.integers(0, 2**32))), draw(st.integers(1, 8)))
        elif how == "len":
            locs = mutate.fields_of(p)
            if locs:
                p = mutate.set_u16(p, draw(st.sampled_from(locs)).off, draw(st.sampled_from([0, 1, 4, 0xFFFF])))
        out.append(p)
    return version, out


@SETTINGS
@given(packets())
def test_templated_packets_decode_one_with_state(pk):
    _, (tpl, dat, mixed) = pk
    state = wire._OneExporter()
    for p in (tpl, dat, mixed, dat):
        out = decode_one_total(p, state)
        if out is not None:
            assert 0 <= out.n <= out.capacity


@SETTINGS
@given(packets())
def test_templated_packets_batch_and_pipeline(pk):
    _, (tpl, dat, mixed) = pk
    decode_batch_total([tpl, dat, mixed, dat, tpl])
    p = pipeline()
    p.process(DatagramBatch.from_payloads([dat, tpl, mixed, dat], src=EXPORTER, ts=T0))
    p.process(DatagramBatch.from_payloads([mixed], src=EXPORTER, ts=T0 + 1))
    p.tick(T0 + 3600)
    assert_canary(p)
    assert_canary(p, src=EXPORTER, tid=301)          # the exporter that sent the junk still decodes


# --- HTTP strings of flow records: a host or target never read past its bytes ---------------------

_HTTP = [(8, 4), (12, 4), (4, 1), (459, build.VAR), (460, build.VAR), (461, build.VAR)]
_HOST = b"169.254.169.254"


def _http_variants() -> tuple[bytes, list[bytes]]:
    """(the template datagram, data datagrams): one IPFIX record with method, host and target, cut at
    every length and with the host's length set to values that run past the record, the set and
    the datagram (1-byte and 3-byte length forms)."""
    rec = build.record(_HTTP, ["10.1.2.3", "169.254.169.254", 6, b"PUT", _HOST, b"/latest/api/token"])
    good = build.ipfix([build.data_set(300, [rec])])
    at = good.index(_HOST) - 1                                       # the host's length byte
    out = [good] + [good[:k] for k in range(len(good))]
    out += [good[:at] + bytes([v]) + good[at + 1:] for v in (0, 1, 14, 16, 17, 30, 40, 254, 255)]
    out += [good[:at] + b"\xff" + struct.pack(">H", v) + good[at + 1:] for v in (0, 15, 16, 100, 0xFFFF)]
    return build.ipfix([build.template_set(10, {300: _HTTP})]), out


def _http_rows(out: FlowBatch, data: bytes) -> list[bytes]:
    """Every HTTP row's host, after checking that its host and target lie inside the bytes they
    index: the datagram itself (exactly its length here), or for a LATE row the pending buffer."""
    c, hosts = out.cols, []
    for i in np.flatnonzero(out.view("row_flags") & HTTP).tolist():
        buf = out.late_buf if c.row_flags[i] & LATE else out.buf
        if not c.row_flags[i] & LATE:
            assert len(buf) == len(data)
        for off, ln in ((int(c.url_off[i]), int(c.url_len[i])), (int(c.host_off[i]), int(c.host_len[i]))):
            assert 0 <= off and 0 <= ln and off + ln <= len(buf)
        hosts.append(bytes(buf[int(c.host_off[i]): int(c.host_off[i]) + int(c.host_len[i])]))
    return hosts


@pytest.mark.parametrize("late", [False, True])
def test_http_host_past_its_record_is_never_read(late):
    """IE 460 httpRequestHost (and 461 after it) with lengths past the record, the set or the datagram,
    decoded on time and after waiting for the template (pending buffer): a counted status, rows
    whose strings lie inside their bytes, never an exception."""
    tpl, variants = _http_variants()
    for k, data in enumerate(variants):
        table = ExporterTable(clock=lambda: T0)
        out = FlowBatch(8)
        order = [data, tpl] if late else [tpl, data]
        for payload in order:
            dg = DatagramBatch.from_payloads([payload], src=EXPORTER, ts=T0)
            status = wire.decode(dg, table.lookup(dg.src_hi, dg.src_lo, dg.sport), table, out)
            assert 0 <= status[0] < len(REASONS)
        hosts = _http_rows(out, order[-1])
        if k == 0:                                                   # the undamaged record
            assert hosts == [_HOST] and bool(out.cols.row_flags[0] & LATE) == late


# --- the vendor corpus, mutated, through the Pipeline in sequence order ---------------------------

SEQUENCES = mutate.vendor_sequences()


def _records(p: app.Pipeline) -> list[tuple]:
    c, n = p.batch.cols, p.batch.n
    return [(int(c.src_lo[i]), int(c.dst_lo[i]), int(c.sport[i]), int(c.dport[i]), int(c.proto[i]),
             int(c.bytes[i]), int(c.packets[i])) for i in range(n)]


def _feed(p: app.Pipeline, payloads: list[bytes], t: float) -> list[list[tuple]]:
    out = []
    for q in payloads:
        p.process(DatagramBatch.from_payloads([q], src=EXPORTER, ts=t))
        out.append(_records(p))
    return out


def _mutants(q: bytes, rng: random.Random) -> list[bytes]:
    cuts = None if len(q) <= 200 * SCALE else 24 * SCALE
    return mutate.mutants(q, rng, flips=8 * SCALE, cuts=cuts)


@pytest.mark.parametrize("name,payloads", SEQUENCES, ids=[s[0] for s in SEQUENCES])
def test_vendor_sequence_mutants_do_not_poison_state(name, payloads):
    """Every packet's mutants (bit flips, truncations, lengths 0 / 65535 / +-1, template ids given to
    other layouts), in sequence order, in one batch before the packet itself; then, with what waited
    expired, the original sequence decodes exactly as on a fresh pipeline, and so does a canary."""
    rng = random.Random(name)
    clean = _feed(pipeline(), payloads, T0)
    p = pipeline()
    t = T0
    for q in payloads:
        t += 1
        batch = _mutants(q, rng) + [q]
        p.process(DatagramBatch.from_payloads(batch, src=EXPORTER, ts=t))
        for m in batch[:: max(1, len(batch) // 8)]:
            decode_one_total(m)
    assert_canary(p)
    p.tick(t + 3600)                                   # templates and pending data forgotten
    assert _feed(p, payloads, t + 3601) == clean
    assert_canary(p, src=EXPORTER, tid=0xFFFF)


def test_vendor_packets_truncated_at_every_length():
    """Every vendor packet cut at every length, one batch per packet after its sequence's templates."""
    p = pipeline()
    t = T0
    for _, payloads in SEQUENCES[:: max(1, 4 // SCALE)]:
        for q in payloads:
            t += 1
            p.process(DatagramBatch.from_payloads(mutate.truncations(q) + [q], src=EXPORTER, ts=t))
    assert_canary(p)


def test_template_ids_reused_with_other_layouts():
    """Every template in the corpus sent with another template's id, then that id's data: decoded
    over the wrong layout (garbage records are allowed), never an exception or a poisoned state."""
    rng = random.Random(7)
    p = pipeline()
    t = T0
    for _, payloads in SEQUENCES:
        for q in payloads:
            for m in mutate.reuse_template_ids(q, rng):
                t += 1
                p.process(DatagramBatch.from_payloads([m] + payloads, src=EXPORTER, ts=t))
    assert_canary(p)


def test_fuzz_harness_runs_its_seeds(monkeypatch):
    """fuzz/fuzz_decode.py's target on the seed corpus and a few mutants (no atheris needed)."""
    monkeypatch.syspath_prepend(str(Path(__file__).resolve().parents[2] / "fuzz"))
    monkeypatch.setenv("IMDS_FLOW_FUZZ_BOUNDSCHECK", "0")
    sys.modules.pop("fuzz_decode", None)
    import fuzz_decode
    rng = random.Random(3)
    seeds = [q for ps in mutate.vendor_payloads().values() for q in ps]
    for q in seeds + [mutate.flip_bits(rng.choice(seeds), rng, 4) for _ in range(50 * SCALE)]:
        fuzz_decode.test_one_input(q)
