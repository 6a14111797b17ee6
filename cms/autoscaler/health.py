"""Health checking of replicas: the HTTP edge of the daemon.

``HttpHealth`` asks a replica's guest server ``GET /health`` (serving-ready) and
``GET /status`` (in-flight work, for draining). The daemon takes any object with the same
two methods (``HealthChecker``), so tests inject a fake one.

``wait_healthy`` is the one polling loop, used after a spawn (every SPAWN_PROBE_S, 250 ms,
or the tick if shorter: a boot takes seconds and a refused connect costs nothing) and after
an unpark (at once, then every UNPARK_PROBE_S, 25 ms: a resumed guest answers within tens
of milliseconds).
"""

from __future__ import annotations

import http.client
import json
import time
from typing import Any, Callable, Protocol

SPAWN_PROBE_S = 0.25        # /health while a new replica boots
UNPARK_PROBE_S = 0.025      # /health after an unpark: at once, then every 25 ms


class HealthChecker(Protocol):
    def healthy(self, address: str, port: int) -> bool: ...
    def in_flight(self, address: str, port: int) -> int | None: ...


class HttpHealth:
    """GET /health and /status on the replica's guest server."""

    def __init__(self, timeout: float = 2.0) -> None:
        self.timeout = timeout

    def _get(self, address: str, port: int, path: str) -> tuple[int, Any]:
        c = http.client.HTTPConnection(address, port, timeout=self.timeout)
        try:
            c.request("GET", path)
            r = c.getresponse()
            body = r.read()
            try:
                return r.status, json.loads(body or b"null")
            except ValueError:
                return r.status, None
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
