"""metrics.py: the Prometheus exposition of real packets' counters (every sample under its family's HELP
and TYPE, per exporter, decode errors by reason, workers' snapshots merged), served on /metrics only;
decode errors logged at most once per exporter and reason per interval with what was held back; alert
latency quantiles within one bucket of the exact ones."""
from __future__ import annotations

import logging
import re
import urllib.error
import urllib.request

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from imds_flow.metrics import ErrorLog, Latency, MetricsServer, merge_snapshots, render_prometheus
from tests.support import mutate
from tests.support.decode import decode_batch

V5 = mutate.vendor_payloads()["goflow2/netflowlegacy_test_data.bin"][0]       # 6 records
CUT = V5[:30]                                                                 # count_exceeds_datagram
OTHER = b"\x00\x07" + V5[2:]                                                  # unknown_version
SAMPLE = re.compile(r'^([a-z_]+)(\{[^{}]*\})? (\d+)$')


def samples(text: str) -> dict[str, int]:
    """`name{labels}` -> value; asserts every sample sits under its own family's HELP and TYPE."""
    out, family = {}, None
    lines = text.splitlines()
    for i, line in enumerate(lines):
        if line.startswith("# HELP "):
            family = line.split()[2]
            assert lines[i + 1].startswith(f"# TYPE {family} ")
            continue
        if line.startswith("# TYPE "):
            continue
        m = SAMPLE.match(line)
        assert m and m.group(1) == family, line
        out[m.group(1) + (m.group(2) or "")] = int(m.group(3))
    return out


def test_exposition_per_exporter_with_errors_by_reason_and_merged_workers():
    worker1 = decode_batch([V5, V5, CUT], [("192.0.2.1", 2055)] * 2 + [("192.0.2.2", 2055)])[0]
    worker2 = decode_batch([OTHER, V5], ("2001:db8::1", 9995))[0]
    snap = merge_snapshots([{"exporters": worker1.snapshot(), "global": {"exporters": 2, "alerts_written": 3}},
                            {"exporters": worker2.snapshot(), "global": {"exporters": 1, "alerts_written": 4}}])
    m = samples(render_prometheus(snap))
    a, b, c = ('exporter="192.0.2.1",exporter_port="2055"', 'exporter="192.0.2.2",exporter_port="2055"',
               'exporter="2001:db8::1",exporter_port="9995"')
    assert [m[f"imds_flow_datagrams_total{{{x}}}"] for x in (a, b, c)] == [2, 1, 2]
    assert [m[f"imds_flow_records_total{{{x}}}"] for x in (a, b, c)] == [12, 0, 6]
    assert {k: v for k, v in m.items() if k.startswith("imds_flow_decode_errors_total")} == {
        f'imds_flow_decode_errors_total{{{b},reason="count_exceeds_datagram"}}': 1,
        f'imds_flow_decode_errors_total{{{c},reason="unknown_version"}}': 1}
    assert m["imds_flow_exporters"] == 3 and m["imds_flow_alerts_written_total"] == 7


def test_metrics_are_served_on_slash_metrics_only():
    snap = {"exporters": decode_batch([V5], ("192.0.2.1", 2055))[0].snapshot(), "global": {},
            "sinks": [{"name": 'C:\\alerts "a"', "sent": 5}]}
    server = MetricsServer("127.0.0.1", 0, lambda: snap)
    url = "http://%s:%d" % server.address
    try:
        with urllib.request.urlopen(url + "/metrics?x=1", timeout=10) as r:
            assert r.headers["Content-Type"].startswith("text/plain; version=0.0.4")
            body = r.read().decode()
        assert body == render_prometheus(snap)
        assert samples(body)['imds_flow_sink_alerts_total{sink="C:\\\\alerts \\"a\\"",outcome="sent"}'] == 5
        with pytest.raises(urllib.error.HTTPError) as e:
            urllib.request.urlopen(url + "/", timeout=10)
        assert e.value.code == 404
    finally:
        server.close()


def test_decode_errors_are_logged_once_per_exporter_and_reason_per_interval(caplog):
    src = [("192.0.2.1", 2055)] * 3 + [("192.0.2.2", 2055)]
    table, ids, status = decode_batch([CUT, CUT, OTHER, CUT], src)
    log = ErrorLog(table, interval=10.0)

    def report(now):
        caplog.clear()
        log.report(ids, status, now)
        return sorted(r.getMessage() for r in caplog.records)

    with caplog.at_level(logging.WARNING, "imds_flow"):
        assert report(0.0) == [
            "exporter 192.0.2.1:2055: 1 datagram(s) rejected: unknown version (total 1)",
            "exporter 192.0.2.1:2055: 2 datagram(s) rejected: count exceeds datagram (total 2)",
            "exporter 192.0.2.2:2055: 1 datagram(s) rejected: count exceeds datagram (total 1)"]
        assert report(5.0) == []                                     # held back, not forgotten
        table, ids, status = decode_batch([CUT], ("192.0.2.2", 2055), table=table)
        assert report(10.5) == ["exporter 192.0.2.2:2055: 2 datagram(s) rejected: count exceeds datagram (total 2)"]
        assert len(report(10.5)) == 0


@settings(max_examples=200, deadline=None)
@given(st.lists(st.floats(1e-6, 100.0), min_size=1, max_size=200), st.sampled_from([0.01, 0.5, 0.9, 0.99, 1.0]),
       st.integers(0, 200))
def test_latency_quantiles_are_within_one_bucket(seconds, q, split):
    whole = Latency()
    whole.add(np.array(seconds))
    parts = Latency(), Latency()
    parts[0].add(np.array(seconds[:split]))
    parts[1].add(np.array(seconds[split:]))
    parts[0].merge(parts[1])
    assert parts[0].counts.tolist() == whole.counts.tolist()
    exact = float(np.quantile(seconds, q, method="inverted_cdf"))
    got = whole.quantile(q)
    assert exact <= got <= exact * 1.06                              # the bucket's upper edge: about 6 % up
    assert Latency().quantile(q) is None


@settings(max_examples=200, deadline=None)
@given(st.lists(st.one_of(st.floats(-1.0, 200.0), st.sampled_from(Latency.EDGES.tolist())), max_size=40))
def test_latency_counts_a_few_values_as_it_counts_many(seconds):
    """Latency.add's Python path (up to _FEW values: the usual batch) buckets every value as its numpy
    path does, bucket edges, negative and past-the-end values included."""
    few, many = Latency(), Latency()
    for k in range(0, len(seconds), 4):
        few.add(seconds[k:k + 4])                                     # <= _FEW each: the Python loop
    many.add(np.array(seconds + [0.0] * 17))                         # more than _FEW: numpy
    many.counts[0] -= 17                                              # the padding's bucket
    assert few.counts.tolist() == many.counts.tolist()
