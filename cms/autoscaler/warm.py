"""The executor's warm-pool handlers (issue 13): park, unpark, adopt, discard.

A warm replica is spawned like any other but tagged ``warm`` in its libvirt metadata,
booted until /health answers, then parked: paused (virDomainSuspend, RAM held, no CPU),
saved (virDomainManagedSave, RAM on disk) or stopped (shut down: a cold boot later, but no
clone or define on the critical path). It is never announced and never counted by the
policy. A scale-out or a replacement unparks one (resume, or create from the managed
save), probes /health at once and every UNPARK_PROBE_S, announces it ready, and tags it
serving. One that fails to come back is removed; the next tick takes the next one or
boots cold. Mixed into ``cms.autoscaler.executor.Executor``, whose state it uses.
"""

from __future__ import annotations

import logging
import time
from typing import TYPE_CHECKING

from cms import errors
from cms.autoscaler import planner as P
from cms.autoscaler.health import wait_healthy
from cms.autoscaler.lifecycle import State, Track
from cms.virt import Listing

log = logging.getLogger("cms.autoscaler")

if TYPE_CHECKING:
    from cms.autoscaler.executor import Executor

S = State
UNPARK_PROBE_S = 0.025      # /health after an unpark: at once, then every 25 ms


class WarmPool:
    def _adopt_warm(self: "Executor", a: P.AdoptWarm, _listing: Listing | None) -> None:
        d = a.domain
        with self.lock:
            if d.name in self.tracks:
                return
            t = self.tracks[d.name] = self._track_from(d, S.PARKED if a.mode else S.WARMING)
            t.park_mode = a.mode or self.cfg.groups[t.group].warm_pool.state
        self.journal.event("adopt", t.group, t.name, a.reason, host=d.host, warm=True, mode=a.mode)
        if not a.mode and not self.dry_run:
            self._start_worker(self._await_ready, t)   # healthy, then parked again

    # -- the warm pool ----------------------------------------------------------------------

    def _park(self: "Executor", t: Track, mode: str, why: str, prepared: bool = False) -> None:
        """Park a healthy running replica (runs on its worker): tag warm, suspend/save/stop."""
        with self.lock:
            if t.state not in (S.WARMING, S.DRAINING, S.READY, S.PARKED):
                return
            t.move(S.PARKING)
            t.park_mode = mode
        t0 = time.monotonic()
        try:
            self.scheduler.park(t.host, t.name, mode, self._meta(t, warm=True),
                                graceful_timeout=self.cfg.autoscaler.shutdown_timeout_s, wait=self.stop.wait)
        except errors.CmsError as exc:
            self.back_off(t.group, True)
            if self._mark_failed(t, f"could not park ({mode}): {exc}", (S.PARKING,)):
                self._remove(t, f"could not park: {exc}")
            return
        if not self._advance(t, S.PARKING, S.PARKED):
            return
        took = time.monotonic() - t0
        if prepared:
            self.spawn_backoff.pop((t.group, True), None)
            boot = time.monotonic() - t.timings.get("spawn", t0)
            cpu = self._boot_cpu(t)
            self.journal.event("warm_prepared", t.group, t.name,
                               f"{why} {boot:.1f}s after its spawn, then {mode} in {took:.2f}s; it waits in the "
                               f"pool, not announced, not counted" + (f"; its boot took {cpu[0]:.1f} CPU-seconds, "
                               f"{cpu[1]:.0%} of host {t.host}'s CPUs, from the serving replicas" if cpu else ""),
                               host=t.host, mode=mode, boot_s=round(boot, 3), park_s=round(took, 3),
                               cpu_s=cpu[0] if cpu else None, host_share=cpu[1] if cpu else None)
        else:
            self.journal.event("warm_parked", t.group, t.name, f"{why}: {mode} in {took:.2f}s, back in the pool",
                               host=t.host, mode=mode, park_s=round(took, 3))
        self.history.forget(t.name)

    def _boot_cpu(self: "Executor", t: Track) -> tuple[float, float] | None:
        """(CPU-seconds, share of the host's CPUs) the warm boot took, from its samples."""
        pts = [(ts, v) for ts, v in self.history.series(t.name) if v is not None]
        if len(pts) < 2:
            return None
        span = pts[-1][0] - pts[0][0]
        if span <= 0:
            return None
        gc = self.cfg.groups[t.group]
        cpu_s = sum(v for _ts, v in pts) / len(pts) * gc.vcpus * span
        cpus = self.scheduler.host_cpus(t.host)
        return round(cpu_s, 2), round(cpu_s / span / cpus, 3) if cpus else 0.0

    def _unpark(self: "Executor", a: P.Unpark, _listing: Listing | None) -> None:
        t = self._take(a.name, S.PARKED, S.UNPARKING)
        if t is None:
            return
        if self.dry_run:
            log.info("dry run: would unpark %s", t.name)
            return
        t.timings["decided"] = time.monotonic()
        self._start_worker(self._unpark_worker, t, a.reason)

    def _unpark_worker(self: "Executor", t: Track, reason: str) -> None:
        t0 = t.timings["decided"]
        mode = t.park_mode
        try:
            self.scheduler.unpark(t.host, t.name, mode)
        except errors.CmsError as exc:
            self._unpark_failed(t, f"could not unpark ({mode}): {exc}")
            return
        t.timings["started"] = time.monotonic()
        t.resumed_at = self.clock()
        self.history.forget(t.name)
        self.on_unpark(t)
        self._announce(t, "added", f"{reason}: unparked", unpark_s=round(time.monotonic() - t0, 3), mode=mode)
        deadline = t0 + self.cfg.autoscaler.health_timeout_s
        ok = wait_healthy(self.health, lambda: self._where(t), deadline, UNPARK_PROBE_S, self.stop.wait,
                          lambda: not self.stop.is_set() and t.state == S.UNPARKING)
        took = time.monotonic() - t0
        if not ok:
            self._unpark_failed(t, f"no healthy answer within {self.cfg.autoscaler.health_timeout_s:g}s of unparking")
            return
        if not self._advance(t, S.UNPARKING, S.READY):
            return
        self._announce(t, "ready", f"from the warm pool ({mode}): /health answered {took:.2f}s after the decision",
                       mode=mode, unpark_to_ready_s=round(took, 3))
        self.journal.event("warm_used", t.group, t.name, f"taken from the warm pool ({mode}) and serving "
                           f"{took:.2f}s after the decision; the pool refills in the background",
                           mode=mode, seconds=round(took, 3), host=t.host)
        try:
            self.scheduler.retag(t.host, t.name, self._meta(t, warm=False))
        except errors.CmsError as exc:
            log.warning("%s serves, but its warm tag stays (%s); a restart would park it again", t.name, exc)

    def _unpark_failed(self: "Executor", t: Track, why: str) -> None:
        """Remove a warm replica that would not come back; the next tick takes the next one or boots."""
        if self._mark_failed(t, why, (S.UNPARKING,)):
            self._remove(t, why)

    def _park_again(self: "Executor", a: P.Park, _listing: Listing | None) -> None:
        t = self._idle(a.name, S.PARKED)
        if t is None or self.dry_run:
            return
        self._start_worker(self._park, t, a.mode, a.reason)

    def _forget_warm(self: "Executor", a: P.Forget, _listing: Listing | None) -> None:
        t = self._idle(a.name, S.PARKED)
        if t is None:
            return
        self.journal.event("removed", t.group, t.name, a.reason, host=t.host)
        self._forget(t)

    def _discard(self: "Executor", a: P.Discard, _listing: Listing | None) -> None:
        t = self._take(a.name, S.PARKED, S.FAILED)
        if t is not None:
            self._start_worker(self._remove, t, a.reason)
