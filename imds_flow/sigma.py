"""Sigma rules from the collector's own config: the bulletin's rule, or the same detection in Sigma's
standard log sources, and their offline conversion to SIEM queries.

Rules: a log source is data (SOURCES below): which fields hold the metadata address, the URL, the Host
header and the request headers, and which field holds the local host that suppression applies to. Values
come from the config: endpoints as `|cidr`, URL paths as `|contains`, suppressed subnets as filters.
Rule ids are uuid5 of the rule's name, so the same rule keeps its id when the config changes.
"""
from __future__ import annotations

import copy
import ipaddress
import re
import uuid
from dataclasses import dataclass

from .config import Config

__all__ = ["rule_id", "SOURCES", "LOGSOURCES", "DEFAULT_URL_SUBSTRINGS", "IMDSV2_HEADER", "DEFAULT_HEADER_NAMES", "rules", "to_yaml",
           "TARGETS", "convert", "SigmaUnavailable", "SigmaTargetError", "INSTALL_HINT"]

DEFAULT_URL_SUBSTRINGS = ("/latest/meta-data", "/latest/api/token")
IMDSV2_HEADER = "X-aws-ec2-metadata-token"
DEFAULT_HEADER_NAMES = ("x-aws-ec2-metadata-token", "x-aws-ec2-metadata-token-ttl-seconds")   # http.header_names
NAMESPACE = uuid.UUID("5d1c8a3e-7f0b-5b5e-9c1e-1a2b3c4d5e6f")   # fixed: never change, ids derive from it
INSTALL_HINT = "converting needs pySigma and its backends: pip install 'imds-flow[sigma]'"

TITLE = "AWS instance metadata service (IMDS) traffic on a local network"
TAGS = ("attack.credential-access", "attack.t1552.005")
REFERENCES = (
    "AWS security bulletin AWS-2025-021, IMDS impersonation",
    "https://attack.mitre.org/techniques/T1552/005/",
)
DATE = "2025-10-08"          # the bulletin's publication date; fixed so the output is reproducible
FALSEPOSITIVES = (
    "Hosts that really are EC2 instances or run AWS emulators (LocalStack, amazon-ec2-metadata-mock) "
    "on this network: add their subnets to suppress.source_subnets",
    "Other clouds' metadata services share 169.254.169.254 (GCP, Azure, OpenStack, Oracle): "
    "on-premises, those are just as unexpected",
)
LEVEL = "high"


@dataclass(frozen=True)
class Source:
    """How one log schema spells the detection; every tuple holds field names."""
    key: str
    title: str
    logsource: dict
    ip: tuple[str, ...] = ()         # endpoint addresses, |cidr
    host: tuple[str, ...] = ()       # HTTP Host header: endpoint addresses as written in a URL
    url: tuple[str, ...] = ()        # URL or URI: |contains each configured path
    header: tuple[str, ...] = ()     # request headers: |contains the IMDSv2 token header
    local: tuple[str, ...] = ()      # the local (client) host: |cidr suppressed subnets
    vlan: tuple[str, ...] = ()       # VLAN id: suppressed VLANs
    note: str = ""
    description: str = ""            # "" : traffic to the endpoint; else what the rule is about



_C_IP_NOTE = (
    "c-ip is the client address in W3C extended / IIS / proxy logs, not the destination: a metadata "
    "address there means a host on this network holds that address itself and makes requests, which is "
    "what a fake IMDS looks like. Requests to the endpoint are matched by dst_ip / destination.ip and the "
    "http_* selections; c-ip is also the local host the suppression filter applies to."
)

SOURCES = (
    Source("bulletin", "", {"category": "network"},
           ip=("dst_ip", "destination.ip", "c-ip"), url=("url", "request_url"),
           header=("request_headers",), local=("src_ip", "source.ip", "c-ip"),
           vlan=("network.vlan.id", "vlan"),
           note="The rule as AWS-2025-021 describes it, for any network telemetry: one selection per "
                "field spelling (generic, ECS, W3C). " + _C_IP_NOTE),
    Source("response", "response: IMDS impersonation", {"category": "network"},
           ip=("src_ip", "source.ip"), local=("dst_ip", "destination.ip"), vlan=("network.vlan.id", "vlan"),
           note="The response direction: a metadata address as the source of traffic on this network is "
                "something answering as the metadata service, the impersonation itself (the local host it "
                "answers is the destination; suppression applies to it).",
           description="Traffic from an instance-metadata endpoint address"),
    Source("firewall", "firewall", {"category": "firewall"},
           ip=("dst_ip",), local=("src_ip",),
           note="Firewall connection logs: the destination is the metadata address."),
    Source("proxy", "web proxy", {"category": "proxy"},
           ip=("dst_ip",), host=("cs-host",), url=("c-uri",), local=("src_ip",),
           note="Web proxy logs: the request goes to the metadata address (by destination or Host "
                "header) or asks for a metadata path."),
    Source("network_connection", "host network connection", {"category": "network_connection", "product": "windows"},
           ip=("DestinationIp",), local=("SourceIp",),
           note="Host network connections (Sysmon event 3, Defender, Windows filtering platform): "
                "a process on the host connects to the metadata address."),
    Source("zeek_conn", "Zeek conn", {"product": "zeek", "service": "conn"},
           ip=("id.resp_h",), local=("id.orig_h",),
           note="Zeek conn.log: the responder is the metadata address."),
    Source("zeek_http", "Zeek http", {"product": "zeek", "service": "http"},
           ip=("id.resp_h",), host=("host",), url=("uri",), local=("id.orig_h",),
           note="Zeek http.log: the request goes to the metadata address or asks for a metadata path."),
)
LOGSOURCES = {"bulletin": ("bulletin", "response"),
              "standard": tuple(s.key for s in SOURCES if s.key not in ("bulletin", "response"))}
_BY_KEY = {s.key: s for s in SOURCES}


def _slug(field: str) -> str:
    return re.sub(r"[^a-z0-9]+", "_", field.lower()).strip("_")


def _url_substrings(config: Config) -> tuple[str, ...]:
    """The collector's own list: an empty one turns the URL signal off, in the rule too."""
    http = getattr(config, "http", None)
    return tuple(getattr(http, "url_substrings", DEFAULT_URL_SUBSTRINGS))


def _header_names(config: Config) -> list[str]:
    http = getattr(config, "http", None)
    return list(getattr(http, "header_names", None) or DEFAULT_HEADER_NAMES)


def _host_values(config: Config) -> list[str]:
    """Single-address endpoints as a Host header spells them: v4 as is, v6 bracketed and bare."""
    out = []
    for ep in config.endpoints:
        net = ep.network
        if net.prefixlen != net.max_prefixlen:
            continue
        addr = str(net.network_address)
        out.extend([addr] if net.version == 4 else [f"[{addr}]", addr])
    return out


def _split_v6(field: str, values: list[str], v6_suffix: str | None) -> list[tuple[str, list[str]]]:
    """(field, values): with a v6_suffix, IPv6 networks go to field + suffix (QRadar keeps them apart)."""
    if v6_suffix is None:
        return [(field, values)]
    v4 = [v for v in values if ":" not in v]
    v6 = [v for v in values if ":" in v]
    return [(f, vs) for f, vs in ((field, v4), (field + v6_suffix, v6)) if vs]


def _detection(src: Source, config: Config, omit: frozenset[str] = frozenset(), v6_suffix: str | None = None) -> dict:
    cidrs = [str(ep.network) for ep in config.endpoints]
    hosts = _host_values(config)
    paths = list(_url_substrings(config))
    subnets = [str(n) for n in config.suppress.source_subnets]
    vlans = list(config.suppress.vlans)
    det: dict = {}
    for f in (f for f in src.ip if f not in omit):
        for field, values in _split_v6(f, cidrs, v6_suffix):
            det[f"ip_{_slug(field)}"] = {f"{field}|cidr": values}
    for f in (f for f in src.host if f not in omit):
        if hosts:
            det[f"ip_{_slug(f)}"] = {f: hosts}
    for f in (f for f in src.url if f not in omit and paths):
        det[f"http_{_slug(f)}"] = {f"{f}|contains": paths}
    for f in (f for f in src.header if f not in omit):
        det[f"http_{_slug(f)}"] = {f"{f}|contains": _header_names(config)}
    if subnets:
        for f in (f for f in src.local if f not in omit):
            for field, values in _split_v6(f, subnets, v6_suffix):
                det[f"filter_local_{_slug(field)}"] = {f"{field}|cidr": values}
    if vlans:
        for f in (f for f in src.vlan if f not in omit):
            det[f"filter_vlan_{_slug(f)}"] = {f: vlans}
    groups = [f"1 of {p}_*" for p in ("ip", "http") if any(k.startswith(p + "_") for k in det)]
    cond = " or ".join(groups)
    if any(k.startswith("filter_") for k in det):
        cond = f"({cond}) and not 1 of filter_*" if len(groups) > 1 else f"{cond} and not 1 of filter_*"
    det["condition"] = cond
    return det


def _description(src: Source, config: Config) -> str:
    eps = ", ".join(f"{ep.name} {ep.network}" for ep in config.endpoints)
    what = src.description or "Traffic to an instance-metadata endpoint"
    text = (f"{what} ({eps}) on a network where none may exist: "
            "a fake IMDS there can hand AWS tools running off EC2 unexpected credentials. "
            f"{src.note} Generated by imds-flow from {config.source}: the filters are the collector's own "
            "suppressed source subnets" + (" and VLANs." if src.vlan else "."))
    return text


def rules(config: Config, logsource: str = "bulletin") -> list[dict]:
    """The Sigma rules for `config`: the bulletin's one rule, or one per standard log source."""
    return [_rule(_BY_KEY[key], config) for key in LOGSOURCES[logsource]]


def rule_id(key: str) -> str:
    """The id of the rule for log source `key` (bulletin, response, firewall, ...); alerts carry the
    bulletin's (requests) or the response rule's as rule.id."""
    return str(uuid.uuid5(NAMESPACE, f"imds-flow/{key}"))


def _rule(src: Source, config: Config, omit: frozenset[str] = frozenset(), v6_suffix: str | None = None) -> dict:
    return {
        "title": TITLE + (f" ({src.title})" if src.title else ""),
        "id": rule_id(src.key),
        "status": "experimental",
        "description": _description(src, config),
        "references": list(REFERENCES),
        "author": "imds-flow",
        "date": DATE,
        "tags": list(TAGS),
        "logsource": dict(src.logsource),
        "detection": _detection(src, config, omit, v6_suffix),
        "falsepositives": list(FALSEPOSITIVES),
        "level": LEVEL,
    }


# --- YAML: the rules' shapes are fixed, so a small emitter keeps PyYAML out of the core --------

def _scalar(v) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int):
        return str(v)
    return "'" + str(v).replace("'", "''") + "'"


def _emit(value, indent: int, lines: list[str]) -> None:
    pad = "  " * indent
    for k, v in value.items():
        if isinstance(v, dict):
            lines.append(f"{pad}{k}:")
            _emit(v, indent + 1, lines)
        elif isinstance(v, list):
            lines.append(f"{pad}{k}:")
            lines.extend(f"{pad}  - {_scalar(x)}" for x in v)
        elif k in ("title", "id", "status", "author", "level", "condition", "category", "product",
                   "service", "date") and re.fullmatch(r"[\w .*()/:-]+", str(v)) and ": " not in str(v) \
                and not str(v).startswith(("*", "-")):
            lines.append(f"{pad}{k}: {v}")
        else:
            lines.append(f"{pad}{k}: {_scalar(v)}")


def to_yaml(rule_list: list[dict]) -> str:
    docs = []
    for rule in rule_list:
        lines: list[str] = []
        _emit(rule, 0, lines)
        docs.append("\n".join(lines) + "\n")
    return "---\n".join(docs)


# --- offline conversion with pySigma (the optional extra `imds-flow[sigma]`) --------------------

class SigmaUnavailable(RuntimeError):
    """pySigma or a backend is not installed."""


class SigmaTargetError(ValueError):
    """A target cannot convert the rules asked for (one line, for the CLI)."""


# Our fields in the schemas the SIEMs store them in, per log source: the small pipelines we ship where a
# backend's own pipeline does not place a rule (pySigma 1.5: Splunk CIM knows only proxy; ecs_zeek_beats does
# not know Zeek's own id.resp_h / id.orig_h and sends firewall rules to zeek.conn; sentinel_asim places neither
# firewall nor Zeek, rejects Sysmon's SourceIp and has no SrcIpAddr / DstIpAddr for web sessions; QRadar's
# field pipeline fails on |cidr values). None: the schema has no such column, the selection is left out.
FIELD_MAPS = {
    "ecs": {
        # the bulletin's rules name each field several ways; on ECS one name each is left (None: dropped as
        # a duplicate, or no ECS field: request header names have none, so that selection is left out)
        "bulletin": {"dst_ip": None, "c-ip": "client.ip", "url": "url.original", "request_url": None,
                     "request_headers": None, "src_ip": None, "vlan": None},
        "response": {"src_ip": None, "dst_ip": None, "vlan": None},
        "firewall": {"dst_ip": "destination.ip", "src_ip": "source.ip"},
        "proxy": {"dst_ip": "destination.ip", "cs-host": "url.domain", "c-uri": "url.original",
                  "src_ip": "source.ip"},
        "zeek_conn": {"id.resp_h": "destination.ip", "id.orig_h": "source.ip"},
        "zeek_http": {"id.resp_h": "destination.ip", "host": "url.domain", "uri": "url.original",
                      "id.orig_h": "source.ip"},
    },
    "cim": {
        "firewall": {"dst_ip": "All_Traffic.dest_ip", "src_ip": "All_Traffic.src_ip"},
        "network_connection": {"DestinationIp": "All_Traffic.dest_ip", "SourceIp": "All_Traffic.src_ip"},
        "zeek_conn": {"id.resp_h": "All_Traffic.dest_ip", "id.orig_h": "All_Traffic.src_ip"},
        "zeek_http": {"id.resp_h": "Web.dest_ip", "host": "Web.dest", "uri": "Web.url", "id.orig_h": "Web.src"},
    },
    "asim": {
        "firewall": {"dst_ip": "DstIpAddr", "src_ip": "SrcIpAddr"},
        "proxy": {"dst_ip": "DstIpAddr", "cs-host": "HttpHost", "c-uri": "Url", "src_ip": "SrcIpAddr"},
        "network_connection": {"DestinationIp": "DstIpAddr", "SourceIp": "SrcIpAddr"},
        "zeek_conn": {"id.resp_h": "DstIpAddr", "id.orig_h": "SrcIpAddr"},
        "zeek_http": {"id.resp_h": "DstIpAddr", "host": "HttpHost", "uri": "Url", "id.orig_h": "SrcIpAddr"},
    },
    "qradar": {
        # events and flows alike: IPv4 in sourceip / destinationip, IPv6 in sourcev6 / destinationv6 (the rules
        # are made with IPv6 networks under <field>_v6 for QRadar, see Target.v6_suffix)
        "bulletin": {"dst_ip": "destinationip", "destination.ip": None, "c-ip": None, "url": None,
                     "request_url": None, "request_headers": None, "src_ip": "sourceip", "source.ip": None,
                     "network.vlan.id": None, "vlan": None},
        "response": {"src_ip": "sourceip", "source.ip": None, "dst_ip": "destinationip", "destination.ip": None,
                     "network.vlan.id": None, "vlan": None},
        "firewall": {"dst_ip": "destinationip", "src_ip": "sourceip"},
        "proxy": {"dst_ip": "destinationip", "cs-host": None, "c-uri": "URL", "src_ip": "sourceip"},
        "network_connection": {"DestinationIp": "destinationip", "SourceIp": "sourceip"},
        "zeek_conn": {"id.resp_h": "destinationip", "id.orig_h": "sourceip"},
        "zeek_http": {"id.resp_h": "destinationip", "host": None, "uri": "URL", "id.orig_h": "sourceip"},
    },
}
for _fields in FIELD_MAPS["qradar"].values():
    _fields.update({f + "_v6": to[:-2] + "v6" for f, to in list(_fields.items()) if to in ("sourceip", "destinationip")})
# Per schema and log source: the Splunk CIM data model set, the ASIM table, extra conditions (ECS dataset).
_CIM_SETS = {"firewall": "Network_Traffic.All_Traffic", "network_connection": "Network_Traffic.All_Traffic",
             "zeek_conn": "Network_Traffic.All_Traffic", "zeek_http": "Web.Web"}
_ASIM_TABLES = {"firewall": "imNetworkSession", "proxy": "imWebSession", "network_connection": "imNetworkSession", "zeek_conn": "imNetworkSession",
                "zeek_http": "imWebSession"}
_ECS_CONDITIONS = {"zeek_conn": {"event.dataset": "zeek.conn"}, "zeek_http": {"event.dataset": "zeek.http"}}


@dataclass(frozen=True)
class Target:
    backend: str                         # pySigma backend plugin id
    pipelines: dict                      # source key (or "*") -> pipeline specs, applied in order
    output_format: str = "default"
    logsources: tuple[str, ...] = ("bulletin", "standard")
    doc: str = ""
    v6_suffix: str | None = None         # IPv6 networks in a field of their own: <field><suffix>
    prefix: str = ""                     # before each query (a table for KQL)
    replace: tuple[str, str] | None = None   # (old, new) in each query: QRadar's events -> flows


_ELASTIC = {"network_connection": ("ecs_windows",), "*": ("imds_flow_ecs",)}
TARGETS = {
    "splunk": Target("splunk", {}, doc="Splunk SPL on the rules' own field names"),
    "splunk-cim": Target("splunk", {"proxy": ("splunk_cim",), "*": ("imds_flow_cim",)}, "data_model",
                         ("standard",), "Splunk tstats on the CIM data models (Web, Network_Traffic)"),
    "lucene": Target("lucene", _ELASTIC, doc="Elasticsearch Lucene / Kibana query string, ECS fields"),
    "esql": Target("esql", _ELASTIC, doc="Elasticsearch ES|QL, ECS fields"),
    "eql": Target("eql", _ELASTIC, doc="Elasticsearch EQL, ECS fields"),
    "kusto": Target("kusto", {}, doc="KQL on the rules' own field names, over every table (union *; a column a "
                                     "table lacks is empty)", prefix="union *\n| where "),
    "sentinel-asim": Target("kusto", {"*": ("imds_flow_asim",)},
                            logsources=("standard",), doc="Microsoft Sentinel KQL on the ASIM parsers"),
    "microsoft-xdr": Target("kusto", {"network_connection": ("microsoft_xdr",)}, logsources=("standard",),
                            doc="Microsoft Defender XDR advanced hunting (DeviceNetworkEvents)"),
    "qradar": Target("qradar-aql-community", {"*": ("imds_flow_qradar",)}, logsources=("standard",),
                     doc="IBM QRadar AQL on QRadar's normalized event fields (IPv6 in sourcev6 / destinationv6)",
                     v6_suffix="_v6"),
    "qradar-flows": Target("qradar-aql-community", {"*": ("imds_flow_qradar",)}, logsources=("bulletin",),
                           doc="IBM QRadar AQL on flows (both directions; IPv6 in sourcev6 / destinationv6)",
                           v6_suffix="_v6", replace=(" FROM events ", " FROM flows ")),
}


def _sigma():
    try:
        from sigma.collection import SigmaCollection
        from sigma.plugins import InstalledSigmaPlugins
    except ImportError:
        raise SigmaUnavailable(INSTALL_HINT) from None
    return SigmaCollection, InstalledSigmaPlugins.autodiscover()


def _mapping_pipeline(schema: str, source: str):
    from sigma.processing.conditions import LogsourceCondition
    from sigma.processing.pipeline import ProcessingItem, ProcessingPipeline, QueryPostprocessingItem
    from sigma.processing.postprocessing import EmbedQueryTransformation
    from sigma.processing.transformations import (AddConditionTransformation, FieldMappingTransformation,
                                                  SetStateTransformation)

    fields = FIELD_MAPS[schema].get(source)
    if fields is None:
        return None

    def cond():                          # a condition object belongs to one processing item
        return [LogsourceCondition(**_BY_KEY[source].logsource)]

    mapped = {f: to for f, to in fields.items() if to is not None}
    items = [ProcessingItem(FieldMappingTransformation(mapped), rule_conditions=cond())]
    post = []
    if schema == "ecs" and source in _ECS_CONDITIONS:
        items.append(ProcessingItem(AddConditionTransformation(_ECS_CONDITIONS[source]), rule_conditions=cond()))
    elif schema == "cim":
        items.append(ProcessingItem(SetStateTransformation("data_model_set", _CIM_SETS[source]),
                                    rule_conditions=cond()))
        items.append(ProcessingItem(SetStateTransformation("fields", sorted(set(mapped.values()))),
                                    rule_conditions=cond()))
    elif schema == "asim":
        post.append(QueryPostprocessingItem(EmbedQueryTransformation(prefix=f"{_ASIM_TABLES[source]}\n| where "),
                                            rule_conditions=cond()))
    return ProcessingPipeline(name=f"imds-flow {schema} fields ({source})", priority=10, items=items,
                              postprocessing_items=post)


def _pipeline(spec: str, source: str, plugins):
    """One pipeline spec: ours (imds_flow_<schema>) or an installed pySigma pipeline by its plugin id."""
    if spec.startswith("imds_flow_"):
        return _mapping_pipeline(spec.removeprefix("imds_flow_"), source)
    try:
        return plugins.pipelines[spec]()
    except KeyError:
        raise SigmaUnavailable(f"pySigma pipeline {spec!r} is not installed; {INSTALL_HINT}") from None


def _omitted(specs: tuple[str, ...], source: str) -> frozenset[str]:
    """Fields a schema has no column for (None in FIELD_MAPS): their selections are left out."""
    out = set()
    for spec in specs:
        fields = FIELD_MAPS.get(spec.removeprefix("imds_flow_"), {}).get(source, {})
        out.update(f for f, to in fields.items() if to is None)
    return frozenset(out)


def _backend_class(name: str, plugins):
    try:
        cls = plugins.backends[name]
    except KeyError:
        raise SigmaUnavailable(f"pySigma backend {name!r} is not installed; {INSTALL_HINT}") from None
    mixins = _FIXES.get(name, ()) + (_QuotedCidr,)
    return type(f"ImdsFlow{cls.__name__}", (*mixins, cls), {})


class _QuotedCidr:
    """pySigma writes the field of a |cidr match unquoted (ES|QL then reads `cidr_match(c-ip, ...)` as
    c minus ip); quote it the way the backend quotes every other field."""

    def convert_condition_field_eq_val_cidr(self, cond, state):
        quoted = self.escape_and_quote_field(cond.field)
        if quoted != cond.field:
            cond = copy.copy(cond)
            cond.field = quoted
        return super().convert_condition_field_eq_val_cidr(cond, state)


class _KustoFields:
    """The Kusto backend quotes a field like 'destination.ip', which KQL reads as a string literal (the
    comparison is then never true), and tests every CIDR with ipv4_is_in_range, which is never true for an
    IPv6 network. Bracket-quote such fields (['destination.ip']); use ipv6_is_in_range for IPv6."""

    def escape_and_quote_field(self, field_name: str) -> str:
        if re.fullmatch(r"[A-Za-z_]\w*|\['.*'\]", field_name):
            return field_name
        return "['" + field_name.replace("\\", "\\\\").replace("'", "\\'") + "']"

    def convert_condition_field_eq_val_cidr(self, cond, state):
        network = ipaddress.ip_network(cond.value.cidr, strict=False)
        fn = "ipv6_is_in_range" if network.version == 6 else "ipv4_is_in_range"
        return f'{fn}({self.escape_and_quote_field(cond.field)}, "{network}")'


class _EqlFields:
    """The EQL backend leaves `c-ip` unquoted (EQL reads c minus ip): backtick every non-identifier."""

    def escape_and_quote_field(self, field_name: str) -> str:
        if re.fullmatch(r"[A-Za-z_@][\w.@]*|`.*`", field_name):
            return field_name
        return "`" + field_name.replace("`", "``") + "`"


class _KustoAnyTable(_KustoFields):
    """KQL over every table (union *): a field becomes column_ifexists('field', ''), so a table without
    that column just does not match instead of failing the query."""

    def escape_and_quote_field(self, field_name: str) -> str:
        if field_name.startswith("column_ifexists("):         # the backend quotes some fields twice
            return field_name
        return "column_ifexists('" + field_name.replace("\\", "\\\\").replace("'", "\\'") + "', '')"


_FIXES = {"kusto": (_KustoFields,), "eql": (_EqlFields,)}


def convert(config: Config, target: str, logsource: str | None = None) -> list[tuple[dict, str]]:
    """(rule, query) for every rule of `logsource` converted for `target`; offline, via pySigma."""
    try:
        spec = TARGETS[target]
    except KeyError:
        raise SigmaTargetError(f"unknown target {target!r} (known: {', '.join(TARGETS)})") from None
    logsource = logsource or spec.logsources[0]
    if logsource not in spec.logsources:
        raise SigmaTargetError(
            f"target {target} needs --logsource {' or '.join(spec.logsources)}: category network is not in "
            "Sigma's taxonomy, so its pipeline cannot place the bulletin's rule")
    collection_cls, plugins = _sigma()
    backend_cls = _backend_class(spec.backend, plugins)
    if target == "kusto":
        backend_cls = type("ImdsFlowKustoAnyTable", (_KustoAnyTable, backend_cls), {})
    out = []
    for key in LOGSOURCES[logsource]:
        specs = spec.pipelines.get(key, spec.pipelines.get("*", ())) if spec.pipelines else ()
        if spec.pipelines and not specs:
            continue                     # this SIEM has no table for this log source
        rule = _rule(_BY_KEY[key], config, _omitted(specs, key), spec.v6_suffix)
        pipelines = [p for p in (_pipeline(s, key, plugins) for s in specs) if p is not None]
        backend = backend_cls(sum(pipelines[1:], pipelines[0])) if pipelines else backend_cls()
        collection = collection_cls.from_yaml(to_yaml([rule]))   # parsed afresh: pipelines mutate rules
        for q in backend.convert(collection, spec.output_format):
            if spec.replace:
                q = q.replace(*spec.replace)
            out.append((rule, spec.prefix + q))
    return out
