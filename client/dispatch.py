"""Where each request goes and how it ends.

An arrival becomes a LoadRequest; client.pick (through Backends) picks a replica; the request
is written to an idle keep-alive connection of that replica, or waits in the replica's
queue while a connection opens, or in the backlog while no replica is ready. The
connections (client.http1) call back here with the outcome, which is checked against the
expected result and counted (client.accounting). Each request settles exactly once.

Connection errors and 5xx are retried once on another replica. A request still queued in
the client after SHED_AFTER of its timeout is dropped unsent ("shed"), so an overloaded
replica does not burn its CPU on answers nobody will read; one older than the timeout
(counted from its intended send time) is a "timeout", sent or not.
"""

from __future__ import annotations

import asyncio
import collections
import json
import time
from typing import Any, Callable

from client.accounting import RunTotals
from client.backends import Backend, Backends
from client.http1 import Conn, scratch_buffer

# Error kinds retried once on another replica.
RETRYABLE = frozenset({"connect", "connection", "http_5xx"})
# A queued request older than this fraction of the timeout is dropped before sending ("shed").
SHED_AFTER = 0.5


class LoadRequest:
    __slots__ = ("idx", "intended", "mode", "tries")

    def __init__(self, idx: int, intended: float, mode: str) -> None:
        self.idx = idx              # which payload of the pool
        self.intended = intended    # loop time it was meant to be sent
        self.mode = mode
        self.tries = 0


class Dispatcher:
    """Implements client.http1.ConnOwner for the engine's connections.

    opts: the engine's Options; expected[i]: the result payload i must get;
    on_settled(): called each time a request ends, whichever way.
    """

    def __init__(self, opts: Any, backends: Backends, totals: RunTotals, expected: list[str],
                 on_settled: Callable[[], None]) -> None:
        self.opts = opts
        self.backends = backends
        self.totals = totals
        self.expected = expected
        self.on_settled = on_settled
        self.mode = opts.start_mode     # stamped on each new request
        self.loop: asyncio.AbstractEventLoop | None = None
        self.closed = False             # tearing down: no retries, no connection reuse
        self.backlog: collections.deque[LoadRequest] = collections.deque()   # no replica was ready
        self.n_issued = 0
        self.scratch = scratch_buffer()    # what every connection reads into

    def _now(self) -> float:
        return self.loop.time() if self.loop is not None else time.monotonic()

    # --- requests in ------------------------------------------------------------------------

    def issue(self, intended: float) -> None:
        """A new request meant to be sent at loop time `intended`."""
        idx = self.n_issued % len(self.expected)
        self.n_issued += 1
        req = LoadRequest(idx, intended, self.mode)
        self.totals.issued(req.mode)
        if self.totals.outstanding > self.opts.max_backlog:
            self._error(req, "overload")
            return
        self.dispatch(req)

    def dispatch(self, req: LoadRequest, exclude: Backend | None = None) -> None:
        b = self.backends.pick(self._now(), exclude)
        if b is None:
            self.backlog.append(req)
            return
        if b.pool.idle:
            self._send(b.pool.idle.pop(), req)
            return
        b.queue.append(req)
        if b.pool.should_open(len(b.queue), self.opts.max_conns):
            self.open(b)

    def redispatch(self, waiting: collections.deque[LoadRequest]) -> None:
        """Send requests that waited for a replica (or for one that left) elsewhere;
        they were never sent, so this is not a retry."""
        reqs = list(waiting)
        waiting.clear()
        for req in reqs:
            self.dispatch(req)

    def _send(self, conn: Conn, req: LoadRequest) -> None:
        b: Backend = conn.peer
        now = self.loop.time()  # type: ignore[union-attr]
        b.in_flight += 1
        b.tally.attempt()
        tl = b.timeline
        if tl.first_sent_mono is None:
            tl.first_sent_mono = now
            tl.first_sent_at = time.time()
            self.backends.picker.not_fresh(b)
        tl.last_sent_mono = now
        conn.send(req, b.pool.requests[req.idx])

    # --- connections ------------------------------------------------------------------------

    def open(self, b: Backend) -> None:
        b.pool.connecting += 1
        self.loop.create_task(self._connect(b))  # type: ignore[union-attr]

    async def _connect(self, b: Backend) -> None:
        pool = b.pool
        loop = self.loop
        assert loop is not None
        try:
            await asyncio.wait_for(loop.create_connection(lambda: Conn(self, b, self.scratch), pool.address, pool.port),
                                   self.opts.connect_timeout)
        except (OSError, asyncio.TimeoutError):
            pool.connecting -= 1
            b.backoff_until = self._now() + self.opts.backoff
            # everything waiting for this replica fails over (retried once elsewhere)
            waiting = list(b.queue)
            b.queue.clear()
            for req in waiting:
                self._attempt_failed(req, b, "connect")
            return
        pool.connecting -= 1

    def _conn_free(self, conn: Conn) -> None:
        b: Backend = conn.peer
        if conn.closing or not b.ready or self.closed:
            conn.close()
            return
        q = b.queue
        if q:
            # Shed what has waited here over half its timeout: sent now, it would likely be
            # abandoned mid-flight, and the replica would burn CPU on an answer nobody reads
            # (that is how an overloaded replica's goodput collapses to zero).
            limit = self.loop.time() - self.opts.timeout * SHED_AFTER  # type: ignore[union-attr]
            while q and q[0].intended < limit:
                self._error(q.popleft(), "shed")
        if q:
            self._send(conn, q.popleft())
        else:
            b.pool.idle.append(conn)

    def connection_ready(self, conn: Conn) -> None:
        conn.peer.pool.conns.add(conn)
        self._conn_free(conn)

    def connection_closed(self, conn: Conn, req: LoadRequest | None) -> None:
        b: Backend = conn.peer
        b.pool.forget(conn)
        if req is not None:
            b.in_flight -= 1
            self._attempt_failed(req, b, "connection")
        # keep requests that were waiting for a connection moving
        if b.ready and b.queue and b.pool.should_open(len(b.queue), self.opts.max_conns):
            self.open(b)

    # --- outcomes ---------------------------------------------------------------------------

    def bad_response(self, conn: Conn, req: LoadRequest) -> None:
        b: Backend = conn.peer
        b.in_flight -= 1
        self._attempt_failed(req, b, "bad_response")

    def response(self, conn: Conn, req: LoadRequest, status: int, body: bytes) -> None:
        b: Backend = conn.peer
        b.in_flight -= 1
        # free the connection first, so the next request (closed loop, retry) can reuse it
        self._conn_free(conn)
        if status == 200:
            try:
                d = json.loads(body)
                ok = d["result"] == self.expected[req.idx] and d["cost"] == self.opts.cost
            except (ValueError, KeyError, TypeError):
                ok = False
            if ok:
                lat = self.loop.time() - req.intended  # type: ignore[union-attr]
                b.tally.ok(lat)
                self.totals.ok(req.mode, lat)
                self.on_settled()
            else:
                b.tally.fail()
                self._error(req, "wrong_result")
        elif status >= 500:
            self._attempt_failed(req, b, "http_5xx")
        else:
            b.tally.fail()
            self._error(req, f"http_{status}")

    def _attempt_failed(self, req: LoadRequest, b: Backend, kind: str) -> None:
        b.tally.fail()
        if kind in RETRYABLE and req.tries == 0 and not self.closed:
            req.tries = 1
            self.totals.retries += 1
            self.dispatch(req, exclude=b)
        else:
            self._error(req, kind)

    def _error(self, req: LoadRequest, kind: str) -> None:
        self.totals.error(req.mode, kind)
        self.on_settled()

    # --- expiry and the end -----------------------------------------------------------------

    def sweep(self) -> None:
        """Expire requests older than the timeout (measured from their intended send time)."""
        limit = self.loop.time() - self.opts.timeout  # type: ignore[union-attr]
        for b in self.backends.all.values():
            q = b.queue
            while q and q[0].intended < limit:
                self._error(q.popleft(), "timeout")
            for c in list(b.pool.conns):
                r = c.req
                if r is not None and r.intended < limit:
                    c.abort()
                    b.in_flight -= 1
                    b.tally.fail()
                    self._error(r, "timeout")
        while self.backlog and self.backlog[0].intended < limit:
            self._error(self.backlog.popleft(), "no_replica")

    def abandon(self) -> None:
        """Settle everything still open as "abandoned" (the run is over)."""
        self.closed = True
        for b in self.backends.all.values():
            for c in list(b.pool.conns):
                if c.req is not None:
                    r, c.req = c.req, None
                    b.in_flight -= 1
                    self._error(r, "abandoned")
            while b.queue:
                self._error(b.queue.popleft(), "abandoned")
        while self.backlog:
            self._error(self.backlog.popleft(), "abandoned")

    def disconnect(self) -> None:
        for b in self.backends.all.values():
            b.pool.abort_all()
