"""The audit: one plan from the model, each strategy in its turn over one planning state."""

from __future__ import annotations

import gc

from cms.hostplan.anti_affinity import anti_affinity
from cms.hostplan.consolidation import consolidate
from cms.hostplan.model import MIGRATE, BalancePlan, Limits, Model
from cms.hostplan.relief import relief
from cms.hostplan.state import PlanState
from cms.hostplan.vertical import vertical


def plan(m: Model, lim: Limits = Limits()) -> BalancePlan:
    """What to do now, and why: relief, anti-affinity and vertical scaling in that order (each
    sees the moves the earlier ones planned), then consolidation when none planned a move.

    The cyclic garbage collector is paused while planning: the plan makes no reference
    cycles, and a collection in the middle would only walk the caller's model (100,000
    VMs with their series), which costs more than the plan itself.
    """
    paused = gc.isenabled()
    gc.disable()
    try:
        st = PlanState(m, lim)
        if lim.relief:
            relief(st)
        if lim.anti_affinity:
            anti_affinity(st)
        vertical(st)
        if lim.consolidate and not any(a.kind == MIGRATE for a in st.plan.actions):
            consolidate(st)
        return st.plan
    finally:
        if paused:
            gc.enable()
