"""What a wake-up costs: the same batch through Pipeline.process in a busy loop and after the core idled.

    python -m bench.wakeup                        # NetFlow v5, 64 datagrams a batch
    python -m bench.wakeup --export ipfix --idle 0.0002,0.002,0.006,0.02 --json wakeup.json

At low rates a collector wakes up for a few datagrams at a time and sleeps in between. While it
sleeps the core runs other work (on a virtual machine, other tenants) and its caches go cold, so a
batch processed right after a wake-up costs several times what the same batch costs in a busy loop.
This measures that ratio on this machine: CPU time (`time.thread_time`) of Pipeline.process for each
idle gap, median of `--batches` batches. It is why `listen.coalesce_seconds` and the loop's polling
(serve.py) save CPU, and why a collector that touches less code per wake-up wins at low rates.
Prints a table, writes JSON. No sockets.
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

from . import write_result
from .synth import flow_datagrams

__all__ = ["measure", "main"]

_VERSIONS = {"v5": 5, "v9": 9, "ipfix": 10}


def measure(version: int = 5, datagrams: int = 64, idles: tuple[float, ...] = (0.0, 0.0002, 0.002, 0.006, 0.02),
            batches: int = 200, imds_fraction: float = 0.01) -> list[dict]:
    """One row per idle gap (0: a busy loop): median CPU microseconds of Pipeline.process per batch."""
    from imds_flow import config
    from imds_flow.app import Pipeline, _NullSink
    from imds_flow.datagrams import DatagramBatch

    kinds = 16                                    # distinct batches, taken in turn
    ex = flow_datagrams(version, datagrams * kinds, 30, imds_fraction=imds_fraction, imds_sources=64)
    ex.set_sequence(ex.data, 0)
    pipe = Pipeline(config.load(None), _NullSink())
    if ex.template is not None:
        pipe.process(DatagramBatch.from_payloads([ex.template], ts=time.time()))
    work = [DatagramBatch.from_payloads([r.tobytes() for r in ex.data[k * datagrams:(k + 1) * datagrams]],
                                        ts=time.time()) for k in range(kinds)]
    for dg in work:                               # kernels loaded, folding keys known
        pipe.process(dg)
    rows = []
    for idle in idles:
        took = []
        for k in range(batches):
            if idle:
                time.sleep(idle)
            started = time.thread_time()
            pipe.process(work[k % kinds])
            took.append(time.thread_time() - started)
        rows.append({"idle_s": idle, "process_us": statistics.median(took) * 1e6})
    pipe.close()
    busy = rows[0]["process_us"] if rows and rows[0]["idle_s"] == 0 else None
    for row in rows:
        row["vs_busy"] = row["process_us"] / busy if busy else None
    return rows


def table(rows: list[dict]) -> str:
    lines = [f"{'idle before the batch':>22}  {'process us':>10}  {'vs busy loop':>12}"]
    for r in rows:
        idle = "none (busy loop)" if r["idle_s"] == 0 else f"{r['idle_s'] * 1e3:g} ms"
        ratio = f"{r['vs_busy']:.1f}x" if r["vs_busy"] is not None else "-"
        lines.append(f"{idle:>22}  {r['process_us']:>10.1f}  {ratio:>12}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.wakeup", description=__doc__.split("\n\n")[0])
    p.add_argument("--export", choices=sorted(_VERSIONS), default="v5", help="flow format of the batches")
    p.add_argument("--datagrams", type=int, default=64, help="datagrams per batch (30 records each)")
    p.add_argument("--idle", default="0,0.0002,0.002,0.006,0.02",
                   help="seconds the core sleeps before each batch, comma-separated (0: a busy loop)")
    p.add_argument("--batches", type=int, default=200, help="batches per idle gap (the median is reported)")
    p.add_argument("--json", type=Path, default=None, help="where to write the JSON (default bench/results/)")
    a = p.parse_args(argv)
    try:
        idles = tuple(float(x) for x in a.idle.split(","))
        if a.datagrams < 1 or a.batches < 1 or any(x < 0 for x in idles):
            raise ValueError
    except ValueError:
        print("bench.wakeup: --idle takes seconds >= 0, comma-separated; --datagrams and --batches >= 1",
              file=sys.stderr)
        return 2
    rows = measure(_VERSIONS[a.export], a.datagrams, idles, a.batches)
    print(f"Pipeline.process, {a.export}, {a.datagrams} datagrams of 30 records, median of {a.batches} batches (CPU time)")
    print(table(rows))
    write_result(f"wakeup-{a.export}", a.json,
                 {"export": a.export, "datagrams": a.datagrams, "batches": a.batches, "rows": rows})
    return 0


if __name__ == "__main__":
    sys.exit(main())
