"""The load client's pure parts, table by table: which replica gets the next request
(client.pick), where an HTTP/1.1 response ends (client.http1), schedules
(client.schedule) and the counting (client.accounting). No sockets, no loop."""

from __future__ import annotations

from dataclasses import dataclass

import pytest

from client.accounting import ReplicaTally, RunTotals
from client.pick import ReplicaPicker
from client.http1 import Conn, dechunk
from client.schedule import ScheduleError, parse_duration, parse_schedule, total_seconds


# --- balancing ---------------------------------------------------------------------------

@dataclass(eq=False)
class R:
    name: str
    outstanding: int = 0
    backoff_until: float = 0.0


def picks(policy: str, ready: list[R], n: int, now: float = 10.0, exclude: R | None = None,
          fresh: tuple[R, ...] = ()) -> list[str]:
    b = ReplicaPicker(policy)
    for r in fresh:
        b.add_fresh(r)
    return [b.pick(ready, now, exclude).name for _ in range(n)]


A, B, C = R("a"), R("b"), R("c")
BUSY = R("busy", outstanding=3)
BACKING_OFF = R("off", backoff_until=11.0)


@pytest.mark.parametrize("policy,ready,kw,want", [
    # round robin takes turns, starting after the first turn
    ("rr", [A, B, C], {}, ["b", "c", "a", "b", "c", "a"]),
    # one ready replica is the one, even the one to avoid
    ("rr", [A], {"exclude": A}, ["a", "a"]),
    ("least", [BACKING_OFF], {}, ["off", "off"]),
    # the excluded replica (a retry's first try) is skipped while there are others
    ("rr", [A, B, C], {"exclude": B}, ["c", "a", "c", "a"]),
    # a replica backing off is skipped while others are not
    ("rr", [A, BACKING_OFF], {}, ["a", "a", "a"]),
    # ... unless every other one is excluded
    ("rr", [A, BACKING_OFF], {"exclude": A}, ["off", "off"]),
    # least outstanding; ties go round robin
    ("least", [BUSY, A, B], {}, ["a", "b", "a", "a"]),       # the scan starts at the turn's place
    ("least", [R("x", 2), R("y", 1), R("z", 2)], {}, ["y", "y", "y"]),
    # fresh first: a new replica with nothing outstanding gets the next request, whatever the policy
    ("rr", [A, B, C], {"fresh": (C,)}, ["c", "c"]),
    ("least", [A, B, BUSY], {"fresh": (BUSY,)}, ["b", "a", "a"]),   # busy: not taken as fresh
    ("rr", [A, B, C], {"fresh": (C,), "exclude": C}, ["b", "a", "b"]),   # nor when excluded
])
def test_balancer_table(policy, ready, kw, want):
    assert picks(policy, ready, len(want), **kw) == want


def test_balancer_no_ready_replica_and_fresh_bookkeeping():
    b = ReplicaPicker("rr")
    assert b.pick([], 0.0) is None
    b.add_fresh(A)
    b.add_fresh(A)
    assert b.fresh == [A]
    b.not_fresh(A)
    b.not_fresh(A)
    assert b.fresh == []
    with pytest.raises(ValueError, match="unknown balance policy"):
        ReplicaPicker("random")


# --- the response parser ------------------------------------------------------------------

class Owner:
    def __init__(self) -> None:
        self.got: list[tuple] = []

    def connection_ready(self, conn):
        self.got.append(("ready",))

    def response(self, conn, req, status, body):
        self.got.append(("response", req, status, body, conn.closing))

    def bad_response(self, conn, req):
        self.got.append(("bad", req))

    def connection_closed(self, conn, req):
        self.got.append(("closed", req))


class Transport:
    def __init__(self) -> None:
        self.written: list[bytes] = []
        self.aborted = self.closed = False

    def write(self, data):
        self.written.append(data)

    def abort(self):
        self.aborted = True

    def close(self):
        self.closed = True


def feed(chunks: list[bytes], lose: bool = False) -> tuple[list[tuple], Transport]:
    owner, tr = Owner(), Transport()
    scratch = memoryview(bytearray(64))
    c = Conn(owner, "peer", scratch)
    c.connection_made(tr)
    c.send("req", b"GET / HTTP/1.1\r\n\r\n")
    for chunk in chunks:
        for i in range(0, len(chunk), len(scratch)):       # as recv_into would hand them over
            part = chunk[i:i + len(scratch)]
            scratch[:len(part)] = part
            c.buffer_updated(len(part))
    if lose:
        c.connection_lost(None)
    return owner.got[1:], tr


OK = b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello"


@pytest.mark.parametrize("chunks,lose,want", [
    ([OK], False, [("response", "req", 200, b"hello", False)]),
    # split anywhere, even inside the head
    ([OK[:10], OK[10:30], OK[30:]], False, [("response", "req", 200, b"hello", False)]),
    ([b"HTTP/1.1 503 No\r\ncontent-length: 2\r\nConnection: close\r\n\r\n{}"], False,
     [("response", "req", 503, b"{}", True)]),
    # chunked, with an extension and a trailer
    ([b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3;x=1\r\nhel\r\n2\r\nlo\r\n0\r\nT: 1\r\n\r\n"], False,
     [("response", "req", 200, b"hello", False)]),
    # no length, not chunked: the body ends with the connection
    ([b"HTTP/1.1 200 OK\r\n\r\nhel", b"lo"], True, [("response", "req", 200, b"hello", True), ("closed", None)]),
    # a connection lost mid-response gives the request back
    ([OK[:20]], True, [("closed", "req")]),
    # malformed: the request is given back as a bad response
    ([b"HTTP/1.1 200 OK\r\nContent-Length: x\r\n\r\n"], False, [("bad", "req")]),
    ([OK + b"extra"], False, [("bad", "req")]),
    ([b"HTTP/1.1 2xx OK\r\nContent-Length: 0\r\n\r\n"], False, [("bad", "req")]),
    ([b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n"], False, [("bad", "req")]),
    ([b"x" * 70000], False, [("bad", "req")]),
])
def test_response_parser_table(chunks, lose, want):
    got, _ = feed(chunks, lose)
    assert got == want


def test_a_response_nobody_asked_for_drops_the_connection():
    owner, tr = Owner(), Transport()
    scratch = memoryview(bytearray(64))
    c = Conn(owner, "peer", scratch)
    c.connection_made(tr)
    scratch[:4] = b"HTTP"
    c.buffer_updated(4)
    assert tr.aborted and owner.got == [("ready",)]


@pytest.mark.parametrize("data,want", [
    (b"0\r\n\r\n", b""),
    (b"5\r\nhello\r\n0\r\n\r\n", b"hello"),
    (b"5\r\nhel", None),
    (b"5\r\nhello\r\n0\r\n", None),
    (b"g\r\n", False),
])
def test_dechunk(data, want):
    assert dechunk(data, 0) == want


# --- schedules ------------------------------------------------------------------------------

@pytest.mark.parametrize("text,want", [
    ("low:30s,high:2m,low:90", [("low", 30.0), ("high", 120.0), ("low", 90.0)]),
    ("high:500ms", [("high", 0.5)]),
    (" low : 1h , ", [("low", 3600.0)]),
])
def test_schedule_parses(text, want):
    assert parse_schedule(text) == want
    assert total_seconds(want) == sum(d for _, d in want)


@pytest.mark.parametrize("text,fragment", [
    ("fast:10s", "MODE low or high"), ("low:ten", "bad duration"), ("low", "MODE:DURATION"),
    ("low:0s", "must be positive"), ("", "empty"), (",", "empty"),
])
def test_bad_schedules_say_why(text, fragment):
    with pytest.raises(ScheduleError, match=fragment):
        parse_schedule(text)
    assert issubclass(ScheduleError, ValueError)


def test_durations():
    assert [parse_duration(t) for t in ("250ms", "2s", "1.5m", "7")] == [0.25, 2.0, 90.0, 7.0]


# --- counting -------------------------------------------------------------------------------

def test_run_totals_and_intervals():
    t = RunTotals()
    for mode in ("low", "low", "high"):
        t.issued(mode)
    t.ok("low", 0.010)
    t.ok("high", 0.030)
    t.error("low", "timeout")
    t.retries += 1
    assert t.outstanding == 0
    rec = t.interval(2.0)
    assert rec == {"sent": 3, "completed": 2, "errors": 1, "throughput": 1.0,
                   "latency_ms": {"p50": 10.0, "p95": 30.0, "p99": 30.0}}
    assert t.interval(1.0)["sent"] == 0                      # reset after each interval
    s = t.summary(4.0)
    assert s["accounted"] and (s["sent"], s["completed"], s["errors"], s["retries"]) == (3, 2, 1, 1)
    assert s["errors_by_kind"] == {"timeout": 1} and s["throughput"] == 0.5
    assert (s["modes"]["low"]["sent"], s["modes"]["high"]["completed"]) == (2, 1)


def test_replica_tally_counts_attempts():
    r = ReplicaTally()
    r.attempt()
    r.attempt()
    r.ok(0.002)
    r.fail()
    assert not r.quiet
    assert r.interval(1.0)["sent"] == 2 and r.quiet
    assert {k: v for k, v in r.summary().items() if k != "latency_ms"} == {"sent": 2, "completed": 1, "errors": 1}
