"""sinks.spool.Spool: records framed and appended to segment files, taken from the head in order;
the head kept across restarts; a torn or damaged record cut or skipped and counted; a full spool drops
its oldest segments and counts them; one process per spool directory."""
import logging
import os

import msgpack
import pytest

from imds_flow.sinks import Spool, SpoolError

TS0 = 1_760_000_000.25


def alert(n: int) -> bytes:
    return msgpack.packb({"n": n, "ts": TS0 + n, "src": "10.0.0.1", "dst": "169.254.169.254", "count": 1})


def test_spool_resumes_after_a_partly_delivered_run(tmp_path):
    spool = Spool(str(tmp_path), 1 << 20, segment_bytes=1024)
    spool.append([alert(n) for n in range(100)])
    for _ in range(3):
        spool.commit(spool.peek(10, 1 << 20))
    spool.close()
    spool = Spool(str(tmp_path), 1 << 20, segment_bytes=1024)
    assert spool.records == 70
    chunk = spool.peek(1000, 1 << 20)
    assert msgpack.unpackb(chunk.records[0])["n"] == 30
    spool.close()


def test_spool_cuts_a_torn_record(tmp_path, caplog):
    spool = Spool(str(tmp_path), 1 << 20)
    spool.append([alert(n) for n in range(10)])
    spool.close()
    seg = next(tmp_path.glob("*.seg"))
    with open(seg, "ab") as f:
        f.write(b"\x00\x00\x01\x00abc")             # a write cut short by a crash
    spool = Spool(str(tmp_path), 1 << 20)
    assert spool.records == 10 and "torn" in caplog.text
    with pytest.raises(SpoolError):
        Spool(str(tmp_path), 1 << 20)               # one process per spool directory
    spool.close()


def test_spool_full_drops_the_oldest_and_counts(tmp_path, caplog):
    caplog.set_level(logging.WARNING, logger="imds_flow")
    spool = Spool(str(tmp_path), 16 << 10, segment_bytes=2 << 10, name="full")
    total = 1000
    for start in range(0, total, 10):
        spool.append([alert(n) for n in range(start, start + 10)])
        assert spool.bytes <= 16 << 10
    assert spool.dropped > 0 and spool.records + spool.dropped == total
    got = []
    while (chunk := spool.peek(64, 4096)) is not None:
        got += [msgpack.unpackb(r)["n"] for r in chunk.records]
        spool.commit(chunk)
    assert got == list(range(total - len(got), total))      # the newest, in order; the oldest went
    assert spool.delivered == len(got) and spool.bytes == 0
    assert caplog.text.count("spool full") == 1             # rate-limited
    spool.close()


def test_an_in_flight_chunk_whose_segment_was_dropped_is_not_counted_twice(tmp_path):
    spool = Spool(str(tmp_path), 4096, segment_bytes=1024)
    spool.append([alert(n) for n in range(10)])
    chunk = spool.peek(5, 1 << 20)                  # being sent ...
    spool.append([alert(n) for n in range(10, 100)])   # ... while the spool overflows
    dropped = spool.dropped
    spool.commit(chunk)                             # ... and then acknowledged
    assert spool.delivered == 5 and spool.dropped == dropped - 5
    spool.close()


def test_records_come_out_in_order_across_segments_and_delivered_segments_go(tmp_path):
    spool = Spool(str(tmp_path), 1 << 20, segment_bytes=512)
    for start in range(0, 60, 6):
        spool.append([alert(n) for n in range(start, start + 6)])
    assert len(list(tmp_path.glob("*.seg"))) > 3 and spool.records == 60
    got = []
    while (chunk := spool.peek(7, 1 << 20)) is not None:
        assert 1 <= len(chunk.records) <= 7
        got += [msgpack.unpackb(r)["n"] for r in chunk.records]
        spool.commit(chunk)
    assert got == list(range(60)) and spool.records == 0 and spool.bytes == 0 and spool.delivered == 60
    assert len(list(tmp_path.glob("*.seg"))) == 1                  # the one appended to stays
    spool.close()
    with pytest.raises(ValueError, match="closed"):
        spool.append([alert(60)])


def test_a_damaged_record_skips_the_rest_of_its_segment(tmp_path, caplog):
    spool = Spool(str(tmp_path), 1 << 20, segment_bytes=512, name="damaged")
    spool.append([alert(n) for n in range(8)])                     # one segment (it rolls for the next batch)
    spool.append([alert(n) for n in range(8, 16)])
    first = min(tmp_path.glob("*.seg"))
    frame = len(alert(0)) + 8
    with open(first, "r+b") as f:                                  # the third record's payload changes
        f.seek(2 * frame + 8 + 3)
        f.write(b"\xff")
    chunk = spool.peek(100, 1 << 20)
    assert [msgpack.unpackb(r)["n"] for r in chunk.records] == [0, 1]   # up to the damage
    spool.commit(chunk)
    chunk = spool.peek(100, 1 << 20)
    assert [msgpack.unpackb(r)["n"] for r in chunk.records] == list(range(8, 16))
    assert spool.dropped == 6 and "is damaged at byte" in caplog.text
    spool.commit(chunk)
    assert spool.records == 0 and os.path.exists(tmp_path / "cursor")
    spool.close()
