"""The reconcile loop's executor: performs a plan's actions, through the Scheduler only.

Quick actions (announcing, state moves) run on the tick's thread; slow ones (spawning and
waiting for /health, draining, parking, removing) run on worker threads so the tick never
blocks. A replica's ``busy`` flag keeps two workers off it. Every state change is a
``Track.move`` under ``self.lock``, and every handler checks the replica's state again
before acting: the plan was made from a copy, and a worker may have moved on since.

Each action type has one handler in ``self.handlers``; ``register`` adds a kind (host
balancing plugs a live migration in that way) without touching the loop.

The warm pool's handlers (adopt, park, unpark, discard) are in cms.autoscaler.warm.

Spawn stages (clone, define, start, boot to /health) are logged for every replica added,
with timings; a stage past SLOW_STAGE_S is a warning that names ``cms doctor``.
"""

from __future__ import annotations

import concurrent.futures
import logging
import threading
import time
from typing import Any, Callable

from cms import errors
from cms.autoscaler import planner as P
from cms.autoscaler.health import HealthChecker, wait_healthy
from cms.autoscaler.journal import Journal
from cms.autoscaler.lifecycle import State, Track
from cms.autoscaler.warm import WarmPool
from cms.autoscaler.workers import Workers
from cms.config import Config
from cms.metrics import History
from cms.scheduler import Scheduler
from cms.virt import Listing, OwnerMeta, replica_name

log = logging.getLogger("cms.autoscaler")
S = State

SLOW_STAGE_S = 5.0


class Executor(WarmPool):
    def __init__(self, cfg: Config, scheduler: Scheduler, health: HealthChecker, publisher: Any, journal: Journal,
                 history: History, *, stop: threading.Event, clock: Callable[[], float] = time.time,
                 dry_run: bool = False, on_unpark: Callable[[Track], None] | None = None) -> None:
        self.cfg = cfg
        self.scheduler = scheduler
        self.health = health
        self.publisher = publisher
        self.journal = journal
        self.history = history
        self.stop = stop
        self.clock = clock
        self.dry_run = dry_run
        self.on_unpark = on_unpark or (lambda _t: None)
        self.tracks: dict[str, Track] = {}
        self.lock = threading.RLock()
        self.workers = Workers()
        self.checks = concurrent.futures.ThreadPoolExecutor(max_workers=8, thread_name_prefix="cms-health")
        self.spawn_backoff: dict[tuple[str, bool], tuple[float, int]] = {}   # (group, warm) -> (until, n)
        self.handlers: dict[type, Callable[[Any, Listing | None], None]] = {
            P.Adopt: self._adopt, P.AdoptWarm: self._adopt_warm, P.Cleanup: self._cleanup,
            P.CleanOrphanVolumes: self._clean_orphans, P.Fail: self._fail_action,
            P.FinishRemoval: self._finish_removal, P.Spawn: self._spawn, P.Unpark: self._unpark,
            P.Drain: self._drain, P.Park: self._park_again, P.Forget: self._forget_warm,
            P.Discard: self._discard,
        }

    def register(self, kind: type, handler: Callable[[Any, Listing | None], None]) -> None:
        """Handle another action kind (e.g. a live migration planned by host balancing)."""
        self.handlers[kind] = handler

    def execute(self, plan: P.Plan, listing: Listing | None) -> None:
        for a in plan.actions:
            try:
                self.handlers[type(a)](a, listing)
            except Exception:  # noqa: BLE001 - one action's trouble must not stop the others
                log.exception("action %s failed; the next tick plans again", type(a).__name__)
        self.workers.prune()

    def snapshot(self) -> tuple[Track, ...]:
        """Copies of the tracked replicas, for the planner and the status."""
        with self.lock:
            return tuple(Track(**{**t.__dict__, "timings": dict(t.timings)}) for t in self.tracks.values())

    def spawn_paused(self, warm: bool = False) -> frozenset[str]:
        """Groups whose serving spawns (or warm refills) back off after a failure."""
        now = time.monotonic()
        return frozenset(g for (g, w), (until, _n) in self.spawn_backoff.items() if w == warm and now < until)

    def back_off(self, group: str, warm: bool) -> float:
        """Pause the group's spawns (or refills): 2 s, doubling per failure in a row, at most 60 s."""
        _until, n = self.spawn_backoff.get((group, warm), (0.0, 0))
        delay = min(60.0, 2.0 * 2 ** n)
        self.spawn_backoff[(group, warm)] = (time.monotonic() + delay, n + 1)
        return delay

    # -- announcing -------------------------------------------------------------------------

    def _announce(self, t: Track, event: str, reason: str, **data: Any) -> None:
        state = {"added": "starting", "removed": None}.get(event, event)
        if self.dry_run:
            log.info("dry run: would announce %s %s", event, t.name)
            return
        self.publisher.announce(event, t.replica(state), reason)
        if event == "added":
            t.announced = True
        t.timings[event] = time.monotonic()
        self.journal.event(event, t.group, t.name, reason, host=t.host, address=t.address, port=t.port, **data)

    def _meta(self, t: Track, warm: bool) -> OwnerMeta:
        gc = self.cfg.groups[t.group]
        return OwnerMeta(group=t.group, role="replica", created=t.created, port=t.port, guest_port=gc.port, warm=warm)

    # -- workers ----------------------------------------------------------------------------

    def _start_worker(self, fn: Callable[..., None], t: Track, *args: Any) -> None:
        t.busy = True
        self.workers.start(f"cms-{fn.__name__.strip('_')}-{t.name}", fn, t, *args,
                           done=lambda: setattr(t, "busy", False))

    def _idle(self, name: str, *states: State) -> Track | None:
        """The tracked replica ``name`` when no worker owns it and it is in one of ``states``."""
        t = self.tracks.get(name)
        return t if t is not None and not t.busy and t.state in states else None

    def _take(self, name: str, src: State, dst: State) -> Track | None:
        """Under the lock, the idle replica ``name`` in ``src``, moved to ``dst``; None if it is not so."""
        with self.lock:
            t = self._idle(name, src)
            if t is not None:
                t.move(dst, now=self.clock())
            return t

    def _advance(self, t: Track, src: State, dst: State) -> bool:
        """Move ``t`` from ``src`` to ``dst`` under the lock; False when something moved it first."""
        with self.lock:
            if t.state != src:
                return False
            t.move(dst, now=self.clock())
            return True

    def _forget(self, t: Track) -> None:
        with self.lock:
            self.tracks.pop(t.name, None)
        self.history.forget(t.name)

    def _track_from(self, d: Any, state: State) -> Track:
        t = Track(d.name, d.meta.group, d.meta.created, state, host=d.host, uuid=d.uuid, port=d.meta.port)
        if self.cfg.network.mode == "user":
            t.address = self.scheduler.fleet.forward_address(d.host)
        else:
            t.port = d.meta.guest_port
        return t

    def _where(self, t: Track) -> tuple[str, int] | None:
        if not t.address:
            try:
                t.address = self.scheduler.lease_address(t.host, t.name) or ""
            except errors.VirtError:
                return None
        return (t.address, t.port) if t.address else None

    # -- adoption and cleanup ---------------------------------------------------------------

    def _adopt(self, a: P.Adopt, _listing: Listing | None) -> None:
        d = a.domain
        with self.lock:
            if d.name in self.tracks:
                return
            t = self.tracks[d.name] = self._track_from(d, S.STARTING)
        self.journal.event("adopt", t.group, t.name, a.reason, host=d.host)
        self._announce(t, "added", a.reason)
        self._start_worker(self._await_ready, t)

    def _cleanup(self, a: P.Cleanup, _listing: Listing | None) -> None:
        d = a.domain
        self.journal.event("cleanup", d.meta.group, d.name, a.reason, host=d.host)
        if self.dry_run:
            return
        with self.lock:
            if d.name in self.tracks:
                return
            t = self.tracks[d.name] = self._track_from(d, S.FAILED)
        self._start_worker(self._remove, t, a.reason)

    def _clean_orphans(self, a: P.CleanOrphanVolumes, _listing: Listing | None) -> None:
        found = self.scheduler.remove_orphan_volumes(tuple(f"cms-{g}-" for g in a.groups), set(a.keep),
                                                     dry_run=self.dry_run)
        for host, vol in found:
            self.journal.event("cleanup", vol.split("-")[1], vol[:-len(".qcow2")],
                               f"orphan volume {self.cfg.libvirt.pool}/{vol}: deleting", host=host)

    # -- failing and removing ---------------------------------------------------------------

    def _fail_action(self, a: P.Fail, _listing: Listing | None) -> None:
        t = self.tracks.get(a.name)
        if t is not None:
            self.fail(t, a.reason, a.remove)

    def fail(self, t: Track, reason: str, remove: bool = True) -> None:
        """Announce failed at once, then remove it; the group's gap brings a replacement."""
        if not self._mark_failed(t, reason):
            return
        if not remove:
            if t.announced:
                self._announce(t, "removed", reason)
            self._forget(t)
            return
        if t.busy:
            return  # its worker sees the state and stops; the next tick removes it
        self._start_worker(self._remove, t, reason)

    def _mark_failed(self, t: Track, why: str, only_from: tuple[State, ...] = ()) -> bool:
        """Move it to FAILED (if it is still tracked, not failed already, and in `only_from`
        when given) and say so: announced to subscribers when they know it, else an event."""
        with self.lock:
            if self.tracks.get(t.name) is not t or t.state == S.FAILED or (only_from and t.state not in only_from):
                return False
            t.move(S.FAILED)
        if t.announced:
            self._announce(t, "failed", why)
        else:
            self.journal.event("failed", t.group, t.name, why, host=t.host)
        return True

    def _finish_removal(self, a: P.FinishRemoval, _listing: Listing | None) -> None:
        t = self._idle(a.name, S.DRAINING, S.FAILED)
        if t is None:
            return
        if a.gone:
            if t.announced:
                self._announce(t, "removed", a.reason)
            self._forget(t)
        else:
            self._start_worker(self._remove, t, a.reason)

    def _remove(self, t: Track, reason: str) -> None:
        if self.dry_run:
            log.info("dry run: would remove %s (%s)", t.name, reason)
            self._forget(t)
            return
        try:
            if t.host:
                self.scheduler.remove(t.host, t.name, graceful_timeout=self.cfg.autoscaler.shutdown_timeout_s,
                                      wait=self.stop.wait)
        except errors.VirtError as exc:
            self.journal.event("remove_failed", t.group, t.name, f"{exc}; next tick retries", error=str(exc))
            with self.lock:
                if t.state != S.FAILED:
                    t.move(S.FAILED)
            return
        if t.announced:
            self._announce(t, "removed", reason)
        else:
            self.journal.event("removed", t.group, t.name, reason, host=t.host)
        self._forget(t)

    # -- spawning ---------------------------------------------------------------------------

    def _spawn(self, a: P.Spawn, listing: Listing | None) -> None:
        gc = self.cfg.groups[a.group]
        if self.dry_run:
            log.info("dry run: group %s would add a %sreplica (%s)", a.group, "warm " if a.warm else "", a.reason)
            return
        with self.lock:
            created = time.time()
            name = replica_name(a.group, created)
            while name in self.tracks:
                created += 0.001
                name = replica_name(a.group, created)
            t = self.tracks[name] = Track(name, a.group, created, park_mode=gc.warm_pool.state if a.warm else "")
        if a.warm:
            self.journal.event("warm_refill", a.group, name, f"{a.reason}: booting a warm replica")
        elif a.pool_empty:
            self.journal.event("warm_empty", a.group, name, f"{a.reason}: no parked replica to take, so a cold "
                               "boot (clone, define, start, boot)")
        t.timings["decided"] = time.monotonic()
        self._start_worker(self._spawn_worker, t, a, listing)

    def _spawn_worker(self, t: Track, a: P.Spawn, listing: Listing | None) -> None:
        gc = self.cfg.groups[t.group]
        t.timings["spawn"] = time.monotonic()
        try:
            vt = gc.vertical    # a group that scales vertically: defined with room to grow live
            s = self.scheduler.spawn(t.name, vcpus=gc.vcpus, memory_mib=gc.memory_mib,
                                     meta=OwnerMeta(group=t.group, role="replica", created=t.created,
                                                    guest_port=gc.port, warm=a.warm),
                                     max_vcpus=vt.max_vcpus if vt.enabled else 0,
                                     max_memory_mib=vt.max_memory_mib if vt.enabled else 0,
                                     listing=listing, avoid=a.avoid_hosts)
        except errors.CmsError as exc:
            delay = self.back_off(t.group, a.warm)
            self.journal.event("spawn_failed", t.group, t.name, f"{exc}; retrying in {delay:.0f}s", error=str(exc))
            self._forget(t)
            return
        if not a.warm:
            self.spawn_backoff.pop((t.group, False), None)
        t.timings["started"] = time.monotonic()
        stages = {k: round(v, 3) for k, v in s.timings.items()}
        with self.lock:
            t.host, t.uuid, t.address, t.port = s.host, s.uuid, s.address, s.port
            if t.state != S.SPAWNING:
                return
            t.move(S.WARMING if a.warm else S.STARTING)
        self._log_stages(t, stages)
        if not a.warm:
            self._announce(t, "added", a.reason, **{f"{k}_s": v for k, v in stages.items()})
        self._await_ready(t)

    def _log_stages(self, t: Track, stages: dict[str, float]) -> None:
        text = ", ".join(f"{k} {v:.2f}s" for k, v in stages.items())
        log.info("spawn stages of %s on %s: %s", t.name, t.host, text)
        for k, v in stages.items():
            if v > SLOW_STAGE_S:
                log.warning("%s: %s took %.1f s on host %s (over %g s): run `cms doctor` to find out why",
                            t.name, k, v, t.host, SLOW_STAGE_S)

    def _await_ready(self, t: Track) -> None:
        """Until /health answers: a starting replica becomes ready, a warming one is parked."""
        began = t.timings.get("spawn", time.monotonic())
        deadline = time.monotonic() + self.cfg.autoscaler.health_timeout_s
        ok = wait_healthy(self.health, lambda: self._where(t), deadline, min(0.25, self.cfg.autoscaler.tick_s),
                          self.stop.wait, lambda: not self.stop.is_set() and t.state in (S.STARTING, S.WARMING))
        boot = time.monotonic() - t.timings.get("started", began)
        with self.lock:
            if t.state not in (S.STARTING, S.WARMING):
                return
            if self.stop.is_set():
                return
            warm = t.state == S.WARMING
            if ok and not warm:
                t.move(S.READY, now=self.clock())
        if ok and "started" in t.timings:
            log.info("spawn stage of %s: boot to /health %.2fs", t.name, boot)
            if boot > SLOW_STAGE_S:
                log.warning("%s: boot to /health took %.1f s on host %s (over %g s): run `cms doctor` to find out why",
                            t.name, boot, t.host, SLOW_STAGE_S)
        if ok and warm:
            self._park(t, t.park_mode, "booted to /health", prepared=True)
        elif ok:
            since = "spawn" if "spawn" in t.timings else "adoption"
            decided = t.timings.get("decided")    # absent for an adopted replica
            self._announce(t, "ready", f"/health answered {time.monotonic() - began:.1f}s after {since}",
                           boot_s=round(boot, 3),
                           decision_to_ready_s=None if decided is None else round(time.monotonic() - decided, 3))
        else:
            why = f"no healthy answer within {self.cfg.autoscaler.health_timeout_s:g}s"
            if t.state == S.WARMING:
                self.back_off(t.group, True)
            if self._mark_failed(t, why, (S.STARTING, S.WARMING)):
                self._remove(t, why)

    # -- draining -----------------------------------------------------------------------------

    def _drain(self, a: P.Drain, _listing: Listing | None) -> None:
        if self.dry_run:
            log.info("dry run: would drain %s (%s)", a.name, a.reason)
            return
        with self.lock:
            t = self._idle(a.name, S.STARTING, S.READY)
            if t is None:
                return
            was_ready = t.state == S.READY
            t.move(S.DRAINING)
            t.park_mode = a.park          # back into the pool after the drain (planner.role)
        self.journal.event("scale_in", t.group, t.name, a.reason)
        self._announce(t, "draining", a.reason)
        self._start_worker(self._drain_worker, t, a.reason, was_ready, a.park)

    def _drain_worker(self, t: Track, reason: str, was_ready: bool, park: str) -> None:
        deadline = time.monotonic() + self.cfg.autoscaler.drain_s
        while was_ready and t.address and time.monotonic() < deadline and not self.stop.is_set():
            n = self.health.in_flight(t.address, t.port)
            if n == 0:
                break
            self.stop.wait(0.2)
        if self.stop.is_set():
            # Don't pull the plug on the way out: the next start adopts it and decides again.
            log.info("stopping: %s left running for the next start to adopt", t.name)
            return
        if park and t.state == S.DRAINING:
            self._announce(t, "removed", f"{reason}; parked in the warm pool")
            t.announced = False
            self._park(t, park, "reused on scale-in")
            return
        self._remove(t, reason)

    # -- health of ready replicas -------------------------------------------------------------

    def probe_ready(self) -> None:
        """One /health check per ready replica, off the tick's thread."""
        with self.lock:
            ready = [t for t in self.tracks.values() if t.state == S.READY and not t.busy and not t.checking]
            for t in ready:
                t.checking = True
        for t in ready:
            try:
                self.checks.submit(self._check_one, t)
            except RuntimeError:  # shutting down
                t.checking = False

    def _check_one(self, t: Track) -> None:
        try:
            ok = self.health.healthy(t.address, t.port)
            with self.lock:
                if t.state != S.READY:
                    return
                t.fails = 0 if ok else t.fails + 1
                failed = t.fails >= self.cfg.autoscaler.health_failures
            if failed:
                self.fail(t, f"/health failed {t.fails} times in a row")
        finally:
            t.checking = False

    # -- stopping -----------------------------------------------------------------------------

    def wait_workers(self, timeout: float) -> None:
        self.workers.join(timeout)

    def close(self, timeout: float) -> None:
        self.wait_workers(timeout)
        self.checks.shutdown(wait=False, cancel_futures=True)
