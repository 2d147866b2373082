"""Listening sockets: parse [HOST]:PORT, bind with the receive options, before anything heavy.

Kept free of numpy and numba so the CLI binds within milliseconds of starting: exports that arrive
while the kernels load wait in the socket buffer instead of being refused (ICMP port unreachable).
"""
from __future__ import annotations

import logging
import os
import socket
from pathlib import Path
from typing import Callable

__all__ = ["parse_host_port", "parse_listen", "open_socket", "open_sockets", "inherited_sockets", "set_rcvbuf", "close_sockets", "fmt_address",
           "udp_sockets", "kernel_drops", "SO_REUSEPORT"]

log = logging.getLogger("imds_flow")

SO_RCVBUFFORCE = 33
SO_TIMESTAMPNS = 35                          # kernel arrival time of each datagram (SCM_TIMESTAMPNS)
SO_REUSEPORT = getattr(socket, "SO_REUSEPORT", 15)


def parse_host_port(text: str, what: str, *, listen: bool = False) -> tuple[str, int]:
    """The one '[HOST]:PORT' parser: (host, port); IPv6 hosts in brackets ('[::1]:2055').

    listen=True (addresses to bind): the host may be empty (':2055', every IPv4 address) and the
    port 0 (the kernel picks one). Otherwise (where to send: sinks, probe) a host is required and
    the port is 1..65535. Raises ValueError naming `what` and the text."""
    host, sep, port = text.rpartition(":")
    example = ":2055 or [::]:2055" if listen else "host:514 or [2001:db8::1]:514"
    if not sep or not (host or listen):
        raise ValueError(f"{what} {text!r}: expected {'[HOST]:PORT' if listen else 'host:port'}, e.g. {example}")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    elif ":" in host:
        raise ValueError(f"{what} {text!r}: write IPv6 hosts in brackets, e.g. [::1]:2055")
    low = 0 if listen else 1
    if not port.isdigit() or not low <= int(port) <= 65535:
        raise ValueError(f"{what} {text!r}: port must be {low}..65535")
    return (host or "0.0.0.0") if listen else host, int(port)


def parse_listen(text: str) -> tuple[str, int]:
    """'[HOST]:PORT' to bind: ':2055', '127.0.0.1:2055', '[::]:2055', '[::1]:2055'."""
    return parse_host_port(text, "listen address", listen=True)


def open_socket(host: str, port: int, rcvbuf: int | None, v6only: bool = False, reuseport: bool = False) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_DGRAM)
    try:
        if family == socket.AF_INET6:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1 if v6only else 0)
        if reuseport:
            sock.setsockopt(socket.SOL_SOCKET, SO_REUSEPORT, 1)
        if rcvbuf is not None:
            _set_rcvbuf(sock, rcvbuf)
        sock.bind((host, port))
        _listen_options(sock)
    except OSError:
        sock.close()
        raise
    return sock


def _listen_options(sock: socket.socket) -> None:
    try:                                     # kernel arrival time of each datagram
        sock.setsockopt(socket.SOL_SOCKET, SO_TIMESTAMPNS, 1)
    except OSError:
        pass
    sock.setblocking(False)


def open_sockets(listen: list[tuple[str, int]], rcvbuf: int | None, copies: int = 1) -> list[list[socket.socket]]:
    """`copies` sockets per address (SO_REUSEPORT when more than one: the kernel then spreads
    exporters over them by address and port, so one exporter always reaches the same copy).
    Port 0 picks one free port shared by every copy. Raises OSError naming the address.
    rcvbuf None keeps the kernel's default buffer (set_rcvbuf sets it later)."""
    v4_ports = {p for h, p in listen if ":" not in h}
    out: list[list[socket.socket]] = []
    try:
        for host, port in listen:
            group = []
            out.append(group)
            for _ in range(copies):
                v6only = ":" in host and port in v4_ports
                try:
                    sock = open_socket(host, port, rcvbuf, v6only=v6only, reuseport=copies > 1)
                except OSError as e:
                    raise OSError(e.errno, f"cannot listen on {fmt_address((host, port))}: {e.strerror}") from None
                group.append(sock)
                port = sock.getsockname()[1]
    except OSError:
        close_sockets(out)
        raise
    return out


def inherited_sockets(listen: list[tuple[str, int]], copies: int = 1) -> list[list[socket.socket]] | None:
    """The datagram sockets systemd passed (socket activation: LISTEN_PID is this process, the
    sockets are fds 3 .. 3 + LISTEN_FDS - 1), one group per address of `listen` in its order, or None
    when nothing was passed. The kernel queued every export from the moment systemd bound them,
    through this process's start and across restarts. Every address must be one systemd bound, and
    every passed socket must be listened on; `copies` > 1 binds more SO_REUSEPORT sockets beside each
    (the .socket unit then needs ReusePort=yes). Raises ValueError naming what does not match,
    OSError when a worker's socket cannot be added."""
    if os.environ.get("LISTEN_PID") != str(os.getpid()) or not os.environ.get("LISTEN_FDS", "").isdigit():
        return None
    count = int(os.environ["LISTEN_FDS"])
    for name in ("LISTEN_PID", "LISTEN_FDS", "LISTEN_FDNAMES"):    # not for the processes we start
        os.environ.pop(name, None)
    passed = {}
    for fd in range(3, 3 + count):
        sock = socket.socket(fileno=fd)
        if sock.type != socket.SOCK_DGRAM:
            raise ValueError(f"socket activation: fd {fd} is not a datagram socket (use ListenDatagram=)")
        passed[_key(sock.getsockname())] = sock
    groups = []
    for host, port in listen:
        sock = passed.pop(_key((host, port)), None)
        if sock is None:
            raise ValueError(f"socket activation: systemd passed no socket for {fmt_address((host, port))} "
                             f"(it passed {', '.join(fmt_address(k) for k in passed) or 'none'})")
        _listen_options(sock)
        group = [sock]
        for _ in range(copies - 1):
            try:
                group.append(open_socket(host, port, None, v6only=_v6only(sock), reuseport=True))
            except OSError as e:
                raise OSError(e.errno, f"cannot add a worker's socket on {fmt_address((host, port))}: {e.strerror} "
                                       "(set ReusePort=yes in the .socket unit)") from None
        groups.append(group)
    if passed:
        raise ValueError(f"socket activation: systemd passed {', '.join(fmt_address(k) for k in passed)}, "
                         "which is not among the addresses to listen on")
    return groups


def _key(addr) -> tuple[str, int]:
    """An address as (normalised host, port), so that '::' and '[::]:2055' compare equal."""
    import ipaddress
    return str(ipaddress.ip_address(addr[0] or "0.0.0.0")), int(addr[1])


def _v6only(sock: socket.socket) -> bool:
    return sock.family == socket.AF_INET6 and bool(sock.getsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY))


def close_sockets(groups: list[list[socket.socket]]) -> None:
    for group in groups:
        for sock in group:
            sock.close()


def set_rcvbuf(groups: list[list[socket.socket]], want: int) -> None:
    """SO_RCVBUF of bound sockets (Linux lets it change at any time; queued datagrams stay)."""
    for group in groups:
        for sock in group:
            _set_rcvbuf(sock, want)


def _set_rcvbuf(sock: socket.socket, want: int) -> None:
    if sock.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF) // 2 >= want:
        return                               # already as large (systemd's ReceiveBuffer=): never shrink it
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, want)
    got = sock.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF) // 2   # Linux reports twice the value
    if got < want:
        try:                                 # root (CAP_NET_ADMIN) may pass net.core.rmem_max
            sock.setsockopt(socket.SOL_SOCKET, SO_RCVBUFFORCE, want)
            got = sock.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF) // 2
        except OSError:
            pass
    if got < want:
        log.warning("SO_RCVBUF capped by the kernel at %d bytes (asked %d): bursts may be dropped; "
                    "raise net.core.rmem_max (sysctl -w net.core.rmem_max=%d)", got, want, want)


def fmt_address(addr) -> str:
    host, port = addr[0], addr[1]
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def udp_sockets(port: int | None = None, inodes: set[int] | None = None) -> list[dict]:
    """The rows of /proc/net/udp and udp6 (Linux; none elsewhere) bound to `port` and whose inode is
    in `inodes` (either may be None: any): local address, rx_queue (bytes waiting), inode, drops
    (datagrams the kernel dropped: the socket's receive queue was full)."""
    rows = []
    want = None if port is None else f":{port:04X}"
    for table in ("/proc/net/udp", "/proc/net/udp6"):
        try:
            lines = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            f = line.split()
            if len(f) < 13 or (want is not None and not f[1].endswith(want)):
                continue
            inode = int(f[9])
            if inodes is not None and inode not in inodes:
                continue
            rows.append({"local": f[1], "rx_queue": int(f[4].split(":")[1], 16), "inode": inode,
                         "drops": int(f[12])})
    return rows


def kernel_drops(socks: list[socket.socket]) -> Callable[[], int]:
    """A counter of the datagrams the kernel dropped on `socks` (their receive queues were full)."""
    inodes = {os.fstat(s.fileno()).st_ino for s in socks}
    return lambda: sum(row["drops"] for row in udp_sockets(inodes=inodes))
