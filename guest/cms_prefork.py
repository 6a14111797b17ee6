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

import bisect
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
# running /work), ready (the worker's pid once it accepts); then what /status reports for
# the autoscaler's concurrency figures, all cumulative since boot:
#   in-flight time: the integral of in_flight over time in microseconds, up to the monotonic
#     instant (ns) of its last change; a reader adds in_flight x (now - that instant), so
#     the mean in flight between two polls is the difference over the time between them;
#   latency: the microseconds of every /work answer (request line read -> answer computed)
#     and a count per bucket of LATENCY_BOUNDS_S (a value goes into the first bucket whose
#     bound is >= it; the last bucket, past the last bound, holds the slower ones).
# Keeping them costs a request one bisect and three stores under its worker's own lock.
# A reader may see one slot mid-update (a count without its sum): off by one request for
# one poll, never cumulative.
LATENCY_BOUNDS_S = (0.005, 0.01, 0.025, 0.05, 0.1, 0.2, 0.3, 0.5, 0.75, 1.0, 1.5, 2.0, 3.0, 5.0, 10.0, 30.0)
HEADER_FIELDS = 3
SERVED, IN_FLIGHT, BUSY, READY, IN_FLIGHT_US, CHANGED_NS, LATENCY_US, BUCKET0 = range(8)
SLOT_FIELDS = BUCKET0 + len(LATENCY_BOUNDS_S) + 1


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

    # busy, answered, compute, observe, health, status and info: what cms_http.Handler calls.
    def busy(self, delta: int) -> None:
        self.add(BUSY, delta)

    def answered(self, delta: int) -> None:
        with self.lock:
            self.answering += delta
            if self.answering == 0:
                self.idle.notify_all()

    def flight(self, delta: int) -> None:
        """A /work request starts (+1) or ends (-1): in_flight and its time integral."""
        with self.lock:
            self._fold(time.monotonic_ns())
            self.state.set(self.slot, IN_FLIGHT, self.state.get(self.slot, IN_FLIGHT) + delta)

    def _fold(self, now_ns: int) -> None:
        """Bring the in-flight integral up to now (under the lock, or before accepting)."""
        st, slot = self.state, self.slot
        since = st.get(slot, CHANGED_NS)
        if since:
            st.set(slot, IN_FLIGHT_US, st.get(slot, IN_FLIGHT_US) + st.get(slot, IN_FLIGHT) * (now_ns - since) // 1000)
        st.set(slot, CHANGED_NS, now_ns)

    def compute(self, payload: str, cost: int) -> str:
        self.flight(1)
        try:
            result = cms_work.result(payload, cost)
        finally:
            self.flight(-1)
        self.add(SERVED, 1)
        return result

    def observe(self, seconds: float) -> None:
        """One /work answer's latency into this worker's histogram."""
        i = BUCKET0 + bisect.bisect_left(LATENCY_BOUNDS_S, seconds)
        with self.lock:
            st, slot = self.state, self.slot
            st.set(slot, i, st.get(slot, i) + 1)
            st.set(slot, LATENCY_US, st.get(slot, LATENCY_US) + int(seconds * 1e6))

    def health(self) -> str:
        if self.state.stopping:   # the server stops (a worker retired with its CPU answers for the server)
            return "stopping"
        return "ok" if self.state.all_ready() else "starting"

    def status(self) -> dict:
        state, info = self.state, self.info
        now = time.monotonic_ns()
        in_flight_us = sum(state.get(s, IN_FLIGHT_US) + state.get(s, IN_FLIGHT) * max(0, now - state.get(s, CHANGED_NS))
                           // 1000 for s in range(state.slots) if state.get(s, CHANGED_NS))
        buckets, seen = [], 0
        for b in range(len(LATENCY_BOUNDS_S) + 1):
            seen += state.total(BUCKET0 + b)
            buckets.append(seen)
        return {
            "served": state.total(SERVED),
            "in_flight": state.total(IN_FLIGHT),
            "in_flight_s": in_flight_us / 1e6,
            "latency": {"bounds_s": list(LATENCY_BOUNDS_S), "buckets": buckets,
                        "sum_s": state.total(LATENCY_US) / 1e6},
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
        self._fold(time.monotonic_ns())   # a replaced worker's unfinished requests end here
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
