"""VMs made through the API on a host that is declared down: never recreated on a guess.

A replica is a stateless clone, replaced at once; an API VM (004's /vm/create) has a disk of
its own and may still be running behind a partition. So (CloudStack's and Masakari's rule:
fence before you restart anything stateful):

* the host is declared down: its VMs are marked lost (``api_vms.lost``; /vm/query and
  /v1/vms say so), event ``vm_lost``;
* its ``fence_command`` succeeded, so nothing runs there any more: each of its lost VMs with
  ``ha`` is restarted on a live host from its own disk (``Scheduler.spawn`` with ``from_disk``: the
  overlay on the shared pool, at the same path on every host), placed as a create is, and
  its row follows it; event ``evacuated``. Only between hosts whose storage is shared
  (``hosts[].shared_storage`` on both); otherwise, or without ``ha``, it stays lost;
* the host answers again: the definitions it still holds of VMs restarted elsewhere are
  undefined, their disks kept (``stale_on``, done by the host's fence); the other lost VMs
  are back as they were: no longer lost, and one a power cut left shut off is started again
  on its own host (``back``), event ``vm_back``.

Runs on HostWatch's workers; every change to the fleet goes through the Scheduler.
"""

from __future__ import annotations

import logging
from typing import Any, Iterable

from cms import errors
from cms.api_tables import ApiTables
from cms.autoscaler.journal import Journal
from cms.config import Config
from cms.scheduler import Scheduler
from cms.virt import OwnedDomain, OwnerMeta

log = logging.getLogger("cms.autoscaler")


class Rescue:
    def __init__(self, cfg: Config, scheduler: Scheduler, journal: Journal, *, dry_run: bool = False) -> None:
        self.cfg = cfg
        self.scheduler = scheduler
        self.journal = journal
        self.dry_run = dry_run
        self.tables = ApiTables(scheduler.store)

    def lost(self, host: str, now: float) -> None:
        """``host`` is declared down: its VMs are lost until it is fenced or returns."""
        if self.dry_run:
            return
        for r in self.tables.mark_lost(host, now):
            fenced = "restarted elsewhere once the host is fenced" if r["ha"] else "back when its host returns"
            self.journal.event("vm_lost", "", r["name"], f"VM {r['name']} ({r['domain']}): its host {host} is "
                               f"down; {fenced}", level=logging.WARNING, vmid=r["vmid"], host=host, ha=bool(r["ha"]))

    def evacuate(self, host: str, avoid: Iterable[str]) -> None:
        """``host`` was fenced by its fence command: restart its lost ha VMs elsewhere (a worker).
        ``avoid``: the hosts that are not up."""
        if self.dry_run:
            return
        shared = {h.name for h in self.cfg.hosts if h.shared_storage}
        avoid = frozenset(avoid) | {host} | {h.name for h in self.cfg.hosts if h.name not in shared}
        for r in self.tables.lost_vms(host):
            if not r["ha"]:
                continue
            if host not in shared:
                self.journal.event("vm_not_evacuated", "", r["name"], f"VM {r['name']} stays lost: host {host}'s "
                                   "storage is not shared (hosts[].shared_storage), so no other host has its disk",
                                   level=logging.WARNING, vmid=r["vmid"])
                continue
            self._restart_elsewhere(host, r, avoid)

    def _restart_elsewhere(self, host: str, r: dict[str, Any], avoid: frozenset[str]) -> None:
        t = self.tables.type(r["instance_type"])
        img = self.tables.image(r["image_id"])
        if t is None:
            self.journal.event("vm_not_evacuated", "", r["name"], f"VM {r['name']} stays lost: its type "
                               f"{r['instance_type']} is no longer known", level=logging.WARNING, vmid=r["vmid"])
            return
        disk = f"{self.cfg.libvirt.pool_path}/{r['domain']}.qcow2"
        meta = OwnerMeta(role="vm", vmid=r["vmid"], instance_type=r["instance_type"], image=img["path"] if img else "")
        try:
            s = self.scheduler.spawn(r["domain"], t["cpu"], t["ram"], meta, max_vcpus=2 * t["cpu"],
                                     max_memory_mib=2 * t["ram"], avoid=avoid, from_disk=disk)
        except errors.CmsError as exc:
            self.journal.event("vm_not_evacuated", "", r["name"], f"VM {r['name']} stays lost: restarting it "
                               f"elsewhere failed: {exc}", level=logging.WARNING, vmid=r["vmid"], error=str(exc))
            return
        self.tables.found(r["vmid"], s.host)
        self.journal.event("evacuated", "", r["name"], f"VM {r['name']} ({r['domain']}) restarted on {s.host} from "
                           f"its own disk: its host {host} was fenced", vmid=r["vmid"], host=s.host, source=host)

    def stale_on(self, host: str, domains: Iterable[OwnedDomain]) -> list[str]:
        """The API VM domains listed on ``host`` whose VM now runs elsewhere (evacuated while the
        host was away): their definitions are undefined there, their disks kept."""
        rows = {r["domain"]: r for r in self.tables.vms()}
        return sorted(d.name for d in domains if d.meta.role == "vm" and d.name in rows
                      and rows[d.name]["host"] != host)

    def back(self, host: str, domains: Iterable[OwnedDomain]) -> None:
        """``host`` is fenced and up again: its lost VMs are back as they were; one a power cut
        left shut off starts again there (a worker)."""
        if self.dry_run:
            return
        found = {d.name: d for d in domains}
        for r in self.tables.lost_vms(host):
            d = found.get(r["domain"])
            started = ""
            if d is not None and not d.alive:
                try:
                    self.scheduler.start(host, r["domain"])
                    started = "; it was shut off (a power cut), so it is started again"
                except errors.CmsError as exc:
                    started = f"; starting it again failed: {exc}"
            self.tables.found(r["vmid"], host)
            self.journal.event("vm_back", "", r["name"], f"VM {r['name']} ({r['domain']}) is back on {host}{started}",
                               vmid=r["vmid"], host=host)
