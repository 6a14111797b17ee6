"""The replica registry: the one owner of the tracked replicas, their lock and every move.

The daemon's record of each replica (a ``cms.autoscaler.lifecycle.Track``) lives here, in
``_tracks``, guarded by ``_lock``. The executor, the warm pool, the balancer and the loop
each get this registry (not each other) and change a replica only through its methods:

* ``track`` (an adopted or found domain), ``reserve`` (a new name for a spawn);
* ``take`` (an idle replica in given states, moved and/or claimed for a worker), ``claim``
  and ``release`` (a worker's hold: ``busy``), ``advance`` (a worker's next move),
  ``place`` (where it runs), ``relocate`` (a live migration's new address, announced);
* ``mark_failed`` (FAILED, announced) and ``forget`` (gone, announced removed);
* ``announce``: every event a subscriber sees goes to the feed (the publisher) and the
  journal from here, with the state messages.EVENT_STATE says it leaves.

Reads return copies (``snapshot``) or plain values (``states``, ``on_host``); ``get`` gives
the live record, whose fields a holder may read but not write (a worker that claimed it
writes its own ``timings``, which nothing else reads while it runs).

Modules that may take the registry's lock: registry.py. Nothing else imports ``_lock`` or
``_tracks`` (tests/unit/test_registry.py checks it).

A lost hypervisor host (issue 20): ``lose`` moves a replica of a host that is down to LOST
and announces it failed, then removed (reason "host H is down"); it stays tracked, so
nothing adopts or counts it, until H answers again and is fenced: ``lost_on(H)`` names what
the fence destroys there, and ``forget`` drops each once it is gone.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Any, Callable, Iterable

from cms.autoscaler.journal import Journal
from cms.autoscaler.lifecycle import State, Track
from cms.messages import EVENT_STATE
from cms.virt import replica_name

log = logging.getLogger("cms.autoscaler")
S = State


class Registry:
    def __init__(self, publisher: Any, journal: Journal, *, forget_history: Callable[[str], None] = lambda _n: None,
                 clock: Callable[[], float] = time.time, dry_run: bool = False) -> None:
        self.publisher = publisher
        self.journal = journal
        self.forget_history = forget_history
        self.clock = clock
        self.dry_run = dry_run
        self._tracks: dict[str, Track] = {}
        self._lock = threading.RLock()

    # -- reads ------------------------------------------------------------------------------

    def snapshot(self) -> tuple[Track, ...]:
        """Copies of the tracked replicas, for the planner, the status and the balancer."""
        with self._lock:
            return tuple(Track(**{**t.__dict__, "timings": dict(t.timings)}) for t in self._tracks.values())

    def get(self, name: str) -> Track | None:
        """The live record of ``name`` (read it; change it only through this registry)."""
        with self._lock:
            return self._tracks.get(name)

    def states(self) -> dict[str, str]:
        with self._lock:
            return {t.name: str(t.state) for t in self._tracks.values()}

    def on_host(self, host: str) -> tuple[str, ...]:
        """The names of the replicas on ``host`` (a lost host's replicas, issue 20)."""
        with self._lock:
            return tuple(n for n, t in self._tracks.items() if t.host == host)

    # -- tracking ---------------------------------------------------------------------------

    def track(self, t: Track) -> bool:
        """Track ``t`` (found in libvirt), unless its name is tracked already."""
        with self._lock:
            if t.name in self._tracks:
                return False
            self._tracks[t.name] = t
            return True

    def reserve(self, group: str, park_mode: str = "") -> Track:
        """A new replica of ``group`` in SPAWNING, under a name no tracked replica has."""
        with self._lock:
            created = time.time()
            name = replica_name(group, created)
            while name in self._tracks:
                created += 0.001
                name = replica_name(group, created)
            t = self._tracks[name] = Track(name, group, created, park_mode=park_mode)
            return t

    # -- moves ------------------------------------------------------------------------------

    def take(self, name: str, src: Iterable[State], dst: State | None = None, *, claim: bool = False,
             **fields: Any) -> Track | None:
        """The tracked replica ``name`` when no worker holds it and it is in one of ``src``:
        moved to ``dst`` (when given), its ``fields`` set, and held for a worker when
        ``claim``. None when it is not so (the plan was made from a copy)."""
        with self._lock:
            t = self._tracks.get(name)
            if t is None or t.busy or t.state not in tuple(src):
                return None
            if dst is not None:
                t.move(dst, now=self.clock())
            self._set(t, fields)
            if claim:
                t.busy = True
            return t

    def claim(self, t: Track) -> bool:
        """Hold ``t`` for one worker; False when another worker holds it."""
        with self._lock:
            if t.busy:
                return False
            t.busy = True
            return True

    def release(self, t: Track) -> None:
        with self._lock:
            t.busy = False

    def advance(self, t: Track, src: Iterable[State], dst: State, **fields: Any) -> bool:
        """Move ``t`` from one of ``src`` to ``dst`` (its ``fields`` set); False when something
        moved it elsewhere first."""
        with self._lock:
            if t.state not in tuple(src):
                return False
            t.move(dst, now=self.clock())
            self._set(t, fields)
        if dst == S.PARKED:
            self.forget_history(t.name)     # a parked replica's old samples describe no capacity
        return True

    def place(self, t: Track, **fields: Any) -> None:
        """Where it runs (host, uuid, address, port) or when it resumed: plain fields, no move."""
        with self._lock:
            self._set(t, fields)

    def relocate(self, t: Track, host: str, address: str, port: int, reason: str, **data: Any) -> None:
        """A ready replica answers elsewhere (a live migration's switch-over, or its undoing):
        its new place, announced "moved"."""
        with self._lock:
            t.host, t.port = host, port
            t.address = address or t.address
        self.announce(t, "moved", reason, **data)

    def checks_due(self, hosts_up: Callable[[str], bool] = lambda _h: True) -> list[Track]:
        """The ready replicas no worker holds and no health check is running on, marked checking;
        only on hosts that are up (a replica of a silent host waits for its host's verdict)."""
        with self._lock:
            due = [t for t in self._tracks.values()
                   if t.state == S.READY and not t.busy and not t.checking and hosts_up(t.host)]
            for t in due:
                t.checking = True
            return due

    def checked(self, t: Track, ok: bool | None, limit: int) -> bool:
        """One health check's answer (None: none was asked); True when ``t`` (still ready) has
        failed ``limit`` in a row."""
        with self._lock:
            t.checking = False
            if ok is None or t.state != S.READY:
                return False
            t.fails = 0 if ok else t.fails + 1
            return t.fails >= limit

    def mark_failed(self, t: Track, why: str, only_from: tuple[State, ...] = ()) -> bool:
        """Move it to FAILED (if it is still tracked, not failed already, and in ``only_from``
        when given) and say so: announced when subscribers know it, else an event."""
        with self._lock:
            if self._tracks.get(t.name) is not t or t.state in (S.FAILED, S.LOST) or (only_from and
                                                                                    t.state not in only_from):
                return False
            t.move(S.FAILED)
        if t.announced:
            self.announce(t, "failed", why)
        else:
            self.journal.event("failed", t.group, t.name, why, host=t.host)
        return True

    def lose(self, t: Track, why: str) -> bool:
        """Its host is down: LOST, announced failed and then removed (when subscribers know it;
        else a "failed" event), so clients stop sending to it at once and never see the name
        again. False when it is not tracked or lost already."""
        with self._lock:
            if self._tracks.get(t.name) is not t or t.state == S.LOST:
                return False
            t.move(S.LOST)
        if t.announced:
            self.announce(t, "failed", why)
            self.announce(t, "removed", why)
        else:
            self.journal.event("failed", t.group, t.name, why, host=t.host)
        return True

    def lost_on(self, host: str) -> tuple[str, ...]:
        """The replicas declared lost with ``host``, which its fence destroys."""
        with self._lock:
            return tuple(n for n, t in self._tracks.items() if t.host == host and t.state == S.LOST)

    def fail_quietly(self, t: Track) -> None:
        """FAILED without a word (a removal that did not finish: the error is its event)."""
        with self._lock:
            if t.state not in (S.FAILED, S.LOST):
                t.move(S.FAILED)

    def forget(self, t: Track, reason: str | None = None) -> None:
        """No longer tracked. With a ``reason``: announced "removed" when subscribers know it,
        else a "removed" event; without one, silently (a spawn that never made a domain)."""
        if reason is not None:
            if t.announced:
                self.announce(t, "removed", reason)
            else:
                self.journal.event("removed", t.group, t.name, reason, host=t.host)
        with self._lock:
            if self._tracks.get(t.name) is t:
                del self._tracks[t.name]
        self.forget_history(t.name)

    def drop_all(self) -> int:
        """Forget every replica without a word: this controller stopped leading, and the next
        leader adopts them from libvirt. A worker still holding one finds its track gone, and
        the Scheduler refuses its next change. Returns how many were dropped."""
        with self._lock:
            n = len(self._tracks)
            self._tracks.clear()
            return n

    # -- announcing -------------------------------------------------------------------------

    def announce(self, t: Track, event: str, reason: str, **data: Any) -> None:
        """Tell subscribers (the feed) and the journal: ``event`` with the state it leaves
        (messages.EVENT_STATE), and remember that subscribers know it (until "removed")."""
        if self.dry_run:
            log.info("dry run: would announce %s %s", event, t.name)
            return
        self.publisher.announce(event, t.replica(EVENT_STATE[event]), reason)
        with self._lock:
            t.announced = event != "removed"
        t.timings[event] = time.monotonic()
        self.journal.event(event, t.group, t.name, reason, host=t.host, address=t.address, port=t.port, **data)

    @staticmethod
    def _set(t: Track, fields: dict[str, Any]) -> None:
        for k, v in fields.items():
            if not hasattr(t, k):
                raise AttributeError(f"a Track has no field {k!r}")
            setattr(t, k, v)
