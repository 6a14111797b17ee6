"""The SQLite state store: WAL, immediate write transactions, samples and events."""

from __future__ import annotations

import multiprocessing as mp

from cms.store import Sample, Store


def test_samples_and_events_round_trip(tmp_path):
    s = Store(tmp_path / "s.db")
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
    assert s.connect().execute("PRAGMA journal_mode").fetchone()[0] == "wal"


def _writer(path, n, q):
    s = Store(path)
    for i in range(n):
        s.add_event("x", str(i))
    q.put(n)


def test_concurrent_writers_lose_nothing(tmp_path):
    path = tmp_path / "c.db"
    Store(path)
    q = mp.get_context("fork").Queue()
    procs = [mp.get_context("fork").Process(target=_writer, args=(path, 200, q)) for _ in range(4)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
        assert p.exitcode == 0
    assert len(Store(path).events(limit=10000)) == 800


def _opener(path, barrier, q):
    barrier.wait(30)
    s = Store(path)                      # schema and the WAL switch, all at the same moment
    s.add_event("x", "opened")
    q.put(s.connect().execute("PRAGMA journal_mode").fetchone()[0])


def test_many_processes_create_a_new_file_at_once(tmp_path):
    # gunicorn workers and the autoscaler may all be the first to open state_db; one of
    # them used to die with "database is locked" from PRAGMA journal_mode=WAL.
    ctx = mp.get_context("fork")
    n = 8
    for round_ in range(10):
        p = tmp_path / f"fresh{round_}.db"
        barrier, q = ctx.Barrier(n), ctx.Queue()
        procs = [ctx.Process(target=_opener, args=(p, barrier, q)) for _ in range(n)]
        for pr in procs:
            pr.start()
        for pr in procs:
            pr.join(60)
        assert [pr.exitcode for pr in procs] == [0] * n
        assert sorted(q.get(timeout=5) for _ in range(n)) == ["wal"] * n
        assert len(Store(p).events()) == n
