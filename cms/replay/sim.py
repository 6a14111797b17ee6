"""The replay's simulated clock: the daemon's own planner and policy, tick by tick, on a model.

Each tick does what ``Autoscaler.tick`` does, in its order, with the I/O replaced:

* what the executor's workers finished since the last tick happens first (a spawn is
  started ``spawn_s`` after its decision and ready ``boot_s`` later; an unpark is ready
  after the mode's unpark time; a drain ends when its in-flight work has, at most
  ``drain_s``; a park takes ``park_s``), each at its own time within the tick. A spawn or
  unpark decided within ``DRIFT_TICKS`` ticks of one the recording's group decided is that
  one (the replay does what the run did): it takes the recorded replica's own times
  (``Recorded.starts``), not the model's medians. The boot a replica really had decides
  when its warm-up ends and so when the policy's windows start again; a median boot a tick
  shorter than the real one lets a window fill a tick early, on figures the real policy
  never read together;
* measure: each ready replica's CPU goes into a ``cms.metrics.History`` as the daemon's
  figures do (a replica's first figure after it starts or unparks is none, as the daemon's
  rater has no baseline). Where the replay's group is the recorded one (as many ready
  replicas as the recording had at that moment, and at all but a few ticks of the policy's
  longest window and warm-up before it), the figures are the recorded ones
  (oldest replica to oldest replica; in flight too, where the store has every ready
  replica's /status figure), and so is the p95 latency (the load client's): the
  replay then sees what the daemon and the clients saw, host contention and noise
  included. Elsewhere (another group, or no recording) the model's queue
  (cms.replay.model) gives them: a group that had other capacity a moment ago has another
  backlog, which recorded figures would carry over;
* plan: ``cms.autoscaler.planner.plan`` over the tracked replicas (``Track``, moved only by
  ``Track.move``) and the domains they would be, with the group's policy
  (``cms.policy.decide``) asked as ``Autoscaler.decide`` asks it (``History.policy_series``,
  ``policy.Memory.input``);
* apply: the wanted count, and ``policy.Memory.remember`` (the cooldown clock, the target
  policy's recommendations, the panic state), as ``Autoscaler.apply``; then the plan's
  actions start their timers.

The History keeps only the samples the policy can read (its longest window), so a tick
costs the same on the first hour as on the last.
"""

from __future__ import annotations

import bisect
import collections
import dataclasses
import heapq
import math
from dataclasses import dataclass, field
from typing import Any, Callable

from cms import policy
from cms.autoscaler import planner as P
from cms.autoscaler.lifecycle import COUNTING, State, Track
from cms.config import GroupConfig
from cms.metrics import History
from cms.replay.inputs import ClientRecord, Recorded, RecordedStart, Start, Trace
from cms.replay.model import Model, Queue, TickLoad
from cms.virt import OwnedDomain, OwnerMeta

S = State
RUNNING = "running"
DOMAIN_STATE = {"paused": ("paused", 0), "saved": ("shutoff", 3), "stopped": ("shutoff", 0)}  # 3: SHUTOFF_SAVED
DRAIN_POLL_S = 0.2
DRIFT_TICKS = 3          # ticks of another ready count a replay may have had and still see the recording


@dataclass
class Run:
    """One setting's replay: per tick series and what it decided and did."""
    name: str
    t: list[float] = field(default_factory=list)
    offered: list[float] = field(default_factory=list)
    serving: list[int] = field(default_factory=list)
    ready: list[int] = field(default_factory=list)
    parked: list[int] = field(default_factory=list)
    running: list[int] = field(default_factory=list)
    cpu: list[float | None] = field(default_factory=list)
    in_flight: list[float] = field(default_factory=list)
    p95_s: list[float | None] = field(default_factory=list)
    decisions: list[dict[str, Any]] = field(default_factory=list)
    actions: collections.Counter = field(default_factory=collections.Counter)
    notes: list[str] = field(default_factory=list)
    recorded_ticks: int = 0          # ticks whose CPU figures were the recording's
    recorded_starts: int = 0         # spawns and unparks that took the recording's times


def history_ticks(gc: GroupConfig, tick_s: float) -> int:
    """Samples per replica the group's policy may read: its longest window, and two more."""
    return int(math.ceil(max(policy.reads_s(gc), tick_s) / tick_s)) + 2


class Sim:
    def __init__(self, group: str, gc: GroupConfig, model: Model, trace: Trace, start: Start, *,
                 tick_s: float = 1.0, drain_s: float = 3.0, history: int = 900, hosts: tuple[str, ...] = ("local",),
                 name: str = "", on_tick: Callable[[float, list[Track], TickLoad], None] | None = None,
                 recorded: Recorded | None = None, client: ClientRecord | None = None) -> None:
        self.rec = recorded
        self.settle_s = policy.reads_s(gc) + gc.warmup_s
        self.drift: collections.deque[float] = collections.deque()    # ticks whose group was not the recorded one
        self.client_t = [ts - recorded.start for ts, _c, _p in client.ticks] if client and recorded else []
        self.client_p95 = [p for _ts, _c, p in client.ticks] if client and recorded else []
        self.g, self.gc, self.m, self.trace = group, gc, model, trace
        self.on_tick = on_tick           # sees each tick's replicas and load as measured (tests record a run with it)
        self.dt = tick_s
        self.drain_s = drain_s
        self.hosts = hosts
        self.queue = Queue(model, gc.vcpus)
        self.history = History(min(history, history_ticks(gc, tick_s)))
        self.tracks: dict[str, Track] = {}
        self.timers: list[tuple[float, int, str, str]] = []
        self._seq = 0
        self.starts = list(recorded.starts) if recorded is not None else []   # not yet taken by a replayed start
        self.boot: dict[str, float] = {}        # a spawned replica's boot, when the recording's
        self.no_baseline: set[str] = set()
        self.left: dict[str, float] = {}        # replicas that stopped serving this tick: when
        self.desired: int | None = None
        self.memory = policy.Memory(last_action_at=start.last_action_at)
        self.now = 0.0
        self.last: float | None = None
        self.run = Run(name or gc.policy)
        self._domains: dict[tuple[str, str], OwnedDomain] = {}
        for n, ready_at in start.ready:
            self.tracks[n] = Track(n, group, ready_at, S.READY, host=hosts[0], ready_at=ready_at)
        for n, mode in start.parked:
            self.tracks[n] = Track(n, group, -1e9, S.PARKED, host=hosts[0], park_mode=mode)
        if self.tracks:
            self.desired = sum(1 for t in self.tracks.values() if t.state == S.READY)

    # -- the executor's workers, as timers ---------------------------------------------------

    def _after(self, seconds: float, name: str, step: str) -> None:
        self._seq += 1
        heapq.heappush(self.timers, (self.now + seconds, self._seq, name, step))

    def _advance(self, until: float) -> None:
        while self.timers and self.timers[0][0] <= until:
            at, _seq, name, step = heapq.heappop(self.timers)
            t = self.tracks.get(name)
            if t is not None:
                self._step(t, step, at)

    def _step(self, t: Track, step: str, at: float) -> None:
        saved, self.now = self.now, at
        if step == "started":
            t.move(S.WARMING if t.park_mode else S.STARTING)
            self.no_baseline.add(t.name)
            self._after(self.boot.pop(t.name, self.m.boot_s), t.name, "healthy")
        elif step == "healthy" and t.state == S.WARMING:
            t.move(S.PARKING)
            self._after(self.m.park_s, t.name, "parked")
        elif step in ("healthy", "unparked"):
            t.move(S.READY, now=at)
            t.busy = False
        elif step == "parked":
            t.move(S.PARKED)
            t.busy = False
        elif step == "drained":
            if t.park_mode:
                t.move(S.PARKING)
                self._after(self.m.park_s, t.name, "parked")
            else:
                del self.tracks[t.name]
                self.history.forget(t.name)
        self.now = saved

    def _new(self, warm: bool) -> Track:
        self._seq += 1
        name = f"{self.g}-sim{self._seq}"
        host = self.hosts[self._seq % len(self.hosts)]
        t = self.tracks[name] = Track(name, self.g, self.now, S.SPAWNING, host=host,
                                      park_mode=self.gc.warm_pool.state if warm else "", busy=True)
        got = None if warm else self._recorded_start("")
        if got is not None:
            self.boot[name] = got.ready_s
        self._after(self.m.spawn_s if got is None else got.spawn_s, name, "started")
        return t

    def _recorded_start(self, mode: str) -> RecordedStart | None:
        """The recording's start of this kind (cold: mode "") decided nearest to now, within
        DRIFT_TICKS ticks, not yet taken by another replayed start; taken."""
        near = [s for s in self.starts if s.mode == mode and abs(s.decided - self.now) <= DRIFT_TICKS * self.dt + 1e-6]
        if not near:
            return None
        got = min(near, key=lambda s: abs(s.decided - self.now))
        self.starts.remove(got)
        self.run.recorded_starts += 1
        return got

    def execute(self, plan: P.Plan, per_replica_latency: float, in_flight: float) -> None:
        for a in plan.actions:
            if isinstance(a, (P.Spawn, P.Refill)):
                warm = isinstance(a, P.Refill)
                self._new(warm)
                self.run.actions["refills" if warm else "spawns"] += 1
                continue
            t = self.tracks.get(getattr(a, "name", ""))
            if t is None or t.busy:
                continue
            if isinstance(a, P.Unpark) and t.state == S.PARKED:
                mode = t.park_mode
                t.move(S.UNPARKING)
                t.busy = True
                self.history.forget(t.name)
                self.no_baseline.add(t.name)
                got = self._recorded_start(mode)
                self._after(self.m.unpark(mode) if got is None else got.ready_s, t.name, "unparked")
                self.run.actions["unparks"] += 1
            elif isinstance(a, P.Drain) and t.state in (S.STARTING, S.READY):
                was_ready = t.state == S.READY
                t.move(S.DRAINING)
                t.park_mode, t.busy = a.park, True
                self.left[t.name] = self.now
                wait = min(self.drain_s, per_replica_latency) if was_ready and in_flight >= 0.5 else 0.0
                self._after(max(wait, DRAIN_POLL_S if was_ready else 0.0), t.name, "drained")
                self.run.actions["drains"] += 1
            elif isinstance(a, P.Discard) and t.state == S.PARKED:
                del self.tracks[t.name]
                self.run.actions["discards"] += 1
            else:
                self.run.notes.append(f"{self.now:.0f}s: {type(a).__name__} {a.reason} (not modelled)")

    # -- one tick ----------------------------------------------------------------------------

    def _domain(self, t: Track) -> OwnedDomain:
        mode = t.park_mode if t.state == S.PARKED else ""
        key = (t.name, mode)
        d = self._domains.get(key)
        if d is None:
            state, reason = DOMAIN_STATE.get(mode, (RUNNING, 0))
            d = self._domains[key] = OwnedDomain(t.host, t.name, t.name, state, self.gc.vcpus, self.gc.memory_mib,
                                                 OwnerMeta(group=self.g, created=t.created, warm=bool(t.park_mode)),
                                                 reason=reason)
        return d

    def _capacity(self, start: float, end: float) -> tuple[float, int]:
        """Replica-ticks ready within [start, end), and the replicas ready at its end."""
        cap, now_ready = 0.0, 0
        for t in self.tracks.values():
            if t.ready_at is None or (t.state != S.READY and t.name not in self.left):
                continue
            stop = end if t.state == S.READY else self.left[t.name]
            cap += max(0.0, stop - max(t.ready_at, start))
            now_ready += t.state == S.READY
        for name, at in self.left.items():
            if name not in self.tracks and at > start:
                cap += at - start   # removed during the tick: served until it left
        return cap / (end - start), now_ready

    def _recorded(self, now: float, ready: int) -> tuple[float | None, ...] | None:
        """The recording's ready replicas' CPU at ``now`` (its tick at that time), when the
        replay's group is the recorded one: as many ready replicas now, and at all but
        ``DRIFT_TICKS`` ticks of the last ``self.settle_s`` (a boot a little faster or slower
        than the real one is the same group; one that had other capacity for longer has
        another backlog, which the recorded figures would carry over)."""
        rec = self.rec
        if rec is None:
            return None
        i = bisect.bisect_left(rec.ticks, now - 1e-6)
        same = i < len(rec.ticks) and rec.ticks[i] <= now + 1e-6 and len(rec.replica_cpu[i]) == ready
        drift = self.drift
        if not same:
            drift.append(now)
        while drift and drift[0] < now - self.settle_s:
            drift.popleft()
        return rec.replica_cpu[i] if same and ready and len(drift) <= DRIFT_TICKS else None

    def _recorded_in_flight(self, now: float) -> tuple[float, ...] | None:
        """The recording's ready replicas' in-flight figures at ``now``, where it has one for
        each (a store written before the daemon polled /status has none: the model's)."""
        rec = self.rec
        assert rec is not None
        i = bisect.bisect_left(rec.ticks, now - 1e-6)
        got = rec.replica_in_flight[i] if i < len(rec.replica_in_flight) else ()
        return got if got and all(v is not None for v in got) else None  # type: ignore[return-value]

    def decide(self, _g: str, members: tuple[Track, ...]) -> policy.Decision:
        """As Autoscaler.decide: the policy over the ready members' history and the memory."""
        ready = [(t.name, t.ready_at) for t in members if t.state == S.READY]
        inp = self.memory.input(self.now, len(members), len(members) - len(ready), self.history.policy_series(ready))
        return policy.decide(self.gc, inp)

    def tick(self, now: float) -> None:
        self._advance(now)
        self.now = now
        dt = now - self.last if self.last is not None else self.dt
        self.last = now
        capacity, ready_n = self._capacity(now - dt, now)
        self.left.clear()
        rate = self.trace.rate_at(now - dt / 2)
        load = self.queue.step(dt, rate, capacity, ready_n)
        ready = sorted((t for t in self.tracks.values() if t.state == S.READY), key=lambda t: (t.ready_at, t.name))
        seen = self._recorded(now, len(ready))
        figures = dict(zip((t.name for t in ready), seen)) if seen is not None else {}
        flight = self._recorded_in_flight(now) if seen is not None else None
        in_flight = dict(zip((t.name for t in ready), flight)) if flight is not None else {}
        for t in self.tracks.values():
            if t.state in (S.READY, S.STARTING, S.UNPARKING):
                fresh = t.name in self.no_baseline
                self.no_baseline.discard(t.name)
                cpu = figures.get(t.name, load.cpu) if t.state == S.READY else self.m.cpu_idle
                self.history.add(t.name, now, None if fresh else cpu)
                if t.state == S.READY:
                    self.history.add_load(t.name, now, in_flight.get(t.name, load.in_flight), load.p95_s)
        if seen is not None:
            self.run.recorded_ticks += 1
            vals = [v for v in seen if v is not None]
            load = dataclasses.replace(load, cpu=sum(vals) / len(vals) if vals else None)
            i = bisect.bisect_left(self.client_t, now - dt / 2)
            if i < len(self.client_t) and self.client_t[i] <= now + dt / 2 and self.client_p95[i] is not None:
                load = dataclasses.replace(load, p95_s=self.client_p95[i])
        self._record(now, rate, load)         # as measured, as the daemon's samples are
        if self.on_tick is not None:
            self.on_tick(now, list(self.tracks.values()), load)
        observed = {t.name: self._domain(t) for t in self.tracks.values() if t.state != S.SPAWNING}
        desired = {self.g: self.desired} if self.desired is not None else {}
        view = P.View({self.g: self.gc}, observed, tuple(self.tracks.values()), desired,
                      hosts=frozenset(self.hosts))
        plan = P.plan(view, self.decide)
        gd = plan.groups[self.g]
        d = gd.decision
        if d is not None:
            self.memory.remember(self.gc, d, now)
            if d.action != policy.NONE:
                self.run.decisions.append({"t": round(now, 3), "action": d.action, "from": gd.current,
                                           "desired": d.desired, "reason": d.reason})
        self.desired = gd.desired
        latency = load.p95_s if load.p95_s is not None else self.m.service_s
        self.execute(plan, latency, load.in_flight)

    def _record(self, now: float, rate: float, load: Any) -> None:
        r = self.run
        counts = collections.Counter(t.state for t in self.tracks.values())
        r.t.append(now)
        r.offered.append(rate)
        r.serving.append(sum(counts[s] for s in COUNTING))
        r.ready.append(counts[S.READY])
        r.parked.append(counts[S.PARKED])
        r.running.append(len(self.tracks) - counts[S.PARKED])
        r.cpu.append(load.cpu)
        r.in_flight.append(load.in_flight)
        r.p95_s.append(load.p95_s if load.served > 0 or load.backlog <= 0 else math.inf)

    def replay(self) -> Run:
        for now in self.clock():
            self.tick(now)
        return self.run

    def clock(self) -> list[float]:
        """The ticks: the recording's own (the daemon's ticks drift from tick_s, and which
        samples a window holds depends on them), then every tick_s to the trace's end."""
        end = self.trace.end
        ticks = [t for t in self.rec.ticks if 0 < t <= end + 1e-9] if self.rec is not None else []
        t = ticks[-1] if ticks else 0.0
        n = int((end - t) / self.dt + 1e-9)
        return ticks + [t + k * self.dt for k in range(1, n + 1)]
