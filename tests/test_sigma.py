"""imds_flow.sigma: the generated rules (always), and their conversion by the pySigma backends (with the
`sigma` extra; the tests skip without it on a developer's machine and fail without it in CI)."""
from __future__ import annotations

import os
import re
import subprocess
import sys
import types
import uuid

import pytest

from imds_flow import config as config_mod
from imds_flow import sigma

CONFIG = """
[[endpoints]]
name = "aws-imds-ipv4"
address = "169.254.169.254"

[[endpoints]]
name = "aws-imds-ipv6"
address = "fd00:ec2::254"

[suppress]
source_subnets = ["10.20.0.0/16", "2001:db8:20::/48"]
vlans = [30]
"""
ENDPOINTS = ("169.254.169.254", "fd00:ec2::254")
PATHS = ("/latest/meta-data", "/latest/api/token")
SUBNETS = ("10.20.0.0/16", "2001:db8:20::/48")


def require_pysigma():
    """Skip without pySigma on a developer's machine; in CI (CI=true) the extra is installed, so fail."""
    try:
        import sigma.backends.kusto  # noqa: F401
        import sigma.backends.splunk  # noqa: F401
        import sigma.backends.elasticsearch  # noqa: F401
        import sigma.collection  # noqa: F401
        import yaml  # noqa: F401
    except ImportError as e:
        if os.environ.get("CI") == "true":
            pytest.fail(f"the sigma extra must be installed in CI: {e}")
        pytest.skip(f"pySigma not installed ({e}); pip install -e '.[sigma]'")


@pytest.fixture(scope="module")
def cfg():
    return config_mod.parse(CONFIG, "test.toml")


def _by_key(rule_list):
    return {next(s.key for s in sigma.SOURCES if sigma.rule_id(s.key) == r["id"]): r for r in rule_list}


# --- the rules, without pySigma -----------------------------------------------------------------

def test_bulletin_rule_matches_the_bulletin(cfg):
    rule, _ = sigma.rules(cfg)
    assert rule["logsource"] == {"category": "network"}
    det = rule["detection"]
    for field in ("dst_ip", "destination.ip", "c-ip"):
        sel = [v for k, v in det.items() if k.startswith("ip_") and f"{field}|cidr" in v]
        assert sel == [{f"{field}|cidr": ["169.254.169.254/32", "fd00:ec2::254/128"]}], field
    for field in ("url", "request_url"):
        assert {f"{field}|contains": list(PATHS)} in det.values()
    assert {"request_headers|contains": list(sigma.DEFAULT_HEADER_NAMES)} in det.values()
    for field in ("src_ip", "source.ip", "c-ip"):
        assert {f"{field}|cidr": list(SUBNETS)} in det.values()
    assert {"network.vlan.id": [30]} in det.values()
    assert det["condition"] == "(1 of ip_* or 1 of http_*) and not 1 of filter_*"
    assert all(k.startswith(("ip_", "http_", "filter_")) for k in det if k != "condition")
    assert rule["tags"] == ["attack.credential-access", "attack.t1552.005"]
    assert rule["level"] and rule["falsepositives"]
    assert "c-ip is the client address" in rule["description"]


def test_rule_ids_are_stable_and_distinct(cfg):
    default = config_mod.load(None)
    ids = [r["id"] for r in sigma.rules(cfg, "standard")] + [sigma.rules(cfg)[0]["id"]]
    assert len(set(ids)) == len(ids)
    assert all(uuid.UUID(i).version == 5 for i in ids)
    assert ids == [r["id"] for r in sigma.rules(default, "standard")] + [sigma.rules(default)[0]["id"]]
    assert sigma.rules(cfg) == sigma.rules(config_mod.parse(CONFIG, "test.toml"))


def test_response_rule_is_the_impersonation_itself(cfg):
    _, rule = sigma.rules(cfg)
    det = rule["detection"]
    assert rule["id"] == sigma.rule_id("response") and "impersonation" in rule["title"]
    assert rule["logsource"] == {"category": "network"}
    assert det["ip_src_ip"] == {"src_ip|cidr": ["169.254.169.254/32", "fd00:ec2::254/128"]}
    assert det["ip_source_ip"] == {"source.ip|cidr": ["169.254.169.254/32", "fd00:ec2::254/128"]}
    assert det["filter_local_dst_ip"] == {"dst_ip|cidr": list(SUBNETS)}   # the local host is the one answered
    assert det["condition"] == "1 of ip_* and not 1 of filter_*"


def test_alerts_carry_the_ids_of_the_rules(cfg):
    """rule.id in an ECS alert (and CEF/LEEF) is the id of the rule `imds-flow sigma` prints for its direction."""
    from imds_flow import formats
    bulletin, response = sigma.rules(cfg)
    assert formats.alert_rule_id({"direction": "request"}) == bulletin["id"]
    assert formats.alert_rule_id({"direction": "response"}) == response["id"]


def test_header_names_come_from_the_config_when_it_has_them(cfg):
    with_http = types.SimpleNamespace(**{**vars(cfg), "http": types.SimpleNamespace(
        url_substrings=list(PATHS), header_names=["x-aws-ec2-metadata-token"])})
    rule, _ = sigma.rules(with_http)
    assert rule["detection"]["http_request_headers"] == {"request_headers|contains": ["x-aws-ec2-metadata-token"]}


def test_no_suppression_no_filter():
    rule, _ = sigma.rules(config_mod.load(None))
    assert rule["detection"]["condition"] == "1 of ip_* or 1 of http_*"
    assert not any(k.startswith("filter_") for k in rule["detection"])


def test_url_substrings_come_from_the_config_when_it_has_them(cfg):
    with_http = types.SimpleNamespace(**{**vars(cfg), "http": types.SimpleNamespace(url_substrings=["/computeMetadata/v1"])})
    rule, _ = sigma.rules(with_http)
    assert rule["detection"]["http_url"] == {"url|contains": ["/computeMetadata/v1"]}


def test_standard_log_sources_use_taxonomy_fields(cfg):
    rules = _by_key(sigma.rules(cfg, "standard"))
    assert set(rules) == {"firewall", "proxy", "network_connection", "zeek_conn", "zeek_http"}
    expect = {  # (logsource, endpoint fields, url fields, local-host field)
        "firewall": ({"category": "firewall"}, {"dst_ip"}, set(), "src_ip"),
        "proxy": ({"category": "proxy"}, {"dst_ip", "cs-host"}, {"c-uri"}, "src_ip"),
        "network_connection": ({"category": "network_connection", "product": "windows"}, {"DestinationIp"}, set(),
                               "SourceIp"),
        "zeek_conn": ({"product": "zeek", "service": "conn"}, {"id.resp_h"}, set(), "id.orig_h"),
        "zeek_http": ({"product": "zeek", "service": "http"}, {"id.resp_h", "host"}, {"uri"}, "id.orig_h"),
    }
    for key, (logsource, ip, url, local) in expect.items():
        rule = rules[key]
        det = rule["detection"]
        fields = {f.split("|")[0]: name for name, sel in det.items() if name != "condition" for f in sel}
        assert rule["logsource"] == logsource
        assert {f for f, n in fields.items() if n.startswith("ip_")} == ip
        assert {f for f, n in fields.items() if n.startswith("http_")} == url
        assert {f for f, n in fields.items() if n.startswith("filter_")} == {local}
        assert det[f"filter_local_{re.sub('[^a-z0-9]+', '_', local.lower())}"] == {f"{local}|cidr": list(SUBNETS)}


def test_host_header_values_only_for_single_addresses():
    cfg = config_mod.parse('[[endpoints]]\nname="a"\naddress="169.254.169.254"\n'
                           '[[endpoints]]\nname="b"\naddress="fd00:ec2::/64"\n')
    rules = _by_key(sigma.rules(cfg, "standard"))
    assert rules["proxy"]["detection"]["ip_cs_host"] == {"cs-host": ["169.254.169.254"]}
    assert rules["proxy"]["detection"]["ip_dst_ip"] == {"dst_ip|cidr": ["169.254.169.254/32", "fd00:ec2::/64"]}


def test_cli_prints_yaml_without_pysigma_installed(tmp_path):
    path = tmp_path / "c.toml"
    path.write_text(CONFIG)
    code = ("import sys; sys.modules['sigma'] = None; sys.modules['yaml'] = None\n"
            "from imds_flow.cli import main\n"
            "sys.argv = ['imds-flow'] + sys.argv[1:]\nmain()")
    ok = subprocess.run([sys.executable, "-c", code, "sigma", "--config", str(path)], capture_output=True, text=True)
    assert ok.returncode == 0, ok.stderr
    assert ok.stdout == sigma.to_yaml(sigma.rules(config_mod.load(path)))
    missing = subprocess.run([sys.executable, "-c", code, "sigma", "--target", "splunk"], capture_output=True,
                             text=True)
    assert missing.returncode == 2
    assert missing.stderr.strip().count("\n") == 0
    assert "pip install 'imds-flow[sigma]'" in missing.stderr
    bad = subprocess.run([sys.executable, "-c", code, "sigma", "--target", "splunk-cim", "--logsource", "bulletin"],
                         capture_output=True, text=True)
    assert bad.returncode == 2 and "--logsource standard" in bad.stderr


# --- the YAML and the conversions, with pySigma ---------------------------------------------------

def test_yaml_is_what_the_rules_say_and_pysigma_parses_it(cfg):
    require_pysigma()
    import yaml
    from sigma.collection import SigmaCollection

    for logsource in ("bulletin", "standard"):
        rules = sigma.rules(cfg, logsource)
        text = sigma.to_yaml(rules)
        docs = list(yaml.safe_load_all(text))
        for doc in docs:
            doc["date"] = str(doc["date"])
        assert docs == rules
        collection = SigmaCollection.from_yaml(text)
        assert not collection.errors
        assert [str(r.id) for r in collection.rules] == [r["id"] for r in rules]


# Per target and rule: field names the query must compare (after the target's pipelines).
EXPECTED_FIELDS = {
    "splunk": {"bulletin": ("dst_ip", "destination.ip", '"c-ip"', "url", "request_url", "request_headers",
                            "src_ip", "source.ip"),
               "response": ("src_ip", "source.ip", "dst_ip", "destination.ip"),
               "firewall": ("dst_ip", "src_ip"), "proxy": ("dst_ip", '"cs-host"', '"c-uri"', "src_ip"),
               "network_connection": ("DestinationIp", "SourceIp"), "zeek_conn": ("id.resp_h", "id.orig_h"),
               "zeek_http": ("id.resp_h", "host", "uri", "id.orig_h")},
    "splunk-cim": {"firewall": ("All_Traffic.dest_ip", "All_Traffic.src_ip"),
                   "proxy": ("Web.dest_ip", "Web.dest", "Web.url", "Web.src"),
                   "network_connection": ("All_Traffic.dest_ip", "All_Traffic.src_ip"),
                   "zeek_conn": ("All_Traffic.dest_ip", "All_Traffic.src_ip"),
                   "zeek_http": ("Web.dest_ip", "Web.dest", "Web.url", "Web.src")},
    "lucene": {"bulletin": ("destination.ip", "client.ip", "url.original", "source.ip"),
               "response": ("source.ip", "destination.ip"),
               "firewall": ("destination.ip", "source.ip"),
               "proxy": ("destination.ip", "url.domain", "url.original", "source.ip"),
               "network_connection": ("destination.ip", "source.ip"),
               "zeek_conn": ("destination.ip", "source.ip", "event.dataset"),
               "zeek_http": ("destination.ip", "url.domain", "url.original", "source.ip", "event.dataset")},
    "esql": {"bulletin": ("destination.ip", "client.ip", "url.original", "source.ip"),
             "response": ("source.ip", "destination.ip"),
             "firewall": ("destination.ip", "source.ip"),
             "proxy": ("destination.ip", "url.domain", "url.original", "source.ip"),
             "network_connection": ("destination.ip", "source.ip"),
             "zeek_conn": ("destination.ip", "source.ip"), "zeek_http": ("destination.ip", "url.original")},
    "eql": {"bulletin": ("destination.ip", "client.ip", "url.original", "source.ip"),
            "response": ("source.ip", "destination.ip"),
            "firewall": ("destination.ip", "source.ip"),
            "proxy": ("destination.ip", "url.domain", "url.original", "source.ip"),
            "network_connection": ("destination.ip", "source.ip"),
            "zeek_conn": ("destination.ip", "source.ip"), "zeek_http": ("destination.ip", "url.original")},
    "kusto": {"bulletin": ("union *\n| where ", "column_ifexists('dst_ip', '')", "column_ifexists('destination.ip', '')",
                           "column_ifexists('c-ip', '')", "column_ifexists('url', '')",
                           "column_ifexists('request_url', '')", "column_ifexists('request_headers', '')",
                           "column_ifexists('src_ip', '')", "column_ifexists('source.ip', '')"),
              "response": ("union *\n| where ", "column_ifexists('src_ip', '')", "column_ifexists('dst_ip', '')"),
              **{key: tuple(f"column_ifexists('{f}', '')" for f in fields) for key, fields in (
                  ("firewall", ("dst_ip", "src_ip")), ("proxy", ("dst_ip", "cs-host", "c-uri", "src_ip")),
                  ("network_connection", ("DestinationIp", "SourceIp")), ("zeek_conn", ("id.resp_h", "id.orig_h")),
                  ("zeek_http", ("id.resp_h", "host", "uri", "id.orig_h")))}},
    "sentinel-asim": {"firewall": ("imNetworkSession", "DstIpAddr", "SrcIpAddr"),
                      "proxy": ("imWebSession", "DstIpAddr", "HttpHost", "Url", "SrcIpAddr"),
                      "network_connection": ("imNetworkSession", "DstIpAddr", "SrcIpAddr"),
                      "zeek_conn": ("imNetworkSession", "DstIpAddr", "SrcIpAddr"),
                      "zeek_http": ("imWebSession", "DstIpAddr", "HttpHost", "Url", "SrcIpAddr")},
    "microsoft-xdr": {"network_connection": ("DeviceNetworkEvents", "RemoteIP", "LocalIP")},
    "qradar": {"firewall": ("destinationip", "sourceip"), "proxy": ("destinationip", "URL", "sourceip"),
               "network_connection": ("destinationip", "sourceip"), "zeek_conn": ("destinationip", "sourceip"),
               "zeek_http": ("destinationip", "URL", "sourceip")},
    "qradar-flows": {"bulletin": ("FROM flows", "destinationip", "destinationv6", "sourceip", "sourcev6"),
                     "response": ("FROM flows", "sourceip", "sourcev6", "destinationip", "destinationv6")},
}

# A field written as a string literal where a field belongs: such a query can never match.
STRING_LITERAL_FIELD = {
    "kusto": re.compile(r"""(['"])[^'"]*\1\s*(=~|==|!~|!=|in~|in\b|contains|has|startswith|endswith)"""
                        r"""|is_in_range\(\s*['"]"""),
    "splunk": re.compile(r"'[^']*'\s*(=|!=|IN\b)"),
    "esql": re.compile(r'"[^"]*"\s*(==|!=|like|in\b|rlike)|cidr_match\(\s*"'),
    "eql": re.compile(r'"[^"]*"\s*(==|:|like)|cidrMatch\(\s*"'),
    "lucene": re.compile(r'"[^"]*"\s*:'),
    "qradar": re.compile(r"'[^']*'\s*(=|LIKE|ILIKE|IN\b)|INCIDR\('[^']*',\s*'"),
}
LANGUAGE = {"splunk": "splunk", "splunk-cim": "splunk", "lucene": "lucene", "esql": "esql", "eql": "eql",
            "kusto": "kusto", "sentinel-asim": "kusto", "microsoft-xdr": "kusto", "qradar": "qradar",
            "qradar-flows": "qradar"}
URL_SOURCES = {"bulletin", "proxy", "zeek_http"}


def _plain(query: str) -> str:
    return query.replace("\\", "")


def _source_key(rule: dict) -> str:
    return next(s.key for s in sigma.SOURCES if sigma.rule_id(s.key) == rule["id"])


@pytest.mark.parametrize("target", list(sigma.TARGETS))
def test_every_rule_converts_with_the_right_fields(cfg, target):
    require_pysigma()
    for logsource in sigma.TARGETS[target].logsources:
        converted = sigma.convert(cfg, target, logsource)
        keys = [_source_key(r) for r, _ in converted]
        expected = [k for k in sigma.LOGSOURCES[logsource] if k in EXPECTED_FIELDS[target]]
        assert keys == expected, (target, logsource)
        for rule, query in converted:
            key = _source_key(rule)
            plain = _plain(query)
            for field in EXPECTED_FIELDS[target][key]:
                assert field in plain, (target, key, field, query)
            for addr in ENDPOINTS:
                assert addr in plain, (target, key, addr, query)
            if key in URL_SOURCES and target != "qradar-flows":      # flows carry no URL
                for path in PATHS:
                    assert path in plain.lower(), (target, key, path, query)
            negation = re.search(r"\bnot\b", plain, re.IGNORECASE)
            assert negation, (target, key, query)
            for subnet in SUBNETS:
                assert subnet in plain[negation.start():], (target, key, subnet, query)
            literal = STRING_LITERAL_FIELD[LANGUAGE[target]].search(query)
            assert literal is None, (target, key, literal and literal.group(0), query)


def test_kusto_findings_are_fixed(cfg):
    """The Kusto backend alone writes 'destination.ip' (a string literal in KQL) and ipv4_is_in_range for IPv6."""
    require_pysigma()
    (_, query), _ = sigma.convert(cfg, "kusto", "bulletin")
    assert query.startswith("union *\n| where ")                 # runnable as printed: a table, then where
    assert "'destination.ip' " not in query and "column_ifexists('column_ifexists" not in query
    assert 'ipv6_is_in_range(column_ifexists(\'dst_ip\', \'\'), "fd00:ec2::254/128")' in query
    assert 'ipv4_is_in_range(column_ifexists(\'dst_ip\', \'\'), "169.254.169.254/32")' in query
    assert "ipv4_is_in_range(column_ifexists('dst_ip', ''), \"fd00" not in query
    # the other KQL targets keep their tables' own columns, bracket-quoted where needed
    [(_, asim)] = [(r, q) for r, q in sigma.convert(cfg, "sentinel-asim") if "imNetworkSession" in q][:1]
    assert "column_ifexists" not in asim


def test_qradar_matches_ipv6_in_its_v6_fields(cfg):
    require_pysigma()
    for target, logsource in (("qradar", "standard"), ("qradar-flows", "bulletin")):
        for rule, query in sigma.convert(cfg, target, logsource):
            assert "INCIDR('fd00:ec2::254/128', destinationv6)" in query or \
                "INCIDR('fd00:ec2::254/128', sourcev6)" in query, query
            assert "fd00:ec2::254/128', destinationip" not in query and "fd00:ec2::254/128', sourceip" not in query
            assert "INCIDR('2001:db8:20::/48', " in query and "'10.20.0.0/16', " in query


def test_standard_pipelines_place_the_standard_rules(cfg):
    """Each backend with its own standard pipeline, where that pipeline knows the log source."""
    require_pysigma()
    from sigma.collection import SigmaCollection
    from sigma.plugins import InstalledSigmaPlugins

    plugins = InstalledSigmaPlugins.autodiscover()
    rules = _by_key(sigma.rules(cfg, "standard"))
    cases = [("splunk", "splunk_cim", "proxy", "data_model", ("Web.dest_ip", "Web.url", "Web.src")),
             ("lucene", "ecs_windows", "network_connection", "default", ("destination.ip", "source.ip")),
             ("kusto", "microsoft_xdr", "network_connection", "default", ("RemoteIP", "LocalIP"))]
    for backend, pipeline, key, fmt, fields in cases:
        cls = sigma._backend_class(backend, plugins)
        [query] = cls(plugins.pipelines[pipeline]()).convert(SigmaCollection.from_yaml(sigma.to_yaml([rules[key]])),
                                                             fmt)
        for f in fields:
            assert f in query, (backend, pipeline, f, query)
        for addr in ENDPOINTS + SUBNETS:
            assert addr in _plain(query)


def test_bulletin_rule_has_no_place_in_standard_pipelines(cfg):
    """The issue's finding: category network is not in Sigma's taxonomy; the pipelines reject it."""
    require_pysigma()
    from sigma.collection import SigmaCollection
    from sigma.exceptions import SigmaError
    from sigma.plugins import InstalledSigmaPlugins

    plugins = InstalledSigmaPlugins.autodiscover()
    text = sigma.to_yaml(sigma.rules(cfg))
    for backend, pipeline in (("splunk", "splunk_cim"), ("kusto", "sentinel_asim"), ("kusto", "microsoft_xdr")):
        with pytest.raises(SigmaError):
            plugins.backends[backend](plugins.pipelines[pipeline]()).convert(SigmaCollection.from_yaml(text))


def test_cli_target(tmp_path):
    require_pysigma()
    path = tmp_path / "c.toml"
    path.write_text(CONFIG)
    out = subprocess.run([sys.executable, "-m", "imds_flow.cli", "sigma", "--config", str(path), "--target",
                          "kusto"], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert out.stdout.startswith("# AWS instance metadata service (IMDS) traffic on a local network (")
    assert "column_ifexists('destination.ip', '')" in out.stdout


def test_empty_url_substrings_mean_no_url_selection():
    """`http.url_substrings = []` turns the collector's URL signal off; the generated rule must agree
    (it must not fall back to the defaults) and still be a valid rule on addresses and the header."""
    conf = config_mod.parse(CONFIG + "\n[http]\nurl_substrings = []\n")
    for rule in sigma.rules(conf, "bulletin") + sigma.rules(conf, "standard"):
        det = rule["detection"]
        text = repr(det)
        assert not any(p in text for p in PATHS), rule["title"]
        for block in re.findall(r"1 of (\w+)_\*", det["condition"]):
            assert any(k.startswith(block + "_") for k in det if k != "condition"), det["condition"]
    bulletin = sigma.rules(conf, "bulletin")[0]["detection"]
    assert any(k.startswith("ip_") for k in bulletin)
