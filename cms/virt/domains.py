"""Domains on one host: define, clone-and-start (all or nothing), remove.

A helper each ``cms.virt.host.Host`` composes (``host.domains``), over the host's call
object and its storage. One domain's own operations are on ``Guest`` (``host.guest(name)``);
what is here spans a domain and its disk.
"""

from __future__ import annotations

import contextlib
import os
import time
from dataclasses import dataclass, field, replace
from typing import Any, Callable

import libvirt

from cms import errors
from cms.virt import xml as vxml
from cms.virt.calls import Calls
from cms.virt.guest import Guest
from cms.virt.storage import Storage


@dataclass(frozen=True)
class Made:
    """A domain made by ``clone_and_start``, and how long each stage took (seconds)."""
    uuid: str
    disk: str
    timings: dict[str, float] = field(default_factory=dict)   # clone, define, start


class Domains:
    """One host's domain lifecycle, across domain and disk."""

    def __init__(self, calls: Calls, storage: Storage) -> None:
        self._calls = calls
        self._storage = storage

    def define(self, spec: vxml.DomainSpec) -> str:
        """Define a domain from its spec; AlreadyExists when the name is taken. Returns its UUID."""
        with self._calls("virDomainDefineXML", f"domain {spec.name}") as c:
            with contextlib.suppress(libvirt.libvirtError):
                c.lookupByName(spec.name)
                raise errors.AlreadyExists(f"a domain named {spec.name} exists already", self._calls.host,
                                           f"domain {spec.name}")
            dom = c.defineXML(vxml.render_domain(spec))
            return dom.UUIDString()

    def clone_and_start(self, spec: vxml.DomainSpec, pool: str, backing_path: str, start: bool = True) -> Made:
        """Linked clone of the image, define, start. On any failure everything made so far is removed."""
        vol_name = spec.name + ".qcow2"
        made_volume = defined = False
        timings: dict[str, float] = {}
        try:
            t0 = time.monotonic()
            disk = self._storage.create_overlay(pool, vol_name, backing_path)
            made_volume = True
            t1 = time.monotonic()
            uuid = self.define(replace(spec, disk_path=disk))
            defined = True
            t2 = time.monotonic()
            timings.update(clone=t1 - t0, define=t2 - t1)
            if start:
                Guest.lookup(self._calls, spec.name).start()
                timings["start"] = time.monotonic() - t2
            return Made(uuid, disk, timings)
        except BaseException:
            if defined:
                with contextlib.suppress(errors.VirtError):
                    g = Guest.lookup(self._calls, spec.name)
                    g.destroy()
                    g.undefine()
            if made_volume:
                with contextlib.suppress(errors.VirtError):
                    self._storage.delete_volume(pool, vol_name)
            raise

    def remove(self, name: str, pool: str, graceful_timeout: float = 0.0,
               wait: Callable[[float], Any] = time.sleep, keep_disk: bool = False) -> None:
        """Shut down (gracefully first if a timeout is given), destroy, undefine, delete the disk
        (``keep_disk``: not the disk, which a VM restarted elsewhere boots from).

        Idempotent: parts already gone are skipped. `wait` lets a daemon pass its stop
        event's wait so a SIGTERM is not held up by a slow guest.
        """
        disks: list[str] = []
        try:
            g = Guest.lookup(self._calls, name)
            disks = g.disk_paths()
            g.power_off(graceful_timeout, wait)
            g.undefine()
        except errors.NotFound:
            pass
        if keep_disk:
            return
        vol_names = {os.path.basename(d) for d in disks} | {name + ".qcow2"}
        for v in sorted(vol_names):
            self._storage.delete_volume(pool, v)
