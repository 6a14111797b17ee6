"""The warm pool (issue 13): the planner's rules as pure tables, and the whole loop on
libvirt's test driver (suspend/resume, managed save and metadata work there)."""

from __future__ import annotations

import pytest

from cms import policy
from cms.autoscaler import planner as P
from cms.autoscaler.lifecycle import IllegalTransition, State, Track
from cms.virt import OwnedDomain, OwnerMeta
from tests.support import make_config
from tests.unit.test_autoscaler import G, cfg_for, ready_names, run_until

S = State


def gcfg(**kw):
    base = {"min": 1, "max": 3, "warmup_s": 0, "cooldown_s": 0, "warm_pool": {"size": 1, "state": "paused"}}
    for k, v in kw.items():
        base[k] = {**base.get(k, {}), **v} if isinstance(v, dict) else v
    return make_config(groups={"g": base}).groups["g"]


def track(name, state, created=1.0, park_mode="", host="h1", busy=False):
    return Track(name, "g", created, state, host=host, park_mode=park_mode, busy=busy)


def dom(name, state="running", warm=False, reason=0, host="h1", created=1.0):
    return OwnedDomain(host, name, f"uuid-{name}", state, 1, 512, OwnerMeta(group="g", created=created, warm=warm),
                       reason=reason)


def view(gc, tracks, doms=None, desired=None, **kw):
    doms = doms if doms is not None else [dom(t.name, "paused" if t.state == S.PARKED else "running",
                                              warm=t.state in (S.PARKED, S.WARMING)) for t in tracks]
    return P.View({"g": gc}, {d.name: d for d in doms}, tuple(tracks), desired if desired is not None else {},
                  hosts=kw.pop("hosts", frozenset({"h1"})), **kw)


def hold(_g, _members):
    return policy.Decision(policy.NONE, len(_members), "holding")


def kinds(plan):
    return [(type(a).__name__, getattr(a, "name", getattr(a, "group", ""))) for a in plan.actions]


# --- pure: the planner ------------------------------------------------------------------------

def test_warm_replicas_are_excluded_from_the_count_and_the_policys_input():
    seen = []

    def decide(g, members):
        seen.append([t.name for t in members])
        return policy.Decision(policy.NONE, len(members), "ok")

    gc = gcfg()
    p = P.plan(view(gc, [track("a", S.READY), track("w", S.PARKED, park_mode="paused")], desired={"g": 1}), decide)
    assert seen == [["a"]] and p.groups["g"].current == 1 and p.actions == ()


def test_the_policys_mean_never_sees_a_warm_replica():
    # Autoscaler.decide builds the policy input from the members the planner passes: READY ones
    # only carry samples, so a parked replica's 0 % can never pull the mean down.
    gc = gcfg(threshold={"high": 0.75, "low": 0.25, "window_s": 2, "window_in_s": 600})
    hot = policy.ReplicaSeries("a", 0.0, tuple((float(t), 0.9) for t in range(10)))
    d = policy.decide(gc, policy.PolicyInput(now=9.0, current=1, replicas=(hot,)))
    assert d.action == policy.SCALE_OUT and d.mean == pytest.approx(0.9)


@pytest.mark.parametrize("size, desired, want", [(1, 1, 1), (2, 2, 1), (2, 3, 0), (5, 1, 2), (0, 1, 0)])
def test_max_holds_with_the_pool_counted(size, desired, want):
    assert P.pool_target(gcfg(warm_pool={"size": size}), desired) == want


def test_a_full_group_discards_its_spare_warm_replicas():
    gc = gcfg(max=2, warm_pool={"size": 2})
    tracks = [track("a", S.READY), track("b", S.READY), track("w", S.PARKED, park_mode="paused")]
    p = P.plan(view(gc, tracks, desired={"g": 2}), hold)
    assert kinds(p) == [("Discard", "w")]


def test_a_gap_unparks_the_fastest_first_then_boots_cold():
    gc = gcfg(max=5, warm_pool={"size": 3})
    tracks = [track("a", S.READY), track("stop", S.PARKED, 2.0, "stopped"), track("save", S.PARKED, 3.0, "saved"),
              track("pause", S.PARKED, 4.0, "paused")]
    doms = [dom("a"), dom("stop", "shutoff", True), dom("save", "shutoff", True, reason=5), dom("pause", "paused", True)]
    p = P.plan(view(gc, tracks, doms, desired={"g": 3}), hold)
    assert kinds(p)[:2] == [("Unpark", "pause"), ("Unpark", "save")]
    p = P.plan(view(gc, tracks, doms, desired={"g": 5}), hold)
    assert [k for k in kinds(p) if k[0] != "Spawn"] == [("Unpark", "pause"), ("Unpark", "save"), ("Unpark", "stop")]
    cold = [a for a in p.actions if isinstance(a, P.Spawn)]
    assert len(cold) == 1 and cold[0].pool_empty


def test_an_empty_pool_boots_cold_and_says_so():
    gc = gcfg()
    p = P.plan(view(gc, [track("a", S.READY)], desired={"g": 2}), hold)
    # cold for the serving gap, and the pool's refill beside it (max 3 leaves room for one)
    assert [(type(a).__name__, getattr(a, "pool_empty", None)) for a in p.actions] == [("Spawn", True), ("Refill", None)]


def test_the_refill_boots_one_at_a_time_per_host():
    gc = gcfg(warm_pool={"size": 3})
    p = P.plan(view(gc, [track("a", S.READY)], desired={"g": 1}), hold)
    assert [type(a).__name__ for a in p.actions] == ["Refill"]
    booting = [track("a", S.READY), track("w", S.WARMING, host="h1")]
    assert P.plan(view(gc, booting, desired={"g": 1}), hold).actions == ()
    p = P.plan(view(gc, booting, desired={"g": 1}, hosts=frozenset({"h1", "h2"})), hold)
    assert [(type(a).__name__, a.avoid_hosts) for a in p.actions] == [("Refill", frozenset({"h1"}))]
    placing = [track("a", S.READY), track("w", S.SPAWNING, park_mode="paused")]
    assert P.plan(view(gc, placing, desired={"g": 1}, hosts=frozenset({"h1", "h2"})), hold).actions == ()


def test_scale_in_parks_the_drained_replica_when_the_pool_is_short():
    gc = gcfg(warm_pool={"size": 2})
    tracks = [track("a", S.READY, 1.0), track("b", S.READY, 2.0), track("w", S.PARKED, park_mode="paused")]
    p = P.plan(view(gc, tracks, desired={"g": 1}), hold)
    assert [(type(a).__name__, a.name, a.park) for a in p.actions] == [("Drain", "b", "paused")]
    full = gcfg(warm_pool={"size": 1})
    p = P.plan(view(full, tracks, desired={"g": 1}), hold)
    assert [(type(a).__name__, a.park) for a in p.actions] == [("Drain", "")]
    off = gcfg(warm_pool={"size": 2, "reuse_on_scale_in": False})
    p = P.plan(view(off, tracks, desired={"g": 1}), hold)
    assert [(type(a).__name__, a.park) for a in p.actions if isinstance(a, P.Drain)] == [("Drain", "")]


def test_a_replica_draining_into_the_pool_counts_as_pool_not_as_serving():
    gc = gcfg(warm_pool={"size": 1})
    tracks = [track("a", S.READY), track("b", S.DRAINING, park_mode="paused", busy=True)]
    p = P.plan(view(gc, tracks, desired={"g": 1}), hold)
    assert p.actions == () and p.groups["g"].current == 1


@pytest.mark.parametrize("state, reason, mode", [("paused", 0, "paused"), ("shutoff", 5, "saved"),
                                                 ("shutoff", 0, "stopped"), ("running", 0, "")])
def test_restart_adopts_warm_domains_as_found(state, reason, mode):
    gc = gcfg()
    doms = [dom("a"), dom("w", state, True, reason=reason)]
    p = P.plan(view(gc, [], doms, first=True), hold)
    adopted = [a for a in p.actions if isinstance(a, P.AdoptWarm)]
    assert [(a.domain.name, a.mode) for a in adopted] == [("w", mode)]
    assert not [a for a in p.actions if isinstance(a, P.Spawn)], "no duplicate of the pool"
    assert p.groups["g"].desired == 1


def test_parked_found_running_is_parked_again_and_gone_is_forgotten():
    gc = gcfg()
    tracks = [track("a", S.READY), track("w", S.PARKED, park_mode="paused")]
    p = P.plan(view(gc, tracks, [dom("a"), dom("w", "running", True)], desired={"g": 1}), hold)
    assert kinds(p) == [("Park", "w")]
    p = P.plan(view(gc, tracks, [dom("a")], desired={"g": 1}), hold)
    assert kinds(p)[0] == ("Forget", "w")
    assert any(isinstance(a, P.Refill) for a in p.actions), "the pool refills"


def test_lifecycle_refuses_a_move_it_does_not_list():
    t = track("w", S.PARKED)
    with pytest.raises(IllegalTransition):
        t.move(S.READY)             # a parked replica serves only through UNPARKING
    t.move(S.UNPARKING)
    t.move(S.READY)


# --- the whole loop on the test driver ---------------------------------------------------------

def parked(s):
    return sorted(t.name for t in s.tracks.values() if t.state == S.PARKED)


@pytest.fixture
def wenv(tmp_path, run_dir, state_db):
    from cms.autoscaler.reconcile import Autoscaler
    from cms.store import Store
    from cms.virt import Fleet
    from tests.support import write_node_xml
    from tests.unit.test_autoscaler import FakeHealth, FakeMetrics, Recorder
    uri = write_node_xml(tmp_path / "node.xml", memory_kib=16 * 1024 * 1024)
    made, fleets = [], []

    def new(fleet=None, dry_run=False, **group):
        cfg = cfg_for(tmp_path, uri, state_db=state_db, **group)
        if fleet is None:
            fleet = Fleet(cfg)
            fleet.host("n1").conn()   # a test:///file URI starts fresh at each open: keep this one
            fleets.append(fleet)
        s = Autoscaler(cfg, fleet=fleet, metrics=FakeMetrics(), health=FakeHealth(), publisher=Recorder(),
                       store=Store(cfg.state_db), dry_run=dry_run)
        made.append(s)
        return s

    yield new
    for s in made:
        s.close()
    for f in fleets:
        f.close()


@pytest.mark.parametrize("mode, dstate", [("paused", "paused"), ("saved", "shutoff"), ("stopped", "shutoff")])
def test_pool_prepared_parked_used_refilled(wenv, mode, dstate):
    s = wenv(warm_pool={"size": 1, "state": mode})
    s.metrics.load = 0.5
    run_until(s, lambda: len(ready_names(s)) == 1 and len(parked(s)) == 1, what="one ready, one parked")
    [w] = parked(s)
    d = next(d for d in s.fleet.owned(G) if d.name == w)
    assert d.meta.warm and d.state == dstate and (d.saved if mode == "saved" else True)
    assert w not in {r.name for r in s.publisher.replicas(G)}, "a warm replica is never announced"
    s.metrics.load = 0.95
    run_until(s, lambda: w in ready_names(s), what="the parked replica serving")
    s.metrics.load = 0.5                     # two carry it: no third, so the pool's target stays 1
    assert ("ready", w) in s.publisher.events() and ("added", w) in s.publisher.events()
    run_until(s, lambda: len(parked(s)) == 1 and w not in parked(s), what="the pool refilled")
    s.tick()
    kinds_ = [e.kind for e in s.store.events(group=G)]
    for k in ("warm_refill", "warm_prepared", "warm_used"):
        assert k in kinds_, k
    assert not s.fleet.host("n1").guest(w).state() == "paused"
    assert not next(d for d in s.fleet.owned(G) if d.name == w).meta.warm, "tagged serving once ready"
    used = next(e for e in s.store.events(group=G, kinds=["warm_used"]))
    assert used.subject == w and used.data["mode"] == mode
    # the API's view: the replicas table says parked / ready
    rows = {r.name: r.state for r in s.store.replicas(G)}
    assert rows[w] == "ready" and "parked" in rows.values()
    st = s.status()["groups"][G]
    assert st["warm_pool"]["members"][0]["state"] == "parked" and w in [r["name"] for r in st["replicas"]]


def test_restart_adopts_the_parked_pool_without_a_duplicate(wenv):
    a = wenv(warm_pool={"size": 1})
    run_until(a, lambda: len(ready_names(a)) == 1 and len(parked(a)) == 1, what="ready + parked")
    names = sorted(d.name for d in a.fleet.owned(G))
    a.close()
    b = wenv(fleet=a.fleet, warm_pool={"size": 1})
    run_until(b, lambda: len(ready_names(b)) == 1 and len(parked(b)) == 1, what="adopted")
    for _ in range(5):
        b.tick()
    assert sorted(d.name for d in b.fleet.owned(G)) == names
    assert parked(b) == parked(a)


def test_reuse_on_scale_in_parks_and_the_next_scale_out_reuses_it(wenv):
    s = wenv(warm_pool={"size": 2, "state": "paused"})
    s.metrics.load = 0.95
    run_until(s, lambda: len(ready_names(s)) == 2, what="two ready")
    s.metrics.load = 0.5                     # hold at two: the pool's target is max 3 - 2 = 1
    run_until(s, lambda: len(ready_names(s)) == 2 and len(parked(s)) == 1, what="two ready, pool 1 (max 3)")
    s.metrics.load = 0.05
    run_until(s, lambda: len(ready_names(s)) == 1 and len(parked(s)) == 2, what="drained into the pool")
    # the worker parks, then records the event; the journal writes it at a tick's end
    run_until(s, lambda: s.store.events(group=G, kinds=["warm_parked"]), what="the warm_parked event written")
    back = [e.subject for e in s.store.events(group=G, kinds=["warm_parked"])]
    assert back[0] in parked(s)
    assert ("draining", back[0]) in s.publisher.events() and ("removed", back[0]) in s.publisher.events()
    s.metrics.load = 0.95
    run_until(s, lambda: back[0] in ready_names(s), what="the reused replica serving again")


def test_a_warm_replica_destroyed_from_outside_is_replaced(wenv):
    s = wenv(warm_pool={"size": 1})
    run_until(s, lambda: len(ready_names(s)) == 1 and len(parked(s)) == 1, what="ready + parked")
    [w] = parked(s)
    s.fleet.host("n1").domains.remove(w, s.cfg.libvirt.pool)
    run_until(s, lambda: len(parked(s)) == 1 and w not in parked(s), what="replaced")
    assert "destroyed from outside" in next(e.message for e in s.store.events(group=G, kinds=["removed"])
                                            if e.subject == w)


def test_an_unpark_that_fails_is_removed_and_the_next_is_tried(wenv):
    from cms import errors
    s = wenv(warm_pool={"size": 2})
    run_until(s, lambda: len(ready_names(s)) == 1 and len(parked(s)) == 2, what="pool of 2")
    bad, good = parked(s)                      # the older one is taken first
    real = s.scheduler.unpark

    def refuses(host, name, mode):
        if name == bad:
            raise errors.VirtError("resume refused", host, f"domain {name}")
        return real(host, name, mode)

    s.scheduler.unpark = refuses
    s.store.request_scale(G, 2)
    run_until(s, lambda: good in ready_names(s) and bad not in s.tracks, what="the next one serves")
    assert [e.subject for e in s.store.events(group=G, kinds=["failed"])] == [bad]
    assert bad not in {d.name for d in s.fleet.owned(G)}, "nothing is left half-parked"


def test_a_dry_run_daemon_says_which_warm_replica_it_would_unpark_and_leaves_it_parked(wenv, caplog):
    a = wenv(warm_pool={"size": 1})
    a.metrics.load = 0.5
    run_until(a, lambda: len(ready_names(a)) == 1 and len(parked(a)) == 1, what="ready + parked")
    [w] = parked(a)
    b = wenv(fleet=a.fleet, dry_run=True, warm_pool={"size": 1})
    b.metrics.load = 0.95
    caplog.set_level("INFO", logger="cms.autoscaler")
    run_until(b, lambda: f"dry run: would unpark {w}" in caplog.text, what="the dry-run unpark line")
    assert b.fleet.host("n1").guest(w).state() == "paused"
    assert w not in {r.name for r in b.publisher.replicas(G)}
