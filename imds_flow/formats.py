"""Alert formats: how one alert map becomes bytes for a sink, independent of the sink.

Rules: an encoder is built once and has encode(alert) -> bytes. msgpack (the default) writes the alert map
as it is; ecs-json writes one JSON object per line with Elastic Common Schema names (ECS_FIELDS below is the
whole mapping). Missing values (None) are left out, never written as null. Derived on top (DERIVED):
event.id (the same alert always gets the same id: deduplication), event.severity and rule.id (the Sigma
rule of the alert's direction), related.ip, network.community_id (Community ID v1), ICMP type and code
in icmp.* instead of ports (the fields Elastic's community_id processor reads), the collector in
observer.hostname / observer.name. The other fields an alert may carry map as the table says.
"""
from __future__ import annotations

import base64
import copy
import hashlib
import ipaddress
import json
import socket
import uuid
from datetime import datetime, timezone

from .alerts import Encoder as MsgpackEncoder

__all__ = ["FORMATS", "ECS_VERSION", "ECS_FIELDS", "TRANSPORTS", "EcsJsonEncoder", "MsgpackEncoder", "TableEncoder",
           "encoder", "iso_time", "from_ecs", "alert_id", "alert_severity", "alert_rule_id", "community_id",
           "SEVERITY"]

ECS_VERSION = "8.11.0"
TRANSPORTS = {1: "icmp", 2: "igmp", 6: "tcp", 17: "udp", 47: "gre", 50: "esp", 58: "ipv6-icmp", 132: "sctp"}


def iso_time(epoch: float) -> str:
    """Epoch seconds as ISO 8601 UTC with milliseconds: 2025-10-08T18:15:00.123Z."""
    return datetime.fromtimestamp(epoch, timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _parse_time(text: str) -> float:
    return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()


def _same(v):
    return v


# alert key -> (ECS path, value to ECS, value back). One alert key may feed several ECS paths.
ECS_FIELDS = (
    ("ts", "@timestamp", iso_time, _parse_time),
    ("src", "source.ip", _same, _same),
    ("sport", "source.port", _same, _same),
    ("bytes", "source.bytes", _same, _same),
    ("packets", "source.packets", _same, _same),
    ("bytes", "network.bytes", _same, None),
    ("packets", "network.packets", _same, None),
    ("dst", "destination.ip", _same, _same),
    ("dport", "destination.port", _same, _same),
    ("proto", "network.transport", TRANSPORTS.get, None),
    ("proto", "network.iana_number", str, int),
    ("src", "network.type", lambda a: "ipv6" if ":" in a else "ipv4", None),
    ("vlan", "network.vlan.id", str, int),
    ("exporter", "observer.ip", lambda a: [a], lambda v: v[0]),
    ("endpoint", "rule.name", _same, _same),
    ("first_seen", "event.start", iso_time, _parse_time),
    ("last_seen", "event.end", iso_time, _parse_time),
    ("count", "imds_flow.count", _same, _same),
    ("direction", "imds_flow.direction", _same, _same),
    ("exporter_port", "imds_flow.exporter_port", _same, _same),
    ("version", "imds_flow.netflow_version", _same, _same),
    ("sampling_rate", "imds_flow.sampling_rate", _same, _same),
    ("in_if", "observer.ingress.interface.id", str, int),
    ("out_if", "observer.egress.interface.id", str, int),
    ("url", "url.original", _same, _same),
    ("http_method", "http.request.method", _same, _same),
    ("http_host", "url.domain", _same, _same),
    ("headers", "imds_flow.headers", list, list),
    ("signal", "imds_flow.signal", _same, _same),
    ("format", "imds_flow.export_format", _same, _same),
    ("test", "imds_flow.test", _same, _same),
)
_OPTIONAL = {"in_if", "out_if", "url", "http_method", "http_host", "headers", "signal", "format", "test"}  # absent: no key
ICMP = (1, 58)
# event.severity / CEF severity (0..10): a host asking a metadata address is suspicious; something on
# this network answering as one is the impersonation itself.
SEVERITY = {"request": 7, "response": 9}


def alert_severity(alert: dict) -> int:
    return 1 if alert.get("test") else SEVERITY.get(alert.get("direction"), 7)


def alert_rule_id(alert: dict) -> str:
    """The id of the Sigma rule `imds-flow sigma` prints for this alert's direction."""
    from .sigma import rule_id
    return rule_id("response" if alert.get("direction") == "response" else "bulletin")


_ID_KEYS = ("exporter", "exporter_port", "src", "dst", "sport", "dport", "proto", "endpoint", "direction", "ts",
            "first_seen", "last_seen", "count")
_ID_NAMESPACE = uuid.UUID("b6f0d0a4-2a43-5d3e-8f6b-0c1f6a1d2e77")


def alert_id(alert: dict) -> str:
    """A UUID derived from what makes the alert (same alert, same id: a resend deduplicates)."""
    key = json.dumps([alert.get(k) for k in _ID_KEYS], separators=(",", ":"))
    return str(uuid.uuid5(_ID_NAMESPACE, key))


_ICMP4_PAIRS = {8: 0, 0: 8, 13: 14, 14: 13, 15: 16, 16: 15, 10: 9, 9: 10, 17: 18, 18: 17}
_ICMP6_PAIRS = {128: 129, 129: 128, 133: 134, 134: 133, 135: 136, 136: 135, 130: 131, 131: 130, 144: 145, 145: 144}


def _icmp(alert: dict) -> tuple[int, int] | None:
    """NetFlow carries ICMP type and code in the destination port: type * 256 + code."""
    if alert.get("proto") not in ICMP or alert.get("dport") is None:
        return None
    return alert["dport"] >> 8, alert["dport"] & 0xFF


def community_id(alert: dict, seed: int = 0) -> str | None:
    """Community ID v1 (corelight/community-id-spec) of the alert's flow; None without addresses."""
    try:
        src, dst = ipaddress.ip_address(alert["src"]), ipaddress.ip_address(alert["dst"])
    except (KeyError, TypeError, ValueError):
        return None
    if src.version != dst.version:
        return None
    proto = alert.get("proto") or 0
    sport, dport = alert.get("sport") or 0, alert.get("dport") or 0
    one_way = False
    if proto in ICMP:
        itype, code = _icmp(alert)
        pairs = _ICMP4_PAIRS if proto == 1 else _ICMP6_PAIRS
        sport, dport, one_way = itype, pairs.get(itype, code), itype not in pairs
    a, b = (src.packed, sport), (dst.packed, dport)
    if not one_way and b < a:
        a, b = b, a
    data = seed.to_bytes(2, "big") + a[0] + b[0] + bytes([proto, 0])
    if proto in (6, 17, 132) + ICMP:
        data += a[1].to_bytes(2, "big") + b[1].to_bytes(2, "big")
    return "1:" + base64.b64encode(hashlib.sha1(data).digest()).decode()
# The same in every alert.
ECS_CONSTANT = {
    "ecs.version": ECS_VERSION,
    "event.kind": "alert",
    "event.category": ["network"],
    "event.type": ["connection"],
    "event.module": "imds_flow",
    "event.dataset": "imds_flow.alert",
    "rule.ruleset": "imds-flow",
    "threat.framework": "MITRE ATT&CK",
    "threat.tactic.id": ["TA0006"],
    "threat.tactic.name": ["Credential Access"],
    "threat.technique.id": ["T1552"],
    "threat.technique.name": ["Unsecured Credentials"],
    "threat.technique.subtechnique.id": ["T1552.005"],
    "threat.technique.subtechnique.name": ["Cloud Instance Metadata API"],
}


def _put(doc: dict, path: str, value) -> None:
    *parents, leaf = path.split(".") if not path.startswith("@") else [path]
    for p in parents:
        doc = doc.setdefault(p, {})
    doc[leaf] = value


def _get(doc: dict, path: str):
    node = doc
    for p in path.split(".") if not path.startswith("@") else [path]:
        if not isinstance(node, dict) or p not in node:
            return None
        node = node[p]
    return node


class EcsJsonEncoder:
    """One ECS document per alert, as a JSON line; nested objects, as Elastic stores them. `collector`:
    observer.name, this collector's name (default: its host name, which is observer.hostname)."""

    def __init__(self, collector: str | None = None):
        self._json = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False)
        self._constant = {}
        for path, value in ECS_CONSTANT.items():
            _put(self._constant, path, value)
        hostname = socket.gethostname()
        _put(self._constant, "observer.hostname", hostname)
        _put(self._constant, "observer.name", collector or hostname)

    def document(self, alert: dict) -> dict:
        doc = {"@timestamp": None}         # first, for people reading the lines
        doc.update(copy.deepcopy(self._constant))
        for key, path, to_ecs, _ in ECS_FIELDS:
            value = alert.get(key)
            if value is not None:
                value = to_ecs(value)
                if value is not None:
                    _put(doc, path, value)
        icmp = _icmp(alert)
        if icmp is not None:                  # not a port: Elastic's community_id processor reads these
            doc.get("destination", {}).pop("port", None)
            doc["icmp"] = {"type": icmp[0], "code": icmp[1]}
        event = doc["event"]
        event["id"] = alert_id(alert)
        event["severity"] = alert_severity(alert)
        doc["rule"]["id"] = alert_rule_id(alert)
        related = [a for a in dict.fromkeys((alert.get("src"), alert.get("dst"))) if a]
        if related:
            doc["related"] = {"ip": related}
        cid = community_id(alert)
        if cid:
            doc.setdefault("network", {})["community_id"] = cid
        if alert.get("test"):
            doc["tags"] = ["test"]
        doc["message"] = _message(alert)
        return doc

    def encode(self, alert: dict) -> bytes:
        return (self._json.encode(self.document(alert)) + "\n").encode()


def _message(a: dict) -> str:
    proto = TRANSPORTS.get(a.get("proto"), str(a.get("proto")))
    src = f"[{a['src']}]" if ":" in str(a.get("src")) else a.get("src")
    dst = f"[{a['dst']}]" if ":" in str(a.get("dst")) else a.get("dst")
    test = "TEST alert (imds-flow probe): " if a.get("test") else ""
    return (f"{test}instance-metadata traffic {src}:{a.get('sport')} -> {dst}:{a.get('dport')} {proto} "
            f"({a.get('endpoint')}, {a.get('direction')}), {a.get('count', 1)} record(s), exporter {a.get('exporter')}")


def from_ecs(doc: dict) -> dict:
    """An ECS document written by EcsJsonEncoder back as an alert map (for reading and summaries)."""
    alert = {}
    for key, path, _, back in ECS_FIELDS:
        if back is None or key in alert:
            continue
        value = _get(doc, path)
        if value is None and key in _OPTIONAL:
            continue
        alert[key] = None if value is None else back(value)
    icmp = _get(doc, "icmp")
    if isinstance(icmp, dict) and alert.get("dport") is None:
        alert["dport"] = (icmp.get("type", 0) << 8) | icmp.get("code", 0)
    return alert


class TableEncoder:
    """For a terminal: the aligned table `imds-flow alerts --format table` prints, header first."""

    def __init__(self):
        self._header = True

    def encode(self, alert: dict) -> bytes:
        from .alerts_tool import table_header, table_row
        row = table_row(alert) + "\n"
        if self._header:
            row, self._header = table_header() + "\n" + row, False
        return row.encode()


FORMATS = {"msgpack": MsgpackEncoder, "ecs-json": EcsJsonEncoder, "table": TableEncoder}


def encoder(name: str = "msgpack"):
    """The encoder for format `name`, built once by the caller and reused for every alert."""
    try:
        return FORMATS[name]()
    except KeyError:
        raise ValueError(f"unknown alert format {name!r} (known: {', '.join(FORMATS)})") from None
