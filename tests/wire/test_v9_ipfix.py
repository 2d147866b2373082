"""NetFlow v9 / IPFIX decoding: template scoping, ordering, buffering, expiry, persistence, sequence
numbers, sampling, HTTP URLs and totality, on packets built by imds_flow/build.py."""
from __future__ import annotations

import json

import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from imds_flow import wire
from imds_flow.addr import from_hilo
from imds_flow.datagrams import DatagramBatch
from imds_flow.exporters import COUNTERS, ExporterTable
from imds_flow.flows import NO_COUNTERS, NAT_DST, FlowBatch
from imds_flow.templates_store import TemplateFile
from imds_flow.wire.scopes import ScopeTable

from imds_flow.build import VAR, data_set, ipfix, options_template_set, record, template_set, v9

A = ("192.0.2.1", 2055)
B = ("192.0.2.2", 2055)
F4 = [(8, 4), (12, 4), (7, 2), (11, 2), (4, 1), (1, 4), (2, 4)]          # reduced-size counters
F4_SWAPPED = [(12, 4), (8, 4), (11, 2), (7, 2), (4, 1), (2, 8), (1, 8)]


class State:
    def __init__(self, **cache):
        self.exporters = ExporterTable(clock=lambda: 0.0, templates=ScopeTable(**cache))
        self.out = FlowBatch(16)

    def feed(self, payloads, src=A, ts=1000.0):
        """One batch; returns (status list, records as dicts)."""
        dg = DatagramBatch.from_payloads(payloads, src=src, ts=ts)
        ids = self.exporters.lookup(dg.src_hi[:dg.n], dg.src_lo[:dg.n], dg.sport[:dg.n])
        status = wire.decode(dg, ids, self.exporters, self.out)
        c = self.out.cols
        recs = []
        for i in range(self.out.n):
            r = {k: getattr(c, k)[i].item() for k in ("sport", "dport", "proto", "bytes", "packets", "first_seen", "last_seen",
                                                       "vlan_src", "vlan_dst", "row_flags", "sampling_rate", "url", "in_if")}
            r["src"] = from_hilo(c.src_hi[i], c.src_lo[i])
            r["dst"] = from_hilo(c.dst_hi[i], c.dst_lo[i])
            r["ndst"] = from_hilo(c.ndst_hi[i], c.ndst_lo[i])
            recs.append(r)
        return [wire.REASONS[s] for s in status.tolist()], recs

    def count(self, name: str) -> int:
        return int(self.exporters.counters[:, COUNTERS.index(name)].sum())


def flow(src="10.0.0.1", dst="169.254.169.254", sport=40000, dport=80, proto=6, nbytes=100, pkts=2, fields=F4):
    values = {8: src, 12: dst, 7: sport, 11: dport, 4: proto, 1: nbytes, 2: pkts}
    return record(fields, [values[f[-2]] for f in fields])


@pytest.mark.parametrize("version", [9, 10])
def test_two_exporters_one_template_id_different_layouts(version):
    pkt = v9 if version == 9 else ipfix
    s = State()
    s.feed([pkt([template_set(version, {256: F4})])], src=A)
    s.feed([pkt([template_set(version, {256: F4_SWAPPED})])], src=B)
    _, recs = s.feed([pkt([data_set(256, [flow(fields=F4)])]), pkt([data_set(256, [flow(fields=F4_SWAPPED)])])],
                     src=[A, B])
    assert [(r["src"], r["dst"], r["sport"], r["dport"], r["bytes"], r["packets"]) for r in recs] == \
        [("10.0.0.1", "169.254.169.254", 40000, 80, 100, 2)] * 2


def test_scope_without_port_follows_an_exporter_changing_ports():
    s = State(scope_port=False)
    s.feed([ipfix([template_set(10, {300: F4})])], src=("192.0.2.1", 1111))
    _, recs = s.feed([ipfix([data_set(300, [flow()])])], src=("192.0.2.1", 2222))
    assert len(recs) == 1
    s = State(scope_port=True)
    s.feed([ipfix([template_set(10, {300: F4})])], src=("192.0.2.1", 1111))
    _, recs = s.feed([ipfix([data_set(300, [flow()])])], src=("192.0.2.1", 2222))
    assert recs == [] and s.count("template_misses") == 1


def test_source_ids_are_separate_scopes():
    s = State()
    s.feed([v9([template_set(9, {256: F4})], source_id=1)])
    _, recs = s.feed([v9([data_set(256, [flow()])], source_id=2)])
    assert recs == [] and s.count("template_misses") == 1


@pytest.mark.parametrize("version", [9, 10])
def test_data_before_template_waits_and_decodes_when_it_arrives(version):
    pkt = v9 if version == 9 else ipfix
    s = State()
    status, recs = s.feed([pkt([data_set(256, [flow(), flow(sport=2)])])])
    assert status == ["ok"] and recs == [] and s.count("template_misses") == 1
    _, recs = s.feed([pkt([template_set(version, {256: F4})]), pkt([data_set(256, [flow(sport=3)])])], ts=1001.0)
    assert [r["sport"] for r in recs] == [40000, 2, 3]
    assert s.count("sets_late") == 1 and s.count("template_expired_sets") == 0


def test_template_later_in_the_same_datagram_decodes_earlier_data():
    s = State()
    _, recs = s.feed([v9([data_set(256, [flow()]), template_set(9, {256: F4})])])
    assert len(recs) == 1 and recs[0]["dst"] == "169.254.169.254"


def test_datagrams_of_many_sets_decode_every_one_in_order():
    """More sets than the walk's buffers first hold (they grow and the batch is walked again)."""
    s = State()
    s.feed([ipfix([template_set(10, {256: F4})])])
    sets = [data_set(256, [flow(sport=i)]) for i in range(300)]
    status, recs = s.feed([ipfix(sets[:150]), ipfix(sets[150:])])
    assert status == ["ok", "ok"]
    assert [r["sport"] for r in recs] == list(range(300))


def test_redefinition_mid_batch_keeps_each_layout_for_its_own_data():
    s = State()
    s.feed([ipfix([template_set(10, {256: F4})])])
    _, recs = s.feed([ipfix([data_set(256, [flow(sport=1)])]),
                      ipfix([template_set(10, {256: F4_SWAPPED}), data_set(256, [flow(sport=2, fields=F4_SWAPPED)])]),
                      ipfix([data_set(256, [flow(sport=3, fields=F4_SWAPPED)])])])
    assert [(r["sport"], r["dst"]) for r in recs] == [(1, "169.254.169.254"), (2, "169.254.169.254"),
                                                    (3, "169.254.169.254")]


def test_waiting_data_expires_counted_never_silently():
    s = State(pending_max_seconds=10.0, pending_max_sets=2)
    s.feed([ipfix([data_set(256, [flow()])]) for _ in range(3)], ts=1000.0)
    assert s.count("template_misses") == 3 and s.count("pending_dropped_sets") == 1
    s.feed([ipfix([data_set(999, [flow()])], domain=5)], ts=1011.0)   # later traffic: the first two are too old
    assert s.count("template_expired_sets") == 2
    _, recs = s.feed([ipfix([template_set(10, {256: F4})])], ts=1012.0)
    assert recs == []


def test_template_lifetime():
    s = State(lifetime=100.0)
    s.feed([ipfix([template_set(10, {256: F4})])], ts=1000.0)
    assert len(s.feed([ipfix([data_set(256, [flow()])])], ts=1099.0)[1]) == 1
    assert s.feed([ipfix([data_set(256, [flow()])])], ts=1101.0)[1] == []
    assert s.count("template_misses") == 1


def test_zero_field_templates_are_rejected_and_counted():
    s = State()
    status, _ = s.feed([v9([template_set(9, {256: []})])])
    assert status == ["bad_template"] and s.count("templates_rejected") == 1
    status, _ = s.feed([ipfix([template_set(10, {256: []})])])      # IPFIX: a withdrawal, ignored
    assert status == ["ok"] and s.count("withdrawals_ignored") == 1


def test_ipfix_withdrawal_does_not_remove_the_template():
    s = State()
    s.feed([ipfix([template_set(10, {256: F4})])])
    s.feed([ipfix([template_set(10, {256: []})])])
    assert len(s.feed([ipfix([data_set(256, [flow()])])])[1]) == 1


def test_duplicate_elements_first_wins():
    fields = [(12, 4), (12, 4), (8, 4), (1, 8), (1, 2)]
    s = State()
    _, recs = s.feed([ipfix([template_set(10, {256: fields}),
                             data_set(256, [record(fields, ["169.254.169.254", "10.9.9.9", "10.0.0.1", 77, 5])])])])
    assert recs[0]["dst"] == "169.254.169.254" and recs[0]["bytes"] == 77


def test_variable_length_fields_in_v9_like_h3c():
    fields = [(8, 4), (82, VAR), (12, 4), (2, 4)]
    long = b"x" * 300
    s = State()
    _, recs = s.feed([v9([template_set(9, {256: fields}),
                          data_set(256, [record(fields, ["10.0.0.1", b"eth0", "169.254.169.254", 3]),
                                         record(fields, ["10.0.0.2", long, "169.254.169.254", 4])])])])
    assert [(r["src"], r["dst"], r["packets"]) for r in recs] == [("10.0.0.1", "169.254.169.254", 3),
                                                                ("10.0.0.2", "169.254.169.254", 4)]


def test_enterprise_elements_are_skipped_by_length_in_ipfix_and_plain_ids_in_v9():
    fields = [(8, 4), (29305, 1, 8), (12, 4), (35632, 999, VAR), (1, 4)]
    s = State()
    _, recs = s.feed([ipfix([template_set(10, {256: fields}),
                             data_set(256, [record(fields, ["10.0.0.1", 5, "169.254.169.254", b"abc", 9])])])])
    assert recs[0]["bytes"] == 9 and recs[0]["dst"] == "169.254.169.254"
    v9fields = [(8, 4), (33000, 12), (12, 4), (1, 4)]                  # v9: id >= 32768 is a plain id
    _, recs = s.feed([v9([template_set(9, {256: v9fields}),
                          data_set(256, [record(v9fields, ["10.0.0.1", 0, "169.254.169.254", 9])])])])
    assert recs[0]["bytes"] == 9 and recs[0]["dst"] == "169.254.169.254"


def test_ipv6_nat_vlans_times_and_no_counters():
    fields = [(27, 16), (28, 16), (226, 4), (58, 2), (59, 2), (152, 8), (153, 8), (10, 2)]
    s = State()
    _, recs = s.feed([ipfix([template_set(10, {256: fields}), data_set(256, [record(
        fields, ["2001:db8::1", "2001:db8::2", "169.254.169.254", 0, 20, 1_700_000_000_500, 1_700_000_001_000, 7])])])])
    r = recs[0]
    assert (r["src"], r["dst"], r["ndst"]) == ("2001:db8::1", "2001:db8::2", "169.254.169.254")
    assert r["row_flags"] & NAT_DST and r["row_flags"] & NO_COUNTERS
    assert (r["vlan_src"], r["vlan_dst"], r["in_if"]) == (-1, 20, 7)
    assert (r["first_seen"], r["last_seen"]) == (1_700_000_000.5, 1_700_000_001.0)


def test_v9_sysuptime_times_and_icmp_type_code():
    fields = [(8, 4), (12, 4), (4, 1), (32, 2), (22, 4), (21, 4)]
    s = State()
    _, recs = s.feed([v9([template_set(9, {256: fields}), data_set(256, [record(
        fields, ["10.0.0.1", "169.254.169.254", 1, 8 * 256, 90_000, 99_000])])], uptime=100_000, secs=1_700_000_000)])
    r = recs[0]
    assert (r["sport"], r["dport"]) == (0, 2048)
    assert (r["first_seen"], r["last_seen"]) == (1_700_000_000 - 10.0, 1_700_000_000 - 1.0)


def test_sampling_from_options_data():
    s = State()
    opt = options_template_set(10, 400, [(149, 4)], [(305, 4), (306, 4)])
    odata = data_set(400, [record([(149, 4), (305, 4), (306, 4)], [0, 1, 99])])
    s.feed([ipfix([opt, odata, template_set(10, {256: F4})])])
    _, recs = s.feed([ipfix([data_set(256, [flow()])])])
    assert recs[0]["sampling_rate"] == 100 and s.count("options_records") == 1
    s9 = State()                                                     # v9 sampler table: id 48, interval 50
    opt9 = options_template_set(9, 300, [(1, 4)], [(48, 1), (49, 1), (50, 4)])
    odata9 = data_set(300, [record([(1, 4), (48, 1), (49, 1), (50, 4)], [0, 3, 2, 64])])
    f = F4 + [(48, 1)]
    _, recs = s9.feed([v9([opt9, odata9, template_set(9, {256: f}),
                           data_set(256, [record(f, ["10.0.0.1", "169.254.169.254", 1, 80, 6, 1, 1, 3])])])])
    assert recs[0]["sampling_rate"] == 64


def test_http_url_substrings():
    fields = [(8, 4), (12, 4), (461, VAR)]
    s = State(url_patterns=("/latest/meta-data", "/latest/api/token"))
    _, recs = s.feed([ipfix([template_set(10, {256: fields}), data_set(256, [
        record(fields, ["10.0.0.1", "10.0.0.2", b"/LATEST/api/token"]),
        record(fields, ["10.0.0.1", "10.0.0.2", b"/index.html"]),
        record(fields, ["10.0.0.1", "10.0.0.2", b"http://x/latest/meta-data/iam"])])])])
    assert [r["url"] for r in recs] == [1, -1, 0]


def test_sequence_gaps_per_scope_wrap_safe():
    s = State()
    tset = template_set(10, {256: F4})
    seq = 0xFFFF_FFFE
    s.feed([ipfix([tset, data_set(256, [flow()] * 3)], seq=seq)])            # records 3: next 0x1
    s.feed([ipfix([data_set(256, [flow()] * 2)], seq=0x1)])                    # no gap across the wrap
    assert int(s.exporters.sequence_lost()[0]) == 0
    s.feed([ipfix([data_set(256, [flow()])], seq=0x3 + 5)])                  # 5 records lost
    assert int(s.exporters.sequence_lost()[0]) == 5
    s.feed([ipfix([data_set(256, [flow()])], seq=0x2)])                      # reordered: not loss
    assert int(s.exporters.sequence_lost()[0]) == 5
    v = State()
    v.feed([v9([template_set(9, {256: F4})], seq=0xFFFF_FFFF)])
    v.feed([v9([data_set(256, [flow()] * 4)], seq=0)])                       # v9 counts datagrams
    v.feed([v9([data_set(256, [flow()])], seq=3)])
    assert int(v.exporters.sequence_lost()[0]) == 2


def test_softflowd_ipfix_sequence_quirk_is_not_loss():
    s = State()
    tset = template_set(10, {256: F4})
    s.feed([ipfix([tset, data_set(256, [flow()] * 3)], seq=3)])              # counts its own 3 records
    s.feed([ipfix([data_set(256, [flow()] * 5)], seq=8)])
    s.feed([ipfix([data_set(256, [flow()] * 1)], seq=9)])
    assert int(s.exporters.sequence_lost()[0]) == 0


def test_restart_between_template_and_data(tmp_path):
    path = tmp_path / "state" / "templates.json"
    s = State()
    s.feed([ipfix([template_set(10, {256: F4})], domain=7)])
    TemplateFile(path, s.exporters.templates).save()
    assert json.loads(path.read_text())["templates"][0]["template_id"] == 256
    restarted = State()
    assert TemplateFile(path, restarted.exporters.templates).load() == 1
    _, recs = restarted.feed([ipfix([data_set(256, [flow()])], domain=7)])
    assert len(recs) == 1 and recs[0]["dst"] == "169.254.169.254"
    path.write_text("{not json")
    assert TemplateFile(path, State().exporters.templates).load() == 0   # logged, never fatal


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.binary(max_size=200), st.sampled_from([9, 10]), st.integers(0, 3))
def test_any_bytes_decode_or_count(body, version, prefix):
    """Totality: random bodies after a valid header, with a template defined first, never raise."""
    s = State()
    tset = template_set(version, {256: F4, 257: [(8, 4), (82, VAR)]})
    pkt = v9 if version == 9 else ipfix
    s.feed([pkt([tset])])
    raw = pkt([]) + body
    mutated = [raw, raw[: len(raw) - prefix], pkt([data_set(256, [body])]), pkt([data_set(257, [body])]),
               pkt([b"\x00\x00" + body[:2] + body])]
    status, _ = s.feed(mutated)
    assert all(x in wire.REASONS for x in status)


@pytest.mark.parametrize("version", [9, 10])
def test_resent_template_set_is_recognised_by_its_bytes(version, monkeypatch):
    """An unchanged template set is not parsed again (only its time is refreshed); a changed one is,
    and the records follow the new layout at once."""
    from imds_flow.wire import scopes
    pkt = v9 if version == 9 else ipfix
    calls = []
    real = scopes.parse_template_set
    monkeypatch.setattr(scopes, "parse_template_set", lambda *a: calls.append(a) or real(*a))
    s = State()
    tset = template_set(version, {256: F4})
    for t in (1000.0, 1001.0, 1002.0):
        status, recs = s.feed([pkt([tset, data_set(256, [flow(sport=1)])])], ts=t)
        assert status == ["ok"] and recs[0]["sport"] == 1
    assert len(calls) == 1 and s.count("templates") == 3
    key = next(iter(s.exporters.templates.templates))
    assert s.exporters.templates.templates[key][1] == 1002.0          # lifetime runs from the last resend
    status, recs = s.feed([pkt([template_set(version, {256: F4_SWAPPED}), data_set(256, [flow(fields=F4_SWAPPED)])])])
    assert len(calls) == 2 and status == ["ok"] and recs[0]["src"] == "10.0.0.1" and recs[0]["bytes"] == 100
    status, recs = s.feed([pkt([tset, data_set(256, [flow(sport=7)])])])     # back to the first: known bytes
    assert len(calls) == 2 and recs[0]["sport"] == 7
