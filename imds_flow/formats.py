"""Alert formats: how one alert map becomes bytes for a sink, independent of the sink.

Rules: an encoder is built once and has encode(alert) -> bytes. msgpack (the default) writes the alert map
as it is; ecs-json writes one JSON object per line with Elastic Common Schema names (ECS_FIELDS below is the
whole mapping). Missing values (None) are left out, never written as null.
"""
from __future__ import annotations

import copy
import json
from datetime import datetime, timezone

from .alerts import Encoder as MsgpackEncoder

__all__ = ["FORMATS", "ECS_VERSION", "ECS_FIELDS", "TRANSPORTS", "EcsJsonEncoder", "MsgpackEncoder",
           "encoder", "iso_time", "from_ecs"]

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
)
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
    """One ECS document per alert, as a JSON line; nested objects, as Elastic stores them."""

    def __init__(self):
        self._json = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False)
        self._constant = {}
        for path, value in ECS_CONSTANT.items():
            _put(self._constant, path, value)

    def document(self, alert: dict) -> dict:
        doc = {"@timestamp": None}         # first, for people reading the lines
        doc.update(copy.deepcopy(self._constant))
        for key, path, to_ecs, _ in ECS_FIELDS:
            value = alert.get(key)
            if value is not None:
                value = to_ecs(value)
                if value is not None:
                    _put(doc, path, value)
        doc["message"] = _message(alert)
        return doc

    def encode(self, alert: dict) -> bytes:
        return (self._json.encode(self.document(alert)) + "\n").encode()


def _message(a: dict) -> str:
    proto = TRANSPORTS.get(a.get("proto"), str(a.get("proto")))
    src = f"[{a['src']}]" if ":" in str(a.get("src")) else a.get("src")
    dst = f"[{a['dst']}]" if ":" in str(a.get("dst")) else a.get("dst")
    return (f"instance-metadata traffic {src}:{a.get('sport')} -> {dst}:{a.get('dport')} {proto} "
            f"({a.get('endpoint')}, {a.get('direction')}), {a.get('count', 1)} record(s), exporter {a.get('exporter')}")


def from_ecs(doc: dict) -> dict:
    """An ECS document written by EcsJsonEncoder back as an alert map (for reading and summaries)."""
    alert = {}
    for key, path, _, back in ECS_FIELDS:
        if back is None or key in alert:
            continue
        value = _get(doc, path)
        alert[key] = None if value is None else back(value)
    return alert


FORMATS = {"msgpack": MsgpackEncoder, "ecs-json": EcsJsonEncoder}


def encoder(name: str = "msgpack"):
    """The encoder for format `name`, built once by the caller and reused for every alert."""
    try:
        return FORMATS[name]()
    except KeyError:
        raise ValueError(f"unknown alert format {name!r} (known: {', '.join(FORMATS)})") from None
