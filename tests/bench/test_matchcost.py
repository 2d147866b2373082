"""bench.matchcost: what a matching record costs end to end, against the run's own drift. Its
estimate against a slow oracle, a short real run over loopback (every record decoded, the alerts
standing for every matching record sent, an estimate per matching slice) and one-line usage
errors. No timings asserted."""
from __future__ import annotations

import json

import numpy as np
import pytest

from bench import matchcost


def test_estimate_takes_out_a_linear_drift():
    """CPU of slices that drifts linearly, plus a known cost per matching record in the matching
    ones: each estimate is that cost (the oracle: the model it was made from)."""
    rng = np.random.default_rng(5)
    slices = 21
    kind = [k % 2 for k in range(slices)]
    hits = [int(h) if k else 0 for h, k in zip(rng.integers(15_000, 25_000, slices), kind)]
    base = 0.12 + 0.004 * np.arange(slices)                 # a slice's CPU without matching, drifting
    cost = 0.8e-6
    cpu = [float(b + cost * h) for b, h in zip(base, hits)]
    got = matchcost.estimate(cpu, hits, kind)
    assert len(got) == slices // 2
    assert got == pytest.approx([cost] * len(got), rel=1e-9)


def test_estimate_skips_slices_without_both_neighbours_or_hits():
    assert matchcost.estimate([1.0, 2.0], [0, 5], [0, 1]) == []             # no slice after
    assert matchcost.estimate([1.0, 2.0, 1.0], [0, 0, 0], [0, 1, 0]) == []  # no matching record sent
    assert matchcost.estimate([1.0, 3.0, 1.0], [0, 4, 0], [0, 1, 0]) == [0.5]


def test_a_short_run_over_loopback(tmp_path, capsys):
    out = tmp_path / "m.json"
    assert matchcost.main(["--rate", "2e5", "--slice", "0.5", "--slices", "5", "--runs", "1", "--warmup", "1",
                           "--json", str(out)]) == 0
    r = json.loads(out.read_text())
    (run,) = r["runs"]
    assert run["check"] == "ok" and run["decoded_records"] == run["records_sent"] > 0
    assert run["kind"] == [0, 1, 0, 1, 0]
    assert [h > 0 for h in run["slice_hits"]] == [False, True, False, True, False]
    assert run["alerted_records"] == sum(run["slice_hits"])
    assert len(run["estimates_s"]) == 2 and r["slices"] == 2
    assert r["us_per_matching_record"] == pytest.approx(1e6 * float(np.median(run["estimates_s"])))
    printed = capsys.readouterr().out
    assert "A matching record end to end: v5" in printed and f"wrote {out}" in printed


def test_a_run_that_lost_records_gives_no_figure():
    run = {"decoded_records": 90, "records_sent": 100, "alerted_records": 3}
    assert matchcost._check(run, 3) == "decoded 90 of 100 records"
    assert matchcost._check({**run, "decoded_records": 100}, 4) == "alerts stand for 3 records, 4 matched"
    assert matchcost._check({**run, "decoded_records": 100}, 3) is None


@pytest.mark.parametrize("args, name", [(["--slices", "4"], "--slices"), (["--lag", "3"], "--lag"),
                                        (["--imds-fraction", "0"], "--imds-fraction"), (["--runs", "0"], "--runs"),
                                        (["--warmup", "-1"], "--warmup")])
def test_bad_arguments_are_one_line_and_exit_2(args, name, capsys):
    assert matchcost.main(args) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and name in err[0]
