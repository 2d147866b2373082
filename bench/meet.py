"""Meeting new exporters, in process: what the first datagrams of N exporters cost the collector.

    python -m bench.meet                          # 5000 IPFIX exporters, 5 runs
    python -m bench.meet --exporters 500 --runs 3 --json meet.json

Each exporter sends what the flow bench's sender sends first (bench/sender.py): its template
datagram, then a data datagram (30 records), from a source of its own, 64 datagrams a batch. A
fresh Pipeline on the default config (limits.max_exporters raised to N) takes the batches with
Pipeline.process, the path a batch from an unknown exporter takes in `listen`: an exporter row,
a scope, its templates defined and their set remembered for the kernels. CPU seconds of the
process (time.process_time) per run; the first run, which loads the kernels, is left out. Prints
a table, writes JSON (default bench/results/); the median is the figure. No network.
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

from . import write_result

__all__ = ["measure", "main"]


def _batches(exporters: int, batch: int = 64) -> list:
    from imds_flow.datagrams import DatagramBatch

    from .synth import flow_datagrams
    ex = flow_datagrams(10, 64, 30, imds_fraction=0.001)
    data = [row.tobytes() for row in ex.data]
    payloads, srcs = [], []
    for e in range(exporters):
        src = (f"10.{e >> 16 & 255}.{e >> 8 & 255}.{e & 255}", 4739)
        payloads += [ex.template, data[e % len(data)]]
        srcs += [src, src]
    return [DatagramBatch.from_payloads(payloads[i:i + batch], src=srcs[i:i + batch], ts=1.7e9 + i * 1e-5)
            for i in range(0, len(payloads), batch)]


def measure(exporters: int, runs: int) -> dict:
    """CPU seconds of each run (a fresh Pipeline meeting `exporters` exporters), after one unmeasured."""
    from imds_flow import app, config

    cfg = config.parse(config.default_text())
    batches = _batches(exporters)
    seconds = []
    for run in range(runs + 1):
        p = app.Pipeline(cfg, app._NullSink(), compact=True)
        p.exporters.max_exporters = exporters
        t0 = time.process_time()
        for b in batches:
            p.process(b)
        took = time.process_time() - t0
        if run:
            seconds.append(took)
        stats = p.stats()
        p.close()
    met = len(p.exporters)
    if met != exporters or stats["records"] != 30 * exporters:
        raise RuntimeError(f"met {met} of {exporters} exporters, {stats['records']} records")
    median = statistics.median(seconds)
    return {"exporters": exporters, "batches": len(batches), "runs_cpu_s": seconds, "median_cpu_s": median,
            "us_per_exporter": 1e6 * median / exporters}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.meet", description=__doc__.split("\n\n")[0])
    ap.add_argument("--exporters", type=int, default=5000, help="new exporters met (default 5000)")
    ap.add_argument("--runs", type=int, default=5, help="measured runs, after one unmeasured (default 5)")
    ap.add_argument("--json", type=Path, default=None, help="where to write the JSON (default bench/results/)")
    a = ap.parse_args(argv)
    if a.exporters < 1 or a.runs < 1:
        print("bench.meet: --exporters and --runs take a number >= 1", file=sys.stderr)
        return 2
    r = measure(a.exporters, a.runs)
    print(f"Pipeline.process meeting {a.exporters} new IPFIX exporters (template + data datagram each, "
          f"64 datagrams a batch), CPU time, median of {a.runs} runs")
    print(f"{'exporters':>9}  {'batches':>7}  {'median ms':>9}  {'us/exporter':>11}  runs ms")
    print(f"{r['exporters']:>9}  {r['batches']:>7}  {1e3 * r['median_cpu_s']:>9.1f}  {r['us_per_exporter']:>11.1f}  "
          + " ".join(f"{1e3 * s:.1f}" for s in r["runs_cpu_s"]))
    write_result("meet", a.json, r)
    return 0


if __name__ == "__main__":
    sys.exit(main())
