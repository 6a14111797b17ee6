"""The state store on both backends (the state_db fixture): samples, events, the write lock
and many processes opening one new database at once; SQLite's WAL."""

from __future__ import annotations

import multiprocessing as mp

import sqlalchemy as sa

from cms.db.schema import placement_state
from cms.store import Sample, Store


def test_samples_and_events_round_trip(state_db):
    s = Store(state_db)
    s.add_samples([Sample(1.0, "h", "d1", "web", 0.5, 1, 1000, "running"),
                   Sample(2.0, "h", "d1", "web", None, 1, 1000, "running"),
                   Sample(2.0, "h", "d2", "api", 0.1, 2, 2000, "running")])
    assert [x.cpu for x in s.samples("web")] == [0.5, None]
    assert [x.domain for x in s.samples(since=1.5)] == ["d1", "d2"]
    e1 = s.add_event("decision", "stay", group="web", data={"mean": 0.4})
    e2 = s.add_event("scale_out", "1 -> 2", group="web", subject="cms-web-2")
    assert [e.id for e in s.events()] == [e1, e2]
    assert s.events(since_id=e1)[0].subject == "cms-web-2"
    assert s.events(kinds=["decision"])[0].data == {"mean": 0.4}
    assert s.prune_samples(1.5) == 1


def test_times_keep_their_fraction_of_a_second(state_db):
    # PostgreSQL's REAL is 4 bytes: an epoch time in it would be off by a minute
    s = Store(state_db)
    s.add_samples([Sample(1_763_700_000.125, "h", "d", "", 0.5, 1, 1, "running")])
    ev = s.add_event("x", "y", ts=1_763_700_000.375)
    assert s.samples()[0].ts == 1_763_700_000.125
    assert [e.ts for e in s.events() if e.id == ev] == [1_763_700_000.375]


def test_sqlite_is_in_wal_mode(tmp_path):
    s = Store(tmp_path / "s.db")
    with s.read() as c:
        assert c.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"


def _writer(url, n, q):
    s = Store(url)
    for i in range(n):
        s.add_event("x", str(i))
    q.put(n)


def in_processes(target, *args, n: int = 4) -> None:
    """target(*args, queue) in n forked processes at once; each must exit 0."""
    ctx = mp.get_context("fork")
    q = ctx.Queue()
    procs = [ctx.Process(target=target, args=(*args, q)) for _ in range(n)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
        assert p.exitcode == 0


def test_concurrent_writers_lose_nothing(state_db):
    Store(state_db).close()
    in_processes(_writer, state_db, 200)
    assert len(Store(state_db).events(limit=10000)) == 800


def _incrementer(url, n, q):
    s = Store(url)
    for _ in range(n):
        with s.write() as c:      # read, then write what was read plus one: safe only under the write lock
            v = c.execute(sa.select(placement_state.c.value).where(placement_state.c.key == "n")).scalar()
            c.execute(placement_state.update().where(placement_state.c.key == "n").values(value=v + 1))
    q.put(n)


def test_a_write_transaction_holds_the_write_lock_from_its_start(state_db):
    s = Store(state_db)
    with s.write() as c:
        c.execute(placement_state.insert().values(key="n", value=0))
    in_processes(_incrementer, state_db, 50)
    assert s.scalar(sa.select(placement_state.c.value)) == 200       # no update lost


def _opener(url, barrier, q):
    barrier.wait(30)
    s = Store(url)                      # schema (and SQLite's WAL switch), all at the same moment
    s.add_event("x", "opened")
    q.put(s.backend)


def test_many_processes_create_a_new_database_at_once(new_state_db, backend):
    # gunicorn workers and the autoscaler may all be the first to open state_db; one of
    # them used to die with "database is locked" from PRAGMA journal_mode=WAL.
    ctx = mp.get_context("fork")
    n = 8
    for _round in range(10 if backend == "sqlite" else 3):
        url = new_state_db()
        barrier, q = ctx.Barrier(n), ctx.Queue()
        procs = [ctx.Process(target=_opener, args=(url, barrier, q)) for _ in range(n)]
        for pr in procs:
            pr.start()
        for pr in procs:
            pr.join(60)
        assert [pr.exitcode for pr in procs] == [0] * n
        assert sorted(q.get(timeout=5) for _ in range(n)) == [backend] * n
        assert len(Store(url).events()) == n
