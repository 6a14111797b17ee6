"""The configured hypervisor hosts as one fleet, and how a replica or VM is made on one.

This turns the configuration into DomainSpecs (names, ports, image paths, network mode)
and drives cms.virt.host for the I/O. The autoscaler and the REST API both spawn through
``Fleet.spawn`` so there is one way to make a VM.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import queue
import socket
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

from cms import errors
from cms.config import Config
from cms.virt import xml as vxml
from cms.virt.host import DomainEvent, Host, OwnedDomain, start_event_loop

SERIAL_LOG_DIR = "/var/log/libvirt/qemu"


@dataclass(frozen=True)
class Spawned:
    host: str
    name: str
    uuid: str
    address: str
    port: int
    created: float


def replica_name(group: str, created: float) -> str:
    """A name that sorts by creation time and cannot clash within a group."""
    return f"cms-{group}-{int(created * 1000):x}"


class Fleet:
    def __init__(self, cfg: Config, *, events: bool = False) -> None:
        self.cfg = cfg
        self.event_queue: "queue.Queue[DomainEvent] | None" = None
        if events and start_event_loop():
            self.event_queue = queue.Queue(maxsize=10000)
        self.hosts = {
            h.name: Host(h.name, h.uri, keepalive_interval=cfg.libvirt.keepalive_interval,
                         events=self.event_queue)
            for h in cfg.hosts
        }
        self._pools_ready: set[str] = set()
        self._tls = threading.local()
        self._thread_lock = threading.Lock()
        self._domain_types: dict[str, str] = {}

    def host(self, name: str) -> Host:
        try:
            return self.hosts[name]
        except KeyError:
            raise errors.NotFound(f"no host named {name!r} in {self.cfg.source}", name) from None

    def close(self) -> None:
        for h in self.hosts.values():
            h.close()

    # -- image ----------------------------------------------------------------------------

    def boot_files(self) -> tuple[str, str]:
        """(kernel, initrd) for direct boot; empty strings mean the image's own bootloader."""
        img = self.cfg.image
        d = os.path.dirname(img.golden)
        kernel = img.kernel or (os.path.join(d, "vmlinuz") if os.path.exists(os.path.join(d, "vmlinuz")) else "")
        initrd = img.initrd or (os.path.join(d, "initrd.img") if kernel and os.path.exists(os.path.join(d, "initrd.img")) else "")
        return kernel, initrd

    # -- ports (user-mode networking) ------------------------------------------------------

    @contextlib.contextmanager
    def spawn_lock(self) -> Iterator[None]:
        """Serialise "choose a host and a port, then define" across processes and threads.

        The API's gunicorn workers and the autoscaler may spawn at once; holding this from
        the placement decision to the define means two requests never take the same last
        slot or port. Re-entrant within a thread, so a scheduler may hold it around spawn().
        """
        if getattr(self._tls, "depth", 0):
            self._tls.depth += 1
            try:
                yield
            finally:
                self._tls.depth -= 1
            return
        lock_dir = Path(os.environ.get("CMS_RUN_DIR", "/run/cms"))
        lock_dir.mkdir(parents=True, exist_ok=True)
        with self._thread_lock, open(lock_dir / "spawn.lock", "w") as fh:
            fcntl.flock(fh, fcntl.LOCK_EX)
            self._tls.depth = 1
            try:
                yield
            finally:
                self._tls.depth = 0
                fcntl.flock(fh, fcntl.LOCK_UN)

    def _free_port(self, host: Host) -> int:
        net = self.cfg.network
        taken = {d.meta.port for h in self.hosts.values() if h.uri.startswith(("qemu:///", "test://"))
                 for d in _quiet_owned(h)}
        for port in range(net.port_min, net.port_max + 1):
            if port in taken:
                continue
            if host.is_local_test or _bindable(net.forward_address, port):
                return port
        raise errors.NoSpace(f"no free port in {net.port_min}-{net.port_max} on {net.forward_address}", host.name)

    # -- spawning ------------------------------------------------------------------------

    def spawn(self, host_name: str, name: str, *, vcpus: int, memory_mib: int, meta: vxml.OwnerMeta,
              max_vcpus: int = 0, max_memory_mib: int = 0, image: str = "") -> Spawned:
        """Make one VM on one host: linked clone, define, start. All or nothing."""
        host = self.host(host_name)
        lv = self.cfg.libvirt
        if host_name not in self._pools_ready:
            host.ensure_pool(lv.pool, lv.pool_path)
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
        with self.spawn_lock():
            port = self._free_port(host) if net.mode == "user" else meta.guest_port
            created = meta.created or time.time()
            meta = vxml.OwnerMeta(**{**meta.__dict__, "port": port, "created": created})
            spec = vxml.DomainSpec(
                name=name, uuid=host.new_uuid(), vcpus=vcpus, memory_mib=memory_mib,
                max_vcpus=max_vcpus, max_memory_mib=max_memory_mib, disk_path="", meta=meta,
                domain_type=self._domain_types[host_name], machine=lv.machine,
                kernel=kernel, initrd=initrd, cmdline=self.cfg.image.cmdline if kernel else "",
                network_mode=net.mode, network=net.network, forward_address=net.forward_address,
                host_port=port if net.mode == "user" else 0, guest_port=meta.guest_port,
                serial_log="" if host.is_local_test else f"{SERIAL_LOG_DIR}/{name}-serial.log",
            )
            uuid = host.spawn(spec, lv.pool, backing)
        address = net.forward_address if net.mode == "user" else ""
        return Spawned(host_name, name, uuid, address, port, created)

    def remove(self, host_name: str, name: str, graceful_timeout: float = 0.0, wait=time.sleep) -> None:
        self.host(host_name).remove(name, self.cfg.libvirt.pool, graceful_timeout, wait)

    def owned(self, group: str | None = None) -> list[OwnedDomain]:
        """Owned domains on every reachable host (an unreachable host contributes none)."""
        out: list[OwnedDomain] = []
        for h in self.hosts.values():
            with contextlib.suppress(errors.HostUnreachable):
                out.extend(h.owned_domains(group))
        return out

    def address_of(self, d: OwnedDomain) -> tuple[str, int] | None:
        """Where the service in this domain answers, as seen from the controller."""
        if self.cfg.network.mode == "user":
            return self.cfg.network.forward_address, d.meta.port
        ip = self.host(d.host).lease_address(d.name)
        return (ip, d.meta.guest_port) if ip else None


def _quiet_owned(h: Host) -> list[OwnedDomain]:
    try:
        return h.owned_domains()
    except errors.VirtError:
        return []


def _bindable(address: str, port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        try:
            s.bind((address, port))
            return True
        except OSError:
            return False
