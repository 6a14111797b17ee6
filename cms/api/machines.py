"""The API's machines (hypervisor hosts): /pm/list, /pm/query, /pm/listvms and /v1/hosts/...

A machine's pmid is its 1-based position in the configuration (pm_file order). Its load
and capacity are the scheduler's (``Scheduler.host_state``: what placement counts), so the
free figures here are what a create could still take. Its ``state`` is the one cms-autoscaler
declared (up, suspect, down, fencing: ``declared_states``), else whether it answers; a host
declared anything but up is not asked for its figures.
"""

from __future__ import annotations

import time
from typing import Any

from cms import promhistory
from cms.api.failures import Unknown
from cms.autoscaler.hoststate import STATE_OF
from cms.api_tables import ApiTables
from cms.config import Config
from cms.placement import HostLoad, ram_room, vcpu_room
from cms.scheduler import Scheduler
from cms.store import Store
from cms.virt import Capacity, OwnedDomain

GIB = 1024 ** 3


def host_of(sched: Scheduler, pmid: int) -> str:
    """The name of machine `pmid`; Unknown when there is none."""
    name = sched.host_name(pmid)
    if name is None:
        raise Unknown(f"no machine {pmid}")
    return name


def declared_states(store: Store) -> dict[str, str]:
    """Each host's state as cms-autoscaler last declared it (cms.autoscaler.hoststate: every move
    is an event, the newest says where a host is); a host it never declared is not listed."""
    return {h: str(STATE_OF[e.kind]) for h, e in store.latest_events(STATE_OF).items()}


def kind(d: OwnedDomain) -> str:
    """An owned domain's kind for the host figures: an API VM, a serving replica, or a warm one."""
    if d.meta.role == "vm":
        return "vm"
    return "warm" if d.meta.warm else "replica"


class Machines:
    def __init__(self, cfg: Config, store: Store, tables: ApiTables, sched: Scheduler) -> None:
        self.cfg, self.store, self.tables, self.sched = cfg, store, tables, sched

    def pmids(self) -> list[int]:
        return list(range(1, len(self.cfg.hosts) + 1))

    def vmids(self, pmid: int) -> list[int]:
        """The API VMs on the machine."""
        return [r["vmid"] for r in self.tables.vms(host_of(self.sched, pmid))]

    def get(self, pmid: int, full: bool = False) -> dict[str, Any]:
        name = host_of(self.sched, pmid)
        declared = declared_states(self.store).get(name)
        if declared not in (None, "up"):
            # the daemon has it suspect, down or fencing: not asked (it would only make us wait)
            load, doms, cap = HostLoad(name, 0, 0, up=False), [], None
        else:
            load, doms, cap = self.sched.host_state(name)
        rules = self.sched.rules
        if cap is None:
            capacity = {"cpu": 0, "ram": 0, "disk": 0}
            free = {"cpu": 0, "ram": 0, "disk": 0}
        else:
            capacity = {"cpu": cap.cpus, "ram": cap.memory_mib, "disk": cap.pool_capacity_bytes // GIB}
            free = {"cpu": max(0, vcpu_room(load, rules)), "ram": max(0, ram_room(load, rules)),
                    "disk": cap.pool_available_bytes // GIB}
        out: dict[str, Any] = {"pmid": pmid, "capacity": capacity, "free": free, "vms": len(self.tables.vms(name))}
        if full:
            out.update(name=name, uri=self.cfg.hosts[pmid - 1].uri, up=load.up,
                       state=declared or ("up" if load.up else "down"),
                       used={"vcpus": load.used_vcpus, "ram": load.used_memory_mib})
            out.update(self._figures(name, load, doms, cap))
        return out

    def _figures(self, name: str, load: HostLoad, doms: list[OwnedDomain], cap: Capacity | None) -> dict[str, Any]:
        """What the console shows for a host, each figure saying what it counts.

        ``vms`` (above, the spec's figure) counts API VMs only; ``domains`` counts every domain
        cms owns there by kind. ``vcpus`` sets the vCPUs given out against the host's CPUs
        (as placement counts them: cms.virt.Fleet.host_cpus) and the overcommit placement
        allows. ``cpu`` is the share of the host's CPUs its cms domains used at the last
        sample (the daemon's host row, else the sum of its per-domain samples), with that
        sample's time; null when nothing sampled it in the last minute.
        """
        kinds = {"vm": 0, "replica": 0, "warm": 0}
        for d in doms:
            kinds[kind(d)] += 1
        cpus = load.cpus if cap is not None else 0
        rules = self.sched.rules
        figures: dict[str, Any] = {
            "domains": {**kinds, "total": len(doms)},
            "vcpus": {"used": load.used_vcpus, "cpus": cpus, "overcommit": rules.cpu_overcommit,
                      "limit": int(cpus * rules.cpu_overcommit),
                      "ratio": round(load.used_vcpus / cpus, 3) if cpus else None},
            "memory_mib": {"total": cap.memory_mib if cap else 0, "free": cap.free_memory_mib if cap else 0,
                           "given": load.used_memory_mib, "reserve": rules.ram_reserve_mib},
            "disk_bytes": {"total": cap.pool_capacity_bytes if cap else 0,
                           "free": cap.pool_available_bytes if cap else 0},
            "cpu": {"utilization": None, "ts": None, "source": None, "node": None},
        }
        since = time.time() - 60
        if self.cfg.history.source == "prometheus":        # the store keeps no samples then
            last = (promhistory.recent_cpu(self.cfg, self.store, time.time(), 60, hosts=True).get(name) or [None])[-1]
            if last is not None:
                figures["cpu"] = {"utilization": round(last[1], 4), "ts": last[0], "source": "host", "node": None}
            return figures
        hs = self.store.latest_host_sample(name, since)
        if hs is not None and hs.cpu is not None:
            figures["cpu"] = {"utilization": round(hs.cpu, 4), "ts": hs.ts, "source": "host",
                              "node": None if hs.node_cpu is None else round(hs.node_cpu, 4)}
        elif cpus:
            used = self.store.latest_cores_used(name, since)
            if used is not None:
                figures["cpu"] = {"utilization": round(used[1] / cpus, 4), "ts": used[0], "source": "domains",
                                  "node": None}
        return figures
