"""The API's replica groups: GET /v1/groups[/{name}] and POST /v1/groups/{name}/scale.

A group's replicas are read from libvirt (the domains cms owns in that group), each with
two states under two names: the autoscaler's lifecycle state (starting, ready, draining,
parked, ... as it recorded it in the store's replicas table) and libvirt's domain state
(running, paused, shutoff, ...). A warm-pool member is in the list too, with warm = true;
"unknown": the autoscaler has not recorded it (yet). A scale request goes to the store's
scale_requests table, which the autoscaler consumes on its next tick.
"""

from __future__ import annotations

import time
from typing import Any

from cms import promhistory
from cms.api.failures import Invalid, Unknown
from cms.config import Config, GroupConfig
from cms.scheduler import Scheduler
from cms.store import Store
from cms.virt import Fleet


class Groups:
    def __init__(self, cfg: Config, store: Store, sched: Scheduler, fleet: Fleet) -> None:
        self.cfg, self.store, self.sched, self.fleet = cfg, store, sched, fleet

    def config(self, name: str) -> GroupConfig:
        """The group's configuration; Unknown when there is no such group."""
        gc = self.cfg.groups.get(name)
        if gc is None:
            raise Unknown(f"no group {name!r}")
        return gc

    def get(self, name: str) -> dict[str, Any]:
        gc = self.config(name)
        cpu = {d: [round(v, 4) for _t, v in series if v is not None]      # the store or Prometheus
               for d, series in promhistory.recent_cpu(self.cfg, self.store, time.time(), 120, group=name).items()}
        lifecycle = {r.name: r for r in self.store.replicas(name)}
        replicas = []
        for d in self.fleet.owned(name):
            if d.meta.role != "replica":
                continue
            r = lifecycle.get(d.name)
            replicas.append({"name": d.name, "host": d.host, "pmid": self.sched.pmid(d.host),
                             "replica_state": r.state if r else "unknown", "domain_state": d.state,
                             "warm": d.meta.warm, "vcpus": d.vcpus, "memory_mib": d.memory_mib,
                             "created": d.meta.created, "cpu": cpu.get(d.name, [])[-60:]})
        ov = self.store.scale_requests().get(name)
        policy = {"name": gc.policy, "cooldown_s": gc.cooldown_s, "warmup_s": gc.warmup_s}
        policy.update(vars({"threshold": gc.threshold, "target": gc.target, "concurrency": gc.concurrency}[gc.policy]))
        return {"name": name, "min": gc.min, "max": gc.max, "vcpus": gc.vcpus, "memory_mib": gc.memory_mib,
                "policy": policy, "replicas": replicas, "warm_pool": vars(gc.warm_pool),
                "desired_override": None if ov is None else {"replicas": ov[0], "ts": ov[1]}}

    def list(self) -> list[dict[str, Any]]:
        return [self.get(g) for g in self.cfg.groups]

    def scale(self, name: str, replicas: Any) -> dict[str, Any]:
        gc = self.config(name)
        if isinstance(replicas, bool) or not isinstance(replicas, int) or not gc.min <= replicas <= gc.max:
            raise Invalid(f"replicas must be an integer from {gc.min} to {gc.max} (the group's min and max)")
        self.store.request_scale(name, replicas)
        eid = self.store.add_event("scale_request", f"{replicas} replicas of {name} asked through the API; "
                                   "the autoscaler applies it on its next tick", group=name, data={"replicas": replicas})
        return {"group": name, "replicas": replicas, "event_id": eid, "pending": True}
