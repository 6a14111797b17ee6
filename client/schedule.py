"""Load modes and schedules: the one parser of "low:30s,high:120s,low:90s".

A schedule is a list of (mode, seconds) phases run in order. cms-loadgen takes it as
``--schedule``; cms-demo builds one and needs its total length. Both parse it here.
"""

from __future__ import annotations

import re

MODES = ("low", "high")

_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, None: 1.0}


class ScheduleError(ValueError):
    """A duration or a schedule that cannot be read; the message says what is wanted."""


def parse_duration(text: str) -> float:
    """Seconds in "500ms", "30s", "2m", "1h" or a bare "45" (seconds)."""
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h)?\s*", text)
    if not m:
        raise ScheduleError(f"bad duration {text!r} (examples: 500ms, 30s, 2m, 45)")
    return float(m.group(1)) * _UNITS[m.group(2)]


def parse_schedule(text: str) -> list[tuple[str, float]]:
    """MODE:DURATION phases separated by commas; MODE is one of MODES, durations positive."""
    phases = []
    for part in text.split(","):
        part = part.strip()
        if not part:
            continue
        mode, sep, dur = part.partition(":")
        if not sep or mode.strip() not in MODES:
            raise ScheduleError(f"bad schedule phase {part!r}: want MODE:DURATION with MODE low or high")
        d = parse_duration(dur)
        if d <= 0:
            raise ScheduleError(f"bad schedule phase {part!r}: the duration must be positive")
        phases.append((mode.strip(), d))
    if not phases:
        raise ScheduleError("the schedule is empty")
    return phases


def total_seconds(phases: list[tuple[str, float]]) -> float:
    return sum(d for _, d in phases)
