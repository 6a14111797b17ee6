"""The placement mechanism, and the one way in to the fleet for whoever changes it.

Used by the REST API and the autoscaler alike::

    sched = Scheduler(cfg, fleet)            # store optional: opens cfg.state_db
    spawned = sched.spawn(name="cms-web-…", vcpus=1, memory_mib=512,
                          meta=OwnerMeta(group="web"))          # -> cms.virt.Spawned
    sched.remove("local", "cms-web-…")
    sched.migrate("cms-vm-7")                # destination chosen by the same policy
    sched.resize("cms-vm-7", vcpus=2, memory_mib=1024)

``spawn`` takes the spawn lock (``Scheduler.lock``, a cross-process file lock) ONCE, from
reading the loads to the define, so two gunicorn workers, or a worker and the autoscaler,
never take the same last slot or port. The lock is not re-entrant: nothing below the
scheduler takes it. The round-robin cursor lives in the state database (table
``placement_state``), read and written under that lock, so all processes share one cursor.

A caller that has just listed the fleet (the autoscaler's tick) passes that ``Listing``:
a spawn then reads host loads and taken ports from it and lists no domain again.

Placement asks every host at once, each within its ``hosts[].timeout_s`` (Fleet.per_host); one
that does not answer is down: skipped, and not asked again for ``DOWN_RETRY_S`` seconds.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from dataclasses import replace
from typing import Any, Callable, Iterator

import sqlalchemy as sa

from cms import db, errors, runlock
from cms.config import Config
from cms.db import schema
from cms.placement import (Choice, HostLoad, Request, Rules, charge_of, choose, fits, held_memory_mib, ram_room,
                           vcpu_room)
from cms.store import Store
from cms.virt import Capacity, Fleet, Listing, OwnedDomain, OwnerMeta, Spawned, vm_share_mib

log = logging.getLogger(__name__)

DOWN_RETRY_S = 10.0


def held_mib(d: OwnedDomain, now: float) -> int:
    """The RAM a listed domain holds on its host (placement.held_memory_mib; `now`: epoch s),
    its target the size in its owner metadata, reporting once libvirt has balloon.last-update;
    plus the guest kernel's share it was given above that (<kernel-mib>)."""
    return held_memory_mib(d.memory_mib, d.meta.memory_mib, bool(d.stats.get("balloon.last-update")),
                           now - d.meta.created) + d.meta.kernel_mib


class Scheduler:
    def __init__(self, cfg: Config, fleet: Fleet, store: Store | None = None, *,
                 clock: Callable[[], float] = time.monotonic, lease: Any = None) -> None:
        self.cfg = cfg
        # the leader's lease (cms.coordination): every change to the fleet checks it first and
        # stamps its term into the metadata it writes; None: a controller that always may
        # (cms-api, the CLI, a single controller's autoscaler gets its SoleLeader)
        self.lease = lease
        self.fleet = fleet
        self.store = store or Store.of(cfg)
        self.clock = clock
        self.rules = Rules(cfg.placement.cpu_overcommit, cfg.placement.ram_reserve_mib)
        self._down_until: dict[str, float] = {}
        self._lock = threading.Lock()
        self._own: list[tuple[float, OwnedDomain]] = []   # VMs made with a listing, and when

    # -- the lease: the guard before every change ----------------------------------------------

    def guard(self, op: str) -> None:
        """Raise NotLeader unless this controller may change the fleet now (cms.leadership: the
        leader, within half its lease's TTL of its last renewal). Called before each mutating
        libvirt call, so a deposed leader's action stops at its next step."""
        if self.lease is not None:
            self.lease.check(op)

    def stamped(self, meta: OwnerMeta) -> OwnerMeta:
        """``meta`` with the term it is written under."""
        term = getattr(self.lease, "term", 0)
        return meta if meta.term == term else OwnerMeta(**{**meta.__dict__, "term": term})

    # -- the spawn lock ------------------------------------------------------------------------

    @contextlib.contextmanager
    def lock(self) -> Iterator[None]:
        """Serialise "read the loads, choose a host and a port, define" across processes and
        threads: the API's workers and the autoscaler may spawn at once, and two requests never
        take the same last slot or port. Not re-entrant: each public method here takes it once."""
        with runlock.held("spawn"):
            yield

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

    def host_state(self, name: str, listing: Listing | None = None
                   ) -> tuple[HostLoad, list[OwnedDomain], Capacity | None]:
        """(load, owned domains, Capacity or None when down) of one host; its domains from
        `listing` when it covers the host, else from one listing call."""
        return self._states([name], listing)[name]

    def _states(self, names: list[str], listing: Listing | None
                ) -> dict[str, tuple[HostLoad, list[OwnedDomain], Capacity | None]]:
        """host_state of each of ``names``, asked at once, each within its hosts[].timeout_s
        (Fleet.per_host); one that does not answer is down, not asked again for DOWN_RETRY_S."""
        ask = [n for n in names if not (self.is_down(n) or (listing is not None and n in listing.down))]

        def read(h: Any) -> tuple[Capacity, list[OwnedDomain]]:
            doms = listing.on(h.name) if listing is not None else None
            return h.capacity(self.cfg.libvirt.pool), doms if doms is not None else h.stats.owned_domains()

        got, _silent = self.fleet.per_host(read, ask)
        out, now = {}, time.time()
        for name in names:
            if name not in got:
                if name in ask:
                    self._mark_down(name)
                out[name] = (HostLoad(name, 0, 0, up=False), [], None)
                continue
            cap, doms = got[name]
            charges = [charge_of(d.state, d.meta.warm, d.vcpus, held_mib(d, now)) for d in doms]
            out[name] = (HostLoad(name, self.fleet.host_cpus(name, cap), cap.memory_mib,
                                  used_vcpus=sum(v for v, _m in charges), used_memory_mib=sum(m for _v, m in charges),
                                  up=True, disk_free_bytes=cap.pool_available_bytes or None), doms, cap)
        return out

    def loads(self, listing: Listing | None = None, skip: frozenset[str] = frozenset()) -> list[HostLoad]:
        """Every host's load, all asked at once; the ``skip`` hosts down without asking them."""
        states = self._states([h.name for h in self.cfg.hosts if h.name not in skip], listing)
        return [states[h.name][0] if h.name in states else HostLoad(h.name, 0, 0, up=False) for h in self.cfg.hosts]

    def host_cpus(self, name: str) -> int:
        """A host's CPUs as cms.virt.Fleet.host_cpus counts them; 0 while libvirt cannot tell."""
        try:
            return self.fleet.host_cpus(name)
        except errors.VirtError:
            return 0

    def list_domains(self, group: str | None = None) -> Listing:
        """What the fleet runs now (one bulk call per host); see cms.virt.Fleet.list_domains."""
        return self.fleet.list_domains(group)

    # -- the round-robin cursor ---------------------------------------------------------------

    def _cursor(self) -> int:
        ps = schema.placement_state
        return int(self.store.scalar(sa.select(ps.c.value).where(ps.c.key == "rr_cursor")) or 0)

    def _save_cursor(self, value: int) -> None:
        with self.store.write() as c:
            db.upsert(c, schema.placement_state, [{"key": "rr_cursor", "value": value}], ["key"])

    # -- decisions + actions --------------------------------------------------------------------

    def choose(self, req: Request, avoid: frozenset[str] = frozenset(), listing: Listing | None = None) -> Choice:
        """Where placement puts a VM of that size now; `avoid`: hosts not to place on this time
        (counted as down). PlacementError when no other host has room."""
        loads = self.loads(listing, skip=avoid)
        return choose(self.cfg.placement.algorithm, loads, req, self.rules, self._cursor())

    def spawn(self, name: str, vcpus: int, memory_mib: int, meta: OwnerMeta, image: str = "",
              disk_bytes: int = 0, max_vcpus: int = 0, max_memory_mib: int = 0,
              listing: Listing | None = None, avoid: frozenset[str] = frozenset(), from_disk: str = "") -> Spawned:
        """Place and make one VM (all or nothing). PlacementError when no host has room.
        Placement charges `vcpus`/`memory_mib` and the guest kernel's share (cms.virt.vm_share_mib);
        `max_*` only leave room for live vertical scaling (cms.virt's defaults: none). `image`
        defaults to the golden image. `listing`: the caller's fresh listing of the fleet, so the
        spawn lists no domain again (the VMs this scheduler made since that listing are added).
        `avoid`: hosts not to place on this time (a warm refill keeps to one boot per host).
        `from_disk`: no clone, the VM boots from this disk (an API VM whose host was fenced)."""
        meta = self.stamped(meta)
        with self.lock():
            self.guard(f"spawn {name}")
            listing = self._with_own_spawns(listing)
            share = vm_share_mib(vcpus, memory_mib, max_vcpus, max_memory_mib)   # what Fleet._spec adds
            choice = self.choose(Request(vcpus, memory_mib + share, disk_bytes), avoid, listing)
            size = {"vcpus": vcpus, "memory_mib": memory_mib, "meta": meta, "max_vcpus": max_vcpus,
                    "max_memory_mib": max_memory_mib, "listing": listing}
            spawned = self.fleet.restart_on(choice.host, name, from_disk, **size) if from_disk else \
                self.fleet.build_on(choice.host, name, image=image, **size)
            if self.cfg.placement.algorithm == "round_robin":
                self._save_cursor(choice.next_cursor)
            if listing is not None:
                meta = OwnerMeta(**{**meta.__dict__, "port": spawned.port, "created": spawned.created,
                                    "memory_mib": memory_mib, "kernel_mib": share})
                self._own.append((time.monotonic(), OwnedDomain(spawned.host, name, spawned.uuid, "running",
                                                                vcpus, memory_mib, meta)))
            return spawned

    def start(self, host: str, name: str) -> None:
        """Start a defined VM on its host (a VM a power cut left shut off)."""
        self.guard(f"start {name}")
        self.fleet.guest(host, name).start()

    def _with_own_spawns(self, listing: Listing | None) -> Listing | None:
        """The listing plus the VMs this scheduler made after it was read (a tick may spawn twice)."""
        now = time.monotonic()
        self._own = [(at, d) for at, d in self._own if now - at < 300]
        if listing is None:
            return None
        extra = [d for at, d in self._own if at >= listing.at]
        if not extra:
            return listing
        domains = {h: list(ds) for h, ds in listing.domains.items()}
        for d in extra:
            if d.host in domains and all(x.name != d.name for x in domains[d.host]):
                domains[d.host].append(d)
        return Listing(domains, listing.down, listing.at)

    def remove(self, host: str, name: str, graceful_timeout: float = 0.0,
               wait: Callable[[float], Any] = time.sleep, keep_disk: bool = False) -> None:
        """Remove a VM and its disk (idempotent); a graceful shutdown first when a timeout is given.
        ``keep_disk``: the disk stays (what a fenced host holds of a VM restarted elsewhere)."""
        self.guard(f"remove {name}")
        self.fleet.remove(host, name, graceful_timeout, wait, keep_disk)

    def remove_everywhere(self, name: str) -> None:
        """Remove a VM of that name, and its disk, from every host (idempotent); HostUnreachable
        when a host does not answer, as the VM may be there (a create a dead worker left half made)."""
        self.guard(f"remove {name}")
        for host in self.fleet.hosts:
            self.fleet.remove(host, name)

    # -- the warm pool's levers (cms.virt.Guest does the libvirt part) ------------------------

    def park(self, host: str, name: str, mode: str, meta: OwnerMeta, graceful_timeout: float = 0.0,
             wait: Callable[[float], Any] = time.sleep) -> None:
        """Tag a running replica warm in its metadata, then park it: paused (suspend), saved
        (managed save: RAM to disk) or stopped (shut down, gracefully within the timeout)."""
        self.guard(f"park {name}")
        g = self.fleet.guest(host, name)
        g.set_owner(self.stamped(meta))
        if mode == "paused":
            g.suspend()
        elif mode == "saved":
            g.managed_save()
        elif mode == "stopped":
            g.power_off(graceful_timeout, wait)
        else:
            raise ValueError(f"unknown park mode {mode!r}")

    def unpark(self, host: str, name: str, mode: str) -> None:
        """Take a parked replica out of the pool: resume it, or start it (a saved one restores its RAM)."""
        self.guard(f"unpark {name}")
        g = self.fleet.guest(host, name)
        if mode == "paused":
            g.resume()
        else:
            g.start()

    def retag(self, host: str, name: str, meta: OwnerMeta) -> None:
        """Rewrite a replica's owner metadata (a warm replica taken into service is tagged serving)."""
        self.guard(f"retag {name}")
        self.fleet.guest(host, name).set_owner(self.stamped(meta))

    def lease_address(self, host: str, name: str) -> str | None:
        """A replica's DHCP address on a libvirt network (network.mode = libvirt), once it has one."""
        return self.fleet.guest(host, name).lease_address()

    def remove_orphan_volumes(self, prefixes: tuple[str, ...], keep: set[str], dry_run: bool = False
                              ) -> list[tuple[str, str]]:
        """Delete volumes named ``PREFIX….qcow2`` whose domain is neither in `keep` nor defined;
        (host, volume) of each found (deleted unless `dry_run`). Under the spawn lock, which a
        spawn holds from its volume to its define: no half-made VM is taken for an orphan."""
        pool = self.cfg.libvirt.pool
        found: list[tuple[str, str]] = []
        with self.lock():
            if not dry_run:
                self.guard("remove orphan volumes")
            for hname, h in self.fleet.hosts.items():
                try:
                    vols = h.storage.list_volumes(pool)
                except errors.VirtError:
                    continue
                for v in vols:
                    dom = v[:-len(".qcow2")] if v.endswith(".qcow2") else ""
                    if not dom.startswith(prefixes) or dom in keep:
                        continue
                    try:
                        if h.exists(dom):
                            continue
                        found.append((hname, v))
                        if not dry_run:
                            h.storage.delete_volume(pool, v)
                    except errors.VirtError as exc:
                        log.warning("could not clean volume %s/%s on %s: %s", pool, v, hname, exc)
        return found

    def find(self, name: str) -> OwnedDomain:
        for h in self.cfg.hosts:
            if self.is_down(h.name):
                continue
            try:
                for d in self.fleet.host(h.name).stats.owned_domains():
                    if d.name == name:
                        return d
            except errors.HostUnreachable:
                self._mark_down(h.name)
        raise errors.NotFound(f"no cms domain named {name!r} on any reachable host", obj=name)

    def migrate(self, name: str, dest: str | None = None, *, listing: Listing | None = None,
                on_switchover: Callable[[str, str, int], None] | None = None) -> str:
        """Live-migrate a domain to `dest`, or where placement chooses; returns the destination.
        libvirt's refusal (the test driver cannot migrate; no shared storage) is a VirtError and
        the domain stays. With user networking its port forward moves to the destination's
        forward address, on a port free there. `on_switchover(dest, address, port)` is called
        once with where it then answers: when the source pauses it for the switch-over (before
        the old address goes away), or after the migration if that moment was missed; a caller
        that heard it and then gets an error knows the domain stayed where it was after all."""
        with self.lock():
            d = self.find(name)
            if dest is None:
                dest = self.choose(Request(d.vcpus, d.given_mib), avoid=frozenset({d.host})).host
            elif dest == d.host:
                raise errors.AlreadyExists(f"{name} already runs on {dest}", dest, name)
            else:
                load = self.host_state(dest)[0]
                if not fits(load, Request(d.vcpus, d.given_mib), self.rules):
                    raise errors.PlacementError(f"host {dest} has no room for {name} "
                                                f"({d.vcpus} vCPU / {d.memory_mib} MiB) or is down")
            to = self.cfg.host(dest)
            forward = self.fleet.new_forward(dest, listing) if self.cfg.network.mode == "user" else None
            where = forward or ("", d.meta.guest_port)
            told: list[bool] = []

            def switched() -> None:
                if on_switchover is not None and not told:
                    told.append(True)
                    on_switchover(dest, *where)

            self.guard(f"migrate {name}")
            self.fleet.host(d.host).migration.migrate(
                name, self.fleet.host(dest).calls, address=to.migration_address, shared_storage=to.shared_storage,
                timeout_s=self.cfg.libvirt.migrate_timeout_s, forward=forward,
                on_paused=switched if on_switchover else None,
                bandwidth_mib_s=self.cfg.libvirt.migrate_bandwidth_mib_s)
            switched()
            return dest

    def resize(self, name: str, vcpus: int | None = None, memory_mib: int | None = None) -> OwnedDomain:
        """Vertical scaling in place: growth must fit the host under the placement rules. Memory
        moves through the balloon to size + kernel share; the size (type's terms) is recorded as its target."""
        with self.lock():
            d = self.find(name)
            g = self.fleet.guest(d.host, name)
            max_vcpus, defined_mib = g.limits()
            max_mib = defined_mib - d.meta.kernel_mib          # in the type's terms
            if (vcpus or 0) > max_vcpus or (memory_mib or 0) > max_mib:
                raise errors.BeyondMaximum(f"{name} was defined with at most {max_vcpus} vCPUs and {max_mib} MiB; "
                                           f"resize within that")
            held = held_mib(d, time.time()) - d.meta.kernel_mib
            grow = Request(max(0, (vcpus or d.vcpus) - d.vcpus), max(0, (memory_mib or held) - held))
            if grow.vcpus or grow.memory_mib:
                load = self.host_state(d.host)[0]
                if not load.up or vcpu_room(load, self.rules) < grow.vcpus or ram_room(load, self.rules) < grow.memory_mib:
                    raise errors.PlacementError(f"host {d.host} has no room to grow {name} by "
                                                f"{grow.vcpus} vCPU / {grow.memory_mib} MiB; migrate it first")
            if (vcpus and vcpus != d.vcpus) or (memory_mib and memory_mib != held):
                self.guard(f"resize {name}")
            if vcpus and vcpus != d.vcpus:
                g.set_vcpus(vcpus)
            if memory_mib and memory_mib != held:
                g.set_memory(memory_mib + d.meta.kernel_mib)
                g.set_owner(self.stamped(OwnerMeta(**{**d.meta.__dict__, "memory_mib": memory_mib})))
                # libvirt's figure follows the balloon a second or so behind: answer the size set
                return replace(self.find(name), memory_mib=memory_mib)
            return self.find(name)

    # -- reads the autoscaler needs, so it never reaches through to the fleet ------------------

    def host_names(self) -> tuple[str, ...]:
        """The configured hosts, in configuration order."""
        return tuple(self.fleet.hosts)

    def forward_address(self, host: str) -> str:
        """Where a replica on ``host`` answers with user networking (its port forward's address)."""
        return self.fleet.forward_address(host)
