"""One strict, typed configuration object, loaded once.

Unknown keys, wrong types and bad values raise ConfigError with one line that names the key and
the value; the CLI turns it into exit code 2.
"""
from __future__ import annotations

import ipaddress
import math
import tomllib
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

from .sockets import parse_host_port

__all__ = ["Config", "ConfigError", "Endpoint", "SinkSpec", "load", "parse", "default_text", "default_state_file"]


class ConfigError(ValueError):
    """A configuration problem, as one line naming the key and the value."""


@dataclass(frozen=True)
class Endpoint:
    name: str
    address: str                      # as written
    network: ipaddress.IPv4Network | ipaddress.IPv6Network


@dataclass(frozen=True)
class Suppress:
    source_subnets: tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...] = ()
    vlans: tuple[int, ...] = ()


@dataclass(frozen=True)
class Listen:
    rcvbuf_bytes: int = 64 << 20
    batch_datagrams: int = 512
    max_datagram_bytes: int = 65535
    # sources whose datagrams are decoded; empty: every source. A filter against noise and
    # misconfiguration, not authentication: UDP source addresses are trivially forged.
    allowed_exporters: tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...] = ()
    # after a wake-up that found less than a full batch, wait this long before reading again, so
    # that batches stay large at moderate rates; adds at most this much to alert latency
    coalesce_seconds: float = 0.002


@dataclass(frozen=True)
class Limits:
    """Bounds on what exporters can make the collector hold (memory); see [limits] in default.toml."""
    max_exporters: int = 4096
    max_scopes_per_exporter: int = 32
    max_templates_per_scope: int = 1024
    max_templates: int = 65536
    max_template_fields: int = 1 << 21
    max_pending_bytes_per_exporter: int = 1 << 20
    max_pending_bytes: int = 16 << 20
    max_batch_records: int = 1 << 20      # flow records decoded at once (the column batch)
    max_fold_keys: int = 262144           # alert keys folding at once (alerts.fold_window_seconds)


@dataclass(frozen=True)
class Alerts:
    fold_window_seconds: float = 60.0


@dataclass(frozen=True)
class Logging:
    level: str = "info"
    error_interval_seconds: float = 5.0
    stats_interval_seconds: float = 60.0


@dataclass(frozen=True)
class Templates:
    scope_port: bool = True               # the exporter's UDP source port is part of a template's scope
    lifetime_seconds: float = 1800.0      # a template not re-sent for this long is forgotten
    pending_max_sets: int = 256           # data sets waiting for their template, per scope
    pending_max_seconds: float = 60.0     # ... and for at most this long
    state_file: str = "auto"              # "auto": default_state_file(); "": no persistence


@dataclass(frozen=True)
class Http:
    url_substrings: tuple[str, ...] = ("/latest/meta-data", "/latest/api/token")
    header_names: tuple[str, ...] = ("x-aws-ec2-metadata-token", "x-aws-ec2-metadata-token-ttl-seconds")


@dataclass(frozen=True)
class SinkSpec:
    """One [[sinks]] table; which keys apply depends on type (SINK_KEYS)."""
    type: str                             # stdout, file, udp, tcp, fluent, syslog, nats
    name: str = ""                        # for logs and metrics; default "<type> <path or address>"
    format: str = "msgpack"               # msgpack or ecs-json; syslog: cef, leef or rfc5424
    path: str = ""                        # file
    max_bytes: int = 0                    # file: rotate before passing this size (0: never)
    keep: int = 5                         # file: rotated files kept (PATH.1 .. PATH.keep)
    address: str = ""                     # udp, tcp, fluent: "host:port", "[v6]:port"
    host: str = ""
    port: int = 0
    tag: str = "imds_flow.alert"          # fluent
    require_ack: bool = True              # fluent: chunk ids, resend until acknowledged
    event_time: bool = True               # fluent: EventTime (ns); false: integer seconds (Fluentd v0.12)
    spool_dir: str = "auto"               # tcp, fluent
    spool_max_bytes: int = 256 << 20      # tcp, fluent
    timeout_seconds: float = 30.0         # tcp, fluent: connect, send, ack
    drain_seconds: float = 5.0            # tcp, fluent: delivery time allowed at shutdown
    transport: str = "tcp"                # syslog: udp (RFC 5426), tcp (RFC 6587), tls (RFC 5425)
    tls: bool = False                     # tcp, fluent, nats: TLS (syslog: transport = "tls")
    tls_ca_file: str = ""                 # verify the receiver against these CAs ("": the system store)
    tls_cert_file: str = ""               # client certificate and key, for receivers that ask for one
    tls_key_file: str = ""
    tls_server_name: str = ""             # the name the receiver's certificate must carry ("": host)
    shared_key: str = ""                  # fluent: the forward protocol's shared-key handshake
    self_hostname: str = ""               # fluent: our name in the handshake ("": this host's name)
    subject: str = "imds_flow.alerts"     # nats: the subject alerts are published on
    jetstream: bool = True                # nats: acknowledged publishes (a stream must hold the subject)


@dataclass(frozen=True)
class Config:
    endpoints: tuple[Endpoint, ...]
    suppress: Suppress = field(default_factory=Suppress)
    listen: Listen = field(default_factory=Listen)
    alerts: Alerts = field(default_factory=Alerts)
    logging: Logging = field(default_factory=Logging)
    templates: Templates = field(default_factory=Templates)
    http: Http = field(default_factory=Http)
    limits: Limits = field(default_factory=Limits)
    sinks: tuple[SinkSpec, ...] = ()
    source: str = "<default>"


def default_text() -> str:
    """The embedded default config (a copy of config/imds-flow.toml; a test keeps them equal)."""
    return resources.files("imds_flow").joinpath("default.toml").read_text()


# --- validation helpers: each names the key it checks ------------------------------------------

def _check_keys(table: dict, allowed: set[str], where: str) -> None:
    for key in table:
        if key not in allowed:
            known = ", ".join(sorted(allowed))
            raise ConfigError(f"unknown key {where}{key} = {table[key]!r} (known: {known})")


def _typed(table: dict, key: str, kind: type | tuple, where: str, default: Any) -> Any:
    if key not in table:
        return default
    value = table[key]
    if kind is float and isinstance(value, int) and not isinstance(value, bool):
        value = float(value)
    if isinstance(value, bool) and kind is not bool or not isinstance(value, kind):
        name = kind.__name__ if isinstance(kind, type) else "/".join(k.__name__ for k in kind)
        raise ConfigError(f"{where}{key} = {value!r}: expected {name}")
    if isinstance(value, float) and not math.isfinite(value):
        raise ConfigError(f"{where}{key} = {value!r}: expected a finite number")
    return value


_DAY = 86400.0
_INT_MAX = (1 << 31) - 1                      # what a socket option or a C int holds
_BYTES_MAX = 1 << 40                          # byte counts: a terabyte is already absurd


def _positive(value, key: str, lo, hi=None):
    """`value` within lo..hi (every numeric key has both; hi None only for keys bounded elsewhere)."""
    if value < lo:
        raise ConfigError(f"{key} = {value!r}: must be >= {lo}")
    if hi is not None and value > hi:
        raise ConfigError(f"{key} = {value!r}: must be <= {hi}")
    return value


def _network(text: Any, key: str):
    if not isinstance(text, str):
        raise ConfigError(f"{key} = {text!r}: expected an address or CIDR string")
    try:
        return ipaddress.ip_network(text, strict=False)
    except ValueError:
        raise ConfigError(f"{key} = {text!r}: not an IPv4/IPv6 address or CIDR") from None


def _endpoints(raw: Any) -> tuple[Endpoint, ...]:
    if not isinstance(raw, list) or not raw:
        raise ConfigError("endpoints: at least one [[endpoints]] table with name and address is required")
    out, names = [], set()
    for i, table in enumerate(raw):
        where = f"endpoints[{i}]."
        if not isinstance(table, dict):
            raise ConfigError(f"endpoints[{i}] = {table!r}: expected a table")
        _check_keys(table, {"name", "address"}, where)
        for key in ("name", "address"):
            if key not in table:
                raise ConfigError(f"{where}{key}: missing")
        name = _typed(table, "name", str, where, None)
        if not name or name in names:
            raise ConfigError(f"{where}name = {name!r}: must be non-empty and unique")
        names.add(name)
        out.append(Endpoint(name, table["address"], _network(table["address"], where + "address")))
    return tuple(out)


def _suppress(raw: dict) -> Suppress:
    _check_keys(raw, {"source_subnets", "vlans"}, "suppress.")
    subnets = _typed(raw, "source_subnets", list, "suppress.", [])
    vlans = _typed(raw, "vlans", list, "suppress.", [])
    nets = tuple(_network(s, f"suppress.source_subnets[{i}]") for i, s in enumerate(subnets))
    for i, v in enumerate(vlans):
        if isinstance(v, bool) or not isinstance(v, int) or not 0 <= v <= 4095:
            raise ConfigError(f"suppress.vlans[{i}] = {v!r}: VLAN ids are integers in 0..4095")
    return Suppress(nets, tuple(sorted(set(vlans))))


def _listen(raw: dict) -> Listen:
    w = "listen."
    _check_keys(raw, {"rcvbuf_bytes", "batch_datagrams", "max_datagram_bytes", "allowed_exporters",
                      "coalesce_seconds"}, w)
    d = Listen()
    allowed = _typed(raw, "allowed_exporters", list, w, [])
    return Listen(
        _positive(_typed(raw, "rcvbuf_bytes", int, w, d.rcvbuf_bytes), w + "rcvbuf_bytes", 4096, _INT_MAX),
        _positive(_typed(raw, "batch_datagrams", int, w, d.batch_datagrams), w + "batch_datagrams", 1, 65536),
        _positive(_typed(raw, "max_datagram_bytes", int, w, d.max_datagram_bytes), w + "max_datagram_bytes",
                  512, 65535),
        tuple(_network(a, f"listen.allowed_exporters[{i}]") for i, a in enumerate(allowed)),
        _positive(_typed(raw, "coalesce_seconds", float, w, d.coalesce_seconds), w + "coalesce_seconds", 0.0, 0.1),
    )


_LIMIT_RANGE = {"max_pending_bytes_per_exporter": (0, _BYTES_MAX), "max_pending_bytes": (0, _BYTES_MAX),
                "max_exporters": (1, 1 << 24), "max_batch_records": (1 << 16, 1 << 28), "max_fold_keys": (1, 1 << 28)}


def _limits(raw: dict) -> Limits:
    w = "limits."
    d = Limits()
    names = tuple(d.__dataclass_fields__)
    _check_keys(raw, set(names), w)
    return Limits(*(_positive(_typed(raw, k, int, w, getattr(d, k)), w + k, *_LIMIT_RANGE.get(k, (1, _INT_MAX)))
                    for k in names))


def _alerts(raw: dict) -> Alerts:
    w = "alerts."
    _check_keys(raw, {"fold_window_seconds"}, w)
    return Alerts(_positive(_typed(raw, "fold_window_seconds", float, w, 60.0), w + "fold_window_seconds", 0.0,
                            _DAY))


_LEVELS = ("debug", "info", "warning", "error")


def _logging(raw: dict) -> Logging:
    w = "logging."
    _check_keys(raw, {"level", "error_interval_seconds", "stats_interval_seconds"}, w)
    level = _typed(raw, "level", str, w, "info")
    if level not in _LEVELS:
        raise ConfigError(f"logging.level = {level!r}: expected one of {', '.join(_LEVELS)}")
    return Logging(
        level,
        _positive(_typed(raw, "error_interval_seconds", float, w, 5.0), w + "error_interval_seconds", 0.0, _DAY),
        _positive(_typed(raw, "stats_interval_seconds", float, w, 60.0), w + "stats_interval_seconds", 0.0, _DAY),
    )


def _templates(raw: dict) -> Templates:
    w = "templates."
    _check_keys(raw, {"scope_port", "lifetime_seconds", "pending_max_sets", "pending_max_seconds", "state_file"}, w)
    d = Templates()
    return Templates(
        _typed(raw, "scope_port", bool, w, d.scope_port),
        _positive(_typed(raw, "lifetime_seconds", float, w, d.lifetime_seconds), w + "lifetime_seconds", 1.0,
                  365 * _DAY),
        _positive(_typed(raw, "pending_max_sets", int, w, d.pending_max_sets), w + "pending_max_sets", 0, 1 << 20),
        _positive(_typed(raw, "pending_max_seconds", float, w, d.pending_max_seconds), w + "pending_max_seconds", 0.0,
                  _DAY),
        _typed(raw, "state_file", str, w, d.state_file),
    )


def _http(raw: dict) -> Http:
    w = "http."
    _check_keys(raw, {"url_substrings", "header_names"}, w)
    subs = _typed(raw, "url_substrings", list, w, list(Http().url_substrings))
    for i, u in enumerate(subs):
        if not isinstance(u, str) or not u or not u.isascii():
            raise ConfigError(f"http.url_substrings[{i}] = {u!r}: expected a non-empty ASCII string")
    names = _typed(raw, "header_names", list, w, list(Http().header_names))
    if len(names) > 32:
        raise ConfigError(f"http.header_names: {len(names)} names, at most 32")
    for i, h in enumerate(names):
        if not isinstance(h, str) or not h or not h.isascii() or any(ch in _NOT_TOKEN for ch in h):
            raise ConfigError(f"http.header_names[{i}] = {h!r}: expected an HTTP field name (ASCII, no spaces "
                              "or separators)")
    return Http(tuple(subs), tuple(names))


_NOT_TOKEN = set('()<>@,;:\\"/[]?={} \t') | {chr(i) for i in range(32)} | {chr(127)}


_NET_KEYS = {"address", "spool_dir", "spool_max_bytes", "timeout_seconds", "drain_seconds"}
_TLS_KEYS = {"tls_ca_file", "tls_cert_file", "tls_key_file", "tls_server_name"}
SINK_KEYS = {
    "stdout": set(),
    "file": {"path", "max_bytes", "keep"},
    "udp": {"address"},
    "tcp": _NET_KEYS | _TLS_KEYS | {"tls"},
    "fluent": _NET_KEYS | _TLS_KEYS | {"tls", "tag", "require_ack", "event_time", "shared_key", "self_hostname"},
    "syslog": _NET_KEYS | _TLS_KEYS | {"transport"},
    "nats": _NET_KEYS | _TLS_KEYS | {"tls", "subject", "jetstream"},
}
SPOOLED = ("tcp", "fluent", "syslog", "nats")   # sink types that deliver through a spool (syslog: not over udp)
_SINK_FORMATS = ("msgpack", "ecs-json")
SYSLOG_FORMATS = ("cef", "leef", "rfc5424")
SYSLOG_TRANSPORTS = ("udp", "tcp", "tls")


def _host_port(text: str, key: str, scheme: str = "") -> tuple[str, int]:
    if scheme and text.startswith(scheme + "://"):
        text = text[len(scheme) + 3:]
    try:
        return parse_host_port(text, key + " =")
    except ValueError as e:
        raise ConfigError(str(e)) from None


def _sinks(raw: Any) -> tuple[SinkSpec, ...]:
    if not isinstance(raw, list):
        raise ConfigError(f"sinks = {raw!r}: expected [[sinks]] tables")
    out, names, spools = [], set(), set()
    for i, table in enumerate(raw):
        w = f"sinks[{i}]."
        if not isinstance(table, dict):
            raise ConfigError(f"sinks[{i}] = {table!r}: expected a table")
        kind = _typed(table, "type", str, w, None)
        if kind not in SINK_KEYS:
            raise ConfigError(f"{w}type = {kind!r}: expected one of {', '.join(SINK_KEYS)}")
        _check_keys(table, {"type", "name", "format"} | SINK_KEYS[kind], w)
        d = SinkSpec(kind)
        formats = SYSLOG_FORMATS if kind == "syslog" else _SINK_FORMATS
        fmt = _typed(table, "format", str, w, formats[0] if kind == "syslog" else d.format)
        if fmt not in formats:
            raise ConfigError(f"{w}format = {fmt!r}: expected one of {', '.join(formats)}")
        for key in ({"path"} if kind == "file" else {"address"} if kind != "stdout" else set()):
            if not _typed(table, key, str, w, ""):
                raise ConfigError(f"{w}{key}: missing for a {kind} sink")
        host, port = _host_port(table["address"], w + "address", "nats" if kind == "nats" else "") \
            if "address" in table else ("", 0)
        spec = SinkSpec(
            kind, _typed(table, "name", str, w, ""), fmt,
            _typed(table, "path", str, w, d.path),
            _positive(_typed(table, "max_bytes", int, w, d.max_bytes), w + "max_bytes", 0, _BYTES_MAX),
            _positive(_typed(table, "keep", int, w, d.keep), w + "keep", 0, 1000),
            table.get("address", ""), host, port,
            _typed(table, "tag", str, w, d.tag),
            _typed(table, "require_ack", bool, w, d.require_ack),
            _typed(table, "event_time", bool, w, d.event_time),
            _typed(table, "spool_dir", str, w, d.spool_dir),
            _positive(_typed(table, "spool_max_bytes", int, w, d.spool_max_bytes), w + "spool_max_bytes", 4096,
                      _BYTES_MAX),
            _positive(_typed(table, "timeout_seconds", float, w, d.timeout_seconds), w + "timeout_seconds", 0.1,
                      _DAY),
            _positive(_typed(table, "drain_seconds", float, w, d.drain_seconds), w + "drain_seconds", 0.0, _DAY),
            **_secure(table, w, d),
        )
        if not spec.tag:
            raise ConfigError(f"{w}tag = '': must be non-empty")
        name = spec.name or f"{kind} {spec.path or spec.address}".strip()
        if name in names:
            raise ConfigError(f"{w}name = {name!r}: two sinks have this name (give each a name)")
        names.add(name)
        if kind in SPOOLED and spec.spool_dir != "auto":
            if spec.spool_dir in spools:
                raise ConfigError(f"{w}spool_dir = {spec.spool_dir!r}: already the spool of another sink")
            spools.add(spec.spool_dir)
        out.append(SinkSpec(**{**spec.__dict__, "name": name}))
    return tuple(out)


def _secure(table: dict, w: str, d: SinkSpec) -> dict:
    """The keys of TLS, the syslog transport, the fluent handshake and NATS, checked."""
    out = {key: _typed(table, key, str, w, getattr(d, key))
           for key in ("tls_ca_file", "tls_cert_file", "tls_key_file", "tls_server_name", "shared_key",
                       "self_hostname", "subject", "transport")}
    out["tls"] = _typed(table, "tls", bool, w, d.tls)
    out["jetstream"] = _typed(table, "jetstream", bool, w, d.jetstream)
    if out["transport"] not in SYSLOG_TRANSPORTS:
        raise ConfigError(f"{w}transport = {out['transport']!r}: expected one of {', '.join(SYSLOG_TRANSPORTS)}")
    if table.get("type") == "syslog":
        out["tls"] = out["transport"] == "tls"
    if out["tls_key_file"] and not out["tls_cert_file"]:
        raise ConfigError(f"{w}tls_key_file = {out['tls_key_file']!r}: needs tls_cert_file too")
    if any(out[k] for k in ("tls_cert_file", "tls_ca_file", "tls_server_name")):
        if not out["tls"]:
            raise ConfigError(f"{w}tls_* keys need " + ('transport = "tls"' if table.get("type") == "syslog"
                                                         else "tls = true"))
    subject = out["subject"]
    if not subject or any(c in subject for c in " \t\r\n*>") or ".." in subject or subject[0] == "." \
            or subject[-1] == ".":
        raise ConfigError(f"{w}subject = {subject!r}: expected a NATS subject such as imds_flow.alerts.collector1 "
                          "(dot-separated tokens, no wildcards or spaces)")
    return out


def default_state_file() -> Path:
    """Where templates persist when templates.state_file = "auto": systemd's $STATE_DIRECTORY,
    else $XDG_STATE_HOME/imds-flow, else ~/.local/state/imds-flow; the file is templates.json."""
    import os
    base = os.environ.get("STATE_DIRECTORY", "").split(":")[0]
    if base:
        return Path(base) / "templates.json"
    xdg = os.environ.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
    return Path(xdg) / "imds-flow" / "templates.json"


_SECTIONS = {"suppress": _suppress, "listen": _listen, "alerts": _alerts, "logging": _logging,
             "templates": _templates, "http": _http, "limits": _limits}


def parse(text: str, source: str = "<string>") -> Config:
    try:
        raw = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"{source}: not valid TOML: {e}") from None
    _check_keys(raw, {"endpoints", "sinks", *_SECTIONS}, "")
    parts = {}
    for name, build in _SECTIONS.items():
        table = raw.get(name, {})
        if not isinstance(table, dict):
            raise ConfigError(f"{name} = {table!r}: expected a table [{name}]")
        parts[name] = build(table)
    return Config(endpoints=_endpoints(raw.get("endpoints")), sinks=_sinks(raw.get("sinks", [])), source=source,
                  **parts)


def load(path: str | Path | None = None) -> Config:
    """The config at `path`, or the embedded default when `path` is None."""
    if path is None:
        return parse(default_text(), "<embedded default>")
    p = Path(path)
    try:
        text = p.read_bytes().decode("utf-8")
    except OSError as e:
        raise ConfigError(f"--config {p}: cannot read: {e.strerror}") from None
    except UnicodeDecodeError as e:
        raise ConfigError(f"--config {p}: not UTF-8 text (byte {e.start}: {e.reason}); a TOML file is UTF-8") from None
    return parse(text, str(p))
