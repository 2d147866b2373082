"""The vendor corpus and structure-aware mutations of its packets, for fuzz tests and fuzz/.

`fields_of(payload)` locates every length-like field of a v5 / v9 / IPFIX packet (header count or
length, set ids and lengths, template ids, field counts, field lengths, options scope lengths) by
walking it the way an exporter wrote it; the mutators then set those to 0, 65535 and neighbours,
cut the packet, flip bits, or give one template's id to another layout. Pure functions of their
inputs and a `random.Random`, so a failure reproduces from its seed.
"""
from __future__ import annotations

import json
import random
import struct
from dataclasses import dataclass
from pathlib import Path

__all__ = ["VENDORS", "Loc", "vendor_payloads", "vendor_sequences", "fields_of", "set_u16", "flip_bits",
           "truncations", "length_mutants", "reuse_template_ids", "mutants"]

from .corpus import VENDORS


@dataclass(frozen=True)
class Loc:
    """A 16-bit big-endian field at `off`: kind is header, set_id, set_length, template_id,
    field_count, scope_count, field_length, scope_length (v9 options) or option_length."""
    off: int
    kind: str


def _manifest(root: Path) -> dict:
    return json.loads((root / "MANIFEST.json").read_text())


def _split(root: Path, sample: dict) -> list[bytes]:
    data = (root / sample["file"]).read_bytes()
    msgs = sample.get("messages_in_file")
    if msgs:
        return [data[m["offset"]:m["offset"] + m["length"]] for m in msgs]
    return [data]


def vendor_payloads(root: Path = VENDORS) -> dict[str, list[bytes]]:
    """file -> its UDP payloads, in manifest order."""
    return {s["file"]: _split(root, s) for s in _manifest(root)["samples"]}


def vendor_sequences(root: Path = VENDORS) -> list[tuple[str, list[bytes]]]:
    """Every upstream test sequence as (name, payloads in feed order); files that need templates
    from others get their feed_first files in front when the sequence does not already have them."""
    m = _manifest(root)
    samples = {s["file"]: s for s in m["samples"]}
    out = []
    for seq in m["sequences"]:
        files: list[str] = []
        for f in seq["files"]:
            for pre in samples[f].get("feed_first", []):
                if pre not in files:
                    files.append(pre)
            files.append(f)
        out.append((seq["name"], [p for f in files for p in _split(root, samples[f])]))
    return out


def _u16(b: bytes, o: int) -> int:
    return (b[o] << 8) | b[o + 1]


def fields_of(p: bytes) -> list[Loc]:
    """Every length-like 16-bit field of a packet, as far as its own lengths can be followed."""
    if len(p) < 4:
        return []
    version = _u16(p, 0)
    locs = [Loc(2, "header")]
    if version not in (9, 10):
        return locs
    ipfix = version == 10
    pos, end = (16, min(len(p), _u16(p, 2))) if ipfix else (20, len(p))
    while end - pos >= 4:
        sid, sl = _u16(p, pos), _u16(p, pos + 2)
        locs += [Loc(pos, "set_id"), Loc(pos + 2, "set_length")]
        if sl < 4 or sl > end - pos:
            break
        if (sid in (0, 1) and not ipfix) or (sid in (2, 3) and ipfix):
            locs += _template_fields(p, pos + 4, pos + sl, ipfix, sid in (1, 3))
        pos += sl
    return locs


def _template_fields(p: bytes, q: int, end: int, ipfix: bool, options: bool) -> list[Loc]:
    locs = []
    while True:
        if options and not ipfix:
            if end - q < 6:
                return locs
            scope_len, opt_len = _u16(p, q + 2), _u16(p, q + 4)
            locs += [Loc(q, "template_id"), Loc(q + 2, "scope_length"), Loc(q + 4, "option_length")]
            q += 6
            if _u16(p, q - 6) < 256 or q + scope_len + opt_len > end:
                return locs
            locs += [Loc(q + 4 * i + 2, "field_length") for i in range((scope_len + opt_len) // 4)]
            q += scope_len + opt_len
            continue
        head = 6 if options else 4
        if end - q < head:
            return locs
        tid, count = _u16(p, q), _u16(p, q + 2)
        locs += [Loc(q, "template_id"), Loc(q + 2, "field_count")]
        if options:
            locs.append(Loc(q + 4, "scope_count"))
        q += head
        if tid < 256 or count == 0:
            return locs
        for _ in range(count):
            if end - q < 4:
                return locs
            fid = _u16(p, q)
            locs.append(Loc(q + 2, "field_length"))
            q += 8 if ipfix and fid & 0x8000 else 4
        if q > end:
            return locs


def set_u16(p: bytes, off: int, value: int) -> bytes:
    return p[:off] + struct.pack(">H", value & 0xFFFF) + p[off + 2:]


def flip_bits(p: bytes, rng: random.Random, k: int = 1) -> bytes:
    if not p:
        return p
    b = bytearray(p)
    for _ in range(k):
        i = rng.randrange(8 * len(b))
        b[i >> 3] ^= 1 << (i & 7)
    return bytes(b)


def truncations(p: bytes, rng: random.Random | None = None, sample: int | None = None) -> list[bytes]:
    """p cut at every length (or at `sample` random lengths plus the first 24)."""
    cuts = range(len(p))
    if sample is not None and rng is not None and len(p) > sample + 24:
        cuts = sorted(set(range(24)) | set(rng.sample(range(24, len(p)), sample)))
    return [p[:n] for n in cuts]


_VALUES = (0, 1, 3, 4, 5, 0x7FFF, 0xFFFE, 0xFFFF)


def length_mutants(p: bytes, values=_VALUES) -> list[bytes]:
    """p with each length-like field set to each of `values` (0 and 65535 among them)."""
    out = []
    for loc in fields_of(p):
        for v in values:
            q = set_u16(p, loc.off, v)
            if q != p:
                out.append(q)
        cur = _u16(p, loc.off)
        for v in (cur - 1, cur + 1, cur + 4):
            out.append(set_u16(p, loc.off, v))
    return out


def reuse_template_ids(p: bytes, rng: random.Random) -> list[bytes]:
    """Variants of p in which a template record takes the id of another template or data set of
    the packet (so data meets a layout it was not written for), or a random id."""
    locs = fields_of(p)
    tids = [l.off for l in locs if l.kind == "template_id"]
    if not tids:
        return []
    ids = sorted({_u16(p, l.off) for l in locs if l.kind in ("template_id", "set_id") and _u16(p, l.off) >= 256})
    out = []
    for off in tids:
        for new in ids[:6] + [rng.randrange(256, 65536)]:
            if new != _u16(p, off):
                out.append(set_u16(p, off, new))
    return out


def mutants(p: bytes, rng: random.Random, flips: int = 8, cuts: int | None = 16) -> list[bytes]:
    """A deterministic bag of mutants of p: bit flips, truncations, length fields, id reuse."""
    out = [flip_bits(p, rng, rng.choice((1, 2, 8))) for _ in range(flips)]
    out += truncations(p, rng, cuts)
    out += length_mutants(p)
    out += reuse_template_ids(p, rng)
    return out
