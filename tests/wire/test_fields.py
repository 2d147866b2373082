"""wire.fields: the information-element table as data: every element names a slot, slots are indexed
by position, and a slot takes only the field lengths its kind allows."""
import pytest

from imds_flow.wire.fields import ELEMENTS, NSLOT, SLOT, SLOTS, URL_SLOTS, accepts


def test_slots_are_indexed_by_position():
    assert NSLOT == len(SLOTS) == len(SLOT) and all(SLOT[name] == i for i, name in enumerate(SLOTS))
    assert [SLOTS[i] for i in URL_SLOTS] == [f"url{i}" for i in range(6)]


def test_every_element_fills_a_known_slot():
    assert set(ELEMENTS.values()) <= set(SLOTS)
    assert ELEMENTS[(0, 8)] == "src4" and ELEMENTS[(0, 27)] == "src6" and ELEMENTS[(0, 461)] == "url0"
    assert ELEMENTS[(35632, 180)] == ELEMENTS[(0, 57652)] == "url1"     # nProbe's URL in IPFIX and in v9


@pytest.mark.parametrize("slot,length,ok", [
    ("src4", 4, True), ("src4", 2, False), ("src4", 16, False),        # H3C's 2-byte "address"
    ("src6", 16, True), ("src6", 4, False),
    ("bytes", 1, True), ("bytes", 8, True), ("bytes", 9, False), ("bytes", -1, False), ("sport", 0, False),
    ("url0", -1, True), ("url0", 300, True), ("section_l2", 128, True),
])
def test_accepts_by_kind(slot, length, ok):
    assert accepts(slot, length) is ok
