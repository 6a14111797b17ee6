"""The reconcile loop's executor: performs a plan's actions, through the Scheduler only.

Quick actions (announcing, state moves) run on the tick's thread; slow ones (spawning and
waiting for /health, draining, removing) run on worker threads (cms.autoscaler.steps) so
the tick never blocks. A worker holds its replica (``busy``) so no other takes it, and
every handler checks the replica's state again before acting: the plan was made from a
copy, and a worker may have moved on since. Every state change goes through the replica
registry (cms.autoscaler.registry), which owns the tracks and their lock.

Each action type has one handler in ``self.handlers``; ``register`` adds a kind without
touching the loop. The executor's own handlers are the serving path's (adopt, clean up,
fail, lose (its host is down), finish a removal, spawn, drain); the warm pool (cms.autoscaler.warm) plugs its own
in through ``register`` (AdoptWarm, Refill, Park, Unpark, Forget, Discard).
"""

from __future__ import annotations

import concurrent.futures
import logging
import time
from typing import Callable

from cms.autoscaler import planner as P
from cms.autoscaler.lifecycle import State, Track
from cms.autoscaler.registry import Registry
from cms.autoscaler.steps import Steps
from cms.config import Config
from cms.virt import Listing

log = logging.getLogger("cms.autoscaler")
S = State


class Executor:
    def __init__(self, cfg: Config, registry: Registry, steps: Steps,
                 host_up: Callable[[str], bool] = lambda _h: True) -> None:
        self.cfg, self.registry, self.steps = cfg, registry, steps
        self.host_up = host_up      # health checks only where the host answers (cms.autoscaler.hostwatch)
        self.journal, self.dry_run = steps.journal, steps.dry_run
        self.checks = concurrent.futures.ThreadPoolExecutor(max_workers=8, thread_name_prefix="cms-health")
        self.handlers: dict[type, P.Handler] = {
            P.Adopt: self._adopt, P.Cleanup: self._cleanup, P.CleanOrphanVolumes: self._clean_orphans,
            P.Fail: self._fail_action, P.FinishRemoval: self._finish_removal, P.Spawn: self._spawn,
            P.Drain: self._drain, P.Lose: self._lose,
        }

    def register(self, kind: type, handler: P.Handler) -> None:
        """Handle another action kind (the warm pool's are plugged in this way)."""
        self.handlers[kind] = handler

    def execute(self, plan: P.Plan, listing: Listing | None) -> None:
        for a in plan.actions:
            try:
                self.handlers[type(a)](a, listing)
            except Exception:  # noqa: BLE001 - one action's trouble must not stop the others
                log.exception("action %s failed; the next tick plans again", type(a).__name__)
        self.steps.workers.prune()

    # -- adoption and cleanup ---------------------------------------------------------------

    def _adopt(self, a: P.Adopt, _listing: Listing | None) -> None:
        t = self.steps.track_from(a.domain, S.STARTING)
        if not self.registry.track(t):
            return
        self.journal.event("adopt", t.group, t.name, a.reason, host=t.host)
        self.registry.announce(t, "added", a.reason)
        self.steps.start_worker(self._await_ready, t)

    def _cleanup(self, a: P.Cleanup, _listing: Listing | None) -> None:
        d = a.domain
        self.journal.event("cleanup", d.meta.group, d.name, a.reason, host=d.host)
        if self.dry_run:
            return
        t = self.steps.track_from(d, S.FAILED)
        if self.registry.track(t):
            self.steps.start_worker(self.steps.remove, t, a.reason)

    def _clean_orphans(self, a: P.CleanOrphanVolumes, _listing: Listing | None) -> None:
        found = self.steps.scheduler.remove_orphan_volumes(tuple(f"cms-{g}-" for g in a.groups), set(a.keep),
                                                           dry_run=self.dry_run)
        for host, vol in found:
            self.journal.event("cleanup", vol.split("-")[1], vol[:-len(".qcow2")],
                               f"orphan volume {self.cfg.libvirt.pool}/{vol}: deleting", host=host)

    # -- failing and removing ---------------------------------------------------------------

    def _fail_action(self, a: P.Fail, _listing: Listing | None) -> None:
        t = self.registry.get(a.name)
        if t is not None:
            self.fail(t, a.reason, a.remove)

    def fail(self, t: Track, reason: str, remove: bool = True) -> None:
        """Announce failed at once, then remove it; the group's gap brings a replacement."""
        if not self.registry.mark_failed(t, reason):
            return
        if not remove:
            self.registry.forget(t, reason)
            return
        # held by a worker: it sees the state and stops; the next tick removes it
        self.steps.start_worker(self.steps.remove, t, reason)

    def _lose(self, a: P.Lose, _listing: Listing | None) -> None:
        """Its host is down: announced failed and removed now; its domain waits for the fence."""
        t = self.registry.get(a.name)
        if t is not None:
            self.registry.lose(t, a.reason)

    def _finish_removal(self, a: P.FinishRemoval, _listing: Listing | None) -> None:
        t = self.registry.take(a.name, (S.DRAINING, S.FAILED))
        if t is None:
            return
        if a.gone:
            self.registry.forget(t, a.reason)
        else:
            self.steps.start_worker(self.steps.remove, t, a.reason)

    # -- spawning ---------------------------------------------------------------------------

    def _spawn(self, a: P.Spawn, listing: Listing | None) -> None:
        if self.dry_run:
            log.info("dry run: group %s would add a replica (%s)", a.group, a.reason)
            return
        t = self.registry.reserve(a.group)
        if a.pool_empty:
            self.journal.event("warm_empty", a.group, t.name, f"{a.reason}: no parked replica to take, so a cold "
                               "boot (clone, define, start, boot)")
        t.timings["decided"] = time.monotonic()
        self.steps.start_worker(self._spawn_worker, t, a, listing)

    def _spawn_worker(self, t: Track, a: P.Spawn, listing: Listing | None) -> None:
        stages = self.steps.place_new(t, listing, warm=False, avoid=a.avoid_hosts)
        if stages is None:
            return
        self.steps.succeeded(t.group, warm=False)
        if not self.registry.advance(t, (S.SPAWNING,), S.STARTING):
            return
        self.registry.announce(t, "added", a.reason, **{f"{k}_s": v for k, v in stages.items()})
        self._await_ready(t)

    def _await_ready(self, t: Track) -> None:
        """Until /health answers (on its worker); then ready, announced."""
        began = t.timings.get("spawn", time.monotonic())
        if not self.steps.booted(t, S.STARTING) or not self.registry.advance(t, (S.STARTING,), S.READY):
            return
        now = time.monotonic()
        since = "spawn" if "spawn" in t.timings else "adoption"
        decided = t.timings.get("decided")    # absent for an adopted replica
        started = t.timings.get("started")
        self.registry.announce(t, "ready", f"/health answered {now - began:.1f}s after {since}",
                               boot_s=None if started is None else round(t.timings["healthy"] - started, 3),
                               decision_to_ready_s=None if decided is None else round(now - decided, 3))

    # -- draining -----------------------------------------------------------------------------

    def _drain(self, a: P.Drain, _listing: Listing | None) -> None:
        if self.dry_run:
            log.info("dry run: would drain %s (%s)", a.name, a.reason)
            return
        t = self.registry.get(a.name)
        was_ready = t is not None and t.state == S.READY
        # park_mode: back into the pool after the drain (planner.role counts it there already)
        t = self.registry.take(a.name, (S.STARTING, S.READY), S.DRAINING, claim=True, park_mode=a.park)
        if t is None:
            return
        self.journal.event("scale_in", t.group, t.name, a.reason)
        self.registry.announce(t, "draining", a.reason)
        self.steps.start_worker(self._drain_worker, t, a.reason, was_ready, a.park, held=True)

    def _drain_worker(self, t: Track, reason: str, was_ready: bool, park: str) -> None:
        cfg, stop = self.cfg.autoscaler, self.steps.stop
        deadline = time.monotonic() + cfg.drain_s
        while was_ready and t.address and time.monotonic() < deadline and not stop.is_set():
            if self.steps.health.in_flight(t.address, t.port) == 0:
                break
            stop.wait(0.2)
        if stop.is_set():
            # Don't pull the plug on the way out: the next start adopts it and decides again.
            log.info("stopping: %s left running for the next start to adopt", t.name)
            return
        if park and t.state == S.DRAINING:
            self.registry.announce(t, "removed", f"{reason}; parked in the warm pool")
            self.steps.back_in_pool(t, park, "reused on scale-in")
            return
        self.steps.remove(t, reason)

    # -- health of ready replicas -------------------------------------------------------------

    def probe_ready(self) -> None:
        """One /health check per ready replica, off the tick's thread."""
        for t in self.registry.checks_due(self.host_up):
            try:
                self.checks.submit(self._check_one, t)
            except RuntimeError:  # shutting down
                self.registry.checked(t, None, 0)

    def _check_one(self, t: Track) -> None:
        ok = False
        try:
            ok = self.steps.health.healthy(t.address, t.port)
        finally:
            failed = self.registry.checked(t, ok, self.cfg.autoscaler.health_failures)
        if failed:
            self.fail(t, f"/health failed {t.fails} times in a row")

    # -- stopping -----------------------------------------------------------------------------

    def wait_workers(self, timeout: float) -> None:
        self.steps.workers.join(timeout)

    def close(self, timeout: float) -> None:
        self.wait_workers(timeout)
        self.checks.shutdown(wait=False, cancel_futures=True)
