"""sinks.stream.FileSink: rotation at alert boundaries keeping `keep` files; appending to what is there;
a torn tail cut off (or, when large, kept aside) on open, so the file stays readable; reopen() after
logrotate renamed the file."""
import json
import logging

from imds_flow.formats import EcsJsonEncoder
from imds_flow.sinks import open_sink
from imds_flow.sinks.stream import TORN_MAX
from tests.support.alerts import packed, short_alert, unpack_file


def test_file_rotation_cuts_between_alerts_and_keeps_n(tmp_path):
    path = tmp_path / "alerts.mp"
    sink = open_sink(str(path), max_bytes=1000, keep=2)
    size = len(packed(0, 60))
    for start in range(0, 100, 7):
        sink.write_alerts([packed(n, 60) for n in range(start, min(start + 7, 100))])
        sink.flush()
    sink.close()
    files = sorted(p.name for p in tmp_path.iterdir())
    assert files == ["alerts.mp", "alerts.mp.1", "alerts.mp.2"]
    per_file = 1000 // size
    got = []
    for name in ("alerts.mp.2", "alerts.mp.1", "alerts.mp"):
        assert (tmp_path / name).stat().st_size <= 1000
        alerts = unpack_file(tmp_path / name)          # whole alerts only: unpacks to the end
        assert len(alerts) == per_file or name == "alerts.mp"
        got += [a["n"] for a in alerts]
    assert got == list(range(100 - len(got), 100))     # the newest, in order; the oldest file went
    assert sink.rotations > 2 and sink.sent == 100


def test_file_rotation_keep_zero_and_an_alert_larger_than_max_bytes(tmp_path):
    path = tmp_path / "a.json"
    sink = open_sink(str(path), max_bytes=200, keep=0)
    enc = EcsJsonEncoder()
    sink.write_alerts([enc.encode(short_alert(1))])           # larger than 200 bytes: a file of its own
    sink.write_alerts([enc.encode(short_alert(2))])
    sink.close()
    assert [p.name for p in tmp_path.iterdir()] == ["a.json"]
    lines = path.read_text().splitlines()
    assert len(lines) == 1 and json.loads(lines[0])["source"]["port"] == 40000


def test_file_appends_to_what_is_there(tmp_path):
    path = tmp_path / "a.mp"
    path.write_bytes(packed(0))
    sink = open_sink(str(path), max_bytes=10_000)
    sink.write_alerts([packed(1), packed(2)])
    sink.close()
    assert [a["n"] for a in unpack_file(path)] == [0, 1, 2]


def test_a_torn_tail_is_cut_off_on_open(tmp_path, caplog):
    caplog.set_level(logging.WARNING, logger="imds_flow")
    path = tmp_path / "a.mp"
    path.write_bytes(packed(0) + packed(1) + packed(2)[:-3])        # a crash in the middle of an alert
    sink = open_sink(str(path))
    sink.write_alerts([packed(3)])
    sink.close()
    assert [a["n"] for a in unpack_file(path)] == [0, 1, 3] and "torn write" in caplog.text


def test_a_large_unreadable_tail_is_kept_aside(tmp_path):
    path = tmp_path / "a.mp"
    path.write_bytes(packed(0) + b"\xc1" * (TORN_MAX + 1))          # 0xc1: never valid msgpack
    sink = open_sink(str(path))
    sink.write_alerts([packed(1)])
    sink.close()
    aside = [p for p in tmp_path.iterdir() if p.name.startswith("a.mp.torn-")]
    assert len(aside) == 1 and aside[0].stat().st_size == len(packed(0)) + TORN_MAX + 1
    assert [a["n"] for a in unpack_file(path)] == [1]


def test_reopen_follows_a_rename(tmp_path):
    path = tmp_path / "a.json"
    sink = open_sink(str(path))
    enc = EcsJsonEncoder()
    sink.write_alerts([enc.encode({**short_alert(1), "sport": 1})])
    sink.reopen()                                                   # still the same file: nothing changes
    path.rename(tmp_path / "a.json.1")                              # logrotate
    sink.write_alerts([enc.encode({**short_alert(2), "sport": 2})])                       # still the renamed file
    sink.reopen()
    sink.write_alerts([enc.encode({**short_alert(3), "sport": 3})])
    sink.close()
    ports = [[json.loads(line)["source"]["port"] for line in p.read_text().splitlines()]
             for p in (tmp_path / "a.json.1", path)]
    assert ports == [[1, 2], [3]] and sink.sent == 3
