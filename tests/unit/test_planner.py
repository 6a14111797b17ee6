"""The reconcile loop's planner, table-driven: one tick's world in, the actions out.

Each row of PLANS is a View (tracked replicas, the domains libvirt listed, wanted counts)
and every action the plan must hold, in order, each as (kind, subject, what it carries).
The victims of a scale-in, the pool's target and the one clamp have tables of their own.
The planner is pure: nothing here touches libvirt, a socket or a clock.
"""

from __future__ import annotations

import pytest

from cms import policy
from cms.autoscaler import planner as P
from cms.autoscaler.hoststate import HostState
from cms.autoscaler.lifecycle import State, Track
from cms.virt import OwnedDomain, OwnerMeta
from tests.support import make_config

S = State
SAVED = 5           # libvirt's VIR_DOMAIN_SHUTOFF_SAVED: shut off by a managed save


def gcfg(**kw):
    base = {"min": 1, "max": 4, "warmup_s": 0, "cooldown_s": 0}
    for k, v in kw.items():
        base[k] = {**base.get(k, {}), **v} if isinstance(v, dict) else v
    return make_config(groups={"g": base}).groups["g"]


def track(name, state, created=1.0, host="h1", park_mode="", busy=False, group="g"):
    return Track(name, group, created, state, host=host, park_mode=park_mode, busy=busy)


def dom(name, state="running", warm=False, reason=0, host="h1", created=1.0, group="g"):
    return OwnedDomain(host, name, f"uuid-{name}", state, 1, 512, OwnerMeta(group=group, created=created, warm=warm),
                       reason=reason)


def running(*tracks):
    """The domains of tracked replicas as libvirt would list them: parked ones paused and warm."""
    return [dom(t.name, "paused" if t.state == S.PARKED else "running", warm=t.state in (S.PARKED, S.WARMING),
                host=t.host, created=t.created, group=t.group) for t in tracks]


def hold(_g, members):
    return policy.Decision(policy.NONE, len(members), "holding")


def scale_to(n):
    def decide(_g, members):
        return policy.Decision(policy.SCALE_OUT if n > len(members) else policy.SCALE_IN, n, f"to {n}")
    return decide


def describe(a: P.Action) -> tuple:
    """(kind, subject, what the action carries beyond its reason)."""
    kind = type(a).__name__
    if isinstance(a, P.DomainAction):
        return (kind, a.domain.name) + ((a.mode,) if isinstance(a, P.AdoptWarm) else ())
    if isinstance(a, (P.Spawn, P.Refill)):
        return (kind, a.group, a.pool_empty if isinstance(a, P.Spawn) else tuple(sorted(a.avoid_hosts)))
    if isinstance(a, P.CleanOrphanVolumes):
        return (kind, a.groups, tuple(sorted(a.keep)))
    extra = {P.Fail: "remove", P.FinishRemoval: "gone", P.Drain: "park", P.Park: "mode"}.get(type(a))
    return (kind, a.name) + ((getattr(a, extra),) if extra else ())


def plan(gc, tracks, doms=None, desired=None, decide=hold, groups=None, **kw):
    doms = running(*tracks) if doms is None else doms
    view = P.View(groups or {"g": gc}, {d.name: d for d in doms}, tuple(tracks),
                  {"g": len([t for t in tracks if t.state == S.READY])} if desired is None else desired,
                  hosts=kw.pop("hosts", frozenset({"h1"})), **kw)
    return P.plan(view, decide)


POOL = {"warm_pool": {"size": 1, "state": "paused"}}

PLANS = [
    # -- what libvirt has and the daemon does not track
    pytest.param({}, [], [dom("a")], {"g": 1}, {}, hold, [("Adopt", "a")], id="adopt a running replica"),
    pytest.param({}, [], [dom("a"), dom("b", "shutoff")], {}, {"first": True}, hold,
                 [("Adopt", "a"), ("Cleanup", "b"), ("CleanOrphanVolumes", ("g",), ("a", "b"))],
                 id="first tick: adopt, clean a leftover, clean orphan volumes"),
    pytest.param({}, [track("a", S.READY)], [dom("a"), dom("b", "shutoff")], {"g": 1}, {}, hold, [],
                 id="a stopped domain seen later is left alone (a worker or a person made it)"),
    pytest.param(POOL, [track("a", S.READY)], [dom("a"), dom("w", "paused", True)], {"g": 1}, {}, hold,
                 [("AdoptWarm", "w", "paused")], id="adopt a paused warm replica as parked"),
    pytest.param(POOL, [track("a", S.READY)], [dom("a"), dom("w", "shutoff", True, reason=SAVED)], {"g": 1}, {},
                 hold, [("AdoptWarm", "w", "saved")], id="adopt a managed-saved warm replica"),
    pytest.param(POOL, [track("a", S.READY)], [dom("a"), dom("w", "shutoff", True)], {"g": 1}, {}, hold,
                 [("AdoptWarm", "w", "stopped")], id="adopt a shut-off warm replica"),
    pytest.param(POOL, [track("a", S.READY)], [dom("a"), dom("w", "running", True)], {"g": 1}, {}, hold,
                 [("AdoptWarm", "w", "")], id="adopt a running warm replica, to park it"),
    pytest.param(POOL, [], [dom("a"), dom("w", "crashed", True)], {}, {"first": True}, hold,
                 [("Adopt", "a"), ("Cleanup", "w"), ("CleanOrphanVolumes", ("g",), ("a", "w")),
                  ("Refill", "g", ())], id="first tick: a broken warm domain is cleaned, the pool refilled"),
    # -- tracked replicas against their domains
    pytest.param({}, [track("a", S.READY)], [], {"g": 1}, {}, hold,
                 [("Fail", "a", False), ("Spawn", "g", False)], id="a vanished domain fails, and is replaced"),
    pytest.param({}, [track("a", S.READY)], [dom("a", "shutoff")], {"g": 1}, {"dead": frozenset({"a"})}, hold,
                 [("Fail", "a", True), ("Spawn", "g", False)], id="a dead domain fails, removed, replaced"),
    pytest.param({}, [track("a", S.READY), track("b", S.DRAINING, 2.0)], None, {"g": 1}, {}, hold,
                 [("FinishRemoval", "b", False)], id="finish a removal nobody is doing"),
    pytest.param({}, [track("a", S.READY), track("b", S.FAILED, 2.0)], [dom("a")], {"g": 1}, {}, hold,
                 [("FinishRemoval", "b", True)], id="a failed replica whose domain is gone is just forgotten"),
    pytest.param({}, [track("a", S.READY), track("b", S.DRAINING, 2.0, busy=True)], None, {"g": 1}, {}, hold, [],
                 id="a draining replica its worker holds is left to it"),
    pytest.param({}, [track("a", S.READY, busy=True)], [dom("a", "shutoff")], {"g": 1}, {"dead": frozenset({"a"})},
                 hold, [], id="a ready replica held by a move is judged when the move ends, not mid-way"),
    pytest.param({}, [track("a", S.READY, busy=True)], [], {"g": 1}, {}, hold, [],
                 id="a ready replica held by a move is not failed when a listing misses it"),
    pytest.param({}, [track("a", S.READY), track("s", S.SPAWNING, 2.0), track("u", S.STARTING, 3.0, busy=True)],
                 [dom("a"), dom("u")], {"g": 3}, {}, hold, [],
                 id="spawning and starting replicas count, and are their workers' business"),
    pytest.param(POOL, [track("a", S.READY), track("w", S.PARKED, park_mode="paused")], [dom("a")], {"g": 1}, {},
                 hold, [("Forget", "w"), ("Refill", "g", ())],
                 id="a parked replica destroyed from outside is forgotten; the pool refills"),
    pytest.param(POOL, [track("a", S.READY), track("w", S.PARKED, park_mode="paused")],
                 [dom("a"), dom("w", "running", True)], {"g": 1}, {}, hold, [("Park", "w", "paused")],
                 id="a parked replica found running is parked again"),
    pytest.param(POOL, [track("a", S.READY), track("w", S.PARKED, park_mode="paused")],
                 [dom("a"), dom("w", "shutoff", True)], {"g": 1}, {}, hold, [("Discard", "w"), ("Refill", "g", ())],
                 id="a parked replica found in another state is discarded and replaced"),
    pytest.param(POOL, [track("a", S.READY), track("w", S.PARKED, park_mode="stopped")],
                 [dom("a"), dom("w", "shutdown", True)], {"g": 1}, {}, hold, [],
                 id="a stopped replica listed while it was still going off is judged next tick, not discarded"),
    # -- the serving count
    pytest.param({}, [], [], {}, {}, hold, [("Spawn", "g", False)], id="no wanted count yet: min"),
    pytest.param({}, [track("a", S.READY)], None, {"g": 1}, {}, scale_to(3), [("Spawn", "g", False)] * 2,
                 id="the policy's decision closes the gap at once"),
    pytest.param({}, [track("a", S.READY)], None, {"g": 1}, {"spawn_paused": frozenset({"g"})}, scale_to(2), [],
                 id="spawns back off after a failure"),
    pytest.param({"warm_pool": {"size": 3}, "max": 6},
                 [track("a", S.READY), track("stop", S.PARKED, 2.0, park_mode="stopped"),
                  track("save", S.PARKED, 3.0, park_mode="saved"), track("pause", S.PARKED, 4.0, park_mode="paused")],
                 [dom("a"), dom("stop", "shutoff", True), dom("save", "shutoff", True, reason=SAVED),
                  dom("pause", "paused", True)], {"g": 1}, {}, scale_to(6),
                 [("Unpark", "pause"), ("Unpark", "save"), ("Unpark", "stop"), ("Spawn", "g", True),
                  ("Spawn", "g", True)], id="unpark before spawning: the fastest first, then cold boots"),
    pytest.param({"warm_pool": {"size": 2}}, [track("a", S.READY, 1.0), track("b", S.READY, 2.0)], None, {"g": 2},
                 {}, scale_to(1), [("Drain", "b", "paused"), ("Refill", "g", ())],
                 id="scale in: the newest drained into the pool, which still refills to its target"),
    pytest.param({"warm_pool": {"size": 1}}, [track("a", S.READY, 1.0), track("b", S.READY, 2.0)], None, {"g": 2},
                 {}, scale_to(1), [("Drain", "b", "paused")], id="scale in: the drained replica fills the pool"),
    pytest.param({"warm_pool": {"size": 2, "reuse_on_scale_in": False}},
                 [track("a", S.READY, 1.0), track("b", S.READY, 2.0)], None, {"g": 2}, {}, scale_to(1),
                 [("Drain", "b", ""), ("Refill", "g", ())], id="scale in without reuse: removed, the pool refilled"),
    # -- the warm pool
    pytest.param({"warm_pool": {"size": 2}, "max": 2}, [track("a", S.READY), track("w", S.PARKED, park_mode="paused"),
                                                       track("v", S.PARKED, 2.0, park_mode="paused")],
                 None, {"g": 1}, {}, hold, [("Discard", "v")], id="never past max with the pool: the newest spare goes"),
    pytest.param({"warm_pool": {"size": 2}}, [track("a", S.READY), track("w", S.WARMING, host="h1")], None, {"g": 1},
                 {"hosts": frozenset({"h1", "h2"})}, hold, [("Refill", "g", ("h1",))],
                 id="one warm boot per host: not on a host booting one"),
    pytest.param({"warm_pool": {"size": 2}}, [track("a", S.READY), track("w", S.WARMING, host="h1")], None, {"g": 1},
                 {}, hold, [], id="every host boots a warm replica already: no refill"),
    pytest.param({"warm_pool": {"size": 2}}, [track("a", S.READY), track("w", S.SPAWNING, park_mode="paused")], None,
                 {"g": 1}, {"hosts": frozenset({"h1", "h2"})}, hold, [],
                 id="a warm spawn not placed yet: no second refill until its host is known"),
    pytest.param(POOL, [track("a", S.READY)], None, {"g": 1}, {"refill_paused": frozenset({"g"})}, hold, [],
                 id="refills back off after a failure"),
]


@pytest.mark.parametrize("group, tracks, doms, desired, kw, decide, expect", PLANS)
def test_plan(group, tracks, doms, desired, kw, decide, expect):
    p = plan(gcfg(**group), tracks, doms, desired, decide, **kw)
    assert [describe(a) for a in p.actions] == expect
    assert all(a.reason for a in p.actions), "every action says why"


def test_one_warm_refill_per_tick_across_groups():
    gc = gcfg(**POOL)
    groups = {"g": gc, "k": gc}
    tracks = [track("a", S.READY), track("b", S.READY, group="k")]
    p = plan(gc, tracks, desired={"g": 1, "k": 1}, groups=groups, hosts=frozenset({"h1", "h2"}))
    assert [describe(a) for a in p.actions] == [("Refill", "g", ())]


def test_the_policy_is_asked_only_when_the_count_is_the_wanted_one():
    asked = []

    def decide(g, members):
        asked.append(sorted(t.name for t in members))
        return hold(g, members)
    gc = gcfg(**POOL)
    settled = [track("a", S.READY), track("b", S.STARTING, 2.0), track("w", S.PARKED, park_mode="paused")]
    p = plan(gc, settled, desired={"g": 2}, decide=decide)
    assert asked == [["a", "b"]] and p.groups["g"].current == 2 and p.groups["g"].decision.reason == "holding"
    p = plan(gc, settled, desired={"g": 3}, decide=decide)
    assert asked == [["a", "b"]] and p.groups["g"].decision is None and p.groups["g"].desired == 3
    assert any("closing the gap" in n for n in p.notes)


def test_a_decision_changes_the_wanted_count():
    p = plan(gcfg(), [track("a", S.READY)], desired={"g": 1}, decide=scale_to(2))
    g = p.groups["g"]
    assert (g.current, g.desired, g.decision.action) == (1, 2, policy.SCALE_OUT)


# -- which replicas a scale-in removes ---------------------------------------------------------

OCCUPANCY = {"h1": (2, 0.5), "h2": (1, 0.2)}
VICTIMS = [
    # (order, replicas as (name, state, created, host, busy), n, occupancy, expected)
    ("newest", [("a", S.READY, 1.0, "h1", False), ("b", S.READY, 2.0, "h1", False), ("c", S.READY, 3.0, "h2", False)],
     1, {}, ["c"]),
    ("oldest", [("a", S.READY, 1.0, "h1", False), ("b", S.READY, 2.0, "h1", False), ("c", S.READY, 3.0, "h2", False)],
     2, {}, ["a", "b"]),
    ("newest", [("a", S.READY, 1.0, "h1", False), ("b", S.STARTING, 0.5, "h1", False)], 1, {}, ["b"]),
    ("oldest", [("a", S.READY, 1.0, "h1", True), ("b", S.READY, 2.0, "h1", False)], 1, {}, ["b"]),
    ("consolidate", [("a", S.READY, 1.0, "h1", False), ("b", S.READY, 2.0, "h1", False),
                     ("c", S.READY, 0.5, "h2", False)], 1, OCCUPANCY, ["c"]),
    ("consolidate", [("a", S.READY, 1.0, "h1", False), ("b", S.READY, 2.0, "h1", False),
                     ("c", S.READY, 0.5, "h2", False)], 2, OCCUPANCY, ["c", "b"]),
]


@pytest.mark.parametrize("order, reps, n, occupancy, expect", VICTIMS)
def test_victims(order, reps, n, occupancy, expect):
    gc = gcfg(scale_in_order=order)
    counting = [track(name, st, created, host, busy=busy) for name, st, created, host, busy in reps]
    assert [t.name for t in P.victims(gc, counting, n, occupancy)] == expect


def test_consolidate_drains_the_replica_that_empties_a_host():
    gc = gcfg(scale_in_order="consolidate")
    tracks = [track("a", S.READY, 1.0, "h1"), track("b", S.READY, 2.0, "h1"), track("c", S.READY, 0.5, "h2")]
    p = plan(gc, tracks, desired={"g": 3}, decide=scale_to(2), occupancy=OCCUPANCY)
    assert [describe(a) for a in p.actions] == [("Drain", "c", "")]


# -- the counts ---------------------------------------------------------------------------------

@pytest.mark.parametrize("size, max_, desired, want", [(1, 3, 1, 1), (2, 3, 2, 1), (2, 3, 3, 0), (5, 3, 1, 2),
                                                      (0, 3, 1, 0), (3, 3, 4, 0)])
def test_pool_target_stays_within_max(size, max_, desired, want):
    assert P.pool_target(gcfg(max=max_, warm_pool={"size": size}), desired) == want


@pytest.mark.parametrize("n, want", [(0, 1), (1, 1), (3, 3), (4, 4), (9, 4)])
def test_the_one_clamp(n, want):
    assert policy.clamp(gcfg(), n) == want


@pytest.mark.parametrize("state, role", [(S.SPAWNING, "serving"), (S.STARTING, "serving"), (S.READY, "serving"),
                                         (S.UNPARKING, "serving"), (S.DRAINING, ""), (S.FAILED, ""),
                                         (S.WARMING, "pool"), (S.PARKING, "pool"), (S.PARKED, "pool"), (S.LOST, "")])
def test_roles(state, role):
    assert P.role(track("a", state), state) == role
    if state in (S.SPAWNING, S.DRAINING):
        assert P.role(track("a", state, park_mode="paused"), state) == "pool"    # a warm spawn, a drain into the pool


# -- a partial view: hosts that do not answer (issue 20) -------------------------------------------

H = HostState
UP3 = {"h1": H.UP, "h2": H.UP, "h3": H.UP}


def partial(**states):
    return {**UP3, **{h: H(s) for h, s in states.items()}}


def seen(a: P.Action) -> tuple:
    """describe(), with the hosts a new replica must not go to."""
    d = describe(a)
    return d + (tuple(sorted(a.avoid_hosts)),) if isinstance(a, P.Spawn) else d


# (what, group config, tracks, domains listed, wanted, host states, decide, expected actions). Only
# the hosts that answered are listed: a silent host's domains are missing from the view.
SPREAD = [track("a", S.READY, 1.0, "h1"), track("b", S.READY, 2.0, "h2"), track("c", S.READY, 3.0, "h3")]
PARTIAL = [
    ("a suspect host: its replica keeps its state, nothing replaced", {}, SPREAD, running(*SPREAD[:2]), 3,
     partial(h3="suspect"), hold, []),
    ("a down host: its replica is lost and replaced on the hosts that are up", {}, SPREAD, running(*SPREAD[:2]), 3,
     partial(h3="down"), hold, [("Lose", "c"), ("Spawn", "g", False, ("h3",))]),
    ("a fencing host answers, but its lost replica stays the fence's; nothing goes there", {},
     SPREAD[:2] + [track("c", S.LOST, 3.0, "h3")], running(*SPREAD), 3, partial(h3="fencing"), hold,
     [("Spawn", "g", False, ("h3",))]),
    ("an untracked domain on a fencing host is not adopted", {}, SPREAD[:2], running(*SPREAD), 3,
     partial(h3="fencing"), hold, [("Spawn", "g", False, ("h3",))]),
    ("scale-in is held while a group has a replica on a suspect host", {}, SPREAD, running(*SPREAD[:2]), 3,
     partial(h3="suspect"), scale_to(2), []),
    ("scale-out goes on while a host is suspect, never onto it", {}, SPREAD, running(*SPREAD[:2]), 3,
     partial(h3="suspect"), scale_to(4), [("Spawn", "g", False, ("h3",))]),
    ("an asked-for scale-in waits for the suspect host too", {}, SPREAD, running(*SPREAD[:2]), 2,
     partial(h3="suspect"), hold, []),
    ("a group with nothing on the suspect host scales in", {}, SPREAD[:2], running(*SPREAD[:2]), 2,
     partial(h3="suspect"), scale_to(1), [("Drain", "b", "")]),
    ("a parked replica on a down host is lost; the pool refills elsewhere, the gap from the pool first", POOL,
     [track("a", S.READY, 1.0, "h1"), track("w", S.PARKED, 2.0, "h3", park_mode="paused")],
     running(track("a", S.READY, 1.0, "h1")), 1, partial(h3="down"), hold,
     [("Lose", "w"), ("Refill", "g", ("h3",))]),
    ("the warm pool on a live host replaces a lost replica", POOL,
     [track("a", S.READY, 1.0, "h1"), track("b", S.READY, 2.0, "h3"), track("w", S.PARKED, 3.0, "h2",
                                                                               park_mode="paused")],
     running(track("a", S.READY, 1.0, "h1"), track("w", S.PARKED, 3.0, "h2", park_mode="paused")), 2,
     partial(h3="down"), hold, [("Lose", "b"), ("Unpark", "w"), ("Refill", "g", ("h3",))]),
    ("a parked replica on a suspect host is not unparked; a cold boot closes the gap", POOL,
     [track("a", S.READY, 1.0, "h1"), track("w", S.PARKED, 3.0, "h2", park_mode="paused")],
     running(track("a", S.READY, 1.0, "h1")), 1, partial(h2="suspect"), scale_to(2),
     [("Spawn", "g", True, ("h2",))]),
    ("replicas in any state on a down host are lost, a worker's too", {},
     [track("a", S.READY, 1.0, "h1"), track("s", S.STARTING, 2.0, "h2", busy=True),
      track("f", S.FAILED, 3.0, "h2"), track("d", S.DRAINING, 4.0, "h2")],
     running(track("a", S.READY, 1.0, "h1")), 2, partial(h2="down"), hold,
     [("Lose", "s"), ("Lose", "f"), ("Lose", "d"), ("Spawn", "g", False, ("h2",))]),
    ("the first tick cleans no orphan volumes while a host is not up (they may be its domains')", {}, [],
     running(*SPREAD[:2]), 3, partial(h3="suspect"), hold, [("Adopt", "a"), ("Adopt", "b"), ("Spawn", "g", False, ("h3",))]),
    ("every host down: nothing to place on", {}, SPREAD, [], 3,
     {"h1": H.DOWN, "h2": H.DOWN, "h3": H.DOWN}, hold, [("Lose", "a"), ("Lose", "b"), ("Lose", "c")]),
]


@pytest.mark.parametrize("what, group, tracks, doms, desired, states, decide, expect", PARTIAL,
                         ids=[r[0] for r in PARTIAL])
def test_a_plan_acts_on_what_answers(what, group, tracks, doms, desired, states, decide, expect):
    up = frozenset(h for h, st in states.items() if st == H.UP)
    p = plan(gcfg(**group), tracks, doms, {"g": desired}, decide, host_states=states, hosts=up, first=not tracks)
    assert [seen(a) for a in p.actions] == expect
    assert all(a.reason for a in p.actions)
    for a in p.actions:
        if isinstance(a, P.Lose):
            assert a.reason == f"its host {next(t.host for t in tracks if t.name == a.name)} is down"


def test_a_held_scale_in_says_why():
    p = plan(gcfg(), SPREAD, running(*SPREAD[:2]), {"g": 3}, scale_to(2), host_states=partial(h3="suspect"),
             hosts=frozenset({"h1", "h2"}))
    d = p.groups["g"]
    assert d.desired == 3 and d.decision.action == policy.NONE
    assert d.decision.reason == "to 2; scale-in held while h3 is suspect"
    p = plan(gcfg(), SPREAD, running(*SPREAD[:2]), {"g": 2}, hold, host_states=partial(h3="suspect"),
             hosts=frozenset({"h1", "h2"}))
    assert p.groups["g"].desired == 3 and "group g: scale-in held while h3 is suspect" in p.notes
