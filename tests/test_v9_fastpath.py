"""The column-wise fast path for fixed-length v9 / IPFIX templates (cut.cut_fixed over the plan's
compiled program) against the record-by-record decoder (records.emit), its oracle: for random
fixed-length templates (any subset and order of the decoded elements, reduced and wrong sizes,
duplicates, unknown fields) and random records, every FlowBatch column is identical."""
from __future__ import annotations

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from imds_flow import wire
from imds_flow.datagrams import DatagramBatch
from imds_flow.exporters import ExporterTable
from imds_flow.flows import HTTP, HTTP_COLUMNS, COLUMNS, FlowBatch
from imds_flow.wire import v9ipfix
from imds_flow.wire.fields import ELEMENTS, SLOT_KIND
from imds_flow.wire.plans import A_V6_V4, OP_SUM, P_BYTES, P_FIRST, P_SRC, T_UPTIME, PlanTable
from imds_flow.wire.scopes import ScopeTable
from imds_flow.wire.templates import VAR, Template

from .support.build import data_set, ipfix, template_set, v9

URLS = ("/latest/meta-data", "/api/")
_KNOWN = sorted(ELEMENTS)


def _length(kind: str):
    natural = {"a4": st.just(4), "a16": st.just(16), "u": st.integers(1, 8), "s": st.integers(0, 24)}[kind]
    return st.one_of(natural, natural, natural, st.integers(0, 17))   # mostly natural, sometimes not


@st.composite
def fields(draw, version):
    out = []
    for _ in range(draw(st.integers(1, 24))):
        if draw(st.integers(0, 9)) == 0:                             # an element we do not decode
            out.append((0, draw(st.sampled_from([3, 5, 6, 999, 30000])), draw(st.integers(0, 12))))
            continue
        pen, fid = draw(st.sampled_from(_KNOWN))
        if (version == 9 and pen) or (version == 10 and not pen and fid >= 0x8000):
            continue                                                 # not expressible in this version
        out.append((pen, fid, draw(_length(SLOT_KIND[ELEMENTS[(pen, fid)]]))))
    if sum(ln for _, _, ln in out) == 0:
        out.append((0, 4, 1))
    return out


_BYTE = st.one_of(st.integers(0, 255), st.sampled_from([0, 0, 1, 58, 6, 0xFF]))
_TEXT = st.sampled_from([b"/latest/meta-data/iam", b"GET /API/v1", b"\x00" * 8, b"/latest/META-DATA"])


@st.composite
def records(draw, reclen):
    out = []
    for _ in range(draw(st.integers(1, 6))):
        raw = bytearray(draw(st.lists(_BYTE, min_size=reclen, max_size=reclen)))
        if reclen >= 8 and draw(st.booleans()):                     # plant a URL somewhere
            t = draw(_TEXT)[:reclen]
            at = draw(st.integers(0, reclen - len(t)))
            raw[at:at + len(t)] = t
        out.append(bytes(raw))
    return out


def _decode(version, flds, recs, rates, fast):
    ex = ExporterTable(clock=lambda: 0.0, templates=ScopeTable(url_patterns=URLS))
    pkt = v9 if version == 9 else ipfix
    spec = [(pen, fid, 0xFFFF if ln < 0 else ln) for pen, fid, ln in flds]
    spec = [f if f[0] else (f[1], f[2]) for f in spec]
    out = FlowBatch(64)
    tmpl = DatagramBatch.from_payloads([pkt([template_set(version, {300: spec})])], ts=1000.0)
    wire.decode(tmpl, ex.lookup(tmpl.src_hi, tmpl.src_lo, tmpl.sport), ex, out)
    cache = ex.templates
    if rates:
        sampler, rate = zip(*rates)
        cache.set_rates(np.zeros(len(rates), np.int64), np.array(sampler, np.int64), np.array(rate, np.float64))
    dg = DatagramBatch.from_payloads([pkt([data_set(300, recs, pad_to=1)], seq=1)], ts=1001.5)
    old = v9ipfix.FAST_PATH
    v9ipfix.FAST_PATH = fast
    try:
        status = wire.decode(dg, ex.lookup(dg.src_hi, dg.src_lo, dg.sport), ex, out)
    finally:
        v9ipfix.FAST_PATH = old
    return status.tolist(), {name: out.view(name).copy() for name, _ in COLUMNS}


_RATES = st.lists(st.tuples(st.sampled_from([-1, 0, 1, 7, 255]), st.sampled_from([1.0, 0.4, 10.0, 1000.0, 5e9])),
                  max_size=3)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(st.data())
def test_fast_path_equals_record_by_record(data):
    version = data.draw(st.sampled_from([9, 10]))
    flds = data.draw(fields(version))
    recs = data.draw(records(sum(ln for _, _, ln in flds)))
    rates = data.draw(_RATES)
    s_fast, fast = _decode(version, flds, recs, rates, True)
    s_slow, slow = _decode(version, flds, recs, rates, False)
    assert s_fast == s_slow
    assert len(fast["ts"]) == len(recs)
    http = (slow["row_flags"] & HTTP) != 0                  # the HTTP columns hold values only with flag HTTP
    for name, col in slow.items():
        if name in HTTP_COLUMNS:
            col, fast[name] = col[http], fast[name][http]
        np.testing.assert_array_equal(fast[name], col, err_msg=name)     # NaN == NaN here


def test_program_of_a_fixed_template():
    """Fallbacks are decided at compile time; a variable-length layout gets no program."""
    plans = PlanTable()
    fixed = plans.plan(Template(256, ((0, 27, 16), (0, 8, 4), (0, 4, 1), (0, 231, 4), (0, 232, 8), (0, 22, 4))))
    prog = plans.prog[fixed]
    assert prog[P_SRC].tolist() == [A_V6_V4, 0, 16, 16, 4]
    assert prog[P_BYTES].tolist() == [OP_SUM, 21, 4, 25, 8]
    assert prog[P_FIRST].tolist() == [T_UPTIME, 33, 4, -1, 0]
    assert plans.prog_flags[fixed] == 0
    var = plans.plan(Template(257, ((0, 8, 4), (0, 461, VAR))))
    assert plans.reclen[var] == -1 and not plans.prog[var].any()
