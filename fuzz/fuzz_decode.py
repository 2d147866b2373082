#!/usr/bin/env python3
"""Coverage-guided fuzzing of the decoders and the whole pipeline (atheris / libFuzzer).

    python fuzz/fuzz_decode.py -max_total_time=60            # seeds: the vendor corpus
    python fuzz/fuzz_decode.py -max_total_time=600 -jobs=4 -workers=4
    python fuzz/fuzz_decode.py fuzz/artifacts/crash-...      # replay one input

One input is one UDP payload. It is decoded with wire.decode_one against exporter state that holds
every vendor template (DecodeError is fine, anything else is a finding), then sent through a
long-lived Pipeline twice in one batch next to a canary packet from another exporter, which must
still decode to exactly its records (state not poisoned). Numba kernels run with bounds checking
(NUMBA_BOUNDSCHECK=1, own cache in fuzz/.numba-cache), so a read past an array is an IndexError
here rather than a silent wrong value. Without atheris installed (pip install -e '.[fuzz]') the
same checks run on random structure-aware mutants of the corpus for -max_total_time seconds.
New corpus entries go to fuzz/corpus/, crashes to fuzz/artifacts/.
"""
from __future__ import annotations

import os
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
if os.environ.get("IMDS_FLOW_FUZZ_BOUNDSCHECK", "1") == "1":
    os.environ.setdefault("NUMBA_BOUNDSCHECK", "1")
    os.environ.setdefault("NUMBA_CACHE_DIR", str(HERE / ".numba-cache"))
sys.path.insert(0, str(ROOT))

import hashlib  # noqa: E402
import logging  # noqa: E402
import random  # noqa: E402
import time  # noqa: E402
import types  # noqa: E402

try:
    import atheris
except ImportError:                                   # the fallback below needs none of it
    atheris = None

import numpy as np  # noqa: E402

from imds_flow import app, config, exporters, wire  # noqa: E402
from imds_flow.datagrams import DatagramBatch  # noqa: E402
from imds_flow.wire import pending, plans, resolve, scopes, templates  # noqa: E402
from imds_flow import build  # noqa: E402
from tests.support import mutate  # noqa: E402

FUZZ_SRC = ("198.51.100.7", 2055)
CANARY_SRC = ("203.0.113.9", 4739)
RESET_EVERY = 20_000                                  # a fresh pipeline now and then: runs stay reproducible-ish


def _instrument() -> None:
    """Coverage for the Python side (template parsing, caches, pending, batch wiring); numba
    kernels are left alone (their bytecode must stay compilable)."""
    for mod in (wire, templates, plans, scopes, pending, resolve, exporters, app):
        for obj in list(vars(mod).values()):
            if isinstance(obj, types.FunctionType) and obj.__module__ == mod.__name__:
                atheris.instrument_func(obj)
            elif isinstance(obj, type) and obj.__module__ == mod.__name__:
                for attr in vars(obj).values():
                    if isinstance(attr, types.FunctionType):
                        atheris.instrument_func(attr)


def _canary() -> tuple[bytes, list[tuple[str, str, int]]]:
    fields = [(8, 4), (12, 4), (7, 2), (11, 2), (4, 1), (1, 8), (2, 8)]
    flows = [("10.9.0.1", "169.254.169.254", 40000), ("10.9.0.2", "10.9.0.3", 443), ("10.9.0.4", "10.9.0.5", 53)]
    recs = [build.record(fields, [s, d, p, 80, 6, 1000, 10]) for s, d, p in flows]
    pkt = build.ipfix([build.template_set(10, {300: fields}), build.data_set(300, recs)], domain=7)
    return pkt, flows


CANARY, CANARY_FLOWS = _canary()


class Target:
    """Long-lived state every input goes through; see the module docstring."""

    def __init__(self):
        self.t = 1_700_000_000.0
        self.one = wire._OneExporter()
        self.pipeline = app.Pipeline(config.load(), app._NullSink(), clock=lambda: self.t, compact=False)
        for payloads in mutate.vendor_payloads().values():
            for p in payloads:
                self.decode_one(p)
                self.pipeline.process(DatagramBatch.from_payloads([p], src=FUZZ_SRC, ts=self.t))
        self.runs = 0

    def decode_one(self, data: bytes) -> None:
        try:
            wire.decode_one(data, self.one)
        except wire.DecodeError:
            pass

    def __call__(self, data: bytes) -> None:
        self.runs += 1
        self.t += 0.01
        self.decode_one(data)
        p = self.pipeline
        p.process(DatagramBatch.from_payloads([data, CANARY, data], src=[FUZZ_SRC, CANARY_SRC, FUZZ_SRC], ts=self.t))
        canary = int(p.exporters.lookup(*_hilo_port(CANARY_SRC))[0])
        cols = p.batch.cols
        rows = np.flatnonzero(cols.exporter[: p.batch.n] == canary)
        got = [(int(cols.src_lo[i]) & 0xFFFFFFFF, int(cols.dst_lo[i]) & 0xFFFFFFFF, int(cols.sport[i])) for i in rows]
        want = [(_v4(s), _v4(d), port) for s, d, port in CANARY_FLOWS]
        if got != want:
            raise AssertionError(f"canary decoded as {got}, want {want}: state poisoned")
        if self.runs % 1000 == 0:
            p.tick(self.t)


def _v4(a: str) -> int:
    return int.from_bytes(bytes(int(x) for x in a.split(".")), "big")


def _hilo_port(src):
    dg = DatagramBatch.from_payloads([b""], src=src)
    return dg.src_hi, dg.src_lo, dg.sport


_target: Target | None = None


def test_one_input(data: bytes) -> None:
    global _target
    if _target is None or _target.runs >= RESET_EVERY:
        _target = Target()
    _target(data)


def _seed_dir() -> Path:
    """fuzz/corpus, filled with every vendor payload the first time."""
    corpus = HERE / "corpus"
    corpus.mkdir(exist_ok=True)
    if not any(corpus.iterdir()):
        for payloads in mutate.vendor_payloads().values():
            for p in payloads:
                (corpus / hashlib.sha1(p).hexdigest()).write_bytes(p)
    return corpus


def _fallback(argv: list[str]) -> None:
    """Random structure-aware mutants of the corpus for -max_total_time seconds (no atheris)."""
    limit = next((float(a.split("=", 1)[1]) for a in argv if a.startswith("-max_total_time=")), 60.0)
    seed = next((int(a.split("=", 1)[1]) for a in argv if a.startswith("-seed=")), 0)
    rng = random.Random(seed)
    seeds = [p for ps in mutate.vendor_payloads().values() for p in ps]
    end = time.monotonic() + limit
    runs = 0
    while time.monotonic() < end:
        for m in mutate.mutants(rng.choice(seeds), rng, flips=4, cuts=4):
            try:
                test_one_input(m)
            except Exception:
                path = HERE / "artifacts" / f"crash-{hashlib.sha1(m).hexdigest()}"
                path.parent.mkdir(exist_ok=True)
                path.write_bytes(m)
                print(f"crash after {runs} runs; input saved to {path}", file=sys.stderr)
                raise
            runs += 1
    print(f"fallback fuzzing: {runs} runs in {limit:.0f} s, no crash (seed {seed})")


def main() -> None:
    argv = list(sys.argv)
    if atheris is None:
        print("atheris is not installed (pip install -e '.[fuzz]'): random-mutation fallback", file=sys.stderr)
        logging.disable(logging.CRITICAL)
        _fallback(argv)
        return
    if not any(not a.startswith("-") for a in argv[1:]):
        argv.append(str(_seed_dir()))
    if not any(a.startswith("-rss_limit_mb=") for a in argv):
        argv.insert(1, "-rss_limit_mb=8192")          # compiling the kernels alone takes ~3 GB
    if not any(a.startswith("-artifact_prefix=") for a in argv):
        (HERE / "artifacts").mkdir(exist_ok=True)
        argv.insert(1, f"-artifact_prefix={HERE / 'artifacts'}/")
    logging.disable(logging.CRITICAL)                 # rate-limited decode warnings: noise here
    _instrument()
    atheris.Setup(argv, test_one_input)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
