"""wire/templates.py, template set parsing: every template set of the vendor corpus parses as its
MANIFEST.json says (ids, field counts, scope counts, enterprise numbers, variable-length fields) and
goflow2's template field by field; an IPFIX withdrawal is counted, never a template; a cut or malformed
set is counted as rejected, never raised, and keeps the templates before the damage."""
from __future__ import annotations

import json
import struct

import pytest

from imds_flow.wire.templates import VAR, parse_template_set
from tests.support import mutate
from tests.support.corpus import VENDORS

MANIFEST = json.loads((VENDORS / "MANIFEST.json").read_text())
SAMPLES = {s["file"]: s for s in MANIFEST["samples"]}
PAYLOADS = mutate.vendor_payloads(VENDORS)


def template_sets(payload: bytes) -> list[tuple[int, int, bytes]]:
    """(version, set id, body) of every template and options-template set, walked the way the
    exporter wrote it (tests/support/mutate.py)."""
    version = int.from_bytes(payload[:2], "big")
    out = []
    for loc in mutate.fields_of(payload):
        if loc.kind == "set_id":
            set_id, length = struct.unpack_from(">HH", payload, loc.off)
            if set_id in ((0, 1) if version == 9 else (2, 3)):
                out.append((version, set_id, payload[loc.off + 4: loc.off + length]))
    return out


def one_set(file: str) -> tuple[int, int, bytes]:
    (only,) = template_sets(PAYLOADS[file][0])
    return only


def summary(t, options: bool) -> tuple:
    """What the manifest states of a template: options templates only their counts."""
    if options:
        return t["template_id"], t["field_count"], t.get("scope_field_count", 0)
    return t["template_id"], t["field_count"], tuple(sorted(t.get("enterprise_numbers", []))), \
        bool(t.get("variable_length_fields"))


def parsed_summary(t) -> tuple:
    if t.options:
        return t.template_id, len(t.fields), t.scope_fields
    return t.template_id, len(t.fields), tuple(sorted({pen for pen, _, _ in t.fields if pen})), \
        any(length == VAR for _, _, length in t.fields)


WITH_TEMPLATES = [f for f, s in SAMPLES.items() if s["templates"] or s["options_templates"]]


@pytest.mark.parametrize("file", WITH_TEMPLATES)
def test_vendor_template_sets_parse_as_the_manifest_says(file):
    s = SAMPLES[file]
    got = {True: [], False: []}
    for payload in PAYLOADS[file]:
        for version, set_id, body in template_sets(payload):
            parsed = parse_template_set(body, version, set_id)
            assert parsed.rejected == 0 and parsed.withdrawals == 0
            for t in parsed.templates:
                got[t.options].append(parsed_summary(t))
    for options, key in ((False, "templates"), (True, "options_templates")):
        assert sorted(got[options]) == sorted(summary(t, options) for t in s[key])


def test_goflow2_template_field_by_field():
    version, set_id, body = one_set("goflow2/netflow_test_template.bin")
    want = SAMPLES["goflow2/netflow_test_template.bin"]["expected_packet"]["template"]
    (t,) = parse_template_set(body, version, set_id).templates
    assert (t.template_id, t.options, t.scope_fields) == (want["TemplateId"], False, 0)
    assert list(t.fields) == [(0, element, length) for element, length in want["Fields"]]


def test_an_ipfix_withdrawal_is_counted_and_is_no_template():
    version, set_id, body = one_set("logstash-codec-netflow/benchmarks/ipfix_bench_sonicwall_tpl.bin")
    assert (version, set_id) == (10, 2)
    (held,) = parse_template_set(body, version, set_id).templates
    for withdrawal in (struct.pack(">HH", held.template_id, 0),     # this template
                       struct.pack(">HH", set_id, 0)):              # every template of the set's kind
        parsed = parse_template_set(body + withdrawal, version, set_id)
        assert parsed.templates == [held] and parsed.withdrawals == 1 and parsed.rejected == 0


def test_a_v9_template_without_fields_is_rejected_not_a_withdrawal():
    version, set_id, body = one_set("goflow2/netflow_test_template.bin")
    parsed = parse_template_set(struct.pack(">HH", 300, 0) + body, version, set_id)
    assert parsed.rejected == 1 and parsed.withdrawals == 0
    assert [t.template_id for t in parsed.templates] == [260]             # the set goes on after it


def test_a_cut_template_set_is_rejected_and_never_raises():
    version, set_id, body = one_set("goflow2/netflow_test_template.bin")
    for cut in range(len(body)):
        parsed = parse_template_set(body[:cut], version, set_id)
        assert parsed.templates == []
        assert parsed.rejected == (cut >= 4)                  # under a record header: padding


def test_padding_ends_a_set_quietly_garbage_is_counted():
    version, set_id, body = one_set("goflow2/netflow_test_template.bin")
    padded = parse_template_set(body + bytes(6), version, set_id)
    assert [t.template_id for t in padded.templates] == [260] and padded.rejected == 0
    bad_id = parse_template_set(body + struct.pack(">HH", 255, 1) + bytes(4), version, set_id)
    assert [t.template_id for t in bad_id.templates] == [260] and bad_id.rejected == 1
    zero_bytes = parse_template_set(struct.pack(">HHHH", 400, 1, 8, 0) + body, version, set_id)
    assert [t.template_id for t in zero_bytes.templates] == [260] and zero_bytes.rejected == 1  # a 0-byte record
