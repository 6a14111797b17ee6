"""The host state machine (cms.autoscaler.hoststate): table-driven, with an injected clock."""

from __future__ import annotations

import pytest

from cms.autoscaler.hoststate import LOST, PLACEABLE, RULES, STATE_OF, TRANSITIONS, HostState, HostTrack, Seen, step

H = HostState
DOWN_S = 10.0


def at(state: HostState, *, last: float = 0.0, since: float = 0.0, misses: int = 0) -> HostTrack:
    return HostTrack("hv2", state, since, last, misses)


# (state before, answered, now, fenced) -> (state after, event kinds). The host last answered
# at 0 s; host_down_s is 10 s.
CASES = [
    ("up, answers", at(H.UP), True, 1.0, None, H.UP, ()),
    ("up, one miss", at(H.UP), False, 1.0, None, H.SUSPECT, ("host_suspect",)),
    ("up, a miss past host_down_s is still one miss first", at(H.UP), False, 11.0, None, H.SUSPECT,
     ("host_suspect",)),
    ("suspect, answers again", at(H.SUSPECT, misses=2), True, 3.0, None, H.UP, ("host_up",)),
    ("suspect, misses again within host_down_s", at(H.SUSPECT, misses=1), False, 9.9, None, H.SUSPECT, ()),
    ("suspect, silent for host_down_s", at(H.SUSPECT, misses=9), False, 10.0, None, H.DOWN, ("host_down",)),
    ("down, still silent", at(H.DOWN), False, 30.0, None, H.DOWN, ()),
    ("down, answers: fenced before anything else", at(H.DOWN), True, 31.0, None, H.FENCING, ("host_fencing",)),
    ("down, answers with a fence already done: still fencing first", at(H.DOWN), True, 31.0, ("a",), H.FENCING,
     ("host_fencing",)),
    ("fencing, answers, fence under way", at(H.FENCING, last=31.0), True, 32.0, None, H.FENCING, ()),
    ("fencing, fence done", at(H.FENCING, last=31.0), True, 32.0, ("cms-web-1",), H.UP, ("host_fenced", "host_up")),
    ("fencing, one miss: still fencing", at(H.FENCING, last=31.0), False, 32.0, None, H.FENCING, ()),
    ("fencing, silent for host_down_s again", at(H.FENCING, last=31.0), False, 41.0, None, H.DOWN, ("host_down",)),
    ("up, fenced names mean nothing outside fencing", at(H.UP), True, 1.0, ("x",), H.UP, ()),
]


@pytest.mark.parametrize("what, before, answered, now, fenced, state, kinds", CASES, ids=[c[0] for c in CASES])
def test_step(what, before, answered, now, fenced, state, kinds):
    after, events = step(before, answered, now, DOWN_S, why="timed out", fenced=fenced)
    assert after.state == state
    assert tuple(e.kind for e in events) == kinds
    assert all(e.host == "hv2" and e.reason.startswith("host hv2 ") for e in events)
    assert after.since == (now if state != before.state else before.since)
    if answered:
        assert after.last_answer == now and after.misses == 0 and after.why == ""
    else:
        assert after.last_answer == before.last_answer and after.misses == before.misses + 1
        assert after.why == "timed out"


def test_every_rule_moves_along_the_lifecycle_and_every_state_is_covered():
    for (src, seen), (dst, kinds) in RULES.items():
        assert dst == src or dst in TRANSITIONS[src]
        assert bool(kinds) == (dst != src), (src, seen)          # every move is an event, and only a move
        assert all(k == "host_fenced" or STATE_OF[k] == dst for k in kinds)
    for s in HostState:
        for seen in (Seen.ANSWERED, Seen.MISSED, Seen.SILENT):
            assert (s, seen) in RULES, (s, seen)
    assert TRANSITIONS == {H.UP: {H.SUSPECT}, H.SUSPECT: {H.UP, H.DOWN}, H.DOWN: {H.FENCING},
                           H.FENCING: {H.UP, H.DOWN}}
    assert PLACEABLE == {H.UP} and LOST == {H.DOWN, H.FENCING}


def test_a_lost_host_walks_the_whole_cycle_with_reasons():
    t = HostTrack.new("hv2", 100.0)
    seen = []
    for now, answered, fenced in [(101, True, None), (102, False, None), (105, False, None), (111, False, None),
                                  (140, False, None), (141, True, None), (142, True, ("cms-web-a", "cms-web-b")),
                                  (143, True, None)]:
        t, events = step(t, answered, float(now), DOWN_S, why="no route to host", fenced=fenced)
        seen += [(now, str(t.state), e.kind, e.reason, e.names) for e in events]
    assert seen == [
        (102, "suspect", "host_suspect", "host hv2 did not answer this tick: no route to host", ()),
        (111, "down", "host_down", "host hv2 has not answered for 10.0 s (host_down_s 10): no route to host", ()),
        (141, "fencing", "host_fencing", "host hv2 answers again after 40.0 s; fencing what was declared lost there "
                                         "before anything else runs on it", ()),
        (142, "up", "host_fenced", "host hv2 answers again; the 2 domain(s) declared lost there are destroyed: "
                                   "cms-web-a, cms-web-b", ("cms-web-a", "cms-web-b")),
        (142, "up", "host_up", "host hv2 is fenced and up again", ()),
    ]
    assert t.state == H.UP and t.since == 142.0


def test_a_host_that_flaps_is_never_declared_down():
    t = HostTrack.new("hv1", 0.0)
    kinds = []
    for now in range(1, 40):
        t, events = step(t, now % 3 != 0, float(now), DOWN_S)
        kinds += [e.kind for e in events]
        assert t.state in (H.UP, H.SUSPECT)
    assert set(kinds) == {"host_suspect", "host_up"}


def test_suspect_comes_back_with_the_count_of_its_misses_and_fencing_with_nothing_lost():
    t, _ = step(at(H.SUSPECT, misses=3), True, 4.0, DOWN_S)
    assert t.state == H.UP
    _t, (fenced, up) = step(at(H.FENCING, last=20.0), True, 21.0, DOWN_S, fenced=())
    assert fenced.reason == "host hv2 answers again; nothing declared lost was left there"
    assert up.reason == "host hv2 is fenced and up again"
    _t, (back,) = step(at(H.SUSPECT, misses=3), True, 4.0, DOWN_S)
    assert back.reason == "host hv2 answers again after 3 missed tick(s)"
    _t, (again,) = step(at(H.FENCING, last=20.0), False, 30.0, DOWN_S, why="EOF")
    assert again.reason == "host hv2 stopped answering again while being fenced: EOF"
