"""Pipeline (app.py): one batch through decode, detect and alerts, with the counters and reloads
an operator relies on. In-process, with an injected clock and a list sink: no socket, no sleep."""
from __future__ import annotations

import msgpack

from imds_flow import config
from imds_flow.app import Pipeline
from imds_flow.datagrams import DatagramBatch
from imds_flow.metrics import render_prometheus
from imds_flow.build import VAR, data_set, ipfix, record, template_set
from imds_flow.build import v5

IMDS = "169.254.169.254"
CONFIG = f'''
[[endpoints]]
name = "aws-imds-ipv4"
address = "{IMDS}"
[suppress]
source_subnets = ["10.0.0.0/8"]
[alerts]
fold_window_seconds = 0
[templates]
state_file = ""
'''


class ListSink:
    def __init__(self):
        self.alerts: list[dict] = []

    def write_alerts(self, alerts: list[bytes]) -> None:
        self.alerts += [msgpack.unpackb(a, raw=False) for a in alerts]

    def flush(self) -> None:
        pass

    def close(self) -> None:
        pass


def pipeline(text: str = CONFIG) -> tuple[Pipeline, ListSink]:
    sink = ListSink()
    return Pipeline(config.parse(text), sink, clock=lambda: 1_700_000_000.0), sink


def feed(p: Pipeline, payloads: list[bytes], src=("192.0.2.1", 2055)) -> None:
    p.process(DatagramBatch.from_payloads(payloads, src=src, ts=1_700_000_000.0))


def test_suppressed_records_are_counted_per_exporter_and_in_metrics():
    p, sink = pipeline()
    feed(p, [v5([("10.1.2.3", IMDS, 40000, 80), ("10.9.9.9", IMDS, 40001, 80), ("192.168.1.5", IMDS, 40002, 80),
                 ("192.168.1.5", "192.168.1.6", 1, 2)])])
    feed(p, [v5([("10.1.2.3", IMDS, 40003, 80)], seq=4)], src=("192.0.2.2", 2055))
    assert [a["src"] for a in sink.alerts] == ["192.168.1.5"]
    rows = {r["exporter"]: r for r in p.snapshot()["exporters"]}
    assert rows["192.0.2.1"]["suppressed"] == 2 and rows["192.0.2.2"]["suppressed"] == 1
    assert p.stats()["suppressed"] == 3
    text = render_prometheus(p.snapshot())
    assert 'imds_flow_suppressed_records_total{exporter="192.0.2.1",exporter_port="2055"} 2' in text
    assert 'imds_flow_suppressed_records_total{exporter="192.0.2.2",exporter_port="2055"} 1' in text


URL_FIELDS = [(8, 4), (12, 4), (7, 2), (11, 2), (4, 1), (461, VAR)]


def url_export(url: bytes, seq: int, with_template: bool = True) -> bytes:
    sets = [template_set(10, {300: URL_FIELDS})] if with_template else []
    sets.append(data_set(300, [record(URL_FIELDS, ["192.168.1.5", "192.168.7.7", 40000, 80, 6, url])]))
    return ipfix(sets, seq=seq)


def test_reload_of_url_substrings_reaches_the_decoder():
    """SIGHUP with a new http.url_substrings list: the decoder's pattern indices and the detector's
    names must change together, or a URL alert names the wrong substring."""
    before = CONFIG + '[http]\nurl_substrings = ["/latest/api/token"]\n'
    after = CONFIG + '[http]\nurl_substrings = ["/computeMetadata/", "/latest/api/token", "/latest/meta-data"]\n'
    p, sink = pipeline(before)
    feed(p, [url_export(b"/latest/api/token", seq=0)])
    assert [a["endpoint"] for a in sink.alerts] == ["url:/latest/api/token"]
    p.reload(config.parse(after))
    feed(p, [url_export(b"/latest/api/token", seq=1, with_template=False),
             url_export(b"/latest/meta-data/iam/", seq=2, with_template=False),
             url_export(b"/computeMetadata/v1/", seq=3, with_template=False)])
    assert [a["endpoint"] for a in sink.alerts[1:]] == [
        "url:/latest/api/token", "url:/latest/meta-data", "url:/computeMetadata/"]
    p.reload(config.parse(CONFIG + '[http]\nurl_substrings = []\n'))
    feed(p, [url_export(b"/latest/api/token", seq=4, with_template=False)])
    assert len(sink.alerts) == 4                      # no substring configured: nothing alerts on the URL


def test_reload_of_header_names_reaches_the_sflow_decoder():
    """The sFlow packet kernel keeps its own copy of the header names: SIGHUP must swap it together
    with the detector's names, or a header alert names the wrong header."""
    import ipaddress

    from imds_flow.build import frame, packet_sample, sflow
    client, other = int(ipaddress.IPv4Address("192.168.1.5")), int(ipaddress.IPv4Address("192.168.7.7"))
    request = b"GET /x HTTP/1.1\r\nHost: h\r\nMetadata-Flavor: Google\r\n\r\n"
    p, sink = pipeline(CONFIG + '[http]\nheader_names = ["x-aws-ec2-metadata-token"]\n')
    p.reload(config.parse(CONFIG + '[http]\nheader_names = ["metadata-flavor", "x-aws-ec2-metadata-token"]\n'))
    p.process(DatagramBatch.from_payloads([sflow([packet_sample(1, frame(client, other, 40000, 80, request, None))], seq=1)],
                                          src=("192.0.2.9", 6343), ts=1_700_000_000.0))
    assert [(a["signal"], a["endpoint"], a["headers"]) for a in sink.alerts] == [
        ("header", "header:metadata-flavor", ["metadata-flavor"])]
