"""The replica registry: the one owner of the tracks, their lock and every move, and what
each move announces (to the feed and the journal)."""

from __future__ import annotations

import re

import pytest

from cms.autoscaler.journal import Journal
from cms.autoscaler.lifecycle import PUBLISHED, IllegalTransition, State
from cms.autoscaler.registry import Registry
from cms.messages import EVENT_STATE, EVENTS, STATES
from tests.support import ROOT
from tests.unit.test_autoscaler import FakeClock, Recorder

S = State


@pytest.fixture
def reg():
    events: list[tuple[str, str, str]] = []
    journal = Journal(store=None)          # never flushed here: its listeners see every event
    journal.listeners.append(lambda kind, group, subject, data: events.append((kind, subject, data.get("host"))))
    forgotten: list[str] = []
    r = Registry(Recorder(), journal, forget_history=forgotten.append, clock=FakeClock())
    r.events, r.forgotten = events, forgotten
    return r


def ready(reg, name="cms-g-1", host="h1"):
    """A tracked replica, announced and ready, as a spawn leaves one."""
    t = reg.reserve("g")
    reg.place(t, host=host, address="127.0.0.1", port=20000)
    assert reg.advance(t, (S.SPAWNING,), S.STARTING)
    reg.announce(t, "added", "spawned")
    assert reg.advance(t, (S.STARTING,), S.READY)
    reg.announce(t, "ready", "healthy")
    return t


def test_reserve_never_hands_out_a_tracked_name(reg):
    names = {reg.reserve("g").name for _ in range(50)}
    assert len(names) == 50 and all(n.startswith("cms-g-") for n in names)
    assert {t.name for t in reg.snapshot()} == names


def test_take_moves_only_an_idle_replica_in_the_given_states_and_can_hold_it(reg):
    t = ready(reg)
    assert reg.take(t.name, (S.PARKED,), S.UNPARKING) is None               # not in that state
    held = reg.take(t.name, (S.READY,), S.DRAINING, claim=True, park_mode="paused")
    assert held is t and (t.state, t.park_mode, t.busy) == (S.DRAINING, "paused", True)
    assert reg.take(t.name, (S.DRAINING,)) is None and not reg.claim(t)     # a worker holds it
    reg.release(t)
    assert reg.claim(t) and reg.take("nobody", (S.READY,)) is None
    with pytest.raises(IllegalTransition):
        reg.advance(t, (S.DRAINING,), S.READY)                               # not a lifecycle move


def test_advance_says_when_something_moved_it_first(reg):
    t = ready(reg)
    assert reg.mark_failed(t, "gone")
    assert not reg.advance(t, (S.READY,), S.DRAINING) and t.state == S.FAILED


def test_snapshot_gives_copies(reg):
    t = ready(reg)
    [copy] = reg.snapshot()
    copy.state, copy.timings["x"] = S.FAILED, 1.0
    assert t.state == S.READY and "x" not in t.timings and reg.get(t.name) is t


def test_mark_failed_announces_a_known_replica_and_records_an_unknown_one(reg):
    t = ready(reg)
    assert reg.mark_failed(t, "no /health") and not reg.mark_failed(t, "again")
    u = reg.publisher.updates[-1]
    assert (u.event, u.replica, [r.state for r in u.replicas]) == ("failed", t.name, ["failed"])
    quiet = reg.reserve("g")
    assert not reg.mark_failed(quiet, "not yet", only_from=(S.STARTING,))
    assert reg.mark_failed(quiet, "spawn went wrong")
    assert reg.events[-1] == ("failed", quiet.name, "")
    assert reg.publisher.updates[-1] is u, "never announced, so not announced now"


def test_forget_announces_removed_once_and_drops_history(reg):
    t = ready(reg)
    reg.forget(t, "scale in")
    assert reg.publisher.events()[-1] == ("removed", t.name) and not t.announced
    assert reg.get(t.name) is None and reg.forgotten == [t.name]
    quiet = reg.reserve("g")
    reg.forget(quiet, "destroyed from outside")
    assert reg.events[-1][:2] == ("removed", quiet.name) and reg.publisher.events()[-1] == ("removed", t.name)
    silent = reg.reserve("g")
    n = len(reg.events)
    reg.forget(silent)
    assert len(reg.events) == n and reg.get(silent.name) is None


def test_relocate_announces_the_new_address_still_ready(reg):
    t = ready(reg)
    reg.relocate(t, "h2", "10.0.0.2", 21000, "live-migrated")
    u = reg.publisher.updates[-1]
    assert u.event == "moved" and [(r.host, r.address, r.port, r.state) for r in u.replicas] == \
        [("h2", "10.0.0.2", 21000, "ready")]
    assert reg.on_host("h2") == (t.name,) and reg.on_host("h1") == ()


def test_health_checks_fail_a_replica_after_the_limit(reg):
    t = ready(reg)
    assert reg.checks_due() == [t] and reg.checks_due() == []               # one check at a time
    assert not reg.checked(t, False, 2)
    reg.checks_due()
    assert reg.checked(t, False, 2) and t.fails == 2
    reg.checks_due()
    assert not reg.checked(t, None, 2) and not t.checking                  # not asked: nothing counted


def test_a_replica_of_a_down_host_is_lost_announced_failed_then_removed_and_kept_for_the_fence(reg):
    t = ready(reg, host="h2")
    other = ready(reg, host="h1")
    assert reg.lose(t, "its host h2 is down") and not reg.lose(t, "again")
    assert reg.publisher.events()[-2:] == [("failed", t.name), ("removed", t.name)]
    assert [r.name for r in reg.publisher.updates[-1].replicas] == [other.name]     # gone from the set at once
    assert t.state == S.LOST and not t.announced and reg.get(t.name) is t            # still tracked: unadoptable
    assert reg.lost_on("h2") == (t.name,) and reg.lost_on("h1") == ()
    assert not reg.mark_failed(t, "later") and reg.take(t.name, (S.READY, S.FAILED)) is None
    reg.fail_quietly(t)
    assert t.state == S.LOST
    warm = reg.reserve("g", park_mode="paused")
    reg.place(warm, host="h2")
    assert reg.lose(warm, "its host h2 is down") and reg.events[-1] == ("failed", warm.name, "h2")
    n = len(reg.publisher.updates)
    reg.forget(t, "destroyed by the fence of h2")        # the fence: gone, no second announcement
    assert reg.get(t.name) is None and len(reg.publisher.updates) == n
    assert reg.events[-1][:2] == ("removed", t.name)


def test_health_checks_skip_replicas_whose_host_is_not_up(reg):
    a, b = ready(reg, host="h1"), ready(reg, host="h2")
    assert reg.checks_due(lambda h: h != "h2") == [a] and not b.checking


def test_parked_forgets_the_cpu_history(reg):
    t = reg.reserve("g", park_mode="paused")
    assert reg.advance(t, (S.SPAWNING,), S.WARMING) and reg.advance(t, (S.WARMING,), S.PARKING)
    assert reg.advance(t, (S.PARKING,), S.PARKED) and reg.forgotten == [t.name]


def test_a_dry_run_announces_nothing(reg):
    reg.dry_run = True
    t = reg.reserve("g")
    reg.announce(t, "added", "would")
    assert reg.publisher.updates == [] and not t.announced


def test_one_table_of_events_and_states():
    assert EVENTS == tuple(EVENT_STATE) and set(STATES) == {s for s in EVENT_STATE.values() if s}
    assert sorted(PUBLISHED.values()) == sorted(STATES), "every published state is a lifecycle state"


def test_only_the_registry_takes_its_lock():
    """The rule docs/architecture.md states: modules that may take the registry's lock: registry.py."""
    offenders = []
    for path in sorted((ROOT / "cms").rglob("*.py")) + sorted((ROOT / "bench").rglob("*.py")) \
            + sorted((ROOT / "tests").rglob("*.py")):
        if path.name in ("registry.py", "test_registry.py"):
            continue
        if re.search(r"\bregistry\._lock\b|\._tracks\b|\bexecutor\.lock\b|\bscaler\.lock\b", path.read_text()):
            offenders.append(str(path.relative_to(ROOT)))
    assert offenders == []
