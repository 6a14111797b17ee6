"""The API's tables in the state database, and every SQL statement on them.

  api_vms           vmid <-> name, libvirt domain, host, type, image, state (creating | active),
                    ha (restarted elsewhere when its host is fenced), lost (when its host was
                    declared down and it was not restarted elsewhere; NULL: not lost)
  api_types         the types_file, imported when the API starts
  api_images        the image_file, imported when the API starts (ids 100, 101, ... in file
                    order), and the images registered with POST /v1/images
  api_images_added  the images registered through the API (they outlive a new image_file)
  api_pms           the configured hosts (pmid = position in cms.toml = line order in pm_file)

The tables are declared in cms.db.schema with every other; the statements on them are here.
The API (cms.api) and the host balancer (an API VM it migrated has its row follow it; the
sizes and names vertical scaling reads) both go through ``ApiTables``: no SQL on these
tables anywhere else. A create's reservation is one write transaction: on PostgreSQL its
vmid comes from the sequence behind api_vms.vmid, so API workers on any number of machines
never hand out one twice.
"""

from __future__ import annotations

import contextlib
import time
from typing import Any, Iterable, Iterator

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from cms.db.schema import api_images as IMAGES
from cms.db.schema import api_images_added as ADDED
from cms.db.schema import api_pms as PMS
from cms.db.schema import api_types as TYPES
from cms.db.schema import api_vms as VMS
from cms.store import Store

Row = dict[str, Any]

# The spec's /vm/query (and every route on one VM) runs this statement: built once, with its
# vmid a bound parameter, and run through Store.fetch (compiled once per backend, on the
# thread's own connection: cms.db.hot).
ACTIVE_VM = sa.select(VMS).where(VMS.c.vmid == sa.bindparam("vmid"), VMS.c.state == "active").limit(1)


class Taken(Exception):
    """A UNIQUE column already holds the value (a VM's name, an image's name or path)."""


class ApiTables:
    def __init__(self, store: Store) -> None:
        self.store = store

    def _rows(self, query: Any, params: dict[str, Any] | None = None) -> list[Row]:
        return [dict(r) for r in self.store.all(query, params)]

    def _row(self, query: Any) -> Row | None:
        rows = self._rows(query.limit(1))
        return rows[0] if rows else None

    @contextlib.contextmanager
    def _write_new(self, what: str) -> Iterator[Connection]:
        """A write transaction that adds a row: Taken(what) when a UNIQUE column has its value already."""
        try:
            with self.store.write() as c:
                yield c
        except sa.exc.IntegrityError:
            raise Taken(what) from None

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
                c.execute(TYPES.delete())
                _insert(c, TYPES, [dict(zip(("tid", "cpu", "ram", "disk"), t)) for t in types])
            if images is not None:
                images = list(images)
                c.execute(IMAGES.delete())
                _insert(c, IMAGES, [dict(zip(("id", "name", "path"), i)) for i in images])
                taken = {i[0] for i in images}
                for r in c.execute(sa.select(ADDED.c.id, ADDED.c.name, ADDED.c.path).order_by(ADDED.c.id)).mappings().all():
                    iid = r["id"]
                    if iid in taken:
                        iid = max(taken | set(c.execute(sa.select(ADDED.c.id)).scalars())) + 1
                        c.execute(ADDED.update().where(ADDED.c.id == r["id"]).values(id=iid))
                        moved.append((dict(r), iid))
                    c.execute(IMAGES.insert().values(id=iid, name=r["name"], path=r["path"]))
                    taken.add(iid)
            c.execute(PMS.delete())
            _insert(c, PMS, [{"pmid": i, "name": n, "uri": u} for i, (n, u) in enumerate(hosts, 1)])
        return moved

    def types(self) -> list[Row]:
        return self._rows(sa.select(TYPES).order_by(TYPES.c.tid))

    def type(self, tid: int) -> Row | None:
        return self._row(sa.select(TYPES).where(TYPES.c.tid == tid))

    def type_sizes(self) -> dict[int, tuple[int, int]]:
        """Each instance type's (vCPUs, MiB)."""
        return {int(r["tid"]): (int(r["cpu"]), int(r["ram"])) for r in self.types()}

    def images(self, with_path: bool = False) -> list[Row]:
        cols = (IMAGES.c.id, IMAGES.c.name) + ((IMAGES.c.path,) if with_path else ())
        return self._rows(sa.select(*cols).order_by(IMAGES.c.id))

    def image(self, image_id: int | None) -> Row | None:
        """The image with that id; None: the first one."""
        if image_id is None:
            return self._row(sa.select(IMAGES).order_by(IMAGES.c.id))
        return self._row(sa.select(IMAGES).where(IMAGES.c.id == image_id))

    def image_named_or_at(self, name: str, path: str) -> Row | None:
        return self._row(sa.select(IMAGES).where((IMAGES.c.name == name) | (IMAGES.c.path == path)))

    def add_image(self, name: str, path: str) -> int:
        """Register an image after the highest id (at least 100); its id. Taken when its name
        or path is registered already."""
        with self._write_new(name) as w:
            iid = max(99, w.execute(sa.select(sa.func.coalesce(sa.func.max(IMAGES.c.id), 0))).scalar(),
                      w.execute(sa.select(sa.func.coalesce(sa.func.max(ADDED.c.id), 0))).scalar()) + 1
            w.execute(ADDED.insert().values(id=iid, name=name, path=path, added=time.time()))
            w.execute(IMAGES.insert().values(id=iid, name=name, path=path))
        return iid

    # -- api_vms ----------------------------------------------------------------------------------

    def reserve_vm(self, name: str, tid: int, image_id: int, ha: bool = False) -> int:
        """A 'creating' row holding the name, before anything exists in libvirt; its vmid.
        Taken when a VM of that name exists."""
        with self._write_new(name) as c:
            r = c.execute(VMS.insert().values(name=name, instance_type=tid, image_id=image_id, state="creating",
                                              created=time.time(), ha=int(ha)))
            return int(r.inserted_primary_key[0])

    def activate_vm(self, vmid: int, domain: str, host: str) -> None:
        with self.store.write() as c:
            c.execute(VMS.update().where(VMS.c.vmid == vmid).values(domain=domain, host=host, state="active"))

    def drop_vm(self, vmid: int, only_creating: bool = False) -> None:
        q = VMS.delete().where(VMS.c.vmid == vmid)
        with self.store.write() as c:
            c.execute(q.where(VMS.c.state == "creating") if only_creating else q)

    def stale_creates(self, older_than_s: float) -> list[Row]:
        """The 'creating' rows older than that: vmid, name, host."""
        return self._rows(sa.select(VMS.c.vmid, VMS.c.name, VMS.c.host).where(
            VMS.c.state == "creating", VMS.c.created < time.time() - older_than_s))

    def vm(self, vmid: int) -> Row | None:
        """An active VM's row."""
        rows = self.store.fetch(ACTIVE_VM, {"vmid": vmid})
        return rows[0] if rows else None

    def vms(self, host: str | None = None) -> list[Row]:
        """The active VMs' rows (on one host when given), by vmid."""
        q = sa.select(VMS).where(VMS.c.state == "active")
        return self._rows((q if host is None else q.where(VMS.c.host == host)).order_by(VMS.c.vmid))

    def vm_names(self) -> dict[str, str]:
        """domain -> the name the API gave the VM, for the active VMs."""
        return {r["domain"]: r["name"] for r in self._rows(sa.select(VMS.c.name, VMS.c.domain)
                                                           .where(VMS.c.state == "active"))}

    def vm_moved(self, domain: str, host: str) -> None:
        """An API VM now runs on `host` (the spec's /pm/listvms reads it); nothing when no row has that domain."""
        with self.store.write() as c:
            c.execute(VMS.update().where(VMS.c.domain == domain).values(host=host))

    # -- a host declared down (issue 20; cms.autoscaler.rescue) -------------------------------------

    def mark_lost(self, host: str, at: float) -> list[Row]:
        """The active VMs on ``host`` not marked lost yet are, from ``at``; their rows."""
        on_host = (VMS.c.state == "active", VMS.c.host == host, VMS.c.lost.is_(None))
        with self.store.write() as c:
            rows = [dict(r) for r in c.execute(sa.select(VMS).where(*on_host)).mappings()]
            c.execute(VMS.update().where(*on_host).values(lost=at))
        return rows

    def lost_vms(self, host: str) -> list[Row]:
        return self._rows(sa.select(VMS).where(VMS.c.state == "active", VMS.c.host == host,
                                               VMS.c.lost.is_not(None)).order_by(VMS.c.vmid))

    def found(self, vmid: int, host: str) -> None:
        """No longer lost: back on its host, or restarted on ``host`` (evacuated)."""
        with self.store.write() as c:
            c.execute(VMS.update().where(VMS.c.vmid == vmid).values(lost=None, host=host))


def _insert(c: Connection, table: sa.Table, rows: list[dict[str, Any]]) -> None:
    if rows:
        c.execute(table.insert(), rows)
