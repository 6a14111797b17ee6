"""The API's VMs: /vm/create, /vm/query, /vm/destroy and /v1/vms/... (detail, console,
migrate, resize).

A VM is a row of api_vms (cms.api_tables) and a domain ``cms-vm-<vmid>`` that the
scheduler made; every change to the domain goes through the scheduler (spawn, remove,
migrate, resize), the row follows it. API VMs are defined with twice their type's vCPUs
and memory as maximum, so a resize can grow them live up to that (placement charges the
current size).
"""

from __future__ import annotations

import logging
from typing import Any

from cms import errors, images
from cms.api.catalog import Catalog, check_name
from cms.api.failures import Duplicate, NotImported, Unknown
from cms.api.machines import declared_states, host_of
from cms.api_tables import ApiTables, Taken
from cms.config import Config
from cms.scheduler import Scheduler
from cms.store import Store
from cms.virt import Fleet, OwnerMeta
from cms.virt.fleet import SERIAL_LOG_DIR

log = logging.getLogger("cms.api")
GIB = 1024 ** 3


def domain_of(vmid: int) -> str:
    return f"cms-vm-{vmid}"


class Vms:
    def __init__(self, cfg: Config, store: Store, tables: ApiTables, sched: Scheduler, fleet: Fleet,
                 catalog: Catalog, image_store: images.ImageStore) -> None:
        self.cfg, self.store, self.tables, self.sched, self.fleet = cfg, store, tables, sched, fleet
        self.catalog, self.image_store = catalog, image_store

    def _json(self, r: dict[str, Any], full: bool = False) -> dict[str, Any]:
        out = {"vmid": r["vmid"], "name": r["name"], "instance_type": r["instance_type"],
               "pmid": self.sched.pmid(r["host"])}
        if full:
            out.update(host=r["host"], domain=r["domain"], image_id=r["image_id"], state=r["state"],
                       created=r["created"], ha=bool(r["ha"]), lost=r["lost"] is not None)
        elif r["lost"] is not None:
            out["lost"] = True      # the spec's shape, and this one word while its host is down
        return out

    def _row(self, vmid: int) -> dict[str, Any]:
        r = self.tables.vm(vmid)
        if r is None:
            raise Unknown(f"no VM {vmid}")
        return r

    def get(self, vmid: int, full: bool = False) -> dict[str, Any]:
        return self._json(self._row(vmid), full)

    def list(self, host: str | None = None) -> list[dict[str, Any]]:
        return [self._json(r, True) for r in self.tables.vms(host)]

    def create(self, name: str, tid: int, image_id: int | None = None, pmid: int | None = None,
               ha: bool = False) -> dict[str, Any]:
        """Make a VM; on the host placement picks, or on machine `pmid` when given (409 when it
        has no room: placement's rules still apply there). Never on a host cms-autoscaler has
        declared anything but up. ``ha``: when its host is declared down and fenced, it is
        restarted on a live host from its own disk (cms.autoscaler.rescue)."""
        check_name("VM", name)
        t = self.catalog.type(tid)
        img = self.catalog.image(image_id)
        avoid = frozenset(h for h, st in declared_states(self.store).items() if st != "up")
        if pmid is not None:
            only = host_of(self.sched, pmid)
            avoid |= frozenset(h.name for h in self.cfg.hosts if h.name != only)
        # The source may sit where QEMU cannot read it, or on another machine: VMs are backed
        # by its copy in the hosts' image pool, made now if ./install or POST /v1/images did not.
        try:
            imp = self.image_store.copy_or_import(img["path"])
        except images.ImageError as exc:
            msg = f"image {img['id']} has no copy in cms's image storage, and importing it failed: {exc}"
            self.store.add_event("vm_create_failed", msg, subject=name, data={"type": tid, "image": img["id"]})
            raise NotImported(msg) from None
        # Reserve the name first: the UNIQUE constraint makes a duplicate fail here, before
        # anything exists in libvirt; the row is removed again if the spawn fails.
        try:
            vmid = self.tables.reserve_vm(name, tid, img["id"], ha)
        except Taken:
            raise Duplicate(f"a VM named {name!r} exists already") from None
        domain = domain_of(vmid)
        try:
            sp = self.sched.spawn(name=domain, vcpus=t["cpu"], memory_mib=t["ram"],
                                  meta=OwnerMeta(role="vm", vmid=vmid, instance_type=tid, image=imp["copy"]),
                                  image=imp["copy"], disk_bytes=t["disk"] * GIB,
                                  max_vcpus=2 * t["cpu"], max_memory_mib=2 * t["ram"], avoid=avoid)
        except BaseException as exc:
            self.tables.drop_vm(vmid)
            if isinstance(exc, errors.CmsError):
                self.store.add_event("vm_create_failed", str(exc), subject=name, data={"type": tid})
            raise
        self.tables.activate_vm(vmid, domain, sp.host)
        self.store.add_event("vm_create", f"VM {name} ({domain}) created on {sp.host}", subject=name,
                             data={"vmid": vmid, "host": sp.host, "type": tid, "image": img["id"]})
        return self.get(vmid, full=True)

    def reap_stale_creates(self, older_than_s: float) -> list[int]:
        """Finish creates that a dead worker left half done.

        A create reserves its row ('creating') before it touches libvirt and marks it
        'active' at the end, so a worker killed in between (gunicorn's api.timeout, a crash,
        a restart) leaves the row holding the name, and perhaps a volume or a domain
        cms-vm-N. No live call can be older than api.timeout, so a 'creating' row older than
        that is removed with whatever exists of its domain on every host. A row stays while
        any host is unreachable, since its domain may be there. Runs when a worker starts.
        """
        reaped = []
        for r in self.tables.stale_creates(older_than_s):
            domain = domain_of(r["vmid"])
            try:
                self.sched.remove_everywhere(domain)
            except errors.CmsError as exc:
                log.warning("half-made VM %s (%s) stays for now: %s", r["name"], domain, exc)
                continue
            self.tables.drop_vm(r["vmid"], only_creating=True)
            self.store.add_event("vm_create_reaped", f"VM {r['name']} ({domain}) was left half made by a "
                                 "worker that died; removed", subject=r["name"], data={"vmid": r["vmid"]})
            reaped.append(r["vmid"])
        return reaped

    def detail(self, vmid: int) -> dict[str, Any]:
        """GET /v1/vms/{vmid}: the stored row plus what libvirt says now (state, size, the most
        a resize may reach, where its service answers, the MiB its host gives it above its size
        for its guest kernel: kernel_mib), its type and its image. When the host
        does not answer, the live part is left out and domain_state says "unknown"."""
        r = self._row(vmid)
        out = self._json(r, True)
        out["type"] = next((t for t in self.catalog.types() if t["tid"] == r["instance_type"]), None)
        out["image"] = next((i for i in self.catalog.images(with_path=True) if i["id"] == r["image_id"]), None)
        out["domain_state"] = "unknown"
        if out["type"] is not None:   # create defines every API VM with twice its type as maximum
            out.update(max_vcpus=2 * out["type"]["cpu"], max_memory_mib=2 * out["type"]["ram"])
        try:
            d = self.sched.find(r["domain"])
            addr = self.fleet.address_of(d)
        except errors.CmsError as exc:
            log.info("VM %s: no live figures: %s", vmid, exc)
            return out
        out.update(domain_state=d.state, host=d.host, pmid=self.sched.pmid(d.host), vcpus=d.vcpus,
                   memory_mib=d.memory_mib, kernel_mib=d.meta.kernel_mib,
                   address=f"{addr[0]}:{addr[1]}" if addr else "")
        return out

    def console_tail(self, vmid: int, max_bytes: int = 16384) -> dict[str, Any]:
        """The end of the VM's serial console log, read-only. QEMU writes it on the VM's host
        (libvirt's <log file>), so it is readable here only when that host is this machine."""
        r = self._row(vmid)
        path = f"{SERIAL_LOG_DIR}/{r['domain']}-serial.log"
        uri = self.cfg.host(r["host"]).uri if r["host"] in {h.name for h in self.cfg.hosts} else ""
        out: dict[str, Any] = {"vmid": vmid, "host": r["host"], "path": path, "text": "", "size": 0}
        if not uri.startswith("qemu:///"):
            out["reason"] = f"the log is on host {r['host']} ({uri or 'not configured'}); cms reads it only on this machine"
            return out
        try:
            with open(path, "rb") as fh:
                fh.seek(0, 2)
                size = fh.tell()
                fh.seek(max(0, size - max_bytes))
                data = fh.read(max_bytes)
        except FileNotFoundError:
            out["reason"] = "no serial output yet"
            return out
        except OSError as exc:
            out["reason"] = f"cannot read {path}: {exc.strerror}"
            return out
        out.update(text=data.decode("utf-8", "replace"), size=size)
        return out

    def destroy(self, vmid: int) -> None:
        r = self._row(vmid)
        self.sched.remove(r["host"], r["domain"])      # idempotent; raises if the host is down
        self.tables.drop_vm(vmid)
        self.store.add_event("vm_destroy", f"VM {r['name']} ({r['domain']}) destroyed on {r['host']}",
                             subject=r["name"], data={"vmid": vmid})

    def migrate(self, vmid: int, pmid: int | None = None) -> dict[str, Any]:
        r = self._row(vmid)
        to = self.sched.migrate(r["domain"], None if pmid is None else host_of(self.sched, pmid))
        self.tables.vm_moved(r["domain"], to)
        self.store.add_event("vm_migrate", f"VM {r['name']} migrated from {r['host']} to {to}", subject=r["name"],
                             data={"vmid": vmid, "from": r["host"], "to": to})
        return self.get(vmid, full=True)

    def resize(self, vmid: int, vcpus: int | None, memory_mib: int | None) -> dict[str, Any]:
        r = self._row(vmid)
        d = self.sched.resize(r["domain"], vcpus, memory_mib)
        self.store.add_event("vm_resize", f"VM {r['name']} now {d.vcpus} vCPU / {d.memory_mib} MiB",
                             subject=r["name"], data={"vmid": vmid, "vcpus": d.vcpus, "memory_mib": d.memory_mib})
        return {**self.get(vmid, full=True), "vcpus": d.vcpus, "memory_mib": d.memory_mib}
