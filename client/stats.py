"""Latency bookkeeping.

The hot path only appends floats to a list; once a second the list is sorted for that
second's percentiles and folded into a log-bucketed histogram that keeps whole-run and
per-mode percentiles in bounded memory (about 1% relative error).
"""

from __future__ import annotations

import math
from typing import Iterable

# Bucket i holds latencies in [BASE**i, BASE**(i+1)) microseconds.
_BASE = 1.01
_LOG_BASE = math.log(_BASE)


def percentiles_sorted(values: list[float], qs: Iterable[float] = (50, 95, 99)) -> dict[str, float | None]:
    """Nearest-rank percentiles of an already sorted list, in milliseconds (values are seconds)."""
    out: dict[str, float | None] = {}
    n = len(values)
    for q in qs:
        if n == 0:
            out[f"p{q:g}"] = None
        else:
            k = max(0, min(n - 1, math.ceil(q / 100.0 * n) - 1))
            out[f"p{q:g}"] = round(values[k] * 1000.0, 3)
    return out


class Histogram:
    """Sparse log-bucketed histogram of latencies given in seconds."""

    __slots__ = ("counts", "n", "total", "max")

    def __init__(self) -> None:
        self.counts: dict[int, int] = {}
        self.n = 0
        self.total = 0.0
        self.max = 0.0

    def add_many(self, values: Iterable[float]) -> None:
        """Add latencies (seconds). Sorted input is cheapest: one log per bucket, not per value."""
        counts = self.counts
        log = math.log
        i = -1
        upper = -1.0           # values below this (and >= the bucket's floor) share bucket i
        lower = 0.0
        n = 0
        total = 0.0
        top = self.max
        for v in values:
            n += 1
            total += v
            if v > top:
                top = v
            if not (lower <= v < upper):
                us = v * 1e6
                i = int(log(us) / _LOG_BASE) if us >= 1.0 else 0
                lower = _BASE ** i / 1e6 if i > 0 else 0.0
                upper = _BASE ** (i + 1) / 1e6
            counts[i] = counts.get(i, 0) + 1
        self.n += n
        self.total += total
        self.max = top

    def merge(self, other: "Histogram") -> None:
        for i, c in other.counts.items():
            self.counts[i] = self.counts.get(i, 0) + c
        self.n += other.n
        self.total += other.total
        self.max = max(self.max, other.max)

    def percentile_ms(self, q: float) -> float | None:
        if self.n == 0:
            return None
        rank = max(1, math.ceil(q / 100.0 * self.n))
        seen = 0
        for i in sorted(self.counts):
            seen += self.counts[i]
            if seen >= rank:
                # the bucket's geometric middle, in ms
                return round(_BASE ** (i + 0.5) / 1000.0, 3)
        return round(self.max * 1000.0, 3)

    def summary_ms(self) -> dict[str, float | None]:
        out: dict[str, float | None] = {f"p{q:g}": self.percentile_ms(q) for q in (50, 95, 99, 99.9)}
        out["mean"] = round(self.total / self.n * 1000.0, 3) if self.n else None
        out["max"] = round(self.max * 1000.0, 3) if self.n else None
        return out

    def to_json(self) -> dict:
        return {"counts": {str(k): v for k, v in self.counts.items()}, "n": self.n,
                "total": self.total, "max": self.max}

    @classmethod
    def from_json(cls, d: dict) -> "Histogram":
        h = cls()
        h.counts = {int(k): int(v) for k, v in d.get("counts", {}).items()}
        h.n = int(d.get("n", 0))
        h.total = float(d.get("total", 0.0))
        h.max = float(d.get("max", 0.0))
        return h
