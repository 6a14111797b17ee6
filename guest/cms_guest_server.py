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

This file is the entry point and the supervisor (forking, restarting, following the CPUs,
telling systemd). Beside it, installed with it in the image and imported by plain name:
cms_prefork.py (one worker's accept loop and the counters the workers share), cms_http.py
(one connection's HTTP/1.1 requests: parsing, the limits, the routes and their answers)
and cms_work.py (the work a request costs).

Contract (the load client and the autoscaler depend on it):
  GET  /work?payload=<str>&cost=<int>
  POST /work  {"payload": str, "cost": int}
      200 {"result": cms_work.result(payload, cost), "cost": cost, "hostname": <hostname>}
      the request is valid as cms_work.check says, and the body <= 65536 bytes;
      a violation is a 4xx {"error": "..."} (413 for an oversized body).
      The work itself (PBKDF2, its salt and limits) is defined once, in cms_work.py beside
      this file, which the image installs with it.
  GET /health  200 {"status": "ok"} once every worker is up; 503 before that and while stopping
  GET /status  {"served", "in_flight", "in_flight_s", "latency", "uptime_s", "hostname", "unit", "workers",
               "cpus", "mem_total_kib", "pid"}: served and in_flight count /work requests; in_flight_s
               is the time integral of in_flight since boot (its difference between two polls over
               the time between them is the mean in flight) and latency the /work answers'
               histogram since boot, {"bounds_s": [upper bounds], "buckets": [cumulative counts,
               one more than bounds: the last is every answer], "sum_s"} (cms_prefork.py;
               cms/histogram.py reads two polls); mem_total_kib: the kernel's MemTotal, which the
               balloon moves when the VM's memory is resized
  Unknown path: 404; known path, wrong method: 405; both JSON.
Every response carries X-Worker-Pid, the pid of the worker that answered.

Environment: CMS_GUEST_PORT (8080), CMS_GUEST_BIND (0.0.0.0), CMS_GUEST_WORKERS (empty or 0:
one per CPU), CMS_GUEST_GRACE_S (5: how long a stopping worker lets in-flight work finish).
"""

from __future__ import annotations

import os
import signal
import socket
import sys
import threading
import time

from cms_prefork import READY, SharedState, Worker, grace_s


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
        while not all(state.get(s, READY) for s in range(have, want)) and time.monotonic() < deadline \
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
            state.set(slot, READY, 0)
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
    grace = grace_s() + 2
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
