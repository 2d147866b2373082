"""wire.readers: the kernels' big-endian reads against int.from_bytes at every offset and width."""
import numpy as np

from imds_flow.wire.readers import _u16, _u32, _u64, _uint


def test_reads_match_int_from_bytes():
    raw = bytes(np.random.default_rng(7).integers(0, 256, 64, dtype=np.uint8)) + b"\xff" * 8
    buf = np.frombuffer(raw, np.uint8)
    for o in range(0, len(raw) - 8):
        assert _u16(buf, o) == int.from_bytes(raw[o:o + 2], "big")
        assert _u32(buf, o) == int.from_bytes(raw[o:o + 4], "big")
        assert _u64(buf, o) == int.from_bytes(raw[o:o + 8], "big")
        for n in range(1, 9):
            assert _uint(buf, o, n) == int.from_bytes(raw[o:o + n], "big"), (o, n)


def test_all_ones_and_zero_widths():
    buf = np.full(8, 0xFF, np.uint8)
    assert _u64(buf, 0) == (1 << 64) - 1 and _u32(buf, 4) == (1 << 32) - 1
    assert _uint(buf, 0, 0) == 0
