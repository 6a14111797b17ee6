"""The state database: samples, events, scale requests and replica states, shared by the
autoscaler and the API's gunicorn workers, on SQLite or PostgreSQL (``state_db``; cms.db says
how each is opened, and cms.db.schema declares every table).

Decision: every process opens the same database and writes in short transactions that hold
the write lock from their first statement (SQLite's ``BEGIN IMMEDIATE``; on PostgreSQL one
advisory lock, cms.db.begin_write), so two writers never both read-then-write (that is how
the API keeps two creates from taking the same last slot). Reads take no lock: SQLite's WAL
lets them run while the daemon writes samples, and PostgreSQL reads in autocommit. A single
owner process that others ask would add a hop to every API call for no gain at this write
rate (one batch of samples a second).

What lives here is derived or bookkeeping state: libvirt stays the truth about which
domains exist (their <metadata> rebuilds the fleet), so losing this database loses history
and the API's vmids, not VMs. PostgreSQL keeps those on a server that outlives the controller.

Tables this module reads and writes: ``samples`` (per-domain utilization), ``host_samples``
(per-host load), ``events`` (scaling decisions, failures, API actions), ``scale_requests``
(a replica count asked for through the API, one pending request per group, which the
autoscaler consumes) and ``replicas`` (each replica's lifecycle state, written by the
autoscaler when it changes, read by the API). The other modules' tables are declared in
cms.db.schema too; they read and write them through ``read()`` and ``write()``.

History is bounded: ``prune_history`` deletes samples, host samples and events older than
the retention the caller gives (the ``[history]`` settings); ``*_buckets`` read a range
downsampled in SQL, one row per step, so a day of one-second samples is never shipped
to Python whole. With ``[history] source = "prometheus"`` the autoscaler writes no samples
here at all (cms.history).
"""

from __future__ import annotations

import contextlib
import json
import os
import time
from dataclasses import dataclass
from typing import Any, Iterable, Iterator, Mapping

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from cms import db
from cms.db.hot import HotReads
from cms.db.schema import events as E
from cms.db.schema import host_samples as HS
from cms.db.schema import replicas as R
from cms.db.schema import samples as S
from cms.db.schema import scale_requests as SR


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


MAX_ROWID = 2 ** 63 - 1


def _equal(q: Any, table: sa.Table, **equal: Any) -> Any:
    """`q` with `column = value` for each keyword whose value is not None."""
    for column, value in equal.items():
        if value is not None:
            q = q.where(table.c[column] == value)
    return q


def bucket(conn: Connection, ts: Any, since: float, step: float) -> Any:
    """The bucket index floor((ts - since) / step) as an integer (ts >= since: truncation on
    SQLite, which has no floor() in every build; PostgreSQL's CAST rounds, so floor first)."""
    x = (ts - since) / step
    if conn.dialect.name == "postgresql":
        x = sa.func.floor(x)
    return sa.cast(x, sa.Integer).label("b")


def avg(x: Any, name: str) -> Any:
    """AVG as a float on both backends (PostgreSQL's AVG of integers is numeric: Decimal)."""
    return sa.cast(sa.func.avg(x), db.schema.Float).label(name)


def _vcpu_item(conn: Connection, i: int) -> Any:
    if conn.dialect.name == "postgresql":
        return sa.cast(sa.cast(S.c.vcpu, sa.JSON).op("->>")(i), db.schema.Float)
    return sa.func.json_extract(S.c.vcpu, f"$[{i}]")


def _vcpu_count(conn: Connection) -> Any:
    if conn.dialect.name == "postgresql":
        return sa.func.json_array_length(sa.cast(S.c.vcpu, sa.JSON))
    return sa.func.json_array_length(S.c.vcpu)


def _rows(result: Any) -> list[Mapping[str, Any]]:
    return list(result.mappings())


class Store:
    """The state database of ``state_db`` (a path, or a postgresql:// URL with the password in
    ``password_file``). Opening it makes an empty database at the schema's head, and raises
    cms.db.SchemaMismatch on one at another revision (``check=False``: `cms db` itself)."""

    def __init__(self, state_db: str | os.PathLike[str], password_file: str = "", *, check: bool = True) -> None:
        self.url = str(state_db)
        self.engine = db.open_engine(self.url, password_file)
        opts = {"isolation_level": "AUTOCOMMIT"} if self.engine.dialect.name == "postgresql" else {"cms_read": True}
        self._reader = self.engine.execution_options(**opts)
        self._hot = HotReads(self.engine)
        if check:
            db.ensure(self.engine, self.url)

    @classmethod
    def of(cls, cfg: Any) -> "Store":
        """The configuration's state database (state_db, state_db_password_file)."""
        return cls(cfg.state_db, cfg.state_db_password_file)

    @property
    def backend(self) -> str:
        return "postgresql" if self.engine.dialect.name == "postgresql" else "sqlite"

    def close(self) -> None:
        self.engine.dispose()

    @contextlib.contextmanager
    def read(self) -> Iterator[Connection]:
        """A connection for reads, outside any transaction (each statement sees the latest commit)."""
        with self._reader.connect() as c:
            yield c

    @contextlib.contextmanager
    def write(self) -> Iterator[Connection]:
        """A write transaction that holds the write lock from its start; committed at the end,
        rolled back on an exception."""
        with self.engine.connect().execution_options(cms_write=True) as c, c.begin():
            db.begin_write(c)
            yield c

    def scalar(self, q: Any) -> Any:
        with self.read() as c:
            return c.execute(q).scalar()

    def all(self, q: Any, params: Mapping[str, Any] | None = None) -> list[Mapping[str, Any]]:
        """Every row of a query, as mappings (row["column"]); ``params``: its bound parameters."""
        with self.read() as c:
            return _rows(c.execute(q, params))

    def fetch(self, q: sa.Select, params: Mapping[str, Any]) -> list[dict[str, Any]]:
        """all(), as dicts, for a statement run on every request of a route: compiled once and
        run through the driver (cms.db.hot says why)."""
        rows = self._hot.rows(q, params)
        return rows if rows is not None else [dict(r) for r in self.all(q, params)]

    # -- samples --------------------------------------------------------------------------

    def add_samples(self, samples: Iterable[Sample]) -> None:
        rows = [{"ts": s.ts, "host": s.host, "domain": s.domain, "grp": s.group, "cpu": s.cpu, "vcpus": s.vcpus,
                 "memory_kib": s.memory_kib, "state": s.state,
                 "vcpu": json.dumps(list(s.vcpu)) if s.vcpu else None,
                 "in_flight": s.in_flight, "rate": s.rate, "p95_s": s.p95_s} for s in samples]
        if not rows:
            return
        with self.write() as c:
            c.execute(S.insert(), rows)

    def samples(self, group: str | None = None, since: float = 0.0, domain: str | None = None,
                limit: int = 100000) -> list[Sample]:
        q = _equal(sa.select(S).where(S.c.ts >= since), S, grp=group, domain=domain).order_by(S.c.ts).limit(limit)
        return [Sample(r["ts"], r["host"], r["domain"], r["grp"], r["cpu"], r["vcpus"], r["memory_kib"], r["state"],
                       tuple(json.loads(r["vcpu"])) if r["vcpu"] else (), r["in_flight"], r["rate"], r["p95_s"])
                for r in self.all(q)]

    def prune_samples(self, older_than: float) -> int:
        with self.write() as c:
            return c.execute(S.delete().where(S.c.ts < older_than)).rowcount

    def add_host_samples(self, samples: Iterable[HostSample]) -> None:
        rows = [{"ts": s.ts, "host": s.host, "cpu": s.cpu, "node_cpu": s.node_cpu, "cpus": s.cpus, "vms": s.vms,
                 "vcpus": s.vcpus, "free_memory_mib": s.free_memory_mib} for s in samples]
        if not rows:
            return
        with self.write() as c:
            c.execute(HS.insert(), rows)

    def host_samples(self, host: str | None = None, since: float = 0.0, until: float = float("inf"),
                     limit: int = 100000) -> list[HostSample]:
        q = sa.select(HS).where(HS.c.ts >= since)
        if until != float("inf"):
            q = q.where(HS.c.ts < until)
        q = _equal(q, HS, host=host).order_by(HS.c.ts).limit(limit)
        return [_host_sample(r) for r in self.all(q)]

    def prune_history(self, samples_before: float, events_before: float | None = None) -> dict[str, int]:
        """Delete samples and host samples older than samples_before (and events older than
        events_before); returns the rows deleted per table. Each table in its own short write."""
        out = {}
        for table, before in ((S, samples_before), (HS, samples_before), (E, events_before)):
            if before is None:
                continue
            with self.write() as c:
                out[table.name] = c.execute(table.delete().where(table.c.ts < before)).rowcount
        return out

    # -- downsampled reads (the history API) ----------------------------------------------
    # Each answers one row per non-empty bucket, ``b`` = floor((ts - since) / step), over
    # since <= ts < until; the caller lays the buckets out on its time axis.

    def domain_buckets(self, domain: str, since: float, until: float, step: float) -> list[Mapping[str, Any]]:
        """One domain: mean and peak CPU, mean memory, latest vCPU count, and the mean of
        each vCPU's figure (columns vcpu0, vcpu1, ... up to the most vCPUs seen)."""
        where = (S.c.domain == domain, S.c.ts >= since, S.c.ts < until)
        with self.read() as c:
            n = c.execute(sa.select(sa.func.max(_vcpu_count(c))).where(*where)).scalar() or 0
            b = bucket(c, S.c.ts, since, step)
            q = sa.select(b, avg(S.c.cpu, "cpu"), sa.func.max(S.c.cpu).label("cpu_max"),
                          avg(S.c.memory_kib, "memory_kib"), sa.func.max(S.c.vcpus).label("vcpus"),
                          sa.func.count().label("n"),
                          *(avg(_vcpu_item(c, i), f"vcpu{i}") for i in range(min(int(n), 256))))
            return _rows(c.execute(q.where(*where).group_by(b).order_by(b)))

    def domain_share_buckets(self, since: float, until: float, step: float, *, host: str | None = None,
                             group: str | None = None) -> list[Mapping[str, Any]]:
        """Per bucket and domain: mean CPU in CPUs (cpu x vCPUs, so 1.0 is one whole CPU) and
        mean utilization of its own vCPUs; of one host's or one group's domains."""
        with self.read() as c:
            b = bucket(c, S.c.ts, since, step)
            q = sa.select(b, S.c.domain, avg(S.c.cpu * S.c.vcpus, "cpus_used"), avg(S.c.cpu, "cpu"))
            q = _equal(q.where(S.c.ts >= since, S.c.ts < until), S, host=host, grp=group)
            return _rows(c.execute(q.group_by(b, S.c.domain).order_by(b, S.c.domain)))

    def tick_buckets(self, since: float, until: float, step: float, *, host: str | None = None,
                     group: str | None = None) -> list[Mapping[str, Any]]:
        """Per bucket, from the per-domain samples: ticks seen, mean over ticks of the CPUs the
        domains used (Σ cpu x vCPUs), of their vCPUs, of the domains counted, and the mean CPU;
        of the polled replicas' mean in flight per replica, and of the highest p95 among them."""
        with self.read() as c:
            per_tick = sa.select(S.c.ts, sa.func.sum(S.c.cpu * S.c.vcpus).label("cpus_used"),
                                 sa.func.sum(S.c.vcpus).label("vcpus"), sa.func.count().label("domains"),
                                 avg(S.c.cpu, "cpu"), avg(S.c.in_flight, "in_flight"),
                                 sa.func.max(S.c.p95_s).label("p95_s")).where(S.c.ts >= since, S.c.ts < until)
            t = _equal(per_tick, S, host=host, grp=group).group_by(S.c.ts).subquery()
            b = bucket(c, t.c.ts, since, step)
            q = sa.select(b, sa.func.count().label("ticks"), avg(t.c.cpus_used, "cpus_used"),
                          avg(t.c.vcpus, "vcpus"), avg(t.c.domains, "domains"), avg(t.c.cpu, "cpu"),
                          avg(t.c.in_flight, "in_flight"), avg(t.c.p95_s, "p95_s"))
            return _rows(c.execute(q.group_by(b).order_by(b)))

    def state_buckets(self, group: str, since: float, until: float, step: float) -> list[Mapping[str, Any]]:
        """Per bucket and replica state: rows of that state in the group (divide by the bucket's
        ticks for the mean number of replicas in it)."""
        with self.read() as c:
            b = bucket(c, S.c.ts, since, step)
            q = sa.select(b, S.c.state, sa.func.count().label("n")).where(
                S.c.grp == group, S.c.ts >= since, S.c.ts < until)
            return _rows(c.execute(q.group_by(b, S.c.state).order_by(b, S.c.state)))

    def host_buckets(self, host: str, since: float, until: float, step: float) -> list[Mapping[str, Any]]:
        """One host's rows of host_samples: mean CPU and node CPU, peak CPU, mean free RAM, VMs, vCPUs."""
        with self.read() as c:
            b = bucket(c, HS.c.ts, since, step)
            q = sa.select(b, avg(HS.c.cpu, "cpu"), sa.func.max(HS.c.cpu).label("cpu_max"),
                          avg(HS.c.node_cpu, "node_cpu"), sa.func.max(HS.c.cpus).label("cpus"), avg(HS.c.vms, "vms"),
                          avg(HS.c.vcpus, "vcpus"), avg(HS.c.free_memory_mib, "free_memory_mib"),
                          sa.func.count().label("n")).where(HS.c.host == host, HS.c.ts >= since, HS.c.ts < until)
            return _rows(c.execute(q.group_by(b).order_by(b)))

    def latest_host_sample(self, host: str, since: float = 0.0) -> HostSample | None:
        rows = self.all(sa.select(HS).where(HS.c.host == host, HS.c.ts >= since).order_by(HS.c.ts.desc()).limit(1))
        return _host_sample(rows[0]) if rows else None

    def latest_cores_used(self, host: str, since: float = 0.0) -> tuple[float, float] | None:
        """(ts, busy cores) of the host's newest tick of per-domain samples since `since`: each
        domain's CPU times its vCPUs, summed; None when no sample there has a CPU figure."""
        used = sa.func.sum(S.c.cpu * S.c.vcpus).label("used")
        rows = self.all(sa.select(S.c.ts, used).where(S.c.host == host, S.c.ts >= since)
                        .group_by(S.c.ts).order_by(S.c.ts.desc()).limit(1))
        return None if not rows or rows[0]["used"] is None else (rows[0]["ts"], rows[0]["used"])

    # -- scale requests -------------------------------------------------------------------

    def request_scale(self, group: str, replicas: int, ts: float | None = None) -> float:
        """Record a wanted replica count; a newer request replaces a pending one."""
        ts = ts or time.time()
        with self.write() as c:
            db.upsert(c, SR, [{"grp": group, "replicas": replicas, "ts": ts}], ["grp"])
        return ts

    def scale_requests(self) -> dict[str, tuple[int, float]]:
        """Pending requests: group -> (replicas, ts)."""
        return {r["grp"]: (r["replicas"], r["ts"]) for r in self.all(sa.select(SR))}

    def consume_scale_request(self, group: str, ts: float) -> bool:
        """Remove the request seen at ts; False if a newer one replaced it meanwhile."""
        with self.write() as c:
            return c.execute(SR.delete().where(SR.c.grp == group, SR.c.ts == ts)).rowcount == 1

    # -- replica states (written by the autoscaler as they change) --------------------------

    def set_replicas(self, rows: Iterable[ReplicaRow], gone: Iterable[str] = ()) -> None:
        """Record the replicas whose state changed, and drop those the autoscaler forgot."""
        rows, gone = list(rows), list(gone)
        if not rows and not gone:
            return
        with self.write() as c:
            if rows:
                db.upsert(c, R, [{"name": r.name, "grp": r.group, "host": r.host, "state": r.state,
                                  "address": r.address, "port": r.port, "updated": r.updated} for r in rows], ["name"])
            if gone:
                c.execute(R.delete().where(R.c.name.in_(gone)))

    def replicas(self, group: str | None = None) -> list[ReplicaRow]:
        q = _equal(sa.select(R), R, grp=group).order_by(R.c.name)
        return [ReplicaRow(r["name"], r["grp"], r["host"], r["state"], r["address"], r["port"], r["updated"])
                for r in self.all(q)]

    # -- events ---------------------------------------------------------------------------

    def add_event(self, kind: str, message: str, *, group: str = "", subject: str = "",
                  data: dict[str, Any] | None = None, ts: float | None = None) -> int:
        with self.write() as c:
            r = c.execute(E.insert().values(ts=ts or time.time(), kind=kind, grp=group, subject=subject,
                                            message=message, data=json.dumps(data or {})))
            return int(r.inserted_primary_key[0] or 0)

    def latest_events(self, kinds: Iterable[str]) -> dict[str, Event]:
        """The newest event of any of ``kinds`` for each subject (a host's last state move, say)."""
        newest = sa.select(sa.func.max(E.c.id)).where(E.c.kind.in_(list(kinds))).group_by(E.c.subject)
        return {r["subject"]: Event(r["id"], r["ts"], r["kind"], r["grp"], r["subject"], r["message"],
                                    json.loads(r["data"])) for r in self.all(sa.select(E).where(E.c.id.in_(newest)))}

    def events(self, since_id: int = 0, group: str | None = None, kinds: Iterable[str] | None = None,
               limit: int = 1000, newest_first: bool = False, before_id: int | None = None) -> list[Event]:
        q = sa.select(E).where(E.c.id > since_id, E.c.id < (MAX_ROWID if before_id is None else before_id))
        q = _equal(q, E, grp=group)
        kinds = list(kinds or [])
        if kinds:
            q = q.where(E.c.kind.in_(kinds))
        q = q.order_by(E.c.id.desc() if newest_first else E.c.id).limit(limit)
        return [Event(r["id"], r["ts"], r["kind"], r["grp"], r["subject"], r["message"], json.loads(r["data"]))
                for r in self.all(q)]


def _host_sample(r: Mapping[str, Any]) -> HostSample:
    return HostSample(r["ts"], r["host"], r["cpu"], r["cpus"], r["vms"], r["vcpus"], r["free_memory_mib"],
                      r["node_cpu"])
