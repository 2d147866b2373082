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
