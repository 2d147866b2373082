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
  alerts are held or could not be folded in the kernel, alerts that leave when no file takes them
  here): Pipeline.taken finishes it, as Pipeline.process does after OneCall.run;
- UNWRITTEN: as TAKEN, with alerts _leave packed but did not write (wholly): Python's sink path
  writes them (rotation, a full disk's accounting);
- EMPTY: `idle` polls in a row found the socket empty (serve.py hands it back to epoll);
- DONE / BUSY: `polls` polls done (BUSY: the last one drained TURN_BATCHES full batches: more wait);
- FAILED: recvmmsg failed with an error other than EAGAIN / EINTR (res[1]: errno): Receiver.read
  meets it again and handles it as before (ENOSYS: the portable path; others raise).

A batch taken with nothing left for Python (no hit, or hits folded into windows already open, no
datagram rejected) never leaves the kernel: its counters, sequence state and folds are in the
arrays Python reads. Alerts leave as soon as their batch is read, as before. When the only sink is
an alert file taking msgpack (Pipeline.direct_sink), the alerts that leave at once (a new fold
key's first, every one of a key past limits.max_fold_keys, or every one with no folding window: an
alert flood's) are packed and appended to it
here (_leave), one write() a batch, so such a batch stays in the kernel too: in an alert flood
(the sFlow bench: 1 sample in 1000 aimed at the endpoint, every one from a new source) a third of
the batches had come back to Python for ~200 us each on a cold core. v9 / IPFIX template
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
from .alertpack import Packer, _pack_hits, _pack_leaving
from .jit import kernel, step
from .metrics import Latency
from .onecall import WALK_ENTRIES, ipfix_batch, sflow_batch, v5_batch

__all__ = ["Polls", "poll_loop", "usable", "timespec", "EMPTY", "DONE", "BUSY", "PENDING", "TAKEN", "FAILED",
           "UNWRITTEN"]

EMPTY, DONE, BUSY, PENDING, TAKEN, FAILED, UNWRITTEN = range(7)
TURN_BATCHES = 64                          # most batches one poll drains (serve.py's turn of the loop)
_FOLD = 12                                 # the folder's place in poll_loop's `one` (Polls.arguments)
_RES = 8                                   # code, n, size, datagrams, poll, marked, long_ago, batches
_EAGAIN, _EINTR = errno.EAGAIN, errno.EINTR
_MSG_DONTWAIT = receive.MSG_DONTWAIT
_VOIDP = ir.IntType(8).as_pointer()


def recvmmsg_with(flags: int):
    """An intrinsic for libc's recvmmsg(fd, vec, vlen, flags, NULL); vec an address (int64). The
    polls read with MSG_DONTWAIT; bench/bare.py waits in the kernel (MSG_WAITFORONE)."""
    @intrinsic
    def recvmmsg(typingctx, fd, vec, vlen):
        def codegen(context, builder, signature, args):
            i32 = ir.IntType(32)
            fn = cgutils.get_or_insert_function(builder.module, ir.FunctionType(i32, [i32, _VOIDP, i32, i32, _VOIDP]),
                                                "recvmmsg")
            return builder.call(fn, [args[0], builder.inttoptr(args[1], _VOIDP), args[2],
                                     ir.Constant(i32, flags), ir.Constant(_VOIDP, None)])
        return types.int32(types.int32, types.int64, types.int32), codegen
    return recvmmsg


_recvmmsg = recvmmsg_with(_MSG_DONTWAIT)


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


@intrinsic
def _write(typingctx, fd, data, size):
    """libc's write(fd, data, size); data an array (its first `size` bytes are written)."""
    def codegen(context, builder, signature, args):
        i32, i64 = ir.IntType(32), ir.IntType(64)
        at = context.make_array(signature.args[1])(context, builder, args[1]).data
        fn = cgutils.get_or_insert_function(builder.module, ir.FunctionType(i64, [i32, _VOIDP, i64]), "write")
        return builder.call(fn, [builder.trunc(args[0], i32), builder.bitcast(at, _VOIDP), args[2]])
    return types.int64(types.int64, data, types.int64), codegen


@intrinsic
def _realtime(typingctx, spec):
    """libc's clock_gettime(CLOCK_REALTIME, spec) (time.time()'s clock); spec an int64[2] array."""
    def codegen(context, builder, signature, args):
        i32 = ir.IntType(32)
        at = context.make_array(signature.args[0])(context, builder, args[0]).data
        fn = cgutils.get_or_insert_function(builder.module, ir.FunctionType(i32, [i32, _VOIDP]), "clock_gettime")
        builder.call(fn, [ir.Constant(i32, 0), builder.bitcast(at, _VOIDP)])
        return context.get_dummy_value()
    return types.none(spec), codegen


@step
def _leave(sink, groups, hits, tables, rows, buf, fold):
    """The alerts that leave a batch at once, packed by alertpack's kernels and appended to the
    alert file here, their latency counted (what Folder.finish's first part, or Folder._emit_all
    with no folding window, and Pipeline.flush do); `sink` as Polls.sink makes it. With a window
    they are new fold keys' lone hits' (an alert flood's) and the hits of keys past
    limits.max_fold_keys; without, every hit's. Returns 0 when
    nothing is left for Python; TAKEN when groups are (held alerts, a window to reopen: written
    alerts' groups have kind 0, so Folder.finish does only the rest), or when nothing was packed
    (scratch or out too small: Python grows them; an alert only hit_alerts can say); UNWRITTEN
    when the alerts are packed but not (wholly) written: the file would pass its rotation size,
    or write() failed or was cut short (acct[4]: what it returned); Python writes them (Polls.run)."""
    acct, spec, latency, edges, pack = sink
    (scratch, e_buf, e_off, e_port, consts, c_off, base, n_headers, keys, k_off, test, n_test, port, fields, out,
     packed) = pack
    kind, ints, window = fold[4], fold[1], fold[8]
    if hits > scratch[0].shape[0]:
        return TAKEN
    if window <= 0:
        if _pack_hits(hits, tables[4], tables[5], tables[6], rows, scratch, e_buf, e_off, e_port, consts, c_off, base,
                      n_headers, keys, k_off, buf, buf, test, n_test, port, fields, out, packed) != 0 or not packed[0]:
            return TAKEN
    elif _pack_leaving(kind, ints, groups, hits, tables[4], tables[5], tables[6], rows, scratch, e_buf, e_off, e_port,
                       consts, c_off, base, n_headers, keys, k_off, buf, buf, test, n_test, port, fields, out,
                       packed) != 0:
        return TAKEN
    k, size = packed[0], packed[1]
    if k > 0:
        if acct[1] > 0 and acct[2] + size > acct[1]:
            acct[4] = 0
            return UNWRITTEN
        wrote = _write(acct[0], out, size)
        if wrote != size:
            acct[4] = wrote
            return UNWRITTEN
        acct[2] += size
        acct[3] += k
        _realtime(spec)
        now = spec[0] + spec[1] * 1e-9
        stamps = scratch[5]
        for i in range(k):
            latency[np.searchsorted(edges, max(now - stamps[i, 0], 0.0), side="right") - 1] += 1
    if window > 0:
        for j in range(groups):
            if kind[j] != 0:
                return TAKEN
    return 0


@kernel
def poll_loop(fd, hdrs_at, sleep_at, polls, idle, started, now, limit, ipfix_ok, recv, one, sink, res):
    """Up to `polls` polls of socket `fd` (module docstring); res = (code, the last batch's
    datagrams and size (-1: one was truncated), datagrams read, the poll it ended in, template
    set entries marked, a refresh long after the last, batches read). EMPTY after `idle` polls in
    a row found nothing. `started`: the first poll continues one that already read datagrams (no
    sleep before it, not empty). recv: the Receiver's mmsghdr
    rows and columns; one: the one-call kernels' arguments (Polls.arguments); sink: _leave's
    (Polls.sink), its acct[0] -1 when alerts are written by Python only."""
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
            opened = counters[1]
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
            if out[1] or out[2] and (out[6] < 0 or counters[1] != opened or counters[2]):
                code = TAKEN
                if sink[0][0] >= 0 and not out[1] and (out[6] >= 0 or fold[8] <= 0):
                    code = _leave(sink, out[6], out[2], tables, rows, buf, fold)
                if code:
                    res[0] = code
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
        # _leave's: the alert file's descriptor (-1: none), rotation size, size, alerts written since
        # Python last heard, what a failed write returned; its clock; a Packer of the same types
        # where the pipeline has none (alerts in another format): the kernel's types never change
        self._acct = np.array([-1, 0, 0, 0, 0], np.int64)
        self._spec = np.zeros(2, np.int64)
        self._packer = pipeline.folder.packer or Packer((), 0)

    def run(self, r, polls: int, idle: int = 1) -> tuple[int, int]:
        """Up to `polls` polls of Receiver r, the first at once, `coalesce` apart, until `idle` in a
        row find nothing; returns (datagrams read, EMPTY, DONE or BUSY)."""
        p = self.pipeline
        got = 0
        started = False
        res, acct = self.res, self._acct
        args = None
        for _ in range(TURN_BATCHES):
            res[:] = 0
            if args is None:
                args = self.arguments()
            else:                                # after Pipeline.taken only the folder's arrays may be new
                args = args[:_FOLD] + (p.folder.kernel_fold(),) + args[_FOLD + 1:]
            sink = self.sink()
            poll_loop(r._fd, r._hdrs_at, self._sleep_at, polls, idle, started, p.clock(), p.batch.limit,
                      self._ipfix_ok(), r.columns(), args, sink, res)
            code, n, size, k, done, marked, long_ago, batches = res.tolist()
            got += k
            self.batches += batches
            if marked:
                self._refreshed(marked, long_ago)
            p.folder.folded()                    # windows the kernel opened (Folder.windows, max_fold_keys)
            if acct[3]:                          # alerts _leave wrote
                p.sink.wrote(int(acct[3]), int(acct[2]))
                p.alerts_written += int(acct[3])
                acct[3] = 0
            if code == PENDING or code == TAKEN or code == UNWRITTEN:
                dg, truncated = r.batch_of(n, size)
                if code == PENDING:
                    p.process(dg, truncated)
                    args = None                  # it may have added exporters, templates, rows: all anew
                else:
                    took = p.onecall.took(dg, p.batch)
                    if code == UNWRITTEN:        # packed, not (wholly) written: Python's sink path writes them
                        self._unwritten(int(acct[4]))
                        if p.folder.window <= 0:   # every hit's alert, none left to fold
                            took = (took[0], 0, took[2])
                    self._packer.room(took[1])
                    p.taken(dg, took)
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

    def sink(self) -> tuple:
        """poll_loop's `sink` (_leave's): the alert file compiled code may append to, when the
        pipeline's alerts are msgpack (packed by its Folder's Packer) and its only sink is that
        file (Pipeline.direct_sink), else the same types with acct[0] = -1."""
        p, acct = self.pipeline, self._acct
        fd, max_bytes, size = p.direct_sink() or (-1, 0, 0)
        acct[:] = fd, max_bytes, size, 0, 0
        d = p.detector
        return (acct, self._spec, p.latency.counts, Latency.EDGES,
                self._packer.leaving_arguments(p.exporters, d.names, d.signals, d.header_names))

    def _unwritten(self, wrote: int) -> None:
        """_leave packed alerts it did not write (wholly): a write cut short is undone (the file
        keeps whole alerts only), then they go where Folder.finish would have put them."""
        p = self.pipeline
        if wrote > 0:
            p.sink.cut(wrote)
        p.folder.emit_packed_many(*self._packer.packed().split())

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
