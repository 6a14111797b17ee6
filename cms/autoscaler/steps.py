"""The steps the executor and the warm pool share, so neither calls into the other.

Both get one ``Steps`` (and the registry): the worker threads a replica's slow work runs on
(``start_worker`` holds the replica for its worker), placing a new replica through the
Scheduler with the spawn back-off, where a replica answers, waiting for its /health,
parking it and removing it. Each step changes a replica only through the registry
(cms.autoscaler.registry) and the fleet only through the Scheduler.

Spawn stages (clone, define, start, boot to /health) are logged for every replica placed,
with timings; a stage past SLOW_STAGE_S is a warning that names ``cms doctor``.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Any, Callable, Iterable

from cms import errors
from cms.autoscaler.health import SPAWN_PROBE_S, HealthChecker, wait_healthy
from cms.autoscaler.journal import Journal
from cms.autoscaler.lifecycle import State, Track
from cms.autoscaler.registry import Registry
from cms.autoscaler.workers import Workers
from cms.config import Config
from cms.scheduler import Scheduler
from cms.virt import Listing, OwnedDomain, OwnerMeta

log = logging.getLogger("cms.autoscaler")
S = State

SLOW_STAGE_S = 5.0
BACKOFF_FIRST_S = 2.0       # a group's spawns pause this long after a failure, doubling per failure in a row
BACKOFF_MAX_S = 60.0


class Steps:
    def __init__(self, cfg: Config, scheduler: Scheduler, health: HealthChecker, registry: Registry,
                 journal: Journal, *, stop: threading.Event, dry_run: bool = False) -> None:
        self.cfg = cfg
        self.scheduler = scheduler
        self.health = health
        self.registry = registry
        self.journal = journal
        self.stop = stop
        self.dry_run = dry_run
        self.workers = Workers()
        self.spawn_backoff: dict[tuple[str, bool], tuple[float, int]] = {}   # (group, warm) -> (until, n)

    # -- workers ----------------------------------------------------------------------------

    def start_worker(self, fn: Callable[..., None], t: Track, *args: Any, held: bool = False) -> bool:
        """Run ``fn(t, *args)`` on a worker that holds ``t`` until it ends (``held``: the caller
        claimed it already). False when another worker holds it (that one sees its state)."""
        if not held and not self.registry.claim(t):
            return False
        self.workers.start(f"cms-{fn.__name__.strip('_')}-{t.name}", fn, t, *args,
                           done=lambda: self.registry.release(t))
        return True

    # -- the spawn back-off -----------------------------------------------------------------

    def spawn_paused(self, warm: bool = False) -> frozenset[str]:
        """Groups whose serving spawns (or warm refills) back off after a failure."""
        now = time.monotonic()
        return frozenset(g for (g, w), (until, _n) in self.spawn_backoff.items() if w == warm and now < until)

    def back_off(self, group: str, warm: bool) -> float:
        """Pause the group's spawns (or refills): BACKOFF_FIRST_S, doubling per failure in a row,
        at most BACKOFF_MAX_S."""
        _until, n = self.spawn_backoff.get((group, warm), (0.0, 0))
        delay = min(BACKOFF_MAX_S, BACKOFF_FIRST_S * 2 ** n)
        self.spawn_backoff[(group, warm)] = (time.monotonic() + delay, n + 1)
        return delay

    def succeeded(self, group: str, warm: bool) -> None:
        """A spawn (or a refill) of the group went through: no back-off."""
        self.spawn_backoff.pop((group, warm), None)

    # -- a replica's place --------------------------------------------------------------------

    def track_from(self, d: OwnedDomain, state: State, park_mode: str = "") -> Track:
        """The record of a domain found in libvirt: where its guest server answers."""
        t = Track(d.name, d.meta.group, d.meta.created, state, host=d.host, uuid=d.uuid, port=d.meta.port,
                  park_mode=park_mode)
        if self.cfg.network.mode == "user":
            t.address = self.scheduler.forward_address(d.host)
        else:
            t.port = d.meta.guest_port
        return t

    def meta(self, t: Track, warm: bool) -> OwnerMeta:
        gc = self.cfg.groups[t.group]
        return OwnerMeta(group=t.group, role="replica", created=t.created, port=t.port, guest_port=gc.port, warm=warm)

    def where(self, t: Track) -> tuple[str, int] | None:
        """(address, port) of its guest server; None while its DHCP lease is not known yet."""
        if not t.address:
            try:
                address = self.scheduler.lease_address(t.host, t.name) or ""
            except errors.VirtError:
                return None
            self.registry.place(t, address=address)
        return (t.address, t.port) if t.address else None

    # -- placing, booting ---------------------------------------------------------------------

    def place_new(self, t: Track, listing: Listing | None, warm: bool,
                  avoid: frozenset[str] = frozenset()) -> dict[str, float] | None:
        """Place and start the reserved replica ``t`` (SPAWNING) through the Scheduler (on its
        worker): the spawn's stage timings, or None when it failed (forgotten; the group's
        spawns, or refills, back off)."""
        gc = self.cfg.groups[t.group]
        vt = gc.vertical    # a group that scales vertically: defined with room to grow live
        t.timings["spawn"] = time.monotonic()
        try:
            s = self.scheduler.spawn(t.name, vcpus=gc.vcpus, memory_mib=gc.memory_mib,
                                     meta=OwnerMeta(group=t.group, role="replica", created=t.created,
                                                    guest_port=gc.port, warm=warm),
                                     max_vcpus=vt.max_vcpus if vt.enabled else 0,
                                     max_memory_mib=vt.max_memory_mib if vt.enabled else 0,
                                     listing=listing, avoid=avoid)
        except errors.CmsError as exc:
            delay = self.back_off(t.group, warm)
            self.journal.event("spawn_failed", t.group, t.name, f"{exc}; retrying in {delay:.0f}s", error=str(exc))
            self.registry.forget(t)
            return None
        t.timings["started"] = time.monotonic()
        self.registry.place(t, host=s.host, uuid=s.uuid, address=s.address, port=s.port)
        stages = {k: round(v, 3) for k, v in s.timings.items()}
        log.info("spawn stages of %s on %s: %s", t.name, t.host, ", ".join(f"{k} {v:.2f}s" for k, v in stages.items()))
        for k, v in stages.items():
            self._slow(t, k, v)
        return stages

    def booted(self, t: Track, state: State) -> bool:
        """Wait (on its worker) until ``t``, in ``state``, answers /health: True when it does.
        False when it moved on, the daemon stops, or no answer came within health_timeout_s
        (then it is failed and removed, and a warm group's refills back off)."""
        timeout = self.cfg.autoscaler.health_timeout_s
        ok = self.wait_health(t, time.monotonic() + timeout, min(SPAWN_PROBE_S, self.cfg.autoscaler.tick_s), (state,))
        if self.stop.is_set() or t.state != state:
            return False
        if ok:
            t.timings["healthy"] = time.monotonic()
            if "started" in t.timings:
                boot = t.timings["healthy"] - t.timings["started"]
                log.info("spawn stage of %s: boot to /health %.2fs", t.name, boot)
                self._slow(t, "boot to /health", boot)
            return True
        why = f"no healthy answer within {timeout:g}s"
        if state == S.WARMING:
            self.back_off(t.group, True)
        if self.registry.mark_failed(t, why, (state,)):
            self.remove(t, why)
        return False

    def wait_health(self, t: Track, deadline: float, interval: float, states: Iterable[State]) -> bool:
        """/health at once, then every ``interval`` s, while ``t`` stays in ``states``, until
        ``deadline`` (time.monotonic)."""
        states = tuple(states)
        return wait_healthy(self.health, lambda: self.where(t), deadline, interval, self.stop.wait,
                            lambda: not self.stop.is_set() and t.state in states)

    def _slow(self, t: Track, stage: str, seconds: float) -> None:
        if seconds > SLOW_STAGE_S:
            log.warning("%s: %s took %.1f s on host %s (over %g s): run `cms doctor` to find out why",
                        t.name, stage, seconds, t.host, SLOW_STAGE_S)

    # -- parking, removing --------------------------------------------------------------------

    def park(self, t: Track, mode: str) -> float | None:
        """Park a healthy running replica (on its worker): tag it warm, suspend / save / stop it.
        The seconds it took, or None when it moved on first or could not be parked (then it
        is failed and removed, and the group's refills back off)."""
        if not self.registry.advance(t, (S.WARMING, S.DRAINING, S.READY, S.PARKED), S.PARKING, park_mode=mode):
            return None
        t0 = time.monotonic()
        try:
            self.scheduler.park(t.host, t.name, mode, self.meta(t, warm=True),
                                graceful_timeout=self.cfg.autoscaler.shutdown_timeout_s, wait=self.stop.wait)
        except errors.CmsError as exc:
            self.back_off(t.group, True)
            if self.registry.mark_failed(t, f"could not park ({mode}): {exc}", (S.PARKING,)):
                self.remove(t, f"could not park: {exc}")
            return None
        if not self.registry.advance(t, (S.PARKING,), S.PARKED):
            return None
        return time.monotonic() - t0

    def back_in_pool(self, t: Track, mode: str, why: str) -> None:
        """Park ``t`` into the pool (on its worker), with a "warm_parked" event."""
        took = self.park(t, mode)
        if took is not None:
            self.journal.event("warm_parked", t.group, t.name, f"{why}: {mode} in {took:.2f}s, back in the pool",
                               host=t.host, mode=mode, park_s=round(took, 3))

    def remove(self, t: Track, reason: str) -> None:
        """Destroy and undefine its domain, delete its volume (on its worker), then forget it
        (announced removed). A removal that fails leaves it FAILED: the next tick retries."""
        if self.dry_run:
            log.info("dry run: would remove %s (%s)", t.name, reason)
            self.registry.forget(t)
            return
        try:
            if t.host:
                self.scheduler.remove(t.host, t.name, graceful_timeout=self.cfg.autoscaler.shutdown_timeout_s,
                                      wait=self.stop.wait)
        except errors.VirtError as exc:
            self.journal.event("remove_failed", t.group, t.name, f"{exc}; next tick retries", error=str(exc))
            self.registry.fail_quietly(t)
            return
        self.registry.forget(t, reason)
