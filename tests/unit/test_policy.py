"""The scaling policies, table-driven: plain data in, a Decision out."""

from __future__ import annotations

import pytest

from cms import policy
from cms.policy import PolicyInput, ReplicaSeries
from tests.support import make_config

NOW = 1000.0


def group(**kw):
    base = {"min": 1, "max": 4, "cooldown_s": 10, "warmup_s": 0,
            "threshold": {"high": 0.75, "low": 0.25, "window_s": 5, "window_in_s": 10}}
    for k, v in kw.items():
        base[k] = {**base.get(k, {}), **v} if isinstance(v, dict) else v
    return make_config(groups={"g": base}).groups["g"]


def rep(name, values, ready_at=0.0, end=NOW):
    """A replica with one sample per second ending at `end` (oldest first)."""
    n = len(values)
    return ReplicaSeries(name, ready_at, tuple((end - (n - 1 - i), v) for i, v in enumerate(values)))


def inp(*replicas, current=None, **kw):
    return PolicyInput(now=kw.pop("now", NOW), current=len(replicas) if current is None else current,
                       replicas=tuple(replicas), **kw)


HIGH = [0.9] * 7
LOW = [0.1] * 12

THRESHOLD_CASES = [
    # (id, group overrides, input, expected action, expected desired, words in reason)
    ("sustained high scales out", {}, inp(rep("a", HIGH)), "scale_out", 2, ["> high 0.75", "5s"]),
    ("high but too short holds", {}, inp(rep("a", [0.1, 0.1, 0.1, 0.9, 0.9, 0.9])), "none", 1, ["not yet sustained"]),
    ("transient spike holds", {}, inp(rep("a", [0.9, 0.9, 0.9, 0.1, 0.9, 0.9, 0.9])), "none", 1, []),
    ("mean over replicas, not max", {}, inp(rep("a", HIGH), rep("b", [0.3] * 7)), "none", 2, ["within"]),
    ("both replicas high", {}, inp(rep("a", HIGH), rep("b", HIGH)), "scale_out", 3, []),
    ("sustained low scales in", {}, inp(rep("a", LOW), rep("b", LOW)), "scale_in", 1, ["< low 0.25", "10s"]),
    ("low but at min holds", {}, inp(rep("a", LOW)), "none", 1, ["already at min"]),
    ("high but at max holds", {"max": 2}, inp(rep("a", HIGH), rep("b", HIGH)), "none", 2, ["already at max"]),
    ("below min scales out regardless", {"min": 2}, inp(rep("a", LOW)), "scale_out", 2, ["below minimum"]),
    ("below min ignores cooldown", {"min": 2}, inp(rep("a", LOW), last_action_at=NOW - 1), "scale_out", 2, []),
    ("above max scales in", {"max": 1}, inp(rep("a", HIGH), rep("b", HIGH)), "scale_in", 1, ["above maximum"]),
    ("zero replicas, min 1", {}, inp(current=0), "scale_out", 1, []),
    ("cooldown holds", {}, inp(rep("a", HIGH), last_action_at=NOW - 5), "none", 1, ["cooldown"]),
    ("after cooldown the window restarts at the action", {},
     inp(rep("a", [0.9] * 20), last_action_at=NOW - 12), "scale_out", 2, []),
    ("window counted only after the action", {"cooldown_s": 0},
     inp(rep("a", [0.9] * 20), last_action_at=NOW - 3), "none", 1, []),
    ("missing sample breaks the high run", {}, inp(rep("a", [0.9, 0.9, 0.9, None, 0.9, 0.9, 0.9])), "none", 1, []),
    ("missing sample never scales in", {},
     inp(rep("a", LOW), rep("b", LOW[:-1] + [None])), "none", 2, ["n/a"]),
    ("missing whole series never scales in", {}, inp(rep("a", []), rep("b", [])), "none", 2, ["n/a"]),
    # issue 17: a replica in warm-up counts as capacity, not in the mean, and holds the policy
    ("warming replica holds the policy like a starting one", {"warmup_s": 30},
     inp(rep("a", HIGH), rep("b", [0.0] * 7, ready_at=NOW - 5)), "none", 2, ["warm-up", "capacity counts"]),
    ("after the warm-up the window restarts at its end", {"warmup_s": 3},
     inp(rep("a", [0.9] * 20), rep("b", [0.9] * 20, ready_at=NOW - 6)), "none", 2, []),
    ("a whole window after the warm-up decides", {"warmup_s": 3},
     inp(rep("a", [0.9] * 20), rep("b", [0.9] * 20, ready_at=NOW - 9)), "scale_out", 3, ["> high"]),
    ("warming replica does not count towards scale in", {"warmup_s": 30},
     inp(rep("a", [0.5] * 12), rep("b", LOW, ready_at=NOW - 5)), "none", 2, []),
    ("not-ready replica left out", {},
     inp(rep("a", HIGH), ReplicaSeries("b", None, ())), "scale_out", 3, []),
    ("starting replica holds the policy", {}, inp(rep("a", HIGH), current=2, starting=1), "none", 2, ["starting"]),
    ("contended saturation (ticks 0.6-0.95) scales out", {},
     inp(rep("a", [0.95, 0.6, 0.9, 0.7, 0.95, 0.8, 0.85])), "scale_out", 2, ["mean over 5s"]),
    ("a tick at or below low blocks scale out", {},
     inp(rep("a", [0.95, 0.95, 0.95, 0.2, 0.99, 0.99, 0.99])), "none", 1, []),
    # scale-in looks at the window's mean: a lone request-sized spike does not reset it...
    ("spiky low load still scales in", {},
     inp(rep("a", [0.1] * 5 + [0.45] + [0.1] * 6), rep("b", LOW)), "scale_in", 1, ["over 10s"]),
    # ...but a tick above the high threshold does, and so does a mean above low
    ("a group tick above high blocks scale in", {},
     inp(rep("a", [0.1] * 5 + [0.95] + [0.1] * 6), rep("b", [0.1] * 5 + [0.9] + [0.1] * 6)), "none", 2, []),
    ("window mean above low holds", {}, inp(rep("a", [0.1, 0.5] * 6), rep("b", [0.1, 0.5] * 6)), "none", 2, []),
    ("low for less than the window holds", {}, inp(rep("a", [0.1] * 6), rep("b", [0.1] * 6)), "none", 2, []),
]


@pytest.mark.parametrize("case", THRESHOLD_CASES, ids=[c[0] for c in THRESHOLD_CASES])
def test_threshold(case):
    _id, over, pin, action, desired, words = case
    d = policy.decide(group(**over), pin)
    assert (d.action, d.desired) == (action, desired), d.reason
    for w in words:
        assert w in d.reason


def test_oscillating_load_at_most_one_action_per_cooldown():
    gc = group(cooldown_s=20, threshold={"window_s": 2, "window_in_s": 2})
    samples: list[tuple[float, float]] = []
    current, last, actions = 2, None, []
    for t in range(200):
        # 4 s high, 4 s low, over and over
        samples.append((float(t), 0.95 if (t // 4) % 2 == 0 else 0.05))
        d = policy.decide(gc, PolicyInput(now=float(t), current=current,
                                          replicas=(ReplicaSeries("a", -100.0, tuple(samples[-60:])),),
                                          last_action_at=last))
        if d.action != "none":
            actions.append(t)
            current, last = d.desired, float(t)
    gaps = [b - a for a, b in zip(actions, actions[1:])]
    assert actions and all(g >= 20 for g in gaps), actions


def overshoot_run(gc, *, boot_s: float, stay_high: bool, policy_name: str = "threshold") -> list[tuple[float, str, int]]:
    """One step of load on one replica, tick by tick (1 s): the policy scales out; the new
    replica boots for `boot_s`, is ready, then warms up. After it is ready the old replica
    works off the backlog queued during the overload for 4 more ticks, then its CPU falls
    to 0.5 (the client has moved half the load), unless `stay_high` (the load needs a
    third). Returns the actions (t, action, desired)."""
    samples: dict[str, list[tuple[float, float]]] = {"a": [], "b": []}
    current, last, starting, b_ready, actions = 1, None, 0, None, []
    for t in range(0, 60):
        now = float(t)
        if b_ready is None and last is not None and now >= last + boot_s:
            b_ready, starting = now, 0
        after_ready = b_ready is not None and now >= b_ready + 4
        samples["a"].append((now, 0.93 if stay_high or not after_ready else 0.5))
        if b_ready is not None and now >= b_ready:
            samples["b"].append((now, 0.93 if stay_high else 0.5))
        reps = [ReplicaSeries("a", -100.0, tuple(samples["a"]))]
        if current >= 2:
            reps.append(ReplicaSeries("b", b_ready, tuple(samples["b"])))
        d = policy.decide(gc, PolicyInput(now=now, current=current, starting=starting, replicas=tuple(reps),
                                          last_action_at=last))
        if d.action != "none":
            actions.append((now, d.action, d.desired))
            if d.action == "scale_out" and current == 1:
                starting = 1
            current, last = d.desired, now
    return actions


@pytest.mark.parametrize("boot_s, cooldown_s", [(11, 15), (3, 1)],
                         ids=["boot longer than the window, shorter than the cooldown",
                              "boot shorter than the window, longer than the cooldown"])
def test_no_second_scale_out_on_samples_from_before_the_new_capacity(boot_s, cooldown_s):
    gc = group(max=3, cooldown_s=cooldown_s, warmup_s=3, threshold={"window_s": 4, "window_in_s": 600})
    actions = overshoot_run(gc, boot_s=boot_s, stay_high=False)
    assert [(a, d) for _t, a, d in actions] == [("scale_out", 2)], actions
    # not "never again": when both replicas stay hot after the warm-up, the third comes
    actions = overshoot_run(gc, boot_s=boot_s, stay_high=True)
    assert [(a, d) for _t, a, d in actions] == [("scale_out", 2), ("scale_out", 3)], actions
    second = actions[1][0]
    ready = actions[0][0] + boot_s
    assert second >= ready + gc.warmup_s + gc.threshold.window_s, "decided on samples from before the warm-up ended"


@pytest.mark.parametrize("boot_s, cooldown_s", [(11, 15), (3, 1)])
def test_target_policy_holds_through_the_warm_up_too(boot_s, cooldown_s):
    gc = make_config(groups={"g": {"min": 1, "max": 3, "policy": "target", "cooldown_s": cooldown_s, "warmup_s": 3,
                                   "target": {"target": 0.6, "tolerance": 0.1, "max_step": 1}}}).groups["g"]
    actions = overshoot_run(gc, boot_s=boot_s, stay_high=False)
    assert [(a, d) for _t, a, d in actions] == [("scale_out", 2)], actions


def test_group_series_aligns_ticks_and_marks_missing():
    a = ReplicaSeries("a", 0.0, ((1.0, 0.2), (2.0, 0.4), (3.0, 0.6)))
    b = ReplicaSeries("b", 0.0, ((1.0, 0.4), (3.0, None)))
    assert policy.group_series((a, b), 0.0) == [(1.0, pytest.approx(0.3)), (2.0, None), (3.0, None)]


# --- target (HPA) --------------------------------------------------------------------------

@pytest.mark.parametrize("current, mean, target, tol, want", [
    (1, 0.9, 0.6, 0.1, 2),     # ceil(1.5)
    (2, 0.9, 0.6, 0.1, 3),
    (3, 0.6, 0.6, 0.1, 3),
    (3, 0.65, 0.6, 0.1, 3),    # within tolerance
    (3, 0.67, 0.6, 0.1, 4),    # just outside
    (4, 0.3, 0.6, 0.1, 2),
    (4, 0.0, 0.6, 0.1, 0),
    (2, 0.6 * 1.5, 0.6, 0.0, 3),  # exact product: no float round-up to 4
    (10, 0.61, 0.6, 0.0, 11),
])
def test_hpa_formula(current, mean, target, tol, want):
    assert policy.hpa_desired(current, mean, target, tol) == want


def tgroup(**t):
    base = {"target": 0.6, "tolerance": 0.1, "stabilization_s": 30, "max_step": 1}
    base.update(t)
    return group(policy="target", max=10, target=base, cooldown_s=0)


TARGET_CASES = [
    ("over target scales out one step", {}, inp(rep("a", [0.95]), rep("b", [0.95])), "scale_out", 3),
    ("max_step 3 goes further", {"max_step": 3}, inp(rep("a", [1.0]), rep("b", [1.0])), "scale_out", 4),
    ("clamped to max", {"max_step": 50}, inp(*[rep(str(i), [1.0]) for i in range(8)]), "scale_out", 10),
    ("within tolerance holds", {}, inp(rep("a", [0.63]), rep("b", [0.58])), "none", 2),
    ("under target scales in", {}, inp(rep("a", [0.1]), rep("b", [0.1]), rep("c", [0.1])), "scale_in", 2),
    ("stabilization keeps the highest recent recommendation", {},
     inp(rep("a", [0.1]), rep("b", [0.1]), rep("c", [0.1]), recommendations=((NOW - 10, 3),)), "none", 3),
    ("old recommendations expire", {},
     inp(rep("a", [0.1]), rep("b", [0.1]), rep("c", [0.1]), recommendations=((NOW - 40, 3),)), "scale_in", 2),
    ("stabilization does not hold back scale out", {},
     inp(rep("a", [1.0]), recommendations=((NOW - 5, 1),)), "scale_out", 2),
    ("missing data holds", {}, inp(rep("a", [None]), rep("b", [0.0])), "none", 2),
    ("warming replicas only: holds", {}, inp(rep("a", [0.0], ready_at=NOW + 1)), "none", 1),
]


@pytest.mark.parametrize("case", TARGET_CASES, ids=[c[0] for c in TARGET_CASES])
def test_target(case):
    _id, over, pin, action, desired = case
    d = policy.decide(tgroup(**over), pin)
    assert (d.action, d.desired) == (action, desired), d.reason
    if action != "none":
        assert "target 0.6" in d.reason and "ceil(" in d.reason


def test_target_cooldown_and_recommendation_recorded():
    gc = group(policy="target", max=10, cooldown_s=30)
    d = policy.decide(gc, inp(rep("a", [1.0]), rep("b", [1.0]), last_action_at=NOW - 10))
    assert d.action == "none" and "cooldown" in d.reason and d.recommendation == 4
