"""bench.fold: folding's steady state in process behind bench/HISTORY.md's figures. Its table and
JSON, every record decoded and alerts made past the first window (the window closing is what it
measures), and one-line usage errors. No timings asserted."""
from __future__ import annotations

import json

from bench import fold


def test_a_row_past_the_first_window(tmp_path, capsys):
    out = tmp_path / "f.json"
    assert fold.main(["--exporters", "50", "--from", "61", "--to", "63", "--runs", "1", "--json", str(out)]) == 0
    r = json.loads(out.read_text())
    batches = -(-2 / (fold.BATCH * fold.RECORDS / fold.RATE))      # simulated seconds 61-63, a batch each 15.36 ms
    assert r["exporters"] == 50 and abs(r["records"] - batches * fold.BATCH * fold.RECORDS) <= fold.BATCH * fold.RECORDS
    assert 0 < r["alerts"] <= r["records"] * 0.02 and len(r["runs_cpu_s"]) == 1
    assert r["ms_per_million_records"] == 1e9 * r["median_cpu_s"] / r["records"]
    printed = capsys.readouterr().out
    assert "from 50 exporters" in printed and f"wrote {out}" in printed


def test_alerts_to_a_file_are_written_and_the_file_removed(tmp_path, monkeypatch, capsys):
    """--alert-file: the alerts go to a temporary file (every one: at least a map's bytes each past
    the window start alone), removed after the run."""
    monkeypatch.setattr(fold.tempfile, "tempdir", str(tmp_path))
    out = tmp_path / "f.json"
    assert fold.main(["--exporters", "50", "--from", "61", "--to", "62", "--runs", "1", "--alert-file",
                      "--json", str(out)]) == 0
    r = json.loads(out.read_text())
    assert r["alert_file"] is True and r["alerts"] > 0 and r["file_bytes"] > 100 * r["alerts"]
    assert "alerts to a file" in capsys.readouterr().out
    assert sorted(p.name for p in tmp_path.iterdir()) == ["f.json"]


def test_a_run_that_decoded_less_is_an_error(monkeypatch):
    """measure() checks what it measured: a run whose records were not all decoded fails."""
    real = fold._run
    monkeypatch.setattr(fold, "_run", lambda *a: {**real(*a), "decoded": 0})
    try:
        fold.measure(4, 1, 2, 1)
    except RuntimeError as e:
        assert "decoded 0 of" in str(e)
    else:
        raise AssertionError("a run that decoded less passed")


def test_bad_arguments_are_one_line_and_exit_2(capsys):
    for argv in (["--exporters", "0"], ["--from", "5", "--to", "5"]):
        assert fold.main(argv) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and "--exporters" in err[0]
