"""The state database: where it is, how cms talks to it, and which schema version it holds.

``state_db`` names it, one setting for both backends (decided in issue 21):

* a path (``/var/lib/cms/state.db``, the default): **SQLite**, embedded, nothing to run.
  Every process opens the same file in WAL mode (readers never wait for the writer) with a
  10 s busy timeout, and a write transaction takes the write lock at its first statement
  (``BEGIN IMMEDIATE``), so two writers never both read and then write.
* ``postgresql://USER@HOST[:PORT]/DB``: **PostgreSQL** through psycopg 3, for a controller
  whose state must outlive its machine, or several controllers. The password is read from
  the file ``state_db_password_file`` names (never written in cms.toml); a URL that holds a
  password is refused. A write transaction first takes one transaction-level advisory
  lock, which gives it the same one-writer-at-a-time meaning as SQLite's ``BEGIN IMMEDIATE``,
  so code written for one backend is right on the other. vmids come from a sequence, so API
  workers on any number of machines never hand out one twice. Every connection is bounded:
  10 s to connect, 10 s to wait for a lock, 60 s per statement.

The schema is ``cms.db.schema`` (every table, declared once), versioned by the Alembic
migrations in ``cms/db/migrations`` that ship inside the package:

* a database with no table at all is made at the newest revision (head) by the first
  process that opens it, so a first install and ``make demo`` need no step;
* a database at another revision, behind (an older cms, or a file made before the schema
  was versioned) or ahead (a newer cms), is refused with one line that names
  ``cms db upgrade`` (``SchemaMismatch``), and the daemons do not start on it;
* ``cms db upgrade`` brings it to head in place, keeping every row; ``cms db current`` says
  where it is. The Ansible controller role runs the upgrade before it restarts the services.
"""

from __future__ import annotations

import os
import threading
import time
import weakref
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from sqlalchemy import event
from sqlalchemy.engine import URL, Connection, Engine, make_url

from cms.db import schema
from cms.errors import CmsError

BUSY_TIMEOUT_S = 10.0
CONNECT_TIMEOUT_S = 10
STATEMENT_TIMEOUT_MS = 60000
WRITE_LOCK = 0x636d73        # the advisory lock every PostgreSQL write transaction takes ("cms")
MIGRATIONS = Path(__file__).with_name("migrations")
VERSION_TABLE = "alembic_version"


class DatabaseError(CmsError):
    """state_db cannot be opened or used (bad URL, unreadable password file, server down)."""


class SchemaMismatch(CmsError):
    """The database's schema revision is not the one this cms was made for."""


def is_postgres(state_db: str) -> bool:
    return state_db.startswith(("postgresql://", "postgresql+psycopg://", "postgres://"))


def url_of(state_db: str, password_file: str = "") -> URL:
    """The SQLAlchemy URL of state_db, with the password read from password_file."""
    if not is_postgres(state_db):
        return URL.create("sqlite", database=None if state_db == ":memory:" else str(state_db))
    u = make_url(state_db).set(drivername="postgresql+psycopg")
    if password_file:
        try:
            pw = Path(password_file).read_text().rstrip("\r\n")
        except OSError as exc:
            raise DatabaseError(f"state_db_password_file {password_file}: {exc.strerror or exc}") from None
        u = u.set(password=pw)
    return u


def describe(state_db: str) -> str:
    """state_db for a message: the path, or the URL with no password."""
    return state_db if not is_postgres(state_db) else make_url(state_db).render_as_string(hide_password=True)


# -- engines -----------------------------------------------------------------------------------

_engines: "weakref.WeakSet[Engine]" = weakref.WeakSet()


def _before_fork() -> None:
    # No SQLite connection open across a fork, where it can be helped: a child's SQLite starts
    # from a copy of its parent's per-file lock bookkeeping, while the POSIX locks it stands
    # for stay the parent's, so a connection the child opens to a file its parent had open
    # could believe it holds a lock it does not (writes lost). The pool's idle connections
    # are closed here; one checked out by another thread at that instant cannot be.
    for e in list(_engines):
        if e.dialect.name == "sqlite" and e.url.database:
            e.dispose()


def _after_fork() -> None:
    # a child must not use its parent's connections (gunicorn forks, tests fork writers)
    for e in list(_engines):
        e.dispose(close=False)


os.register_at_fork(before=_before_fork, after_in_child=_after_fork)


def engine(state_db: str, password_file: str = "") -> Engine:
    """An engine for state_db, set up as the module docstring says."""
    u = url_of(state_db, password_file)
    if u.drivername == "sqlite":
        if u.database:
            Path(u.database).parent.mkdir(parents=True, exist_ok=True)
            eng = sa.create_engine(u, connect_args={"timeout": BUSY_TIMEOUT_S, "check_same_thread": False},
                                   pool_size=4, max_overflow=60, pool_timeout=BUSY_TIMEOUT_S)
        else:
            eng = sa.create_engine(u, connect_args={"check_same_thread": False}, poolclass=sa.StaticPool)
        event.listen(eng, "connect", _sqlite_connect)
        event.listen(eng, "begin", _sqlite_begin)
    else:
        eng = sa.create_engine(u, pool_size=2, max_overflow=30, pool_timeout=BUSY_TIMEOUT_S, pool_recycle=3600,
                               connect_args={"connect_timeout": CONNECT_TIMEOUT_S, "application_name": "cms",
                                             "options": f"-c lock_timeout={int(BUSY_TIMEOUT_S * 1000)} "
                                                        f"-c statement_timeout={STATEMENT_TIMEOUT_MS}"})
    _engines.add(eng)
    return eng


def _sqlite_connect(dbapi: Any, _record: Any) -> None:
    dbapi.isolation_level = None           # the driver's own transactions off: "begin" says which kind
    dbapi.execute(f"PRAGMA busy_timeout={int(BUSY_TIMEOUT_S * 1000)}")
    _enable_wal(dbapi)
    dbapi.execute("PRAGMA synchronous=NORMAL")
    dbapi.execute("PRAGMA foreign_keys=ON")


def _sqlite_begin(conn: Connection) -> None:
    opts = conn.get_execution_options()
    if opts.get("isolation_level") == "AUTOCOMMIT" or opts.get("cms_read"):
        # a read (Store.read) runs outside any transaction, as the sqlite3 store did: each
        # statement sees the latest commit, and no BEGIN is sent (a statement of its own per
        # read, a third of /vm/query's time in the database layer)
        return
    conn.exec_driver_sql("BEGIN IMMEDIATE" if opts.get("cms_write") else "BEGIN")


def _enable_wal(c: Any, within_s: float = 10.0) -> None:
    """Switch the file to WAL once. Several processes opening a new file at once (gunicorn
    workers, the autoscaler) can get SQLITE_BUSY from the switch itself without the busy
    handler being consulted, so it is retried for a bounded time; once the file is in WAL,
    later connections only read the mode and never take that lock."""
    import sqlite3
    deadline = time.monotonic() + within_s
    while True:
        try:
            if c.execute("PRAGMA journal_mode").fetchone()[0].lower() in ("wal", "memory"):
                return
            c.execute("PRAGMA journal_mode=WAL")
            return
        except sqlite3.OperationalError as e:
            if "locked" not in str(e) or time.monotonic() > deadline:
                raise
            time.sleep(0.05)


def begin_write(conn: Connection) -> None:
    """After the transaction began: PostgreSQL's stand-in for BEGIN IMMEDIATE."""
    if conn.dialect.name == "postgresql":
        conn.exec_driver_sql(f"SELECT pg_advisory_xact_lock({WRITE_LOCK})")


# -- the schema's revision ---------------------------------------------------------------------

@event.listens_for(sa.Table, "column_reflect")
def _rowid_is_never_null(inspector: Any, table: sa.Table, info: dict[str, Any]) -> None:
    """SQLite reports an INTEGER PRIMARY KEY made without NOT NULL (as the code before
    versions made them) as nullable, but such a column is the rowid and never holds NULL:
    say so, so Alembic's comparison does not see a difference that is not there."""
    if inspector.dialect.name == "sqlite" and info.get("primary_key") and isinstance(info["type"], sa.Integer) \
            and len(inspector.get_pk_constraint(table.name)["constrained_columns"]) == 1:
        info["nullable"] = False


_head_lock = threading.Lock()
_head: list[str] = []


def alembic_config(eng: Engine | None = None, conn: Connection | None = None) -> Any:
    import io

    from alembic.config import Config
    cfg = Config(stdout=io.StringIO())          # cms says what happened in its own words
    cfg.set_main_option("script_location", str(MIGRATIONS))
    cfg.attributes["connection"] = conn
    cfg.attributes["engine"] = eng
    return cfg


def head() -> str:
    """The newest revision this cms knows."""
    with _head_lock:
        if not _head:
            from alembic.script import ScriptDirectory
            _head.append(ScriptDirectory.from_config(alembic_config()).get_current_head() or "")
        return _head[0]


def known(rev: str) -> bool:
    from alembic.script import ScriptDirectory
    from alembic.util import CommandError
    try:
        return ScriptDirectory.from_config(alembic_config()).get_revision(rev) is not None
    except CommandError:
        return False


def current(conn: Connection) -> str | None:
    """The revision the database is at; None when it has none (empty, or made before versions)."""
    insp = sa.inspect(conn)
    if not insp.has_table(VERSION_TABLE):
        return None
    return conn.execute(sa.text(f"SELECT version_num FROM {VERSION_TABLE}")).scalar()


def cms_tables(conn: Connection) -> list[str]:
    have = set(sa.inspect(conn).get_table_names())
    return sorted(t for t in schema.metadata.tables if t in have)


def mismatch(state_db: str, rev: str | None, has_tables: bool) -> str | None:
    """The one line a daemon refuses to start with; None when the revision is head."""
    want = head()
    if rev == want:
        return None
    where = describe(state_db)
    if rev is None:
        if not has_tables:
            return None
        return (f"state_db {where} was made before cms versioned its schema: run `cms db upgrade` "
                f"(it upgrades in place and keeps every row), then start cms again")
    if known(rev):
        return f"state_db {where} is at schema revision {rev}, this cms needs {want}: run `cms db upgrade`"
    return (f"state_db {where} is at schema revision {rev}, newer than this cms knows ({want}): upgrade cms, "
            f"or run `cms db upgrade` with the cms that wrote it")


def ensure(eng: Engine, state_db: str) -> None:
    """Make an empty database at head; refuse one at another revision (SchemaMismatch)."""
    with eng.connect() as conn:
        rev = current(conn)
        conn.rollback()
    if rev == head():
        return
    # Look again under the write lock: another process may be making it right now, and only
    # there do the version table and the tables agree.
    with eng.connect().execution_options(cms_write=True) as conn, conn.begin():
        begin_write(conn)
        rev, tables = current(conn), cms_tables(conn)
        if rev is None and not tables:
            from alembic import command
            schema.metadata.create_all(conn)
            command.stamp(alembic_config(eng, conn), "head")
            return
    problem = mismatch(state_db, rev, bool(tables))
    if problem:
        raise SchemaMismatch(problem)


def upgrade(eng: Engine, to: str = "head") -> tuple[str | None, str | None]:
    """Bring the database to revision `to` in place: (revision before, revision after)."""
    from alembic import command
    with eng.connect().execution_options(cms_write=True) as conn:
        before = current(conn)
        conn.rollback()
        with conn.begin():
            begin_write(conn)
            command.upgrade(alembic_config(eng, conn), to)
        after = current(conn)
        conn.rollback()
    return before, after


def open_engine(state_db: str, password_file: str = "") -> Engine:
    """engine(), with a backend that cannot be reached turned into one DatabaseError line."""
    eng = engine(state_db, password_file)
    try:
        with eng.connect() as conn:
            conn.rollback()
    except sa.exc.OperationalError as exc:
        eng.dispose()
        raise DatabaseError(f"cannot open state_db {describe(state_db)}: {_first_line(exc)}") from None
    return eng


def _first_line(exc: BaseException) -> str:
    orig = getattr(exc, "orig", None) or exc
    return (str(orig).strip().splitlines() or [type(orig).__name__])[0]


def upsert(conn: Connection, table: sa.Table, rows: list[dict[str, Any]], keys: list[str]) -> None:
    """INSERT ... ON CONFLICT (keys) DO UPDATE: each row replaces the one with its keys (both
    backends have it; SQLAlchemy spells it per dialect)."""
    if conn.dialect.name == "postgresql":
        from sqlalchemy.dialects.postgresql import insert
    else:
        from sqlalchemy.dialects.sqlite import insert
    q = insert(table)
    q = q.on_conflict_do_update(index_elements=keys,
                                set_={c.name: q.excluded[c.name] for c in table.c if c.name not in keys})
    conn.execute(q, rows)
