"""The host planner's tables (cms.hostplan): each row is a cluster model and the actions (or notes) expected."""

from __future__ import annotations

import pytest

from cms.hostplan import (MIGRATE, POWER_OFF, RESIZE, HostView, Limits, Model, Vertical, VmView, consolidate_order,
                          plan, sustained_mean)
from cms.placement import Rules

NOW = 1000.0
RULES = Rules(cpu_overcommit=4.0, ram_reserve_mib=0)


def flat(v, span=200.0, now=NOW):
    """One sample a second, all v, reaching back `span` seconds."""
    return tuple((now - span + i, v) for i in range(int(span) + 1))


def recent(v_old, v_new, last_s, span=200.0, now=NOW):
    """v_old, then v_new for the last `last_s` seconds."""
    return tuple((t, v_new if t > now - last_s else v_old) for t, _ in flat(0, span, now))


def H(name, load=0.1, cpus=2, mem=8192, **kw):
    return HostView(name, cpus, mem, series=kw.pop("series", flat(load)), **kw)


def V(name, host, cpu=0.5, vcpus=1, mem=512, **kw):
    return VmView(name, host, vcpus, mem, cpu, **kw)


def M(hosts, vms, **kw):
    return Model(NOW, tuple(hosts), tuple(vms), rules=kw.pop("rules", RULES), **kw)


def moves(p):
    return [(a.vm, a.src, a.dst, a.strategy) for a in p.actions if a.kind == MIGRATE]


HOT = [V("a1", "a", 1.0), V("a2", "a", 0.6), V("a3", "a", 0.3)]          # host a at 95%
HOT_B = [V("b1", "b", 1.0), V("b2", "b", 0.6), V("b3", "b", 0.34)]       # host b at 97%

# -- relief -----------------------------------------------------------------------------------

RELIEF = [
    # (id, hosts, vms, limits, expected moves (vm, src, dst, strategy), a note that must appear or "")
    ("sheds-the-vm-that-evens-best",
     [H("a", 0.95), H("b", 0.0), H("c", 0.5)],
     [V("a1", "a", 0.8, vcpus=2), V("a2", "a", 0.9), V("a3", "a", 0.7), V("a4", "a", 0.3), V("c1", "c", 1.0)],
     Limits(), [("a2", "a", "b", "relief")], ""),
    ("the-vm-nearest-half-the-difference",
     [H("a", 0.95), H("b", 0.0)], HOT, Limits(), [("a1", "a", "b", "relief")], ""),
    ("not-sustained-for-the-window",
     [H("a", series=recent(0.5, 0.95, 10)), H("b", 0.0)],
     [V("a1", "a", 1.0), V("a2", "a", 0.9)], Limits(window_s=30), [], ""),
    ("the-window-is-not-covered-yet",
     [H("a", series=flat(0.95, span=20)), H("b", 0.0)],
     [V("a1", "a", 1.0), V("a2", "a", 0.9)], Limits(window_s=30), [], ""),
    ("a-missing-sample-breaks-the-window",
     [H("a", series=flat(0.95)[:-5] + ((NOW - 4, None),) + flat(0.95)[-4:]), H("b", 0.0)],
     [V("a1", "a", 1.0), V("a2", "a", 0.9)], Limits(), [], ""),
    ("no-move-that-would-overload-the-target",
     [H("a", 0.95), H("b", 0.6)],
     [V("a1", "a", 1.0), V("a2", "a", 0.9), V("b1", "b", 1.2)], Limits(),
     [], "no VM can move to a host that takes it and stays below 80%"),
    ("placement-refuses-a-host-without-ram",
     [H("a", 0.95), H("b", 0.0, mem=600), H("c", 0.3)],
     [V("a1", "a", 1.0), V("a2", "a", 0.9), V("b1", "b", 0.0, mem=512), V("c1", "c", 0.6)],
     Limits(), [("a2", "a", "c", "relief")], ""),
    ("placement-refuses-overcommitted-vcpus",
     [H("a", 0.95, cpus=1), H("b", 0.0, cpus=1)],
     [V("a1", "a", 0.5, vcpus=1), V("a2", "a", 0.45, vcpus=1), V("b1", "b", 0.0, vcpus=4)],
     Limits(), [], "no VM can move"),
    ("a-down-host-takes-nothing",
     [H("a", 0.95), H("b", 0.0, up=False), H("c", 0.2)],
     [V("a1", "a", 1.0), V("a2", "a", 0.9), V("c1", "c", 0.4)], Limits(), [("a2", "a", "c", "relief")], ""),
    ("judged-again-only-on-figures-after-its-last-move",
     [H("a", 0.95, last_move_at=NOW - 20), H("b", 0.0)],
     [V("a1", "a", 1.0), V("a2", "a", 0.9)], Limits(window_s=30), [], ""),
    ("an-unmovable-vm-stays",
     [H("a", 0.95), H("b", 0.0)],
     [V("a1", "a", 1.0, movable=False), V("a2", "a", 0.9)], Limits(), [("a2", "a", "b", "relief")], ""),
    ("relief-off",
     [H("a", 0.95), H("b", 0.0)], [V("a1", "a", 1.0), V("a2", "a", 0.9)], Limits(relief=False), [], ""),
    ("hosts-of-other-sizes-count-their-cpus",
     [H("a", 0.95, cpus=2), H("b", 0.5, cpus=8)],
     [V("a1", "a", 1.0), V("a2", "a", 0.9), V("b1", "b", 1.0, vcpus=4)], Limits(), [("a1", "a", "b", "relief")], ""),
]


@pytest.mark.parametrize("hosts,vms,lim,want,note", [c[1:] for c in RELIEF], ids=[c[0] for c in RELIEF])
def test_relief(hosts, vms, lim, want, note):
    p = plan(M(hosts, vms), lim)
    assert moves(p) == want
    if note:
        assert any(note in n for n in p.notes), p.notes
    for a in p.actions:
        assert a.reason and "->" in a.reason and a.src in a.reason and a.dst in a.reason


@pytest.mark.parametrize("b_mem, want", [(540, []), (600, [("a1", "a", "b", "relief")])])
def test_a_move_charges_the_vm_its_kernel_share_too(b_mem, want):
    """A VM's host gives it its size and its guest kernel's share: a host with room for the
    size alone does not take it."""
    vms = [V(v.name, v.host, v.cpu, kernel_mib=45) for v in HOT]
    assert moves(plan(M([H("a", 0.95), H("b", 0.0, mem=b_mem)], vms), Limits())) == want


def test_relief_reason_tells_the_loads_before_and_after():
    p = plan(M([H("a", 0.95), H("b", 0.0)], [V("a1", "a", 1.0), V("a2", "a", 0.8)]))
    [a] = p.actions
    assert a.reason == ("host a at 95% over 30s (> high 80%): moving a1 (1.00 busy cores) to b evens the load: "
                        "a 90% -> 40%, b 0% -> 50%")
    assert a.data == {"from_load": 0.9, "to_load": 0.0, "cores": 1.0, "from_load_after": 0.4, "to_load_after": 0.5}


# -- anti-thrash ------------------------------------------------------------------------------

THRASH = [
    ("one-migration-per-host: two hot hosts, one idle host",
     [H("a", 0.95), H("b", 0.97), H("c", 0.0)], HOT + HOT_B,
     Limits(max_moves=5), [("b1", "b", "c", "relief")], "host a at 95% over 30s (> high 80%): no VM can move"),
    ("one-migration-per-host: two idle hosts take one each",
     [H("a", 0.95), H("b", 0.97), H("c", 0.0), H("d", 0.0)], HOT + HOT_B,
     Limits(max_moves=5), [("b1", "b", "c", "relief"), ("a1", "a", "d", "relief")], ""),
    ("a-migrating-source-waits",
     [H("a", 0.95, migrating=True), H("b", 0.0)], [V("a1", "a", 1.0), V("a2", "a", 0.9)], Limits(), [],
     "a migration from or to it is running"),
    ("a-migrating-destination-takes-nothing",
     [H("a", 0.95), H("b", 0.0, migrating=True), H("c", 0.3)],
     [V("a1", "a", 1.0), V("a2", "a", 0.9), V("c1", "c", 0.6)], Limits(), [("a2", "a", "c", "relief")], ""),
    ("a-vm-in-cooldown-stays; the next best moves",
     [H("a", 0.95), H("b", 0.0)],
     [V("a1", "a", 1.0, last_moved_at=NOW - 60), V("a2", "a", 0.6), V("a3", "a", 0.3)], Limits(vm_cooldown_s=120),
     [("a2", "a", "b", "relief")], ""),
    ("a-vm-past-its-cooldown-moves",
     [H("a", 0.95), H("b", 0.0)],
     [V("a1", "a", 1.0, last_moved_at=NOW - 200), V("a2", "a", 0.6), V("a3", "a", 0.3)], Limits(vm_cooldown_s=120),
     [("a1", "a", "b", "relief")], ""),
    ("no-way-back-within-min-stay",
     [H("a", 0.95), H("b", 0.0), H("c", 0.2)],
     [V("a1", "a", 1.0, left=(("b", NOW - 300),)), V("a2", "a", 0.9, movable=False), V("c1", "c", 0.4)],
     Limits(vm_cooldown_s=0, min_stay_s=600), [("a1", "a", "c", "relief")], ""),
    ("back-after-min-stay",
     [H("a", 0.95), H("b", 0.0), H("c", 0.2)],
     [V("a1", "a", 1.0, left=(("b", NOW - 700),)), V("a2", "a", 0.9, movable=False), V("c1", "c", 0.4)],
     Limits(vm_cooldown_s=0, min_stay_s=600), [("a1", "a", "b", "relief")], ""),
    ("the-budget-is-spent",
     [H("a", 0.95), H("b", 0.0)], [V("a1", "a", 1.0), V("a2", "a", 0.9)],
     Limits(max_moves=2, budget_interval_s=300), [], "budget of 2 migration(s) per 300s is spent"),
    ("a-budget-of-one-moves-the-hottest",
     [H("a", 0.9), H("b", 0.97), H("c", 0.0), H("d", 0.0)],
     [V("a1", "a", 1.0), V("a2", "a", 0.8), V("b1", "b", 1.0), V("b2", "b", 0.94)],
     Limits(max_moves=1), [("b1", "b", "c", "relief")], "budget"),
]


@pytest.mark.parametrize("hosts,vms,lim,want,note", [c[1:] for c in THRASH], ids=[c[0] for c in THRASH])
def test_anti_thrash(hosts, vms, lim, want, note):
    recent_moves = (NOW - 10, NOW - 100) if "spent" in note else ()
    p = plan(M(hosts, vms, recent_moves=recent_moves), lim)
    assert moves(p) == want
    if note:
        assert any(note in n for n in p.notes), p.notes


def test_old_moves_leave_the_budget():
    p = plan(M([H("a", 0.95), H("b", 0.0)], HOT, recent_moves=(NOW - 400, NOW - 350)),
             Limits(max_moves=2, budget_interval_s=300))
    assert moves(p) == [("a1", "a", "b", "relief")]


# -- consolidation ----------------------------------------------------------------------------

CONSOLIDATE = Limits(consolidate=True, high=0.8, headroom=0.2)
CONS = [
    ("empties-the-least-loaded-host, best fit",
     [H("a", 0.3), H("b", 0.1), H("c", 0.5)],
     [V("a1", "a", 0.6), V("b1", "b", 0.2), V("c1", "c", 1.0)], CONSOLIDATE,
     [("b1", "b", "c", "consolidation")], []),
    ("best fit skips a receiver the vm would push past high - headroom",
     [H("a", 0.3), H("b", 0.1), H("c", 0.5)],
     [V("a1", "a", 0.6), V("b1", "b", 0.3), V("c1", "c", 1.0)], CONSOLIDATE,
     [("b1", "b", "a", "consolidation")], []),
    ("an-empty-host-could-be-powered-off",
     [H("a", 0.3), H("b", 0.0)], [V("a1", "a", 0.6)], CONSOLIDATE, [], ["b"]),
    ("the-fleet-does-not-fit-with-headroom",
     [H("a", 0.5), H("b", 0.45)], [V("a1", "a", 1.0), V("b1", "b", 0.9)], CONSOLIDATE, [], []),
    ("not-low-for-the-whole-window",
     [H("a", series=recent(0.9, 0.2, 60)), H("b", 0.1)], [V("a1", "a", 0.4), V("b1", "b", 0.2)],
     Limits(consolidate=True, consolidate_window_s=120), [], []),
    ("off-by-default",
     [H("a", 0.3), H("b", 0.1)], [V("a1", "a", 0.6), V("b1", "b", 0.2)], Limits(), [], []),
    ("one-move-at-a-time-from-the-emptied-host",
     [H("a", 0.3), H("b", 0.1), H("c", 0.2)],
     [V("a1", "a", 0.6), V("b1", "b", 0.1), V("b2", "b", 0.1), V("c1", "c", 0.4)], Limits(consolidate=True, max_moves=5),
     [("b1", "b", "a", "consolidation")], []),
    ("all-or-nothing: a vm with no receiver keeps the host",
     [H("a", 0.3, mem=1024), H("b", 0.1)],
     [V("a1", "a", 0.6, mem=1000), V("b1", "b", 0.2, mem=512)], CONSOLIDATE, [], []),
    ("anti-affinity-keeps-replicas-apart",
     [H("a", 0.3), H("b", 0.1)],
     [V("a1", "a", 0.6, group="web"), V("b1", "b", 0.2, group="web")],
     Limits(consolidate=True, anti_affinity=frozenset({"web"})), [], []),
]


@pytest.mark.parametrize("hosts,vms,lim,want,empty", [c[1:] for c in CONS], ids=[c[0] for c in CONS])
def test_consolidation(hosts, vms, lim, want, empty):
    p = plan(M(hosts, vms), lim)
    assert moves(p) == want
    offs = [a for a in p.actions if a.kind == POWER_OFF]
    assert [a.src for a in offs] == empty
    for a in offs:
        assert a.reason == f"host {a.src} is empty and could be powered off"


def test_consolidation_notes_the_moves_still_to_come():
    p = plan(M([H("a", 0.3), H("b", 0.1)], [V("a1", "a", 0.6), V("b1", "b", 0.1), V("b2", "b", 0.1)]),
             Limits(consolidate=True, max_moves=5))
    assert moves(p) == [("b1", "b", "a", "consolidation")]
    assert "consolidating b: 1 more VM(s) to move once the running migrations end" in p.notes
    assert "fit on 1 host(s) at most 60% each" in p.actions[0].reason


def test_consolidation_waits_while_relief_moves():
    p = plan(M([H("a", 0.95), H("b", 0.0), H("c", 0.1)], [V("a1", "a", 1.0), V("a2", "a", 0.9), V("c1", "c", 0.2)]),
             Limits(consolidate=True))
    assert [m[3] for m in moves(p)] == ["relief"]


# -- anti-affinity ----------------------------------------------------------------------------

AFF = frozenset({"web"})
ANTI = [
    ("two-replicas-on-one-host: one moves",
     [H("a", 0.4), H("b", 0.2)], [V("w1", "a", 0.4, group="web"), V("w2", "a", 0.4, group="web")],
     Limits(anti_affinity=AFF), [("w1", "a", "b", "anti_affinity")]),
    ("not-to-a-host-that-has-one-already",
     [H("a", 0.4), H("b", 0.0), H("c", 0.3)],
     [V("w1", "a", 0.4, group="web"), V("w2", "a", 0.4, group="web"), V("w3", "b", 0.0, group="web")],
     Limits(anti_affinity=AFF), [("w1", "a", "c", "anti_affinity")]),
    ("only-for-listed-groups",
     [H("a", 0.4), H("b", 0.2)], [V("w1", "a", 0.4, group="web"), V("w2", "a", 0.4, group="web")],
     Limits(), []),
    ("relief-respects-it",
     [H("a", 0.95), H("b", 0.0), H("c", 0.2)],
     [V("w1", "a", 1.0, group="web"), V("x1", "a", 0.9, movable=False), V("w2", "b", 0.0, group="web"),
      V("c1", "c", 0.4)],
     Limits(anti_affinity=AFF), [("w1", "a", "c", "relief")]),
]


@pytest.mark.parametrize("hosts,vms,lim,want", [c[1:] for c in ANTI], ids=[c[0] for c in ANTI])
def test_anti_affinity(hosts, vms, lim, want):
    assert moves(plan(M(hosts, vms), lim)) == want


# -- vertical ---------------------------------------------------------------------------------

VT = Vertical(max_vcpus=4, max_memory_mib=2048, high=0.8, low=0.2, window_s=10, window_in_s=60)


def VV(name, host, cpu_series, vcpus=1, mem=512, **kw):
    return VmView(name, host, vcpus, mem, cpu_series[-1][1] if cpu_series else None, vertical=kw.pop("vertical", VT),
                  cpu_series=cpu_series, min_vcpus=kw.pop("min_vcpus", 1), min_memory_mib=kw.pop("min_mib", 512), **kw)


def resizes(p):
    return [(a.vm, a.dst, a.vcpus, a.memory_mib, a.after) for a in p.actions if a.kind == RESIZE]


VERT = [
    # (id, hosts, vms, rules, expected migrations, expected resizes (vm, where, vcpus, MiB, after))
    ("hot: one more vcpu in place",
     [H("a", 0.4)], [VV("v", "a", flat(0.95))], RULES, [], [("v", "a", 2, 512, "")]),
    ("hot only lately: nothing",
     [H("a", 0.4)], [VV("v", "a", recent(0.5, 0.95, 5))], RULES, [], []),
    ("a tick at or below low breaks hot",
     [H("a", 0.4)], [VV("v", "a", tuple((t, 0.1 if t == NOW - 3 else v) for t, v in flat(0.95)))], RULES, [], []),
    ("hot at its maximum: nothing",
     [H("a", 0.4)], [VV("v", "a", flat(0.95), vcpus=4)], RULES, [], []),
    ("hot, its host is full: migrate first, then grow",
     [H("a", 0.5, cpus=1), H("b", 0.1, cpus=2)], [VV("v", "a", flat(0.95))], Rules(1.0, 0),
     [("v", "a", "b", "vertical")], [("v", "b", 2, 512, "v")]),
    ("hot, its host is hot: migrate first, then grow",
     [H("a", 0.95), H("b", 0.1)], [VV("v", "a", flat(0.95)), V("x", "a", 0.9, movable=False)], RULES,
     [("v", "a", "b", "vertical")], [("v", "b", 2, 512, "v")]),
    ("hot, full, and no host can take it grown: nothing",
     [H("a", 0.5, cpus=1), H("b", 0.1, cpus=1)], [VV("v", "a", flat(0.95))], Rules(1.0, 0), [], []),
    ("idle for the longer window: one vcpu less",
     [H("a", 0.1)], [VV("v", "a", flat(0.05), vcpus=3)], RULES, [], [("v", "a", 2, 512, "")]),
    ("idle, but at the size it was made with: nothing",
     [H("a", 0.1)], [VV("v", "a", flat(0.05), vcpus=2, min_vcpus=2)], RULES, [], []),
    ("idle shrinks in place on an overcommitted host",
     [H("a", 0.1, cpus=1)], [VV("v", "a", flat(0.05), vcpus=3), V("x", "a", 0.0, vcpus=4)], Rules(2.0, 0),
     [], [("v", "a", 2, 512, "")]),
    ("idle for less than the longer window: nothing",
     [H("a", 0.1)], [VV("v", "a", recent(0.5, 0.05, 30), vcpus=3)], RULES, [], []),
    ("resized lately: judged on the figures after it",
     [H("a", 0.4)], [VV("v", "a", flat(0.95), last_resized_at=NOW - 5)], RULES, [], []),
    ("memory use high: the balloon gives a quarter more",
     [H("a", 0.4)], [VV("v", "a", flat(0.5), mem_series=flat(0.93))], RULES, [], [("v", "a", 1, 640, "")]),
    ("memory and cpu hot: one resize for both",
     [H("a", 0.4)], [VV("v", "a", flat(0.95), mem_series=flat(0.93))], RULES, [], [("v", "a", 2, 640, "")]),
    ("memory grows within its maximum",
     [H("a", 0.4)], [VV("v", "a", flat(0.5), mem=2000, mem_series=flat(0.93))], RULES, [], [("v", "a", 1, 2048, "")]),
    ("memory idle: back towards the size it was made with",
     [H("a", 0.4)], [VV("v", "a", flat(0.5), mem=1024, mem_series=flat(0.05))], RULES, [], [("v", "a", 1, 768, "")]),
    ("no opt-in: nothing",
     [H("a", 0.4)], [VV("v", "a", flat(0.95), vertical=None)], RULES, [], []),
]


@pytest.mark.parametrize("hosts,vms,rules,want_moves,want_resizes", [c[1:] for c in VERT], ids=[c[0] for c in VERT])
def test_vertical(hosts, vms, rules, want_moves, want_resizes):
    p = plan(M(hosts, vms, rules=rules), Limits(relief=False))
    assert moves(p) == want_moves
    assert resizes(p) == want_resizes
    for a in p.actions:
        assert a.reason.startswith(a.vm)


def test_vertical_reasons_say_why_and_how():
    p = plan(M([H("a", 0.5, cpus=1), H("b", 0.1)], [VV("v", "a", flat(0.95))], rules=Rules(1.0, 0)), Limits(relief=False))
    mig, res = p.actions
    assert mig.reason == ("v cpu 95% over 10s > 80%, but host a has no room for +1 vCPU / +0 MiB: "
                          "migrating it to b first")
    assert res.reason == "v cpu 95% over 10s > 80%: 1 -> 2 vCPU, 512 -> 512 MiB on b after the migration"


def test_vertical_growth_charges_the_host_for_the_next_vm():
    # two hot VMs, room for one more vCPU only: the first grows in place, the second must move
    p = plan(M([H("a", 0.4, cpus=1), H("b", 0.0, cpus=4)], [VV("v1", "a", flat(0.95)), VV("v2", "a", flat(0.95))],
               rules=Rules(3.0, 0)), Limits(relief=False))
    assert resizes(p) == [("v1", "a", 2, 512, ""), ("v2", "b", 2, 512, "v2")]
    assert moves(p) == [("v2", "a", "b", "vertical")]


# -- scale-in order "consolidate" and helpers ---------------------------------------------------

ORDER = [
    ("the replica alone on its host goes first",
     [("r1", "a", 1.0), ("r2", "a", 2.0), ("r3", "b", 3.0)], {"a": (2, 0.5), "b": (1, 0.9)}, ["r3", "r2", "r1"]),
    ("other vms on a host keep it from being the emptiest",
     [("r1", "a", 1.0), ("r2", "b", 2.0)], {"a": (1, 0.5), "b": (3, 0.1)}, ["r1", "r2"]),
    ("equal counts: the less loaded host",
     [("r1", "a", 1.0), ("r2", "b", 2.0)], {"a": (2, 0.2), "b": (2, 0.6)}, ["r1", "r2"]),
    ("same host: the newest first",
     [("r1", "a", 1.0), ("r2", "a", 2.0)], {"a": (2, 0.2)}, ["r2", "r1"]),
    ("a host unknown to the occupancy counts as empty",
     [("r1", "a", 1.0), ("r2", "z", 2.0)], {"a": (1, 0.2)}, ["r2", "r1"]),
]


@pytest.mark.parametrize("cands,occ,want", [c[1:] for c in ORDER], ids=[c[0] for c in ORDER])
def test_consolidate_order(cands, occ, want):
    assert consolidate_order(cands, occ) == want


def test_sustained_mean_needs_the_whole_window_after_since():
    s = flat(0.9, span=60)
    assert sustained_mean(s, NOW, 30) == pytest.approx(0.9)
    assert sustained_mean(s, NOW, 30, since=NOW - 20) is None
    assert sustained_mean(s, NOW, 90) is None


def test_plan_serialises_to_json_ready_data():
    import json
    p = plan(M([H("a", 0.95), H("b", 0.0)], [V("a1", "a", 1.0), V("a2", "a", 0.8)]))
    d = json.loads(json.dumps(p.to_dict()))
    assert d["actions"][0]["kind"] == "migrate" and d["actions"][0]["vm"] == "a1" and d["notes"] == []


# -- the mechanisms balancing uses: a migration's new port forward, node CPU --------------------

def test_retarget_forward_moves_the_port_forward_and_the_owner_port():
    from cms.virt import xml as vxml
    spec = vxml.DomainSpec(name="cms-web-1", uuid="u", vcpus=1, memory_mib=64, disk_path="/d",
                           meta=vxml.OwnerMeta(group="web", port=20000), network_mode="user",
                           forward_address="169.254.90.11", host_port=20000)
    xml = vxml.render_domain(spec)
    # libvirt's own dump puts the metadata on its own lines and quotes with "
    for src in (xml, xml.replace("<cms:owner", "\n    <cms:owner").replace("'", '"')):
        out = vxml.retarget_forward(src, "169.254.90.12", 20007)
        assert "hostfwd=tcp:169.254.90.12:20007-:8080" in out and "169.254.90.11" not in out
        assert "<port>20007</port>" in out and "<port>20000</port>" not in out
        assert "<guest-port>8080</guest-port>" in out
    assert vxml.retarget_forward("<domain><metadata/></domain>", "a", 1) == "<domain><metadata/></domain>"


def test_node_utilization_between_two_readings():
    from cms.metrics import node_utilization
    assert node_utilization((100, 1000), (400, 2000)) == pytest.approx(0.3)
    assert node_utilization(None, (400, 2000)) is None
    assert node_utilization((100, 1000), (400, 1000)) is None      # no time passed
    assert node_utilization((500, 1000), (400, 2000)) is None      # a counter reset


def test_the_cpus_setting_is_what_placement_and_host_load_count(tmp_path, run_dir):
    from cms import config
    from cms.metrics import LibvirtMetrics
    from cms.scheduler import Scheduler
    from cms.virt import Fleet
    from tests.support import write_node_xml
    uri = write_node_xml(tmp_path / "node.xml", cpus=4)
    cfg = config.parse({"hosts": [{"name": "a", "uri": uri, "cpus": 1}, {"name": "b", "uri": uri}],
                        "state_db": str(tmp_path / "s.db")}, "<t>")
    fleet = Fleet(cfg)
    try:
        sched = Scheduler(cfg, fleet)
        assert [h.cpus for h in sched.loads()] == [1, 4]
        assert (sched.host_cpus("a"), sched.host_cpus("b")) == (1, 4)
        assert (fleet.host_cpus("a"), fleet.host_cpus("b")) == (1, 4)       # the one rule the metrics use
        m = LibvirtMetrics(fleet)
        first = m.node_cpu(["a", "b"])
        assert first == {"a": None, "b": None}        # no baseline yet
    finally:
        fleet.close()
