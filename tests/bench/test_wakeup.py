"""bench.wakeup: the cold-core measurement behind README's low-rate figures. Its table and JSON, one
row per idle gap with the ratio to the busy loop, and one-line usage errors. No timings asserted."""
from __future__ import annotations

import json

from bench import wakeup


def test_a_row_per_idle_gap_with_its_ratio_to_the_busy_loop(tmp_path, capsys):
    out = tmp_path / "w.json"
    assert wakeup.main(["--export", "ipfix", "--datagrams", "4", "--batches", "3", "--idle", "0,0.001",
                        "--json", str(out)]) == 0
    rows = json.loads(out.read_text())["rows"]
    assert [r["idle_s"] for r in rows] == [0.0, 0.001] and rows[0]["vs_busy"] == 1.0
    assert all(r["process_us"] > 0 for r in rows)
    printed = capsys.readouterr().out
    assert "none (busy loop)" in printed and "1 ms" in printed and f"wrote {out}" in printed


def test_bad_arguments_are_one_line_and_exit_2(capsys):
    assert wakeup.main(["--idle", "-1"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--idle" in err[0]
