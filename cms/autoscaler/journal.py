"""What the daemon writes down: events (decisions, announcements, failures) and replica states.

Events are logged at once and kept in memory; the daemon writes them to the state
database in its publish step, after the tick's decisions and actions, so no SQLite write
sits inside a decision. Each keeps the time it happened, not the time it was written.

Replica states go to the ``replicas`` table whenever they changed since the last write,
so cms-api shows each replica's lifecycle state without asking the daemon.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Any, Callable, Iterable

from cms.store import ReplicaRow, Store

log = logging.getLogger("cms.autoscaler")


class Journal:
    def __init__(self, store: Store) -> None:
        self.store = store
        self._pending: list[tuple[float, str, str, str, str, dict[str, Any]]] = []
        self._lock = threading.Lock()
        self._written: dict[str, tuple[str, str, str, str, int]] = {}
        # Called with (kind, group, subject, data) as each event happens, on the caller's
        # thread (the metrics exporter counts decisions, failures and spawn timings here).
        self.listeners: list[Callable[[str, str, str, dict[str, Any]], None]] = []

    def event(self, kind: str, group: str, subject: str, message: str, *, level: int = logging.INFO,
              **data: Any) -> None:
        log.log(level, "%s %s%s: %s", kind, group, f" {subject}" if subject else "", message)
        with self._lock:
            self._pending.append((time.time(), kind, group, subject, message, data))
        for fn in self.listeners:
            try:
                fn(kind, group, subject, data)
            except Exception:  # noqa: BLE001 - a listener must never break the daemon
                log.exception("event listener failed on %s", kind)

    def flush(self) -> None:
        """Write the events recorded since the last flush (a failure keeps them for the next)."""
        with self._lock:
            pending, self._pending = self._pending, []
        for i, (ts, kind, group, subject, message, data) in enumerate(pending):
            try:
                self.store.add_event(kind, message, group=group, subject=subject, data=data, ts=ts)
            except Exception as exc:  # noqa: BLE001 - the state db is history; never stop scaling for it
                log.warning("could not record event %s: %s; retrying next tick", kind, exc)
                with self._lock:
                    self._pending[:0] = pending[i:]
                return

    def replicas(self, rows: Iterable[ReplicaRow]) -> None:
        """Record the replicas whose (group, host, state, address, port) changed; drop the gone ones."""
        now: dict[str, ReplicaRow] = {r.name: r for r in rows}
        changed = [r for n, r in now.items() if self._written.get(n) != (r.group, r.host, r.state, r.address, r.port)]
        gone = [n for n in self._written if n not in now]
        if not changed and not gone:
            return
        try:
            self.store.set_replicas(changed, gone)
        except Exception as exc:  # noqa: BLE001
            log.warning("could not record replica states: %s", exc)
            return
        for n in gone:
            del self._written[n]
        for r in changed:
            self._written[r.name] = (r.group, r.host, r.state, r.address, r.port)

    def forget_all_replicas(self, groups: Iterable[str]) -> None:
        """At start: rows a previous run left are stale until this run has adopted what exists."""
        try:
            stale = [r.name for g in groups for r in self.store.replicas(g)]
            self.store.set_replicas([], stale)
        except Exception as exc:  # noqa: BLE001
            log.warning("could not clear old replica states: %s", exc)
