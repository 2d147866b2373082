"""detect.Detector: what each endpoint index means (address endpoints, then URL substrings, then header
names), hits of real decoded records in row order with their direction, suppression counted per
exporter, output buffers that grow past their first size; Hits.subset."""
import numpy as np

from imds_flow import build, config, wire
from imds_flow.datagrams import DatagramBatch
from imds_flow.detect import REQUEST, RESPONSE, Detector
from imds_flow.exporters import ExporterTable
from imds_flow.flows import FlowBatch

CONFIG = '''
[[endpoints]]
name = "aws-imds"
address = "169.254.169.254"
[[endpoints]]
name = "gcp-imds-v6"
address = "fd20:ce::254"
[suppress]
source_subnets = ["10.66.0.0/16"]
[http]
header_names = ["Metadata-Flavor"]
'''
IMDS = "169.254.169.254"


def decoded(records: list[tuple], sources=(("192.0.2.1", 2055), ("192.0.2.2", 2055))) -> FlowBatch:
    """The records as NetFlow v5 datagrams of 30 from alternating exporters, decoded."""
    payloads = [build.v5(records[k:k + 30]) for k in range(0, len(records), 30)]
    dg = DatagramBatch.from_payloads(payloads, src=[sources[i % 2] for i in range(len(payloads))])
    table = ExporterTable(clock=lambda: 0.0)
    out = FlowBatch(64)
    wire.decode(dg, table.lookup(dg.src_hi, dg.src_lo, dg.sport), table, out)
    assert out.n == len(records)
    return out


def test_endpoint_indices_name_addresses_then_urls_then_headers():
    det = Detector(config.parse(CONFIG), url_patterns=("/latest/",))
    assert det.names == ("aws-imds", "gcp-imds-v6", "url:/latest/", "header:metadata-flavor")
    assert det.signals == ("address", "address", "url", "header")
    assert det.header_names == ("metadata-flavor",) and (det.n_endpoints, det.n_urls) == (2, 1)


def test_hits_in_row_order_with_direction_and_suppression_per_exporter():
    records, want = [], []
    for i in range(5000):                               # more rows than the first output buffers hold
        if i % 7 == 0:
            records.append(("10.1.0.%d" % (i % 250 + 1), IMDS, 40000, 80))
            want.append((i, 0, REQUEST))
        elif i % 11 == 0:
            records.append((IMDS, "10.1.0.9", 80, 40000))
            want.append((i, 0, RESPONSE))
        elif i % 13 == 0:
            records.append(("10.66.1.1", IMDS, 40000, 80))      # suppressed source
        else:
            records.append(("10.1.0.1", "10.1.0.2", 40000, 443))
    batch = decoded(records)
    det = Detector(config.parse(CONFIG))
    hits = det.run(batch)
    assert list(zip(hits.idx.tolist(), hits.endpoint.tolist(), hits.direction.tolist())) == want
    suppressed = [i for i in range(5000) if i % 13 == 0 and i % 7 and i % 11]
    assert hits.suppressed == len(suppressed) and len(hits) == len(want)
    per_exporter, alerted = np.zeros((2, 2), np.int64)[:, 0], np.zeros((2, 2), np.int64)[:, 0]
    det.run(batch, per_exporter, alerted)
    exporter = batch.view("exporter")
    assert per_exporter.tolist() == [int((exporter[suppressed] == e).sum()) for e in (0, 1)]
    assert alerted.tolist() == [int((exporter[[i for i, _, _ in want]] == e).sum()) for e in (0, 1)]
    assert hits.signals == det.signals


def test_no_rows_no_hits_and_subset_keeps_meanings():
    det = Detector(config.parse(CONFIG))
    assert len(det.run(FlowBatch(4))) == 0
    hits = det.run(decoded([("10.1.0.1", IMDS, 1, 80), ("10.1.0.1", "10.1.0.2", 1, 80), (IMDS, "10.1.0.1", 80, 1)]))
    sub = hits.subset(np.array([1]))
    assert (sub.idx.tolist(), sub.direction.tolist(), sub.suppressed) == ([2], [RESPONSE], 0)
    assert sub.signals == hits.signals and sub.header_names == hits.header_names
