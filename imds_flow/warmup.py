"""Every kernel loaded (or, on the first start after an install, compiled) before the first datagram.

Rules: the kernels run once on scratch data of the types the live pipeline passes, touching no
counters. When the on-disk cache holds no v9 / IPFIX decoder yet (a first start) and the machine
has more than one core, that decoder, the largest kernel, the one-call kernel that holds it and
the poll loop that holds them all (polls.py) compile in a child process into the same cache while
this process compiles the others, and are then loaded from the cache: the first start takes the
longer of the two instead of their sum. Should the child fail, this process compiles them itself;
nothing depends on the child but time.
"""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numba
import numpy as np

from . import build, kernels, polls, receive, wire
from .alerts import Folder, hit_alerts
from .datagrams import DatagramBatch
from .detect import Hits
from .exporters import ExporterTable
from .flows import FlowBatch
from .keymap import KeyMap

__all__ = ["warm_up", "compile_decoder", "SFLOW"]

_V5 = build.v5([("10.0.0.1", "169.254.169.254", 40000, 80)])
_JUNK = b"\x00"
_CHILD_SECONDS = 300.0        # a child that takes longer is stuck: stop waiting for it
# IPFIX with a template of fixed and variable fields (an HTTP target) and one data record
_FIELDS = [(8, 4), (12, 4), (7, 2), (11, 2), (4, 1), (1, 8), (2, 8), (461, build.VAR)]
_RECORD = build.data_set(256, [build.record(_FIELDS, ["10.0.0.1", "169.254.169.254", 80, 80, 6, 0, 0, b"/"])], pad_to=1)
_IPFIX = build.ipfix([build.template_set(10, {256: _FIELDS}), _RECORD])
# the same data set in a datagram before its template: it waits in wire.pending until _IPFIX defines it
_IPFIX_EARLY = build.ipfix([_RECORD])
# sFlow taking every branch worth compiling: IPv4 agent, a flow sample with an extended switch record
# and an Ethernet / 802.1Q / IPv4 / TCP raw header carrying an HTTP request with a header field
SFLOW = build.sflow([build.packet_sample(1, build.frame(
    "10.0.0.1", "169.254.169.254", 40000, 80,
    b"GET /latest/meta-data/ HTTP/1.1\r\nHost: x\r\nX-aws-ec2-metadata-token: t\r\n\r\n", vlan=10))], agent="10.0.0.1")


def warm_up(pipeline) -> None:
    """Load or compile every kernel `pipeline` (app.Pipeline) and the receive path run."""
    helper = _start_helper() if _cold() and (os.cpu_count() or 1) > 1 else None
    try:                                     # everything but the v9 / IPFIX decoder, while the child works
        batch, scratch = _decode(pipeline, [_V5, _JUNK, SFLOW])
        pipeline.detector.run(batch, scratch.column("suppressed"))
        for payload in (_V5, SFLOW):         # the one-call kernels (scratch knows the sFlow agent now), with
            pipeline.onecall.run(DatagramBatch.from_payloads([payload], ts=0.0), scratch, FlowBatch(64),
                                 pipeline.detector, Folder(60.0, lambda alert: None))   # a folder of their own
        folder = Folder(60.0, lambda alert: None, packer=pipeline.folder.packer, emit_packed=lambda alert, ts: None)
        kept = np.flatnonzero(batch.view("version") > 0)[:1].repeat(2)
        names = pipeline.detector.names + ("x",)
        twice = Hits(kept, np.zeros(len(kept), np.int32), np.zeros(len(kept), np.uint8), 0)
        for _ in range(2):                   # the second time, the hits merge into the pending alert
            folder.add_hits(batch, twice, names, scratch)
        folder.add(hit_alerts(batch, Hits(kept[:1], np.zeros(1, np.int32), np.ones(1, np.uint8), 0),
                              names, scratch))   # a lone hit: Folder.add's key lookup
        made = Folder(60.0, lambda alert: None, packer=pipeline.folder.packer, emit_packed=lambda alert, ts: None,
                      describe=lambda: (names, scratch, (), ()))
        for _ in range(2):                   # the fold kernel makes the pending alert, and it leaves packed
            made.add_hits(batch, twice, names, scratch)
        made.close()
        # a fold key table grows, or is rebuilt (Folder.tick)
        kernels.fold_index(np.zeros((2, 6), np.uint64), np.arange(2), np.full(4, -1, np.int64))
        grown = KeyMap(capacity=2)           # a KeyMap is added to and grows (key_insert_many, key_rehash)
        for k in range(3):
            grown.insert(k, 0, 0, k)
        grown.arrays()
        receive.warm_up()
        if helper is not None:
            try:
                helper.wait(timeout=_CHILD_SECONDS)
            except subprocess.TimeoutExpired:    # killed below; the decoder then compiles here
                pass
        batch, scratch = _decode(pipeline, [_V5, _JUNK, _IPFIX, SFLOW])
        _decode(pipeline, [_IPFIX_EARLY], [_IPFIX])  # data a batch before its template waits in wire.pending
        _ipfix_one_call(pipeline, batch, scratch)
        polls.warm_up(pipeline)              # the poll loop, which holds the one-call kernels
    finally:
        if helper is not None and helper.poll() is None:
            helper.kill()
            helper.wait()


def _decode(pipeline, *batches: list[bytes]) -> tuple[FlowBatch, ExporterTable]:
    """Scratch batches through the decoders in turn, one exporter table for them all, each with and
    without an endpoint table (the two types Pipeline.process passes)."""
    scratch = ExporterTable(pipeline.clock)
    batch = FlowBatch(64)
    for payloads in batches:
        dg = DatagramBatch.from_payloads(payloads, ts=0.0)
        ids = scratch.lookup(dg.src_hi, dg.src_lo, dg.sport)
        for keep in (None, pipeline.detector.endpoints):
            status = wire.decode(dg, ids, scratch, batch, keep=keep, records=scratch.records_column())
    scratch.count(ids, status, None, 0.0)    # the per-exporter counting kernel, as Pipeline.process does
    return batch, scratch


def _cold() -> bool:
    """No compiled v9 / IPFIX decoder in the cache yet."""
    root = Path(numba.config.CACHE_DIR)
    return not any(root.rglob("v9ipfix.decode_sets-*.nbc"))


def _start_helper() -> subprocess.Popen | None:
    """The child, importing this very package: `python -m` would import whatever imds_flow the
    working directory holds first (a checkout beside an installed copy), and numba keys its cache
    by source path, so the collector would not find what the child compiled."""
    root = str(Path(__file__).parent.parent)
    code = f"import sys; sys.path.insert(0, {root!r}); from imds_flow.warmup import compile_decoder; compile_decoder()"
    try:
        return subprocess.Popen([sys.executable, "-c", code], stdin=subprocess.DEVNULL,
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    except OSError:
        return None


def compile_decoder() -> None:
    """The child's work: the v9 / IPFIX decoder on its own, in the types the pipeline passes."""
    from . import config
    from .app import Pipeline, _NullSink
    pipeline = Pipeline(config.load(None), _NullSink())
    _ipfix_one_call(pipeline, *_decode(pipeline, [_IPFIX]))
    polls.warm_up(pipeline)


def _ipfix_one_call(pipeline, batch: FlowBatch, scratch: ExporterTable) -> None:
    """The one-call v9 / IPFIX kernel (onecall.ipfix_batch, which holds the decoder) on data whose
    template `scratch` knows (from _decode of _IPFIX)."""
    pipeline.onecall.run(DatagramBatch.from_payloads([_IPFIX_EARLY], ts=0.0), scratch, batch, pipeline.detector,
                         Folder(60.0, lambda alert: None))
