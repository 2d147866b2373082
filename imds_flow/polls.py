"""The receive loop's polls in compiled code: recvmmsg, the unpack kernel, a one-call kernel per
batch and the sleep between polls, back in Python only for a batch that needs it.

Why: while datagrams keep coming the loop polls a socket every `listen.coalesce_seconds` (serve.py).
Each poll driven from Python (a timer of the event loop, Receiver.read, Pipeline.process, the
one-call kernel) cost ~130 us of interpreter time on a cold core, whatever the batch held: half of
what receiving alone cost (bench/floor.py on the sFlow bench's stream, 200 000 samples/s, 8 a
datagram: 0.57-0.65 CPU s per million samples with its polls in Python, 0.27-0.33 compiled).
poll_loop runs up to `polls` polls of one socket in one call, sleeping `coalesce_seconds` between
them, and hands each batch to the one-call kernel of its format (onecall.py: known exporters'
v5, v9 / IPFIX or sFlow). It returns to Python (res[0]):

- PENDING: a batch the one-call kernel declined, untouched (a new exporter or template, junk, a
  truncated datagram, a batch over limits.max_batch_records, rows to grow): Pipeline.process takes it;
- TAKEN: a batch the kernel took that leaves work to Python (rejected datagrams to log, hits whose
  alerts leave or are held, or could not be folded in the kernel): Pipeline.taken finishes it, as
  Pipeline.process does after OneCall.run;
- EMPTY: `idle` polls in a row found the socket empty (serve.py hands it back to epoll);
- DONE / BUSY: `polls` polls done (BUSY: the last one drained TURN_BATCHES full batches: more wait);
- FAILED: recvmmsg failed with an error other than EAGAIN / EINTR (res[1]: errno): Receiver.read
  meets it again and handles it as before (ENOSYS: the portable path; others raise).

A batch taken with nothing left for Python (no hit, or hits folded into windows already open, no
datagram rejected) never leaves the kernel: its counters, sequence state and folds are in the
arrays Python reads. Alerts leave as soon as their batch is read, as before. v9 / IPFIX template
sets resent byte for byte refresh their received times in the kernel; the templates' dict hears of
it when the call returns (ScopeTable.refreshed), before anything else reads it.
"""
from __future__ import annotations

import errno

import numpy as np
from llvmlite import ir
from numba import types
from numba.core import cgutils
from numba.extending import intrinsic

from . import receive
from .jit import kernel
from .onecall import WALK_ENTRIES, ipfix_batch, sflow_batch, v5_batch

__all__ = ["Polls", "poll_loop", "usable", "timespec", "EMPTY", "DONE", "BUSY", "PENDING", "TAKEN", "FAILED"]

EMPTY, DONE, BUSY, PENDING, TAKEN, FAILED = range(6)
TURN_BATCHES = 64                          # most batches one poll drains (serve.py's turn of the loop)
_FOLD = 12                                 # the folder's place in poll_loop's `one` (Polls.arguments)
_RES = 8                                   # code, n, size, datagrams, poll, marked, long_ago, batches
_EAGAIN, _EINTR = errno.EAGAIN, errno.EINTR
_MSG_DONTWAIT = receive.MSG_DONTWAIT
_VOIDP = ir.IntType(8).as_pointer()


@intrinsic
def _recvmmsg(typingctx, fd, vec, vlen):
    """libc's recvmmsg(fd, vec, vlen, MSG_DONTWAIT, NULL); vec an address (int64)."""
    def codegen(context, builder, signature, args):
        i32 = ir.IntType(32)
        fn = cgutils.get_or_insert_function(builder.module, ir.FunctionType(i32, [i32, _VOIDP, i32, i32, _VOIDP]),
                                            "recvmmsg")
        return builder.call(fn, [args[0], builder.inttoptr(args[1], _VOIDP), args[2],
                                 ir.Constant(i32, _MSG_DONTWAIT), ir.Constant(_VOIDP, None)])
    return types.int32(types.int32, types.int64, types.int32), codegen


@intrinsic
def _errno(typingctx):
    """errno of the calling thread."""
    def codegen(context, builder, signature, args):
        fn = cgutils.get_or_insert_function(builder.module, ir.FunctionType(ir.IntType(32).as_pointer(), []),
                                            "__errno_location")
        return builder.load(builder.call(fn, []))
    return types.int32(), codegen


@intrinsic
def _nanosleep(typingctx, spec):
    """libc's nanosleep(spec, NULL); spec the address (int64) of a struct timespec."""
    def codegen(context, builder, signature, args):
        i32 = ir.IntType(32)
        fn = cgutils.get_or_insert_function(builder.module, ir.FunctionType(i32, [_VOIDP, _VOIDP]), "nanosleep")
        return builder.call(fn, [builder.inttoptr(args[0], _VOIDP), ir.Constant(_VOIDP, None)])
    return types.int32(types.int64), codegen


@kernel
def poll_loop(fd, hdrs_at, sleep_at, polls, idle, started, now, limit, ipfix_ok, recv, one, res):
    """Up to `polls` polls of socket `fd` (module docstring); res = (code, the last batch's
    datagrams and size (-1: one was truncated), datagrams read, the poll it ended in, template
    set entries marked, a refresh long after the last, batches read). EMPTY after `idle` polls in
    a row found nothing. `started`: the first poll continues one that already read datagrams (no
    sleep before it, not empty). recv: the Receiver's mmsghdr
    rows and columns; one: the one-call kernels' arguments (Polls.arguments)."""
    raw, names, control, buf, offs, lens, trunc, hi, lo, port, ts = recv
    (state, sflow, scratch, walk, scopes, plans, http, no_opts, templates_col, rows, ep, tables, fold, out,
     marks) = one
    mark, marked = marks
    entries = walk[WALK_ENTRIES]
    counters = fold[7]
    slots = np.int32(raw.shape[0])
    got = 0
    empty = 0
    res[0] = DONE
    for p in range(polls):
        if p > 0:
            _nanosleep(sleep_at)
        res[4] = p
        polled = 1 if started and p == 0 else 0
        full = False
        for _ in range(TURN_BATCHES):
            n = _recvmmsg(np.int32(fd), hdrs_at, slots)
            if n <= 0:
                if n < 0:
                    e = _errno()
                    if e != _EAGAIN and e != _EINTR:
                        res[0] = FAILED
                        res[1] = e
                        res[3] = got
                        return
                full = False
                break
            got += n
            polled += n
            res[7] += 1
            size = receive._unpack(raw, names, control, n, now, lens, trunc, hi, lo, port, ts)
            res[1] = n
            res[2] = size
            res[3] = got
            word = -1
            o = offs[0]
            if size >= 0 and (n == 1 or size <= limit) and buf[o] == 0:
                word = np.int64(buf[o + 1])
            out[4] = 0
            done = np.int64(-1)
            if word == 5:
                done = v5_batch(buf, offs, lens, hi, lo, port, ts, n, state, scratch, rows, ep, tables, fold, out)
            elif word == 0:
                done = sflow_batch(buf, offs, lens, hi, lo, port, ts, n, state, sflow, scratch, rows, ep, tables,
                                   fold, out)
            elif (word == 9 or word == 10) and ipfix_ok:
                done = ipfix_batch(buf, offs, lens, hi, lo, port, ts, n, state, scratch, walk, scopes, plans, http,
                                   no_opts, templates_col, rows, ep, tables, fold, out)
            if done < 0:
                res[0] = PENDING
                return
            for i in range(out[4]):         # template sets resent: ScopeTable.refreshed, on return
                e = entries[i]
                if not mark[e]:
                    mark[e] = True
                    marked[res[5]] = e
                    res[5] += 1
            res[6] |= out[5] if out[4] else 0
            if out[1] or out[2] and (out[6] < 0 or counters[1] or counters[2]):
                res[0] = TAKEN
                return
            full = n == slots
            if not full:
                break
        empty = empty + 1 if polled == 0 else 0
        if empty >= idle:
            res[0] = EMPTY
            return
        if full:
            res[0] = BUSY
            return


def timespec(seconds: float) -> np.ndarray:
    """A struct timespec of `seconds`, for _nanosleep (its address: .ctypes.data)."""
    return np.array([int(seconds), int(round((seconds % 1.0) * 1e9))], np.int64)


def usable(receiver) -> bool:
    """The receiver reads with recvmmsg in native little-endian structs (Receiver.read's fast path)."""
    return receive.HAVE_RECVMMSG and receive._LITTLE and receiver._use_mmsg


class Polls:
    """A Pipeline's polls in poll_loop, one receiver at a time; run() does what serve.py's loop
    did with Receiver.drain and Pipeline.process for those polls."""

    def __init__(self, pipeline, coalesce: float, slots: int):
        self.pipeline = pipeline
        self.slots = slots                     # the receivers' batch_datagrams
        self._sleep = timespec(coalesce)
        self._sleep_at = self._sleep.ctypes.data
        self.res = np.zeros(_RES, np.int64)
        self.batches = 0                       # batches read (recvmmsg calls that returned datagrams)
        self._marks = (np.zeros(0, np.bool_), np.zeros(0, np.int64))

    def run(self, r, polls: int, idle: int = 1) -> tuple[int, int]:
        """Up to `polls` polls of Receiver r, the first at once, `coalesce` apart, until `idle` in a
        row find nothing; returns (datagrams read, EMPTY, DONE or BUSY)."""
        p = self.pipeline
        got = 0
        started = False
        res = self.res
        args = None
        for _ in range(TURN_BATCHES):
            res[:] = 0
            if args is None:
                args = self.arguments()
            else:                                # after Pipeline.taken only the folder's arrays may be new
                args = args[:_FOLD] + (p.folder.kernel_fold(),) + args[_FOLD + 1:]
            poll_loop(r._fd, r._hdrs_at, self._sleep_at, polls, idle, started, p.clock(), p.batch.limit,
                      self._ipfix_ok(), r.columns(), args, res)
            code, n, size, k, done, marked, long_ago, batches = res.tolist()
            got += k
            self.batches += batches
            if marked:
                self._refreshed(marked, long_ago)
            if code == PENDING or code == TAKEN:
                dg, truncated = r.batch_of(n, size)
                if code == PENDING:
                    p.process(dg, truncated)
                    args = None                  # it may have added exporters, templates, rows: all anew
                else:
                    p.taken(dg, p.onecall.took(dg, p.batch))
                polls -= done
                started = True
                continue
            if code == FAILED:                   # Receiver.read meets the error again and handles it
                return got + r.drain(p.process, limit=TURN_BATCHES), DONE
            p.limit_log.report(p.clock())
            return got, code
        return got, BUSY

    def arguments(self) -> tuple:
        """poll_loop's `one`: what the one-call kernels take, as OneCall.run passes it, with room
        for the largest batch rows already has (a batch that needs more is declined: PENDING)."""
        p = self.pipeline
        one, exporters, batch, detector = p.onecall, p.exporters, p.batch, p.detector
        detector.room(batch.capacity)
        one.room(self.slots)
        cache = exporters.templates
        walk, scopes, plans, http, no_opts, templates_col = one.ipfix_arguments(exporters, self.slots)
        if len(self._marks[0]) < len(cache.set_first):
            size = len(cache.set_first)
            self._marks = (np.zeros(size, np.bool_), np.zeros(size, np.int64))
        return (exporters.kernel_state(), one.sflow_arguments(exporters), one.scratch, walk, scopes, plans, http,
                no_opts, templates_col, batch.rows, detector.endpoints, detector.tables, p.folder.kernel_fold(),
                one.out, self._marks)

    def _ipfix_ok(self) -> bool:
        """v9 / IPFIX batches may go to the kernel: no plan compaction due, no data waiting for a
        template (OneCall._ipfix checks the same per batch)."""
        cache = self.pipeline.exporters.templates
        return not cache.compaction_due() and not len(cache.pending)

    def _refreshed(self, marked: int, long_ago: bool) -> None:
        mark, entries = self._marks
        at = entries[:marked].copy()
        mark[at] = False
        self.pipeline.exporters.templates.refreshed(at, bool(long_ago))


def warm_up(pipeline) -> None:
    """Load (or compile) poll_loop in the types `pipeline` passes it live: one poll of an empty
    socket of its own (a datagram socketpair: no address needed)."""
    if not receive.HAVE_RECVMMSG or not receive._LITTLE:
        return
    import socket
    a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
    try:
        a.setblocking(False)
        r = receive.Receiver(a, 1, 64)
        Polls(pipeline, 0.0, 1).run(r, 1)
    finally:
        a.close()
        b.close()
