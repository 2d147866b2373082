"""In-process NetFlow v9 / IPFIX decode + detect rate (no sockets): 512 datagrams of 30 records per
batch, 12 fields per record, one template; prints one JSON line per version.

    .venv/bin/python -m bench.decode_v9_ipfix [--reps 200]
"""
from __future__ import annotations

import argparse
import json
import time

from imds_flow import config, wire
from imds_flow.datagrams import DatagramBatch
from imds_flow.detect import Detector
from imds_flow.exporters import ExporterTable
from imds_flow.flows import FlowBatch
from tests.support.build import data_set, ipfix, record, template_set, v9

FIELDS = [(8, 4), (12, 4), (7, 2), (11, 2), (4, 1), (1, 8), (2, 8), (10, 4), (14, 4), (58, 2), (152, 8), (153, 8)]


def _record(i: int) -> bytes:
    dst = "169.254.169.254" if i % 1000 == 0 else "192.0.2.9"
    return record(FIELDS, [f"10.{(i >> 16) & 255}.{(i >> 8) & 255}.{i & 255}", dst, 1024 + i % 60000, 443, 6,
                           1500, 3, 1, 2, 10, 1_700_000_000_000, 1_700_000_001_000])


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--reps", type=int, default=200)
    args = ap.parse_args()
    cfg = config.load()
    for version, pkt in ((9, v9), (10, ipfix)):
        ex = ExporterTable(clock=lambda: 0.0)
        out = FlowBatch(16384)
        det = Detector(cfg, url_patterns=cfg.http.url_substrings)
        tmpl = DatagramBatch.from_payloads([pkt([template_set(version, {256: FIELDS})])], ts=1.0)
        wire.decode(tmpl, ex.lookup(tmpl.src_hi, tmpl.src_lo, tmpl.sport), ex, out)
        payloads = [pkt([data_set(256, [_record(d * 30 + k) for k in range(30)])], seq=d) for d in range(512)]
        dg = DatagramBatch.from_payloads(payloads, ts=2.0)
        ids = ex.lookup(dg.src_hi, dg.src_lo, dg.sport)
        wire.decode(dg, ids, ex, out)
        det.run(out)
        started = time.perf_counter()
        for _ in range(args.reps):
            wire.decode(dg, ids, ex, out)
            hits = det.run(out)
        elapsed = time.perf_counter() - started
        print(json.dumps({"bench": "decode_v9_ipfix", "version": version, "records_per_datagram": 30,
                          "records_per_batch": out.n, "hits_per_batch": len(hits),
                          "records_per_s": round(args.reps * out.n / elapsed)}))


if __name__ == "__main__":
    main()
