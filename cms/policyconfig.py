"""The scaling policies' keys, ``[groups.NAME.threshold]``, ``.target`` and ``.concurrency``:
part of the schema cms.config loads (it imports them into GroupConfig), kept here beside
each other so the policies' settings read as one table. cms.policy says what each does.
"""

from __future__ import annotations

from dataclasses import dataclass

from cms.configschema import setting


@dataclass(frozen=True)
class ThresholdPolicyConfig:
    """groups.NAME.threshold: the threshold policy's limits and windows (cms.policy)."""
    high: float = setting(0.75, min=0.0, max=1.0, doc="scale out when the group's mean CPU stays above this")
    low: float = setting(0.25, min=0.0, max=1.0, doc="scale in when it stays below this")
    window_s: float = setting(5.0, min=0.0, max=3600.0, doc="how long it must stay above high")
    window_in_s: float = setting(20.0, min=0.0, max=3600.0, doc="how long it must stay below low")


@dataclass(frozen=True)
class TargetPolicyConfig:
    """groups.NAME.target: the target-tracking policy, Kubernetes HPA's rule (cms.policy)."""
    target: float = setting(0.6, min=0.01, max=1.0, doc="desired mean CPU utilization")
    tolerance: float = setting(0.1, min=0.0, max=1.0, doc="no action while |mean/target - 1| <= tolerance")
    stabilization_s: float = setting(30.0, min=0.0, max=3600.0, doc="scale-down takes the highest recommendation in this window")
    max_step: int = setting(1, min=1, max=100, doc="most replicas added or removed in one action")


@dataclass(frozen=True)
class ConcurrencyPolicyConfig:
    """groups.NAME.concurrency: sized on requests in flight, Knative's KPA (cms.policy)."""
    target_in_flight: float = setting(0.0, min=0.0, max=100000.0, doc="requests in flight one replica should carry; "
                                                                       "0: its vCPUs")
    utilization: float = setting(0.7, min=0.01, max=1.0, doc="share of target_in_flight aimed at: headroom for bursts")
    stable_window_s: float = setting(60.0, min=1.0, max=3600.0, doc="the mean in flight over this sizes the group")
    panic_window_s: float = setting(6.0, min=1.0, max=3600.0, doc="...unless this window alone asks for panic_threshold "
                                                                  "x the ready replicas: it decides then (panic)")
    panic_threshold: float = setting(2.0, min=1.0, max=100.0, doc="panic when the panic window asks this many times "
                                                                   "the ready replicas; no scale-in for a stable window after")
    max_step: int = setting(10, min=1, max=1000, doc="most replicas added or removed in one decision")
    latency_p95_s: float = setting(0.0, min=0.0, max=3600.0, doc="p95 latency over the panic window above this adds a "
                                                                 "replica, with the cooldown, nothing starting; 0: off")
