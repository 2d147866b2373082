"""CEF and LEEF: one alert as ArcSight / Microsoft Sentinel (CEF) and QRadar (LEEF 2.0) parse it.

Rules: only the standard keys of each specification, so the SIEM's own parser maps them with no custom
rule (CEF: src dst spt dpt proto act rt start end cnt in dvc deviceDirection request requestMethod
dhost, IPv6 in c6a2 / c6a3, the rest in labelled cs* / cn*; LEEF: src dst srcPort dstPort proto
devTime ...).
Escaping as the specifications require: CEF header \\ and |, extension \\ = and newlines; LEEF values
may not hold the delimiter (tab) or newlines, so those become spaces.
"""
from __future__ import annotations

from datetime import datetime, timezone

from .formats import TRANSPORTS, alert_id, alert_rule_id, alert_severity, iso_time

__all__ = ["VENDOR", "PRODUCT", "cef", "leef", "event_name"]

VENDOR, PRODUCT = "imds-flow", "imds-flow"


def _version() -> str:
    try:
        from importlib.metadata import version
        return version("imds-flow")
    except Exception:                    # a checkout that was never installed
        return "0"


DEVICE_VERSION = _version()
EVENT_NAMES = {"request": "Instance-metadata request on a local network",
               "response": "Instance-metadata response on a local network (IMDS impersonation)"}


def event_name(alert: dict) -> str:
    name = EVENT_NAMES.get(alert.get("direction"), "Instance-metadata traffic on a local network")
    return ("TEST " + name) if alert.get("test") else name


def _v6(addr) -> bool:
    return isinstance(addr, str) and ":" in addr


def _ms(epoch) -> int | None:
    return None if epoch is None else int(round(epoch * 1000))


def _proto(n) -> str | None:
    return None if n is None else TRANSPORTS.get(n, str(n)).upper()


def _cef_header(value) -> str:
    return str(value).replace("\\", "\\\\").replace("|", "\\|").replace("\r", " ").replace("\n", " ")


def _cef_value(value) -> str:
    return (str(value).replace("\\", "\\\\").replace("=", "\\=").replace("\r\n", "\\n")
            .replace("\n", "\\n").replace("\r", "\\r"))


def _custom(alert: dict, collector: str | None) -> list[tuple[str, str, object]]:
    """Fields with no standard key: (CEF slot, label, value). Fixed slots, so a SIEM mapping made once
    keeps working; CEF has cs1..cs6 and cn1..cn3."""
    version = alert.get("version")
    return [("cs1", "endpoint", alert.get("endpoint")), ("cs2", "direction", alert.get("direction")),
            ("cs3", "exportFormat", alert.get("format") or (f"netflow v{version}" if version else None)),
            ("cs4", "headers", ",".join(alert["headers"]) if alert.get("headers") else None),
            ("cs5", "collector", collector), ("cs6", "ruleId", alert_rule_id(alert)),
            ("cn1", "vlan", alert.get("vlan")), ("cn2", "samplingRate", alert.get("sampling_rate")),
            ("cn3", "exporterPort", alert.get("exporter_port"))]


def cef(alert: dict, collector: str | None = None) -> str:
    """CEF:0|vendor|product|version|signature id|name|severity|extension (no syslog header)."""
    src, dst = alert.get("src"), alert.get("dst")
    ext: list[tuple[str, object]] = [
        ("rt", _ms(alert.get("ts"))),
        ("c6a2" if _v6(src) else "src", src), ("c6a2Label" if _v6(src) else None, "Source IPv6 Address"),
        ("c6a3" if _v6(dst) else "dst", dst), ("c6a3Label" if _v6(dst) else None, "Destination IPv6 Address"),
        ("spt", alert.get("sport")), ("dpt", alert.get("dport")), ("proto", _proto(alert.get("proto"))),
        ("act", "alert"), ("cat", "imds-flow/" + str(alert.get("direction"))),
        ("start", _ms(alert.get("first_seen"))), ("end", _ms(alert.get("last_seen"))),
        ("cnt", alert.get("count")), ("in", alert.get("bytes")),
        ("deviceDirection", 0 if alert.get("direction") == "response" else 1),
        ("dvc" if not _v6(alert.get("exporter")) else "c6a1", alert.get("exporter")),
        ("c6a1Label" if _v6(alert.get("exporter")) else None, "Device IPv6 Address"),
        ("deviceInboundInterface", alert.get("in_if")), ("deviceOutboundInterface", alert.get("out_if")),
        ("request", alert.get("url")), ("requestMethod", alert.get("http_method")),
        ("dhost", alert.get("http_host")),              # the request's Host, as the flow record named it
        ("externalId", alert_id(alert)),
    ]
    for slot, label, value in _custom(alert, collector):
        ext += [(slot, value), (slot + "Label", label if value is not None else None)]
    if alert.get("test"):
        ext.append(("msg", "TEST alert sent by imds-flow probe; no real traffic"))
    header = "|".join(_cef_header(v) for v in (VENDOR, PRODUCT, DEVICE_VERSION, alert_rule_id(alert),
                                                event_name(alert), alert_severity(alert)))
    body = " ".join(f"{k}={_cef_value(v)}" for k, v in ext if k and v is not None and v != "")
    return f"CEF:0|{header}|{body}"


def _leef_value(value) -> str:
    return str(value).replace("\t", " ").replace("\r", " ").replace("\n", " ")


def _leef_header(value) -> str:
    return str(value).replace("|", " ").replace("\r", " ").replace("\n", " ")


def leef(alert: dict, collector: str | None = None) -> str:
    """LEEF:2.0|vendor|product|version|event id|<tab delimiter>|attributes, tab-separated."""
    src, dst = alert.get("src"), alert.get("dst")
    ts = alert.get("ts")
    attrs: list[tuple[str, object]] = [
        ("devTime", None if ts is None else
         datetime.fromtimestamp(ts, timezone.utc).strftime("%b %d %Y %H:%M:%S.%f")[:-3] + " UTC"),
        ("devTimeFormat", None if ts is None else "MMM dd yyyy HH:mm:ss.SSS z"),
        ("cat", alert.get("direction")), ("sev", alert_severity(alert)),
        ("src", src), ("dst", dst), ("srcPort", alert.get("sport")), ("dstPort", alert.get("dport")),
        ("proto", _proto(alert.get("proto"))),
        ("srcBytes", alert.get("bytes")), ("srcPackets", alert.get("packets")),
        ("url", alert.get("url")), ("method", alert.get("http_method")), ("httpHost", alert.get("http_host")),
        ("startTime", iso_time(alert["first_seen"]) if alert.get("first_seen") is not None else None),
        ("endTime", iso_time(alert["last_seen"]) if alert.get("last_seen") is not None else None),
        ("eventCount", alert.get("count")), ("name", event_name(alert)),
        ("exporter", alert.get("exporter")), ("inInterface", alert.get("in_if")),
        ("outInterface", alert.get("out_if")), ("eventId", alert_id(alert)),
    ]
    attrs += [(label, value) for _, label, value in _custom(alert, collector)]
    if alert.get("test"):
        attrs.append(("test", "true"))
    header = "|".join(_leef_header(v) for v in (VENDOR, PRODUCT, DEVICE_VERSION, alert_rule_id(alert)))
    body = "\t".join(f"{k}={_leef_value(v)}" for k, v in attrs if v is not None and v != "")
    return f"LEEF:2.0|{header}|x09|{body}"
