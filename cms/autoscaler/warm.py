"""The warm pool (issue 13): its handlers, plugged into the executor through ``register``.

A warm replica is spawned like any other (``Refill``) but tagged ``warm`` in its libvirt
metadata, booted until /health answers, then parked: paused (virDomainSuspend, RAM held,
no CPU), saved (virDomainManagedSave, RAM on disk) or stopped (shut down: a cold boot
later, but no clone or define on the critical path). It is never announced and never
counted by the policy. A scale-out or a replacement unparks one (``Unpark``: resume, or
create from the managed save), probes /health at once and every UNPARK_PROBE_S (25 ms),
announces it ready, and tags it serving. One that fails to come back is removed; the next
tick takes the next one or boots cold.

``WarmPool`` gets the replica registry and the shared steps (cms.autoscaler.steps), not the
executor; ``handlers()`` is what the loop registers with ``Executor.register``.
"""

from __future__ import annotations

import logging
import time
from typing import Callable

from cms import errors
from cms.autoscaler import planner as P
from cms.autoscaler.health import UNPARK_PROBE_S
from cms.autoscaler.lifecycle import State, Track
from cms.autoscaler.registry import Registry
from cms.autoscaler.steps import Steps
from cms.config import Config
from cms.metrics import History
from cms.virt import Listing

log = logging.getLogger("cms.autoscaler")
S = State


class WarmPool:
    def __init__(self, cfg: Config, registry: Registry, steps: Steps, history: History, *,
                 clock: Callable[[], float] = time.time, on_unpark: Callable[[Track], None] | None = None) -> None:
        self.cfg = cfg
        self.registry = registry
        self.steps = steps
        self.journal = steps.journal
        self.history = history
        self.clock = clock
        self.on_unpark = on_unpark or (lambda _t: None)

    def handlers(self) -> dict[type, P.Handler]:
        """The action kinds the pool handles, for ``Executor.register``."""
        return {P.AdoptWarm: self._adopt, P.Refill: self._refill, P.Park: self._park_again,
                P.Unpark: self._unpark, P.Forget: self._forget, P.Discard: self._discard}

    # -- into the pool --------------------------------------------------------------------------

    def _adopt(self, a: P.AdoptWarm, _listing: Listing | None) -> None:
        gc = self.cfg.groups[a.domain.meta.group]
        t = self.steps.track_from(a.domain, S.PARKED if a.mode else S.WARMING, a.mode or gc.warm_pool.state)
        if not self.registry.track(t):
            return
        self.journal.event("adopt", t.group, t.name, a.reason, host=t.host, warm=True, mode=a.mode)
        if not a.mode and not self.steps.dry_run:
            self.steps.start_worker(self._prepare, t)   # healthy, then parked again

    def _refill(self, a: P.Refill, listing: Listing | None) -> None:
        if self.steps.dry_run:
            log.info("dry run: group %s would add a warm replica (%s)", a.group, a.reason)
            return
        t = self.registry.reserve(a.group, park_mode=self.cfg.groups[a.group].warm_pool.state)
        self.journal.event("warm_refill", a.group, t.name, f"{a.reason}: booting a warm replica")
        self.steps.start_worker(self._refill_worker, t, a, listing)

    def _refill_worker(self, t: Track, a: P.Refill, listing: Listing | None) -> None:
        stages = self.steps.place_new(t, listing, warm=True, avoid=a.avoid_hosts)
        if stages is not None and self.registry.advance(t, (S.SPAWNING,), S.WARMING):
            self._prepare(t)

    def _prepare(self, t: Track) -> None:
        """A warm replica booting (on its worker): once /health answers, parked in the pool."""
        if not self.steps.booted(t, S.WARMING):
            return
        mode = t.park_mode
        cpu = self._boot_cpu(t)             # read before the park forgets its samples
        took = self.steps.park(t, mode)
        if took is None:
            return
        self.steps.succeeded(t.group, warm=True)
        boot = t.timings["healthy"] - t.timings.get("spawn", t.timings["healthy"])
        self.journal.event("warm_prepared", t.group, t.name,
                           f"booted to /health {boot:.1f}s after its spawn, then {mode} in {took:.2f}s; it waits in "
                           f"the pool, not announced, not counted" + (f"; its boot took {cpu[0]:.1f} CPU-seconds, "
                           f"{cpu[1]:.0%} of host {t.host}'s CPUs, from the serving replicas" if cpu else ""),
                           host=t.host, mode=mode, boot_s=round(boot, 3), park_s=round(took, 3),
                           cpu_s=cpu[0] if cpu else None, host_share=cpu[1] if cpu else None)

    def _boot_cpu(self, t: Track) -> tuple[float, float] | None:
        """(CPU-seconds, share of the host's CPUs) the warm boot took, from its samples."""
        pts = [(ts, v) for ts, v in self.history.series(t.name) if v is not None]
        if len(pts) < 2:
            return None
        span = pts[-1][0] - pts[0][0]
        if span <= 0:
            return None
        gc = self.cfg.groups[t.group]
        cpu_s = sum(v for _ts, v in pts) / len(pts) * gc.vcpus * span
        cpus = self.steps.scheduler.host_cpus(t.host)
        return round(cpu_s, 2), round(cpu_s / span / cpus, 3) if cpus else 0.0

    def _park_again(self, a: P.Park, _listing: Listing | None) -> None:
        t = None if self.steps.dry_run else self.registry.take(a.name, (S.PARKED,), claim=True)
        if t is not None:
            self.steps.start_worker(self.steps.back_in_pool, t, a.mode, a.reason, held=True)

    # -- out of the pool ----------------------------------------------------------------------

    def _unpark(self, a: P.Unpark, _listing: Listing | None) -> None:
        if self.steps.dry_run:
            if self.registry.get(a.name) is not None:
                log.info("dry run: would unpark %s", a.name)
            return
        t = self.registry.take(a.name, (S.PARKED,), S.UNPARKING, claim=True)
        if t is not None:
            t.timings["decided"] = time.monotonic()
            self.steps.start_worker(self._unpark_worker, t, a.reason, held=True)

    def _unpark_worker(self, t: Track, reason: str) -> None:
        t0 = t.timings["decided"]
        mode = t.park_mode
        try:
            self.steps.scheduler.unpark(t.host, t.name, mode)
        except errors.CmsError as exc:
            self._unpark_failed(t, f"could not unpark ({mode}): {exc}")
            return
        t.timings["started"] = time.monotonic()
        self.registry.place(t, resumed_at=self.clock())
        self.history.forget(t.name)
        self.on_unpark(t)
        self.registry.announce(t, "added", f"{reason}: unparked", unpark_s=round(time.monotonic() - t0, 3), mode=mode)
        timeout = self.cfg.autoscaler.health_timeout_s
        ok = self.steps.wait_health(t, t0 + timeout, UNPARK_PROBE_S, (S.UNPARKING,))
        took = time.monotonic() - t0
        if not ok:
            self._unpark_failed(t, f"no healthy answer within {timeout:g}s of unparking")
            return
        if not self.registry.advance(t, (S.UNPARKING,), S.READY):
            return
        self.registry.announce(t, "ready", f"from the warm pool ({mode}): /health answered {took:.2f}s after the "
                               "decision", mode=mode, unpark_to_ready_s=round(took, 3))
        self.journal.event("warm_used", t.group, t.name, f"taken from the warm pool ({mode}) and serving "
                           f"{took:.2f}s after the decision; the pool refills in the background",
                           mode=mode, seconds=round(took, 3), host=t.host)
        try:
            self.steps.scheduler.retag(t.host, t.name, self.steps.meta(t, warm=False))
        except errors.CmsError as exc:
            log.warning("%s serves, but its warm tag stays (%s); a restart would park it again", t.name, exc)

    def _unpark_failed(self, t: Track, why: str) -> None:
        """Remove a warm replica that would not come back; the next tick takes the next one or boots."""
        if self.registry.mark_failed(t, why, (S.UNPARKING,)):
            self.steps.remove(t, why)

    # -- leaving the pool -----------------------------------------------------------------------

    def _forget(self, a: P.Forget, _listing: Listing | None) -> None:
        t = self.registry.take(a.name, (S.PARKED,))
        if t is not None:
            self.registry.forget(t, a.reason)

    def _discard(self, a: P.Discard, _listing: Listing | None) -> None:
        t = self.registry.take(a.name, (S.PARKED,), S.FAILED, claim=True)
        if t is not None:
            self.steps.start_worker(self.steps.remove, t, a.reason, held=True)
