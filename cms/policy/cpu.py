"""The CPU policies: ``threshold`` and ``target``.

Pure, as cms.policy.base says. Chosen per group by ``GroupConfig.policy``:

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

import math

from cms.config import GroupConfig
from cms.policy.base import (NONE, SCALE_IN, SCALE_OUT, Decision, PolicyInput, ReplicaSeries, _fmt, _hold, _outside,
                             clamp, settled_since, window_values)


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
