"""Monitoring: per-domain and per-host CPU utilization from libvirt's counters.

Utilization of a domain over one tick is ``Δcpu.time / (Δwall × vCPUs)``: ``cpu.time`` is
the nanoseconds of host CPU the whole QEMU process (vCPU threads, I/O threads, emulator)
spent, so 1.0 means "as busy as all its vCPUs could be". Δwall comes from
``time.monotonic()``. A counter that went backwards (the domain restarted) is a reset: no
figure that tick, and the next tick starts from the new value.

The arithmetic is in plain functions over plain data so tests feed it series; the libvirt
source does ONE ``host.stats.bulk_stats`` call per host per tick over the owned domains.
"""

from __future__ import annotations

import collections
import logging
import time
from dataclasses import dataclass, field
from typing import Any, Iterable, Mapping, Protocol, Sequence

from cms import errors, policy
from cms.store import Sample
from cms.virt import Fleet, OwnedDomain

log = logging.getLogger(__name__)


# --- the arithmetic ------------------------------------------------------------------------

def utilization(prev_ns: int | None, cur_ns: int | None, dwall_s: float, vcpus: int) -> float | None:
    """Δcpu / (Δwall × vCPUs); None for no baseline, a reset, or a zero interval."""
    if prev_ns is None or cur_ns is None or dwall_s <= 0 or vcpus <= 0 or cur_ns < prev_ns:
        return None
    return (cur_ns - prev_ns) / (dwall_s * 1e9 * vcpus)


def per_vcpu(prev: dict[int, int], cur: dict[int, int], dwall_s: float) -> dict[int, float | None]:
    """Each vCPU's busy fraction from its ``vcpu.N.time`` counter."""
    return {i: utilization(prev.get(i), ns, dwall_s, 1) for i, ns in sorted(cur.items())}


def node_utilization(prev: tuple[int, int] | None, cur: tuple[int, int] | None) -> float | None:
    """The node's busy share between two (busy ns, total ns) readings of virNodeGetCPUStats;
    None for no baseline, a reset or no time passed."""
    if prev is None or cur is None or cur[1] <= prev[1] or cur[0] < prev[0]:
        return None
    return min(1.0, (cur[0] - prev[0]) / (cur[1] - prev[1]))


def host_utilization(domain_dcpu_ns: Iterable[int], dwall_s: float, host_cpus: int) -> float | None:
    """The host's CPU taken by these domains: ΣΔcpu / (Δwall × host CPUs).

    Used instead of the node's own CPU counters, which are unreliable under cgroup v2.
    """
    if dwall_s <= 0 or host_cpus <= 0:
        return None
    return sum(domain_dcpu_ns) / (dwall_s * 1e9 * host_cpus)


@dataclass(frozen=True)
class Raw:
    """The counters read for one domain at one instant."""
    cpu_ns: int | None
    vcpu_ns: dict[int, int]
    vcpus: int
    memory_kib: int
    state: int | None


def parse_stats(stats: dict[str, Any], vcpus_fallback: int = 1) -> Raw:
    """libvirt's flat getAllDomainStats record into Raw."""
    get = stats.get
    n = int(get("vcpu.maximum") or get("vcpu.current") or 0)
    vcpu_ns = {}
    for i in range(n):
        v = get(f"vcpu.{i}.time")
        if v is not None:
            vcpu_ns[i] = int(v)
    cpu = get("cpu.time")
    return Raw(cpu_ns=None if cpu is None else int(cpu), vcpu_ns=vcpu_ns,
               vcpus=int(get("vcpu.current") or vcpus_fallback or 1),
               memory_kib=int(get("balloon.current") or 0), state=get("state.state"))


@dataclass(frozen=True)
class DomainMetrics:
    uuid: str
    name: str
    host: str
    cpu: float | None              # 0..1 of its vCPUs; None: no figure this tick
    vcpu: dict[int, float | None]
    vcpus: int
    memory_kib: int
    state: int | None
    dcpu_ns: int = 0               # this tick's Δcpu.time (for the host figure)


@dataclass(frozen=True)
class HostMetrics:
    host: str
    cpu: float | None              # share of the host's CPUs the sampled domains took
    cpus: int
    ok: bool = True                # False: the host did not answer this tick


@dataclass(frozen=True)
class Tick:
    ts: float                      # wall clock (time.time()) of the tick, shared by every sample
    domains: dict[str, DomainMetrics] = field(default_factory=dict)   # by UUID
    hosts: dict[str, HostMetrics] = field(default_factory=dict)


class Rater:
    """Turns successive Raw readings into DomainMetrics; remembers the previous reading."""

    def __init__(self) -> None:
        self._prev: dict[str, tuple[float, Raw]] = {}

    def rate(self, uuid: str, name: str, host: str, mono: float, raw: Raw) -> DomainMetrics:
        prev = self._prev.get(uuid)
        self._prev[uuid] = (mono, raw)
        cpu = None
        vcpu: dict[int, float | None] = {i: None for i in raw.vcpu_ns}
        dcpu = 0
        if prev is not None:
            pmono, praw = prev
            dwall = mono - pmono
            cpu = utilization(praw.cpu_ns, raw.cpu_ns, dwall, raw.vcpus)
            vcpu = per_vcpu(praw.vcpu_ns, raw.vcpu_ns, dwall)
            if cpu is not None:
                dcpu = int(raw.cpu_ns or 0) - int(praw.cpu_ns or 0)
        return DomainMetrics(uuid, name, host, cpu, vcpu, raw.vcpus, raw.memory_kib, raw.state, dcpu)

    def forget(self, uuid: str) -> None:
        """Drop a domain's baseline: its next reading starts a new series (no figure that tick)."""
        self._prev.pop(uuid, None)

    def forget_except(self, uuids: set[str]) -> None:
        for u in list(self._prev):
            if u not in uuids:
                del self._prev[u]


# --- sources -------------------------------------------------------------------------------

class MetricSource(Protocol):
    def sample(self, domains: Sequence[OwnedDomain]) -> Tick:
        """One tick's figures for these domains (those it could not read are left out)."""


def restart_baseline(source: object, uuid: str) -> None:
    """After a resume the CPU counter's last reading predates the pause: drop it, so the first
    figure after the resume is no figure at all rather than a dip (paused time counted as idle)
    or a spike. Sources without baselines (test fakes) are left alone."""
    rater = getattr(source, "rater", None)
    if isinstance(rater, Rater):
        rater.forget(uuid)


class LibvirtMetrics:
    """CPU, vCPU, memory and state through cms.virt: one bulk_stats call per host per tick."""

    def __init__(self, fleet: Fleet, clock=time.monotonic, wall=time.time) -> None:
        self.fleet = fleet
        self.clock = clock
        self.wall = wall
        self.rater = Rater()
        self._host_prev: dict[str, float] = {}
        self._node_prev: dict[str, tuple[int, int]] = {}

    def node_cpu(self, hosts: Iterable[str]) -> dict[str, float | None]:
        """Each host's own busy share since the last call (virNodeGetCPUStats, one call per
        host); None where libvirt has no node figures or there is no baseline yet. Hosts that
        share one kernel (the lab's) all report that kernel's figure."""
        out: dict[str, float | None] = {}
        hosts = list(hosts)
        got, _silent = self.fleet.per_host(lambda host: host.node_cpu_times(), hosts)   # never waits on one host
        for h in hosts:
            cur = got.get(h)
            out[h] = node_utilization(self._node_prev.get(h), cur)
            if cur is None:
                self._node_prev.pop(h, None)
            else:
                self._node_prev[h] = cur
        return out

    def sample(self, domains: Sequence[OwnedDomain]) -> Tick:
        by_host: dict[str, list[OwnedDomain]] = collections.defaultdict(list)
        for d in domains:
            by_host[d.host].append(d)
        tick = Tick(ts=self.wall())
        for host, doms in by_host.items():
            try:
                if self.clock is time.monotonic and all(d.stats_at for d in doms):
                    # The listing that produced these domains already read their stats in
                    # its one bulk call (stamped on time.monotonic, so only with that clock;
                    # tests that inject a clock get a call of their own below).
                    stats = {d.uuid: d.stats for d in doms}
                    mono = min(d.stats_at for d in doms)
                else:
                    before = self.clock()
                    stats = self.fleet.host(host).stats.bulk_stats({d.uuid for d in doms})
                    mono = (before + self.clock()) / 2  # libvirt read the counters somewhere in between
                cpus = self.fleet.host_cpus(host)   # what a host's load is counted against
            except errors.VirtError as exc:
                log.warning("no stats from host %s this tick: %s", host, exc)
                tick.hosts[host] = HostMetrics(host, None, self.fleet.host_cpus(host, ask=False), ok=False)
                continue
            dcpus = []
            for d in doms:
                rec = stats.get(d.uuid)
                if rec is None:
                    continue
                m = self.rater.rate(d.uuid, d.name, host, mono, parse_stats(rec, d.vcpus))
                tick.domains[d.uuid] = m
                if m.cpu is not None:
                    dcpus.append(m.dcpu_ns)
            prev = self._host_prev.get(host)
            self._host_prev[host] = mono
            tick.hosts[host] = HostMetrics(
                host, host_utilization(dcpus, mono - prev, cpus) if prev is not None and dcpus else None, cpus)
        self.rater.forget_except({d.uuid for d in domains})
        return tick


# --- history -------------------------------------------------------------------------------

class History:
    """Bounded series per domain name, in memory: one point a tick of its CPU (``add``) and,
    for a ready replica whose /status was polled, of its mean requests in flight and p95
    latency (``add_load``; cms.histogram makes them). ``kind`` picks the series."""

    KINDS = ("cpu", "in_flight", "p95")

    def __init__(self, maxlen: int) -> None:
        self.maxlen = maxlen
        self._kinds: dict[str, dict[str, collections.deque[tuple[float, float | None]]]] = {k: {} for k in self.KINDS}

    def _append(self, kind: str, name: str, ts: float, value: float | None) -> None:
        s = self._kinds[kind].get(name)
        if s is None:
            s = self._kinds[kind][name] = collections.deque(maxlen=self.maxlen)
        s.append((ts, value))

    def add(self, name: str, ts: float, cpu: float | None) -> None:
        self._append("cpu", name, ts, cpu)

    def add_load(self, name: str, ts: float, in_flight: float | None, p95: float | None) -> None:
        self._append("in_flight", name, ts, in_flight)
        self._append("p95", name, ts, p95)

    def series(self, name: str, since: float | None = None, kind: str = "cpu") -> tuple[tuple[float, float | None], ...]:
        s = self._kinds[kind].get(name, ())
        return tuple(s) if since is None else tuple(p for p in s if p[0] >= since)

    def policy_series(self, ready: Iterable[tuple[str, float | None]]) -> tuple[policy.ReplicaSeries, ...]:
        """What the group policy reads of these (name, ready_at) replicas: every series."""
        return tuple(policy.ReplicaSeries(n, at, self.series(n), self.series(n, kind="in_flight"),
                                          self.series(n, kind="p95")) for n, at in ready)

    def forget(self, name: str) -> None:
        for series in self._kinds.values():
            series.pop(name, None)

    def names(self) -> list[str]:
        return list(self._kinds["cpu"])


def to_samples(tick: Tick, domains: Sequence[OwnedDomain], states: dict[str, str],
               load: Mapping[str, Any] | None = None) -> list[Sample]:
    """The store rows of one tick: one per domain, with its figures when the tick has them.

    ``states`` maps a domain's name to the state to record (the replica's lifecycle state);
    a domain not in it is recorded with libvirt's domain state. ``load`` maps a replica's
    name to its /status figures this tick (cms.histogram.Figures: in_flight, rate, p95_s).
    Memory is in the type's terms: the balloon's size less the guest kernel's share (as
    OwnedDomain.memory_mib)."""
    rows = []
    load = load or {}
    for d in domains:
        m = tick.domains.get(d.uuid)
        f = load.get(d.name)
        rows.append(Sample(tick.ts, d.host, d.name, d.meta.group, m.cpu if m else None,
                           m.vcpus if m else d.vcpus,
                           max(0, m.memory_kib - d.meta.kernel_mib * 1024) if m else d.memory_mib * 1024,
                           states.get(d.name, d.state),
                           tuple(v for _i, v in sorted(m.vcpu.items())) if m else (),
                           f.in_flight if f else None, f.rate if f else None, f.p95_s if f else None))
    return rows
