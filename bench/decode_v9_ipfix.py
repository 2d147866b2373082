"""In-process NetFlow v9 / IPFIX decode + detect rate (no sockets): 512 datagrams of 30 records per
batch, 11 fields per record, one template (bench/synth.py); prints one JSON line per version.
Records per CPU second (the machine may be shared).

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

from .synth import flow_datagrams


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--reps", type=int, default=200)
    args = ap.parse_args()
    cfg = config.load()
    for version in (9, 10):
        ex = ExporterTable(clock=lambda: 0.0)
        out = FlowBatch(16384)
        det = Detector(cfg, url_patterns=cfg.http.url_substrings)
        export = flow_datagrams(version, 512, 30, imds_fraction=0.001)
        export.set_sequence(export.data, 0)
        tmpl = DatagramBatch.from_payloads([export.template], ts=1.0)
        wire.decode(tmpl, ex.lookup(tmpl.src_hi, tmpl.src_lo, tmpl.sport), ex, out)
        dg = DatagramBatch.from_payloads([row.tobytes() for row in export.data], ts=2.0)
        ids = ex.lookup(dg.src_hi, dg.src_lo, dg.sport)
        wire.decode(dg, ids, ex, out)
        det.run(out)
        started = time.process_time()
        for _ in range(args.reps):
            wire.decode(dg, ids, ex, out)
            hits = det.run(out)
        elapsed = time.process_time() - started
        print(json.dumps({"bench": "decode_v9_ipfix", "version": version, "records_per_datagram": 30,
                          "records_per_batch": out.n, "hits_per_batch": len(hits),
                          "records_per_cpu_s": round(args.reps * out.n / elapsed)}))


if __name__ == "__main__":
    main()
