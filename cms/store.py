"""The state database: SQLite, shared by the autoscaler and the API's gunicorn workers.

Decision: every process opens the same file in WAL mode and writes in short
``BEGIN IMMEDIATE`` transactions, with a busy timeout. WAL lets the API's readers run
while the daemon writes samples; IMMEDIATE takes the write lock at the start, so two
writers never both read-then-write (that is how the API keeps two creates from taking the
same last slot). A single owner process that others ask would add a hop to every API call
for no gain at this write rate (one batch of samples a second).

What lives here is derived or bookkeeping state: libvirt stays the truth about which
domains exist (their <metadata> rebuilds the fleet), so losing this file loses history,
not VMs.

Tables owned by this module: ``samples`` (per-domain utilization), ``events``
(scaling decisions, failures, API actions) and ``scale_requests`` (a replica count asked
for through the API, one pending request per group, which the autoscaler consumes). Other
modules add their own tables through ``Store.ensure_schema``.
"""

from __future__ import annotations

import contextlib
import json
import os
import sqlite3
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Iterator

SCHEMA = """
CREATE TABLE IF NOT EXISTS samples (
    ts REAL NOT NULL, host TEXT NOT NULL, domain TEXT NOT NULL, grp TEXT NOT NULL,
    cpu REAL, vcpus INTEGER, memory_kib INTEGER, state TEXT
);
CREATE INDEX IF NOT EXISTS samples_grp_ts ON samples(grp, ts);
CREATE INDEX IF NOT EXISTS samples_domain_ts ON samples(domain, ts);
CREATE TABLE IF NOT EXISTS events (
    id INTEGER PRIMARY KEY AUTOINCREMENT, ts REAL NOT NULL, kind TEXT NOT NULL,
    grp TEXT NOT NULL DEFAULT '', subject TEXT NOT NULL DEFAULT '', message TEXT NOT NULL DEFAULT '',
    data TEXT NOT NULL DEFAULT '{}'
);
CREATE INDEX IF NOT EXISTS events_ts ON events(ts);
CREATE TABLE IF NOT EXISTS scale_requests (grp TEXT PRIMARY KEY, replicas INTEGER NOT NULL, ts REAL NOT NULL);
"""


@dataclass(frozen=True)
class Sample:
    ts: float
    host: str
    domain: str
    group: str
    cpu: float | None        # utilization 0..1 of the domain's vCPUs; None: no figure this tick
    vcpus: int
    memory_kib: int
    state: str


@dataclass(frozen=True)
class Event:
    id: int
    ts: float
    kind: str                # e.g. decision, scale_out, scale_in, ready, failed, replaced, vm_create
    group: str
    subject: str             # the replica or VM concerned
    message: str
    data: dict[str, Any]


def _enable_wal(c: sqlite3.Connection, within_s: float = 10.0) -> None:
    """Switch the file to WAL once. Several processes opening a new file at once (gunicorn
    workers, the autoscaler) can get SQLITE_BUSY from the switch itself without the busy
    handler being consulted, so it is retried for a bounded time; once the file is in WAL,
    later connections only read the mode and never take that lock."""
    deadline = time.monotonic() + within_s
    while True:
        try:
            if c.execute("PRAGMA journal_mode").fetchone()[0].lower() == "wal":
                return
            c.execute("PRAGMA journal_mode=WAL")
            return
        except sqlite3.OperationalError as e:
            if "locked" not in str(e) or time.monotonic() > deadline:
                raise
            time.sleep(0.05)


class Store:
    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = str(path)
        if self.path != ":memory:":
            Path(self.path).parent.mkdir(parents=True, exist_ok=True)
        self._local = threading.local()
        self.ensure_schema(SCHEMA)

    def connect(self) -> sqlite3.Connection:
        """This thread's connection (sqlite3 connections are not shared across threads)."""
        c = getattr(self._local, "conn", None)
        if c is None:
            c = sqlite3.connect(self.path, timeout=10.0, isolation_level=None, check_same_thread=True)
            c.row_factory = sqlite3.Row
            c.execute("PRAGMA busy_timeout=10000")
            _enable_wal(c)
            c.execute("PRAGMA synchronous=NORMAL")
            c.execute("PRAGMA foreign_keys=ON")
            self._local.conn = c
        return c

    def close(self) -> None:
        c = getattr(self._local, "conn", None)
        if c is not None:
            c.close()
            self._local.conn = None

    @contextlib.contextmanager
    def write(self) -> Iterator[sqlite3.Connection]:
        """A write transaction that holds the lock from its first statement (BEGIN IMMEDIATE)."""
        c = self.connect()
        c.execute("BEGIN IMMEDIATE")
        try:
            yield c
        except BaseException:
            c.execute("ROLLBACK")
            raise
        else:
            c.execute("COMMIT")

    def ensure_schema(self, ddl: str) -> None:
        c = self.connect()
        c.executescript(ddl)

    # -- samples --------------------------------------------------------------------------

    def add_samples(self, samples: Iterable[Sample]) -> None:
        rows = [(s.ts, s.host, s.domain, s.group, s.cpu, s.vcpus, s.memory_kib, s.state) for s in samples]
        if not rows:
            return
        with self.write() as c:
            c.executemany("INSERT INTO samples VALUES (?,?,?,?,?,?,?,?)", rows)

    def samples(self, group: str | None = None, since: float = 0.0, domain: str | None = None,
                limit: int = 100000) -> list[Sample]:
        q = "SELECT * FROM samples WHERE ts >= ?"
        args: list[Any] = [since]
        if group is not None:
            q += " AND grp = ?"
            args.append(group)
        if domain is not None:
            q += " AND domain = ?"
            args.append(domain)
        q += " ORDER BY ts LIMIT ?"
        args.append(limit)
        return [Sample(r["ts"], r["host"], r["domain"], r["grp"], r["cpu"], r["vcpus"], r["memory_kib"], r["state"])
                for r in self.connect().execute(q, args)]

    def prune_samples(self, older_than: float) -> int:
        with self.write() as c:
            return c.execute("DELETE FROM samples WHERE ts < ?", (older_than,)).rowcount

    # -- scale requests -------------------------------------------------------------------

    def request_scale(self, group: str, replicas: int, ts: float | None = None) -> float:
        """Record a wanted replica count; a newer request replaces a pending one."""
        ts = ts or time.time()
        with self.write() as c:
            c.execute("INSERT INTO scale_requests VALUES (?,?,?) ON CONFLICT(grp) DO UPDATE SET "
                      "replicas=excluded.replicas, ts=excluded.ts", (group, replicas, ts))
        return ts

    def scale_requests(self) -> dict[str, tuple[int, float]]:
        """Pending requests: group -> (replicas, ts)."""
        return {r["grp"]: (r["replicas"], r["ts"]) for r in self.connect().execute("SELECT * FROM scale_requests")}

    def consume_scale_request(self, group: str, ts: float) -> bool:
        """Remove the request seen at ts; False if a newer one replaced it meanwhile."""
        with self.write() as c:
            return c.execute("DELETE FROM scale_requests WHERE grp=? AND ts=?", (group, ts)).rowcount == 1

    # -- events ---------------------------------------------------------------------------

    def add_event(self, kind: str, message: str, *, group: str = "", subject: str = "",
                  data: dict[str, Any] | None = None, ts: float | None = None) -> int:
        with self.write() as c:
            cur = c.execute("INSERT INTO events (ts, kind, grp, subject, message, data) VALUES (?,?,?,?,?,?)",
                            (ts or time.time(), kind, group, subject, message, json.dumps(data or {})))
            return int(cur.lastrowid or 0)

    def events(self, since_id: int = 0, group: str | None = None, kinds: Iterable[str] | None = None,
               limit: int = 1000, newest_first: bool = False) -> list[Event]:
        q = "SELECT * FROM events WHERE id > ?"
        args: list[Any] = [since_id]
        if group is not None:
            q += " AND grp = ?"
            args.append(group)
        kinds = list(kinds or [])
        if kinds:
            q += f" AND kind IN ({','.join('?' * len(kinds))})"
            args.extend(kinds)
        q += f" ORDER BY id {'DESC' if newest_first else 'ASC'} LIMIT ?"
        args.append(limit)
        return [Event(r["id"], r["ts"], r["kind"], r["grp"], r["subject"], r["message"], json.loads(r["data"]))
                for r in self.connect().execute(q, args)]
