"""imds-flow bench: how many exporters and flow records per second one collector takes without loss.

    imds-flow bench --sweep                          # find the no-loss ceiling (IPFIX, 1 worker)
    imds-flow bench --sweep --version 5 --compare nfcapd,nfacctd
    imds-flow bench --rates 1e6,2e6 --workers 2
    python -m bench.flowbench ...                    # the same from a checkout

Synthetic exporters (sendmmsg, paced, one UDP socket each) offer NetFlow v5, v9 or IPFIX over
loopback to a real collector process, restarted for every point so runs do not leak into each
other. For each offered rate: records offered and decoded, loss split into kernel socket drops
(/proc/net/udp) and loss inside the collector, alerts expected and raised, collector CPU, and alert
latency (kernel arrival of the datagram to the alert written). Prints a table, writes JSON and a
PNG, and answers in one sentence. Loopback only.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
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
[alerts]
fold_window_seconds = 0
[logging]
stats_interval_seconds = 0
"""
VERSION_NAME = {5: "NetFlow v5", 9: "NetFlow v9", 10: "IPFIX"}


def _say(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


# --- in-process -----------------------------------------------------------------------------------

def inprocess(version: int, records: int = 30, batch: int = 512, seconds: float = 1.0, repeats: int = 5) -> dict:
    """Records/s through Pipeline.process (decode + detect + alerts), one core, median of runs."""
    from imds_flow import config
    from imds_flow.app import Pipeline, _NullSink
    from imds_flow.datagrams import DatagramBatch

    ex = flow_datagrams(version, batch, records, imds_fraction=0.001)
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
    rates = []
    for _ in range(repeats):
        n = 0
        t0 = time.perf_counter()
        while time.perf_counter() - t0 < seconds:
            pipe.process(dg)
            n += batch * records
        rates.append(n / (time.perf_counter() - t0))
    decoded = pipe.stats()["records"]
    pipe.close()
    if decoded == 0:
        raise RuntimeError(f"in-process bench decoded nothing for version {version}")
    return {"version": version, "median_records_per_s": statistics.median(rates), "runs": rates}


# --- collectors under test ------------------------------------------------------------------------

_SUMMARY = re.compile(r"stopped(?: \(\d+ workers\))?: (\d+) exporters, (\d+) datagrams, (\d+) records, "
                      r"(\d+) rejected datagrams, (\d+) records lost upstream.*?, (\d+) alerts"
                      r"(?:.*?alert latency p50 ([\d.]+) ms p99 ([\d.]+) ms)?")


class Ours:
    """`imds-flow listen` as a separate process on 127.0.0.1, a fresh one per point."""

    name = "imds-flow"

    def __init__(self, workdir: Path, workers: int = 1, batch: int = 512, rcvbuf: int = 64 << 20):
        self.workdir = workdir
        (workdir / "cfg.toml").write_text(CONFIG.format(rcvbuf=rcvbuf, batch=batch))
        self._log = open(workdir / "log", "w")
        cmd = [sys.executable, "-m", "imds_flow.cli", "listen", "127.0.0.1:0", "--config", str(workdir / "cfg.toml"),
               "--alerts", str(workdir / "alerts.mp"), "--workers", str(workers)]
        env = {**os.environ, "XDG_STATE_HOME": str(workdir / "state")}     # no template state between points
        env.pop("STATE_DIRECTORY", None)
        self.proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=self._log, stdin=subprocess.DEVNULL,
                                     env=env)
        deadline = time.monotonic() + 60
        while not (m := re.search(r"listening on 127\.0\.0\.1:(\d+)", (workdir / "log").read_text())):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.proc.kill()
                raise RuntimeError("imds-flow did not start: " + (workdir / "log").read_text()[-2000:])
            time.sleep(0.02)
        self.port = int(m.group(1))
        self.started_s = time.monotonic()

    def cpu_seconds(self) -> float:
        return tree_cpu_seconds(self.proc.pid)

    def stop(self) -> dict:
        drops = udp_drops(self.port)
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(60)
        finally:
            if self.proc.poll() is None:
                self.proc.kill()
            self._log.close()
        text = (self.workdir / "log").read_text()
        m = _SUMMARY.search(text)
        if not m:
            raise RuntimeError("no summary from imds-flow: " + text[-2000:])
        g = m.groups()
        return {"decoded_records": int(g[2]), "kernel_drop_datagrams": drops, "rejected_datagrams": int(g[3]),
                "sequence_lost_records": int(g[4]), "alerts_raised": int(g[5]),
                "latency_p50_ms": float(g[6]) if g[6] else None, "latency_p99_ms": float(g[7]) if g[7] else None}


def fair_rcvbuf() -> int:
    """The receive buffer an unprivileged collector gets (net.core.rmem_max): what nfcapd and
    nfacctd end up with, so a comparison gives imds-flow no more than them (it could force more)."""
    try:
        return int(Path("/proc/sys/net/core/rmem_max").read_text())
    except (OSError, ValueError):
        return 4 << 20


RCVBUF = {"bytes": 64 << 20}


def start_collector(name: str, workdir: Path, workers: int):
    if name == "imds-flow":
        return Ours(workdir, workers, rcvbuf=RCVBUF["bytes"])
    from . import compare
    return compare.start(name, workdir)


def measure(name: str, version: int, rate: float, duration: float, exporters: int, records: int,
            ipv6_fraction: float, imds_fraction: float, workers: int = 1) -> dict:
    """One point: a fresh collector, `duration` s of offered load, then drain, stop and count."""
    with tempfile.TemporaryDirectory(prefix="imds-flow-bench-") as tmp:
        col = start_collector(name, Path(tmp), workers)
        try:
            cpu0, t0 = col.cpu_seconds(), time.monotonic()
            sent = subprocess.run(
                [sys.executable, "-m", f"{PACKAGE}.sender", "--port", str(col.port), "--rate", str(rate),
                 "--duration", str(duration), "--exporters", str(exporters), "--records", str(records),
                 "--version", str(version), "--ipv6-fraction", str(ipv6_fraction),
                 "--imds-fraction", str(imds_fraction)],
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
        "collector": name, "version": version, "workers": workers if name == "imds-flow" else 1,
        "target_records_per_s": rate, "offered_records_per_s": offered["records_per_s"],
        "offered_records": offered["records"], "decoded_records": got["decoded_records"],
        "lost_records": lost, "loss_pct": 100.0 * lost / max(offered["records"], 1),
        "kernel_drop_datagrams": got["kernel_drop_datagrams"],
        "lost_in_kernel_records": min(kernel_lost, max(lost, 0)),
        "lost_in_collector_records": max(lost - kernel_lost, 0),
        "collector_cpu_pct": 100.0 * cpu / wall, "exporters": exporters, "records_per_datagram": records,
        "alerts_expected": offered["hits"] if name == "imds-flow" else None,
        "alerts_raised": got.get("alerts_raised"),
        "latency_p50_ms": got.get("latency_p50_ms"), "latency_p99_ms": got.get("latency_p99_ms"),
    }
    return row


def sweep(name: str, args, progress) -> tuple[list[dict], float, bool]:
    """Double the rate from `start` until records are lost, then bisect. Returns the rows, the
    highest offered rate without loss, and whether the sender (not the collector) was the limit."""
    rows = []
    good, bad = 0.0, None
    rate = args.start
    sender_limited = False
    while len(rows) < args.max_points:
        row = measure(name, args.version, rate, args.duration, args.exporters, args.records, args.ipv6_fraction,
                      args.imds_fraction, args.workers)
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


# --- report ---------------------------------------------------------------------------------------

COLUMNS = (("collector", "{}", "collector"), ("workers", "{}", "workers"),
           ("target M/s", "{:.2f}", "target_records_per_s", 1e-6), ("offered M/s", "{:.2f}", "offered_records_per_s", 1e-6),
           ("decoded", "{:.0f}", "decoded_records"), ("lost", "{:.0f}", "lost_records"),
           ("loss %", "{:.3f}", "loss_pct"), ("kernel drops", "{:.0f}", "kernel_drop_datagrams"),
           ("alerts exp/got", None, None), ("cpu %", "{:.0f}", "collector_cpu_pct"),
           ("p50 ms", "{:.2f}", "latency_p50_ms"), ("p99 ms", "{:.2f}", "latency_p99_ms"))


def table(rows: list[dict]) -> str:
    head = [c[0] for c in COLUMNS]
    lines = []
    for r in rows:
        cells = []
        for c in COLUMNS:
            if c[0] == "alerts exp/got":
                cells.append("-" if r["alerts_expected"] is None else f"{r['alerts_expected']}/{r['alerts_raised']}")
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


def plot(rows: list[dict], path: Path, title: str) -> bool:
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        _say("PNG skipped: matplotlib is not installed (pip install 'imds-flow[bench]')")
        return False
    fig, (ax1, ax2) = plt.subplots(2, 1, figsize=(8, 7), sharex=True)
    for name in dict.fromkeys((r["collector"], r["workers"]) for r in rows):
        pts = sorted((r for r in rows if (r["collector"], r["workers"]) == name),
                     key=lambda r: r["offered_records_per_s"])
        label = name[0] if name[1] == 1 else f"{name[0]} ({name[1]} workers)"
        x = [r["offered_records_per_s"] / 1e6 for r in pts]
        ax1.plot(x, [r["loss_pct"] for r in pts], "o-", label=label)
        ax2.plot(x, [r["collector_cpu_pct"] for r in pts], "o-", label=label)
    ax1.set_ylabel("records lost (%)")
    ax1.set_title(title)
    ax1.grid(True, alpha=0.3)
    ax1.legend()
    ax2.set_ylabel("collector CPU (% of one core)")
    ax2.set_xlabel("offered rate (million records/s)")
    ax2.grid(True, alpha=0.3)
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
    return {"cpu": cpu, "cores": os.cpu_count(), "python": sys.version.split()[0], "kernel": os.uname().release}


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="imds-flow bench", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--version", type=int, choices=(5, 9, 10), default=10, help="export protocol (default IPFIX)")
    p.add_argument("--sweep", action="store_true", help="find the no-loss ceiling (doubling, then bisection)")
    p.add_argument("--rates", default="", help="records/s to offer, comma-separated (instead of --sweep)")
    p.add_argument("--start", type=float, default=1e6, help="first rate of a sweep (records/s)")
    p.add_argument("--max-points", type=int, default=8, help="most points per sweep")
    p.add_argument("--duration", type=float, default=3.0, help="seconds of load per point")
    p.add_argument("--exporters", type=int, default=4)
    p.add_argument("--records", type=int, default=30, help="records per datagram")
    p.add_argument("--ipv6-fraction", type=float, default=0.0, help="share of datagrams carrying IPv6 flows")
    p.add_argument("--imds-fraction", type=float, default=0.001, help="share of records aimed at the endpoints")
    p.add_argument("--workers", type=int, default=1, help="imds-flow listen --workers")
    p.add_argument("--compare", default="", help="also measure these C collectors: nfcapd, nfacctd")
    p.add_argument("--no-inprocess", action="store_true", help="skip the in-process measurement")
    p.add_argument("--out", type=Path, default=Path("bench/results"), help="folder for JSON and PNG")
    return p


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if "--version=sflow" in argv or any(a == "--version" and b == "sflow" for a, b in zip(argv, argv[1:])):
        from .sflow import main as sflow_main          # sFlow has its own bench
        return sflow_main([a for a in argv if a not in ("--version=sflow", "sflow", "--version")])
    args = parser().parse_args(argv)
    rivals = [r.strip() for r in args.compare.split(",") if r.strip()]
    for r in rivals:
        if r not in ("nfcapd", "nfacctd"):
            parser().error(f"--compare {r}: known collectors are nfcapd, nfacctd")
    if rivals:
        RCVBUF["bytes"] = fair_rcvbuf()
    if not args.sweep and not args.rates:
        args.sweep = True
    started = time.monotonic()
    stamp = datetime.now(timezone.utc)
    result = {"date": stamp.isoformat(timespec="seconds"), "machine": machine(),
              "settings": vars(args) | {"out": str(args.out), "imds_flow_rcvbuf_bytes": RCVBUF["bytes"]}}
    if not args.no_inprocess:
        _say(f"in-process {VERSION_NAME[args.version]} decode+detect+alerts, one core ...")
        result["inprocess"] = inprocess(args.version, args.records)
        _say(f"  {result['inprocess']['median_records_per_s'] / 1e6:.1f} M records/s (median of 5)")
    rows = []
    count = {"n": 0}

    def progress(row):
        count["n"] += 1
        _say(f"  [{count['n']:2d}] {row['collector']:>9} {row['target_records_per_s'] / 1e6:6.2f} M/s: offered "
             f"{row['offered_records_per_s'] / 1e6:6.2f} M/s, loss {row['loss_pct']:7.3f} %, "
             f"cpu {row['collector_cpu_pct']:3.0f} %  ({time.monotonic() - started:4.0f} s)")

    ceilings = {}
    for name in ["imds-flow", *rivals]:
        if name != "imds-flow":
            from . import compare
            if not compare.available(name):
                _say(f"{name} is not installed: skipped (Debian: apt-get install "
                     f"{'nfdump' if name == 'nfcapd' else 'pmacct'})")
                continue
        _say(f"{name}: {VERSION_NAME[args.version]} over loopback, {args.exporters} exporters, "
             f"{args.records} records/datagram, {args.duration:g} s per point")
        if args.sweep:
            got, ceiling, limited = sweep(name, args, progress)
            ceilings[name] = {"no_loss_records_per_s": ceiling, "sender_limited": limited}
        else:
            got = []
            for rate in (float(x) for x in args.rates.split(",")):
                row = measure(name, args.version, rate, args.duration, args.exporters, args.records,
                              args.ipv6_fraction, args.imds_fraction, args.workers)
                progress(row)
                got.append(row)
            ok = [r["offered_records_per_s"] for r in got if r["lost_records"] <= 0]
            ceilings[name] = {"no_loss_records_per_s": max(ok, default=0.0), "sender_limited": False}
        rows += got
    result["points"] = rows
    result["ceilings"] = ceilings
    ours = ceilings.get("imds-flow", {"no_loss_records_per_s": 0.0, "sender_limited": False})
    result["capacity"] = sentence(ours["no_loss_records_per_s"], args.workers, args.exporters, ours["sender_limited"])
    for r in rivals:
        if r in ceilings and ceilings[r]["no_loss_records_per_s"]:
            result.setdefault("ratios", {})[r] = ours["no_loss_records_per_s"] / ceilings[r]["no_loss_records_per_s"]

    args.out.mkdir(parents=True, exist_ok=True)
    base = args.out / f"bench-v{args.version}-{stamp:%Y%m%d-%H%M%S}"
    title = f"{VERSION_NAME[args.version]}, {args.exporters} exporters, {args.records} records/datagram"
    print(f"\n{title}, {args.duration:g} s per point, {result['date']}")
    print(table(rows))
    if "inprocess" in result:
        print(f"\nin-process decode+detect+alerts: {result['inprocess']['median_records_per_s'] / 1e6:.1f} M records/s per core")
    for r, ratio in result.get("ratios", {}).items():
        print(f"no-loss ceiling vs {r}: {ratio:.2f}x ({ours['no_loss_records_per_s'] / 1e6:.2f} vs "
              f"{ceilings[r]['no_loss_records_per_s'] / 1e6:.2f} M records/s)")
    print(f"\n{result['capacity']}")
    result["seconds"] = time.monotonic() - started
    Path(f"{base}.json").write_text(json.dumps(result, indent=1))
    wrote = [f"{base}.json"]
    if plot(rows, Path(f"{base}.png"), title):
        wrote.append(f"{base}.png")
    print("wrote " + ", ".join(wrote))
    return 0


if __name__ == "__main__":
    sys.exit(main())
