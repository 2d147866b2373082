"""imds-flow bench: CPU per million records and the no-loss ceiling of one collector, against rivals.

    imds-flow bench --sweep                          # find the no-loss ceiling (IPFIX, 1 worker)
    imds-flow bench --sweep --export v5 --compare nfcapd,nfacctd
    imds-flow bench --export ipfix --rates 3e5,1e6,2e6 --compare nfcapd,nfacctd --repeat 3
    imds-flow bench --rates 1e6,2e6 --workers 2
    python -m bench.flowbench ...                    # the same from a checkout

The options are parsed by imds_flow/cli.py (click, like every command); run(Settings) does the work.

Synthetic exporters (sendmmsg, paced, one UDP socket each) offer NetFlow v5, v9 or IPFIX over
loopback to a real collector process, restarted for every point so runs do not leak into each
other. For each offered rate: records offered and decoded, loss split into kernel socket drops
(/proc/net/udp) and loss inside the collector, alerts expected and raised, collector CPU (as a share
of a core and per million offered records, with the ratio to each rival at the same rate), and
alert latency (kernel arrival of the datagram to the alert written). Prints a table, writes JSON
and a PNG, and answers in one sentence. Loopback only.
"""
from __future__ import annotations

import json
import os
import re
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

from .compare import tree_cpu_seconds, udp_drops
from .synth import flow_datagrams

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = __package__ or "bench"
CONFIG = """
[[endpoints]]
name = "aws-imds-ipv4"
address = "169.254.169.254"
[[endpoints]]
name = "aws-imds-ipv6"
address = "fd00:ec2::254"
[listen]
rcvbuf_bytes = {rcvbuf}
batch_datagrams = {batch}
[logging]
stats_interval_seconds = 0
[limits]
max_exporters = {max_exporters}
"""
VERSION_NAME = {5: "NetFlow v5", 9: "NetFlow v9", 10: "IPFIX"}
EXPORTS = {"v5": 5, "v9": 9, "ipfix": 10, "sflow": None}      # --export: sflow has its own bench (bench/sflow.py)
START_SECONDS = 600                  # how long a collector may take to say it listens (a first start compiles)


class BenchError(Exception):
    """A usage problem found after parsing (the CLI prints it as one line, exit 2)."""


@dataclass
class Settings:
    export: str = "ipfix"
    sweep: bool = False
    rates: tuple[float, ...] = ()
    start: float = 1e6
    max_points: int = 8
    duration: float = 3.0
    exporters: int = 4
    records: int = 30
    ipv6_fraction: float = 0.0
    imds_fraction: float = 0.001
    imds_sources: int = 64
    imds_seen_by: str = "all"
    template_every: int = 0
    workers: int = 1
    compare: tuple[str, ...] = ()
    repeat: int = 1
    inprocess: bool = True
    out: Path = Path("bench/results")

    @property
    def version(self) -> int:
        return EXPORTS[self.export]

    @property
    def seen_by(self) -> str:
        """--imds-seen-by in words."""
        return f"each instance through {'one exporter' if self.imds_seen_by == 'one' else 'every exporter'}"


def _say(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


# --- in-process -----------------------------------------------------------------------------------

def inprocess(version: int, records: int = 30, batch: int = 512, seconds: float = 1.0, repeats: int = 5,
              imds_fraction: float = 0.001, imds_sources: int = 64) -> dict:
    """Records per CPU second through Pipeline.process (decode + detect + alerts), one core, median
    of runs. CPU time, not wall time: the figure holds on a machine shared with other work."""
    from imds_flow import config
    from imds_flow.app import Pipeline, _NullSink
    from imds_flow.datagrams import DatagramBatch

    ex = flow_datagrams(version, batch, records, imds_fraction=imds_fraction, imds_sources=imds_sources)
    ex.set_sequence(ex.data, 0)
    size = ex.data.shape[1]

    def batch_of(buf: np.ndarray, n: int, length: int) -> DatagramBatch:
        return DatagramBatch(buf, np.arange(n, dtype=np.int64) * length, np.full(n, length, np.int32),
                             np.zeros(n, np.uint64), np.full(n, 0xFFFF7F000001, np.uint64),
                             np.full(n, 2055, np.uint16), np.full(n, time.time()), n)

    pipe = Pipeline(config.load(None), _NullSink())
    if ex.template is not None:
        t = np.frombuffer(ex.template, np.uint8).copy()
        pipe.process(batch_of(t, 1, len(t)))
    dg = batch_of(ex.data.ravel().copy(), batch, size)
    pipe.process(dg)                                  # JIT warm-up
    rates = per_cpu_second(pipe, dg, batch * records, seconds, repeats)
    decoded = pipe.stats()["records"]
    pipe.close()
    if decoded == 0:
        raise RuntimeError(f"in-process bench decoded nothing for version {version}")
    return {"version": version, "imds_fraction": imds_fraction, "median_records_per_s": statistics.median(rates),
            "runs": rates}


def per_cpu_second(pipe, dg, per_batch: int, seconds: float, repeats: int) -> list[float]:
    """`repeats` runs of Pipeline.process on the batch `dg` over `seconds` of CPU time each: records
    (or samples: `per_batch` in each batch) per CPU second. CPU time, not wall time: the figure holds
    on a machine shared with other work."""
    rates = []
    for _ in range(repeats):
        n = 0
        t0 = time.process_time()
        while time.process_time() - t0 < seconds:
            pipe.process(dg)
            n += per_batch
        rates.append(n / (time.process_time() - t0))
    return rates


# --- collectors under test ------------------------------------------------------------------------

_SUMMARY = re.compile(r"stopped(?: \(\d+ workers\))?: (\d+) exporters, (\d+) datagrams, (\d+) records, "
                      r"(\d+) rejected datagrams, (\d+) records lost upstream.*?, (\d+) alerts"
                      r"(?:.*?alert latency p50 ([\d.]+) ms p99 ([\d.]+) ms)?")


class Listening:
    """A collector run as a separate process on 127.0.0.1 whose log (its stderr) says "listening on
    127.0.0.1:PORT" once bound: started, its CPU read, stopped with SIGTERM and its log read back."""

    def __init__(self, cmd: list[str], log: Path, what: str, **popen):
        self._log_path = log
        with open(log, "w") as err:          # the child keeps its own handle; ours is not needed after
            self.proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=err, stdin=subprocess.DEVNULL,
                                         **popen)
        # a first start compiles imds-flow's kernels: over a minute on a slow core (the bench gave up
        # at 60 s, and a run on a fresh cache failed), so waited for while it lives, said once
        started = time.monotonic()
        said = False
        while not (m := re.search(r"listening on 127\.0\.0\.1:(\d+)", log.read_text())):
            waited = time.monotonic() - started
            if self.proc.poll() is not None or waited > START_SECONDS:
                self.proc.kill()
                raise RuntimeError(f"{what} did not start in {waited:.0f} s: " + log.read_text()[-2000:])
            if waited > 10 and not said:
                print(f"  (waiting for {what} to start: a first start compiles its kernels, a minute or two)",
                      file=sys.stderr, flush=True)
                said = True
            time.sleep(0.02)
        self.port = int(m.group(1))
        self.started_s = time.monotonic()

    def cpu_seconds(self) -> float:
        return tree_cpu_seconds(self.proc.pid)

    def _stop(self) -> tuple[int, str]:
        """(datagrams the kernel dropped at its socket, its whole log) once it has exited."""
        drops = udp_drops(self.port)
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(60)
        finally:
            if self.proc.poll() is None:
                self.proc.kill()
        return drops, self._log_path.read_text()


class ReadsOnly(Listening):
    """One of the bench's receive-only loops (floor.py, bare.py: `name` is the module) as a separate
    process on 127.0.0.1, a fresh one per point: `python -m <package>.<name> --port 0`, ended with
    SIGTERM, its count read from the "<name>: D datagrams, R records" line it says last."""

    def __init__(self, name: str, workdir: Path, rcvbuf: int):
        self.name = name
        super().__init__([sys.executable, "-m", f"{PACKAGE}.{name}", "--port", "0", "--rcvbuf", str(rcvbuf)],
                         workdir / f"{name}.log", name)

    def counted(self) -> tuple[int, int]:
        """(datagrams, records) from the count line it says once stopped."""
        text = self._log_path.read_text()
        m = re.search(rf"{self.name}: (\d+) datagrams, (\d+) records", text)
        if not m:
            raise RuntimeError(f"no count from {self.name}: " + text[-2000:])
        return int(m.group(1)), int(m.group(2))

    def stop(self) -> dict:
        drops, _ = self._stop()
        return {"decoded_records": self.counted()[1], "kernel_drop_datagrams": drops}


def reads_only_main(name: str, serve, doc: str, argv=None) -> int:
    """The command line of a receive-only loop: --port, --rcvbuf, then serve(port, rcvbuf) until a signal."""
    import argparse
    p = argparse.ArgumentParser(prog=f"python -m bench.{name}", description=doc.split("\n\n")[0])
    p.add_argument("--port", type=int, default=0, help="UDP port on 127.0.0.1 (0: a free one, said on stderr)")
    p.add_argument("--rcvbuf", type=int, default=4 << 20, help="socket receive buffer, bytes")
    a = p.parse_args(argv)
    serve(a.port, a.rcvbuf)
    return 0


class Ours(Listening):
    """`imds-flow listen` as a separate process on 127.0.0.1, a fresh one per point."""

    name = "imds-flow"

    def __init__(self, workdir: Path, workers: int = 1, batch: int = 512, rcvbuf: int = 64 << 20, exporters: int = 4):
        self.workdir = workdir
        # limits.max_exporters (default 4096) raised to the run's exporters: a bench of 5,000 measures
        # 5,000 exporters decoded, as an operator with that many sets it, not 904 refused
        (workdir / "cfg.toml").write_text(CONFIG.format(rcvbuf=rcvbuf, batch=batch, max_exporters=max(4096, exporters)))
        cmd = [sys.executable, "-m", "imds_flow.cli", "listen", "127.0.0.1:0", "--config", str(workdir / "cfg.toml"),
               "--alerts", str(workdir / "alerts.mp"), "--workers", str(workers)]
        env = {**os.environ, "XDG_STATE_HOME": str(workdir / "state")}     # no template state between points
        env.pop("STATE_DIRECTORY", None)
        super().__init__(cmd, workdir / "log", "imds-flow", env=env)

    def stop(self) -> dict:
        drops, text = self._stop()
        m = _SUMMARY.search(text)
        if not m:
            raise RuntimeError("no summary from imds-flow: " + text[-2000:])
        g = m.groups()
        return {"decoded_records": int(g[2]), "alerted_records": alerted_records(self.workdir / "alerts.mp"),
                "kernel_drop_datagrams": drops, "rejected_datagrams": int(g[3]),
                "sequence_lost_records": int(g[4]), "alerts_raised": int(g[5]),
                "latency_p50_ms": float(g[6]) if g[6] else None, "latency_p99_ms": float(g[7]) if g[7] else None}


def alerted_records(path: Path) -> int:
    """Records the alerts in a msgpack alert file stand for (the sum of `count`)."""
    import msgpack
    if not path.exists():
        return 0
    with open(path, "rb") as f:
        return sum(a.get("count", 1) for a in msgpack.Unpacker(f, raw=False))


def fair_rcvbuf() -> int:
    """The receive buffer an unprivileged collector gets (net.core.rmem_max): what nfcapd and
    nfacctd end up with, so a comparison gives imds-flow no more than them (it could force more)."""
    try:
        return int(Path("/proc/sys/net/core/rmem_max").read_text())
    except (OSError, ValueError):
        return 4 << 20


RCVBUF = {"bytes": 64 << 20}


def start_collector(name: str, workdir: Path, workers: int, exporters: int = 4):
    if name == "imds-flow":
        return Ours(workdir, workers, rcvbuf=RCVBUF["bytes"], exporters=exporters)
    if name in ("floor", "bare"):
        return ReadsOnly(name, workdir, RCVBUF["bytes"])
    from . import compare
    return compare.start(name, workdir)


def measure(name: str, st: Settings, rate: float) -> dict:
    """One point: a fresh collector, `duration` s of offered load, then drain, stop and count."""
    version, duration, exporters, records = st.version, st.duration, st.exporters, st.records
    with tempfile.TemporaryDirectory(prefix="imds-flow-bench-") as tmp:
        col = start_collector(name, Path(tmp), st.workers, exporters)
        try:
            cpu0, t0 = col.cpu_seconds(), time.monotonic()
            sent = subprocess.run(
                [sys.executable, "-m", f"{PACKAGE}.sender", "--port", str(col.port), "--rate", str(rate),
                 "--duration", str(duration), "--exporters", str(exporters), "--records", str(records),
                 "--version", str(version), "--ipv6-fraction", str(st.ipv6_fraction),
                 "--imds-fraction", str(st.imds_fraction), "--imds-sources", str(st.imds_sources),
                 "--imds-seen-by", st.imds_seen_by,
                 "--template-every", str(st.template_every)],
                capture_output=True, text=True, cwd=ROOT, timeout=duration + 60)
            if sent.returncode != 0:
                raise RuntimeError("sender failed: " + sent.stderr[-2000:])
            offered = json.loads(sent.stdout)
            time.sleep(0.7)                              # the collector drains its socket queue
            cpu = col.cpu_seconds() - cpu0
            wall = time.monotonic() - t0
        except BaseException:
            col.stop()
            raise
        got = col.stop()
    lost = offered["records"] - got["decoded_records"]
    kernel_lost = got["kernel_drop_datagrams"] * records
    row = {
        "collector": name, "version": version, "workers": st.workers if name == "imds-flow" else 1,
        "target_records_per_s": rate, "offered_records_per_s": offered["records_per_s"],
        "offered_records": offered["records"], "decoded_records": got["decoded_records"],
        "lost_records": lost, "loss_pct": 100.0 * lost / max(offered["records"], 1),
        "kernel_drop_datagrams": got["kernel_drop_datagrams"],
        "lost_in_kernel_records": min(kernel_lost, max(lost, 0)),
        "lost_in_collector_records": max(lost - kernel_lost, 0),
        "collector_cpu_pct": 100.0 * cpu / wall, "collector_cpu_seconds": cpu,
        # CPU per million offered records: the same denominator for every collector of a point
        "cpu_ms_per_million": 1e9 * cpu / max(offered["records"], 1),
        "exporters": exporters, "records_per_datagram": records, "template_datagrams": offered["template_datagrams"],
        # records aimed at the endpoints vs records alerted (the sum of the alerts' counts: alerts fold)
        "alerts_expected": offered["hits"] if name == "imds-flow" else None,
        "alerts_raised": got.get("alerted_records"), "alerts_written": got.get("alerts_raised"),
        "latency_p50_ms": got.get("latency_p50_ms"), "latency_p99_ms": got.get("latency_p99_ms"),
        # how far the sender fell behind its schedule: it catches up in a burst of that much traffic,
        # which a run's loss may owe to more than to the collector
        "sender_late_max_ms": offered.get("late_max_ms"), "sender_late_bursts": offered.get("late_bursts"),
    }
    return row


def sweep(name: str, st: Settings, progress) -> tuple[list[dict], float, bool]:
    """Double the rate from `start` until records are lost, then bisect. Returns the rows, the
    highest offered rate without loss, and whether the sender (not the collector) was the limit."""
    rows = []
    good, bad = 0.0, None
    rate = st.start
    sender_limited = False
    while len(rows) < st.max_points:
        row = measure(name, st, rate)
        rows.append(row)
        progress(row)
        if row["lost_records"] <= 0:
            good = max(good, row["offered_records_per_s"])
            if row["offered_records_per_s"] < 0.95 * rate:
                sender_limited = True                     # the sender cannot offer more on this machine
                break
        else:
            bad = rate if bad is None else min(bad, rate)
        if bad is None:
            rate *= 2
        else:
            if bad / max(good, 1) < 1.12:
                break
            rate = (good * bad) ** 0.5 if good else bad / 2
    return rows, good, sender_limited


def summarise(rows: list[dict]) -> list[dict]:
    """One row per (collector, workers, target rate): the median of its repeats (`runs` of them),
    and imds-flow's CPU per record as a ratio to each rival's at the same rate."""
    groups: dict[tuple, list[dict]] = {}
    for r in rows:
        groups.setdefault((r["collector"], r["workers"], r["target_records_per_s"]), []).append(r)
    out = []
    for rs in groups.values():
        med = dict(rs[0])
        for k, v in rs[0].items():
            vals = [r[k] for r in rs if r[k] is not None]
            if isinstance(v, (int, float)) and not isinstance(v, bool) and vals:
                m = statistics.median(vals)
                med[k] = type(v)(m) if isinstance(v, int) else m
        med["runs"] = len(rs)
        med["cpu_ms_per_million_runs"] = [round(r["cpu_ms_per_million"], 1) for r in rs]
        out.append(med)
    for r in out:
        if r["collector"] != "imds-flow":
            continue
        for rival in out:
            if rival["collector"] != "imds-flow" and rival["target_records_per_s"] == r["target_records_per_s"]:
                r.setdefault("cpu_ratio", {})[rival["collector"]] = r["cpu_ms_per_million"] / max(
                    rival["cpu_ms_per_million"], 1e-9)
    return out


# --- report ---------------------------------------------------------------------------------------

COLUMNS = (("collector", "{}", "collector"), ("workers", "{}", "workers"),
           ("target M/s", "{:.2f}", "target_records_per_s", 1e-6), ("offered M/s", "{:.2f}", "offered_records_per_s", 1e-6),
           ("decoded", "{:.0f}", "decoded_records"), ("lost", "{:.0f}", "lost_records"),
           ("loss %", "{:.3f}", "loss_pct"), ("kernel drops", "{:.0f}", "kernel_drop_datagrams"),
           ("alerted exp/got", None, None), ("cpu %", "{:.0f}", "collector_cpu_pct"),
           ("cpu ms/M rec", "{:.0f}", "cpu_ms_per_million"), ("vs rivals", None, None), ("runs", "{}", "runs"),
           ("p50 ms", "{:.2f}", "latency_p50_ms"), ("p99 ms", "{:.2f}", "latency_p99_ms"))


def table(rows: list[dict]) -> str:
    head = [c[0] for c in COLUMNS]
    lines = []
    for r in rows:
        cells = []
        for c in COLUMNS:
            if c[0] == "alerted exp/got":
                cells.append("-" if r["alerts_expected"] is None else f"{r['alerts_expected']}/{r['alerts_raised']}")
                continue
            if c[0] == "vs rivals":
                ratios = r.get("cpu_ratio") or {}
                cells.append(" ".join(f"{k} {v:.2f}x" for k, v in ratios.items()) or "-")
                continue
            v = r.get(c[2])
            if v is None:
                cells.append("-")
            else:
                cells.append(c[1].format(v * c[3] if len(c) > 3 else v))
        lines.append(cells)
    widths = [max(len(h), *(len(l[i]) for l in lines)) if lines else len(h) for i, h in enumerate(head)]
    out = ["  ".join(h.rjust(w) for h, w in zip(head, widths))]
    out += ["  ".join(c.rjust(w) for c, w in zip(l, widths)) for l in lines]
    return "\n".join(out)


def _readable_axis(ax, values: list[float], axis: str) -> None:
    """Plain tick labels (no offset such as `1e-7+3.000318`) and a span around a single value."""
    ax.ticklabel_format(axis=axis, style="plain", useOffset=False)
    if values and max(values) - min(values) < 1e-9 * max(abs(max(values)), 1.0):
        v = values[0]
        lo, hi = (0.0, 2 * v) if v > 0 else (v - 1, v + 1)
        (ax.set_xlim if axis == "x" else ax.set_ylim)(lo, hi)


def plot(rows: list[dict], path: Path, title: str) -> bool:
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        _say("PNG skipped: matplotlib is not installed (pip install 'imds-flow[bench]')")
        return False
    fig, (ax1, ax2) = plt.subplots(2, 1, figsize=(8, 7), sharex=True)
    xs, cpus, losses = [], [], []
    for name in dict.fromkeys((r["collector"], r["workers"]) for r in rows):
        pts = sorted((r for r in rows if (r["collector"], r["workers"]) == name),
                     key=lambda r: r["offered_records_per_s"])
        label = name[0] if name[1] == 1 else f"{name[0]} ({name[1]} workers)"
        x = [r["offered_records_per_s"] / 1e6 for r in pts]
        xs += x
        cpus += [r["cpu_ms_per_million"] for r in pts]
        losses += [r["loss_pct"] for r in pts]
        ax1.plot(x, [r["cpu_ms_per_million"] for r in pts], "o-", label=label)
        ax2.plot(x, [r["loss_pct"] for r in pts], "o-", label=label)
    ax1.set_ylabel("collector CPU per million records (ms)")
    ax1.set_title(title)
    ax1.set_ylim(0, max(cpus + [1.0]) * 1.15)
    ax1.grid(True, alpha=0.3)
    ax1.legend()
    ax2.set_ylabel("records lost (%)")
    ax2.set_xlabel("offered rate (million records/s)")
    ax2.set_ylim(0, max(losses + [1.0]) * 1.15)
    ax2.grid(True, alpha=0.3)
    for ax in (ax1, ax2):
        ax.ticklabel_format(axis="y", style="plain", useOffset=False)
    _readable_axis(ax2, xs, "x")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return True


def sentence(ceiling: float, workers: int, exporters: int, sender_limited: bool) -> str:
    who = "one worker" if workers == 1 else f"{workers} workers"
    more = " (at least: the sender could offer no more on this machine)" if sender_limited else ""
    return (f"{who} holds {ceiling / 1e6:.2f} M records/s without loss{more}: "
            f"{exporters} exporters at {ceiling / exporters:,.0f} flows/s each")


def machine() -> dict:
    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), "unknown")
    return {"cpu": cpu, "cores": os.cpu_count(), "python": sys.version.split()[0], "kernel": os.uname().release,
            "load_average": os.getloadavg()}


def check(st: Settings) -> None:
    """Settings click cannot check alone; raises BenchError (one line for the user)."""
    known = ("sfcapd", "sfacctd", "floor") if st.export == "sflow" else ("nfcapd", "nfacctd") + (("floor", "bare") if st.version == 5 else ())
    for r in st.compare:
        if r not in known:
            raise BenchError(f"--compare {r}: for --export {st.export} the known collectors are {', '.join(known)}")
    if st.sweep and st.rates:
        raise BenchError("--sweep and --rates: give one of them")
    d = Settings()
    if st.rates or st.export == "sflow":    # no sweep: where one starts and how far it goes do not apply
        for flag, name in (("--start", "start"), ("--max-points", "max_points")):
            if getattr(st, name) != getattr(d, name):
                raise BenchError(f"{flag}: only a sweep (--sweep, NetFlow / IPFIX) takes it; --rates gives the points")
    if st.version == 5 and st.template_every:
        raise BenchError("--template-every: NetFlow v5 has no templates")
    if st.version == 5 and st.ipv6_fraction:
        raise BenchError("--ipv6-fraction: NetFlow v5 carries IPv4 flows only")
    if st.export == "sflow" and st.sweep:
        raise BenchError("--sweep: the sFlow bench measures CPU per sample at given rates (--rates, samples/s; "
                         "default 200000), not a no-loss ceiling")
    if st.export == "sflow":             # options bench/sflow.py has no use for: said, not ignored
        for flag, name in (("--exporters", "exporters"), ("--records", "records"), ("--workers", "workers"),
                           ("--ipv6-fraction", "ipv6_fraction"), ("--imds-sources", "imds_sources"),
                           ("--imds-seen-by", "imds_seen_by"),
                           ("--template-every", "template_every")):
            if getattr(st, name) != getattr(d, name):
                raise BenchError(f"{flag}: the sFlow bench sends one agent's samples to one imds-flow worker; it takes "
                                 "--rates, --duration, --repeat, --imds-fraction, --compare, --no-inprocess and --out")


def run(st: Settings) -> int:
    check(st)
    if st.export == "sflow":             # flow samples with packet headers: bench/sflow.py measures them
        from . import sflow
        rc = 0
        for k, rate in enumerate(st.rates or (200_000.0,)):      # samples/s; --duration seconds of them
            rc = max(rc, sflow.main([*(["--no-inprocess"] if not st.inprocess or k else []),   # in process once
                                     *(["--compare", ",".join(st.compare)] if st.compare else []), "--rate", str(rate),
                                     "--datagrams", str(max(int(rate * st.duration) // 8, 1)), "--repeat",
                                     str(st.repeat), "--imds-fraction", str(st.imds_fraction), "--out", str(st.out)]))
        return rc
    rivals = list(st.compare)
    if rivals:
        RCVBUF["bytes"] = fair_rcvbuf()
    if not st.sweep and not st.rates:
        st.sweep = True
    started = time.monotonic()
    stamp = datetime.now(timezone.utc)
    result = {"date": stamp.isoformat(timespec="seconds"), "machine": machine(),
              "settings": {k: (str(v) if isinstance(v, Path) else v) for k, v in asdict(st).items()}
              | {"imds_flow_rcvbuf_bytes": RCVBUF["bytes"]}}
    name = VERSION_NAME[st.version]
    if st.inprocess:
        _say(f"in-process {name} decode+detect+alerts, one core ...")
        result["inprocess"] = inprocess(st.version, st.records, imds_fraction=st.imds_fraction,
                                        imds_sources=st.imds_sources)
        _say(f"  {result['inprocess']['median_records_per_s'] / 1e6:.1f} M records per CPU second (median of 5)")
    from .compare import installed
    names = installed(["imds-flow", *rivals], _say)
    _say(f"{', '.join(names)}: {name} over loopback, {st.exporters} exporters, {st.records} records/datagram, "
         f"{st.duration:g} s per point, {st.imds_fraction:g} of records to the endpoints "
         f"({st.seen_by}), templates "
         f"{'every ' + str(st.template_every) + ' datagrams' if st.template_every else 'once'}")
    rows, ceilings = _points(names, st, _progress(started))
    result["points"] = rows
    result["summary"] = summarise(rows)
    result["ceilings"] = ceilings
    ours = ceilings.get("imds-flow", {"no_loss_records_per_s": 0.0, "sender_limited": False})
    result["capacity"] = sentence(ours["no_loss_records_per_s"], st.workers, st.exporters, ours["sender_limited"])
    for r in rivals:
        if r in ceilings and ceilings[r]["no_loss_records_per_s"]:
            result.setdefault("ratios", {})[r] = ours["no_loss_records_per_s"] / ceilings[r]["no_loss_records_per_s"]
    st.out.mkdir(parents=True, exist_ok=True)     # a folder that cannot be made fails before the table
    _report(result, st, name)
    result["seconds"] = time.monotonic() - started
    _write(result, st, stamp, name)
    return 0


def _progress(started: float):
    """A callback that says each measured point as it comes."""
    count = {"n": 0}

    def progress(row):
        count["n"] += 1
        _say(f"  [{count['n']:2d}] {row['collector']:>9} {row['target_records_per_s'] / 1e6:6.2f} M/s: offered "
             f"{row['offered_records_per_s'] / 1e6:6.2f} M/s, loss {row['loss_pct']:7.3f} %, "
             f"cpu {row['collector_cpu_pct']:3.0f} % = {row['cpu_ms_per_million']:5.0f} ms per M records  "
             f"({time.monotonic() - started:4.0f} s)")
    return progress


def _points(names: list[str], st: Settings, progress) -> tuple[list[dict], dict]:
    """Every measured point, and per collector its no-loss ceiling: swept, or the best of --rates."""
    rows = []
    ceilings = {}
    if st.sweep:
        for who in names:
            got, ceiling, limited = sweep(who, st, progress)
            ceilings[who] = {"no_loss_records_per_s": ceiling, "sender_limited": limited}
            rows += got
        return rows, ceilings
    # interleaved: every collector of a rate, then the next repeat, so that load from other
    # work on the machine falls on all of them alike
    for rate in st.rates:
        for _ in range(st.repeat):
            for who in names:
                row = measure(who, st, rate)
                progress(row)
                rows.append(row)
    for who in names:
        ok = [r["offered_records_per_s"] for r in rows if r["collector"] == who and r["lost_records"] <= 0]
        ceilings[who] = {"no_loss_records_per_s": max(ok, default=0.0), "sender_limited": False}
    return rows, ceilings


def _title(st: Settings, name: str) -> str:
    seen = f", {st.seen_by}" if st.imds_seen_by == "one" else ""        # the default said only on stderr
    return f"{name}, {st.exporters} exporters{seen}, {st.records} records/datagram"


def _report(result: dict, st: Settings, name: str) -> None:
    """The table, the in-process figure, the ratios and the capacity sentence, on stdout."""
    print(f"\n{_title(st, name)}, {st.duration:g} s per point, {result['date']}, load average "
          f"{' '.join(f'{x:.1f}' for x in result['machine']['load_average'])}")
    print(table(result["summary"]))
    if "inprocess" in result:
        print(f"\nin-process decode+detect+alerts: {result['inprocess']['median_records_per_s'] / 1e6:.1f} M records "
              "per CPU second (one core)")
    for r, ratio in result.get("ratios", {}).items():
        ours, theirs = result["ceilings"]["imds-flow"], result["ceilings"][r]
        print(f"no-loss ceiling vs {r}: {ratio:.2f}x ({ours['no_loss_records_per_s'] / 1e6:.2f} vs "
              f"{theirs['no_loss_records_per_s'] / 1e6:.2f} M records/s)")
    print(f"\n{result['capacity']}")


def _write(result: dict, st: Settings, stamp: datetime, name: str) -> None:
    """bench-<export>-<time>.json and, with matplotlib, the .png beside it in st.out."""
    base = st.out / f"bench-{st.export}-{stamp:%Y%m%d-%H%M%S}"
    Path(f"{base}.json").write_text(json.dumps(result, indent=1))
    wrote = [f"{base}.json"]
    if plot(result["summary"], Path(f"{base}.png"), _title(st, name)):
        wrote.append(f"{base}.png")
    print("wrote " + ", ".join(wrote))


def main(argv=None) -> int:
    """`python -m bench.flowbench ARGS` is `imds-flow bench ARGS`."""
    from imds_flow.cli import cli
    return cli.main(["bench", *(sys.argv[1:] if argv is None else argv)])


if __name__ == "__main__":
    sys.exit(main())
