"""imds-flow throughput: in-process decode+detect, and end-to-end over loopback at given rates.

    python -m bench.flowbench                       # in-process + a short end-to-end sweep
    python -m bench.flowbench --rates 1e6,2e6,4e6 --duration 5 --repeats 3

Prints a table and writes JSON (bench/results/flowbench-<time>.json unless --json is given).
End to end: a sender process (sendmmsg, K exporter sockets, paced) offers NetFlow v5 to a real
`imds-flow listen` process on 127.0.0.1; loss = records offered - records the collector decoded,
split into kernel drops (/proc/net/udp) and the rest. Loopback only.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

import msgpack
import numpy as np

from bench.synth import hits_in, set_v5_sequence, v5_datagrams

ROOT = Path(__file__).resolve().parent.parent
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


# --- in-process -----------------------------------------------------------------------------------

def inprocess(records: int = 30, batch: int = 512, seconds: float = 1.0, repeats: int = 5) -> dict:
    """Records/s through Pipeline.process (decode + detect + alerts) and through the kernels alone."""
    from imds_flow import config, wire
    from imds_flow.app import Pipeline
    from imds_flow.datagrams import DatagramBatch

    class Null:
        def write(self, data): pass
        def flush(self): pass
        def close(self): pass

    data = v5_datagrams(batch, records, imds_fraction=0.001)
    set_v5_sequence(data, 0, records)
    size = data.shape[1]
    dg = DatagramBatch(data.ravel().copy(), np.arange(batch, dtype=np.int64) * size, np.full(batch, size, np.int32),
                       np.zeros(batch, np.uint64), np.full(batch, 0xFFFF7F000001, np.uint64),
                       np.full(batch, 2055, np.uint16), np.full(batch, time.time()), batch)
    cfg = config.load(None)
    pipe = Pipeline(cfg, Null())
    out = {}
    for name, step in (("pipeline", lambda: pipe.process(dg)),
                       ("kernels", lambda: (wire.decode(dg, np.zeros(batch, np.int32), pipe.exporters, pipe.batch),
                                            pipe.detector.run(pipe.batch)))):
        step()                                            # JIT warm-up
        rates = []
        for _ in range(repeats):
            n = 0
            t0 = time.perf_counter()
            while time.perf_counter() - t0 < seconds:
                step()
                n += batch * records
            rates.append(n / (time.perf_counter() - t0))
        out[name] = {"median_records_per_s": statistics.median(rates), "runs": rates}
    pipe.close()
    return out


# --- end to end -----------------------------------------------------------------------------------

_SUMMARY = re.compile(r"stopped: (\d+) exporters, (\d+) datagrams, (\d+) records, (\d+) rejected datagrams, "
                      r"(\d+) records lost upstream")


def _udp_drops(port: int) -> int:
    drops = 0
    for name in ("/proc/net/udp", "/proc/net/udp6"):
        try:
            lines = Path(name).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            f = line.split()
            if int(f[1].rsplit(":", 1)[1], 16) == port:
                drops += int(f[-1])
    return drops


def _cpu_seconds(pid: int) -> float:
    f = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(f[11]) + int(f[12])) / os.sysconf("SC_CLK_TCK")


def e2e_once(rate: float, duration: float, exporters: int, records: int, batch: int, rcvbuf: int) -> dict:
    with tempfile.TemporaryDirectory(prefix="imds-flow-bench-") as tmp:
        tmp = Path(tmp)
        (tmp / "cfg.toml").write_text(CONFIG.format(rcvbuf=rcvbuf, batch=batch))
        log = open(tmp / "log", "w")
        proc = subprocess.Popen([sys.executable, "-m", "imds_flow.cli", "listen", "127.0.0.1:0", "--config",
                                 str(tmp / "cfg.toml"), "--alerts", str(tmp / "alerts.mp")],
                                stdout=subprocess.DEVNULL, stderr=log, stdin=subprocess.DEVNULL, cwd=ROOT)
        try:
            deadline = time.monotonic() + 60
            while not (m := re.search(r"listening on 127\.0\.0\.1:(\d+)", (tmp / "log").read_text())):
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError("collector did not start: " + (tmp / "log").read_text())
                time.sleep(0.05)
            port = int(m.group(1))
            cpu0, t0 = _cpu_seconds(proc.pid), time.monotonic()
            sent = subprocess.run([sys.executable, "-m", "bench.sender", "--port", str(port), "--rate", str(rate),
                                   "--duration", str(duration), "--exporters", str(exporters),
                                   "--records", str(records)], capture_output=True, text=True, cwd=ROOT,
                                  timeout=duration + 60)
            if sent.returncode != 0:
                raise RuntimeError("sender failed: " + sent.stderr)
            offered = json.loads(sent.stdout)
            time.sleep(1.0)                                   # let the collector drain its queue
            cpu = _cpu_seconds(proc.pid) - cpu0
            wall = time.monotonic() - t0
            drops = _udp_drops(port)
            proc.send_signal(signal.SIGTERM)
            proc.wait(60)
        finally:
            if proc.poll() is None:
                proc.kill()
            log.close()
        text = (tmp / "log").read_text()
        m = _SUMMARY.search(text)
        if not m:
            raise RuntimeError("no summary from the collector: " + text[-2000:])
        _, datagrams, decoded, rejected, seq_lost = map(int, m.groups())
        with open(tmp / "alerts.mp", "rb") as f:
            alerted = sum(a["count"] for a in msgpack.Unpacker(f, raw=False))
    lost = offered["records"] - decoded
    return {
        "target_records_per_s": rate, "offered_records_per_s": offered["records_per_s"],
        "offered_records": offered["records"], "decoded_records": decoded, "lost_records": lost,
        "loss_pct": 100.0 * lost / max(offered["records"], 1), "kernel_drop_datagrams": drops,
        "sequence_lost_records": seq_lost, "rejected_datagrams": rejected,
        "alerts_expected": offered["hits"], "alerts_raised": alerted,
        "collector_cpu_pct": 100.0 * cpu / wall, "exporters": exporters, "records_per_datagram": records,
    }


def e2e(rates, duration, exporters, records, batch, rcvbuf, repeats) -> list[dict]:
    rows = []
    for rate in rates:
        runs = [e2e_once(rate, duration, exporters, records, batch, rcvbuf) for _ in range(repeats)]
        med = {k: statistics.median(r[k] for r in runs) for k in runs[0]}
        med["runs"] = runs
        rows.append(med)
        print(f"  {rate / 1e6:6.2f} M/s offered {med['offered_records_per_s'] / 1e6:6.2f} M/s, "
              f"loss {med['loss_pct']:.3f} %, cpu {med['collector_cpu_pct']:.0f} %", file=sys.stderr, flush=True)
    return rows


def machine() -> dict:
    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), "unknown")
    return {"cpu": cpu, "cores": os.cpu_count(), "python": sys.version.split()[0],
            "kernel": os.uname().release}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rates", default="0.5e6,1e6,2e6", help="end-to-end records/s, comma-separated ('' skips)")
    p.add_argument("--duration", type=float, default=5.0, help="seconds per end-to-end run")
    p.add_argument("--repeats", type=int, default=3, help="runs per rate (the table shows medians)")
    p.add_argument("--exporters", type=int, default=4)
    p.add_argument("--records", type=int, default=30, help="records per datagram")
    p.add_argument("--batch", type=int, default=512, help="listen.batch_datagrams")
    p.add_argument("--rcvbuf", type=int, default=64 << 20, help="listen.rcvbuf_bytes")
    p.add_argument("--json", type=Path, help="where to write the JSON results")
    a = p.parse_args()

    result = {"date": datetime.now(timezone.utc).isoformat(timespec="seconds"), "machine": machine(),
              "version": 5}
    print("in-process (v5, 30 records/datagram, 512-datagram batches) ...", file=sys.stderr, flush=True)
    result["inprocess"] = inprocess(a.records, a.batch)
    rates = [float(r) for r in a.rates.split(",") if r.strip()]
    if rates:
        print("end to end over loopback ...", file=sys.stderr, flush=True)
        result["e2e"] = e2e(rates, a.duration, a.exporters, a.records, a.batch, a.rcvbuf, a.repeats)

    ip = result["inprocess"]
    print(f"\nin-process v5, median of 5 runs: pipeline {ip['pipeline']['median_records_per_s'] / 1e6:.1f} M records/s,"
          f" decode+detect kernels {ip['kernels']['median_records_per_s'] / 1e6:.1f} M records/s")
    if rates:
        print(f"\nend to end, NetFlow v5 over loopback, {a.exporters} exporters, {a.records} records/datagram,"
              f" median of {a.repeats} runs of {a.duration:g} s")
        head = ("target M/s", "offered M/s", "decoded", "lost", "loss %", "kernel drops", "alerts exp/raised", "cpu %")
        print("  ".join(f"{h:>14}" for h in head))
        for r in result["e2e"]:
            cells = (f"{r['target_records_per_s'] / 1e6:.2f}", f"{r['offered_records_per_s'] / 1e6:.2f}",
                     f"{r['decoded_records']:.0f}", f"{r['lost_records']:.0f}", f"{r['loss_pct']:.3f}",
                     f"{r['kernel_drop_datagrams']:.0f}", f"{r['alerts_expected']:.0f}/{r['alerts_raised']:.0f}",
                     f"{r['collector_cpu_pct']:.0f}")
            print("  ".join(f"{c:>14}" for c in cells))
    path = a.json or ROOT / "bench" / "results" / f"flowbench-{datetime.now():%Y%m%d-%H%M%S}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(result, indent=1))
    print(f"\nJSON: {path}")


if __name__ == "__main__":
    main()
