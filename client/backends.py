"""The replicas the load client knows, as load-balancer backends, and how the set changes.

``Backends.apply`` takes the group's whole current set (from the feed, or the static
``--replica`` list) and says what changed, in order; the engine then does the I/O
(connects to a replica that became ready, closes idle connections to one that left, sends
its queued requests elsewhere) and records the events. A replica is used from the moment
it is listed "ready" and never again once it is listed otherwise or is absent. A ready
replica listed at another address has moved (a live migration): its new requests go to
the new address at once, the ones in flight finish on their old connections, which then
close (one lost with its old host is retried, and the retry goes to the new address).
"""

from __future__ import annotations

import collections
from typing import Any, Iterable

from client.accounting import ReplicaTally, ReplicaTimeline
from client.pick import ReplicaPicker
from client.http1 import ConnPool


class Backend:
    """One replica as the client sees it: where its requests go (connections, queue), what
    was counted on it, and when things happened. Kept after it leaves, for the summary."""

    __slots__ = ("name", "endpoint", "ready", "state", "backoff_until", "pool", "queue", "in_flight",
                 "tally", "timeline")

    def __init__(self, name: str, address: str, port: int, paths: list[bytes]) -> None:
        self.name = name
        self.endpoint = f"{address}:{port}"
        self.ready = False
        self.state = "unknown"
        self.backoff_until = 0.0             # avoided until then (a refused connection)
        self.pool = ConnPool(address, port, paths)
        self.queue: collections.deque[Any] = collections.deque()   # requests waiting for a connection
        self.in_flight = 0
        self.tally = ReplicaTally()
        self.timeline = ReplicaTimeline()

    @property
    def outstanding(self) -> int:
        return self.in_flight + len(self.queue)

    def summary(self, wall_offset: float) -> dict[str, Any]:
        return {"endpoint": self.endpoint, "state": self.state, **self.tally.summary(),
                **self.timeline.summary(wall_offset)}


class Backends:
    """Every replica seen (``all``, by name), the ready ones in the order they became ready,
    and the picker that chooses among them."""

    def __init__(self, paths: list[bytes], balance: str) -> None:
        self.paths = paths
        self.all: dict[str, Backend] = {}
        self.ready: list[Backend] = []
        self.picker = ReplicaPicker(balance)

    def apply(self, replicas: Iterable[Any], now: float, wall: float,
              pub_ts: float | None = None) -> list[tuple[Backend, str]]:
        """Take the whole current set (objects with name/address/port/state); returns
        (backend, what happened) in order: "ready", "unready" (its ``state`` says to what),
        "state" (a change between states that are not ready) or "moved" (a ready one at a
        new address)."""
        changes: list[tuple[Backend, str]] = []
        seen = set()
        for r in replicas:
            seen.add(r.name)
            b = self.all.get(r.name)
            if b is not None and b.endpoint != f"{r.address}:{int(r.port)}":
                if not b.ready:
                    b = None  # same name at a new address: a fresh record
                elif r.state == "ready":
                    self._move(b, r.address, int(r.port))
                    changes.append((b, "moved"))
            if b is None:
                b = self.all[r.name] = Backend(r.name, r.address, int(r.port), self.paths)
            if r.state == "ready" and not b.ready:
                self._ready(b, now, wall, pub_ts)
                changes.append((b, "ready"))
            elif r.state != "ready":
                if b.ready:
                    self._unready(b, r.state, now, wall)
                    changes.append((b, "unready"))
                elif b.state != r.state:
                    b.state = r.state
                    changes.append((b, "state"))
        for b in list(self.all.values()):
            if b.name not in seen and b.state != "removed":
                if b.ready:
                    self._unready(b, "removed", now, wall)
                    changes.append((b, "unready"))
                else:
                    b.state = "removed"
                    changes.append((b, "state"))
        return changes

    def _move(self, b: Backend, address: str, port: int) -> None:
        old, b.pool = b.pool, ConnPool(address, port, self.paths)
        b.endpoint = f"{address}:{port}"
        for c in old.conns:
            c.closing = True          # its request, if any, finishes there; then it closes
        b.pool.conns |= old.conns     # still swept for timeouts and settled at the end
        old.close_idle()

    def _ready(self, b: Backend, now: float, wall: float, pub_ts: float | None) -> None:
        b.ready = True
        b.state = "ready"
        b.backoff_until = 0.0
        tl = b.timeline
        if tl.ready_mono is None:
            tl.ready_at, tl.ready_mono, tl.ready_pub_ts = wall, now, pub_ts
        self.ready.append(b)
        if tl.first_sent_mono is None:
            self.picker.add_fresh(b)

    def _unready(self, b: Backend, state: str, now: float, wall: float) -> None:
        b.ready = False
        b.state = state
        b.timeline.unready_at, b.timeline.unready_mono = wall, now
        self.ready.remove(b)
        self.picker.not_fresh(b)

    def pick(self, now: float, exclude: Backend | None = None) -> Backend | None:
        return self.picker.pick(self.ready, now, exclude)

