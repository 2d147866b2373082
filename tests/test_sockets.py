"""sockets: the one [HOST]:PORT parser; listening sockets (copies sharing a port, a taken port named in
the error); /proc/net/udp rows of our own sockets and the drops the kernel counts on them."""
import os
import re
import socket
import time

import pytest

from imds_flow.sockets import (close_sockets, fmt_address, inherited_sockets, kernel_drops, open_socket, open_sockets,
                               parse_host_port, parse_listen, set_rcvbuf, udp_sockets)


@pytest.mark.parametrize("text,want", [
    (":2055", ("0.0.0.0", 2055)), ("127.0.0.1:2055", ("127.0.0.1", 2055)), ("[::]:2055", ("::", 2055)),
    ("[::1]:0", ("::1", 0)), ("collector.example:6343", ("collector.example", 6343))])
def test_parse_listen(text, want):
    assert parse_listen(text) == want


@pytest.mark.parametrize("text,message", [
    ("2055", "expected [HOST]:PORT"), ("::1:2055", "brackets"), ("127.0.0.1:65536", "0..65535"),
    ("127.0.0.1:x", "0..65535")])
def test_parse_listen_errors(text, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        parse_listen(text)


def test_destinations_need_a_host_and_a_port_from_1():
    assert parse_host_port("[2001:db8::1]:514", "sink") == ("2001:db8::1", 514)
    with pytest.raises(ValueError, match=r"sink ':514': expected host:port"):
        parse_host_port(":514", "sink")
    with pytest.raises(ValueError, match="1..65535"):
        parse_host_port("h:0", "sink")


def test_fmt_address():
    assert fmt_address(("127.0.0.1", 2055)) == "127.0.0.1:2055" and fmt_address(("::1", 2055, 0, 0)) == "[::1]:2055"


def test_copies_share_one_port_and_a_taken_port_is_named():
    groups = open_sockets([("127.0.0.1", 0), ("::1", 0)], 1 << 20, copies=2)
    try:
        assert [len(g) for g in groups] == [2, 2]
        for g in groups:
            assert g[0].getsockname()[1] == g[1].getsockname()[1] != 0
            assert g[0].getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF) > 0 and g[0].getblocking() is False
        taken = groups[0][0].getsockname()[1]
        with pytest.raises(OSError, match=f"cannot listen on 127.0.0.1:{taken}"):
            open_sockets([("127.0.0.1", taken)], 1 << 20)
    finally:
        close_sockets(groups)
    assert all(s.fileno() == -1 for g in groups for s in g)


def test_proc_rows_and_kernel_drops_of_our_socket():
    sock = open_socket("127.0.0.1", 0, 4096)            # a tiny receive buffer, never read
    port = sock.getsockname()[1]
    drops = kernel_drops([sock])
    try:
        assert drops() == 0
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as tx:
            for _ in range(200):
                tx.sendto(b"x" * 1400, ("127.0.0.1", port))
        time.sleep(0.05)
        rows = udp_sockets(port)
        assert len(rows) == 1 and rows[0]["inode"] == os.fstat(sock.fileno()).st_ino
        assert rows[0]["local"].endswith(f":{port:04X}") and rows[0]["rx_queue"] > 0
        assert drops() == rows[0]["drops"] > 0
        assert udp_sockets(inodes={rows[0]["inode"]}) == rows
    finally:
        sock.close()
    assert udp_sockets(port) == []


def _rcvbuf(sock) -> int:
    return sock.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF) // 2


def test_the_buffer_grows_after_the_bind_and_never_shrinks():
    """listen binds first with the kernel's default buffer and sets listen.rcvbuf_bytes once the config
    is read; a buffer already larger (systemd's ReceiveBuffer=) stays as it is."""
    groups = open_sockets([("127.0.0.1", 0)], None)
    sock = groups[0][0]
    default = _rcvbuf(sock)
    try:
        set_rcvbuf(groups, default + 65536)         # within rmem_max, or forced as root
        grown = _rcvbuf(sock)
        assert grown >= default + 65536
        set_rcvbuf(groups, 4096)
        assert _rcvbuf(sock) == grown
    finally:
        close_sockets(groups)


def test_no_socket_activation_without_listen_pid_of_this_process(monkeypatch):
    monkeypatch.setenv("LISTEN_FDS", "1")
    monkeypatch.delenv("LISTEN_PID", raising=False)
    assert inherited_sockets([("127.0.0.1", 2055)]) is None
    monkeypatch.setenv("LISTEN_PID", str(os.getpid() + 1))      # meant for another process
    assert inherited_sockets([("127.0.0.1", 2055)]) is None
    assert os.environ["LISTEN_FDS"] == "1"
