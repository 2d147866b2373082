"""TLS for the stream sinks: one client context per sink, built from its tls_* keys.

Rules: the receiver's certificate is always verified (against tls_ca_file, else the system store) and
must carry tls_server_name, else the host of `address`; a client certificate is sent when configured.
"""
from __future__ import annotations

import select
import socket
import ssl

__all__ = ["client_context", "Tls", "recv_now", "readable"]


class Tls:
    """What a sink needs to wrap a connection: the context and the name to check."""

    def __init__(self, context: ssl.SSLContext, server_name: str):
        self.context, self.server_name = context, server_name

    def wrap(self, sock: socket.socket) -> ssl.SSLSocket:
        """The handshake, within the socket's timeout; certificate errors are ssl.SSLError (an OSError)."""
        return self.context.wrap_socket(sock, server_hostname=self.server_name)


def client_context(spec) -> Tls:
    """From a SinkSpec: raises OSError naming the file that cannot be read or used."""
    try:
        context = ssl.create_default_context(cafile=spec.tls_ca_file or None)
    except (OSError, ssl.SSLError) as e:
        raise OSError(getattr(e, "errno", None) or 0, f"tls_ca_file {spec.tls_ca_file}: {e.strerror or e}") from None
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    if spec.tls_cert_file:
        try:
            context.load_cert_chain(spec.tls_cert_file, spec.tls_key_file or None)
        except (OSError, ssl.SSLError) as e:
            raise OSError(getattr(e, "errno", None) or 0,
                          f"tls_cert_file {spec.tls_cert_file}: {e.strerror or e}") from None
    return Tls(context, spec.tls_server_name or spec.host)


def readable(sock: socket.socket, timeout: float) -> bool:
    """Data to read (decrypted data TLS already holds counts too)."""
    if isinstance(sock, ssl.SSLSocket) and sock.pending():
        return True
    return bool(select.select([sock], [], [], timeout)[0])


def recv_now(sock: socket.socket) -> bytes | None:
    """What can be read without waiting: bytes, b"" at end of stream, None when nothing is there (a TLS
    record that is not data, such as a session ticket, or half a record)."""
    if not isinstance(sock, ssl.SSLSocket):
        return sock.recv(65536)
    timeout = sock.gettimeout()
    sock.settimeout(0)
    try:
        return sock.recv(65536)
    except (ssl.SSLWantReadError, ssl.SSLWantWriteError, BlockingIOError):
        return None
    finally:
        sock.settimeout(timeout)
