"""receive.Receiver: the one-kernel unpacking of a recvmmsg batch against the numpy reference
(_parse_names), over real loopback sockets, IPv4 and IPv6, with a truncated datagram."""
import socket
import time

import pytest

from imds_flow import receive


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
        hi, lo, port = receive._parse_names(r.names[:dg.n])
        assert (dg.src_hi == hi).all() and (dg.src_lo == lo).all() and (dg.sport == port).all()
        assert dg.sport[0] == cl.getsockname()[1] and abs(dg.ts - time.time()).max() < 5
        assert dg.payload(1) == bytes([1]) * 101
        assert r.read()[0].n == 0
        cl.send(b"abc")                                   # header fields were set back for the next call
        time.sleep(0.05)
        dg, trunc = r.read()
        assert dg.n == 1 and dg.lens.tolist() == [3] and trunc is None and dg.payload(0) == b"abc"
    finally:
        cl.close()
        srv.close()


def test_drain_stops_at_a_partial_batch_or_the_limit_and_empties_the_socket_without_one():
    srv = receive.open_socket("127.0.0.1", 0, 1 << 20)
    r = receive.Receiver(srv, 2, 2048)
    receive.warm_up()
    cl = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    cl.connect(srv.getsockname()[:2])
    sizes = []
    process = lambda dg, truncated: sizes.append(dg.n)      # noqa: E731

    def send(k):
        for i in range(k):
            cl.send(bytes([i]))
        time.sleep(0.05)
    try:
        send(5)
        assert r.drain(process, limit=64) is True and sizes == [2, 2, 1]      # stopped after the partial one
        assert r.drain(process, limit=64) is False and sizes == [2, 2, 1]     # empty: nothing handed on
        send(5)
        assert r.drain(process, limit=1) is False and sizes[3:] == [2]        # the limit, a full batch
        assert r.drain(process) is False and sizes[3:] == [2, 2, 1]           # no limit: until empty
    finally:
        cl.close()
        srv.close()
