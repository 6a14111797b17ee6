"""What a replay replays: the offered load over time, and (when it was recorded) what the
group really did.

Two kinds of input:

* a trace: the offered request rate over time, from a CSV file (``time,rate`` rows: seconds,
  relative or epoch, ascending; requests per second from that time on; a header line and
  ``#`` comments are allowed) or from a cms-loadgen ``--out`` file (its per-second
  ``target_rate``, what the open-loop client offered, whatever the replicas managed);
* a recorded window of the state database (``Store``): the group's per-replica samples
  (CPU, lifecycle state; in-flight and request rate where the store has them) and its events
  (decisions, spawn stages, warm-pool use), read through ``Store.samples`` and
  ``Store.events``. It gives the run's starting point, the real replica count and decisions
  to compare the replay with, the replicas those decisions started and how long each took
  (``RecordedStart``), and the records cms.replay.fit fits the model from. Without a
  trace, the offered load is what the replicas say they served: the answers per second their
  /status reported, summed (``offered_from_rates``), where the store has them for most
  ticks (a store written since the daemon polls /status), else what their CPU says
  (``offered_from_cpu``). Either is exact below saturation, a lower bound above it (what
  nobody served was not measured).

Bad input is one ``ReplayError`` line naming the file and the line.
"""

from __future__ import annotations

import bisect
import json
import math
import statistics
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cms.errors import CmsError

SERVING_STATES = ("spawning", "starting", "ready", "unparking")
WARM_EVENTS = ("warm_prepared", "warm_parked")
WARM_ENDS = ("warm_used", "removed", "failed")


class ReplayError(CmsError):
    pass


@dataclass(frozen=True)
class Trace:
    """The offered load: ``rates[i]`` requests/s from ``times[i]`` (s from the start) on."""
    times: tuple[float, ...]
    rates: tuple[float, ...]
    end: float                     # s from the start where the trace ends
    source: str
    start: float = 0.0             # epoch seconds of time 0, when the trace has them

    def rate_at(self, t: float) -> float:
        i = bisect.bisect_right(self.times, t) - 1
        return self.rates[max(i, 0)]


def _number(text: str, what: str, where: str) -> float:
    try:
        v = float(text)
    except ValueError:
        raise ReplayError(f"{where}: {what} {text.strip()[:40]!r} is not a number") from None
    if not math.isfinite(v):
        raise ReplayError(f"{where}: {what} must be a finite number, not {text.strip()[:40]!r}")
    return v


def _trace(points: list[tuple[float, float]], source: str, end: float | None = None) -> Trace:
    if not points:
        raise ReplayError(f"{source}: no load in it (want rows of time,rate)")
    t0 = points[0][0]
    times = tuple(t - t0 for t, _ in points)
    last = end - t0 if end is not None else times[-1]
    if last <= 0:
        raise ReplayError(f"{source}: the trace spans no time (one row, or every row at the same time)")
    return Trace(times, tuple(r for _, r in points), last, source, t0 if t0 > 1e9 else 0.0)


def read_csv(path: str | Path) -> Trace:
    """A CSV trace: ``time,rate`` per row."""
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ReplayError(f"{p}: cannot read the trace: {getattr(exc, 'strerror', None) or exc}") from None
    points: list[tuple[float, float]] = []
    for n, line in enumerate(text.splitlines(), 1):
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        cells = [c.strip() for c in line.split(",")]
        where = f"{p}:{n}"
        if not points and cells and not cells[0].lstrip("+-").replace(".", "", 1).isdigit():
            continue  # a header
        if len(cells) < 2:
            raise ReplayError(f"{where}: want time,rate (two columns), got {line[:60]!r}")
        t, r = _number(cells[0], "time", where), _number(cells[1], "rate", where)
        if r < 0:
            raise ReplayError(f"{where}: rate {r:g} is negative")
        if points and t <= points[-1][0]:
            raise ReplayError(f"{where}: time {t:g} does not come after {points[-1][0]:g} (rows must ascend)")
        points.append((t, r))
    return _trace(points, str(p))


def read_jsonl(path: str | Path) -> list[dict[str, Any]]:
    out = []
    try:
        lines = Path(path).read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise ReplayError(f"{path}: cannot read it: {getattr(exc, 'strerror', None) or exc}") from None
    for line in lines:
        try:
            d = json.loads(line)
        except ValueError:
            continue
        if isinstance(d, dict):
            out.append(d)
    return out


@dataclass(frozen=True)
class ClientRecord:
    """What a cms-loadgen run recorded: its offered load, and per second what it got back."""
    trace: Trace
    ticks: tuple[tuple[float, float, float | None], ...]   # (epoch ts, completed/s, p95 s)
    conns_per_replica: int = 0


def read_loadgen(path: str | Path) -> ClientRecord:
    """A cms-loadgen ``--out`` file (and its ``--summary`` beside it, for --max-conns)."""
    recs = read_jsonl(path)
    ticks = [r for r in recs if r.get("type") == "tick" and isinstance(r.get("ts"), (int, float))]
    if not ticks:
        raise ReplayError(f"{path}: no load client ticks in it (is it a cms-loadgen --out file?)")
    if any(t.get("target_rate") is None for t in ticks):
        raise ReplayError(f"{path}: a closed-loop run (--concurrency) offers no rate to replay; "
                          "record an open-loop one (--low-rate/--high-rate)")
    points = [(float(t["ts"]) - float(t.get("interval_s") or 1.0), float(t["target_rate"])) for t in ticks]
    out = []
    for ts, t in zip((float(t["ts"]) for t in ticks), ticks):
        p95 = (t.get("latency_ms") or {}).get("p95")
        out.append((ts, float(t.get("throughput") or 0.0), None if p95 is None else p95 / 1000.0))
    conns = 0
    summary = Path(path).with_name("loadgen-summary.json")
    try:
        conns = int(json.loads(summary.read_text()).get("options", {}).get("max_conns") or 0)
    except (OSError, ValueError, TypeError, AttributeError):
        pass
    return ClientRecord(_trace(points, str(path), end=float(ticks[-1]["ts"])), tuple(out), conns)


def read_load(path: str | Path) -> ClientRecord | Trace:
    """A trace file of either kind, told apart by its first character."""
    try:
        with open(path, "rb") as fh:
            head = fh.read(256).lstrip()
    except OSError as exc:
        raise ReplayError(f"{path}: cannot read the load: {exc.strerror or exc}") from None
    return read_loadgen(path) if head.startswith(b"{") else read_csv(path)


@dataclass(frozen=True)
class Start:
    """The group at the start of a replay (times are s from the start; negative: before it)."""
    ready: tuple[tuple[str, float], ...] = ()        # (name, ready_at)
    parked: tuple[tuple[str, str], ...] = ()         # (name, park mode)
    last_action_at: float | None = None


@dataclass(frozen=True)
class RecordedStart:
    """A replica the recorded group started on a decision, and how long each stage took: a cold
    one (``mode`` "") was started ``spawn_s`` after the decision and ready ``ready_s`` later; an
    unpark (``mode`` its park mode) was ready ``ready_s`` after the decision."""
    decided: float                 # s from the start
    mode: str
    spawn_s: float
    ready_s: float


@dataclass
class Recorded:
    """A window of a group's records, times in s from ``start`` (epoch)."""
    group: str
    start: float
    end: float
    tick_s: float
    ticks: list[float] = field(default_factory=list)
    ready: list[int] = field(default_factory=list)            # ready replicas per tick
    cpu: list[float | None] = field(default_factory=list)      # mean CPU of the ready ones
    replica_cpu: list[tuple[float | None, ...]] = field(default_factory=list)   # each ready one's, oldest first
    replica_in_flight: list[tuple[float | None, ...]] = field(default_factory=list)   # the same, from /status
    busy: list[float] = field(default_factory=list)            # vCPUs busy, summed over the ready ones
    vcpus: list[int] = field(default_factory=list)             # their vCPUs
    rate: list[float | None] = field(default_factory=list)     # answers/s summed over them (their /status);
    in_flight: list[float | None] = field(default_factory=list)  # requests in flight, summed; None: one had no figure
    decisions: list[dict[str, Any]] = field(default_factory=list)
    starts: list[RecordedStart] = field(default_factory=list)  # replicas the window's decisions started
    events: list[Any] = field(default_factory=list)            # every event of the group (for fitting)
    begin: Start = field(default_factory=Start)


def read_store(db: str | Path, group: str, since: float | None = None, until: float | None = None,
               origin: float | None = None) -> Recorded:
    """The group's samples and events between ``since`` and ``until`` (epoch; default all), with
    times in seconds from ``origin`` (default: the first sample)."""
    from cms.store import Store
    p = Path(db)
    if not p.is_file():
        raise ReplayError(f"{p}: no state database there")
    try:
        store = Store(p)
        samples = store.samples(group=group, since=since or 0.0, limit=50_000_000)
        events = store.events(group=group, limit=10_000_000)
    except Exception as exc:  # noqa: BLE001 - a file that is not our database
        raise ReplayError(f"{p}: cannot read it as a cms state database: {exc}") from None
    if until is not None:
        samples = [s for s in samples if s.ts <= until]
    if not samples:
        raise ReplayError(f"{p}: no samples of group {group!r}" + (" in that window" if since or until else ""))
    by_ts: dict[float, list[Any]] = {}
    for s in samples:
        by_ts.setdefault(s.ts, []).append(s)
    stamps = sorted(by_ts)
    t0 = stamps[0] if origin is None else origin
    gaps = [b - a for a, b in zip(stamps, stamps[1:])]
    rec = Recorded(group, t0, stamps[-1] - t0, statistics.median(gaps) if gaps else 1.0, events=events)
    became = {e.subject: e.ts for e in events if e.kind == "ready"}
    for ts in stamps:
        ready = sorted((s for s in by_ts[ts] if s.state == "ready"), key=lambda s: (became.get(s.domain, 0.0), s.domain))
        rec.replica_cpu.append(tuple(s.cpu for s in ready))
        rec.replica_in_flight.append(tuple(s.in_flight for s in ready))
        figures = [s for s in ready if s.cpu is not None]
        rec.ticks.append(ts - t0)
        rec.ready.append(len(ready))
        rec.cpu.append(statistics.fmean(s.cpu for s in figures) if figures and len(figures) == len(ready) else None)
        rec.busy.append(sum(s.cpu * s.vcpus for s in figures))
        rec.vcpus.append(sum(s.vcpus for s in ready))
        polled = [s for s in ready if s.rate is not None and s.in_flight is not None]
        whole = bool(ready) and len(polled) == len(ready)
        rec.rate.append(sum(s.rate for s in polled) if whole else None)
        rec.in_flight.append(sum(s.in_flight for s in polled) if whole else None)
    end = stamps[-1]
    rec.decisions = [{"t": e.ts - t0, "action": e.data.get("action"), "desired": e.data.get("desired"),
                      "reason": e.message} for e in events if e.kind == "decision" and t0 <= e.ts <= end]
    rec.starts = [s for e in events if (s := started(e, t0)) is not None and 0 <= s.decided <= end - t0]
    rec.begin = start_of(events, by_ts[stamps[0]], t0)
    return rec


def started(e: Any, t0: float) -> RecordedStart | None:
    """The start an event reports: a cold replica's "ready" (its decision -> ready and boot
    times) or a "warm_used" (decision -> ready of an unpark); None for any other event."""
    d = e.data
    try:
        if e.kind == "ready" and d.get("boot_s") is not None and d.get("decision_to_ready_s") is not None:
            whole, boot = float(d["decision_to_ready_s"]), float(d["boot_s"])
            return RecordedStart(e.ts - whole - t0, "", max(0.0, whole - boot), min(boot, whole))
        if e.kind == "warm_used" and d.get("seconds") is not None:
            return RecordedStart(e.ts - float(d["seconds"]) - t0, str(d.get("mode") or "paused"), 0.0, float(d["seconds"]))
    except (TypeError, ValueError):
        return None
    return None


def start_of(events: list[Any], first: list[Any], t0: float) -> Start:
    """The group at ``t0``: its ready replicas (ready since their last "ready" event), the warm
    pool (a replica whose last warm-pool event before t0 parked it), the last scaling action."""
    ready_at = {e.subject: e.ts - t0 for e in events if e.kind == "ready" and e.ts <= t0}
    ready = tuple(sorted(((s.domain, ready_at.get(s.domain, -1e9)) for s in first if s.state == "ready"),
                         key=lambda x: (x[1], x[0])))
    last: dict[str, Any] = {}
    for e in events:
        if e.ts <= t0 and (e.kind in WARM_EVENTS or e.kind in WARM_ENDS):
            last[e.subject] = e
    parked = tuple(sorted((name, e.data.get("mode") or "paused") for name, e in last.items() if e.kind in WARM_EVENTS))
    actions = [e.ts - t0 for e in events if e.ts <= t0 and (e.kind == "scale_override" or
                                                          (e.kind == "decision" and e.data.get("action") != "none"))]
    return Start(ready, parked, max(actions) if actions else None)


def offered_from_rates(rec: Recorded, share: float = 0.9) -> Trace | None:
    """The load the ready replicas answered, from their /status request rates; None when fewer
    than ``share`` of the ticks have every ready replica's rate (an older store: use the CPU).
    A tick without a figure carries the last one on."""
    have = [(t, r) for t, r in zip(rec.ticks, rec.rate) if r is not None]
    if not rec.ticks or len(have) < share * len(rec.ticks):
        return None
    points = [(max(0.0, t - rec.tick_s), r) for t, r in have]
    merged = [points[0]] + [p for a, p in zip(points, points[1:]) if p[0] > a[0]]
    trace = _trace(merged, f"request rates of group {rec.group} (/status)", end=rec.end)
    return Trace(trace.times, trace.rates, trace.end, trace.source, rec.start)


def offered_from_cpu(rec: Recorded, cpu_idle: float, cpu_busy: float, service_s: float) -> Trace:
    """The load the replicas served, from their CPU: per tick, the busy share of their vCPUs
    over the idle-to-busy range, times their vCPUs, over the cost of a request."""
    span = max(cpu_busy - cpu_idle, 1e-6)
    points = []
    for t, cpu, vcpus in zip(rec.ticks, rec.cpu, rec.vcpus):
        rho = 0.0 if cpu is None else min(1.0, max(0.0, (cpu - cpu_idle) / span))
        points.append((max(0.0, t - rec.tick_s), rho * vcpus / service_s))
    merged = [points[0]] + [p for a, p in zip(points, points[1:]) if p[0] > a[0]]
    trace = _trace(merged, f"CPU of group {rec.group}", end=rec.end)
    return Trace(trace.times, trace.rates, trace.end, trace.source, rec.start)
