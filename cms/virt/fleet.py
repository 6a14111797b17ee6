"""The configured hypervisor hosts as one fleet, and how a VM is built from the config.

``Fleet`` turns the configuration into DomainSpecs (names, ports, image paths, network
mode) and drives the Hosts for the I/O. It does not choose hosts and takes no lock: the
one way to make a VM is ``cms.scheduler.Scheduler.spawn``, which holds the spawn lock,
chooses the host and calls ``Fleet.build_on``. Tests and benchmarks that own a whole
host may call ``build_on`` directly.

A listing (``Fleet.list_domains``) is what one monitoring tick knows: every host's owned
domains from one getAllDomainStats each. The scheduler passes it down, so a spawn reads
host loads and taken ports from it instead of listing domains again.
"""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import functools
import os
import queue
import socket
import time
from dataclasses import dataclass, field
from typing import Any, Callable

from cms import errors
from cms.config import Config
from cms.netutil import bindable
from cms.virt import xml as vxml
from cms.virt.guest import Guest
from cms.virt.host import Capacity, DomainEvent, Host, is_local_uri, start_event_loop
from cms.virt.perhost import PerHost
from cms.virt.stats import OwnedDomain

SERIAL_LOG_DIR = "/var/log/libvirt/qemu"


@dataclass(frozen=True)
class Spawned:
    host: str
    name: str
    uuid: str
    address: str
    port: int
    created: float
    timings: dict[str, float] = field(default_factory=dict, compare=False)   # clone, define, start (s)


@dataclass(frozen=True)
class Listing:
    """Owned domains per host, read once; ``down`` names hosts that did not answer (and why)."""
    domains: dict[str, list[OwnedDomain]]
    down: dict[str, str] = field(default_factory=dict)
    at: float = 0.0

    def all(self) -> list[OwnedDomain]:
        return [d for ds in self.domains.values() for d in ds]

    def on(self, host: str) -> list[OwnedDomain] | None:
        """The host's domains; None when the listing does not cover it (down or not asked)."""
        return None if host in self.down else self.domains.get(host)


def replica_name(group: str, created: float) -> str:
    """A name that sorts by creation time and cannot clash within a group."""
    return f"cms-{group}-{int(created * 1000):x}"


class Fleet:
    def __init__(self, cfg: Config, *, events: bool = False) -> None:
        self.cfg = cfg
        self.event_queue: "queue.Queue[DomainEvent] | None" = None
        # libvirt's keepalive runs on its event loop: without one a dead link is never noticed
        # and a call on it waits for TCP. So the loop runs whenever keepalives are asked for.
        loop = start_event_loop() if events or cfg.libvirt.keepalive_interval else False
        if events and loop:
            self.event_queue = queue.Queue(maxsize=10000)
        self.hosts = {
            h.name: Host(h.name, h.uri, keepalive_interval=cfg.libvirt.keepalive_interval,
                         events=self.event_queue)
            for h in cfg.hosts
        }
        self._pools_ready: set[str] = set()
        self._domain_types: dict[str, str] = {}
        self._local_addresses: dict[str, bool] = {}
        self._cpus: dict[str, int] = {}
        self._listers = PerHost()

    def host(self, name: str) -> Host:
        try:
            return self.hosts[name]
        except KeyError:
            raise errors.NotFound(f"no host named {name!r} in {self.cfg.source}", name) from None

    def guest(self, host_name: str, name: str) -> Guest:
        return self.host(host_name).guest(name)

    def close(self) -> None:
        self._listers.close()
        for h in self.hosts.values():
            h.close()

    def host_cpus(self, name: str, cap: Capacity | None = None, *, ask: bool = True) -> int:
        """A host's CPUs: the one rule for placement, host load and the console. Its
        ``hosts[].cpus`` setting when given (a host may be counted smaller than it is), else the
        count libvirt reports: taken from `cap` when the caller has one at hand, else asked once
        and kept. VirtError when it must be asked and cannot; with ``ask=False``, 0 instead."""
        setting = self.cfg.host(name).cpus
        if setting:
            return setting
        if cap is not None:
            self._cpus[name] = cap.cpus
        elif name not in self._cpus:
            if not ask:
                return 0
            self._cpus[name] = self.host(name).capacity().cpus
        return self._cpus[name]

    # -- reading what exists ----------------------------------------------------------------

    def list_domains(self, group: str | None = None) -> Listing:
        """Every host's owned domains, one bulk call each, all hosts at once (cms.virt.perhost).

        A host that fails, does not answer within its ``hosts[].timeout_s``, or is still busy
        with the previous listing lands in ``down``; the others' domains are in the listing.
        """
        out, down = self.per_host(lambda h: h.stats.owned_domains(group), self.hosts)
        return Listing(out, down, time.monotonic())

    def per_host(self, fn: Callable[[Host], Any], hosts: Any) -> tuple[dict[str, Any], dict[str, str]]:
        """``fn(host)`` for each of ``hosts`` at once, each on that host's own thread (the
        listing's) and within its ``hosts[].timeout_s``: (the values, host -> why it gave none).
        A host whose earlier call hangs is not asked (cms.virt.perhost); a VirtError is an
        answer of none. For the calls a tick makes besides the listing, and placement's, so
        none waits on one host."""
        calls = {name: (functools.partial(fn, self.host(name)), self.cfg.host(name).timeout_s) for name in hosts}
        out, down, raised = self._listers.call_all(calls)
        for name, exc in raised.items():
            if not isinstance(exc, errors.VirtError):
                raise exc
            down[name] = str(exc)
        return out, down

    def owned(self, group: str | None = None) -> list[OwnedDomain]:
        """Owned domains on every reachable host (an unreachable host contributes none)."""
        return self.list_domains(group).all()

    # -- where replicas answer ----------------------------------------------------------------

    def forward_address(self, host_name: str) -> str:
        """The address this host's port forwards bind: hosts[].forward_address, else network's."""
        return self.cfg.host(host_name).forward_address or self.cfg.network.forward_address

    def address_of(self, d: OwnedDomain) -> tuple[str, int] | None:
        """Where the service in this domain answers, as seen from the controller."""
        if self.cfg.network.mode == "user":
            return self.forward_address(d.host), d.meta.port
        ip = self.host(d.host).guest(d.name).lease_address()
        return (ip, d.meta.guest_port) if ip else None

    # -- image ----------------------------------------------------------------------------

    def boot_files(self) -> tuple[str, str]:
        """(kernel, initrd) for direct boot; empty strings mean the image's own bootloader."""
        img = self.cfg.image
        d = os.path.dirname(img.golden)
        kernel = img.kernel or (os.path.join(d, "vmlinuz") if os.path.exists(os.path.join(d, "vmlinuz")) else "")
        initrd = img.initrd or (os.path.join(d, "initrd.img") if kernel and os.path.exists(os.path.join(d, "initrd.img")) else "")
        return kernel, initrd

    # -- ports (user-mode networking) ------------------------------------------------------

    def _is_local_address(self, address: str) -> bool:
        """Whether this controller has `address` (so a test-bind there means something)."""
        if address not in self._local_addresses:
            family = socket.AF_INET6 if ":" in address else socket.AF_INET
            with socket.socket(family, socket.SOCK_STREAM) as s:
                try:
                    s.bind((address, 0))
                    local = True
                except OSError as exc:
                    local = exc.errno != errno.EADDRNOTAVAIL
            self._local_addresses[address] = local
        return self._local_addresses[address]

    def _choose_port(self, host_name: str, listing: Listing | None) -> int:
        """A free forward port on the host's forward address.

        Taken: the ports of the owned domains of every host that forwards on the same
        address, from the tick's listing (hosts it does not cover are listed here; hosts it
        has down are skipped, as their ports cannot be read without waiting on them). A
        test-bind also skips ports some other program holds, but only where it means
        something: the address is this controller's and the host is on this machine. A
        hypervisor in its own network namespace, or a remote one, forwards on an address
        that cannot be bound here.
        """
        net = self.cfg.network
        address = self.forward_address(host_name)
        taken: set[int] = set()
        for other in self.hosts.values():
            if self.forward_address(other.name) != address:
                continue
            if listing is not None and other.name in listing.down:
                continue    # it did not answer this tick; asking again would wait on it
            doms = listing.on(other.name) if listing is not None else None
            if doms is None:
                with contextlib.suppress(errors.VirtError):
                    doms = other.stats.owned_domains()
            taken.update(d.meta.port for d in doms or [])
        host = self.host(host_name)
        probe = not host.is_local_test and is_local_uri(host.uri) and self._is_local_address(address)
        for port in range(net.port_min, net.port_max + 1):
            if port in taken:
                continue
            if not probe or bindable(address, port):
                return port
        raise errors.NoSpace(f"no free port in {net.port_min}-{net.port_max} on {address}", host_name)

    def new_forward(self, host_name: str, listing: Listing | None = None) -> tuple[str, int]:
        """Where a VM arriving on this host (a live migration) has its port forward: the host's
        forward address and a port free there (mode = user)."""
        return self.forward_address(host_name), self._choose_port(host_name, listing)

    # -- building a VM ----------------------------------------------------------------------

    def build_on(self, host_name: str, name: str, *, vcpus: int, memory_mib: int, meta: vxml.OwnerMeta,
                 max_vcpus: int = 0, max_memory_mib: int = 0, image: str = "", start: bool = True,
                 listing: Listing | None = None) -> Spawned:
        """Make one VM on one host from the config: linked clone, define, start. All or nothing.

        Callers that share hosts with other processes hold the scheduler's spawn lock (the
        port choice and the define must not interleave with another spawn).
        """
        host, spec, backing = self._spec(host_name, name, vcpus, memory_mib, meta, max_vcpus, max_memory_mib, image,
                                         listing)
        made = host.domains.clone_and_start(spec, self.cfg.libvirt.pool, backing, start=start)
        return self._spawned(host_name, spec, made.uuid, made.timings)

    def restart_on(self, host_name: str, name: str, disk: str, *, vcpus: int, memory_mib: int,
                   meta: vxml.OwnerMeta, max_vcpus: int = 0, max_memory_mib: int = 0,
                   listing: Listing | None = None) -> Spawned:
        """Define a VM on this host from its own disk (left by a host that was fenced, on
        storage both share) and start it: no clone. A failed start leaves nothing defined."""
        host, spec, _backing = self._spec(host_name, name, vcpus, memory_mib, meta, max_vcpus, max_memory_mib, "",
                                          listing)
        t0 = time.monotonic()
        uuid = host.domains.define(dataclasses.replace(spec, disk_path=disk))
        t1 = time.monotonic()
        try:
            host.guest(name).start()
        except BaseException:
            with contextlib.suppress(errors.VirtError):
                host.guest(name).undefine()
            raise
        return self._spawned(host_name, spec, uuid, {"define": t1 - t0, "start": time.monotonic() - t1})

    def _spec(self, host_name: str, name: str, vcpus: int, memory_mib: int, meta: vxml.OwnerMeta, max_vcpus: int,
              max_memory_mib: int, image: str, listing: Listing | None) -> tuple[Host, vxml.DomainSpec, str]:
        """The host, the DomainSpec of a VM made there from the config (its disk still to be
        set) and the image its disk is a clone of."""
        host = self.host(host_name)
        lv = self.cfg.libvirt
        if host_name not in self._pools_ready:
            host.storage.ensure_pool(lv.pool, lv.pool_path)
            self._pools_ready.add(host_name)
        if host_name not in self._domain_types:
            self._domain_types[host_name] = host.domain_type(lv.domain_type)
        kernel, initrd = self.boot_files()
        backing = image or self.cfg.image.golden
        if host.uri.startswith("qemu:///"):
            # /var/lib/cms/images/* are symlinks that a rebuild repoints; an overlay must
            # keep the exact image it was cloned from, so record the resolved paths.
            backing, kernel, initrd = (os.path.realpath(p) if p else p for p in (backing, kernel, initrd))
        net = self.cfg.network
        address = self.forward_address(host_name)
        port = self._choose_port(host_name, listing) if net.mode == "user" else meta.guest_port
        created = meta.created or time.time()
        # The one place a VM's memory gets its guest kernel's share (README "Memory as the type
        # says"): the domain holds size + share, at most maximum + share; the owner record
        # keeps the size and the share apart, so everything outside reads the type's terms.
        top = max(max_memory_mib, memory_mib)
        share = vxml.vm_share_mib(vcpus, memory_mib, max_vcpus, max_memory_mib)
        meta = vxml.OwnerMeta(**{**meta.__dict__, "port": port, "created": created, "memory_mib": memory_mib,
                                 "kernel_mib": share})
        spec = vxml.DomainSpec(
            name=name, uuid=host.new_uuid(), vcpus=vcpus, memory_mib=memory_mib + share,
            max_vcpus=max_vcpus, max_memory_mib=top + share, disk_path="", meta=meta,
            domain_type=self._domain_types[host_name], machine=lv.machine,
            kernel=kernel, initrd=initrd, cmdline=self.cfg.image.cmdline if kernel else "",
            network_mode=net.mode, network=net.network, forward_address=address,
            host_port=port if net.mode == "user" else 0, guest_port=meta.guest_port,
            serial_log="" if host.is_local_test else f"{SERIAL_LOG_DIR}/{name}-serial.log",
        )
        return host, spec, backing

    def _spawned(self, host_name: str, spec: vxml.DomainSpec, uuid: str, timings: dict[str, float]) -> Spawned:
        user = self.cfg.network.mode == "user"
        return Spawned(host_name, spec.name, uuid, spec.forward_address if user else "", spec.meta.port,
                       spec.meta.created, timings)

    def remove(self, host_name: str, name: str, graceful_timeout: float = 0.0,
               wait: Callable[[float], Any] = time.sleep, keep_disk: bool = False) -> None:
        """Remove a VM and its disk (``keep_disk``: not its disk) from one host (idempotent)."""
        self.host(host_name).domains.remove(name, self.cfg.libvirt.pool, graceful_timeout, wait, keep_disk)


