"""The compiled polls (polls.py) against Receiver.drain into Pipeline.process, over a real socket: the
same random batches as test_onecall (v5, v9 / IPFIX and sFlow from known and new exporters, agents
and scopes, hits, template sets resent, formats mixed, bytes overwritten at random) sent over
loopback from one socket per exporter and read either way leave the same alerts byte for byte, the
same counters, sequence and template state, snapshot and summary; and most batches never reach
Python in the compiled loop."""
from __future__ import annotations

import socket
import time

import pytest

from imds_flow import app, build, config, polls, receive
from imds_flow.sinks import Sinks
from imds_flow.sinks.stream import open_sink
from tests.pipeline.test_onecall import CFG, EXPORTERS, T0, _batches, outcome
from tests.support.alerts import AlertList

pytestmark = pytest.mark.skipif(not receive.HAVE_RECVMMSG or not receive._LITTLE,
                                reason="recvmmsg on little-endian Linux")


@pytest.fixture(scope="module")
def senders():
    """One socket per exporter, its own port, the same for both paths."""
    out = {}
    for src in EXPORTERS:
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        s.bind(("127.0.0.1", 0))
        out[src] = s
    yield out
    for s in out.values():
        s.close()


def _live(senders: dict, seed: int, compiled: bool, mangle: bool = False) -> tuple[dict, dict]:
    now = [T0]
    p = app.Pipeline(config.parse(CFG), AlertList(), clock=lambda: now[0])
    rx = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)      # no kernel timestamps: arrival = the clock
    rx.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)
    rx.bind(("127.0.0.1", 0))
    rx.setblocking(False)
    r = receive.Receiver(rx, 64, 65536, clock=lambda: now[0])
    seen = {"batches": 0, "python": 0}                          # batches sent; batches Python saw
    touched = [False]
    process, taken = p.process, p.taken
    p.process = lambda dg, truncated=None: (touched.__setitem__(0, True), process(dg, truncated))
    p.taken = lambda dg, one: (touched.__setitem__(0, True), taken(dg, one))
    loop = polls.Polls(p, 0.0, 64)
    try:
        for k, (payloads, src, _) in enumerate(_batches(seed, mangle)):
            now[0] = T0 + k * 0.25
            for payload, s in zip(payloads, src):
                senders[s].sendto(payload, rx.getsockname())
            seen["batches"] += 1
            touched[0] = False
            if compiled:
                got, code = loop.run(r, 1, 1)
                assert code in (polls.DONE, polls.EMPTY)
            else:
                got = r.drain(p.process)
            assert got == len(payloads)
            seen["python"] += touched[0]
        return outcome(p), seen
    finally:
        rx.close()


@pytest.mark.parametrize("seed", range(12))
def test_compiled_polls_leave_what_drain_and_process_leave(senders, seed):
    compiled, seen = _live(senders, seed, compiled=True)
    python, _ = _live(senders, seed, compiled=False)
    assert compiled == python
    assert seen["python"] <= seen["batches"]


@pytest.mark.parametrize("seed", range(6))
def test_bytes_overwritten_at_random_leave_the_same_too(senders, seed):
    compiled, _ = _live(senders, seed, compiled=True, mangle=True)
    python, _ = _live(senders, seed, compiled=False, mangle=True)
    assert compiled == python


def test_batches_without_work_for_python_stay_in_the_kernel(senders):
    """v5, IPFIX with its template set resent in every datagram, and sFlow, from exporters already
    known: after the first batch of each (a new exporter: Python registers it) and the first alert
    (it leaves through Python), batches are taken in the kernel to the end, the records counted and
    the later hits folded into the open window; the resent templates' received time reaches the
    templates' dict when the call returns."""
    now = [T0]
    p = app.Pipeline(config.parse(CFG), AlertList(), clock=lambda: now[0])
    rx = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    rx.bind(("127.0.0.1", 0))
    rx.setblocking(False)
    r = receive.Receiver(rx, 64, 65536, clock=lambda: now[0])
    touched = []
    process, taken = p.process, p.taken
    p.process = lambda dg, truncated=None: (touched.append(now[0]), process(dg, truncated))
    p.taken = lambda dg, one: (touched.append(now[0]), taken(dg, one))
    loop = polls.Polls(p, 0.0, 64)
    fields = [(8, 4), (12, 4), (7, 2), (11, 2), (4, 1)]
    hit = ("10.1.2.3", "169.254.169.254", 4000, 80)
    quiet = ("10.1.2.3", "192.0.2.99", 4000, 443)
    streams = [lambda k: build.v5([hit if k % 5 == 0 else quiet] * 3, seq=3 * k),
               lambda k: build.ipfix([build.template_set(10, {256: fields}),
                                      build.data_set(256, [build.record(fields, [*(quiet, hit)[k % 5 == 0], 6])])],
                                     seq=k),
               lambda k: build.sflow([build.packet_sample(k + 1, build.frame(*(hit if k % 5 == 0 else quiet), b""))],
                                     k + 1, agent="192.0.2.7")]
    try:
        for k in range(20):
            now[0] = T0 + k * 0.1
            for stream, src in zip(streams, EXPORTERS):
                senders[src].sendto(stream(k), rx.getsockname())
            assert loop.run(r, 1, 1)[0] == 3
        # so far a batch held the three formats (new exporters first, then formats mixed: Python
        # took every one); from here on, a batch is one exporter's datagram
        touched.clear()
        for k in range(20, 40):
            now[0] = T0 + k * 0.1
            for stream, src in zip(streams, EXPORTERS):
                senders[src].sendto(stream(k), rx.getsockname())
                assert loop.run(r, 1, 1)[0] == 1
        assert touched == []
        key = max(p.exporters.templates.templates)
        assert p.exporters.templates.templates[key][1] == pytest.approx(T0 + 39 * 0.1, abs=1e-6)
        stats = p.stats()
        assert stats["datagrams"] == 120 and stats["records"] == 40 * 5 and stats["sequence_lost"] == 0
    finally:
        rx.close()
    p.close()
    alerts = p.sink.alerts
    assert sum(a["count"] for a in alerts) == 3 * 8 + 8 + 8       # every hit: v5 3 a datagram, IPFIX 1, sFlow 1


# --- alerts the kernel writes itself (polls._leave) --------------------------------------------------

def _to_file(senders: dict, batches, compiled: bool, path, monkeypatch, cfg: str = CFG, max_bytes: int = 0,
             target: str | None = None, slots: int = 64) -> dict:
    """batches (payloads, sources) sent over loopback and read either way into an alert file (the only
    sink: the compiled polls may append to it themselves); what it leaves, the file's bytes (rotated
    files first) included. time.time is the test's clock: arrival times, so alerts, are the same both ways.
    `slots`: datagrams a recvmmsg reads (fewer than a batch sends: one compiled call takes several)."""
    now = [T0]
    monkeypatch.setattr(time, "time", lambda: now[0])
    sink = Sinks([open_sink(target or str(path), max_bytes=max_bytes, keep=1000)], ["msgpack"], "msgpack")
    p = app.Pipeline(config.parse(cfg), sink, clock=time.time)
    rx = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    rx.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)
    rx.bind(("127.0.0.1", 0))
    rx.setblocking(False)
    r = receive.Receiver(rx, slots, 65536, clock=time.time)
    wrote = []                                  # alerts the kernel wrote, per run() that wrote some
    sink_wrote = sink.wrote
    sink.wrote = lambda alerts, size: (wrote.append(alerts), sink_wrote(alerts, size))
    loop = polls.Polls(p, 0.0, slots)
    try:
        for k, (payloads, src) in enumerate(batches):
            now[0] = T0 + k * 0.25
            for payload, s in zip(payloads, src):
                senders[s].sendto(payload, rx.getsockname())
            got = loop.run(r, 1, 1)[0] if compiled else r.drain(p.process)
            assert got == len(payloads)
        windows, latency = p.folder.windows, int(p.latency.counts.sum())
        left = outcome(p)                       # closes the pipeline: pending alerts written
    finally:
        rx.close()
    files = sorted(path.parent.glob(path.name + ".*"), key=lambda f: -int(f.suffix[1:])) + [path]
    left.update(file=b"".join(f.read_bytes() for f in files if f.exists()), windows=windows, latency=latency,
                sinks=sink.stats(), by_kernel=sum(wrote), files=len(files))
    for f in files:                             # the other path writes the same names
        f.unlink(missing_ok=True)
    return left


def _random(seed: int, mangle: bool = False) -> list:
    return [(payloads, src) for payloads, src, _ in _batches(seed, mangle)]


def _flood(batches: int = 12, per: int = 6) -> list:
    """Batches of sFlow from one agent and of v5 from one exporter by turns, nearly every hit from a
    source not seen before (its alert a new fold key's, written at once), now and then one from an
    earlier source (folded)."""
    out, k = [], 0
    for b in range(batches):
        payloads, src = [], []
        for i in range(per):
            host = f"10.1.{b}.{i + 1}" if (b + i) % 5 else f"10.1.0.{i % 3 + 1}"
            if b % 2:                           # a batch of one format (mixed ones go to Python)
                payloads.append(build.v5([(host, "169.254.169.254", 4000 + i, 80), ("10.1.2.3", "192.0.2.9", 1, 443)],
                                         seq=2 * k))
                src.append(EXPORTERS[0])
            else:
                payloads.append(build.sflow([build.packet_sample(k + 1, build.frame(host, "169.254.169.254", 4000, 80,
                                                                                    b"GET /latest/meta-data/ HTTP/1.1\r\n"))],
                                            k + 1, agent="192.0.2.7"))
                src.append(EXPORTERS[2])
            k += 1
        out.append((payloads, src))
    return out


@pytest.mark.parametrize("seed", range(8))
def test_the_alert_file_the_kernel_writes_is_what_python_writes(senders, seed, tmp_path, monkeypatch):
    compiled = _to_file(senders, _random(seed, mangle=seed >= 6), True, tmp_path / "alerts.mp", monkeypatch)
    python = _to_file(senders, _random(seed, mangle=seed >= 6), False, tmp_path / "alerts.mp", monkeypatch)
    assert python["by_kernel"] == 0
    assert compiled == {**python, "by_kernel": compiled["by_kernel"]}


@pytest.mark.parametrize("case", ["flood", "max_fold_keys", "rotation", "disk_full", "no_window",
                                  "no_window_rotation", "no_window_disk_full", "no_window_large"])
def test_an_alert_flood_leaves_from_the_kernel_and_limits_hold(senders, case, tmp_path, monkeypatch):
    """New keys' alerts are written by the kernel (after each exporter's first batch, which Python
    registers), the file byte for byte as Python writes it; with max_fold_keys reached within one
    call, a file that rotates, or a full disk (/dev/full: every write fails), Python takes the
    alerts over and the outcome is still the same as its own, drops counted alike; the same with no
    folding window (every hit's alert leaves at once). (max_fold_keys:
    two datagrams a read, so one compiled call folds several batches and the limit falls within it.)"""
    cfg = CFG + ("[limits]\nmax_fold_keys = 20\n" if case == "max_fold_keys" else "") + \
        ("[alerts]\nfold_window_seconds = 0\n" if case.startswith("no_window") else "")
    kw = {"cfg": cfg, "max_bytes": 600 if case.endswith("rotation") else 0,
          "target": "/dev/full" if case.endswith("disk_full") else None, "slots": 2 if case == "max_fold_keys" else 64}
    flood = _flood(per=40) if case.endswith("large") else _flood()   # batches past the packer's first 4 KiB
    compiled = _to_file(senders, flood, True, tmp_path / "alerts.mp", monkeypatch, **kw)
    python = _to_file(senders, flood, False, tmp_path / "alerts.mp", monkeypatch, **kw)
    assert compiled == {**python, "by_kernel": compiled["by_kernel"]}
    if case in ("flood", "no_window"):
        assert compiled["by_kernel"] >= 40 and compiled["file"]
    elif case == "no_window_large":          # out grown after the first such batch: the rest in the kernel
        assert compiled["by_kernel"] >= 300
    elif case == "max_fold_keys":               # reached in the kernel, batch after batch of one call
        over = compiled["snapshot"]["global"]["fold_keys_over_limit"]     # (those past it written there too)
        assert compiled["by_kernel"] > over > 0 and compiled["windows"] == 20
    elif case.endswith("disk_full"):
        assert compiled["by_kernel"] == 0 and compiled["sinks"]["sinks"][0]["dropped"] > 0
    elif case.endswith("rotation"):
        assert compiled["files"] >= 5
