"""Placement policy tables: each row is hosts, a request, rules and the expected host (or refusal)."""

from __future__ import annotations

import random

import pytest

from cms.errors import PlacementError
from cms.placement import BOOT_GRACE_S, HostLoad, Placer, Request, Rules, charge, charge_of, choose, held_memory_mib

NO_RULES = Rules(cpu_overcommit=1.0, ram_reserve_mib=0)


def H(name, cpus=4, mem=8192, uv=0, um=0, up=True, disk=None):
    return HostLoad(name, cpus, mem, uv, um, up, disk)


CASES = [
    # (id, algorithm, hosts, request, rules, cursor, expected host or None for refusal)
    ("ff-first", "first_fit", [H("a"), H("b")], Request(1, 512), NO_RULES, 0, "a"),
    ("ff-skips-full-cpu", "first_fit", [H("a", uv=4), H("b")], Request(1, 512), NO_RULES, 0, "b"),
    ("ff-skips-full-ram", "first_fit", [H("a", um=8000), H("b")], Request(1, 512), NO_RULES, 0, "b"),
    ("ff-ignores-cursor", "first_fit", [H("a"), H("b")], Request(1, 512), NO_RULES, 1, "a"),
    ("ff-overcommit-lets-in", "first_fit", [H("a", cpus=2, uv=4), H("b")], Request(2, 512),
     Rules(cpu_overcommit=3.0, ram_reserve_mib=0), 0, "a"),
    ("ff-overcommit-exact-edge", "first_fit", [H("a", cpus=2, uv=5), H("b")], Request(2, 512),
     Rules(cpu_overcommit=3.0, ram_reserve_mib=0), 0, "b"),
    ("ff-fractional-overcommit", "first_fit", [H("a", cpus=3, uv=4)], Request(1, 1),
     Rules(cpu_overcommit=1.5, ram_reserve_mib=0), 0, None),
    ("ff-reserve-keeps-out", "first_fit", [H("a", mem=1024), H("b", mem=2048)], Request(1, 1024),
     Rules(cpu_overcommit=1.0, ram_reserve_mib=512), 0, "b"),
    ("ff-reserve-exact-fit", "first_fit", [H("a", mem=1536)], Request(1, 1024),
     Rules(cpu_overcommit=1.0, ram_reserve_mib=512), 0, "a"),
    ("ff-down-skipped", "first_fit", [H("a", up=False), H("b")], Request(1, 512), NO_RULES, 0, "b"),
    ("ff-disk", "first_fit", [H("a", disk=10), H("b", disk=2 << 30)], Request(1, 512, 1 << 30), NO_RULES, 0, "b"),
    ("ff-disk-unknown-ok", "first_fit", [H("a", disk=None)], Request(1, 512, 1 << 30), NO_RULES, 0, "a"),
    ("ff-refuse-all-full", "first_fit", [H("a", uv=4), H("b", um=8192)], Request(1, 512), NO_RULES, 0, None),
    ("ff-refuse-all-down", "first_fit", [H("a", up=False)], Request(1, 512), NO_RULES, 0, None),
    ("ff-refuse-no-hosts", "first_fit", [], Request(1, 512), NO_RULES, 0, None),
    ("ff-refuse-too-big", "first_fit", [H("a")], Request(5, 512), NO_RULES, 0, None),
    ("rr-cursor-0", "round_robin", [H("a"), H("b"), H("c")], Request(1, 512), NO_RULES, 0, "a"),
    ("rr-cursor-2", "round_robin", [H("a"), H("b"), H("c")], Request(1, 512), NO_RULES, 2, "c"),
    ("rr-cursor-wraps", "round_robin", [H("a"), H("b"), H("c")], Request(1, 512), NO_RULES, 4, "b"),
    ("rr-skips-full", "round_robin", [H("a"), H("b", uv=4), H("c")], Request(1, 512), NO_RULES, 1, "c"),
    ("rr-skips-down-wraps", "round_robin", [H("a"), H("b"), H("c", up=False)], Request(1, 512), NO_RULES, 2, "a"),
    ("rr-refuse", "round_robin", [H("a", up=False), H("b", uv=4)], Request(1, 512), NO_RULES, 1, None),
    ("spread-most-ram", "spread", [H("a", um=4000), H("b", um=1000), H("c", um=2000)], Request(1, 512), NO_RULES, 0, "b"),
    ("spread-tie-cpu", "spread", [H("a", uv=3), H("b", uv=1)], Request(1, 512), NO_RULES, 0, "b"),
    ("spread-tie-order", "spread", [H("a"), H("b")], Request(1, 512), NO_RULES, 0, "a"),
    ("spread-biggest-does-not-fit-cpu", "spread", [H("a", mem=64000, uv=4), H("b")], Request(1, 512), NO_RULES, 0, "b"),
    ("spread-down-skipped", "spread", [H("a", mem=64000, up=False), H("b")], Request(1, 512), NO_RULES, 0, "b"),
    ("spread-reserve", "spread", [H("a", mem=4096), H("b", mem=4096, um=100)], Request(1, 512),
     Rules(cpu_overcommit=1.0, ram_reserve_mib=512), 0, "a"),
    ("spread-refuse", "spread", [H("a", um=8000)], Request(1, 512), NO_RULES, 0, None),
]


@pytest.mark.parametrize("algo,hosts,req,rules,cursor,want", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_choose_table(algo, hosts, req, rules, cursor, want):
    if want is None:
        with pytest.raises(PlacementError) as ei:
            choose(algo, hosts, req, rules, cursor)
        assert "cannot place" in str(ei.value)
    else:
        assert choose(algo, hosts, req, rules, cursor).host == want


@pytest.mark.parametrize("algo,hosts,req,rules,cursor,want", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_placer_agrees_with_choose_on_the_table(algo, hosts, req, rules, cursor, want):
    p = Placer(algo, hosts, rules, cursor)
    if want is None:
        with pytest.raises(PlacementError):
            p.place(req)
    else:
        assert p.place(req).host == want


def test_round_robin_cursor_advances_past_chosen_host():
    hosts = [H("a"), H("b"), H("c")]
    cursor, seen = 0, []
    for _ in range(4):
        c = choose("round_robin", hosts, Request(1, 512), NO_RULES, cursor)
        seen.append(c.host)
        cursor = c.next_cursor
    assert seen == ["a", "b", "c", "a"]


def test_first_fit_packs_and_refuses_when_full():
    hosts = [H("a", cpus=2, mem=2048), H("b", cpus=2, mem=2048)]
    got = []
    for _ in range(4):
        c = choose("first_fit", hosts, Request(1, 1024), NO_RULES)
        hosts[c.index] = charge(hosts[c.index], Request(1, 1024))
        got.append(c.host)
    assert got == ["a", "a", "b", "b"]
    with pytest.raises(PlacementError, match="none of the 2 hosts"):
        choose("first_fit", hosts, Request(1, 1024), NO_RULES)


def test_unknown_algorithm_and_empty_request():
    with pytest.raises(ValueError, match="best_fit"):
        choose("best_fit", [H("a")], Request(1, 1))
    with pytest.raises(PlacementError):
        choose("first_fit", [H("a")], Request(0, 512))


def place_both(p: Placer, algo: str, ref: list, req: Request, rules: Rules, cursor: int, step: int):
    """Place req with the Placer and with choose() over ref (charged here when placed): the
    same host, or both refuse (None)."""
    try:
        want = choose(algo, ref, req, rules, cursor)
    except PlacementError:
        with pytest.raises(PlacementError):
            p.place(req)
        return None
    got = p.place(req)
    assert (got.host, got.index) == (want.host, want.index), step
    ref[want.index] = charge(ref[want.index], req)
    return want


@pytest.mark.parametrize("algo", ["round_robin", "first_fit", "spread"])
def test_placer_sequence_matches_repeated_choose(algo):
    rnd = random.Random(7)
    hosts = [H(f"h{i}", cpus=rnd.choice([2, 4, 8]), mem=rnd.choice([2048, 4096, 8192]),
               up=rnd.random() > 0.1) for i in range(40)]
    rules = Rules(cpu_overcommit=2.0, ram_reserve_mib=256)
    shapes = [Request(1, 512), Request(2, 1024), Request(4, 2048)]
    ref, cursor = list(hosts), 0
    p = Placer(algo, hosts, rules)
    for step in range(400):
        want = place_both(p, algo, ref, rnd.choice(shapes), rules, cursor, step)
        cursor = want.next_cursor if want else cursor
    # nothing was overcommitted beyond the rules
    for h in p.hosts:
        assert h.used_vcpus <= h.cpus * 2.0 and h.used_memory_mib <= h.memory_mib - 256


def test_placer_release_gives_room_back():
    p = Placer("first_fit", [H("a", cpus=1, mem=1024), H("b")], NO_RULES)
    c = p.place(Request(1, 1024))
    assert c.host == "a" and p.place(Request(1, 1024)).host == "b"
    p.release(c.index, Request(1, 1024))
    assert p.place(Request(1, 1024)).host == "a"


@pytest.mark.parametrize("state, warm, want", [
    ("running", False, (2, 1024)), ("shutoff", False, (2, 1024)),     # any other VM: in full, as before
    ("running", True, (2, 1024)),                                       # a warm replica booting
    ("paused", True, (0, 1024)),                                        # parked paused: RAM held, no CPU
    ("shutoff", True, (0, 0)),                                          # parked saved or stopped: disk only
])
def test_a_warm_replica_is_charged_as_its_state_holds_the_host(state, warm, want):
    assert charge_of(state, warm, 2, 1024) == want


@pytest.mark.parametrize("current, target, reporting, age, want", [
    (768, 384, False, 5.0, 384),      # booting, balloon still empty: its target, not the maximum
    (768, 384, True, 5.0, 768),       # the guest's driver reports: what the balloon says it holds
    (400, 384, True, 6.0, 400),       # ... also while it gives the room back
    (384, 384, True, 600.0, 384),     # settled
    (768, 384, False, 600.0, 768),    # never reported: no balloon driver, it keeps all it started with
    (300, 384, False, 5.0, 300),      # less than the target (a balloon below it): what it has
    (768, 0, False, 5.0, 768),        # no target recorded (made by an older cms): libvirt's figure
])
def test_a_vm_is_charged_the_memory_its_guest_holds(current, target, reporting, age, want):
    assert held_memory_mib(current, target, reporting, age) == want


def test_the_boot_grace_ends():
    assert held_memory_mib(768, 384, False, BOOT_GRACE_S - 1) == 384
    assert held_memory_mib(768, 384, False, BOOT_GRACE_S) == 768


@pytest.mark.parametrize("algo", ["round_robin", "first_fit", "spread"])
def test_placer_with_releases_matches_repeated_choose(algo):
    """Placements and releases mixed, hosts filling up: the Placer (spread: a heap per request
    shape, a host that cannot take a shape leaving that heap until a release) picks what
    `choose` picks over the same hosts every time."""
    rnd = random.Random(11)
    hosts = [H(f"h{i}", cpus=rnd.choice([1, 2, 4]), mem=rnd.choice([1024, 2048, 8192]),
               up=rnd.random() > 0.1) for i in range(30)]
    rules = Rules(cpu_overcommit=2.0, ram_reserve_mib=256)
    shapes = [Request(1, 512), Request(2, 1024), Request(4, 2048), Request(1, 3072)]
    ref, cursor, placed = list(hosts), 0, []
    p = Placer(algo, hosts, rules)
    refused = 0
    for step in range(600):
        if placed and rnd.random() < 0.3:
            i, req = placed.pop(rnd.randrange(len(placed)))
            p.release(i, req)
            h = ref[i]
            ref[i] = H(h.name, cpus=h.cpus, mem=h.memory_mib, up=h.up, uv=h.used_vcpus - req.vcpus,
                       um=h.used_memory_mib - req.memory_mib)
            continue
        req = rnd.choice(shapes)
        want = place_both(p, algo, ref, req, rules, cursor, step)
        if want is None:
            refused += 1
            continue
        placed.append((want.index, req))
        cursor = want.next_cursor
    assert refused > 20 and len(placed) > 20       # the hosts were full often, and room came back
