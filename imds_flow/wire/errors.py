"""Decode outcomes: one status code per datagram (kernels) and the matching exception (Python API).

Status codes index the per-exporter error counters, so the order below is part of the metrics
and never reused: append new reasons at the end.
"""
from __future__ import annotations

__all__ = ["OK", "REASONS", "DecodeError", "error_for", "reason_code"]

OK = 0
REASONS = (
    "ok",
    "too_short",                 # shorter than the version's header
    "unknown_version",           # not NetFlow 5, 9, 10 or sFlow 5 (other datagrams land here)
    "count_exceeds_datagram",    # v5: header count * 48 + 24 > datagram length
    "truncated_by_receive",      # longer than the receive slot; cut by the socket
    "bad_length",                # IPFIX: message length field disagrees with the datagram
    "bad_set_length",            # a set/flowset shorter than its header or longer than what is left
    "bad_template",              # a template record that cannot be parsed (zero fields, overrun, ...)
    "bad_record",                # a data record that overruns its set (variable-length fields)
    "scope_over_limit",          # v9/IPFIX: a new source id / domain past limits.max_scopes_per_exporter; dropped
    "bad_sample",                # sFlow: a sample or flow record longer than what holds it, or an unknown agent type
)
_CODE = {name: i for i, name in enumerate(REASONS)}


def reason_code(name: str) -> int:
    return _CODE[name]


class DecodeError(Exception):
    """Base of every error a decoder raises; `.reason` is one of REASONS."""

    reason = "decode_error"

    def __init__(self, message: str = "", reason: str | None = None):
        super().__init__(message or (reason or self.reason))
        if reason is not None:
            self.reason = reason


class TooShort(DecodeError):
    reason = "too_short"


class UnknownVersion(DecodeError):
    reason = "unknown_version"


class BadCount(DecodeError):
    reason = "count_exceeds_datagram"


_CLASSES = {"too_short": TooShort, "unknown_version": UnknownVersion, "count_exceeds_datagram": BadCount}


def error_for(code: int, detail: str = "") -> DecodeError:
    name = REASONS[code]
    return _CLASSES.get(name, DecodeError)(detail or name.replace("_", " "), reason=name)
