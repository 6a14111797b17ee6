"""The state store on both backends (the state_db fixture): samples, events, the write lock
and many processes opening one new database at once; SQLite's WAL."""

from __future__ import annotations

import multiprocessing as mp
import queue
import traceback

import sqlalchemy as sa

from cms.db.schema import api_vms, placement_state
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


def _writer(url, n):
    s = Store(url)
    return [s.add_event("x", str(i)) for i in range(n)]


def _report(target, args, q):
    try:
        q.put((True, target(*args)))
    except BaseException:
        q.put((False, traceback.format_exc()))
        raise


def in_processes(target, *args, n: int = 4) -> list:
    """target(*args) in n forked processes at once: what each returned. A child that raised
    fails the test with its traceback; one that hangs, with its pid."""
    ctx = mp.get_context("fork")
    q = ctx.Queue()
    procs = [ctx.Process(target=_report, args=(target, args, q)) for _ in range(n)]
    for p in procs:
        p.start()
    answers = []
    for _ in procs:
        try:
            answers.append(q.get(timeout=60))
        except queue.Empty:
            break
    for p in procs:
        p.join(10)
    failed = [a for ok, a in answers if not ok]
    assert not failed, "a child failed:\n" + "\n".join(failed)
    assert len(answers) == n, f"{n - len(answers)} children gave no answer in 60 s: {[(p.pid, p.exitcode) for p in procs]}"
    assert [p.exitcode for p in procs] == [0] * n
    return [a for _ok, a in answers]


def test_concurrent_writers_lose_nothing(state_db):
    # The parent's store stays open across the forks, its connection used (main's test did
    # that with the sqlite3 store, and once read 794 of 800 rows): the store closes SQLite's
    # idle connections before a fork (cms.db), so no child inherits a file's lock bookkeeping.
    s = Store(state_db)
    first = s.add_event("x", "parent")
    written = [first] + [i for ids in in_processes(_writer, state_db, 200) for i in ids]
    assert len(set(written)) == 801, "two inserts were given one id"
    read = {e.id for e in s.events(limit=10000)}
    lost, extra = sorted(set(written) - read), sorted(read - set(written))
    assert (lost, extra) == ([], []), f"{len(lost)} committed rows lost (ids {lost[:20]}), {len(extra)} not written"


def _incrementer(url, n):
    s = Store(url)
    for _ in range(n):
        with s.write() as c:      # read, then write what was read plus one: safe only under the write lock
            v = c.execute(sa.select(placement_state.c.value).where(placement_state.c.key == "n")).scalar()
            c.execute(placement_state.update().where(placement_state.c.key == "n").values(value=v + 1))
    return n


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


class _Shout(sa.TypeDecorator):
    """A column whose value SQLAlchemy converts: not for the driver-only path."""
    impl = sa.Text
    cache_ok = True

    def process_result_value(self, value, dialect):
        return value.upper()


def test_the_hot_read_answers_as_the_usual_path(state_db):
    # Store.fetch (cms.db.hot): the /vm/query statement, compiled once and run through the
    # driver, gives what Store.all gives; a statement it cannot take goes the usual way
    from cms.api_tables import ACTIVE_VM, ApiTables
    s, other = Store(state_db), Store(state_db)
    t = ApiTables(other)
    vmid = t.reserve_vm("a", 1, 100)
    assert s.fetch(ACTIVE_VM, {"vmid": vmid}) == []               # still creating
    t.activate_vm(vmid, "cms-vm-1", "pm1")                        # another store's commit: seen at once
    rows = s.fetch(ACTIVE_VM, {"vmid": vmid})
    assert rows == [dict(r) for r in s.all(ACTIVE_VM, {"vmid": vmid})]
    assert rows[0]["domain"] == "cms-vm-1" and isinstance(rows[0]["created"], float)
    assert s.fetch(ACTIVE_VM, {"vmid": vmid + 1}) == []
    assert s._hot.plan(ACTIVE_VM) is not None
    shout = sa.select(sa.type_coerce(api_vms.c.name, _Shout).label("name")).where(api_vms.c.vmid == sa.bindparam("v"))
    assert s._hot.plan(shout) is None
    assert s.fetch(shout, {"v": vmid}) == [{"name": "A"}]
    # the connections the hot read used are back in the pool as they were: a write there
    # that fails is still rolled back whole (PostgreSQL: not left in autocommit)
    for _ in range(3):
        s.fetch(ACTIVE_VM, {"vmid": vmid})
    try:
        with s.write() as c:
            c.execute(placement_state.insert().values(key="half", value=1))
            raise RuntimeError("stop")
    except RuntimeError:
        pass
    assert s.scalar(sa.select(sa.func.count()).select_from(placement_state)) == 0
