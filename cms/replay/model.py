"""The replay's model of a group under load: how fast replicas come, and what they feel.

Pure: plain numbers in, plain numbers out, no clock. Every figure has a default (measured on
this project's machines, README) and is fitted from a recorded run where the run holds it
(cms.replay.fit); ``[model]`` in the settings file overrides any of them.

The load is a fluid queue shared by the ready replicas (the load client spreads it):

* a request costs ``service_s`` vCPU-seconds; a replica with v vCPUs completes at most
  v / service_s requests a second, and one ready for part of a tick counts for that part;
* what arrives and cannot be served waits (the backlog, in the client or the guests) and is
  served first when capacity comes;
* a ready replica's CPU is ``cpu_idle + (cpu_busy - cpu_idle) x utilization``, the same on
  every ready replica (the work is shared);
* requests in the system are the backlog plus, per vCPU, rho / (1 - rho) (processor sharing,
  rho capped at RHO_CAP): Little's law gives the mean latency, and p95 is the backlog's wait
  plus ``p95_factor`` x the processor-sharing time ``service_s / (1 - rho)``;
* the guests hold at most ``conns_per_replica`` of those in flight each when the load
  client caps its connections (cms-loadgen --max-conns); the rest wait in the client.
"""

from __future__ import annotations

from dataclasses import dataclass, field

RHO_CAP = 0.95

# Measured on a 2-core TCG machine (README: warm pools, cms-demo): decision -> ready.
DEFAULT_SPAWN_S = 0.5          # decision -> started (clone, define, start)
DEFAULT_BOOT_S = 7.1           # started -> /health
DEFAULT_UNPARK_S = {"paused": 0.04, "saved": 1.14, "stopped": 6.85}
DEFAULT_PARK_S = 0.1


@dataclass(frozen=True)
class Model:
    service_s: float = 0.1                   # vCPU-seconds one request costs
    cpu_idle: float = 0.02                   # a ready replica's CPU with no load (0..1 of its vCPUs)
    cpu_busy: float = 0.98                   # and saturated
    spawn_s: float = DEFAULT_SPAWN_S
    boot_s: float = DEFAULT_BOOT_S
    unpark_s: dict[str, float] = field(default_factory=lambda: dict(DEFAULT_UNPARK_S))
    park_s: float = DEFAULT_PARK_S
    p95_factor: float = 2.0
    conns_per_replica: int = 0               # 0: the client does not cap what a guest holds
    fitted: dict[str, str] = field(default_factory=dict, compare=False)   # figure -> where it came from

    def unpark(self, mode: str) -> float:
        return self.unpark_s.get(mode, DEFAULT_UNPARK_S.get(mode, DEFAULT_UNPARK_S["stopped"]))


@dataclass(frozen=True)
class TickLoad:
    """What the ready replicas felt over one tick."""
    served: float                  # requests completed
    utilization: float | None      # share of the tick's capacity used; None: nothing was ready
    cpu: float | None              # each ready replica's CPU figure
    in_flight: float               # mean requests in flight per ready replica (at the guests)
    p95_s: float | None            # None: nothing completed
    backlog: float                 # requests waiting at the end of the tick


class Queue:
    """The group's fluid queue, advanced one tick at a time."""

    def __init__(self, model: Model, vcpus: int) -> None:
        self.m = model
        self.vcpus = vcpus
        self.per_replica = vcpus / model.service_s       # requests a second one ready replica completes
        self.backlog = 0.0

    def step(self, dt: float, rate: float, ready: float, serving_end: int) -> TickLoad:
        """One tick of ``dt`` s: ``rate`` requests/s offered, ``ready`` replica-ticks of capacity
        (a replica ready for half the tick counts 0.5), ``serving_end`` ready at the tick's end."""
        m = self.m
        capacity = ready * self.per_replica * dt
        waiting = self.backlog + rate * dt
        served = min(waiting, capacity)
        self.backlog = waiting - served
        if capacity <= 0:
            return TickLoad(0.0, None, None, 0.0, None, self.backlog)
        rho = served / capacity
        cpu = m.cpu_idle + (m.cpu_busy - m.cpu_idle) * rho
        n = max(serving_end, 1)
        r = min(rho, RHO_CAP)
        sharing = r / (1.0 - r) * self.vcpus          # in service per replica (processor sharing)
        in_system = self.backlog / n + sharing
        if m.conns_per_replica:
            in_system = min(in_system, m.conns_per_replica)
        wait = self.backlog / (n * self.per_replica)
        p95 = wait + m.p95_factor * m.service_s / (1.0 - r) if served > 0 else None
        return TickLoad(served, rho, cpu, in_system, p95, self.backlog)
