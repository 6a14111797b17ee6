"""gunicorn workers whose own errors are JSON, like every other answer of cms-api.

gunicorn answers some requests itself, before the app sees them, with an HTML page: a
request line over ``limit_request_line`` (414), too many or too large headers (431), a
malformed request line or header (400). Raising the limit would not remove the page: gunicorn
takes at most 8190 bytes or no limit at all, and "no limit" lets one client make a worker
buffer any amount. So the limit stays and the page becomes JSON, chosen by the URL as the
app chooses (cms.api.failures): a spec URL answers its failure value, any other URL outside
/v1 answers 0, /v1 a ``{"title", "description"}`` message.

A request line that is too long is refused before gunicorn knows its path, so each worker
peeks at the first bytes of a request (``MSG_PEEK``: they stay in the socket for gunicorn
to read) and takes the path from there. The status and reason are gunicorn's own: its
handler runs as before, writing its page into a stand-in for the socket, and we send the
JSON with the status line it chose.
"""

from __future__ import annotations

import json
import socket
import threading
from typing import Any

from gunicorn import util
from gunicorn.workers.gthread import ThreadWorker as _GThreadWorker
from gunicorn.workers.sync import SyncWorker as _GSyncWorker

from cms.api.failures import error_body, path_of_request_head

PEEK_BYTES = 2048       # the method and path of any URL cms serves, and then some
PEEK_WAIT_S = 1.0       # at most this long for the first bytes; gunicorn then reads as before

_head = threading.local()   # sync: one request at a time; gthread: one per pool thread


def _peek(sock: socket.socket) -> None:
    _head.data = b""
    try:
        before = sock.gettimeout()
        sock.settimeout(PEEK_WAIT_S)
        try:
            _head.data = sock.recv(PEEK_BYTES, socket.MSG_PEEK)
        finally:
            sock.settimeout(before)
    except OSError:
        pass        # nothing yet, or the client left: gunicorn's own read finds out


class _PageCatcher:
    """Stands in for the client socket while gunicorn writes its HTML error page."""

    def __init__(self, sock: Any) -> None:
        self._sock = sock
        self.data = b""

    def gettimeout(self) -> float:
        return 0.0          # so util.write_nonblock writes here without touching the real socket

    def sendall(self, data: bytes) -> None:
        self.data += data

    def __getattr__(self, name: str) -> Any:
        return getattr(self._sock, name)


def json_error(status_line: str, path: str, exc: BaseException) -> bytes:
    """The whole HTTP answer for a gunicorn error, from the status line gunicorn chose."""
    try:
        _version, code, reason = status_line.split(" ", 2)
        int(code)
    except ValueError:
        code, reason = "500", "Internal Server Error"
    # a 5xx is the server's fault: its exception is in the log, not in the answer
    description = "the server failed this request; its log says why" if code.startswith("5") else str(exc)
    body = json.dumps(error_body(path, reason, description)).encode()
    head = (f"HTTP/1.1 {code} {reason}\r\nConnection: close\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(body)}\r\n\r\n")
    return head.encode("latin-1") + body


class JsonErrors:
    log: Any

    def handle_error(self, req, client, addr, exc) -> None:  # noqa: ANN001 - gunicorn's signature
        page = _PageCatcher(client)
        super().handle_error(req, page, addr, exc)  # type: ignore[misc] - logs, picks the status
        status_line = page.data.split(b"\r\n", 1)[0].decode("latin-1")
        path = getattr(req, "path", None) or path_of_request_head(getattr(_head, "data", b""))
        try:
            util.write_nonblock(client, json_error(status_line, path, exc))
        except Exception:  # noqa: BLE001 - the client may be gone; gunicorn does the same
            self.log.debug("Failed to send error message.")


class SyncWorker(JsonErrors, _GSyncWorker):
    def handle(self, listener, client, addr) -> None:  # noqa: ANN001
        _peek(client)
        super().handle(listener, client, addr)


class ThreadWorker(JsonErrors, _GThreadWorker):
    def handle(self, conn) -> Any:  # noqa: ANN001
        _peek(conn.sock)
        return super().handle(conn)


WORKER_CLASSES = {"sync": f"{__name__}.SyncWorker", "gthread": f"{__name__}.ThreadWorker"}
