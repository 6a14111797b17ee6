"""The daemon's status snapshot: plain data, rebuilt at the end of every tick.

``Autoscaler.status()`` returns the last one; reading it costs no libvirt call and takes no
lock, so an exporter or the API may read it as often as they like. Shape::

    {"ts": 1763700000.2, "tick": {"seq": 812, "duration_s": 0.031, "overruns": 0, "tick_s": 1.0},
     "feed_seq": 57,
     "groups": {"web": {
         "desired": 2, "min": 1, "max": 3, "serving": 2,
         "replicas": [{"name": "cms-web-19a…", "state": "ready", "host": "local",
                       "address": "127.0.0.1", "port": 20001, "cpu": 0.41,
                       "in_flight": 1.7, "p95_s": 0.42,              # the tick's /status poll
                       "latency": {"bounds_s": […], "buckets": […], "sum_s": …}}, …],
         "last_decision": {"ts": …, "action": "scale_out", "desired": 2, "reason": "cpu mean …"},
         "policy": {"name": "threshold", "mean": 0.43, "high": 0.75, "low": 0.25, …},
         "warm_pool": {"size": 1, "state": "paused", "target": 1,
                       "members": [{"name": …, "state": "parked", "mode": "paused", "host": …}]}}},
     "hosts": {"local": {"state": "up", "up": true, "cpu": 0.52, "cpus": 2, "vms": 3, "vcpus": 3,
                         "memory_mib": 24000, "used_memory_mib": 1536, "free_memory_mib": 20100}}}
"""

from __future__ import annotations

from dataclasses import asdict
from typing import Any, Mapping

from cms import policy
from cms.autoscaler import planner
from cms.autoscaler.lifecycle import Track
from cms.config import GroupConfig
from cms.histogram import Counters, Figures
from cms.metrics import Tick
from cms.scheduler import held_mib
from cms.store import HostSample, Sample
from cms.virt import Capacity, Listing


def build(*, now: float, groups: Mapping[str, GroupConfig], tracks: tuple[Track, ...], desired: Mapping[str, int],
          decisions: Mapping[str, tuple[float, policy.Decision]], tick: Tick | None, listing: Listing | None,
          capacities: Mapping[str, Capacity], tick_info: dict[str, Any], feed_seq: int,
          hosts: tuple[str, ...], load: Mapping[str, Figures] | None = None,
          latency: Mapping[str, Counters] | None = None,
          host_states: Mapping[str, str] | None = None, samples: tuple[Sample, ...] = (),
          host_samples: tuple[HostSample, ...] = ()) -> dict[str, Any]:
    """``host_states``: each host's state (cms.autoscaler.hoststate); a host's ``up`` is its
    state being up (without states: that it answered the last listing). ``samples`` and
    ``host_samples``: the tick's, for the exporter's per-domain and node figures."""
    cpu = {m.name: m.cpu for m in tick.domains.values()} if tick else {}
    figures = _load(load or {}, latency or {})
    out_groups: dict[str, Any] = {}
    for g, gc in groups.items():
        members = sorted((t for t in tracks if t.group == g), key=lambda t: (t.created, t.name))
        pool = [t for t in members if planner.role(t, t.state) == "pool"]
        serving = [t for t in members if t not in pool]
        want = desired.get(g, policy.clamp(gc, sum(1 for t in serving if planner.role(t, t.state) == "serving")))
        last = decisions.get(g)
        pol: dict[str, Any] = {"name": gc.policy, "mean": None, "cooldown_s": gc.cooldown_s, "warmup_s": gc.warmup_s}
        pol.update(asdict(getattr(gc, gc.policy)))
        if last is not None:
            pol["mean"] = last[1].mean
        out_groups[g] = {
            "desired": want, "min": gc.min, "max": gc.max,
            "serving": sum(1 for t in serving if planner.role(t, t.state) == "serving"),
            "replicas": [{**_replica(t, cpu), **figures.get(t.name, {})} for t in serving],
            "last_decision": None if last is None else {
                "ts": last[0], "action": last[1].action, "desired": last[1].desired, "reason": last[1].reason},
            "policy": pol,
            "warm_pool": {
                "size": gc.warm_pool.size, "state": gc.warm_pool.state,
                "reuse_on_scale_in": gc.warm_pool.reuse_on_scale_in,
                "target": planner.pool_target(gc, want) if gc.warm_pool.size else 0,
                "members": [{**_replica(t, cpu), "mode": t.park_mode} for t in pool]},
        }
    out_hosts: dict[str, Any] = {}
    for h in hosts:
        answered = listing is not None and h not in listing.down
        state = (host_states or {}).get(h, "up" if answered else "down")
        up = state == "up"
        doms = (listing.domains.get(h) or []) if listing is not None and answered else []
        cap = capacities.get(h)
        hm = tick.hosts.get(h) if tick else None
        running = [d for d in doms if d.alive]
        node = next((s.node_cpu for s in host_samples if s.host == h), None)
        out_hosts[h] = {
            "state": state, "up": up, "cpu": hm.cpu if hm else None, "node_cpu": node,
            "cpus": hm.cpus if hm else (cap.cpus if cap else None),
            "vms": len(running), "defined": len(doms), "vcpus": sum(d.vcpus for d in running),
            "memory_mib": cap.memory_mib if cap else None,
            "used_memory_mib": sum(held_mib(d, now) for d in running),   # what the guests hold
            "free_memory_mib": cap.free_memory_mib if cap else None,
        }
    domains = [{"name": s.domain, "host": s.host, "group": s.group, "cpu": s.cpu, "vcpus": s.vcpus,
                "memory_kib": s.memory_kib, "state": s.state, "vcpu": list(s.vcpu)} for s in samples]
    return {"ts": now, "tick": dict(tick_info), "feed_seq": feed_seq, "groups": out_groups, "hosts": out_hosts,
            "domains": domains}


def _replica(t: Track, cpu: Mapping[str, float | None]) -> dict[str, Any]:
    return {"name": t.name, "state": str(t.state), "host": t.host, "address": t.address, "port": t.port,
            "cpu": cpu.get(t.name), "created": t.created, "ready_at": t.ready_at}


def _load(load: Mapping[str, Figures], latency: Mapping[str, Counters]) -> dict[str, dict[str, Any]]:
    """Per replica: the last tick's mean in flight and p95 (its /status poll), and its guest
    server's cumulative latency histogram (the exporter's)."""
    out: dict[str, dict[str, Any]] = {}
    for name, f in load.items():
        out[name] = {"in_flight": round(f.in_flight, 3), "p95_s": f.p95_s}
    for name, c in latency.items():
        out.setdefault(name, {})["latency"] = {"bounds_s": list(c.bounds_s), "buckets": list(c.buckets),
                                               "sum_s": c.sum_s}
    return out

