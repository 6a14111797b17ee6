"""The reconcile loop's planner: pure. What exists and what is wanted in, actions out.

``plan`` takes one tick's view (the replica domains libvirt listed, the daemon's tracked
replicas, the wanted counts, the lifecycle events seen) and the group policy, and returns
a ``Plan``: the actions to take, each with its reason, and the decisions made. It does no
I/O and changes nothing; ``cms.autoscaler.executor`` performs the actions (the warm pool's
through the handlers cms.autoscaler.warm plugs into it).

The steps, in order:
 1. adopt or clean what libvirt has and the daemon does not track (all of it on the first
    tick after a start: the restart path);
 2. compare each tracked replica with its domain: a vanished or dead domain fails it (not
    while a worker holds it: a spawn, a park or a live migration ends it either way); a
    removal that did not finish is finished; a parked warm replica found running is parked
    again, one destroyed from outside is forgotten (the pool refill replaces it);
 3. per group: the policy decides when the count equals the wanted count; a gap is closed
    by unparking warm replicas first, then cold spawns; a surplus is drained (newest first
    by default), and parked back into the warm pool when ``reuse_on_scale_in`` wants it;
 4. per group with a warm pool: refill it, one boot at a time per host, never letting
    serving plus warm exceed ``max``.

It acts on what answers (issue 20): the view carries every host's state
(cms.autoscaler.hoststate). A replica on a SUSPECT host keeps its state (nothing is replaced
on one miss) and its group holds scale-in; one on a DOWN or FENCING host is lost (``Lose``)
and its group's gap is closed on the hosts that are up; nothing is placed, unparked or
adopted on a host that is not up.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Mapping

from cms import policy
from cms.autoscaler.hoststate import LOST, PLACEABLE, HostState
from cms.autoscaler.lifecycle import COUNTING, WARM, State, Track
from cms.config import GroupConfig
from cms.hostplan import consolidate_order
from cms.virt import Listing, OwnedDomain

S = State


# --- the actions ----------------------------------------------------------------------------

@dataclass(frozen=True)
class Action:
    reason: str


@dataclass(frozen=True)
class DomainAction(Action):
    """An action on a domain found in libvirt that no replica tracks yet."""
    domain: OwnedDomain


@dataclass(frozen=True)
class ReplicaAction(Action):
    """An action on a tracked replica, by its domain name."""
    name: str


class Adopt(DomainAction):
    """An untracked running replica: track it as starting, announce it, check its health."""


@dataclass(frozen=True)
class AdoptWarm(DomainAction):
    """An untracked warm-pool member: track it parked (as found), or park it again."""
    mode: str            # paused | saved | stopped: how it is parked now; "" = running: park it


class Cleanup(DomainAction):
    """A leftover domain of ours, not running, found at start: remove it quietly."""


@dataclass(frozen=True)
class CleanOrphanVolumes(Action):
    """Delete volumes of our groups whose domain does not exist."""
    groups: tuple[str, ...]
    keep: frozenset[str]


@dataclass(frozen=True)
class Fail(ReplicaAction):
    """Announce it failed at once; then remove it (remove=False: its domain is gone already)."""
    remove: bool = True


class Lose(ReplicaAction):
    """Its host is down: announce it failed and removed at once, and keep it LOST until its
    host is fenced (nothing is asked of that host)."""


@dataclass(frozen=True)
class FinishRemoval(ReplicaAction):
    """A draining or failed replica nobody is removing: remove it (or just forget a gone one)."""
    gone: bool


@dataclass(frozen=True)
class Spawn(Action):
    """Place and make a new serving replica, never on ``avoid_hosts`` (hosts that are not up).
    ``pool_empty``: booted cold because the group's warm pool had none parked."""
    group: str
    pool_empty: bool = False
    avoid_hosts: frozenset[str] = frozenset()


@dataclass(frozen=True)
class Refill(Action):
    """Place and boot a warm-pool member, parked once healthy; never on ``avoid_hosts`` (hosts
    booting a warm replica already, and hosts that are not up)."""
    group: str
    avoid_hosts: frozenset[str] = frozenset()


class Unpark(ReplicaAction):
    """Take a parked warm replica into service."""


@dataclass(frozen=True)
class Drain(ReplicaAction):
    """Announce draining, give in-flight work drain_s, then remove it (or park it: ``park``)."""
    park: str = ""       # the pool's park mode when it goes back to the pool


@dataclass(frozen=True)
class Park(ReplicaAction):
    """Park a warm replica (again) in the pool's state."""
    mode: str


class Forget(ReplicaAction):
    """A warm replica whose domain is gone (destroyed from outside): drop it from the pool."""


class Discard(ReplicaAction):
    """A warm replica the pool does not need or cannot use: remove it quietly."""


@dataclass(frozen=True)
class GroupDecision:
    """What the plan decided for one group: the wanted count after this tick and why."""
    group: str
    desired: int
    decision: policy.Decision | None     # the policy's decision when it was asked; None otherwise
    current: int


@dataclass(frozen=True)
class Plan:
    actions: tuple[Action, ...]
    groups: dict[str, GroupDecision] = field(default_factory=dict)
    notes: tuple[str, ...] = ()          # what the plan saw but did not act on (logged at debug)


# --- the input ------------------------------------------------------------------------------

@dataclass(frozen=True)
class View:
    """One tick's world, as plain data."""
    groups: Mapping[str, GroupConfig]
    observed: Mapping[str, OwnedDomain]          # replica domains of our groups, by name
    tracks: tuple[Track, ...]                    # copies: the planner reads, never writes
    desired: Mapping[str, int]                   # wanted serving counts so far (a group may be missing)
    first: bool = False                          # the first tick since the daemon started
    dead: frozenset[str] = frozenset()           # names a lifecycle event said stopped or crashed
    spawn_paused: frozenset[str] = frozenset()   # groups backing off after failed spawns
    refill_paused: frozenset[str] = frozenset()  # groups whose warm refills back off after a failure
    hosts: frozenset[str] = frozenset()          # hosts that are up (warm refills: one boot per host)
    host_states: Mapping[str, HostState] = field(default_factory=dict)   # every host's; one missing is up
    # host -> (running cms domains, load): what scale_in_order = "consolidate" weighs
    occupancy: Mapping[str, tuple[int, float]] = field(default_factory=dict)


Decide = Callable[[str, tuple[Track, ...]], policy.Decision]
# What performs one kind of action (the executor's, and those plugged into it with register).
Handler = Callable[[Any, Listing | None], None]


def warm_mode(d: OwnedDomain) -> str:
    """How a warm domain is parked as found in libvirt; "" when it runs (or is broken)."""
    if d.state == "paused":
        return "paused"
    if d.state == "shutoff":
        return "saved" if d.saved else "stopped"
    return ""


def pool_target(gc: GroupConfig, desired: int) -> int:
    """Warm replicas the group keeps: its pool size, but never past max with the serving ones."""
    return max(0, min(gc.warm_pool.size, gc.max - desired))


def victims(gc: GroupConfig, counting: list[Track], n: int,
            occupancy: Mapping[str, tuple[int, float]] | None = None) -> list[Track]:
    """Which replicas a scale-in removes: ones not yet serving first, then by age as configured,
    or (``consolidate``) the one whose removal empties, or leaves emptiest, a host."""
    order = sorted(counting, key=lambda t: (t.created, t.name), reverse=gc.scale_in_order == "newest")
    if gc.scale_in_order == "consolidate":
        rank = consolidate_order([(t.name, t.host, t.created) for t in counting], occupancy or {})
        order.sort(key=lambda t: rank.index(t.name))
    order.sort(key=lambda t: t.state == S.READY)
    return [t for t in order if not t.busy][:n]


# --- the plan -------------------------------------------------------------------------------

def host_state(v: View, host: str) -> HostState:
    return v.host_states.get(host, HostState.UP)


def plan(v: View, decide: Decide) -> Plan:
    actions: list[Action] = []
    notes: list[str] = []
    state = {t.name: t.state for t in v.tracks}
    tracked = {t.name: t for t in v.tracks}
    unplaceable = frozenset(h for h, st in v.host_states.items() if st not in PLACEABLE)
    suspect = frozenset(h for h, st in v.host_states.items() if st == HostState.SUSPECT)

    # 1. what libvirt has and we do not track (only on hosts that are up: a fencing host's
    #    leftovers are the fence's)
    for name, d in v.observed.items():
        if name in tracked or d.host in unplaceable:
            continue
        when = "found at daemon start" if v.first else "appeared in libvirt"
        if d.meta.warm:
            mode = warm_mode(d)
            if mode or d.alive:
                actions.append(AdoptWarm(f"warm replica {when} ({d.state})", d, mode))
                state[name] = S.PARKED if mode else S.WARMING
            elif v.first:
                actions.append(Cleanup(f"leftover warm domain in state {d.state}: removing", d))
        elif d.alive:
            actions.append(Adopt(f"{when}; checking its health", d))
            state[name] = S.STARTING
        elif v.first:
            actions.append(Cleanup(f"leftover domain in state {d.state}: removing", d))
    if v.first and unplaceable:
        # a host that did not answer may hold the domains of volumes that look orphaned (on
        # shared storage every host sees them), and asking it would wait on it
        notes.append(f"orphan volumes left for the next start: {', '.join(sorted(unplaceable))} is not up")
    elif v.first:
        actions.append(CleanOrphanVolumes("volumes of our groups with no domain", tuple(v.groups),
                                          frozenset(v.observed)))

    # 2. tracked replicas against their domains, on the hosts that answered
    for t in v.tracks:
        d = v.observed.get(t.name)
        hs = host_state(v, t.host) if t.host else HostState.UP
        if t.state == S.LOST or hs == HostState.SUSPECT:
            continue  # lost: the fence's when its host answers; suspect: kept as it is, unseen
        if hs in LOST:
            actions.append(Lose(f"its host {t.host} is down", t.name))
            state[t.name] = S.LOST
            continue
        if t.state in (S.SPAWNING, S.WARMING, S.PARKING, S.UNPARKING) or (t.state == S.READY and t.busy):
            # a worker owns it and ends it either way; a ready one held is being moved or
            # resized (the balancer's): mid-migration a listing may show its domain on both
            # hosts, or the destination's copy shut off as an aborted move ends, so its domain
            # is judged once the worker lets it go
            continue
        if t.state in (S.DRAINING, S.FAILED):
            if not t.busy:
                actions.append(FinishRemoval("gone from libvirt" if d is None else "finishing an earlier removal",
                                             t.name, gone=d is None))
                state[t.name] = S.FAILED
        elif t.state == S.PARKED:
            if t.busy or (d is not None and d.state == "shutdown"):
                continue  # its worker's; or on its way off (a listing taken while a stop ended): next tick
            if d is None:
                actions.append(Forget("warm replica destroyed from outside; the pool refills", t.name))
                del state[t.name]
            elif warm_mode(d) == "" and d.alive:
                actions.append(Park(f"warm replica found {d.state}, not parked: parking it again", t.name,
                                    t.park_mode or v.groups[t.group].warm_pool.state))
            elif warm_mode(d) != t.park_mode:
                actions.append(Discard(f"warm replica found {d.state}, not {t.park_mode}: replacing it", t.name))
                state[t.name] = S.FAILED
        elif d is None:
            actions.append(Fail("domain vanished from libvirt", t.name, remove=False))
            state[t.name] = S.FAILED
        elif not d.alive:
            seen = " (lifecycle event)" if t.name in v.dead else ""
            actions.append(Fail(f"domain is {d.state}{seen}", t.name))
            state[t.name] = S.FAILED

    # 3. per group: the serving count
    everyone = list(v.tracks) + [_adopted(d, state[n]) for n, d in v.observed.items()
                                 if n not in tracked and n in state]
    groups: dict[str, GroupDecision] = {}
    refill_planned = False
    for g, gc in v.groups.items():
        mine = [t for t in everyone if t.group == g]
        members = [t for t in mine if role(t, state.get(t.name)) == "serving"]
        pool = [t for t in mine if role(t, state.get(t.name)) == "pool"]
        n = len(members)
        held = sorted({t.host for t in mine if t.host in suspect})   # scale-in waits for these hosts
        desired = v.desired.get(g)
        if desired is None:
            desired = policy.clamp(gc, n)
        decision = None
        if n == desired:
            decision = decide(g, tuple(members))
            if held and decision.desired < n:
                decision = policy.Decision(policy.NONE, n, f"{decision.reason}; scale-in held while "
                                           f"{', '.join(held)} is suspect", decision.mean, decision.recommendation)
            if decision.action != policy.NONE:
                desired = decision.desired
        elif n < desired:
            notes.append(f"group {g}: {n} of {desired} replicas: closing the gap")
        if held and desired < n:
            notes.append(f"group {g}: scale-in held while {', '.join(held)} is suspect")
            desired = n
        groups[g] = GroupDecision(g, desired, decision, n)
        gap = desired - n
        if gap > 0:
            why = f"group {g} has {n} of {desired} wanted replicas"
            parked = sorted((t for t in pool if state.get(t.name) == S.PARKED and not t.busy and t.name in tracked
                             and t.host not in unplaceable),
                            key=lambda t: (_unpark_speed(t.park_mode), t.created, t.name))
            for t in parked[:gap]:
                actions.append(Unpark(f"{why}: from the warm pool ({t.park_mode})", t.name))
                state[t.name] = S.UNPARKING
                pool.remove(t)
            cold = gap - min(gap, len(parked))
            if cold and g in v.spawn_paused:
                notes.append(f"group {g}: spawns back off after a failure")
            elif cold and v.host_states and unplaceable >= set(v.host_states):
                notes.append(f"group {g}: no host is up to place a replica on")
            elif cold:
                actions.extend(Spawn(why, g, pool_empty=gc.warm_pool.size > 0, avoid_hosts=unplaceable)
                               for _ in range(cold))
        elif gap < 0:
            room = pool_target(gc, desired) - len(pool) if gc.warm_pool.reuse_on_scale_in else 0
            for t in victims(gc, [m for m in members if m.name in tracked], -gap, v.occupancy):
                park = gc.warm_pool.state if room > 0 and t.state == S.READY else ""
                room -= bool(park)
                actions.append(Drain(f"scale in: group {g} wants {desired}, has {n}", t.name, park))
                state[t.name] = S.DRAINING
                if park:
                    pool.append(t)

        # 4. the warm pool: refill one boot at a time per host; shrink to the target
        if not gc.warm_pool.size and not pool:
            continue
        target = pool_target(gc, desired)
        if len(pool) < target and g not in v.refill_paused:
            booting = None if refill_planned else _warm_boots(v, state)
            if booting is not None:
                actions.append(Refill(f"warm pool of {g} has {len(pool)} of {target}", g,
                                      avoid_hosts=booting | unplaceable))
                refill_planned = True  # one new warm boot per tick: its host is known next tick
        elif len(pool) > target:
            spare = [t for t in pool if state.get(t.name) == S.PARKED and not t.busy and t.name in tracked
                     and t.host not in unplaceable]
            for t in sorted(spare, key=lambda t: (t.created, t.name), reverse=True)[:len(pool) - target]:
                actions.append(Discard(f"warm pool of {g} holds {len(pool)}, wants {target}", t.name))
                state[t.name] = S.FAILED
    return Plan(tuple(actions), groups, tuple(notes))


def role(t: Track, st: State | None) -> str:
    """"serving" (counted by the policy), "pool" (a warm-pool member, or about to be one:
    a warm spawn, a replica draining into the pool) or "" (on its way out)."""
    if st in WARM or (st in (S.SPAWNING, S.DRAINING) and t.park_mode):
        return "pool"
    return "serving" if st in COUNTING else ""


def _warm_boots(v: View, state: dict[str, State]) -> frozenset[str] | None:
    """Hosts already booting a warm replica (of any group), or None when no host is free for
    another: a warm spawn is still being placed (its host is not known yet), or every host
    that is up boots one already."""
    if any(t.state == S.SPAWNING and t.park_mode for t in v.tracks):
        return None
    busy = frozenset(t.host for t in v.tracks if state.get(t.name) == S.WARMING and t.host)
    if busy and (not v.hosts or busy >= v.hosts):
        return None
    return busy


def _adopted(d: OwnedDomain, st: State) -> Track:
    return Track(d.name, d.meta.group, d.meta.created, st, host=d.host, uuid=d.uuid)


def _unpark_speed(mode: str) -> int:
    """Fastest first: a paused replica resumes in ms, a saved one restores in ~1 s, a stopped one boots."""
    return {"paused": 0, "saved": 1, "stopped": 2}.get(mode, 3)
