"""The cluster model the host planner (cms.hostplan) reads, built from what cms records.

One way to build it, for the daemon and for the API alike, so ``cms balance plan`` shows
what ``cms-autoscaler`` would do: a fresh listing of the fleet (where each VM runs, its size
and defined maximum), the placement figures of every host (cms.scheduler's, so the
planner's room is placement's room), and the state database's history:

* host load per tick (``host_samples``, written by the daemon each tick);
* each VM's CPU per tick (``samples``);
* the moves and resizes of the last while (``events``: ``balance_migrate`` when one
  starts, ``migrated`` / ``migrate_failed`` when it ends, ``resized`` / ``resize_failed``), for the cooldown,
  the minimum stay, the move budget and migrations still running;
* replica states (``replicas``), as only a ready replica is moved.
* the API's VM names and instance-type sizes (cms.api_tables), for vertical scaling's
  opt-in by name or type and the size a VM is never shrunk below.

The daemon adds what only it knows: migrations it is running right now, its own view of
replica states, and the guests' memory use from the balloon (when they report it).
"""

from __future__ import annotations

import collections
from dataclasses import dataclass, field
from typing import Any, Iterable, Mapping

from cms import hostplan, promhistory
from cms.api_tables import ApiTables
from cms.config import Config, VerticalConfig
from cms.placement import HostLoad, Rules
from cms.store import Store
from cms.virt import Listing, OwnedDomain

BOOT_SETTLE_S = 30.0   # a VM's CPU in its first seconds is its boot: vertical scaling waits this long
MOVE_KINDS = ("balance_migrate", "migrated", "migrate_failed", "resized", "resize_failed")


def limits(cfg: Config) -> hostplan.Limits:
    b = cfg.balancer
    return hostplan.Limits(high=b.high, window_s=b.window_s, relief=b.relief, consolidate=b.consolidate,
                          headroom=b.headroom, consolidate_window_s=b.consolidate_window_s,
                          vm_cooldown_s=b.vm_cooldown_s, min_stay_s=b.min_stay_s, max_moves=b.max_moves,
                          budget_interval_s=b.budget_interval_s,
                          anti_affinity=frozenset(g for g, gc in cfg.groups.items() if gc.anti_affinity))


@dataclass
class Extra:
    """What the daemon knows beyond the state database."""
    migrating: Mapping[str, tuple[str, str]] = field(default_factory=dict)   # VM -> (from, to), running now
    states: Mapping[str, str] | None = None          # replica -> lifecycle state (None: the replicas table)
    busy: frozenset[str] = frozenset()               # replicas a worker of the daemon holds
    ready_at: Mapping[str, float] = field(default_factory=dict)   # replica -> when it became ready
    mem_series: Mapping[str, tuple[tuple[float, float | None], ...]] = field(default_factory=dict)


def _vertical(cfg: Config, d: OwnedDomain, api_names: Mapping[str, str]) -> VerticalConfig | None:
    if d.meta.role == "replica":
        gc = cfg.groups.get(d.meta.group)
        vt = gc.vertical if gc is not None else None
    else:
        vt = cfg.vertical.vms.get(api_names.get(d.name, "")) or cfg.vertical.types.get(str(d.meta.instance_type))
    return vt if vt is not None and vt.enabled else None


def _base_size(cfg: Config, d: OwnedDomain, types: Mapping[int, tuple[int, int]]) -> tuple[int, int]:
    """The size a VM was made with: never shrunk below it."""
    if d.meta.role == "replica" and d.meta.group in cfg.groups:
        gc = cfg.groups[d.meta.group]
        return gc.vcpus, gc.memory_mib
    return types.get(d.meta.instance_type, (d.vcpus, d.memory_mib))


def history(store: Store, now: float, cfg: Config) -> dict[str, Any]:
    """The history part of the model: CPU series (the store or Prometheus: [history] source) and recent moves."""
    b = cfg.balancer
    verticals = [gc.vertical for gc in cfg.groups.values()] + list(cfg.vertical.types.values()) \
        + list(cfg.vertical.vms.values())
    span = max([b.window_s, b.consolidate_window_s] + [v.window_in_s for v in verticals if v.enabled]) + 5.0
    hosts = promhistory.recent_cpu(cfg, store, now, span, hosts=True)
    vms = promhistory.recent_cpu(cfg, store, now, span)
    horizon = max(b.min_stay_s, b.vm_cooldown_s, b.budget_interval_s)
    events = [e for e in store.events(kinds=MOVE_KINDS, newest_first=True, limit=20000) if e.ts >= now - horizon]
    events.reverse()
    return {"hosts": hosts, "vms": vms, "events": events}


def build(cfg: Config, listing: Listing, loads: Iterable[HostLoad], store: Store, now: float,
          extra: Extra | None = None) -> hostplan.Model:
    """The planner's input. `loads`: placement's figures of every configured host."""
    extra = extra or Extra()
    h = history(store, now, cfg)
    api = ApiTables(store)
    api_names, types = api.vm_names(), api.type_sizes()
    states = dict(extra.states) if extra.states is not None else {r.name: r.state for r in store.replicas()}

    # moves: when each VM last moved, where from, running ones; resizes; host moves
    last_moved: dict[str, float] = {}
    left: dict[str, list[tuple[str, float]]] = collections.defaultdict(list)
    resized: dict[str, float] = {}
    host_moved: dict[str, float] = {}
    started: list[float] = []
    running: dict[str, tuple[str, str]] = {}
    for e in h["events"]:
        src, dst = str(e.data.get("from", "")), str(e.data.get("to", ""))
        if e.kind == "balance_migrate":
            started.append(e.ts)
            running[e.subject] = (src, dst)
        elif e.kind in ("migrated", "migrate_failed"):
            running.pop(e.subject, None)
            last_moved[e.subject] = e.ts
            if e.kind == "migrated":
                left[e.subject].append((src, e.ts))
                host_moved[src] = host_moved[dst] = e.ts
        elif e.kind in ("resized", "resize_failed"):
            resized[e.subject] = e.ts      # a failed one too: its windows start again, no retry each tick
    running.update(extra.migrating)
    busy_hosts = {x for pair in running.values() for x in pair}

    lim = limits(cfg)
    hosts = []
    for hl in loads:
        hosts.append(hostplan.HostView(
            hl.name, hl.cpus, hl.memory_mib, up=hl.up and hl.name not in listing.down,
            series=tuple(h["hosts"].get(hl.name, ())), migrating=hl.name in busy_hosts,
            last_move_at=host_moved.get(hl.name), disk_free_bytes=hl.disk_free_bytes,
            used_vcpus=hl.used_vcpus, used_memory_mib=hl.used_memory_mib))
    vms = []
    for d in listing.all():
        if not d.alive or d.state != "running":
            continue
        series = tuple(h["vms"].get(d.name, ()))
        recent = [v for t, v in series if t > now - lim.window_s and v is not None]
        if d.meta.role == "replica":
            movable = states.get(d.name) == "ready" and d.name not in extra.busy and not d.meta.warm
        else:
            movable = d.meta.role == "vm"
        vt = _vertical(cfg, d, api_names)
        vertical = None
        base_vcpus, base_mib = _base_size(cfg, d, types)
        if vt is not None:
            defined_vcpus = int(d.stats.get("vcpu.maximum") or d.vcpus)
            defined_mib = int(d.stats.get("balloon.maximum") or d.given_mib * 1024) // 1024 - d.meta.kernel_mib
            vertical = hostplan.Vertical(min(vt.max_vcpus, defined_vcpus),
                                         min(vt.max_memory_mib or d.memory_mib, defined_mib),
                                         vt.high, vt.low, vt.window_s, vt.window_in_s)
        vms.append(hostplan.VmView(
            d.name, d.host, d.vcpus, d.memory_mib, sum(recent) / len(recent) if recent else None,
            group=d.meta.group, movable=movable, migrating=d.name in running,
            last_moved_at=last_moved.get(d.name), left=tuple(left.get(d.name, ())), vertical=vertical,
            min_vcpus=base_vcpus, min_memory_mib=base_mib, cpu_series=series if vertical else (),
            mem_series=tuple(extra.mem_series.get(d.name, ())) if vertical else (),
            last_resized_at=_settled(cfg, d, resized.get(d.name), extra.ready_at.get(d.name)),
            kernel_mib=d.meta.kernel_mib))
    return hostplan.Model(now, tuple(hosts), tuple(vms), recent_moves=tuple(started), rules=_rules(cfg))


def _settled(cfg: Config, d: OwnedDomain, resized: float | None, ready_at: float | None) -> float | None:
    """From when a VM's CPU counts for vertical scaling: after its last resize, and after its
    boot (a replica: its group's warmup_s after it became ready; else BOOT_SETTLE_S after it
    was made), as a booting guest is busy whatever its load."""
    gc = cfg.groups.get(d.meta.group) if d.meta.role == "replica" else None
    if ready_at is not None and gc is not None:
        boot = ready_at + gc.warmup_s
    else:
        boot = d.meta.created + max(BOOT_SETTLE_S, gc.warmup_s if gc else 0.0)
    return max(boot, resized) if resized is not None else boot


def _rules(cfg: Config) -> Rules:
    return Rules(cfg.placement.cpu_overcommit, cfg.placement.ram_reserve_mib)


def mem_use(stats: Mapping[str, Any]) -> float | None:
    """The share of its memory a guest uses, from the balloon's guest statistics (None when the
    guest does not report them: its balloon driver is not loaded)."""
    avail, usable = stats.get("balloon.available"), stats.get("balloon.usable")
    if not avail or usable is None:
        return None
    return max(0.0, min(1.0, 1.0 - float(usable) / float(avail)))
