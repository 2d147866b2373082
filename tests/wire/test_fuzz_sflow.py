"""The sFlow decoder and the packet kernel are total (STYLE 7): any bytes give rows or a counted
status, never another exception; every row's request-target lies inside its own datagram, and no
row keeps a host (the Host header is a header value); mutated corpus datagrams leave the state able
to decode a valid datagram exactly as a fresh collector does.

Each datagram is decoded from a buffer of exactly its own length, so a run with NUMBA_BOUNDSCHECK=1
(and a fresh NUMBA_CACHE_DIR) turns any out-of-bounds read into an IndexError here.
IMDS_FLOW_FUZZ_SCALE=N multiplies example counts and mutants.
"""
from __future__ import annotations

import os
import random
import struct

import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from imds_flow import app, config, warmup, wire
from imds_flow.datagrams import DatagramBatch
from imds_flow.exporters import ExporterTable
from imds_flow.flows import HTTP, FlowBatch
from imds_flow.wire import DecodeError, REASONS
from imds_flow.wire.packet import ETHERNET, IPV4, IPV6, parse_one
from tests.support import corpus

SCALE = int(os.environ.get("IMDS_FLOW_FUZZ_SCALE", "1"))
SETTINGS = settings(max_examples=200 * SCALE, deadline=None, derandomize=SCALE == 1,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
ROOT = corpus.require(corpus.SFLOW)
PAYLOADS = {str(p.relative_to(ROOT)): p.read_bytes() for p in sorted(ROOT.rglob("*.bin"))}
SRC = ("192.0.2.1", 6343)
T0 = 1_700_000_000.0


def decode_total(data: bytes, table: ExporterTable | None = None) -> tuple[int, FlowBatch]:
    table = table if table is not None else ExporterTable(clock=lambda: T0)
    dg = DatagramBatch.from_payloads([data], src=SRC, ts=T0)
    out = FlowBatch(4)
    status = wire.decode(dg, table.lookup(dg.src_hi, dg.src_lo, dg.sport), table, out)
    assert 0 <= status[0] < len(REASONS)
    c = out.cols
    http = np.flatnonzero(out.view("row_flags") & HTTP)
    for i in http.tolist():
        assert 0 <= c.url_off[i] and c.url_off[i] + c.url_len[i] <= len(data) and c.url_len[i] > 0
        assert 0 <= c.http_method[i] < 9
        assert c.host_len[i] == 0                  # a sampled Host header's value is never kept
    assert status[0] == 0 or out.n == 0 or data[:2] != b"\0\0"      # a rejected sFlow datagram leaves no rows
    return int(status[0]), out


def _lengths(p: bytes) -> list[bytes]:
    """Every aligned 32-bit word set to values that break length arithmetic."""
    out = []
    for off in range(4, len(p) - 3, 4):
        v = struct.unpack_from(">I", p, off)[0]
        for new in (0, 1, 3, 0x7FFFFFFF, 0xFFFFFFFF, v + 4, max(v - 4, 0)):
            out.append(p[:off] + struct.pack(">I", new & 0xFFFFFFFF) + p[off + 4:])
    return out


def mutants(p: bytes, rng: random.Random) -> list[bytes]:
    cuts = list(range(len(p))) if SCALE > 1 else sorted(rng.sample(range(len(p)), min(len(p), 24)))
    out = [p[:k] for k in cuts]
    out += _lengths(p) if SCALE > 1 else rng.sample(_lengths(p), min(60, len(_lengths(p))))
    for _ in range(16 * SCALE):
        b = bytearray(p)
        for _ in range(rng.randint(1, 8)):
            i = rng.randrange(len(b))
            b[i] ^= 1 << rng.randrange(8)
        out.append(bytes(b))
    return out


@SETTINGS
@given(st.binary(max_size=600))
def test_any_bytes_after_the_sflow_version(tail):
    status, _ = decode_total(b"\0\0\0\x05" + tail)
    try:
        wire.decode_one(b"\0\0\0\x05" + tail)
    except DecodeError as e:
        assert e.reason in REASONS and status != 0


@SETTINGS
@given(st.binary(max_size=300))
def test_any_bytes(data):
    decode_total(data)


@SETTINGS
@given(st.binary(max_size=200), st.sampled_from([ETHERNET, IPV4, IPV6]))
def test_packet_kernel_any_bytes(data, kind):
    got = parse_one(data, kind, ("/latest/meta-data",), ("x-aws-ec2-metadata-token",))
    assert got is None or isinstance(got, dict)


def test_corpus_mutants():
    rng = random.Random(10)
    n = 0
    for name, p in PAYLOADS.items():
        if len(p) < 8:
            continue
        for m in mutants(p, rng):
            decode_total(m)
            n += 1
    assert n > 2000


def test_mutants_leave_state_clean():
    """After every mutant of every datagram through one Pipeline (same source), a valid datagram from
    a fresh agent decodes and alerts exactly as in a fresh Pipeline."""
    def fresh(dg_payload):
        p = app.Pipeline(config.load(), app._NullSink(), clock=lambda: T0)
        p.process(DatagramBatch.from_payloads([dg_payload], src=SRC, ts=T0))
        return p

    ref = fresh(warmup.SFLOW)
    want = {name: ref.batch.view(name).copy() for name in ("src_lo", "dst_lo", "sport", "dport", "url", "headers")}
    assert ref.batch.n == 1 and ref.alerts_written == 1
    p = app.Pipeline(config.load(), app._NullSink(), clock=lambda: T0)
    rng = random.Random(11)
    batch = []
    for name, payload in PAYLOADS.items():
        batch += mutants(payload, rng)[:40]
    for k in range(0, len(batch), 64):
        p.process(DatagramBatch.from_payloads(batch[k:k + 64], src=SRC, ts=T0))
    before = p.alerts_written
    p.process(DatagramBatch.from_payloads([warmup.SFLOW], src=SRC, ts=T0 + 1))
    assert p.batch.n == 1 and p.alerts_written == before + 1
    for name, v in want.items():
        assert (p.batch.view(name) == v).all(), name
