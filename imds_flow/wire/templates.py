"""Template sets parsed: template and options-template records of NetFlow v9 and IPFIX.

Rules: a v9 template with no fields is rejected and counted; an IPFIX template record with field
count 0 is a withdrawal, which RFC 7011 §8.4 forbids over UDP: ignored and counted. Trailing bytes
too short for a record header are padding. A template becomes a plan in plans.py and is kept per
scope in scopes.py; parsing is pure: the same bytes give the same templates.
"""
from __future__ import annotations

import struct
from dataclasses import dataclass

__all__ = ["Template", "SetParse", "parse_template_set", "record_lengths", "VAR"]

VAR = -1                      # field length 0xFFFF: variable length, 1- or 3-byte length prefix
_U16 = struct.Struct(">HH")
_U16x3 = struct.Struct(">HHH")
_U32 = struct.Struct(">I")


@dataclass(frozen=True)
class Template:
    template_id: int
    fields: tuple[tuple[int, int, int], ...]   # (enterprise number, element id, length or VAR)
    options: bool = False
    scope_fields: int = 0                      # options templates: how many leading fields are scope


@dataclass
class SetParse:
    """What one template set held."""
    templates: list[Template]
    rejected: int = 0          # unparseable records, zero-field v9 templates, zero-length records
    withdrawals: int = 0       # IPFIX withdrawals, ignored over UDP


def record_lengths(fields) -> tuple[int, int]:
    """(fixed record length or -1, minimum record length)."""
    fixed = all(ln != VAR for _, _, ln in fields)
    minimum = sum(1 if ln == VAR else ln for _, _, ln in fields)
    return (minimum if fixed else -1), minimum


def parse_template_set(body: bytes, version: int, set_id: int) -> SetParse:
    """Template and options-template records of one set body (after the 4-byte set header).

    Total: any bytes give templates plus counts, never an exception. Trailing bytes too short for
    a record header are padding; a record that overruns the set stops the set (counted rejected).
    """
    out = SetParse([])
    n = len(body)
    p = 0
    ipfix = version == 10
    options = set_id in (1, 3)
    while True:
        head = 6 if options else 4
        if n - p < head:
            break
        if options and not ipfix:
            tid, scope_len, opt_len = _U16x3.unpack_from(body, p)
            p += 6
            if tid < 256:                                  # padding (zeros) or garbage: stop
                out.rejected += any(body[p - 6:])
                break
            if scope_len % 4 or opt_len % 4 or scope_len + opt_len == 0 or p + scope_len + opt_len > n:
                out.rejected += 1
                break
            raw = [_U16.unpack_from(body, p + 4 * i) for i in range((scope_len + opt_len) // 4)]
            p += scope_len + opt_len
            nscope = scope_len // 4
            # v9 scope field types are scope kinds (1 System, 2 Interface...), not elements
            fields = tuple((0xFFFF_FFFF, t, VAR if ln == 0xFFFF else ln) for t, ln in raw[:nscope]) + \
                tuple((0, t, VAR if ln == 0xFFFF else ln) for t, ln in raw[nscope:])
            _add(out, Template(tid, fields, True, nscope))
            continue
        if ipfix and options:
            tid, count, nscope = _U16x3.unpack_from(body, p)
            p += 6
        else:
            tid, count = _U16.unpack_from(body, p)
            p += 4
            nscope = 0
        if ipfix and count == 0:
            if tid >= 256 or tid == set_id:                # a withdrawal (or "withdraw all")
                out.withdrawals += 1
                continue
            out.rejected += any(body[p - head:])            # zero padding ends the set quietly
            break
        if tid < 256:
            out.rejected += any(body[p - head:])
            break
        if count == 0:                                      # v9: a template without fields
            out.rejected += 1
            continue
        fields = []
        for _ in range(count):
            if n - p < 4:
                break
            fid, ln = _U16.unpack_from(body, p)
            p += 4
            pen = 0
            if ipfix and fid & 0x8000:
                if n - p < 4:
                    break
                pen = _U32.unpack_from(body, p)[0]
                p += 4
                fid &= 0x7FFF
            fields.append((pen, fid, VAR if ln == 0xFFFF else ln))
        if len(fields) < count:
            out.rejected += 1
            break
        _add(out, Template(tid, tuple(fields), options, nscope if ipfix else 0))
    return out


def _add(out: SetParse, t: Template) -> None:
    if record_lengths(t.fields)[1] == 0:                  # a record of zero bytes: never looped on
        out.rejected += 1
    else:
        out.templates.append(t)

