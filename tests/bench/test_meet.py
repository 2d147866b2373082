"""bench.meet: the in-process cost of meeting new exporters behind README's exporter figures. Its
table and JSON, every exporter met and every record decoded, and one-line usage errors. No timings
asserted."""
from __future__ import annotations

import json

from bench import meet


def test_a_row_with_every_exporter_met(tmp_path, capsys):
    out = tmp_path / "m.json"
    assert meet.main(["--exporters", "100", "--runs", "2", "--json", str(out)]) == 0
    r = json.loads(out.read_text())
    assert r["exporters"] == 100 and r["batches"] == 4 and len(r["runs_cpu_s"]) == 2
    assert r["median_cpu_s"] > 0 and r["us_per_exporter"] == 1e6 * r["median_cpu_s"] / 100
    printed = capsys.readouterr().out
    assert "meeting 100 new IPFIX exporters" in printed and f"wrote {out}" in printed


def test_a_run_that_decoded_less_is_an_error(monkeypatch):
    """measure() checks what it measured: a run whose last batch went unprocessed fails."""
    real = meet._batches
    monkeypatch.setattr(meet, "_batches", lambda n: real(n)[:-1])
    try:
        meet.measure(100, 1)
    except RuntimeError as e:
        assert "met 96 of 100 exporters, 2880 records" in str(e)   # 3 batches of 64 datagrams: 96 exporters
    else:
        raise AssertionError("a run that met fewer exporters passed")


def test_bad_arguments_are_one_line_and_exit_2(capsys):
    assert meet.main(["--exporters", "0"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--exporters" in err[0]
