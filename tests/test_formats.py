"""imds_flow.formats: msgpack as it was, and ECS JSON lines checked field by field."""
from __future__ import annotations

import json
import socket

import msgpack
import pytest

from imds_flow import config as config_mod
from imds_flow import formats, sigma
from imds_flow.app import Pipeline

V4 = {"ts": 1759947300.5, "exporter": "192.0.2.1", "exporter_port": 2055, "version": 9, "src": "10.1.2.3",
      "dst": "169.254.169.254", "sport": 51234, "dport": 80, "proto": 6, "vlan": 30, "endpoint": "aws-imds-ipv4",
      "direction": "request", "bytes": 400, "packets": 5, "first_seen": 1759947299.0, "last_seen": 1759947300.25,
      "count": 3, "sampling_rate": 1}
V6 = {"ts": 1759947301.0, "exporter": "2001:db8::1", "exporter_port": 4739, "version": 10, "src": "fd00:ec2::254",
      "dst": "2001:db8:5::7", "sport": 0, "dport": 0, "proto": 58, "vlan": None, "endpoint": "aws-imds-ipv6",
      "direction": "response", "bytes": 64, "packets": 1, "first_seen": None, "last_seen": None, "count": 1,
      "sampling_rate": 100}


def _ecs(alert):
    line = formats.encoder("ecs-json").encode(alert)
    assert line.endswith(b"\n") and line.count(b"\n") == 1
    return json.loads(line)


def test_ecs_ipv4_field_by_field():
    doc = _ecs(V4)
    assert list(doc)[0] == "@timestamp"
    assert doc["@timestamp"] == "2025-10-08T18:15:00.500Z"
    assert doc["ecs"] == {"version": formats.ECS_VERSION}
    assert doc["event"] == {"kind": "alert", "category": ["network"], "type": ["connection"], "module": "imds_flow",
                            "dataset": "imds_flow.alert", "start": "2025-10-08T18:14:59.000Z",
                            "end": "2025-10-08T18:15:00.250Z", "id": formats.alert_id(V4), "severity": 7}
    assert doc["source"] == {"ip": "10.1.2.3", "port": 51234, "bytes": 400, "packets": 5}
    assert doc["destination"] == {"ip": "169.254.169.254", "port": 80}
    assert doc["network"] == {"transport": "tcp", "iana_number": "6", "type": "ipv4", "bytes": 400, "packets": 5,
                              "vlan": {"id": "30"}, "community_id": formats.community_id(V4)}
    host = socket.gethostname()
    assert doc["observer"] == {"ip": ["192.0.2.1"], "hostname": host, "name": host}
    assert doc["rule"] == {"name": "aws-imds-ipv4", "ruleset": "imds-flow", "id": sigma.rule_id("bulletin")}
    assert doc["related"] == {"ip": ["10.1.2.3", "169.254.169.254"]}
    assert doc["threat"]["framework"] == "MITRE ATT&CK"
    assert doc["threat"]["technique"]["subtechnique"]["id"] == ["T1552.005"]
    assert doc["threat"]["tactic"]["name"] == ["Credential Access"]
    assert doc["imds_flow"] == {"count": 3, "direction": "request", "exporter_port": 2055, "netflow_version": 9,
                                "sampling_rate": 1}
    assert doc["message"].startswith("instance-metadata traffic 10.1.2.3:51234 -> 169.254.169.254:80 tcp")
    assert set(doc) == {"@timestamp", "ecs", "event", "source", "destination", "network", "observer", "rule",
                        "threat", "imds_flow", "message", "related"}


def test_ecs_ipv6_icmp_leaves_missing_values_out():
    doc = _ecs(V6)
    assert doc["network"] == {"transport": "ipv6-icmp", "iana_number": "58", "type": "ipv6", "bytes": 64, "packets": 1,
                              "community_id": formats.community_id(V6)}
    assert "start" not in doc["event"] and "end" not in doc["event"]
    assert doc["source"] == {"ip": "fd00:ec2::254", "port": 0, "bytes": 64, "packets": 1}
    assert doc["destination"] == {"ip": "2001:db8:5::7"} and doc["icmp"] == {"type": 0, "code": 0}   # not a port
    assert doc["observer"]["ip"] == ["2001:db8::1"]
    assert doc["rule"]["id"] == sigma.rule_id("response") and doc["event"]["severity"] == 9
    assert "null" not in json.dumps(doc)


def test_unknown_transport_keeps_the_number():
    doc = _ecs({**V4, "proto": 253})
    assert "transport" not in doc["network"] and doc["network"]["iana_number"] == "253"


@pytest.mark.parametrize("alert", [V4, V6])
def test_ecs_reads_back_to_the_alert(alert):
    assert formats.from_ecs(_ecs(alert)) == alert


def test_msgpack_is_the_alert_map():
    enc = formats.encoder()
    assert msgpack.unpackb(enc.encode(V4), raw=False) == V4


def test_unknown_format():
    with pytest.raises(ValueError, match="ecs-json"):
        formats.encoder("xml")


class _Sink:
    def __init__(self):
        self.data = b""

    def write_alerts(self, alerts):
        self.data += b"".join(alerts)

    def flush(self):
        pass

    def close(self):
        pass


def test_pipeline_writes_the_format_it_is_given():
    cfg = config_mod.load(None)
    for name, decode in (("ecs-json", lambda b: [json.loads(x) for x in b.splitlines()]),
                         ("msgpack", lambda b: list(msgpack.Unpacker(__import__("io").BytesIO(b), raw=False)))):
        sink = _Sink()
        pipeline = Pipeline(cfg, sink, encoder=formats.encoder(name))
        pipeline._emit(V4)
        pipeline._emit(V6)
        pipeline.flush()
        out = decode(sink.data)
        assert len(out) == 2
        assert (out[0]["rule"]["name"] if name == "ecs-json" else out[0]["endpoint"]) == "aws-imds-ipv4"


def test_default_pipeline_is_msgpack():
    pipeline = Pipeline(config_mod.load(None), _Sink())
    assert isinstance(pipeline.encoder, formats.MsgpackEncoder)


@pytest.mark.parametrize("command", ["listen", "replay"])
def test_cli_has_the_format_option(command):
    from click.testing import CliRunner

    from imds_flow.cli import cli
    out = CliRunner().invoke(cli, [command, "--help"])
    assert "--alerts-format [msgpack|ecs-json]" in out.output


def test_ecs_fields_an_alert_may_carry():
    """Interfaces, the URL and method (sampled packets), matched header names, the export format."""
    doc = _ecs({**V4, "in_if": 3, "out_if": 0, "url": "/latest/api/token", "http_method": "PUT",
                "headers": ["x-aws-ec2-metadata-token-ttl-seconds"], "signal": "header", "format": "sflow"})
    assert doc["observer"]["ingress"] == {"interface": {"id": "3"}}      # ECS: keyword
    assert doc["observer"]["egress"] == {"interface": {"id": "0"}}
    assert doc["url"] == {"original": "/latest/api/token"} and doc["http"] == {"request": {"method": "PUT"}}
    assert doc["imds_flow"]["headers"] == ["x-aws-ec2-metadata-token-ttl-seconds"]
    assert (doc["imds_flow"]["signal"], doc["imds_flow"]["export_format"]) == ("header", "sflow")
    back = formats.from_ecs(doc)
    assert (back["in_if"], back["url"], back["http_method"], back["format"]) == (3, "/latest/api/token", "PUT", "sflow")
    assert "url" not in formats.from_ecs(_ecs(V4))                      # absent stays absent
    assert "http_host" not in back and "domain" not in doc["url"]        # None: no key, no ECS field


def test_ecs_http_host_is_url_domain():
    """A flow record's host element (IPFIX 460, nProbe HTTP_HOST) goes to url.domain, and back."""
    doc = _ecs({**V4, "url": "/latest/api/token", "http_method": "PUT", "http_host": "169.254.169.254"})
    assert doc["url"] == {"original": "/latest/api/token", "domain": "169.254.169.254"}
    assert formats.from_ecs(doc)["http_host"] == "169.254.169.254"


def test_icmp_type_and_code_are_not_ports():
    echo = {**V4, "proto": 1, "sport": 0, "dport": 8 << 8}                   # NetFlow: type * 256 + code
    doc = _ecs(echo)
    assert doc["icmp"] == {"type": 8, "code": 0} and "port" not in doc["destination"]
    assert formats.from_ecs(doc)["dport"] == 8 << 8


def test_community_id_matches_the_specification():
    # values from corelight/pycommunityid's README and the specification's ordering rule
    tcp = {"src": "127.0.0.1", "dst": "10.0.0.1", "sport": 1234, "dport": 80, "proto": 6}
    assert formats.community_id(tcp) == "1:mgRgpIZSu0KHDp/QrtcWZpkJpMU="
    flipped = {"src": "10.0.0.1", "dst": "127.0.0.1", "sport": 80, "dport": 1234, "proto": 6}
    assert formats.community_id(flipped) == formats.community_id(tcp)
    request = {"src": "10.0.0.1", "dst": "10.0.0.2", "sport": 0, "dport": 8 << 8, "proto": 1}
    reply = {"src": "10.0.0.2", "dst": "10.0.0.1", "sport": 0, "dport": 0, "proto": 1}
    assert formats.community_id(request) == formats.community_id(reply)  # echo request and reply: one flow


def test_event_id_is_stable_and_tells_alerts_apart():
    assert formats.alert_id(dict(V4)) == formats.alert_id(V4)
    assert formats.alert_id({**V4, "count": 4}) != formats.alert_id(V4)
    assert len({formats.alert_id({**V4, "sport": p}) for p in range(100)}) == 100


def test_a_test_alert_says_so():
    doc = _ecs({**V4, "test": True})
    assert doc["tags"] == ["test"] and doc["imds_flow"]["test"] is True and doc["event"]["severity"] == 1
    assert doc["message"].startswith("TEST alert (imds-flow probe)")
