"""The v9 / IPFIX record decoder (wire/records.py, through wire.decode) against its slow oracle
(tests/support/records_oracle.py): for random fixed-length templates over every element we decode
(natural and odd field lengths, unknown elements, planted URLs, sampling rates from options data),
every column of every record must equal the oracle's. Packet sections and the HTTP method are left
to the packet kernel's own oracle tests (test_packet.py).
"""
from __future__ import annotations

import ipaddress
import math

import numpy as np
from hypothesis import HealthCheck, given, settings, strategies as st

from imds_flow import config, wire
from imds_flow.datagrams import DatagramBatch
from imds_flow.detect import Detector
from imds_flow.exporters import ExporterTable
from imds_flow.flows import COLUMNS, NAT_DST, NAT_SRC, FlowBatch, HTTP_COLUMNS
from imds_flow.wire.fields import ELEMENTS, SLOT_KIND
from imds_flow.wire.scopes import ScopeTable

from imds_flow.build import data_set, ipfix, template_set, v9
from tests.support.oracle import addr_str, ip_of
from tests.support.records_oracle import decode_record

URLS = ("/latest/meta-data", "/api/")
_KNOWN = sorted(k for k, name in ELEMENTS.items() if name not in ("http_method", "section_ip", "section_l2",
                                                                   "section_payload"))
_UPTIME, _SECS = 100_000, 1_700_000_000                   # the headers build.v9 / build.ipfix write


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


def _decode(version, flds, recs, rates, keep=None):
    ex = ExporterTable(clock=lambda: 0.0, templates=ScopeTable(url_patterns=URLS))
    pkt = v9 if version == 9 else ipfix
    spec = [f if f[0] else (f[1], f[2]) for f in flds]
    out = FlowBatch(64)
    tmpl = DatagramBatch.from_payloads([pkt([template_set(version, {300: spec})])], ts=1000.0)
    wire.decode(tmpl, ex.lookup(tmpl.src_hi, tmpl.src_lo, tmpl.sport), ex, out)
    cache = ex.templates
    if rates:
        sampler, rate = zip(*rates)
        cache.set_rates(np.zeros(len(rates), np.int64), np.array(sampler, np.int64), np.array(rate, np.float64))
    dg = DatagramBatch.from_payloads([pkt([data_set(300, recs, pad_to=1)], seq=1)], ts=1001.5)
    ids = ex.lookup(dg.src_hi, dg.src_lo, dg.sport)
    status = wire.decode(dg, ids, ex, out, keep=keep)
    return status.tolist(), int(ids[0]), {name: out.view(name).copy() for name, _ in COLUMNS}


_RATES = st.lists(st.tuples(st.sampled_from([-1, 0, 1, 7, 255]), st.sampled_from([1.0, 0.4, 10.0, 1000.0, 5e9])),
                  max_size=3)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(st.data())
def test_records_equal_the_oracle(data):
    version = data.draw(st.sampled_from([9, 10]))
    flds = data.draw(fields(version))
    recs = data.draw(records(sum(ln for _, _, ln in flds)))
    rates = data.draw(_RATES)
    status, exporter, got = _decode(version, flds, recs, rates)
    assert status == [0]
    assert len(got["ts"]) == len(recs)
    by_sampler = {sampler & 0xFFFF_FFFF: rate for sampler, rate in rates}    # the last setting wins
    for i, rec in enumerate(recs):
        want = decode_record(rec, flds, version, _UPTIME if version == 9 else 0, float(_SECS), by_sampler, URLS)
        want.update(exporter=exporter, ts=1001.5)
        for name, _ in COLUMNS:
            if name in HTTP_COLUMNS:                      # values only with flag HTTP: never set here
                continue
            value = got[name][i].item()
            if isinstance(value, float) and math.isnan(value):
                assert math.isnan(want[name]), name
            else:
                assert value == want[name], (name, i)


# endpoint networks that random record bytes fall into often (and the bytes 0, 0xFF, 169, 254)
_NETS = ("0.0.0.0/1", "169.254.169.254", "255.255.0.0/16", "0.0.0.0/32", "::/1", "ff00::/8", "::ffff:0:0/96")


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(st.data())
def test_decoding_with_an_endpoint_table_keeps_the_oracle_records_that_may_alert(data):
    """wire.decode(keep=...) keeps exactly the records whose address or post-NAT address lies in an
    endpoint, or which carry a URL substring (the oracle's columns, ipaddress-matched), in order;
    for fixed and (a trailing empty variable-length field) variable-length layouts."""
    version = data.draw(st.sampled_from([9, 10]))
    flds = data.draw(fields(version))
    recs = data.draw(records(sum(ln for _, _, ln in flds)))
    var = data.draw(st.booleans())
    chosen = data.draw(st.lists(st.sampled_from(_NETS), min_size=1, max_size=3, unique=True))
    nets = [ipaddress.ip_network(n) for n in chosen]
    conf = config.parse("".join(f'[[endpoints]]\nname = "e{i}"\naddress = "{n}"\n' for i, n in enumerate(chosen)))
    status, exporter, got = _decode(version, flds + [(0, 999, 0xFFFF)] if var else flds,
                                    [r + b"\0" for r in recs] if var else recs, [], keep=Detector(conf).endpoints)
    assert status == [0]

    def in_endpoint(hi, lo):
        ip = ip_of(addr_str(hi, lo))
        return any(ip.version == n.version and ip in n for n in nets)

    want = []
    for rec in recs:
        r = decode_record(rec, flds, version, _UPTIME if version == 9 else 0, float(_SECS), {}, URLS)
        if (r["url"] >= 0 or in_endpoint(r["src_hi"], r["src_lo"]) or in_endpoint(r["dst_hi"], r["dst_lo"])
                or (r["row_flags"] & NAT_SRC and in_endpoint(r["nsrc_hi"], r["nsrc_lo"]))
                or (r["row_flags"] & NAT_DST and in_endpoint(r["ndst_hi"], r["ndst_lo"]))):
            want.append(r)
    assert len(got["ts"]) == len(want)
    for i, r in enumerate(want):
        for name in ("src_hi", "src_lo", "dst_hi", "dst_lo", "nsrc_lo", "ndst_lo", "sport", "dport", "bytes",
                     "url", "row_flags"):
            assert got[name][i].item() == r[name], (name, i)
