"""Live migration of one domain between two hosts: a helper each ``cms.virt.host.Host``
composes (``host.migration``), over the host's call object; the destination is given by its
call object too (``dest.calls``), so neither side holds a Host."""

from __future__ import annotations

import contextlib
import threading
from typing import Any, Callable

import libvirt

from cms import errors
from cms.virt import xml as vxml
from cms.virt.calls import Calls
from cms.virt.states import PAUSED

Timer = threading.Timer    # the migration timeout's clock (a name tests swap for a timer they fire)


class Migration:
    """Live migration of this host's domains."""

    def __init__(self, calls: Calls) -> None:
        self._calls = calls

    def migrate(self, name: str, dest: Calls, live: bool = True, *, address: str = "",
                shared_storage: bool = False, timeout_s: float = 0.0, forward: tuple[str, int] | None = None,
                on_paused: Callable[[], None] | None = None, bandwidth_mib_s: int = 0) -> None:
        """Live-migrate a domain to another host (given by its call object: ``host.calls``),
        keeping it defined only there.

        The disk overlay and its golden image must be reachable at the same paths on the
        destination (shared storage), as with any libvirt migration without storage copy.

        `address` is where the destination takes the migration stream: its QEMU listens
        there and the source's QEMU connects to ``tcp://address`` (libvirt's default is
        the destination's hostname, listened for on every address). libvirt refuses a
        loopback address in qemu.conf but not per call, so this is also how two libvirt
        daemons on one machine migrate over 127.0.0.1.

        `shared_storage` says the disks are on storage the two hosts share although
        libvirt cannot tell: libvirt decides from the file system type (NFS, GFS2, Ceph,
        ... are shared; ext4 or xfs never are), so a local file system seen by two daemons
        on one machine, or a cluster file system libvirt does not know, is refused with
        "Migration without shared storage is unsafe". True passes VIR_MIGRATE_UNSAFE,
        which skips only libvirt's storage safety check (file system type, cache mode);
        QEMU still flushes the image on the source before the destination takes it over.

        `timeout_s` (> 0) bounds the whole migration: past it the job is aborted
        (virDomainAbortJob from a timer thread), the guest keeps running on the source, and
        the call raises a VirtError that says so. A guest dirtying memory faster than the
        link copies it would otherwise never converge, and hold its caller forever.

        `bandwidth_mib_s` (> 0) caps the migration stream (VIR_MIGRATE_PARAM_BANDWIDTH).

        `forward` (address, port): the domain's user-mode port forward listens there on the
        destination (a destination XML with the forward and the owner record's port
        rewritten), as each host's forwards listen on its own address.

        `on_paused` is called once, from a watcher thread, when the source pauses the guest
        for the switch-over (polled every 20 ms): the moment to tell clients the new address,
        before the old one goes away. It is not called if the pause was missed.
        """
        flags = (libvirt.VIR_MIGRATE_PERSIST_DEST | libvirt.VIR_MIGRATE_UNDEFINE_SOURCE
                 | (libvirt.VIR_MIGRATE_LIVE if live else 0)
                 | (libvirt.VIR_MIGRATE_UNSAFE if shared_storage else 0))
        params: dict[str, Any] = {}
        if bandwidth_mib_s > 0:
            params[libvirt.VIR_MIGRATE_PARAM_BANDWIDTH] = bandwidth_mib_s
        if address:
            params[libvirt.VIR_MIGRATE_PARAM_URI] = f"tcp://[{address}]" if ":" in address else f"tcp://{address}"
            params[libvirt.VIR_MIGRATE_PARAM_LISTEN_ADDRESS] = address
        dconn = dest.connect()
        aborted = threading.Event()
        with self._calls("virDomainMigrate3", f"domain {name} to host {dest.host}") as c:
            dom = self._lookup_for_migration(c, name)
            if forward is not None:
                params[libvirt.VIR_MIGRATE_PARAM_DEST_XML] = vxml.retarget_forward(
                    dom.XMLDesc(libvirt.VIR_DOMAIN_XML_MIGRATABLE), *forward)
            done = threading.Event()
            if on_paused is not None:
                threading.Thread(target=_watch_pause, args=(dom, done, on_paused), daemon=True,
                                 name=f"cms-migrate-watch-{name}").start()

            def abort() -> None:
                aborted.set()
                with contextlib.suppress(libvirt.libvirtError):
                    dom.abortJob()

            timer = Timer(timeout_s, abort) if timeout_s > 0 else None
            if timer is not None:
                timer.daemon = True
                timer.start()
            try:
                dom.migrate3(dconn, params, flags)
            except libvirt.libvirtError as exc:
                if aborted.is_set():
                    raise errors.VirtError(f"migration aborted after {timeout_s:g} s (it still runs here): "
                                           f"{exc.get_error_message() or exc}", self._calls.host,
                                           f"domain {name}") from None
                raise
            finally:
                done.set()
                if timer is not None:
                    timer.cancel()

    def _lookup_for_migration(self, c: Any, name: str) -> Any:
        return c.lookupByName(name)


def _watch_pause(dom: Any, done: threading.Event, on_paused: Callable[[], None]) -> None:
    """Call on_paused once when the migrating domain is paused for the switch-over."""
    while not done.wait(0.02):
        try:
            paused = dom.state()[0] == PAUSED
        except libvirt.libvirtError:
            return        # gone from the source: the switch-over is over
        if paused:
            with contextlib.suppress(Exception):
                on_paused()
            return
