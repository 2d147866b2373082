"""sFlow v5 benchmarks: in-process samples/s, and CPU per million samples next to C collectors.

    python -m bench.sflow [--samples 8] [--header-bytes 128] [--http-fraction 0.3] [--repeats 5]
    python -m bench.sflow --compare sfcapd,sfacctd [--datagrams 50000] [--rate 200000]
    imds-flow bench --export sflow --compare sfcapd,sfacctd       # the same, through the CLI

In process: flow samples per CPU second through Pipeline.process (decode of the datagram, the packet
kernel on every sampled header, detection, alerts), one core, median of runs.
End to end: each collector (`imds-flow listen`, nfdump's sfcapd, pmacct's sfacctd) in turn gets the
same datagrams over loopback at a pace none of them drops at; the CPU time of its process tree from
before the first datagram to the end of its drain, divided by the samples it decoded, is its CPU per
million samples (one run each, lower is better).

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


def _collector(name: str, work, rcvbuf: int):
    """(process, port, count()) of a collector listening on 127.0.0.1."""
    import re
    import subprocess
    from pathlib import Path
    from .compare import _free_port
    work = Path(work)
    if name == "imds-flow":
        (work / "cfg.toml").write_text(
            f'[[endpoints]]\nname = "aws-imds-ipv4"\naddress = "169.254.169.254"\n[listen]\nrcvbuf_bytes = {rcvbuf}\n'
            '[alerts]\nfold_window_seconds = 0\n[templates]\nstate_file = ""\n')
        log = open(work / "log", "w")
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
        raise ValueError(f"unknown collector {name!r}: imds-flow, sfcapd or sfacctd")
    log = open(work / f"{name}.log", "w")
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
            rcvbuf: int = 8 << 20) -> list[dict]:
    """CPU per million samples of each collector over the same datagrams (module docstring)."""
    import signal
    import tempfile
    from .compare import tree_cpu_seconds, udp_drops
    payloads = sflow_datagrams(datagrams, samples, imds_fraction=0.0005)
    sent = datagrams * samples
    rows = []
    for name in names:
        with tempfile.TemporaryDirectory(prefix=f"sflow-bench-{name}-") as work:
            proc, port, count, sig = _collector(name, work, rcvbuf)
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
        rows.append({"collector": name, "samples_sent": sent, "samples_decoded": decoded, "kernel_drops": drops,
                     "send_seconds": wall, "cpu_seconds": cpu,
                     "cpu_seconds_per_million_samples": cpu / max(decoded, 1) * 1e6})
        print(f"  {name:>9}: {decoded:,} of {sent:,} samples decoded, {drops} kernel drops, "
              f"{rows[-1]['cpu_seconds_per_million_samples']:.2f} CPU s per million samples", file=sys.stderr)
    return rows


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.sflow", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--samples", type=int, default=8, help="flow samples per datagram")
    p.add_argument("--header-bytes", type=int, default=128, help="sampled header length")
    p.add_argument("--http-fraction", type=float, default=0.3, help="share of samples with an HTTP request")
    p.add_argument("--batch", type=int, default=512, help="datagrams per Pipeline.process call")
    p.add_argument("--seconds", type=float, default=1.0)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--compare", default="", help="also run end to end against these: sfcapd, sfacctd")
    p.add_argument("--datagrams", type=int, default=50_000, help="end to end: datagrams sent to each collector")
    p.add_argument("--rate", type=float, default=200_000, help="end to end: samples/s offered")
    p.add_argument("--no-inprocess", action="store_true")
    a, _ = p.parse_known_args(argv)
    result = {}
    if not a.no_inprocess:
        r = inprocess(a.samples, a.batch, a.seconds, a.repeats, a.header_bytes, a.http_fraction)
        print(f"in-process sFlow decode+detect+alerts, one core: {r['median_samples_per_s'] / 1e6:.2f} M samples/s "
              f"(median of {a.repeats})", file=sys.stderr)
        result["inprocess"] = r
    rivals = [n.strip() for n in a.compare.split(",") if n.strip()]
    if rivals:
        rows = compare(["imds-flow", *rivals], a.datagrams, a.samples, a.rate)
        result["end_to_end"] = rows
        ours = rows[0]["cpu_seconds_per_million_samples"]
        best = min(r["cpu_seconds_per_million_samples"] for r in rows[1:])
        result["ratio_to_best_rival"] = ours / best if best else None
        print(f"imds-flow uses {ours / best:.2f}x the CPU per sample of the better rival "
              f"(target: at most 0.5x)", file=sys.stderr)
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
