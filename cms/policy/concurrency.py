"""The concurrency policy: Knative's KPA on each ready replica's requests in flight.

desired = ceil(in flight / (target x utilization)): the group's mean in flight (per tick
the sum over its ready replicas, from their /status, cms.histogram) over the stable
window, or over the panic window when that window alone asks for ``panic_threshold`` x
the ready replicas (panic). One decision takes the whole step, within ``max`` and
``max_step``. While panicking (until a stable window passes without the panic window over
its threshold: ``PolicyInput.panic_at``, which the daemon keeps in ``Memory``) there is no
scale-in. Why it needs neither the warm-up hold nor the cooldown for a scale-out, unlike
the CPU policies: its figure is demand, not a share of capacity, so a replica's boot noise
does not enter it and its count is absolute (asking again for replicas on their way adds
none); scale-in waits for a whole stable window after the last action, as the CPU
policies' windows restart there.
"""

from __future__ import annotations

import bisect
import math

from cms.config import GroupConfig
from cms.policy.base import NONE, SCALE_IN, SCALE_OUT, Decision, PolicyInput, ReplicaSeries, _hold, _outside, _ts


def window_in_flight(replicas: tuple[ReplicaSeries, ...], now: float, window_s: float,
                     since: float | None = None) -> tuple[float | None, bool]:
    """The group's mean requests in flight over (now - window_s, now] (and after ``since``):
    per tick the sum over the replicas ready then, averaged over the ticks; None with no
    figure at all. A tick a replica has no figure for (its /status did not answer in time:
    a busy guest) counts at that replica's mean over the window, so a slow answer neither
    lowers nor raises the sum; a replica with no figure at all counts 0 (it never makes a
    scale-out). And whether the window is whole: every replica had its figure at every tick
    it was ready, and one reaches back to the window's start with a figure: scale-in wants it.

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
        if vals:
            total += sum(vals) / len(vals) * len(window)
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
