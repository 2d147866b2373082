"""sFlow v5 in-process benchmark: flow samples per second through Pipeline.process (decode of the
datagram, the packet kernel on every sampled header, detection, alerts), one core, median of runs.

    python -m bench.sflow [--samples 8] [--header-bytes 128] [--http-fraction 0.3] [--repeats 5]

Datagrams are what a switch sends: an IPv4 agent, `samples` compact flow samples, each with an
extended switch record and a raw Ethernet header of at most `header_bytes` bytes (802.1Q-tagged
IPv4/TCP; `http_fraction` of them carry an HTTP request line with headers, the others TLS bytes);
`imds_fraction` of the samples go to 169.254.169.254. Output: one JSON object on stdout.
"""
from __future__ import annotations

import argparse
import json
import statistics
import struct
import sys
import time

import numpy as np

__all__ = ["frame", "flow_sample", "datagram", "sflow_datagrams", "inprocess", "main"]

_HTTP = (b"GET /api/v2/items?page=3 HTTP/1.1\r\nHost: shop.example.com\r\nUser-Agent: curl/8.5.0\r\n"
         b"Accept: */*\r\nX-Request-Id: 5f0c\r\n\r\n")


def frame(src: int, dst: int, sport: int, dport: int, payload: bytes, vlan: int | None) -> bytes:
    """An Ethernet (802.1Q-tagged unless vlan is None) IPv4/TCP frame; addresses as integers."""
    tcp = struct.pack(">HHIIBBHHH", sport, dport, 1, 1, 0x50, 0x18, 512, 0, 0)
    ip = struct.pack(">BBHHHBBHII", 0x45, 0, 40 + len(payload), 0, 0x4000, 64, 6, 0, src, dst)
    tag = b"\x81\x00" + struct.pack(">H", vlan) if vlan is not None else b""
    return b"\x02\x00\x00\x00\x00\x0b\x02\x00\x00\x00\x00\x0a" + tag + b"\x08\x00" + ip + tcp + payload


def flow_sample(seq: int, frame: bytes, header_bytes: int = 128, rate: int = 1000, source: int = 7) -> bytes:
    """A compact flow sample: extended switch record (VLAN 10) and the frame's first header_bytes."""
    h = frame[:header_bytes]
    raw = struct.pack(">IIII", 1, len(frame) + 4, 4, len(h)) + h + bytes(-len(h) % 4)
    recs = struct.pack(">IIIIII", 1001, 16, 10, 0, 10, 0) + struct.pack(">II", 1, len(raw)) + raw
    body = struct.pack(">IIIIIIII", seq, source, rate, (seq * rate) & 0xFFFFFFFF, 0, 7, 9, 2) + recs
    return struct.pack(">II", 1, len(body)) + body


def datagram(samples: list[bytes], seq: int, agent: int = 0xC0000207, sub_agent: int = 0) -> bytes:
    """An sFlow v5 datagram from an IPv4 agent holding `samples`."""
    return struct.pack(">IIIIIII", 5, 1, agent, sub_agent, seq, 1000, len(samples)) + b"".join(samples)


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
            body.append(flow_sample(seq, frame(src, dst, int(rng.integers(1024, 65535)), 80 if http else 443, payload,
                                               int(rng.integers(1, 4095))), header_bytes, rate))
            seq += 1
        out.append(datagram(body, d + 1))
    return out


def inprocess(samples: int = 8, batch: int = 512, seconds: float = 1.0, repeats: int = 5,
              header_bytes: int = 128, http_fraction: float = 0.3) -> dict:
    from imds_flow import config
    from imds_flow.app import Pipeline, _NullSink
    from imds_flow.datagrams import DatagramBatch

    payloads = sflow_datagrams(batch, samples, header_bytes, http_fraction)
    dg = DatagramBatch.from_payloads(payloads, src=("192.0.2.7", 6343), ts=time.time())
    pipe = Pipeline(config.load(None), _NullSink())
    pipe.process(dg)                                   # JIT warm-up, exporter rows registered
    rates = []
    for _ in range(repeats):
        n = 0
        t0 = time.perf_counter()
        while time.perf_counter() - t0 < seconds:
            pipe.process(dg)
            n += batch * samples
        rates.append(n / (time.perf_counter() - t0))
    stats = pipe.stats()
    pipe.close()
    if stats["records"] == 0:
        raise RuntimeError("in-process sFlow bench decoded nothing")
    return {"format": "sflow", "samples_per_datagram": samples, "header_bytes": header_bytes,
            "http_fraction": http_fraction, "batch_datagrams": batch, "datagram_bytes": len(payloads[0]),
            "median_samples_per_s": statistics.median(rates), "runs": rates}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.sflow", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--samples", type=int, default=8, help="flow samples per datagram")
    p.add_argument("--header-bytes", type=int, default=128, help="sampled header length")
    p.add_argument("--http-fraction", type=float, default=0.3, help="share of samples with an HTTP request")
    p.add_argument("--batch", type=int, default=512, help="datagrams per Pipeline.process call")
    p.add_argument("--seconds", type=float, default=1.0)
    p.add_argument("--repeats", type=int, default=5)
    a = p.parse_args(argv)
    r = inprocess(a.samples, a.batch, a.seconds, a.repeats, a.header_bytes, a.http_fraction)
    print(f"in-process sFlow decode+detect+alerts, one core: {r['median_samples_per_s'] / 1e6:.1f} M samples/s "
          f"(median of {a.repeats})", file=sys.stderr)
    print(json.dumps(r))
    return 0


if __name__ == "__main__":
    sys.exit(main())
