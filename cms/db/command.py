"""`cms db upgrade` and `cms db current`: the state database's schema revision (cms.db).

    cms db current [--config F] [--json]   where state_db stands: its revision and head
    cms db upgrade [--config F] [--json]   bring it to head in place (a new one is made at head)

Both read state_db (and state_db_password_file) from the configuration like every cms
command, and need neither the API nor the daemons. The upgrade runs in one write transaction:
readers go on meanwhile, writers wait for it. Exit codes: 0 done, 1 the database cannot be
reached or is newer than this cms, 2 a bad configuration.
"""

from __future__ import annotations

import json
import os
import sys
from typing import Any

from cms import db
from cms.config import load_or_exit, one_line
from cms.errors import CmsError


def status(state_db: str, password_file: str = "") -> dict[str, Any]:
    """{state_db, backend, revision, head, state}: state is one of current, behind,
    unversioned (made before cms versioned its schema), ahead, empty."""
    rev, tables = None, []
    if db.is_postgres(state_db) or os.path.exists(state_db):      # a missing file is not made by a look
        eng = db.open_engine(state_db, password_file)
        try:
            with eng.connect() as conn:
                rev = db.current(conn)
                tables = db.cms_tables(conn)
                conn.rollback()
        finally:
            eng.dispose()
    head = db.head()
    if rev == head:
        state = "current"
    elif rev is None:
        state = "unversioned" if tables else "empty"
    else:
        state = "behind" if db.known(rev) else "ahead"
    return {"state_db": db.describe(state_db), "backend": "postgresql" if db.is_postgres(state_db) else "sqlite",
            "revision": rev, "head": head, "state": state}


WORDS = {"current": "at head",
         "behind": "behind head: run `cms db upgrade`",
         "unversioned": "made before cms versioned its schema: run `cms db upgrade` (every row is kept)",
         "ahead": "newer than this cms: upgrade cms",
         "empty": "empty: made at head by the first cms process that opens it, or by `cms db upgrade`"}


def current(state_db: str, password_file: str = "") -> tuple[dict[str, Any], str]:
    st = status(state_db, password_file)
    return st, f"{st['state_db']} ({st['backend']}): revision {st['revision'] or 'none'}, {WORDS[st['state']]} " \
               f"(head {st['head']})"


def upgrade(state_db: str, password_file: str = "") -> tuple[dict[str, Any], str]:
    st = status(state_db, password_file)
    if st["state"] == "ahead":
        raise db.SchemaMismatch(f"{st['state_db']} is at revision {st['revision']}, newer than this cms knows "
                                f"({st['head']}): upgrade cms, or run `cms db upgrade` with the cms that wrote it")
    eng = db.open_engine(state_db, password_file)
    try:
        before, after = db.upgrade(eng)
    finally:
        eng.dispose()
    out = {**st, "revision": after, "before": before, "state": "current"}
    if before == after:
        return out, f"{st['state_db']}: already at head ({after})"
    return out, f"{st['state_db']}: upgraded from {before or 'none'} to {after}"


def main(sub: str, config: str | None, as_json: bool = False) -> int:
    cfg = load_or_exit(config)
    try:
        out, human = (upgrade if sub == "upgrade" else current)(cfg.state_db, cfg.state_db_password_file)
    except CmsError as exc:
        print(f"cms db {sub}: {one_line(str(exc))}", file=sys.stderr)
        return 1
    print(json.dumps(out) if as_json else human)
    return 0
