"""Synthetic exports for benchmarks: NetFlow v5 datagrams built with numpy, a fraction aimed at IMDS."""
from __future__ import annotations

import numpy as np

V5_HEADER, V5_RECORD = 24, 48
IMDS_V4 = (169 << 24) | (254 << 16) | (169 << 8) | 254


def v5_datagrams(count: int, records: int = 30, imds_fraction: float = 0.001, seed: int = 1,
                 uptime_ms: int = 3_600_000, unix_secs: int = 1_700_000_000) -> np.ndarray:
    """`count` v5 datagrams of `records` records each, as a (count, size) uint8 array.

    Records are TCP/UDP between 10/8 hosts and the internet; `imds_fraction` of them go to
    169.254.169.254:80 (requests). The header's flow_sequence is left 0: senders patch it.
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


def set_v5_sequence(datagrams: np.ndarray, first: int, records: int) -> None:
    """Write consecutive flow_sequence values (first, first+records, ...) into the headers."""
    seq = (first + records * np.arange(len(datagrams), dtype=np.uint64)) & 0xFFFFFFFF
    datagrams[:, 16:20] = seq.astype(">u4").view(np.uint8).reshape(-1, 4)


def hits_in(datagrams: np.ndarray, records: int) -> int:
    recs = datagrams[:, V5_HEADER:].reshape(-1, V5_RECORD)
    dst = recs[:, 4:8].copy().view(">u4").ravel()
    return int((dst == IMDS_V4).sum())
