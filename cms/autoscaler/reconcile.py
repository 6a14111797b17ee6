"""The autoscaler's reconcile loop, level-based.

Each tick: observe the owned domains (libvirt's <metadata> is the truth), read one tick
of metrics, then per group compare what exists with what is wanted and close the gap:
spawn, drain and remove, or fail and replace. Slow work (spawning and waiting for
/health, draining and shutting down) runs on worker threads so the tick never blocks; a
replica's ``busy`` flag keeps two workers off the same replica.

Replica states as subscribers see them: starting -> ready -> draining -> (removed), or
failed -> (removed). Internally a replica is "spawning" before its domain exists; that
state is never published.
"""

from __future__ import annotations

import collections
import concurrent.futures
import contextlib
import http.client
import json
import logging
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Protocol

from cms import errors, policy
from cms.config import Config, GroupConfig
from cms.messages import Replica
from cms.metrics import History, LibvirtMetrics, MetricSource, Tick
from cms.scheduler import Scheduler
from cms.store import Sample, Store
from cms.virt import Fleet, OwnedDomain, OwnerMeta, replica_name

log = logging.getLogger("cms.autoscaler")

COUNTING = ("spawning", "starting", "ready")


class HealthChecker(Protocol):
    def healthy(self, address: str, port: int) -> bool: ...
    def in_flight(self, address: str, port: int) -> int | None: ...


class HttpHealth:
    """GET /health and /status on the replica's guest server."""

    def __init__(self, timeout: float = 2.0) -> None:
        self.timeout = timeout

    def _get(self, address: str, port: int, path: str) -> tuple[int, Any]:
        c = http.client.HTTPConnection(address, port, timeout=self.timeout)
        try:
            c.request("GET", path)
            r = c.getresponse()
            body = r.read()
            try:
                return r.status, json.loads(body or b"null")
            except ValueError:
                return r.status, None
        finally:
            c.close()

    def healthy(self, address: str, port: int) -> bool:
        try:
            return self._get(address, port, "/health")[0] == 200
        except (OSError, http.client.HTTPException):
            return False

    def in_flight(self, address: str, port: int) -> int | None:
        try:
            status, body = self._get(address, port, "/status")
        except (OSError, http.client.HTTPException):
            return None
        if status != 200 or not isinstance(body, dict):
            return None
        v = body.get("in_flight")
        return int(v) if isinstance(v, int) else None


@dataclass
class Track:
    """What the daemon knows about one replica."""
    name: str
    group: str
    created: float
    state: str = "spawning"
    host: str = ""
    uuid: str = ""
    address: str = ""
    port: int = 0
    ready_at: float | None = None
    fails: int = 0
    busy: bool = False                  # a worker owns it now
    checking: bool = False              # a health check is in flight
    timings: dict[str, float] = field(default_factory=dict)

    def replica(self, state: str | None = None) -> Replica:
        return Replica(self.name, self.group, self.host, self.address, self.port, state or self.state, self.created)


class Autoscaler:
    def __init__(self, cfg: Config, *, fleet: Fleet | None = None, metrics: MetricSource | None = None,
                 health: HealthChecker | None = None, publisher: Any = None, store: Store | None = None,
                 dry_run: bool = False, groups: list[str] | None = None, stop: threading.Event | None = None,
                 clock: Callable[[], float] = time.time) -> None:
        self.cfg = cfg
        self.fleet = fleet or Fleet(cfg, events=True)
        self.metrics = metrics or LibvirtMetrics(self.fleet)
        self.health = health or HttpHealth(cfg.autoscaler.health_check_timeout_s)
        if publisher is None:
            from cms.autoscaler.publisher import NullPublisher, Publisher
            publisher = NullPublisher() if dry_run else Publisher(cfg.zmq)
        self.publisher = publisher
        self.store = store or Store(cfg.state_db)
        unknown = [g for g in (groups or []) if g not in cfg.groups]
        if unknown:
            raise errors.ConfigError(f"{cfg.source}: no group named {unknown[0]!r}")
        self.groups: dict[str, GroupConfig] = {g: cfg.groups[g] for g in (groups or cfg.groups)}
        self.dry_run = dry_run
        self.stop = stop or threading.Event()
        self.clock = clock
        self.history = History(cfg.autoscaler.history)
        self.tracks: dict[str, Track] = {}
        self.lock = threading.RLock()
        self.desired: dict[str, int] = {}
        self.last_action: dict[str, float] = {}
        self.recommendations: dict[str, collections.deque] = {g: collections.deque(maxlen=10000) for g in self.groups}
        self.spawn_backoff: dict[str, tuple[float, int]] = {}
        self.adopted = False
        self.unhealthy_hosts: set[str] = set()
        self.workers: list[threading.Thread] = []
        self.checks = concurrent.futures.ThreadPoolExecutor(max_workers=8, thread_name_prefix="cms-health")
        self.last_tick: Tick | None = None
        # Placement and the spawn lock are the scheduler's, shared with the REST API.
        self.scheduler = Scheduler(cfg, self.fleet, self.store)
        self._dead: set[str] = set()     # names a lifecycle event said stopped/crashed

    # -- logging and announcements ------------------------------------------------------

    def _event(self, kind: str, group: str, subject: str, message: str, **data: Any) -> None:
        log.info("%s %s%s: %s", kind, group, f" {subject}" if subject else "", message)
        try:
            self.store.add_event(kind, message, group=group, subject=subject, data=data)
        except Exception as exc:  # noqa: BLE001 - the state db is history; never stop scaling for it
            log.warning("could not record event %s: %s", kind, exc)

    def _announce(self, t: Track, event: str, reason: str) -> None:
        state = {"added": "starting", "removed": t.state}.get(event, event)
        if self.dry_run:
            log.info("dry run: would announce %s %s", event, t.name)
            return
        self.publisher.announce(event, t.replica(state), reason)
        t.timings[event] = time.monotonic()
        self._event(event, t.group, t.name, reason, host=t.host, address=t.address, port=t.port)

    # -- the tick -------------------------------------------------------------------------

    def tick(self) -> None:
        now = self.clock()
        self._drain_lifecycle_events()
        observed = self._observe()
        if observed is None:
            return
        if not self.adopted:
            self._adopt(observed, now)
            self.adopted = True
        self._sync(observed)
        self._measure(observed, now)
        self._take_scale_requests(now)
        for g, gc in self.groups.items():
            try:
                self._reconcile(g, gc, now)
            except Exception:  # noqa: BLE001 - one group's trouble must not stop the others
                log.exception("reconciling group %s failed; next tick retries", g)
        self._check_ready_replicas()
        self.workers = [w for w in self.workers if w.is_alive()]

    def _observe(self) -> dict[str, OwnedDomain] | None:
        out: dict[str, OwnedDomain] = {}
        down = set()
        for name, h in self.fleet.hosts.items():
            try:
                for d in h.owned_domains():
                    if d.meta.group in self.groups and d.meta.role == "replica":
                        out[d.name] = d
            except errors.VirtError as exc:
                down.add(name)
                if name not in self.unhealthy_hosts:
                    log.warning("libvirt on host %s does not answer (%s); retrying every tick", name, exc)
                else:
                    log.debug("host %s still down: %s", name, exc)
        if down:
            self.unhealthy_hosts = down
            return None  # acting on a partial view would replace replicas that are fine
        if self.unhealthy_hosts:
            log.info("libvirt answers again on %s", ", ".join(sorted(self.unhealthy_hosts)))
            self.unhealthy_hosts = set()
        return out

    def _drain_lifecycle_events(self) -> None:
        q = self.fleet.event_queue
        while q is not None:
            try:
                ev = q.get_nowait()
            except Exception:  # noqa: BLE001 - queue.Empty
                return
            if ev.event in ("stopped", "crashed", "shutdown"):
                self._dead.add(ev.name)

    # -- restart: rebuild the view from libvirt -----------------------------------------

    def _adopt(self, observed: dict[str, OwnedDomain], now: float) -> None:
        for d in observed.values():
            if d.alive:
                t = self._track_from(d)
                with self.lock:
                    self.tracks[d.name] = t
                    t.state = "starting"
                self._event("adopt", t.group, t.name, "found running after a restart; checking its health",
                            host=d.host)
                self._announce(t, "added", "found running at daemon start")
                self._start_worker(self._await_ready, t, "health check of an adopted replica")
            else:
                self._event("cleanup", d.meta.group, d.name, f"leftover domain in state {d.state}: removing",
                            host=d.host)
                if not self.dry_run:
                    t = self._track_from(d)
                    t.state = "failed"
                    with self.lock:
                        self.tracks[d.name] = t
                    self._start_worker(self._remove, t, f"leftover ({d.state}) at start", False)
        self._clean_orphan_volumes(observed)
        for g, gc in self.groups.items():
            n = sum(1 for d in observed.values() if d.meta.group == g and d.alive)
            self.desired[g] = max(gc.min, min(gc.max, n))
            log.info("group %s: %d running replica(s) found, desired %d", g, n, self.desired[g])

    def _track_from(self, d: OwnedDomain) -> Track:
        addr = None
        with contextlib.suppress(errors.VirtError):
            addr = self.fleet.address_of(d)
        address, port = addr if addr else ("", 0)
        return Track(d.name, d.meta.group, d.meta.created, host=d.host, uuid=d.uuid, address=address, port=port)

    def _clean_orphan_volumes(self, observed: dict[str, OwnedDomain]) -> None:
        pool = self.cfg.libvirt.pool
        prefixes = tuple(f"cms-{g}-" for g in self.groups)
        with self.fleet.spawn_lock():  # a spawn holds it from volume to define: no half-made one is live
            for hname, h in self.fleet.hosts.items():
                try:
                    vols = h.list_volumes(pool)
                except errors.VirtError:
                    continue  # no pool yet: nothing to clean
                for v in vols:
                    dom = v[:-len(".qcow2")] if v.endswith(".qcow2") else ""
                    if not dom.startswith(prefixes) or dom in observed:
                        continue
                    try:
                        if h.exists(dom):
                            continue
                        self._event("cleanup", dom.split("-")[1], dom, f"orphan volume {pool}/{v}: deleting",
                                    host=hname)
                        if not self.dry_run:
                            h.delete_volume(pool, v)
                    except errors.VirtError as exc:
                        log.warning("could not clean volume %s/%s on %s: %s", pool, v, hname, exc)

    # -- reality vs our view ------------------------------------------------------------

    def _sync(self, observed: dict[str, OwnedDomain]) -> None:
        with self.lock:
            for name, d in observed.items():
                if name not in self.tracks:
                    # made by someone else with our group's metadata (or raced our spawn record)
                    t = self._track_from(d)
                    if not d.alive:
                        continue
                    t.state = "starting"
                    self.tracks[name] = t
                    self._event("adopt", t.group, name, "appeared in libvirt; checking its health", host=d.host)
                    self._announce(t, "added", "appeared in libvirt")
                    self._start_worker(self._await_ready, t, "health check")
            for t in list(self.tracks.values()):
                d = observed.get(t.name)
                if t.state == "spawning" or (t.busy and t.state in ("draining", "failed")):
                    continue
                if t.state in ("draining", "failed"):
                    # its removal failed earlier, or nobody finished it: finish it now
                    if d is None:
                        self._announce(t, "removed", "gone from libvirt")
                        self._forget(t)
                    else:
                        self._start_worker(self._remove, t, "finishing an earlier removal", True)
                elif d is None:
                    self._fail(t, "domain vanished from libvirt", remove=False)
                elif not d.alive:
                    seen = " (lifecycle event)" if t.name in self._dead else ""
                    self._fail(t, f"domain is {d.state}{seen}")
            self._dead.clear()

    def _fail(self, t: Track, reason: str, remove: bool = True) -> None:
        """Announce failed at once, then remove it; the group's gap brings a replacement."""
        with self.lock:
            if t.state == "failed":
                return
            t.state = "failed"
        self._announce(t, "failed", reason)
        if not remove:
            self._announce(t, "removed", reason)
            self._forget(t)
            return
        if t.busy:
            return  # its worker sees the state and stops; the next tick removes it
        self._start_worker(self._remove, t, reason, True)

    def _forget(self, t: Track) -> None:
        with self.lock:
            self.tracks.pop(t.name, None)
        self.history.forget(t.name)

    # -- metrics ------------------------------------------------------------------------

    def _measure(self, observed: dict[str, OwnedDomain], now: float) -> None:
        alive = [d for d in observed.values() if d.alive]
        try:
            tick = self.metrics.sample(alive)
        except Exception as exc:  # noqa: BLE001 - a metric failure is a tick without figures
            log.warning("metrics failed this tick: %s", exc)
            tick = Tick(ts=now)
        self.last_tick = tick
        rows = []
        for d in alive:
            m = tick.domains.get(d.uuid)
            cpu = m.cpu if m else None
            self.history.add(d.name, now, cpu)
            st = self.tracks.get(d.name)
            rows.append(Sample(now, d.host, d.name, d.meta.group, cpu, m.vcpus if m else d.vcpus,
                               m.memory_kib if m else d.memory_mib * 1024, st.state if st else d.state))
        if rows:
            try:
                self.store.add_samples(rows)
            except Exception as exc:  # noqa: BLE001
                log.warning("could not store samples: %s", exc)

    # -- per group ------------------------------------------------------------------------

    def _take_scale_requests(self, now: float) -> None:
        """Apply replica counts asked through the API (POST /v1/groups/{name}/scale).

        Decision: a request sets the group's desired count once, like scaling a deployment
        by hand under an autoscaler. The request also counts as a scaling action, so the
        group's cooldown keeps the policy from undoing it at once; after that the policy
        goes on from the new count. A request outside the group's current min..max is
        clamped. A dry run leaves requests pending.
        """
        try:
            pending = self.store.scale_requests()
        except Exception as exc:  # noqa: BLE001 - the state file is optional to scaling
            log.warning("could not read scale requests: %s", exc)
            return
        for g, (replicas, ts) in pending.items():
            gc = self.groups.get(g)
            if gc is None or self.dry_run:
                continue  # another daemon's group, or nothing may change
            want = max(gc.min, min(gc.max, replicas))
            if not self.store.consume_scale_request(g, ts):
                continue  # replaced by a newer one meanwhile: the next tick takes that
            before = self.desired.get(g)
            self.desired[g] = want
            self.last_action[g] = now
            self.recommendations[g].clear()
            self._event("scale_override", g, "", f"asked through the API: {before} -> {want} replicas",
                        asked=replicas, desired=want, previous=before)

    def _reconcile(self, g: str, gc: GroupConfig, now: float) -> None:
        with self.lock:
            members = [t for t in self.tracks.values() if t.group == g]
        counting = [t for t in members if t.state in COUNTING]
        desired = self.desired.setdefault(g, max(gc.min, min(gc.max, len(counting))))
        if len(counting) == desired:
            d = self._decide(g, gc, counting, now)
            if d.action != policy.NONE:
                self._event("decision", g, "", f"{d.action} to {d.desired}: {d.reason}",
                            action=d.action, desired=d.desired, current=len(counting), mean=d.mean)
                self.desired[g] = desired = d.desired
                self.last_action[g] = now
            else:
                log.debug("group %s: no action: %s", g, d.reason)
        elif len(counting) < desired:
            log.info("group %s: %d of %d replicas: closing the gap", g, len(counting), desired)
        gap = desired - len(counting)
        if self.dry_run:
            if gap:
                log.info("dry run: group %s would %s %d replica(s)", g, "add" if gap > 0 else "remove", abs(gap))
            return
        if gap > 0:
            until, _n = self.spawn_backoff.get(g, (0.0, 0))
            if time.monotonic() < until:
                return
            for _ in range(gap):
                self._spawn(g, gc, f"group {g} has {len(counting)} of {desired} wanted replicas")
        elif gap < 0:
            for t in self._victims(gc, counting, -gap):
                self._drain(t, f"scale in: group {g} wants {desired}, has {len(counting)}")

    def _decide(self, g: str, gc: GroupConfig, counting: list[Track], now: float) -> policy.Decision:
        series = tuple(policy.ReplicaSeries(t.name, t.ready_at, self.history.series(t.name))
                       for t in counting if t.state == "ready")
        recs = self.recommendations[g]
        while recs and now - recs[0][0] > gc.target.stabilization_s:
            recs.popleft()
        inp = policy.PolicyInput(now=now, current=len(counting),
                                 starting=sum(1 for t in counting if t.state != "ready"),
                                 replicas=series, last_action_at=self.last_action.get(g),
                                 recommendations=tuple(recs))
        d = policy.decide(gc, inp)
        if d.recommendation is not None:
            recs.append((now, d.recommendation))
        return d

    def _victims(self, gc: GroupConfig, counting: list[Track], n: int) -> list[Track]:
        # Prefer replicas not yet serving, then by age as configured.
        order = sorted(counting, key=lambda t: (t.created, t.name), reverse=gc.scale_in_order == "newest")
        order.sort(key=lambda t: t.state == "ready")
        return [t for t in order if not t.busy][:n]

    # -- actions (worker threads) -------------------------------------------------------

    def _start_worker(self, fn: Callable[..., None], *args: Any) -> None:
        t = args[0] if args and isinstance(args[0], Track) else None
        if t is not None:
            t.busy = True

        def run() -> None:
            try:
                fn(*args)
            except Exception:  # noqa: BLE001 - a worker's failure is logged, the loop goes on
                log.exception("worker %s failed", fn.__name__)
            finally:
                if t is not None:
                    t.busy = False

        w = threading.Thread(target=run, name=f"cms-{fn.__name__.strip('_')}", daemon=True)
        self.workers.append(w)
        w.start()

    def _spawn(self, g: str, gc: GroupConfig, reason: str) -> None:
        with self.lock:
            created = time.time()
            name = replica_name(g, created)
            while name in self.tracks:
                created += 0.001
                name = replica_name(g, created)
            t = Track(name, g, created)
            self.tracks[name] = t
        self._start_worker(self._spawn_worker, t, gc, reason)

    def _spawn_worker(self, t: Track, gc: GroupConfig, reason: str) -> None:
        t.timings["spawn"] = time.monotonic()
        try:
            s = self.scheduler.spawn(t.name, vcpus=gc.vcpus, memory_mib=gc.memory_mib,
                                     meta=OwnerMeta(group=t.group, role="replica", created=t.created,
                                                    guest_port=gc.port))
        except errors.CmsError as exc:
            _until, n = self.spawn_backoff.get(t.group, (0.0, 0))
            delay = min(60.0, 2.0 * 2 ** n)
            self.spawn_backoff[t.group] = (time.monotonic() + delay, n + 1)
            self._event("spawn_failed", t.group, t.name, f"{exc}; retrying in {delay:.0f}s", error=str(exc))
            self._forget(t)
            return
        self.spawn_backoff.pop(t.group, None)
        t.timings["started"] = time.monotonic()
        with self.lock:
            t.host, t.uuid, t.address, t.port = s.host, s.uuid, s.address, s.port
            if t.state == "spawning":
                t.state = "starting"
        self._announce(t, "added", reason)
        self._await_ready(t)

    def _await_ready(self, t: Track, _why: str = "") -> None:
        deadline = time.monotonic() + self.cfg.autoscaler.health_timeout_s
        while not self.stop.is_set() and t.state == "starting":
            if not t.address:
                with contextlib.suppress(errors.VirtError):
                    d = next((d for d in self.fleet.host(t.host).owned_domains(t.group) if d.name == t.name), None)
                    addr = self.fleet.address_of(d) if d else None
                    if addr:
                        t.address, t.port = addr
            if t.address and self.health.healthy(t.address, t.port):
                with self.lock:
                    if t.state != "starting":
                        return
                    t.state = "ready"
                    t.ready_at = self.clock()
                    t.fails = 0
                since = "spawn" if "spawn" in t.timings else "adoption"
                began = t.timings.get("spawn", deadline - self.cfg.autoscaler.health_timeout_s)
                self._announce(t, "ready", f"/health answered {time.monotonic() - began:.1f}s after {since}")
                return
            if time.monotonic() > deadline:
                with self.lock:
                    if t.state != "starting":
                        return
                    t.state = "failed"
                why = f"no healthy answer within {self.cfg.autoscaler.health_timeout_s:g}s"
                self._announce(t, "failed", why)
                self._remove(t, why, True)
                return
            self.stop.wait(min(0.25, self.cfg.autoscaler.tick_s))  # a refused connect costs ~nothing

    def _drain(self, t: Track, reason: str) -> None:
        with self.lock:
            was_ready = t.state == "ready"
            t.state = "draining"
        self._event("scale_in", t.group, t.name, reason)
        self._announce(t, "draining", reason)
        self._start_worker(self._drain_worker, t, reason, was_ready)

    def _drain_worker(self, t: Track, reason: str, was_ready: bool) -> None:
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
        self._remove(t, reason, True)

    def _remove(self, t: Track, reason: str, announce: bool = True) -> None:
        if self.dry_run:
            log.info("dry run: would remove %s (%s)", t.name, reason)
            self._forget(t)
            return
        try:
            if t.host:
                self.fleet.remove(t.host, t.name, graceful_timeout=self.cfg.autoscaler.shutdown_timeout_s,
                                  wait=self.stop.wait)
        except errors.VirtError as exc:
            self._event("remove_failed", t.group, t.name, f"{exc}; next tick retries", error=str(exc))
            with self.lock:
                t.state = "failed"
            return
        if announce:
            self._announce(t, "removed", reason)
        else:
            self._event("removed", t.group, t.name, reason)
        self._forget(t)

    # -- health of ready replicas -------------------------------------------------------

    def _check_ready_replicas(self) -> None:
        with self.lock:
            ready = [t for t in self.tracks.values() if t.state == "ready" and not t.busy and not t.checking]
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
                if t.state != "ready":
                    return
                t.fails = 0 if ok else t.fails + 1
                failed = t.fails >= self.cfg.autoscaler.health_failures
            if failed:
                self._fail(t, f"/health failed {t.fails} times in a row")
        finally:
            t.checking = False

    # -- running and stopping -------------------------------------------------------------

    def run(self, once: bool = False, on_tick: Callable[[], None] | None = None) -> None:
        while not self.stop.is_set():
            started = time.monotonic()
            try:
                self.tick()
            except Exception:  # noqa: BLE001 - the loop survives anything a tick throws
                log.exception("tick failed; the next one retries")
            if on_tick:
                on_tick()
            if once:
                break
            self.stop.wait(max(0.0, self.cfg.autoscaler.tick_s - (time.monotonic() - started)))

    def wait_workers(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        for w in list(self.workers):
            w.join(max(0.0, deadline - time.monotonic()))

    def close(self, timeout: float = 1.0) -> None:
        self.stop.set()
        self.wait_workers(timeout)
        self.checks.shutdown(wait=False, cancel_futures=True)
        self.publisher.close()
