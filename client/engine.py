"""The load engine: arrivals, balancing, HTTP/1.1 keep-alive connections, checking, stats.

Everything runs on one asyncio loop and the hot path is callbacks, not tasks: an arrival
picks a replica, hands the request to an idle keep-alive connection (or queues it and opens
one), and the connection's ``data_received`` parses the response and settles the request
in place. One request is in flight per connection (no pipelining).

Accounting: ``sent`` counts logical requests (a retry is not a new one); each ends exactly
once as ``completed`` (200 with the expected result) or as an error of some kind, so
``sent == completed + errors`` once nothing is outstanding. Latency is measured from the
request's *intended* send time (open loop), so time a request waited in the client because
every connection was busy counts, and a slow server cannot hide behind a slow client.
"""

from __future__ import annotations

import asyncio
import collections
import hashlib
import json
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable

from client.stats import Histogram, percentiles_sorted

MODES = ("low", "high")
GUEST_SALT = b"cms-guest"

# Error kinds. "connect", "connection" and "http_5xx" are retried once on another replica.
RETRYABLE = frozenset({"connect", "connection", "http_5xx"})


def expected_result(payload: str, cost: int) -> str:
    """What the guest server must answer for /work?payload=...&cost=... (its fixed contract)."""
    return hashlib.pbkdf2_hmac("sha256", payload.encode(), GUEST_SALT, cost).hex()


def make_payloads(n: int) -> list[str]:
    return [f"cms-load-{i:03d}" for i in range(n)]


# A queued request older than this fraction of the timeout is dropped before sending ("shed").
SHED_AFTER = 0.5


@dataclass
class Options:
    low_rate: float = 10.0
    high_rate: float = 100.0
    # closed loop instead of open loop: {"low": n, "high": m} outstanding requests
    concurrency: dict[str, int] | None = None
    balance: str = "rr"                 # rr | least
    cost: int = 1000
    payloads: int = 8
    timeout: float = 10.0               # per request, from its intended send time
    connect_timeout: float = 2.0
    max_conns: int = 64                 # per replica
    max_backlog: int = 100_000          # queued in the client before new arrivals fail as "overload"
    drain_timeout: float = 5.0
    backoff: float = 0.5                # a replica that refused a connection is avoided this long
    start_mode: str = "low"


class Request:
    __slots__ = ("idx", "intended", "mode", "tries", "sent_at", "rep")

    def __init__(self, idx: int, intended: float, mode: str) -> None:
        self.idx = idx
        self.intended = intended
        self.mode = mode
        self.tries = 0
        self.sent_at = 0.0
        self.rep: ReplicaState | None = None


class ReplicaState:
    """What the client knows and has done with one replica (kept after it leaves, for the summary)."""

    def __init__(self, name: str, address: str, port: int, paths: list[bytes]) -> None:
        self.name = name
        self.address = address
        self.port = port
        self.endpoint = f"{address}:{port}"
        host = self.endpoint.encode()
        self.req_bytes = [b"GET " + p + b" HTTP/1.1\r\nHost: " + host + b"\r\n\r\n" for p in paths]
        self.ready = False
        self.state = "unknown"
        self.conns: set[Conn] = set()
        self.idle: list[Conn] = []
        self.connecting = 0
        self.queue: collections.deque[Request] = collections.deque()
        self.in_flight = 0
        self.backoff_until = 0.0
        # attempt-level counters (a retried request counts once on each replica it tried)
        self.attempts = 0
        self.completed = 0
        self.failed = 0
        self.i_attempts = 0
        self.i_completed = 0
        self.i_failed = 0
        self.i_lat: list[float] = []
        self.hist = Histogram()
        # wall-clock (time.time()) and loop-clock marks
        self.announced_ready_at: float | None = None
        self.announced_ready_mono: float | None = None
        self.announced_ready_pub_ts: float | None = None
        self.first_sent_at: float | None = None
        self.first_sent_mono: float | None = None
        self.unready_at: float | None = None
        self.unready_mono: float | None = None
        self.last_sent_mono: float | None = None

    @property
    def outstanding(self) -> int:
        return self.in_flight + len(self.queue)

    def summary(self, wall_offset: float = 0.0) -> dict[str, Any]:
        """wall_offset: time.time() - loop.time(), to show loop-clock marks as wall-clock."""
        d: dict[str, Any] = {
            "endpoint": self.endpoint, "state": self.state,
            "sent": self.attempts, "completed": self.completed, "errors": self.failed,
            "latency_ms": self.hist.summary_ms(),
            "announced_ready_at": self.announced_ready_at,
            "announced_ready_pub_ts": self.announced_ready_pub_ts,
            "first_sent_at": self.first_sent_at,
            "ready_to_first_send_s": None,
            "unready_at": self.unready_at,
            "last_sent_at": None if self.last_sent_mono is None else round(self.last_sent_mono + wall_offset, 6),
        }
        if self.announced_ready_mono is not None and self.first_sent_mono is not None:
            d["ready_to_first_send_s"] = round(self.first_sent_mono - self.announced_ready_mono, 6)
        return d


class Conn(asyncio.Protocol):
    """One HTTP/1.1 keep-alive connection to one replica, one request at a time."""

    __slots__ = ("engine", "rep", "transport", "buf", "req", "closing", "until_close")

    def __init__(self, engine: "Engine", rep: ReplicaState) -> None:
        self.engine = engine
        self.rep = rep
        self.transport: asyncio.Transport | None = None
        self.buf = b""
        self.req: Request | None = None
        self.closing = False
        self.until_close = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        self.engine._conn_made(self)

    def connection_lost(self, exc: Exception | None) -> None:
        if self.until_close and self.req is not None:
            # a response delimited by the end of the connection (no length, not chunked)
            hend = self.buf.find(b"\r\n\r\n")
            if hend >= 0:
                self.until_close = False
                self._deliver(self.buf, hend, self.buf[hend + 4:], True)
        self.engine._conn_lost(self)

    def eof_received(self) -> bool | None:
        return None  # close our side too

    def data_received(self, data: bytes) -> None:
        if self.buf:
            data = self.buf + data
            self.buf = b""
        if self.req is None:
            # nothing was asked: a confused server; drop the connection
            self.closing = True
            self.transport.abort()  # type: ignore[union-attr]
            return
        if self.until_close:
            self.buf = data
            return
        hend = data.find(b"\r\n\r\n")
        if hend < 0:
            if len(data) > 65536:
                self._bad("response head too long")
                return
            self.buf = data
            return
        head = data[:hend].lower()
        i = head.find(b"\ncontent-length:")
        if i >= 0:
            j = head.find(b"\r", i + 16)
            try:
                clen = int(head[i + 16:j] if j >= 0 else head[i + 16:])
            except ValueError:
                self._bad("bad content-length")
                return
            end = hend + 4 + clen
            if len(data) < end:
                self.buf = data
                return
            if len(data) > end:
                self._bad("unexpected bytes after the response")
                return
            self._deliver(data, hend, data[hend + 4:end], b"\nconnection: close" in head)
        elif b"\ntransfer-encoding: chunked" in head:
            body = _dechunk(data, hend + 4)
            if body is None:
                self.buf = data
                return
            if body is False:
                self._bad("bad chunked body")
                return
            self._deliver(data, hend, body, b"\nconnection: close" in head)
        else:
            self.until_close = True
            self.buf = data

    def _deliver(self, data: bytes, hend: int, body: bytes, close: bool) -> None:
        try:
            status = int(data[9:12])
        except ValueError:
            self._bad("bad status line")
            return
        req = self.req
        self.req = None
        if close:
            self.closing = True
        self.engine._response(self, req, status, body)  # type: ignore[arg-type]

    def _bad(self, why: str) -> None:
        req = self.req
        self.req = None
        self.closing = True
        self.buf = b""
        self.transport.abort()  # type: ignore[union-attr]
        if req is not None:
            self.engine._attempt_done(self.rep)
            self.engine._attempt_failed(req, self.rep, "bad_response")


def _dechunk(data: bytes, pos: int) -> bytes | None | bool:
    """The body of a chunked message starting at pos; None if incomplete, False if malformed."""
    parts = []
    n = len(data)
    for _ in range(100000):
        eol = data.find(b"\r\n", pos)
        if eol < 0:
            return None
        try:
            size = int(data[pos:eol].split(b";", 1)[0], 16)
        except ValueError:
            return False
        pos = eol + 2
        if size == 0:
            # trailers end with an empty line
            end = data.find(b"\r\n\r\n", pos - 2)
            if end < 0:
                return None
            return b"".join(parts)
        if n < pos + size + 2:
            return None
        parts.append(data[pos:pos + size])
        pos += size + 2
    return False


@dataclass
class ModeStats:
    sent: int = 0
    completed: int = 0
    errors: int = 0
    seconds: float = 0.0
    hist: Histogram = field(default_factory=Histogram)


class Engine:
    """Drives load at the replicas it is told about (set_replicas) until stop()."""

    def __init__(self, opts: Options, on_record: Callable[[dict[str, Any]], None] | None = None,
                 on_status: Callable[[dict[str, Any]], None] | None = None) -> None:
        self.opts = opts
        self.on_record = on_record or (lambda rec: None)
        self.on_status = on_status or (lambda rec: None)
        payloads = make_payloads(opts.payloads)
        # pbkdf2 costs the client what it costs the server: compute each expected answer once
        self.expected = [expected_result(p, opts.cost) for p in payloads]
        self.paths = [f"/work?payload={p}&cost={opts.cost}".encode() for p in payloads]
        self.replicas: dict[str, ReplicaState] = {}
        self.ready: list[ReplicaState] = []
        # replicas announced ready that have not had a request yet: the next arrival goes there,
        # so a new replica is used at once whatever the balance and the rate
        self.fresh: list[ReplicaState] = []
        self.backlog: collections.deque[Request] = collections.deque()
        self.rr = 0
        self.loop: asyncio.AbstractEventLoop | None = None
        self.mode = opts.start_mode
        self.mode_since = 0.0
        self.stopping = False      # no new arrivals
        self.closed = False        # connections are being torn down
        self.n_issued = 0
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
        self.t0 = 0.0
        self.t0_wall = 0.0
        self.last_tick = 0.0
        self.ticks = 0
        self._stop_event: asyncio.Event | None = None
        self._ready_event: asyncio.Event | None = None
        self._idle_event: asyncio.Event | None = None
        self._arrival_wakeup: asyncio.Event | None = None

    # --- control -------------------------------------------------------------------------

    @property
    def rate(self) -> float:
        return self.opts.high_rate if self.mode == "high" else self.opts.low_rate

    @property
    def target_concurrency(self) -> int | None:
        c = self.opts.concurrency
        return None if c is None else c[self.mode]

    @property
    def outstanding(self) -> int:
        return self.sent - self.completed - self.errors

    def set_mode(self, mode: str, source: str = "api") -> bool:
        """Switch to "low" or "high"; returns whether anything changed."""
        if mode not in MODES:
            raise ValueError(f"unknown mode {mode!r}")
        if mode == self.mode:
            return False
        now = self._now()
        if self.loop is not None and self.t0:
            self.modes[self.mode].seconds += now - self.mode_since
        self.mode_since = now
        self.mode = mode
        self._event("mode", mode=mode, source=source,
                    target_rate=None if self.opts.concurrency else self.rate,
                    concurrency=self.target_concurrency)
        if self._arrival_wakeup is not None:
            self._arrival_wakeup.set()
        if self.opts.concurrency is not None and self.t0 and not self.stopping:
            self._fill_concurrency()
        return True

    def toggle_mode(self, source: str = "api") -> str:
        self.set_mode("high" if self.mode == "low" else "low", source)
        return self.mode

    def stop(self) -> None:
        if self._stop_event is not None:
            self._stop_event.set()

    def _now(self) -> float:
        return self.loop.time() if self.loop is not None else time.monotonic()

    def _event(self, event: str, **kw: Any) -> None:
        rec = {"type": "event", "ts": round(time.time(), 6), "t": round(self._now() - self.t0, 6) if self.t0 else 0.0,
               "event": event}
        rec.update(kw)
        self.on_record(rec)

    # --- the replica set -------------------------------------------------------------------

    def set_replicas(self, replicas: Iterable[Any], pub_ts: float | None = None, reason: str = "") -> None:
        """Apply the group's whole current set (objects with name/address/port/state).

        A replica is used from the moment it is listed "ready" and never again once it is
        listed otherwise or is absent.
        """
        now = self._now()
        wall = time.time()
        seen = set()
        for r in replicas:
            seen.add(r.name)
            st = self.replicas.get(r.name)
            if st is not None and (st.address != r.address or st.port != int(r.port)) and not st.ready:
                st = None  # same name at a new address: a fresh record
            if st is None:
                st = ReplicaState(r.name, r.address, int(r.port), self.paths)
                self.replicas[r.name] = st
            if r.state == "ready" and not st.ready:
                st.ready = True
                st.state = "ready"
                st.backoff_until = 0.0
                if st.announced_ready_mono is None:
                    st.announced_ready_at = wall
                    st.announced_ready_mono = now
                    st.announced_ready_pub_ts = pub_ts
                self.ready.append(st)
                if st.first_sent_mono is None:
                    self.fresh.append(st)
                if self.loop is not None and not st.conns and not st.connecting:
                    self._open(st)   # connect now so its first request does not wait for it
                self._event("replica_ready", replica=st.name, endpoint=st.endpoint, pub_ts=pub_ts, reason=reason)
            elif r.state != "ready":
                if st.ready:
                    self._unready(st, r.state, now, wall, pub_ts, reason)
                elif st.state != r.state:
                    st.state = r.state
                    self._event(f"replica_{r.state}", replica=st.name, endpoint=st.endpoint, pub_ts=pub_ts, reason=reason)
        for st in list(self.replicas.values()):
            if st.name not in seen and st.state != "removed":
                if st.ready:
                    self._unready(st, "removed", now, wall, pub_ts, reason)
                else:
                    st.state = "removed"
                    self._event("replica_removed", replica=st.name, endpoint=st.endpoint, pub_ts=pub_ts, reason=reason)
        if self.ready and self.backlog:
            waiting = list(self.backlog)
            self.backlog.clear()
            for req in waiting:
                self._dispatch(req)
        if self.ready and self._ready_event is not None:
            self._ready_event.set()

    def _unready(self, st: ReplicaState, state: str, now: float, wall: float, pub_ts: float | None, reason: str) -> None:
        st.ready = False
        st.state = state
        st.unready_at = wall
        st.unready_mono = now
        self.ready.remove(st)
        self._event(f"replica_{state}", replica=st.name, endpoint=st.endpoint, pub_ts=pub_ts, reason=reason)
        for c in st.idle:
            c.closing = True
            c.transport.close()  # type: ignore[union-attr]
        st.idle.clear()
        # requests still waiting in the client for this replica go elsewhere (never sent, not retries)
        waiting = list(st.queue)
        st.queue.clear()
        for req in waiting:
            self._dispatch(req)

    # --- dispatch ---------------------------------------------------------------------------

    def _pick(self, exclude: ReplicaState | None = None) -> ReplicaState | None:
        ready = self.ready
        if not ready:
            return None
        if self.fresh:
            self.fresh = [r for r in self.fresh if r.ready and r.first_sent_mono is None]
            for r in self.fresh:
                if r is not exclude and r.in_flight + len(r.queue) == 0:
                    return r
        if len(ready) == 1:
            return ready[0]
        now = self._now()
        cands = [r for r in ready if r is not exclude and r.backoff_until <= now]
        if not cands:
            cands = [r for r in ready if r is not exclude] or ready
        n = len(cands)
        self.rr += 1
        if self.opts.balance == "rr":
            return cands[self.rr % n]
        # least outstanding; ties go round robin so equal replicas share evenly
        start = self.rr % n
        best = None
        best_o = 1 << 62
        for k in range(n):
            r = cands[(start + k) % n]
            o = r.in_flight + len(r.queue)
            if o < best_o:
                best, best_o = r, o
        return best

    def _issue(self, intended: float) -> None:
        idx = self.n_issued % len(self.expected)
        self.n_issued += 1
        req = Request(idx, intended, self.mode)
        self.sent += 1
        self.i_sent += 1
        self.modes[req.mode].sent += 1
        if self.outstanding > self.opts.max_backlog:
            self._error(req, "overload")
            return
        self._dispatch(req)

    def _dispatch(self, req: Request, exclude: ReplicaState | None = None) -> None:
        rep = self._pick(exclude)
        if rep is None:
            self.backlog.append(req)
            return
        req.rep = rep
        if rep.idle:
            self._send(rep.idle.pop(), req)
            return
        rep.queue.append(req)
        if rep.connecting < len(rep.queue) and len(rep.conns) + rep.connecting < self.opts.max_conns:
            self._open(rep)

    def _send(self, conn: Conn, req: Request) -> None:
        rep = conn.rep
        now = self.loop.time()  # type: ignore[union-attr]
        req.sent_at = now
        req.rep = rep
        conn.req = req
        rep.in_flight += 1
        rep.attempts += 1
        rep.i_attempts += 1
        if rep.first_sent_mono is None:
            rep.first_sent_mono = now
            rep.first_sent_at = time.time()
        rep.last_sent_mono = now
        conn.transport.write(rep.req_bytes[req.idx])  # type: ignore[union-attr]

    def _open(self, rep: ReplicaState) -> None:
        rep.connecting += 1
        self.loop.create_task(self._connect(rep))  # type: ignore[union-attr]

    async def _connect(self, rep: ReplicaState) -> None:
        try:
            await asyncio.wait_for(
                self.loop.create_connection(lambda: Conn(self, rep), rep.address, rep.port),  # type: ignore[union-attr]
                self.opts.connect_timeout)
        except (OSError, asyncio.TimeoutError):
            rep.connecting -= 1
            rep.backoff_until = self._now() + self.opts.backoff
            # everything waiting for this replica fails over (retried once elsewhere)
            waiting = list(rep.queue)
            rep.queue.clear()
            for req in waiting:
                self._attempt_failed(req, rep, "connect")
            return
        rep.connecting -= 1

    def _conn_made(self, conn: Conn) -> None:
        rep = conn.rep
        rep.conns.add(conn)
        self._conn_free(conn)

    def _conn_free(self, conn: Conn) -> None:
        rep = conn.rep
        if conn.closing or not rep.ready or self.closed:
            conn.closing = True
            conn.transport.close()  # type: ignore[union-attr]
            return
        if rep.queue:
            # Shed what has waited here over half its timeout: sent now, it would likely be
            # abandoned mid-flight, and the replica would burn CPU on an answer nobody reads
            # (that is how an overloaded replica's goodput collapses to zero).
            limit = self.loop.time() - self.opts.timeout * SHED_AFTER  # type: ignore[union-attr]
            while rep.queue and rep.queue[0].intended < limit:
                self._error(rep.queue.popleft(), "shed")
        if rep.queue:
            self._send(conn, rep.queue.popleft())
        else:
            rep.idle.append(conn)

    def _conn_lost(self, conn: Conn) -> None:
        rep = conn.rep
        rep.conns.discard(conn)
        if conn in rep.idle:
            rep.idle.remove(conn)
        req = conn.req
        if req is not None:
            conn.req = None
            self._attempt_done(rep)
            self._attempt_failed(req, rep, "connection")
        # keep requests that were waiting for a connection moving
        if rep.ready and rep.queue and rep.connecting < len(rep.queue) \
                and len(rep.conns) + rep.connecting < self.opts.max_conns:
            self._open(rep)

    # --- outcomes ---------------------------------------------------------------------------

    def _attempt_done(self, rep: ReplicaState) -> None:
        rep.in_flight -= 1

    def _response(self, conn: Conn, req: Request, status: int, body: bytes) -> None:
        rep = conn.rep
        rep.in_flight -= 1
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
                rep.completed += 1
                rep.i_completed += 1
                rep.i_lat.append(lat)
                self.completed += 1
                self.i_completed += 1
                self.modes[req.mode].completed += 1
                self.i_lat[req.mode].append(lat)
                if self.opts.concurrency is not None:
                    self._fill_concurrency()
            else:
                rep.failed += 1
                rep.i_failed += 1
                self._error(req, "wrong_result")
        elif status >= 500:
            self._attempt_failed(req, rep, "http_5xx")
        else:
            rep.failed += 1
            rep.i_failed += 1
            self._error(req, f"http_{status}")
        if self.stopping:
            self._check_idle()

    def _attempt_failed(self, req: Request, rep: ReplicaState, kind: str) -> None:
        rep.failed += 1
        rep.i_failed += 1
        if kind in RETRYABLE and req.tries == 0 and not self.closed:
            req.tries = 1
            self.retries += 1
            self._dispatch(req, exclude=rep)
        else:
            self._error(req, kind)

    def _error(self, req: Request, kind: str) -> None:
        self.errors += 1
        self.i_errors += 1
        self.errors_by_kind[kind] += 1
        self.modes[req.mode].errors += 1
        if self.opts.concurrency is not None and not self.closed:
            self._fill_concurrency()

    def _check_idle(self) -> None:
        if self._idle_event is not None and self.outstanding <= 0:
            self._idle_event.set()

    # --- arrivals ---------------------------------------------------------------------------

    def _fill_concurrency(self) -> None:
        if self.stopping:
            self._check_idle()
            return
        target = self.target_concurrency or 0
        now = self.loop.time()  # type: ignore[union-attr]
        # bounded: at most `target` new requests per call
        for _ in range(max(0, target - self.outstanding)):
            self._issue(now)

    async def _open_loop(self) -> None:
        loop = self.loop
        assert loop is not None and self._arrival_wakeup is not None
        wake = self._arrival_wakeup
        next_t = loop.time()
        while not self.stopping:
            rate = self.rate
            now = loop.time()
            if rate <= 0:
                wake.clear()
                try:
                    await asyncio.wait_for(wake.wait(), 0.1)
                except asyncio.TimeoutError:
                    pass
                next_t = loop.time()
                continue
            gap = 1.0 / rate
            if wake.is_set():
                # the rate changed: the next arrival follows the new spacing at once
                wake.clear()
                next_t = min(next_t, now + gap)
            n = 0
            while next_t <= now and n < 2000:
                self._issue(next_t)
                next_t += gap
                n += 1
            delay = next_t - loop.time()
            if delay > 0:
                try:
                    await asyncio.wait_for(wake.wait(), delay) if delay > 0.05 else await asyncio.sleep(delay)
                except asyncio.TimeoutError:
                    pass
            else:
                await asyncio.sleep(0)

    # --- housekeeping -----------------------------------------------------------------------

    def _sweep(self) -> None:
        """Expire requests older than the timeout (measured from their intended send time)."""
        now = self.loop.time()  # type: ignore[union-attr]
        limit = now - self.opts.timeout
        for rep in self.replicas.values():
            q = rep.queue
            while q and q[0].intended < limit:
                self._error(q.popleft(), "timeout")
            for c in list(rep.conns):
                r = c.req
                if r is not None and r.intended < limit:
                    c.req = None
                    c.closing = True
                    rep.in_flight -= 1
                    rep.failed += 1
                    rep.i_failed += 1
                    c.transport.abort()  # type: ignore[union-attr]
                    self._error(r, "timeout")
        while self.backlog and self.backlog[0].intended < limit:
            self._error(self.backlog.popleft(), "no_replica")

    def _tick(self, final: bool = False) -> dict[str, Any]:
        now = self.loop.time()  # type: ignore[union-attr]
        dt = max(1e-9, now - self.last_tick)
        self.last_tick = now
        self.ticks += 1
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
        reps = {}
        for rep in self.replicas.values():
            if rep.state == "removed" and rep.i_attempts == 0 and rep.i_completed == 0 and rep.i_failed == 0:
                continue
            rl = rep.i_lat
            rl.sort()
            rep.hist.add_many(rl)
            reps[rep.name] = {
                "endpoint": rep.endpoint, "state": rep.state,
                "sent": rep.i_attempts, "completed": rep.i_completed, "errors": rep.i_failed,
                "in_flight": rep.in_flight, "queued": len(rep.queue),
                "throughput": round(rep.i_completed / dt, 2),
                "latency_ms": percentiles_sorted(rl),
            }
            rep.i_attempts = rep.i_completed = rep.i_failed = 0
            rep.i_lat = []
        rec = {
            "type": "tick", "ts": round(time.time(), 6), "t": round(now - self.t0, 6), "interval_s": round(dt, 6),
            "mode": self.mode,
            "target_rate": None if self.opts.concurrency else self.rate,
            "concurrency": self.target_concurrency,
            "sent": self.i_sent, "completed": self.i_completed, "errors": self.i_errors,
            "throughput": round(self.i_completed / dt, 2),
            "latency_ms": percentiles_sorted(lat_all),
            "outstanding": self.outstanding, "ready": len(self.ready),
            "total": {"sent": self.sent, "completed": self.completed, "errors": self.errors},
            "replicas": reps,
        }
        if final:
            rec["final"] = True
        self.i_sent = self.i_completed = self.i_errors = 0
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
            self._sweep()
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
        self._arrival_wakeup = asyncio.Event()
        self._idle_event = asyncio.Event()
        self.t0 = self.last_tick = self.mode_since = loop.time()
        self.t0_wall = time.time()
        self._event("start", mode=self.mode, target_rate=None if self.opts.concurrency else self.rate,
                    concurrency=self.target_concurrency, balance=self.opts.balance, cost=self.opts.cost)
        tasks = [loop.create_task(self._ticker()), loop.create_task(self._sweeper())]
        if self.opts.concurrency is None:
            tasks.append(loop.create_task(self._open_loop()))
        else:
            self._fill_concurrency()
        try:
            await asyncio.wait_for(self._stop_event.wait(), duration)
        except asyncio.TimeoutError:
            pass
        self.stopping = True
        end = loop.time()
        self.modes[self.mode].seconds += end - self.mode_since
        self.mode_since = end
        self._event("stop", outstanding=self.outstanding)
        # let in-flight work finish, bounded
        self._idle_event.clear()
        self._check_idle()
        if self.outstanding > 0:
            try:
                await asyncio.wait_for(self._idle_event.wait(), self.opts.drain_timeout)
            except asyncio.TimeoutError:
                pass
        self.closed = True
        self._abandon()
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        self._tick(final=True)
        for rep in self.replicas.values():
            for c in list(rep.conns):
                c.closing = True
                c.transport.abort()  # type: ignore[union-attr]
        await asyncio.sleep(0)
        return self.summary(end - self.t0)

    def _abandon(self) -> None:
        for rep in self.replicas.values():
            for c in list(rep.conns):
                if c.req is not None:
                    r = c.req
                    c.req = None
                    rep.in_flight -= 1
                    self._error(r, "abandoned")
            while rep.queue:
                self._error(rep.queue.popleft(), "abandoned")
        while self.backlog:
            self._error(self.backlog.popleft(), "abandoned")

    def summary(self, duration: float) -> dict[str, Any]:
        modes = {}
        for m, s in self.modes.items():
            modes[m] = {
                "seconds": round(s.seconds, 3), "sent": s.sent, "completed": s.completed, "errors": s.errors,
                "throughput": round(s.completed / s.seconds, 2) if s.seconds > 0 else None,
                "latency_ms": s.hist.summary_ms(),
            }
        return {
            "type": "summary",
            "started_at": round(self.t0_wall, 6), "ended_at": round(time.time(), 6),
            "duration_s": round(duration, 3),
            "sent": self.sent, "completed": self.completed, "errors": self.errors,
            "outstanding": self.outstanding,
            "accounted": self.sent == self.completed + self.errors,
            "retries": self.retries,
            "errors_by_kind": dict(self.errors_by_kind),
            "throughput": round(self.completed / duration, 2) if duration > 0 else None,
            "latency_ms": self.hist.summary_ms(),
            "modes": modes,
            "replicas": {name: rep.summary(self.t0_wall - self.t0) for name, rep in self.replicas.items()},
            "options": {
                "low_rate": self.opts.low_rate, "high_rate": self.opts.high_rate,
                "concurrency": self.opts.concurrency, "balance": self.opts.balance, "cost": self.opts.cost,
                "payloads": self.opts.payloads, "timeout": self.opts.timeout, "max_conns": self.opts.max_conns,
            },
            "histogram": self.hist.to_json(),
        }
