"""What every scaling policy shares: its input and output, the clamp, the holds, the windows.

Pure: plain data in, plain data out; no I/O and no clock (the daemon passes ``now``). The
policies are in cms.policy.cpu (threshold, target) and cms.policy.concurrency; cms.policy
picks one per group. ``Memory`` is what a group's policy carries from one tick to the next:
the daemon keeps one per group, and cms replay does the same with the same rules.
"""

from __future__ import annotations

import bisect
import collections
import operator
from dataclasses import dataclass, field
from typing import Sequence

from cms.config import GroupConfig

SCALE_OUT = "scale_out"
SCALE_IN = "scale_in"
NONE = "none"


Series = tuple[tuple[float, float | None], ...]


@dataclass(frozen=True)
class ReplicaSeries:
    """One replica as the policy sees it: when it became ready and its samples.

    ``samples`` are (ts, CPU utilization 0..1 or None), one per tick, with the tick's ts
    shared by all replicas of the group; ``in_flight`` (mean requests in flight over the
    tick) and ``p95`` (its answers' p95 latency in seconds) the same from its /status.
    ``ready_at`` None: not ready yet.
    """
    name: str
    ready_at: float | None
    samples: Series = ()
    in_flight: Series = ()
    p95: Series = ()


@dataclass(frozen=True)
class PolicyInput:
    now: float
    current: int                          # replicas that count: starting + ready
    starting: int = 0                     # of those, not ready yet
    replicas: tuple[ReplicaSeries, ...] = ()
    last_action_at: float | None = None
    # target policy: earlier recommendations (ts, desired) for scale-down stabilization
    recommendations: tuple[tuple[float, int], ...] = ()
    # concurrency policy: the last tick its panic window asked for panic_threshold x the ready ones
    panic_at: float | None = None


@dataclass(frozen=True)
class Decision:
    action: str                           # scale_out | scale_in | none
    desired: int
    reason: str
    mean: float | None = None
    recommendation: int | None = None     # target policy: record this for stabilization
    data: dict = field(default_factory=dict, compare=False)


@dataclass
class Memory:
    """One group's policy state between ticks: the last scaling action (the cooldown and the
    windows start there), the target policy's recommendations (scale-down stabilization) and
    the last tick the concurrency policy's panic window was over its threshold."""
    last_action_at: float | None = None
    recommendations: collections.deque = field(default_factory=lambda: collections.deque(maxlen=10000))
    panic_at: float | None = None

    def input(self, now: float, current: int, starting: int, replicas: tuple[ReplicaSeries, ...]) -> PolicyInput:
        return PolicyInput(now, current, starting, replicas, self.last_action_at, tuple(self.recommendations),
                           self.panic_at)

    def remember(self, gc: GroupConfig, d: Decision, now: float) -> None:
        """After a decision: what the next ticks must know of it."""
        recs = self.recommendations
        while recs and now - recs[0][0] > gc.target.stabilization_s:
            recs.popleft()
        if d.recommendation is not None:
            recs.append((now, d.recommendation))
        if d.data.get("over_panic"):
            self.panic_at = now
        if d.action != NONE:
            self.last_action_at = now

    def overridden(self, now: float) -> None:
        """A count asked through the API: an action too, and the recommendations start again."""
        self.last_action_at = now
        self.recommendations.clear()


_ts = operator.itemgetter(0)     # a series point's time (a C callable: bisect calls it per probe)


def window_values(series: Sequence[tuple[float, float | None]], now: float, window_s: float,
                  since: float | None = None) -> list[float] | None:
    """The sustained-window rule, the one copy (the scaling policies and host balancing use it):
    the values of the last window_s, or None unless samples taken after `since` cover the whole
    window with no missing figure (missing data never justifies an action).

    "Cover" means a sample at or before the window's start (now - window_s) with a figure,
    and figures for every sample inside it. `series` is (ts, value) in time order; a long
    history is bisected, not scanned.
    """
    lo = bisect.bisect_right(series, since, key=_ts) if since is not None else 0
    i = bisect.bisect_right(series, now - window_s - 1e-9, key=_ts, lo=lo)   # the window: series[i:]
    j = bisect.bisect_right(series, now - window_s + 1e-9, key=_ts, lo=lo)   # reaching back: series[lo:j]
    if i >= len(series) or j == lo or series[j - 1][1] is None:
        return None  # nothing yet, or the data does not reach back a whole window with a figure
    vals = [v for _t, v in series[i:]]
    return None if None in vals else vals  # type: ignore[return-value]


def warming(replicas: tuple[ReplicaSeries, ...], warmup_s: float, now: float) -> int:
    """Replicas ready but still in their warm-up: their capacity counts, their CPU not yet."""
    return sum(1 for r in replicas if r.ready_at is not None and now < r.ready_at + warmup_s)


def settled_since(gc: GroupConfig, inp: PolicyInput) -> float | None:
    """Where the windows start: the last action, or the end of the newest replica's warm-up
    if that is later. Samples before it describe capacity the group no longer has."""
    ends = [r.ready_at + gc.warmup_s for r in inp.replicas if r.ready_at is not None]
    points = [p for p in (inp.last_action_at, max(ends) if ends else None) if p is not None]
    return max(points) if points else None


def clamp(gc: GroupConfig, n: int) -> int:
    """A replica count within the group's min..max: the one place the rule is written (the
    policies, the planner's first count, a scale request through the API, the status)."""
    return max(gc.min, min(gc.max, n))


def _outside(gc: GroupConfig, inp: PolicyInput) -> Decision | None:
    """Below min or above max: back within them, whatever else holds."""
    want = clamp(gc, inp.current)
    if want > inp.current:
        return Decision(SCALE_OUT, want, f"below minimum: {inp.current} replicas < min {gc.min}")
    if want < inp.current:
        return Decision(SCALE_IN, want, f"above maximum: {inp.current} replicas > max {gc.max}")
    return None


def _hold(gc: GroupConfig, inp: PolicyInput) -> str | None:
    if inp.last_action_at is not None and inp.now - inp.last_action_at < gc.cooldown_s:
        left = gc.cooldown_s - (inp.now - inp.last_action_at)
        return f"cooldown: {left:.1f}s of {gc.cooldown_s:g}s left"
    if inp.starting:
        return f"waiting for {inp.starting} starting replica(s)"
    n = warming(inp.replicas, gc.warmup_s, inp.now)
    if n:
        return (f"waiting for {n} replica(s) in their {gc.warmup_s:g}s warm-up: their capacity counts, "
                f"their CPU not yet")
    return None


def _fmt(v: float | None) -> str:
    return "n/a" if v is None else f"{v:.2f}"
