"""Command line: parses arguments and calls app.py (replay) or serve.py (listen); nothing else.

Every usage or configuration problem is one line on stderr and exit code 2.
"""
from __future__ import annotations

import json
import logging
import os
import sys
import time

import click

__all__ = ["main", "cli"]

log = logging.getLogger("imds_flow")

CONFIG_HELP = "TOML config file (default: the embedded copy of config/imds-flow.toml)."
ALERTS_HELP = "Where the alert stream goes: a file (appended to) or - for stdout."
LISTEN_ALERTS_HELP = ("Where the alert stream goes: a file (appended to) or - for stdout; added to the config's "
                      "[[sinks]]. Without it: the [[sinks]], or stdout when the config has none.")
FORMAT_HELP = ("Alert format: msgpack maps, or one Elastic Common Schema (ECS) JSON object per line. "
               "Default: msgpack, or an aligned table when the alerts go to stdout and stdout is a terminal.")
_format_option = click.option("--alerts-format", "alerts_format", type=click.Choice(["msgpack", "ecs-json"]),
                              default="msgpack", show_default=True, help=FORMAT_HELP)


class _Group(click.Group):
    def main(self, args=None, prog_name=None, **kwargs):
        try:
            rv = super().main(args=args, prog_name=prog_name, standalone_mode=False, **kwargs)
        except click.exceptions.Exit as e:
            sys.exit(e.exit_code)
        except click.Abort:
            click.echo("imds-flow: aborted", err=True)
            sys.exit(1)
        except click.UsageError as e:
            hint = f" (see imds-flow {e.ctx.command_path.split(' ', 1)[1] + ' ' if e.ctx and ' ' in e.ctx.command_path else ''}--help)"
            click.echo(f"imds-flow: {e.format_message()}{hint}", err=True)
            sys.exit(2)
        except click.ClickException as e:
            click.echo(f"imds-flow: {e.format_message()}", err=True)
            sys.exit(e.exit_code)
        sys.exit(rv or 0)


def _setup_logging(level: str) -> None:
    """Our messages at `level`; other libraries' (numba's compiler traces) only from WARNING up."""
    logging.basicConfig(
        stream=sys.stderr, level=logging.WARNING,
        format="%(asctime)s imds-flow %(levelname)s: %(message)s", datefmt="%Y-%m-%dT%H:%M:%S%z")
    log.setLevel(getattr(logging, level.upper()))


def _load_config(path: str | None):
    """The config (config.Config), or one clear line and exit code 2."""
    from . import config as config_mod
    try:
        return config_mod.load(path)
    except config_mod.ConfigError as e:
        raise click.UsageError(f"config: {e}") from None


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="imds-flow")
def cli():
    """imds-flow: a NetFlow v5 / v9 / IPFIX and sFlow v5 collector that raises an alert for every
    flow record or sampled packet touching an instance-metadata endpoint (169.254.169.254,
    fd00:ec2::254, ...) or carrying a metadata request (path or header) on networks where none may
    exist (AWS bulletin AWS-2025-021, "IMDS impersonation").

    Point your routers' and switches' flow exports at `imds-flow listen :2055 :6343`; read alerts
    with `imds-flow alerts FILE`.
    """


@cli.command()
@click.argument("addresses", nargs=-1, required=True, metavar="[HOST]:PORT...")
@click.option("--config", "config_path", type=click.Path(dir_okay=False), help=CONFIG_HELP)
@click.option("--alerts", "alerts_path", default="-", show_default=True, help=LISTEN_ALERTS_HELP)
@_format_option
@click.option("--metrics", "metrics_at", metavar="[HOST]:PORT",
              help="Serve Prometheus metrics on http://HOST:PORT/metrics (e.g. 127.0.0.1:9109).")
@click.option("--workers", type=click.IntRange(1, 256), default=1, show_default=True,
              help="Processes sharing the addresses (SO_REUSEPORT); an exporter always reaches the same one.")
@click.option("--log-level", type=click.Choice(["debug", "info", "warning", "error"]),
              help="Overrides logging.level from the config.")
def listen(addresses, config_path, alerts_path, alerts_format, metrics_at, workers, log_level):
    """Receive flow exports on UDP and alert on metadata-endpoint traffic.

    [HOST]:PORT is :2055 (every IPv4 address), 127.0.0.1:2055, [::]:2055 (IPv6 and, unless an
    IPv4 listener shares the port, IPv4 too) or [::1]:2055; give several to listen on each.
    SIGINT / SIGTERM stop it: queued datagrams are decoded and every pending alert is written.
    SIGHUP reloads the config's endpoints and suppression without losing a datagram.
    Under systemd socket activation (config/imds-flow.socket) it takes the sockets systemd bound,
    one per address given: exports queue in them across restarts, none is refused.
    """
    from .sockets import parse_listen
    try:
        listen_on = [parse_listen(a) for a in addresses]
    except ValueError as e:
        raise click.UsageError(str(e)) from None
    try:
        metrics = parse_listen(metrics_at) if metrics_at else None
    except ValueError as e:
        raise click.UsageError(str(e).replace("listen address", "--metrics")) from None
    # Bind first, before the config (its dataclasses take tens of milliseconds to import), numba and
    # the kernel load: a router's exports queue in the socket buffer from here on instead of being
    # refused while the collector starts. The buffer grows to listen.rcvbuf_bytes once the config is read.
    from .sockets import close_sockets, inherited_sockets, open_sockets, set_rcvbuf
    try:
        inherited = inherited_sockets(listen_on, workers)
        groups = inherited or open_sockets(listen_on, None, copies=workers)
    except ValueError as e:
        raise click.UsageError(str(e)) from None
    except OSError as e:
        raise click.ClickException(str(e)) from None
    try:
        cfg = _load_config(config_path)
    except click.UsageError:
        close_sockets(groups)
        raise
    _setup_logging(log_level or cfg.logging.level)
    set_rcvbuf(groups, cfg.listen.rcvbuf_bytes)
    if inherited:
        log.info("socket activation: listening on the %d socket(s) systemd bound", len(inherited))
    from . import config as config_mod
    from .serve import run_listen
    given = click.get_current_context().get_parameter_source("alerts_path") != click.core.ParameterSource.DEFAULT
    if (alerts_path == "-" and (given or not cfg.sinks)) and _table_for_terminal():
        alerts_format = "table"
    sink = _open_sinks(cfg, alerts_path if given else None, alerts_format)
    log.info("config %s: %d endpoint(s), %d suppressed subnet(s), %d suppressed VLAN(s); alerts to %s",
             cfg.source, len(cfg.endpoints), len(cfg.suppress.source_subnets), len(cfg.suppress.vlans),
             ", ".join(s.name for s in sink.sinks))
    try:
        run_listen(cfg, sink, listen_on, encoder=_encoder(sink.input_format), workers=workers, metrics_at=metrics,
                   reload=lambda: config_mod.load(config_path), groups=groups)
    except OSError as e:
        raise click.ClickException(str(e)) from None


def _table_for_terminal() -> bool:
    """Alerts to stdout, stdout a terminal and no --alerts-format given: an aligned table, not binary msgpack."""
    source = click.get_current_context().get_parameter_source("alerts_format")
    return source == click.core.ParameterSource.DEFAULT and sys.stdout.isatty()


def _open_sinks(cfg, alerts_path: str | None, alerts_format: str):
    """The config's [[sinks]] and --alerts (listen only; replay writes --alerts alone)."""
    from .sinks import open_sinks
    try:
        return open_sinks(cfg.sinks, alerts_path, alerts_format)
    except OSError as e:                      # "<sink name>: <reason>"; --alerts PATH is named PATH
        raise click.UsageError(f"alert sink {e.strerror or e}") from None


def _open_sink(path: str):
    from .sinks import open_sink
    try:
        return open_sink(path)
    except OSError as e:
        raise click.UsageError(f"--alerts {path}: {e.strerror}") from None


@cli.command()
@click.argument("pcaps", nargs=-1, required=True, type=click.Path(exists=True, dir_okay=False), metavar="PCAP...")
@click.option("--config", "config_path", type=click.Path(dir_okay=False), help=CONFIG_HELP)
@click.option("--alerts", "alerts_path", default="-", show_default=True, help=ALERTS_HELP)
@_format_option
@click.option("--port", type=click.IntRange(0, 65535), default=None,
              help="Only datagrams sent to this UDP port (default: every UDP datagram in the capture).")
@click.option("--progress/--no-progress", default=None,
              help="Progress on stderr (default: when stderr is a terminal or the file is over 64 MiB).")
def replay(pcaps, config_path, alerts_path, alerts_format, port, progress):
    """Decode the flow exports captured in PCAP files (pcap or pcapng) offline.

    Each datagram goes through exactly the path `listen` uses; the exporter is the packet's
    source address and port, and alert folding follows the capture's timestamps.
    """
    cfg = _load_config(config_path)
    _setup_logging(cfg.logging.level)
    from .app import run_replay
    from .pcapread import PcapError, UdpReader
    if alerts_path == "-" and _table_for_terminal():
        alerts_format = "table"
    sink = _open_sink(alerts_path)
    readers = []

    def batches():
        for path in pcaps:
            reader = UdpReader(path, batch=cfg.listen.batch_datagrams, dst_port=port,
                               progress=_progress_printer(path, progress))
            readers.append(reader)
            yield from reader

    started = time.monotonic()
    try:
        pipeline = run_replay(cfg, sink, batches(), encoder=_encoder(alerts_format))
    except PcapError as e:
        raise click.UsageError(str(e)) from None
    except OSError as e:                      # the --alerts file failed (a full disk): said, not a traceback
        raise click.ClickException(f"--alerts {alerts_path}: {e.strerror or e}; the replay stopped") from None
    for path, reader in zip(pcaps, readers):
        skipped = reader.skipped_summary()
        log.info("%s: %d packets, %d UDP datagrams%s", path, reader.stats["packets"], reader.stats["datagrams"],
                 f"; {skipped}" if skipped else "")
    log.info("replayed in %.1f s: %s", time.monotonic() - started, pipeline.summary(latency=False))


def _progress_printer(path: str, wanted: bool | None):
    tty = sys.stderr.isatty()
    state = {"last": 0.0, "shown": False}

    def show(done: int, total: int | None) -> None:
        big = total is not None and total > 64 << 20
        if not (wanted or (wanted is None and (tty or big))):
            return
        now = time.monotonic()
        if now - state["last"] < 0.5 and (total is None or done < total):
            return
        state["last"] = now
        pct = f"{100 * done / total:5.1f}%" if total else ""
        line = f"replay {path}: {pct} {done / 1e6:,.1f} of {total / 1e6 if total else 0:,.1f} MB"
        if tty:
            sys.stderr.write("\r" + line + ("\n" if total and done >= total else ""))
        else:
            sys.stderr.write(line + "\n")
        sys.stderr.flush()

    return show


def _rates(ctx, param, value: str) -> tuple[float, ...]:
    try:
        rates = tuple(float(x) for x in value.split(",") if x.strip())
    except ValueError:
        raise click.BadParameter(f"{value!r}: expected records/s, comma-separated (e.g. 3e5,1e6)") from None
    if any(r <= 0 for r in rates):
        raise click.BadParameter(f"{value!r}: rates must be > 0")
    return rates


def _rivals(ctx, param, value: str) -> tuple[str, ...]:
    names = tuple(r.strip() for r in value.split(",") if r.strip())
    for r in names:
        if r not in ("nfcapd", "nfacctd", "sfcapd", "sfacctd", "floor", "bare"):
            raise click.BadParameter(f"{r}: known collectors are nfcapd, nfacctd (NetFlow / IPFIX), "
                                     "sfcapd, sfacctd (sFlow), floor (NetFlow v5 and sFlow: imds-flow's receive loop alone) "
                                     "and bare (NetFlow v5: a blocking recvmmsg loop alone)")
    return names


@cli.command()
@click.option("--export", type=click.Choice(["v5", "v9", "ipfix", "sflow"]), default="ipfix", show_default=True,
              help="Export protocol the synthetic exporters send.")
@click.option("--version", "version", type=click.Choice(["5", "9", "10", "sflow"]),
              help="The export protocol as a version number (10: IPFIX), instead of --export.")
@click.option("--sweep", is_flag=True, help="Find the no-loss ceiling (doubling, then bisection); the default.")
@click.option("--rates", default="", callback=_rates,
              help="Records/s to offer (sFlow: samples/s, each rate a run of its own), comma-separated (instead of --sweep).")
@click.option("--start", type=click.FloatRange(min=1, min_open=False), default=1e6, show_default=True,
              help="First rate of a sweep (records/s).")
@click.option("--max-points", type=click.IntRange(1), default=8, show_default=True, help="Most points per sweep.")
@click.option("--duration", type=click.FloatRange(min=0.1), default=3.0, show_default=True,
              help="Seconds of load per point.")
@click.option("--exporters", type=click.IntRange(1, 60000), default=4, show_default=True,
              help="Synthetic exporters, one UDP socket each.")
@click.option("--records", type=click.IntRange(1, 30), default=30, show_default=True, help="Records per datagram.")
@click.option("--ipv6-fraction", type=click.FloatRange(0, 1), default=0.0, show_default=True,
              help="Share of datagrams carrying IPv6 flows (v9 / IPFIX).")
@click.option("--imds-fraction", type=click.FloatRange(0, 1), default=0.001, show_default=True,
              help="Share of records aimed at the metadata endpoints.")
@click.option("--imds-sources", type=click.IntRange(1), default=64, show_default=True,
              help="Instances those records come from (alerts fold per source, as real polling does).")
@click.option("--imds-seen-by", type=click.Choice(["all", "one"]), default="all", show_default=True,
              help="Which exporters report each instance: all (every exporter the same instances: with many "
                   "exporters nearly every such record a new alert, the worst case) or one (instance i behind "
                   "exporter i mod --exporters: link-local traffic is seen on its own segment only).")
@click.option("--template-every", type=click.IntRange(0), default=0, show_default=True,
              help="Each exporter resends its templates every N datagrams (0: once, at the start).")
@click.option("--workers", type=click.IntRange(1, 256), default=1, show_default=True,
              help="imds-flow listen --workers.")
@click.option("--compare", default="", callback=_rivals, help="Also measure these C collectors: nfcapd,nfacctd (NetFlow / IPFIX) or sfcapd,sfacctd (sFlow); "
                   "and floor (v5, sFlow): imds-flow's receive loop with nothing behind it, what waking up and reading cost; "
                   "and bare (v5): a blocking recvmmsg loop alone, what waiting in the kernel for each datagram costs.")
@click.option("--repeat", type=click.IntRange(1, 20), default=1, show_default=True,
              help="Measure every rate this many times (interleaved across collectors); the table gives medians.")
@click.option("--inprocess/--no-inprocess", default=True, show_default=True,
              help="Also measure decode+detect+alerts in-process (no sockets).")
@click.option("--out", type=click.Path(file_okay=False), default="bench/results", show_default=True,
              help="Folder for the JSON and PNG.")
def bench(**opts):
    """CPU per million records and the no-loss ceiling, against nfcapd / nfacctd (capacity planning).

    Synthetic exporters send over loopback to a real `imds-flow listen` process (and to each rival),
    started fresh for every point; see README, Benchmarks.
    """
    try:
        from imds_flow_bench import flowbench
    except ImportError:                      # a checkout run without installing: bench/ is beside us
        from pathlib import Path
        sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
        from bench import flowbench
    from pathlib import Path
    version = opts.pop("version")
    if version is not None:
        given = click.get_current_context().get_parameter_source("export") != click.core.ParameterSource.DEFAULT
        as_export = {"5": "v5", "9": "v9", "10": "ipfix"}.get(version, version)
        if given and opts["export"] != as_export:
            raise click.UsageError(f"--version {version} and --export {opts['export']} disagree: give one")
        opts["export"] = as_export
    st = flowbench.Settings(**{**opts, "out": Path(opts["out"])})
    try:
        return flowbench.run(st)
    except flowbench.BenchError as e:
        raise click.UsageError(str(e)) from None


@cli.command("alerts")
@click.argument("file", type=click.Path(dir_okay=False, allow_dash=True))
@click.option("-f", "--follow", is_flag=True,
              help="Keep reading as the file grows, across rotation, and wait for a file that does not exist "
                   "yet (like tail -F); Ctrl-C stops.")
@click.option("--format", "out_format", type=click.Choice(["json", "table"]), default="json", show_default=True,
              help="One JSON object per alert, or an aligned table.")
@click.option("--summary", is_flag=True,
              help="Totals instead of alerts: top local hosts, endpoints and exporters, first and last seen.")
@click.option("--top", type=click.IntRange(1), default=10, show_default=True, help="Entries per --summary list.")
def alerts_cmd(file, follow, out_format, summary, top):
    """Print an alert file (msgpack or ECS JSON lines; - for stdin) as JSON lines or a table, or sum it up."""
    from . import alerts_tool as tool
    if summary and follow:
        raise click.UsageError("--summary reads the file once; it cannot be combined with --follow")
    out = sys.stdout
    name = "-" if file == "-" else file
    if follow and file != "-":
        alerts = tool.follow_path(file, note=lambda m: click.echo(f"imds-flow: {name}: {m}", err=True))
    else:
        try:
            file = click.open_file(file, "rb")
        except OSError as e:
            raise click.BadParameter(f"{name!r}: {e.strerror}", param_hint="'FILE'") from None
        alerts = tool.read_alerts(file, follow=follow,
                                  warn=lambda m: click.echo(f"imds-flow: {name}: {m}", err=True))
    try:
        if summary:
            s = tool.summarize(alerts)
            out.write((json.dumps(s.as_dict(top)) if out_format == "json" else s.text(top)) + "\n")
            return
        if out_format == "table":
            out.write(tool.table_header() + "\n")
        line = tool.json_line if out_format == "json" else tool.table_row
        for alert in alerts:
            out.write(line(alert) + "\n")
            if follow:
                out.flush()
    except tool.AlertFormatError as e:
        try:
            left = f"; {os.fstat(file.fileno()).st_size - e.offset} byte(s) left unread"
        except (OSError, ValueError, AttributeError):   # --follow by name: no one file to measure
            left = ""
        raise click.ClickException(f"{name}: {e}{left}") from None
    except KeyboardInterrupt:
        pass
    except BrokenPipeError:
        sys.stderr.close()


@cli.command()
@click.option("--config", "config_path", type=click.Path(dir_okay=False), help=CONFIG_HELP)
@click.option("--logsource", type=click.Choice(["bulletin", "standard"]), default=None,
              help="bulletin: the rule AWS-2025-021 describes and its response direction (the impersonation "
                   "itself: a metadata address as the source), category network, every field spelling; "
                   "standard: one rule per Sigma standard log source (firewall, proxy, network_connection, "
                   "Zeek conn and http). Default: bulletin, or the log sources the --target supports.")
@click.option("--target", default=None, metavar="TARGET",
              help="Convert offline with pySigma instead of printing the rules: splunk, splunk-cim, lucene, "
                   "esql, eql, kusto, sentinel-asim, microsoft-xdr, qradar, qradar-flows (needs imds-flow[sigma]).")
def sigma(config_path, logsource, target):
    """Print the Sigma detection rule(s) for the config's endpoints and suppressed subnets, or their
    queries for a SIEM.

    The same config the collector runs with gives the same rules and the same rule ids.
    """
    from . import sigma as sigma_mod
    cfg = _load_config(config_path)
    if target is None:
        click.echo(sigma_mod.to_yaml(sigma_mod.rules(cfg, logsource or "bulletin")), nl=False)
        return
    try:
        converted = sigma_mod.convert(cfg, target, logsource)
    except sigma_mod.SigmaTargetError as e:
        raise click.UsageError(str(e)) from None
    except sigma_mod.SigmaUnavailable as e:
        missing = click.ClickException(str(e))
        missing.exit_code = 2                # like every other "cannot run as asked" in the CLI
        raise missing from None
    for rule, query in converted:
        click.echo(f"# {rule['title']} ({rule['id']})\n{query}\n")


@cli.command("check-config")
@click.option("--config", "config_path", type=click.Path(dir_okay=False), help=CONFIG_HELP)
def check_config(config_path):
    """Validate a config without starting anything and print the effective config (every default
    filled in). Exit 2 on an error, with one line naming the key."""
    from .check import effective_toml, problems
    cfg = _load_config(config_path)
    found = problems(cfg)
    if found:
        raise click.UsageError("config: " + "; ".join(found))
    click.echo(effective_toml(cfg), nl=False)


@cli.command()
@click.argument("target", metavar="HOST:PORT")
@click.option("--export", "export", type=click.Choice(["v5", "v9", "ipfix", "sflow"]), default="ipfix",
              show_default=True, help="The export protocol of the test datagram.")
@click.option("--endpoint", default="169.254.169.254", show_default=True,
              help="The metadata address the test record goes to (IPv6: not with --export v5).")
def probe(target, export, endpoint):
    """Send one test export to a collector: one record from 192.0.2.169 port 16925 (2001:db8::169 for an
    IPv6 endpoint; documentation addresses) to ENDPOINT port 80, so you can prove router port ->
    collector -> sinks -> SIEM end to end. The alert it raises carries test = true (ECS: tags ["test"];
    CEF/LEEF: a TEST event name)."""
    from . import config as config_mod, probe as probe_mod
    try:
        host, port = config_mod._host_port(target, "HOST:PORT")
    except config_mod.ConfigError as e:
        raise click.UsageError(str(e)) from None
    import ipaddress
    try:
        ipaddress.ip_address(endpoint)
        data, addr = probe_mod.send(host, port, export, endpoint)
    except ValueError as e:
        raise click.UsageError(f"--endpoint {endpoint}: {e}" if "address" in str(e) else str(e)) from None
    except OSError as e:
        raise click.ClickException(f"{target}: {e.strerror or e}") from None
    src = probe_mod.PROBE_SOURCE_V6 if ":" in endpoint else probe_mod.PROBE_SOURCE
    click.echo(f"sent a {export} test export ({len(data)} bytes) to {addr[0]}:{addr[1]}: one record "
               f"{src}:{probe_mod.PROBE_PORT} -> {endpoint}:80 tcp; its alert carries test = true")


def _encoder(name: str):
    from .formats import encoder
    return encoder(name)


def main():
    cli(prog_name="imds-flow")


if __name__ == "__main__":
    main()
