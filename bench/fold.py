"""Folding's steady state, in process: what an alert flood costs once windows close and reopen.

    python -m bench.fold                          # 5000 exporters, simulated seconds 70-110, 3 runs
    python -m bench.fold --exporters 4 --runs 5 --json fold.json
    python -m bench.fold --alert-file             # alerts written to a file, as the collector's --alerts

The flow bench's `all` layout (bench/sender.py) without the network: IPFIX at 1 M records/s from
`--exporters` exporters (by source port), 30 records a datagram, 512 datagrams a batch, 1 % of the
records to the endpoints from 64 instances that every exporter reports (each (exporter, instance)
a fold key of its own: with 5000 exporters nearly one alert for every matching record). A fresh
Pipeline on the flow bench's config (default 60 s folding window) takes the batches with
Pipeline.process, stamped with a simulated clock, and Pipeline.tick each simulated second, into a
null sink (or, with --alert-file, a temporary alert file as `imds-flow listen --alerts` writes
it). CPU seconds of the process (time.process_time) over simulated seconds [--from, --to):
past the first window, where the tick releases held alerts, keys reopen and the key table is
rebuilt, a phase a short `imds-flow bench` never reaches. Prints a table, writes JSON (default
bench/results/); the median is the figure. No network.
"""
from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

from . import write_result

__all__ = ["measure", "main"]

BATCH, RECORDS, RATE, T0 = 512, 30, 1e6, 1.8e9


def _run(exporters: int, start: float, end: float, alert_file: bool = False) -> dict:
    import numpy as np

    from imds_flow import app, config
    from imds_flow.datagrams import DatagramBatch

    from .flowbench import CONFIG
    from .synth import flow_datagrams
    exports = [flow_datagrams(10, BATCH, RECORDS, imds_fraction=0.01, imds_sources=64, seed=s + 1) for s in range(49)]
    for ex in exports:
        ex.set_sequence(ex.data, 0)
    size = exports[0].data.shape[1]
    datas = [ex.data.ravel().copy() for ex in exports]
    with tempfile.NamedTemporaryFile("w", suffix=".toml") as f:
        f.write(CONFIG.format(rcvbuf=1 << 20, batch=BATCH, max_exporters=max(4096, exporters)))
        f.flush()
        cfg = config.load(f.name)
    now = [T0]
    if alert_file:
        from imds_flow.sinks import Sinks
        from imds_flow.sinks.stream import open_sink
        path = tempfile.NamedTemporaryFile(suffix=".mp", delete=False).name
        sink = Sinks([open_sink(path)], ["msgpack"], "msgpack")
    else:
        path, sink = None, app._NullSink()
    p = app.Pipeline(cfg, sink, clock=lambda: now[0])

    def batch_of(buf, n: int, length: int, ports, t: float):
        return DatagramBatch(buf, np.arange(n, dtype=np.int64) * length, np.full(n, length, np.int32),
                             np.zeros(n, np.uint64), np.full(n, 0xFFFF7F000001, np.uint64),
                             ports.astype(np.uint16), np.full(n, t), n)

    template = np.frombuffer(exports[0].template, np.uint8)
    for first in range(0, exporters, BATCH):               # every exporter's template first
        ports = np.arange(first, min(exporters, first + BATCH)) + 10000
        p.process(batch_of(np.tile(template, len(ports)), len(ports), len(template), ports, T0))
    step = BATCH * RECORDS / RATE
    k, next_tick, cpu0, k0, a0 = 0, T0 + 1, None, 0, 0
    while now[0] < T0 + end:
        if cpu0 is None and now[0] >= T0 + start:
            cpu0, k0, a0 = time.process_time(), k, p.alerts_written
        ports = (np.arange(k * BATCH, (k + 1) * BATCH) % exporters) + 10000
        p.process(batch_of(datas[k % len(datas)], BATCH, size, ports, now[0]))
        p.flush()
        k += 1
        now[0] += step
        if now[0] >= next_tick:
            p.tick(now[0])
            next_tick += 1
    cpu = time.process_time() - cpu0
    stats = p.stats()
    records = (k - k0) * BATCH * RECORDS
    run = {"cpu_s": cpu, "records": records, "alerts": p.alerts_written - a0, "pending": p.folder.pending,
           "decoded": stats["records"], "offered": k * BATCH * RECORDS}
    p.close()
    if path is not None:
        run["file_bytes"] = Path(path).stat().st_size
        Path(path).unlink()
    return run


def measure(exporters: int, start: float, end: float, runs: int, alert_file: bool = False) -> dict:
    """Each run's CPU seconds over simulated [start, end) (a fresh Pipeline each), after one unmeasured."""
    out = []
    for run in range(runs + 1):
        r = _run(exporters, start, end, alert_file)
        if r["decoded"] != r["offered"]:
            raise RuntimeError(f"decoded {r['decoded']} of {r['offered']} records")
        if run:
            out.append(r)
    seconds = [r["cpu_s"] for r in out]
    median = statistics.median(seconds)
    return {"exporters": exporters, "alert_file": alert_file, "from_s": start, "to_s": end,
            "records": out[0]["records"], "alerts": out[0]["alerts"], "file_bytes": out[0].get("file_bytes"),
            "runs_cpu_s": seconds, "median_cpu_s": median,
            "ms_per_million_records": 1e9 * median / out[0]["records"]}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.fold", description=__doc__.split("\n\n")[0])
    ap.add_argument("--exporters", type=int, default=5000, help="exporters, every one reporting every instance "
                    "(default 5000)")
    ap.add_argument("--from", dest="start", type=float, default=70.0,
                    help="simulated second the measurement starts at (default 70: past the first window)")
    ap.add_argument("--to", dest="end", type=float, default=110.0, help="simulated second it ends at (default 110)")
    ap.add_argument("--runs", type=int, default=3, help="measured runs, after one unmeasured (default 3)")
    ap.add_argument("--alert-file", action="store_true", help="alerts appended to a temporary file (removed "
                    "after each run), as the collector's --alerts; default: a null sink")
    ap.add_argument("--json", type=Path, default=None, help="where to write the JSON (default bench/results/)")
    a = ap.parse_args(argv)
    if a.exporters < 1 or a.runs < 1 or not 0 <= a.start < a.end:
        print("bench.fold: --exporters and --runs take a number >= 1, and 0 <= --from < --to", file=sys.stderr)
        return 2
    r = measure(a.exporters, a.start, a.end, a.runs, a.alert_file)
    print(f"Pipeline.process and tick, IPFIX 1 M records/s from {a.exporters} exporters reporting the same 64 "
          f"instances, 1 % matching, simulated seconds {a.start:g}-{a.end:g}, CPU time, median of {a.runs} runs, "
          f"alerts to {'a file' if a.alert_file else 'a null sink'}")
    print(f"{'exporters':>9}  {'records':>9}  {'alerts':>7}  {'median ms':>9}  {'ms/M rec':>8}  runs ms")
    print(f"{r['exporters']:>9}  {r['records']:>9}  {r['alerts']:>7}  {1e3 * r['median_cpu_s']:>9.1f}  "
          f"{r['ms_per_million_records']:>8.1f}  " + " ".join(f"{1e3 * s:.1f}" for s in r["runs_cpu_s"]))
    write_result("fold", a.json, r)
    return 0


if __name__ == "__main__":
    sys.exit(main())
