"""Health checking of replicas: the HTTP edge of the daemon.

``HttpHealth`` asks a replica's guest server ``GET /health`` (serving-ready) and
``GET /status`` (in-flight work, for draining). The daemon takes any object with the same
two methods (``HealthChecker``), so tests inject a fake one. ``StatusPoller`` asks every
ready replica's ``/status`` each tick through the same requests, on keep-alive connections,
for its load figures (cms.histogram).

``wait_healthy`` is the one polling loop, used after a spawn (every SPAWN_PROBE_S, 250 ms,
or the tick if shorter: a boot takes seconds and a refused connect costs nothing) and after
an unpark (at once, then every UNPARK_PROBE_S, 25 ms: a resumed guest answers within tens
of milliseconds).
"""

from __future__ import annotations

import http.client
import json
import threading
import time
from concurrent import futures
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Callable, Mapping, Protocol

from cms import histogram

SPAWN_PROBE_S = 0.25        # /health while a new replica boots
UNPARK_PROBE_S = 0.025      # /health after an unpark: at once, then every 25 ms


class HealthChecker(Protocol):
    def healthy(self, address: str, port: int) -> bool: ...
    def in_flight(self, address: str, port: int) -> int | None: ...


class HttpHealth:
    """GET /health and /status on the replica's guest server."""

    def __init__(self, timeout: float = 2.0) -> None:
        self.timeout = timeout

    def connection(self, address: str, port: int) -> http.client.HTTPConnection:
        return http.client.HTTPConnection(address, port, timeout=self.timeout)

    @staticmethod
    def request(c: http.client.HTTPConnection, path: str) -> tuple[int, Any]:
        """GET ``path`` on an open or reusable connection: (status, the JSON body or None)."""
        c.request("GET", path)
        r = c.getresponse()
        body = r.read()
        try:
            return r.status, json.loads(body or b"null")
        except ValueError:
            return r.status, None

    def _get(self, address: str, port: int, path: str) -> tuple[int, Any]:
        c = self.connection(address, port)
        try:
            return self.request(c, path)
        finally:
            c.close()

    def healthy(self, address: str, port: int) -> bool:
        try:
            return self._get(address, port, "/health")[0] == 200
        except (OSError, http.client.HTTPException):
            return False

    def in_flight(self, address: str, port: int) -> int | None:
        try:
            status, body = self._get(address, port, "/status")
        except (OSError, http.client.HTTPException):
            return None
        if status != 200 or not isinstance(body, dict):
            return None
        v = body.get("in_flight")
        return int(v) if isinstance(v, int) else None


def wait_healthy(health: HealthChecker, where: Callable[[], tuple[str, int] | None], deadline: float,
                 interval: float, wait: Callable[[float], Any], keep_going: Callable[[], bool]) -> bool:
    """Probe at once, then every `interval` s, until /health answers (True) or `deadline`
    (time.monotonic) passes or `keep_going()` turns false (False).

    `where()` gives the address, or None while it is not known yet (a DHCP lease). `wait`
    is the daemon's stop-aware sleep.
    """
    while keep_going():
        addr = where()
        if addr is not None and health.healthy(*addr):
            return True
        if time.monotonic() > deadline:
            return False
        wait(interval)
    return False


class StatusPoller:
    """GET /status of every ready replica each tick, for its load figures: all at once on a
    small thread pool, each replica on a keep-alive connection of its own (HttpHealth's, with
    its timeout), each answer awaited at most ``deadline_s``. A replica that has not answered
    by then has no figure this tick; its request goes on, and it is not asked again until
    that answer is in. So one slow guest never holds the tick, nor takes more than a thread.

    The figures of a tick are cms.histogram's between this answer and the replica's previous
    one (a failed poll keeps the previous as the baseline); ``latest`` keeps each replica's
    last counters (the exporter's cumulative histogram).
    """

    def __init__(self, health: HttpHealth, workers: int = 8) -> None:
        self.health = health
        self._pool = ThreadPoolExecutor(workers, thread_name_prefix="cms-status")
        self._lock = threading.Lock()
        self._conns: dict[str, tuple[tuple[str, int], http.client.HTTPConnection]] = {}
        self._pending: set[str] = set()
        self._fresh: dict[str, Any] = {}
        self.latest: dict[str, histogram.Counters] = {}

    def poll(self, targets: Mapping[str, tuple[str, int]], deadline_s: float) -> dict[str, histogram.Figures | None]:
        """Each target's figures since its previous answer, or None (no answer in time, no
        baseline yet, a restarted guest). Replicas no longer listed are forgotten."""
        asked = []
        with self._lock:
            for name in [n for n in set(self.latest) | set(self._conns) if n not in targets and n not in self._pending]:
                self._forget(name)
            for name, where in targets.items():
                if name not in self._pending:
                    self._pending.add(name)
                    asked.append(self._pool.submit(self._fetch, name, where))
        if asked:
            futures.wait(asked, timeout=deadline_s)
        out: dict[str, histogram.Figures | None] = {}
        with self._lock:
            for name in targets:
                body = self._fresh.pop(name, None)
                counters = histogram.parse(body)
                prev = self.latest.get(name)
                if counters is not None:
                    self.latest[name] = counters
                    out[name] = histogram.between(prev, counters) if prev is not None else None
                else:
                    out[name] = histogram.instant(body)
        return out

    def _fetch(self, name: str, where: tuple[str, int]) -> None:
        body = None
        try:
            for attempt in (0, 1):      # a kept connection the guest closed meanwhile: once more, new
                with self._lock:
                    have = self._conns.get(name)
                c = have[1] if have is not None and have[0] == where else self.health.connection(*where)
                try:
                    status, got = self.health.request(c, "/status")
                except (OSError, http.client.HTTPException):
                    c.close()
                    with self._lock:
                        self._conns.pop(name, None)
                    if attempt or have is None:
                        return
                    continue
                with self._lock:
                    self._conns[name] = (where, c)
                body = got if status == 200 else None
                return
        finally:
            with self._lock:
                self._pending.discard(name)
                self._fresh[name] = body

    def _forget(self, name: str) -> None:
        self.latest.pop(name, None)
        self._fresh.pop(name, None)
        conn = self._conns.pop(name, None)
        if conn is not None:
            conn[1].close()

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)
        with self._lock:
            for name in list(self._conns):
                self._forget(name)

