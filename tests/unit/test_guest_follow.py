"""The guest server follows the CPUs it may run on (vertical scaling's hot-added vCPUs), no VM.

In a VM a hot-added vCPU comes online (the image's udev rule) and joins every process's
usable CPUs; here the test narrows and widens the server's own affinity instead, which the
server reads the same way (sched_getaffinity).
"""

from __future__ import annotations

import os
import threading

from cms.lab.realstack import wait_until
from tests.unit.test_guest_server import Server

CPUS = sorted(os.sched_getaffinity(0))


def status(s: Server) -> dict:
    code, _, body = s.request("GET", "/status", timeout=5)
    assert code == 200
    return body


def test_workers_follow_the_usable_cpus_down_and_up():
    assert len(CPUS) >= 2, f"this test needs a machine with two CPUs or more, this one has {CPUS}"
    s = Server(workers=0)   # CMS_GUEST_WORKERS=0: one per usable CPU, following them
    try:
        first = status(s)
        assert (first["workers"], first["cpus"]) == (len(CPUS), len(CPUS))
        os.sched_setaffinity(s.proc.pid, {CPUS[0]})
        wait_until(lambda: (st := status(s))["workers"] == 1 and st["cpus"] == 1, 10, 0.1,
                   what="the server to retire the worker of the CPU it lost")
        assert s.request("GET", "/health", timeout=5)[0] == 200
        assert s.request("GET", "/work?payload=a&cost=10", timeout=10)[0] == 200

        os.sched_setaffinity(s.proc.pid, set(CPUS))
        wait_until(lambda: status(s)["workers"] == len(CPUS), 10, 0.1,
                   what="the server to start a worker for the CPU it got back")
        # the new worker serves: two slow requests at once are answered by two worker processes
        pids, errors = set(), []

        def slow() -> None:
            try:
                code, headers, _ = s.request("GET", "/work?payload=b&cost=300000", timeout=60)
                assert code == 200
                pids.add(headers["X-Worker-Pid"])
            except Exception as exc:  # noqa: BLE001 - reported below
                errors.append(exc)

        threads = [threading.Thread(target=slow) for _ in range(2)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(90)
        assert not errors and len(pids) == 2, (errors, pids)
        assert status(s)["served"] >= 3
    finally:
        s.stop()
    assert f"cms-guest: 1 CPU(s) usable: 1 worker(s), {len(CPUS)} before" in s.output
    assert f"cms-guest: {len(CPUS)} CPU(s) usable: {len(CPUS)} worker(s), 1 before" in s.output


def test_a_fixed_worker_count_does_not_follow():
    s = Server(workers=2)
    try:
        os.sched_setaffinity(s.proc.pid, {CPUS[0]})
        assert status(s)["workers"] == 2
        assert s.request("GET", "/health", timeout=5)[0] == 200
    finally:
        s.stop()
    assert "CPU(s) usable" not in s.output
