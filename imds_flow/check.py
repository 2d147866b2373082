"""`imds-flow check-config`: the effective configuration as TOML (every default filled in), and the
checks that need more than parsing (TLS files load), without starting anything.

Rules: the output parses back to the same configuration; a sink shows only the keys its type takes.
"""
from __future__ import annotations

import dataclasses
import ipaddress
import json

from .config import SINK_KEYS, Config

__all__ = ["effective_toml", "problems"]

_SECTIONS = ("suppress", "listen", "alerts", "logging", "templates", "http", "limits")


def _value(v) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (int, float)):
        return repr(v)
    if isinstance(v, (tuple, list)):
        return "[" + ", ".join(_value(x) for x in v) + "]"
    if isinstance(v, (ipaddress.IPv4Network, ipaddress.IPv6Network)):
        return json.dumps(str(v))
    return json.dumps(str(v), ensure_ascii=False)


def effective_toml(config: Config) -> str:
    lines = [f"# effective configuration of {config.source}, every default filled in", ""]
    for ep in config.endpoints:
        lines += ["[[endpoints]]", f"name = {_value(ep.name)}", f"address = {_value(ep.address)}", ""]
    for name in _SECTIONS:
        section = getattr(config, name)
        lines.append(f"[{name}]")
        lines += [f"{f.name} = {_value(getattr(section, f.name))}" for f in dataclasses.fields(section)]
        lines.append("")
    for spec in config.sinks:
        lines.append("[[sinks]]")
        keys = ["type", "name", "format"] + sorted(SINK_KEYS[spec.type])
        lines += [f"{k} = {_value(getattr(spec, k))}" for k in keys if k != "shared_key"]
        if "shared_key" in SINK_KEYS[spec.type] and spec.shared_key:
            lines.append('shared_key = "(set; not shown)"')
        lines.append("")
    return "\n".join(lines)


def problems(config: Config) -> list[str]:
    """What parsing cannot see: TLS certificate, key and CA files that do not load."""
    from .sinks.tls import client_context
    out = []
    for spec in config.sinks:
        if spec.tls:
            try:
                client_context(spec)
            except OSError as e:
                out.append(f"sink {spec.name!r}: {e.strerror or e}")
    return out
