"""HTTP/1.1 keep-alive client connections and their response parser, for the load engine.

One request at a time per connection (no pipelining). A connection only finds where a
response ends (Content-Length, chunked, or the end of the connection) and hands status and
body to its owner; what the answer means is the owner's business. The owner implements
the ConnOwner callbacks; everything runs on one asyncio loop, in callbacks, not tasks.

Connections read into one scratch buffer their owner lends them (asyncio's buffered
protocol: recv_into), not into a fresh 256 KiB bytes per read as a plain Protocol does.
Depending on malloc's mmap threshold, that allocation costs an mmap, mremap and munmap per
response, which halved the client's request rate in bench/loadgen.py.
"""

from __future__ import annotations

import asyncio
from typing import Any, Protocol

MAX_HEAD = 65536
SCRATCH_BYTES = 65536   # a read larger than this takes several; the parser keeps what it has


def scratch_buffer() -> memoryview:
    """A read buffer for the connections of one owner (one loop): reads are handled one at
    a time, each copied out before the next."""
    return memoryview(bytearray(SCRATCH_BYTES))


class ConnOwner(Protocol):
    def connection_ready(self, conn: "Conn") -> None:
        """The connection is up and has no request: give it one or park it."""

    def response(self, conn: "Conn", req: Any, status: int, body: bytes) -> None:
        """A whole response to `req` arrived; `conn.closing` says whether the server closes."""

    def bad_response(self, conn: "Conn", req: Any) -> None:
        """The answer to `req` could not be parsed; the connection is already aborted."""

    def connection_closed(self, conn: "Conn", req: Any) -> None:
        """The connection is gone; `req` is the request it still carried, or None."""


class Conn(asyncio.BufferedProtocol):
    """One HTTP/1.1 keep-alive connection to one peer."""

    __slots__ = ("owner", "peer", "scratch", "transport", "buf", "req", "closing", "until_close")

    def __init__(self, owner: ConnOwner, peer: Any, scratch: memoryview) -> None:
        self.owner = owner
        self.peer = peer            # what the owner opened it for (the engine's backend)
        self.scratch = scratch      # see scratch_buffer()
        self.transport: asyncio.Transport | None = None
        self.buf = b""
        self.req: Any = None        # the request in flight, if any
        self.closing = False
        self.until_close = False

    # --- what the owner calls --------------------------------------------------------------

    def send(self, req: Any, data: bytes) -> None:
        self.req = req
        self.transport.write(data)  # type: ignore[union-attr]

    def close(self) -> None:
        self.closing = True
        self.transport.close()  # type: ignore[union-attr]

    def abort(self) -> Any:
        """Drop the connection at once; returns the request it carried (None if idle)."""
        req = self.req
        self.req = None
        self.closing = True
        self.transport.abort()  # type: ignore[union-attr]
        return req

    # --- asyncio.BufferedProtocol -------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        self.owner.connection_ready(self)

    def connection_lost(self, exc: Exception | None) -> None:
        if self.until_close and self.req is not None:
            # a response delimited by the end of the connection (no length, not chunked)
            hend = self.buf.find(b"\r\n\r\n")
            if hend >= 0:
                self.until_close = False
                self._deliver(self.buf, hend, self.buf[hend + 4:], True)
        req = self.req
        self.req = None
        self.owner.connection_closed(self, req)

    def eof_received(self) -> bool | None:
        return None  # close our side too

    def get_buffer(self, sizehint: int) -> memoryview:
        return self.scratch

    def buffer_updated(self, nbytes: int) -> None:
        self._parse(self.scratch[:nbytes].tobytes())

    def _parse(self, data: bytes) -> None:
        if self.buf:
            data = self.buf + data
            self.buf = b""
        if self.req is None:
            # nothing was asked: a confused server; drop the connection
            self.closing = True
            self.transport.abort()  # type: ignore[union-attr]
            return
        if self.until_close:
            self.buf = data
            return
        hend = data.find(b"\r\n\r\n")
        if hend < 0:
            if len(data) > MAX_HEAD:
                self._bad()
                return
            self.buf = data
            return
        head = data[:hend].lower()
        i = head.find(b"\ncontent-length:")
        if i >= 0:
            j = head.find(b"\r", i + 16)
            try:
                clen = int(head[i + 16:j] if j >= 0 else head[i + 16:])
            except ValueError:
                self._bad()
                return
            end = hend + 4 + clen
            if len(data) < end:
                self.buf = data
                return
            if len(data) > end:
                self._bad()  # bytes after the response: nothing was asked for them
                return
            self._deliver(data, hend, data[hend + 4:end], b"\nconnection: close" in head)
        elif b"\ntransfer-encoding: chunked" in head:
            body = dechunk(data, hend + 4)
            if body is None:
                self.buf = data
                return
            if body is False:
                self._bad()
                return
            self._deliver(data, hend, body, b"\nconnection: close" in head)  # type: ignore[arg-type]
        else:
            self.until_close = True
            self.buf = data

    def _deliver(self, data: bytes, hend: int, body: bytes, close: bool) -> None:
        try:
            status = int(data[9:12])
        except ValueError:
            self._bad()
            return
        req = self.req
        self.req = None
        if close:
            self.closing = True
        self.owner.response(self, req, status, body)

    def _bad(self) -> None:
        self.buf = b""
        req = self.abort()
        if req is not None:
            self.owner.bad_response(self, req)


def dechunk(data: bytes, pos: int) -> bytes | None | bool:
    """The body of a chunked message starting at pos; None if incomplete, False if malformed."""
    parts = []
    n = len(data)
    for _ in range(100000):
        eol = data.find(b"\r\n", pos)
        if eol < 0:
            return None
        try:
            size = int(data[pos:eol].split(b";", 1)[0], 16)
        except ValueError:
            return False
        pos = eol + 2
        if size == 0:
            # trailers end with an empty line
            end = data.find(b"\r\n\r\n", pos - 2)
            if end < 0:
                return None
            return b"".join(parts)
        if n < pos + size + 2:
            return None
        parts.append(data[pos:pos + size])
        pos += size + 2
    return False


class ConnPool:
    """The keep-alive connections to one address: open, idle, and being opened."""

    __slots__ = ("address", "port", "requests", "conns", "idle", "connecting")

    def __init__(self, address: str, port: int, paths: list[bytes]) -> None:
        self.address = address
        self.port = port
        host = f"{address}:{port}".encode()
        # each request's bytes, built once: the hot path only writes one of them
        self.requests = [b"GET " + p + b" HTTP/1.1\r\nHost: " + host + b"\r\n\r\n" for p in paths]
        self.conns: set[Conn] = set()
        self.idle: list[Conn] = []
        self.connecting = 0

    def should_open(self, waiting: int, max_conns: int) -> bool:
        """Whether `waiting` queued requests warrant one more connection."""
        return self.connecting < waiting and len(self.conns) + self.connecting < max_conns

    def forget(self, conn: Conn) -> None:
        self.conns.discard(conn)
        if conn in self.idle:
            self.idle.remove(conn)

    def close_idle(self) -> None:
        for c in self.idle:
            c.close()
        self.idle.clear()

    def abort_all(self) -> None:
        for c in list(self.conns):
            c.abort()
