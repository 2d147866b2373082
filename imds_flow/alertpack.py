"""msgpack of alerts straight from hit rows: the bytes Encoder would make of hit_alerts' dicts,
written by one kernel call for a batch's alerts that leave at once.

In an alert flood (a scan, thousands of exporters each reporting a few instances) nearly every
matching record opens a fold window and leaves at once as an alert of count 1. Built as a dict and
packed by msgpack, each cost ~8 us of Python in a busy loop; here no Python runs per alert but the
slice of its bytes: the kernel writes the map, addresses as text included (Python's ipaddress
rules), exporter addresses packed once per exporter row. Alerts held to fold (their numbers change
before they leave) stay dicts, as do alerts in other formats (formats.py). Byte for byte the same
as Encoder().encode(alert), with the probe's `"test": true` (Pipeline._emit) where it applies: the
tests check every alert against that oracle.
"""
from __future__ import annotations

from typing import NamedTuple

import msgpack
import numpy as np
from llvmlite import ir
from numba import types
from numba.extending import intrinsic

from . import kernels
from .addr import to_hilo
from .detect import Hits
from .flows import HTTP, LATE, SFLOW, FlowBatch
from .grow import grow
from .jit import kernel, njit, step
from .wire.packet import METHODS

__all__ = ["Packer", "Run", "KEYS"]

# the map's keys in the order hit_alerts inserts them (in_if / out_if only when non-zero, test only
# for a probe's alert)
KEYS = ("ts", "exporter", "exporter_port", "version", "src", "dst", "sport", "dport", "proto", "vlan", "endpoint",
        "direction", "bytes", "packets", "first_seen", "last_seen", "count", "sampling_rate", "bytes_estimate",
        "packets_estimate", "in_if", "out_if", "format", "signal", "http_method", "http_host", "url", "headers",
        "test")
_FORMATS = ("netflow", "ipfix", "sflow")
_DIRECTIONS = ("request", "response")


def _table(items: list[bytes]) -> tuple[np.ndarray, np.ndarray]:
    """Byte strings as one buffer and offsets (len(items) + 1); _WORD bytes after the last, which
    _copy reads a word at a time."""
    off = np.zeros(len(items) + 1, np.int64)
    off[1:] = np.cumsum([len(b) for b in items])
    return np.frombuffer(b"".join(items) + bytes(_WORD), np.uint8).copy(), off


_NOTHING = np.empty(0, np.uint8)                 # no buffer (pack_folded's: held rows have no text)
_SINGLE = np.empty((0, 3), np.uint64)            # _pack's folded when each alert is one record's
_ROOM = -1                                        # _pack_leaving: out must first grow
_KEEP = 4 << 20                                   # the most of _pack_run's buffer kept between calls
_WORD = 8                                         # bytes _copy, _uint and _float store at once: out holds
                                                  # this many past every alert written, sources past their end


class Run(NamedTuple):
    """Alerts packed back to back: alert i is out[ends[i - 1]: ends[i]] (from 0), its ts stamps[i];
    ok[i] False where only hit_alerts can say (nothing packed: its bytes are empty), None when every
    one is packed. Views of the packer's buffers, good until it packs again: a sink writes `out` at
    once (Sinks.write_run), or split() makes a bytes object of each."""
    out: np.ndarray
    ends: np.ndarray
    stamps: np.ndarray
    ok: np.ndarray | None = None

    def split(self) -> tuple[list[bytes | None], list[float]]:
        """(bytes of each alert, None where not packed; ts of each)."""
        blob = self.out.tobytes()
        ends = self.ends.tolist()
        starts = [0] + ends[:-1]
        if self.ok is None:
            return [blob[a:b] for a, b in zip(starts, ends)], self.stamps.tolist()
        return [blob[a:b] if good else None for a, b, good in zip(starts, ends, self.ok.tolist())], self.stamps.tolist()


class Packer:
    """Packs the alerts of hits (pack); the constant strings of a detector's names are packed once."""

    def __init__(self, test_sources: tuple[str, ...] = (), test_port: int = 0):
        hilo = [to_hilo(s) for s in test_sources]
        self._test = np.array(hilo or [(0, 0)], np.uint64).reshape(-1, 2), len(hilo), np.uint64(test_port)
        self._keys = _table([msgpack.packb(k) for k in KEYS])
        self._consts: dict[tuple, tuple] = {}
        self._owner = None                        # the exporter table whose rows _exporters holds
        self._e_buf, self._e_off, self._e_port = np.zeros(64, np.uint8), np.zeros(1, np.int64), np.zeros(0, np.uint64)
        self._leaving_scratch(64)
        self._field_scratch = np.empty(len(KEYS), np.int64), np.empty(len(KEYS), np.uint64)   # _fields' kind, val
        self._out, self._res = np.empty(4096, np.uint8), np.zeros(2, np.int64)   # pack_leaving's bytes; (alerts, size)
        self._all_out = np.empty(4096, np.uint8)  # _pack_all's bytes

    def _exporters(self, exporters) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Each exporter row's address as a packed str (buffer, offsets) and its port, rows added as
        the table grows (its rows never change: ExporterTable only appends, sFlow agents too)."""
        if exporters is not self._owner:          # warm-up's scratch table, then the pipeline's
            self._owner, self._e_off, self._e_port = exporters, np.zeros(1, np.int64), np.zeros(0, np.uint64)
        have, n = len(self._e_port), len(exporters.address)
        if n > have:
            parts = [msgpack.packb(a) for a in exporters.address[have:n]]
            new = b"".join(parts)
            start = int(self._e_off[have])
            self._e_buf = grow(self._e_buf, start + len(new) + _WORD)
            self._e_buf[start: start + len(new)] = np.frombuffer(new, np.uint8)
            self._e_off = np.concatenate([self._e_off, start + np.cumsum([len(b) for b in parts])])
            self._e_port = np.concatenate([self._e_port, np.array(exporters.port[have:n], np.uint64)])
        return self._e_buf, self._e_off, self._e_port

    def _constants(self, names, signals, header_names) -> tuple:
        key = (names, signals, header_names)
        got = self._consts.get(key)
        if got is None:
            items = list(names) + list(_DIRECTIONS) + list(signals) + list(_FORMATS) + list(METHODS) + \
                list(header_names)
            base = np.cumsum([0, len(names), len(_DIRECTIONS), len(signals), len(_FORMATS), len(METHODS)])
            buf, off = _table([msgpack.packb(s) for s in items])
            got = self._consts[key] = (buf, off, base.astype(np.int64), len(header_names))
            if len(self._consts) > 16:           # reloads: keep the newest few
                self._consts.pop(next(iter(self._consts)))
        return got

    def _strings(self, names: tuple[str, ...], signals: tuple[str, ...], header_names: tuple[str, ...]) -> tuple:
        """_constants for these endpoint names, signals (Hits.signals) and header names."""
        return self._constants(names, signals + ("address",) * max(0, len(names) - len(signals)), header_names)

    def pack(self, batch: FlowBatch, hits: Hits, names: tuple[str, ...], exporters) -> tuple[list[bytes | None], list[float]]:
        """(msgpack of each hit's alert with count 1, None where only hit_alerts can say: a method
        index out of range; the alert's ts), for the same arguments as alerts.hit_alerts."""
        ints, floats = self._hit_fields(batch.rows, hits.idx)
        return self._pack_run(ints, floats, hits.endpoint, hits.direction, _SINGLE, batch.buf, batch.late_buf,
                              names, hits.signals, hits.header_names, exporters).split()

    def pack_folded(self, held: np.ndarray, rows: np.ndarray, endpoint: np.ndarray, direction: np.ndarray,
                    count: np.ndarray, sums: np.ndarray, times: np.ndarray, tail: np.ndarray,
                    names: tuple[str, ...], signals: tuple[str, ...], header_names: tuple[str, ...],
                    exporters) -> Run:
        """As pack(), as a Run, for pending alerts leaving with their folded numbers: alert i is the one of
        the record held[rows[i]] (a FlowBatch row without HTTP columns, alerts.Folder's copy of a
        pending alert's first record), with count[i], sums[i] (bytes, packets and their
        estimates), times[i] (first, last seen, NaN none, and ts) and tail[i] (sport, dport, VLAN
        code, -1 none, of its latest record) where that record's own are: the bytes
        Encoder().encode gives the dict Folder._release makes of them."""
        ints, floats = self._hit_fields(held, rows)
        ints[:, 9], ints[:, 10] = sums[:, 0], sums[:, 1]
        ints[:, 6], ints[:, 7] = tail[:, 0], tail[:, 1]
        ints[:, 21] = np.where(tail[:, 2] < 0, 0, tail[:, 2] + 1)          # hit_fields' VLAN column: code + 1
        floats[:, 1], floats[:, 2], floats[:, 0] = times[:, 0], times[:, 1], times[:, 2]
        folded = np.empty((len(rows), 3), np.uint64)
        folded[:, 0], folded[:, 1], folded[:, 2] = count, sums[:, 2], sums[:, 3]
        return self._pack_run(ints, floats, endpoint, direction, folded, _NOTHING, _NOTHING, names, signals,
                              header_names, exporters)

    @staticmethod
    def _hit_fields(rows: np.ndarray, idx: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        m = len(idx)
        ints, floats = np.empty((m, len(kernels.HIT_INTS)), np.uint64), np.empty((m, len(kernels.HIT_FLOATS)), np.float64)
        kernels.hit_fields(rows, np.ascontiguousarray(idx, np.int64), ints, floats)
        return ints, floats

    def _pack_run(self, ints, floats, endpoint, direction, folded, buf, late_buf, names, signals, header_names,
                  exporters) -> Run:
        """_pack over alerts whose fields hit_fields read (ints, floats), into a buffer kept between
        calls (fresh memory is dear: each page of it a fault, and a tick may release thousands)."""
        m = len(ints)
        consts, c_off, base, n_headers = self._strings(names, signals, header_names)
        test, n_test, test_port = self._test
        args = (ints, floats, floats.view(np.uint64), *self._exporters(exporters),
                np.ascontiguousarray(endpoint, np.int64), np.ascontiguousarray(direction, np.int64),
                consts, c_off, base, n_headers, *self._keys, buf, late_buf)
        ends, ok, is_test = np.empty(m, np.int64), np.empty(m, np.bool_), np.empty(m, np.bool_)
        kind, val = np.empty(len(KEYS), np.int64), np.empty(len(KEYS), np.uint64)
        args += (test, n_test, test_port, folded, kind, val, ends, ok, is_test)
        size = _pack(*args, self._all_out)
        if size < 0:                              # (out grows seldom: twice what it lacked)
            self._all_out = np.empty(-2 * size, np.uint8)
            size = _pack(*args, self._all_out)
        out = self._all_out[:size]
        if len(self._all_out) > _KEEP:            # one huge batch's: not kept for good (the run keeps it alive)
            self._all_out = np.empty(4096, np.uint8)
        return Run(out, ends, floats[:, 0], ok)

    def pack_leaving(self, kind: np.ndarray, groups_ints: np.ndarray, groups: int, batch: FlowBatch, hits: Hits,
                     names: tuple[str, ...], exporters) -> Run:
        """The alerts of the groups kernels.fold_batch left to alerts.Folder.finish (`kind`, and
        Folder's per-group ints) that only leave: each a window opened by one hit, releasing no
        held alert (an alert flood: nearly every matching record a new fold key), in group order,
        then each hit's of the groups past limits.max_fold_keys (kind 4), in hit order. Returns
        their Run (every one packed: the bytes pack() makes), from one kernel call and no Python
        per alert, and sets those groups' kind to 0: the others are Folder._open_groups' as before."""
        m = len(hits)
        if m > len(self._leaving[0]):
            self._leaving_scratch(2 * m)
        test, n_test, test_port = self._test
        args = (kind, groups_ints, groups, m, hits.idx, hits.endpoint, hits.direction, batch.rows, self._leaving,
                *self._exporters(exporters), *self._strings(names, hits.signals, hits.header_names), *self._keys,
                batch.buf, batch.late_buf, test, n_test, test_port, self._field_scratch)
        if _pack_leaving(*args, self._out, self._res) == _ROOM:
            self._out_room()
            _pack_leaving(*args, self._out, self._res)
        return self.packed()

    def packed(self) -> Run:
        """The alerts _pack_leaving last packed (here, or in polls._leave), as pack_leaving returns them."""
        k, size = self._res.tolist()
        return Run(self._out[:size], self._leaving[7][:k], self._leaving[5][:k, 0])

    def leaving_arguments(self, exporters, names: tuple[str, ...], signals: tuple[str, ...],
                          header_names: tuple[str, ...]) -> tuple:
        """What _pack_leaving takes besides the batch's groups, hits and buffers, for a caller in
        compiled code (polls.poll_loop): scratch, exporters' and constant strings, keys, the probe's
        test, field scratch, out, res. Made again when exporters are added or Python grew scratch."""
        return (self._leaving, *self._exporters(exporters), *self._strings(names, signals, header_names),
                *self._keys, *self._test, self._field_scratch, self._out, self._res)

    def room(self, hits: int) -> None:
        """Scratch for a batch of `hits` hits' alerts, and out for the bytes the last packing asked
        for (polls._leave, which cannot grow them: with no folding window Packer.pack writes the
        batch it declined, in arrays of its own)."""
        if hits > len(self._leaving[0]):
            self._leaving_scratch(2 * hits)
        self._out_room()

    def _out_room(self) -> None:
        """out for twice the bytes _pack_leaving / _pack_hits last found it short of (res[1])."""
        if self._res[1] > len(self._out):
            self._out = np.empty(2 * int(self._res[1]), np.uint8)

    def _leaving_scratch(self, size: int) -> None:
        """pack_leaving's scratch for `size` groups: their numbers, hit rows, endpoints, directions,
        ints, floats (and their bits), ends, ok, is_test, and _SINGLE."""
        floats = np.empty((size, len(kernels.HIT_FLOATS)), np.float64)
        numbers = tuple(np.empty(size, np.int64) for _ in range(4))
        self._leaving = numbers + (np.empty((size, len(kernels.HIT_INTS)), np.uint64), floats, floats.view(np.uint64),
                                   np.empty(size, np.int64), np.empty(size, np.bool_), np.empty(size, np.bool_),
                                   _SINGLE)


# --- the kernel: msgpack by hand (the msgpack-python packer's choices: the shortest int, float64,
# str8 for strings of 32-255 bytes, nil for None) ----------------------------------------------------

def _bytes_array(arr) -> bool:
    """A contiguous uint8 array: its data pointer plus a position addresses that byte."""
    return isinstance(arr, types.Array) and arr.dtype == types.uint8 and arr.ndim == 1 and arr.layout == "C"


@intrinsic
def _load_word(typingctx, arr, at):
    """The 8 bytes of uint8 array arr at [at, at + 8) as a little-endian uint64 (any alignment)."""
    if not _bytes_array(arr):
        return None

    def codegen(context, builder, signature, args):
        data = context.make_array(signature.args[0])(context, builder, args[0]).data
        ptr = builder.bitcast(builder.gep(data, [args[1]]), ir.IntType(64).as_pointer())
        return builder.load(ptr, align=1)
    return types.uint64(arr, types.int64), codegen


@intrinsic
def _store_word(typingctx, arr, at, word):
    """word into uint8 array arr at [at, at + 8), little-endian (any alignment)."""
    if not _bytes_array(arr):
        return None

    def codegen(context, builder, signature, args):
        data = context.make_array(signature.args[0])(context, builder, args[0]).data
        ptr = builder.bitcast(builder.gep(data, [args[1]]), ir.IntType(64).as_pointer())
        builder.store(args[2], ptr, align=1)
        return context.get_dummy_value()
    return types.void(arr, types.int64, types.uint64), codegen


@intrinsic
def _big_endian(typingctx, word):
    """word with its bytes in reverse order (one instruction): stored, its most significant first."""
    def codegen(context, builder, signature, args):
        return builder.bswap(args[0])
    return types.uint64(types.uint64), codegen


# Bytes are written a word at a time, not one by one (~1 ns a byte stored singly, most of the
# kernel's time): a copy or a number may write up to _WORD - 1 bytes past its end, which the next
# field overwrites or, past the alert's end, lie in the _WORD bytes _pack leaves free there.

@step
def _copy(out, pos, src, a, b, write):
    if write:
        for q in range(0, b - a, _WORD):
            _store_word(out, pos + q, _load_word(src, a + q))
    return pos + (b - a)


@step
def _uint(out, pos, v, write):
    v = np.uint64(v)
    if v < 128:
        n, head = 0, v
    elif v < 256:
        n, head = 1, np.uint64(0xcc)
    elif v < 65536:
        n, head = 2, np.uint64(0xcd)
    elif v < np.uint64(1) << np.uint64(32):
        n, head = 4, np.uint64(0xce)
    else:
        n, head = 8, np.uint64(0xcf)
    if write:
        out[pos] = np.uint8(head)
        if n:                                 # its n low bytes, the most significant first
            _store_word(out, pos + 1, _big_endian(v << np.uint64(64 - 8 * n)))
    return pos + 1 + n


@step
def _float(out, pos, bits, write):
    if write:
        out[pos] = 0xcb
        _store_word(out, pos + 1, _big_endian(np.uint64(bits)))
    return pos + 9


@step
def _byte(out, pos, b, write):
    if write:
        out[pos] = b
    return pos + 1


@njit(_nrt=False)
def _text(out, pos, buf, off, length, write):
    """buf[off:off + length] as the msgpack str of its ASCII decoding, any other byte escaped as
    Python's backslashreplace does (\\xhh); nil when empty (alerts' _text gives None)."""
    if length == 0:
        return _byte(out, pos, 0xc0, write)
    n = 0
    for q in range(off, off + length):
        n += 1 if buf[q] < 128 else 4
    if n < 32:
        pos = _byte(out, pos, 0xa0 | n, write)
    elif n < 256:
        pos = _byte(out, pos, 0xd9, write)
        pos = _byte(out, pos, n, write)
    elif n < 65536:
        pos = _byte(out, pos, 0xda, write)
        pos = _byte(out, pos, n >> 8, write)
        pos = _byte(out, pos, n & 255, write)
    else:
        pos = _byte(out, pos, 0xdb, write)
        for q in range(4):
            pos = _byte(out, pos, (n >> (24 - 8 * q)) & 255, write)
    for q in range(off, off + length):
        b = np.int64(buf[q])
        if b < 128:
            pos = _byte(out, pos, b, write)
        else:
            pos = _byte(out, pos, 92, write)                 # \
            pos = _byte(out, pos, 120, write)                # x
            pos = _byte(out, pos, _hex(b >> 4), write)
            pos = _byte(out, pos, _hex(b & 15), write)
    return pos


@step
def _hextet(hi, lo, q):
    word = hi if q < 4 else lo
    return np.int64((word >> np.uint64(48 - 16 * (q % 4))) & np.uint64(0xffff))


@step
def _digits(v, hexadecimal):
    """How many digits v (an octet in decimal, a hextet in hex) takes: shifts and compares, no
    division (a division per digit was most of the kernel's time)."""
    if hexadecimal:
        return 1 if v < 16 else (2 if v < 256 else (3 if v < 4096 else 4))
    return 1 if v < 10 else (2 if v < 100 else 3)


@step
def _number(out, pos, v, hexadecimal, write):
    """v in decimal (an octet) or lowercase hex (a hextet), no leading zeros."""
    n = _digits(v, hexadecimal)
    if write:
        for q in range(n):
            if hexadecimal:
                d = (v >> (4 * q)) & 15
            else:
                d = v % 10 if q == 0 else ((v // 10) % 10 if q == 1 else v // 100)   # constant divisors
            out[pos + n - 1 - q] = _hex(d)
    return pos + n


@njit(_nrt=False)
def _address(out, pos, hi, lo, write):
    """The msgpack str of addr.from_hilo(hi, lo): a dotted quad for IPv4-mapped values, else IPv6
    as Python's ipaddress writes it (hextets in lowercase hex, the first longest run of two or more
    zero hextets as ::)."""
    if hi == 0 and (lo >> np.uint64(32)) == np.uint64(0xFFFF):
        n = 3
        for q in range(4):
            n += _digits(np.int64((lo >> np.uint64(24 - 8 * q)) & np.uint64(255)), False)
        pos = _byte(out, pos, 0xa0 | n, write)
        for q in range(4):
            if q:
                pos = _byte(out, pos, 46, write)                 # .
            pos = _number(out, pos, np.int64((lo >> np.uint64(24 - 8 * q)) & np.uint64(255)), False, write)
        return pos
    best, best_len, run = -1, 0, 0
    for q in range(8):
        if _hextet(hi, lo, q) == 0:
            run += 1
            if run > best_len:
                best, best_len = q - run + 1, run
        else:
            run = 0
    if best_len < 2:
        best = -1
    n, q, first = 0, 0, True                        # the length first, then the text
    while q < 8:
        if q == best:
            n, q, first = n + 2, q + best_len, True
            continue
        n += _digits(_hextet(hi, lo, q), True) + (0 if first else 1)
        q, first = q + 1, False
    pos = _byte(out, pos, 0xa0 | n, write)          # at most 39 characters: fixstr or str8
    if n >= 32:
        if write:
            out[pos - 1] = 0xd9
            out[pos] = n
        pos += 1
    q, first = 0, True
    while q < 8:
        if q == best:
            pos = _byte(out, pos, 58, write)
            pos = _byte(out, pos, 58, write)
            q, first = q + best_len, True
            continue
        if not first:
            pos = _byte(out, pos, 58, write)                     # :
        pos = _number(out, pos, _hextet(hi, lo, q), True, write)
        q, first = q + 1, False
    return pos


@step
def _hex(d):
    return 48 + d if d < 10 else 87 + d


# what a field's value is (_fields fills kind / val per alert; _alert writes them key by key, one
# loop, so the kernel stays small to compile)
_SKIP, _UINT, _FLOAT, _NIL, _CONST, _EXPORTER, _ADDRESS, _TEXT, _HEADERS, _TRUE = range(10)


@njit(_nrt=False)
def _fields(i, ints, fbits, floats, ep, direction, base, test, folded, kind, val):
    """kind[k] / val[k] of alert i's field KEYS[k]; False where the dict path must decide (a
    method index out of range). folded: each alert's count, bytes and packets estimates (a
    folded alert's sums), or no rows (each alert one record's: count 1, estimates scaled here)."""
    version, flags, method = ints[i, 1], ints[i, 12], ints[i, 13]
    nbytes, packets, sampling = ints[i, 9], ints[i, 10], ints[i, 11]
    if sampling == 0:
        sampling = np.uint64(1)
    count = np.uint64(1)
    b_est, p_est = kernels.sat_mul(nbytes, sampling), kernels.sat_mul(packets, sampling)
    if folded.shape[0] > 0:
        count, b_est, p_est = folded[i, 0], folded[i, 1], folded[i, 2]
    http = flags & np.uint64(HTTP) != 0
    if http and method >= np.uint64(len(METHODS)):
        return False
    kind[0], val[0] = _FLOAT, fbits[i, 0]                            # ts
    kind[1], val[1] = _EXPORTER, ints[i, 0]                          # exporter, exporter_port
    kind[2], val[2] = _EXPORTER, ints[i, 0]
    kind[3], val[3] = _UINT, version
    kind[4], val[4] = _ADDRESS, 2                                    # src, dst: their ints columns
    kind[5], val[5] = _ADDRESS, 4
    for k in range(6, 9):                                            # sport, dport, proto
        kind[k], val[k] = _UINT, ints[i, k]
    vlan = ints[i, 21]                                               # its code + 1, 0 none
    kind[9], val[9] = (_UINT, vlan - np.uint64(1)) if vlan != 0 else (_NIL, np.uint64(0))
    kind[10], val[10] = _CONST, ep[i]                                # endpoint, direction
    kind[11], val[11] = _CONST, base[1] + direction[i]
    kind[12], val[12] = _UINT, nbytes
    kind[13], val[13] = _UINT, packets
    for k in range(2):                                               # first_seen, last_seen
        kind[14 + k], val[14 + k] = (_NIL, np.uint64(0)) if np.isnan(floats[i, 1 + k]) else (_FLOAT, fbits[i, 1 + k])
    kind[16], val[16] = _UINT, count
    kind[17], val[17] = _UINT, sampling
    kind[18], val[18] = _UINT, b_est
    kind[19], val[19] = _UINT, p_est
    for k in range(2):                                               # in_if, out_if: when reported
        kind[20 + k], val[20 + k] = (_UINT if ints[i, 19 + k] != 0 else _SKIP), ints[i, 19 + k]
    fmt = 2 if flags & np.uint64(SFLOW) != 0 else (1 if version == 10 else 0)
    kind[22], val[22] = _CONST, base[3] + fmt                        # format
    kind[23], val[23] = _CONST, base[2] + ep[i]                      # signal
    if http:
        kind[24], val[24] = _CONST, np.uint64(base[4]) + method      # http_method
        kind[25], val[25] = _TEXT, 17                                # http_host, url: their ints columns
        kind[26], val[26] = _TEXT, 14
        kind[27], val[27] = _HEADERS, ints[i, 16]
    else:
        for k in range(24, 27):
            kind[k], val[k] = _NIL, 0
        kind[27], val[27] = _HEADERS, 0
    kind[28], val[28] = (_TRUE if test else _SKIP), 0
    return True


@step
def _fixed_most(e_off, c_off, base, n_headers, k_off):
    """At least the bytes _alert writes for any alert, but for its exporter's address and its two
    texts (_most adds them): the map's head and every key, each value at most 9 bytes (a number)
    or the longest constant string, two addresses of 41 (str8 of up to 39 characters), the header
    names all present. An upper bound, not a size: it only says where out must have room left."""
    longest = 0
    for v in range(base[5]):
        longest = max(longest, c_off[v + 1] - c_off[v])
    headers = c_off[base[5] + n_headers] - c_off[base[5]]
    return 3 + (k_off[k_off.shape[0] - 1] - k_off[0]) + (k_off.shape[0] - 1) * max(9, longest) + 2 * 41 + 3 + headers


@step
def _most(i, ints, e_off, fixed):
    """At least the bytes _alert writes for alert i: _fixed_most's, its exporter's address and,
    for an HTTP alert, its host and URL (each byte escaped to at most 4, a str32 head)."""
    e = np.int64(ints[i, 0])
    n = fixed + e_off[e + 1] - e_off[e]
    if ints[i, 12] & np.uint64(HTTP) != 0:
        n += 10 + 4 * np.int64(ints[i, 15] + ints[i, 18])
    return n


@njit(_nrt=False)
def _alert(out, pos, i, ints, e_buf, e_off, e_port, consts, c_off, base, n_headers, keys, k_off, buf, late_buf,
           kind, val, write):
    """Alert i's map at out[pos:] (write) or only its length, from _fields' kind / val; returns the
    end."""
    n = 0
    for k in range(kind.shape[0]):
        n += kind[k] != _SKIP
    pos = _byte(out, pos, 0xde, write)              # map16
    pos = _byte(out, pos, 0, write)
    pos = _byte(out, pos, n, write)
    text = late_buf if ints[i, 12] & np.uint64(LATE) != 0 else buf
    for k in range(kind.shape[0]):
        what, v = kind[k], val[k]
        if what == _SKIP:
            continue
        pos = _copy(out, pos, keys, k_off[k], k_off[k + 1], write)
        if what == _UINT:
            pos = _uint(out, pos, v, write)
        elif what == _FLOAT:
            pos = _float(out, pos, v, write)
        elif what == _NIL:
            pos = _byte(out, pos, 0xc0, write)
        elif what == _TRUE:
            pos = _byte(out, pos, 0xc3, write)
        elif what == _CONST:
            pos = _copy(out, pos, consts, c_off[np.int64(v)], c_off[np.int64(v) + 1], write)
        elif what == _EXPORTER:
            e = np.int64(v)
            if k == 1:
                pos = _copy(out, pos, e_buf, e_off[e], e_off[e + 1], write)
            else:
                pos = _uint(out, pos, e_port[e], write)
        elif what == _ADDRESS:
            pos = _address(out, pos, ints[i, np.int64(v)], ints[i, np.int64(v) + 1], write)
        elif what == _TEXT:
            pos = _text(out, pos, text, np.int64(ints[i, np.int64(v)]), np.int64(ints[i, np.int64(v) + 1]), write)
        else:                                       # _HEADERS: the names of the configured ones present
            count = 0
            for h in range(n_headers):
                count += (v >> np.uint64(h)) & np.uint64(1) != 0
            pos = _byte(out, pos, 0x90 | count, write)   # fixarray; at most 32 names: array16 past 15
            if count >= 16:
                if write:
                    out[pos - 1] = 0xdc
                    out[pos] = 0
                    out[pos + 1] = count
                pos += 2
            for h in range(n_headers):
                if (v >> np.uint64(h)) & np.uint64(1) != 0:
                    pos = _copy(out, pos, consts, c_off[base[5] + h], c_off[base[5] + h + 1], write)
    return pos


@njit(_nrt=False)
def _is_test(ints, i, test, n_test, port):
    """A probe's record (probe.is_probe): from a probe source and port, or back to them."""
    for t in range(n_test):
        if ints[i, 2] == test[t, 0] and ints[i, 3] == test[t, 1] and ints[i, 6] == port:
            return True
        if ints[i, 4] == test[t, 0] and ints[i, 5] == test[t, 1] and ints[i, 7] == port:
            return True
    return False


@kernel
def _pack(ints, floats, fbits, e_buf, e_off, e_port, ep, direction, consts, c_off, base, n_headers, keys, k_off,
          buf, late_buf, test, n_test, port, folded, kind, val, ends, ok, is_test, out):
    """Every alert's map, one after the other, into out; where each ends (ends), whether it is
    packed (ok: else the dict path decides). Returns the total size when out held them all; else
    minus the bytes out must hold for this to (some were measured, not written: an alert is
    written only where _most's bytes and _WORD more are left; one not written is measured, so
    the next pass knows every alert's place). One pass: measuring first cost a second walk over
    every field of every alert."""
    pos, need, whole = 0, 0, True
    fixed = _fixed_most(e_off, c_off, base, n_headers, k_off)
    for i in range(ints.shape[0]):
        is_test[i] = _is_test(ints, i, test, n_test, port)
        ok[i] = _fields(i, ints, fbits, floats, ep, direction, base, is_test[i], folded, kind, val)
        if ok[i]:
            room = pos + _most(i, ints, e_off, fixed) + _WORD
            write = room <= out.shape[0]
            whole &= write
            need = max(need, room)
            pos = _alert(out, pos, i, ints, e_buf, e_off, e_port, consts, c_off, base, n_headers, keys, k_off,
                         buf, late_buf, kind, val, write)
        ends[i] = pos
    return pos if whole else -need


@kernel
def _pack_leaving(kind, g, groups, m, h_idx, h_ep, h_dir, rows, scratch, e_buf, e_off, e_port, consts, c_off, base,
                  n_headers, keys, k_off, buf, late_buf, test, n_test, port, field_scratch, out, res):
    """Packer.pack_leaving's kernel: the alert of the first hit (g[1], a position in the hits) of
    every group of kind 2 with one hit (g[4], its count) and no released row (g[6] < 0), in group
    order, then the alert of every hit of the m whose group (g[0]) is of kind 4 (past
    limits.max_fold_keys), in hit order, into out as _pack writes them for Packer.pack, and those
    groups' kind set to 0; res = (such alerts, bytes). Scratch must hold m. Returns _ROOM,
    changing nothing but scratch, res and out, when out must first hold res[1] bytes; else 0.
    (One kernel: packing from Python, in four calls, cost twice as much a batch on the live core;
    holding _pack makes the first start's compile ~5 s longer.)"""
    grp, sel, ep, direction = scratch[0], scratch[1], scratch[2], scratch[3]
    k = 0
    over = False
    for j in range(groups):
        if kind[j] == 2 and g[4, j] == 1 and g[6, j] < 0:
            at = g[1, j]
            grp[k] = j
            sel[k] = h_idx[at]
            ep[k] = h_ep[at]
            direction[k] = h_dir[at]
            k += 1
        over |= kind[j] == 4
    lone = k
    if over:                                     # (a key has one group a batch: its hits keep their order)
        for h in range(m):
            if kind[g[0, h]] == 4:
                sel[k] = h_idx[h]
                ep[k] = h_ep[h]
                direction[k] = h_dir[h]
                k += 1
    code = _pack_selected(k, rows, scratch, e_buf, e_off, e_port, consts, c_off, base, n_headers, keys, k_off, buf,
                          late_buf, test, n_test, port, field_scratch, out, res)
    if res[0]:
        for i in range(lone):
            kind[grp[i]] = 0
        if over:
            for j in range(groups):
                if kind[j] == 4:
                    kind[j] = 0
    return code


@kernel
def _pack_hits(m, h_idx, h_ep, h_dir, rows, scratch, e_buf, e_off, e_port, consts, c_off, base, n_headers, keys,
               k_off, buf, late_buf, test, n_test, port, field_scratch, out, res):
    """The alerts of a batch's first m hits, each leaving at once (no folding window), into out as
    Packer.pack writes them; res = (m, bytes) when every one was packed, (0, 0) when one is only
    hit_alerts' (then Packer.pack decides). Returns _ROOM as _pack_leaving does, else 0. Scratch
    must hold m (polls._leave, with alerts.fold_window_seconds = 0)."""
    sel, ep, direction = scratch[1], scratch[2], scratch[3]
    for i in range(m):
        sel[i] = h_idx[i]
        ep[i] = h_ep[i]
        direction[i] = h_dir[i]
    return _pack_selected(m, rows, scratch, e_buf, e_off, e_port, consts, c_off, base, n_headers, keys, k_off, buf,
                          late_buf, test, n_test, port, field_scratch, out, res)


@step
def _pack_selected(k, rows, scratch, e_buf, e_off, e_port, consts, c_off, base, n_headers, keys, k_off, buf, late_buf,
                   test, n_test, port, field_scratch, out, res):
    """The alerts of the k hits in scratch's rows (sel), endpoints and directions into out; res =
    (k, bytes), or (0, 0) when one of them only hit_alerts can say (none the decoders make) or k is 0.
    Returns _ROOM, res[1] the bytes out must hold first, or 0."""
    _, sel, ep, direction, ints, floats, fbits, ends, ok, is_test, single = scratch
    f_kind, f_val = field_scratch
    res[0] = 0
    res[1] = 0
    if k == 0:
        return 0
    kernels.hit_fields(rows, sel[:k], ints[:k], floats[:k])
    size = _pack(ints[:k], floats[:k], fbits[:k], e_buf, e_off, e_port, ep[:k], direction[:k], consts, c_off, base,
                 n_headers, keys, k_off, buf, late_buf, test, n_test, port, single, f_kind, f_val, ends[:k], ok[:k],
                 is_test[:k], out)
    for i in range(k):
        if not ok[i]:
            return 0
    if size < 0:
        res[1] = -size
        return _ROOM
    res[0] = k
    res[1] = size
    return 0
