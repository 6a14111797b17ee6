"""Scaling policies: pure functions from plain data to a Decision.

No I/O and no clock here: the daemon passes ``now`` and the samples it has. Two policies,
chosen per group by ``GroupConfig.policy``:

* ``threshold``: scale out by one when the group's mean CPU has stayed above ``high`` for
  ``window_s``; in by one when it has stayed below ``low`` for ``window_in_s``.
* ``target`` (Kubernetes HPA): ``desired = ceil(current * mean / target)`` unless the ratio
  is within ``tolerance``; a scale-down takes the highest recommendation of the last
  ``stabilization_s``; one action changes the count by at most ``max_step``.

Rules both share:

* the count is clamped to [min, max]; below min means scale out whatever else holds;
* a replica's samples count only from ``warmup_s`` after it became ready (boot noise);
* a tick where any counted replica has no figure is missing data: it breaks a "stayed
  above/below" run and never leads to a scale-in;
* after an action nothing happens for ``cooldown_s``, and the windows restart from the
  action, so oscillating load gives at most one action per cooldown;
* no policy action while a replica is still starting (its capacity is not in yet);
* no policy action while a replica is in its warm-up either, and the windows restart when
  the last warm-up ends (below: new capacity).

New capacity (issue 17): a replica that has just become ready counts in ``current`` (its
capacity), but for ``warmup_s`` neither its CPU nor any decision does: the policy holds
as it does for a starting replica, and when the warm-up ends the windows start again,
so no decision reads a sample taken before the new capacity served.

Decision: AWS EC2 Auto Scaling's rule (target tracking counts a warming instance's
capacity but not its metrics, and does not scale out again on metrics the warming
capacity has not yet had a chance to move), not Kubernetes HPA's (an unready pod counts
at 0 % for a scale-up). Why:

* A window of samples is a record of the past. Samples from before the new replica served
  describe a group that no longer exists: with a boot longer than the window (a 6-11 s boot
  under TCG, a 4 s window) the whole window was measured on the old replicas alone, and
  HPA's 0 % only dilutes those stale figures; it does not replace them. It would scale out
  again whenever the old replicas ran above 2 x high, however much the new one relieves them.
* Right after ready, a replica's own figures are boot noise (hence ``warmup_s``); counting
  it at 0 % instead would make the group look idle and invite a scale-in after every
  scale-out in the target policy.
* Holding until the warm-up ends costs at most ``warmup_s`` + one window before a second
  scale-out that is really needed, and the cooldown already spans much of that.

Both policies apply it: ``threshold`` and ``target`` hold while any counted replica is
starting or warming up, and read their samples only from the later of the last action and
the end of the newest replica's warm-up (``settled_since``).
"""

from __future__ import annotations

import bisect
import math
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


def _ts(point: tuple[float, float | None]) -> float:
    return point[0]


def group_series(replicas: tuple[ReplicaSeries, ...], warmup_s: float,
                 since: float | None = None) -> list[tuple[float, float | None]]:
    """The group's mean CPU per tick over replicas past their warm-up.

    A tick where a counted replica has no figure (None or no sample at that ts) is None;
    so is a tick with no counted replica at all.
    """
    counted = [(r.ready_at + warmup_s, dict(r.samples)) for r in replicas if r.ready_at is not None]
    stamps = sorted({ts for r in replicas for ts, _ in r.samples if since is None or ts > since})
    out: list[tuple[float, float | None]] = []
    for ts in stamps:
        total, n = 0.0, 0
        for start, samples in counted:
            if ts < start:
                continue
            v = samples.get(ts)
            if v is None:
                n = 0       # a counted replica without a figure: the tick is missing
                break
            total += v
            n += 1
        out.append((ts, total / n if n else None))
    return out


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


def threshold(gc: GroupConfig, inp: PolicyInput) -> Decision:
    c = _outside(gc, inp)
    if c:
        return c
    series = group_series(inp.replicas, gc.warmup_s, since=settled_since(gc, inp))
    mean = series[-1][1] if series else None
    hold = _hold(gc, inp)
    if hold:
        return Decision(NONE, inp.current, hold, mean)
    t = gc.threshold
    # The window's mean decides; a guard on every tick keeps a lone spike from deciding:
    # out needs no tick at or below low, in needs no tick at or above high. Per-tick
    # figures jump with each request at low rates and with host contention at high ones,
    # so "every tick past the threshold" alone would act late or never.
    out_vals = window_values(series, inp.now, t.window_s)
    if out_vals and sum(out_vals) / len(out_vals) > t.high and min(out_vals) > t.low:
        if inp.current >= gc.max:
            return Decision(NONE, inp.current, f"cpu mean over {t.window_s:g}s > high {t.high:g} "
                                               f"but already at max {gc.max}", mean)
        return Decision(SCALE_OUT, inp.current + 1,
                        f"cpu mean over {t.window_s:g}s {_fmt(sum(out_vals) / len(out_vals))} > high {t.high:g}", mean)
    in_vals = window_values(series, inp.now, t.window_in_s)
    if in_vals and sum(in_vals) / len(in_vals) < t.low and max(in_vals) < t.high:
        if inp.current <= gc.min:
            return Decision(NONE, inp.current, f"cpu mean over {t.window_in_s:g}s < low {t.low:g} "
                                               f"but already at min {gc.min}", mean)
        return Decision(SCALE_IN, inp.current - 1,
                        f"cpu mean over {t.window_in_s:g}s {_fmt(sum(in_vals) / len(in_vals))} < low {t.low:g}", mean)
    if mean is None:
        return Decision(NONE, inp.current, "cpu mean n/a (missing or warming-up samples): holding", mean)
    return Decision(NONE, inp.current, f"cpu mean {_fmt(mean)} within [{t.low:g}, {t.high:g}] "
                                       f"or not yet sustained (out {t.window_s:g}s, in {t.window_in_s:g}s)", mean)


def hpa_desired(current: int, mean: float, target: float, tolerance: float) -> int:
    """Kubernetes' formula: ceil(current * mean / target), or current within tolerance."""
    ratio = mean / target
    if abs(ratio - 1.0) <= tolerance:
        return current
    return max(0, math.ceil(current * ratio - 1e-9))


def target(gc: GroupConfig, inp: PolicyInput) -> Decision:
    c = _outside(gc, inp)
    if c:
        return c
    t = gc.target
    series = group_series(inp.replicas, gc.warmup_s, since=settled_since(gc, inp))
    mean = series[-1][1] if series else None
    if mean is None:
        return Decision(NONE, inp.current, "cpu mean n/a (missing or warming-up samples): holding", mean)
    raw = hpa_desired(inp.current, mean, t.target, t.tolerance)
    raw = clamp(gc, raw)
    # Scale-down stabilization: the highest recommendation within the window wins.
    recent = [d for ts, d in inp.recommendations if inp.now - ts <= t.stabilization_s] + [raw]
    desired = raw if raw >= inp.current else min(inp.current, max(recent))
    desired = max(inp.current - t.max_step, min(inp.current + t.max_step, desired))
    why = (f"cpu mean {mean:.2f} vs target {t.target:g} (tolerance {t.tolerance:g}): "
           f"ceil({inp.current} x {mean:.2f} / {t.target:g}) = {raw}")
    if desired < inp.current and raw < inp.current and desired != raw:
        why += f"; stabilized over {t.stabilization_s:g}s to {desired}"
    hold = _hold(gc, inp)
    if desired == inp.current:
        return Decision(NONE, desired, why + " -> no change" + (f"; {hold}" if hold else ""), mean, raw)
    if hold:
        return Decision(NONE, inp.current, f"{why} -> {desired}, but {hold}", mean, raw)
    action = SCALE_OUT if desired > inp.current else SCALE_IN
    return Decision(action, desired, f"{why} -> {desired} (max step {t.max_step})", mean, raw)


def window_in_flight(replicas: tuple[ReplicaSeries, ...], now: float, window_s: float,
                     since: float | None = None) -> tuple[float | None, bool]:
    """The group's mean requests in flight over (now - window_s, now] (and after ``since``):
    per tick the sum over the replicas that have a figure, averaged over the ticks; None with
    no figure at all. And whether the window is whole: every replica had its figure at every
    tick it was ready, and one reaches back to the window's start with a figure. A missing
    figure only lowers a sum, so it never makes a scale-out; scale-in wants the window whole.

    Series are in time order and share the group's tick stamps (a replica's are a suffix of
    the oldest one's), so the window is bisected and its ticks are the longest run in it."""
    start = now - window_s - 1e-9 if since is None else max(now - window_s - 1e-9, since)
    edge = now - window_s + 1e-9
    total, ticks, whole, reach = 0.0, 0, True, False
    for r in replicas:
        pts = r.in_flight
        if r.ready_at is None or not pts:
            continue
        j = bisect.bisect_right(pts, edge, key=_ts) - 1      # the last point at or before the start
        if j >= 0 and pts[j][1] is not None and pts[j][0] >= r.ready_at and (since is None or pts[j][0] > since):
            reach = True
        # points before it was ready are no gaps: it was not serving then
        window = pts[bisect.bisect_right(pts, max(start, r.ready_at - 1e-9), key=_ts):]
        vals = [v for _t, v in window if v is not None]
        whole = whole and len(vals) == len(window)
        total += sum(vals)
        ticks = max(ticks, len(window))
    return (total / ticks if ticks else None), whole and reach


def _group_p95(replicas: tuple[ReplicaSeries, ...], now: float, window_s: float) -> float | None:
    """The mean over the window of each tick's worst replica p95 (the requests a slow replica
    holds are felt), over the ticks that have one."""
    worst: dict[float, float] = {}
    for r in replicas:
        for ts, v in r.p95:
            if v is not None and ts > now - window_s - 1e-9:
                worst[ts] = max(worst.get(ts, 0.0), v)
    return sum(worst.values()) / len(worst) if worst else None


def _wants(in_flight: float, per: float) -> int:
    return math.ceil(in_flight / per - 1e-9)


def concurrency(gc: GroupConfig, inp: PolicyInput) -> Decision:
    """Knative's KPA: desired = ceil(in flight / (target x utilization)) over the stable
    window, or over the panic window when that alone asks for panic_threshold x the ready
    replicas; the whole difference in one decision, within max and max_step. Scale-out needs
    no cooldown (the count is absolute: asking again for what is coming adds nothing);
    scale-in needs a whole stable window after the last action, nothing starting, and no
    panic within the last stable window."""
    c = _outside(gc, inp)
    if c:
        return c
    k = gc.concurrency
    per = (k.target_in_flight or gc.vcpus) * k.utilization
    ready = max(1, inp.current - inp.starting)
    s_mean, _ = window_in_flight(inp.replicas, inp.now, k.stable_window_s)
    p_mean, _ = window_in_flight(inp.replicas, inp.now, k.panic_window_s)
    if s_mean is None or p_mean is None:
        return Decision(NONE, inp.current, "in-flight n/a (no figures from the replicas yet): holding")
    s_want, p_want = _wants(s_mean, per), _wants(p_mean, per)
    over_panic = p_mean / per >= k.panic_threshold * ready
    panicking = over_panic or (inp.panic_at is not None and inp.now - inp.panic_at < k.stable_window_s)
    mean, window, raw = (p_mean, k.panic_window_s, max(s_want, p_want)) if panicking else (s_mean, k.stable_window_s, s_want)
    p95 = _group_p95(inp.replicas, inp.now, k.panic_window_s) if k.latency_p95_s else None
    data = {"over_panic": over_panic, "panicking": panicking, "in_flight_stable": round(s_mean, 3),
            "in_flight_panic": round(p_mean, 3), "stable_wants": s_want, "panic_wants": p_want, "p95_s": p95}
    tgt = f"{k.target_in_flight:g}" if k.target_in_flight else f"{gc.vcpus} vCPU"
    why = f"in-flight {mean:.1f} over {window:g} s against {tgt} x {k.utilization:g} per replica: {inp.current} -> {raw}"
    if over_panic:
        why += f" (panic: the {k.panic_window_s:g} s window alone asks for {p_want}, >= {k.panic_threshold:g} x {ready} ready)"
    hold = _hold(gc, inp)
    if p95 is not None and p95 > k.latency_p95_s and raw <= inp.current:
        why += f"; p95 {p95:.2f} s over {k.panic_window_s:g} s > bound {k.latency_p95_s:g} s"
        if hold:
            return Decision(NONE, inp.current, f"{why}, but {hold}", mean, data=data)
        raw = inp.current + 1
        why += f": {inp.current} -> {raw}"
    if raw > inp.current:
        desired = max(gc.min, min(raw, gc.max, inp.current + k.max_step))
        if raw > gc.max:
            why += f", capped at max {gc.max}"
        if desired < min(raw, gc.max):
            why += f", max step {k.max_step}"
        if desired > inp.current:
            return Decision(SCALE_OUT, desired, why, mean, data=data)
        return Decision(NONE, inp.current, f"{why}: already at max", mean, data=data)
    if raw == inp.current:
        return Decision(NONE, inp.current, f"{why}: no change", mean, data=data)
    # scale-in: the stable window, whole and after the last action; never while panicking
    if panicking:
        return Decision(NONE, inp.current, f"{why}, but panicking: no scale-in until a stable window passes "
                                           f"without panic", mean, data=data)
    settled, whole = window_in_flight(inp.replicas, inp.now, k.stable_window_s, since=inp.last_action_at)
    if hold or not whole or settled is None:
        wait = hold or f"the {k.stable_window_s:g} s window is not whole (since the last action, every figure)"
        return Decision(NONE, inp.current, f"{why}, but {wait}", mean, data=data)
    desired = max(gc.min, inp.current - k.max_step, _wants(settled, per))
    if desired >= inp.current:
        return Decision(NONE, inp.current, f"{why}, but the window since the last action asks for {desired}: "
                                           "no change" if desired > gc.min else f"{why}: already at min", mean, data=data)
    return Decision(SCALE_IN, desired, why + (f", max step {k.max_step}" if desired > max(gc.min, raw) else ""),
                    mean, data=data)


POLICIES = {"threshold": threshold, "target": target, "concurrency": concurrency}


def reads_s(gc: GroupConfig) -> float:
    """How far back the group's policy reads its samples (a shorter history decides the same)."""
    if gc.policy == "threshold":
        return max(gc.threshold.window_s, gc.threshold.window_in_s)
    return gc.concurrency.stable_window_s if gc.policy == "concurrency" else 0.0


def decide(gc: GroupConfig, inp: PolicyInput) -> Decision:
    return POLICIES[gc.policy](gc, inp)
