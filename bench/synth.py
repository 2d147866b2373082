"""Synthetic exports for benchmarks: NetFlow v5, v9 and IPFIX datagrams built with numpy, a
fraction of the records aimed at the metadata endpoints (requests to 169.254.169.254:80 or
[fd00:ec2::254]:80). Headers carry sequence number 0: the sender patches them per datagram.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from imds_flow import build

V5_HEADER, V5_RECORD = 24, 48
IMDS_V4 = (169 << 24) | (254 << 16) | (169 << 8) | 254


def v5_datagrams(count: int, records: int = 30, imds_fraction: float = 0.001, seed: int = 1,
                 uptime_ms: int = 3_600_000, unix_secs: int = 1_700_000_000, imds_sources: int = 0,
                 instance_per_datagram: bool = False) -> np.ndarray:
    """`count` v5 datagrams of `records` records each, as a (count, size) uint8 array.

    Records are TCP/UDP between 10/8 hosts and the internet; `imds_fraction` of them go to
    169.254.169.254:80 (requests), from `imds_sources` hosts (10.255.0.0 + i) when given (instances
    poll the endpoint again and again: alerts fold per source), else from any 10/8 host; with
    `instance_per_datagram`, all of datagram d's from instance d mod imds_sources (one exporter can
    then send each instance's: sender.py --imds-seen-by one). The header's flow_sequence is left 0:
    senders patch it.
    """
    rng = np.random.default_rng(seed)
    size = V5_HEADER + records * V5_RECORD
    out = np.zeros((count, size), np.uint8)
    hdr = np.zeros(count, dtype=[("version", ">u2"), ("count", ">u2"), ("uptime", ">u4"), ("secs", ">u4"),
                                 ("nsecs", ">u4"), ("seq", ">u4"), ("etype", "u1"), ("eid", "u1"), ("samp", ">u2")])
    hdr["version"], hdr["count"], hdr["uptime"], hdr["secs"] = 5, records, uptime_ms, unix_secs
    out[:, :V5_HEADER] = hdr.view(np.uint8).reshape(count, V5_HEADER)
    n = count * records
    rec = np.zeros(n, dtype=[("src", ">u4"), ("dst", ">u4"), ("nexthop", ">u4"), ("input", ">u2"),
                             ("output", ">u2"), ("pkts", ">u4"), ("octets", ">u4"), ("first", ">u4"),
                             ("last", ">u4"), ("sport", ">u2"), ("dport", ">u2"), ("pad", "u1"), ("flags", "u1"),
                             ("proto", "u1"), ("tos", "u1"), ("sas", ">u2"), ("das", ">u2"), ("smask", "u1"),
                             ("dmask", "u1"), ("pad2", ">u2")])
    rec["src"] = (10 << 24) | rng.integers(0, 1 << 24, n)
    rec["dst"] = rng.integers(1 << 24, 223 << 24, n, dtype=np.uint32)
    hit = rng.random(n) < imds_fraction
    rec["dst"][hit] = IMDS_V4
    if imds_sources:
        rec["src"][hit] = _instances(hit, records, imds_sources, instance_per_datagram, rng)
    rec["pkts"] = rng.integers(1, 1000, n)
    rec["octets"] = rec["pkts"] * rng.integers(40, 1500, n)
    rec["first"] = uptime_ms - rng.integers(1000, 60_000, n)
    rec["last"] = uptime_ms - rng.integers(0, 1000, n)
    rec["sport"] = rng.integers(1024, 65535, n)
    rec["dport"] = rng.choice(np.array([53, 80, 123, 443, 8080], np.uint16), n)
    rec["dport"][hit] = 80
    rec["proto"] = rng.choice(np.array([6, 17], np.uint8), n)
    rec["proto"][hit] = 6
    rec["input"], rec["output"] = 1, 2
    out[:, V5_HEADER:] = rec.view(np.uint8).reshape(count, records * V5_RECORD)
    return out


_IMDS_SOURCE = (10 << 24) | (255 << 16)      # 10.255.0.0: the instances that poll the endpoint


def _instances(hit: np.ndarray, records: int, sources: int, per_datagram: bool, rng) -> np.ndarray:
    """The source address of each metadata record (`hit`, records in datagram order): one of
    `sources` instances at random, or datagram d's instance d mod sources. The same random draws
    either way, so that every other column is the same in both layouts."""
    drawn = rng.integers(0, sources, int(hit.sum()))
    if per_datagram:
        drawn = np.flatnonzero(hit) // records % sources
    return (_IMDS_SOURCE + drawn).astype(np.uint32)


def instance_of_datagrams(hits: np.ndarray, sources: int) -> np.ndarray:
    """Per datagram of an export made with instance_per_datagram: the instance its metadata
    records come from, -1 where it has none."""
    return np.where(hits > 0, np.arange(len(hits)) % sources, -1)


IMDS_V6 = bytes.fromhex("fd000ec2000000000000000000000254")
_IMDS_SOURCE6 = bytes.fromhex("20010db80001000000000000ffff")   # 2001:db8:1::ffff:<instance>
V4_TEMPLATE, V6_TEMPLATE = 256, 257
# (IE, length): src, dst, sport, dport, proto, bytes, packets, flowStart/EndMilliseconds, in/out if
_V4_FIELDS = [(8, 4), (12, 4), (7, 2), (11, 2), (4, 1), (1, 8), (2, 8), (152, 8), (153, 8), (10, 4), (14, 4)]
_V6_FIELDS = [(27, 16), (28, 16)] + _V4_FIELDS[2:]


@dataclass
class Export:
    """Datagrams of one protocol version ready to send: `data` rows (count, size), the template
    datagram every exporter must send first (None for v5), and where each header's sequence is."""
    version: int
    data: np.ndarray
    template: bytes | None
    hits: np.ndarray          # metadata records per datagram
    records: int              # records per datagram

    def set_sequences(self, rows: np.ndarray, numbers: np.ndarray) -> None:
        """Give row i sequence number numbers[i] (each from its own exporter)."""
        at = {5: 16, 9: 12, 10: 8}[self.version]
        seq = np.asarray(numbers, np.uint64) & np.uint64(0xFFFFFFFF)
        rows[:, at:at + 4] = seq.astype(">u4").view(np.uint8).reshape(-1, 4)

    @property
    def sequence_step(self) -> int:
        """What one datagram adds to its exporter's sequence number: its records (v5, IPFIX) or 1 (v9)."""
        return 1 if self.version == 9 else self.records

    def set_sequence(self, rows: np.ndarray, first: int) -> int:
        """Number the datagrams in `rows` from `first`; returns the next number. v5 and IPFIX count
        records, v9 counts datagrams (RFC 3954 / RFC 7011)."""
        step = self.sequence_step
        self.set_sequences(rows, first + step * np.arange(len(rows), dtype=np.uint64))
        return first + step * len(rows)


def _records(n: int, rng, imds_fraction: float, ipv6_fraction: float, now_ms: int, imds_sources: int = 0,
             records: int = 1, instance_per_datagram: bool = False):
    """Column values of n flow records; returns (is_v6, hit, columns dict)."""
    v6 = rng.random(n) < ipv6_fraction
    hit = rng.random(n) < imds_fraction
    pkts = rng.integers(1, 1000, n).astype(np.uint64)
    cols = {
        "src4": ((10 << 24) | rng.integers(0, 1 << 24, n)).astype(np.uint32),
        "dst4": np.where(hit, IMDS_V4, rng.integers(1 << 24, 223 << 24, n)).astype(np.uint32),
        "sport": rng.integers(1024, 65535, n).astype(np.uint16),
        "dport": np.where(hit, 80, rng.choice([53, 123, 443, 8080], n)).astype(np.uint16),
        "proto": np.where(hit, 6, rng.choice([6, 17], n)).astype(np.uint8),
        "bytes": pkts * rng.integers(40, 1500, n).astype(np.uint64), "pkts": pkts,
        "start": (now_ms - rng.integers(1000, 60_000, n)).astype(np.uint64),
        "end": (now_ms - rng.integers(0, 1000, n)).astype(np.uint64),
    }
    if imds_sources:
        cols["src4"][hit] = _instances(hit, records, imds_sources, instance_per_datagram, rng)
    return v6, hit, cols


def _pack(fields, cols, idx, src6=None, dst6=None) -> np.ndarray:
    """Records `idx` laid out as `fields` describes: a (len(idx), record length) uint8 array."""
    names = {8: "src4", 12: "dst4", 7: "sport", 11: "dport", 4: "proto", 1: "bytes", 2: "pkts", 152: "start",
             153: "end"}
    dtype = []
    for ie, length in fields:
        kind = {1: "u1", 2: ">u2", 4: ">u4", 8: ">u8", 16: "V16"}[length]
        dtype.append((f"f{ie}", kind))
    rec = np.zeros(len(idx), dtype=dtype)
    for ie, _ in fields:
        if ie in names:
            rec[f"f{ie}"] = cols[names[ie]][idx]
        elif ie in (10, 14):
            rec[f"f{ie}"] = 1 if ie == 10 else 2
    if src6 is not None:
        rec["f27"] = src6
        rec["f28"] = dst6
    return rec.view(np.uint8).reshape(len(idx), -1)


def flow_datagrams(version: int, count: int, records: int = 30, imds_fraction: float = 0.001,
                   ipv6_fraction: float = 0.0, seed: int = 1, unix_secs: int = 1_700_000_000,
                   imds_sources: int = 0, instance_per_datagram: bool = False) -> Export:
    """`count` datagrams of one version, each with `records` records of one address family;
    metadata requests come from `imds_sources` hosts (0: any 10/8 host), with
    `instance_per_datagram` each datagram's from one (v5_datagrams; IPv6 ones from
    2001:db8:1::ffff:<instance>, else all from 2001:db8:1::)."""
    if version == 5:
        data = v5_datagrams(count, records, imds_fraction, seed, imds_sources=imds_sources,
                            instance_per_datagram=instance_per_datagram)
        per = data[:, V5_HEADER:].reshape(count, records, V5_RECORD)[:, :, 4:8].copy().view(">u4")[..., 0]
        return Export(5, data, None, (per == IMDS_V4).sum(axis=1), records)
    rng = np.random.default_rng(seed)
    n = count * records
    _, hit, cols = _records(n, rng, imds_fraction, 0.0, unix_secs * 1000, imds_sources, records,
                            instance_per_datagram)
    v6_dgram = rng.random(count) < ipv6_fraction            # one family per datagram
    rows = []
    for d in range(count):
        idx = np.arange(d * records, (d + 1) * records)
        if v6_dgram[d]:
            src6 = np.frombuffer(bytes.fromhex("20010db8000100000000000000000000") * records, "V16").copy()
            dst6 = np.frombuffer(bytes.fromhex("20010db8ffff00000000000000000001") * records, "V16").copy()
            dst6[hit[idx]] = np.frombuffer(IMDS_V6, "V16")[0]
            if instance_per_datagram and imds_sources:
                src6[hit[idx]] = np.frombuffer(_IMDS_SOURCE6 + (d % imds_sources).to_bytes(2, "big"), "V16")[0]
            body = _pack(_V6_FIELDS, cols, idx, src6, dst6).tobytes()
            tid = V6_TEMPLATE
        else:
            body = _pack(_V4_FIELDS, cols, idx).tobytes()
            tid = V4_TEMPLATE
        data_set = build.set_(tid, body)
        rows.append(_datagram(version, [data_set], unix_secs, records))
    size = max(len(r) for r in rows)
    # datagrams of both families differ in length: keep them apart by padding to one size is wrong
    # (padding would be a malformed set), so v6 batches are built as their own Export when mixed.
    if len({len(r) for r in rows}) > 1:
        raise ValueError("mixed address families need separate exports; call once per family")
    data = np.frombuffer(b"".join(rows), np.uint8).reshape(count, size).copy()
    return Export(version, data, template_datagram(version, unix_secs), hit.reshape(count, records).sum(axis=1),
                  records)


def _datagram(version: int, sets: list[bytes], unix_secs: int, records: int) -> bytes:
    if version == 9:
        return build.v9(sets, uptime=3_600_000, secs=unix_secs, count=records)
    return build.ipfix(sets, export_time=unix_secs)


def template_datagram(version: int, unix_secs: int = 1_700_000_000) -> bytes:
    """Both templates (IPv4 256, IPv6 257) in one datagram."""
    tset = build.template_set(version, {V4_TEMPLATE: _V4_FIELDS, V6_TEMPLATE: _V6_FIELDS})
    return _datagram(version, [tset], unix_secs, 2)


def set_v5_sequence(datagrams: np.ndarray, first: int, records: int) -> None:
    """Write consecutive flow_sequence values (first, first+records, ...) into the headers."""
    seq = (first + records * np.arange(len(datagrams), dtype=np.uint64)) & 0xFFFFFFFF
    datagrams[:, 16:20] = seq.astype(">u4").view(np.uint8).reshape(-1, 4)


def hits_in(datagrams: np.ndarray, records: int) -> int:
    recs = datagrams[:, V5_HEADER:].reshape(-1, V5_RECORD)
    dst = recs[:, 4:8].copy().view(">u4").ravel()
    return int((dst == IMDS_V4).sum())
