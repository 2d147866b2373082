"""The sFlow bench (bench/sflow.py, `imds-flow bench --export sflow`): runs interleaved and repeated,
medians and the ratio to the better rival, the CLI's settings passed through, and one real end-to-end
run of `imds-flow listen`. No timings asserted."""
from __future__ import annotations

import json

from bench import flowbench, sflow


def _row(name, cpu_per_m, run):
    return {"collector": name, "samples_sent": 800, "samples_decoded": 800 - run, "kernel_drops": run,
            "send_seconds": 1.0, "cpu_seconds": cpu_per_m * 800e-6, "cpu_seconds_per_million_samples": cpu_per_m,
            "run": run}


def test_summary_gives_medians_and_the_ratio_to_the_better_rival():
    rows = [_row("imds-flow", c, k) for k, c in enumerate((0.5, 0.3, 0.4))] \
        + [_row("sfcapd", c, k) for k, c in enumerate((0.9, 1.0, 0.8))] + [_row("sfacctd", c, k) for k, c in enumerate((1.2, 0.7, 1.1))]
    s = sflow.summarise(rows)
    assert list(s["collectors"]) == ["imds-flow", "sfcapd", "sfacctd"]
    got = {k: v["median_cpu_seconds_per_million_samples"] for k, v in s["collectors"].items()}
    assert got == {"imds-flow": 0.4, "sfcapd": 0.9, "sfacctd": 1.1}
    assert abs(s["ratio_to_best_rival"] - 0.4 / 0.9) < 1e-12
    assert s["collectors"]["sfcapd"]["min_samples_decoded"] == 798 and s["collectors"]["sfcapd"]["max_kernel_drops"] == 2
    assert "0.400" in sflow.table(s) and "sfacctd" in sflow.table(s)
    assert sflow.summarise(rows[:3])["ratio_to_best_rival"] is None          # no rival: no ratio


def test_the_floor_is_shown_but_is_no_rival():
    rows = [_row("imds-flow", 0.5, 1), _row("sfcapd", 1.0, 1), _row("floor", 0.3, 1)]
    s = sflow.summarise(rows)
    assert s["collectors"]["floor"]["median_cpu_seconds_per_million_samples"] == 0.3
    assert s["ratio_to_best_rival"] == 0.5                                  # against sfcapd, not the floor
    assert "floor" in sflow.table(s)
    assert sflow.summarise([rows[0], rows[2]])["ratio_to_best_rival"] is None


def test_the_floor_reads_every_sample_end_to_end():
    """bench/floor.py as the sFlow bench's floor: it reads every datagram sent (and decodes none)."""
    rows = sflow.compare(["floor"], datagrams=200, rate=20_000)
    assert [(r["collector"], r["samples_sent"]) for r in rows] == [("floor", 1600)]
    assert rows[0]["samples_decoded"] + 8 * rows[0]["kernel_drops"] == 1600 and rows[0]["kernel_drops"] == 0


def test_cli_settings_reach_the_sflow_bench(monkeypatch, tmp_path):
    seen = []
    monkeypatch.setattr(sflow, "main", lambda argv: seen.append(argv) or 0)
    st = flowbench.Settings(export="sflow", rates=(100_000.0,), duration=2.0, repeat=3, imds_fraction=0.01,
                            compare=("sfcapd", "floor"), inprocess=False, out=tmp_path)
    assert flowbench.run(st) == 0
    argv = seen[0]
    opt = {argv[i]: argv[i + 1] for i in range(len(argv) - 1) if argv[i].startswith("--") and argv[i] != "--no-inprocess"}
    assert "--no-inprocess" in argv
    assert opt == {"--compare": "sfcapd,floor", "--rate": "100000.0", "--datagrams": "25000", "--repeat": "3",
                   "--imds-fraction": "0.01", "--out": str(tmp_path)}


def test_every_rate_is_a_run_of_its_own_and_a_sweep_is_refused(monkeypatch, tmp_path):
    seen = []
    monkeypatch.setattr(sflow, "main", lambda argv: seen.append(argv) or 0)
    st = flowbench.Settings(export="sflow", rates=(100_000.0, 400_000.0), duration=2.0, out=tmp_path)
    assert flowbench.run(st) == 0
    assert [argv[argv.index("--rate") + 1] for argv in seen] == ["100000.0", "400000.0"]
    assert [argv[argv.index("--datagrams") + 1] for argv in seen] == ["25000", "100000"]
    assert ["--no-inprocess" in argv for argv in seen] == [False, True]      # in process once, not per rate
    from tests.bench.test_flowbench import bench
    r = bench("--export", "sflow", "--sweep")
    assert r.returncode == 2 and "--sweep" in r.stderr and r.stderr.count("\n") == 1
    for args in (["--workers", "2"], ["--exporters", "5000"], ["--template-every", "20"]):
        r = bench("--export", "sflow", *args)
        assert r.returncode == 2 and args[0] in r.stderr and r.stderr.count("\n") == 1, (args, r.stderr)


def test_imds_flow_end_to_end_twice(tmp_path, monkeypatch):
    """A real `imds-flow listen` takes every sample of a short run, twice; main writes the summary to --out."""
    rows = sflow.compare(["imds-flow"], datagrams=200, rate=20_000, repeat=2, imds_fraction=0.05)
    assert [(r["collector"], r["run"]) for r in rows] == [("imds-flow", 1), ("imds-flow", 2)]
    assert all(r["samples_decoded"] == r["samples_sent"] == 1600 for r in rows)
    assert all(r["cpu_seconds"] >= 0 for r in rows)
    monkeypatch.setattr(sflow, "compare", lambda *a, **k: rows + [_row("sfcapd", 1.0, 1)])   # no rival needed here
    assert sflow.main(["--no-inprocess", "--compare", "sfcapd", "--out", str(tmp_path)]) == 0
    written = json.loads(next(tmp_path.glob("bench-sflow-*.json")).read_text())
    assert written["summary"]["collectors"]["imds-flow"]["runs"] == 2
    assert written["ratio_to_best_rival"] == written["summary"]["ratio_to_best_rival"]


def test_a_rival_that_is_not_installed_is_said_and_skipped(monkeypatch, capsys):
    monkeypatch.setattr("shutil.which", lambda prog: None if prog == "sfcapd" else "/usr/bin/" + prog)
    ran = []
    monkeypatch.setattr(sflow, "_run", lambda name, *a: ran.append(name) or _row(name, 1.0, 1))
    sflow.compare(["imds-flow", "sfcapd", "sfacctd"], datagrams=10)
    assert ran == ["imds-flow", "sfacctd"]
    assert "sfcapd is not installed: skipped (Debian: apt-get install nfdump-sflow)" in capsys.readouterr().err
