"""The guest server's HTTP/1.1 side: one client connection's requests and their answers.

Standard library only, like the server beside it (cms_guest_server.py, which documents the
contract: the routes, their answers and the limits here). A Handler serves one connection
in the worker thread that accepted it: requests in a loop (keep-alive) until either side
closes, each parsed, routed and answered with a JSON body.

It knows the pre-fork worker that accepted the connection only through these calls, so
the shared counters and what they mean stay in the server module:
  worker.busy(delta)       the connection starts (+1) or stops (-1) keeping the worker busy
  worker.answered(delta)   a request is between its request line and its reply (+1, then -1)
  worker.compute(p, c)     cms_work.result(p, c), counted as in flight and then served
  worker.observe(s)        a /work answer took s seconds (request line read -> answer computed)
  worker.info["hostname"]  the hostname a /work answer names
  worker.health()          "ok", "starting" or "stopping"
  worker.status()          the /status body
"""

from __future__ import annotations

import json
import os
import socket
import time
from urllib.parse import parse_qs, urlsplit

import cms_work

MAX_BODY = 65536
MAX_LINE = 8192
MAX_HEADERS = 100
IDLE_TIMEOUT_S = 75.0

ROUTES = {"/work": ("GET", "POST"), "/health": ("GET",), "/status": ("GET",)}

REASONS = {200: "OK", 400: "Bad Request", 404: "Not Found", 405: "Method Not Allowed",
           408: "Request Timeout", 411: "Length Required", 413: "Content Too Large",
           414: "URI Too Long", 431: "Request Header Fields Too Large", 500: "Internal Server Error",
           503: "Service Unavailable"}


class BadRequest(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


class Handler:
    """One client connection: HTTP/1.1 requests in a loop (keep-alive) until either side closes.

    A small parser of our own rather than http.server: that module imports email, ssl and
    random, and importing random blocks in os.urandom until the kernel's entropy pool is
    ready, which costs seconds of a TCG boot.

    ``flag["busy"]`` says whether the connection counts as busy for its worker; the accept
    counted it so, and the caller undoes that if it is still set when the Handler returns.
    """

    def __init__(self, conn: socket.socket, worker, flag: dict) -> None:
        self.conn = conn
        self.worker = worker
        self.flag = flag
        self.rfile = conn.makefile("rb")
        self.command = ""
        self.started = 0.0
        self.path = ""
        self.headers: dict[str, str] = {}
        self.close_connection = False
        conn.settimeout(IDLE_TIMEOUT_S)
        try:
            while not self.close_connection:
                if not self.handle_one_request():
                    break
        except (ConnectionError, TimeoutError, OSError):
            pass
        finally:
            self._idle()
            self.rfile.close()

    def _busy(self) -> None:
        if not self.flag["busy"]:
            self.flag["busy"] = True
            self.worker.busy(1)

    def _idle(self) -> None:
        if self.flag["busy"]:
            self.flag["busy"] = False
            self.worker.busy(-1)

    def handle_one_request(self) -> bool:
        line = self.rfile.readline(MAX_LINE + 1)
        if not line:
            return False
        if line in (b"\r\n", b"\n"):
            return True  # a stray empty line between requests is allowed (RFC 9112 2.2)
        self._busy()
        self.started = time.monotonic()
        self.command, self.path, self.headers = "", "", {}
        if len(line) > MAX_LINE:
            return self.fail(414, f"request line longer than {MAX_LINE} bytes")
        parts = line.decode("latin-1").rstrip("\r\n").split(" ")
        if len(parts) != 3 or not parts[2].startswith("HTTP/1.") or not parts[0].isalpha():
            return self.fail(400, "malformed request line")
        self.command, self.path, version = parts
        for _ in range(MAX_HEADERS + 1):
            h = self.rfile.readline(MAX_LINE + 1)
            if len(h) > MAX_LINE:
                return self.fail(431, f"a header line is longer than {MAX_LINE} bytes")
            if h in (b"\r\n", b"\n", b""):
                break
            name, sep, value = h.decode("latin-1").partition(":")
            if not sep or not name or name != name.strip():
                return self.fail(400, "malformed header line")
            self.headers[name.lower()] = value.strip()
        else:
            return self.fail(431, f"more than {MAX_HEADERS} header lines")
        conn_hdr = self.headers.get("connection", "").lower()
        if version == "HTTP/1.0":
            self.close_connection = "keep-alive" not in conn_hdr
        else:
            self.close_connection = "close" in conn_hdr
        try:
            self.body = self.read_body()
        except BadRequest as exc:
            return self.fail(exc.status, exc.message)
        self.worker.answered(1)   # a retiring worker's exit waits for this reply, however cheap
        try:
            self.dispatch()
        finally:
            self.worker.answered(-1)
        return True

    def fail(self, code: int, message: str) -> bool:
        self.close_connection = True
        self.reply(code, {"error": message})
        return False

    def read_body(self) -> bytes:
        if "transfer-encoding" in self.headers:
            self.close_connection = True
            raise BadRequest(411, "chunked or other transfer encodings are not supported; send Content-Length")
        raw = self.headers.get("content-length")
        if raw is None:
            if self.command == "POST" and urlsplit(self.path).path == "/work":
                raise BadRequest(411, "POST /work needs a Content-Length header")
            return b""
        if not raw.isdigit():
            raise BadRequest(400, f"bad Content-Length {raw[:40]!r}")
        length = int(raw)
        if length > MAX_BODY:
            raise BadRequest(413, f"body of {length} bytes is larger than the limit of {MAX_BODY}")
        body = self.rfile.read(length)
        if len(body) != length:
            raise BadRequest(400, "body shorter than its Content-Length")
        return body

    def reply(self, code: int, body: dict, close: bool = False, headers: dict | None = None) -> None:
        data = json.dumps(body).encode()
        if close:
            self.close_connection = True
        lines = [f"HTTP/1.1 {code} {REASONS.get(code, 'Error')}", "Server: cms-guest/1",
                 "Content-Type: application/json", f"Content-Length: {len(data)}",
                 f"X-Worker-Pid: {os.getpid()}"]
        lines += [f"{k}: {v}" for k, v in (headers or {}).items()]
        if self.close_connection:
            lines.append("Connection: close")
        head = ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")
        try:
            self.conn.sendall(head if self.command == "HEAD" else head + data)
        finally:
            self._idle()

    def dispatch(self) -> None:
        try:
            path = urlsplit(self.path).path
            allowed = ROUTES.get(path)
            if path != "/work":
                self._idle()  # cheap requests never keep a worker from accepting
            if allowed is None:
                return self.reply(404, {"error": f"no such path {path[:200]!r}; try /work, /health or /status"})
            if self.command not in allowed:
                return self.reply(405, {"error": f"{self.command} is not allowed on {path}; use {' or '.join(allowed)}"},
                                  headers={"Allow": ", ".join(allowed)})
            if path == "/work":
                return self.work()
            if path == "/health":
                return self.health()
            return self.reply(200, self.worker.status())
        except BadRequest as exc:
            return self.reply(exc.status, {"error": exc.message})
        except (ConnectionError, TimeoutError):
            self.close_connection = True
        except Exception as exc:  # noqa: BLE001 - never crash on a request
            return self.reply(500, {"error": f"internal error: {type(exc).__name__}"}, close=True)

    def json_body(self) -> dict:
        try:
            data = json.loads(self.body)
        except (ValueError, UnicodeDecodeError):
            raise BadRequest(400, "body is not valid JSON") from None
        if not isinstance(data, dict):
            raise BadRequest(400, 'body must be a JSON object: {"payload": str, "cost": int}')
        return data

    def work(self) -> None:
        if self.command == "POST":
            data = self.json_body()
            payload, cost = data.get("payload"), data.get("cost")
        else:
            try:
                query = parse_qs(urlsplit(self.path).query, keep_blank_values=True,
                                 strict_parsing=False, errors="strict", max_num_fields=16)
            except (ValueError, UnicodeDecodeError):
                raise BadRequest(400, "query string cannot be parsed") from None
            payload = query.get("payload", [None])[0]
            cost = query.get("cost", [None])[0]
        try:
            payload, cost = cms_work.check(payload, cost)
        except cms_work.WorkError as exc:
            raise BadRequest(400, str(exc)) from None
        result = self.worker.compute(payload, cost)
        # counted before the answer leaves, so a client that has its answer finds it in /status
        self.worker.observe(time.monotonic() - self.started)
        self.reply(200, {"result": result, "cost": cost, "hostname": self.worker.info["hostname"]})

    def health(self) -> None:
        state = self.worker.health()
        self.reply(200 if state == "ok" else 503, {"status": state})
