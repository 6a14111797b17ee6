"""A replica's concurrency and latency from two polls of its /status counters: pure maths.

The guest server keeps cumulative counters since its boot (guest/cms_prefork.py): the
answers to /work it served, per bucket of fixed upper bounds how many of them took at most
that long, their summed latency, and the time integral of its requests in flight. One poll
says nothing about a moment; the difference between two polls a tick apart says what
happened in that tick:

* mean in flight = Δ in-flight seconds / Δ uptime (the guest's own monotonic clock, so the
  poll's network time does not enter);
* request rate = Δ answers / Δ uptime;
* p95 latency = the 0.95 quantile of the bucket deltas, interpolated linearly inside its
  bucket, as Prometheus' ``histogram_quantile`` does (a quantile in the last, unbounded
  bucket is the highest finite bound: "at least that");
* none of them when the counters went backwards (the guest restarted) or the guest's bounds
  changed: no figure that tick, and the next poll starts from the new values, as
  ``cms.metrics.utilization`` treats a CPU counter that went back.

No I/O here: the autoscaler polls, this turns the polls into figures, and tests feed it tables.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Sequence


@dataclass(frozen=True)
class Counters:
    """What one /status answer holds for these figures."""
    uptime_s: float
    served: int
    in_flight: int                    # right now
    in_flight_s: float                # the integral of in_flight since boot
    bounds_s: tuple[float, ...]       # the buckets' upper bounds, ascending
    buckets: tuple[int, ...]          # cumulative counts, len(bounds_s) + 1: the last is every answer
    sum_s: float


@dataclass(frozen=True)
class Figures:
    """One replica between two polls."""
    seconds: float                    # between them, on the guest's clock
    in_flight: float                  # mean requests in flight
    rate: float                       # answers per second
    completed: int
    p95_s: float | None               # None: no answer completed between them
    mean_s: float | None
    buckets: tuple[int, ...]          # the cumulative bucket deltas (to merge replicas: add)


def _number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def parse(body: Any) -> Counters | None:
    """The counters of a /status body; None when it lacks them (an older guest) or they are not
    numbers in order."""
    if not isinstance(body, dict):
        return None
    lat = body.get("latency")
    if not isinstance(lat, dict):
        return None
    bounds, buckets = lat.get("bounds_s"), lat.get("buckets")
    scalars = (body.get("uptime_s"), body.get("served"), body.get("in_flight"), body.get("in_flight_s"), lat.get("sum_s"))
    if not all(_number(v) for v in scalars) or not isinstance(bounds, list) or not isinstance(buckets, list):
        return None
    if len(buckets) != len(bounds) + 1 or not all(_number(b) for b in bounds) or not all(
            isinstance(c, int) and not isinstance(c, bool) for c in buckets):
        return None
    if any(b >= c for b, c in zip(bounds, bounds[1:])) or any(a > b for a, b in zip(buckets, buckets[1:])):
        return None
    return Counters(float(body["uptime_s"]), int(body["served"]), int(body["in_flight"]), float(body["in_flight_s"]),
                    tuple(float(b) for b in bounds), tuple(buckets), float(lat["sum_s"]))


def delta(prev: Counters, cur: Counters) -> tuple[int, ...] | None:
    """The cumulative bucket counts of the answers between two polls; None for a restart
    (a count or the uptime went back) or bounds that changed."""
    if cur.bounds_s != prev.bounds_s or cur.uptime_s < prev.uptime_s:
        return None
    d = tuple(c - p for c, p in zip(cur.buckets, prev.buckets))
    return None if any(x < 0 for x in d) else d


def quantile(q: float, bounds: Sequence[float], cumulative: Sequence[int]) -> float | None:
    """The q-quantile (0 < q < 1) of a histogram of cumulative counts, interpolated linearly in
    its bucket (the first bucket starts at 0); None for an empty histogram. A quantile past the
    last finite bound is that bound."""
    total = cumulative[-1] if cumulative else 0
    if total <= 0:
        return None
    rank = q * total
    below = 0
    for i, c in enumerate(cumulative):
        if c >= rank and c > below:
            if i >= len(bounds):
                return float(bounds[-1]) if bounds else None
            lo = float(bounds[i - 1]) if i > 0 else 0.0
            return lo + (float(bounds[i]) - lo) * (rank - below) / (c - below)
        below = c
    return float(bounds[-1]) if bounds else None


def merge(histograms: Sequence[Sequence[int]]) -> tuple[int, ...]:
    """Histograms over the same bounds added up (several replicas' deltas: the group's)."""
    return tuple(sum(col) for col in zip(*histograms)) if histograms else ()


def instant(body: Any) -> Figures | None:
    """A guest without these counters (an image older than them): its requests in flight at
    the moment of the poll stand for the tick's mean; no rate, no latency."""
    v = body.get("in_flight") if isinstance(body, dict) else None
    if not isinstance(v, int) or isinstance(v, bool) or v < 0:
        return None
    return Figures(0.0, float(v), 0.0, 0, None, None, ())


def between(prev: Counters, cur: Counters, q: float = 0.95) -> Figures | None:
    """One replica's figures between two polls; None for a restart, changed bounds or no time."""
    d = delta(prev, cur)
    seconds = cur.uptime_s - prev.uptime_s
    done = cur.served - prev.served
    busy = cur.in_flight_s - prev.in_flight_s
    if d is None or seconds <= 0 or done < 0 or busy < 0:
        return None
    answered = d[-1]
    return Figures(seconds=seconds, in_flight=busy / seconds, rate=done / seconds, completed=done,
                   p95_s=quantile(q, cur.bounds_s, d),
                   mean_s=(cur.sum_s - prev.sum_s) / answered if answered else None, buckets=d)
