"""DatagramBatch: payloads back to back with offsets and lengths, sources as (hi, lo, port), per-datagram
times; select keeps order and shares the buffer."""
import numpy as np
import pytest

from imds_flow.addr import MAPPED_V4, to_hilo
from imds_flow.datagrams import DatagramBatch


def test_from_payloads_lays_datagrams_back_to_back():
    dg = DatagramBatch.from_payloads([b"abc", b"", b"defgh"], src=[("10.0.0.1", 2055), ("::1", 9996), ("10.0.0.2", 1)],
                                     ts=[1.0, 2.0, 3.0])
    assert dg.n == 3 and dg.buf.dtype == np.uint8 and dg.buf.tobytes() == b"abcdefgh"
    assert dg.offs.tolist() == [0, 3, 3] and dg.lens.tolist() == [3, 0, 5]
    assert [dg.payload(i) for i in range(3)] == [b"abc", b"", b"defgh"]
    assert dg.src_hi.tolist() == [0, 0, 0] and dg.src_lo.tolist() == [MAPPED_V4 | 0x0A000001, 1, MAPPED_V4 | 0x0A000002]
    assert dg.sport.tolist() == [2055, 9996, 1] and dg.ts.tolist() == [1.0, 2.0, 3.0]
    assert (dg.offs.dtype, dg.lens.dtype, dg.src_hi.dtype, dg.sport.dtype, dg.ts.dtype) == \
        (np.int64, np.int32, np.uint64, np.uint16, np.float64)


def test_one_source_and_one_time_for_every_datagram():
    dg = DatagramBatch.from_payloads([b"x", b"y"], src=("2001:db8::1", 6343), ts=5.5)
    hi, lo = to_hilo("2001:db8::1")
    assert dg.src_hi.tolist() == [hi, hi] and dg.src_lo.tolist() == [lo, lo]
    assert dg.sport.tolist() == [6343, 6343] and dg.ts.tolist() == [5.5, 5.5]


def test_sources_and_times_must_match_the_payloads():
    with pytest.raises(ValueError, match="1 sources for 2 payloads"):
        DatagramBatch.from_payloads([b"x", b"y"], src=[("10.0.0.1", 1)])
    with pytest.raises(ValueError, match="3 timestamps for 2 payloads"):
        DatagramBatch.from_payloads([b"x", b"y"], ts=[1.0, 2.0, 3.0])


def test_select_keeps_order_and_shares_the_buffer():
    dg = DatagramBatch.from_payloads([b"a", b"bb", b"ccc", b"dddd"], src=[("10.0.0.%d" % i, i) for i in range(1, 5)],
                                     ts=[1.0, 2.0, 3.0, 4.0])
    sub = dg.select(np.array([False, True, False, True]))
    assert sub.n == 2 and sub.buf is dg.buf
    assert [sub.payload(i) for i in range(2)] == [b"bb", b"dddd"]
    assert sub.sport.tolist() == [2, 4] and sub.ts.tolist() == [2.0, 4.0]
    assert sub.src_lo.tolist() == [dg.src_lo[1], dg.src_lo[3]]
