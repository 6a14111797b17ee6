"""The hot read: one SELECT run on every request of a route (the one-VM row behind the spec's
/vm/query), compiled once, through the driver.

Decision (issue 21, bench/api.py): SQLAlchemy's execute path (a Connection made and closed,
the statement's cache key, the result's row processing) cost ~120 us per /vm/query on
SQLite, ten times the query itself, and halved the API's throughput against the sqlite3
store before it. So a statement read this often is compiled once per backend, and run with
the driver's own cursor on a connection checked out of the store's pool for that one read
(SQLite: outside any transaction, as Store.read; PostgreSQL: in autocommit, put back as the
pool hands it out). Holding one connection per thread would save ~14 us more, and would
carry a connection across forks and thread ends: not worth it. It is the same statement on
both backends and the same answer as Store.all: only statements whose columns the drivers
return as SQLAlchemy would (integers, text, floats) and whose parameters need no conversion
take it. Anything else, or any error on the way, is left to Store.all, which raises what it
raises; the connection of a failed read is thrown away, not put back.
"""

from __future__ import annotations

from typing import Any, Mapping

import sqlalchemy as sa
from sqlalchemy.engine import Engine

_PLAIN = (sa.Integer, sa.String)


class _Plan:
    """A SELECT compiled for one dialect: its SQL, and its parameters with their fixed values
    (a literal's, a LIMIT's) filled in once."""

    def __init__(self, c: Any) -> None:
        self.sql = str(c)
        self.fixed = c.params
        self.order = c.positiontup if c.positional else None
        self.needed = frozenset(b.key for b in c.binds.values() if b.required)

    def args(self, params: Mapping[str, Any]) -> Any:
        if self.order is None:
            return {**self.fixed, **params}
        return tuple(params[k] if k in params else self.fixed[k] for k in self.order)


def _plain(t: Any, dialect: Any) -> bool:
    """A column the driver returns as SQLAlchemy would: no result processing."""
    impl = t.dialect_impl(dialect)
    return isinstance(impl, _PLAIN) or (isinstance(impl, sa.Float) and not impl.asdecimal)


class HotReads:
    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self.postgres = engine.dialect.name == "postgresql"
        self._plans: dict[sa.Select, _Plan | None] = {}     # by identity: module-level statements

    def plan(self, q: sa.Select) -> _Plan | None:
        if q not in self._plans:
            d = self.engine.dialect
            c = q.compile(dialect=d)
            fits = (all(_plain(col.type, d) for col in q.selected_columns)
                    and all(b.type.dialect_impl(d).bind_processor(d) is None for b in c.binds.values())
                    and not c.literal_execute_params and not c.post_compile_params)
            self._plans[q] = _Plan(c) if fits else None
        return self._plans[q]

    def rows(self, q: sa.Select, params: Mapping[str, Any]) -> list[dict[str, Any]] | None:
        """The rows of q as dicts; None: not answered here (the caller runs it the usual way)."""
        plan = self.plan(q)
        if plan is None or not plan.needed <= params.keys():
            return None
        pooled = self.engine.raw_connection()
        conn = pooled.driver_connection
        try:
            if self.postgres:
                conn.autocommit = True
            cur = conn.execute(plan.sql, plan.args(params))
            names = [d[0] for d in cur.description]
            out = [dict(zip(names, r)) for r in cur.fetchall()]
            cur.close()
            if self.postgres:
                conn.autocommit = False         # as the pool hands its connections out
            return out
        except Exception:
            pooled.invalidate()                 # not back in the pool: maybe broken, or in autocommit
            return None
        finally:
            pooled.close()
