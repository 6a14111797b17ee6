"""What the API does, apart from HTTP: VMs, types, images, machines and groups over SQLite + cms.virt.

The responders in cms.api.app stay thin and call this. Errors are cms.errors exceptions
plus the three below; cms.api.app maps each to an HTTP status once.

Tables (added with Store.ensure_schema):
  api_vms     vmid ↔ name, libvirt domain, host, type, image, state (creating | active)
  api_types   the types_file, imported at start
  api_images  the image_file, imported at start (ids 100, 101, … in file order), and the images
              registered with POST /v1/images (api_images_added: ids after the highest)
  images_imported (cms.images) where each image's copy is in every host's image pool
  api_pms     the configured hosts (pmid = position in cms.toml = line order in pm_file)
Scale requests (POST /v1/groups/{name}/scale) go to the store's scale_requests table, which
the autoscaler consumes on its next tick.

The module is longer than the project's ~400 lines on purpose: ``Service`` is the one object
every responder calls (one method per API call, each a few lines over Store and Fleet), and
its parts (VMs, images, machines, groups) share the inventory import and the api_vms rows;
what has its own concern lives apart already (images' import in cms.images, history in
cms.api.history, the console in cms.api.console, placement in cms.scheduler).
"""

from __future__ import annotations

import logging
import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cms import errors, images, inventory
from cms.config import Config
from cms.placement import ram_room, vcpu_room
from cms.scheduler import Scheduler
from cms.store import Store
from cms.virt import Fleet, OwnerMeta
from cms.virt.fleet import SERIAL_LOG_DIR

# API VMs are defined with twice their type's vCPUs and memory as maximum, so
# POST /v1/vms/{id}/resize can grow them live up to that (placement charges the current size).

log = logging.getLogger("cms.api")
GIB = 1024 ** 3
VM_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")

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


class Invalid(errors.CmsError):
    """The request is malformed (400)."""


class Unknown(errors.CmsError):
    """The VM, type, image, machine or group asked for does not exist (404)."""


class Duplicate(errors.CmsError):
    """A VM of that name exists already (409)."""


class NotImported(errors.CmsError):
    """The image is listed but has no copy in cms's image storage, and cannot be imported (409)."""


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
    store = Store(cfg.state_db)
    fleet = Fleet(cfg)
    return Deps(cfg, store, fleet, Scheduler(cfg, fleet, store))


class Service:
    def __init__(self, deps: Deps) -> None:
        self.d = deps
        self.cfg, self.store, self.fleet, self.sched = deps.cfg, deps.store, deps.fleet, deps.scheduler
        self.store.ensure_schema(SCHEMA)
        self.image_store = images.ImageStore(self.cfg, self.store, self.fleet)
        self._import_inventory()
        self.reap_stale_creates(self.cfg.api.timeout)

    # -- inventory ------------------------------------------------------------------------------

    def _import_inventory(self) -> None:
        types, images = self.d.types, self.d.images
        img_file, types_file = self.d.files or inventory.default_paths(self.cfg)
        if types is None and types_file.exists():
            try:
                types = inventory.parse_types_file(types_file)
            except inventory.InventoryError as exc:
                log.error("%s; keeping the types already in the state database", exc)
        if images is None and img_file.exists():
            try:
                images = inventory.parse_image_file(img_file)
            except inventory.InventoryError as exc:
                log.error("%s; keeping the images already in the state database", exc)
        with self.store.write() as c:
            if types is not None:
                c.execute("DELETE FROM api_types")
                c.executemany("INSERT INTO api_types VALUES (?,?,?,?)", [(t.tid, t.cpu, t.ram, t.disk) for t in types])
            if images is not None:
                c.execute("DELETE FROM api_images")
                c.executemany("INSERT INTO api_images VALUES (?,?,?)", [(i.id, i.name, i.path) for i in images])
                # images registered through the API stay; one whose id the file has taken since
                # (it grew) moves past the highest id
                taken = {i.id for i in images}
                for r in c.execute("SELECT id, name, path FROM api_images_added ORDER BY id").fetchall():
                    iid = r["id"]
                    if iid in taken:
                        iid = max(taken | {r2[0] for r2 in c.execute("SELECT id FROM api_images_added")}) + 1
                        c.execute("UPDATE api_images_added SET id=? WHERE id=?", (iid, r["id"]))
                        log.warning("image %s (%s) registered as id %d is now id %d: image_file took its id",
                                    r["name"], r["path"], r["id"], iid)
                    c.execute("INSERT INTO api_images VALUES (?,?,?)", (iid, r["name"], r["path"]))
                    taken.add(iid)
            c.execute("DELETE FROM api_pms")
            c.executemany("INSERT INTO api_pms VALUES (?,?,?)",
                          [(i, h.name, h.uri) for i, h in enumerate(self.cfg.hosts, 1)])

    def types(self) -> list[dict[str, int]]:
        return [dict(r) for r in self.store.connect().execute("SELECT tid, cpu, ram, disk FROM api_types ORDER BY tid")]

    def type_of(self, tid: int) -> dict[str, int]:
        r = self.store.connect().execute("SELECT tid, cpu, ram, disk FROM api_types WHERE tid=?", (tid,)).fetchone()
        if r is None:
            raise Unknown(f"no instance type {tid}")
        return dict(r)

    def images(self, with_path: bool = False) -> list[dict[str, Any]]:
        """The spec's list ({id, name}); with_path (/v1) adds the source and its imported copy."""
        if not with_path:
            return [dict(r) for r in self.store.connect().execute("SELECT id, name FROM api_images ORDER BY id")]
        return [self._image_json(dict(r)) for r in self.store.connect().execute(
            "SELECT id, name, path FROM api_images ORDER BY id")]

    def _image_json(self, img: dict[str, Any]) -> dict[str, Any]:
        imp = self.image_store.copy_of(img["path"])
        return {**img, "imported": imp is not None, "sha256": imp and imp["sha256"], "format": imp and imp["format"],
                "size": imp and imp["size"], "copy": imp and imp["copy"]}

    def register_image(self, name: Any, path: Any) -> dict[str, Any]:
        """POST /v1/images: check the file, import it into every host's image pool, list it."""
        if not isinstance(name, str) or not VM_NAME_RE.match(name):
            raise Invalid(f"bad image name {name!r}: 1-64 letters, digits, '_', '.', '-', starting with a letter or digit")
        if not isinstance(path, str) or not path.startswith("/") or "\0" in path:
            raise Invalid(f"path must be the absolute path of an image file on the controller, not {path!r}")
        c = self.store.connect()
        for r in c.execute("SELECT id, name, path FROM api_images WHERE name=? OR path=?", (name, path)):
            what = f"named {name!r}" if r["name"] == name else f"at {path}"
            raise Duplicate(f"image {r['id']} {what} is registered already")
        try:
            imp = self.image_store.import_file(path, label=f"image {name}")
        except images.ImageError as exc:
            raise Invalid(str(exc)) from None
        try:
            with self.store.write() as w:
                iid = max(99, w.execute("SELECT COALESCE(MAX(id), 0) FROM api_images").fetchone()[0],
                          w.execute("SELECT COALESCE(MAX(id), 0) FROM api_images_added").fetchone()[0]) + 1
                w.execute("INSERT INTO api_images_added VALUES (?,?,?,?)", (iid, name, path, time.time()))
                w.execute("INSERT INTO api_images VALUES (?,?,?)", (iid, name, path))
        except Exception as exc:
            if "UNIQUE" in str(exc):
                raise Duplicate(f"an image named {name!r} or at {path} was registered meanwhile") from None
            raise
        self.store.add_event("image_register", f"image {iid} {name} ({path}) imported as {imp.copy}"
                             + (f", copied to {', '.join(imp.uploaded)}" if imp.uploaded else ", already on every host"),
                             subject=name, data={"id": iid, "sha256": imp.sha256, "copy": imp.copy,
                                                 "uploaded": list(imp.uploaded)})
        return self._image_json({"id": iid, "name": name, "path": path})

    def image(self, image_id: int | None) -> dict[str, Any]:
        c = self.store.connect()
        if image_id is None:
            r = c.execute("SELECT id, name, path FROM api_images ORDER BY id LIMIT 1").fetchone()
            if r is None:
                raise Unknown("no image is configured (image_file lists none)")
        else:
            r = c.execute("SELECT id, name, path FROM api_images WHERE id=?", (image_id,)).fetchone()
            if r is None:
                raise Unknown(f"no image {image_id}")
        return dict(r)

    # -- VMs ------------------------------------------------------------------------------------

    def _vm_json(self, r: Any, full: bool = False) -> dict[str, Any]:
        out = {"vmid": r["vmid"], "name": r["name"], "instance_type": r["instance_type"],
               "pmid": self.sched.pmid(r["host"])}
        if full:
            out.update(host=r["host"], domain=r["domain"], image_id=r["image_id"], state=r["state"],
                       created=r["created"])
        return out

    def _row(self, vmid: int) -> Any:
        r = self.store.connect().execute("SELECT * FROM api_vms WHERE vmid=? AND state='active'", (vmid,)).fetchone()
        if r is None:
            raise Unknown(f"no VM {vmid}")
        return r

    def create_vm(self, name: str, tid: int, image_id: int | None = None, pmid: int | None = None) -> dict[str, Any]:
        """Make a VM; on the host placement picks, or on machine `pmid` when given (409 when it
        has no room: placement's rules still apply there)."""
        if not isinstance(name, str) or not VM_NAME_RE.match(name):
            raise Invalid(f"bad VM name {name!r}: 1-64 letters, digits, '_', '.', '-', starting with a letter or digit")
        t = self.type_of(tid)
        img = self.image(image_id)
        avoid: frozenset[str] = frozenset()
        if pmid is not None:
            only = self.sched.host_name(pmid)
            if only is None:
                raise Unknown(f"no machine {pmid}")
            avoid = frozenset(h.name for h in self.cfg.hosts if h.name != only)
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
            with self.store.write() as c:
                vmid = int(c.execute("INSERT INTO api_vms (name, instance_type, image_id, state, created) "
                                     "VALUES (?,?,?, 'creating', ?)", (name, tid, img["id"], time.time())).lastrowid)
        except Exception as exc:
            if "UNIQUE" in str(exc):
                raise Duplicate(f"a VM named {name!r} exists already") from None
            raise
        domain = f"cms-vm-{vmid}"
        try:
            sp = self.sched.spawn(name=domain, vcpus=t["cpu"], memory_mib=t["ram"],
                                  meta=OwnerMeta(role="vm", vmid=vmid, instance_type=tid, image=imp["copy"]),
                                  image=imp["copy"], disk_bytes=t["disk"] * GIB,
                                  max_vcpus=2 * t["cpu"], max_memory_mib=2 * t["ram"], avoid=avoid)
        except BaseException as exc:
            with self.store.write() as c:
                c.execute("DELETE FROM api_vms WHERE vmid=?", (vmid,))
            if isinstance(exc, errors.CmsError):
                self.store.add_event("vm_create_failed", str(exc), subject=name, data={"type": tid})
            raise
        with self.store.write() as c:
            c.execute("UPDATE api_vms SET domain=?, host=?, state='active' WHERE vmid=?", (domain, sp.host, vmid))
        self.store.add_event("vm_create", f"VM {name} ({domain}) created on {sp.host}", subject=name,
                             data={"vmid": vmid, "host": sp.host, "type": tid, "image": img["id"]})
        return self.vm(vmid, full=True)

    def reap_stale_creates(self, older_than_s: float) -> list[int]:
        """Finish creates that a dead worker left half done.

        A create reserves its row ('creating') before it touches libvirt and marks it
        'active' at the end, so a worker killed in between (gunicorn's api.timeout, a crash,
        a restart) leaves the row holding the name, and perhaps a volume or a domain
        cms-vm-N. No live call can be older than api.timeout, so a 'creating' row older than
        that is removed with whatever exists of its domain on every host. A row stays while
        any host is unreachable, since its domain may be there. Runs when a worker starts.
        """
        rows = self.store.connect().execute(
            "SELECT vmid, name, host FROM api_vms WHERE state='creating' AND created < ?",
            (time.time() - older_than_s,)).fetchall()
        reaped = []
        for r in rows:
            domain = f"cms-vm-{r['vmid']}"
            try:
                for hname in self.fleet.hosts:
                    self.fleet.remove(hname, domain)          # idempotent: absent parts are skipped
            except errors.CmsError as exc:
                log.warning("half-made VM %s (%s) stays for now: %s", r["name"], domain, exc)
                continue
            with self.store.write() as c:
                c.execute("DELETE FROM api_vms WHERE vmid=? AND state='creating'", (r["vmid"],))
            self.store.add_event("vm_create_reaped", f"VM {r['name']} ({domain}) was left half made by a "
                                 "worker that died; removed", subject=r["name"], data={"vmid": r["vmid"]})
            reaped.append(r["vmid"])
        return reaped

    def vm(self, vmid: int, full: bool = False) -> dict[str, Any]:
        return self._vm_json(self._row(vmid), full)

    def vm_detail(self, vmid: int) -> dict[str, Any]:
        """GET /v1/vms/{vmid}: the stored row plus what libvirt says now (state, size, the most
        a resize may reach, where its service answers), its type and its image. When the host
        does not answer, the live part is left out and domain_state says "unknown"."""
        r = self._row(vmid)
        out = self._vm_json(r, True)
        out["type"] = next((t for t in self.types() if t["tid"] == r["instance_type"]), None)
        out["image"] = next((i for i in self.images(with_path=True) if i["id"] == r["image_id"]), None)
        out["domain_state"] = "unknown"
        if out["type"] is not None:   # create_vm defines every API VM with twice its type as maximum
            out.update(max_vcpus=2 * out["type"]["cpu"], max_memory_mib=2 * out["type"]["ram"])
        try:
            d = self.sched.find(r["domain"])
            addr = self.fleet.address_of(d)
        except errors.CmsError as exc:
            log.info("VM %s: no live figures: %s", vmid, exc)
            return out
        out.update(domain_state=d.state, host=d.host, pmid=self.sched.pmid(d.host), vcpus=d.vcpus,
                   memory_mib=d.memory_mib, address=f"{addr[0]}:{addr[1]}" if addr else "")
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

    def vms(self, host: str | None = None) -> list[dict[str, Any]]:
        q, args = "SELECT * FROM api_vms WHERE state='active'", []
        if host is not None:
            q += " AND host=?"
            args.append(host)
        return [self._vm_json(r, True) for r in self.store.connect().execute(q + " ORDER BY vmid", args)]

    def destroy_vm(self, vmid: int) -> None:
        r = self._row(vmid)
        self.fleet.remove(r["host"], r["domain"])      # idempotent; raises if the host is down
        with self.store.write() as c:
            c.execute("DELETE FROM api_vms WHERE vmid=?", (vmid,))
        self.store.add_event("vm_destroy", f"VM {r['name']} ({r['domain']}) destroyed on {r['host']}",
                             subject=r["name"], data={"vmid": vmid})

    def migrate_vm(self, vmid: int, pmid: int | None = None) -> dict[str, Any]:
        r = self._row(vmid)
        dest = None
        if pmid is not None:
            dest = self.sched.host_name(pmid)
            if dest is None:
                raise Unknown(f"no machine {pmid}")
        to = self.sched.migrate(r["domain"], dest)
        with self.store.write() as c:
            c.execute("UPDATE api_vms SET host=? WHERE vmid=?", (to, vmid))
        self.store.add_event("vm_migrate", f"VM {r['name']} migrated from {r['host']} to {to}", subject=r["name"],
                             data={"vmid": vmid, "from": r["host"], "to": to})
        return self.vm(vmid, full=True)

    def resize_vm(self, vmid: int, vcpus: int | None, memory_mib: int | None) -> dict[str, Any]:
        r = self._row(vmid)
        d = self.sched.resize(r["domain"], vcpus, memory_mib)
        self.store.add_event("vm_resize", f"VM {r['name']} now {d.vcpus} vCPU / {d.memory_mib} MiB",
                             subject=r["name"], data={"vmid": vmid, "vcpus": d.vcpus, "memory_mib": d.memory_mib})
        return {**self.vm(vmid, full=True), "vcpus": d.vcpus, "memory_mib": d.memory_mib}

    # -- machines -------------------------------------------------------------------------------

    def pmids(self) -> list[int]:
        return list(range(1, len(self.cfg.hosts) + 1))

    def pm(self, pmid: int, full: bool = False) -> dict[str, Any]:
        name = self.sched.host_name(pmid)
        if name is None:
            raise Unknown(f"no machine {pmid}")
        load, _doms, cap = self.sched.host_state(name)
        nvms = self.store.connect().execute("SELECT COUNT(*) FROM api_vms WHERE host=? AND state='active'",
                                            (name,)).fetchone()[0]
        if cap is None:
            capacity = {"cpu": 0, "ram": 0, "disk": 0}
            free = {"cpu": 0, "ram": 0, "disk": 0}
        else:
            capacity = {"cpu": cap.cpus, "ram": cap.memory_mib, "disk": cap.pool_capacity_bytes // GIB}
            free = {"cpu": max(0, vcpu_room(load, self.sched.rules)), "ram": max(0, ram_room(load, self.sched.rules)),
                    "disk": cap.pool_available_bytes // GIB}
        out: dict[str, Any] = {"pmid": pmid, "capacity": capacity, "free": free, "vms": nvms}
        if full:
            out.update(name=name, uri=self.cfg.hosts[pmid - 1].uri, up=load.up,
                       used={"vcpus": load.used_vcpus, "ram": load.used_memory_mib})
            out.update(self._host_figures(name, load, _doms, cap))
        return out

    def _host_figures(self, name: str, load: Any, doms: list[Any], cap: Any) -> dict[str, Any]:
        """What the console shows for a host, each figure saying what it counts.

        ``vms`` (above, the spec's figure) counts API VMs only; ``domains`` counts every domain
        cms owns there by kind. ``vcpus`` sets the vCPUs given out against the physical CPUs
        and the overcommit placement allows. ``cpu`` is the share of the host's CPUs its cms
        domains used at the last sample (the daemon's host row, else the sum of its per-domain
        samples), with that sample's time; null when nothing sampled it in the last minute.
        """
        kinds = {"vm": 0, "replica": 0, "warm": 0}
        for d in doms:
            kinds[_kind(d)] = kinds.get(_kind(d), 0) + 1
        cpus = (load.cpus or cap.cpus) if cap is not None else 0    # hosts[].cpus when set, as placement counts
        over = self.sched.rules.cpu_overcommit
        figures: dict[str, Any] = {
            "domains": {**kinds, "total": len(doms)},
            "vcpus": {"used": load.used_vcpus, "cpus": cpus, "overcommit": over, "limit": int(cpus * over),
                      "ratio": round(load.used_vcpus / cpus, 3) if cpus else None},
            "memory_mib": {"total": cap.memory_mib if cap else 0, "free": cap.free_memory_mib if cap else 0,
                           "given": load.used_memory_mib, "reserve": self.sched.rules.ram_reserve_mib},
            "disk_bytes": {"total": cap.pool_capacity_bytes if cap else 0,
                           "free": cap.pool_available_bytes if cap else 0},
            "cpu": {"utilization": None, "ts": None, "source": None, "node": None},
        }
        since = time.time() - 60
        hs = self.store.latest_host_sample(name, since)
        if hs is not None and hs.cpu is not None:
            figures["cpu"] = {"utilization": round(hs.cpu, 4), "ts": hs.ts, "source": "host",
                              "node": None if hs.node_cpu is None else round(hs.node_cpu, 4)}
        elif cpus:
            rows = self.store.connect().execute(
                "SELECT ts, SUM(cpu * vcpus) AS used FROM samples WHERE host=? AND ts>=? "
                "GROUP BY ts ORDER BY ts DESC LIMIT 1", (name, since)).fetchone()
            if rows is not None and rows["used"] is not None:
                figures["cpu"] = {"utilization": round(rows["used"] / cpus, 4), "ts": rows["ts"], "source": "domains",
                                  "node": None}
        return figures

    def pm_vms(self, pmid: int) -> list[int]:
        name = self.sched.host_name(pmid)
        if name is None:
            raise Unknown(f"no machine {pmid}")
        return [r[0] for r in self.store.connect().execute(
            "SELECT vmid FROM api_vms WHERE host=? AND state='active' ORDER BY vmid", (name,))]

    # -- replica groups -------------------------------------------------------------------------

    def group(self, name: str) -> dict[str, Any]:
        gc = self.cfg.groups.get(name)
        if gc is None:
            raise Unknown(f"no group {name!r}")
        since = time.time() - 120
        cpu: dict[str, list[float]] = {}
        for s in self.store.samples(group=name, since=since):
            if s.cpu is not None:
                cpu.setdefault(s.domain, []).append(round(s.cpu, 4))
        # Two states per replica, under two names: the autoscaler's lifecycle state (starting,
        # ready, draining, parked, ... as it recorded it in the replicas table) and libvirt's
        # domain state (running, paused, shutoff, ...). A warm-pool member is in the list too,
        # with warm = true; "unknown": the autoscaler has not recorded it (yet).
        lifecycle = {r.name: r for r in self.store.replicas(name)}
        replicas = []
        for d in self.fleet.owned(name):
            if d.meta.role != "replica":
                continue
            r = lifecycle.get(d.name)
            replicas.append({"name": d.name, "host": d.host, "pmid": self.sched.pmid(d.host),
                             "replica_state": r.state if r else "unknown", "domain_state": d.state,
                             "warm": d.meta.warm, "vcpus": d.vcpus, "memory_mib": d.memory_mib,
                             "created": d.meta.created, "cpu": cpu.get(d.name, [])[-60:]})
        ov = self.store.scale_requests().get(name)
        policy = {"name": gc.policy, "cooldown_s": gc.cooldown_s, "warmup_s": gc.warmup_s}
        policy.update(vars(gc.threshold) if gc.policy == "threshold" else vars(gc.target))
        return {"name": name, "min": gc.min, "max": gc.max, "vcpus": gc.vcpus, "memory_mib": gc.memory_mib,
                "policy": policy, "replicas": replicas, "warm_pool": vars(gc.warm_pool),
                "desired_override": None if ov is None else {"replicas": ov[0], "ts": ov[1]}}

    def groups(self) -> list[dict[str, Any]]:
        return [self.group(g) for g in self.cfg.groups]

    def scale_group(self, name: str, replicas: Any) -> dict[str, Any]:
        gc = self.cfg.groups.get(name)
        if gc is None:
            raise Unknown(f"no group {name!r}")
        if isinstance(replicas, bool) or not isinstance(replicas, int) or not gc.min <= replicas <= gc.max:
            raise Invalid(f"replicas must be an integer from {gc.min} to {gc.max} (the group's min and max)")
        self.store.request_scale(name, replicas)
        eid = self.store.add_event("scale_request", f"{replicas} replicas of {name} asked through the API; "
                                   "the autoscaler applies it on its next tick", group=name, data={"replicas": replicas})
        return {"group": name, "replicas": replicas, "event_id": eid, "pending": True}

    def events(self, since_id: int, limit: int, group: str | None = None,
               newest_first: bool = False, kinds: list[str] | None = None,
               before_id: int | None = None) -> list[dict[str, Any]]:
        return [{"id": e.id, "ts": e.ts, "kind": e.kind, "group": e.group, "subject": e.subject,
                 "message": e.message, "data": e.data}
                for e in self.store.events(since_id=since_id, group=group, limit=limit, newest_first=newest_first,
                                           kinds=kinds, before_id=before_id)]


def _kind(d: Any) -> str:
    """An owned domain's kind for the host figures: an API VM, a serving replica, or a warm one."""
    if d.meta.role == "vm":
        return "vm"
    return "warm" if d.meta.warm else "replica"
