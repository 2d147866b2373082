"""Small real receivers on loopback for the sink tests: a msgpack-stream TCP server and a Fluent
forward server (Forward mode, acks chunk ids). Both can stop mid-stream and listen again on the
same port."""
from __future__ import annotations

import select
import socket
import struct
import threading

import msgpack


def _listener(port: int) -> socket.socket:
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind(("127.0.0.1", port))
    s.listen(16)
    return s


class _Server:
    def __init__(self):
        self.port = 0
        self.connections = 0
        self.lock = threading.Lock()
        self._listen: socket.socket | None = None
        self._acceptor: threading.Thread | None = None
        self._threads: list[threading.Thread] = []
        self._accepting = threading.Event()
        self._stopping = threading.Event()

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def start(self) -> "_Server":
        self._stopping.clear()
        self._accepting.set()
        self._listen = _listener(self.port)
        self.port = self._listen.getsockname()[1]
        self._acceptor = threading.Thread(target=self._accept, args=(self._listen,), daemon=True)
        self._acceptor.start()
        self._threads = []
        return self

    def _accept(self, listen: socket.socket) -> None:
        while self._accepting.is_set():
            if not select.select([listen], [], [], 0.05)[0]:
                continue
            try:
                conn, _ = listen.accept()
            except OSError:
                return
            self.connections += 1
            t = threading.Thread(target=self._serve, args=(conn,), daemon=True)
            t.start()
            self._threads.append(t)

    def stop(self) -> None:
        """Stop listening, then end every connection (how, is the subclass's business)."""
        self._accepting.clear()
        self._acceptor.join(10)
        self._listen.close()
        self._stopping.set()
        for t in list(self._threads):
            t.join(10)

    def _serve(self, conn: socket.socket) -> None:
        raise NotImplementedError


class MsgpackServer(_Server):
    """Reads a msgpack stream; stop() closes cleanly: half-close, then read until the sender closes,
    so everything its kernel accepted is read."""

    def __init__(self):
        super().__init__()
        self.received: list[dict] = []

    def _serve(self, conn: socket.socket) -> None:
        unpacker = msgpack.Unpacker(raw=False)
        closing = False
        with conn:
            while True:
                if self._stopping.is_set() and not closing:
                    conn.shutdown(socket.SHUT_WR)
                    closing = True
                if not select.select([conn], [], [], 0.02)[0]:
                    continue
                data = conn.recv(65536)
                if not data:
                    return
                unpacker.feed(data)
                with self.lock:
                    self.received.extend(unpacker)


class BlackholeServer(_Server):
    """Accepts and never reads: the sender's window fills and its sends block."""

    def _serve(self, conn: socket.socket) -> None:
        conn.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        self._stopping.wait()
        conn.close()


def _ext_hook(code: int, data: bytes):
    if code == 0 and len(data) == 8:
        sec, nsec = struct.unpack("!II", data)
        return ("EventTime", sec, nsec)
    return msgpack.ExtType(code, data)


class ForwardServer(_Server):
    """A Fluent forward input: decodes Forward mode [tag, [[time, record], ...], option], checks
    option size, records the events of a message and acks its chunk. With die_after=N, the first
    message that arrives once N events are recorded is neither recorded nor acked: the server resets
    the connection and stops listening, as a receiver that crashes mid-stream."""

    def __init__(self, die_after: int | None = None):
        super().__init__()
        self.events: list[tuple[str, object, dict]] = []
        self.messages: list[dict] = []          # option of every recorded message
        self.die_after = die_after
        self.died = threading.Event()

    def _serve(self, conn: socket.socket) -> None:
        unpacker = msgpack.Unpacker(raw=False, ext_hook=_ext_hook)
        with conn:
            while not self._stopping.is_set():
                if not select.select([conn], [], [], 0.02)[0]:
                    continue
                data = conn.recv(65536)
                if not data:
                    return
                unpacker.feed(data)
                for msg in unpacker:
                    tag, entries, option = msg            # Forward mode only
                    assert isinstance(tag, str) and isinstance(entries, list) and option["size"] == len(entries)
                    if self.die_after is not None and len(self.events) >= self.die_after and not self.died.is_set():
                        self.died.set()
                        self._accepting.clear()           # the test calls stop() and start() again
                        conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                        return                            # closes with a reset, no ack
                    with self.lock:
                        self.events.extend((tag, t, record) for t, record in entries)
                        self.messages.append(option)
                    if "chunk" in option:
                        conn.sendall(msgpack.packb({"ack": option["chunk"]}))
