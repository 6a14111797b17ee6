"""The replay's model fitted from a recorded run (cms.replay.model says what each figure means).

* boot and unpark times from the group's spawn-stage events: a cold replica's "ready" event
  carries its decision -> ready and its boot (started -> /health) times; "warm_used" the
  decision -> ready of an unpark, by park mode; "warm_prepared"/"warm_parked" the park time.
  Medians, so one slow boot does not make every boot slow;
* the CPU of a request: per tick, the ready replicas' busy vCPUs against the requests
  completed, by least squares (busy = idle x vCPUs + cost x completed), over the ticks below
  saturation. Completed requests come from the load client's record;
* a saturated replica's CPU: the 95th percentile of the ready replicas' mean CPU, when the
  run saturated them at all;
* the latency factor: the client's p95 over the model's processor-sharing time, median over
  the unsaturated ticks.

A figure the records do not hold keeps its default; ``Model.fitted`` says where each came from.
"""

from __future__ import annotations

import bisect
import dataclasses
import statistics
from typing import Any

from cms.replay.inputs import ClientRecord, Recorded
from cms.replay.model import RHO_CAP, Model

SATURATED = 0.85          # a tick whose mean CPU is above this is left out of the cost fit
MIN_TICKS = 10


def _median(xs: list[float]) -> float | None:
    return statistics.median(xs) if xs else None


def stages(events: list[Any]) -> dict[str, Any]:
    """Spawn, boot, unpark and park times from the events."""
    cold = [e.data for e in events if e.kind == "ready" and e.data.get("boot_s") is not None]
    out: dict[str, Any] = {}
    boot = _median([float(d["boot_s"]) for d in cold])
    if boot is not None:
        out["boot_s"] = boot
    spawn = _median([max(0.0, float(d["decision_to_ready_s"]) - float(d["boot_s"]))
                     for d in cold if d.get("decision_to_ready_s") is not None])
    if spawn is not None:
        out["spawn_s"] = spawn
    unpark: dict[str, float] = {}
    for mode in ("paused", "saved", "stopped"):
        m = _median([float(e.data["seconds"]) for e in events
                     if e.kind == "warm_used" and e.data.get("mode") == mode and e.data.get("seconds") is not None])
        if m is not None:
            unpark[mode] = m
    if unpark:
        out["unpark_s"] = unpark
    park = _median([float(e.data["park_s"]) for e in events
                    if e.kind in ("warm_prepared", "warm_parked") and e.data.get("park_s") is not None])
    if park is not None:
        out["park_s"] = park
    return out


def _completed_at(client: ClientRecord, start: float) -> tuple[list[float], list[float]]:
    return [ts - start for ts, _c, _p in client.ticks], [c for _ts, c, _p in client.ticks]


def cost(rec: Recorded, client: ClientRecord) -> tuple[float, float] | None:
    """(idle CPU, vCPU-seconds per request) by least squares over unsaturated ticks."""
    times, done = _completed_at(client, rec.start)
    xs1, xs2, ys = [], [], []
    for t, cpu, busy, vcpus in zip(rec.ticks, rec.cpu, rec.busy, rec.vcpus):
        if cpu is None or cpu > SATURATED or not vcpus:
            continue
        i = bisect.bisect_left(times, t)
        if i >= len(times) or times[i] - t > 1.5 * max(rec.tick_s, 1.0):
            continue
        xs1.append(float(vcpus))
        xs2.append(done[i])
        ys.append(busy)
    if len(ys) < MIN_TICKS:
        return None
    a11 = sum(x * x for x in xs1)
    a12 = sum(x * y for x, y in zip(xs1, xs2))
    a22 = sum(x * x for x in xs2)
    b1 = sum(x * y for x, y in zip(xs1, ys))
    b2 = sum(x * y for x, y in zip(xs2, ys))
    det = a11 * a22 - a12 * a12
    if det > 1e-9 * max(a11 * a22, 1e-12):
        idle, per = (b1 * a22 - b2 * a12) / det, (a11 * b2 - a12 * b1) / det
        if 0.0 <= idle < 0.5 and per > 0:
            return idle, per
    total = sum(xs2)
    return (0.0, sum(ys) / total) if total > 0 else None   # one load level: all of the CPU is the work's


def fit(rec: Recorded | None, client: ClientRecord | None, overrides: dict[str, Any] | None = None) -> Model:
    m = Model()
    fitted: dict[str, str] = {}
    changes: dict[str, Any] = {}
    if rec is not None:
        for k, v in stages(rec.events).items():
            changes[k] = {**m.unpark_s, **v} if k == "unpark_s" else v
            fitted[k] = "the group's spawn-stage events"
        cpus = sorted(c for c in rec.cpu if c is not None)
        if cpus and cpus[int(0.95 * (len(cpus) - 1))] >= 0.8:
            changes["cpu_busy"] = cpus[int(0.95 * (len(cpus) - 1))]
            fitted["cpu_busy"] = "95th percentile of the ready replicas' mean CPU"
    if client is not None:
        changes["conns_per_replica"] = client.conns_per_replica
        fitted["conns_per_replica"] = "the load client's --max-conns"
        fit_cost = cost(rec, client) if rec is not None else None
        if fit_cost is not None:
            idle, per = fit_cost
            busy = changes.get("cpu_busy", m.cpu_busy)
            changes.update(cpu_idle=idle, service_s=per / max(busy - idle, 1e-6))
            fitted["cpu_idle"] = fitted["service_s"] = "the ready replicas' CPU against the requests completed"
    m = dataclasses.replace(m, **changes)
    if client is not None and rec is not None:
        factor = latency_factor(rec, client, m)
        if factor is not None:
            m = dataclasses.replace(m, p95_factor=factor)
            fitted["p95_factor"] = "the load client's p95 over the model's, below saturation"
    for k, v in (overrides or {}).items():
        m = dataclasses.replace(m, **{k: {**m.unpark_s, **v} if k == "unpark_s" else v})
        fitted[k] = "[model] in the settings"
    return dataclasses.replace(m, fitted=fitted)


def latency_factor(rec: Recorded, client: ClientRecord, m: Model) -> float | None:
    times = [ts - rec.start for ts, _c, _p in client.ticks]
    ratios = []
    for t, cpu, vcpus in zip(rec.ticks, rec.cpu, rec.vcpus):
        if cpu is None or cpu > SATURATED or not vcpus:
            continue
        i = bisect.bisect_left(times, t)
        if i >= len(times) or times[i] - t > 1.5 * max(rec.tick_s, 1.0):
            continue
        _ts, done, p95 = client.ticks[i]
        rho = min(RHO_CAP, done * m.service_s / vcpus)
        if p95 is not None and done > 0:
            ratios.append(p95 / (m.service_s / (1.0 - rho)))
    return statistics.median(ratios) if len(ratios) >= MIN_TICKS else None
