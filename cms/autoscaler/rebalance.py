"""Host balancing as a step of the autoscaler's reconcile loop: host load in, the plan applied.

(Named for what it does to a running fleet: cms.hostplan plans, this applies; the load
client's replica choice and the demo scenario are elsewhere.)

Each tick the daemon calls ``observe`` (after its metrics: one host-load row per host, the
figures the planner reads back) and, at the end of the tick, ``step``:

* the model comes from cms.autoscaler.balance_model (the same the API's plan is built from)
  plus what only the daemon knows (its running migrations, replica states, memory use);
* cms.hostplan plans; with ``[balancer] enabled`` (or once, when ``cms balance run`` asked)
  the plan is applied, each action on a worker thread of the balancer's own, every change
  through the Scheduler. Its actions are not planner actions: the balancer applies its own
  plan and does not go through ``Executor.register``; it shares the replicas with the
  executor through the replica registry (cms.autoscaler.registry), the one owner of them;
* a migration of a ready replica keeps it serving: the registry hands it over still READY
  and held (``busy``, so no worker of the executor drains or checks it meanwhile), and its
  new address is announced ("moved", by the registry) when the source pauses it for the
  switch-over, before the old address disappears. A failed or aborted migration leaves the
  VM where it was: the event says why, and if the new address was announced already the
  old one is announced again;
* a resize grows (or shrinks) a VM in place, after its migration when the plan says so;
* "host X is empty and could be powered off" is an event, once per host until it has VMs again.

Events (kind: balance_migrate, migrated, migrate_failed, resized, resize_failed,
power_off_hint, balance_run) carry the planner's reason in words and the action's figures.
"""

from __future__ import annotations

import collections
import contextlib
import logging
import threading
import time
from typing import Any, Callable

from cms import errors, hostplan
from cms.api_tables import ApiTables
from cms.autoscaler import balance_model
from cms.autoscaler.journal import Journal
from cms.autoscaler.lifecycle import State, Track
from cms.autoscaler.registry import Registry
from cms.autoscaler.workers import Workers
from cms.config import Config
from cms.db import schema
from cms.metrics import Tick
from cms.scheduler import Scheduler
from cms.store import HostSample, Store
from cms.virt import Capacity, Listing

log = logging.getLogger("cms.autoscaler")


def request_run(store: Store) -> float:
    """Ask the daemon to apply one plan on its next tick (``cms balance run``), enabled or not."""
    ts = time.time()
    with store.write() as c:
        c.execute(schema.balance_requests.insert().values(ts=ts))
    return ts


def take_run(store: Store) -> bool:
    with store.write() as c:
        return c.execute(schema.balance_requests.delete()).rowcount > 0


def current_plan(cfg: Config, scheduler: Scheduler, store: Store, now: float | None = None,
                 extra: balance_model.Extra | None = None, listing: Listing | None = None) -> hostplan.BalancePlan:
    """What the planner would do now (the API's and the CLI's ``balance plan``)."""
    now = time.time() if now is None else now
    listing = listing or scheduler.list_domains()
    model = balance_model.build(cfg, listing, scheduler.loads(listing), store, now, extra)
    return hostplan.plan(model, balance_model.limits(cfg))


class Balancer:
    """The host-balancing step: the registry's replicas (a move holds one), the Scheduler for
    every change, its own workers."""

    def __init__(self, cfg: Config, registry: Registry, scheduler: Scheduler, journal: Journal, metrics: Any, *,
                 stop: threading.Event, dry_run: bool = False, on_moved: Callable[[str], None] | None = None) -> None:
        self.cfg = cfg
        self.registry = registry
        self.scheduler = scheduler
        self.journal = journal
        self.stop, self.dry_run = stop, dry_run
        self.metrics = metrics
        self.on_moved = on_moved or (lambda _uuid: None)
        self.store = self.scheduler.store
        self.api_tables = ApiTables(self.store)
        self.migrating: dict[str, tuple[str, str]] = {}
        self.mem: dict[str, collections.deque] = {}
        self.empty_told: set[str] = set()
        self.workers = Workers()
        self.last_plan: hostplan.BalancePlan | None = None
        self._lock = threading.Lock()

    # -- observing: host load, memory use --------------------------------------------------

    def observe(self, tick: Tick, listing: Listing | None, caps: dict[str, Capacity]) -> list[HostSample]:
        """One host-load row per host for this tick: its cms VMs' CPU over its CPUs, and the
        node's own figure where libvirt has one. Also keeps the guests' memory use."""
        if listing is None:
            return []
        hosts = self.scheduler.host_names()
        up = [h for h in hosts if h not in listing.down]
        node = self.metrics.node_cpu(up) if hasattr(self.metrics, "node_cpu") else {}
        rows = []
        for h in hosts:
            doms = [d for d in listing.domains.get(h, []) if d.alive]
            hm = tick.hosts.get(h)
            cpus = self.scheduler.host_cpus(h) if h in up else 0
            cpu = hm.cpu if hm is not None else (0.0 if h in up and not doms else None)
            cap = caps.get(h)
            rows.append(HostSample(tick.ts, h, cpu, cpus, len(doms), sum(d.vcpus for d in doms),
                                   cap.free_memory_mib if cap and h in up else None, node.get(h)))
            for d in doms:
                use = balance_model.mem_use(d.stats)
                if use is not None:
                    self.mem.setdefault(d.name, collections.deque(maxlen=600)).append((tick.ts, use))
        alive = {d.name for d in listing.all() if d.alive}
        for name in [n for n in self.mem if n not in alive]:
            del self.mem[name]
        return rows

    def occupancy(self, listing: Listing | None, tick: Tick | None) -> dict[str, tuple[int, float]]:
        """Host -> (running cms domains, load): what scale_in_order = "consolidate" weighs."""
        if listing is None:
            return {}
        out = {}
        for h, doms in listing.domains.items():
            hm = tick.hosts.get(h) if tick else None
            out[h] = (sum(1 for d in doms if d.alive), (hm.cpu or 0.0) if hm else 0.0)
        return out

    # -- the step ---------------------------------------------------------------------------

    def extra(self) -> balance_model.Extra:
        tracks = self.registry.snapshot()
        with self._lock:
            migrating = dict(self.migrating)
        return balance_model.Extra(migrating=migrating, states={t.name: str(t.state) for t in tracks},
                                   ready_at={t.name: t.ready_at for t in tracks if t.ready_at is not None},
                                   busy=frozenset(t.name for t in tracks if t.busy),
                                   mem_series={n: tuple(s) for n, s in self.mem.items()})

    def step(self, now: float, listing: Listing | None) -> hostplan.BalancePlan | None:
        """Plan, and apply the plan when enabled (or asked once); None when nothing was planned."""
        self.workers.prune()
        if listing is None or listing.down:
            return None
        # a host told empty that has VMs again (spawned, moved there) is told again when it empties
        self.empty_told -= {d.host for d in listing.all() if d.alive}
        asked = False if self.dry_run else take_run(self.store)
        if not (self.cfg.balancer.enabled or asked):
            return None
        try:
            p = current_plan(self.cfg, self.scheduler, self.store, now, self.extra(), listing)
        except Exception:  # noqa: BLE001 - balancing must never stop the reconcile loop
            log.exception("balancing: planning failed; the next tick plans again")
            return None
        self.last_plan = p
        if self.dry_run:
            for a in p.actions:
                log.info("dry run: balancing would %s %s: %s", a.kind, a.vm or a.src, a.reason)
            return p
        if asked:
            self.journal.event("balance_run", "", "", f"asked once: {len(p.actions)} action(s)",
                               actions=len(p.actions), notes=p.notes,
                               migrations=sum(1 for x in p.actions if x.kind == hostplan.MIGRATE),
                               resizes=sum(1 for x in p.actions if x.kind == hostplan.RESIZE))
        self.apply(p)
        return p

    def apply(self, p: hostplan.BalancePlan) -> None:
        by_vm: dict[str, list[hostplan.BalanceAction]] = collections.defaultdict(list)
        for a in p.actions:
            if a.kind == hostplan.POWER_OFF:
                self._empty_host(a)
            elif a.kind in (hostplan.MIGRATE, hostplan.RESIZE):
                by_vm[a.vm].append(a)
        for vm, acts in by_vm.items():
            with self._lock:
                if vm in self.migrating:
                    continue
                if acts[0].kind == hostplan.MIGRATE:
                    self.migrating[vm] = (acts[0].src, acts[0].dst)
            self.workers.start(f"cms-balance-{vm}", self._run, acts)

    def _empty_host(self, a: hostplan.BalanceAction) -> None:
        if a.src in self.empty_told:
            return
        self.empty_told.add(a.src)
        self.journal.event("power_off_hint", "", a.src, a.reason, host=a.src)

    # -- actions (worker threads) -------------------------------------------------------------

    def _run(self, acts: list[hostplan.BalanceAction]) -> None:
        try:
            for a in acts:
                ok = self._migrate(a) if a.kind == hostplan.MIGRATE else self._resize(a)
                if not ok:
                    return     # a resize planned after a failed migration does not happen
        finally:
            with self._lock:
                self.migrating.pop(acts[0].vm, None)

    def _track(self, name: str) -> Track | None | bool:
        """The replica's track, ready and held for the move; None for an API VM. False: not movable now."""
        if self.registry.get(name) is None:
            return None
        return self.registry.take(name, (State.READY,), claim=True) or False

    def _migrate(self, a: hostplan.BalanceAction) -> bool:
        t = self._track(a.vm)
        group = t.group if t else ""
        if t is False:
            self.journal.event("migrate_failed", "", a.vm, f"not migrated: it is no longer a ready replica "
                               f"({a.reason})", **{"from": a.src, "to": a.dst, "strategy": a.strategy})
            return False
        self.journal.event("balance_migrate", group, a.vm, a.reason, strategy=a.strategy,
                           **{"from": a.src, "to": a.dst}, **a.data)
        old = (t.host, t.address, t.port) if t else None
        told: list[float] = []

        def switched(dest: str, address: str, port: int) -> None:
            if t:
                self.registry.relocate(t, dest, address, port, f"live-migrated from {a.src} to {dest} ({a.strategy})")
            told.append(time.monotonic())

        started = time.monotonic()
        try:
            self.scheduler.migrate(a.vm, a.dst, on_switchover=switched)
        except errors.CmsError as exc:
            if t and told and old:
                self.registry.relocate(t, *old, f"migration failed: stays on {a.src}")
            if t:
                self.registry.release(t)
            self.journal.event("migrate_failed", group, a.vm, f"{exc}; it stays on {a.src}", error=str(exc),
                               strategy=a.strategy, **{"from": a.src, "to": a.dst})
            return False
        took = time.monotonic() - started
        switch = round(told[0] - started, 3) if told else None
        if t:
            self.on_moved(t.uuid)
            self.registry.release(t)
        self.journal.event("migrated", group, a.vm, f"from {a.src} to {a.dst} in {took:.1f}s ({a.strategy})",
                           took_s=round(took, 3), switchover_s=switch, strategy=a.strategy,
                           address=t.address if t else "", port=t.port if t else 0, **{"from": a.src, "to": a.dst})
        if not t:
            self.api_tables.vm_moved(a.vm, a.dst)     # an API VM's row says where it runs now
        return True

    def _resize(self, a: hostplan.BalanceAction) -> bool:
        try:
            d = self.scheduler.resize(a.vm, vcpus=a.vcpus or None, memory_mib=a.memory_mib or None)
        except errors.CmsError as exc:
            d = self._late_unplug(a, exc)
            if d is None:
                self.journal.event("resize_failed", "", a.vm, f"{exc} ({a.reason})", error=str(exc),
                                   vcpus=a.vcpus, memory_mib=a.memory_mib)
                return False
            self.journal.event("resized", d.meta.group, a.vm, f"{a.reason} (the guest let its vCPU go after "
                               "libvirt stopped waiting; its definition keeps the old count)", host=d.host,
                               vcpus=d.vcpus, memory_mib=d.memory_mib)
            return True
        self.journal.event("resized", d.meta.group, a.vm, a.reason, host=d.host, vcpus=d.vcpus,
                           memory_mib=d.memory_mib)
        return True

    def _late_unplug(self, a: hostplan.BalanceAction, exc: Exception) -> Any:
        """A vCPU unplug libvirt gave up waiting for (5 s; a guest under TCG may take longer):
        the domain once its guest has let the vCPU go, or None if it does not within 30 s."""
        if not a.vcpus or "unplug" not in str(exc):
            return None
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and not self.stop.is_set():
            with contextlib.suppress(errors.CmsError):
                d = self.scheduler.find(a.vm)
                if d.vcpus == a.vcpus:
                    return d
            self.stop.wait(1.0)
        return None

    def wait(self, timeout: float) -> None:
        self.workers.join(timeout)
