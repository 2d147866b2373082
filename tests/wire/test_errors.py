"""wire.errors: status codes index per-exporter counters (their order is part of the metrics); each
code maps to its DecodeError subclass, and decode_one raises them for real datagrams."""
import struct

import pytest

from imds_flow import build
from imds_flow.wire import decode_one
from imds_flow.wire.errors import OK, REASONS, BadCount, DecodeError, TooShort, UnknownVersion, error_for, reason_code


def test_codes_are_the_positions_of_the_reasons():
    assert OK == reason_code("ok") == 0
    assert REASONS[:4] == ("ok", "too_short", "unknown_version", "count_exceeds_datagram")   # never reordered
    assert [reason_code(r) for r in REASONS] == list(range(len(REASONS)))
    assert len(set(REASONS)) == len(REASONS)
    with pytest.raises(KeyError):
        reason_code("no_such_reason")


def test_error_for_gives_the_subclass_with_its_reason():
    for name, cls in (("too_short", TooShort), ("unknown_version", UnknownVersion), ("count_exceeds_datagram", BadCount),
                      ("bad_template", DecodeError)):
        e = error_for(reason_code(name))
        assert type(e) is cls and e.reason == name and isinstance(e, DecodeError)
    assert str(error_for(reason_code("bad_set_length"))) == "bad set length"
    assert str(error_for(reason_code("too_short"), "8 bytes")) == "8 bytes"
    assert DecodeError().reason == "decode_error" and DecodeError("x", reason="bad_record").reason == "bad_record"


def test_decode_one_raises_them_for_real_datagrams():
    with pytest.raises(TooShort):
        decode_one(b"\x00")
    with pytest.raises(UnknownVersion):
        decode_one(struct.pack(">HH", 7, 0) + bytes(40))
    v5 = build.v5([("10.0.0.1", "10.0.0.2", 1, 2)])
    with pytest.raises(BadCount):
        decode_one(v5[:2] + struct.pack(">H", 2) + v5[4:])           # says 2 records, holds 1
    assert decode_one(v5).n == 1
