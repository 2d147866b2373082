"""sFlow through the Pipeline: which sample alerts with which signal, what the alert says (and never
says), exporter identity (source, agent, sub-agent) and sequence gaps counted as lost upstream."""
from __future__ import annotations

import ipaddress

import msgpack
import pytest

from imds_flow.build import flow_sample, frame, packet_sample, raw_header, sflow
from imds_flow import app, config
from imds_flow.datagrams import DatagramBatch
from imds_flow.exporters import COUNTERS
from tests.support.alerts import AlertList

T0 = 1_700_000_000.0
IMDS = int(ipaddress.IPv4Address("169.254.169.254"))
CLIENT = int(ipaddress.IPv4Address("10.1.2.3"))
OTHER = int(ipaddress.IPv4Address("10.9.9.9"))
SUPPRESSED = int(ipaddress.IPv4Address("10.66.0.1"))
CONFIG = '''
[[endpoints]]
name = "aws-imds"
address = "169.254.169.254"
[suppress]
source_subnets = ["10.66.0.0/16"]
vlans = [666]
[http]
header_names = ["X-aws-ec2-metadata-token", "Metadata-Flavor"]
[alerts]
fold_window_seconds = 0
'''


def run(payloads, src=("192.0.2.50", 6343), config_text=CONFIG):
    sink = AlertList()
    p = app.Pipeline(config.parse(config_text), sink, clock=lambda: T0)
    for k, data in enumerate(payloads):
        p.process(DatagramBatch.from_payloads([data], src=src, ts=T0 + k))
    p.close()
    return p, sink.alerts


def one(src, dst, payload, vlan=None, dport=80, sport=40000):
    return sflow([packet_sample(1, frame(src, dst, sport, dport, payload, vlan))], seq=1)


# (what is sampled) -> (endpoint, signal, method, url, headers) or None
CASES = [
    ((CLIENT, IMDS, b"GET /latest/meta-data/ HTTP/1.1\r\n\r\n"), ("aws-imds", "address", "GET", "/latest/meta-data/", [])),
    ((CLIENT, IMDS, b"\x16\x03\x01\x02\x00"), ("aws-imds", "address", None, None, [])),
    ((IMDS, CLIENT, b"HTTP/1.1 200 OK\r\n\r\nsecret"), ("aws-imds", "address", None, None, [])),
    ((CLIENT, OTHER, b"PUT /latest/api/token HTTP/1.1\r\n\r\n"),
     ("url:/latest/api/token", "url", "PUT", "/latest/api/token", [])),
    ((CLIENT, OTHER, b"GET /x HTTP/1.1\r\nmetadata-flavor: Google\r\n\r\n"),
     ("header:metadata-flavor", "header", "GET", "/x", ["metadata-flavor"])),
    ((CLIENT, OTHER, b"GET /x HTTP/1.1\r\nMetadata-Flavor: Google\r\nX-AWS-EC2-METADATA-TOKEN: s3cr3t\r\n\r\n"),
     ("header:x-aws-ec2-metadata-token", "header", "GET", "/x", ["x-aws-ec2-metadata-token", "metadata-flavor"])),
    ((CLIENT, OTHER, b"GET /x HTTP/1.1\r\nReferer: X-aws-ec2-metadata-token: /latest/meta-data\r\n\r\n"), None),
    ((CLIENT, OTHER, b"POST /x HTTP/1.1\r\n\r\n/latest/meta-data"), None),
    ((SUPPRESSED, OTHER, b"GET /latest/meta-data/ HTTP/1.1\r\n\r\n"), None),
    ((SUPPRESSED, IMDS, b"GET /latest/meta-data/ HTTP/1.1\r\n\r\n"), None),
]


@pytest.mark.parametrize("sample,want", CASES)
def test_signals(sample, want):
    src, dst, payload = sample
    p, alerts = run([one(src, dst, payload)])
    if want is None:
        assert alerts == []
        return
    (a,) = alerts
    assert (a["endpoint"], a["signal"], a["http_method"], a["url"], a["headers"]) == want
    assert a["format"] == "sflow" and a["packets"] == 1 and a["sampling_rate"] == 1000
    assert a["bytes_estimate"] == a["bytes"] * 1000 and a["vlan"] == 10
    assert a["direction"] == ("response" if src == IMDS else "request")
    assert b"s3cr3t" not in msgpack.packb(a) and b"Google" not in msgpack.packb(a)
    assert a["http_host"] is None


HOST = b"imds.attacker.example"       # a Host header value: it must never leave the collector


@pytest.mark.parametrize("dst", [IMDS, OTHER])
def test_a_sampled_host_header_is_never_copied(dst):
    """A sampled request whose Host header is there alerts (by address or by its target) with
    http_host None: the Host header is a header value, and no header value reaches an alert or any
    encoding of one."""
    from imds_flow import formats, siem
    payload = b"GET /latest/meta-data/ HTTP/1.1\r\nHost: " + HOST + b"\r\nUser-Agent: x\r\n\r\n"
    p, alerts = run([one(CLIENT, dst, payload, sport=40001)])
    (a,) = alerts
    assert (a["http_method"], a["url"], a["http_host"]) == ("GET", "/latest/meta-data/", None)
    assert "domain" not in formats.EcsJsonEncoder().document(a)["url"]
    for text in (msgpack.packb(a), formats.EcsJsonEncoder().encode(a), siem.cef(a).encode(), siem.leef(a).encode()):
        assert HOST not in text


@pytest.mark.parametrize("tags", [666, (666, 1), (1, 666), (1, 2, 666), (1, 2, 3, 666), (1, 2, 3, 4, 5, 6, 666)])
def test_vlan_suppression_from_tags(tags):
    """Every VLAN id counts for suppression: the outer tag's, the customer tag's and (vlan_more)
    the 3rd to 7th tag's."""
    p, alerts = run([one(CLIENT, IMDS, b"", vlan=tags)])
    assert alerts == [] and p.stats()["suppressed"] == 1


@pytest.mark.parametrize("tags,vlan", [((1, 2, 665), 1), ((0, 0, 665), 665), ((1, 2, 3, 4, 5, 6, 7, 666), 1)])
def test_vlan_tags_that_do_not_suppress(tags, vlan):
    """Ids not in suppress.vlans alert, with the first non-zero id as the alert's vlan (the switch
    record's VLAN is not sent here); an 8th tag is walked but not recorded."""
    data = sflow([flow_sample(1, [raw_header(frame(CLIENT, IMDS, 40000, 80, b"", tags))])], seq=1)
    p, alerts = run([data])
    (a,) = alerts
    assert a["vlan"] == vlan and p.stats()["suppressed"] == 0


def test_exporter_identity_and_sequence_gaps():
    """(source, agent, sub-agent) is one exporter row; a datagram gap counts datagrams, a flow-sample
    gap of a source id counts records lost upstream."""
    f = frame(CLIENT, OTHER, 1, 443, b"", 5)
    d1 = sflow([packet_sample(10, f), packet_sample(11, f)], seq=100)
    d2 = sflow([packet_sample(15, f)], seq=103)                      # 2 datagrams, 3 samples missed
    d3 = sflow([packet_sample(1, f)], seq=1, sub_agent=1)            # another sub-agent: its own row
    p, _ = run([d1, d2, d3])
    rows = {(r["agent"], r["sub_agent"]): r for r in p.exporters.snapshot() if "agent" in r}
    a, b = rows[("192.0.2.7", 0)], rows[("192.0.2.7", 1)]
    assert (a["datagrams"], a["records"], a["sflow_datagrams_lost"], a["sequence_lost"]) == (2, 3, 2, 3)
    assert (b["datagrams"], b["records"], b["sequence_lost"]) == (1, 1, 0)
    assert a["exporter"] == b["exporter"] == "192.0.2.50" and a["exporter_port"] == 6343
    assert COUNTERS.index("sflow_datagrams_lost") >= 0



def test_compacted_rows_change_no_alert_or_counter():
    """The sFlow kernel writes a row only for a sample that may alert (compact, as listen runs):
    the same alerts and counters as with every row kept, and only rows detection can hit."""
    from bench.sflow import sflow_datagrams
    payloads = [one(*sample) for sample, _ in CASES] + sflow_datagrams(40, 8, http_fraction=0.5, imds_fraction=0.05)
    payloads.append(one(CLIENT, OTHER, b"GET /x HTTP/1.1\r\nAccept: */*\r\n\r\n"))    # HTTP, nothing to alert on
    got = {}
    for compact in (True, False):
        sink = AlertList()
        p = app.Pipeline(config.parse(CONFIG), sink, clock=lambda: T0, compact=compact)
        rows = 0
        for k in range(0, len(payloads), 16):
            p.process(DatagramBatch.from_payloads(payloads[k:k + 16], src=("192.0.2.50", 6343), ts=T0 + k))
            rows += p.batch.n
        p.close()
        got[compact] = (sink.alerts, p.exporters.snapshot(), rows)
    assert got[True][:2] == got[False][:2] and len(got[True][0]) > 20
    hits_or_suppressed = len(got[True][0]) + sum(r["suppressed"] for r in got[True][1])
    assert got[True][2] == hits_or_suppressed < got[False][2]

# --- IPFIX: httpRequestMethod (459) with httpRequestTarget (461); RFC 7133 packet sections ----------

from imds_flow import build  # noqa: E402

_BASE = [(8, 4), (12, 4), (7, 2), (11, 2), (4, 1), (1, 8), (2, 8)]


def _ipfix(fields, values):
    return build.ipfix([build.template_set(10, {400: fields}), build.data_set(400, [build.record(fields, values)])])


@pytest.mark.parametrize("length", [build.VAR, 8])
def test_ipfix_method_and_target(length):
    target = b"/latest/api/token"
    fields = _BASE + [(459, build.VAR if length == build.VAR else 3), (461, build.VAR if length == build.VAR else 17)]
    p, alerts = run([_ipfix(fields, ["10.1.2.3", "169.254.169.254", 40000, 80, 6, 100, 1, b"PUT", target])],
                    src=("192.0.2.60", 4739))
    (a,) = alerts
    assert (a["format"], a["signal"], a["http_method"], a["url"], a["headers"], a["http_host"]) == \
        ("ipfix", "address", "PUT", "/latest/api/token", [], None)


@pytest.mark.parametrize("fixed", [False, True])
def test_ipfix_method_host_and_target(fixed):
    """IE 459 httpRequestMethod, 460 httpRequestHost and 461 httpRequestTarget name an IMDSv2 token
    request whole: method, host and target (variable-length fields, and fixed-length ones)."""
    host, target = b"169.254.169.254", b"/latest/api/token"
    http = [(459, 3), (460, 15), (461, 17)] if fixed else [(459, build.VAR), (460, build.VAR), (461, build.VAR)]
    fields = _BASE + http
    p, alerts = run([_ipfix(fields, ["10.1.2.3", "169.254.169.254", 40000, 80, 6, 100, 1, b"PUT", host, target])],
                    src=("192.0.2.68", 4739))
    (a,) = alerts
    assert (a["format"], a["signal"], a["http_method"], a["url"], a["http_host"]) == \
        ("ipfix", "address", "PUT", "/latest/api/token", "169.254.169.254")


def test_ipfix_host_without_a_method_is_not_shown():
    """The HTTP columns describe a request named by its method: a host with no method (or one that
    is no HTTP method) leaves the alert's HTTP fields empty, as a lone target does."""
    fields = _BASE + [(459, build.VAR), (460, build.VAR), (461, build.VAR)]
    for method in (b"", b"BREW"):
        p, alerts = run([_ipfix(fields, ["10.1.2.3", "169.254.169.254", 40000, 80, 6, 100, 1, method,
                                         b"169.254.169.254", b"/latest/api/token"])], src=("192.0.2.69", 4739))
        (a,) = alerts
        assert (a["http_method"], a["url"], a["http_host"]) == (None, None, None)


@pytest.mark.parametrize("version,method,url,host", [
    # nProbe HTTP_METHOD / HTTP_URL / HTTP_HOST, PEN 35632
    (10, (35632, 360, build.VAR), (35632, 180, build.VAR), (35632, 187, build.VAR)),
    (9, (57832, 3), (57652, 17), (57659, 15)),                 # the same in NetFlow v9: 57472 + id
    (10, (35632, 360, build.VAR), (35632, 180, build.VAR), None),
])
def test_nprobe_method_url_and_host(version, method, url, host):
    """nProbe's method element names the request with nProbe's URL and host: an IMDSv2 token request."""
    fields = _BASE + [method, url] + ([host] if host else [])
    values = ["10.1.2.3", "169.254.169.254", 40000, 80, 6, 100, 1, b"PUT", b"/latest/api/token", b"169.254.169.254"]
    tmpl, data = build.template_set(version, {400: fields}), build.data_set(400, [build.record(fields, values)])
    pkt = build.ipfix([tmpl, data]) if version == 10 else build.v9([tmpl, data])
    p, alerts = run([pkt], src=("192.0.2.64", 2055))
    (a,) = alerts
    assert (a["format"], a["signal"], a["http_method"], a["url"], a["http_host"]) == \
        ("ipfix" if version == 10 else "netflow", "address", "PUT", "/latest/api/token",
         "169.254.169.254" if host else None)


@pytest.mark.parametrize("ie,section", [
    (315, frame(CLIENT, OTHER, 40000, 8080, b"GET /x HTTP/1.1\r\nX-aws-ec2-metadata-token: s3cr3t\r\n", 12)),
    (313, frame(CLIENT, OTHER, 40000, 8080, b"GET /latest/meta-data/ HTTP/1.1\r\n", None)[14:]),
])
def test_ipfix_packet_sections(ie, section):
    """A PSAMP-style record that carries only a packet section: addresses, ports and the request come
    from the section through the packet kernel."""
    fields = [(ie, build.VAR), (1, 8), (2, 8)]
    p, alerts = run([_ipfix(fields, [section, 100, 1])], src=("192.0.2.61", 4739))
    (a,) = alerts
    assert (a["src"], a["dst"], a["sport"], a["dport"], a["proto"]) == ("10.1.2.3", "10.9.9.9", 40000, 8080, 6)
    assert a["http_host"] is None
    if ie == 315:
        assert (a["signal"], a["http_method"], a["url"], a["headers"], a["vlan"]) == \
            ("header", "GET", "/x", ["x-aws-ec2-metadata-token"], 12)
        assert b"s3cr3t" not in msgpack.packb(a)
    else:
        assert (a["signal"], a["endpoint"], a["url"]) == ("url", "url:/latest/meta-data", "/latest/meta-data/")


def test_vlan_suppression_from_a_third_tag_in_an_ipfix_section():
    """A dataLinkFrameSection (IE 315) goes through the same packet kernel: its third tag counts too."""
    fields = [(315, build.VAR), (1, 8), (2, 8)]
    for tags, suppressed in (((1, 2, 666), 1), ((1, 2, 665), 0)):
        section = frame(CLIENT, IMDS, 40000, 80, b"GET / HTTP/1.1\r\n", tags)
        p, alerts = run([_ipfix(fields, [section, 100, 1])], src=("192.0.2.67", 4739))
        assert (len(alerts), p.stats()["suppressed"]) == (1 - suppressed, suppressed)


def test_a_host_header_in_a_packet_section_is_never_copied():
    """RFC 7133 sections go through the same packet kernel: a Host header there is a header value too,
    even in a record that also carries a host element of its own (IE 460, not read with a section)."""
    section = frame(CLIENT, IMDS, 40000, 80, b"PUT /latest/api/token HTTP/1.1\r\nHost: " + HOST + b"\r\n\r\n", 12)
    for fields, values in (([(315, build.VAR), (1, 8), (2, 8)], [section, 100, 1]),
                           ([(315, build.VAR), (460, build.VAR), (1, 8), (2, 8)], [section, HOST, 100, 1])):
        p, alerts = run([_ipfix(fields, values)], src=("192.0.2.70", 4739))
        (a,) = alerts
        assert (a["http_method"], a["url"], a["http_host"]) == ("PUT", "/latest/api/token", None)
        assert HOST not in msgpack.packb(a)


def test_ipfix_ip_payload_section():
    """IE 314 ipPayloadPacketSection starts at the transport header: the record gives the addresses and
    the protocol, the section the ports (the template has none) and the HTTP request."""
    import struct
    tcp = struct.pack(">HHIIBBHHH", 40000, 8080, 1, 0, 5 << 4, 0x18, 65535, 0, 0)
    section = tcp + b"PUT /latest/api/token HTTP/1.1\r\nX-aws-ec2-metadata-token-ttl-seconds: 21600\r\n"
    fields = [(8, 4), (12, 4), (4, 1), (314, build.VAR), (1, 8), (2, 8)]
    p, alerts = run([_ipfix(fields, ["10.1.2.3", "10.9.9.9", 6, section, 100, 1])], src=("192.0.2.65", 4739))
    (a,) = alerts
    assert (a["src"], a["dst"], a["sport"], a["dport"], a["proto"]) == ("10.1.2.3", "10.9.9.9", 40000, 8080, 6)
    assert (a["signal"], a["endpoint"], a["http_method"], a["url"]) == \
        ("url", "url:/latest/api/token", "PUT", "/latest/api/token")
    udp = struct.pack(">HHHH", 40000, 8080, 8, 0) + b"PUT /latest/api/token HTTP/1.1\r\n"
    p, alerts = run([_ipfix(fields, ["10.1.2.3", "10.9.9.9", 17, udp, 100, 1])], src=("192.0.2.66", 4739))
    assert alerts == []                               # an HTTP request line is read from TCP only


def _late(fields, values):
    """The data datagram first, its template in the next one: the data waits in the pending buffer."""
    return [build.ipfix([build.data_set(400, [build.record(fields, values)])], seq=0),
            build.ipfix([build.template_set(10, {400: fields})], seq=1)]


def test_ipfix_http_of_data_that_waited_for_its_template():
    """Method, target, host and header names of data decoded late, from the pending buffer, as if on time."""
    fields = _BASE + [(459, build.VAR), (460, build.VAR), (461, build.VAR)]
    p, alerts = run(_late(fields, ["10.1.2.3", "169.254.169.254", 40000, 80, 6, 100, 1, b"PUT", b"169.254.169.254",
                                   b"/latest/api/token"]), src=("192.0.2.62", 4739))
    (a,) = alerts
    assert (a["signal"], a["http_method"], a["url"], a["http_host"]) == \
        ("address", "PUT", "/latest/api/token", "169.254.169.254")
    section = frame(CLIENT, OTHER, 40000, 8080, b"GET /x HTTP/1.1\r\nX-aws-ec2-metadata-token: s3cr3t\r\n", 12)
    p, alerts = run(_late([(315, build.VAR), (1, 8), (2, 8)], [section, 100, 1]), src=("192.0.2.63", 4739))
    (a,) = alerts
    assert (a["signal"], a["http_method"], a["url"], a["headers"]) == ("header", "GET", "/x", ["x-aws-ec2-metadata-token"])
    assert p.exporters.total("template_misses") == p.exporters.total("sets_late") == 1
    assert b"s3cr3t" not in msgpack.packb(a)


def test_config_header_names_are_checked():
    with pytest.raises(config.ConfigError):
        config.parse(CONFIG.replace('"Metadata-Flavor"', '"Metadata Flavor"'))
    with pytest.raises(config.ConfigError):
        config.parse(CONFIG.replace('"Metadata-Flavor"', '"' + '", "'.join(f"h{i}" for i in range(40)) + '"'))
    assert config.parse(CONFIG).http.header_names == ("X-aws-ec2-metadata-token", "Metadata-Flavor")


def test_metrics_label_agents_apart():
    from imds_flow.metrics import render_prometheus
    f = frame(CLIENT, OTHER, 1, 443, b"", 5)
    p, _ = run([sflow([packet_sample(1, f)], seq=1), sflow([packet_sample(1, f)], seq=1, sub_agent=2)])
    text = render_prometheus(p.snapshot())
    lines = [ln for ln in text.splitlines() if ln.startswith("imds_flow_records_total{")]
    assert len(lines) == len(set(ln.rsplit(" ", 1)[0] for ln in lines)) == 3     # source row + two agents
    assert any('sub_agent="2"' in ln and ln.endswith(" 1") for ln in lines)
    assert "imds_flow_sflow_samples_skipped_total" in text
