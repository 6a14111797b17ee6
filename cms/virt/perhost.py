"""One thread per host, so a tick asks every host at once and never waits on one past its deadline.

A host whose link is down holds a libvirt call for as long as TCP takes to give up (minutes
for a connect whose SYNs are dropped, until the keepalive gives up for a call on an open
connection). ``PerHost.call_all`` runs each host's call on that host's own thread (made once,
kept: a daemon thread, so a call that never returns cannot hold the process at exit) and waits
for each at most its own timeout; the answers in time are used at once. A host whose previous
call still runs is not asked again: it did not answer this tick either, and no thread piles up
behind a dead link; one busy with a short call (a placement's) is asked right after it.
"""

from __future__ import annotations

import queue
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Callable


@dataclass
class _Job:
    fn: Callable[[], Any]
    done: threading.Event = field(default_factory=threading.Event)
    value: Any = None
    error: BaseException | None = None


class _Worker:
    def __init__(self, name: str, clock: Callable[[], float]) -> None:
        self.jobs: "queue.SimpleQueue[_Job | None]" = queue.SimpleQueue()
        self.clock = clock
        self.current: _Job | None = None     # the job it runs now, since when
        self.since = 0.0
        self.thread = threading.Thread(target=self._run, name=f"libvirt-{name}", daemon=True)
        self.thread.start()

    def busy_for(self) -> float | None:
        """How long its current call has run (0 for one still queued), or None when it is free."""
        job = self.current
        if job is not None and not job.done.is_set():
            return self.clock() - self.since
        return None if self.jobs.empty() else 0.0

    def _run(self) -> None:
        while (job := self.jobs.get()) is not None:
            self.current, self.since = job, self.clock()
            try:
                job.value = job.fn()
            except BaseException as exc:  # noqa: BLE001 - handed to the caller, which decides
                job.error = exc
            finally:
                job.done.set()
                self.current = None


class PerHost:
    """A persistent thread per host for the calls a tick bounds by a deadline."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self.clock = clock
        self._workers: dict[str, _Worker] = {}
        self._lock = threading.Lock()

    def busy(self, host: str) -> float | None:
        """How long the host's previous call has run, or None when its thread is free."""
        w = self._workers.get(host)
        return None if w is None else w.busy_for()

    def call_all(self, calls: dict[str, tuple[Callable[[], Any], float]]
                 ) -> tuple[dict[str, Any], dict[str, str], dict[str, BaseException]]:
        """Run ``fn`` for every host at once, each with its timeout in seconds.

        Returns (values of the calls done in time, host -> why it did not answer, host -> the
        exception its call raised). A host busy with an earlier call (placement's, say) is
        asked after it, the wait counting in the timeout; one whose earlier call has run for
        the timeout already hangs, and is not asked.
        """
        started: dict[str, tuple[_Job, float, float]] = {}
        late: dict[str, str] = {}
        with self._lock:
            for host, (fn, timeout) in calls.items():
                ran = self.busy(host)
                if ran is not None and ran >= timeout:
                    late[host] = f"still busy with its previous call ({ran:.1f} s)"
                    continue
                w = self._workers.get(host)
                if w is None:
                    w = self._workers[host] = _Worker(host, self.clock)
                job = _Job(fn)
                w.jobs.put(job)
                started[host] = (job, self.clock() + timeout, timeout)
        values: dict[str, Any] = {}
        raised: dict[str, BaseException] = {}
        for host, (job, deadline, timeout) in started.items():
            if not job.done.wait(max(0.0, deadline - self.clock())):
                late[host] = f"did not answer within {timeout:g} s"
            elif job.error is not None:
                raised[host] = job.error
            else:
                values[host] = job.value
        return values, late, raised

    def close(self) -> None:
        """Let the threads end (one stuck in a call ends when that call does)."""
        with self._lock:
            for w in self._workers.values():
                w.jobs.put(None)
            self._workers.clear()
