"""Scaling policies: pure functions from plain data to a Decision, chosen per group by
``GroupConfig.policy``:

* ``threshold`` and ``target`` (Kubernetes HPA) on CPU: cms.policy.cpu, which says what
  they share and why a new replica's capacity counts before its CPU does;
* ``concurrency`` (Knative's KPA) on requests in flight: cms.policy.concurrency.

cms.policy.base holds what they share: the input (``PolicyInput``, a ``ReplicaSeries`` per
ready replica), the ``Decision``, the clamp to [min, max], the holds (cooldown, starting,
warm-up), the sustained-window rule, and ``Memory`` (what a group's policy carries between
ticks). No I/O and no clock anywhere here: the daemon passes ``now`` and its samples.
"""

from __future__ import annotations

from cms.config import GroupConfig
from cms.policy.base import (NONE, SCALE_IN, SCALE_OUT, Decision, Memory, PolicyInput, ReplicaSeries,  # noqa: F401
                             Series, clamp, settled_since, warming, window_values)
from cms.policy.concurrency import concurrency, window_in_flight  # noqa: F401
from cms.policy.cpu import group_series, hpa_desired, target, threshold  # noqa: F401

POLICIES = {"threshold": threshold, "target": target, "concurrency": concurrency}


def reads_s(gc: GroupConfig) -> float:
    """How far back the group's policy reads its samples (a shorter history decides the same)."""
    if gc.policy == "threshold":
        return max(gc.threshold.window_s, gc.threshold.window_in_s)
    return gc.concurrency.stable_window_s if gc.policy == "concurrency" else 0.0


def decide(gc: GroupConfig, inp: PolicyInput) -> Decision:
    return POLICIES[gc.policy](gc, inp)
