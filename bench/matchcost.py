"""What a matching record costs end to end, measured against the run's own drift.

    python -m bench.matchcost                          # v5, 1 M records/s, 1 %, 2 s slices, 60 s, 3 runs
    python -m bench.matchcost --export ipfix --runs 5 --json matchcost.json

Two runs set side by side (1 % of the records matching against none) differ by less than the same
run repeated: on a VM the CPU of one run spreads by 40 % as the host's phases go, and a matching
record adds 4-10 ms per million records at 1 % where a run costs 40-130 (bench/HISTORY.md, the
twenty-seventh set). So here one collector (`imds-flow listen`, the flow bench's config and
process) takes one stream at one record rate from `--exporters` exporters whose content switches
every `--slice` seconds between the same kind of traffic with none of its records aimed at an
endpoint and with `--imds-fraction` of them aimed (from 64 instances, as the flow bench's sender
sends them). The collector's CPU (every thread, to the nanosecond) is read at every switch,
`--lag` after it. Each matching slice is set against the mean of the slices either side of it,
which takes out a drift that is linear over three slices; that difference over the slice's
matching records is its cost per matching record, amortised over everything it causes inside the
slice (decode, detect, folding, alerts written). The figure is the median over every slice of
every run, with the mean and its standard error beside it.

What it does not charge: an alert held to fold and let go when its window closes (a tick may fall
in a slice without matching records); with 4 exporters and 64 instances that is at most 256 alerts
a minute against 10 000 matching records a second. Every run is checked: every record decoded,
the alerts' counts summing to the matching records sent. Prints a table, writes JSON (default
bench/results/). Loopback only.
"""
from __future__ import annotations

import argparse
import json
import math
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from . import write_result

__all__ = ["estimate", "measure", "main"]

PACKAGE = __package__ or "bench"
EXPORTS = {"v5": 5, "ipfix": 10}


def estimate(cpu: list[float], hits: list[int], kind: list[int]) -> list[float]:
    """Seconds per matching record of each matching slice (kind 1) that has a slice without
    matching records (kind 0) either side: its CPU less the mean of theirs, over its hits."""
    out = []
    for k in range(1, len(cpu) - 1):
        if kind[k] == 1 and kind[k - 1] == 0 and kind[k + 1] == 0 and hits[k] > 0:
            out.append((cpu[k] - (cpu[k - 1] + cpu[k + 1]) / 2) / hits[k])
    return out


# --- the sender: its own process, so that it has a core of its own ----------------------------------

def send(port: int, rate: float, version: int, exporters: int, fraction: float, slice_s: float,
         slices: int, warmup: float, records: int = 30, burst: int = 64) -> dict:
    """Offer `rate` records/s from `exporters` sockets: `warmup` s, then `slices` slices of
    `slice_s` s, even ones with no matching record, odd ones with `fraction` of them matching.
    Says "start <monotonic time of slice 0>" on stdout once its datagrams are built, and returns
    what each slice carried (records, matching records) and how late it fell behind."""
    from .sender import Burst, exporter_sockets
    from .synth import flow_datagrams

    socks = exporter_sockets("127.0.0.1", port, exporters)
    kinds = []
    for k, f in enumerate((0.0, fraction)):
        ex = flow_datagrams(version, burst * 64, records, f, 0.0, seed=1 + k, imds_sources=64)
        kinds.append([(Burst(ex.data[i * burst:(i + 1) * burst]), ex, int(ex.hits[i * burst:(i + 1) * burst].sum()))
                      for i in range(64)])
    template = ex.template
    seq, started = [0] * exporters, [False] * exporters
    per = {"records": [0] * slices, "hits": [0] * slices}
    interval = burst * records / rate
    start = time.monotonic() + warmup + 0.2
    print(f"start {start!r}", flush=True)
    next_at = start - warmup
    end = start + slices * slice_s
    i = late_bursts = 0
    late_max = 0.0
    while next_at < end:
        now = time.monotonic()
        if now < next_at:
            if next_at - now > 0.0005:
                time.sleep(next_at - now - 0.0003)
            continue
        late = now - next_at
        late_max, late_bursts = max(late_max, late), late_bursts + (late > 0.002)
        k = math.floor((next_at - start) / slice_s)       # the slice this burst is due in
        b, ex, h = kinds[k % 2 if k >= 0 else 0][i % 64]
        e = i % exporters
        if template is not None and not started[e]:
            socks[e].send(template)
            started[e] = True
        seq[e] = ex.set_sequence(b.data, seq[e])
        sent = b.send(socks[e].fileno())
        if k >= 0:
            per["records"][k] += sent * records
            per["hits"][k] += h
        i += 1
        next_at += interval
    return {**per, "records_sent": i * burst * records, "late_max_ms": round(late_max * 1e3, 2),
            "late_bursts": late_bursts}


# --- one run: a collector, the sender, the CPU read at every switch ----------------------------------

def measure(export: str, rate: float, fraction: float, slice_s: float, slices: int, lag: float,
            exporters: int = 4, warmup: float = 5.0) -> dict:
    """One run: a fresh collector, `slices` alternating slices; each slice's CPU seconds and hits,
    the per-slice estimates, and the checks (records decoded, alerts' counts)."""
    from .flowbench import Ours

    version = EXPORTS[export]
    with tempfile.TemporaryDirectory(prefix="imds-flow-matchcost-") as tmp:
        col = Ours(Path(tmp), exporters=exporters)
        sender = None
        try:
            sender = subprocess.Popen(
                [sys.executable, "-m", f"{PACKAGE}.matchcost", "--send", "--port", str(col.port), "--rate", str(rate),
                 "--export", export, "--exporters", str(exporters), "--imds-fraction", str(fraction),
                 "--slice", str(slice_s), "--slices", str(slices), "--warmup", str(warmup)],
                stdout=subprocess.PIPE, text=True, cwd=Path(__file__).resolve().parent.parent)
            line = sender.stdout.readline()
            if not line.startswith("start "):
                raise RuntimeError("the sender did not start: " + line)
            start = float(line.split()[1])
            cpu = []
            for k in range(slices + 1):
                time.sleep(max(0.0, start + k * slice_s + lag - time.monotonic()))
                cpu.append(col.cpu_seconds())
            sent = json.loads(sender.stdout.read())
            if sender.wait(60) != 0:
                raise RuntimeError("the sender failed")
            time.sleep(0.7)                                # the collector drains its socket queue
        except BaseException:
            if sender is not None and sender.poll() is None:
                sender.kill()
            col.stop()
            raise
        got = col.stop()
    per_slice = [b - a for a, b in zip(cpu, cpu[1:])]
    kind = [k % 2 for k in range(slices)]
    hits = sent["hits"]
    return {"slice_cpu_s": per_slice, "slice_hits": hits, "slice_records": sent["records"], "kind": kind,
            "estimates_s": estimate(per_slice, hits, kind),
            "records_sent": sent["records_sent"], "decoded_records": got["decoded_records"],
            "alerted_records": got["alerted_records"],
            "kernel_drop_datagrams": got["kernel_drop_datagrams"],
            "sender_late_max_ms": sent["late_max_ms"], "sender_late_bursts": sent["late_bursts"]}


def _check(run: dict, hits_total: int) -> str | None:
    """What is wrong with a run's counts, None when nothing: every record decoded, and the alerts
    standing for every matching record (the warm-up sent none)."""
    if run["decoded_records"] != run["records_sent"]:
        return f"decoded {run['decoded_records']} of {run['records_sent']} records"
    if run["alerted_records"] != hits_total:
        return f"alerts stand for {run['alerted_records']} records, {hits_total} matched"
    return None


def _summary(values: list[float]) -> tuple[float, float, float]:
    """Median, mean and the mean's standard error (NaN where too few values say it)."""
    n = len(values)
    if not n:
        return math.nan, math.nan, math.nan
    se = statistics.stdev(values) / math.sqrt(n) if n > 1 else math.nan
    return statistics.median(values), statistics.fmean(values), se


def _ms_per_million(run: dict, kind: int) -> float:
    cpu = sum(c for c, k in zip(run["slice_cpu_s"], run["kind"]) if k == kind)
    records = sum(r for r, k in zip(run["slice_records"], run["kind"]) if k == kind)
    return 1e9 * cpu / max(records, 1)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.matchcost", description=__doc__.split("\n\n")[0])
    ap.add_argument("--export", choices=sorted(EXPORTS), default="v5", help="what the exporters send (default v5)")
    ap.add_argument("--rate", type=float, default=1e6, help="records per second (default 1e6)")
    ap.add_argument("--imds-fraction", type=float, default=0.01,
                    help="share of the records aimed at an endpoint in a matching slice (default 0.01)")
    ap.add_argument("--exporters", type=int, default=4, help="exporters, one socket each (default 4)")
    ap.add_argument("--slice", type=float, default=2.0, help="seconds between switches (default 2)")
    ap.add_argument("--slices", type=int, default=31, help="slices a run, odd (default 31: about a minute)")
    ap.add_argument("--lag", type=float, default=0.05,
                    help="how long after a switch the CPU is read (default 0.05 s, past the collector's batching)")
    ap.add_argument("--warmup", type=float, default=5.0,
                    help="seconds of traffic without matching records before the first slice (default 5)")
    ap.add_argument("--runs", type=int, default=3, help="runs, a fresh collector each (default 3)")
    ap.add_argument("--json", type=Path, default=None, help="where to write the JSON (default bench/results/)")
    ap.add_argument("--send", action="store_true", help=argparse.SUPPRESS)       # the sender's own process
    ap.add_argument("--port", type=int, default=0, help=argparse.SUPPRESS)
    a = ap.parse_args(argv)
    if a.send:
        print(json.dumps(send(a.port, a.rate, EXPORTS[a.export], a.exporters, a.imds_fraction, a.slice,
                              a.slices, a.warmup)))
        return 0
    bad = ("--rate" if a.rate <= 0 else "--imds-fraction" if not 0 < a.imds_fraction <= 1
           else "--exporters" if a.exporters < 1 else "--slice" if a.slice <= 0
           else "--slices" if a.slices < 3 or a.slices % 2 == 0 else "--lag" if not 0 <= a.lag < a.slice
           else "--warmup" if a.warmup < 0 else "--runs" if a.runs < 1 else None)
    if bad:
        print(f"bench.matchcost: bad {bad}: rate, slice > 0; 0 < fraction <= 1; slices odd, >= 3; "
              "0 <= lag < slice; warmup >= 0; exporters, runs >= 1", file=sys.stderr)
        return 2
    print(f"A matching record end to end: {a.export}, {a.rate:g} records/s from {a.exporters} exporters, "
          f"{100 * a.imds_fraction:g} % matching every other {a.slice:g} s slice, {a.slices} slices a run, "
          f"{a.runs} runs", flush=True)
    print(f"{'run':>3}  {'none ms/M':>9}  {'matching ms/M':>13}  {'slices':>6}  {'median us':>9}  "
          f"{'mean us':>7}  {'se us':>5}  check", flush=True)
    settings = {k: v for k, v in vars(a).items() if k not in ("send", "port", "json")}
    runs, every = [], []
    for r in range(a.runs):
        run = measure(a.export, a.rate, a.imds_fraction, a.slice, a.slices, a.lag, a.exporters, a.warmup)
        wrong = _check(run, sum(run["slice_hits"]))
        run["check"] = wrong or "ok"
        runs.append(run)
        est = [1e6 * x for x in run["estimates_s"]]
        if not wrong:
            every += est
        median, mean, se = _summary(est)
        print(f"{r + 1:>3}  {_ms_per_million(run, 0):>9.1f}  {_ms_per_million(run, 1):>13.1f}  {len(est):>6}  "
              f"{median:>9.2f}  {mean:>7.2f}  {se:>5.2f}  {run['check']}", flush=True)
    if not every:
        print("no run passed its checks with a matching record sent: no figure", file=sys.stderr)
        write_result("matchcost", a.json, {"settings": settings, "runs": runs, "us_per_matching_record": None})
        return 1
    median, mean, se = _summary(every)
    print(f"all    {len(every)} slices: median {median:.2f} us a matching record, mean {mean:.2f} +- {se:.2f} (se)")
    write_result("matchcost", a.json, {"settings": settings, "runs": runs, "us_per_matching_record": median,
                                       "mean_us": mean, "se_us": se, "slices": len(every)})
    return 0


if __name__ == "__main__":
    sys.exit(main())
