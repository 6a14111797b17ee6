"""The API's tables in the state database, and every SQL statement on them.

  api_vms           vmid <-> name, libvirt domain, host, type, image, state (creating | active),
                    ha (restarted elsewhere when its host is fenced), lost (when its host was
                    declared down and it was not restarted elsewhere; NULL: not lost)
  api_types         the types_file, imported when the API starts
  api_images        the image_file, imported when the API starts (ids 100, 101, ... in file
                    order), and the images registered with POST /v1/images
  api_images_added  the images registered through the API (they outlive a new image_file)
  api_pms           the configured hosts (pmid = position in cms.toml = line order in pm_file)

The API (cms.api) and the host balancer (an API VM it migrated has its row follow it; the
sizes and names vertical scaling reads) both go through ``ApiTables``: no SQL on these
tables anywhere else.
"""

from __future__ import annotations

import contextlib
import sqlite3
import time
from typing import Any, Iterable, Iterator, Sequence

from cms.store import Store

SCHEMA = """
CREATE TABLE IF NOT EXISTS api_vms (
    vmid INTEGER PRIMARY KEY AUTOINCREMENT, name TEXT NOT NULL UNIQUE, domain TEXT NOT NULL DEFAULT '',
    host TEXT NOT NULL DEFAULT '', instance_type INTEGER NOT NULL, image_id INTEGER NOT NULL,
    state TEXT NOT NULL, created REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS api_types (tid INTEGER PRIMARY KEY, cpu INTEGER NOT NULL, ram INTEGER NOT NULL,
    disk INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS api_images (id INTEGER PRIMARY KEY, name TEXT NOT NULL, path TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS api_images_added (id INTEGER PRIMARY KEY, name TEXT NOT NULL UNIQUE,
    path TEXT NOT NULL UNIQUE, added REAL NOT NULL);
CREATE TABLE IF NOT EXISTS api_pms (pmid INTEGER PRIMARY KEY, name TEXT NOT NULL, uri TEXT NOT NULL);
"""

Row = dict[str, Any]


class Taken(Exception):
    """A UNIQUE column already holds the value (a VM's name, an image's name or path)."""


class ApiTables:
    def __init__(self, store: Store) -> None:
        self.store = store
        store.ensure_schema(SCHEMA)
        store._add_columns("api_vms", {"ha": "INTEGER NOT NULL DEFAULT 0", "lost": "REAL"})   # issue 20

    def _rows(self, query: str, args: Sequence[Any] = ()) -> list[Row]:
        return [dict(r) for r in self.store.connect().execute(query, args)]

    def _row(self, query: str, args: Sequence[Any] = ()) -> Row | None:
        r = self.store.connect().execute(query, args).fetchone()
        return None if r is None else dict(r)

    @contextlib.contextmanager
    def _write_new(self, what: str) -> Iterator[sqlite3.Connection]:
        """A write transaction that adds a row: Taken(what) when a UNIQUE column has its value already."""
        try:
            with self.store.write() as c:
                yield c
        except sqlite3.IntegrityError as exc:
            if "UNIQUE" in str(exc):
                raise Taken(what) from None
            raise

    # -- the inventory: types, images, machines ----------------------------------------------

    def replace_inventory(self, types: Iterable[tuple[int, int, int, int]] | None,
                          images: Iterable[tuple[int, str, str]] | None,
                          hosts: Iterable[tuple[str, str]]) -> list[tuple[Row, int]]:
        """Put the files' types and images (None: keep what is there) and the configured
        hosts in place, in one transaction. An image registered through the API stays; one
        whose id the image_file has taken since moves past the highest id. Returns each such
        move: (its row before, its new id)."""
        moved = []
        with self.store.write() as c:
            if types is not None:
                c.execute("DELETE FROM api_types")
                c.executemany("INSERT INTO api_types VALUES (?,?,?,?)", list(types))
            if images is not None:
                images = list(images)
                c.execute("DELETE FROM api_images")
                c.executemany("INSERT INTO api_images VALUES (?,?,?)", images)
                taken = {i[0] for i in images}
                for r in c.execute("SELECT id, name, path FROM api_images_added ORDER BY id").fetchall():
                    iid = r["id"]
                    if iid in taken:
                        iid = max(taken | {r2[0] for r2 in c.execute("SELECT id FROM api_images_added")}) + 1
                        c.execute("UPDATE api_images_added SET id=? WHERE id=?", (iid, r["id"]))
                        moved.append((dict(r), iid))
                    c.execute("INSERT INTO api_images VALUES (?,?,?)", (iid, r["name"], r["path"]))
                    taken.add(iid)
            c.execute("DELETE FROM api_pms")
            c.executemany("INSERT INTO api_pms VALUES (?,?,?)", [(i, n, u) for i, (n, u) in enumerate(hosts, 1)])
        return moved

    def types(self) -> list[Row]:
        return self._rows("SELECT tid, cpu, ram, disk FROM api_types ORDER BY tid")

    def type(self, tid: int) -> Row | None:
        return self._row("SELECT tid, cpu, ram, disk FROM api_types WHERE tid=?", (tid,))

    def type_sizes(self) -> dict[int, tuple[int, int]]:
        """Each instance type's (vCPUs, MiB)."""
        return {int(r["tid"]): (int(r["cpu"]), int(r["ram"])) for r in self.types()}

    def images(self, with_path: bool = False) -> list[Row]:
        return self._rows(f"SELECT id, name{', path' if with_path else ''} FROM api_images ORDER BY id")

    def image(self, image_id: int | None) -> Row | None:
        """The image with that id; None: the first one."""
        if image_id is None:
            return self._row("SELECT id, name, path FROM api_images ORDER BY id LIMIT 1")
        return self._row("SELECT id, name, path FROM api_images WHERE id=?", (image_id,))

    def image_named_or_at(self, name: str, path: str) -> Row | None:
        return self._row("SELECT id, name, path FROM api_images WHERE name=? OR path=?", (name, path))

    def add_image(self, name: str, path: str) -> int:
        """Register an image after the highest id (at least 100); its id. Taken when its name
        or path is registered already."""
        with self._write_new(name) as w:
            iid = max(99, w.execute("SELECT COALESCE(MAX(id), 0) FROM api_images").fetchone()[0],
                      w.execute("SELECT COALESCE(MAX(id), 0) FROM api_images_added").fetchone()[0]) + 1
            w.execute("INSERT INTO api_images_added VALUES (?,?,?,?)", (iid, name, path, time.time()))
            w.execute("INSERT INTO api_images VALUES (?,?,?)", (iid, name, path))
        return iid

    # -- api_vms ----------------------------------------------------------------------------------

    def reserve_vm(self, name: str, tid: int, image_id: int, ha: bool = False) -> int:
        """A 'creating' row holding the name, before anything exists in libvirt; its vmid.
        Taken when a VM of that name exists."""
        with self._write_new(name) as c:
            return int(c.execute("INSERT INTO api_vms (name, instance_type, image_id, state, created, ha) "
                                 "VALUES (?,?,?, 'creating', ?, ?)",
                                 (name, tid, image_id, time.time(), int(ha))).lastrowid)

    def activate_vm(self, vmid: int, domain: str, host: str) -> None:
        with self.store.write() as c:
            c.execute("UPDATE api_vms SET domain=?, host=?, state='active' WHERE vmid=?", (domain, host, vmid))

    def drop_vm(self, vmid: int, only_creating: bool = False) -> None:
        with self.store.write() as c:
            c.execute("DELETE FROM api_vms WHERE vmid=?" + (" AND state='creating'" if only_creating else ""),
                      (vmid,))

    def stale_creates(self, older_than_s: float) -> list[Row]:
        """The 'creating' rows older than that: vmid, name, host."""
        return self._rows("SELECT vmid, name, host FROM api_vms WHERE state='creating' AND created < ?",
                          (time.time() - older_than_s,))

    def vm(self, vmid: int) -> Row | None:
        """An active VM's row."""
        return self._row("SELECT * FROM api_vms WHERE vmid=? AND state='active'", (vmid,))

    def vms(self, host: str | None = None) -> list[Row]:
        """The active VMs' rows (on one host when given), by vmid."""
        if host is None:
            return self._rows("SELECT * FROM api_vms WHERE state='active' ORDER BY vmid")
        return self._rows("SELECT * FROM api_vms WHERE state='active' AND host=? ORDER BY vmid", (host,))

    def vm_names(self) -> dict[str, str]:
        """domain -> the name the API gave the VM, for the active VMs."""
        return {r["domain"]: r["name"] for r in self._rows("SELECT name, domain FROM api_vms WHERE state='active'")}

    def vm_moved(self, domain: str, host: str) -> None:
        """An API VM now runs on `host` (the spec's /pm/listvms reads it); nothing when no row has that domain."""
        with self.store.write() as c:
            c.execute("UPDATE api_vms SET host=? WHERE domain=?", (host, domain))

    # -- a host declared down (issue 20; cms.autoscaler.rescue) -------------------------------------

    def mark_lost(self, host: str, at: float) -> list[Row]:
        """The active VMs on ``host`` not marked lost yet are, from ``at``; their rows."""
        with self.store.write() as c:
            rows = [dict(r) for r in c.execute("SELECT * FROM api_vms WHERE state='active' AND host=? AND lost IS NULL",
                                               (host,))]
            c.execute("UPDATE api_vms SET lost=? WHERE state='active' AND host=? AND lost IS NULL", (at, host))
        return rows

    def lost_vms(self, host: str) -> list[Row]:
        return self._rows("SELECT * FROM api_vms WHERE state='active' AND host=? AND lost IS NOT NULL ORDER BY vmid",
                          (host,))

    def found(self, vmid: int, host: str) -> None:
        """No longer lost: back on its host, or restarted on ``host`` (evacuated)."""
        with self.store.write() as c:
            c.execute("UPDATE api_vms SET lost=NULL, host=? WHERE vmid=?", (host, vmid))
