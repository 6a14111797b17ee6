#!/usr/bin/python3
"""cms guest server: the CPU-bound service each replica VM runs.

Standard library only (the golden image's python3, 3.11). Pre-fork: the main process binds
one listening socket and forks one worker per vCPU (or CMS_GUEST_WORKERS); every worker
accepts on that inherited socket and serves HTTP/1.1 with keep-alive, one thread per
connection. The main process only supervises: it restarts a worker that dies and, on
SIGTERM, stops them all. Without CMS_GUEST_WORKERS it follows the vCPUs it may run on
(sched_getaffinity, which tracks CPUs going online and offline): a vCPU hot-added by
vertical scaling, once the image's udev rule has put it online, gets a worker of its own
within a second, and a removed one's worker finishes its work and goes.

Contract (the load client and the autoscaler depend on it):
  GET  /work?payload=<str>&cost=<int>
  POST /work  {"payload": str, "cost": int}
      200 {"result": cms_work.result(payload, cost), "cost": cost, "hostname": <hostname>}
      the request is valid as cms_work.check says, and the body <= 65536 bytes;
      a violation is a 4xx {"error": "..."} (413 for an oversized body).
      The work itself (PBKDF2, its salt and limits) is defined once, in cms_work.py beside
      this file, which the image installs with it.
  GET /health  200 {"status": "ok"} once every worker is up; 503 before that and while stopping
  GET /status  {"served", "in_flight", "uptime_s", "hostname", "unit", "workers", "cpus", "pid"}
  Unknown path: 404; known path, wrong method: 405; both JSON.
Every response carries X-Worker-Pid, the pid of the worker that answered.

Environment: CMS_GUEST_PORT (8080), CMS_GUEST_BIND (0.0.0.0), CMS_GUEST_WORKERS (empty or 0:
one per CPU), CMS_GUEST_GRACE_S (5: how long a stopping worker lets in-flight work finish).
"""

from __future__ import annotations

import json
import mmap
import os
import select
import signal
import socket
import sys
import threading
import time
from urllib.parse import parse_qs, urlsplit

import cms_work

MAX_BODY = 65536
MAX_CONNECTIONS_PER_WORKER = 512
IDLE_TIMEOUT_S = 75.0
ALL_BUSY_GRACE_S = 0.02

ROUTES = {"/work": ("GET", "POST"), "/health": ("GET",), "/status": ("GET",)}

# Shared counters live in an anonymous shared mapping inherited across fork. Each worker
# writes only its own slot, so no lock spans processes; readers add the slots up.
# Header: stopping flag, active workers (slots 0..active-1 serve; there are slots for every
# CPU the machine could have), usable CPUs as the supervisor last saw them. Slot per worker: served, in_flight, busy (connections accepted
# and not yet read, or running /work), ready (the worker's pid once it accepts).
_HEADER_FIELDS = 3
_SLOT_FIELDS = 4
_SERVED, _IN_FLIGHT, _BUSY, _READY = range(_SLOT_FIELDS)


class SharedState:
    def __init__(self, workers: int, slots: int = 0) -> None:
        self.slots = max(workers, slots)
        size = 8 * (_HEADER_FIELDS + _SLOT_FIELDS * self.slots)
        self._mm = mmap.mmap(-1, size)
        self._q = memoryview(self._mm).cast("q")
        self.set_workers(workers)

    @property
    def workers(self) -> int:
        return self._q[1]

    def set_workers(self, n: int) -> None:
        self._q[1] = n

    @property
    def cpus(self) -> int:
        return self._q[2]

    def set_cpus(self, n: int) -> None:
        self._q[2] = n

    def _i(self, slot: int, f: int) -> int:
        return _HEADER_FIELDS + slot * _SLOT_FIELDS + f

    def get(self, slot: int, f: int) -> int:
        return self._q[self._i(slot, f)]

    def set(self, slot: int, f: int, value: int) -> None:
        self._q[self._i(slot, f)] = value

    def total(self, f: int) -> int:
        return sum(self.get(s, f) for s in range(self.slots))

    @property
    def stopping(self) -> bool:
        return self._q[0] != 0

    def set_stopping(self) -> None:
        self._q[0] = 1

    def all_ready(self) -> bool:
        return all(self.get(s, _READY) != 0 for s in range(self.workers))

    def others_computing(self, me: int) -> bool:
        """Whether every other worker is running /work (a brief /health does not count)."""
        return all(self.get(s, _IN_FLIGHT) > 0 for s in range(self.workers) if s != me)


def systemd_unit() -> str:
    """The systemd unit whose cgroup this process is in ("" when none)."""
    try:
        with open("/proc/self/cgroup", encoding="ascii", errors="replace") as fh:
            lines = fh.read().splitlines()
    except OSError:
        return ""
    for line in lines:
        path = line.split(":", 2)[-1]
        for part in reversed(path.split("/")):
            if part.endswith((".service", ".scope")):
                return part
    return ""


class BadRequest(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


class Worker:
    """One pre-forked worker: accepts on the shared socket, a thread per connection."""

    def __init__(self, sock: socket.socket, state: SharedState, slot: int, info: dict) -> None:
        self.sock = sock
        self.state = state
        self.slot = slot
        self.info = info
        self.lock = threading.Lock()
        self.idle = threading.Condition(self.lock)
        self.stop = threading.Event()
        self.connections = 0
        self.answering = 0      # requests between their request line and their reply, cheap ones too
        self.all_busy_since: float | None = None

    def add(self, f: int, delta: int) -> None:
        with self.lock:
            self.state.set(self.slot, f, self.state.get(self.slot, f) + delta)
            if f == _BUSY and self.state.get(self.slot, _BUSY) == 0:
                self.idle.notify_all()

    def answered(self, delta: int) -> None:
        with self.lock:
            self.answering += delta
            if self.answering == 0:
                self.idle.notify_all()

    def should_accept(self) -> bool:
        # A worker busy with /work (or with a connection whose request it has not read yet)
        # leaves new connections to the others, so concurrent requests spread over the
        # CPUs. Only when every other worker has been computing for a moment does a busy
        # one take them too, so /health and /status still get answered under full load.
        if self.state.get(self.slot, _BUSY) == 0:
            self.all_busy_since = None
            return True
        if not self.state.others_computing(self.slot):
            self.all_busy_since = None
            return False
        now = time.monotonic()
        if self.all_busy_since is None:
            self.all_busy_since = now
        return now - self.all_busy_since >= ALL_BUSY_GRACE_S

    def run(self) -> None:
        signal.signal(signal.SIGTERM, lambda *_: self.stop.set())
        signal.signal(signal.SIGINT, lambda *_: self.stop.set())
        self.state.set(self.slot, _IN_FLIGHT, 0)
        self.state.set(self.slot, _BUSY, 0)
        self.state.set(self.slot, _READY, os.getpid())
        while not self.stop.is_set() and not self.state.stopping:
            if not self.should_accept() or self.connections >= MAX_CONNECTIONS_PER_WORKER:
                with self.lock:
                    self.idle.wait(0.01)
                continue
            try:
                ready, _, _ = select.select([self.sock], [], [], 0.5)
            except InterruptedError:
                continue
            if not ready:
                continue
            try:
                conn, addr = self.sock.accept()
            except (BlockingIOError, InterruptedError):
                continue  # another worker took it
            except OSError:
                time.sleep(0.05)  # e.g. EMFILE: back off instead of spinning
                continue
            conn.setblocking(True)
            conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            self.add(_BUSY, 1)
            with self.lock:
                self.connections += 1
            threading.Thread(target=self.serve_connection, args=(conn, addr), daemon=True).start()
        self.shutdown()

    def serve_connection(self, conn: socket.socket, addr: tuple) -> None:
        flag = {"busy": True}  # the accept counted this connection as busy
        try:
            Handler(conn, self, flag)
        except Exception:  # noqa: BLE001 - one broken connection must not touch the others
            pass
        finally:
            if flag["busy"]:
                self.add(_BUSY, -1)
            with self.lock:
                self.connections -= 1
            try:
                conn.close()
            except OSError:
                pass

    def shutdown(self) -> None:
        self.state.set(self.slot, _READY, 0)
        try:
            self.sock.close()
        except OSError:
            pass
        grace = float(os.environ.get("CMS_GUEST_GRACE_S", "5") or 5)
        deadline = time.monotonic() + grace
        with self.lock:
            while (self.state.get(self.slot, _BUSY) > 0 or self.answering > 0) and time.monotonic() < deadline:
                self.idle.wait(min(0.1, max(0.0, deadline - time.monotonic())))
        sys.stdout.flush()
        os._exit(0)


REASONS = {200: "OK", 400: "Bad Request", 404: "Not Found", 405: "Method Not Allowed",
           408: "Request Timeout", 411: "Length Required", 413: "Content Too Large",
           414: "URI Too Long", 431: "Request Header Fields Too Large", 500: "Internal Server Error",
           503: "Service Unavailable"}
MAX_LINE = 8192
MAX_HEADERS = 100


class Handler:
    """One client connection: HTTP/1.1 requests in a loop (keep-alive) until either side closes.

    A small parser of our own rather than http.server: that module imports email, ssl and
    random, and importing random blocks in os.urandom until the kernel's entropy pool is
    ready, which costs seconds of a TCG boot.
    """

    def __init__(self, conn: socket.socket, worker: Worker, flag: dict) -> None:
        self.conn = conn
        self.worker = worker
        self.flag = flag
        self.rfile = conn.makefile("rb")
        self.command = ""
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
            self.worker.add(_BUSY, 1)

    def _idle(self) -> None:
        if self.flag["busy"]:
            self.flag["busy"] = False
            self.worker.add(_BUSY, -1)

    def handle_one_request(self) -> bool:
        line = self.rfile.readline(MAX_LINE + 1)
        if not line:
            return False
        if line in (b"\r\n", b"\n"):
            return True  # a stray empty line between requests is allowed (RFC 9112 2.2)
        self._busy()
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
            return self.status()
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
        w = self.worker
        w.add(_IN_FLIGHT, 1)
        try:
            result = cms_work.result(payload, cost)
        finally:
            w.add(_IN_FLIGHT, -1)
        w.add(_SERVED, 1)
        self.reply(200, {"result": result, "cost": cost, "hostname": w.info["hostname"]})

    def health(self) -> None:
        state = self.worker.state
        if state.stopping:    # the server stops (a worker retired with its CPU answers for the server)
            return self.reply(503, {"status": "stopping"})
        if not state.all_ready():
            return self.reply(503, {"status": "starting"})
        return self.reply(200, {"status": "ok"})

    def status(self) -> None:
        state, info = self.worker.state, self.worker.info
        self.reply(200, {
            "served": state.total(_SERVED),
            "in_flight": state.total(_IN_FLIGHT),
            "uptime_s": round(time.monotonic() - info["started"], 3),
            "hostname": info["hostname"],
            "unit": info["unit"],
            "workers": state.workers,
            "cpus": state.cpus,
            "pid": info["pid"],
        })


def sd_notify(message: str) -> None:
    """Tell systemd (Type=notify) about our state; a no-op when not started by systemd."""
    addr = os.environ.get("NOTIFY_SOCKET", "")
    if not addr:
        return
    if addr[0] == "@":
        addr = "\0" + addr[1:]
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as s:
            s.connect(addr)
            s.sendall(message.encode())
    except OSError:
        pass


def fixed_workers() -> int:
    """CMS_GUEST_WORKERS, or 0: one worker per usable CPU, following them."""
    raw = os.environ.get("CMS_GUEST_WORKERS", "").strip()
    if raw and raw != "0":
        n = int(raw)
        if n < 1 or n > 256:
            raise ValueError(f"CMS_GUEST_WORKERS must be from 1 to 256, not {n}")
        return n
    return 0


def usable_cpus() -> int:
    """CPUs this process may run on now: online ones within its affinity."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):
        return max(1, os.cpu_count() or 1)


def possible_cpus() -> int:
    """CPUs this machine could ever have online (a VM's maximum vCPUs), at most 256."""
    try:
        with open("/sys/devices/system/cpu/possible", encoding="ascii") as fh:
            spans = [p.split("-") for p in fh.read().strip().split(",") if p]
        n = sum(int(b[-1]) - int(b[0]) + 1 for b in spans)
    except (OSError, ValueError):
        n = os.cpu_count() or 1
    return max(1, min(256, n))


def worker_count() -> int:
    return fixed_workers() or usable_cpus()


def listen(bind: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in bind else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((bind, port))
    sock.listen(1024)
    sock.setblocking(False)
    return sock


def follow_cpus(state: SharedState, children: dict[int, int], spawn, stop: threading.Event) -> None:
    """One worker per usable CPU: start workers for CPUs that came online, retire the extra ones.

    New workers count (for /health and the spreading of connections) only once they accept,
    so /health never answers 503 for a growing server. A retired worker gets SIGTERM and
    finishes its in-flight work (CMS_GUEST_GRACE_S) like on a stop.
    """
    cpus = usable_cpus()
    state.set_cpus(cpus)
    want = min(state.slots, cpus)
    have = state.workers
    if want > have:
        if any(slot in children.values() for slot in range(have, want)):
            return  # a retired worker still holds the slot (finishing its work): grow a round later
        for slot in range(have, want):
            spawn(slot)
        deadline = time.monotonic() + 10
        while not all(state.get(s, _READY) for s in range(have, want)) and time.monotonic() < deadline \
                and not stop.is_set():
            time.sleep(0.005)
        state.set_workers(want)
    elif want < have:
        state.set_workers(want)
        for pid, slot in children.items():
            if slot >= want:
                try:
                    os.kill(pid, signal.SIGTERM)
                except ProcessLookupError:
                    pass
    else:
        return
    print(f"cms-guest: {cpus} CPU(s) usable: {want} worker(s), {have} before", flush=True)
    sd_notify(f"STATUS=serving with {want} worker(s)")


def main() -> int:
    try:
        port = int(os.environ.get("CMS_GUEST_PORT", "8080") or 8080)
        bind = os.environ.get("CMS_GUEST_BIND", "0.0.0.0") or "0.0.0.0"
        fixed = fixed_workers()
        workers = fixed or usable_cpus()
        sock = listen(bind, port)
    except (ValueError, OSError) as exc:
        print(f"cms-guest: cannot start: {exc}", file=sys.stderr)
        return 1
    state = SharedState(workers, workers if fixed else max(workers, possible_cpus()))
    state.set_cpus(usable_cpus())
    info = {"hostname": socket.gethostname(), "unit": systemd_unit(), "pid": os.getpid(),
            "started": time.monotonic()}
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    children: dict[int, int] = {}  # pid -> slot

    def spawn(slot: int) -> None:
        pid = os.fork()
        if pid == 0:
            try:
                Worker(sock, state, slot, info).run()
            finally:
                os._exit(1)
        children[pid] = slot

    for slot in range(workers):
        spawn(slot)
    deadline = time.monotonic() + 10
    while not state.all_ready() and time.monotonic() < deadline and not stop.is_set():
        time.sleep(0.005)
    print(f"cms-guest: listening on {bind}:{port} with {workers} worker(s), pid {os.getpid()}",
          flush=True)
    sd_notify(f"READY=1\nSTATUS=serving on {bind}:{port} with {workers} worker(s)")
    restarts: list[float] = []
    while not stop.is_set():
        stop.wait(0.2)
        if not fixed:
            follow_cpus(state, children, spawn, stop)
        while children:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                break
            if pid == 0:
                break
            slot = children.pop(pid)
            state.set(slot, _READY, 0)
            if stop.is_set() or slot >= state.workers:
                continue  # stopping, or a worker retired because its CPU went away
            now = time.monotonic()
            restarts = [t for t in restarts if now - t < 10] + [now]
            if len(restarts) > 10 * state.workers:
                print("cms-guest: workers keep dying; giving up", file=sys.stderr, flush=True)
                stop.set()
                break
            print(f"cms-guest: worker {pid} exited ({status}); starting another", file=sys.stderr, flush=True)
            spawn(slot)
    sd_notify("STOPPING=1")
    state.set_stopping()
    for pid in children:
        try:
            os.kill(pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
    grace = float(os.environ.get("CMS_GUEST_GRACE_S", "5") or 5) + 2
    deadline = time.monotonic() + grace
    while children and time.monotonic() < deadline:
        try:
            pid, _ = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            break
        if pid:
            children.pop(pid, None)
        else:
            time.sleep(0.05)
    for pid in children:
        try:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
        except (ProcessLookupError, ChildProcessError):
            pass
    sock.close()
    print("cms-guest: stopped", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
