"""Host balancing's planner: plain data in, a plan out (moves and resizes, each with its reason).

The shape is OpenStack Watcher's: an *audit* (cms.hostplan.audit.plan) of a cluster model
(cms.hostplan.model) yields an *action plan*, and an applier in the reconcile loop executes
it with limits. No I/O and no clock here: the caller passes ``now`` and what it measured.
One strategy per module, over the same model and one planning state (cms.hostplan.state,
which also keeps the limits), in the order they run:

  relief          a host hot over a window sheds the VM whose move evens the load most
  anti_affinity   two replicas of an anti-affine group on one host: one moves away
  vertical        a VM that opted in grows (or shrinks) in place, migrating first when it must
  consolidation   only when nothing above moved: empty the least-loaded host if the rest
                  can take its load with headroom; and the scale-in order that empties hosts

Each module's docstring gives its rule.
"""

from cms.hostplan.audit import plan
from cms.hostplan.consolidation import consolidate_order
from cms.hostplan.model import (MIGRATE, POWER_OFF, RESIZE, BalanceAction, BalancePlan, HostView, Limits, Model,
                                Vertical, VmView, sustained_mean)

__all__ = ["plan", "consolidate_order", "MIGRATE", "POWER_OFF", "RESIZE", "BalanceAction", "BalancePlan", "HostView",
           "Limits", "Model", "Vertical", "VmView", "sustained_mean"]
