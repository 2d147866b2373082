"""imds-flow bench as a command (click, one-line usage errors, exit 2), its report (CPU per million
records, ratios to rivals, a readable one-point plot) and its synthetic exporters. No timings."""
from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from bench import flowbench, sender
from bench.synth import IMDS_V4, flow_datagrams, instance_of_datagrams

ROOT = Path(__file__).resolve().parents[2]


def bench(*args):
    return subprocess.run([sys.executable, "-m", "imds_flow.cli", "bench", *args], capture_output=True, text=True,
                          timeout=120, cwd=ROOT)


@pytest.mark.parametrize("args, words", [
    (["--workers", "0"], ["--workers", "0"]),
    (["--export", "sflow", "--compare", "nfcapd"], ["--export sflow", "sfcapd, sfacctd"]),
    (["--export", "v10"], ["--export", "v10"]),
    (["--version", "5", "--export", "ipfix"], ["--version 5", "--export ipfix"]),
    (["--version", "sflow", "--compare", "nfcapd"], ["--export sflow", "sfcapd, sfacctd"]),   # the form
    (["--version", "5", "--template-every", "20"], ["--template-every", "v5"]),
    (["--version", "v5"], ["--version", "v5"]),
    (["--export", "v5", "--template-every", "20"], ["--template-every", "v5"]),
    (["--export", "v5", "--ipv6-fraction", "0.5"], ["--ipv6-fraction", "v5"]),
    (["--rates", "1e6", "--start", "2e6"], ["--start", "--rates"]),
    (["--export", "sflow", "--max-points", "3"], ["--max-points", "sweep"]),
    (["--compare", "goflow2"], ["goflow2", "nfcapd, nfacctd"]),
    (["--rates", "fast"], ["--rates", "fast"]),
    (["--imds-seen-by", "some"], ["--imds-seen-by", "some"]),
    (["--export", "sflow", "--imds-seen-by", "one"], ["--imds-seen-by", "sFlow"]),
])
def test_usage_errors_are_one_line_and_exit_2(args, words):
    r = bench(*args)
    assert r.returncode == 2, r.stderr
    assert r.stderr.count("\n") == 1 and "Traceback" not in r.stderr
    for w in words:
        assert w in r.stderr


def test_bench_imports_nothing_from_tests():
    for path in (ROOT / "bench").glob("*.py"):
        assert not re.search(r"^\s*(from|import)\s+tests\b", path.read_text(), re.M), path


def _row(collector, rate, cpu_s, offered=1_000_000):
    return {"collector": collector, "workers": 1, "target_records_per_s": rate, "offered_records_per_s": rate,
            "offered_records": offered, "decoded_records": offered, "lost_records": 0, "loss_pct": 0.0,
            "kernel_drop_datagrams": 0, "collector_cpu_pct": 10.0, "cpu_ms_per_million": 1e9 * cpu_s / offered,
            "alerts_expected": 5 if collector == "imds-flow" else None, "alerts_raised": 5,
            "latency_p50_ms": None, "latency_p99_ms": None}


def test_summary_gives_medians_and_the_cpu_ratio_to_each_rival():
    rows = [_row("imds-flow", 3e5, s) for s in (0.10, 0.30, 0.20)] + [_row("nfcapd", 3e5, s) for s in (0.4, 0.5, 0.6)] \
        + [_row("nfacctd", 3e5, 1.0)]
    out = {r["collector"]: r for r in flowbench.summarise(rows)}
    assert out["imds-flow"]["cpu_ms_per_million"] == pytest.approx(200.0) and out["imds-flow"]["runs"] == 3
    assert out["imds-flow"]["cpu_ratio"] == pytest.approx({"nfcapd": 0.4, "nfacctd": 0.2})
    text = flowbench.table(list(out.values()))
    assert "cpu ms/M rec" in text and "nfcapd 0.40x" in text


def test_one_point_plot_has_plain_readable_axes(tmp_path, monkeypatch):
    pytest.importorskip("matplotlib")
    import matplotlib.pyplot as plt
    figs = []
    monkeypatch.setattr(plt, "close", figs.append)
    rows = flowbench.summarise([_row("imds-flow", 3.000318e6, 0.2), _row("nfcapd", 3.000318e6, 0.4)])
    assert flowbench.plot(rows, tmp_path / "one.png", "one point")
    assert (tmp_path / "one.png").stat().st_size > 0
    fig = figs[0]
    fig.canvas.draw()
    for ax in fig.axes:
        for axis in (ax.xaxis, ax.yaxis):
            assert axis.get_major_formatter().get_offset() == ""
        lo, hi = ax.get_xlim()
        assert lo <= 3.000318 * 0.6 and hi >= 3.000318 * 1.4          # a span around the point


def test_templates_resent_every_n_datagrams_per_exporter():
    ex = flow_datagrams(10, 64, 30)
    b = sender.Burst(ex.data)
    tmpl = np.frombuffer(ex.template, np.uint8).copy()
    tb = b.with_template(tmpl, 64, 20)                  # datagrams 64..127 of this exporter: 80, 100, 120
    lens = tb.iov["len"].tolist()
    assert tb.n == 67 and lens.count(len(tmpl)) == 3
    assert [i for i, ln in enumerate(lens) if ln == len(tmpl)] == [16, 37, 58]


def test_metadata_requests_come_from_the_given_sources():
    for version in (5, 10):
        ex = flow_datagrams(version, 64, 30, imds_fraction=0.2, imds_sources=3)
        assert ex.hits.sum() > 0
    rec = flow_datagrams(5, 64, 30, imds_fraction=0.2, imds_sources=3).data[:, 24:].reshape(-1, 48)
    src = rec[:, 0:4].copy().view(">u4").ravel()
    dst = rec[:, 4:8].copy().view(">u4").ravel()
    assert len(set(src[dst == (169 << 24 | 254 << 16 | 169 << 8 | 254)].tolist())) <= 3


@pytest.mark.parametrize("version", [5, 10])
def test_an_instance_a_datagram_changes_only_the_sources(version):
    """instance_per_datagram: datagram d's metadata records all come from instance d mod sources;
    every other byte is as in the layout with instances at random."""
    at, size = (24, 48) if version == 5 else (20, 53)     # the records, and one record's length
    spread = flow_datagrams(version, 64, 30, imds_fraction=0.05, imds_sources=8)
    one = flow_datagrams(version, 64, 30, imds_fraction=0.05, imds_sources=8, instance_per_datagram=True)
    assert (one.hits == spread.hits).all() and one.hits.sum() > 8
    a, b = (x.data[:, at:].reshape(64, 30, size) for x in (spread, one))
    dst = a[:, :, 4:8].copy().view(">u4")[..., 0]
    hit = dst == IMDS_V4
    assert (a[:, :, 4:] == b[:, :, 4:]).all() and (a[~hit] == b[~hit]).all()
    src = b[:, :, 0:4].copy().view(">u4")[..., 0]
    for d in range(64):
        assert set(src[d][hit[d]].tolist()) <= {(10 << 24 | 255 << 16) + d % 8}
    assert (instance_of_datagrams(one.hits, 8) == np.where(one.hits > 0, np.arange(64) % 8, -1)).all()


def _spread_sends(exporters: int, ex, instance=None, bursts: int = 6) -> dict[int, list[bytes]]:
    """`bursts` bursts of ex's first 64 datagrams sent through sender._Spread from `exporters`
    sockets (templates before every 3rd datagram), as received over loopback: exporter -> datagrams."""
    import socket
    rx = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    rx.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)     # ~350 datagrams queue before we read
    rx.bind(("127.0.0.1", 0))
    rx.settimeout(2)
    socks = []
    for _ in range(exporters):
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        s.connect(rx.getsockname())
        socks.append(s)
    try:
        port_of = {s.getsockname()[1]: e for e, s in enumerate(socks)}
        tmpl = np.frombuffer(ex.template, np.uint8).copy()
        spread = sender._Spread(socks, 64, tmpl, 3)
        sent = [spread.send(sender.Burst(ex.data[:64].copy()), ex, instance) for _ in range(bursts)]
        assert [d for d, _ in sent] == [64] * bursts
        got = [rx.recvfrom(65535) for _ in range(64 * bursts + sum(t for _, t in sent))]
    finally:
        rx.close()
        for s in socks:
            s.close()
    by: dict[int, list] = {}
    for data, (_, port) in got:
        by.setdefault(port_of[port], []).append(data)
    return by


def _own_sequence_and_templates(ex, seen: list[bytes]) -> bool:
    """An exporter's datagrams numbered in its own sequence from 0 (step 30 records), its template
    first and then before every 3rd."""
    kinds = ["t" if d == ex.template else "d" for d in seen]
    data = [int.from_bytes(d[8:12], "big") for d in seen if d != ex.template]
    want = []
    for k in range(len(data)):
        want += (["t"] if k % 3 == 0 else []) + ["d"]
    return data == [30 * k for k in range(len(data))] and kinds == want


def test_many_exporters_each_send_in_turn_with_their_own_sequence_and_template():
    """With more exporters than a burst holds, every burst comes from that many different exporters
    (one datagram each), each numbered in its own sequence and preceded by its template when due."""
    ex = flow_datagrams(10, 64, 30)
    by = _spread_sends(100, ex)                             # 384 datagrams
    assert len(by) == 100                                  # every exporter sent, 3 or 4 datagrams each
    for e, seen in by.items():
        assert _own_sequence_and_templates(ex, seen), e


@pytest.mark.parametrize("exporters", [4, 100])
def test_each_instance_seen_by_one_exporter(exporters):
    """--imds-seen-by one: every metadata record of instance i comes through exporter i mod
    exporters, and every exporter still numbers its own sequence and sends its templates when due
    (with 4 exporters each sends 16 datagrams of a burst)."""
    sources, record = 6, 53                                # the IPv4 template's record: src first, then dst
    ex = flow_datagrams(10, 64, 30, imds_fraction=0.01, imds_sources=sources, instance_per_datagram=True)
    instance = instance_of_datagrams(ex.hits, sources)
    assert (instance >= 0).sum() > sources and len(set(instance[instance >= 0].tolist())) == sources
    by = _spread_sends(exporters, ex, instance)
    assert len(by) > min(exporters, 64 - (instance >= 0).sum()) // 2      # the others spread as before
    seen_from: dict[int, set] = {}
    for e, seen in by.items():
        assert _own_sequence_and_templates(ex, seen), e
        for d in seen:
            if d == ex.template:
                continue
            recs = np.frombuffer(d[20:], np.uint8).reshape(30, record)
            src, dst = recs[:, 0:4].copy().view(">u4").ravel(), recs[:, 4:8].copy().view(">u4").ravel()
            for a in src[dst == IMDS_V4].tolist():
                seen_from.setdefault(a, set()).add(e)
    assert sorted(seen_from) == [(10 << 24 | 255 << 16) + i for i in range(sources)]
    assert all(exps == {(a & 0xFFFF) % exporters} for a, exps in seen_from.items())


def test_the_sender_says_how_far_behind_its_schedule_it_fell(monkeypatch):
    """Its bursts after a stall can cost a collector records: each run reports the most it fell
    behind and how many bursts went out late (a stall made here: its first wait lasts 30 ms more)."""
    import socket
    import time
    rx = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    rx.bind(("127.0.0.1", 0))
    real_sleep, slept = time.sleep, []

    def stall_once(s):
        if not slept:
            slept.append(s)
            real_sleep(0.03)
        real_sleep(s)
    monkeypatch.setattr(sender.time, "sleep", stall_once)
    try:
        out = sender.run("127.0.0.1", rx.getsockname()[1], 20_000, 0.3, 1, 30, 0.0)
    finally:
        rx.close()
    assert out["datagrams"] > 0 and out["late_max_ms"] >= 20 and out["late_bursts"] >= 1
