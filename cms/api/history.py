"""History for the console's charts: GET /v1/vms/{vmid}/metrics, /v1/hosts/{pmid}/metrics and
/v1/groups/{name}/metrics, downsampled on the server.

Each takes ``since`` and ``until`` (epoch seconds; default: the last hour up to now) and
``step`` (seconds per point; default: the range over ``DEFAULT_POINTS``). The answer lays
the range out as buckets ``[since + i*step, since + (i+1)*step)``: ``ts`` holds every
bucket's start, and each series holds one value per bucket, ``null`` where no sample fell.
So every series shares one time axis (what uPlot draws) and a range with no samples is a
valid answer of nulls, with ``points`` = 0. A bucket's value is the mean of its samples
(``cpu_max`` the peak), computed where the history is: in the state database (cms.store's
``*_buckets``), so a day of one-second samples never leaves it whole; or, with ``[history]
source = "prometheus"``, by Prometheus' ``query_range`` over what cms-autoscaler exports
(cms.promhistory answers the same calls), so both give the same shape and the same buckets.
The markers are events, which the state database keeps either way.

Bad ranges are 400s with the usual JSON error: a value that is not a finite number,
``since`` not before ``until``, a step that is not positive, or more than ``MAX_POINTS``
buckets.

What the series count:
- VM: ``cpu`` (0..1 of its own vCPUs, the autoscaler's figure), ``cpu_max``, ``vcpu`` (one
  series per vCPU), ``memory_mib`` (the balloon's current size, less the guest kernel's share) and ``vcpus``.
- host: ``cpu`` (0..1 of the host's CPUs taken by its cms domains), ``node_cpu`` (the node's
  own figure, where libvirt has it), ``free_memory_mib``, ``vms`` and ``vcpus``; plus
  ``domains``: each domain's share of the host's CPUs, to see which VM eats the host. The
  host rows come from the ``host_samples`` table; where it has none for the range, ``cpu``,
  ``vms`` and ``vcpus`` are summed from the per-domain samples instead (``source`` says
  which), and free RAM is null.
- group: ``cpu`` (the mean over its replicas), ``replicas`` (mean count over the bucket)
  and ``states`` (mean replicas in each state), ``in_flight`` (requests in flight per ready
  replica, from each tick's /status poll) and ``p95_s`` (the slowest replica's p95 latency
  that tick, its mean over the bucket), the policy's ``thresholds`` (CPU: ``high``/``low``
  or ``target``; none for ``concurrency``) and ``load`` (the in-flight per replica the
  concurrency policy aims at, ``target_in_flight`` x ``utilization``, and its
  ``latency_p95_s`` bound when set), and ``markers``: its decisions and scaling events in
  the range, with their reasons.
"""

from __future__ import annotations

import math
import time
from typing import Any, Callable, Iterable

from cms.api.failures import Invalid
from cms.api.machines import host_of
from cms.api.service import Service
from cms.promhistory import source as history_source

DEFAULT_RANGE_S = 3600.0
DEFAULT_POINTS = 300
MAX_POINTS = 2000
MAX_SECONDS = 1e10        # since, until and step above this (the year 2286) are refused, not computed
MARKER_KINDS = ("decision", "scale_override", "scale_request", "scale_out", "scale_in", "failed", "replaced")


def parse_range(get: Callable[[str], str | None], now: float) -> tuple[float, float, float, int]:
    """(since, until, step, buckets) from the query; Invalid (400) with the reason when bad."""
    def number(name: str) -> float | None:
        raw = get(name)
        if raw is None or raw == "":
            return None
        try:
            v = float(raw)
        except ValueError:
            raise Invalid(f"{name} must be a number (epoch seconds for since/until, seconds for step), "
                          f"got {raw!r}") from None
        if not 0 <= v <= MAX_SECONDS:      # also refuses nan and inf
            raise Invalid(f"{name} must be a number from 0 to {MAX_SECONDS:g}, got {raw!r}")
        return v

    until = number("until")
    until = now if until is None else until
    since = number("since")
    since = until - DEFAULT_RANGE_S if since is None else since
    if since >= until:
        raise Invalid(f"since ({since:g}) must be before until ({until:g})")
    step = number("step")
    if step is None:
        step = max(1.0, (until - since) / DEFAULT_POINTS)
    if step <= 0:
        raise Invalid("step must be above 0 seconds")
    ratio = (until - since) / step
    if not ratio <= MAX_POINTS:      # also catches an infinite ratio from a vanishing step
        raise Invalid(f"range {until - since:g} s / step {step:g} s asks for more than {MAX_POINTS} points: "
                      "raise step or narrow the range")
    return since, until, step, max(1, math.ceil(ratio))


def lay_out(rows: Iterable[Any], buckets: int, value: Callable[[Any], Any]) -> list[Any]:
    """One value per bucket from rows keyed by bucket index ``b``; None where no row."""
    out: list[Any] = [None] * buckets
    for r in rows:
        b = r["b"]
        if 0 <= b < buckets:
            out[b] = value(r)
    return out


def _r(v: float | None, nd: int = 4) -> float | None:
    return None if v is None else round(v, nd)


def _frame(since: float, until: float, step: float, buckets: int) -> dict[str, Any]:
    return {"since": since, "until": until, "step": step, "ts": [round(since + i * step, 3) for i in range(buckets)]}


def vm_metrics(svc: Service, vmid: int, since: float, until: float, step: float, buckets: int) -> dict[str, Any]:
    vm = svc.vms.get(vmid, full=True)
    rows = history_source(svc.cfg, svc.store).domain_buckets(vm["domain"], since, until, step)
    nvcpu = max((int(k[4:]) + 1 for r in rows for k in r.keys() if k.startswith("vcpu") and k[4:].isdigit()),
                default=0)
    series = {
        "cpu": lay_out(rows, buckets, lambda r: _r(r["cpu"])),
        "cpu_max": lay_out(rows, buckets, lambda r: _r(r["cpu_max"])),
        "memory_mib": lay_out(rows, buckets, lambda r: None if r["memory_kib"] is None else round(r["memory_kib"] / 1024, 1)),
        "vcpus": lay_out(rows, buckets, lambda r: r["vcpus"]),
        "vcpu": [lay_out(rows, buckets, lambda r, i=i: _r(r[f"vcpu{i}"])) for i in range(nvcpu)],
    }
    return {"vmid": vmid, "domain": vm["domain"], **_frame(since, until, step, buckets),
            "points": sum(1 for v in series["cpu"] if v is not None), "series": series}


def host_metrics(svc: Service, pmid: int, since: float, until: float, step: float, buckets: int) -> dict[str, Any]:
    name = host_of(svc.sched, pmid)
    store = history_source(svc.cfg, svc.store)
    rows = store.host_buckets(name, since, until, step)
    shares = store.domain_share_buckets(since, until, step, host=name)
    cpus = next((r["cpus"] for r in reversed(rows) if r["cpus"]), 0) or svc.sched.host_cpus(name)
    if rows:
        source = "host"
        series = {
            "cpu": lay_out(rows, buckets, lambda r: _r(r["cpu"])),
            "cpu_max": lay_out(rows, buckets, lambda r: _r(r["cpu_max"])),
            "node_cpu": lay_out(rows, buckets, lambda r: _r(r["node_cpu"])),
            "free_memory_mib": lay_out(rows, buckets, lambda r: _r(r["free_memory_mib"], 0)),
            "vms": lay_out(rows, buckets, lambda r: _r(r["vms"], 2)),
            "vcpus": lay_out(rows, buckets, lambda r: _r(r["vcpus"], 2)),
        }
    else:
        source = "domains"
        ticks = store.tick_buckets(since, until, step, host=name)
        series = {
            "cpu": lay_out(ticks, buckets, lambda r: _r(r["cpus_used"] / cpus) if cpus and r["cpus_used"] is not None else None),
            "cpu_max": [None] * buckets,
            "node_cpu": [None] * buckets,
            "free_memory_mib": [None] * buckets,
            "vms": lay_out(ticks, buckets, lambda r: _r(r["domains"], 2)),
            "vcpus": lay_out(ticks, buckets, lambda r: _r(r["vcpus"], 2)),
        }
    by_domain: dict[str, list[Any]] = {}
    for r in shares:
        s = by_domain.setdefault(r["domain"], [None] * buckets)
        if 0 <= r["b"] < buckets and cpus and r["cpus_used"] is not None:
            s[r["b"]] = _r(r["cpus_used"] / cpus)
    return {"pmid": pmid, "host": name, "cpus": cpus, "source": source, **_frame(since, until, step, buckets),
            "points": sum(1 for v in series["cpu"] if v is not None), "series": series, "domains": by_domain}


def group_metrics(svc: Service, name: str, since: float, until: float, step: float, buckets: int) -> dict[str, Any]:
    gc = svc.groups.config(name)
    store, src = svc.store, history_source(svc.cfg, svc.store)
    ticks = src.tick_buckets(since, until, step, group=name)
    per_tick = {r["b"]: r["ticks"] for r in ticks}
    states: dict[str, list[Any]] = {}
    for r in src.state_buckets(name, since, until, step):
        if 0 <= r["b"] < buckets and per_tick.get(r["b"]):
            states.setdefault(r["state"] or "unknown", [None] * buckets)[r["b"]] = round(r["n"] / per_tick[r["b"]], 2)
    thresholds = ({"high": gc.threshold.high, "low": gc.threshold.low} if gc.policy == "threshold"
                  else {"target": gc.target.target, "tolerance": gc.target.tolerance} if gc.policy == "target"
                  else {})
    k = gc.concurrency
    load = {"in_flight": round((k.target_in_flight or gc.vcpus) * k.utilization, 4)} if gc.policy == "concurrency" else {}
    if gc.policy == "concurrency" and k.latency_p95_s:
        load["latency_p95_s"] = k.latency_p95_s
    markers = [{"ts": e.ts, "kind": e.kind, "subject": e.subject, "message": e.message}
               for e in store.events(group=name, kinds=MARKER_KINDS, limit=MAX_POINTS, newest_first=True,
                                     since_id=0)
               if since <= e.ts < until]
    markers.reverse()
    series = {"cpu": lay_out(ticks, buckets, lambda r: _r(r["cpu"])),
              "replicas": lay_out(ticks, buckets, lambda r: _r(r["domains"], 2)),
              "states": states,
              "in_flight": lay_out(ticks, buckets, lambda r: _r(r["in_flight"])),
              "p95_s": lay_out(ticks, buckets, lambda r: _r(r["p95_s"]))}
    return {"group": name, "policy": gc.policy, "thresholds": thresholds, "load": load, "min": gc.min, "max": gc.max,
            **_frame(since, until, step, buckets), "points": sum(1 for v in series["cpu"] if v is not None),
            "series": series, "markers": markers}


# -- the routes ---------------------------------------------------------------------------------

class _Metrics:
    def __init__(self, svc: Service, clock: Callable[[], float] = time.time) -> None:
        self.svc = svc
        self.clock = clock

    def _range(self, req: Any) -> tuple[float, float, float, int]:
        return parse_range(req.get_param, self.clock())


class VmHistory(_Metrics):
    def on_get(self, req, resp, vmid: int):
        resp.media = vm_metrics(self.svc, vmid, *self._range(req))


class HostHistory(_Metrics):
    def on_get(self, req, resp, pmid: int):
        resp.media = host_metrics(self.svc, pmid, *self._range(req))


class GroupHistory(_Metrics):
    def on_get(self, req, resp, name: str):
        resp.media = group_metrics(self.svc, name, *self._range(req))
