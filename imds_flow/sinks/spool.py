"""A bounded on-disk spool: records are appended to segment files and taken from the head in order.

Rules: a record is framed (length, crc32, bytes) and appended to the newest segment file
(`<first sequence number>.seg`); a reader peeks a chunk at the head and commits it once delivered;
`cursor` keeps the head across restarts. When the undelivered bytes would pass `max_bytes`, whole
oldest segments are dropped and their undelivered records counted. Files are not fsynced: the spool
survives a process restart or crash, not a power loss.
"""
from __future__ import annotations

import fcntl
import logging
import os
import struct
import threading
import time
import zlib
from dataclasses import dataclass, field

from ..ratelimit import RateLimit

__all__ = ["Spool", "Chunk", "SpoolError"]

log = logging.getLogger("imds_flow")

_FRAME = struct.Struct("!II")                 # payload length, crc32 of the payload
_SUFFIX = ".seg"


class SpoolError(OSError):
    """The spool directory cannot be used (locked by another process, not writable)."""


@dataclass
class _Segment:
    seq0: int                                 # sequence number of its first record
    path: str
    size: int = 0
    count: int = 0


@dataclass(frozen=True)
class Chunk:
    """Records taken from one segment: [first, first + len(records)), bytes [start, end) of it."""
    seq0: int
    start: int
    end: int
    first: int
    records: list[bytes] = field(repr=False)


def _scan(path: str) -> tuple[int, int]:
    """(bytes of whole valid frames, their count); what follows (a torn write) is cut off."""
    good, count = 0, 0
    with open(path, "rb") as f:
        data = f.read()
    while good + _FRAME.size <= len(data):
        n, crc = _FRAME.unpack_from(data, good)
        end = good + _FRAME.size + n
        if end > len(data) or zlib.crc32(data[good + _FRAME.size:end]) != crc:
            break
        good, count = end, count + 1
    return good, count


class Spool:
    """Append from one thread, peek / commit from another; every method takes the lock briefly."""

    def __init__(self, directory: str, max_bytes: int, segment_bytes: int | None = None, name: str = "spool",
                 log_interval: float = 10.0, clock=time.monotonic):
        self.directory = directory
        self.max_bytes = max_bytes
        self.segment_bytes = segment_bytes or max(4096, min(8 << 20, max_bytes // 8))
        self.name = name
        self.appended = 0                     # records taken in since start
        self.delivered = 0                    # records committed since start
        self.dropped = 0                      # undelivered records dropped (spool full, damaged frames)
        self.errors = 0                       # appends and cursor saves the disk refused
        self._failing: str | None = None      # why the last append could not be written
        self.cond = threading.Condition()
        self._limit = RateLimit(log_interval, clock)   # warnings of lost alerts and unsaved cursors
        self._dropped_logged = 0
        self._segments: list[_Segment] = []
        self._head_off = 0                    # offset of the head record in _segments[0]
        self._head_seq = 0
        self._next_seq = 0
        self._bytes = 0                       # undelivered bytes (frames)
        self._fd: int | None = None           # append descriptor of _segments[-1]
        self._read: tuple[int, int] | None = None   # (seq0, descriptor) of the head segment
        self._closed = False
        os.makedirs(directory, exist_ok=True)
        self._lock_fd = os.open(os.path.join(directory, "lock"), os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(self._lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(self._lock_fd)
            raise SpoolError(f"spool {directory} is in use by another process") from None
        self._load()

    # --- state on disk ---------------------------------------------------------------------------

    def _path(self, seq0: int) -> str:
        return os.path.join(self.directory, f"{seq0:020d}{_SUFFIX}")

    def _load(self) -> None:
        cursor = self._read_cursor()
        names = sorted(n for n in os.listdir(self.directory) if n.endswith(_SUFFIX) and n[:-4].isdigit())
        for name in names:
            path = os.path.join(self.directory, name)
            size, count = _scan(path)
            if size < os.path.getsize(path):
                log.warning("%s: %s ends in a damaged or torn record; cut at %d bytes", self.name, name, size)
                os.truncate(path, size)
            self._segments.append(_Segment(int(name[:-4]), path, size, count))
        seq0, offset, seq = cursor if cursor else (0, 0, 0)
        while self._segments and self._segments[0].seq0 + self._segments[0].count <= seq and cursor:
            os.unlink(self._segments.pop(0).path)            # delivered before the last stop
        if self._segments:
            head = self._segments[0]
            if cursor and head.seq0 == seq0 and offset <= head.size and head.seq0 <= seq <= head.seq0 + head.count:
                self._head_off, self._head_seq = offset, seq
            else:
                self._head_off, self._head_seq = 0, head.seq0
            last = self._segments[-1]
            self._next_seq = last.seq0 + last.count
            self._fd = os.open(last.path, os.O_WRONLY | os.O_APPEND)
        else:
            self._head_seq = self._next_seq = seq
        self._bytes = sum(s.size for s in self._segments) - self._head_off
        if self.records:
            log.info("%s: resuming %d undelivered alert(s), %d bytes", self.name, self.records, self._bytes)

    def _read_cursor(self) -> tuple[int, int, int] | None:
        try:
            with open(os.path.join(self.directory, "cursor")) as f:
                seq0, offset, seq = (int(x) for x in f.read().split())
            return seq0, offset, seq
        except (OSError, ValueError):
            return None

    def _save_cursor(self) -> None:
        """Best effort: a cursor that cannot be saved costs at most a resend after a restart."""
        seq0 = self._segments[0].seq0 if self._segments else self._head_seq
        path = os.path.join(self.directory, "cursor")
        try:
            with open(path + ".tmp", "w") as f:
                f.write(f"{seq0} {self._head_off} {self._head_seq}\n")
            os.replace(path + ".tmp", path)
        except OSError as e:
            self.errors += 1
            if self._limit.due():
                log.warning("%s: cannot save the spool cursor in %s: %s", self.name, self.directory,
                            e.strerror or e)

    # --- counters --------------------------------------------------------------------------------

    @property
    def records(self) -> int:
        """Undelivered records."""
        return self._next_seq - self._head_seq

    @property
    def bytes(self) -> int:
        """Undelivered bytes, frames included (what max_bytes bounds)."""
        return self._bytes

    # --- writer side -----------------------------------------------------------------------------

    def append(self, records: list[bytes]) -> None:
        """Add records at the tail, dropping the oldest undelivered ones to stay within max_bytes."""
        frames = [_FRAME.pack(len(r), zlib.crc32(r)) + r for r in records]
        need = sum(len(f) for f in frames)
        with self.cond:
            if self._closed:
                raise ValueError(f"{self.name}: closed")
            lost = 0
            while frames and need > self.max_bytes:          # a batch larger than the spool keeps its newest
                need -= len(frames.pop(0))
                lost += 1
            while self._segments and self._bytes + need > self.max_bytes:
                self._drop_head()
            if lost:
                self._count_dropped(lost)
            if not frames:
                return
            last = self._segments[-1] if self._segments else None
            view = memoryview(b"".join(frames))
            try:
                if last is None or self._fd is None or (last.size and last.size + need > self.segment_bytes):
                    last = self._roll()
                while view:
                    view = view[os.write(self._fd, view):]
            except OSError as e:                              # disk full, directory unwritable: lost, counted
                if last is not None and self._fd is not None:
                    try:
                        os.ftruncate(self._fd, last.size)
                    except OSError:                           # no whole segment after this: roll next time
                        os.close(self._fd)
                        self._fd = None
                self.errors += 1
                if self._failing is None:
                    self._limit.reset()                       # a new outage is always reported
                self._failing = f"{e.strerror or e}"
                self._count_dropped(len(frames), f"cannot write the spool in {self.directory}: {self._failing}")
                return
            if self._failing is not None:
                log.warning("%s: spool %s writable again (%d alert(s) dropped in all)", self.name, self.directory,
                            self.dropped)
                self._failing = None
            last.size += need
            last.count += len(frames)
            self._next_seq += len(frames)
            self._bytes += need
            self.appended += len(frames)
            self.cond.notify_all()

    def _roll(self) -> _Segment:
        """Start a new segment; the old descriptor is closed only once the new one is open, so a
        failure (raised) leaves the spool as it was."""
        seg = _Segment(self._next_seq, self._path(self._next_seq))
        fd = os.open(seg.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_TRUNC, 0o600)
        if self._fd is not None:
            os.close(self._fd)
        self._fd = fd
        self._segments.append(seg)
        return seg

    def _drop_head(self) -> None:
        seg = self._segments.pop(0)
        self._count_dropped(seg.seq0 + seg.count - self._head_seq)
        self._bytes -= seg.size - self._head_off
        self._forget(seg)
        self._head_off = 0
        self._head_seq = self._segments[0].seq0 if self._segments else self._next_seq
        self._save_cursor()

    def _forget(self, seg: _Segment) -> None:
        """Close and delete a segment just taken off the front of the list."""
        if self._read is not None and self._read[0] == seg.seq0:
            os.close(self._read[1])
            self._read = None
        if not self._segments and self._fd is not None:      # it was the one appended to
            os.close(self._fd)
            self._fd = None
        try:
            os.unlink(seg.path)
        except OSError:                       # gone already, or the directory is read-only for now
            pass

    def _count_dropped(self, n: int, why: str = "") -> None:
        """Count n lost alerts; log at most once per log_interval (with the count since the last)."""
        if n <= 0:
            return
        self.dropped += n
        if self._limit.due():
            log.warning("%s: %s: dropped %d alert(s) (%d in all)", self.name,
                        why or f"spool full ({self.max_bytes} bytes), the oldest go",
                        self.dropped - self._dropped_logged, self.dropped)
            self._dropped_logged = self.dropped

    # --- reader side -----------------------------------------------------------------------------

    def wait(self, timeout: float) -> None:
        """Until a record is there (or timeout, or notify())."""
        with self.cond:
            if not self.records and not self._closed:
                self.cond.wait(timeout)

    def notify(self) -> None:
        with self.cond:
            self.cond.notify_all()

    def peek(self, max_records: int, max_bytes: int) -> Chunk | None:
        """The oldest undelivered records (at least one, at most max_records / about max_bytes), from
        one segment, without taking them; None when there are none."""
        with self.cond:
            while self._segments:
                seg = self._segments[0]
                if self._head_off < seg.size:
                    break
                if seg is self._segments[-1]:
                    return None
                self._segments.pop(0)                         # delivered to its end
                self._forget(seg)
                self._head_off = 0
                self._head_seq = self._segments[0].seq0
            else:
                return None
            if self._read is None or self._read[0] != seg.seq0:
                if self._read is not None:
                    os.close(self._read[1])
                self._read = (seg.seq0, os.open(seg.path, os.O_RDONLY))
            fd = self._read[1]
            left = seg.size - self._head_off
            data = os.pread(fd, min(left, max(max_bytes, _FRAME.size)), self._head_off)
            records, pos = [], 0
            while len(records) < max_records and pos < left:
                whole = pos + _FRAME.size <= len(data) and \
                    pos + _FRAME.size + _FRAME.unpack_from(data, pos)[0] <= len(data)
                if not whole and records:
                    break                                     # the chunk is full
                if not whole and len(data) < left:            # one record larger than max_bytes
                    data += os.pread(fd, left - len(data), self._head_off + len(data))
                    continue
                n, crc = _FRAME.unpack_from(data, pos) if whole else (0, None)
                payload = data[pos + _FRAME.size:pos + _FRAME.size + n]
                if not whole or zlib.crc32(payload) != crc:
                    if records:
                        break
                    self._damaged(seg)
                    return self.peek(max_records, max_bytes)
                records.append(payload)
                pos += _FRAME.size + n
            return Chunk(seg.seq0, self._head_off, self._head_off + pos, self._head_seq, records)

    def _damaged(self, seg: _Segment) -> None:
        """A frame that fails its check (the file was changed under us): skip the rest of the segment."""
        lost = seg.seq0 + seg.count - self._head_seq
        log.error("%s: %s is damaged at byte %d; its remaining %d alert(s) are dropped", self.name, seg.path,
                  self._head_off, lost)
        self._bytes -= seg.size - self._head_off
        self._head_off, self._head_seq = seg.size, seg.seq0 + seg.count
        self._count_dropped(lost)
        if seg is self._segments[-1] and self._fd is not None:
            os.close(self._fd)                                # the next append starts a new segment
            self._fd = None
        self._save_cursor()

    def commit(self, chunk: Chunk) -> None:
        """The chunk was delivered: move the head past it (if it was dropped meanwhile, undo the count)."""
        n = len(chunk.records)
        with self.cond:
            self.delivered += n
            if self._segments and self._segments[0].seq0 == chunk.seq0 and self._head_off == chunk.start:
                self._head_off = chunk.end
                self._head_seq = chunk.first + n
                self._bytes -= chunk.end - chunk.start
                seg = self._segments[0]
                if self._head_off >= seg.size and seg is not self._segments[-1]:
                    self._segments.pop(0)
                    self._forget(seg)
                    self._head_off, self._head_seq = 0, self._segments[0].seq0
            else:                                             # spool-full dropped its segment meanwhile
                self.dropped -= n
            self._save_cursor()

    def close(self) -> None:
        with self.cond:
            if self._closed:
                return
            self._closed = True
            self._save_cursor()
            for fd in (self._fd, self._read[1] if self._read else None):
                if fd is not None:
                    os.close(fd)
            self._fd = self._read = None
            os.close(self._lock_fd)
            self.cond.notify_all()
