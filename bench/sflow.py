"""sFlow v5 benchmarks: in-process samples/s, and CPU per million samples next to C collectors.

    python -m bench.sflow [--samples 8] [--header-bytes 128] [--http-fraction 0.3] [--repeats 5]
    python -m bench.sflow --compare sfcapd,sfacctd [--datagrams 50000] [--rate 200000] [--repeat 3] [--out DIR]
    imds-flow bench --export sflow --compare sfcapd,sfacctd [--repeat 3]   # the same, through the CLI

In process: flow samples per CPU second through Pipeline.process (decode of the datagram, the packet
kernel on every sampled header, detection, alerts), one core, median of runs.
End to end: each collector (`imds-flow listen`, nfdump's sfcapd, pmacct's sfacctd) in turn gets the
same datagrams over loopback at a pace none of them drops at; the CPU time of its process tree from
before the first datagram to the end of its drain, divided by the samples it decoded, is its CPU per
million samples (lower is better). `floor` (bench/floor.py) is imds-flow's receive loop alone, reading
the same datagrams and decoding none: what waking up and reading cost, which no decoder can save; it
is shown, not counted as a rival. With --repeat R every collector runs R times, interleaved (all of
them, then again) so that other load on the machine falls on each alike; the table gives medians.
CPU is each thread's run time from /proc, to the nanosecond (compare.tree_cpu_seconds).

Datagrams are what a switch sends: an IPv4 agent, `samples` compact flow samples, each with an
extended switch record and a raw Ethernet header of at most `header_bytes` bytes (802.1Q-tagged
IPv4/TCP; `http_fraction` of them carry an HTTP request line with headers, the others TLS bytes);
`imds_fraction` of the samples go to 169.254.169.254. Output: one JSON object on stdout.
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import time

import numpy as np

from imds_flow.build import frame, packet_sample, sflow

__all__ = ["sflow_datagrams", "inprocess", "main"]

_HTTP = (b"GET /api/v2/items?page=3 HTTP/1.1\r\nHost: shop.example.com\r\nUser-Agent: curl/8.5.0\r\n"
         b"Accept: */*\r\nX-Request-Id: 5f0c\r\n\r\n")


def sflow_datagrams(count: int, samples: int = 8, header_bytes: int = 128, http_fraction: float = 0.3,
                    imds_fraction: float = 0.001, seed: int = 1, rate: int = 1000) -> list[bytes]:
    """`count` sFlow datagrams of `samples` flow samples each (see the module docstring)."""
    rng = np.random.default_rng(seed)
    tls = bytes(rng.integers(0, 256, 200, dtype=np.uint8))
    out = []
    seq = 0
    for d in range(count):
        body = []
        for _ in range(samples):
            imds = rng.random() < imds_fraction
            dst = 0xA9FEA9FE if imds else int(rng.integers(0x01000000, 0xDF000000))
            src = 0x0A000000 | int(rng.integers(1, 1 << 24))
            http = imds or rng.random() < http_fraction
            payload = (_HTTP.replace(b"/api/v2/items?page=3", b"/latest/meta-data/") if imds else _HTTP) if http else tls
            body.append(packet_sample(seq, frame(src, dst, int(rng.integers(1024, 65535)), 80 if http else 443, payload,
                                                 int(rng.integers(1, 4095))), header_bytes, rate))
            seq += 1
        out.append(sflow(body, d + 1))
    return out


def inprocess(samples: int = 8, batch: int = 512, seconds: float = 1.0, repeats: int = 5,
              header_bytes: int = 128, http_fraction: float = 0.3) -> dict:
    from imds_flow import config
    from imds_flow.app import Pipeline, _NullSink
    from imds_flow.datagrams import DatagramBatch

    from .flowbench import per_cpu_second
    payloads = sflow_datagrams(batch, samples, header_bytes, http_fraction)
    dg = DatagramBatch.from_payloads(payloads, src=("192.0.2.7", 6343), ts=time.time())
    pipe = Pipeline(config.load(None), _NullSink())
    pipe.process(dg)                                   # JIT warm-up, exporter rows registered
    rates = per_cpu_second(pipe, dg, batch * samples, seconds, repeats)
    stats = pipe.stats()
    pipe.close()
    if stats["records"] == 0:
        raise RuntimeError("in-process sFlow bench decoded nothing")
    return {"format": "sflow", "samples_per_datagram": samples, "header_bytes": header_bytes,
            "http_fraction": http_fraction, "batch_datagrams": batch, "datagram_bytes": len(payloads[0]),
            "median_samples_per_s": statistics.median(rates), "runs": rates}


# --- end to end: CPU per million samples ---------------------------------------------------------

_SF_CONF = """\
daemonize: false
sfacctd_ip: 127.0.0.1
sfacctd_port: {port}
sfacctd_pipe_size: {rcvbuf}
plugins: print[p]
aggregate[p]: proto
print_output[p]: csv
print_output_file[p]: {out}
print_output_file_append[p]: true
print_refresh_time[p]: 3600
plugin_pipe_size[p]: 67108864
plugin_buffer_size[p]: 65536
"""


def _send(port: int, payloads: list[bytes], rate: float) -> float:
    """Send every payload to 127.0.0.1:port, paced at `rate` samples/s in bursts; returns seconds."""
    import socket
    samples = int.from_bytes(payloads[0][24:28], "big")
    burst = 32
    gap = burst * samples / rate
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        t0 = time.perf_counter()
        for k in range(0, len(payloads), burst):
            for p in payloads[k:k + burst]:
                s.sendto(p, ("127.0.0.1", port))
            ahead = t0 + (k // burst + 1) * gap - time.perf_counter()
            if ahead > 0:
                time.sleep(ahead)
        return time.perf_counter() - t0


def _collector(name: str, work, rcvbuf: int, samples: int = 8):
    """(process, port, count(), stop signal) of a collector listening on 127.0.0.1; count() gives the
    samples it decoded (the floor: the samples in the datagrams it read, `samples` in each)."""
    import re
    import subprocess
    from pathlib import Path
    from .compare import _free_port
    work = Path(work)
    if name == "floor":
        from .flowbench import ReadsOnly
        floor = ReadsOnly("floor", work, rcvbuf)

        def count() -> int:
            return floor.counted()[0] * samples
        return floor.proc, floor.port, count, "SIGTERM"
    if name == "imds-flow":
        (work / "cfg.toml").write_text(
            f'[[endpoints]]\nname = "aws-imds-ipv4"\naddress = "169.254.169.254"\n[listen]\nrcvbuf_bytes = {rcvbuf}\n'
            '[alerts]\nfold_window_seconds = 0\n[templates]\nstate_file = ""\n')
        with open(work / "log", "w") as log:     # the child keeps its own handle
            proc = subprocess.Popen([sys.executable, "-m", "imds_flow.cli", "listen", "127.0.0.1:0", "--config",
                                     str(work / "cfg.toml"), "--alerts", str(work / "alerts.mp")],
                                    stdout=subprocess.DEVNULL, stderr=log, stdin=subprocess.DEVNULL)
        deadline = time.monotonic() + 300
        while not (m := re.search(r"listening on 127\.0\.0\.1:(\d+)", (work / "log").read_text())):
            if proc.poll() is not None or time.monotonic() > deadline:
                proc.kill()
                raise RuntimeError("imds-flow did not start: " + (work / "log").read_text()[-2000:])
            time.sleep(0.05)

        def count() -> int:
            m = re.search(r"stopped: \d+ exporters, \d+ datagrams, (\d+) records", (work / "log").read_text())
            return int(m.group(1))
        return proc, int(m.group(1)), count, "SIGTERM"
    port = _free_port()
    if name == "sfcapd":
        flows = work / "flows"
        flows.mkdir()
        argv = ["sfcapd", "-b", "127.0.0.1", "-p", str(port), "-w", str(flows), "-B", str(rcvbuf), "-t", "3600"]

        def count() -> int:
            total = 0
            for f in sorted(flows.glob("nfcapd.*")):
                out = subprocess.run(["nfdump", "-r", str(f), "-I"], capture_output=True, text=True).stdout
                total += int(re.search(r"^Flows:\s+(\d+)", out, re.M).group(1))
            return total
        sig = "SIGTERM"
    elif name == "sfacctd":
        out = work / "flows.csv"
        (work / "sfacctd.conf").write_text(_SF_CONF.format(port=port, rcvbuf=rcvbuf, out=out))
        argv = ["sfacctd", "-f", str(work / "sfacctd.conf")]

        def count() -> int:           # one PACKETS per sample: no renormalisation by the sampling rate
            import csv
            total = 0
            with open(out, newline="") as fh:
                col = None
                for row in csv.reader(fh):
                    if "PACKETS" in row:
                        col = row.index("PACKETS")
                    elif row and col is not None:
                        total += int(row[col])
            return total
        sig = "SIGINT"
    else:
        raise ValueError(f"unknown collector {name!r}: imds-flow, sfcapd, sfacctd or floor")
    with open(work / f"{name}.log", "w") as log:
        proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, cwd=work,
                                start_new_session=True)
    from imds_flow.sockets import udp_sockets
    deadline = time.monotonic() + 30
    while not udp_sockets(port):
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            raise RuntimeError(f"{name} did not start: " + (work / f"{name}.log").read_text()[-2000:])
        time.sleep(0.02)
    return proc, port, count, sig


def compare(names: list[str], datagrams: int = 50_000, samples: int = 8, rate: float = 200_000,
            rcvbuf: int = 8 << 20, repeat: int = 1, imds_fraction: float = 0.0005) -> list[dict]:
    """CPU per million samples of each collector over the same datagrams (module docstring): one row
    per run, `repeat` rounds of every collector in turn."""
    from .compare import installed
    names = installed(names, lambda message: print(message, file=sys.stderr))
    payloads = sflow_datagrams(datagrams, samples, imds_fraction=imds_fraction)
    rows = []
    for k in range(repeat):
        for name in names:
            rows.append(_run(name, payloads, samples, rate, rcvbuf) | {"run": k + 1})
            r = rows[-1]
            print(f"  [{len(rows):2d}] {name:>9}: {r['samples_decoded']:,} of {r['samples_sent']:,} samples "
                  f"{'read' if name == 'floor' else 'decoded'}, "
                  f"{r['kernel_drops']} kernel drops, {r['cpu_seconds_per_million_samples']:.3f} CPU s per million "
                  "samples", file=sys.stderr)
    return rows


def _run(name: str, payloads: list[bytes], samples: int, rate: float, rcvbuf: int) -> dict:
    """One collector, started fresh, over every payload: what it decoded and the CPU it took."""
    import signal
    import tempfile
    from .compare import tree_cpu_seconds, udp_drops
    sent = len(payloads) * samples
    with tempfile.TemporaryDirectory(prefix=f"sflow-bench-{name}-") as work:
        proc, port, count, sig = _collector(name, work, rcvbuf, samples)
        try:
            time.sleep(1.0)                          # let it settle (imds-flow loads its kernels)
            cpu0 = tree_cpu_seconds(proc.pid)
            wall = _send(port, payloads, rate)
            quiet, last = 0, -1.0                    # drained: CPU time stopped moving
            while quiet < 5:
                time.sleep(0.1)
                cpu = tree_cpu_seconds(proc.pid)
                quiet, last = (quiet + 1 if cpu == last else 0), cpu
            cpu = tree_cpu_seconds(proc.pid) - cpu0
            drops = udp_drops(port)
        finally:
            proc.send_signal(getattr(signal, sig))
            try:
                proc.wait(60)
            except Exception:
                proc.kill()
                raise
        decoded = count()
    return {"collector": name, "samples_sent": sent, "samples_decoded": decoded, "kernel_drops": drops,
            "send_seconds": wall, "cpu_seconds": cpu, "cpu_seconds_per_million_samples": cpu / max(decoded, 1) * 1e6}


def summarise(rows: list[dict]) -> dict:
    """Per collector (in the order first met): runs, the median CPU s per million samples, the fewest
    samples decoded and the most kernel drops of its runs; and imds-flow's ratio to the better rival."""
    out = {}
    for name in dict.fromkeys(r["collector"] for r in rows):
        mine = [r for r in rows if r["collector"] == name]
        out[name] = {"runs": len(mine),
                     "median_cpu_seconds_per_million_samples":
                         statistics.median(r["cpu_seconds_per_million_samples"] for r in mine),
                     "min_samples_decoded": min(r["samples_decoded"] for r in mine),
                     "samples_sent": mine[0]["samples_sent"],
                     "max_kernel_drops": max(r["kernel_drops"] for r in mine)}
    rivals = [v["median_cpu_seconds_per_million_samples"] for k, v in out.items() if k not in ("imds-flow", "floor")]
    best = min(rivals, default=0.0)
    ratio = out["imds-flow"]["median_cpu_seconds_per_million_samples"] / best if best and "imds-flow" in out else None
    return {"collectors": out, "ratio_to_best_rival": ratio}


def table(summary: dict) -> str:
    lines = [f"{'collector':>9}  {'runs':>4}  {'CPU s per M samples (median)':>28}  {'decoded (fewest)':>16}  "
             f"{'kernel drops':>12}"]
    for name, v in summary["collectors"].items():
        lines.append(f"{name:>9}  {v['runs']:>4}  {v['median_cpu_seconds_per_million_samples']:>28.3f}  "
                     f"{v['min_samples_decoded']:>16,}  {v['max_kernel_drops']:>12}")
    return "\n".join(lines)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.sflow", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--samples", type=int, default=8, help="flow samples per datagram")
    p.add_argument("--header-bytes", type=int, default=128, help="sampled header length")
    p.add_argument("--http-fraction", type=float, default=0.3, help="share of samples with an HTTP request")
    p.add_argument("--batch", type=int, default=512, help="datagrams per Pipeline.process call")
    p.add_argument("--seconds", type=float, default=1.0)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--compare", default="", help="also run end to end against these: sfcapd, sfacctd; and floor "
                                                 "(imds-flow's receive loop alone)")
    p.add_argument("--datagrams", type=int, default=50_000, help="end to end: datagrams sent to each collector")
    p.add_argument("--rate", type=float, default=200_000, help="end to end: samples/s offered")
    p.add_argument("--repeat", type=int, default=1, help="end to end: runs of each collector, interleaved")
    p.add_argument("--imds-fraction", type=float, default=0.0005, help="end to end: share of samples to the endpoint")
    p.add_argument("--out", default="", help="also write the result as bench-sflow-<time>.json in this folder")
    p.add_argument("--no-inprocess", action="store_true")
    a, _ = p.parse_known_args(argv)
    from datetime import datetime, timezone
    stamp = datetime.now(timezone.utc)
    result = {"date": stamp.isoformat(timespec="seconds"), "settings": vars(a)}
    if not a.no_inprocess:
        r = inprocess(a.samples, a.batch, a.seconds, a.repeats, a.header_bytes, a.http_fraction)
        print(f"in-process sFlow decode+detect+alerts, one core: {r['median_samples_per_s'] / 1e6:.2f} M samples/s "
              f"(median of {a.repeats})", file=sys.stderr)
        result["inprocess"] = r
    rivals = [n.strip() for n in a.compare.split(",") if n.strip()]
    if rivals:
        print(f"end to end: {a.datagrams:,} datagrams of {a.samples} samples at {a.rate:,.0f} samples/s to each "
              f"collector, {a.repeat} run(s) each", file=sys.stderr)
        rows = compare(["imds-flow", *rivals], a.datagrams, a.samples, a.rate, repeat=a.repeat,
                       imds_fraction=a.imds_fraction)
        result["end_to_end"] = rows
        result["summary"] = summarise(rows)
        result["ratio_to_best_rival"] = ratio = result["summary"]["ratio_to_best_rival"]
        print("\n" + table(result["summary"]), file=sys.stderr)
        if ratio is not None:
            print(f"imds-flow uses {ratio:.2f}x the CPU per sample of the better rival (medians; target: at most "
                  "0.5x)", file=sys.stderr)
        c = result["summary"]["collectors"]
        if "floor" in c and "imds-flow" in c:
            floor, ours = (c[k]["median_cpu_seconds_per_million_samples"] for k in ("floor", "imds-flow"))
            print(f"the floor (receiving alone) is {floor:.3f} of imds-flow's {ours:.3f} CPU s per million samples: "
                  f"decoding, detection and alerts take the other {max(ours - floor, 0.0):.3f}", file=sys.stderr)
    if a.out:
        from pathlib import Path
        path = Path(a.out) / f"bench-sflow-{stamp:%Y%m%d-%H%M%S}.json"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(result, indent=1))
        print(f"wrote {path}", file=sys.stderr)
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
