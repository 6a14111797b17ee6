"""The replica lifecycle: its states and the transitions allowed between them, in one place.

Serving path (what clients see; PUBLISHED gives the state announced for each)::

    SPAWNING ──> STARTING ──> READY ──> DRAINING ──> (removed)
        │            │          │           │
        └──(gone)    └──────────┴───────────┴──> FAILED ──> (removed)

Warm pool (issue 13; never announced, never counted by the policy)::

    WARMING ──> PARKING ──> PARKED(paused | saved | stopped) ──> UNPARKING ──> READY
                   ^                                                 │
    READY/DRAINING─┘ (reuse_on_scale_in)                             └──> FAILED

* SPAWNING: the name is reserved and the domain is being cloned, defined and started.
* STARTING: the domain runs and is announced ("added"); cms waits for /health.
* READY: /health answered; announced ready; clients use it; the policy counts its CPU.
* DRAINING: announced draining; in-flight work gets ``drain_s``; then removed or parked.
* FAILED: announced failed (when it was announced at all); removed next.
* WARMING: a warm-pool member booting to /health (spawned tagged warm in its metadata).
* PARKING: being suspended / managed-saved / shut down.
* PARKED: parked in the pool's state, waiting for a scale-out or a replacement.
* UNPARKING: being resumed / restored / started, then probed at once and every 25 ms
  (cms.autoscaler.health.UNPARK_PROBE_S).
* LOST: its host is down (cms.autoscaler.hoststate): announced failed, then removed, at
  once; its domain may still run behind a partition, so it is kept, never counted nor
  adopted again, until the host answers and is fenced (its domain destroyed); then forgotten.
  Any state may end here.

A replica's ``park_mode`` says where it goes in the pool: a warm spawn is SPAWNING with
it set (then WARMING), a replica drained for reuse_on_scale_in is DRAINING with it set;
both already count as pool members (cms.autoscaler.planner.role), not as serving ones.

``Track`` is the daemon's record of one replica; ``Track.move`` is the only way its state
changes, and it refuses a transition not listed in TRANSITIONS. Only the replica registry
(cms.autoscaler.registry) calls it, under its lock.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field

from cms.messages import STATES, Replica


class State(str, enum.Enum):
    SPAWNING = "spawning"
    STARTING = "starting"
    READY = "ready"
    DRAINING = "draining"
    FAILED = "failed"
    WARMING = "warming"
    PARKING = "parking"
    PARKED = "parked"
    UNPARKING = "unparking"
    LOST = "lost"

    def __str__(self) -> str:
        return self.value


S = State

TRANSITIONS: dict[State, frozenset[State]] = {
    S.SPAWNING: frozenset({S.STARTING, S.WARMING, S.FAILED, S.LOST}),
    S.STARTING: frozenset({S.READY, S.DRAINING, S.FAILED, S.LOST}),
    S.READY: frozenset({S.DRAINING, S.FAILED, S.PARKING, S.LOST}),
    S.DRAINING: frozenset({S.FAILED, S.PARKING, S.LOST}),
    S.FAILED: frozenset({S.LOST}),
    S.WARMING: frozenset({S.PARKING, S.FAILED, S.LOST}),
    S.PARKING: frozenset({S.PARKED, S.FAILED, S.LOST}),
    S.PARKED: frozenset({S.UNPARKING, S.PARKING, S.FAILED, S.LOST}),
    S.UNPARKING: frozenset({S.READY, S.FAILED, S.LOST}),
    S.LOST: frozenset(),
}

# The replica count the policy sees: what serves or is about to.
COUNTING = frozenset({S.SPAWNING, S.STARTING, S.READY, S.UNPARKING})
# Members of the warm pool: capacity held back, never announced.
WARM = frozenset({S.WARMING, S.PARKING, S.PARKED})
# The state a subscriber is told, for states that are announced at all: those of the
# lifecycle that carry a published name (cms.messages.STATES, from its event table).
PUBLISHED = {s: s.value for s in State if s.value in STATES}
PARK_MODES = ("paused", "saved", "stopped")


class IllegalTransition(RuntimeError):
    """A bug: some code tried a move the lifecycle does not allow."""


def allowed(src: State, dst: State) -> bool:
    return dst in TRANSITIONS[src]


@dataclass
class Track:
    """What the daemon knows about one replica."""
    name: str
    group: str
    created: float
    state: State = S.SPAWNING
    host: str = ""
    uuid: str = ""
    address: str = ""
    port: int = 0
    ready_at: float | None = None
    fails: int = 0
    busy: bool = False                  # a worker owns it now
    checking: bool = False              # a health check is in flight
    announced: bool = False             # subscribers know it (so its end is announced too)
    park_mode: str = ""                 # paused | saved | stopped while in the pool
    resumed_at: float | None = None     # wall clock of its last unpark (the CPU figure restarts there)
    timings: dict[str, float] = field(default_factory=dict)

    def move(self, dst: State, now: float | None = None) -> None:
        """Into ``dst``, with what entering it means: READY starts the warm-up clock at ``now``
        and clears the failure count and the pool mode; PARKED stops that clock."""
        if not allowed(self.state, dst):
            raise IllegalTransition(f"{self.name}: {self.state} -> {dst} is not a lifecycle transition")
        self.state = dst
        if dst == S.READY:
            self.ready_at, self.fails, self.park_mode = now, 0, ""
        elif dst == S.PARKED:
            self.ready_at = None

    @property
    def warm(self) -> bool:
        return self.state in WARM

    def replica(self, state: str | None = None) -> Replica:
        return Replica(self.name, self.group, self.host, self.address, self.port,
                       state or PUBLISHED.get(self.state, str(self.state)), self.created)
