"""cms-loadgen: the load client for a replica group of guest servers.

It sends ``GET /work?payload=<p>&cost=<cost>`` over HTTP/1.1 keep-alive connections and
checks every answer against ``guest.cms_work.result(p, cost)`` (the guest server's own
definition of the work), computed once at start for a small fixed pool of payloads. A wrong result, a 4xx, a 5xx
after its one retry, a dropped connection after its one retry, or a timeout is an error.

Replicas
  --replica HOST:PORT       static set (repeatable); no autoscaler needed.
  otherwise                 follow the autoscaler's feed (cms.messages): endpoints and CURVE
                            key from the cms config (--config or $CMS_CONFIG, else defaults),
                            or --zmq-publish/--zmq-snapshot/--curve-server-key.
  --group NAME              replica group to follow (default "web").
  --wait-ready S            give up (exit 1) if no replica is ready within S s (default 30).
  A replica gets traffic the moment an update lists it "ready"; none once it is listed
  draining/failed or is absent. Connection errors and 5xx are retried once on another replica.

Load
  --low-rate R, --high-rate R   requests/s of the two modes (open loop, default 10 and 100):
                            arrivals follow the clock, latency counts from the intended send
                            time, so a slow server cannot slow the client down (no coordinated
                            omission).
  --concurrency N | L,H     closed loop instead: N (or L in low, H in high) requests always
                            outstanding; rates are then ignored.
  --balance rr|least        round robin, or least outstanding requests (default rr).
  --cost N                  pbkdf2 iterations asked of the server (default 10000; at most
                            what the guest accepts, guest.cms_work.MAX_COST).
  --payloads N              size of the payload pool (default 8).
  --timeout S               per request, from its intended send time (default 10). A request
                            still queued in the client after half of it is dropped unsent
                            (error kind "shed") rather than sent to be abandoned mid-flight.
  --max-conns N             keep-alive connections per replica (default 64).

Modes and time
  --schedule low:60s,high:180s,low:90s   phases run in order; units ms, s, m (bare = s).
  --start-mode low|high     mode when there is no schedule (default low).
  --duration S              stop after S s (default: the schedule's total, else 60). It always
                            stops by itself; then it waits up to --drain-timeout S (default 5)
                            for in-flight requests, and counts any still open as errors.
  Switching by hand or from outside (holds until the next schedule phase begins):
    SIGUSR1 toggles low/high; SIGUSR2 goes to low; SIGINT/SIGTERM stop early (drained).
    --control tcp://127.0.0.1:PORT  a ZeroMQ REP socket: send "low", "high", "toggle",
                            "status" or "stop"; the reply is a JSON object.
    keys l (low), h (high), t (toggle), q (quit) when stdin is a terminal (--no-keys: off).

Output
  --out FILE.jsonl          one JSON object per line:
      {"type": "tick", "ts", "t", "interval_s", "mode", "target_rate", "concurrency",
       "sent", "completed", "errors", "throughput", "latency_ms": {"p50","p95","p99"},
       "outstanding", "ready", "total": {"sent","completed","errors"},
       "replicas": {NAME: {"endpoint","state","sent","completed","errors","in_flight",
                           "queued","throughput","latency_ms"}}}
    every second (counts are for that interval; per-replica "sent"/"errors" count attempts,
    so a retried request shows on both replicas), and events as they happen:
      {"type": "event", "ts", "t", "event": "start"|"stop"|"mode"|"replica_starting"|
       "replica_ready"|"replica_draining"|"replica_failed"|"replica_removed"|"snapshot"|
       "resync"|"snapshot_timeout"|"not_leader"|"bad_update"|"bad_snapshot", ...}
    mode events carry "mode" and "source" (schedule, SIGUSR1, SIGUSR2, control, keyboard);
    replica events carry "replica", "endpoint", "pub_ts" (the update's own ts) and "reason".
    "ts" is wall-clock time.time(); "t" is seconds since the start; latencies are ms.
  --summary FILE.json       the summary (also printed on stdout as one JSON line):
      {"type": "summary", "started_at", "ended_at", "duration_s", "sent", "completed",
       "errors", "outstanding" (0), "accounted" (sent == completed + errors), "retries",
       "errors_by_kind", "throughput", "latency_ms": {"p50","p95","p99","p99.9","mean","max"},
       "modes": {"low"|"high": {"seconds","sent","completed","errors","throughput","latency_ms"}},
       "replicas": {NAME: {"endpoint","state","sent","completed","errors","latency_ms",
                           "announced_ready_at","announced_ready_pub_ts","first_sent_at",
                           "ready_to_first_send_s","unready_at","last_sent_at"}},
       "options": {...}, "histogram": {...}}
    *_at are wall-clock seconds; ready_to_first_send_s is measured on one monotonic clock
    from the update that announced the replica ready to the first request written to it.
  --quiet                   no live status line (stderr; \\r-updated on a terminal, else a
                            line every 5 s).

Exit status: 0 after a run (errors are in the summary), 1 if no replica became ready or the
run failed, 2 for bad arguments or configuration.

As a library: ``summary = asyncio.run(run(parse_args(argv)))`` or ``main(argv)``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import sys
from typing import Any, Callable

from client.pick import POLICIES
from client.control import control_server, install_signals, keys_reader, run_schedule
from client.engine import Engine, Options
from client.schedule import MODES, parse_duration, parse_schedule, total_seconds
from cms.messages import Replica
from guest.cms_work import MAX_COST, MIN_COST

DEFAULT_COST = 10000


class UsageError(ValueError):
    pass


# --- argument parsing ------------------------------------------------------------------------

def parse_endpoint(text: str) -> tuple[str, int]:
    host, sep, port = text.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise UsageError(f"bad --replica {text!r}: want HOST:PORT, e.g. 127.0.0.1:20001")
    return host, int(port)


def parse_concurrency(text: str) -> dict[str, int]:
    parts = text.split(",")
    try:
        nums = [int(p) for p in parts]
    except ValueError:
        raise UsageError(f"bad --concurrency {text!r}: want N or LOW,HIGH") from None
    if len(nums) not in (1, 2) or min(nums) < 0 or max(nums) < 1:
        raise UsageError(f"bad --concurrency {text!r}: want N or LOW,HIGH, non-negative, not all zero")
    return {"low": nums[0], "high": nums[-1]}


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="cms-loadgen", description="Load client for a cms replica group "
                                "(see the module docstring of client.loadgen for file formats).")
    p.add_argument("--replica", action="append", default=[], metavar="HOST:PORT", help="static replica (repeatable)")
    p.add_argument("--config", help="cms config file (default $CMS_CONFIG, else /etc/cms/cms.toml, else defaults)")
    p.add_argument("--group", default="web", help="replica group (default web)")
    p.add_argument("--zmq-publish", help="override [zmq] publish (several controllers: comma-separated)")
    p.add_argument("--zmq-snapshot", help="override [zmq] snapshot (several controllers: comma-separated)")
    p.add_argument("--curve-server-key", help="override [zmq] curve_public_key (Z85)")
    p.add_argument("--wait-ready", type=float, default=30.0, metavar="S")
    p.add_argument("--low-rate", type=float, default=10.0, metavar="R")
    p.add_argument("--high-rate", type=float, default=100.0, metavar="R")
    p.add_argument("--concurrency", metavar="N|L,H")
    p.add_argument("--balance", choices=POLICIES, default="rr")
    p.add_argument("--cost", type=int, default=DEFAULT_COST)
    p.add_argument("--payloads", type=int, default=8)
    p.add_argument("--timeout", type=float, default=10.0, metavar="S")
    p.add_argument("--connect-timeout", type=float, default=2.0, metavar="S")
    p.add_argument("--max-conns", type=int, default=64)
    p.add_argument("--drain-timeout", type=float, default=5.0, metavar="S")
    p.add_argument("--schedule", metavar="MODE:DUR,...")
    p.add_argument("--start-mode", choices=MODES, default="low")
    p.add_argument("--duration", metavar="S")
    p.add_argument("--control", metavar="ENDPOINT", help="ZeroMQ REP endpoint, e.g. tcp://127.0.0.1:5560")
    p.add_argument("--no-keys", action="store_true")
    p.add_argument("--out", metavar="FILE.jsonl")
    p.add_argument("--summary", metavar="FILE.json")
    p.add_argument("--quiet", action="store_true")
    return p


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Parse and check the arguments; a mistake is one line on stderr and exit 2."""
    p = build_parser()
    a = p.parse_args(argv)
    try:
        a.replicas = [parse_endpoint(r) for r in a.replica]
        a.phases = parse_schedule(a.schedule) if a.schedule else None
        a.duration_s = parse_duration(a.duration) if a.duration else None
        if a.duration_s is None:
            a.duration_s = total_seconds(a.phases) if a.phases else 60.0
        if a.duration_s <= 0:
            raise UsageError("--duration must be positive")
        a.concurrency_map = parse_concurrency(a.concurrency) if a.concurrency else None
        for name in ("low_rate", "high_rate"):
            v = getattr(a, name)
            if not 0 <= v <= 1_000_000:
                raise UsageError(f"--{name.replace('_', '-')} must be between 0 and 1000000, not {v}")
        checks = [("cost", MIN_COST, MAX_COST), ("payloads", 1, 10_000), ("max_conns", 1, 100_000)]
        for name, lo, hi in checks:
            v = getattr(a, name)
            if not lo <= v <= hi:
                raise UsageError(f"--{name.replace('_', '-')} must be between {lo} and {hi}, not {v}")
        for name in ("timeout", "connect_timeout", "drain_timeout", "wait_ready"):
            if not 0 < getattr(a, name) <= 3600:
                raise UsageError(f"--{name.replace('_', '-')} must be above 0 and at most 3600")
        if a.control and not re.fullmatch(r"(tcp://127\.0\.0\.1:\d+|ipc://.+)", a.control):
            raise UsageError(f"--control {a.control!r}: only tcp://127.0.0.1:PORT or ipc://PATH")
        for flag, path in (("--out", a.out), ("--summary", a.summary)):
            if path and not os.path.isdir(os.path.dirname(os.path.abspath(path))):
                raise UsageError(f"{flag} {path}: its directory does not exist")
        if not a.group.replace("-", "").isalnum():
            raise UsageError(f"bad --group {a.group!r}: letters, digits and '-' only")
    except ValueError as exc:   # UsageError, client.schedule.ScheduleError
        p.error(str(exc))
    return a


def engine_options(a: argparse.Namespace, share: int = 1) -> Options:
    conc = None
    if a.concurrency_map is not None:
        conc = {m: max(1 if n else 0, n // share) for m, n in a.concurrency_map.items()}
    return Options(low_rate=a.low_rate / share, high_rate=a.high_rate / share, concurrency=conc,
                   balance=a.balance, cost=a.cost, payloads=a.payloads, timeout=a.timeout,
                   connect_timeout=a.connect_timeout, max_conns=a.max_conns, drain_timeout=a.drain_timeout,
                   start_mode=a.phases[0][0] if a.phases else a.start_mode)


# --- the run -----------------------------------------------------------------------------------

class JsonlWriter:
    def __init__(self, path: str | None) -> None:
        self.fh = open(path, "w", encoding="utf-8") if path else None

    def __call__(self, rec: dict[str, Any]) -> None:
        if self.fh is not None:
            self.fh.write(json.dumps(rec, separators=(",", ":")) + "\n")
            self.fh.flush()

    def close(self) -> None:
        if self.fh is not None:
            self.fh.close()


class StatusLine:
    def __init__(self, enabled: bool) -> None:
        self.enabled = enabled
        self.tty = sys.stderr.isatty()
        self.n = 0

    def __call__(self, rec: dict[str, Any]) -> None:
        if not self.enabled or rec.get("type") != "tick":
            return
        self.n += 1
        lat = rec["latency_ms"]
        tot = rec["total"]
        target = f"{rec['target_rate']:g}/s" if rec["target_rate"] is not None else f"c={rec['concurrency']}"
        line = (f"t={rec['t']:.0f}s {rec['mode']} {target} thr={rec['throughput']:.0f}/s "
                f"p50={_ms(lat['p50'])} p99={_ms(lat['p99'])} ready={rec['ready']} "
                f"sent={tot['sent']} ok={tot['completed']} err={tot['errors']} out={rec['outstanding']}")
        if self.tty:
            sys.stderr.write("\r" + line[:159].ljust(100))
            sys.stderr.flush()
        elif self.n % 5 == 0 or rec.get("final"):
            sys.stderr.write(line + "\n")

    def end(self) -> None:
        if self.enabled and self.tty:
            sys.stderr.write("\n")


def _ms(v: float | None) -> str:
    return "-" if v is None else f"{v:.1f}ms"


async def run(a: argparse.Namespace, opts: Options | None = None,
              on_record: Callable[[dict[str, Any]], None] | None = None,
              ready_engine: Callable[[Engine], None] | None = None) -> dict[str, Any]:
    """One engine process: the whole run, returning the summary. Raises RuntimeError if no
    replica becomes ready within --wait-ready."""
    writer = JsonlWriter(a.out) if on_record is None else None
    status = StatusLine(not a.quiet)
    record = on_record or writer  # type: ignore[assignment]
    engine = Engine(opts or engine_options(a), on_record=record, on_status=status)
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    engine.loop = loop
    if ready_engine is not None:
        ready_engine(engine)
    side: list[asyncio.Task] = []
    feed = None
    restore_tty: Callable[[], None] | None = None
    undo_signals: Callable[[], None] | None = None
    try:
        if a.replicas:
            engine.set_replicas([Replica(name=f"{h}:{p}", group=a.group, host="static", address=h, port=p,
                                         state="ready") for h, p in a.replicas])
        else:
            feed = make_feed(a, engine)
            side.append(loop.create_task(feed.run(stop)))
        if not await engine.wait_ready(a.wait_ready):
            raise RuntimeError(f"no replica of group {a.group!r} became ready within {a.wait_ready:g} s")
        undo_signals = install_signals(loop, engine)
        if a.control:
            side.append(loop.create_task(control_server(a.control, engine, stop)))
        if not a.no_keys and sys.stdin.isatty():
            restore_tty = keys_reader(loop, engine)
        if a.phases:
            side.append(loop.create_task(run_schedule(a.phases, engine)))
        summary = await engine.run(a.duration_s)
        if feed is not None:
            summary["feed"] = {"snapshots": feed.state.snapshots, "updates_applied": feed.state.applied,
                               "resyncs": dict(feed.state.resyncs), "bad_messages": feed.errors}
        return summary
    finally:
        stop.set()
        if restore_tty is not None:
            restore_tty()
        if undo_signals is not None:
            undo_signals()
        for t in side:
            if t.get_name() != "feed":
                t.cancel()
        if side:
            await asyncio.wait(side, timeout=3.0)
        status.end()
        if writer is not None:
            writer.close()


def make_feed(a: argparse.Namespace, engine: Engine):  # -> ReplicaFeed
    from client.replicas import ReplicaFeed  # zmq only when following the autoscaler
    publish, snapshot, key = a.zmq_publish, a.zmq_snapshot, a.curve_server_key
    publish, snapshot = (v.split(",") if v else None for v in (publish, snapshot))
    if not (publish and snapshot and key is not None):
        from cms.config import load_or_exit
        cfg = load_or_exit(a.config)
        publish = publish or cfg.zmq.publish
        snapshot = snapshot or cfg.zmq.snapshot
        key = cfg.zmq.curve_public_key if key is None else key

    def on_change(replicas, update) -> None:
        if update is None:
            engine.set_replicas(replicas, reason="snapshot")
        else:
            engine.set_replicas(replicas, pub_ts=update.ts, reason=update.reason)

    def on_event(kind: str, info: dict[str, Any]) -> None:
        engine.event(kind, **info)

    return ReplicaFeed(publish, snapshot, a.group, on_change, curve_server_key=key or "", on_event=on_event)


def write_summary(a: argparse.Namespace, summary: dict[str, Any]) -> None:
    if a.summary:
        with open(a.summary, "w", encoding="utf-8") as fh:
            json.dump(summary, fh, indent=1)
            fh.write("\n")
    printable = {k: v for k, v in summary.items() if k not in ("histogram", "options")}
    try:
        print(json.dumps(printable, separators=(",", ":")), flush=True)
    except BrokenPipeError:
        # the reader went away (| head); the files are written, nothing else to do
        sys.stdout = open(os.devnull, "w")


def main(argv: list[str] | None = None) -> int:
    a = parse_args(argv)
    try:
        summary = asyncio.run(run(a))
    except KeyboardInterrupt:
        print("cms-loadgen: interrupted before the run started", file=sys.stderr)
        return 130
    except RuntimeError as exc:
        print(f"cms-loadgen: {exc}", file=sys.stderr)
        return 1
    except OSError as exc:
        print(f"cms-loadgen: {exc}", file=sys.stderr)
        return 1
    write_summary(a, summary)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
