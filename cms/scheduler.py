"""The placement mechanism: host loads from libvirt, the spawn lock, the policy, the spawn.

Used by the REST API and the autoscaler alike::

    sched = Scheduler(cfg, fleet)            # store optional: opens cfg.state_db
    spawned = sched.spawn(name="cms-web-…", vcpus=1, memory_mib=512,
                          meta=OwnerMeta(group="web"))          # -> cms.virt.Spawned
    sched.migrate("cms-vm-7")                # destination chosen by the same policy
    sched.resize("cms-vm-7", vcpus=2, memory_mib=1024)

``spawn`` holds ``Fleet.spawn_lock()`` (a cross-process file lock) from reading the loads
to the define, so two gunicorn workers, or a worker and the autoscaler, never take the
same last slot. The round-robin cursor lives in the state database (table
``placement_state``), read and written under that lock, so all processes share one cursor.

A host whose capacity cannot be read is down: placement skips it, and it is not asked again
for ``DOWN_RETRY_S`` seconds, so an unreachable machine does not slow every request.
"""

from __future__ import annotations

import threading
import time
from typing import Callable

from cms import errors
from cms.config import Config
from cms.placement import Choice, HostLoad, Request, Rules, choose, fits, ram_room, vcpu_room
from cms.store import Store
from cms.virt import Fleet, OwnedDomain, OwnerMeta, Spawned

DOWN_RETRY_S = 10.0

SCHEMA = """
CREATE TABLE IF NOT EXISTS placement_state (key TEXT PRIMARY KEY, value INTEGER NOT NULL);
"""


class Scheduler:
    def __init__(self, cfg: Config, fleet: Fleet, store: Store | None = None, *,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.cfg = cfg
        self.fleet = fleet
        self.store = store or Store(cfg.state_db)
        self.store.ensure_schema(SCHEMA)
        self.clock = clock
        self.rules = Rules(cfg.placement.cpu_overcommit, cfg.placement.ram_reserve_mib)
        self._down_until: dict[str, float] = {}
        self._lock = threading.Lock()

    # -- hosts ------------------------------------------------------------------------------

    def pmid(self, host_name: str) -> int:
        """A host's pmid: its 1-based position in the configuration (pm_file order)."""
        for i, h in enumerate(self.cfg.hosts, 1):
            if h.name == host_name:
                return i
        return 0

    def host_name(self, pmid: int) -> str | None:
        return self.cfg.hosts[pmid - 1].name if 1 <= pmid <= len(self.cfg.hosts) else None

    def is_down(self, name: str) -> bool:
        with self._lock:
            return self._down_until.get(name, 0.0) > self.clock()

    def _mark_down(self, name: str) -> None:
        with self._lock:
            self._down_until[name] = self.clock() + DOWN_RETRY_S

    def host_state(self, name: str) -> tuple[HostLoad, list[OwnedDomain], object | None]:
        """(load, owned domains, Capacity or None when down) of one host."""
        hc = self.fleet.host(name)
        if self.is_down(name):
            return HostLoad(name, 0, 0, up=False), [], None
        try:
            cap = hc.capacity(self.cfg.libvirt.pool)
            doms = hc.owned_domains()
        except errors.VirtError:
            self._mark_down(name)
            return HostLoad(name, 0, 0, up=False), [], None
        load = HostLoad(name, cap.cpus, cap.memory_mib,
                        used_vcpus=sum(d.vcpus for d in doms), used_memory_mib=sum(d.memory_mib for d in doms),
                        up=True, disk_free_bytes=cap.pool_available_bytes or None)
        return load, doms, cap

    def loads(self) -> list[HostLoad]:
        return [self.host_state(h.name)[0] for h in self.cfg.hosts]

    # -- the round-robin cursor ---------------------------------------------------------------

    def _cursor(self) -> int:
        row = self.store.connect().execute("SELECT value FROM placement_state WHERE key='rr_cursor'").fetchone()
        return int(row[0]) if row else 0

    def _save_cursor(self, value: int) -> None:
        with self.store.write() as c:
            c.execute("INSERT INTO placement_state(key, value) VALUES('rr_cursor', ?) "
                      "ON CONFLICT(key) DO UPDATE SET value=excluded.value", (value,))

    # -- decisions + actions --------------------------------------------------------------------

    def choose(self, req: Request, exclude: str | None = None) -> Choice:
        loads = self.loads()
        if exclude is not None:
            loads = [HostLoad(h.name, h.cpus, h.memory_mib, h.used_vcpus, h.used_memory_mib, False)
                     if h.name == exclude else h for h in loads]
        return choose(self.cfg.placement.algorithm, loads, req, self.rules, self._cursor())

    def spawn(self, name: str, vcpus: int, memory_mib: int, meta: OwnerMeta, image: str = "",
              disk_bytes: int = 0, max_vcpus: int = 0, max_memory_mib: int = 0) -> Spawned:
        """Place and make one VM (all or nothing). PlacementError when no host has room.

        Placement charges `vcpus`/`memory_mib`; `max_*` only leave room for live vertical
        scaling (cms.virt's defaults: none). `image` defaults to the configured golden image.
        """
        with self.fleet.spawn_lock():
            choice = self.choose(Request(vcpus, memory_mib, disk_bytes))
            spawned = self.fleet.spawn(choice.host, name, vcpus=vcpus, memory_mib=memory_mib, meta=meta,
                                       image=image, max_vcpus=max_vcpus, max_memory_mib=max_memory_mib)
            if self.cfg.placement.algorithm == "round_robin":
                self._save_cursor(choice.next_cursor)
            return spawned

    def find(self, name: str) -> OwnedDomain:
        for h in self.cfg.hosts:
            if self.is_down(h.name):
                continue
            try:
                for d in self.fleet.host(h.name).owned_domains():
                    if d.name == name:
                        return d
            except errors.HostUnreachable:
                self._mark_down(h.name)
        raise errors.NotFound(f"no cms domain named {name!r} on any reachable host", obj=name)

    def migrate(self, name: str, dest: str | None = None) -> str:
        """Live-migrate a domain; the destination is chosen by the placement policy when not given.

        Returns the destination host's name. libvirt's refusal (e.g. the test driver, which
        cannot migrate, or no shared storage) comes back as a VirtError.
        """
        with self.fleet.spawn_lock():
            d = self.find(name)
            if dest is None:
                dest = self.choose(Request(d.vcpus, d.memory_mib), exclude=d.host).host
            elif dest == d.host:
                raise errors.AlreadyExists(f"{name} already runs on {dest}", dest, name)
            else:
                load = self.host_state(dest)[0]
                if not fits(load, Request(d.vcpus, d.memory_mib), self.rules):
                    raise errors.PlacementError(f"host {dest} has no room for {name} "
                                                f"({d.vcpus} vCPU / {d.memory_mib} MiB) or is down")
            to = self.cfg.host(dest)
            self.fleet.host(d.host).migrate(name, self.fleet.host(dest), address=to.migration_address,
                                            shared_storage=to.shared_storage,
                                            timeout_s=self.cfg.libvirt.migrate_timeout_s)
            return dest

    def resize(self, name: str, vcpus: int | None = None, memory_mib: int | None = None) -> OwnedDomain:
        """Vertical scaling in place: growth must fit the host under the placement rules."""
        with self.fleet.spawn_lock():
            d = self.find(name)
            h = self.fleet.host(d.host)
            max_vcpus, max_mib = h.limits(name)
            if (vcpus or 0) > max_vcpus or (memory_mib or 0) > max_mib:
                raise errors.BeyondMaximum(f"{name} was defined with at most {max_vcpus} vCPUs and {max_mib} MiB; "
                                           f"resize within that")
            grow = Request(max(0, (vcpus or d.vcpus) - d.vcpus), max(0, (memory_mib or d.memory_mib) - d.memory_mib))
            if grow.vcpus or grow.memory_mib:
                load = self.host_state(d.host)[0]
                if not load.up or vcpu_room(load, self.rules) < grow.vcpus or ram_room(load, self.rules) < grow.memory_mib:
                    raise errors.PlacementError(f"host {d.host} has no room to grow {name} by "
                                                f"{grow.vcpus} vCPU / {grow.memory_mib} MiB; migrate it first")
            if vcpus and vcpus != d.vcpus:
                h.set_vcpus(name, vcpus)
            if memory_mib and memory_mib != d.memory_mib:
                h.set_memory(name, memory_mib)
            return self.find(name)
