"""Start-up as a router sees it: time to "listening", and exports refused meanwhile.

    python -m bench.startup                 # first start (empty kernel cache), then warm starts
    python -m bench.startup --runs 5 --json startup.json

A UDP socket connected to the collector's port sends one small datagram every `--interval`
seconds from before the collector process starts until it logs "listening"; every ICMP port
unreachable the kernel reports back (ECONNREFUSED on the next send) is an export the router lost.
Probes sent before the process was started are refused by necessity and reported apart; the
figure that matters is `refused` after the exec.
The first run uses an empty numba cache (NUMBA_CACHE_DIR in a temporary folder: what a fresh
install sees); later runs reuse it. Prints a table, writes JSON; medians over the warm runs.
Loopback only.
"""
from __future__ import annotations

import argparse
import errno
import json
import os
import re
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

__all__ = ["measure_start", "main"]

_LISTENING = re.compile(r"listening on ")


def _free_udp_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def measure_start(cache_dir: str, interval: float = 0.2, timeout: float = 600.0) -> dict:
    """One start of `imds-flow listen 127.0.0.1:PORT`: seconds to "listening", datagrams sent
    and refused from the exec until then."""
    port = _free_udp_port()
    tx = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    tx.connect(("127.0.0.1", port))
    sent: list[float] = []                             # send time of every probe
    refused: list[float] = []                          # send time of every probe the kernel refused
    stop = threading.Event()

    def send() -> None:
        while not stop.is_set():
            try:
                tx.send(b"\x00\x05startup-probe")      # not a flow export: counted as rejected, harmless
                sent.append(time.monotonic())
            except OSError as e:
                if e.errno != errno.ECONNREFUSED:
                    raise
                refused.append(sent[-1])               # the error is the previous probe's refusal
            stop.wait(interval)

    with tempfile.TemporaryDirectory() as tmp:
        log_path = Path(tmp) / "collector.log"
        env = {**os.environ, "NUMBA_CACHE_DIR": cache_dir, "PYTHONUNBUFFERED": "1"}
        sender = threading.Thread(target=send, daemon=True)
        sender.start()
        stop.wait(3 * interval)                        # the sender runs before the collector exists
        started = time.monotonic()
        with open(log_path, "w") as log:
            proc = subprocess.Popen([sys.executable, "-m", "imds_flow.cli", "listen", f"127.0.0.1:{port}",
                                     "--alerts", os.devnull], stdin=subprocess.DEVNULL,
                                    stdout=subprocess.DEVNULL, stderr=log, env=env)
        try:
            while not _LISTENING.search(log_path.read_text()):
                if proc.poll() is not None:
                    raise RuntimeError(f"collector exited {proc.returncode}: {log_path.read_text()}")
                if time.monotonic() - started > timeout:
                    raise RuntimeError("collector did not start in time")
                time.sleep(0.005)
            listening = time.monotonic() - started
            stop.wait(2 * interval)                    # the refusal of the last datagram comes back late
        finally:
            stop.set()
            sender.join()
            proc.send_signal(signal.SIGTERM)
            proc.wait(60)
            tx.close()
    return {"listening_s": listening, "sent": sum(t >= started for t in sent),
            "refused_after_exec": sum(t >= started for t in refused),
            "refused_before_exec": sum(t < started for t in refused)}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.startup", description=__doc__.split("\n")[0])
    ap.add_argument("--runs", type=int, default=3, help="warm starts after the first (default 3)")
    ap.add_argument("--interval", type=float, default=0.2, help="seconds between probe datagrams")
    ap.add_argument("--json", dest="json_path", help="write the results here")
    args = ap.parse_args(argv)
    rows = []
    with tempfile.TemporaryDirectory() as cache:
        for i in range(args.runs + 1):
            r = measure_start(cache, args.interval)
            r["start"] = "first (empty cache)" if i == 0 else f"warm {i}"
            rows.append(r)
            print(f"{r['start']:<20} listening {r['listening_s']:6.2f} s  "
                  f"sent {r['sent']:4d}  refused {r['refused_after_exec']:3d}", flush=True)
    warm = rows[1:]
    summary = {"first_listening_s": rows[0]["listening_s"],
               "warm_listening_median_s": statistics.median(r["listening_s"] for r in warm) if warm else None,
               "refused_total": sum(r["refused_after_exec"] for r in rows), "runs": rows}
    print(json.dumps({k: v for k, v in summary.items() if k != "runs"}))
    if args.json_path:
        Path(args.json_path).write_text(json.dumps(summary, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
