"""What the load client counts: the run's totals per mode, and each replica's tally and timeline.

``sent`` counts logical requests (a retry is not a new one); each ends exactly once as
``completed`` (200 with the expected result) or as an error of some kind, so
``sent == completed + errors`` once nothing is outstanding. A replica's tally counts
attempts instead: a retried request counts once on each replica it tried.

Latencies (seconds) are appended to plain lists on the hot path; once a second ``interval``
sorts them for that second's percentiles and folds them into the histograms (client.stats)
that keep whole-run and per-mode figures in bounded memory.
"""

from __future__ import annotations

import collections
from dataclasses import dataclass, field
from typing import Any

from client.schedule import MODES
from client.stats import Histogram, percentiles_sorted


@dataclass
class ModeStats:
    sent: int = 0
    completed: int = 0
    errors: int = 0
    seconds: float = 0.0
    hist: Histogram = field(default_factory=Histogram)

    def summary(self) -> dict[str, Any]:
        return {"seconds": round(self.seconds, 3), "sent": self.sent, "completed": self.completed,
                "errors": self.errors,
                "throughput": round(self.completed / self.seconds, 2) if self.seconds > 0 else None,
                "latency_ms": self.hist.summary_ms()}


class RunTotals:
    """Logical requests over the whole run, per mode, and for the current interval."""

    def __init__(self) -> None:
        self.sent = 0
        self.completed = 0
        self.errors = 0
        self.retries = 0
        self.errors_by_kind: collections.Counter[str] = collections.Counter()
        self.modes = {m: ModeStats() for m in MODES}
        self.hist = Histogram()
        self.i_sent = 0
        self.i_completed = 0
        self.i_errors = 0
        self.i_lat: dict[str, list[float]] = {m: [] for m in MODES}

    @property
    def outstanding(self) -> int:
        return self.sent - self.completed - self.errors

    def issued(self, mode: str) -> None:
        self.sent += 1
        self.i_sent += 1
        self.modes[mode].sent += 1

    def ok(self, mode: str, latency: float) -> None:
        self.completed += 1
        self.i_completed += 1
        self.modes[mode].completed += 1
        self.i_lat[mode].append(latency)

    def error(self, mode: str, kind: str) -> None:
        self.errors += 1
        self.i_errors += 1
        self.errors_by_kind[kind] += 1
        self.modes[mode].errors += 1

    def interval(self, dt: float) -> dict[str, Any]:
        """This interval's counts and percentiles, folded into the histograms, then reset."""
        lat_all: list[float] = []
        for m in MODES:
            lst = self.i_lat[m]
            if lst:
                lst.sort()
                self.modes[m].hist.add_many(lst)
                lat_all.extend(lst)
                self.i_lat[m] = []
        lat_all.sort()
        self.hist.add_many(lat_all)
        rec = {"sent": self.i_sent, "completed": self.i_completed, "errors": self.i_errors,
               "throughput": round(self.i_completed / dt, 2), "latency_ms": percentiles_sorted(lat_all)}
        self.i_sent = self.i_completed = self.i_errors = 0
        return rec

    def summary(self, duration: float) -> dict[str, Any]:
        return {
            "sent": self.sent, "completed": self.completed, "errors": self.errors,
            "outstanding": self.outstanding,
            "accounted": self.sent == self.completed + self.errors,
            "retries": self.retries,
            "errors_by_kind": dict(self.errors_by_kind),
            "throughput": round(self.completed / duration, 2) if duration > 0 else None,
            "latency_ms": self.hist.summary_ms(),
            "modes": {m: s.summary() for m, s in self.modes.items()},
        }


class ReplicaTally:
    """Attempts on one replica: whole-run and current-interval counts, latencies."""

    __slots__ = ("attempts", "completed", "failed", "i_attempts", "i_completed", "i_failed", "i_lat", "hist")

    def __init__(self) -> None:
        self.attempts = self.completed = self.failed = 0
        self.i_attempts = self.i_completed = self.i_failed = 0
        self.i_lat: list[float] = []
        self.hist = Histogram()

    def attempt(self) -> None:
        self.attempts += 1
        self.i_attempts += 1

    def ok(self, latency: float) -> None:
        self.completed += 1
        self.i_completed += 1
        self.i_lat.append(latency)

    def fail(self) -> None:
        self.failed += 1
        self.i_failed += 1

    @property
    def quiet(self) -> bool:
        """Nothing happened in this interval."""
        return self.i_attempts == 0 and self.i_completed == 0 and self.i_failed == 0

    def interval(self, dt: float) -> dict[str, Any]:
        rl = self.i_lat
        rl.sort()
        self.hist.add_many(rl)
        rec = {"sent": self.i_attempts, "completed": self.i_completed, "errors": self.i_failed,
               "throughput": round(self.i_completed / dt, 2), "latency_ms": percentiles_sorted(rl)}
        self.i_attempts = self.i_completed = self.i_failed = 0
        self.i_lat = []
        return rec

    def summary(self) -> dict[str, Any]:
        return {"sent": self.attempts, "completed": self.completed, "errors": self.failed,
                "latency_ms": self.hist.summary_ms()}


class ReplicaTimeline:
    """When a replica was announced ready, first and last sent to, and announced gone.

    ``*_at`` are wall-clock (time.time()); ``*_mono`` are the loop's clock, so intervals
    between them are measured on one monotonic clock.
    """

    __slots__ = ("ready_at", "ready_mono", "ready_pub_ts", "first_sent_at", "first_sent_mono",
                 "last_sent_mono", "unready_at", "unready_mono")

    def __init__(self) -> None:
        self.ready_at: float | None = None
        self.ready_mono: float | None = None
        self.ready_pub_ts: float | None = None    # the announcing update's own ts
        self.first_sent_at: float | None = None
        self.first_sent_mono: float | None = None
        self.last_sent_mono: float | None = None
        self.unready_at: float | None = None
        self.unready_mono: float | None = None

    def summary(self, wall_offset: float) -> dict[str, Any]:
        """wall_offset: time.time() - loop.time(), to show loop-clock marks as wall-clock."""
        gap = None
        if self.ready_mono is not None and self.first_sent_mono is not None:
            gap = round(self.first_sent_mono - self.ready_mono, 6)
        return {
            "announced_ready_at": self.ready_at,
            "announced_ready_pub_ts": self.ready_pub_ts,
            "first_sent_at": self.first_sent_at,
            "ready_to_first_send_s": gap,
            "unready_at": self.unready_at,
            "last_sent_at": None if self.last_sent_mono is None else round(self.last_sent_mono + wall_offset, 6),
        }
