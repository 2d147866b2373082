"""Soak: half a minute of load over loopback (about 3 300 datagrams/s, some 100 000 datagrams, as
many as the earlier minute at half the rate sent) with 1 % malformed datagrams mixed in. No crash, no
alert lost, every counter exact. IMDS_FLOW_SOAK_SECONDS shortens or lengthens it (default 30, to keep
the whole suite under ten minutes; the five-second fold window and the two-second error log interval
still turn over several times)."""
import os
import re
import socket
import struct
import time

import numpy as np

from imds_flow.build import data_set, ipfix, record, template_set
from tests.support.collector import Collector
from imds_flow.build import v5

SECONDS = float(os.environ.get("IMDS_FLOW_SOAK_SECONDS", "30"))
IMDS = "169.254.169.254"
CONFIG = '''
[[endpoints]]
name = "aws-imds-ipv4"
address = "169.254.169.254"
[suppress]
source_subnets = ["10.99.0.0/16"]
[alerts]
fold_window_seconds = 5
[logging]
error_interval_seconds = 2
'''
FIELDS = [(8, 4), (12, 4), (7, 2), (11, 2), (4, 1), (1, 8), (2, 8)]


def malformed(rng, good: bytes) -> bytes:
    kind = rng.integers(6)
    if kind == 0:
        return rng.bytes(int(rng.integers(0, 300)))                       # noise
    if kind == 1:
        return good[: int(rng.integers(0, 24))]                            # cut inside the header
    if kind == 2:
        return good[:-1]                                                   # v5 count exceeds datagram
    if kind == 3:
        return b"\x00\x07" + good[2:]                                      # unknown version
    if kind == 4:
        return struct.pack("!HHIII", 10, 9999, 0, 0, 0) + rng.bytes(40)    # IPFIX length lies
    return struct.pack("!HHIII", 10, 36, 0, 0, 0) + struct.pack("!HH", 256, 200) + bytes(16)  # set overruns


def test_soak_with_malformed_datagrams(tmp_path):
    rng = np.random.default_rng(7)
    v5_exporter = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    ipfix_exporter = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    noisy = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    want = {"datagrams": 0, "records": 0, "rejected": 0, "hits": 0, "suppressed": 0}
    with Collector(tmp_path, CONFIG, args=["--metrics", "127.0.0.1:0"]) as c:
        dest = ("127.0.0.1", c.port)
        ipfix_exporter.sendto(ipfix([template_set(10, {256: FIELDS})], seq=0), dest)
        want["datagrams"] += 1
        v5_seq = ipfix_seq = 0
        end = time.monotonic() + SECONDS
        i = 0
        while time.monotonic() < end:
            for _ in range(200):                     # about 3 300 datagrams/s, 1 in 100 malformed
                i += 1
                local = "10.99.0.7" if i % 7 == 0 else f"10.{i % 200}.0.1"
                dst = IMDS if i % 3 == 0 else "192.0.2.1"
                if i % 2:
                    pkt = v5([(local, dst, 1024 + i % 60000, 80), ("10.0.0.1", "10.0.0.2", 1, 2)], seq=v5_seq)
                    v5_seq += 2
                    v5_exporter.sendto(pkt, dest)
                else:
                    rec = record(FIELDS, [local, dst, 1024 + i % 60000, 80, 6, 500, 5])
                    ipfix_exporter.sendto(ipfix([data_set(256, [rec, record(FIELDS, ["10.0.0.1", "10.0.0.2", 1, 2, 17, 1, 1])])],
                                                seq=ipfix_seq), dest)
                    ipfix_seq += 2
                want["datagrams"] += 1
                want["records"] += 2
                if dst == IMDS:
                    want["suppressed" if local.startswith("10.99.") else "hits"] += 1
                if i % 100 == 0:
                    noisy.sendto(malformed(rng, v5([("10.0.0.1", IMDS, 1, 80)] * 3)), dest)
                    want["datagrams"] += 1
                    want["rejected"] += 1
            time.sleep(0.05)
        c.wait_total("imds_flow_datagrams_total", want["datagrams"])   # everything sent has been read
        alerts = c.stop()
    log = c.log
    assert "Traceback" not in log
    m = re.search(r"stopped: (\d+) exporters, (\d+) datagrams, (\d+) records, (\d+) rejected datagrams, "
                  r"(\d+) records lost upstream.*?, (\d+) alerts, (\d+) suppressed", log)
    exporters, datagrams, records, rejected, seq_lost, alerted, suppressed = map(int, m.groups())
    assert (exporters, datagrams, records, rejected) == (3, want["datagrams"], want["records"], want["rejected"])
    assert seq_lost == 0
    assert suppressed == want["suppressed"]
    assert sum(a["count"] for a in alerts) == want["hits"]            # folded, yet not one record lost
    assert len(alerts) == alerted < want["hits"]
    assert want["rejected"] >= SECONDS * 20
