"""The hosts' liveness, tick by tick, and what follows from it (issue 20).

Each tick's listing (cms.virt.Fleet.list_domains: every host at once, each within its
``hosts[].timeout_s``) says which hosts answered. ``HostWatch.step`` feeds that to the pure
host state machine (cms.autoscaler.hoststate) and writes its events to the journal; the
planner then gets every host's state (``states``) and acts on what answers.

What a move sets off here:

* into DOWN: the host's ``fence_command``, when it has one, runs with the host's name
  appended, on a worker, bounded by ``fence_timeout_s``; its outcome is an event
  (``fence_command``: ok or failed, with its output) and ``fenced_by_command`` remembers it.
  The replicas there are the planner's business (``Lose``); the VMs made through the API
  are marked lost, and restarted elsewhere when the fence command succeeded and they are ha
  (cms.autoscaler.rescue).
* into FENCING (it answers again): before anything else runs there, a worker destroys and
  undefines every replica domain of our groups on it that was declared lost (or that no
  replica tracks: a daemon restarted while the host was away declared nothing, but knows
  nothing there either) and deletes their volumes, and undefines what it holds of API VMs
  restarted elsewhere (their disks are in use); then its other lost API VMs are back. The
  names go to ``step`` on the next tick, which moves the host to UP with ``host_fenced``
  (the names) and ``host_up``.

A daemon that starts takes each host's last declared state from the journal (the newest host
event): a host it left down or fencing starts down, so it is fenced when it answers, even
though this run declared nothing lost there.

Nothing here waits on a host: the fence runs on a worker, and a host that stops answering
while it is being fenced is DOWN again (the fence is tried again when it returns).
"""

from __future__ import annotations

import contextlib
import logging
import os
import shlex
import signal
import subprocess
import threading
import time
from typing import Callable

from cms import errors
from cms.autoscaler import hoststate
from cms.autoscaler.hoststate import PLACEABLE, HostState, HostTrack
from cms.autoscaler.journal import Journal
from cms.autoscaler.registry import Registry
from cms.autoscaler.rescue import Rescue
from cms.autoscaler.workers import Workers
from cms.config import Config
from cms.scheduler import Scheduler
from cms.virt import Listing

log = logging.getLogger("cms.autoscaler")
H = HostState


class HostWatch:
    def __init__(self, cfg: Config, scheduler: Scheduler, registry: Registry, journal: Journal, *,
                 groups: tuple[str, ...], clock: Callable[[], float] = time.time, dry_run: bool = False) -> None:
        self.cfg = cfg
        self.scheduler = scheduler
        self.registry = registry
        self.journal = journal
        self.groups = groups
        self.clock = clock
        self.dry_run = dry_run
        self.rescue = Rescue(cfg, scheduler, journal, dry_run=dry_run)
        self.tracks: dict[str, HostTrack] = {}
        self.resume()
        self.workers = Workers()
        self._lock = threading.Lock()
        self._fencing: set[str] = set()                  # hosts whose fence worker runs
        self._fenced: dict[str, tuple[str, ...]] = {}    # host -> what its finished fence destroyed
        self.fenced_by_command: dict[str, bool] = {}     # host -> its fence_command's outcome since it went down
        self.fence_seconds: dict[str, float] = {}        # host -> how long its last fence took

    def resume(self) -> None:
        """Start from the hosts' last declared states (the newest host events in the journal):
        one left down or fencing starts down, so it is fenced when it answers; the others up.
        At start, and when this controller becomes the leader."""
        now = self.clock()
        self.tracks = {h.name: HostTrack.new(h.name, now) for h in self.cfg.hosts}
        try:
            declared = self.scheduler.store.latest_events(hoststate.STATE_OF)
        except Exception as exc:  # noqa: BLE001 - the journal is history: without it every host starts up
            log.warning("could not read the hosts' last states: %s", exc)
            declared = {}
        for name, e in declared.items():
            if name in self.tracks and hoststate.STATE_OF[e.kind] in hoststate.LOST:
                self.tracks[name] = HostTrack(name, H.DOWN, now, now)

    # -- reads ------------------------------------------------------------------------------

    def states(self) -> dict[str, HostState]:
        return {h: t.state for h, t in self.tracks.items()}

    def up(self, host: str) -> bool:
        """Whether placement, health checks and new work may use ``host``."""
        t = self.tracks.get(host)
        return t is None or t.state in PLACEABLE

    def placeable(self) -> frozenset[str]:
        return frozenset(h for h, t in self.tracks.items() if t.state in PLACEABLE)

    # -- the tick -----------------------------------------------------------------------------

    def step(self, listing: Listing, now: float) -> None:
        """One tick's verdict on every host, from the listing; the events and what they set off."""
        for name, before in list(self.tracks.items()):
            answered = name not in listing.down
            with self._lock:
                fenced = self._fenced.pop(name, None) if before.state == H.FENCING and answered else None
            after, events = hoststate.step(before, answered, now, self.cfg.autoscaler.host_down_s,
                                           why=listing.down.get(name, ""), fenced=fenced)
            self.tracks[name] = after
            for e in events:
                level = logging.WARNING if e.kind in ("host_suspect", "host_down") else logging.INFO
                extra = {"names": list(e.names), "fence_s": round(self.fence_seconds.get(name, 0.0), 3)} \
                    if e.kind == "host_fenced" else {}
                self.journal.event(e.kind, "", name, e.reason, level=level, state=str(after.state), **extra)
            if after.state == H.DOWN and before.state != H.DOWN:
                self.fenced_by_command.pop(name, None)
                self.rescue.lost(name, now)
                self._run_fence_command(name)
            if after.state == H.FENCING:
                self._start_fence(name, listing)
            elif after.state == H.UP and before.state == H.FENCING:
                self.fenced_by_command.pop(name, None)

    # -- the fence command, when a host is declared down --------------------------------------

    def _run_fence_command(self, host: str) -> None:
        command = self.cfg.host(host).fence_command
        if not command or self.dry_run:
            return
        self.workers.start(f"cms-fence-command-{host}", self._fence_command, host, command)

    def _fence_command(self, host: str, command: str) -> None:
        timeout = self.cfg.host(host).fence_timeout_s
        argv = shlex.split(command) + [host]
        t0 = time.monotonic()
        try:
            # its own process group, so a timeout kills whatever it started too
            p = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                 text=True, start_new_session=True)
        except OSError as exc:
            p, ok, said, why = None, False, "", f"could not run it: {exc.strerror or exc}"
        if p is not None:
            try:
                out, _ = p.communicate(timeout=timeout)
                ok, said, why = p.returncode == 0, " ".join(out.split())[-400:], f"exit {p.returncode}"
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(p.pid, signal.SIGKILL)
                p.communicate()
                ok, said, why = False, "", f"still running after fence_timeout_s {timeout:g} s: killed"
        took = time.monotonic() - t0
        self.fenced_by_command[host] = ok
        verdict = "fenced" if ok else "NOT fenced"
        self.journal.event("fence_command", "", host, f"host {host} {verdict} by `{command} {host}`: {why} in "
                           f"{took:.1f} s{': ' + said if said else ''}",
                           level=logging.INFO if ok else logging.WARNING, ok=ok, seconds=round(took, 3))
        if ok:
            self.rescue.evacuate(host, [h for h in self.tracks if not self.up(h)])

    # -- the fence of a host that answers again ------------------------------------------------

    def _start_fence(self, host: str, listing: Listing) -> None:
        with self._lock:
            if host in self._fencing or host in self._fenced:
                return
            self._fencing.add(host)
        lost = set(self.registry.lost_on(host))
        tracked = {t.name for t in self.registry.snapshot()}
        there = list(listing.on(host) or [])
        stale = sorted(lost | {d.name for d in there if d.meta.group in self.groups
                               and d.meta.role == "replica" and d.name not in tracked})
        moved = self.rescue.stale_on(host, there)
        self.workers.start(f"cms-fence-{host}", self._fence, host, stale, moved, there,
                           done=lambda: self._fencing.discard(host))

    def _fence(self, host: str, stale: list[str], moved: list[str], there: list) -> None:
        """Destroy what was declared lost on ``host``, all at once (none may run a moment longer
        than it must), then undefine it and delete its volume; undefine what it holds of API VMs
        restarted elsewhere (``moved``: their disks are in use); then its lost API VMs are back
        (a worker)."""
        t0 = time.monotonic()
        failures: list[str] = []

        def remove(name: str) -> None:
            try:
                if self.dry_run:
                    return
                # destroy (no graceful shutdown), undefine, and the volume unless its VM runs elsewhere
                self.scheduler.remove(host, name, keep_disk=name in moved)
            except errors.VirtError as exc:
                failures.append(f"{name}: {exc}")

        threads = [threading.Thread(target=remove, args=(n,), name=f"cms-fence-{n}", daemon=True)
                   for n in stale + moved]
        for th in threads:
            th.start()
        for th in threads:
            th.join()
        if failures:
            self.journal.event("fence_failed", "", host, f"host {host}: could not destroy {'; '.join(failures)}; "
                               "the next tick tries again", level=logging.WARNING)
            return
        for name in stale:
            t = self.registry.get(name)
            if t is not None:
                self.registry.forget(t, f"destroyed by the fence of host {host}")
        self.rescue.back(host, there)
        with self._lock:
            self._fenced[host] = tuple(stale + moved)
            self.fence_seconds[host] = time.monotonic() - t0

    def wait(self, timeout: float) -> None:
        self.workers.join(timeout)
