"""What the API does, apart from HTTP: one object the responders (cms.api.app) call, by resource.

  svc.vms        cms.api.vms        the API's VMs: create, query, destroy, migrate, resize, console
  svc.machines   cms.api.machines   the hypervisor hosts: capacity, free room, figures, their VMs
  svc.groups     cms.api.groups     replica groups: status, scale requests
  svc.catalog    cms.api.catalog    instance types and images (types_file, image_file, POST /v1/images)
  svc.events()   the event log

Every SQL statement on the API's own tables is in cms.api_tables; every change to the fleet
goes through the scheduler (cms.scheduler); reads of the fleet may use cms.virt.Fleet. The
failures it raises beyond cms.errors are in cms.api.failures.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cms import images, inventory
from cms.api.catalog import Catalog
from cms.api.groups import Groups
from cms.api.machines import Machines
from cms.api.vms import Vms
from cms.api_tables import ApiTables
from cms.config import Config
from cms.scheduler import Scheduler
from cms.store import Store
from cms.virt import Fleet


@dataclass
class Deps:
    """What the app needs; tests build it with fakes or test:/// hosts."""
    cfg: Config
    store: Store
    fleet: Fleet
    scheduler: Scheduler
    types: list[inventory.VmType] | None = None      # None: read types_file
    images: list[inventory.Image] | None = None      # None: read image_file
    files: tuple[Path, Path] | None = None           # (image_file, types_file); None: default_paths
    extra: dict[str, Any] = field(default_factory=dict)


def build_deps(cfg: Config) -> Deps:
    store = Store.of(cfg)
    fleet = Fleet(cfg)
    return Deps(cfg, store, fleet, Scheduler(cfg, fleet, store))


class Resource:
    """A Falcon resource (a /v1 URL's responders) over the service."""

    def __init__(self, svc: "Service") -> None:
        self.svc = svc


class Service:
    def __init__(self, deps: Deps) -> None:
        self.cfg, self.store, self.fleet, self.sched = deps.cfg, deps.store, deps.fleet, deps.scheduler
        tables = ApiTables(self.store)
        image_store = images.ImageStore(self.cfg, self.store, self.fleet)
        self.catalog = Catalog(self.cfg, self.store, tables, image_store)
        self.vms = Vms(self.cfg, self.store, tables, self.sched, self.fleet, self.catalog, image_store)
        self.machines = Machines(self.cfg, self.store, tables, self.sched)
        self.groups = Groups(self.cfg, self.store, self.sched, self.fleet)
        self.catalog.load_inventory(deps.types, deps.images, deps.files)
        self.vms.reap_stale_creates(self.cfg.api.timeout)

    def events(self, since_id: int, limit: int, group: str | None = None,
               newest_first: bool = False, kinds: list[str] | None = None,
               before_id: int | None = None) -> list[dict[str, Any]]:
        return [{"id": e.id, "ts": e.ts, "kind": e.kind, "group": e.group, "subject": e.subject,
                 "message": e.message, "data": e.data}
                for e in self.store.events(since_id=since_id, group=group, limit=limit, newest_first=newest_first,
                                           kinds=kinds, before_id=before_id)]
