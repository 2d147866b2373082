"""receive.Receiver: the one-kernel unpacking of a recvmmsg batch against the numpy reference
(_parse_names), over real loopback sockets, IPv4 and IPv6, with a truncated datagram; batches of at most
`batch` datagrams in arrival order; arrival times from the kernel, else from the injected clock."""
import socket
import time

import pytest

from imds_flow import receive
from tests.support import mutate


@pytest.mark.skipif(not receive.HAVE_RECVMMSG, reason="recvmmsg only")
@pytest.mark.parametrize("family, host", [(socket.AF_INET, "127.0.0.1"), (socket.AF_INET6, "::1")])
def test_unpacked_batch_matches_the_reference(family, host):
    srv = receive.open_socket(host, 0, 1 << 20)
    r = receive.Receiver(srv, 8, 2048)
    receive.warm_up()
    cl = socket.socket(family, socket.SOCK_DGRAM)
    cl.connect(srv.getsockname()[:2])
    try:
        for k in range(5):
            cl.send(bytes([k]) * (100 + k) if k != 4 else b"x" * 3000)      # the last is cut at 2048
        time.sleep(0.05)
        dg, trunc = r.read()
        assert dg.n == 5 and dg.lens.tolist() == [100, 101, 102, 103, 2048]
        assert trunc.tolist() == [False] * 4 + [True]
        assert dg.size == -1 and dg.nbytes() == 100 + 101 + 102 + 103 + 2048    # cut: summed when asked
        hi, lo, port = receive._parse_names(r.names[:dg.n])
        assert (dg.src_hi == hi).all() and (dg.src_lo == lo).all() and (dg.sport == port).all()
        assert dg.sport[0] == cl.getsockname()[1] and abs(dg.ts - time.time()).max() < 5
        assert dg.payload(1) == bytes([1]) * 101
        assert r.read()[0].n == 0
        cl.send(b"abc")                                   # header fields were set back for the next call
        time.sleep(0.05)
        dg, trunc = r.read()
        assert dg.n == 1 and dg.lens.tolist() == [3] and trunc is None and dg.payload(0) == b"abc"
        assert dg.size == 3                               # summed by the receive kernel
    finally:
        cl.close()
        srv.close()


PAYLOADS = [p for ps in mutate.vendor_payloads().values() for p in ps][:10]      # real exporters' datagrams


def sender(srv: socket.socket) -> socket.socket:
    cl = socket.socket(srv.family, socket.SOCK_DGRAM)
    cl.connect(srv.getsockname()[:2])
    return cl


def test_batches_hold_at_most_batch_datagrams_in_arrival_order():
    srv = receive.open_socket("127.0.0.1", 0, 1 << 20)
    r = receive.Receiver(srv, 4, 2048)
    cl = sender(srv)
    try:
        for p in PAYLOADS:
            cl.send(p)
        time.sleep(0.05)
        got = []
        while (dg := r.read()[0]).n:
            assert dg.n <= 4 and (dg.sport == cl.getsockname()[1]).all()
            got.append([dg.payload(i) for i in range(dg.n)])
        assert [len(b) for b in got] == [4, 4, 2] and sum(got, []) == PAYLOADS
    finally:
        cl.close()
        srv.close()


@pytest.mark.skipif(not receive.HAVE_RECVMMSG, reason="recvmmsg only")
def test_arrival_time_is_the_kernels_else_the_injected_clock():
    timestamped = receive.open_socket("127.0.0.1", 0, 1 << 20)         # SO_TIMESTAMPNS on
    plain = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    plain.bind(("127.0.0.1", 0))
    plain.setblocking(False)
    try:
        for srv, clock_used in ((timestamped, False), (plain, True)):
            r = receive.Receiver(srv, 8, 2048, clock=lambda: 42.0)
            cl = sender(srv)
            before = time.time()
            cl.send(PAYLOADS[0])
            cl.close()
            time.sleep(0.05)
            dg = r.read()[0]
            assert dg.n == 1 and dg.payload(0) == PAYLOADS[0]
            assert (dg.ts[0] == 42.0) if clock_used else (before <= dg.ts[0] <= time.time())
    finally:
        timestamped.close()
        plain.close()


def test_the_portable_path_fills_the_same_batch():
    srv = receive.open_socket("127.0.0.1", 0, 1 << 20)
    r = receive.Receiver(srv, 8, 2048, clock=lambda: 42.0)
    r._use_mmsg = False                      # what a host without recvmmsg runs; no public way on Linux
    cl = sender(srv)
    try:
        for p in PAYLOADS[:3]:
            cl.send(p)
        time.sleep(0.05)
        dg, trunc = r.read()
        assert dg.n == 3 and [dg.payload(i) for i in range(3)] == PAYLOADS[:3] and trunc is None
        assert (dg.sport == cl.getsockname()[1]).all() and dg.ts.tolist() == [42.0] * 3
    finally:
        cl.close()
        srv.close()


def test_drain_stops_at_a_partial_batch_or_the_limit_and_empties_the_socket_without_one():
    srv = receive.open_socket("127.0.0.1", 0, 1 << 20)
    r = receive.Receiver(srv, 2, 2048)
    receive.warm_up()
    cl = sender(srv)
    sizes = []
    process = lambda dg, truncated: sizes.append(dg.n)      # noqa: E731

    def send(k):
        for i in range(k):
            cl.send(bytes([i]))
        time.sleep(0.05)
    try:
        send(5)
        assert r.drain(process, limit=64) == 5 and sizes == [2, 2, 1]         # stopped after the partial one
        assert r.drain(process, limit=64) == 0 and sizes == [2, 2, 1]         # empty: nothing handed on
        send(5)
        assert r.drain(process, limit=1) == 2 and sizes[3:] == [2]            # the limit, a full batch
        assert r.drain(process) == 3 and sizes[3:] == [2, 2, 1]               # no limit: until empty
    finally:
        cl.close()
        srv.close()


@pytest.mark.skipif(not receive.HAVE_RECVMMSG, reason="recvmmsg (Linux) only")
def test_the_first_read_into_a_fresh_receiver_faults_no_pages():
    """The slots' first pages are written when the Receiver is made, so the first traffic's reads
    do not stop for page faults (they took 14 ms per 512 datagrams on this project's VM: a stall in
    which the socket buffer overflowed). Counted by the kernel (minor faults), not timed."""
    import resource
    receive.warm_up()                           # the receive kernel loaded: its pages are not counted
    srv = receive.open_socket("127.0.0.1", 0, 4 << 20)
    r = receive.Receiver(srv, 256, 65535)
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as tx:
        for _ in range(256):
            tx.sendto(bytes(1400), srv.getsockname())
    time.sleep(0.05)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    dg, _ = r.read()
    faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before
    srv.close()
    assert dg.n == 256
    assert faults < 16, faults                  # 0 here; 55-65 without the prefault
