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

Tables owned by this module: ``samples`` (per-domain utilization), ``host_samples``
(per-host load), ``events`` (scaling decisions, failures, API actions) and
``scale_requests`` (a replica count asked for through the API, one pending request per
group, which the autoscaler consumes) and ``replicas`` (each replica's lifecycle state,
written by the autoscaler when it changes, read by the API). Other modules add their own tables through
``Store.ensure_schema``.

History is bounded: ``prune_history`` deletes samples, host samples and events older than
the retention the caller gives (the ``[history]`` settings); ``*_buckets`` read a range
downsampled in SQL, one row per step, so a day of one-second samples is never shipped
to Python whole.
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
CREATE INDEX IF NOT EXISTS samples_host_ts ON samples(host, ts);
CREATE TABLE IF NOT EXISTS host_samples (
    ts REAL NOT NULL, host TEXT NOT NULL, cpu REAL, node_cpu REAL, cpus INTEGER, vms INTEGER,
    vcpus INTEGER, free_memory_mib INTEGER
);
CREATE INDEX IF NOT EXISTS host_samples_host_ts ON host_samples(host, ts);
CREATE TABLE IF NOT EXISTS events (
    id INTEGER PRIMARY KEY AUTOINCREMENT, ts REAL NOT NULL, kind TEXT NOT NULL,
    grp TEXT NOT NULL DEFAULT '', subject TEXT NOT NULL DEFAULT '', message TEXT NOT NULL DEFAULT '',
    data TEXT NOT NULL DEFAULT '{}'
);
CREATE INDEX IF NOT EXISTS events_ts ON events(ts);
CREATE TABLE IF NOT EXISTS scale_requests (grp TEXT PRIMARY KEY, replicas INTEGER NOT NULL, ts REAL NOT NULL);
CREATE TABLE IF NOT EXISTS replicas (
    name TEXT PRIMARY KEY, grp TEXT NOT NULL, host TEXT NOT NULL DEFAULT '', state TEXT NOT NULL,
    address TEXT NOT NULL DEFAULT '', port INTEGER NOT NULL DEFAULT 0, updated REAL NOT NULL
);
"""

# The replicas' load figures (issue 24), added to samples the way vcpu was: a named set of
# columns, so an older file gains them on open and a schema module can take them over as one.
LOAD_COLUMNS = {"in_flight": "REAL", "rate": "REAL", "p95_s": "REAL"}


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
    vcpu: tuple[float | None, ...] = ()   # each vCPU's busy fraction this tick (libvirt's vcpu.N.time)
    # A ready replica's /status poll this tick (cms.histogram.Figures); None: not polled or no answer
    in_flight: float | None = None        # mean requests in flight over the tick
    rate: float | None = None             # answers per second
    p95_s: float | None = None            # p95 latency of those answers; None also when none completed


@dataclass(frozen=True)
class HostSample:
    ts: float
    host: str
    cpu: float | None              # share of the host's CPUs its cms domains took (0..1); None: no figure
    cpus: int                      # the host's CPUs
    vms: int                       # cms domains running there, of every kind
    vcpus: int                     # their vCPUs
    free_memory_mib: int | None    # the host's free RAM as libvirt reports it
    node_cpu: float | None = None  # the node's own busy share (getCPUStats), where libvirt has it


@dataclass(frozen=True)
class ReplicaRow:
    """A replica's lifecycle state as the autoscaler last recorded it (the replicas table)."""
    name: str
    group: str
    host: str
    state: str               # cms.autoscaler.lifecycle.State: starting, ready, parked, ...
    address: str
    port: int
    updated: float


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


MAX_ROWID = 2 ** 63 - 1


def _where(query: str, args: list[Any], **equal: Any) -> tuple[str, list[Any]]:
    """`query` (which has a WHERE) with `AND column = ?` for each keyword that is not None."""
    for column, value in equal.items():
        if value is not None:
            query += f" AND {column} = ?"
            args.append(value)
    return query, args


class Store:
    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = str(path)
        if self.path != ":memory:":
            Path(self.path).parent.mkdir(parents=True, exist_ok=True)
        self._local = threading.local()
        self.ensure_schema(SCHEMA)
        self._add_columns("samples", {"vcpu": "TEXT"})   # added after the table: older files lack it
        self._add_columns("samples", LOAD_COLUMNS)

    def _add_columns(self, table: str, columns: dict[str, str]) -> None:
        c = self.connect()
        have = {r["name"] for r in c.execute(f"PRAGMA table_info({table})")}
        for name, decl in columns.items():
            if name not in have:
                try:
                    c.execute(f"ALTER TABLE {table} ADD COLUMN {name} {decl}")
                except sqlite3.OperationalError as e:
                    if "duplicate column" not in str(e):   # another process added it meanwhile
                        raise

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
        rows = [(s.ts, s.host, s.domain, s.group, s.cpu, s.vcpus, s.memory_kib, s.state,
                 json.dumps(list(s.vcpu)) if s.vcpu else None, s.in_flight, s.rate, s.p95_s) for s in samples]
        if not rows:
            return
        with self.write() as c:
            c.executemany("INSERT INTO samples (ts, host, domain, grp, cpu, vcpus, memory_kib, state, vcpu, "
                          "in_flight, rate, p95_s) VALUES (?,?,?,?,?,?,?,?,?,?,?,?)", rows)

    def samples(self, group: str | None = None, since: float = 0.0, domain: str | None = None,
                limit: int = 100000) -> list[Sample]:
        q, args = _where("SELECT * FROM samples WHERE ts >= ?", [since], grp=group, domain=domain)
        q += " ORDER BY ts LIMIT ?"
        args.append(limit)
        return [Sample(r["ts"], r["host"], r["domain"], r["grp"], r["cpu"], r["vcpus"], r["memory_kib"], r["state"],
                       tuple(json.loads(r["vcpu"])) if r["vcpu"] else (), r["in_flight"], r["rate"], r["p95_s"])
                for r in self.connect().execute(q, args)]

    def prune_samples(self, older_than: float) -> int:
        with self.write() as c:
            return c.execute("DELETE FROM samples WHERE ts < ?", (older_than,)).rowcount

    def add_host_samples(self, samples: Iterable[HostSample]) -> None:
        rows = [(s.ts, s.host, s.cpu, s.node_cpu, s.cpus, s.vms, s.vcpus, s.free_memory_mib) for s in samples]
        if not rows:
            return
        with self.write() as c:
            c.executemany("INSERT INTO host_samples (ts, host, cpu, node_cpu, cpus, vms, vcpus, free_memory_mib) "
                          "VALUES (?,?,?,?,?,?,?,?)", rows)

    def host_samples(self, host: str | None = None, since: float = 0.0, until: float = float("inf"),
                     limit: int = 100000) -> list[HostSample]:
        q, args = _where("SELECT * FROM host_samples WHERE ts >= ? AND ts < ?", [since, until], host=host)
        args.append(limit)
        return [HostSample(r["ts"], r["host"], r["cpu"], r["cpus"], r["vms"], r["vcpus"], r["free_memory_mib"],
                           r["node_cpu"]) for r in self.connect().execute(q + " ORDER BY ts LIMIT ?", args)]

    def prune_history(self, samples_before: float, events_before: float | None = None) -> dict[str, int]:
        """Delete samples and host samples older than samples_before (and events older than
        events_before); returns the rows deleted per table. Each table in its own short write."""
        out = {}
        for table, before in (("samples", samples_before), ("host_samples", samples_before),
                              ("events", events_before)):
            if before is None:
                continue
            with self.write() as c:
                out[table] = c.execute(f"DELETE FROM {table} WHERE ts < ?", (before,)).rowcount
        return out

    # -- downsampled reads (the history API) ----------------------------------------------
    # Each answers one row per non-empty bucket, ``b`` = floor((ts - since) / step), over
    # since <= ts < until; the caller lays the buckets out on its time axis.

    def domain_buckets(self, domain: str, since: float, until: float, step: float) -> list[sqlite3.Row]:
        """One domain: mean and peak CPU, mean memory, latest vCPU count, and the mean of
        each vCPU's figure (columns vcpu0, vcpu1, ... up to the most vCPUs seen)."""
        c = self.connect()
        n = c.execute("SELECT MAX(json_array_length(vcpu)) FROM samples WHERE domain=? AND ts>=? AND ts<?",
                      (domain, since, until)).fetchone()[0] or 0
        per = "".join(f", AVG(json_extract(vcpu, '$[{i}]')) AS vcpu{i}" for i in range(min(int(n), 256)))
        return c.execute(
            f"SELECT CAST((ts - ?) / ? AS INTEGER) AS b, AVG(cpu) AS cpu, MAX(cpu) AS cpu_max, "
            f"AVG(memory_kib) AS memory_kib, MAX(vcpus) AS vcpus, COUNT(*) AS n{per} "
            "FROM samples WHERE domain=? AND ts>=? AND ts<? GROUP BY b ORDER BY b",
            (since, step, domain, since, until)).fetchall()

    def domain_share_buckets(self, since: float, until: float, step: float, *, host: str | None = None,
                             group: str | None = None) -> list[sqlite3.Row]:
        """Per bucket and domain: mean CPU in CPUs (cpu x vCPUs, so 1.0 is one whole CPU) and
        mean utilization of its own vCPUs; of one host's or one group's domains."""
        q, args = _where("SELECT CAST((ts - ?) / ? AS INTEGER) AS b, domain, AVG(cpu * vcpus) AS cpus_used, "
                         "AVG(cpu) AS cpu FROM samples WHERE ts>=? AND ts<?", [since, step, since, until],
                         host=host, grp=group)
        return self.connect().execute(q + " GROUP BY b, domain ORDER BY b, domain", args).fetchall()

    def tick_buckets(self, since: float, until: float, step: float, *, host: str | None = None,
                     group: str | None = None) -> list[sqlite3.Row]:
        """Per bucket, from the per-domain samples: ticks seen, mean over ticks of the CPUs the
        domains used (Σ cpu x vCPUs), of their vCPUs, of the domains counted, and the mean CPU;
        of the polled replicas' mean in flight per replica, and of the highest p95 among them."""
        q, args = _where("SELECT ts, SUM(cpu * vcpus) AS cpus_used, SUM(vcpus) AS vcpus, COUNT(*) AS domains, "
                         "AVG(cpu) AS cpu, AVG(in_flight) AS in_flight, MAX(p95_s) AS p95_s "
                         "FROM samples WHERE ts>=? AND ts<?", [since, until], host=host, grp=group)
        return self.connect().execute(
            "SELECT CAST((ts - ?) / ? AS INTEGER) AS b, COUNT(*) AS ticks, AVG(cpus_used) AS cpus_used, "
            "AVG(vcpus) AS vcpus, AVG(domains) AS domains, AVG(cpu) AS cpu, AVG(in_flight) AS in_flight, "
            "AVG(p95_s) AS p95_s "
            f"FROM ({q} GROUP BY ts) GROUP BY b ORDER BY b", [since, step, *args]).fetchall()

    def state_buckets(self, group: str, since: float, until: float, step: float) -> list[sqlite3.Row]:
        """Per bucket and replica state: rows of that state in the group (divide by the bucket's
        ticks for the mean number of replicas in it)."""
        return self.connect().execute(
            "SELECT CAST((ts - ?) / ? AS INTEGER) AS b, state, COUNT(*) AS n FROM samples "
            "WHERE grp=? AND ts>=? AND ts<? GROUP BY b, state ORDER BY b, state",
            (since, step, group, since, until)).fetchall()

    def host_buckets(self, host: str, since: float, until: float, step: float) -> list[sqlite3.Row]:
        """One host's rows of host_samples: mean CPU and node CPU, peak CPU, mean free RAM, VMs, vCPUs."""
        return self.connect().execute(
            "SELECT CAST((ts - ?) / ? AS INTEGER) AS b, AVG(cpu) AS cpu, MAX(cpu) AS cpu_max, AVG(node_cpu) AS node_cpu, "
            "MAX(cpus) AS cpus, AVG(vms) AS vms, AVG(vcpus) AS vcpus, AVG(free_memory_mib) AS free_memory_mib, "
            "COUNT(*) AS n FROM host_samples WHERE host=? AND ts>=? AND ts<? GROUP BY b ORDER BY b",
            (since, step, host, since, until)).fetchall()

    def latest_host_sample(self, host: str, since: float = 0.0) -> HostSample | None:
        r = self.connect().execute("SELECT * FROM host_samples WHERE host=? AND ts>=? ORDER BY ts DESC LIMIT 1",
                                   (host, since)).fetchone()
        return None if r is None else HostSample(r["ts"], r["host"], r["cpu"], r["cpus"], r["vms"], r["vcpus"],
                                                 r["free_memory_mib"], r["node_cpu"])

    def latest_cores_used(self, host: str, since: float = 0.0) -> tuple[float, float] | None:
        """(ts, busy cores) of the host's newest tick of per-domain samples since `since`: each
        domain's CPU times its vCPUs, summed; None when no sample there has a CPU figure."""
        r = self.connect().execute("SELECT ts, SUM(cpu * vcpus) AS used FROM samples WHERE host=? AND ts>=? "
                                   "GROUP BY ts ORDER BY ts DESC LIMIT 1", (host, since)).fetchone()
        return None if r is None or r["used"] is None else (r["ts"], r["used"])

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

    # -- replica states (written by the autoscaler as they change) --------------------------

    def set_replicas(self, rows: Iterable[ReplicaRow], gone: Iterable[str] = ()) -> None:
        """Record the replicas whose state changed, and drop those the autoscaler forgot."""
        rows, gone = list(rows), list(gone)
        if not rows and not gone:
            return
        with self.write() as c:
            c.executemany("INSERT INTO replicas VALUES (?,?,?,?,?,?,?) ON CONFLICT(name) DO UPDATE SET "
                          "grp=excluded.grp, host=excluded.host, state=excluded.state, address=excluded.address, "
                          "port=excluded.port, updated=excluded.updated",
                          [(r.name, r.group, r.host, r.state, r.address, r.port, r.updated) for r in rows])
            c.executemany("DELETE FROM replicas WHERE name=?", [(n,) for n in gone])

    def replicas(self, group: str | None = None) -> list[ReplicaRow]:
        q, args = _where("SELECT * FROM replicas WHERE 1", [], grp=group)
        return [ReplicaRow(r["name"], r["grp"], r["host"], r["state"], r["address"], r["port"], r["updated"])
                for r in self.connect().execute(q + " ORDER BY name", args)]

    # -- events ---------------------------------------------------------------------------

    def add_event(self, kind: str, message: str, *, group: str = "", subject: str = "",
                  data: dict[str, Any] | None = None, ts: float | None = None) -> int:
        with self.write() as c:
            cur = c.execute("INSERT INTO events (ts, kind, grp, subject, message, data) VALUES (?,?,?,?,?,?)",
                            (ts or time.time(), kind, group, subject, message, json.dumps(data or {})))
            return int(cur.lastrowid or 0)

    def latest_events(self, kinds: Iterable[str]) -> dict[str, Event]:
        """The newest event of any of ``kinds`` for each subject (a host's last state move, say)."""
        kinds = list(kinds)
        marks = ",".join("?" * len(kinds))
        q = (f"SELECT * FROM events WHERE id IN (SELECT MAX(id) FROM events WHERE kind IN ({marks}) "
             "GROUP BY subject)")
        return {r["subject"]: Event(r["id"], r["ts"], r["kind"], r["grp"], r["subject"], r["message"],
                                    json.loads(r["data"])) for r in self.connect().execute(q, kinds)}

    def events(self, since_id: int = 0, group: str | None = None, kinds: Iterable[str] | None = None,
               limit: int = 1000, newest_first: bool = False, before_id: int | None = None) -> list[Event]:
        q, args = _where("SELECT * FROM events WHERE id > ? AND id < ?",
                         [since_id, MAX_ROWID if before_id is None else before_id], grp=group)
        kinds = list(kinds or [])
        if kinds:
            q += f" AND kind IN ({','.join('?' * len(kinds))})"
            args.extend(kinds)
        q += f" ORDER BY id {'DESC' if newest_first else 'ASC'} LIMIT ?"
        args.append(limit)
        return [Event(r["id"], r["ts"], r["kind"], r["grp"], r["subject"], r["message"], json.loads(r["data"]))
                for r in self.connect().execute(q, args)]
