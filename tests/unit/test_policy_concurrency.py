"""The concurrency policy (Knative's KPA), table-driven: in-flight series in, a Decision out."""

from __future__ import annotations

import pytest

from cms import policy
from cms.policy import PolicyInput, ReplicaSeries
from tests.support import make_config

NOW = 1000.0


def group(**kw):
    base = {"min": 1, "max": 4, "cooldown_s": 10, "warmup_s": 0, "policy": "concurrency"}
    for k, v in kw.items():
        base[k] = {**base.get(k, {}), **v} if isinstance(v, dict) else v
    return make_config(groups={"g": base}).groups["g"]


def rep(name, in_flight, p95=(), ready_at=0.0):
    """A ready replica with one in-flight figure per second ending at NOW (oldest first)."""
    n, m = len(in_flight), len(p95)
    return ReplicaSeries(name, ready_at, (), tuple((NOW - (n - 1 - i), v) for i, v in enumerate(in_flight)),
                         tuple((NOW - (m - 1 - i), v) for i, v in enumerate(p95)))


def inp(*replicas, current=None, **kw):
    return PolicyInput(now=NOW, current=len(replicas) if current is None else current, replicas=tuple(replicas), **kw)


STEADY = 61                                      # a whole 60 s window (its start included)
SPIKE = [0.2] * 54 + [4.0] * 7                   # idle, then the 6 s panic window at 4 in flight

CASES = [
    # (id, group overrides, input, action, desired, words in the reason)
    ("within target holds", {}, inp(rep("a", [0.6] * STEADY), rep("b", [0.6] * STEADY)), "none", 2, ["no change"]),
    ("the stable window asks for one more", {}, inp(rep("a", [1.0] * STEADY)), "scale_out", 2,
     ["in-flight 1.0 over 60 s against 1 vCPU x 0.7 per replica: 1 -> 2"]),
    ("panic sizes the whole step at once", {}, inp(rep("a", SPIKE)), "scale_out", 4,
     ["over 6 s", "1 -> 6", "panic", "capped at max 4"]),
    ("max_step bounds the step", {"max": 10, "concurrency": {"max_step": 2}}, inp(rep("a", SPIKE)), "scale_out", 3,
     ["1 -> 6", "max step 2"]),
    ("scale-out needs no cooldown", {}, inp(rep("a", SPIKE), last_action_at=NOW - 2), "scale_out", 4, []),
    ("replicas still starting count: asking again adds nothing", {},
     inp(rep("a", SPIKE), current=4, starting=3), "none", 4, ["already at max"]),
    ("the panic window below 2 x ready is no panic", {}, inp(rep("a", [0.2] * 54 + [1.3] * 7)), "none", 1,
     ["over 60 s", "no change"]),
    ("no scale-in while panicking", {},
     inp(rep("a", [0.1] * STEADY), rep("b", [0.1] * STEADY), rep("c", [0.1] * STEADY), panic_at=NOW - 30),
     "none", 3, ["panicking: no scale-in"]),
    ("a stable window without panic ends it: scale-in", {},
     inp(rep("a", [0.1] * STEADY), rep("b", [0.1] * STEADY), rep("c", [0.1] * STEADY), panic_at=NOW - 61),
     "scale_in", 1, ["over 60 s", "3 -> 1"]),
    ("scale-in max_step", {"concurrency": {"max_step": 1}},
     inp(rep("a", [0.1] * STEADY), rep("b", [0.1] * STEADY), rep("c", [0.1] * STEADY)), "scale_in", 2, ["max step 1"]),
    ("scale-in waits for a whole window after the last action", {},
     inp(rep("a", [0.1] * STEADY), rep("b", [0.1] * STEADY), last_action_at=NOW - 30), "none", 2, ["not whole"]),
    ("scale-in never on a missing figure", {},
     inp(rep("a", [0.1] * STEADY), rep("b", [0.1] * 30 + [None] + [0.1] * 30)), "none", 2, ["not whole"]),
    ("scale-in waits for the cooldown and starting replicas", {},
     inp(rep("a", [0.1] * STEADY), rep("b", [0.1] * STEADY), current=3, starting=1), "none", 3, ["starting"]),
    ("a missing figure never makes a scale-out", {}, inp(rep("a", [1.0] * STEADY), rep("b", [None] * STEADY)),
     "none", 2, ["no change"]),
    ("no figures yet holds", {}, inp(rep("a", []), rep("b", [])), "none", 2, ["n/a"]),
    ("target_in_flight and utilization", {"concurrency": {"target_in_flight": 4, "utilization": 0.5}},
     inp(rep("a", [3.0] * STEADY)), "scale_out", 2, ["against 4 x 0.5 per replica: 1 -> 2"]),
    ("the default target is the replica's vCPUs", {"vcpus": 2}, inp(rep("a", [1.2] * STEADY)), "none", 1,
     ["against 2 vCPU x 0.7", "no change"]),
    ("the latency bound adds one", {"concurrency": {"latency_p95_s": 1.0}},
     inp(rep("a", [0.6] * STEADY, [1.5] * 7), rep("b", [0.6] * STEADY, [0.4] * 7)), "scale_out", 3,
     ["p95 1.50 s over 6 s > bound 1 s: 2 -> 3"]),
    ("the latency bound waits for the cooldown", {"concurrency": {"latency_p95_s": 1.0}},
     inp(rep("a", [0.6] * STEADY, [1.5] * 7), rep("b", [0.6] * STEADY, [1.5] * 7), last_action_at=NOW - 5),
     "none", 2, ["> bound 1 s", "cooldown"]),
    ("the latency bound under it changes nothing", {"concurrency": {"latency_p95_s": 1.0}},
     inp(rep("a", [0.6] * STEADY, [0.5] * 7), rep("b", [0.6] * STEADY, [0.9] * 7)), "none", 2, ["no change"]),
    ("the latency bound blocks a scale-in", {"concurrency": {"latency_p95_s": 1.0}},
     inp(rep("a", [0.1] * STEADY, [2.0] * 7), rep("b", [0.1] * STEADY, [2.0] * 7)), "scale_out", 3, ["> bound"]),
    ("below min scales out regardless", {"min": 2}, inp(rep("a", [0.0] * STEADY)), "scale_out", 2, ["below minimum"]),
]


@pytest.mark.parametrize("name, over, given, action, desired, words", CASES, ids=[c[0] for c in CASES])
def test_concurrency(name, over, given, action, desired, words):
    d = policy.decide(group(**over), given)
    assert (d.action, d.desired) == (action, desired), d.reason
    for w in words:
        assert w in d.reason


def test_the_explanation_names_the_figures():
    """Issue 24's example: 14.2 in flight over the 6 s window, 3 replicas, a target of 1 at 0.7, max 6."""
    g = group(max=6, concurrency={"target_in_flight": 1})
    reps = [rep(n, [0.1] * 54 + [14.2 / 3] * 7) for n in "abc"]
    d = policy.decide(g, inp(*reps))
    assert (d.action, d.desired) == ("scale_out", 6)
    assert d.reason.startswith("in-flight 14.2 over 6 s against 1 x 0.7 per replica: 3 -> 21")
    assert d.reason.endswith("capped at max 6")
    assert d.data["over_panic"] and d.data["panic_wants"] == 21


def test_panic_is_remembered_only_through_panic_at():
    """The policy is pure: the daemon keeps the last tick the panic window was over (data
    over_panic) and passes it back as panic_at."""
    g = group()
    low = [rep(n, [0.1] * STEADY) for n in "abc"]
    assert policy.decide(g, inp(*low)).action == "scale_in"
    assert policy.decide(g, inp(*low, panic_at=NOW - 59.0)).action == "none"
    assert policy.decide(g, inp(rep("a", SPIKE))).data["over_panic"] is True
    assert policy.decide(g, inp(*low)).data["over_panic"] is False


def test_a_tick_without_a_figure_counts_at_the_replicas_mean():
    """A saturated guest may answer /status late: the ticks it has no figure for neither lower
    the group's in flight (which would hide the overload) nor raise it."""
    g = group()
    busy = [4.0, None] * 3 + [4.0]                              # every other poll late
    d = policy.decide(g, inp(rep("a", [0.2] * 54 + busy)))
    assert (d.action, d.desired) == ("scale_out", 4) and d.data["in_flight_panic"] == 4.0
