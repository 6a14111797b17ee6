"""The load engine: one run of cms-loadgen, from the first arrival to the summary.

Everything runs on one asyncio loop and the hot path is callbacks, not tasks. The engine
ties the parts together and owns the run: the mode (low/high) and its switches, the
replica set (client.backends), the arrivals (client.arrivals: open or closed loop), the
requests' journey (client.dispatch, over client.http1 connections), and what is recorded:
an event line as things happen, a tick line every second and the summary at the end
(client.accounting; the formats are in client.loadgen's docstring).
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from typing import Any, Callable, Iterable

from client.accounting import RunTotals
from client.arrivals import ClosedLoop, OpenLoop
from client.backends import Backends
from client.dispatch import Dispatcher
from client.schedule import MODES
from guest.cms_work import result as work_result


def make_payloads(n: int) -> list[str]:
    return [f"cms-load-{i:03d}" for i in range(n)]


@dataclass
class Options:
    low_rate: float = 10.0
    high_rate: float = 100.0
    # closed loop instead of open loop: {"low": n, "high": m} outstanding requests
    concurrency: dict[str, int] | None = None
    balance: str = "rr"                 # client.pick.POLICIES
    cost: int = 1000
    payloads: int = 8
    timeout: float = 10.0               # per request, from its intended send time
    connect_timeout: float = 2.0
    max_conns: int = 64                 # per replica
    max_backlog: int = 100_000          # queued in the client before new arrivals fail as "overload"
    drain_timeout: float = 5.0
    backoff: float = 0.5                # a replica that refused a connection is avoided this long
    start_mode: str = "low"


class Engine:
    """Drives load at the replicas it is told about (set_replicas) until stop()."""

    def __init__(self, opts: Options, on_record: Callable[[dict[str, Any]], None] | None = None,
                 on_status: Callable[[dict[str, Any]], None] | None = None) -> None:
        self.opts = opts
        self.on_record = on_record or (lambda rec: None)
        self.on_status = on_status or (lambda rec: None)
        payloads = make_payloads(opts.payloads)
        # pbkdf2 costs the client what it costs the server: compute each expected answer once
        expected = [work_result(p, opts.cost) for p in payloads]
        paths = [f"/work?payload={p}&cost={opts.cost}".encode() for p in payloads]
        self.backends = Backends(paths, opts.balance)
        self.replicas = self.backends.all       # by name, also those that left
        self.ready = self.backends.ready        # in the order they became ready
        self.totals = RunTotals()
        self.dispatch = Dispatcher(opts, self.backends, self.totals, expected, self._settled)
        self.arrivals: OpenLoop | ClosedLoop | None = None
        self.mode = opts.start_mode
        self.mode_since = 0.0
        self.stopping = False      # no new arrivals
        self.closed = False        # the run is over: connections are being torn down
        self.t0 = 0.0
        self.t0_wall = 0.0
        self.last_tick = 0.0
        self._stop_event: asyncio.Event | None = None
        self._ready_event: asyncio.Event | None = None
        self._idle_event: asyncio.Event | None = None

    @property
    def loop(self) -> asyncio.AbstractEventLoop | None:
        return self.dispatch.loop

    @loop.setter
    def loop(self, loop: asyncio.AbstractEventLoop | None) -> None:
        self.dispatch.loop = loop

    # --- control -------------------------------------------------------------------------

    @property
    def rate(self) -> float:
        return self.opts.high_rate if self.mode == "high" else self.opts.low_rate

    @property
    def target_concurrency(self) -> int | None:
        c = self.opts.concurrency
        return None if c is None else c[self.mode]

    def set_mode(self, mode: str, source: str = "api") -> bool:
        """Switch to "low" or "high"; returns whether anything changed."""
        if mode not in MODES:
            raise ValueError(f"unknown mode {mode!r}")
        if mode == self.mode:
            return False
        now = self._now()
        if self.loop is not None and self.t0:
            self.totals.modes[self.mode].seconds += now - self.mode_since
        self.mode_since = now
        self.mode = self.dispatch.mode = mode
        self.event("mode", mode=mode, source=source, target_rate=None if self.opts.concurrency else self.rate,
                   concurrency=self.target_concurrency)
        if self.arrivals is not None and not self.stopping:
            self.arrivals.rate_changed()
        return True

    def toggle_mode(self, source: str = "api") -> str:
        self.set_mode("high" if self.mode == "low" else "low", source)
        return self.mode

    def stop(self) -> None:
        if self._stop_event is not None:
            self._stop_event.set()

    def event(self, event: str, **info: Any) -> None:
        """Record an event line ({"type": "event", "ts", "t", "event", ...info})."""
        rec = {"type": "event", "ts": round(time.time(), 6), "t": round(self._now() - self.t0, 6) if self.t0 else 0.0,
               "event": event}
        rec.update(info)
        self.on_record(rec)

    def _now(self) -> float:
        return self.loop.time() if self.loop is not None else time.monotonic()

    # --- the replica set -------------------------------------------------------------------

    def set_replicas(self, replicas: Iterable[Any], pub_ts: float | None = None, reason: str = "") -> None:
        """Apply the group's whole current set (objects with name/address/port/state);
        see client.backends. `pub_ts` and `reason` come from the update that said so."""
        for b, change in self.backends.apply(replicas, self._now(), time.time(), pub_ts):
            fresh = not b.pool.conns if change == "ready" else change == "moved" and not b.pool.idle
            if fresh and self.loop is not None and not b.pool.connecting:
                self.dispatch.open(b)   # connect now so its first request does not wait for it
            self.event("replica_moved" if change == "moved" else f"replica_{b.state}", replica=b.name,
                       endpoint=b.endpoint, pub_ts=pub_ts, reason=reason)
            if change == "unready":
                b.pool.close_idle()
                self.dispatch.redispatch(b.queue)
        if self.ready and self.dispatch.backlog:
            self.dispatch.redispatch(self.dispatch.backlog)
        if self.ready and self._ready_event is not None:
            self._ready_event.set()

    # --- settling, records --------------------------------------------------------------------

    def _settled(self) -> None:
        """A request ended: the closed loop sends another; a stopping run may now be idle."""
        if self.stopping:
            self._check_idle()
        elif self.arrivals is not None:
            self.arrivals.settled()

    def _check_idle(self) -> None:
        if self._idle_event is not None and self.totals.outstanding <= 0:
            self._idle_event.set()

    def _tick(self, final: bool = False) -> dict[str, Any]:
        now = self.loop.time()  # type: ignore[union-attr]
        dt = max(1e-9, now - self.last_tick)
        self.last_tick = now
        counts = self.totals.interval(dt)
        reps = {}
        for b in self.replicas.values():
            if b.state == "removed" and b.tally.quiet:
                continue
            reps[b.name] = {"endpoint": b.endpoint, "state": b.state, **b.tally.interval(dt),
                            "in_flight": b.in_flight, "queued": len(b.queue)}
        t = self.totals
        rec = {
            "type": "tick", "ts": round(time.time(), 6), "t": round(now - self.t0, 6), "interval_s": round(dt, 6),
            "mode": self.mode, "target_rate": None if self.opts.concurrency else self.rate,
            "concurrency": self.target_concurrency, **counts,
            "outstanding": t.outstanding, "ready": len(self.ready),
            "total": {"sent": t.sent, "completed": t.completed, "errors": t.errors},
            "replicas": reps,
        }
        if final:
            rec["final"] = True
        self.on_record(rec)
        self.on_status(rec)
        return rec

    async def _ticker(self) -> None:
        loop = self.loop
        assert loop is not None
        k = 1
        while not self.closed:
            delay = self.t0 + k - loop.time()
            if delay > 0:
                await asyncio.sleep(delay)
            if self.closed:
                return
            self._tick()
            k += 1
            # after a stall, skip ticks rather than emitting a burst
            while self.t0 + k <= loop.time():
                k += 1

    async def _sweeper(self) -> None:
        while not self.closed:
            await asyncio.sleep(0.1)
            self.dispatch.sweep()
            self._check_idle()

    # --- the run ----------------------------------------------------------------------------

    async def wait_ready(self, timeout: float) -> bool:
        """Wait (bounded) until at least one replica is ready."""
        if self.loop is None:
            self.loop = asyncio.get_running_loop()
        if self.ready:
            return True
        self._ready_event = asyncio.Event()
        try:
            await asyncio.wait_for(self._ready_event.wait(), timeout)
            return True
        except asyncio.TimeoutError:
            return bool(self.ready)

    async def run(self, duration: float) -> dict[str, Any]:
        """Generate load for `duration` seconds (or until stop()), drain, and return the summary."""
        loop = self.loop = asyncio.get_running_loop()
        self._stop_event = asyncio.Event()
        self._idle_event = asyncio.Event()
        self.t0 = self.last_tick = self.mode_since = loop.time()
        self.t0_wall = time.time()
        self.event("start", mode=self.mode, target_rate=None if self.opts.concurrency else self.rate,
                   concurrency=self.target_concurrency, balance=self.opts.balance, cost=self.opts.cost)
        tasks = [loop.create_task(self._ticker()), loop.create_task(self._sweeper())]
        if self.opts.concurrency is None:
            self.arrivals = OpenLoop(lambda: self.rate, self.dispatch.issue)
            tasks.append(self.arrivals.start(loop))
        else:
            self.arrivals = ClosedLoop(lambda: self.target_concurrency or 0, lambda: self.totals.outstanding,
                                       self.dispatch.issue, loop.time)
            self.arrivals.start(loop)
        try:
            await asyncio.wait_for(self._stop_event.wait(), duration)
        except asyncio.TimeoutError:
            pass
        self.stopping = True
        self.arrivals.stop()
        end = loop.time()
        self.totals.modes[self.mode].seconds += end - self.mode_since
        self.mode_since = end
        self.event("stop", outstanding=self.totals.outstanding)
        # let in-flight work finish, bounded
        if self.totals.outstanding > 0:
            self._idle_event.clear()
            try:
                await asyncio.wait_for(self._idle_event.wait(), self.opts.drain_timeout)
            except asyncio.TimeoutError:
                pass
        self.closed = True
        self.dispatch.abandon()
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        self._tick(final=True)
        self.dispatch.disconnect()
        await asyncio.sleep(0)
        return self.summary(end - self.t0)

    def summary(self, duration: float) -> dict[str, Any]:
        o = self.opts
        return {
            "type": "summary",
            "started_at": round(self.t0_wall, 6), "ended_at": round(time.time(), 6),
            "duration_s": round(duration, 3),
            **self.totals.summary(duration),
            "replicas": {name: b.summary(self.t0_wall - self.t0) for name, b in self.replicas.items()},
            "options": {"low_rate": o.low_rate, "high_rate": o.high_rate, "concurrency": o.concurrency,
                        "balance": o.balance, "cost": o.cost, "payloads": o.payloads, "timeout": o.timeout,
                        "max_conns": o.max_conns},
            "histogram": self.totals.hist.to_json(),
        }
