"""One pre-forked worker of the guest server, and the counters the workers share.

Standard library only, like the server (cms_guest_server.py) that forks these workers and
documents what they serve. A Worker accepts on the listening socket it inherited and
serves each connection in a thread of its own (cms_http.Handler); it leaves new
connections to idle workers while it computes, so concurrent requests spread over the
CPUs. It counts what it does in its own slot of a SharedState, which the supervisor made
before forking, and stops (letting its in-flight replies finish) on SIGTERM or when the
server stops.
"""

from __future__ import annotations

import mmap
import os
import select
import signal
import socket
import sys
import threading
import time

import cms_work
from cms_http import Handler

MAX_CONNECTIONS_PER_WORKER = 512
ALL_BUSY_GRACE_S = 0.02

# Shared counters live in an anonymous shared mapping inherited across fork. Each worker
# writes only its own slot, so no lock spans processes; readers add the slots up.
# Header: stopping flag, active workers (slots 0..active-1 serve; there are slots for every
# CPU the machine could have), usable CPUs as the supervisor last saw them.
# Slot per worker: served, in_flight, busy (connections accepted and not yet read, or
# running /work), ready (the worker's pid once it accepts).
HEADER_FIELDS = 3
SLOT_FIELDS = 4
SERVED, IN_FLIGHT, BUSY, READY = range(SLOT_FIELDS)


def mem_total_kib() -> int:
    """MemTotal from /proc/meminfo: the memory the guest's kernel can use, which the balloon
    moves when the host resizes the VM (0 when it cannot be read)."""
    try:
        with open("/proc/meminfo", encoding="ascii") as fh:
            for line in fh:
                if line.startswith("MemTotal:"):
                    return int(line.split()[1])
    except (OSError, ValueError, IndexError):
        pass
    return 0


class SharedState:
    def __init__(self, workers: int, slots: int = 0) -> None:
        self.slots = max(workers, slots)
        size = 8 * (HEADER_FIELDS + SLOT_FIELDS * self.slots)
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
        return HEADER_FIELDS + slot * SLOT_FIELDS + f

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
        return all(self.get(s, READY) != 0 for s in range(self.workers))

    def others_computing(self, me: int) -> bool:
        """Whether every other worker is running /work (a brief /health does not count)."""
        return all(self.get(s, IN_FLIGHT) > 0 for s in range(self.workers) if s != me)


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
            if f == BUSY and self.state.get(self.slot, BUSY) == 0:
                self.idle.notify_all()

    # busy, answered, compute, health, status and info: what cms_http.Handler calls.
    def busy(self, delta: int) -> None:
        self.add(BUSY, delta)

    def answered(self, delta: int) -> None:
        with self.lock:
            self.answering += delta
            if self.answering == 0:
                self.idle.notify_all()

    def compute(self, payload: str, cost: int) -> str:
        self.add(IN_FLIGHT, 1)
        try:
            result = cms_work.result(payload, cost)
        finally:
            self.add(IN_FLIGHT, -1)
        self.add(SERVED, 1)
        return result

    def health(self) -> str:
        if self.state.stopping:   # the server stops (a worker retired with its CPU answers for the server)
            return "stopping"
        return "ok" if self.state.all_ready() else "starting"

    def status(self) -> dict:
        state, info = self.state, self.info
        return {
            "served": state.total(SERVED),
            "in_flight": state.total(IN_FLIGHT),
            "uptime_s": round(time.monotonic() - info["started"], 3),
            "hostname": info["hostname"],
            "unit": info["unit"],
            "workers": state.workers,
            "cpus": state.cpus,
            "mem_total_kib": mem_total_kib(),
            "pid": info["pid"],
        }

    def should_accept(self) -> bool:
        # A worker busy with /work (or with a connection whose request it has not read yet)
        # leaves new connections to the others, so concurrent requests spread over the
        # CPUs. Only when every other worker has been computing for a moment does a busy
        # one take them too, so /health and /status still get answered under full load.
        if self.state.get(self.slot, BUSY) == 0:
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
        self.state.set(self.slot, IN_FLIGHT, 0)
        self.state.set(self.slot, BUSY, 0)
        self.state.set(self.slot, READY, os.getpid())
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
            self.busy(1)
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
                self.busy(-1)
            with self.lock:
                self.connections -= 1
            try:
                conn.close()
            except OSError:
                pass

    def shutdown(self) -> None:
        self.state.set(self.slot, READY, 0)
        try:
            self.sock.close()
        except OSError:
            pass
        deadline = time.monotonic() + grace_s()
        with self.lock:
            while (self.state.get(self.slot, BUSY) > 0 or self.answering > 0) and time.monotonic() < deadline:
                self.idle.wait(min(0.1, max(0.0, deadline - time.monotonic())))
        sys.stdout.flush()
        os._exit(0)


def grace_s() -> float:
    """CMS_GUEST_GRACE_S: how long a stopping worker lets in-flight work finish."""
    return float(os.environ.get("CMS_GUEST_GRACE_S", "5") or 5)
