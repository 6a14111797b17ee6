"""The autoscaler's reconcile loop, level-based: observe -> plan -> execute -> publish.

Each tick:
  observe  list every host's owned domains (libvirt's <metadata> is the truth) in one bulk
           call per host, all hosts at once, each within its deadline; each host's verdict
           (up, suspect, down, fencing: cms.autoscaler.hostwatch); read the tick's CPU figures
           from that same listing. A host that did not answer is left out, never waited on:
           the plan acts on what answers;
  plan     the pure planner (cms.autoscaler.planner) compares what exists with what is
           wanted, asks the group policy (cms.policy) when the count is settled, and returns
           actions, each with its reason;
  execute  the executor (cms.autoscaler.executor) performs them through the Scheduler,
           with the warm pool's handlers (cms.autoscaler.warm) registered in it;
  publish  events, samples and replica states go to the state database, and the status
           snapshot (``status()``) is rebuilt.

With several controllers (cms.autoscaler.leading) a tick first renews the lease or tries
for it; only the leader's tick goes on to plan and act; a follower's lists the hosts now
and then, read-only, and rebuilds its status.

Where each concern lives: the lifecycle states and transitions in
cms.autoscaler.lifecycle, the tracked replicas and every move of theirs in
cms.autoscaler.registry, HTTP health in cms.autoscaler.health, the ZeroMQ feed in
cms.autoscaler.publisher, placement and every change to the fleet in cms.scheduler,
libvirt in cms.virt. docs/architecture.md follows one scale-out through all of them.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Any, Callable

from cms import errors, histogram, policy
from cms.autoscaler import planner, status
from cms.autoscaler.executor import Executor
from cms.autoscaler.health import HealthChecker, HttpHealth, StatusPoller
from cms.autoscaler.hostwatch import HostWatch
from cms.autoscaler.journal import Journal
from cms.autoscaler.leading import Leading
from cms.autoscaler.lifecycle import State, Track
from cms.autoscaler.rebalance import Balancer
from cms.autoscaler.registry import Registry
from cms.autoscaler.steps import Steps
from cms.autoscaler.warm import WarmPool
from cms.config import Config, GroupConfig
from cms.leadership import Leader
from cms.metrics import History, LibvirtMetrics, MetricSource, Tick, restart_baseline, to_samples
from cms.scheduler import Scheduler
from cms.store import ReplicaRow, Store
from cms.virt import Capacity, Fleet, Listing, OwnedDomain

log = logging.getLogger("cms.autoscaler")

CAPACITY_REFRESH_S = 30.0


class Autoscaler:
    def __init__(self, cfg: Config, *, fleet: Fleet | None = None, scheduler: Scheduler | None = None,
                 metrics: MetricSource | None = None, health: HealthChecker | None = None, publisher: Any = None,
                 store: Store | None = None, dry_run: bool = False, groups: list[str] | None = None,
                 stop: threading.Event | None = None, clock: Callable[[], float] = time.time,
                 election: Any = None, load: StatusPoller | None = None) -> None:
        self.cfg = cfg
        unknown = [g for g in (groups or []) if g not in cfg.groups]
        if unknown:
            raise errors.ConfigError(f"{cfg.source}: no group named {unknown[0]!r}")
        self.groups: dict[str, GroupConfig] = {g: cfg.groups[g] for g in (groups or cfg.groups)}
        self.fleet = fleet or (scheduler.fleet if scheduler else Fleet(cfg, events=True))
        self.store = store or (scheduler.store if scheduler else Store.of(cfg))
        self.scheduler = scheduler or Scheduler(cfg, self.fleet, self.store)
        self.metrics = metrics or LibvirtMetrics(self.fleet)
        self.health = health or HttpHealth(cfg.autoscaler.health_check_timeout_s)
        # every ready replica's /status each tick, through the health checker's HTTP (a fake
        # health checker in tests has none: no poller unless the test gives one)
        self.load = load or (StatusPoller(self.health) if isinstance(self.health, HttpHealth) else None)
        self.figures: dict[str, histogram.Figures] = {}     # the last tick's, by replica
        if publisher is None:
            from cms.autoscaler.publisher import NullPublisher, Publisher
            publisher = NullPublisher() if dry_run else Publisher(cfg.zmq)
        self.publisher = publisher
        # the election (cms.coordination): a SoleLeader without [coordination]; the Scheduler
        # checks its lease before every change and stamps its term into what it writes
        if election is None:
            from cms import coordination
            me = Leader(coordination.controller_name(cfg), 0, getattr(publisher, "publish_endpoint", ""),
                        getattr(publisher, "snapshot_endpoint", ""), cfg.api.url)
            election = coordination.election(cfg, me)
        self.election = election
        self.scheduler.lease = election
        self.dry_run = dry_run
        self.stop = stop or threading.Event()
        self.clock = clock
        self.history = History(cfg.autoscaler.history)
        self.journal = Journal(self.store)
        # the replicas: one registry, which the executor, the warm pool and the balancer share
        self.registry = Registry(self.publisher, self.journal, forget_history=self.history.forget, clock=clock,
                                 dry_run=dry_run)
        self.steps = Steps(cfg, self.scheduler, self.health, self.registry, self.journal, stop=self.stop,
                           dry_run=dry_run)
        # the hosts' liveness (up -> suspect -> down -> fencing -> up): the planner acts on what answers
        self.hosts = HostWatch(cfg, self.scheduler, self.registry, self.journal, groups=tuple(self.groups),
                               clock=clock, dry_run=dry_run)
        self.executor = Executor(cfg, self.registry, self.steps, host_up=self.hosts.up)
        self.warm = WarmPool(cfg, self.registry, self.steps, self.history, clock=clock,
                             on_unpark=lambda t: restart_baseline(self.metrics, t.uuid))
        for kind, handler in self.warm.handlers().items():
            self.executor.register(kind, handler)
        # host balancing (cms.hostplan plans, rebalance applies): host load each tick; the plan applied when [balancer] enabled
        self.balancer = Balancer(cfg, self.registry, self.scheduler, self.journal, self.metrics, stop=self.stop,
                                 dry_run=dry_run, on_moved=lambda u: restart_baseline(self.metrics, u))
        self._host_samples: list = []
        self.desired: dict[str, int] = {}
        self.last_decision: dict[str, tuple[float, policy.Decision]] = {}
        self.memory: dict[str, policy.Memory] = {g: policy.Memory() for g in self.groups}
        self.started = False
        self.unhealthy_hosts: set[str] = set()
        self.last_tick: Tick | None = None
        self._listing: Listing | None = None
        self._samples: list = []
        self._dead: set[str] = set()     # names a lifecycle event said stopped/crashed
        self._caps: dict[str, tuple[float, Capacity]] = {}
        self._tick_info: dict[str, Any] = {"seq": 0, "duration_s": None, "overruns": 0,
                                           "tick_s": cfg.autoscaler.tick_s}
        self._status: dict[str, Any] = {}
        self._pruned_at = float("-inf")
        self.leading = Leading(election, publisher, health_timeout_s=cfg.autoscaler.health_timeout_s,
                               on_won=self._won, on_lost=self._lost)

    @property
    def tracks(self) -> dict[str, Track]:
        """Copies of the tracked replicas by name (the registry owns the records)."""
        return {t.name: t for t in self.registry.snapshot()}

    def status(self) -> dict[str, Any]:
        """The last tick's status snapshot (plain data; no libvirt call, no lock)."""
        return self._status

    # -- the tick -------------------------------------------------------------------------

    def tick(self) -> None:
        t0 = time.monotonic()
        now = self.clock()
        self._drain_lifecycle_events()
        if not self.leading.step():
            if self.leading.view_due():
                self.observe(now, verdicts=False)   # read-only: a warm view of the fleet, no plan, no write
            self._rebuild_status(now, t0, ())
            return
        # The registry as it is *before* the listing: a worker that ends between the two (a
        # removal, a spawn) is then still the worker's in the plan (held), where a snapshot
        # taken after would show its domain in libvirt but not in the registry, "appeared",
        # and adopt it again. Every move since is seen by the next tick.
        tracks = self.registry.snapshot()
        observed = self.observe(now)
        if not self.leading.confirm(observed.values()):
            return                          # a newer term in libvirt and etcd agrees: deposed
        self.measure(observed, now)
        self.take_scale_requests(now)
        view = planner.View(self.groups, observed, tracks, dict(self.desired),
                            first=not self.started, dead=frozenset(self._dead),
                            spawn_paused=self.steps.spawn_paused(),
                            refill_paused=self.steps.spawn_paused(warm=True),
                            hosts=self.hosts.placeable(), host_states=self.hosts.states(),
                            occupancy=self.balancer.occupancy(self._listing, self.last_tick))
        plan = planner.plan(view, lambda g, members: self.decide(g, members, now))
        self.apply(plan, now)
        self.executor.execute(plan, self._listing)
        self.executor.probe_ready()
        self.started = True
        self._dead.clear()
        self.leading.open_feed(self.registry.snapshot())
        self.leading.heartbeat()
        self.publish(now, t0)
        self.balancer.step(now, self._listing)

    def observe(self, now: float, verdicts: bool = True) -> dict[str, OwnedDomain]:
        """This tick's replica domains by name, from the hosts that are up; every host's verdict
        (cms.autoscaler.hostwatch) first, when leading (``verdicts``: a follower only looks). A
        host that did not answer is left out, never waited on."""
        listing = self.scheduler.list_domains()
        self.unhealthy_hosts = set(listing.down)
        self._listing = listing
        if verdicts:
            self.hosts.step(listing, now)
        return {d.name: d for d in listing.all()
                if d.meta.group in self.groups and d.meta.role == "replica" and self.hosts.up(d.host)}

    def _drain_lifecycle_events(self) -> None:
        q = self.fleet.event_queue
        while q is not None:
            try:
                ev = q.get_nowait()
            except Exception:  # noqa: BLE001 - queue.Empty
                return
            if ev.event in ("stopped", "crashed", "shutdown"):
                self._dead.add(ev.name)

    def measure(self, observed: dict[str, OwnedDomain], now: float) -> None:
        alive = [d for d in observed.values() if d.alive]
        # The API's VMs are sampled in the same pass, from the same listing, so the console has
        # their history too (and the host figures count them); the policy never sees them.
        vms = [d for d in (self._listing.all() if self._listing else []) if d.alive and d.meta.role == "vm"]
        try:
            tick = self.metrics.sample(alive + vms)
        except Exception as exc:  # noqa: BLE001 - a metric failure is a tick without figures
            log.warning("metrics failed this tick: %s", exc)
            tick = Tick(ts=now)
        self.last_tick = tick
        for d in alive:
            m = tick.domains.get(d.uuid)
            self.history.add(d.name, now, m.cpu if m else None)
        self.poll_load(now)
        self._samples.extend(to_samples(tick, alive, self.registry.states(), self.figures))
        self._samples.extend(to_samples(tick, vms, {}))
        self._host_samples.extend(self.balancer.observe(tick, self._listing, self._capacities()))

    def poll_load(self, now: float) -> None:
        """Every ready replica's /status (StatusPoller: at once, keep-alive, each within half a
        tick): its requests in flight and p95 latency over the last tick, into the history."""
        if self.load is None:
            return
        ready = {t.name: (t.address, t.port) for t in self.registry.snapshot()
                 if t.state == State.READY and t.group in self.groups and t.address}
        deadline = min(self.cfg.autoscaler.tick_s / 2, self.cfg.autoscaler.health_check_timeout_s)
        try:
            got = self.load.poll(ready, deadline)
        except Exception as exc:  # noqa: BLE001 - a poll failure is a tick without load figures
            log.warning("polling /status failed this tick: %s", exc)
            got = {}
        for name, f in got.items():
            self.history.add_load(name, now, f.in_flight if f else None, f.p95_s if f else None)
        self.figures = {n: f for n, f in got.items() if f is not None}

    def take_scale_requests(self, now: float) -> None:
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
            want = policy.clamp(gc, replicas)
            if not self.store.consume_scale_request(g, ts):
                continue  # replaced by a newer one meanwhile: the next tick takes that
            before = self.desired.get(g)
            self.desired[g] = want
            self.memory[g].overridden(now)
            self.journal.event("scale_override", g, "", f"asked through the API: {before} -> {want} replicas",
                               asked=replicas, desired=want, previous=before)

    def decide(self, g: str, members: tuple[Track, ...], now: float) -> policy.Decision:
        """The group policy's decision over the serving replicas (pure: reads, changes nothing)."""
        ready = [(t.name, t.ready_at) for t in members if t.state == State.READY]
        inp = self.memory[g].input(now, len(members), len(members) - len(ready), self.history.policy_series(ready))
        return policy.decide(self.groups[g], inp)

    def apply(self, plan: planner.Plan, now: float) -> None:
        """Take the plan's decisions: wanted counts, the policy's memory, decision events."""
        for note in plan.notes:
            log.debug("%s", note)
        for g, gd in plan.groups.items():
            d = gd.decision
            if d is not None:
                self.last_decision[g] = (now, d)
                self.memory[g].remember(self.groups[g], d, now)
                if d.action != policy.NONE:
                    self.journal.event("decision", g, "", f"{d.action} to {d.desired}: {d.reason}",
                                       action=d.action, desired=d.desired, current=gd.current, mean=d.mean,
                                       **{k: v for k, v in d.data.items() if k in ("panicking", "p95_s")})
                else:
                    log.debug("group %s: no action: %s", g, d.reason)
            if not self.started:
                log.info("group %s: %d running replica(s) found, desired %d", g, gd.current, gd.desired)
            if self.dry_run and gd.desired != gd.current:
                log.info("dry run: group %s would %s %d replica(s)", g,
                         "add" if gd.desired > gd.current else "remove", abs(gd.desired - gd.current))
            self.desired[g] = gd.desired

    # -- publish --------------------------------------------------------------------------

    def publish(self, now: float, t0: float) -> None:
        samples, self._samples = self._samples, []
        host_samples, self._host_samples = self._host_samples, []
        if (samples or host_samples) and self.cfg.history.source == "store":   # else Prometheus keeps them
            try:
                self.store.add_samples(samples)
                self.store.add_host_samples(host_samples)
            except Exception as exc:  # noqa: BLE001
                log.warning("could not store samples: %s", exc)
        self.journal.flush()
        self._prune(now)
        tracks = self.registry.snapshot()
        if not self.dry_run and self.started:
            self.journal.replicas(ReplicaRow(t.name, t.group, t.host, str(t.state), t.address, t.port, now)
                                  for t in tracks if t.group in self.groups and t.state != State.SPAWNING)
        self._rebuild_status(now, t0, tracks, tuple(samples), tuple(host_samples))

    def _rebuild_status(self, now: float, t0: float, tracks: tuple[Track, ...], samples: tuple = (),
                        host_samples: tuple = ()) -> None:
        took = time.monotonic() - t0
        info = self._tick_info
        info["seq"] += 1
        info["duration_s"] = round(took, 4)
        info["overruns"] += took > self.cfg.autoscaler.tick_s
        self._status = status.build(
            now=now, groups=self.groups, tracks=tracks, desired=self.desired, decisions=self.last_decision,
            tick=self.last_tick, listing=self._listing, capacities=self._capacities(), tick_info=info,
            feed_seq=int(getattr(self.publisher, "seq", 0)), hosts=tuple(self.fleet.hosts),
            load=self.figures, latency=self.load.latest if self.load is not None else {},
            host_states={h: str(st) for h, st in self.hosts.states().items()},
            samples=samples, host_samples=host_samples)
        self._status["controller"] = self.leading.status()

    # -- leading and following ----------------------------------------------------------------

    def _won(self, term: int) -> None:
        """A new term: start as a restarted daemon would, adopting everything from libvirt (the
        hosts' states too, from the journal: a host the last leader had down is fenced first)."""
        self.started = False
        self.desired.clear()
        self.memory = {g: policy.Memory() for g in self.groups}
        self.hosts.resume()
        if not self.dry_run:
            self.journal.forget_all_replicas(self.groups)

    def _lost(self) -> None:
        """No longer leading: keep nothing of the fleet but the view (the next leader adopts)."""
        self.registry.drop_all()
        self.started = False
        self.desired.clear()

    def _prune(self, now: float) -> None:
        """Keep the state database bounded: samples and events past [history]'s retention go,
        at most every prune_interval_s."""
        hc = self.cfg.history
        if self.dry_run or now - self._pruned_at < hc.prune_interval_s:
            return
        self._pruned_at = now
        try:
            gone = self.store.prune_history(now - hc.retention_s, now - hc.events_retention_s)
        except Exception as exc:  # noqa: BLE001 - history is not worth a tick
            log.warning("could not prune the state database: %s", exc)
            return
        if any(gone.values()):
            log.info("pruned history past retention: %s", ", ".join(f"{n} {t}" for t, n in gone.items() if n))

    def _capacities(self) -> dict[str, Capacity]:
        """Each host's capacity, re-read at most every CAPACITY_REFRESH_S (it hardly changes)."""
        mono = time.monotonic()
        due = [h for h in self.fleet.hosts if h not in self.unhealthy_hosts
               and mono - self._caps.get(h, (-1e9, None))[0] >= CAPACITY_REFRESH_S]
        if due:
            got, _silent = self.fleet.per_host(lambda host: host.capacity(), due)   # never waits on one host
            self._caps.update({h: (mono, cap) for h, cap in got.items()})
        return {h: c for h, (_at, c) in self._caps.items()}

    # -- running and stopping -------------------------------------------------------------

    def run(self, once: bool = False, on_tick: Callable[[], None] | None = None) -> None:
        if not self.dry_run and not self.election.enabled:
            self.journal.forget_all_replicas(self.groups)   # with an election: when it wins
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
        self.executor.wait_workers(timeout)

    def close(self, timeout: float = 1.0) -> None:
        self.stop.set()
        self.executor.close(timeout)
        self.balancer.wait(timeout)
        self.hosts.wait(timeout)
        self.journal.flush()
        self.election.stop()               # a clean handover: the lock goes now, not at its TTL
        self.publisher.close()
        if self.load is not None:
            self.load.close()
